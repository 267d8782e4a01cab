// attn_bwd_depth_tma.cu: the token-visibility depth backward of attn_bwd_depth.cu (same math, same
// outputs) as a TMA stream for sm_90a, d = 64, G dividing 8; alone, and in the concurrent backward
// on GPUs with DRAM above 4 TB/s (sessions 20-21), see bwd_depth_tma_selected.
//
// Why another kernel: bwd_depth_token_kernel issues ~740 instructions per warp and 64-row item at
// LM-64, most of them integer work (every thread rebuilds row addresses for its cp.async pieces and
// its 16-byte write-back pieces, every warp re-reads the unit's q / dO / stats per item and
// exchanges dS through shared memory), and runs near its issue limit on the 54 SMs the concurrent
// backward gives it (docs/CUDA_NOTES.md, sessions 11 and 15). Here the copy engine does the
// addressing:
// - an item is one stage: the depth rows of `tpu` whole tokens (L <= 64: box {64, 1, L, tpu}) or
//   `bs` slots of one token (L > 64: the token's slots in `parts` boxes of bs), of one KV head,
//   loaded by TMA (kd, vd; with the unit's q, dO rows on its first part) into a 128-byte-swizzled
//   ring of `nst` stages; rows past the box and q / dO rows past tpu * G are zero from the start;
// - one producer thread walks the CTA's units (every grid-th (b, unit, g), as the older kernel)
//   and their parts; the consumer warps take units in turn, a whole unit each, so a unit's dq lives
//   in one warp's registers across its parts and no warp waits for another;
// - per 16-row tile a warp computes S^T = kd q^T, dP^T = vd dO^T (m16n8k16, the unit's query
//   rows as the 8 columns), P^T, dS^T, dq^T += kd^T dS^T (B = dS^T by movmatrix), dvd = P^T dO and
//   dkd = scale dS^T q (m16n8k8, B = dO, q held in registers for the unit) and stores dvd over the
//   tile's vd rows and dkd over its kd rows (stmatrix; this warp alone reads those rows);
// - the stage goes back to global memory by two TMA stores, and is released to the producer once
//   the stores have read it; dq (float32 part, or the finished dq) by plain stores per unit.
// The ring is split into one sub-ring of spw = nst / NW stages per consumer warp: a stage only
// ever holds the items of one warp, in that warp's order, so when a warp waits for its use u of a
// stage it has itself consumed use u - 1, and the parity wait is unambiguous. (Session 16's first
// version shared the whole ring among the warps: a warp could reach its use u of a stage before
// another warp's use u - 1 had even been issued, and take use u - 2's completed phase, of the
// same parity, for its own - wrong gradients at L = 300 on 8 SMs, a hang at DeiT-Tiny-64 with 8
// warps. Stage tags fixed that, but a consumer spinning on a tag is a race to compute-sanitizer's
// racecheck, and slow under it.) The producer issues units in order, so it may wait for one
// warp's stage while another warp's is free: it did so with the shared ring too (its stages came
// round in order).
#include <stdint.h>
#include <stdlib.h>

#include "moda_cuda_internal.cuh"
#include "attn_bwd_common.cuh"
#include "mma_helpers.cuh"
#include "tma_helpers.cuh"

