"""The n-gram repetition penalty: degenerate loops cost up to ``max_penalty``."""

from __future__ import annotations

from itertools import accumulate


def ngram_penalty(response: str, n: int = 20, max_penalty: float = -2.0) -> float:
    """``(1 - unique/total) * (-max_penalty magnitude)`` over lower-cased whitespace-word ``n``-grams.

    Responses shorter than ``n`` words score 0. A response that repeats one ``n``-gram forever approaches
    ``max_penalty``; a response without repeats scores 0.

    >>> ngram_penalty("a b c", n=2)
    0.0
    >>> ngram_penalty("a a a a a", n=2, max_penalty=-2.0)
    -1.5
    """
    if n <= 0:
        return 0.0
    words = response.lower().split()
    total = len(words) - n + 1
    if total <= 1:  # pragma: no mutate (equivalent: `< 1` too; a single n-gram is unique, 0 either way)
        return 0.0
    # Each n-gram as a substring of the space-joined words (slices and str hashes run in C: faster than
    # building tuples of n words). The trailing space makes every n-gram end in exactly one separator.
    text = " ".join(words) + " "
    starts = [0, *accumulate(len(word) + 1 for word in words)]
    unique = len(set(map(text.__getitem__, map(slice, starts[:total], starts[n:]))))
    penalty = (1.0 - unique / total) * max_penalty
    return penalty + 0.0  # normalise -0.0
