"""The simulated hosts' records of bench/mirror_scale.py and bench/mirror_apply.py: 100 jobs
each, shaped as an agent publishes them (about 40 KB), a seventh of them done and the rest
running, the pattern turning with `version` (a third of the statuses change from one version
to the next). Nothing here touches sys.path: mirror_apply imports it while measuring another
tree's code."""
from typing import Optional

import simplejson

JOBS_PER_HOST = 100


def host_record(host_id: str, version: int, written_at: Optional[float] = None) -> str:
    """A host's registration value. The write time, when given, comes first, so that an
    observer reads it without decoding the record a second time."""
    jobs = [{"id": f"{host_id}-job{n}", "status": "running" if (n + version) % 7 else "done",
             "image": "busybox", "spec_digest": f"{n:032x}",
             "ports": [{"port": 49152 + n, "container_port": 49152 + n, "proto": "tcp"}],
             "resources": {"memory_mb": 64, "cpu_shares": 100}, "exit_status": None,
             "error": None, "created_at": "2026-11-25T08:00:00.000000Z",
             "started_at": "2026-11-25T08:00:01.000000Z", "ended_at": None,
             "command": "/bin/sh -c 'sleep 3600'"}
            for n in range(JOBS_PER_HOST)]
    written = {} if written_at is None else {"bench_written_at": written_at}
    return simplejson.dumps(dict(written, id=host_id, addr="127.0.0.1:1", jobs=jobs,
                                 resources={"memory_mb": 16000, "cpu_shares": 4096},
                                 allocated={"memory_mb": 6400, "cpu_shares": 10000},
                                 attributes={}, registered_at="2026-11-25T08:00:00Z",
                                 version=str(version)))
