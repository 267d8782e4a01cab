// attn_bwd_mma.cu: MoDA backward on tensor cores (mma.sync m16n8k16, bf16/fp16 in, fp32 accumulate),
// FlashAttention-2 style. By default deterministic (no atomics: every gradient element is owned by
// one warp that sums its contributions in a fixed order), so p->deterministic needs nothing extra;
// with deterministic = 0 the atomic-dQ path below (sm_90, long sequences) trades that for 2 fewer GEMMs.
//
// SPEC section 2. As in the forward, the G query heads of KV head g are packed: packed row
// R = t*G + (h - g*G), R in [0, T*G). Four launches (the default path; the sm_90a wgmma, fused
// depth and atomic-dQ variants are described at their kernels):
//
// 1. bwd_preprocess_kernel: per packed row, delta = <dO, O> and lse2 = lse*log2(e) (+inf where
//    lse = -inf, i.e. the row sees nothing, so P = exp2(s - lse2) = 0), into the float32
//    workspace [B, Hk, T*G] each. Packed order makes the main kernels' loads contiguous.
// 2. bwd_dkv_mma_kernel<SEQ>: CTA = (key block of BN = 64 keys, kv head, batch); warp w owns keys
//    16w..16w+15 and keeps dK, dV for them in registers. It loads the K/V block once and loops over
//    the packed query rows that can see it in blocks of BQ (Q, dO double-buffered by cp.async):
//        S^T = K Q^T, dP^T = V dO^T (16 x BQ per warp), P^T = exp2(S^T*scale*log2e - lse2),
//        dS^T = P^T (dP^T - delta), dV += P^T dO, dK += dS^T Q.
//    The G heads are summed for free: they are just more packed query rows.
// 3. bwd_dkv_mma_kernel<DEPTH>: the same kernel with the depth rows as keys (flattened key index
//    i = u*L + l of token u, slot l) and the depth visibility as the mask; its query range is the
//    packed rows of the tokens that see the block (token: the block's own tokens; chunk: up to the
//    end of their chunks), so dkd, dvd are complete sums over exactly the queries that see a row
//    (token visibility: the G heads of its own token) without any cross-CTA reduction. Query
//    blocks are trimmed to 16-row steps, so a block that only 8 rows see costs 16, not 64.
// 4. bwd_dq_mma_kernel: CTA = 64 packed rows (16 per warp), Q and dO fragments in registers.
//    Depth part first, per group of 8 rows, in the forward's transposed orientation (the depth
//    rows are the long side): S^T = kd q^T, dP^T = vd dO^T, dS^T, dq^T += kd^T dS^T (dS^T turned
//    into the B operand by movmatrix), then the sequence part FA2-style over K/V blocks:
//    S = Q K^T, dP = dO V^T, dS, dQ += dS K. dq written once, in the output dtype.
//
// Cost over the FLOP minimum (5 GEMMs of the sequence part): S and dP are computed twice (in
// kernels 2 and 4), 7 GEMMs in all: the price of determinism without a dQ atomic pass. On sm_90a
// (d = 64) kernels 2 and 4 are the warp-specialised ones of attn_bwd_wgmma.cu, and this split flow
// is also the nondeterministic default where the sequence part is long (bwd_atomic_dq_selected):
// the atomic pass's float32 reductions cost more than the two extra GEMMs (session 22).
//
// Tuning (measured, docs/CUDA_NOTES.md): the per-step lse2/delta of kernel 2 arrive by 4-byte
// cp.async with the Q/dO rows (a plain load stalled the loading warps every step); kernel 2's
// grid is key-block-major so the heaviest causal CTAs of every head start first; the depth
// instantiation steps 16 query rows with no K/V fragments in registers (3 CTAs/SM at d = 64);
// the sequence instantiation has a 2-CTA/SM variant (64-row steps, K/V fragments in registers)
// and a 3-CTA/SM one (32-row steps), picked by the mean number of query rows per key block.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include <type_traits>

#include "moda_cuda_internal.cuh"
#include "attn_bwd_common.cuh"
#include "mma_helpers.cuh"
#include "wgmma_gemm.cuh"

namespace moda_cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

template <int D>
struct BwdConfig {
  static constexpr int NWARPS = 4;
  static constexpr int NTHREADS = NWARPS * 32;
  static constexpr int BN = 64;                  // dK/dV kernel: keys per CTA (16 per warp)
  static constexpr int BQ = D <= 64 ? 64 : 32;   // dK/dV kernel: packed query rows per step (d=128: fewer
                                                 // S^T/dP^T registers, no spills)
  static constexpr int BM = 64;                  // dQ kernel: packed query rows per CTA (16 per warp)
  static constexpr int BK = 64;                  // dQ kernel: keys per step
  static constexpr int DL = D <= 64 ? 32 : 16;   // dQ kernel: depth rows per warp chunk
  static constexpr int LDS = D + 8;              // smem row stride in elements (pad: no bank conflicts)
  // d = 64: the warp's K/V (dK/dV kernel) and Q/dO (dQ kernel) A fragments live in registers for
  // the whole loop; d = 128 would need 128 more registers, so they are re-read from smem per use.
  static constexpr bool FRAGS_IN_REGS = D <= 64;

  // The depth instantiation of the dK/dV kernel sees few query rows per key block (token
  // visibility: the G rows of its one or two tokens), so it steps 16 rows at a time and keeps no
  // K/V fragments in registers: fewer registers and less smem, more CTAs per SM for what is a
  // memory-bound stream over kd/vd.
  static constexpr int BQ_DEPTH = 16;
  // The sequence instantiation with 3 CTAs/SM (168 registers) steps 32 query rows: half the
  // S^T/dP^T accumulators of BQ = 64, so it fits without spills.
  static constexpr int BQ_SEQ3 = 32;
  // dK/dV kernel smem: K, V block; 2 stages of (Q, dO) rows; 2 stages of (lse2, delta) floats.
  static constexpr int dkv_smem(int bq) { return (2 * BN * LDS + 2 * 2 * bq * LDS) * 2 + 2 * 2 * bq * 4; }
  // dQ kernel smem: Q, dO rows and their (lse2, delta); then a union of the K/V stages and the
  // depth phase's per-warp kd/vd chunks + dq^T scratch (16 rows x D floats per warp).
  static constexpr int DQ_FIXED = 2 * BM * LDS * 2 + 2 * BM * 4;
  static constexpr int DQ_KV = 2 * 2 * BK * LDS * 2;
  static constexpr int DQ_DEPTH = NWARPS * (2 * DL * LDS * 2 + 16 * D * 4);
  static constexpr int DQ_SMEM = DQ_FIXED + (DQ_KV > DQ_DEPTH ? DQ_KV : DQ_DEPTH);
  // The sm_90a variant (WG: sequence part on wgmma, d = 64): the K/V stages are unpadded
  // 128-byte-swizzled tiles, 1024-byte aligned (the base is rounded up in the kernel).
  static constexpr int DQ_FIXED_WG = (DQ_FIXED + 1023) / 1024 * 1024;
  static constexpr int DQ_KV_WG = 2 * 2 * BK * D * 2;
  static constexpr int DQ_SMEM_WG = 1024 + DQ_FIXED_WG + (DQ_KV_WG > DQ_DEPTH ? DQ_KV_WG : DQ_DEPTH);
  // Sequence-only runs (the depth part is bwd_depth_token_kernel's): no depth chunks in smem.
  static constexpr int DQ_SMEM_SEQ = DQ_FIXED + DQ_KV;
  static constexpr int DQ_SMEM_WG_SEQ = 1024 + DQ_FIXED_WG + DQ_KV_WG;
  static_assert(DQ_SMEM_WG_SEQ <= DQ_SMEM_WG, "the sequence-only variant needs no more than the full one");
  static_assert(DQ_SMEM_WG <= 232448 - 1024, "dQ wgmma variant: within the sm_90 opt-in shared memory");
};

// Depth visibility (SPEC section 1): does query token t see the depth rows of token u?
__device__ __forceinline__ bool depth_visible(int64_t u, int64_t t, int64_t chunk, bool causal) {
  if (u < 0) return false;  // padding row
  if (chunk <= 0) return u == t;
  return u / chunk == t / chunk && (!causal || u <= t);
}

template <typename T>
__device__ __forceinline__ void store_pair(T *dst, uint32_t packed) {
  *reinterpret_cast<uint32_t *>(dst) = packed;
}

