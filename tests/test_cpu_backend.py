"""The CPU backend's pieces (perception_r1.verl_plugin.cpu), each against the real verl / transformers / Ray code.

The whole backend runs verl's trainer in tests/test_train_cpu.py; these tests pin each workaround on its own so a
failure names the piece: platform selection, the process-group backend string, the unpinned offload policy, the
processor and image path without torchvision, the tiny models, the hf rollout server and its weight sync.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from perception_r1.testing.tiny_model import save_tiny_qwen2_vl
from perception_r1.verl_plugin import cpu
from perception_r1.verl_plugin.cpu import dedupe_backend, vision
from perception_r1.verl_plugin.cpu.platform import PlatformCPU

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny") / "qwen2_vl")


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=300,
    )


# ---------------------------------------------------------------------------------------------- platform


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("cpu:gloo,cpu:gloo", "cpu:gloo"),  # what verl builds on the cpu platform
        ("cpu:gloo,cuda:nccl", "cpu:gloo,cuda:nccl"),  # the GPU string is left alone
        ("gloo", "gloo"),
        (None, None),
        ("cpu:gloo, cpu:gloo ,cuda:nccl", "cpu:gloo,cuda:nccl"),
    ],
)
def test_dedupe_backend(given, expected) -> None:
    assert dedupe_backend(given) == expected


def test_torch_rejects_the_duplicated_backend_string_that_verl_builds() -> None:
    # The reason the fix exists: torch refuses two backends for one device type.
    from torch.distributed import Backend

    with pytest.raises(ValueError):
        torch.distributed.distributed_c10d.BackendConfig(Backend("cpu:gloo,cpu:gloo"))


def test_cpu_platform_is_chosen_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    assert PlatformCPU().is_platform_available(use_smi_check=True) is False  # never hijacks auto-detection
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    assert PlatformCPU().is_platform_available(use_smi_check=True) is True


def test_verl_runs_on_the_cpu_platform_in_a_fresh_process() -> None:
    """verl's own device helpers, the engine lookup, the rollout registries and a gloo process group."""
    code = """
import os, tempfile, torch.distributed as dist
import verl
from verl.utils.device import get_device_name, get_nccl_backend, get_device_id, get_torch_device, get_resource_name
from verl.utils.distributed import initialize_global_process_group_ray
from verl.workers.rollout.replica import get_rollout_replica_class
from verl.workers.rollout.base import get_rollout_class
from verl.workers.engine.base import EngineRegistry
import verl.workers.engine.fsdp.transformer_impl as impl
os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29000 + os.getpid() % 1000))
initialize_global_process_group_ray()
policy = impl.CPUOffloadPolicy(pin_memory=True)
print(get_device_name(), get_nccl_backend(), get_device_id(), get_resource_name(), dist.get_backend(),
      get_rollout_replica_class("hf").__name__, get_rollout_class("hf").__name__,
      EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__, policy.pin_memory,
      get_torch_device().memory_allocated(), sep="|")
"""
    proc = _run_python(code, VERL_PLATFORM="cpu", VERL_USE_EXTERNAL_MODULES=cpu.MODULE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fields = proc.stdout.strip().splitlines()[-1].split("|")
    assert fields == [
        "cpu",
        "gloo",
        "cpu",
        "GPU",
        "cpu:gloo",  # torch accepted the de-duplicated string
        "HFRolloutReplica",
        "HFServerAdapter",
        "FSDPEngineWithLMHead",
        "False",
        "0",
    ]


def test_without_the_platform_selected_nothing_is_patched() -> None:
    code = """
import torch.distributed as dist
import verl
import verl.workers.engine.fsdp.transformer_impl as impl
from verl.workers.rollout.replica import get_rollout_replica_class
print(getattr(dist.init_process_group, "__perception_r1__", False), impl.CPUOffloadPolicy(pin_memory=True).pin_memory,
      get_rollout_replica_class("hf").__name__, sep="|")
"""
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "VERL_USE_EXTERNAL_MODULES": cpu.MODULE},
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the hf rollout is registered (harmless), but no fix touches torch or verl
    assert proc.stdout.strip().splitlines()[-1].split("|") == ["False", "True", "HFRolloutReplica"]


