"""The state dir: what an agent keeps on this machine, and what happens when it is damaged.

It holds the job table (jobs.sqlite3), the host id (host-id) and a lock. One agent at a time:
the lock is taken at start and a second agent on the same dir is refused with a clear error.

Nothing in it may stop the agent. A damaged file (not a database, truncated, rows that do not
read, a host-id file that is not one id and a newline) is moved aside as
<name>.damaged-<UTC time> for the operator, with one warning, and the agent carries on: the job
table is rebuilt from the containers' labels by the supervisor's reconciliation. Its event
history is gone with it, so event cursors then restart above anything the old table can have
handed out (the current time in microseconds): a client with an older cursor gets 410
cursor_expired and re-lists, never events under numbers that meant something else.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Optional

from host.errors import FatalError
from host.store import Snapshot, Store, StoreDamaged
from host.types import id_problem

log = logging.getLogger(__name__)

DB_NAME = "jobs.sqlite3"
HOST_ID_NAME = "host-id"
LOCK_NAME = "lock"


class StateDirInUse(FatalError):
    """Another agent holds this state dir."""


@dataclass(slots=True)
class LocalState:
    """What an agent starts from, in a state dir it holds until close()."""
    state_dir: "StateDir"
    host_id: str
    state_id: str                 # made once per job table; see HostRecord.state_id
    store: Store
    snapshot: Snapshot
    cursor_floor: int             # event cursors continue above this

    def close(self):
        self.store.close()
        self.state_dir.unlock()


def open_state(path: str, given_id: Optional[str], events_kept: int) -> LocalState:
    """Take the state dir at `path` (raises StateDirInUse) and open what it holds."""
    state_dir = StateDir(path)
    state_dir.lock()
    try:
        return state_dir.open(given_id, events_kept)
    except BaseException:
        state_dir.unlock()
        raise


def derive_host_id() -> str:
    """A host id from the hostname (or a random one when the hostname makes none)."""
    derived = re.sub(r"[^A-Za-z0-9_.-]", "", socket.gethostname())[:128]
    return derived if not id_problem(derived) else uuid.uuid4().hex


class StateDir:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(path, mode=0o700, exist_ok=True)
        # read before anything here is written: a state dir an agent has used before whose job
        # table is missing lost its history, and event cursors must say so
        self._used_before = any(os.path.exists(self._file(name))
                                for name in (DB_NAME, HOST_ID_NAME, DB_NAME + "-wal"))
        self._lock_fd: Optional[int] = None

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # ---- one agent at a time ---------------------------------------------------------------

    def lock(self):
        """Take the state dir for this process. Raises StateDirInUse."""
        fd = os.open(self._file(LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise StateDirInUse(f"state dir {self.path} is in use by another flynn-host (pid "
                                f"{holder}); give each agent its own -state-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # ---- opening -----------------------------------------------------------------------------

    def open(self, given_id: Optional[str], events_kept: int) -> LocalState:
        """The job table and host id, each rebuilt when damaged (see the module docstring)."""
        store, snapshot, lost = self._open_store(events_kept)
        host_id = self._host_id(given_id, snapshot.meta.get("host_id"))
        if snapshot.meta.get("host_id") != host_id:
            store.set_meta("host_id", host_id)
        state_id = snapshot.meta.get("state_id")
        if state_id is None:
            state_id = uuid.uuid4().hex
            store.set_meta("state_id", state_id)
        floor = int(snapshot.meta.get("cursor_floor", 0))
        if lost:
            floor = int(time.time() * 1e6)
            store.set_meta("cursor_floor", str(floor))
            log.warning("the job table %s; rebuilding it from the containers' labels; event "
                        "cursors restart at %d (clients with older cursors get 410 and re-list)",
                        lost, floor)
        return LocalState(self, host_id, state_id, store, snapshot, floor)

    def _open_store(self, events_kept: int) -> tuple:
        """(Store, Snapshot, lost): lost says how a table this state dir had was lost (None
        when it was not)."""
        path = self._file(DB_NAME)
        companions = (path + "-wal", path + "-shm")
        lost = "is missing from a state dir used before" if self._used_before else None
        if not os.path.exists(path):
            # SQLite would replay a leftover write-ahead log into a new, empty file
            self._set_aside(companions)
        else:
            try:
                store = Store(path, events_kept)
                try:
                    snapshot = store.load()
                except StoreDamaged:
                    store.close()
                    raise
                # a zero-length file reads as an empty database: its table is lost all the same
                return store, snapshot, lost if snapshot.is_empty else None
            except StoreDamaged as e:
                aside = self._set_aside((path, *companions))
                lost = f"was not readable ({e}); moved aside to {aside}"
        store = Store(path, events_kept)
        return store, store.load(), lost

    def _host_id(self, given: Optional[str], from_table: Optional[str]) -> str:
        """-id if given; else the host-id file's; else the id the job table recorded (the file
        was lost); else one derived from the hostname. Kept in the host-id file from then on,
        so renaming the machine does not turn it into a different host."""
        kept = self._read_host_id()
        if given:
            if kept and kept != given:
                log.warning("state dir %s was used by host %s; running as %s (-id)", self.path,
                            kept, given)
            host_id = given
        elif kept:
            host_id = kept
        elif from_table:
            host_id = from_table
            log.warning("host id %s recovered from the job table", host_id)
        else:
            host_id = derive_host_id()
        if kept != host_id:
            tmp = self._file(HOST_ID_NAME + ".tmp")
            with open(tmp, "w") as f:
                f.write(host_id + "\n")
            os.replace(tmp, self._file(HOST_ID_NAME))
        return host_id

    def _read_host_id(self) -> Optional[str]:
        """The id in the host-id file; None when there is none. A file that is not one valid id
        and a newline (unreadable, truncated, garbage) is set aside."""
        path = self._file(HOST_ID_NAME)
        try:
            with open(path, "rb") as f:
                raw = f.read(1024)
            text = raw.decode("ascii")
            problem = "no final newline (truncated)" if not text.endswith("\n") else \
                id_problem(text[:-1])
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            problem = f"unreadable ({e})"
        if problem:
            aside = self._set_aside((path,))
            log.warning("host id file %s is damaged: %s; moved aside to %s", path, problem,
                        aside)
            return None
        return text[:-1]

    @staticmethod
    def _set_aside(paths: tuple) -> Optional[str]:
        """Rename each existing path to <path>.damaged-<UTC time>[-N], kept for the operator
        (never over an earlier one). Returns the first new name (None when none existed)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        first = None
        for path in paths:
            if not os.path.lexists(path):
                continue
            aside, n = f"{path}.damaged-{stamp}", 1
            while os.path.lexists(aside):
                n += 1
                aside = f"{path}.damaged-{stamp}-{n}"
            os.rename(path, aside)
            first = first or aside
        return first
