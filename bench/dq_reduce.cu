// bench/dq_reduce.cu: how fast dQ's float32 partial blocks can be summed, by reductions into L2
// (red.global.add.v4.f32, what the atomic-dQ backward does) and by a reduce-scatter through
// distributed shared memory inside clusters of N CTAs first (each CTA sends (N-1)/N of its
// partial to its peers and reduces the remaining 1/N, summed, into L2).
//
// Why: the atomic flow's dK/dV kernel adds a 32 KB float32 dQ partial (128 rows x 64) per 128-row
// step into the accumulator, ~275 GB at T=65536, and that costs more than a second pass over the
// keys (docs/CUDA_NOTES.md, sessions 22-23). A cluster of N CTAs on adjacent key blocks would cut
// the L2 reductions N times if the SM-to-SM network carries the rest fast enough: the fused kernel
// beats the split backward only if the network runs > 3.3x the L2 reduction rate at N = 4 (> 2.5x
// at N = 8; session 23's notes). This measures both rates.
//
// Each CTA (256 threads, one per SM by its shared memory) runs `rounds` rounds; in each it has a
// 32 KB partial (here: registers holding a constant, standing in for the wgmma accumulator) for
// the rows of block (cta + round) % nblk of a float32 target of `target_mb` MB:
//   l2      every thread adds its 32 floats by 8 red.global.add.v4.f32
//   dsmem N each thread st.asyncs the N - 1 slices it does not own into the owners' receive
//           buffers (completing bytes on the owner's mbarrier), waits for its own, adds the N - 1
//           received slices to its own and reduces that slice (32 / N floats per thread) into L2;
//           two buffer parities, and mbarriers both ways (no cluster-wide barrier per round)
// Rates: partial bytes consumed per second (the comparable number: 32 KB per CTA and round) and,
// for dsmem, the bytes that crossed the network per second.
// Build and run (sm_90a): nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a bench/dq_reduce.cu -o /tmp/dq_reduce && /tmp/dq_reduce
// (Written in session 23; first run in session 25, H100: into a 1 GB target L2 1106 GB/s of
// partials, clusters of 2 / 4 / 8 1784 / 951 / 1259, far below the 3.3x / 2.5x a fused kernel
// needed, so the split backward stays; docs/CUDA_NOTES.md, session 25.)
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <vector>

#include "bench_cuda.h"

namespace cg = cooperative_groups;


constexpr int kThreads = 256;
constexpr int kFloats = 32;                    // floats of the partial per thread (32 KB per CTA)
constexpr int kBlock = kThreads * kFloats;     // floats of one partial block
constexpr int kSmem = 120 * 1024;              // one CTA per SM

__device__ __forceinline__ void red_add_v4(float *dst, float4 v) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
               : "memory");
}

// Thread t's floats of a block: 8 float4 pieces at t * 4 + j * kThreads * 4 (coalesced per j).
__device__ __forceinline__ float *piece(float *block, int t, int j) { return block + 4 * (t + j * kThreads); }

__global__ void __launch_bounds__(kThreads) l2_red_kernel(float *target, int64_t nblk, int rounds, float val) {
  const int t = threadIdx.x;
  for (int r = 0; r < rounds; ++r) {
    float *block = target + ((blockIdx.x + (int64_t)r * gridDim.x) % nblk) * kBlock;
#pragma unroll
    for (int j = 0; j < kFloats / 4; ++j) red_add_v4(piece(block, t, j), make_float4(val, val, val, val));
  }
}