# ---------------------------------------------------------------------------------------------- vision


def test_qwen_vl_utils_stand_in_matches_the_project_image_fetch(tmp_path: Path) -> None:
    from perception_r1.testing.verl_dataset import fetch_image

    path = tmp_path / "a.png"
    Image.new("RGBA", (250, 180), (10, 20, 30, 128)).save(path)
    entry = {"type": "image", "image": str(path), "min_pixels": 3136, "max_pixels": 12544}
    messages = [{"role": "user", "content": [entry, {"type": "text", "text": "what?"}]}]
    images, videos = vision._process_vision_info(messages, image_patch_size=14)
    assert videos is None
    assert len(images) == 1
    expected = fetch_image(dict(entry), 14)
    assert images[0].size == expected.size
    assert images[0].size[0] % 28 == 0 and images[0].size[1] % 28 == 0
    assert images[0].size[0] * images[0].size[1] <= 12544
    assert images[0].tobytes() == expected.tobytes()


def test_qwen_vl_utils_stand_in_refuses_videos() -> None:
    with pytest.raises(NotImplementedError, match="video"):
        vision._process_vision_info([{"role": "user", "content": [{"type": "video", "video": "x.mp4"}]}])


def test_processor_loads_from_a_transformers_saved_folder(tmp_path: Path, tiny_model: Path) -> None:
    """A verl checkpoint's huggingface/ folder (processor_config.json, chat_template.jinja) loads the same processor."""
    first = vision.load_processor(tiny_model)
    saved = tmp_path / "saved"
    first.save_pretrained(saved)
    (saved / "config.json").write_text((tiny_model / "config.json").read_text())
    assert not (saved / "preprocessor_config.json").exists()
    again = vision.load_processor(saved)
    image = Image.new("RGB", (200, 140), (200, 10, 10))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]}]
    outputs = []
    for processor in (first, again):
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        outputs.append(processor(text=[text], images=[image], return_tensors="pt"))
    assert torch.equal(outputs[0]["input_ids"], outputs[1]["input_ids"])
    assert torch.equal(outputs[0]["pixel_values"], outputs[1]["pixel_values"])
    assert type(first).__name__ == type(again).__name__ == "Qwen2VLProcessor"


# ---------------------------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_tiny_model_is_small_real_vocabulary_and_reused(tmp_path: Path, family: str) -> None:
    from transformers import AutoModelForImageTextToText

    path = save_tiny_qwen2_vl(tmp_path / family, family=family)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert save_tiny_qwen2_vl(tmp_path / family, family=family) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # a complete build is reused
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == family
    model = AutoModelForImageTextToText.from_pretrained(path)
    params = sum(p.numel() for p in model.parameters())
    assert 9_000_000 < params < 12_000_000
    processor = vision.load_processor(path)
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert len(processor.tokenizer) >= 151657
    assert model.get_input_embeddings().weight.shape[0] == 151936


def test_tiny_model_rejects_an_unknown_family(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="family"):
        save_tiny_qwen2_vl(tmp_path / "x", family="llava")


# ---------------------------------------------------------------------------------------------- hf rollout server


class _RolloutConfig:
    prompt_length = 256
    response_length = 12


class _ModelConfig(dict):
    pass


@pytest.fixture(scope="module")
def server(tiny_model: Path):
    from perception_r1.verl_plugin.cpu.rollout import HFRolloutServer

    server = HFRolloutServer(_RolloutConfig(), _ModelConfig(local_path=str(tiny_model)), replica_rank=0)
    assert server.load() == "Qwen2VLForConditionalGeneration"
    return server


