"""Event delivery under load: 1,000 concurrent clients on one agent while jobs generate events,
side by side with a baseline server, in five modes.

Clients either long-poll (`GET /host/events?since=C&wait=30` over kept-alive connections) or hold
one stream each (`?stream=true`). Jobs are placed at a steady rate. For every event each client
receives: latency = receipt time - the event's own `time`; each client checks that it saw every
cursor exactly once (missed = gaps or repeats). Reported: p50/p99/max latency and missed events.

Modes (BENCH_MODES, comma-separated; default all):
- churn: 1,000 long-pollers; the jobs run `true` containers (~3 events each): Docker work in the
  agent's process. Target: p99 <= 1.3x the baseline.
- quiet: 1,000 long-pollers; the jobs fail at once (an image the agent may not pull: no
  container work, 2 events each). Target: p99 <= 1.1x the baseline, 0 missed. The agent with a
  token and /metrics runs here as a third side (secure / agent: what auth and metrics cost).
- quiet-200: the same with 200 clients. Target: p99 <= 100 ms, 0 missed.
- streams: 1,000 streams, the jobs of quiet. Target: p99 <= 50 ms.
- streams-churn: 1,000 streams, the jobs of churn. Target: p99 <= 1.2x the baseline.

The baseline is the agent's own server (host.server's handler: the same lean header parsing, one
send an answer) answering the same protocol, long-poll and stream, from an in-memory list, fed at
the agent side's nominal event rate, evenly spaced, with events of the agent's shape and size (a
job event with its summary, about 500 bytes). In the churn modes a separate process starts `true`
containers at the agent side's rate meanwhile, so that dockerd, containerd and runc load these
cores alike on both sides (the same engine calls a job: create, start, an inspect, Docker's
event stream followed, an inspect for each exit). Both sides publish only once every client is
connected. The sides run interleaved, BENCH_ROUNDS rounds each (2) in alternating order (agent
first, then baseline first), and each side's latencies are pooled over its rounds. The figures
against their targets come last (bench/report.py), for bench/run's table.

Needs DOCKER_HOST and the test image (bin/test provisions both): `python bench/longpoll.py`.
Tunables: BENCH_CLIENTS (1000), BENCH_SECONDS (20 a round), BENCH_JOBS_PER_S (4),
BENCH_ROUNDS (2). BENCH_PROFILE=DIR records the plain agent of each mode with py-spy
(`pip install py-spy`): a flame graph DIR/longpoll-MODE.svg and the collapsed stacks
DIR/longpoll-MODE.txt (bench/profile_top.py sums them into the functions that cost most).
"""
from gevent import monkey

monkey.patch_all()

import http.client  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import simplejson  # noqa: E402

from bench.report import ratio_met, target  # noqa: E402

CLIENTS = int(os.environ.get("BENCH_CLIENTS", 1000))
SECONDS = float(os.environ.get("BENCH_SECONDS", 20))
JOBS_PER_S = float(os.environ.get("BENCH_JOBS_PER_S", 4))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 2))
MISSING_IMAGE = "flynn-bench/not-pullable:latest"  # -registries localhost:1: fails at once


@dataclass(frozen=True)
class Mode:
    name: str
    clients: int
    stream: bool
    churn: bool          # jobs run containers (3 events each); else they fail at once (2)
    with_secure: bool = False

    @property
    def events_per_job(self) -> int:
        return 3 if self.churn else 2


MODES = [Mode("churn", CLIENTS, False, True), Mode("quiet", CLIENTS, False, False, True),
         Mode("quiet-200", min(200, CLIENTS), False, False),
         Mode("streams", CLIENTS, True, False), Mode("streams-churn", CLIENTS, True, True)]


