"""Every etcd call of the project: the only module that imports etcd (python-etcd, the v2 API).

etcd 3.6 drops the v2 API; a v3 backend replaces this one module. Everything above it sees
Registration records, the errors of host.errors, and these few operations:
- host registrations under <prefix>/discoverd/services/flynn-host/<host_id>, with a TTL:
  register (create, or take over our own key left by a crash), refresh (TTL only: etcd notifies
  no watcher), publish (rewrite the value), deregister (compare-and-delete);
- list_hosts and read_hosts (one recursive read, with the X-Etcd-Index to watch from; read_hosts
  decodes it as it is iterated), current_index (etcd's index, from a read of next to nothing),
  watch_hosts (the next change after an index; IndexCleared when etcd no longer holds that
  history) and follow_hosts (the changes after an index, or from now, as etcd streams them);
- plain records under the prefix (the leader's accepted requests, job id claims, jobs assigned
  to hosts): put, create (only if absent), get, read_dir, watch_dir, delete (optionally only if
  unchanged).

Every failure is translated here: etcd unreachable, and every error etcd itself answers (raft
internal error, leader election in progress, watcher cleared, a timeout answered as an error, a
garbled answer) is EtcdUnavailable (retry: true), so that every long-lived loop above survives
every etcd answer by retrying. Only the answers a caller acts on are told apart: a registration
gone or changed (RegistrationLost), a watch whose history is gone (IndexCleared), a key that
exists already (create returns False).
"""
from __future__ import annotations

import codecs
import collections
import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional
from urllib.parse import urlparse

import etcd
import gevent
import simplejson
import urllib3
import urllib3.exceptions

from host import errors

log = logging.getLogger(__name__)
# python-etcd logs every failed request at ERROR with a traceback, even a watch ended because its
# greenlet was killed on a clean stop; this module translates failures and logs them itself.
logging.getLogger("etcd.client").setLevel(logging.CRITICAL)

SERVICE = "flynn-host"


class EtcdUnavailable(errors.Unavailable):
    """etcd did not answer, or answered with an error of its own: retry later."""


class RegistrationLost(errors.FlynnError):
    """Our registration key is gone or was changed by someone else (expired after a pause,
    deleted by an operator): register again."""
    code = "conflict"


class IndexCleared(errors.FlynnError):
    """etcd no longer keeps the history a watch asked for: read everything again."""
    code = "conflict"


@dataclass(frozen=True)
class Registration:
    host_id: str
    value: Optional[str]         # None for a removal
    created_index: int
    modified_index: int


@dataclass(frozen=True)
class HostChange:
    action: str                  # "put" or "remove"
    registration: Registration


def parse_endpoints(text: str) -> tuple:
    """Client URLs "http://10.0.0.1:2379,http://10.0.0.2:2379" (the scheme and the port 2379
    may be left out) -> ((host, port), ...), protocol."""
    peers, protocols = [], set()
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        url = urlparse(item if "://" in item else "http://" + item)
        if not url.hostname or url.scheme not in ("http", "https"):
            raise ValueError(f"not an etcd URL: {item!r}")
        peers.append((url.hostname, url.port or 2379))
        protocols.add(url.scheme)
    if not peers:
        raise ValueError("no etcd endpoints given")
    if len(protocols) > 1:
        raise ValueError("mixed http and https peers")
    return tuple(peers), protocols.pop()


def parse_peer_urls(text: str) -> tuple:
    """ETCD_PEERS as the original meant it: peer addresses of a running etcd cluster
    ("10.0.0.1:2380,10.0.0.2" or URLs; the port defaults to 2380) -> ("http://IP:PORT", ...)."""
    urls = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        url = urlparse(item if "://" in item else "http://" + item)
        if not url.hostname or url.scheme not in ("http", "https"):
            raise ValueError(f"not an etcd peer address: {item!r}")
        if url.path not in ("", "/"):
            raise ValueError(f"an etcd peer address has no path: {item!r}")
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        urls.append(f"{url.scheme}://{host}:{url.port or 2380}")
    if not urls:
        raise ValueError("no etcd peer addresses given")
    return tuple(urls)


#: what a request to a member that cannot be reached (or does not answer in time) raises
_UNREACHABLE = (etcd.EtcdConnectionFailed, urllib3.exceptions.HTTPError, OSError)


def _translate(what: str, e: Exception) -> EtcdUnavailable:
    """Any failure of a request to etcd, as the one error every caller retries."""
    if isinstance(e, _UNREACHABLE):
        return EtcdUnavailable(f"{what}: etcd is unreachable ({e})")
    code = _error_code(e)
    answered = f"error {code}: {e}" if code is not None else f"{type(e).__name__}: {e}"
    return EtcdUnavailable(f"{what}: etcd answered {answered}")


def _error_kind(e: Exception) -> str:
    """A failure's kind, as /metrics labels it: unreachable, or the etcd error code answered."""
    if isinstance(e, _UNREACHABLE):
        return "unreachable"
    code = _error_code(e)
    return f"code_{code}" if code is not None else "other"