def _processed(server, image: Image.Image):
    processor = server.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[image], return_tensors="pt")


def _image_prompt(server, image: Image.Image) -> list[int]:
    return _processed(server, image)["input_ids"][0].tolist()


def _noise_image(width: int = 112, height: int = 84) -> Image.Image:
    import numpy as np

    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_server_generates_from_images_with_raw_log_probs(server) -> None:
    image = _noise_image()
    prompt = _image_prompt(server, image)
    params = {"temperature": 0.0, "logprobs": True}
    out = asyncio.run(server.generate(prompt, dict(params), "r1", image_data=[image]))
    assert 1 <= len(out.token_ids) <= _RolloutConfig.response_length
    assert len(out.log_probs) == len(out.token_ids)
    assert all(lp <= 0.0 for lp in out.log_probs)
    assert out.extra_fields["global_steps"] is None  # no weights synced yet
    again = asyncio.run(server.generate(prompt, dict(params), "r2", image_data=[image]))
    assert again.token_ids == out.token_ids  # greedy is deterministic
    # The log-probs are the model's own with M-RoPE positions: recompute the first token's from a forward pass on
    # the processor's own output (what verl's actor sees), not on the server's inputs.
    with torch.no_grad():
        logits = server.model(**_processed(server, image)).logits[0, -1]
    # (tolerance: text positions instead of M-RoPE move this log-prob by ~2e-3 on this model and image)
    assert out.log_probs[0] == pytest.approx(float(torch.log_softmax(logits, -1)[out.token_ids[0]]), abs=2e-5)


def test_server_refuses_a_prompt_whose_image_pads_do_not_match(server) -> None:
    image = Image.new("RGB", (112, 84), (0, 90, 200))
    prompt = _image_prompt(server, image)
    bigger = Image.new("RGB", (224, 168), (0, 90, 200))
    with pytest.raises(ValueError, match="image_pad"):
        asyncio.run(server.generate(prompt, {"temperature": 0.0}, "r3", image_data=[bigger]))


def test_server_max_tokens_budget(server) -> None:
    prompt = server.processor.tokenizer("hello there")["input_ids"]
    out = asyncio.run(server.generate(prompt, {"temperature": 1.0, "max_tokens": 3}, "r4"))
    assert len(out.token_ids) <= 3


def test_server_weight_update_changes_generation_and_refuses_unknown_names(server) -> None:
    original = {k: v.clone() for k, v in server.model.state_dict().items()}
    prompt = server.processor.tokenizer("2 + 3 =")["input_ids"]
    before = asyncio.run(server.generate(prompt, {"temperature": 0.0}, "a")).token_ids
    perturbed = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in original.items()}
    assert server.update_weights(perturbed, global_steps=7) == len(perturbed)
    after = asyncio.run(server.generate(prompt, {"temperature": 0.0}, "b"))
    assert after.extra_fields["global_steps"] == 7
    assert after.token_ids != before
    with pytest.raises(ValueError, match="match no rollout parameter"):
        server.update_weights({"model.not_a_layer.weight": torch.zeros(1)})
    name = next(iter(original))
    with pytest.raises(ValueError, match="shape"):
        server.update_weights({name: torch.zeros(3, 3, 3, 3)})
    server.update_weights(original)


