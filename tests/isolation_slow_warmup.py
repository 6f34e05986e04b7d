"""A check module with a slow ``warm_worker()`` (3 s), for tests/test_isolation.py: warm-up must not be timed."""

from __future__ import annotations

import time

WARM_UP_S = 3.0


def warm_worker() -> None:
    """Longer than the check limit the test gives: if warm-up counted, the first check would time out."""
    time.sleep(WARM_UP_S)


def double(x: int) -> int:
    return 2 * x
