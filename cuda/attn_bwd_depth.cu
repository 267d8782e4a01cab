// attn_bwd_depth.cu: the depth part of the MoDA backward for token visibility, as one
// memory-streaming kernel (mma.sync m16n8k16 / m16n8k8, sm_80+, d = 64 / 128).
//
// With token visibility (SPEC section 1, chunk <= 0) the depth rows of token u are seen only by
// the G query heads of u, so per (batch, KV head, token) the depth backward is closed:
//     S^T = kd_u q_u^T,  dP^T = vd_u dO_u^T                         [L x G]
//     P^T = exp2(S^T * scale*log2(e) - lse2),  dS^T = P^T (dP^T - delta)
//     dvd_u = P^T dO_u,  dkd_u = scale * dS^T q_u                   [L x d], complete here
//     dq_u += scale * dS kd_u                                       [G x d]
// It reads kd, vd once and writes dkd, dvd once: ~8 L d bytes per token and KV head against
// ~10 L G d FLOPs, a stream at the memory rate, and the kernel is built for that:
// - a unit is NC = max(8, G) packed query rows (8/G whole tokens for G dividing 8, one token for
//   G = 16, 32) and the TPU*L depth rows of its TPU tokens, walked in items of 64 depth rows
//   (flattened i = (u - u_first)*L + l; a depth row of another token of the unit is masked);
// - persistent CTAs of 4 warps each take a contiguous range of units ((b, g, unit) flattened)
//   and stream its items through an NST-stage cp.async ring; a stage holds the item's kd, vd rows
//   and its unit's q, dO rows and lse2, delta (re-read per item, from L2: they are small);
// - warp w owns depth rows 16w..16w+15 of an item: S^T, dP^T, P^T, dS^T, then dvd and dkd
//   (m16n8k8 for NC = 8, k = the unit's query rows), staged in smem (dvd over the warp's own vd
//   rows) and written as whole 16-byte pieces of whole rows;
// - dq^T += kd^T dS^T sums over all 64 rows of the item, so the warps exchange dS through smem
//   and warp w then owns head dims (D/4)w..(D/4)(w+1)-1 of dq^T for the whole unit: its
//   accumulators live across the unit's items and nothing is summed across warps.
// dq: the sequence part arrives unscaled in float32 in dq_seq [B, Hk, T*G, d] (summed there by
// the dK/dV kernel's reductions, deterministic = 0, or written by the dQ kernel's sequence-only
// variant); this kernel adds the depth part, scales and writes dq once. It runs last - or, in the
// concurrent backward (SUB = 4, SPLIT), beside the sequence kernels on SMs of its own: then it
// writes dq's depth part to a float32 buffer and bwd_dq_finish_kernel sums the two into dq.
#include <stdint.h>
#include <stdlib.h>

#include <type_traits>

#include "moda_cuda_internal.cuh"
#include "attn_bwd_common.cuh"
#include "mma_helpers.cuh"

namespace moda_cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

// SW (the default at d = 64 since session 8; MODA_CUDA_BWD_DEPTH_SW=0 turns it off): the stage
// tiles in the 128-byte-swizzled layout instead of padded rows and dkd staged over the warp's own
// kd rows after the dq^T step (one more barrier), so that at d = 64, NC = 8 a CTA needs 55.5 KB
// instead of 72 and 4 CTAs (16 warps) fit on an SM instead of 3: more rows in flight (ncu at
// T=4096: 67% of DRAM bandwidth with 12 warps, 9.2 cycles per issued instruction). Measured
// (session 8, H100, this kernel's time, SW vs not): T=4096 0.50 vs 0.54 ms, T=16384 1.98 vs 2.14,
// DeiT-Tiny 0.28 vs 0.33, DeiT-Tiny-64 1.255 vs 1.262, LM-64 0.863 vs 0.868.
template <int D, int NC, bool SW>
struct DepthBwdConfig {
  static constexpr int NWARPS = 4, NTHREADS = 128;
  static constexpr int ROWS = 64;       // depth rows per item (16 per warp)
  static constexpr int LDS = D + 8;     // padded smem row stride (elements): ldmatrix without bank conflicts
  static constexpr int LDSD = ROWS + 8; // dS tile [NC][ROWS] row stride
  // Ring depth: 3 stages at d = 64 (72 KB at NC = 8: 3 CTAs per SM; SW: 55.5 KB, 4), 2 at d = 128.
  static constexpr int NST = D <= 64 ? 3 : 2;
  static constexpr int MINB = D <= 64 ? (SW && NC == 8 ? 4 : 3) : 2;  // CTAs per SM the registers are cut for
  static constexpr int ROW_BYTES = (SW ? D : LDS) * 2;
  static constexpr int KV_BYTES = ROWS * ROW_BYTES;  // kd or vd rows of a stage
  static constexpr int Q_BYTES = NC * ROW_BYTES;     // q or dO rows of a stage
  static constexpr int STATS_BYTES = SW ? (2 * NC * 4 + 127) / 128 * 128 : 2 * NC * 4;  // SW: tiles stay 128-byte aligned
  static constexpr int STAGE = 2 * KV_BYTES + 2 * Q_BYTES + STATS_BYTES;
  static constexpr int DS_BYTES = NC * LDSD * 2;
  static constexpr int SMEM = NST * STAGE + DS_BYTES + (SW ? 0 : KV_BYTES);  // + the dkd staging rows
  static_assert(STAGE % 16 == 0 && DS_BYTES % 16 == 0, "16-byte aligned smem pieces");
  static_assert(!SW || STAGE % 128 == 0, "SW: 128-byte aligned tiles (bank-conflict-free swizzle)");
};

// Element (r, c) of a stage tile of `rows` rows: padded rows of LDS elements, or with SW the
// 128-byte-swizzled layout of sw128_offset (16-byte piece j of row r at piece j ^ (r % 8)).
template <bool SW, int LDS, typename P>
__device__ __forceinline__ P *tile_at(P *base, int r, int c, int rows) {
  if constexpr (SW) {
    using B = typename std::conditional<std::is_const<P>::value, const unsigned char, unsigned char>::type;
    return reinterpret_cast<P *>(reinterpret_cast<B *>(base) + sw128_offset(r, c, rows));
  } else {
    return base + r * LDS + c;
  }
}

