"""Query cancellation through pgcloak: pgcloak issues its own BackendKeyData
and routes CancelRequests; unknown keys are dropped silently."""

import os
import signal
import subprocess
import threading
import time
import uuid

import psycopg

import pgwire
from clients import connect
from util import pg_tool, wait_for

ACTIVE_SLEEP = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'")


def _wait_active(admin, app, timeout=20):
    wait_for(lambda: admin.execute(ACTIVE_SLEEP, [app]).fetchone()[0] == 1, timeout,
             what=f"pg_sleep running for {app}")


def _is_active(admin, app) -> bool:
    return admin.execute(ACTIVE_SLEEP, [app]).fetchone()[0] == 1


def _terminate(admin, app):
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [app])


class SleepInThread:
    def __init__(self, conn, seconds=30):
        self.conn, self.result = conn, {}
        self.thread = threading.Thread(target=self._run, args=(seconds,), daemon=True)
        self.thread.start()

    def _run(self, seconds):
        try:
            self.conn.execute(f"SELECT pg_sleep({seconds})")
            self.result["ok"] = True
        except psycopg.Error as e:
            self.result["error"] = e

    def join(self, timeout=20):
        self.thread.join(timeout)
        return not self.thread.is_alive()


def test_libpq_cancel(pgcloak, admin):
    proxy = pgcloak()
    app = f"cancel-{uuid.uuid4().hex[:8]}"
    conn = connect(proxy.dsn(sslmode="require", application_name=app))
    try:
        job = SleepInThread(conn)
        _wait_active(admin, app)
        conn.cancel()
        assert job.join(20), "query not cancelled within 20 s"
        assert "error" in job.result, job.result
        assert job.result["error"].sqlstate == "57014"
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)
    finally:
        _terminate(admin, app)
        conn.close()


def test_psql_sigint_cancel(pgcloak, admin, client_env):
    proxy = pgcloak()
    app = f"psqlcancel-{uuid.uuid4().hex[:8]}"
    p = subprocess.Popen([pg_tool("psql"), "-X", "-d", proxy.dsn(application_name=app), "-c", "SELECT pg_sleep(30)"],
                         env=client_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_active(admin, app)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
        assert p.returncode == 1, (out, err)
        assert "canceling statement due to user request" in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        _terminate(admin, app)


def test_raw_cancel_request_with_issued_key(pgcloak, admin):
    proxy = pgcloak()
    app = f"rawcancel-{uuid.uuid4().hex[:8]}"
    with pgwire.PgWire(proxy.host, proxy.port, timeout=25) as w:
        res = w.startup("trust_user", "app", params={"application_name": app})
        assert res.backend_pid is not None and res.backend_key is not None
        w.send(pgwire.query("SELECT pg_sleep(30)"))
        _wait_active(admin, app)
        with pgwire.PgWire(proxy.host, proxy.port) as c:
            c.send(pgwire.cancel_request(res.backend_pid, res.backend_key))
            assert c.read_until_eof(timeout=10) == b""  # no reply, just closed
        msgs = w.read_until_ready(timeout=20)
        errs = pgwire.errors(msgs)
        assert [e["C"] for e in errs] == ["57014"]
        assert msgs[-1].type == b"Z"
        assert pgwire.rows(w.simple_query("SELECT 1")) == [[b"1"]]


def test_unknown_cancel_key_is_ignored(pgcloak, admin):
    proxy = pgcloak()
    app = f"nocancel-{uuid.uuid4().hex[:8]}"
    conn = connect(proxy.dsn(application_name=app))
    try:
        issued_pid = conn.info.backend_pid
        job = SleepInThread(conn)
        _wait_active(admin, app)
        rnd = int.from_bytes(os.urandom(4), "big")
        for pid, key in ((int.from_bytes(os.urandom(4), "big") >> 1, rnd),  # unknown pid and key
                         (issued_pid, rnd)):                                  # right pid, wrong key
            with pgwire.PgWire(proxy.host, proxy.port) as c:
                c.send(pgwire.cancel_request(pid, key))
                assert c.read_until_eof(timeout=10) == b""
        time.sleep(1.0)  # room for a wrongly forwarded cancel to land
        assert _is_active(admin, app), "a CancelRequest with a wrong key cancelled the query"
        assert job.thread.is_alive()
        # The right key still works afterwards.
        conn.cancel()
        assert job.join(20)
        assert job.result["error"].sqlstate == "57014"
    finally:
        _terminate(admin, app)
        conn.close()
