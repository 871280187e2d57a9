"""Test PKI made with the openssl CLI: a CA, pgcloak's server certificate,
the PostgreSQL cluster's certificate, a client certificate for mTLS, and a
second, unrelated CA (with its own client certificate) for negative tests."""

from __future__ import annotations

import os
from dataclasses import dataclass

from util import run

SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
"""

CLIENT_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
"""


@dataclass
class Certs:
    dir: str
    ca_crt: str
    ca_key: str
    proxy_crt: str
    proxy_key: str
    pg_crt: str
    pg_key: str
    client_crt: str
    client_key: str
    other_ca_crt: str
    other_client_crt: str
    other_client_key: str


def _openssl(*args: str) -> None:
    run(["openssl", *args], timeout=60, check=True)


def _ca(d: str, name: str) -> tuple[str, str]:
    crt, key = os.path.join(d, f"{name}.crt"), os.path.join(d, f"{name}.key")
    _openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", key, "-out", crt, "-days", "30", "-subj", f"/CN=pgcloak test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(key, 0o600)
    return crt, key


def _leaf(d: str, name: str, cn: str, ext: str, ca_crt: str, ca_key: str) -> tuple[str, str]:
    crt, key, csr = (os.path.join(d, f"{name}.{x}") for x in ("crt", "key", "csr"))
    extfile = os.path.join(d, f"{name}.ext")
    with open(extfile, "w") as f:
        f.write(ext)
    _openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
    os.chmod(key, 0o600)
    _openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
             "-out", crt, "-days", "30", "-sha256", "-extfile", extfile)
    return crt, key


def generate(d: str) -> Certs:
    os.makedirs(d, exist_ok=True)
    ca_crt, ca_key = _ca(d, "ca")
    proxy_crt, proxy_key = _leaf(d, "pgcloak", "localhost", SERVER_EXT, ca_crt, ca_key)
    pg_crt, pg_key = _leaf(d, "postgres", "localhost", SERVER_EXT, ca_crt, ca_key)
    client_crt, client_key = _leaf(d, "client", "scram_user", CLIENT_EXT, ca_crt, ca_key)
    other_ca_crt, other_ca_key = _ca(d, "other-ca")
    other_client_crt, other_client_key = _leaf(d, "other-client", "scram_user", CLIENT_EXT,
                                               other_ca_crt, other_ca_key)
    return Certs(d, ca_crt, ca_key, proxy_crt, proxy_key, pg_crt, pg_key, client_crt, client_key,
                 other_ca_crt, other_client_crt, other_client_key)
