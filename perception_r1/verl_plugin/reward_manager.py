"""``PerceptionRewardManager``: verl 0.9.1's reward loop calls :meth:`run_single` once per finished trajectory.

verl loads it through its public config (no fork, no registration in verl's tree)::

    reward.reward_manager.source=importlib
    reward.reward_manager.name=PerceptionRewardManager
    reward.reward_manager.module.path=pkg://perception_r1.verl_plugin.reward_manager

It is a thin adapter: decode the response like verl's ``NaiveRewardManager``, build a
:class:`perception_r1.scoring.ScoreRow` and await the process-wide :class:`~perception_r1.scoring.RewardScorer`
(the same engine as ``perception-r1 score``, so both give identical numbers).

Settings:

- run settings (task weights, n-gram size, ...) from ``config.reward.reward_kwargs``
  (``+reward.reward_kwargs.visual_weight=0.7``); ``isolation_workers`` there sets the math-verify processes per
  reward worker (default: CPUs / ``reward.num_workers``, at most 8);
- the judge from the env vars ``VLLM_SERVER_BASE_URL`` / ``VLLM_SERVER_API_KEY`` / ``VLLM_MODEL_NAME`` (never the
  config: verl prints the config, and the API key must not reach logs). ``JUDGE_MAX_CONCURRENCY`` is the budget of
  the whole run: this worker's client gets its share of it over ``reward.num_workers`` (by the worker's index in
  its Ray actor name ``reward_loop_worker_<i>``), logged at start;
- canaries (``reward.reward_kwargs.judge_canaries_per_step``, default 16): labelled calibration rows sent with the
  trajectories, ``per_step`` per ``data.train_batch_size x rollout.n`` trajectories, judged exactly as rewards
  are and tallied into the carrying row's ``judge_usage``, never into a score.

Every returned ``reward_extra_info`` has the same keys (verl stacks them into one numpy array per key): ``score``,
the sorted union of every registered task's ``output_keys``, ``judge_latency_s``, ``judge_usage`` (a JSON string:
the row's judge cost, its canaries' tally, when its reward started and was done; see
:func:`perception_r1.verl_plugin.metrics.judge_usage_info`) and ``scoring_error``; a key the row's task lacks is
``None``. Nothing here raises on model output or judge failures: a row that cannot be scored at all gets score 0
and ``scoring_error = 1`` (logged, and visible as ``reward/scoring_error_rate``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from ..judge.calibration import load_rows
from ..judge.canary import CanaryMixer, CanaryTally, run_canaries
from ..judge.client import JudgeClient, JudgeSettings
from ..judge.guard import JudgeGuardSettings, split_concurrency
from ..judge.visual import VisualVerdict
from ..rewards.registry import get_task, registered_tasks
from ..scoring import RewardScorer, ScoreRow, log_due
from . import say, split_reward_kwargs
from .metrics import JUDGE_LATENCY, JUDGE_USAGE, SCORING_ERROR, judge_usage_info

logger = logging.getLogger(__name__)

_scorers: dict[tuple, RewardScorer] = {}
_scorers_lock = threading.Lock()


def reward_kwargs_from_config(config: Any) -> dict[str, Any]:
    """``config.reward.reward_kwargs`` as a plain dict (empty when unset)."""
    reward = config.get("reward") if hasattr(config, "get") else None
    kwargs = reward.get("reward_kwargs") if isinstance(reward, Mapping) else None  # DictConfig is a Mapping
    if not kwargs:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(kwargs):
            kwargs = OmegaConf.to_container(kwargs, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with verl
        pass
    return dict(kwargs)


def extra_info_keys() -> tuple[str, ...]:
    """The keys of every ``reward_extra_info`` this manager returns, in order."""
    components = sorted({key for task in registered_tasks().values() for key in task.output_keys})  # never "score"
    return ("score", *components, JUDGE_LATENCY, JUDGE_USAGE, SCORING_ERROR)


def _config_int(config: Any, path: str, default: int) -> int:
    node = config
    try:
        for part in path.split("."):
            node = node[part] if isinstance(node, Mapping) else getattr(node, part)  # DictConfig is a Mapping
        return int(node)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return default


def reward_worker_index() -> int | None:
    """This reward worker's index from its Ray actor name (``reward_loop_worker_<i>``); ``None`` outside one."""
    try:
        import ray

        name = ray.get_runtime_context().get_actor_name() if ray.is_initialized() else None
    except Exception:  # not in a Ray actor
        return None
    return worker_index_from_actor_name(name)


