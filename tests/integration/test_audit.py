"""The audit trail end to end (docs/audit.md): real clients through pgcloak
against a real PostgreSQL, records read back from the files pgcloak wrote,
and `pgcloak audit verify` run on them.

What each test shows:
  * statement records carry who, what (normalised, fingerprinted,
    classified, relations, protected columns), the decision and the outcome,
    in the simple and the extended protocol;
  * masked sessions record "masked" / "denied" with the deciding rule;
  * no literal or bind value of the demo customers reaches the audit files;
  * strict durability survives SIGKILL: every statement a client saw the
    result of is in the log, and the chain verifies;
  * tampering (edit, delete, swap, truncate) is found at the right line;
  * rotated files are compressed with zstd (or gzip), readable by the
    standard tools, and a cut compressed file is reported;
  * a failing sink refuses new statements (fail_closed) or holds them
    (block), and nothing is lost once it recovers.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time

import psycopg
import pytest

from audit_fixture import audit_files, audit_overrides, read_records, statements, verify
from masking_fixture import MASK_KEY, MASK_KEY_ENV, masking_overrides, wait_for_masking
from masking_fixture import connect as shop_connect
from pgcluster import PASSWORDS
from syslog_receiver import SyslogReceiver
from util import free_port, wait_for


def wait_records(directory: str, pred, timeout: float = 10.0, what: str = "audit records"):
    return wait_for(lambda: pred(read_records(directory)), timeout, interval=0.05, what=what)


def ended_sessions(records: list[dict]) -> int:
    """Disconnects of sessions that logged in (not the harness's port probes)."""
    return sum(1 for r in records if r["kind"] == "disconnect" and r.get("user"))


def wait_sessions_ended(directory: str, n: int = 1) -> list[dict]:
    return wait_records(directory, lambda rs: rs if ended_sessions(rs) >= n else None,
                        what=f"{n} session(s) to end in the audit log")


@pytest.fixture
def audit_dir(workroot, request):
    d = os.path.join(workroot, "audit-" + request.node.name.replace("[", "-").replace("]", ""))
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def test_statement_records_simple_and_extended(pgcloak, audit_dir):
    proxy = pgcloak(**audit_overrides(audit_dir))
    with psycopg.connect(proxy.dsn(application_name="audit-basic"), autocommit=True) as c:
        c.execute("SELECT id, email FROM customers WHERE id <= 3 ORDER BY id").fetchall()
        c.execute("SELECT count(*) FROM customers WHERE country = %s", ("FR",)).fetchall()
        c.execute("CREATE TEMP TABLE t_audit (x int)")
        c.execute("INSERT INTO t_audit VALUES (1), (2), (3)")
        with pytest.raises(psycopg.errors.UndefinedTable):
            c.execute("SELECT * FROM no_such_table")
    recs = wait_sessions_ended(audit_dir)

    stmts = [r for r in recs if r["kind"] == "statement" and r.get("application_name") == "audit-basic"]
    by_cmd = {}
    for r in stmts:
        by_cmd.setdefault(r.get("command_tag", ""), []).append(r)

    simple = next((r for r in stmts if r.get("normalized", "").startswith("SELECT id, email FROM customers")), None)
    assert simple is not None, "\n".join(json.dumps(r) for r in recs)
    assert simple["protocol"] == "simple"
    assert simple["user"] == "scram_user" and simple["database"] == "app"
    assert simple["rows"] == 3 and simple["command_tag"] == "SELECT 3"
    assert simple["class"] == "READ"
    assert "$1" in simple["normalized"] and "<= 3" not in simple["normalized"]
    assert any("customers" in rel for rel in simple["relations"])
    assert simple["bytes"] > 0 and simple["duration_us"] >= 0
    assert simple["decision"] == "allowed"
    assert len(simple["fingerprint"]) >= 16

    ext = next(r for r in stmts if "count(*)" in r.get("normalized", ""))
    assert ext["protocol"] == "extended"
    assert ext["rows"] == 1 and ext["class"] == "READ"

    ins = next((r for r in stmts if r.get("command_tag", "").startswith("INSERT")), None)
    assert ins is not None, "\n".join(json.dumps(r) for r in recs[8:])
    assert ins["rows"] == 3 and ins["class"] == "WRITE"
    ddl = next(r for r in stmts if r.get("command_tag") == "CREATE TABLE")
    assert ddl["class"] == "DDL"
    failed = next(r for r in stmts if r.get("sqlstate") == "42P01")
    assert "no_such_table" in failed["normalized"]

    kinds = [r["kind"] for r in recs]
    for k in ("audit_started", "connection_opened", "tls", "auth", "statement", "disconnect"):
        assert k in kinds, (k, kinds)
    seqs = [r["seq"] for r in recs]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "sequence numbers must have no gaps"
    assert verify(audit_files(audit_dir)).returncode == 0


def test_auth_failure_is_recorded(pgcloak, audit_dir):
    proxy = pgcloak(**audit_overrides(audit_dir))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(password="wrong-password"))
    recs = wait_records(audit_dir, lambda rs: rs if any(r["kind"] == "auth" for r in rs) else None)
    auth = [r for r in recs if r["kind"] == "auth"]
    assert auth[-1]["result"] == "failed" and auth[-1]["sqlstate"] == "28P01"
    assert auth[-1]["user"] == "scram_user"


