"""The dashboard (GET /): its files and their headers on the fake engine, then the page itself in
a real browser (Debian's chromium, headless, through selenium): against a stand-in API for an
expired cursor, and against real agent processes on the real engine and etcd, where it lists
what the API returns, follows jobs and hosts live without a reload (a crash and a host leaving
within a second), follows a job's log from another host, shows the new leader after the old one
is killed, goes on after its own agent restarts, and asks for the token of an agent that wants
one. Screenshots are saved for a person to look at (the directory is printed)."""
import os
import re
import tempfile
import unittest

import bottle
import gevent.pywsgi
import requests
import simplejson

from host.api import dashboard as dashboard_routes
from host.api.dashboard import CONTENT_SECURITY_POLICY, FILES, read_files
from host.auth import OPEN_PATHS
from host.runtime.fake import FakeRuntime
from tests.browser import chromium, policy_violations
from tests.support import AgentProcess, InProcessAgent, job_body, wait_until
from tests.test_auth import TOKEN, token_file
from tests.test_cluster import TTL, ClusterTestCase

#: the page as a person sees it, read in one round trip: hosts, jobs, the leader, the log
PAGE_STATE = """
const text = (node, selector) => {
  const found = node.querySelector(selector);
  return found ? found.textContent : null;
};
return {
  connection: document.getElementById('connection').dataset.state,
  leader: document.getElementById('leader-id').textContent,
  tokenAsked: !document.getElementById('token-form').hidden,
  tokenProblem: document.getElementById('token-problem').textContent,
  hosts: [...document.querySelectorAll('#hosts .host')].map((card) => ({
    id: card.dataset.hostId, leader: card.classList.contains('leader'),
    mem: text(card, '.meter.mem .meter-text'), cpu: text(card, '.meter.cpu .meter-text'),
    memWidth: card.querySelector('.meter.mem .fill').style.width})),
  jobs: [...document.querySelectorAll('#job-rows .job')].map((row) => ({
    id: row.dataset.jobId, state: row.querySelector('.c-state').dataset.state,
    stateText: text(row, '.c-state'), image: text(row, '.c-image'),
    command: text(row, '.c-command'), ports: text(row, '.c-ports'), host: text(row, '.c-host'),
    markup: row.querySelectorAll('[role=cell] *:not(button)').length})),
  logShown: !document.getElementById('log-section').hidden,
  log: document.getElementById('log').textContent,
  events: [...document.querySelectorAll('#events li')].map((item) => item.textContent),
};
"""


def artifacts_dir() -> str:
    """Where screenshots go: $FLYNN_TEST_ARTIFACTS/dashboard, else a new temporary directory
    (kept after the run, for a person to look at)."""
    base = os.environ.get("FLYNN_TEST_ARTIFACTS")
    if base:
        path = os.path.join(base, "dashboard")
        os.makedirs(path, exist_ok=True)
        return path
    return tempfile.mkdtemp(prefix="flynn-dashboard-screenshots-")