def worker_index_from_actor_name(name: str | None) -> int | None:
    """``i`` of verl's reward worker actor name ``reward_loop_worker_<i>``; ``None`` for any other name."""
    if not name:
        return None
    match = re.fullmatch(r"reward_loop_worker_(\d+)", name)
    return int(match.group(1)) if match else None


def budget_line(total: int, workers: int, share: int | None = None, index: int | None = None) -> str:
    """The start-up line that states the run's judge concurrency and its split over reward workers."""
    shares = sorted({split_concurrency(total, workers, i) for i in range(workers)})
    split = "/".join(str(x) for x in shares)
    line = (
        f"judge concurrency: JUDGE_MAX_CONCURRENCY={total} requests in flight for the run, split over "
        f"reward.num_workers={workers} reward workers: {split} each"
    )
    if workers > total:
        line += f" (more workers than the budget: {workers} in flight at most; raise JUDGE_MAX_CONCURRENCY)"
    if share is not None:
        line += f"; this worker ({'index ' + str(index) if index is not None else 'index unknown'}): {share}"
    return line


_budget_logged: set[tuple] = set()


def worker_judge_settings(settings: JudgeSettings | None, config: Any, index: int | None) -> JudgeSettings | None:
    """Judge settings of reward worker ``index`` (``None``: unknown): ``max_concurrency`` becomes its share of the
    run's budget (logged once per budget and worker)."""
    if settings is None:
        return None
    workers = max(1, _config_int(config, "reward.num_workers", 1))
    share = split_concurrency(settings.max_concurrency, workers, index)
    key = (settings.max_concurrency, workers, index)
    if key not in _budget_logged:
        _budget_logged.add(key)
        say(
            f"{budget_line(settings.max_concurrency, workers, share, index)}; timeouts: connect "
            f"{settings.connect_timeout_s:g} s, total {settings.timeout_s:g} s"
        )
    return settings.with_(max_concurrency=share)


