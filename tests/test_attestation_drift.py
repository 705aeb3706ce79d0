"""Compose drift: grouping replicas by compose hash, attested or only reported."""

from __future__ import annotations

from router.attestation.drift import group_by_compose
from router.models import AttestationVerdict, Replica

A, B = "aa" * 32, "bb" * 32


def replica(rid: str, compose_hash: str | None) -> Replica:
    return Replica(rid, f"http://{rid}", "http", rid, 80, compose_hash=compose_hash)


def ok(rid: str, compose_hash: str) -> AttestationVerdict:
    return AttestationVerdict(rid, True, "ok", 0.0, compose_hash=compose_hash)


def test_one_compose_hash_is_no_drift() -> None:
    drift = group_by_compose([replica("r1", A), replica("r2", A.upper())])
    assert not drift.drift
    assert [(g.compose_hash, g.replica_ids, g.attested) for g in drift.groups] == [
        (A, ("r1", "r2"), False)
    ]
    assert "reported, not attested" in drift.describe()


def test_replicas_on_different_compose_hashes_are_drift_largest_group_first() -> None:
    drift = group_by_compose(
        [replica("r1", B), replica("r2", A), replica("r3", A), replica("r4", None)],
        {"r2": ok("r2", A), "r3": ok("r3", A)},
    )
    assert drift.drift
    assert [(g.compose_hash, g.replica_ids, g.attested) for g in drift.groups] == [
        (A, ("r2", "r3"), True),
        (B, ("r1",), False),
        (None, ("r4",), False),
    ]
    assert drift.describe().startswith("2 compose hashes: aaaaaaaaaaaa (2, attested)")


def test_measured_hash_wins_over_the_reported_one_and_the_mismatch_is_named() -> None:
    drift = group_by_compose([replica("r1", A), replica("r2", A)], {"r2": ok("r2", B)})
    assert drift.drift
    assert drift.mismatched == ("r2",)
    assert "differs from the measured one on r2" in drift.describe()


def test_a_failed_verdict_does_not_count_as_measured() -> None:
    failed = AttestationVerdict("r1", False, "wrong_instance", 0.0, compose_hash=B)
    drift = group_by_compose([replica("r1", A)], {"r1": failed})
    assert [(g.compose_hash, g.attested) for g in drift.groups] == [(A, False)]


def test_verdicts_render_for_status_and_the_cli() -> None:
    from router.attestation.report import format_verdict, verdict_to_dict

    passed = AttestationVerdict(
        "r1", True, "ok", 5.0, tcb_status="UpToDate", compose_hash=A, instance_id="c3" * 20
    )
    assert format_verdict(passed) == f"r1  PASS  tcb=UpToDate compose={A[:12]} instance={'c3' * 20}"
    failed = AttestationVerdict("r2", False, "wrong_instance", 5.0, detail="the quote is for x")
    assert format_verdict(failed) == "r2  FAIL  wrong_instance: the quote is for x"
    assert verdict_to_dict(failed)["reason"] == "wrong_instance"
