"""Secrets never reach the logs, even at DEBUG and from other libraries' loggers: a full setup through the gateway
with every logger (kagi's, aiohttp's, grpc's, asyncio's) at DEBUG writes JSON lines only, and none of them holds a
temporary password, the session token, a password, the seed or a one-time code."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from kagi.runtime.logging import configure_logging
from tests.integration.gateway.gateway_support import open_gateway_stack, walk_ten_steps

_LIBRARIES = ("aiohttp", "aiohttp.access", "aiohttp.server", "aiohttp.web", "asyncio", "grpc", "grpc._cython")


@pytest.fixture
def debug_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every logger at DEBUG through kagi's configuration, writing to a file in place of stderr (restored after)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    path = tmp_path / "stderr.log"
    stream = path.open("w", encoding="utf-8")
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("reliability", level="DEBUG")
    # Loggers first used now must not keep this file after the test: no caching, so later tests get theirs.
    structlog.configure(cache_logger_on_first_use=False)
    for name in _LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        stream.flush()
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        root.handlers[:] = handlers
        root.setLevel(level)
        for name in _LIBRARIES:
            logging.getLogger(name).setLevel(logging.NOTSET)
        stream.close()


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def test_a_setup_at_debug_logs_json_lines_and_no_secret(tmp_path: Path, debug_log: Path) -> None:
    """With kagi's and the libraries' loggers at DEBUG, the ten steps produce log lines that are all JSON (stdlib
    records included, so they pass the same redaction), from kagi and from at least one other library, and no
    line holds any of the secrets that crossed the gateway."""
    logging.getLogger("asyncio").debug("asyncio at DEBUG: Authorization: Bearer abcdefghijklmnop")
    stack = await open_gateway_stack(tmp_path)
    try:
        secrets = await walk_ten_steps(stack)
    finally:
        await stack.close()
    sys.stderr.flush()
    lines = _lines(debug_log)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert len(records) > 30
    loggers = {record.get("logger", "") for record in records}
    assert "asyncio" in loggers, "the stdlib record did not come through as JSON"
    assert "abcdefghijklmnop" not in "\n".join(lines)
    for name, value in secrets.items():
        pattern = re.compile(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])")
        leaked = [line for line in lines if pattern.search(line)]
        assert not leaked, f"the {name} was logged: {leaked[0][:200]}"
