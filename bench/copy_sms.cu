// bench/copy_sms.cu: how fast N SMs can copy a depth cache, by plain vector loads and stores and
// by bulk copies (cp.async.bulk: global -> shared -> global, one thread per CTA issuing them).
//
// Why: the concurrent depth backward (cuda/attn_bwd_depth.cu) runs on 41% of the SMs beside the
// sequence kernels. Whether it could go faster there depends on what that many SMs can move at
// all: if a plain copy on N SMs reaches the whole-chip rate, the kernel's gap is its own; if not,
// only more SMs (or bulk copies with more bytes in flight per SM) help.
// One CTA per SM (each asks for more than half an SM's shared memory); the copy is of
// 2 * B*T*L*Hk*d bf16 elements (kd and vd of the LM-64 shape: 1.06 GB) into as many.
// Also read-only rates (the forward's depth traffic: plain, half rows, bulk), and the forward's
// depth-ring pattern (per-warp 16-byte cp.async rings) with a fixed delay per chunk standing in
// for its math: how many cycles per chunk a warp may spend before the ring, not DRAM, sets the rate.
// H100, session 12 (132 SMs): read-only 3.06 TB/s plain, 3.02 half rows, 3.19 bulk; rings of
// 4 warps x 7 stages 3.02 / 2.86 / 1.93 TB/s at 0 / 700 / 1500 cycles per chunk, 8 x 5 3.03 /
// 2.97 / 2.85, 12 x 3 2.98 / 2.89 / 2.75 (2.52 at 3000). The forward's depth phase alone reads
// at ~2.65 TB/s: as if its warps lost ~1500-3000 cycles per chunk (docs/CUDA_NOTES.md, session 12).
// And the pattern a TMA-fed depth backward would have (docs/CUDA_NOTES.md, session 15): per
// (token, KV head), the token's L depth rows of kd and of vd by two TMA tensor loads (a box of L
// rows of 128 bytes, rows 256 bytes apart at Hk = 2) into a ring of stages, a fixed delay per
// token standing in for its math, and two TMA tensor stores of the stage into dkd, dvd; one
// thread per CTA, one CTA per SM, on 54 and 132 SMs. (Written in session 15 without device time:
// compiled, not yet run; its "TMA ring check" line says whether it moves the bytes.)
// Build and run (sm_90a): nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a bench/copy_sms.cu -o /tmp/copy_sms && /tmp/copy_sms
#include <cuda.h>  // CUtensorMap (the encoder comes from the driver at run time)
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <vector>

#include "bench_cuda.h"

constexpr int kThreads = 512;
constexpr int kUnroll = 8;  // 16-byte loads in flight per thread

// Plain copy: each thread moves kUnroll 16-byte pieces per step, loads first, then stores.
__global__ void __launch_bounds__(kThreads) copy_vec_kernel(const uint4 *__restrict__ src, uint4 *__restrict__ dst,
                                                            int64_t n) {
  const int64_t step = (int64_t)gridDim.x * kThreads * kUnroll;
  for (int64_t base = (int64_t)blockIdx.x * kThreads * kUnroll + threadIdx.x; base < n; base += step) {
    uint4 v[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + (int64_t)k * kThreads;
      if (i < n) v[k] = __ldcs(src + i);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + (int64_t)k * kThreads;
      if (i < n) __stcs(dst + i, v[k]);
    }
  }
}

// Plain read (the forward's depth traffic has no stores): kUnroll 16-byte loads in flight per
// thread, folded by xor so the loads stay; one word per thread is written at the end.
// HALF: only the first 128 bytes of every 256 (one KV head's half of a depth row when Hk = 2);
// n counts the pieces read, the buffer spans twice as many.
template <bool HALF = false>
__global__ void __launch_bounds__(kThreads) read_vec_kernel(const uint4 *__restrict__ src, uint32_t *__restrict__ sink,
                                                            int64_t n) {
  const int64_t step = (int64_t)gridDim.x * kThreads * kUnroll;
  uint32_t acc = 0;
  for (int64_t base = (int64_t)blockIdx.x * kThreads * kUnroll + threadIdx.x; base < n; base += step) {
    uint4 v[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = base + (int64_t)k * kThreads;
      v[k] = i < n ? __ldcs(src + (HALF ? (i >> 3) * 16 + (i & 7) : i)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) acc ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;
  }
  sink[(int64_t)blockIdx.x * kThreads + threadIdx.x] = acc;
}

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
// Waits until the mbarrier's phase of this parity has completed (the stage's bytes have landed).
__device__ __forceinline__ void mbar_wait_parity(uint64_t *bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(done)
                 : "r"(smem_addr(bar)), "r"(parity)
                 : "memory");
  } while (!done);
}

