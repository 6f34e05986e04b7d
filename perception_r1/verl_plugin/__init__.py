"""The adapter verl 0.9.1 loads: reward manager, training metrics, trainer registration, launcher preflight.

Nothing outside this package imports verl. Importing ``perception_r1.verl_plugin`` itself stays cheap (no verl,
no torch): it only defines :func:`setup_worker`, the Ray ``worker_process_setup_hook`` the ``main_ppo`` wrapper
installs so that every Ray worker process registers our trainer as soon as it imports verl's v1 trainers.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

TRAINER_MODE = "perception_sync"
"""``trainer.v1.trainer_mode`` of :class:`perception_r1.verl_plugin.trainer.PerceptionPPOTrainer`."""

SETUP_HOOK = "perception_r1.verl_plugin.setup_worker"
"""Value of ``ray_kwargs.ray_init.runtime_env.worker_process_setup_hook`` set by the ``main_ppo`` wrapper."""


def _plugin_kwargs() -> frozenset[str]:
    from ..judge.guard import GUARD_KEYS  # pure dataclasses: keeps this import cheap

    return frozenset({"isolation_workers", *GUARD_KEYS})


PLUGIN_KWARGS = _plugin_kwargs()
"""``reward.reward_kwargs`` keys the plugin itself uses (reward manager and trainer: ``isolation_workers`` and the
judge guard rails of :class:`perception_r1.judge.guard.JudgeGuardSettings`); every other key is a task setting."""


def say(line: str) -> None:
    """Print one ``perception_r1: <line>`` to stderr: the driver's console and Ray's forwarded worker logs show it
    with verl's own lines (the start-up budget, the judge guard, the breaker's stop)."""
    print(f"perception_r1: {line}", file=sys.stderr, flush=True)


def split_reward_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(task settings, plugin settings)``.

    ``ValueError`` naming the key when a setting is unknown to every task (a typo must not pass silently) or its
    value does not convert to the field's type: better at start-up than as a zero reward on every row.
    """
    from ..judge.guard import JudgeGuardSettings
    from ..rewards.registry import build_settings, check_setting_keys, registered_tasks

    plugin = {k: v for k, v in kwargs.items() if k in PLUGIN_KWARGS}
    settings = {k: v for k, v in kwargs.items() if k not in PLUGIN_KWARGS}
    try:
        check_setting_keys(settings)
        for task in registered_tasks().values():
            build_settings(task.settings, settings)
        value = plugin.get("isolation_workers")
        if value is not None and (not str(value).isdigit() or int(value) < 1):
            raise ValueError(f"setting 'isolation_workers': expected a positive integer, got {value!r}")
        guard = JudgeGuardSettings.from_kwargs(plugin)
        if guard.judge_canary_file and guard.judge_canaries_per_step:
            from ..judge.calibration import load_rows

            load_rows(guard.judge_canary_file)
    except ValueError as exc:
        raise ValueError(f"reward.reward_kwargs: {exc}") from None
    return settings, plugin


_V1_MODULE = "verl.trainer.ppo.v1"
_TRAINER_MODULE = "perception_r1.verl_plugin.trainer"


class _ChainedLoader(importlib.abc.Loader):
    """Runs the real loader, then the callbacks waiting for this module."""

    def __init__(self, loader: Any, callbacks: list[Callable[[ModuleType], None]]) -> None:
        self._loader = loader
        self._callbacks = callbacks

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        for callback in self._callbacks:
            callback(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ... of the real loader
        return getattr(self._loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs callbacks right after the first import of given modules in this process.

    Importing verl's trainers or engines costs seconds; doing it eagerly in every Ray worker (reward workers,
    idle pool workers) would be waste, so registrations and fixes are chained onto the import verl itself makes.
    """

    def __init__(self) -> None:
        self.pending: dict[str, list[Callable[[ModuleType], None]]] = {}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        callbacks = self.pending.pop(fullname, None)
        if callbacks is None:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ChainedLoader(spec.loader, callbacks)
                return spec
        return None


_after_import = _AfterImport()


def run_after_import(module_name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once ``module_name`` is imported in this process (now, if it already is)."""
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    _after_import.pending.setdefault(module_name, []).append(callback)
    if _after_import not in sys.meta_path:
        sys.meta_path.insert(0, _after_import)


def _register_trainer(_module: ModuleType) -> None:
    importlib.import_module(_TRAINER_MODULE)  # importing it registers the trainer


def setup_worker() -> None:
    """Make this process register the ``perception_sync`` trainer once verl's v1 trainers are imported.

    Used as Ray's ``worker_process_setup_hook`` (runs in each worker process at start-up); idempotent.
    """
    if _TRAINER_MODULE in sys.modules or _V1_MODULE in _after_import.pending.keys():
        return
    run_after_import(_V1_MODULE, _register_trainer)
