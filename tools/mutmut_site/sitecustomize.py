"""Subprocess side of tools/mutmut_hooks.py (on ``PYTHONPATH`` only during ``make mutation``).

While mutmut maps tests to functions (``MUTANT_UNDER_TEST=stats``), a subprocess's trampoline hits would be lost
with the process (and mutmut's own recorder needs its config, i.e. a ``pyproject.toml`` in the working directory).
Here each function a subprocess runs is appended, once per test, to the file the parent plugin reads back.
"""

import os

_path = os.environ.get("MUTMUT_CHILD_HITS")
if os.environ.get("MUTANT_UNDER_TEST") == "stats" and _path:
    try:
        import mutmut.mutation.trampoline as _trampoline
    except ImportError:  # pragma: no cover - mutmut not installed in this interpreter
        _trampoline = None
    if _trampoline is not None:
        _seen: set[str] = set()
        _prefixes = tuple(p for p in os.environ.get("MUTMUT_CHILD_MODULES", "perception_r1.").split(",") if p)
        _size = [0]

        def _record(name: str, caller: object = None) -> None:
            try:
                size = os.path.getsize(_path)
            except OSError:
                size = 0
            if size < _size[0]:  # the parent truncated the file: a new test began
                _seen.clear()
            if name not in _seen and name.startswith(_prefixes):
                _seen.add(name)
                line = (name + "\n").encode("utf-8")  # method names hold "ǁ": bytes, whatever the test's locale
                with open(_path, "ab") as handle:
                    handle.write(line)
                size += len(line)
            _size[0] = size

        _trampoline.record_trampoline_hit = _record
