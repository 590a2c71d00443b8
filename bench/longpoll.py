"""Long-poll delivery: 1,000 concurrent clients on one agent while jobs generate events.

Clients loop on `GET /host/events?since=C&wait=30` over kept-alive connections. Jobs (`true`) are
placed at a steady rate so the agent publishes >= 10 events/s for the run. For every event each
client receives: latency = receipt time - the event's own `time`; each client checks that it saw
every cursor exactly once (missed = gaps). Reported: p50/p99/max latency and missed events.

Baseline, run right after on the same machine with the same clients: the agent's own server
(host.server's handler) answering the same protocol from an in-memory list, publishing only once
every client is connected as the agent side does, fed at the same event rate, while a separate
process starts containers at the agent side's rate (the engine's CPU load is the same on both
sides). The ratio shows what the agent's stack adds to the floor of the server itself. The agent
runs with neither a token nor metrics (`-metrics=false`); then the same run against an agent
with `-auth-token-file` and /metrics (every poll authenticated and counted): the ratio secure /
agent is what auth and metrics cost.

Needs DOCKER_HOST and the test image (bin/test provisions both): `python bench/longpoll.py`.
Tunables: BENCH_CLIENTS (1000), BENCH_SECONDS (30), BENCH_JOBS_PER_S (4, ~3 events each).
BENCH_PROFILE=DIR records the plain agent's run with py-spy (`pip install py-spy`): a flame
graph DIR/longpoll-agent.svg and the collapsed stacks DIR/longpoll-agent.txt (bench/profile_top.py
sums them into the functions that cost most).
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
from datetime import datetime  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import simplejson  # noqa: E402

CLIENTS = int(os.environ.get("BENCH_CLIENTS", 1000))
SECONDS = float(os.environ.get("BENCH_SECONDS", 30))
JOBS_PER_S = float(os.environ.get("BENCH_JOBS_PER_S", 4))


def event_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Client:
    """A minimal HTTP/1.1 keep-alive client on a raw socket: the benchmark should measure the
    server, and http.client's header parsing would cost more than the server's reply."""

    def __init__(self, port: int, since: int, auth: bytes = b""):
        self.port = port
        self.auth = auth  # an Authorization header line, for the secure agent
        self.sock = None
        self.cursor = since
        self.first = since
        self.seen = []
        self.latencies = []
        self.errors = 0

    def _get(self, path: str) -> tuple:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        self.sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
                          self.auth + b"\r\n")
        while b"\r\n\r\n" not in self.buffer:
            self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
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

    def run(self, until_cursor: gevent.event.AsyncResult):
        while True:
            final = until_cursor.get() if until_cursor.ready() else None
            if final is not None and self.cursor >= final:
                return
            try:
                status, body = self._get(f"/host/events?since={self.cursor}&wait=30")
            except (OSError, ValueError, IndexError):
                self.errors += 1
                if self.sock is not None:
                    self.sock.close()
                self.sock = None
                gevent.sleep(0.1)
                continue
            received = time.time()
            if status != 200:
                self.errors += 1
                continue
            page = simplejson.loads(body)
            for event in page["events"]:
                self.seen.append(event["cursor"])
                self.latencies.append(received - event_time(event["time"]))
            self.cursor = page["cursor"]

    def missed(self, final: int) -> int:
        expected = set(range(self.first + 1, final + 1))
        return len(expected - set(self.seen)) + (len(self.seen) - len(set(self.seen)))


def measure(port: int, generate, label: str, token: str = "") -> dict:
    """Run CLIENTS long-pollers against the server on `port` while `generate()` produces events;
    generate returns the last cursor it caused."""
    import urllib.request
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/host/events", headers=headers)
    with urllib.request.urlopen(request) as resp:
        since = simplejson.loads(resp.read())["cursor"]
    final = gevent.event.AsyncResult()
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    clients = [Client(port, since, auth) for _ in range(CLIENTS)]
    pollers = [gevent.spawn(c.run, final) for c in clients]
    gevent.sleep(2)  # let every client connect and park in its wait
    started = time.monotonic()
    last = generate()
    elapsed = time.monotonic() - started
    final.set(last)
    gevent.joinall(pollers, timeout=60)
    unfinished = sum(1 for p in pollers if not p.ready())
    gevent.killall(pollers, block=False)
    latencies = sorted(x for c in clients for x in c.latencies)
    events = last - since
    result = {
        "label": label, "events": events, "rate": events / elapsed,
        "deliveries": len(latencies),
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "max_ms": 1000 * latencies[-1] if latencies else float("nan"),
        "missed": sum(c.missed(last) for c in clients), "errors": sum(c.errors for c in clients),
        "unfinished": unfinished,
    }
    print(f"{label:<9} {events} events ({result['rate']:.1f}/s) to {CLIENTS} clients: "
          f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
          f"max {result['max_ms']:.1f} ms, missed {result['missed']}, errors {result['errors']}, "
          f"clients not finished {unfinished}", flush=True)
    return result


def run_agent_side(secure: bool) -> dict:
    """The agent, plain (no token, -metrics=false) or secure (a token and /metrics: every
    request authenticated and counted)."""
    import tempfile
    from tests.support import TEST_IMAGE, AgentProcess, remove_host_containers, require_docker
    runtime = require_docker()
    args = ["-log-level", "warning", "-retain-ended", "20", "-cpu-shares", "1000000",
            "-max-waits-per-client", str(CLIENTS + 100)]
    token, token_file = "", None
    if secure:
        token = "bench-token-0123456789abcdef"
        token_file = os.path.join(tempfile.mkdtemp(), "token")
        with open(token_file, "w") as f:
            f.write(token + "\n")
    else:
        args.append("-metrics=false")
    agent = AgentProcess(f"benchpoll{os.getpid()}{'s' if secure else ''}", args=args,
                         token_file=token_file).start()
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    profiler = None
    if os.environ.get("BENCH_PROFILE") and not secure:
        profiler = start_profiler(agent.proc.pid, os.environ["BENCH_PROFILE"], "longpoll-agent")
    body = simplejson.dumps({"config": {"image": os.environ.get("BENCH_IMAGE", TEST_IMAGE),
                                        "cmd": ["true"]}})

    def place(n):
        conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=60)
        conn.request("PUT", f"/host/jobs/poll-{n}", body=body, headers=auth)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 202, resp.status

    def generate():
        # each PUT in its own greenlet at its scheduled time, so a slow answer does not
        # lower the event rate
        started, n, puts = time.monotonic(), 0, []
        while time.monotonic() - started < SECONDS:
            puts.append(gevent.spawn(place, n))
            n += 1
            gevent.sleep(max(0.0, started + n / JOBS_PER_S - time.monotonic()))
        gevent.joinall(puts, raise_error=True)
        conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
        # every job placed reaches its final state (3 events each) before we take the cursor
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            conn.request("GET", "/host/status", headers=auth)
            status = simplejson.loads(conn.getresponse().read())
            if sum(status["jobs"].get(s, 0) for s in ("starting", "running")) == 0:
                return status["events_cursor"]
            gevent.sleep(0.2)
        raise AssertionError("jobs did not finish")

    try:
        return measure(agent.port, generate, "secure" if secure else "agent", token)
    finally:
        stop_profiler(profiler)
        agent.cleanup()
        remove_host_containers(runtime, agent.host_id)


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
        wait = float(query.get("wait", ["0"])[0])
        deadline = time.monotonic() + wait
        while len(events) <= since and time.monotonic() < deadline:
            changed[0].wait(deadline - time.monotonic())
        body = ('{"events": [%s], "cursor": %d}' % (",".join(events[since:]), len(events)))
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body.encode()]

    def generate():
        publishing.wait()
        started, n = time.monotonic(), 0
        while True:
            n += 1
            events.append(simplejson.dumps({"cursor": n, "time": datetime.utcnow().isoformat()
                                            + "Z", "type": "job", "event": "start"}))
            old, changed[0] = changed[0], gevent.event.Event()
            old.set()
            gevent.sleep(max(0.0, started + n / rate - time.monotonic()))

    wsgi_server(app, "127.0.0.1", port)  # started; served until this process is killed
    gevent.spawn(generate)
    print(len(events), flush=True)
    gevent.wait()


def churn_containers(jobs_per_s: float, seconds: float):
    """Start `true` containers at the agent side's rate, so the baseline runs while the machine
    does the same container work (dockerd, containerd and runc share these 2 cores)."""
    from tests.support import TEST_IMAGE, remove_host_containers, require_docker
    runtime = require_docker()
    api = runtime._client()
    label = f"benchchurn{os.getpid()}"

    def one():
        container = api.create_container(TEST_IMAGE, ["true"], labels={"flynn-host.id": label})
        api.start(container)

    started, n, runs = time.monotonic(), 0, []
    while time.monotonic() - started < seconds:
        runs.append(gevent.spawn(one))
        n += 1
        gevent.sleep(max(0.0, started + n / jobs_per_s - time.monotonic()))
    gevent.joinall(runs)
    remove_host_containers(runtime, label)


def run_baseline_side(rate: float) -> dict:
    from tests.support import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(port), str(rate)],
                            stdout=subprocess.PIPE)
    proc.stdout.readline()  # listening

    churn = []

    def generate():
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/start")  # every client is connected now
        conn.getresponse().read()
        churn.append(subprocess.Popen([sys.executable, __file__, "--churn", str(JOBS_PER_S),
                                       str(SECONDS)]))
        gevent.sleep(SECONDS)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/host/events")
        cursor = simplejson.loads(conn.getresponse().read())["cursor"]
        conn.close()
        return cursor
    try:
        return measure(port, generate, "baseline")
    finally:
        proc.kill()
        proc.wait()
        for process in churn:
            process.wait()


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # the two agents one after the other, so that they meet the machine as alike as can be
    agent = run_agent_side(secure=False)
    secure = run_agent_side(secure=True)
    baseline = run_baseline_side(agent["rate"])
    print(f"\nlongpoll: {CLIENTS} clients, {SECONDS:.0f}s, agent {agent['rate']:.1f} events/s")
    print(f"  agent     p50 {agent['p50_ms']:6.1f} ms  p99 {agent['p99_ms']:6.1f} ms  "
          f"missed {agent['missed']}  (targets: p99 <= 100 ms, 0 missed)")
    print(f"  baseline  p50 {baseline['p50_ms']:6.1f} ms  p99 {baseline['p99_ms']:6.1f} ms  "
          f"missed {baseline['missed']}  (our server, no agent behind it; same clients, rate)")
    print(f"  ratio     p50 {agent['p50_ms'] / baseline['p50_ms']:.2f}x  "
          f"p99 {agent['p99_ms'] / baseline['p99_ms']:.2f}x")
    print(f"  secure    p50 {secure['p50_ms']:6.1f} ms  p99 {secure['p99_ms']:6.1f} ms  "
          f"missed {secure['missed']}  (the agent with a token and /metrics)")
    print(f"  secure / agent  p50 {secure['p50_ms'] / agent['p50_ms']:.2f}x  "
          f"p99 {secure['p99_ms'] / agent['p99_ms']:.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--baseline-server"]:
        baseline_server(int(sys.argv[2]), float(sys.argv[3]))
    elif sys.argv[1:2] == ["--churn"]:
        churn_containers(float(sys.argv[2]), float(sys.argv[3]))
    else:
        main()
