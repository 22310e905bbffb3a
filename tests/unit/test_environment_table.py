"""Every environment variable the code reads is in the catalogue docs/operations.md's table is made from, and
every catalogue entry is read somewhere.

The source (kagi/, services/, gateway/, and deploy/init.sh) is scanned, not imported: a read is a name given to
an `Environment` helper (`text`, `optional`, `integer`, `flag`, `path`, `secret`, `required_secret`), to
`os.environ`/`os.getenv` (or a mapping named `environ`/`env`), `os.environ[...]`, or a click option's `envvar`.
A name may be a string, a module constant, an f-string, or a parameter: a parameter is followed to every call of
its function in the source (so `tls_files_from_env(env, "KAGI_CA")` reads `KAGI_CA_TLS_CERT`).
"""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kagi.runtime.environment_catalogue import VARIABLES, by_name

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("kagi", "services", "gateway")
SHELL_SOURCES = ("deploy/init.sh",)
ENVIRONMENT_HELPERS = {"text", "optional", "integer", "flag", "path", "secret", "required_secret"}
SECRET_HELPERS = {"secret", "required_secret"}
MAPPING_NAMES = {"environ", "env", "environment"}
VARIABLE_SHAPE = re.compile(r"[A-Z][A-Z0-9_]*[A-Z0-9]")
WILDCARD = "\0"
"""Stands in a resolved name for a part the scan cannot tell (a computed value)."""

COMPONENT_OF_PATH = {
    "services/ca_service/": "ca",
    "services/otp_service/": "otp",
    "services/enrollment_service/": "enrollment",
    "gateway/": "gateway",
    "kagi/cli/admin": "kagi admin",
    "kagi/cli/dev.py": "kagi dev",
    "kagi/cli/token.py": "kagi token",
    "kagi/softtoken/": "kagi token",
    "deploy/init.sh": "init",
}
"""The component a name written in a file belongs to (files of the shared runtime belong to none)."""


@dataclass(frozen=True)
class Read:
    """One variable read: its name (WILDCARD where unknown), where the read is, and where the name was written."""

    name: str
    where: str
    origin: str


@dataclass
class Function:
    """A function of the scanned source: its parameters and the module it is in."""

    module: Module
    node: ast.FunctionDef | ast.AsyncFunctionDef
    params: list[str]
    method: bool


@dataclass
class Module:
    """A scanned module: its path, tree, string constants and functions."""

    path: str
    tree: ast.Module
    constants: dict[str, str] = field(default_factory=dict)


def modules() -> list[Module]:
    """Parse every Python file of the components."""
    found = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            module = Module(relative, ast.parse(path.read_text(encoding="utf-8"), relative))
            for statement in module.tree.body:
                if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant):
                    for target in statement.targets:
                        if isinstance(target, ast.Name) and isinstance(statement.value.value, str):
                            module.constants[target.id] = statement.value.value
            found.append(module)
    return found


