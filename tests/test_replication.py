"""Active -> standby over real loopback TCP, in one process (threads).
Cross-process tests (kill -9, cut links) are in test_failover.py."""

import logging
import os
import socket
import time

import pytest

import tha
from tha.replication import Active, AuthError, Fenced, Standby, SyncTimeout

from org import CDEF, company


@pytest.fixture
def schema():
    return tha.Schema(CDEF)


def mutate(heap, es, round_):
    for i in range(0, len_of(es), 7):
        es[i].salary = round_ * 1000.0 + i
        heap.touch(es + i, "salary")


def len_of(es):
    return 50


def wait_until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_bulk_then_deltas_mirror(schema):
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    es = company(heap)
    with Standby(secret=b"k") as sb, Active(heap, [sb.address], secret=b"k") as act:
        r = act.sync()
        assert sb.wait_for(r.seq, 10)
        assert sb.heap.dump() == heap.dump()
        assert sb.heap.base != heap.base
        for rnd in range(1, 6):
            mutate(heap, es, rnd)
            r = act.sync(ack="applied")
            assert sb.applied_seq == r.seq  # applied before sync returned
            assert sb.heap.dump() == heap.dump()
        assert sb.heap.roots["staff"][3].mgr.id == 1
        assert sb.heap.schema.ffi.string(sb.heap.roots["staff"][3].dept.name) == b"eng"
        st = act.status()
        assert st["role"] == "active" and st["peers"][0]["lag_frames"] == 0
        assert sb.status()["applied_seq"] == r.seq


def test_reserve_takes_the_first_bulk_sync(schema):
    """Standby(reserve=): memory touched at start, taken by the first bulk
    sync's heap (status says what is left), the mirror the same and sound;
    a second bulk sync (a new active) gets fresh pages and works too."""
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    es = company(heap)
    with Standby(reserve=2 << 20) as sb:
        assert sb.status()["reserved"] == 2 << 20
        for rnd in range(2):
            with Active(heap, [sb.address]) as act:
                mutate(heap, es, rnd + 1)
                r = act.sync(ack="applied")
                assert sb.status()["reserved"] == 0
                assert sb.heap.dump() == heap.dump()
                sb.heap.check()
                assert sb.bulk_syncs == rnd + 1
            heap = tha.Heap.from_snapshot(heap.snapshot()) if rnd == 0 else heap
            es = heap.roots["staff"]
    assert r.seq


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1M", 1 << 45])
def test_reserve_must_be_a_size(bad):
    with pytest.raises(tha.InvalidArgument, match="reserve must be a number of bytes"):
        Standby(reserve=bad)


def _overcommit_heuristic():
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "0"
    except OSError:
        return False


@pytest.mark.skipif(not _overcommit_heuristic(),
                    reason="only the kernel's heuristic overcommit refuses the mapping "
                           "(others would let the touching run out of memory)")
def test_a_reserve_the_machine_cannot_give_fails_at_start():
    with pytest.raises(tha.CapacityError, match="cannot give 17,592,186,044,416 bytes"):
        Standby(reserve=1 << 44)


def test_ack_none_and_received(schema):
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    es = company(heap)
    with Standby() as sb, Active(heap, [sb.address]) as act:
        act.sync()  # bulk
        mutate(heap, es, 2)
        r = act.sync(ack="none")
        assert r.acked_by == []
        assert sb.wait_for(r.seq, 10)
        mutate(heap, es, 3)
        r = act.sync(ack="received")
        assert r.acked_by
        assert sb.wait_for(r.seq, 10)
        assert sb.heap.dump() == heap.dump()


def _refusal_logs(caplog, needle):
    return [r for r in caplog.records if r.name == "tha"
            and r.getMessage().startswith("active:") and needle in r.getMessage()]


