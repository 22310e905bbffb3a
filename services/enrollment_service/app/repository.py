"""Every record the enrollment service keeps in its key-value store: collections, keys, values, reads and writes.

collection                  key                             value
applications                <application id>                Application JSON
applications-by-account     <branch-type-number>            newest application id
enrollments                 <enrollment id>                 Enrollment JSON
enrollments-by-app          <service id>/<app user id>      enrollment id (steps 8-9)
users                       <user id>                       User JSON (password hashes only)
login-ids                   <login id>                      user id (the login ID's reservation)
users-by-company/<sha256>   <user id>                       "" (ListUsers by company)
users-by-account/<account>  <user id>                       "" (ListUsers by representative account)
user-certificates           <sha-256 fingerprint hex>       {"user_id", "enrollment_id", "serial"}
certificate-expiries        <not-after s>/<fingerprint>     {"user_id", "serial", "reminded"} (renewal reminders)
renewals                    <new certificate's fingerprint> {"old_serial", "old_fingerprint", "deadline", "user_id"}
password-resets             <user id>/<login|confirmation>  {"hash", "expires_at", "failures"} (a reset notice)
confirmations               <user id>/<transaction id>      StoredConfirmation JSON
ended-sessions              <session id>                    "" (transient: until its last token expires)
login-refusals              <certificate fingerprint hex>   counter (transient, fixed window)
notice-throttle             <client address digest>         counter (transient, fixed window: step 1's failures)
outbox                      <queued ms>-<uuid>              {"to", "subject", "body", "attempts", "next_attempt_at"}
enrollments-expiring        <expires ms>/<enrollment>       "" (in progress, by expiry: the sweeper's index; an
                                                            entry is never later than the enrollment's expiry)
abandoned-enrollments       <enrollment id>                 "" (cancelled or expired: clean-up still to finish)
abandoned-retention         <abandoned ms>/<enrollment>     "" (personal data to erase after the retention period)
sweeper-state               expiring-index-v1               "" (the expiring index was backfilled once)
audit, audit-head                                           the hash-chained audit trail (kagi.journal)
idempotency                 <scope>/<request id>            the answers replayed by request id (kagi.idempotency)

Reads return a record with the store version a later compare-and-swap must name (`Versioned`). Writes are
operations built here and committed together, by `EnrollmentRepository.commit` or with an audit record through
the journal. The outbox's sender (adapters.outbox) claims and deletes the mails queued here.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Generic, TypeVar

from kagi.errors import NotFound
from kagi.idempotency import acting_request
from kagi.store.base import Create, Delete, Entry, KeyExists, KeyValueStore, Operation, Replace, VersionMismatch
from services.enrollment_service.domain.messages import Mail
from services.enrollment_service.domain.records import (
    Application,
    Enrollment,
    dump_record,
    load_application,
    load_enrollment,
)
from services.enrollment_service.domain.states import IN_PROGRESS, State
from services.enrollment_service.domain.users import PasswordKind, User, dump_user, load_user

APPLICATIONS = "applications"
APPLICATIONS_BY_ACCOUNT = "applications-by-account"
ENROLLMENTS = "enrollments"
ENROLLMENTS_BY_APP = "enrollments-by-app"
USERS = "users"
LOGIN_IDS = "login-ids"
USER_CERTIFICATES = "user-certificates"
CERTIFICATE_EXPIRIES = "certificate-expiries"
RENEWALS = "renewals"
PASSWORD_RESETS = "password-resets"
CONFIRMATIONS = "confirmations"
ENDED_SESSIONS = "ended-sessions"
LOGIN_REFUSALS = "login-refusals"
NOTICE_THROTTLE = "notice-throttle"
OUTBOX = "outbox"
ENROLLMENTS_EXPIRING = "enrollments-expiring"
ABANDONED_ENROLLMENTS = "abandoned-enrollments"
ABANDONED_RETENTION = "abandoned-retention"
SWEEPER_STATE = "sweeper-state"
_BACKFILLED = "expiring-index-v1"
_PAGE = 200

T = TypeVar("T")


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A record as read, with the store version a later compare-and-swap must name."""

    record: T
    version: int


