"""The node check: one Ray task per node of the running cluster checks the judge as that node's workers see it.

A real cluster (``ray start --head --block``, its own temp dir and port, 8 logical GPUs) is started with the
environment a careless multi-node setup gives a worker node: a judge API key different from the launcher's. The
launcher's own judge check passes (its key is right), the node check inside the Ray task fails with the judge's
401, and the launch stops with one line before verl starts. With the node's key accepted the check passes, and the
same check run in the checking process itself (which never had the node's key) is rejected.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_launcher_geo3k import JUDGE_MODEL, at_least_rows, geo3k_rows, launcher_env, run_launcher, write_parquet

from perception_r1.testing import OpenAITestServer

pytestmark = pytest.mark.slow

LAUNCHER_KEY = "sk-launcher-key"
NODE_KEY = "sk-key-exported-only-on-the-ray-node"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """``ray start --head`` in its own session; the raylet's env has ``VLLM_SERVER_API_KEY=NODE_KEY``."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="pr1ray_", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "JUDGE_", "RAY_"))}
    env.update(VLLM_SERVER_API_KEY=NODE_KEY, PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}")
    env["RAY_AUTH_MODE"] = "disabled"  # Ray 2.60 turns on token auth for `ray start`; drivers would need the token
    log = open(Path(temp_dir) / "ray_start.log", "w")  # noqa: SIM115 - closed in teardown
    ray_bin = Path(sys.executable).parent / "ray"
    argv = [str(ray_bin), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--num-gpus=8",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
            "--object-store-memory=100000000", "--block"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        log_file = Path(temp_dir) / "ray_start.log"
        while "will now block forever" not in log_file.read_text():  # printed once every process is up
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start did not come up: {log_file.read_text()[-2000:]}")
            time.sleep(1)
        yield address
    finally:  # only the process group this fixture started: SIGTERM, a grace period, then SIGKILL
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        time.sleep(2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("nodes")
    small = write_parquet(tmp / "train.parquet", geo3k_rows(shared_data))
    return {"train": at_least_rows(small), "val": small, "tmp": tmp}


def compose_config(path: Path, env: dict[str, str], *overrides: str) -> Path:
    """The config the launchers compose (our main_ppo wrapper, ``--cfg job``), written to ``path``."""
    proc = subprocess.run(
        [sys.executable, "-m", "perception_r1.verl_plugin.main_ppo", *overrides, "--cfg", "job"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    path.write_text(proc.stdout)
    return path


def geo3k_overrides(data: dict[str, Path], checkpoint_dir: Path, nnodes: int = 1) -> list[str]:
    return [
        "actor_rollout_ref.model.path=/models/x",
        f"data.train_files={data['train']}",
        f"data.val_files={data['val']}",
        "data.train_batch_size=128",
        "actor_rollout_ref.actor.ppo_mini_batch_size=128",
        "actor_rollout_ref.rollout.n=8",
        f"trainer.nnodes={nnodes}",
        "trainer.n_gpus_per_node=8",
        f"trainer.default_local_dir={checkpoint_dir}",
        "trainer.logger=[console]",
        "actor_rollout_ref.actor.use_dynamic_bsz=True",
    ]


def run_node_check(config: Path, env: dict[str, str], *flags: str) -> tuple[subprocess.CompletedProcess, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "perception_r1.verl_plugin.preflight", "--config", str(config), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def test_a_key_only_on_the_launcher_stops_the_launch_in_the_ray_task(ray_cluster, data, tmp_path):
    with OpenAITestServer(models=[JUDGE_MODEL], api_key=LAUNCHER_KEY) as judge:
        env = launcher_env(
            tmp_path, DRY_RUN="0", CHECK_NODES="1", RAY_ADDRESS=ray_cluster, TRAIN_FILE=str(data["train"]),
            VAL_FILE=str(data["val"]), VLLM_SERVER_BASE_URL=judge.base_url, VLLM_MODEL_NAME=JUDGE_MODEL,
            VLLM_SERVER_API_KEY=LAUNCHER_KEY, CHECKPOINT_DIR=str(tmp_path / "ckpt"), N_GPUS_PER_NODE="8",
        )  # fmt: skip
        proc = run_launcher(env, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    ok = [line for line in proc.stderr.splitlines() if line.startswith("preflight: ok")]
    assert len(ok) == 1 and f"judge {JUDGE_MODEL}" in ok[0]  # the launcher's judge check passed with its key
    errors = [line for line in proc.stderr.splitlines() if line.startswith("preflight: error:")]
    assert len(errors) == 1, proc.stderr
    assert "rejected the API key (HTTP 401" in errors[0] and "1 of 1 node(s) failed the node check" in errors[0]
    assert errors[0].startswith("preflight: error: node ")
    assert NODE_KEY not in proc.stderr and LAUNCHER_KEY not in proc.stderr
    assert "perception_r1.verl_plugin.main_ppo" not in proc.stderr  # verl never started


def test_the_node_check_passes_with_the_nodes_key_and_runs_in_a_ray_worker(ray_cluster, data, tmp_path):
    with OpenAITestServer(models=[JUDGE_MODEL], api_key=NODE_KEY) as judge:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "JUDGE_", "RAY_"))}
        env.update(VLLM_SERVER_BASE_URL=judge.base_url, VLLM_MODEL_NAME=JUDGE_MODEL, RAY_ADDRESS=ray_cluster)
        config = compose_config(tmp_path / "cfg.yaml", env, *geo3k_overrides(data, tmp_path / "ckpt"))
        assert OmegaConf.load(config).ray_kwargs.ray_init.runtime_env.env_vars.VLLM_SERVER_BASE_URL == judge.base_url
        proc, pid = run_node_check(config, env, "--remote-judge", "--nodes")
        # the same judge check in the checking process itself fails: it has no key, only the Ray node has it
        local = subprocess.run([sys.executable, "-m", "perception_r1.verl_plugin.preflight", "--judge", "--dry-run"],
                               capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert local.returncode == 1 and "rejected the API key (HTTP 401" in local.stderr
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("preflight: ok")]
    assert "node check: 1 node(s) ok (" in line
    reported_pid = int(line.split(" pid ")[1].split(")")[0])
    assert reported_pid != pid  # answered by a Ray worker process, not by the checking process
    assert "do not see files written to the checkpoint dir" not in proc.stderr  # one machine: the marker is seen
    assert not list((tmp_path / "ckpt" / ".perception_r1_node_check").iterdir())  # the marker is removed


def test_nodes_without_the_data_or_the_gpus_are_refused(ray_cluster, data, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "JUDGE_", "RAY_"))}
    env["RAY_ADDRESS"] = ray_cluster
    overrides = geo3k_overrides(data, tmp_path / "ckpt")
    config = compose_config(tmp_path / "two.yaml", env, *overrides, "trainer.nnodes=2")
    proc, _ = run_node_check(config, env, "--nodes")
    assert proc.returncode == 1
    assert "trainer.nnodes=2 × n_gpus_per_node=8 but the Ray cluster has 1 node(s) with 8 GPUs" in proc.stderr
    gone = data["tmp"] / "vanished.parquet"
    config = compose_config(tmp_path / "gone.yaml", env, *overrides, f"data.val_files={gone}")
    proc, _ = run_node_check(config, env, "--nodes")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("preflight: error:")]
    assert proc.returncode == 1 and len(errors) == 1
    assert f"data file {gone} does not exist on this node" in errors[0]
