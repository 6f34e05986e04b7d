"""From verl's rollout dumps to `perception-r1 score` and `data curriculum`.

The dump is written by verl 0.9.1's own dump function (``RayPPOTrainer._write_generations``, what
``trainer.rollout_data_dir`` runs) from what a training step holds: prompts rendered by verl's ``RLHFDataset`` with
the real Qwen2.5-VL processor and decoded with ``skip_special_tokens=True`` as verl decodes them, the ground truth
of each row, our reward and reward_extra_info. Rescoring the converted rows must give the training reward back.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perception_r1.cli import main as cli_main
from perception_r1.judge.client import JudgeClient, JudgeSettings
from perception_r1.scoring import RewardScorer, ScoreRow
from perception_r1.testing import OpenAITestServer
from perception_r1.testing.qwen_processor import load_qwen_vl_processor, save_qwen2_5_vl_processor
from perception_r1.testing.verl_dataset import load_rlhf_dataset, vision_inputs

SETTINGS = {"coord_frame": "absolute"}


def cli(*args: str, server: OpenAITestServer | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "JUDGE_"))}
    env["PERCEPTION_R1_NO_PROGRESS"] = "1"
    if server is not None:
        env.update(VLLM_SERVER_BASE_URL=server.base_url, VLLM_MODEL_NAME="judge")
    return subprocess.run(
        [sys.executable, "-m", "perception_r1", *args], capture_output=True, text=True, env=env, timeout=600
    )


def response_for(item: dict, sample: int) -> str:
    gt = item["reward_model"]["ground_truth"]
    if item["data_source"] == "coco_detection":
        objects = gt if item["extra_info"]["index"] >= 6 or sample == 1 else []
        return json.dumps([{"bbox_2d": o["bbox"], "label": o["label"]} for o in objects])
    facts = item["extra_info"]["visual_annotations"][: 1 + sample]
    answer = gt if sample == 0 else "0"
    return f"<think>\nFrom the figure: {'; '.join(facts)}.\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>"


@pytest.fixture(scope="module")
def run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two training parquets, and verl dumps of two steps (two samples per prompt) written by verl itself."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    from perception_r1.verl_plugin.reward_manager import extra_info_keys

    tmp = tmp_path_factory.mktemp("verl_run")
    coco, geo = tmp / "coco_train.parquet", tmp / "geo3k_train.parquet"
    assert cli_main(["data", "coco-detection", "--annotations", str(shared_data / "coco" / "instances.json"),
                     "--coord-frame", "absolute", "--output", str(coco)]) == 0  # fmt: skip
    assert cli_main(["data", "geo3k", "--input", str(shared_data / "geometry3k" / "problems.jsonl"),
                     "--annotations-field", "logic_forms", "--output", str(geo)]) == 0  # fmt: skip
    processor = load_qwen_vl_processor(save_qwen2_5_vl_processor(tmp / "processor"))
    items = []
    for path in (coco, geo):
        dataset = load_rlhf_dataset(path, processor, tmp / "verl_cache")
        for i in range(len(dataset)):
            item = dataset[i]
            _, _, inputs = vision_inputs(dataset, item, processor)
            prompt = processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
            items.append((item, prompt))

    with OpenAITestServer(models=["judge"]) as server:
        judge = JudgeClient(JudgeSettings(base_urls=(server.base_url,), model="judge"))
        scorer = RewardScorer(SETTINGS, judge=judge, workers=1)
        trajectories = [(item, prompt, s, response_for(item, s)) for item, prompt in items for s in (0, 1)]

        async def score_all():
            try:
                return await scorer.score_many(
                    [ScoreRow(it["data_source"], resp, it["reward_model"]["ground_truth"], it["extra_info"])
                     for it, _, _, resp in trajectories]
                )  # fmt: skip
            finally:
                await scorer.aclose()

        try:
            scored = asyncio.run(score_all())
        finally:
            scorer.close()

    keys = extra_info_keys()
    dump = tmp / "rollout_data"
    half = len(trajectories) // 2
    for step, part in ((1, range(0, half)), (2, range(half, len(trajectories)))):
        extra = {k: [scored[i].values.get(k) for i in part] for k in keys}  # what the reward manager returns
        RayPPOTrainer._write_generations(
            [trajectories[i][1] for i in part],
            [trajectories[i][3] for i in part],
            [trajectories[i][0]["reward_model"]["ground_truth"] for i in part],
            [scored[i].values["score"] for i in part],
            extra,
            str(dump),
            step,
        )
    return {"coco": coco, "geo": geo, "dump": dump, "trajectories": trajectories, "scored": scored, "tmp": tmp}


def test_verl_dump_converts_to_score_input_and_rescoring_gives_the_training_reward(run, tmp_path):
    files = sorted(p.name for p in run["dump"].iterdir())
    assert files == ["1.jsonl", "2.jsonl"]
    first = json.loads((run["dump"] / "1.jsonl").read_text().splitlines()[0])
    assert {"input", "output", "gts", "score", "step"} <= set(first) and "data_source" not in first
    assert "<image>" not in first["input"] and "<|vision_start|>" not in first["input"]  # decoded as verl does

    rollouts = tmp_path / "rollouts.jsonl"
    proc = cli("rollouts", "from-verl", "--dump", str(run["dump"]), "--data", str(run["coco"]), str(run["geo"]),
               "--output", str(rollouts))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in rollouts.read_text().splitlines()]
    assert len(rows) == len(run["trajectories"])
    for row, (item, _, _, response) in zip(rows, run["trajectories"], strict=True):
        assert row["data_source"] == item["data_source"] and row["response"] == response
        assert row["extra_info"]["index"] == item["extra_info"]["index"]
        assert row["ground_truth"] == item["reward_model"]["ground_truth"]
    assert {r["step"] for r in rows} == {1, 2}

    with OpenAITestServer(models=["judge"]) as server:
        scores = tmp_path / "scores.jsonl"
        proc = cli("score", "--input", str(rollouts), "--output", str(scores),
                   server=server)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    rescored = [json.loads(line) for line in scores.read_text().splitlines()]
    assert [r["score"] for r in rescored] == pytest.approx([r["training_score"] for r in rows])
    assert rescored == [s.values for s in run["scored"]]


def test_verl_dump_feeds_the_curriculum(run, tmp_path):
    rollouts, scores, out = tmp_path / "coco_rollouts.jsonl", tmp_path / "coco_scores.jsonl", tmp_path / "cur.parquet"
    # only the detection parquet: the geo3k trajectories match none of its rows
    proc = cli("rollouts", "from-verl", "--dump", str(run["dump"]), "--data", str(run["coco"]),
               "--output", str(rollouts))  # fmt: skip
    assert proc.returncode == 2 and "1.jsonl:" in proc.stderr and "--skip-unmatched" in proc.stderr
    assert not rollouts.exists()
    proc = cli("rollouts", "from-verl", "--dump", str(run["dump"]), "--data", str(run["coco"]),
               "--output", str(rollouts), "--skip-unmatched")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "skipped 20 dump row(s)" in proc.stderr
    assert (
        cli("score", "--input", str(rollouts), "--output", str(scores)).returncode == 0
    )
    proc = cli("data", "curriculum", "--data", str(run["coco"]), "--rollouts", str(rollouts), "--scores", str(scores),
               "--output", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import pyarrow.parquet as pq

    order = [e["index"] for e in pq.read_table(out, columns=["extra_info"]).column("extra_info").to_pylist()]
    assert sorted(order) == list(range(9))
    assert set(order[:3]) == {6, 7, 8}  # both samples perfect: the easiest prompts come first