@dataclass(frozen=True)
class CertificateOwner:
    """Whom a customer certificate was issued to, found by its fingerprint."""

    user_id: str
    enrollment_id: str
    serial_number: str


@dataclass(frozen=True)
class CertificateExpiry:
    """A customer certificate filed under its expiry, with the reminder days already sent for it."""

    expires_at: float
    fingerprint_sha256: str
    user_id: str
    serial_number: str
    reminded: tuple[int, ...] = ()


@dataclass(frozen=True)
class Renewal:
    """A renewal whose old certificate is still to be revoked (at the new one's first session, or its deadline)."""

    new_fingerprint: str
    old_serial: str
    old_fingerprint: str
    deadline: float
    user_id: str


@dataclass(frozen=True)
class ResetTicket:
    """An operator's reset notice for one of a user's passwords: the temporary password's hash and its expiry."""

    user_id: str
    kind: PasswordKind
    password_hash: str = field(repr=False)
    expires_at: float
    failures: int = 0


@dataclass(frozen=True)
class StoredConfirmation:
    """A confirmed transaction as kept for replays (the code only as a digest that tells a retry's code apart)."""

    confirmation_id: str
    user_id: str
    transaction_id: str
    txn_digest: str
    confirmed_at: float
    methods: tuple[str, ...]
    code_digest: str
    thumbprint: str = ""


@dataclass(frozen=True)
class TimedEntry:
    """An entry of a time index (expiring or retention): the enrollment it files, when, and its version."""

    collection: str
    key: str
    version: int

    @property
    def enrollment_id(self) -> str:
        """Return the enrollment the entry files."""
        return self.key.split("/", 1)[1]

    @property
    def due(self) -> float:
        """Return the time (POSIX seconds) the entry is filed under."""
        return key_time(self.key)

    def removal(self) -> Operation:
        """Return the operation that removes this entry, unless it changed since it was read."""
        return Delete(self.collection, self.key, version=self.version)


# -- keys ---------------------------------------------------------------------------------------------------


def users_by_company(company_name: str) -> str:
    """Return the collection indexing one company's users (named by a digest of the name)."""
    return "users-by-company/" + hashlib.sha256(company_name.encode("utf-8")).hexdigest()[:40]


def users_by_account(account: str) -> str:
    """Return the collection indexing the users of one representative account."""
    return f"users-by-account/{account}"


def certificate_expiry_key(expires_at: float, fingerprint_sha256: str) -> str:
    """Order customer certificates by expiry, for the renewal reminders."""
    return f"{int(expires_at):012d}/{fingerprint_sha256.lower()}"


def timed_key(seconds: float, enrollment_id: str) -> str:
    """Order an enrollment in a time index: zero-padded milliseconds, then the enrollment id."""
    return f"{int(seconds * 1000):015d}/{enrollment_id}"


def key_time(key: str) -> float:
    """Return the time (POSIX seconds) a `timed_key` is filed under."""
    return int(key.split("/", 1)[0]) / 1000


def confirmation_key(user_id: str, transaction_id: str) -> str:
    """Name a user's confirmation of one transaction (transaction ids are per user)."""
    return f"{user_id}/{transaction_id}"


def app_key(service_id: str, app_user_id: str) -> str:
    """Index an enrollment by the IDs its phone app presents in steps 8 and 9."""
    return f"{service_id}/{app_user_id}"


def _reset_key(user_id: str, kind: PasswordKind) -> str:
    return f"{user_id}/{kind.value}"


def _address_key(client_address: str) -> str:
    # The address itself is personal data: the throttle keeps only a digest of it.
    return hashlib.sha256(client_address.encode()).hexdigest()[:40]


# -- the repository -----------------------------------------------------------------------------------------


