#!/usr/bin/env python3
"""tools/ab_summary.py AB_TXT: the A/B rounds of tools/device_run.sh's `ab` stage as one table.

ab.txt holds, per round and variant, a "=== VARIANT (round N)" line and the benchmark's rows
("SHAPE L=..  KERNEL  fwd  TF/s  f+b  TF/s ..."). This prints, per shape, each variant's forward
and f+b times of every round and the ratio of their mean to the first variant's (the baseline,
usually "-": the defaults), so a call's A/B reads at a glance. Times are the benchmark's medians
in ms; nothing is averaged away: the rounds stay visible.
"""
import re
import sys


def parse(path):
    variants, rows = [], {}  # rows[(variant, shape)] = [(fwd, fb, kernel), ...] per round
    variant = None
    with open(path) as f:
        for line in f:
            m = re.match(r"^=== (.*) \(round (\d+)\)\s*$", line)
            if m:
                variant = m.group(1)
                if variant not in variants:
                    variants.append(variant)
                continue
            if variant is None or line.startswith("--"):
                continue
            m = re.match(r"^(\S+(?: \S+)?\s+L=\d+)\s+(\S+)\s+([\d.]+|nan)\s+\S+\s+([\d.]+|nan)", line)
            if m:
                shape = " ".join(m.group(1).split())
                rows.setdefault((variant, shape), []).append((float(m.group(3)), float(m.group(4)), m.group(2)))
    return variants, rows


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: ab_summary.py AB_TXT")
    variants, rows = parse(sys.argv[1])
    if not variants:
        sys.exit("ab_summary: no '=== VARIANT (round N)' lines in " + sys.argv[1])
    shapes = []
    for (_, shape) in rows:
        if shape not in shapes:
            shapes.append(shape)
    base = variants[0]
    mean = lambda xs: sum(xs) / len(xs)
    for shape in shapes:
        print("%s (ratios: mean over the rounds against %s)" % (shape, base))
        print("  %-52s %-20s %-22s %-22s %7s %7s" % ("variant", "kernel", "fwd ms", "f+b ms", "fwd x", "f+b x"))
        b = rows.get((base, shape))
        for v in variants:
            r = rows.get((v, shape))
            if not r:
                continue
            fwd = " ".join("%.3f" % x[0] for x in r)
            fb = " ".join("%.3f" % x[1] for x in r)
            rf = mean([x[0] for x in r]) / mean([x[0] for x in b]) if b else float("nan")
            rb = mean([x[1] for x in r]) / mean([x[1] for x in b]) if b else float("nan")
            print("  %-52s %-20s %-22s %-22s %7.3f %7.3f" % (v[:52], r[0][2], fwd, fb, rf, rb))
        print()


if __name__ == "__main__":
    main()
