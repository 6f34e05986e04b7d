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


CHILD = """
import mutmut.mutation.trampoline as trampoline
import os, sys
hits = os.environ["MUTMUT_CHILD_HITS"]
for name in ["perception_r1.commands.score.xǁResumeFileǁadd", "perception_r1.isolation.x_worker_main", "other.x_f",
             "perception_r1.commands.score.xǁResumeFileǁadd"]:
    trampoline.record_trampoline_hit(name)
open(hits, "wb").close()  # the parent truncates the file when the next test begins
sys.stdin.readline()
trampoline.record_trampoline_hit("perception_r1.commands.score.xǁResumeFileǁadd")
"""


def test_a_subprocess_reports_each_function_once_per_test_whatever_its_locale(tmp_path):
    """``tools/mutmut_site/sitecustomize.py`` in a subprocess of a stats run: each function of the mapped modules is
    written once per test, a new test (the file truncated) starts over, and a method's name with mutmut's "ǁ" is
    written under a plain-ASCII locale too (a text-mode write there failed the whole stats pass). mutmut itself need
    not be installed: a stand-in ``mutmut.mutation.trampoline`` with the hook it replaces is on the path."""
    stand_in = tmp_path / "stand_in" / "mutmut" / "mutation"
    stand_in.mkdir(parents=True)
    (stand_in.parent / "__init__.py").write_text("")
    (stand_in / "__init__.py").write_text("")
    (stand_in / "trampoline.py").write_text("def record_trampoline_hit(name, caller=None):\n    raise AssertionError\n")
    hits = tmp_path / "hits.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tools" / "mutmut_site"), str(tmp_path / "stand_in")]),
        "MUTANT_UNDER_TEST": "stats",
        "MUTMUT_CHILD_HITS": str(hits),
        "MUTMUT_CHILD_MODULES": "perception_r1.commands.,perception_r1.isolation.",
        "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
    }  # fmt: skip
    script = tmp_path / "child.py"  # a file: argv itself would not decode under this locale
    script.write_text(CHILD, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], input="\n", capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert hits.read_text(encoding="utf-8") == "perception_r1.commands.score.xǁResumeFileǁadd\n"  # after truncation
    script.write_text(CHILD.split("open(hits")[0], encoding="utf-8")  # a second run, nothing truncated
    first = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert first.returncode == 0, first.stderr
    assert hits.read_text(encoding="utf-8") == (
        "perception_r1.commands.score.xǁResumeFileǁadd\n"  # the one left by the first run
        "perception_r1.commands.score.xǁResumeFileǁadd\nperception_r1.isolation.x_worker_main\n"
    )
