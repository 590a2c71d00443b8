"""Layer 0: what a host brings up before it registers (etcd, as the original's manifest did), from
a manifest (manifest.py), with etcd's membership planned from ETCD_PEERS / ETCD_DISCOVERY
(etcd_plan.py), run as jobs of this host or as local processes (runner.py, process.py)."""
