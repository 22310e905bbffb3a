"""The gateway's public certificate is not its internal identity: given KAGI_GATEWAY_PUBLIC_TLS_CERT / _KEY (a
public CA's certificate), the HTTPS listener presents that one, which openssl and curl verify against the public
root and not against kagi's root, while the gateway still reaches the services with its internal (gateway-role)
credential; a renewed public certificate is served without a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from gateway.settings import GatewaySettings
from kagi.cli.stack import FREE_PORTS, RunningStack, start_stack
from kagi.errors import InvalidArgument
from tests.support.rotation import PublicCa, replace_file, serial_of, served_certificate
from tests.support.tools import run, tool


@pytest.fixture
async def public(tmp_path: Path) -> tuple[PublicCa, Path, Path, int]:
    """A public CA, and a certificate it issued for localhost written to files."""
    ca = PublicCa()
    chain, key, serial = ca.server_leaf("localhost")
    cert_file, key_file = tmp_path / "public.pem", tmp_path / "public-key.pem"
    cert_file.write_bytes(chain)
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    (tmp_path / "public-root.pem").write_bytes(ca.pem())
    return ca, cert_file, key_file, serial


@pytest.fixture
async def stack(tmp_path: Path, public: tuple[PublicCa, Path, Path, int]) -> AsyncIterator[RunningStack]:
    """The whole stack on free ports, its gateway given the public certificate through its variables."""
    _, cert_file, key_file, _ = public
    env = {"KAGI_GATEWAY_PUBLIC_TLS_CERT": str(cert_file), "KAGI_GATEWAY_PUBLIC_TLS_KEY": str(key_file)}
    dev = await start_stack(tmp_path / "state", ports=FREE_PORTS, management="off", extra_env=env)
    try:
        yield dev
    finally:
        await dev.stop(0)


async def test_the_https_listener_presents_the_public_certificate(
    stack: RunningStack, public: tuple[PublicCa, Path, Path, int], tmp_path: Path
) -> None:
    """openssl s_client gets the public certificate and verifies it against the public root; against kagi's
    own root the verification fails."""
    ca, _, _, serial = public
    port = stack.ports["gateway"]
    root = str(tmp_path / "public-root.pem")
    pem = await served_certificate(port, extra=["-CAfile", root, "-verify_return_error"])
    assert serial_of(pem) == serial
    assert x509.load_pem_x509_certificate(pem.encode()).issuer == ca.certificate.subject
    with pytest.raises(AssertionError, match="verify"):
        await served_certificate(port, extra=["-CAfile", str(stack.pki.root), "-verify_return_error"])


async def test_curl_trusts_the_gateway_through_the_public_root(stack: RunningStack, tmp_path: Path) -> None:
    """curl with only the public root reaches the customer API's health route by the name in the certificate."""
    port = stack.ports["gateway"]
    out = await run(
        [
            tool("curl"),
            "--silent",
            "--show-error",
            "--fail",
            "--cacert",
            str(tmp_path / "public-root.pem"),
            "--resolve",
            f"localhost:{port}:127.0.0.1",
            f"https://localhost:{port}/healthz",
        ]
    )
    assert '"ok"' in out


async def test_the_services_still_see_the_gateways_internal_identity(stack: RunningStack) -> None:
    """The services accept only internal-CA callers, and the gateway's calls to each succeed: it presents its
    gateway-role credential there, not the public certificate (which the services' handshake would refuse)."""
    gateway = stack.components["gateway"]
    assert await gateway.context.backends.health() == {"ca": "SERVING", "otp": "SERVING", "enrollment": "SERVING"}
    settings: GatewaySettings = stack.settings["gateway"]
    assert settings.tls.cert_file == stack.pki.certificate("gateway")


def test_one_half_of_the_public_pair_is_refused(stack: RunningStack, public: tuple[PublicCa, Path, Path, int]) -> None:
    """A certificate without its key (or the reverse) is a configuration error naming both variables."""
    _, cert_file, _, _ = public
    env = {k: v for k, v in stack.env.items() if k != "KAGI_GATEWAY_PUBLIC_TLS_KEY"}
    env["KAGI_GATEWAY_PUBLIC_TLS_CERT"] = str(cert_file)
    with pytest.raises(InvalidArgument) as raised:
        GatewaySettings.from_env(env)
    assert "KAGI_GATEWAY_PUBLIC_TLS_KEY" in raised.value.fields["public_key_file"]


async def test_a_renewed_public_certificate_is_served_without_a_restart(
    stack: RunningStack, public: tuple[PublicCa, Path, Path, int], tmp_path: Path
) -> None:
    """The public pair is replaced (each file renamed over the old one, the key first): new handshakes
    present the new certificate, loaded into the same TLS context, and the old connections' answers go on."""
    ca, cert_file, key_file, old = public
    port = stack.ports["gateway"]
    chain, key, new = ca.server_leaf("localhost")
    replace_file(key_file, key)
    replace_file(cert_file, chain, 0o644)
    root = str(tmp_path / "public-root.pem")
    loop = asyncio.get_running_loop()
    end = loop.time() + 60
    while serial_of(await served_certificate(port, extra=["-CAfile", root, "-verify_return_error"])) != new:
        assert loop.time() < end, "the gateway did not present the new certificate within 60 s"
        await asyncio.sleep(0.2)
    assert new != old
    await test_curl_trusts_the_gateway_through_the_public_root(stack, tmp_path)
