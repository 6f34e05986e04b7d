"""A module whose ``warm_worker()`` hook never returns (``tests/test_isolation_behaviour.py``): the pool must give up
on such a worker after its start-up limit instead of waiting for ever."""

import time


def warm_worker() -> None:
    time.sleep(600)


def double(value: int) -> int:
    return 2 * value
