// attn_fwd_common.cuh: device code shared by the forward kernels (attn_fwd_mma.cu, mma.sync on
// sm_80+, and attn_fwd_wgmma.cu, wgmma on sm_90a): fast division, warp reductions, row loads, and
// the depth phase (FwdDepthRing), which both run per warp on 16-row m-tiles.
#pragma once

#include <math.h>

#include "moda_cuda_internal.cuh"
#include "mma_helpers.cuh"

namespace moda_cuda {

// n / d for 0 <= n < 2^31 and a run-time d >= 1, by a multiply-high and a shift (the method of
// CUTLASS's FastDivmod: mul = ceil(2^p / d), p = 31 + ceil(log2 d)). Checked exhaustively for
// d < 3000 and n < 200000 and sampled up to n = 2^31 - 1 for d up to 2^30 (host copy).
struct FastDivU31 {
  uint32_t d, mul, shr;
  __device__ __forceinline__ void init(uint32_t d_) {
    d = d_; mul = 0; shr = 0;
    if (d_ > 1) {
      const int l = 32 - __clz((int)(d_ - 1));  // ceil(log2 d)
      const int p = 31 + l;
      mul = (uint32_t)(((1ull << p) + d_ - 1) / d_);
      shr = (uint32_t)(p - 32);
    }
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return d == 1 ? n : __umulhi(n, mul) >> shr; }
};

__device__ __forceinline__ float warp_quad_max(float x) {  // over the 4 lanes of a quad
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float warp_quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
// Over the 8 lanes that share lane%4 (the rows of a C fragment column).
__device__ __forceinline__ float warp_col_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 4));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 8));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 16));
}
__device__ __forceinline__ float warp_col_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 4);
  x += __shfl_xor_sync(0xffffffffu, x, 8);
  return x + __shfl_xor_sync(0xffffffffu, x, 16);
}

