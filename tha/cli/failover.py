"""``python -m tha demo`` without --local or --role: an active and two
standbys, each its own process, a SIGKILL and a failover, checked.

This parent starts ``python -m tha demo --role ... --events`` three times on
127.0.0.1 (ports picked by the kernel, a generated secret in a temp dir of
mode 0700): standby-2 (a mirror that waits for a new active), standby-1
(promotes after --promote-after without a word from the active, then
carries on the rounds, replicating to standby-2) and the active. A child
prints one JSON event per line (cli/demo.py, ``_Out``) and its stderr goes
to a file in the temp dir, shown when something fails. The parent draws a
line per process (console.LiveLines), kills the active with SIGKILL after
half the rounds and checks:

* no acknowledged sync lost: standby-1 resumed at the killed active's last
  acknowledged seq or later, with the state the active shipped at that seq
  (digests of ``dump()``, which the active says before each sync);
* standby-1's rounds after the promotion ship only what they change (none
  more than twice the largest round of the active);
* standby-2 joined the new active by bulk sync and ends with its state;
* every seq follows the one before; every process ends as it should.

Every process and file it started is gone when it returns, also on Ctrl-C,
SIGTERM or a failure: a child stops when its stdin closes (so also when
this parent dies) and is killed if it does not within a second.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import Error
from .console import LiveLines

ROOT = str(Path(__file__).resolve().parents[2])  # holds tha/: the children import it
NAMES = ("active", "standby-1", "standby-2")     # display order
STARTUP = 30.0   # seconds a child may take to start (imports on a busy machine)


class DemoFailed(Error):
    """A demo process failed, or a step did not happen in time."""


class _Proc:
    """One child: its events go to the demo's queue (a reader thread), its
    stderr to a file; what its events said is kept here."""

    def __init__(self, demo: _Demo, name: str, argv: list):
        self.demo, self.name = demo, name
        self.err_path = demo.tmp / f"{name}.stderr"
        self.may_exit = False    # an exit now is expected, not a failure
        self.rc = None
        self.addr = None         # "HOST:PORT" it listens on
        self.rounds = []         # its round events: acknowledged syncs
        self.shipped = {}        # seq -> digest of the state that frame carries
        self.bulk = None         # the applied event of its bulk sync
        self.promoted = None     # its promoted event
        self.end = None          # its done (an active) or final (a standby) event
        self.first = None        # an active's first sync (the bulk sync) acked
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(
            [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        with open(self.err_path, "wb") as err:
            # its own session: a Ctrl-C on the terminal reaches this parent
            # only, which stops the children itself
            self.p = subprocess.Popen([sys.executable, "-m", "tha", "demo", *argv],
                                      cwd=demo.tmp, env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=err,
                                      start_new_session=True)
        self.label = f"{name} (pid {self.p.pid})"
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"demo-{name}")
        self._reader.start()

    def _read(self) -> None:
        try:
            for raw in self.p.stdout:
                try:
                    ev = json.loads(raw)
                except ValueError:
                    ev = None
                if not isinstance(ev, dict) or not isinstance(ev.get("ev"), str):
                    ev = {"ev": "text", "text": raw.decode(errors="replace").rstrip()}
                self.demo.events.put((self, ev))
        except (OSError, ValueError):
            pass
        self.demo.events.put((self, {"ev": "exit"}))

    def stderr_tail(self, n: int = 6) -> list:
        try:
            text = self.err_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-n:]

    def stop(self, grace: float = 1.0) -> None:
        """Closes its stdin (it stops and exits), kills it after ``grace``."""
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(grace)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self._reader.join(2)
        self.p.stdout.close()


class _Demo:
    def __init__(self, args, board: LiveLines):
        self.args, self.board = args, board
        self.events: queue.Queue = queue.Queue()
        self.procs: list = []
        self.tmp = Path(tempfile.mkdtemp(prefix="tha-demo-"))  # mode 0700

    # -- processes and their events ------------------------------------

    def start(self, name: str, argv: list) -> _Proc:
        a = self.args
        common = ["--events", "--secret-file", self.secret, "--employees", str(a.employees),
                  "--depts", str(a.depts), "--changes", str(a.changes),
                  "--seed", str(a.seed), "--capacity", str(a.capacity),
                  "--timeout", f"{a.timeout}s", "--interval", f"{a.interval}s",
                  "--ack", a.ack] + ["-v"] * a.verbose
        proc = _Proc(self, name, argv + common)
        self.procs.append(proc)
        return proc

    def wait(self, what: str, done, timeout: float) -> None:
        """Handles events until ``done()``; DemoFailed after ``timeout``
        seconds, or as soon as a process fails."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoFailed(f"{what}: not within {timeout:g}s")
            try:
                proc, ev = self.events.get(timeout=min(left, 0.1))
            except queue.Empty:
                self.board.refresh()
                continue
            self.handle(proc, ev)

    def handle(self, proc: _Proc, ev: dict) -> None:
        kind = ev["ev"]
        if kind == "listening":
            proc.addr = f"{ev['host']}:{ev['port']}"
        elif kind == "bulk":
            proc.first = ev
            self.board.note(f"{proc.label}: first sync acknowledged in {ev['ms']:.1f} ms: "
                            f"standby-1 bulk synced at seq {ev['seq']} "
                            f"({ev['bytes']:,} bytes of image)")
        elif kind == "shipping":
            proc.shipped[ev["seq"]] = ev["digest"]
        elif kind == "round":
            proc.rounds.append(ev)
            self.board.set(proc.name, f"{proc.name:<9} active  seq {ev['seq']:>4}  dirty "
                           f"{ev['dirty']:>4}  {ev['bytes']:>8,} B  sync "
                           f"{ev['ms']:5.2f} ms  round {ev['round']}")
        elif kind == "applied":
            if ev["bulk"]:
                proc.bulk = ev
                if proc.name == "standby-2":
                    self.board.note(f"{proc.label}: joined the new active by bulk sync, "
                                    f"live at seq {ev['seq']} ({ev['bytes']:,} bytes)")
            how = "bulk sync" if ev["bulk"] else "applied  "
            self.board.set(proc.name, f"{proc.name:<9} standby seq {ev['seq']:>4}  "
                           f"{how} {ev['bytes']:>9,} B")
        elif kind == "promoted":
            proc.promoted = ev
        elif kind in ("done", "final"):
            proc.end = ev
        elif kind == "waiting":
            self.board.note(f"{proc.label}: {ev['text']}")
        elif kind == "error":
            raise DemoFailed(f"{proc.label}: {ev['text']}")
        elif kind == "exit":
            proc.rc = proc.p.wait()
            if not proc.may_exit:
                tail = proc.stderr_tail(1)
                raise DemoFailed(f"{proc.label} exited with status {proc.rc}"
                                 + (f": {tail[0]}" if tail else ""))

    # -- the run ---------------------------------------------------------

    def run(self) -> int:
        a, note = self.args, self.board.note
        before = a.rounds // 2
        after = a.rounds - before
        if a.secret_file:
            self.secret = a.secret_file
            where = a.secret_file
        else:
            self.secret = str(self.tmp / "secret")
            fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            where = f"a generated key in {self.tmp}"
        note(f"tha demo: an active and two standbys, each its own process on 127.0.0.1 "
             f"(secret: {where})")
        note(f"  {a.employees:,} employees in {a.depts} departments; a round changes "
             f"{a.changes} of them with plain writes, then sync(ack=\"{a.ack}\"); "
             f"the active is killed with SIGKILL after round {before}")

        s2 = self.start("standby-2", ["--role", "standby", "--listen", "127.0.0.1:0"])
        self.wait(f"{s2.label} listening", lambda: s2.addr, STARTUP)
        note(f"{s2.label}: listening on {s2.addr}; it waits for a new active")
        self.board.set("standby-2", "standby-2 standby waiting for a new active")
        s1 = self.start("standby-1", ["--role", "standby", "--listen", "127.0.0.1:0",
                                      "--promote-after", f"{a.promote_after}s",
                                      "--standby", s2.addr, "--rounds", str(after)])
        self.wait(f"{s1.label} listening", lambda: s1.addr, STARTUP)
        note(f"{s1.label}: listening on {s1.addr}; it promotes after "
             f"{a.promote_after:g}s without a word from the active")
        act = self.start("active", ["--role", "active", "--standby", s1.addr,
                                    "--rounds", str(10 ** 9)])
        self.wait(f"{act.label}'s first sync", lambda: act.first, STARTUP)
        self.wait(f"{act.label}: {before} rounds", lambda: len(act.rounds) >= before,
                  STARTUP + before * (a.interval + a.timeout))

        # the kill: whatever the active said before it died is in its pipe
        act.may_exit = True
        act.p.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        self.wait(f"{act.label} to die", lambda: act.rc is not None, 10)
        acked = act.rounds[-1]["seq"]
        self.board.set("active", f"active    killed  seq {acked:>4}  last acknowledged; "
                       f"SIGKILL after round {len(act.rounds)}")
        note(f"{act.label}: killed with SIGKILL after round {len(act.rounds)}; its last "
             f"acknowledged sync was seq {acked}")

        self.wait(f"{s1.label} to promote", lambda: s1.promoted,
                  a.promote_after + 15)
        resumed = s1.promoted["seq"]
        failover = s1.promoted["t"] - killed_at
        note(f"{s1.label}: no word from the active for {a.promote_after:g}s: promoted "
             f"to epoch {s1.promoted['epoch']}, {failover:.2f} s after the kill; "
             f"resuming from seq {resumed}"
             + (f" (seq {resumed} was in flight when the active died)"
                if resumed == acked + 1 else ""))
        self.wait(f"{s1.label}: {after} rounds as the active", lambda: s1.end,
                  STARTUP + after * (a.interval + a.timeout))
        s1.may_exit = True
        self.wait(f"{s1.label} to exit", lambda: s1.rc is not None, 10)
        s2.may_exit = True
        s2.p.stdin.close()  # stop: it says the state it stops with
        self.wait(f"{s2.label} to stop", lambda: s2.rc is not None, 10)

        self.board.close()  # the live lines stay as they ended; the rest below
        failures = verify(act, s1, s2, acked, resumed, after)
        end1, end2 = s1.end, s2.end or {}
        note("states compared (sha256 of dump()):")
        note(f"  the killed active at seq {resumed}: {act.shipped.get(resumed, '-')}, "
             f"standby-1 as it promoted: {s1.promoted['digest']}: "
             + ("equal" if act.shipped.get(resumed) == s1.promoted["digest"]
                else "DIFFERENT"))
        note(f"  standby-1 at seq {end1['seq']}: {end1['digest']}, standby-2 at seq "
             f"{end2.get('seq')}: {end2.get('digest')}: "
             + ("equal" if end2.get("digest") == end1["digest"] else "DIFFERENT"))
        rounds = act.rounds + s1.rounds
        bulks = [p.bulk["bytes"] for p in (s1, s2) if p.bulk]
        facts = (f"{len(rounds)} syncs ({sum(r['bytes'] for r in rounds):,} bytes), "
                 f"{len(bulks)} bulk syncs ({sum(bulks):,} bytes), "
                 f"failover {failover:.2f} s")
        if failures:
            for f in failures:
                note(f"FAILED: {f}")
            note(f"summary: {facts}, FAILED: {len(failures)} of the checks")
            return 1
        note(f"summary: {facts}, no acknowledged sync lost")
        return 0

    def stop_all(self) -> dict:
        """Ends every process still running; removes the temp dir. Returns
        {label: last stderr lines} of each process, read before."""
        for proc in self.procs:
            proc.stop()
        tails = {p.label: p.stderr_tail() for p in self.procs}
        shutil.rmtree(self.tmp, ignore_errors=True)
        return tails


