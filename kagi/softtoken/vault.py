"""The soft token's local file: the seed and its parameters, encrypted under a key derived from the
usage-start password (argon2id, then AES-256-GCM), readable only by the user (0600).

The usage-start password has 4-8 digits, so the file resists a thief only as long as argon2id's cost times
10^4..10^8 guesses: the file must stay on the user's own device, which is why it is never written group- or
world-readable and never leaves this machine.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kagi.errors import InvalidArgument, NotFound, Unauthenticated
from kagi.files import write_file

FORMAT = "kagi-soft-token-v1"
_AAD = FORMAT.encode()
KDF_TIME_COST = 3
KDF_MEMORY_KIB = 64 * 1024


@dataclass(frozen=True)
class SoftToken:
    """What the app keeps: the seed (secret) and what it needs to show codes."""

    secret: str = field(repr=False)
    algorithm: str
    digits: int
    period: int
    otpauth_uri: str = field(repr=False)
    service_id: str
    user_id: str
    activation_id: str


def default_path() -> Path:
    """Return $KAGI_TOKEN_FILE, or kagi/token.json under the user's config directory."""
    configured = os.environ.get("KAGI_TOKEN_FILE")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "kagi" / "token.json"


def _key(password: str, salt: bytes, time_cost: int, memory_kib: int) -> bytes:
    return hash_secret_raw(
        password.encode(), salt, time_cost=time_cost, memory_cost=memory_kib, parallelism=1, hash_len=32, type=Type.ID
    )


def save(path: Path, token: SoftToken, password: str) -> None:
    """Encrypt `token` under `password` and writes it atomically with mode 0600."""
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    key = _key(password, salt, KDF_TIME_COST, KDF_MEMORY_KIB)
    ciphertext = AESGCM(key).encrypt(nonce, json.dumps(asdict(token)).encode(), _AAD)
    document = {
        "format": FORMAT,
        "kdf": {"name": "argon2id", "salt": _b64(salt), "time_cost": KDF_TIME_COST, "memory_kib": KDF_MEMORY_KIB},
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_file(path, json.dumps(document).encode(), 0o600)


def load(path: Path, password: str) -> SoftToken:
    """Decrypt the token file; a wrong usage-start password is Unauthenticated, a missing file NotFound."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"no token file at {path}: run `kagi token activate` first", reason="NO_TOKEN_FILE") from None
    except (OSError, ValueError):
        raise InvalidArgument(f"{path} is not a kagi token file", reason="BAD_TOKEN_FILE") from None
    if document.get("format") != FORMAT:
        raise InvalidArgument(f"{path} is not a kagi token file", reason="BAD_TOKEN_FILE")
    kdf = document["kdf"]
    key = _key(password, _unb64(kdf["salt"]), int(kdf["time_cost"]), int(kdf["memory_kib"]))
    try:
        plain = AESGCM(key).decrypt(_unb64(document["nonce"]), _unb64(document["ciphertext"]), _AAD)
    except InvalidTag:
        raise Unauthenticated(
            "利用開始パスワードが正しくありません / wrong usage-start password", reason="WRONG_PASSWORD"
        ) from None
    return SoftToken(**json.loads(plain))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
