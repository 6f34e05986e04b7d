"""``perception-r1 score`` as a user runs it: a real process, real files, the real local judge server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from perception_r1.judge.client import JudgeClient, JudgeSettings
from perception_r1.scoring import RewardScorer, ScoreRow

KEYS = ["score", "format", "accuracy", "visual", "ngram_penalty", "judge_failed", "judge_truncated"]
KEY = "test-secret-key"  # the conftest judge_server's key
GOOD = "<think>\nAB = 5 and BC = 12, so AC = 13.\n</think>\n<answer>\n\\boxed{13}\n</answer>"
ROWS = [
    {
        "data_source": "geo3k_visual",
        "response": GOOD,
        "ground_truth": "13",
        "extra_info": {"visual_annotations": ["AB = 5", "BC = 12", "AB ⊥ BC"]},
    },
    {"data_source": "geo3k_visual", "response": GOOD.replace("{13}", "{14}"), "ground_truth": "13", "extra_info": {}},
    {"data_source": "geo3k_visual", "response": "", "ground_truth": "13", "extra_info": {"visual_annotations": ["x"]}},
    {"data_source": "geo3k_visual", "response": "so so " * 400, "ground_truth": "5 \\sqrt { 3 }"},
]


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def score(tmp_path: Path, rows: list, *args: str, progress: bool = False, env: dict | None = None):
    src = write_rows(tmp_path / "rollouts.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "JUDGE_"))}
    full_env["PERCEPTION_R1_NO_PROGRESS"] = "0" if progress else "1"
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "perception_r1", "score", "--input", str(src), "--output", str(out), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )
    return proc, out


def read(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def judge_args(server) -> list[str]:
    return ["--judge-base-url", server.base_url, "--judge-model", "judge", "--judge-max-concurrency", "4"]


def test_contract_keys_order_and_values(tmp_path, judge_server):
    proc, out = score(tmp_path, ROWS, *judge_args(judge_server), env={"VLLM_SERVER_API_KEY": KEY}, progress=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # data goes to the file, progress and logs to stderr
    assert "scoring: 100%" in proc.stderr and "| 4/4 [" in proc.stderr  # the tqdm bar
    got = read(out)
    assert [list(r) for r in got] == [KEYS] * len(ROWS)
    assert got[0] == {
        "score": pytest.approx(0.1 + 0.9 + 0.7 * 2 / 3),
        "format": 1.0,
        "accuracy": 1.0,
        "visual": pytest.approx(2 / 3),
        "ngram_penalty": 0.0,
        "judge_failed": 0,
        "judge_truncated": 0,
    }
    assert got[1]["visual"] is None and got[1]["accuracy"] == 0.0 and got[1]["score"] == pytest.approx(0.1)
    assert got[2]["visual"] == 0.0 and got[2]["score"] == 0.0 and got[2]["judge_failed"] == 0
    # "so so " * 400: 800 words, 781 word 20-grams, all the same one: (1 - 1/781) * -2.0; no template, no answer
    loop = (1 - 1 / 781) * -2.0
    assert got[3] == {
        "score": pytest.approx(loop),
        "format": 0.0,
        "accuracy": 0.0,
        "visual": None,
        "ngram_penalty": pytest.approx(loop),
        "judge_failed": 0,
        "judge_truncated": 0,
    }
    assert len(judge_server.requests) == 2  # only the annotated rows asked the judge
    mean = (0.1 + 0.9 + 0.7 * 2 / 3 + 0.1 + 0.0 + loop) / 4
    assert f"scored 4 rows -> {out} (mean score {mean:.4f}, judge_failed 0)" in proc.stderr


def test_plumbing_cli_and_in_process_engine_agree(tmp_path, judge_server):
    """Plumbing: the CLI and the in-process engine (what the verl reward manager runs) are one engine.

    Both sides run the same code, so this proves only the wiring (argument parsing, JSONL in and out, the judge
    settings); the values themselves are checked against hand-computed ones above.
    """
    proc, out = score(tmp_path, ROWS, *judge_args(judge_server), env={"VLLM_SERVER_API_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    assert read(out) == engine_scores(ROWS, judge_server)


def engine_scores(rows: list[dict], server) -> list[dict]:
    judge = JudgeClient(JudgeSettings(base_urls=(server.base_url,), model="judge", api_key=KEY))
    scorer = RewardScorer(judge=judge, workers=1)

    async def go():
        try:
            return await scorer.score_many(
                [ScoreRow(r["data_source"], r["response"], r["ground_truth"], r.get("extra_info") or {}) for r in rows]
            )
        finally:
            await scorer.aclose()

    try:
        return [r.values for r in asyncio.run(go())]
    finally:
        scorer.close()


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", r"rollouts.jsonl:3: invalid JSON"),
        ('["a list"]', r"rollouts.jsonl:3: expected a JSON object"),
        (json.dumps({"data_source": "geo3k_visual", "response": "x"}), r":3: missing field 'ground_truth'"),
        (json.dumps({"data_source": "geo3k_visual", "response": 7, "ground_truth": "1"}), r":3: field 'response'"),
        (json.dumps({"data_source": "nope", "response": "", "ground_truth": "1"}), r":3: field 'data_source'"),
        (
            json.dumps(
                {
                    "data_source": "geo3k_visual",
                    "response": "",
                    "ground_truth": "1",
                    "extra_info": {"visual_annotations": ["a", ""]},
                }
            ),
            r":3: extra_info.visual_annotations\[1\]",
        ),
        (json.dumps({"data_source": "geo3k_visual", "response": "", "ground_truth": ""}), r":3: ground_truth"),
    ],
)
def test_malformed_row_exits_2_naming_the_line_and_writes_nothing(tmp_path, bad_line, message):
    proc, out = score(tmp_path, [ROWS[1], ROWS[1], bad_line, ROWS[1]])
    assert proc.returncode == 2
    assert re.search(message, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.jsonl"]  # no temp file left behind


def test_judge_outage_writes_every_row_with_judge_failed(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    args = ("--judge-base-url", dead, "--judge-max-retries", "1", "--judge-timeout", "2")
    proc, out = score(tmp_path, ROWS, *args)
    assert proc.returncode == 1 and "unreachable" in proc.stderr and not out.exists()  # fails fast by default
    proc, out = score(tmp_path, ROWS, *args, "--max-judge-failure-rate", "1")  # knowingly without the judge
    assert proc.returncode == 0, proc.stderr
    assert "unreachable" in proc.stderr and "judge_failed" in proc.stderr  # the preflight warning, then counts
    assert "; scoring goes on and judged rows get judge_failed = 1\n" in proc.stderr
    got = read(out)
    assert len(got) == len(ROWS)
    assert [r["judge_failed"] for r in got] == [1, 0, 1, 0]
    assert [r["visual"] for r in got] == [0.0, None, 0.0, None]
    assert got[0]["score"] == pytest.approx(1.0)  # format + accuracy still count


def test_set_overrides_are_validated_and_applied(tmp_path):
    correct = {**ROWS[0], "extra_info": {}}  # format 1 and accuracy 1, no judge: both weights are observed
    proc, out = score(tmp_path, [correct, ROWS[1]], "--set", "format_weight=0.5", "accuracy_weight=2")
    assert proc.returncode == 0, proc.stderr
    got = read(out)
    assert got[0]["score"] == pytest.approx(0.5 * 1 + 2 * 1)
    assert got[1]["score"] == pytest.approx(0.5)  # the wrong answer scores only its format
    out.unlink()

    proc, out = score(tmp_path, ROWS[1:2], "--set", "format_wieght=0.5")
    assert proc.returncode == 2 and "unknown setting 'format_wieght'" in proc.stderr and not out.exists()
    proc, out = score(tmp_path, ROWS[1:2], "--set", "visual_weight=high")
    assert proc.returncode == 2 and "visual_weight" in proc.stderr and "expected float" in proc.stderr
    proc, out = score(tmp_path, ROWS[1:2], "--set", "visual_weight")
    assert proc.returncode == 2 and "key=value" in proc.stderr


def test_non_ascii_rows_score_under_an_ascii_locale(tmp_path):
    """A node whose locale is plain ASCII (``LC_ALL=C`` without Python's UTF-8 mode) still scores and writes
    non-ASCII text: every file the command reads or writes is UTF-8 whatever the locale says."""
    text = "Grüße aus 東京 — ½"
    rows = [{"data_source": "pageocr", "response": text, "ground_truth": text, "extra_info": {"note": "ü"}}]
    ascii_locale = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    proc, out = score(tmp_path, rows * 3)
    assert proc.returncode == 0, proc.stderr
    expected = out.read_bytes()
    assert [r["score"] for r in read(out)] == [2.0] * 3  # an exact read: full credit
    out.unlink()
    proc, out = score(tmp_path, rows * 3, env=ascii_locale)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == expected


def test_api_key_never_reaches_logs_or_files(tmp_path, judge_server):
    secret = "sk-do-not-leak-7c1f0e"
    # a wrong key: the preflight fails (HTTP 401) and says so; scoring anyway, every judged row fails and is counted
    proc, out = score(
        tmp_path,
        ROWS,
        *judge_args(judge_server),
        "--judge-max-retries",
        "0",
        "--judge-timeout",
        "5",
        env={"VLLM_SERVER_API_KEY": secret},
    )
    assert proc.returncode == 1 and "401" in proc.stderr and not out.exists()
    leaks = [proc.stdout, proc.stderr]
    proc, out = score(
        tmp_path,
        ROWS,
        *judge_args(judge_server),
        "--judge-max-retries",
        "0",
        "--max-judge-failure-rate",
        "1",
        env={"VLLM_SERVER_API_KEY": secret},
    )
    assert proc.returncode == 0, proc.stderr
    assert "401" in proc.stderr
    assert [r["judge_failed"] for r in read(out)] == [1, 0, 1, 0]
    assert not [text for text in leaks if secret in text]
    outputs = [proc.stdout, proc.stderr] + [p.read_text() for p in tmp_path.iterdir()]
    assert not [text for text in outputs if secret in text]
    # with the right key given on the command line and debug logging on, it does not leak either
    verbose = subprocess.run(
        [sys.executable, "-m", "perception_r1", "-v", "score", "--input", str(tmp_path / "rollouts.jsonl")]
        + ["--output", str(out), *judge_args(judge_server), "--judge-api-key", KEY],
        capture_output=True,
        text=True,
        env={**os.environ, "PERCEPTION_R1_NO_PROGRESS": "1"},
        timeout=300,
    )
    assert verbose.returncode == 0, verbose.stderr
    assert "DEBUG" in verbose.stderr  # debug logging really was on
    assert KEY not in verbose.stderr + verbose.stdout + out.read_text()
    assert [r["judge_failed"] for r in read(out)] == [0, 0, 0, 0]
