#!/bin/bash
# cuda/run_checks.sh: build the CUDA kernels with the standalone checker and run it (device machine).
# Usage: cuda/run_checks.sh [quick|full] [bench] [sanitize]
#        cuda/run_checks.sh build   (build the checkers (attn, wgmma, tma) into /tmp/moda_check_obj and run nothing)
#        cuda/run_checks.sh v6 | v6san | v6bench  (session-4 work: the checker grids on the default
#        path, with the wgmma kernels forced and on the mma.sync forward's depth ring |
#        compute-sanitizer | mma.sync vs wgmma forward timing)
#        (ONLY=<regex>: only the steps whose names match)
#        cuda/run_checks.sh wgmma [diag] [sanitize]   (the sm_90a wgmma helpers alone:
#        cuda/tests/wgmma_check.cu: S = Q K^T, O = P V (RS) and dQ = dS K (SS) vs a float64 reference;
#        diag: also run the alternative (lbo, sbo) encodings on passing cases; sanitize: then
#        again under compute-sanitizer memcheck; exit status = the checker's; < 1 minute)
#        cuda/run_checks.sh tma [sanitize]   (cuda/tests/tma_check.cu: TMA boxes of make_rows_tensor_map
#        vs load_rows_sw128_async vs the host's sw128 layout, mbarrier phases, and the synchronisation
#        skeleton of fwd_wgmma_ws_kernel; links attn_fwd_wgmma.o + attn_fwd_mma.o; sanitize: then
#        again under compute-sanitizer memcheck; log $OUT/tma_check.log; exit status = the checker's)
# Writes logs under $OUT (device tool) or /tmp/moda_out.
set -u
MODE=${1:-quick}; BENCH=${2:-}; SAN=${3:-}
OUTDIR=${OUT:-/tmp/moda_out}; mkdir -p "$OUTDIR"
OBJ=/tmp/moda_check_obj; mkdir -p $OBJ
ARCH=${CHECK_ARCH:--gencode arch=compute_90a,code=sm_90a}
FLAGS="-O3 -std=c++17 -Xcompiler -fPIC -I c -I cuda $ARCH --expt-relaxed-constexpr -lineinfo"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader 2>/dev/null
build_wgmma_check() {
  nvcc -O2 -std=c++17 -I cuda $ARCH -lineinfo -Xptxas -v cuda/tests/wgmma_check.cu -o $OBJ/wgmma_check \
      > $OBJ/wgmma_check.build.log 2>&1 || { cat $OBJ/wgmma_check.build.log; return 1; }
}
# tma_check: its object and log in $OBJ/tma/ (the attn_check link takes $OBJ/*.o); it links the two
# library objects that hold make_rows_tensor_map and what it calls (built here unless $1 = reuse).
build_tma_check() {
  mkdir -p $OBJ/tma
  if [ "${1:-}" != reuse ]; then
    local pids=() f p rc=0
    for f in attn_fwd_wgmma attn_fwd_mma; do
      nvcc $FLAGS -Xptxas -v -c cuda/$f.cu -o $OBJ/$f.o > $OBJ/$f.log 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait $p || rc=1; done
    if [ $rc != 0 ]; then cat $OBJ/attn_fwd_wgmma.log $OBJ/attn_fwd_mma.log | grep -B2 -A2 error; return 1; fi
  fi
  { nvcc $FLAGS -Xptxas -v -c cuda/tests/tma_check.cu -o $OBJ/tma/tma_check.o &&
    nvcc -o $OBJ/tma_check $OBJ/tma/tma_check.o $OBJ/attn_fwd_wgmma.o $OBJ/attn_fwd_mma.o -lcudart; } \
      > $OBJ/tma/tma_check.build.log 2>&1 || { cat $OBJ/tma/tma_check.build.log; return 1; }
}
if [ "$MODE" = tma ]; then
  TMA_SAN=; for a in $BENCH $SAN; do [ "$a" = sanitize ] && TMA_SAN=1; done
  if [ -n "${REUSE_BUILD:-}" ] && [ -x $OBJ/tma_check ]; then echo "(REUSE_BUILD: tma_check)"
  else build_tma_check || exit 1; fi
  grep -A3 "Compiling entry function" $OBJ/tma/tma_check.build.log | grep -E "Compiling|registers|spill" \
    | sed 's/.*entry function//' > "$OUTDIR/tma_ptxas.txt"
  timeout 300 $OBJ/tma_check 2>&1 | tee "$OUTDIR/tma_check.log"; rc=${PIPESTATUS[0]}
  if [ -n "$TMA_SAN" ]; then
    timeout 300 compute-sanitizer --tool memcheck $OBJ/tma_check > "$OUTDIR/tma_memcheck.log" 2>&1
    echo "memcheck rc=$?: $(grep -E '^tma_check:' "$OUTDIR/tma_memcheck.log" | tail -1) | $(grep 'ERROR SUMMARY' "$OUTDIR/tma_memcheck.log" | tail -1)"
  fi
  exit $rc