def _default_isolation_workers(config: Any) -> int:
    try:
        reward_workers = int(config.reward.num_workers)
    except (AttributeError, TypeError, ValueError, KeyError):
        reward_workers = 1
    return max(1, min(8, (os.cpu_count() or 1) // max(1, reward_workers)))


def get_scorer(settings: Mapping[str, Any], workers: int, judge: JudgeSettings | None) -> RewardScorer:
    """The process-wide scorer for these settings (created on first use, then shared by every manager)."""
    key = (tuple(sorted((k, repr(v)) for k, v in settings.items())), workers, judge)
    with _scorers_lock:
        scorer = _scorers.get(key)
        if scorer is None:
            scorer = RewardScorer(settings, judge=JudgeClient(judge) if judge else None, workers=workers)
            _scorers[key] = scorer
            if judge is None:
                logger.warning(
                    "VLLM_SERVER_BASE_URL is not set in this reward worker: rows with visual annotations get "
                    "visual = 0, judge_failed = 1"
                )
    return scorer


def _plain(value: Any) -> Any:
    """numpy containers/scalars from parquet -> JSON-like Python values (so training sees what ``score`` sees)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class PerceptionRewardManager(RewardManagerBase):
    """Scores one trajectory at a time with :class:`~perception_r1.scoring.RewardScorer` (see module doc)."""

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        self.reward_router_address = reward_router_address
        self.reward_model_tokenizer = reward_model_tokenizer
        settings, plugin = split_reward_kwargs(reward_kwargs_from_config(config))
        self.settings = settings
        self.isolation_workers = int(plugin.get("isolation_workers") or _default_isolation_workers(config))
        self.guard = JudgeGuardSettings.from_kwargs(plugin)
        self.judge_settings = worker_judge_settings(JudgeSettings.from_env(), config, reward_worker_index())
        self.keys = extra_info_keys()
        self._scorer: RewardScorer | None = None
        self.scoring_errors = 0
        self.canaries: CanaryMixer | None = None
        if self.judge_settings is not None and self.guard.judge_canaries_per_step:
            rows_per_step = _config_int(config, "data.train_batch_size", 128) * _config_int(
                config, "actor_rollout_ref.rollout.n", 1
            )
            self.canaries = CanaryMixer(
                load_rows(self.guard.judge_canary_file or None),
                per_step=self.guard.judge_canaries_per_step,
                rows_per_step=rows_per_step,
                seed=reward_worker_index() or 0,
            )

    @property
    def scorer(self) -> RewardScorer:
        if self._scorer is None:
            self._scorer = get_scorer(self.settings, self.isolation_workers, self.judge_settings)
        return self._scorer

    @staticmethod
    def _inputs(data: DataProto) -> tuple[Any, dict[str, Any]]:
        """``(valid response ids, ScoreRow fields without the response)`` of the trajectory's last sequence."""
        item = data[-1]  # multi-sequence outputs: score the last one, as verl's managers do
        response_ids = item.batch["responses"]
        response_length = response_ids.shape[-1]
        valid_length = int(item.batch["attention_mask"][-response_length:].sum())
        non_tensor = item.non_tensor_batch
        reward_model = non_tensor.get("reward_model") or {}
        extra_info = _plain(non_tensor.get("extra_info") or {})
        fields = {
            "data_source": str(non_tensor["data_source"]),
            "ground_truth": _plain(reward_model.get("ground_truth")),
            "extra_info": extra_info if isinstance(extra_info, dict) else {},
        }
        return response_ids[:valid_length], fields

    async def _canaries(self) -> tuple[CanaryTally, list[VisualVerdict]]:
        """The canaries due with this trajectory, judged as rewards are (never raises: they must not cost a row)."""
        due = self.canaries.take() if self.canaries is not None else []
        scorer = self.scorer
        if not due or scorer.judge is None:
            return CanaryTally(), []
        try:
            prompt = scorer.settings_for(get_task("geo3k_visual")).judge_prompt
            return await run_canaries(scorer.judge, due, prompt=prompt, constrained=await scorer.constrained())
        except Exception as exc:  # a bug here must never stop scoring
            logger.error("canary judging failed: %s: %s", type(exc).__name__, exc)
            return CanaryTally(rows=len(due), failed=len(due)), []

    async def run_single(self, data: DataProto) -> dict:
        """``{"reward_score": float, "reward_extra_info": {key: value}}`` for one trajectory; never raises."""
        started = time.time()  # verl calls this as the trajectory finishes: the start of its reward
        info: dict[str, Any] = dict.fromkeys(self.keys)
        canaries = asyncio.ensure_future(self._canaries())
        try:
            ids, fields = self._inputs(data)
            response = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.tokenizer.decode(ids, skip_special_tokens=True)
            )
            scored = await self.scorer.score(ScoreRow(response=response, **fields))
        except Exception as exc:  # bad data or a bug: score 0, count it, keep training
            self.scoring_errors += 1
            if log_due(self.scoring_errors):
                logger.error(
                    "could not score a trajectory (%d so far): %s: %s", self.scoring_errors, type(exc).__name__, exc
                )
            tally, canary_verdicts = await canaries
            info["score"] = 0.0
            info[SCORING_ERROR] = 1
            info[JUDGE_USAGE] = judge_usage_info(None, canary_verdicts, tally, started, time.time())
            return {"reward_score": 0.0, "reward_extra_info": info}
        tally, canary_verdicts = await canaries
        for key, value in scored.values.items():
            if key in info:
                info[key] = value
        info[JUDGE_LATENCY] = scored.judge_latency_s
        info[JUDGE_USAGE] = judge_usage_info(scored.judge, canary_verdicts, tally, started, time.time())
        info[SCORING_ERROR] = 0
        score = float(scored.values["score"])
        return {"reward_score": score, "reward_extra_info": info}
