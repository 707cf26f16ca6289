"""The words every outbound call's failures are said in (aliasroll.outbound), the registry's and the
analysis' alike."""

from __future__ import annotations

import pytest

from aliasroll.outbound import (
    DestinationRefusedError,
    more_than,
    no_answer_within,
    not_called,
    refuse_unless_allowed,
    size,
)


@pytest.mark.parametrize(
    ("count", "said"),
    [
        (4 * 1024 * 1024, "4 MiB"),
        (256 * 1024, "256 KiB"),
        (1536 * 1024, "1536 KiB"),
        (1000, "1000 bytes"),
        (0, "0 bytes"),
    ],
)
def test_a_budget_is_said_in_the_largest_whole_unit(count: int, said: str) -> None:
    assert size(count) == said


def test_the_phrases_complete_a_sentence_that_names_the_endpoint() -> None:
    assert no_answer_within(10.0) == "did not answer within 10 s"
    assert no_answer_within(1.5) == "did not answer within 1.5 s"
    assert more_than(2 * 1024 * 1024) == "answered more than 2 MiB"
    assert not_called("127.0.0.1 is a loopback address") == "is not called: 127.0.0.1 is a loopback address"


class Refusing:
    def check_connection(self, host: str, addresses: object) -> str | None:
        return f"{host} is refused" if host == "evil" else None


def test_a_connection_the_check_refuses_raises_with_its_reason() -> None:
    with pytest.raises(DestinationRefusedError) as raised:
        refuse_unless_allowed(Refusing(), "evil", ["10.0.0.1"])
    assert raised.value.reason == "evil is refused"
    refuse_unless_allowed(Refusing(), "good", ["10.0.0.1"])
    refuse_unless_allowed(None, "evil", ["10.0.0.1"])  # no list: tests and tools
