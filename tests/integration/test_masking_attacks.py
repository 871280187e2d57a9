"""The attack classes of MASKING-THREATS.md (/work/shared) run end to end:
psycopg (and node-postgres) as the masked logins `support` and `analyst`
through pgcloak, against PostgreSQL 15 holding the shop fixture.

The fixture is loaded into its own database (`shop_attack`) so these tests
may change hidden values; pgcloak's catalog is read from that database.

For every statement of the corpus (classes 1-19) the test requires either

  * a pgcloak refusal: SQLSTATE 42501 with "(rule ...)" in the message, or
  * results (rows, command tags, errors, notices) that do not depend on the
    hidden values. Two independent checks:
      - mutation: run, change the hidden parts of every protected value as
        the superuser (keeping what the mask legitimately shows: the first
        character and domain of an email, the last digits of a phone or card,
        the birth year; anything for redacted columns), run again, compare;
        restore the values from a backup;
      - oracle: the same statement, run directly on PostgreSQL as the same
        role over copies of the protected relations that hold only the values
        the role sees through pgcloak (schemas oracle_support and
        oracle_analyst, first on search_path), must give the same results.
        This is what covers the analyst's `hash` mask, whose output
        legitimately changes with the value.

and that no raw protected value (emails and their local parts, phones, SSNs,
card numbers, street addresses, and full names for the analyst) appears in
any row, error or notice field, or notification, over the simple and
extended protocol, binary results, COPY TO STDOUT (text and binary),
DECLARE/FETCH, psycopg named cursors and a pipeline.

Each test names the MASKING-THREATS class it covers. Class 20 (replication,
protocol versions, SSL/GSS negotiation) has no SQL and is covered by
test_tls.py / test_auth.py.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field

import psycopg
import pytest

import pgwire
from clients import psql
from masking_fixture import start_masked_proxy, wait_for_masking
from masking_fixture import connect as masked_connect
from shop import SHOP_PASSWORDS, load_shop
from util import run

ATTACK_DB = "shop_attack"
HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "node")
MASKED_ROLES = ("support", "analyst")
ROLE_GROUP = {"support": "support_team", "analyst": "analytics_team"}
VIP_OFFSET = 100_000  # ids of the inheritance child's rows


# --- fixtures ------------------------------------------------------------------------------

# Objects added to the attack database on top of the shop fixture, as the
# superuser, before pgcloak reads the catalog:
#  - write privileges and CREATE on public for the masked groups, so that
#    writes-that-read (class 13) and server-side copies (class 10) are
#    stopped by pgcloak, not by missing grants;
#  - an inheritance child of customers (class 8), a view computing from
#    protected columns and a materialized view (class 11), a SECURITY
#    DEFINER function reading customers (classes 11 and 16).
EXTRA_OBJECTS = f"""
CREATE TABLE public.customers_vip () INHERITS (public.customers);
INSERT INTO public.customers_vip SELECT id + {VIP_OFFSET}, full_name, email, phone, ssn, card_number, birth_date,
    address, notes, created_at FROM ONLY public.customers WHERE id <= 20;
CREATE VIEW public.contact_labels AS SELECT id, full_name || ' <' || email || '>' AS label FROM public.customers;
CREATE MATERIALIZED VIEW public.customer_emails_mv AS SELECT id, email, phone FROM public.customers;
CREATE FUNCTION public.leak_customers() RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public AS 'SELECT email FROM public.customers';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO support_team, analytics_team;
GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO support_team, analytics_team;
GRANT CREATE ON SCHEMA public TO support_team, analytics_team;
CREATE SCHEMA attack_backup;
CREATE TABLE attack_backup.customers AS SELECT * FROM public.customers;
CREATE TABLE attack_backup.payments AS SELECT id, paid_at, card_number FROM public.payments;
ANALYZE;
"""

# Mutations of the hidden values, per role. Each keeps NULLs NULL, and for
# support keeps exactly what that policy shows: an email's first character
# and domain (email mask), a phone's last two characters and length
# (partial), a card's last four digits, separators and length (last4), the
# birth year (generalize to year), and the non-pattern text of notes
# (redact_patterns: only the emails, phones and cards in them change).
# The analyst sees every column redacted except email (hash): those change
# arbitrarily; email is left alone because its hash legitimately follows
# it, and the oracle check covers it.
SUPPORT_MUTATION = r"""
UPDATE public.customers SET
  email = left(email, 1) || 'zq' || reverse(substr(split_part(email, '@', 1), 2)) || '@' || split_part(email, '@', 2),
  phone = translate(left(phone, -2), '0123456789', '9876543210') || right(phone, 2),
  ssn = translate(ssn, '0123456789', '5678901234'),
  card_number = translate(left(card_number, -4), '0123456789', '3456789012') || right(card_number, 4),
  birth_date = make_date(extract(year FROM birth_date)::int, 13 - extract(month FROM birth_date)::int,
                         least(extract(day FROM birth_date)::int, 28)),
  address = 'Flat 9, ' || reverse(address),
  notes = regexp_replace(regexp_replace(regexp_replace(notes,
            '([A-Za-z])[A-Za-z0-9._%+-]*@', '\1zzq@', 'g'),
            '\d{4}([- ])\d{4}[- ]\d{4}[- ]\d{4}', '6011\10000\10000\10004', 'g'),
            '\+1-555-0\d\d-\d{4}', '+1-555-099-9999', 'g');
UPDATE public.payments SET
  card_number = translate(left(card_number, -4), '0123456789', '3456789012') || right(card_number, 4);
REFRESH MATERIALIZED VIEW public.customer_emails_mv;
"""
ANALYST_MUTATION = r"""
UPDATE public.customers SET
  full_name = 'Zed ' || reverse(full_name),
  phone = translate(phone, '0123456789', '9876543210'),
  ssn = translate(ssn, '0123456789', '5678901234'),
  card_number = translate(card_number, '0123456789', '3456789012'),
  birth_date = birth_date + 1234,
  address = 'Flat 9, ' || reverse(address),
  notes = reverse(notes);
UPDATE public.payments SET card_number = translate(card_number, '0123456789', '3456789012');
REFRESH MATERIALIZED VIEW public.customer_emails_mv;
"""
RESTORE = """
UPDATE public.customers c SET full_name = b.full_name, email = b.email, phone = b.phone, ssn = b.ssn,
  card_number = b.card_number, birth_date = b.birth_date, address = b.address, notes = b.notes
  FROM attack_backup.customers b WHERE b.id = c.id;
UPDATE public.payments p SET card_number = b.card_number FROM attack_backup.payments b
  WHERE b.id = p.id AND b.paid_at = p.paid_at;
