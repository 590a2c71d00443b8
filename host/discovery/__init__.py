"""Discovery: this host's registration in etcd and everyone else's (etcd.py is the only module that
talks to etcd; embedded.py runs a member of our own when no etcd is given)."""
from __future__ import annotations

import os


def discovery_from_config(config, host_id: str) -> tuple:
    """(EtcdDiscovery, EmbeddedEtcd or None): the etcd cluster given by ETCD_PEERS, or an embedded
    member (alone, or joining through ETCD_DISCOVERY)."""
    from host.discovery.embedded import EmbeddedEtcd
    from host.discovery.etcd import EtcdDiscovery
    if config.etcd_peers:
        return EtcdDiscovery(config.etcd_peers, config.etcd_prefix), None
    embedded = EmbeddedEtcd(name=host_id, data_dir=os.path.join(config.state_dir, "etcd", "data"),
                            external_ip=config.external, client_port=config.etcd_client_port,
                            peer_port=config.etcd_peer_port,
                            discovery_url=config.etcd_discovery or None)
    return EtcdDiscovery(embedded.client_url, config.etcd_prefix), embedded
