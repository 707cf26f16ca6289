"""The real nodes' ledger of the machine-wide settings kubelet rewrites: the machine's own values
come back when the last node stops, whatever order overlapping nodes start and stop in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from localkube import sysctls
from localkube.sysctls import Ledger

MACHINE = {"kernel/panic": "0"}
KUBELET = {"kernel/panic": "10"}


@dataclass(frozen=True)
class HoldCase:
    ledger: Ledger | None
    alive: frozenset[str]
    current: dict[str, str]
    expected: Ledger


HOLD_CASES = {
    "the first node keeps today's values": HoldCase(None, frozenset(), MACHINE, Ledger(MACHINE, ("a",))),
    "a second node keeps the first one's, not kubelet's": HoldCase(
        Ledger(MACHINE, ("a",)), frozenset({"a"}), KUBELET, Ledger(MACHINE, ("a", "b"))
    ),
    "a node that died without stopping holds nothing": HoldCase(
        Ledger(KUBELET, ("dead",)), frozenset(), MACHINE, Ledger(MACHINE, ("b",))
    ),
}


@pytest.mark.parametrize("case", HOLD_CASES.values(), ids=HOLD_CASES.keys())
def test_hold(case: HoldCase) -> None:
    node = case.expected.holders[-1]
    assert (
        sysctls.hold(case.ledger, node, current=case.current, alive=case.alive.__contains__) == case.expected
    )


@dataclass(frozen=True)
class ReleaseCase:
    ledger: Ledger | None
    alive: frozenset[str]
    kept: Ledger | None
    written: dict[str, str] | None


RELEASE_CASES = {
    "the last node writes the machine's values back": ReleaseCase(
        Ledger(MACHINE, ("a",)), frozenset({"a"}), None, MACHINE
    ),
    "a node with others still running writes nothing": ReleaseCase(
        Ledger(MACHINE, ("a", "b")), frozenset({"a", "b"}), Ledger(MACHINE, ("b",)), {}
    ),
    "the first node to start may stop last": ReleaseCase(
        Ledger(MACHINE, ("b", "a")), frozenset({"a"}), None, MACHINE
    ),
    "a dead holder does not keep the values away": ReleaseCase(
        Ledger(MACHINE, ("a", "dead")), frozenset({"a"}), None, MACHINE
    ),
    "a node that never held the ledger": ReleaseCase(
        Ledger(MACHINE, ("b",)), frozenset({"a", "b"}), Ledger(MACHINE, ("b",)), None
    ),
    "no ledger at all": ReleaseCase(None, frozenset({"a"}), None, None),
}


@pytest.mark.parametrize("case", RELEASE_CASES.values(), ids=RELEASE_CASES.keys())
def test_release(case: ReleaseCase) -> None:
    assert sysctls.release(case.ledger, "a", alive=case.alive.__contains__) == (case.kept, case.written)


def test_overlapping_nodes_leave_the_machine_as_they_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = tmp_path / "proc"
    (proc / "kernel").mkdir(parents=True)
    (proc / "kernel" / "panic").write_text("0\n")
    monkeypatch.setattr(sysctls, "PROC_SYS", proc)
    ledger = tmp_path / "ledger.json"
    running = {"a", "b"}

    sysctls.hold_machine("a", alive=running.__contains__, path=ledger)
    (proc / "kernel" / "panic").write_text("10\n")  # a's kubelet
    sysctls.hold_machine("b", alive=running.__contains__, path=ledger)
    # a stops first: b still runs, so nothing is written back yet.
    assert sysctls.release_machine("a", alive=running.__contains__, path=ledger)
    running.discard("a")
    assert (proc / "kernel" / "panic").read_text() == "10\n"
    assert sysctls.release_machine("b", alive=running.__contains__, path=ledger)
    assert (proc / "kernel" / "panic").read_text() == "0\n"
    assert not ledger.exists()
    assert not sysctls.release_machine("b", alive=running.__contains__, path=ledger), "handed back once"
