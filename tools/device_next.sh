#!/bin/bash
# tools/device_next.sh: the Next list of docs/CUDA_NOTES.md as one device call, in priority order,
# all under TOTAL seconds (default 540; the device tool's limit is 600 a call), so that the call
# that finally gets a machine does everything in turn and what finished comes back. Each line is a
# run of tools/device_run.sh with the time that is left (its logs and summary accumulate in
# /tmp/moda_logs; the last run's $OUT/logs.tar.xz holds them all). Update it with Next.
#   bash tools/device_pack.sh      # here, from the branch that holds every variant below
#   run(carry=[".deb", ".devcarry", ".thirdparty"], command="TOTAL=540 bash tools/device_next.sh")
# With little device time left, a smaller TOTAL runs the first lines only (deadline-skipped stages
# print SKIPPED in the summary).
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s); TOTAL=${TOTAL:-540}
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
run() { local l; l=$(left); [ "$l" -ge 30 ] && env DEADLINE="$l" "$@" tools/device_run.sh "${STAGES[@]}"; }
# 1. the merged defaults (v11 PingPong, DeiT's atomic flow): the spec with the flow test, the
#    default checker steps
STAGES=(spec); run SPEC_LIMIT=120
STAGES=(v6); run STEP_TIMEOUT=90 ONLY='^(quick_default|bwd_default|bwd_default_nd|bwd_dqws_nopp|quick_pp_split)$'
# 2. the full table beside FLASH and cuDNN in one process (the cuDNN stretch at T=65536), and the
#    depth rows' bytes floor at the model shapes on this card
STAGES=(benchnd); run BENCH_ARGS=
mkdir -p /tmp/moda_logs
timeout 60 python3 bench/memory_floor.py > /tmp/moda_logs/memfloor.log 2>&1; cat /tmp/moda_logs/memfloor.log
# 3. v10 HALVES (branch s23-v10half) and the depth kernel's share of SMs at LM-64 and DeiT (a
#    forced share runs the concurrent flow at DeiT too, with the token depth kernel on an H100
#    unless MODA_CUDA_BWD_DEPTH_TMA=1: DeiT's own depth kernel is the TMA one)
STAGES=(v6); run STEP_TIMEOUT=90 ONLY='^(bwd_halves|quick_halves)$'
STAGES=(ab); run AB_ENVS="- MODA_CUDA_BWD_HALVES=1 MODA_CUDA_BWD_DEPTH_SMS=66 MODA_CUDA_BWD_DEPTH_SMS=74 MODA_CUDA_BWD_DEPTH_SMS=82 MODA_CUDA_BWD_DEPTH_SMS=74,MODA_CUDA_BWD_DEPTH_TMA=1" \
  BENCH_ARGS="--nondet --only=T=4096,T=16384,T=65536,L=22,L=126"
# 4. PingPong (the default in v11) and HALVES under memcheck and racecheck
STAGES=(v6san); run SAN_LIMIT=90 ONLY='^(bwd_pp_split|bwd_default_nd|bwd_halves)$'
# 5. the SM-to-SM network against L2 reductions for dQ partials
STAGES=(dqred); run