// Forward flags (kernel argument; MODA_CUDA_FWD_FLAGS overrides the default, for measurements):
// bit 0: depth rows loaded with L2 evict_first (each is read by one CTA, once), so the stream
//        of depth rows (L times the size of K/V) does not evict the sequence K/V that every
//        tile of a head re-reads; bit 1: sequence K/V loaded with L2 evict_last.
// bit 2: the unfolded softmax arithmetic of v3 (FMUL + FADD instead of one FFMA), for A/B timing.
// bit 4: never the wgmma kernel (sm_90a), i.e. the mma.sync kernel everywhere, for A/B timing.
// bit 5: the warp-specialised wgmma kernel (d = 64: TMA producer warp, two ping-ponging consumer
//        warpgroups; attn_fwd_wgmma.cu) where the wgmma kernel runs. On by default since session 6
//        (1.45-1.69x the v6 wgmma kernel on the paper shapes); MODA_CUDA_FWD_FLAGS=1 turns it off.
// bit 3: with bit 5, three consumer warpgroups (192 rows per CTA) instead of two where the
//        sequence part dominates (fwd_ws_three_wg); with MODA_CUDA_WGMMA=2 on every shape. In the
//        default flags since session 9 (1.27x the two-warpgroup kernel at T=16384, 1.22x at G=16,
//        H100); MODA_CUDA_FWD_FLAGS=33 keeps two everywhere.
// bit 6: the warp-specialised kernel takes its tiles in heavy-first order only, not alternating
//        heavy and light (for A/B; session 9).
// bit 7: in the warp-specialised kernel, every other CTA (by linear block index) runs its
//        sequence phase first and merges the depth phase in after, so that equal-length CTAs
//        (non-causal: DeiT) do not all stream their depth rows at the same time. In the default
//        flags since session 13: H100, GPU time, two rounds, forward ms without / with: DeiT-Tiny
//        0.195 0.196 / 0.185 0.186, LM-64 0.435 0.433 / 0.429 0.429, T=4096 0.496 0.498 / 0.492
//        0.487, DeiT-Tiny-64 0.604 0.603 / 0.600 0.602.
// bit 8: in the three-warpgroup ws kernel, where the CTA's keys fit the two K/V stages (at most
//        256: DeiT), the phases are staggered by warpgroup inside the CTA instead: warpgroups 0
//        and 2 run their depth phase first, in two ring slots beside the K/V stages, while
//        warpgroup 1 runs its sequence phase, then its depth phase in warpgroup 0's slot. So one
//        CTA streams depth rows and does tensor-core work at the same time. Correct (checker,
//        sanitizer, spec on the H100) but slower, so not in the default flags: forward, two
//        rounds, without / with: DeiT-Tiny 0.176 0.177 / 0.195 0.193 ms, DeiT-Tiny-64 0.618
//        0.618 / 0.641 0.640 (session 14). For A/B (MODA_CUDA_FWD_FLAGS=425).
// bit 12: with bit 5 and L > 0, the split forward (fwd_wgmma_split_kernel): two depth
//        warpgroups stream the depth rows while two warpgroups run the sequence part, merged by
//        log-sum-exp at the end. Correct (checker, sanitizer, spec) but slower, so not in the
//        default flags: H200, forward ms, two rounds, ws3 / split: DeiT-Tiny 0.173 0.173 / 0.188
//        0.187, DeiT-Tiny-64 0.463 0.464 / 0.501 0.501, LM-64 0.341 0.341 / 0.347 0.348 (session
//        19). For A/B (MODA_CUDA_FWD_FLAGS=4265).
// bit 13: the depth rings of the split kernel (with bit 12) or of the three-warpgroup ws kernel
//        fed by TMA (FwdDepthTmaRing, session 19). In the default flags since session 20: forward
//        ms, GPU time, two rounds, cp.async ring / TMA ring: H100 DeiT-Tiny 0.174 0.174 / 0.171
//        0.171, DeiT-Tiny-64 0.594 0.594 / 0.574 0.574; H200 LM-64 0.342 0.342 / 0.303 0.303,
//        paper T=4096 0.469 0.468 / 0.441 0.441, T=16384 4.888 4.888 / 4.789 4.788.
//        MODA_CUDA_FWD_FLAGS=169 turns it off; 12457 selects the split kernel with it.
// bit 14: with bit 13, where an 8-row group spans several tokens (G < 8), each TMA chunk is 8
//        slots of two consecutive tokens instead of 16 slots of one: DeiT's L = 22 takes 3 chunks
//        per two tokens instead of 4 (48 rows of work for 44, not 64). Only where that saves
//        chunks, L % 16 in 1..8 (fwd_depth_tma_flags clears it elsewhere). In the default flags
//        since session 21: H100, GPU time, two rounds, one process, forward / f+b ms, without /
//        with: DeiT-Tiny 0.175 0.175 / 0.576 0.576 vs 0.162 0.162 / 0.564 0.564; where it saves
//        nothing it cost a little (DeiT-Tiny-64, L = 126: 0.588 0.587 vs 0.591 0.591), hence the
//        rule. MODA_CUDA_FWD_FLAGS=8361 turns it off.
constexpr int FWD_DEPTH_EVICT_FIRST = 1, FWD_KV_EVICT_LAST = 2, FWD_NO_FOLD = 4, FWD_WS_3WG = 8, FWD_NO_WGMMA = 16,
              FWD_WGMMA_WS = 32, FWD_TILES_HEAVY_FIRST = 64, FWD_WS_ALT_PHASES = 128,
              FWD_WS_STAGGER = 256, FWD_WS_SPLIT = 4096, FWD_DEPTH_TMA_RING = 8192, FWD_DEPTH_TMA_PAIRS = 16384;
