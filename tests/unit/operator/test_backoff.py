"""The one retry schedule: exponential from `base`, capped, shortened (never lengthened) by jitter."""

from __future__ import annotations

import pytest

from aliasroll.backoff import Backoff

CASES = {
    "nothing failed": (Backoff(base=1, cap=60, jitter=0), 0, 0.0),
    "first failure waits base": (Backoff(base=1, cap=60, jitter=0), 1, 1.0),
    "doubles": (Backoff(base=1, cap=60, jitter=0), 4, 8.0),
    "capped": (Backoff(base=1, cap=60, jitter=0), 7, 60.0),
    "a very long outage stays capped (no overflow)": (Backoff(base=1, cap=60, jitter=0), 5000, 60.0),
    "base below one second": (Backoff(base=0.05, cap=1, jitter=0), 2, 0.1),
    "a cap below the base: always the cap": (Backoff(base=1, cap=0.5, jitter=0), 1, 0.5),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_delay(case: tuple[Backoff, int, float]) -> None:
    backoff, failures, expected = case
    assert backoff.delay(failures) == pytest.approx(expected)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.999])
def test_jitter_only_shortens_so_the_cap_holds(fraction: float) -> None:
    backoff = Backoff(base=1, cap=10, jitter=0.2)
    delay = backoff.delay(20, random_fraction=lambda: fraction)
    assert 8.0 <= delay <= 10.0
    assert delay == pytest.approx(10 * (1 - 0.2 * fraction))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": 0}, "base and cap above zero"),
        ({"cap": -1}, "base and cap above zero"),
        ({"jitter": 1.0}, "jitter is a fraction"),
    ],
)
def test_nonsense_settings_say_what_is_wrong(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)