class DashboardFilesTest(unittest.TestCase):
    """The files, their headers and who may fetch them, on the fake engine."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.host = InProcessAgent(FakeRuntime(), token=TOKEN,
                                   flags=["-auth-token-file", token_file(self.tmp)])
        self.base = self.host.client.url

    def tearDown(self):
        self.host.close()

    def test_served_without_a_token_with_a_strict_policy(self):
        packaged = read_files()
        for path, (_, content_type) in FILES.items():
            with self.subTest(path=path):
                resp = requests.get(self.base + path, timeout=10)  # no token
                self.assertEqual(resp.status_code, 200, resp.text)
                self.assertEqual(resp.headers["Content-Type"], content_type)
                self.assertEqual(resp.content, packaged[path][0])
                self.assertEqual(resp.headers["Content-Security-Policy"],
                                 CONTENT_SECURITY_POLICY)
                self.assertEqual(resp.headers["X-Content-Type-Options"], "nosniff")
                self.assertEqual(resp.headers["X-Frame-Options"], "DENY")
        self.assertTrue(CONTENT_SECURITY_POLICY.startswith("default-src 'self';"))
        self.assertIn("require-trusted-types-for 'script'", CONTENT_SECURITY_POLICY)
        self.assertNotIn("unsafe", CONTENT_SECURITY_POLICY)

    def test_only_those_exact_paths_are_open(self):
        self.assertEqual(OPEN_PATHS, {"/healthz"} | set(FILES))
        for path in ("/dashboard/", "/dashboard", "/dashboard/other.js", "/index.html",
                     "/dashboard/dashboard.js/x", "//", "/cluster/hosts", "/host/status"):
            with self.subTest(path=path):
                resp = requests.get(self.base + path, timeout=10)
                self.assertEqual((resp.status_code, resp.json()["code"]), (401, "unauthorized"))
        for method in ("POST", "PUT", "DELETE"):  # open to read, and nothing else
            resp = requests.request(method, self.base + "/", timeout=10,
                                    headers={"Authorization": f"Bearer {TOKEN}"})
            self.assertEqual(resp.status_code, 405, resp.text)

    def test_the_browser_protections_still_apply(self):
        port = self.host.server.server_port
        rebound = requests.get(self.base + "/", timeout=10,
                               headers={"Host": f"attacker.example:{port}"})
        self.assertEqual((rebound.status_code, rebound.json()["code"]), (400, "validation_error"))
        foreign = requests.get(self.base + "/dashboard/dashboard.js", timeout=10,
                               headers={"Origin": "http://evil.example"})
        self.assertEqual(foreign.status_code, 400)

    def test_the_files_load_nothing_from_elsewhere_and_build_no_markup(self):
        files = {path: body.decode() for path, (body, _) in read_files().items()}
        page = files["/"]
        referenced = set(re.findall(r'(?:src|href)="([^"]*)"', page))
        self.assertEqual(referenced, set(FILES) - {"/"})
        self.assertNotIn("<script>", page)   # no inline script (the policy refuses it anyway)
        self.assertNotIn("style=", page)
        for path in ("/", "/dashboard/dashboard.js", "/dashboard/dashboard.css"):
            self.assertNotIn("://", files[path], path)   # no other origin, named anywhere
        self.assertNotIn("@import", files["/dashboard/dashboard.css"])
        self.assertNotIn("url(", files["/dashboard/dashboard.css"])
        script = files["/dashboard/dashboard.js"]
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                     "new Function", "setAttribute('style'", "localStorage"):
            self.assertNotIn(sink, script)
        self.assertIn("sessionStorage", script)


class CursorExpiredTest(unittest.TestCase):
    """The page against a stand-in for the cluster API whose answers the test chooses: a 410
    cursor_expired makes it list everything again, and it follows on from the new cursor."""

    def test_an_expired_cursor_lists_again(self):
        listings = []
        polls = []
        hosts = [{"id": "h1", "addr": "127.0.0.1:1", "leader": True, "jobs": [],
                  "resources": {"memory_mb": 100, "cpu_shares": 100},
                  "allocated": {"memory_mb": 0, "cpu_shares": 0}}]
        job = {"id": "relisted", "status": "running", "image": "img", "command": "cmd",
               "ports": [], "exit_status": None, "error": None,
               "created_at": "2024-01-01T00:00:00Z"}
        app = bottle.Bottle()
        dashboard_routes.install(app)

        def answer(obj, status=200):
            return bottle.HTTPResponse(simplejson.dumps(obj), status,
                                       headers={"Content-Type": "application/json"})

        @app.get("/cluster/hosts")
        def listing():
            listings.append(len(listings))
            if len(listings) == 2:  # the re-list finds what changed meanwhile
                hosts[0]["jobs"] = [job]
            return answer(hosts)

        @app.get("/cluster/leader")
        def leader():
            return answer({"id": "h1", "addr": "127.0.0.1:1", "since": None})

        @app.get("/cluster/events")
        def events():
            since = bottle.request.query.get("since")
            polls.append(since)
            if since is None:
                return answer({"events": [], "cursor": 100 if len(listings) == 0 else 250})
            if since == "100":
                return answer({"code": "cursor_expired", "message": "gone", "retry": False,
                               "earliest": 200, "cursor": 250}, 410)
            gevent.sleep(float(bottle.request.query.get("wait") or 0))
            return answer({"events": [], "cursor": int(since)})

        server = gevent.pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
        server.start()
        self.addCleanup(server.stop)
        driver = chromium()
        self.addCleanup(driver.quit)
        driver.get(f"http://127.0.0.1:{server.server_port}/")
        from selenium.webdriver.support.ui import WebDriverWait
        WebDriverWait(driver, 10, poll_frequency=0.05).until(
            lambda d: d.execute_script(PAGE_STATE)["jobs"] and "250" in polls)
        page = driver.execute_script(PAGE_STATE)
        self.assertEqual([(j["id"], j["state"]) for j in page["jobs"]], [("relisted", "running")])
        self.assertEqual(len(listings), 2)
        self.assertEqual(polls[:4], [None, "100", None, "250"])
        self.assertEqual(page["connection"], "live")


class DashboardBrowserTestCase(ClusterTestCase):
    """Agents on 127.0.0.2-4 (ClusterTestCase's etcd prefix and clean-up), and a headless
    Chromium per test."""
    shots = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if DashboardBrowserTestCase.shots is None:
            DashboardBrowserTestCase.shots = artifacts_dir()
            print(f"\ndashboard screenshots: {DashboardBrowserTestCase.shots}", flush=True)

    def setUp(self):
        super().setUp()
        self.driver = chromium()
        self.addCleanup(self.driver.quit)

    def start_agent(self, n: int, token_path: str = None) -> AgentProcess:
        agent = AgentProcess(f"d{n}-{os.getpid()}", ip=f"127.0.0.{n + 1}",
                             args=["-heartbeat-ttl", str(TTL), "-memory-mb", "1024",
                                   "-cpu-shares", "2048"],
                             env={"FLYNN_ETCD_PREFIX": self.prefix}, token_file=token_path)
        self.agents.append(agent)
        agent.start()
        wait_until(lambda: self.leader_seen_by(agent) is not None, 10, f"{agent.host_id} joined")
        return agent

    # ---- reading the page -----------------------------------------------------------------

    def page(self) -> dict:
        return self.driver.execute_script(PAGE_STATE)

    def screenshot(self, name: str):
        path = os.path.join(self.shots, f"{self._testMethodName}-{name}.png")
        self.driver.save_screenshot(path)
        print(f"screenshot: {path}", flush=True)

    def until(self, condition, timeout: float, what: str):
        """Wait for `condition(page state)` to hold (WebDriverWait, polling the page); on a
        timeout, fail naming `what` with the page as it was, and keep a screenshot of it."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait
        last = {}

        def check(_driver):
            last["page"] = self.page()
            return condition(last["page"])
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(check)
        except TimeoutException:
            self.screenshot("timeout")
            raise AssertionError(f"the page did not show {what} within {timeout}s: "
                                 f"{last.get('page')}") from None

    @staticmethod
    def jobs_of(page) -> dict:
        return {job["id"]: job for job in page["jobs"]}

    @staticmethod
    def api_listing(agent):
        """GET /cluster/hosts through `agent` (None while it answers anything but 200)."""
        resp = agent.client.get("/cluster/hosts")
        return resp.json() if resp.status_code == 200 else None

    @staticmethod
    def shows_the_listing(page, listing) -> bool:
        """The page shows every host and job of `listing` (the API's), and nothing else."""
        if listing is None:
            return False
        hosts = [(h["id"], h["leader"], f"{h['allocated']['memory_mb']:,} / "
                  f"{h['resources']['memory_mb']:,} MB") for h in listing]
        shown = [(h["id"], h["leader"], h["mem"]) for h in page["hosts"]]
        jobs = {j["id"]: (j["status"], j["image"], j["command"], h["id"])
                for h in listing for j in h["jobs"]}
        rows = {j["id"]: (j["state"], j["image"], j["command"], j["host"]) for j in page["jobs"]}
        return shown == hosts and rows == jobs and page["leader"] == \
            next((h["id"] for h in listing if h["leader"]), None)

    def assertNoPolicyViolations(self):
        self.assertEqual(policy_violations(self.driver), [])


class DashboardClusterTest(DashboardBrowserTestCase):
    def test_lists_the_cluster_and_follows_jobs_and_hosts_live(self):
        first, second, third = [self.start_agent(n) for n in (1, 2, 3)]
        wait_until(lambda: len(self.hosts_seen_by(first)) == 3, 10, "three hosts")
        running = dict(job_body(["sh", "-c", "echo hello-from-the-job; i=0; while true; do "
                                 "echo tick-$i; i=$((i+1)); sleep 0.2; done"],
                                ports=[{"port": 0}]),
                       resources={"memory_mb": 256, "cpu_shares": 512})
        second.client.put_job("dash-ticks", running)
        second.client.put_job("dash-idle", job_body(["sleep", "600"]))
        third.client.put_job("dash-done", job_body(["true"]))
        markup = "<img src=x onerror=alert(1)><b>not bold</b> & \"quoted\""
        first.client.put_job("dash-markup", job_body(["echo", markup]))
        for agent, job_id, status in ((second, "dash-ticks", "running"),
                                      (second, "dash-idle", "running"),
                                      (third, "dash-done", "done"),
                                      (first, "dash-markup", "done")):
            agent.client.wait_status(job_id, status)
            wait_until(lambda a=agent, j=job_id, s=status: self.status_in_mirror(a, j) == s, 10,
                       f"{job_id} {status} in the mirror")

        # the page third serves (a non-leader: its cluster reads are forwarded to the leader)
        self.driver.get(third.client.url + "/")
        page = self.until(lambda page: self.shows_the_listing(page, self.api_listing(third))
                          and page, 15, "the hosts and jobs the API lists")
        self.assertEqual([h["id"] for h in page["hosts"]],
                         [first.host_id, second.host_id, third.host_id])
        self.assertEqual(page["leader"], first.host_id)
        second_card = next(h for h in page["hosts"] if h["id"] == second.host_id)
        self.assertEqual((second_card["mem"], second_card["cpu"], second_card["memWidth"]),
                         ("256 / 1,024 MB", "512 / 2,048 shares", "25%"))
        rows = self.jobs_of(page)
        self.assertEqual(rows["dash-markup"]["command"], f"echo '{markup}'")  # as text
        self.assertEqual([r["markup"] for r in rows.values()], [0] * len(rows))
        self.assertRegex(rows["dash-ticks"]["ports"], r"^\d+/tcp$")
        self.assertEqual(rows["dash-ticks"]["host"], second.host_id)
        self.screenshot("1-listing")
        self.driver.execute_script("window.sameDocument = true")  # gone if the page reloads

        # a job started and stopped through the API shows up without a reload
        placed = second.client.post("/cluster/jobs", json={"jobs": [
            dict(job_body(["sleep", "600"]), id="dash-live")]})
        self.assertEqual(placed.status_code, 200, placed.text)
        live_host = placed.json()["jobs"][0]["host_id"]
        self.until(lambda page: self.jobs_of(page).get("dash-live", {}).get("state") ==
                   "running", 15, "dash-live running")
        stop = first.client.delete(f"/cluster/hosts/{live_host}/jobs/dash-live?timeout=0")
        self.assertIn(stop.status_code, (200, 202), stop.text)
        page = self.until(lambda page: self.jobs_of(page)["dash-live"]["state"] == "stopped"
                          and page, 15, "dash-live stopped")
        # the exit status with it: what the signal made of the job (SIGKILL at once, or TERM)
        self.assertRegex(self.jobs_of(page)["dash-live"]["stateText"], r"^stopped \(1(37|43)\)$")
        # a crash shows within a second of the cluster knowing it
        third.client.put_job("dash-crash", job_body(["sh", "-c", "exit 3"]))
        wait_until(lambda: self.status_in_mirror(first, "dash-crash") == "crashed", 15,
                   "dash-crash crashed in the mirror")
        self.until(lambda page: self.jobs_of(page).get("dash-crash", {}).get("stateText") ==
                   "crashed (3)", 1.0, "dash-crash crashed, within a second")
        self.screenshot("2-started-stopped-crashed")

        # the log of a job on another host, through the page's agent, followed live
        self.driver.find_element("css selector",
                                 ".job[data-job-id='dash-ticks'] button.job-link").click()
        page = self.until(lambda page: "hello-from-the-job" in page["log"] and page, 15,
                          "the job's log")
        ticks = [int(n) for n in re.findall(r"tick-(\d+)", page["log"])]
        self.until(lambda page: max(map(int, re.findall(r"tick-(\d+)", page["log"])),
                                    default=-1) >= max(ticks, default=0) + 3, 10,
                   "more of the log as the job writes it")
        self.screenshot("3-log-followed")
        self.driver.find_element("id", "log-stop").click()   # DELETE /cluster/jobs/dash-ticks
        self.until(lambda page: self.jobs_of(page)["dash-ticks"]["state"] == "stopped" and
                   "end of the log" in page["log"], 20, "dash-ticks stopped from the page")

        # a host that leaves shows within a second of the cluster knowing it; its running
        # job is reported lost
        self.assertEqual(second.stop(), 0)
        wait_until(lambda: second.host_id not in self.hosts_seen_by(third), TTL + 5,
                   "second gone from the mirror")
        page = self.until(lambda page: second.host_id not in [h["id"] for h in page["hosts"]]
                          and page, 1.0, "second gone, within a second")
        self.until(lambda page: self.jobs_of(page)["dash-idle"]["state"] == "lost", 2,
                   "dash-idle lost")
        self.assertTrue(self.driver.execute_script("return window.sameDocument === true"))
        self.assertTrue(any("host remove" in line for line in self.page()["events"]))
        self.until(lambda page: page["connection"] == "live", 5, "the stream live")
        self.screenshot("4-host-left")
        self.assertNoPolicyViolations()

    def test_the_new_leader_shows_after_the_old_one_is_killed(self):
        first, second, third = [self.start_agent(n) for n in (1, 2, 3)]
        wait_until(lambda: len(self.hosts_seen_by(first)) == 3, 10, "three hosts")
        self.driver.get(third.client.url + "/")
        self.until(lambda page: page["leader"] == first.host_id and len(page["hosts"]) == 3
                   and page["connection"] == "live", 15, "three hosts, the first leading")
        self.screenshot("1-before")
        self.driver.execute_script("window.sameDocument = true")
        first.kill()
        self.until(lambda page: page["leader"] == second.host_id and
                   [h["id"] for h in page["hosts"]] == [second.host_id, third.host_id]
                   and page["hosts"][0]["leader"], TTL + 10,
                   "the second host leading, the first gone")
        # the stream goes on from the new leader: a job started now shows up
        third.client.put_job("after-failover", job_body(["sleep", "600"]))
        self.until(lambda page: self.jobs_of(page).get("after-failover", {}).get("state") ==
                   "running", 15, "a job started after the failover")
        self.until(lambda page: self.shows_the_listing(page, self.api_listing(third)), 10,
                   "what the new leader lists")
        self.assertTrue(self.driver.execute_script("return window.sameDocument === true"))
        self.screenshot("2-after-failover")
        # the page's own agent restarts: the page retries, then goes on where it was
        self.assertEqual(third.stop(), 0)
        self.until(lambda page: page["connection"] == "retrying", 10, "the page retrying")
        third.start()
        third.client.put_job("after-restart", job_body(["true"]))
        self.until(lambda page: self.jobs_of(page).get("after-restart", {}).get("state") ==
                   "done", 20, "a job run after the page's agent restarted")
        self.until(lambda page: page["connection"] == "live" and
                   self.shows_the_listing(page, self.api_listing(third)), 10,
                   "what the cluster lists after the restart")
        self.assertTrue(self.driver.execute_script("return window.sameDocument === true"))
        self.screenshot("3-after-agent-restart")
        self.assertNoPolicyViolations()


class DashboardTokenTest(DashboardBrowserTestCase):
    def test_the_page_asks_for_the_token_then_lists(self):
        path = token_file(tempfile.mkdtemp())
        first, second = self.start_agent(1, path), self.start_agent(2, path)
        wait_until(lambda: len(self.hosts_seen_by(second)) == 2, 15, "two hosts")
        # on the leader: the page's agent relays its log from there
        first.client.put_job("tok-job", job_body(["sh", "-c", "echo token-log-line; "
                                                  "exec sleep 600"]))
        first.client.wait_status("tok-job", "running")
        wait_until(lambda: self.status_in_mirror(second, "tok-job") == "running", 10,
                   "tok-job in the mirror")

        self.driver.get(second.client.url + "/")
        page = self.until(lambda page: page["tokenAsked"] and page, 10, "the token form")
        self.assertEqual((page["hosts"], page["jobs"]), ([], []))
        self.screenshot("1-asks")
        field = self.driver.find_element("id", "token-input")
        field.send_keys("not-the-token")
        self.driver.find_element("id", "token-submit").click()
        self.until(lambda page: page["tokenAsked"] and "refused" in page["tokenProblem"], 10,
                   "the wrong token refused")
        field.send_keys(TOKEN)
        self.driver.find_element("id", "token-submit").click()
        self.until(lambda page: not page["tokenAsked"] and
                   self.shows_the_listing(page, self.api_listing(second)), 15,
                   "the listing, with the token")
        self.assertEqual(self.driver.execute_script(
            "return sessionStorage.getItem('flynn-host-token')"), TOKEN)
        self.screenshot("2-listed")
        # the tab keeps it: a reload lists at once, and the stream works with it
        self.driver.refresh()
        self.until(lambda page: not page["tokenAsked"] and len(page["hosts"]) == 2 and
                   page["connection"] == "live", 15, "the listing after a reload")
        second.client.put_job("tok-later", job_body(["true"]))
        self.until(lambda page: self.jobs_of(page).get("tok-later", {}).get("state") == "done",
                   15, "a job that ran after the reload")
        # the log comes through the page's agent too (from the job's host), with the token
        self.driver.find_element("css selector",
                                 ".job[data-job-id='tok-job'] button.job-link").click()
        page = self.until(lambda page: "token-log-line" in page["log"] and page, 15,
                          "tok-job's log")
        self.assertFalse(page["tokenAsked"])
        self.assertNoPolicyViolations()