constexpr int FWD_FLAGS_MASK = FWD_DEPTH_EVICT_FIRST | FWD_KV_EVICT_LAST | FWD_NO_FOLD | FWD_WS_3WG | FWD_NO_WGMMA |
                               FWD_WGMMA_WS | FWD_TILES_HEAVY_FIRST | FWD_WS_ALT_PHASES | FWD_WS_STAGGER |
                               FWD_WS_SPLIT | FWD_DEPTH_TMA_RING | FWD_DEPTH_TMA_PAIRS;
constexpr int FWD_FLAGS_DEFAULT =
    FWD_DEPTH_EVICT_FIRST | FWD_WGMMA_WS | FWD_WS_3WG | FWD_WS_ALT_PHASES | FWD_DEPTH_TMA_RING | FWD_DEPTH_TMA_PAIRS;

// ---- depth phase (L > 0), one warp, in the TRANSPOSED orientation ----
// The warp owns NGRP groups of 8 packed rows (rows Rw .. Rw + 8*NGRP - 1). For each group (8
// columns) it streams the depth rows those columns can see (token visibility: the L rows of the
// group's tokens; chunk visibility: the rows of the tokens of their chunks) and computes
//     S^T[16 x 8] = kd_chunk[16 x d] * q_group^T[d x 8]      (A = kd, B = q rows)
//     O^T[d x 8] += vd_chunk^T[d x 16] * P[16 x 8]            (A = vd^T, B = P via movmatrix)
// with an online softmax per column. No dense (rows x rows*L) tile: for G >= 8 nothing is
// masked; for G < 8 the 8 columns hold 8/G tokens and the waste is (8/G - 1)/(8/G).
// The chunks of all the warp's groups form one flattened sequence of RDL-row chunks (group 0's,
// then group 1's, ...) streamed through RST smem stages: chunk c lives in stage c % RST, and while
// chunk c is computed chunks c+1 .. c+RST-1 are in flight. The loader cursor (ld_*) runs RST-1
// chunks ahead of the compute loop; every issue commits one cp.async group (empty past the end),
// so "chunk c has landed" is always cp.async.wait_group RST-2. Index math in 32 bits (the
// kernels' *_supported bound a group's visible depth rows below 2^31 - 64), the division by L by
// multiply-high. Each group's (O, m, l) goes through an 8-row scratch into the row state of the
// lanes that own those rows, in the mma.sync C layout: row r = 2*mt + half is this lane's row
// mt*16 + lane/4 + 8*half, acc_o[mt][j][2*half + e] its column 8j + 2*(lane%4) + e.
// Usage: init(); prologue() (issues the first RST-1 chunks; the caller's own cp.async group, e.g.
// the Q tile, committed before it is then "wait_group RST-1"); after a barrier that publishes the
// Q tile, run(). Shared memory: ring RING_ELEMS(1 warp) elements and SCRATCH_FLOATS floats.
template <typename T, int D, int NGRP, int RST, int LDS, int RSD>
struct FwdDepthRing {
  static constexpr int RDL = 16;
  static constexpr int CH = D / 8, RPP = 32 / CH, NLR = RDL / RPP;  // 16-byte pieces per row; rows per warp pass; rows per lane
  static constexpr int KSTEPS = D / 16;
  static constexpr int WARP_RING_ELEMS = RST * 2 * RDL * LDS;       // kd + vd stages of one warp
  static constexpr int WARP_SCRATCH_FLOATS = 8 * RSD + 16;          // 8 rows of O, 8 maxima, 8 sums
  static_assert(RDL * CH % 32 == 0, "ring chunks: whole warp passes");

  int64_t Rw, TG, T_;
  int Gi, Li, ci, lane;
  bool causal, r_hint;
  uint64_t r_pol;
  T *ring_w;
  const T *kd_lane, *vd_lane;
  FastDivU31 fL;
  int lr0, lcol;                      // this lane's first row in a chunk, its 16-byte column
  int ld_grp, ld_kc, ld_ulo, ld_nk;   // loader cursor: group, chunk start, its u_lo, its rows

