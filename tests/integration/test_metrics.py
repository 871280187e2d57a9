"""The metrics endpoint end to end: a real pgcloak in front of the shop
fixture, real clients (psycopg over TLS + SCRAM), and the exposition read
back over HTTP. Checks that each family moves for the workload that should
move it, that labels are the authenticated names, that the token guards
everything but the health checks, and that /readyz follows the upstream.
"""
from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request

import psycopg
import pytest

from masking_fixture import MASK_KEY, MASK_KEY_ENV, masking_overrides, wait_for_masking
from masking_fixture import connect as _connect
from util import closed_port, wait_for

TOKEN = "metrics-test-token-0123456789abcdef"


def get(url: str, token: str | None = None, basic: str | None = None, timeout: float = 5.0):
    """(status, headers, body) of a GET; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if basic is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(basic.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[tuple, float]:
    """{(name, frozenset(labels)): value} of every sample in the exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"malformed exposition line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def scrape(proxy, token: str | None = None) -> dict:
    status, headers, body = get(proxy.metrics_url + "/metrics", token)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(body)


@pytest.fixture
def masked_proxy(pgcloak, shop, monkeypatch):
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    return pgcloak(**masking_overrides(shop.dbname))


def connect(proxy, user, **kw):
    return _connect(proxy, user, dbname="shop", **kw)


def test_statements_rows_masks_and_denials_are_counted(masked_proxy, shop):
    # Until the catalog loads, statements are refused (policy-unavailable):
    # wait for it first so the deltas below are the workload's alone.
    with connect(masked_proxy, "support") as c:
        wait_for_masking(c)
    wait_for(lambda: value(scrape(masked_proxy), "pgcloak_connections_current") == 0, timeout=10,
             what="the warm-up session to close")
    before = scrape(masked_proxy)
    assert value(before, "pgcloak_build_info") == 1
    with connect(masked_proxy, "support") as c:
        wait_for_masking(c)
        rows = c.execute("SELECT id, email, phone FROM customers ORDER BY id LIMIT 40").fetchall()
        assert len(rows) == 40
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DO $$ BEGIN PERFORM 1; END $$")
        # Extended protocol, prepared: each Execute counts.
        for i in range(3):
            c.execute("SELECT email FROM customers WHERE id = %s", (i + 1,), prepare=True).fetchall()
    with connect(masked_proxy, "admin") as c:
        wait_for_masking(c)
        full = c.execute("SELECT email, ssn FROM customers").fetchall()
        c.execute("SELECT count(*) FROM orders").fetchall()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(masked_proxy.dsn(user="support", dbname="shop", password="wrong")).close()

    after = wait_for(lambda: (s := scrape(masked_proxy)) and
                     value(s, "pgcloak_connections_current") == 0 and s or None,
                     timeout=10, what="sessions to close")

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # Statements by user, class and decision; the DO block is a denial.
    assert delta("pgcloak_statements_total", user="support", database="shop", decision="masked") >= 4
    assert delta("pgcloak_statements_total", user="support", decision="denied") == 1
    assert delta("pgcloak_denials_total", rule="deny:do") == 1
    assert delta("pgcloak_statements_total", user="admin", decision="allowed", **{"class": "READ"}) >= 2
    # Rows: every DataRow, and the protected ones by relation.
    assert delta("pgcloak_rows_returned_total", user="support") >= 43
    assert delta("pgcloak_protected_rows_returned_total", user="admin") == len(full)
    assert delta("pgcloak_protected_rows_returned_total", user="support") == 43
    assert delta("pgcloak_relation_rows_returned_total", relation="public.customers") == len(full) + 43
    assert delta("pgcloak_bytes_returned_total", user="admin") > 0
    # Masked values: support's email and phone masks, 40 rows each, + 3 emails.
    assert delta("pgcloak_masked_values_total", category="email", role="support") == 43
    assert delta("pgcloak_masked_values_total", category="phone", role="support") == 40
    assert delta("pgcloak_masked_values_total", role="admins") == 0
    # Durations: a histogram per class.
    assert delta("pgcloak_statement_duration_seconds_count", **{"class": "READ"}) >= 6
    # Connections: TLS, by auth result; the wrong password is an auth failure.
    assert delta("pgcloak_connections_total", tls="tls", auth="ok") == 2
    assert delta("pgcloak_connections_total", auth="failed") == 1
    assert delta("pgcloak_auth_failures_total") == 1
    # Labels are authenticated names only: nothing named "wrong" or unknown users.
    users = {dict(ls).get("user") for (n, ls) in after if dict(ls).get("user")}
    assert users <= {"support", "admin", "analyst", "pgcloak", "other"}, users


