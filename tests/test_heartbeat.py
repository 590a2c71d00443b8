"""The heartbeat rewrites a large record less often: every agent of the cluster parses each
rewrite, so a host publishes at most publish_bytes_per_s of its record (between
min_publish_interval_s and max_publish_interval_s apart), and still publishes every change."""
import time
import unittest

import gevent

from host.discovery.etcd import Registration
from host.discovery.heartbeat import Heartbeat
from tests.support import wait_until


class RecordingDiscovery:
    def __init__(self):
        self.writes = []             # (monotonic time, value)

    def register(self, host_id, value, ttl_s):
        self.writes.append((time.monotonic(), value))
        return Registration(host_id, value, 1, 1)

    def publish(self, host_id, value, ttl_s, prev_index):
        self.writes.append((time.monotonic(), value))
        return prev_index + 1

    def refresh(self, host_id, ttl_s, prev_index):
        return prev_index + 1


class PublishIntervalTest(unittest.TestCase):
    def beating(self, size: int):
        discovery = RecordingDiscovery()
        state = {"n": 0}
        heartbeat = Heartbeat(discovery, "h", 30, lambda: {"n": state["n"], "pad": "x" * size},
                              "state-1")
        greenlet = gevent.spawn(heartbeat.run)
        self.addCleanup(greenlet.kill)
        wait_until(lambda: discovery.writes, 5, "the registration")
        return discovery, heartbeat, state

    def changes(self, heartbeat, state, count: int, every_s: float):
        for _ in range(count):
            state["n"] += 1
            heartbeat.mark_changed()
            gevent.sleep(every_s)

    def test_a_large_record_is_rewritten_at_most_its_bytes_per_second(self):
        discovery, heartbeat, state = self.beating(50_000)   # 0.5 s at 100 KB/s
        self.assertAlmostEqual(heartbeat.publish_interval_s, 0.5, delta=0.01)
        self.changes(heartbeat, state, 30, 0.05)             # 1.5 s of changes
        wait_until(lambda: f'"n": {state["n"]},' in discovery.writes[-1][1], 5,
                   "the last change published")
        gaps = [b[0] - a[0] for a, b in zip(discovery.writes[1:], discovery.writes[2:])]
        self.assertTrue(gaps and min(gaps) >= 0.5 - 0.01, gaps)
        self.assertLessEqual(len(discovery.writes), 1 + 5)  # register, then ~1.5 s / 0.5 s

    def test_a_small_record_keeps_the_minimum_and_a_huge_one_the_maximum(self):
        discovery, heartbeat, state = self.beating(100)
        self.assertEqual(heartbeat.publish_interval_s, heartbeat.min_publish_interval_s)
        self.changes(heartbeat, state, 10, 0.03)
        wait_until(lambda: f'"n": {state["n"]},' in discovery.writes[-1][1], 5,
                   "the last change published")
        gaps = [b[0] - a[0] for a, b in zip(discovery.writes[1:], discovery.writes[2:])]
        self.assertTrue(gaps and min(gaps) >= heartbeat.min_publish_interval_s - 0.01, gaps)
        heartbeat._last_size = 10_000_000
        self.assertEqual(heartbeat.publish_interval_s, heartbeat.max_publish_interval_s)


if __name__ == "__main__":
    unittest.main()
