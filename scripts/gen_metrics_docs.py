"""Writes docs/metrics.md's table of every metric kagi exports, from the registries themselves.

The table goes between the marker lines `<!-- metrics-table:start -->` and `<!-- metrics-table:end -->`; nothing
else changes. Its rows come from kagi/runtime/metrics.py (the services' figures, in prometheus-client's default
registry with its process and Python collectors) and gateway/metrics.py (the gateway's own registry).

    .venv/bin/python scripts/gen_metrics_docs.py           # rewrite the table
    .venv/bin/python scripts/gen_metrics_docs.py --check   # exit 1 when the table is not what it would write
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generated_section import write_or_check  # scripts/ is on sys.path
from prometheus_client import REGISTRY, CollectorRegistry

import kagi.runtime.metrics  # noqa: F401  (registers the services' collectors in the default registry)
from gateway.metrics import GatewayMetrics
from kagi.clients import revocation

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "metrics.md"
START = "<!-- metrics-table:start -->"
END = "<!-- metrics-table:end -->"

# Which components serve a metric, by name prefix (the first that matches); every component serves every
# metric's HELP and TYPE, but only these record samples.
SERVED_BY = (
    ("kagi_gateway_", "gateway"),
    ("kagi_grpc_server_", "ca, otp, enrollment"),
    ("kagi_grpc_client_", "gateway, otp, enrollment"),
    ("kagi_certificates_", "ca"),
    ("kagi_crl_", "ca"),
    ("kagi_ocsp_", "ca"),
    ("kagi_otp_", "otp"),
    ("kagi_lockouts", "otp, enrollment"),
    ("kagi_enrollment", "enrollment"),
    ("kagi_outbox_", "enrollment"),
    ("kagi_store_", "ca, otp, enrollment"),
    ("kagi_revocation_stream_", "gateway, otp, enrollment"),
    ("kagi_internal_", "otp, enrollment"),
    ("kagi_worker_", "every component with KAGI_<C>_WORKERS>1"),
    ("process_", "every component with one worker"),
    ("python_", "every component with one worker"),
)


@dataclass(frozen=True)
class Row:
    """One metric as a scrape shows it."""

    name: str
    kind: str
    labels: tuple[str, ...]
    served_by: str
    meaning: str


def _exposed(name: str, kind: str) -> str:
    return f"{name}_total" if kind == "counter" else name


def _served_by(name: str) -> str:
    for prefix, components in SERVED_BY:
        if name.startswith(prefix):
            return components
    raise ValueError(f"{name}: say which components serve it in SERVED_BY")


def _collectors(registry: CollectorRegistry) -> Iterator[Any]:
    seen: set[int] = set()
    for collector in list(registry._collector_to_names):  # the registry's own record of what it holds
        if id(collector) not in seen:
            seen.add(id(collector))
            yield collector


def rows() -> list[Row]:
    """Return every metric of the services' default registry and the gateway's, sorted by name."""
    found: dict[str, Row] = {}
    revocation._peer_metrics()  # the services' follower of the internal CA registers its metrics on first use
    registries = (REGISTRY, GatewayMetrics().registry)
    for registry in registries:
        for collector in _collectors(registry):
            labelnames = getattr(collector, "_labelnames", None)
            if labelnames is not None:  # one of kagi's metrics: its label names are known before any sample
                kind = collector._type
                name = _exposed(collector._name, kind)
                labels = tuple(labelnames)
                if getattr(collector, "_multiprocess_mode", "") in ("liveall", "all"):
                    labels += ("pid (several workers)",)
                found[name] = Row(name, kind, labels, _served_by(name), collector._documentation)
                continue
            for family in collector.collect():  # the process and Python collectors: read what they report
                name = _exposed(family.name, family.type)
                labels = tuple(sorted({key for sample in family.samples for key in sample.labels}))
                found[name] = Row(name, family.type, labels, _served_by(name), family.documentation)
    return [found[name] for name in sorted(found)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_row(row: Row) -> str:
    """Return one metric's row."""
    labels = ", ".join(f"`{label}`" if " " not in label else label for label in row.labels)
    cells = (f"`{row.name}`", row.kind, labels, row.served_by, row.meaning)
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def render_section() -> str:
    """Return everything between the markers (without them), ending in a newline."""
    lines = [
        "",
        "Generated from the registries (`kagi/runtime/metrics.py`, `gateway/metrics.py`) by",
        "`scripts/gen_metrics_docs.py`; CI fails when it is stale. A histogram is scraped as `<name>_bucket`,",
        "`<name>_sum` and `<name>_count` (the count of observations: calls, steps, operations).",
        "",
        "| metric | type | labels | recorded by | meaning |",
        "|---|---|---|---|---|",
        *(render_row(row) for row in rows()),
        "",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check compare) the table; the exit status says what happened."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs; change nothing")
    parser.add_argument("--file", type=Path, default=GUIDE, help="the Markdown file (default: docs/metrics.md)")
    args = parser.parse_args(argv)
    path: Path = args.file
    return write_or_check(
        path,
        render_section(),
        start=START,
        end=END,
        what="metrics table",
        command=".venv/bin/python scripts/gen_metrics_docs.py",
        check=args.check,
    )


if __name__ == "__main__":
    raise SystemExit(main())
