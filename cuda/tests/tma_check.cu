// tma_check.cu: standalone device check of cuda/tma_helpers.cuh and make_rows_tensor_map
// (cuda/attn_fwd_wgmma.cu, host side) exactly as fwd_wgmma_ws_kernel uses them:
//   box cases: random bf16 K tensors [B = 2, S, H = 3, d] (d = 64, 128) in three layouts
//     contig     d contiguous, [B, S, H, d] packed (rows past S of batch 0 are batch 1's rows)
//     padded     head stride d + 16, row stride H*(d + 16) + 16, batch stride (S + 40) * row + 64
//                elements (the rows past S and the padding hold random data too)
//     headmajor  memory [B, H, S + 8, d] viewed as [B, S, H, d] (strides not nested: head > row)
//   with S = 300 (last block partial: 44 rows), 5 (one partial block) and 128 (exact); box
//   rows 128 (the kernel's BN) and 64. For every (blk, head h, batch b) one CTA:
//     TMA:      one thread inits an mbarrier, arrive.expect_tx(box bytes), tma_load_4d of the
//               box (d = 128: two boxes, c0 = 0 and 64, atom columns 0 and 1), all threads
//               mbar_wait(parity 0), tile copied out; then a second phase on the same mbarrier
//               (the next (blk, h, b), parity 1) into the same (re-poisoned) tile;
//     cp.async: load_rows_sw128_async<d, bf16>(tile, rows, ...) of the same rows (rows >= S:
//               nullptr = zero), tile copied out;
//   both compared byte for byte with a host expectation built with the sw128_offset formula
//   (rows past S = 0) and with each other. Smem tiles are poisoned (0xFF) before every load,
//   output buffers too.
//   encode cases: make_rows_tensor_map must refuse a stride that is not a multiple of 16 bytes,
//     a base that is not 16-byte aligned, d = 96 and 257-row boxes, and accept d = 128 with
//     256-row boxes.
//   packed cases: make_packed_rows_tensor_map's 5-d map (d, i < G, t, g, b) over a padded
//     q [2, T = 37, 2G heads, d] (d = 64, 128; G = 1, 2, 8, 16; and G = 64 with T = 3): every
//     64-row tile of packed rows R = t*G + i of both KV heads and batches by tma_load_5d, against
//     the host's packed order in the sw128 layout (tokens past T = 0). For the v8 backward plan.
//   ws_pipeline cases: the synchronisation skeleton of fwd_wgmma_ws_kernel (384 threads,
//     __launch_bounds__(384, 1), setmaxnreg 24 / 240, producer warps returning early, full[2]
//     (count 1 + 2 boxes of tx bytes) / empty[2] (count 8, lane 0 of each consumer warp) with
//     the kernel's parity arithmetic, named barriers 1, 2, 3 with 256 threads and the same
//     ping-pong arrive pattern), with the GEMMs replaced by a copy of the stage's K tile to
//     global memory and a K == V check; S issue order recorded by an atomic ticket taken
//     between the named-barrier sync and the hand-over (must alternate 0, 1, 0, 1, ...);
//     optional delays in the producer or in one consumer warpgroup. A hang is reported after
//     10 s (host watchdog) and ends the run.
// Build (device machine or any machine with nvcc), from the repository root:
//   cuda/run_checks.sh tma [sanitize]     (or `cuda/run_checks.sh build`, which builds it too)
//   by hand:
//   F="-O3 -std=c++17 -I c -I cuda -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr"
//   nvcc $F -c cuda/attn_fwd_wgmma.cu -o /tmp/w.o; nvcc $F -c cuda/attn_fwd_mma.cu -o /tmp/m.o
//   nvcc $F -c cuda/tests/tma_check.cu -o /tmp/t.o; nvcc -o tma_check /tmp/t.o /tmp/w.o /tmp/m.o -lcudart
//   make_rows_tensor_map lives in attn_fwd_wgmma.o, which needs attn_fwd_mma.o (fwd_mma_supported);
//   this file defines the two outside symbols those two objects use (moda_set_error,
//   moda_cuda::current_cc), so no other library object is linked.
// Exit status: 0 when every case passes (or the device is not sm_90: skipped), 1 otherwise.
#include <cuda.h>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <functional>
#include <string>
#include <vector>

#include "../mma_helpers.cuh"
#include "../tma_helpers.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "tma_check must be built for sm_90a only: -gencode arch=compute_90a,code=sm_90a"
#endif