def _error_code(e: Exception):
    """The error code etcd answered with (python-etcd keeps its answer as `payload`), or None."""
    return (getattr(e, "payload", None) or {}).get("errorCode")


@dataclass(frozen=True)
class Credentials:
    """etcd's root user, as every agent of a cluster derives it from the cluster's API token:
    a joining host that has the token has the credentials, and nothing else must be handed
    out. The password is never the token itself (an etcd dump shows neither)."""
    user: str
    password: str

    @classmethod
    def from_token(cls, token: str) -> "Credentials":
        digest = hmac.new(token.encode(), b"flynn-host etcd root", hashlib.sha256).hexdigest()
        return cls("root", digest)

    @property
    def header(self) -> dict:
        return urllib3.make_headers(basic_auth=f"{self.user}:{self.password}")


def v3_token(call, credentials: Credentials) -> Optional[str]:
    """A v3 API token for `credentials` (call: (method, path, body) -> (status, answer)); None
    while etcd's v3 authentication is off. EtcdUnavailable when it is on and refuses them."""
    status, answer = call("POST", "/v3/auth/authenticate",
                          {"name": credentials.user, "password": credentials.password})
    if status == 200 and answer.get("token"):
        return answer["token"]
    message = str(answer.get("message") or answer.get("error") or answer)
    if "not enabled" in message:
        return None
    raise EtcdUnavailable(f"etcd's v3 API refuses this agent's credentials ({message}): is "
                          "-auth-token-file the cluster's token?")


#: the bytes a form field carries as they are (urllib.parse.quote_plus's, with safe='')
_FORM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def form_encode(fields) -> bytes:
    """urllib.parse.urlencode(fields) (a mapping or pairs), as bytes, at C speed: quote_plus
    is a Python loop over every byte, 2 ms for a host record of 25 KB, on the serving loop,
    each time the host publishes. Here a replace a distinct byte: '%' first (the others bring
    it in), '+' before the space that becomes one."""
    pairs = fields.items() if hasattr(fields, "items") else fields
    return b"&".join(_form_quote(name) + b"=" + _form_quote(value) for name, value in pairs)


def _form_quote(text) -> bytes:
    data = text if isinstance(text, bytes) else str(text).encode()
    for byte in sorted(set(data) - _FORM_SAFE, key=lambda b: (b != 0x25, b != 0x2B)):
        data = data.replace(bytes((byte,)), b"+" if byte == 0x20 else b"%%%02X" % byte)
    return data


class _FormEncodingPool(urllib3.PoolManager):
    """python-etcd sends every write's fields form-encoded through urllib3, which encodes them
    with urllib.parse.urlencode; this encodes them with form_encode(), the same bytes."""

    def request_encode_body(self, method, url, fields=None, headers=None,
                            encode_multipart=True, multipart_boundary=None, **urlopen_kw):
        if not fields or encode_multipart or "body" in urlopen_kw:
            return super().request_encode_body(method, url, fields, headers, encode_multipart,
                                               multipart_boundary, **urlopen_kw)
        headers = urllib3.HTTPHeaderDict(self.headers if headers is None else headers)
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return self.urlopen(method, url, body=form_encode(fields), headers=headers,
                            **urlopen_kw)


