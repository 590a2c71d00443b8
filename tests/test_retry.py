"""The one retry helper: pauses that grow with jitter, a log of the first failure and the
recovery."""
import logging
import unittest

from host.retry import Backoff


class BackoffTest(unittest.TestCase):
    def setUp(self):
        self.pauses = []
        self.backoff = Backoff("etcd watch", logging.getLogger("test.retry"), min_s=0.2,
                               max_s=2.0, sleep=self.pauses.append)

    def test_pauses_grow_with_jitter_up_to_the_bound(self):
        for _ in range(30):
            self.backoff.failed(RuntimeError("down"))
        bounds = [min(0.2 * 2 ** n, 2.0) for n in range(30)]
        for pause, bound in zip(self.pauses, bounds):
            self.assertGreaterEqual(pause, 0.1)
            self.assertLessEqual(pause, bound)
        self.assertGreater(len(set(self.pauses)), 10)  # jittered, not one fixed pause
        self.assertGreater(max(self.pauses[-10:]), 0.4)  # it did grow past the first bound

    def test_logs_the_first_failure_and_the_recovery_not_every_try(self):
        with self.assertLogs("test.retry", "DEBUG") as logged:
            for _ in range(5):
                self.backoff.failed(RuntimeError("etcd answered error 300"))
            self.backoff.succeeded()
            self.backoff.succeeded()
        above_debug = [r for r in logged.records if r.levelno > logging.DEBUG]
        self.assertEqual([r.levelname for r in above_debug], ["WARNING", "INFO"])
        self.assertIn("etcd watch: etcd answered error 300", above_debug[0].getMessage())
        self.assertIn("recovered after 5 failed attempt(s)", above_debug[1].getMessage())

    def test_a_success_starts_the_pauses_over(self):
        for _ in range(6):
            self.backoff.failed(RuntimeError("down"))
        self.backoff.succeeded()
        self.assertFalse(self.backoff.failing)
        self.backoff.failed(RuntimeError("down again"))
        self.assertLessEqual(self.pauses[-1], 0.2)

    def test_no_sleep_when_asked(self):
        pause = self.backoff.failed(RuntimeError("down"), sleep=False)
        self.assertEqual(self.pauses, [])
        self.assertGreater(pause, 0)

    def test_retry_until_it_succeeds_or_the_time_is_up(self):
        answers = iter([ValueError("no"), ValueError("no"), "done"])

        def call():
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return answer
        self.assertEqual(self.backoff.retry(call, (ValueError,)), "done")
        self.assertEqual((len(self.pauses), self.backoff.failures), (2, 0))
        now = [0.0]

        def failing():
            now[0] += 1.0
            raise ValueError("still no")
        with self.assertRaises(ValueError):
            self.backoff.retry(failing, (ValueError,), within_s=5, clock=lambda: now[0])
        self.assertEqual(now[0], 6.0)  # tried until past the deadline (5), then raised
        with self.assertRaises(KeyError):  # what is not retried propagates at once
            self.backoff.retry(lambda: {}["x"], (ValueError,))
