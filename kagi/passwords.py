"""Password hashing shared by kagi's services: argon2id over an HMAC-SHA256 pepper, with rehash detection.

Every secret a person types (login and confirmation passwords, temporary credentials, the OTP app's
usage-start password) is stored only as produced here:

    kagi-pw1$<pepper id>$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>   (the pepper id, then argon2's PHC string)

The password is first keyed with HMAC-SHA256 under a *pepper*, a secret that lives in the service's settings
and never in the store, so a stolen database alone does not allow an offline guessing attack (which matters for
the 4-8 digit usage-start password, whose whole space argon2 alone cannot protect). The HMAC output then goes
through argon2id with a random per-hash salt. The pepper id in the stored string lets the peppers rotate: the
current pepper hashes, older ones still verify, and `needs_rehash` says when a login should re-hash.

Parameters follow the OWASP Password Storage Cheat Sheet, whose first argon2id configuration is
m=19 MiB (19456 KiB), t=2, p=1; the other configurations it lists trade memory for passes at the same cost.
Hashing blocks the calling thread for tens of milliseconds (argon2-cffi releases the GIL while it works), so an
asyncio caller runs it with `in_kdf_thread`, on the process's KDF threads: one per core.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from argon2 import PasswordHasher as _Argon2Hasher
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from kagi.errors import KagiError

SCHEME = "kagi-pw1"
"""The tag that starts every stored hash, so a future format can be told apart."""
MIN_PEPPER_BYTES = 32
"""The shortest pepper accepted: 256 bits, as strong as HMAC-SHA256 itself."""
_PEPPER_ID_RE = re.compile(r"[A-Za-z0-9_\-]{1,32}")
# The dummy hash only has to cost what a real verification costs; its password is never compared to anything.
_DUMMY_INPUT = "kagi-dummy-password-for-equal-timing"
P = ParamSpec("P")
T = TypeVar("T")
_kdf_threads: ThreadPoolExecutor | None = None
_kdf_threads_lock = threading.Lock()


def _cores() -> int:
    """Return how many cores this process may run on (its affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _forget_kdf_threads() -> None:
    # A forked child has none of its parent's threads: it starts its own on its first hash.
    global _kdf_threads
    _kdf_threads = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_kdf_threads)


