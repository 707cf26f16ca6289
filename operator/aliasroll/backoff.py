"""Exponential backoff, capped and jittered: the one retry schedule of the operator.

The scheduler waits this long after failed passes, the registry poller after failed calls and after a
poll loop that crashed. Jitter shortens a delay by a random fraction (never lengthens it, so the cap
holds): after an outage, hundreds of resources that failed together do not retry in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """`delay(n)` is base * 2^(n-1), at most `cap`, minus up to `jitter` of itself."""

    base: float = 1.0
    cap: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        # A cap below the base is allowed (every delay is the cap): settings are checked one by one.
        if self.base <= 0 or self.cap <= 0:
            raise ValueError(f"backoff needs base and cap above zero (got base={self.base}, cap={self.cap})")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"backoff jitter is a fraction in [0, 1) (got {self.jitter})")

    def delay(self, failures: int, *, random_fraction: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `failures` failures in a row (0 when nothing failed)."""
        if failures <= 0:
            return 0.0
        # min() before the power would overflow: 2.0 ** 1100 raises OverflowError.
        exponent = min(failures - 1, 64)
        full = min(self.cap, self.base * 2.0**exponent)
        return full * (1.0 - self.jitter * random_fraction())
