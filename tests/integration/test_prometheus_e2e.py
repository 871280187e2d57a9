"""pgcloak, a real Prometheus and the deployed rules and dashboard, end to end.

A real Prometheus (Debian package `prometheus`, see deploy/install-deps.sh)
scrapes a masking pgcloak (with an audit trail) every second and evaluates
the unmodified deploy/prometheus/pgcloak-alerts.yml. Real clients (psycopg
over TLS + SCRAM) run a mixed workload (masked reads, a refused statement, a
failed login, unmasked reads), then a bulk read of the customers table as
`admin`. Checked through Prometheus's HTTP API:

- the target is up and scraped;
- PgcloakSuspectedExfiltration goes pending (or firing) for user="admin";
- every alert rule evaluates without error (/api/v1/rules), and every
  PromQL expression of the rules and of deploy/grafana/pgcloak-security.json
  (Grafana's variables filled in by dashboard_exprs.py, as tests/promtool.sh
  does) is a successful query;
- the core panels (CORE_PANELS) return data.

About the exfiltration rule in a Prometheus that was just started: its
new-series branch needs `pgcloak_build_info offset 10m`, which a fresh
Prometheus does not have, so only the increase() branch can fire, and
increase() needs a sample of the user's series from before the bulk read.
The workload gives it one (admin's small reads; the test waits for Prometheus
to hold two samples of admin's series before the dump). A login whose very
first statement is the dump, in a Prometheus younger than 10 minutes, is not
seen: the rule's documented trade-off (docs/metrics.md, "Alert rules").
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import psycopg
import pytest
import yaml

from audit_fixture import audit_overrides
from dashboard_exprs import dashboard_exprs
from masking_fixture import MASK_KEY, MASK_KEY_ENV, masking_overrides, wait_for_masking
from masking_fixture import connect as _connect
from util import REPO, free_port, port_open, tail_file, wait_for

PROMETHEUS = "/usr/bin/prometheus"
ALERT_RULES = os.path.join(REPO, "deploy", "prometheus", "pgcloak-alerts.yml")
EXFILTRATION = "PgcloakSuspectedExfiltration"

# Dashboard panels (by title) that must return data after the workload, with
# label values their result must include. Titles the dashboard has twice
# ("Open connections": a stat and a time series) cover every such panel.
CORE_PANELS: dict[str, dict[str, set[str]]] = {
    "Open connections": {},
    "Statements / s": {},
    "Denials in range": {},
    "Auth failures in range": {},
    "Audit trail": {},
    "Top users by protected rows read (1h)": {"user": {"admin", "support"}},
    "Protected rows read by relation": {"relation": {"public.customers"}},
    "Rows returned by user": {"user": {"admin", "support"}},
    "Bytes returned by user": {"user": {"admin", "support"}},
    "Statements by decision": {"decision": {"allowed", "masked", "denied"}},
    "Denials by rule": {"rule": {"deny:do"}},
    "Masked values by category": {"category": {"email", "phone"}},
    "Masked values by role": {"role": {"support"}},
    "Statements by class": {"class": {"READ"}},
    "Statement latency": {},
    "New connections by auth result": {"auth": {"ok", "failed"}},
    "Auth failures": {},
    "Audit queue": {},
    "Audit write failures and latency": {},
    "pgcloak instances": {},
}


# -- Prometheus ---------------------------------------------------------------

class Prometheus:
    """One Prometheus server in its own directory, scraping one pgcloak."""

    def __init__(self, workdir: str, target: str):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = os.path.join(workdir, "prometheus.yml")
        self.log_path = os.path.join(workdir, "prometheus.log")
        self.proc: subprocess.Popen | None = None
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            # The real rules, unmodified, from the repository.
            "rule_files": [ALERT_RULES],
            "scrape_configs": [{
                "job_name": "pgcloak",  # the rules match up{job="pgcloak"}
                "metrics_path": "/metrics",
                "scheme": "http",
                "static_configs": [{"targets": [target]}],
            }],
        }
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)

    def start(self, ready_timeout: float = 30.0) -> "Prometheus":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config_path}",
             f"--storage.tsdb.path={os.path.join(self.workdir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=info"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, cwd=self.workdir,
            start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            if not port_open("127.0.0.1", self.port):
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    return r.status == 200
            except (OSError, urllib.error.HTTPError):
                return False
        try:
            wait_for(ready, timeout=ready_timeout, interval=0.1, what="prometheus /-/ready")
        except BaseException:
            self.stop()
            raise RuntimeError(f"prometheus did not get ready:\n{self.log()}") from None
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def log(self, nbytes: int = 12000) -> str:
        return tail_file(self.log_path, nbytes, "prometheus")

    @contextlib.contextmanager
    def log_on_failure(self):
        """Prints Prometheus's log tail (captured, shown with the failure)."""
        try:
            yield
        except BaseException:
            print(f"--- prometheus log (tail of {self.log_path}) ---\n{self.log()}", file=sys.stderr)
            raise

    # -- HTTP API ---------------------------------------------------------------
    def api(self, path: str, params: dict | None = None) -> dict:
        """The JSON answer of an API call (POST form, so long queries fit);
        HTTP errors are returned as their JSON body (status "error")."""
        data = urllib.parse.urlencode(params).encode() if params is not None else None
        try:
            with urllib.request.urlopen(self.url + path, data=data, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "errorType": f"http {e.code}", "error": body.decode(errors="replace")}

    def query(self, expr: str) -> dict:
        """/api/v1/query at now: the whole answer (status, data, error)."""
        return self.api("/api/v1/query", {"query": expr})

    def vector(self, expr: str) -> list[dict]:
        """An instant query's result vector; AssertionError on an error."""
        r = self.query(expr)
        assert r.get("status") == "success", f"{expr}: {r}"
        res = r["data"]["result"]
        if r["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": res}]
        return res

    def scalar(self, expr: str) -> float:
        """The single value of an aggregating query, 0 when there is none."""
        v = self.vector(expr)
        return float(v[0]["value"][1]) if v else 0.0


