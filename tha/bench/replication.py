"""``python -m tha bench --replication``: Active -> Standby over loopback TCP
against raw Python sockets, measured in the same run.

The far end always runs in a second process (``python -m
tha.bench.replication peer MODE``): in one process the standby's threads
would fight the active's for the GIL and distort both sides. Measured,
round by round interleaved so a noisy neighbour hits baseline and replication
alike:

  tcp stream      the delta's byte count pushed with one ``sendall`` of a
                  pre-faulted buffer; the peer ``recv_into``\\ s a 1 MiB
                  bytearray (the driver's reader buffer) until it has all of it,
                  then answers one byte. Time: first byte out to that answer in,
                  i.e. the shape of a large ``sync(ack="applied")`` with
                  nothing but the transfer in it
  sync large      ``heap.touch`` of the whole emp array, then
                  ``active.sync(ack="applied")``: delta encode, send, the
                  standby's receive + verify + apply, its ACK
  ping-pong       64 bytes out, 64 back, peer in another process (and, for
                  reference, in a thread of this process); TCP_NODELAY
  sync small      one emp changed and touched, then ``sync(ack="applied")``

Targets (issue 3): sync large >= 50% of tcp stream throughput; sync small
<= 3x the cross-process ping-pong.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time

from ..replication import Active, Standby
from .workload import Graph, machine

TARGET_LARGE_VS_TCP = 0.50   # sync throughput / raw TCP throughput
TARGET_SMALL_VS_PING = 3.0   # sync round trip / 64-byte ping-pong
RECV_BUF = 1 << 20           # the driver's reader buffer
PING = 64


# ---- the far end (another process) ---------------------------------------

def _sink(conn: socket.socket) -> None:
    """Receives length-prefixed bursts into a 1 MiB buffer; acks each."""
    buf = bytearray(RECV_BUF)
    view = memoryview(buf)
    while True:
        hdr = _recv_exact(conn, 8)
        if hdr is None:
            return
        left = int.from_bytes(hdr, "little")
        while left:
            n = conn.recv_into(view, min(left, RECV_BUF))
            if not n:
                return
            left -= n
        conn.sendall(b"k")


def _echo(conn: socket.socket) -> None:
    buf = bytearray(PING)
    while True:
        if _recv_exact(conn, PING, buf) is None:
            return
        conn.sendall(buf)


def _recv_exact(conn, n, buf=None):
    buf = bytearray(n) if buf is None else buf
    view, got = memoryview(buf), 0
    while got < n:
        k = conn.recv_into(view[got:], n - got)
        if not k:
            return None
        got += k
    return buf


def _serve(handler) -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    print(lst.getsockname()[1], flush=True)
    while True:
        conn, _ = lst.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def _secret() -> bytes | None:
    """THA_BENCH_SECRET: measure with an authenticated link (every message
    MAC'd, see docs/protocol.md); unset: no secret."""
    s = os.environ.get("THA_BENCH_SECRET")
    return s.encode() if s else None


def peer(mode: str) -> None:
    """Runs until stdin closes (the benchmark process ended)."""
    if mode == "standby":
        sb = Standby(("127.0.0.1", 0), timeout=30.0, secret=_secret())
        print(sb.address[1], flush=True)
    else:
        threading.Thread(target=_serve, args=({"sink": _sink, "echo": _echo}[mode],),
                         daemon=True).start()
    sys.stdin.read()
    os._exit(0)


class Peer:
    """A ``peer MODE`` child process and the port it listens on."""

    def __init__(self, mode: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tha.bench.replication", "peer", mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.strip():
            self.close()
            raise RuntimeError(f"bench peer {mode!r} did not start")
        self.address = ("127.0.0.1", int(line))

    def connect(self) -> socket.socket:
        s = socket.create_connection(self.address)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- measurements ---------------------------------------------------------

class Bench:
    """The three peers, an Active over a 1M-emp graph, and the buffers;
    each method times one round."""

    def __init__(self, objects: int = 1_000_000):
        self.g = Graph(objects, 0.01)
        self.tiny = Graph(1000, 1.0)  # a small heap: the driver without the codec's scan
        self.peers = [Peer(m) for m in ("sink", "echo", "standby", "standby")]
        sink, echo, sb, sb2 = self.peers
        self.stream = sink.connect()
        self.ping = echo.connect()
        self.pbuf = bytearray(PING)
        g = self.g
        g.heap.touch(g.emps)
        self.large_bytes = g.heap.frame_size("delta")
        self.tx = bytearray(b"\x5a") * self.large_bytes  # pre-faulted
        self.backlog_frames = 4
        self.active = Active(g.heap, [sb.address], timeout=60.0, secret=_secret(),
                             backlog_bytes=self.backlog_frames * self.large_bytes + (64 << 20),
                             peer_timeout=30.0)
        self.active.sync(ack="applied", timeout=60)  # bulk sync first
        # Steady state: a long-running active's backlog is full, and each new
        # frame reuses the memory of the one it drops. Until then every large
        # frame lands on fresh pages, and first-touch page faults (20-130 ms
        # for 97.5 MB on this VM, varying with what the host has to supply)
        # would be measured instead of replication.
        for _ in range(self.backlog_frames + 1):
            g.heap.touch(g.emps)
            self.active.sync(ack="applied", timeout=60)
        self.tiny_active = Active(self.tiny.heap, [sb2.address], timeout=60.0,
                                  secret=_secret())
        self.tiny_active.sync(ack="applied")
        self._i = 0
        self._thread_echo = None

    def tcp_stream(self) -> float:
        s, n = self.stream, len(self.tx)
        t = time.perf_counter()
        s.sendall(n.to_bytes(8, "little"))
        s.sendall(self.tx)
        if s.recv(1) != b"k":
            raise RuntimeError("sink peer went away")
        return time.perf_counter() - t

    def sync_large(self) -> tuple[float, int]:
        g = self.g
        g.heap.touch(g.emps)
        t = time.perf_counter()
        r = self.active.sync(ack="applied")
        return time.perf_counter() - t, r.bytes

    def ping_pong(self, n: int, sock=None) -> list:
        s, buf, out = sock or self.ping, self.pbuf, []
        view = memoryview(buf)
        for _ in range(n):
            t = time.perf_counter()
            s.sendall(buf)
            got = 0
            while got < PING:
                got += s.recv_into(view[got:], PING - got)
            out.append(time.perf_counter() - t)
        return out

    def ping_pong_thread(self, n: int) -> list:
        """Same, against an echo thread of this process (for reference)."""
        if self._thread_echo is None:
            lst = socket.create_server(("127.0.0.1", 0))

            def serve():
                c, _ = lst.accept()
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _echo(c)
            threading.Thread(target=serve, daemon=True).start()
            s = socket.create_connection(lst.getsockname())
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._thread_echo = (lst, s)
        return self.ping_pong(n, self._thread_echo[1])

    def sync_small(self, n: int, tiny: bool = False) -> list:
        g, out = (self.tiny, []) if tiny else (self.g, [])
        emps, heap = g.emps, g.heap
        sync = (self.tiny_active if tiny else self.active).sync
        for _ in range(n):
            self._i += 1
            e = emps + (1 + self._i % (g.n - 1))
            t = time.perf_counter()
            e.salary = float(self._i)
            heap.touch(e)
            sync(ack="applied")
            out.append(time.perf_counter() - t)
        return out

    def close(self) -> None:
        self.active.close()
        self.tiny_active.close()
        for s in (self.stream, self.ping):
            s.close()
        if self._thread_echo:
            for s in self._thread_echo:
                s.close()
        for p in self.peers:
            p.close()


def measure(b: Bench, repeat: int = 5, small: int = 200) -> dict:
    """`repeat` rounds; each: tcp stream, sync large, `small` ping-pongs
    (process, then thread) and `small` small syncs. Seconds."""
    t = {k: [] for k in ("tcp_stream", "sync_large", "ping_process", "ping_thread",
                         "sync_small", "sync_small_tiny")}
    b.sync_small(20)  # warm up
    b.sync_small(20, tiny=True)
    b.ping_pong(20)
    large = b.large_bytes
    for _ in range(repeat):
        t["tcp_stream"].append(b.tcp_stream())
        dt, large = b.sync_large()
        t["sync_large"].append(dt)
        t["ping_process"] += b.ping_pong(small)
        t["ping_thread"] += b.ping_pong_thread(small)
        t["sync_small"] += b.sync_small(small)
        t["sync_small_tiny"] += b.sync_small(small, tiny=True)
    return {"times": t, "large_bytes": large, "stream_bytes": len(b.tx)}


def summarize(times: dict, large_bytes: int, stream_bytes: int) -> dict:
    rows = {}
    for k, v in times.items():
        nbytes = {"tcp_stream": stream_bytes, "sync_large": large_bytes}.get(k)
        r = {"n": len(v), "best_s": min(v), "median_s": statistics.median(v)}
        if nbytes:
            r.update(bytes=nbytes, best_gbps=nbytes / r["best_s"] / 1e9,
                     median_gbps=nbytes / r["median_s"] / 1e9)
        rows[k] = r
    ratios = {}
    for stat in ("best", "median"):
        tcp, sync = rows["tcp_stream"][stat + "_gbps"], rows["sync_large"][stat + "_gbps"]
        ratios[stat] = {
            "large_vs_tcp": sync / tcp,
            "small_vs_ping": rows["sync_small"][stat + "_s"] / rows["ping_process"][stat + "_s"],
            "small_vs_ping_thread": (rows["sync_small"][stat + "_s"]
                                     / rows["ping_thread"][stat + "_s"]),
            "tiny_vs_ping": (rows["sync_small_tiny"][stat + "_s"]
                             / rows["ping_process"][stat + "_s"]),
        }
    return {"rows": rows, "ratios": ratios}


def report(summary: dict, info: dict, out=sys.stdout) -> None:
    m = info["machine"]
    print(f"tha replication benchmark: active here, standby/peers in another process, "
          f"loopback TCP; large delta {info['large_bytes'] / 1e6:.1f} MB "
          f"({info['objects']:,} struct emp), {info['repeat']} rounds", file=out)
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['system']}, "
          f"Python {m['python']}", file=out)
    print(f"{'measurement':<28}{'n':>5}{'best':>12}{'median':>12}{'GB/s':>8}", file=out)
    names = {"tcp_stream": "raw tcp stream", "sync_large": "sync large (applied)",
             "ping_process": "ping-pong 64 B, process", "ping_thread":
             "ping-pong 64 B, thread", "sync_small": "sync 1 object (applied)",
             "sync_small_tiny": "same, 1k-emp heap"}
    for k, r in summary["rows"].items():
        unit = 1e3 if "bytes" in r else 1e6
        u = "ms" if "bytes" in r else "us"
        gb = f"{r['median_gbps']:>8.2f}" if "bytes" in r else ""
        print(f"{names.get(k, k):<28}{r['n']:>5}{r['best_s'] * unit:>9.1f} {u}"
              f"{r['median_s'] * unit:>9.1f} {u}{gb}", file=out)
    for tag in ("best", "median"):
        r = summary["ratios"][tag]
        ok1 = "ok" if r["large_vs_tcp"] >= TARGET_LARGE_VS_TCP else "BELOW TARGET"
        ok2 = "ok" if r["small_vs_ping"] <= TARGET_SMALL_VS_PING else "ABOVE TARGET"
        print(f"{tag + ':':<8}large sync = {r['large_vs_tcp']:.0%} of raw TCP throughput "
              f"(target >= {TARGET_LARGE_VS_TCP:.0%}, {ok1}); small sync = "
              f"{r['small_vs_ping']:.2f}x the process ping-pong (target <= "
              f"{TARGET_SMALL_VS_PING:g}x, {ok2}; {r['small_vs_ping_thread']:.2f}x "
              f"the thread one; {r['tiny_vs_ping']:.2f}x on a 1k-emp heap)", file=out)


def run(objects: int, repeat: int, small: int) -> dict:
    b = Bench(objects)
    try:
        res = measure(b, repeat, small)
    finally:
        b.close()
    summary = summarize(res["times"], res["large_bytes"], res["stream_bytes"])
    info = {"objects": objects, "repeat": repeat, "large_bytes": res["large_bytes"],
            "secret": _secret() is not None, "machine": machine()}
    return {"summary": summary, "info": info}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "peer":
        peer(sys.argv[2])
    else:
        print("usage: python -m tha.bench.replication peer sink|echo|standby",
              file=sys.stderr)
        sys.exit(2)
