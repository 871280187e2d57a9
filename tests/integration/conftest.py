"""Fixtures for pgcloak's integration tests.

Session scope: the test PKI (openssl CLI) and one PostgreSQL 15 cluster.
Function scope: `pgcloak(**overrides)`, a factory that writes a YAML config,
starts build/proxy/pgcloak (or $PGCLOAK_BIN) and stops it afterwards.
pgcloak's log is attached to the report of a failing test.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import psycopg
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import certs as certs_mod  # noqa: E402
from pgcluster import PASSWORDS, Cluster, make_cluster  # noqa: E402
from proxy import Pgcloak, deep_merge, default_config, pgcloak_bin  # noqa: E402
from shop import Shop, load_shop  # noqa: E402
from util import IS_ROOT  # noqa: E402

# Clients in these tests must not pick up anything from the environment:
# no PGHOST/PGUSER/..., and no ~/.postgresql/postgresql.crt (a missing sslcert
# file means "no client certificate" to libpq).
for _k in list(os.environ):
    if _k.startswith("PG") and not _k.startswith("PGCLOAK_") and _k != "PGBIN":
        del os.environ[_k]
os.environ["PGSSLCERT"] = "/nonexistent/pgcloak-tests/postgresql.crt"
os.environ["PGSSLKEY"] = "/nonexistent/pgcloak-tests/postgresql.key"
os.environ["PGCONNECT_TIMEOUT"] = "10"


@pytest.fixture(scope="session")
def workroot():
    root = tempfile.mkdtemp(prefix="pgcloak-it-", dir="/tmp")
    os.chmod(root, 0o755)  # the postgres user must reach pg/ inside it
    home = os.path.join(root, "home")
    os.makedirs(home)
    yield root
    if os.environ.get("PGCLOAK_KEEP_TMP"):
        print(f"keeping {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def certs(workroot) -> certs_mod.Certs:
    return certs_mod.generate(os.path.join(workroot, "certs"))


@pytest.fixture(scope="session")
def pg(workroot, certs) -> Cluster:
    cluster = make_cluster(workroot, certs)
    try:
        cluster.init_and_start()
    except BaseException:
        print(cluster.log_tail(), file=sys.stderr)
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def shop(pg) -> Shop:
    """The shared shop fixture (deploy/fixture/shop.sql, scale 1) in database
    `shop` of the session cluster, loaded once. Connection info and the demo
    logins' passwords: see shop.py."""
    return load_shop(pg, "shop", scale=1)


@pytest.fixture
def admin(pg) -> psycopg.Connection:
    """A superuser connection straight to the cluster (Unix socket)."""
    conn = pg.admin("app")
    yield conn
    conn.close()


@pytest.fixture
def client_env(workroot) -> dict:
    """Environment for psql/pgbench/node subprocesses: no PG* leftovers, an
    empty HOME (no ~/.pgpass, ~/.psqlrc or ~/.postgresql)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["HOME"] = os.path.join(workroot, "home")
    env["PGCONNECT_TIMEOUT"] = "10"
    env["LC_ALL"] = "C.UTF-8"
    return env


@pytest.fixture
def pgcloak(request, pg, certs, workroot):
    """Factory: pgcloak(**overrides) -> running Pgcloak.

    Overrides are deep-merged into the default config (see proxy.py); a
    value of None removes a key, e.g. pgcloak(tls=None) runs without TLS."""
    binary = pgcloak_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"pgcloak binary not found at {binary}: build it first "
                    "(cmake -S . -B build -G Ninja && cmake --build build) or set PGCLOAK_BIN")
    started: list[Pgcloak] = []
    request.node._pgcloak_instances = started

    def start(**overrides) -> Pgcloak:
        cfg = deep_merge(default_config(pg, certs), overrides)
        wd = tempfile.mkdtemp(prefix=f"pgcloak-{len(started)}-", dir=workroot)
        p = Pgcloak(wd, cfg, certs)
        started.append(p)
        return p.start()

    yield start

    died = []
    for p in started:
        if p.proc is not None and p.proc.poll() is not None and not p.expect_exit:
            died.append((p, p.proc.returncode))
        p.terminate()
    if died:
        pytest.fail("pgcloak exited unexpectedly during the test: " +
                    ", ".join(f"pid {p.pid} rc={rc}" for p, rc in died), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, p in enumerate(getattr(item, "_pgcloak_instances", [])):
            rep.sections.append((f"pgcloak #{i} log ({p.log_path})", p.log()))
        cluster = item.funcargs.get("pg") if hasattr(item, "funcargs") else None
        if isinstance(cluster, Cluster):
            rep.sections.append(("postgres log (tail)", cluster.log_tail(8000)))


def pytest_report_header(config):
    return [f"pgcloak binary: {pgcloak_bin()}", f"running as root: {IS_ROOT}"]


__all__ = ["PASSWORDS"]
