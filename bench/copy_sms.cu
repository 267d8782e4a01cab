// bench/copy_sms.cu: how fast N SMs can copy a depth cache, by plain vector loads and stores and
// by bulk copies (cp.async.bulk: global -> shared -> global, one thread per CTA issuing them).
//
// Why: the concurrent depth backward (cuda/attn_bwd_depth.cu) runs on 41% of the SMs beside the
// sequence kernels. Whether it could go faster there depends on what that many SMs can move at
// all: if a plain copy on N SMs reaches the whole-chip rate, the kernel's gap is its own; if not,
// only more SMs (or bulk copies with more bytes in flight per SM) help.
// One CTA per SM (each asks for more than half an SM's shared memory); the copy is of
// 2 * B*T*L*Hk*d bf16 elements (kd and vd of the LM-64 shape: 1.06 GB) into as many.
// Build and run (sm_90a): nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a bench/copy_sms.cu -o /tmp/copy_sms && /tmp/copy_sms
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <vector>

#define CK(x)                                                                         \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

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

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

// Bulk copy: thread 0 streams chunks of CHUNK bytes (every gridDim.x-th) through a ring of NST
// stages: bulk load (completion on the stage's mbarrier), then bulk store; a stage is reloaded
// once its store has read it (cp.async.bulk.wait_group.read).
template <int CHUNK, int NST>
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
    uint32_t done = 0;
    do {
      asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                   : "=r"(done)
                   : "r"(smem_addr(&bars[s])), "r"(parity)
                   : "memory");
    } while (!done);
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

template <int CHUNK, int NST>
static float run_bulk(const char *src, char *dst, int64_t bytes, int sms) {
  auto k = copy_bulk_kernel<CHUNK, NST>;
  const int smem = CHUNK * NST > 120 * 1024 ? CHUNK * NST : 120 * 1024;  // one CTA per SM
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const float ms = time_ms([&] { k<<<sms, 32, smem>>>(src, dst, bytes / CHUNK); });
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
  printf("%5s %11s %9s %14s %9s %14s %9s\n", "SMs", "vec ms", "TB/s", "bulk16Kx8 ms", "TB/s", "bulk32Kx6 ms", "TB/s");
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
    auto rate = [&](float ms) { return 2.0 * bytes / (ms * 1e-3) / 1e12; };
    printf("%5d %11.3f %9.2f %14.3f %9.2f %14.3f %9.2f\n", sms, tv, rate(tv), tb, rate(tb), tc, rate(tc));
  }
  // a check that the bulk copy moved the bytes: copy a pattern and compare
  std::vector<unsigned char> h(1 << 20);
  for (size_t i = 0; i < h.size(); ++i) h[i] = (unsigned char)(i * 131 + 7);
  CK(cudaMemcpy(src, h.data(), h.size(), cudaMemcpyHostToDevice));
  CK(cudaMemset(dst, 0, bytes));
  run_bulk<16384, 8>(src, dst, bytes, 54);
  std::vector<unsigned char> g(h.size());
  CK(cudaMemcpy(g.data(), dst, g.size(), cudaMemcpyDeviceToHost));
  printf("bulk copy check: %s\n", g == h ? "ok" : "MISMATCH");
  return 0;
}
