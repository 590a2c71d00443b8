"""What one heartbeat costs the cluster view, in process: no etcd, no other process, so that the
figure is the view's own CPU and not the machine's contention (bench/mirror_scale.py measures
the whole, at 5,000 hosts with etcd).

BENCH_HOSTS (200) hosts of 100 jobs each (bench/host_records.py) are applied,
then BENCH_ROUNDS (12) rounds of one heartbeat a host, each changing about a third of the jobs'
statuses: as etcd's watch sends it (the event's line), decoded and applied by
ClusterView._apply, events and all. Baseline, interleaved round by round: the same lines
decoded and nothing else (the event's JSON, then the record's), what any watcher of the
registrations pays. Printed: milliseconds a heartbeat (the best and the median round) and the
ratio to the baseline. The garbage collector is off during the rounds (its pauses depend on
what else the process holds; mirror_scale reports them).

BENCH_CODE=DIR measures the host package of another tree (a clone of an older commit) instead
of this one, for a before-and-after on the same machine, run one after the other.
"""
import gc
import json
import os
import time

import measured_code  # (first: which host package is measured)
import simplejson  # noqa: E402

from host.cluster.view import ClusterView  # noqa: E402
from host.discovery.etcd import HostChange, Registration, _watch_event  # noqa: E402
from host_records import JOBS_PER_HOST, host_record  # noqa: E402

HOSTS = int(os.environ.get("BENCH_HOSTS", 200))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 12))


class NoDiscovery:
    """The view is fed by hand here."""


def watch_lines(version: int, first_index: int) -> list:
    """One heartbeat a host, as etcd's stream sends each (the previous node beside it)."""
    lines = []
    for n in range(HOSTS):
        node = {"key": f"/flynn/discoverd/services/flynn-host/sim{n}",
                "value": host_record(f"sim{n}", version), "modifiedIndex": first_index + n,
                "createdIndex": n + 1}
        lines.append(json.dumps({"action": "compareAndSwap", "node": node, "prevNode": node}))
    return lines


def apply_all(view: ClusterView, lines: list):
    for line in lines:
        _, node = _watch_event(line)
        registration = Registration(node["key"].rsplit("/", 1)[1], node["value"],
                                    node["createdIndex"], node["modifiedIndex"])
        view._apply(HostChange("put", registration), node["modifiedIndex"])


def decode_all(lines: list):
    for line in lines:
        _, node = _watch_event(line)
        simplejson.loads(node["value"])


def main():
    view = ClusterView(NoDiscovery(), "observer")
    apply_all(view, watch_lines(0, 1))
    per_heartbeat = {"view": [], "bare": []}
    gc.disable()
    try:
        for version in range(1, ROUNDS + 1):
            lines = watch_lines(version, version * HOSTS + 1)
            for side in ("view", "bare") if version % 2 else ("bare", "view"):
                started = time.process_time()
                apply_all(view, lines) if side == "view" else decode_all(lines)
                per_heartbeat[side].append((time.process_time() - started) / HOSTS)
    finally:
        gc.enable()
    print(f"mirror_apply: {HOSTS} hosts x {JOBS_PER_HOST} jobs, {ROUNDS} rounds, "
          f"code: {measured_code.code_name()}")
    summary = measured_code.print_medians(per_heartbeat, "heartbeat", digits=3)
    print(f"  the view / bare decoding (medians): {summary['view'] / summary['bare']:.2f}x")


if __name__ == "__main__":
    main()
