"""grpcurl, a real third-party client, finds the CA service through reflection and calls a read RPC over mTLS
with the operator's certificate."""

from __future__ import annotations

import json

from tests.integration.ca.ca_service_harness import RunningCa
from tests.support.tools import run, tool

SERVICE = "kagi.ca.v1.CertificateAuthorityService"


async def test_grpcurl_lists_and_calls_get_ca_certificates(ca: RunningCa) -> None:
    """`grpcurl list` shows the CA service and health; `describe` shows its RPCs; GetCaCertificates returns the
    root that is on disk, with the operator's certificate over mTLS."""
    tls = ca.dev.tls("operator")
    base = [tool("grpcurl"), "-cacert", str(tls.ca_file), "-cert", str(tls.cert_file), "-key", str(tls.key_file)]
    listed = (await run([*base, ca.address, "list"])).split()
    assert SERVICE in listed
    assert "grpc.health.v1.Health" in listed
    described = await run([*base, ca.address, "describe", SERVICE])
    for rpc in ("IssueCertificate", "AnswerOcsp", "WatchRevocations", "GetCaCertificates"):
        assert f"rpc {rpc}" in described
    reply = json.loads(await run([*base, ca.address, f"{SERVICE}/GetCaCertificates"]))
    # grpcurl prints the proto field names (root_pem), not the lowerCamel JSON names.
    assert reply["root_pem"] == ca.dev.root.read_text()
    assert "BEGIN CERTIFICATE" in reply["customer_ca_pem"]
    assert "BEGIN CERTIFICATE" in reply["internal_ca_pem"]
