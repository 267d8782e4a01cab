// attn_bwd_common.cuh: what the backward kernels share: the per-row lse2/delta loads (the
// mma.sync kernels and the depth kernel, attn_bwd_depth.cu) and the per-step arithmetic of the
// Hopper dK/dV kernels (bwd_dkv_wgmma_kernel in attn_bwd_mma.cu, bwd_dkv_wgmma_ws_kernel in
// attn_bwd_wgmma.cu).
#pragma once

#include <math.h>
#include <stdint.h>

#include "moda_cuda_internal.cuh"
#include "mma_helpers.cuh"
#include "wgmma_ops.cuh"

namespace moda_cuda {

// 4-byte cp.async (cp.async.ca: the .cg form takes 16 bytes only): the per-row lse2 / delta of
// the next query block land with its Q/dO rows, no thread stalls on a plain load.
__device__ __forceinline__ void cp_async_4(void *smem_dst, const void *gmem_src) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(smem_dst)), "l"(gmem_src));
#endif
}

// lse2 and delta of packed rows Rq .. Rq + rows - 1 into smem by 4-byte cp.async, so they land
// with the block's Q/dO rows; rows at or past R_end get lse2 = +inf (P = 0 there, no further mask).
__device__ __forceinline__ void load_row_stats(float *s_lse, float *s_delta, const float *lse2_bg,
                                               const float *delta_bg, int64_t Rq, int64_t R_end, int rows,
                                               int tid, int nthreads) {
  for (int r = tid; r < rows; r += nthreads) {
    const int64_t R = Rq + r;
    if (R < R_end) {
      cp_async_4(s_lse + r, lse2_bg + R);
      cp_async_4(s_delta + r, delta_bg + R);
    } else {
      s_lse[r] = INFINITY;
      s_delta[r] = 0.f;
    }
  }
}

// One element of P^T and dS^T, the arithmetic every backward kernel shares: P = exp2(s *
// scale_log2 - lse2) where the key is visible, else 0; dS = P (dp - delta).
__device__ __forceinline__ void p_ds(float s, float dp, float lse2, float delta, float scale_log2, bool vis, float &pe,
                                     float &ds) {
  pe = vis ? exp2_ftz(s * scale_log2 - lse2) : 0.f;
  ds = pe * (dp - delta);
}
// The causal mask of a step without a division per element: packed query row Rq + col (token
// (Rq + col) / G) sees key `key` iff key <= key_lim + (Rq + col) / G (key_lim = S - T), i.e. iff
// col >= causal_col_min(key, ...), as floor(x / G) >= m <=> x >= m G. (A division per element,
// behind a per-element branch on the run-time mask flag, was 2/3 of the v9 loop's instructions.)
template <typename I>
__device__ __forceinline__ I causal_col_min(I key, I key_lim, I Rq, I G) {
  const I m = key - key_lim;
  return (m > 0 ? m : 0) * G - Rq;
}
// The first visible column of this lane's two key rows key_pos[0..1] (0 for all without MASK); I:
// int64_t, or int where the caller keeps indices in 32 bits for registers.
template <bool MASK, typename I>
__device__ __forceinline__ void causal_col_mins(I (&col_min)[2], const I (&key_pos)[2], I key_lim, I Rq, I G) {
  col_min[0] = col_min[1] = 0;
  if constexpr (MASK) {
    col_min[0] = causal_col_min(key_pos[0], key_lim, Rq, G);
    col_min[1] = causal_col_min(key_pos[1], key_lim, Rq, G);
  }
}