// ---- the two outside symbols attn_fwd_wgmma.o / attn_fwd_mma.o reference ----
static char g_err[1024];
extern "C" int moda_set_error(int status, const char *fmt, ...) {
  va_list ap; va_start(ap, fmt); vsnprintf(g_err, sizeof g_err, fmt, ap); va_end(ap);
  return status;
}
namespace moda_cuda {
int current_cc() {  // as backend.cu's (not linked: it would pull in the whole library)
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) return 0;
  return major * 10 + minor;
}
}  // namespace moda_cuda

using namespace moda_cuda;
typedef __nv_bfloat16 bf16;

// ------------------------------------------------------------------------------------------
// device side
// ------------------------------------------------------------------------------------------

struct BoxCoord { int blk, h, b; };

__device__ __forceinline__ uint8_t *align1024(uint8_t *p) {
  return (uint8_t *)(((uintptr_t)p + 1023) & ~(uintptr_t)1023);
}
__device__ __forceinline__ void poison_tile(uint8_t *tile, int bytes) {
  for (int i = threadIdx.x; i < bytes / 16; i += blockDim.x)
    reinterpret_cast<uint4 *>(tile)[i] = make_uint4(~0u, ~0u, ~0u, ~0u);
}
__device__ __forceinline__ void copy_tile_out(uint8_t *dst, const uint8_t *tile, int bytes) {
  for (int i = threadIdx.x; i < bytes / 16; i += blockDim.x)
    reinterpret_cast<uint4 *>(dst)[i] = reinterpret_cast<const uint4 *>(tile)[i];
}

// One CTA per coordinate; two mbarrier phases: coords[i] (parity 0), then coords[(i + 1) % n]
// (parity 1). nbox column boxes of 64 elements (c0 = 64 * box), rows * 128 bytes each, into atom
// columns of a tile of `rows` rows. out: [ncoords][2][nbox * rows * 128] bytes.
__global__ void __launch_bounds__(128) tma_box_kernel(const __grid_constant__ CUtensorMap map, const BoxCoord *coords,
                                                      int ncoords, int rows, int nbox, uint8_t *out) {
  extern __shared__ uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t bar;
  uint8_t *tile = align1024(smem_raw);
  const int bytes = nbox * rows * 128;
  if (threadIdx.x == 0) {
    mbar_init(&bar, 1);
    mbar_fence_init();
  }
  for (int round = 0; round < 2; ++round) {
    poison_tile(tile, bytes);
    fence_proxy_async_smem();  // the generic stores (and last round's reads) before the TMA writes
    __syncthreads();           // (round 0: also publishes the mbarrier init)
    const BoxCoord c = coords[(blockIdx.x + round) % ncoords];
    if (threadIdx.x == 0) {
      tma_prefetch_map(&map);
      mbar_arrive_expect_tx(&bar, (uint32_t)bytes);  // full boxes, rows past S included
      for (int i = 0; i < nbox; ++i) tma_load_4d(tile + i * rows * 128, &map, &bar, 64 * i, c.h, c.blk * rows, c.b);
    }
    mbar_wait(&bar, (uint32_t)(round & 1));
    copy_tile_out(out + ((size_t)blockIdx.x * 2 + round) * bytes, tile, bytes);
    __syncthreads();
  }
}

// Packed query rows (make_packed_rows_tensor_map, 5-d): one CTA per (tile, g, b) coordinate, one
// phase; nbox column boxes of 64 elements. out: [ncoords][nbox * 64 * 128] bytes.
struct PackedCoord { int tile, g, b; };
__global__ void __launch_bounds__(128) tma_packed_kernel(const __grid_constant__ CUtensorMap map, const PackedCoord *coords,
                                                         int G, int nbox, uint8_t *out) {
  extern __shared__ uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t bar;
  uint8_t *tile = align1024(smem_raw);
  const int bytes = nbox * 64 * 128;
  if (threadIdx.x == 0) {
    mbar_init(&bar, 1);
    mbar_fence_init();
  }
  poison_tile(tile, bytes);
  fence_proxy_async_smem();
  __syncthreads();
  const PackedCoord c = coords[blockIdx.x];
  if (threadIdx.x == 0) {
    mbar_arrive_expect_tx(&bar, (uint32_t)bytes);
    // rows tile*64 .. : tokens tile*64/G .., all G heads of KV head g
    for (int i = 0; i < nbox; ++i) tma_load_5d(tile + i * 64 * 128, &map, &bar, 64 * i, 0, c.tile * 64 / G, c.g, c.b);
  }
  mbar_wait(&bar, 0);
  copy_tile_out(out + (size_t)blockIdx.x * bytes, tile, bytes);
}

