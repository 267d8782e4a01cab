// attn_fwd_wgmma.cu: MoDA forward for Hopper (sm_90a): the sequence phase on wgmma.
//
// Why: the mma.sync forward (attn_fwd_mma.cu) runs its sequence phase at ~195 TF/s on an H100,
// against ~310 for FA2 and ~800 for the card's bf16 rate; mma.sync must feed every B fragment
// through registers (ldmatrix), wgmma reads B straight from shared memory and runs asynchronously.
//
// Layout (SPEC section 4, as in attn_fwd_mma.cu): packed rows R = t*G + i for one (batch, KV
// head). CTA = 2 warpgroups (8 warps, BM = 128 packed rows); warp w owns rows 16w..16w+15
// (warpgroup w/4 owns 64, in the order wgmma's m64 expects).
// 1. Depth phase (L > 0): FwdDepthRing (attn_fwd_common.cuh), the same per-warp transposed
//    mma.sync code as the sm_80 kernel; it seeds each row's (O, m, l) in the mma C layout, which
//    is also the layout of a wgmma m64nN accumulator for the warp's 16 rows.
// 2. Sequence phase: K/V blocks of BN = 128 keys double-buffered by cp.async into 128-byte-
//    swizzled tiles (the layout wgmma descriptors read); per block
//        S = Q K^T    wgmma m64n128k16, A = Q fragments in registers (loaded once), B = K tile
//        online softmax on the S accumulators (exp2, scale folded into one FFMA)
//        O += P V     wgmma m64nDk16, A = P (the S accumulators packed to 16-bit: the C layout
//                     of a k16 column pair is the A layout), B = V tile read MN-major (trans-b)
//    Each warpgroup waits for its own wgmma groups; the two warpgroups of a CTA interleave on
//    the SM's tensor cores. (Measured on the H100 and deleted: one warpgroup per CTA with two
//    CTAs per SM, 1.2-1.3x slower; FA3's intra-warpgroup overlap with three K/V stages, 1-2%
//    slower.)
// fwd_wgmma_ws_kernel (further down; d = 64, the default since session 6; MODA_CUDA_FWD_FLAGS=1 off): the same
// math with a TMA producer warp and two consumer warpgroups that take turns on the tensor cores.
// Only the sm_90a pass of nvcc compiles the bodies; fwd_wgmma_supported() keeps other devices away.
#include <stdio.h>
#include <stdlib.h>

#include "attn_fwd_common.cuh"
#include "tma_helpers.cuh"
#include "wgmma_gemm.cuh"

namespace moda_cuda {

// Two warpgroups per CTA: K/V blocks shared by 128 rows, one CTA per SM (256 threads; ptxas:
// 222 registers at d = 64, 242 at d = 128).
template <int D>
struct WgmmaFwdConfig {
  static constexpr int NWARPS = 8;
  static constexpr int MIN_CTAS = 1;
  static constexpr int BM = 16 * NWARPS;        // packed rows per CTA
  static constexpr int BN = 128;                // keys per sequence block (wgmma n of S = Q K^T)
  static constexpr int LDS = D + 8;             // Q tile row stride in elements (padded, for ldmatrix)
  static constexpr int Q_BYTES = BM * LDS * 2;
  static constexpr int TILE_BYTES = BN * D * 2; // one swizzled K or V block
  static constexpr int KV_STAGES = 2;
  static constexpr int KV_BYTES = KV_STAGES * 2 /*K,V*/ * TILE_BYTES;
  static constexpr int RST = D > 64 ? 2 : 3;    // depth ring stages per warp
  static constexpr int RSD = D + 4;             // depth scratch row stride in floats
  static constexpr int RING_WARP_BYTES = RST * 2 * 16 * LDS * 2, SCRATCH_WARP_BYTES = (8 * RSD + 16) * 4;
  static constexpr int RING_BYTES = NWARPS * (RING_WARP_BYTES + SCRATCH_WARP_BYTES);
  static constexpr int UNION_BYTES = KV_BYTES > RING_BYTES ? KV_BYTES : RING_BYTES;
  // + 1024: the dynamic smem base is rounded up to 1024 bytes in the kernel (swizzle atoms)
  static constexpr int SMEM_BYTES = 1024 + Q_BYTES + UNION_BYTES;
  static constexpr int SMEM_BYTES_NODEPTH = 1024 + Q_BYTES + KV_BYTES;
  static_assert(Q_BYTES % 1024 == 0 && TILE_BYTES % 1024 == 0, "swizzled tiles stay 1024-byte aligned");
  static_assert((SMEM_BYTES + 1024) * MIN_CTAS <= 233472, "MIN_CTAS CTAs per SM on sm_90");
};

// ---- the per-block steps both wgmma kernels share (one warp's 16 rows, wgmma C layout) ----
// Online softmax of a BN-key block's raw scores s (keys j0..), in place (s becomes P, not
// normalised); updates row_m (log2 units) and row_l (this lane's partial sums) and returns the
// factor corr the rows' O must be multiplied by. Keys past row_lim[r] are masked when MASK: a
// template parameter, because with a run-time flag ptxas if-converted the mask into every block
// (a compare, a select and index arithmetic per element: 200 of the loop's 640 instructions,
// session 8); callers branch once per block between the two instantiations
// (wgmma_softmax_block_any).
template <int BN, bool MASK>
__device__ __forceinline__ void wgmma_softmax_block(float (&s)[BN / 8][4], int j0, const int (&row_lim)[2],
                                                    int qc, float scale_log2, float (&row_m)[2], float (&row_l)[2],
                                                    float (&corr)[2]) {
  // The row max and the row sum in 4 independent partial chains each (by nt % 4): one chain per
  // row was a 32-long dependent FMNMX / FADD sequence (SASS, session 8) with only the other
  // row's chain beside it to hide its latency.
  constexpr int NP = 4;
  float part_max[2][NP];
#pragma unroll
  for (int k = 0; k < NP; ++k) part_max[0][k] = part_max[1][k] = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e >> 1;
      float x = s[nt][e];
      if constexpr (MASK) {
        const int j = j0 + nt * 8 + 2 * qc + (e & 1);
        if (j > row_lim[r]) x = -INFINITY;
      }
      s[nt][e] = x;
      part_max[r][nt % NP] = fmaxf(part_max[r][nt % NP], x);
    }
  float m_use[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float blk_max = fmaxf(fmaxf(part_max[r][0], part_max[r][1]), fmaxf(part_max[r][2], part_max[r][3]));
    // scale > 0, so max(raw) * scale = max(scaled); -inf stays -inf
    const float m_new = fmaxf(row_m[r], warp_quad_max(blk_max) * scale_log2);
    m_use[r] = m_new == -INFINITY ? 0.f : m_new;
    corr[r] = exp2_ftz(row_m[r] - m_use[r]);
    row_m[r] = m_new;
    row_l[r] *= corr[r];
  }
  float part_sum[2][NP];
#pragma unroll
  for (int k = 0; k < NP; ++k) part_sum[0][k] = part_sum[1][k] = 0.f;
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e >> 1;
      const float pe = exp2_ftz(fmaf(s[nt][e], scale_log2, -m_use[r]));
      s[nt][e] = pe;
      part_sum[r][nt % NP] += pe;
    }
