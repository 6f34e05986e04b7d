"""Final-answer extraction and math-verify checking.

``verify_answer`` is slow (sympy) and can hang on pathological LaTeX. math-verify's own timeouts use SIGALRM,
which only works on a process's main thread, so the scoring engine runs it in a worker process
(:mod:`perception_r1.isolation`) where it *is* the main thread, under a hard kill as a backstop.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"


def last_boxed(text: str) -> str | None:
    """The content of the last balanced ``\\boxed{…}`` (or ``\\fbox{…}``) in ``text``; ``None`` if there is none.

    >>> last_boxed(r"a \\boxed{1} b \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    """
    for marker in ("\\boxed{", "\\fbox{"):
        start = text.rfind(marker)
        while start != -1:
            i = start + len(marker)
            depth = 1
            while i < len(text):
                ch = text[i]
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        return text[start + len(marker) : i]
                i += 1
            start = text.rfind(marker, 0, start)  # unbalanced: try the previous one
    return None


def answer_block(response: str) -> str | None:
    """The text of the last ``<answer>…</answer>`` block, or ``None``."""
    end = response.rfind(_ANSWER_CLOSE)
    if end == -1:
        return None
    start = response.rfind(_ANSWER_OPEN, 0, end)
    if start == -1:
        return None
    return response[start + len(_ANSWER_OPEN) : end].strip()


def extract_answer(response: str) -> str | None:
    """The model's final answer: the last ``\\boxed{}`` inside ``<answer>``, else the answer block's text."""
    block = answer_block(response)
    if block is None:
        return None
    boxed = last_boxed(block)
    answer = boxed if boxed is not None else block
    answer = answer.strip()
    return answer or None


def verify_answer(ground_truth: str, answer: str, timeout_s: float = 5.0) -> float:
    """1.0 when math-verify finds ``answer`` equivalent to ``ground_truth``, else 0.0.

    Must run on a main thread for math-verify's own timeouts to apply (see the module docstring).
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    timeout = max(1, int(timeout_s))
    gold = parse(f"\\boxed{{{ground_truth}}}", extraction_config=configs, parsing_timeout=timeout)
    if not gold:
        gold = parse(ground_truth, extraction_config=configs, parsing_timeout=timeout)
    pred = parse(f"\\boxed{{{answer}}}", extraction_config=configs, parsing_timeout=timeout)
    if not gold or not pred:
        # Fall back to exact text match so unparsable but identical answers still count.
        return 1.0 if _normalise(ground_truth) == _normalise(answer) else 0.0
    return 1.0 if verify(gold, pred, timeout_seconds=timeout) else 0.0


def _normalise(text: str) -> str:
    return "".join(text.split()).rstrip(".")


def accuracy_key(response: str, ground_truth: Any, settings: Any) -> Hashable | None:
    """Memo key for the accuracy check: ``(ground_truth, extracted answer)``; ``None`` when nothing to check."""
    answer = extract_answer(response)
    if answer is None:
        return None
    return (str(ground_truth), answer)


def accuracy_from_key(key: Hashable, settings: Any) -> float:
    """Worker-process entry point: ``verify_answer`` on a memo key from :func:`accuracy_key`."""
    ground_truth, answer = key  # type: ignore[misc]
    return verify_answer(ground_truth, answer, timeout_s=getattr(settings, "math_timeout_s", 5.0))