# -- Fixtures -------------------------------------------------------------------

@pytest.fixture
def masked_proxy(pgcloak, shop, workroot, monkeypatch):
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    audit_dir = tempfile.mkdtemp(prefix="prom-audit-", dir=workroot)
    return pgcloak(**masking_overrides(shop.dbname), **audit_overrides(audit_dir))


@pytest.fixture
def prometheus(masked_proxy, workroot):
    if not os.access(PROMETHEUS, os.X_OK):
        msg = f"{PROMETHEUS} not installed (Debian package prometheus: bash deploy/install-deps.sh)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(msg)
    target = masked_proxy.metrics_url.split("://", 1)[1]
    prom = Prometheus(tempfile.mkdtemp(prefix="prometheus-", dir=workroot), target).start()
    yield prom
    prom.stop()


def connect(proxy, user, **kw):
    return _connect(proxy, user, dbname="shop", **kw)


# -- Helpers --------------------------------------------------------------------

def wait_target_scraped(prom: Prometheus, scrapes: int = 2, timeout: float = 30.0) -> None:
    def up():
        targets = prom.api("/api/v1/targets")["data"]["activeTargets"]
        ours = [t for t in targets if t["labels"].get("job") == "pgcloak"]
        assert len(ours) <= 1, targets  # none until discovery has run
        if not ours or ours[0]["health"] != "up":
            return False
        return prom.scalar('count_over_time(up{job="pgcloak"}[5m])') >= scrapes
    try:
        wait_for(up, timeout=timeout, interval=0.2, what=f"the pgcloak target to be up with {scrapes} scrapes")
    except TimeoutError:
        raise AssertionError(f"target not up: {prom.api('/api/v1/targets')}") from None


def workload(proxy, seconds: float = 5.0) -> dict:
    """Masked reads as support, a refused DO block, a failed login, unmasked
    reads as admin, repeated for `seconds`. Returns counts of what was done."""
    done = {"support_rows": 0, "admin_rows": 0, "denied": 0, "auth_failures": 0, "rounds": 0}
    with connect(proxy, "support") as sup, connect(proxy, "admin") as adm:
        wait_for_masking(sup)
        wait_for_masking(adm)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or done["rounds"] < 3:
            rows = sup.execute("SELECT id, email, phone, card_number FROM customers ORDER BY id LIMIT 20").fetchall()
            assert len(rows) == 20
            done["support_rows"] += len(rows)
            sup.execute("SELECT email FROM customers WHERE id = %s", (done["rounds"] + 1,), prepare=True).fetchall()
            done["support_rows"] += 1
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                sup.execute("DO $$ BEGIN PERFORM 1; END $$")
            done["denied"] += 1
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(proxy.dsn(user="support", dbname="shop", password="wrong")).close()
            done["auth_failures"] += 1
            rows = adm.execute("SELECT email, ssn FROM customers ORDER BY id LIMIT 10").fetchall()
            done["admin_rows"] += len(rows)
            adm.execute("SELECT count(*) FROM orders").fetchall()
            done["rounds"] += 1
            time.sleep(0.2)
    return done


def exfiltration_rule_threshold() -> float:
    with open(ALERT_RULES) as f:
        doc = yaml.safe_load(f)
    for g in doc["groups"]:
        for r in g["rules"]:
            if r.get("alert") == EXFILTRATION:
                expr = r["expr"].strip()
                assert "pgcloak_protected_rows_returned_total" in expr and "sum by (instance, user)" in expr, expr
                op, value = expr.rsplit(None, 2)[-2:]
                assert op == ">", expr
                return float(value)
    raise AssertionError(f"{EXFILTRATION} not in {ALERT_RULES}")


def alert_rule_exprs() -> list[tuple[str, str]]:
    with open(ALERT_RULES) as f:
        doc = yaml.safe_load(f)
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"] for r in g["rules"]]