REFRESH MATERIALIZED VIEW public.customer_emails_mv;
"""
MUTATIONS = {"support": SUPPORT_MUTATION, "analyst": ANALYST_MUTATION}


@pytest.fixture(scope="module")
def attack_shop(pg):
    shop = load_shop(pg, ATTACK_DB, scale=1, recreate=True)
    with shop.admin() as c:
        c.execute(EXTRA_OBJECTS)
    return shop


@pytest.fixture(scope="module")
def attack_proxy(pg, certs, workroot, attack_shop):
    """One pgcloak for the module (the conftest factory is per test), with
    the demo policies and its catalog read from the attack database."""
    p = start_masked_proxy(pg, certs, workroot, ATTACK_DB, "pgcloak-attacks-")
    try:
        with masked_connect(p, "support", dbname=ATTACK_DB) as c:
            wait_for_masking(c)
        yield p
    finally:
        p.terminate()


@pytest.fixture
def proxy(attack_proxy, request):
    """The module's pgcloak; its log is attached to a failing test's report
    (conftest.pytest_runtest_makereport), and it must still be alive after."""
    request.node._pgcloak_instances = [attack_proxy]
    assert attack_proxy.alive(), "pgcloak is not running"
    yield attack_proxy
    assert attack_proxy.alive(), f"pgcloak exited during the test:\n{attack_proxy.log()}"


def via(proxy, user: str, **kw) -> psycopg.Connection:
    return masked_connect(proxy, user, dbname=ATTACK_DB, **kw)


# --- raw values and the leak scanner --------------------------------------------------------

STREET = re.compile(r"\d{1,4} [A-Z][a-z]+ (?:Street|Avenue|Road|Lane|Drive|Court|Boulevard|Way)")
EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]*[A-Za-z0-9]")
WORD = re.compile(r"[A-Za-z0-9._%+'-]{6,}")
DIGITS_DASH = re.compile(r"\d[\d-]*\d")
DIGITS_SPACE = re.compile(r"\d[\d ]*\d")
CARD_IN_TEXT = re.compile(r"\d{4}[- ]\d{4}[- ]\d{4}[- ]\d{4}")
PHONE_IN_TEXT = re.compile(r"\+1-555-0\d\d-\d{4}")


@dataclass
class RawValues:
    """Every protected value of the attack database, in the forms the
    scanner looks for."""
    exact: set[str] = field(default_factory=set)     # emails, street lines
    locals: set[str] = field(default_factory=set)    # email local parts (>= 6 chars)
    digits: set[str] = field(default_factory=set)    # phones, SSNs, cards as digit strings
    names: set[str] = field(default_factory=set)     # full names
    name_re: re.Pattern | None = None
    by_id: dict[int, dict] = field(default_factory=dict)

    def add_email(self, e: str) -> None:
        self.exact.add(e)
        local = e.rsplit("@", 1)[0]
        if len(local) >= 6:
            self.locals.add(local)

    def add_digits(self, s: str) -> None:
        d = re.sub(r"\D", "", s)
        if len(d) >= 9:
            self.digits.add(d)

    def leaks(self, text: str, names: bool) -> list[str]:
        """Raw values found in text (empty when none)."""
        found = []
        for m in EMAIL.findall(text):
            if m in self.exact or m.rsplit("@", 1)[0] in self.locals:
                found.append(m)
        for m in WORD.findall(text):
            if m in self.locals:
                found.append(m)
        for rx in (DIGITS_DASH, DIGITS_SPACE):
            for m in rx.findall(text):
                d = re.sub(r"\D", "", m)
                if d in self.digits:
                    found.append(m)
        for m in re.findall(r"\d{9,}", text):
            if m in self.digits:
                found.append(m)
        for m in STREET.findall(text):
            if m in self.exact:
                found.append(m)
        if names and self.name_re is not None:
            for m in self.name_re.findall(text):
                if m in self.names:
                    found.append(m)
        return found


@pytest.fixture(scope="module")
def raw(attack_shop) -> RawValues:
    r = RawValues()
    with attack_shop.admin() as c:
        rows = c.execute("SELECT id, full_name, email, phone, ssn, card_number, address, notes, birth_date "
                         "FROM public.customers").fetchall()
        cards = c.execute("SELECT DISTINCT card_number FROM public.payments WHERE card_number IS NOT NULL").fetchall()
    firsts, lasts = set(), set()
    for id_, name, email, phone, ssn, card, address, notes, birth in rows:
        r.by_id[id_] = dict(full_name=name, email=email, phone=phone, ssn=ssn, card_number=card,
                            address=address, notes=notes, birth_date=birth)
        if email:
            r.add_email(email)
        for v in (phone, ssn, card):
            if v:
                r.add_digits(v)
        if address:
            r.exact.add(address)
            r.exact.update(STREET.findall(address))
        if name:
            r.names.add(name)
            first, last = name.split(" ", 1)
            firsts.add(first)
            lasts.add(last)
        if notes:  # values inside free text are protected too
            for e in EMAIL.findall(notes):
                r.add_email(e)
            for v in CARD_IN_TEXT.findall(notes) + PHONE_IN_TEXT.findall(notes):
                r.add_digits(v)
    for (card,) in cards:
        r.add_digits(card)
    alt = lambda words: "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))  # noqa: E731
    r.name_re = re.compile(rf"(?:{alt(firsts)}) (?:{alt(lasts)})")
    assert len(r.exact) > 15000 and len(r.digits) > 25000 and len(r.names) > 1000
    return r


def _strings(v, out: list[str]) -> None:
    """Every string a value holds, with bytes decoded, and hex or base64
    cells decoded as well (an encode()d raw value is still a leak)."""
    if v is None:
        return
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        out.append(b.decode("utf-8", "replace"))
        return
    if isinstance(v, dict):
        for k, x in v.items():
            _strings(k, out)
            _strings(x, out)
        return
    if isinstance(v, (list, tuple, set)):
        for x in v:
            _strings(x, out)
        return
    s = v if isinstance(v, str) else str(v)
    out.append(s)
    if 12 <= len(s) <= 4096:
        h = s[2:] if s.startswith("\\x") else s
        if len(h) % 2 == 0 and re.fullmatch(r"[0-9a-fA-F]+", h):
            out.append(binascii.unhexlify(h).decode("utf-8", "replace"))
        elif len(s) % 4 == 0 and re.fullmatch(r"[A-Za-z0-9+/\n]+=*", s):
            try:
                out.append(base64.b64decode(s).decode("utf-8", "replace"))
            except (binascii.Error, ValueError):
                pass


def leaks_in(raw: RawValues, role: str, *values) -> list[str]:
    parts: list[str] = []
    for v in values:
        _strings(v, parts)
    return raw.leaks("\n".join(parts), names=(role == "analyst"))


def assert_nothing_leaked(raw: RawValues, role: str, what: str, *values) -> None:
    found = leaks_in(raw, role, *values)
    assert not found, f"LEAK: raw protected values reached {role} ({what}): {sorted(set(found))[:10]}"


def diag_fields(e: psycopg.Error) -> dict:
    d = e.diag
    names = ("severity", "sqlstate", "message_primary", "message_detail", "message_hint", "context",
             "internal_query", "schema_name", "table_name", "column_name", "datatype_name", "constraint_name",
             "statement_position", "internal_position")
    return {n: getattr(d, n) for n in names if getattr(d, n) is not None}


# --- the corpus -----------------------------------------------------------------------------


@dataclass
class Attack:
    cls: int
    steps: list                 # str, or (str, params) for psycopg parameters
    expect: str | None = None   # "refuse": pgcloak must refuse it (rule in the message)
    oracle: bool = True         # False: the oracle schemas cannot stand in (qualified names, search_path)
    tx: bool = True             # run inside BEGIN ... ROLLBACK (keeps the database as it was)

    @property
    def key(self) -> str:
        first = self.steps[-1] if len(self.steps) > 1 else self.steps[0]
        text = first[0] if isinstance(first, tuple) else first
        return f"c{self.cls:02d}:" + re.sub(r"\s+", " ", text)[:70]


def A(cls, *steps, **kw) -> Attack:
    return Attack(cls, list(steps), **kw)


def R(cls, *steps, **kw) -> Attack:
    return Attack(cls, list(steps), expect="refuse", **kw)


# {email1} etc. are replaced by SQL literals of customer 1's real values,
# %(x)s parameters with the values themselves (see Literals).
CORPUS: list[Attack] = [
    # 1. Predicates on the masked column: compare with a guess, read the answer from the row count.
    A(1, "SELECT count(*) FROM customers WHERE email = {email1}"),
    A(1, "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id AND c.phone = {phone1} ORDER BY o.id"),
    A(1, "SELECT o.status, count(*) FROM orders o JOIN customers c ON c.id = o.customer_id "
         "GROUP BY o.status HAVING max(c.card_number) > {card1_prefix}"),
    A(1, "SELECT count(*) FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id "
         "AND c.address LIKE {street1_like})"),
    A(1, "SELECT count(*) FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE birth_date < {birth1})"),
    A(1, "SELECT sum(CASE WHEN email LIKE {email1_prefix} THEN 1 ELSE 0 END), "
         "sum(CASE WHEN ssn = {ssn1} THEN 1 ELSE 0 END) FROM customers"),
    A(1, "SELECT count(*) FILTER (WHERE ssn = {ssn1}), count(*) FILTER (WHERE card_number = {card1}), "
         "count(*) FILTER (WHERE notes LIKE {notes_email_like}) FROM customers"),
    A(1, "SELECT count(*) FROM payments WHERE card_number = {card1}"),
    A(1, "SELECT id FROM customers WHERE full_name = {name1} AND email = {email1}"),
    A(1, ("SELECT count(*) FROM customers WHERE email = %s OR phone = %s OR ssn = %s OR address = %s",
          ["email1", "phone1", "ssn1", "address1"])),
    # 2. Pattern brute force, one character at a time.
    A(2, "SELECT count(*) FROM customers WHERE email LIKE {email1_prefix}"),
    A(2, "SELECT count(*) FROM customers WHERE email ILIKE upper({email1_prefix})"),
    A(2, "SELECT count(*) FROM customers WHERE phone SIMILAR TO {phone1_similar}"),
    A(2, "SELECT count(*) FROM customers WHERE email ~ {email1_regex}"),
    A(2, "SELECT count(*) FROM customers WHERE substring(card_number FROM 1 FOR 4) = '4242'"),
    A(2, "SELECT count(*) FROM customers WHERE substr(email, 2, 1) = substr({email1}, 2, 1)"),
    A(2, "SELECT count(*) FROM customers WHERE position('.' IN email) = position('.' IN {email1})"),
    A(2, "SELECT count(*) FROM customers WHERE left(phone, 9) = left({phone1}, 9)"),
    A(2, "SELECT count(*) FROM customers WHERE email < {email1} AND email > {email1_prefix_bare}"),
    A(2, "SELECT count(*) FROM customers WHERE birth_date BETWEEN {birth1} AND {birth1}::date + 10"),
    A(2, "SELECT count(*) FROM customers WHERE split_part(email, '@', 1) = {email1_local}"),
    A(2, "SELECT count(*) FROM customers WHERE ssn LIKE {ssn1_prefix} OR address ~ {street1_regex}"),
    A(2, ("SELECT count(*) FROM customers WHERE email LIKE %s", ["email1_prefix"])),
    # 3. Ordering and ranking.
    A(3, "SELECT id FROM customers ORDER BY email, id LIMIT 30"),
    A(3, "SELECT id FROM customers ORDER BY card_number DESC NULLS LAST, id LIMIT 30"),
    A(3, "SELECT id, rank() OVER (ORDER BY birth_date) FROM customers WHERE id <= 300"),
    A(3, "SELECT id, dense_rank() OVER (PARTITION BY left(phone, 7) ORDER BY phone) FROM customers WHERE id <= 300"),
    A(3, "SELECT DISTINCT ON (email) email, id FROM customers ORDER BY email, id LIMIT 50"),
    A(3, "SELECT min(email), max(email), min(card_number), max(phone), min(ssn), max(address), min(birth_date) "
         "FROM customers"),
    A(3, "SELECT max(card_number), min(card_number) FROM payments_2025_01"),
    A(3, "SELECT id, lag(email) OVER (ORDER BY id), lead(card_number) OVER (ORDER BY id) FROM customers "
         "WHERE id <= 100"),
    A(3, "SELECT id FROM customers ORDER BY ssn, address, id LIMIT 20"),
    # 4. Aggregates and grouping.
    A(4, "SELECT email, count(*) FROM customers GROUP BY email ORDER BY 2 DESC, 1 LIMIT 20"),
    A(4, "SELECT count(DISTINCT phone), count(DISTINCT email), count(DISTINCT card_number), count(DISTINCT ssn), "
         "count(DISTINCT address), count(DISTINCT birth_date) FROM customers"),
    A(4, "SELECT string_agg(email, ',' ORDER BY id) FROM customers WHERE id <= 200"),
    A(4, "SELECT array_agg(card_number ORDER BY id) FROM payments WHERE customer_id <= 50"),
    A(4, "SELECT json_agg(address ORDER BY id), json_agg(phone ORDER BY id) FROM customers WHERE id <= 100"),
    A(4, "SELECT jsonb_object_agg(id, notes) FROM customers WHERE id <= 200"),
    A(4, "SELECT birth_date, count(*) FROM customers GROUP BY ROLLUP (birth_date) ORDER BY 1 NULLS LAST LIMIT 30"),
    A(4, "SELECT mode() WITHIN GROUP (ORDER BY card_number), mode() WITHIN GROUP (ORDER BY email) FROM customers"),
    A(4, "SELECT customer_id, count(DISTINCT card_number) FROM payments_2025_01 GROUP BY customer_id "
         "ORDER BY customer_id LIMIT 50"),
    A(4, "SELECT count(*) FROM customers GROUP BY GROUPING SETS ((email), (phone)) ORDER BY 1 DESC LIMIT 10"),
    # 5. Derived values: functions, operators, casts, encodings.
    A(5, "SELECT id, email::bytea, md5(email), sha256(convert_to(card_number, 'UTF8')) FROM customers "
         "WHERE id <= 100"),
    A(5, "SELECT id, encode(convert_to(address, 'UTF8'), 'base64'), encode(convert_to(phone, 'UTF8'), 'hex') "
         "FROM customers WHERE id <= 100"),
    A(5, "SELECT id, reverse(phone), translate(card_number, '0123456789', 'abcdefghij'), to_hex(length(email)), "
         "ascii(substr(email, 2, 1)) FROM customers WHERE id <= 100"),
    A(5, "SELECT id, to_json(email), email || '|' || phone || '|' || ssn, format('%s/%s', address, card_number) "
         "FROM customers WHERE id <= 100"),
    A(5, "SELECT id, extract(month FROM birth_date), birth_date::text, to_char(birth_date, 'MM-DD') "
         "FROM customers WHERE id <= 100"),
    A(5, "SELECT id, upper(full_name), lower(notes), octet_length(address), length(email) FROM customers "
         "WHERE id <= 100"),
    A(5, "SELECT sum(ascii(substr(ssn, 1, 1))), sum(length(email)), sum(hashtext(phone)::numeric) FROM customers"),
    A(5, "SELECT id, regexp_replace(card_number, '\\D', '', 'g'), replace(ssn, '-', '') FROM customers "
         "WHERE id <= 100"),
    A(5, "SELECT id, card_number::bigint FROM payments WHERE customer_id = 1"),
    # 6. Error and notice text.
    A(6, "SELECT email::int FROM customers WHERE id = 2"),
    A(6, "SELECT phone::date FROM customers WHERE id = 2"),
    A(6, "SELECT address::json FROM customers WHERE id = 3"),
    A(6, "SELECT replace(ssn, '-', '')::int / 0 FROM customers WHERE id = 4"),
    A(6, "CREATE TEMP TABLE seen6 (e text PRIMARY KEY)", "INSERT INTO seen6 SELECT email FROM customers WHERE id = 1",
      "INSERT INTO seen6 SELECT email FROM customers WHERE id = 1", tx=False),
    A(6, "CREATE TEMP TABLE chk6 (p text CHECK (p IS NULL), c text)",
      "INSERT INTO chk6 SELECT phone, card_number FROM customers WHERE id = 1", tx=False),
    R(6, "DO $$ BEGIN RAISE NOTICE '%', (SELECT email FROM customers WHERE id = 1); END $$"),
    R(6, "DO $$ BEGIN RAISE EXCEPTION '%', (SELECT card_number FROM customers WHERE id = 1); END $$"),
    R(6, "CREATE FUNCTION pg_temp.f6(text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RAISE WARNING '%', $1; "
         "RETURN 1; END $$"),
    # 7. Whole-row references.
    A(7, "SELECT t FROM customers t WHERE id <= 50"),
    A(7, "SELECT t::text FROM customers t WHERE id <= 50"),
    A(7, "SELECT row_to_json(t) FROM customers t WHERE id <= 50"),
    A(7, "SELECT to_jsonb(c) FROM customers c WHERE id <= 50"),
    A(7, "SELECT ROW(t.*) FROM customers t WHERE id <= 50"),
    A(7, "SELECT customers FROM customers WHERE id <= 50"),
    A(7, "SELECT (p).card_number, p::text FROM payments p WHERE customer_id <= 20"),
    A(7, "SELECT email(c), phone(c), c.* FROM customer_contacts c WHERE id <= 50"),
    A(7, "SELECT count(*) FROM customers t WHERE t::text LIKE {email1_anywhere}"),
    # 8. Indirection: subqueries, CTEs, LATERAL, set operations, partitions, inheritance.
    A(8, "SELECT email FROM (SELECT * FROM customers) s WHERE s.id <= 50"),
    A(8, "WITH x AS (SELECT * FROM customers) SELECT count(*) FROM x WHERE email = {email1}"),
    A(8, "WITH x AS MATERIALIZED (SELECT id, email, card_number FROM customers) SELECT * FROM x WHERE id <= 50"),
    A(8, "WITH RECURSIVE r AS (SELECT id, email FROM customers WHERE id = 1 UNION ALL "
         "SELECT c.id, c.email FROM customers c JOIN r ON c.id = r.id + 1 WHERE c.id <= 30) SELECT * FROM r"),
    A(8, "WITH customers AS (SELECT * FROM public.customers) SELECT email, phone FROM customers WHERE id <= 20",
      oracle=False),
    A(8, "SELECT o.id, x.email FROM orders o, LATERAL (SELECT email FROM customers c WHERE c.id = o.customer_id) x "
         "WHERE o.id <= 50"),
    A(8, "SELECT count(*) FROM (SELECT email FROM customers UNION SELECT {email1}) u"),
    A(8, "SELECT email FROM customers INTERSECT SELECT {email1}"),
    A(8, "SELECT phone FROM customers WHERE id <= 100 EXCEPT ALL SELECT phone FROM customer_contacts WHERE id <= 50"),
    A(8, "SELECT v.e, c.id FROM (VALUES ({email1}), ('x@example.com')) v(e) JOIN customers c ON c.email = v.e"),
    A(8, "TABLE customer_contacts ORDER BY id LIMIT 30"),
    A(8, "SELECT count(*), count(DISTINCT email), max(card_number) FROM ONLY customers"),
    A(8, "SELECT id, card_number FROM payments_2025_01 WHERE customer_id <= 200"),
    A(8, "SELECT count(*) FROM payments_2025_01 WHERE card_number LIKE {card1_prefix_like}"),
    A(8, "SELECT card_number FROM ONLY payments"),
    A(8, "SELECT id, email, phone, ssn FROM customers_vip ORDER BY id"),
    A(8, "SELECT count(*) FROM customers_vip WHERE email = {email1}"),
    A(8, "SELECT id, email FROM customers * WHERE id > 100000"),
    # 9. Naming tricks.
    A(9, 'SELECT email FROM "customers" WHERE id <= 20'),
    A(9, "SELECT email FROM CuStOmErS WHERE id <= 20"),
    A(9, 'SELECT email FROM U&"\\0063ustomers" WHERE id <= 20'),
    A(9, 'SELECT U&"\\0065mail" FROM public.customers WHERE id <= 20', oracle=False),
    A(9, 'SELECT email FROM "public"."customers" WHERE id <= 20', oracle=False),
    A(9, f"SELECT email FROM {ATTACK_DB}.public.customers WHERE id <= 20", oracle=False),
    A(9, "SELECT email FROM /* customers */ customers -- trailing\nWHERE id <= 20"),
    A(9, "SELECT $$customers$$, email FROM customers WHERE id <= 20"),
    A(9, "SELECT 1; SELECT count(*) FROM customers WHERE email = {email1}; SELECT phone FROM customers WHERE id = 1"),
    A(9, "SET search_path = pg_temp, public; SELECT email FROM customers WHERE id <= 20", oracle=False),
    # 10. Server-side copies, then reading the copy.
    # Outside a transaction (tx=False), so that pgcloak's catalog refresh
    # after the DDL can see the new relation; cleaned up by the last step.
    A(10, "CREATE TEMP TABLE cp10a AS SELECT * FROM customer_contacts", "SELECT * FROM cp10a WHERE id <= 50",
      "DROP TABLE cp10a", tx=False),
    A(10, "CREATE TABLE cp10b AS SELECT id, email, phone FROM customers",
      "SELECT * FROM cp10b WHERE id <= 50", "SELECT count(*) FROM cp10b WHERE email = {email1}",
      "DROP TABLE IF EXISTS cp10b", tx=False),
    A(10, "SELECT id, card_number INTO TEMP cp10c FROM payments_2025_01", "SELECT * FROM cp10c ORDER BY id LIMIT 30",
      "DROP TABLE cp10c", tx=False),
    A(10, "INSERT INTO orders (id, customer_id, status) SELECT id + 1000000, id, email FROM customers WHERE id <= 20",
      "SELECT id, status FROM orders WHERE id > 1000000"),
    R(10, "CREATE VIEW v10 AS SELECT * FROM customers"),
    R(10, "CREATE MATERIALIZED VIEW mv10 AS SELECT email FROM customers"),
    R(10, "CREATE TEMP VIEW v10t AS SELECT email FROM customers"),
    # 11. Views, functions and procedures.
    A(11, "SELECT * FROM customer_contacts WHERE id <= 50"),
    A(11, "SELECT count(*) FROM customer_contacts WHERE email = {email1} OR phone = {phone1}"),
    A(11, "SELECT phone, count(*) FROM customer_contacts GROUP BY phone ORDER BY 2 DESC, 1 LIMIT 10"),
    A(11, "SELECT id FROM contact_labels WHERE id <= 20"),
    R(11, "SELECT label FROM contact_labels WHERE id <= 20"),
    A(11, "SELECT * FROM customer_emails_mv WHERE id <= 20"),
    A(11, "SELECT count(*) FROM customer_emails_mv WHERE email = {email1}"),
    R(11, "SELECT leak_customers()"),
    R(11, "SELECT * FROM public.leak_customers() LIMIT 5"),
    R(11, "SELECT query_to_xml('select email from customers', true, true, '')"),
    R(11, "SELECT table_to_xml('customers', true, true, '')"),
    R(11, "SELECT * FROM ts_stat('SELECT to_tsvector(email) FROM customers')"),
    R(11, f"SELECT * FROM dblink('dbname={ATTACK_DB}', 'select email from customers') AS t(e text)"),
    R(11, "DO $$ BEGIN EXECUTE 'SELECT email FROM customers'; END $$"),
    # 12. COPY.
    A(12, "COPY (SELECT id, email, phone, ssn, card_number, address FROM customers WHERE id <= 100) TO STDOUT"),
    # oracle=False: through pgcloak this COPY also returns the inheritance
    # child's rows (see test_copy_table_behaves_as_postgres).
    A(12, "COPY customers (id, email, phone) TO STDOUT", oracle=False),
    A(12, "COPY customer_contacts TO STDOUT WITH (FORMAT csv, HEADER)", oracle=False),  # ditto, and a view
    A(12, "COPY payments_2025_01 (id, card_number) TO STDOUT"),
    A(12, "COPY (SELECT id, email, card_number FROM customers WHERE id <= 100 ORDER BY id) TO STDOUT (FORMAT binary)"),
    R(12, "COPY customers TO '/tmp/pgcloak-attack-copy'"),
    R(12, "COPY (SELECT email FROM customers) TO PROGRAM 'cat > /dev/null'"),
    # 13. Writes that read (the affected-row count is an oracle too).
    R(13, "UPDATE customers SET notes = 'x' WHERE id = 1 RETURNING email"),
    R(13, "DELETE FROM customers WHERE id = 1 RETURNING *"),
    R(13, "UPDATE customers SET address = 'x' WHERE email = {email1}"),
    R(13, "UPDATE customers SET notes = email WHERE id = 1"),
    R(13, "INSERT INTO customers (id, email) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET address = 'x' "
          "RETURNING email"),
    R(13, "MERGE INTO orders o USING customers c ON o.customer_id = c.id "
          "WHEN MATCHED AND c.email = {email1} THEN UPDATE SET status = 'x'"),
    R(13, "WITH d AS (DELETE FROM customers WHERE email = {email1} RETURNING id) SELECT count(*) FROM d"),
    R(13, "DELETE FROM payments WHERE card_number = {card1}"),
    A(13, "UPDATE orders SET status = 'x' WHERE customer_id IN (SELECT id FROM customers WHERE email = {email1})"),
    A(13, "UPDATE orders SET status = c.email FROM customers c WHERE c.id = orders.customer_id AND c.id <= 5 "
          "RETURNING orders.id, orders.status"),
    A(13, "DELETE FROM orders USING payments p WHERE p.customer_id = orders.customer_id "
          "AND p.card_number = {card1} RETURNING p.card_number"),
    # 14. Extended protocol at the SQL level: PREPARE/EXECUTE, cursors, parameters.
    A(14, "PREPARE p14a AS SELECT email, phone FROM customers WHERE id = $1", "EXECUTE p14a(1)", "EXECUTE p14a(2)"),
    A(14, "PREPARE p14b (text) AS SELECT count(*) FROM customers WHERE email = $1", "EXECUTE p14b({email1})"),
    A(14, "DECLARE c14 CURSOR FOR SELECT id, email, card_number FROM customers ORDER BY id", "FETCH 20 FROM c14",
      "MOVE 100 IN c14", "FETCH 5 FROM c14"),
    A(14, "DECLARE c14b SCROLL CURSOR FOR SELECT * FROM customer_contacts ORDER BY id", "FETCH LAST FROM c14b",
      "FETCH ABSOLUTE 5 FROM c14b"),
    A(14, "DECLARE c14c BINARY CURSOR FOR SELECT card_number FROM payments WHERE customer_id <= 10 ORDER BY id",
      "FETCH ALL FROM c14c"),
    A(14, ("SELECT id, email FROM customers WHERE email = %s OR id = %s", ["email1", 3])),
    A(14, ("SELECT count(*) FROM customers WHERE card_number LIKE %s", ["card1_prefix_like"])),
    # 15. Fast-path function calls: the SQL spellings here, the FunctionCall
    #     message in test_fast_path_function_call_is_refused.
    R(15, "SELECT lo_export(1, '/tmp/pgcloak-attack-lo')"),
    R(15, "SELECT lo_get(1)"),
    R(15, "SELECT pg_catalog.pg_read_file('/etc/hostname')"),
    # 16. Identity switching.
    R(16, "SET ROLE data_admins"),
    R(16, "SET SESSION AUTHORIZATION admin"),
    R(16, "RESET ROLE"),
    R(16, 'SET "ROLE" TO data_admins'),
    R(16, "SELECT set_config('role', 'data_admins', false)"),
    R(16, "SELECT 1; SET ROLE data_admins; SELECT email FROM customers WHERE id = 1"),
    R(16, "GRANT data_admins TO analyst"),
    R(16, "SELECT pgcloak.get_auth('admin')"),
    # 17. Catalog and statistics.
    R(17, "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'customers'"),
    R(17, "SELECT * FROM pg_catalog.pg_statistic"),
    R(17, "SELECT * FROM pg_stats_ext"),
    R(17, "SELECT query FROM pg_stat_activity"),
    R(17, "EXPLAIN SELECT * FROM customers WHERE email = {email1}"),
    R(17, "EXPLAIN ANALYZE SELECT count(*) FROM customers WHERE email LIKE 'a%'"),
    R(17, "SELECT statement FROM pg_prepared_statements"),
    R(17, "SELECT current_query()"),
    R(17, "SET debug_print_plan = on"),
    # 18. Timing and side effects.
    R(18, "SELECT CASE WHEN email = {email1} THEN pg_sleep(0.2) END FROM customers WHERE id = 1"),
    R(18, "SELECT pg_sleep_for('10 milliseconds')"),
    R(18, "SELECT count(*) FROM customers WHERE email = {email1} AND pg_sleep(0.2) IS NOT NULL"),
    A(18, "LISTEN attack18", "SELECT pg_notify('attack18', email || '/' || phone || '/' || card_number) "
                             "FROM customers WHERE id <= 3", tx=False, oracle=False),
    A(18, "SELECT count(pg_advisory_xact_lock(hashtext(email))) FROM customers WHERE id <= 5",
      "SELECT objid, objsubid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() ORDER BY 1",
      oracle=False),
    A(18, "CREATE TEMP SEQUENCE s18", "SELECT setval('s18', length(email) + length(address)) FROM customers "
                                     "WHERE id = 1", "SELECT last_value FROM s18", tx=False),
    # 19. Large objects and files.
    R(19, "SELECT lo_from_bytea(0, convert_to(email, 'UTF8')) FROM customers WHERE id = 1"),
    R(19, "SELECT lo_import('/etc/hostname')"),
    R(19, "SELECT pg_read_file('/etc/hostname')"),
    R(19, "SELECT * FROM pg_ls_dir('.')"),
    R(19, "SELECT * FROM pg_largeobject"),
    R(19, "COPY (SELECT email FROM customers) TO PROGRAM 'cat > /tmp/pgcloak-attack-prog'"),
]
CLASSES = sorted({a.cls for a in CORPUS})
assert CLASSES == list(range(1, 20))
assert all(sum(a.cls == c for a in CORPUS) >= 3 for c in CLASSES)
assert len({a.key for a in CORPUS}) == len(CORPUS)


def literals(raw: RawValues) -> dict[str, str]:
    """The real values the corpus guesses with (customer 1), as Python values."""
    c = raw.by_id[1]
    assert all(c[k] is not None for k in ("email", "phone", "ssn", "card_number", "address", "birth_date"))
    street = STREET.findall(c["address"])[0]
    note_email = next(e for n in (v["notes"] for v in raw.by_id.values() if v["notes"])
                      for e in EMAIL.findall(n))
    local = c["email"].split("@")[0]
    return {
        "email1": c["email"], "phone1": c["phone"], "ssn1": c["ssn"], "card1": c["card_number"],
        "address1": c["address"], "name1": c["full_name"], "birth1": c["birth_date"].isoformat(),
        "email1_prefix": c["email"][:4] + "%", "email1_prefix_bare": c["email"][:4],
        "email1_anywhere": "%" + c["email"] + "%", "email1_local": local,
        "email1_regex": "^" + re.escape(c["email"][:5]),
        "phone1_similar": c["phone"][:10].replace("+", "\\+") + "%",
        "card1_prefix": c["card_number"][:7], "card1_prefix_like": c["card_number"][:9] + "%",
        "ssn1_prefix": c["ssn"][:5] + "%", "street1_like": "%" + street + "%", "street1_regex": "^" + street,
        "notes_email_like": "%" + note_email + "%",
    }


def render(step, lits: dict[str, str]):
    """(sql text, params or None) with the guesses filled in."""
    if isinstance(step, tuple):
        text, params = step
        return text, [lits.get(p, p) if isinstance(p, str) else p for p in params]

    def lit(m):
        return "'" + lits[m.group(1)].replace("'", "''") + "'"
    return re.sub(r"\{(\w+)\}", lit, step), None


# --- running statements ---------------------------------------------------------------------


def is_copy_out(text: str) -> bool:
    return bool(re.match(r"\s*COPY\b", text, re.I)) and bool(re.search(r"\bTO\s+STDOUT\b", text, re.I))


def norm_rows(rows) -> list:
    """Rows as a sorted list of reprs: order-insensitive (physical order
    changes when values are updated); ordering attacks carry their order
    in the values (ids, ranks, LIMIT)."""
    return sorted(repr(tuple(r)) for r in rows)


@dataclass
class Outcome:
    kind: str            # ok | error | refused
    value: object        # comparable summary
    scan: list           # everything the client received, for the leak scan


def run_step(conn: psycopg.Connection, text: str, params, mode: str = "simple") -> Outcome:
    try:
        if is_copy_out(text):
            data = bytearray()
            with conn.cursor() as cur:
                with cur.copy(text, params) as cp:
                    for chunk in cp:
                        data += bytes(chunk)
                status = cur.statusmessage
            if "binary" in text.lower():
                return Outcome("ok", (status, bytes(data)), [bytes(data)])
            return Outcome("ok", (status, sorted(bytes(data).split(b"\n"))), [bytes(data)])
        cur = conn.cursor(binary=(mode == "binary"))
        cur.execute(text, params, prepare=True if mode == "extended" else None)
        # Rows as they came off the wire (text or binary cells), not as
        # psycopg loads them: comparisons are exact, and a whole-row value
        # compares by its text whatever its type is called.
        sets, scan = [], []
        for _ in range(100):  # result sets of a multi-statement Query
            res = cur.pgresult
            rows = None
            if res is not None and res.nfields:
                rows = [tuple(res.get_value(r, c) for c in range(res.nfields)) for r in range(res.ntuples)]
                scan.append(rows)
            sets.append((cur.statusmessage, None if rows is None else norm_rows(rows)))
            if not cur.nextset():
                break
        return Outcome("ok", sets, scan)
    except psycopg.Error as e:
        fields = diag_fields(e)
        msg = fields.get("message_primary") or str(e)
        if fields.get("sqlstate") == "42501" and "(rule " in msg:
            return Outcome("refused", msg, [fields, str(e)])
        detail = fields.get("message_detail")
        if detail and detail.startswith("[pgcloak removed"):
            detail = "<scrubbed>"
        return Outcome("error", (fields.get("sqlstate"), msg, detail), [fields, str(e)])


@dataclass
class Run:
    outcomes: list[Outcome]
    notices: list
    notifies: list

    @property
    def refused(self) -> bool:
        return any(o.kind == "refused" for o in self.outcomes)

    def comparable(self, oracle: bool = False):
        vals = []
        for o in self.outcomes:
            v = o.value
            if oracle and o.kind == "error":
                v = (v[0], v[1])  # pgcloak scrubs value-bearing DETAILs; the oracle does not
            vals.append((o.kind, v))
        return vals, sorted(self.notifies)

    def scan_items(self):
        return [o.scan for o in self.outcomes] + [self.notices, self.notifies]


def catalog_refreshing(o: Outcome) -> bool:
    return o.kind == "error" and o.value[0] == "55000" and "catalog" in o.value[1]


def run_attack(conn: psycopg.Connection, attack: Attack, lits, mode: str = "simple", prelude=()) -> Run:
    notices, notifies = [], []
    conn.add_notice_handler(lambda d: notices.append({k: getattr(d, k) for k in (
        "severity", "sqlstate", "message_primary", "message_detail", "message_hint", "context")}))
    conn.add_notify_handler(lambda n: notifies.append((n.channel, n.payload)))
    outcomes = []
    if attack.tx:
        conn.execute("BEGIN")
    for p in prelude:
        conn.execute(p)
    for step in attack.steps:
        text, params = render(step, lits)
        for _ in range(50):  # bounded: 10 s
            o = run_step(conn, text, params, mode)
            # After DDL pgcloak refreshes its catalog and, fail closed, refuses
            # statements naming relations it has not seen yet (55000); outside
            # a transaction the refresh sees them, so retry the step.
            if attack.tx or not catalog_refreshing(o):
                break
            time.sleep(0.2)
        outcomes.append(o)
    if attack.tx:
        conn.execute("ROLLBACK")
    else:
        conn.execute("SELECT 1")  # lets notifications of the last statement arrive
    return Run(outcomes, notices, notifies)


def run_via(proxy, role, attack, lits, mode="simple") -> Run:
    with via(proxy, role) as conn:
        return run_attack(conn, attack, lits, mode)


def run_oracle(shop, role, attack, lits) -> Run:
    """The statement directly on PostgreSQL as `role`, with the oracle
    schema (the role's masked view of every protected relation) first on
    search_path."""
    with shop.admin() as conn:
        return run_attack(conn, Attack(attack.cls, attack.steps, attack.expect), lits, prelude=(
            f"SET LOCAL ROLE {role}", f"SET LOCAL search_path = oracle_{role}, public"))


def check_refusal(run: Run, attack: Attack, role: str, mode: str) -> None:
    for o in run.outcomes:
        if o.kind == "refused":
            assert re.search(r"\(rule [\w:-]+\)", o.value), o.value
    if attack.expect == "refuse":
        assert run.refused, (f"{role}/{mode}: pgcloak must refuse {attack.key!r} (MASKING-THREATS class "
                             f"{attack.cls}) but it ran: {[o.value for o in run.outcomes]!r}"[:2000])


# The oracle: per masked role, schema oracle_<role> holds the protected
# relations (and the view, materialized view and inheritance child) filled
# with what that role reads through pgcloak. Owned by the superuser; the
# role may read and write it like the real tables.
ORACLE_DDL = """
CREATE SCHEMA {s};
CREATE TABLE {s}.customers (LIKE public.customers INCLUDING ALL);
CREATE TABLE {s}.customers_vip () INHERITS ({s}.customers);
CREATE TABLE {s}.payments (LIKE public.payments INCLUDING DEFAULTS) PARTITION BY RANGE (paid_at);
CREATE TABLE {s}.customer_emails_mv (id bigint, email text, phone text);
CREATE VIEW {s}.customer_contacts AS SELECT id, full_name, email, phone FROM {s}.customers;
CREATE VIEW {s}.contact_labels AS SELECT id, full_name || ' <' || email || '>' AS label FROM {s}.customers;
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'public.payments'::regclass
  LOOP
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.payments %s', '{s}', r.relname, '{s}', r.bound);
  END LOOP;
END $$;
GRANT USAGE, CREATE ON SCHEMA {s} TO {g};
GRANT ALL ON ALL TABLES IN SCHEMA {s} TO {g};
"""


@pytest.fixture(scope="module")
def oracles(attack_shop, attack_proxy):
    with attack_shop.admin() as adm:
        for role in MASKED_ROLES:
            schema = f"oracle_{role}"
            adm.execute(ORACLE_DDL.format(s=schema, g=ROLE_GROUP[role]))
            with via(attack_proxy, role) as c:
                for src, dst in (("ONLY customers", "customers"), ("customers_vip", "customers_vip"),
                                 ("payments", "payments"), ("customer_emails_mv", "customer_emails_mv")):
                    with c.cursor() as cur, adm.cursor() as w:
                        with cur.copy(f"COPY (SELECT * FROM {src}) TO STDOUT") as cin, \
                                w.copy(f"COPY {schema}.{dst} FROM STDIN") as cout:
                            for chunk in cin:
                                cout.write(chunk)
        adm.execute("ANALYZE")
    return True


@pytest.fixture(scope="module")
def lits(raw):
    return literals(raw)


# --- 1. the corpus, class by class: refused, or independent of the hidden values -----------


@pytest.mark.parametrize("role", MASKED_ROLES)
@pytest.mark.parametrize("cls", CLASSES)
def test_attack_class(cls, role, proxy, attack_shop, raw, lits, oracles):
    """MASKING-THREATS class `cls`: every statement is refused (42501, rule
    named) or gives the same results after the hidden values change, and
    the same results as over the role's masked copy (oracle)."""
    attacks = [a for a in CORPUS if a.cls == cls]
    before = {}
    for a in attacks:
        r = run_via(proxy, role, a, lits)
        check_refusal(r, a, role, "simple")
        assert_nothing_leaked(raw, role, a.key, *r.scan_items())
        before[a.key] = r
        if a.oracle and not r.refused:
            o = run_oracle(attack_shop, role, a, lits)
            assert r.comparable(oracle=True) == o.comparable(oracle=True), (
                f"LEAK? {role}: {a.key!r} through pgcloak differs from the same statement over the "
                f"masked copy (class {cls})")
    with attack_shop.admin() as adm:
        adm.execute(MUTATIONS[role])
    try:
        for a in attacks:
            r = run_via(proxy, role, a, lits)
            assert_nothing_leaked(raw, role, a.key + " (after the change)", *r.scan_items())
            assert r.comparable() == before[a.key].comparable(), (
                f"LEAK: {role}: the result of {a.key!r} depends on hidden values (class {cls}):\n"
                f"before: {before[a.key].comparable()!r}\nafter:  {r.comparable()!r}"[:4000])
    finally:
        with attack_shop.admin() as adm:
            adm.execute(RESTORE)


def test_mutations_change_hidden_values_and_keep_masks(proxy, attack_shop, lits):
    """The mutation check above proves something only if the mutations do
    change the raw values (and, for support, keep the masked ones)."""
    q = "SELECT email, phone, ssn, card_number, birth_date, address, notes FROM customers WHERE id <= 300 ORDER BY id"
    for role in MASKED_ROLES:
        with via(proxy, role) as c:
            masked_before = c.execute(q).fetchall()
        with attack_shop.admin() as adm:
            raw_before = adm.execute(q).fetchall()
            adm.execute(MUTATIONS[role])
            try:
                raw_after = adm.execute(q).fetchall()
                with via(proxy, role) as c:
                    masked_after = c.execute(q).fetchall()
            finally:
                adm.execute(RESTORE)
            assert adm.execute(q).fetchall() == raw_before  # restored
        changed = [sum(1 for b, a in zip(raw_before, raw_after) if b[i] is not None and b[i] != a[i])
                   for i in range(7)]
        nonnull = [sum(1 for b in raw_before if b[i] is not None) for i in range(7)]
        # The analyst's email (hash) is not mutated: the oracle covers it.
        for i in (range(7) if role == "support" else range(1, 7)):
            if role == "support" and i == 6:  # notes: only the emails, phones and cards in them change
                assert changed[i] > nonnull[i] // 10, (role, i, changed[i])
            else:
                assert changed[i] == nonnull[i], (role, i, changed[i], nonnull[i])
        assert masked_after == masked_before, f"{role}: the mutation changed what the mask shows"


def test_checks_catch_raw_reads(attack_shop, raw, lits, oracles):
    """The checks have teeth: the same corpus run straight on PostgreSQL as
    support (no pgcloak, so raw values) trips the mutation check and the
    oracle check for most statements, and the leak scanner for those that
    return values rather than counts."""
    sample = [a for a in CORPUS if a.cls in (1, 2, 3, 4, 5, 7, 8) and a.expect is None and a.oracle]
    before, leaked, differs_oracle = {}, 0, 0
    for a in sample:
        with attack_shop.connect("support") as c:
            r = run_attack(c, a, lits)
        before[a.key] = r
        leaked += bool(leaks_in(raw, "analyst", *r.scan_items()))
        o = run_oracle(attack_shop, "support", a, lits)
        differs_oracle += r.comparable(oracle=True) != o.comparable(oracle=True)
    changed = 0
    with attack_shop.admin() as adm:
        adm.execute(SUPPORT_MUTATION)
    try:
        for a in sample:
            with attack_shop.connect("support") as c:
                changed += run_attack(c, a, lits).comparable() != before[a.key].comparable()
    finally:
        with attack_shop.admin() as adm:
            adm.execute(RESTORE)
    n = len(sample)
    assert n > 70
    assert leaked > n // 3 and changed > n * 2 // 3 and differs_oracle > n * 3 // 4, (n, leaked, changed,
                                                                                     differs_oracle)


