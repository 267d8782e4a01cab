#!/usr/bin/env python3
"""tools/sass_rs_check.py SASS_FILE [NAME_REGEX]: for every HGMMA whose A operand comes from
registers (RS wgmma), the instructions whose writes of those registers can reach it (reaching
definitions over the kernel's control-flow graph). More than one kind of writer reaching one
HGMMA is the signature of the ptxas 13.0 fault found in session 9: a loop-invariant A fragment
(Q of S = Q K^T, loaded once by LDSM before the loop) given the same physical registers as the P
fragments packed inside the loop (F2FP), so the back edge brings P where Q should be and every
block after the first multiplies garbage. Input: `cuobjdump -sass` output (see tools/sass_hist.sh
for cuobjdump). Prints OK or SUSPECT per kernel with an RS HGMMA; exit status 1 on any SUSPECT.
Also, for every kernel: a descriptor (memory `desc[URn]`, 64 bits, or wgmma `gdesc[URn]`, wider;
both start at an even uniform register) in an odd uniform register,
the signature of the ptxas 13.0 fault found in session 18 (a cp.async with an L2 cache-policy
hint in the wgmma dQ kernel became `LDGSTS ... desc[UR1]`: an illegal instruction on the H100);
SUSPECT-DESC per such kernel, and one line `desc: N descriptors, M odd`."""
import re
import sys

text = open(sys.argv[1]).read()
name_re = re.compile(sys.argv[2]) if len(sys.argv) > 2 else None
INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
BRANCH = ("BRA", "BRX", "JMP", "JMX")


def parse(body):
    out = []  # (addr, pred, opcode, operands)
    for addr, txt in INS.findall(body):
        m = re.match(r"(@!?U?P\w+\s+)?(\S+)\s*(.*)", txt)
        out.append((int(addr, 16), bool(m.group(1)), m.group(2), m.group(3)))
    return out


def defs(op, operands):
    """Registers an instruction writes (first operand), with the width its opcode implies."""
    base = op.split(".")[0]
    if base in ("HGMMA", "BAR", "WARPSYNC", "EXIT", "RET", "CALL", "NOP", "DEPBAR", "MEMBAR", "FENCE",
                "ERRBAR", "CCTL", "SYNCS", "UTMALDG", "UBLKCP", "ARRIVES", "LDGDEPBAR", "WARPGROUP") or \
            base.startswith(("ST", "RED", "BRA", "BRX", "JM", "BSSY", "BSYNC", "YIELD", "NANOSLEEP")):
        return []
    m = re.match(r"R(\d+)\b", operands)
    if not m:
        return []
    r, w = int(m.group(1)), 1
    if ".128" in op or (base == "LDSM" and ".4" in op) or base == "HMMA":
        w = 4
    elif ".64" in op or (base == "LDSM" and ".2" in op) or base == "CS2R" or ".WIDE" in op:
        w = 2
    return list(range(r, r + w))


bad = False
n_desc = n_odd = 0
for part in re.split(r"\n\s*Function : ", text)[1:]:
    name = part.split("\n")[0].strip()
    if name_re and not name_re.search(name):
        continue
    descs = [int(r) for r in re.findall(r"desc\[UR(\d+)\]", part)]
    odd = sorted({r for r in descs if r % 2})
    n_desc += len(descs)
    n_odd += sum(1 for r in descs if r % 2)
    if odd:
        bad = True
        print(f"SUSPECT-DESC {name[:110]}\n    memory descriptor in odd uniform register(s) " +
              ", ".join(f"UR{r}" for r in odd))
    ins = parse(part)
    if not any(op.startswith("HGMMA") and re.match(r"R\d+,\s+R\d+,", o) for _, _, op, o in ins):
        continue
    idx = {a: i for i, (a, _, _, _) in enumerate(ins)}
    # successors of each instruction
    succ = []
    for i, (a, pred, op, o) in enumerate(ins):
        s = []
        base = op.split(".")[0]
        tgt = re.findall(r"0x([0-9a-f]+)", o) if base in BRANCH or op.startswith("WARPSYNC.COLLECTIVE") else []
        for t in tgt:
            if int(t, 16) in idx:
                s.append(idx[int(t, 16)])
        uncond_jump = base in BRANCH and not pred and ".DIV" not in op
        if base in ("EXIT", "RET") and not pred:
            pass
        elif not uncond_jump and i + 1 < len(ins):
            s.append(i + 1)
        succ.append(s)
    # reaching definitions of the A registers only
    a_regs = set()
    for _, _, op, o in ins:
        m = re.match(r"R\d+,\s+R(\d+),", o)
        if op.startswith("HGMMA") and m:
            a_regs.update(range(int(m.group(1)), int(m.group(1)) + 4))
    gen = []
    for i, (a, pred, op, o) in enumerate(ins):
        gen.append([(r, i) for r in defs(op, o) if r in a_regs])
    IN = [set() for _ in ins]
    work = list(range(len(ins)))
    while work:
        i = work.pop()
        out = set(IN[i])
        if gen[i]:
            killed = {r for r, _ in gen[i]} if not ins[i][1] else set()
            out = {d for d in out if d[0] not in killed} | set(gen[i])
        for j in succ[i]:
            if not out <= IN[j]:
                IN[j] |= out
                work.append(j)
    sus = []
    for i, (a, pred, op, o) in enumerate(ins):
        m = re.match(r"R\d+,\s+R(\d+),", o)
        if not (op.startswith("HGMMA") and m):
            continue
        regs = range(int(m.group(1)), int(m.group(1)) + 4)
        kinds = {ins[d][2].split(".")[0] for r, d in IN[i] if r in regs}
        if len(kinds) > 1:
            sus.append(f"{a:#x} A=R{regs[0]} reached by {sorted(kinds)}")
    if sus:
        bad = True
        print(f"SUSPECT {name[:110]}\n    " + "\n    ".join(sus[:6]))
    else:
        print(f"OK      {name[:110]}")
print(f"desc: {n_desc} descriptors, {n_odd} odd")
sys.exit(1 if bad else 0)