async def in_kdf_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run FUNCTION (argon2 work) on the process's KDF threads, one per core, and return its result.

    Every service of the process shares them. More threads than cores would not finish any hash sooner: the
    hashes would share the cores, and each would cost more CPU, their 19 MiB working sets evicting each other
    (and the event loop's) from the caches. The event loop stays free meanwhile, as with `asyncio.to_thread`.
    """
    global _kdf_threads
    if _kdf_threads is None:
        with _kdf_threads_lock:
            if _kdf_threads is None:
                _kdf_threads = ThreadPoolExecutor(max_workers=_cores(), thread_name_prefix="kagi-kdf")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_kdf_threads, functools.partial(function, *args, **kwargs))


class PasswordHashError(KagiError):
    """A stored hash is malformed or names a pepper this service no longer holds.

    It is an INTERNAL error: the stored data or the configuration is wrong, not the caller's input.
    """

    reason = "PASSWORD_HASH_INVALID"


@dataclass(frozen=True, slots=True)
class Argon2Parameters:
    """The argon2id cost settings; the defaults are OWASP's first recommendation."""

    time_cost: int = 2
    memory_cost_kib: int = 19 * 1024
    parallelism: int = 1
    hash_len: int = 32
    salt_len: int = 16

    def __post_init__(self) -> None:
        if self.time_cost < 1:
            raise ValueError("time_cost must be at least 1")
        if self.parallelism < 1:
            raise ValueError("parallelism must be at least 1")
        if self.memory_cost_kib < 8 * self.parallelism:
            raise ValueError("memory_cost_kib must be at least 8 KiB per lane")
        if self.hash_len < 16:
            raise ValueError("hash_len must be at least 16 bytes")
        if self.salt_len < 16:
            raise ValueError("salt_len must be at least 16 bytes")


OWASP_ARGON2ID = Argon2Parameters()
"""The OWASP cheat sheet's first argon2id configuration (19 MiB, 2 passes, 1 lane)."""


@dataclass(frozen=True, slots=True)
class Pepper:
    """One named HMAC key applied to passwords before argon2; its secret never prints."""

    pepper_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _PEPPER_ID_RE.fullmatch(self.pepper_id):
            raise ValueError("pepper_id must be 1-32 characters of A-Z a-z 0-9 _ -")
        if len(self.secret) < MIN_PEPPER_BYTES:
            raise ValueError(f"a pepper must be at least {MIN_PEPPER_BYTES} bytes")


class PasswordHasher:
    """Hashes and verifies passwords with a pepper and argon2id; safe to share across threads.

    `peppers` lists the current pepper first, then older ones kept only to verify existing hashes.
    """

    def __init__(self, peppers: Iterable[Pepper], parameters: Argon2Parameters = OWASP_ARGON2ID) -> None:
        ordered = list(peppers)
        if not ordered:
            raise ValueError("at least one pepper is required")
        by_id = {p.pepper_id: p for p in ordered}
        if len(by_id) != len(ordered):
            raise ValueError("pepper ids must be unique")
        self._current = ordered[0]
        self._peppers = by_id
        self._parameters = parameters
        self._argon2 = _Argon2Hasher(
            time_cost=parameters.time_cost,
            memory_cost=parameters.memory_cost_kib,
            parallelism=parameters.parallelism,
            hash_len=parameters.hash_len,
            salt_len=parameters.salt_len,
            type=Type.ID,
        )
        self._dummy_hash = self.hash(_DUMMY_INPUT)

    def __repr__(self) -> str:
        return f"PasswordHasher(current_pepper={self._current.pepper_id!r}, parameters={self._parameters!r})"

    @property
    def parameters(self) -> Argon2Parameters:
        """Return the argon2id settings new hashes are made with."""
        return self._parameters

    def hash(self, password: str) -> str:
        """Return the storable hash of `password` under the current pepper and a fresh salt."""
        phc = self._argon2.hash(self._peppered(self._current, password))
        return f"{SCHEME}${self._current.pepper_id}{phc}"

    def verify(self, stored: str, password: str) -> bool:
        """Say whether `password` matches `stored`; argon2 compares the digests in constant time.

        Raises PasswordHashError when `stored` is malformed or names an unknown pepper.
        """
        pepper, phc = self._split(stored)
        try:
            return self._argon2.verify(phc, self._peppered(pepper, password))
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError) as exc:
            raise PasswordHashError("stored password hash is malformed") from exc

    def verify_dummy(self, password: str) -> bool:
        """Cost what `verify` costs and always answers False.

        Call it when there is no stored hash (an unknown user) so that the answer's timing does not tell
        "no such user" from "wrong password".
        """
        self.verify(self._dummy_hash, password)
        return False

    def needs_rehash(self, stored: str) -> bool:
        """Say whether `stored` was made with an older pepper or other argon2 parameters."""
        pepper, phc = self._split(stored)
        if pepper.pepper_id != self._current.pepper_id:
            return True
        try:
            return self._argon2.check_needs_rehash(phc)
        except (InvalidHashError, ValueError) as exc:
            raise PasswordHashError("stored password hash is malformed") from exc

    def _split(self, stored: str) -> tuple[Pepper, str]:
        scheme, _, rest = stored.partition("$")
        pepper_id, _, tail = rest.partition("$")
        if scheme != SCHEME or not tail.startswith("argon2id$"):
            raise PasswordHashError("stored password hash is malformed")
        phc = "$" + tail
        pepper = self._peppers.get(pepper_id)
        if pepper is None:
            raise PasswordHashError("stored password hash names an unknown pepper", metadata={"pepper_id": pepper_id})
        return pepper, phc

    @staticmethod
    def _peppered(pepper: Pepper, password: str) -> bytes:
        # HMAC rather than concatenation: the pepper stays a key, and every password becomes 32 bytes.
        return hmac.digest(pepper.secret, password.encode("utf-8"), hashlib.sha256)
