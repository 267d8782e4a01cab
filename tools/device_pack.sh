#!/bin/bash
# tools/device_pack.sh: prepare what a device-machine call carries (the GPU machine has luajit
# and busted only through .deb, and no OpenBLAS): builds the CPU and CUDA libraries here, copies
# the OpenBLAS runtime into .devlibs/, packs build/*.so + .devlibs into .devcarry/pack.tar.xz, and
# fetches the Lua .debs once; also packs the prebuilt checkers (cuda/run_checks.sh build). All three folders are git-ignored. Then, on the device:
#   run(carry=[".deb", ".devcarry", ".thirdparty"], command=
#     'source .deb/unpack.sh; tar -xJf .devcarry/pack.tar.xz && export LD_LIBRARY_PATH=$PWD/.devlibs:$LD_LIBRARY_PATH; ...')
# (.thirdparty: the authors' Triton kernel for bench/cuda_attention.py, see docs/CUDA_NOTES.md.)
set -eu
cd "$(dirname "$0")/.."
make -j"$(nproc)" >/dev/null
make cuda -j"$(nproc)" >/dev/null
mkdir -p .devlibs .devcarry
for l in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
  src=$(ldconfig -p | awk -v l="$l" '$1 == l { print $NF; exit }')
  [ -n "$src" ] || { echo "device_pack: $l not found (make deps)" >&2; exit 1; }
  cp -L "$src" .devlibs/
done
tar -cJf .devcarry/pack.tar.xz build/libmoda.so build/libmoda_cuda.so .devlibs
# the standalone checkers (sm_90a), so the device spends no time compiling them; rebuilt when any
# CUDA source is newer; tools/device_run.sh unpacks them and sets REUSE_BUILD=1
CHK=/tmp/moda_check_obj
if [ ! -x $CHK/attn_check ] || [ ! -x $CHK/wgmma_check ] || [ ! -x $CHK/tma_check ] || \
   [ -n "$(find cuda -newer $CHK/attn_check \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' \))" ]; then
  bash cuda/run_checks.sh build >/dev/null || { echo "device_pack: checker build failed" >&2; exit 1; }
fi
# the standalone benchmarks of device_run's stages copysms and dqred, prebuilt the same way
for b in copy_sms dq_reduce; do
  if [ ! -x $CHK/$b ] || [ bench/$b.cu -nt $CHK/$b ] || [ bench/bench_cuda.h -nt $CHK/$b ]; then
    nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a bench/$b.cu -o $CHK/$b || { echo "device_pack: $b build failed" >&2; exit 1; }
  fi
done
tar -cJf .devcarry/checkobj.tar.xz -C /tmp moda_check_obj/attn_check moda_check_obj/wgmma_check moda_check_obj/tma_check \
    moda_check_obj/copy_sms moda_check_obj/dq_reduce $(cd /tmp && ls moda_check_obj/*.log)
# AB_REFS="ref1 ref2 ...": each git ref's libraries too, built (sm_90a only) in a worktree under
# /tmp/moda_ab_wt/<ref>, packed as <ref>/libmoda*.so into .devcarry/ab.tar.xz for the A/B stage of
# tools/device_run.sh (which unpacks them to /tmp/ab/<ref>/)
rm -f .devcarry/ab.tar.xz
if [ -n "${AB_REFS:-}" ]; then
  stage=/tmp/moda_ab_libs; rm -rf $stage; mkdir -p $stage
  for ref in $AB_REFS; do
    wt=/tmp/moda_ab_wt/${ref//\//_}
    [ -d "$wt" ] || git worktree add -f --detach "$wt" "$ref" >/dev/null
    git -C "$wt" checkout -q --detach "$ref"
    make -C "$wt" -j"$(nproc)" >/dev/null
    make -C "$wt" cuda CUDA_ARCH="-gencode arch=compute_90a,code=sm_90a" >/dev/null
    mkdir -p "$stage/${ref//\//_}" && cp "$wt"/build/libmoda.so "$wt"/build/libmoda_cuda.so "$stage/${ref//\//_}/"
  done
  tar -cJf .devcarry/ab.tar.xz -C $stage .
fi
[ -f .deb/unpack.sh ] || bash ../shared/device/fetch-lua-debs.sh
ls -la .devcarry/pack.tar.xz
