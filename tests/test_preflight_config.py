"""The preflight's checks of the composed verl config: the run-time rules verl 0.9.1 applies only after the models
have loaded (batch shape against the data-parallel size, token budgets, rows for one step), checkpoints, loggers,
and a loopback judge on several nodes.

The config is verl's own: composed once by our ``main_ppo`` wrapper (``--cfg job``) with the launchers' GRPO
settings, read back by the preflight, and then varied one setting at a time.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from perception_r1.verl_plugin import preflight
from perception_r1.verl_plugin.preflight import PreflightError

REPO = Path(__file__).resolve().parents[1]


def rows_file(path: Path, rows: int) -> Path:
    pq.write_table(pa.table({"data_source": ["geo3k_visual"] * rows}), path)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """verl 0.9.1's config with the geo3k launcher's shape: 128 prompts x 8, one mini-batch, 4096 + 4096 tokens."""
    tmp = tmp_path_factory.mktemp("cfg")
    train = rows_file(tmp / "train.parquet", 256)
    overrides = [
        "actor_rollout_ref.model.path=/models/x",
        f"data.train_files={train}",
        f"data.val_files={train}",
        "algorithm.adv_estimator=grpo",
        "data.train_batch_size=128",
        "actor_rollout_ref.rollout.n=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=128",
        "data.max_prompt_length=4096",
        "data.max_response_length=4096",
        "actor_rollout_ref.actor.use_dynamic_bsz=True",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384",
        "actor_rollout_ref.actor.use_kl_loss=False",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=8",
        "trainer.logger=[console,swanlab]",
        "trainer.default_local_dir=/shared/ckpt/run",
        "trainer.max_actor_ckpt_to_keep=2",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "perception_r1.verl_plugin.main_ppo", *overrides, "--cfg", "job"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = tmp / "composed.yaml"
    path.write_text(proc.stdout)
    return preflight.load_config(path)


def with_(cfg: dict, **settings) -> dict:
    """A copy with dotted settings (``a__b__c=1`` sets ``cfg['a']['b']['c']``)."""
    out = copy.deepcopy(cfg)
    for dotted, value in settings.items():
        node = out
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return out


def shape_error(cfg: dict) -> str:
    with pytest.raises(PreflightError) as info:
        preflight.check_batch_shape(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_paper_shape_passes_on_8_4_2_1_gpus(base):
    for gpus in (8, 4, 2, 1):
        report = preflight.check_batch_shape(with_(base, trainer__n_gpus_per_node=gpus))
        assert f"over {gpus} data-parallel ranks" in report


def test_six_gpus_are_refused_with_the_numbers_and_valid_shapes(base):
    message = shape_error(with_(base, trainer__n_gpus_per_node=6))
    assert "128·8 = 1024" in message and "6 data-parallel ranks" in message
    assert "lcm(6, 1024) = 3072" in message
    assert "N_GPUS_PER_NODE=4 or 8 (NNODES=1)" in message
    # 126·8 and 129·8 are the nearest mini-batches that 6 ranks divide
    assert "ppo_mini_batch_size=126 or 129" in message
    for alternative in (4, 8):
        preflight.check_batch_shape(with_(base, trainer__n_gpus_per_node=alternative))
    for mini in (126, 129):
        preflight.check_batch_shape(
            with_(
                base,
                trainer__n_gpus_per_node=6,
                data__train_batch_size=mini,
                actor_rollout_ref__actor__ppo_mini_batch_size=mini,
            )
        )


def test_three_nodes_suggest_other_node_counts(base):
    message = shape_error(with_(base, trainer__nnodes=3))
    assert "24 data-parallel ranks" in message and "NNODES=2 or 4 (N_GPUS_PER_NODE=8)" in message


def test_the_rollout_tp_must_divide_the_gpus(base):
    message = shape_error(with_(base, actor_rollout_ref__rollout__tensor_model_parallel_size=3))
    assert "vLLM TP·DP·PP = 3" in message and "8 GPUs" in message
    preflight.check_batch_shape(with_(base, actor_rollout_ref__rollout__tensor_model_parallel_size=2))
    # a replica wider than a node must cover whole nodes: TP 8 over nodes of 6 GPUs (24 GPUs in all) does not
    wide = with_(base, trainer__nnodes=4, trainer__n_gpus_per_node=6)
    assert "multiple of n_gpus_per_node" in shape_error(with_(wide, actor_rollout_ref__rollout__tensor_model_parallel_size=8))


def test_sequence_parallel_changes_the_data_parallel_size(base):
    sp2 = with_(base, actor_rollout_ref__actor__fsdp_config__ulysses_sequence_parallel_size=2)
    assert "over 4 data-parallel ranks" in preflight.check_batch_shape(sp2)
    assert "ulysses_sequence_parallel_size 3" in shape_error(
        with_(base, actor_rollout_ref__actor__ulysses_sequence_parallel_size=3)
    )


def test_the_train_batch_must_be_whole_mini_batches(base):
    preflight.check_batch_shape(with_(base, actor_rollout_ref__actor__ppo_mini_batch_size=64))
    assert "not a multiple of actor.ppo_mini_batch_size 48" in shape_error(
        with_(base, actor_rollout_ref__actor__ppo_mini_batch_size=48)
    )
    assert "ppo_mini_batch_size 256 > data.train_batch_size 128" in shape_error(
        with_(base, actor_rollout_ref__actor__ppo_mini_batch_size=256)
    )


def test_micro_batches_without_dynamic_batching(base):
    static = with_(
        base,
        actor_rollout_ref__actor__use_dynamic_bsz=False,
        actor_rollout_ref__actor__ppo_micro_batch_size_per_gpu=4,
        actor_rollout_ref__rollout__log_prob_micro_batch_size_per_gpu=8,
    )
    preflight.check_batch_shape(static)
    message = shape_error(with_(static, actor_rollout_ref__actor__ppo_micro_batch_size_per_gpu=3))
    assert "ppo_micro_batch_size_per_gpu=3" in message and "128 samples per rank" in message
    message = shape_error(with_(static, actor_rollout_ref__rollout__log_prob_micro_batch_size_per_gpu=24))
    assert "log_prob_micro_batch_size_per_gpu=24" in message
    assert "needs actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu" in shape_error(
        with_(static, actor_rollout_ref__rollout__log_prob_micro_batch_size_per_gpu=None)
    )


def test_token_budgets_must_hold_one_full_sequence(base):
    # 4096 + 4096 tokens: a budget of 4096 fails when the first long sequence arrives, mid-run
    message = shape_error(with_(base, actor_rollout_ref__actor__ppo_max_token_len_per_gpu=4096))
    assert "ppo_max_token_len_per_gpu=4096" in message and "= 8192" in message and "2× = 16384" in message
    # the log-prob budget follows the actor's unless set; set on its own it is checked too
    message = shape_error(with_(base, actor_rollout_ref__rollout__log_prob_max_token_len_per_gpu=6000))
    assert "rollout.log_prob_max_token_len_per_gpu=6000" in message
    kl = with_(base, actor_rollout_ref__actor__use_kl_loss=True, actor_rollout_ref__ref__log_prob_max_token_len_per_gpu=100)
    assert "ref.log_prob_max_token_len_per_gpu=100" in shape_error(kl)
    # sequence parallelism multiplies the budget
    preflight.check_batch_shape(
        with_(
            base,
            actor_rollout_ref__actor__ppo_max_token_len_per_gpu=4096,
            actor_rollout_ref__rollout__log_prob_max_token_len_per_gpu=4096,
            actor_rollout_ref__actor__fsdp_config__ulysses_sequence_parallel_size=2,
        )
    )


def test_fewer_rows_than_one_batch_are_refused(base, tmp_path):
    small = rows_file(tmp_path / "small.parquet", 100)
    with pytest.raises(PreflightError, match=r"100 rows < data.train_batch_size 128.*0 steps.*<= 100"):
        preflight.check_train_rows(with_(base, data__train_files=str(small)))
    report = preflight.check_train_rows(with_(base, data__train_batch_size=50, data__train_files=[str(small)] * 2))
    assert report.startswith("200 train rows: 4 step(s) per epoch")
    with pytest.raises(PreflightError, match="60 rows"):  # train_max_samples caps the rows
        preflight.check_train_rows(with_(base, data__train_max_samples=60))


def test_checkpoint_retention_and_directory(base):
    assert "keeping 2" in preflight.check_checkpoints(base)
    with pytest.raises(PreflightError, match="max_actor_ckpt_to_keep='two'"):
        preflight.check_checkpoints(with_(base, trainer__max_actor_ckpt_to_keep="two"))
    with pytest.raises(PreflightError, match="max_actor_ckpt_to_keep=0"):
        preflight.check_checkpoints(with_(base, trainer__max_actor_ckpt_to_keep=0))
    relative = with_(base, trainer__default_local_dir="checkpoints/p/e")
    preflight.check_checkpoints(relative)  # one node: verl resolves it against the working directory
    with pytest.raises(PreflightError, match=r"relative with trainer.nnodes=2.*CHECKPOINT_DIR"):
        preflight.check_checkpoints(with_(relative, trainer__nnodes=2))


def test_loggers_match_verls_tracking_backends(base):
    from verl.utils.tracking import Tracking

    assert tuple(Tracking.supported_backend) == preflight.VERL_LOGGERS
    assert preflight.check_loggers(with_(base, trainer__logger=["console", "wandb"])) == "loggers ['console', 'wandb']"
    with pytest.raises(PreflightError, match=r"unknown logger\(s\) \['tensorbaord'\]"):
        preflight.check_loggers(with_(base, trainer__logger=["console", "tensorbaord"]))


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/v1", "http://localhost:8000", "http://[::1]:8000/v1", "http://127.0.1.1:8000/v1",
     "http://0.0.0.0:8000/v1", "http://judge:8000/v1,http://127.0.0.1:8001/v1"],
)  # fmt: skip
def test_loopback_judge_is_refused_on_several_nodes(url):
    preflight.check_judge_urls_for_nodes(url, nnodes=1)
    with pytest.raises(PreflightError, match=r"loopback address but trainer.nnodes=2.*JUDGE_HOST"):
        preflight.check_judge_urls_for_nodes(url, nnodes=2)


def test_reachable_judge_addresses_pass_on_several_nodes():
    preflight.check_judge_urls_for_nodes("http://192.0.2.55:8000/v1,http://10.1.2.3:8001/v1", nnodes=4)
    preflight.check_judge_urls_for_nodes("http://judge-host.invalid:8000/v1", nnodes=2)  # the reachability check's job


def test_cli_reports_one_line_and_exit_1(base, tmp_path, capsys):
    import yaml

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_(base, trainer__n_gpus_per_node=6)))
    assert preflight.main(["--config", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("preflight: error: batch shape:")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base))
    assert preflight.main(["--config", str(good)]) == 0
    assert "256 train rows: 2 step(s) per epoch" in capsys.readouterr().err