class Scanner:
    """Finds every read in the modules and resolves the names read."""

    def __init__(self, scanned: list[Module]) -> None:
        self.modules = scanned
        self.constants: dict[str, str] = {}
        for module in scanned:
            self.constants.update(module.constants)
        self.functions: dict[str, list[Function]] = defaultdict(list)
        self.parents: dict[ast.AST, ast.AST] = {}
        self.module_of: dict[ast.AST, Module] = {}
        for module in scanned:
            for node in ast.walk(module.tree):
                self.module_of[node] = module
                for child in ast.iter_child_nodes(node):
                    self.parents[child] = node
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    params = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
                    method = bool(params) and params[0] in ("self", "cls")
                    self.functions[node.name].append(Function(module, node, params, method))
        self.calls: dict[str, list[ast.Call]] = defaultdict(list)
        for module in scanned:
            for node in ast.walk(module.tree):
                if isinstance(node, ast.Call):
                    callee = node.func
                    name = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", None)
                    if name:
                        self.calls[name].append(node)

    def enclosing(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        """Return the function a node is in."""
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node
        return None

    def inside_environment_class(self, node: ast.AST) -> bool:
        """Tell whether a node is in the `Environment` class (the helpers' own insides)."""
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.ClassDef) and node.name == "Environment":
                return True
        return False

    def resolve(self, expr: ast.AST, depth: int = 0) -> Iterator[tuple[str, str]]:
        """Yield (value, file it was written in) for each string `expr` can be; WILDCARD marks unknown parts."""
        module = self.module_of[expr]
        if depth > 6:
            yield WILDCARD, module.path
        elif isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            yield expr.value, module.path
        elif isinstance(expr, ast.JoinedStr):
            parts = []
            for value in expr.values:
                if isinstance(value, ast.FormattedValue):
                    parts.append(list(self.resolve(value.value, depth + 1)))
                else:
                    parts.append(list(self.resolve(value, depth + 1)))
            for combination in itertools.product(*parts):
                origins = [origin for _, origin in combination if origin != module.path]
                yield "".join(text for text, _ in combination), (origins[0] if origins else module.path)
        elif (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and expr.func.attr in ("upper", "lower")
            and not expr.args
        ):
            for text, origin in self.resolve(expr.func.value, depth + 1):
                yield (text if text == WILDCARD else getattr(text, expr.func.attr)()), origin
        elif isinstance(expr, ast.Name):
            yield from self.resolve_name(expr, depth)
        else:
            yield WILDCARD, module.path

    def resolve_name(self, expr: ast.Name, depth: int) -> Iterator[tuple[str, str]]:
        """Resolve a name: a local assignment, a parameter (through the function's calls), or a module constant."""
        module = self.module_of[expr]
        function = self.enclosing(expr)
        if function is not None:
            assigned = [
                node.value
                for node in ast.walk(function)
                if isinstance(node, ast.Assign)
                and any(isinstance(target, ast.Name) and target.id == expr.id for target in node.targets)
            ]
            if assigned:
                for value in assigned:
                    yield from self.resolve(value, depth + 1)
                return
            for candidate in self.functions.get(function.name, []):
                if candidate.node is function and expr.id in candidate.params:
                    yield from self.resolve_parameter(candidate, expr.id, depth)
                    return
        if expr.id in self.constants:
            yield self.constants[expr.id], module.path
        else:
            yield WILDCARD, module.path

    def resolve_parameter(self, function: Function, param: str, depth: int) -> Iterator[tuple[str, str]]:
        """Yield what every call of `function` passes as `param`."""
        index = function.params.index(param) - (1 if function.method else 0)
        calls = self.calls.get(function.node.name, [])
        if not calls:
            yield WILDCARD, function.module.path
        for call in calls:
            given = [keyword.value for keyword in call.keywords if keyword.arg == param]
            if not given and 0 <= index < len(call.args) and not isinstance(call.args[index], ast.Starred):
                given = [call.args[index]]
            for value in given:
                yield from self.resolve(value, depth + 1)

    def reads(self) -> Iterator[Read]:
        """Yield every read of the scanned modules."""
        for module in self.modules:
            for node in ast.walk(module.tree):
                for expr, with_file_form, sure in self.read_sites(node):
                    where = f"{module.path}:{getattr(node, 'lineno', 0)}"
                    for name, origin in self.resolve(expr):
                        if not sure and not name.startswith("KAGI_"):
                            continue  # a helper-named method on something not known to be the environment
                        if name == WILDCARD or WILDCARD in name or VARIABLE_SHAPE.fullmatch(name):
                            yield Read(name, where, origin)
                            if with_file_form and WILDCARD not in name:
                                yield Read(f"{name}_FILE", where, origin)

    def read_sites(self, node: ast.AST) -> Iterator[tuple[ast.AST, bool, bool]]:
        """Yield the name expressions a node reads the environment with, whether NAME_FILE is read too, and
        whether the reader is surely the environment (else only KAGI_* names count)."""
        if isinstance(node, ast.Call):
            callee = node.func
            for keyword in node.keywords:
                if keyword.arg == "envvar":
                    values = keyword.value.elts if isinstance(keyword.value, ast.List | ast.Tuple) else [keyword.value]
                    yield from ((value, False, True) for value in values)
            if not isinstance(callee, ast.Attribute) or not node.args:
                return
            if self.inside_environment_class(node):
                return
            if callee.attr in ENVIRONMENT_HELPERS:
                yield node.args[0], callee.attr in SECRET_HELPERS, _names_environment(callee.value)
            elif (callee.attr == "get" and _is_environ(callee.value)) or (
                callee.attr == "getenv" and isinstance(callee.value, ast.Name) and callee.value.id == "os"
            ):
                yield node.args[0], False, True
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            yield node.slice, False, True
        elif isinstance(node, ast.Compare) and _tests_membership_of_environ(node):
            yield node.left, False, True


def _tests_membership_of_environ(node: ast.Compare) -> bool:
    """Tell whether a comparison is `NAME in os.environ` (or `not in`)."""
    return len(node.ops) == 1 and isinstance(node.ops[0], ast.In | ast.NotIn) and _is_environ(node.comparators[0])


def _is_environ(expr: ast.AST) -> bool:
    """Tell whether `expr` is os.environ or a mapping named like the environment."""
    if isinstance(expr, ast.Attribute):
        return expr.attr == "environ"
    return isinstance(expr, ast.Name) and expr.id in MAPPING_NAMES


def _names_environment(expr: ast.AST) -> bool:
    """Tell whether `expr` is an `Environment`: a variable named `env`, or `Environment(...)` itself."""
    if isinstance(expr, ast.Name):
        return expr.id == "env"
    return isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "Environment"


