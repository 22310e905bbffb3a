"""The OpenAPI 3.1 document of the gateway, generated from the declarations in `gateway.schemas` (so it says
exactly what the routes do)."""

from __future__ import annotations

from typing import Any

from gateway.schemas import ERROR_STATUSES, OPERATIONS, RESPONSE_SCHEMAS, STEPS, Operation

ID_PATTERN = "^[A-Za-z0-9_-]{1,128}$"
IDEMPOTENCY_KEY_PATTERN = "^[\\x21-\\x7e]{1,128}$"
REQUEST_ID_PATTERN = "^[A-Za-z0-9._:-]{1,128}$"

_DESCRIPTION = """\
法人向けインターネットバンキング 【クライアント証明書】&【ワンタイムパスワード】方式 初期設定
/ the initial setup of corporate internet banking with a client certificate and a one-time-password app.

The ten steps follow the bank's procedure; each route names its procedure number. `state` is one of the design's
state names (NOTICE_VERIFIED ... COMPLETED, EXPIRED, LOCKED, CANCELLED) and `next_step` the *name* of the step the
enrollment expects next (in order: {steps}), or null once it takes no more steps.

Authentication: steps 2-4 take `Authorization: Bearer <session_token>` from step 1; steps 5-7 and 10 take the client
certificate issued in step 4 (TLS client authentication: it must be issued by the customer CA, valid, and not
revoked; it is checked on every request); steps 1, 8 and 9 take none. After the setup, `POST /v1/sessions` logs
in with that certificate and the login password and answers an access token (a JWT bound to the certificate); the
session routes take it as `Authorization: Bearer <access_token>` together with the same certificate. Every POST
and PUT accepts an
`Idempotency-Key` (1-128 visible ASCII characters): a retry with the same key gets the first answer (secrets such
as the session token and the seed are returned only the first time). Errors are
`{{"error": {{"code", "reason", "message", "fields"}}}}` with `fields` naming each offending field; `reason` is
stable, and docs/errors.md lists every reason with its HTTP status and meaning.
"""


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _security(operation: Operation) -> list[dict[str, list[str]]]:
    schemes: dict[str, list[dict[str, list[str]]]] = {
        "none": [],
        "session": [{"session": []}],
        "certificate": [{"clientCertificate": []}],
        "session_or_certificate": [{"session": []}, {"clientCertificate": []}],
        "certificate_and_access_token": [{"clientCertificate": [], "accessToken": []}],
        "certificate_and_optional_access_token": [
            {"clientCertificate": [], "accessToken": []},
            {"clientCertificate": []},
        ],
    }
    return schemes[operation.auth]


def _operation(operation: Operation) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = []
    if "{id}" in operation.path:
        parameters.append(
            {
                "name": "id",
                "in": "path",
                "required": True,
                "description": "The enrollment_id from step 1.",
                "schema": {"type": "string", "pattern": ID_PATTERN},
            }
        )
    if operation.mutating:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Makes a retry safe: the same key returns the first answer. Passed on as request_id.",
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
            }
        )
    parameters.append(
        {
            "name": "X-Request-Id",
            "in": "header",
            "required": False,
            "description": "Correlates logs across the gateway and the services. Echoed back when it matches "
            f"{REQUEST_ID_PATTERN}; otherwise (or when absent) replaced by a new one, never refused.",
            "schema": {"type": "string"},
        }
    )
    responses: dict[str, Any] = {
        str(operation.status): (
            {"description": "Created" if operation.status == 201 else "OK", "content": _json(_ref(operation.response))}
            if operation.response
            else {"description": "No Content"}
        )
    }
    for status, meaning in ERROR_STATUSES.items():
        if status == 415 and operation.body is None:
            continue
        responses[str(status)] = {"description": meaning, "content": _json(_ref("Error"))}
    result: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag if operation.step is None or operation.step not in (8, 9) else "app"],
        "parameters": parameters,
        "security": _security(operation),
        "responses": responses,
    }
    if operation.step is not None:
        result["description"] = f"Step {operation.step} ({STEPS[operation.step - 1]})."
    if operation.body is not None:
        result["requestBody"] = {
            "required": bool(operation.body.fields),
            "content": _json(_ref(operation.body.name)),
        }
    return result


def _binary(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}


