"""The leader's mirror at scale: simulated hosts (lightweight heartbeat writers, not full agents),
each with 100 jobs in its record, in a real etcd.

For 100 and then 1,000 hosts: the full resync time of a ClusterView (one recursive read, parsed
and applied), the apply lag under steady heartbeats (each host rewrites its record every 10 s and
refreshes its TTL every 10 s; lag = when the view applied a record - when the writer wrote it),
and the observer process's RSS. Baselines, side by side in the same observer process: a bare
python-etcd recursive read (the floor for a resync) and a bare watch loop that only decodes each
change (the floor for the lag). Targets: resync <= 5 s, lag p99 <= 1 s, RSS <= 1 GiB.

Needs FLYNN_HOST_ETCD_ENDPOINTS (bench/run starts an etcd).
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import simplejson  # noqa: E402

from host.cluster.view import ClusterView  # noqa: E402
from host.discovery.etcd import EtcdDiscovery  # noqa: E402

PEERS = os.environ.get("FLYNN_HOST_ETCD_ENDPOINTS", "")
JOBS_PER_HOST = 100
REWRITE_EVERY_S = 10.0
TTL = 30
MEASURE_S = float(os.environ.get("BENCH_SECONDS", 20))


def host_record(host_id: str, version: int) -> str:
    jobs = [{"id": f"{host_id}-job{n}", "status": "running" if (n + version) % 7 else "done",
             "image": "busybox", "spec_digest": f"{n:032x}",
             "ports": [{"port": 49152 + n, "container_port": 49152 + n,
                                            "proto": "tcp"}],
             "resources": {"memory_mb": 64, "cpu_shares": 100}, "exit_status": None,
             "error": None, "created_at": "2026-11-25T08:00:00.000000Z",
             "started_at": "2026-11-25T08:00:01.000000Z", "ended_at": None}
            for n in range(JOBS_PER_HOST)]
    return simplejson.dumps({"id": host_id, "addr": "127.0.0.1:1", "jobs": jobs,
                             "resources": {"memory_mb": 16000, "cpu_shares": 4096},
                             "allocated": {"memory_mb": 6400, "cpu_shares": 10000},
                             "attributes": {}, "registered_at": "2026-11-25T08:00:00Z",
                             "bench_written_at": time.time(), "version": version})


def simulate_hosts(prefix: str, count: int):
    """Register `count` hosts, then keep them beating (run in a greenlet; kill to stop)."""
    etcd = EtcdDiscovery(PEERS, prefix)
    pool = gevent.pool.Pool(50)
    indexes = dict(zip(range(count), pool.map(
        lambda n: etcd.register(f"sim{n}", host_record(f"sim{n}", 0), TTL).modified_index,
        range(count))))

    def beat(n):
        version = 0
        gevent.sleep(random.uniform(0, REWRITE_EVERY_S))
        while True:
            version += 1
            indexes[n] = etcd.publish(f"sim{n}", host_record(f"sim{n}", version), TTL,
                                      indexes[n])
            gevent.sleep(REWRITE_EVERY_S / 2)
            indexes[n] = etcd.refresh(f"sim{n}", TTL, indexes[n])
            gevent.sleep(REWRITE_EVERY_S / 2)
    return [gevent.spawn(beat, n) for n in range(count)]


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * fraction))] if values else float("nan")


def observe(prefix: str):
    """The observer process: baselines and the ClusterView, one after the other."""
    etcd = EtcdDiscovery(PEERS, prefix)
    started = time.monotonic()
    raw = etcd._client.read(etcd.services_dir, recursive=True, timeout=60)
    _ = [node.value for node in raw.leaves]
    raw_read_s = time.monotonic() - started

    view = ClusterView(etcd, "observer")
    started = time.monotonic()
    index = view._resync()
    resync_s = time.monotonic() - started
    hosts = len(view.hosts)

    # bare watch loop: decode each change, nothing else
    bare_lags, deadline, bare_index = [], time.monotonic() + MEASURE_S, index
    while time.monotonic() < deadline:
        change = etcd.watch_hosts(bare_index, 5)
        if change is not None:
            bare_index = change.registration.modified_index
            if change.registration.value:
                written = simplejson.loads(change.registration.value)["bench_written_at"]
                bare_lags.append(time.time() - written)

    # the view, measured as it applies
    lags, original = [], view._apply

    def timed_apply(change, at_index):
        original(change, at_index)
        if change.registration.value:
            written = simplejson.loads(change.registration.value)["bench_written_at"]
            lags.append(time.time() - written)
    view._apply = timed_apply
    watcher = gevent.spawn(view.run, bare_index)
    gevent.sleep(MEASURE_S)
    watcher.kill()
    print(simplejson.dumps({
        "hosts": hosts, "raw_read_s": raw_read_s, "resync_s": resync_s,
        "lag_p50": percentile(lags, 0.5), "lag_p99": percentile(lags, 0.99),
        "bare_p50": percentile(bare_lags, 0.5), "bare_p99": percentile(bare_lags, 0.99),
        "applied": len(lags), "rss_mb": rss_mb(), "events": view.events.last_cursor}))


def run_scale(count: int) -> dict:
    prefix = f"/flynn-bench/mirror-{os.getpid()}-{count}"
    writers = simulate_hosts(prefix, count)
    try:
        gevent.sleep(2)
        out = subprocess.run([sys.executable, __file__, "--observe", prefix],
                             capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise SystemExit(out.stderr)
        result = simplejson.loads(out.stdout.strip().splitlines()[-1])
    finally:
        gevent.killall(writers)
        EtcdDiscovery(PEERS, prefix)._client.delete(prefix, recursive=True)
    print(f"{count:5d} hosts: resync {result['resync_s']:6.2f}s (bare read "
          f"{result['raw_read_s']:5.2f}s, {result['resync_s'] / result['raw_read_s']:4.2f}x)  "
          f"lag p50 {result['lag_p50'] * 1000:6.1f} ms p99 {result['lag_p99'] * 1000:6.1f} ms "
          f"(bare watch p50 {result['bare_p50'] * 1000:6.1f} p99 {result['bare_p99'] * 1000:6.1f})"
          f"  RSS {result['rss_mb']:6.1f} MiB  ({result['applied']} changes applied)", flush=True)
    return result


def main():
    if not PEERS:
        raise SystemExit("FLYNN_HOST_ETCD_ENDPOINTS must name an etcd (bench/run starts one)")
    small, large = run_scale(100), run_scale(1000)
    print(f"\nmirror_scale: {JOBS_PER_HOST} jobs per host; targets resync <= 5 s, lag p99 <= 1 s, "
          f"RSS <= 1 GiB")
    for key, label in (("resync_s", "resync"), ("lag_p99", "lag p99"), ("rss_mb", "RSS")):
        print(f"  {label:<8} 100 hosts {small[key]:8.3f}  1000 hosts {large[key]:8.3f}  "
              f"growth {large[key] / small[key]:5.1f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--observe"]:
        observe(sys.argv[2])
    else:
        main()