// ---------------- 1. preprocess: delta = <dO, O>, lse2 = lse * log2(e) ----------------
// dq_zero (nullable): the float32 dQ accumulator [B, Hk, T*G, D] of the paths that sum dQ by
// adds, zeroed here row by row (a separate cudaMemsetAsync cost 0.015 ms at DeiT-Tiny, H100).
template <typename T, int D>
__global__ void __launch_bounds__(256) bwd_preprocess_kernel(const moda_attn_params p, float *lse2,
                                                             float *delta, float *dq_zero) {
  constexpr int TPR = D / 8;  // threads per row, 8 elements (16 bytes) each
  const int64_t TG = p.T * p.G, TGp = stat_rows(TG);
  const int64_t nrows = p.B * p.Hk * TGp;
  const int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / TPR;  // packed (b, g, R), padded
  const int part = threadIdx.x % TPR;
  const bool in_range = row < nrows;
  const bool ok = in_range && row % TGp < TG;  // a real row (else padding: lse2 = +inf, delta = 0)
  float acc = 0.f;
  int64_t b = 0, g = 0, t = 0, h = 0;
  if (ok) {
    const int64_t R = row % TGp, bg = row / TGp;
    g = bg % p.Hk; b = bg / p.Hk; t = R / p.G; h = g * p.G + R % p.G;
    const T *dor = static_cast<const T *>(p.dout) + b * p.dout_stride[0] + t * p.dout_stride[1] + h * p.dout_stride[2];
    const T *orow = static_cast<const T *>(p.o) + b * p.o_stride[0] + t * p.o_stride[1] + h * p.o_stride[2];
    uint4 x = *reinterpret_cast<const uint4 *>(dor + part * 8);
    uint4 y = *reinterpret_cast<const uint4 *>(orow + part * 8);
    const T *xe = reinterpret_cast<const T *>(&x);
    const T *ye = reinterpret_cast<const T *>(&y);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc += Elem<T>::to_float(xe[e]) * Elem<T>::to_float(ye[e]);
    if (dq_zero) {
      float4 *z = reinterpret_cast<float4 *>(dq_zero + (bg * TG + R) * D + part * 8);
      z[0] = z[1] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (ok && part == 0) {
    delta[row] = acc;
    float l = p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + t * p.lse_stride[2]];
    lse2[row] = l == -INFINITY ? INFINITY : l * kLog2e;
  } else if (in_range && part == 0) {
    delta[row] = 0.f;
    lse2[row] = INFINITY;
  }
}

// ---------------- 2./3. dK, dV (sequence keys) and dkd, dvd (depth keys) ----------------
// MINB: CTAs per SM the register budget is cut for (__launch_bounds__). With MINB = 1 (d = 64:
// 255 registers, 2 CTAs/SM) the warp keeps its K/V A fragments in registers; otherwise they are
// re-read from smem per use to fit the smaller budget.
template <typename T, int D, bool DEPTH, int MINB>
__global__ void __launch_bounds__(BwdConfig<D>::NTHREADS, MINB)
bwd_dkv_mma_kernel(const moda_attn_params p, const float *ws_lse2, const float *ws_delta) {
  using Cfg = BwdConfig<D>;
  using Mma = MmaOp<T>;
  constexpr int BN = Cfg::BN, LDS = Cfg::LDS, NTHREADS = Cfg::NTHREADS;
  constexpr int BQ = DEPTH ? Cfg::BQ_DEPTH : (MINB >= 3 ? Cfg::BQ_SEQ3 : Cfg::BQ);
  constexpr int KSTEPS = D / 16, NT = BQ / 8;
  constexpr bool REGS = Cfg::FRAGS_IN_REGS && MINB == 1;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T *sK = reinterpret_cast<T *>(smem_raw);
  T *sV = sK + BN * LDS;
  T *sQstage = sV + BN * LDS;                                   // stage s: Q at s*2*BQ*LDS, dO after
  float *sStat = reinterpret_cast<float *>(sQstage + 2 * 2 * BQ * LDS);  // stage s: lse2, delta

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int qr = lane / 4, qc = lane % 4;
  // blockIdx.x = kblk * Hk + g: the key blocks of every head are launched block 0 first; with
  // the causal mask block 0 sees the most queries, so the heaviest CTAs of all heads start in the
  // first wave (measured: head-major order left the heavy CTAs of the last heads for a late wave).
  const int64_t kblk = blockIdx.x / p.Hk, g = blockIdx.x % p.Hk, b = blockIdx.z;
  const int64_t G = p.G, T_ = p.T, S = p.S, L = p.L, TG = T_ * G;
  const int64_t nkeys = DEPTH ? T_ * L : S;
  const int64_t i0 = kblk * BN;
  const bool causal = p.causal != 0;
  const int64_t chunk = p.chunk;
  const float scale_log2 = (float)p.scale * kLog2e;

  const T *kbase = static_cast<const T *>(DEPTH ? p.kd : p.k);
  const T *vbase = static_cast<const T *>(DEPTH ? p.vd : p.v);
  auto key_offset = [&](const int64_t *st, int64_t i) -> int64_t {
    if (DEPTH) return b * st[0] + (i / L) * st[1] + (i % L) * st[2] + g * st[3];
    return b * st[0] + i * st[1] + g * st[2];
  };
  const int64_t *kst = DEPTH ? p.kd_stride : p.k_stride;
  const int64_t *vst = DEPTH ? p.vd_stride : p.v_stride;

  load_rows_async<D, LDS>(sK, BN, tid, NTHREADS, [&](int r) -> const T * {
    int64_t i = i0 + r;
    return i < nkeys ? kbase + key_offset(kst, i) : nullptr;
  });
  load_rows_async<D, LDS>(sV, BN, tid, NTHREADS, [&](int r) -> const T * {
    int64_t i = i0 + r;
    return i < nkeys ? vbase + key_offset(vst, i) : nullptr;
  });
  cp_async_commit();

  // Packed query rows [R_begin, R_end) that can see some key of this block.
  const int64_t i_last = (i0 + BN < nkeys ? i0 + BN : nkeys) - 1;
  int64_t t_lo, t_hi;
  if (DEPTH) {
    const int64_t u_first = i0 / L, u_last = i_last / L;
    if (chunk <= 0) { t_lo = u_first; t_hi = u_last; }
    else {
      int64_t end = (u_last / chunk) * chunk + chunk - 1;
      t_hi = end < T_ - 1 ? end : T_ - 1;
      t_lo = causal ? u_first : (u_first / chunk) * chunk;
    }
  } else {
    t_lo = causal ? i0 - (S - T_) : 0;
    if (t_lo < 0) t_lo = 0;
    t_hi = T_ - 1;
  }
  const int64_t R_begin = t_lo * G, R_end = (t_hi + 1) * G;
  const int n_qblk = R_end > R_begin ? (int)((R_end - R_begin + BQ - 1) / BQ) : 0;

  const float *lse2_bg = ws_lse2 + (b * p.Hk + g) * stat_rows(TG);
  const float *delta_bg = ws_delta + (b * p.Hk + g) * stat_rows(TG);
  const T *q = static_cast<const T *>(p.q);
  const T *dout = static_cast<const T *>(p.dout);
  auto sQ = [&](int stage) { return sQstage + stage * 2 * BQ * LDS; };
  auto sdO = [&](int stage) { return sQstage + stage * 2 * BQ * LDS + BQ * LDS; };
  auto sLse = [&](int stage) { return sStat + stage * 2 * BQ; };
  auto sDelta = [&](int stage) { return sStat + stage * 2 * BQ + BQ; };

  auto load_q_block = [&](int blk, int stage) {
    const int64_t Rq = R_begin + (int64_t)blk * BQ;
    load_rows_async<D, LDS>(sQ(stage), BQ, tid, NTHREADS, [&](int r) -> const T * {
      int64_t R = Rq + r;
      if (R >= R_end) return nullptr;
      return packed_row(q, p.q_stride, b, g, G, R);
    });
    load_rows_async<D, LDS>(sdO(stage), BQ, tid, NTHREADS, [&](int r) -> const T * {
      int64_t R = Rq + r;
      if (R >= R_end) return nullptr;
      return packed_row(dout, p.dout_stride, b, g, G, R);
    });
    load_row_stats(sLse(stage), sDelta(stage), lse2_bg, delta_bg, Rq, R_end, BQ, tid, NTHREADS);
    cp_async_commit();
  };

  // This lane's two key rows (qr, qr + 8 of the warp's 16): the key index (sequence) or the
  // key's token (depth, -1 for padding).
  int64_t key_pos[2];
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    int64_t i = i0 + warp * 16 + qr + 8 * h2;
    key_pos[h2] = DEPTH ? (i < nkeys ? i / L : -1) : i;
  }

  float acc_dk[D / 8][4], acc_dv[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[j][e] = acc_dv[j][e] = 0.f;

  uint32_t k_a[REGS ? KSTEPS : 1][4], v_a[REGS ? KSTEPS : 1][4];
  const T *sKw = sK + warp * 16 * LDS, *sVw = sV + warp * 16 * LDS;
  auto a_frag = [&](uint32_t (&a)[4], const T *base, int ks) {
    ldmatrix_x4(a, base + (lane & 15) * LDS + ks * 16 + (lane >> 4) * 8);
  };

  if (n_qblk > 0) load_q_block(0, 0);
  for (int blk = 0; blk < n_qblk; ++blk) {
    const int stage = blk & 1;
    if (blk + 1 < n_qblk) { load_q_block(blk + 1, stage ^ 1); cp_async_wait<1>(); }
    else cp_async_wait<0>();
    __syncthreads();
    if (REGS && blk == 0) {
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks) { a_frag(k_a[REGS ? ks : 0], sKw, ks); a_frag(v_a[REGS ? ks : 0], sVw, ks); }
    }
    const int64_t Rq = R_begin + (int64_t)blk * BQ;
    const int64_t nvalid = R_end - Rq < BQ ? R_end - Rq : BQ;
    const int nk16 = (int)((nvalid + 15) / 16);  // 16-row steps of this block that hold rows
    const T *q_s = sQ(stage), *do_s = sdO(stage);
    const float *lse_s = sLse(stage), *delta_s = sDelta(stage);

    // S^T = K_w Q^T and dP^T = V_w dO^T: 16 keys x BQ queries per warp.
    float s[NT][4], dp[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      uint32_t ka[4], va[4];
      if (REGS) {
#pragma unroll
        for (int e = 0; e < 4; ++e) { ka[e] = k_a[REGS ? ks : 0][e]; va[e] = v_a[REGS ? ks : 0][e]; }
      } else {
        a_frag(ka, sKw, ks);
        a_frag(va, sVw, ks);
      }
#pragma unroll
      for (int np = 0; np < BQ / 16; ++np) {
        if (np < nk16) {
          const int off = (np * 16 + (lane & 7) + ((lane >> 4) & 1) * 8) * LDS + ks * 16 + ((lane >> 3) & 1) * 8;
          uint32_t qb[4], db[4];
          ldmatrix_x4(qb, q_s + off);
          ldmatrix_x4(db, do_s + off);
          Mma::run(s[2 * np], ka, qb[0], qb[1]);
          Mma::run(s[2 * np + 1], ka, qb[2], qb[3]);
          Mma::run(dp[2 * np], va, db[0], db[1]);
          Mma::run(dp[2 * np + 1], va, db[2], db[3]);
        }
      }
    }

    // P^T and dS^T (in place). The causal mask matters only where the block's first query row
    // cannot see the block's last key; depth keys are always masked (the block mixes tokens).
    const bool need_mask = DEPTH || (causal && S - T_ + Rq / G < i0 + BN - 1);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      // this lane's two columns' lse2 / delta, one 8-byte smem load each
      const float2 l2 = *reinterpret_cast<const float2 *>(lse_s + nt * 8 + 2 * qc);
      const float2 dl = *reinterpret_cast<const float2 *>(delta_s + nt * 8 + 2 * qc);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + 2 * qc + (e & 1);
        bool vis = true;
        if (need_mask) {
          const int64_t t = (Rq + col) / G;
          const int64_t kp = key_pos[e >> 1];
          vis = DEPTH ? depth_visible(kp, t, chunk, causal) : kp <= S - T_ + t;
        }
        float pe, ds;
        p_ds(s[nt][e], dp[nt][e], (e & 1) ? l2.y : l2.x, (e & 1) ? dl.y : dl.x, scale_log2, vis, pe, ds);
        s[nt][e] = pe;
        dp[nt][e] = ds;
      }
    }

    // dV += P^T dO, dK += dS^T Q: A from the accumulators, B = dO / Q rows by ldmatrix.trans.