def event_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Client:
    """A minimal HTTP/1.1 keep-alive long-poll client on a raw socket: the benchmark should
    measure the server, and http.client's header parsing would cost more than the server's
    reply."""

    def __init__(self, port: int, since: int, auth: bytes = b""):
        self.port = port
        self.auth = auth  # an Authorization header line, for the secure agent
        self.sock = None
        self.buffer = b""
        self.cursor = since
        self.first = since
        self.seen = []
        self.latencies = []
        self.errors = 0

    def _connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def _send_get(self, path: str):
        self.sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
                          self.auth + b"\r\n")

    def _head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return head

    def _get(self, path: str) -> tuple:
        if self.sock is None:
            self._connect()
        self._send_get(path)
        head = self._head()
        status = int(head[9:12])
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        while len(self.buffer) < length:
            self._recv()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body

    def _recv(self):
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("closed")
        self.buffer += data

    def _saw(self, event: dict, received: float):
        self.seen.append(event["cursor"])
        self.latencies.append(received - event_time(event["time"]))

    def _failed(self):
        self.errors += 1
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        gevent.sleep(0.1)

    def run(self, until_cursor: gevent.event.AsyncResult):
        while True:
            final = until_cursor.get() if until_cursor.ready() else None
            if final is not None and self.cursor >= final:
                return
            try:
                status, body = self._get(f"/host/events?since={self.cursor}&wait=30")
            except (OSError, ValueError, IndexError):
                self._failed()
                continue
            received = time.time()
            if status != 200:
                self.errors += 1
                continue
            page = simplejson.loads(body)
            for event in page["events"]:
                self._saw(event, received)
            self.cursor = page["cursor"]

    def missed(self, final: int) -> int:
        expected = set(range(self.first + 1, final + 1))
        return len(expected - set(self.seen)) + (len(self.seen) - len(set(self.seen)))


class StreamClient(Client):
    """One `?stream=true` answer held open: chunked newline-delimited events."""

    def run(self, until_cursor: gevent.event.AsyncResult):
        while True:
            try:
                self._connect()
                self.sock.settimeout(0.5)  # to look at until_cursor while the stream is idle
                self._send_get(f"/host/events?since={self.cursor}&stream=true")
                while b"\r\n\r\n" not in self.buffer:
                    self._recv_or_idle()
                head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                if head[9:12] != b"200" or b"chunked" not in head.lower():
                    raise ValueError(head[:40])
                if self._read_chunks(until_cursor):
                    self.sock.close()
                    return
            except (OSError, ValueError, IndexError):
                self._failed()

    def _recv_or_idle(self) -> bool:
        try:
            self._recv()
            return True
        except socket.timeout:
            return False

    def _read_chunks(self, until_cursor) -> bool:
        lines = b""
        while True:
            final = until_cursor.get() if until_cursor.ready() else None
            if final is not None and self.cursor >= final:
                return True
            if b"\r\n" not in self.buffer:
                self._recv_or_idle()
                continue
            size_line, rest = self.buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                raise ValueError("the stream ended")
            while len(rest) < size + 2:
                if self._recv_or_idle():
                    rest = self.buffer.split(b"\r\n", 1)[1]
            received = time.time()
            lines += rest[:size]
            self.buffer = rest[size + 2:]
            *complete, lines = lines.split(b"\n")
            for line in complete:
                if line:
                    event = simplejson.loads(line)
                    self._saw(event, received)
                    self.cursor = event["cursor"]


def measure(port: int, generate, label: str, mode: Mode, token: str = "") -> dict:
    """Run the mode's clients against the server on `port` while `generate()` produces events;
    generate returns the last cursor it caused."""
    import urllib.request
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/host/events", headers=headers)
    with urllib.request.urlopen(request) as resp:
        since = simplejson.loads(resp.read())["cursor"]
    final = gevent.event.AsyncResult()
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    kind = StreamClient if mode.stream else Client
    clients = [kind(port, since, auth) for _ in range(mode.clients)]
    pollers = [gevent.spawn(c.run, final) for c in clients]
    gevent.sleep(2 + mode.clients / 500)  # let every client connect and park in its wait
    started = time.monotonic()
    last = generate()
    elapsed = time.monotonic() - started
    final.set(last)
    gevent.joinall(pollers, timeout=60)
    unfinished = sum(1 for p in pollers if not p.ready())
    gevent.killall(pollers, block=False)
    latencies = sorted(x for c in clients for x in c.latencies)
    result = dict(summary(latencies), label=label, events=last - since,
                  rate=(last - since) / elapsed, latencies=latencies,
                  missed=sum(c.missed(last) for c in clients),
                  errors=sum(c.errors for c in clients), unfinished=unfinished)
    print(f"  {label:<9} {result['events']} events ({result['rate']:.1f}/s) to {mode.clients} "
          f"clients: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
          f"max {result['max_ms']:.1f} ms, missed {result['missed']}, errors "
          f"{result['errors']}, not finished {unfinished}", flush=True)
    return result


