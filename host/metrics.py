"""What the agent records as things happen, for /metrics (host.api.metrics reads everything else
from the agent's state at scrape time). Only what a scrape cannot read afterwards is recorded
here, once per job or per AddJobs request, never per HTTP request: the latency histograms, and
counters of failures.
"""
from __future__ import annotations

from prometheus_client import Histogram

#: seconds: a container start takes from tens of milliseconds to minutes (an image pull)
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Recorded:
    def __init__(self):
        # registry=None: each agent owns its metrics (a test process runs many agents)
        self.job_start = Histogram(
            "flynn_host_job_start_seconds", "Seconds from a job's acceptance to its container "
            "running", buckets=START_BUCKETS, registry=None)
        self.add_jobs = Histogram(
            "flynn_host_add_jobs_seconds", "Seconds the leader took to answer an AddJobs "
            "request, its wait in the queue included", buckets=REQUEST_BUCKETS, registry=None)
        self.heartbeat = Histogram(
            "flynn_host_heartbeat_seconds", "Seconds one heartbeat write to etcd took",
            buckets=REQUEST_BUCKETS, registry=None)