#pragma unroll
  for (int r = 0; r < 2; ++r) row_l[r] += (part_sum[r][0] + part_sum[r][1]) + (part_sum[r][2] + part_sum[r][3]);
}
template <int BN>
__device__ __forceinline__ void wgmma_softmax_block_any(float (&s)[BN / 8][4], int j0, bool need_mask,
                                                        const int (&row_lim)[2], int qc, float scale_log2,
                                                        float (&row_m)[2], float (&row_l)[2], float (&corr)[2]) {
  if (need_mask)
    wgmma_softmax_block<BN, true>(s, j0, row_lim, qc, scale_log2, row_m, row_l, corr);
  else
    wgmma_softmax_block<BN, false>(s, j0, row_lim, qc, scale_log2, row_m, row_l, corr);
}
// The A fragments of S = Q K^T for warp `w`'s 16 rows of the Q tile (row stride LDS), all k16
// steps. Both kernels call this for every K/V block instead of once before the loop: with the
// fragments loop-invariant, ptxas 13.0 gave them the same physical registers as the P fragments
// packed inside the loop (SASS of fwd_wgmma_kernel<T, 128>, session 9: F2FP writes R152..R183,
// the back edge reaches S's HGMMA with P in Q's place; the checker's forced-wgmma d = 128 cases
// failed), the fault the dQ kernel had in sessions 7-8. tools/sass_rs_check.py finds it in a
// build. KSTEPS ldmatrix per block cost nothing measurable beside 2 * KSTEPS wgmma k-steps.
template <int KSTEPS, int LDS, typename T>
__device__ __forceinline__ void load_q_frags(uint32_t (&q_a)[KSTEPS][4], const T *sQ, int w, int lane) {
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks)
    ldmatrix_x4(q_a[ks], sQ + (w * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
}
template <int D>
__device__ __forceinline__ void wgmma_rescale_rows(float (&acc)[D / 8][4], const float (&corr)[2]) {
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    acc[j][0] *= corr[0]; acc[j][1] *= corr[0];
    acc[j][2] *= corr[1]; acc[j][3] *= corr[1];
  }
}
// The sequence keys the CTA's BM packed rows from R0 visit: n_blocks blocks of BN, the keys below
// unmasked_end that no row of the CTA needs masked, and row_lim = the last visible key of this
// lane's two rows (Rw + lane/4, + 8). Key indices fit in int: fwd_wgmma_supported requires S < 2^31.
template <int BM, int BN>
__device__ __forceinline__ void wgmma_seq_range(const moda_attn_params &p, int64_t R0, int64_t Rw, int lane,
                                                int &n_blocks, int &unmasked_end, int (&row_lim)[2]) {
  const int64_t G = p.G, T_ = p.T, S = p.S, TG = T_ * G;
  const bool causal = p.causal != 0;
  const int64_t t_first_cta = R0 / G;
  const int64_t t_last_cta = (R0 + BM - 1 < TG ? R0 + BM - 1 : TG - 1) / G;
  int64_t kv_end = S;
  if (causal) { int64_t e = S - T_ + t_last_cta + 1; kv_end = e < S ? e : S; }
  if (kv_end < 0) kv_end = 0;
  n_blocks = (int)((kv_end + BN - 1) / BN);
  unmasked_end = (int)(causal ? (S - T_ + t_first_cta + 1 < S ? S - T_ + t_first_cta + 1 : S) : S);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t R = Rw + lane / 4 + r * 8;
    const int64_t t = (R < TG ? R : TG - 1) / G;
    row_lim[r] = (int)(causal ? (S - T_ + t < S - 1 ? S - T_ + t : S - 1) : S - 1);
  }
}
// Epilogue: normalise this lane's two rows (Rw + lane/4, + 8) and write O and lse (TG = T * G).
template <typename T, int D>
__device__ __forceinline__ void wgmma_write_o_lse(const moda_attn_params &p, const float (&acc)[D / 8][4],
                                                  const float (&row_m)[2], const float (&row_l)[2], int64_t Rw,
                                                  int lane, int64_t b, int64_t g, int64_t G, int64_t TG) {
  using Mma = MmaOp<T>;
  const int qc = lane % 4;
  T *o = static_cast<T *>(p.o);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = warp_quad_sum(row_l[r]);
    const int64_t R = Rw + lane / 4 + r * 8;
    if (R >= TG) continue;
    const int64_t t = R / G, h = g * G + R % G;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    T *orow = o + b * p.o_stride[0] + t * p.o_stride[1] + h * p.o_stride[2];
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const uint32_t packed = Mma::pack(acc[j][2 * r] * inv, acc[j][2 * r + 1] * inv);
      *reinterpret_cast<uint32_t *>(orow + j * 8 + 2 * qc) = packed;
    }
    if (qc == 0) {
      const float lse = l > 0.f ? row_m[r] * 0.6931471805599453f + logf(l) : -INFINITY;
      p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + t * p.lse_stride[2]] = lse;
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(WgmmaFwdConfig<D>::NWARPS * 32, WgmmaFwdConfig<D>::MIN_CTAS)
fwd_wgmma_kernel(const moda_attn_params p, const int flags) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = WgmmaFwdConfig<D>;
  using Mma = MmaOp<T>;
  constexpr int NWARPS = Cfg::NWARPS, BM = Cfg::BM, BN = Cfg::BN, LDS = Cfg::LDS;
  constexpr int NTHREADS = NWARPS * 32;
  constexpr int KSTEPS = D / 16;  // k-steps over the head dim
  constexpr float LOG2E = 1.4426950408889634f;

  extern __shared__ __align__(16) unsigned char smem_raw[];  // rounded up to 1024 below
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  T *sQ = reinterpret_cast<T *>(smem);
  unsigned char *sUnion = smem + Cfg::Q_BYTES;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int qc = lane % 4;
  const int64_t tile = gridDim.x - 1 - blockIdx.x;  // heavy (late) causal tiles first
  const int64_t g = blockIdx.y, b = blockIdx.z;
  const int64_t G = p.G, T_ = p.T, S = p.S, L = p.L;
  const int64_t TG = T_ * G;
  const int64_t R0 = tile * BM;        // first packed row of this CTA
  const int64_t Rw = R0 + warp * 16;   // first packed row of this warp
  const float scale_log2 = (float)p.scale * LOG2E;

  const T *q = static_cast<const T *>(p.q);
  const T *k = static_cast<const T *>(p.k);
  const T *v = static_cast<const T *>(p.v);

  // ---- Q tile -> smem (rows past T*G are zero) ----
  load_rows_async<D, LDS>(sQ, BM, tid, NTHREADS, [&](int r) -> const T * {
    const int64_t R = R0 + r;
    return R < TG ? packed_row(q, p.q_stride, b, g, G, R) : nullptr;
  });
  cp_async_commit();

  using Ring = FwdDepthRing<T, D, 2, Cfg::RST, LDS, Cfg::RSD>;
  static_assert(Ring::WARP_RING_ELEMS * 2 == Cfg::RING_WARP_BYTES &&
                Ring::WARP_SCRATCH_FLOATS * 4 == Cfg::SCRATCH_WARP_BYTES, "ring layout");
  Ring ring;
  if (L > 0) {
    ring.init(p, flags, reinterpret_cast<T *>(sUnion) + warp * Ring::WARP_RING_ELEMS, Rw, b, g, lane);
    ring.prologue(p);
    cp_async_wait<Cfg::RST - 1>();  // the Q tile (the oldest group) has landed
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();

  // Row state of this lane's rows Rw + lane/4 + 8*half (log2 units), the mma/wgmma C layout.
  float row_m[2], row_l[2];  // row_l: partial over this lane's columns (quad-reduced at the end)
  float acc_o[1][D / 8][4];
  row_m[0] = row_m[1] = -INFINITY;
  row_l[0] = row_l[1] = 0.f;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) acc_o[0][j][0] = acc_o[0][j][1] = acc_o[0][j][2] = acc_o[0][j][3] = 0.f;

  // ================= phase 1: depth rows (attn_fwd_common.cuh) =================
  if (L > 0) {
    float *scr = reinterpret_cast<float *>(sUnion + NWARPS * Ring::WARP_RING_ELEMS * 2) + warp * Ring::WARP_SCRATCH_FLOATS;
    ring.template run<Mma, 1>(p, sQ, R0, scr, scale_log2, row_m, row_l, acc_o);
    __syncthreads();  // every warp is done with the ring and scratch before K/V reuse them
  }

  // ================= phase 2: sequence keys on wgmma =================
  auto sK = [&](int stage) { return sUnion + stage * 2 * Cfg::TILE_BYTES; };
  auto sV = [&](int stage) { return sUnion + stage * 2 * Cfg::TILE_BYTES + Cfg::TILE_BYTES; };

  int n_blocks, unmasked_end, row_lim[2];
  wgmma_seq_range<BM, BN>(p, R0, Rw, lane, n_blocks, unmasked_end, row_lim);

  const bool kv_hint = (flags & FWD_KV_EVICT_LAST) != 0;
  const uint64_t kv_pol = kv_hint ? l2_policy_evict_last() : 0;
  // One K/V block into the swizzled tiles of `stage`; rows past S are zeroed (P is 0 there, but
  // 0 * stale NaN would not be).
  auto load_kv = [&](int blk, int stage) {
    const int64_t j0 = (int64_t)blk * BN;
    load_rows_sw128_async<D, T>(sK(stage), BN, tid, NTHREADS, [&](int r) -> const T * {
      const int64_t j = j0 + r;
      return j < S ? k + b * p.k_stride[0] + j * p.k_stride[1] + g * p.k_stride[2] : nullptr;
    }, kv_hint, kv_pol);
    load_rows_sw128_async<D, T>(sV(stage), BN, tid, NTHREADS, [&](int r) -> const T * {
      const int64_t j = j0 + r;
      return j < S ? v + b * p.v_stride[0] + j * p.v_stride[1] + g * p.v_stride[2] : nullptr;
    }, kv_hint, kv_pol);
    cp_async_commit();
  };

  // S = Q K^T of block `stage` into s (raw q.k; the scale is folded into the exp2 argument)
  auto issue_s = [&](float (&s)[BN / 8][4], const uint32_t (&q_a)[KSTEPS][4], int stage) {
    wgmma_rs_kmajor<T, BN, KSTEPS>(s, q_a, smem_u32(sK(stage)), BN, 0);
  };
  // O += P V with V of block `stage`
  auto issue_pv = [&](const uint32_t (&pa)[BN / 16][4], int stage) {
    wgmma_rs_mnmajor<T, D, BN / 16>(acc_o[0], pa, smem_u32(sV(stage)), BN, 1);  // V tile [keys][D]
  };
  if (n_blocks > 0) {
    // Q fragments (A operand) of this warp's 16 rows, all k-steps: loaded from smem for every
    // block (KSTEPS ldmatrix), not once before the loop - see load_q_frags.
    uint32_t q_a[KSTEPS][4];
    float s[BN / 8][4], corr[2];
    uint32_t pa[BN / 16][4];

    // Two stages; per block: S, wait, softmax, P V, wait.
    load_kv(0, 0);
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int stage = blk & 1;
      if (blk + 1 < n_blocks) { load_kv(blk + 1, stage ^ 1); cp_async_wait<1>(); }
      else cp_async_wait<0>();
      fence_proxy_async_smem();  // this thread's cp.async / zero stores -> visible to wgmma
      __syncthreads();
      load_q_frags<KSTEPS, LDS>(q_a, sQ, warp, lane);
      wgmma_fence_operand(s);
      wgmma_fence();
      issue_s(s, q_a, stage);
      wgmma_commit();
      wgmma_wait<0>();
      wgmma_fence_operand(s);
      wgmma_softmax_block_any<BN>(s, blk * BN, blk * BN + BN > unmasked_end, row_lim, qc, scale_log2, row_m, row_l, corr);
      wgmma_rescale_rows<D>(acc_o[0], corr);
      pack_acc_as_a<T, BN / 16>(s, pa);
      wgmma_fence_operand(acc_o[0]);
      wgmma_fence();  // acc_o was rescaled and pa written by ordinary instructions
      issue_pv(pa, stage);
      wgmma_commit();
      wgmma_wait<0>();
      wgmma_fence_operand(acc_o[0]);
      __syncthreads();  // this stage is free for the load two blocks ahead
    }
  }

  // ---- epilogue: normalise, write O and lse ----
  wgmma_write_o_lse<T, D>(p, acc_o[0], row_m, row_l, Rw, lane, b, g, G, TG);
#elif defined(__CUDA_ARCH__)
  __trap();  // a build without sm_90a code: fail loudly rather than leave O and lse unwritten
#endif
}

// The split kernel's depth ring fed by TMA (flag bit 13). FwdDepthRing's lanes each issue four
// 16-byte cp.async per chunk with their row's index and address arithmetic, and in the split
// kernel's SASS that bookkeeping is most of its chunk loop (session 19). Here one thread loads a
// chunk - 16 slots of one token's kd and vd rows, a box of the 5-d depth map, 128-byte swizzled,
// 4 KB per stage - completing on the stage's mbarrier. Chunks no longer span tokens: a token's L
// slots take ceil(L / 16) chunks, the slots past L zero-filled by TMA (DeiT's L = 22: 32 rows of
// work for 22, no more bytes). Group ranges, fields, the visibility, the per-chunk softmax and the
// group's merge into the rows' state come from FwdDepthRing.
template <typename T, int NGRP, int RST, int RSD>
struct FwdDepthTmaRing : FwdDepthRing<T, 64, NGRP, RST, 72, RSD> {
  using Base = FwdDepthRing<T, 64, NGRP, RST, 72, RSD>;
  static constexpr int D = 64, LDS = 72, RDL = 16, KSTEPS = D / 16;
  static constexpr int HALF_BYTES = RDL * D * 2, STAGE_BYTES = 2 * HALF_BYTES;
  static constexpr int WARP_RING_BYTES = RST * STAGE_BYTES;
  static_assert(Base::WARP_SCRATCH_FLOATS * 4 <= STAGE_BYTES, "scratch fits a stage");
  unsigned char *ring_b;  // RST stages (kd half, vd half), 1024-byte aligned
  uint64_t *bars;         // RST mbarriers (count 1), initialised by the kernel
  uint32_t bar_phase;     // bit s: the parity of stage s's next completion
  const CUtensorMap *tm_kd, *tm_vd;
  int gi, bi, nsb;
  // Flag bit 14 (pairs): a chunk is 8 slots of 2 consecutive tokens (rows 0-7 token du, 8-15
  // token du + 1) instead of 16 slots of one; the map's box must match (fwd_depth_tma_maps).
  bool pairs;
  int spc;                    // slots per chunk: 16, or 8 with pairs
  int ld_du, ld_sb, ld_ntok;  // the loader's token and slot block in group ld_grp (from ld_ulo)