def summary(latencies: list) -> dict:
    if not latencies:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
            "max_ms": 1000 * latencies[-1]}


class AgentSide:
    """One agent process for a mode's rounds, plain (no token, -metrics=false) or secure (a
    token and /metrics: every request authenticated and counted)."""

    def __init__(self, mode: Mode, secure: bool):
        import tempfile

        from tests.support import TEST_IMAGE, AgentProcess, require_docker
        self.mode, self.label = mode, "secure" if secure else "agent"
        self.runtime = require_docker()
        args = ["-log-level", "warning", "-retain-ended", "20", "-cpu-shares", "1000000",
                "-max-waits-per-client", str(mode.clients + 100)]
        if not mode.churn:
            args += ["-registries", "localhost:1"]  # MISSING_IMAGE may not be pulled: fails
        self.token, token_file = "", None
        if secure:
            self.token = "bench-token-0123456789abcdef"
            token_file = os.path.join(tempfile.mkdtemp(), "token")
            with open(token_file, "w") as f:
                f.write(self.token + "\n")
        else:
            args.append("-metrics=false")
        self.agent = AgentProcess(f"benchpoll{os.getpid()}{mode.name}{self.label}", args=args,
                                  token_file=token_file).start()
        self.auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        image = os.environ.get("BENCH_IMAGE", TEST_IMAGE) if mode.churn else MISSING_IMAGE
        self.body = simplejson.dumps({"config": {"image": image, "cmd": ["true"]}})
        self.profiler = None
        if os.environ.get("BENCH_PROFILE") and not secure:
            self.profiler = start_profiler(self.agent.proc.pid, os.environ["BENCH_PROFILE"],
                                           f"longpoll-{mode.name}")

    def _place(self, job_id: str):
        conn = http.client.HTTPConnection("127.0.0.1", self.agent.port, timeout=60)
        conn.request("PUT", f"/host/jobs/{job_id}", body=self.body, headers=self.auth)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 202, resp.status

    def _generate(self, round_no: int) -> int:
        # each PUT in its own greenlet at its scheduled time, so that a slow answer does not
        # lower the event rate
        started, n, puts = time.monotonic(), 0, []
        while time.monotonic() - started < SECONDS:
            puts.append(gevent.spawn(self._place, f"poll-{round_no}-{n}"))
            n += 1
            gevent.sleep(max(0.0, started + n / JOBS_PER_S - time.monotonic()))
        gevent.joinall(puts, raise_error=True)
        conn = http.client.HTTPConnection("127.0.0.1", self.agent.port, timeout=30)
        # every job placed reaches its final state before we take the cursor
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            conn.request("GET", "/host/status", headers=self.auth)
            status = simplejson.loads(conn.getresponse().read())
            if sum(status["jobs"].get(s, 0) for s in ("starting", "running")) == 0:
                return status["events_cursor"]
            gevent.sleep(0.2)
        raise AssertionError("jobs did not finish")

    def round(self, round_no: int) -> dict:
        return measure(self.agent.port, lambda: self._generate(round_no), self.label, self.mode,
                       self.token)

    def close(self):
        from tests.support import remove_host_containers
        stop_profiler(self.profiler)
        self.agent.cleanup()
        remove_host_containers(self.runtime, self.agent.host_id)


class BaselineSide:
    """A fresh baseline server process for each round, fed at the agent side's nominal rate."""

    label = "baseline"

    def __init__(self, mode: Mode):
        self.mode = mode
        self.rate = JOBS_PER_S * mode.events_per_job

    def round(self, round_no: int) -> dict:
        from tests.support import free_port
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(port),
                                 str(self.rate)], stdout=subprocess.PIPE)
        proc.stdout.readline()  # listening
        churn = []

        def generate():
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", "/start")  # every client is connected now
            conn.getresponse().read()
            if self.mode.churn:
                churn.append(subprocess.Popen([sys.executable, __file__, "--churn",
                                               str(JOBS_PER_S), str(SECONDS)]))
            gevent.sleep(SECONDS)
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", "/host/events")
            cursor = simplejson.loads(conn.getresponse().read())["cursor"]
            conn.close()
            return cursor
        try:
            return measure(port, generate, self.label, self.mode)
        finally:
            proc.kill()
            proc.wait()
            for process in churn:
                process.wait()

    def close(self):
        pass


