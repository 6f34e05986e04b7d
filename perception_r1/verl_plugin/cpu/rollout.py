"""``hf``: a rollout server that runs ``transformers`` ``generate``, for verl's hybrid engine without vLLM.

verl 0.9.1 registers vLLM, SGLang and TensorRT-LLM replicas only (``RolloutReplicaRegistry``), and its old
``HFRollout`` is not wired into server mode, so nothing can generate on a machine without a GPU. Three pieces fill
the gap, each through a public registry:

- :class:`HFRolloutServer`, a Ray actor with the token-in/token-out interface verl's agent loop calls on a vLLM
  server (``generate(prompt_ids, sampling_params, request_id, image_data, ...) -> TokenOutput``, plus the
  sleep/wake/abort controls the trainer sends between phases). It reruns the processor's image side on the
  agent loop's images (the prompt's ``<|image_pad|>`` runs were expanded from the same images) and returns the raw
  log-probabilities of the sampled tokens when asked, like vLLM's default.
- :class:`HFRolloutReplica` (``RolloutReplicaRegistry``: ``actor_rollout_ref.rollout.name=hf``) starts one server
  per replica next to the replica's first training worker.
- :class:`HFServerAdapter` (verl's worker-side rollout registry) lives in each FSDP worker; after every actor update
  verl's naive checkpoint engine hands it the full weights, which it ships to its server. Every rank iterates the
  weight generator (FSDP2 gathers are collective); only a replica's first rank sends.

Every output carries ``extra_fields["global_steps"]`` (the weight version), which verl's training metrics read.
Generation is sequential per server: this backend exists for tests and the CPU quickstart, not for throughput.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "hf"
"""``actor_rollout_ref.rollout.name`` of this backend."""

SERVER_NAME_PREFIX = "perception_r1_hf_server_"
IMAGE_PAD_TOKEN = "<|image_pad|>"


def server_name(replica_rank: int) -> str:
    """The Ray actor name of replica ``replica_rank``'s server (the adapter finds it by name)."""
    return f"{SERVER_NAME_PREFIX}{replica_rank}"


def _local_model_path(model_config: Any) -> str:
    """The local directory of the model: verl passes the model config as a DictConfig or an ``HFModelConfig``."""
    local = (
        model_config.get("local_path") if hasattr(model_config, "get") else getattr(model_config, "local_path", None)
    )
    if local:
        return str(local)
    from verl.utils.fs import copy_to_local

    return copy_to_local(str(model_config.path))


def _load_processor(path: str) -> Any:
    from .vision import load_processor

    return load_processor(path)