namespace moda_cuda {
namespace {

// The item geometry (host and device): units of tpu tokens, each in `parts` stages of bs slots.
struct DepthTmaShape {
  int tpu, bs, parts, rows_pad, nst, stage_bytes;
  int l2;  // MODA_CUDA_BWD_DEPTH_TMA_L2: bit 0 kd / vd loaded, bit 1 dkd / dvd stored with L2 evict_first
};
constexpr int kTmaQBytes = 8 * 128;     // q or dO tile: 8 rows of 64 elements (the MMA's N = 8)
// Depth rows per stage (target): 64 (18 KB stages at most), or MODA_CUDA_BWD_DEPTH_TMA_ROWS (a
// multiple of 16 up to 256, for A/B: fewer, larger stages - LM-64's tokens in one stage at 128;
// where that leaves fewer stages than consumer warps, the older kernel runs).
int tma_max_rows() {
  static int rows = 0;
  if (!rows) {
    const char *e = getenv("MODA_CUDA_BWD_DEPTH_TMA_ROWS");
    const int r = e ? atoi(e) : 0;
    rows = r >= 16 && r <= 256 && r % 16 == 0 ? r : 64;
  }
  return rows;
}
// MODA_CUDA_BWD_DEPTH_TMA_L2 (A/B; unset: no hints): the depth rows are read once and their
// gradients written once, while in the concurrent backward the dQ and dK/dV kernels beside this
// one re-read q, k, v, dO from L2 - do these streams push those out? Measured no faster (session 17).
int tma_l2_mode() {
  static int l2 = -1;
  if (l2 < 0) {
    const char *e = getenv("MODA_CUDA_BWD_DEPTH_TMA_L2");
    l2 = e ? (atoi(e) & 3) : 0;
  }
  return l2;
}
constexpr int kTmaSmemCap = 227 * 1024;  // H100 / H200 opt-in maximum per block

DepthTmaShape depth_tma_shape(int64_t L, int64_t G) {
  const int kTmaMaxRows = tma_max_rows();
  DepthTmaShape s;
  if (L <= kTmaMaxRows) {
    s.parts = 1;
    s.bs = (int)L;
    const int by_rows = (int)(kTmaMaxRows / L), by_cols = (int)(8 / G);
    s.tpu = by_rows < by_cols ? by_rows : by_cols;
    if (s.tpu < 1) s.tpu = 1;
  } else {
    s.tpu = 1;
    s.parts = (int)((L + kTmaMaxRows - 1) / kTmaMaxRows);
    s.bs = (int)((L + s.parts - 1) / s.parts);
  }
  s.rows_pad = (s.tpu * s.bs + 15) / 16 * 16;
  s.stage_bytes = 2 * s.rows_pad * 128 + 2 * kTmaQBytes;
  s.nst = (kTmaSmemCap - 2048) / s.stage_bytes;  // + 1024 bytes of alignment slack, the static barriers
  if (s.nst > 16) s.nst = 16;
  s.l2 = tma_l2_mode();
  return s;
}

// NW consumer warps and one producer warp. SPLIT: dq's depth part, unscaled, to dq_part (the
// concurrent backward); else dq = scale * (dq_seq + depth part) is written here.
template <typename T, int NW, bool SPLIT>
__global__ void __launch_bounds__(32 * (NW + 1), 1)
bwd_depth_tma_kernel(const __grid_constant__ CUtensorMap tm_kd, const __grid_constant__ CUtensorMap tm_vd,
                     const __grid_constant__ CUtensorMap tm_dkd, const __grid_constant__ CUtensorMap tm_dvd,
                     const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_do,
                     const moda_attn_params p, const float *ws_lse2, const float *ws_delta, const float *dq_seq,
                     float *dq_part, const DepthTmaShape shp, int units_per_bg, int total_units) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Mma = MmaOp<T>;
  constexpr int D = 64;
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t full_bar[16], empty_bar[16];
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);  // sw128: 1024-aligned
  const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32, qr = lane / 4, qc = lane % 4;
  const int tpu = shp.tpu, bs = shp.bs, parts = shp.parts, spw = shp.nst / NW;  // spw >= 1 (the launcher)
  const int KV_BYTES = shp.rows_pad * 128, STAGE = shp.stage_bytes;
  const int G = (int)p.G, L = (int)p.L, Hk = (int)p.Hk;
  const int64_t TG = p.T * p.G;
  auto sKd = [&](int s) { return smem + s * STAGE; };
  auto sVd = [&](int s) { return smem + s * STAGE + KV_BYTES; };
  auto sQ = [&](int s) { return smem + s * STAGE + 2 * KV_BYTES; };
  auto sDo = [&](int s) { return smem + s * STAGE + 2 * KV_BYTES + kTmaQBytes; };