def start_profiler(pid: int, directory: str, name: str) -> list:
    """py-spy recording `pid` (its greenlets' stacks, idle included) until stop_profiler()."""
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, name)
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")  # installed in the venv
    py_spy = beside if os.path.exists(beside) else "py-spy"
    return [subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "200",
                              "--format", fmt, "--output", f"{base}.{ext}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for fmt, ext in (("flamegraph", "svg"), ("raw", "txt"))]


def stop_profiler(profilers):
    for proc in profilers or ():
        proc.send_signal(__import__("signal").SIGINT)  # py-spy writes its output on SIGINT
        proc.wait(timeout=60)


# ---- the baseline server: the same protocol with nothing behind it ------------------------------

def baseline_server(port: int, rate: float):
    """The same protocol from an in-memory list, served by the agent's own server (host.server:
    the same lean header parsing, one send an answer), so that the ratio is what the agent's
    application adds. It publishes only once told to (GET /start), as the agent side publishes
    only once every client is connected: events during the connect storm would inflate its
    latencies."""
    from urllib.parse import parse_qs

    from host.server import wsgi_server
    events, changed, publishing = [], [gevent.event.Event()], gevent.event.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/start":
            publishing.set()
            start_response("204 No Content", [])
            return []
        query = parse_qs(environ.get("QUERY_STRING", ""))
        since = int(query.get("since", [len(events)])[0])
        if query.get("stream") == ["true"]:
            start_response("200 OK", [("Content-Type", "application/x-ndjson")])
            return stream(since)
        wait = float(query.get("wait", ["0"])[0])
        deadline = time.monotonic() + wait
        while len(events) <= since and time.monotonic() < deadline:
            changed[0].wait(deadline - time.monotonic())
        body = ('{"events": [%s], "cursor": %d}' % (",".join(events[since:]), len(events)))
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body.encode()]

    def stream(cursor: int):
        yield b"\n"
        while True:
            if len(events) <= cursor:
                changed[0].wait(15)
            new, cursor = events[cursor:], len(events)
            yield ("".join(e + "\n" for e in new) or "\n").encode()

    def generate():
        publishing.wait()
        started, n = time.monotonic(), 0
        while True:
            n += 1
            events.append(baseline_event(n, datetime.utcnow().isoformat() + "Z"))
            old, changed[0] = changed[0], gevent.event.Event()
            old.set()
            gevent.sleep(max(0.0, started + n / rate - time.monotonic()))

    wsgi_server(app, "127.0.0.1", port)  # started; served until this process is killed
    gevent.spawn(generate)
    print(len(events), flush=True)
    gevent.wait()


def baseline_event(cursor: int, time_text: str) -> str:
    """A job event of the shape and size the agent publishes (about 500 bytes: the job's
    summary rides along), so that both sides send, and the clients read, the same bytes."""
    job_id = f"baseline-{cursor}"
    return simplejson.dumps({
        "cursor": cursor, "type": "job", "event": "create", "host_id": "baseline",
        "job_id": job_id, "job": {
            "id": job_id, "status": "starting", "image": MISSING_IMAGE,
            "spec_digest": "65ff6d3a58f0cffd5049e094d4e4721b", "ports": [],
            "resources": {"memory_mb": 0, "cpu_shares": 0}, "exit_status": None, "error": None,
            "created_at": time_text, "started_at": None, "ended_at": None, "command": "true",
            "container_id": None, "internal_ip": None},
        "time": time_text})


def churn_containers(jobs_per_s: float, seconds: float):
    """Start `true` containers at the agent side's rate, making the engine calls the agent makes
    for each (create, start, an inspect after the start, Docker's event stream followed, an
    inspect for each exit), so that the baseline runs while dockerd, containerd and runc do the
    same work on these 2 cores as on the agent side."""
    from tests.support import TEST_IMAGE, remove_host_containers, require_docker
    runtime = require_docker()
    api = runtime._client()
    label = f"benchchurn{os.getpid()}"

    def follow_events():
        for event in api.events(filters={"label": [f"flynn-host.id={label}"]}, decode=True):
            if event.get("status") == "die":
                api.inspect_container(event["id"])

    def one():
        container = api.create_container(TEST_IMAGE, ["true"], labels={"flynn-host.id": label})
        api.start(container)
        api.inspect_container(container)

    follower = gevent.spawn(follow_events)
    started, n, runs = time.monotonic(), 0, []
    while time.monotonic() - started < seconds:
        runs.append(gevent.spawn(one))
        n += 1
        gevent.sleep(max(0.0, started + n / jobs_per_s - time.monotonic()))
    gevent.joinall(runs)
    follower.kill()
    remove_host_containers(runtime, label)