// Where rows i, i + STEP, i + 2 STEP, ... of a unit's depth rows (flattened i = token * L + slot,
// from token u_lo on) lie in two depth tensors a and b ([B, T, L_max, Hk, d] with strides; a, b
// already at the batch, KV head and column): one division for the first row, then adds, where a
// division and three 64-bit multiplies per row and tensor were (session 11, H100, LM-64: 14% fewer
// instructions in the concurrent depth kernel, 0.917 -> 0.881 ms alone on its 54 SMs).
template <int STEP, typename P>
struct RowWalk {
  P *a, *b;
  int slot;
  // the strides come from the kernel parameters at each step: the per-step constants can live in
  // uniform registers instead of four 64-bit values per thread
  __device__ __forceinline__ RowWalk(P *a0, P *b0, const int64_t (&sa)[4], const int64_t (&sb)[4], int64_t u_lo, int i,
                                     const FastDiv &div_L, int L) {
    const int ui = (int)div_L.div((uint32_t)i);
    slot = i - ui * L;
    a = a0 + (u_lo + ui) * sa[1] + slot * sa[2];
    b = b0 + (u_lo + ui) * sb[1] + slot * sb[2];
  }
  __device__ __forceinline__ void next(const int64_t (&sa)[4], const int64_t (&sb)[4], int L) {
    slot += STEP;
    a += STEP * sa[2];
    b += STEP * sb[2];
    while (slot >= L) {  // once at most for L >= STEP: + one token - L slots
      slot -= L;
      a += sa[1] - L * sa[2];
      b += sb[1] - L * sb[2];
    }
  }
};

