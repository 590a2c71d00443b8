"""How a job's container is named and labelled, and how a job is read back from its labels.

The labels are what lets an agent always find its own containers again, and rebuild a job whose
table entry was lost: the host id, the job id, the whole job spec and the host ports it holds.
Only containers carrying our host id are ever touched.
"""
from __future__ import annotations

import hashlib

import simplejson

from host.types import Job, PortBinding, job_from_dict

LABEL_HOST_ID = "flynn-host.id"
LABEL_JOB_ID = "flynn-host.job-id"
LABEL_JOB_SPEC = "flynn-host.job"
LABEL_PORTS = "flynn-host.ports"


def host_filter(host_id: str) -> dict:
    """The labels every container of this host carries (a filter for listing and events)."""
    return {LABEL_HOST_ID: host_id}


def container_name(host_id: str, job_id: str) -> str:
    """flynn-<host>-<job>-<digest of the pair>. Ids may contain dashes, so without the digest
    host "a" with job "b-c" and host "a-b" with job "c" would share one name (and one would
    adopt the other's container)."""
    pair = hashlib.sha256(f"{host_id}\0{job_id}".encode()).hexdigest()[:12]
    return f"flynn-{host_id}-{job_id}-{pair}"


def volume_name(host_id: str, service_id: str) -> str:
    """flynn-<host>-<service>-<digest of the pair>: the data volume of a layer-0 service (the
    digest, as in container names, keeps host "a" + service "b-c" apart from "a-b" + "c").
    Docker takes up to 255 characters; ours stay within 128."""
    pair = hashlib.sha256(f"{host_id}\0{service_id}".encode()).hexdigest()[:12]
    prefix = f"flynn-{host_id}-{service_id}"
    return f"{prefix[:110]}-{pair}"


def job_labels(host_id: str, job: Job, ports: tuple) -> dict:
    return {LABEL_HOST_ID: host_id, LABEL_JOB_ID: job.id,
            LABEL_JOB_SPEC: simplejson.dumps(job.to_dict()),
            LABEL_PORTS: simplejson.dumps([p.to_dict() for p in ports])}


def same_job(labels: dict, expected: dict) -> bool:
    """True if a container with `labels` is the one `expected` (job_labels()) describes: the same
    host id and job id."""
    return all(labels.get(key) == expected.get(key) for key in (LABEL_HOST_ID, LABEL_JOB_ID))


def job_from_labels(labels: dict) -> tuple:
    """(Job, (PortBinding, ...)) rebuilt from a container's labels. Raises ValueError when they
    are missing or unreadable."""
    try:
        job = job_from_dict(simplejson.loads(labels[LABEL_JOB_SPEC]))
        ports = tuple(PortBinding(**p) for p in simplejson.loads(labels.get(LABEL_PORTS) or "[]"))
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"unreadable job labels: {e!r}") from None
    if job.id != labels.get(LABEL_JOB_ID):
        raise ValueError("the job spec label does not match the job id label")
    return job, ports
