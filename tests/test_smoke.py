"""Smoke tests of the core contract (the detailed suites live beside this file)."""

import json
import subprocess
import sys


def test_score_cli_geo3k_rule_only(tmp_path):
    rows = [
        {
            "data_source": "geo3k_visual",
            "response": "<think>\nGE = 10\n</think>\n<answer>\nx = \\boxed{13}\n</answer>",
            "ground_truth": "13",
            "extra_info": {},
        },
        {"data_source": "geo3k_visual", "response": "", "ground_truth": "13", "extra_info": {}},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "perception_r1", "score", "--input", str(src), "--output", str(out)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PERCEPTION_R1_NO_PROGRESS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got[0] == {
        "score": 1.0,
        "format": 1.0,
        "accuracy": 1.0,
        "visual": None,
        "ngram_penalty": 0.0,
        "judge_failed": 0,
        "judge_truncated": 0,
    }
    assert got[1]["score"] == 0.0 and got[1]["format"] == 0.0
