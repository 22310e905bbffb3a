"""Writing files that must be whole or absent: keys, passphrases, certificates, token files.

Every writer in kagi goes through `write_file`: the data goes to a temporary file created with exactly the mode
asked for (whatever the umask) and fsynced, then takes the file's name in one step, and the directory is fsynced
so the name survives a power loss too. Without `replace`, an existing file is never overwritten: the name is
taken with a hard link, which fails if anything is there, so two writers racing cannot clobber each other.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_file(path: Path, data: bytes, mode: int, *, replace: bool = True) -> None:
    """Write `data` to `path` atomically with `mode`; without `replace`, raise FileExistsError if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
        _sync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open a directory for fsync
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