  // Everything zero once: rows past the boxes (depth rows past tpu * bs, q / dO rows past tpu * G)
  // are never written by the copy engine and must not hold NaN bits (0 * NaN in the MMAs).
  {
    uint4 *z = reinterpret_cast<uint4 *>(smem);
    for (int i = (int)threadIdx.x; i < spw * NW * STAGE / 16; i += 32 * (NW + 1)) z[i] = make_uint4(0, 0, 0, 0);
  }
  if (threadIdx.x == 0) {
    for (int s = 0; s < spw * NW; ++s) {
      mbar_init(&full_bar[s], 1);
      mbar_init(&empty_bar[s], 1);
    }
    mbar_fence_init();
  }
  fence_proxy_async_smem();  // the zeros, before any TMA write to the same stages
  __syncthreads();

  const int grid = (int)gridDim.x, cta = (int)blockIdx.x;
  const int n_units = cta < total_units ? (total_units - cta + grid - 1) / grid : 0;
  struct Unit {
    int b, g, unit;
  };
  auto decode = [&](int j) {  // the CTA's j-th unit: U = cta + j * grid, flattened (b, unit, g)
    const int U = cta + j * grid, r = U / Hk;
    Unit u;
    u.g = U - r * Hk;
    u.b = r / units_per_bg;
    u.unit = r - u.b * units_per_bg;
    return u;
  };

  if (warp == NW) {  // the producer: one thread
    if (lane == 0) {
      tma_prefetch_map(&tm_kd);
      tma_prefetch_map(&tm_vd);
      tma_prefetch_map(&tm_q);
      tma_prefetch_map(&tm_do);
      const uint32_t kv_bytes = 2u * tpu * bs * 128, q_bytes = 2u * tpu * G * 128;
      const bool hint = (shp.l2 & 1) != 0;
      const uint64_t pol = hint ? l2_policy_evict_first() : 0;
      for (int j = 0; j < n_units; ++j) {
        const Unit u = decode(j);
        // unit j is warp j % NW's (j / NW)-th: its items i go to stage (j % NW) * spw + i % spw
        const int i0 = (j / NW) * parts, s_base = (j % NW) * spw;
        for (int part = 0; part < parts; ++part) {
          const int it = i0 + part, s = s_base + it % spw, use = it / spw;
          if (use > 0) mbar_wait(&empty_bar[s], (uint32_t)((use - 1) & 1));
          mbar_arrive_expect_tx(&full_bar[s], kv_bytes + (part == 0 ? q_bytes : 0u));
          if (hint) {
            tma_load_5d_hint(sKd(s), &tm_kd, &full_bar[s], 0, u.g, part * bs, u.unit * tpu, u.b, pol);
            tma_load_5d_hint(sVd(s), &tm_vd, &full_bar[s], 0, u.g, part * bs, u.unit * tpu, u.b, pol);
          } else {
            tma_load_5d(sKd(s), &tm_kd, &full_bar[s], 0, u.g, part * bs, u.unit * tpu, u.b);
            tma_load_5d(sVd(s), &tm_vd, &full_bar[s], 0, u.g, part * bs, u.unit * tpu, u.b);
          }
          if (part == 0) {
            tma_load_5d(sQ(s), &tm_q, &full_bar[s], 0, 0, u.unit * tpu, u.g, u.b);
            tma_load_5d(sDo(s), &tm_do, &full_bar[s], 0, 0, u.unit * tpu, u.g, u.b);
          }
        }
      }
    }
    return;
  }

  // ---- consumer warp `warp`: units j = warp, warp + NW, ... ----
  const float scale_log2 = (float)p.scale * 1.4426950408889634f,  // log2(e)
              scale = (float)p.scale;
  const FastDiv div_bs((uint32_t)bs);
  const int gshift = __ffs(G) - 1;  // G is a power of two (it divides 8)
  // this lane's MMA columns 2qc, 2qc + 1: unit-local query row c -> token c / G
  const int col_tok0 = (2 * qc) >> gshift, col_tok1 = (2 * qc + 1) >> gshift;
  // stmatrix: lane l addresses row l % 8 (+ 8 for odd matrices) of matrix l / 8 of a 16-row tile;
  // matrix pair m of the tile holds columns 16m.. (matrices 0, 1) and 16m + 8.. (2, 3)
  const int st_row = (lane & 7) + ((lane >> 3) & 1) * 8;
  const uint32_t st_xor = (uint32_t)((((lane >> 4) & 1) ^ (lane & 7)) << 4);

