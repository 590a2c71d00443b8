"""What placing a request costs the leader, in process, against a mirror of BENCH_HOSTS (5,000)
hosts of 100 jobs each (bench/host_records.py): no etcd, so that the figure is the
scheduler's own CPU. The request places BENCH_JOBS (20) new jobs, one in four with a fixed
port, by JobScheduler._validate_and_place: the ids looked up in the mirror, every host's
capacity taken from it, and each job put on the least loaded host that fits.

Baseline, interleaved round by round over BENCH_ROUNDS (10) rounds: the least any placement
over this many hosts does, one look at every host a request (the request's ids looked up in
the host's jobs, a figure of its load made, the least picked). Printed: milliseconds a request
(the best and the median round) and the ratio to the baseline.

BENCH_CODE=DIR measures the host package of another tree (a clone of an older commit) instead
of this one, for a before-and-after on the same machine, run one after the other.
"""
import gc
import os
import time

import measured_code  # (first: which host package is measured)
import simplejson  # noqa: E402

from host.cluster.registered import RegisteredHost  # noqa: E402
from host.cluster.scheduler import JobScheduler  # noqa: E402
from host.cluster.view import ClusterView  # noqa: E402
from host_records import JOBS_PER_HOST, host_record  # noqa: E402

HOSTS = int(os.environ.get("BENCH_HOSTS", 5000))
JOBS = int(os.environ.get("BENCH_JOBS", 20))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 10))


class NoDiscovery:
    """The view's mirror is filled by hand here."""


def mirror() -> dict:
    """{host id: RegisteredHost}, each with room for the request (the bench's records reserve
    more CPU than they have: nothing would fit)."""
    hosts = {}
    for n in range(HOSTS):
        d = simplejson.loads(host_record(f"sim{n}", n % 7))
        d["allocated"] = {"memory_mb": 6400 + n % 97, "cpu_shares": 1000}
        hosts[d["id"]] = RegisteredHost.read(d["id"], n + 1, n + 1, simplejson.dumps(d))
    return hosts


def request(round_no: int) -> dict:
    jobs = []
    for n in range(JOBS):
        config = {"image": "busybox", "cmd": ["sleep", "60"]}
        if n % 4 == 0:
            config["ports"] = [{"port": 30000 + n, "proto": "tcp"}]
        jobs.append({"id": f"r{round_no}-{n}", "config": config,
                     "resources": {"memory_mb": 64, "cpu_shares": 100}})
    return {"jobs": jobs}


def bare_place(hosts: dict, body: dict):
    ids = frozenset(spec["id"] for spec in body["jobs"])
    least = None
    for host in hosts.values():
        if not host.jobs.keys().isdisjoint(ids):
            raise AssertionError(f"{host.id} knows a job of the request")
        load = (host.header.allocated.memory_mb, len(host.jobs), host.id)
        if least is None or load < least:
            least = load


def main():
    hosts = mirror()
    view = ClusterView(NoDiscovery(), "observer")
    view.hosts = hosts
    scheduler = JobScheduler(view, None, None, None, registration=lambda: None,
                             leads=lambda host_id, index: True, clock=None)
    costs = {"scheduler": [], "bare": []}
    gc.disable()
    try:
        for round_no in range(ROUNDS):
            body = request(round_no)
            for side in ("scheduler", "bare") if round_no % 2 else ("bare", "scheduler"):
                started = time.process_time()
                if side == "scheduler":
                    placements = scheduler._validate_and_place(body)
                else:
                    bare_place(hosts, body)
                costs[side].append(time.process_time() - started)
            if len({p.job.id for p in placements}) != JOBS:
                raise AssertionError(f"placed {len(placements)} of {JOBS} jobs")
    finally:
        gc.enable()
    print(f"place_scale: {JOBS} jobs a request on {HOSTS} hosts x {JOBS_PER_HOST} jobs, "
          f"{ROUNDS} rounds, code: {measured_code.code_name()}")
    medians = measured_code.print_medians(costs, "request")
    print(f"  the scheduler / bare placement (medians): "
          f"{medians['scheduler'] / medians['bare']:.2f}x")


if __name__ == "__main__":
    main()
