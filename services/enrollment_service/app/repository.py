"""Where the enrollment service's records live in the key-value store: collections, indexes, versioned reads.

collection                  key                         value
applications                <application id>            Application JSON
applications-by-account     <branch-type-number>        newest application id
enrollments                 <enrollment id>             Enrollment JSON
enrollments-by-app          <service id>/<app user id>  enrollment id (steps 8-9)
users                       <user id>                   User JSON (password hashes only)
login-ids                   <login id>                  user id (the login ID's reservation)
users-by-company/<sha256>   <user id>                   "" (ListUsers by company)
users-by-account/<account>  <user id>                   "" (ListUsers by representative account)
user-certificates           <sha-256 fingerprint hex>   {"user_id", "enrollment_id", "serial"}
confirmations               <user id>/<transaction id>  Confirmation JSON
ended-sessions              <session id>                "" (transient: until its last token expires)
login-refusals              <fingerprint hex>           counter (fixed window)
audit, audit-head                                       the hash-chained audit trail (kagi.journal)
enrollments-expiring        <expires ms>/<enrollment>   "" (in progress, by expiry: the sweeper's index; an
                                                        entry is never later than the enrollment's expiry)
abandoned-enrollments       <enrollment id>             "" (cancelled or expired: clean-up still to finish)
abandoned-retention         <abandoned ms>/<enrollment> "" (personal data to erase after the retention period)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from kagi.errors import NotFound
from kagi.idempotency import acting_request
from kagi.store.base import Create, KeyValueStore, Operation, Page, Replace
from services.enrollment_service.domain.records import (
    Application,
    Enrollment,
    dump_record,
    load_application,
    load_enrollment,
)
from services.enrollment_service.domain.users import User, dump_user, load_user

APPLICATIONS = "applications"
APPLICATIONS_BY_ACCOUNT = "applications-by-account"
ENROLLMENTS = "enrollments"
ENROLLMENTS_BY_APP = "enrollments-by-app"
USERS = "users"
LOGIN_IDS = "login-ids"
USER_CERTIFICATES = "user-certificates"
CONFIRMATIONS = "confirmations"
ENDED_SESSIONS = "ended-sessions"
LOGIN_REFUSALS = "login-refusals"
PASSWORD_RESETS = "password-resets"
RENEWALS = "renewals"
CERTIFICATE_EXPIRIES = "certificate-expiries"
ENROLLMENTS_EXPIRING = "enrollments-expiring"
ABANDONED_ENROLLMENTS = "abandoned-enrollments"
ABANDONED_RETENTION = "abandoned-retention"

T = TypeVar("T")


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """Versioned is a record as read, with the store version a later compare-and-swap must name."""

    record: T
    version: int


def users_by_company(company_name: str) -> str:
    """users_by_company is the collection indexing one company's users (named by a digest of the name)."""
    return "users-by-company/" + hashlib.sha256(company_name.encode("utf-8")).hexdigest()[:40]


def users_by_account(account: str) -> str:
    """users_by_account is the collection indexing the users of one representative account."""
    return f"users-by-account/{account}"


def certificate_expiry_key(expires_at: float, fingerprint_sha256: str) -> str:
    """certificate_expiry_key orders customer certificates by expiry, for the renewal reminders."""
    return f"{int(expires_at):012d}/{fingerprint_sha256.lower()}"


def timed_key(seconds: float, enrollment_id: str) -> str:
    """timed_key orders an enrollment in a time index: zero-padded milliseconds, then the enrollment id."""
    return f"{int(seconds * 1000):015d}/{enrollment_id}"


def key_time(key: str) -> float:
    """key_time is the time (POSIX seconds) a `timed_key` is filed under."""
    return int(key.split("/", 1)[0]) / 1000


def expiring_entry(enrollment: Enrollment) -> Operation:
    """expiring_entry files an enrollment in progress under its expiry, for the sweeper; write it in the same
    commit that creates the enrollment or puts it back in progress."""
    return Create(ENROLLMENTS_EXPIRING, timed_key(enrollment.expires_at, enrollment.enrollment_id), b"")


