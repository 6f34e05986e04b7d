"""The test suite's own promises: a missing dependency fails (never a green skip), and ``-m slow`` splits the suite.

CI runs everything (``make unit``); ``make fast`` is the quick loop (``-m "not slow"``: no Ray, no verl trainer).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY_OR_TRAINER = (
    "test_train_cpu.py",
    "test_train_cpu_judge.py",
    "test_verl_reward_manager.py",
    "test_verl_perception.py",
    "test_preflight_nodes.py",
)


def _pytest(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_an_importorskip_for_a_missing_module_fails_the_run(tmp_path: Path) -> None:
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_module_level.py").write_text(
        'import pytest\npytest.importorskip("no_such_module_7f3a")\n\ndef test_a():\n    pass\n'
    )
    (tmp_path / "test_in_a_test.py").write_text(
        'import pytest\n\ndef test_b():\n    pytest.importorskip("no_such_module_7f3a")\n\ndef test_c():\n    pass\n'
    )
    proc = _pytest("-rA", str(tmp_path), cwd=tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "no_such_module_7f3a" in proc.stdout
    assert "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-500:]


def test_slow_marker_selects_exactly_the_ray_and_trainer_tests() -> None:
    files = [f"tests/{name}" for name in (*RAY_OR_TRAINER, "test_cpu_backend.py", "test_rewards_geo3k.py")]
    slow = _pytest("--collect-only", "-m", "slow", *files)
    fast = _pytest("--collect-only", "-m", "not slow", *files)
    assert slow.returncode == 0 and fast.returncode == 0, (slow.stdout[-2000:], fast.stdout[-2000:])
    slow_files = {line.split("::")[0].rsplit("/", 1)[-1] for line in slow.stdout.splitlines() if "::" in line}
    fast_files = {line.split("::")[0].rsplit("/", 1)[-1] for line in fast.stdout.splitlines() if "::" in line}
    assert set(RAY_OR_TRAINER) <= slow_files, slow_files
    assert not set(RAY_OR_TRAINER) & fast_files, fast_files
    assert "test_cpu_backend.py" in slow_files and "test_cpu_backend.py" in fast_files  # one Ray test, many unit
    assert "test_rewards_geo3k.py" in fast_files and "test_rewards_geo3k.py" not in slow_files
