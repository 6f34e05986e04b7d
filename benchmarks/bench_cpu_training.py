"""Seconds per phase of a CPU GRPO step, and the reward side's share of it: ``python benchmarks/bench_cpu_training.py``.

Runs the quickstart (``python -m perception_r1.demo``: tiny Qwen2-VL, 2 prompts x 4 rollouts, 48-token responses,
verl 0.9.1's trainer on the CPU backend) for ``--steps`` steps and reads verl's own per-step timers
(``timing_s/gen``, ``old_log_prob``, ``ref``, ``adv``, ``update_actor``, ``update_weights``, ``save_checkpoint``,
``step``) from its metrics file. verl scores each trajectory inside ``gen`` as it finishes, so the reward side has no
timer of its own; it is measured by re-scoring each step's rollout dump (verl's ``trainer.rollout_data_dir``) with the
same engine (``perception_r1.scoring.RewardScorer``) against the same scripted judge, serially, in this process:
the reward work one step asks for, as a share of the step. Prints a markdown table; never asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from common import table  # noqa: E402

PHASES = ("gen", "old_log_prob", "ref", "adv", "update_actor", "update_weights", "save_checkpoint", "step")


def _rescore_seconds(out: Path, step: int) -> tuple[float, int]:
    """Wall seconds to score step ``step``'s dumped trajectories with the training engine and the hash judge."""
    import pyarrow.parquet as pq

    from perception_r1.judge.client import JudgeClient, JudgeSettings
    from perception_r1.scoring import RewardScorer, ScoreRow
    from perception_r1.testing.openai_server import OpenAITestServer, hash_judge

    rows = pq.read_table(out / "data" / "geo3k_train.parquet").to_pylist()
    dumped = [json.loads(line) for line in (out / "rollouts" / f"{step}.jsonl").read_text().splitlines()]
    score_rows = []
    for record in dumped:
        row = next(r for r in rows if r["extra_info"]["question"] in record["input"])
        score_rows.append(
            ScoreRow("geo3k_visual", record["output"], row["reward_model"]["ground_truth"], row["extra_info"])
        )
    with OpenAITestServer(models=["bench-judge"], responder=hash_judge, record=False) as server:
        client = JudgeClient(JudgeSettings(base_urls=(server.base_url,), model="bench-judge", api_key="EMPTY"))
        scorer = RewardScorer(judge=client, workers=1)

        async def timed() -> float:
            # warm-up on rows of their own (worker start-up and imports are not a step's cost); the timed pass is
            # the step's rows, unseen, so nothing comes from the engine's memo (a second pass over the same rows
            # would be all memo hits and measure nothing)
            warm = [ScoreRow(r.data_source, f"warm-up {i} \\boxed{{{i}}}", r.ground_truth, r.extra_info)
                    for i, r in enumerate(score_rows[:2])]  # fmt: skip
            await asyncio.gather(*(scorer.score(r) for r in warm))
            start = time.perf_counter()
            await asyncio.gather(*(scorer.score(r) for r in score_rows))
            elapsed = time.perf_counter() - start
            await scorer.aclose()
            return elapsed

        try:
            return asyncio.run(timed()), len(score_rows)
        finally:
            scorer.close()


def run(repeats: int = 1, steps: int = 3) -> dict:
    """Run the demo once for ``steps`` steps; ``repeats`` is accepted for ``run_all.py`` (one run is minutes)."""
    with tempfile.TemporaryDirectory(prefix="bench-cpu-train-") as tmp:
        out = Path(tmp) / "demo"
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "perception_r1.demo", "--out", str(out), "--steps", str(steps)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k not in ("RESUME", "STEPS", "OUT")},
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"demo failed: {proc.stderr[-2000:]}")
        summary = json.loads((out / "summary.json").read_text())
        per_step = summary["steps"]
        rescored = {s["step"]: _rescore_seconds(out, s["step"]) for s in per_step}
    rows = []
    for entry in per_step:
        reward_s, n = rescored[entry["step"]]
        cells = [entry["step"]] + [entry.get(f"timing_s/{p}", 0.0) for p in PHASES]
        cells += [1000 * reward_s, f"{100 * reward_s / entry['timing_s/step']:.1f}%", n]
        rows.append(cells)
    medians = ["median"] + [statistics.median(float(r[i]) for r in rows) for i in range(1, len(PHASES) + 2)]
    medians += [f"{100 * medians[-1] / 1000 / medians[len(PHASES)]:.1f}%", rows[0][-1]]
    headers = ["step", *PHASES, "reward side ms", "reward share", "trajectories"]
    text = table(headers, [*rows, medians])
    note = f"whole demo run: {wall:.0f} s wall (model build, data, Ray start-up, validation, merge included)"
    return {"table": f"{text}\n\n{note}", "steps": per_step, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps to run")
    args = parser.parse_args()
    print(run(steps=args.steps)["table"])


if __name__ == "__main__":
    main()
