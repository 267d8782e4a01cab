#!/bin/bash
# tools/sass_hist.sh FILE.cu KERNEL_REGEX [FROM TO]: compile one CUDA source for sm_90a, take the
# SASS of the first kernel whose mangled name matches KERNEL_REGEX and print its opcode histogram
# (of lines FROM..TO of that kernel's listing, e.g. one loop between two branches; the listing is
# left in /tmp/sass_hist.sass). How session 8 found exp2f's denormal wrapping, per-element mask
# code and integer divisions in the hot loops (docs/CUDA_NOTES.md, "Session 8").
# Needs cuobjdump: the device machine has it; elsewhere
#   pip download --no-deps nvidia-cuda-cuobjdump -d /tmp/nvd && unzip -qo /tmp/nvd/*.whl -d /tmp/nvd/x
# and put /tmp/nvd/x/nvidia/cu13/bin on PATH.
set -eu
cd "$(dirname "$0")/.."
src=$1 re=$2 from=${3:-1} to=${4:-1000000}
command -v cuobjdump >/dev/null || { echo "sass_hist: cuobjdump not on PATH (see the header)" >&2; exit 1; }
nvcc -O3 -std=c++17 -I c -I cuda -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr \
  -cubin -o /tmp/sass_hist.cubin "$src"
cuobjdump -sass /tmp/sass_hist.cubin |
  awk -v re="$re" '/Function :/ { if (f) exit; if ($0 ~ re) { f = 1; print; next } } f' |
  grep -v '^ *\/\* 0x' > /tmp/sass_hist.sass
[ -s /tmp/sass_hist.sass ] || { echo "sass_hist: no kernel matches $re" >&2; exit 1; }
head -1 /tmp/sass_hist.sass
sed -n "${from},${to}p" /tmp/sass_hist.sass |
  sed 's/^ *\/\*[0-9a-f]*\*\/ *//' |
  awk '/^[@A-Z]/ { op = $1; if (op ~ /^@/) op = $2; sub(/\..*/, "", op); sub(/;$/, "", op); c[op]++; n++ }
       END { for (o in c) printf "%6d %s\n", c[o], o; printf "%6d TOTAL\n", n }' | sort -rn | head -30
