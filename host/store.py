"""Durable local state in the state dir: the job table, the recent events, and a few facts about
the state dir itself (stdlib sqlite3).

A job's new state and the event announcing it are written in one transaction, so after a crash the
table and the event log agree, and event cursors keep increasing across restarts.
Writes go through a GroupCommitWriter (host.store_writer): the writes of one turn of the loop go
in one transaction, and the checkpoints (the only fsyncs in WAL mode with synchronous=NORMAL) run
in a worker thread, so the serving loop never waits on the disk.
The file holds every job's environment: it is created readable by its owner only.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Callable, Optional

import simplejson

from host.store_writer import GroupCommitWriter
from host.types import Event, active_job_from_dict

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (cursor INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: file mode of the job table (and of SQLite's -wal and -shm files, which copy it)
PRIVATE_MODE = 0o600


class StoreDamaged(Exception):
    """The file is not a readable job table (not a database, truncated, rows that do not parse).
    The state dir sets it aside and starts a new one."""


@dataclass(slots=True)
class Snapshot:
    """Everything a store holds, read once at start-up."""
    jobs: list = field(default_factory=list)      # [(seq, ActiveJob)] oldest first
    events: list = field(default_factory=list)    # [Event] oldest first, the newest events_kept
    meta: dict = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not (self.jobs or self.events or self.meta)


class Store:
    def __init__(self, path: str, events_kept: int):
        """Open (or create) the store at `path`. Raises StoreDamaged."""
        self.path = path
        self.events_kept = events_kept
        self._events_written = 0
        try:
            _create_private(path)
        except OSError as e:  # e.g. a directory where the file should be
            raise StoreDamaged(f"cannot open: {e.strerror or e}") from e
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreDamaged(f"cannot open: {e}") from e
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check")]
            if problems == ["ok"]:
                self._db.executescript(SCHEMA)
        except sqlite3.Error as e:
            problems = [str(e)]
        if problems != ["ok"]:
            self._db.close()
            raise StoreDamaged("; ".join(problems[:3]))
        for companion in (path + "-wal", path + "-shm"):
            _tighten(companion)
        self.writer = GroupCommitWriter(self._db, path)

    def load(self) -> Snapshot:
        """Everything in the store, checked. Raises StoreDamaged when anything does not read."""
        try:
            jobs = [(seq, active_job_from_dict(simplejson.loads(data))) for seq, data in
                    self._db.execute("SELECT seq, data FROM jobs ORDER BY seq")]
            rows = self._db.execute("SELECT data FROM events ORDER BY cursor DESC LIMIT ?",
                                    (self.events_kept,)).fetchall()
            events = [Event(**simplejson.loads(data)) for (data,) in reversed(rows)]
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except (sqlite3.Error, ValueError, KeyError, TypeError) as e:
            raise StoreDamaged(f"unreadable contents: {e!r}") from e
        return Snapshot(jobs, events, meta)

    def set_meta(self, key: str, value: str):
        """Written before this returns (the state dir's facts are set at start-up)."""
        self.writer.write([("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            (key, value))])

    def save(self, seq: int, job: dict, event: Optional[dict] = None,
             on_commit: Optional[Callable[[], None]] = None):
        """Queue one job (and the event about it) for an atomic write; `seq` orders jobs by
        creation. Returns at once; `on_commit` runs once it is durable, in the order of the
        saves."""
        statements = [("INSERT OR REPLACE INTO jobs (id, seq, data) VALUES (?, ?, ?)",
                       (job["job"]["id"], seq, simplejson.dumps(job)))]
        if event is not None:
            statements.append(("INSERT INTO events (cursor, data) VALUES (?, ?)",
                               (event["cursor"], simplejson.dumps(event))))
            self._events_written += 1
            if self._events_written % 500 == 0:  # trim now and then, not on every write
                statements.append(("DELETE FROM events WHERE cursor <= ?",
                                   (event["cursor"] - self.events_kept,)))
        self.writer.submit(statements, on_commit)

    def delete_job(self, job_id: str):
        self.writer.submit([("DELETE FROM jobs WHERE id = ?", (job_id,))])

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every write queued so far is durable."""
        return self.writer.flush(timeout)

    def close(self):
        self.writer.close()
        self._db.close()


def _create_private(path: str):
    """Create the file owner-only before SQLite does (it would use the umask), and tighten one
    an older version created."""
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, PRIVATE_MODE))
    _tighten(path)


def _tighten(path: str):
    try:
        if os.stat(path).st_mode & 0o777 != PRIVATE_MODE:
            os.chmod(path, PRIVATE_MODE)
    except FileNotFoundError:
        pass

