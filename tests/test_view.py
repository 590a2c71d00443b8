"""The cluster view's shortcuts give what the plain way gives: records parsed with the job
summaries of the previous one, the leader found without looking at every host, a directory read
decoded node by node, and etcd's stream of changes followed (from its history, and live)."""
import dataclasses
import gc
import os
import random
import time
import unittest
from unittest import mock

import etcd
import gevent
import gevent.event
import simplejson
from hypothesis import given, settings
from hypothesis import strategies as st

from host.cluster import registered as registered_module
from host.cluster import view as view_module
from host.cluster.view import ClusterView, RegisteredHost
from host.discovery import etcd as etcd_module
from host.discovery.etcd import EtcdDiscovery, HostChange, IndexCleared, Registration
from host.types import HostRecord, JobSummary
from tests.support import wait_until


def job(n: int, status: str = "running", **extra) -> dict:
    return dict({"id": f"j{n}", "status": status, "image": "busybox", "spec_digest": f"{n:08x}",
                 "ports": [{"port": 50000 + n, "container_port": 80, "proto": "tcp"}],
                 "resources": {"memory_mb": 64, "cpu_shares": 100}, "exit_status": None,
                 "error": None, "created_at": "2026-01-01T00:00:00.000000Z",
                 "started_at": None, "ended_at": None, "command": f"sleep {n}"}, **extra)


def record(host_id: str, jobs: list, **extra) -> dict:
    return dict({"id": host_id, "addr": "127.0.0.1:1", "jobs": jobs,
                 "resources": {"memory_mb": 1000, "cpu_shares": 1000},
                 "allocated": {"memory_mb": 0, "cpu_shares": 0}, "attributes": {}}, **extra)