class EnrollmentRepository:
    """Read the enrollment service's records with their versions and commit the operations that write them.

    `mail_queued` is called after a commit that queued a mail in the outbox (the sender's doorbell).
    """

    def __init__(self, store: KeyValueStore, *, mail_queued: Callable[[], None] | None = None) -> None:
        self._store = store
        self._mail_queued = mail_queued

    # applications

    async def application(self, application_id: str) -> Versioned[Application]:
        """Return one application, or raise NotFound."""
        entry = await self._store.get(APPLICATIONS, application_id)
        if entry is None:
            raise NotFound("no such application", reason="APPLICATION_NOT_FOUND")
        return Versioned(load_application(entry.value), entry.version)

    async def application_for_account(self, account: str) -> Versioned[Application] | None:
        """Return the newest application of a representative account, or None."""
        entry = await self._store.get(APPLICATIONS_BY_ACCOUNT, account)
        if entry is None:
            return None
        return await self.application(entry.value.decode())

    async def account_index_version(self, account: str) -> int | None:
        """Return the version of the account's pointer to its newest application (None: no application yet)."""
        entry = await self._store.get(APPLICATIONS_BY_ACCOUNT, account)
        return entry.version if entry is not None else None

    async def applications(self, page_size: int, page_token: str) -> tuple[list[Application], str]:
        """Return a page of applications and the next page's token."""
        page = await self._store.list(APPLICATIONS, page_size=page_size, page_token=page_token)
        return [load_application(e.value) for e in page.entries], page.next_page_token

    async def notice_failures(self, client_address: str) -> int:
        """Return how many failed step 1s the client address made in the current window."""
        entry = await self._store.get(NOTICE_THROTTLE, _address_key(client_address))
        return int(entry.value) if entry is not None else 0

    async def count_notice_failure(self, client_address: str, *, window_seconds: float) -> int:
        """Count a failed step 1 against the client address (a fixed window); return the count."""
        return await self._store.increment(NOTICE_THROTTLE, _address_key(client_address), ttl=window_seconds)

    # enrollments

    async def enrollment(self, enrollment_id: str) -> Versioned[Enrollment]:
        """Return one enrollment, or raise NotFound."""
        found = await self.find_enrollment(enrollment_id)
        if found is None:
            raise NotFound("no such enrollment", reason="ENROLLMENT_NOT_FOUND")
        return found

    async def find_enrollment(self, enrollment_id: str) -> Versioned[Enrollment] | None:
        """Return one enrollment, or None."""
        entry = await self._store.get(ENROLLMENTS, enrollment_id)
        return Versioned(load_enrollment(entry.value), entry.version) if entry is not None else None

    async def enrollment_id_for_app(self, service_id: str, app_user_id: str) -> str | None:
        """Return the id of the enrollment whose step 7 created the token with these app IDs, or None."""
        entry = await self._store.get(ENROLLMENTS_BY_APP, app_key(service_id, app_user_id))
        return entry.value.decode() if entry is not None else None

    async def enrollment_for_app(self, service_id: str, app_user_id: str) -> Versioned[Enrollment] | None:
        """Return the enrollment whose token the app is activating, or None."""
        enrollment_id = await self.enrollment_id_for_app(service_id, app_user_id)
        return await self.enrollment(enrollment_id) if enrollment_id is not None else None

    # users

    async def login_id_taken(self, login_id: str) -> bool:
        """Tell whether a user already holds the login ID (advisory; step 3's reservation decides)."""
        return await self._store.get(LOGIN_IDS, login_id) is not None

    async def login_id_holder(self, login_id: str) -> Versioned[str] | None:
        """Return the id of the user holding the login ID's reservation, or None."""
        entry = await self._store.get(LOGIN_IDS, login_id)
        return Versioned(entry.value.decode(), entry.version) if entry is not None else None

    async def user(self, user_id: str) -> Versioned[User]:
        """Return one user, or raise NotFound."""
        found = await self.find_user(user_id)
        if found is None:
            raise NotFound("no such user", reason="USER_NOT_FOUND")
        return found

    async def find_user(self, user_id: str) -> Versioned[User] | None:
        """Return one user, or None."""
        entry = await self._store.get(USERS, user_id)
        return Versioned(load_user(entry.value), entry.version) if entry is not None else None

    async def user_for_login(self, login_id: str) -> Versioned[User] | None:
        """Return the user holding a login ID, or None."""
        holder = await self.login_id_holder(login_id)
        return await self.find_user(holder.record) if holder is not None else None

    async def users(
        self, page_size: int, page_token: str, *, company: str = "", account: str = ""
    ) -> tuple[list[User], str]:
        """Return a page of users (all, one company's or one account's) and the next page's token."""
        if not company and not account:
            page = await self._store.list(USERS, page_size=page_size, page_token=page_token)
            return [load_user(e.value) for e in page.entries], page.next_page_token
        collection = users_by_company(company) if company else users_by_account(account)
        page = await self._store.list(collection, page_size=page_size, page_token=page_token)
        found = [await self._store.get(USERS, e.key) for e in page.entries]
        return [load_user(e.value) for e in found if e is not None], page.next_page_token

    # sessions and confirmations

    async def login_refusals(self, fingerprint_sha256: str) -> int:
        """Return how many logins with the certificate were refused in the current window."""
        entry = await self._store.get(LOGIN_REFUSALS, fingerprint_sha256.lower())
        return int(entry.value) if entry is not None else 0

    async def count_login_refusal(self, fingerprint_sha256: str, *, window_seconds: float) -> int:
        """Count a refused login against the certificate (a fixed window); return the count."""
        return await self._store.increment(LOGIN_REFUSALS, fingerprint_sha256.lower(), ttl=window_seconds)

    async def session_ended(self, session_id: str) -> bool:
        """Tell whether the session was ended (logged out) before its tokens expired."""
        return await self._store.get(ENDED_SESSIONS, session_id) is not None

    async def confirmation(self, user_id: str, transaction_id: str) -> StoredConfirmation | None:
        """Return the user's confirmation of the transaction, or None."""
        entry = await self._store.get(CONFIRMATIONS, confirmation_key(user_id, transaction_id))
        if entry is None:
            return None
        body = json.loads(entry.value)
        return StoredConfirmation(
            confirmation_id=body["confirmation_id"],
            user_id=body["user_id"],
            transaction_id=body["transaction_id"],
            txn_digest=body["txn_digest"],
            confirmed_at=body["confirmed_at"],
            methods=tuple(body["methods"]),
            code_digest=body["code_digest"],
            thumbprint=body.get("thumbprint", ""),
        )

    # certificates

    async def certificate_owner(self, fingerprint_sha256: str) -> CertificateOwner | None:
        """Return whom a customer certificate was issued to, by its SHA-256 fingerprint, or None."""
        entry = await self._store.get(USER_CERTIFICATES, fingerprint_sha256.lower())
        if entry is None:
            return None
        body = json.loads(entry.value)
        return CertificateOwner(body["user_id"], body["enrollment_id"], body["serial"])

    async def certificate_expiries(self) -> AsyncGenerator[Versioned[CertificateExpiry], None]:
        """Yield the customer certificates filed for reminders, soonest expiry first."""
        async with contextlib.aclosing(self._entries(CERTIFICATE_EXPIRIES, page_size=100)) as entries:
            async for entry in entries:
                expires, fingerprint = entry.key.split("/", 1)
                body = json.loads(entry.value)
                expiry = CertificateExpiry(
                    float(expires), fingerprint, body["user_id"], body["serial"], tuple(body["reminded"])
                )
                yield Versioned(expiry, entry.version)

    async def renewal(self, new_fingerprint: str) -> Versioned[Renewal] | None:
        """Return the renewal that issued the certificate with this fingerprint, while its old one is live."""
        entry = await self._store.get(RENEWALS, new_fingerprint.lower())
        return _renewal(entry) if entry is not None else None

    async def renewals(self) -> AsyncGenerator[Versioned[Renewal], None]:
        """Yield every renewal whose old certificate is still to be revoked."""
        async for entry in self._entries(RENEWALS, page_size=100):
            yield _renewal(entry)

    # passwords

    async def reset_ticket(self, user_id: str, kind: PasswordKind) -> Versioned[ResetTicket] | None:
        """Return the reset notice of one of the user's passwords, or None."""
        entry = await self._store.get(PASSWORD_RESETS, _reset_key(user_id, kind))
        if entry is None:
            return None
        body = json.loads(entry.value)
        ticket = ResetTicket(user_id, kind, body["hash"], body["expires_at"], int(body["failures"]))
        return Versioned(ticket, entry.version)

    # the sweeper's indexes

    def expiring_due(self, until: float) -> AsyncGenerator[TimedEntry, None]:
        """Yield the entries of the expiring index filed at or before `until`, oldest first."""
        return self._due(ENROLLMENTS_EXPIRING, until)

    def retention_due(self, until: float) -> AsyncGenerator[TimedEntry, None]:
        """Yield the entries of the retention index (abandoned setups) filed at or before `until`, oldest first."""
        return self._due(ABANDONED_RETENTION, until)

    async def refile_expiring(self, entry: TimedEntry, due: float) -> None:
        """Move an enrollment's expiring entry to `due` (a step moved its expiry on, or an unlock may resume it)."""
        new_key = timed_key(due, entry.enrollment_id)
        if new_key == entry.key:
            return
        try:
            await self._store.commit([entry.removal(), Create(ENROLLMENTS_EXPIRING, new_key, b"")])
        except KeyExists:
            with contextlib.suppress(VersionMismatch):
                await self._store.commit([entry.removal()])  # already filed there
        except VersionMismatch:
            pass  # another sweeper moved it

    async def abandoned_enrollment_ids(self) -> AsyncGenerator[str, None]:
        """Yield the ids of the abandoned enrollments whose clean-up is still to finish."""
        async for entry in self._entries(ABANDONED_ENROLLMENTS, page_size=_PAGE):
            yield entry.key

    async def cleanup_marker(self, enrollment_id: str) -> int | None:
        """Return the version of the enrollment's clean-up marker, or None when it has none."""
        entry = await self._store.get(ABANDONED_ENROLLMENTS, enrollment_id)
        return entry.version if entry is not None else None

    async def backfill_expiring_index(self) -> None:
        """File every enrollment in progress that predates the expiring index, once per store."""
        if await self._store.get(SWEEPER_STATE, _BACKFILLED) is not None:
            return
        async for entry in self._entries(ENROLLMENTS, page_size=_PAGE):
            record = load_enrollment(entry.value)
            if record.state in IN_PROGRESS | {State.LOCKED}:
                with contextlib.suppress(KeyExists):
                    await self._store.commit([expiring_entry(record)])
        with contextlib.suppress(KeyExists):
            await self._store.create(SWEEPER_STATE, _BACKFILLED, b"")

    # writing

    async def commit(self, operations: Sequence[Operation]) -> builtins.list[Entry | None]:
        """Write all operations atomically (KeyExists / VersionMismatch when a condition fails); return, per
        operation, the entry written (None for a delete)."""
        written = await self._store.commit(operations)
        queued_mail = any(isinstance(op, Create) and op.collection == OUTBOX for op in operations)
        if queued_mail and self._mail_queued is not None:
            self._mail_queued()
        return written

    async def _due(self, collection: str, until: float) -> AsyncGenerator[TimedEntry, None]:
        async with contextlib.aclosing(self._entries(collection, page_size=_PAGE)) as entries:
            async for entry in entries:
                if key_time(entry.key) > until:
                    return
                yield TimedEntry(collection, entry.key, entry.version)

    async def _entries(self, collection: str, *, page_size: int) -> AsyncGenerator[Entry, None]:
        token = ""
        while True:
            page = await self._store.list(collection, page_size=page_size, page_token=token)
            for entry in page.entries:
                yield entry
            token = page.next_page_token
            if not token:
                return