def _public_paths() -> dict[str, Any]:
    pem = _binary("application/x-pem-file", "The certificate, PEM.")
    unavailable = {"description": "The CA is unavailable.", "content": _json(_ref("Error"))}
    files: dict[str, Any] = {
        "/pki/ca.pem": ("getRootPem", "The root CA certificate (PEM).", pem),
        "/pki/customer-ca.pem": ("getCustomerCaPem", "The customer CA certificate (PEM).", pem),
        "/pki/internal-ca.pem": ("getInternalCaPem", "The internal CA certificate (PEM).", pem),
    }
    for ca in ("root", "customer", "internal"):
        files[f"/pki/{ca}-ca.crt"] = (
            f"get{ca.capitalize()}CaDer",
            f"The {ca} CA certificate in DER: what the certificates' AIA caIssuers URL points at.",
            _binary("application/pkix-cert", "The certificate, DER."),
        )
    for ca in ("root", "customer", "internal"):
        files[f"/pki/crl/{ca}.crl"] = (
            f"get{ca.capitalize()}Crl",
            f"The {ca} CA's current CRL in DER: what its certificates' CRL distribution point names.",
            _binary("application/pkix-crl", "The CRL, DER."),
        )
    paths: dict[str, Any] = {}
    for path, (operation_id, summary, ok) in files.items():
        paths[path] = {
            "get": {
                "operationId": operation_id,
                "summary": summary,
                "tags": ["pki"],
                "security": [],
                "responses": {"200": ok, "304": {"description": "Not modified (If-None-Match)."}, "503": unavailable},
            }
        }
    ocsp_answer = _binary("application/ocsp-response", "A DER OCSPResponse (RFC 6960).")
    ocsp_errors = {
        "400": _binary("application/ocsp-response", "malformedRequest."),
        "429": _binary("application/ocsp-response", "tryLater: too many requests with a nonce (Retry-After)."),
        "500": _binary("application/ocsp-response", "internalError."),
        "503": _binary("application/ocsp-response", "tryLater: the CA is unavailable."),
    }
    paths["/pki/ocsp"] = {
        "post": {
            "operationId": "ocspPost",
            "summary": "OCSP (RFC 6960): a DER OCSPRequest for one certificate in the body.",
            "tags": ["pki"],
            "security": [],
            "requestBody": {
                "required": True,
                "content": {"application/ocsp-request": {"schema": {"type": "string", "format": "binary"}}},
            },
            "responses": {"200": ocsp_answer, **ocsp_errors},
        }
    }
    paths["/pki/ocsp/{request}"] = {
        "get": {
            "operationId": "ocspGet",
            "summary": "OCSP over GET (RFC 5019): the request base64- then URL-encoded. Good and revoked answers "
            "carry Cache-Control max-age up to nextUpdate, ETag and Last-Modified; others no-cache.",
            "tags": ["pki"],
            "security": [],
            "parameters": [
                {"name": "request", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            ],
            "responses": {"200": ocsp_answer, **ocsp_errors},
        }
    }
    paths["/healthz"] = {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness: the process answers.",
            "tags": ["ops"],
            "security": [],
            "responses": {"200": {"description": "Alive.", "content": _json(_ref("Health"))}},
        }
    }
    return paths


_OPS_SCHEMAS: dict[str, Any] = {
    "Health": {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]},
}


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of the customer API, the PKI files and the ops routes the
    public port serves (/healthz; /readyz and /metrics are on the management listener, not described here)."""
    paths: dict[str, Any] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation)
    paths.update(_public_paths())
    bodies = {op.body.name: op.body.schema() for op in OPERATIONS if op.body is not None}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "kagi gateway",
            "version": "1.0.0",
            "description": _DESCRIPTION.format(steps=", ".join(STEPS)),
        },
        "paths": paths,
        "components": {
            "schemas": {**bodies, **RESPONSE_SCHEMAS, **_OPS_SCHEMAS},
            "securitySchemes": {
                "session": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The session_token step 1 returned; valid for steps 2-4 until the enrollment "
                    "expires.",
                },
                "accessToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The access_token POST /v1/sessions returned, with the same client certificate "
                    "it is bound to (RFC 8705).",
                },
                "clientCertificate": {
                    "type": "mutualTLS",
                    "description": "The client certificate issued in step 4 (customer CA), presented in the TLS "
                    "handshake; revocation is checked on every request.",
                },
            },
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document