// SUB: independent sub-CTAs of 4 warps per CTA (1, or 4 for the concurrent backward: one CTA
// fills an SM's shared memory and registers, so a grid of N CTAs holds exactly N SMs and the
// dK/dV kernel runs on the others). A sub-CTA is what a CTA is for SUB = 1: its own smem, named
// barrier, and units (virtual block blockIdx.x * SUB + sub of gridDim.x * SUB).
// SPLIT: dq's depth part goes unscaled in float32 to dq_part [B, Hk, T*G, d] (bwd_dq_finish adds
// the sequence part later) instead of being added to dq_seq and written as dq.
template <typename T, int D, int NC, bool SW, int SUB, bool SPLIT>
__global__ void __launch_bounds__(128 * SUB, (SUB == 1 ? DepthBwdConfig<D, NC, SW>::MINB : 1))
bwd_depth_token_kernel(const moda_attn_params p, const float *ws_lse2, const float *ws_delta, const float *dq_seq,
                       float *dq_part, int units_per_bg, int total_units) {
  using Cfg = DepthBwdConfig<D, NC, SW>;
  using Mma = MmaOp<T>;
  constexpr int ROWS = Cfg::ROWS, LDS = Cfg::LDS, LDSD = Cfg::LDSD, NST = Cfg::NST;
  constexpr int NT = NC / 8, KSTEPS = D / 16, MT = D / 64;  // MT: dq^T m16 tiles per warp
  static_assert(NC == 8 || NC == 16 || NC == 32, "NC: 8, 16 or 32 query rows per unit");
  static_assert(D == 64 || D == 128, "d: 64 or 128");

  extern __shared__ __align__(128) unsigned char smem_all[];
  const int sub = SUB == 1 ? 0 : (int)threadIdx.x / Cfg::NTHREADS;
  unsigned char *smem = smem_all + sub * Cfg::SMEM;
  // the sub-CTA's barrier (named barriers 1..SUB: 0 is __syncthreads')
  auto sync = [&]() {
    if constexpr (SUB == 1) __syncthreads();
    else asm volatile("bar.sync %0, %1;" ::"r"(1 + sub), "n"(Cfg::NTHREADS) : "memory");
  };
  const int64_t vblock = (int64_t)blockIdx.x * SUB + sub, vgrid = (int64_t)gridDim.x * SUB;
  T *sDS = reinterpret_cast<T *>(smem + NST * Cfg::STAGE);                  // dS [NC][LDSD]
  T *sDkd = reinterpret_cast<T *>(smem + NST * Cfg::STAGE + Cfg::DS_BYTES); // dkd [ROWS][LDS] (!SW)
  auto at = [&](auto *base, int r, int c, int rows) { return tile_at<SW, LDS>(base, r, c, rows); };
  auto sKd = [&](int s) { return reinterpret_cast<T *>(smem + s * Cfg::STAGE); };
  auto sVd = [&](int s) { return reinterpret_cast<T *>(smem + s * Cfg::STAGE + Cfg::KV_BYTES); };
  auto sQ = [&](int s) { return reinterpret_cast<T *>(smem + s * Cfg::STAGE + 2 * Cfg::KV_BYTES); };
  auto sdO = [&](int s) { return reinterpret_cast<T *>(smem + s * Cfg::STAGE + 2 * Cfg::KV_BYTES + Cfg::Q_BYTES); };
  auto sLse = [&](int s) {
    return reinterpret_cast<float *>(smem + s * Cfg::STAGE + 2 * Cfg::KV_BYTES + 2 * Cfg::Q_BYTES);
  };

  const int tid = SUB == 1 ? (int)threadIdx.x : (int)threadIdx.x % Cfg::NTHREADS, warp = tid / 32, lane = tid % 32, qr = lane / 4, qc = lane % 4;
  const int64_t G = p.G, T_ = p.T, L = p.L, TG = T_ * G, Hk = p.Hk;
  const int TPU = NC / (int)G;                              // tokens per unit (the host: G divides NC)
  // the loaders' and the write-back's row -> (token, slot) maps divide by L and G per 16-byte
  // piece: multiply-high divisions (an integer division per piece was most of the loaders' code)
  const FastDiv div_L((uint32_t)L), div_G((uint32_t)G);
  const int CPU = (int)((TPU * L + ROWS - 1) / ROWS);       // items per unit
  const float scale_log2 = (float)p.scale * kLog2e, scale = (float)p.scale;
  // Which units: every vgrid-th, flattened (b, unit, g): all CTAs sweep the tensors together, as a
  // copy kernel does, and the KV heads of a token (adjacent rows of kd, vd) are consecutive units.
  // Measured against contiguous ranges per CTA in (b, g, unit) order (H100, session 10, this
  // kernel's time, ms, two rounds): LM-64 0.839 0.844 vs 0.861 0.864, DeiT-Tiny-64 1.231 1.221 vs
  // 1.237 1.249, T=4096 0.478 0.484 vs 0.493 0.494 (contiguous ranges in (b, unit, g) order: 1%
  // slower than (b, g, unit); every vgrid-th unit in (b, g, unit) order: between the two).
  // 32-bit unit indices: the host checks total_units < 2^31, far past any depth cache in memory.
  const int n_units = vblock < total_units ? (int)((total_units - vblock + vgrid - 1) / vgrid) : 0;
  const int n_items = n_units * CPU, U_step = (int)vgrid;

  // Where an item is: unit U = (b, unit, g) and its chunk, advanced one item at a time (the
  // divisions once per unit). The loads run NST - 1 items ahead of the compute, so each has its
  // own cursor.
  struct Cursor {
    int U, b, g, unit, chunk;
    __device__ void decode(int units_per_bg, int hk) {
      const int r = U / hk;
      g = U - r * hk;
      b = r / units_per_bg;
      unit = r - b * units_per_bg;
    }
    __device__ void advance(int cpu, int step, int units_per_bg, int hk) {
      if (++chunk < cpu) return;
      chunk = 0;
      U += step;
      decode(units_per_bg, hk);
    }
  };
  Cursor first;
  first.U = (int)vblock;
  first.chunk = 0;
  first.decode(units_per_bg, (int)Hk);
  // the unit's depth rows (flattened i < nkeys: token i / L of the unit, slot i % L)
  auto unit_keys = [&](const Cursor &c) {
    const int64_t left = T_ - (int64_t)c.unit * TPU;
    return (int)(left < TPU ? left : TPU) * (int)L;
  };

  constexpr int PIECES = D / 8;                    // 16-byte pieces per row
  constexpr int ROWS_PER_PASS = Cfg::NTHREADS / PIECES;
  const int prow = tid / PIECES, pcol = (tid % PIECES) * 8;
  auto load_item = [&](const Cursor &c, int s) {
    const int nkeys = unit_keys(c), i0 = c.chunk * ROWS;
    const int64_t u_lo = (int64_t)c.unit * TPU, R0 = (int64_t)c.unit * NC;
    const T *kd = static_cast<const T *>(p.kd) + c.b * p.kd_stride[0] + c.g * p.kd_stride[3] + pcol;
    const T *vd = static_cast<const T *>(p.vd) + c.b * p.vd_stride[0] + c.g * p.vd_stride[3] + pcol;
    RowWalk<ROWS_PER_PASS, const T> rows(kd, vd, p.kd_stride, p.vd_stride, u_lo, i0 + prow, div_L, (int)L);
#pragma unroll
    for (int k = 0; k < ROWS / ROWS_PER_PASS; ++k) {
      const int r = prow + k * ROWS_PER_PASS, i = i0 + r;
      T *dk = at(sKd(s), r, pcol, ROWS), *dv = at(sVd(s), r, pcol, ROWS);
      if (i < nkeys) {
        cp_async_16(dk, rows.a);
        cp_async_16(dv, rows.b);
      } else {  // zero rows: their scores are masked, but 0 * stale NaN would not be 0
        *reinterpret_cast<uint4 *>(dk) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4 *>(dv) = make_uint4(0, 0, 0, 0);
      }
      if (k + 1 < ROWS / ROWS_PER_PASS) rows.next(p.kd_stride, p.vd_stride, (int)L);
    }
    // the unit's NC query rows: token u_lo + r / G, head g*G + r % G
    // (a trip count known at compile time: a run-time loop bound made ptxas unroll 4x plus a
    // remainder, 500 instructions of code for one row per thread)
#pragma unroll
    for (int k = 0; k < (NC + ROWS_PER_PASS - 1) / ROWS_PER_PASS; ++k) {
      const int r = prow + k * ROWS_PER_PASS;
      if (NC % ROWS_PER_PASS != 0 && r >= NC) break;
      T *dq_ = at(sQ(s), r, pcol, NC), *dd = at(sdO(s), r, pcol, NC);
      if (R0 + r < TG) {
        const int rt = (int)div_G.div((uint32_t)r);
        const int64_t t = u_lo + rt, h = c.g * G + (r - rt * (int)G);
        cp_async_16(dq_, static_cast<const T *>(p.q) + c.b * p.q_stride[0] + t * p.q_stride[1] + h * p.q_stride[2] + pcol);
        cp_async_16(dd, static_cast<const T *>(p.dout) + c.b * p.dout_stride[0] + t * p.dout_stride[1] +
                            h * p.dout_stride[2] + pcol);
      } else {
        *reinterpret_cast<uint4 *>(dq_) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4 *>(dd) = make_uint4(0, 0, 0, 0);
      }
    }
    const int64_t off = (c.b * Hk + c.g) * stat_rows(TG);
    load_row_stats(sLse(s), sLse(s) + NC, ws_lse2 + off, ws_delta + off, R0, TG, NC, tid, Cfg::NTHREADS);
  };

  // the unit-local token of this lane's columns nt*8 + 2*qc + e (fixed: units start at token bounds)
  int col_tok[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) col_tok[nt][e] = (nt * 8 + 2 * qc + e) / (int)G;

  float acc_t[MT][NT][4];  // dq^T: head dims warp*(D/4) + mt*16 + (qr, qr + 8), columns nt*8 + 2*qc (+1)
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc_t[mt][nt][0] = acc_t[mt][nt][1] = acc_t[mt][nt][2] = acc_t[mt][nt][3] = 0.f;

  // The sequence part of dq for the unit's rows, read one unit ahead (PRE): read at the unit's
  // end, the loads stalled every warp for a DRAM latency per unit (ncu at LM-64: 35% of the stall
  // samples on the four adds that used them). Lane layout as acc_t; 0 past the rows. Not at d = 64
  // with NC = 16, 32: their 16-32 more registers would spill there.
  constexpr bool PRE = !SPLIT && (NC == 8 || D == 128);
  float seq_pre[MT][NT][4];
  auto prefetch_seq = [&](const Cursor &c) {
    const float *seq_bg = dq_seq + (c.b * Hk + c.g) * TG * D;
    const int dw0 = warp * (D / Cfg::NWARPS);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e1 = 0; e1 < 2; ++e1) {
        const int64_t R = (int64_t)c.unit * NC + nt * 8 + 2 * qc + e1;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int h2 = 0; h2 < 2; ++h2)
            seq_pre[mt][nt][2 * h2 + e1] = R < TG ? __ldg(seq_bg + R * D + dw0 + mt * 16 + qr + 8 * h2) : 0.f;
      }
  };
  if (PRE && n_items > 0) prefetch_seq(first);

  Cursor ld = first, cur = first;