#pragma unroll
    for (int kq = 0; kq < BQ / 16; ++kq) {
      if (kq < nk16) {
        uint32_t pa[4], da[4];
        pa[0] = Mma::pack(s[2 * kq][0], s[2 * kq][1]);
        pa[1] = Mma::pack(s[2 * kq][2], s[2 * kq][3]);
        pa[2] = Mma::pack(s[2 * kq + 1][0], s[2 * kq + 1][1]);
        pa[3] = Mma::pack(s[2 * kq + 1][2], s[2 * kq + 1][3]);
        da[0] = Mma::pack(dp[2 * kq][0], dp[2 * kq][1]);
        da[1] = Mma::pack(dp[2 * kq][2], dp[2 * kq][3]);
        da[2] = Mma::pack(dp[2 * kq + 1][0], dp[2 * kq + 1][1]);
        da[3] = Mma::pack(dp[2 * kq + 1][2], dp[2 * kq + 1][3]);
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          const int off = (kq * 16 + (lane & 15)) * LDS + dn * 16 + (lane >> 4) * 8;
          uint32_t ob[4], qb[4];
          ldmatrix_x4_trans(ob, do_s + off);
          ldmatrix_x4_trans(qb, q_s + off);
          Mma::run(acc_dv[2 * dn], pa, ob[0], ob[1]);
          Mma::run(acc_dv[2 * dn + 1], pa, ob[2], ob[3]);
          Mma::run(acc_dk[2 * dn], da, qb[0], qb[1]);
          Mma::run(acc_dk[2 * dn + 1], da, qb[2], qb[3]);
        }
      }
    }
    __syncthreads();  // this stage is free for the load two blocks ahead
  }
  cp_async_wait<0>();  // (n_qblk == 0: the K/V copies must land before the CTA exits)

  // Every key row of the block is written, zeros where no query sees it: outputs fully overwritten.
  T *dkb = static_cast<T *>(DEPTH ? p.dkd : p.dk);
  T *dvb = static_cast<T *>(DEPTH ? p.dvd : p.dv);
  const int64_t *dkst = DEPTH ? p.dkd_stride : p.dk_stride;
  const int64_t *dvst = DEPTH ? p.dvd_stride : p.dv_stride;
  const float scale = (float)p.scale;
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    const int64_t i = i0 + warp * 16 + qr + 8 * h2;
    if (i >= nkeys) continue;
    T *dkr = dkb + key_offset(dkst, i);
    T *dvr = dvb + key_offset(dvst, i);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      store_pair(dkr + j * 8 + 2 * qc, Mma::pack(acc_dk[j][2 * h2] * scale, acc_dk[j][2 * h2 + 1] * scale));
      store_pair(dvr + j * 8 + 2 * qc, Mma::pack(acc_dv[j][2 * h2], acc_dv[j][2 * h2 + 1]));
    }
  }
}

// ---------------- 2'. sm_90a: dK, dV (sequence keys) on wgmma ----------------
// Kernel 2 for Hopper, d = 64: the CTA's BN = 64 keys are one warpgroup's m64 (warp w: keys
// 16w..16w+15, the same per-warp rows and accumulator layout as bwd_dkv_mma_kernel), each step
// takes BQ = 64 packed query rows, whose Q and dO rows land in 128-byte-swizzled tiles that the
// wgmmas read by descriptor both ways:
//     S^T  = K Q^T      m64n64k16, A = K fragments (registers, loaded once), B = Q tile K-major
//     dP^T = V dO^T     m64n64k16, A = V fragments, B = dO tile K-major
//     P^T, dS^T on the accumulators (as kernel 2)
//     dV  += P^T dO     m64n64k16, A = P^T packed from the S^T accumulators, B = dO tile MN-major
//     dK  += dS^T Q     m64n64k16, A = dS^T, B = Q tile MN-major
// The default on sm_90 for d = 64 (MODA_CUDA_WGMMA=0 or MODA_CUDA_WGMMA_BWD=0|3 turn it off).
// d = 128 stays on mma.sync: its K/V fragments (64 registers) do not fit beside the accumulators.
// ATOMIC_DQ (deterministic = 0, MODA_CUDA_BWD_ATOMIC_DQ=1): the step's dS^T also goes to smem,
// dQ_step = dS K runs as an SS wgmma (A = dS read MN-major from that tile, B = a swizzled copy
// of the K block read MN-major) and is added to a float32 accumulator [B, Hk, T*G, d] by vector
// reductions; the dQ kernel then runs its depth part only and adds the accumulator. 5 GEMMs of
// the sequence part instead of 7 (FA2/FA3's dQ), at the price of a run-to-run varying sum order.
template <typename T, bool ATOMIC_DQ = false>
__global__ void __launch_bounds__(128, 2)
bwd_dkv_wgmma_kernel(const moda_attn_params p, const float *ws_lse2, const float *ws_delta, float *dq_accum) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int D = 64, BN = 64, BQ = 64, LDS = D + 8, NTHREADS = 128;
  constexpr int KSTEPS = D / 16, NT = BQ / 8;
  constexpr int TILE = BQ * D * 2;  // bytes of one swizzled Q or dO tile
  static_assert(BN * D * 2 == TILE && BN * BQ * 2 == TILE, "the K copy and the dS^T tile are TILE bytes too");
  using Mma = MmaOp<T>;

  extern __shared__ __align__(16) unsigned char smem_raw[];  // rounded up to 1024 below
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  auto sQ = [&](int stage) { return smem + stage * 2 * TILE; };
  auto sdO = [&](int stage) { return smem + stage * 2 * TILE + TILE; };
  // ATOMIC_DQ: the swizzled K copy and the dS^T tile follow the four Q/dO tiles
  unsigned char *sKsw = smem + 4 * TILE, *sDS = smem + 5 * TILE;
  T *sK = reinterpret_cast<T *>(smem + (ATOMIC_DQ ? 6 : 4) * TILE);
  T *sV = sK + BN * LDS;
  float *sStat = reinterpret_cast<float *>(sV + BN * LDS);  // stage s: lse2 at s*2*BQ, delta after
  auto sLse = [&](int stage) { return sStat + stage * 2 * BQ; };
  auto sDelta = [&](int stage) { return sStat + stage * 2 * BQ + BQ; };

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int qr = lane / 4, qc = lane % 4;
  const int64_t kblk = blockIdx.x / p.Hk, g = blockIdx.x % p.Hk, b = blockIdx.z;  // key-block-major, as kernel 2
  const int64_t G = p.G, T_ = p.T, S = p.S, TG = T_ * G;
  const int64_t i0 = kblk * BN;
  const bool causal = p.causal != 0;
  const float scale_log2 = (float)p.scale * kLog2e;

  const T *kg = static_cast<const T *>(p.k);
  const T *vg = static_cast<const T *>(p.v);
  load_rows_async<D, LDS>(sK, BN, tid, NTHREADS, [&](int r) -> const T * {
    const int64_t i = i0 + r;
    return i < S ? kg + b * p.k_stride[0] + i * p.k_stride[1] + g * p.k_stride[2] : nullptr;
  });
  load_rows_async<D, LDS>(sV, BN, tid, NTHREADS, [&](int r) -> const T * {
    const int64_t i = i0 + r;
    return i < S ? vg + b * p.v_stride[0] + i * p.v_stride[1] + g * p.v_stride[2] : nullptr;
  });
  if constexpr (ATOMIC_DQ) {  // K again, swizzled: the B operand of dQ = dS K
    load_rows_sw128_async<D, T>(sKsw, BN, tid, NTHREADS, [&](int r) -> const T * {
      const int64_t i = i0 + r;
      return i < S ? kg + b * p.k_stride[0] + i * p.k_stride[1] + g * p.k_stride[2] : nullptr;
    });
  }
  cp_async_commit();

  // Packed query rows [R_begin, R_end) that can see some key of this block.
  int64_t t_lo = causal ? i0 - (S - T_) : 0;
  if (t_lo < 0) t_lo = 0;
  const int64_t R_begin = t_lo * G, R_end = TG;
  const int n_qblk = R_end > R_begin ? (int)((R_end - R_begin + BQ - 1) / BQ) : 0;

  const float *lse2_bg = ws_lse2 + (b * p.Hk + g) * stat_rows(TG);
  const float *delta_bg = ws_delta + (b * p.Hk + g) * stat_rows(TG);
  const T *q = static_cast<const T *>(p.q);
  const T *dout = static_cast<const T *>(p.dout);
  auto load_q_block = [&](int blk, int stage) {
    const int64_t Rq = R_begin + (int64_t)blk * BQ;
    load_rows_sw128_async<D, T>(sQ(stage), BQ, tid, NTHREADS, [&](int r) -> const T * {
      const int64_t R = Rq + r;
      if (R >= R_end) return nullptr;
      return packed_row(q, p.q_stride, b, g, G, R);
    });
    load_rows_sw128_async<D, T>(sdO(stage), BQ, tid, NTHREADS, [&](int r) -> const T * {
      const int64_t R = Rq + r;
      if (R >= R_end) return nullptr;
      return packed_row(dout, p.dout_stride, b, g, G, R);
    });
    load_row_stats(sLse(stage), sDelta(stage), lse2_bg, delta_bg, Rq, R_end, BQ, tid, NTHREADS);
    cp_async_commit();
  };

  int64_t key_pos[2];
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) key_pos[h2] = i0 + warp * 16 + qr + 8 * h2;

  float acc_dk[D / 8][4], acc_dv[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[j][e] = acc_dv[j][e] = 0.f;

  uint32_t k_a[KSTEPS][4], v_a[KSTEPS][4];
  const T *sKw = sK + warp * 16 * LDS, *sVw = sV + warp * 16 * LDS;

  if (n_qblk > 0) load_q_block(0, 0);
  for (int blk = 0; blk < n_qblk; ++blk) {
    const int stage = blk & 1;
    if (blk + 1 < n_qblk) { load_q_block(blk + 1, stage ^ 1); cp_async_wait<1>(); }
    else cp_async_wait<0>();
    fence_proxy_async_smem();  // this thread's cp.async / zero stores -> visible to wgmma
    __syncthreads();
    // The K/V fragments are read from smem again in every step. Loaded once (before the loop or
    // under blk == 0) and kept in registers, they were overwritten from the second query block
    // on: the SASS showed ptxas giving their registers to the P^T / dS^T A operands of the
    // dV / dK wgmmas (H100, session 5; the checker's backward grid caught it). 8 ldmatrix.x4
    // per step cost nothing next to its 4 wgmma groups.
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      ldmatrix_x4(k_a[ks], sKw + (lane & 15) * LDS + ks * 16 + (lane >> 4) * 8);
      ldmatrix_x4(v_a[ks], sVw + (lane & 15) * LDS + ks * 16 + (lane >> 4) * 8);
    }
    const int64_t Rq = R_begin + (int64_t)blk * BQ;
    const uint32_t q_base = smem_u32(sQ(stage)), do_base = smem_u32(sdO(stage));
    const float *lse_s = sLse(stage), *delta_s = sDelta(stage);

    // S^T = K_w Q^T and dP^T = V_w dO^T: the warpgroup's 64 keys x BQ queries.
    float s[NT][4], dp[NT][4];
    wgmma_fence_operand(s);
    wgmma_fence_operand(dp);
    wgmma_fence();
    wgmma_rs_kmajor<T, BQ, KSTEPS>(s, k_a, q_base, BQ, 0);
    wgmma_rs_kmajor<T, BQ, KSTEPS>(dp, v_a, do_base, BQ, 0);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operand(s);
    wgmma_fence_operand(dp);

    // P^T and dS^T (in place), as kernel 2; then the A fragments of dV += P^T dO, dK += dS^T Q
    if (causal && S - T_ + Rq / G < i0 + BN - 1)  // the step's first row misses a key
      bwd_p_ds_causal<NT, true>(s, dp, lse_s, delta_s, qc, scale_log2, key_pos, S - T_, Rq, G);
    else
      bwd_p_ds_causal<NT, false>(s, dp, lse_s, delta_s, qc, scale_log2, key_pos, S - T_, Rq, G);
    uint32_t pa[BQ / 16][4], da[BQ / 16][4];
    pack_acc_as_a<T, BQ / 16>(s, pa);
    pack_acc_as_a<T, BQ / 16>(dp, da);
    // B = the dO / Q tiles read MN-major
    wgmma_fence_operand(acc_dv);
    wgmma_fence_operand(acc_dk);
    wgmma_fence();
    wgmma_rs_mnmajor<T, D, BQ / 16>(acc_dv, pa, do_base, BQ, 1);
    wgmma_rs_mnmajor<T, D, BQ / 16>(acc_dk, da, q_base, BQ, 1);
    wgmma_commit();
    if constexpr (ATOMIC_DQ) {
      // dS^T -> smem as the MN-major A of dQ = dS K (the previous step's dQ wgmma, which read
      // this tile, was waited for before the last barrier)
      store_ds_t<NT>(sDS, BN, warp * 16, da, key_pos, S, qr, qc);
      fence_proxy_async_smem();
      __syncthreads();  // every warp's dS^T rows are in the tile
      // dV, dK and this warp's 16 query rows of dQ = dS K (unscaled), added to the accumulator
      dq_step_reduce<T, BN>(smem_u32(sDS), smem_u32(sKsw), dq_accum + (b * p.Hk + g) * TG * D, Rq + warp * 16 + qr,
                            R_end, qc);
    } else {
      wgmma_wait<0>();
    }
    wgmma_fence_operand(acc_dv);
    wgmma_fence_operand(acc_dk);
    __syncthreads();  // this stage (and the dS^T tile) is free for the next writes
  }
  cp_async_wait<0>();  // (n_qblk == 0: the K/V copies must land before the CTA exits)

  store_dk_dv<T>(p, acc_dk, acc_dv, key_pos, b, g, qc);
