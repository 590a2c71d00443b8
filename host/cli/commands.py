"""Client subcommands (`flynn-host --help` lists them), with docker's habits: short ids and
relative times in tables, a unique id prefix accepted for a job, `--json` and `--format` for
programs. Job commands go through the one agent named by -H, which reaches the job's host
(/cluster/jobs/<id>): a workstation that reaches one agent manages the whole cluster.

Exit codes: 0 ok, 1 the agent answered with an error (its message on one line of stderr), 2
usage error, 3 agent unreachable; `run` passes the job's own exit status through (125: the job
could not be started).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import gevent
import gevent.event
import simplejson

import host as host_package

from host import errors
from host.auth import TokenError, client_token
from host.cli import output
from host.cli.output import print_json, printable
from host.client import AgentUnreachable, ClusterClient, ClusterJobs, HostClient
from host.clock import parse_moment
from host.types import ALL_STATES as STATES
from host.types import id_problem

EXIT_OK, EXIT_API_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_ADDR = "127.0.0.1:1113"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")

    def parse_args(self, args=None, namespace=None):
        """The arguments, with `token`: the agent's API token from --token-file or the
        environment (None without one)."""
        parsed = super().parse_args(args, namespace)
        try:
            parsed.token = client_token(getattr(parsed, "token_file", None))
        except TokenError as e:
            raise UsageError(f"{self.prog}: --token-file: {e}") from None
        tls_ca = getattr(parsed, "tls_ca", None)
        if tls_ca:
            if not os.path.isfile(tls_ca):
                raise UsageError(f"{self.prog}: --tls-ca: no such file: {tls_ca}")
            # every client this command makes (and the hosts it finds) verifies with it
            os.environ["FLYNN_HOST_TLS_CA"] = tls_ca
        return parsed


def _parser(name: str, description: str, examples: str) -> _Parser:
    parser = _Parser(prog=f"flynn-host {name}", description=description,
                     epilog="examples:\n" + examples,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-H", "--addr", "-addr", default=os.environ.get("FLYNN_HOST_ADDR",
                                                                        DEFAULT_ADDR),
                        help="agent address (env FLYNN_HOST_ADDR, default %(default)s)")
    parser.add_argument("--json", "-json", action="store_true", help="machine-readable output")
    parser.add_argument("--token-file", "-token-file", metavar="FILE",
                        help="file holding the agent's API token (or env FLYNN_HOST_TOKEN, or "
                             "FLYNN_HOST_TOKEN_FILE)")
    parser.add_argument("--tls-ca", "-tls-ca", metavar="FILE",
                        help="CA certificate to verify the agents' with: they are then reached "
                             "by https (or env FLYNN_HOST_TLS_CA)")
    return parser


class Progress:
    """A one-line status on stderr for a wait that lasts more than a moment, and only on a
    terminal: nothing decorative when the output is piped."""
    #: seconds before a wait is worth a word
    delay_s = 0.5

    def __init__(self, text: str):
        self.text = text
        self._timer = None
        self._shown = False

    def __enter__(self):
        if sys.stderr.isatty():
            self._timer = gevent.spawn_later(self.delay_s, self._show)
        return self

    def _show(self):
        sys.stderr.write(f"{self.text}...")
        sys.stderr.flush()
        self._shown = True

    def __exit__(self, *exc):
        if self._timer is not None:
            self._timer.kill()
        if self._shown:
            sys.stderr.write("\r\x1b[K")  # erase the line again
            sys.stderr.flush()
        return False


def _jobs(args) -> ClusterJobs:
    """Jobs of any host, through the agent at -H."""
    return ClusterJobs(args.addr, token=args.token)


def _resolve(args, job_ids: list) -> list:
    """The full ids of `job_ids`, each the id itself or a unique prefix of one (as docker takes
    a container's), looked up on the agent's own host and in the cluster's mirror."""
    jobs, known, resolved = _jobs(args), None, []
    for job_id in job_ids:
        try:
            jobs.job(job_id)
            resolved.append(job_id)
            continue
        except errors.NotFound as not_found:
            if known is None:
                known = _known_job_ids(args)
            matches = sorted(j for j in known if j.startswith(job_id))
            if len(matches) > 1:
                raise errors.FlynnError(f"{job_id!r} is the start of several job ids: "
                                        f"{', '.join(matches[:5])}"
                                        f"{', ...' if len(matches) > 5 else ''}") from None
            if not matches:
                raise not_found
            resolved.append(matches[0])
    return resolved


def _known_job_ids(args) -> set:
    ids = {job["job"]["id"] for job in HostClient(args.addr, token=args.token).jobs()}
    try:
        hosts = ClusterClient(args.addr, token=args.token).hosts()
    except (errors.NotFound, errors.NotLeader, errors.Unavailable):
        return ids  # no cluster (or no leader now): this host's jobs are what there is
    return ids | {job["id"] for host in hosts for job in host.get("jobs", [])}


FINAL = ("done", "crashed", "failed", "stopped")


def _wait_until_ended(jobs: ClusterJobs, job_id: str, timeout_s: float = 3600) -> dict:
    """The job once it has ended (each ask held by the agent until it does, or a minute)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = jobs.wait_job(job_id, min(60, max(0.0, deadline - time.monotonic())))
        if job["status"] in FINAL:
            return job
        if time.monotonic() >= deadline:
            raise errors.FlynnError(f"job {job_id} did not end within {timeout_s:.0f}s")


# ---- the commands ---------------------------------------------------------------------------

#: ps's fields: --format's names -> the keys of a row (also its --json shape)
PS_FIELDS = {"ID": "id", "Status": "status", "State": "state", "Image": "image",
             "Command": "command", "Host": "host_id", "Ports": "ports",
             "Created": "created_at", "Started": "started_at", "Ended": "ended_at",
             "ExitStatus": "exit_status", "Error": "error", "CreatedAgo": "created"}


def _ps_row(job: dict, host_id: str, command: str) -> dict:
    """One shape for a job whether it comes from a host (an ActiveJob) or from the cluster's
    mirror (a summary): `--json` and `--format` are the same with and without --cluster."""
    return {"id": job["id"], "host_id": host_id, "status": job["status"],
            "image": job["image"], "command": command, "ports": job.get("ports") or [],
            "created_at": job.get("created_at"), "started_at": job.get("started_at"),
            "ended_at": job.get("ended_at"), "exit_status": job.get("exit_status"),
            "error": job.get("error")}


def _filters(texts: list, statuses: list) -> dict:
    """--filter KEY=VALUE (repeatable) and --status S[,S] as {key: set of values}."""
    wanted: dict = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key = {"state": "status", "host": "host_id", "name": "id"}.get(key, key)
        if not sep or key not in ("status", "host_id", "id", "image"):
            raise UsageError(f"flynn-host ps: --filter {text!r}: must be status=, host=, id= "
                             "or image= with a value")
        wanted.setdefault(key, set()).add(value)
    for text in statuses:
        wanted.setdefault("status", set()).update(s for s in text.split(",") if s)
    unknown = wanted.get("status", set()) - set(STATES)
    if unknown:
        raise UsageError(f"flynn-host ps: no state {sorted(unknown)[0]!r}; states: "
                         f"{', '.join(STATES)}")
    return wanted


def _matches(row: dict, wanted: dict) -> bool:
    for key, values in wanted.items():
        value = row[key] or ""
        if key in ("id", "image"):  # as docker's name filter: a part of it
            if not any(v in value for v in values):
                return False
        elif value not in values:
            return False
    return True


def cmd_ps(argv):
    parser = _parser("ps", "List jobs: running and starting ones (-a: ended ones too).",
                     "  flynn-host ps\n  flynn-host ps -a --status crashed,stopped\n"
                     "  flynn-host ps -q | xargs flynn-host stop\n  flynn-host ps --cluster\n"
                     "  flynn-host ps --filter image=busybox --no-trunc\n"
                     "  flynn-host ps --format '{{.ID}}\\t{{.Status}}\\t{{.Host}}'\n"
                     "  flynn-host ps --format json")
    parser.add_argument("-a", "--all", action="store_true", help="include ended jobs")
    parser.add_argument("-q", "--quiet", action="store_true", help="full job ids only")
    parser.add_argument("--cluster", "-cluster", action="store_true",
                        help="every host's jobs, from the leader")
    parser.add_argument("--host", "-host", metavar="HOST_ID",
                        help="one host's jobs, from the leader")
    parser.add_argument("--status", "-status", action="append", default=[], metavar="STATE",
                        help="only jobs in these states (comma-separated or repeated; implies "
                             f"-a for ended ones): {', '.join(STATES)}")
    parser.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="status=, host=, id= (a part of it) or image= (a part of it); "
                             "repeatable")
    parser.add_argument("--format", metavar="TEMPLATE",
                        help="a template of {{.Field}} (fields: " + ", ".join(PS_FIELDS) +
                             "; {{json .}} for the whole row), or json: one object a line")
    parser.add_argument("--no-trunc", action="store_true",
                        help="whole ids and commands in the table")
    args = parser.parse_args(argv)
    wanted = _filters(args.filter, args.status)
    if args.format and args.format != "json":
        try:
            output.check_template(args.format, PS_FIELDS)
        except output.FormatError as e:
            raise UsageError(f"flynn-host ps: --format: {e}") from None
    if args.cluster or args.host:
        cluster = ClusterClient(args.addr, token=args.token)
        with Progress("waiting for the cluster leader"):
            hosts = [cluster.host(args.host)] if args.host else cluster.hosts()
        rows = [_ps_row(job, host["id"], job.get("command", ""))
                for host in hosts for job in host.get("jobs", [])]
    else:
        rows = [_ps_row(dict(j, id=j["job"]["id"], image=j["job"]["config"]["image"]),
                        j["host_id"], output.command_of(j["job"]["config"]))
                for j in HostClient(args.addr, token=args.token).jobs()]
    if not (args.all or "status" in wanted):
        rows = [r for r in rows if r["status"] in ("starting", "running")]
    rows = [r for r in rows if _matches(r, wanted)]
    rows.sort(key=lambda r: r["created_at"] or "", reverse=True)  # newest first, as docker
    now = time.time()
    for row in rows:
        row["state"] = output.state_text(row, now)
        row["created"] = output.ago(row["created_at"], now)
    if args.json:
        print_json([{k: v for k, v in r.items() if k not in ("state", "created")}
                    for r in rows])
    elif args.format == "json":
        for row in rows:
            print(simplejson.dumps(row, sort_keys=True))
    elif args.format:
        for row in rows:
            print(output.render(args.format, row, PS_FIELDS))
    elif args.quiet:
        for row in rows:
            print(row["id"])
    else:
        def cut(text, width):
            return text if args.no_trunc else output.truncate(text, width)
        output.table([[r["id"] if args.no_trunc else r["id"][:output.SHORT_ID], r["image"],
                       cut(r["command"], output.SHORT_COMMAND), r["created"], r["state"],
                       r["host_id"], output.ports_text(r["ports"])] for r in rows],
                     ["JOB ID", "IMAGE", "COMMAND", "CREATED", "STATE", "HOST", "PORTS"])


def cmd_inspect(argv):
    parser = _parser("inspect", "Show jobs in full (JSON), on whichever host of the cluster "
                     "runs them.", "  flynn-host inspect web-1\n  flynn-host inspect 3f2a9c")
    parser.add_argument("job_ids", nargs="+", type=_job_id, metavar="JOB")
    args = parser.parse_args(argv)
    jobs = _jobs(args)
    found = [jobs.job(job_id) for job_id in _resolve(args, args.job_ids)]
    print_json(found[0] if len(found) == 1 else found)


def cmd_log(argv, name="log"):
    parser = _parser(name, "Print a job's output, from whichever host runs it.",
                     f"  flynn-host {name} web-1\n  flynn-host {name} -f --tail 10 web-1\n"
                     f"  flynn-host {name} --since 10m --timestamps web-1\n"
                     f"  flynn-host {name} --since 2026-12-01T10:00:00Z --until 5m web-1")
    parser.add_argument("job_id", type=_job_id, metavar="JOB")
    parser.add_argument("-f", "--follow", action="store_true", help="until the job ends")
    parser.add_argument("-n", "--tail", "-tail", type=int, help="only the last N lines")
    parser.add_argument("--since", "-since", type=_moment, metavar="TIME",
                        help="lines from TIME on: RFC 3339 (2026-12-01T10:00:00Z), Unix "
                             "seconds, or a duration ago (10m, 1h30m)")
    parser.add_argument("--until", "-until", type=_moment, metavar="TIME",
                        help="lines before TIME (the same forms)")
    parser.add_argument("-t", "--timestamps", action="store_true",
                        help="each line starts with the time it was written (RFC 3339)")
    args = parser.parse_args(argv)
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"flynn-host {name}: --tail must be 0 or more")
    if args.since is not None and args.until is not None and args.until < args.since:
        raise UsageError(f"flynn-host {name}: --until is before --since")
    out = sys.stdout.buffer
    job_id, = _resolve(args, [args.job_id])
    for chunk in _jobs(args).log(job_id, follow=args.follow, tail=args.tail, since=args.since,
                                 until=args.until, timestamps=args.timestamps):
        out.write(chunk)
        out.flush()


def cmd_logs(argv):
    return cmd_log(argv, "logs")


def _moment(text: str) -> float:
    try:
        return parse_moment(text, time.time())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_stop(argv):
    parser = _parser("stop", "Stop jobs, on whichever hosts run them: SIGTERM, then SIGKILL after "
                     "the timeout. Returns once they have ended (state `stopped`).",
                     "  flynn-host stop web-1 web-2\n  flynn-host stop --timeout 2 web-1\n"
                     "  flynn-host ps --cluster -q | xargs flynn-host stop")
    parser.add_argument("job_ids", nargs="+", type=_job_id, metavar="JOB")
    parser.add_argument("-t", "--timeout", "-timeout", type=float, default=None,
                        help="seconds before SIGKILL (default 10)")
    args = parser.parse_args(argv)
    jobs = _jobs(args)
    with Progress(f"stopping {len(args.job_ids)} job(s)"):
        job_ids = _resolve(args, args.job_ids)
        for job_id in job_ids:
            jobs.stop_job(job_id, args.timeout)
        # like docker stop: return once they have stopped
        grace = (10 if args.timeout is None else args.timeout) + 30
        stopped = [_wait_until_ended(jobs, job_id, grace) for job_id in job_ids]
    _print_jobs(args, stopped)


def _print_jobs(args, jobs: list):
    """What stop and kill print: the jobs' ids, or (--json) the jobs."""
    if args.json:
        print_json(jobs)
        return
    for job in jobs:
        print(job["job"]["id"])


def _signal_of(text: str):
    return int(text) if text.isdigit() else text


def cmd_kill(argv):
    parser = _parser("kill", "Send jobs a signal (SIGKILL unless -s says another), as docker "
                     "kill: returns at once.",
                     "  flynn-host kill web-1\n  flynn-host kill -s HUP web-1 web-2")
    parser.add_argument("job_ids", nargs="+", type=_job_id, metavar="JOB")
    parser.add_argument("-s", "--signal", default="KILL", help="signal name or number "
                        "(default KILL)")
    args = parser.parse_args(argv)
    jobs = _jobs(args)
    signal = _signal_of(args.signal)
    _print_jobs(args, [jobs.signal_job(job_id, signal)
                       for job_id in _resolve(args, args.job_ids)])


def cmd_rm(argv):
    parser = _parser("rm", "Remove ended jobs: their containers and records (-f kills an "
                     "active one first).",
                     "  flynn-host rm web-1\n  flynn-host rm -f web-1\n"
                     "  flynn-host ps -q --status crashed | xargs flynn-host rm")
    parser.add_argument("job_ids", nargs="+", type=_job_id, metavar="JOB")
    parser.add_argument("-f", "--force", action="store_true",
                        help="kill an active job and remove it once it has ended")
    args = parser.parse_args(argv)
    jobs = _jobs(args)
    with Progress(f"removing {len(args.job_ids)} job(s)"):
        job_ids = _resolve(args, args.job_ids)
        for job_id in job_ids:
            answer = jobs.remove_job(job_id, force=args.force)
            if not answer.get("removed"):
                _wait_until_gone(jobs, job_id)
            print(job_id, flush=True)


def _wait_until_gone(jobs: ClusterJobs, job_id: str):
    """After rm -f: the job ends (killed), then its host forgets it."""
    try:
        _wait_until_ended(jobs, job_id, 60)
        jobs.remove_job(job_id)  # the host removes it as it ends; this makes sure of it
    except errors.NotFound:
        return


def cmd_wait(argv):
    parser = _parser("wait", "Block until jobs end, then print their exit statuses (one a "
                     "line, as docker wait).",
                     "  flynn-host wait web-1\n  flynn-host run -d busybox sleep 3 | "
                     "xargs flynn-host wait")
    parser.add_argument("job_ids", nargs="+", type=_job_id, metavar="JOB")
    args = parser.parse_args(argv)
    jobs = _jobs(args)
    ended = [_wait_until_ended(jobs, job_id, float("inf"))
             for job_id in _resolve(args, args.job_ids)]
    if args.json:
        print_json(ended)
        return
    for job in ended:
        print(job["exit_status"] if job["exit_status"] is not None else job["status"])


def cmd_signal(argv):
    parser = _parser("signal", "Send a signal to a running job.",
                     "  flynn-host signal web-1 HUP")
    parser.add_argument("job_id", type=_job_id, metavar="JOB")
    parser.add_argument("signal")
    args = parser.parse_args(argv)
    job_id, = _resolve(args, [args.job_id])
    job = _jobs(args).signal_job(job_id, _signal_of(args.signal))
    print_json(job) if args.json else print(job["job"]["id"])


def cmd_status(argv):
    parser = _parser("status", "This agent's status.", "  flynn-host status --json")
    args = parser.parse_args(argv)
    status = HostClient(args.addr, token=args.token).status()
    if args.json:
        print_json(status)
        return
    leader = status["leader"]
    for key, value in (("id", status["id"]), ("addr", status["addr"]),
                       ("version", status["version"]),
                       ("leader", f"{leader['id']} ({leader['addr']})" if leader else "none"),
                       ("docker", status["docker"]), ("etcd", status["etcd"]),
                       ("jobs", ", ".join(f"{k} {v}" for k, v in sorted(status["jobs"].items()))
                        or "none")):
        print(f"{key + ':':<9}{printable(value)}")


def cmd_leave(argv):
    parser = _parser("leave", "Remove this host from the cluster for good: the agent "
                     "deregisters, its etcd member is removed from the cluster (and its data "
                     "deleted), and the agent exits. Its jobs keep running: stop them first "
                     "to take them down.",
                     "  flynn-host leave\n  flynn-host leave -H 10.0.0.7:1113")
    args = parser.parse_args(argv)
    with Progress("leaving the cluster"):
        left = HostClient(args.addr, token=args.token).leave()
    if args.json:
        print_json(left)
        return
    removed = left.get("etcd_member_removed")
    print(f"{left['host_id']} left the cluster" +
          (f"; etcd member {removed} removed" if removed else ""))


def cmd_leader(argv):
    parser = _parser("leader", "The cluster leader.", "  flynn-host leader")
    args = parser.parse_args(argv)
    with Progress("waiting for a leader"):
        leader = ClusterClient(args.addr, token=args.token).leader()
    print_json(leader) if args.json else print(f"{leader['id']} {leader['addr']}")


def cmd_hosts(argv):
    parser = _parser("hosts", "The cluster's hosts, from the leader's mirror.",
                     "  flynn-host hosts\n  flynn-host hosts --json")
    args = parser.parse_args(argv)
    with Progress("waiting for the cluster leader"):
        hosts = ClusterClient(args.addr, token=args.token).hosts()
    if args.json:
        print_json(hosts)
        return
    rows = []
    for host in hosts:
        total, used = host.get("resources", {}), host.get("allocated", {})
        active = sum(1 for j in host.get("jobs", []) if j["status"] in ("starting", "running"))
        rows.append([host["id"], host["addr"], "*" if host.get("leader") else "", active,
                     f"{used.get('memory_mb', 0)}/{total.get('memory_mb', 0)} MiB",
                     f"{used.get('cpu_shares', 0)}/{total.get('cpu_shares', 0)}",
                     host.get("registered_at", "")])
    output.table(rows, ["HOST ID", "ADDR", "LEADER", "JOBS", "MEMORY", "CPU", "REGISTERED"])


def cmd_events(argv):
    parser = _parser("events", "Print events (-f to follow; it resumes after reconnecting).",
                     "  flynn-host events --since 0\n  flynn-host events -f\n"
                     "  flynn-host events -f --cluster")
    parser.add_argument("-f", "--follow", action="store_true")
    parser.add_argument("--since", "-since", type=int, default=None,
                        help="cursor to start after (default: now when following, else the "
                             "oldest retained event)")
    parser.add_argument("--cluster", "-cluster", action="store_true")
    args = parser.parse_args(argv)
    client = (ClusterClient if args.cluster else HostClient)(args.addr, token=args.token)

    def show(event):
        if args.json:
            print(simplejson.dumps(event), flush=True)
        else:
            job = event.get("job") or {}
            print(printable(f"{event['cursor']}  {event['time']}  {event['type']} "
                             f"{event['event']}  host={event['host_id']}" +
                             (f" job={event['job_id']} {job.get('status')}"
                              if event.get("job_id") else "")), flush=True)
    if args.follow:
        status = _Reconnecting()
        if args.since is None:
            # "from now": the cursor now, so that events while the agent is unreachable
            # (and retried) are not lost either; an agent down at the start is waited for
            args.since = _first_cursor(client, status)
        for event in client.follow_events(since=args.since, on_error=status.failed,
                                          on_resume=status.resumed):
            show(event)
        return
    try:
        page = client.events(since=0 if args.since is None else args.since)
    except errors.CursorExpired as e:
        if args.since is not None:
            raise
        page = client.events(since=e.extra["earliest"])  # "all" means all that is retained
    for event in page["events"]:
        show(event)


class _Reconnecting:
    """What a follow says on stderr: one line when the agent stops answering (not one per
    retry), one when it answers again."""

    def __init__(self):
        self.down = False

    def failed(self, error, retry_in_s=None):
        if not self.down:
            message = unreachable_message(error) if isinstance(error, AgentUnreachable) \
                else error.message
            print(f"flynn-host events: {printable(message)}; waiting for it, retrying...",
                  file=sys.stderr, flush=True)
            self.down = True

    def resumed(self):
        if self.down:
            print("flynn-host events: reconnected; resuming after the last event seen",
                  file=sys.stderr, flush=True)
            self.down = False


def _first_cursor(client, status: _Reconnecting) -> int:
    """The agent's cursor now, asked until it answers."""
    while True:
        try:
            cursor = client.events()["cursor"]
            status.resumed()
            return cursor
        except (AgentUnreachable, errors.Unavailable, errors.NotLeader) as e:
            status.failed(e)
            time.sleep(1.0)


def _memory_mb(text: str) -> int:
    units = {"m": 1, "g": 1024}
    text = text.strip().lower().rstrip("ib")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a memory size: {text!r} (e.g. 64, 64m, 1g)") from None


def _port(text: str) -> dict:
    """-p PORT, HOSTPORT:PORT, each with /tcp or /udp (docker's forms)."""
    spec, _, proto = text.partition("/")
    host, _, container = spec.rpartition(":")
    proto = proto.lower() or "tcp"
    try:
        if proto not in ("tcp", "udp"):
            raise ValueError
        return {"port": int(host) if host else 0, "container_port": int(container) or None,
                "proto": proto}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a port: {text!r} (PORT or HOSTPORT:PORT, then /tcp or /udp)") from None


def _job_id(text: str) -> str:
    """A job id argument, checked here: the agent would answer a bad one with a 400, but a `/`
    in it would reach another route first (WSGI decodes the path)."""
    problem = id_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"not a job id: {text!r} ({problem})")
    return text


