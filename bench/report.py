"""One line per figure that has a target, in a shape bench/run gathers into its final table.

A benchmark calls `target("longpoll p99 / baseline", 1.21, "<= 1.3x", met=1.21 <= 1.3)` and
prints its own prose as it likes; bench/run greps the `TARGET\t` lines of every benchmark's
output and ends with one table: figure, value, target, met or not. A figure that could not be
measured (a failure, a timeout) is reported with met=False and the reason as its value.
"""
from __future__ import annotations

import math

PREFIX = "TARGET\t"


def target(figure: str, value, goal: str, met: bool, unit: str = ""):
    """Print one figure with its target. `value` is a number (shown with 2 decimals, or as an
    integer) or a text such as "failed: 3 jobs did not start"."""
    if isinstance(value, float):
        shown = "n/a" if math.isnan(value) else f"{value:.2f}{unit}"
    else:
        shown = f"{value}{unit}"
    print(f"{PREFIX}{figure}\t{shown}\t{goal}\t{'met' if met else 'NOT met'}", flush=True)


def ratio_met(value: float, limit: float) -> bool:
    return not math.isnan(value) and value <= limit
