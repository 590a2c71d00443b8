"""Discovery: this host's registration in etcd and everyone else's (etcd.py is the only module that
talks to etcd, its members API included; heartbeat.py keeps this host's registration)."""
