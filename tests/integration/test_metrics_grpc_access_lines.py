"""Every gRPC call a kagi server answers gets one INFO access line, like the gateway's: the method, the caller's
role, the status, the time taken and the request id, a failure's reason too, and nothing of the request."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.cli.stack import RunningStack, start_stack
from kagi.runtime import grpc_server
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.logging import REQUEST_ID_HEADER, configure_logging


@pytest.fixture
def info_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Log at INFO through kagi's configuration into a file in place of stderr (restored after)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    path = tmp_path / "stderr.log"
    stream = path.open("w", encoding="utf-8")
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("access-lines", level="INFO")
    structlog.configure(cache_logger_on_first_use=False)
    # A fresh logger: the module's own may have been cached, at another level, by a test that configured logging
    # in this process before (structlog's cache_logger_on_first_use).
    monkeypatch.setattr(grpc_server, "log", structlog.get_logger("kagi.grpc"))
    try:
        yield path
    finally:
        stream.flush()
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        root.handlers[:] = handlers
        root.setLevel(level)
        stream.close()


@pytest.fixture
async def services(info_log: Path, tmp_path: Path) -> AsyncIterator[RunningStack]:
    """Return the CA, OTP and enrollment services on free ports (started once logging is at INFO)."""
    stack = await start_stack(tmp_path / "state", ports={}, with_gateway=False, management="off")
    yield stack
    await stack.stop(0)


def _access_lines(path: Path, request_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "rpc" and line.get("request_id") == request_id]


async def test_each_call_gets_one_access_line(services: RunningStack, info_log: Path) -> None:
    """An operator's GetCaCertificates (OK) and GetCertificate of an unknown serial (NOT_FOUND), each with its own
    request id: one INFO line each, naming the full method, the role `operator`, the status, the milliseconds
    and the request id; the failure also names its reason; no line holds the serial asked for."""
    channel = open_channel(services.target("ca"), services.pki.tls("operator"), server_name="localhost")
    try:
        stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
        await stub.GetCaCertificates(ca_pb2.GetCaCertificatesRequest(), metadata=((REQUEST_ID_HEADER, "access-ok"),))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetCertificate(
                ca_pb2.GetCertificateRequest(serial_number="7e57ab1e"), metadata=((REQUEST_ID_HEADER, "access-nf"),)
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await channel.close()
    sys.stderr.flush()

    [ok] = _access_lines(info_log, "access-ok")
    assert ok["level"] == "info"
    assert ok["method"] == "/kagi.ca.v1.CertificateAuthorityService/GetCaCertificates"
    assert (ok["role"], ok["grpc_code"]) == ("operator", "OK")
    assert isinstance(ok["ms"], float | int)
    [failed] = _access_lines(info_log, "access-nf")
    assert failed["method"] == "/kagi.ca.v1.CertificateAuthorityService/GetCertificate"
    assert (failed["role"], failed["grpc_code"], failed["reason"]) == ("operator", "NOT_FOUND", "CERTIFICATE_NOT_FOUND")
    assert "7e57ab1e" not in json.dumps([ok, failed])
