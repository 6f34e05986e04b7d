"""``python -m perception_r1.verl_plugin.main_ppo <hydra overrides>``: verl's ``main_ppo`` with our trainer.

A thin wrapper, not a fork: the config is verl's own (``pkg://verl.trainer.config``, ``ppo_trainer``) and the run
is verl's ``main_ppo.main``. Before hydra parses the command line it prepends:

- ``trainer.v1.trainer_mode=perception_sync`` (verl's sync trainer plus reward training metrics);
- ``ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=perception_r1.verl_plugin.setup_worker``: every Ray
  worker process (the TaskRunner included, on every node) registers that trainer when it imports verl's v1
  trainers;
- ``ray_kwargs.ray_init.runtime_env.env_vars.<NAME>`` for the non-secret judge and logger variables that are set
  (``VLLM_SERVER_BASE_URL``, ``VLLM_MODEL_NAME``, ``JUDGE_MAX_CONCURRENCY``, ``JUDGE_TIMEOUT``; ``SWANLAB_MODE``,
  ``SWANLAB_LOG_DIR``, ``WANDB_MODE``, ``WANDB_PROJECT``, ``WANDB_DIR``, ``WANDB_ENTITY``), so reward workers on
  other nodes find the judge and the TaskRunner logs where the launcher said, even on a cluster started by
  ``ray start``. API keys (``VLLM_SERVER_API_KEY``, ``SWANLAB_API_KEY``, ``WANDB_API_KEY``) are never put in the
  config (verl prints it): Ray workers inherit them from the environment of ``ray start`` on each node.

Overrides given on the command line come after these, so they win. ``--cfg job`` prints the composed config and
exits (the launchers' DRY_RUN). Before training starts, the reward settings are checked and a bad one ends the
run with one line on stderr and exit code 2. A run stopped by the judge breaker (``judge_failure_policy=abort``)
ends with its one line on stderr and exit code 3.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from . import SETUP_HOOK, TRAINER_MODE, split_reward_kwargs

JUDGE_ENV = (
    "VLLM_SERVER_BASE_URL",
    "VLLM_MODEL_NAME",
    "JUDGE_MAX_CONCURRENCY",
    "JUDGE_TIMEOUT",
    "JUDGE_CONNECT_TIMEOUT",
    "JUDGE_STRUCTURED_OUTPUTS",
)
"""Judge env vars copied into the Ray runtime env (never the API key)."""
CPU_BACKEND_ENV = (
    # the CPU backend (BACKEND=cpu launchers): every Ray process must load and select it
    "VERL_PLATFORM",
    "VERL_USE_EXTERNAL_MODULES",
    # verl's `file` logger (trainer.logger=[...,file]) writes where the TaskRunner is told
    "VERL_FILE_LOGGER_PATH",
)
BREAKER_EXIT = 3

LOGGER_ENV = ("SWANLAB_MODE", "SWANLAB_LOG_DIR", "WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "WANDB_ENTITY")
"""Logger settings copied into the Ray runtime env: verl builds the tracker inside the TaskRunner actor, which on
an existing cluster (``ray start``, ``ray job submit``) has the environment of ``ray start``, not the launcher's;
without them swanlab falls back to cloud mode and, without a TTY, raises after every model has loaded. Never their
API keys (``SWANLAB_API_KEY``, ``WANDB_API_KEY``): verl prints the config."""

FORWARDED_ENV = JUDGE_ENV + LOGGER_ENV + CPU_BACKEND_ENV
"""Every env var the wrapper copies into ``ray_kwargs.ray_init.runtime_env.env_vars`` when it is set."""

LEGACY_SECTIONS = ("custom_reward_function", "reward_model")
"""Top-level legacy reward sections that verl 0.9.1's v1 ``main_ppo`` silently ignores."""


def _quote(value: str) -> str:
    """A hydra override value as a single-quoted string (commas, colons and slashes stay literal)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def injected_overrides(environ: Any = None) -> list[str]:
    """The overrides the wrapper puts before the user's."""
    environ = os.environ if environ is None else environ
    overrides = [
        f"trainer.v1.trainer_mode={TRAINER_MODE}",
        f"++ray_kwargs.ray_init.runtime_env.worker_process_setup_hook={SETUP_HOOK}",
    ]
    for name in FORWARDED_ENV:
        value = environ.get(name)
        if value:
            overrides.append(f"++ray_kwargs.ray_init.runtime_env.env_vars.{name}={_quote(value)}")
    return overrides


class ConfigError(ValueError):
    """A configuration mistake reported as one line before any Ray/GPU work."""


def check_config(config: Any) -> None:
    """Raise :class:`ConfigError` for settings that would otherwise fail late or be silently ignored."""
    reward = config.reward
    manager = reward.reward_manager
    ours = manager.source == "importlib" and "perception_r1" in str(manager.module.path or "")
    if ours:
        try:
            split_reward_kwargs(dict(reward.get("reward_kwargs") or {}))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    from omegaconf import OmegaConf

    for section in LEGACY_SECTIONS:
        node = config.get(section)
        if node is None:
            continue
        for key, value in _leaves(OmegaConf.to_container(node, resolve=False), section):
            if value is not None:
                raise ConfigError(
                    f"{key}={value!r} is a legacy key that verl 0.9.1's main_ppo silently ignores; use reward.* keys"
                )


def _leaves(node: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}.{key}")]
    return [(prefix, node)]


def _run(config: Any) -> None:
    try:
        check_config(config)
    except ConfigError as exc:
        print(f"perception_r1 main_ppo: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if config.trainer.v1.trainer_mode != TRAINER_MODE:
        print(
            f"perception_r1 main_ppo: warning: trainer.v1.trainer_mode={config.trainer.v1.trainer_mode}: "
            "reward training metrics are off",
            file=sys.stderr,
        )
    from verl.trainer.main_ppo import main as verl_main

    # verl's main is decorated by hydra.main; __wrapped__ (functools.wraps) is its body, run on our composed config.
    try:
        verl_main.__wrapped__(config)
    except Exception as exc:
        message = breaker_message(exc)
        if message is None:
            raise
        print(f"perception_r1 main_ppo: error: {message}", file=sys.stderr)
        raise SystemExit(BREAKER_EXIT) from None


def breaker_message(exc: BaseException) -> str | None:
    """The one line of a judge-breaker stop, also when it arrives wrapped in Ray's ``RayTaskError``; else ``None``."""
    from ..judge.guard import JudgeBreakerTripped

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, JudgeBreakerTripped):
            cause = getattr(exc, "cause", None)  # RayTaskError(JudgeBreakerTripped) keeps the original as .cause
            original = cause if isinstance(cause, JudgeBreakerTripped) else exc
            return " ".join(str(original.args[0] if original.args else original).split())
        exc = getattr(exc, "cause", None) or exc.__cause__  # type: ignore[assignment]
        seen += 1
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """Compose verl's config with our overrides in front of ``argv`` and run verl's ``main_ppo``."""
    import hydra

    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0], *injected_overrides(), *args]
    hydra.main(config_path="pkg://verl.trainer.config", config_name="ppo_trainer", version_base=None)(_run)()


if __name__ == "__main__":
    main()