#elif defined(__CUDA_ARCH__)
  __trap();  // a build without sm_90a code: fail loudly rather than leave dK and dV unwritten
#endif
}
// smem of bwd_dkv_wgmma_kernel: 1024 alignment slack, 2 stages of swizzled (Q, dO) tiles, the
// padded K/V block, 2 stages of (lse2, delta).
constexpr int kDkvWgmmaSmem = 1024 + 4 * 64 * 64 * 2 + 2 * 64 * (64 + 8) * 2 + 2 * 2 * 64 * 4;
constexpr int kDkvWgmmaSmemAtomic = kDkvWgmmaSmem + 2 * 64 * 64 * 2;  // + K copy, dS^T tile

// ---------------- 4. dQ: depth part (transposed) + sequence part ----------------
// WG (sm_90a, d = 64; default, off with MODA_CUDA_WGMMA=0): the CTA's 64 rows are one warpgroup's
// m64 and the sequence part runs on wgmma: S = Q K^T and dP = dO V^T (A = Q / dO fragments in
// registers, B = swizzled K / V tiles read K-major), dQ += dS K (A = dS packed from the
// accumulators, B = the K tile read MN-major). The depth part is the same code either way.
// FUSE (d = 64, token visibility, G dividing 8; default, off with MODA_CUDA_BWD_FUSE_DEPTH=0): a
// group of 8 packed rows then holds whole tokens, so the depth rows it streams are seen by no
// other group and their dkd, dvd are complete here: dvd = P^T dO and dkd = dS^T q per 16 depth
// rows (m16n8k8, k = the group's 8 rows), written at once. Kernel 3 is then skipped: kd and vd are
// read once by the backward instead of twice.
// ACCUM (with bwd_dkv_wgmma_kernel<T, true>, deterministic = 0): the sequence part of dQ was
// summed into dq_buf by the dK/dV kernel; this kernel adds it to its depth part and writes dq.
// Sequence only (!ACCUM and dq_buf != nullptr; with bwd_depth_token_kernel, attn_bwd_depth.cu):
// no depth part; the sequence part is written unscaled in float32 to dq_buf [B, Hk, T*G, d], and
// the depth kernel adds its part and writes dq. A run-time switch, not a template parameter: the
// compile-time variant of the wgmma kernel came out wrong from 2 key blocks on (H100, CUDA 13,
// session 7; its loop's PTX equals this kernel's, whose L = 0 runs pass), this one is verified.
template <typename T, int D, bool WG = false, bool FUSE = false, bool ACCUM = false>
__global__ void __launch_bounds__(BwdConfig<D>::NTHREADS)
bwd_dq_mma_kernel(const moda_attn_params p, const float *ws_lse2, const float *ws_delta, float *dq_buf) {
  using Cfg = BwdConfig<D>;
  using Mma = MmaOp<T>;
  constexpr int BM = Cfg::BM, BK = Cfg::BK, DL = Cfg::DL, LDS = Cfg::LDS, NTHREADS = Cfg::NTHREADS;
  constexpr int KSTEPS = D / 16;
  constexpr bool REGS = Cfg::FRAGS_IN_REGS;
  static_assert(!WG || (D == 64 && REGS && Cfg::NWARPS == 4), "WG: one warpgroup, fragments in registers");
  static_assert(!FUSE || D == 64, "FUSE: d = 64 (the dkd/dvd tiles of d = 128 would not fit in registers)");
#if !(defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
  // only the sm_90a pass builds the wgmma variant: elsewhere fail loudly (the launcher never
  // starts it there); the run-time condition keeps the compiler from calling the rest unreachable
  if (WG && blockDim.x != 0) __trap();
#endif

  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char *smem = WG ? smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u) : smem_raw;
  T *sQ = reinterpret_cast<T *>(smem);
  T *sdO = sQ + BM * LDS;
  float *sLse = reinterpret_cast<float *>(sdO + BM * LDS);
  float *sDelta = sLse + BM;
  unsigned char *sUnion = smem + (WG ? Cfg::DQ_FIXED_WG : Cfg::DQ_FIXED);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int qr = lane / 4, qc = lane % 4;
  const int64_t tile = gridDim.x - 1 - blockIdx.x;  // heavy (late) causal tiles first
  const int64_t g = blockIdx.y, b = blockIdx.z;
  const int64_t G = p.G, T_ = p.T, S = p.S, L = p.L, TG = T_ * G;
  const int64_t R0 = tile * BM, Rw = R0 + warp * 16;
  const bool causal = p.causal != 0;
  const int64_t chunk = p.chunk;
  const float scale_log2 = (float)p.scale * kLog2e;
  const T *q = static_cast<const T *>(p.q);
  const T *dout = static_cast<const T *>(p.dout);
  const T *k = static_cast<const T *>(p.k);
  const T *v = static_cast<const T *>(p.v);
  const T *kd = static_cast<const T *>(p.kd);
  const T *vd = static_cast<const T *>(p.vd);

  load_rows_async<D, LDS>(sQ, BM, tid, NTHREADS, [&](int r) -> const T * {
    int64_t R = R0 + r;
    if (R >= TG) return nullptr;
    return packed_row(q, p.q_stride, b, g, G, R);
  });
  load_rows_async<D, LDS>(sdO, BM, tid, NTHREADS, [&](int r) -> const T * {
    int64_t R = R0 + r;
    if (R >= TG) return nullptr;
    return packed_row(dout, p.dout_stride, b, g, G, R);
  });
  cp_async_commit();
  const float *lse2_bg = ws_lse2 + (b * p.Hk + g) * stat_rows(TG);
  const float *delta_bg = ws_delta + (b * p.Hk + g) * stat_rows(TG);
  for (int r = tid; r < BM; r += NTHREADS) {
    int64_t R = R0 + r;
    sLse[r] = R < TG ? lse2_bg[R] : INFINITY;
    sDelta[r] = R < TG ? delta_bg[R] : 0.f;
  }
  cp_async_wait<0>();
  __syncthreads();

  float row_lse2[2], row_delta[2];
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    row_lse2[h2] = sLse[warp * 16 + qr + 8 * h2];
    row_delta[h2] = sDelta[warp * 16 + qr + 8 * h2];
  }
  const bool seq_only = !ACCUM && dq_buf != nullptr;
  float acc_dq[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) acc_dq[j][0] = acc_dq[j][1] = acc_dq[j][2] = acc_dq[j][3] = 0.f;

  // ================= depth part: transposed small GEMMs per group of 8 rows =================
  if (!seq_only && L > 0) {
    T *sKd = reinterpret_cast<T *>(sUnion) + warp * 2 * DL * LDS;
    T *sVd = sKd + DL * LDS;
    float *scratch = reinterpret_cast<float *>(sUnion + Cfg::NWARPS * 2 * DL * LDS * 2) + warp * 16 * D;

    for (int grp = 0; grp < 2; ++grp) {
      const int64_t rb = Rw + grp * 8;  // packed row of column 0
      int64_t col_t[2];
      float col_lse2[2], col_delta[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t R = rb + 2 * qc + e;
        col_t[e] = R < TG ? R / G : -1;
        col_lse2[e] = sLse[warp * 16 + grp * 8 + 2 * qc + e];
        col_delta[e] = sDelta[warp * 16 + grp * 8 + 2 * qc + e];
      }
      // Depth rows the group can see: tokens u_lo.., flattened i = (u - u_lo)*L + l, i < nkeys.
      int64_t nkeys = 0, u_lo = 0;
      if (rb < TG) {
        const int64_t t_first = rb / G, t_last = (rb + 7 < TG ? rb + 7 : TG - 1) / G;
        int64_t u_hi;
        if (chunk <= 0) { u_lo = t_first; u_hi = t_last; }
        else {
          u_lo = (t_first / chunk) * chunk;
          if (causal) u_hi = t_last;
          else { u_hi = (t_last / chunk) * chunk + chunk - 1; if (u_hi > T_ - 1) u_hi = T_ - 1; }
        }
        nkeys = (u_hi - u_lo + 1) * L;
      }
      // q^T and dO^T of the group's 8 rows as B operands (n = row, k = head dim).
      uint32_t q_b[KSTEPS][2], do_b[KSTEPS][2];
#pragma unroll
      for (int kk = 0; kk < KSTEPS / 2; ++kk) {
        const int off = (warp * 16 + grp * 8 + (lane & 7)) * LDS + kk * 32 + (lane >> 3) * 8;
        uint32_t r4[4];
        ldmatrix_x4(r4, sQ + off);
        q_b[2 * kk][0] = r4[0]; q_b[2 * kk][1] = r4[1]; q_b[2 * kk + 1][0] = r4[2]; q_b[2 * kk + 1][1] = r4[3];
        ldmatrix_x4(r4, sdO + off);
        do_b[2 * kk][0] = r4[0]; do_b[2 * kk][1] = r4[1]; do_b[2 * kk + 1][0] = r4[2]; do_b[2 * kk + 1][1] = r4[3];
      }
      float acc_t[D / 16][4];  // dq^T: m-tile md = head dims md*16.., n = the 8 rows
#pragma unroll
      for (int md = 0; md < D / 16; ++md) acc_t[md][0] = acc_t[md][1] = acc_t[md][2] = acc_t[md][3] = 0.f;

      for (int64_t kc = 0; kc < nkeys; kc += DL) {
        __syncwarp();  // the previous chunk's ldmatrix reads are done
        auto depth_row = [&](const T *base, const int64_t *st, int r) -> const T * {
          const int64_t i = kc + r;
          if (i >= nkeys) return nullptr;
          return base + b * st[0] + (u_lo + i / L) * st[1] + (i % L) * st[2] + g * st[3];
        };
        load_rows_async<D, LDS>(sKd, DL, lane, 32, [&](int r) { return depth_row(kd, p.kd_stride, r); });
        load_rows_async<D, LDS>(sVd, DL, lane, 32, [&](int r) { return depth_row(vd, p.vd_stride, r); });
        cp_async_commit();
        cp_async_wait<0>();
        __syncwarp();
#pragma unroll
        for (int mt = 0; mt < DL / 16; ++mt) {
          float st4[4] = {0.f, 0.f, 0.f, 0.f}, dpt4[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int ks = 0; ks < KSTEPS; ++ks) {
            const int off = (mt * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8;
            uint32_t a[4];
            ldmatrix_x4(a, sKd + off);
            Mma::run(st4, a, q_b[ks][0], q_b[ks][1]);
            ldmatrix_x4(a, sVd + off);
            Mma::run(dpt4, a, do_b[ks][0], do_b[ks][1]);
          }
          float ds4[4], pe4[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int64_t i = kc + mt * 16 + qr + (e >= 2 ? 8 : 0);
            const int c = e & 1;
            const bool vis = i < nkeys && col_t[c] >= 0 && depth_visible(u_lo + i / L, col_t[c], chunk, causal);
            const float pe = vis ? exp2_ftz(st4[e] * scale_log2 - col_lse2[c]) : 0.f;
            pe4[e] = pe;
            ds4[e] = pe * (dpt4[e] - col_delta[c]);
          }
          if constexpr (FUSE) {
            // dvd = P^T dO_grp and dkd = scale * dS^T q_grp for depth rows i_lo = kc + mt*16 + qr and
            // i_lo + 8: A = P^T / dS^T (the C layout of the 16 x 8 scores is the m16n8k8 A layout),
            // B = the group's dO / q rows (k = row, n = head dim) by ldmatrix.trans.
            const uint32_t pa2[2] = {Mma::pack(pe4[0], pe4[1]), Mma::pack(pe4[2], pe4[3])};
            const uint32_t da2[2] = {Mma::pack(ds4[0], ds4[1]), Mma::pack(ds4[2], ds4[3])};
            T *dvd_row[2], *dkd_row[2];
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2) {
              const int64_t i = kc + mt * 16 + qr + 8 * h2;
              dvd_row[h2] = dkd_row[h2] = nullptr;
              if (i < nkeys) {
                const int64_t u = u_lo + i / L, l = i % L;
                dvd_row[h2] = static_cast<T *>(p.dvd) + b * p.dvd_stride[0] + u * p.dvd_stride[1] + l * p.dvd_stride[2] +
                              g * p.dvd_stride[3];
                dkd_row[h2] = static_cast<T *>(p.dkd) + b * p.dkd_stride[0] + u * p.dkd_stride[1] + l * p.dkd_stride[2] +
                              g * p.dkd_stride[3];
              }
            }
            const float dscale = (float)p.scale;
#pragma unroll
            for (int n4 = 0; n4 < D / 32; ++n4) {
              const int off = (warp * 16 + grp * 8 + (lane & 7)) * LDS + n4 * 32 + (lane >> 3) * 8;
              uint32_t ob[4], qb4[4];
              ldmatrix_x4_trans(ob, sdO + off);
              ldmatrix_x4_trans(qb4, sQ + off);
#pragma unroll
              for (int j = 0; j < 4; ++j) {
                float cv[4] = {0.f, 0.f, 0.f, 0.f}, ck[4] = {0.f, 0.f, 0.f, 0.f};
                Mma::run_k8(cv, pa2, ob[j]);
                Mma::run_k8(ck, da2, qb4[j]);
                const int col = n4 * 32 + j * 8 + 2 * qc;
#pragma unroll
                for (int h2 = 0; h2 < 2; ++h2) {
                  if (dvd_row[h2]) {
                    store_pair(dvd_row[h2] + col, Mma::pack(cv[2 * h2], cv[2 * h2 + 1]));
                    store_pair(dkd_row[h2] + col, Mma::pack(ck[2 * h2] * dscale, ck[2 * h2 + 1] * dscale));
                  }
                }
              }
            }
          }
          // dq^T += kd^T dS^T: A = kd^T by ldmatrix.trans, B = dS^T (k = depth rows) by movmatrix.
          const uint32_t b0 = movmatrix_trans(Mma::pack(ds4[0], ds4[1]));
          const uint32_t b1 = movmatrix_trans(Mma::pack(ds4[2], ds4[3]));
#pragma unroll
          for (int md = 0; md < D / 16; ++md) {
            uint32_t a[4];
            ldmatrix_x4_trans(a, sKd + (mt * 16 + (lane & 7) + ((lane >> 4) & 1) * 8) * LDS + md * 16 +
                                     ((lane >> 3) & 1) * 8);
            Mma::run(acc_t[md], a, b0, b1);
          }
        }
      }
      // Columns -> per-row scratch (row grp*8 + column of the warp's 16).
#pragma unroll
      for (int md = 0; md < D / 16; ++md)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          scratch[(grp * 8 + 2 * qc + (e & 1)) * D + md * 16 + qr + (e >= 2 ? 8 : 0)] = acc_t[md][e];
    }
    __syncwarp();
#pragma unroll
    for (int h2 = 0; h2 < 2; ++h2) {
      const int row = qr + 8 * h2;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        acc_dq[j][2 * h2] = scratch[row * D + j * 8 + 2 * qc];
        acc_dq[j][2 * h2 + 1] = scratch[row * D + j * 8 + 2 * qc + 1];
      }
    }
    __syncthreads();  // every warp is done with the depth buffers before K/V reuse them
  }

  // ================= sequence part: FA2 over K/V blocks =================
  T *sKV = reinterpret_cast<T *>(sUnion);
  auto sK = [&](int stage) { return sKV + stage * 2 * BK * LDS; };
  auto sV = [&](int stage) { return sKV + stage * 2 * BK * LDS + BK * LDS; };
  const int64_t t_first_cta = R0 / G;
  const int64_t t_last_cta = (R0 + BM - 1 < TG ? R0 + BM - 1 : TG - 1) / G;
  int64_t kv_end = S;
  if (causal) { int64_t e = S - T_ + t_last_cta + 1; kv_end = e < S ? e : S; }
  if (kv_end < 0) kv_end = 0;
  const int n_blocks = (int)((kv_end + BK - 1) / BK);
  const int64_t unmasked_end = causal ? (S - T_ + t_first_cta + 1 < S ? S - T_ + t_first_cta + 1 : S) : S;
  int64_t row_lim[2];  // last visible key of this lane's two rows
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    const int64_t R = Rw + qr + 8 * h2;
    const int64_t t = (R < TG ? R : TG - 1) / G;
    row_lim[h2] = causal ? S - T_ + t : S - 1;
  }
  // WG: stage s holds the swizzled K tile at s * 2 * TILE_WG bytes, the V tile after it
  constexpr int TILE_WG = BK * D * 2;
  auto load_kv = [&](int blk, int stage) {
    const int64_t j0 = (int64_t)blk * BK;
    if constexpr (WG) {  // swizzled tiles; rows past S zero (dS is 0 there, but 0 * stale NaN would not be)
      unsigned char *dk = sUnion + stage * 2 * TILE_WG, *dv = dk + TILE_WG;
      load_rows_sw128_async<D, T>(dk, BK, tid, NTHREADS, [&](int r) -> const T * {
        const int64_t j = j0 + r;
        return j < S ? k + b * p.k_stride[0] + j * p.k_stride[1] + g * p.k_stride[2] : nullptr;
      });
      load_rows_sw128_async<D, T>(dv, BK, tid, NTHREADS, [&](int r) -> const T * {
        const int64_t j = j0 + r;
        return j < S ? v + b * p.v_stride[0] + j * p.v_stride[1] + g * p.v_stride[2] : nullptr;
      });
      cp_async_commit();
      return;
    }
    load_rows_async<D, LDS>(sK(stage), BK, tid, NTHREADS, [&](int r) -> const T * {
      int64_t j = j0 + r;
      return j < S ? k + b * p.k_stride[0] + j * p.k_stride[1] + g * p.k_stride[2] : nullptr;
    });
    load_rows_async<D, LDS>(sV(stage), BK, tid, NTHREADS, [&](int r) -> const T * {
      int64_t j = j0 + r;
      return j < S ? v + b * p.v_stride[0] + j * p.v_stride[1] + g * p.v_stride[2] : nullptr;
    });
    cp_async_commit();
  };

  if (!ACCUM && n_blocks > 0) {
    const T *sQw = sQ + warp * 16 * LDS, *sdOw = sdO + warp * 16 * LDS;
    auto a_frag = [&](uint32_t (&a)[4], const T *base, int ks) {
      ldmatrix_x4(a, base + (lane & 15) * LDS + ks * 16 + (lane >> 4) * 8);
    };
    uint32_t q_a[REGS ? KSTEPS : 1][4], do_a[REGS ? KSTEPS : 1][4];
    if (REGS && !WG) {
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks) { a_frag(q_a[REGS ? ks : 0], sQw, ks); a_frag(do_a[REGS ? ks : 0], sdOw, ks); }
    }
    load_kv(0, 0);
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int stage = blk & 1;
      if (blk + 1 < n_blocks) { load_kv(blk + 1, stage ^ 1); cp_async_wait<1>(); }
      else cp_async_wait<0>();
      if constexpr (WG) fence_proxy_async_smem();  // this thread's cp.async / zero stores -> visible to wgmma
      __syncthreads();
      const T *k_s = sK(stage), *v_s = sV(stage);
      const uint32_t kt_base = smem_u32(sUnion + stage * 2 * TILE_WG), vt_base = kt_base + TILE_WG;

      float s[BK / 8][4], dp[BK / 8][4];
      if constexpr (WG) {
        // Q and dO fragments loaded again each block (8 ldmatrix per warp), not carried across
        // the loop: with them loop-invariant, ptxas 13.0 reused their registers inside the loop
        // body whenever the body's code changed (a compile-time mask or sequence-only flag) and
        // the next block's wgmma read other values: wrong dq from 2 key blocks on (sessions 7
        // and 8; seen in the SASS: the A registers of the dP HGMMA written by an FFMA after it).
        uint32_t qa_blk[KSTEPS][4], da_blk[KSTEPS][4];
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) { a_frag(qa_blk[ks], sQw, ks); a_frag(da_blk[ks], sdOw, ks); }
        wgmma_fence_operand(s);
        wgmma_fence_operand(dp);
        wgmma_fence();
        wgmma_rs_kmajor<T, BK, KSTEPS>(s, qa_blk, kt_base, BK, 0);
        wgmma_rs_kmajor<T, BK, KSTEPS>(dp, da_blk, vt_base, BK, 0);
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(s);
        wgmma_fence_operand(dp);
      } else {
#pragma unroll
      for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks) {
        uint32_t qa[4], da[4];
        if (REGS) {
#pragma unroll
          for (int e = 0; e < 4; ++e) { qa[e] = q_a[REGS ? ks : 0][e]; da[e] = do_a[REGS ? ks : 0][e]; }
        } else {
          a_frag(qa, sQw, ks);
          a_frag(da, sdOw, ks);
        }
#pragma unroll
        for (int np = 0; np < BK / 16; ++np) {
          const int off = (np * 16 + (lane & 7) + ((lane >> 4) & 1) * 8) * LDS + ks * 16 + ((lane >> 3) & 1) * 8;
          uint32_t kb[4], vb[4];
          ldmatrix_x4(kb, k_s + off);
          ldmatrix_x4(vb, v_s + off);
          Mma::run(s[2 * np], qa, kb[0], kb[1]);
          Mma::run(s[2 * np + 1], qa, kb[2], kb[3]);
          Mma::run(dp[2 * np], da, vb[0], vb[1]);
          Mma::run(dp[2 * np + 1], da, vb[2], vb[3]);
        }
      }
      }  // !WG
      const int64_t j0 = (int64_t)blk * BK;
      // P and dS in place; the mask as a compile-time flag with one branch per block (a run-time
      // flag leaves mask code in every element of every block: see bwd_p_ds_causal)
      auto p_ds_block = [&](auto mask_tag) {
        constexpr bool MASK = decltype(mask_tag)::value;
        int lim[2] = {BK, BK};  // this lane's rows: the last visible column of the block
        if constexpr (MASK) {
#pragma unroll
          for (int h2 = 0; h2 < 2; ++h2) {
            const int64_t l = row_lim[h2] - j0 - 2 * qc;
            lim[h2] = l < BK ? (int)l : BK;
          }
        }
#pragma unroll
        for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int h2 = e >> 1;
            const bool vis = !MASK || nt * 8 + (e & 1) <= lim[h2];
            const float pe = vis ? exp2_ftz(s[nt][e] * scale_log2 - row_lse2[h2]) : 0.f;
            dp[nt][e] = pe * (dp[nt][e] - row_delta[h2]);
          }
      };
      if (j0 + BK > unmasked_end)
        p_ds_block(std::true_type{});
      else
        p_ds_block(std::false_type{});
      if constexpr (WG) {
        // dQ += dS K: A = dS packed from the accumulators, B = the K tile read MN-major
        uint32_t dsa[BK / 16][4];
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          dsa[kk][0] = Mma::pack(dp[2 * kk][0], dp[2 * kk][1]);
          dsa[kk][1] = Mma::pack(dp[2 * kk][2], dp[2 * kk][3]);
          dsa[kk][2] = Mma::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
          dsa[kk][3] = Mma::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
        }
        wgmma_fence_operand(acc_dq);
        wgmma_fence();
        wgmma_rs_mnmajor<T, D, BK / 16>(acc_dq, dsa, kt_base, BK, 1);
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(acc_dq);
      } else {
      // dQ += dS K: A = dS from the accumulators, B = K rows by ldmatrix.trans.
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {
        uint32_t dsa[4];
        dsa[0] = Mma::pack(dp[2 * kk][0], dp[2 * kk][1]);
        dsa[1] = Mma::pack(dp[2 * kk][2], dp[2 * kk][3]);
        dsa[2] = Mma::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
        dsa[3] = Mma::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          uint32_t kb[4];
          ldmatrix_x4_trans(kb, k_s + (kk * 16 + (lane & 15)) * LDS + dn * 16 + (lane >> 4) * 8);
          Mma::run(acc_dq[2 * dn], dsa, kb[0], kb[1]);
          Mma::run(acc_dq[2 * dn + 1], dsa, kb[2], kb[3]);
        }
      }
      }  // !WG
      __syncthreads();  // this stage is free for the load two blocks ahead
    }
  }

  if (seq_only) {  // unscaled, for bwd_depth_token_kernel
    store_acc_rows_f32<D>(acc_dq, dq_buf + (b * p.Hk + g) * TG * D, Rw + qr, TG, qc);
    return;
  }
  if constexpr (ACCUM) {  // the sequence part, summed by the dK/dV kernel (unscaled, as acc_dq)
    const float *acc_bg = dq_buf + (b * p.Hk + g) * TG * D;
#pragma unroll
    for (int h2 = 0; h2 < 2; ++h2) {
      const int64_t R = Rw + qr + 8 * h2;
      if (R >= TG) continue;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        const float2 a = *reinterpret_cast<const float2 *>(acc_bg + R * D + j * 8 + 2 * qc);
        acc_dq[j][2 * h2] += a.x;
        acc_dq[j][2 * h2 + 1] += a.y;
      }
    }
  }
  T *dq = static_cast<T *>(p.dq);
  const float scale = (float)p.scale;
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    const int64_t R = Rw + qr + 8 * h2;
    if (R >= TG) continue;
    T *dqr = packed_row(dq, p.dq_stride, b, g, G, R);
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      store_pair(dqr + j * 8 + 2 * qc, Mma::pack(acc_dq[j][2 * h2] * scale, acc_dq[j][2 * h2 + 1] * scale));
  }
}

