"""The job spec: states, transitions and validation of untrusted specs."""
import unittest

from host.errors import ValidationError
from host.jobspec import parse_job
from host import types


def spec(**config):
    return {"config": dict({"image": "busybox"}, **config)}


class TransitionTest(unittest.TestCase):
    def test_final_states_are_final(self):
        for final in types.FINAL_STATES:
            for target in types.ALL_STATES:
                self.assertFalse(types.can_transition(final, target), (final, target))

    def test_lifecycle(self):
        self.assertTrue(types.can_transition(types.STARTING, types.RUNNING))
        self.assertTrue(types.can_transition(types.STARTING, types.FAILED))
        self.assertTrue(types.can_transition(types.RUNNING, types.DONE))
        self.assertTrue(types.can_transition(types.RUNNING, types.CRASHED))
        self.assertFalse(types.can_transition(types.RUNNING, types.FAILED))
        self.assertFalse(types.can_transition(types.RUNNING, types.STARTING))


class ParseJobTest(unittest.TestCase):
    def assertInvalid(self, body, fragment, job_id="j1"):
        with self.assertRaises(ValidationError) as caught:
            parse_job(body, job_id)
        self.assertIn(fragment, caught.exception.message)
        return caught.exception

    def test_full_spec_round_trips(self):
        body = {"id": "web-1", "config": {
            "image": "busybox", "cmd": ["sh", "-c", "httpd -f"], "entrypoint": None,
            "env": {"K": "V"}, "working_dir": "/", "user": "nobody", "tty": True,
            "ports": [{"port": 0, "proto": "udp"}, {"port": 8080, "container_port": 80}]},
            "resources": {"memory_mb": 64, "cpu_shares": 512}, "attributes": {"app": "web"}}
        job = parse_job(body, "web-1")
        out = job.to_dict()
        self.assertEqual(out["config"]["ports"], [
            {"port": 0, "proto": "udp", "container_port": None},
            {"port": 8080, "proto": "tcp", "container_port": 80}])
        self.assertEqual(out["resources"], {"memory_mb": 64, "cpu_shares": 512})
        self.assertTrue(job.same_spec(types.job_from_dict(out)))

    def test_defaults(self):
        job = parse_job(spec(), "j1")
        self.assertEqual(job.resources, types.Resources(0, 0))
        self.assertIsNone(job.config.cmd)
        self.assertEqual(job.config.ports, ())

    def test_network_and_volumes(self):
        job = parse_job(spec(network="host", volumes=[{"name": "h1-etcd", "target": "/data"}]),
                        "j1")
        out = job.to_dict()
        self.assertEqual((out["config"]["network"], out["config"]["volumes"]),
                         ("host", [{"name": "h1-etcd", "target": "/data"}]))
        self.assertTrue(job.same_spec(types.job_from_dict(out)))
        # a job that sets neither has the shape (and the spec digest) it always had
        plain = parse_job(spec(network="bridge", volumes=[]), "j1").to_dict()["config"]
        self.assertNotIn("network", plain)
        self.assertNotIn("volumes", plain)
        self.assertEqual(parse_job(spec(), "j1").spec_digest(),
                         parse_job(spec(network="bridge"), "j1").spec_digest())

    def test_env_order_does_not_change_the_spec(self):
        a = parse_job(spec(env={"A": "1", "B": "2"}), "j")
        b = parse_job(spec(env={"B": "2", "A": "1"}), "j")
        self.assertTrue(a.same_spec(b))
        self.assertFalse(a.same_spec(parse_job(spec(env={"A": "1"}), "j")))

    def test_bad_specs_name_the_field(self):
        cases = [
            ([], "job: must be an object"),
            ({}, "job.config: required"),
            ({"config": {}}, "job.config.image: required"),
            (spec(image=""), "job.config.image"),
            (spec(image=5), "job.config.image"),
            (spec(cmd="echo hi"), "job.config.cmd: must be a list of strings"),
            (spec(cmd=["echo", 1]), "job.config.cmd"),
            (spec(entrypoint=[None]), "job.config.entrypoint"),
            (spec(env={"K": 1}), "job.config.env.K: must be a string"),
            (spec(env={"A=B": "x"}), "job.config.env.A=B: invalid name"),
            (spec(env=["K=V"]), "job.config.env"),
            (spec(tty="yes"), "job.config.tty"),
            (spec(ports=[{"port": 70000}]), "job.config.ports[0].port: must be an integer from 0"),
            (spec(ports=[{"port": -1}]), "job.config.ports[0].port"),
            (spec(ports=[{"port": "80"}]), "job.config.ports[0].port"),
            (spec(ports=[{"port": 80, "proto": "sctp"}]), "job.config.ports[0].proto"),
            (spec(ports=[{"port": 80}, {"port": 80}]), "the same port is asked for twice"),
            (spec(ports={"port": 80}), "job.config.ports: must be a list"),
            (spec(ports=[{"port": 1, "bogus": 1}]), "job.config.ports[0]: unknown field(s) bogus"),
            (dict(spec(), resources={"memory_mb": "64"}), "job.resources.memory_mb"),
            (dict(spec(), resources={"memory_mb": -1}), "job.resources.memory_mb"),
            (dict(spec(), resources={"memory_mb": 3}), "at least 6"),
            (dict(spec(), resources={"memory_mb": True}), "job.resources.memory_mb"),
            (dict(spec(), resources={"memory_mb": 1.5}), "job.resources.memory_mb"),
            (dict(spec(), resources={"cpu_shares": 1}), "job.resources.cpu_shares"),
            (dict(spec(), resources={"memroy_mb": 64}), "unknown field(s) memroy_mb"),
            (dict(spec(), attributes={"a": 1}), "job.attributes.a"),
            (dict(spec(), colour="red", size=1), "job: unknown field(s) colour, size"),
            (spec(image="busybox", imgae="x"), "job.config: unknown field(s) imgae"),
            (spec(network="overlay"), "job.config.network: must be one of bridge, host"),
            (spec(network="host", ports=[{"port": 80}]), "job.config.ports: a job on the host"),
            (spec(volumes={"name": "v"}), "job.config.volumes: must be a list"),
            (spec(volumes=[{"name": "/etc", "target": "/x"}]), "job.config.volumes[0].name"),
            (spec(volumes=[{"name": "v", "target": "data"}]), "job.config.volumes[0].target"),
            (spec(volumes=[{"name": "v", "target": "/a:ro"}]), "job.config.volumes[0].target"),
            (spec(volumes=[{"name": "v", "target": "/a", "mode": "ro"}]),
             "job.config.volumes[0]: unknown field(s) mode"),
            (spec(volumes=[{"name": "v", "target": "/a"}, {"name": "w", "target": "/a"}]),
             "two volumes are mounted at the same target"),
        ]
        for body, fragment in cases:
            with self.subTest(body=body):
                self.assertInvalid(body, fragment)

    def test_ids(self):
        self.assertInvalid(dict(spec(), id="other"), "does not match the id in the URL")
        self.assertInvalid(dict(spec(), id="a b"), "job.id")
        self.assertInvalid(spec(), "job.id: required", job_id=None)
        self.assertEqual(parse_job(dict(spec(), id="x.1_2-3"), None).id, "x.1_2-3")
        for bad in ("a/b", "a b", "x" * 129, "", ".", "..", "é"):
            self.assertIsNotNone(types.id_problem(bad), bad)
        self.assertIsNone(types.id_problem("x" * 128))
