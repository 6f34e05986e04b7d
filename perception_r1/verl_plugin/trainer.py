"""``perception_sync``: verl's synchronous v1 trainer plus per-step reward metrics and the judge breaker.

verl 0.9.1 logs ``reward_extra_info`` only in validation. This subclass of ``PPOTrainerSync`` (registered through
verl's public ``register_trainer``) calls the stock ``_compute_metrics`` and then adds ``reward/<component>/mean``,
the judge's failure rate, latency, cost, canaries and exposed time (see :mod:`perception_r1.verl_plugin.metrics`)
from the step's trajectories, so they reach every configured logger (console, swanlab) with the other metrics.

The judge breaker (:class:`perception_r1.judge.guard.JudgeBreaker`, settings ``reward.reward_kwargs.judge_*``)
reads the same rows. When it trips, the trainer saves a checkpoint (when ``trainer.save_freq > 0`` and verl did not
just save this step), prints one line (which judge, how many rows failed, the server's last error), lets verl log
the step's metrics and end its loop (``total_training_steps`` is set to this step, so ``fit`` returns through its
own exit path), then raises :class:`~perception_r1.judge.guard.JudgeBreakerTripped`, which the ``main_ppo``
wrapper turns into that one line and exit code 3. The logger's ``finish`` marks the run failed.

Select it with ``trainer.v1.trainer_mode=perception_sync`` (the ``main_ppo`` wrapper does). verl's base trainer
branches on ``trainer_mode == "sync"`` (replay buffer, refill, checkpoint restore); this trainer *is* the sync
trainer, so it reports ``"sync"`` to that code.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import transfer_queue as tq
from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer

from ..judge.client import JudgeSettings
from ..judge.guard import JudgeBreaker, JudgeBreakerTripped, JudgeGuardSettings, JudgeStep
from . import TRAINER_MODE, say, split_reward_kwargs
from .metrics import judge_step, reward_infos_from_extra_fields, reward_metrics
from .reward_manager import _config_int, budget_line, reward_kwargs_from_config

logger = logging.getLogger(__name__)


def fetch_reward_infos(batch: Any, kv_batch_get: Any = None) -> list[Any]:
    """The step's per-trajectory ``reward_extra_info`` dicts from TransferQueue (padding rows skipped).

    verl's agent loop scores each trajectory as it finishes and stores the manager's output in the sample's
    ``extra_fields["reward_extra_info"]``; that is where they are read back.
    """
    kv_batch_get = kv_batch_get or tq.kv_batch_get
    data = kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    extra_fields = data.pop("extra_fields")
    # equivalent mutants: tolist() and list() give the same elements here
    extra_fields = extra_fields.tolist() if hasattr(extra_fields, "tolist") else list(extra_fields)  # pragma: no mutate
    padding: list[bool] | None = [bool(tag.get("is_padding")) for tag in batch.tags]  # one tag per key (TQ checks)
    if len(padding) != len(extra_fields):
        padding = None
    return reward_infos_from_extra_fields(extra_fields, padding)


def guard_settings_from_config(config: Any) -> JudgeGuardSettings:
    """The judge guard settings of ``config.reward.reward_kwargs`` (already validated by the wrapper)."""
    _, plugin = split_reward_kwargs(reward_kwargs_from_config(config))
    return JudgeGuardSettings.from_kwargs(plugin)


def judge_start_lines(config: Any, judge: JudgeSettings | None, guard: JudgeGuardSettings) -> list[str]:
    """What the run states at start about its judge: the concurrency split, timeouts, failure policy, canaries."""
    if judge is None:
        return ["judge: none configured (VLLM_SERVER_BASE_URL unset): rows with visual annotations get judge_failed"]
    workers = max(1, _config_int(config, "reward.num_workers", 1))
    policy = (
        f"failure policy abort: stop after {guard.judge_failure_patience} consecutive step(s) with "
        f"reward/judge_failure_rate above {guard.judge_max_failure_rate:.2f}"
        if guard.judge_failure_policy == "abort"
        else "failure policy zero: train on through judge failures (visual = 0, counted)"
    )
    canaries = (
        f"{guard.judge_canaries_per_step} canaries per step"
        + (f", agreement floor {guard.judge_min_canary_agreement:.2f}" if guard.judge_min_canary_agreement else "")
        + (
            f", hack-rate ceiling {guard.judge_max_canary_hack_rate:.2f}"
            if guard.judge_max_canary_hack_rate < 1
            else ""
        )
        if guard.judge_canaries_per_step
        else "canaries off"
    )
    return [
        f"{budget_line(judge.max_concurrency, workers)}; timeouts: connect {judge.connect_timeout_s:g} s, "
        f"total {judge.timeout_s:g} s",
        f"judge guard: {policy}; {canaries}",
    ]


class JudgeGuardMixin:
    """Reward metrics and the judge breaker on top of a verl v1 ``PPOTrainer`` (see module doc)."""

    def _init_judge_guard(self, config: Any) -> None:
        self._judge_guard = guard_settings_from_config(config)
        judge = JudgeSettings.from_env()
        self._judge_breaker = JudgeBreaker(self._judge_guard, urls=judge.base_urls if judge else ())
        self._judge_stop: str | None = None
        for line in judge_start_lines(config, judge, self._judge_guard):
            say(line)

    def _reward_infos(self, batch: Any) -> list[Any]:
        return fetch_reward_infos(batch)

    def _compute_metrics(self, batch: Any, metrics: dict, timing_raw: dict, global_steps: int, epoch: int) -> None:
        super()._compute_metrics(batch, metrics, timing_raw, global_steps=global_steps, epoch=epoch)  # type: ignore[misc]
        step: JudgeStep | None = None
        try:
            infos = self._reward_infos(batch)
            metrics.update(reward_metrics(infos))
            step = judge_step(infos, global_steps)
            metrics["reward/metrics_error"] = 0.0
        except Exception as exc:  # metrics must never stop training; a step they miss is logged and counted
            logger.warning("could not compute reward training metrics: %s: %s", type(exc).__name__, exc)
            metrics["reward/metrics_error"] = 1.0  # shown per step: a broken hook is visible, not just a warning
        if step is not None:
            self._judge_guard_step(step, metrics)

    def _judge_guard_step(self, step: JudgeStep, metrics: dict) -> None:
        trip = self._judge_breaker.observe(step)
        metrics["reward/judge_breaker_streak"] = float(self._judge_breaker.streak)
        if trip is None:
            return
        message = trip.message + self._checkpoint_before_stop()
        metrics["reward/judge_breaker_tripped"] = 1.0
        say(message)
        logger.error(message)
        self._judge_stop = message
        self.total_training_steps = self.global_steps  # verl's loop logs this step's metrics, then ends

    def _checkpoint_before_stop(self) -> str:
        """Save a checkpoint of this step when the run saves checkpoints at all; a note for the message."""
        trainer = self.config.trainer  # type: ignore[attr-defined]
        save_freq = int(trainer.get("save_freq") or 0)  # unset or null: verl saves no checkpoints
        folder = os.path.join(str(trainer.default_local_dir), f"global_step_{self.global_steps}")  # type: ignore[attr-defined]
        if save_freq <= 0:
            return "; no checkpoint saved (trainer.save_freq <= 0)"
        saved = self.global_steps % save_freq == 0 or self.global_steps >= self.total_training_steps  # type: ignore[attr-defined]
        if not saved:  # verl saves on save_freq steps and the last one; otherwise save now, as verl does after a step
            try:
                self._save_checkpoint()  # type: ignore[attr-defined]
            except Exception as exc:
                return f"; checkpoint failed ({type(exc).__name__}: {exc})"
        return f"; checkpoint {folder} (resume with trainer.resume_mode=auto)"

    def fit(self, agent_loop_manager: Any) -> None:
        super().fit(agent_loop_manager)  # type: ignore[misc]
        if self._judge_stop is not None:
            raise JudgeBreakerTripped(self._judge_stop)


@register_trainer(TRAINER_MODE)
class PerceptionPPOTrainer(JudgeGuardMixin, PPOTrainerSync):
    """``PPOTrainerSync`` + reward-component training metrics + the judge breaker."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._init_judge_guard(config)

    @property
    def trainer_mode(self) -> str:
        return "sync"

    @trainer_mode.setter
    def trainer_mode(self, value: str) -> None:  # the base __init__ assigns the config value; we stay "sync"
        pass