// Bulk copy: thread 0 streams chunks of CHUNK bytes (every gridDim.x-th) through a ring of NST
// stages: bulk load (completion on the stage's mbarrier), then bulk store; a stage is reloaded
// once its store has read it (cp.async.bulk.wait_group.read).
template <int CHUNK, int NST, bool READ_ONLY = false>
__global__ void __launch_bounds__(32) copy_bulk_kernel(const char *__restrict__ src, char *__restrict__ dst,
                                                       int64_t nchunks) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ uint64_t bars[NST];
  if (threadIdx.x != 0) return;
  for (int s = 0; s < NST; ++s)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&bars[s])) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  const int64_t first = blockIdx.x, step = gridDim.x;
  const int64_t mine = first < nchunks ? (nchunks - first + step - 1) / step : 0;
  auto issue_load = [&](int64_t j) {
    const int s = (int)(j % NST);
    const int64_t c = first + j * step;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(&bars[s])), "r"(CHUNK)
                 : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_addr(smem + s * CHUNK)),
                 "l"(src + c * CHUNK), "r"(CHUNK), "r"(smem_addr(&bars[s]))
                 : "memory");
  };
  for (int64_t j = 0; j < NST && j < mine; ++j) issue_load(j);
  for (int64_t j = 0; j < mine; ++j) {
    const int s = (int)(j % NST);
    const uint32_t parity = (uint32_t)((j / NST) & 1);
    mbar_wait_parity(&bars[s], parity);
    if (READ_ONLY) {  // read-only: the stage is free again at once (nothing reads it)
      if (j + NST < mine) issue_load(j + NST);
      continue;
    }
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst + (first + j * step) * CHUNK),
                 "r"(smem_addr(smem + s * CHUNK)), "r"(CHUNK)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    // refill the previous item's stage once its store has read it (one store may stay in flight)
    if (j >= 1 && j - 1 + NST < mine) {
      asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory");
      issue_load(j - 1 + NST);
    }
  }
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

// The forward's depth-ring pattern (cuda/attn_fwd_common.cuh FwdDepthRing) without its math:
// each warp streams chunks of 16 rows x 128 bytes of kd and of vd (half of every 256-byte row:
// one KV head of two) by 16-byte cp.async into its own RST-stage smem ring, RST-1 chunks ahead,
// and spends `spin` cycles per chunk (a stand-in for the chunk's MMA and softmax latency).
// Warps take groups of 16 chunks (two tokens of 126 rows, rounded) in turn.
template <int NWARPS, int RST>
__global__ void __launch_bounds__(NWARPS * 32) ring_read_kernel(const char *__restrict__ kd, const char *__restrict__ vd,
                                                                 int64_t rows, int spin, uint32_t *__restrict__ sink) {
  extern __shared__ __align__(16) unsigned char ring[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  unsigned char *wr = ring + warp * RST * 2 * 16 * 128;
  const int64_t nchunks = rows / 16, ngroups = nchunks / 16;
  const int64_t gw = (int64_t)blockIdx.x * NWARPS + warp, nw = (int64_t)gridDim.x * NWARPS;
  uint32_t acc = 0;
  for (int64_t grp = gw; grp < ngroups; grp += nw) {
    auto issue = [&](int c, int st) {
      if (c < 16) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {  // 16 rows x 8 pieces of 16 bytes per tensor: 4 per lane
          const int piece = lane + 32 * j, r = piece / 8, col = piece % 8;
          const int64_t row = (grp * 16 + c) * 16 + r;
          const uint32_t sk = smem_addr(wr + (st * 2 * 16 + r) * 128 + col * 16);
          const uint32_t sv = sk + 16 * 128;
          asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sk), "l"(kd + row * 256 + col * 16) : "memory");
          asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sv), "l"(vd + row * 256 + col * 16) : "memory");
        }
      }
      asm volatile("cp.async.commit_group;" ::: "memory");
    };
    for (int c = 0; c < RST - 1; ++c) issue(c, c);
    for (int c = 0; c < 16; ++c) {
      asm volatile("cp.async.wait_group %0;" ::"n"(RST - 2) : "memory");
      __syncwarp();
      issue(c + RST - 1, (c + RST - 1) % RST);
      acc ^= *reinterpret_cast<const uint32_t *>(wr + ((c % RST) * 2 * 16 + lane % 16) * 128 + (lane / 16) * 16);
      if (spin > 0) {
        const long long t0 = clock64();
        while (clock64() - t0 < spin) {}
      }
    }
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    __syncwarp();
  }
  sink[(int64_t)blockIdx.x * NWARPS * 32 + threadIdx.x] = acc;
}