class EtcdDiscovery:
    #: seconds an ordinary etcd request may take
    request_timeout_s = 5
    #: seconds the read of every registration may wait for etcd's answer to start: etcd encodes
    #: all of it before it sends a byte (about 200 MB, and seconds, at 5,000 hosts of 100 jobs)
    list_timeout_s = 60

    def __init__(self, endpoints: str, prefix: str = "/flynn",
                 credentials: Optional[Credentials] = None):
        """`endpoints`: client URLs of etcd members, comma-separated. Requests go to one of them;
        when it cannot be reached (or does not answer in time) the next one is used, so a host
        whose own member is gone carries on through the others. `credentials`: etcd's root
        user, for an etcd that asks for them (secure())."""
        hosts, protocol = parse_endpoints(endpoints)
        self.endpoints = endpoints
        self.credentials = credentials
        self.prefix = prefix.rstrip("/")
        self.services_dir = f"{self.prefix}/discoverd/services/{SERVICE}"
        self._clients = [self._make_client(host, port, protocol) for host, port in hosts]
        self._current = 0
        self.error_counts = collections.Counter()  # kind of failure -> count, for /metrics
        self._services = Records(self, f"discoverd/services/{SERVICE}")

    def _make_client(self, host: str, port: int, protocol: str) -> etcd.Client:
        user, password = (self.credentials.user, self.credentials.password) \
            if self.credentials else (None, None)
        client = etcd.Client(host=host, port=port, protocol=protocol, allow_reconnect=False,
                             read_timeout=self.request_timeout_s, per_host_pool_size=32,
                             username=user, password=password)
        # urllib3 would send a request again, up to 3 times, after etcd got it but did not
        # answer in time: a hung etcd then costs 4 timeouts, and a create that was applied
        # comes back "already exists". Retry only a connection that could not be made; the
        # callers retry the rest, knowingly.
        client.http = _FormEncodingPool(
            num_pools=10, maxsize=32,
            retries=urllib3.Retry(total=None, connect=1, read=False, status=0, other=0))
        return client

    @property
    def _client(self) -> etcd.Client:
        return self._clients[self._current]

    @property
    def _headers(self) -> dict:
        """What a request made here rather than through python-etcd carries: credentials."""
        return self.credentials.header if self.credentials else {}

    @property
    def endpoint(self) -> str:
        """The client URL requests go to now."""
        return self._client.base_uri

    def _failure(self, what: str, e: Exception) -> "EtcdUnavailable":
        """The error to raise for a failed request; a member that could not be reached is
        left for the next endpoint (python-etcd's own reconnection never goes back to a
        member it gave up on)."""
        error = _translate(what, e)
        self.error_counts[_error_kind(e)] += 1
        if len(self._clients) > 1 and isinstance(e, _UNREACHABLE):
            self._current = (self._current + 1) % len(self._clients)
            log.debug("etcd: %s failed; next requests go to %s", what, self.endpoint)
        return error

    def _key(self, host_id: str) -> str:
        return f"{self.services_dir}/{host_id}"

    # ---- health ----------------------------------------------------------------------------

    def secure(self) -> str:
        """Make etcd ask for credentials, if it does not yet; check that ours work if it does.
        Once it listens beyond loopback, an open etcd is a second, open control plane: whoever
        writes an assignment key runs a container. Both of its APIs: the v2 one (our keys: the
        root user with our password, and the guest role, which anyone without credentials has,
        allowed nothing) and the v3 one (its own users: changing the membership, or keys of
        its own). Idempotent: every agent running a member calls it. Returns what was done."""
        enabled = [api for api, ensure in (("v2", self._secure_v2), ("v3", self._secure_v3))
                   if ensure()]
        return ("etcd authentication enabled (" + ", ".join(enabled) + ")") if enabled else \
            "etcd asks for credentials"

    def _auth_call(self, method: str, path: str, body=None, headers=None) -> tuple:
        url = f"{self.endpoint.rstrip('/')}{path}"
        headers = dict(headers or {})
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self._client.http.request(
                method, url, headers=headers, timeout=self.request_timeout_s,
                body=simplejson.dumps(body) if body is not None else None)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._failure(f"{method} {url}", e) from e
        try:
            data = simplejson.loads(response.data) if response.data.strip() else {}
        except ValueError:
            data = {"message": response.data[:200].decode("utf-8", "replace")}
        return response.status, data if isinstance(data, dict) else {}

    def _secure_v2(self) -> bool:
        root = self.credentials.header
        status, state = self._auth_call("GET", "/v2/auth/enable")
        enabling = status == 200 and not state.get("enabled")
        if enabling:
            status, answer = self._auth_call("PUT", "/v2/auth/users/root", {
                "user": "root", "password": self.credentials.password})
            if status >= 300:
                raise EtcdUnavailable(f"etcd refused to create its root user: {answer}")
            status, answer = self._auth_call("PUT", "/v2/auth/enable", headers=root)
            if status >= 300 and status != 409:  # 409: another agent enabled it just now
                raise EtcdUnavailable(f"etcd refused to enable authentication: {answer}")
        status, answer = self._auth_call("GET", "/v2/auth/users/root", headers=root)
        if status == 401:
            raise EtcdUnavailable("etcd asks for credentials, and this agent's are refused: "
                                  "is -auth-token-file the cluster's token?")
        if status >= 300:
            raise EtcdUnavailable(f"etcd's users could not be read: {status} {answer}")
        status, guest = self._auth_call("GET", "/v2/auth/roles/guest", headers=root)
        kv = (guest.get("permissions") or {}).get("kv") or {}
        if status == 200 and (kv.get("read") or kv.get("write")):
            status, answer = self._auth_call("PUT", "/v2/auth/roles/guest", {
                "role": "guest", "revoke": {"kv": {"read": kv.get("read") or [],
                                                   "write": kv.get("write") or []}}},
                headers=root)
            if status >= 300:
                raise EtcdUnavailable(f"etcd refused to close its guest access: {answer}")
        return enabling

    def _secure_v3(self) -> bool:
        if v3_token(self._auth_call, self.credentials) is not None:
            return False  # on, and ours work
        for path, body in (("/v3/auth/role/add", {"name": "root"}),
                           ("/v3/auth/user/add", {"name": "root",
                                                  "password": self.credentials.password}),
                           ("/v3/auth/user/changepw", {"name": "root",
                                                       "password": self.credentials.password}),
                           ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
                           ("/v3/auth/enable", {})):
            status, answer = self._auth_call("POST", path, body)
            if status >= 300 and "already exists" not in str(answer.get("message")):
                raise EtcdUnavailable(f"etcd's v3 API refused {path}: {answer}")
        if v3_token(self._auth_call, self.credentials) is None:
            raise EtcdUnavailable("etcd's v3 API did not take authentication on")
        return True

    def ping(self) -> None:
        try:
            self._client.read(self.prefix or "/", timeout=self.request_timeout_s)
        except etcd.EtcdKeyNotFound:
            return
        except Exception as e:
            raise self._failure("reaching etcd", e) from e

    # ---- our registration ------------------------------------------------------------------

    def register(self, host_id: str, value: str, ttl_s: int) -> Optional[Registration]:
        """Create our key; None if it exists already (see registration() and take_over())."""
        key = self._key(host_id)
        try:
            result = self._client.write(key, value, ttl=ttl_s, prevExist=False)
        except etcd.EtcdAlreadyExist:
            return None
        except Exception as e:
            raise self._failure(f"registering {key}", e) from e
        return Registration(host_id, value, result.createdIndex, result.modifiedIndex)

    def registration(self, host_id: str) -> Optional[Registration]:
        """The key of `host_id` as etcd's quorum holds it, or None."""
        record = self._services.get(host_id)
        return record and Registration(host_id, record.value, record.created_index,
                                       record.modified_index)

    def take_over(self, host_id: str, value: str, ttl_s: int, prev_index: int) -> Registration:
        """Rewrite a key our previous run left (it crashed less than a TTL ago), if it is still
        as read: this keeps its createdIndex, and so this host's seniority. RegistrationLost
        if it changed or vanished meanwhile."""
        key = self._key(host_id)
        try:
            result = self._client.write(key, value, ttl=ttl_s, prevIndex=prev_index)
        except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed) as e:
            raise RegistrationLost(f"{key}: {e}") from e
        except Exception as e:
            raise self._failure(f"taking over {key}", e) from e
        return Registration(host_id, value, result.createdIndex, result.modifiedIndex)

    def refresh(self, host_id: str, ttl_s: int, prev_index: int) -> int:
        """Renew the TTL only (no watcher is notified). Returns the new modifiedIndex.
        Raises RegistrationLost if the key vanished or changed under us."""
        key = self._key(host_id)
        try:
            return self._client.refresh(key, ttl_s, prevIndex=prev_index).modifiedIndex
        except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed) as e:
            raise RegistrationLost(f"{key}: {e}") from e
        except Exception as e:
            raise self._failure(f"refreshing {key}", e) from e

    def publish(self, host_id: str, value: str, ttl_s: int, prev_index: int) -> int:
        """Rewrite our value (and TTL); watchers see it. Returns the new modifiedIndex."""
        key = self._key(host_id)
        try:
            return self._client.write(key, value, ttl=ttl_s, prevIndex=prev_index).modifiedIndex
        except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed) as e:
            raise RegistrationLost(f"{key}: {e}") from e
        except Exception as e:
            raise self._failure(f"publishing {key}", e) from e

    def deregister(self, host_id: str, prev_index: int) -> None:
        """Delete our key if it is still ours (compare-and-delete)."""
        key = self._key(host_id)
        try:
            self._client.delete(key, prevIndex=prev_index)
        except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
            pass
        except Exception as e:
            raise self._failure(f"deregistering {key}", e) from e

    # ---- every host's registration -------------------------------------------------------

    def list_hosts(self, quorum: bool = False) -> tuple:
        """(etcd index to watch after, [Registration]) from one recursive read."""
        index, registrations = self.read_hosts(quorum)
        return index, list(registrations)

    def read_hosts(self, quorum: bool = False) -> tuple:
        """list_hosts, with an iterator of the registrations that decodes them as it goes
        (Records.iter_dir): the caller can make each one into its own objects and drop its
        text before the next, rather than hold all of them at once."""
        index, records = self._services.iter_dir(quorum=quorum, timeout_s=self.list_timeout_s)
        return index, (Registration(r.name, r.value, r.created_index, r.modified_index)
                       for r in records)

    def current_index(self) -> int:
        """etcd's index now, from a read of next to nothing (the directory above the
        registrations, whose entries etcd lists without their contents): where to follow the
        registrations from, taken before reading them all."""
        try:
            return self._client.read(os.path.dirname(self.services_dir),
                                     timeout=self.request_timeout_s).etcd_index
        except etcd.EtcdKeyNotFound as e:
            return int((getattr(e, "payload", None) or {}).get("index", 0))
        except Exception as e:
            raise self._failure("reading etcd's index", e) from e

    def leads(self, host_id: str, created_index: int) -> bool:
        """Whether the registration of `host_id` made at `created_index` is, as etcd's quorum
        sees it now, still there and the oldest: the leader. Asked before the leader
        acknowledges anything, so that an agent that only believes it leads (it was paused,
        its key expired) finds out."""
        _, registrations = self.list_hosts(quorum=True)
        oldest = min(registrations, key=lambda r: r.created_index, default=None)
        return (oldest is not None and oldest.host_id == host_id
                and oldest.created_index == created_index)

    def follow_hosts(self, after_index: Optional[int], timeout_s: float,
                     opened: Optional[Callable[[int], None]] = None) -> Iterator[HostChange]:
        """The changes to any registration with an index above `after_index` (None: from now
        on), in order, from one request for as long as etcd streams them (watch_hosts asks
        once a change: at 5,000 hosts a request for each of 500 heartbeats a second). It ends
        after `timeout_s` without a change, or when etcd ends the stream; the caller asks again
        from the last index. `opened` is told etcd's index when etcd took the request (with
        None, every change after it comes). Raises IndexCleared when that history is gone."""
        for record in self._services.stream_dir(after_index, timeout_s, opened):
            yield HostChange("remove" if record.removed else "put",
                             Registration(record.name, record.value, record.created_index,
                                          record.modified_index))

    def watch_hosts(self, after_index: int, timeout_s: float) -> Optional[HostChange]:
        """The next change to any registration with an index above `after_index`, or None after
        `timeout_s` without one. Raises IndexCleared when that history is gone."""
        record = self._services.watch_dir(after_index, timeout_s)
        if record is None:
            return None
        return HostChange("remove" if record.removed else "put",
                          Registration(record.name, record.value, record.created_index,
                                       record.modified_index))


