"""GET /metrics: the agent in Prometheus' text format (prometheus_client).

Values are read from the agent's own state when scraped (jobs by state, waiters, the mirror,
the leader, counts kept where things happen), so serving requests costs nothing extra but one
counter per request for `flynn_host_http_requests_total`. The histograms are host.metrics'.
"""
from __future__ import annotations

import collections

import bottle
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from host.types import ALL_STATES


class AgentCollector:
    def __init__(self, agent, app):
        self.agent, self.app = agent, app

    def collect(self):
        agent, app = self.agent, self.app
        jobs = GaugeMetricFamily("flynn_host_jobs", "Jobs on this host, by state",
                                 labels=["state"])
        counts = agent.table.counts()
        for state in ALL_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("flynn_host_docker_event_lag_seconds",
                                "How far behind Docker's clock its last event was applied",
                                value=agent.supervisor.last_event_lag_s)
        yield GaugeMetricFamily("flynn_host_docker_events_connected",
                                "1 while the agent follows Docker's event stream",
                                value=int(agent.supervisor.events_connected))
        yield CounterMetricFamily("flynn_host_events", "Job events this host published since "
                                  "start", value=agent.table.events.appended)
        waiters = GaugeMetricFamily("flynn_host_waiters", "Open long-polls, event streams, log "
                                    "follows and attach sessions", labels=["kind"])
        for kind, count in sorted(app.waiters.by_kind.items()):
            waiters.add_metric([kind], count)
        yield waiters
        yield GaugeMetricFamily("flynn_host_attach_sessions", "Attach sessions open",
                                value=app.waiters.by_kind["attach"])
        yield GaugeMetricFamily("flynn_host_tasks", "Background tasks (starts, stops, pulls) "
                                "in progress or waiting", value=agent.tasks.running)
        yield GaugeMetricFamily("flynn_host_start_slots_busy", "Container starts running now "
                                "(at most -task-concurrency)", value=agent.tasks.busy_slots)
        requests = CounterMetricFamily("flynn_host_http_requests", "HTTP requests answered, by "
                                       "route and status", labels=["route", "status"])
        named = collections.Counter()
        for (route, status), count in list(app.answered.items()):
            name = route if isinstance(route, str) else f"{route.method} {route.rule}"
            named[(name, status)] += count
        for (name, status), count in sorted(named.items()):
            requests.add_metric([name, status], count)
        yield requests
        yield from agent.recorded.job_start.collect()
        if agent.discovery is not None:
            yield from self._cluster()

    def _cluster(self):
        agent = self.agent
        view = agent.view
        yield GaugeMetricFamily("flynn_host_is_leader", "1 while this agent leads the cluster",
                                value=int(view.is_leader))
        yield GaugeMetricFamily("flynn_host_mirror_hosts", "Hosts in this agent's mirror of "
                                "the cluster", value=len(view.hosts))
        yield GaugeMetricFamily("flynn_host_mirror_jobs", "Jobs in this agent's mirror of the "
                                "cluster", value=sum(len(h.jobs)
                                                     for h in view.hosts.values()))
        yield CounterMetricFamily("flynn_host_cluster_events", "Cluster events this agent's "
                                  "mirror published since start", value=view.events.appended)
        yield CounterMetricFamily("flynn_host_heartbeat_failures", "Heartbeats that failed",
                                  value=agent.heartbeat.failures)
        yield GaugeMetricFamily("flynn_host_registered", "1 while this host's registration is "
                                "in etcd", value=int(agent.heartbeat.registration is not None))
        etcd_errors = CounterMetricFamily("flynn_host_etcd_errors", "Failed etcd requests, by "
                                          "kind (unreachable, or the etcd error code)",
                                          labels=["kind"])
        for kind, count in sorted(agent.discovery.error_counts.items()):
            etcd_errors.add_metric([kind], count)
        yield etcd_errors
        yield GaugeMetricFamily("flynn_host_add_jobs_queue_depth", "AddJobs requests waiting "
                                "for the scheduler", value=agent.scheduler.queue_depth)
        yield from agent.recorded.heartbeat.collect()
        yield from agent.recorded.add_jobs.collect()


def install(app: bottle.Bottle, agent):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent, app))

    @app.get("/metrics")
    def metrics():
        return bottle.HTTPResponse(generate_latest(registry),
                                   headers={"Content-Type": CONTENT_TYPE_LATEST})