template <int NWARPS, int RST>
static float run_ring(const char *src, int64_t bytes, int spin, uint32_t *sink, int ctas) {
  auto k = ring_read_kernel<NWARPS, RST>;
  const int ring = NWARPS * RST * 2 * 16 * 128, smem = ring > 120 * 1024 ? ring : 120 * 1024;  // one CTA per SM
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  // kd = the first half of src, vd the second; rows of 256 bytes of which 128 are read
  const int64_t rows = bytes / 2 / 256;
  const float ms = time_ms([&] { k<<<ctas, NWARPS * 32, smem>>>(src, src + bytes / 2, rows, spin, sink); });
  CK(cudaGetLastError());
  return ms;
}

// TMA token ring: item i = (token, head) = (i / HK, i % HK), every gridDim.x-th; a stage holds
// one item's kd and vd rows (2 x L x 128 bytes). Thread 0 issues the loads NST items ahead, waits
// for each, spins `spin` cycles, stores it back by TMA and refills the previous item's stage once
// that store has read it (as copy_bulk_kernel, with tensor maps).
template <int NST, int L, int HK>
__global__ void __launch_bounds__(32) tma_token_ring_kernel(const __grid_constant__ CUtensorMap kd,
                                                            const __grid_constant__ CUtensorMap vd,
                                                            const __grid_constant__ CUtensorMap dkd,
                                                            const __grid_constant__ CUtensorMap dvd, int64_t items,
                                                            int spin) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int HALF = L * 128, STAGE = 2 * HALF;
  extern __shared__ __align__(128) unsigned char smem_raw[];  // 128 bytes more than the stages
  __shared__ uint64_t bars[NST];
  if (threadIdx.x != 0) return;
  unsigned char *smem = smem_raw + ((128u - (smem_addr(smem_raw) & 127u)) & 127u);  // TMA: 128-byte aligned
  for (int s = 0; s < NST; ++s)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&bars[s])) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  const int64_t first = blockIdx.x, step = gridDim.x;
  const int64_t mine = first < items ? (items - first + step - 1) / step : 0;
  auto coords = [&](int64_t j, int &h, int &row) {
    const int64_t it = first + j * step;
    h = (int)(it % HK);
    row = (int)(it / HK * L);
  };
  auto issue_load = [&](int64_t j) {
    const int s = (int)(j % NST);
    int h, row;
    coords(j, h, row);
    const uint32_t bar = smem_addr(&bars[s]), dst = smem_addr(smem + s * STAGE);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(STAGE) : "memory");
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];"
                 ::"r"(dst), "l"(&kd), "r"(0), "r"(h), "r"(row), "r"(bar) : "memory");
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];"
                 ::"r"(dst + HALF), "l"(&vd), "r"(0), "r"(h), "r"(row), "r"(bar) : "memory");
  };
  for (int64_t j = 0; j < NST && j < mine; ++j) issue_load(j);
  for (int64_t j = 0; j < mine; ++j) {
    const int s = (int)(j % NST);
    const uint32_t parity = (uint32_t)((j / NST) & 1);
    mbar_wait_parity(&bars[s], parity);
    if (spin > 0) {
      const long long t0 = clock64();
      while (clock64() - t0 < spin) {}
    }
    int h, row;
    coords(j, h, row);
    const uint32_t src = smem_addr(smem + s * STAGE);
    asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%1, %2, %3}], [%4];"
                 ::"l"(&dkd), "r"(0), "r"(h), "r"(row), "r"(src) : "memory");
    asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%1, %2, %3}], [%4];"
                 ::"l"(&dvd), "r"(0), "r"(h), "r"(row), "r"(src + HALF) : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    if (j >= 1 && j - 1 + NST < mine) {  // the previous item's stores have read their stage
      asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory");
      issue_load(j - 1 + NST);
    }
  }
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

