"""Perception tasks through verl's real reward loop equal ``perception-r1 score``, number for number.

One Ray session for the module: verl's ``RewardLoopManager`` (2 CPU ``RewardLoopWorker`` actors) loads
``PerceptionRewardManager`` from the config the detection launcher composes under DRY_RUN (``coord_frame``
qwen2_5_vl with its pixel limits) and scores a batch of perfect, perturbed and garbage answers for every
perception task, built from the real COCO boxes and OCR pages and tokenized with the real Qwen vocabulary. The
same decoded responses go through the ``perception-r1 score`` command; every component must match exactly.
Also here: the curriculum built from those scores orders prompts easy -> hard and verl's sampler keeps that order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from omegaconf import OmegaConf
from test_launchers_perception import DET_PIXELS, build_perception_data, compose

from perception_r1.rewards.boxes import from_original
from perception_r1.testing.qwen_processor import save_qwen2_5_vl_processor

pytestmark = pytest.mark.slow  # a Ray session with verl reward-loop workers
SETTINGS = {"coord_frame": "qwen2_5_vl", "min_pixels": int(DET_PIXELS[0]), "max_pixels": int(DET_PIXELS[1])}


def to_frame(boxes, size) -> np.ndarray:
    """Original-pixel boxes -> the qwen2_5_vl frame of the run (pixels of the resized image)."""
    coords = np.asarray(boxes, dtype=float).reshape(-1, 4)
    return from_original(coords, "qwen2_5_vl", size, SETTINGS["min_pixels"], SETTINGS["max_pixels"])


def box_json(boxes, labels, size) -> str:
    coords = to_frame(boxes, size).round().astype(int).tolist()
    return json.dumps([{"bbox_2d": c, "label": lab} for c, lab in zip(coords, labels, strict=True)])


def responses(row: dict) -> dict[str, str]:
    """perfect / perturbed / garbage answers for one row (coordinates in the qwen2_5_vl frame)."""
    source, gt, size = row["data_source"], row["reward_model"]["ground_truth"], row["extra_info"]["image_size"]
    if source == "coco_detection":
        boxes, labels = [o["bbox"] for o in gt], [o["label"] for o in gt]
        shifted = [[x1 + 0.3 * (x2 - x1), y1, x2 + 0.3 * (x2 - x1), y2] for x1, y1, x2, y2 in boxes]
        return {
            "perfect": "```json\n" + box_json(boxes, labels, size) + "\n```",
            "perturbed": box_json(shifted[1:], ["cat"] * (len(boxes) - 1), size),
            "garbage": "I see some things.",
        }
    if source == "refcoco":
        (x1, y1, x2, y2), label = to_frame(gt, size).round().astype(int)[0].tolist(), row["extra_info"]["question"]
        w = x2 - x1
        return {
            "perfect": f"<|object_ref_start|>{label}<|object_ref_end|><|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>",
            "perturbed": f"[{x1 + w // 2}, {y1}, {x2 + w // 2}, {y2}]",
            "garbage": "left",
        }
    if source == "pixmo_count":
        pts = [[x, y, x + 1, y + 1] for x, y in gt]
        centres = to_frame(pts, size)[:, :2].round().astype(int).tolist()
        return {
            "perfect": json.dumps([{"point_2d": c, "label": "person"} for c in centres]),
            "perturbed": json.dumps([{"point_2d": [c[0] + 40, c[1]], "label": "person"} for c in centres[:-1]]),
            "garbage": "",
        }
    words = gt.split()
    return {"perfect": gt, "perturbed": " ".join(words[::2]), "garbage": "lorem ipsum"}


def build_batch(tokenizer, rows: list[dict], texts: list[str]):
    """A verl ``DataProto`` like the agent loop hands to the reward loop (left-padded prompts, right-padded responses)."""
    from verl import DataProto

    prompts = [tokenizer.encode(r["prompt"][0]["content"]) for r in rows]
    ends = [tokenizer.encode(t) + [tokenizer.convert_tokens_to_ids("<|im_end|>")] for t in texts]
    p_len, r_len = max(map(len, prompts)), max(map(len, ends))
    pad = tokenizer.pad_token_id or 0
    prompt_ids = torch.full((len(rows), p_len), pad, dtype=torch.long)
    response_ids = torch.full((len(rows), r_len), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), p_len + r_len), dtype=torch.long)
    for j, (p, r) in enumerate(zip(prompts, ends, strict=True)):
        prompt_ids[j, p_len - len(p) :] = torch.tensor(p)
        response_ids[j, : len(r)] = torch.tensor(r)
        mask[j, p_len - len(p) : p_len + len(r)] = 1

    def obj(values: list) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    return DataProto.from_dict(
        tensors={"prompts": prompt_ids, "responses": response_ids, "attention_mask": mask,
                 "input_ids": torch.cat([prompt_ids, response_ids], dim=1)},
        non_tensors={"data_source": obj([r["data_source"] for r in rows]),
                     "reward_model": obj([r["reward_model"] for r in rows]),
                     "extra_info": obj([r["extra_info"] for r in rows])},
    )  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    """Built data, the detection launcher's DRY_RUN config, a processor dir, one Ray session."""
    tmp = tmp_path_factory.mktemp("verl_perception")
    data = build_perception_data(shared_data, tmp, coord_frame="qwen2_5_vl")  # every row built for this run's frame
    _, cfg = compose("coco", tmp, data["coco"], data["coco"])
    processor = save_qwen2_5_vl_processor(tmp / "qwen2_5_vl")
    cfg.actor_rollout_ref.model.path = str(processor)  # the workers need a tokenizer; no weights are loaded
    cfg.reward.num_workers = 2
    runtime_env = {k: v for k, v in OmegaConf.to_container(cfg.ray_kwargs.ray_init.runtime_env).items() if v}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        ray.init(num_cpus=2, include_dashboard=False, runtime_env=runtime_env, logging_level="ERROR")
        try:
            yield tmp, data, cfg, processor
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def scored(setup):
    """The batch scored by verl's RewardLoopManager and by `perception-r1 score` (same decoded responses)."""
    from transformers import AutoTokenizer
    from verl.experimental.reward_loop import RewardLoopManager

    tmp, data, cfg, processor = setup
    assert {k: cfg.reward.reward_kwargs[k] for k in SETTINGS} == SETTINGS
    tokenizer = AutoTokenizer.from_pretrained(processor)
    rows, texts, kinds = [], [], []
    for name in ("coco", "refcoco", "pixmo", "ocr"):
        table = pq.read_table(data[name]).to_pylist()
        for row in (table[0], table[-1]):
            for kind, text in responses(row).items():
                rows.append(row)
                texts.append(text)
                kinds.append(kind)
    out = RewardLoopManager(cfg).compute_rm_score(build_batch(tokenizer, rows, texts))

    # what the trainer scored: the decoded response (special tokens skipped, as the reward manager decodes)
    decoded = [tokenizer.decode(tokenizer.encode(t), skip_special_tokens=True) for t in texts]
    rollouts = tmp / "rollouts.jsonl"
    rollouts.write_text(
        "".join(
            json.dumps({"data_source": r["data_source"], "response": d, "ground_truth": r["reward_model"]["ground_truth"],
                        "extra_info": r["extra_info"]}) + "\n"
            for r, d in zip(rows, decoded, strict=True)
        )
    )  # fmt: skip
    cli_out = tmp / "scores.jsonl"
    sets = [f"{k}={v}" for k, v in SETTINGS.items()]
    proc = subprocess.run(
        [sys.executable, "-m", "perception_r1", "score", "--input", str(rollouts), "--output", str(cli_out),
         "--workers", "1", "--set", *sets],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PERCEPTION_R1_NO_PROGRESS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cli = [json.loads(line) for line in cli_out.read_text().splitlines()]
    return rows, kinds, out, cli, rollouts, cli_out


def test_plumbing_reward_loop_equals_score_command(scored):
    """Plumbing: verl's reward loop and the CLI run one engine; the values are checked in the next test."""
    rows, kinds, out, cli, _, _ = scored
    assert len(cli) == len(rows) == 24
    for j, want in enumerate(cli):
        got = {key: out.non_tensor_batch[key][j] for key in want}
        assert got == want, (rows[j]["data_source"], kinds[j])
        assert out.non_tensor_batch["scoring_error"][j] == 0
        assert out.batch["rm_scores"][j].sum().item() == pytest.approx(want["score"])


def test_perfect_beats_perturbed_beats_garbage(scored):
    rows, kinds, _, cli, _, _ = scored
    for j in range(0, len(rows), 3):
        source = rows[j]["data_source"]
        assert kinds[j : j + 3] == ["perfect", "perturbed", "garbage"]
        perfect, perturbed, garbage = (cli[j + k]["score"] for k in range(3))
        assert perfect > perturbed > garbage, (source, perfect, perturbed, garbage)
        if source == "coco_detection":  # documented maximum 4.0 (rounding to integer pixels costs a hair)
            assert perfect == pytest.approx(4.0, abs=0.05) and cli[j]["recall"] == 1.0
            assert cli[j]["classification"] == 1.0 and cli[j]["missing"] == 0.0
        if source == "refcoco":  # the special-token box survives decoding without its tokens
            assert cli[j]["format"] == 1.0 and cli[j]["iou"] > 0.97
            # the perturbed box is the frame box moved right by w // 2: IoU (w - w//2) / (w + w//2), scaling-free
            x1, _, x2, _ = to_frame(rows[j]["reward_model"]["ground_truth"], rows[j]["extra_info"]["image_size"])[0]
            w = int(round(x2)) - int(round(x1))
            iou = (w - w // 2) / (w + w // 2)
            assert cli[j + 1]["iou"] == pytest.approx(iou, abs=0.02)
            assert perturbed == pytest.approx(1.0 + cli[j + 1]["iou"] ** 2)  # format + IoU² (released reward)
            assert garbage == 0.0
        if source == "pixmo_count":
            assert cli[j]["count"] == 1.0 and cli[j + 1]["count"] == 0.0
        if source == "pageocr":
            assert cli[j]["accuracy"] == 1.0 and perfect == pytest.approx(2.0)
            assert cli[j + 1]["format"] == 1.0 and perturbed == pytest.approx(1.0 + cli[j + 1]["accuracy"])


def test_curriculum_from_scores_feeds_verls_sampler_in_order(setup, scored):
    """Mean score per prompt -> easy -> hard parquet; verl's create_rl_sampler(data.shuffle=False) keeps it."""
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.trainer.ppo.utils import create_rl_sampler

    tmp, data, cfg, _ = setup
    # rollouts of the detection prompts only (the curriculum is per training file): one prompt gets a perfect,
    # one a perturbed and every other prompt a garbage answer
    table = pq.read_table(data["coco"]).to_pylist()
    rollouts = []
    for row in table:
        answers = responses(row)
        idx = row["extra_info"]["index"]
        kind = "perfect" if idx == 5 else "perturbed" if idx == 2 else "garbage"
        for text in (answers[kind], answers[kind]):  # two rollouts per prompt
            rollouts.append({"data_source": row["data_source"], "response": text, "extra_info": row["extra_info"],
                             "ground_truth": row["reward_model"]["ground_truth"]})  # fmt: skip
    src = tmp / "det_rollouts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rollouts))
    scores = tmp / "det_scores.jsonl"
    sets = [f"{k}={v}" for k, v in SETTINGS.items()]
    env = {"PATH": "/usr/bin:/bin", "PERCEPTION_R1_NO_PROGRESS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "perception_r1", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env)

    proc = run("score", "--input", str(src), "--output", str(scores), "--workers", "1", "--set", *sets)
    assert proc.returncode == 0, proc.stderr
    out = tmp / "curriculum.parquet"
    proc = run("data", "curriculum", "--data", str(data["coco"]), "--rollouts", str(src), "--scores", str(scores),
               "--output", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ordered = pq.read_table(out).to_pylist()
    per_prompt = [json.loads(line)["score"] for line in scores.read_text().splitlines()]
    means = {i: (per_prompt[2 * i] + per_prompt[2 * i + 1]) / 2 for i in range(len(table))}
    order = [r["extra_info"]["index"] for r in ordered]
    assert order[:2] == [5, 2]  # perfect, then perturbed; the garbage prompts tie and keep data order
    assert order[2:] == [i for i in range(len(table)) if i not in (5, 2)]
    assert [r["extra_info"]["curriculum_score"] for r in ordered] == pytest.approx([means[i] for i in order])
    # in-process scoring gives the same order
    out2 = tmp / "curriculum2.parquet"
    proc = run("data", "curriculum", "--data", str(data["coco"]), "--rollouts", str(src), "--output", str(out2),
               "--workers", "1", "--set", *sets)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [r["extra_info"]["index"] for r in pq.read_table(out2).to_pylist()] == order

    # verl reads it in order: the launcher sets data.shuffle=False for curriculum files
    data_cfg = OmegaConf.create({"shuffle": False, "seed": 1})
    dataset = [r["extra_info"]["index"] for r in ordered]
    loader = StatefulDataLoader(dataset, batch_size=3, sampler=create_rl_sampler(data_cfg, dataset))
    assert [int(i) for batch in loader for i in batch] == order
    shuffled = create_rl_sampler(OmegaConf.create({"shuffle": True, "seed": 1}), dataset)
    assert [dataset[i] for i in shuffled] != order  # the default would destroy the curriculum
