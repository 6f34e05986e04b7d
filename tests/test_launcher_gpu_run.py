"""What a GPU run needs from the launchers before verl starts, checked on the config the launchers compose.

Each test runs a real launcher under ``DRY_RUN=1`` (bash, both preflight stages, ``main_ppo --cfg job``) on real
parquet built from ``shared/data`` and reads the composed verl 0.9.1 config back: the batch shape against the GPU
count and the rows, the attention implementation with and without flash-attn, the logger env forwarded to the
Ray workers (never an API key), checkpoint retention and directory, the judge URL on several nodes, the prompt
filter's workers, and the FSDP2 engine. A refused setup ends with one ``preflight: error:`` line and no config.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_launcher_geo3k import (
    JUDGE_KEY,
    JUDGE_MODEL,
    _assert_one_line_failure,
    at_least_rows,
    compose_geo3k,
    geo3k_rows,
    launcher_env,
    run_launcher,
    write_parquet,
)
from test_launchers_perception import build_perception_data, compose
from test_launchers_perception import launcher_env as perception_env
from test_launchers_perception import run_launcher as run_perception

from perception_r1.testing import OpenAITestServer


@pytest.fixture(scope="module")
def judge():
    with OpenAITestServer(models=[JUDGE_MODEL], api_key=JUDGE_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def geo3k(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("geo3k_gpu_run")
    rows = geo3k_rows(shared_data)
    small = write_parquet(directory / "train.parquet", rows)
    return {"small": small, "train": at_least_rows(small), "val": small}


@pytest.fixture(scope="module")
def perception(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    return build_perception_data(shared_data, tmp_path_factory.mktemp("perception_gpu_run"))


def geo3k_env(tmp_path: Path, judge: OpenAITestServer, geo3k: dict[str, Path], **overrides: str) -> dict[str, str]:
    values = {
        "DRY_RUN": "1",
        "TRAIN_FILE": str(geo3k["train"]),
        "VAL_FILE": str(geo3k["val"]),
        "VLLM_SERVER_BASE_URL": judge.base_url,
        "VLLM_MODEL_NAME": JUDGE_MODEL,
        "VLLM_SERVER_API_KEY": JUDGE_KEY,
    }
    values.update(overrides)
    return launcher_env(tmp_path, **values)


def no_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is None


# ------------------------------------------------------------------ 1. batch shape and rows


def test_six_gpus_are_refused_before_ray(tmp_path, judge, geo3k):
    proc = run_launcher(geo3k_env(tmp_path, judge, geo3k, N_GPUS_PER_NODE="6"), cwd=tmp_path)
    _assert_one_line_failure(proc, "batch shape", "128·8 = 1024", "6 data-parallel ranks", "N_GPUS_PER_NODE=4 or 8")
    assert "preflight: ok" in proc.stderr  # the data/judge stage passed; the composed config was refused


def test_the_documented_one_node_shapes_pass(tmp_path, judge, geo3k):
    for gpus in ("8", "4"):
        proc, cfg = compose_geo3k(tmp_path, judge.base_url, TRAIN_FILE=str(geo3k["train"]), VAL_FILE=str(geo3k["val"]),
                                  N_GPUS_PER_NODE=gpus)  # fmt: skip
        assert f"over {gpus} data-parallel ranks" in proc.stderr and cfg.trainer.n_gpus_per_node == int(gpus)


def test_fewer_rows_than_a_batch_are_refused(tmp_path, judge, geo3k):
    proc = run_launcher(geo3k_env(tmp_path, judge, geo3k, TRAIN_FILE=str(geo3k["small"])), cwd=tmp_path)
    _assert_one_line_failure(proc, "10 rows < data.train_batch_size 128", "0 steps")
    # the user's override (applied last) makes the same file trainable
    proc = run_launcher(
        geo3k_env(tmp_path, judge, geo3k, TRAIN_FILE=str(geo3k["small"])),
        "data.train_batch_size=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "10 train rows: 1 step(s) per epoch" in proc.stderr


def test_perception_launcher_refuses_a_bad_shape(tmp_path, perception):
    with pytest.raises(AssertionError, match="batch shape"):
        compose("coco", tmp_path, perception["coco"], perception["coco"], NNODES="3", N_GPUS_PER_NODE="8")


# ------------------------------------------------------------------ 2. flash-attn or sdpa


@pytest.mark.skipif(not no_flash_attn(), reason="flash_attn is installed here: the fallback branch cannot run")
def test_without_flash_attn_the_policy_runs_sdpa_without_padding_removal(tmp_path, judge, geo3k):
    proc, cfg = compose_geo3k(tmp_path, judge.base_url, TRAIN_FILE=str(geo3k["train"]), VAL_FILE=str(geo3k["val"]))
    model = cfg.actor_rollout_ref.model
    assert model.override_config.attn_implementation == "sdpa" and model.use_remove_padding is False
    assert cfg.actor_rollout_ref.actor.use_remove_padding is False  # the actor (and ref: same model config) follows
    warnings = [line for line in proc.stderr.splitlines() if "flash_attn is not importable" in line]
    assert len(warnings) == 1 and "padded to its longest sequence" in warnings[0]


def test_with_flash_attn_the_policy_uses_it_with_padding_removal(tmp_path, judge, geo3k):
    fake = tmp_path / "site"
    (fake / "flash_attn").mkdir(parents=True)
    (fake / "flash_attn" / "__init__.py").write_text('__version__ = "2.8.3"  # stands in for the real package\n')
    pythonpath = os.pathsep.join(p for p in (str(fake), os.environ.get("PYTHONPATH", "")) if p)
    proc, cfg = compose_geo3k(tmp_path, judge.base_url, TRAIN_FILE=str(geo3k["train"]), VAL_FILE=str(geo3k["val"]),
                              PYTHONPATH=pythonpath)  # fmt: skip
    model = cfg.actor_rollout_ref.model
    assert model.override_config.attn_implementation == "flash_attention_2" and model.use_remove_padding is True
    assert "flash_attn is not importable" not in proc.stderr


def test_attention_can_be_forced_and_a_typo_is_refused(tmp_path, judge, geo3k):
    _, cfg = compose_geo3k(tmp_path, judge.base_url, TRAIN_FILE=str(geo3k["train"]), VAL_FILE=str(geo3k["val"]),
                           ATTN_IMPLEMENTATION="eager")  # fmt: skip
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "eager"
    proc = run_launcher(geo3k_env(tmp_path, judge, geo3k, ATTN_IMPLEMENTATION="flash"), cwd=tmp_path)
    assert proc.returncode == 2 and "ATTN_IMPLEMENTATION=flash" in proc.stderr and proc.stdout == ""


# ------------------------------------------------------------------ 3. logger env through the Ray runtime env


def test_logger_env_reaches_the_ray_workers_and_keys_never_do(tmp_path, judge, geo3k):
    secrets = {"WANDB_API_KEY": "wandb-secret-123", "SWANLAB_API_KEY": "swanlab-secret-456"}
    proc, cfg = compose_geo3k(
        tmp_path, judge.base_url, TRAIN_FILE=str(geo3k["train"]), VAL_FILE=str(geo3k["val"]),
        LOGGERS="console, wandb,swanlab", WANDB_PROJECT="pr1", WANDB_DIR=str(tmp_path / "wandb"),
        SWANLAB_MODE="offline", WANDB_MODE="", **secrets,
    )  # fmt: skip
    assert list(cfg.trainer.logger) == ["console", "wandb", "swanlab"]
    env_vars = dict(cfg.ray_kwargs.ray_init.runtime_env.env_vars)
    assert env_vars["SWANLAB_MODE"] == "offline"
    assert env_vars["SWANLAB_LOG_DIR"] == str(tmp_path / "swanlog")
    assert env_vars["WANDB_PROJECT"] == "pr1" and env_vars["WANDB_DIR"] == str(tmp_path / "wandb")
    assert "WANDB_MODE" not in env_vars  # a key is set: online, as the user asked
    assert not [name for name in env_vars if "KEY" in name or "TOKEN" in name or "SECRET" in name]
    for secret in [*secrets.values(), JUDGE_KEY]:
        assert secret not in proc.stdout and secret not in proc.stderr


def test_defaults_log_locally(tmp_path, perception):
    _, cfg = compose("ocr", tmp_path, perception["ocr"], perception["ocr"])
    assert list(cfg.trainer.logger) == ["console", "swanlab"]
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.SWANLAB_MODE == "local"
    # wandb without a key: offline (online mode without a TTY raises inside the TaskRunner), said in one note
    proc, cfg = compose("ocr", tmp_path, perception["ocr"], perception["ocr"], LOGGERS="console,wandb",
                        WANDB_MODE="", WANDB_API_KEY="")  # fmt: skip
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.WANDB_MODE == "offline"
    assert "WANDB_MODE=offline" in proc.stderr


def test_unknown_logger_is_refused(tmp_path, perception):
    env = perception_env(tmp_path, TRAIN_FILE=str(at_least_rows(perception["ocr"])), VAL_FILE=str(perception["ocr"]),
                         LOGGERS="console,tensorbaord")  # fmt: skip
    _assert_one_line_failure(run_perception("ocr", env), "unknown logger", "tensorbaord")


# ------------------------------------------------------------------ 4. checkpoints


def test_checkpoints_are_kept_in_an_absolute_dir_with_retention(tmp_path, perception):
    _, cfg = compose("refcoco", tmp_path, perception["refcoco"], perception["refcoco"], PROJECT_NAME="p", EXPERIMENT_NAME="e")
    assert cfg.trainer.max_actor_ckpt_to_keep == 2 and cfg.trainer.max_critic_ckpt_to_keep == 2
    assert cfg.trainer.default_local_dir == str(Path.cwd() / "checkpoints" / "p" / "e")  # the launcher's $PWD
    shared = tmp_path / "shared" / "ckpt"
    _, cfg = compose("refcoco", tmp_path, perception["refcoco"], perception["refcoco"], KEEP_CHECKPOINTS="5",
                     CHECKPOINT_DIR=str(shared), NNODES="2", N_GPUS_PER_NODE="4")  # fmt: skip
    assert cfg.trainer.max_actor_ckpt_to_keep == 5 and cfg.trainer.default_local_dir == str(shared)
    _, cfg = compose("refcoco", tmp_path, perception["refcoco"], perception["refcoco"], KEEP_CHECKPOINTS="all")
    assert cfg.trainer.max_actor_ckpt_to_keep is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"CHECKPOINT_DIR": "ckpt/run", "NNODES": "2", "N_GPUS_PER_NODE": "4"}, ["relative with trainer.nnodes=2"]),
     ({"KEEP_CHECKPOINTS": "zero"}, ["max_actor_ckpt_to_keep='zero'", "KEEP_CHECKPOINTS"])],
    ids=["relative-dir-on-two-nodes", "bad-retention"],
)  # fmt: skip
def test_bad_checkpoint_settings_are_refused(tmp_path, perception, env, expected):
    values = perception_env(tmp_path, TRAIN_FILE=str(at_least_rows(perception["refcoco"])),
                            VAL_FILE=str(perception["refcoco"]), **env)  # fmt: skip
    _assert_one_line_failure(run_perception("refcoco", values), *expected)


# ------------------------------------------------------------------ 5. the judge on several nodes


def test_loopback_judge_is_refused_on_two_nodes(tmp_path, judge, geo3k):
    proc = run_launcher(geo3k_env(tmp_path, judge, geo3k, NNODES="2", N_GPUS_PER_NODE="8"), cwd=tmp_path)
    _assert_one_line_failure(proc, "loopback address", judge.base_url, "trainer.nnodes=2")


def _outbound_address() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outbound interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.skipif(_outbound_address() is None, reason="this machine has no non-loopback address")
def test_two_nodes_with_a_reachable_judge_compose(tmp_path, geo3k):
    address = _outbound_address()
    with OpenAITestServer(models=[JUDGE_MODEL], api_key=JUDGE_KEY, host="0.0.0.0") as server:
        url = f"http://{address}:{server.port}/v1"
        proc, cfg = compose_geo3k(tmp_path, url, TRAIN_FILE=str(geo3k["train"]), VAL_FILE=str(geo3k["val"]),
                                  NNODES="2", N_GPUS_PER_NODE="8", CHECKPOINT_DIR=str(tmp_path / "ckpt"))  # fmt: skip
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (2, 8)
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VLLM_SERVER_BASE_URL == url
    assert "over 16 data-parallel ranks" in proc.stderr and "node check skipped" in proc.stderr  # under DRY_RUN


# ------------------------------------------------------------------ 7. the prompt-length filter's workers


def test_prompt_filter_uses_the_cpus(tmp_path, perception):
    _, cfg = compose("coco", tmp_path, perception["coco"], perception["coco"])
    assert cfg.data.filter_overlong_prompts is True
    assert cfg.data.filter_overlong_prompts_workers == max(1, min(32, len(os.sched_getaffinity(0))))
    _, cfg = compose("coco", tmp_path, perception["coco"], perception["coco"], PROMPT_FILTER_WORKERS="3")
    assert cfg.data.filter_overlong_prompts_workers == 3


# ------------------------------------------------------------------ 8. verl's own Qwen2.5-VL example


@pytest.mark.parametrize("name", ["geo3k", "coco", "ocr"])
def test_launchers_use_fsdp2_and_budgets_that_hold_two_sequences(tmp_path, judge, geo3k, perception, name):
    if name == "geo3k":
        _, cfg = compose_geo3k(tmp_path, judge.base_url, TRAIN_FILE=str(geo3k["train"]), VAL_FILE=str(geo3k["val"]))
    else:
        _, cfg = compose(name, tmp_path, perception[name], perception[name])
    actor = cfg.actor_rollout_ref.actor
    assert actor.strategy == "fsdp2" and cfg.actor_rollout_ref.ref.strategy == "fsdp2"
    longest = cfg.data.max_prompt_length + cfg.data.max_response_length
    assert actor.use_dynamic_bsz is True and actor.ppo_max_token_len_per_gpu >= 2 * longest
    assert cfg.actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu >= 2 * longest
