"""Sums an Nsight Compute CSV (`ncu --csv --metrics gpu__time_duration.sum`)
by kernel kind: fairyc's generated kernels by name (their index dropped),
cuBLAS's `nvjet` products as one line. `python3 scripts/ncu-summary.py FILE`."""
import collections
import csv
import re
import sys

UNITS = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows:
    sys.exit(f"{sys.argv[1]}: no kernel rows (did ncu profile anything?)")
header, rows = rows[0], rows[1:]
name, value, unit = (header.index(c) for c in ("Kernel Name", "Metric Value", "Metric Unit"))
by_kind = collections.defaultdict(lambda: [0, 0.0])
total = 0.0
for r in rows:
    us = float(r[value].replace(",", "")) * UNITS[r[unit]]
    kind = re.sub(r"_\d+$", "", r[name])
    kind = "cuBLAS products (nvjet)" if kind.startswith("nvjet") else kind[:60]
    by_kind[kind][0] += 1
    by_kind[kind][1] += us
    total += us
print(f"{len(rows)} kernels, {total / 1e3:.1f} ms of GPU time")
print(f"{'kernel':40} {'ms':>9} {'share':>6} {'launches':>8} {'us each':>9}")
for kind, (n, us) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
    print(f"{kind:40} {us / 1e3:9.2f} {100 * us / total:5.1f}% {n:8d} {us / n:9.1f}")
