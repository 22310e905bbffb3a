"""Writes docs/operations.md's table of every environment variable from kagi/runtime/environment_catalogue.py.

The table goes between the marker lines `<!-- env-table:start -->` and `<!-- env-table:end -->`; nothing else
changes. tests/unit/test_environment_table.py checks that the catalogue names every variable the code reads.

    .venv/bin/python scripts/gen_env_table.py           # rewrite the table
    .venv/bin/python scripts/gen_env_table.py --check   # exit 1 when the table is not what it would write
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from generated_section import write_or_check  # scripts/ is on sys.path

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


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check compare) the table; the exit status says what happened."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs; change nothing")
    parser.add_argument("--file", type=Path, default=GUIDE, help="the Markdown file (default: docs/operations.md)")
    args = parser.parse_args(argv)
    path: Path = args.file
    return write_or_check(
        path,
        render_section(),
        start=START,
        end=END,
        what="variables table",
        command=".venv/bin/python scripts/gen_env_table.py",
        check=args.check,
    )


if __name__ == "__main__":
    sys.exit(main())
