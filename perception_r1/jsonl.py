"""The one JSONL line reader every edge of the package shares (CLI inputs, data builders, eval files).

Each reader used to carry its own copy of the same loop; they differed only in the exception type they raise,
so that is a parameter here and the ``path:line`` error messages stay the same everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any, Literal


def iter_jsonl(
    path: str | os.PathLike[str],
    error: type[Exception] = ValueError,
    require_object: bool = True,
    *,
    name: str | None = None,
    on_invalid: Literal["raise", "yield"] = "raise",
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line of a UTF-8 JSONL file (numbers start at 1).

    Errors are ``error(message)`` with the message naming the file and line, so callers keep their own
    exception type (``CommandError``, ``DataError``, ...):

    - ``cannot read <path>: <reason>`` when the file cannot be opened;
    - ``<path>:<n>: invalid JSON (<reason>)`` for a line that does not decode;
    - ``<path>:<n>: expected a JSON object, got <type>`` for a non-object row when ``require_object``
      (pass ``False`` to check rows yourself, e.g. with a message naming the fields a row needs).

    ``name`` is how the file is called in messages (default: ``path`` as given). With ``on_invalid="yield"``
    an undecodable line yields its :class:`json.JSONDecodeError` in place of the object instead of raising,
    for readers that report bad rows and go on.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
    ...     _ = f.write('{"a": 1}\\n\\n{"a": 2}\\n')
    >>> list(iter_jsonl(f.name))
    [(1, {'a': 1}), (3, {'a': 2})]
    >>> os.unlink(f.name)
    """
    label = str(path) if name is None else name
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {label}: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                if on_invalid == "yield":
                    yield number, exc
                    continue
                raise error(f"{label}:{number}: invalid JSON ({exc.msg})") from None
            if require_object and not isinstance(obj, dict):
                raise error(f"{label}:{number}: expected a JSON object, got {type(obj).__name__}")
            yield number, obj


__all__ = ["iter_jsonl"]