#pragma unroll
  for (int s = 0; s < NST - 1; ++s) {
    if (s < n_items) {
      load_item(ld, s);
      ld.advance(CPU, U_step, units_per_bg, (int)Hk);
    }
    cp_async_commit();
  }
  const int r0 = warp * 16;
  int s = 0, s_load = NST - 1;  // ring slots of item w and of item w + NST - 1
  for (int w = 0; w < n_items; ++w, cur.advance(CPU, U_step, units_per_bg, (int)Hk)) {
    cp_async_wait<NST - 2>();
    sync();  // stage s has landed for all; every warp is done with item w - 1 (its stage, sDS)
    if (w + NST - 1 < n_items) {
      load_item(ld, s_load);
      ld.advance(CPU, U_step, units_per_bg, (int)Hk);
    }
    cp_async_commit();

    const int nkeys = unit_keys(cur), chunk = cur.chunk, i0 = chunk * ROWS;
    const int64_t u_lo = (int64_t)cur.unit * TPU, R0 = (int64_t)cur.unit * NC;
    T *kd_s = sKd(s);
    const T *q_s = sQ(s), *do_s = sdO(s);
    T *vd_s = sVd(s);
    const float *lse_s = sLse(s), *delta_s = sLse(s) + NC;

    // this lane's depth rows r0 + qr + 8*h2: unit-local token, -1 past the unit's rows
    int row_tok[2];
#pragma unroll
    for (int h2 = 0; h2 < 2; ++h2) {
      const int i = i0 + r0 + qr + 8 * h2;
      row_tok[h2] = i < nkeys ? (int)div_L.div((uint32_t)i) : -1;
    }

    // S^T = kd q^T and dP^T = vd dO^T: 16 rows x NC columns
    float st[NT][4], dpt[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS / 2; ++kk) {
      uint32_t ak[2][4], av[2][4];
#pragma unroll
      for (int s2 = 0; s2 < 2; ++s2) {
        const int r = r0 + (lane & 15), c = (2 * kk + s2) * 16 + (lane >> 4) * 8;
        ldmatrix_x4(ak[s2], at(kd_s, r, c, ROWS));
        ldmatrix_x4(av[s2], at(vd_s, r, c, ROWS));
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int r = nt * 8 + (lane & 7), c = kk * 32 + (lane >> 3) * 8;
        uint32_t qb[4], ob[4];
        ldmatrix_x4(qb, at(q_s, r, c, NC));
        ldmatrix_x4(ob, at(do_s, r, c, NC));
        Mma::run(st[nt], ak[0], qb[0], qb[1]);
        Mma::run(st[nt], ak[1], qb[2], qb[3]);
        Mma::run(dpt[nt], av[0], ob[0], ob[1]);
        Mma::run(dpt[nt], av[1], ob[2], ob[3]);
      }
    }
    // P^T (into st) and dS^T (into dpt); a row of another token of the unit, or past it, is 0
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const float2 l2 = *reinterpret_cast<const float2 *>(lse_s + nt * 8 + 2 * qc);
      const float2 dl = *reinterpret_cast<const float2 *>(delta_s + nt * 8 + 2 * qc);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float pe, ds;
        p_ds(st[nt][e], dpt[nt][e], (e & 1) ? l2.y : l2.x, (e & 1) ? dl.y : dl.x, scale_log2,
             row_tok[e >> 1] == col_tok[nt][e & 1], pe, ds);
        st[nt][e] = pe;
        dpt[nt][e] = ds;
      }
    }
    // dS into the shared [NC][ROWS] tile (the B operand of dq^T += kd^T dS^T): movmatrix turns this
    // lane's pair (row, columns 2qc, 2qc+1) into (column qr, rows 2qc, 2qc+1) of each 8 x 8 block
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int h2 = 0; h2 < 2; ++h2)
        *reinterpret_cast<uint32_t *>(sDS + (nt * 8 + qr) * LDSD + r0 + 8 * h2 + 2 * qc) =
            movmatrix_trans(Mma::pack(dpt[nt][2 * h2], dpt[nt][2 * h2 + 1]));

    // dvd = P^T dO and dkd = scale * dS^T q (16 rows x D, k = the NC query rows), staged: dvd over
    // this warp's vd rows (only this warp read them), dkd in the staging rows (SW: over this warp's
    // kd rows, once every warp is done with kd in the dq^T step)
    constexpr int KA = NC == 8 ? 1 : NC / 16;
    uint32_t pa[KA][4], da[KA][4];  // NC = 8: the m16n8k8 A pairs in [0][0..1]
    if constexpr (NC == 8) {
      pa[0][0] = Mma::pack(st[0][0], st[0][1]);
      pa[0][1] = Mma::pack(st[0][2], st[0][3]);
      da[0][0] = Mma::pack(dpt[0][0], dpt[0][1]);
      da[0][1] = Mma::pack(dpt[0][2], dpt[0][3]);
    } else {
      pack_acc_as_a<T, KA>(st, pa);
      pack_acc_as_a<T, KA>(dpt, da);
    }
    auto stage_pair = [&](T *base, int row, int col, float lo, float hi) {
      *reinterpret_cast<uint32_t *>(at(base, row, col, ROWS)) = Mma::pack(lo, hi);
    };
    // dst rows r0.. = mul * (A [16 x NC] times the tile b_s [NC x D]; B by ldmatrix.trans)
    auto stage_product = [&](const uint32_t (&a)[KA][4], const T *b_s, T *dst, float mul) {
      if constexpr (NC == 8) {
        const uint32_t a2[2] = {a[0][0], a[0][1]};
#pragma unroll
        for (int n4 = 0; n4 < D / 32; ++n4) {
          uint32_t bb[4];
          ldmatrix_x4_trans(bb, at(b_s, lane & 7, n4 * 32 + (lane >> 3) * 8, NC));
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            float c[4] = {0.f, 0.f, 0.f, 0.f};
            Mma::run_k8(c, a2, bb[j]);
            const int col = n4 * 32 + j * 8 + 2 * qc;
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2) stage_pair(dst, r0 + qr + 8 * h2, col, c[2 * h2] * mul, c[2 * h2 + 1] * mul);
          }
        }
      } else {
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          float c[2][4] = {};
#pragma unroll
          for (int kk = 0; kk < KA; ++kk) {
            uint32_t bb[4];
            ldmatrix_x4_trans(bb, at(b_s, kk * 16 + (lane & 15), dn * 16 + (lane >> 4) * 8, NC));
            Mma::run(c[0], a[kk], bb[0], bb[1]);
            Mma::run(c[1], a[kk], bb[2], bb[3]);
          }
#pragma unroll
          for (int hn = 0; hn < 2; ++hn)
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2)
              stage_pair(dst, r0 + qr + 8 * h2, dn * 16 + hn * 8 + 2 * qc, c[hn][2 * h2] * mul, c[hn][2 * h2 + 1] * mul);
        }
      }
    };
    // the warp's 16 staged rows out as whole rows of 16-byte pieces (rows past the unit skipped)
    T *dkd_s = SW ? kd_s : sDkd;
    auto copy_out = [&]() {
      const int c8 = (lane % PIECES) * 8;
      T *dvd = static_cast<T *>(p.dvd) + cur.b * p.dvd_stride[0] + cur.g * p.dvd_stride[3] + c8;
      T *dkd = static_cast<T *>(p.dkd) + cur.b * p.dkd_stride[0] + cur.g * p.dkd_stride[3] + c8;
      constexpr int STEP = 32 / PIECES;  // rows apart of a lane's pieces
      RowWalk<STEP, T> rows(dvd, dkd, p.dvd_stride, p.dkd_stride, u_lo, i0 + r0 + lane / PIECES, div_L, (int)L);
#pragma unroll
      for (int it = 0; it < 16 / STEP; ++it) {
        const int r = it * STEP + lane / PIECES, i = i0 + r0 + r;
        if (i < nkeys) {
          *reinterpret_cast<uint4 *>(rows.a) = *reinterpret_cast<const uint4 *>(at(vd_s, r0 + r, c8, ROWS));
          *reinterpret_cast<uint4 *>(rows.b) = *reinterpret_cast<const uint4 *>(at(dkd_s, r0 + r, c8, ROWS));
        }
        if (it + 1 < 16 / STEP) rows.next(p.dvd_stride, p.dkd_stride, (int)L);
      }
    };
    __syncwarp();
    stage_product(pa, do_s, vd_s, 1.f);
    if constexpr (!SW) {
      stage_product(da, q_s, dkd_s, scale);
      __syncwarp();
      copy_out();
    }
    sync();  // the dS tile is complete

    // dq^T[dims of this warp] += kd^T dS^T over the item's 64 rows: A = kd^T by ldmatrix.trans,
    // B = dS (k = depth rows) by ldmatrix from the [NC][ROWS] tile
    const int dw0 = warp * (D / Cfg::NWARPS);