# Values of the demo customers that appear in literals and parameters below;
# none may reach the audit files in any form.
SECRETS = ["alice.liddell@example.com", "4242424242424242", "4242-4242-4242-4242", "123-45-6789",
           "Alice Liddell", "+1-555-0100"]


def test_literals_and_parameters_are_not_written(pgcloak, shop, audit_dir, monkeypatch):
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    proxy = pgcloak(**masking_overrides(shop.dbname), **audit_overrides(audit_dir))
    attempts = [
        (f"SELECT id FROM customers WHERE email = '{SECRETS[0]}' OR card_number = '{SECRETS[1]}'", None, False),
        ("SELECT id FROM customers WHERE email = %s OR ssn = %s OR full_name = %s",
         (SECRETS[0], SECRETS[3], SECRETS[4]), False),
        ("SELECT id FROM customers WHERE card_number = %s", (SECRETS[2],), True),
        (f"SELECT E'{SECRETS[5]}' AS x, $q${SECRETS[0]}$q$ AS y -- {SECRETS[1]}", None, False),
        (f"/* {SECRETS[3]} */ SELECT 1", None, False),
        (f"DO $$BEGIN PERFORM '{SECRETS[4]}'; END$$", None, False),
        (f"SELECT '{SECRETS[0]}' FROM", None, False),  # a syntax error: the raw text is not written
    ]
    for user in ("admin", "support"):
        with shop_connect(proxy, user) as c:
            wait_for_masking(c)
            for sql, params, prepare in attempts:
                try:
                    c.execute(sql, params, prepare=prepare)
                except psycopg.Error:
                    pass  # refused for the masked role, or a syntax error: recorded either way
            try:
                with c.cursor() as cur:
                    with cur.copy("COPY (SELECT %s::text) TO STDOUT", (SECRETS[2],)) as cp:
                        list(cp)
            except psycopg.Error:
                pass
    wait_sessions_ended(audit_dir, 2)
    files = audit_files(audit_dir)
    assert files
    for path in files:
        data = open(path, "rb").read()
        for s in SECRETS:
            assert s.encode() not in data, f"{s!r} written to {path}"
    recs = read_records(audit_dir)
    assert any(r.get("decision") == "masked" for r in recs if r["kind"] == "statement")
    assert any(r.get("parse_error") for r in recs if r["kind"] == "statement")


def test_masked_session_records_decisions(pgcloak, shop, audit_dir, monkeypatch):
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    proxy = pgcloak(**masking_overrides(shop.dbname), **audit_overrides(audit_dir))
    with shop_connect(proxy, "support") as c:
        wait_for_masking(c)
        c.execute("SELECT id, email FROM customers ORDER BY id LIMIT 5").fetchall()
        c.execute("SELECT count(*) FROM orders").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT pg_read_file('/etc/passwd')")
    recs = wait_sessions_ended(audit_dir)
    st = [r for r in recs if r["kind"] == "statement" and r.get("user") == "support"]
    masked = next(r for r in st if "email" in r.get("normalized", ""))
    assert masked["decision"] == "masked" and masked["policy"] == "support" and masked["rows"] == 5
    assert "public.customers.email" in masked["protected_columns"]
    plain = next(r for r in st if "orders" in r.get("normalized", ""))
    assert plain["decision"] == "allowed"
    denied = next(r for r in st if "pg_read_file" in r.get("normalized", ""))
    assert denied["decision"] == "denied" and denied["sqlstate"] == "42501" and denied["rule"]