class RegisteredHostReadTest(unittest.TestCase):
    """RegisteredHost.read takes out of a record what the view needs at every heartbeat, and
    refuses what HostRecord.from_dict refuses, so that the record it builds later, when asked,
    is what from_dict gives and cannot fail."""

    VALUES = st.one_of(st.none(), st.integers(-2, 2), st.text(max_size=3), st.booleans(),
                       st.just([]), st.just({"memory_mb": 64, "cpu_shares": 100}),
                       st.just({"memory_mb": 64}), st.just({"gpus": 1}), st.just(["tcp"]),
                       st.just([{"port": 50001, "container_port": 80, "proto": "tcp"}]),
                       st.just([{"port": 50001, "proto": "tcp"}]), st.just([["x"]]))
    JOB = st.builds(lambda n, changed, dropped: {k: v for k, v in dict(job(n), **changed).items()
                                                  if k not in dropped},
                    st.integers(0, 3),
                    st.dictionaries(st.sampled_from(sorted(job(0)) + ["extra"]), VALUES,
                                    max_size=2),
                    st.lists(st.sampled_from(sorted(job(0))), max_size=1))

    @settings(max_examples=1500, deadline=None)
    @given(st.lists(st.one_of(JOB, JOB, JOB, VALUES), max_size=4),
           st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["running", "done"])),
                    max_size=3))
    def test_as_from_dict_reads(self, jobs, before_jobs):
        d = record("h", jobs)
        before = RegisteredHost("h", 1, 1, HostRecord.from_dict(
            record("h", [job(n, status) for n, status in before_jobs])))
        try:
            expected = HostRecord.from_dict(d)
        except (TypeError, ValueError, KeyError):
            expected = None
        changed = []
        try:
            host = RegisteredHost.read("h", 1, 2, simplejson.dumps(d), before, changed)
        except (TypeError, ValueError, KeyError):
            host = None
        if expected is None or host is None:
            # (from_dict takes an id or a status of any type: read() refuses all but strings)
            stricter = any(isinstance(j, dict) and not (isinstance(j.get("id"), str) and
                                                        isinstance(j.get("status"), str))
                           for j in jobs)
            self.assertTrue(host is None and (expected is None or stricter), (d, expected))
            return
        self.assertEqual(host.record, expected)
        self.assertEqual(host.jobs, {j.id: j.status for j in expected.jobs})
        self.assertEqual(host.header, dataclasses.replace(expected, jobs=()))
        self.assertEqual(host.active_ports, {f"{p.port}/{p.proto}" for j in expected.jobs
                                             if j.is_active for p in j.ports})
        self.assertEqual(host.active_jobs, sum(1 for j in expected.jobs if j.is_active))
        built = RegisteredHost("h", 1, 2, expected)  # (from a record parsed: the same)
        self.assertEqual((built.jobs, built.active_jobs, built.active_ports),
                         (host.jobs, host.active_jobs, host.active_ports))
        self.assertEqual(changed, [j.to_dict() for j in expected.jobs
                                   if before.jobs.get(j.id) != j.status])

    def test_what_from_dict_refuses_is_refused_alike(self):
        for bad in (record("bad id!", []), "a string", [1, 2], record("h", 5),
                    record("h", [job(0), "not a job"]), record("h", [{"status": "running"}])):
            with self.assertRaises((TypeError, ValueError, KeyError)):
                HostRecord.from_dict(bad)
            with self.assertRaises((TypeError, ValueError, KeyError)):
                RegisteredHost.read("h", 1, 1, simplejson.dumps(bad))

    def test_the_record_is_built_when_asked_and_once(self):
        value = simplejson.dumps(record("h", [job(n) for n in range(3)]))
        host = RegisteredHost.read("h", 1, 1, value)
        self.assertIsNone(host._record)  # nothing built yet
        self.assertEqual(host.addr, "127.0.0.1:1")
        self.assertEqual(list(host.jobs), ["j0", "j1", "j2"])
        record_once = host.record
        self.assertIs(host.record, record_once)
        self.assertIsNone(host._text)  # let go once built
        self.assertEqual(host.job("j1"), JobSummary.from_dict(job(1)))
        self.assertIsNone(host.job("j9"))

    def test_the_same_text_again_is_not_decoded_again(self):
        value = simplejson.dumps(record("h", [job(0), job(1, "done")]))
        before = RegisteredHost.read("h", 3, 10, value)
        decoded = []
        loads = registered_module.simplejson.loads
        with mock.patch.object(registered_module.simplejson, "loads",
                               lambda text: decoded.append(text) or loads(text)):
            changed = []
            again = RegisteredHost.read("h", 3, 12, value, before, changed)  # written again
            self.assertEqual(decoded, [])
            self.assertEqual((again.modified_index, again.jobs, again.active_ports,
                              again.header, changed),
                             (12, before.jobs, before.active_ports, before.header, []))
            self.assertEqual(before.modified_index, 10)  # (a copy: the mirror's is unchanged)
            # registered anew (another created index), or another text: decoded
            RegisteredHost.read("h", 4, 13, value, before, [])
            RegisteredHost.read("h", 3, 14, value.replace('"done"', '"running"'), before,
                                changed)
            self.assertEqual(len(decoded), 2)
            self.assertEqual([j["id"] for j in changed], ["j1"])
        self.assertEqual(again.record, before.record)


class FindJobsTest(unittest.TestCase):
    def test_the_jobs_asked_for_that_a_host_reports_from_the_first_that_does(self):
        view = ClusterView(None, "observer")
        for host_id, jobs in (("h1", [job(1), job(2, "done")]), ("h2", [job(2), job(3)])):
            view.hosts[host_id] = RegisteredHost.read(host_id, 1, 1,
                                                      simplejson.dumps(record(host_id, jobs)))
        found = view.find_jobs(["j2", "j3", "j9"])
        self.assertEqual({job_id: host_id for job_id, (host_id, _) in found.items()},
                         {"j2": "h1", "j3": "h2"})
        self.assertEqual(found["j2"][1], JobSummary.from_dict(job(2, "done")))
        self.assertEqual(view.find_jobs([]), {})


class Stub:
    """Discovery for a view fed by hand."""

    def __init__(self, registrations=()):
        self.registrations = list(registrations)

    def read_hosts(self):
        return 100, iter(self.registrations)


def registration(host_id: str, created: int, modified: int) -> Registration:
    return Registration(host_id, simplejson.dumps(record(host_id, [])), created, modified)