def verify(act, s1, s2, acked: int, resumed: int, after: int) -> list:
    """What must hold once the run is over, from what the processes said
    (``_Proc`` fields): the reasons it did not, [] if it all held. ``acked``
    is the killed active's last acknowledged seq, ``resumed`` the seq
    standby-1 promoted at, ``after`` its rounds as the active."""
    out = []
    seqs = [r["seq"] for r in act.rounds]
    if seqs != list(range(2, 2 + len(seqs))):
        out.append(f"the active's rounds synced seqs {seqs}, not one after another")
    if resumed < acked:
        out.append(f"acknowledged sync lost: the active's seq {acked} was acknowledged, "
                   f"standby-1 resumed from seq {resumed}")
    if act.shipped.get(resumed) != s1.promoted["digest"]:
        out.append(f"standby-1 resumed at seq {resumed} with a state other than the one "
                   "the active shipped at that seq")
    seqs = [r["seq"] for r in s1.rounds]
    if seqs != list(range(resumed + 1, resumed + 1 + after)):
        out.append(f"standby-1's rounds synced seqs {seqs}, not {resumed + 1}.."
                   f"{resumed + after}")
    most = max((r["bytes"] for r in act.rounds), default=0)
    big = [r for r in s1.rounds if r["bytes"] > 2 * most]
    if big:  # a promoted heap ships what changes, not what it was sent
        out.append(f"standby-1's round {big[0]['round']} after the promotion shipped "
                   f"{big[0]['bytes']:,} bytes, more than twice the active's largest "
                   f"round ({most:,})")
    if s2.bulk is None or s2.bulk["seq"] < resumed:
        out.append("standby-2 did not join the new active by bulk sync")
    end1, end2 = s1.end or {}, s2.end or {}
    if end1.get("seq") != resumed + after or end2.get("seq") != end1.get("seq") \
            or end2.get("digest") != end1.get("digest"):
        out.append(f"standby-2 ended at seq {end2.get('seq')} with another state than "
                   f"standby-1 at seq {end1.get('seq')}")
    for proc, want in ((act, -signal.SIGKILL), (s1, 0), (s2, 0)):
        if proc.rc != want:
            out.append(f"{proc.label} exited with status {proc.rc}, not {want}")
    return out