// P^T = exp2(S^T * scale_log2 - lse2) and dS^T = P^T (dP^T - delta), in place on a warp's 16 key
// rows x 8*NT query columns (the wgmma m64 / mma.sync m16n8 accumulator layout: element e of tile
// nt is key row qr + 8*(e >> 1), column nt*8 + 2*qc + (e & 1)), with the columns' lse2 and delta
// in shared memory. With MASK (causal), key key_pos[e >> 1] is visible to column col where
// key_pos <= key_lim + (Rq + col) / G (key_lim = S - T; Rq = the step's first packed row).
// MASK is a template parameter so that unmasked steps carry no per-element mask code; callers
// branch once per step.
template <int NT, bool MASK>
__device__ __forceinline__ void bwd_p_ds_causal(float (&s)[NT][4], float (&dp)[NT][4], const float *lse_s,
                                                const float *delta_s, int qc, float scale_log2,
                                                const int64_t (&key_pos)[2], int64_t key_lim, int64_t Rq, int64_t G) {
  int64_t col_min[2];
  causal_col_mins<MASK>(col_min, key_pos, key_lim, Rq, G);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    // this lane's two columns' lse2 / delta, one 8-byte smem load each
    const float2 l2 = *reinterpret_cast<const float2 *>(lse_s + nt * 8 + 2 * qc);
    const float2 dl = *reinterpret_cast<const float2 *>(delta_s + nt * 8 + 2 * qc);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int col = nt * 8 + 2 * qc + (e & 1);
      const bool vis = !MASK || col >= col_min[e >> 1];
      float pe, ds;
      p_ds(s[nt][e], dp[nt][e], (e & 1) ? l2.y : l2.x, (e & 1) ? dl.y : dl.x, scale_log2, vis, pe, ds);
      s[nt][e] = pe;
      dp[nt][e] = ds;
    }
  }
}

// This warp's dS^T rows into a 128-byte-swizzled dS^T tile (element (key, row) at
// sw128_offset(key, row, tile_rows)): key rows key0 + qr and key0 + qr + 8, columns nt*8 + 2*qc
// (+1), taken from the A fragments da of dK += dS^T Q (da[nt/2][2*(nt&1) + h2] is the pair of key
// row key0 + qr + 8*h2). Keys >= S enter as 0: their K rows are zero, but dS there is -P*delta
// with P = exp2(-lse2), which can overflow fp16 to inf, and inf * 0 = NaN.
template <int NT>
__device__ __forceinline__ void store_ds_t(unsigned char *tile, int tile_rows, int key0, const uint32_t (&da)[NT / 2][4],
                                           const int64_t (&key_pos)[2], int64_t S, int qr, int qc) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int h2 = 0; h2 < 2; ++h2)
      *reinterpret_cast<uint32_t *>(tile + sw128_offset(key0 + qr + 8 * h2, nt * 8 + 2 * qc, tile_rows)) =
          key_pos[h2] < S ? da[nt / 2][2 * (nt & 1) + h2] : 0u;
}

// bwd_p_ds_causal and the tile stores of P^T and dS^T in one pass that only reads the S^T / dP^T
// accumulators: P^T into pt_tile (key rows pt_key0 + ...), dS^T into ds_tile (ds_key0 + ...),
// both sw128 tiles of key rows x 64 query columns (128-byte rows; pt_key0, ds_key0 multiples of
// 8), keys >= S as 0. The v9 dK/dV loop issues the next step's S/dP into the same registers
// while the previous dV/dK still runs; ptxas serialises wgmmas whose accumulators ordinary
// instructions define inside such a window (C7515), so nothing here writes them. Indices in 32
// bits (the caller guarantees S and T*G below 2^31) and shared memory by 32-bit address (lse_s,
// delta_s: the columns' float stats; the tiles' bases): fewer registers in a loop that keeps two
// steps' accumulators. MASK as in bwd_p_ds_causal.
template <typename T, int NT, bool MASK>
__device__ __forceinline__ void bwd_p_ds_store_t(const float (&s)[NT][4], const float (&dp)[NT][4], uint32_t lse_s,
                                                 uint32_t delta_s, int qr, int qc, float scale_log2,
                                                 const int (&key_pos)[2], int key_lim, int Rq, int G, int S,
                                                 uint32_t pt_tile, int pt_key0, uint32_t ds_tile, int ds_key0) {
  int col_min[2];
  causal_col_mins<MASK>(col_min, key_pos, key_lim, Rq, G);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const float2 l2 = ld_shared_f32x2(lse_s + (nt * 8 + 2 * qc) * 4);
    const float2 dl = ld_shared_f32x2(delta_s + (nt * 8 + 2 * qc) * 4);
#pragma unroll
    for (int h2 = 0; h2 < 2; ++h2) {
      float pe[2], ds[2];
#pragma unroll
      for (int e1 = 0; e1 < 2; ++e1) {
        const int col = nt * 8 + 2 * qc + e1;
        const bool vis = !MASK || col >= col_min[h2];
        p_ds(s[nt][2 * h2 + e1], dp[nt][2 * h2 + e1], e1 ? l2.y : l2.x, e1 ? dl.y : dl.x, scale_log2, vis, pe[e1], ds[e1]);
      }
      // sw128_offset(key0 + qr + 8*h2, nt*8 + 2*qc) with key0 % 8 == 0: one offset for both tiles
      const uint32_t off = (uint32_t)((qr + 8 * h2) * 128 + ((nt ^ qr) << 4) + qc * 4);
      const bool in = key_pos[h2] < S;
      st_shared_u32(pt_tile + pt_key0 * 128 + off, in ? MmaOp<T>::pack(pe[0], pe[1]) : 0u);
      st_shared_u32(ds_tile + ds_key0 * 128 + off, in ? MmaOp<T>::pack(ds[0], ds[1]) : 0u);
    }
  }
}

