"""``cpu``: a verl platform for machines without an accelerator (tests, CI, the quickstart).

verl 0.9.1 ships ``nvidia``, ``huawei`` and ``amd`` platforms and, finding none of them, falls back to ``nvidia``
(device ``cuda``, backend ``nccl``), so on a CPU-only machine every worker dies at its first ``torch.cuda`` call.
This platform is registered through verl's public ``PlatformRegistry`` and selected with ``VERL_PLATFORM=cpu``:
device ``cpu``, collective backend ``gloo``, and Ray's logical ``GPU`` resource (verl's placement groups always
ask for GPUs; the launcher gives Ray ``num_gpus=N`` logical ones). Auto-detection never picks it: without
``VERL_PLATFORM=cpu`` a GPU node behaves exactly as before.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

PLATFORM_NAME = "cpu"


def selected() -> bool:
    """Whether this process runs verl on the CPU platform (``VERL_PLATFORM=cpu``)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME


class _Stream:
    """``torch.cuda.Stream``-shaped no-op: CPU work is synchronous."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> _Event:
        return event or _Event()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _Event(_Stream):
    """``torch.cuda.Event``-shaped no-op."""

    def record(self, stream: Any = None) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _none(*args: Any, **kwargs: Any) -> None:
    return None


def _mem_get_info(*args: Any, **kwargs: Any) -> tuple[int, int]:
    # (free, total) bytes of host memory: verl only logs it.
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        free = os.sysconf("SC_AVPHYS_PAGES") * page_size
        return free, pages * page_size
    except (ValueError, OSError):
        return 0, 0


# The torch.cuda calls verl makes through ``get_torch_device()`` (empty_cache, synchronize, mem_get_info, streams,
# RNG state, memory counters, the FLOPs counter's get_device_name), answered for the host: memory counters are 0,
# streams and caches are no-ops, the RNG is torch's CPU generator.
CPU_DEVICE_MODULE = SimpleNamespace(
    is_available=lambda: True,
    is_initialized=lambda: True,
    device_count=lambda: 1,
    current_device=lambda: "cpu",
    set_device=_none,
    synchronize=_none,
    empty_cache=_none,
    ipc_collect=_none,
    reset_peak_memory_stats=_none,
    set_per_process_memory_fraction=_none,
    memory_allocated=_zero,
    memory_reserved=_zero,
    max_memory_allocated=_zero,
    max_memory_reserved=_zero,
    mem_get_info=_mem_get_info,
    get_device_name=lambda *args, **kwargs: "cpu",
    get_device_capability=lambda *args, **kwargs: (None, None),
    get_rng_state=lambda *args, **kwargs: torch.get_rng_state(),
    set_rng_state=lambda state, *args, **kwargs: torch.set_rng_state(state),
    manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed,
    Stream=_Stream,
    Event=_Event,
    current_stream=lambda *args, **kwargs: _Stream(),
    default_stream=lambda *args, **kwargs: _Stream(),
    stream=lambda *args, **kwargs: _Stream(),
    amp=torch.amp,
)


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl on the host CPU: gloo collectives, Ray's logical GPUs, no-op device memory management."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> Any:
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return selected()  # only when asked for: auto-detection on a GPU node must never land here

    def current_device(self) -> Any:
        # verl calls model.to(device=get_device_id()) and torch.device(get_device_id()): "cpu" serves both.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: Any) -> None:
        pass

    def synchronize(self, device_index: Any = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[None, None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets it for logical GPUs; nothing reads it on the CPU.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str) -> Any:
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> None:
        return None