def _renewal(entry: Entry) -> Versioned[Renewal]:
    body = json.loads(entry.value)
    renewal = Renewal(entry.key, body["old_serial"], body["old_fingerprint"], body["deadline"], body["user_id"])
    return Versioned(renewal, entry.version)


# -- the operations that write ------------------------------------------------------------------------------


def put_application(application: Application, version: int | None) -> Operation:
    """Write an application: created when `version` is None, else compare-and-swap."""
    data = dump_record(application)
    if version is None:
        return Create(APPLICATIONS, application.application_id, data)
    return Replace(APPLICATIONS, application.application_id, data, version)


def point_account(account: str, application_id: str, version: int | None) -> Operation:
    """Point a representative account at its newest application (a company that re-applies gets a new notice):
    created when `version` (from `account_index_version`) is None, else compare-and-swap."""
    pointer = application_id.encode()
    if version is None:
        return Create(APPLICATIONS_BY_ACCOUNT, account, pointer)
    return Replace(APPLICATIONS_BY_ACCOUNT, account, pointer, version)


def put_enrollment(enrollment: Enrollment, version: int | None) -> Operation:
    """Write an enrollment: created when `version` is None, else compare-and-swap. Record the request whose
    action writes it (see kagi.idempotency.acting_request)."""
    acting = acting_request.get()
    if acting:
        enrollment = replace(enrollment, last_request=acting)
    data = dump_record(enrollment)
    if version is None:
        return Create(ENROLLMENTS, enrollment.enrollment_id, data)
    return Replace(ENROLLMENTS, enrollment.enrollment_id, data, version)