// ---------------- host ----------------
bool aligned16(const void *ptr) { return ((uintptr_t)ptr & 15) == 0; }
bool strides_mult(const int64_t *st, int n, int m) {
  for (int i = 0; i < n; ++i) if (st[i] % m != 0) return false;
  return true;
}
// Inputs are read in 16-byte pieces (pointer 16-byte aligned, strides multiples of 8 elements);
// outputs are written as element pairs (4-byte aligned, even strides).
bool readable16(const void *ptr, const int64_t *st, int n) { return aligned16(ptr) && strides_mult(st, n, 8); }
bool writable4(const void *ptr, const int64_t *st, int n) { return ((uintptr_t)ptr & 3) == 0 && strides_mult(st, n, 2); }

// Sequence dK/dV kernel variant (d = 64): MINB 1 (255 registers, 2 CTAs/SM, 64-row query steps)
// or 3 (168 registers, 3 CTAs/SM, 32-row steps). Measured (docs/CUDA_NOTES.md): 3 is 13% faster
// at T=16384 (long query loops: more warps hide the per-step latency), 1 is 5% faster at T=4096.
// Rule: 3 when a key block sees >= 32768 packed query rows on average.
// MODA_CUDA_BWD_SEQ_MINB=1|3 forces a variant (tests, benchmarks).
// The sm_90a backward kernels (sequence dK/dV, dQ with its sequence part on wgmma): on an sm_90
// device, d = 64, unless MODA_CUDA_WGMMA=0 (and MODA_CUDA_WGMMA_BWD unset) or MODA_CUDA_WGMMA_BWD=0.
// which: 1 = the dK/dV kernel, 2 = the dQ kernel. MODA_CUDA_WGMMA_BWD=2 / 3 turns on only the
// first / the second (to tell a failure of one from the other).
bool bwd_wgmma_selected(const moda_attn_params *p, int which) {
  const int mode = wgmma_bwd_mode();
  if (p->d != 64 || current_cc() != 90 || mode == 0) return false;
  return mode == 1 || (mode == 2 && which == 1) || (mode == 3 && which == 2);
}

