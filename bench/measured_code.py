"""Which host package a benchmark in process measures: this tree's, or with BENCH_CODE=DIR that
of another tree (a clone of an older commit), for a before-and-after on the same machine, run
one after the other. Imported before anything of `host`."""
import os
import sys

sys.path.insert(0, os.environ.get("BENCH_CODE") or
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def code_name() -> str:
    return os.environ.get("BENCH_CODE") or "this tree"


def print_medians(costs: dict, per: str, digits: int = 1) -> dict:
    """Print each side's best and median round ({side: [seconds a `per`]}, sorted here) in
    milliseconds; {side: its median}."""
    medians = {}
    width = max(len(side) for side in costs)
    for side, seconds in costs.items():
        seconds.sort()
        medians[side] = seconds[len(seconds) // 2]
        print(f"  {side:{width}s} best {seconds[0] * 1e3:.{digits}f} ms, "
              f"median {medians[side] * 1e3:.{digits}f} ms a {per}")
    return medians