@dataclass(frozen=True)
class Record:
    name: str                    # the key below the directory read or watched, e.g. "h1/web-1"
    value: Optional[str]         # None for a removal
    created_index: int
    modified_index: int
    removed: bool = False


class Records:
    """Plain keys under <prefix>/<path>: no TTL, JSON values written by us."""

    def __init__(self, discovery: EtcdDiscovery, path: str):
        self._discovery = discovery
        self._timeout = discovery.request_timeout_s
        self.dir = f"{discovery.prefix}/{path.strip('/')}"

    @property
    def _client(self) -> etcd.Client:
        return self._discovery._client

    def _failure(self, what: str, e: Exception) -> EtcdUnavailable:
        return self._discovery._failure(what, e)

    def put(self, name: str, value: str) -> int:
        try:
            return self._client.write(f"{self.dir}/{name}", value).modifiedIndex
        except Exception as e:
            raise self._failure(f"writing {self.dir}/{name}", e) from e

    def create(self, name: str, value: str) -> bool:
        """Write the key only if it does not exist (atomic in etcd): True if this call made it."""
        try:
            self._client.write(f"{self.dir}/{name}", value, prevExist=False)
            return True
        except etcd.EtcdAlreadyExist:
            return False
        except Exception as e:
            raise self._failure(f"creating {self.dir}/{name}", e) from e

    def get(self, name: str) -> Optional[Record]:
        """The key as etcd's quorum holds it (never a lagging member's copy), or None."""
        try:
            node = self._client.read(f"{self.dir}/{name}", quorum=True, timeout=self._timeout)
        except etcd.EtcdKeyNotFound:
            return None
        except Exception as e:
            raise self._failure(f"reading {self.dir}/{name}", e) from e
        return Record(name, node.value, node.createdIndex, node.modifiedIndex)

    def delete(self, name: str, prev_index: Optional[int] = None) -> bool:
        """Delete the key (with `prev_index`: only if it is unchanged since that index). True if
        this call deleted it; a key already gone, or changed, is left and gives False."""
        try:
            if prev_index is None:
                self._client.delete(f"{self.dir}/{name}", recursive=True)
            else:
                self._client.delete(f"{self.dir}/{name}", prevIndex=prev_index)
            return True
        except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
            return False
        except Exception as e:
            raise self._failure(f"deleting {self.dir}/{name}", e) from e

    def read_dir(self, quorum: bool = False, timeout_s: Optional[float] = None) -> tuple:
        """(etcd index to watch after, [Record]) for every key below the directory."""
        index, records = self.iter_dir(quorum, timeout_s)
        return index, list(records)

    def iter_dir(self, quorum: bool = False, timeout_s: Optional[float] = None) -> tuple:
        """read_dir with an iterator of the records, which reads and decodes the answer as it
        is taken, a node at a time, and lets other greenlets run between nodes. At 5,000 hosts
        the answer is 200 MB: read whole, then decoded (as python-etcd does), it is twice that
        in memory at once, and a second of json.loads during which no watch is followed (etcd
        keeps its last 1,000 changes: about a second of heartbeats then)."""
        client = self._client
        try:
            response = client.http.request(
                "GET", f"{client.base_uri}{client.key_endpoint}{self.dir}",
                fields={"recursive": "true", "quorum": "true" if quorum else "false"},
                headers=self._discovery._headers, preload_content=False,
                timeout=urllib3.Timeout(connect=self._timeout, read=timeout_s or self._timeout))
        except Exception as e:
            raise self._failure(f"reading {self.dir}", e) from e
        if response.status != 200:
            error = _answered(response)
            if isinstance(error, etcd.EtcdKeyNotFound):
                return int((getattr(error, "payload", None) or {}).get("index", 0)), iter(())
            raise self._failure(f"reading {self.dir}", error) from error
        return int(response.headers.get("X-Etcd-Index") or 1), self._records(response)

    def _records(self, response) -> Iterator[Record]:
        complete = False
        try:
            for node in _dir_leaves(_Text(response)):
                if not node.get("dir") and node["key"] != self.dir:
                    yield Record(node["key"][len(self.dir) + 1:], node.get("value"),
                                 node["createdIndex"], node["modifiedIndex"])
            complete = True
        except (ValueError, KeyError, TypeError, IndexError,  # not an answer of etcd's
                urllib3.exceptions.HTTPError, OSError) as e:
            raise self._failure(f"reading {self.dir}", e) from e
        finally:
            if complete:
                response.drain_conn()  # the answer's end: the connection serves again
            else:
                response.close()
            response.release_conn()

    def watch_dir(self, after_index: int, timeout_s: float) -> Optional[Record]:
        """The next change below the directory after `after_index`, or None on timeout.
        Raises IndexCleared when that history is gone."""
        try:
            result = self._client.read(self.dir, recursive=True, wait=True,
                                       waitIndex=after_index + 1, timeout=timeout_s)
        except (etcd.EtcdWatchTimedOut, urllib3.exceptions.ReadTimeoutError):
            return None  # no change within timeout_s (any other answer is an error: retried
            #              with backoff, never a quick return that would spin the caller)
        except etcd.EtcdEventIndexCleared as e:
            raise IndexCleared(f"etcd history of {self.dir} before {after_index + 1} is "
                               "gone") from e
        except Exception as e:
            raise self._failure(f"watching {self.dir}", e) from e
        removed = result.action in ("delete", "expire", "compareAndDelete")
        return Record(result.key[len(self.dir) + 1:], None if removed else result.value,
                      result.createdIndex, result.modifiedIndex, removed)

    def stream_dir(self, after_index: Optional[int], timeout_s: float,
                   opened: Optional[Callable[[int], None]] = None) -> Iterator[Record]:
        """The changes below the directory after `after_index` (None: from now on), in order,
        as long as etcd streams them (its stream=true watch), or until `timeout_s` without one.
        Raises IndexCleared when that history is gone."""
        client = self._client
        fields = {"wait": "true", "recursive": "true", "stream": "true"}
        if after_index is not None:
            fields["waitIndex"] = str(after_index + 1)
        try:
            response = client.http.request(
                "GET", f"{client.base_uri}{client.key_endpoint}{self.dir}", fields=fields,
                headers=self._discovery._headers, preload_content=False,
                timeout=urllib3.Timeout(connect=self._timeout, read=timeout_s))
        except urllib3.exceptions.ReadTimeoutError:
            return  # no answer within timeout_s, as a watch_dir that timed out
        except Exception as e:
            raise self._failure(f"watching {self.dir}", e) from e
        try:
            yield from self._stream(response, after_index, timeout_s, opened)
        finally:  # etcd streams on: this connection cannot serve another request
            response.close()
            response.release_conn()

    def _stream(self, response, after_index: Optional[int], timeout_s: float,
                opened: Optional[Callable[[int], None]]) -> Iterator[Record]:
        if response.status != 200:
            self._raise_answered(response, after_index)
        # etcd's index when it took the watch: a change at or below it came from etcd's history
        # of changes, and then etcd sends that one alone (it only follows for watches that
        # start at what is yet to come)
        start = int(response.headers.get("X-Etcd-Index") or 0)
        if opened is not None:
            opened(start)
        lines, pace, changes = _lines(response), _Pace(timeout_s), 0
        try:
            while True:
                line = None
                with gevent.Timeout(pace.patience(), False):
                    line = next(lines, "")
                if not line:  # quiet for longer than its pace allows, or ended
                    break
                record = self._change(line)
                changes += 1
                pace.note()
                yield record
                if record.modified_index <= start:
                    return  # (a change from the history: one a request)
        except urllib3.exceptions.ReadTimeoutError:
            return  # timeout_s without a change
        except Exception as e:
            raise self._failure(f"watching {self.dir}", e) from e
        if line == "" and not changes:  # ended at once: asking again at once would spin
            raise self._failure(f"watching {self.dir}",
                                ValueError("etcd ended the stream without a change"))
        log.debug("etcd: the stream of %s from %s ended after %d changes (%s)", self.dir,
                  after_index, changes, "by etcd" if line == "" else
                  f"quiet for {pace.patience():.2f} s")

    def _raise_answered(self, response, after_index: Optional[int]):
        """The error etcd answered a watch with, as watch_dir raises it."""
        error = _answered(response)
        if isinstance(error, etcd.EtcdEventIndexCleared):
            raise IndexCleared(f"etcd history of {self.dir} before {(after_index or 0) + 1} "
                               "is gone") from error
        raise self._failure(f"watching {self.dir}", error) from error

    def _change(self, line: str) -> Record:
        action, node = _watch_event(line)
        removed = action in ("delete", "expire", "compareAndDelete")
        return Record(node["key"][len(self.dir) + 1:], None if removed else node.get("value"),
                      node.get("createdIndex"), node["modifiedIndex"], removed)


