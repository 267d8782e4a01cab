// mma_helpers.cuh: thin wrappers over the sm_80+ PTX the tensor-core kernels use:
// cp.async (16-byte global->shared copies), ldmatrix, movmatrix, mma.sync m16n8k16.
//
// Fragment layouts of mma.m16n8k16 (lane = threadIdx.x % 32, quad row = lane/4, quad col = lane%4):
//   A (16x16, row-major): reg0 (r, 2c..2c+1), reg1 (r+8, 2c..), reg2 (r, 2c+8..), reg3 (r+8, 2c+8..)
//   B (16x8, k x n):      reg0 (k = 2c..2c+1, n = r), reg1 (k = 2c+8.., n = r)
//   C (16x8, fp32):       c0,c1 (r, 2c..2c+1), c2,c3 (r+8, 2c..2c+1)
// with r = lane/4, c = lane%4.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace moda_cuda {

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

// 2^x as ONE MUFU.EX2: exp2f() compiles (without --use_fast_math) to ex2.approx.f32, which ptxas
// wraps in a compare and two predicated multiplies to produce denormal results. Softmax weights
// below 2^-126 of the row maximum do not matter, so the kernels flush them to zero (ftz); -inf
// still gives +0, NaN stays NaN.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void cp_async_16(void *smem_dst, const void *gmem_src) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem_dst)),
               "l"(gmem_src));
#endif
}
// L2 eviction-priority policies for cp_async_16_hint: data read once (depth rows) should not
// push out data many CTAs re-read (the sequence K/V of a head).
__device__ __forceinline__ uint64_t l2_policy_evict_first() {
  uint64_t pol = 0;
#if __CUDA_ARCH__ >= 800
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
#endif
  return pol;
}
__device__ __forceinline__ uint64_t l2_policy_evict_last() {
  uint64_t pol = 0;
#if __CUDA_ARCH__ >= 800
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(pol));
#endif
  return pol;
}
__device__ __forceinline__ void cp_async_16_hint(void *smem_dst, const void *gmem_src, uint64_t policy) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)),
               "l"(gmem_src), "l"(policy));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *smem_row) {
#if __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_row)));
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *smem_row) {
#if __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_row)));
#endif
}
// Stores four 8x8 b16 matrices (register i: matrix i in the C-fragment-like layout, each lane row
// lane/4, columns 2*(lane%4)..+1); lane l gives the address of row l%8 of matrix l/8 (sm_90+).
__device__ __forceinline__ void stmatrix_x4(uint32_t smem_addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(smem_addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
#endif
}
// Transposes an 8x8 b16 matrix held in the C-fragment-like layout (each lane: row lane/4,
// columns 2*(lane%4)..+1) into the same layout of its transpose.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y = 0;
#if __CUDA_ARCH__ >= 800
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
#endif
  return y;
}

template <typename T> struct MmaOp;
template <> struct MmaOp<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
  // m16n8k8: A (16x8) reg0 (r, 2c..2c+1), reg1 (r+8, 2c..); B (8x8, k x n) reg (k = 2c..2c+1, n = r);
  // C as m16n8k16.
  static __device__ __forceinline__ void run_k8(float (&c)[4], const uint32_t (&a)[2], uint32_t b) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b));
#endif
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
  }
};
template <> struct MmaOp<__half> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
  // m16n8k8: A (16x8) reg0 (r, 2c..2c+1), reg1 (r+8, 2c..); B (8x8, k x n) reg (k = 2c..2c+1, n = r);
  // C as m16n8k16.
  static __device__ __forceinline__ void run_k8(float (&c)[4], const uint32_t (&a)[2], uint32_t b) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b));
#endif
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
  }
};
// Accumulators [2*KS][4] (m16n8 tiles along n, or a warpgroup's m64nN accumulator: per warp the
// same layout) of columns 16ks..16ks+15 as the A fragment of k-step ks of the next MMA (P V in
// the forward, P^T dO and dS^T Q in the backward): the FlashAttention register reuse.
template <typename T, int KS>
__device__ __forceinline__ void pack_acc_as_a(const float (&c)[2 * KS][4], uint32_t (&a)[KS][4]) {
  using Mma = MmaOp<T>;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    a[ks][0] = Mma::pack(c[2 * ks][0], c[2 * ks][1]);
    a[ks][1] = Mma::pack(c[2 * ks][2], c[2 * ks][3]);
    a[ks][2] = Mma::pack(c[2 * ks + 1][0], c[2 * ks + 1][1]);
    a[ks][3] = Mma::pack(c[2 * ks + 1][2], c[2 * ks + 1][3]);
  }
}

// ---- row loaders (cp.async, 16-byte pieces) ----
// Copies `rows` rows of D elements (16-byte chunks) into smem rows of LDS elements (padded: no
// bank conflicts for ldmatrix), using `nthreads` threads starting at `tid`. row_ptr(r) returns
// the global row or nullptr for a row to zero-fill (padding never feeds NaN/Inf into an MMA).
template <int D, int LDS, typename T, typename RowPtr>
__device__ __forceinline__ void load_rows_async(T *smem, int rows, int tid, int nthreads,
                                                RowPtr row_ptr) {
  constexpr int CHUNKS = D / 8;
  for (int i = tid; i < rows * CHUNKS; i += nthreads) {
    int r = i / CHUNKS, c = (i % CHUNKS) * 8;
    const T *src = row_ptr(r);
    T *dst = smem + r * LDS + c;
    if (src) cp_async_16(dst, src + c);
    else *reinterpret_cast<uint4 *>(dst) = make_uint4(0, 0, 0, 0);
  }
}
// Same, with an L2 cache policy (l2_policy_evict_first / _last) when use_policy.
template <int D, int LDS, typename T, typename RowPtr>
__device__ __forceinline__ void load_rows_async_hint(T *smem, int rows, int tid, int nthreads, bool use_policy,
                                                     uint64_t policy, RowPtr row_ptr) {
  constexpr int CHUNKS = D / 8;
  for (int i = tid; i < rows * CHUNKS; i += nthreads) {
    int r = i / CHUNKS, c = (i % CHUNKS) * 8;
    const T *src = row_ptr(r);
    T *dst = smem + r * LDS + c;
    if (!src) *reinterpret_cast<uint4 *>(dst) = make_uint4(0, 0, 0, 0);
    else if (use_policy) cp_async_16_hint(dst, src + c, policy);
    else cp_async_16(dst, src + c);
  }
}