  auto stats_of = [&](const Unit &u, float (&l2)[2], float (&dl)[2]) {
    const int64_t off = ((int64_t)u.b * Hk + u.g) * stat_rows(TG), R0 = (int64_t)u.unit * tpu * G;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t R = R0 + 2 * qc + e;
      const bool ok = 2 * qc + e < tpu * G && R < TG;
      l2[e] = ok ? __ldg(ws_lse2 + off + R) : 0.f;
      dl[e] = ok ? __ldg(ws_delta + off + R) : 0.f;
    }
  };
  float nl2[2] = {0.f, 0.f}, ndl[2] = {0.f, 0.f};  // the next unit's stats, read one unit ahead
  if (warp < n_units) {
    const Unit u0 = decode(warp);
    stats_of(u0, nl2, ndl);
  }

  int i_next = 0;  // this warp's item index of its next unit's first part
  for (int j = warp; j < n_units; j += NW, i_next += parts) {
    const Unit u = decode(j);
    const float l2[2] = {nl2[0], nl2[1]}, dl[2] = {ndl[0], ndl[1]};
    if (j + NW < n_units) stats_of(decode(j + NW), nl2, ndl);
    const int64_t R0 = (int64_t)u.unit * tpu * G, t_lo = (int64_t)u.unit * tpu;
    const int ntok = (int)(p.T - t_lo < tpu ? p.T - t_lo : tpu);  // tokens of the unit inside T
    const bool col_ok0 = 2 * qc < ntok * G, col_ok1 = 2 * qc + 1 < ntok * G;

    // the sequence part of dq for this lane's elements, read now, used at the unit's end
    float seq[4][4];
    if constexpr (!SPLIT) {
      const float *seq_bg = dq_seq + ((int64_t)u.b * Hk + u.g) * TG * D;
#pragma unroll
      for (int md = 0; md < 4; ++md)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = 2 * qc + (e & 1);
          seq[md][e] = (e & 1 ? col_ok1 : col_ok0) ? __ldg(seq_bg + (R0 + c) * D + md * 16 + qr + 8 * (e >> 1)) : 0.f;
        }
    }

    float acc_t[4][4];  // dq^T: head dims md*16 + qr (+8), columns 2qc (+1)
