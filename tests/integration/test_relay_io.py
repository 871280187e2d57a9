"""The relay loop's two ways of doing socket I/O (README, `io_uring`):
batched through io_uring (the default where the kernel allows it) and one
system call per read and write (`io_uring: off`, or a kernel or seccomp
profile that refuses io_uring). Both must relay every byte of every session
unchanged and in order; the batched path also stages reads in slots shared
by all sessions, so many concurrent sessions and reads larger than a slot
are exercised here. With batching, a TLS client's ciphertext goes through
memory BIOs and joins the batches, so TLS runs both ways too. The rest of the
suite runs with the default."""

import ctypes
import hashlib
import os
import threading

import pytest

import pgwire
from clients import connect
from pgcluster import PASSWORDS
from shop import SHOP_PASSWORDS
from util import wait_for

MODES = ["auto", "off"]


def io_uring_usable() -> bool:
    """io_uring_setup works here and the kernel completes MSG_DONTWAIT
    operations inline with SUBMIT_ALL (5.19 and later)."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) < (5, 19):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    fd = libc.syscall(425, 4, params)  # __NR_io_uring_setup on x86-64
    if fd < 0:
        return False
    os.close(fd)
    return True


def relay_line(proxy) -> str:
    wait_for(lambda: "relay loops (" in proxy.log(), timeout=10, what="the start-up line")
    return next(line for line in proxy.log().splitlines() if "relay loops (" in line)


def test_start_up_line_says_how_the_relay_does_its_io(pgcloak):
    line = relay_line(pgcloak())
    if io_uring_usable():
        assert "relay loops (socket calls batched with io_uring)" in line, line
    else:
        assert "one system call per read and write; io_uring is not available: " in line, line
    assert "relay loops (io_uring off)" in relay_line(pgcloak(io_uring="off"))


@pytest.mark.parametrize("mode", MODES)
def test_many_sessions_each_get_exactly_their_bytes(pgcloak, mode):
    """48 sessions at once, half over TLS, each with results from 1 byte to
    60 kB (a batched read slot is 16 kB), checked byte for byte."""
    proxy = pgcloak(io_uring=mode)
    failures: list[str] = []

    def session(i: int) -> None:
        try:
            sslmode = "require" if i % 2 else "disable"
            with connect(proxy.dsn(sslmode=sslmode, application_name=f"relay-io-{i}")) as c:
                for k in range(20):
                    n = (i * 997 + k * 4099) % 60000 + 1
                    tag = f"s{i}q{k}:"
                    ch = chr(ord("a") + (i + k) % 26)
                    got, digest = c.execute("SELECT %s || repeat(%s, %s), md5(%s || repeat(%s, %s))",
                                            [tag, ch, n, tag, ch, n]).fetchone()
                    want = tag + ch * n
                    if got != want or digest != hashlib.md5(want.encode()).hexdigest():
                        failures.append(f"session {i} query {k}: {len(got)} bytes, wanted {len(want)}")
                        return
        except Exception as e:  # noqa: BLE001 - reported below with the session
            failures.append(f"session {i}: {e!r}")

    threads = [threading.Thread(target=session, args=(i,)) for i in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a session did not finish within 120 s"
    assert not failures, failures[:5]
    assert proxy.alive()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_pipelined_simple_and_extended_messages_keep_their_order(pgcloak, mode, tls):
    """One write carrying many statements (over TLS: many records, some
    split across reads) and an extended batch with an error in the middle:
    the answers come back complete and in order."""
    proxy = pgcloak(io_uring=mode)
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        if tls:
            w.start_tls()
        w.startup("trust_user", "app")
        burst = b"".join(pgwire.query(f"SELECT {i}, repeat('x', {i * 300})") for i in range(200))
        w.send(burst)
        for i in range(200):
            msgs = w.read_until_ready()
            rows = [pgwire.parse_data_row(m.body) for m in msgs if m.type == b"D"]
            assert rows == [[str(i).encode(), b"x" * (i * 300)]], i
        batch = (pgwire.parse("SELECT $1::int / $2::int") + pgwire.bind([b"6", b"3"]) + pgwire.execute() +
                 pgwire.parse("SELECT 1/0") + pgwire.bind() + pgwire.execute() +
                 pgwire.parse("SELECT 'skipped'") + pgwire.bind() + pgwire.execute() + pgwire.sync() +
                 pgwire.query("SELECT 'after'"))
        w.send(batch)
        first = w.read_until_ready()
        types = [m.type for m in first]
        assert types[:4] == [b"1", b"2", b"D", b"C"], types
        assert b"E" in types and types[-1] == b"Z"
        assert [pgwire.parse_data_row(m.body) for m in w.read_until_ready() if m.type == b"D"] == [[b"after"]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_copy_both_ways_keeps_every_byte(pgcloak, mode, sslmode):
    proxy = pgcloak(io_uring=mode)
    line = b"".join(b"%d\t%s\n" % (i, hashlib.sha256(b"%d" % i).hexdigest().encode()) for i in range(4000))
    data = line * 60  # about 21 MB
    with connect(proxy.dsn(sslmode=sslmode)) as c:
        c.execute("CREATE TEMP TABLE relay_io_copy (n int, h text)")
        with c.cursor().copy("COPY relay_io_copy FROM STDIN") as cp:
            for off in range(0, len(data), 1 << 20):
                cp.write(data[off:off + (1 << 20)])
        out = hashlib.sha256()
        size = 0
        with c.cursor().copy("COPY relay_io_copy TO STDOUT") as cp:
            for chunk in cp:
                out.update(chunk)
                size += len(chunk)
        assert size == len(data)
        assert out.hexdigest() == hashlib.sha256(data).hexdigest()


def pool_config(mode: str) -> dict:
    return {
        "io_uring": mode,
        "upstream": {"pool": {"enabled": True}},
        "auth": {"mode": "scram", "auth_dbname": "shop"},
        "catalog": {"user": "pgcloak", "password": SHOP_PASSWORDS["pgcloak"]},
    }


@pytest.mark.parametrize("mode", MODES)
def test_client_quitting_mid_result_leaves_nothing_for_the_next_client(shop, pgcloak, mode):
    """A client that sends Terminate while PostgreSQL is still streaming its
    result. With batching, the read of PostgreSQL's side is often already
    done when the pump takes the Terminate and stops reading that side; those
    bytes belong to the ending session only. The backend is not pooled in
    the middle of a result, and the next clients get exactly their own
    answers."""
    proxy = pgcloak(**pool_config(mode))
    for round_ in range(8):
        with pgwire.PgWire(proxy.host, proxy.port) as w:
            w.startup("scram_user", "app", password=PASSWORDS["scram_user"])
            w.send(pgwire.query("SELECT repeat('z', 1000) FROM generate_series(1, 100000)"))
            w.recv_some(4096)
            w.send(pgwire.terminate())
        for k in range(4):
            with connect(proxy.dsn(sslmode="disable", application_name=f"after-{round_}-{k}")) as c:
                assert c.execute("SELECT %s::text || 'ok'", [f"{round_}/{k}:"]).fetchone() == (f"{round_}/{k}:ok",)
                assert c.execute("SHOW application_name").fetchone() == (f"after-{round_}-{k}",)
    assert proxy.alive()
