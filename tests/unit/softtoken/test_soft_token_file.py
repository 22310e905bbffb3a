"""The soft token's local file: encrypted under the usage-start password, private to the user, and the codes
`kagi token show --once` prints are the ones oathtool computes from the same seed."""

from __future__ import annotations

import base64
import stat
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kagi.cli.main import cli
from kagi.errors import Unauthenticated
from kagi.softtoken import vault
from tests.support.tools import tool

SECRET = base64.b32encode(bytes(range(20))).decode().rstrip("=")
TOKEN = vault.SoftToken(
    secret=SECRET,
    algorithm="SHA1",
    digits=6,
    period=60,
    otpauth_uri=f"otpauth://totp/kagi:user?secret={SECRET}&issuer=kagi&algorithm=SHA1&digits=6&period=60",
    service_id="SVC",
    user_id="USR",
    activation_id="act",
)


def test_file_round_trips_and_is_private(tmp_path: Path) -> None:
    """The file is 0600, holds neither the seed nor the password in clear, and opens with the password."""
    path = tmp_path / "kagi" / "token.json"
    vault.save(path, TOKEN, "4831")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text()
    assert SECRET not in raw
    assert "4831" not in raw
    assert vault.load(path, "4831") == TOKEN
    assert SECRET not in repr(vault.load(path, "4831"))


def test_wrong_password_does_not_open_the_file(tmp_path: Path) -> None:
    """Another usage-start password fails authentication (AES-GCM tag), naming no secret."""
    path = tmp_path / "token.json"
    vault.save(path, TOKEN, "4831")
    with pytest.raises(Unauthenticated):
        vault.load(path, "4832")


def test_show_once_prints_the_code_oathtool_computes(tmp_path: Path) -> None:
    """`kagi token show --once` prints the current code and seconds left; oathtool agrees on the code."""
    path = tmp_path / "token.json"
    vault.save(path, TOKEN, "4831")
    for _ in range(3):  # a step boundary between the two readings would make them differ: retry then
        result = CliRunner().invoke(
            cli, ["token", "show", "--once", "--file", str(path), "--password-stdin"], input="4831\n"
        )
        assert result.exit_code == 0, result.output
        code, remaining = result.output.split()
        expected = subprocess.run(
            [tool("oathtool"), "--totp=SHA1", "-s", "60", "-d", "6", "-b", SECRET],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if code == expected:
            break
        time.sleep(1)
    assert code == expected
    assert 1 <= int(remaining.rstrip("s")) <= 60


def test_qr_prints_the_uri_and_writes_a_png(tmp_path: Path) -> None:
    """`kagi token qr --png` prints the otpauth URI and writes a PNG only the user can read."""
    path = tmp_path / "token.json"
    png = tmp_path / "qr.png"
    vault.save(path, TOKEN, "4831")
    result = CliRunner().invoke(
        cli, ["token", "qr", "--file", str(path), "--password-stdin", "--png", str(png)], input="4831\n"
    )
    assert result.exit_code == 0, result.output
    assert TOKEN.otpauth_uri in result.output
    assert png.read_bytes().startswith(b"\x89PNG")
    assert stat.S_IMODE(png.stat().st_mode) == 0o600
