"""Promises of the hard-timeout pool that mutation testing found unguarded: a task's stray prints never corrupt
the frame stream, large results cross the pipe whole, a fresh worker runs its module's ``warm_worker()`` hook, a
cancelled task is skipped, an unpicklable task fails alone, the default worker count, and a closed pool.

Tasks are module-level functions of this file: the worker processes import it (``PYTHONPATH`` below)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_state import has_ended

from perception_r1 import isolation
from perception_r1.isolation import TIMED_OUT, HardTimeoutPool

WARMED = False
WARM_CALLS = 0


def warm_worker() -> None:
    """Called once in a fresh worker before its first task from this module."""
    global WARMED, WARM_CALLS
    WARMED = True
    WARM_CALLS += 1


def was_warmed() -> bool:
    return WARMED


def warm_calls() -> int:
    return WARM_CALLS


def noisy(value: int) -> int:
    print("a stray print from a task", value)  # must not reach the frame stream
    return value * 2


def big(size: int) -> str:
    return "x" * size


def fail(message: str) -> None:
    raise ValueError(message)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    p = HardTimeoutPool(workers=1)
    yield p
    p.close()


def test_stray_prints_and_large_results_cross_the_pipe_whole(pool, capfd):
    assert pool.submit(noisy, (21,), timeout_s=120).result(300) == 42
    assert "a stray print from a task 21" in capfd.readouterr().err  # kept, on the worker's stderr
    size = 5 * (1 << 20) + 7  # larger than one read chunk (1 MiB) and one pipe buffer
    assert pool.submit(big, (size,), timeout_s=120).result(300) == "x" * size
    assert pool.submit(noisy, (1,), timeout_s=120).result(300) == 2  # the stream is still in step


def test_a_fresh_worker_runs_the_modules_warm_hook(pool):
    assert pool.submit(was_warmed, (), timeout_s=120).result(300) is True
    assert pool.submit(warm_calls, (), timeout_s=120).result(300) == 1  # once per worker, not per task


def test_a_callable_without_a_module_runs_unwarmed(pool):
    add = (4.0).__add__  # a method-wrapper: picklable, no __module__
    assert not hasattr(add, "__module__")
    assert pool.submit(add, (1.0,), timeout_s=120).result(300) == 5.0


def test_prewarm_warms_the_module_in_the_background(pool):
    pool.prewarm(__name__)
    [slot] = pool._slots
    for _ in range(30000):
        if __name__ in slot.warmed:
            break
        time.sleep(0.01)
    assert slot.warmed == {__name__} and pool.submit(was_warmed, (), timeout_s=120).result(300) is True


def test_a_task_error_names_its_type_and_the_worker_survives(pool):
    future = pool.submit(fail, ("bad input",), timeout_s=120)
    with pytest.raises(RuntimeError, match=r"^ValueError: bad input$"):
        future.result(300)
    process = pool._slots[0].process
    assert pool.submit(noisy, (2,), timeout_s=120).result(300) == 4 and pool._slots[0].process is process


def test_a_cancelled_task_is_skipped(pool):
    blocker = pool.submit(nap, (1.0,), timeout_s=120)
    cancelled = pool.submit(noisy, (3,), timeout_s=120)
    assert cancelled.cancel()
    after = pool.submit(noisy, (4,), timeout_s=120)
    assert blocker.result(300) == 1.0 and after.result(300) == 8 and cancelled.cancelled()


def test_an_unpicklable_task_fails_alone(pool):
    future = pool.submit(lambda: 1, (), timeout_s=120)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        future.result(300)
    assert pool.submit(noisy, (5,), timeout_s=120).result(300) == 10


def test_a_timed_out_worker_is_replaced_and_warmed_again(pool):
    assert pool.submit(noisy, (1,), timeout_s=120).result(300) == 2
    killed = pool._slots[0].process
    assert pool.submit(nap, (600,), timeout_s=0.5).result(300) is TIMED_OUT
    assert killed.poll() is not None and killed.stdin.closed and killed.stdout.closed  # no pipe left open
    assert pool.timeouts == 1 and not pool._slots[0].warmed  # the killed worker's warm state is gone
    assert pool.submit(was_warmed, (), timeout_s=120).result(300) is True
    assert pool.submit(nap, (600,), timeout_s=0.5).result(300) is TIMED_OUT
    assert pool.timeouts == 2  # every kill is counted


def test_a_worker_that_never_finishes_warming_up_fails_its_task_after_the_start_up_limit(pool, monkeypatch):
    import isolation_hanging_warmup as hanging

    monkeypatch.setattr(isolation, "STARTUP_TIMEOUT_S", 1.0)
    with pytest.raises(RuntimeError, match=r"^isolated worker died: worker did not start within 1 s$"):
        pool.submit(hanging.double, (2,), timeout_s=120).result(300)
    monkeypatch.setattr(isolation, "STARTUP_TIMEOUT_S", 300.0)  # a loaded machine may need more than 1 s to start
    assert pool.submit(noisy, (3,), timeout_s=120).result(300) == 6  # a fresh worker serves the next task


def test_close_kills_a_worker_still_busy_after_the_grace_period_and_fails_its_task(pool, monkeypatch):
    monkeypatch.setattr(isolation, "CLOSE_GRACE_S", 0.5)
    busy = pool.submit(nap, (600,), timeout_s=600)
    [slot] = pool._slots
    for _ in range(30000):
        if busy.running() and slot.process is not None:
            break
        time.sleep(0.01)
    process = slot.process
    pool.close()  # does not wait out the task's 600 s
    slot.thread.join(60)  # the 0.5 s grace may be short for the thread's last steps on a loaded machine
    assert process.wait(timeout=60) is not None and not slot.thread.is_alive()
    with pytest.raises(RuntimeError, match="worker died"):
        busy.result(60)


def test_default_worker_count_is_the_cpus_at_most_eight(monkeypatch):
    for cpus, expected in ((3, 3), (32, 8), (None, 1)):
        monkeypatch.setattr(isolation.os, "cpu_count", lambda cpus=cpus: cpus)
        p = HardTimeoutPool()
        try:
            assert p.workers == expected and len(p._slots) == expected
        finally:
            p.close()
    p = HardTimeoutPool(workers=0)  # at least one
    try:
        assert p.workers == 1
    finally:
        p.close()


def test_a_closed_pool_refuses_work_and_stops_its_workers(pool):
    assert pool.submit(noisy, (1,), timeout_s=120).result(300) == 2
    [slot] = pool._slots
    process = slot.process
    pool.close()
    assert process.poll() is not None and slot.process is None and not slot.thread.is_alive()
    with pytest.raises(RuntimeError, match="^pool is closed$"):
        pool.submit(noisy, (1,), timeout_s=1)
    pool.prewarm(__name__)
    assert pool.tasks.empty()  # nothing queued on a closed pool
    pool.close()  # idempotent


def test_frames_round_trip_through_a_pipe():
    read_fd, write_fd = os.pipe()
    try:
        isolation._write_frame(write_fd, {"a": [1, 2, 3]})
        os.close(write_fd)  # a reader that wants more than the frame then sees the end, not a wait
        write_fd = -1
        assert isolation._read_frame(read_fd) == {"a": [1, 2, 3]}
        with pytest.raises(EOFError, match="^worker pipe closed$"):
            isolation._read_frame(read_fd)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_a_program_that_never_closes_its_pool_still_exits_and_its_workers_go_with_it(tmp_path):
    program = (
        "import math\n"
        "from perception_r1.isolation import HardTimeoutPool\n"
        "pool = HardTimeoutPool(workers=2)\n"
        "print(pool.submit(math.sqrt, (4.0,), timeout_s=60).result(120))\n"
        "print(*(slot.process.pid for slot in pool._slots if slot.process is not None))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result, pids = done.stdout.splitlines()
    assert result == "2.0"
    for pid in map(int, pids.split()):
        for _ in range(6000):  # the worker is killed by the exit hook; give the kernel a moment to reap it
            if has_ended(pid):
                break
            time.sleep(0.01)
        assert has_ended(pid)