def _env(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value


def cmd_run(argv):
    parser = _parser("run", "Run a job through the cluster (placed by the leader, or on --on "
                     "HOST). Without -d, attach to it before it starts (none of its output is "
                     "lost), print its output and exit with its exit status; Ctrl-C sends it "
                     "SIGINT (a second one detaches, leaving it running).",
                     "  flynn-host run flynn-test/busybox echo hello\n"
                     "  flynn-host run -d -p 8080 -m 64m --id web-1 busybox httpd -f -p 8080\n"
                     "  flynn-host run --on host2 -e GREETING=hi -w /tmp -u nobody busybox env\n"
                     "  flynn-host run -p 5353/udp --entrypoint /bin/sh busybox -c 'nc -lu -p "
                     "5353'\n  flynn-host run -f job.json")
    parser.add_argument("-e", "--env", "-env", type=_env, action="append", default=[],
                        help="KEY=VALUE, repeatable")
    parser.add_argument("-p", "--port", "-port", type=_port, action="append", default=[],
                        help="container PORT (a host port is allocated) or HOSTPORT:PORT, "
                             "/tcp (default) or /udp; repeatable")
    parser.add_argument("-m", "--memory", "-memory", type=_memory_mb, default=None,
                        help="memory limit, MiB (64, 64m, 1g)")
    parser.add_argument("--cpu", "-cpu", type=int, default=None, help="CPU shares")
    parser.add_argument("--entrypoint", help="the image's entrypoint instead (one word, as "
                                             "docker takes it; '' for none)")
    parser.add_argument("-w", "--workdir", help="working directory in the container")
    parser.add_argument("-u", "--user", help="USER[:GROUP] to run as")
    parser.add_argument("--id", "-id", type=_job_id, help="job id (default: generated)")
    parser.add_argument("--on", "-on", help="host to run on (default: the leader places it)")
    parser.add_argument("-f", "--file", metavar="JOB.JSON",
                        help="the job spec in full (docs/API.md, the Job object; - for stdin); "
                             "other flags given add to it")
    parser.add_argument("-d", "--detach", action="store_true", help="print the job id and exit")
    parser.add_argument("-i", "--interactive", action="store_true",
                        help="attach our stdin (without it the job's stdin is closed)")
    parser.add_argument("-t", "--tty", action="store_true",
                        help="give the job a terminal; ours goes raw until it ends")
    parser.add_argument("image", nargs="?")  # checked below: argparse would also ask for CMD
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    job = _job_spec(args)
    if args.detach and (args.interactive or args.tty):
        raise UsageError("flynn-host run: -d cannot go with -i or -t")
    cluster = ClusterClient(args.addr, token=args.token)
    with Progress("placing the job (waiting for the cluster leader)"):
        placed = cluster.add_jobs([job], host_id=args.on)[0]
    if args.detach:
        print_json(placed) if args.json else print(placed["job_id"])
        return EXIT_OK
    # through the agent at -H, which relays to the chosen host; the job waits for this
    # attach to start (its spec asks for stdin), so none of its output is missed
    attachment = _jobs(args).attach_on(placed["host_id"], placed["job_id"],
                                       size=_terminal_size() if args.tty else None)
    if not args.interactive and not args.tty:
        # as docker run without -i: the job reads an empty stdin. (A terminal's input and
        # output are one stream in the engine: closed, it would take the output with it.)
        attachment.close_stdin()
    return _interactive(attachment, tty=args.tty, stdin=args.interactive,
                        job_id=placed["job_id"])


def _job_spec(args) -> dict:
    """The job `run` submits: -f's spec (if given) with the flags on top."""
    job = _spec_file(args.file) if args.file else {}
    config = job.setdefault("config", {})
    if not isinstance(config, dict):
        raise UsageError("flynn-host run: -f: `config` must be an object")
    image = args.image or config.get("image")
    if not image:
        raise UsageError("flynn-host run: an IMAGE is required (flynn-host run --help)")
    config["image"] = image
    if args.cmd:
        config["cmd"] = args.cmd
    config.setdefault("cmd", None)
    if args.entrypoint is not None:
        config["entrypoint"] = [args.entrypoint] if args.entrypoint else []
    if args.workdir:
        config["working_dir"] = args.workdir
    if args.user:
        config["user"] = args.user
    config["env"] = dict(config.get("env") or {}, **dict(args.env))
    config["ports"] = list(config.get("ports") or []) + args.port
    # attached runs start once attached (stdin); detached ones as the spec says
    config["stdin"] = bool(config.get("stdin")) or not args.detach
    config["tty"] = bool(config.get("tty")) or args.tty
    resources = job.setdefault("resources", {})
    if args.memory is not None:
        resources["memory_mb"] = args.memory
    if args.cpu is not None:
        resources["cpu_shares"] = args.cpu
    if args.id:
        job["id"] = args.id
    return job


def _spec_file(path: str) -> dict:
    try:
        text = sys.stdin.read() if path == "-" else open(path).read()
        spec = simplejson.loads(text)
    except OSError as e:
        raise UsageError(f"flynn-host run: -f {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"flynn-host run: -f {path}: not JSON: {e}") from None
    if not isinstance(spec, dict):
        raise UsageError(f"flynn-host run: -f {path}: must be a job object "
                         '({"config": {"image": ...}, ...})')
    return spec


#: as docker run: the job could not be started at all
EXIT_RUN_FAILED = 125


def cmd_attach(argv):
    parser = _parser("attach", "Join a running job: its output here, our stdin to it (-i), "
                     "Ctrl-C sent to it as SIGINT.", "  flynn-host attach web-1\n"
                     "  flynn-host attach -i -t shell-1")
    parser.add_argument("-i", "--interactive", action="store_true", help="send our stdin")
    parser.add_argument("-t", "--tty", action="store_true", help="our terminal goes raw")
    parser.add_argument("job_id", type=_job_id, metavar="JOB")
    args = parser.parse_args(argv)
    job_id, = _resolve(args, [args.job_id])  # a clear 404 before any upgrade
    attachment = _jobs(args).attach(job_id)
    size = _terminal_size() if args.tty else None
    if size:
        attachment.resize(*size)
    return _interactive(attachment, tty=args.tty, stdin=args.interactive, job_id=job_id)


def _terminal_size():
    """(rows, columns) of our terminal, or None when stdin is not one or does not know."""
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
    except OSError:
        return None
    return (size.lines, size.columns) if size.lines and size.columns else None


def _interactive(attachment, tty: bool, stdin: bool, job_id: str = "") -> int:
    """Relay an attach until the job ends; returns its exit status. Without a TTY, the first
    Ctrl-C is sent to the job as SIGINT (it decides to end) and a second one detaches, leaving
    the job running (exit 130); SIGTERM is sent to the job."""
    import signal
    restore = None
    if tty and sys.stdin.isatty():
        import termios
        import tty as terminal
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        terminal.setraw(fd)
        restore = lambda: termios.tcsetattr(fd, termios.TCSADRAIN, saved)  # noqa: E731

        def resize():
            size = _terminal_size()
            if size:
                attachment.resize(*size)
        gevent.signal_handler(signal.SIGWINCH, resize)
    detached = gevent.event.Event()
    interrupts = 0

    def interrupt():
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            detached.set()
            return
        attachment.signal("INT")
        if sys.stderr.isatty():
            sys.stderr.write("\r\nflynn-host: SIGINT sent to the job; Ctrl-C again to "
                             "detach\r\n")
    gevent.signal_handler(signal.SIGINT, interrupt)
    gevent.signal_handler(signal.SIGTERM, lambda: attachment.signal("TERM"))
    pump = gevent.spawn(_pump_stdin, attachment) if stdin else None
    relay = gevent.spawn(_outcome, _relay_output, attachment, job_id)
    try:
        gevent.wait([relay, detached], count=1)
        if not relay.ready():
            relay.kill()
            print(f"\r\nflynn-host: detached; job {job_id} keeps running "
                  f"(flynn-host stop {job_id})", file=sys.stderr)
            return 130
        status, error = relay.get()
        if error is not None:
            raise error
        return status
    finally:
        if pump is not None:
            pump.kill(block=False)
        if restore is not None:
            restore()
        attachment.close()


def _outcome(function, *args) -> tuple:
    """(result, None) or (None, the exception): raised again by the caller, not printed by
    gevent as a greenlet's failure."""
    try:
        return function(*args), None
    except Exception as e:
        return None, e


def _relay_output(attachment, job_id: str) -> int:
    """The job's output to ours until it ends; its exit status."""
    while True:
        kind, payload = attachment.receive()
        if kind == "stdout":
            sys.stdout.buffer.write(payload)
            sys.stdout.buffer.flush()
        elif kind == "stderr":
            sys.stderr.buffer.write(payload)
            sys.stderr.buffer.flush()
        elif kind == "exit":
            if payload["job"]["status"] == "failed":
                print(f"flynn-host: job {printable(job_id)} failed: "
                      f"{printable(payload['error'])}", file=sys.stderr)
                return EXIT_RUN_FAILED
            return payload["status"] if payload["status"] is not None else EXIT_API_ERROR
        elif kind == "error":
            raise errors.FlynnError(payload["message"])


def _pump_stdin(attachment):
    """Our stdin to the job. Reads happen in a thread: a terminal or pipe read would block
    every greenlet."""
    pool = gevent.get_hub().threadpool
    while True:
        data = pool.apply(os.read, (0, 65536))
        if not data:
            attachment.close_stdin()
            return
        attachment.send(data)


def cmd_version(argv):
    parser = _parser("version", "This client's version, and the agent's when it answers.",
                     "  flynn-host version\n  flynn-host version -H 10.0.0.7:1113")
    args = parser.parse_args(argv)
    mine = {"client": host_package.__version__}
    try:
        mine["agent"] = HostClient(args.addr, token=args.token, timeout_s=3).status()["version"]
    except (AgentUnreachable, errors.FlynnError) as e:
        mine["agent_error"] = e.message
    if args.json:
        print_json(mine)
        return
    print(f"client: {mine['client']}")
    print(f"agent:  {mine.get('agent') or 'unreachable at ' + args.addr}")


def cmd_completion(argv):
    parser = _parser("completion", "Print a shell completion script: commands, their options, "
                     "and job ids from the agent.",
                     "  source <(flynn-host completion bash)\n"
                     "  flynn-host completion zsh > ~/.zfunc/_flynn-host")
    parser.add_argument("shell", choices=("bash", "zsh"))
    args = parser.parse_args(argv)
    from host.cli import completion
    print(completion.script(args.shell, {name: _options_of(name) for name in COMMANDS}))


def _options_of(name: str) -> list:
    """The options a command's parser takes (for completion), found by asking it for help."""
    import contextlib
    import io
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit, UsageError):
        COMMANDS[name](["--help"])
    words = text.getvalue().replace(",", " ").replace("[", " ").replace("]", " ").split()
    return sorted({w for w in words if w.startswith("--") or
                   (len(w) == 2 and w[0] == "-" and w[1].isalpha())})


#: every client command, in the order `flynn-host --help` lists them, with its one line there
SUMMARY = {
    "run": "run a job through the cluster (attached, or -d)",
    "ps": "list jobs (-a ended ones, --cluster every host's)",
    "logs": "print a job's output (-f follow, --since, --timestamps)",
    "log": "the same as logs",
    "inspect": "show a job in full (JSON)",
    "stop": "stop jobs (SIGTERM, then SIGKILL), wait until they end",
    "kill": "send jobs SIGKILL (or -s SIGNAL)",
    "signal": "send a job a signal",
    "wait": "wait for jobs to end, print their exit statuses",
    "rm": "remove ended jobs (-f kills active ones first)",
    "attach": "join a running job's output (and stdin with -i)",
    "events": "print events (-f follows, resuming after reconnecting)",
    "status": "this agent's status",
    "hosts": "the cluster's hosts and their allocation",
    "leader": "the cluster leader",
    "leave": "remove this host from the cluster for good",
    "version": "the client's and the agent's versions",
    "completion": "print a bash or zsh completion script",
}
COMMANDS = {"run": cmd_run, "ps": cmd_ps, "logs": cmd_logs, "log": cmd_log,
            "inspect": cmd_inspect, "stop": cmd_stop, "kill": cmd_kill, "signal": cmd_signal,
            "wait": cmd_wait, "rm": cmd_rm, "attach": cmd_attach, "events": cmd_events,
            "status": cmd_status, "hosts": cmd_hosts, "leader": cmd_leader, "leave": cmd_leave,
            "version": cmd_version, "completion": cmd_completion}


def unreachable_message(e: AgentUnreachable) -> str:
    """One line a person can act on, not urllib3's exception chain."""
    addr, reason = e.extra.get("addr"), e.extra.get("reason")
    if not addr or not reason:
        return e.message
    addr = addr.split("://", 1)[-1]
    return (f"cannot reach the agent at {addr}: {reason}; is flynn-host running? "
            "set -H or FLYNN_HOST_ADDR")


def run(name: str, argv: list) -> int:
    try:
        return COMMANDS[name](argv) or EXIT_OK
    except UsageError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    except AgentUnreachable as e:
        print(f"flynn-host {name}: {printable(unreachable_message(e))}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except errors.FlynnError as e:
        print(f"flynn-host {name}: {printable(e.message)}", file=sys.stderr)
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `flynn-host ps | head`
        return EXIT_OK
    except SystemExit as e:  # --help
        return int(e.code or 0)
