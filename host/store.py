"""Durable local state in the state dir: the job table and the recent events (stdlib sqlite3).

A job's new state and the event announcing it are written in one transaction, so after a crash the
table and the event log agree, and event cursors keep increasing across restarts.
SQLite calls do not yield to other greenlets; they are short local writes (WAL, synchronous=NORMAL).
"""
from __future__ import annotations

import os
import sqlite3
from typing import Optional

import simplejson

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (cursor INTEGER PRIMARY KEY, data TEXT NOT NULL);
"""


class Store:
    def __init__(self, path: str, events_kept: int):
        self.path = path
        self.events_kept = events_kept
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._writes = 0

    @classmethod
    def in_dir(cls, state_dir: str, events_kept: int) -> "Store":
        os.makedirs(state_dir, exist_ok=True)
        return cls(os.path.join(state_dir, "jobs.sqlite3"), events_kept)

    def save(self, seq: int, job: dict, event: Optional[dict] = None):
        """Write one job (and the event about it) atomically. `seq` orders jobs by creation."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO jobs (id, seq, data) VALUES (?, ?, ?)",
                             (job["job"]["id"], seq, simplejson.dumps(job)))
            if event is not None:
                self._db.execute("INSERT INTO events (cursor, data) VALUES (?, ?)",
                                 (event["cursor"], simplejson.dumps(event)))
                self._writes += 1
                if self._writes % 500 == 0:  # trim now and then, not on every write
                    self._db.execute("DELETE FROM events WHERE cursor <= ?",
                                     (event["cursor"] - self.events_kept,))

    def delete_job(self, job_id: str):
        with self._transaction():
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def load_jobs(self) -> list:
        """[(seq, job dict)] oldest first."""
        rows = self._db.execute("SELECT seq, data FROM jobs ORDER BY seq").fetchall()
        return [(seq, simplejson.loads(data)) for seq, data in rows]

    def load_events(self) -> list:
        """The newest `events_kept` events, oldest first."""
        rows = self._db.execute("SELECT data FROM events ORDER BY cursor DESC LIMIT ?",
                                (self.events_kept,)).fetchall()
        return [simplejson.loads(data) for (data,) in reversed(rows)]

    def _transaction(self):
        return _Transaction(self._db)

    def close(self):
        self._db.close()


class _Transaction:
    def __init__(self, db):
        self._db = db

    def __enter__(self):
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, tb):
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
