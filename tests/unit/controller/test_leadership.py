"""Leader election's decision (acquire, renew, follow, step down) given the lease, the candidate and
the clock; the spec a claim writes; the timing's checks; the settings it is built from. The fence it
raises and closes is tested in test_write_fence.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from aliasroll.config import OperatorConfig
from aliasroll.controller.leadership import (
    Action,
    Candidate,
    ElectionTiming,
    LeaseRecord,
    candidate_identity,
    decide,
    elector_for,
    taken_by,
)
from aliasroll.controller.write_fence import Fence

TIMING = ElectionTiming(lease_duration=10, renew_deadline=7, retry_period=2)
ME = "aliasroll-7d9f-abcde_0a1b2c3d"
OTHER = "aliasroll-7d9f-fghij_4e5f6a7b"
T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)


def held(holder: str | None, duration: float = 10) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration=duration, renew_time=T0, acquire_time=T0)


@dataclass(frozen=True)
class Case:
    name: str
    me: Candidate
    record: LeaseRecord | None
    observed_at: float
    now: float
    action: Action
    wait: float
    read_failed: bool = False


FOLLOWER = Candidate(identity=ME)
LEADER = Candidate(identity=ME, leading=True, renewed_at=100.0)

CASES = [
    Case("no lease: create it", FOLLOWER, None, 0, 100, Action.CREATE, 2),
    Case("released (no holder): take it at once", FOLLOWER, held(None, 1), 99.9, 100, Action.ACQUIRE, 2),
    Case(
        "another's, seen 3 s ago: follow until it expires", FOLLOWER, held(OTHER), 97, 100, Action.FOLLOW, 2
    ),
    Case("another's, 1 s left: look again right at expiry", FOLLOWER, held(OTHER), 91, 100, Action.FOLLOW, 1),
    Case(
        "another's, unchanged for the lease duration: take it",
        FOLLOWER,
        held(OTHER),
        90,
        100,
        Action.ACQUIRE,
        2,
    ),
    Case(
        "another's with its own shorter duration: expires by that",
        FOLLOWER,
        held(OTHER, duration=4),
        95,
        100,
        Action.ACQUIRE,
        2,
    ),
    Case(
        "read failed: a follower never acquires blind",
        FOLLOWER,
        held(OTHER),
        0,
        100,
        Action.FOLLOW,
        2,
        read_failed=True,
    ),
    Case(
        "our name on record but not leading (renewal answered late): acquire afresh",
        FOLLOWER,
        held(ME),
        99,
        100,
        Action.ACQUIRE,
        2,
    ),
    Case("leading, renewed 2 s ago: renew", LEADER, held(ME), 100, 102, Action.RENEW, 2),
    Case(
        "leading, renewals failing 6 s: retry, waking at the deadline",
        LEADER,
        held(ME),
        100,
        106,
        Action.RENEW,
        1,
        read_failed=True,
    ),
    Case(
        "leading, not renewed within the deadline: step down", LEADER, held(ME), 100, 107, Action.STEP_DOWN, 2
    ),
    Case(
        "leading, past the deadline even if the read shows us: step down",
        LEADER,
        held(ME),
        100,
        108.5,
        Action.STEP_DOWN,
        2,
    ),
    Case(
        "leading, but the lease names another: step down now",
        LEADER,
        held(OTHER),
        100,
        101,
        Action.STEP_DOWN,
        2,
    ),
    Case(
        "leading, the lease released by someone: step down now",
        LEADER,
        held(None),
        100,
        101,
        Action.STEP_DOWN,
        2,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decide(case: Case) -> None:
    decision = decide(
        me=case.me,
        record=case.record,
        observed_at=case.observed_at,
        read_failed=case.read_failed,
        now=case.now,
        timing=TIMING,
    )
    assert (decision.action, decision.wait) == (case.action, pytest.approx(case.wait))


def test_the_leader_is_fenced_before_any_follower_may_take_over() -> None:
    # The follower's clock starts when it sees the renewal, never before the leader sent it.
    renewed_at = 100.0
    first_takeover = next(
        t / 10
        for t in range(1000, 1200)
        if decide(
            me=FOLLOWER,
            record=held(OTHER),
            observed_at=renewed_at,
            read_failed=False,
            now=t / 10,
            timing=TIMING,
        ).action
        is Action.ACQUIRE
    )
    last_write = max(
        t / 10
        for t in range(1000, 1200)
        if decide(
            me=Candidate(identity=OTHER, leading=True, renewed_at=renewed_at),
            record=held(OTHER),
            observed_at=renewed_at,
            read_failed=True,
            now=t / 10,
            timing=TIMING,
        ).action
        is Action.RENEW
    )
    assert last_write < renewed_at + TIMING.renew_deadline <= first_takeover - 3


CLAIMS = [
    ("create", None, 0, T0),
    ("renew keeps acquireTime and the count", held(ME), 0, T0),
    (
        "take over: new acquireTime, one more transition",
        held(OTHER),
        1,
        datetime(2026, 11, 25, 6, 1, tzinfo=UTC),
    ),
    ("after a release", held(None, 1), 1, datetime(2026, 11, 25, 6, 1, tzinfo=UTC)),
]


@pytest.mark.parametrize(
    ("previous", "transitions", "acquired"), [c[1:] for c in CLAIMS], ids=[c[0] for c in CLAIMS]
)
def test_the_claimed_spec(previous: LeaseRecord | None, transitions: int, acquired: datetime) -> None:
    now = datetime(2026, 11, 25, 6, 1, tzinfo=UTC)
    spec = taken_by(ME, previous, duration=10, now=now if previous is not None else T0)
    assert (spec.holderIdentity, spec.leaseDurationSeconds, spec.leaseTransitions) == (ME, 10, transitions)
    assert spec.acquireTime == acquired


TIMINGS = [
    ("client-go's defaults", ElectionTiming(15, 10, 2), None),
    ("ours", ElectionTiming(10, 7, 2), None),
    ("renew deadline not below the lease", ElectionTiming(10, 10, 2), "renew deadline < lease duration"),
    ("retry not below the renew deadline", ElectionTiming(10, 7, 7), "retry period < renew deadline"),
    ("a fraction of a second in the lease", ElectionTiming(10.5, 7, 2), "whole seconds"),
]


@pytest.mark.parametrize(("timing", "problem"), [t[1:] for t in TIMINGS], ids=[t[0] for t in TIMINGS])
def test_timing_checks(timing: ElectionTiming, problem: str | None) -> None:
    found = timing.problem()
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_identity_is_the_pod_name_and_a_suffix_new_each_start() -> None:
    first, second = (
        candidate_identity("aliasroll-5f7-x2k", "host"),
        candidate_identity("aliasroll-5f7-x2k", "host"),
    )
    assert first.startswith("aliasroll-5f7-x2k_")
    assert second.startswith("aliasroll-5f7-x2k_")
    assert first != second
    assert candidate_identity(None, "laptop").startswith("laptop_")


CONFIG_ERRORS = [
    ("bad timing", {"ALIASROLL_LEASE_RENEW_DEADLINE": "12"}, "ALIASROLL_LEASE_RENEW_DEADLINE"),
    ("no namespace", {"ALIASROLL_LEASE_NAMESPACE": ""}, "ALIASROLL_LEASE_NAMESPACE"),
]


@pytest.mark.parametrize(("env", "names"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_a_wrong_setting_says_what_to_set(
    env: dict[str, str], names: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("aliasroll.controller.leadership.SERVICE_ACCOUNT_NAMESPACE", "/nonexistent")
    config = OperatorConfig.from_env({"ALIASROLL_LEADER_ELECTION": "true", **env})

    async def nothing() -> None:
        return None

    with pytest.raises(SystemExit, match=names):
        elector_for(config, fence=Fence(), on_leading=nothing, field_manager="aliasroll")


def test_leader_election_is_off_unless_asked_and_a_wrong_flag_is_refused() -> None:
    assert OperatorConfig.from_env({}).leader_election is False
    assert OperatorConfig.from_env({"ALIASROLL_LEADER_ELECTION": "true"}).leader_election is True
    with pytest.raises(SystemExit, match="ALIASROLL_LEADER_ELECTION='maybe' is not true or false"):
        OperatorConfig.from_env({"ALIASROLL_LEADER_ELECTION": "maybe"})
