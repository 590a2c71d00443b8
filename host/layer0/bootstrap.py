"""From the daemon's settings to its layer 0: the manifest loaded, this host's part in etcd
planned, and the etcd client URLs the agent talks to."""
from __future__ import annotations

import logging
import os
from typing import Optional

from host import errors
from host.config import ConfigError
from host.discovery.etcd import Credentials, EtcdMembers
from host.layer0 import etcd_plan
from host.layer0.manifest import load_manifest
from host.layer0.runner import Layer0
from host.retry import Backoff

log = logging.getLogger(__name__)

#: the manifest shipped in the package (the top-level manifest.json of the repository)
DEFAULT_MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifest.json")


def check_etcd_settings(config):
    """ConfigError (exit 2) for settings that contradict each other, or that cannot be guessed."""
    if config.layer0_mode == "jobs" and not config.was_given("external"):
        # in a container, the guess would be the container's own address, which neither other
        # hosts nor the etcd member (on the machine's network) can use
        raise ConfigError("-external IP is required with -layer0-mode jobs (as in the flynn/host "
                          "image): the machine's address, where other hosts reach this one")
    if config.etcd_endpoints and (config.etcd_peers or config.etcd_discovery):
        raise ConfigError("-etcd-endpoints (an etcd of the operator's) cannot go with "
                          "ETCD_PEERS or ETCD_DISCOVERY (which make this host run a member)")
    if config.etcd_peers and config.etcd_discovery:
        raise ConfigError("ETCD_PEERS (join a running cluster) and ETCD_DISCOVERY (form the "
                          "first members) cannot both be given")


def load_services(config) -> tuple:
    """The manifest's services. Raises ManifestError, or ConfigError when no etcd is left
    (usage errors: exit 2, checked before anything is started or locked)."""
    services = load_manifest(config.manifest or DEFAULT_MANIFEST)
    if not any(s.role == "etcd" for s in services) and not config.etcd_endpoints:
        raise ConfigError(f"-manifest {config.manifest or DEFAULT_MANIFEST}: no service has "
                          '"role": "etcd"; give -etcd-endpoints for an etcd of your own')
    return services


def layer0_for(config, host_id: str, services: tuple) -> Layer0:
    """The services as this host runs them."""
    return Layer0(services, host_id=host_id, external_ip=config.external,
                  listen_port=config.listen[1], state_dir=config.state_dir,
                  etcd_client_port=config.etcd_client_port, etcd_peer_port=config.etcd_peer_port,
                  all_jobs=config.layer0_mode == "jobs", etcd_peers=config.etcd_peers,
                  etcd_discovery=config.etcd_discovery)


def plan_etcd(config, layer0: Layer0, runtime) -> etcd_plan.EtcdPlan:
    """This host's part in etcd. Joining retries, with backoff, until a peer answers (hosts
    may be started in any order)."""
    if config.etcd_endpoints:
        return etcd_plan.plan_external(tuple(u.strip() for u in config.etcd_endpoints.split(",")
                                             if u.strip()))
    me = layer0.member_address()
    if config.etcd_discovery:
        return etcd_plan.plan_discovery(me, config.etcd_discovery)
    if not config.etcd_peers:
        return etcd_plan.plan_first(me)
    api = EtcdMembers(layer0.etcd_credentials)
    return Backoff("joining etcd through ETCD_PEERS", log).retry(
        lambda: etcd_plan.plan_join(me, config.etcd_peers, config.etcd_members,
                                    lambda: layer0.etcd_has_data(runtime), api=api),
        (errors.FlynnError,))


def etcd_credentials(config, token: Optional[str]) -> Optional[Credentials]:
    """etcd's root user for the etcd layer 0 runs (derived from the API token: every host of
    the cluster has it); None without a token, or for an etcd of the operator's
    (-etcd-endpoints), whose access is the operator's to set."""
    if token is None or config.etcd_endpoints:
        return None
    return Credentials.from_token(token)
