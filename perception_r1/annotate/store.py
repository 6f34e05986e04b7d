"""A resumable per-stage result store (SQLite) for the annotation pipeline.

Every paid call's outcome is committed the moment it arrives, keyed by ``(stage, item, request fingerprint)``,
so a killed run resumes without repeating completed calls and changing a prompt or model (a new fingerprint)
makes fresh calls instead of reusing stale ones. One connection, used from the event loop's thread only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    stage TEXT NOT NULL,
    item TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    value TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL DEFAULT (julianday('now')),
    PRIMARY KEY (stage, item, fingerprint)
)
"""


def fingerprint(*parts: Any) -> str:
    """A stable sha256 of JSON-serialisable request parts (model, messages, parameters)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass
class Stored:
    """One stored stage result with the tokens its call used."""

    value: Any
    prompt_tokens: int = 0
    completion_tokens: int = 0


class StageStore:
    """``get``/``put`` of JSON values per ``(stage, item, fingerprint)``; each ``put`` is committed at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"store {self.path}: not a usable SQLite database ({exc})") from None

    def get(self, stage: str, item: str, fp: str) -> Stored | None:
        row = self._db.execute(
            "SELECT value, prompt_tokens, completion_tokens FROM results WHERE stage=? AND item=? AND fingerprint=?",
            (stage, item, fp),
        ).fetchone()
        if row is None:
            return None
        return Stored(json.loads(row[0]), int(row[1]), int(row[2]))

    def put(
        self, stage: str, item: str, fp: str, value: Any, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO results (stage, item, fingerprint, value, prompt_tokens, completion_tokens) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (stage, item, fp, json.dumps(value, ensure_ascii=False), int(prompt_tokens), int(completion_tokens)),
        )

    def count(self, stage: str | None = None) -> int:
        if stage is None:
            return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM results WHERE stage=?", (stage,)).fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
