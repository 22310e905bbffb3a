"""An abandoned enrollment's record: cancelling or expiring marks its clean-up pending, the retention erases its
personal data and keeps its identifiers, and an operator's re-opening resumes where it stood or, once its
credentials were revoked, where step 4 issues new ones."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kagi.errors import FailedPrecondition
from services.enrollment_service.domain.records import (
    Cleanup,
    Enrollment,
    dump_record,
    load_enrollment,
)
from services.enrollment_service.domain.states import Event, State, Step

NOW = 1_800_000_000.0
IDLE = 3600.0


def enrollment(state: State = State.TOKEN_REQUESTED) -> Enrollment:
    return Enrollment(
        enrollment_id="e" * 32,
        application_id="a" * 32,
        state=state,
        created_at=NOW - 100,
        updated_at=NOW - 10,
        expires_at=NOW + IDLE,
        session_digest="digest",
        user_name="山田 太郎",
        email="taro@example.co.jp",
        login_id="yamada01",
        login_password_hash="$argon2id$login",
        confirmation_password_hash="$argon2id$confirmation",
        user_id="u" * 32,
        certificate_serial="0abc",
        certificate_fingerprint="f" * 64,
        mobile_email="phone@example.jp",
        token_id="t" * 32,
        service_id="S123",
        app_user_id="U456",
    )


def test_cancelling_and_expiring_mark_the_clean_up_pending() -> None:
    """Both abandonments record when, and leave the clean-up PENDING; only expiry remembers where it stood."""
    cancelled = enrollment().abandoned(Event.CANCEL, NOW)
    assert (cancelled.state, cancelled.cleanup, cancelled.abandoned_at) == (State.CANCELLED, Cleanup.PENDING, NOW)
    assert cancelled.expired_from is None
    expired = enrollment().abandoned(Event.EXPIRE, NOW)
    assert (expired.state, expired.expired_from) == (State.EXPIRED, State.TOKEN_REQUESTED)
    with pytest.raises(ValueError, match="LOCK"):
        enrollment().abandoned(Event.LOCK, NOW)


def test_a_lazily_expired_view_remembers_where_it_stood() -> None:
    """Reading an idle enrollment after its expiry shows EXPIRED and the state it expired from."""
    view = enrollment().current(NOW + IDLE)
    assert (view.state, view.expired_from, view.cleanup) == (State.EXPIRED, State.TOKEN_REQUESTED, Cleanup.NONE)


def test_the_retention_erases_personal_data_and_keeps_identifiers() -> None:
    """Name, both e-mail addresses and the password hashes go; ids, login ID, serial and token id stay."""
    erased = enrollment().abandoned(Event.CANCEL, NOW).without_personal_data(NOW + 90 * 86400)
    assert (erased.user_name, erased.email, erased.mobile_email) == ("", "", "")
    assert (erased.login_password_hash, erased.confirmation_password_hash) == ("", "")
    assert erased.personal_data_erased
    assert (erased.user_id, erased.login_id, erased.certificate_serial, erased.token_id) == (
        "u" * 32,
        "yamada01",
        "0abc",
        "t" * 32,
    )
    assert b"taro@example.co.jp" not in dump_record(erased)


def test_reopening_untouched_credentials_resumes_where_it_stood() -> None:
    """Before the clean-up began, a re-opened enrollment is back in the state it expired from, credentials
    kept, with a fresh idle timeout and no abandonment left on it."""
    expired = enrollment().abandoned(Event.EXPIRE, NOW)
    resumed = expired.reopened(NOW + 60, IDLE, credentials_revoked=False)
    assert (resumed.state, resumed.next_step) == (State.TOKEN_REQUESTED, Step.ACTIVATE_APP)
    assert (resumed.expires_at, resumed.cleanup, resumed.expired_from, resumed.abandoned_at) == (
        NOW + 60 + IDLE,
        Cleanup.NONE,
        None,
        0.0,
    )
    assert (resumed.certificate_serial, resumed.token_id) == ("0abc", "t" * 32)


def test_reopening_after_revocation_goes_back_to_step4_without_the_old_credentials() -> None:
    """Once the certificate and token were revoked, the re-opened setup is REGISTERED (step 4 next) and holds
    neither the old certificate nor the old token."""
    expired = enrollment().abandoned(Event.EXPIRE, NOW).with_cleanup(Cleanup.DONE, NOW)
    resumed = expired.reopened(NOW, IDLE, credentials_revoked=True)
    assert (resumed.state, resumed.next_step) == (State.REGISTERED, Step.ISSUE_CERTIFICATE)
    assert (resumed.certificate_serial, resumed.certificate_fingerprint, resumed.token_id, resumed.service_id) == (
        "",
        "",
        "",
        "",
    )
    assert (resumed.login_id, resumed.user_id) == ("yamada01", "u" * 32)


def test_reopening_before_step3_simply_resumes() -> None:
    """An enrollment that expired before registration had no credentials: it resumes where it stood."""
    early = dataclasses.replace(enrollment(State.PROFILE_SUBMITTED), user_id="", certificate_serial="", token_id="")
    resumed = early.abandoned(Event.EXPIRE, NOW).reopened(NOW, IDLE, credentials_revoked=True)
    assert resumed.state is State.PROFILE_SUBMITTED


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (enrollment().abandoned(Event.CANCEL, NOW), "ENROLLMENT_NOT_EXPIRED"),
        (enrollment(), "ENROLLMENT_NOT_EXPIRED"),
        (enrollment().abandoned(Event.EXPIRE, NOW).without_personal_data(NOW), "PERSONAL_DATA_ERASED"),
    ],
)
def test_reopening_is_refused_naming_why(record: Enrollment, reason: str) -> None:
    """Only an EXPIRED enrollment with its personal data can be re-opened; the refusal names why."""
    with pytest.raises(FailedPrecondition) as refused:
        record.reopened(NOW, IDLE, credentials_revoked=False)
    assert refused.value.reason == reason


def test_the_new_fields_survive_storage_and_old_records_still_load() -> None:
    """Cleanup and expired_from round-trip through JSON; a record written before they existed loads as not
    abandoned."""
    expired = enrollment().abandoned(Event.EXPIRE, NOW).with_cleanup(Cleanup.REVOKING, NOW)
    assert load_enrollment(dump_record(expired)) == expired
    body = json.loads(dump_record(enrollment()))
    for name in ("abandoned_at", "expired_from", "cleanup", "personal_data_erased"):
        body.pop(name)
    old = load_enrollment(json.dumps(body).encode())
    assert (old.cleanup, old.expired_from, old.personal_data_erased) == (Cleanup.NONE, None, False)
