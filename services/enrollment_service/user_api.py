"""The front-end boundary's gRPC API (kagi.enrollment.v1.UserService): translates messages to use-case calls."""

from __future__ import annotations

from kagi.runtime.identity import Role, allow

USER_SERVICE_NAME = "kagi.enrollment.v1.UserService"

# A bank front-end gets exactly this service: each call bound to the customer's proof. What mints or replaces a
# credential is never here (DESIGN.md sections 3 and 6). Operators read, list, lock and unlock; they never
# check a customer's password or code.
_CUSTOMER = allow(Role.GATEWAY, Role.FRONTEND)
USER_ALLOWED_ROLES = {
    "Authenticate": _CUSTOMER,
    "VerifyOtp": _CUSTOMER,
    "ConfirmTransaction": _CUSTOMER,
    "EndSession": _CUSTOMER,
    "GetJwks": allow(Role.GATEWAY, Role.FRONTEND, Role.OPERATOR),
    "GetUser": allow(Role.GATEWAY, Role.FRONTEND, Role.OPERATOR),
    "ListUsers": allow(Role.OPERATOR),
    "LockUser": allow(Role.OPERATOR),
    "UnlockUser": allow(Role.OPERATOR),
}
