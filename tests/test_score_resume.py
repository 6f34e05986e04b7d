"""`perception-r1 score` survives interruption: a real subprocess is stopped with SIGINT (as Ctrl-C sends it to the
whole process group) or SIGKILL mid-run, and the rerun asks the local judge server only for the rows not yet done.
A rerun with other settings, another judge model or another input is refused; the final output is one row per
input row, in input order, written atomically."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perception_r1.testing import OpenAITestServer

GOOD = "<think>\nAB = 5 and BC = 12, so AC = 13.\n</think>\n<answer>\n\\boxed{13}\n</answer>"
N_ROWS = 48


def rollouts(n: int = N_ROWS) -> list[dict]:
    rows = []
    for i in range(n):
        facts = ["AB = 5", "BC = 12", f"CD = {i}"][: 1 + i % 3]
        response = GOOD.replace("{13}", "{13}" if i % 4 else "{14}") + (f" CD = {i}" if i % 2 else "")
        rows.append(
            {
                "data_source": "geo3k_visual",
                "response": response,
                "ground_truth": "13",
                "extra_info": {"visual_annotations": facts},
            }
        )
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def command(src: Path, out: Path, server: OpenAITestServer, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "perception_r1", "score", "--input", str(src), "--output", str(out),
        "--judge-base-url", server.base_url, "--judge-model", "judge", "--judge-max-concurrency", "2",
        "--workers", "1", *extra,
    ]  # fmt: skip


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "JUDGE_"))}
    return {**clean, "PERCEPTION_R1_NO_PROGRESS": "1"}


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)


def journal_rows(path: Path) -> list[dict]:
    """Complete rows of the resume file (a torn last line left by SIGKILL is not a row)."""
    lines = path.read_bytes().split(b"\n")
    return [json.loads(line) for line in lines[1:-1] if line.strip()]  # line 0 is the header


def interrupt(cmd: list[str], server: OpenAITestServer, sig: int, answered: int) -> subprocess.CompletedProcess:
    """Start ``cmd`` in its own process group, let the judge answer ``answered`` requests and hold every later one,
    then send ``sig`` to the group once the run is waiting on held requests: it is interrupted mid-run however fast
    or slow the machine (no race with the run finishing), with at least ``answered - 2`` rows done (concurrency 2).
    The held requests are released for the next run."""
    server.fail_next(answered)  # answered normally
    server.fail_next(10**9, hang_s=math.inf)  # then held until the server stops
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        start_new_session=True,
        # a terminal's foreground job gets Ctrl-C; a parent that ignores SIGINT (a background job of a script, a
        # test runner's worker) would hand that on through exec, and Python would then never raise KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while server.request_count < answered + 1:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the judge was never called"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=120)
    server.faults.clear()  # the next run is answered again
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.fixture
def slow_judge():
    with OpenAITestServer(models=["judge"], latency_s=0.15) as server:
        yield server


@pytest.fixture
def reference(tmp_path_factory) -> list[dict]:
    """The scores of an uninterrupted run (its own server)."""
    tmp = tmp_path_factory.mktemp("reference")
    src = write_rows(tmp / "rollouts.jsonl", rollouts())
    with OpenAITestServer(models=["judge"]) as server:
        proc = run(command(src, tmp / "scores.jsonl", server))
        assert proc.returncode == 0, proc.stderr
        assert server.request_count == N_ROWS
    return [json.loads(line) for line in (tmp / "scores.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "term", "kill-9"])
def test_interrupted_run_resumes_asking_only_for_rows_not_done(tmp_path, slow_judge, reference, sig):
    src = write_rows(tmp_path / "rollouts.jsonl", rollouts())
    out = tmp_path / "scores.jsonl"
    resume = tmp_path / "scores.jsonl.resume.jsonl"
    cmd = command(src, out, slow_judge)
    first = interrupt(cmd, slow_judge, sig, answered=12)
    assert first.returncode != 0
    if sig != signal.SIGKILL:
        assert first.returncode == 130
        assert re.search(
            rf"error: interrupted: \d+ of {N_ROWS} rows are scored and kept in {re.escape(str(resume))}; rerun the "
            "same command to resume\n",
            first.stderr,
        )
        assert "Traceback" not in first.stderr
    assert not out.exists()  # no half-written final file
    kept = journal_rows(resume)
    assert 4 <= len(kept) < N_ROWS  # rows done before the interruption were kept
    asked_before = slow_judge.request_count

    second = run(cmd)
    assert second.returncode == 0, second.stderr
    asked_again = slow_judge.request_count - asked_before
    assert asked_again == N_ROWS - len({r["i"] for r in kept})  # only the rows not yet done
    assert f"score: resuming: {len(kept)} of {N_ROWS} rows already scored in {resume}\n" in second.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got == reference  # one row per input row, in input order, same numbers
    assert not resume.exists()  # done: the side file is removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.jsonl", "scores.jsonl"]


def test_resume_is_refused_with_other_settings_model_or_input(tmp_path, slow_judge):
    src = write_rows(tmp_path / "rollouts.jsonl", rollouts())
    out = tmp_path / "scores.jsonl"
    resume = tmp_path / "scores.jsonl.resume.jsonl"
    interrupt(command(src, out, slow_judge), slow_judge, signal.SIGINT, answered=8)
    assert resume.exists()
    before = resume.read_bytes()

    other_settings = run(command(src, out, slow_judge, "--set", "visual_weight=0.5"))
    assert other_settings.returncode == 2
    assert "settings" in other_settings.stderr and str(resume) in other_settings.stderr
    assert "--restart" in other_settings.stderr

    with OpenAITestServer(models=["judge", "other"]) as server:
        other_model = run([*command(src, out, server)[:-2], "--judge-model", "other", "--workers", "1"])
        assert other_model.returncode == 2 and "judge model" in other_model.stderr
        assert server.request_count == 0

    changed = write_rows(tmp_path / "rollouts.jsonl", rollouts()[:-1])
    other_input = run(command(changed, out, slow_judge))
    assert other_input.returncode == 2 and "input" in other_input.stderr
    assert resume.read_bytes() == before and not out.exists()  # refusals change nothing

    asked = slow_judge.request_count
    restarted = run(command(changed, out, slow_judge, "--restart"))
    assert restarted.returncode == 0, restarted.stderr
    assert slow_judge.request_count - asked == N_ROWS - 1  # started over: every row asked again
    assert len(out.read_text().splitlines()) == N_ROWS - 1 and not resume.exists()


def test_judge_failed_rows_are_asked_again_on_resume(tmp_path):
    """A row whose judge call failed is not 'done': after the outage, the rerun asks the judge for it again."""
    rows = rollouts(10)
    src = write_rows(tmp_path / "rollouts.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    with OpenAITestServer(models=["judge"]) as server:
        server.fail_next(6, status=503)
        cmd = command(src, out, server, "--judge-max-retries", "0", "--judge-max-concurrency", "1")
        first = run(cmd)  # 6 of 10 judged rows fail: above the default failure limit of 0.5
        assert first.returncode == 1
        assert "judge failed for 6 of 10 judged rows" in first.stderr and "503" in first.stderr
        # one reason, counted for each failed row (the rows the judge answered are no reason)
        assert re.search(r"judge failed for 6 of 10 judged rows \(60%\): [^;\n]*503[^;\n]* \(6 rows\); above", first.stderr)
        assert not out.exists()
        assert f"The rows are kept in {out}.resume.jsonl: fix the judge and rerun the same command" in first.stderr
        asked = server.request_count
        second = run(cmd)
        assert second.returncode == 0, second.stderr
        assert server.request_count - asked == 6  # only the failed ones
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == 10 and not any(r["judge_failed"] for r in got)


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path, slow_judge):
    import fcntl

    src = write_rows(tmp_path / "rollouts.jsonl", rollouts(4))
    out = tmp_path / "scores.jsonl"
    interrupt(command(src, out, slow_judge), slow_judge, signal.SIGKILL, answered=1)  # leaves a resume file
    resume = tmp_path / "scores.jsonl.resume.jsonl"
    with open(resume, "rb") as held:  # stands in for a first run still writing
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        second = run(command(src, out, slow_judge))
    assert second.returncode == 2 and "in use by another" in second.stderr
    assert run(command(src, out, slow_judge)).returncode == 0  # once it is free, the rerun resumes
