"""Job start cost: the agent versus raw docker-py, side by side.

20 jobs sequentially and 20 in parallel. Baseline: docker-py create + start with the same labels,
memory/cpu limits and one published port. Agent: PUT /host/jobs until the job's `running` event is
seen through the long-poll, on an agent with neither a token nor metrics (`-metrics=false`).
Secure: the same on an agent with `-auth-token-file` and /metrics (every request authenticated
and counted), run beside it: the ratio secure / agent is what auth and metrics cost. Rounds
alternate which side goes first; medians are reported with the ratios agent / raw (target <=
1.05x in both modes) and secure / agent.

Needs DOCKER_HOST and the test image (bin/test provisions both): `python bench/job_start.py`.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent.pool  # noqa: E402
import requests  # noqa: E402
import simplejson  # noqa: E402

from bench.report import ratio_met, target  # noqa: E402
from tests.support import (TEST_IMAGE, AgentProcess, free_port, remove_host_containers,  # noqa
                           require_docker)

JOBS = int(os.environ.get("BENCH_JOBS", 20))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
CMD = ["sleep", "300"]
MEMORY_MB, CPU_SHARES = 64, 512


def raw_docker(api, host_id, tag, parallel):
    def one(i):
        job_id = f"{tag}-{i}"
        port = free_port()
        host_config = api.create_host_config(
            port_bindings={f"{port}/tcp": [("0.0.0.0", port)]},
            mem_limit=MEMORY_MB * 1024 * 1024, cpu_shares=CPU_SHARES)
        spec = {"id": job_id, "config": {"image": TEST_IMAGE, "cmd": CMD}}
        container = api.create_container(
            TEST_IMAGE, CMD, name=f"flynn-{host_id}-{job_id}", host_config=host_config,
            ports=[(port, "tcp")], environment=[f"PORT={port}", f"FLYNN_JOB_ID={job_id}"],
            labels={"flynn-host.id": host_id, "flynn-host.job-id": job_id,
                    "flynn-host.job": simplejson.dumps(spec)})
        api.start(container)

    started = time.monotonic()
    if parallel:
        gevent.pool.Pool(JOBS).map(one, range(JOBS))
    else:
        for i in range(JOBS):
            one(i)
    return time.monotonic() - started


def through_agent(agent, tag, parallel):
    http = requests.Session()
    http.headers.update(agent.client.http.headers)  # the token, for the secure agent
    http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=JOBS + 4))
    url = agent.client.url
    body = {"config": {"image": TEST_IMAGE, "cmd": CMD, "ports": [{"port": 0}]},
            "resources": {"memory_mb": MEMORY_MB, "cpu_shares": CPU_SHARES}}
    cursor = http.get(url + "/host/events").json()["cursor"]
    running = set()

    def put(i):
        resp = http.put(f"{url}/host/jobs/{tag}-{i}", json=body)
        assert resp.status_code == 202, resp.text

    def wait_running(wanted):
        nonlocal cursor
        while not wanted <= running:
            page = http.get(url + "/host/events", params={"since": cursor, "wait": 30}).json()
            cursor = page["cursor"]
            for event in page["events"]:
                if event["event"] == "start":
                    running.add(event["job_id"])
                elif event["event"] in ("stop", "error"):
                    raise AssertionError(f"job {event['job_id']} ended: {event['job']['error']}")

    started = time.monotonic()
    if parallel:
        gevent.pool.Pool(JOBS).map(put, range(JOBS))
        wait_running({f"{tag}-{i}" for i in range(JOBS)})
    else:
        for i in range(JOBS):
            put(i)
            wait_running({f"{tag}-{i}"})
    return time.monotonic() - started


def main():
    runtime = require_docker()
    api = runtime._client()
    raw_host = f"benchraw{os.getpid()}"
    args = ["-log-level", "info", "-cpu-shares", "1000000", "-memory-mb", "1000000"]
    # each agent its own port range, below the kernel's ephemeral ports: two agents on one
    # machine would otherwise both see a port free and race for it at the engine
    agent = AgentProcess(f"benchagent{os.getpid()}",
                         args=args + ["-metrics=false", "-ports", "20000-22999"]).start()
    token_dir = tempfile.mkdtemp()
    token_file = os.path.join(token_dir, "token")
    with open(token_file, "w") as f:
        f.write("bench-token-0123456789abcdef\n")
    secure = AgentProcess(f"benchsecure{os.getpid()}", args=args + ["-ports", "23000-25999"],
                          token_file=token_file).start()
    agents = {"agent": agent, "secure": secure}
    results = {}
    try:
        for round_no in range(ROUNDS):
            for mode in ("sequential", "parallel"):
                order = ("raw", "agent", "secure") if round_no % 2 == 0 else \
                    ("secure", "agent", "raw")
                for side in order:
                    tag = f"r{round_no}-{mode[:3]}"
                    if side == "raw":
                        seconds = raw_docker(api, raw_host, tag, mode == "parallel")
                        remove_host_containers(runtime, raw_host)
                    else:
                        seconds = through_agent(agents[side], tag, mode == "parallel")
                        remove_host_containers(runtime, agents[side].host_id)
                    results.setdefault((mode, side), []).append(seconds)
                    print(f"round {round_no + 1} {mode:<10} {side:<6} {JOBS} jobs "
                          f"{seconds:6.2f}s", flush=True)
    finally:
        for one in agents.values():
            one.cleanup()
            remove_host_containers(runtime, one.host_id)
        remove_host_containers(runtime, raw_host)
        shutil.rmtree(token_dir, ignore_errors=True)

    print(f"\njob_start: {JOBS} jobs, median of {ROUNDS} rounds "
          f"(per job: raw docker-py create+start vs PUT until `running`)")
    for mode in ("sequential", "parallel"):
        raw = statistics.median(results[(mode, "raw")])
        ours = statistics.median(results[(mode, "agent")])
        safe = statistics.median(results[(mode, "secure")])
        print(f"  {mode:<10} raw {raw:6.2f}s ({raw / JOBS * 1000:5.0f} ms/job)   "
              f"agent {ours:6.2f}s ({ours / JOBS * 1000:5.0f} ms/job)   "
              f"ratio {ours / raw:4.2f}x (target <= 1.05x)")
        print(f"  {'':<10} secure (token + metrics) {safe:6.2f}s   "
              f"ratio secure / agent {safe / ours:4.2f}x")
    for mode in ("sequential", "parallel"):
        ratio = statistics.median(results[(mode, "agent")]) / statistics.median(
            results[(mode, "raw")])
        target(f"job_start {mode} agent / raw docker-py", ratio, "<= 1.05x",
               ratio_met(ratio, 1.05), "x")


if __name__ == "__main__":
    main()
