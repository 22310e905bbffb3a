"""docs/operations.md's backup and restore, followed step by step: a running site's store (its own Redis with AOF,
or the SQLite files) and CA files are backed up while it serves; the site is lost; a fresh Redis loads only the
backup (or fresh SQLite files are made from it) and a fresh stack starts on it with the restored files. Every
certificate is there with its serial and status, the revocation is still in the CRL and in openssl's OCSP
answer, the customer still logs in, and the token accepts the code oathtool computes while a code used before
the backup stays refused.

The root key is not in the backup (it stays offline): the restore proves it is not needed.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from kagi.ca.v1 import ca_pb2
from kagi.clock import FakeClock
from kagi.enrollment.v1 import user_pb2 as upb
from tests.conftest import RedisServer
from tests.support.enrollment_flow import Customer, Stack, open_stack
from tests.support.frontend import completed
from tests.support.tools import run, tool

BACKED_UP = ("ca", "secrets", "tls")
"""What of the state directory the backup takes: the CA directory, the secrets, the components' credentials.
Not `offline/`: the root key never leaves its offline medium, and a restore does not need it."""

SQLITE_STORES = ("ca", "otp", "enrollment")


async def certificates(stack: Stack) -> dict[str, tuple[int, int, str]]:
    """Return every certificate the CA lists: serial -> (state, revocation reason, SHA-256 fingerprint)."""
    found: dict[str, tuple[int, int, str]] = {}
    token = ""
    while True:
        page = await stack.ca("developer").ListCertificates(
            ca_pb2.ListCertificatesRequest(page_size=1000, page_token=token)
        )
        for item in page.certificates:
            found[item.serial_number] = (item.state, item.revocation_reason, item.fingerprint_sha256)
        token = page.next_page_token
        if not token:
            return found


async def step_up(customer: Customer, code: str) -> upb.VerifyOtpResponse:
    """Log the customer in (certificate relayed, login password) and raise the session with `code`."""
    login = await customer.login()
    reply: upb.VerifyOtpResponse = await customer.users().VerifyOtp(
        upb.VerifyOtpRequest(
            request_id=uuid.uuid4().hex,
            user_id=login.user.user_id,
            otp=code,
            purpose=upb.OTP_PURPOSE_STEP_UP,
            access_token=login.access_token,
        ),
        metadata=customer.cert_metadata,
    )
    return reply


async def listed_in_the_crl(stack: Stack, serial: int) -> bool:
    """Poll the customer CA's CRL until it lists `serial` (the CA checks at start that its published CRL covers
    every revocation in the store, and publishes one that does when not); a minute without it fails."""
    async with asyncio.timeout(60):
        while True:
            reply = await stack.ca("developer").GetCrl(ca_pb2.GetCrlRequest(issuer=ca_pb2.ISSUER_CUSTOMER))
            if x509.load_der_x509_crl(reply.crl).get_revoked_certificate_by_serial_number(serial) is not None:
                return True
            await asyncio.sleep(0.2)


async def oathtool(secret_base32: str, when: float) -> str:
    """Return the code OATH Toolkit's oathtool computes for the app's seed at POSIX time `when`."""
    argv = [tool("oathtool"), "--totp=SHA1", "-s", "60", "-d", "6", "-b", secret_base32, "-N", f"@{int(when)}"]
    return (await run(argv)).strip()


async def ocsp_status(stack: Stack, certificate_pem: str, directory: Path) -> str:
    """Ask the CA about a certificate with openssl's own OCSP request; return openssl's verified reading."""
    answer = await stack.ca("developer").GetCaCertificates(ca_pb2.GetCaCertificatesRequest())
    issuer, bundle, leaf = directory / "customer-ca.pem", directory / "bundle.pem", directory / "leaf.pem"
    issuer.write_text(answer.customer_ca_pem)
    bundle.write_text(answer.customer_ca_pem + answer.root_pem)
    leaf.write_text(certificate_pem)
    request, response = directory / "req.der", directory / "resp.der"
    openssl = tool("openssl")
    await run([openssl, "ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-no_nonce", "-reqout", str(request)])
    reply = await stack.ca("gateway").AnswerOcsp(ca_pb2.AnswerOcspRequest(ocsp_request=request.read_bytes()))
    response.write_bytes(reply.ocsp_response)
    argv = [openssl, "ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-respin", str(response)]
    process = await asyncio.create_subprocess_exec(
        *argv, "-CAfile", str(bundle), "-no_nonce", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    reading = (await process.communicate())[0].decode(errors="replace")
    assert process.returncode == 0, reading
    assert "Response verify OK" in reading, reading  # signed by the restored CA's OCSP signer, chained to the root
    return reading


async def backup_redis(server: RedisServer, backup: Path) -> None:
    """The docs' Redis backup: `redis-cli --rdb` takes a consistent snapshot from the running server."""
    await run([tool("redis-cli"), "-p", str(server.port), "--rdb", str(backup / "kagi.rdb")])


def place_snapshot(snapshot: Path, directory: Path) -> None:
    """Put the snapshot where a fresh Redis will load it: an empty data directory, as `dump.rdb`."""
    directory.mkdir(parents=True)
    shutil.copy(snapshot, directory / "dump.rdb")