def test_strict_durability_survives_sigkill(pgcloak, audit_dir):
    """Clients note each statement whose result they received; pgcloak is
    SIGKILLed under load; after restart every noted statement is in the log
    and the whole chain verifies."""
    proxy = pgcloak(**audit_overrides(audit_dir, durability="strict"))
    done: dict[int, list[int]] = {i: [] for i in range(6)}
    stop = threading.Event()

    def worker(i: int) -> None:
        try:
            with psycopg.connect(proxy.dsn(application_name=f"crash-{i}"), autocommit=True) as c:
                n = 0
                while not stop.is_set() and n < 100000:
                    # The marker is in an identifier, which normalisation keeps.
                    c.execute(f"SELECT 1 AS m_{i}_{n}").fetchall()
                    done[i].append(n)
                    n += 1
        except psycopg.Error:
            pass  # the proxy was killed under us

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    wait_for(lambda: all(len(v) >= 100 for v in done.values()), 60, what="load to run")
    proxy.proc.kill()
    proxy.proc.wait(timeout=10)
    proxy.expect_exit = True
    stop.set()
    for t in threads:
        t.join(timeout=30)
    acked = {(i, n) for i, ns in done.items() for n in ns}
    assert len(acked) >= 600

    proxy.expect_exit = False
    proxy.start()  # same config and audit directory: the chain continues
    with psycopg.connect(proxy.dsn(application_name="after-crash"), autocommit=True) as c:
        c.execute("SELECT 1 AS after_restart").fetchall()
    recs = wait_records(audit_dir, lambda rs: rs if any("after_restart" in r.get("normalized", "") for r in rs) else None)
    logged = set()
    for r in recs:
        norm = r.get("normalized", "")
        if r["kind"] == "statement" and " AS m_" in norm:
            _, i, n = norm.rsplit(" AS ", 1)[1].split("_")
            logged.add((int(i), int(n)))
    missing = acked - logged
    assert not missing, (f"{len(missing)} of {len(acked)} acknowledged statements missing from the audit log, "
                         f"e.g. {sorted(missing)[:5]}; logged {len(logged)}: {sorted(logged)[:5]}; "
                         f"{[r.get('normalized') for r in recs if r['kind'] == 'statement'][:5]}; "
                         f"files {[(p, os.path.getsize(p)) for p in audit_files(audit_dir)]}; "
                         f"{[(r['seq'], r['kind']) for r in recs][:20]}")
    started = [r for r in recs if r["kind"] == "audit_started"]
    assert len(started) == 2
    res = verify(audit_files(audit_dir))
    assert res.returncode == 0, res.stdout + res.stderr


def _tamper_copy(audit_dir: str, tmp: str) -> str:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(audit_dir, tmp)
    return os.path.join(tmp, "audit.jsonl")


def test_verify_finds_tampering(pgcloak, audit_dir, workroot):
    proxy = pgcloak(**audit_overrides(audit_dir))
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        for i in range(20):
            c.execute(f"SELECT {i} AS n_{i}").fetchall()
    proxy.terminate()
    proxy.expect_exit = True
    files = audit_files(audit_dir)
    assert verify(files).returncode == 0
    lines = open(files[-1]).read().splitlines()
    assert len(lines) > 10
    tmp = os.path.join(workroot, "audit-tamper")

    def check(new_lines: list[str] | None, expect_line: int, raw: bytes | None = None) -> None:
        path = _tamper_copy(audit_dir, tmp)
        with open(path, "wb") as f:
            f.write(raw if raw is not None else ("\n".join(new_lines) + "\n").encode())
        res = verify(audit_files(tmp), workdir=workroot)
        out = res.stdout + res.stderr
        assert res.returncode != 0, out
        assert f"audit.jsonl:{expect_line}" in out, (expect_line, out)

    edited = list(lines)
    edited[5] = edited[5].replace('"rows":1', '"rows":2') if '"rows":1' in edited[5] else edited[5].replace(
        '"seq":', '"seq": ', 1)
    check(edited, 6)
    check(lines[:7] + lines[8:], 8)  # line 8 deleted: the record now at line 8 breaks the chain
    swapped = list(lines)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    check(swapped, 4)
    whole = open(files[-1], "rb").read()
    check(None, len(lines), raw=whole[: len(whole) - 10])  # torn last record


