"""The geo3k launcher: DRY_RUN composes verl's full config; bad setups fail fast with one line, no traceback.

Real bash, real preflight, real hydra composition of verl 0.9.1's config through our ``main_ppo`` wrapper, a real
local OpenAI-compatible judge on a socket, real parquet files built from ``shared/data/geometry3k``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from perception_r1.testing import OpenAITestServer

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "examples" / "run_qwen2_5_vl_7b_geo3k_visual.sh"
SERVE_JUDGE = REPO / "examples" / "serve_judge.sh"
JUDGE_MODEL = "judge-model"
JUDGE_KEY = "sk-test-launcher-secret"


def geo3k_rows(shared_data: Path) -> list[dict]:
    """verl rows for the real Geometry3K sample (diagram logic forms stand in as visual annotations)."""
    root = shared_data / "geometry3k"
    rows = []
    for index, line in enumerate((root / "problems.jsonl").read_text().splitlines()):
        problem = json.loads(line)
        rows.append(
            {
                "data_source": "geo3k_visual",
                "prompt": [{"role": "user", "content": "<image>" + problem["problem"]}],
                "images": [{"bytes": (root / problem["image"]).read_bytes(), "path": None}],
                "reward_model": {"style": "rule", "ground_truth": problem["answer"]},
                "extra_info": {
                    "index": index,
                    "visual_annotations": [a for a in problem["logic_forms"] if a.strip()],
                },
            }
        )
    return rows


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_parquet(path)
    return path


def at_least_rows(path: str | Path, rows: int = 128) -> Path:
    """``path``, or a copy beside it whose real rows repeat up to ``rows``: verl trains 0 steps on fewer rows than
    ``data.train_batch_size`` (128 in the paper's runs), so the launchers' preflight refuses the small samples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pq.read_table(path)
    if table.num_rows >= rows or table.num_rows == 0:
        return path
    repeated = pa.concat_tables([table] * (rows // table.num_rows + 1)).slice(0, rows)
    out = path.with_name(f"{path.stem}.x{rows}.parquet")
    pq.write_table(repeated, out)
    return out


def launcher_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "JUDGE_"))}
    env.update(
        PYTHON=sys.executable,
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        SWANLAB_LOG_DIR=str(tmp_path / "swanlog"),
        HYDRA_FULL_ERROR="0",
    )
    env.update(overrides)
    return env


