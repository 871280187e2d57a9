"""Small helpers shared by the integration tests: ports, bounded waits,
subprocesses, running as the postgres OS user."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from typing import Callable, TypeVar

T = TypeVar("T")

IS_ROOT = os.geteuid() == 0
PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def pg_tool(name: str) -> str:
    return os.path.join(PGBIN, name)


def find_tool(name: str, env_var: str, build_dirs: tuple[str, ...] = ("build",)) -> str:
    """A helper binary from tests/tools (built with the unit tests): $env_var,
    else the one in $PGCLOAK_BIN's build tree, else the freshest of
    REPO/<build_dirs>/tests/tools/<name>. FileNotFoundError names what was tried."""
    if os.environ.get(env_var):
        return os.environ[env_var]
    if os.environ.get("PGCLOAK_BIN"):
        build = os.path.dirname(os.path.dirname(os.path.abspath(os.environ["PGCLOAK_BIN"])))
        tool = os.path.join(build, "tests", "tools", name)
        if os.access(tool, os.X_OK):
            return tool
    candidates = [os.path.join(REPO, d, "tests", "tools", name) for d in build_dirs]
    found = [c for c in candidates if os.access(c, os.X_OK)]
    if found:
        return max(found, key=os.path.getmtime)  # the freshest build
    raise FileNotFoundError(f"{name} not found (build the tests, or set {env_var}): tried " + ", ".join(candidates))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on: connecting to it is refused."""
    return free_port()


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(pred: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Polls pred until it returns something truthy; bounded by timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: go through runuser when root."""
    if IS_ROOT:
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


def chown_postgres(path: str) -> None:
    if IS_ROOT:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def run(cmd: list[str], timeout: float = 60, check: bool = False, env: dict | None = None,
        input: bytes | str | None = None, text: bool = True, cwd: str | None = None) -> subprocess.CompletedProcess:
    """subprocess.run with a timeout, captured output, and a readable error."""
    if isinstance(input, str) and not text:
        input = input.encode()
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, input=input, text=text, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(
            f"command failed ({p.returncode}): {' '.join(cmd)}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def read_rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def tail_file(path: str, nbytes: int, what: str) -> str:
    """The last nbytes of a log file, for failure reports."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - nbytes))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(no {what} log: {e})"


def write_config(proxy, config) -> None:
    """Replace a running pgcloak's configuration file (then reload_config())."""
    import yaml

    with open(proxy.config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)


def reload_config(proxy, marker: str) -> None:
    """SIGHUP, then wait until pgcloak logs `marker` once more than before."""
    before = proxy.log().count(marker)
    os.kill(proxy.pid, signal.SIGHUP)
    for _ in range(100):
        if proxy.log().count(marker) > before:
            return
        time.sleep(0.05)
    raise AssertionError(f"pgcloak did not log {marker!r} after SIGHUP:\n{proxy.log()}")
