"""The format reward of the visual-perception paper: the response template, checked without backtracking regexes.

Two templates (the ``template`` run setting), both from the original code:

- ``think`` (the released run): ``<think>\\n…\\n</think>\\n<answer>\\n…\\boxed{…}…\\n</answer>``;
- ``perception`` (the original's ``perception_boxed_math_verify`` variant): a ``<perception>\\n…\\n</perception>\\n``
  block describing the figure first, then the ``think`` template.

Two rules (the ``format_rule`` run setting):

- ``strict`` (default): surrounding whitespace is ignored; every tag appears exactly once (a second ``<answer>``
  block could otherwise smuggle an answer past the check); the ``<think>`` (and ``<perception>``) block holds
  text; the answer block holds a balanced, non-empty ``\\boxed{…}`` (an ``\\fbox`` is not what the prompt asks).
- ``paper``: exactly what the original's regex (``re.fullmatch`` with ``re.DOTALL``) accepts, restated with string
  operations: no surrounding whitespace, tags may repeat inside the blocks, ``<think>\\n\\n</think>`` passes,
  ``\\boxed{`` must be followed later by at least one character and a ``}``.

Both are linear in the response length, so a hostile 100k-character response costs microseconds.
"""

from __future__ import annotations

from typing import Literal

from .math_answer import BOXED_ONLY, last_boxed

Template = Literal["think", "perception"]
FormatRule = Literal["strict", "paper"]
TEMPLATES: tuple[str, ...] = ("think", "perception")

_ANSWER_CLOSE = "\n</answer>"
_BOXED = "\\boxed{"
# (opening tag, separator that closes the block and opens the next one) per template, in order.
_BLOCKS: dict[str, tuple[tuple[str, str], ...]] = {
    "think": (("<think>\n", "\n</think>\n<answer>\n"),),
    "perception": (("<perception>\n", "\n</perception>\n<think>\n"), ("", "\n</think>\n<answer>\n")),
}
_TAGS: dict[str, tuple[str, ...]] = {
    "think": ("<think>", "</think>", "<answer>", "</answer>"),
    "perception": ("<perception>", "</perception>", "<think>", "</think>", "<answer>", "</answer>"),
}


def format_reward(response: str, template: str = "think", rule: str = "strict") -> float:
    """1.0 when ``response`` follows ``template`` under ``rule`` (see the module docstring), else 0.0.

    >>> format_reward("<think>\\nx = 2\\n</think>\\n<answer>\\nSo \\\\boxed{2}.\\n</answer>")
    1.0
    >>> format_reward("\\\\boxed{2}")
    0.0
    >>> format_reward("<perception>\\nAB = 2\\n</perception>\\n<think>\\nso x = 2\\n</think>\\n<answer>\\n\\\\boxed{2}\\n</answer>",
    ...               template="perception")
    1.0
    """
    if template not in _BLOCKS:
        raise ValueError(f"template: expected one of {list(TEMPLATES)}, got {template!r}")
    if not isinstance(response, str):
        return 0.0
    if rule == "paper":
        return _paper(response, template)
    if rule != "strict":
        raise ValueError(f"format_rule: expected 'strict' or 'paper', got {rule!r}")
    return _strict(response.strip(), template)


def _strict(text: str, template: str) -> float:
    if any(text.count(tag) != 1 for tag in _TAGS[template]) or not text.endswith(_ANSWER_CLOSE):
        return 0.0
    pos = 0
    for opening, separator in _BLOCKS[template]:
        # Equivalent mutants: dropping `pos` changes nothing (the first block starts at 0, later openings are ""), nor
        # does searching from 0 (every tag, so every separator, occurs exactly once here).
        if not text.startswith(opening, pos):  # pragma: no mutate
            return 0.0
        start = pos + len(opening)
        end = text.find(separator, start)  # pragma: no mutate
        if end == -1 or not text[start:end].strip():  # an empty reasoning (or perception) block is no reasoning
            return 0.0
        pos = end + len(separator)
    # (an overlapping end slices to ""). Equivalent mutant: a later stop only adds "\n</answer>" (no braces).
    answer = text[pos : len(text) - len(_ANSWER_CLOSE)]  # pragma: no mutate
    boxed = last_boxed(answer, BOXED_ONLY)
    return 1.0 if boxed is not None and boxed.strip() else 0.0


def _paper(text: str, template: str) -> float:
    """The original regex, e.g. ``^<think>\\n.*?\\n</think>\\n<answer>\\n.*?\\\\boxed{.+?}.*?\\n</answer>$``.

    Each lazy ``.*?`` block is matched by the *earliest* closing separator: a later one only leaves less room for
    what follows, so if any split matches, the earliest does (the same language, decided in linear time).
    """
    pos = 0
    for opening, separator in _BLOCKS[template]:
        # Equivalent mutants: dropping `pos` changes nothing (the first block starts at 0, later openings are "").
        if not text.startswith(opening, pos):  # pragma: no mutate
            return 0.0
        end = text.find(separator, pos + len(opening))
        if end == -1:
            return 0.0
        pos = end + len(separator)
    # Equivalent mutant: a later `stop` only adds "\n</answer>" (no box, no brace) to the answer.
    stop = len(text) - len(_ANSWER_CLOSE)  # pragma: no mutate
    # Equivalent mutant: `stop <= pos` also rejects an empty answer, which holds no box anyway.
    if stop < pos or not text.endswith(_ANSWER_CLOSE):  # pragma: no mutate
        return 0.0
    answer = text[pos:stop]
    box = answer.find(_BOXED)
    return 1.0 if box != -1 and "}" in answer[box + len(_BOXED) + 1 :] else 0.0
