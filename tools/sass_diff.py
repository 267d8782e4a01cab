#!/usr/bin/env python3
"""tools/sass_diff.py [--strip-false-tail] A.sass B.sass [NAME_REGEX]: which kernels of two builds have the same SASS.

Input: `cuobjdump -sass LIB` of each build (see tools/sass_hist.sh for cuobjdump). Per kernel
and architecture (`Function :` sections, matched by mangled name; NAME_REGEX keeps a subset) the instructions are
compared after removing what moves without changing the code: the address comments (`/*0a40*/`),
the encoding words (`/* 0x... */`) and the per-file hashes of anonymous namespaces that nvcc puts
in mangled names (`_GLOBAL__N__1719373e_`, `_cu_722dd797`), also inside branch and call targets'
symbols. Branch offsets are instructions' operands and are compared: a kernel whose code moved by
one instruction differs.

Why: a kernel whose SASS is unchanged runs as the build that was timed, so a refactor that leaves
it identical needs no new device call (docs/CUDA_NOTES.md, sessions 19-20); one that moves it
needs a timed A/B (session 17 saw a refactor alone cost ~4 us at DeiT-Tiny).

--strip-false-tail: drop trailing `false` template arguments (`Lb0E` before the list's end) from
the names on both sides, so a kernel template that gained a defaulted `bool X = false` parameter
(a new opt-in variant) matches its old instances by name (sessions 22-23 did this by sed).

Prints one line per differing kernel (its changed instruction lines, its sizes), the kernels found
in one build only, and a summary `sass-diff: N identical, M differ, K only in A, J only in B`.
Exit status 1 when any kernel differs or is missing from one side, 2 when a file holds no
instructions, else 0. Standard library only.
"""
import difflib
import re
import sys

FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)")
ARCH = re.compile(r"^\s*arch\s*=\s*(sm_\w+)")
ADDR = re.compile(r"/\*[0-9a-f]{4,}\*/")
ENC = re.compile(r"/\*\s*0x[0-9a-f]+\s*\*/")
HASHES = (re.compile(r"_GLOBAL__N__[0-9a-f]+_"), re.compile(r"_cu_[0-9a-f]{8}"))


FALSE_TAIL = re.compile(r"(?:Lb0E)+(?=EE?v)")
strip_false_tail = False


def normalise_name(name):
    name = HASHES[0].sub("_GLOBAL__N__", name)
    name = HASHES[1].sub("_cu_", name)
    return FALSE_TAIL.sub("", name) if strip_false_tail else name


def kernels(path):
    """{"arch kernel" (name normalised): [normalised instructions]}; a fat binary lists each
    kernel once per architecture"""
    out, cur, arch = {}, None, "?"
    with open(path, errors="replace") as f:
        for line in f:
            m = ARCH.match(line)
            if m:
                arch, cur = m.group(1), None
                continue
            m = FUNC.match(line)
            if m:
                cur = f"{arch} {normalise_name(m.group(1))}"
                out[cur] = []
                continue
            if cur is not None and ADDR.search(line):  # an instruction: its address comes first
                text = normalise_name(ENC.sub("", ADDR.sub("", line)))
                out[cur].append(" ".join(text.split()))
    return out


def main(argv):
    global strip_false_tail
    if len(argv) > 1 and argv[1] == "--strip-false-tail":
        strip_false_tail = True
        argv = argv[:1] + argv[2:]
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    a, b = kernels(argv[1]), kernels(argv[2])
    for path, k in ((argv[1], a), (argv[2], b)):
        if not any(k.values()):  # kernels with no instructions would all compare equal
            print(f"sass-diff: no instructions in {path} (not `cuobjdump -sass` output?)", file=sys.stderr)
            return 2
    keep = re.compile(argv[3]) if len(argv) > 3 else None
    names = sorted(set(a) | set(b))
    if keep:
        names = [n for n in names if keep.search(n)]
    same = differ = only_a = only_b = 0
    for n in names:
        if n not in b:
            only_a += 1
            print(f"only in A: {n}")
        elif n not in a:
            only_b += 1
            print(f"only in B: {n}")
        elif a[n] == b[n]:
            same += 1
        else:
            differ += 1
            changed = sum(1 for d in difflib.unified_diff(a[n], b[n], lineterm="", n=0)
                          if d[:1] in "+-" and d[:3] not in ("+++", "---"))
            print(f"differs: {n} ({changed} changed lines; {len(a[n])} -> {len(b[n])} instructions)")
    print(f"sass-diff: {same} identical, {differ} differ, {only_a} only in A, {only_b} only in B")
    return 1 if differ or only_a or only_b else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
