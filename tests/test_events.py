"""The event log: contiguous cursors, the retained window, and long-poll wake-up."""
import time
import unittest
import unittest.mock

import gevent
import simplejson

from host.errors import CursorExpired, ValidationError
from host import events as events_module
from host.events import EventLog
from host.types import Event


def event(cursor, job_id="j"):
    return Event(cursor=cursor, type="job", event="create", host_id="h", job_id=job_id, job=None,
                 time="2026-01-01T00:00:00.000000Z")


class EventLogTest(unittest.TestCase):
    def test_cursors_and_since(self):
        log = EventLog(capacity=5)
        for c in range(1, 4):
            log.append(event(c))
        self.assertEqual([e.cursor for e, _ in log.since(0)], [1, 2, 3])
        self.assertEqual([e.cursor for e, _ in log.since(2)], [3])
        self.assertEqual(log.since(3), [])

    def test_window_expiry(self):
        log = EventLog(capacity=3)
        for c in range(1, 7):
            log.append(event(c))
        self.assertEqual([e.cursor for e, _ in log.since(3)], [4, 5, 6])
        with self.assertRaises(CursorExpired) as caught:
            log.since(2)
        self.assertIn("oldest 4", caught.exception.message)
        self.assertEqual(caught.exception.status, 410)
        # where to resume: the lowest `since` still answered, and the newest cursor
        self.assertEqual(caught.exception.extra, {"earliest": 3, "cursor": 6})

    def test_future_cursor_is_rejected(self):
        log = EventLog(capacity=3)
        log.append(event(1))
        with self.assertRaises(ValidationError):
            log.since(2)

    def test_resumes_after_restart(self):
        log = EventLog(capacity=10, last_cursor=42, backlog=[event(41), event(42)])
        self.assertEqual(log.next_cursor, 43)
        self.assertEqual([e.cursor for e, _ in log.since(40)], [41, 42])
        with self.assertRaises(CursorExpired):
            log.since(39)
        empty = EventLog(capacity=10, last_cursor=42)
        self.assertEqual(empty.since(42), [])
        with self.assertRaises(CursorExpired):
            empty.since(41)

    def test_cursors_only_increase_gaps_allowed(self):
        log = EventLog(capacity=3)
        log.append(event(1))
        with self.assertRaises(ValueError):
            log.append(event(1))
        log.append(event(30))  # cluster cursors come from etcd's index: gaps are normal
        self.assertEqual([e.cursor for e, _ in log.since(1)], [30])
        self.assertEqual([e.cursor for e, _ in log.since(29)], [30])

    def test_restart_at_forgets_history(self):
        log = EventLog(capacity=5)
        log.append(event(1))
        log.restart_at(50)
        self.assertEqual(log.since(50), [])
        with self.assertRaises(CursorExpired):
            log.since(1)
        log.append(event(51))
        self.assertEqual([e.cursor for e, _ in log.since(50)], [51])

    def test_wait_wakes_on_append_not_on_timeout(self):
        log = EventLog(capacity=10)
        gevent.spawn_later(0.05, log.append, event(1))
        started = time.monotonic()
        found, cursor = log.wait(0, timeout=10)
        self.assertEqual([e.cursor for e, _ in found], [1])
        self.assertEqual(cursor, 1)
        self.assertLess(time.monotonic() - started, 5)  # woken by the event, not the 10 s timeout

    def test_wait_times_out_empty_with_same_cursor(self):
        log = EventLog(capacity=10)
        found, cursor = log.wait(0, timeout=0.05)
        self.assertEqual((found, cursor), ([], 0))

    def test_filtered_wait_skips_other_jobs_and_advances_cursor(self):
        log = EventLog(capacity=10)
        gevent.spawn_later(0.02, log.append, event(1, "other"))
        gevent.spawn_later(0.05, log.append, event(2, "mine"))
        found, cursor = log.wait(0, timeout=10, match=lambda e: e.job_id == "mine")
        self.assertEqual([e.job_id for e, _ in found], ["mine"])
        self.assertEqual(cursor, 2)
        found, cursor = log.wait(0, timeout=0, match=lambda e: e.job_id == "none")
        self.assertEqual((found, cursor), ([], 2))

    def test_many_waiters_all_woken(self):
        log = EventLog(capacity=10)
        waiters = [gevent.spawn(log.wait, 0, 10) for _ in range(200)]
        gevent.sleep(0)
        log.append(event(1))
        gevent.joinall(waiters, timeout=5)
        self.assertTrue(all(w.successful() for w in waiters))
        self.assertTrue(all(w.value[1] == 1 and len(w.value[0]) == 1 for w in waiters))