# --- 2. no raw value anywhere, over every way of reading ------------------------------------

SELECTS = [a for a in CORPUS if len(a.steps) == 1 and isinstance(a.steps[0], str)
           and re.match(r"\s*(SELECT|WITH|TABLE)\b", a.steps[0], re.I) and ";" not in a.steps[0]
           and a.tx]


@pytest.mark.parametrize("role", MASKED_ROLES)
@pytest.mark.parametrize("mode", ["simple", "extended", "binary"])
def test_no_raw_value_in_any_protocol(mode, role, proxy, raw, lits):
    """Classes 1-19 over the simple protocol, the extended protocol (named
    prepared statements, psycopg parameters), and binary results (class 14):
    no raw value in rows, errors or notices; what must be refused is refused
    in every protocol."""
    conn = None
    try:
        for a in CORPUS:
            if conn is None:
                conn = via(proxy, role)
            r = run_attack(conn, a, lits, mode)
            check_refusal(r, a, role, mode)
            assert_nothing_leaked(raw, role, f"{mode}: {a.key}", *r.scan_items())
            if len(a.steps) > 1 or not a.tx:  # PREPAREd names, LISTEN: start afresh
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()


@pytest.mark.parametrize("role", MASKED_ROLES)
@pytest.mark.parametrize("mode", ["copy_text", "copy_binary", "declare_fetch", "named_cursor", "binary_cursor"])
def test_no_raw_value_through_copy_and_cursors(mode, role, proxy, raw, lits):
    """Classes 12 and 14: every SELECT of the corpus wrapped in COPY (...) TO
    STDOUT (text and binary), DECLARE ... CURSOR / FETCH, a psycopg named
    (server-side) cursor, and a binary DECLARE cursor."""
    assert len(SELECTS) > 80
    with via(proxy, role) as conn:
        for a in SELECTS:
            text, _ = render(a.steps[0], lits)
            wrapped = {
                "copy_text": [f"COPY ({text}) TO STDOUT"],
                "copy_binary": [f"COPY ({text}) TO STDOUT (FORMAT binary)"],
                "declare_fetch": [f"DECLARE k CURSOR FOR {text}", "FETCH 1000 FROM k", "FETCH ALL FROM k"],
                "binary_cursor": [f"DECLARE kb BINARY CURSOR FOR {text}", "FETCH ALL FROM kb"],
            }.get(mode)
            if wrapped is not None:
                r = run_attack(conn, Attack(a.cls, wrapped, a.expect), {})
                check_refusal(r, a, role, mode)
                assert_nothing_leaked(raw, role, f"{mode}: {a.key}", *r.scan_items())
                continue
            # psycopg named cursor: DECLARE through the extended protocol, FETCH in batches.
            got, err = [], None
            conn.execute("BEGIN")
            try:
                with conn.cursor(name="attack_named") as cur:
                    cur.itersize = 500
                    cur.execute(text)
                    for i, row in enumerate(cur):
                        got.append(row)
                        if i > 20000:
                            break
            except psycopg.Error as e:
                err = diag_fields(e)
            conn.execute("ROLLBACK")
            if a.expect == "refuse":
                assert err and err.get("sqlstate") == "42501" and "(rule " in err["message_primary"], (a.key, err)
            assert_nothing_leaked(raw, role, f"{mode}: {a.key}", got, err)


