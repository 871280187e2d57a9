"""Exfiltration detection end to end, in real time, through pgcloak
(docs/detection.md): the shop fixture behind a masking pgcloak with
detection rules, real clients (psycopg over TLS + SCRAM), a local webhook
receiver, and the audit trail.

- cancel: `SELECT * FROM customers` as support, with a per-statement limit
  of 1,000 rows, is cut off mid-stream: the client gets the rule's error
  after at most the limit of rows, the alert reaches the webhook and the
  audit trail, and the session stays usable.
- block: a bulk read as analyst ends the session and refuses new logins
  until an administrator lifts the block.
"""
from __future__ import annotations

import copy
import http.server
import json
import os
import threading
import urllib.error
import urllib.request

import psycopg
import pytest

from audit_fixture import audit_overrides, read_records
from masking_fixture import MASK_KEY, MASK_KEY_ENV, masking_overrides, wait_for_masking
from masking_fixture import connect as _connect
from shop import SHOP_PASSWORDS
from syslog_receiver import SyslogReceiver
from util import reload_config, wait_for, write_config

TOKEN = "detection-test-token-0123456789abcdef"
TOKEN_ENV = "PGCLOAK_METRICS_TOKEN"


class WebhookReceiver:
    """A local HTTP server that records every POSTed JSON body."""

    def __init__(self):
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/pgcloak"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    w = WebhookReceiver()
    yield w
    w.close()


@pytest.fixture
def syslog_receiver():
    r = SyslogReceiver(0).start()
    yield r
    r.stop()


def detecting_proxy(pgcloak, shop, monkeypatch, tmp_path, webhook, rules, syslog_port=None):
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    overrides = masking_overrides(shop.dbname)
    overrides.update(audit_overrides(str(tmp_path)))
    overrides["metrics"] = {"token_env": TOKEN_ENV}
    overrides["detection"] = {"rules": rules, "webhook": {"url": webhook.url},
                              "state_file": str(tmp_path / "detection.json")}
    if syslog_port is not None:
        overrides["detection"]["syslog"] = {"host": "127.0.0.1", "port": syslog_port, "facility": 4}
    return pgcloak(**overrides)


def connect(proxy, user, **kw):
    return _connect(proxy, user, dbname="shop", **kw)


def test_cancel_cuts_a_bulk_read_mid_stream(pgcloak, shop, monkeypatch, tmp_path, webhook, syslog_receiver):
    proxy = detecting_proxy(pgcloak, shop, monkeypatch, tmp_path, webhook, [
        {"name": "support-bulk-read", "detector": "statement_volume", "roles": ["support_team"],
         "relations": ["public.customers"], "max_rows": 1000, "action": "cancel"},
    ], syslog_port=syslog_receiver.port)
    with shop.admin() as c:
        total = c.execute("SELECT count(*) FROM customers").fetchone()[0]
    assert total > 5000
    with connect(proxy, "support") as c:
        wait_for_masking(c)
        # Under the limit: untouched.
        assert len(c.execute("SELECT id, email FROM customers ORDER BY id LIMIT 500").fetchall()) == 500
        # psycopg reads the whole result in execute(); the error ends it.
        # (A streaming read below sees at most the limit of rows.)
        with pytest.raises(psycopg.errors.QueryCanceled) as err:
            c.execute("SELECT * FROM customers")
        assert "support-bulk-read" in str(err.value) and "statement_volume" in str(err.value)
        # The session goes on, and the late CancelRequest does not hit the
        # next statement.
        for _ in range(5):
            assert c.execute("SELECT count(*) FROM orders").fetchone()[0] > 0
        # Streaming (server-side cursor through the extended protocol): the
        # client receives at most the limit before the error.
        streamed = 0
        with pytest.raises(psycopg.errors.QueryCanceled):
            with c.cursor() as cur2:
                for _row in cur2.stream("SELECT email, phone FROM customers"):
                    streamed += 1
        assert 0 < streamed <= 1000, streamed
        assert c.execute("SELECT 1").fetchone() == (1,)

    # The webhook got both alerts: names and counts, no data.
    alerts = wait_for(lambda: len(webhook.received) >= 2 and webhook.received, timeout=15,
                      what="two alerts at the webhook")
    body = alerts[0]["body"]
    assert body["rule"] == "support-bulk-read" and body["detector"] == "statement_volume"
    assert body["user"] == "support" and body["relation"] == "public.customers"
    assert body["action"] == "cancel" and body["baseline"] == 1000 and body["observed"] > 1000
    assert alerts[0]["headers"]["Content-Type"].startswith("application/json")
    with shop.admin() as c:
        emails = [r[0] for r in c.execute("SELECT email FROM customers WHERE email IS NOT NULL LIMIT 200")]
    dump = json.dumps([a["body"] for a in alerts])
    assert not [e for e in emails if e in dump]

    # The syslog receiver got them too: warnings (auth facility), MSGID
    # "alert", the alert's JSON as the message, no data.
    msgs = wait_for(lambda: len(syslog_receiver.messages) >= 2 and syslog_receiver.parsed(), timeout=15,
                    what="two alerts at the syslog receiver")
    assert all(pri == "<36>1" and msgid == "alert" for pri, msgid, _ in msgs), msgs
    first = json.loads(msgs[0][2])
    assert first["rule"] == "support-bulk-read" and first["user"] == "support" and first["action"] == "cancel"
    assert not [e for e in emails if e in json.dumps([m[2] for m in msgs])]

    # The audit trail: the alerts, and the statements recorded as cancelled.
    # Records are written in the background, a statement's after its alert:
    # wait for both.
    def cancelled_of(records):
        return [r for r in records if r["kind"] == "statement" and r.get("sqlstate") == "57014"]

    records = wait_for(lambda: (r := read_records(str(tmp_path))) and
                       len([x for x in r if x["kind"] == "alert"]) >= 2 and len(cancelled_of(r)) >= 2 and r,
                       timeout=15, what="alerts and cancelled statements in the audit trail")
    alert_records = [r for r in records if r["kind"] == "alert"]
    assert alert_records[0]["rule"] == "support-bulk-read" and alert_records[0]["user"] == "support"
    cancelled = cancelled_of(records)
    assert len(cancelled) == 2, cancelled
    assert all(r["rule"] == "support-bulk-read" for r in cancelled)
    assert not [e for e in emails if e in json.dumps(records)]


