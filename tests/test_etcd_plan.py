"""This host's part in etcd, planned from its settings, against a members API of canned members
(tests/test_layer0.py runs the same against real etcd members)."""
import unittest

from host.discovery.etcd import EtcdUnavailable, Member, parse_peer_urls
from host.layer0 import etcd_plan
from host.layer0.etcd_plan import MemberAddress

ME = MemberAddress("h3", "10.0.0.3", 2379, 2380)


def member(n: int, name=None) -> Member:
    return Member(f"{n:x}", f"h{n}" if name is None else name, (f"http://10.0.0.{n}:2380",),
                  (f"http://10.0.0.{n}:2379",) if name != "" else ())


class FakeMembers:
    def __init__(self, members, reachable=True):
        self.members = list(members)
        self.reachable = reachable
        self.calls = []

    def through_peers(self, peer_urls):
        self.calls.append(("list", tuple(peer_urls)))
        if not self.reachable:
            raise EtcdUnavailable("no etcd peer answered")
        return list(self.members)

    def add(self, members, peer_url):
        self.calls.append(("add", peer_url))
        added = Member("a1", "", (peer_url,), ())
        self.members.append(added)
        return added

    def remove(self, members, member_id):
        self.calls.append(("remove", member_id))
        self.members = [m for m in self.members if m.id != member_id]


def join(api, has_data=False, max_members=3):
    return etcd_plan.plan_join(ME, ("http://10.0.0.1:2380",), max_members, lambda: has_data,
                               api=api)


class EtcdPlanTest(unittest.TestCase):
    def test_peer_addresses_take_the_originals_form(self):
        self.assertEqual(parse_peer_urls("10.0.0.1:2380, 10.0.0.2,https://h:7001"),
                         ("http://10.0.0.1:2380", "http://10.0.0.2:2380", "https://h:7001"))
        for bad in ("", "ftp://x", "10.0.0.1:2380/path", ":2380"):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                parse_peer_urls(bad)

    def test_the_first_host_forms_a_cluster_of_its_own(self):
        plan = etcd_plan.plan_first(ME)
        self.assertTrue(plan.run_member)
        self.assertEqual(plan.endpoints, ("http://10.0.0.3:2379",))
        self.assertEqual(plan.bootstrap, ("--initial-cluster", "h3=http://10.0.0.3:2380",
                                          "--initial-cluster-state", "new"))

    def test_a_new_host_is_added_and_starts_with_the_existing_cluster(self):
        api = FakeMembers([member(1), member(2)])
        plan = join(api)
        self.assertEqual(api.calls, [("list", ("http://10.0.0.1:2380",)),
                                     ("add", "http://10.0.0.3:2380")])
        self.assertTrue(plan.run_member)
        self.assertEqual(plan.bootstrap, (
            "--initial-cluster",
            "h1=http://10.0.0.1:2380,h2=http://10.0.0.2:2380,h3=http://10.0.0.3:2380",
            "--initial-cluster-state", "existing"))
        self.assertEqual(plan.endpoints[0], "http://10.0.0.3:2379")  # its own member first
        self.assertEqual(set(plan.endpoints[1:]), {"http://10.0.0.1:2379",
                                                   "http://10.0.0.2:2379"})
        self.assertIn("joined etcd as member a1 (3 members now)", plan.reason)
        # added as a learner: the cluster keeps its quorum; promoted once it has caught up
        self.assertEqual((plan.member_id, plan.promote), ("a1", True))

    def test_a_full_cluster_takes_no_member_and_is_used_as_it_is(self):
        api = FakeMembers([member(1), member(2), member(4)])
        plan = join(api)
        self.assertFalse(plan.run_member)
        self.assertEqual([c[0] for c in api.calls], ["list"])
        self.assertEqual(plan.endpoints, ("http://10.0.0.1:2379", "http://10.0.0.2:2379",
                                          "http://10.0.0.4:2379"))
        self.assertIn("-etcd-members 3", plan.reason)
        self.assertTrue(join(FakeMembers([member(1), member(2)]), max_members=5).run_member)

    def test_a_member_with_its_data_starts_again_without_changing_the_cluster(self):
        api = FakeMembers([member(1), member(3)])
        plan = join(api, has_data=True)
        self.assertEqual([c[0] for c in api.calls], ["list"])
        self.assertTrue(plan.run_member)
        self.assertFalse(plan.wipe_data)
        self.assertEqual((plan.member_id, plan.promote), ("3", False))
        # one that started as a learner but was never promoted (its agent died): promoted now
        learner = Member("3", "h3", ("http://10.0.0.3:2380",), ("http://10.0.0.3:2379",), True)
        self.assertTrue(join(FakeMembers([member(1), learner]), has_data=True).promote)

    def test_a_member_whose_data_is_gone_is_replaced(self):
        api = FakeMembers([member(1), member(3)])
        plan = join(api, has_data=False)
        self.assertEqual([c[0] for c in api.calls], ["list", "remove", "add"])
        self.assertEqual(api.calls[1], ("remove", "3"))
        self.assertTrue(plan.run_member)
        self.assertEqual(plan.member_id, "a1")

    def test_a_member_added_but_never_started_is_started_on_a_clean_data_dir(self):
        api = FakeMembers([member(1), member(3, name="")])
        plan = join(api, has_data=True)
        self.assertEqual([c[0] for c in api.calls], ["list"])
        self.assertTrue(plan.wipe_data)  # half-made data of a start that failed
        self.assertIn("h3=http://10.0.0.3:2380", plan.bootstrap[1])

    def test_no_peer_answers(self):
        with self.assertRaises(EtcdUnavailable):
            join(FakeMembers([], reachable=False))
        # a member with data needs nobody to start again (the whole cluster may be restarting)
        plan = join(FakeMembers([], reachable=False), has_data=True)
        self.assertTrue(plan.run_member)
        self.assertEqual(plan.bootstrap, ())

    def test_operators_etcd_and_discovery(self):
        plan = etcd_plan.plan_external(("http://e1:2379", "http://e2:2379"))
        self.assertFalse(plan.run_member)
        self.assertEqual(plan.endpoints, ("http://e1:2379", "http://e2:2379"))
        plan = etcd_plan.plan_discovery(ME, "http://d/v2/keys/discovery/t")
        self.assertEqual(plan.bootstrap, ("--discovery", "http://d/v2/keys/discovery/t"))
