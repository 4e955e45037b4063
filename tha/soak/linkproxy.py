"""A loopback TCP proxy for one directed link between two nodes, for the
soak command (tha/soak/cluster.py) and the fault tests.

The caller controls it: ``cut()`` drops the connections it carries and
refuses new ones (accepted, then closed at once) until ``heal()``;
``set_upstream()`` points it at another listening port (a node restarted,
or an imposter) and drops the current connections; ``flaky(max_bytes)``
drops each connection after a random number of bytes (log-uniform in
[1, max_bytes)) until ``heal()``; ``stall()`` stops forwarding (bytes
wait in the proxy, the connections stay open) until ``heal()``, which
forwards what waited; ``corrupt(rate)`` flips one random bit in each
forwarded chunk with probability ``rate`` until ``heal()`` (``flipped``
counts them; ``ways`` and ``count`` limit it to one direction and a number
of flips). Everything stays on 127.0.0.1.
"""

import random
import socket
import threading


class LinkProxy:
    def __init__(self, name: str, rng: random.Random):
        self.name = name
        self.rng = rng
        self.upstream = None          # (host, port) or None: refuse
        self.is_cut = False
        self.flaky_max = None
        self.corrupt_rate = 0.0
        self.corrupt_ways = ("up", "down")
        self.corrupt_left = None      # flips left before corrupting stops (None: no limit)
        self.flipped = 0              # bits flipped so far
        self.flowing = threading.Event()  # clear: stalled, forwarding waits
        self.flowing.set()
        self.lock = threading.Lock()
        self.links: list = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()[:2]
        self.closed = False
        self.accepted = 0
        self.thread = threading.Thread(target=self._accept, daemon=True,
                                       name=f"proxy-{name}")
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                a, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                up, refuse = self.upstream, self.is_cut or self.closed
                budget = (int(self.flaky_max ** self.rng.random())
                          if self.flaky_max else None)
            if refuse or up is None:
                a.close()
                continue
            try:
                b = socket.create_connection(up, timeout=2)
                b.settimeout(None)
                for s in (a, b):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                a.close()
                continue
            link = {"socks": (a, b), "left": budget, "dead": False}
            with self.lock:
                if self.is_cut or self.closed or self.upstream != up:
                    refuse = True
                else:
                    self.links.append(link)
                    self.accepted += 1
            if refuse:
                self._kill(link)
                continue
            for src, dst, way in ((a, b, "up"), (b, a, "down")):
                threading.Thread(target=self._pump, args=(link, src, dst, way),
                                 daemon=True).start()

    def _pump(self, link, src, dst, way) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while not self.flowing.wait(0.05):  # stalled: hold the bytes
                    if link["dead"] or self.closed:
                        return
                with self.lock:
                    if link["dead"]:
                        return
                    cut = False
                    if link["left"] is not None:
                        data = data[:link["left"]]
                        link["left"] -= len(data)
                        cut = link["left"] == 0
                    if (self.corrupt_rate and way in self.corrupt_ways
                            and self.corrupt_left != 0
                            and self.rng.random() < self.corrupt_rate):
                        buf = bytearray(data)
                        buf[self.rng.randrange(len(buf))] ^= 1 << self.rng.randrange(8)
                        data = bytes(buf)
                        self.flipped += 1
                        if self.corrupt_left is not None:
                            self.corrupt_left -= 1
                dst.sendall(data)
                if cut:
                    break
        except OSError:
            pass
        self._kill(link)

    def _kill(self, link) -> None:
        with self.lock:
            link["dead"] = True
            if link in self.links:
                self.links.remove(link)
        for s in link["socks"]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _drop_all(self) -> None:
        with self.lock:
            links = list(self.links)
        for link in links:
            self._kill(link)

    def set_upstream(self, up) -> None:
        with self.lock:
            self.upstream = up
        self._drop_all()

    def cut(self) -> None:
        with self.lock:
            self.is_cut = True
        self._drop_all()

    def flaky(self, max_bytes: int) -> None:
        with self.lock:
            self.flaky_max = max_bytes
        self._drop_all()  # the current connections start over with a budget

    def stall(self) -> None:
        self.flowing.clear()

    def corrupt(self, rate: float, ways=("up", "down"), count=None) -> None:
        """Flips a bit in a chunk with probability ``rate``, in the
        directions ``ways`` ("up": towards the upstream, "down": back), at
        most ``count`` times (None: until heal())."""
        with self.lock:
            self.corrupt_rate = rate
            self.corrupt_ways = tuple(ways)
            self.corrupt_left = count

    def heal(self) -> None:
        with self.lock:
            self.is_cut = False
            self.flaky_max = None
            self.corrupt_rate = 0.0
        self.flowing.set()

    def close(self) -> None:
        self.closed = True
        self.flowing.set()
        try:  # wakes the accept thread; close() alone leaves it blocked
            self.server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.server.close()
        except OSError:
            pass
        self._drop_all()
        self.thread.join(5)