#pragma unroll
    for (int md = 0; md < 4; ++md) acc_t[md][0] = acc_t[md][1] = acc_t[md][2] = acc_t[md][3] = 0.f;
    uint32_t qb[4][2], ob[4][2];  // B of S^T / dP^T per k-step (q, dO rows as columns)
    uint32_t qt[8], ot[8];        // B of dkd / dvd per n-tile of 8 head dims (k = the 8 query rows)

    for (int part = 0; part < parts; ++part) {
      const int it = i_next + part, s = warp * spw + it % spw;
      mbar_wait(&full_bar[s], (uint32_t)((it / spw) & 1));
      unsigned char *kd_s = sKd(s), *vd_s = sVd(s);
      if (part == 0) {
        const unsigned char *q_s = sQ(s), *do_s = sDo(s);
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          uint32_t r4[4];
          const uint32_t off = sw128_offset(lane & 7, kk * 32 + (lane >> 3) * 8, 8);
          ldmatrix_x4(r4, q_s + off);
          qb[2 * kk][0] = r4[0], qb[2 * kk][1] = r4[1], qb[2 * kk + 1][0] = r4[2], qb[2 * kk + 1][1] = r4[3];
          ldmatrix_x4(r4, do_s + off);
          ob[2 * kk][0] = r4[0], ob[2 * kk][1] = r4[1], ob[2 * kk + 1][0] = r4[2], ob[2 * kk + 1][1] = r4[3];
        }
#pragma unroll
        for (int n4 = 0; n4 < 2; ++n4) {
          uint32_t r4[4];
          const uint32_t off = sw128_offset(lane & 7, n4 * 32 + (lane >> 3) * 8, 8);
          ldmatrix_x4_trans(r4, q_s + off);
#pragma unroll
          for (int jj = 0; jj < 4; ++jj) qt[4 * n4 + jj] = r4[jj];
          ldmatrix_x4_trans(r4, do_s + off);
#pragma unroll
          for (int jj = 0; jj < 4; ++jj) ot[4 * n4 + jj] = r4[jj];
        }
      }

      const int rows_valid = tpu * bs;
      for (int r0 = 0; r0 < rows_valid; r0 += 16) {
        // S^T and dP^T: 16 depth rows x 8 query rows
        float st[4] = {0.f, 0.f, 0.f, 0.f}, dpt[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
          uint32_t ak[4], av[4];
          const uint32_t off = sw128_offset(r0 + (lane & 15), ks * 16 + (lane >> 4) * 8, 0);
          ldmatrix_x4(ak, kd_s + off);
          ldmatrix_x4(av, vd_s + off);
          Mma::run(st, ak, qb[ks][0], qb[ks][1]);
          Mma::run(dpt, av, ob[ks][0], ob[ks][1]);
        }
        // P^T and dS^T; visible: a row of the box inside L and T, a column of the same token
        float pe[4], ds[4];
#pragma unroll
        for (int h2 = 0; h2 < 2; ++h2) {
          const int i = r0 + qr + 8 * h2;
          const int tok = (int)div_bs.div((uint32_t)i), slot = part * bs + (i - tok * bs);
          const bool row_ok = i < rows_valid && slot < L && tok < ntok;
#pragma unroll
          for (int e1 = 0; e1 < 2; ++e1) {
            const bool vis = row_ok && (e1 ? col_ok1 && tok == col_tok1 : col_ok0 && tok == col_tok0);
            p_ds(st[2 * h2 + e1], dpt[2 * h2 + e1], l2[e1], dl[e1], scale_log2, vis, pe[2 * h2 + e1], ds[2 * h2 + e1]);
          }
        }
        // dq^T += kd^T dS^T over the tile's 16 rows
        {
          const uint32_t b0 = movmatrix_trans(Mma::pack(ds[0], ds[1]));
          const uint32_t b1 = movmatrix_trans(Mma::pack(ds[2], ds[3]));
#pragma unroll
          for (int md = 0; md < 4; ++md) {
            uint32_t a[4];
            ldmatrix_x4_trans(a, kd_s + sw128_offset(r0 + (lane & 7) + ((lane >> 4) & 1) * 8,
                                                     md * 16 + ((lane >> 3) & 1) * 8, 0));
            Mma::run(acc_t[md], a, b0, b1);
          }
        }
        // dvd = P^T dO and dkd = scale dS^T q (16 rows x 64), over the tile's vd and kd rows
        const uint32_t pa[2] = {Mma::pack(pe[0], pe[1]), Mma::pack(pe[2], pe[3])};
        const uint32_t da[2] = {Mma::pack(ds[0] * scale, ds[1] * scale), Mma::pack(ds[2] * scale, ds[3] * scale)};
        uint32_t pv[8][2], pk[8][2];
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          float cv[4] = {0.f, 0.f, 0.f, 0.f}, ck[4] = {0.f, 0.f, 0.f, 0.f};
          Mma::run_k8(cv, pa, ot[n]);
          Mma::run_k8(ck, da, qt[n]);
          pv[n][0] = Mma::pack(cv[0], cv[1]), pv[n][1] = Mma::pack(cv[2], cv[3]);
          pk[n][0] = Mma::pack(ck[0], ck[1]), pk[n][1] = Mma::pack(ck[2], ck[3]);
        }
        if (r0 + 16 > rows_valid) {  // the last tile's rows past the box stay zero (see above)
#pragma unroll
          for (int h2 = 0; h2 < 2; ++h2)
            if (r0 + qr + 8 * h2 >= rows_valid)
#pragma unroll
              for (int n = 0; n < 8; ++n) pv[n][h2] = pk[n][h2] = 0u;
        }
        __syncwarp();  // every lane's ldmatrix of these rows is done before they are overwritten
        const uint32_t row_base = (uint32_t)((r0 + st_row) * 128);
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const uint32_t off = row_base + (((uint32_t)m << 5) ^ st_xor);
          stmatrix_x4(smem_u32(vd_s) + off, pv[2 * m][0], pv[2 * m][1], pv[2 * m + 1][0], pv[2 * m + 1][1]);
          stmatrix_x4(smem_u32(kd_s) + off, pk[2 * m][0], pk[2 * m][1], pk[2 * m + 1][0], pk[2 * m + 1][1]);
        }
      }
      // the stage back: dkd from the kd rows, dvd from the vd rows, then released once read
      fence_proxy_async_smem();
      __syncwarp();
      if (lane == 0) {
        if (shp.l2 & 2) {
          const uint64_t pol = l2_policy_evict_first();
          tma_store_5d_hint(&tm_dkd, kd_s, 0, u.g, part * bs, (int)t_lo, u.b, pol);
          tma_store_5d_hint(&tm_dvd, vd_s, 0, u.g, part * bs, (int)t_lo, u.b, pol);
        } else {
          tma_store_5d(&tm_dkd, kd_s, 0, u.g, part * bs, (int)t_lo, u.b);
          tma_store_5d(&tm_dvd, vd_s, 0, u.g, part * bs, (int)t_lo, u.b);
        }
        bulk_commit();
      }
      if (part + 1 < parts && lane == 0) {
        bulk_wait_read<0>();
        mbar_arrive(&empty_bar[s]);
      }
    }

    // dq for the unit's valid rows
    if constexpr (SPLIT) {
      float *part_bg = dq_part + (((int64_t)u.b * Hk + u.g) * TG + R0) * D;
#pragma unroll
      for (int e1 = 0; e1 < 2; ++e1) {
        if (!(e1 ? col_ok1 : col_ok0)) continue;
        float *row = part_bg + (2 * qc + e1) * D;
#pragma unroll
        for (int md = 0; md < 4; ++md)
#pragma unroll
          for (int h2 = 0; h2 < 2; ++h2) row[md * 16 + qr + 8 * h2] = acc_t[md][2 * h2 + e1];
      }
    } else {
      T *dq = static_cast<T *>(p.dq) + u.b * p.dq_stride[0];
#pragma unroll
      for (int e1 = 0; e1 < 2; ++e1) {
        if (!(e1 ? col_ok1 : col_ok0)) continue;
        const int c = 2 * qc + e1;
        T *dqr = dq + (t_lo + (c >> gshift)) * p.dq_stride[1] + ((int64_t)u.g * G + (c & (G - 1))) * p.dq_stride[2];
#pragma unroll
        for (int md = 0; md < 4; ++md)
#pragma unroll
          for (int h2 = 0; h2 < 2; ++h2)
            dqr[md * 16 + qr + 8 * h2] = Elem<T>::from_float((acc_t[md][2 * h2 + e1] + seq[md][2 * h2 + e1]) * scale);
      }
    }
    if (lane == 0) {  // the last part's stage: its stores have had the dq stores' time to read it
      bulk_wait_read<0>();
      mbar_arrive(&empty_bar[warp * spw + (i_next + parts - 1) % spw]);
    }
  }
  if (lane == 0) bulk_wait<0>();  // the stores are complete before the kernel ends
