"""Client-side helpers: psql invocations and psycopg connections."""

from __future__ import annotations

import psycopg

from util import pg_tool, run


def psql(dsn: str, *args: str, env: dict, timeout: float = 60, input: str | None = None):
    """psql -X (no psqlrc) with ON_ERROR_STOP; returns the CompletedProcess
    (text mode)."""
    return run([pg_tool("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn, *args],
               env=env, timeout=timeout, input=input)


def connect(dsn: str, **kw) -> psycopg.Connection:
    kw.setdefault("autocommit", True)
    return psycopg.connect(dsn, **kw)
