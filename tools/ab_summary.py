#!/usr/bin/env python3
"""tools/ab_summary.py AB_TXT: the A/B rounds of tools/device_run.sh's `ab` stage as one table.

ab.txt holds, per round and variant, a "=== VARIANT (round N)" line and the benchmark's rows
("SHAPE L=..  KERNEL  fwd  TF/s  f+b  TF/s ..."). This prints, per shape, each variant's forward
and f+b times of every round and the ratio of their mean to the first variant's (the baseline,
usually "-": the defaults), so a call's A/B reads at a glance. Times are the benchmark's medians
in ms; nothing is averaged away: the rounds stay visible. Where the rounds ran with --profile
(the "-- SHAPE: CUDA time per fwd+bwd ..." lines), each shape also gets its kernels' CUDA times
per variant and round.
"""
import re
import sys


def parse(path):
    variants, rows = [], {}  # rows[(variant, shape)] = [(fwd, fb, kernel), ...] per round
    kernels = {}  # kernels[(variant, shape)] = [{kernel name: ms}, ...] per round (--profile)
    variant = None
    with open(path) as f:
        for line in f:
            m = re.match(r"^=== (.*) \(round (\d+)\)\s*$", line)
            if m:
                variant = m.group(1)
                if variant not in variants:
                    variants.append(variant)
                continue
            if variant is None:
                continue
            m = re.match(r"^-- (.+?): CUDA time per fwd\+bwd .*?total [\d.]+ ms: (.*)$", line)
            if m:
                shape = " ".join(m.group(1).split())
                times = {}
                for part in m.group(2).split("|"):
                    name, _, t = part.strip().rpartition(" ")
                    times[name] = float(t)
                kernels.setdefault((variant, shape), []).append(times)
                continue
            if line.startswith("--"):
                continue
            # the benchmark's labels: a name and one KEY=N ("paper T=4096", "LM-64 L=126")
            m = re.match(r"^(\S+\s+[A-Za-z]+=\d+)\s+(\S+)\s+([\d.]+|nan)\s+\S+\s+([\d.]+|nan)", line)
            if m:
                shape = " ".join(m.group(1).split())
                rows.setdefault((variant, shape), []).append((float(m.group(3)), float(m.group(4)), m.group(2)))
    return variants, rows, kernels


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: ab_summary.py AB_TXT")
    variants, rows, kernels = parse(sys.argv[1])
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
        names = []  # every kernel any variant ran at this shape, by the baseline's order of time
        for v in variants:
            for times in kernels.get((v, shape), []):
                names += [n for n in sorted(times, key=times.get, reverse=True) if n not in names]
        if names:
            print("  kernel CUDA ms per fwd+bwd, rounds (-: not run)")
            for v in variants:
                per = kernels.get((v, shape))
                if not per:
                    continue
                cells = ["%s %s" % (n, "/".join("%.3f" % t[n] if n in t else "-" for t in per)) for n in names]
                print("  %-52s %s" % (v[:52], " | ".join(cells)))
        print()


if __name__ == "__main__":
    main()