#elif defined(__CUDA_ARCH__)
  __trap();  // a build without sm_90a code: fail loudly rather than leave the depth gradients unwritten
#endif
}

// MODA_CUDA_BWD_DEPTH_TMA: unset, the rule of bwd_depth_tma_selected, 4 consumer warps; 1 on
// wherever it can run, alone or concurrent; 0 off (bwd_depth_token_kernel); 8 on with 8 consumer
// warps, as 1 (measured slower).
int tma_mode() {
  static int mode = -2;
  if (mode == -2) {
    const char *e = getenv("MODA_CUDA_BWD_DEPTH_TMA");
    mode = !e || !*e ? 4 : e[0] == '0' ? 0 : e[0] == '8' ? 8 : 1;
  }
  return mode;
}

// Whether the device's peak DRAM bandwidth (memory clock x 2 x bus width) exceeds 4 TB/s: H200
// (4.8) yes, H100 SXM (3.35) no. The concurrent backward's choice of depth kernel follows it (see
// bwd_depth_tma_selected); a device that does not report the attributes counts as slower.
bool dram_above_4tbs() {
  static int fast = -1;  // per process: the first device asked (as the other per-device rules)
  if (fast < 0) {
    int dev = 0, khz = 0, bits = 0;
    fast = cudaGetDevice(&dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, dev) == cudaSuccess &&
           (double)khz * 1e3 * 2.0 * bits / 8.0 > 4e12;
    cudaGetLastError();  // an unsupported attribute leaves no sticky error for the next launch
  }
  return fast == 1;
}