// The same rows by cp.async into the sw128 layout (the non-TMA kernels' loader). out: [ncoords][bytes].
template <int D>
__global__ void __launch_bounds__(128) cpasync_box_kernel(const bf16 *base, int64_t xs0, int64_t xs1, int64_t xs2,
                                                          int S, const BoxCoord *coords, int rows, uint8_t *out) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t *tile = align1024(smem_raw);
  const int bytes = D / 64 * rows * 128;
  poison_tile(tile, bytes);
  __syncthreads();
  const BoxCoord c = coords[blockIdx.x];
  const int64_t j0 = (int64_t)c.blk * rows;
  load_rows_sw128_async<D, bf16>(tile, rows, threadIdx.x, blockDim.x, [&](int r) -> const bf16 * {
    const int64_t j = j0 + r;
    return j < S ? base + c.b * xs0 + j * xs1 + c.h * xs2 : nullptr;
  });
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  copy_tile_out(out + (size_t)blockIdx.x * bytes, tile, bytes);
}

// The synchronisation skeleton of fwd_wgmma_ws_kernel (d = 64, BN = 128, 2 stages of K and V),
// as it was with two consumer warpgroups and no depth phase: the kernel's depth_done mbarrier
// (session 9) and its three-warpgroup form are not mirrored here; the checker grids and
// compute-sanitizer racecheck (run_checks.sh v6 / v6san, the fwd_wgmma_ws* lines) cover them.
constexpr int WS_TILE = 128 * 128;                    // one 128 x 64 bf16 box
constexpr int WS_SMEM = 1024 + 4 * WS_TILE + 64;      // slack | 2 x (K, V) | full[2], empty[2]
__device__ __forceinline__ void spin_ns(unsigned ns) {
  for (unsigned t = 0; t < ns; t += 1000) __nanosleep(1000);
}
// out: [2 warpgroups][n_blocks][WS_TILE]; order: [2][n_blocks]; counter: 1 int (0); bad: 1 int (0).
// delay: 0 none, 1 producer sleeps 50 us before its first load, 2 / 3 consumer warpgroup 0 / 1
// sleeps 50 us before the loop, 4 both warpgroups sleep a varying 0-4 us per block after the
// hand-over.
__global__ void __launch_bounds__(384, 1) ws_pipeline_kernel(const __grid_constant__ CUtensorMap map, int n_blocks,
                                                             int h, int b, int delay, uint8_t *out, int *order,
                                                             int *counter, int *bad) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t *sKV = align1024(smem_raw);
  uint64_t *full = reinterpret_cast<uint64_t *>(sKV + 4 * WS_TILE), *empty = full + 2;
  auto sK = [&](int st) { return sKV + st * 2 * WS_TILE; };
  auto sV = [&](int st) { return sKV + st * 2 * WS_TILE + WS_TILE; };
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  for (int i = tid; i < 4 * WS_TILE / 16; i += blockDim.x)
    reinterpret_cast<uint4 *>(sKV)[i] = make_uint4(~0u, ~0u, ~0u, ~0u);
  fence_proxy_async_smem();
  if (tid == 0) {
    mbar_init(&full[0], 1); mbar_init(&full[1], 1);
    mbar_init(&empty[0], 8); mbar_init(&empty[1], 8);
    mbar_fence_init();
  }
  __syncthreads();
  if (warp < 4) {  // producer warpgroup
    setmaxnreg_dec<24>();
    if (tid == 0 && n_blocks > 0) {
      if (delay == 1) spin_ns(50000);
      tma_prefetch_map(&map);
      for (int blk = 0; blk < n_blocks; ++blk) {
        const int st = blk & 1;
        if (blk >= 2) mbar_wait(&empty[st], ((blk >> 1) - 1) & 1);
        mbar_arrive_expect_tx(&full[st], 2 * WS_TILE);
        tma_load_4d(sK(st), &map, &full[st], 0, h, blk * 128, b);
        tma_load_4d(sV(st), &map, &full[st], 0, h, blk * 128, b);
      }
    }
    return;
  }
  setmaxnreg_inc<240>();
  const int ctid = tid - 128, cwarp = warp - 4, cwg = cwarp / 4, wtid = ctid % 128;
  if ((delay == 2 && cwg == 0) || (delay == 3 && cwg == 1)) spin_ns(50000);
  named_bar_sync(1, 256);
  if (n_blocks > 0) {
    if (cwg == 1) named_bar_arrive(2, 256);
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int st = blk & 1;
      mbar_wait(&full[st], (blk >> 1) & 1);
      named_bar_sync(2 + cwg, 256);
      if (wtid == 0) order[cwg * n_blocks + blk] = atomicAdd(counter, 1);  // "S issue"
      if (cwg == 0 || blk + 1 < n_blocks) named_bar_arrive(2 + (cwg ^ 1), 256);
      if (delay == 4) spin_ns(((blk * 7 + cwg * 3) % 5) * 1000);
      int nbad = 0;  // "softmax, P V": read the stage
      for (int i = wtid; i < WS_TILE / 16; i += 128) {
        const uint4 k = reinterpret_cast<const uint4 *>(sK(st))[i], v = reinterpret_cast<const uint4 *>(sV(st))[i];
        nbad += k.x != v.x || k.y != v.y || k.z != v.z || k.w != v.w;
        reinterpret_cast<uint4 *>(out + ((size_t)cwg * n_blocks + blk) * WS_TILE)[i] = k;
      }
      if (nbad) atomicAdd(bad, nbad);
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[st]);  // this warp is done with the stage
    }
  }
}