class _Pace:
    """How long a stream may stay quiet: timeout_s until its second change, then twenty times
    the usual interval between its changes (at least STALL_S). etcd drops a streaming watcher
    that falls 100 changes behind (a client that stopped reading for a moment) without ending
    the stream: it just stops. A stream that stops far short of its pace is asked again, from
    the last change. Not sooner than STALL_S: etcd itself pauses for a fraction of a second
    under load, and asked again from a change behind, etcd gives one change a request, which
    at hundreds of changes a second never catches up."""
    STALL_S = 1.0

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._last: Optional[float] = None
        self._interval: Optional[float] = None  # moving average, seconds

    def patience(self) -> float:
        if self._interval is None:
            return self.timeout_s
        return min(self.timeout_s, max(self.STALL_S, 20 * self._interval))

    def note(self):
        """A change came."""
        now = time.monotonic()
        if self._last is not None:
            gap = now - self._last
            self._interval = gap if self._interval is None else \
                0.9 * self._interval + 0.1 * gap
        self._last = now


def _lines(response) -> Iterator[str]:
    """The lines of a streamed answer as they come (etcd writes an event a line, tens of KB
    that come in pieces: joined once, not piece by piece)."""
    pieces = []
    while True:
        data = response.read1(1 << 20)
        if not data:
            return
        end = data.find(b"\n")
        while end >= 0:
            pieces.append(data[:end])
            line, pieces = b"".join(pieces), []
            if line.strip():
                yield line.decode("utf-8")
            data = data[end + 1:]
            end = data.find(b"\n")
        pieces.append(data)


