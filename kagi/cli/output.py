"""What every `kagi admin` command shares: tables or JSON, confirmation before a change, progress, exit codes.

People get tables (rich) and a question before anything irreversible; scripts pass `--json` and `--yes`. Anything
meant for a person but not for a pipe (the plan of a change, its question, progress bars) goes to stderr, so stdout
carries only the result. Exit codes: 0 ok, 1 the operation failed, 2 usage (click's own, and a change refused
without a terminal or `--yes`), 3 not reachable (a service or a store is down).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kagi.errors import ErrorKind, KagiError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

EXIT_CODES_HELP = """\b
Exit codes:
  0  done
  1  the operation failed (refused by the service, a broken audit chain, a file it cannot use)
  2  usage: a wrong option, or a change refused because there is no terminal to confirm it and no --yes
  3  not reachable: a service or the store is down or did not answer in time (try again later)"""


class OperationFailed(click.ClickException):
    """The operation was tried and failed: exit 1."""

    exit_code = EXIT_FAILED


class Unreachable(click.ClickException):
    """A service or a store could not be reached, or did not answer in time: exit 3."""

    exit_code = EXIT_UNREACHABLE


class ConfirmationRequired(click.ClickException):
    """A change was asked for without --yes and there is no terminal to confirm it on: exit 2."""

    exit_code = EXIT_USAGE


def failure(exc: KagiError, what: str = "", *, with_reason: bool = True) -> click.ClickException:
    """Return the command-line error for a kagi error: exit 3 when something was unreachable, else exit 1."""
    prefix = f"{what}: " if what else ""
    message = f"{prefix}{exc.reason}: {exc}" if with_reason else f"{prefix}{exc}"
    if exc.kind is ErrorKind.UNAVAILABLE:
        return Unreachable(message)
    return OperationFailed(message)


# -- options ----------------------------------------------------------------------------------------------------


def json_option(help_text: str = "Print JSON for scripts instead of a table.") -> Callable[[F], F]:
    """Add `--json` (parameter `as_json`) to a command."""
    return click.option("--json", "as_json", is_flag=True, help=help_text)


yes_option = click.option("--yes", "-y", "yes", is_flag=True, help="Do not ask for confirmation (scripts).")
"""Add `--yes` (parameter `yes`) to a command that changes state."""

dry_run_option = click.option(
    "--dry-run", "dry_run", is_flag=True, help="Show what would be done, change nothing, exit 0."
)
"""Add `--dry-run` (parameter `dry_run`) to a command whose plan can be shown without doing it."""


# -- confirmation -----------------------------------------------------------------------------------------------


Plan = Mapping[str, object] | Sequence[str]
"""What a change will do: fields of the object it acts on (a table), or lines of text."""


def confirm(action: str, plan: Plan | Callable[[], Plan] = (), *, yes: bool, dry_run: bool = False) -> bool:
    """Show what `action` will do and ask; return False for a dry run (nothing to do), True to go ahead.

    The plan (or the function that looks it up, called only when it is shown) and the question go to stderr.
    With --yes nothing is shown or asked. Without a terminal on stdin (a script, a pipe) and without --yes,
    refuse with exit 2 before looking anything up. A "no" aborts with exit 1.
    """
    if yes and not dry_run:
        return True
    if not dry_run and not _stdin_is_terminal():
        raise ConfirmationRequired(
            f"not done: {action} needs confirmation and there is no terminal to ask on; pass --yes to do it"
            " (or --dry-run to only see the plan)"
        )
    _show_plan(action, plan() if callable(plan) else plan, dry_run=dry_run)
    if dry_run:
        return False
    click.confirm("Go ahead?", default=False, abort=True, err=True)
    return True


def _show_plan(action: str, plan: Plan, *, dry_run: bool) -> None:
    console = _stdout_console(stderr=True)
    console.print(f"[bold]{'Would' if dry_run else 'This will'}[/bold] {escape(action)}.")
    if isinstance(plan, Mapping):
        if plan:
            _print(console, _record_table(plan, console.is_terminal))
    else:
        for line in plan:
            console.print(f"  {line}", markup=False)


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


# -- tables and JSON --------------------------------------------------------------------------------------------


def print_json(value: object) -> None:
    """Print one JSON document to stdout (UTF-8 text kept readable)."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def print_rows(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    *,
    as_json: bool,
    empty: str = "nothing found",
    headers: Mapping[str, str] | None = None,
) -> None:
    """Print rows as a table (columns in this order) or, with as_json, every row in full as one JSON list."""
    if as_json:
        print_json(list(rows))
        return
    if not rows:
        click.echo(empty, err=True)
        return
    console = _stdout_console()
    table = Table(
        box=box.SIMPLE_HEAD if console.is_terminal else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold" if console.is_terminal else "",
    )
    for column in columns:
        table.add_column((headers or {}).get(column, column.upper()), no_wrap=not console.is_terminal)
    for row in rows:
        table.add_row(*(_cell(row.get(column, "")) for column in columns))
    _print(console, table)


def print_record(record: Mapping[str, object], *, as_json: bool) -> None:
    """Print one object as a two-column table (field, value) or, with as_json, as one JSON object."""
    if as_json:
        print_json(dict(record))
        return
    console = _stdout_console()
    _print(console, _record_table(record, console.is_terminal))


def _record_table(record: Mapping[str, object], terminal: bool) -> Table:
    table = Table(box=None, show_header=False, show_edge=False, pad_edge=False)
    table.add_column(style="bold" if terminal else "", no_wrap=True)
    table.add_column(no_wrap=not terminal)
    for key, value in record.items():
        table.add_row(key, _cell(value))
    return table


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _stdout_console(*, stderr: bool = False) -> Console:
    # Resolved when printing, so that a redirected sys.stdout (click's test runner) is the one written to.
    probe = Console(highlight=False, stderr=stderr)
    if probe.is_terminal:
        return probe
    # A pipe or a file: no colour, and never a wrapped cell (scripts cut columns out of the lines).
    return Console(highlight=False, width=100_000, no_color=True, stderr=stderr)


def _print(console: Console, renderable: Table | str) -> None:
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()), err=console.stderr)


# -- progress ---------------------------------------------------------------------------------------------------


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)` (n more items done) for a progress bar on stderr, drawn only when stderr is a terminal.

    Without a total (pages of unknown count) it shows a spinner and the count so far.
    """
    console = Console(stderr=True)
    if not console.is_terminal:

        def ignore(n: int) -> None:
            del n

        yield ignore
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if total is None:
        columns = [SpinnerColumn(), TextColumn("{task.description}: {task.completed}")]
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        yield advance