class PendingAndSharedTest(unittest.TestCase):
    """A host's events are held until durable, and one answer is shared by the readers that
    ask from the same cursor."""

    def test_pending_events_are_not_read_until_published(self):
        log = EventLog(capacity=10)
        log.append_pending(event(1))
        log.append_pending(event(2))
        self.assertEqual((log.last_cursor, log.next_cursor, log.pending), (0, 3, 2))
        self.assertEqual(log.since(0), [])
        with self.assertRaises(ValidationError):
            log.check_cursor(1)  # a cursor nobody could have been given
        log.publish(1)
        self.assertEqual([e.cursor for e, _ in log.since(0)], [1])
        log.publish(2)
        self.assertEqual([e.cursor for e, _ in log.since(0)], [1, 2])
        self.assertEqual(log.appended, 2)

    def test_trimming_never_drops_a_pending_event(self):
        log = EventLog(capacity=2)
        for c in range(1, 6):
            log.append_pending(event(c))
        log.publish(1)  # over capacity: the published one may go, the pending ones stay
        log.publish(5)
        self.assertEqual([e.cursor for e, _ in log.since(3)], [4, 5])
        with self.assertRaises(CursorExpired):
            log.since(2)  # and the window is the capacity again

    def test_readers_from_one_cursor_share_one_answer(self):
        from host.api.events import events_response
        from host.api.waiters import Waiters
        log = EventLog(capacity=10)
        waiters = Waiters(100)
        environ = {"REMOTE_ADDR": "127.0.0.1"}
        asks = [gevent.spawn(events_response, log, {"since": "0", "wait": "5"}, environ, waiters)
                for _ in range(3)]
        gevent.sleep(0.01)
        log.append(event(1, "a"))
        log.append(event(2, "b"))
        answers = [a.get(timeout=5)[2] for a in asks]
        self.assertTrue(answers[0] is answers[1] is answers[2])
        self.assertEqual([e["cursor"] for e in simplejson.loads(answers[0])["events"]],
                         [1, 2])
        _, _, filtered = events_response(log, {"since": "0", "job_id": "b"}, environ, waiters)
        self.assertEqual(simplejson.loads(filtered)["events"][0]["job_id"], "b")
        # a new publication: a new answer, not the one shared before it
        log.append(event(3, "a"))
        _, _, after = events_response(log, {"since": "0"}, environ, waiters)
        self.assertEqual(len(simplejson.loads(after)["events"]), 3)


class LazyTextTest(unittest.TestCase):
    """An event's JSON text is made when it is first read, once, and is what encoding it then
    gives, however the log was trimmed meanwhile."""

    def test_text_made_once_on_first_read(self):
        log = EventLog(capacity=100)
        with unittest.mock.patch.object(events_module.simplejson, "dumps",
                                        wraps=simplejson.dumps) as dumps:
            for c in range(1, 11):
                log.append(event(c, job_id=f"j{c}"))
            self.assertEqual(dumps.call_count, 0)  # nobody read them yet
            first = log.since(4)
            self.assertEqual(dumps.call_count, 10)  # those before a reader's cursor too: in
            #                                         order, so that one position tells
            again = log.since(0)
            self.assertEqual(dumps.call_count, 10)
        self.assertEqual([text for _, text in first],
                         [simplejson.dumps(event(c, job_id=f"j{c}").to_dict())
                          for c in range(5, 11)])
        self.assertIs(first[0][1], again[4][1])  # the same text, shared

    def test_trimming_and_restarting_keep_texts_right(self):
        log = EventLog(capacity=8)
        for c in range(1, 40):
            log.append(event(c, job_id=f"j{c}"))
            if c % 5 == 0:
                found = log.since(log.oldest_cursor - 1)
                self.assertEqual([text for _, text in found],
                                 [simplejson.dumps(e.to_dict()) for e, _ in found])
        log.restart_at(1000)
        log.append(event(1001, job_id="after"))
        (only, text), = log.since(1000)
        self.assertEqual(simplejson.loads(text)["job_id"], "after")

    def test_extend_wakes_waiters_once_with_every_event(self):
        log = EventLog(capacity=100)
        answers = []
        waiter = gevent.spawn(lambda: answers.append(log.wait(0, 5)))
        gevent.sleep(0.01)
        log.extend([event(10), event(12), event(13)])
        waiter.join(2)
        found, cursor = answers[0]
        self.assertEqual([e.cursor for e, _ in found], [10, 12, 13])
        self.assertEqual((cursor, log.appended), (13, 3))
        log.extend([])
        self.assertEqual(log.last_cursor, 13)