// dQ_step = dS K over NKEYS keys for the warpgroup's 64 query rows (SS wgmma m64n64: A = the dS^T
// tile read MN-major, B = the K tile read MN-major, 16 key rows = 2048 bytes per k16 step in
// both), waited for (with every wgmma before it). The caller has made the dS^T tile visible
// (fence.proxy.async + barrier).
// dq_step_issue: the same wgmmas issued and committed, not waited for (the caller waits).
template <typename T, int NKEYS>
__device__ __forceinline__ void dq_step_issue(uint32_t ds_base, uint32_t k_base, float (&acc_dq)[8][4]) {
  wgmma_fence_operand(acc_dq);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < NKEYS / 16; ++kk)
    WgmmaSS<T, 64, 1, 1>::run(acc_dq, wgmma_desc_sw128(ds_base + kk * 16 * 128, 64 * 128, 1024),
                              wgmma_desc_sw128(k_base + kk * 16 * 128, 64 * 128, 1024), kk > 0 ? 1 : 0);
  wgmma_commit();
}
template <typename T, int NKEYS>
__device__ __forceinline__ void dq_step(uint32_t ds_base, uint32_t k_base, float (&acc_dq)[8][4]) {
  dq_step_issue<T, NKEYS>(ds_base, k_base, acc_dq);
  wgmma_wait<0>();
  wgmma_fence_operand(acc_dq);
}

// dq_reduce: this warp's rows R and R + 8 of a dq_step result (R = its first row + qr) added to
// the float32 accumulator acc_bg [rows][64] by vector reductions; rows >= R_end are skipped.
// dq_step_reduce: dq_step, then dq_reduce.
// RED4 (the default, MODA_CUDA_BWD_DQ_RED4): half as many reductions, 4 floats each: lanes qc and qc ^ 1
// swap halves (one shuffle pair per 8 columns), so the even lane holds 4 adjacent columns of row
// R and the odd lane the same columns of row R + 8 (acc_bg 16-byte aligned: rows of 64 floats).
template <bool RED4>
__device__ __forceinline__ void dq_reduce(const float (&acc_dq)[8][4], float *acc_bg, int64_t R, int64_t R_end, int qc) {
  if constexpr (RED4) {
    const bool odd = qc & 1;
    const int64_t row = R + (odd ? 8 : 0);
    const int col = 2 * (qc & ~1);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      // the even lane gives away row R + 8's pair, the odd lane row R's
      const float x = __shfl_xor_sync(0xffffffffu, odd ? acc_dq[j][0] : acc_dq[j][2], 1);
      const float y = __shfl_xor_sync(0xffffffffu, odd ? acc_dq[j][1] : acc_dq[j][3], 1);
      if (row < R_end) {
        if (odd) red_add_f32x4(acc_bg + row * 64 + j * 8 + col, x, y, acc_dq[j][2], acc_dq[j][3]);
        else red_add_f32x4(acc_bg + row * 64 + j * 8 + col, acc_dq[j][0], acc_dq[j][1], x, y);
      }
    }
  } else {
#pragma unroll
    for (int h2 = 0; h2 < 2; ++h2) {
      if (R + 8 * h2 < R_end) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
          red_add_f32x2(acc_bg + (R + 8 * h2) * 64 + j * 8 + 2 * qc, acc_dq[j][2 * h2], acc_dq[j][2 * h2 + 1]);
      }
    }
  }
}
template <typename T, int NKEYS, bool RED4 = false>
__device__ __forceinline__ void dq_step_reduce(uint32_t ds_base, uint32_t k_base, float *acc_bg, int64_t R, int64_t R_end,
                                               int qc) {
  float acc_dq[8][4];
  dq_step<T, NKEYS>(ds_base, k_base, acc_dq);
  dq_reduce<RED4>(acc_dq, acc_bg, R, R_end, qc);
}

