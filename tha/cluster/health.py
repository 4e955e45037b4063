"""A node's HTTP endpoint for load balancers and orchestrators, in the
manner of Patroni's REST API:

* ``GET /leader``  — 200 only on the leader that may take syncs now (its
  lease holds, no switchover in progress); 503 elsewhere.
* ``GET /replica`` — 200 on a standby that streams from the leader; 503
  elsewhere.
* ``GET /health``  — 200 while the node runs, whatever its role.
* ``GET /metrics`` — Prometheus text format: role, epoch, seq, lag (frames
  and bytes, per standby on the leader), syncs, sync failures, bytes
  synced and a sync latency histogram.

Every answer but /metrics is the node's status as JSON. ``routes`` adds
handlers: {(method, path prefix): fn(node, handler) -> (code, body bytes,
content type[, headers])} (the CLI's node serves its key-value store so).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..replication.connection import parse_address

ROLES = ("leader", "standby", "candidate", "starting", "stopped")
# sync() latency histogram buckets (seconds); Node counts into them
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def metrics_text(node) -> str:
    st = node.status()
    out = []

    def metric(name, kind, help_, samples):
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
            out.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    metric("tha_node_role", "gauge", "1 for the role this node has now",
           [({"role": r}, int(st["role"] == r)) for r in ROLES])
    metric("tha_node_epoch", "gauge", "the epoch of this node's heap",
           [({}, st["epoch"])])
    metric("tha_node_seq", "gauge", "the last seq this node's heap made or applied",
           [({}, st["seq"])])
    lag = st.get("standbys")
    if lag is not None:
        frames = [({"standby": n}, v["frames"]) for n, v in sorted(lag.items()) if v]
        nbytes = [({"standby": n}, v["bytes"]) for n, v in sorted(lag.items()) if v]
        metric("tha_standby_lag_frames", "gauge",
               "frames the standby has not acknowledged applied", frames)
        metric("tha_standby_lag_bytes", "gauge",
               "bytes of the frames the standby has not acknowledged applied "
               "(of the last 4096 syncs)", nbytes)
        metric("tha_standby_connected", "gauge", "1 if the standby is connected",
               [({"standby": n}, int(v is not None)) for n, v in sorted(lag.items())])
    metric("tha_syncs_total", "counter", "sync() calls that returned", [({}, node.syncs)])
    metric("tha_sync_failures_total", "counter", "sync() calls that raised",
           [({}, node.sync_failures)])
    metric("tha_sync_bytes_total", "counter", "bytes of the frames synced",
           [({}, node.sync_bytes)])
    out.append("# HELP tha_sync_seconds sync() latency")
    out.append("# TYPE tha_sync_seconds histogram")
    total = 0
    for le, n in zip(BUCKETS, node._hist):
        total += n
        out.append(f'tha_sync_seconds_bucket{{le="{le}"}} {total}')
    total += node._hist[-1]
    out.append(f'tha_sync_seconds_bucket{{le="+Inf"}} {total}')
    out.append(f"tha_sync_seconds_sum {node._hist_sum:.6f}")
    out.append(f"tha_sync_seconds_count {total}")
    return "\n".join(out) + "\n"


class HealthServer:
    """Serves ``node``'s endpoint on ``address`` ("HOST:PORT", port 0: any)
    from its own threads."""

    def __init__(self, node, address, routes: dict | None = None):
        host, port = parse_address(address, "Node: http", any_port=True)
        self.node = node
        self.routes = dict(routes or {})
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # no line per request on stderr
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json",
                      headers: dict | None = None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(body)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client gave up waiting: nothing to tell it

            def _route(self, method):
                path = self.path.split("?")[0]
                for (m, prefix), fn in server.routes.items():
                    if m == method and path.startswith(prefix):
                        return self._send(*fn(server.node, self))
                if method not in ("GET", "HEAD"):
                    return self._send(405, b'{"error": "method not allowed"}\n')
                n = server.node
                if path == "/metrics":
                    return self._send(200, metrics_text(n).encode(),
                                      "text/plain; version=0.0.4")
                st = n.status()
                body = (json.dumps(st, sort_keys=True) + "\n").encode()
                if path == "/leader":
                    act = n.active
                    ok = (n.role == "leader" and act is not None and act.may_send()
                          and n._paused is None and time.monotonic() >= n._accept_from)
                    return self._send(200 if ok else 503, body)
                if path == "/replica":
                    ok = n.role == "standby" and st.get("streaming")
                    return self._send(200 if ok else 503, body)
                if path == "/health":
                    return self._send(200 if n.role != "stopped" else 503, body)
                return self._send(404, b'{"error": "no such endpoint"}\n')

            def do_GET(self):
                self._route("GET")

            def do_HEAD(self):
                self._route("HEAD")

            def do_PUT(self):
                self._route("PUT")

            def do_POST(self):
                self._route("POST")

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       name="tha-node-http")
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