// ---- sm_90a warpgroup MMA (wgmma) support; the MMA wrappers themselves are in wgmma_ops.cuh ----
// 128-byte-swizzled tile layout (CUTLASS's Swizzle<3,4,3>, the layout wgmma descriptors with
// swizzle mode 1 read): a [rows x D] tile of 2-byte elements is stored as D/64 "atom columns",
// each [rows][64 elements] with 128-byte rows; 16-byte chunk j of row r sits at chunk j ^ (r % 8).
// The tile base must be 1024-byte aligned (the swizzle is applied to address bits 4-6 ^ 7-9).
// Returns the byte offset of element (r, c).
__device__ __forceinline__ uint32_t sw128_offset(int r, int c, int rows) {
  return (uint32_t)((c >> 6) * rows * 128 + r * 128 + ((((c >> 3) & 7) ^ (r & 7)) << 4) + (c & 7) * 2);
}
// Copies `rows` rows of D 2-byte elements into a 128-byte-swizzled tile at `tile` (sw128_offset
// with `rows` rows per atom column) by 16-byte cp.async, with threads tid, tid + nthreads, ...;
// row_ptr(r) gives the global row, or nullptr for a row to zero-fill. With use_policy, an L2 cache
// policy (l2_policy_evict_*) rides along.
template <int D, typename T, typename RowPtr>
__device__ __forceinline__ void load_rows_sw128_async(unsigned char *tile, int rows, int tid, int nthreads,
                                                      RowPtr row_ptr, bool use_policy = false,
                                                      uint64_t policy = 0) {
  constexpr int CHUNKS = D / 8;
  for (int i = tid; i < rows * CHUNKS; i += nthreads) {
    const int r = i / CHUNKS, c = i % CHUNKS;
    const T *src = row_ptr(r);
    unsigned char *dst = tile + sw128_offset(r, c * 8, rows);
    if (!src) *reinterpret_cast<uint4 *>(dst) = make_uint4(0, 0, 0, 0);
    else if (use_policy) cp_async_16_hint(dst, src + c * 8, policy);
    else cp_async_16(dst, src + c * 8);
  }
}
// Shared-memory matrix descriptor (PTX ISA "matrix descriptor format"): bits 0-13 start address
// >> 4, 16-29 leading-dimension byte offset >> 4, 32-45 stride-dimension byte offset >> 4,
// 49-51 base offset (0: atoms 1024-byte aligned), 62-63 swizzle mode (1 = 128 B).
// K-major operand (k contiguous; Q, K): lbo unused (16), sbo = 1024 (8 rows of 128 B); the k16
// step s of an atom starts at +32*s bytes. MN-major operand (n contiguous; V): lbo = byte distance
// between atom columns (64 n-elements each), sbo = 1024 (8 k-rows of 128 B).
__device__ __forceinline__ uint64_t wgmma_desc_sw128(uint32_t smem_addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((smem_addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) |
         ((uint64_t)((sbo >> 4) & 0x3FFF) << 32) | (1ull << 62);
}
// wgmma.fence: orders this thread's register/smem accesses before the next wgmma (needed before
// the first wgmma and whenever the accumulators were touched by ordinary instructions).
__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Pins accumulator registers at this point of the program: the compiler sees wgmma's asm write
// them at issue, while the hardware writes them until wgmma_wait; no copy or reuse of them may
// be scheduled in between (CUTLASS's warpgroup_fence_operand does the same).
template <int N>
__device__ __forceinline__ void wgmma_fence_operand(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
}
// dst[0] += a, dst[1] += b in global memory, no return value (one vector reduction on sm_90;
// dst 8-byte aligned). Float addition order across threads is not fixed: not deterministic.
__device__ __forceinline__ void red_add_f32x2(float *dst, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.add.global.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(a), "f"(b) : "memory");
#elif defined(__CUDA_ARCH__)
  atomicAdd(dst, a);
  atomicAdd(dst + 1, b);
#endif
}
// dst[0..3] += v in global memory (one vector reduction on sm_90; dst 16-byte aligned).
__device__ __forceinline__ void red_add_f32x4(float *dst, float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.add.global.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
#elif defined(__CUDA_ARCH__)
  atomicAdd(dst, a);
  atomicAdd(dst + 1, b);
  atomicAdd(dst + 2, c);
  atomicAdd(dst + 3, d);
#endif
}
// Shared-memory access by 32-bit shared address (smem_u32): one register per address instead of a
// 64-bit generic pointer, for loops where registers are the limit.
__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ float2 ld_shared_f32x2(uint32_t addr) {
  float2 v;
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "r"(addr) : "memory");
  return v;
}
// Makes this thread's generic-proxy shared-memory writes (st.shared, cp.async) visible to the
// async proxy that wgmma reads operands through; then a barrier publishes them to the warpgroup.
__device__ __forceinline__ void fence_proxy_async_smem() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

}  // namespace moda_cuda