def run_launcher(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCHER), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def compose_geo3k(tmp_path: Path, judge_url: str, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the launcher under DRY_RUN=1 and parse the composed config it prints (a small ``TRAIN_FILE`` is
    repeated up to 128 rows, see :func:`at_least_rows`)."""
    if "TRAIN_FILE" in env:
        env["TRAIN_FILE"] = str(at_least_rows(env["TRAIN_FILE"]))
    proc = run_launcher(
        launcher_env(
            tmp_path,
            DRY_RUN="1",
            VLLM_SERVER_BASE_URL=judge_url,
            VLLM_MODEL_NAME=JUDGE_MODEL,
            VLLM_SERVER_API_KEY=JUDGE_KEY,
            **env,
        ),
        *args,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, OmegaConf.create(proc.stdout)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    directory = tmp_path_factory.mktemp("geo3k")
    rows = geo3k_rows(shared_data)
    write_parquet(directory / "train.parquet", rows[:8])
    write_parquet(directory / "test.parquet", rows[8:])
    return directory


@pytest.fixture(scope="module")
def judge():
    with OpenAITestServer(models=[JUDGE_MODEL], api_key=JUDGE_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def composed(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, judge: OpenAITestServer):
    tmp = tmp_path_factory.mktemp("compose")
    return compose_geo3k(
        tmp,
        judge.base_url,
        "trainer.val_before_train=False",  # a user override ("$@") comes last and wins
        TRAIN_FILE=str(data_dir / "train.parquet"),
        VAL_FILE=str(data_dir / "test.parquet"),
        MODEL_PATH="/models/Qwen2.5-VL-7B-Instruct",
        NNODES="1",
        N_GPUS_PER_NODE="4",  # the docs' one-node recipe: 4 GPUs train, 4 serve the judge
        EXPERIMENT_NAME="exp1",
        PROJECT_NAME="proj1",
    )


def test_dry_run_composes_the_paper_config(composed, data_dir: Path, judge: OpenAITestServer) -> None:
    proc, cfg = composed
    assert "preflight: ok" in proc.stderr and "GPU check skipped" in proc.stderr
    # our reward manager through verl 0.9.1's reward.* keys, with the paper's weights
    manager = cfg["reward"]["reward_manager"]
    assert (manager["source"], manager["name"], manager["module"]["path"]) == (
        "importlib",
        "PerceptionRewardManager",
        "pkg://perception_r1.verl_plugin.reward_manager",
    )
    assert dict(cfg["reward"]["reward_kwargs"]) == {
        "format_weight": 0.1,
        "accuracy_weight": 0.9,
        "visual_weight": 0.7,
        "ngram_size": 20,
        "ngram_max_penalty": -2.0,
    }
    assert cfg["custom_reward_function"]["path"] is None and cfg["reward_model"]["reward_manager"] is None
    # GRPO, batch sizes, optimizer, KL off
    actor = cfg["actor_rollout_ref"]["actor"]
    assert cfg["algorithm"]["adv_estimator"] == "grpo" and cfg["algorithm"]["use_kl_in_reward"] is False
    assert actor["use_kl_loss"] is False
    assert cfg["data"]["train_batch_size"] == 128 and cfg["actor_rollout_ref"]["rollout"]["n"] == 8
    assert actor["ppo_mini_batch_size"] == 128
    assert actor["optim"]["lr"] == 1e-6 and actor["optim"]["weight_decay"] == 1e-3
    assert actor["optim"]["lr_warmup_steps_ratio"] == 0.05
    assert cfg["data"]["max_prompt_length"] == 4096 and cfg["data"]["max_response_length"] == 4096
    assert dict(cfg["data"]["mm_processor_kwargs"]) == {"min_pixels": 3136, "max_pixels": 1806336}
    assert cfg["actor_rollout_ref"]["rollout"]["name"] == "vllm"
    # schedule, logging, cluster shape and paths from env vars
    trainer = cfg["trainer"]
    assert (trainer["total_epochs"], trainer["test_freq"], trainer["save_freq"]) == (25, 5, 10)
    assert list(trainer["logger"]) == ["console", "swanlab"]
    assert (trainer["nnodes"], trainer["n_gpus_per_node"]) == (1, 4)
    assert (trainer["project_name"], trainer["experiment_name"]) == ("proj1", "exp1")
    assert trainer["val_before_train"] is False
    assert cfg["data"]["train_files"] == str(at_least_rows(data_dir / "train.parquet"))
    assert cfg["data"]["val_files"] == str(data_dir / "test.parquet")
    assert cfg["actor_rollout_ref"]["model"]["path"] == "/models/Qwen2.5-VL-7B-Instruct"
    # the wrapper: our trainer, the Ray setup hook, the judge location (never its key)
    assert trainer["v1"]["trainer_mode"] == "perception_sync"
    runtime_env = cfg["ray_kwargs"]["ray_init"]["runtime_env"]
    assert runtime_env["worker_process_setup_hook"] == "perception_r1.verl_plugin.setup_worker"
    env_vars = dict(runtime_env["env_vars"])
    assert {k: env_vars[k] for k in ("VLLM_SERVER_BASE_URL", "VLLM_MODEL_NAME")} == {
        "VLLM_SERVER_BASE_URL": judge.base_url,
        "VLLM_MODEL_NAME": JUDGE_MODEL,
    }
    assert JUDGE_KEY not in proc.stdout and JUDGE_KEY not in proc.stderr


def test_composed_config_passes_verl_validation(composed) -> None:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg = composed[1]
    assert need_reference_policy(cfg) is False and need_critic(cfg) is False  # GRPO without KL: actor + rollout only
    validate_config(cfg, use_reference_policy=False, use_critic=False)


def _assert_one_line_failure(proc: subprocess.CompletedProcess, *expected: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("preflight: error:")]
    assert len(errors) == 1, proc.stderr
    for text in expected:
        assert text in errors[0], errors[0]


def _dry_env(tmp_path: Path, data_dir: Path, judge: OpenAITestServer, **overrides: str) -> dict[str, str]:
    values = {
        "DRY_RUN": "1",
        "TRAIN_FILE": str(data_dir / "train.parquet"),
        "VAL_FILE": str(data_dir / "test.parquet"),
        "VLLM_SERVER_BASE_URL": judge.base_url,
        "VLLM_MODEL_NAME": JUDGE_MODEL,
        "VLLM_SERVER_API_KEY": JUDGE_KEY,
    }
    values.update(overrides)
    return launcher_env(tmp_path, **values)


def test_missing_data_file(tmp_path: Path, data_dir: Path, judge: OpenAITestServer) -> None:
    missing = tmp_path / "nope.parquet"
    proc = run_launcher(_dry_env(tmp_path, data_dir, judge, TRAIN_FILE=str(missing)))
    _assert_one_line_failure(proc, str(missing), "does not exist")


@pytest.mark.parametrize(
    ("break_row", "expected"),
    [
        (lambda r: r["reward_model"].update(ground_truth=""), ["row 3", "reward_model.ground_truth"]),
        (lambda r: r["extra_info"].update(visual_annotations=["AB = 3", ""]), ["row 3", "visual_annotations[1]"]),
        (lambda r: r.update(data_source="no_such_task"), ["row 3", "data_source", "no_such_task"]),
        (lambda r: r.update(prompt=[{"role": "user", "content": "no placeholder"}]), ["row 3", "prompt", "<image>"]),
        (lambda r: r.pop("images"), ["missing column", "images"]),
    ],
    ids=["empty-ground-truth", "empty-annotation", "unknown-data-source", "image-placeholder", "no-images-column"],
)
def test_malformed_data(
    tmp_path: Path, data_dir: Path, judge: OpenAITestServer, shared_data: Path, break_row, expected
):
    rows = geo3k_rows(shared_data)[:5]
    if "missing column" in expected:
        for row in rows:
            break_row(row)
    else:
        break_row(rows[3])
    bad = write_parquet(tmp_path / "bad.parquet", rows)
    proc = run_launcher(_dry_env(tmp_path, data_dir, judge, TRAIN_FILE=str(bad)))
    _assert_one_line_failure(proc, str(bad), *expected)


def test_not_a_parquet_file(tmp_path: Path, data_dir: Path, judge: OpenAITestServer) -> None:
    bad = tmp_path / "train.parquet"
    bad.write_text("prompt,data_source\n")
    proc = run_launcher(_dry_env(tmp_path, data_dir, judge, TRAIN_FILE=str(bad)))
    _assert_one_line_failure(proc, "not a readable parquet file")


def test_judge_unreachable(tmp_path: Path, data_dir: Path, judge: OpenAITestServer) -> None:
    with OpenAITestServer(models=[JUDGE_MODEL]) as gone:
        url = gone.base_url  # a port that was just served and is now closed
    proc = run_launcher(_dry_env(tmp_path, data_dir, judge, VLLM_SERVER_BASE_URL=url))
    _assert_one_line_failure(proc, "judge", url, "unreachable")


def test_judge_serves_another_model(tmp_path: Path, data_dir: Path, judge: OpenAITestServer) -> None:
    proc = run_launcher(_dry_env(tmp_path, data_dir, judge, VLLM_MODEL_NAME="Qwen/Qwen2.5-72B-Instruct"))
    _assert_one_line_failure(proc, "judge", JUDGE_MODEL, "Qwen/Qwen2.5-72B-Instruct")


def test_judge_rejects_the_key_without_leaking_it(tmp_path: Path, data_dir: Path, judge: OpenAITestServer) -> None:
    proc = run_launcher(_dry_env(tmp_path, data_dir, judge, VLLM_SERVER_API_KEY="sk-wrong-key-123"))
    _assert_one_line_failure(proc, "judge", "401")
    assert "sk-wrong-key-123" not in proc.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("reward.reward_kwargs.visual_weigth=0.5", ["unknown setting", "visual_weigth"]),
        ("reward.reward_kwargs.visual_weight=lots", ["visual_weight", "expected float"]),
        ("custom_reward_function.path=/tmp/reward.py", ["legacy", "reward.*"]),
        ("+reward_model.reward_manager=naive", ["legacy"]),
    ],
    ids=["typo", "bad-value", "legacy-custom-reward", "legacy-reward-model"],
)
def test_bad_reward_overrides(tmp_path: Path, data_dir: Path, judge: OpenAITestServer, override: str, expected):
    proc = run_launcher(_dry_env(tmp_path, data_dir, judge), override)
    _assert_one_line_failure(proc, *expected)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this node has GPUs: the check would pass")
def test_no_gpu_fails_fast_without_dry_run(tmp_path: Path, data_dir: Path, judge: OpenAITestServer) -> None:
    proc = run_launcher(_dry_env(tmp_path, data_dir, judge, DRY_RUN="0"))
    _assert_one_line_failure(proc, "no GPU")


def test_serve_judge_dry_run_masks_the_key(tmp_path: Path) -> None:
    env = launcher_env(
        tmp_path, DRY_RUN="1", VLLM_SERVER_API_KEY="sk-judge-secret", JUDGE_TP="4", JUDGE_DP="2", JUDGE_PORT="8123"
    )
    proc = subprocess.run(["bash", str(SERVE_JUDGE)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "sk-judge-secret" not in out + proc.stderr and "VLLM_API_KEY=****" in out
    for flag in (
        "vllm serve Qwen/Qwen2.5-32B-Instruct",
        "--served-model-name Qwen/Qwen2.5-32B-Instruct",
        "--port 8123",
        "--tensor-parallel-size 4",
        "--data-parallel-size 2",
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens: the judge's cost per step
    ):
        assert flag in out, out
