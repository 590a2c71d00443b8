"""Writes to etcd are form-encoded by host.discovery.etcd.form_encode instead of urllib's
urlencode (a Python loop over every byte of a host record): the bytes must be the same, for any
field, and a real etcd must read back exactly what was written through it."""
import unittest
import urllib.parse

from hypothesis import given, settings
from hypothesis import strategies as st

from host.discovery.etcd import EtcdDiscovery, form_encode
from tests.test_cluster import require_etcd

FIELD = st.one_of(st.text(), st.integers(), st.booleans(),
                  st.text(alphabet="%+ &=\"{}:,[]\\/\n\x00é€😀", max_size=40))


class FormEncodeTest(unittest.TestCase):
    @settings(max_examples=2000, deadline=None)
    @given(st.dictionaries(st.text(), FIELD))
    def test_the_bytes_of_urlencode(self, fields):
        self.assertEqual(form_encode(fields), urllib.parse.urlencode(fields).encode())

    def test_pairs_and_the_characters_that_bring_in_others(self):
        pairs = [("value", "100% + 1 = 2&3"), ("ttl", 3), ("prevExist", "false")]
        self.assertEqual(form_encode(pairs), urllib.parse.urlencode(pairs).encode())
        self.assertEqual(form_encode({"v": "%+ "}), b"v=%25%2B+")


class ThroughEtcdTest(unittest.TestCase):
    def test_a_record_written_reads_back_the_same(self):
        discovery = EtcdDiscovery(require_etcd(), f"/flynn-test/form{id(self)}")
        value = '{"id": "h", "note": "100% + ü & = ? # \\u0000 😀", "jobs": [' + \
            ", ".join(f'{{"id": "j{n}", "status": "running"}}' for n in range(300)) + "]}"
        created = discovery.register("h", value, ttl_s=30)
        try:
            self.assertIsNotNone(created)
            self.assertEqual(discovery.registration("h").value, value)
            index = discovery.publish("h", value + " ", 30, created.modified_index)
            self.assertEqual(discovery.registration("h").value, value + " ")
            self.assertGreater(index, created.modified_index)
        finally:
            discovery.deregister("h", discovery.registration("h").modified_index)


if __name__ == "__main__":
    unittest.main()
