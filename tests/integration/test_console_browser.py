"""The security console in a real browser: Debian's Chromium, driven by
Playwright (node/console_check.js), loads /console from a pgcloak that
masks the shop fixture while two psycopg sessions are open, one of which
was refused a statement. Checks that the page shows those sessions, the
denial and the protected-data reader; that it runs without console errors,
CSP violations or failed requests; that it is readable (font sizes, WCAG
contrast, no horizontal page scroll, no text clipped away); and that it is
live: the sessions leave the page once closed. Runs open and behind a
metrics token (HTTP Basic, the token as password).

A full-page screenshot of each run is kept as a test artifact in
$PGCLOAK_ARTIFACTS_DIR, else build/test-artifacts/ (console.png,
console-token.png).
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import struct
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request

import psycopg
import pytest

from masking_fixture import MASK_KEY, MASK_KEY_ENV, masking_overrides, wait_for_masking
from masking_fixture import connect as _connect
from proxy import REPO
from util import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "node")
SCRIPT = os.path.join(NODE_DIR, "console_check.js")
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
TOKEN = "console-browser-token-0123456789abcdef"
TOKEN_ENV = "PGCLOAK_METRICS_TOKEN"
APPS = {"support": "browser-test-support", "admin": "browser-test-admin"}
# Everything the page may ask for: its own assets and its API, nothing else.
PAGE_PATHS = {"/console", "/console.js", "/console.css", "/api/console"}
# Browsers ask for /favicon.ico unless the page names its icon
# (test_the_page_names_its_icon); it must never be requested.
FAVICON = "/favicon.ico"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser_ready():
    """node, playwright-core (npm ci in tests/integration/node) and Chromium.
    Missing ones skip the tests locally and fail them in CI."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node is not installed")
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "playwright-core")):
        missing.append(f"playwright-core is not installed (run `npm ci` in {NODE_DIR})")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} is missing (deploy/install-deps.sh installs chromium)")
    if missing:
        reason = "console browser test: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return True


def artifact_path(name: str) -> str:
    d = os.environ.get("PGCLOAK_ARTIFACTS_DIR") or os.path.join(REPO, "build", "test-artifacts")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, name)


def connect(proxy, user: str) -> psycopg.Connection:
    return _connect(proxy, user, dbname="shop", application_name=APPS[user])


class ConsoleCheck:
    """console_check.js as a child process: JSON events on its stdout, a
    "closed" line on its stdin. Every wait is bounded; on the way out the
    node (which closes its Chromium) is ended if it has not ended by itself."""

    def __init__(self, args: list[str], env: dict):
        self.proc = subprocess.Popen(["node", SCRIPT, *args], cwd=NODE_DIR, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line)
        sink(None)

    def event(self, name: str, timeout: float) -> dict:
        """The next JSON line, which must be event `name`."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"console_check.js sent no {name!r} event within {timeout}s; "
                                 f"stderr:\n{self.stderr_text()}") from None
        if line is None:
            self.proc.wait(timeout=10)
            raise AssertionError(f"console_check.js exited ({self.proc.returncode}) before its {name!r} event; "
                                 f"stderr:\n{self.stderr_text()}")
        doc = json.loads(line)
        assert doc.get("event") == name, f"expected event {name!r}, got {doc}"
        return doc

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def stderr_text(self) -> str:
        return "".join(s for s in self.stderr if s)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            pass
        # SIGTERM first: Playwright then closes its Chromium (which runs in a
        # process group of its own); SIGKILL only if that does not end it.
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def check_png(path: str) -> tuple[int, int]:
    """(width, height) of a real, non-trivial PNG."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path}: no IHDR chunk"
    assert len(data) > 20 * 1024, f"{path} is only {len(data)} bytes: a blank page?"
    return struct.unpack(">II", data[16:24])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def rows(table: dict | None) -> list[list[str]]:
    return (table or {}).get("rows") or []


def format_violations(violations: list[dict]) -> str:
    return "\n".join(f"  [{v['kind']}] {v['element']}: {v['text']!r}: {v['detail']}" for v in violations)


