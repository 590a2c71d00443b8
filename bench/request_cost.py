"""CPU cost of one request in the agent's WSGI app, without the network: what a token check,
the request id and the per-route counting for /metrics add to the hot paths (the long-poll fast
lane, `GET /host/events`, and a Bottle route, `GET /host/jobs/<id>`).

Two in-process agents on the fake engine, one plain (no token, -metrics=false), one secure (a
token and /metrics); the same requests are sent to each in alternating batches, and the median
microseconds per request are printed with the ratio secure / plain. Then the same over HTTP:
two agent processes (the real engine: DOCKER_HOST and the test image, as bin/test provisions),
20 kept-alive clients each sending `GET /host/events?since=0` in alternating rounds.
Last, what host.server's handler saves against gevent's stock pywsgi handler, both serving the
same tiny WSGI app in this process (its lean header parsing, and the headers and a small body in
one send instead of two). `python bench/request_cost.py` (BENCH_REQUESTS, default 20000 per
side).
"""
from gevent import monkey

monkey.patch_all()

import io  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from host.agent import Agent  # noqa: E402
from host.api import create_app  # noqa: E402
from host.config import load_config  # noqa: E402
from host.jobspec import parse_job  # noqa: E402
from host.runtime.fake import FakeRuntime  # noqa: E402

REQUESTS = int(os.environ.get("BENCH_REQUESTS", 20000))
BATCH = 1000
TOKEN = "bench-token-0123456789abcdef"


def app_for(secure: bool):
    state = tempfile.mkdtemp()
    flags = ["-id", "cost", "-state-dir", state, "-external", "127.0.0.1"]
    if secure:
        path = os.path.join(state, "token")
        with open(path, "w") as f:
            f.write(TOKEN + "\n")
        flags += ["-auth-token-file", path]
    else:
        flags.append("-metrics=false")
    agent = Agent(load_config(flags, environ={}), FakeRuntime())
    agent.table.add(parse_job({"config": {"image": "busybox"}}, "j1"))
    return create_app(agent), {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"} if secure else {}


def environ(path: str, query: str, extra: dict) -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
            "RAW_URI": path + ("?" + query if query else ""), "HTTP_HOST": "127.0.0.1",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "1113", "REMOTE_ADDR": "127.0.0.1",
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""), **extra}


def batch(app, extra, path, query) -> float:
    def start_response(status, headers, exc_info=None):
        assert status.startswith("200"), status
    started = time.perf_counter()
    for _ in range(BATCH):
        b"".join(app(environ(path, query, extra), start_response))
    return (time.perf_counter() - started) / BATCH * 1e6


def main():
    sides = {"plain": app_for(False), "secure": app_for(True)}
    print(f"request_cost: {REQUESTS} requests a side, batches of {BATCH}, alternating")
    for label, path, query in (("GET /host/events (fast lane)", "/host/events", "since=0"),
                               ("GET /host/jobs/j1 (Bottle)", "/host/jobs/j1", "")):
        timings = {"plain": [], "secure": []}
        for n in range(REQUESTS // BATCH):
            order = ("plain", "secure") if n % 2 == 0 else ("secure", "plain")
            for side in order:
                app, extra = sides[side]
                timings[side].append(batch(app, extra, path, query))
        plain, secure = (statistics.median(timings[s]) for s in ("plain", "secure"))
        print(f"  {label:<30} plain {plain:6.1f} us   secure {secure:6.1f} us   "
              f"ratio {secure / plain:4.2f}x")


def over_http():
    import gevent
    from tests.support import AgentProcess, remove_host_containers, require_docker
    runtime = require_docker()
    token_file = os.path.join(tempfile.mkdtemp(), "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    agents = {"plain": AgentProcess(f"costplain{os.getpid()}",
                                    args=["-log-level", "warning", "-metrics=false"]).start(),
              "secure": AgentProcess(f"costsecure{os.getpid()}", args=["-log-level", "warning"],
                                     token_file=token_file).start()}
    auth = {"plain": b"", "secure": f"Authorization: Bearer {TOKEN}\r\n".encode()}

    def round_of(side: str, requests: int = 3000, clients: int = 20) -> float:
        request = (b"GET /host/events?since=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth[side] +
                   b"\r\n")
        started = time.perf_counter()
        gevent.joinall([gevent.spawn(_client, agents[side].port, request, requests // clients)
                        for _ in range(clients)], raise_error=True)
        return (time.perf_counter() - started) / requests * 1e6

    try:
        timings = {"plain": [], "secure": []}
        for n in range(8):
            for side in (("plain", "secure") if n % 2 == 0 else ("secure", "plain")):
                timings[side].append(round_of(side))
    finally:
        for agent in agents.values():
            agent.cleanup()
            remove_host_containers(runtime, agent.host_id)
    plain, secure = (statistics.median(timings[s]) for s in ("plain", "secure"))
    print(f"  {'over HTTP, GET /host/events':<30} plain {plain:6.1f} us   secure {secure:6.1f} "
          f"us   ratio {secure / plain:4.2f}x  (20 clients, 8 rounds of 3000)")


def handlers():
    import gevent
    from gevent.pywsgi import WSGIServer
    from host.server import listen_socket, wsgi_server
    body = b'{"events": [], "cursor": 0}'

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    stock = WSGIServer(listen_socket("127.0.0.1", 0), app, log=None)  # TCP_NODELAY too
    stock.start()
    ours = wsgi_server(app, "127.0.0.1", 0)
    ports = {"stock": stock.server_port, "ours": ours.server_port}
    request = (b"GET /host/events?since=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"User-Agent: bench\r\nAccept: */*\r\n\r\n")
    timings = {"stock": [], "ours": []}
    try:
        for n in range(8):
            for side in (("stock", "ours") if n % 2 == 0 else ("ours", "stock")):
                started = time.perf_counter()
                gevent.joinall([gevent.spawn(_client, ports[side], request, 150)
                                for _ in range(20)], raise_error=True)
                timings[side].append((time.perf_counter() - started) / 3000 * 1e6)
    finally:
        stock.stop(timeout=1)
        ours.stop(timeout=1)
    base, lean = (statistics.median(timings[s]) for s in ("stock", "ours"))
    print(f"  {'handler, the same tiny app':<30} stock {base:6.1f} us   ours {lean:6.1f} us   "
          f"ratio {lean / base:4.2f}x  (pywsgi's handler vs host.server's)")


def _client(port: int, request: bytes, count: int):
    import socket
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        for _ in range(count):
            sock.sendall(request)
            while True:
                data += sock.recv(65536)
                head, found, rest = data.partition(b"\r\n\r\n")
                if found:
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(rest) >= length:
                        data = rest[length:]
                        break


if __name__ == "__main__":
    main()
    over_http()
    handlers()