  __device__ __forceinline__ void init_tma(const moda_attn_params &p, int flags, unsigned char *ring_b_,
                                           uint64_t *bars_, const CUtensorMap *tm_kd_, const CUtensorMap *tm_vd_,
                                           int64_t Rw_, int64_t b, int64_t g, int lane_) {
    Base::init(p, flags, nullptr, Rw_, b, g, lane_);
    ring_b = ring_b_; bars = bars_; bar_phase = 0;
    tm_kd = tm_kd_; tm_vd = tm_vd_;
    pairs = (flags & FWD_DEPTH_TMA_PAIRS) != 0;
    spc = pairs ? RDL / 2 : RDL;
    gi = (int)g; bi = (int)b; nsb = (this->Li + spc - 1) / spc;
    ld_du = 0; ld_sb = 0; ld_ntok = 0;
  }
  __device__ __forceinline__ void load_group() {  // the loader enters group ld_grp
    int nk;
    this->group_range(this->ld_grp, this->ld_ulo, nk);
    ld_ntok = (int)this->fL.div((uint32_t)nk);
    if (nk == 0) this->ld_grp = NGRP;
  }
  // The chunk under the loader cursor into `stage`, then the cursor moves on.
  __device__ __forceinline__ void issue(int stage) {
    if (this->ld_grp >= NGRP) return;
    fence_proxy_async_smem();  // this warp's generic accesses of the stage (ldmatrix, scratch) before TMA's writes
    __syncwarp();
    if (this->lane == 0) {
      unsigned char *dk = ring_b + stage * STAGE_BYTES;
      const int slot0 = ld_sb * spc, tok = this->ld_ulo + ld_du;
      mbar_arrive_expect_tx(&bars[stage], STAGE_BYTES);  // slots past L count too (zero-filled)
      if (this->r_hint) {
        tma_load_5d_hint(dk, tm_kd, &bars[stage], 0, gi, slot0, tok, bi, this->r_pol);
        tma_load_5d_hint(dk + HALF_BYTES, tm_vd, &bars[stage], 0, gi, slot0, tok, bi, this->r_pol);
      } else {
        tma_load_5d(dk, tm_kd, &bars[stage], 0, gi, slot0, tok, bi);
        tma_load_5d(dk + HALF_BYTES, tm_vd, &bars[stage], 0, gi, slot0, tok, bi);
      }
    }
    if (++ld_sb == nsb) {
      ld_sb = 0;
      ld_du += pairs ? 2 : 1;
      if (ld_du >= ld_ntok) {
        ld_du = 0;
        if (++this->ld_grp < NGRP) load_group();
      }
    }
  }
  __device__ __forceinline__ void prologue() {
    if (this->r_hint) this->r_pol = l2_policy_evict_first();
    this->fL.init((uint32_t)this->Li);
    this->ld_grp = 0;
    load_group();
#pragma unroll
    for (int st = 0; st < RST - 1; ++st) issue(st);
  }

  // As FwdDepthRing::run (no scratch argument: a group's scratch is the stage of its last chunk).
  template <typename Mma, int MT>
  __device__ __forceinline__ void run(const T *sQ, int64_t R0, float scale_log2, float (&row_m)[2 * MT],
                                      float (&row_l)[2 * MT], float (&acc_o)[MT][D / 8][4], bool merge = false) {
    static_assert(NGRP == 2 * MT, "two 8-row groups per 16-row m-tile");
    const int lane = this->lane, qr = lane / 4, qc = lane % 4, Li = this->Li, Gi = this->Gi, ci = this->ci;
    int n_st = 0;  // stage of the chunk computed next
    for (int grp = 0; grp < NGRP; ++grp) {
      int u_lo, nk;
      this->group_range(grp, u_lo, nk);
      if (nk == 0) break;  // this group and the later ones lie past T*G
      const int ntok = (int)this->fL.div((uint32_t)nk);
      const int64_t rb = this->Rw + grp * 8;
      int vlo[2], vhi[2];
      this->visible_tokens(rb, u_lo, qc, vlo, vhi);
      uint32_t q_b[KSTEPS][2];
      Base::load_q_cols(sQ, rb, R0, lane, q_b);
      float col_m[2] = {-INFINITY, -INFINITY}, col_l[2] = {0.f, 0.f};
      float acc_t[D / 16][4];
#pragma unroll
      for (int md = 0; md < D / 16; ++md) acc_t[md][0] = acc_t[md][1] = acc_t[md][2] = acc_t[md][3] = 0.f;

      const int tpc = pairs ? 2 : 1;  // tokens per chunk
      for (int du = 0; du < ntok; du += tpc) {
        for (int sb = 0; sb < nsb; ++sb) {
          mbar_wait(&bars[n_st], (bar_phase >> n_st) & 1u);  // the chunk has landed
          bar_phase ^= 1u << n_st;
          __syncwarp();  // every lane is done reading the previous stage
          issue(n_st == 0 ? RST - 1 : n_st - 1);  // refill the previous chunk's stage, RST-1 ahead
          const unsigned char *sKd = ring_b + n_st * STAGE_BYTES, *sVd = sKd + HALF_BYTES;
          n_st = n_st + 1 == RST ? 0 : n_st + 1;

          float s_t[4] = {0.f, 0.f, 0.f, 0.f};  // S^T = kd * q^T: 16 slots x 8 columns
#pragma unroll
          for (int ks = 0; ks < KSTEPS; ++ks) {
            uint32_t a[4];
            ldmatrix_x4(a, sKd + sw128_offset(lane & 15, ks * 16 + (lane >> 4) * 8, 0));
            Mma::run(s_t, a, q_b[ks][0], q_b[ks][1]);
          }
          bool vis[4];  // the mask
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            // row qr + 8h: slot sb*16 + qr + 8h of token du, or (pairs) slot sb*8 + qr of token du + h
            const int slot = pairs ? sb * (RDL / 2) + qr : sb * RDL + qr + 8 * h, tok = pairs ? du + h : du;
            const bool slot_ok = slot < Li;
#pragma unroll
            for (int c = 0; c < 2; ++c) vis[2 * h + c] = slot_ok && tok >= vlo[c] && tok <= vhi[c];
          }
          uint32_t b0, b1;
          Base::template chunk_softmax<Mma>(s_t, vis, scale_log2, col_m, col_l, acc_t, b0, b1);
          // O^T += vd^T * P
#pragma unroll
          for (int md = 0; md < D / 16; ++md) {
            uint32_t a[4];
            ldmatrix_x4_trans(a, sVd + sw128_offset((lane & 7) + ((lane >> 4) & 1) * 8, md * 16 + ((lane >> 3) & 1) * 8, 0));
            Mma::run(acc_t[md], a, b0, b1);
          }
        }
      }
      // the group's columns -> 8-row scratch (the stage of its last chunk, free until the next
      // issue refills it) -> the row state of this lane's row qr of the group
      float *sO8 = reinterpret_cast<float *>(ring_b + (n_st == 0 ? RST - 1 : n_st - 1) * STAGE_BYTES);
      __syncwarp();
      Base::template group_to_rows<MT>(sO8, grp, lane, col_m, col_l, acc_t, row_m, row_l, acc_o, merge);
    }
  }
};

// ---- warp-specialised variant (d = 64; FlashAttention-3's layout; experimental, flag bit 5) ----
// Why: in fwd_wgmma_kernel both warpgroups load K/V with cp.async and meet at __syncthreads twice
// per block, so they run in lockstep: both do their softmax at the same time and the tensor
// cores idle meanwhile (H100: ~200 TF/s in the sequence phase where FA3 reaches ~500). Here
//   warpgroup 0 = producer: its first thread streams K/V blocks with TMA into 2 stages (full[s]
//     completes when the stage's bytes have landed; empty[s] when the 8 consumer warps are done
//     with it), then drops to 24 registers;
//   warpgroups 1..NCWG = consumers (240 registers with NCWG = 2; 160 with 3): the depth phase in
//     per-warp rings over the K/V stages' smem (the producer starts on K/V once every consumer
//     warp has arrived on depth_done), then per block S = Q K^T, softmax, O += P V, with the S
//     issue handed round by named barriers ("ping-pong"): while one warpgroup runs its softmax,
//     the others' GEMMs have the tensor cores.
// NCWG = 3 (flag bit 3, FA3's choice at d = 64): 192 rows per CTA, 12 consumer warps to hide the
// softmax's latency; 3 depth ring stages per warp instead of 5.
// Named barriers: 1 = the consumers' Q tile is in smem; 2 + i = consumer warpgroup i may issue
// its next S. The kernel uses no __syncthreads after the producer's warps have exited.
template <int NCWG>
struct WsFwdConfig {
  static constexpr int D = 64, NCWARPS = 4 * NCWG, NTHREADS = 128 * (NCWG + 1);
  static constexpr int BM = 16 * NCWARPS;      // packed rows per CTA
  static constexpr int BN = 128;               // keys per block
  static constexpr int LDS = D + 8;
  static constexpr int Q_BYTES = BM * LDS * 2;
  static constexpr int TILE_BYTES = BN * D * 2;
  static constexpr int KV_STAGES = 2;
  static constexpr int KV_BYTES = KV_STAGES * 2 * TILE_BYTES;
  static constexpr int BAR_BYTES = 64;         // full[2], empty[2], depth_done (8 bytes each), padded
  // Depth ring stages per warp and scratch stride. The ring shares its smem with the K/V stages
  // (the producer starts streaming K/V when every consumer warp is done with its depth phase), so
  // it can be deep: 5 stages with two consumer warpgroups, 3 with three (session 9; before, the
  // ring sat beside the K/V stages with 3 and 2 stages). The depth phase is bound by the rows each
  // warp has in flight (RST - 1 chunks of 16): the forward's time grew by the full memory time of
  // the depth rows (T=16384: +0.79 ms from L = 64 to 128 for +2.15 GB, 2.7 TB/s).
  static constexpr int RST = NCWG == 2 ? 5 : 3, RSD = D + 4;
  static constexpr int RING_WARP_BYTES = RST * 2 * 16 * LDS * 2, SCRATCH_WARP_BYTES = (8 * RSD + 16) * 4;
  // NCWG = 3 (KV0_OWN): K/V stage 0 has smem of its own, before the union of stage 1 and the
  // rings (whose group scratch lives in the stage just consumed), so the producer loads block 0
  // during the depth phase; with two warpgroups the 5-stage rings leave no room for it.
  static constexpr bool KV0_OWN = NCWG == 3;
  static constexpr int KV0_BYTES = KV0_OWN ? 2 * TILE_BYTES : 0;
  static constexpr int RING_BYTES = NCWARPS * (RING_WARP_BYTES + (KV0_OWN ? 0 : SCRATCH_WARP_BYTES));
  static constexpr int UNION_BYTES = KV_BYTES - KV0_BYTES > RING_BYTES ? KV_BYTES - KV0_BYTES : RING_BYTES;
  // sQ | [K/V stage 0] | K/V stages or (depth phase, L > 0) the depth ring (+ scratch) | barriers,
  // after 1024 bytes of slack
  static constexpr int SMEM_BYTES_NODEPTH = 1024 + Q_BYTES + KV_BYTES + BAR_BYTES;
  static constexpr int SMEM_BYTES = 1024 + Q_BYTES + KV0_BYTES + UNION_BYTES + BAR_BYTES;
  // registers per thread after setmaxnreg: the producer's and the consumers' (FA3's split)
  static constexpr int PRODUCER_REGS = 24, CONSUMER_REGS = NCWG == 2 ? 240 : 160;
  static_assert(NCWG == 2 || NCWG == 3, "two or three consumer warpgroups");
  static_assert(Q_BYTES % 1024 == 0 && TILE_BYTES % 1024 == 0, "TMA / wgmma tiles stay 1024-byte aligned");
  static_assert(SMEM_BYTES <= 232448, "within the sm_90 opt-in shared memory");
  // flag bit 8 (three warpgroups, at most 2 key blocks): both K/V stages and two ring slots of
  // one warpgroup each, in the same smem
  static constexpr int SLOT_BYTES = 4 * RING_WARP_BYTES;
  static_assert(NCWG == 2 || (KV0_OWN && KV_BYTES - KV0_BYTES + 2 * SLOT_BYTES <= UNION_BYTES), "stagger layout");
  // the registers the launch gets (ptxas: 65536 / NTHREADS rounded down to a multiple of 8 per
  // thread) must cover the split, or setmaxnreg.inc would wait forever
  static_assert(128 * PRODUCER_REGS + 128 * NCWG * CONSUMER_REGS <= NTHREADS * ((65536 / NTHREADS) & ~7),
                "register split of the warpgroups");
};