class HFRolloutServer:
    """One replica's generation server: a ``transformers`` model in fp32 on the host, eager attention."""

    def __init__(self, config: Any, model_config: Any, replica_rank: int) -> None:
        self.config = config
        self.model_path = _local_model_path(model_config)
        self.replica_rank = replica_rank
        self.global_steps: int | None = None
        self.model: Any = None
        self.processor: Any = None
        self.eos_token_ids: list[int] = []
        self.pad_token_id: int | None = None
        self._lock = asyncio.Lock()

    def load(self) -> str:
        """Load the model and processor; returns the model class name."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, GenerationConfig

        hf_config = AutoConfig.from_pretrained(self.model_path)
        auto_cls = AutoModelForImageTextToText if hasattr(hf_config, "vision_config") else AutoModelForCausalLM
        self.model = auto_cls.from_pretrained(self.model_path, dtype=torch.float32, attn_implementation="eager")
        self.model.eval()
        self.processor = _load_processor(self.model_path) if hasattr(hf_config, "vision_config") else None
        try:
            generation = GenerationConfig.from_pretrained(self.model_path)
        except OSError:
            generation = self.model.generation_config
        eos = (
            generation.eos_token_id if generation.eos_token_id is not None else hf_config.get_text_config().eos_token_id
        )
        self.eos_token_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        pad = generation.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else None)
        return type(self.model).__name__

    # ------------------------------------------------------------------ generation

    def _vision_inputs(
        self, prompt_ids: list[int], image_data: list[Any] | None, mm_processor_kwargs: dict | None
    ) -> dict[str, torch.Tensor]:
        if not image_data:
            return {}
        if self.processor is None:
            raise ValueError(f"{self.model_path}: images given to a text-only model")
        image_processor = self.processor.image_processor
        kwargs = {k: v for k, v in (mm_processor_kwargs or {}).items() if k in ("min_pixels", "max_pixels")}
        out = image_processor(images=list(image_data), return_tensors="pt", **kwargs)
        grid = out["image_grid_thw"]
        merge = getattr(image_processor, "merge_size", 2)
        expected = int((grid.prod(dim=-1) // (merge * merge)).sum())
        pad_id = self.processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD_TOKEN)
        found = sum(1 for t in prompt_ids if t == pad_id)
        if found != expected:
            raise ValueError(
                f"prompt has {found} {IMAGE_PAD_TOKEN} tokens but its {len(image_data)} image(s) make {expected}: "
                "the agent loop and the rollout server processed the images differently"
            )
        return {"pixel_values": out["pixel_values"], "image_grid_thw": grid}

    def _max_tokens(self, prompt_len: int, sampling_params: dict[str, Any]) -> int:
        # Same budget rule as verl's vLLM server: an explicit max_tokens, else the configured response length capped
        # by what is left of prompt_length + response_length.
        limit = sampling_params.pop("max_tokens", None) or sampling_params.pop("max_new_tokens", None)
        if limit is None:
            limit = min(
                self.config.response_length, self.config.prompt_length + self.config.response_length - prompt_len
            )
        return max(1, int(limit))

    @torch.no_grad()
    def _generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: list[Any] | None,
        mm_processor_kwargs: dict | None,
    ) -> TokenOutput:
        params = dict(sampling_params)
        want_logprobs = bool(params.pop("logprobs", False))
        max_new_tokens = self._max_tokens(len(prompt_ids), params)
        temperature = float(params.get("temperature", 1.0) or 0.0)
        top_p = float(params.get("top_p", 1.0) or 1.0)
        top_k = int(params.get("top_k", -1) or -1)
        input_ids = torch.tensor([prompt_ids], dtype=torch.long)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        inputs.update(self._vision_inputs(prompt_ids, image_data, mm_processor_kwargs))
        sampling: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling.update(temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else 0)
        if "repetition_penalty" in params and params["repetition_penalty"] not in (None, 1.0):
            sampling["repetition_penalty"] = float(params["repetition_penalty"])
        out = self.model.generate(
            **inputs,
            **sampling,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_token_ids or None,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            output_logits=want_logprobs,
        )
        tokens = out.sequences[0, input_ids.shape[1] :].tolist()
        log_probs = None
        if want_logprobs:
            # Raw (unprocessed) log-probabilities of the sampled tokens, as vLLM reports by default.
            log_probs = [
                float(torch.log_softmax(logits[0].float(), dim=-1)[token])
                for logits, token in zip(out.logits, tokens, strict=True)
            ]
        return TokenOutput(
            token_ids=tokens,
            log_probs=log_probs,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={"global_steps": self.global_steps, "num_cached_tokens": 0},
        )

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> TokenOutput:
        """Token-in/token-out generation (the interface verl's ``LLMServerClient`` calls)."""
        if video_data or audio_data:
            raise NotImplementedError("the hf rollout server handles text and images only")
        from verl.utils.tokenizer import normalize_token_ids

        prompt_ids = normalize_token_ids(prompt_ids)
        async with self._lock:  # one generate at a time; the thread keeps the actor answering control calls
            return await asyncio.to_thread(self._generate, prompt_ids, sampling_params, image_data, mm_processor_kwargs)

    # ------------------------------------------------------------------ weights

    def update_weights(self, named_tensors: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """Load the actor's full weights (checkpoint names); returns how many tensors were loaded.

        Every tensor must land on a parameter or buffer of this model: a name that matches nothing means the rollout
        would keep sampling from stale weights, so it raises instead.
        """
        own = self.model.state_dict()
        mapping = getattr(self.model, "_checkpoint_conversion_mapping", None) or {}
        loaded: dict[str, torch.Tensor] = {}
        unknown = []
        for name, tensor in named_tensors.items():
            target = name
            if target not in own:
                import re

                for pattern, replacement in mapping.items():
                    target, n = re.subn(pattern, replacement, name)
                    if n:
                        break
            if target not in own:
                unknown.append(name)
                continue
            if tuple(own[target].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"weight {name}: shape {tuple(tensor.shape)}, rollout model has {tuple(own[target].shape)}"
                )
            loaded[target] = tensor
        if unknown:
            raise ValueError(f"{len(unknown)} actor weight(s) match no rollout parameter, e.g. {unknown[:3]}")
        with torch.no_grad():
            for target, tensor in loaded.items():
                own[target].copy_(tensor.to(own[target].dtype))
        if global_steps is not None:
            self.global_steps = global_steps
        return len(loaded)

    def state_dict_items(self) -> dict[str, torch.Tensor]:
        """The server's current weights (tests compare them with the actor's)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # ------------------------------------------------------------------ controls verl sends between phases

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def wake_up(self, tags: list[str] | None = None) -> None:
        pass

    async def sleep(self) -> None:
        pass

    async def clear_kv_cache(self) -> None:
        pass

    async def release_kv_cache(self) -> None:
        pass

    async def resume_kv_cache(self) -> None:
        pass

    async def wait_for_requests_to_drain(self) -> None:
        async with self._lock:
            pass

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict:
        return {"aborted": False, "request_id": request_id}

    async def resume_generation(self) -> None:
        pass

    async def start_profile(self, **kwargs: Any) -> None:
        pass

    async def stop_profile(self) -> None:
        pass


class HFRolloutReplica(RolloutReplica):
    """One :class:`HFRolloutServer` per replica, placed on the node of the replica's first training worker."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self) -> None:
        if self.rollout_mode != RolloutMode.HYBRID:
            raise NotImplementedError(
                f"the hf rollout runs in verl's hybrid mode only (got {self.rollout_mode}); "
                "use actor_rollout_ref.hybrid_engine=True"
            )
        node_id = await self.workers[0].__ray_call__.remote(lambda worker: ray.get_runtime_context().get_node_id())
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=server_name(self.replica_rank),
                num_cpus=0,
                max_concurrency=self.max_concurrency,
                scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                    node_id=node_id, soft=False
                ),
            )
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        model_class = await server.load.remote()
        logger.info("hf rollout replica %d: %s", self.replica_rank, model_class)
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"hf-rollout-replica-{self.replica_rank}"


class HFServerAdapter(BaseRollout):
    """The worker-side half: hands the actor's weights to this replica's server after each update."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.has_server = rank % world == 0
        self._server: Any = None

    def _server_handle(self) -> Any:
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        pass

    async def release(self) -> None:
        pass

    async def update_weights(
        self,
        weights: Iterable[tuple[str, torch.Tensor]],
        wire_format: str = "named_tensors",
        global_steps: int | None = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the hf rollout takes full named tensors, not {wire_format!r}")
        if peft_config is not None:
            raise NotImplementedError(
                "the hf rollout takes merged weights; set actor_rollout_ref.model.lora.merge=True"
            )
        state: dict[str, torch.Tensor] = {}
        for name, tensor in weights:  # every rank iterates: the FSDP2 full-tensor gathers are collective
            if self.has_server:
                state[name] = tensor.detach().to("cpu", copy=True)
        if self.has_server:
            await self._server_handle().update_weights.remote(state, global_steps=global_steps)