def index_app(service_id: str, app_user_id: str, enrollment_id: str) -> Operation:
    """Index the enrollment by the app IDs of the token its step 7 created."""
    return Create(ENROLLMENTS_BY_APP, app_key(service_id, app_user_id), enrollment_id.encode())


def drop_app_index(service_id: str, app_user_id: str) -> Operation:
    """Remove the enrollment's index entry by app IDs."""
    return Delete(ENROLLMENTS_BY_APP, app_key(service_id, app_user_id))


def expiring_entry(enrollment: Enrollment) -> Operation:
    """File an enrollment in progress under its expiry, for the sweeper; write it in the same commit that
    creates the enrollment or puts it back in progress."""
    return Create(ENROLLMENTS_EXPIRING, timed_key(enrollment.expires_at, enrollment.enrollment_id), b"")


def abandonment_markers(enrollment: Enrollment) -> list[Operation]:
    """Return the durable markers of a cancelled or expired enrollment: its clean-up to finish and its personal
    data to erase later; write them in the commit of the CANCELLED or EXPIRED state."""
    return [
        Create(ABANDONED_ENROLLMENTS, enrollment.enrollment_id, b""),
        Create(ABANDONED_RETENTION, timed_key(enrollment.abandoned_at, enrollment.enrollment_id), b""),
    ]