// The kernel's body, for the two kernels below: TMA_RING (flag bit 13 with bit 3, no stagger) runs
// the depth phase on FwdDepthTmaRing, fed by the depth maps tm_kd, tm_vd.
template <typename T, int NCWG, bool TMA_RING>
__device__ __forceinline__ void fwd_wgmma_ws_body(const moda_attn_params &p, const int flags, const CUtensorMap &tm_k,
                                                  const CUtensorMap &tm_v, const CUtensorMap *tm_kd,
                                                  const CUtensorMap *tm_vd) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = WsFwdConfig<NCWG>;
  using Mma = MmaOp<T>;
  constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, LDS = Cfg::LDS, KSTEPS = D / 16;
  constexpr int NCTHREADS = 128 * NCWG;  // consumer threads

  extern __shared__ __align__(16) unsigned char smem_raw[];  // rounded up to 1024 below
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  T *sQ = reinterpret_cast<T *>(smem);
  unsigned char *sKV = smem + Cfg::Q_BYTES;
  const int64_t L = p.L;
  uint64_t *full = reinterpret_cast<uint64_t *>(sKV + (L > 0 ? Cfg::KV0_BYTES + Cfg::UNION_BYTES : Cfg::KV_BYTES));
  uint64_t *empty = full + 2, *depth_done = full + 4;
  T *sRing = reinterpret_cast<T *>(sKV + Cfg::KV0_BYTES);  // the depth phase's rings, over the K/V stages (1)
  auto sK = [&](int stage) { return sKV + stage * 2 * Cfg::TILE_BYTES; };
  auto sV = [&](int stage) { return sKV + stage * 2 * Cfg::TILE_BYTES + Cfg::TILE_BYTES; };

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // Tiles alternate heavy (late) and light (early) causal rows: with heavy-first order alone, the
  // 132 CTAs in flight had nearly the same length and stayed in step, so every SM ran its depth
  // phase (memory-bound) at the same time as all others and its sequence phase (tensor-bound) at
  // the same time too - the forward's time grew by the full memory time of the depth rows (L=64
  // -> 256 at T=16384: +2.0 ms for +6.4 GB, 3.2 TB/s). Mixed lengths put the SMs out of step.
  // (Flag bit 6 keeps the heavy-first order, for A/B.)
  const int64_t bx = blockIdx.x, n_tiles = gridDim.x;
  const int64_t tile = (flags & FWD_TILES_HEAVY_FIRST) ? n_tiles - 1 - bx : (bx & 1) ? bx / 2 : n_tiles - 1 - bx / 2;
  const int64_t g = blockIdx.y, b = blockIdx.z;
  const int64_t G = p.G, TG = p.T * G;
  const int64_t R0 = tile * BM;
  // (row_lim is only meaningful for consumer lanes: Rw below is a consumer warp's first row)
  const int64_t Rw = R0 + (warp - 4) * 16;
  int n_blocks, unmasked_end, row_lim[2];
  wgmma_seq_range<BM, BN>(p, R0, Rw, lane, n_blocks, unmasked_end, row_lim);
  // the same for every thread of the CTA; from lane 0 by __shfl_sync the compiler knows it, so
  // the block counter, the stage and the wgmma descriptors built from them stay in uniform
  // registers (no R2UR before every wgmma)
  n_blocks = __shfl_sync(0xffffffffu, n_blocks, 0);
  unmasked_end = __shfl_sync(0xffffffffu, unmasked_end, 0);
  // Phase order (flag bit 7): every other CTA runs its sequence phase first. Equal-length CTAs
  // (non-causal) otherwise stay in step, every SM streaming depth rows at the same time.
  // Staggered by warpgroup instead (flag bit 8, three warpgroups, keys in at most the two K/V
  // stages, so no stage is reused): no ping-pong, no depth_done; see the consumers below.
  const bool stagger = !TMA_RING && NCWG == 3 && (flags & FWD_WS_STAGGER) && L > 0 && n_blocks > 0 &&
                      n_blocks <= Cfg::KV_STAGES;
  // TMA_RING: the depth rings' stage barriers, after the rings in the union (past K/V stage 1)
  using TmaRing = FwdDepthTmaRing<T, 2, Cfg::RST, Cfg::RSD>;
  static_assert(!TMA_RING || (Cfg::KV0_OWN && Cfg::NCWARPS * TmaRing::WARP_RING_BYTES >= Cfg::KV_BYTES - Cfg::KV0_BYTES &&
                              Cfg::NCWARPS * (TmaRing::WARP_RING_BYTES + Cfg::RST * 8) <= Cfg::UNION_BYTES),
                "TMA rings and their barriers in the union, the barriers clear of K/V stage 1");
  uint64_t *tma_bars = reinterpret_cast<uint64_t *>(sKV + Cfg::KV0_BYTES + Cfg::NCWARPS * TmaRing::WARP_RING_BYTES);
  const bool depth_first =
      L > 0 && !stagger &&
      !((flags & FWD_WS_ALT_PHASES) && n_blocks > 0 &&
        ((blockIdx.x + (int64_t)gridDim.x * (blockIdx.y + (int64_t)gridDim.y * blockIdx.z)) & 1));

  if (tid == 0) {
    mbar_init(&full[0], 1); mbar_init(&full[1], 1);
    mbar_init(&empty[0], Cfg::NCWARPS); mbar_init(&empty[1], Cfg::NCWARPS);
    mbar_init(depth_done, Cfg::NCWARPS);
    if constexpr (TMA_RING)
      for (int k = 0; k < Cfg::NCWARPS * Cfg::RST; ++k) mbar_init(&tma_bars[k], 1);
    mbar_fence_init();
  }
  __syncthreads();  // the last CTA-wide barrier: the producer's idle warps exit below

  if (warp < 4) {  // ---------------- producer warpgroup ----------------
    setmaxnreg_dec<Cfg::PRODUCER_REGS>();
    if (tid == 0 && n_blocks > 0) {
      tma_prefetch_map(&tm_k);
      tma_prefetch_map(&tm_v);
      for (int blk = 0; blk < n_blocks; ++blk) {
        const int st = blk & 1;
        // the depth rings over the K/V stages (stage 1 only, with KV0_OWN) are free
        if (depth_first && blk == (Cfg::KV0_OWN ? 1 : 0)) mbar_wait(depth_done, 0);
        if (blk >= 2) mbar_wait(&empty[st], ((blk >> 1) - 1) & 1);  // the consumers released its last use
        mbar_arrive_expect_tx(&full[st], 2 * Cfg::TILE_BYTES);      // rows past S count too (zero-filled)
        tma_load_4d(sK(st), &tm_k, &full[st], 0, (int)g, blk * BN, (int)b);
        tma_load_4d(sV(st), &tm_v, &full[st], 0, (int)g, blk * BN, (int)b);
      }
    }
    return;
  }

  // ---------------- consumer warpgroups ----------------
  setmaxnreg_inc<Cfg::CONSUMER_REGS>();
  using Ring = FwdDepthRing<T, D, 2, Cfg::RST, LDS, Cfg::RSD>;
  static_assert(Ring::WARP_RING_ELEMS * 2 == Cfg::RING_WARP_BYTES &&
                Ring::WARP_SCRATCH_FLOATS * 4 == Cfg::SCRATCH_WARP_BYTES, "ring layout");
  const int ctid = tid - 128, cwarp = warp - 4, cwg = cwarp / 4;
  // this warpgroup's phase order and ring: staggered, warpgroups 0 and 2 run depth first in slots
  // 0 and 1 after both K/V stages, warpgroup 1 runs it last in slot 0 (named barrier 5: warpgroup
  // 0 is done with it); else the CTA's order, the rings over the K/V stages
  const bool wg_depth_first = stagger ? cwg != 1 : depth_first;
  T *ring_mem = stagger ? reinterpret_cast<T *>(sKV + Cfg::KV_BYTES + (cwg == 2 ? Cfg::SLOT_BYTES : 0)) +
                              (cwarp % 4) * Ring::WARP_RING_ELEMS
                        : sRing + cwarp * Ring::WARP_RING_ELEMS;
  const int qc = lane % 4;
  const float scale_log2 = (float)p.scale * 1.4426950408889634f;
  const T *q = static_cast<const T *>(p.q);
  load_rows_async<D, LDS>(sQ, BM, ctid, NCTHREADS, [&](int r) -> const T * {
    const int64_t R = R0 + r;
    return R < TG ? packed_row(q, p.q_stride, b, g, G, R) : nullptr;
  });
  cp_async_commit();
  Ring ring;
  TmaRing tring;  // TMA_RING only
  auto tring_start = [&]() {
    tring.init_tma(p, flags, sKV + Cfg::KV0_BYTES + cwarp * TmaRing::WARP_RING_BYTES, tma_bars + cwarp * Cfg::RST,
                   tm_kd, tm_vd, Rw, b, g, lane);
    tring.prologue();
  };
  if (wg_depth_first) {
    if constexpr (TMA_RING) {
      tring_start();
      cp_async_wait<0>();  // the Q tile has landed (the TMA ring uses no cp.async)
    } else {
      ring.init(p, flags, ring_mem, Rw, b, g, lane);
      ring.prologue(p);
      cp_async_wait<Cfg::RST - 1>();  // the Q tile (the oldest group) has landed
    }
  } else {
    cp_async_wait<0>();
  }
  named_bar_sync(1, NCTHREADS);  // every consumer thread's Q rows are in smem

  float row_m[2], row_l[2];
  float acc_o[1][D / 8][4];
  row_m[0] = row_m[1] = -INFINITY;
  row_l[0] = row_l[1] = 0.f;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) acc_o[0][j][0] = acc_o[0][j][1] = acc_o[0][j][2] = acc_o[0][j][3] = 0.f;

  float *scr = Cfg::KV0_OWN ? nullptr  // in the ring's stages
                             : reinterpret_cast<float *>(sRing + Cfg::NCWARPS * Ring::WARP_RING_ELEMS) +
                                   cwarp * Ring::WARP_SCRATCH_FLOATS;
  if (wg_depth_first) {  // depth phase, in the smem of the K/V stages (the producer waits for depth_done) or a slot
    if constexpr (TMA_RING) tring.template run<Mma, 1>(sQ, R0, scale_log2, row_m, row_l, acc_o);
    else ring.template run<Mma, 1>(p, sQ, R0, scr, scale_log2, row_m, row_l, acc_o);
    if (stagger) {
      // warpgroup 0 hands slot 0 to warpgroup 1 (generic-proxy accesses only: the barrier orders them)
      if (cwg == 0) named_bar_arrive(5, 256);
    } else {
      // this warp's ring and scratch accesses (cp.async, ldmatrix, st.shared: the generic proxy)
      // before the TMA writes (the async proxy) that will reuse the bytes
      fence_proxy_async_smem();
      __syncwarp();
      if (lane == 0) mbar_arrive(depth_done);
    }
  }

  if (n_blocks > 0) {
    uint32_t q_a[KSTEPS][4];  // loaded for every block (load_q_frags)
    float s[BN / 8][4], corr[2];
    uint32_t pa[BN / 16][4];
    // the K/V stages' shared address by __shfl_sync from lane 0: the compiler then knows it is
    // warp-uniform and builds the wgmma descriptors in uniform registers (no R2UR per wgmma)
    const uint32_t kv_u32 = __shfl_sync(0xffffffffu, smem_u32(sKV), 0);
    // ping-pong (round robin with three): consumer warpgroup 0 issues first; each hands the turn
    // to the next after its S issue (the last skips its final hand-over, which nobody would wait for)
    if (!stagger && cwg == NCWG - 1) named_bar_arrive(2, 256);
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int st = blk & 1;
      mbar_wait(&full[st], (blk >> 1) & 1);
      load_q_frags<KSTEPS, LDS>(q_a, sQ, cwarp, lane);
      if (!stagger) named_bar_sync(2 + cwg, 256);
      wgmma_fence_operand(s);
      wgmma_fence();
      wgmma_rs_kmajor<T, BN, KSTEPS>(s, q_a, kv_u32 + st * 2 * Cfg::TILE_BYTES, BN, 0);
      wgmma_commit();
      if (!stagger && (cwg != NCWG - 1 || blk + 1 < n_blocks)) named_bar_arrive(2 + (cwg + 1) % NCWG, 256);
      wgmma_wait<0>();
      wgmma_fence_operand(s);
      wgmma_softmax_block_any<BN>(s, blk * BN, blk * BN + BN > unmasked_end, row_lim, qc, scale_log2, row_m, row_l, corr);
      wgmma_rescale_rows<D>(acc_o[0], corr);
      pack_acc_as_a<T, BN / 16>(s, pa);
      wgmma_fence_operand(acc_o[0]);
      wgmma_fence();  // acc_o was rescaled and pa written by ordinary instructions
      wgmma_rs_mnmajor<T, D, BN / 16>(acc_o[0], pa, kv_u32 + st * 2 * Cfg::TILE_BYTES + Cfg::TILE_BYTES, BN, 1);
      wgmma_commit();
      wgmma_wait<0>();
      wgmma_fence_operand(acc_o[0]);
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[st]);  // this warp is done with the stage's K and V
    }
  }
  if (L > 0 && !wg_depth_first) {  // depth phase last (flag bits 7, 8), merged into the rows' state
    if (stagger) {
      named_bar_sync(5, 256);        // warpgroup 0 is done with slot 0
    } else {
      fence_proxy_async_smem();      // this warp's wgmma reads (async proxy) before the ring's writes
      named_bar_sync(1, NCTHREADS);  // every consumer warp is done with the K/V stages
    }
    if constexpr (TMA_RING) {
      tring_start();
      tring.template run<Mma, 1>(sQ, R0, scale_log2, row_m, row_l, acc_o, true);
    } else {
      ring.init(p, flags, ring_mem, Rw, b, g, lane);
      ring.prologue(p);
      ring.template run<Mma, 1>(p, sQ, R0, scr, scale_log2, row_m, row_l, acc_o, true);
    }
  }
  wgmma_write_o_lse<T, D>(p, acc_o[0], row_m, row_l, Rw, lane, b, g, G, TG);
