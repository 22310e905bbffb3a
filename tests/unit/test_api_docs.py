"""The generated API reference (docs/api.md): current with the protos, and every service, RPC, message, field
and enum of the protos carries a comment, which the generator refuses to do without."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_api_docs.py"


@pytest.fixture
def gen_api_docs() -> Iterator[ModuleType]:
    """Import the generator as its command line does (scripts/ first on the path)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gen_api_docs  # only importable with scripts/ on the path

        yield gen_api_docs
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_docs_api_md_is_current_and_everything_is_documented() -> None:
    """`gen_api_docs.py --check` passes: docs/api.md is what the protos render and nothing lacks a comment."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_every_field_rpc_and_caller_list_is_in_the_reference(gen_api_docs: ModuleType) -> None:
    """Each field of each message has a row with its type and comment; each RPC names who may call it."""
    renderer = gen_api_docs.build()
    document = renderer.render()
    assert renderer.undocumented.items == []
    assert renderer.undocumented.fields_documented == renderer.undocumented.fields_total > 300
    assert "| `login_password` | 3 | `string` |  | **Secret**: the login password;" in document
    authenticate = document.split("`UserService.Authenticate`", 1)[1]
    assert "Who may call: `gateway`, `frontend`." in authenticate.split("####", 1)[0]
    assert "stream [`kagi.ca.v1.WatchRevocationsResponse`]" in document


def test_an_undocumented_field_is_reported(gen_api_docs: ModuleType, tmp_path: Path) -> None:
    """A proto whose field has no comment renders, but the field is named as undocumented."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "demo.proto").write_text(
        'syntax = "proto3";\n\npackage demo.v1;\n\n'
        "// Thing is documented.\nmessage Thing {\n  // Documented.\n  string name = 1;\n  int32 size = 2;\n}\n"
    )
    descriptors = gen_api_docs.compile_protos(["demo/demo.proto"], root=tmp_path)
    renderer = gen_api_docs.Renderer(list(descriptors.file), {})
    renderer.render()
    assert renderer.undocumented.items == ["field demo.v1.Thing.size"]
    assert (renderer.undocumented.fields_documented, renderer.undocumented.fields_total) == (1, 2)
