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


def children(parent: int, marker: bytes) -> set[int]:
    """Running children of ``parent`` whose command line holds ``marker`` (e.g. ``b"perception_r1.isolation"``)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # not a process, or gone meanwhile
        if fields[1] == str(parent) and fields[0] != "Z" and marker in cmdline:
            found.add(int(entry.name))
    return found
