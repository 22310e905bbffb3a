"""One generated section in a Markdown file, between two marker lines: put it there, or check that it is there.

The generators of docs tables (scripts/gen_roles_table.py, gen_env_table.py, gen_metrics_docs.py) render their
section and hand it here; nothing outside the markers ever changes. With `check`, the file is left alone and a
stale section is reported as a diff on stderr with the command that regenerates it (CI runs every generator so).
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path


def replace_section(document: str, section: str, start: str, end: str) -> str:
    """Return DOCUMENT with SECTION between its START and END marker lines (each present once, on its own line)."""
    if document.count(start) != 1 or document.count(end) != 1:
        raise ValueError(f"expected exactly one {start} line and one {end} line")
    head, _, rest = document.partition(start)
    _, _, tail = rest.partition(end)
    if not head.endswith("\n") or (tail and not tail.startswith("\n")):
        raise ValueError("the markers must be lines of their own")
    return head + start + "\n" + section + end + tail


def write_or_check(path: Path, section: str, *, start: str, end: str, what: str, command: str, check: bool) -> int:
    """Put SECTION (WHAT it is) into PATH, or with CHECK only compare; return the exit status.

    0: the file holds it (now); 1: the markers are broken, or (CHECK) the file differs: the diff and COMMAND, which
    regenerates it, go to stderr.
    """
    current = path.read_text(encoding="utf-8")
    try:
        wanted = replace_section(current, section, start, end)
    except ValueError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    if wanted == current:
        return 0
    if check:
        diff = difflib.unified_diff(
            current.splitlines(keepends=True), wanted.splitlines(keepends=True), f"{path} (now)", f"{path} (wanted)"
        )
        sys.stderr.writelines(diff)
        print(
            f"{path}: the {what} between {start} and {end} is stale (diff above): run {command} and commit the result",
            file=sys.stderr,
        )
        return 1
    path.write_text(wanted, encoding="utf-8")
    print(f"wrote the {what} into {path}")
    return 0
