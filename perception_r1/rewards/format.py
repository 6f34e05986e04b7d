"""The think/answer/boxed format reward of the visual-perception paper."""

from __future__ import annotations

from .math_answer import last_boxed

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_SEPARATOR = "\n</think>\n<answer>\n"


def format_reward(response: str) -> float:
    """1.0 when the whole response is ``<think>\\n…\\n</think>\\n<answer>\\n…\\boxed{…}…\\n</answer>``, else 0.0.

    Surrounding whitespace is ignored; each tag must appear exactly once (a second ``<answer>`` block could
    otherwise smuggle an answer past the check) and the answer block must hold a balanced ``\\boxed{…}``.
    Written with string operations, not a backtracking regex, so a hostile 100k-character response is linear.

    >>> format_reward("<think>\\nx = 2\\n</think>\\n<answer>\\nSo \\\\boxed{2}.\\n</answer>")
    1.0
    >>> format_reward("\\\\boxed{2}")
    0.0
    """
    text = response.strip()
    if not (text.startswith("<think>\n") and text.endswith("\n</answer>")):
        return 0.0
    if any(text.count(tag) != 1 for tag in _TAGS):
        return 0.0
    head, sep, tail = text.partition(_SEPARATOR)
    if not sep:
        return 0.0
    answer = tail[: -len("\n</answer>")]
    return 1.0 if last_boxed(answer) is not None else 0.0
