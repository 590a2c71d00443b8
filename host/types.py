"""The data model: jobs, their states and the transitions allowed between them.

Stdlib only. Every other layer imports from here; nothing here imports from them.
The JSON shapes are those of docs/API.md.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from typing import Optional

# Records are dataclasses with slots: setting a misspelled field raises instead of quietly adding
# an attribute nobody reads.

# ---- job states ---------------------------------------------------------------------------------

STARTING = "starting"
RUNNING = "running"
DONE = "done"          # exited 0
CRASHED = "crashed"    # exited non-zero, killed, or OOM-killed
FAILED = "failed"      # the container could not be created or started; `error` says why
STOPPED = "stopped"    # ended after a stop was asked for (DELETE), whatever its exit status:
#                        a scheduler restarts a crashed job, not one it stopped itself

ALL_STATES = (STARTING, RUNNING, DONE, CRASHED, FAILED, STOPPED)
ACTIVE_STATES = frozenset({STARTING, RUNNING})
FINAL_STATES = frozenset({DONE, CRASHED, FAILED, STOPPED})

#: source state -> states it may move to. Final states have no entry: nothing leaves them.
#: starting -> done/crashed happens when a container exits before (or while) we saw it start,
#: e.g. while the agent was down.
ALLOWED_TRANSITIONS = {
    STARTING: frozenset({RUNNING, DONE, CRASHED, FAILED, STOPPED}),
    RUNNING: frozenset({DONE, CRASHED, STOPPED}),
}

#: the event name published when a job enters a state
EVENT_FOR_STATE = {
    STARTING: "create",
    RUNNING: "start",
    DONE: "stop",
    CRASHED: "stop",
    STOPPED: "stop",
    FAILED: "error",
}


def can_transition(source: str, target: str) -> bool:
    return target in ALLOWED_TRANSITIONS.get(source, ())


# ---- ids ----------------------------------------------------------------------------------------

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def id_problem(value) -> Optional[str]:
    """Why `value` is not a valid job or host id, or None when it is."""
    if not isinstance(value, str):
        return "must be a string"
    if not ID_PATTERN.match(value):
        return "must be 1 to 128 characters of A-Z a-z 0-9 _ . -"
    if value in (".", ".."):
        return "must not be '.' or '..'"
    return None


# ---- the job spec -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PortSpec:
    """A port the job wants published. port 0 = allocate one from the host's range.
    container_port None = the same number as the host port (the job learns it from $PORT)."""
    port: int = 0
    proto: str = "tcp"
    container_port: Optional[int] = None

    def to_dict(self) -> dict:
        return {"port": self.port, "proto": self.proto, "container_port": self.container_port}


#: the networks a job may run on: its own (Docker's bridge, ports published on the host), or
#: the host's (it listens on the host's addresses itself and publishes nothing; layer 0 does)
NETWORKS = ("bridge", "host")


@dataclass(frozen=True, slots=True)
class VolumeSpec:
    """A named Docker volume mounted at `target` in the job's container: data that outlives the
    container (a layer-0 etcd member's data)."""
    name: str
    target: str

    def to_dict(self) -> dict:
        return {"name": self.name, "target": self.target}


@dataclass(frozen=True, slots=True)
class JobConfig:
    image: str
    cmd: Optional[tuple] = None
    entrypoint: Optional[tuple] = None
    env: tuple = ()               # sorted (key, value) pairs, so specs compare by value
    working_dir: Optional[str] = None
    user: Optional[str] = None
    tty: bool = False
    ports: tuple = ()             # PortSpec
    stdin: bool = False           # keep stdin open; the host waits for an attach to start it
    network: str = "bridge"       # one of NETWORKS
    volumes: tuple = ()           # VolumeSpec

    def to_dict(self) -> dict:
        d = {
            "image": self.image,
            "cmd": list(self.cmd) if self.cmd is not None else None,
            "entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
            "env": dict(self.env),
            "working_dir": self.working_dir,
            "user": self.user,
            "tty": self.tty,
            "ports": [p.to_dict() for p in self.ports],
            "stdin": self.stdin,
        }
        # only when set: the shape (and so the spec digest) of every other job stays as it was
        if self.network != "bridge":
            d["network"] = self.network
        if self.volumes:
            d["volumes"] = [v.to_dict() for v in self.volumes]
        return d


@dataclass(frozen=True, slots=True)
class Resources:
    memory_mb: int = 0    # 0 = no limit, not accounted
    cpu_shares: int = 0   # 0 = Docker's default weight, not accounted

    def to_dict(self) -> dict:
        return {"memory_mb": self.memory_mb, "cpu_shares": self.cpu_shares}


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    config: JobConfig
    resources: Resources = Resources()
    attributes: tuple = ()        # sorted (key, value) pairs

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "config": self.config.to_dict(),
            "resources": self.resources.to_dict(),
            "attributes": dict(self.attributes),
        }

    def same_spec(self, other: "Job") -> bool:
        return self.to_dict() == other.to_dict()

    def spec_digest(self) -> str:
        """A digest of the whole spec: two jobs under one id are the same job only if their
        digests are equal (the leader compares them without holding full specs)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


# ---- a job on a host ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PortBinding:
    port: int              # on the host
    container_port: int
    proto: str

    def to_dict(self) -> dict:
        return {"port": self.port, "container_port": self.container_port, "proto": self.proto}


@dataclass(slots=True)
class ActiveJob:
    """A job as this host runs it. Only host.state.JobTable changes one."""
    job: Job
    host_id: str
    status: str = STARTING
    container_id: Optional[str] = None
    internal_ip: Optional[str] = None
    ports: tuple = ()              # PortBinding
    exit_status: Optional[int] = None
    error: Optional[str] = None
    created_at: Optional[str] = None
    started_at: Optional[str] = None
    ended_at: Optional[str] = None
    stop_requested: bool = False   # a DELETE arrived; not part of the API shape

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES

    def to_dict(self) -> dict:
        return {
            "job": self.job.to_dict(),
            "host_id": self.host_id,
            "container_id": self.container_id,
            "internal_ip": self.internal_ip,
            "ports": [p.to_dict() for p in self.ports],
            "status": self.status,
            "exit_status": self.exit_status,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


@dataclass(frozen=True, slots=True)
class Event:
    cursor: int
    type: str            # "job" | "host"
    event: str           # create | start | stop | error | add | remove | update
    host_id: str
    job_id: Optional[str]
    job: Optional[dict]  # the job's summary at the time of the event (no spec)
    time: str

    def to_dict(self) -> dict:
        return {"cursor": self.cursor, "type": self.type, "event": self.event,
                "host_id": self.host_id, "job_id": self.job_id, "job": self.job,
                "time": self.time}


@dataclass(frozen=True, slots=True)
class HostResources:
    memory_mb: int
    cpu_shares: int

    def to_dict(self) -> dict:
        return {"memory_mb": self.memory_mb, "cpu_shares": self.cpu_shares}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "HostResources":
        d = d or {}
        return cls(memory_mb=int(d.get("memory_mb", 0)), cpu_shares=int(d.get("cpu_shares", 0)))


# ---- what a host publishes in its registration --------------------------------------------------

@dataclass(frozen=True, slots=True)
class JobSummary:
    """A job as its host's heartbeat carries it: what the leader needs to place jobs and to report
    them. The full spec stays on the host and in its assignment; `spec_digest` stands for it."""
    id: str
    status: str
    image: str
    spec_digest: str
    ports: tuple = ()                  # PortBinding
    resources: Resources = Resources()
    exit_status: Optional[int] = None
    error: Optional[str] = None
    created_at: Optional[str] = None
    started_at: Optional[str] = None
    ended_at: Optional[str] = None
    command: str = ""                  # entrypoint and cmd, for listings (at most COMMAND_CHARS)

    @classmethod
    def of(cls, active: "ActiveJob") -> "JobSummary":
        return cls(id=active.id, status=active.status, image=active.job.config.image,
                   command=command_line(active.job.config),
                   spec_digest=active.job.spec_digest(), ports=active.ports,
                   resources=active.job.resources, exit_status=active.exit_status,
                   error=active.error, created_at=active.created_at,
                   started_at=active.started_at, ended_at=active.ended_at)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATES

    def to_dict(self) -> dict:
        return {"id": self.id, "status": self.status, "image": self.image,
                "spec_digest": self.spec_digest, "ports": [p.to_dict() for p in self.ports],
                "resources": self.resources.to_dict(), "exit_status": self.exit_status,
                "error": self.error, "created_at": self.created_at,
                "started_at": self.started_at, "ended_at": self.ended_at,
                "command": self.command}

    @staticmethod
    def normal_dict(d: dict) -> dict:
        """from_dict(d).to_dict(), without the summary (the cluster view's events carry this
        dict, and it makes one for every job whose status changed in every heartbeat), for a
        `d` whose ports and resources are known to be what from_dict takes. That is `d` itself
        when it has every field, as agents publish it, and nothing to fill in: the caller
        hands it over (a job entry of a record just decoded)."""
        resources = d.get("resources") or {}
        if (d.keys() == _SUMMARY_FIELDS and type(d["command"]) is str
                and type(d["ports"]) is list and len(resources) == 2):
            return d
        return {"id": d["id"], "status": d["status"], "image": d.get("image", ""),
                "spec_digest": d.get("spec_digest", ""),
                "ports": [{"port": p["port"], "container_port": p["container_port"],
                           "proto": p["proto"]} for p in d.get("ports") or ()],
                "resources": {"memory_mb": resources.get("memory_mb", 0),
                              "cpu_shares": resources.get("cpu_shares", 0)},
                "exit_status": d.get("exit_status"), "error": d.get("error"),
                "created_at": d.get("created_at"), "started_at": d.get("started_at"),
                "ended_at": d.get("ended_at"), "command": str(d.get("command") or "")}

    @classmethod
    def from_dict(cls, d: dict) -> "JobSummary":
        return cls(id=d["id"], status=d["status"], image=d.get("image", ""),
                   spec_digest=d.get("spec_digest", ""),
                   ports=tuple(PortBinding(**p) for p in d.get("ports") or ()),
                   resources=Resources(**(d.get("resources") or {})),
                   exit_status=d.get("exit_status"), error=d.get("error"),
                   created_at=d.get("created_at"), started_at=d.get("started_at"),
                   ended_at=d.get("ended_at"), command=str(d.get("command") or ""))


#: the fields of JobSummary.to_dict()
_SUMMARY_FIELDS = frozenset(("id", "status", "image", "spec_digest", "ports", "resources",
                             "exit_status", "error", "created_at", "started_at", "ended_at",
                             "command"))

#: characters of a job's command a heartbeat carries: enough to recognise it in a listing,
#: without a 64 KB command line in every host's record
COMMAND_CHARS = 200


def command_line(config: JobConfig) -> str:
    """The job's entrypoint and cmd as one line, as a shell would take it (empty: the image's
    own), cut to COMMAND_CHARS."""
    words = list(config.entrypoint or ()) + list(config.cmd or ())
    line = shlex.join(words)
    return line if len(line) <= COMMAND_CHARS else line[:COMMAND_CHARS - 1] + "…"


@dataclass(frozen=True, slots=True)
class HostRecord:
    """The value of a host's registration: the Host of docs/API.md without `leader` (which the
    leader adds when it serves the record)."""
    id: str
    addr: str
    resources: HostResources
    allocated: HostResources
    jobs: tuple = ()                   # JobSummary, newest first
    attributes: Optional[dict] = None
    version: str = ""
    registered_at: Optional[str] = None
    #: the state dir this agent runs from (made once, kept in it): two agents that claim one
    #: host id from different state dirs are two machines, not one restarted
    state_id: str = ""

    def to_dict(self) -> dict:
        return {"id": self.id, "addr": self.addr, "version": self.version,
                "attributes": dict(self.attributes or {}), "resources": self.resources.to_dict(),
                "allocated": self.allocated.to_dict(), "jobs": [j.to_dict() for j in self.jobs],
                "registered_at": self.registered_at, "state_id": self.state_id}

    @classmethod
    def from_dict(cls, d: dict) -> "HostRecord":
        """Raises KeyError, TypeError or ValueError when `d` is not a host record."""
        if not isinstance(d, dict) or id_problem(d.get("id")):
            raise ValueError("not a host record (no valid id)")
        return cls(id=d["id"], addr=str(d.get("addr", "")),
                   resources=HostResources.from_dict(d.get("resources")),
                   allocated=HostResources.from_dict(d.get("allocated")),
                   jobs=tuple(JobSummary.from_dict(j) for j in d.get("jobs") or ()),
                   attributes=dict(d.get("attributes") or {}), version=str(d.get("version", "")),
                   registered_at=d.get("registered_at"), state_id=str(d.get("state_id", "")))

    def without_jobs(self) -> tuple:
        """What a host update is about, apart from its jobs (and what they allocate)."""
        return (self.addr, self.version, self.attributes, self.resources, self.registered_at)


def job_from_dict(d: dict) -> Job:
    """Rebuild a Job from its own to_dict() output (trusted: our store, our labels).
    Untrusted input goes through host.jobspec.parse_job instead."""
    c = d["config"]
    config = JobConfig(
        image=c["image"],
        cmd=tuple(c["cmd"]) if c.get("cmd") is not None else None,
        entrypoint=tuple(c["entrypoint"]) if c.get("entrypoint") is not None else None,
        env=tuple(sorted((c.get("env") or {}).items())),
        working_dir=c.get("working_dir"),
        user=c.get("user"),
        tty=bool(c.get("tty")),
        ports=tuple(PortSpec(**p) for p in c.get("ports") or ()),
        stdin=bool(c.get("stdin")),
        network=c.get("network") or "bridge",
        volumes=tuple(VolumeSpec(**v) for v in c.get("volumes") or ()),
    )
    return Job(id=d["id"], config=config, resources=Resources(**(d.get("resources") or {})),
               attributes=tuple(sorted((d.get("attributes") or {}).items())))


def active_job_from_dict(d: dict) -> ActiveJob:
    """Rebuild an ActiveJob from its persisted form (to_dict() plus stop_requested)."""
    return ActiveJob(
        job=job_from_dict(d["job"]), host_id=d["host_id"], status=d["status"],
        container_id=d.get("container_id"), internal_ip=d.get("internal_ip"),
        ports=tuple(PortBinding(**p) for p in d.get("ports") or ()),
        exit_status=d.get("exit_status"), error=d.get("error"),
        created_at=d.get("created_at"), started_at=d.get("started_at"),
        ended_at=d.get("ended_at"), stop_requested=bool(d.get("stop_requested")),
    )