// ------------------------------------------------------------------------------------------
// host side
// ------------------------------------------------------------------------------------------

static int g_pass = 0, g_fail = 0;

static void report(bool ok, const std::string &name, const std::string &detail) {
  printf("%s %-40s %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
  fflush(stdout);
  ++(ok ? g_pass : g_fail);
}

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 12345) {}
  float uni() {  // [-1, 1)
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    return (float)((s >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
  }
};
static uint16_t bf16_bits(float x) {
  bf16 v = __float2bfloat16_rn(x);
  uint16_t u; memcpy(&u, &v, 2);
  return u ? u : 0x3f80;  // no zeros in the data: a zero-filled row must come from the fill
}

// The layout formula of mma_helpers.cuh's sw128_offset (host copy: the independent reference).
static uint32_t sw128_offset_host(int r, int c, int rows) {
  return (uint32_t)((c >> 6) * rows * 128 + r * 128 + ((((c >> 3) & 7) ^ (r & 7)) << 4) + (c & 7) * 2);
}

static double now_s() {
  timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}
// Waits for the device with a watchdog: a hang (mbarrier / named barrier never completing) ends
// the run with a FAIL line rather than blocking the device call until its limit.
static bool wait_device(const std::string &what, double limit_s = 10.0) {
  const double t0 = now_s();
  cudaError_t e;
  while ((e = cudaStreamQuery(0)) == cudaErrorNotReady) {
    if (now_s() - t0 > limit_s) {
      report(false, what, "HANG: the kernel did not finish within the watchdog limit");
      printf("tma_check: %d passed, %d failed (aborted after a hang)\n", g_pass, g_fail);
      fflush(stdout);
      _exit(1);
    }
    usleep(200);
  }
  if (e == cudaSuccess) e = cudaGetLastError();
  if (e != cudaSuccess) {
    printf("  CUDA error in %s: %s (%s)\n", what.c_str(), cudaGetErrorName(e), cudaGetErrorString(e));
    if (cudaDeviceSynchronize() != cudaSuccess || cudaGetLastError() != cudaSuccess) {
      printf("  (sticky error: cudaDeviceReset, later cases run in a fresh context)\n");
      cudaDeviceReset();
    }
    return false;
  }
  return true;
}

#define CK(x)                                                                                    \
  do {                                                                                           \
    cudaError_t e_ = (x);                                                                        \
    if (e_ != cudaSuccess) {                                                                     \
      printf("  CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, #x);    \
      ok = false;                                                                                \
    }                                                                                            \
  } while (0)

// A K tensor [B, S, H, d] in device memory (random bf16 everywhere in the allocation, padding and
// rows past S included) with its host copy.
struct Tensor {
  int B, S, H, d;
  int64_t xs[3];  // batch, row, head strides (elements)
  std::vector<uint16_t> host;
  uint16_t *dev = nullptr;
  std::string layout;
  uint16_t at(int b, int j, int h, int c) const { return host[(size_t)(b * xs[0] + j * xs[1] + h * xs[2] + c)]; }
};
static bool make_tensor(Tensor &t, const std::string &layout, int B, int S, int H, int d, uint64_t seed) {
  t.B = B; t.S = S; t.H = H; t.d = d; t.layout = layout;
  int s_alloc = S;
  if (layout == "contig") {
    t.xs[2] = d; t.xs[1] = (int64_t)H * d; t.xs[0] = (int64_t)S * H * d;
  } else if (layout == "padded") {
    s_alloc = S + 40;
    t.xs[2] = d + 16; t.xs[1] = (int64_t)H * (d + 16) + 16; t.xs[0] = (int64_t)s_alloc * t.xs[1] + 64;
  } else {  // headmajor: [B, H, S + 8, d]
    s_alloc = S + 8;
    t.xs[1] = d; t.xs[2] = (int64_t)s_alloc * d; t.xs[0] = (int64_t)H * s_alloc * d;
  }
  const int64_t n = (B - 1) * t.xs[0] + (int64_t)(s_alloc - 1) * t.xs[1] + (H - 1) * t.xs[2] + d + 64;
  Rng rng(seed);
  t.host.resize((size_t)n);
  for (auto &v : t.host) v = bf16_bits(rng.uni());
  bool ok = true;
  CK(cudaMalloc(&t.dev, (size_t)n * 2));
  if (ok) CK(cudaMemcpy(t.dev, t.host.data(), (size_t)n * 2, cudaMemcpyHostToDevice));
  return ok;
}

// The expected tile (sw128, `rows` rows per atom column) of rows blk*rows.. of head h, batch b.
static void expected_tile(const Tensor &t, const BoxCoord &c, int rows, std::vector<uint8_t> &e) {
  e.assign((size_t)t.d / 64 * rows * 128, 0xEE);  // every byte is written below
  for (int r = 0; r < rows; ++r) {
    const int j = c.blk * rows + r;
    for (int col = 0; col < t.d; ++col) {
      const uint16_t v = j < t.S ? t.at(c.b, j, c.h, col) : 0;
      memcpy(&e[sw128_offset_host(r, col, rows)], &v, 2);
    }
  }
}

// Counts differing bytes; the first few go into det.
static int64_t compare_bytes(const uint8_t *got, const uint8_t *want, size_t n, int rows, const std::string &tag,
                             const BoxCoord &c, std::string &det, int &shown) {
  int64_t bad = 0;
  for (size_t i = 0; i < n; ++i)
    if (got[i] != want[i]) {
      if (shown < 3) {
        // locate the element: atom column, row, swizzled chunk
        const int acol = (int)(i / ((size_t)rows * 128)), rem = (int)(i % ((size_t)rows * 128));
        const int r = rem / 128, chunk = (rem % 128) / 16, col = acol * 64 + ((chunk ^ (r & 7)) * 8) + (rem % 16) / 2;
        char buf[200];
        snprintf(buf, sizeof buf, " [%s blk=%d h=%d b=%d: byte %zu = row %d col %d: got %02x want %02x]", tag.c_str(),
                 c.blk, c.h, c.b, i, r, col, got[i], want[i]);
        det += buf;
        ++shown;
      }
      ++bad;
    }
  return bad;
}

template <int D>
static void launch_cpasync(const Tensor &t, const BoxCoord *dcoords, int n, int rows, uint8_t *out, size_t smem) {
  cpasync_box_kernel<D><<<n, 128, smem>>>(reinterpret_cast<const bf16 *>(t.dev), t.xs[0], t.xs[1], t.xs[2], t.S,
                                          dcoords, rows, out);
}

// One box case: every (blk, h, b) of the tensor by TMA (two mbarrier phases) and by cp.async.
static void case_box(const std::string &layout, int d, int S, int rows) {
  char nb[96];
  snprintf(nb, sizeof nb, "box_d%d_%s_S%d_rows%d", d, layout.c_str(), S, rows);
  const std::string name = nb;
  const int B = 2, H = 3;
  bool ok = true;
  Tensor t;
  if (!make_tensor(t, layout, B, S, H, d, std::hash<std::string>()(name))) { report(false, name, "cudaMalloc failed"); return; }
  CUtensorMap map;
  g_err[0] = 0;
  const int st = make_rows_tensor_map(&map, t.dev, B, S, H, d, t.xs, rows);
  if (st) {
    // headmajor's strides are not nested (head stride > row stride): if the driver refuses them,
    // the library falls back to the cp.async kernel, which is correct; say so without failing.
    if (layout == "headmajor") {
      printf("INFO %-40s not TMA-encodable (the library would fall back): status %d, %s\n", name.c_str(), st, g_err);
    } else {
      report(false, name, std::string("make_rows_tensor_map failed: ") + g_err);
    }
    cudaFree(t.dev);
    return;
  }
  std::vector<BoxCoord> coords;
  const int nblk = (S + rows - 1) / rows;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int blk = 0; blk < nblk; ++blk) coords.push_back({blk, h, b});
  const int n = (int)coords.size();
  const size_t bytes = (size_t)d / 64 * rows * 128, smem = 1024 + bytes;
  BoxCoord *dcoords = nullptr;
  uint8_t *dtma = nullptr, *dcp = nullptr;
  CK(cudaMalloc(&dcoords, n * sizeof(BoxCoord)));
  CK(cudaMalloc(&dtma, (size_t)n * 2 * bytes));
  CK(cudaMalloc(&dcp, (size_t)n * bytes));
  if (!ok) { report(false, name, "cudaMalloc failed"); return; }
  CK(cudaMemcpy(dcoords, coords.data(), n * sizeof(BoxCoord), cudaMemcpyHostToDevice));
  CK(cudaMemset(dtma, 0xFF, (size_t)n * 2 * bytes));
  CK(cudaMemset(dcp, 0xFF, (size_t)n * bytes));
  if (ok) {
    tma_box_kernel<<<n, 128, smem>>>(map, dcoords, n, rows, d / 64, dtma);
    ok = wait_device(name + " (tma)");
  }
  if (ok) {
    if (d == 64) launch_cpasync<64>(t, dcoords, n, rows, dcp, smem);
    else launch_cpasync<128>(t, dcoords, n, rows, dcp, smem);
    ok = wait_device(name + " (cp.async)");
  }
  std::vector<uint8_t> htma((size_t)n * 2 * bytes), hcp((size_t)n * bytes);
  if (ok) CK(cudaMemcpy(htma.data(), dtma, htma.size(), cudaMemcpyDeviceToHost));
  if (ok) CK(cudaMemcpy(hcp.data(), dcp, hcp.size(), cudaMemcpyDeviceToHost));
  cudaFree(dcoords); cudaFree(dtma); cudaFree(dcp); cudaFree(t.dev);
  if (!ok) { report(false, name, "CUDA error"); return; }

  int64_t bad_tma0 = 0, bad_tma1 = 0, bad_cp = 0, bad_x = 0;
  int shown = 0;
  std::string det;
  std::vector<uint8_t> e;
  for (int i = 0; i < n; ++i) {
    expected_tile(t, coords[i], rows, e);
    bad_tma0 += compare_bytes(&htma[(size_t)i * 2 * bytes], e.data(), bytes, rows, "tma phase 0", coords[i], det, shown);
    bad_cp += compare_bytes(&hcp[(size_t)i * bytes], e.data(), bytes, rows, "cp.async", coords[i], det, shown);
    bad_x += compare_bytes(&htma[(size_t)i * 2 * bytes], &hcp[(size_t)i * bytes], bytes, rows, "tma vs cp.async",
                           coords[i], det, shown);
    const BoxCoord &c1 = coords[(i + 1) % n];
    expected_tile(t, c1, rows, e);
    bad_tma1 += compare_bytes(&htma[((size_t)i * 2 + 1) * bytes], e.data(), bytes, rows, "tma phase 1", c1, det, shown);
  }
  char buf[256];
  snprintf(buf, sizeof buf, "%d boxes; bad bytes: tma %lld (phase 1: %lld), cp.async %lld, tma vs cp.async %lld", n,
           (long long)bad_tma0, (long long)bad_tma1, (long long)bad_cp, (long long)bad_x);
  report(bad_tma0 == 0 && bad_tma1 == 0 && bad_cp == 0 && bad_x == 0, name, buf + det);
}

// make_rows_tensor_map's argument checks (host only; the driver call needs the device's context).
static void case_encode(const std::string &name, bool want_ok, int64_t head_stride_extra, int base_off_elems, int d,
                        int rows) {
  bool ok = true;
  const int B = 2, S = 300, H = 3;
  const int64_t hs = d + head_stride_extra, xs[3] = {(int64_t)(S + 1) * H * hs + 64, (int64_t)H * hs + 16, hs};
  const size_t n = (size_t)(B * xs[0] + 256);
  uint16_t *dev = nullptr;
  CK(cudaMalloc(&dev, n * 2));
  if (!ok) { report(false, name, "cudaMalloc failed"); return; }
  CUtensorMap map;
  g_err[0] = 0;
  const int st = make_rows_tensor_map(&map, dev + base_off_elems, B, S, H, d, xs, rows);
  cudaFree(dev);
  char buf[300];
  snprintf(buf, sizeof buf, "status %d (want %s)%s%s", st, want_ok ? "0" : "nonzero", st ? ": " : "", st ? g_err : "");
  report((st == 0) == want_ok, name, buf);
}

// One run of the fwd_wgmma_ws_kernel skeleton over n_blocks blocks of a padded d = 64 tensor
// whose map has S = n_blocks * 128 - short_by rows (the memory holds more).
static void case_ws(const Tensor &t, int n_blocks, int short_by, int delay) {
  char nb[96];
  snprintf(nb, sizeof nb, "ws_pipeline_n%d_S%d_delay%d", n_blocks, n_blocks * 128 - short_by, delay);
  const std::string name = nb;
  const int S = n_blocks * 128 - short_by, h = 2, b = 1;
  bool ok = true;
  CUtensorMap map;
  g_err[0] = 0;
  if (make_rows_tensor_map(&map, t.dev, t.B, S, t.H, 64, t.xs, 128)) {
    report(false, name, std::string("make_rows_tensor_map failed: ") + g_err);
    return;
  }
  uint8_t *dout = nullptr;
  int *dorder = nullptr, *dcnt = nullptr;
  CK(cudaMalloc(&dout, (size_t)2 * n_blocks * WS_TILE));
  CK(cudaMalloc(&dorder, sizeof(int) * (2 * n_blocks + 2)));
  if (!ok) { report(false, name, "cudaMalloc failed"); return; }
  dcnt = dorder + 2 * n_blocks;
  CK(cudaMemset(dout, 0xFF, (size_t)2 * n_blocks * WS_TILE));
  CK(cudaMemset(dorder, 0xFF, sizeof(int) * 2 * n_blocks));
  CK(cudaMemset(dcnt, 0, 2 * sizeof(int)));
  CK(cudaFuncSetAttribute(ws_pipeline_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, WS_SMEM));
  if (ok) {
    ws_pipeline_kernel<<<1, 384, WS_SMEM>>>(map, n_blocks, h, b, delay, dout, dorder, dcnt, dcnt + 1);
    ok = wait_device(name);
  }
  std::vector<uint8_t> hout((size_t)2 * n_blocks * WS_TILE);
  std::vector<int> hord(2 * n_blocks + 2);
  if (ok) CK(cudaMemcpy(hout.data(), dout, hout.size(), cudaMemcpyDeviceToHost));
  if (ok) CK(cudaMemcpy(hord.data(), dorder, hord.size() * sizeof(int), cudaMemcpyDeviceToHost));
  cudaFree(dout); cudaFree(dorder);
  if (!ok) { report(false, name, "CUDA error"); return; }

  Tensor ts = t;  // the map's view: S rows
  ts.S = S;
  int64_t bad_bytes = 0;
  int bad_order = 0, shown = 0;
  std::string det;
  std::vector<uint8_t> e;
  for (int wg = 0; wg < 2; ++wg)
    for (int blk = 0; blk < n_blocks; ++blk) {
      const BoxCoord c{blk, h, b};
      expected_tile(ts, c, 128, e);
      bad_bytes += compare_bytes(&hout[((size_t)wg * n_blocks + blk) * WS_TILE], e.data(), WS_TILE, 128,
                                 wg ? "consumer wg 1" : "consumer wg 0", c, det, shown);
      const int want = 2 * blk + wg;
      if (hord[wg * n_blocks + blk] != want) {
        if (bad_order < 3) {
          char buf[96];
          snprintf(buf, sizeof buf, " [S issue order: wg %d blk %d got ticket %d want %d]", wg, blk,
                   hord[wg * n_blocks + blk], want);
          det += buf;
        }
        ++bad_order;
      }
    }
  const int kv_bad = hord[2 * n_blocks + 1], tickets = hord[2 * n_blocks];
  char buf[200];
  snprintf(buf, sizeof buf, "bad bytes %lld, K != V chunks %d, out-of-order S issues %d, tickets %d/%d",
           (long long)bad_bytes, kv_bad, bad_order, tickets, 2 * n_blocks);
  report(bad_bytes == 0 && kv_bad == 0 && bad_order == 0 && tickets == 2 * n_blocks, name, buf + det);
}

// Packed rows: q [B = 2, T, Hk = 2 heads of G, d] with padded strides, every 64-row tile of both
// KV heads and batches by the 5-d map, against the host's packed order in the sw128 layout.
static void case_packed(int d, int G, int T) {
  char nb[96];
  snprintf(nb, sizeof nb, "packed_d%d_G%d_T%d", d, G, T);
  const std::string name = nb;
  const int B = 2, Hk = 2, Hq = Hk * G;
  bool ok = true;
  Tensor q;  // as a [B, T, Hq, d] tensor: "S" = T tokens, "H" = Hq heads
  if (!make_tensor(q, "padded", B, T, Hq, d, std::hash<std::string>()(name))) { report(false, name, "cudaMalloc failed"); return; }
  CUtensorMap map;
  g_err[0] = 0;
  if (make_packed_rows_tensor_map(&map, q.dev, B, T, Hk, G, d, q.xs, 64)) {
    report(false, name, std::string("make_packed_rows_tensor_map failed: ") + g_err);
    cudaFree(q.dev);
    return;
  }
  const int ntile = (T * G + 63) / 64, nbox = d / 64, bytes = nbox * 64 * 128;
  std::vector<PackedCoord> coords;
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < Hk; ++g)
      for (int t = 0; t < ntile; ++t) coords.push_back({t, g, b});
  const int n = (int)coords.size();
  PackedCoord *dc = nullptr;
  uint8_t *dout = nullptr;
  CK(cudaMalloc(&dc, n * sizeof(PackedCoord)));
  CK(cudaMalloc(&dout, (size_t)n * bytes));
  if (ok) CK(cudaMemcpy(dc, coords.data(), n * sizeof(PackedCoord), cudaMemcpyHostToDevice));
  if (ok) CK(cudaMemset(dout, 0xFF, (size_t)n * bytes));
  const size_t smem = (size_t)bytes + 1024;
  if (ok) CK(cudaFuncSetAttribute(tma_packed_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  if (ok) {
    tma_packed_kernel<<<n, 128, smem>>>(map, dc, G, nbox, dout);
    ok = wait_device(name);
  }
  std::vector<uint8_t> got((size_t)n * bytes);
  if (ok) CK(cudaMemcpy(got.data(), dout, got.size(), cudaMemcpyDeviceToHost));
  cudaFree(dc); cudaFree(dout); cudaFree(q.dev);
  if (!ok) { report(false, name, "CUDA error"); return; }
  int64_t bad = 0;
  int shown = 0;
  std::string det;
  std::vector<uint8_t> e((size_t)bytes);
  for (int k = 0; k < n; ++k) {
    const PackedCoord &c = coords[k];
    for (int r = 0; r < 64; ++r) {
      const int R = c.tile * 64 + r, t = R / G, i = R % G;
      for (int col = 0; col < d; ++col) {
        const uint16_t v = t < T ? q.at(c.b, t, c.g * G + i, col) : 0;
        memcpy(&e[sw128_offset_host(r, col, 64)], &v, 2);
      }
    }
    bad += compare_bytes(&got[(size_t)k * bytes], e.data(), bytes, 64, "packed", BoxCoord{c.tile, c.g, c.b}, det, shown);
  }
  char buf[160];
  snprintf(buf, sizeof buf, "%d tiles of 64 packed rows; bad bytes %lld", n, (long long)bad);
  report(bad == 0, name, buf + det);
}

int main() {
  int ndev = 0;
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess || ndev == 0) {
    printf("SKIP tma_check: no CUDA device (%s)\n", cudaGetErrorString(e));
    return 0;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) { printf("tma_check: cudaGetDeviceProperties failed\n"); return 1; }
  if (prop.major != 9 || prop.minor != 0) {
    printf("SKIP tma_check: device %s is sm_%d%d, TMA + these kernels need sm_90a\n", prop.name, prop.major, prop.minor);
    return 0;
  }
  printf("tma_check on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  cudaFree(0);  // a context before the first driver call (cuTensorMapEncodeTiled)

  // make_rows_tensor_map's argument checks
  case_encode("encode_ok_d64_padded_rows128", true, 16, 0, 64, 128);
  case_encode("encode_ok_d128_rows256", true, 16, 0, 128, 256);
  case_encode("encode_rejects_stride_not_16B", false, 2, 0, 64, 128);   // head stride 66 elements = 132 B
  case_encode("encode_rejects_base_not_16B", false, 16, 1, 64, 128);    // base + 2 bytes
  case_encode("encode_rejects_d96", false, 16, 0, 96, 128);
  case_encode("encode_rejects_rows257", false, 16, 0, 64, 257);

  // boxes: TMA (two phases) vs cp.async vs the host's sw128 layout
  for (int d : {64, 128})
    for (const char *layout : {"contig", "padded", "headmajor"})
      for (int S : {300, 5, 128}) case_box(layout, d, S, 128);
  case_box("padded", 64, 300, 64);
  case_box("padded", 128, 300, 64);

  // packed query rows (5-d map; the v8 backward plan): T*G not a multiple of 64 in most cases
  for (int d : {64, 128})
    for (int G : {1, 2, 8, 16}) case_packed(d, G, 37);
  case_packed(64, 64, 3);

  // the warp-specialised kernel's synchronisation skeleton
  Tensor t;
  if (!make_tensor(t, "padded", 2, 8 * 128, 3, 64, 777)) {
    report(false, "ws_pipeline", "cudaMalloc failed");
  } else {
    const int runs[][3] = {{1, 37, 0}, {2, 37, 0}, {3, 37, 0}, {4, 0, 0}, {5, 37, 1}, {5, 37, 2},
                           {5, 37, 3}, {8, 37, 4}, {8, 1, 0},  {7, 100, 4}};
    for (auto &r : runs) case_ws(t, r[0], r[1], r[2]);
    cudaFree(t.dev);
  }

  printf("tma_check: %d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
