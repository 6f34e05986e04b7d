"""A test helper: whether a process has stopped running (Linux ``/proc``), for tests that check nothing is left behind."""

from __future__ import annotations

from pathlib import Path


def has_ended(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent or init to reap it (state ``Z``): either way it no longer runs."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
