"""The judge's health and cost inside verl's real trainer on the CPU: the breaker, the canaries, the cost counters.

Each test trains the demo's tiny Qwen2-VL through the geo3k launcher (``BACKEND=cpu``) against a scripted judge on a
real socket whose request log the test reads: a judge that goes down after two healthy steps must stop the run with
one line after checkpointing; a truthful judge must show canary agreement 1.0 and a judge that says "yes" to
everything a hack rate of 1.0; the per-step cost counters must add up to what the server saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from perception_r1 import demo
from perception_r1.judge.calibration import load_rows, shipped_labels_path
from perception_r1.testing.openai_server import OpenAITestServer, fail_after, hash_judge, labelled_judge, lying_judge
from perception_r1.testing.tiny_model import save_tiny_qwen2_vl

pytestmark = pytest.mark.slow

TRAJECTORIES_PER_STEP = 2 * 4  # the demo's 2 prompts x 4 rollouts
QUIET = ["trainer.val_before_train=False", "trainer.test_freq=-1"]  # no validation traffic: counts are exact


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("judge_run_inputs")
    return save_tiny_qwen2_vl(root / "model"), demo.build_data(root, sys.executable)


def _train(out: Path, inputs: tuple[Path, Path], server: OpenAITestServer, steps: int, *overrides: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    model, data = inputs
    return demo.run_training(
        out, steps, False, server.base_url, sys.executable, 1500, model, data, extra_overrides=list(overrides)
    )


def _canary_file(path: Path, kinds: set[str]) -> str:
    """The shipped calibration rows of ``kinds``, as a ``judge_canary_file``: the canaries a step draws are then
    known to include adversarial (``forged``) rows, whose label-0 pairs the hack rate is measured on."""
    lines = Path(shipped_labels_path()).read_text(encoding="utf-8").splitlines()
    path.write_text("".join(line + "\n" for line in lines if json.loads(line)["kind"] in kinds), encoding="utf-8")
    return f"+reward.reward_kwargs.judge_canary_file={path}"


def _metrics(out: Path) -> dict[int, dict]:
    return demo.read_metrics(out / "metrics.run.jsonl")


def test_breaker_stops_the_run_after_a_checkpoint_when_the_judge_goes_down(tmp_path: Path, inputs) -> None:
    healthy = 2 * TRAJECTORIES_PER_STEP  # two healthy steps, then HTTP 503 for every request
    with OpenAITestServer(models=[demo.JUDGE_MODEL], responder=fail_after(hash_judge, healthy)) as server:
        code = _train(
            tmp_path,
            inputs,
            server,
            6,
            *QUIET,
            "trainer.save_freq=10",
            "+reward.reward_kwargs.judge_canaries_per_step=0",
        )
    assert code == 3
    log = (tmp_path / "train.log").read_text()
    last = [line for line in log.splitlines() if line.startswith("perception_r1 main_ppo: error:")][-1]
    assert last.startswith(
        "perception_r1 main_ppo: error: judge breaker: reward/judge_failure_rate above 0.20 for 2 consecutive steps"
    ), last
    assert "steps 3-4" in last and server.base_url in last and "503" in last
    steps = _metrics(tmp_path)
    assert sorted(steps) == [1, 2, 3, 4]  # the run stopped at step 4 of 6
    assert [steps[s]["reward/judge_failure_rate"] for s in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 1.0]
    assert steps[4]["reward/judge_breaker_tripped"] == 1.0
    assert (tmp_path / "checkpoints" / "global_step_4" / "actor").is_dir()  # saved before stopping
    assert demo.latest_checkpoint_step(tmp_path / "checkpoints") == 4


def test_canaries_and_cost_with_a_truthful_judge(tmp_path: Path, inputs) -> None:
    truthful = labelled_judge({r.response: r.labels_for("paper") for r in load_rows()}, fallback=hash_judge)
    with OpenAITestServer(models=[demo.JUDGE_MODEL], responder=truthful) as server:
        # 10 forged + 10 stated rows, 16 drawn per step: every step holds at least 6 forged canaries
        canaries = _canary_file(tmp_path / "canaries.jsonl", {"forged", "state"})
        code = _train(tmp_path, inputs, server, 2, *QUIET, "trainer.save_freq=-1", canaries)
        log = list(server.log)
    assert code == 0, (tmp_path / "train.log").read_text()[-3000:]
    steps = _metrics(tmp_path)
    assert sorted(steps) == [1, 2]
    for metrics in steps.values():
        assert metrics["reward/judge_canary_agreement"] == 1.0
        assert metrics["reward/judge_canary_hack_rate"] == 0.0
        assert metrics["reward/judge_constrained"] == 1.0
        assert metrics["reward/judge_exposed_s"] >= 0.0
    canaries = sum(m["reward/judge_canaries"] for m in steps.values())
    assert abs(canaries - 2 * 16) <= 1  # reward.num_workers=1: the per-step budget of 16 canaries is met
    # cost: every request the server answered is counted once, with the server's own token numbers
    assert sum(m["reward/judge_requests"] for m in steps.values()) == len(log)
    assert sum(m["reward/judge_prompt_tokens"] for m in steps.values()) == sum(r.usage["prompt_tokens"] for r in log)
    assert sum(m["reward/judge_completion_tokens"] for m in steps.values()) == sum(
        r.usage["completion_tokens"] for r in log
    )
    assert sum(m.get("reward/judge_cached_prompt_tokens", 0) for m in steps.values()) > 0
    # the console line carries the judge metrics too
    console = (tmp_path / "train.log").read_text()
    assert "reward/judge_canary_agreement:1.0" in console and "reward/judge_requests:" in console


def test_canaries_expose_a_judge_that_says_yes_to_everything(tmp_path: Path, inputs) -> None:
    canaries = _canary_file(tmp_path / "canaries.jsonl", {"forged"})  # every label 0: agreement 0, all hacked
    with OpenAITestServer(models=[demo.JUDGE_MODEL], responder=lying_judge("all1")) as server:
        code = _train(tmp_path, inputs, server, 1, *QUIET, "trainer.save_freq=-1", canaries)
    assert code == 0, (tmp_path / "train.log").read_text()[-3000:]
    step = _metrics(tmp_path)[1]
    assert step["reward/judge_canary_hack_rate"] == 1.0
    assert step["reward/judge_canary_agreement"] == 0.0
    assert step["reward/visual/mean"] == 1.0  # what the policy would have learned from: every fact "stated"