#pragma unroll
    for (int kk = 0; kk < ROWS / 32; ++kk) {
      uint32_t bd[NT][4];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) ldmatrix_x4(bd[nt], sDS + (nt * 8 + (lane & 7)) * LDSD + kk * 32 + (lane >> 3) * 8);
#pragma unroll
      for (int s2 = 0; s2 < 2; ++s2) {
        const int ks = 2 * kk + s2;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          uint32_t a[4];
          ldmatrix_x4_trans(a, at(kd_s, ks * 16 + (lane & 7) + ((lane >> 4) & 1) * 8,
                                  dw0 + mt * 16 + ((lane >> 3) & 1) * 8, ROWS));
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) Mma::run(acc_t[mt][nt], a, bd[nt][2 * s2], bd[nt][2 * s2 + 1]);
        }
      }
    }

    if constexpr (SW) {
      sync();  // every warp is done reading kd rows: dkd goes over this warp's own
      stage_product(da, q_s, dkd_s, scale);
      __syncwarp();
      copy_out();
    }

    if (chunk == CPU - 1 && SPLIT) {  // the unit's last item: its depth part of dq, unscaled
      float *part_bg = dq_part + (cur.b * Hk + cur.g) * TG * D;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e1 = 0; e1 < 2; ++e1) {
          const int64_t R = R0 + nt * 8 + 2 * qc + e1;
          if (R >= TG) continue;
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2) part_bg[R * D + dw0 + mt * 16 + qr + 8 * h2] = acc_t[mt][nt][2 * h2 + e1];
        }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) acc_t[mt][nt][0] = acc_t[mt][nt][1] = acc_t[mt][nt][2] = acc_t[mt][nt][3] = 0.f;
    }
    if (chunk == CPU - 1 && !SPLIT) {  // the unit's last item: dq = scale * (sequence part + depth part)
      T *dq = static_cast<T *>(p.dq) + cur.b * p.dq_stride[0];
      const float *seq_bg = dq_seq + (cur.b * Hk + cur.g) * TG * D;  // (!PRE)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e1 = 0; e1 < 2; ++e1) {
          const int col = nt * 8 + 2 * qc + e1;
          const int64_t R = R0 + col;
          if (R >= TG) continue;
          T *dqr = dq + (u_lo + col / (int)G) * p.dq_stride[1] + (cur.g * G + col % (int)G) * p.dq_stride[2];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2) {
              const int dim = dw0 + mt * 16 + qr + 8 * h2;
              const float sq = PRE ? seq_pre[mt][nt][2 * h2 + e1] : seq_bg[R * D + dim];
              dqr[dim] = Elem<T>::from_float((acc_t[mt][nt][2 * h2 + e1] + sq) * scale);
            }
        }
      if (PRE && w + 1 < n_items) {  // the next unit's sequence part, under its items
        Cursor next = cur;
        next.advance(CPU, U_step, units_per_bg, (int)Hk);
        prefetch_seq(next);
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) acc_t[mt][nt][0] = acc_t[mt][nt][1] = acc_t[mt][nt][2] = acc_t[mt][nt][3] = 0.f;
    }
    s = s + 1 == NST ? 0 : s + 1;
    s_load = s_load + 1 == NST ? 0 : s_load + 1;
  }
  cp_async_wait<0>();  // no cp.async outlives the CTA (the ring's trailing empty groups)
}

