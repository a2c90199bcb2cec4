#!/usr/bin/env python3
"""Renders the runs of bench/run.sh (one JSON object a line) as markdown:
per case the min and median IOPS over the repetitions, the medians of
p50 / p99 / p99.99, the worst max, and ratios to the baselines measured in
the same run (the C floor model, the host's own pwrite, vhost-device-scsi)."""

import argparse
import json
import statistics
from collections import defaultdict

MODES = [
    ("interrupt", "interrupt (off/off)"),
    ("hybrid", "hybrid (adaptive both sides)"),
    ("poll50", "fixed poll 50 us both sides"),
    ("dpoll", "daemon poll 50 us only"),
]
TITLE = dict(MODES)
# vhost-device-scsi does not poll: only the driver's side of a mode applies.
VDS_TITLE = {"interrupt": "driver interrupt", "hybrid": "driver adaptive", "poll50": "driver poll 50 us"}


def med(xs):
    return statistics.median(xs) if xs else None


def k(x):
    return "—" if x is None else f"{x / 1000:.1f}k"


def us(x):
    return "—" if x is None else (f"{x:.1f}" if x < 1000 else f"{x:,.0f}")


def ratio(a, b):
    return "—" if not a or not b else f"{a / b:.2f}x"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    for f in ["started", "commit", "runs", "secs", "load", "cpus", "image", "adaptive", "pinning", "vds"]:
        ap.add_argument("--" + f, default="")
    a = ap.parse_args()
    rows = [json.loads(line) for line in open(a.results) if line.strip()]
    by = defaultdict(list)
    for r in rows:
        by[(r["group"], r["mode"], r.get("qd"), r.get("queues"))].append(r)

    def runs(group, mode, qd=None, queues=None):
        return by.get((group, mode, qd, queues), [])

    def summary(rs):
        if not rs:
            return None
        iops = sorted(r["iops"] for r in rs)
        return {
            "n": len(rs),
            "min": iops[0],
            "med": med(iops),
            "p50": med([r["p50"] for r in rs]),
            "p99": med([r["p99"] for r in rs if "p99" in r]),
            "p9999": med([r["p9999"] for r in rs if "p9999" in r]),
            "max": max((r["max"] for r in rs if "max" in r), default=None),
            "over": sum(r.get("over", 0) for r in rs),
        }

    print(f"### Suite run {a.started}, commit {a.commit}\n")
    print(f"`bench/run.sh {a.image} {a.runs} {a.secs}`: {a.runs} repetitions of {a.secs} s per case, "
          f"cases alternating within each repetition; {a.cpus} CPUs, load average (1/5/15 min) "
          f"before / after: {a.load}; pinning: {a.pinning}. 4 KiB I/O on a raw image in the page "
          f"cache (`cache=writeback`, inline), warmed before every run. IOPS are min / median over "
          f"the repetitions, latencies (completion, µs) the median of each run's percentile, max the "
          f"worst run's; \"> 100 ms\" counts completions over `--warn-latency` in all runs.\n")
    if a.adaptive != "1":
        print("This build's `vscsi bench` has no `--poll adaptive` / `--daemon-poll adaptive`: "
              "the hybrid rows of our daemon are not measured (the floor model's are).\n")

    print("#### 4k randread against the floor model\n")
    print("| QD | queues | mode | IOPS min / median | p50 | p99 | p99.99 | max | > 100 ms "
          "| floor model IOPS (µs/IO), median | ours / model |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for qd in (1, 32, 128):
        for queues in (1, 2):
            for mode, title in MODES:
                s = summary(runs("randread", mode, qd, queues))
                fl = runs("floor", mode, qd)
                fmed = med([r["iops"] for r in fl])
                fus = med([r["us_per_io"] for r in fl])
                model = "—" if fmed is None else f"{k(fmed)} ({fus:.2f})"
                if s is None:
                    print(f"| {qd} | {queues} | {title} | not measured | | | | | | {model} | |")
                    continue
                print(f"| {qd} | {queues} | {title} | {k(s['min'])} / **{k(s['med'])}** | {us(s['p50'])} "
                      f"| {us(s['p99'])} | {us(s['p9999'])} | {us(s['max'])} | {s['over']} | {model} "
                      f"| {ratio(s['med'], fmed)} |")
    print("\nThe floor model has one ring: the 2-queue rows are set against the same one-ring "
          "figure at the same depth (the least work this machine does for that many I/Os in "
          "flight). It has no mode where only the device polls.\n")

    host = summary(runs("host", "pwrite", 1))
    print("#### 4k randwrite QD32, 1 queue, against the host's own pwrite\n")
    hp = "—" if host is None else f"{k(host['min'])} / {k(host['med'])}"
    print(f"Host: fio `--ioengine=psync --rw=randwrite --bs=4k --numjobs=1` on the same file, "
          f"IOPS min / median {hp} (p50 {us(host and host['p50'])} µs).\n")
    print("| mode | IOPS min / median | p50 | p99 | p99.99 | max | > 100 ms | ours / host pwrite |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, title in MODES:
        s = summary(runs("randwrite", mode, 32, 1))
        if s is None:
            print(f"| {title} | not measured | | | | | | |")
            continue
        print(f"| {title} | {k(s['min'])} / **{k(s['med'])}** | {us(s['p50'])} | {us(s['p99'])} "
              f"| {us(s['p9999'])} | {us(s['max'])} | {s['over']} | {ratio(s['med'], host and host['med'])} |")
    print()

    if a.vds:
        print("#### Against vhost-device-scsi (same driver, randread QD32, 1 queue of 128)\n")
        print(f"`{a.vds}`: one request queue of at most 128 descriptors, no polling of its own "
              f"(only the driver's mode changes); ours with the same queue.\n")
        print("| daemon | driver / daemon mode | IOPS min / median | p50 | p99 | p99.99 | max |")
        print("|---|---|---|---|---|---|---|")
        best = {}
        for group, name in (("ours128", "vscsi-backend"), ("vds", "vhost-device-scsi")):
            for mode, title in MODES:
                s = summary(runs(group, mode, 32, 1))
                if s is None:
                    continue
                if group not in best or s["med"] > best[group][1]["med"]:
                    best[group] = (mode, s)
                if group == "vds":
                    title = VDS_TITLE[mode]
                print(f"| {name} | {title} | {k(s['min'])} / {k(s['med'])} | {us(s['p50'])} "
                      f"| {us(s['p99'])} | {us(s['p9999'])} | {us(s['max'])} |")
        if "ours128" in best and "vds" in best:
            (om, o), (vm, v) = best["ours128"], best["vds"]
            pairs = []
            oruns = {r["rep"]: r["iops"] for r in runs("ours128", om, 32, 1)}
            for r in runs("vds", vm, 32, 1):
                if r["rep"] in oruns:
                    pairs.append(f"{oruns[r['rep']] / r['iops']:.2f}x")
            print(f"\nBest modes: ours {TITLE[om]} ({k(o['med'])}), vhost-device-scsi {VDS_TITLE[vm]} "
                  f"({k(v['med'])}): **{ratio(o['med'], v['med'])}** in the median; per repetition "
                  f"{', '.join(pairs) or '—'}.\n")


if __name__ == "__main__":
    main()