#elif defined(__CUDA_ARCH__)
  __trap();  // a build without sm_90a code: fail loudly rather than leave O and lse unwritten
#endif
}
template <typename T, int NCWG>
__global__ void __launch_bounds__(WsFwdConfig<NCWG>::NTHREADS, 1)
fwd_wgmma_ws_kernel(const moda_attn_params p, const int flags, const __grid_constant__ CUtensorMap tm_k,
                    const __grid_constant__ CUtensorMap tm_v) {
  fwd_wgmma_ws_body<T, NCWG, false>(p, flags, tm_k, tm_v, nullptr, nullptr);
}
// Flag bit 13 with three warpgroups: the depth phase on FwdDepthTmaRing (session 19, not yet run).
template <typename T>
__global__ void __launch_bounds__(WsFwdConfig<3>::NTHREADS, 1)
fwd_wgmma_ws_tma_kernel(const moda_attn_params p, const int flags, const __grid_constant__ CUtensorMap tm_k,
                        const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_kd,
                        const __grid_constant__ CUtensorMap tm_vd) {
  fwd_wgmma_ws_body<T, 3, true>(p, flags, tm_k, tm_v, &tm_kd, &tm_vd);
}

// ---- the split forward (flag bit 12, A/B): sequence and depth parts at the same time ----
// In the ws kernel each consumer warp runs its rows' depth phase (memory-bound) and sequence phase
// (tensor-bound) one after the other, so an SM (one CTA) does one kind of work at a time, and the
// DeiT-Tiny forward takes about the sum of a sequence-only forward and the depth stream alone
// (session 18). Here the softmax is split, as a split-K combine: per CTA of BM = 128 packed rows
//   warpgroups 0, 1 = sequence: S = Q K^T, softmax, O += P V over the sequence keys only
//     (ping-pong as in the ws kernel), their rows' (m, l, O) in registers; thread 0 issues the
//     TMA loads of the first two K/V blocks, warp 4's lane 0 each later one into the stage both
//     warpgroups have released (no producer warpgroup: its registers go to the depth warps);
//   warpgroups 2, 3 = depth: warp 8 + w streams the depth rows of the sequence warp w's 16 rows
//     through a 4-stage FwdDepthRing (beside the K/V stages, not over them) into its own
//     (m, l, O), then leaves that state in its ring's smem, in the lanes' register layout;
// and each sequence warp merges its rows' depth state in by log-sum-exp before it writes O.
// Session 19's first version (one depth warpgroup, 32 rows and a 7-stage ring per warp, beside
// a producer warpgroup) was correct but slower: H100 forward 0.240 vs 0.174 ms at DeiT-Tiny,
// 0.709 vs 0.618 at DeiT-Tiny-64, 0.474-0.481 vs 0.428 at LM-64 - four warps' dependent chunk
// chains cannot stream the rows (2.2-2.3 TB/s where the depth stream dominates, against the ws3
// depth phase's 2.6 with twelve warps and the same rows in flight).
template <bool TMA_RING>
struct SplitFwdConfig {
  static constexpr int D = 64, NSWARPS = 8, NDWARPS = 8, NTHREADS = 32 * (NSWARPS + NDWARPS);
  static constexpr int BM = 16 * NSWARPS;        // packed rows per CTA (16 per sequence and per depth warp)
  static constexpr int BN = 128;
  static constexpr int LDS = D + 8;
  static constexpr int Q_BYTES = BM * LDS * 2;
  static constexpr int TILE_BYTES = BN * D * 2;
  static constexpr int KV_BYTES = 2 * 2 * TILE_BYTES;
  static constexpr int RST = 4, RSD = D + 4;
  // the TMA ring's stages are unpadded (swizzled): 4 KB instead of 4.6
  static constexpr int RING_WARP_BYTES = TMA_RING ? RST * 2 * 16 * D * 2 : RST * 2 * 16 * LDS * 2;
  // no room for a barrier block: full[2] and empty[2] live in the padding of sQ's rows 0 and 1
  // (bytes 2 D .. 2 LDS of a row, which the Q loads and ldmatrix never touch); the TMA ring's
  // stage barriers (RST per depth warp) after the rings
  static constexpr int RING_BAR_BYTES = TMA_RING ? NDWARPS * RST * 8 : 0;
  static constexpr int SMEM_BYTES = 1024 + Q_BYTES + KV_BYTES + NDWARPS * RING_WARP_BYTES + RING_BAR_BYTES;
  // a depth warp's state, left in its ring: row_m[2], row_l[2], acc_o[8][4] per lane
  static constexpr int STATE_FLOATS = 4 + D / 2;
  // registers after setmaxnreg (ptxas 13.0): 144 / 112 leaves one 8-byte spill in the sequence
  // warps; 152 / 104 spilled 80 bytes, 160 / 96 152 (the depth ring does not fit 104)
  static constexpr int SEQ_REGS = 144, DEPTH_REGS = 112;
  static_assert(Q_BYTES % 1024 == 0 && TILE_BYTES % 1024 == 0, "TMA / wgmma tiles stay 1024-byte aligned");
  static_assert(SMEM_BYTES <= 232448, "within the sm_90 opt-in shared memory");
  static_assert(2 * (LDS - D) >= 16, "two 8-byte barriers in a row's padding");
  static_assert(STATE_FLOATS * 32 * 4 <= RING_WARP_BYTES, "the depth state fits a ring");
  static_assert(32 * NSWARPS * SEQ_REGS + 32 * NDWARPS * DEPTH_REGS <= NTHREADS * ((65536 / NTHREADS) & ~7),
                "register split of the warpgroups");
};

