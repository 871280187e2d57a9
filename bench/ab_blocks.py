#!/usr/bin/env python3
"""Throughput with a feature on vs off, from one pgbench run in which the
feature was switched on and off in alternating blocks (bench/pgbench_compare.sh,
BENCH_AB).

Comparing two separate runs (or two proxy processes) on a shared 2-core
machine mixes the feature's cost with run-to-run noise of 5-20 %: different
backends, a different convoy of the 16 clients, other work on the host. Here
the same pgbench clients, the same PostgreSQL backends and the same proxy
process run throughout, and only the feature changes, every few seconds; a
drift of the machine's speed shows up in both states alike and cancels in
the paired ratios.

Inputs:
  pgbench's log with `-P 1 --progress-timestamp` lines:
      progress: 1764440000.123 s, 15234.2 tps, lat 1.050 ms stddev 0.412, 0 failed
  the toggler's log, one line per block start:
      "<epoch seconds> <on|off> <proxy cpu ticks> <machine busy ticks>"
  and a last line "<epoch seconds> end <proxy cpu ticks> <machine busy ticks>".

A progress line covers the second before its timestamp. Seconds that straddle
a switch, and the first `settle` seconds of each block, are left out of the
tps figures.

Prints one JSON object with, per state, the mean tps, the proxy's CPU time
per transaction and the whole machine's (every process on every core: pgbench,
PostgreSQL, the proxy, the scraper); and two on/off comparisons:

- throughput: mean tps on / off, and paired ratios (each interior "on"
  block against the mean of the "off" blocks either side);
- capacity: machine CPU per transaction off / on, the same way. While the
  cores are saturated, throughput is cores / (CPU per transaction), so this
  is the throughput ratio the feature's CPU cost implies, without the
  machine's speed changing from one second to the next (other guests,
  frequency, which process lands on which core).

Each paired series gets its median, mean and a 95 % bootstrap interval of
the mean.
"""
from __future__ import annotations

import json
import os
import random
import re
import statistics
import sys

PROGRESS = re.compile(r"^progress: ([0-9.]+) s, ([0-9.]+) tps")


def main() -> int:
    if len(sys.argv) != 5:
        print("usage: ab_blocks.py PGBENCH_LOG TOGGLE_LOG SETTLE_SECONDS CLK_TCK", file=sys.stderr)
        return 2
    pgbench_log, toggle_log, settle, clk_tck = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])

    samples = []  # (end time, tps)
    with open(pgbench_log, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = PROGRESS.match(line.strip())
            if m:
                samples.append((float(m.group(1)), float(m.group(2))))

    marks = []  # (time, state, proxy ticks, machine busy ticks)
    with open(toggle_log, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                marks.append((float(parts[0]), parts[1], int(parts[2]), int(parts[3])))
    blocks = []
    for (start, state, cpu0, busy0), (end, _, cpu1, busy1) in zip(marks, marks[1:]):
        if state in ("on", "off"):
            blocks.append({"state": state, "start": start, "end": end, "proxy_ticks": cpu1 - cpu0,
                           "busy_ticks": busy1 - busy0, "tps": []})

    for t, tps in samples:
        for b in blocks:
            if b["start"] + settle <= t - 1.0 and t <= b["end"]:
                b["tps"].append(tps)
                break
    # Transactions in a block, for CPU per transaction: every second of it,
    # settle included, because the CPU ticks cover the whole block.
    for b in blocks:
        whole = [tps for t, tps in samples if b["start"] <= t - 1.0 and t <= b["end"]]
        b["mean_tps"] = statistics.fmean(b["tps"]) if b["tps"] else None
        b["transactions"] = statistics.fmean(whole) * (b["end"] - b["start"]) if whole else 0.0
        b["machine_us_per_tx"] = (b["busy_ticks"] / clk_tck * 1e6 / b["transactions"]
                                  if b["transactions"] > 0 else None)

    usable = [b for b in blocks if b["mean_tps"] is not None and b["machine_us_per_tx"] is not None]
    cores = os.cpu_count() or 1
    out: dict = {"blocks": len(usable), "settle_seconds": settle}
    for state in ("on", "off"):
        bs = [b for b in usable if b["state"] == state]
        secs = [tps for b in bs for tps in b["tps"]]
        tx = sum(b["transactions"] for b in bs)
        seconds = sum(b["end"] - b["start"] for b in bs)
        out[state] = {
            "blocks": len(bs),
            "seconds": len(secs),
            "mean_tps": round(statistics.fmean(secs), 1) if secs else None,
            "proxy_cpu_us_per_tx": per_tx(sum(b["proxy_ticks"] for b in bs), tx, clk_tck),
            "machine_cpu_us_per_tx": per_tx(sum(b["busy_ticks"] for b in bs), tx, clk_tck),
            "machine_busy": round(sum(b["busy_ticks"] for b in bs) / clk_tck / (seconds * cores), 3)
            if seconds > 0 else None,
        }
    on, off = out["on"], out["off"]
    if on["mean_tps"] and off["mean_tps"]:
        out["ratio"] = round(on["mean_tps"] / off["mean_tps"], 4)
    if on["machine_cpu_us_per_tx"] and off["machine_cpu_us_per_tx"]:
        out["capacity_ratio"] = round(off["machine_cpu_us_per_tx"] / on["machine_cpu_us_per_tx"], 4)
    out["paired"] = paired(usable, lambda b, ref: b["mean_tps"] / ref("mean_tps"))
    out["paired_capacity"] = paired(usable, lambda b, ref: ref("machine_us_per_tx") / b["machine_us_per_tx"])
    print(json.dumps(out))
    return 0 if usable else 1


def per_tx(ticks: int, tx: float, clk_tck: int) -> float | None:
    return round(ticks / clk_tck * 1e6 / tx, 2) if tx > 0 and ticks >= 0 else None


def paired(blocks: list[dict], ratio) -> dict:
    """Each interior "on" block against the mean of the "off" blocks on
    either side: ratio(block, ref) where ref(field) is that mean."""
    pairs = []
    for i in range(1, len(blocks) - 1):
        b, prev, nxt = blocks[i], blocks[i - 1], blocks[i + 1]
        if b["state"] == "on" and prev["state"] == "off" and nxt["state"] == "off":
            pairs.append(ratio(b, lambda field: (prev[field] + nxt[field]) / 2))
    out: dict = {"n": len(pairs), "ratios": [round(r, 4) for r in pairs]}
    if pairs:
        out["median"] = round(statistics.median(pairs), 4)
        out["mean"] = round(statistics.fmean(pairs), 4)
        if len(pairs) >= 3:
            rng = random.Random(20261129)  # the same interval for the same data
            means = sorted(statistics.fmean(rng.choices(pairs, k=len(pairs))) for _ in range(5000))
            out["mean_ci95"] = [round(means[124], 4), round(means[4874], 4)]
    return out


if __name__ == "__main__":
    sys.exit(main())
