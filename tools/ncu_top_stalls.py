"""tools/ncu_top_stalls.py REPORT.csv [N]: the N SASS instructions with the most warp-stall samples.

Input: `ncu --import R.ncu-rep --page source --print-source sass --csv` (a report profiled with
--section SourceCounters, which carries the PC sampling). Prints per line: the share of all
samples, the address, the instruction, and its largest stall reasons (the per-reason sample
columns the CSV carries, whatever ncu version names them), after the kernel's totals per reason.
Standard library only.
"""
import csv
import sys


def num(s):
    try:
        return float(s.replace(",", ""))
    except (ValueError, AttributeError):
        return 0.0


def main():
    path, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = next(i for i, r in enumerate(rows) if any("Source" == c.strip() for c in r))
    cols = [c.strip() for c in rows[head]]
    body = [r for r in rows[head + 1:] if len(r) == len(cols)]
    total_col = next(i for i, c in enumerate(cols) if "Sampling (All" in c)
    src_col = cols.index("Source")
    addr_col = next((i for i, c in enumerate(cols) if c.startswith("Address")), None)
    reason_cols = [i for i, c in enumerate(cols)
                   if i != total_col and "Sampling" not in c and ("stall" in c.lower() or "Stall" in c)]
    total = sum(num(r[total_col]) for r in body) or 1.0
    print(f"# {path}: {len(body)} SASS lines, {total:.0f} samples; reason columns: {len(reason_cols)}")
    # the whole kernel's samples by reason, then the top lines
    by_reason = sorted(((sum(num(r[i]) for r in body), cols[i]) for i in reason_cols), reverse=True)
    print("# by reason: " + ", ".join(f"{name} {v / total:.1%}" for v, name in by_reason[:10] if v > 0))
    for r in sorted(body, key=lambda r: -num(r[total_col]))[:n]:
        reasons = sorted(((num(r[i]), cols[i]) for i in reason_cols), reverse=True)[:3]
        why = ", ".join(f"{name} {v / max(num(r[total_col]), 1):.0%}" for v, name in reasons if v > 0)
        addr = r[addr_col] if addr_col is not None else "?"
        print(f"{100 * num(r[total_col]) / total:5.1f}%  {addr:>8s}  {r[src_col].strip()[:70]:70s}  {why}")


if __name__ == "__main__":
    main()