template <typename T, bool TMA_RING>
__global__ void __launch_bounds__(SplitFwdConfig<TMA_RING>::NTHREADS, 1)
fwd_wgmma_split_kernel(const moda_attn_params p, const int flags, const __grid_constant__ CUtensorMap tm_k,
                       const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_kd,
                       const __grid_constant__ CUtensorMap tm_vd) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = SplitFwdConfig<TMA_RING>;
  using Mma = MmaOp<T>;
  constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, LDS = Cfg::LDS, KSTEPS = D / 16;
  constexpr int NT = Cfg::NTHREADS;

  extern __shared__ __align__(16) unsigned char smem_raw[];  // rounded up to 1024 below
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  T *sQ = reinterpret_cast<T *>(smem);
  unsigned char *sKV = smem + Cfg::Q_BYTES;
  unsigned char *sRings = sKV + Cfg::KV_BYTES;
  uint64_t *full = reinterpret_cast<uint64_t *>(smem + 2 * D);             // row 0's padding
  uint64_t *empty = reinterpret_cast<uint64_t *>(smem + 2 * LDS + 2 * D);  // row 1's
  uint64_t *ring_bars = reinterpret_cast<uint64_t *>(sRings + Cfg::NDWARPS * Cfg::RING_WARP_BYTES);  // TMA_RING
  auto sK = [&](int stage) { return sKV + stage * 2 * Cfg::TILE_BYTES; };
  auto sV = [&](int stage) { return sKV + stage * 2 * Cfg::TILE_BYTES + Cfg::TILE_BYTES; };

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t bx = blockIdx.x, n_tiles = gridDim.x;  // heavy and light causal tiles alternate (ws kernel)
  const int64_t tile = (flags & FWD_TILES_HEAVY_FIRST) ? n_tiles - 1 - bx : (bx & 1) ? bx / 2 : n_tiles - 1 - bx / 2;
  const int64_t g = blockIdx.y, b = blockIdx.z;
  const int64_t G = p.G, TG = p.T * G;
  const int64_t R0 = tile * BM;
  const int64_t Rw = R0 + (warp % Cfg::NSWARPS) * 16;  // this warp's 16 rows (sequence or depth)
  int n_blocks, unmasked_end, row_lim[2];
  wgmma_seq_range<BM, BN>(p, R0, Rw, lane, n_blocks, unmasked_end, row_lim);
  n_blocks = __shfl_sync(0xffffffffu, n_blocks, 0);  // warp-uniform (uniform registers, see the ws kernel)
  unmasked_end = __shfl_sync(0xffffffffu, unmasked_end, 0);

  if (tid == 0) {
    mbar_init(&full[0], 1); mbar_init(&full[1], 1);
    mbar_init(&empty[0], Cfg::NSWARPS); mbar_init(&empty[1], Cfg::NSWARPS);
    if constexpr (TMA_RING)
      for (int k = 0; k < Cfg::NDWARPS * Cfg::RST; ++k) mbar_init(&ring_bars[k], 1);
    mbar_fence_init();
  }
  __syncthreads();
  auto load_kv = [&](int blk) {  // one thread: K/V block blk into stage blk & 1
    const int st = blk & 1;
    mbar_arrive_expect_tx(&full[st], 2 * Cfg::TILE_BYTES);  // rows past S count too (zero-filled)
    tma_load_4d(sK(st), &tm_k, &full[st], 0, (int)g, blk * BN, (int)b);
    tma_load_4d(sV(st), &tm_v, &full[st], 0, (int)g, blk * BN, (int)b);
  };
  if (tid == 0) {
    tma_prefetch_map(&tm_k);
    tma_prefetch_map(&tm_v);
    for (int blk = 0; blk < n_blocks && blk < 2; ++blk) load_kv(blk);
  }

  const float scale_log2 = (float)p.scale * 1.4426950408889634f;
  const T *q = static_cast<const T *>(p.q);
  load_rows_async<D, LDS>(sQ, BM, tid, NT, [&](int r) -> const T * {
    const int64_t R = R0 + r;
    return R < TG ? packed_row(q, p.q_stride, b, g, G, R) : nullptr;
  });
  cp_async_commit();

  if (warp >= Cfg::NSWARPS) {  // ---------------- depth warpgroups ----------------
    setmaxnreg_dec<Cfg::DEPTH_REGS>();
    const int dw = warp - Cfg::NSWARPS;
    T *ring_w = reinterpret_cast<T *>(sRings + dw * Cfg::RING_WARP_BYTES);
    float row_m[2] = {-INFINITY, -INFINITY}, row_l[2] = {0.f, 0.f}, acc_o[1][D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j) acc_o[0][j][0] = acc_o[0][j][1] = acc_o[0][j][2] = acc_o[0][j][3] = 0.f;
    if constexpr (TMA_RING) {
      using Ring = FwdDepthTmaRing<T, 2, Cfg::RST, Cfg::RSD>;
      static_assert(Ring::WARP_RING_BYTES == Cfg::RING_WARP_BYTES, "ring layout");
      Ring ring;
      ring.init_tma(p, flags, sRings + dw * Cfg::RING_WARP_BYTES, ring_bars + dw * Cfg::RST, &tm_kd, &tm_vd, Rw, b,
                    g, lane);
      ring.prologue();
      cp_async_wait<0>();     // the Q tile has landed (the ring uses no cp.async)
      named_bar_sync(1, NT);  // every thread's Q rows are in smem
      ring.template run<Mma, 1>(sQ, R0, scale_log2, row_m, row_l, acc_o);
    } else {
      using Ring = FwdDepthRing<T, D, 2, Cfg::RST, LDS, Cfg::RSD>;
      static_assert(Ring::WARP_RING_ELEMS * 2 == Cfg::RING_WARP_BYTES, "ring layout");
      Ring ring;
      ring.init(p, flags, ring_w, Rw, b, g, lane);
      ring.prologue(p);
      cp_async_wait<Cfg::RST - 1>();  // the Q tile (the oldest group) has landed
      named_bar_sync(1, NT);          // every thread's Q rows are in smem
      ring.template run<Mma, 1>(p, sQ, R0, nullptr, scale_log2, row_m, row_l, acc_o);
    }
    __syncwarp();  // every cp.async of the ring retired (run's end), every lane's reads of it done
    float *s = reinterpret_cast<float *>(ring_w) + lane;
    s[0] = row_m[0]; s[32] = row_m[1];
    s[64] = row_l[0]; s[96] = row_l[1];
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[(4 + 4 * j + e) * 32] = acc_o[0][j][e];
    named_bar_arrive(4, NT);  // the depth state is in smem (the barrier orders the stores)
    return;
  }

  // ---------------- sequence warpgroups ----------------
  setmaxnreg_inc<Cfg::SEQ_REGS>();
  const int cwarp = warp, cwg = cwarp / 4, qc = lane % 4;
  cp_async_wait<0>();
  named_bar_sync(1, NT);
  float row_m[2], row_l[2], acc_o[D / 8][4];
  row_m[0] = row_m[1] = -INFINITY;
  row_l[0] = row_l[1] = 0.f;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) acc_o[j][0] = acc_o[j][1] = acc_o[j][2] = acc_o[j][3] = 0.f;
  if (n_blocks > 0) {
    uint32_t q_a[KSTEPS][4];
    float s[BN / 8][4], corr[2];
    uint32_t pa[BN / 16][4];
    const uint32_t kv_u32 = __shfl_sync(0xffffffffu, smem_u32(sKV), 0);
    if (cwg == 1) named_bar_arrive(2, 256);  // ping-pong: warpgroup 0 issues first
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int st = blk & 1;
      mbar_wait(&full[st], (blk >> 1) & 1);
      load_q_frags<KSTEPS, LDS>(q_a, sQ, cwarp, lane);
      named_bar_sync(2 + cwg, 256);
      wgmma_fence_operand(s);
      wgmma_fence();
      wgmma_rs_kmajor<T, BN, KSTEPS>(s, q_a, kv_u32 + st * 2 * Cfg::TILE_BYTES, BN, 0);
      wgmma_commit();
      if (cwg == 0 || blk + 1 < n_blocks) named_bar_arrive(2 + (cwg + 1) % 2, 256);
      wgmma_wait<0>();
      wgmma_fence_operand(s);
      wgmma_softmax_block_any<BN>(s, blk * BN, blk * BN + BN > unmasked_end, row_lim, qc, scale_log2, row_m, row_l, corr);
      wgmma_rescale_rows<D>(acc_o, corr);
      pack_acc_as_a<T, BN / 16>(s, pa);
      wgmma_fence_operand(acc_o);
      wgmma_fence();
      wgmma_rs_mnmajor<T, D, BN / 16>(acc_o, pa, kv_u32 + st * 2 * Cfg::TILE_BYTES + Cfg::TILE_BYTES, BN, 1);
      wgmma_commit();
      wgmma_wait<0>();
      wgmma_fence_operand(acc_o);
      __syncwarp();
      if (lane == 0) {
        mbar_arrive(&empty[st]);  // this warp is done with the stage's K and V
        // warp 4 (warpgroup 1, the later of the ping-pong) refills the stage once all 8 warps released it
        if (cwarp == 4 && blk + 2 < n_blocks) {
          mbar_wait(&empty[st], (blk >> 1) & 1);
          load_kv(blk + 2);
        }
      }
      __syncwarp();
    }
  }
  // the depth state of these 16 rows (depth warp 8 + cwarp), merged as the ring merges: m = max
  // of both sides, each scaled by exp2(its m - m) (0 for an empty side)
  named_bar_sync(4, NT);
  const float *ds = reinterpret_cast<const float *>(sRings + cwarp * Cfg::RING_WARP_BYTES) + lane;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float md = ds[h * 32], ld = ds[(2 + h) * 32], mo = row_m[h];
    const float m_new = fmaxf(mo, md), m_use = m_new == -INFINITY ? 0.f : m_new;
    const float a = exp2_ftz(mo - m_use), bd = exp2_ftz(md - m_use);
    row_m[h] = m_new;
    row_l[h] = row_l[h] * a + ld * bd;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      acc_o[j][2 * h] = fmaf(acc_o[j][2 * h], a, ds[(4 + 4 * j + 2 * h) * 32] * bd);
      acc_o[j][2 * h + 1] = fmaf(acc_o[j][2 * h + 1], a, ds[(4 + 4 * j + 2 * h + 1) * 32] * bd);
    }
  }
  wgmma_write_o_lse<T, D>(p, acc_o, row_m, row_l, Rw, lane, b, g, G, TG);
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// ---- host side ----

// MODA_CUDA_WGMMA=1 or unset (the default since it passed the checker and the spec on the H100,
// session 5): where the shape rule below picks it; =2 for every shape it can run (tests); 0: off. The forward flags' bits 2 and 4
// (FWD_NO_FOLD, FWD_NO_WGMMA) turn it off for A/B timing.
int wgmma_mode() {
  static int mode = -1;
  if (mode < 0) {
    // default 1 (verified on the H100 in session 5); MODA_CUDA_WGMMA=0 keeps every shape on mma.sync
    const char *e = getenv("MODA_CUDA_WGMMA");
    mode = e && (e[0] == '0' || e[0] == '2') ? e[0] - '0' : 1;
  }
  return mode;
}
// The backward's wgmma kernels follow MODA_CUDA_WGMMA unless MODA_CUDA_WGMMA_BWD says otherwise:
// 0 none, 1 both, 2 the sequence dK/dV kernel only, 3 the dQ kernel only (to tell a failure of one
// from another on a first device run).
int wgmma_bwd_mode() {
  static int mode = -1;
  if (mode < 0) {
    const char *e = getenv("MODA_CUDA_WGMMA_BWD");
    mode = e && e[0] >= '0' && e[0] <= '3' ? e[0] - '0' : wgmma_mode() > 0;
  }
  return mode;
}

// The warp-specialised kernel: d = 64 where the wgmma kernel runs, with flag bit 5, and K, V
// encodable as TMA maps (else fwd_wgmma_kernel runs, and the name says so). Flag bit 5 is in
// the default flags since session 6 (it passed the checker, sanitizer and spec on the H100)..
static bool use_ws(const moda_attn_params *p, int flags) { return p->d == 64 && (flags & FWD_WGMMA_WS); }
static bool ws_layout_ok(const moda_attn_params *p);