@pytest.mark.slow
def test_adapter_ships_actor_weights_to_the_named_server_through_ray(tiny_model: Path) -> None:
    """The worker-side adapter finds its replica's server by name and every tensor arrives (real Ray actors)."""
    import ray

    from perception_r1.verl_plugin.cpu.rollout import HFRolloutServer, HFServerAdapter, server_name

    class Config:
        tensor_model_parallel_size = data_parallel_size = pipeline_model_parallel_size = 1
        prompt_length, response_length = 64, 4

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        actor = (
            ray.remote(HFRolloutServer)
            .options(name=server_name(3), num_cpus=0)
            .remote(config=Config(), model_config={"local_path": str(tiny_model)}, replica_rank=3)
        )
        ray.get(actor.load.remote())
        adapter = HFServerAdapter.__new__(HFServerAdapter)  # BaseRollout.__init__ converts verl configs
        adapter.config, adapter.replica_rank, adapter.has_server, adapter._server = Config(), 3, True, None
        state = ray.get(actor.state_dict_items.remote())
        new_state = {k: (v + 1.0 if v.is_floating_point() else v) for k, v in state.items()}
        asyncio.run(adapter.update_weights(iter(new_state.items()), global_steps=4))
        got = ray.get(actor.state_dict_items.remote())
        assert all(torch.equal(got[k], new_state[k]) for k in new_state)
        # a non-server rank iterates the weights (collective gathers) but sends nothing
        silent = HFServerAdapter.__new__(HFServerAdapter)
        silent.config, silent.replica_rank, silent.has_server, silent._server = Config(), 3, False, None
        consumed = []
        asyncio.run(silent.update_weights((consumed.append(k) or (k, v) for k, v in state.items())))
        assert len(consumed) == len(state)
        assert all(torch.equal(ray.get(actor.state_dict_items.remote())[k], new_state[k]) for k in new_state)
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------- launcher


SMALL_BATCH = ("data.train_batch_size=4", "actor_rollout_ref.actor.ppo_mini_batch_size=4")


def _compose(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    from test_launcher_geo3k import geo3k_rows, launcher_env, write_parquet

    from perception_r1.testing import OpenAITestServer

    shared = Path(os.environ.get("PERCEPTION_R1_SHARED_DATA", REPO.parent / "shared" / "data"))
    data = write_parquet(tmp_path / "train.parquet", geo3k_rows(shared)[:4])
    with OpenAITestServer(models=["judge"]) as judge:
        return subprocess.run(
            # 4 rows: a batch of 4 prompts (the preflight refuses a batch larger than the data)
            ["bash", str(REPO / "examples" / "run_qwen2_5_vl_7b_geo3k_visual.sh"), *SMALL_BATCH],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
            env=launcher_env(
                tmp_path,
                DRY_RUN="1",
                TRAIN_FILE=str(data),
                VAL_FILE=str(data),
                VLLM_SERVER_BASE_URL=judge.base_url,
                VLLM_MODEL_NAME="judge",
                N_GPUS_PER_NODE="2",
                **env,
            ),
        )


def test_cpu_backend_launcher_composes_the_cpu_config(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    proc = _compose(tmp_path, BACKEND="cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flash_attn is not importable" not in proc.stderr  # the CPU backend picks eager without a warning
    config = OmegaConf.create(proc.stdout)
    rollout, actor = config.actor_rollout_ref.rollout, config.actor_rollout_ref.actor
    assert rollout.name == "hf"  # the backend's overrides come after the task's vllm setting
    assert actor.strategy == config.actor_rollout_ref.ref.strategy == "fsdp2"
    assert config.actor_rollout_ref.model.use_remove_padding is False
    assert config.actor_rollout_ref.model.override_config.attn_implementation == "eager"
    assert config.trainer.device == "cpu"
    assert config.ray_kwargs.ray_init.num_gpus == 2
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    assert env_vars.VERL_PLATFORM == "cpu"
    assert env_vars.VERL_USE_EXTERNAL_MODULES == cpu.MODULE


def test_gpu_backend_launcher_is_unchanged(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    proc = _compose(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = OmegaConf.create(proc.stdout)
    assert config.actor_rollout_ref.rollout.name == "vllm"
    assert config.trainer.device == "cuda"
    assert "VERL_PLATFORM" not in (config.ray_kwargs.ray_init.runtime_env.get("env_vars") or {})


def test_unknown_backend_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = _compose(tmp_path, BACKEND="tpu")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "BACKEND=tpu: expected gpu or cpu"
