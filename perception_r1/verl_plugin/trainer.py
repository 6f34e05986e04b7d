"""``perception_sync``: verl's synchronous v1 trainer plus per-step reward-component training metrics.

verl 0.9.1 logs ``reward_extra_info`` only in validation. This subclass of ``PPOTrainerSync`` (registered through
verl's public ``register_trainer``) calls the stock ``_compute_metrics`` and then adds ``reward/<component>/mean``,
``reward/judge_failure_rate`` and ``reward/judge_latency_p50|p95`` (see :mod:`perception_r1.verl_plugin.metrics`)
from the step's trajectories, so they reach every configured logger (console, swanlab) with the other metrics.

Select it with ``trainer.v1.trainer_mode=perception_sync`` (the ``main_ppo`` wrapper does). verl's base trainer
branches on ``trainer_mode == "sync"`` (replay buffer, refill, checkpoint restore); this trainer *is* the sync
trainer, so it reports ``"sync"`` to that code.
"""

from __future__ import annotations

import logging
from typing import Any

import transfer_queue as tq
from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer

from . import TRAINER_MODE
from .metrics import reward_infos_from_extra_fields, reward_metrics

logger = logging.getLogger(__name__)


def fetch_reward_infos(batch: Any, kv_batch_get: Any = None) -> list[Any]:
    """The step's per-trajectory ``reward_extra_info`` dicts from TransferQueue (padding rows skipped).

    verl's agent loop scores each trajectory as it finishes and stores the manager's output in the sample's
    ``extra_fields["reward_extra_info"]``; that is where they are read back.
    """
    kv_batch_get = kv_batch_get or tq.kv_batch_get
    data = kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    extra_fields = data.pop("extra_fields")
    extra_fields = extra_fields.tolist() if hasattr(extra_fields, "tolist") else list(extra_fields)
    padding = [bool(tag.get("is_padding", False)) for tag in batch.tags] if batch.tags else None
    if padding is not None and len(padding) != len(extra_fields):
        padding = None
    return reward_infos_from_extra_fields(extra_fields, padding)


@register_trainer(TRAINER_MODE)
class PerceptionPPOTrainer(PPOTrainerSync):
    """``PPOTrainerSync`` + reward-component training metrics."""

    @property
    def trainer_mode(self) -> str:
        return "sync"

    @trainer_mode.setter
    def trainer_mode(self, value: str) -> None:  # the base __init__ assigns the config value; we stay "sync"
        pass

    def _compute_metrics(self, batch: Any, metrics: dict, timing_raw: dict, global_steps: int, epoch: int) -> None:
        super()._compute_metrics(batch, metrics, timing_raw, global_steps=global_steps, epoch=epoch)
        try:
            metrics.update(reward_metrics(fetch_reward_infos(batch)))
        except Exception as exc:  # metrics must never stop training
            logger.warning("could not compute reward training metrics: %s: %s", type(exc).__name__, exc)
