"""A longer fuzzing campaign than the suite's (tests/test_fuzz.py): every route of the OpenAPI
document, against a real agent on the real engine in a cluster, with auth on. Prints the cases
tried, the statuses, every failed check (with a curl line reproducing one) and the slowest
answers, then checks the agent is alive. Exits 1 on any failure.

Needs DOCKER_HOST, the test image and FLYNN_HOST_ETCD_ENDPOINTS (bin/test provisions them; for
a run by hand, see bin/provision.sh): `python bench/fuzz.py`.
Tunables: BENCH_EXAMPLES (cases per operation, 200), BENCH_SEED (default: a new one each run,
printed so that a failing campaign can be run again).
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.fuzzing import fuzz  # noqa: E402
from tests.support import AgentProcess, remove_host_containers, require_docker  # noqa: E402
from tests.test_auth import TOKEN, token_file  # noqa: E402

EXAMPLES = int(os.environ.get("BENCH_EXAMPLES", 200))
SEED = int(os.environ.get("BENCH_SEED", random.randrange(1, 1 << 30)))


def main() -> int:
    runtime = require_docker()
    agent = AgentProcess(f"benchfuzz{os.getpid()}", token_file=token_file(tempfile.mkdtemp()),
                         args=["-registries", "localhost:1", "-log-level", "info"]).start()
    try:
        started = time.monotonic()
        report = fuzz(agent.client.url, TOKEN, EXAMPLES, seed=SEED)
        elapsed = time.monotonic() - started
        alive = agent.client.get("/healthz").status_code == 200
    finally:
        agent.cleanup()
        remove_host_containers(runtime, agent.host_id)
    print(f"\nfuzz: seed {SEED}, {EXAMPLES} cases per operation, {elapsed:.0f}s")
    for line in report.lines():
        print("  " + line)
    print(f"  agent alive afterwards: {alive}")
    return 0 if alive and not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
