#!/bin/bash
# tools/device_next.sh: one device call that checks main's build whole, in priority order (the
# proof issue 3 was resolved on, session 25; run it after any kernel change that becomes a default),
# all under TOTAL seconds (default 540; the device tool's limit is 600 a call), so that the call
# that finally gets a machine does everything in turn and what finished comes back. Each line is a
# run of tools/device_run.sh with the time that is left (its logs and summary accumulate in
# /tmp/moda_logs; the last run's $OUT/logs.tar.xz holds them all). Update it with Next.
#   bash tools/device_pack.sh      # here, on main (the pack is the library and checkers it proves)
#   run(carry=[".deb", ".devcarry", ".thirdparty"], command="TOTAL=540 bash tools/device_next.sh")
# With little device time left, a smaller TOTAL runs the first lines only (deadline-skipped stages
# print SKIPPED in the summary).
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s); TOTAL=${TOTAL:-540}
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
run() { local l; l=$(left); [ "$l" -ge 30 ] && env DEADLINE="$l" "$@" bash tools/device_run.sh "${STAGES[@]}"; }
# 1. the defaults: the CUDA spec, the default checker steps
STAGES=(spec); run SPEC_LIMIT=120
STAGES=(v6); run STEP_TIMEOUT=90 ONLY='^(quick_default|depth_default|decode_default|bwd_default|bwd_default_nd)$'
# 2. compute-sanitizer memcheck and racecheck on a small case of every kernel: the v6san list (every
#    forward and backward variant, the SIMT head dims among its cases), 8 runs at once (serially
#    some racecheck runs took over 60 s, session 25), the decode kernels (split + combine) last
STAGES=(v6san); run SAN_LIMIT=280 SAN_JOBS=8
mkdir -p /tmp/moda_logs
# 3. the full table beside FLASH, cuDNN and the authors' forward in one process, and the depth
#    rows' bytes floor at the model shapes on this card
STAGES=(benchnd); run BENCH_ARGS=
timeout 60 python3 bench/memory_floor.py > /tmp/moda_logs/memfloor.log 2>&1; cat /tmp/moda_logs/memfloor.log
tar -cJf "${OUT:-/tmp}/logs.tar.xz" -C /tmp/moda_logs .
