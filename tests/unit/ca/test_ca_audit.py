"""The audit chain: each record hashes its predecessor; modification, deletion, reordering and truncation show."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from kagi.audit import (
    GENESIS_HASH,
    AuditRecord,
    next_audit_record,
    verify_audit_chain,
)
from kagi.errors import InvalidArgument


@pytest.fixture
def chain(clock) -> list[AuditRecord]:
    """Five chained records, one second apart."""
    records: list[AuditRecord] = []
    previous = None
    for index in range(5):
        previous = next_audit_record(
            previous,
            clock=clock,
            actor="spiffe://kagi.internal/enrollment",
            action="certificate.issue",
            subject=f"{index:040x}",
            details={"profile": "customer", "company": "株式会社 山田商事"},
        )
        records.append(previous)
        clock.advance(1)
    return records


def test_records_link_by_sha256_from_genesis(chain):
    """The first record follows the genesis hash; each next one carries its predecessor's hash."""
    assert chain[0].previous_hash == GENESIS_HASH
    assert chain[0].sequence == 0
    for before, after in itertools.pairwise(chain):
        assert after.previous_hash == before.hash
        assert after.sequence == before.sequence + 1
    assert all(len(record.hash) == 64 for record in chain)
    assert chain[0].at.endswith("Z")


def test_an_intact_chain_verifies(chain):
    """An untouched chain verifies, with or without its expected head."""
    assert verify_audit_chain(chain).ok
    assert verify_audit_chain(chain, expected_head=chain[-1].hash).checked == 5


def test_a_modified_record_is_detected(chain):
    """Changing one field of record 2 (even keeping its hash) breaks the chain at 2."""
    chain[2] = dataclasses.replace(chain[2], action="certificate.revoke")
    verdict = verify_audit_chain(chain)
    assert not verdict.ok
    assert verdict.first_bad_index == 2
    assert "modified" in verdict.problem


def test_a_modified_and_rehashed_record_breaks_the_next_link(chain):
    """Rewriting record 2 with a fresh hash is caught at record 3, whose link no longer matches."""
    forged = dataclasses.replace(chain[2], subject="f" * 40, hash="")
    chain[2] = dataclasses.replace(forged, hash=forged.computed_hash())
    verdict = verify_audit_chain(chain)
    assert (verdict.ok, verdict.first_bad_index) == (False, 3)


def test_a_deleted_record_is_detected(chain):
    """Deleting record 1 is caught at the record that follows it."""
    del chain[1]
    verdict = verify_audit_chain(chain)
    assert (verdict.ok, verdict.first_bad_index) == (False, 1)
    assert "deleted or reordered" in verdict.problem


def test_reordered_records_are_detected(chain):
    """Swapping records 2 and 3 is caught at position 2."""
    chain[2], chain[3] = chain[3], chain[2]
    verdict = verify_audit_chain(chain)
    assert (verdict.ok, verdict.first_bad_index) == (False, 2)


def test_a_truncated_tail_is_detected_against_the_head(chain):
    """Dropping the last record passes link checks but not the expected head hash."""
    head = chain[-1].hash
    verdict = verify_audit_chain(chain[:-1], expected_head=head)
    assert not verdict.ok
    assert "truncated" in verdict.problem


def test_a_run_verifies_from_a_trusted_anchor(chain):
    """Verifying records 3.. from record 2 as anchor works; from the wrong anchor it fails."""
    assert verify_audit_chain(chain[3:], anchor=chain[2]).ok
    assert not verify_audit_chain(chain[3:], anchor=chain[1]).ok


def test_records_round_trip_through_json(chain):
    """to_json/from_json keep every field, Japanese text included, and the hash still verifies."""
    decoded = [AuditRecord.from_json(record.to_json()) for record in chain]
    assert decoded == chain
    assert verify_audit_chain(decoded).ok
    assert "株式会社".encode() in chain[0].to_json()


def test_undecodable_record_is_invalid():
    """A stored record that is not a record raises InvalidArgument AUDIT_RECORD_MALFORMED."""
    with pytest.raises(InvalidArgument) as error:
        AuditRecord.from_json(b'{"sequence": 1}')
    assert error.value.reason == "AUDIT_RECORD_MALFORMED"