// A depth tensor [rows = B*T*L, HK, 64] of bf16 as a 3-d TMA map, box (64, 1, L): one token's rows
// of one KV head. The encoder from the driver through the runtime (no -lcuda).
typedef CUresult (*EncodeTiledFn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                  const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
static CUtensorMap depth_map(void *base, int64_t rows, int hk, int L) {
  static EncodeTiledFn enc = nullptr;
  if (!enc) {
    void *f = nullptr;
    cudaDriverEntryPointQueryResult q;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess) { fprintf(stderr, "cuTensorMapEncodeTiled not found\n"); exit(1); }
    enc = reinterpret_cast<EncodeTiledFn>(f);
  }
  CUtensorMap m;
  const cuuint64_t dims[3] = {64, (cuuint64_t)hk, (cuuint64_t)rows}, strides[2] = {128, (cuuint64_t)hk * 128};
  const cuuint32_t box[3] = {64, 1, (cuuint32_t)L}, es[3] = {1, 1, 1};
  if (enc(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, base, dims, strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
          CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
    fprintf(stderr, "cuTensorMapEncodeTiled refused the depth map\n");
    exit(1);
  }
  return m;
}

template <typename F>
static float time_ms(F launch) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  launch();
  CK(cudaDeviceSynchronize());
  std::vector<float> t;
  for (int r = 0; r < 15; ++r) {
    CK(cudaEventRecord(a));
    launch();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return t[t.size() / 2];
}

template <int CHUNK, int NST, bool READ_ONLY = false>
static float run_bulk(const char *src, char *dst, int64_t bytes, int sms) {
  auto k = copy_bulk_kernel<CHUNK, NST, READ_ONLY>;
  const int smem = CHUNK * NST > 120 * 1024 ? CHUNK * NST : 120 * 1024;  // one CTA per SM
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const float ms = time_ms([&] { k<<<sms, 32, smem>>>(src, dst, bytes / CHUNK); });
  CK(cudaGetLastError());
  return ms;
}

// kd, vd = the two halves of src, dkd, dvd of dst; rate = bytes read + written per second
template <int NST>
static float run_tma_ring(char *src, char *dst, int64_t bytes, int sms, int spin) {
  constexpr int L = 126, HK = 2, STAGE = 2 * L * 128;
  auto k = tma_token_ring_kernel<NST, L, HK>;
  const int smem = NST * STAGE + 128 > 120 * 1024 ? NST * STAGE + 128 : 120 * 1024;  // one CTA per SM
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const int64_t rows = bytes / 2 / (HK * 128), items = rows / L * HK;
  const CUtensorMap kd = depth_map(src, rows, HK, L), vd = depth_map(src + bytes / 2, rows, HK, L);
  const CUtensorMap dkd = depth_map(dst, rows, HK, L), dvd = depth_map(dst + bytes / 2, rows, HK, L);
  const float ms = time_ms([&] { k<<<sms, 32, smem>>>(kd, vd, dkd, dvd, items, spin); });
  CK(cudaGetLastError());
  return ms;
}

int main() {
  const int64_t B = 8, T = 2048, L = 126, Hk = 2, d = 64;
  const int64_t bytes = 2 * B * T * L * Hk * d * 2;  // kd and vd, bf16
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  char *src, *dst;
  CK(cudaMalloc(&src, bytes));
  CK(cudaMalloc(&dst, bytes));
  CK(cudaMemset(src, 1, bytes));
  CK(cudaFuncSetAttribute(copy_vec_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 120 * 1024));
  printf("# %s, %d SMs; copy of %.2f GB (LM-64 kd, vd); rate = bytes read + written per second\n", prop.name,
         prop.multiProcessorCount, bytes / 1e9);
  printf("%5s %11s %9s %14s %9s %14s %9s | read only: %9s %9s %12s %9s\n", "SMs", "vec ms", "TB/s", "bulk16Kx8 ms",
         "TB/s", "bulk32Kx6 ms", "TB/s", "vec ms", "TB/s", "bulk32Kx6 ms", "TB/s");
  uint32_t *sink;
  CK(cudaMalloc(&sink, (size_t)prop.multiProcessorCount * kThreads * 4));
  CK(cudaFuncSetAttribute(read_vec_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, 120 * 1024));
  CK(cudaFuncSetAttribute(read_vec_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, 120 * 1024));
  const int counts[] = {27, 41, 54, 66, 80, 100, 132};
  for (int sms : counts) {
    if (sms > prop.multiProcessorCount) continue;
    const float tv = time_ms([&] {
      copy_vec_kernel<<<sms, kThreads, 120 * 1024>>>(reinterpret_cast<const uint4 *>(src), reinterpret_cast<uint4 *>(dst),
                                                     bytes / 16);
    });
    CK(cudaGetLastError());
    const float tb = run_bulk<16384, 8>(src, dst, bytes, sms);
    const float tc = run_bulk<32768, 6>(src, dst, bytes, sms);
    const float rv = time_ms([&] {
      read_vec_kernel<false><<<sms, kThreads, 120 * 1024>>>(reinterpret_cast<const uint4 *>(src), sink, bytes / 16);
    });
    CK(cudaGetLastError());
    // half rows: the same useful bytes spread over twice the span (src and dst are adjacent
    // allocations of `bytes` each; the half read spans src only, so half as many bytes)
    const float rh = time_ms([&] {
      read_vec_kernel<true><<<sms, kThreads, 120 * 1024>>>(reinterpret_cast<const uint4 *>(src), sink, bytes / 32);
    });
    CK(cudaGetLastError());
    const float rc = run_bulk<32768, 6, true>(src, dst, bytes, sms);
    auto rate = [&](float ms) { return 2.0 * bytes / (ms * 1e-3) / 1e12; };
    auto rrate = [&](float ms) { return bytes / (ms * 1e-3) / 1e12; };
    printf("%5d %11.3f %9.2f %14.3f %9.2f %14.3f %9.2f | %20.3f %9.2f %12.3f %9.2f | half rows %9.2f TB/s\n", sms, tv,
           rate(tv), tb, rate(tb), tc, rate(tc), rv, rrate(rv), rc, rrate(rc), bytes / 2 / (rh * 1e-3) / 1e12);
  }
  // the forward's depth-ring pattern: useful bytes (half of each 256-byte row) per second
  printf("\nper-warp cp.async rings (the forward's depth phase without its math), 132 CTAs, TB/s of bytes read:\n");
  printf("%-24s %8s %8s %8s %8s %8s\n", "warps x stages", "spin 0", "300", "700", "1500", "3000");
  auto ring_row = [&](const char *name, auto fn) {
    printf("%-24s", name);
    for (int spin : {0, 300, 700, 1500, 3000}) printf(" %8.2f", bytes / 2 / (fn(spin) * 1e-3) / 1e12);
    printf("\n");
  };
  const int nsm = prop.multiProcessorCount;
  ring_row("4 x 7", [&](int sp) { return run_ring<4, 7>(src, bytes, sp, sink, nsm); });
  ring_row("8 x 5", [&](int sp) { return run_ring<8, 5>(src, bytes, sp, sink, nsm); });
  ring_row("12 x 3", [&](int sp) { return run_ring<12, 3>(src, bytes, sp, sink, nsm); });
  ring_row("4 x 12", [&](int sp) { return run_ring<4, 12>(src, bytes, sp, sink, nsm); });
  ring_row("16 x 3", [&](int sp) { return run_ring<16, 3>(src, bytes, sp, sink, nsm); });
  // the TMA token ring (the sketch of a TMA-fed depth backward): TB/s of bytes read + written
  printf("\nTMA token ring (kd, vd of one token and KV head per stage, stored back by TMA), TB/s:\n");
  printf("%-24s %8s %8s %8s %8s %8s\n", "SMs x stages (KB)", "spin 0", "1000", "2000", "4000", "8000");
  auto tma_row = [&](const char *name, auto fn) {
    printf("%-24s", name);
    for (int spin : {0, 1000, 2000, 4000, 8000}) printf(" %8.2f", 2.0 * bytes / (fn(spin) * 1e-3) / 1e12);
    printf("\n");
  };
  tma_row("54 x 4 (126)", [&](int sp) { return run_tma_ring<4>(src, dst, bytes, 54, sp); });
  tma_row("54 x 6 (189)", [&](int sp) { return run_tma_ring<6>(src, dst, bytes, 54, sp); });
  tma_row("40 x 6 (189)", [&](int sp) { return run_tma_ring<6>(src, dst, bytes, 40, sp); });
  tma_row("46 x 6 (189)", [&](int sp) { return run_tma_ring<6>(src, dst, bytes, 46, sp); });
  tma_row("66 x 6 (189)", [&](int sp) { return run_tma_ring<6>(src, dst, bytes, 66, sp); });
  tma_row("132 x 4 (126)", [&](int sp) { return run_tma_ring<4>(src, dst, bytes, nsm, sp); });
  // checks that the copies moved the bytes: a pattern through each, compared
  auto copy_check = [&](const char *name, auto copy) {
    std::vector<unsigned char> h(1 << 20);
    for (size_t i = 0; i < h.size(); ++i) h[i] = (unsigned char)(i * 131 + 7);
    CK(cudaMemcpy(src, h.data(), h.size(), cudaMemcpyHostToDevice));
    CK(cudaMemset(dst, 0, bytes));
    copy();
    std::vector<unsigned char> g(h.size());
    CK(cudaMemcpy(g.data(), dst, g.size(), cudaMemcpyDeviceToHost));
    printf("%s check: %s\n", name, g == h ? "ok" : "MISMATCH");
  };
  copy_check("TMA ring", [&] { run_tma_ring<4>(src, dst, bytes, 54, 0); });
  copy_check("bulk copy", [&] { run_bulk<16384, 8>(src, dst, bytes, 54); });
  return 0;
}
