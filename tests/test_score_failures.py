"""`perception-r1 score` against a judge that refuses, rejects the key or serves another model: the run must not
exit 0 with every judged row failed. Above `--max-judge-failure-rate` (default 0.5) it exits non-zero with the
reason and writes no output; a partial outage below it warns; an empty input warns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perception_r1.testing import OpenAITestServer

GOOD = "<think>\nAB = 5 and BC = 12, so AC = 13.\n</think>\n<answer>\n\\boxed{13}\n</answer>"
JUDGED = {"data_source": "geo3k_visual", "response": GOOD, "ground_truth": "13",
          "extra_info": {"visual_annotations": ["AB = 5", "BC = 12"]}}  # fmt: skip
PLAIN = {"data_source": "geo3k_visual", "response": GOOD, "ground_truth": "13", "extra_info": {}}


def score(
    tmp_path: Path, rows: list[dict], *args: str, key: str | None = None
) -> tuple[subprocess.CompletedProcess, Path]:
    src = tmp_path / "rollouts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "scores.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "JUDGE_"))}
    env["PERCEPTION_R1_NO_PROGRESS"] = "1"
    if key:
        env["VLLM_SERVER_API_KEY"] = key
    proc = subprocess.run(
        [sys.executable, "-m", "perception_r1", "score", "--input", str(src), "--output", str(out), "--workers", "1",
         "--judge-max-retries", "0", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    return proc, out


def judge(server: OpenAITestServer, model: str = "judge") -> list[str]:
    return ["--judge-base-url", server.base_url, "--judge-model", model]


def refusing(request: dict) -> str:
    return "I'm sorry, I can't help with that."


@pytest.mark.parametrize("case", ["refuses", "401", "other-model", "no-judge"])
def test_an_all_failed_judge_run_exits_non_zero_with_the_reason(tmp_path, case):
    rows = [JUDGED] * 4 + [PLAIN]
    with OpenAITestServer(models=["judge"], api_key="right-key") as server:
        if case == "refuses":  # every chat request is refused by the server itself
            server.fail_next(100, status=403)
            proc, out = score(tmp_path, rows, *judge(server), key="right-key")
            reason = "403"
        elif case == "401":
            proc, out = score(tmp_path, rows, *judge(server), key="wrong-key")
            reason = "401"
        elif case == "other-model":
            proc, out = score(tmp_path, rows, *judge(server, "Qwen/Qwen2.5-32B-Instruct"), key="right-key")
            reason = "Qwen/Qwen2.5-32B-Instruct"
        else:
            proc, out = score(tmp_path, rows)
            reason = "no judge is configured"
    assert proc.returncode == 1, proc.stderr
    assert reason in proc.stderr and "Traceback" not in proc.stderr
    assert "--max-judge-failure-rate" in proc.stderr
    assert "right-key" not in proc.stderr and "wrong-key" not in proc.stderr
    assert not out.exists()
    if case != "refuses":  # failed before scoring: nothing at all is left behind
        assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.jsonl"]


def test_the_failure_limit_is_an_option(tmp_path):
    rows = [JUDGED] * 4 + [PLAIN]
    proc, out = score(tmp_path, rows, "--max-judge-failure-rate", "1")  # knowingly score without a judge
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["judge_failed"] for r in got] == [1, 1, 1, 1, 0]
    assert "judge failed for 4 of 4 judged rows" in proc.stderr  # still said loudly
    proc, _ = score(tmp_path, rows, "--max-judge-failure-rate", "1.5")
    assert proc.returncode == 2 and "--max-judge-failure-rate" in proc.stderr


def test_a_partial_outage_below_the_limit_warns_and_writes(tmp_path):
    rows = [JUDGED] * 10
    with OpenAITestServer(models=["judge"]) as server:
        server.fail_next(3, status=503)
        proc, out = score(tmp_path, rows, *judge(server), "--judge-max-concurrency", "1")
    assert proc.returncode == 0, proc.stderr
    assert "judge failed for 3 of 10 judged rows" in proc.stderr and "503" in proc.stderr
    assert sum(json.loads(line)["judge_failed"] for line in out.read_text().splitlines()) == 3


def test_an_empty_input_warns(tmp_path):
    proc, out = score(tmp_path, [])
    assert proc.returncode == 0, proc.stderr
    assert "no rows" in proc.stderr and "WARNING" in proc.stderr
    assert out.read_text() == ""
