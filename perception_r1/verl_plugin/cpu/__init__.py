"""verl 0.9.1 on a CPU-only machine, unmodified, through its plugin points: tests, CI and the quickstart.

Load it in every process that imports verl with ``VERL_USE_EXTERNAL_MODULES=perception_r1.verl_plugin.cpu`` and
select it with ``VERL_PLATFORM=cpu`` (the launchers do both with ``BACKEND=cpu``; the ``main_ppo`` wrapper forwards
both to Ray workers). Importing it always registers the ``cpu`` platform and the ``hf`` rollout (harmless: neither is
picked unless asked for); the fixes below are applied only when the ``cpu`` platform is selected. Each answers one
verl code path that assumes an accelerator:

1. platform: ``PlatformRegistry`` has no CPU entry and falls back to ``nvidia`` (:mod:`.platform`).
2. process group: ``verl.utils.distributed`` builds ``"cpu:gloo,{device}:{backend}"`` = ``"cpu:gloo,cpu:gloo"``,
   which torch rejects (duplicate device); ``init_process_group`` gets the de-duplicated string.
3. training engine: the FSDP engines are registered for ``cuda``/``npu`` only
   (``verl/workers/engine/fsdp/transformer_impl.py``, ``EngineRegistry.register``); verl's ``VERL_ENGINE_DEVICE``
   override selects them (FSDP2: ``actor_rollout_ref.actor.strategy=fsdp2``; FSDP1's ``sync_module_states`` fails
   on CPU).
4. reference model: FSDP2 wraps it with ``CPUOffloadPolicy(pin_memory=True)`` (``transformer_impl.py``, the
   ``forward_only`` branch), and pinning needs an accelerator; the policy is made with ``pin_memory=False``.
5. rollout: no CPU rollout server exists; the ``hf`` replica and its worker adapter (:mod:`.rollout`).
6. vision: the Qwen-VL processor and ``qwen_vl_utils`` need torchvision (:mod:`.vision`).

The launcher adds the config side: Ray logical GPUs (``++ray_kwargs.ray_init.num_gpus``), ``trainer.device=cpu``,
``attn_implementation=eager`` and ``use_remove_padding=False`` (no flash-attn), ``rollout.name=hf``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .. import run_after_import
from .platform import PLATFORM_NAME, PlatformCPU, selected

MODULE = "perception_r1.verl_plugin.cpu"
"""The value of ``VERL_USE_EXTERNAL_MODULES`` that loads this backend."""

__all__ = ["MODULE", "PLATFORM_NAME", "PlatformCPU", "activate", "dedupe_backend", "selected"]


def dedupe_backend(backend: Any) -> Any:
    """``"cpu:gloo,cpu:gloo"`` -> ``"cpu:gloo"``: one backend per device type, first one wins."""
    if not isinstance(backend, str) or "," not in backend:
        return backend
    seen: dict[str, str] = {}
    for part in backend.split(","):
        device, _, name = part.partition(":")
        seen.setdefault(device.strip(), part.strip())
    return ",".join(seen.values())


def _patch_init_process_group() -> None:
    import torch.distributed as dist

    original = dist.init_process_group
    if getattr(original, "__perception_r1__", False):
        return

    @functools.wraps(original)
    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        if "backend" in kwargs:
            kwargs["backend"] = dedupe_backend(kwargs["backend"])
        elif args:
            args = (dedupe_backend(args[0]), *args[1:])
        return original(*args, **kwargs)

    init_process_group.__perception_r1__ = True  # type: ignore[attr-defined]
    dist.init_process_group = init_process_group


def _unpinned_offload_policy(module: Any) -> None:
    policy_cls = getattr(module, "CPUOffloadPolicy", None)
    if policy_cls is None or getattr(policy_cls, "__perception_r1__", False):
        return

    def unpinned(*args: Any, **kwargs: Any) -> Any:
        kwargs["pin_memory"] = False  # verl passes pin_memory=True explicitly
        return policy_cls(*args, **kwargs)

    unpinned.__perception_r1__ = True  # type: ignore[attr-defined]
    module.CPUOffloadPolicy = unpinned


def _register_rollout() -> None:
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from .rollout import ROLLOUT_NAME

    def load_replica() -> type:
        from .rollout import HFRolloutReplica

        return HFRolloutReplica

    RolloutReplicaRegistry.register(ROLLOUT_NAME, load_replica)
    # verl's worker-side rollout registry (get_rollout_class) is a module-level table of dotted paths.
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{MODULE}.rollout.HFServerAdapter"


_activated = False


def activate() -> None:
    """Apply the CPU fixes in this process (idempotent). Called on import when ``VERL_PLATFORM=cpu``."""
    global _activated
    if _activated:
        return
    _activated = True
    from . import vision

    os.environ.setdefault("VERL_ENGINE_DEVICE", "cuda")  # 3: verl's own override of the engine lookup key
    _patch_init_process_group()  # 2
    run_after_import("verl.workers.engine.fsdp.transformer_impl", _unpinned_offload_policy)  # 4
    run_after_import("verl.workers.config.model", vision.patch_hf_processor)  # 6
    run_after_import("verl.model_merger.base_model_merger", vision.patch_hf_processor)
    vision.install_qwen_vl_utils_fallback()


_register_rollout()
if selected():
    activate()
