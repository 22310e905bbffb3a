"""The reason catalogues: every reason the code raises is catalogued with the kind it is raised with, and each
entry pairs its kind with an HTTP status the gateway can answer it with.

The raise sites are found by reading the source (ast), not by running it: `reason = "X"` in a class body, a
`reason="X"` keyword (an error or a helper that raises one), a `reason: str = "X"` default, and the gateway's
`HttpError(status, "X", ...)`.
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import CATALOGUES, HTTP_STATUS_FOR_CODE, REASONS, http_status_for
from gateway.schemas import ERROR_STATUSES
from kagi.errors import ErrorKind, KagiError
from kagi.reasons import ReasonCatalogue, SharedReason, generic_reasons, merge
from kagi.runtime.grpc_errors import STATUS_FOR_KIND
from services.ca_service.domain.reasons import CaReason
from services.enrollment_service.domain.reasons import EnrollmentReason
from services.otp_service.domain.reasons import OtpReason

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("services", "kagi", "gateway")

CATALOGUES_BY_PREFIX: dict[str, tuple[type[ReasonCatalogue], ...]] = {
    "services/ca_service/": (CaReason, SharedReason),
    "services/otp_service/": (OtpReason, SharedReason),
    "services/enrollment_service/": (EnrollmentReason, SharedReason),
    "kagi/": (SharedReason,),
    "gateway/": (SharedReason,),
}
"""Says where a reason raised under each folder must be catalogued (any one of them)."""

HTTP_STATUSES_OF_KIND: dict[ErrorKind, frozenset[int]] = {
    ErrorKind.INVALID_ARGUMENT: frozenset({400, 422}),
    ErrorKind.FAILED_PRECONDITION: frozenset({409}),
    ErrorKind.NOT_FOUND: frozenset({404}),
    ErrorKind.ALREADY_EXISTS: frozenset({409}),
    ErrorKind.PERMISSION_DENIED: frozenset({403}),
    ErrorKind.UNAUTHENTICATED: frozenset({401}),
    ErrorKind.RESOURCE_EXHAUSTED: frozenset({423, 429}),  # a lockout only an operator lifts, or throttling
    ErrorKind.ABORTED: frozenset({409}),
    ErrorKind.UNAVAILABLE: frozenset({503}),
    ErrorKind.INTERNAL: frozenset({500}),
}
"""The HTTP statuses an entry of each kind may have."""

HELPERS: dict[str, tuple[ErrorKind, int | None]] = {
    "raise_if_any": (ErrorKind.INVALID_ARGUMENT, None),  # enrollment's rules: raises InvalidArgument
    "invalid_input": (ErrorKind.INVALID_ARGUMENT, 400),  # the gateway's 400
}
"""The functions that raise an error with the `reason=` they are given, with its kind and status."""

HTTP_ERRORS = frozenset({"HttpError", "_Refused"})
"""The gateway's constructors taking (HTTP status, reason, ...) positionally."""

RETIRED = frozenset({"CONCURRENT_UPDATE", "CONTENDED"})
"""The lost-race reasons CONCURRENT_CHANGE replaced."""

REASON_SHAPE = re.compile(r"[A-Z][A-Z0-9_]{0,61}[A-Z0-9]")
"""AIP-193's form of an ErrorInfo reason: UPPER_SNAKE_CASE, at most 63 characters."""


@dataclass(frozen=True)
class RaiseSite:
    """One place the source names a reason, with the kind and HTTP status the site gives it where it says."""

    reason: str
    path: str
    line: int
    kind: ErrorKind | None
    http_status: int | None
    unresolved: str = ""
    """Why the site's kind cannot be told (its module does not import, say); empty when it can."""

    def __str__(self) -> str:
        return f"{self.reason} at {self.path}:{self.line}"


class _UnresolvedError(Exception):
    """The kind of a raise site cannot be told."""


@functools.cache
def _module(path: str) -> Any:
    """Return the module of a source file (raise _UnresolvedError when it does not import)."""
    name = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a module broken by work in progress: report its sites, check the rest
        raise _UnresolvedError(f"{name} does not import: {exc!r}") from exc


def _resolve(path: str, dotted: str) -> Any:
    """Return what a dotted name stands for in a file's module (None when it is no module-level name)."""
    head, *rest = dotted.split(".")
    obj = getattr(_module(path), head, None)
    for name in rest:
        obj = getattr(obj, name, None)
    return obj


def _error_kind(path: str, dotted: str) -> tuple[ErrorKind | None, int | None]:
    """Return the kind (and HTTP status, if fixed) of the error that a class or helper raises."""
    helper = HELPERS.get(dotted.rsplit(".", 1)[-1])
    if helper is not None:
        return helper
    target = _resolve(path, dotted)
    if isinstance(target, type) and issubclass(target, KagiError):
        return target.kind, None
    raise _UnresolvedError(f"cannot tell which error {dotted} raises: name it in HELPERS")


