"""What the long-running subcommands (demo roles, standby) share: address,
duration and secret-file parsing, logging, SIGTERM/SIGINT handling, a
console that prints from the main thread only (replication callbacks run
under the heap's lock and must never block on a full stdout pipe), and
what draws on a terminal only (a progress line, live lines per process).
"""

from __future__ import annotations

import argparse
import logging
import queue
import shutil
import signal
import sys
import threading
import time

from ..errors import Error
from ..replication.connection import parse_address


def parse_addr(text: str) -> tuple:
    """'HOST:PORT' -> (host, port); IPv6 as '[::1]:7400'; port 0 (any) too."""
    if text.startswith(":"):  # ':7400': on this machine
        text = "127.0.0.1" + text
    try:
        return parse_address(text, "address", any_port=True)
    except Error as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("address: ")) from None


def parse_size(text: str) -> int:
    """'256M', '1G', '64k', '4096' (bytes) -> bytes, > 0."""
    t = str(text).strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except (ValueError, OverflowError):
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (256M, 1G, 4096)")
    return n


def parse_duration(text: str) -> float:
    """'1s', '500ms', '2' (seconds), '1.5s' -> seconds."""
    t = text.strip().lower()
    scale = 1.0
    if t.endswith("ms"):
        t, scale = t[:-2], 1e-3
    elif t.endswith("s"):
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration "
                                         "(e.g. 1s, 500ms, 2)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration cannot be negative")
    return value


def read_secret(path: str | None) -> bytes | None:
    """The shared secret: the file's raw bytes without the trailing newline."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            secret = f.read()
    except OSError as e:  # a message naming the file, not a traceback
        raise SystemExit(f"python -m tha: error: cannot read the secret file {path}: "
                         f"{e.strerror or e}") from None
    secret = secret.rstrip(b"\r\n")
    if not secret:
        raise SystemExit(f"python -m tha: error: secret file {path} is empty")
    return secret


def common_options() -> argparse.ArgumentParser:
    """-v / --secret-file, for subcommands that talk to peers."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more (-v: INFO, -vv: DEBUG) to stderr")
    p.add_argument("--secret-file", metavar="FILE",
                   help="shared secret (raw bytes; a trailing newline is "
                        "ignored) both nodes must know")
    return p


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if not verbose else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def start(args) -> tuple:
    """What every long-running command does first: logging for -v, the
    secret from --secret-file, a console that SIGTERM/SIGINT stop.
    Returns (console, secret)."""
    setup_logging(args.verbose)
    secret = read_secret(args.secret_file)
    console = Console()
    console.install_signals()
    return console, secret


class Console:
    """Lines queued from any thread, written by the main thread; a stop
    event set by SIGTERM/SIGINT."""

    def __init__(self):
        self.lines: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self._bulk_shown = (None, 0.0)

    def install_signals(self) -> None:
        def on_signal(signum, _frame):
            self.stop.set()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def put(self, line: str, err: bool = False) -> None:
        self.lines.put((line, err))

    def say(self, line: str, err: bool = False) -> None:
        """Print now (main thread only)."""
        stream = sys.stderr if err else sys.stdout
        stream.write(line + "\n")
        stream.flush()

    def pump(self, timeout: float) -> None:
        """Prints queued lines for up to ``timeout`` seconds or until stop."""
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                line, err = self.lines.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            self.say(line, err)

    def flush(self) -> None:
        while True:
            try:
                line, err = self.lines.get_nowait()
            except queue.Empty:
                return
            self.say(line, err)

    def bulk_progress(self, standby) -> None:
        """`bulk 45% 44.1/98.0 MB` on stderr while a bulk sync streams
        (at most five lines a second, and the last one)."""
        done, total = standby.bulk
        if not total:
            return
        shown, when = self._bulk_shown
        now = time.monotonic()
        if (done, total) == shown or (done < total and now - when < 0.2):
            return
        self._bulk_shown = ((done, total), now)
        self.say(f"bulk {100 * done // total:3d}% {done / 1e6:.1f}/{total / 1e6:.1f} MB",
                 err=True)


def terminal_progress(label: str, stream=None):
    """A ``progress(done, total)`` drawing `label  45%  81/181 MB` in place
    on a terminal (at most ten redraws a second, cleared at the end), or
    None when the stream is not a terminal: piped output stays clean."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.1:
            return
        last[0] = now
        if done >= total:
            stream.write("\r\x1b[K")
        else:
            pct = 100 * done // total if total else 0
            stream.write(f"\r{label}  {pct:3d}%  {done / 1e6:,.0f}/{total / 1e6:,.0f} MB")
        stream.flush()
    return progress


class LiveLines:
    """One line per key (a process, say), redrawn in place on a terminal
    (at most twenty redraws a second, and at close()); ``note()`` prints a
    line for good above them. When the stream is not a terminal each
    ``set()`` is a plain line of its own: piped output stays a clean log.
    After close() the lines stay as they were; notes go below them."""

    def __init__(self, keys, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.text = {k: "" for k in keys}   # in display order
        self._drawn = 0                      # board lines now on the screen
        self._when = 0.0
        self._closed = False
        self._stale = False                  # a set() not drawn yet

    def set(self, key, text: str) -> None:
        self.text[key] = text
        if not self.tty:
            self._write(text + "\n")
        elif not self._closed:
            self._stale = True
            if time.monotonic() - self._when >= 0.05:
                self._redraw()

    def refresh(self) -> None:
        """Draws what a set() too soon after a redraw left undrawn; call it
        when idle."""
        if self.tty and self._stale and not self._closed:
            self._redraw()

    def note(self, text: str) -> None:
        if not self.tty or self._closed:
            self._write(text + "\n")
            return
        self._redraw(text)

    def close(self) -> None:
        """The board's last state stays on the screen, the cursor below it."""
        if self.tty and not self._closed:
            self._redraw()
        self._closed = True

    def _redraw(self, note: str | None = None) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        # back to the board's first line, clear to the end of the screen
        out = [f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""]
        if note is not None:
            out.append(note + "\n")
        lines = [t[:width] for t in self.text.values() if t]
        out.extend(line + "\n" for line in lines)
        self._drawn = len(lines)
        self._when = time.monotonic()
        self._stale = False
        self._write("".join(out))

    def _write(self, data: str) -> None:
        self.stream.write(data)
        self.stream.flush()


def print_applied(console: Console):
    """An on_applied callback that queues one line per move of the heap."""
    def on_applied(seq: int, nbytes: int, bulk: bool) -> None:
        if bulk:
            console.put(f"bulk sync live at seq {seq} ({nbytes:,} bytes)")
        else:
            console.put(f"applied seq {seq} ({nbytes:,} bytes)")
    return on_applied
