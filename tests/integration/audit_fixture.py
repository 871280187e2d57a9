"""Audit trail helpers shared by the audit integration tests: config
overrides, reading records back (rotated files too, zstd- or
gzip-compressed, decoded by the zstd command and Python's gzip rather than by
pgcloak) and running `pgcloak audit verify`."""
from __future__ import annotations

import glob
import gzip
import json
import os
import subprocess

from proxy import pgcloak_bin

# 32 bytes, hex: the initial HMAC chain key. pgcloak ratchets the key file
# forward at each rotation, so tests keep this copy for verification.
AUDIT_KEY = "5f1c0d9e8b7a6f5e4d3c2b1a09f8e7d6c5b4a3928170f6e5d4c3b2a190807162"


def write_key(directory: str, key: str = AUDIT_KEY) -> str:
    path = os.path.join(directory, "audit.key")
    with open(path, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    return path


def audit_overrides(directory: str, **audit) -> dict:
    """pgcloak config overrides writing the audit trail to directory/audit.jsonl."""
    os.makedirs(directory, exist_ok=True)
    cfg = {
        "durability": "batched",
        "flush_interval": "50ms",
        "key_file": write_key(directory),
        "file": {"path": os.path.join(directory, "audit.jsonl")},
    }
    for k, v in audit.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return {"audit": cfg}


def audit_files(directory: str) -> list[str]:
    """Every audit file in the directory (active, rotated, compressed)."""
    return sorted(p for p in glob.glob(os.path.join(directory, "audit.jsonl*")) if not p.endswith(".tmp"))


def read_text(path: str) -> str:
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", "--", path], check=True, capture_output=True,
                              timeout=60).stdout.decode("utf-8")
    if path.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_records(directory: str) -> list[dict]:
    """All complete records, in sequence order."""
    out = []
    for p in audit_files(directory):
        for line in read_text(p).splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a torn last line after a crash
    out.sort(key=lambda r: r["seq"])
    return out


def statements(directory: str, **match) -> list[dict]:
    return [r for r in read_records(directory)
            if r.get("kind") == "statement" and all(r.get(k) == v for k, v in match.items())]


def verify(files: list[str], key: str = AUDIT_KEY, workdir: str | None = None) -> subprocess.CompletedProcess:
    """Runs `pgcloak audit verify` with the initial key in a key file."""
    keydir = workdir or os.path.dirname(files[0])
    keyfile = os.path.join(keydir, "verify.key")
    with open(keyfile, "w") as f:
        f.write(key + "\n")
    return subprocess.run([pgcloak_bin(), "audit", "verify", "--key-file", keyfile, *files],
                          capture_output=True, text=True, timeout=120)
