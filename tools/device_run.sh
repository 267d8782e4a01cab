#!/bin/bash
# tools/device_run.sh STAGE... : the verification and timing stages of the CUDA work, run on the
# device machine in one call, each under its own time limit and all under one deadline, so a call
# never runs past the device tool's 10-minute limit and what finished still comes back.
#   wgmma    cuda/run_checks.sh wgmma diag      (wgmma wrappers and descriptors, unit check)
#   tma      cuda/run_checks.sh tma             (TMA maps, mbarriers, the ws kernel's sync skeleton)
#   v6 v6san v6bench quick full                 (cuda/run_checks.sh modes, prebuilt checker)
#   spec     busted CUDA spec, default kernels  (MODA_CUDA_SPEC_TABLE=1; under SPEC_LIMIT seconds, default 300)
#   specall  busted CUDA spec with every experimental switch on
#   specenv  busted CUDA spec with the words of $SPEC_ENV set (A=1 B=2)
#   bench    bench/cuda_attention.py $BENCH_ARGS (env MODA_CUDA_* passes through; no spaces in it)
#   benchnd  the same with --nondet (deterministic = 0, the library's rules: dQ by atomics or not)
#   benchidle benchnd with --idle-start (calls start on an idle GPU, host latency included: the
#            method of the tables before session 12; bench and benchnd time the GPU alone)
#   ncu      Nsight Compute on $NCU_KERNEL (regex, default bwd_dq) at bench shape $NCU_SHAPE
#   ncusrc   the same kernel with PC sampling: its top stall locations in the SASS (tools/ncu_top_stalls.py)
#   copysms  bench/copy_sms.cu, what N SMs can copy: plain, bulk, rings, TMA token ring (prebuilt by device_pack.sh)
#   dqred    bench/dq_reduce.cu, dQ partials summed in L2 vs reduce-scattered in clusters first (prebuilt too)
#   ab       A/B of kernel switches: for each word of $AB_ENVS (e.g. "MODA_CUDA_BWD_WS=1
#            MODA_CUDA_BWD_WS=2"; "-" = the defaults; "A=1,B=2" sets both), twice in alternation, one bench process
#            with --profile --ours-only and $BENCH_ARGS (--nondet, --only=...): per-kernel lines + the
#            table rows, then tools/ab_summary.py's table of all rounds (ab_summary.txt)
# Expects what tools/device_pack.sh packs (.devcarry: libraries and the prebuilt checkers) and
# .deb; logs of every stage are packed into $OUT/logs.tar.xz (the tool returns 8 files at most).
# DEADLINE (seconds from start, default 560) bounds the whole call. Stages that need different
# variables (ONLY for v6 and v6san, say) go in one device call as several runs of this script,
# each with DEADLINE set to what is left of the call: the logs and the summary accumulate in
# /tmp/moda_logs, and the last run's logs.tar.xz holds them all, e.g.
#   T0=$(date +%s); left() { echo $(( 560 - ($(date +%s) - T0) )); }
#   ONLY='^bwd_default$' DEADLINE=$(left) tools/device_run.sh v6 spec
#   SAN_LIMIT=150 ONLY='^bwd_pp_split$' DEADLINE=$(left) tools/device_run.sh v6san
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s); DEADLINE=${DEADLINE:-560}
OUTDIR=${OUT:-/tmp/moda_out}; LOGS=/tmp/moda_logs; mkdir -p "$OUTDIR" $LOGS
source .deb/unpack.sh >/dev/null 2>&1 || echo "device_run: .deb/unpack.sh failed (luajit/busted missing)"
tar -xJf .devcarry/pack.tar.xz || exit 1
export LD_LIBRARY_PATH=$PWD/.devlibs:${LD_LIBRARY_PATH:-}
# other builds' libraries for A/B (tools/device_pack.sh AB_REFS=...): /tmp/ab/<ref>/libmoda*.so, for
# AB_ENVS="MODA_CUDA_LIB=/tmp/ab/<ref>/libmoda_cuda.so ..."
if [ -f .devcarry/ab.tar.xz ]; then mkdir -p /tmp/ab && tar -xJf .devcarry/ab.tar.xz -C /tmp/ab; fi
if [ -f .devcarry/checkobj.tar.xz ]; then tar -xJf .devcarry/checkobj.tar.xz -C /tmp && export REUSE_BUILD=1; fi
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
SUMMARY=$LOGS/summary.txt
BUSTED="luajit /tmp/lua-root/usr/bin/busted"  # (unpack.sh's busted is a shell function: timeout cannot run it)
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
stage() {  # stage NAME MAXSECONDS CMD...: run with the smaller of MAXSECONDS and the time left
  local name=$1 max=$2; shift 2
  local l; l=$(left); [ "$l" -lt "$max" ] && max=$l
  if [ "$max" -lt 20 ]; then echo "== $name: SKIPPED, deadline" | tee -a $SUMMARY; return; fi
  local s; s=$(date +%s)
  echo "== $name (limit ${max}s)"
  timeout "$max" "$@" > $LOGS/$name.log 2>&1; local rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - s ))s" | tee -a $SUMMARY
  tail -n "${TAIL:-25}" $LOGS/$name.log
}
bench_bin() {  # the command that runs bench/$1.cu: tools/device_pack.sh's prebuilt binary, else built here
  if [ -x /tmp/moda_check_obj/$1 ]; then echo "/tmp/moda_check_obj/$1"
  else echo "nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a bench/$1.cu -o /tmp/$1 && /tmp/$1"; fi
}
for st in "$@"; do
  case $st in
    wgmma) stage wgmma 120 bash cuda/run_checks.sh wgmma diag ;;
    tma) OUT=$LOGS/tma stage tma 120 bash cuda/run_checks.sh tma ;;
    v6|v6san|v6bench|quick|full) OUT=$LOGS/$st stage $st 420 bash cuda/run_checks.sh $st ;;
    spec) MODA_CUDA_SPEC_TABLE=1 stage spec ${SPEC_LIMIT:-300} $BUSTED --lua=luajit spec/cuda_attention_spec.lua ;;
    specenv) # the spec again with the words of $SPEC_ENV set (e.g. "MODA_CUDA_BWD_DEPTH_TMA=1")
             MODA_CUDA_SPEC_TABLE=1 stage specenv ${SPEC_LIMIT:-300} env ${SPEC_ENV:-} $BUSTED --lua=luajit spec/cuda_attention_spec.lua ;;
    specall) MODA_CUDA_SPEC_TABLE=1 MODA_CUDA_WGMMA=2 MODA_CUDA_BWD_FUSE_DEPTH=1 MODA_CUDA_BWD_ATOMIC_DQ=1 \
               stage specall 300 $BUSTED --lua=luajit spec/cuda_attention_spec.lua ;;
    bench) PYTHONUNBUFFERED=1 TAIL=40 stage bench 540 python3 bench/cuda_attention.py ${BENCH_ARGS:-} ;;
    benchnd) PYTHONUNBUFFERED=1 TAIL=40 \
               stage benchnd 540 python3 bench/cuda_attention.py --nondet ${BENCH_ARGS:-} ;;
    benchidle) PYTHONUNBUFFERED=1 TAIL=40 \
               stage benchidle 540 python3 bench/cuda_attention.py --nondet --idle-start ${BENCH_ARGS:-} ;;
    ncu) # one launch of the kernels matching $NCU_KERNEL (default: the dQ kernel) inside the
         # benchmark at shape $NCU_SHAPE: speed of light, memory, warp stalls, occupancy
         # ($NCU_SECTIONS: more --section names, e.g. "ComputeWorkloadAnalysis InstructionStats")
         secs=(); for s in SpeedOfLight MemoryWorkloadAnalysis WarpStateStats Occupancy LaunchStats ${NCU_SECTIONS:-}; do
           secs+=(--section "$s"); done
         TAIL=${NCU_TAIL:-80} stage ncu 300 ncu --clock-control none -k "regex:${NCU_KERNEL:-bwd_dq}" -c "${NCU_COUNT:-1}" \
           "${secs[@]}" python3 bench/cuda_attention.py --ours-only --only "${NCU_SHAPE:-DeiT-Tiny-64}" ;;
    ncusrc) # the same launch with PC sampling: the top stall locations in the SASS
         stage ncusrc_prof 300 ncu --clock-control none -k "regex:${NCU_KERNEL:-bwd_dq}" -c 1 --section SourceCounters \
           --section WarpStateStats -f -o /tmp/ncusrc python3 bench/cuda_attention.py --ours-only --only "${NCU_SHAPE:-DeiT-Tiny-64}"
         ncu --import /tmp/ncusrc.ncu-rep --page source --print-source sass --csv > $LOGS/ncusrc.csv 2>&1
         TAIL=${NCU_TAIL:-60} stage ncusrc 60 python3 tools/ncu_top_stalls.py $LOGS/ncusrc.csv ${NCU_TOP:-50} ;;
    copysms) TAIL=60 stage copysms 150 bash -c "$(bench_bin copy_sms)" ;;
    dqred) TAIL=30 stage dqred 150 bash -c "$(bench_bin dq_reduce)" ;;
    ab) for rep in 1 2; do
          for env in ${AB_ENVS:--}; do
            e=; [ "$env" != - ] && e=${env//,/ }  # "A=1,B=2": two variables for one run
            echo "=== $env (round $rep)" >> $LOGS/ab.txt
            PYTHONUNBUFFERED=1 TAIL=0 stage "ab_${rep}_${env//[^A-Za-z0-9_]/_}" 150 env $e python3 bench/cuda_attention.py \
              --profile --ours-only ${BENCH_ARGS:-}
            grep -E "^--|^paper|^DeiT|^LM" $LOGS/ab_${rep}_${env//[^A-Za-z0-9_]/_}.log | sort -u | cut -c1-300 | tee -a $LOGS/ab.txt
          done
        done
        # the rounds as one table per shape, ratios against the first variant
        python3 tools/ab_summary.py $LOGS/ab.txt | tee $LOGS/ab_summary.txt ;;
    *) echo "device_run: unknown stage $st" ;;
  esac
done
echo; echo "== summary"; cat $SUMMARY
tar -cJf "$OUTDIR/logs.tar.xz" -C $LOGS .