COPY_FIDELITY = {
    # PostgreSQL: COPY tbl TO copies ONLY tbl (10,000 rows), not the child's 20.
    "child_rows": "COPY customers (id) TO STDOUT",
    # PostgreSQL: "cannot copy from view" (COPY (SELECT ...) is the way).
    "view": "COPY customer_contacts TO STDOUT",
}


@pytest.mark.parametrize("case", sorted(COPY_FIDELITY))
@pytest.mark.parametrize("role", MASKED_ROLES)
def test_copy_table_behaves_as_postgres(role, case, proxy, attack_shop):
    """Class 12 fidelity: COPY of a protected table or view through pgcloak
    gives what PostgreSQL gives (same rows, or the same error)."""
    outcomes = []
    for conn in (attack_shop.connect(role), via(proxy, role)):
        with conn:
            try:
                with conn.cursor() as cur, cur.copy(COPY_FIDELITY[case]) as cp:
                    outcomes.append(("rows", sum(bytes(x).count(b"\n") for x in cp)))
            except psycopg.Error as e:
                outcomes.append(("error", e.diag.sqlstate, e.diag.message_primary))
    assert outcomes[0] in (("rows", 10000), ("error", "42809", 'cannot copy from view "customer_contacts"'))
    assert outcomes[1] == outcomes[0], f"{role}: through pgcloak {outcomes[1]}, PostgreSQL {outcomes[0]}"


