// tma_helpers.cuh: Hopper (sm_90a) bulk tensor copies (TMA), shared-memory mbarriers, named
// barriers and register reallocation, as thin PTX wrappers; and the host side that encodes a
// K or V tensor ([B, S, H, d] with strides) as a TMA tensor map.
//
// Why: a warp-specialised kernel (FlashAttention-3's layout) lets one producer warp move K/V
// tiles with TMA while two consumer warpgroups compute; the copy engine writes the same
// 128-byte-swizzled layout that sw128_offset() describes and wgmma descriptors read, zero-fills
// rows past the tensor's end, and signals completion on an mbarrier (bytes counted), so the
// consumers need no cp.async address arithmetic and no block-wide barriers.
// Device wrappers compile to nothing outside the sm_90a pass (their callers trap there).
#pragma once

#include <cuda.h>  // CUtensorMap and its enums (types only: the encoder is fetched at run time)
#include <stdint.h>

#include "mma_helpers.cuh"

namespace moda_cuda {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MODA_SM90A_BODY(...) __VA_ARGS__
#else
#define MODA_SM90A_BODY(...)
#endif

// ---- mbarriers (64-bit, in shared memory) ----
__device__ __forceinline__ void mbar_init(uint64_t *bar, uint32_t count) {
  MODA_SM90A_BODY(asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");)
}
// Makes the initialisations visible to the async proxy (TMA) and the other threads; then a
// __syncthreads publishes them.
__device__ __forceinline__ void mbar_fence_init() {
  MODA_SM90A_BODY(asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");)
}
// One arrival that also announces `bytes` more to come by complete_tx (the producer, before its
// TMA copies into the stage).
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t *bar, uint32_t bytes) {
  MODA_SM90A_BODY(asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
                               : "memory");)
}
__device__ __forceinline__ void mbar_arrive(uint64_t *bar) {
  MODA_SM90A_BODY(asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");)
}
// Waits until the barrier's phase with parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint64_t *bar, uint32_t parity) {
  MODA_SM90A_BODY(
    uint32_t done = 0;
    do {
      asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                   : "=r"(done) : "r"(smem_u32(bar)), "r"(parity) : "memory");
    } while (!done);)
}

// ---- TMA ----
// A 4-d tile of `map` at element coordinates (c0 innermost .. c3) into shared memory at `dst`
// (1024-byte aligned for the 128-byte swizzle); completion (bytes) is signalled on `bar`.
__device__ __forceinline__ void tma_load_4d(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1, int c2,
                                            int c3) {
  MODA_SM90A_BODY(asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(bar))
      : "memory");)
}
// The same for a 5-d map (packed query rows, make_packed_rows_tensor_map).
__device__ __forceinline__ void tma_load_5d(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1, int c2,
                                            int c3, int c4) {
  MODA_SM90A_BODY(asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5, %6}], [%7];\n" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(smem_u32(bar))
      : "memory");)
}
// tma_load_5d with an L2 cache policy (l2_policy_evict_first / _last of mma_helpers.cuh).
__device__ __forceinline__ void tma_load_5d_hint(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1,
                                                 int c2, int c3, int c4, uint64_t policy) {
  MODA_SM90A_BODY(asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, %3, %4, %5, %6}], [%7], %8;\n" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(smem_u32(bar)), "l"(policy)
      : "memory");)
}
// The reverse: a 5-d box of shared memory at `src` (the layout tma_load_5d writes) to `map` at
// the coordinates; parts of the box outside the tensor are not written. Completion by bulk groups:
// bulk_commit() closes this thread's group, bulk_wait_read<N>() waits until all but the newest N
// groups have read their shared memory (the source may then be overwritten).
__device__ __forceinline__ void tma_store_5d(const CUtensorMap *map, const void *src, int c0, int c1, int c2, int c3,
                                             int c4) {
  MODA_SM90A_BODY(asm volatile(
      "cp.async.bulk.tensor.5d.global.shared::cta.bulk_group [%0, {%1, %2, %3, %4, %5}], [%6];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(smem_u32(src))
      : "memory");)
}
// tma_store_5d with an L2 cache policy.
__device__ __forceinline__ void tma_store_5d_hint(const CUtensorMap *map, const void *src, int c0, int c1, int c2,
                                                  int c3, int c4, uint64_t policy) {
  MODA_SM90A_BODY(asm volatile(
      "cp.async.bulk.tensor.5d.global.shared::cta.bulk_group.L2::cache_hint [%0, {%1, %2, %3, %4, %5}], [%6], %7;\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(smem_u32(src)), "l"(policy)
      : "memory");)
}
__device__ __forceinline__ void bulk_commit() {
  MODA_SM90A_BODY(asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");)
}
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  MODA_SM90A_BODY(asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");)
}
template <int N>
__device__ __forceinline__ void bulk_wait() {  // ... and written to global memory
  MODA_SM90A_BODY(asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");)
}
// A 1-d bulk copy of `bytes` (a multiple of 16; both addresses 16-byte aligned) from global `src`
// to shared `dst`, completion (bytes) signalled on `bar`.
__device__ __forceinline__ void bulk_load(void *dst, const void *src, uint32_t bytes, uint64_t *bar) {
  MODA_SM90A_BODY(asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                                   smem_u32(dst)),
                               "l"(src), "r"(bytes), "r"(smem_u32(bar))
                               : "memory");)
}
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap *map) {
  MODA_SM90A_BODY(asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");)
}

// ---- named barriers (ids 1..15; 0 is __syncthreads) and register reallocation ----
__device__ __forceinline__ void named_bar_sync(int id, int nthreads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(nthreads) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int nthreads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(nthreads) : "memory");
}
// Ping-pong of the two consumer warpgroups' wgmma issues (FlashAttention-3's warp-scheduler
// barriers; the backward's v11 kernel by default, v10 under MODA_CUDA_BWD_PP=2): their issue points
// alternate, warpgroup 0 first, so that one warpgroup's softmax runs under the other's GEMMs instead of both waiting on
// their own (ncu, session 22: WARPGROUP.DEPBAR was the top stall of v10 and v11). Each issue point
// is bracketed by before() and after(last). Named barriers bar0 (warpgroup 0 waits for 1's issue)
// and bar0 + 1 (1 waits for 0's); both warpgroups must have the same number m of issue points:
// warpgroup 0 waits at m - 1 of them and arrives m times, warpgroup 1 waits m times and arrives
// m - 1 times (no one would wait for the arrive after its last point).
struct PingPong {
  int bar0, wg;
  bool first = true;
  __device__ __forceinline__ void before() {
    if (wg == 1 || !first) named_bar_sync(bar0 + wg, 256);
    first = false;
  }
  __device__ __forceinline__ void after(bool last) {
    if (!(wg == 1 && last)) named_bar_arrive(bar0 + 1 - wg, 256);
  }
};