def test_wrong_secret_is_refused_and_state_untouched(schema, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap = tha.Heap(schema, capacity=8 << 20)
    company(heap)
    mine = tha.Heap(schema, capacity=8 << 20)
    mine.new("struct dept", name=b"kept")
    before = mine.dump()
    with Standby(secret=b"right", heap=mine) as sb, \
            Active(heap, [sb.address], secret=b"wrong", timeout=20.0) as act:
        where = "%s:%d" % sb.address
        # a definite refusal: raised at once (not after the 20 s timeout),
        # naming the standby and the reason
        with pytest.raises(AuthError, match=where + ".*authentication failed"):
            act.sync()
        with pytest.raises(AuthError):  # and again, without a new attempt
            act.sync()
        assert sb.heap.dump() == before
        peer = act.status()["standbys"][where]
        assert "authentication failed" in peer["refused"]
    assert "authentication failed" in caplog.text
    assert len(_refusal_logs(caplog, "authentication failed")) == 1  # logged once


def test_no_secret_on_one_side_is_refused(schema, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap = tha.Heap(schema, capacity=8 << 20)
    with Standby(secret=b"k") as sb, Active(heap, [sb.address], timeout=20.0) as act:
        with pytest.raises(AuthError, match="%s:%d" % sb.address):
            act.sync()
        assert sb.heap is None
    # the other way round: the active has a secret, the standby has none
    with Standby() as sb, Active(heap, [sb.address], secret=b"k", timeout=20.0) as act:
        with pytest.raises(AuthError, match="%s:%d" % sb.address):
            act.sync()
        assert sb.heap is None
    assert "authentication failed" in caplog.text


def test_schema_mismatch_names_the_field(schema, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    other = tha.Schema(CDEF.replace("double salary", "float salary"))
    mine = tha.Heap(other, capacity=8 << 20)
    mine.new("struct dept", name=b"kept")
    before = mine.dump()
    heap = tha.Heap(schema, capacity=8 << 20)
    with Standby(heap=mine) as sb, Active(heap, [sb.address], timeout=20.0) as act:
        with pytest.raises(tha.SchemaMismatch, match="%s:%d.*salary" % sb.address):
            act.sync()
        assert sb.heap.dump() == before
    assert "schema mismatch" in caplog.text and "salary" in caplog.text


def test_a_refused_standby_does_not_block_a_quorum_of_others(schema):
    heap = tha.Heap(schema, capacity=8 << 20)
    company(heap)
    with Standby(secret=b"k") as good, Standby(secret=b"other") as bad, \
            Active(heap, [good.address, bad.address], secret=b"k", ack_quorum=1,
                   timeout=20.0) as act:
        r = act.sync()
        assert r.acked_by == ["%s:%d" % good.address]
        assert bad.heap is None
        # with both required, the refusal is raised (not a timeout)
        with pytest.raises(AuthError, match="%s:%d" % bad.address):
            _sync_all(act)


def _sync_all(act):
    act.ack_quorum = len(act.standbys)
    return act.sync()


def test_unreachable_standby_is_named_with_the_os_error(schema):
    heap = tha.Heap(schema, capacity=8 << 20)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Active(heap, [("127.0.0.1", port)], timeout=1.0) as act:
        with pytest.raises(SyncTimeout, match=r"127\.0\.0\.1:%d \(.*refused" % port):
            act.sync()


def test_garbage_bytes_are_refused(schema, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap = tha.Heap(schema, capacity=8 << 20)
    company(heap)
    with Standby() as sb, Active(heap, [sb.address]) as act:
        act.sync()
        before = sb.heap.dump()
        with socket.create_connection(sb.address) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(100))
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
        assert wait_until(lambda: "garbage" in caplog.text)
        assert sb.heap.dump() == before
        r = act.sync()  # the real active is unaffected
        assert sb.wait_for(r.seq, 5)


def test_promotion_fences_the_old_active(schema):
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    es = company(heap)
    with Standby() as sb, Active(heap, [sb.address], timeout=2.0) as act:
        r = act.sync()
        assert sb.wait_for(r.seq)
        new = sb.promote()
        assert new.stats()["epoch"] == 1
        mutate(heap, es, 9)
        with pytest.raises(Fenced, match="epoch 1"):
            act.sync()
        assert wait_until(lambda: act.fenced)
        with pytest.raises(Fenced):
            act.sync()
        # the promoted heap carries on and can feed a new standby
        new.roots["staff"][0].salary = 42.0
        new.touch(new.roots["staff"], "salary")
        with Standby() as sb2, Active(new, [sb2.address]) as act2:
            r2 = act2.sync()
            assert r2.seq > r.seq  # one series: the new active continues it
            assert sb2.heap.dump() == new.dump()
            assert sb2.heap.stats()["epoch"] == 1


def test_reconnect_resumes_from_backlog(schema, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    es = company(heap)
    with Standby() as sb, Active(heap, [sb.address]) as act:
        act.sync()
        for c in list(sb.conns):  # cut the link from the standby's side
            c.close()
        mutate(heap, es, 4)
        r = act.sync(timeout=10)
        assert sb.heap.dump() == heap.dump()
        assert sb.applied_seq == r.seq
    assert "resuming" in caplog.text


def test_several_standbys_and_quorum(schema):
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    es = company(heap)
    with Standby() as a, Standby() as b, Standby() as c:
        with Active(heap, [a.address, b.address, c.address], ack_quorum=2) as act:
            r = act.sync()
            assert len(r.acked_by) >= 2
            c.close()
            mutate(heap, es, 5)
            r = act.sync(timeout=5)  # two of three suffice
            for sb in (a, b):
                assert sb.wait_for(r.seq)
                assert sb.heap.dump() == heap.dump()


def test_all_standbys_required_by_default(schema):
    heap = tha.Heap(schema, capacity=8 << 20)
    with Standby() as a:
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))  # bound, never listening: nobody answers
        with Active(heap, [a.address, dead.getsockname()], timeout=1.0) as act:
            with pytest.raises(SyncTimeout, match="1 of 2"):
                act.sync()
        dead.close()


def test_non_loopback_listen_needs_a_secret():
    with pytest.raises(tha.Error, match="without a secret"):
        Standby(listen=("0.0.0.0", 0))


def test_tls_with_secret(schema):
    trustme = pytest.importorskip("trustme")
    import ssl
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    es = company(heap)
    with Standby(secret=b"k", ssl_context=server) as sb, \
            Active(heap, [sb.address], secret=b"k", ssl_context=client) as act:
        act.sync()
        mutate(heap, es, 7)
        r = act.sync()
        assert sb.applied_seq == r.seq
        assert sb.heap.dump() == heap.dump()
        assert sb.conns and all("SSL" in type(c.sock).__name__ for c in sb.conns)


def test_tls_client_refuses_an_untrusted_standby(schema):
    trustme = pytest.importorskip("trustme")
    import ssl
    cert = trustme.CA().issue_cert("127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    trustme.CA().configure_trust(client)  # trusts some other CA
    heap = tha.Heap(schema, capacity=8 << 20)
    with Standby(ssl_context=server) as sb, \
            Active(heap, [sb.address], ssl_context=client, timeout=1.0) as act:
        with pytest.raises(SyncTimeout):
            act.sync()
        assert sb.heap is None


def test_slow_standby_is_dropped_not_waited_for(schema, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap = tha.Heap(schema, capacity=64 << 20, tracking="explicit")
    blob = heap.new("char", count=4 << 20)
    heap.roots["blob"] = blob
    with Standby() as fast, Standby() as slow:
        with Active(heap, [fast.address, slow.address], ack_quorum=1,
                    backlog_bytes=2 << 20) as act:
            act.sync()
            assert slow.wait_for(act.heap.stats()["seq"], 10)
            with slow.cond:  # the slow standby stops reading
                for i in range(12):
                    heap.schema.ffi.memmove(blob, bytes([i]) * (4 << 20), 4 << 20)
                    heap.touch(blob)
                    r = act.sync(timeout=10)  # the fast one alone keeps up
                    assert fast.applied_seq == r.seq
            assert wait_until(lambda: "too slow" in caplog.text, 10)
            # released, it comes back (bulk or resume) and converges
            r = act.sync(timeout=10)
            assert slow.wait_for(r.seq, 20)
            assert slow.heap.dump() == heap.dump() == fast.heap.dump()


# ---- the listener against idle, slow and too many connections -------------------

def _tls_pair():
    trustme = pytest.importorskip("trustme")
    import ssl
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def _closed_by_peer(s, timeout):
    """True once the peer closed s (EOF or reset) within timeout; what it
    sent meanwhile (its HELLO, heartbeats) is read and dropped."""
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
    except socket.timeout:
        return False
    except OSError:
        pass
    return True


def _still_open(s):
    """Point check: s has no EOF or reset pending (reads what is there)."""
    s.setblocking(False)
    try:
        while True:
            if not s.recv(4096):
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_an_idle_tcp_connection_does_not_block_a_tls_standby(schema):
    server, client = _tls_pair()
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    company(heap)
    # a long handshake deadline: only per-connection handshakes can help
    with Standby(secret=b"k", ssl_context=server, timeout=30.0) as sb:
        with socket.create_connection(sb.address) as idle:  # says nothing
            with Active(heap, [sb.address], secret=b"k", ssl_context=client,
                        timeout=10.0) as act:
                r = act.sync()
                assert sb.wait_for(r.seq, 10)
                assert sb.heap.dump() == heap.dump()
            assert _still_open(idle)  # not closed before its deadline either


def test_a_silent_tls_client_is_closed_after_the_handshake_deadline(schema):
    server, _client = _tls_pair()
    with Standby(ssl_context=server, timeout=0.5) as sb:
        with socket.create_connection(sb.address) as idle:
            assert _closed_by_peer(idle, 15)


def test_a_silent_plain_peer_is_closed_after_the_handshake_deadline(schema):
    with Standby(timeout=0.5) as sb:
        with socket.create_connection(sb.address) as idle:
            assert _closed_by_peer(idle, 15)


def test_a_trickling_peer_is_closed_after_the_handshake_deadline(schema):
    # one byte every 0.3 s keeps the session's silence timeout quiet; a
    # message header (20 bytes) would take 6 s: the 0.5 s handshake
    # deadline must end it before.
    with Standby(timeout=0.5) as sb:
        with socket.create_connection(sb.address) as s:
            closed = False
            for _ in range(19):
                try:
                    s.send(b"\0")
                except OSError:
                    closed = True
                    break
                if _closed_by_peer(s, 0.3):
                    closed = True
                    break
            assert closed


def test_unauthenticated_connections_are_bounded_the_oldest_closed(schema):
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    company(heap)
    limit = Standby.max_unauthenticated
    socks = []
    try:
        with Standby(secret=b"k", timeout=30.0) as sb:
            for _ in range(limit + 4):
                s = socket.create_connection(sb.address)
                s.settimeout(10)
                assert s.recv(20)  # its HELLO: accepted, in order
                socks.append(s)
            for s in socks[:4]:  # the oldest made room for the newest
                assert _closed_by_peer(s, 10)
            assert all(_still_open(s) for s in socks[4:])
            # a real active still gets in (the oldest idle one goes)
            with Active(heap, [sb.address], secret=b"k", timeout=10.0) as act:
                r = act.sync()
                assert sb.wait_for(r.seq, 10)
    finally:
        for s in socks:
            s.close()


def test_tls_active_gives_up_on_a_standby_that_never_answers_tls(schema):
    _server, client = _tls_pair()
    heap = tha.Heap(schema, capacity=8 << 20)
    accepted = []
    with socket.create_server(("127.0.0.1", 0)) as mute:  # accepts, says nothing
        def accept():
            try:
                while True:
                    accepted.append(mute.accept()[0])
            except OSError:
                pass
        import threading
        threading.Thread(target=accept, daemon=True).start()
        with Active(heap, [mute.getsockname()[:2]], ssl_context=client,
                    peer_timeout=0.5, timeout=1.0) as act:
            assert wait_until(lambda: len(accepted) >= 2, 15)  # it tried again
            with pytest.raises(SyncTimeout, match="timed out"):
                act.sync()
        try:
            mute.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    for s in accepted:
        s.close()


def test_a_peer_that_breaks_the_handshake_is_retried_with_back_off_logged_once(
        schema, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap = tha.Heap(schema, capacity=8 << 20)
    accepted = []
    with socket.create_server(("127.0.0.1", 0)) as fake:  # not a tha standby
        def serve():
            try:
                while True:
                    s = fake.accept()[0]
                    accepted.append(s)
                    s.sendall(b"SSH-2.0-OpenSSH_9.6\r\n" + bytes(64))
                    s.close()
            except OSError:
                pass
        import threading
        threading.Thread(target=serve, daemon=True).start()
        with Active(heap, [fake.getsockname()[:2]], timeout=1.0) as act:
            assert wait_until(lambda: len(accepted) >= 4, 20)
            with pytest.raises(SyncTimeout, match="garbage"):  # says why
                act.sync()
        try:
            fake.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    garbage = [r for r in caplog.records if r.levelno >= logging.WARNING
               and "garbage" in r.getMessage()]
    assert len(garbage) == 1, [r.getMessage() for r in garbage]


def test_fenced_names_the_standby_that_fenced(schema):
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    es = company(heap)
    with Standby() as sb, Active(heap, [sb.address], timeout=5.0) as act:
        r = act.sync()
        assert sb.wait_for(r.seq)
        sb.promote()
        assert wait_until(lambda: act.fenced, 10)
        mutate(heap, es, 9)
        with pytest.raises(Fenced, match="%s:%d" % sb.address):
            act.sync()


def test_an_os_failure_says_what_failed_and_why():
    e = tha.errors.error_for(-21, "checkpoint /some/dir: cannot open")
    assert isinstance(e, tha.OSFailure)
    assert "checkpoint /some/dir" in str(e) and os.strerror(21) in str(e)
    assert e.errno == 21 and e.code == -21
