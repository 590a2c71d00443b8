"""How this host takes part in etcd, decided before its layer-0 etcd service starts.

- `-etcd-endpoints` given: the operator runs etcd; no member here, those are the client URLs.
- `ETCD_DISCOVERY` given: the member forms or joins the first members through etcd's discovery
  protocol.
- `ETCD_PEERS` given (peer addresses of a running cluster, the original's meaning): find the
  members through the peers; if this host is one already and still has its data, it simply
  starts again; if it is one whose data is gone, that member is removed and added anew (etcd
  refuses a known member without its data); if the cluster has `-etcd-members` members already,
  this host runs none and uses theirs; else this host's member is added through the members API
  (as a learner, promoted to a voter once it has caught up: the cluster keeps its quorum
  throughout) and started with the returned cluster and `initial-cluster-state=existing`.
- Neither: the first host, a new single-member cluster (which later hosts join).

Each plan says, in one sentence for the log, why.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

from host.discovery.etcd import EtcdMembers, EtcdUnavailable, Member

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MemberAddress:
    name: str                     # the member's name: this host's id
    external_ip: str
    client_port: int
    peer_port: int

    @property
    def client_url(self) -> str:
        return f"http://{self.external_ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.external_ip}:{self.peer_port}"


@dataclass(frozen=True, slots=True)
class EtcdPlan:
    run_member: bool
    endpoints: tuple              # client URLs the agent talks to, its own member's first
    reason: str                   # one sentence for the log
    bootstrap: tuple = ()         # etcd flags that make the member form or join the cluster
    wipe_data: bool = False       # the member's old data must go before it starts
    member_id: Optional[str] = None
    promote: bool = False         # a learner: promoted to a voter once it runs and caught up
    extra: dict = field(default_factory=dict)


def _initial_cluster(members: list, me: MemberAddress) -> str:
    """name=peer_url for every member (ours by our name; another one not started yet by a
    placeholder: etcd compares the peer URLs, not the names, of the others)."""
    entries = []
    for member in members:
        mine = me.peer_url in member.peer_urls
        name = me.name if mine else (member.name or f"unstarted-{member.id}")
        entries += [f"{name}={url}" for url in member.peer_urls]
    return ",".join(sorted(entries))


def plan_external(endpoints: tuple) -> EtcdPlan:
    return EtcdPlan(False, endpoints, "etcd is the operator's (-etcd-endpoints): no member here")


def plan_discovery(me: MemberAddress, discovery_url: str) -> EtcdPlan:
    return EtcdPlan(True, (me.client_url,), f"forming or joining the first members through "
                    f"discovery at {discovery_url}", bootstrap=("--discovery", discovery_url))


def plan_first(me: MemberAddress) -> EtcdPlan:
    return EtcdPlan(True, (me.client_url,), "no etcd peers given: this host's member is a "
                    "cluster of its own (or was: it starts again from its data), which other "
                    "hosts join", bootstrap=("--initial-cluster", f"{me.name}={me.peer_url}",
                                             "--initial-cluster-state", "new"))


def plan_join(me: MemberAddress, peer_urls: tuple, max_members: int,
              has_data: Callable[[], bool], api: Optional[EtcdMembers] = None) -> EtcdPlan:
    """The plan for a host given ETCD_PEERS. Changes the cluster's membership when it adds (or
    replaces) this host's member. Raises EtcdUnavailable when no peer answers or the change
    fails (the caller retries)."""
    api = api or EtcdMembers()
    try:
        members = api.through_peers(peer_urls)
    except EtcdUnavailable:
        if not has_data():
            raise
        # the whole cluster may be restarting: a member with data needs nobody to start
        return EtcdPlan(True, (me.client_url,), "no etcd peer answers; this host's member "
                        "starts again from its data")
    mine = next((m for m in members if me.peer_url in m.peer_urls), None)
    others = [m for m in members if m is not mine]
    data = has_data()
    others_endpoints = tuple(u for m in others for u in m.client_urls)
    if mine is not None and mine.name and data:
        return EtcdPlan(True, (me.client_url,) + others_endpoints,
                        f"this host is etcd member {mine.id} already: starting it again from "
                        "its data", bootstrap=_existing(members, me), member_id=mine.id,
                        promote=mine.is_learner)
    if mine is not None and mine.name:
        # etcd refuses a member that comes back without its data: replace it
        log.warning("etcd member %s (%s) is this host's but its data is gone; removing it and "
                    "adding this host again", mine.id, me.peer_url)
        api.remove(others, mine.id)
        members = others
    elif mine is not None:
        # added by an earlier start that did not get to run it: run it now
        return EtcdPlan(True, (me.client_url,) + others_endpoints,
                        f"etcd member {mine.id} was added for this host but never started: "
                        "starting it", bootstrap=_existing(members, me), wipe_data=data,
                        member_id=mine.id, promote=mine.is_learner)
    if len(members) >= max_members:
        endpoints = tuple(u for m in members for u in m.client_urls)
        return EtcdPlan(False, endpoints, f"etcd has {len(members)} members already "
                        f"(-etcd-members {max_members}): no member here, using theirs")
    added = api.add(members, me.peer_url)
    members = members + [Member(added.id, me.name, (me.peer_url,), (), True)]
    return EtcdPlan(True, (me.client_url,) + tuple(u for m in members for u in m.client_urls),
                    f"joined etcd as member {added.id} ({len(members)} members now) through "
                    f"{', '.join(peer_urls)}", bootstrap=_existing(members, me), wipe_data=data,
                    member_id=added.id, promote=True)


def _existing(members: list, me: MemberAddress) -> tuple:
    return ("--initial-cluster", _initial_cluster(members, me),
            "--initial-cluster-state", "existing")