fi
if [ "$MODE" = build ]; then
  # build both checkers into $OBJ without running them (on a machine with nvcc but no GPU), so
  # a device call can carry them: tar -C /tmp -cJf X.tar.xz moda_check_obj, then REUSE_BUILD=1
  build_wgmma_check || exit 1
fi
if [ "$MODE" = wgmma ]; then
  WG_DIAG=; WG_SAN=
  for a in $BENCH $SAN; do [ "$a" = diag ] && WG_DIAG=diag; [ "$a" = sanitize ] && WG_SAN=1; done
  if [ -n "${REUSE_BUILD:-}" ] && [ -x $OBJ/wgmma_check ]; then echo "(REUSE_BUILD: wgmma_check)"
  else build_wgmma_check || exit 1; fi
  grep -iE "warning|Performance Loss|spill" $OBJ/wgmma_check.build.log | sort -u | tee "$OUTDIR/wgmma_ptxas.txt"
  $OBJ/wgmma_check $WG_DIAG 2>&1 | tee "$OUTDIR/wgmma_check.log"; rc=${PIPESTATUS[0]}
  if [ -n "$WG_SAN" ]; then
    timeout 300 compute-sanitizer --tool memcheck $OBJ/wgmma_check > "$OUTDIR/wgmma_memcheck.log" 2>&1
    echo "memcheck rc=$?: $(grep -E '^wgmma_check:' "$OUTDIR/wgmma_memcheck.log" | tail -1) | $(grep 'ERROR SUMMARY' "$OUTDIR/wgmma_memcheck.log" | tail -1)"
  fi
  exit $rc
fi
if [ -n "${REUSE_BUILD:-}" ] && [ -x $OBJ/attn_check ]; then
  echo "(REUSE_BUILD: the checker built by the previous call)"
