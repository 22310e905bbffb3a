"""Where enrollment records live in the key-value store: collections, indexes, and versioned reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from kagi.errors import NotFound
from kagi.store.base import Create, KeyValueStore, Operation, Page, Replace
from services.enrollment_service.domain.records import (
    Application,
    Enrollment,
    dump_record,
    load_application,
    load_enrollment,
)

APPLICATIONS = "applications"
APPLICATIONS_BY_ACCOUNT = "applications-by-account"
ENROLLMENTS = "enrollments"
ENROLLMENTS_BY_APP = "enrollments-by-app"
USERS = "users"
LOGIN_IDS = "login-ids"

T = TypeVar("T")


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """Versioned is a record as read, with the store version a later compare-and-swap must name."""

    record: T
    version: int


def app_key(service_id: str, app_user_id: str) -> str:
    """app_key indexes an enrollment by the IDs its phone app presents in steps 8 and 9."""
    return f"{service_id}/{app_user_id}"


class EnrollmentRepository:
    """EnrollmentRepository reads records with their versions and builds the operations that write them."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    async def application(self, application_id: str) -> Versioned[Application]:
        """Application reads one application or raises NotFound."""
        entry = await self.store.get(APPLICATIONS, application_id)
        if entry is None:
            raise NotFound("no such application", reason="APPLICATION_NOT_FOUND")
        return Versioned(load_application(entry.value), entry.version)

    async def application_for_account(self, account: str) -> Versioned[Application] | None:
        """Application_for_account finds the latest application of a representative account."""
        entry = await self.store.get(APPLICATIONS_BY_ACCOUNT, account)
        if entry is None:
            return None
        return await self.application(entry.value.decode())

    async def applications(self, page_size: int, page_token: str) -> tuple[list[Application], str]:
        """Applications lists applications a page at a time."""
        page: Page = await self.store.list(APPLICATIONS, page_size=page_size, page_token=page_token)
        return [load_application(e.value) for e in page.entries], page.next_page_token

    async def enrollment(self, enrollment_id: str) -> Versioned[Enrollment]:
        """Enrollment reads one enrollment or raises NotFound."""
        entry = await self.store.get(ENROLLMENTS, enrollment_id)
        if entry is None:
            raise NotFound("no such enrollment", reason="ENROLLMENT_NOT_FOUND")
        return Versioned(load_enrollment(entry.value), entry.version)

    async def enrollment_for_app(self, service_id: str, app_user_id: str) -> Versioned[Enrollment] | None:
        """Enrollment_for_app finds the enrollment whose token the app is activating."""
        entry = await self.store.get(ENROLLMENTS_BY_APP, app_key(service_id, app_user_id))
        if entry is None:
            return None
        return await self.enrollment(entry.value.decode())

    async def login_id_taken(self, login_id: str) -> bool:
        """Login_id_taken tells whether a user already holds the login ID (advisory; step 3 decides)."""
        return await self.store.get(LOGIN_IDS, login_id) is not None

    async def commit(self, operations: Sequence[Operation]) -> None:
        """Commit writes all operations atomically (KeyExists / VersionMismatch when a condition fails)."""
        await self.store.commit(operations)


def put_application(application: Application, version: int | None) -> Operation:
    """put_application writes an application: created when `version` is None, else compare-and-swap."""
    data = dump_record(application)
    if version is None:
        return Create(APPLICATIONS, application.application_id, data)
    return Replace(APPLICATIONS, application.application_id, data, version)


def put_enrollment(enrollment: Enrollment, version: int | None) -> Operation:
    """put_enrollment writes an enrollment: created when `version` is None, else compare-and-swap."""
    data = dump_record(enrollment)
    if version is None:
        return Create(ENROLLMENTS, enrollment.enrollment_id, data)
    return Replace(ENROLLMENTS, enrollment.enrollment_id, data, version)


def user_record(enrollment: Enrollment, company_name: str) -> Operation:
    """user_record creates the user made at step 3 (passwords as hashes only)."""
    body = {
        "user_id": enrollment.user_id,
        "login_id": enrollment.login_id,
        "user_name": enrollment.user_name,
        "email": enrollment.email,
        "company_name": company_name,
        "application_id": enrollment.application_id,
        "enrollment_id": enrollment.enrollment_id,
        "login_password_hash": enrollment.login_password_hash,
        "confirmation_password_hash": enrollment.confirmation_password_hash,
    }
    return Create(USERS, enrollment.user_id, json.dumps(body).encode())