@pytest.mark.parametrize("role", MASKED_ROLES)
def test_pipeline_with_a_refused_statement(role, proxy, attack_shop, raw, lits):
    """Class 14: a pipeline mixing allowed statements and a refused one
    behaves as PostgreSQL does when a statement fails mid-pipeline: the
    failing one raises, the rest of its sync batch is skipped, earlier
    results are kept, and the connection is usable afterwards."""
    refused = "SELECT query_to_xml('select email from customers', true, true, '')"

    def pipeline(conn, bad):
        out = {}
        with pytest.raises(psycopg.Error) as e:
            with conn.pipeline() as p:
                c1 = conn.execute("SELECT id, email, phone FROM customers WHERE id <= %s ORDER BY id", (5,))
                c2 = conn.cursor(binary=True).execute("SELECT id, card_number FROM payments "
                                                      "WHERE customer_id = %s ORDER BY id", (1,))
                p.sync()
                c3 = conn.execute("SELECT count(*) FROM customers WHERE email = %s", (lits["email1"],))
                conn.execute(bad)  # raises when the pipeline syncs
                c5 = conn.execute("SELECT id, email FROM customers WHERE id = %s", (2,))
                c6 = conn.execute("SELECT 42")
        out["error"] = diag_fields(e.value)
        out["c1"], out["c2"] = c1.fetchall(), c2.fetchall()
        out["c3"] = c3.fetchall()
        for name, cur in (("c5", c5), ("c6", c6)):
            try:
                cur.fetchall()
                out[name] = "ran"
            except psycopg.Error as x:
                out[name] = type(x).__name__
        out["after"] = conn.execute("SELECT count(*) FROM customers WHERE id <= %s", (10,)).fetchone()[0]
        return out

    with via(proxy, role) as conn:
        got = pipeline(conn, refused)
    with attack_shop.connect("admin") as direct:
        ref = pipeline(direct, "SELECT 1 / (id - id) FROM orders WHERE id = 1")  # fails in PostgreSQL
    assert got["error"]["sqlstate"] == "42501" and "(rule deny:function)" in got["error"]["message_primary"], got
    assert ref["error"]["sqlstate"] == "22012"
    assert len(got["c1"]) == 5 and len(got["c2"]) == len(ref["c2"]) and got["c3"] == [(0,)]
    for k in ("c5", "c6"):
        assert got[k] == ref[k], (k, got[k], ref[k])
        assert got[k] != "ran"
    assert got["after"] == ref["after"] == 10
    assert_nothing_leaked(raw, role, "pipeline", got)


