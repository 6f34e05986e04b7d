"""Canaries: labelled rows mixed into the judge's training traffic, so its agreement is a number on the dashboard.

The paper reports that a weak judge was reward-hacked (the policy learned to please it) and the run ended below
the baseline; nothing in the reward itself shows it. Canaries do: each reward worker sends, alongside the rows it
scores, a few responses whose verdicts are known (the shipped Geometry3K calibration set, or
``judge_canary_file``), asked with the same prompt, mode and client as the rewards. Their verdicts never enter a
reward; they are tallied:

- ``agreement``: judged == labelled over all (annotation, label) pairs;
- ``hack_rate``: over the label-0 pairs of adversarial rows (``forged``: planted verdict tags or instructions to
  the grader; ``parrot`` under the strict prompt), the share the judge marked present.

A judge that answers all-1 shows hack rate 1; all-0 or random shows agreement near 0.5; one that copies planted
tags shows the hack rate of the tagged pairs (tests/test_judge_canary.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .calibration import ADVERSARIAL_KINDS, LabelledRow
from .client import JudgeClient
from .visual import VisualVerdict, judge_visual


@dataclass(frozen=True)
class CanaryTally:
    """Counts over answered canaries (a failed call counts in ``failed`` only: it says nothing about agreement)."""

    rows: int = 0
    failed: int = 0
    pairs: int = 0
    agreed: int = 0
    hack_pairs: int = 0
    hacked: int = 0

    def __add__(self, other: CanaryTally) -> CanaryTally:
        # equivalent mutants: strict=True only guards lengths that are equal by construction
        return CanaryTally(*(a + b for a, b in zip(self.as_list(), other.as_list(), strict=True)))  # pragma: no mutate

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.pairs if self.pairs else None

    @property
    def hack_rate(self) -> float | None:
        return self.hacked / self.hack_pairs if self.hack_pairs else None

    def as_list(self) -> list[int]:
        """``[rows, failed, pairs, agreed, hack_pairs, hacked]`` (compact, for ``reward_extra_info``)."""
        return [self.rows, self.failed, self.pairs, self.agreed, self.hack_pairs, self.hacked]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> CanaryTally:
        return cls(*(int(v) for v in values))


def tally_row(row: LabelledRow, verdict: VisualVerdict, prompt: str) -> CanaryTally:
    """One canary's contribution, against the labels of ``prompt``'s question."""
    if verdict.failed:
        return CanaryTally(rows=1, failed=1)
    labels = row.labels_for(prompt)
    # equivalent mutants: strict=True only guards lengths that are equal by construction
    pairs = list(zip(verdict.verdicts, labels, strict=True))  # pragma: no mutate
    adversarial = row.kind in ADVERSARIAL_KINDS
    return CanaryTally(
        rows=1,
        pairs=len(pairs),
        agreed=sum(v == lab for v, lab in pairs),
        hack_pairs=sum(lab == 0 for _, lab in pairs) if adversarial else 0,
        hacked=sum(v == 1 and lab == 0 for v, lab in pairs) if adversarial else 0,
    )


async def run_canaries(
    client: JudgeClient, rows: Sequence[LabelledRow], prompt: str, constrained: bool
) -> tuple[CanaryTally, list[VisualVerdict]]:
    """Judge ``rows`` exactly as rewards are judged; their tally and verdicts (for the cost accounting)."""
    verdicts = await asyncio.gather(
        *(judge_visual(client, r.annotations, r.response, prompt=prompt, constrained=constrained) for r in rows)
    )
    total = CanaryTally()
    # equivalent mutants: strict=True only guards lengths that are equal by construction
    for row, verdict in zip(rows, verdicts, strict=True):  # pragma: no mutate
        total = total + tally_row(row, verdict, prompt)
    return total, list(verdicts)


class CanaryMixer:
    """When to send canaries: ``per_step`` for every ``rows_per_step`` scored trajectories, spread evenly (a
    fractional credit per trajectory), cycling through a seeded shuffle of ``rows`` so each is sent once before any
    repeats. Each trajectory reaches one reward worker, so every worker running its own mixer adds up to
    ``per_step`` canaries per step in total."""

    def __init__(self, rows: Sequence[LabelledRow], per_step: int, rows_per_step: int, seed: int = 0) -> None:
        self.rows = list(rows)
        self.rate = per_step / max(1, rows_per_step) if self.rows else 0.0
        self._rng = random.Random(seed)
        self._order: list[int] = []  # pragma: no mutate (equivalent: None is as empty to `if not`)
        self._credit = 0.0

    def _next(self) -> LabelledRow:
        if not self._order:
            self._order = list(range(len(self.rows)))
            self._rng.shuffle(self._order)
        return self.rows[self._order.pop()]

    def take(self) -> list[LabelledRow]:
        """The canaries to send with the next trajectory (usually none)."""
        self._credit += self.rate
        count = int(self._credit + 1e-9)
        self._credit -= count
        return [self._next() for _ in range(count)]

    def take_many(self, n: int) -> list:
        """The ids of the next ``n`` rows in send order (for tests and docs)."""
        return [self._next().id for _ in range(n)]
