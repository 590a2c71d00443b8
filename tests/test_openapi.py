"""The OpenAPI document is the contract: served at /openapi.json, kept in docs/openapi.json, with
exactly the routes the app has, and real answers (success and error, on the fake engine and on
a real agent in a cluster) conform to what it says for their route and status."""
import os
import re
import unittest

import jsonschema
import requests
import simplejson

from host.api.dashboard import FILES as DASHBOARD_FILES
from host.api.openapi import as_json, document
from host.runtime.fake import FakeRuntime
from tests.support import REPO, AgentProcess, InProcessAgent, job_body, \
    remove_host_containers, require_docker

DOC = document()


def openapi_path(rule: str) -> str:
    """A Bottle rule as the document names it: /host/jobs/<job_id:path> -> /host/jobs/{job_id}."""
    return re.sub(r"<([a-z_]+)(?::[a-z]+)?>", r"{\1}", rule)


def operation_for(method: str, path: str) -> tuple:
    """(document path, operation) that a concrete request path is answered by."""
    for template, operations in DOC["paths"].items():
        pattern = "^" + re.sub(r"\{[a-z_]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            return template, operations[method.lower()]
    raise AssertionError(f"{method} {path}: not in the document")


def check_conforms(testcase, method: str, path: str, answer: requests.Response):
    """The answer's status is one the document lists for the route, and its JSON body is valid
    against the schema listed for that status."""
    template, operation = operation_for(method, path)
    status = str(answer.status_code)
    responses = operation["responses"]
    testcase.assertIn(status, responses, f"{method} {template} answered {status}, "
                                         f"undocumented: {answer.text[:200]}")
    response = responses[status]
    if "$ref" in response:
        response = DOC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    content_type = answer.headers.get("Content-Type", "").split(";")[0]
    content = response.get("content", {})
    if not content:
        return
    testcase.assertIn(content_type, content, f"{method} {template} {status}")
    if content_type == "application/json":
        schema = dict(content[content_type]["schema"], components=DOC["components"])
        try:
            jsonschema.validate(answer.json(), schema,
                                cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError as e:
            testcase.fail(f"{method} {path} {status}: {e.message} at "
                          f"{'/'.join(map(str, e.absolute_path))}")


class DocumentTest(unittest.TestCase):
    def test_the_repository_holds_the_document_the_agent_serves(self):
        with open(os.path.join(REPO, "docs", "openapi.json")) as f:
            self.assertEqual(f.read(), as_json(), "docs/openapi.json is stale: bin/openapi > "
                                                  "docs/openapi.json")

    def test_every_schema_is_valid_json_schema(self):
        for name, schema in DOC["components"]["schemas"].items():
            with self.subTest(schema=name):
                jsonschema.Draft202012Validator.check_schema(schema)
        self.assertEqual(DOC["openapi"], "3.1.0")

    def test_the_document_and_the_routes_are_the_same(self):
        host = InProcessAgent(FakeRuntime())
        try:
            routes = {(r.method.lower(), openapi_path(r.rule))
                      for r in host.server.application.routes}
            served = host.client.get("/openapi.json")
            self.assertEqual(served.status_code, 200)
            self.assertEqual(served.json(), simplejson.loads(as_json()))
        finally:
            host.close()
        documented = {(method, path) for path, operations in DOC["paths"].items()
                      for method in operations}
        # the dashboard's page and static files are not API: HTML, CSS and a script for a
        # browser (docs/API.md, "Dashboard"; tests/test_dashboard.py checks them)
        routes -= {("get", path) for path in DASHBOARD_FILES}
        self.assertEqual(sorted(routes - documented), [], "routes the document lacks")
        self.assertEqual(sorted(documented - routes), [], "documented routes that do not exist")


class ResponsesConformTest(unittest.TestCase):
    """A known sequence of requests, each answer checked against the document."""

    def exchange(self, client, method: str, path: str, **kwargs) -> requests.Response:
        answer = client.http.request(method, client.url + path, timeout=30,
                                     verify=client.verify, **kwargs)
        check_conforms(self, method, path.split("?", 1)[0], answer)
        return answer

    def test_on_the_fake_engine(self):
        runtime = FakeRuntime()
        host = InProcessAgent(runtime)
        client = host.client
        try:
            spec = {"config": {"image": "busybox", "cmd": ["sleep", "1"], "env": {"A": "b"},
                               "ports": [{"port": 0}]}, "resources": {"memory_mb": 16}}
            for method, path, kwargs in (
                    ("GET", "/healthz", {}), ("GET", "/readyz", {}), ("GET", "/host/status", {}),
                    ("PUT", "/host/jobs/c1", {"json": spec}),
                    ("PUT", "/host/jobs/c1", {"json": spec}),
                    ("PUT", "/host/jobs/c1", {"json": {"config": {"image": "other"}}}),
                    ("PUT", "/host/jobs/c2", {"json": {"config": {"image": 5}}}),
                    ("PUT", "/host/jobs/c3", {"data": "{", "headers": {
                        "Content-Type": "application/json"}}),
                    ("GET", "/host/jobs", {}), ("GET", "/host/jobs?status=running", {}),
                    ("GET", "/host/jobs/c1", {}), ("GET", "/host/jobs/missing", {}),
                    ("GET", "/host/events?since=0", {}), ("GET", "/host/events?since=x", {}),
                    ("GET", "/host/events?since=999999", {}),
                    ("POST", "/host/jobs/c1/signal", {"json": {"signal": "HUP"}}),
                    ("POST", "/host/jobs/c1/signal", {"json": {"signal": "NOPE"}}),
                    ("GET", "/host/jobs/c1/log", {}), ("GET", "/host/jobs/c1/attach", {}),
                    ("DELETE", "/host/jobs/c1?timeout=0", {}),
                    ("DELETE", "/host/jobs/c1", {}),
                    ("POST", "/host/leave", {}), ("GET", "/cluster/leader", {}),
                    ("GET", "/metrics", {}), ("GET", "/openapi.json", {})):
                with self.subTest(method=method, path=path):
                    self.exchange(client, method, path, **kwargs)
                if path == "/host/jobs/c1" and method == "PUT":
                    client.wait_status("c1", "running")
        finally:
            host.close()

    def test_on_a_real_agent_in_a_cluster(self):
        from tests.test_cluster import require_etcd
        runtime = require_docker()
        require_etcd()
        agent = AgentProcess(f"contract{os.getpid()}", args=["-heartbeat-ttl", "3"])
        try:
            agent.start()
            client = agent.client
            self.exchange(client, "PUT", "/host/jobs/r1", json=job_body(["sleep", "30"]))
            client.wait_status("r1", "running")
            self.exchange(client, "POST", "/cluster/jobs",
                          json={"jobs": [dict(job_body(["true"]), id="r2")]})
            client.wait_status("r2", "done")
            for method, path, kwargs in (
                    ("GET", "/host/status", {}), ("GET", "/readyz", {}),
                    ("GET", "/host/jobs/r1", {}), ("GET", "/host/jobs/r2/log", {}),
                    ("GET", "/host/events?since=0", {}), ("GET", "/cluster/leader", {}),
                    ("GET", "/cluster/hosts", {}), ("GET", f"/cluster/hosts/{agent.host_id}", {}),
                    ("GET", "/cluster/hosts/nobody", {}), ("GET", "/cluster/events?since=0", {}),
                    ("POST", "/cluster/jobs", {"json": {"jobs": []}}),
                    ("POST", "/cluster/jobs", {"json": {"jobs": [dict(job_body(["x"]),
                                                                      id="r2")]}}),
                    ("POST", "/cluster/jobs", {"json": {"jobs": [dict(job_body(["x"]), resources={
                        "memory_mb": 1 << 40})]}}),
                    ("DELETE", f"/cluster/hosts/{agent.host_id}/jobs/r1?timeout=0", {}),
                    ("GET", "/metrics", {})):
                with self.subTest(method=method, path=path):
                    self.exchange(client, method, path, **kwargs)
        finally:
            agent.cleanup()
            remove_host_containers(runtime, agent.host_id)
