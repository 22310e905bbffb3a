"""The OTP service's settings from the environment: defaults, key parsing with errors naming the variable, keys
from files, and no secret in the settings' repr."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from kagi.errors import InvalidArgument
from services.otp_service.domain import Seed
from services.otp_service.main import OtpSettings

KEY_1 = bytes(range(32))
KEY_0 = bytes(range(50, 82))
PEPPER = "a-pepper-of-at-least-thirty-two-bytes"


def env(**overrides: str) -> dict[str, str]:
    """A complete environment for `kagi serve otp` (plaintext on loopback), with overrides."""
    base = {
        "KAGI_INSECURE_PLAINTEXT": "1",
        "KAGI_OTP_PEPPER": PEPPER,
        "KAGI_OTP_KEK": base64.b64encode(KEY_1).decode(),
    }
    return {**base, **overrides}


def test_defaults() -> None:
    """Only the pepper and the KEK are required; everything else has the documented default."""
    settings = OtpSettings.from_env(env())
    assert (settings.listen.host, settings.listen.port, settings.listen.workers) == ("127.0.0.1", 50052, 1)
    assert settings.listen.tls is None
    assert (settings.store_url, settings.state_dir) == ("sqlite:", Path(".kagi"))
    assert settings.kek.key_id == "k1"
    assert settings.older_keks == ()
    assert settings.policy.issuer == "kagi"


@pytest.mark.parametrize(
    ("overrides", "grouped"),
    [
        ({}, True),
        ({"KAGI_STORE_URL": "redis://127.0.0.1:6379/0"}, False),
        ({"KAGI_STORE_URL": "redis://127.0.0.1:6379/0", "KAGI_OTP_GROUP_COMMIT": "true"}, True),
        ({"KAGI_OTP_GROUP_COMMIT": "false"}, False),
    ],
)
def test_group_commit_defaults_to_the_store(overrides: dict[str, str], grouped: bool) -> None:
    """Commits are grouped by default on SQLite (an fsync saved per verification), not on Redis; the variable
    overrides either way."""
    assert OtpSettings.from_env(env(**overrides)).groups_commits() is grouped


def test_older_keys_open_what_they_sealed() -> None:
    """KAGI_OTP_KEK_OLD lists id:base64 pairs; a seal made under an old key opens in the new settings' vault."""
    old = OtpSettings.from_env(env(KAGI_OTP_KEK_ID="k0", KAGI_OTP_KEK=base64.b64encode(KEY_0).decode()))
    sealed = old.vault().seal("t1", Seed(b"s" * 20))
    new = OtpSettings.from_env(
        env(KAGI_OTP_KEK_ID="k1", KAGI_OTP_KEK_OLD=f"k0:{base64.urlsafe_b64encode(KEY_0).decode()}, kx:{'A' * 43}=")
    )
    assert [k.key_id for k in new.older_keks] == ["k0", "kx"]
    assert new.vault().open("t1", sealed).value == b"s" * 20
    assert new.vault().needs_reseal(sealed)


def test_secrets_may_come_from_files(tmp_path: Path) -> None:
    """KAGI_OTP_KEK_FILE and KAGI_OTP_PEPPER_FILE are read instead of the variables (keeps them out of ps)."""
    (tmp_path / "kek").write_text(base64.b64encode(KEY_1).decode() + "\n")
    (tmp_path / "pepper").write_text(PEPPER + "\n")
    settings = OtpSettings.from_env(
        {
            "KAGI_INSECURE_PLAINTEXT": "1",
            "KAGI_OTP_KEK_FILE": str(tmp_path / "kek"),
            "KAGI_OTP_PEPPER_FILE": str(tmp_path / "pepper"),
        }
    )
    assert settings.kek.key == KEY_1
    assert settings.pepper.reveal() == PEPPER.encode()


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"KAGI_OTP_KEK": "bm90IDMyIGJ5dGVz"}, "KAGI_OTP_KEK"),
        ({"KAGI_OTP_KEK": "***"}, "KAGI_OTP_KEK"),
        ({"KAGI_OTP_KEK": ""}, "KAGI_OTP_KEK"),
        ({"KAGI_OTP_PEPPER": "short"}, "KAGI_OTP_PEPPER"),
        ({"KAGI_OTP_KEK_OLD": "no-colon"}, "KAGI_OTP_KEK_OLD"),
        ({"KAGI_OTP_KEK_OLD": f"k1:{base64.b64encode(KEY_0).decode()}"}, "KAGI_OTP_KEK_OLD"),
        ({"KAGI_OTP_PORT": "70000"}, "KAGI_OTP_PORT"),
        ({"KAGI_OTP_ISSUER": "a:b"}, "KAGI_OTP_ISSUER"),
    ],
)
def test_bad_settings_name_the_variable(overrides: dict[str, str], variable: str) -> None:
    """Each bad value is an InvalidArgument whose fields name the variable, and never echo a key."""
    with pytest.raises(InvalidArgument) as failure:
        OtpSettings.from_env(env(**overrides))
    assert variable in failure.value.fields
    assert base64.b64encode(KEY_1).decode() not in str(failure.value)


def test_repr_shows_no_secret() -> None:
    """Printing the settings shows neither the pepper nor any key-encryption key."""
    settings = OtpSettings.from_env(env(KAGI_OTP_KEK_OLD=f"k0:{base64.b64encode(KEY_0).decode()}"))
    text = repr(settings)
    assert PEPPER not in text
    for key in (KEY_1, KEY_0):
        assert repr(key) not in text
        assert key.hex() not in text
        assert base64.b64encode(key).decode() not in text