_ACTION = '{"action":"'


def _watch_event(line: str) -> tuple:
    """(action, node) of an event etcd sent a watch: {"action":...,"node":{...},"prevNode":...}
    with the node alone decoded, not the previous one beside it (as long: a host's previous
    record). An event of another shape is decoded whole."""
    if line.startswith(_ACTION):
        end = line.index('"', len(_ACTION))
        if line.startswith(',"node":', end + 1):
            return line[len(_ACTION):end], _decoder.raw_decode(line, end + len(',"node":') + 1)[0]
    event = json.loads(line)
    return event["action"], event["node"]


_NODES = '"nodes":['
_decoder = json.JSONDecoder()  # python-etcd's decoder; for this, 2.5 times simplejson's speed


def _answered(response) -> Exception:
    """The exception python-etcd raises for the error etcd answered (read, and released)."""
    try:
        payload = json.loads(response.data)
    except ValueError:
        payload = None
    except (urllib3.exceptions.HTTPError, OSError) as e:  # the answer broke off
        return e
    finally:
        response.release_conn()
    if not isinstance(payload, dict):
        payload = {"message": "Bad response",
                   "cause": response.data[:200].decode("utf-8", "replace")}
    try:
        etcd.EtcdError.handle(dict(payload, status=response.status))
    except Exception as e:
        return e
    return etcd.EtcdException(f"etcd answered {response.status}")


