"""Writes docs/operations.md's table of every environment variable from kagi/runtime/environment_catalogue.py.

The table goes between the marker lines `<!-- env-table:start -->` and `<!-- env-table:end -->`; nothing else
changes. tests/unit/test_environment_table.py checks that the catalogue names every variable the code reads.

    .venv/bin/python scripts/gen_env_table.py           # rewrite the table
    .venv/bin/python scripts/gen_env_table.py --check   # exit 1 when the table is not what it would write
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from kagi.runtime.environment_catalogue import VARIABLES, Variable

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "operations.md"
START = "<!-- env-table:start -->"
END = "<!-- env-table:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_row(variable: Variable) -> str:
    """Return one variable's row."""
    name = f"`{variable.name}`" + (f"<br>`{variable.name}_FILE`" if variable.file_form else "")
    readers = ", ".join(variable.components)
    secret = "yes" if variable.secret else ""
    cells = (name, readers, variable.default, secret, variable.meaning)
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def render_section() -> str:
    """Return everything between the markers (without them), ending in a newline."""
    lines = [
        "",
        "Generated from `kagi/runtime/environment_catalogue.py` by `scripts/gen_env_table.py`; a test fails when",
        "the code reads a variable the catalogue lacks. `NAME_FILE` reads the value from a file (a trailing newline",
        "dropped) and wins over `NAME`: give every secret that way, so it stays out of the process table and the",
        "manifests. `ca`, `otp`, `enrollment` and `gateway` read theirs in `kagi serve COMPONENT` and `kagi dev`.",
        "",
        "| variable | read by | default | secret | meaning |",
        "|---|---|---|---|---|",
        *(render_row(variable) for variable in VARIABLES),
        "",
    ]
    return "\n".join(lines) + "\n"


def replace_section(document: str, section: str) -> str:
    """Put `section` between the marker lines of `document`."""
    if document.count(START) != 1 or document.count(END) != 1:
        raise ValueError(f"expected exactly one {START} line and one {END} line")
    head, _, rest = document.partition(START)
    _, _, tail = rest.partition(END)
    if not head.endswith("\n") or (tail and not tail.startswith("\n")):
        raise ValueError("the markers must be lines of their own")
    return head + START + "\n" + section + END + tail


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check compare) the table; the exit status says what happened."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs; change nothing")
    parser.add_argument("--file", type=Path, default=GUIDE, help="the Markdown file (default: docs/operations.md)")
    args = parser.parse_args(argv)
    path: Path = args.file
    current = path.read_text(encoding="utf-8")
    try:
        wanted = replace_section(current, render_section())
    except ValueError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    if wanted == current:
        return 0
    if args.check:
        diff = difflib.unified_diff(
            current.splitlines(keepends=True), wanted.splitlines(keepends=True), f"{path} (now)", f"{path} (wanted)"
        )
        sys.stderr.writelines(diff)
        print(
            f"{path}: the variables table between {START} and {END} differs from the catalogue (diff above): "
            "run .venv/bin/python scripts/gen_env_table.py and commit the result",
            file=sys.stderr,
        )
        return 1
    path.write_text(wanted, encoding="utf-8")
    print(f"wrote the variables table into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