def exfiltration_alerts(prom: Prometheus) -> list[dict]:
    alerts = prom.api("/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == EXFILTRATION]


# -- The test -------------------------------------------------------------------

@pytest.mark.slow
def test_prometheus_scrapes_alerts_and_answers_the_dashboard(masked_proxy, prometheus):
    prom = prometheus
    with prom.log_on_failure():
        # 2. Prometheus scrapes pgcloak.
        wait_target_scraped(prom)
        assert prom.scalar('pgcloak_build_info{job="pgcloak"}') == 1

        # 3. The mixed workload, long enough for rate() to have several points.
        done = workload(masked_proxy, seconds=5.0)
        print(f"workload: {done}")

        # 4. The bulk read. A fresh Prometheus has no pgcloak_build_info 10
        # minutes back, so only the rule's increase() branch can fire: it
        # needs samples of admin's series from before the dump.
        admin_series = 'pgcloak_protected_rows_returned_total{job="pgcloak", user="admin"}'
        # Scraped after the workload's last read (wait_for_masking's probe
        # rows come on top), and at least twice.
        wait_for(lambda: prom.scalar(admin_series) >= done["admin_rows"] and
                 prom.scalar(f"count_over_time({admin_series}[5m])") >= 2, timeout=15, interval=0.2,
                 what="two samples of admin's protected-rows series, the last after the workload")
        before = prom.scalar(admin_series)
        threshold = exfiltration_rule_threshold()
        assert threshold == 5000
        assert not exfiltration_alerts(prom), "the alert was active before the bulk read"
        dumped = 0
        with connect(masked_proxy, "admin") as adm:
            wait_for_masking(adm)
            while dumped <= threshold:
                rows = adm.execute("SELECT * FROM customers").fetchall()
                assert rows, "customers is empty"
                dumped += len(rows)
        print(f"bulk read: admin received {dumped} protected rows")
        wait_for(lambda: prom.scalar(admin_series) >= before + dumped, timeout=15, interval=0.2,
                 what="Prometheus to scrape admin's bulk read")

        def pending():
            return [a for a in exfiltration_alerts(prom)
                    if a["labels"].get("user") == "admin" and a["state"] in ("pending", "firing")]
        try:
            active = wait_for(pending, timeout=60, interval=0.5, what=f"{EXFILTRATION} for admin")
        except TimeoutError:
            expr = next(e for n, e in alert_rule_exprs() if n == EXFILTRATION)
            raise AssertionError(
                f"{EXFILTRATION} did not go pending: alerts={prom.api('/api/v1/alerts')['data']}, "
                f"rule expr without threshold={prom.query(expr.strip().rsplit('>', 1)[0])}, "
                f"increase={prom.query(f'increase({admin_series}[10m])')}") from None
        print(f"{EXFILTRATION}: {active[0]['state']}, value {active[0]['value']}, labels {active[0]['labels']}")
        assert float(active[0]["value"]) > threshold
        # Nobody else read in bulk.
        assert not [a for a in exfiltration_alerts(prom) if a["labels"].get("user") != "admin"]

        # 5a. Every rule evaluated without error.
        def rules_evaluated():
            groups = prom.api("/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if len(rules) != len(alert_rule_exprs()):
                return None
            return rules if all(not r.get("lastEvaluation", "0001").startswith("0001") for r in rules) else None
        rules = wait_for(rules_evaluated, timeout=15, interval=0.2, what="every rule to be evaluated")
        bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
        assert not bad, f"rules with evaluation errors: {bad}"

        # 5b. Every expression of the rules and the dashboard is a successful query.
        exprs = [(f"alert {name}", e) for name, e in alert_rule_exprs()] + dashboard_exprs()
        results = []
        for where, e in exprs:
            r = prom.query(e)
            n = len(r["data"]["result"]) if r.get("status") == "success" else None
            results.append((where, e, r, n))
        errors = [(where, e, r.get("errorType"), r.get("error")) for where, e, r, n in results if n is None]

        # 6. The core panels return data.
        table = [f"{'panel / rule':<40} {'rows':>5}  expr"]
        for where, e, r, n in results:
            mark = "*" if where in CORE_PANELS else " "
            table.append(f"{mark}{where[:39]:<39} {'ERR' if n is None else n:>5}  {' '.join(e.split())}")
        print("\nPromQL through /api/v1/query (* = core panel):\n" + "\n".join(table))
        assert not errors, f"expressions that failed in Prometheus: {errors}"

        titles = {where for where, _ in dashboard_exprs()}
        missing = set(CORE_PANELS) - titles
        assert not missing, f"core panels not in the dashboard: {missing}"
        empty = [(where, e) for where, e, r, n in results if where in CORE_PANELS and not n]
        assert not empty, f"core panels without data: {empty}"
        for where, e, r, n in results:
            for label, want in CORE_PANELS.get(where, {}).items():
                got = {s["metric"].get(label) for s in r["data"]["result"]}
                assert want <= got, f"{where}: {label} {got} lacks {want - got} ({e})"
        top = {s["metric"]["user"]: float(s["value"][1]) for where, e, r, n in results
               if where == "Top users by protected rows read (1h)" for s in r["data"]["result"]}
        assert top["admin"] > threshold, top