def post(url, token=None):
    req = urllib.request.Request(url, method="POST", data=b"")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_block_refuses_logins_until_lifted(pgcloak, shop, monkeypatch, tmp_path, webhook):
    proxy = detecting_proxy(pgcloak, shop, monkeypatch, tmp_path, webhook, [
        {"name": "analyst-dump", "detector": "statement_volume", "roles": ["analytics_team"],
         "max_rows": 500, "action": "block", "block_for": "10m"},
    ])
    with connect(proxy, "analyst") as c:
        wait_for_masking(c)
        with pytest.raises(psycopg.OperationalError) as err:
            c.execute("SELECT email FROM customers").fetchall()
        assert "analyst-dump" in str(err.value)
    # Blocked: even with the right password.
    with pytest.raises(psycopg.OperationalError) as err:
        connect(proxy, "analyst")
    assert "blocked" in str(err.value)
    # Other users are not affected.
    with connect(proxy, "support") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    # The block is listed; lifting it needs the token, as a bearer token.
    status, body = get_json(proxy.metrics_url + "/api/blocks", TOKEN)
    assert status == 200 and [b["user"] for b in body["blocks"]] == ["analyst"]
    assert post(proxy.metrics_url + "/api/blocks/lift?user=analyst")[0] == 401
    assert post(proxy.metrics_url + "/api/blocks/lift?user=analyst", "wrong-token-0123456789")[0] == 401
    status, text = post(proxy.metrics_url + "/api/blocks/lift?user=analyst", TOKEN)
    assert status == 200, text
    with connect(proxy, "analyst") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    # Records are written in the background (batched durability): wait for
    # the lift's.
    def lifted(records):
        return [r for r in records if r["kind"] == "config_reload" or r["kind"] == "block_lifted"]

    wait_for(lambda: lifted(read_records(str(tmp_path))), 10, what="the record of the lifted block")
    records = read_records(str(tmp_path))
    assert [r for r in records if r["kind"] == "denial" and r.get("rule") == "detection:blocked"]
    assert lifted(records)


def get_json(url, token):
    req = urllib.request.Request(url)
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, json.loads(r.read())


def test_blocks_survive_a_restart(pgcloak, shop, monkeypatch, tmp_path, webhook):
    rules = [{"name": "analyst-dump", "detector": "statement_volume", "roles": ["analytics_team"],
              "max_rows": 500, "action": "block", "block_for": "10m"}]
    proxy = detecting_proxy(pgcloak, shop, monkeypatch, tmp_path, webhook, rules)
    with connect(proxy, "analyst") as c:
        wait_for_masking(c)
        with pytest.raises(psycopg.OperationalError):
            c.execute("SELECT email FROM customers").fetchall()
    proxy.expect_exit = True
    assert proxy.terminate() == 0
    assert os.path.exists(tmp_path / "detection.json")
    again = detecting_proxy(pgcloak, shop, monkeypatch, tmp_path, webhook, rules)
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(again.dsn(user="analyst", dbname="shop", password=SHOP_PASSWORDS["analyst"]))
    assert "blocked" in str(err.value)