// The depth gradients fused into the dQ kernel (FUSE above): d = 64, L > 0, token visibility, G
// dividing 8. On by default (verified on the H100 in session 5); MODA_CUDA_BWD_FUSE_DEPTH=0 runs
// the separate depth-gradient kernel instead.
bool bwd_fuse_depth_selected(const moda_attn_params *p) {
  static int on = -1;
  if (on < 0) {
    const char *e = getenv("MODA_CUDA_BWD_FUSE_DEPTH");
    on = !(e && e[0] == '0');
  }
  return on && p->d == 64 && p->L > 0 && p->chunk <= 0 && 8 % p->G == 0;
}

// The depth part by bwd_depth_token_kernel (attn_bwd_depth.cu) wherever it can run. Until
// session 9, deterministic = 1 kept the fused path (FUSE above) where the sequence part is long
// (session 7, T=16384: the dQ kernel's depth part cost nothing there); since the dQ kernel loads
// its fragments per block, the separate kernel wins there too (H100, session 9, deterministic
// fwd+bwd, kernel sums, two rounds): T=4096 2.61 -> 2.49 ms, T=8192 8.17 -> 8.03, T=16384
// 29.3 -> 28.5, L=256 38.1 -> 35.4, G=2 9.56 -> 9.05. With deterministic = 0 the depth kernel
// pairs with the atomic dQ (no dQ kernel at all) and is faster everywhere measured (T=4096 3.47
// vs 3.78 ms, DeiT-Tiny-64 2.20 vs 3.17, LM-64 2.28 vs 2.94).
bool bwd_depth_kernel_selected(const moda_attn_params *p) { return bwd_depth_kernel_supported(p); }

// dQ by float32 reductions from the wgmma dK/dV kernel (ATOMIC_DQ): deterministic = 0 only, where
// that kernel runs. Rule (unset MODA_CUDA_BWD_ATOMIC_DQ): wherever the depth kernel
// (attn_bwd_depth.cu) runs; otherwise where the sequence part dominates, as the
// forward's wgmma rule with its depth clause - a mean of >= 1024 visible keys and >= 16 L. Measured
// on the H100 (session 5, fwd+bwd, deterministic = 0, atomic vs not): paper T=4096 4.14 vs
// 4.54 ms, T=16384 50.1 vs 57.7, T=65536 742 vs 869; but LM-64 (1024 keys, L = 126) 2.99 vs 2.82
// and DeiT-Tiny-64 3.24 vs 3.10, where the depth part dominates. =1 forces it wherever the kernel
// runs (tests), =0 turns it off. Verified: the checker's backward grid and the busted spec, forced.
// Deterministic dQ by ordered adds in the warp-specialised dK/dV kernel (ORDERED in
// attn_bwd_wgmma.cu): deterministic = 1, d = 64, where that kernel launches. Off unless
// MODA_CUDA_BWD_ORDERED_DQ=1. It replaces the dQ kernel's second pass over the sequence, but is
// slower (H100, session 8, T=16384 deterministic: 64-72 ms against 51; the ordered adds sit on
// the consumer warpgroup's critical path): correct (checker grid, bit-reproducible), kept off.
bool bwd_ordered_dq_selected(const moda_attn_params *p) {
  static int on = -1;
  if (on < 0) {
    const char *e = getenv("MODA_CUDA_BWD_ORDERED_DQ");
    on = e && e[0] == '1';
  }
  return on && p->deterministic && p->d == 64 && bwd_wgmma_selected(p, 1) && bwd_ws_selected(p) &&
         bwd_ws_launchable(p);
}

