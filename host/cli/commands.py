"""Client subcommands: `flynn-host run | attach | ps | inspect | log | stop | signal | status |
leader | hosts | events | leave`. Tables for people, `--json` for programs. Exit codes: 0 ok, 1
the agent answered with an error (its message on one line of stderr), 2 usage error, 3 agent
unreachable.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import gevent
import simplejson

from host import errors
from host.auth import TokenError, client_token
from host.client import AgentUnreachable, ClusterClient, HostClient
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


def _print_json(value):
    print(simplejson.dumps(value, indent=2, sort_keys=True))


#: C0 and C1 control characters (ESC among them): a job's image, command, error or id, shown to
#: a person, could otherwise move the cursor, recolour or retitle their terminal
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _printable(value) -> str:
    """`value` as text safe for a terminal: control characters shown as \\xNN."""
    return str(value).translate(_CONTROL)


def _table(rows: list, headers: list):
    rows = [[_printable(x) for x in row] for row in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    for row in [headers] + rows:
        print("   ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def _ports(ports: list) -> str:
    return ",".join(f"{p['port']}->{p['container_port']}/{p['proto']}" for p in ports)


def _hosts_of(addr: str, job_ids: list, token) -> list:
    """[(HostClient of the host running the job, its ActiveJob)] for each of `job_ids`: the
    agent at `addr` if it has the job, else the host the cluster leader's mirror places it on
    (read once for all of them), so that `ps --cluster -q | xargs flynn-host stop` works from
    any host."""
    local, mirror, found = HostClient(addr, token=token), None, []
    for job_id in job_ids:
        try:
            found.append((local, local.job(job_id)))
            continue
        except errors.NotFound as not_here:
            if mirror is None:
                try:
                    mirror = ClusterClient(addr, token=token).hosts()
                except errors.FlynnError:
                    raise not_here from None  # no cluster to ask: the local answer stands
        host_addr = next((host["addr"] for host in mirror
                          if any(job["id"] == job_id for job in host.get("jobs", []))), None)
        if host_addr is None:
            raise errors.NotFound(f"no job {job_id!r} on this host or elsewhere in the cluster")
        remote = HostClient(host_addr, token=token)
        found.append((remote, remote.job(job_id)))
    return found


def _host_of(addr: str, job_id: str, token) -> tuple:
    return _hosts_of(addr, [job_id], token)[0]


# ---- the commands ---------------------------------------------------------------------------

def cmd_ps(argv):
    parser = _parser("ps", "List jobs (running and starting; -a for ended ones too).",
                     "  flynn-host ps\n  flynn-host ps -a --json\n"
                     "  flynn-host ps -q | xargs flynn-host stop\n  flynn-host ps --cluster\n"
                     "  flynn-host ps --host host2")
    parser.add_argument("-a", "--all", action="store_true", help="include ended jobs")
    parser.add_argument("-q", "--quiet", action="store_true", help="job ids only")
    parser.add_argument("--cluster", "-cluster", action="store_true",
                        help="every host's jobs, from the leader")
    parser.add_argument("--host", "-host", metavar="HOST_ID",
                        help="one host's jobs, from the leader")
    args = parser.parse_args(argv)
    if args.cluster or args.host:
        cluster = ClusterClient(args.addr, token=args.token)
        hosts = [cluster.host(args.host)] if args.host else cluster.hosts()
        rows = [dict(job, host_id=host["id"]) for host in hosts for job in host.get("jobs", [])]
        rows = [{"id": j["id"], "status": j["status"], "image": j["image"], "command": "",
                 "created_at": j["created_at"], "host_id": j["host_id"], "ports": j["ports"],
                 "raw": j} for j in rows]
    else:
        rows = [{"id": j["job"]["id"], "status": j["status"], "image": j["job"]["config"]["image"],
                 "command": " ".join(j["job"]["config"]["cmd"] or []),
                 "created_at": j["created_at"], "host_id": j["host_id"], "ports": j["ports"],
                 "raw": j} for j in HostClient(args.addr, token=args.token).jobs()]
    if not args.all:
        rows = [r for r in rows if r["status"] in ("starting", "running")]
    if args.json:
        _print_json([r["raw"] for r in rows])
    elif args.quiet:
        for row in rows:
            print(row["id"])
    else:
        _table([[r["id"], r["status"], r["image"], r["command"][:40], r["created_at"] or "",
                 r["host_id"], _ports(r["ports"])] for r in rows],
               ["JOB ID", "STATE", "IMAGE", "COMMAND", "CREATED", "HOST", "PORTS"])


def cmd_inspect(argv):
    parser = _parser("inspect", "Show a job in full (JSON), on whichever host of the cluster runs "
                     "it.", "  flynn-host inspect web-1")
    parser.add_argument("job_id", type=_job_id)
    args = parser.parse_args(argv)
    _print_json(_host_of(args.addr, args.job_id, args.token)[1])


def cmd_log(argv):
    parser = _parser("log", "Print a job's output.",
                     "  flynn-host log web-1\n  flynn-host log -f --tail 10 web-1")
    parser.add_argument("job_id", type=_job_id)
    parser.add_argument("-f", "--follow", action="store_true", help="until the job ends")
    parser.add_argument("--tail", "-tail", type=int, help="only the last N lines")
    args = parser.parse_args(argv)
    if args.tail is not None and args.tail < 0:
        raise UsageError("flynn-host log: --tail must be 0 or more")
    out = sys.stdout.buffer
    host, _ = _host_of(args.addr, args.job_id, args.token)
    for chunk in host.log(args.job_id, follow=args.follow, tail=args.tail):
        out.write(chunk)
        out.flush()


def cmd_stop(argv):
    parser = _parser("stop", "Stop jobs, on whichever hosts run them: SIGTERM, then SIGKILL after "
                     "the timeout. Returns once they have ended.",
                     "  flynn-host stop web-1 web-2\n  flynn-host stop --timeout 2 web-1\n"
                     "  flynn-host ps --cluster -q | xargs flynn-host stop")
    parser.add_argument("job_ids", nargs="+", type=_job_id)
    parser.add_argument("--timeout", "-timeout", type=float, default=None,
                        help="seconds before SIGKILL (default 10)")
    args = parser.parse_args(argv)
    with Progress(f"stopping {len(args.job_ids)} job(s)"):
        hosts = [host for host, _ in _hosts_of(args.addr, args.job_ids, args.token)]
        for host, job_id in zip(hosts, args.job_ids):
            host.stop_job(job_id, args.timeout)
        # like docker stop: return once they have stopped
        stopped = [_wait_for_job(host, job_id, final=True,
                                 timeout_s=(10 if args.timeout is None else args.timeout) + 30)
                   for host, job_id in zip(hosts, args.job_ids)]
    if args.json:
        _print_json(stopped)
    else:
        for job in stopped:
            print(job["job"]["id"])


def cmd_signal(argv):
    parser = _parser("signal", "Send a signal to a running job.",
                     "  flynn-host signal web-1 HUP")
    parser.add_argument("job_id", type=_job_id)
    parser.add_argument("signal")
    args = parser.parse_args(argv)
    signal = int(args.signal) if args.signal.isdigit() else args.signal
    job = _host_of(args.addr, args.job_id, args.token)[0].signal_job(args.job_id, signal)
    _print_json(job) if args.json else print(job["job"]["id"])


def cmd_status(argv):
    parser = _parser("status", "This agent's status.", "  flynn-host status --json")
    args = parser.parse_args(argv)
    status = HostClient(args.addr, token=args.token).status()
    if args.json:
        _print_json(status)
        return
    leader = status["leader"]
    for key, value in (("id", status["id"]), ("addr", status["addr"]),
                       ("version", status["version"]),
                       ("leader", f"{leader['id']} ({leader['addr']})" if leader else "none"),
                       ("docker", status["docker"]), ("etcd", status["etcd"]),
                       ("jobs", ", ".join(f"{k} {v}" for k, v in sorted(status["jobs"].items()))
                        or "none")):
        print(f"{key + ':':<9}{_printable(value)}")


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
        _print_json(left)
        return
    removed = left.get("etcd_member_removed")
    print(f"{left['host_id']} left the cluster" +
          (f"; etcd member {removed} removed" if removed else ""))


def cmd_leader(argv):
    parser = _parser("leader", "The cluster leader.", "  flynn-host leader")
    args = parser.parse_args(argv)
    with Progress("waiting for a leader"):
        leader = ClusterClient(args.addr, token=args.token).leader()
    _print_json(leader) if args.json else print(f"{leader['id']} {leader['addr']}")


def cmd_hosts(argv):
    parser = _parser("hosts", "The cluster's hosts, from the leader's mirror.",
                     "  flynn-host hosts\n  flynn-host hosts --json")
    args = parser.parse_args(argv)
    with Progress("waiting for the cluster leader"):
        hosts = ClusterClient(args.addr, token=args.token).hosts()
    if args.json:
        _print_json(hosts)
        return
    rows = []
    for host in hosts:
        total, used = host.get("resources", {}), host.get("allocated", {})
        active = sum(1 for j in host.get("jobs", []) if j["status"] in ("starting", "running"))
        rows.append([host["id"], host["addr"], "*" if host.get("leader") else "", active,
                     f"{used.get('memory_mb', 0)}/{total.get('memory_mb', 0)} MiB",
                     f"{used.get('cpu_shares', 0)}/{total.get('cpu_shares', 0)}",
                     host.get("registered_at", "")])
    _table(rows, ["HOST ID", "ADDR", "LEADER", "JOBS", "MEMORY", "CPU", "REGISTERED"])


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
            print(_printable(f"{event['cursor']}  {event['time']}  {event['type']} "
                             f"{event['event']}  host={event['host_id']}" +
                             (f" job={event['job_id']} {job.get('status')}"
                              if event.get("job_id") else "")), flush=True)
    if args.follow:
        for event in client.follow_events(since=args.since):
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
    host, _, container = text.rpartition(":")
    try:
        return {"port": int(host) if host else 0, "container_port": int(container) or None}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a port: {text!r} (PORT or HOSTPORT:PORT)") from None


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
                     "HOST). Without -d, print its output and exit with its exit status.",
                     "  flynn-host run flynn-test/busybox echo hello\n"
                     "  flynn-host run -d -p 8080 -m 64m --id web-1 busybox httpd -f -p 8080\n"
                     "  flynn-host run --on host2 -e GREETING=hi busybox env")
    parser.add_argument("-e", "--env", "-env", type=_env, action="append", default=[],
                        help="KEY=VALUE, repeatable")
    parser.add_argument("-p", "--port", "-port", type=_port, action="append", default=[],
                        help="container PORT (a host port is allocated) or HOSTPORT:PORT")
    parser.add_argument("-m", "--memory", "-memory", type=_memory_mb, default=0,
                        help="memory limit, MiB (64, 64m, 1g)")
    parser.add_argument("--cpu", "-cpu", type=int, default=0, help="CPU shares")
    parser.add_argument("--id", "-id", type=_job_id, help="job id (default: generated)")
    parser.add_argument("--on", "-on", help="host to run on (default: the leader places it)")
    parser.add_argument("-d", "--detach", action="store_true", help="print the job id and exit")
    parser.add_argument("-i", "--interactive", action="store_true",
                        help="attach stdin (the job starts once attached: no output is lost)")
    parser.add_argument("-t", "--tty", action="store_true",
                        help="give the job a terminal; ours goes raw until it ends")
    parser.add_argument("image", nargs="?")  # checked below: argparse would also ask for CMD
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not args.image:
        raise UsageError("flynn-host run: an IMAGE is required (flynn-host run --help)")
    if args.detach and (args.interactive or args.tty):
        raise UsageError("flynn-host run: -d cannot go with -i or -t")
    # stdin: the job waits for our attach before it starts, so none of its output is lost (a
    # TTY job's input is its terminal either way)
    job = {"config": {"image": args.image, "cmd": args.cmd or None, "env": dict(args.env),
                      "ports": args.port, "stdin": args.interactive or args.tty,
                      "tty": args.tty},
           "resources": {"memory_mb": args.memory, "cpu_shares": args.cpu}}
    if args.id:
        job["id"] = args.id
    cluster = ClusterClient(args.addr, token=args.token)
    with Progress("placing the job (waiting for the cluster leader)"):
        placed = cluster.add_jobs([job], host_id=args.on)[0]
    if args.detach:
        _print_json(placed) if args.json else print(placed["job_id"])
        return EXIT_OK
    host = HostClient(cluster.host(placed["host_id"])["addr"], token=args.token)
    job_id = placed["job_id"]
    if args.interactive or args.tty:
        return _interactive(host.attach(job_id, size=_terminal_size() if args.tty else None),
                            tty=args.tty, stdin=args.interactive)
    with Progress(f"starting job {job_id} on {placed['host_id']}"):
        _wait_for_job(host, job_id)
    outputs = [gevent.spawn(_copy, host.log(job_id, follow=True, stream=name), target)
               for name, target in (("stdout", sys.stdout.buffer), ("stderr", sys.stderr.buffer))]
    gevent.joinall(outputs, raise_error=True)
    ended = _wait_for_job(host, job_id, final=True)
    if ended["status"] == "failed":
        print(f"flynn-host run: job {job_id} failed: {_printable(ended['error'])}",
              file=sys.stderr)
        return EXIT_RUN_FAILED
    return ended["exit_status"] if ended["exit_status"] is not None else EXIT_API_ERROR


#: as docker run: the job could not be started at all
EXIT_RUN_FAILED = 125


def cmd_attach(argv):
    parser = _parser("attach", "Join a running job: its output here, our stdin to it (-i), "
                     "Ctrl-C sent to it as SIGINT.", "  flynn-host attach web-1\n"
                     "  flynn-host attach -i -t shell-1")
    parser.add_argument("-i", "--interactive", action="store_true", help="send our stdin")
    parser.add_argument("-t", "--tty", action="store_true", help="our terminal goes raw")
    parser.add_argument("job_id", type=_job_id)
    args = parser.parse_args(argv)
    host, _ = _host_of(args.addr, args.job_id, args.token)  # a clear 404 before any upgrade
    attachment = host.attach(args.job_id)
    size = _terminal_size() if args.tty else None
    if size:
        attachment.resize(*size)
    return _interactive(attachment, tty=args.tty, stdin=args.interactive)


def _terminal_size():
    """(rows, columns) of our terminal, or None when stdin is not one or does not know."""
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
    except OSError:
        return None
    return (size.lines, size.columns) if size.lines and size.columns else None


def _interactive(attachment, tty: bool, stdin: bool) -> int:
    """Relay an attach until the job ends; returns its exit status."""
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
    # without a TTY, Ctrl-C and termination go to the job as signals; it decides to end
    gevent.signal_handler(signal.SIGINT, lambda: attachment.signal("INT"))
    gevent.signal_handler(signal.SIGTERM, lambda: attachment.signal("TERM"))
    pump = gevent.spawn(_pump_stdin, attachment) if stdin else None
    try:
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
                    print(f"flynn-host: job failed: {_printable(payload['error'])}",
                          file=sys.stderr)
                    return EXIT_RUN_FAILED
                return payload["status"] if payload["status"] is not None else EXIT_API_ERROR
            elif kind == "error":
                raise errors.FlynnError(payload["message"])
    finally:
        if pump is not None:
            pump.kill(block=False)
        if restore is not None:
            restore()
        attachment.close()


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


def _copy(chunks, target):
    for chunk in chunks:
        target.write(chunk)
        target.flush()


def _wait_for_job(host: HostClient, job_id: str, final: bool = False, timeout_s: float = 60):
    """The job once its host has it (from the leader's assignment), or once it has ended."""
    deadline = time.monotonic() + timeout_s
    cursor = host.events()["cursor"]
    while True:
        try:
            job = host.job(job_id)
            if not final or job["status"] in ("done", "crashed", "failed"):
                return job
        except errors.NotFound:
            pass
        if time.monotonic() > deadline:
            raise errors.FlynnError(f"job {job_id} did not {'end' if final else 'arrive'} "
                                    f"within {timeout_s:.0f}s")
        cursor = host.events(since=cursor, wait=2, job_id=job_id)["cursor"]


COMMANDS = {"run": cmd_run, "attach": cmd_attach, "ps": cmd_ps, "inspect": cmd_inspect,
            "log": cmd_log, "stop": cmd_stop,
            "signal": cmd_signal, "status": cmd_status, "leader": cmd_leader,
            "hosts": cmd_hosts, "events": cmd_events, "leave": cmd_leave}


def run(name: str, argv: list) -> int:
    try:
        return COMMANDS[name](argv) or EXIT_OK
    except UsageError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    except AgentUnreachable as e:
        print(f"flynn-host {name}: {_printable(e.message)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except errors.FlynnError as e:
        print(f"flynn-host {name}: {_printable(e.message)}", file=sys.stderr)
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `flynn-host ps | head`
        return EXIT_OK
    except SystemExit as e:  # --help
        return int(e.code or 0)