@pytest.mark.parametrize("compress,suffix", [("zstd", ".zst"), ("gzip", ".gz")])
def test_rotated_files_are_compressed_and_verify(pgcloak, audit_dir, workroot, compress, suffix):
    # 64 KiB files (the smallest rotate_size) fill after about a hundred records.
    proxy = pgcloak(**audit_overrides(audit_dir, file={"rotate_size": "64KiB", "compress": compress}))
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        for i in range(600):
            c.execute("SELECT %s::int AS n", (i,)).fetchall()
    wait_for(lambda: sum(p.endswith(suffix) for p in audit_files(audit_dir)) >= 3, 20, interval=0.1,
             what=f"three rotated {suffix} files")
    proxy.terminate()
    proxy.expect_exit = True
    files = audit_files(audit_dir)
    compressed = [p for p in files if p.endswith(suffix)]
    # Decoded by the zstd command / Python's gzip: standard files.
    seqs = [r["seq"] for r in read_records(audit_dir)]
    assert seqs == list(range(1, len(seqs) + 1)), "records missing or doubled across rotated files"
    assert len([r for r in read_records(audit_dir) if r.get("kind") == "statement"]) >= 600
    res = verify(files, workdir=workroot)
    assert res.returncode == 0, res.stdout + res.stderr
    # A compressed file cut in half is reported as truncated, by name.
    tmp = os.path.join(workroot, "audit-cut-" + compress)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(audit_dir, tmp)
    victim = os.path.join(tmp, os.path.basename(compressed[1]))
    raw = open(victim, "rb").read()
    with open(victim, "wb") as f:
        f.write(raw[: len(raw) // 2])
    res = verify(audit_files(tmp), workdir=workroot)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert os.path.basename(victim) in out and "truncated" in out, out


def test_records_follow_statements_closed_deallocated_and_reused(pgcloak, audit_dir):
    """Named statements closed (protocol Close) or deallocated (SQL, as
    psycopg does) and their names reused: every Execute's record carries the
    text its statement had then, and none is left without one."""
    import pgwire as P
    proxy = pgcloak(**audit_overrides(audit_dir))
    w = P.PgWire(proxy.host, proxy.port, timeout=20)
    w.start_tls()
    w.startup("trust_user", "app", params={"application_name": "audit-names"})

    def run(stmt: str, portal: str = "") -> None:
        w.send(P.bind(portal=portal, stmt=stmt) + P.execute(portal) + P.sync())
        assert w.read_until_ready()[-1].type == b"Z"

    w.send(P.parse("SELECT 1 AS first_text", "s1") + P.sync())
    w.read_until_ready()
    run("s1")
    w.send(P.close(b"S", "s1") + P.parse("SELECT 2 AS second_text", "s1") + P.sync())
    w.read_until_ready()
    run("s1")
    w.simple_query("DEALLOCATE s1")
    w.send(P.parse("SELECT 3 AS third_text", "s1") + P.sync())
    w.read_until_ready()
    run("s1", portal="p1")  # a named portal, gone with its transaction
    w.simple_query("DEALLOCATE ALL")
    w.send(P.parse("SELECT 4 AS fourth_text", "S1") + P.sync())
    w.read_until_ready()
    run("S1")
    w.close()

    recs = wait_sessions_ended(audit_dir)
    execs = [r for r in recs if r["kind"] == "statement" and r.get("application_name") == "audit-names"
             and r.get("command_tag", "").startswith("SELECT") and r.get("portal_name") is not None]
    texts = [r.get("normalized", "") for r in execs if r.get("statement_name") in ("s1", "S1")
             and r["protocol"] == "extended" and r.get("rows") == 1]
    for word in ("first_text", "second_text", "third_text", "fourth_text"):
        assert sum(word in t for t in texts) == 1, (word, texts)
    assert all(t for t in texts), texts

    # psycopg deallocates the statements it evicts with SQL DEALLOCATE.
    with psycopg.connect(proxy.dsn(application_name="audit-psycopg-evict"), autocommit=True) as c:
        c.prepare_threshold = 0
        c.prepared_max = 2
        for round_ in range(3):
            for i in range(6):
                c.execute(f"SELECT %s::int AS col_{i}", (round_,)).fetchall()
    recs = wait_sessions_ended(audit_dir, 2)
    stmts = [r for r in recs if r["kind"] == "statement" and r.get("application_name") == "audit-psycopg-evict"
             and r["protocol"] == "extended" and r.get("command_tag") == "SELECT 1"]
    for i in range(6):
        assert sum(f"col_{i}" in r.get("normalized", "") for r in stmts) == 3, (i, [r.get("normalized") for r in stmts])


def test_failed_parse_keeps_the_old_statement_in_records(pgcloak, audit_dir):
    """A Parse that PostgreSQL refuses (42P05 for a name in use, a syntax
    error) leaves the name bound to its old statement, and that is what a
    later Execute runs: the record must say so, not name the refused text.
    Before, `s1` reparsed as `SELECT 2 AS decoy` was recorded for the
    Execute that ran `SELECT 1 AS real_text`."""
    import pgwire as P
    proxy = pgcloak(**audit_overrides(audit_dir))
    w = P.PgWire(proxy.host, proxy.port, timeout=20)
    w.start_tls()
    w.startup("trust_user", "app", params={"application_name": "audit-reparse"})

    def run(stmt: str) -> list:
        w.send(P.bind(stmt=stmt) + P.execute() + P.sync())
        return w.read_until_ready()

    w.send(P.parse("SELECT 1 AS real_text", "s1") + P.sync())
    assert not P.errors(w.read_until_ready())
    # Refused: the name is in use (42P05), and a syntax error.
    w.send(P.parse("SELECT 2 AS decoy_in_use", "s1") + P.sync())
    assert [e.get("C") for e in P.errors(w.read_until_ready())] == ["42P05"]
    w.send(P.parse("SELECT 3 AS decoy_syntax FROM", "s1") + P.sync())
    assert [e.get("C") for e in P.errors(w.read_until_ready())] == ["42601"]
    assert P.rows(run("s1")) == [[b"1"]]
    # In one pipeline: the failed Parse makes PostgreSQL skip the rest up to
    # Sync, and the Parse it skipped binds nothing either.
    w.send(P.parse("SELECT 4 AS decoy_pipelined", "s1") + P.parse("SELECT 5 AS decoy_skipped", "s2")
           + P.bind(stmt="s1") + P.execute() + P.sync())
    assert [e.get("C") for e in P.errors(w.read_until_ready())] == ["42P05"]
    assert P.rows(run("s1")) == [[b"1"]]
    assert [e.get("C") for e in P.errors(run("s2"))] == ["26000"]  # s2 does not exist
    # The unnamed statement: a failed Parse leaves none.
    w.send(P.parse("SELECT 6 AS unnamed_text") + P.sync())
    w.read_until_ready()
    w.send(P.parse("SELECT 7 AS decoy_unnamed FROM") + P.sync())
    w.read_until_ready()
    assert [e.get("C") for e in P.errors(run(""))] == ["26000"]
    w.close()

    recs = wait_sessions_ended(audit_dir)
    execs = [r for r in recs if r["kind"] == "statement" and r.get("application_name") == "audit-reparse"
             and r.get("statement_name") == "s1" and r.get("command_tag", "").startswith("SELECT")]
    assert len(execs) == 2, execs
    assert all("real_text" in r.get("normalized", "") for r in execs), [r.get("normalized") for r in execs]
    text = json.dumps([r for r in recs if r.get("application_name") == "audit-reparse"
                       and r.get("command_tag", "").startswith("SELECT")])
    assert "decoy" not in text


def test_fetch_records_name_the_cursors_relations(pgcloak, audit_dir):
    # psycopg's named (server-side) cursor: DECLARE, then FETCHes that name
    # only the cursor.
    proxy = pgcloak(**audit_overrides(audit_dir))
    with psycopg.connect(proxy.dsn(application_name="audit-cursor")) as c:
        with c.cursor(name="by_chunks") as cur:
            cur.itersize = 2
            cur.execute("SELECT id, email FROM customers ORDER BY id LIMIT 5")
            assert len(cur.fetchall()) == 5
    recs = wait_sessions_ended(audit_dir)
    stmts = [r for r in recs if r["kind"] == "statement" and r.get("application_name") == "audit-cursor"]
    fetches = [r for r in stmts if r.get("command") == "FETCH"]
    assert fetches, [r.get("normalized") for r in stmts]
    for r in fetches:
        assert r.get("cursor") == "by_chunks", r
        assert any("customers" in rel for rel in r["relations"]), r
    assert sum(r["rows"] for r in fetches) == 5


@pytest.mark.parametrize("on_failure", ["fail_closed", "block"])
def test_failing_sink_refuses_or_holds_then_recovers(pgcloak, audit_dir, on_failure):
    port = free_port()
    receiver = SyslogReceiver(port).start()
    proxy = pgcloak(**audit_overrides(audit_dir, on_failure=on_failure, durability="batched",
                                      syslog={"host": "127.0.0.1", "port": port, "connect_timeout": "1s"}))
    try:
        with psycopg.connect(proxy.dsn(application_name="sink-fail"), autocommit=True) as c:
            c.execute("SELECT 1 AS before_failure").fetchall()
            wait_for(lambda: receiver.messages, 10, what="syslog to receive records")
            receiver.stop()
            # The sink notices on its next writes; statements then stop.
            refused = None
            if on_failure == "fail_closed":
                for i in range(200):
                    try:
                        c.execute(f"SELECT 1 AS during_{i}").fetchall()
                    except psycopg.errors.IoError as e:
                        refused = e
                        break
                    time.sleep(0.05)
                assert refused is not None, "statements kept running while the audit sink was down"
                assert "audit" in str(refused)
                receiver.start()
                wait_for(lambda: _runs(c, "SELECT 1 AS after_recovery"), 20, interval=0.2,
                         what="statements to run again after the sink recovered")
            else:
                # Held, not refused: statements stop making progress while
                # the sink is down and all complete once it is back.
                progress: list[int] = []
                errors: list[Exception] = []

                def load() -> None:
                    try:
                        for i in range(300):
                            c.execute(f"SELECT 1 AS during_{i}").fetchall()
                            progress.append(i)
                            time.sleep(0.02)
                    except Exception as e:  # noqa: BLE001 - reported below
                        errors.append(e)

                t = threading.Thread(target=load)
                t.start()
                stalled = False
                try:
                    last, since = -1, time.monotonic()
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and t.is_alive():
                        if len(progress) != last:
                            last, since = len(progress), time.monotonic()
                        elif time.monotonic() - since > 2:
                            stalled = True
                            break
                        time.sleep(0.1)
                finally:
                    # Whatever happened, let the held statements finish
                    # before the connection is closed under them.
                    receiver.start()
                    t.join(timeout=60)
                    if t.is_alive():
                        log = proxy.log()
                        proxy.kill()  # unblocks the client thread, so the test can end
                        proxy.expect_exit = True
                        t.join(timeout=30)
                        pytest.fail(f"held statements did not resume after the sink recovered\n{log}")
                assert stalled, (f"statements kept completing while the audit sink was down "
                                 f"({len(progress)} done)\n{proxy.log()}")
                assert not t.is_alive() and not errors, errors
                assert len(progress) == 300
        recs = wait_sessions_ended(audit_dir)
        seqs = [r["seq"] for r in recs]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the file lost records"
        # Everything written while the receiver was down reached it afterwards.
        try:
            wait_for(lambda: set(seqs) <= receiver.seqs(), 20, what="syslog to catch up")
        except TimeoutError:
            missing = sorted(set(seqs) - receiver.seqs())
            raise AssertionError(f"syslog never received {len(missing)} records: {missing[:10]}; "
                                 f"received {len(receiver.messages)}\n{proxy.log()}") from None
        assert verify(audit_files(audit_dir)).returncode == 0
    finally:
        receiver.stop()


def _runs(conn, sql: str) -> bool:
    try:
        conn.execute(sql).fetchall()
        return True
    except psycopg.errors.IoError:
        return False