bool depth_sw() {  // the swizzled variant (d = 64) unless MODA_CUDA_BWD_DEPTH_SW=0
  static int sw = -1;
  if (sw < 0) {
    const char *e = getenv("MODA_CUDA_BWD_DEPTH_SW");
    sw = !(e && e[0] == '0');
  }
  return sw;
}

// max_ctas > 0: at most that many CTAs (the concurrent backward: SUB = 4, one CTA per SM)
template <typename T, int D, int NC, bool SW, int SUB, bool SPLIT>
int launch(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta, const float *dq_seq,
           float *dq_part, int max_ctas) {
  using Cfg = DepthBwdConfig<D, NC, SW>;
  constexpr int SMEM = Cfg::SMEM * SUB, NTHREADS = Cfg::NTHREADS * SUB;
  auto kern = bwd_depth_token_kernel<T, D, NC, SW, SUB, SPLIT>;
  static int ctas_per_sm = 0;  // per instantiation, on the first launch
  if (!ctas_per_sm) {
    if (const int st = allow_dynamic_smem<bwd_depth_token_kernel<T, D, NC, SW, SUB, SPLIT>>(SMEM, "bwd_depth_token"))
      return st;
    int n = 0;
    MODA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, NTHREADS, SMEM),
                    "cudaOccupancyMaxActiveBlocksPerMultiprocessor(bwd_depth_token)");
    ctas_per_sm = n > 0 ? n : 1;
  }
  int dev = 0, sms = 0;
  MODA_CUDA_CHECK(cudaGetDevice(&dev), "cudaGetDevice");
  MODA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  const int64_t tpu = NC / p->G;
  const int64_t units_per_bg = (p->T + tpu - 1) / tpu, total = p->B * p->Hk * units_per_bg;
  if (total <= 0) return MODA_OK;
  if (total >= ((int64_t)1 << 31))
    return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn bwd: %lld depth units (>= 2^31)", (long long)total);
  const int64_t slots = max_ctas > 0 ? max_ctas : (int64_t)sms * ctas_per_sm, need = (total + SUB - 1) / SUB;
  const unsigned grid = (unsigned)(need < slots ? need : slots);
  kern<<<grid, NTHREADS, SMEM, stream>>>(*p, lse2, delta, dq_seq, dq_part, (int)units_per_bg, (int)total);
  MODA_CUDA_CHECK_LAUNCH("bwd_depth_token_kernel");
  return MODA_OK;
}

template <typename T, int D>
int launch_nc(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta, const float *dq_seq) {
  constexpr bool SW_OK = D == 64;  // d = 128: no smem gain that changes the CTAs per SM, and it spills
  const bool sw = SW_OK && depth_sw();
  if (p->G <= 8) {
    if (sw) return launch<T, D, 8, SW_OK, 1, false>(p, stream, lse2, delta, dq_seq, nullptr, 0);
    return launch<T, D, 8, false, 1, false>(p, stream, lse2, delta, dq_seq, nullptr, 0);
  }
  if (p->G == 16) {
    if (sw) return launch<T, D, 16, SW_OK, 1, false>(p, stream, lse2, delta, dq_seq, nullptr, 0);
    return launch<T, D, 16, false, 1, false>(p, stream, lse2, delta, dq_seq, nullptr, 0);
  }
  if (sw) return launch<T, D, 32, SW_OK, 1, false>(p, stream, lse2, delta, dq_seq, nullptr, 0);
  return launch<T, D, 32, false, 1, false>(p, stream, lse2, delta, dq_seq, nullptr, 0);
}

// dq = scale * (sequence part + depth part), both float32 [B, Hk, T*G, d]: a thread per 8 dims of
// a packed row, blocks of whole rows of one (b, g) (block k: (b, g) = k / row_blocks), so the index
// math is a few 32-bit divisions (a 64-bit flat index took four 64-bit divisions per thread), and
// dq is written in element pairs (its rows are 4-byte aligned with even strides: bwd_mma_supported).
template <typename T>
__global__ void __launch_bounds__(256) bwd_dq_finish_kernel(const moda_attn_params p, const float *dq_seq,
                                                            const float *dq_part, unsigned row_blocks) {
  const int tpr = (int)p.d / 8, rows_per_block = 256 / tpr;  // d = 64, 128: 8 or 16 threads per row
  const unsigned bg = blockIdx.x / row_blocks, rb = blockIdx.x - bg * row_blocks;
  const uint32_t TG = (uint32_t)(p.T * p.G), G = (uint32_t)p.G, Hk = (uint32_t)p.Hk;  // (the host: TG < 2^31)
  const uint32_t R = rb * rows_per_block + threadIdx.x / tpr;
  if (R >= TG) return;
  const int dim = (threadIdx.x % tpr) * 8;
  const uint32_t b = bg / Hk, g = bg - b * Hk, t = R / G, h = g * G + (R - t * G);
  const int64_t e = ((int64_t)bg * TG + R) * p.d + dim;
  const float4 s0 = *reinterpret_cast<const float4 *>(dq_seq + e), s1 = *reinterpret_cast<const float4 *>(dq_seq + e + 4);
  const float4 d0 = *reinterpret_cast<const float4 *>(dq_part + e), d1 = *reinterpret_cast<const float4 *>(dq_part + e + 4);
  const float scale = (float)p.scale;
  uint32_t *dq = reinterpret_cast<uint32_t *>(static_cast<T *>(p.dq) + b * p.dq_stride[0] + t * p.dq_stride[1] +
                                              h * p.dq_stride[2] + dim);
  dq[0] = MmaOp<T>::pack((s0.x + d0.x) * scale, (s0.y + d0.y) * scale);
  dq[1] = MmaOp<T>::pack((s0.z + d0.z) * scale, (s0.w + d0.w) * scale);
  dq[2] = MmaOp<T>::pack((s1.x + d1.x) * scale, (s1.y + d1.y) * scale);
  dq[3] = MmaOp<T>::pack((s1.z + d1.z) * scale, (s1.w + d1.w) * scale);
}

