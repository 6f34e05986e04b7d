"""HardTimeoutPool and the engine's isolated checks: a stuck check is killed alone; other results are untouched."""

from __future__ import annotations

import asyncio
import math
import operator
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from perception_r1.isolation import TIMED_OUT, HardTimeoutPool
from perception_r1.rewards import registry
from perception_r1.rewards.geo3k_visual import Geo3kVisualSettings
from perception_r1.rewards.math_answer import accuracy_from_key
from perception_r1.rewards.registry import IsolatedCheck, Task
from perception_r1.scoring import RewardScorer, ScoreRow


@pytest.fixture
def pool():
    p = HardTimeoutPool(workers=2)
    yield p
    p.close()


@pytest.fixture
def workers_import_tests(monkeypatch):
    """Worker processes unpickle functions of this file by module name: let them import it."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))


def test_results_errors_and_order(pool):
    futures = [pool.submit(math.sqrt, (float(i * i),), timeout_s=60) for i in range(20)]
    assert [f.result(60) for f in futures] == [float(i) for i in range(20)]
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        pool.submit(operator.truediv, (1, 0), timeout_s=60).result(60)
    assert pool.submit(math.sqrt, (4.0,), timeout_s=60).result(60) == 2.0  # an error does not kill the worker


def test_stuck_task_is_killed_alone_and_the_pool_recovers(pool):
    stuck = pool.submit(time.sleep, (600,), timeout_s=1.0)
    others = [pool.submit(math.sqrt, (float(i),), timeout_s=60) for i in range(50)]
    assert stuck.result(60) is TIMED_OUT
    assert [f.result(60) for f in others] == [math.sqrt(i) for i in range(50)]
    assert pool.timeouts == 1
    # both workers still serve, including the replaced one
    assert [pool.submit(math.sqrt, (9.0,), timeout_s=60).result(60) for _ in range(4)] == [3.0] * 4


def test_single_worker_is_not_hung_by_a_stuck_task():
    single = HardTimeoutPool(workers=1)
    try:
        stuck = single.submit(time.sleep, (600,), timeout_s=0.5)
        after = single.submit(math.sqrt, (16.0,), timeout_s=60)
        assert stuck.result(60) is TIMED_OUT and after.result(60) == 4.0
    finally:
        single.close()


def math_verify_state() -> tuple[bool, int]:
    """In the worker: whether math-verify is imported and how many parser configurations are built."""
    import sys

    from perception_r1.rewards import math_answer

    return "math_verify" in sys.modules, math_answer._configs.cache_info().currsize


@pytest.mark.parametrize("warm", [False, True])
def test_the_math_check_warm_up_imports_math_verify_and_builds_its_parsers(warm, workers_import_tests):
    """``warm_worker`` moves math-verify's import and parser setup (seconds of sympy) out of the first timed check."""
    single = HardTimeoutPool(workers=1)
    try:
        if warm:
            single.prewarm("perception_r1.rewards.math_answer")
        assert single.submit(math_verify_state, (), timeout_s=60).result(120) == ((True, 1) if warm else (False, 0))
    finally:
        single.close()


def test_crashed_worker_is_reported_and_replaced(pool):
    with pytest.raises(RuntimeError, match="worker died"):
        pool.submit(os._exit, (3,), timeout_s=60).result(60)
    assert pool.submit(math.sqrt, (25.0,), timeout_s=60).result(60) == 5.0


def test_close_is_idempotent_and_final():
    p = HardTimeoutPool(workers=1)
    assert p.submit(math.sqrt, (1.0,), timeout_s=60).result(60) == 1.0
    p.close()
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.submit(math.sqrt, (1.0,), timeout_s=60)


def test_worker_startup_and_warmup_are_not_timed(workers_import_tests):
    # A fresh worker imports its check's module and runs its warm_worker() hook (math-verify: sympy, about a
    # second) before the first check. That must not count against the check's limit, or the first check after
    # every kill would time out on a loaded machine. The module here warms up for 3 s against a 2 s limit.
    import isolation_slow_warmup as slow

    assert slow.WARM_UP_S > 2.0
    p = HardTimeoutPool(workers=1)
    try:
        assert p.submit(slow.double, (2,), timeout_s=2.0).result(120) == 4
        assert p.submit(time.sleep, (600,), timeout_s=0.5).result(120) is TIMED_OUT  # the worker is killed...
        # ...and its replacement warms the module up again, untimed
        assert p.submit(slow.double, (3,), timeout_s=2.0).result(120) == 6
        assert p.timeouts == 1
        # the real math-verify check runs in a warmed worker too (a generous limit: this is not a speed test)
        settings = Geo3kVisualSettings()
        assert p.submit(accuracy_from_key, (("12", "12.0", "boxed"), settings), timeout_s=60).result(120) == 1.0
    finally:
        p.close()


# ------------------------------------------------------------- the engine with an injected slow check

SLOW_SOURCE = "test_isolation_slow_check"


@dataclass(frozen=True)
class SlowSettings:
    slow_check_limit_s: float = 3.0  # the quick checks finish in milliseconds: margin for a loaded machine


def slow_check(key: str, settings: SlowSettings) -> float:
    """Sleeps forever on "hang", otherwise scores 1 for "good" (runs in the worker process)."""
    if key == "hang":
        time.sleep(600)
    return 1.0 if key == "good" else 0.0


SLOW_TASK = Task(
    data_source=SLOW_SOURCE,
    settings=SlowSettings,
    validate=lambda gt, extra: None,
    rule_components=lambda response, gt, extra, s: {"length": float(len(response))},
    combine=lambda c, s: (c.get("check") or 0.0) + 0.001 * (c.get("length") or 0.0),
    output_keys=("check", "length"),
    isolated=IsolatedCheck(
        component="check",
        key=lambda response, gt, s: response.split()[0] if response.strip() else None,
        fn=slow_check,
        timeout_s=lambda s: s.slow_check_limit_s,
        default=0.0,
    ),
)


@pytest.fixture
def slow_task(workers_import_tests):
    registry.registered_tasks()  # load the built-ins first
    registry.register_task(SLOW_TASK)
    yield SLOW_TASK
    registry._TASKS.pop(SLOW_SOURCE, None)


def test_slow_check_neither_hangs_the_engine_nor_changes_other_scores(slow_task):
    responses = ["good a", "hang b", "bad c", "good d", "hang e", "good f", "", "bad g"]
    rows = [ScoreRow(SLOW_SOURCE, r, "gt", {}) for r in responses]
    scorer = RewardScorer(workers=2)

    async def go():
        return await scorer.score_many(rows)

    try:
        results = asyncio.run(go())
        assert [r.values["check"] for r in results] == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
        assert [r.isolated_timed_out for r in results] == [False, True, False, False, True, False, False, False]
        assert [r.values["score"] for r in results] == pytest.approx(
            [c + 0.001 * len(r) for c, r in zip([1, 0, 0, 1, 0, 1, 0, 0], responses, strict=True)]
        )
        # the two "hang" rows shared one memoized (timed-out) evaluation; the engine keeps going afterwards
        assert scorer.isolated_timeouts == 2 and scorer.pool.timeouts == 1
        again = asyncio.run(go())
        assert [r.values["check"] for r in again] == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    finally:
        scorer.close()
