"""A small etcd v3 client over etcd's JSON gateway (grpc-gateway), with the
standard library only.

Why not a client library: ``etcd3gw`` (the maintained gateway client) does
speak etcd 3.4 — it asks ``/version`` and uses ``/v3/``, which 3.4 serves
beside the older ``/v3beta/`` — but it takes one timeout for the whole
client and pulls in requests, futurist and pbr, while tha depends on cffi
alone. The leader's loop needs a deadline per request (a lease renewal
that has not answered within ``retry_timeout`` counts as failed: Patroni's
rule, see tha/cluster/coord.py), and the handful of calls it makes (range,
put, delete, txn, lease grant / keepalive / revoke) are one JSON POST each.
So this module is those calls over ``http.client``, one persistent
connection per thread, keys and values base64 as the gateway wants them.

The API path is discovered like etcd3gw does: ``GET /version``, then
``/v3/`` for etcd 3.4 and later, ``/v3beta/`` for 3.3 (3.5 dropped
``/v3beta/``; Debian 12's 3.4.23 serves both).
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import urllib.parse

from ..errors import CoordinationError, InvalidArgument


def _b64(data) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with ``prefix``."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"


class KV:
    """One key as etcd holds it (revisions are etcd's global counters)."""

    __slots__ = ("key", "value", "create_revision", "mod_revision", "version", "lease")

    def __init__(self, raw: dict):
        self.key = _unb64(raw.get("key")).decode(errors="replace")
        self.value = _unb64(raw.get("value"))
        self.create_revision = int(raw.get("create_revision", 0))
        self.mod_revision = int(raw.get("mod_revision", 0))
        self.version = int(raw.get("version", 0))
        self.lease = int(raw.get("lease", 0))

    def json(self):
        """The value parsed as JSON; None if it is not."""
        try:
            return json.loads(self.value)
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"<KV {self.key} mod {self.mod_revision} lease {self.lease}>"


def parse_endpoint(url: str) -> tuple:
    """(host, port) of an ``http://HOST:PORT`` endpoint."""
    u = urllib.parse.urlsplit(url if "//" in url else "http://" + url)
    if u.scheme != "http" or not u.hostname:
        raise InvalidArgument(f"etcd endpoint {url!r}: expected http://HOST:PORT "
                              "(https is not supported by this client)")
    try:
        port = u.port or 2379
    except ValueError:
        raise InvalidArgument(f"etcd endpoint {url!r}: bad port") from None
    return u.hostname, port


class Etcd:
    """Client for one etcd cluster: ``endpoints`` is ``http://HOST:PORT``,
    several separated by commas (a failed request moves to the next one).
    ``timeout`` is the default deadline of a request in seconds; every call
    takes its own. Raises CoordinationError when no endpoint answers."""

    def __init__(self, endpoints: str, timeout: float = 2.0):
        self.endpoints = [parse_endpoint(e.strip()) for e in endpoints.split(",")
                          if e.strip()]
        if not self.endpoints:
            raise InvalidArgument("etcd: no endpoint given")
        self.url = endpoints
        self.timeout = timeout
        self._local = threading.local()
        self._current = 0      # the endpoint that answered last
        self._api = None

    # -- transport -------------------------------------------------------

    def _conn(self, ep: int, timeout: float) -> http.client.HTTPConnection:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        c = conns.get(ep)
        if c is None:
            host, port = self.endpoints[ep]
            c = conns[ep] = http.client.HTTPConnection(host, port, timeout=timeout)
        c.timeout = timeout
        if c.sock is not None:
            c.sock.settimeout(timeout)
        return c

    def _drop(self, ep: int) -> None:
        conns = getattr(self._local, "conns", {})
        c = conns.pop(ep, None)
        if c is not None:
            c.close()

    def close(self) -> None:
        """Closes the calling thread's connections (others close with
        their threads)."""
        for ep in list(getattr(self._local, "conns", {})):
            self._drop(ep)

    def _request(self, method: str, path: str, body, timeout: float | None) -> dict:
        timeout = self.timeout if timeout is None else timeout
        data = None if body is None else json.dumps(body).encode()
        errors = []
        n = len(self.endpoints)
        for i in range(n):
            ep = (self._current + i) % n
            host, port = self.endpoints[ep]
            for attempt in (0, 1):  # a kept-alive connection the server closed: once more
                c = self._conn(ep, timeout)
                try:
                    c.request(method, path, body=data,
                              headers={"Content-Type": "application/json"})
                    resp = c.getresponse()
                    raw = resp.read()
                except (http.client.RemoteDisconnected, BrokenPipeError,
                        ConnectionResetError) as e:
                    self._drop(ep)
                    if attempt == 0:
                        continue
                    errors.append(f"{host}:{port}: {e or type(e).__name__}")
                    break
                except (OSError, http.client.HTTPException) as e:
                    self._drop(ep)
                    why = "no answer within %gs" % timeout if isinstance(
                        e, socket.timeout) else (str(e) or type(e).__name__)
                    errors.append(f"{host}:{port}: {why}")
                    break
                if resp.will_close:
                    self._drop(ep)
                try:
                    out = json.loads(raw) if raw else {}
                except ValueError:
                    out = None
                if resp.status != 200 or not isinstance(out, dict):
                    msg = out.get("message") or out.get("error") if isinstance(out, dict) \
                        else raw[:200].decode(errors="replace")
                    if resp.status in (502, 503, 504):
                        errors.append(f"{host}:{port}: HTTP {resp.status}: {msg}")
                        break  # unavailable: another endpoint may answer
                    raise CoordinationError(f"etcd {host}:{port} {path}: HTTP "
                                            f"{resp.status}: {msg}")
                self._current = ep
                return out
        raise CoordinationError(f"etcd {path}: " + "; ".join(errors))

    def api(self, timeout: float | None = None) -> str:
        """The gateway's path prefix, discovered once from /version."""
        if self._api is None:
            v = self._request("GET", "/version", None, timeout).get("etcdserver", "")
            try:
                version = tuple(int(x) for x in v.split(".")[:2])
            except ValueError:
                raise CoordinationError(f"etcd /version: cannot read {v!r}") from None
            self._api = "/v3/" if version >= (3, 4) else "/v3beta/"
        return self._api

    def call(self, what: str, body: dict, timeout: float | None = None) -> dict:
        """POSTs ``body`` to the gateway's ``what`` (e.g. "kv/range")."""
        return self._request("POST", self.api(timeout) + what, body, timeout)

    # -- keys ------------------------------------------------------------

    def get(self, key: str, timeout: float | None = None) -> KV | None:
        kvs = self.call("kv/range", {"key": _b64(key)}, timeout).get("kvs") or []
        return KV(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str, timeout: float | None = None) -> tuple:
        """(every key under ``prefix``, the store's revision)."""
        p = prefix.encode()
        out = self.call("kv/range", {"key": _b64(p), "range_end": _b64(prefix_end(p))},
                        timeout)
        return ([KV(k) for k in out.get("kvs") or []],
                int(out.get("header", {}).get("revision", 0)))

    def put(self, key: str, value, lease: int = 0, timeout: float | None = None) -> int:
        """Returns the revision of the write."""
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("kv/put", body, timeout).get("header", {}).get("revision", 0))

    def delete(self, key: str, timeout: float | None = None) -> int:
        """Returns how many keys were deleted."""
        return int(self.call("kv/deleterange", {"key": _b64(key)}, timeout)
                   .get("deleted", 0))

    def txn(self, compare: list, success: list, failure: list = (),
            timeout: float | None = None) -> tuple:
        """(succeeded, responses, revision): ``compare`` of dicts made by
        cmp_*(), ``success`` / ``failure`` of op_*()."""
        out = self.call("kv/txn", {"compare": list(compare), "success": list(success),
                                   "failure": list(failure)}, timeout)
        return (bool(out.get("succeeded")), out.get("responses") or [],
                int(out.get("header", {}).get("revision", 0)))

    # -- leases ----------------------------------------------------------

    def grant(self, ttl: int, timeout: float | None = None) -> int:
        out = self.call("lease/grant", {"TTL": str(int(ttl))}, timeout)
        if out.get("error"):
            raise CoordinationError(f"etcd lease/grant: {out['error']}")
        return int(out["ID"])

    def keepalive(self, lease: int, timeout: float | None = None) -> int:
        """Renews ``lease``; returns the TTL it has now, 0 if it expired
        (or never existed)."""
        out = self.call("lease/keepalive", {"ID": str(lease)}, timeout)
        return int((out.get("result") or {}).get("TTL", 0))

    def revoke(self, lease: int, timeout: float | None = None) -> None:
        """Ends ``lease`` and deletes its keys (a lease already gone is no
        error)."""
        try:
            self.call("lease/revoke", {"ID": str(lease)}, timeout)
        except CoordinationError as e:
            if "lease not found" not in str(e):
                raise