class _Text:
    """An answer's text as it is read, a megabyte at a time, held from `position` on."""

    def __init__(self, response):
        self._response = response
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.buffer, self.position = "", 0

    def more(self) -> bool:
        """Read on (what is before `position` is let go); False at the answer's end."""
        data = self._response.read(1 << 20)
        self.buffer = self.buffer[self.position:] + self._decoder.decode(data, final=not data)
        self.position = 0
        return bool(data)

    def peek(self) -> str:
        while self.position >= len(self.buffer):
            if not self.more():
                raise ValueError("etcd's answer ends short")
        return self.buffer[self.position]

    def decode(self):
        """The JSON value at `position`, reading on while it is cut short."""
        while True:
            try:
                value, self.position = _decoder.raw_decode(self.buffer, self.position)
                return value
            except ValueError:
                if not self.more():
                    raise

    def rest(self) -> str:
        while self.more():
            pass
        return self.buffer[self.position:]


def _dir_leaves(text: _Text) -> Iterator[dict]:
    """The leaf nodes of a recursive read's answer, as python-etcd's EtcdResult.leaves finds
    them, but the directory's nodes read and decoded one by one, yielding to other greenlets
    between them. etcd writes the answer compact, {"action":"get","node":{"key":..., "dir":
    true, "nodes":[...], ...}}: the first '"nodes":[' is that array's (inside a string a quote
    is escaped). An answer of another shape is decoded whole."""
    while (start := text.buffer.find(_NODES)) < 0:
        if not text.more():  # no array: an empty directory, or not a directory
            yield from _leaves(json.loads(text.buffer)["node"])
            return
    try:
        head = json.loads(text.buffer[:start] + _NODES + "]}}")
    except ValueError:
        head = None
    if not isinstance(head, dict) or not isinstance(head.get("node"), dict) or \
            not head["node"].get("dir"):
        yield from _leaves(json.loads(text.rest())["node"])
        return
    text.position = start + len(_NODES)
    while text.peek() != "]":
        yield from _leaves(text.decode())
        if text.peek() == ",":
            text.position += 1
        elif text.peek() != "]":
            raise ValueError(f"unexpected {text.peek()!r} in etcd's answer")
        gevent.sleep(0)


def _leaves(node: dict) -> Iterator[dict]:
    if node.get("dir") and node.get("nodes"):
        for child in node["nodes"]:
            yield from _leaves(child)
    else:
        yield node


# ---- cluster membership (layer 0: a host's own member joins the cluster) ----------------------