// This lane's two rows R and R + 8 (R = its warp's first row + qr) of a D-column float32
// accumulator (the wgmma m64 / mma.sync C layout: columns j*8 + 2*qc, +1) stored to buf_bg
// [rows][D]; rows >= R_end are skipped. The dQ kernels' unscaled sequence part for the depth kernel.
template <int D>
__device__ __forceinline__ void store_acc_rows_f32(const float (&acc)[D / 8][4], float *buf_bg, int64_t R, int64_t R_end,
                                                   int qc) {
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    if (R + 8 * h2 >= R_end) continue;
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      *reinterpret_cast<float2 *>(buf_bg + (R + 8 * h2) * D + j * 8 + 2 * qc) = make_float2(acc[j][2 * h2], acc[j][2 * h2 + 1]);
  }
}

// Deterministic dQ by ordered adds (MODA_CUDA_BWD_ORDERED_DQ=1): key blocks add their dQ_step to a
// row block of the float32 accumulator one after another, in a fixed key-block order, guarded by
// one counter per (batch, KV head, 64-row block). The caller orders its grid so that a CTA only
// ever waits for CTAs launched before it (FlashAttention-3's deterministic backward does the same).
__device__ __forceinline__ void sem_wait_eq(const int *sem, int value) {
  for (;;) {
    int v;
    asm volatile("ld.global.acquire.gpu.b32 %0, [%1];\n" : "=r"(v) : "l"(sem) : "memory");
    if (v == value) return;
    __nanosleep(64);
  }
}
__device__ __forceinline__ void sem_release(int *sem, int value) {
  __threadfence();
  asm volatile("st.global.release.gpu.b32 [%0], %1;\n" ::"l"(sem), "r"(value) : "memory");
}
// This warp's rows R and R + 8 of acc_dq (dq_step's layout) added to acc_bg by plain
// read-modify-writes in L2 (.cg): the caller holds the row block's turn. The first turn (first)
// stores instead, so the accumulator needs no zeroing before.
__device__ __forceinline__ void dq_add_ordered(const float (&acc_dq)[8][4], float *acc_bg, int64_t R, int64_t R_end,
                                               int qc, bool first) {
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    if (R + 8 * h2 < R_end) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float2 *ptr = reinterpret_cast<float2 *>(acc_bg + (R + 8 * h2) * 64 + j * 8 + 2 * qc);
        float2 v = first ? make_float2(0.f, 0.f) : __ldcg(ptr);
        v.x += acc_dq[j][2 * h2];
        v.y += acc_dq[j][2 * h2 + 1];
        __stcg(ptr, v);
      }
    }
  }
}

// The epilogue of a dK/dV kernel: this lane's two key rows key_pos[h2] (< S) of dk = scale * acc_dk
// and dv = acc_dv, from a 64-column accumulator in the wgmma m64 / mma.sync m16n8 layout (columns
// j*8 + 2*qc, +1), as 4-byte pairs into the [B, S, Hk, 64] outputs of KV head g, batch b.
template <typename T>
__device__ __forceinline__ void store_dk_dv(const moda_attn_params &p, const float (&acc_dk)[8][4],
                                            const float (&acc_dv)[8][4], const int64_t (&key_pos)[2], int64_t b,
                                            int64_t g, int qc) {
  using Mma = MmaOp<T>;
  T *dkb = static_cast<T *>(p.dk);
  T *dvb = static_cast<T *>(p.dv);
  const float scale = (float)p.scale;
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    const int64_t i = key_pos[h2];
    if (i >= p.S) continue;
    T *dkr = dkb + b * p.dk_stride[0] + i * p.dk_stride[1] + g * p.dk_stride[2];
    T *dvr = dvb + b * p.dv_stride[0] + i * p.dv_stride[1] + g * p.dv_stride[2];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      *reinterpret_cast<uint32_t *>(dkr + j * 8 + 2 * qc) = Mma::pack(acc_dk[j][2 * h2] * scale, acc_dk[j][2 * h2 + 1] * scale);
      *reinterpret_cast<uint32_t *>(dvr + j * 8 + 2 * qc) = Mma::pack(acc_dv[j][2 * h2], acc_dv[j][2 * h2 + 1]);
    }
  }
}

}  // namespace moda_cuda
