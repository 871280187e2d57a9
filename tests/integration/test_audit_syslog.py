"""The audit trail's syslog sink (proxy/audit_syslog.cc) against a real
rsyslog (Debian's rsyslogd, issue 4 "rsyslog end to end"): RFC 5424 messages
over TCP with RFC 6587 octet counting, and over TLS (RFC 5425) through
rsyslog's ossl netstream driver (package rsyslog-openssl).

Each test starts its own rsyslogd in the foreground (-n) with a generated
config, its own pid file and work directory, listening with imtcp on a free
loopback port. It writes the MSG part of each received message, as is, to
raw.log and the parsed header fields to meta.log. Records must arrive
byte-identical and in order: non-ASCII UTF-8, a raw DEL, lines longer than
rsyslog's 8 KiB default (maxMessageSize is raised in the config).

Until the sink is wired into the running proxy, tests/tools/audit_syslog_send
drives it: it sends JSON lines from stdin through make_syslog_sink(), one
write() + sync() per batch (batches end at an empty line), and re-sends a
failed batch like the audit writer does. It is found through
$AUDIT_SYSLOG_SEND, else next to $PGCLOAK_BIN, else in build/ or
build-syslog/ (util.find_tool).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from util import closed_port, find_tool, free_port, port_open, tail_file, wait_for

RSYSLOGD = os.environ.get("RSYSLOGD", "/usr/sbin/rsyslogd")
RSYSLOG_MODULES = "/usr/lib/x86_64-linux-gnu/rsyslog"
HOSTNAME = "pgcloak-it.example"
FACILITY = 13  # log audit: PRI = 13 * 8 + 6 (informational) = 110
MAX_MESSAGE = 512 * 1024  # rsyslog's maxMessageSize for these tests


def send_tool() -> str:
    return find_tool("audit_syslog_send", "AUDIT_SYSLOG_SEND", ("build", "build-syslog"))


class Rsyslog:
    """One rsyslogd in the foreground. Plain imtcp, or TLS (ossl driver,
    anonymous clients: the receiver is authenticated, the sender is not)."""

    def __init__(self, workdir: str, port: int, certs=None):
        self.dir = workdir
        self.port = port
        self.tls = certs is not None
        self.conf = os.path.join(workdir, "rsyslog.conf")
        self.pidfile = os.path.join(workdir, "rsyslogd.pid")
        self.raw_path = os.path.join(workdir, "raw.log")
        self.meta_path = os.path.join(workdir, "meta.log")
        self.log_path = os.path.join(workdir, "rsyslogd.log")
        self.proc: subprocess.Popen | None = None
        tls_global = tls_module = ""
        if certs is not None:
            tls_global = (f'  defaultNetstreamDriverCAFile="{certs.ca_crt}"\n'
                          f'  defaultNetstreamDriverCertFile="{certs.proxy_crt}"\n'
                          f'  defaultNetstreamDriverKeyFile="{certs.proxy_key}"\n')
            tls_module = ' streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon"'
        # maxMessageSize must come before the inputs are loaded. Control
        # characters are not escaped: a JSON line can hold a raw DEL (0x7f),
        # which rsyslog would otherwise rewrite as "#177".
        with open(self.conf, "w") as f:
            f.write(f"""\