@dataclass(frozen=True)
class Member:
    id: str                      # hex, as the v2 members API takes it
    name: str                    # "" for a member added but not started yet
    peer_urls: tuple
    client_urls: tuple
    is_learner: bool = False     # added as a learner, not promoted to a voting member yet


class EtcdMembers:
    """etcd's members API: who is in the cluster, adding this host's member, promoting it,
    removing one. The members are first found through any peer address (a member's peer port
    answers /members), then changed through their client URLs, as `etcdctl member add` does.

    A member is added as a learner (etcd's v3 API, through its JSON gateway): it does not count
    for the quorum until it is promoted, once it has caught up. Added as a voter at once, a
    cluster of one would lose its quorum until the new member runs, and etcd 3.5.1 spends seven
    seconds of that start asking the cluster a question only a quorum answers."""
    #: seconds one members request may take
    request_timeout_s = 5

    def __init__(self, credentials: Optional[Credentials] = None):
        # changes go through the v3 API, which asks for a token made from them once etcd's
        # authentication is on (EtcdDiscovery.secure()); the peer port's /members needs none
        self._credentials = credentials
        self._http = urllib3.PoolManager(
            num_pools=4, maxsize=4, timeout=self.request_timeout_s,
            retries=urllib3.Retry(total=None, connect=1, read=False, status=0, other=0))

    def _json(self, method: str, url: str, body: Optional[dict] = None, headers=None):
        try:
            headers = dict(headers or {})
            if body is not None:
                headers["Content-Type"] = "application/json"
            response = self._http.request(
                method, url, body=simplejson.dumps(body) if body is not None else None,
                headers=headers)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise EtcdUnavailable(f"{method} {url}: etcd is unreachable ({e})") from e
        if response.status >= 300:
            text = response.data[:300].decode("utf-8", "replace").strip()
            raise EtcdUnavailable(f"{method} {url}: etcd answered {response.status}: {text}")
        try:
            return simplejson.loads(response.data) if response.data.strip() else None
        except ValueError as e:
            raise EtcdUnavailable(f"{method} {url}: not an etcd answer: {e}") from e

    @staticmethod
    def _member(d: dict) -> Member:
        """A member as the peer port's /members (decimal id), the v2 API (hex id) or the v3
        gateway ("ID", a decimal string) tells it."""
        if "ID" in d:
            member_id = format(int(d["ID"]), "x")
        else:
            raw_id = d["id"]
            member_id = format(raw_id, "x") if isinstance(raw_id, int) else str(raw_id)
        return Member(member_id, str(d.get("name") or ""), tuple(d.get("peerURLs") or ()),
                      tuple(d.get("clientURLs") or ()), bool(d.get("isLearner")))

    def through_peers(self, peer_urls) -> list:
        """[Member] as the first of `peer_urls` that answers tells. EtcdUnavailable when none
        does (the error names each)."""
        problems = []
        for peer in peer_urls:
            try:
                answer = self._json("GET", f"{peer.rstrip('/')}/members")
                return [self._member(m) for m in answer]
            except EtcdUnavailable as e:
                problems.append(str(e))
            except (TypeError, KeyError, ValueError) as e:
                problems.append(f"{peer}: not a members list ({e!r})")
        raise EtcdUnavailable("no etcd peer answered: " + "; ".join(problems))

    def _through_clients(self, members: list, call):
        problems = []
        voters_first = sorted(members, key=lambda m: m.is_learner)  # a learner serves no change
        for url in [u for m in voters_first for u in m.client_urls]:
            try:
                return call(url.rstrip("/"))
            except EtcdUnavailable as e:
                problems.append(str(e))
        raise EtcdUnavailable("no etcd member took the change: " +
                              ("; ".join(problems) or "no member has a client URL"))

    def _v3_headers(self, url: str) -> dict:
        """What a v3 call through `url` must carry: a token once etcd's v3 auth is on."""
        if self._credentials is None:
            return {}

        def call(method, path, body):
            try:
                return 200, self._json(method, url + path, body)
            except EtcdUnavailable as e:
                return 400, {"message": str(e)}
        token = v3_token(call, self._credentials)
        return {"Authorization": token} if token else {}

    def add(self, members: list, peer_url: str) -> Member:
        """Add a learner with `peer_url` through the cluster of `members`; the new Member
        (without a name until it starts)."""
        return self._through_clients(members, lambda url: self._member(self._json(
            "POST", f"{url}/v3/cluster/member/add", {"peerURLs": [peer_url], "isLearner": True},
            headers=self._v3_headers(url))["member"]))

    def promote(self, members: list, member_id: str) -> None:
        """Make a learner a voting member. EtcdUnavailable while it has not caught up with
        the leader (etcd refuses until then): the caller retries."""
        self._through_clients(members, lambda url: self._json(
            "POST", f"{url}/v3/cluster/member/promote", {"ID": str(int(member_id, 16))},
            headers=self._v3_headers(url)))

    def remove(self, members: list, member_id: str) -> None:
        self._through_clients(members, lambda url: self._json(
            "POST", f"{url}/v3/cluster/member/remove", {"ID": str(int(member_id, 16))},
            headers=self._v3_headers(url)))