def cleanup_finished(enrollment_id: str) -> Operation:
    """Remove the clean-up marker of an abandoned enrollment (its clean-up is done)."""
    return Delete(ABANDONED_ENROLLMENTS, enrollment_id)


def drop_stale_marker(enrollment_id: str, version: int) -> Operation:
    """Remove a clean-up marker left with nothing to clean, unless it changed since it was read."""
    return Delete(ABANDONED_ENROLLMENTS, enrollment_id, version=version)


def drop_abandonment_markers(enrollment: Enrollment) -> list[Operation]:
    """Remove both markers `abandonment_markers` wrote (an operator re-opens the enrollment)."""
    return [
        Delete(ABANDONED_ENROLLMENTS, enrollment.enrollment_id),
        Delete(ABANDONED_RETENTION, timed_key(enrollment.abandoned_at, enrollment.enrollment_id)),
    ]


def put_user(user: User, version: int | None) -> Operation:
    """Write a user: created when `version` is None, else compare-and-swap."""
    if version is None:
        return Create(USERS, user.user_id, dump_user(user))
    return Replace(USERS, user.user_id, dump_user(user), version)


def delete_user(user_id: str, version: int) -> Operation:
    """Delete a user, unless it changed since it was read."""
    return Delete(USERS, user_id, version=version)


def reserve_login_id(login_id: str, user_id: str) -> Operation:
    """Reserve a login ID for a user (fails with KeyExists when another user holds it)."""
    return Create(LOGIN_IDS, login_id, user_id.encode())


def release_login_id(login_id: str, version: int) -> Operation:
    """Release a login ID's reservation, unless it changed since it was read."""
    return Delete(LOGIN_IDS, login_id, version=version)


def user_indexes(user: User) -> list[Operation]:
    """Return the listing index entries of a new user (by company and by account)."""
    operations: list[Operation] = [Create(users_by_company(user.company_name), user.user_id, b"")]
    if user.account:
        operations.append(Create(users_by_account(user.account), user.user_id, b""))
    return operations


def drop_user_indexes(user: User) -> list[Operation]:
    """Remove the listing index entries `user_indexes` wrote."""
    return [Delete(op.collection, op.key) for op in user_indexes(user)]


