"""pytest plugin loaded only by ``make mutation`` (mutmut; see docs/mutation.md), never by the normal test run.

mutmut copies the package into ``mutants/`` and runs pytest there. Many tests start ``python -m perception_r1 ...``
subprocesses (the ``score`` CLI, the math-verify isolation workers), so this plugin:

- points ``PYTHONPATH`` at ``mutants/`` so a subprocess started from any directory imports the mutated package (the
  editable install would otherwise give it the original code), and at ``tools/mutmut_site`` whose
  ``sitecustomize`` reports which functions a subprocess ran while mutmut maps tests to functions ("stats");
- feeds those subprocess hits into mutmut's per-test map, so a function only a subprocess runs is tested (not
  "no tests"). Only functions of ``MUTMUT_CHILD_MODULES`` (default: the ``score`` command, the isolation
  pool and the math-verify check it runs, which run mostly in subprocesses) are taken from subprocesses: every other module has in-process tests,
  and mapping the slow CLI tests to it too would multiply the run time;
- runs each mutant's tests cheapest first (durations from mutmut's stats), so ``-x`` stops at the first cheap
  failure instead of after the slow subprocess tests;
- gives each test's call in a mutant run a wall limit of ``4 x`` its stats duration ``+ 15 s`` (mutmut's own
  multiplier, applied per test; fixture setup, which mutmut does not time, is not limited): a mutant that makes one test wait (a pipe never written, a worker that never answers) then
  ends as mutmut's "timeout" (exit 36, counted as caught, as mutmut counts its own) within seconds of that test's
  budget, instead of after mutmut's limit for the sum of all its tests (minutes);
- sets ``PERCEPTION_R1_SHARED_DATA`` to the checkout's ``../shared/data`` (seen from ``mutants/`` the relative path
  would be one level off).

The active mutant reaches subprocesses through mutmut's own ``MUTANT_UNDER_TEST`` environment variable.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

_HERE = Path.cwd().resolve()
ACTIVE = _HERE.name == "mutants"
HITS = _HERE / ".child-hits.txt"

if ACTIVE:
    _site = _HERE / "tools" / "mutmut_site"
    _old = os.environ.get("PYTHONPATH", "")
    if not _old.startswith(f"{_HERE}{os.pathsep}"):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_HERE), str(_site), _old) if p)
    os.environ.setdefault("PERCEPTION_R1_SHARED_DATA", str(_HERE.parent.parent / "shared" / "data"))
    os.environ["MUTMUT_CHILD_HITS"] = str(HITS)
    os.environ.setdefault("MUTMUT_CHILD_MODULES", "perception_r1.commands.,perception_r1.isolation.,perception_r1.rewards.math_answer.")


def _stats_mode() -> bool:
    return ACTIVE and os.environ.get("MUTANT_UNDER_TEST") == "stats"


def _mutant_mode() -> bool:
    """A mutant's test run (not the stats, forced-fail or listing passes)."""
    return ACTIVE and os.environ.get("MUTANT_UNDER_TEST", "") not in ("", "stats", "fail", "list_all_tests")


TIMEOUT_EXIT_CODE = 36  # mutmut's "timeout"
TIMEOUTS_LOG = "timeouts-by-test.txt"  # in mutants/: which test of which mutant ran past its limit
TEST_LIMIT_MULTIPLIER = 4.0  # as [tool.mutmut] timeout_multiplier
# start-up jitter of a loaded 2-core machine (subprocess imports, worker warm-up); the hook's own test lowers it
TEST_LIMIT_CONSTANT_S = float(os.environ.get("MUTMUT_HOOKS_TEST_SLACK_S", "15"))


def call_limit_s(duration_s: float | None) -> float:
    """Wall limit of one test in a mutant run, from its stats duration (unknown: 120 s of stats time)."""
    return TEST_LIMIT_MULTIPLIER * (120.0 if duration_s is None else duration_s) + TEST_LIMIT_CONSTANT_S


@functools.cache
def _durations() -> dict[str, float]:
    """Each test's duration in mutmut's stats pass (empty when there is none yet)."""
    import json

    try:
        return json.loads((_HERE / "mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return {}


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux ``/proc``; elsewhere none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _expire(nodeid: str, limit: float) -> None:
    import signal

    with open(_HERE / TIMEOUTS_LOG, "a", encoding="utf-8") as log:  # pytest holds stderr; the run's exit code is all mutmut keeps
        log.write(f"{os.environ.get('MUTANT_UNDER_TEST')}: {nodeid} ran past its {limit:.0f} s limit\n")
    for pid in _descendants(os.getpid()):  # the test's subprocesses (score CLI, isolation workers) go with it
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(TIMEOUT_EXIT_CODE)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """In a mutant run, end the whole run as a timeout when one test's call (what mutmut's stats time; not its
    fixtures' setup) overruns its limit."""
    if not _mutant_mode():
        yield
        return
    import threading

    limit = call_limit_s(_durations().get(item.nodeid))
    timer = threading.Timer(limit, _expire, args=(item.nodeid, limit))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _stats_mode():
        HITS.write_text("")  # truncation tells long-lived subprocesses that a new test began


def _merge_child_hits() -> None:
    if not _stats_mode() or not HITS.exists():
        return
    from mutmut.state import state

    prefixes = tuple(p for p in os.environ.get("MUTMUT_CHILD_MODULES", "").split(",") if p)
    names = {line.strip() for line in HITS.read_text(encoding="utf-8").splitlines() if line.strip().startswith(prefixes)}
    state()._stats.update(names)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    _merge_child_hits()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Cheapest test files first, and the cheapest tests first within each file (file order is kept together so
    module-scoped fixtures are set up once)."""
    if not _mutant_mode():
        return
    durations = _durations()
    if not durations:
        return
    cost = {item.nodeid: durations.get(item.nodeid, 1e9) for item in items}
    by_file: dict[str, float] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        by_file[path] = min(by_file.get(path, 1e9), cost[item.nodeid])
    items.sort(key=lambda item: (by_file[item.nodeid.split("::")[0]], item.nodeid.split("::")[0], cost[item.nodeid]))