// Short sequences with many depth rows (DeiT's 197 keys and L = 22 or 126): fewer than 256 mean
// visible keys and fewer than 16 per depth row. Timed by GPU time alone (session 12, H100), the
// three-warpgroup ws kernel beats mma.sync there - DeiT-Tiny forward 0.190 vs 0.202 ms,
// DeiT-Tiny-64 0.597 vs 0.602 - where the idle-start timing of session 5 had mma.sync ahead.
// Only where K and V have a TMA-encodable layout: the non-ws wgmma kernel it would fall back to
// is slower than mma.sync on short shapes.
static bool fwd_ws_short(const moda_attn_params *p, int flags) {
  const int64_t seq_keys = mean_seq_keys(p);
  return use_ws(p, flags) && (flags & FWD_WS_3WG) && p->L > 0 && seq_keys < 256 && seq_keys < 16 * p->L &&
         ws_layout_ok(p);
}

// Three consumer warpgroups (flag bit 3) wherever the ws kernel runs. Measured on the H100: in
// session 9 1.27x two warpgroups at T=16384, 1.22x at G=16, 1.17x at T=4096 (L = 64), but 0.96x
// at LM-64 (1024 keys, L = 126; 2 depth ring stages instead of 3), so it was kept to shapes with
// at least 16 sequence keys per depth row; since its K/V stage 0 has smem of its own (session
// 14) it wins at LM-64 too: forward 0.409 0.415 vs 0.428 0.426 ms, f+b 1.412 1.407 vs 1.423
// 1.425 (session 15, GPU time, two rounds, one process); session 16, another build, the same
// way: forward 0.415 0.416 vs 0.419 0.420, f+b 1.409 1.420 vs 1.429 1.439.
static bool fwd_ws_three_wg(int flags) { return (flags & FWD_WS_3WG) != 0; }
// The split forward (flag bit 12) where the ws kernel runs and there are depth rows.
static bool fwd_ws_split(const moda_attn_params *p, int flags) { return (flags & FWD_WS_SPLIT) && p->L > 0; }
// Flag bit 13: the depth rings of the split forward, or of the three-warpgroup ws forward, fed by
// TMA (FwdDepthTmaRing), where kd and vd are encodable as depth maps of 16-slot, one-token boxes
// (else the cp.async rings run).
// flags: as fwd_depth_tma_flags returns them (the box is 8 slots x 2 tokens with bit 14).
static bool fwd_depth_tma_maps(const moda_attn_params *p, int flags, CUtensorMap *tm_kd, CUtensorMap *tm_vd) {
  const int slots = (flags & FWD_DEPTH_TMA_PAIRS) ? 8 : 16, tokens = (flags & FWD_DEPTH_TMA_PAIRS) ? 2 : 1;
  return (flags & FWD_DEPTH_TMA_RING) && p->d == 64 &&
         !encode_depth_map(tm_kd, p->kd, p->B, p->T, p->L, p->Hk, p->kd_stride, slots, tokens) &&
         !encode_depth_map(tm_vd, p->vd, p->B, p->T, p->L, p->Hk, p->vd_stride, slots, tokens);
}
// The flags the forward's kernels and maps see: bit 14 (two-token chunks) only where an 8-row group
// spans several tokens (G < 8; with G >= 8 a group is one token and half of each chunk would be
// another group's) and where it saves chunks: two tokens take ceil(L / 8) chunks of 8 slots
// against 2 ceil(L / 16) of 16, fewer only for L % 16 in 1..8 (L = 126, 64: as many, and the
// pair kernel measured 0.5% slower there, session 21).
static int fwd_depth_tma_flags(const moda_attn_params *p, int flags) {
  const int64_t rem = p->L % 16;
  return p->G < 8 && rem >= 1 && rem <= 8 ? flags : flags & ~FWD_DEPTH_TMA_PAIRS;
}

bool fwd_wgmma_supported(const moda_attn_params *p, int cc, int flags) {
  const int mode = wgmma_mode();
  // the A/B flags of the mma.sync kernel (v3 arithmetic, mma.sync forced) keep it
  if (cc != 90 || mode == 0 || (flags & (FWD_NO_WGMMA | FWD_NO_FOLD))) return false;
  if (!fwd_mma_supported(p, cc)) return false;  // same dtype, dim, alignment and size rules
  if (mode == 2) return true;
  // where the sequence part is long; short ones (DeiT's 197 keys: 0.206 ms on mma.sync, 0.239 on
  // wgmma, 0.210 on wgmma ws) keep the mma.sync kernel's 12 warps/SM. Measured on the H100: the
  // v6 wgmma kernel 1.06-1.10x faster than mma.sync on the paper shapes, 1.05x at LM-64 (1024
  // keys, L = 126), equal at DeiT-64 (session 5); the warp-specialised one (d = 64) a further
  // 1.45-1.69x on the paper shapes, 1.08x at LM-64 (session 6), so it takes over from 256 keys;
  // below that only on depth-heavy shapes (fwd_ws_short, session 12's GPU-only timing).
  return mean_seq_keys(p) >= (use_ws(p, flags) ? 256 : 1024) || fwd_ws_short(p, flags);
}

