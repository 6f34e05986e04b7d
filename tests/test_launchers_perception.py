"""The perception launchers: DRY_RUN composes verl's config with the paper's settings; bad setups fail fast.

Each launcher runs for real (bash, the preflight, ``main_ppo --cfg job``) on parquet built from the real COCO
images and OCR pages; the composed YAML is checked key by key. Failures (missing or malformed data, data built
for another template or pixel limits, a bad reward setting) end with one error line and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from test_launcher_geo3k import at_least_rows

from perception_r1.cli import main

REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = {
    "refcoco": REPO / "examples" / "run_qwen2_vl_2b_refcoco_grounding.sh",
    "pixmo": REPO / "examples" / "run_qwen2_vl_2b_pixmo_counting.sh",
    "ocr": REPO / "examples" / "run_qwen2_vl_2b_pageocr_ocr.sh",
    "coco": REPO / "examples" / "run_qwen2_5_vl_3b_coco_detection.sh",
}
MODELS = {
    "refcoco": "Qwen/Qwen2-VL-2B-Instruct",
    "pixmo": "Qwen/Qwen2-VL-2B-Instruct",
    "ocr": "Qwen/Qwen2-VL-2B-Instruct",
    "coco": "Qwen/Qwen2.5-VL-3B-Instruct",
}
DET_PIXELS = ("3136", "1003520")


def build_perception_data(shared_data: Path, directory: Path, coord_frame: str | None = None) -> dict[str, Path]:
    """Train parquet for each launcher from the real data (refcoco / pixmo rows from the COCO annotations).

    ``coord_frame``: build the refcoco / pixmo rows for this frame (``qwen2_5_vl``: with the detection run's pixel
    limits) instead of their launchers' default ``qwen2_vl``.
    """
    coco = json.loads((shared_data / "coco" / "instances.json").read_text())
    images = {img["id"]: img for img in coco["images"]}
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    refs = [
        {"image": images[a["image_id"]]["file_name"], "bbox": a["bbox"], "sentences": [f"the {cats[a['category_id']]}"]}
        for a in coco["annotations"][:6]
    ]
    (directory / "refs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    counts = []
    for image_id, img in images.items():
        anns = [a for a in coco["annotations"] if a["image_id"] == image_id and cats[a["category_id"]] == "person"]
        if anns:
            points = [{"x": a["bbox"][0] + a["bbox"][2] / 2, "y": a["bbox"][1] + a["bbox"][3] / 2} for a in anns]
            counts.append({"image": img["file_name"], "points": points, "count": len(points), "label": "person"})
    (directory / "pixmo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in counts))
    images_dir = str(shared_data / "coco" / "images")
    out = {name: directory / f"{name}.parquet" for name in LAUNCHERS}
    commands = {
        "refcoco": ["refcoco", "--input", str(directory / "refs.jsonl"), "--image-root", images_dir],
        "pixmo": ["pixmo-count", "--input", str(directory / "pixmo.jsonl"), "--image-root", images_dir],
        "ocr": ["pageocr", "--input", str(shared_data / "ocr" / "pages.jsonl")],
        "coco": ["coco-detection", "--annotations", str(shared_data / "coco" / "instances.json"),
                 "--min-pixels", DET_PIXELS[0], "--max-pixels", DET_PIXELS[1]],
    }  # fmt: skip
    if coord_frame is not None:
        limits = ["--min-pixels", DET_PIXELS[0], "--max-pixels", DET_PIXELS[1]] if coord_frame == "qwen2_5_vl" else []
        for name in ("refcoco", "pixmo"):
            commands[name] += ["--coord-frame", coord_frame, *limits]
    for name, argv in commands.items():
        assert main(["data", *argv, "--output", str(out[name])]) == 0, name
    return out


def launcher_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "JUDGE_"))}
    env.update(
        PYTHON=sys.executable,
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        SWANLAB_LOG_DIR=str(tmp_path / "swanlog"),
        HYDRA_FULL_ERROR="0",
        DRY_RUN="1",
    )
    env.update(overrides)
    return env


def run_launcher(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCHERS[name]), *args], capture_output=True, text=True, env=env, timeout=300)


def compose(name: str, tmp_path: Path, train: Path, val: Path, *args: str, **env: str):
    """Run launcher ``name`` under DRY_RUN=1; ``(process, composed config)``. A small ``train`` file is repeated up
    to the paper's 128 prompts per step (the preflight refuses fewer rows than ``data.train_batch_size``)."""
    train = at_least_rows(train)
    proc = run_launcher(name, launcher_env(tmp_path, TRAIN_FILE=str(train), VAL_FILE=str(val), **env), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, OmegaConf.create(proc.stdout)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    return build_perception_data(shared_data, tmp_path_factory.mktemp("launch_data"))


@pytest.fixture(scope="module")
def curriculum_file(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The detection rows reordered by `perception-r1 data curriculum` (empty answers: every prompt ties)."""
    tmp = tmp_path_factory.mktemp("curriculum")
    rows = pq.read_table(data["coco"]).to_pylist()
    rollouts = [
        {"data_source": r["data_source"], "response": "[]", "ground_truth": r["reward_model"]["ground_truth"],
         "extra_info": r["extra_info"]}
        for r in rows
    ]  # fmt: skip
    (tmp / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rollouts))
    out = tmp / "curriculum.parquet"
    assert main(["data", "curriculum", "--data", str(data["coco"]), "--rollouts", str(tmp / "rollouts.jsonl"),
                 "--output", str(out), "--workers", "1"]) == 0  # fmt: skip
    return out


def check_paper_settings(cfg, name: str) -> None:
    actor = cfg.actor_rollout_ref.actor
    rollout = cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.algorithm.use_kl_in_reward is False
    assert actor.use_kl_loss is True and actor.kl_loss_coef == 0.04 and actor.kl_loss_type == "low_var_kl"
    assert actor.optim.lr == 1e-6
    assert rollout.n == 8 and rollout.temperature == 1.0 and rollout.name == "vllm"
    assert cfg.data.max_response_length == 2048
    assert cfg.data.train_batch_size == 128 and actor.ppo_mini_batch_size == 128
    manager = cfg.reward.reward_manager
    assert (manager.source, manager.name, manager.module.path) == (
        "importlib",
        "PerceptionRewardManager",
        "pkg://perception_r1.verl_plugin.reward_manager",
    )
    assert cfg.reward.reward_kwargs.thinking is False
    assert cfg.actor_rollout_ref.model.path == MODELS[name]
    assert list(cfg.trainer.logger) == ["console", "swanlab"]
    assert cfg.trainer.v1.trainer_mode == "perception_sync"
    assert "VLLM_SERVER_BASE_URL" not in (cfg.ray_kwargs.ray_init.runtime_env.get("env_vars") or {})


@pytest.mark.parametrize("name", ["refcoco", "pixmo", "ocr"])
def test_qwen2_vl_launchers_compose_the_paper_config(name, data, tmp_path):
    proc, cfg = compose(name, tmp_path, data[name], data[name], "trainer.total_epochs=3", EXPERIMENT_NAME="e1")
    assert "preflight: ok" in proc.stderr and "GPU check skipped" in proc.stderr
    check_paper_settings(cfg, name)
    assert cfg.data.train_files == str(at_least_rows(data[name])) and cfg.trainer.experiment_name == "e1"
    assert cfg.trainer.total_epochs == 3  # user overrides come last
    assert cfg.data.shuffle is True
    kwargs = dict(cfg.reward.reward_kwargs)
    if name == "ocr":
        assert kwargs == {"thinking": False}
        assert cfg.data.max_prompt_length == 4096
        assert dict(cfg.data.mm_processor_kwargs) == {"min_pixels": 3136, "max_pixels": 2408448}
    else:
        assert kwargs == {"coord_frame": "qwen2_vl", "min_pixels": 3136, "max_pixels": 1003520, "thinking": False}
        assert cfg.data.max_prompt_length == 2048
        assert dict(cfg.data.mm_processor_kwargs) == {"min_pixels": 3136, "max_pixels": 1003520}


def test_detection_launcher_composes_with_curriculum_order(data, curriculum_file, tmp_path):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    proc, cfg = compose("coco", tmp_path, curriculum_file, data["coco"], N_GPUS_PER_NODE="4", NNODES="2")
    check_paper_settings(cfg, "coco")
    assert dict(cfg.reward.reward_kwargs) == {
        "coord_frame": "qwen2_5_vl",
        "min_pixels": 3136,
        "max_pixels": 1003520,
        "thinking": False,
    }
    assert dict(cfg.data.mm_processor_kwargs) == {"min_pixels": 3136, "max_pixels": 1003520}
    assert cfg.data.shuffle is False  # a curriculum file keeps its easy -> hard order
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (2, 4)
    # KL loss needs the reference policy; verl's own validation accepts the composed config
    assert need_reference_policy(cfg) is True and need_critic(cfg) is False
    validate_config(cfg, use_reference_policy=True, use_critic=False)


def test_shuffle_for_plain_and_curriculum_files(data, curriculum_file):
    def shuffle_for(path: Path) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "perception_r1.data.curriculum", "--shuffle-for", str(path)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert shuffle_for(data["coco"]) == "True" and shuffle_for(curriculum_file) == "False"


def _one_line_failure(proc: subprocess.CompletedProcess, prefix: str, *expected: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1, proc.stderr
    for text in expected:
        assert text in errors[0], errors[0]


@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_missing_data_fails_fast(name, data, tmp_path):
    missing = tmp_path / "nope.parquet"
    proc = run_launcher(name, launcher_env(tmp_path, TRAIN_FILE=str(missing), VAL_FILE=str(data[name])))
    _one_line_failure(proc, "data check: error:", str(missing), "does not exist")


def test_malformed_data_fails_fast(data, tmp_path):
    not_parquet = tmp_path / "broken.parquet"
    not_parquet.write_text("not a parquet file")
    proc = run_launcher("refcoco", launcher_env(tmp_path, TRAIN_FILE=str(not_parquet), VAL_FILE=str(data["refcoco"])))
    _one_line_failure(proc, "data check: error:", str(not_parquet))

    # a row whose ground truth is not a box: the preflight names the row and field
    table = pq.read_table(data["refcoco"]).to_pylist()
    table[2]["reward_model"]["ground_truth"] = [1.0, 2.0, 3.0]
    bad = tmp_path / "bad_gt.parquet"
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(table), bad)
    proc = run_launcher("refcoco", launcher_env(tmp_path, TRAIN_FILE=str(bad), VAL_FILE=str(data["refcoco"])))
    _one_line_failure(proc, "preflight: error:", "row 2", "reward_model.ground_truth")


def test_data_built_for_another_run_fails_fast(data, tmp_path):
    # the detection data carries max_pixels 1003520; a run at 1806336 would mis-place every qwen2_5_vl box
    env = launcher_env(tmp_path, TRAIN_FILE=str(data["coco"]), VAL_FILE=str(data["coco"]), MAX_PIXELS="1806336")
    _one_line_failure(run_launcher("coco", env), "data check: error:", "images[0].max_pixels", "--max-pixels 1806336")
    env = launcher_env(tmp_path, TRAIN_FILE=str(data["pixmo"]), VAL_FILE=str(data["pixmo"]), THINKING="1")
    _one_line_failure(run_launcher("pixmo", env), "data check: error:", "thinking template", "THINKING=1")


def test_bad_reward_setting_fails_fast(data, tmp_path):
    env = launcher_env(tmp_path, TRAIN_FILE=str(data["refcoco"]), VAL_FILE=str(data["refcoco"]), COORD_FRAME="pixels")
    _one_line_failure(run_launcher("refcoco", env), "preflight: error:", "coord_frame")
