"""``tools/mutmut_hooks.py`` (loaded only by ``make mutation``): a test that waits past its limit in a mutant run ends
the run as mutmut's "timeout" and takes its subprocesses with it; the same test in a normal run is left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from process_state import has_ended

REPO = Path(__file__).resolve().parent.parent

WAITING_TEST = """
import os, subprocess, sys, time

def test_quick():
    assert True

def test_waits():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["CHILD_PID_FILE"], "w") as handle:
        handle.write(str(child.pid))
    time.sleep(600)
"""


@pytest.fixture
def mutants(tmp_path: Path) -> Path:
    """A ``mutants/`` directory as mutmut leaves it: a test file and the stats pass's durations."""
    root = tmp_path / "mutants"
    root.mkdir()
    (root / "test_wait.py").write_text(WAITING_TEST)
    durations = {"test_wait.py::test_quick": 0.01, "test_wait.py::test_waits": 0.5}
    (root / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": durations}))
    return root


def pytest_command(root: Path, mutant: str, *selection: str) -> dict:
    """``subprocess`` arguments for pytest in ``root`` with the hooks, as mutmut runs it for ``mutant``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MUTANT_UNDER_TEST": mutant, "MUTMUT_HOOKS_TEST_SLACK_S": "2",
           "CHILD_PID_FILE": str(root.parent / "child.pid")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tools.mutmut_hooks", "-p", "no:cacheprovider", *selection]
    return {"args": command, "cwd": root, "env": env}


def run_pytest(root: Path, mutant: str, *selection: str) -> subprocess.CompletedProcess:
    return subprocess.run(**pytest_command(root, mutant, *selection), capture_output=True, text=True, timeout=120)


def test_a_test_past_its_limit_ends_the_mutant_run_as_a_timeout_with_its_subprocesses(mutants):
    done = run_pytest(mutants, "pkg.mod.x_f__mutmut_1")
    assert done.returncode == 36, done.stdout + done.stderr  # mutmut's "timeout" (caught)
    log = (mutants / "timeouts-by-test.txt").read_text()
    assert log == "pkg.mod.x_f__mutmut_1: test_wait.py::test_waits ran past its 4 s limit\n"  # 4 x 0.5 s + 2 s
    assert has_ended(int((mutants.parent / "child.pid").read_text()))  # the test's subprocess was killed


def test_tests_within_their_limit_and_runs_outside_a_mutant_are_left_alone(mutants):
    assert run_pytest(mutants, "pkg.mod.x_f__mutmut_1", "test_wait.py::test_quick").returncode == 0
    # outside a mutant run (the stats pass that times the tests, a plain run) nothing is cut short
    plain = subprocess.Popen(**pytest_command(mutants, "", "test_wait.py"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            plain.wait(timeout=12)  # well past the 4 s limit: still running
    finally:
        plain.kill()
        plain.wait()
        os.kill(int((mutants.parent / "child.pid").read_text()), signal.SIGKILL)


def test_the_limit_is_four_times_the_stats_duration_plus_slack():
    sys.path.insert(0, str(REPO))
    try:
        from tools import mutmut_hooks
    finally:
        sys.path.remove(str(REPO))
    slack = mutmut_hooks.TEST_LIMIT_CONSTANT_S
    assert mutmut_hooks.call_limit_s(2.0) == 8.0 + slack
    assert mutmut_hooks.call_limit_s(None) == 480.0 + slack  # a test the stats pass did not time
