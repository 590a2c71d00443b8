"""The fault cases of issue 9 (tests/fault_cases.py) run as a benchmark: cases 1 and 3 to 10, at
full length (the soak for 10 minutes), each printing its figures: jobs before and after the fault,
jobs lost (should run and do not) and duplicated (more than one container for one job id), the
seconds the cluster took to converge once the fault ended, and whether any agent exited on its
own. The suite (tests/test_faults.py) asserts on the same figures with a 60 s soak.

Needs FLYNN_HOST_ETCD_ENDPOINTS and DOCKER_HOST (bin/test provisions both; see bench/run).
BENCH_SOAK_S (600), BENCH_OUTAGE_S (30) and BENCH_CASES (e.g. "1,4,10") tune it.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import fault_cases as cases  # noqa: E402
from tests.support import require_docker  # noqa: E402
from tests.test_cluster import require_etcd  # noqa: E402

SOAK_S = float(os.environ.get("BENCH_SOAK_S", 600))
OUTAGE_S = float(os.environ.get("BENCH_OUTAGE_S", 30))


def main():
    runtime, peers = require_docker(), require_etcd()
    runs = {
        "1": lambda: cases.agent_killed_and_restarted(runtime, running=20, exiting=2),
        "3": lambda: [cases.dockerd_restarted(runtime, live_restore=True),
                      cases.dockerd_restarted(runtime, live_restore=False)],
        "4": lambda: cases.etcd_outage(runtime, peers, outage_s=OUTAGE_S),
        "5": lambda: cases.etcd_members_lost(runtime),
        "6": lambda: cases.leader_killed_mid_requests(runtime, requests_count=20,
                                                      per_request=10),
        "7": lambda: cases.paused_leader(runtime),
        "8": lambda: cases.host_lost_and_back(runtime),
        "9": lambda: cases.graceful_stop(runtime),
        "10": lambda: cases.soak(runtime, seconds=SOAK_S),
    }
    chosen = os.environ.get("BENCH_CASES", ",".join(runs)).split(",")
    results = []
    for case in chosen:
        print(f"-- case {case}", flush=True)
        outcome = runs[case]()
        for figures in outcome if isinstance(outcome, list) else [outcome]:
            print(f"   {figures.row()}\n   {figures.details}", flush=True)
            results.append(figures)
    print("\nfaults: every case against real agents, dockerd and etcd")
    print(cases.Figures.header())
    for figures in results:
        print(figures.row())
    failed = [f.case for f in results if f.lost or f.duplicated or f.agent_exited]
    print(f"\n{len(results) - len(failed)} of {len(results)} cases lost nothing, duplicated "
          f"nothing, and no agent exited" + (f"; NOT: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
