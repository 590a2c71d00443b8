"""Fuzzing a live agent from its OpenAPI document (schemathesis, on hypothesis), shared by the
suite (tests/test_fuzz.py, bounded) and bench/fuzz.py (a longer campaign).

Every operation of the document gets generated requests, sent with the agent's token; each
answer must be no 5xx, a documented status, the documented content type, and a body valid
against the documented schema (every error is then in the one JSON shape). What would make a
case wait or end the agent is pinned down in the copy of the document the fuzzer reads: long-poll
waits and stop timeouts are short, no stream or follow stays open, and `POST /host/leave` (the
agent leaving the cluster for good, tested on its own) is not sent.
"""
from __future__ import annotations

import collections
import copy
import time

import hypothesis
import requests
from hypothesis import HealthCheck, given, settings

import schemathesis
from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                 response_schema_conformance, status_code_conformance)
from schemathesis.core.failures import FailureGroup

from host.api.openapi import document

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
#: operations a fuzzer must not send: they end the agent by design
SKIPPED = {("POST", "/host/leave")}


def fuzzing_document() -> dict:
    """The document, with what would hold a case open pinned down."""
    doc = copy.deepcopy(document())
    for operations in doc["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                name, schema = parameter["name"], parameter["schema"]
                if name in ("wait", "timeout"):
                    schema["maximum"] = 0.2
                elif name in ("stream", "follow"):
                    parameter["schema"] = {"type": "boolean", "enum": [False]}
    return doc


class Report:
    def __init__(self):
        self.tried = collections.Counter()      # operation -> cases sent
        self.statuses = collections.Counter()   # status -> answers
        self.failures = []                      # (operation, check, status, curl)
        self.slowest = []                       # (seconds, operation, curl)

    def failed_checks(self) -> list:
        return sorted({(op, title, status) for op, title, status, _ in self.failures})

    def lines(self) -> list:
        lines = [f"cases tried: {sum(self.tried.values())} over {len(self.tried)} operations",
                 "statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())),
                 f"failures: {len(self.failures)}"]
        lines += [f"  {op}: {title} (status {status})" for op, title, status in
                  self.failed_checks()]
        if self.failures:
            lines.append(f"  e.g. {_short(self.failures[0][3], 2000)}")
        lines.append("slowest answers (beyond a long-poll's own wait):")
        lines += [f"  {seconds * 1000:7.1f} ms  {op}  {_short(curl)}" for seconds, op, curl in
                  sorted(self.slowest, reverse=True)[:5]]
        return lines


def fuzz(base_url: str, token: str, max_examples: int, seed: int = 0,
         verify=True) -> Report:
    """Fuzz every operation of the document but SKIPPED; `seed` 0: the same cases every run."""
    schema = schemathesis.openapi.from_dict(fuzzing_document())
    schema.config.update(base_url=base_url)
    session = requests.Session()
    session.verify = verify
    report = Report()
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) not in SKIPPED:
            _fuzz_operation(operation, session, {"Authorization": f"Bearer {token}"}, report,
                            max_examples, seed)
    return report


def _short(text: str, most: int = 160) -> str:
    return text if len(text) <= most else text[:most] + f"... ({len(text)} characters)"


def _asked_wait(case) -> float:
    try:
        return max(0.0, float((case.query or {}).get("wait") or 0))
    except (TypeError, ValueError):
        return 0.0


def _fuzz_operation(operation, session, headers: dict, report: Report, max_examples: int,
                    seed: int):
    label = f"{operation.method.upper()} {operation.path}"

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=not seed,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case):
        report.tried[label] += 1
        started = time.monotonic()
        response = case.call(session=session, headers=headers, timeout=15)
        # a long-poll's answer is slow by design: what counts is the time beyond its wait
        elapsed = time.monotonic() - started - _asked_wait(case)
        report.statuses[response.status_code] += 1
        curl = case.as_curl_command(headers=headers)
        report.slowest = sorted(report.slowest + [(elapsed, label, curl)], reverse=True)[:5]
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            # collected, never raised: hypothesis would stop at the first and shrink it
            for failure in group.exceptions:
                report.failures.append((label, failure.title, response.status_code, curl))
    (hypothesis.seed(seed)(run) if seed else run)()