struct DepthTmaMaps {
  CUtensorMap kd, vd, dkd, dvd, q, dout;
};
// nullptr, or why the tensors cannot be TMA maps for this kernel
const char *depth_tma_maps(const moda_attn_params *p, const DepthTmaShape &s, DepthTmaMaps *m) {
  if (p->T >= (1ll << 31) - 256 || p->T * p->G >= (1ll << 31) - 64) return "T too large for 32-bit TMA coordinates";
  const char *why = encode_depth_map(&m->kd, p->kd, p->B, p->T, p->L, p->Hk, p->kd_stride, s.bs, s.tpu);
  if (!why) why = encode_depth_map(&m->vd, p->vd, p->B, p->T, p->L, p->Hk, p->vd_stride, s.bs, s.tpu);
  if (!why) why = encode_depth_map(&m->dkd, p->dkd, p->B, p->T, p->L, p->Hk, p->dkd_stride, s.bs, s.tpu);
  if (!why) why = encode_depth_map(&m->dvd, p->dvd, p->B, p->T, p->L, p->Hk, p->dvd_stride, s.bs, s.tpu);
  if (!why) why = encode_packed_rows_map(&m->q, p->q, p->B, p->T, p->Hk, p->G, 64, p->q_stride, s.tpu * (int)p->G);
  if (!why) why = encode_packed_rows_map(&m->dout, p->dout, p->B, p->T, p->Hk, p->G, 64, p->dout_stride, s.tpu * (int)p->G);
  return why;
}

template <typename T, int NW, bool SPLIT>
int launch_tma(const moda_attn_params *p, cudaStream_t stream, const DepthTmaShape &s, const DepthTmaMaps &m,
               const float *lse2, const float *delta, const float *dq_seq, float *dq_part, int max_ctas) {
  auto kern = bwd_depth_tma_kernel<T, NW, SPLIT>;
  if (s.nst < NW) return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn bwd: depth TMA stages %d < warps %d", s.nst, NW);
  const int smem = (s.nst / NW) * NW * s.stage_bytes + 1024;
  if (const int st = allow_dynamic_smem<bwd_depth_tma_kernel<T, NW, SPLIT>>(smem, "bwd_depth_tma")) return st;
  int dev = 0, sms = 0;
  MODA_CUDA_CHECK(cudaGetDevice(&dev), "cudaGetDevice");
  MODA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  const int64_t units_per_bg = (p->T + s.tpu - 1) / s.tpu, total = p->B * p->Hk * units_per_bg;
  if (total <= 0) return MODA_OK;
  const int64_t slots = max_ctas > 0 ? max_ctas : sms;
  const unsigned grid = (unsigned)(total < slots ? total : slots);
  kern<<<grid, 32 * (NW + 1), smem, stream>>>(m.kd, m.vd, m.dkd, m.dvd, m.q, m.dout, *p, lse2, delta, dq_seq, dq_part, s,
                                               (int)units_per_bg, (int)total);
  MODA_CUDA_CHECK_LAUNCH("bwd_depth_tma_kernel");
  return MODA_OK;
}

}  // namespace