def certificate_owner_record(fingerprint_sha256: str, owner: CertificateOwner) -> Operation:
    """Index a customer certificate by fingerprint to its user and enrollment."""
    body = {"user_id": owner.user_id, "enrollment_id": owner.enrollment_id, "serial": owner.serial_number}
    return Create(USER_CERTIFICATES, fingerprint_sha256.lower(), json.dumps(body).encode())


def drop_certificate_owner(fingerprint_sha256: str) -> Operation:
    """Remove a customer certificate's owner index entry."""
    return Delete(USER_CERTIFICATES, fingerprint_sha256.lower())


def put_certificate_expiry(expiry: CertificateExpiry, version: int | None) -> Operation:
    """File a customer certificate under its expiry (created when `version` is None, else compare-and-swap)."""
    key = certificate_expiry_key(expiry.expires_at, expiry.fingerprint_sha256)
    body = {"user_id": expiry.user_id, "serial": expiry.serial_number, "reminded": list(expiry.reminded)}
    if version is None:
        return Create(CERTIFICATE_EXPIRIES, key, json.dumps(body).encode())
    return Replace(CERTIFICATE_EXPIRIES, key, json.dumps(body).encode(), version)


def drop_certificate_expiry(expiry: Versioned[CertificateExpiry]) -> Operation:
    """Stop reminding of a certificate (expired, revoked or its user gone), unless it changed since read."""
    key = certificate_expiry_key(expiry.record.expires_at, expiry.record.fingerprint_sha256)
    return Delete(CERTIFICATE_EXPIRIES, key, version=expiry.version)


def renewal_record(renewal: Renewal) -> Operation:
    """Record a renewal whose old certificate is to be revoked later."""
    body = {
        "old_serial": renewal.old_serial,
        "old_fingerprint": renewal.old_fingerprint.lower(),
        "deadline": renewal.deadline,
        "user_id": renewal.user_id,
    }
    return Create(RENEWALS, renewal.new_fingerprint.lower(), json.dumps(body).encode())


def drop_renewal(renewal: Versioned[Renewal]) -> Operation:
    """Remove a renewal whose old certificate was revoked, unless another replica did first."""
    return Delete(RENEWALS, renewal.record.new_fingerprint, version=renewal.version)


def put_reset_ticket(ticket: ResetTicket, version: int | None) -> Operation:
    """Write a reset notice: created when `version` is None, else compare-and-swap."""
    key = _reset_key(ticket.user_id, ticket.kind)
    body = {"hash": ticket.password_hash, "expires_at": ticket.expires_at, "failures": ticket.failures}
    if version is None:
        return Create(PASSWORD_RESETS, key, json.dumps(body).encode())
    return Replace(PASSWORD_RESETS, key, json.dumps(body).encode(), version)


def drop_reset_ticket(ticket: Versioned[ResetTicket]) -> Operation:
    """Remove a reset notice (used, or void after too many wrong entries), unless it changed since read."""
    return Delete(PASSWORD_RESETS, _reset_key(ticket.record.user_id, ticket.record.kind), version=ticket.version)


def confirmation_record(confirmation: StoredConfirmation) -> Operation:
    """Record a confirmed transaction (fails with KeyExists when it was confirmed already)."""
    body = {**asdict(confirmation), "methods": list(confirmation.methods)}
    key = confirmation_key(confirmation.user_id, confirmation.transaction_id)
    return Create(CONFIRMATIONS, key, json.dumps(body).encode())


def end_session(session_id: str, *, ttl: float) -> Operation:
    """Mark a session ended until its last token expires (KeyExists when it was ended already)."""
    return Create(ENDED_SESSIONS, session_id, b"", ttl=ttl)


def outbox_entry(mail: Mail, now: float) -> Create:
    """Queue `mail` in the outbox; commit it together with the step's own writes (adapters.outbox sends it)."""
    key = f"{int(now * 1000):015d}-{uuid.uuid4().hex}"
    record = {"to": mail.to, "subject": mail.subject, "body": mail.body, "attempts": 0, "next_attempt_at": now}
    return Create(OUTBOX, key, json.dumps(record).encode())
