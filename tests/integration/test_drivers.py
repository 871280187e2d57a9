"""Real drivers (psycopg 3 and node-postgres) through pgcloak with TLS and
SCRAM produce exactly the output they produce against PostgreSQL directly."""

import hashlib
import json
import os
import shutil
import sys

import pytest

from pgcluster import PASSWORDS
from util import run

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "node")
UNICODE = "h\u00e9llo w\u00f6rld \u65e5\u672c\u8a9e \U0001F418 \u0645\u0631\u062d\u0628\u0627"
BIG_MD5 = hashlib.md5("".join(f"{g}:{hashlib.md5(str(g).encode()).hexdigest()}\n"
                              for g in range(1, 20001)).encode()).hexdigest()


@pytest.fixture(scope="module")
def node_ready():
    if shutil.which("node") is None:
        pytest.fail("node is not installed (deploy/install-deps.sh installs it)")
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "pg")):
        # tests/run.sh does this; do it here too for a bare pytest run.
        p = run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
    return True


def _env(client_env, host, port, certs):
    env = dict(client_env)
    env.update(PGC_HOST=host, PGC_PORT=str(port), PGC_USER="scram_user", PGC_PASSWORD=PASSWORDS["scram_user"],
               PGC_DB="app", PGC_CA=certs.ca_crt)
    return env


def _run_client(cmd, env, cwd=None):
    p = run(cmd, env=env, timeout=120, cwd=cwd)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout)


def _common_checks(out):
    assert out["tls"] is True
    assert out["identity"] == [{"u": "scram_user", "d": "app"}]
    assert out["error"]["code"] == "22012"
    assert out["error"]["message"] == "division by zero"
    assert out["after_error"] == [{"next": 42}]
    assert out["in_tx"] == [{"c": 10}]
    assert out["big"] == {"rows": 20000, "md5": BIG_MD5}
    assert len(out["customers"]) == 12


def test_psycopg_driver(pg, pgcloak, certs, client_env):
    proxy = pgcloak()
    cmd = [sys.executable, os.path.join(HERE, "clients", "psycopg_client.py")]
    direct = _run_client(cmd, _env(client_env, "localhost", pg.port, certs))
    via = _run_client(cmd, _env(client_env, "localhost", proxy.port, certs))
    _common_checks(direct)
    for mode in ("types_text", "types_binary"):
        t = direct[mode][0]
        assert t["uni"] == UNICODE and t["b"] == {"bytea": "000102feff"} and t["nul"] is None
        assert t["texts"] == ["a", None, "\u00f6"] and t["n"] == {"numeric": "12345678901234567890.123456789"}
    assert via == direct


def test_node_postgres_driver(pg, pgcloak, certs, client_env, node_ready):
    proxy = pgcloak()
    cmd = ["node", os.path.join(NODE_DIR, "pg_client.js")]
    direct = _run_client(cmd, _env(client_env, "127.0.0.1", pg.port, certs), cwd=NODE_DIR)
    via = _run_client(cmd, _env(client_env, "127.0.0.1", proxy.port, certs), cwd=NODE_DIR)
    _common_checks(direct)
    t = direct["types"][0]
    assert t["uni"] == UNICODE and t["b"] == {"bytea": "000102feff"} and t["nul"] is None
    assert t["ints"] == [1, 2, 3] and t["n"] == "12345678901234567890.123456789"
    assert t["ts"] == {"timestamp": "2024-02-29T12:34:56.789Z"}
    assert via == direct
