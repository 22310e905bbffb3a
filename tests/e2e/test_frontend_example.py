"""A front-end team's integration from the docs alone: the slim `kagi-client` wheel builds with only the stubs, the
channel helper and three light dependencies; examples/frontend.py, run from a fresh virtual environment holding
nothing else, logs a `kagi dev` customer in and confirms a transaction with a `frontend` credential from
`kagi admin issue-credential`; and the cookbook's tested grpcurl commands run as written."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from email.message import EmailMessage
from importlib.metadata import Distribution, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.e2e.test_kagi_dev import PORTS, _free, _start, _stop
from tests.integration.gateway.gateway_support import oathtool_code
from tests.support.enrollment_flow import Customer, Services
from tests.support.smtp import SmtpServer
from tests.support.tools import run, tool

ROOT = Path(__file__).resolve().parents[2]
COOKBOOK = ROOT / "examples" / "grpcurl.md"
STUB_PACKAGES = ("kagi/ca/v1", "kagi/common/v1", "kagi/enrollment/v1", "kagi/otp/v1")
DECLARED = {"grpcio", "protobuf", "googleapis-common-protos"}


@dataclass
class MaildirServices(Services):
    """Reaches a running `kagi dev`, whose mail goes to the Maildir under its state directory."""

    maildir: Path = Path()

    async def deliver_mail(self) -> None:
        """Read every mail `kagi dev` delivered so far, oldest first (its outbox sends within a second)."""
        await asyncio.sleep(0.2)
        files = sorted((self.maildir / "new").glob("*"), key=lambda path: (path.stat().st_mtime, path.name))
        messages = []
        for path in files:
            parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            messages.append(parsed)
        self.smtp.inbox.messages = messages


def build_wheel(directory: Path) -> Path:
    """Build the kagi-client wheel from the checkout, as the README says (pip wheel --no-deps)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT / "clients" / "python"),
         "-w", str(directory)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = directory.glob("kagi_client-*.whl")
    return wheel