else
pids=()
for f in cuda/*.cu cuda/tests/attn_check.cu; do
  nvcc $FLAGS -Xptxas -v -c "$f" -o $OBJ/$(basename "$f" .cu).o > $OBJ/$(basename "$f" .cu).log 2>&1 &
  pids+=($!)
done
rc=0; for p in "${pids[@]}"; do wait $p || rc=1; done
if [ $rc != 0 ]; then cat $OBJ/*.log | grep -B2 -A2 error; exit 1; fi
grep -h -A3 "Compiling entry function.*fwd_mma" $OBJ/attn_fwd_mma.log | grep -E "registers|spill" > "$OUTDIR/ptxas.txt"
rm -f $OBJ/attn_check
nvcc -o $OBJ/attn_check $OBJ/*.o -lcudart || exit 1
fi
[ "$MODE" = build ] && { build_tma_check reuse || exit 1; ls -la $OBJ/attn_check $OBJ/wgmma_check $OBJ/tma_check; exit 0; }
step() {  # step NAME ENV... -- ARGS: run the checker, keep its log ($OUTDIR/dr_NAME.log), one line in $SUM
  local name=$1; shift; local envs=(); while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then return; fi  # ONLY=regex: a subset of the steps
  local log="$OUTDIR/dr_${name}.log"
  # a hung kernel (an experimental switch's barrier protocol) costs STEP_TIMEOUT, not the call
  timeout "${STEP_TIMEOUT:-180}" env "${envs[@]}" $OBJ/attn_check "$@" > "$log" 2>&1; local rc=$?
  [ $rc = 124 ] && echo "TIMEOUT after ${STEP_TIMEOUT:-180}s (hang?)" >> "$log"
  local line; line=$(grep -E "^[0-9]+ cases" "$log" | tail -1)
  printf "%-28s rc=%d  %s  %s\n" "$name" $rc "${line:-NO RESULT (see $log)}" "$(grep -c FAIL "$log") FAIL lines" | tee -a "$SUM"
}
if [ "$MODE" = v6 ] || [ "$MODE" = v6san ] || [ "$MODE" = v6bench ]; then
  # Session-4 work (written without device time), in three calls of < 10 minutes each:
  #   v6:    the default path, the mma.sync forward's depth ring (MT = 2, no L2 hints), then
  #          the wgmma kernels and the fused depth gradients through the checker grids
  #          (MODA_CUDA_WGMMA=2: every shape they can run; MODA_CUDA_WGMMA_BWD splits them apart);
  #   v6san: compute-sanitizer on small cases: the wgmma forward, the mma.sync forward (MT 1, 2)
  #          and the backward options;
  #   v6bench: the A/B timing tables (mma.sync vs wgmma forward; wgmma vs the warp-specialised one).
  # Run `cuda/run_checks.sh wgmma diag` first. REUSE_BUILD=1 skips the rebuild on a warm machine.
  grep -h -A3 "Compiling entry function.*wgmma" $OBJ/attn_fwd_wgmma.log $OBJ/attn_bwd_mma.log 2>/dev/null \
    | grep -E "Compiling|registers|spill" | sed 's/.*entry function//' > "$OUTDIR/ptxas_wgmma.txt"
  grep -hiE "Performance Loss|serializ" $OBJ/*.log | sort -u | tee -a "$OUTDIR/ptxas_wgmma.txt"
  SUM="$OUTDIR/${MODE}_summary.txt"; : > "$SUM"
  if [ "$MODE" = v6 ]; then
    step quick_default     -- quick
    step depth_default     -- depth
    step decode_default    -- decode
    step bwd_default       -- bwd
    step depth_mma_mt2     MODA_CUDA_WGMMA=0 MODA_CUDA_FWD_MT=2 -- depth
    step depth_nohint      MODA_CUDA_FWD_FLAGS=0 -- depth
    step quick_wgmma_fwd   MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=1 -- quick
    step depth_wgmma_fwd   MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=1 -- depth
    step quick_wgmma_ws    MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=33 -- quick
    step depth_wgmma_ws    MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=33 -- depth
    step quick_wgmma_ws3   MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=41 -- quick
    step depth_wgmma_ws3   MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=41 -- depth
    # flag bit 7: every other CTA runs its sequence phase first and merges its depth phase after
    step quick_wgmma_ws_alt  MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=161 -- quick
    step depth_wgmma_ws_alt  MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=161 -- depth
    step quick_wgmma_ws3_alt MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=169 -- quick
    step depth_wgmma_ws3_alt MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=169 -- depth
    # the phases staggered by warpgroup in ws3 CTAs of at most two key blocks (flag bit 8)
    step quick_wgmma_ws3_stagger MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=425 -- quick
    step depth_wgmma_ws3_stagger MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=425 -- depth
    step quick_stagger MODA_CUDA_FWD_FLAGS=425 -- quick
    # the split forward (flag bit 12): a depth warpgroup beside two sequence warpgroups, merged by lse
    step quick_wgmma_split MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=4265 -- quick
    step depth_wgmma_split MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=4265 -- depth
    step quick_split MODA_CUDA_FWD_FLAGS=4265 -- quick
    # the depth rings fed by TMA (flag bit 13; 8361 = the default flags since session 20): ws3 (both
    # phase orders) and the split forward
    step quick_wgmma_ws3_tma MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=8361 -- quick
    step depth_wgmma_ws3_tma MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=8361 -- depth
    step quick_ws3_tma MODA_CUDA_FWD_FLAGS=8361 -- quick
    step quick_wgmma_split_tma MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=12457 -- quick
    step depth_wgmma_split_tma MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=12457 -- depth
    # bit 14: two-token TMA chunks where G < 8 (ws3 24745, split 28841)
    step quick_wgmma_ws3_tma2 MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=24745 -- quick
    step depth_wgmma_ws3_tma2 MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=24745 -- depth
    step quick_ws3_tma2 MODA_CUDA_FWD_FLAGS=24745 -- quick
    step depth_wgmma_split_tma2 MODA_CUDA_WGMMA=2 MODA_CUDA_WGMMA_BWD=0 MODA_CUDA_FWD_FLAGS=28841 -- depth
    step bwd_wgmma_dkv     MODA_CUDA_WGMMA_BWD=2 -- bwd
    step bwd_wgmma_dq      MODA_CUDA_WGMMA_BWD=3 -- bwd
    step bwd_atomic_dq     MODA_CUDA_WGMMA_BWD=2 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step bwd_ws_v8         MODA_CUDA_BWD_WS=1 -- bwd
    step bwd_no_ws         MODA_CUDA_BWD_WS=0 -- bwd
    # v10: the dK/dV kernel's 128-row steps (MODA_CUDA_BWD_WS=3), dQ by the kernel or by reductions,
    # and beside the concurrent depth kernel
    step bwd_ws128         MODA_CUDA_BWD_WS=3 -- bwd
    step bwd_ws128_nd      MODA_CUDA_BWD_WS=3 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step quick_ws128_nd    MODA_CUDA_BWD_WS=3 MODA_CUDA_BWD_ATOMIC_DQ=1 -- quick
    step bwd_ws128_conc    MODA_CUDA_BWD_WS=3 MODA_CUDA_BWD_DEPTH_SMS=8 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    # ... and with its dQ wgmmas queued behind dV/dK (MODA_CUDA_BWD_WS=4)
    step bwd_ws128o_nd     MODA_CUDA_BWD_WS=4 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step quick_ws128o_nd   MODA_CUDA_BWD_WS=4 MODA_CUDA_BWD_ATOMIC_DQ=1 -- quick
    # v11: the warp-specialised dQ kernel (MODA_CUDA_BWD_DQ_WS=1) wherever a dQ kernel runs (the
    # deterministic flow; ATOMIC_DQ=0 for every case), beside v9 or v10 without dQ, and concurrent
    step bwd_dqws          MODA_CUDA_BWD_DQ_WS=1 MODA_CUDA_BWD_ATOMIC_DQ=0 -- bwd
    step bwd_dqws_v10      MODA_CUDA_BWD_DQ_WS=1 MODA_CUDA_BWD_WS=3 MODA_CUDA_BWD_ATOMIC_DQ=0 -- bwd
    step quick_dqws_v10    MODA_CUDA_BWD_DQ_WS=1 MODA_CUDA_BWD_WS=3 MODA_CUDA_BWD_ATOMIC_DQ=0 -- quick
    step bwd_dqws_conc     MODA_CUDA_BWD_DQ_WS=1 MODA_CUDA_BWD_DEPTH_SMS=8 MODA_CUDA_BWD_ATOMIC_DQ=0 -- bwd
    step bwd_dqws_nopp     MODA_CUDA_BWD_PP=0 MODA_CUDA_BWD_ATOMIC_DQ=0 -- bwd
    # PingPong issue order of the consumer warpgroups in v10 without dQ too (MODA_CUDA_BWD_PP=3; v11 has it by default):
    # the defaults (split where long, deterministic), the split everywhere, and concurrent
    step bwd_pp            MODA_CUDA_BWD_PP=3 -- bwd
    step bwd_pp_split      MODA_CUDA_BWD_PP=3 MODA_CUDA_BWD_ATOMIC_DQ=0 -- bwd
    step quick_pp_split    MODA_CUDA_BWD_PP=3 MODA_CUDA_BWD_ATOMIC_DQ=0 -- quick
    step bwd_pp_conc       MODA_CUDA_BWD_PP=3 MODA_CUDA_BWD_DEPTH_SMS=8 MODA_CUDA_BWD_ATOMIC_DQ=0 -- bwd
    # the dQ kernel in 64-key halves, S/dP of the next half under this half's softmax (MODA_CUDA_BWD_DQ_WS=2)
    step bwd_dqws_pipe     MODA_CUDA_BWD_DQ_WS=2 MODA_CUDA_BWD_ATOMIC_DQ=0 -- bwd
    step quick_dqws_pipe   MODA_CUDA_BWD_DQ_WS=2 MODA_CUDA_BWD_ATOMIC_DQ=0 -- quick
    step bwd_ws_v8_atomic  MODA_CUDA_BWD_WS=1 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step quick_ws_v8_atomic MODA_CUDA_BWD_WS=1 MODA_CUDA_BWD_ATOMIC_DQ=1 -- quick
    step bwd_default_nd    MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step quick_default_nd  MODA_CUDA_BWD_ATOMIC_DQ=1 -- quick
    step bwd_ordered_dq    MODA_CUDA_BWD_ORDERED_DQ=1 -- bwd
    step quick_ordered_dq  MODA_CUDA_BWD_ORDERED_DQ=1 -- quick
    step bwd_depth_nosw    MODA_CUDA_BWD_DEPTH_SW=0 -- bwd
    step bwd_depth_conc    MODA_CUDA_BWD_DEPTH_SMS=8 -- bwd
    step bwd_depth_conc_nd MODA_CUDA_BWD_DEPTH_SMS=8 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step bwd_depth_conc_dqk MODA_CUDA_BWD_DEPTH_SMS=8 MODA_CUDA_BWD_ATOMIC_DQ=0 -- bwd
    # the token kernel in the concurrent backward (the TMA kernel takes both flows since session 20)
    step bwd_depth_tok_conc MODA_CUDA_BWD_DEPTH_TMA=0 MODA_CUDA_BWD_DEPTH_SMS=8 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step bwd_depth_nosw_nd MODA_CUDA_BWD_DEPTH_SW=0 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    # the TMA depth backward (attn_bwd_depth_tma.cu): everywhere it can run (=1, the default since
    # session 20: also in the concurrent backward), 4 and 8 consumer warps, deterministic or not; off (=0)
    step bwd_depth_tma      MODA_CUDA_BWD_DEPTH_TMA=1 -- bwd
    step bwd_depth_tma_nd   MODA_CUDA_BWD_DEPTH_TMA=1 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step bwd_depth_tma8     MODA_CUDA_BWD_DEPTH_TMA=8 -- bwd
    step bwd_depth_tma_conc MODA_CUDA_BWD_DEPTH_TMA=1 MODA_CUDA_BWD_DEPTH_SMS=8 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step bwd_depth_tma8_conc MODA_CUDA_BWD_DEPTH_TMA=8 MODA_CUDA_BWD_DEPTH_SMS=4 MODA_CUDA_BWD_ATOMIC_DQ=0 -- bwd
    step bwd_depth_tma_off  MODA_CUDA_BWD_DEPTH_TMA=0 -- bwd
    # stages of 128 rows (LM-64's tokens whole) and of 16 (many parts per unit, laps on 8 SMs)
    step bwd_depth_tma_rows128 MODA_CUDA_BWD_DEPTH_TMA=1 MODA_CUDA_BWD_DEPTH_TMA_ROWS=128 -- bwd
    step bwd_depth_tma_rows16_conc MODA_CUDA_BWD_DEPTH_TMA=1 MODA_CUDA_BWD_DEPTH_TMA_ROWS=16 MODA_CUDA_BWD_DEPTH_SMS=8 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    # its loads and stores with L2 evict_first, in the concurrent backward
    step bwd_depth_tma_l2_conc MODA_CUDA_BWD_DEPTH_TMA=1 MODA_CUDA_BWD_DEPTH_TMA_L2=3 MODA_CUDA_BWD_DEPTH_SMS=8 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    # the ws dK/dV kernel's q, dO loads with L2 evict_last (the default) in the concurrent
    # backward, and without the hint
    step bwd_seq_l2_conc MODA_CUDA_BWD_SEQ_L2=1 MODA_CUDA_BWD_DEPTH_SMS=8 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step bwd_seq_l2_off  MODA_CUDA_BWD_SEQ_L2=0 -- bwd
    # dQ's reductions 4 floats wide (the default; the ws dK/dV kernel, atomic dQ), and 2 wide
    step bwd_dq_red4     MODA_CUDA_BWD_DQ_RED4=1 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step bwd_dq_red4_v8  MODA_CUDA_BWD_DQ_RED4=1 MODA_CUDA_BWD_WS=1 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step bwd_dq_red2     MODA_CUDA_BWD_DQ_RED4=0 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step quick_depth_tma    MODA_CUDA_BWD_DEPTH_TMA=1 -- quick
    step bwd_no_depth_k    MODA_CUDA_BWD_DEPTH_KERNEL=0 -- bwd
    step bwd_no_depth_k_nd MODA_CUDA_BWD_DEPTH_KERNEL=0 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
    step bwd_depth_k_mma   MODA_CUDA_WGMMA=0 -- bwd
    step bwd_fuse_depth    MODA_CUDA_BWD_FUSE_DEPTH=1 -- bwd
    step quick_fuse_depth  MODA_CUDA_BWD_FUSE_DEPTH=1 -- quick
    step quick_wgmma_all   MODA_CUDA_WGMMA=2 MODA_CUDA_BWD_FUSE_DEPTH=1 MODA_CUDA_BWD_ATOMIC_DQ=1 -- quick
    step bwd_wgmma_all     MODA_CUDA_WGMMA=2 MODA_CUDA_BWD_FUSE_DEPTH=1 MODA_CUDA_BWD_ATOMIC_DQ=1 -- bwd
  elif [ "$MODE" = v6san ]; then
    san() {  # san NAME TOOL CASES ENV...: san_one, SAN_JOBS of them at once (racecheck is slow and
      # its small grids leave the card mostly idle, so parallel runs cost little wall time)
      if [ "${SAN_JOBS:-1}" -gt 1 ]; then
        while [ "$(jobs -rp | wc -l)" -ge "$SAN_JOBS" ]; do wait -n; done
        san_one "$@" &
      else san_one "$@"; fi
    }
    san_one() {  # san_one NAME TOOL CASES ENV...: one compute-sanitizer run, one summary line
      local name=$1 tool=$2 t=$3; shift 3
      if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then return; fi
      local log="$OUTDIR/v6_san_${name}_${tool}.log"
      env "$@" timeout "${SAN_LIMIT:-60}" compute-sanitizer --tool $tool $OBJ/attn_check $t > "$log" 2>&1
      printf "%-28s rc=%d  %s | %s\n" "${name}_${tool}" $? "$(grep -E '^[0-9]+ cases' "$log" | tail -1)" \
        "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)" | tee -a "$SUM"
    }
    for tool in memcheck racecheck; do
      # (SAN_LIMIT: seconds per run, default 60; racecheck of the ws backward kernels needs more)
      # the forwards: wgmma (flags 1), wgmma ws with two (33) and three (41) consumer warpgroups, both with the alternating phase order (161, 169: the cp.async depth ring), ws3 staggered (425), split (4265), the TMA-fed depth rings of split (12457) and ws3 (8361: the default flags since session 20), mma.sync with 16 and 32 rows per warp
      san fwd_wgmma $tool depthsan MODA_CUDA_WGMMA=2 MODA_CUDA_FWD_FLAGS=1
      san fwd_wgmma_ws $tool depthsan MODA_CUDA_WGMMA=2 MODA_CUDA_FWD_FLAGS=33
      san fwd_wgmma_ws3 $tool depthsan MODA_CUDA_WGMMA=2 MODA_CUDA_FWD_FLAGS=41
      san fwd_wgmma_ws_alt $tool depthsan MODA_CUDA_WGMMA=2 MODA_CUDA_FWD_FLAGS=161
      san fwd_wgmma_ws3_alt $tool depthsan MODA_CUDA_WGMMA=2 MODA_CUDA_FWD_FLAGS=169
      san fwd_wgmma_ws3_stagger $tool depthsan MODA_CUDA_WGMMA=2 MODA_CUDA_FWD_FLAGS=425
      san fwd_wgmma_split $tool depthsan MODA_CUDA_WGMMA=2 MODA_CUDA_FWD_FLAGS=4265
      san fwd_wgmma_split_tma $tool depthsan MODA_CUDA_WGMMA=2 MODA_CUDA_FWD_FLAGS=12457
      san fwd_wgmma_ws3_tma $tool depthsan MODA_CUDA_WGMMA=2 MODA_CUDA_FWD_FLAGS=8361
      san fwd_wgmma_ws3_tma2 $tool depthsan MODA_CUDA_WGMMA=2 MODA_CUDA_FWD_FLAGS=24745
      for mt in 1 2; do san fwd_mma_mt$mt $tool depthsan MODA_CUDA_WGMMA=0 MODA_CUDA_FWD_MT=$mt; done
      san bwd_all $tool san MODA_CUDA_WGMMA=2 MODA_CUDA_BWD_FUSE_DEPTH=1 MODA_CUDA_BWD_ATOMIC_DQ=1
      san bwd_ws_v8_atomic $tool san MODA_CUDA_WGMMA=2 MODA_CUDA_BWD_WS=1 MODA_CUDA_BWD_ATOMIC_DQ=1
      san bwd_ws_v8_det $tool san MODA_CUDA_WGMMA=2 MODA_CUDA_BWD_WS=1 MODA_CUDA_BWD_ATOMIC_DQ=0
      san bwd_ordered_dq $tool san MODA_CUDA_WGMMA=2 MODA_CUDA_BWD_ORDERED_DQ=1
      san bwd_default_nd $tool san MODA_CUDA_BWD_ATOMIC_DQ=1
      san bwd_default_det $tool san MODA_CUDA_BWD_ATOMIC_DQ=0
      san bwd_depth_nosw $tool san MODA_CUDA_BWD_DEPTH_SW=0 MODA_CUDA_BWD_ATOMIC_DQ=1
      san bwd_depth_conc $tool san MODA_CUDA_BWD_DEPTH_TMA=0 MODA_CUDA_BWD_DEPTH_SMS=4 MODA_CUDA_BWD_ATOMIC_DQ=1
      san bwd_depth_tma $tool san MODA_CUDA_BWD_DEPTH_TMA=1 MODA_CUDA_BWD_ATOMIC_DQ=0
      san bwd_depth_tma_conc $tool san MODA_CUDA_BWD_DEPTH_TMA=1 MODA_CUDA_BWD_DEPTH_SMS=4 MODA_CUDA_BWD_ATOMIC_DQ=1
      san bwd_dq_red4 $tool san MODA_CUDA_BWD_DQ_RED4=1 MODA_CUDA_BWD_ATOMIC_DQ=1
      san bwd_ws128_nd $tool san MODA_CUDA_BWD_WS=3 MODA_CUDA_BWD_ATOMIC_DQ=1
      san bwd_ws128_det $tool san MODA_CUDA_BWD_WS=3 MODA_CUDA_BWD_ATOMIC_DQ=0
      san bwd_ws128o_nd $tool san MODA_CUDA_BWD_WS=4 MODA_CUDA_BWD_ATOMIC_DQ=1
      san bwd_dqws_v10 $tool san MODA_CUDA_BWD_DQ_WS=1 MODA_CUDA_BWD_WS=3 MODA_CUDA_BWD_ATOMIC_DQ=0
      san bwd_pp_split $tool san MODA_CUDA_BWD_PP=3 MODA_CUDA_BWD_ATOMIC_DQ=0
      san bwd_dqws_pipe $tool san MODA_CUDA_BWD_DQ_WS=2 MODA_CUDA_BWD_ATOMIC_DQ=0
      san decode $tool decsmall  # the decode path's split + combine kernels
    done
    wait
  else
    MODA_CUDA_WGMMA=2 timeout 500 $OBJ/attn_check wgmmabench > "$OUTDIR/v6_bench.log" 2>&1 || echo "wgmmabench rc=$?" | tee -a "$SUM"
    grep -A12 "^forward, bf16" "$OUTDIR/v6_bench.log"
  fi
  echo; echo "== $MODE summary (every rc 0, every '0 failed', sanitizer 0 errors / 0 hazards) =="; cat "$SUM"
  exit 0
fi
if [ "$SAN" = sanitize ]; then
  compute-sanitizer --tool memcheck $OBJ/attn_check quick 2>&1 | tail -5 | tee "$OUTDIR/memcheck.log"
  compute-sanitizer --tool racecheck $OBJ/attn_check quick 2>&1 | tail -5 | tee "$OUTDIR/racecheck.log"
  # the decode path (attn_decode.cu): split + combine kernels on its small cases
  compute-sanitizer --tool memcheck $OBJ/attn_check decsmall 2>&1 | tail -2 | tee -a "$OUTDIR/memcheck.log"
  compute-sanitizer --tool racecheck $OBJ/attn_check decsmall 2>&1 | tail -2 | tee -a "$OUTDIR/racecheck.log"
  # the tensor-core backward (attn_bwd_mma.cu), both sequence dK/dV variants, on small cases
  for v in 1 3; do
    MODA_CUDA_BWD_SEQ_MINB=$v compute-sanitizer --tool memcheck $OBJ/attn_check san 2>&1 | tail -2 | tee -a "$OUTDIR/memcheck.log"
    MODA_CUDA_BWD_SEQ_MINB=$v compute-sanitizer --tool racecheck $OBJ/attn_check san 2>&1 | tail -2 | tee -a "$OUTDIR/racecheck.log"
  done
fi
# the backward grid with the sequence dK/dV variant the size rule does not pick at these sizes
echo "== backward grid, 3-CTA/SM sequence dK/dV variant forced (MODA_CUDA_BWD_SEQ_MINB=3) ==" | tee "$OUTDIR/check_bwd3.log"
MODA_CUDA_BWD_SEQ_MINB=3 $OBJ/attn_check bwd 2>&1 | tee -a "$OUTDIR/check_bwd3.log" | grep -E "FAIL|DIFF|cases"
echo "== forward with 32 rows per warp forced (MODA_CUDA_FWD_MT=2) ==" | tee "$OUTDIR/check_mt2.log"
MODA_CUDA_FWD_MT=2 $OBJ/attn_check "$MODE" 2>&1 | tee -a "$OUTDIR/check_mt2.log" | grep -E "FAIL|cases"
echo "== default kernel choice ==" 
$OBJ/attn_check "$MODE" "$BENCH" 2>&1 | tee "$OUTDIR/check.log"
