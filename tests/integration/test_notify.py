"""LISTEN/NOTIFY through pgcloak: asynchronous NotificationResponse messages
reach an idle client."""

import select
import time

import pytest

from clients import connect


def _wait_notifies(conn, n: int, timeout: float = 15.0):
    """Collects n notifications from an idle connection; bounded."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([conn.fileno()], [], [], min(left, 0.5))
        if r:
            conn.pgconn.consume_input()
        while True:
            note = conn.pgconn.notifies()
            if note is None:
                break
            got.append((note.relname.decode(), note.extra.decode(), note.be_pid))
    return got


@pytest.mark.parametrize("notifier", ["via_pgcloak", "direct"])
def test_listen_notify(notifier, pg, pgcloak):
    proxy = pgcloak()
    with connect(proxy.dsn()) as listener:
        listener.execute("LISTEN pgcloak_events")
        listener.execute('LISTEN "Mixed Case"')
        sender_dsn = proxy.dsn() if notifier == "via_pgcloak" else pg.dsn()
        with connect(sender_dsn) as sender:
            sender.execute("NOTIFY pgcloak_events, 'hello \u00fcber'")
            sender.execute("SELECT pg_notify('Mixed Case', %s)", ["x" * 7000])
            sender.execute("NOTIFY not_listened, 'ignored'")
            sender.execute("NOTIFY pgcloak_events, 'third'")
        got = _wait_notifies(listener, 3)
        assert [(ch, payload) for ch, payload, _ in got] == [
            ("pgcloak_events", "hello \u00fcber"), ("Mixed Case", "x" * 7000), ("pgcloak_events", "third")]
        assert all(isinstance(pid, int) and pid > 0 for _, _, pid in got)
        # The listening session still works normally afterwards.
        assert listener.execute("SELECT 7").fetchone() == (7,)


def test_notify_inside_transaction_delivered_on_commit(pgcloak):
    proxy = pgcloak()
    with connect(proxy.dsn()) as listener, connect(proxy.dsn(), autocommit=False) as sender:
        listener.execute("LISTEN tx_events")
        sender.execute("NOTIFY tx_events, 'one'")
        assert _wait_notifies(listener, 1, timeout=1.0) == []  # not before COMMIT
        sender.commit()
        assert [p for _, p, _ in _wait_notifies(listener, 1)] == ["one"]