// The concurrent backward's side stream, per host thread and device: highest priority, so that
// the depth kernel's CTAs are placed before the dK/dV kernel's when both wait for SMs. Per thread,
// so that two threads' fork/join events never interleave; created on first use and kept for the
// thread's life (no destructor: at process exit the CUDA runtime may be gone before it would run).
struct SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t fork = nullptr, join = nullptr;
};
constexpr int kMaxDevices = 64;
thread_local SideStream side_streams[kMaxDevices];

int side_stream(SideStream **out) {
  int dev = 0;
  MODA_CUDA_CHECK(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < 0 || dev >= kMaxDevices) return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn bwd: device index >= 64");
  SideStream &s = side_streams[dev];
  if (!s.stream) {
    int least = 0, greatest = 0;
    MODA_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest), "cudaDeviceGetStreamPriorityRange");
    MODA_CUDA_CHECK(cudaEventCreateWithFlags(&s.fork, cudaEventDisableTiming), "cudaEventCreate(depth fork)");
    MODA_CUDA_CHECK(cudaEventCreateWithFlags(&s.join, cudaEventDisableTiming), "cudaEventCreate(depth join)");
    MODA_CUDA_CHECK(cudaStreamCreateWithPriority(&s.stream, cudaStreamNonBlocking, greatest),
                    "cudaStreamCreateWithPriority(depth)");
  }
  *out = &s;
  return MODA_OK;
}

bool writable16(const void *ptr, const int64_t *st, int n) {
  if ((uintptr_t)ptr & 15) return false;
  for (int i = 0; i < n; ++i)
    if (st[i] % 8) return false;
  return true;
}

}  // namespace

// Where the kernel can run: token visibility, L > 0, bf16/fp16, d = 64/128, G dividing 8 or G =
// 16, 32, dkd/dvd writable in 16-byte pieces, MODA_CUDA_BWD_DEPTH_KERNEL not 0 (=0 keeps the older
// paths: the depth gradients fused into the dQ kernel, or the depth dK/dV kernel, and dQ's depth
// part in the dQ kernel). Whether it does run is bwd_depth_kernel_selected (attn_bwd_mma.cu).
bool bwd_depth_kernel_supported(const moda_attn_params *p) {
  static int on = -1;
  if (on < 0) {
    const char *e = getenv("MODA_CUDA_BWD_DEPTH_KERNEL");
    on = !(e && e[0] == '0');
  }
  if (!on || p->L <= 0 || p->chunk > 0 || (p->d != 64 && p->d != 128)) return false;
  if (p->dtype != MODA_BF16 && p->dtype != MODA_F16) return false;
  if (!(8 % p->G == 0 || p->G == 16 || p->G == 32)) return false;
  return writable16(p->dkd, p->dkd_stride, 4) && writable16(p->dvd, p->dvd_stride, 4);
}

// The sequence part's time over the depth part's, estimated: the depth part streams 8 L d bytes
// per token and KV head (~2.5 TB/s); the sequence part does 10 d FLOPs per visible (query, key)
// pair and query head (the dK/dV kernel's four GEMMs and dQ's by atomics: ~250 TFLOP/s). A
// separate dQ kernel (deterministic, or atomics off) about doubles the sequence part.
double bwd_seq_depth_ratio(const moda_attn_params *p) {
  const double depth_s = 8.0 * p->L * p->d * (double)p->B * p->T * p->Hk / 2.5e12;
  const double pairs = p->causal ? (double)p->T * (p->S - p->T) + 0.5 * (double)p->T * p->T : (double)p->T * p->S;
  const double seq_s = 10.0 * p->d * pairs * p->B * p->Hq / 250e12;
  return depth_s > 0 ? seq_s / depth_s : 0;
}

