"""The long-poll fast lane's shortcuts answer exactly as the general code they replace: its query
parser as parse_qs, its control-character check as the character-by-character one, the cached
Host verdicts as a fresh judgement."""
import unittest
from urllib.parse import parse_qs

from hypothesis import given, settings
from hypothesis import strategies as st

from host.api import _query_of
from host.api.browsers import BrowserGuard
from host.api.http import path_problem


def has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


class FastLaneTest(unittest.TestCase):
    @settings(max_examples=500)
    @given(st.text(alphabet=st.sampled_from("ab=&%+;2F0x é") | st.characters()))
    def test_query_parser_is_parse_qs(self, text):
        expected = {n: v[-1] for n, v in parse_qs(text, keep_blank_values=True).items()}
        self.assertEqual(_query_of(text), expected)

    @settings(max_examples=500)
    @given(st.text())
    def test_control_characters_are_found_as_before(self, text):
        path = "/host/jobs/" + text
        environ = {"RAW_URI": "/host/jobs/x", "PATH_INFO": path.encode("utf-8").decode("latin-1")}
        self.assertEqual(path_problem(environ).startswith("path: a control"), has_control(path))

    def test_cached_host_verdicts_are_the_same_verdicts(self):
        guard = BrowserGuard(allowed_hosts=("agent.example",))
        hosts = ["127.0.0.1:1113", "[::1]:1113", "localhost", "AGENT.example:1113",
                 "evil.example", "evil.example:1113", ""]
        first = [guard.host_allowed(h) for h in hosts]
        self.assertEqual(first, [True, True, True, True, False, False, True])
        self.assertEqual([guard.host_allowed(h) for h in hosts], first)
        for n in range(1000):  # many names: the cache stays bounded, the answers right
            self.assertFalse(guard.host_allowed(f"rebound{n}.example"))
        self.assertLessEqual(len(guard._verdicts), 256)


if __name__ == "__main__":
    unittest.main()