def _interrupted(_signum, _frame):
    raise KeyboardInterrupt


def run(args) -> int:
    """The demo; 0 if everything held, 1 if not, 130 when interrupted."""
    if args.rounds < 2:
        print("python -m tha demo: error: --rounds must be 2 or more (half before "
              "the kill, half after)", file=sys.stderr)
        return 2
    if args.promote_after is None:
        args.promote_after = 1.0
    t0 = time.monotonic()
    board = LiveLines(NAMES)
    demo, error, rc = None, None, 1
    old = signal.signal(signal.SIGTERM, _interrupted)  # cleans up as Ctrl-C does
    try:
        try:
            demo = _Demo(args, board)
            rc = demo.run()
        except (DemoFailed, OSError) as e:  # OSError: a temp dir, a process, a pipe
            error = f"python -m tha demo: error: {e}"
        except KeyboardInterrupt:
            error, rc = "python -m tha demo: interrupted", 130
        finally:
            board.close()
            tails = demo.stop_all() if demo is not None else {}
    finally:
        signal.signal(signal.SIGTERM, old)
    if error is not None:
        print(error, file=sys.stderr)
    if (rc or args.verbose) and demo is not None:
        for label, lines in tails.items():
            if lines:
                print(f"{label}, the end of its stderr:", file=sys.stderr)
                for line in lines:
                    print("    " + line, file=sys.stderr)
    if demo is not None:
        print(f"stopped {len(demo.procs)} processes, removed {demo.tmp}; "
              f"{time.monotonic() - t0:.1f} s in all")
    return rc