// The concurrent backward (MODA_CUDA_BWD_DEPTH_SMS): the depth kernel on a side stream, in
// SUB = 4 CTAs on `sms` SMs, beside the dK/dV (and dQ) kernels on the others; it writes dq's depth
// part to dq_part, and bwd_depth_concurrent_join adds both parts into dq. Where it can run: as the
// kernel, at d = 64 with G dividing 8 and the swizzled variant (the one SUB = 4 configuration).
// The rule (MODA_CUDA_BWD_DEPTH_SMS unset): it pays where the two parts take comparable times:
// r = bwd_seq_depth_ratio, doubled with the dQ kernel, between 0.6 and 1.2, T >= 1024 (at T=197
// the dK/dV kernel's tiles are too few to share the GPU), 44% of the SMs. With deterministic = 0
// and r in 0.3..0.6 the dQ kernel runs instead of the atomic dQ (bwd_atomic_dq_selected), for the
// balance. Measured (H100, session 10, fwd+bwd ms, two rounds each):
//   nd, atomic dQ, SMs off / 60 / 72 / 84:
//   LM-64 (r = 0.41)             1.708 1.702 / 1.645 1.630 / 1.576 1.563 / 1.658 1.672
//   LM-64 at T=4096, B=4 (0.81)  2.060 2.064 / 1.805 1.798 / 1.962 1.958 / 1.981 1.988
//   LM-32 (L = 62, 0.82)         1.115 1.118 / 1.079 1.091 / 1.107 1.101 / 1.092 1.112
//   LM-64 at T=1024, B=16 (0.20) 1.528 1.535 / 1.531 1.547 / 1.548 1.553 / 1.499 1.540
//   paper T=4096 (3.2)           2.161 2.155 / 2.123 2.149 / 2.148 2.167 / 2.177 2.183
//   DeiT-Tiny-64 (T=197)         2.010 2.020 / 2.111 2.099 / 2.187 2.179 / 2.136 2.148
//   DeiT-Tiny L=22 (T=197)       0.626 0.627 / 0.666 0.669 / 0.647 0.635 / 0.654 0.662
//   nd with the dQ kernel instead, SMs 73 / 59 / 48 (atomic dQ at 73 / 59 for comparison):
//   LM-64                        1.508 1.501 / 1.428 1.434 / 1.598 1.593  (1.534 1.547 at 73)
//   LM-64 at T=4096              1.864 1.873 / 1.877 1.850 / 1.812 1.806  (1.744 1.803 at 59)
//   LM-32                        1.048 1.026 / 1.029 1.036 / 1.029 1.034  (1.070 1.073 at 59)
//   deterministic at 59 SMs: LM-64 1.467 (the full benchmark's run).
//   the rule's flows at 59 / 54 / 64 / 68 SMs: LM-64 1.520 1.522 / 1.508 1.508 / 1.502 1.491 /
//   1.525 1.517; LM-64 at T=4096 1.803 1.816 / 1.767 1.749 / 1.866 1.884 / 1.914 1.906; LM-32
//   1.068 1.093 / 1.062 1.051 / 1.125 1.121 / 1.114 1.113: 54 of 132 (41%).
// Every measured win sits near 0.8 of the balance; the window's ends are not measured.
// Session 19: since the sequence kernels got faster (q, dO kept in L2; 4-float dQ reductions:
// dK/dV and dQ ~0.38 ms each at LM-64 against the depth kernel's ~0.92), the balance moved to
// more depth SMs. LM-64 f+b ms, --nondet, two rounds in one process: H100 54 (the 41% rule)
// 1.409 1.375 / 58 1.376 1.355 / 62 1.388 1.389 / 66 1.410 1.440; H200 54 1.310 1.311 / 58
// 1.254 1.247 / 62 1.235 1.238: 58 of 132 (44%), the H100's best.
int concurrent_forced() {  // MODA_CUDA_BWD_DEPTH_SMS: -1 unset (the rule), else that many SMs (0: off)
  static int forced = -2;
  if (forced == -2) {
    const char *e = getenv("MODA_CUDA_BWD_DEPTH_SMS");
    forced = e && e[0] >= '0' && e[0] <= '9' ? atoi(e) : -1;
  }
  return forced;
}

bool bwd_depth_concurrent_possible(const moda_attn_params *p) {
  return concurrent_forced() != 0 && bwd_depth_kernel_supported(p) && p->d == 64 && 8 % p->G == 0 && depth_sw();
}

int bwd_depth_concurrent_sms(const moda_attn_params *p, bool dq_kernel) {
  if (!bwd_depth_concurrent_possible(p)) return 0;
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 0;
  if (sms < 2) return 0;
  const int forced = concurrent_forced();
  if (forced > 0) return forced < sms ? forced : sms - 1;
  if (p->T < 1024) return 0;
  const double r = bwd_seq_depth_ratio(p) * (dq_kernel ? 2.0 : 1.0);
  if (r < 0.6 || r > 1.2) return 0;
  const int n = (int)(sms * 0.44 + 0.5);
  return n < 1 ? 1 : n < sms ? n : sms - 1;
}

int bwd_depth_concurrent_fork(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta,
                              float *dq_part, int sms) {
  SideStream *side = nullptr;
  if (int st = side_stream(&side)) return st;
  MODA_CUDA_CHECK(cudaEventRecord(side->fork, stream), "cudaEventRecord(depth fork)");
  MODA_CUDA_CHECK(cudaStreamWaitEvent(side->stream, side->fork, 0), "cudaStreamWaitEvent(depth fork)");
  const int st = bwd_depth_tma_selected(p, true) ? bwd_depth_tma_launch(p, side->stream, lse2, delta, nullptr, dq_part, sms)
                 : p->dtype == MODA_BF16
                     ? launch<__nv_bfloat16, 64, 8, true, 4, true>(p, side->stream, lse2, delta, nullptr, dq_part, sms)
                     : launch<__half, 64, 8, true, 4, true>(p, side->stream, lse2, delta, nullptr, dq_part, sms);
  MODA_CUDA_CHECK(cudaEventRecord(side->join, side->stream), "cudaEventRecord(depth join)");
  return st;
}

int bwd_depth_concurrent_join(const moda_attn_params *p, cudaStream_t stream, const float *dq_seq,
                              const float *dq_part) {
  SideStream *side = nullptr;
  if (int st = side_stream(&side)) return st;
  MODA_CUDA_CHECK(cudaStreamWaitEvent(stream, side->join, 0), "cudaStreamWaitEvent(depth join)");
  const int64_t TG = p->T * p->G, rows_per_block = 256 / (p->d / 8);
  const int64_t row_blocks = (TG + rows_per_block - 1) / rows_per_block, blocks = p->B * p->Hk * row_blocks;
  if (blocks <= 0) return MODA_OK;
  if (TG >= ((int64_t)1 << 31) || blocks >= ((int64_t)1 << 31))
    return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn bwd: %lld packed rows per KV head (>= 2^31)", (long long)TG);
  if (p->dtype == MODA_BF16)
    bwd_dq_finish_kernel<__nv_bfloat16><<<(unsigned)blocks, 256, 0, stream>>>(*p, dq_seq, dq_part, (unsigned)row_blocks);
  else
    bwd_dq_finish_kernel<__half><<<(unsigned)blocks, 256, 0, stream>>>(*p, dq_seq, dq_part, (unsigned)row_blocks);
  MODA_CUDA_CHECK_LAUNCH("bwd_dq_finish_kernel");
  return MODA_OK;
}

int bwd_depth_launch(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta,
                     const float *dq_seq) {
  if (bwd_depth_tma_selected(p, false)) return bwd_depth_tma_launch(p, stream, lse2, delta, dq_seq, nullptr, 0);
  if (p->dtype == MODA_BF16)
    return p->d == 128 ? launch_nc<__nv_bfloat16, 128>(p, stream, lse2, delta, dq_seq)
                       : launch_nc<__nv_bfloat16, 64>(p, stream, lse2, delta, dq_seq);
  return p->d == 128 ? launch_nc<__half, 128>(p, stream, lse2, delta, dq_seq)
                     : launch_nc<__half, 64>(p, stream, lse2, delta, dq_seq);
}

}  // namespace moda_cuda