def abandonment_markers(enrollment: Enrollment) -> list[Operation]:
    """abandonment_markers are the durable markers of a cancelled or expired enrollment: its clean-up to finish
    and its personal data to erase later; write them in the commit of the CANCELLED or EXPIRED state."""
    return [
        Create(ABANDONED_ENROLLMENTS, enrollment.enrollment_id, b""),
        Create(ABANDONED_RETENTION, timed_key(enrollment.abandoned_at, enrollment.enrollment_id), b""),
    ]


def confirmation_key(user_id: str, transaction_id: str) -> str:
    """confirmation_key names a user's confirmation of one transaction (transaction ids are per user)."""
    return f"{user_id}/{transaction_id}"


@dataclass(frozen=True)
class CertificateOwner:
    """CertificateOwner is whom a customer certificate was issued to, found by its fingerprint."""

    user_id: str
    enrollment_id: str
    serial_number: str


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

    async def user(self, user_id: str) -> Versioned[User]:
        """User reads one user or raises NotFound."""
        entry = await self.store.get(USERS, user_id)
        if entry is None:
            raise NotFound("no such user", reason="USER_NOT_FOUND")
        return Versioned(load_user(entry.value), entry.version)

    async def user_for_login(self, login_id: str) -> Versioned[User] | None:
        """User_for_login finds the user holding a login ID, or None."""
        entry = await self.store.get(LOGIN_IDS, login_id)
        if entry is None:
            return None
        found = await self.store.get(USERS, entry.value.decode())
        return Versioned(load_user(found.value), found.version) if found is not None else None

    async def users(self, collection: str, page_size: int, page_token: str) -> tuple[list[User], str]:
        """Users lists users a page at a time: all of them (USERS) or those of an index collection."""
        page = await self.store.list(collection, page_size=page_size, page_token=page_token)
        if collection == USERS:
            return [load_user(e.value) for e in page.entries], page.next_page_token
        found = [await self.store.get(USERS, e.key) for e in page.entries]
        return [load_user(e.value) for e in found if e is not None], page.next_page_token

    async def certificate_owner(self, fingerprint_sha256: str) -> CertificateOwner | None:
        """Certificate_owner finds whom a customer certificate was issued to, by its SHA-256 fingerprint."""
        entry = await self.store.get(USER_CERTIFICATES, fingerprint_sha256.lower())
        if entry is None:
            return None
        body = json.loads(entry.value)
        return CertificateOwner(body["user_id"], body["enrollment_id"], body["serial"])

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
    """put_enrollment writes an enrollment: created when `version` is None, else compare-and-swap. It records the
    request whose action writes it (see kagi.idempotency.acting_request)."""
    acting = acting_request.get()
    if acting:
        enrollment = replace(enrollment, last_request=acting)
    data = dump_record(enrollment)
    if version is None:
        return Create(ENROLLMENTS, enrollment.enrollment_id, data)
    return Replace(ENROLLMENTS, enrollment.enrollment_id, data, version)


def put_user(user: User, version: int | None) -> Operation:
    """put_user writes a user: created when `version` is None, else compare-and-swap."""
    if version is None:
        return Create(USERS, user.user_id, dump_user(user))
    return Replace(USERS, user.user_id, dump_user(user), version)


def user_indexes(user: User) -> list[Operation]:
    """user_indexes are the listing index entries of a new user (by company and by account)."""
    operations: list[Operation] = [Create(users_by_company(user.company_name), user.user_id, b"")]
    if user.account:
        operations.append(Create(users_by_account(user.account), user.user_id, b""))
    return operations


def certificate_owner_record(fingerprint_sha256: str, owner: CertificateOwner) -> Operation:
    """certificate_owner_record indexes a customer certificate by fingerprint to its user and enrollment."""
    body = {"user_id": owner.user_id, "enrollment_id": owner.enrollment_id, "serial": owner.serial_number}
    return Create(USER_CERTIFICATES, fingerprint_sha256.lower(), json.dumps(body).encode())
