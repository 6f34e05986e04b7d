"""examples/serve_judge.sh never ignores a variable without a word: its own names work, the README's old spelling
(PORT, TP_SIZE) and misspelt JUDGE_* names are errors that say which name to use."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "serve_judge.sh"


def serve(**env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "JUDGE_")) and k not in ("PORT", "TP_SIZE")
    }
    return subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env={**clean, "DRY_RUN": "1", **env}, timeout=60
    )


def test_its_own_names_are_used():
    proc = serve(JUDGE_MODEL="Qwen/Qwen2.5-32B-Instruct", JUDGE_PORT="8123", JUDGE_TP="4", JUDGE_MAX_CONCURRENCY="8")
    assert proc.returncode == 0, proc.stderr
    assert "--port 8123" in proc.stdout and "--tensor-parallel-size 4" in proc.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "8000"}, "PORT=8000 is set but this script reads JUDGE_PORT"),
        ({"TP_SIZE": "4"}, "TP_SIZE=4 is set but this script reads JUDGE_TP"),
        ({"JUDGE_PROT": "8000"}, "unknown variable JUDGE_PROT"),
        ({"JUDGE_TP_SIZE": "4"}, "unknown variable JUDGE_TP_SIZE"),
    ],
)
def test_unknown_or_misspelt_variables_are_errors(env, message):
    proc = serve(**env)
    assert proc.returncode == 2
    assert message in proc.stderr and "JUDGE_PORT" in proc.stderr
    assert proc.stdout == ""


def test_port_of_another_tool_is_left_alone_when_the_judge_port_is_given():
    proc = serve(PORT="8888", JUDGE_PORT="8000")
    assert proc.returncode == 0, proc.stderr
    assert "--port 8000" in proc.stdout