def shell_reads() -> Iterator[Read]:
    """Yield the KAGI_* variables the deployment's shell scripts read (`$NAME`, `${NAME...}`, `environ["NAME"]`)."""
    pattern = re.compile(r"""\$\{?(KAGI_[A-Z0-9_]+)|environ\[["'](KAGI_[A-Z0-9_]+)["']\]""")
    for relative in SHELL_SOURCES:
        for number, line in enumerate((ROOT / relative).read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            for match in pattern.finditer(line):
                yield Read(match.group(1) or match.group(2), f"{relative}:{number}", relative)


def all_reads() -> list[Read]:
    """Return every read in the components' source."""
    return [*Scanner(modules()).reads(), *shell_reads()]


def catalogued(name: str) -> str | None:
    """Return the catalogue entry that covers a variable name read (NAME_FILE is covered by NAME's file form)."""
    catalogue = by_name()
    if name in catalogue:
        return name
    base = name.removesuffix("_FILE")
    if name.endswith("_FILE") and base in catalogue and catalogue[base].file_form:
        return base
    return None


def component_of(path: str) -> str | None:
    """Return the component a file belongs to, if it belongs to one."""
    for prefix, component in COMPONENT_OF_PATH.items():
        if path.startswith(prefix):
            return component
    return None


READS = all_reads()


def test_the_scan_finds_the_reads_of_every_kind() -> None:
    """The scan sees each way the code reads: helpers, parameters followed to their calls, constants, click, shell."""
    names = {read.name for read in READS}
    assert {
        "KAGI_CA_TLS_CERT",  # tls_files_from_env(env, "KAGI_CA"): an f-string over a parameter
        "KAGI_OTP_MANAGEMENT_ADDR",  # management_address(environ, "otp"): a parameter, upper-cased
        "KAGI_STORE_ALLOW_VOLATILE",  # _flag(ALLOW_VOLATILE_ENV): a module constant through a parameter
        "KAGI_OTP_PEPPER_FILE",  # env.required_secret("KAGI_OTP_PEPPER"): the file form
        "KAGI_CA_ROOT_KEY_PASSPHRASE_FILE",  # a click option's envvar
        "PROMETHEUS_MULTIPROC_DIR",  # os.environ.get(MULTIPROCESS_ENV)
        "KAGI_GATEWAY_DNS_NAMES",  # deploy/init.sh
    } <= names


def test_every_variable_read_is_in_the_catalogue() -> None:
    """A variable read anywhere has its row in the table; a read whose name the scan cannot tell matches a row."""
    missing = sorted(
        {f"{read.name} ({read.where})" for read in READS if WILDCARD not in read.name if not catalogued(read.name)}
    )
    assert not missing, (
        "variables read but missing from kagi/runtime/environment_catalogue.py (add them, then run "
        "scripts/gen_env_table.py): " + ", ".join(missing)
    )
    names = list(by_name())
    unknown = []
    for read in READS:
        if WILDCARD in read.name:
            pattern = re.compile(".+".join(re.escape(part) for part in read.name.split(WILDCARD)))
            if not any(pattern.fullmatch(name) for name in names):
                unknown.append(f"{read.where} reads a variable the scan cannot name and no entry matches")
    assert not unknown, unknown


def test_every_catalogue_entry_is_read() -> None:
    """No row documents a variable that nothing reads (a renamed or removed setting takes its row with it)."""
    read = {catalogued(r.name) for r in READS if WILDCARD not in r.name}
    unread = [variable.name for variable in VARIABLES if variable.name not in read]
    assert not unread, f"catalogue entries no component reads: {unread}"


def test_each_read_is_by_a_component_its_entry_names() -> None:
    """Where the name is written in a component's own files, the entry lists that component among its readers."""
    catalogue = by_name()
    wrong = set()
    for read in READS:
        entry = catalogued(read.name)
        component = component_of(read.origin)
        if entry and component and component not in catalogue[entry].components:
            wrong.add(
                f"{entry} is read by {component} ({read.where}) but its entry lists {catalogue[entry].components}"
            )
    assert not wrong, sorted(wrong)


def test_the_catalogue_names_each_variable_once_and_sensibly() -> None:
    """Names are unique and shaped like variables; a file form is offered only where the code reads NAME_FILE."""
    names = [variable.name for variable in VARIABLES]
    assert len(names) == len(set(names))
    assert all(VARIABLE_SHAPE.fullmatch(name) for name in names)
    read = {r.name for r in READS}
    assert [v.name for v in VARIABLES if v.file_form and f"{v.name}_FILE" not in read] == []


def test_the_table_in_the_operations_guide_is_current() -> None:
    """docs/operations.md holds the table the catalogue renders (scripts/gen_env_table.py --check)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_env_table.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
