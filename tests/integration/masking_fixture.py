"""Masking setup shared by test_masking.py and test_masking_attacks.py: the
demo policies over the shop fixture (deploy/fixture/shop.sql), the mask key,
and client helpers for masked sessions through pgcloak.

Policies (first match wins, memberships are followed through nested groups):
  admins    data_admins, app_services   everything unmasked
  support   support_team                email, partial phone, last4 cards,
                                        birth year, SSN/address redacted,
                                        names allowed, notes redact_patterns
  analytics analytics_team (analyst is  email hashed, everything else
            a member via bi_readers)    redacted (full names included)
"""
from __future__ import annotations

import re
import time

import psycopg

from shop import SHOP_PASSWORDS

MASK_KEY = "integration-test-mask-key-0123456789abcdef"
MASK_KEY_ENV = "PGCLOAK_MASK_KEY"

MASKING = {
    "hash_key_env": MASK_KEY_ENV,
    "protected_columns": [
        {"column": "public.customers.full_name", "category": "person_name"},
        {"column": "public.customers.email", "category": "email"},
        {"column": "public.customers.phone", "category": "phone"},
        {"column": "public.customers.ssn", "category": "national_id"},
        {"column": "public.customers.card_number", "category": "card_number"},
        {"column": "public.customers.birth_date", "category": "birth_date"},
        {"column": "public.customers.address", "category": "address"},
        {"column": "public.customers.notes", "category": "free_text"},
        {"column": "public.payments.card_number", "category": "card_number"},
    ],
    "policies": [
        {"name": "admins", "roles": ["data_admins", "app_services"], "default": "allow"},
        {"name": "support", "roles": ["support_team"], "default": "redact", "rules": {
            "email": "email",
            "phone": {"mask": "partial", "keep_first": 0, "keep_last": 2, "fill": "*"},
            "card_number": "last4",
            "birth_date": {"mask": "generalize", "to": "year"},
            "national_id": "redact",
            "person_name": "allow",
            "free_text": "redact_patterns",
        }},
        {"name": "analytics", "roles": ["analytics_team"], "default": "redact", "rules": {
            "email": "hash",
        }},
    ],
}

# notes is free text masked with redact_patterns: a note without personal
# data stays as it is, so leak checks look for the other columns' values
# (which is also what a note would leak).
PROTECTED = ["email", "phone", "ssn", "card_number", "address"]


def masking_overrides(dbname: str, refresh_interval: str = "60s") -> dict:
    """pgcloak config overrides: the policies above, the catalog read from
    `dbname` as the fixture's `pgcloak` login."""
    return {
        "masking": MASKING,
        "catalog": {"user": "pgcloak", "password": SHOP_PASSWORDS["pgcloak"], "dbname": dbname,
                    "refresh_interval": refresh_interval},
    }


def connect(proxy, user: str, dbname: str = "shop", **kw) -> psycopg.Connection:
    """A shop login through pgcloak (TLS + SCRAM), autocommit."""
    return psycopg.connect(proxy.dsn(user=user, dbname=dbname, password=SHOP_PASSWORDS[user]),
                           autocommit=True, **kw)


def wait_for_masking(conn: psycopg.Connection) -> None:
    """The catalog loads asynchronously at start; until then statements are refused (fail closed)."""
    for _ in range(100):
        try:
            conn.execute("SELECT 1 FROM customers LIMIT 1").fetchall()
            return
        except psycopg.errors.CannotConnectNow:
            time.sleep(0.1)
    raise AssertionError("the masking catalog did not load within 10 s")


def assert_no_leak(rows, raw_values) -> None:
    for row in rows:
        for v in row:
            if isinstance(v, str):
                assert v not in raw_values, f"raw protected value leaked: {v!r}"
                for word in re.findall(r"[\w.+-]+@[\w.-]+|\+?[\d-]{11,}", v):
                    assert word not in raw_values, f"raw protected value leaked inside text: {word!r}"


def start_masked_proxy(pg, certs, workroot: str, dbname: str, prefix: str):
    """A pgcloak of its own (not the conftest's per-test factory) with the
    policies above and its catalog read from `dbname`, started with the mask
    key in its environment only; the caller stops it."""
    import os
    import tempfile

    from proxy import Pgcloak, deep_merge, default_config

    cfg = deep_merge(default_config(pg, certs), masking_overrides(dbname))
    p = Pgcloak(tempfile.mkdtemp(prefix=prefix, dir=workroot), cfg, certs)
    saved = os.environ.get(MASK_KEY_ENV)
    os.environ[MASK_KEY_ENV] = MASK_KEY  # inherited by the pgcloak process only at start
    try:
        p.start()
    finally:
        if saved is None:
            os.environ.pop(MASK_KEY_ENV, None)
        else:
            os.environ[MASK_KEY_ENV] = saved
    return p