  __device__ __forceinline__ void init(const moda_attn_params &p, int flags, T *ring_w_, int64_t Rw_, int64_t b,
                                       int64_t g, int lane_) {
    Rw = Rw_; T_ = p.T; TG = p.T * p.G;
    Gi = (int)p.G; Li = (int)p.L; ci = p.chunk; lane = lane_;
    causal = p.causal != 0;
    r_hint = (flags & FWD_DEPTH_EVICT_FIRST) != 0;
    r_pol = 0;
    ring_w = ring_w_;
    lr0 = lane / CH; lcol = (lane % CH) * 8;
    fL.d = 1; fL.mul = 0; fL.shr = 0;
    ld_grp = NGRP; ld_kc = 0; ld_ulo = 0; ld_nk = 0;
    kd_lane = static_cast<const T *>(p.kd) + b * p.kd_stride[0] + g * p.kd_stride[3] + lcol;
    vd_lane = static_cast<const T *>(p.vd) + b * p.vd_stride[0] + g * p.vd_stride[3] + lcol;
  }

  // Depth rows group grp (packed rows rb..rb+7) can see: tokens u_lo.., nk = tokens * L rows,
  // flattened i = (u - u_lo) * L + l. nk = 0 for a group past T*G (then every later one is too).
  __device__ __forceinline__ void group_range(int grp, int &u_lo, int &nk) const {
    const int64_t rb = Rw + grp * 8;
    u_lo = 0; nk = 0;
    if (rb >= TG) return;
    const int t_first = (int)rb / Gi, t_last = (int)(rb + 7 < TG ? rb + 7 : TG - 1) / Gi;
    int u_hi;
    if (ci <= 0) { u_lo = t_first; u_hi = t_last; }
    else {
      u_lo = (t_first / ci) * ci;
      if (causal) u_hi = t_last;
      else {
        const int64_t e = (int64_t)(t_last / ci) * ci + ci - 1;
        u_hi = (int)(e < T_ - 1 ? e : T_ - 1);
      }
    }
    nk = (u_hi - u_lo + 1) * Li;
  }

  // Issues the chunk under the loader cursor into `stage` (zero rows past the group's end), commits
  // (an empty group once the sequence is exhausted) and advances the cursor.
  __device__ __forceinline__ void issue(const moda_attn_params &p, int stage) {
    if (ld_grp < NGRP) {
      T *dk = ring_w + stage * 2 * RDL * LDS, *dv = dk + RDL * LDS;
#pragma unroll
      for (int j = 0; j < NLR; ++j) {
        const int r = lr0 + j * RPP, i = ld_kc + r;
        T *sk = dk + r * LDS + lcol, *sv = dv + r * LDS + lcol;
        if (i < ld_nk) {
          const int du = (int)fL.div((uint32_t)i), l = i - du * Li;
          const int64_t u = ld_ulo + du;
          const T *gk = kd_lane + u * p.kd_stride[1] + l * p.kd_stride[2];
          const T *gv = vd_lane + u * p.vd_stride[1] + l * p.vd_stride[2];
          if (r_hint) { cp_async_16_hint(sk, gk, r_pol); cp_async_16_hint(sv, gv, r_pol); }
          else { cp_async_16(sk, gk); cp_async_16(sv, gv); }
        } else {
          // P is 0 on these rows, but 0 * NaN from stale smem would not be: zero kd and vd
          *reinterpret_cast<uint4 *>(sk) = make_uint4(0, 0, 0, 0);
          *reinterpret_cast<uint4 *>(sv) = make_uint4(0, 0, 0, 0);
        }
      }
      ld_kc += RDL;
      if (ld_kc >= ld_nk) {
        ld_kc = 0;
        if (++ld_grp < NGRP) {
          group_range(ld_grp, ld_ulo, ld_nk);
          if (ld_nk == 0) ld_grp = NGRP;
        }
      }
    }
    cp_async_commit();
  }

