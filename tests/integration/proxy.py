"""Starting and stopping pgcloak processes for the integration tests."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time

import yaml
from psycopg.conninfo import make_conninfo

from pgcluster import PASSWORDS
from util import free_port, port_open, tail_file

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_BIN = os.path.join(REPO, "build", "proxy", "pgcloak")


def pgcloak_bin() -> str:
    return os.environ.get("PGCLOAK_BIN", DEFAULT_BIN)


def deep_merge(base: dict, overrides: dict) -> dict:
    """Recursive dict merge; an override of None deletes the key."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class Pgcloak:
    """One running pgcloak. Connection helpers default to TLS + SCRAM."""

    host = "127.0.0.1"

    def __init__(self, workdir: str, config: dict, certs):
        self.workdir = workdir
        self.config = config
        self.certs = certs
        self.port = int(config["listen"][0].rsplit(":", 1)[1])
        self.config_path = os.path.join(workdir, "pgcloak.yaml")
        self.log_path = os.path.join(workdir, "pgcloak.log")
        self.proc: subprocess.Popen | None = None
        self.expect_exit = False  # set by tests that stop pgcloak themselves
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready_timeout: float = 20.0) -> "Pgcloak":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([pgcloak_bin(), "--config", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                     start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while not port_open(self.host, self.port, timeout=0.5):
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgcloak exited with {self.proc.returncode} before listening:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"pgcloak did not listen on {self.port} within {ready_timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, bounded wait, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def log(self, nbytes: int = 30000) -> str:
        return tail_file(self.log_path, nbytes, "pgcloak")

    # -- client helpers -------------------------------------------------------
    def dsn(self, user: str = "scram_user", dbname: str = "app", sslmode: str = "require", **kw) -> str:
        params = dict(host=self.host, port=self.port, user=user, dbname=dbname, sslmode=sslmode,
                      connect_timeout=10)
        if PASSWORDS.get(user):
            params["password"] = PASSWORDS[user]
        params.update(kw)
        return make_conninfo(**params)

    @property
    def metrics_url(self) -> str:
        """Base URL of the metrics/console endpoint (no trailing slash)."""
        m = self.config.get("metrics") or {}
        scheme = "https" if m.get("tls") else "http"
        return f"{scheme}://{m['listen']}"

    @property
    def unix_socket_path(self) -> str:
        return os.path.join(self.config["unix_socket_dir"], f".s.PGSQL.{self.port}")


def default_config(cluster, certs, port: int | None = None) -> dict:
    return {
        "listen": [f"127.0.0.1:{port or free_port()}"],
        "threads": 2,
        "max_connections": 1000,
        "tls": {
            "cert_file": certs.proxy_crt,
            "key_file": certs.proxy_key,
            "require": False,
            "min_version": "1.2",
        },
        "upstream": {
            "host": cluster.host,
            "port": cluster.port,
            # Plain loopback upstream by default: see test_upstream_tls.py for
            # why client-side SCRAM channel_binding=prefer needs this.
            "sslmode": "disable",
            "connect_timeout": "5s",
        },
        "timeouts": {
            "handshake": "10s",
            "client_idle": "0s",
            "shutdown_grace": "5s",
        },
        "log": {"level": "info"},
        # A free port per instance: tests run several pgcloaks at once, and
        # the default 9930 would collide.
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
    }
