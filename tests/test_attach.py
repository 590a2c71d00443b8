"""Attach over WebSocket against the real engine: stdin in, stdout and stderr apart, signals, the
exit status; attached before start so nothing is lost."""
import gevent
import simplejson

from host import errors
from host.client import HostClient
from tests.support import DockerAgentTestCase, job_body, raw_attach


class AttachTest(DockerAgentTestCase):
    def collect(self, attachment, timeout_s=30):
        out = {"stdout": b"", "stderr": b""}
        with gevent.Timeout(timeout_s):
            while True:
                kind, payload = attachment.receive()
                if kind in out:
                    out[kind] += payload
                else:
                    return out, kind, payload

    def test_stdin_in_streams_apart_exit_status_out(self):
        host = HostClient(self.client.url)
        attachment = host.attach("att-cat")  # before the job exists
        body = job_body(["sh", "-c", "cat; echo bye >&2; exit 5"])
        body["config"]["stdin"] = True
        self.client.put_job("att-cat", body)
        attachment.send(b"hello\n")
        attachment.close_stdin()
        out, kind, message = self.collect(attachment)
        self.assertEqual((out["stdout"], out["stderr"]), (b"hello\n", b"bye\n"))
        self.assertEqual((kind, message["status"]), ("exit", 5))
        self.assertEqual(self.client.job("att-cat")["status"], "crashed")

    def test_attach_before_start_loses_nothing_of_a_fast_job(self):
        attachment = HostClient(self.client.url).attach("att-fast")
        self.client.put_job("att-fast", job_body(["echo", "quick"]))
        out, kind, message = self.collect(attachment)
        self.assertEqual((out["stdout"], kind, message["status"]), (b"quick\n", "exit", 0))

    def test_signal_through_the_attach_and_bad_requests(self):
        body = job_body(["sh", "-c", "trap 'echo got-int; exit 0' INT; echo ready; "
                                     "while :; do sleep 0.1; done"])
        attachment = HostClient(self.client.url).attach("att-sig")  # before the job exists
        self.client.put_job("att-sig", body)
        ready = b""
        while ready != b"ready\n":  # the trap is installed
            kind, data = attachment.receive(timeout_s=30)
            self.assertEqual(kind, "stdout")
            ready += data
        attachment.signal("INT")
        out, kind, message = self.collect(attachment)
        self.assertEqual((out["stdout"], kind, message["status"]), (b"got-int\n", "exit", 0))
        plain = self.client.get("/host/jobs/att-sig/attach")
        self.assertEqual((plain.status_code, plain.json()["code"]), (400, "validation_error"))
        with self.assertRaises(errors.ValidationError):
            HostClient(self.client.url).attach("bad id!")  # the upgrade refused with the reason

    def test_attach_to_an_ended_job_gets_its_exit_at_once_and_nothing_after(self):
        self.client.put_job("att-ended", job_body(["sh", "-c", "exit 3"]))
        self.client.wait_status("att-ended", "crashed")
        # The exit and the close come right behind the handshake answer, often in the same
        # read: the client must still see them (it used to wait forever), every time.
        for _ in range(5):
            attachment = HostClient(self.client.url).attach("att-ended")
            self.assertEqual(attachment.receive(timeout_s=10)[1]["status"], 3)
            attachment.close()
        status, frames, trailing = raw_attach(self.client.url, "att-ended")
        self.assertEqual(status, "HTTP/1.1 101 Switching Protocols")
        self.assertEqual([opcode for opcode, _ in frames], [1, 8])  # exit, close
        self.assertEqual(simplejson.loads(frames[0][1])["type"], "exit")
        self.assertEqual(trailing, b"")  # no HTTP response written after the WebSocket
