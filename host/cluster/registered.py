"""A host as the cluster view mirrors it, from the record its registration holds.

The record stays the JSON text the host published, and its job summaries are built only when
something asks for them (`record`). What is needed on every heartbeat is taken out at once, in
one pass over the decoded record: each job's status (the view tells a job's change by it), and
what the scheduler weighs (the header's resources, the ports active jobs hold). At 5,000 hosts
of 100 jobs a heartbeat comes every 2 ms: building 100 summaries for each (and comparing them
with the last) was a third of the view's work, and the summaries took three times the memory
of the text and the index kept now (bench/mirror_apply.py, bench/mirror_scale.py). The record
is checked as a whole when read, as HostRecord.from_dict checks it, so building it later
cannot fail (stricter in one thing: a job's id and status must be strings).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Optional

import simplejson

from host.types import ACTIVE_STATES, HostRecord, JobSummary

_PORT_KEYS = frozenset(("port", "container_port", "proto"))
_RESOURCE_KEYS = frozenset(("memory_mb", "cpu_shares"))


class RegisteredHost:
    __slots__ = ("id", "created_index", "modified_index", "header", "jobs", "active_jobs",
                 "active_ports", "_text", "_record")

    def __init__(self, id: str, created_index: int, modified_index: int, record: HostRecord):
        """A host from a record already parsed (see read() for one from etcd)."""
        self.id, self.created_index, self.modified_index = id, created_index, modified_index
        #: the record without its jobs: addr, resources, allocated, version, ...
        self.header = dataclasses.replace(record, jobs=())
        #: {job id: status}, in the record's order
        self.jobs = {job.id: job.status for job in record.jobs}
        #: how many of them are active (the scheduler's spread weighs it on every placement)
        self.active_jobs = sum(1 for job in record.jobs if job.is_active)
        #: {"port/proto"} the host's active jobs hold (port_key)
        self.active_ports = frozenset(port_key(p.port, p.proto) for job in record.jobs
                                      if job.is_active for p in job.ports)
        self._text, self._record = None, record

    @classmethod
    def read(cls, host_id: str, created_index: int, modified_index: int, value: str,
             before: Optional["RegisteredHost"] = None,
             changed: Optional[list] = None) -> "RegisteredHost":
        """The host registration `value` describes. Raises TypeError, ValueError or KeyError
        where HostRecord.from_dict would. With `changed`, appends to it the summary (as a
        dict) of every job whose status is not what it was in `before` (new ones included).
        The same text as `before`'s (a record written again unchanged, or read again after the
        view lost its watch) is not decoded again."""
        if before is not None and before._text == value and before.created_index == created_index:
            return before._at(modified_index)
        d = simplejson.loads(value)
        if not isinstance(d, dict):
            raise ValueError("not a host record (not an object)")
        header = HostRecord.from_dict(dict(d, jobs=()))
        old = before.jobs if before is not None else {}
        jobs, ports, active_jobs = {}, set(), 0
        held, intern, normal = ports.add, sys.intern, JobSummary.normal_dict
        for job in d.get("jobs") or ():
            # what JobSummary.from_dict would refuse, checked inline: this runs for every job
            # of every heartbeat (hence the local names, and the port keys made right here)
            if type(job) is not dict:
                raise TypeError(f"a job entry is not an object: {job!r:.60}")
            job_id, status = job["id"], job["status"]
            if type(job_id) is not str or type(status) is not str:  # (from_dict takes any)
                raise TypeError(f"job {job_id!r}: its id and status are not both strings")
            status = jobs[job_id] = intern(status)
            active = status in ACTIVE_STATES
            active_jobs += active
            job_ports = job.get("ports")
            if job_ports:
                for port in job_ports:
                    if type(port) is not dict or port.keys() != _PORT_KEYS:
                        raise TypeError(f"job {job_id!r}: a port is not {sorted(_PORT_KEYS)}")
                    if active:
                        held(f"{port['port']}/{port['proto']}")  # (port_key, inline)
            resources = job.get("resources")
            if resources and (type(resources) is not dict or
                              not resources.keys() <= _RESOURCE_KEYS):
                raise TypeError(f"job {job_id!r}: resources are not {sorted(_RESOURCE_KEYS)}")
            if changed is not None and old.get(job_id) != status:
                changed.append(normal(job))
        host = cls.__new__(cls)
        host.id, host.created_index, host.modified_index = host_id, created_index, modified_index
        host.header, host.jobs, host.active_ports = header, jobs, frozenset(ports)
        host.active_jobs = active_jobs
        host._text, host._record = value, None
        return host

    def _at(self, modified_index: int) -> "RegisteredHost":
        """This host as written again, unchanged, at `modified_index`."""
        host = RegisteredHost.__new__(RegisteredHost)
        for name in self.__slots__:
            setattr(host, name, getattr(self, name))
        host.modified_index = modified_index
        return host

    @property
    def record(self) -> HostRecord:
        """What the host published, job summaries and all (built once, when first asked)."""
        if self._record is None:
            self._record = HostRecord.from_dict(simplejson.loads(self._text))
            self._text = None  # the record holds it all now
        return self._record

    @property
    def addr(self) -> str:
        return self.header.addr

    def job(self, job_id: str) -> Optional[JobSummary]:
        if job_id not in self.jobs:
            return None
        return next(job for job in self.record.jobs if job.id == job_id)

    def __eq__(self, other) -> bool:
        if not isinstance(other, RegisteredHost):
            return NotImplemented
        return (self.id, self.created_index, self.modified_index, self.record) == \
            (other.id, other.created_index, other.modified_index, other.record)

    __hash__ = None  # (mutable: its record is built late)

    def __repr__(self) -> str:
        return (f"RegisteredHost(id={self.id!r}, created_index={self.created_index}, "
                f"modified_index={self.modified_index}, jobs={len(self.jobs)})")


def port_key(port, proto) -> str:
    """A host port as the mirror holds it: "49152/tcp". A string, not a (port, proto) tuple:
    strings are not tracked by the garbage collector, and at 5,000 hosts the tuples would be
    half a million more objects for every full collection to walk."""
    return f"{port}/{proto}"
