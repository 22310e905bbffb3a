"""A bank front-end's side of kagi, in one short script: log a customer in and confirm a transaction.

The front-end terminates the customer's TLS itself, so it passes the client certificate the customer presented
(here read from a PEM file) to UserService over gRPC, with its own mTLS credential (role `frontend`, from
`kagi admin issue-credential --role frontend`). It uses only the `kagi-client` distribution: the generated stubs
and its channel helper.

    python examples/frontend.py --target localhost:50053 --ca creds/ca.pem --cert creds/web01.pem \
        --key creds/web01-key.pem --customer-cert me.pem --login-id yamada01 \
        --transaction-id txn-0001 --summary "振込 10,000円"

It asks for the login password, the confirmation password and the code the customer's app shows (from the
terminal, or one per line on stdin), and prints the confirmation as JSON.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import json
import sys
import uuid
from pathlib import Path

import grpc
from kagi_client import error_info, open_channel

from kagi.enrollment.v1 import user_pb2, user_pb2_grpc


def ask(prompt: str) -> str:
    """Read one secret: hidden from a terminal, one line from a pipe."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\n")


def txn_digest(summary: str) -> str:
    """Return what kagi binds a confirmation to: SHA-256 of the summary's UTF-8 bytes, base64url unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(summary.encode()).digest()).rstrip(b"=").decode()


def confirm(args: argparse.Namespace) -> dict[str, object]:
    """Log in, confirm one transaction, log out; return what the front-end keeps of the confirmation."""
    with open_channel(args.target, ca_file=args.ca, cert_file=args.cert, key_file=args.key) as channel:
        users = user_pb2_grpc.UserServiceStub(channel)
        login: user_pb2.AuthenticateResponse = users.Authenticate(
            user_pb2.AuthenticateRequest(
                client_certificate_pem=Path(args.customer_cert).read_text(),
                login_id=args.login_id,
                login_password=ask("login password: "),
            ),
            timeout=30,
        )
        try:
            answer: user_pb2.ConfirmTransactionResponse = users.ConfirmTransaction(
                user_pb2.ConfirmTransactionRequest(
                    user_id=login.user.user_id,
                    transaction_id=args.transaction_id,
                    transaction_summary=args.summary,
                    confirmation_password=ask("confirmation password: "),
                    otp=ask("code from the app: "),
                    access_token=login.access_token,
                ),
                timeout=30,
            )
        finally:
            users.EndSession(user_pb2.EndSessionRequest(access_token=login.access_token), timeout=30)
    confirmation = answer.confirmation
    if confirmation.txn_digest != txn_digest(args.summary):  # kagi signed what the customer saw, or nothing
        raise SystemExit("the confirmation is for another summary")
    return {
        "user_id": login.user.user_id,
        "confirmation_id": confirmation.confirmation_id,
        "transaction_id": confirmation.transaction_id,
        "txn_digest": confirmation.txn_digest,
        "methods": list(confirmation.methods),
        "confirmation_token": answer.confirmation_token,  # a JWT: verify it with UserService/GetJwks
    }


def main(argv: list[str] | None = None) -> int:
    """Run the front-end once; print the confirmation, or the refusal's code, reason and fields."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--target", default="localhost:50053", help="the enrollment service (UserService)")
    parser.add_argument("--ca", required=True, help="kagi's root certificate (ca.pem of the credential)")
    parser.add_argument("--cert", required=True, help="the front-end's certificate (NAME.pem)")
    parser.add_argument("--key", required=True, help="the front-end's key (NAME-key.pem)")
    parser.add_argument("--customer-cert", required=True, help="the client certificate the customer presented, PEM")
    parser.add_argument("--login-id", required=True)
    parser.add_argument("--transaction-id", default=f"txn-{uuid.uuid4().hex[:12]}")
    parser.add_argument("--summary", required=True, help="what the customer saw and confirms")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(confirm(args), ensure_ascii=False, indent=2))
    except grpc.RpcError as exc:
        details = error_info(exc)
        code = exc.code().name if callable(getattr(exc, "code", None)) else "UNKNOWN"
        message = exc.details() if callable(getattr(exc, "details", None)) else ""
        print(f"refused: {code} {details.reason if details else ''}: {message}", file=sys.stderr)
        for field, rule in (details.fields if details else {}).items():
            print(f"  {field}: {rule}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