def test_fast_path_function_call_is_refused(proxy, attack_shop, raw):
    """Class 15: the FunctionCall message carries no SQL; pgcloak refuses it
    for masked sessions and the session goes on."""
    with attack_shop.admin() as adm:
        oids = [adm.execute(f"SELECT '{f}'::regprocedure::oid").fetchone()[0]
                for f in ("pg_catalog.lo_get(oid)", "pg_catalog.pg_read_file(text)", "pg_catalog.md5(text)")]
    for role in MASKED_ROLES:
        with pgwire.PgWire(proxy.host, proxy.port) as w:
            w.startup(role, ATTACK_DB, password=SHOP_PASSWORDS[role])
            for oid in oids:
                arg = b"/etc/hostname" if oid == oids[1] else b"1"
                body = (oid.to_bytes(4, "big") + (1).to_bytes(2, "big") + (0).to_bytes(2, "big")
                        + (1).to_bytes(2, "big") + len(arg).to_bytes(4, "big") + arg + (0).to_bytes(2, "big"))
                w.send(pgwire.msg(b"F", body))
                msgs = w.read_until_ready()
                errs = pgwire.errors(msgs)
                assert [m.type for m in msgs if m.type == b"V"] == [], f"{role}: FunctionCall {oid} ran"
                assert errs and errs[0].get("C") == "42501" and "(rule deny:function-call)" in errs[0]["M"], errs
                assert_nothing_leaked(raw, role, "FunctionCall", errs)
            msgs = w.simple_query("SELECT email FROM customers WHERE id = 1")
            assert len(pgwire.rows(msgs)) == 1
            assert_nothing_leaked(raw, role, "after FunctionCall", pgwire.rows(msgs))


