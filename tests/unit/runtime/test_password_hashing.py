"""kagi.passwords: peppered argon2id hashing, constant-time verification, rotation and rehash detection."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from kagi.errors import ErrorKind
from kagi.passwords import (
    OWASP_ARGON2ID,
    Argon2Parameters,
    PasswordHasher,
    PasswordHashError,
    Pepper,
    in_kdf_thread,
)
from tests.unit.otp.otp_support import FAST_ARGON2

PEPPER = Pepper("p2027", b"\x11" * 32)
OLD_PEPPER = Pepper("p2026", b"\x22" * 32)


def test_defaults_are_owasp_argon2id() -> None:
    """The default parameters are OWASP's first argon2id configuration: 19 MiB, t=2, p=1."""
    assert (OWASP_ARGON2ID.memory_cost_kib, OWASP_ARGON2ID.time_cost, OWASP_ARGON2ID.parallelism) == (19456, 2, 1)
    hasher = PasswordHasher([PEPPER])
    stored = hasher.hash("Passw0rd")
    assert "$argon2id$v=19$m=19456,t=2,p=1$" in stored
    assert hasher.verify(stored, "Passw0rd")


def test_hash_verify_and_mismatch() -> None:
    """A hash verifies its own password only; salts differ, so equal passwords hash differently."""
    hasher = PasswordHasher([PEPPER], FAST_ARGON2)
    stored = hasher.hash("2468")
    assert stored.startswith("kagi-pw1$p2027$argon2id$v=19$")
    assert hasher.verify(stored, "2468")
    assert not hasher.verify(stored, "2469")
    assert not hasher.verify(stored, "")
    assert hasher.hash("2468") != stored
    assert "2468" not in stored


def test_pepper_is_required_to_verify() -> None:
    """A hash made under one pepper does not verify under another secret with the same id."""
    stored = PasswordHasher([PEPPER], FAST_ARGON2).hash("2468")
    impostor = PasswordHasher([Pepper("p2027", b"\x33" * 32)], FAST_ARGON2)
    assert not impostor.verify(stored, "2468")


def test_pepper_rotation_and_needs_rehash() -> None:
    """Old-pepper hashes verify while the old pepper is configured, and ask for a rehash under the new one."""
    old = PasswordHasher([OLD_PEPPER], FAST_ARGON2).hash("Passw0rd")
    rotating = PasswordHasher([PEPPER, OLD_PEPPER], FAST_ARGON2)
    assert rotating.verify(old, "Passw0rd")
    assert rotating.needs_rehash(old)
    assert not rotating.needs_rehash(rotating.hash("Passw0rd"))
    with pytest.raises(PasswordHashError) as caught:
        PasswordHasher([PEPPER], FAST_ARGON2).verify(old, "Passw0rd")
    assert caught.value.kind is ErrorKind.INTERNAL


def test_changed_parameters_need_rehash() -> None:
    """A hash made with other argon2 parameters verifies but needs a rehash."""
    weak = PasswordHasher([PEPPER], FAST_ARGON2).hash("Passw0rd")
    stronger = PasswordHasher([PEPPER], Argon2Parameters(time_cost=2, memory_cost_kib=512))
    assert stronger.verify(weak, "Passw0rd")
    assert stronger.needs_rehash(weak)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        "kagi-pw1$p2027$",
        "kagi-pw1$p2027$argon2i$v=19$x",
        "x$p2027$argon2id$",
        "kagi-pw1$p2027$argon2id$v=19$junk",
    ],
)
def test_malformed_hashes_raise(stored: str) -> None:
    """A stored value that is not `kagi-pw1$<pepper id>$argon2id$...` raises PasswordHashError, never returns True."""
    hasher = PasswordHasher([PEPPER], FAST_ARGON2)
    with pytest.raises(PasswordHashError):
        hasher.verify(stored, "x")


def test_dummy_verify_is_false() -> None:
    """verify_dummy answers False for any input, including the dummy's own text."""
    hasher = PasswordHasher([PEPPER], FAST_ARGON2)
    assert not hasher.verify_dummy("2468")
    assert not hasher.verify_dummy("kagi-dummy-password-for-equal-timing")


def test_secrets_never_print() -> None:
    """Neither the pepper nor the hasher prints the pepper secret."""
    hasher = PasswordHasher([PEPPER], FAST_ARGON2)
    for text in (repr(PEPPER), repr(hasher), str(hasher)):
        assert repr(PEPPER.secret) not in text
        assert PEPPER.secret.hex() not in text


def test_bad_configuration_is_refused() -> None:
    """Short peppers, duplicate pepper ids, no pepper, and too little memory are configuration errors."""
    with pytest.raises(ValueError, match="32 bytes"):
        Pepper("p", b"short")
    with pytest.raises(ValueError, match="unique"):
        PasswordHasher([PEPPER, Pepper("p2027", b"\x44" * 32)])
    with pytest.raises(ValueError, match="at least one"):
        PasswordHasher([])
    with pytest.raises(ValueError, match="memory"):
        Argon2Parameters(memory_cost_kib=4)


async def test_hashes_run_off_the_event_loop_on_at_most_one_thread_per_core() -> None:
    """`in_kdf_thread` runs argon2 work on worker threads, never the event loop's, and however many hashes are
    asked for at once, on no more threads than the process has cores."""
    hasher = PasswordHasher([PEPPER], FAST_ARGON2)
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def hash_noting_thread(password: str) -> str:
        threads.add(threading.get_ident())
        return hasher.hash(password)

    stored = await asyncio.gather(*(in_kdf_thread(hash_noting_thread, f"pin{n}") for n in range(24)))
    assert all(hasher.verify(h, f"pin{n}") for n, h in enumerate(stored))
    assert loop_thread not in threads
    assert 1 <= len(threads) <= len(os.sched_getaffinity(0))
