"""Secrets never print: settings hide them and the log processor redacts them by key, however deep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from kagi.runtime.logging import REDACTED, configure_logging, redact_secrets, request_id_var
from kagi.runtime.settings import Environment, Secret


def test_secret_repr_and_str_are_masked() -> None:
    """A Secret's repr and str never contain its value, so printing settings cannot leak it."""
    secret = Secret("hunter2-passphrase")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret!r} {secret}"
    assert secret.reveal_text() == "hunter2-passphrase"


def test_secret_is_read_from_a_file_in_preference(tmp_path: Path) -> None:
    """NAME_FILE is preferred to NAME, and its trailing newline is dropped."""
    path = tmp_path / "pass"
    path.write_text("from-file\n")
    env = Environment({"KAGI_X": "from-env", "KAGI_X_FILE": str(path)})
    secret = env.secret("KAGI_X")
    assert secret is not None
    assert secret.reveal() == b"from-file"


def test_missing_required_setting_names_the_variable() -> None:
    """A missing required variable is an error that names it and how to set it."""
    with pytest.raises(Exception, match="KAGI_Y") as failure:
        Environment({}).secret("KAGI_Y")
    assert "KAGI_Y" in str(failure.value)


def test_bad_integer_names_variable_and_rule() -> None:
    """A malformed number is refused with the variable and the rule."""
    with pytest.raises(Exception, match="KAGI_PORT"):
        Environment({"KAGI_PORT": "eighty"}).integer("KAGI_PORT", 1)
    with pytest.raises(Exception, match="between 1 and 65535"):
        Environment({"KAGI_PORT": "70000"}).integer("KAGI_PORT", 1, minimum=1, maximum=65535)


def test_processor_redacts_secret_keys_recursively() -> None:
    """Values under secret-looking keys are replaced, in nested mappings and lists too; ids stay readable."""
    event = redact_secrets(
        None,
        "info",
        {
            "event": "x",
            "usage_start_password": "1234",
            "token_id": "tok_1",
            "body": {"login_password": "abc123", "user_name": "Sato", "items": [{"seed": "JBSW"}]},
        },
    )
    assert event["usage_start_password"] == REDACTED
    assert event["token_id"] == "tok_1"
    assert event["body"]["login_password"] == REDACTED
    assert event["body"]["user_name"] == "Sato"
    assert event["body"]["items"][0]["seed"] == REDACTED


def test_configured_logger_writes_json_with_request_id_and_no_secret(capsys: pytest.CaptureFixture[str]) -> None:
    """The configured logger writes one JSON object per line with the request id and without the secret."""
    configure_logging("test", level="INFO")
    token = request_id_var.set("rid-42")
    try:
        structlog.get_logger("t").info("activated", secret="JBSWY3DPEHPK3PXP", session_token="s3cr3t")
    finally:
        request_id_var.reset(token)
        # The logger wrote to this test's captured stderr, which closes with it: later tests get the defaults.
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["request_id"] == "rid-42"
    assert record["component"] == "test"
    assert "JBSWY3DPEHPK3PXP" not in line
    assert "s3cr3t" not in line
