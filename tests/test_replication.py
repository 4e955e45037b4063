"""Active -> standby over real loopback TCP, in one process (threads).
Cross-process tests (kill -9, cut links) are in test_failover.py."""

import logging
import socket
import time

import pytest

import tha
from tha.replication import Active, Fenced, Standby, SyncTimeout

CDEF = """
struct dept { char name[32]; uint32_t id; };
struct emp { char name[32]; uint32_t id; double salary;
             struct emp *mgr; struct dept *dept; struct emp *reports[4]; };
"""


@pytest.fixture
def schema():
    return tha.Schema(CDEF)


def company(heap, n=50):
    d = heap.new("struct dept", name=b"eng", id=1)
    es = heap.new("struct emp", count=n)
    for i in range(n):
        es[i].id = i
        es[i].dept = d
        es[i].mgr = es + (i // 2)
    heap.roots["staff"] = es
    heap.touch(es)
    return es


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


def test_wrong_secret_is_refused_and_state_untouched(schema, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap = tha.Heap(schema, capacity=8 << 20)
    company(heap)
    mine = tha.Heap(schema, capacity=8 << 20)
    mine.new("struct dept", name=b"kept")
    before = mine.dump()
    with Standby(secret=b"right", heap=mine) as sb, \
            Active(heap, [sb.address], secret=b"wrong", timeout=1.0) as act:
        with pytest.raises(SyncTimeout, match="0 of 1"):
            act.sync()
        assert sb.heap.dump() == before
    assert "authentication failed" in caplog.text


def test_no_secret_on_one_side_is_refused(schema, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap = tha.Heap(schema, capacity=8 << 20)
    with Standby(secret=b"k") as sb, Active(heap, [sb.address], timeout=1.0) as act:
        with pytest.raises(SyncTimeout):
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
    with Standby(heap=mine) as sb, Active(heap, [sb.address], timeout=1.0) as act:
        with pytest.raises(SyncTimeout):
            act.sync()
        assert sb.heap.dump() == before
    assert "schema mismatch" in caplog.text and "salary" in caplog.text


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