// Where the TMA kernel runs instead of bwd_depth_token_kernel: an sm_90 device, d = 64, G dividing
// 8, fewer than 2^31 units, every tensor TMA-encodable; alone, and in the concurrent backward
// where the DRAM is faster than 4 TB/s (or MODA_CUDA_BWD_DEPTH_TMA=1 / 8).
// Measured (H100, session 16, GPU time, two rounds, the depth kernel alone / f+b, ms): DeiT-Tiny
// 0.243 0.241 vs 0.254 0.253 / 0.580 0.581 vs 0.590 0.591, DeiT-Tiny-64 1.157 1.161 vs 1.178
// 1.192 / 1.913 1.911 vs 1.935 1.937. In the concurrent backward at LM-64 (Hk = 2) it lost then
// (1.020 1.079 vs 0.946 0.947, f+b 1.600 1.505 vs 1.415 1.418), so sessions 16-19 kept it out of
// there; the cause was the depth maps' 256-byte L2 promotion, which with Hk > 1 fetched another
// head's row beside each one (encode_depth_map). With 128-byte fetches there (session 20, H200,
// LM-64 f+b, two rounds, --nondet): token kernel 1.237 1.237, TMA kernel 1.198 1.181; with the
// TMA-fed forward ring too 1.213 1.206 against 1.159 1.140. But on the H100 (session 21, LM-64 f+b,
// two rounds, one process) the token kernel still wins there: 1.335 1.339 against 1.429 1.431
// (the depth kernel 0.889-0.923 vs 0.892-0.935 ms on its SMs; the TMA kernel's copies slow the
// sequence kernels beside it more: dK/dV 0.38-0.41 vs 0.42-0.43, dQ 0.39-0.40 vs 0.41). The two
// cards have the same SMs and clocks; they differ in DRAM bandwidth (4.8 vs 3.35 TB/s), so the
// rule keys on it (dram_above_4tbs). SM shares of 50 / 54 / 62 (of 132) for the TMA kernel on
// the H100 moved LM-64 by at most 1% against 58.
bool bwd_depth_tma_selected(const moda_attn_params *p, bool concurrent) {
  const int mode = tma_mode();
  if (concurrent && mode == 4 && !dram_above_4tbs()) return false;
  if (mode == 0 || current_cc() != 90 || p->d != 64 || p->L <= 0 || p->chunk > 0 || 8 % p->G != 0) return false;
  if (p->dtype != MODA_BF16 && p->dtype != MODA_F16) return false;
  const DepthTmaShape s = depth_tma_shape(p->L, p->G);
  if (s.nst < (mode == 8 ? 8 : 4) || p->B * p->Hk * ((p->T + s.tpu - 1) / s.tpu) >= (1ll << 31)) return false;
  DepthTmaMaps m;
  return depth_tma_maps(p, s, &m) == nullptr;
}

int bwd_depth_tma_launch(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta,
                         const float *dq_seq, float *dq_part, int max_ctas) {
  const DepthTmaShape s = depth_tma_shape(p->L, p->G);
  DepthTmaMaps m;
  if (const char *why = depth_tma_maps(p, s, &m)) return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn bwd: %s", why);
  const bool bf16 = p->dtype == MODA_BF16, eight = tma_mode() == 8;
  if (dq_part) {
    if (eight)
      return bf16 ? launch_tma<__nv_bfloat16, 8, true>(p, stream, s, m, lse2, delta, nullptr, dq_part, max_ctas)
                  : launch_tma<__half, 8, true>(p, stream, s, m, lse2, delta, nullptr, dq_part, max_ctas);
    return bf16 ? launch_tma<__nv_bfloat16, 4, true>(p, stream, s, m, lse2, delta, nullptr, dq_part, max_ctas)
                : launch_tma<__half, 4, true>(p, stream, s, m, lse2, delta, nullptr, dq_part, max_ctas);
  }
  if (eight)
    return bf16 ? launch_tma<__nv_bfloat16, 8, false>(p, stream, s, m, lse2, delta, dq_seq, nullptr, max_ctas)
                : launch_tma<__half, 8, false>(p, stream, s, m, lse2, delta, dq_seq, nullptr, max_ctas);
  return bf16 ? launch_tma<__nv_bfloat16, 4, false>(p, stream, s, m, lse2, delta, dq_seq, nullptr, max_ctas)
              : launch_tma<__half, 4, false>(p, stream, s, m, lse2, delta, dq_seq, nullptr, max_ctas);
}

}  // namespace moda_cuda
