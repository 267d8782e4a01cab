#!/bin/bash
# tools/device_pack.sh: prepare what a device-machine call carries (the GPU machine has luajit
# and busted only through .deb, and no OpenBLAS): builds the CPU and CUDA libraries here, copies
# the OpenBLAS runtime into .devlibs/, packs build/*.so + .devlibs into .devcarry/pack.tar.xz, and
# fetches the Lua .debs once. All three folders are git-ignored. Then, on the device:
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
[ -f .deb/unpack.sh ] || bash ../shared/device/fetch-lua-debs.sh
ls -la .devcarry/pack.tar.xz
