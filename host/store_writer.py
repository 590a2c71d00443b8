"""Group commit for the store, with the disk's waits off the serving loop.

SQLite calls do not yield to other greenlets. In WAL mode with synchronous=NORMAL a commit does
not wait on the disk: it appends to the -wal file (the page cache), and only a checkpoint, which
copies the WAL back into the database, fsyncs. So:
- commits run on the loop, but batched: a change queues its write without yielding, and the
  writes queued during one turn of the loop go in one transaction (group commit) when the writer
  greenlet next runs. A burst of 200 job changes is one commit of a few hundred microseconds,
  not 200;
- checkpoints run in a worker thread of their own, on a connection of their own (the writer's
  automatic checkpoints are off), every CHECKPOINT_EVERY commits. A checkpoint that waits on a
  slow disk holds nobody: commits carry on into the WAL meanwhile.
Commits do not go to the thread as well: a thread needs the GIL for every statement, and while
the loop is busy serving (when it matters) each hand-over waits for the interpreter's switch
interval; measured, a commit through the thread took 107 ms at the median with a busy loop,
against 0.1 ms inline.

Each write keeps its statements atomic (a savepoint of its own: one bad write fails alone),
commits in the order it was submitted, and may carry an `on_commit` callback, run in that order
once its transaction is durable: the job table publishes an event only then, so a client never
holds a cursor that a crash could hand out again. A database that refuses a transaction (disk
full, I/O error) holds the queue and is retried: nothing is published that is not durable, and
nothing is dropped.
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
#: commits between checkpoints (SQLite's own default is about 1,000 pages of WAL)
CHECKPOINT_EVERY = 200


class _Write:
    __slots__ = ("statements", "on_commit", "done")

    def __init__(self, statements: list, on_commit: Optional[Callable[[], None]]):
        self.statements = statements      # [(sql, params)]
        self.on_commit = on_commit
        self.done = gevent.event.Event()


class GroupCommitWriter:
    def __init__(self, db: sqlite3.Connection, path: str, checkpoint_every: int = CHECKPOINT_EVERY):
        self._db = db
        self._path = path
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints (the fsyncs) are ours
        self.checkpoint_every = checkpoint_every
        self._thread = ThreadPool(1)
        self._checkpoint_db: Optional[sqlite3.Connection] = None  # used in the thread only
        self._checkpointing = None   # the running checkpoint's AsyncResult
        self._since_checkpoint = 0
        self._queue: list = []
        self._flusher: Optional[gevent.Greenlet] = None
        self.transactions = 0   # commits that carried the writes (for tests and benches)
        self.writes = 0
        self.checkpoints = 0

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
                try:
                    failures = self._commit(batch)
                except sqlite3.Error as refusal:
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
                self._checkpoint_now_and_then()
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

    def _commit(self, batch: list) -> list:
        """One transaction for the whole batch, each write in a savepoint of its own, so that a
        bad write fails alone. Returns each write's error or None; raises sqlite3.Error when
        the database refuses the whole batch."""
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

    # ---- checkpoints, in the worker thread ------------------------------------------------

    def _checkpoint_now_and_then(self):
        self._since_checkpoint += 1
        previous = self._checkpointing
        busy = previous is not None and not previous.ready()
        if self._since_checkpoint >= self.checkpoint_every and not busy:
            if previous is not None and previous.successful() and previous.value is not None:
                log.warning("checkpointing the job table: %s (tried again now)", previous.value)
            self._since_checkpoint = 0
            self._checkpointing = self._thread.spawn(self._checkpoint)

    def _checkpoint(self) -> Optional[sqlite3.Error]:
        """In the thread: copy the WAL into the database (PASSIVE: writers are not held).
        The error is returned, not raised (the pool would print a traceback); the next
        checkpoint tries again."""
        try:
            if self._checkpoint_db is None:
                self._checkpoint_db = sqlite3.connect(self._path, isolation_level=None,
                                                      check_same_thread=False)
            self._checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:  # logged by the loop: logging's locks are the loop's
            return e
        self.checkpoints += 1
        return None

    def close(self, timeout: float = 10.0):
        """Wait (up to `timeout`) for queued writes and a running checkpoint, then stop."""
        if not self.flush(timeout):
            log.error("%d writes to the job table were not saved before closing", self.pending)
        if self._checkpointing is not None:
            self._checkpointing.wait(timeout)
        if self._checkpoint_db is not None:
            self._checkpoint_db.close()
        self._thread.kill()
