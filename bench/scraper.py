#!/usr/bin/env python3
"""Fetch a Prometheus endpoint once a second, as Prometheus does, for
bench/pgbench_compare.sh (targets metrics-scraped, BENCH_AB=scrape).

Like Prometheus it is one long-lived process that keeps its HTTP connection
open between scrapes and reads the whole exposition each time. A shell loop
starting curl every second costs this 2-core machine about 75 ms of CPU per
scrape (process start, dynamic linking, TLS library set-up): 5 % of the
machine's throughput in the A/B benchmark, measured, and none of it
pgcloak's (Prometheus runs elsewhere). This costs about 1 ms.

usage: scraper.py URL [FLAG_FILE]
  With FLAG_FILE it scrapes only while that file exists.
  On SIGTERM it prints how many scrapes succeeded and failed, and exits.
"""
from __future__ import annotations

import http.client
import os
import signal
import sys
import time
import urllib.parse


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    url = urllib.parse.urlsplit(sys.argv[1])
    flag = sys.argv[2] if len(sys.argv) == 3 else None
    counts = {"ok": 0, "failed": 0}

    def stop(*_):
        print(f"[scraper] {url.geturl()}: {counts['ok']} scrapes, {counts['failed']} failed", file=sys.stderr)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    conn = None
    next_at = time.monotonic()
    while True:
        next_at += 1.0
        time.sleep(max(next_at - time.monotonic(), 0))
        if flag is not None and not os.path.exists(flag):
            continue
        try:
            if conn is None:
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
            conn.request("GET", url.path or "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or b"\npgcloak_build_info" not in body:
                raise RuntimeError(f"HTTP {resp.status}, {len(body)} bytes without pgcloak_build_info")
            counts["ok"] += 1
        except Exception as e:  # noqa: BLE001 (any failure is reported and retried)
            counts["failed"] += 1
            print(f"[scraper] scrape of {url.geturl()} failed: {e}", file=sys.stderr)
            if conn is not None:
                conn.close()
            conn = None


if __name__ == "__main__":
    sys.exit(main())