  // Chunks 0 .. RST-2 (they go out together with the caller's Q tile).
  __device__ __forceinline__ void prologue(const moda_attn_params &p) {
    if (r_hint) r_pol = l2_policy_evict_first();
    fL.init((uint32_t)Li);
    ld_grp = 0;
    group_range(0, ld_ulo, ld_nk);
    if (ld_nk == 0) ld_grp = NGRP;
#pragma unroll
    for (int st = 0; st < RST - 1; ++st) issue(p, st);
  }

  // Visible tokens of this lane's columns 2*qc + e of the group at packed row rb, relative to u_lo:
  // [vlo, vhi] (empty: 1 > 0). Rows past the group's nk belong to tokens past vhi.
  __device__ __forceinline__ void visible_tokens(int64_t rb, int u_lo, int qc, int (&vlo)[2], int (&vhi)[2]) const {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t R = rb + 2 * qc + e;
      vlo[e] = 1; vhi[e] = 0;
      if (R < TG) {
        const int t = (int)R / Gi;
        if (ci <= 0) { vlo[e] = t - u_lo; vhi[e] = t - u_lo; }
        else {
          const int cs = (t / ci) * ci;
          vlo[e] = cs - u_lo;
          const int64_t he = causal ? (int64_t)t : ((int64_t)cs + ci - 1 < T_ - 1 ? (int64_t)cs + ci - 1 : T_ - 1);
          vhi[e] = (int)(he - u_lo);
        }
      }
    }
  }
  // The group's 8 query rows (packed rows rb.., in the CTA's Q tile from R0) as mma B fragments.
  __device__ __forceinline__ static void load_q_cols(const T *sQ, int64_t rb, int64_t R0, int lane,
                                                     uint32_t (&q_b)[KSTEPS][2]) {
#pragma unroll
    for (int kk = 0; kk < KSTEPS / 2; ++kk) {
      uint32_t r4[4];
      ldmatrix_x4(r4, sQ + (rb - R0 + (lane & 7)) * LDS + kk * 32 + (lane >> 3) * 8);
      q_b[2 * kk][0] = r4[0]; q_b[2 * kk][1] = r4[1];
      q_b[2 * kk + 1][0] = r4[2]; q_b[2 * kk + 1][1] = r4[3];
    }
  }
  // One chunk's online softmax over its 16 rows, per column (the lane's s_t[2h + c]: row qr + 8h,
  // column 2qc + c; vis[2h + c] its mask): scale, running column max and sum, acc_t rescaled;
  // returns P (exp2(S - m)) as the B fragments b0, b1 of O^T += vd^T P.
  template <typename Mma>
  __device__ __forceinline__ static void chunk_softmax(float (&s_t)[4], const bool (&vis)[4], float scale_log2,
                                                       float (&col_m)[2], float (&col_l)[2], float (&acc_t)[D / 16][4],
                                                       uint32_t &b0, uint32_t &b1) {
    float chunk_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float sv = vis[e] ? s_t[e] * scale_log2 : -INFINITY;
      s_t[e] = sv;
      chunk_max[e & 1] = fmaxf(chunk_max[e & 1], sv);
    }
    float corr[2], m_use[2];
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      float m_new = fmaxf(col_m[c], warp_col_max(chunk_max[c]));
      m_use[c] = m_new == -INFINITY ? 0.f : m_new;
      corr[c] = exp2_ftz(col_m[c] - m_use[c]);
      col_m[c] = m_new;
      col_l[c] *= corr[c];
    }