def _site(reason: str, path: str, line: int, dotted: str) -> RaiseSite:
    try:
        kind, status = _error_kind(path, dotted)
    except _UnresolvedError as exc:
        return RaiseSite(reason, path, line, None, None, str(exc))
    return RaiseSite(reason, path, line, kind, status)


def _literal(path: str, node: ast.expr) -> str | None:
    """Return the string a reason argument spells: a literal or a module-level constant (None otherwise)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id.lstrip("_").isupper():
        try:
            value = getattr(_module(path), node.id, None)
        except _UnresolvedError:
            return None
        return value if isinstance(value, str) else None
    return None


def _sites_in(path: str, tree: ast.Module) -> Iterator[RaiseSite]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if (
                    isinstance(statement, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "reason" for t in statement.targets)
                    and (reason := _literal(path, statement.value)) is not None
                ):
                    yield _site(reason, path, statement.lineno, node.name)
        elif isinstance(node, ast.Call):
            dotted = ast.unparse(node.func)
            for keyword in node.keywords:
                reason = _literal(path, keyword.value) if keyword.arg == "reason" else None
                # An RFC 5280 revocation reason ("keyCompromise") is a value, not an error reason.
                if reason is not None and REASON_SHAPE.fullmatch(reason):
                    yield _site(reason, path, node.lineno, dotted)
            if dotted in HTTP_ERRORS and len(node.args) >= 2:
                answer, reason = node.args[0], _literal(path, node.args[1])
                if reason is not None and isinstance(answer, ast.Constant) and isinstance(answer.value, int):
                    yield RaiseSite(reason, path, node.lineno, None, answer.value)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            positional = arguments.posonlyargs + arguments.args
            pairs = [
                *zip(positional[len(positional) - len(arguments.defaults) :], arguments.defaults, strict=True),
                *zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True),
            ]
            for argument, default in pairs:
                if argument.arg == "reason" and default is not None and (reason := _literal(path, default)):
                    helper_kind, helper_status = HELPERS.get(node.name, (None, None))
                    yield RaiseSite(reason, path, node.lineno, helper_kind, helper_status)


def raise_sites() -> list[RaiseSite]:
    """Return every place under services/, kagi/ and gateway/ that names a reason an error is raised with."""
    sites: list[RaiseSite] = []
    for folder in SCANNED:
        for file in sorted((ROOT / folder).rglob("*.py")):
            if file.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            path = file.relative_to(ROOT).as_posix()
            sites += _sites_in(path, ast.parse(file.read_text(encoding="utf-8"), filename=path))
    return sites


def _catalogues_for(path: str) -> tuple[type[ReasonCatalogue], ...]:
    return next(catalogues for prefix, catalogues in CATALOGUES_BY_PREFIX.items() if path.startswith(prefix))


def _entry(site: RaiseSite) -> ReasonCatalogue | None:
    for catalogue in _catalogues_for(site.path):
        if site.reason in catalogue.__members__:
            return catalogue[site.reason]
    return None


SITES = raise_sites()


def test_the_scan_finds_the_known_kinds_of_raise_site() -> None:
    """The scan sees class attributes, keywords, helper defaults and the gateway's own errors (so a scan that
    silently found nothing cannot pass the tests below)."""
    found = {(site.reason, site.path) for site in SITES}
    assert ("CSR_MALFORMED", "services/ca_service/domain/errors.py") in found
    assert ("MAIL_UNAVAILABLE", "services/enrollment_service/adapters/mail.py") in found
    assert ("INVALID_INPUT", "services/enrollment_service/domain/rules.py") in found
    assert ("PKI_UNAVAILABLE", "gateway/pki.py") in found
    assert ("CLIENT_CERT_NOT_CUSTOMER", "gateway/tls.py") in found
    assert len(SITES) > 150


def test_every_raised_reason_is_in_its_services_catalogue() -> None:
    """Each reason raised in a service is in that service's catalogue or the shared one; one raised by shared
    code or the gateway is in the shared one."""
    missing = [str(site) for site in SITES if _entry(site) is None]
    assert not missing, "uncatalogued reasons:\n  " + "\n  ".join(missing)


def test_every_raise_sites_kind_is_known() -> None:
    """The scan can tell the kind of every raise site (each module imports; each raising helper is named)."""
    unresolved = [f"{site}: {site.unresolved}" for site in SITES if site.unresolved]
    assert not unresolved, "raise sites of unknown kind:\n  " + "\n  ".join(unresolved)


def test_every_reason_is_raised_with_its_catalogued_kind_and_status() -> None:
    """A raise site's error kind (and, for the gateway's own errors, HTTP status) is the catalogue entry's: the
    gRPC code and the HTTP status a client sees for one reason never depend on where it was raised."""
    wrong = []
    for site in SITES:
        entry = _entry(site)
        if entry is None:
            continue
        if site.kind is not None and site.kind is not entry.kind:
            wrong.append(f"{site}: raised as {site.kind.name}, catalogued as {entry.kind}")
        if site.http_status is not None and site.http_status != entry.http_status:
            wrong.append(f"{site}: answered {site.http_status}, catalogued as {entry.http_status}")
    assert not wrong, "reasons raised unlike their catalogue entry:\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize("member", list(REASONS), ids=str)
def test_each_entry_pairs_its_kind_with_a_status_of_that_kind(member: str) -> None:
    """INVALID_ARGUMENT is 400 (or 422), NOT_FOUND 404, ABORTED 409, UNAVAILABLE 503, RESOURCE_EXHAUSTED 423 or
    429, and so on; an entry without a kind (only the gateway answers it) has a status no kind has."""
    entry = REASONS[member]
    if entry.kind is None:
        assert not any(entry.http_status in statuses for statuses in HTTP_STATUSES_OF_KIND.values())
        assert 400 <= entry.http_status < 500
    else:
        assert entry.http_status in HTTP_STATUSES_OF_KIND[entry.kind]


def test_no_reason_is_listed_twice_with_different_meanings() -> None:
    """A reason in several catalogues has one kind and one HTTP status in all of them (merge refuses otherwise),
    and each catalogue's entries are distinct (no alias: Enum would merge equal values silently)."""
    merge(CATALOGUES)
    for catalogue in CATALOGUES:
        assert len(catalogue.__members__) == len(list(catalogue)), catalogue.__name__


