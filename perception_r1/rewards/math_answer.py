"""Final-answer extraction and math-verify checking.

``verify_answer`` is slow (sympy) and can hang on pathological LaTeX. math-verify's own timeouts use SIGALRM,
which only works on a process's main thread, so the scoring engine runs it in a worker process
(:mod:`perception_r1.isolation`) where it *is* the main thread, under a hard kill as a backstop.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from decimal import Decimal
from functools import lru_cache
from typing import Any

_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
BOXED_ONLY: tuple[str, ...] = ("\\boxed{",)
"""What the format reward accepts: the prompt asks for ``\\boxed{}`` (the original's regex takes no ``\\fbox``)."""
_BRACE = re.compile(r"[{}]")
MATH_TIMEOUT_S = 5.0
"""math-verify's parse/verify limit unless a caller says otherwise (the geo3k setting ``math_timeout_s``)."""


def last_boxed(text: str, markers: tuple[str, ...] = ("\\boxed{", "\\fbox{")) -> str | None:
    """The content of the last balanced ``\\boxed{…}`` (or ``\\fbox{…}``) in ``text``; ``None`` if there is none.

    ``markers`` are tried in order: the last ``\\boxed``, else the last ``\\fbox`` (the format reward passes
    :data:`BOXED_ONLY`).

    >>> last_boxed(r"a \\boxed{1} b \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    """
    closing: dict[int, int] | None = None
    for marker in markers:
        start = text.rfind(marker)
        while start != -1:
            if closing is None:
                closing = _matching_braces(text)
            brace = start + len(marker) - 1  # every marker ends with its "{"
            end = closing.get(brace)
            if end is not None:
                return text[brace + 1 : end]
            start = text.rfind(marker, 0, start)  # unbalanced: try the previous one
    return None


def _matching_braces(text: str) -> dict[int, int]:
    """``{index of "{": index of its matching "}"}`` for the balanced braces of ``text``, in one pass.

    One pass over the braces (a stack), so a response of thousands of unbalanced ``\\boxed{`` costs linear work,
    not a rescan to the end per box.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for match in _BRACE.finditer(text):
        if match.group() == "{":
            stack.append(match.start())
        elif stack:
            pairs[stack.pop()] = match.start()
    return pairs


def answer_block(response: str) -> str | None:
    """The text of the last ``<answer>…</answer>`` block, or ``None``."""
    end = response.rfind(_ANSWER_CLOSE)
    if end == -1:
        return None
    start = response[:end].rfind(_ANSWER_OPEN)
    if start == -1:
        return None
    return response[start + len(_ANSWER_OPEN) : end].strip()


def answer_candidate(response: str, fallback: bool = True) -> tuple[str, str] | None:
    """``(kind, text)``: what the accuracy check reads from a response, or ``None`` when there is nothing to check.

    - A complete ``<answer>…</answer>`` block with a non-empty ``\\boxed{…}``: ``("boxed", content)`` of the last
      one.
    - A block without one: ``("block", text)``. The check reads it both as one expression (a bare ``5\\sqrt{3}``)
      and the way math-verify reads free text (``The answer is 5`` → 5), never by boxing the sentence.
    - No complete block (the template not yet learned, or a reply cut off before ``</answer>``): with
      ``fallback``, the last ``\\boxed{…}`` of the whole response, as the original reward falls back to the whole
      response; without a box there is nothing to check (the original's math-verify would pick *any* number of
      the reasoning, a lucky guess, so we do not).

    An ``\\fbox`` is read where there is no ``\\boxed``, as the evaluation reads it: a right answer in the wrong
    box must not score below a wrong answer in the right one (the format reward, which takes only ``\\boxed``,
    teaches the box).

    >>> answer_candidate(r"The answer is \\boxed{5}.")
    ('boxed', '5')
    >>> answer_candidate("<answer>\\nThe answer is 5\\n</answer>")
    ('block', 'The answer is 5')
    """
    if not isinstance(response, str):
        return None
    block = answer_block(response)
    if block is not None:
        boxed = last_boxed(block)
        if boxed is not None and boxed.strip():
            return "boxed", boxed.strip()
        return ("block", block) if block else None
    if not fallback:
        return None
    boxed = last_boxed(response)
    if boxed is not None and boxed.strip():
        return "boxed", boxed.strip()
    return None


def extract_answer(response: str, fallback: bool = True) -> str | None:
    """The model's final answer text (see :func:`answer_candidate`): the last ``\\boxed{}`` inside ``<answer>``,
    else the answer block's text; without a complete block, the last ``\\boxed{}`` of the response."""
    candidate = answer_candidate(response, fallback)
    return candidate[1] if candidate is not None else None


ANSWER_KINDS = ("boxed", "block")
"""How :func:`answer_candidate` read an answer, which decides how :func:`verify_answer` parses it."""


def verify_answer(ground_truth: str, answer: str, timeout_s: float, kind: str = "boxed") -> float:
    """1.0 when math-verify finds ``answer`` equivalent to ``ground_truth``, else 0.0.

    The ground truth is read boxed first (so ``2\\sqrt{3}`` is 2√3, not the 2 that plain-text extraction finds),
    then as plain text. ``kind="boxed"`` reads ``answer`` as one expression; ``kind="block"`` (an answer block
    without ``\\boxed``) also reads it as free text, and either reading may match.
    ``timeout_s`` is math-verify's own parse/verify limit (whole seconds, at least 1); it has no default here so
    that the one default is the task setting ``math_timeout_s``. Must run on a main thread for math-verify's own
    timeouts to apply (see the module docstring).
    """
    if kind not in ANSWER_KINDS:
        raise ValueError(f"kind: expected one of {list(ANSWER_KINDS)}, got {kind!r}")
    from math_verify import verify

    timeout = max(1, int(timeout_s))
    gold = list(_parse_boxed(ground_truth, timeout) or _parse_plain(ground_truth, timeout))
    pred = list(_parse_boxed(answer, timeout))
    if kind == "block":
        pred += list(_parse_plain(answer, timeout))
    if not gold or not pred:
        # Fall back to exact text match so unparsable but identical answers still count.
        return 1.0 if _normalise(ground_truth) == _normalise(answer) else 0.0
    return 1.0 if verify(gold, pred, timeout_seconds=timeout) else 0.0


@lru_cache(maxsize=1)
def _configs() -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


# Parsed expressions are cached per worker process: a ground truth is shared by a whole GRPO group and answers such
# as "x = 12" recur across prompts, while parsing (sympy) is most of a check's cost. ``verify`` does not mutate them.
@lru_cache(maxsize=4096)
def _parse_boxed(text: str, timeout: int) -> tuple:
    from math_verify import parse

    return tuple(parse(f"\\boxed{{{text}}}", extraction_config=_configs(), parsing_timeout=timeout))


@lru_cache(maxsize=4096)
def _parse_plain(text: str, timeout: int) -> tuple:
    from math_verify import parse

    return tuple(parse(text, extraction_config=_configs(), parsing_timeout=timeout))


_WARM_UP_PAIR = ("1", "1")  # pragma: no mutate (equivalent: any two strings import and build the same parsers)


def warm_worker() -> None:
    """Import math-verify and build its parsers in an isolation worker before its first timed check."""
    verify_answer(*_WARM_UP_PAIR, timeout_s=MATH_TIMEOUT_S)


def _normalise(text: str) -> str:
    # Equivalent in practice: stripping more trailing characters (the "XX.XX" mutant) matters only where math-verify
    # can parse neither side, and it parses any text that ends in a letter.
    return "".join(text.split()).rstrip(".")  # pragma: no mutate


_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")


def quick_verdict(key: Hashable) -> float | None:
    """Decide an accuracy key without math-verify when that is certain; ``None`` when math-verify must decide.

    Identical strings are equal; two plain decimal numbers are equal when their values are, and unequal when they
    differ by more than 0.1% (math-verify compares numbers after rounding to 6 decimals, so only near-equal pairs
    need it). In GRPO batches most answers fall here, which saves a worker round trip and ~2 ms of sympy each.
    Keys are :func:`accuracy_key`'s ``(ground_truth, answer, kind)`` (a bare number reads the same way in both
    kinds).

    >>> quick_verdict(("13", "13.0", "boxed")), quick_verdict(("13", "26", "boxed")), quick_verdict(("13", "x = 13", "block"))
    (1.0, 0.0, None)
    """
    ground_truth, answer = key[0].strip(), key[1].strip()  # type: ignore[index]
    if ground_truth == answer:
        return 1.0
    if _PLAIN_NUMBER.fullmatch(ground_truth) and _PLAIN_NUMBER.fullmatch(answer):
        a, b = Decimal(ground_truth), Decimal(answer)
        if a == b:
            return 1.0
        if abs(a - b) > Decimal("0.001") * max(abs(a), abs(b), Decimal(1)):
            return 0.0
    return None


def accuracy_key(response: str, ground_truth: Any, settings: Any) -> Hashable | None:
    """Memo key for the accuracy check: ``(ground_truth, answer, kind)``; ``None`` when nothing to check."""
    candidate = answer_candidate(response, fallback=settings.answer_fallback)
    if candidate is None:
        return None
    kind, answer = candidate
    return (str(ground_truth), answer, kind)


def accuracy_from_key(key: Hashable, settings: Any) -> float:
    """Worker-process entry point: ``verify_answer`` on a memo key ``(ground_truth, answer, kind)`` from
    :func:`accuracy_key`, under the task's ``math_timeout_s``."""
    ground_truth, answer, kind = key  # type: ignore[misc]
    return verify_answer(ground_truth, answer, timeout_s=settings.math_timeout_s, kind=kind)