def test_sighup_switches_rules_for_live_sessions(pgcloak, shop, monkeypatch, tmp_path, webhook):
    """SIGHUP applies new detection rules from each session's next statement:
    switched off (`enabled: false`), a higher limit, and back; the masking
    section, unchanged, is not rebuilt; a changed webhook needs a restart."""
    proxy = detecting_proxy(pgcloak, shop, monkeypatch, tmp_path, webhook, [
        {"name": "support-bulk-read", "detector": "statement_volume", "roles": ["support_team"],
         "relations": ["public.customers"], "max_rows": 1000, "action": "cancel"},
    ])
    with shop.admin() as c:
        total = c.execute("SELECT count(*) FROM customers").fetchone()[0]
    config = copy.deepcopy(proxy.config)
    with connect(proxy, "support") as c:
        wait_for_masking(c)
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT * FROM customers")

        config["detection"]["enabled"] = False
        write_config(proxy, config)
        reload_config(proxy, "detection switched off")
        assert len(c.execute("SELECT * FROM customers").fetchall()) == total  # same session

        config["detection"]["enabled"] = True
        config["detection"]["rules"][0]["max_rows"] = total + 1
        write_config(proxy, config)
        reload_config(proxy, "detection: 1 rules")
        assert len(c.execute("SELECT * FROM customers").fetchall()) == total

        config["detection"]["rules"][0]["max_rows"] = 1000
        config["detection"]["webhook"]["url"] = webhook.url + "/elsewhere"
        write_config(proxy, config)
        reload_config(proxy, "detection: 1 rules")
        with pytest.raises(psycopg.errors.QueryCanceled) as err:
            c.execute("SELECT * FROM customers")
        assert "support-bulk-read" in str(err.value)
    log = proxy.log()
    assert log.count("masking rules unchanged") == 3, log
    assert "masking rules reloaded" not in log
    assert "detection.webhook, detection.syslog" in log
    # The alert still went to the webhook the process started with.
    alerts = wait_for(lambda: len(webhook.received) >= 2 and webhook.received, timeout=15,
                      what="two alerts at the webhook")
    assert {a["path"] for a in alerts} == {"/hooks/pgcloak"}
    records = read_records(str(tmp_path))
    assert len([r for r in records if r["kind"] == "config_reload" and r["result"] == "applied"]) == 3


def test_fetch_from_a_cursor_counts_as_its_query(pgcloak, shop, monkeypatch, tmp_path, webhook):
    """DECLARE ... CURSOR FOR SELECT * FROM customers, then FETCH: the FETCH
    names no table, but its rows are customers' rows. They count against
    the per-statement limit (and every other rule) as the DECLARE's query."""
    proxy = detecting_proxy(pgcloak, shop, monkeypatch, tmp_path, webhook, [
        {"name": "support-bulk-read", "detector": "statement_volume", "roles": ["support_team"],
         "relations": ["public.customers"], "max_rows": 1000, "action": "cancel"},
    ])
    with connect(proxy, "support") as c:
        wait_for_masking(c)
        c.execute("BEGIN")
        c.execute("DECLARE dump NO SCROLL CURSOR FOR SELECT * FROM customers")
        assert len(c.execute("FETCH FORWARD 500 FROM dump").fetchall()) == 500  # under the limit
        with pytest.raises(psycopg.errors.QueryCanceled) as err:
            c.execute("FETCH FORWARD 5000 FROM dump")
        assert "support-bulk-read" in str(err.value)
        c.execute("ROLLBACK")
        # A cursor over something unprotected is not charged.
        c.execute("BEGIN")
        c.execute('DECLARE "Other" CURSOR FOR SELECT g FROM generate_series(1, 5000) AS g')
        assert len(c.execute('FETCH ALL FROM "Other"').fetchall()) == 5000
        c.execute("COMMIT")
        # psycopg's server-side cursor: DECLARE and FETCH FORWARD through the
        # extended protocol.
        with pytest.raises(psycopg.errors.QueryCanceled):
            with c.transaction():
                with c.cursor(name="named") as cur:
                    cur.execute("SELECT email, phone FROM customers")
                    while cur.fetchmany(2000):
                        pass
        assert c.execute("SELECT 1").fetchone() == (1,)
    alerts = wait_for(lambda: len(webhook.received) >= 2 and webhook.received, timeout=15,
                      what="two alerts at the webhook")
    assert {a["body"]["relation"] for a in alerts} == {"public.customers"}
