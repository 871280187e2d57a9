"""Issue 17: the leak-oracle fuzzer (leak_oracle.py), CI pass.

Canary customers whose protected values are unique markers are planted in
their own database (`shop_leak`, the shop fixture plus the canaries); then
generated statements over every leak class run as `support` and `analyst`
through pgcloak on a raw v3 client, and every byte that comes back is
scanned for the markers and their transformations, twins are compared, and
output masking is compared with SQL masking. See leak_oracle.py.

At least LEAK_ORACLE_STATEMENTS (default 10,000) statements per role, both
roles at once. The seed is random unless LEAK_ORACLE_SEED is set, and is
printed with every finding; rerun one program with

    /usr/bin/python3 tests/integration/leak_oracle.py --seed SEED --replay ROLE:INDEX

The long pass is bench/leak_oracle_long.sh.
"""
from __future__ import annotations

import os
import random
import threading

import pytest

import leak_oracle as lo
from masking_fixture import MASK_KEY, start_masked_proxy
from shop import SHOP_PASSWORDS, load_shop

STATEMENTS_PER_ROLE = int(os.environ.get("LEAK_ORACLE_STATEMENTS", "10000"))
SEED = int(os.environ.get("LEAK_ORACLE_SEED") or random.SystemRandom().randrange(1, 2 ** 31))


@pytest.fixture(scope="module")
def leak_shop(pg):
    shop = load_shop(pg, lo.LEAK_DB, scale=1, recreate=True)
    canaries = lo.make_canaries()
    with shop.admin() as adm:
        lo.prepare_database(adm, canaries)
    return shop, canaries


@pytest.fixture(scope="module")
def leak_proxy(pg, certs, workroot, leak_shop):
    p = start_masked_proxy(pg, certs, workroot, lo.LEAK_DB, "pgcloak-leak-")
    try:
        lo.wait_catalog(p.host, p.port, SHOP_PASSWORDS["support"])
        yield p
    finally:
        p.terminate()


@pytest.fixture(scope="module")
def target(leak_shop, leak_proxy):
    shop, canaries = leak_shop
    return lo.build_target(leak_proxy.host, leak_proxy.port, lo.LEAK_DB, SHOP_PASSWORDS, MASK_KEY, shop.admin,
                           canaries)


@pytest.fixture
def proxy(leak_proxy, request):
    request.node._pgcloak_instances = [leak_proxy]  # its log goes into a failure's report
    assert leak_proxy.alive(), "pgcloak is not running"
    yield leak_proxy
    assert leak_proxy.alive(), f"pgcloak exited during the test:\n{leak_proxy.log()}"


def test_oracles_have_teeth(target, leak_shop, proxy):
    """The same generator run straight against PostgreSQL (no pgcloak) as
    `support` must trip every oracle: markers in rows, errors and COPY data,
    the predicate echo, and the twin comparison. Otherwise a clean pass
    through pgcloak would prove nothing."""
    shop, canaries = leak_shop
    direct = lo.Target(shop.cluster.host, shop.cluster.port, lo.LEAK_DB, SHOP_PASSWORDS, MASK_KEY, canaries,
                       target.scanners, target.preds, shop.admin)
    gen = lo.Generator(SEED, "support", canaries, target.preds["support"])
    runner = lo.Runner(direct.host, direct.port, "support", SHOP_PASSWORDS["support"], lo.LEAK_DB,
                       target.scanners["support"], SEED, admin_factory=shop.admin, canaries=canaries)
    runner.minimise = False  # keep each finding where it was seen (COPY data, errors, ...)
    try:
        for i in range(400):
            prog = gen.program(i)
            if prog.diff is None:  # no output masking without pgcloak: nothing to compare
                runner.run_program(prog, i)
    finally:
        runner.close()
    found = list(runner.findings.values())
    kinds = {f.kind for f in found}
    where = {f.where.split("[")[0].split(".")[0] for f in found if f.kind == "marker"}
    classes = set().union(*(f.classes for f in found))
    assert {"marker", "twin"} <= kinds, kinds
    assert {"DataRow", "Error", "CopyData"} <= where, where
    assert any("ECHO" in c for c in classes), classes
    assert {"email.local", "ssn", "card", "phone", "birth_date", "address", "notes.email"} <= classes, classes
    # and the predicates, validated against the masked copies, exist for every canary
    for role in lo.MASKED_ROLES:
        assert all(len(p) >= 20 for p in target.preds[role].values()), {k: len(v) for k, v in target.preds[role].items()}


def test_no_leak_under_fuzzing(target, proxy):
    """At least STATEMENTS_PER_ROLE generated statements per masked role
    through pgcloak: no marker in any byte, no twin difference, output
    masking identical to SQL masking, no hang."""
    results: dict[str, lo.PassResult] = {}
    errors: list[BaseException] = []

    def work(role):
        try:
            results[role] = lo.run_pass(target, role, SEED, n_programs=STATEMENTS_PER_ROLE, alive=proxy.alive)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(role,)) for role in lo.MASKED_ROLES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    summary = "; ".join(f"{r.role}: {r.statements} statements, {r.programs} programs in {r.seconds:.0f} s "
                        f"({r.rate:.0f}/s)" for r in results.values())
    print(f"leak oracle seed {SEED}: {summary}")
    for r in results.values():
        assert r.statements >= STATEMENTS_PER_ROLE, summary
    findings = [f for r in results.values() for f in r.findings]
    assert not findings, (f"leak oracle (seed {SEED}; {summary}): {len(findings)} distinct findings\n"
                          + lo.format_findings(findings))
