"""A check shared by the parsers of untrusted documents (a job spec, a layer-0 manifest): the
problem is raised as the caller's error type, `<path>: <problem>`. Stdlib only."""
from __future__ import annotations


def known_fields(value, path: str, allowed: set, error: type) -> dict:
    """`value` if it is an object with no field outside `allowed`: a typo (`memroy_mb`) is an
    error, never a setting silently dropped."""
    if not isinstance(value, dict):
        raise error(f"{path}: must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise error(f"{path}: unknown field(s) " + ", ".join(unknown))
    return value
