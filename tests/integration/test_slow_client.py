"""Backpressure: a client that reads a 200 MB result slowly must not make
pgcloak buffer it. pgcloak's RSS stays small and PostgreSQL ends up blocked
writing to pgcloak (wait_event ClientWrite) while the client pauses."""

import struct
import threading
import time
import uuid

import pytest

import pgwire
from util import read_rss_kib

ROWS = 200_000
WIDTH = 1000
RSS_LIMIT_KIB = 64 * 1024
TARGET_RATE = 15 * 1024 * 1024  # bytes/s the slow reader allows itself
TOTAL_BUDGET = 60.0


class RssSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            rss = read_rss_kib(self.pid)
            if rss is not None:
                self.samples.append(rss)
            self.stop.wait(0.05)


def _backend_state(admin, app):
    return admin.execute("SELECT state, wait_event FROM pg_stat_activity WHERE application_name = %s",
                         [app]).fetchone()


@pytest.mark.slow
# io: the relay's socket I/O, batched through io_uring (auto) or one system
# call per read and write (off); test_relay_io.py.
@pytest.mark.parametrize("tls,io", [(False, "auto"), (False, "off"), (True, "auto")],
                         ids=["plain", "plain-io_uring-off", "tls"])
def test_slow_reader_bounded_memory(tls, io, pgcloak, admin):
    proxy = pgcloak(io_uring=io)
    app = f"slow-{uuid.uuid4().hex[:8]}"
    sampler = RssSampler(proxy.pid)
    with pgwire.PgWire(proxy.host, proxy.port, timeout=30, rcvbuf=64 * 1024) as w:
        if tls:
            w.start_tls()
        w.startup("trust_user", "app", params={"application_name": app})
        baseline = read_rss_kib(proxy.pid)
        sampler.start()
        w.send(pgwire.query(f"SELECT repeat('x', {WIDTH}) FROM generate_series(1, {ROWS})"))

        buf = bytearray()
        rows = total = 0
        tags, errors = [], []
        done = paused = False
        blocked_state = None
        start = time.monotonic()
        while not done:
            elapsed = time.monotonic() - start
            assert elapsed < TOTAL_BUDGET, f"read only {total} bytes in {TOTAL_BUDGET}s"
            if not paused and total > 10 * 1024 * 1024:
                # Stop reading entirely: PostgreSQL must end up blocked on its
                # socket to pgcloak instead of pgcloak soaking up the result.
                paused = True
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    blocked_state = _backend_state(admin, app)
                    if blocked_state == ("active", "ClientWrite"):
                        break
                    time.sleep(0.1)
                start = time.monotonic() - total / TARGET_RATE  # don't sprint to catch up
            chunk = w.recv_some(65536, timeout=30)
            assert chunk, "pgcloak closed the connection mid-result"
            total += len(chunk)
            buf += chunk
            off = 0
            while len(buf) - off >= 5:
                t = buf[off:off + 1]
                (ln,) = struct.unpack_from("!i", buf, off + 1)
                if len(buf) - off < 1 + ln:
                    break
                if t == b"D":
                    assert ln - 4 == 2 + 4 + WIDTH, f"bad DataRow length {ln}"
                    rows += 1
                elif t == b"C":
                    tags.append(bytes(buf[off + 5:off + 1 + ln]))
                elif t == b"E":
                    errors.append(pgwire.parse_error_fields(bytes(buf[off + 5:off + 1 + ln])))
                elif t == b"Z":
                    done = True
                off += 1 + ln
            del buf[:off]
            ahead = total / TARGET_RATE - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(min(ahead, 0.05))
        sampler.stop.set()
        sampler.join(5)
        assert errors == []
        assert rows == ROWS
        assert tags == [f"SELECT {ROWS}\x00".encode()]
        assert total > 200 * 1000 * 1000
        # The session is still usable.
        assert pgwire.rows(w.simple_query("SELECT 1")) == [[b"1"]]

    peak = max(sampler.samples)
    print(f"pgcloak RSS baseline {baseline} KiB, peak {peak} KiB over {len(sampler.samples)} samples")
    assert blocked_state == ("active", "ClientWrite"), \
        f"PostgreSQL never blocked on ClientWrite while the client paused: {blocked_state}"
    assert peak < RSS_LIMIT_KIB, f"pgcloak RSS peaked at {peak} KiB (limit {RSS_LIMIT_KIB} KiB)"