@pytest.mark.parametrize("with_token", [False, True], ids=["open", "token"])
def test_console_in_a_browser(pgcloak, shop, monkeypatch, client_env, browser_ready, with_token):
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    overrides = masking_overrides(shop.dbname)
    env = dict(client_env)
    if with_token:
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        overrides["metrics"] = {"token_env": TOKEN_ENV}
        env["CONSOLE_TOKEN"] = TOKEN
    proxy = pgcloak(**overrides)
    url = proxy.metrics_url + "/console"
    screenshot = artifact_path("console-token.png" if with_token else "console.png")
    if os.path.exists(screenshot):
        os.unlink(screenshot)
    expect = {
        "sessions": [{"user": u, "application_name": a} for u, a in APPS.items()],
        "denial": {"user": "support", "rule": "deny:do"},
        "top_reader": "support",
    }

    browser = None
    try:
        with connect(proxy, "support") as support, connect(proxy, "admin") as admin:
            wait_for_masking(support)
            wait_for_masking(admin)
            masked = support.execute("SELECT id, email, phone FROM customers ORDER BY id LIMIT 25").fetchall()
            assert len(masked) == 25
            support.execute("SELECT email FROM customers WHERE id = %s", (1,)).fetchall()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                support.execute("DO $$ BEGIN PERFORM 1; END $$")
            admin.execute("SELECT count(*) FROM orders").fetchall()
            # The sessions stay open while the browser loads the page.
            browser = ConsoleCheck([url, screenshot, "--expect", json.dumps(expect)], env)
            loaded = browser.event("loaded", timeout=60)
        # Both sessions are closed now: the page must notice by itself.
        browser.send("closed")
        result = browser.event("result", timeout=30)
    finally:
        if browser is not None:
            browser.close()
    print(f"console screenshot: {result['screenshot']}")
    print(f"console: data after {result['loadedMs']} ms, sessions gone {result.get('leftMs')} ms after closing; "
          f"readability {result['readability']['info']}")

    # Served as the console, with its policy; behind a token only with it.
    assert result["status"] == 200, result
    assert "default-src 'none'" in result["headers"].get("content-security-policy", ""), result["headers"]
    if with_token:
        assert result["anonymous"]["status"] == 401, result["anonymous"]
        assert not result["anonymous"]["loaded"]
        # The browser answered the server's Basic challenge itself.
        assert result["login"] == "challenge", result
        print(f"console login: {result['login']} (challenge answered with {result['challenged']['status']})")

    before, after = result["before"], result["after"]
    assert not result["errors"], "\n".join(result["errors"]) + "\npage: " + json.dumps(before, indent=1)
    assert loaded["ok"]
    assert before["loaded"] and before["banner"] is None and not before["stale"], before
    assert before["ready"] == "Ready", before

    # What the page shows: both sessions with their users, support's denial
    # and support as a reader of protected data.
    sessions = rows(before["sessions"])
    for user, app in APPS.items():
        mine = [r for r in sessions if r[4] == app]
        assert len(mine) == 1, sessions
        assert mine[0][1] == user and mine[0][2] == "shop", mine
    assert before["sessions"]["count"] == len(sessions) >= 2
    assert any(r[1] == "support" and r[3] == "deny:do" for r in rows(before["denials"])), before["denials"]
    assert any(r[0] == "support" and "public.customers" in r[3] for r in rows(before["topReaders"])), \
        before["topReaders"]

    # A clean page: no errors, no CSP violations, no failed or refused
    # requests, and nothing asked of any other origin or path.
    errors = [m for m in result["consoleMessages"] if m["type"] == "error"]
    assert not errors, f"console errors: {errors}"
    assert not result["pageErrors"], result["pageErrors"]
    assert result["csp"] == [], f"CSP violations: {result['csp']}"
    assert not result["failedRequests"], result["failedRequests"]
    assert not result["badResponses"], result["badResponses"]
    assert set(result["requestedPaths"]) <= PAGE_PATHS, result["requestedPaths"]
    assert "/api/console" in result["requestedPaths"]

    # Readable for a person.
    read = result["readability"]
    assert not read["violations"], (f"{len(read['violations'])} readability problem(s) at 1280x900:\n" +
                                    format_violations(read["violations"]) + f"\n{read['info']}")
    assert read["info"]["textElementsChecked"] > 50, read["info"]

    # Live: the closed sessions leave the page by themselves.
    assert result["sessionsLeft"] and result["leftMs"] <= 10000, result
    assert after["sessions"]["count"] < before["sessions"]["count"], (before["sessions"], after["sessions"])
    assert not [r for r in rows(after["sessions"]) if r[4] in APPS.values()], after["sessions"]
    assert after["banner"] is None, after

    # The screenshot artifact: a real PNG of the whole page.
    assert result["screenshot"] == screenshot and loaded["screenshot"] == screenshot
    width, height = check_png(screenshot)
    assert width == 1280 and height >= 900, (width, height)


def test_browser_login_prompt_accepts_the_token(pgcloak, monkeypatch, client_env, browser_ready):
    """A person's browser: no credentials until the server asks for them."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    proxy = pgcloak(metrics={"token_env": TOKEN_ENV})
    env = dict(client_env, CONSOLE_TOKEN=TOKEN)
    check = ConsoleCheck([proxy.metrics_url + "/console", "--mode", "auth"], env)
    try:
        out = check.event("auth", timeout=40)
    finally:
        check.close()
    assert out["challenged"]["status"] == 200 and out["challenged"]["loaded"], out


def test_the_page_names_its_icon(pgcloak):
    """Without a <link rel="icon">, browsers fetch /favicon.ico; it must exist."""
    proxy = pgcloak()
    status, page = http_get(proxy.metrics_url + "/console")
    assert status == 200
    declares_icon = re.search(r"<link\b[^>]*\brel=\"(?:shortcut )?icon\"", page)
    assert declares_icon or http_get(proxy.metrics_url + FAVICON)[0] == 200


def test_an_idle_session_shows_as_idle(pgcloak, shop, monkeypatch):
    """What the console's State and Statement columns show for a session
    waiting for its client after a plain (simple-protocol) query."""
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    proxy = pgcloak(**masking_overrides(shop.dbname))
    with connect(proxy, "support") as c:
        wait_for_masking(c)
        c.execute("SELECT email FROM customers LIMIT 3").fetchall()  # no parameters: simple protocol

        def mine():
            doc = json.loads(http_get(proxy.metrics_url + "/api/console")[1])
            return [s for s in doc["sessions"] if s["application_name"] == APPS["support"]]
        sessions = wait_for(lambda: mine(), timeout=5, what="the session in /api/console")
        assert len(sessions) == 1
        assert (sessions[0]["state"], sessions[0]["current_class"]) == ("idle", None), sessions[0]