# --- 3. node-postgres -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_ready():
    if shutil.which("node") is None:
        pytest.fail("node is not installed (deploy/install-deps.sh installs it)")
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "pg")):
        p = run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
    return True


def test_node_postgres_analyst(proxy, certs, client_env, node_ready, raw, lits):
    """Classes 1, 2, 11, 14 with node-postgres (TLS + SCRAM, parameterised
    queries, a named prepared statement): nothing raw comes back and a
    refused statement is 42501."""
    env = dict(client_env)
    env.update(PGC_HOST="127.0.0.1", PGC_PORT=str(proxy.port), PGC_USER="analyst",
               PGC_PASSWORD=SHOP_PASSWORDS["analyst"], PGC_DB=ATTACK_DB, PGC_CA=certs.ca_crt,
               PGC_EMAIL=lits["email1"], PGC_CARD=lits["card1"])
    p = run(["node", os.path.join(NODE_DIR, "masking_attacks.js")], env=env, timeout=120, cwd=NODE_DIR)
    assert p.returncode == 0, f"masking_attacks.js failed:\n{p.stdout}\n{p.stderr}"
    out = json.loads(p.stdout)
    assert out["tls"] is True
    assert out["identity"] == [{"u": "analyst", "d": ATTACK_DB}]
    assert len(out["rows"]) == 50
    assert all(r["full_name"] == "***" and re.fullmatch(r"[0-9a-f]{16}", r["email"]) for r in out["rows"])
    assert out["by_email"] == [{"n": 0}] and out["by_card"] == [{"n": 0}]
    assert len(out["prepared"]) == 2 and all(len(x) == 1 for x in out["prepared"])
    for name in ("refused_file", "refused_xml", "refused_role"):
        assert out[name]["code"] == "42501", out[name]
        assert "(rule " in out[name]["message"], out[name]
    assert out["after_refusal"] == [{"n": 100}]
    assert_nothing_leaked(raw, "analyst", "node-postgres", out, p.stderr)