// Every thread of the warpgroup must execute these (sync.aligned).
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  MODA_SM90A_BODY(asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));)
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  MODA_SM90A_BODY(asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));)
}

#undef MODA_SM90A_BODY

// ---- host ----
// Encodes x = [B, S, H, d] (element strides xs[0] (batch), xs[1] (row), xs[2] (head), d
// contiguous; 2-byte elements) as a 4-d TMA map over (d, H, S, B) with box {64, 1, box_rows, 1}
// and the 128-byte swizzle: one box is one 64-column atom column of a sw128 tile of box_rows
// rows (d = 128: two boxes, columns 0 and 64). Rows past S are zero-filled by the copy engine.
// Returns 0, or a MODA_ERR_* status with moda_set_error's message (e.g. strides not multiples of
// 16 bytes, base not 16-byte aligned, no driver entry point): the caller then keeps the
// non-TMA kernel. attn_fwd_wgmma.cu.
int make_rows_tensor_map(CUtensorMap *map, const void *base, int64_t B, int64_t S, int64_t H, int d,
                         const int64_t xs[3], int box_rows);
// Packed query rows (SPEC section 4: R = t*G + i for KV head g reads q[b, t, g*G + i, :]) of
// x = [B, T, Hk*G, d] (element strides xs = {batch, token, head}) as a 5-d TMA map over
// (d, i < G, t, g, b) with box {64, G, box_rows/G, 1, 1}: one box is box_rows consecutive packed
// rows starting at a multiple of G (coordinates (64*col_box, 0, R0/G, g, b)), one sw128 atom
// column of a box_rows-row tile; tokens past T are zero-filled. G must divide box_rows.
// Returns 0 or MODA_ERR_UNSUPPORTED with a message. (The warp-specialised dK/dV kernel, attn_bwd_wgmma.cu.)
int make_packed_rows_tensor_map(CUtensorMap *map, const void *base, int64_t B, int64_t T, int64_t Hk, int64_t G, int d,
                                const int64_t xs[3], int box_rows);
// A depth tensor x = [B, T, L_max, Hk, d] (element strides xs = {batch, token, slot, head}, d = 64
// contiguous) read for its first L slots, as a 5-d map over (d, Hk, L, T, B) with box {64, 1,
// box_slots, box_tokens, 1} and the 128-byte swizzle: one box is box_tokens tokens' box_slots
// consecutive slots of one KV head, box_tokens * box_slots rows of 128 bytes (token-major); slots
// past L and tokens past T are zero-filled on loads and skipped on stores. nullptr or why not.
// (The TMA depth backward, attn_bwd_depth_tma.cu.)
const char *encode_depth_map(CUtensorMap *map, const void *base, int64_t B, int64_t T, int64_t L, int64_t Hk,
                             const int64_t xs[4], int box_slots, int box_tokens);
// The same encodings without the error channel: nullptr, or why the tensor cannot be a TMA map
// (for launchers that only probe: a refusal there means the non-TMA kernel runs, not an error).
const char *encode_rows_map(CUtensorMap *map, const void *base, int64_t B, int64_t S, int64_t H, int d,
                            const int64_t xs[3], int box_rows);
const char *encode_packed_rows_map(CUtensorMap *map, const void *base, int64_t B, int64_t T, int64_t Hk, int64_t G,
                                   int d, const int64_t xs[3], int box_rows);

}  // namespace moda_cuda