def test_every_catalogued_reason_is_raised_somewhere() -> None:
    """No catalogue keeps an entry the code no longer raises (the protos and docs would promise it)."""
    raised = {(site.reason, catalogue) for site in SITES for catalogue in _catalogues_for(site.path)}
    stale = [f"{c.__name__}.{m.reason}" for c in CATALOGUES for m in c if (m.reason, c) not in raised]
    assert not stale, "catalogued but never raised: " + ", ".join(stale)


def test_reasons_are_upper_snake_case_with_a_one_line_meaning() -> None:
    """Every reason has AIP-193's form, and its meaning is one sentence on one line."""
    for catalogue in CATALOGUES:
        for member in catalogue:
            assert REASON_SHAPE.fullmatch(member.reason), member
            assert member.meaning.endswith("."), member
            assert "\n" not in member.meaning, member
            assert len(member.meaning) <= 110, member


def test_no_catalogue_lists_the_retired_lost_race_reasons() -> None:
    """A lost race is CONCURRENT_CHANGE (ABORTED, 409) everywhere: CONCURRENT_UPDATE and CONTENDED are gone."""
    assert not RETIRED & set(REASONS)
    lost_race = SharedReason.CONCURRENT_CHANGE
    assert (lost_race.kind, lost_race.http_status) == (ErrorKind.ABORTED, 409)


def test_each_kind_has_its_generic_reason_and_the_gateway_takes_its_status() -> None:
    """The shared catalogue names a generic reason after each kind; a code's fallback status is that entry's."""
    for kind, generic in generic_reasons().items():
        assert generic.kind is kind
        assert HTTP_STATUS_FOR_CODE[STATUS_FOR_KIND[kind]] == generic.http_status


@pytest.mark.parametrize("member", [m for m in REASONS if REASONS[m].kind is not None], ids=str)
def test_the_gateway_answers_each_catalogued_reason_with_its_status(member: str) -> None:
    """The gateway's status for a reason answered with its kind's gRPC code is the catalogue's."""
    entry = REASONS[member]
    assert entry.kind is not None
    assert http_status_for(STATUS_FOR_KIND[entry.kind], member) == entry.http_status


def test_every_catalogued_status_is_documented_by_the_api() -> None:
    """The OpenAPI document lists each status a reason can give a customer route (405 aside: a route answers
    only the methods it documents, so no documented call gets it)."""
    statuses = {entry.http_status for entry in REASONS.values()}
    assert statuses - {405} <= set(ERROR_STATUSES)


def test_the_catalogues_are_pure_data() -> None:
    """The catalogue modules import nothing but the error kinds and the standard library (no gRPC, no HTTP)."""
    allowed = {"__future__", "collections.abc", "dataclasses", "enum", "kagi.errors", "kagi.reasons"}
    for catalogue in CATALOGUES:
        source = Path(importlib.import_module(catalogue.__module__).__file__ or "").read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):
                assert node.module in allowed, (catalogue.__module__, node.module)
            assert not isinstance(node, ast.Import), catalogue.__module__
