"""flynn-host: the per-machine agent of a Flynn-style container platform."""
__version__ = "0.1.0"