// Cluster-scope helpers: the peer's address of a shared-memory location, a 16-byte store into a
// peer's shared memory that completes bytes on the peer's mbarrier (st.async: no fence; the
// cluster barriers of cooperative_groups compile to MEMBAR.ALL.GPU, which would wait for this
// CTA's outstanding L2 reductions every round), and a relaxed remote arrive (the "buffer read"
// signal: issued after the reads' values were used, so the reads are done).
__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ uint32_t peer_addr(uint32_t a, int rank) {
  uint32_t o;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(o) : "r"(a), "r"(rank));
  return o;
}
__device__ __forceinline__ void st_async_v4(uint32_t peer, float4 v, uint32_t peer_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];\n" ::"r"(peer),
               "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(peer_bar)
               : "memory");
}
__device__ __forceinline__ void bar_init(uint64_t *bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void bar_expect_tx(uint64_t *bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bar_wait(uint64_t *bar, int parity) {
  asm volatile(
      "{\n.reg .pred p;\nWAIT_%=: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bar_arrive_remote(uint32_t peer_bar) {
  asm volatile("mbarrier.arrive.relaxed.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(peer_bar) : "memory");
}

// The block's 8 float4 pieces per thread are split by j among the N ranks: rank q owns pieces
// j with j % N == q (N divides 8). Receive buffer: [parity][N - 1 senders][kThreads][8 / N] float4.
// Per round r (parity p = r & 1): wait until every owner has read this CTA's slices of round
// r - 2 (freed[p], N - 1 arrivals); thread 0 announces the bytes it will receive (full[p]); every
// thread st.asyncs its N - 1 foreign slices, completing bytes on the owners' full[p]; waits for
// its own full[p]; sums and reduces its slice into L2; after a CTA barrier (every read done)
// thread 0 tells each sender its slot is free.
template <int N>
__global__ void __cluster_dims__(N, 1, 1) __launch_bounds__(kThreads)
    dsmem_reduce_kernel(float *target, int64_t nblk, int rounds, float val) {
  static_assert(8 % N == 0 && N >= 2, "N divides the 8 pieces of a thread");
  constexpr int OWN = 8 / N;  // pieces a rank owns per thread
  constexpr uint32_t RX_BYTES = (N - 1) * kThreads * OWN * 16;
  extern __shared__ float4 recv[];
  __shared__ uint64_t full[2], freed[2];
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = (int)cluster.block_rank(), t = threadIdx.x;
  const int64_t cluster_id = blockIdx.x / N, clusters = gridDim.x / N;
  auto slot = [&](int par, int sender_idx, int k) { return (par * (N - 1) + sender_idx) * kThreads * OWN + t * OWN + k; };
  if (t == 0) {
    for (int p = 0; p < 2; ++p) {
      bar_init(&full[p], 1);
      bar_init(&freed[p], N - 1);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  cluster.sync();  // the peers' barriers exist before anyone signals them
  for (int r = 0; r < rounds; ++r) {
    const int par = r & 1;
    float4 mine[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) mine[j] = make_float4(val, val, val, val);  // the partial (stands in for an accumulator)
    if (r >= 2) bar_wait(&freed[par], ((r >> 1) - 1) & 1);
    if (t == 0) bar_expect_tx(&full[par], RX_BYTES);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int q = j % N;
      if (q == rank) continue;
      const int sender_idx = rank < q ? rank : rank - 1;  // the owner's N - 1 senders, in rank order
      st_async_v4(peer_addr(smem_addr(&recv[slot(par, sender_idx, j / N)]), q), mine[j], peer_addr(smem_addr(&full[par]), q));
    }
    bar_wait(&full[par], (r >> 1) & 1);
    float *block = target + ((cluster_id + (int64_t)r * clusters) % nblk) * kBlock;
#pragma unroll
    for (int k = 0; k < OWN; ++k) {
      const int j = k * N + rank;  // the k-th piece this rank owns
      float4 s = mine[j];
#pragma unroll
      for (int i = 0; i < N - 1; ++i) {
        const float4 v = recv[slot(par, i, k)];
        s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
      }
      red_add_v4(piece(block, t, j), s);
    }
    __syncthreads();  // every thread's reads of parity par are done
    if (t == 0)
      for (int q = 0; q < N; ++q)
        if (q != rank) bar_arrive_remote(peer_addr(smem_addr(&freed[par]), q));
  }
  cluster.sync();  // no CTA leaves while a peer may still store into it or signal it
}

static float time_ms(void (*launch)(void *), void *arg) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  launch(arg);  // warm-up
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  float best = 1e30f;
  for (int rep = 0; rep < 5; ++rep) {
    CK(cudaEventRecord(a));
    launch(arg);
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    if (ms < best) best = ms;
  }
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return best;
}

struct Run {
  float *target;
  int64_t nblk;
  int ctas, rounds, n;  // n = 1: l2_red_kernel, else the cluster size
  float val;
};

static void launch_run(void *p) {
  const Run &r = *static_cast<const Run *>(p);
  const size_t smem_dsmem = (size_t)2 * (r.n - 1) * kThreads * (8 / (r.n > 1 ? r.n : 1)) * sizeof(float4);
  switch (r.n) {
    case 1: l2_red_kernel<<<r.ctas, kThreads, kSmem>>>(r.target, r.nblk, r.rounds, r.val); break;
    case 2: dsmem_reduce_kernel<2><<<r.ctas, kThreads, kSmem > smem_dsmem ? kSmem : smem_dsmem>>>(r.target, r.nblk, r.rounds, r.val); break;
    case 4: dsmem_reduce_kernel<4><<<r.ctas, kThreads, kSmem > smem_dsmem ? kSmem : smem_dsmem>>>(r.target, r.nblk, r.rounds, r.val); break;
    case 8: dsmem_reduce_kernel<8><<<r.ctas, kThreads, kSmem > smem_dsmem ? kSmem : smem_dsmem>>>(r.target, r.nblk, r.rounds, r.val); break;
  }
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  CK(cudaFuncSetAttribute(l2_red_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  CK(cudaFuncSetAttribute(dsmem_reduce_kernel<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  CK(cudaFuncSetAttribute(dsmem_reduce_kernel<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  CK(cudaFuncSetAttribute(dsmem_reduce_kernel<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const int64_t max_mb = 1024;
  float *target;
  CK(cudaMalloc(&target, (size_t)max_mb << 20));
  CK(cudaMemset(target, 0, (size_t)max_mb << 20));
  // one CTA per SM; a multiple of 8 so every cluster size tiles the grid
  const int ctas = sms / 8 * 8, rounds = 2000;
  printf("# %s, %d SMs, %d CTAs x %d rounds of a 32 KB float32 partial each\n", prop.name, sms, ctas, rounds);
  // clusters of 8 CTAs at one CTA per SM need 8 free SMs of one GPC: fewer may be resident at once
  auto max_clusters = [&](const void *kernel) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(ctas);
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = kSmem;
    int n = 0;
    CK(cudaOccupancyMaxActiveClusters(&n, kernel, &cfg));
    return n;
  };
  printf("# resident clusters at once: of 2 %d, of 4 %d, of 8 %d\n", max_clusters((const void *)dsmem_reduce_kernel<2>),
         max_clusters((const void *)dsmem_reduce_kernel<4>), max_clusters((const void *)dsmem_reduce_kernel<8>));
  printf("%-10s %10s %10s %16s %16s\n", "way", "target MB", "ms", "partials GB/s", "network GB/s");
  for (int64_t mb : {32, 1024}) {
    const int64_t nblk = (mb << 20) / (kBlock * 4);
    for (int n : {1, 2, 4, 8}) {
      Run r{target, nblk, ctas, rounds, n, 1.f};
      const float ms = time_ms(launch_run, &r);
      const double partial_bytes = (double)ctas * rounds * kBlock * 4;
      const double net = n > 1 ? partial_bytes * (n - 1) / n : 0;
      char way[16] = "l2";
      if (n > 1) snprintf(way, sizeof way, "dsmem %d", n);
      printf("%-10s %10lld %10.3f %16.1f %16.1f\n", way, (long long)mb, ms, partial_bytes / (ms * 1e-3) / 1e9,
             net / (ms * 1e-3) / 1e9);
    }
  }
  // check: one round per CTA of value 1 into a zeroed target, each block hit once per cluster
  // (l2: once per CTA); every float of the touched blocks must read the count of its adders
  for (int n : {1, 2, 4, 8}) {
    const int64_t nblk = ctas;  // more blocks than clusters: each cluster (or CTA) its own block
    CK(cudaMemset(target, 0, (size_t)nblk * kBlock * 4));
    Run r{target, nblk, ctas, 1, n, 1.f};
    launch_run(&r);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<float> h((size_t)nblk * kBlock);
    CK(cudaMemcpy(h.data(), target, h.size() * 4, cudaMemcpyDeviceToHost));
    const int64_t used = n == 1 ? ctas : ctas / n;  // blocks written: one per CTA or per cluster
    bool ok = true;
    for (int64_t i = 0; i < nblk * kBlock && ok; ++i) ok = h[i] == (i < used * kBlock ? (float)n : 0.f);
    printf("%s %d check: %s\n", n == 1 ? "l2" : "dsmem", n, ok ? "ok" : "MISMATCH");
  }
  CK(cudaFree(target));
  return 0;
}
