"""``perception-r1 score`` and the verl reward path give identical numbers for the same rows and settings.

Both paths run one engine, so their agreement is a plumbing check (config keys, decoding, the judge settings);
the numbers themselves are checked against values derived from the reward's definition (``expected_rows``).

The verl side is verl's own ``RewardLoopWorker`` (the class the reward loop runs as a Ray actor, here in-process)
built from the config the geo3k launcher composes under DRY_RUN, so it loads ``PerceptionRewardManager`` through
``reward.reward_manager.*`` and decodes real Qwen token ids. The CLI side is a separate process. Both talk to the
same local judge over a real socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_launcher_geo3k import JUDGE_KEY, JUDGE_MODEL, compose_geo3k, geo3k_rows, write_parquet
from test_verl_reward_manager import build_batch, expected_rows, responses_for

from perception_r1.testing import OpenAITestServer
from perception_r1.testing.qwen_processor import save_qwen2_5_vl_processor


def test_plumbing_score_cli_and_verl_reward_worker_agree_and_match_the_definition(tmp_path: Path, shared_data: Path) -> None:
    from transformers import AutoTokenizer
    from verl.experimental.reward_loop import RewardLoopWorker

    rows = geo3k_rows(shared_data)
    items = responses_for(rows)
    write_parquet(tmp_path / "train.parquet", rows)
    with OpenAITestServer(models=[JUDGE_MODEL], api_key=JUDGE_KEY) as judge:
        _, cfg = compose_geo3k(
            tmp_path,
            judge.base_url,
            "reward.reward_kwargs.visual_weight=0.5",  # a non-default setting must flow through both paths
            "reward.reward_kwargs.ngram_size=8",
            TRAIN_FILE=str(tmp_path / "train.parquet"),
            VAL_FILE=str(tmp_path / "train.parquet"),
        )
        assert cfg.reward.reward_kwargs.visual_weight == 0.5

        # verl path
        processor = save_qwen2_5_vl_processor(tmp_path / "qwen2_5_vl")
        cfg.actor_rollout_ref.model.path = str(processor)
        batch, _ = build_batch(AutoTokenizer.from_pretrained(processor), rows, items)
        env = {"VLLM_SERVER_BASE_URL": judge.base_url, "VLLM_MODEL_NAME": JUDGE_MODEL, "VLLM_SERVER_API_KEY": JUDGE_KEY}
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            worker = RewardLoopWorker(cfg)

            async def score_batch() -> list[dict]:
                try:
                    return await worker.compute_score_batch(batch)
                finally:
                    await worker.reward_manager.scorer.aclose()

            outputs = asyncio.run(score_batch())
        verl_rows = [out["reward_extra_info"] for out in outputs]
        want = expected_rows(rows, items, visual_weight=0.5, n=8)
        for j, (out, exp) in enumerate(zip(outputs, want, strict=True)):
            assert out["reward_score"] == pytest.approx(exp["score"], abs=1e-9), (j, exp)

        # CLI path
        src, dst = tmp_path / "rollouts.jsonl", tmp_path / "scores.jsonl"
        with src.open("w") as handle:
            for i, text in items:
                row = rows[i]
                record = {
                    "data_source": row["data_source"],
                    "response": text,
                    "ground_truth": row["reward_model"]["ground_truth"],
                    "extra_info": row["extra_info"],
                }
                handle.write(json.dumps(record) + "\n")
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
        cli_env.update(VLLM_SERVER_API_KEY=JUDGE_KEY, PERCEPTION_R1_NO_PROGRESS="1")
        proc = subprocess.run(
            [sys.executable, "-m", "perception_r1", "score", "--input", str(src), "--output", str(dst)]
            + ["--judge-base-url", judge.base_url, "--judge-model", JUDGE_MODEL]
            + ["--set", "visual_weight=0.5", "ngram_size=8"],
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    cli_rows = [json.loads(line) for line in dst.read_text().splitlines()]

    assert len(cli_rows) == len(verl_rows) == len(items)
    for j, (cli, verl) in enumerate(zip(cli_rows, verl_rows, strict=True)):
        assert cli == {key: verl[key] for key in cli}, (j, items[j][1][:80])  # identical, not approximately equal
    for j, (cli, exp) in enumerate(zip(cli_rows, want, strict=True)):
        got = (cli["format"], cli["accuracy"], cli["visual"], cli["ngram_penalty"])
        assert got == pytest.approx((exp["format"], exp["accuracy"], exp["visual"], exp["ngram"]), abs=1e-9), j
    assert any(r["visual"] not in (None, 0.0, 1.0) for r in cli_rows)  # partial visual credit was exercised
    assert any(r["ngram_penalty"] < 0 for r in cli_rows) and any(r["visual"] is None for r in cli_rows)
