"""What the registry client's calls hold of their answers at once (registry/transport.py InFlight):
two answers' worth per registry host, and a whole for every host together."""

from __future__ import annotations

import pytest

from aliasroll.registry.transport import InFlight, OperatorBusy


def test_a_host_holds_at_most_its_budget_whatever_its_calls() -> None:
    budget = InFlight(per_host=100, total=1000)
    budget.take("a:5000", 60)
    budget.take("a:5000", 40)
    with pytest.raises(OperatorBusy):
        budget.take("a:5000", 1)
    budget.take("b:5000", 100)  # another registry is not held back by the first
    assert budget.held == 200
    budget.give_back("a:5000", 60)
    budget.take("a:5000", 60)


def test_all_hosts_together_hold_at_most_the_whole() -> None:
    budget = InFlight(per_host=100, total=250)
    budget.take("a", 100)
    budget.take("b", 100)
    with pytest.raises(OperatorBusy):
        budget.take("c", 51)
    budget.take("c", 50)
    for host, size in (("a", 100), ("b", 100), ("c", 50)):
        budget.give_back(host, size)
    assert budget.held == 0
