"""Long-poll delivery: 1,000 concurrent clients on one agent while jobs generate events.

Clients loop on `GET /host/events?since=C&wait=30` over kept-alive connections. Jobs (`true`) are
placed at a steady rate so the agent publishes >= 10 events/s for the run. For every event each
client receives: latency = receipt time - the event's own `time`; each client checks that it saw
every cursor exactly once (missed = gaps). Reported: p50/p99/max latency and missed events.

Baseline, run right after on the same machine with the same clients: a bare gevent pywsgi server
answering the same protocol from an in-memory list, fed at the same event rate. The ratio shows what
the agent's stack (Bottle, the job table, SQLite, Docker) adds to the floor of the server itself.

Needs DOCKER_HOST and the test image (bin/test provisions both): `python bench/longpoll.py`.
Tunables: BENCH_CLIENTS (1000), BENCH_SECONDS (30), BENCH_JOBS_PER_S (4, ~3 events each).
"""
from gevent import monkey

monkey.patch_all()

import http.client  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
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
    def __init__(self, port: int, since: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=90)
        self.cursor = since
        self.first = since
        self.seen = []
        self.latencies = []
        self.errors = 0

    def run(self, until_cursor: gevent.event.AsyncResult):
        while True:
            final = until_cursor.get() if until_cursor.ready() else None
            if final is not None and self.cursor >= final:
                return
            try:
                self.conn.request("GET", f"/host/events?since={self.cursor}&wait=30")
                resp = self.conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                self.errors += 1
                self.conn.close()
                gevent.sleep(0.1)
                continue
            received = time.time()
            if resp.status != 200:
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


def measure(port: int, generate, label: str) -> dict:
    """Run CLIENTS long-pollers against the server on `port` while `generate()` produces events;
    generate returns the last cursor it caused."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/host/events") as resp:
        since = simplejson.loads(resp.read())["cursor"]
    final = gevent.event.AsyncResult()
    clients = [Client(port, since) for _ in range(CLIENTS)]
    pollers = [gevent.spawn(c.run, final) for c in clients]
    gevent.sleep(2)  # let every client connect and park in its wait
    last = generate()
    final.set(last)
    gevent.joinall(pollers, timeout=60)
    unfinished = sum(1 for p in pollers if not p.ready())
    gevent.killall(pollers, block=False)
    latencies = sorted(x for c in clients for x in c.latencies)
    events = last - since
    result = {
        "label": label, "events": events, "rate": events / SECONDS,
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


def run_agent_side() -> dict:
    from tests.support import TEST_IMAGE, AgentProcess, remove_host_containers, require_docker
    runtime = require_docker()
    agent = AgentProcess(f"benchpoll{os.getpid()}", args=[
        "-log-level", "warning", "-retain-ended", "20", "-cpu-shares", "1000000"]).start()
    body = simplejson.dumps({"config": {"image": TEST_IMAGE, "cmd": ["true"]}})

    def generate():
        conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
        started, n = time.monotonic(), 0
        while time.monotonic() - started < SECONDS:
            conn.request("PUT", f"/host/jobs/poll-{n}", body=body)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 202, resp.status
            n += 1
            gevent.sleep(max(0.0, started + n / JOBS_PER_S - time.monotonic()))
        # every job placed reaches its final state (3 events each) before we take the cursor
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            conn.request("GET", "/host/status")
            status = simplejson.loads(conn.getresponse().read())
            if sum(status["jobs"].get(s, 0) for s in ("starting", "running")) == 0:
                return status["events_cursor"]
            gevent.sleep(0.2)
        raise AssertionError("jobs did not finish")

    try:
        return measure(agent.port, generate, "agent")
    finally:
        agent.cleanup()
        remove_host_containers(runtime, agent.host_id)


# ---- the baseline server: the same protocol with nothing behind it ------------------------------

def baseline_server(port: int, rate: float):
    from gevent.pywsgi import WSGIServer
    from urllib.parse import parse_qs

    from host.server import listen_socket
    events, changed = [], [gevent.event.Event()]

    def app(environ, start_response):
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
        started, n = time.monotonic(), 0
        while True:
            n += 1
            events.append(simplejson.dumps({"cursor": n, "time": datetime.utcnow().isoformat()
                                            + "Z", "type": "job", "event": "start"}))
            old, changed[0] = changed[0], gevent.event.Event()
            old.set()
            gevent.sleep(max(0.0, started + n / rate - time.monotonic()))

    server = WSGIServer(listen_socket("127.0.0.1", port), app, log=None)
    server.start()
    gevent.spawn(generate)
    print(len(events), flush=True)
    gevent.wait()


def run_baseline_side(rate: float) -> dict:
    from tests.support import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(port), str(rate)],
                            stdout=subprocess.PIPE)
    proc.stdout.readline()  # listening

    def generate():
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


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    agent = run_agent_side()
    baseline = run_baseline_side(agent["rate"])
    print(f"\nlongpoll: {CLIENTS} clients, {SECONDS:.0f}s, agent {agent['rate']:.1f} events/s")
    print(f"  agent     p50 {agent['p50_ms']:6.1f} ms  p99 {agent['p99_ms']:6.1f} ms  "
          f"missed {agent['missed']}  (targets: p99 <= 100 ms, 0 missed)")
    print(f"  baseline  p50 {baseline['p50_ms']:6.1f} ms  p99 {baseline['p99_ms']:6.1f} ms  "
          f"missed {baseline['missed']}  (bare pywsgi, same clients and rate)")
    print(f"  ratio     p50 {agent['p50_ms'] / baseline['p50_ms']:.2f}x  "
          f"p99 {agent['p99_ms'] / baseline['p99_ms']:.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--baseline-server"]:
        baseline_server(int(sys.argv[2]), float(sys.argv[3]))
    else:
        main()
