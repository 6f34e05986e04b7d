"""Run-level guard rails for the judge in training (pure: no verl, no I/O).

- :class:`JudgeGuardSettings`: the ``reward.reward_kwargs`` keys that decide what a failing or lying judge does to
  a run (``judge_failure_policy``, ``judge_max_failure_rate``, ``judge_failure_patience``, the canaries).
- :func:`split_concurrency`: ``JUDGE_MAX_CONCURRENCY`` is the budget of the *run*; each of verl's
  ``reward.num_workers`` reward workers gets its share, so the judge never sees more requests in flight than that.
- :class:`JudgeBreaker`: fed one :class:`JudgeStep` per training step, it trips when the step's failure rate is
  above the limit (or the canaries' agreement below its floor, or their hack rate above its ceiling) for
  ``judge_failure_patience`` consecutive steps, and says so in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FAILURE_POLICIES = ("abort", "zero")


class JudgeBreakerTripped(RuntimeError):
    """The run was stopped by the judge breaker; the message is the one line to show."""


@dataclass(frozen=True)
class JudgeGuardSettings:
    """What a failing or lying judge does to a training run (``reward.reward_kwargs.<name>``)."""

    judge_failure_policy: str = "abort"
    """``abort``: the breaker stops the run (after a checkpoint); ``zero``: train on, failed rows score visual 0."""
    judge_max_failure_rate: float = 0.2
    """A step is bad when more than this share of its judged rows failed."""
    judge_failure_patience: int = 2
    """Consecutive bad steps that trip the breaker (a shorter blip keeps going)."""
    judge_canaries_per_step: int = 16
    """Labelled calibration rows mixed into each step's judge traffic (never into rewards); 0 turns them off."""
    judge_canary_file: str = ""
    """The labelled rows to draw canaries from (default: the shipped Geometry3K calibration set)."""
    judge_min_canary_agreement: float = 0.0
    """A step is bad when the canaries' agreement with their labels is below this (0: off)."""
    judge_max_canary_hack_rate: float = 1.0
    """A step is bad when the canaries' hack rate is above this (1: off)."""

    def __post_init__(self) -> None:
        if self.judge_failure_policy not in FAILURE_POLICIES:
            raise ValueError(
                f"judge_failure_policy must be one of {', '.join(FAILURE_POLICIES)}, got {self.judge_failure_policy!r}"
            )
        for name in ("judge_max_failure_rate", "judge_min_canary_agreement", "judge_max_canary_hack_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.judge_failure_patience < 1:
            raise ValueError(f"judge_failure_patience must be >= 1, got {self.judge_failure_patience!r}")
        if self.judge_canaries_per_step < 0:
            raise ValueError(f"judge_canaries_per_step must be >= 0, got {self.judge_canaries_per_step!r}")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> JudgeGuardSettings:
        """The settings among ``kwargs`` (other keys ignored), converted from strings; ``ValueError`` naming the key."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in kwargs or kwargs[f.name] is None:
                continue
            raw = kwargs[f.name]
            kind = type(f.default)
            try:
                if kind is int and (isinstance(raw, bool) or float(raw) != int(float(raw))):
                    raise ValueError
                values[f.name] = kind(float(raw)) if kind is int else kind(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{f.name} must be a {kind.__name__}, got {raw!r}") from None
        return cls(**values)


GUARD_KEYS = frozenset(f.name for f in dataclasses.fields(JudgeGuardSettings))
"""The ``reward.reward_kwargs`` keys of :class:`JudgeGuardSettings`."""


def split_concurrency(total: int, workers: int, index: int | None) -> int:
    """Reward worker ``index``'s share of a run-wide budget of ``total`` requests in flight.

    Shares differ by at most one and sum to ``total``; with an unknown ``index`` the floor (never over the
    budget). Each worker gets at least 1, so ``workers > total`` exceeds the budget (the caller warns).
    """
    if total < 1:
        raise ValueError(f"judge max_concurrency must be >= 1, got {total}")
    workers = max(1, workers)
    base, extra = divmod(total, workers)
    if index is None:
        return max(1, base)
    return max(1, base + (1 if index % workers < extra else 0))


@dataclass(frozen=True)
class JudgeStep:
    """What the breaker reads from one training step (see ``perception_r1.verl_plugin.metrics``)."""

    step: int
    judged: int
    failed: int
    canary_agreement: float | None = None
    canary_hack_rate: float | None = None
    last_error: str = ""

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.judged if self.judged else None


@dataclass(frozen=True)
class BreakerTrip:
    """The breaker's decision: the step it tripped at and the one line to show."""

    step: int
    message: str


class JudgeBreaker:
    """Counts consecutive bad steps (see module doc) and trips once; :attr:`tripped` keeps the decision."""

    def __init__(self, settings: JudgeGuardSettings, urls: Sequence[str] = ()) -> None:
        self.settings = settings
        self.urls = list(urls)
        self.streak = 0
        self.history: list[tuple[int, str]] = []
        self.tripped: BreakerTrip | None = None

    def _why(self, s: JudgeStep) -> tuple[str, str] | None:
        """``(condition, value at this step)`` when the step is bad; ``None`` when healthy or not judged."""
        cfg = self.settings
        rate = s.failure_rate
        if cfg.judge_failure_policy == "abort" and rate is not None and rate > cfg.judge_max_failure_rate:
            return f"reward/judge_failure_rate above {cfg.judge_max_failure_rate:.2f}", f"{rate:.2f}"
        agreement = s.canary_agreement
        # rates lie in [0, 1]: the defaults 0 (agreement) and 1 (hack rate) can never be crossed, so they switch off
        if agreement is not None and agreement < cfg.judge_min_canary_agreement:
            return f"reward/judge_canary_agreement below {cfg.judge_min_canary_agreement:.2f}", f"{agreement:.2f}"
        hack = s.canary_hack_rate
        if hack is not None and hack > cfg.judge_max_canary_hack_rate:
            return f"reward/judge_canary_hack_rate above {cfg.judge_max_canary_hack_rate:.2f}", f"{hack:.2f}"
        return None

    def _neutral(self, s: JudgeStep) -> bool:
        return s.judged == 0 and s.canary_agreement is None and s.canary_hack_rate is None

    def observe(self, s: JudgeStep) -> BreakerTrip | None:
        """Feed one step; returns the trip on the step that trips the breaker, else ``None``."""
        if self.tripped is not None:
            return None
        if self._neutral(s):
            return None
        why = self._why(s)
        if why is None:
            self.streak, self.history = 0, []
            return None
        self.streak += 1
        self.history.append((s.step, why[1]))
        if self.streak < self.settings.judge_failure_patience:
            return None
        self.tripped = BreakerTrip(s.step, self._message(why[0], s))
        return self.tripped

    def _message(self, condition: str, s: JudgeStep) -> str:
        steps = self.history[-self.settings.judge_failure_patience :]
        span = f"step {steps[0][0]}" if len(steps) == 1 else f"steps {steps[0][0]}-{steps[-1][0]}"
        values = ", ".join(v for _, v in steps)
        parts = [
            f"judge breaker: {condition} for {len(steps)} consecutive step{'s' if len(steps) > 1 else ''} "
            f"({span}: {values}); {s.failed} of {s.judged} judged rows failed at step {s.step}"
        ]
        if self.urls:
            parts.append(f"judge {','.join(self.urls)}")
        if s.last_error:
            parts.append(f"last error: {' '.join(s.last_error.split())}")
        if condition.startswith("reward/judge_failure_rate"):
            parts.append("set reward.reward_kwargs.judge_failure_policy=zero to train on with visual = 0")
        return "; ".join(parts)