global(
  workDirectory="{workdir}"
  maxMessageSize="{MAX_MESSAGE}"
  parser.escapeControlCharactersOnReceive="off"
{tls_global})
module(load="imtcp"{tls_module})
template(name="raw" type="string" string="%msg%\\n")
template(name="meta" type="string"
         string="%pri%|%syslogfacility%|%syslogseverity%|%protocol-version%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%\\n")
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="audit")
ruleset(name="audit") {{
  action(type="omfile" file="{self.raw_path}" template="raw")
  action(type="omfile" file="{self.meta_path}" template="meta")
}}
""")

    def start(self, timeout: float = 15.0) -> "Rsyslog":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", self.conf, "-i", self.pidfile],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port, timeout=0.5):
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsyslogd did not listen on {self.port} within {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, bounded wait, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return tail_file(self.log_path, 8000, "rsyslogd")

    def _lines(self, path: str) -> list[bytes]:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        # Only complete lines: omfile may be mid-write.
        return data.split(b"\n")[:-1]

    def raw(self) -> list[bytes]:
        return self._lines(self.raw_path)

    def meta(self) -> list[str]:
        return [m.decode() for m in self._lines(self.meta_path)]

    def wait_raw(self, count: int, timeout: float = 20.0) -> list[bytes]:
        try:
            wait_for(lambda: len(self.raw()) >= count and len(self.meta()) >= count, timeout,
                     what=f"{count} messages in rsyslog's output")
        except TimeoutError as e:
            raise AssertionError(f"{e}: got {len(self.raw())}\nrsyslogd log:\n{self.log()}") from None
        return self.raw()


@pytest.fixture
def rsyslog(workroot):
    """Factory: rsyslog(certs=None, port=None) -> running Rsyslog; all are
    stopped afterwards."""
    if not os.access(RSYSLOGD, os.X_OK):
        pytest.fail(f"{RSYSLOGD} not found: install rsyslog (deploy/install-deps.sh)")
    started: list[Rsyslog] = []

    def start(certs=None, port: int | None = None, workdir: str | None = None) -> Rsyslog:
        if certs is not None and not os.path.exists(os.path.join(RSYSLOG_MODULES, "lmnsd_ossl.so")):
            pytest.fail("rsyslog's ossl netstream driver is missing: install rsyslog-openssl "
                        "(deploy/install-deps.sh)")
        wd = workdir or tempfile.mkdtemp(prefix="rsyslog-", dir=workroot)
        r = Rsyslog(wd, port or free_port(), certs)
        started.append(r)
        return r.start()

    yield start
    for r in started:
        r.stop()


def records(count: int = 300) -> list[str]:
    """Audit-like JSON lines, compact as the writer emits them, with a seq
    each; some non-ASCII, one with a raw DEL, some longer than 8 KiB."""
    specials = [
        {"user": "zoë", "application_name": "Müller GmbH – Berichte"},
        {"user": "東京", "note": "漢字とかな"},
        {"user": "ivan", "application_name": "Отчёт 🚀"},
        {"application_name": "odd\x7fname"},  # json.dumps keeps DEL raw
        {"escaped": "tab\there, newline\nthere, quote \" and backslash \\"},
        {"pad": "x" * 8193},
        {"pad": ("ä€😀" * 3000)[:7000] + "y" * 20000},
        {"pad": "z" * 100_000},
    ]
    out = []
    for i in range(1, count + 1):
        rec = {"v": 1, "seq": i, "kind": "statement", "session_id": 1000 + i % 7,
               "normalized": f"SELECT * FROM customers WHERE id = $1 -- {i}"}
        if i % 37 == 0:
            rec.update(specials[(i // 37) % len(specials)])
        out.append(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
    for j, s in enumerate(specials):  # every special at least once
        out.append(json.dumps({"v": 1, "seq": count + 1 + j, **s}, ensure_ascii=False, separators=(",", ":")))
    return out


def batched_stdin(lines: list[str], batch: int) -> bytes:
    """Lines for audit_syslog_send, an empty line after every `batch`."""
    out = []
    for i in range(0, len(lines), batch):
        out.extend(lines[i:i + batch])
        out.append("")
    return ("\n".join(out) + "\n").encode()


def send_args(port: int, certs=None, host: str = "127.0.0.1", ca: str | None = None) -> list[str]:
    args = [send_tool(), "--host", host, "--port", str(port), "--hostname", HOSTNAME,
            "--app-name", "pgcloak", "--facility", str(FACILITY), "--connect-timeout-ms", "5000"]
    if certs is not None:
        args += ["--tls", "--ca-file", ca or certs.ca_crt]
    return args


def seq_of(line: bytes) -> int:
    return json.loads(line)["seq"]


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_records_arrive_intact_and_in_order(rsyslog, certs, transport):
    tls = certs if transport == "tls" else None
    rs = rsyslog(certs=tls)
    lines = records()
    assert any(len(s.encode()) > 8192 for s in lines)
    # "localhost" for TLS: SNI and the certificate's DNS name are checked.
    host = "localhost" if tls else "127.0.0.1"
    before = datetime.now(timezone.utc)
    p = subprocess.run(send_args(rs.port, tls, host=host), input=batched_stdin(lines, 50),
                       capture_output=True, timeout=60)
    after = datetime.now(timezone.utc)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode().split("\n")[:-1] == [f"sent {n}" for n in
                                                    [50] * (len(lines) // 50) + [len(lines) % 50]]

    got = rs.wait_raw(len(lines))
    assert len(got) == len(lines), rs.log()
    for i, (want, have) in enumerate(zip(lines, got)):
        assert have == want.encode(), f"record {i} differs: sent {want[:120]!r}..., rsyslog wrote {have[:120]!r}..."

    # The RFC 5424 header as rsyslog parsed it. The driver's pid is PROCID.
    meta = rs.meta()
    assert len(meta) == len(lines)
    for m in meta:
        pri, fac, sev, version, ts, hostname, app, procid, msgid, sd = m.split("|")
        assert (pri, fac, sev, version) == ("110", str(FACILITY), "6", "1"), m
        assert (hostname, app, msgid, sd) == (HOSTNAME, "pgcloak", "audit", "-"), m
        assert procid.isdigit(), m
        t = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        assert ts.endswith("Z") and len(ts.split(".")[1]) == 7, f"want UTC with microseconds: {ts}"
        assert before - timedelta(seconds=1) <= t <= after + timedelta(seconds=1), m
    assert len({m.split("|")[7] for m in meta}) == 1


def test_tls_with_the_wrong_ca_is_refused(rsyslog, certs):
    rs = rsyslog(certs=certs)
    p = subprocess.run(send_args(rs.port, certs, ca=certs.other_ca_crt), input=b'{"seq":1}\n',
                       capture_output=True, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert f"127.0.0.1:{rs.port}" in err, err
    assert "certificate verify failed" in err, err
    # rsyslog sends its chain up to the CA, which the other CA does not know.
    assert "self-signed certificate in certificate chain" in err or "unable to get local issuer" in err, err
    time.sleep(0.5)
    assert rs.raw() == []
    # rsyslog saw the handshake fail on its side: our alert names the reason.
    assert "unknown ca" in rs.log(), rs.log()


def test_plain_sender_to_nothing_is_connection_refused():
    port = closed_port()
    p = subprocess.run(send_args(port), input=b'{"seq":1}\n', capture_output=True, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert f"127.0.0.1:{port}" in err and "connection refused" in err, err


class Driver:
    """audit_syslog_send fed batch by batch, its "sent N" lines read by a
    thread so every wait is bounded."""

    def __init__(self, args: list[str], stderr_path: str):
        self._err = open(stderr_path, "wb")
        self.stderr_path = stderr_path
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)
        self._out: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._out.put(line.decode().rstrip("\n"))

    def send(self, lines: list[str]) -> None:
        self.proc.stdin.write(("\n".join(lines) + "\n\n").encode())
        self.proc.stdin.flush()

    def expect_sent(self, n: int, timeout: float = 30.0) -> None:
        try:
            line = self._out.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no 'sent {n}' within {timeout}s; stderr:\n{self.stderr()}") from None
        assert line == f"sent {n}", line

    def stderr(self) -> str:
        return tail_file(self.stderr_path, 8000, "audit_syslog_send")

    def finish(self, timeout: float = 30.0) -> int:
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._err.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._err.close()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_rsyslog_restart_loses_nothing(rsyslog, certs, workroot, transport):
    """rsyslog stops between two batches and comes back on the same port. The
    sink notices the closed connection, fails while nothing listens, and the
    retried batch arrives on a new connection: every record is there, in
    order once duplicates (same seq) are dropped."""
    tls = certs if transport == "tls" else None
    rs = rsyslog(certs=tls)
    lines = records(120)
    first, second, third = lines[:40], lines[40:90], lines[90:]
    drv = Driver(send_args(rs.port, tls) + ["--retry-ms", "30000"],
                 os.path.join(rs.dir, "audit_syslog_send.stderr"))
    try:
        drv.send(first)
        drv.expect_sent(len(first))
        rs.wait_raw(len(first))

        rs.stop()  # closes the connection; nothing listens now
        drv.send(second)
        wait_for(lambda: "connection refused" in drv.stderr(), 15,
                 what="the sink to fail while rsyslog is down")
        rs2 = rsyslog(certs=tls, port=rs.port, workdir=rs.dir)  # same files, appended
        drv.expect_sent(len(second))
        drv.send(third)
        drv.expect_sent(len(third))
        assert drv.finish() == 0, drv.stderr()
    finally:
        drv.kill()

    # Duplicates may make the count reach len(lines) early: wait for every seq.
    want = {seq_of(s.encode()) for s in lines}
    try:
        wait_for(lambda: want <= {seq_of(g) for g in rs2.raw()}, 20, what="every record in rsyslog's output")
    except TimeoutError:
        pass  # the assertions below say what is missing
    got = rs2.raw()
    seqs = [seq_of(g) for g in got]
    deduped = {}
    for g in got:
        deduped.setdefault(seq_of(g), g)
    assert sorted(deduped) == sorted(want), f"missing seqs: {sorted(want - set(deduped))}\n{rs2.log()}"
    assert [deduped[seq_of(s.encode())] for s in lines] == [s.encode() for s in lines]
    # In order: the first occurrence of each seq comes after the previous one.
    firsts = [seqs.index(s) for s in sorted(deduped)]
    assert firsts == sorted(firsts)
    assert f"127.0.0.1:{rs.port}" in drv.stderr()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_pgcloak_trail_reaches_rsyslog_intact(rsyslog, certs, pgcloak, workroot, transport):
    """The whole chain: statements through pgcloak, its audit records in
    rsyslog's output byte for byte as in pgcloak's own file, and the copy
    rsyslog holds verifies as a chain by itself."""
    from audit_fixture import audit_overrides, verify

    tls = certs if transport == "tls" else None
    rs = rsyslog(certs=tls)
    audit_dir = tempfile.mkdtemp(prefix="audit-rsyslog-", dir=workroot)
    syslog = {"host": "localhost" if tls else "127.0.0.1", "port": rs.port, "hostname": HOSTNAME,
              "facility": FACILITY}
    if tls:
        syslog.update({"tls": True, "ca_file": certs.ca_crt})
    proxy = pgcloak(**audit_overrides(audit_dir, syslog=syslog))
    with psycopg.connect(proxy.dsn(application_name="to-rsyslog"), autocommit=True) as c:
        for i in range(30):
            c.execute("SELECT id, email FROM customers WHERE id = %s", (i,)).fetchall()
            c.execute(f"SELECT count(*) AS n_{i} FROM customers").fetchall()
    proxy.terminate()
    proxy.expect_exit = True
    with open(os.path.join(audit_dir, "audit.jsonl"), "rb") as f:
        file_lines = f.read().split(b"\n")[:-1]
    assert len(file_lines) > 60
    got = rs.wait_raw(len(file_lines))
    # Reconnects may repeat records (docs/audit.md, "Syslog"): drop repeats by seq.
    seen, unique = set(), []
    for line in got:
        s = seq_of(line)
        if s not in seen:
            seen.add(s)
            unique.append(line)
    assert unique == file_lines, rs.log()
    copy = os.path.join(workroot, f"rsyslog-copy-{transport}.jsonl")
    with open(copy, "wb") as f:
        f.write(b"\n".join(unique) + b"\n")
    res = verify([copy], workdir=workroot)
    assert res.returncode == 0, res.stdout + res.stderr