# --- 4. unmasked roles: byte for byte what PostgreSQL returns --------------------------------

UNMASKED_QUERIES = [
    "SELECT * FROM customers ORDER BY id LIMIT 300",
    "SELECT id, email, phone, ssn, card_number FROM customers WHERE email LIKE 'mary%' ORDER BY id",
    "SELECT * FROM customer_contacts ORDER BY id LIMIT 200",
    "SELECT * FROM payments WHERE customer_id <= 100 ORDER BY id, paid_at",
    "SELECT * FROM payments_2025_03 ORDER BY id LIMIT 100",
    "SELECT c.id, c.full_name, c.card_number, p.card_number, p.amount FROM customers c "
    "JOIN payments p ON p.customer_id = c.id WHERE c.id <= 50 ORDER BY p.id",
    "SELECT t FROM customers t WHERE id <= 40 ORDER BY id",
    "SELECT row_to_json(c) FROM customers c WHERE id <= 40 ORDER BY id",
    "SELECT email, count(*) FROM customers GROUP BY email ORDER BY email LIMIT 100",
    "SELECT min(email), max(ssn), min(card_number), max(birth_date), count(DISTINCT phone) FROM customers",
    "SELECT id, md5(email), email::bytea, birth_date, created_at FROM customers WHERE id <= 100 ORDER BY id",
    "SELECT string_agg(phone, ',' ORDER BY id) FROM customers WHERE id <= 500",
    "SELECT id, notes FROM customers WHERE notes LIKE '%@%' ORDER BY id LIMIT 100",
    "SELECT count(*) FROM customers WHERE ssn LIKE '1%'",
    "WITH x AS (SELECT * FROM customers WHERE id <= 60) SELECT x.*, o.amount FROM x JOIN orders o "
    "ON o.customer_id = x.id ORDER BY o.id",
    "TABLE customer_contacts ORDER BY id LIMIT 50",
]


def raw_result(conn, text: str, binary: bool):
    """The result exactly as it came off the wire: field descriptions and
    every cell's bytes."""
    cur = conn.cursor(binary=binary)
    cur.execute(text)
    res = cur.pgresult
    fields = [(res.fname(i), res.ftable(i), res.ftablecol(i), res.ftype(i), res.fsize(i), res.fmod(i),
               res.fformat(i)) for i in range(res.nfields)]
    cells = [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)]
    return cur.statusmessage, fields, cells


@pytest.mark.parametrize("user", ["admin", "app"])
def test_unmasked_roles_byte_identical(user, proxy, attack_shop):
    with attack_shop.connect(user) as d, via(proxy, user) as p:
        for text in UNMASKED_QUERIES:
            for binary in (False, True):
                direct = raw_result(d, text, binary)
                got = raw_result(p, text, binary)
                assert direct[2], text
                assert got == direct, f"{user}: {text} ({'binary' if binary else 'text'}) differs"
        for copy in ("COPY customers TO STDOUT", "COPY (SELECT * FROM payments ORDER BY id) TO STDOUT (FORMAT binary)"):
            outs = []
            for conn in (d, p):
                with conn.cursor() as cur, cur.copy(copy) as cp:
                    outs.append(b"".join(bytes(x) for x in cp))
            assert outs[0] == outs[1] and len(outs[0]) > 100000, copy


@pytest.mark.parametrize("user", ["admin", "app"])
def test_unmasked_psql_output_identical(user, proxy, attack_shop, client_env):
    """psql prints exactly the same through pgcloak (cf. test_psql.py)."""
    pw = SHOP_PASSWORDS[user]
    direct_dsn = attack_shop.dsn(user)
    proxy_dsn = proxy.dsn(user=user, dbname=ATTACK_DB, password=pw)
    for args, expect in (
            (["-c", "SELECT * FROM customers ORDER BY id LIMIT 60"], "(60 rows)"),
            (["-A", "-F", ",", "-c", "SELECT * FROM customer_contacts ORDER BY id"], "(10020 rows)"),
            (["-c", "SELECT id, customer_id, card_number, amount, paid_at FROM payments "
                    "WHERE customer_id <= 30 ORDER BY id"], "rows)"),
            (["-c", r"\d customers"], "card_number")):
        d = psql(direct_dsn, *args, env=client_env)
        v = psql(proxy_dsn, *args, env=client_env)
        assert d.returncode == 0 and expect in d.stdout, (d.stdout[-500:], d.stderr)
        assert v.returncode == d.returncode and v.stdout == d.stdout and v.stderr == d.stderr, args


# --- 5. legitimate reporting for the analyst --------------------------------------------------

REPORTING = [
    "SELECT count(*) FROM customers",
    "SELECT count(*) FROM orders",
    "SELECT status, count(*), sum(amount) FROM orders GROUP BY status ORDER BY status",
    "SELECT date_trunc('month', created_at) AS m, count(*), sum(amount) FROM orders GROUP BY m ORDER BY m",
    "SELECT date_trunc('month', created_at) AS m, count(*) FROM customers GROUP BY m ORDER BY m",
    "SELECT c.id, count(o.id), sum(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id "
    "GROUP BY c.id ORDER BY c.id LIMIT 200",
    "SELECT c.id, sum(o.amount) AS total FROM customers c JOIN orders o ON o.customer_id = c.id "
    "WHERE o.status = 'delivered' GROUP BY c.id ORDER BY total DESC, c.id LIMIT 25",
    "SELECT id, created_at FROM customers ORDER BY id LIMIT 100",
    "SELECT count(*) FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id "
    "AND o.amount > 400)",
    "SELECT avg(amount)::numeric(10,2), min(amount), max(amount) FROM orders WHERE status = 'paid'",
    "SELECT date_trunc('month', paid_at) AS m, count(*), sum(amount) FROM payments GROUP BY m ORDER BY m",
    "SELECT count(*), sum(amount) FROM payments_2025_01 WHERE amount > 100",
    "SELECT p.customer_id, count(*), sum(p.amount) FROM payments p JOIN customers c ON c.id = p.customer_id "
    "WHERE c.id < 100 GROUP BY p.customer_id ORDER BY p.customer_id",
    "SELECT o.status, count(DISTINCT c.id) FROM orders o LEFT JOIN customers c ON c.id = o.customer_id "
    "GROUP BY o.status ORDER BY o.status",
    "SELECT id, amount, status FROM orders WHERE customer_id = 42 ORDER BY id",
    "SELECT extract(year FROM created_at) AS y, count(*) FROM customers GROUP BY y ORDER BY y",
    "SELECT width_bucket(amount, 0, 500, 10) AS b, count(*) FROM orders GROUP BY b ORDER BY b",
    "SELECT count(*) FROM customer_contacts",
    "SELECT id FROM customer_contacts WHERE id BETWEEN 500 AND 520 ORDER BY id",
    "SELECT c.id, max(o.created_at) FROM customers c JOIN orders o ON o.customer_id = c.id "
    "GROUP BY c.id HAVING count(*) >= 12 ORDER BY c.id",
    "WITH per_customer AS (SELECT customer_id, sum(amount) AS s FROM orders GROUP BY customer_id) "
    "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY s) FROM per_customer",
    "SELECT status, percentile_cont(0.9) WITHIN GROUP (ORDER BY amount) FROM orders GROUP BY status ORDER BY 1",
    "SELECT count(*) FILTER (WHERE o.amount > 250), count(*) FROM orders o JOIN customers c ON c.id = o.customer_id",
    "SELECT c.id, rank() OVER (ORDER BY sum(o.amount) DESC, c.id) FROM customers c JOIN orders o "
    "ON o.customer_id = c.id GROUP BY c.id ORDER BY 2 LIMIT 20",
]


def test_analyst_reporting_matches_direct(proxy, attack_shop):
    """What legitimate users must still be able to do (MASKING-THREATS.md):
    ordinary reporting over non-sensitive columns works as the analyst and
    gives the same numbers as the same query run directly as admin."""
    assert len(REPORTING) >= 20
    with attack_shop.connect("admin") as d, via(proxy, "analyst") as p:
        for text in REPORTING:
            want = d.execute(text).fetchall()
            try:
                got = p.execute(text).fetchall()
            except psycopg.Error as e:
                pytest.fail(f"legitimate reporting query refused or failed for analyst: {text}\n{e}")
            assert want, text
            assert got == want, text