def test_console_api_shows_live_sessions_and_denials(masked_proxy):
    with connect(masked_proxy, "support", application_name="console-probe") as c:
        wait_for_masking(c)
        c.execute("SELECT email FROM customers LIMIT 5").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DO $$ BEGIN PERFORM 1; END $$")
        status, headers, body = get(masked_proxy.metrics_url + "/api/console")
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        doc = json.loads(body)
        mine = [s for s in doc["sessions"] if s["application_name"] == "console-probe"]
        assert len(mine) == 1, doc["sessions"]
        s = mine[0]
        assert s["user"] == "support" and s["database"] == "shop" and s["tls"] is True
        assert s["policy"] == "support"
        assert s["protected_rows"] >= 5 and s["statements"] >= 2
        assert any(d["rule"] == "deny:do" and d["user"] == "support" for d in doc["recent_denials"])
        assert any(r["user"] == "support" and "public.customers" in r["relations"] for r in doc["top_readers"])
        assert len(doc["history"]["denials"]) == 60 and doc["history"]["denials"][-1] >= 1
        assert doc["ready"] is True
    # Closed sessions leave the list.
    wait_for(lambda: not [s for s in json.loads(get(masked_proxy.metrics_url + "/api/console")[2])["sessions"]
                          if s["application_name"] == "console-probe"], timeout=10, what="session to leave")


def test_the_token_guards_everything_but_health(pgcloak, monkeypatch):
    monkeypatch.setenv("PGCLOAK_METRICS_TOKEN", TOKEN)
    proxy = pgcloak(metrics={"token_env": "PGCLOAK_METRICS_TOKEN"})
    base = proxy.metrics_url
    for path in ("/metrics", "/console", "/console.js", "/api/console", "/nonexistent"):
        status, headers, body = get(base + path)
        assert status == 401, path
        assert "pgcloak_" not in body and "sessions" not in body
        assert "Bearer" in headers["WWW-Authenticate"]
        assert get(base + path, token=TOKEN[:-1] + "x")[0] == 401, path
    assert get(base + "/metrics", token=TOKEN)[0] == 200
    assert get(base + "/api/console", token=TOKEN)[0] == 200
    # A browser's Basic credentials: any user name, the token as password.
    assert get(base + "/console", basic="anyone:" + TOKEN)[0] == 200
    assert get(base + "/console", basic="anyone:wrong-token-0123456789")[0] == 401
    assert get(base + "/healthz") == (200, get(base + "/healthz")[1], "ok\n")
    assert get(base + "/readyz")[0] == 200


def test_console_page_is_served_with_a_strict_policy(masked_proxy):
    status, headers, body = get(masked_proxy.metrics_url + "/console")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert "/console.js" in body
    for path, kind in (("/console.js", "text/javascript"), ("/console.css", "text/css")):
        status, headers, _ = get(masked_proxy.metrics_url + path)
        assert status == 200 and headers["Content-Type"].startswith(kind), path


def test_readyz_follows_the_upstream(pgcloak):
    proxy = pgcloak(upstream={"port": closed_port(), "connect_timeout": "1s"})
    assert get(proxy.metrics_url + "/healthz")[0] == 200
    status, _, body = wait_for(lambda: (r := get(proxy.metrics_url + "/readyz"))[0] == 503 and r or None,
                               timeout=15, what="/readyz to fail")
    assert "upstream unreachable" in body
    # A client's failed connect counts as an upstream connect error.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(user="scram_user", password="x"), connect_timeout=5).close()
    assert value(scrape(proxy), "pgcloak_upstream_connect_errors_total") >= 1


def test_reloads_are_counted(masked_proxy):
    import signal
    before = value(scrape(masked_proxy), "pgcloak_config_reloads_total", result="applied")
    masked_proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: value(scrape(masked_proxy), "pgcloak_config_reloads_total", result="applied") == before + 1,
             timeout=10, what="the reload to be counted")
    with open(masked_proxy.config_path, "a") as f:
        f.write("\nnot: [valid\n")
    masked_proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: value(scrape(masked_proxy), "pgcloak_config_reloads_total", result="rejected") == 1,
             timeout=10, what="the rejected reload to be counted")


def test_metrics_can_be_turned_off(pgcloak):
    proxy = pgcloak(metrics={"enabled": False})
    with pytest.raises(OSError):
        urllib.request.urlopen(proxy.metrics_url + "/healthz", timeout=2)
    # The proxy itself works as before.
    with psycopg.connect(proxy.dsn()) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