def dependency_closure(requirements: list[str]) -> dict[str, Distribution]:
    """Return the installed distributions the requirements need, their own requirements included."""
    found: dict[str, Distribution] = {}
    pending = list(requirements)
    while pending:
        requirement = Requirement(pending.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name not in found:
            found[name] = distribution(requirement.name)
            pending += found[name].requires or []
    return found


def fresh_environment(directory: Path, wheel: Path, requirements: list[str]) -> Path:
    """Make a virtual environment holding the wheel and the installed files of its dependencies only.

    Returns its interpreter. Nothing of kagi's server side (the editable install, aiohttp, argon2, cryptography)
    is in it, so an import the wheel does not declare fails there.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True, timeout=120)
    python = directory / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    for dist in dependency_closure(requirements).values():
        for file in dist.files or ():
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue  # console scripts outside site-packages; caches
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(str(file.locate())), target)
    return python


def cookbook_blocks(markdown: str) -> list[str]:
    """Return the shell blocks of the cookbook marked `<!-- tested -->`, in order."""
    return re.findall(r"<!-- tested -->\n```sh\n(.*?)```", markdown, flags=re.S)


def wait_clear_of_a_minute_boundary() -> None:
    """Return at once unless the current 60-second step ends within 3 s; then return just after it."""
    left = 60 - time.time() % 60
    if left < 3:
        time.sleep(left + 0.2)


def test_the_wheel_holds_the_stubs_and_the_helper_and_declares_three_dependencies(tmp_path: Path) -> None:
    """The wheel has the four stub packages (code, typing stubs, protos) and kagi_client, none of kagi's runtime,
    services or gateway, no byte code, and requires grpcio, protobuf and googleapis-common-protos only."""
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
        requires = [line.split(":", 1)[1].strip() for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]  # fmt: skip
    tops = {name.split("/")[0] for name in names}
    assert tops == {"kagi", "kagi_client", wheel.name.split("-py3")[0] + ".dist-info"}
    for package in STUB_PACKAGES:
        stem = package.split("/")[1]
        expected = {f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py", f"{stem}_pb2_grpc.pyi"}
        assert expected <= {name.rsplit("/", 1)[1] for name in names if name.startswith(package + "/")}
    assert "kagi/enrollment/v1/user_pb2_grpc.py" in names
    assert "kagi/enrollment/v1/user.proto" in names
    assert {name.rsplit("/", 1)[0] for name in names if name.startswith("kagi/")} == set(STUB_PACKAGES)
    assert not [name for name in names if name.endswith(".pyc") or "__pycache__" in name]
    assert {canonicalize_name(Requirement(line).name) for line in requires} == DECLARED


async def test_the_example_frontend_and_the_cookbook_against_kagi_dev(tmp_path: Path) -> None:
    """From a fresh environment with only the kagi-client wheel and its dependencies (where kagi.runtime,
    aiohttp, argon2 and cryptography do not import), examples/frontend.py authenticates a customer who took the
    ten steps against `kagi dev` and confirms a transaction with the app's code (oathtool), using a `frontend`
    credential from `kagi admin issue-credential`: the answer carries both methods and the summary's digest, and a
    wrong password is reported with its ErrorInfo reason (LOGIN_FAILED).
    Then every `<!-- tested -->` block of examples/grpcurl.md runs as written with grpcurl, jq and openssl."""
    if not all(_free(port) for port in PORTS):
        pytest.fail(f"kagi dev needs ports {PORTS} free on 127.0.0.1")
    wheel = build_wheel(tmp_path / "wheelhouse")
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        requires = [line.split(":", 1)[1].strip() for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]  # fmt: skip
    python = fresh_environment(tmp_path / "frontend-venv", wheel, requires)
    probe = "import importlib.util as u; print([m for m in {mods!r} if u.find_spec(m)])"
    present = await run([str(python), "-I", "-c", probe.format(mods=["kagi.runtime", "aiohttp", "argon2",
                                                                   "cryptography", "services", "redis"])])  # fmt: skip
    assert present.strip() == "[]"
    await run([str(python), "-I", "-c", "import kagi.enrollment.v1.user_pb2_grpc, kagi.ca.v1.ca_pb2_grpc, kagi_client"])

    work = tmp_path / "work"
    work.mkdir()
    state = work / ".kagi"
    process = await _start(state)
    services = MaildirServices(
        {"ca": "localhost:50051", "otp": "localhost:50052", "enrollment": "localhost:50053"},
        state / "tls",
        SmtpServer(),  # never started: `kagi dev` writes its mail to the Maildir, read by deliver_mail
        maildir=state / "mail",
    )
    try:
        customer = Customer(services, work, login_id="yamada01")
        await customer.register_application()
        for step in (customer.step1, customer.step2, customer.step3, customer.step4, customer.step5, customer.step6,
                     customer.step7, customer.step8, customer.step9):  # fmt: skip
            await step()
        # The first code is the previous step's (still accepted), so the customer's current code is unused and
        # the example confirms without waiting out a real minute.
        await asyncio.to_thread(wait_clear_of_a_minute_boundary)
        await customer.step10(time.time() - 60)
        (work / "me.pem").write_text(customer.certificate_pem)
        await run(
            [tool("kagi"), "admin", "--state-dir", str(state), "issue-credential", "--role", "frontend",
             "--name", "web01", "--out", str(work / "creds")]
        )  # fmt: skip

        code = await oathtool_code(customer.secret, time.time())
        summary = "振込 株式会社サンプル → 001-1234567 10,000円"
        example = [
            str(python), "-I", str(ROOT / "examples" / "frontend.py"), "--target", "localhost:50053",
            "--ca", str(work / "creds" / "ca.pem"), "--cert", str(work / "creds" / "web01.pem"),
            "--key", str(work / "creds" / "web01-key.pem"), "--customer-cert", str(work / "me.pem"),
            "--login-id", "yamada01", "--transaction-id", "txn-0001", "--summary", summary,
        ]  # fmt: skip
        refused = await asyncio.to_thread(
            subprocess.run, example, input=f"Wrong000\nKakunin9\n{code}\n", capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "refused: UNAUTHENTICATED LOGIN_FAILED" in refused.stderr
        out = await run(example, stdin=f"Passw0rd\nKakunin9\n{code}\n".encode())
        confirmation = json.loads(out)
        digest = base64.urlsafe_b64encode(hashlib.sha256(summary.encode()).digest()).rstrip(b"=").decode()
        assert confirmation["transaction_id"] == "txn-0001"
        assert confirmation["txn_digest"] == digest
        assert confirmation["methods"] == ["pwd", "otp"]
        assert confirmation["confirmation_token"].count(".") == 2

        blocks = cookbook_blocks(COOKBOOK.read_text(encoding="utf-8"))
        assert len(blocks) >= 6
        script = "set -euo pipefail\n" + "\n".join(blocks)
        bin_dir = Path(tool("grpcurl")).parent
        environment = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8"}
        done = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", script], cwd=work, env=environment, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert '"status": "SERVING"' in done.stdout
        assert "STATUS_GOOD" in done.stdout
        assert "Cert Status: good" in done.stdout
        assert '"login_id": "yamada01"' in done.stdout
        assert "kagi.enrollment.v1.UserService" in done.stdout
    finally:
        await services.close()
        await _stop(process)
