"""The CA's role names agree with the runtime's, so its allow-lists can name every role."""

from __future__ import annotations

from kagi.runtime.identity import Role
from services.ca_service.app.access import ISSUE_ROLES, MANAGE_ROLES
from services.ca_service.domain.identity import SERVICE_ROLES


def test_service_roles_are_the_runtime_roles() -> None:
    """Every SPIFFE role the CA certifies is a runtime Role and the reverse, so allow-lists can name them all."""
    assert set(SERVICE_ROLES) == {role.value for role in Role}
    assert ISSUE_ROLES["service"] == frozenset({Role.OPERATOR})
    assert Role.GATEWAY not in ISSUE_ROLES["customer"]
    assert MANAGE_ROLES["service"] == frozenset({Role.OPERATOR})
