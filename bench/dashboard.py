"""The dashboard with 1,000 jobs, in headless Chromium: how long the first render takes and how
long an update does, against a baseline page run side by side in the same browser.

The API is a small in-process stand-in serving the cluster routes the page reads
(`/cluster/hosts`, `/cluster/hosts/<id>`, `/cluster/leader`, `/cluster/events` as a long-poll)
for 10 hosts with 100 jobs each, and the dashboard's real files (host/api/dashboard.py): what is
measured is the page, not an agent. The sides, in alternating order each round:
- `dashboard`: the page at `/?measure`, which records `performance.measure` entries around its
  work (building or changing rows, style and layout forced inside the measure);
- `static table`: a trivial table of the same rows built from the same listing, and an update
  that sets the state cell of the one row an event names: the least work a page could do;
- `full re-render` (for comparison): the same trivial table rebuilt whole for every events page,
  what incremental updates avoid.
Updates are single job events (a state change), each sent once the page has applied the one
before (it polls again with the new cursor), and a burst of 1,000 events in one page (every job
changing at once, as when hosts leave). Figures are medians over the rounds.

`python bench/dashboard.py` (BENCH_ROUNDS, default 5; BENCH_UPDATES, single events a round,
default 40). Needs chromium, chromium-driver and selenium, as bin/test installs them.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402

import bottle  # noqa: E402
import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pywsgi  # noqa: E402
import simplejson  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import ratio_met, target  # noqa: E402
from host.api import dashboard  # noqa: E402
from tests.browser import chromium  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
UPDATES = int(os.environ.get("BENCH_UPDATES", 40))
HOSTS, JOBS_PER_HOST = 10, 100
STATES = ("running", "crashed", "done", "stopped", "starting")
SIDES = {"dashboard": "/?measure", "static table": "/baseline",
         "full re-render": "/baseline?rerender"}

#: the baseline: the same rows as a plain table, with the least work per event
BASELINE = """<!doctype html>
<meta charset="utf-8"><title>baseline</title>
<table><thead><tr><th>job</th><th>state</th><th>image</th><th>command</th><th>ports</th>
<th>host</th><th>created</th></tr></thead><tbody id="rows"></tbody></table>
<script>
(async () => {
  const rerender = new URLSearchParams(location.search).has('rerender');
  const rows = document.getElementById('rows');
  const model = new Map();
  const cell = (tr, text) => {
    const td = document.createElement('td'); td.textContent = text; tr.append(td);
  };
  function row([job, host]) {
    const tr = document.createElement('tr');
    tr.id = 'job-' + job.id;
    for (const text of [job.id, job.status, job.image, job.command,
                        job.ports.map((p) => p.port + '/' + p.proto).join(', '), host,
                        job.created_at]) cell(tr, text);
    return tr;
  }
  function renderAll() {
    const all = document.createDocumentFragment();
    for (const entry of model.values()) all.append(row(entry));
    rows.replaceChildren(all);
  }
  function measured(name, work) {
    const start = performance.now();
    work();
    document.body.getBoundingClientRect();
    performance.measure(name, {start, end: performance.now()});
  }
  const now = await (await fetch('/cluster/events')).json();
  const hosts = await (await fetch('/cluster/hosts')).json();
  measured('dashboard:render', () => {
    for (const host of hosts) for (const job of host.jobs) model.set(job.id, [job, host.id]);
    renderAll();
  });
  let cursor = now.cursor;
  for (;;) {
    const page = await (await fetch('/cluster/events?since=' + cursor + '&wait=25')).json();
    measured('dashboard:update', () => {
      for (const event of page.events) {
        model.set(event.job.id, [event.job, event.host_id]);
        if (!rerender) document.getElementById('job-' + event.job.id).children[1]
          .textContent = event.job.status;
      }
      if (rerender) renderAll();
    });
    cursor = page.cursor;
  }
})();
</script>
"""


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeCluster:
    """The cluster routes the page reads, from memory; events pushed by the bench."""

    def __init__(self):
        started = datetime.now(timezone.utc) - timedelta(hours=3)
        self.hosts = {}
        for h in range(HOSTS):
            host_id = f"host-{h:02d}"
            jobs = []
            for j in range(JOBS_PER_HOST):
                n = h * JOBS_PER_HOST + j
                jobs.append({
                    "id": f"job-{n:04d}-{'abcdef'[n % 6]}{n * 7919 % 100000:05d}",
                    "status": "running", "image": f"registry.internal:5000/app-{n % 17}:v{n % 5}",
                    "command": f"/bin/app --worker {n} --queue q{n % 9} --verbose",
                    "spec_digest": f"{n:032x}", "resources": {"memory_mb": 64, "cpu_shares": 64},
                    "ports": [{"port": 49152 + n, "container_port": 8080, "proto": "tcp"}],
                    "exit_status": None, "error": None,
                    "created_at": rfc3339(started + timedelta(seconds=n * 7)),
                    "started_at": rfc3339(started + timedelta(seconds=n * 7 + 1)),
                    "ended_at": None})
            self.hosts[host_id] = {
                "id": host_id, "addr": f"10.0.0.{h + 1}:1113", "version": "bench",
                "attributes": {}, "resources": {"memory_mb": 16384, "cpu_shares": 8192},
                "allocated": {"memory_mb": 64 * JOBS_PER_HOST, "cpu_shares": 64 * JOBS_PER_HOST},
                "jobs": jobs, "registered_at": rfc3339(started), "state_id": f"s{h}",
                "leader": h == 0}
        self.events = []
        self.cursor = 1000
        self._arrived = gevent.event.Event()
        self.polled = 0                 # the highest `since` a page has asked for
        self._polled = gevent.event.Event()

    def all_jobs(self):
        return [(host_id, job) for host_id, host in self.hosts.items() for job in host["jobs"]]

    def change(self, changes):
        """Publish a state change for each (host id, job, new state)."""
        now = rfc3339(datetime.now(timezone.utc))
        for host_id, job, status in changes:
            job["status"] = status
            job["exit_status"] = None if status in ("running", "starting") else 3
            self.cursor += 1
            self.events.append({"cursor": self.cursor, "type": "job",
                                "event": "stop" if job["exit_status"] else "start",
                                "host_id": host_id, "job_id": job["id"], "job": dict(job),
                                "time": now})
        arrived, self._arrived = self._arrived, gevent.event.Event()
        arrived.set()
        return self.cursor

    def wait_polled(self, cursor: int, timeout_s: float = 30):
        """Until a page asks for the events after `cursor`: it has applied those before."""
        deadline = time.monotonic() + timeout_s
        while self.polled < cursor:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no page polled past cursor {cursor} in {timeout_s}s")
            self._polled.wait(0.5)

    def app(self) -> bottle.Bottle:
        app = bottle.Bottle()
        dashboard.install(app)

        def answer(obj):
            return bottle.HTTPResponse(simplejson.dumps(obj),
                                       headers={"Content-Type": "application/json"})

        @app.get("/baseline")
        def baseline():
            return BASELINE

        @app.get("/cluster/hosts")
        def hosts():
            return answer(list(self.hosts.values()))

        @app.get("/cluster/hosts/<host_id>")
        def one_host(host_id):
            return answer(self.hosts[host_id])

        @app.get("/cluster/leader")
        def leader():
            return answer({"id": "host-00", "addr": "10.0.0.1:1113", "since": None})

        @app.get("/cluster/events")
        def events():
            since = bottle.request.query.get("since")
            if since is None:
                return answer({"events": [], "cursor": self.cursor})
            since = int(since)
            if since > self.polled:
                self.polled = since
                polled, self._polled = self._polled, gevent.event.Event()
                polled.set()
            wait_s = float(bottle.request.query.get("wait") or 0)
            if self.cursor <= since:
                self._arrived.wait(wait_s)
            return answer({"events": [e for e in self.events if e["cursor"] > since],
                           "cursor": self.cursor})
        return app


def measures(driver, name: str) -> list:
    return driver.execute_script(
        "return performance.getEntriesByName(arguments[0]).map("
        "(e) => [e.startTime, e.duration])", name)


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s}s")
        gevent.sleep(0.05)


def run_side(driver, cluster: FakeCluster, base: str, path: str, results: dict, rng_state):
    driver.get(base + path)
    render = wait_for(lambda: measures(driver, "dashboard:render"), 60, f"{path} rendered")
    start, duration = render[0]
    results["render"].append(duration)
    results["ready"].append(start + duration)
    jobs = cluster.all_jobs()
    for _ in range(UPDATES):
        host_id, job = jobs[rng_state[0] % len(jobs)]
        rng_state[0] = (rng_state[0] * 1103515245 + 12345) % (1 << 31)
        next_state = STATES[(STATES.index(job["status"]) + 1) % len(STATES)]
        cluster.wait_polled(cluster.change([(host_id, job, next_state)]))
    burst = [(host_id, job, STATES[(STATES.index(job["status"]) + 1) % len(STATES)])
             for host_id, job in jobs]
    cluster.wait_polled(cluster.change(burst))
    updates = [duration for _, duration in measures(driver, "dashboard:update")]
    if len(updates) != UPDATES + 1:
        raise RuntimeError(f"{path}: {len(updates)} updates measured, {UPDATES + 1} sent")
    results["update"].extend(updates[:-1])
    results["burst"].append(updates[-1])


def p50(values) -> float:
    return statistics.median(values) if values else float("nan")


def p99(values) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


def main():
    cluster = FakeCluster()
    server = gevent.pywsgi.WSGIServer(("127.0.0.1", 0), cluster.app(), log=None)
    server.start()
    base = f"http://127.0.0.1:{server.server_port}"
    driver = chromium()
    try:
        version = driver.capabilities.get("browserVersion", "?")
        print(f"dashboard: {HOSTS * JOBS_PER_HOST:,} jobs on {HOSTS} hosts, headless Chromium "
              f"{version}; {ROUNDS} rounds, sides in alternating order; per round and side a "
              f"fresh load, {UPDATES} single-event updates and one burst of "
              f"{HOSTS * JOBS_PER_HOST:,} events", flush=True)
        results = {side: {"render": [], "ready": [], "update": [], "burst": []}
                   for side in SIDES}
        rng_state = [12345]
        for n in range(ROUNDS):
            order = list(SIDES) if n % 2 == 0 else list(reversed(SIDES))
            for side in order:
                run_side(driver, cluster, base, SIDES[side], results[side], rng_state)
            print(f"  round {n + 1}: " + ", ".join(
                f"{side} render {results[side]['render'][-1]:.1f} ms" for side in SIDES),
                flush=True)
    finally:
        driver.quit()
        server.stop()
    for side, r in results.items():
        print(f"{side:15} ready {p50(r['ready']):7.1f} ms (navigation to rows laid out), "
              f"render {p50(r['render']):6.1f} ms; one event p50 {p50(r['update']):5.2f} ms "
              f"p99 {p99(r['update']):5.2f} ms; {HOSTS * JOBS_PER_HOST:,} events at once "
              f"{p50(r['burst']):6.1f} ms", flush=True)
    ours, static, full = results["dashboard"], results["static table"], results["full re-render"]
    render_ratio = p50(ours["render"]) / p50(static["render"])
    ready_ratio = p50(ours["ready"]) / p50(static["ready"])
    update_ratio = p50(ours["update"]) / p50(static["update"])
    burst_ratio = p50(ours["burst"]) / p50(static["burst"])
    print(f"dashboard / static table: render {render_ratio:.2f}x, ready {ready_ratio:.2f}x, "
          f"one event {update_ratio:.2f}x, a burst {burst_ratio:.2f}x; a full re-render per "
          f"event costs {p50(full['update']) / p50(ours['update']):.1f}x the dashboard's "
          f"update", flush=True)
    target("dashboard render, 1,000 jobs / static table", render_ratio, "<= 1.5x",
           ratio_met(render_ratio, 1.5))
    target("dashboard one-event update / static table", update_ratio, "<= 1.5x",
           ratio_met(update_ratio, 1.5))
    target("dashboard one-event update p50", p50(ours["update"]), "<= 4 ms (a quarter frame)",
           ratio_met(p50(ours["update"]), 4), " ms")
    target("dashboard 1,000-event burst / static table", burst_ratio, "<= 3x",
           ratio_met(burst_ratio, 3))


if __name__ == "__main__":
    main()
