"""pgbench select-only load through pgcloak (TLS + SCRAM) in every query mode."""

import re

import pytest

from util import pg_tool, run


@pytest.fixture(scope="module")
def pgbench_initialized(pg):
    """pgbench -i straight against the cluster, once for the module."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LC_ALL": "C.UTF-8"}
    p = run([pg_tool("pgbench"), "-i", "-s", "1", "-q", pg.dsn(sslmode="require")],
            env=env, timeout=180)
    assert p.returncode == 0, p.stderr
    return True


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only(mode, pgbench_initialized, pgcloak, client_env):
    proxy = pgcloak()
    p = run([pg_tool("pgbench"), "-S", "-T", "5", "-c", "4", "-j", "2", "-M", mode, "-n",
             proxy.dsn(sslmode="require")], env=client_env, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    assert processed and int(processed.group(1)) > 0, out
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed and int(failed.group(1)) == 0, out
    assert f"query mode: {mode}" in out