bool bwd_atomic_dq_selected(const moda_attn_params *p) {
  static int forced = -1;  // -1: not read yet; 0 off, 1 on, 2 the rule
  if (forced < 0) {
    const char *e = getenv("MODA_CUDA_BWD_ATOMIC_DQ");
    forced = e && (e[0] == '0' || e[0] == '1') ? e[0] - '0' : 2;
  }
  if (forced == 0 || p->deterministic || !bwd_wgmma_selected(p, 1)) return false;
  if (forced == 1) return true;
  // With the depth kernel the dQ kernel would run for the sequence part alone, which the atomic
  // path makes unnecessary: measured (session 7, H100, fwd+bwd nd) atomic vs not: DeiT-Tiny 0.83
  // vs 0.95 ms, DeiT-Tiny-64 2.17 vs 2.31, LM-64 2.30 vs 2.48. Except where the depth kernel then
  // runs beside the sequence kernels and the dQ kernel's work balances it (session 10, LM-64:
  // 1.43 vs 1.54 ms; bwd_depth_concurrent_sms in attn_bwd_depth.cu has the rule and the numbers).
  if (bwd_depth_kernel_selected(p)) {
    const double r = bwd_seq_depth_ratio(p);
    if (p->T >= 1024 && r >= 0.3 && r <= 0.6 && bwd_depth_concurrent_possible(p)) return false;
    // Where the sequence part is long, dQ by the warp-specialised dQ kernel beside the dK/dV
    // kernel without dQ (v11 + v10) beats the reductions: ~17 GB of float32 red.add at T=16384,
    // which held the dK/dV kernel at ~330 TF/s. Measured (H100, session 22, f+b nd ms, two rounds,
    // split / atomic): paper T=4096 1.80 / 2.13, T=16384 20.4 / 23.5, T=65536 305 / 355; but
    // DeiT-Tiny 0.588 / 0.558 and DeiT-Tiny-64 1.914 / 1.891 (197 keys), hence mean_seq_keys.
    // Not where the atomic flow would run the depth kernel concurrently (that flow is unmeasured
    // split, and the concurrent rule would see a different balance).
    if (mean_seq_keys(p) >= 1024 && bwd_dq_ws_selected(p) && bwd_ws_selected(p) && bwd_ws_launchable(p) &&
        bwd_depth_concurrent_sms(p, false) == 0)
      return false;
    // Everywhere else with the depth kernel: atomic. (Session 22 let this case fall through to the
    // rule below, which sent DeiT to the split flow: its A/B, one process, f+b nd ms, split /
    // atomic: DeiT-Tiny 0.587 0.588 / 0.557 0.559, DeiT-Tiny-64 1.915 1.914 / 1.890 1.891; the
    // spec's flow test holds the rule now.)
    return true;
  }
  const int64_t seq_keys = mean_seq_keys(p);
  return seq_keys >= 1024 && seq_keys >= 16 * p->L;
}

// dQ's sequence part by the dQ kernel (not summed by the dK/dV kernel): the concurrent rule's input,
// one predicate for the launch, the workspace size and the name, so that they agree
bool bwd_dq_by_kernel(const moda_attn_params *p) { return !bwd_atomic_dq_selected(p) && !bwd_ordered_dq_selected(p); }

int seq_minb(const moda_attn_params *p) {
  static int forced = -1;
  if (forced < 0) {
    const char *e = getenv("MODA_CUDA_BWD_SEQ_MINB");
    forced = e && (e[0] == '1' || e[0] == '3') ? e[0] - '0' : 0;
  }
  if (forced) return forced;
  const int64_t mean_rows = (p->causal ? p->T / 2 : p->T) * p->G;
  return mean_rows >= 32768 ? 3 : 1;
}

template <typename T, int D>
int launch_bwd(const moda_attn_params *p, cudaStream_t stream, float *workspace) {
  using Cfg = BwdConfig<D>;
  constexpr int DEPTH_MINB = D <= 64 ? 3 : 2;
  const bool seq3 = D <= 64 && seq_minb(p) == 3;
  int st;
  if ((st = allow_dynamic_smem<bwd_dkv_mma_kernel<T, D, false, 1>>(Cfg::dkv_smem(Cfg::BQ), "bwd_dkv_mma")) ||
      (st = allow_dynamic_smem<bwd_dkv_mma_kernel<T, D, true, DEPTH_MINB>>(Cfg::dkv_smem(Cfg::BQ_DEPTH), "bwd_dkvd_mma")) ||
      (st = allow_dynamic_smem<bwd_dq_mma_kernel<T, D>>(Cfg::DQ_SMEM, "bwd_dq_mma")))
    return st;
  if constexpr (D == 64) {
    if ((st = allow_dynamic_smem<bwd_dq_mma_kernel<T, D, true>>(Cfg::DQ_SMEM_WG, "bwd_dq_wgmma")) ||
        (st = allow_dynamic_smem<bwd_dq_mma_kernel<T, D, true, true>>(Cfg::DQ_SMEM_WG, "bwd_dq_wgmma")) ||
        (st = allow_dynamic_smem<bwd_dq_mma_kernel<T, D, false, true>>(Cfg::DQ_SMEM, "bwd_dq_mma")) ||
        (st = allow_dynamic_smem<bwd_dq_mma_kernel<T, D, false, false, true>>(Cfg::DQ_SMEM, "bwd_dq_accum")) ||
        (st = allow_dynamic_smem<bwd_dq_mma_kernel<T, D, false, true, true>>(Cfg::DQ_SMEM, "bwd_dq_accum")))
      return st;
  }
  if constexpr (D <= 64) {
    if ((st = allow_dynamic_smem<bwd_dkv_mma_kernel<T, D, false, 3>>(Cfg::dkv_smem(Cfg::BQ_SEQ3), "bwd_dkv_mma")))
      return st;
  }
  const int64_t TG = p->T * p->G;
  const int64_t rows = p->B * p->Hk * TG, rows_p = p->B * p->Hk * stat_rows(TG);
  float *ws_lse2 = workspace, *ws_delta = workspace + rows_p;  // stat_rows(T*G) per (b, g)
  // The depth part by bwd_depth_token_kernel (attn_bwd_depth.cu), last: it adds the float32
  // sequence dQ in dq_accum (its 8-byte reads need an aligned workspace; a caller's might not be)
  const bool depth_k = bwd_depth_kernel_selected(p) && rows > 0 && ((uintptr_t)workspace & 15) == 0;
  const bool fuse = !depth_k && D == 64 && bwd_fuse_depth_selected(p);  // dkd, dvd from the dQ kernel (no kernel 3)
  // sequence dQ summed by the dK/dV kernel; its vector reductions need an 8-byte aligned
  // accumulator (a caller's workspace might not be: then the deterministic path runs)
  const bool atomic = D == 64 && bwd_atomic_dq_selected(p) && ((uintptr_t)workspace & 15) == 0;
  // deterministic dQ by ordered adds: the same flow as the atomic path, plus one counter per
  // 64-row block (after the accumulator in the workspace, zeroed with it)
  const bool ordered = D == 64 && bwd_ordered_dq_selected(p) && ((uintptr_t)workspace & 15) == 0;
  const bool accum = atomic || ordered;  // the dK/dV kernel sums dQ's sequence part
  float *dq_accum = accum || depth_k ? workspace + 2 * rows_p : nullptr;  // [B, Hk, T*G, d] float32
  int *dq_sem = ordered ? reinterpret_cast<int *>(dq_accum + rows * D) : nullptr;  // [B, Hk, stat_rows/64]
  // the concurrent backward: the depth kernel on its own SMs beside the others, its dq part in
  // dq_part [B, Hk, T*G, d] float32 after the counters (16-byte aligned), summed at the join
  const int conc_sms = depth_k && rows > 0 ? bwd_depth_concurrent_sms(p, bwd_dq_by_kernel(p)) : 0;
  float *dq_part = conc_sms ? workspace + dq_part_offset(p) : nullptr;
  const int64_t dq_tiles = (TG + Cfg::BM - 1) / Cfg::BM;
  const dim3 dq_grid((unsigned)dq_tiles, (unsigned)p->Hk, (unsigned)p->B);
  if (rows > 0) {
    constexpr int TPR = D / 8;
    const int64_t blocks = (rows_p * TPR + 255) / 256;
    if (blocks > 0x7fffffff) return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn bwd: too many rows");
    // dq_accum is 16-byte aligned where accum (checked above): the preprocess zeroes it, except
    // on the ordered path where every query row is seen by some key block (its first turn stores)
    const bool every_row_seen = p->S > 0 && (!p->causal || p->S >= p->T);
    const bool zero = atomic || (ordered && !every_row_seen);
    bwd_preprocess_kernel<T, D><<<(unsigned)blocks, 256, 0, stream>>>(*p, ws_lse2, ws_delta, zero ? dq_accum : nullptr);
    MODA_CUDA_CHECK_LAUNCH("bwd_preprocess_kernel");
    if (conc_sms)
      if (int st = bwd_depth_concurrent_fork(p, stream, ws_lse2, ws_delta, dq_part, conc_sms)) return st;
    if (accum) {
      if (ordered)  // the counters after the accumulator
        MODA_CUDA_CHECK(cudaMemsetAsync(dq_sem, 0, (size_t)(rows_p / 64) * sizeof(int), stream), "cudaMemsetAsync(dq_sem)");
    } else {
      bool launched = false;
      if constexpr (D == 64) {
        const bool wg = bwd_wgmma_selected(p, 2);
        // the warp-specialised dQ kernel (sm_90a, as wg; the workspace alignment depth_k checked)
        if (wg && depth_k && bwd_dq_ws_selected(p))
          if (int st = bwd_dq_ws_launch(p, stream, ws_lse2, ws_delta, dq_accum, &launched)) return st;
        if (!launched && depth_k) {
          if (wg)
            bwd_dq_mma_kernel<T, D, true><<<dq_grid, Cfg::NTHREADS, Cfg::DQ_SMEM_WG_SEQ, stream>>>(*p, ws_lse2, ws_delta, dq_accum);
          else
            bwd_dq_mma_kernel<T, D><<<dq_grid, Cfg::NTHREADS, Cfg::DQ_SMEM_SEQ, stream>>>(*p, ws_lse2, ws_delta, dq_accum);
        } else if (!launched) {
          const int smem = wg ? Cfg::DQ_SMEM_WG : Cfg::DQ_SMEM;
          auto kern = wg ? (fuse ? bwd_dq_mma_kernel<T, D, true, true> : bwd_dq_mma_kernel<T, D, true, false>)
                         : (fuse ? bwd_dq_mma_kernel<T, D, false, true> : bwd_dq_mma_kernel<T, D, false, false>);
          kern<<<dq_grid, Cfg::NTHREADS, smem, stream>>>(*p, ws_lse2, ws_delta, nullptr);
        }
        launched = true;
      }
      if (!launched) {
        if (depth_k)
          bwd_dq_mma_kernel<T, D><<<dq_grid, Cfg::NTHREADS, Cfg::DQ_SMEM_SEQ, stream>>>(*p, ws_lse2, ws_delta, dq_accum);
        else
          bwd_dq_mma_kernel<T, D><<<dq_grid, Cfg::NTHREADS, Cfg::DQ_SMEM, stream>>>(*p, ws_lse2, ws_delta, nullptr);
      }
      MODA_CUDA_CHECK_LAUNCH("bwd_dq_mma_kernel");
    }
  }
  if (p->B * p->S > 0) {
    dim3 grid((unsigned)(((p->S + Cfg::BN - 1) / Cfg::BN) * p->Hk), 1, (unsigned)p->B);
    bool launched = false;
    if constexpr (D == 64) {
      // warp-specialised, 128 keys per CTA; its bulk copies of lse2/delta need a 16-byte aligned
      // workspace (the library's always is; a caller's might not be: then the kernel below runs)
      if (bwd_wgmma_selected(p, 1) && bwd_ws_selected(p) && ((uintptr_t)workspace & 15) == 0) {
        const int st = bwd_dkv_ws_launch(p, stream, ws_lse2, ws_delta, accum ? dq_accum : nullptr, dq_sem, &launched);
        if (st) return st;
      }
      // the ordered path has no fallback kernel: bwd_ordered_dq_selected checked that this launches
      if (ordered && !launched) return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn bwd: ordered dQ kernel not launchable");
      if (!launched && bwd_wgmma_selected(p, 1)) {
        if ((st = allow_dynamic_smem<bwd_dkv_wgmma_kernel<T>>(kDkvWgmmaSmem, "bwd_dkv_wgmma")) ||
            (st = allow_dynamic_smem<bwd_dkv_wgmma_kernel<T, true>>(kDkvWgmmaSmemAtomic, "bwd_dkv_wgmma")))
          return st;
        if (atomic)
          bwd_dkv_wgmma_kernel<T, true><<<grid, 128, kDkvWgmmaSmemAtomic, stream>>>(*p, ws_lse2, ws_delta, dq_accum);
        else
          bwd_dkv_wgmma_kernel<T><<<grid, 128, kDkvWgmmaSmem, stream>>>(*p, ws_lse2, ws_delta, nullptr);
        MODA_CUDA_CHECK_LAUNCH("bwd_dkv_wgmma_kernel");
        launched = true;
      }
    }
    if constexpr (D <= 64) {
      if (!launched && seq3) {
        bwd_dkv_mma_kernel<T, D, false, 3><<<grid, Cfg::NTHREADS, Cfg::dkv_smem(Cfg::BQ_SEQ3), stream>>>(*p, ws_lse2, ws_delta);
        launched = true;
      }
    }
    if (!launched)
      bwd_dkv_mma_kernel<T, D, false, 1><<<grid, Cfg::NTHREADS, Cfg::dkv_smem(Cfg::BQ), stream>>>(*p, ws_lse2, ws_delta);
    MODA_CUDA_CHECK_LAUNCH("bwd_dkv_mma_kernel");
  }
  if constexpr (D == 64) {
    if (accum && rows > 0 && !depth_k) {  // after the dK/dV kernel (same stream): depth part + the accumulator
      auto kern = fuse ? bwd_dq_mma_kernel<T, D, false, true, true> : bwd_dq_mma_kernel<T, D, false, false, true>;
      kern<<<dq_grid, Cfg::NTHREADS, Cfg::DQ_SMEM, stream>>>(*p, ws_lse2, ws_delta, dq_accum);
      MODA_CUDA_CHECK_LAUNCH("bwd_dq_accum_kernel");
    }
  }
  if (conc_sms) return bwd_depth_concurrent_join(p, stream, dq_accum, dq_part);
  if (depth_k) return bwd_depth_launch(p, stream, ws_lse2, ws_delta, dq_accum);  // after dQ and dK/dV
  if (p->L > 0 && rows > 0 && !fuse) {
    dim3 grid((unsigned)(((p->T * p->L + Cfg::BN - 1) / Cfg::BN) * p->Hk), 1, (unsigned)p->B);
    bwd_dkv_mma_kernel<T, D, true, DEPTH_MINB><<<grid, Cfg::NTHREADS, Cfg::dkv_smem(Cfg::BQ_DEPTH), stream>>>(*p, ws_lse2, ws_delta);
    MODA_CUDA_CHECK_LAUNCH("bwd_dkvd_mma_kernel");
  }
  return MODA_OK;
}

}  // namespace

