"""Docstrings summarise what an object does or returns (PEP 257), never open by repeating the object's name."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kagi", "services", "gateway", "tests", "bench", "scripts")
_FIRST_WORDS = re.compile(r"\s*[`'\"]*([A-Za-z_][A-Za-z0-9_]*)[`'\"]*(:?)\s*([A-Za-z_]*)")


def _documented(tree: ast.Module) -> Iterator[tuple[str, ast.Constant]]:
    """Yield (name, docstring node) for every function, class and documented attribute in TREE."""

    def body_of(body: list[ast.stmt]) -> Iterator[tuple[str, ast.Constant]]:
        for index, node in enumerate(body):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                first = node.body[0] if node.body else None
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    yield node.name, first.value
                yield from body_of(node.body)
            elif isinstance(node, ast.Assign | ast.AnnAssign) and index + 1 < len(body):
                following = body[index + 1]
                if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        if isinstance(target, ast.Name):
                            yield target.id, following.value

    yield from body_of(tree.body)


def repeats_its_name(name: str, docstring: str) -> bool:
    """Tell whether DOCSTRING opens with NAME as its subject ("get_user returns", "Entry is", "Foo: ...").

    An imperative verb that happens to be the function's one-word name ("Activate the token." for `activate`)
    is a proper summary, not a repetition.
    """
    match = _FIRST_WORDS.match(docstring)
    if match is None:
        return False
    word, colon, following = match.groups()
    bare = name.lstrip("_")
    if word.lower() != bare.lower():
        return False
    one_plain_word = bare.isalpha() and bare.islower()
    third_person = following in ("is", "are", "was") or (following.endswith("s") and not following.endswith("ss"))
    return not one_plain_word or bool(colon) or third_person


def test_no_docstring_opens_with_its_own_name() -> None:
    """Every function, class and attribute docstring in the project's code starts with a summary, not its name."""
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            for name, node in _documented(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node.value, str) and repeats_its_name(name, node.value):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not offenders, f"{len(offenders)} docstrings open with their own name:\n" + "\n".join(offenders)


def test_the_rule_tells_a_summary_from_a_repetition() -> None:
    """The check flags the name used as the subject and lets an imperative one-word verb through."""
    assert repeats_its_name("get_user", "get_user returns the user.")
    assert repeats_its_name("check_csr", "Check_csr validates a CSR.")
    assert repeats_its_name("Entry", "Entry is one stored value.")
    assert repeats_its_name("KeyExists", "KeyExists: a live entry is there.")
    assert repeats_its_name("close", "Close waits for the round in flight.")
    assert repeats_its_name("MAX_BATCH", "MAX_BATCH is the most writes one round commits.")
    assert not repeats_its_name("activate", "Activate the token (step 8).")
    assert not repeats_its_name("get_user", "Return the user with USER_ID.")
    assert not repeats_its_name("Entry", "One stored value with the version it was written at.")