class ElectionTest(unittest.TestCase):
    def test_the_leader_after_each_change_is_the_oldest_host(self):
        rng = random.Random(12)
        view = ClusterView(Stub(), "observer")
        view._resync()
        created, index = {}, 100
        for _ in range(3000):
            index += 1
            host_id = f"h{rng.randrange(12)}"
            if rng.random() < 0.3:
                created.pop(host_id, None)
                change = HostChange("remove", Registration(host_id, None, None, index))
            else:  # a heartbeat keeps the createdIndex, registering anew takes a new one
                if host_id not in created or rng.random() < 0.2:
                    created[host_id] = index
                change = HostChange("put", registration(host_id, created[host_id], index))
            view._apply(change, index)
            oldest = min(created, key=created.get) if created else None
            self.assertEqual(view.leader_id, oldest)


class FakeResponse:
    """An answer read in pieces of the given size, as urllib3's read(amt) gives them."""

    def __init__(self, text: str, piece: int):
        self.data, self.piece = text.encode(), piece

    def read(self, amt):
        chunk, self.data = self.data[:min(amt, self.piece)], self.data[min(amt, self.piece):]
        return chunk


class DirectoryReadTest(unittest.TestCase):
    def answer(self, nodes=None, **node) -> str:
        node = dict({"key": "/d", "dir": True}, **node)
        if nodes is not None:
            node["nodes"] = nodes
        return simplejson.dumps({"action": "get", "node": node}, separators=(",", ":"))

    def leaves(self, text: str, piece: int = 1 << 20) -> list:
        return list(etcd_module._dir_leaves(etcd_module._Text(FakeResponse(text, piece))))

    def python_etcd_leaves(self, text: str) -> list:
        result = etcd.EtcdResult(**simplejson.loads(text))
        return [{k: getattr(n, k) for k in ("key", "value", "dir")} for n in result.leaves]

    def test_nodes_decoded_one_by_one_as_python_etcd_finds_them(self):
        nodes = [{"key": f"/d/h{n}", "value": simplejson.dumps(record(f"h{n}", [job(1)])),
                  "modifiedIndex": 10 + n, "createdIndex": n} for n in range(40)]
        nodes.append({"key": "/d/sub", "dir": True, "nodes": [
            {"key": "/d/sub/x", "value": "1", "modifiedIndex": 5, "createdIndex": 5}]})
        nodes.append({"key": "/d/empty", "dir": True, "modifiedIndex": 6, "createdIndex": 6})
        text = self.answer(nodes, modifiedIndex=1, createdIndex=1)
        expected = self.python_etcd_leaves(text)
        for piece in (7, 1000, 1 << 20):  # answers that come in pieces, cut anywhere
            got = [{k: n.get(k, None if k == "value" else False) for k in ("key", "value", "dir")}
                   for n in self.leaves(text, piece)]
            self.assertEqual(got, expected)

    def test_empty_directory_and_other_shapes(self):
        self.assertEqual(self.leaves(self.answer(modifiedIndex=1, createdIndex=1)),
                         [{"key": "/d", "dir": True, "modifiedIndex": 1, "createdIndex": 1}])
        spaced = simplejson.dumps({"action": "get", "node": {"key": "/d", "dir": True, "nodes": [
            {"key": "/d/a", "value": "1"}]}}, indent=2)
        self.assertEqual([n["key"] for n in self.leaves(spaced)], ["/d/a"])

    def test_an_answer_cut_short_is_an_error(self):
        text = self.answer([{"key": "/d/a", "value": "x" * 100}, {"key": "/d/b", "value": "y"}])
        with self.assertRaises(ValueError):
            self.leaves(text[:len(text) // 2], 10)


class WatchEventTest(unittest.TestCase):
    def test_the_node_alone_is_decoded(self):
        for event in ({"action": "set", "node": {"key": "/a", "value": '{"x": "\\"}"}'},
                       "prevNode": {"key": "/a", "value": "old"}},
                      {"action": "expire", "node": {"key": "/a", "modifiedIndex": 3},
                       "prevNode": {"key": "/a", "value": "old"}}):
            line = simplejson.dumps(event, separators=(",", ":"))
            self.assertEqual(etcd_module._watch_event(line), (event["action"], event["node"]))
            spaced = simplejson.dumps(event)
            self.assertEqual(etcd_module._watch_event(spaced), (event["action"], event["node"]))


class FoldTest(unittest.TestCase):
    def test_changes_queued_during_the_read_are_folded_into_it(self):
        read = [registration(f"h{n}", n + 1, 50 + n) for n in range(3)]  # read at index 100
        with_job = Registration("h1", simplejson.dumps(record("h1", [job(1)])), 2, 101)
        queued = [HostChange("put", registration("h0", 1, 90)),  # in the read already
                  HostChange("put", with_job),
                  HostChange("put", Registration("h1", "not JSON", 2, 102)),  # ignored
                  HostChange("remove", Registration("h2", None, None, 103)),
                  HostChange("put", Registration("h3", "not JSON", 104, 104)),  # ignored
                  HostChange("put", registration("h8", 105, 105)),
                  HostChange("remove", Registration("h8", None, None, 106)),
                  HostChange("remove", Registration("h9", None, None, 107)),
                  HostChange("put", registration("h9", 108, 108))]
        view = ClusterView(Stub(read), "observer")
        index = view._resync(FakeFeed(queued))
        self.assertEqual(index, 108)
        self.assertEqual(sorted(view.hosts), ["h0", "h1", "h9"])
        self.assertEqual(view.hosts["h0"].modified_index, 50)
        self.assertEqual([j.id for j in view.hosts["h1"].record.jobs], ["j1"])
        # no events of their own: as for the read, what came before is unknown
        self.assertEqual(view.events.last_cursor, 108 * view_module.CURSOR_SCALE)
        self.assertEqual(view.leader_id, "h0")

    def test_each_host_is_parsed_once_for_its_newest_record(self):
        read = [registration(f"h{n}", n + 1, 50 + n) for n in range(4)]
        queued = [HostChange("put", Registration("h1", simplejson.dumps(record("h1", [job(n)])),
                                                 2, 101 + n)) for n in range(3)] + \
            [HostChange("remove", Registration("h2", None, None, 110))]
        view = ClusterView(Stub(read), "observer")
        parsed = []
        parse = view._parse
        view._parse = lambda registration, *args: \
            parsed.append(registration.modified_index) or parse(registration, *args)
        view._resync(FakeFeed(queued))
        # h0, h3 as read, h1's newest record alone, h2 not at all (removed meanwhile)
        self.assertEqual(sorted(parsed), [50, 53, 103])
        self.assertEqual([j.id for j in view.hosts["h1"].record.jobs], ["j2"])
        self.assertEqual(sorted(view.hosts), ["h0", "h1", "h3"])

    def test_changes_during_the_parse_are_folded_in_as_it_goes(self):
        read = [registration(f"h{n}", n + 1, 50 + n) for n in range(4)]

        class Trickle:  # each look at the queue finds one more change
            def __init__(self, changes):
                self.changes = changes

            def queued(self):
                if self.changes:
                    yield self.changes.pop(0)
        view = ClusterView(Stub(read), "observer")
        view.fold_every = 1
        parsed, parse = [], view._parse
        view._parse = lambda registration, *args: \
            parsed.append((registration.host_id, registration.modified_index)) or \
            parse(registration, *args)
        # the hosts are parsed newest first: news of h0 before any parse (so h0 is the
        # newest), then news of h0 again once it is parsed, then of h1 (not parsed yet)
        index = view._resync(Trickle([
            HostChange("put", registration("h0", 1, 101)),
            HostChange("put", Registration("h0", simplejson.dumps(record("h0", [job(7)])), 1,
                                           102)),
            HostChange("remove", Registration("h1", None, None, 103))]))
        self.assertEqual(index, 103)
        self.assertEqual(parsed, [("h0", 101), ("h0", 102), ("h3", 53), ("h2", 52)])
        self.assertEqual({h.id: h.modified_index for h in view.hosts.values()},
                         {"h0": 102, "h2": 52, "h3": 53})
        self.assertEqual([j.id for j in view.hosts["h0"].record.jobs], ["j7"])

    def test_the_hosts_that_wrote_last_are_parsed_first(self):
        # (a host writes again a heartbeat after its last write: those parsed first are the
        # least likely to write again before the parse ends)
        read = [registration(f"h{n}", n + 1, index) for n, index in enumerate((52, 50, 53, 51))]
        view = ClusterView(Stub(read), "observer")
        parsed, parse = [], view._parse
        view._parse = lambda registration, *args: \
            parsed.append(registration.modified_index) or parse(registration, *args)
        view._resync(FakeFeed([HostChange("put", registration("h1", 2, 101))]))
        self.assertEqual(parsed, [101, 53, 52, 51])

    def test_what_comes_while_etcd_makes_its_answer_is_parsed_meanwhile(self):
        answer = gevent.event.Event()

        class Slow(Stub):  # etcd answers once its whole answer is made: seconds at 5,000
            def read_hosts(self):
                answer.wait(10)
                return super().read_hosts()  # (at index 100)
        view = ClusterView(Slow([registration(f"h{n}", n + 1, 50 + n) for n in range(3)]),
                           "observer")
        parsed, parse = [], view._parse
        view._parse = lambda registration, *args: \
            parsed.append((registration.host_id, registration.modified_index)) or \
            parse(registration, *args)
        feed = FakeFeed([])
        resync = gevent.spawn(view._resync, feed)
        h1 = [Registration("h1", simplejson.dumps(record("h1", [job(n)])), 2, 101 + n)
              for n in range(2)]
        feed.changes += [HostChange("put", registration("h0", 1, 101)),
                         HostChange("put", h1[0]), HostChange("put", h1[1]),
                         HostChange("put", registration("h2", 3, 45))]  # (older than read)
        wait_until(lambda: len(parsed) == 3, timeout=5, what="the parses meanwhile")
        self.assertFalse(resync.ready())  # still waiting for etcd's answer
        # each host's newest record then, once: h1's first is not parsed
        self.assertEqual(sorted(parsed), [("h0", 101), ("h1", 102), ("h2", 45)])
        answer.set()
        self.assertEqual(resync.get(timeout=5), 102)
        # the answer's h2 is newer than the one parsed meanwhile: that one is parsed
        self.assertEqual(parsed[3:], [("h2", 52)])
        self.assertEqual({h.id: h.modified_index for h in view.hosts.values()},
                         {"h0": 101, "h1": 102, "h2": 52})
        self.assertEqual([j.id for j in view.hosts["h1"].record.jobs], ["j1"])

    def test_a_read_that_fails_fails_the_resync(self):
        class Failing(Stub):
            def read_hosts(self):
                raise etcd_module.EtcdUnavailable("etcd is down")
        view = ClusterView(Failing(), "observer")
        with self.assertRaises(etcd_module.EtcdUnavailable):
            view._resync(FakeFeed([HostChange("put", registration("h0", 1, 101))]))
        self.assertFalse(view.synced.is_set())
        self.assertEqual(view.hosts, {})

    def test_a_second_read_tells_what_changed_without_building_records(self):
        def reg(host_id, jobs, modified):
            return Registration(host_id, simplejson.dumps(record(host_id, jobs)), 1, modified)
        stub = Stub([reg("h0", [job(0), job(1)], 50), reg("h2", [job(2)], 51)])
        view = ClusterView(stub, "observer")
        view._resync()
        stub.registrations = [reg("h0", [job(0, "done"), job(1)], 60), reg("h1", [job(3)], 61)]
        since = view.events.last_cursor
        view._resync()
        told = [(e.type, e.event, e.host_id, e.job_id, e.job and e.job["status"])
                for e in (event for event, _ in view.events.since(since))]
        self.assertEqual(told, [("job", "stop", "h0", "j0", "done"),
                                ("host", "add", "h1", None, None),
                                ("job", "start", "h1", "j3", "running"),
                                ("host", "remove", "h2", None, None),
                                ("job", "error", "h2", "j2", "lost")])
        self.assertEqual([host._record for host in view.hosts.values()], [None, None])

    def test_folded_is_what_applying_one_by_one_gives(self):
        rng = random.Random(7)
        read = [registration(f"h{n}", n + 1, 50 + n) for n in range(6)]
        queued, index = [], 100
        for _ in range(300):
            index += 1
            host_id = f"h{rng.randrange(9)}"
            kind = rng.random()
            value = "garbled" if kind < 0.2 else simplejson.dumps(record(host_id, [
                job(rng.randrange(3), rng.choice(["running", "done"]))]))
            queued.append(HostChange("remove", Registration(host_id, None, None, index))
                          if kind > 0.8 else
                          HostChange("put", Registration(host_id, value, index, index)))
        folded = ClusterView(Stub(read), "folded")
        folded._resync(FakeFeed(queued))
        applied = ClusterView(Stub(read), "applied")
        applied._resync()
        for change in queued:
            applied._apply(change, change.registration.modified_index)
        self.assertEqual(folded.hosts, applied.hosts)
        self.assertEqual(folded.leader_id, applied.leader_id)


class FailingDiscovery(Stub):
    """Registrations read slowly, and a watch that finds etcd's history gone meanwhile."""

    def read_hosts(self):
        def slowly():
            for registration in self.registrations:
                gevent.sleep(0)
                yield registration
        return 100, slowly()

    def follow_hosts(self, after_index, timeout_s, opened=None):
        opened(100)
        gevent.sleep(0.001)
        raise IndexCleared("gone")
        yield


class FailedReadTest(unittest.TestCase):
    def test_a_failed_read_leaves_its_records_to_reference_counting(self):
        discovery = FailingDiscovery(
            Registration(f"h{n}", simplejson.dumps(record(f"h{n}", [job(j) for j in range(20)])),
                         n + 1, n + 1) for n in range(200))
        view = ClusterView(discovery, "observer")
        feed = view_module._Feed(discovery, None, 1)
        feed.started(1)
        with self.assertRaises(IndexCleared):
            view._resync(feed)
        feed.stop()
        # not held in a cycle with the exception (a full collection would have to find them:
        # 20,000 job summaries here, millions at thousands of hosts)
        self.assertLess(gc.collect(), 1000)


class Endless:
    """A watch that brings changes of 1,000 bytes each as fast as they are taken."""

    def __init__(self):
        self.brought = 0

    def follow_hosts(self, after_index, timeout_s, opened=None):
        opened(1)
        while True:
            self.brought += 1
            yield HostChange("put", Registration("h1", "x" * 1000, 1, self.brought + 1))


class FeedBoundTest(unittest.TestCase):
    def test_a_feed_ahead_of_the_view_waits_once_its_records_fill_the_bytes_allowed(self):
        endless = Endless()
        with mock.patch.object(view_module._Feed, "capacity_bytes", 10_000):
            feed = view_module._Feed(endless, None, 1)
            try:
                feed.started(1)
                for _ in range(50):  # (the feed greenlet's turns: it would fill at once)
                    gevent.sleep(0)
                self.assertEqual(feed.queued_bytes, 10_000)
                # the change that did not fit is made and waits: ten queued, not the 10,000
                # the count alone allows
                self.assertEqual(endless.brought, 11)
                taken = [feed.next().registration.modified_index for _ in range(3)]
                self.assertEqual(taken, [2, 3, 4])  # the first, in order
                for _ in range(50):
                    gevent.sleep(0)
                self.assertEqual((endless.brought, feed.queued_bytes), (14, 10_000))
                rest = [c.registration.modified_index for c in feed.queued()]
                self.assertEqual(rest[:10], list(range(5, 15)))  # nothing lost or reordered
            finally:
                feed.stop()


class FakeFeed:
    def __init__(self, changes):
        self.changes = list(changes)

    def queued(self):
        while self.changes:
            yield self.changes.pop(0)


def require_etcd() -> str:
    peers = os.environ.get("FLYNN_HOST_ETCD_ENDPOINTS")
    if not peers:
        raise AssertionError("FLYNN_HOST_ETCD_ENDPOINTS must name the test etcd; run the suite "
                             "with bin/test, which starts one")
    return peers


class EtcdStreamTest(unittest.TestCase):
    def setUp(self):
        self.discovery = EtcdDiscovery(require_etcd(), f"/flynn-test/view-{os.getpid()}")
        self.client = self.discovery._client

    def tearDown(self):
        self.client.delete(self.discovery.prefix, recursive=True)

    def write(self, n: int) -> int:
        """A change (a put, now and then a delete), after a TTL refresh now and then (which
        moves etcd's index and sends no change); the change's index."""
        key = f"{self.discovery.services_dir}/h{n % 5}"
        try:
            if n % 7 == 6:
                self.client.refresh(key, 60)
            if n % 11 == 10:
                return self.client.delete(key).modifiedIndex
        except etcd.EtcdKeyNotFound:
            pass
        return self.client.write(key, simplejson.dumps(record(f"h{n % 5}", [])),
                                 ttl=60).modifiedIndex

    def test_every_change_in_order_from_history_then_live(self):
        start = self.discovery.current_index()
        written = [self.write(n) for n in range(30)]  # before: from etcd's history

        def more():
            for n in range(30, 200):
                written.append(self.write(n))
                gevent.sleep(0.002)
        writer = gevent.spawn(more)
        seen, index, deadline = [], start, time.monotonic() + 30
        while (not writer.dead or index < written[-1]) and time.monotonic() < deadline:
            for change in self.discovery.follow_hosts(index, 1):
                seen.append(change.registration.modified_index)
                index = change.registration.modified_index
        writer.get()
        self.assertEqual(seen, written)

    def test_a_watch_from_forgotten_history_is_told(self):
        start = self.discovery.current_index()
        for n in range(1005):
            self.client.write(f"{self.discovery.prefix}/noise", str(n))
        with self.assertRaises(IndexCleared):
            list(self.discovery.follow_hosts(start, 2))

    def test_a_view_reading_while_hosts_change_ends_as_a_fresh_read(self):
        for n in range(20):
            self.write(n)
        view = ClusterView(self.discovery, "observer")
        follower = gevent.spawn(view.run)
        try:
            for n in range(20, 150):
                self.write(n)
                gevent.sleep(0.001)
            wait_until(lambda: self.mirrored(view), 10, "the view matching a fresh read")
        finally:
            follower.kill()

    def feed_from_history(self, noise_per_request: int) -> tuple:
        """A _Feed from before 40 changes (in etcd's history: it answers them one a request),
        with `noise_per_request` writes elsewhere before each of its requests (moving etcd's
        index ahead, as heartbeats coming faster than the requests would); (feed, written)."""
        start = self.discovery.current_index()
        written = [self.write(n) for n in range(40)]
        discovery, client, noise = self.discovery, self.client, f"{self.discovery.prefix}/noise"

        class Noisy:
            def follow_hosts(self, after_index, timeout_s, opened=None):
                for n in range(noise_per_request):
                    client.write(noise, str(n))
                yield from discovery.follow_hosts(after_index, timeout_s, opened)
        return view_module._Feed(Noisy(), start, 1), written

    def test_a_feed_losing_ground_in_etcds_history_gives_up_at_once(self):
        feed, written = self.feed_from_history(noise_per_request=10)
        try:
            seen = []
            with self.assertRaises(IndexCleared) as caught, gevent.Timeout(20):
                while True:  # (without giving up: the 40 changes, then waiting for more)
                    seen.append(feed.next().registration.modified_index)
            self.assertIn("losing ground", str(caught.exception))
            # given up after about slack / 9 requests, long before etcd forgets the history
            # (its last 1,000 changes: 10 a request would take 90 requests)
            self.assertLess(len(seen), 40)
            self.assertEqual(seen, written[:len(seen)])  # what it took was right, in order
        finally:
            feed.stop()

    def test_a_feed_gaining_ground_in_etcds_history_goes_on(self):
        feed, written = self.feed_from_history(noise_per_request=0)
        try:
            seen = [feed.next().registration.modified_index for _ in written]
            self.assertEqual(seen, written)
            live = self.write(41)
            self.assertEqual(feed.next().registration.modified_index, live)
        finally:
            feed.stop()

    def mirrored(self, view) -> bool:
        _, registrations = self.discovery.list_hosts()
        return {h.id: h.modified_index for h in view.hosts.values()} == \
            {r.host_id: r.modified_index for r in registrations}


if __name__ == "__main__":
    unittest.main()
