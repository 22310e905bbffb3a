"""Writes docs/design.md's per-RPC "who may call" tables from the allow-lists in code.

One table per gRPC service: a row per RPC in proto order (taken from the service descriptor, so an RPC missing
from an allow-list shows as callable by nobody), a column per role, ✓ where the role may call. The tables go
between the marker lines `<!-- roles-table:start -->` and `<!-- roles-table:end -->`; nothing else changes.

    .venv/bin/python scripts/gen_roles_table.py           # rewrite the section
    .venv/bin/python scripts/gen_roles_table.py --check   # exit 1 when the section is not what it would write
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from generated_section import write_or_check  # scripts/ is on sys.path
from google.protobuf.descriptor import ServiceDescriptor

from kagi.ca.v1 import ca_pb2
from kagi.enrollment.v1 import enrollment_pb2, user_pb2
from kagi.otp.v1 import otp_pb2
from kagi.runtime.identity import Role
from services.ca_service import api as ca_api
from services.enrollment_service import api as enrollment_api
from services.enrollment_service import user_api
from services.otp_service import api as otp_api

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
START = "<!-- roles-table:start -->"
END = "<!-- roles-table:end -->"
TICK = "✓"


@dataclass(frozen=True)
class ServiceTable:
    """One gRPC service: its descriptor and the allow-list the server enforces."""

    name: str
    descriptor: ServiceDescriptor
    allowed: Mapping[str, frozenset[Role]]


def service_tables() -> list[ServiceTable]:
    """Return the four services with their allow-lists, as the servers load them."""
    return [
        ServiceTable(
            ca_api.SERVICE_NAME,
            ca_pb2.DESCRIPTOR.services_by_name["CertificateAuthorityService"],
            ca_api.ALLOWED_ROLES,
        ),
        ServiceTable(otp_api.SERVICE_NAME, otp_pb2.DESCRIPTOR.services_by_name["OtpService"], otp_api.ALLOWED_ROLES),
        ServiceTable(
            enrollment_api.SERVICE_NAME,
            enrollment_pb2.DESCRIPTOR.services_by_name["EnrollmentService"],
            enrollment_api.ALLOWED_ROLES,
        ),
        ServiceTable(
            user_api.USER_SERVICE_NAME,
            user_pb2.DESCRIPTOR.services_by_name["UserService"],
            user_api.USER_ALLOWED_ROLES,
        ),
    ]


def check_consistency(tables: list[ServiceTable]) -> list[str]:
    """Name allow-list entries that match no RPC (a typo there leaves the real RPC to nobody)."""
    problems = []
    for table in tables:
        if table.descriptor.full_name != table.name:
            problems.append(f"{table.name}: the descriptor is {table.descriptor.full_name}")
        methods = {method.name for method in table.descriptor.methods}
        unknown = sorted(set(table.allowed) - methods)
        problems += [f"{table.name}: the allow-list names {name}, which the proto does not define" for name in unknown]
    return problems


def render_table(table: ServiceTable) -> list[str]:
    """Return one service's Markdown table (blank cells where a role may not call)."""
    roles = list(Role)
    lines = [
        f"#### `{table.name}`",
        "",
        "| RPC | " + " | ".join(f"`{role.value}`" for role in roles) + " |",
        "|---|" + ":-:|" * len(roles),
    ]
    for method in table.descriptor.methods:
        allowed = table.allowed.get(method.name, frozenset())
        rpc = f"`{method.name}`" if allowed else f"`{method.name}` (nobody)"
        cells = [TICK if role in allowed else " " for role in roles]
        lines.append(f"| {rpc} | " + " | ".join(cells) + " |")
    return lines


def render_section(tables: list[ServiceTable]) -> str:
    """Return everything between the markers (without them), ending in a newline."""
    lines = [
        "",
        "Generated; edit the allow-lists (`ALLOWED_ROLES` in each service's `api.py`, `USER_ALLOWED_ROLES` in",
        "`services/enrollment_service/user_api.py`) and run `scripts/gen_roles_table.py`. Every role not ticked is",
        "refused with PERMISSION_DENIED (reason CALLER_NOT_ALLOWED); a certificate without a kagi role (a",
        "customer's) is refused with UNAUTHENTICATED on every RPC. Health and reflection are open to any caller",
        "that passes the mTLS handshake.",
        "",
    ]
    for table in tables:
        lines += [*render_table(table), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check compares) the generated section; the exit status says what happened."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs; change nothing")
    parser.add_argument("--file", type=Path, default=DESIGN, help="the Markdown file (default: docs/design.md)")
    args = parser.parse_args(argv)
    path: Path = args.file

    tables = service_tables()
    if problems := check_consistency(tables):
        print("the allow-lists do not match the protos:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return write_or_check(
        path,
        render_section(tables),
        start=START,
        end=END,
        what="roles table",
        command=".venv/bin/python scripts/gen_roles_table.py",
        check=args.check,
    )


if __name__ == "__main__":
    sys.exit(main())
