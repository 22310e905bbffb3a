"""mTLS channels to kagi's gRPC services, made from a credential of `kagi admin issue-credential`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""The largest answer a kagi service sends (a CA's CRL); gRPC's default limit is 4 MiB."""


def channel_credentials(ca_file: str | Path, cert_file: str | Path, key_file: str | Path) -> grpc.ChannelCredentials:
    """Return mTLS credentials: trust `ca_file` (kagi's root), present `cert_file` (chain) with `key_file`."""
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes(),
        private_key=Path(key_file).read_bytes(),
        certificate_chain=Path(cert_file).read_bytes(),
    )


def _options(server_name: str | None) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
    ]
    if server_name:  # the name the service's certificate carries, when the target's host is another
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def open_channel(
    target: str,
    *,
    ca_file: str | Path,
    cert_file: str | Path,
    key_file: str | Path,
    server_name: str | None = None,
) -> grpc.Channel:
    """Connect to a kagi service at `target` ("host:port") over mTLS; a blocking channel (close it after use)."""
    credentials = channel_credentials(ca_file, cert_file, key_file)
    return grpc.secure_channel(target, credentials, options=_options(server_name))


def open_aio_channel(
    target: str,
    *,
    ca_file: str | Path,
    cert_file: str | Path,
    key_file: str | Path,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """Connect to a kagi service at `target` over mTLS; an asyncio channel (`await channel.close()` after use)."""
    credentials = channel_credentials(ca_file, cert_file, key_file)
    return grpc.aio.secure_channel(target, credentials, options=_options(server_name))
