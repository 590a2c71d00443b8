"""Leader failover: how long until a new leader serves a complete mirror.

A fresh 3-agent cluster per round (real agent processes, real etcd, heartbeat TTL 10 s). The leader
is killed with SIGKILL (its key must expire) or stopped cleanly (it deletes its key). Measured: from
the signal until the next-oldest agent answers `GET /cluster/hosts` with exactly the two surviving
hosts and itself as leader (checked every 20 ms).

Baseline, side by side in each SIGKILL round: a bare etcd key with the same TTL, refreshed on the
same TTL/3 cadence by a writer that stops at the same moment, and a watcher timing its expiry:
the floor etcd itself sets. Targets: SIGKILL <= TTL + 1 s; clean stop < 1 s.

Needs FLYNN_HOST_ETCD_ENDPOINTS and DOCKER_HOST (bin/test provisions both; see bench/run).
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402

from bench.report import target  # noqa: E402
from host.discovery.etcd import EtcdDiscovery  # noqa: E402
from tests.support import AgentProcess  # noqa: E402

TTL = int(os.environ.get("BENCH_TTL", 10))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
PEERS = os.environ.get("FLYNN_HOST_ETCD_ENDPOINTS", "")


def start_cluster(round_id: str) -> list:
    prefix = f"/flynn-bench/failover-{os.getpid()}-{round_id}"
    agents = []
    for n in (1, 2, 3):
        agent = AgentProcess(f"f{n}-{round_id}-{os.getpid()}", ip=f"127.0.0.{n + 1}",
                             args=["-heartbeat-ttl", str(TTL), "-log-level", "info"],
                             env={"FLYNN_ETCD_PREFIX": prefix})
        agent.start()
        agents.append(agent)
    wait_for(lambda: hosts_of(agents[0]) == {a.host_id for a in agents}, 20)
    wait_for(lambda: all(leader_of(a) == agents[0].host_id for a in agents), 20)
    return agents


def hosts_of(agent):
    try:
        resp = agent.client.get("/cluster/hosts", timeout=2)
    except Exception:
        return None
    return {h["id"] for h in resp.json()} if resp.status_code == 200 else None


def leader_of(agent):
    try:
        resp = agent.client.get("/cluster/leader", timeout=2)
    except Exception:
        return None
    return resp.json()["id"] if resp.status_code == 200 else None


def wait_for(predicate, timeout, step=0.02) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError("timed out")
        gevent.sleep(step)
    return time.monotonic() - started


def complete_mirror_at(successor, survivors) -> bool:
    return leader_of(successor) == successor.host_id and hosts_of(successor) == {
        a.host_id for a in survivors}


class BareKey:
    """The baseline: a TTL key refreshed every TTL/3, and a watcher for its expiry."""

    def __init__(self, round_id):
        self.etcd = EtcdDiscovery(PEERS, f"/flynn-bench/bare-{os.getpid()}-{round_id}")
        self.registration = self.etcd.register("bare", "{}", TTL)
        self.writer = gevent.spawn(self._refresh)

    def _refresh(self):
        index = self.registration.modified_index
        while True:
            gevent.sleep(TTL / 3)
            index = self.etcd.refresh("bare", TTL, index)

    def stop_and_time_expiry(self) -> float:
        index, _ = self.etcd.list_hosts()
        self.writer.kill()
        started = time.monotonic()
        while True:
            change = self.etcd.watch_hosts(index, TTL + 5)
            if change is not None and change.action == "remove":
                return time.monotonic() - started
            index = change.registration.modified_index if change else index


def one_round(round_id: str, clean: bool) -> tuple:
    agents = start_cluster(round_id)
    bare = None if clean else BareKey(round_id)
    try:
        gevent.sleep(TTL / 3 * (0.3 + 0.4 * (hash(round_id) % 100) / 100))  # anywhere in a beat
        leader, successor, *_ = agents
        survivors = agents[1:]
        started = time.monotonic()
        if clean:
            leader.proc.send_signal(signal.SIGTERM)
        else:
            leader.proc.kill()
            expiry = gevent.spawn(bare.stop_and_time_expiry)
        wait_for(lambda: complete_mirror_at(successor, survivors), TTL + 15)
        took = time.monotonic() - started
        return took, (expiry.get(timeout=TTL + 10) if not clean else None)
    finally:
        for agent in agents:
            agent.cleanup()


def main():
    if not PEERS:
        raise SystemExit("FLYNN_HOST_ETCD_ENDPOINTS must name an etcd (bench/run starts one)")
    kills, floors, stops = [], [], []
    for n in range(ROUNDS):
        took, floor = one_round(f"k{n}", clean=False)
        kills.append(took)
        floors.append(floor)
        print(f"round {n + 1} SIGKILL: new leader with a complete mirror after {took:5.2f}s "
              f"(bare etcd key expired after {floor:5.2f}s)", flush=True)
        took, _ = one_round(f"s{n}", clean=True)
        stops.append(took)
        print(f"round {n + 1} SIGTERM: new leader with a complete mirror after {took:5.2f}s",
              flush=True)
    kill, floor, stop = (statistics.median(x) for x in (kills, floors, stops))
    print(f"\nfailover (TTL {TTL}s, median of {ROUNDS} rounds)")
    print(f"  SIGKILL  {kill:5.2f}s  (target <= {TTL + 1}s)  bare etcd expiry {floor:5.2f}s  "
          f"ratio {kill / floor:4.2f}x")
    print(f"  SIGTERM  {stop:5.2f}s  (target < 1s)")
    target("failover after SIGKILL", kill, f"<= {TTL + 1} s", kill <= TTL + 1, " s")
    target("failover after SIGTERM", stop, "< 1 s", stop < 1, " s")


if __name__ == "__main__":
    main()