// cuTensorMapEncodeTiled from the driver, fetched once through the runtime (no -lcuda at link time).
typedef CUresult (*EncodeTiledFn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                  const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
static EncodeTiledFn encode_tiled_fn() {
  static EncodeTiledFn fn = nullptr;
  static bool tried = false;
  if (!tried) {
    tried = true;
    void *f = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<EncodeTiledFn>(f);
    else
      cudaGetLastError();  // not sticky; leave no error behind for the next check
  }
  return fn;
}

// The strides of dims 1.. in bytes (dims[0] is contiguous, dims[0] * 2 bytes): a size-1
// dimension's stride is never used, so any valid value replaces it. nullptr or why not.
static const char *tma_strides(const int64_t *n, const int64_t *st_el, int nd, int64_t inner_bytes, cuuint64_t *out) {
  int64_t extent = inner_bytes;
  for (int i = 0; i < nd; ++i) {
    int64_t bytes = st_el[i] * 2;
    if (n[i] == 1) bytes = (extent + 15) / 16 * 16;
    if (bytes <= 0 || bytes % 16 || bytes >= (int64_t(1) << 40))
      return "a stride is not TMA-encodable (a positive multiple of 16 bytes below 2^40)";
    out[i] = (cuuint64_t)bytes;
    extent = bytes * n[i];
  }
  return nullptr;
}

// The layout checks of encode_rows_map, without the driver: base alignment, d, box rows, the
// byte strides of (H, S, B) into strides (TMA's rules: multiples of 16 below 2^40, dims below 2^32).
static const char *rows_map_layout(const void *base, int64_t B, int64_t S, int64_t H, int d, const int64_t xs[3],
                                   int box_rows, cuuint64_t strides[3]) {
  if (((uintptr_t)base & 15) || d % 64 || box_rows < 1 || box_rows > 256 || B < 1 || S < 1 || H < 1)
    return "rows not TMA-encodable (base alignment, d a multiple of 64, 1..256 box rows, non-empty)";
  if (B >= (int64_t(1) << 32) || S >= (int64_t(1) << 32) || H >= (int64_t(1) << 32))
    return "rows not TMA-encodable (a dimension of 2^32 or more)";
  const int64_t n[3] = {H, S, B};
  const int64_t st_el[3] = {xs[2], xs[1], xs[0]};
  return tma_strides(n, st_el, 3, (int64_t)d * 2, strides);
}

const char *encode_rows_map(CUtensorMap *map, const void *base, int64_t B, int64_t S, int64_t H, int d,
                               const int64_t xs[3], int box_rows) {
  EncodeTiledFn enc = encode_tiled_fn();
  if (!enc) return "cuTensorMapEncodeTiled not available from the driver";
  cuuint64_t strides[3];
  if (const char *why = rows_map_layout(base, B, S, H, d, xs, box_rows, strides)) return why;
  const cuuint64_t dims[4] = {(cuuint64_t)d, (cuuint64_t)H, (cuuint64_t)S, (cuuint64_t)B};
  const cuuint32_t box[4] = {64, 1, (cuuint32_t)box_rows, 1}, estride[4] = {1, 1, 1, 1};
  // 2-byte elements: the map's dtype only sets the element size and the OOB fill (zero bits), so
  // bf16 serves fp16 too
  const CUresult r = enc(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<void *>(base), dims, strides, box, estride,
                         CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? nullptr : "cuTensorMapEncodeTiled refused the layout";
}

int make_rows_tensor_map(CUtensorMap *map, const void *base, int64_t B, int64_t S, int64_t H, int d,
                         const int64_t xs[3], int box_rows) {
  const char *why = encode_rows_map(map, base, B, S, H, d, xs, box_rows);
  return why ? moda_set_error(MODA_ERR_UNSUPPORTED, "cuda: %s", why) : MODA_OK;
}

const char *encode_packed_rows_map(CUtensorMap *map, const void *base, int64_t B, int64_t T, int64_t Hk, int64_t G,
                                   int d, const int64_t xs[3], int box_rows) {
  EncodeTiledFn enc = encode_tiled_fn();
  if (!enc) return "cuTensorMapEncodeTiled not available from the driver";
  if (((uintptr_t)base & 15) || d % 64 || B < 1 || T < 1 || Hk < 1 || G < 1 || box_rows < 1 || box_rows > 256 ||
      box_rows % G || G > 256)
    return "packed rows not TMA-encodable (base alignment, d a multiple of 64, G dividing the box rows)";
  // dims (d, i, t, g, b): i steps one head, g steps G heads
  const int64_t n[4] = {G, T, Hk, B};
  const int64_t st_el[4] = {xs[2], xs[1], G * xs[2], xs[0]};
  cuuint64_t strides[4];
  if (const char *why = tma_strides(n, st_el, 4, (int64_t)d * 2, strides)) return why;
  const cuuint64_t dims[5] = {(cuuint64_t)d, (cuuint64_t)G, (cuuint64_t)T, (cuuint64_t)Hk, (cuuint64_t)B};
  const cuuint32_t box[5] = {64, (cuuint32_t)G, (cuuint32_t)(box_rows / G), 1, 1}, estride[5] = {1, 1, 1, 1, 1};
  const CUresult r = enc(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 5, const_cast<void *>(base), dims, strides, box, estride,
                         CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? nullptr : "cuTensorMapEncodeTiled refused the packed rows";
}

const char *encode_depth_map(CUtensorMap *map, const void *base, int64_t B, int64_t T, int64_t L, int64_t Hk,
                             const int64_t xs[4], int box_slots, int box_tokens) {
  EncodeTiledFn enc = encode_tiled_fn();
  if (!enc) return "cuTensorMapEncodeTiled not available from the driver";
  if (((uintptr_t)base & 15) || B < 1 || T < 1 || L < 1 || Hk < 1 || box_slots < 1 || box_slots > 256 ||
      box_tokens < 1 || box_tokens > 256)
    return "depth rows not TMA-encodable (base alignment, 1..256 box slots and tokens, non-empty)";
  if (B >= (int64_t(1) << 32) || T >= (int64_t(1) << 32) || L >= (int64_t(1) << 32) || Hk >= (int64_t(1) << 32))
    return "depth rows not TMA-encodable (a dimension of 2^32 or more)";
  const int64_t n[4] = {Hk, L, T, B};
  const int64_t st_el[4] = {xs[3], xs[2], xs[1], xs[0]};
  cuuint64_t strides[4];
  if (const char *why = tma_strides(n, st_el, 4, 128, strides)) return why;
  const cuuint64_t dims[5] = {64, (cuuint64_t)Hk, (cuuint64_t)L, (cuuint64_t)T, (cuuint64_t)B};
  const cuuint32_t box[5] = {64, 1, (cuuint32_t)box_slots, (cuuint32_t)box_tokens, 1}, estride[5] = {1, 1, 1, 1, 1};
  // L2 promotion to 256-byte fetches only where a head's consecutive slots are adjacent rows: with
  // Hk > 1 the other 128 bytes are another head's row, read (if at all) by another CTA much later,
  // so 256 doubles the DRAM bytes (session 20: the TMA-fed forward ring at LM-64, Hk = 2, ran
  // 0.528 ms against the cp.async ring's 0.414)
  const bool adjacent = xs[2] == 64;
  const CUresult r = enc(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 5, const_cast<void *>(base), dims, strides, box, estride,
                         CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                         adjacent ? CU_TENSOR_MAP_L2_PROMOTION_L2_256B : CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? nullptr : "cuTensorMapEncodeTiled refused the depth rows";
}

int make_packed_rows_tensor_map(CUtensorMap *map, const void *base, int64_t B, int64_t T, int64_t Hk, int64_t G, int d,
                                const int64_t xs[3], int box_rows) {
  const char *why = encode_packed_rows_map(map, base, B, T, Hk, G, d, xs, box_rows);
  return why ? moda_set_error(MODA_ERR_UNSUPPORTED, "cuda: %s", why) : MODA_OK;
}

// K and V as TMA maps for the warp-specialised kernel; false where either is not encodable.
// ws_layout_ok: the same test without encoding (the shape rules ask it on every forward call);
// where the driver still refuses an encoding it passed, the launcher runs fwd_wgmma_kernel.
static bool ws_layout_ok(const moda_attn_params *p) {
  cuuint64_t strides[3];
  return encode_tiled_fn() && !rows_map_layout(p->k, p->B, p->S, p->Hk, 64, p->k_stride, WsFwdConfig<2>::BN, strides) &&
         !rows_map_layout(p->v, p->B, p->S, p->Hk, 64, p->v_stride, WsFwdConfig<2>::BN, strides);
}
static bool ws_maps(const moda_attn_params *p, CUtensorMap *tm_k, CUtensorMap *tm_v) {
  return !encode_rows_map(tm_k, p->k, p->B, p->S, p->Hk, 64, p->k_stride, WsFwdConfig<2>::BN) &&
         !encode_rows_map(tm_v, p->v, p->B, p->S, p->Hk, 64, p->v_stride, WsFwdConfig<2>::BN);
}

const char *fwd_wgmma_name(const moda_attn_params *p, int flags) {
  CUtensorMap tm_k, tm_v, tm_kd, tm_vd;
  flags = fwd_depth_tma_flags(p, flags);
  if (use_ws(p, flags) && ws_maps(p, &tm_k, &tm_v)) {
    const bool tma_ring = p->L > 0 && fwd_depth_tma_maps(p, flags, &tm_kd, &tm_vd);
    const bool pairs = tma_ring && (flags & FWD_DEPTH_TMA_PAIRS);  // "_tma2": two-token chunks
    if (fwd_ws_split(p, flags)) return pairs ? "wgmma_d64_split_tma2" : tma_ring ? "wgmma_d64_split_tma" : "wgmma_d64_split";
    if (fwd_ws_three_wg(flags)) return pairs ? "wgmma_d64_ws3_tma2" : tma_ring ? "wgmma_d64_ws3_tma" : "wgmma_d64_ws3";
    return "wgmma_d64_ws";
  }
  return p->d == 128 ? "wgmma_d128" : "wgmma_d64";
}

template <typename T, int NCWG>
static int launch_fwd_wgmma_ws(const moda_attn_params *p, cudaStream_t stream, int flags, bool *launched) {
  using Cfg = WsFwdConfig<NCWG>;
  static_assert(Cfg::BN == WsFwdConfig<2>::BN, "ws_maps' box rows");
  *launched = false;
  CUtensorMap tm_k, tm_v;
  if (!ws_maps(p, &tm_k, &tm_v)) return MODA_OK;  // not encodable: the caller runs fwd_wgmma_kernel
  if (const int st = allow_dynamic_smem<fwd_wgmma_ws_kernel<T, NCWG>>(Cfg::SMEM_BYTES, "fwd_wgmma_ws")) return st;
  const int smem = p->L > 0 ? Cfg::SMEM_BYTES : Cfg::SMEM_BYTES_NODEPTH;
  const int64_t tiles = (p->T * p->G + Cfg::BM - 1) / Cfg::BM;
  *launched = true;
  if (tiles <= 0) return MODA_OK;
  if (tiles > 0x7fffffff) return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn fwd: T*G too large");
  dim3 grid((unsigned)tiles, (unsigned)p->Hk, (unsigned)p->B);
  if constexpr (NCWG == 3) {
    CUtensorMap tm_kd, tm_vd;
    if (p->L > 0 && fwd_depth_tma_maps(p, flags, &tm_kd, &tm_vd)) {
      if (const int st = allow_dynamic_smem<fwd_wgmma_ws_tma_kernel<T>>(Cfg::SMEM_BYTES, "fwd_wgmma_ws_tma")) return st;
      fwd_wgmma_ws_tma_kernel<T><<<grid, Cfg::NTHREADS, smem, stream>>>(*p, flags, tm_k, tm_v, tm_kd, tm_vd);
      MODA_CUDA_CHECK_LAUNCH("fwd_wgmma_ws_tma_kernel");
      return MODA_OK;
    }
  }
  fwd_wgmma_ws_kernel<T, NCWG><<<grid, Cfg::NTHREADS, smem, stream>>>(*p, flags, tm_k, tm_v);
  MODA_CUDA_CHECK_LAUNCH("fwd_wgmma_ws_kernel");
  return MODA_OK;
}

template <typename T, bool TMA_RING>
static int launch_fwd_wgmma_split(const moda_attn_params *p, cudaStream_t stream, int flags, bool *launched,
                                  const CUtensorMap &tm_kd, const CUtensorMap &tm_vd) {
  using Cfg = SplitFwdConfig<TMA_RING>;
  static_assert(Cfg::BN == WsFwdConfig<2>::BN, "ws_maps' box rows");
  *launched = false;
  CUtensorMap tm_k, tm_v;
  if (!ws_maps(p, &tm_k, &tm_v)) return MODA_OK;  // not encodable: the caller runs fwd_wgmma_kernel
  if (const int st = allow_dynamic_smem<fwd_wgmma_split_kernel<T, TMA_RING>>(Cfg::SMEM_BYTES, "fwd_wgmma_split"))
    return st;
  const int64_t tiles = (p->T * p->G + Cfg::BM - 1) / Cfg::BM;
  *launched = true;
  if (tiles <= 0) return MODA_OK;
  if (tiles > 0x7fffffff) return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn fwd: T*G too large");
  dim3 grid((unsigned)tiles, (unsigned)p->Hk, (unsigned)p->B);
  fwd_wgmma_split_kernel<T, TMA_RING><<<grid, Cfg::NTHREADS, Cfg::SMEM_BYTES, stream>>>(*p, flags, tm_k, tm_v, tm_kd,
                                                                                        tm_vd);
  MODA_CUDA_CHECK_LAUNCH("fwd_wgmma_split_kernel");
  return MODA_OK;
}

template <typename T, int D>
static int launch_fwd_wgmma_t(const moda_attn_params *p, cudaStream_t stream, int flags) {
  using Cfg = WgmmaFwdConfig<D>;
  static bool attr_set = false;  // per instantiation
  if (!attr_set) {
    if (const int st = allow_dynamic_smem<fwd_wgmma_kernel<T, D>>(Cfg::SMEM_BYTES, "fwd_wgmma")) return st;
    // all of the SM's unified L1/shared memory as shared memory
    MODA_CUDA_CHECK(cudaFuncSetAttribute(fwd_wgmma_kernel<T, D>,
                                         cudaFuncAttributePreferredSharedMemoryCarveout, 100),
                    "cudaFuncSetAttribute(fwd_wgmma carveout)");
    attr_set = true;
  }
  const int smem = p->L > 0 ? Cfg::SMEM_BYTES : Cfg::SMEM_BYTES_NODEPTH;
  const int64_t tiles = (p->T * p->G + Cfg::BM - 1) / Cfg::BM;
  if (tiles <= 0) return MODA_OK;
  if (tiles > 0x7fffffff) return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn fwd: T*G too large");
  dim3 grid((unsigned)tiles, (unsigned)p->Hk, (unsigned)p->B);
  fwd_wgmma_kernel<T, D><<<grid, Cfg::NWARPS * 32, smem, stream>>>(*p, flags);
  MODA_CUDA_CHECK_LAUNCH("fwd_wgmma_kernel");
  return MODA_OK;
}

int fwd_wgmma_launch(const moda_attn_params *p, cudaStream_t stream, int flags) {
  const bool bf16 = p->dtype == MODA_BF16;
  flags = fwd_depth_tma_flags(p, flags);  // the kernels read bit 14 as the maps were encoded
  if (use_ws(p, flags)) {
    bool launched = false;
    if (fwd_ws_split(p, flags)) {
      CUtensorMap tm_kd, tm_vd;  // the TMA ring's depth maps (16 slots of one token), where encodable
      const bool tma_ring = fwd_depth_tma_maps(p, flags, &tm_kd, &tm_vd);
      const int st = bf16 ? (tma_ring ? launch_fwd_wgmma_split<__nv_bfloat16, true>(p, stream, flags, &launched, tm_kd, tm_vd)
                                      : launch_fwd_wgmma_split<__nv_bfloat16, false>(p, stream, flags, &launched, tm_kd, tm_vd))
                          : (tma_ring ? launch_fwd_wgmma_split<__half, true>(p, stream, flags, &launched, tm_kd, tm_vd)
                                      : launch_fwd_wgmma_split<__half, false>(p, stream, flags, &launched, tm_kd, tm_vd));
      if (st || launched) return st;
    }
    const bool three = fwd_ws_three_wg(flags);
    const int st = bf16 ? (three ? launch_fwd_wgmma_ws<__nv_bfloat16, 3>(p, stream, flags, &launched)
                                 : launch_fwd_wgmma_ws<__nv_bfloat16, 2>(p, stream, flags, &launched))
                        : (three ? launch_fwd_wgmma_ws<__half, 3>(p, stream, flags, &launched)
                                 : launch_fwd_wgmma_ws<__half, 2>(p, stream, flags, &launched));
    if (st || launched) return st;
  }
  if (p->d == 128)
    return bf16 ? launch_fwd_wgmma_t<__nv_bfloat16, 128>(p, stream, flags)
                : launch_fwd_wgmma_t<__half, 128>(p, stream, flags);
  return bf16 ? launch_fwd_wgmma_t<__nv_bfloat16, 64>(p, stream, flags)
              : launch_fwd_wgmma_t<__half, 64>(p, stream, flags);
}

}  // namespace moda_cuda
