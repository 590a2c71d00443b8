"""Group commit for the store, off the serving loop.

SQLite calls do not yield to other greenlets: a commit that waits on the disk (a WAL checkpoint
fsyncs) would freeze every long-poll, every attach and the Docker event stream with it. So the
store's writes run in one worker thread (sqlite3 releases the GIL while it works), and a greenlet
that writes waits only for its own commit, cooperatively.

Writes that arrive while a commit is in flight are queued and go in the next transaction together
(group commit): under a burst of job changes there is one transaction per round trip to the
thread, not one per change. Each write keeps its own statements atomic, commits in the order it
was submitted, and may carry an `on_commit` callback, run in that same order once its transaction
is durable: the job table publishes an event only then, so a client never holds a cursor that a
crash could hand out again. A disk that refuses a write (full, I/O error) holds the queue and is
retried: nothing is published that is not durable, and nothing is dropped.
"""
from __future__ import annotations

import logging
import sqlite3
from typing import Callable, Optional

import gevent
import gevent.event
from gevent.threadpool import ThreadPool


log = logging.getLogger(__name__)

#: how long a write that the disk refuses (full, I/O error, locked) waits before its next try
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 5.0


class _Write:
    __slots__ = ("statements", "on_commit", "done")

    def __init__(self, statements: list, on_commit: Optional[Callable[[], None]]):
        self.statements = statements      # [(sql, params)]
        self.on_commit = on_commit
        self.done = gevent.event.Event()


class GroupCommitWriter:
    def __init__(self, db: sqlite3.Connection):
        self._db = db
        self._thread = ThreadPool(1)
        self._queue: list = []
        self._flusher: Optional[gevent.Greenlet] = None
        self.transactions = 0   # how many commits carried the writes (for tests and benches)
        self.writes = 0

    def submit(self, statements: list, on_commit: Optional[Callable[[], None]] = None) -> _Write:
        """Queue `statements` for one atomic write, committed with whatever else is queued.
        Never blocks, never yields: the caller's in-memory change and its write stay in one
        step. `on_commit` runs once the write is durable, in submission order."""
        write = _Write(statements, on_commit)
        self._queue.append(write)
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush_queue)
        return write

    def write(self, statements: list):
        """Submit and wait (cooperatively) until committed."""
        self.submit(statements).done.wait()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything submitted so far is committed. False on timeout."""
        with gevent.Timeout(timeout, False):
            while self._flusher is not None:
                self._flusher.join()
            return True
        return False

    def _flush_queue(self):
        delay = RETRY_FIRST_S
        try:
            while self._queue:
                batch = self._queue[:]
                failures, refusal = self._thread.apply(self._commit_or_refusal, (batch,))
                if refusal is not None:
                    # the disk, not the data: keep the batch (and its order) and try again, so
                    # that nothing is published before it is durable and nothing is dropped
                    log.error("the job table cannot be written (%s); %d writes wait, retrying "
                              "in %.1f s", refusal, len(self._queue), delay)
                    gevent.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                delay = RETRY_FIRST_S
                del self._queue[:len(batch)]
                for write, failure in zip(batch, failures):
                    self._finish(write, failure)
        finally:
            self._flusher = None

    @staticmethod
    def _finish(write: _Write, failure: Optional[BaseException]):
        if failure is not None:
            # not the disk: the write itself is wrong (a bug). Retrying cannot help, and holding
            # it would hold every later event back: log it and go on.
            log.error("a write to the job table failed and is dropped: %s", failure)
        try:
            if write.on_commit is not None:
                write.on_commit()
        except Exception:  # noqa: BLE001 - one caller's callback must not stop the others
            log.exception("after a write to the job table")
        write.done.set()

    def _commit_or_refusal(self, batch: list) -> tuple:
        """(each write's error or None, None), or (None, the error) when the database refused
        the whole batch. Returned, not raised: the thread pool would print a traceback."""
        try:
            return self._commit(batch), None
        except sqlite3.Error as e:
            return None, e

    def _commit(self, batch: list) -> list:
        """In the worker thread: one transaction for the whole batch, each write in a savepoint
        of its own, so that a bad write fails alone. Returns each write's error or None; raises
        OperationalError (the disk) for the whole batch."""
        db = self._db
        failures = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for write in batch:
                db.execute("SAVEPOINT write")
                try:
                    for sql, params in write.statements:
                        db.execute(sql, params)
                except sqlite3.OperationalError:
                    raise
                except sqlite3.Error as e:
                    db.execute("ROLLBACK TO write")
                    failures.append(e)
                else:
                    failures.append(None)
                db.execute("RELEASE write")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.transactions += 1
        self.writes += len(batch)
        return failures

    def close(self, timeout: float = 10.0):
        """Wait (up to `timeout`) for queued writes, then stop the thread."""
        if not self.flush(timeout):
            log.error("%d writes to the job table were not saved before closing", self.pending)
        self._thread.kill()