#pragma unroll
    for (int md = 0; md < D / 16; ++md) {
      acc_t[md][0] *= corr[0]; acc_t[md][1] *= corr[1];
      acc_t[md][2] *= corr[0]; acc_t[md][3] *= corr[1];
    }
    float p4[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      p4[e] = exp2_ftz(s_t[e] - m_use[e & 1]);
      col_l[e & 1] += p4[e];
    }
    b0 = movmatrix_trans(Mma::pack(p4[0], p4[1]));
    b1 = movmatrix_trans(Mma::pack(p4[2], p4[3]));
  }
  // The group's columns (col_m, col_l, acc_t) -> 8-row scratch sO8 (WARP_SCRATCH_FLOATS) -> the
  // row state of this lane's row qr of group grp; with merge, merged into that state by
  // log-sum-exp (a sequence phase ran first) instead of replacing it.
  template <int MT>
  __device__ __forceinline__ static void group_to_rows(float *sO8, int grp, int lane, float (&col_m)[2],
                                                       float (&col_l)[2], const float (&acc_t)[D / 16][4],
                                                       float (&row_m)[2 * MT], float (&row_l)[2 * MT],
                                                       float (&acc_o)[MT][D / 8][4], bool merge) {
    const int qr = lane / 4, qc = lane % 4;
    float *sM8 = sO8 + 8 * RSD, *sL8 = sM8 + 8;
#pragma unroll
    for (int c = 0; c < 2; ++c) col_l[c] = warp_col_sum(col_l[c]);
#pragma unroll
    for (int md = 0; md < D / 16; ++md)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        sO8[(2 * qc + (e & 1)) * RSD + md * 16 + qr + (e >= 2 ? 8 : 0)] = acc_t[md][e];
    if (qr == 0) {
#pragma unroll
      for (int c = 0; c < 2; ++c) { sM8[2 * qc + c] = col_m[c]; sL8[2 * qc + c] = col_l[c]; }
    }
    __syncwarp();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h2 = 0; h2 < 2; ++h2)
        if (grp == 2 * mt + h2) {  // compile-time register indices; grp selects
          // merge: m = max(m_rows, m_depth), both sides scaled by exp2(their m - m) (0 for an
          // empty side); else the depth state is the rows' state (a = 0, b = 1)
          const float md = sM8[qr], mo = row_m[2 * mt + h2];
          const float m_new = merge ? fmaxf(mo, md) : md, m_use = m_new == -INFINITY ? 0.f : m_new;
          const float a = merge ? exp2_ftz(mo - m_use) : 0.f, bd = merge ? exp2_ftz(md - m_use) : 1.f;
          row_m[2 * mt + h2] = m_new;
          // the quad's sum is reduced at the end: the depth sum goes to one lane of the quad
          row_l[2 * mt + h2] = (merge ? row_l[2 * mt + h2] * a : 0.f) + (qc == 0 ? sL8[qr] * bd : 0.f);
#pragma unroll
          for (int j = 0; j < D / 8; ++j) {
            const float2 v2 = *reinterpret_cast<const float2 *>(sO8 + qr * RSD + j * 8 + 2 * qc);
            acc_o[mt][j][h2 * 2 + 0] = merge ? fmaf(acc_o[mt][j][h2 * 2 + 0], a, v2.x * bd) : v2.x;
            acc_o[mt][j][h2 * 2 + 1] = merge ? fmaf(acc_o[mt][j][h2 * 2 + 1], a, v2.y * bd) : v2.y;
          }
        }
    __syncwarp();  // reads done before the scratch is written again (next group) or refilled
  }

  // The depth phase proper. sQ: the CTA's Q tile (row stride LDS elements), R0 its first packed
  // row; scr: this warp's WARP_SCRATCH_FLOATS floats. Seeds row_m, row_l (this lane's partial:
  // the quad's sum is reduced by the caller at the end) and acc_o of the groups that have rows;
  // the others keep their initial state. With merge, the depth state is merged into the rows'
  // state (a sequence phase ran first) instead of replacing it. Ends with every cp.async group of
  // the ring retired.
  template <typename Mma, int MT>
  __device__ __forceinline__ void run(const moda_attn_params &p, const T *sQ, int64_t R0, float *scr,
                                      float scale_log2, float (&row_m)[2 * MT], float (&row_l)[2 * MT],
                                      float (&acc_o)[MT][D / 8][4], bool merge = false) {
    static_assert(NGRP == 2 * MT, "two 8-row groups per 16-row m-tile");
    static_assert(WARP_SCRATCH_FLOATS * 4 <= 2 * RDL * LDS * (int)sizeof(T), "scratch fits a ring stage");
    const int qr = lane / 4, qc = lane % 4;
    int n_st = 0;  // stage of the chunk computed next
    for (int grp = 0; grp < NGRP; ++grp) {
      int u_lo, nk;
      group_range(grp, u_lo, nk);
      if (nk == 0) break;  // this group and the later ones lie past T*G: their rows keep the empty state
      const int64_t rb = Rw + grp * 8;
      int vlo[2], vhi[2];  // rows past nk belong to tokens past vhi: this also masks the zero padding
      visible_tokens(rb, u_lo, qc, vlo, vhi);
      uint32_t q_b[KSTEPS][2];
      load_q_cols(sQ, rb, R0, lane, q_b);
      float col_m[2] = {-INFINITY, -INFINITY}, col_l[2] = {0.f, 0.f};
      float acc_t[D / 16][4];
#pragma unroll
      for (int md = 0; md < D / 16; ++md) acc_t[md][0] = acc_t[md][1] = acc_t[md][2] = acc_t[md][3] = 0.f;

      for (int kc = 0; kc < nk; kc += RDL) {
        cp_async_wait<RST - 2>();  // this lane's copies of this chunk have landed
        __syncwarp();              // every lane's have; every lane is done reading the previous stage
        issue(p, n_st == 0 ? RST - 1 : n_st - 1);  // refill the previous chunk's stage, RST-1 ahead
        const T *sKd = ring_w + n_st * 2 * RDL * LDS, *sVd = sKd + RDL * LDS;
        n_st = n_st + 1 == RST ? 0 : n_st + 1;

        // S^T = kd * q^T: 16 depth rows x 8 columns
        float s_t[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
          uint32_t a[4];
          ldmatrix_x4(a, sKd + (lane & 15) * LDS + ks * 16 + (lane >> 4) * 8);
          Mma::run(s_t, a, q_b[ks][0], q_b[ks][1]);
        }
        // mask: row kc + qr + 8h is of token u_lo + du
        bool vis[4];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int du = (int)fL.div((uint32_t)(kc + qr + 8 * h));
#pragma unroll
          for (int c = 0; c < 2; ++c) vis[2 * h + c] = du >= vlo[c] && du <= vhi[c];
        }
        uint32_t b0, b1;
        chunk_softmax<Mma>(s_t, vis, scale_log2, col_m, col_l, acc_t, b0, b1);
        // O^T += vd^T * P (one k-step of 16 depth rows)
#pragma unroll
        for (int md = 0; md < D / 16; ++md) {
          uint32_t a[4];
          ldmatrix_x4_trans(a, sVd + ((lane & 7) + ((lane >> 4) & 1) * 8) * LDS + md * 16 + ((lane >> 3) & 1) * 8);
          Mma::run(acc_t[md], a, b0, b1);
        }
      }
      // The group's columns -> 8-row scratch -> the row state of this lane's row qr of the group.
      // scr == nullptr: the scratch is the stage of the group's last chunk, free until the next
      // issue refills it (every lane's ldmatrix reads of it done first: __syncwarp)
      float *sO8 = scr ? scr : reinterpret_cast<float *>(ring_w + (n_st == 0 ? RST - 1 : n_st - 1) * 2 * RDL * LDS);
      if (!scr) __syncwarp();
      group_to_rows<MT>(sO8, grp, lane, col_m, col_l, acc_t, row_m, row_l, acc_o, merge);
    }
    cp_async_wait<0>();  // only empty groups can be pending here
  }
};

}  // namespace moda_cuda