async def restore_redis(backup: Path, directory: Path) -> RedisServer:
    """The docs' Redis restore with redis-cli: a fresh server loads the snapshot with AOF off, AOF is switched on
    (Redis writes the data into a fresh AOF), the server shuts down and restarts with its production settings."""
    place_snapshot(backup / "kagi.rdb", directory)
    loading = RedisServer(directory, appendonly=False)
    loading.start()
    cli = [tool("redis-cli"), "-p", str(loading.port)]
    await run([*cli, "CONFIG", "SET", "appendonly", "yes"])
    wanted = {"aof_enabled": "1", "aof_rewrite_in_progress": "0", "aof_rewrite_scheduled": "0"}
    async with asyncio.timeout(120):
        while True:  # polls the rewrite Redis started, as the docs say to
            lines = (await run([*cli, "INFO", "persistence"])).splitlines()
            info = dict(line.strip().split(":", 1) for line in lines if ":" in line)
            if all(info.get(key) == value for key, value in wanted.items()):
                assert info["aof_last_bgrewrite_status"] == "ok", info
                break
            await asyncio.sleep(0.1)
    await run([*cli, "SHUTDOWN"])
    loading.kill()  # reaps the process SHUTDOWN ended
    (directory / "dump.rdb").unlink()  # what the restarted server holds comes from its AOF alone
    durable = RedisServer(directory, port=loading.port)
    durable.start()
    return durable


def backup_sqlite(state_dir: Path, backup: Path) -> None:
    """The docs' SQLite backup: SQLite's online backup API, a consistent copy while the services write."""
    script = "import sqlite3, sys; d = sqlite3.connect(sys.argv[2]); sqlite3.connect(sys.argv[1]).backup(d); d.close()"
    for name in SQLITE_STORES:
        subprocess.run(
            [sys.executable, "-c", script, str(state_dir / f"{name}.db"), str(backup / f"{name}.db")], check=True
        )


def backup_files(state_dir: Path, backup: Path) -> None:
    """The docs' file backup, taken after the store's: the CA directory, the secrets, the credentials."""
    with tarfile.open(backup / "kagi-files.tar.gz", "w:gz") as archive:
        for name in BACKED_UP:
            archive.add(state_dir / name, arcname=name)


def restore_files(backup: Path, state_dir: Path) -> None:
    """Unpack the file backup into an empty state directory."""
    state_dir.mkdir(parents=True)
    with tarfile.open(backup / "kagi-files.tar.gz") as archive:
        archive.extractall(state_dir, filter="tar")


@pytest.fixture
async def servers() -> AsyncIterator[list[RedisServer]]:
    """Collect the Redis servers a test starts; every one is killed at the end."""
    started: list[RedisServer] = []
    yield started
    for server in started:
        server.kill()


@pytest.mark.parametrize("store", ["redis", "sqlite"])
async def test_a_restored_backup_keeps_every_certificate_revocation_and_token(
    store: str, tmp_path: Path, servers: list[RedisServer]
) -> None:
    """Back up a serving site, lose it, restore into a fresh store and state directory: the same certificates
    (serial, state, reason, fingerprint), the revocation in the CRL and OCSP, the customer's login, and the
    token verifying oathtool's next code while the code it accepted before the backup stays a replay; the audit
    chains verify."""
    clock = FakeClock(time.time())
    site, backup, workdir = tmp_path / "site", tmp_path / "backup", tmp_path / "client"
    backup.mkdir()
    workdir.mkdir()

    original: RedisServer | None = None
    store_url = "sqlite:"
    if store == "redis":
        original = RedisServer(tmp_path / "redis-site")
        servers.append(original)
        original.start()
        store_url = original.url
    stack = await open_stack(site, store_url=store_url, clock=clock)
    try:
        kept = await completed(stack, workdir, clock)
        lost = await completed(stack, workdir, clock)
        lost_serial = format(x509.load_pem_x509_certificate(lost.certificate_pem.encode()).serial_number, "x")
        await stack.ca("developer").RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(
                request_id=uuid.uuid4().hex,
                serial_number=f"0x{lost_serial}",
                reason=ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
            )
        )
        clock.advance(60)
        used_code = await oathtool(kept.secret, clock.now())
        await step_up(kept, used_code)
        before = await certificates(stack)

        # The backup, while the site serves: the store first, then the files.
        if original is not None:
            await backup_redis(original, backup)
        else:
            backup_sqlite(site, backup)
        backup_files(site, backup)
    finally:
        await stack.close()
        stack.smtp.stop()
    if original is not None:
        original.kill()  # the site is lost: nothing of it but the backup is used from here on
    shutil.rmtree(site)

    # The restore: a fresh store from the backup alone, a fresh state directory from the file backup.
    restored_site = tmp_path / "restored"
    restore_files(backup, restored_site)
    if store == "redis":
        fresh = await restore_redis(backup, tmp_path / "redis-restored")
        servers.append(fresh)
        store_url = fresh.url
    else:
        for name in SQLITE_STORES:
            shutil.copy(backup / f"{name}.db", restored_site / f"{name}.db")
    restored = await open_stack(restored_site, store_url=store_url, clock=clock)
    try:
        kept.stack = lost.stack = restored
        after = await certificates(restored)
        assert after == before
        assert before[lost_serial][:2] == (
            ca_pb2.Certificate.STATE_REVOKED,
            ca_pb2.REVOCATION_REASON_KEY_COMPROMISE,
        )

        assert await listed_in_the_crl(restored, int(lost_serial, 16))
        assert "revoked" in await ocsp_status(restored, lost.certificate_pem, workdir)
        assert ": good" in await ocsp_status(restored, kept.certificate_pem, workdir)

        audit = [tool("kagi"), "admin", "--state-dir", str(restored_site), "verify-audit", "--store-url", store_url]
        await run(audit)  # exits 1 naming the first bad record of the CA's or the enrollment service's chain

        with pytest.raises(grpc.aio.AioRpcError) as replayed:
            await step_up(kept, used_code)
        assert replayed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        clock.advance(60)
        raised = await step_up(kept, await oathtool(kept.secret, clock.now()))
        assert raised.access_token
    finally:
        await restored.close()
        restored.smtp.stop()