MODE_TARGETS = {  # mode -> (figure, its limit, whether the limit is a ratio to the baseline)
    "churn": ("p99 / baseline", 1.3, True),
    "quiet": ("p99 / baseline", 1.1, True),
    "quiet-200": ("p99", 100.0, False),
    "streams": ("p99", 50.0, False),
    "streams-churn": ("p99 / baseline", 1.2, True),
}


def run_mode(mode: Mode) -> dict:
    """Every side of a mode, ROUNDS rounds each, interleaved in alternating order."""
    print(f"== {mode.name}: {mode.clients} {'streams' if mode.stream else 'long-pollers'}, "
          f"{'container churn' if mode.churn else 'jobs that fail at once'}", flush=True)
    sides = [AgentSide(mode, secure=False)]
    try:
        if mode.with_secure:
            sides.append(AgentSide(mode, secure=True))
        sides.append(BaselineSide(mode))
        rounds = {side.label: [] for side in sides}
        for round_no in range(ROUNDS):
            for side in (sides if round_no % 2 == 0 else list(reversed(sides))):
                rounds[side.label].append(side.round(round_no))
    finally:
        for side in sides:
            side.close()
    return {label: pooled(results) for label, results in rounds.items()}


def pooled(results: list) -> dict:
    latencies = sorted(x for r in results for x in r["latencies"])
    return dict(summary(latencies), missed=sum(r["missed"] for r in results),
                errors=sum(r["errors"] for r in results),
                rate=sum(r["rate"] for r in results) / len(results))


def report(mode: Mode, sides: dict):
    agent, baseline = sides["agent"], sides["baseline"]
    p50, p99 = (agent[k] / baseline[k] for k in ("p50_ms", "p99_ms"))
    print(f"\n{mode.name}: {mode.clients} clients, {ROUNDS} rounds of {SECONDS:.0f}s a side, "
          f"agent {agent['rate']:.1f} events/s")
    for label, side in sides.items():
        print(f"  {label:<9} p50 {side['p50_ms']:7.1f} ms  p99 {side['p99_ms']:7.1f} ms  "
              f"max {side['max_ms']:7.1f} ms  missed {side['missed']}  errors {side['errors']}")
    print(f"  agent / baseline  p50 {p50:.2f}x  p99 {p99:.2f}x")
    if "secure" in sides:
        print(f"  secure / agent    p50 {sides['secure']['p50_ms'] / agent['p50_ms']:.2f}x  "
              f"p99 {sides['secure']['p99_ms'] / agent['p99_ms']:.2f}x")
    return p99


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wanted = os.environ.get("BENCH_MODES", ",".join(m.name for m in MODES)).split(",")
    figures = []
    for mode in (m for m in MODES if m.name in wanted):
        sides = run_mode(mode)
        figures.append((mode, sides, report(mode, sides)))
    print()
    for mode, sides, p99_ratio in figures:
        figure, limit, is_ratio = MODE_TARGETS[mode.name]
        agent = sides["agent"]
        value = p99_ratio if is_ratio else agent["p99_ms"]
        met = ratio_met(value, limit) and agent["missed"] == 0
        unit, goal = (("x", f"<= {limit}x, 0 missed") if is_ratio else
                      (" ms", f"<= {limit:.0f} ms, 0 missed"))
        target(f"longpoll {mode.name} ({mode.clients}) {figure}", value, goal, met, unit)
        if agent["missed"]:
            target(f"longpoll {mode.name} missed", agent["missed"], "0", False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--baseline-server"]:
        baseline_server(int(sys.argv[2]), float(sys.argv[3]))
    elif sys.argv[1:2] == ["--churn"]:
        churn_containers(float(sys.argv[2]), float(sys.argv[3]))
    else:
        main()