bool bwd_mma_supported(const moda_attn_params *p, int cc) {
  if (cc < 80) return false;
  if (p->dtype != MODA_BF16 && p->dtype != MODA_F16) return false;
  if (p->d != 64 && p->d != 128) return false;
  if (!readable16(p->q, p->q_stride, 3) || !readable16(p->k, p->k_stride, 3) ||
      !readable16(p->v, p->v_stride, 3) || !readable16(p->o, p->o_stride, 3) ||
      !readable16(p->dout, p->dout_stride, 3))
    return false;
  if (!writable4(p->dq, p->dq_stride, 3) || !writable4(p->dk, p->dk_stride, 3) || !writable4(p->dv, p->dv_stride, 3))
    return false;
  if (p->L > 0) {
    if (!readable16(p->kd, p->kd_stride, 4) || !readable16(p->vd, p->vd_stride, 4)) return false;
    if (!writable4(p->dkd, p->dkd_stride, 4) || !writable4(p->dvd, p->dvd_stride, 4)) return false;
  }
  if (p->B > 65535 || p->Hk > 65535) return false;
  // grid.x: key blocks of 64 (sequence and depth) and query tiles of 64 packed rows
  const int64_t lim = (1ll << 31) - 1;
  if ((p->S + 63) / 64 * p->Hk > lim || (p->T * p->L + 63) / 64 * p->Hk > lim || (p->T * p->G + 63) / 64 > lim)
    return false;
  return true;
}

const char *bwd_mma_name(const moda_attn_params *p) {
  // the sequence dK/dV and the dQ kernels; the depth dK/dV kernel is always mma.sync
  // dQ's sum order varies run to run on the atomic path; "_fdepth": depth gradients fused into dQ
  // "_ws": the warp-specialised dK/dV kernel (attn_bwd_wgmma.cu)
  // "_dtok": the depth part by bwd_depth_token_kernel (attn_bwd_depth.cu); "_ordered_dq": dQ by
  // ordered adds in the warp-specialised dK/dV kernel (deterministic)
  const bool depth_k = bwd_depth_kernel_selected(p);
  // "_conc": the depth kernel beside the others on its own SMs
  const bool conc = depth_k && bwd_depth_concurrent_sms(p, bwd_dq_by_kernel(p)) > 0;
  if (bwd_ordered_dq_selected(p)) {
    if (!depth_k) return "wgmma_d64_ws_ordered_dq";
    return bwd_depth_tma_selected(p, conc) ? "wgmma_d64_ws_ordered_dq_dtma" : "wgmma_d64_ws_ordered_dq_dtok";
  }
  if (depth_k) {
    const bool ws = bwd_wgmma_selected(p, 1) && bwd_ws_selected(p);
    if (bwd_depth_tma_selected(p, conc)) {  // "_dtma": that kernel's TMA variant (attn_bwd_depth_tma.cu; d = 64, sm_90)
      if (bwd_atomic_dq_selected(p))
        return ws ? (conc ? "wgmma_d64_ws_atomic_dq_dtma_conc" : "wgmma_d64_ws_atomic_dq_dtma")
                  : (conc ? "wgmma_d64_atomic_dq_dtma_conc" : "wgmma_d64_atomic_dq_dtma");
      if (ws) return conc ? "wgmma_d64_ws_dtma_conc" : "wgmma_d64_ws_dtma";
      if (bwd_wgmma_selected(p, 1) || bwd_wgmma_selected(p, 2)) return conc ? "wgmma_d64_dtma_conc" : "wgmma_d64_dtma";
      return conc ? "mma_sync_d64_dtma_conc" : "mma_sync_d64_dtma";
    }
    if (bwd_atomic_dq_selected(p))
      return ws ? (conc ? "wgmma_d64_ws_atomic_dq_dtok_conc" : "wgmma_d64_ws_atomic_dq_dtok")
                : (conc ? "wgmma_d64_atomic_dq_dtok_conc" : "wgmma_d64_atomic_dq_dtok");
    if (ws) return conc ? "wgmma_d64_ws_dtok_conc" : "wgmma_d64_ws_dtok";
    if (bwd_wgmma_selected(p, 1) || bwd_wgmma_selected(p, 2)) return conc ? "wgmma_d64_dtok_conc" : "wgmma_d64_dtok";
    if (conc) return "mma_sync_d64_dtok_conc";
    return p->d == 128 ? "mma_sync_d128_dtok" : "mma_sync_d64_dtok";
  }
  const bool fd = bwd_fuse_depth_selected(p);
  const bool ws = bwd_wgmma_selected(p, 1) && bwd_ws_selected(p);
  if (bwd_atomic_dq_selected(p))
    return ws ? (fd ? "wgmma_d64_ws_atomic_dq_fdepth" : "wgmma_d64_ws_atomic_dq")
              : (fd ? "wgmma_d64_atomic_dq_fdepth" : "wgmma_d64_atomic_dq");
  if (ws) return fd ? "wgmma_d64_ws_fdepth" : "wgmma_d64_ws";
  if (bwd_wgmma_selected(p, 1) || bwd_wgmma_selected(p, 2)) return fd ? "wgmma_d64_fdepth" : "wgmma_d64";
  if (fd) return "mma_sync_d64_fdepth";
  return p->d == 128 ? "mma_sync_d128" : "mma_sync_d64";
}

// lse2 and delta per packed row (stat_rows padding), + the float32 dQ accumulator of the atomic-dQ path
// (+ the ordered path's counters), + the concurrent depth kernel's dq part (at dq_part_offset)
int64_t dq_part_offset(const moda_attn_params *p) {
  const int64_t rows = p->B * p->Hq * p->T, rows_p = p->B * p->Hk * stat_rows(p->T * p->G);
  const bool ordered = bwd_ordered_dq_selected(p);  // + one int counter per 64-row block
  const int64_t end = 2 * rows_p + (bwd_atomic_dq_selected(p) || ordered || bwd_depth_kernel_selected(p) ? rows * p->d : 0) +
                      (ordered ? rows_p / 64 : 0);
  return (end + 3) / 4 * 4;
}

int64_t bwd_mma_workspace_floats(const moda_attn_params *p) {
  const int64_t rows = p->B * p->Hq * p->T;
  return dq_part_offset(p) + (bwd_depth_concurrent_sms(p, bwd_dq_by_kernel(p)) ? rows * p->d : 0);
}

int bwd_mma_launch(const moda_attn_params *p, cudaStream_t stream, float *workspace) {
  if (p->dtype == MODA_BF16)
    return p->d == 128 ? launch_bwd<__nv_bfloat16, 128>(p, stream, workspace)
                       : launch_bwd<__nv_bfloat16, 64>(p, stream, workspace);
  return p->d == 128 ? launch_bwd<__half, 128>(p, stream, workspace) : launch_bwd<__half, 64>(p, stream, workspace);
}

}  // namespace moda_cuda
