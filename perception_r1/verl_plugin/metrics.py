"""Per-step training metrics from the reward components (pure: no verl, no I/O).

The reward manager returns, for every trajectory, ``reward_extra_info`` with the same keys: ``score``, each
task component (``format``, ``accuracy``, ``visual``, ...), ``judge_failed``, ``judge_latency_s`` and
``scoring_error``; a key a row's task does not have is ``None``. :func:`reward_metrics` turns one step's rows
into the scalars the trainer logs:

- ``reward/<component>/mean``: mean over the rows where the component is not ``None`` (a row without
  annotations has ``visual = None`` and is left out of ``reward/visual/mean``);
- ``reward/judge_failure_rate``: failed judge calls / judged rows (a judged row either failed, or succeeded and
  has a latency); absent when no row of the step needed the judge;
- ``reward/judge_latency_p50`` / ``reward/judge_latency_p95``: seconds, over successful judge calls;
- ``reward/scoring_error_rate``: rows the manager could not score at all (bad data, a scorer bug).

From each row's ``judge_usage`` (a compact JSON string, so verl's validation metrics, which skip strings, leave
it alone; :func:`judge_usage_info` writes it), the judge's health and cost per step:

- ``reward/judge_requests``, ``reward/judge_prompt_tokens``, ``reward/judge_cached_prompt_tokens`` (only when the
  server reports vLLM's ``prompt_tokens_details.cached_tokens``), ``reward/judge_completion_tokens``: sums over the
  step, retries and canaries included;
- ``reward/judge_exposed_s``: judge time not hidden behind rollout, the last reward's completion minus the last
  trajectory's end (when each row's reward started);
- ``reward/judge_truncated_rate`` / ``reward/judge_unparsed_rate``: answered replies cut at their token budget /
  with an unreadable verdict; ``reward/judge_constrained``: share of judged rows sent with the verdict regex;
- ``reward/judge_canary_agreement`` / ``reward/judge_canary_hack_rate`` / ``reward/judge_canaries``: the canaries'
  pooled agreement with their labels, hack rate, and count (see :mod:`perception_r1.judge.canary`).

:func:`judge_step` summarises the same rows for the breaker (:class:`perception_r1.judge.guard.JudgeBreaker`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..judge.canary import CanaryTally
from ..judge.guard import JudgeStep
from ..judge.visual import VisualVerdict

PREFIX = "reward"
JUDGE_FAILED = "judge_failed"
JUDGE_LATENCY = "judge_latency_s"
JUDGE_TRUNCATED = "judge_truncated"
JUDGE_USAGE = "judge_usage"
SCORING_ERROR = "scoring_error"
BOOKKEEPING_KEYS = frozenset({JUDGE_FAILED, JUDGE_LATENCY, JUDGE_TRUNCATED, JUDGE_USAGE, SCORING_ERROR})
"""Extra-info keys that are counters, not reward components: they get rates/percentiles, not means."""
ERROR_CHARS = 300


def judge_usage_info(
    verdict: VisualVerdict | None,
    canaries: Sequence[VisualVerdict],
    tally: CanaryTally,
    started_at: float,
    done_at: float,
) -> str:
    """One row's ``judge_usage``: the cost of its judge call and of the canaries sent with it, the canaries'
    tally, and when the row's reward started (its trajectory's end) and was done (unix seconds)."""
    calls = ([verdict] if verdict is not None else []) + list(canaries)
    cached = [c.cached_tokens for c in calls if c.cached_tokens is not None]
    info: dict[str, Any] = {
        "requests": sum(c.requests for c in calls),
        "prompt_tokens": sum(c.prompt_tokens for c in calls),
        "cached_tokens": sum(cached) if cached else None,
        "completion_tokens": sum(c.completion_tokens for c in calls),
        "started_at": round(started_at, 6),
        "done_at": round(done_at, 6),
    }
    if verdict is not None:
        info.update(unparsed=int(verdict.unparsed > 0), constrained=int(verdict.constrained))
        if verdict.failed and verdict.error:
            info["error"] = verdict.error[:ERROR_CHARS]
    if tally.rows:
        info["canary"] = tally.as_list()
    return json.dumps(info, separators=(",", ":"))


def parse_judge_usage(value: Any) -> dict[str, Any] | None:
    """The dict of a ``judge_usage`` string; ``None`` for anything else (rows from other managers)."""
    if not isinstance(value, str):
        return None
    try:
        info = json.loads(value)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` for ``None``/non-numbers/NaN (NaN never reaches a metric)."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def reward_metrics(infos: Iterable[Mapping[str, Any] | None], prefix: str = PREFIX) -> dict[str, float]:
    """Aggregate one step's per-trajectory ``reward_extra_info`` dicts into logger scalars (see module doc).

    >>> reward_metrics([{"score": 1.0, "visual": None, "judge_failed": 0, "judge_latency_s": None},
    ...                 {"score": 0.5, "visual": 0.5, "judge_failed": 0, "judge_latency_s": 0.2}])
    {'reward/score/mean': 0.75, 'reward/visual/mean': 0.5, 'reward/judge_failure_rate': 0.0, \
'reward/judge_latency_p50': 0.2, 'reward/judge_latency_p95': 0.2}
    """
    values: dict[str, list[float]] = {}
    failed = succeeded = errors = rows = 0
    latencies: list[float] = []
    infos_list = [info for info in infos if isinstance(info, Mapping)]
    for info in infos_list:
        rows += 1
        for key, raw in info.items():
            if key in BOOKKEEPING_KEYS:
                continue
            number = _number(raw)
            if number is not None:
                values.setdefault(str(key), []).append(number)
        latency = _number(info.get(JUDGE_LATENCY))
        if _number(info.get(JUDGE_FAILED)) == 1.0:
            failed += 1
        elif latency is not None:
            succeeded += 1
            latencies.append(latency)
        if _number(info.get(SCORING_ERROR)) == 1.0:
            errors += 1

    metrics: dict[str, float] = {}
    for key in sorted(values, key=lambda k: (k != "score", k)):
        metrics[f"{prefix}/{key}/mean"] = float(np.mean(values[key]))
    if failed + succeeded:
        metrics[f"{prefix}/judge_failure_rate"] = failed / (failed + succeeded)
    if latencies:
        p50, p95 = np.percentile(latencies, [50, 95])
        metrics[f"{prefix}/judge_latency_p50"] = float(p50)
        metrics[f"{prefix}/judge_latency_p95"] = float(p95)
    if errors:
        metrics[f"{prefix}/scoring_error_rate"] = errors / rows
    metrics.update(_judge_usage_metrics(infos_list, prefix))
    return metrics


def _judged_state(info: Mapping[str, Any]) -> str | None:
    """``failed`` / ``answered`` for a row that asked the judge, ``None`` for one that did not."""
    if _number(info.get(JUDGE_FAILED)) == 1.0:
        return "failed"
    if _number(info.get(JUDGE_LATENCY)) is not None:
        return "answered"
    return None


def _judge_usage_metrics(infos: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, float]:
    usages = [(info, parse_judge_usage(info.get(JUDGE_USAGE))) for info in infos]
    usages = [(info, u) for info, u in usages if u is not None]
    if not usages:
        return {}
    metrics: dict[str, float] = {}
    total = lambda key: float(sum(_number(u.get(key)) or 0.0 for _, u in usages))  # noqa: E731
    metrics[f"{prefix}/judge_requests"] = total("requests")
    metrics[f"{prefix}/judge_prompt_tokens"] = total("prompt_tokens")
    if any(u.get("cached_tokens") is not None for _, u in usages):
        metrics[f"{prefix}/judge_cached_prompt_tokens"] = total("cached_tokens")
    metrics[f"{prefix}/judge_completion_tokens"] = total("completion_tokens")
    starts = [_number(u.get("started_at")) for _, u in usages]
    dones = [_number(u.get("done_at")) for _, u in usages]
    starts, dones = [x for x in starts if x is not None], [x for x in dones if x is not None]
    if starts and dones:
        metrics[f"{prefix}/judge_exposed_s"] = max(0.0, max(dones) - max(starts))
    answered = [(info, u) for info, u in usages if _judged_state(info) == "answered"]
    if answered:
        n = len(answered)
        metrics[f"{prefix}/judge_truncated_rate"] = sum(_number(i.get(JUDGE_TRUNCATED)) == 1.0 for i, _ in answered) / n
        metrics[f"{prefix}/judge_unparsed_rate"] = sum((_number(u.get("unparsed")) or 0) > 0 for _, u in answered) / n
    modes = [_number(u.get("constrained")) for info, u in usages if _judged_state(info) is not None]
    modes = [m for m in modes if m is not None]
    if modes:
        metrics[f"{prefix}/judge_constrained"] = sum(modes) / len(modes)
    tally = _canary_tally(u for _, u in usages)
    if tally.rows:
        metrics[f"{prefix}/judge_canaries"] = float(tally.rows)
        if tally.agreement is not None:
            metrics[f"{prefix}/judge_canary_agreement"] = tally.agreement
        if tally.hack_rate is not None:
            metrics[f"{prefix}/judge_canary_hack_rate"] = tally.hack_rate
    return metrics


def _canary_tally(usages: Iterable[Mapping[str, Any]]) -> CanaryTally:
    total = CanaryTally()
    for usage in usages:
        values = usage.get("canary")
        if isinstance(values, list) and len(values) == 6:
            try:
                total = total + CanaryTally.from_list(values)
            except (TypeError, ValueError):
                continue
    return total


def judge_step(infos: Iterable[Mapping[str, Any] | None], step: int) -> JudgeStep:
    """What the breaker reads from one step's rows: judged and failed rows, the canaries' agreement and hack
    rate, and the most recent failure's error (by completion time)."""
    rows = [info for info in infos if isinstance(info, Mapping)]
    judged = failed = 0
    last: tuple[float, str] = (-math.inf, "")
    usages = []
    for info in rows:
        state = _judged_state(info)
        usage = parse_judge_usage(info.get(JUDGE_USAGE))
        if usage is not None:
            usages.append(usage)
        if state is None:
            continue
        judged += 1
        if state == "failed":
            failed += 1
            if usage is not None and usage.get("error"):
                done = _number(usage.get("done_at")) or 0.0
                if done >= last[0]:
                    last = (done, str(usage["error"]))
    tally = _canary_tally(usages)
    return JudgeStep(
        step=step,
        judged=judged,
        failed=failed,
        canary_agreement=tally.agreement,
        canary_hack_rate=tally.hack_rate,
        last_error=last[1],
    )


def reward_infos_from_extra_fields(
    extra_fields: Sequence[Any], padding: Sequence[bool] | None = None
) -> list[Mapping[str, Any]]:
    """The ``reward_extra_info`` dicts out of verl's per-sample ``extra_fields`` (TransferQueue), skipping padding.

    verl's agent loop stores each trajectory's reward manager output as ``extra_fields["reward_extra_info"]``.
    """
    infos: list[Mapping[str, Any]] = []
    for index, fields in enumerate(extra_fields):
        if padding is not None and padding[index]:
            continue
        info = fields.get("reward_extra_info") if isinstance(fields, Mapping) else None
        if isinstance(info, Mapping):
            infos.append(info)
    return infos
