"""What the CLI prints for people, without an agent: relative times as docker says them, a job's
state with its exit status, --format templates, and the times --since/--until take."""
import unittest

from hypothesis import given
from hypothesis import strategies as st

from host.cli import output
from host.clock import parse_duration, parse_moment

NOW = 1_800_000_000.0  # a fixed "now": 2027-01-15T08:00:00Z


def at(seconds_ago: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(NOW - seconds_ago, timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


class RelativeTimeTest(unittest.TestCase):
    def test_docker_words(self):
        for seconds, words in ((0.2, "Less than a second"), (1, "1 second"), (5, "5 seconds"),
                               (59, "59 seconds"), (61, "About a minute"),
                               (150, "2 minutes"), (3599, "59 minutes"),
                               (3700, "About an hour"), (3 * 3600, "3 hours"),
                               (3 * 86400, "3 days"), (20 * 86400, "2 weeks"),
                               (100 * 86400, "3 months"), (800 * 86400, "2 years")):
            with self.subTest(seconds=seconds):
                self.assertEqual(output.duration(seconds), words)
        self.assertEqual(output.ago(at(150), NOW), "2 minutes ago")
        self.assertEqual(output.ago(at(0.1), NOW), "less than a second ago")
        self.assertEqual(output.ago(None, NOW), "")
        self.assertEqual(output.ago("not a time", NOW), "")

    @given(st.floats(min_value=0, max_value=1e10))
    def test_every_span_has_words(self, seconds):
        words = output.duration(seconds)
        self.assertRegex(words, r"^(Less than a second|About an? \w+|\d+ \w+)$")


class StateTest(unittest.TestCase):
    def test_the_state_column(self):
        cases = (({"status": "running", "started_at": at(130)}, "running for 2 minutes"),
                 ({"status": "crashed", "exit_status": 3, "ended_at": at(5)},
                  "crashed (3) 5 seconds ago"),
                 ({"status": "stopped", "exit_status": 143, "ended_at": at(70)},
                  "stopped (143) about a minute ago"),
                 ({"status": "done", "exit_status": 0, "ended_at": at(3)},
                  "done (0) 3 seconds ago"),
                 ({"status": "failed", "exit_status": None, "ended_at": at(2)},
                  "failed 2 seconds ago"),
                 ({"status": "starting"}, "starting"), ({"status": "lost"}, "lost"))
        for job, text in cases:
            with self.subTest(job=job):
                self.assertEqual(output.state_text(job, NOW), text)

    def test_command_line(self):
        self.assertEqual(output.command_of({"entrypoint": ["/bin/sh"], "cmd": ["-c", "echo hi"]}),
                         "/bin/sh -c 'echo hi'")
        self.assertEqual(output.command_of({"cmd": None}), "")


class FormatTest(unittest.TestCase):
    names = {"ID": "id", "Status": "status", "Ports": "ports", "ExitStatus": "exit_status"}
    row = {"id": "web-1", "status": "running", "exit_status": None,
           "ports": [{"port": 49152, "container_port": 80, "proto": "tcp"}]}

    def test_fields_json_and_escapes(self):
        self.assertEqual(output.render("{{.ID}}\\t{{ .status }}", self.row, self.names),
                         "web-1\trunning")
        self.assertEqual(output.render("{{.Ports}}|{{.ExitStatus}}", self.row, self.names),
                         "49152->80/tcp|")
        self.assertEqual(output.render("{{json .ExitStatus}}", self.row, self.names), "null")
        self.assertIn('"id": "web-1"', output.render("{{json .}}", self.row, self.names))

    def test_unknown_fields_are_named(self):
        with self.assertRaisesRegex(output.FormatError, "no field 'Nope'; fields: ID, Status"):
            output.check_template("{{.Nope}}", self.names)
        with self.assertRaisesRegex(output.FormatError, "json"):
            output.check_template("{{.}}", self.names)

    def test_control_characters_in_values_are_escaped(self):
        row = dict(self.row, id="web\x1b[2J")
        self.assertEqual(output.render("{{.ID}}", row, self.names), "web\\x1b[2J")


class MomentTest(unittest.TestCase):
    def test_the_forms_docker_takes(self):
        self.assertEqual(parse_duration("1h30m"), 5400)
        self.assertEqual(parse_duration("250ms"), 0.25)
        self.assertEqual(parse_moment("10m", NOW), NOW - 600)
        self.assertEqual(parse_moment("1764583200.5", NOW), 1764583200.5)
        self.assertEqual(parse_moment("2026-12-01T10:00:00Z", NOW), 1796119200.0)
        self.assertEqual(parse_moment("2026-12-01T11:00:00+01:00", NOW), 1796119200.0)
        self.assertEqual(parse_moment("2026-12-01", NOW), 1796083200.0)

    def test_anything_else_names_the_forms(self):
        for text in ("", "soon", "10x", "5m3", "-5", "nan", "inf", "1e300"):
            with self.subTest(text=text):
                with self.assertRaisesRegex(ValueError, "not a time"):
                    parse_moment(text, NOW)


if __name__ == "__main__":
    unittest.main()