# compare and op builders for Etcd.txn

def cmp_create(key: str, revision: int, result: str = "EQUAL") -> dict:
    """The key's create_revision (0: the key does not exist)."""
    return {"key": _b64(key), "target": "CREATE", "result": result,
            "create_revision": str(revision)}


def cmp_mod(key: str, revision: int, result: str = "EQUAL") -> dict:
    return {"key": _b64(key), "target": "MOD", "result": result,
            "mod_revision": str(revision)}


def cmp_lease(key: str, lease: int, result: str = "EQUAL") -> dict:
    return {"key": _b64(key), "target": "LEASE", "result": result, "lease": str(lease)}


def op_put(key: str, value, lease: int = 0) -> dict:
    body = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def op_get(key: str, prefix: bool = False) -> dict:
    body = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _b64(prefix_end(key.encode()))
    return {"request_range": body}


def op_delete(key: str) -> dict:
    return {"request_delete_range": {"key": _b64(key)}}


def range_kvs(response: dict) -> list:
    """The KVs of a txn's request_range response."""
    return [KV(k) for k in (response.get("response_range") or {}).get("kvs") or []]


class Watcher:
    """Watches every key under ``prefix`` from its own thread and calls
    ``on_change()`` for each batch of events, and after each reconnect (a
    change may have been missed meanwhile). A hint only: what the caller
    decides comes from its own reads (a lost watch costs latency, never
    correctness). ``close()`` ends it."""

    def __init__(self, client: Etcd, prefix: str, on_change, retry: float = 0.5):
        self.client, self.prefix, self.on_change, self.retry = client, prefix, on_change, retry
        self._stop = threading.Event()
        self._conn = None
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"tha-etcd-watch-{prefix}")
        self.thread.start()

    def _run(self) -> None:
        p = self.prefix.encode()
        body = json.dumps({"create_request": {"key": _b64(p),
                                              "range_end": _b64(prefix_end(p))}})
        while not self._stop.is_set():
            host, port = self.client.endpoints[self.client._current]
            try:
                api = self.client.api()
                c = self._conn = http.client.HTTPConnection(host, port,
                                                            timeout=self.client.timeout)
                c.request("POST", api + "watch", body=body,
                          headers={"Content-Type": "application/json"})
                resp = c.getresponse()
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
                c.sock.settimeout(None)  # events come when they come
                self.on_change()
                while not self._stop.is_set():
                    line = resp.readline()
                    if not line:
                        break
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if (msg.get("result") or {}).get("events"):
                        self.on_change()
            except (OSError, http.client.HTTPException, CoordinationError, ValueError,
                    AttributeError):
                pass
            finally:
                if self._conn is not None:
                    self._conn.close()
            self._stop.wait(self.retry)

    def close(self) -> None:
        self._stop.set()
        c = self._conn
        if c is not None and c.sock is not None:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(2)