class WakeBatchingTest(unittest.TestCase):
    """Many waiters are woken once for a burst of publications (a job's `created`, then its
    `failed` one engine call later), not once for each: the waiters answered first would
    otherwise ask again and wait a whole second wave for the second event."""

    def waiters(self, log, count):
        found = [gevent.spawn(log.wait, 0, 10.0) for _ in range(count)]
        gevent.idle()  # every one asleep on the log
        return found

    def test_many_waiters_get_a_burst_in_one_answer(self):
        log = EventLog(capacity=10)
        with unittest.mock.patch("host.events.WAKE_BATCH_S_PER_WAITER", 0.001):  # 64 ms
            waiters = self.waiters(log, events_module.WAKE_BATCH_WAITERS)
            log.append(event(1))
            gevent.sleep(0)  # one turn of the loop: a wake-up at once would answer them now
            self.assertFalse(any(w.ready() for w in waiters))
            log.append(event(2))  # within the batch: no second timer, one wake-up
            gevent.joinall(waiters, timeout=5)
        answers = [([e.cursor for e, _ in w.value[0]], w.value[1]) for w in waiters]
        self.assertEqual(answers, [([1, 2], 2)] * len(waiters))

    def test_few_waiters_are_woken_at_once(self):
        log = EventLog(capacity=10)
        with unittest.mock.patch("host.events.WAKE_BATCH_S_PER_WAITER", 10.0):  # would be hours
            waiters = self.waiters(log, events_module.WAKE_BATCH_WAITERS - 1)
            log.append(event(1))
            gevent.joinall(waiters, timeout=5)
            log.append(event(2))
        self.assertEqual([([e.cursor for e, _ in w.value[0]], w.value[1]) for w in waiters],
                         [([1], 1)] * len(waiters))

    def test_closing_wakes_many_waiters_at_once(self):
        log = EventLog(capacity=10)
        with unittest.mock.patch("host.events.WAKE_BATCH_S_PER_WAITER", 10.0):
            waiters = [gevent.spawn(log.wait, 0, 10.0, None, True)
                       for _ in range(events_module.WAKE_BATCH_WAITERS)]
            gevent.idle()
            log.close()
            gevent.joinall(waiters, timeout=5)
        self.assertEqual([w.value for w in waiters], [([], 0)] * len(waiters))


class StoppingAgentTest(unittest.TestCase):
    """An agent about to stop answers its clients' long-polls and ends their streams, instead of
    leaving them to the server's stop (which cuts a request off with a bare 500 that clients
    do not retry); its own waits are not affected."""

    def test_waits_answer_at_once_and_clients_back_off(self):
        import requests

        from host.runtime.fake import FakeRuntime
        from tests.support import InProcessAgent
        host = InProcessAgent(FakeRuntime())
        try:
            url = host.client.url
            cursor = requests.get(f"{url}/host/events", timeout=5).json()["cursor"]
            poll = gevent.spawn(requests.get, f"{url}/host/events?since={cursor}&wait=30",
                                timeout=35)
            stream = gevent.spawn(lambda: requests.get(f"{url}/host/events?stream=true",
                                                       timeout=35).content)
            gevent.sleep(0.3)
            self.assertFalse(poll.ready() or stream.ready())  # both waiting
            started = time.monotonic()
            host.agent.end_waits()
            answer = poll.get(timeout=5)
            self.assertEqual(stream.get(timeout=5).strip(), b"")  # ended: keep-alives only
            self.assertLess(time.monotonic() - started, 2)
            self.assertEqual((answer.status_code, answer.json()["code"], answer.json()["retry"]),
                             (503, "unavailable", True))
            # the agent's own wait for changes (its heartbeat's) still waits
            found, _ = host.agent.table.events.wait(cursor, 0.2)
            self.assertEqual(found, [])
        finally:
            host.close()
