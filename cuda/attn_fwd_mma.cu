// attn_fwd_mma.cu: MoDA forward on tensor cores (mma.sync m16n8k16, bf16/fp16 in, fp32 accumulate).
//
// Layout (SPEC section 4). For one (batch b, KV head g) the G query heads of a token are packed
// into consecutive "packed rows" R = t*G + (h - g*G), R in [0, T*G). A CTA of NWARPS warps owns
// BM = 16*NWARPS packed rows; warp w owns 16 of them. Two phases per CTA:
//
// 1. Depth phase (L > 0), per warp, in the TRANSPOSED orientation: for each group of 8 packed
//    rows (8 columns) the warp streams the depth rows those columns can see (token visibility:
//    the L rows of the group's tokens; chunk visibility: the rows of the tokens of their chunks)
//    through shared memory in chunks of RDL = 16 rows and computes
//        S^T[16 x 8] = kd_chunk[16 x d] * q_group^T[d x 8]      (A = kd, B = q rows)
//        O^T[d x 8] += vd_chunk^T[d x 16] * P[16 x 8]            (A = vd^T, B = P via movmatrix)
//    with an online softmax per column. No dense (rows x rows*L) tile: for G >= 8 nothing is
//    masked; for G < 8 the 8 columns hold 8/G tokens and the waste is (8/G - 1)/(8/G).
//    The warp's chunks of all its groups form one sequence streamed through a cp.async ring of
//    RST stages (chunk c+1.. in flight while c is computed): FwdDepthRing, attn_fwd_common.cuh.
//    Each group's result (unnormalised O, max m, sum l) goes through a small shared-memory
//    scratch into the row state of the lanes that own its rows and seeds phase 2.
// 2. Sequence phase, FlashAttention-2 style: Q fragments in registers, K/V blocks of BN keys
//    double-buffered with cp.async, S = Q K^T, causal/bounds mask, online softmax, O += P V.
//
// Scores are kept in log2 units (scaled by scale*log2(e)) so exp2 is used throughout.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "attn_fwd_common.cuh"

namespace moda_cuda {

template <int D, int MT_>
struct FwdConfig {
  static constexpr int NWARPS = 4;
  // CTAs per SM the registers must allow on sm_90 (launch bounds): d=64 MT=1 keeps 3 (<= 168 regs)
  static constexpr int MIN_CTAS = D == 64 && MT_ == 1 ? 3 : 2;
  static constexpr int MT = MT_;                // 16-row m-tiles per warp (K/V fragments reused MT times)
  static constexpr int WROWS = 16 * MT;         // packed rows per warp
  static constexpr int BM = WROWS * NWARPS;     // packed rows per CTA
  static constexpr int BN = 64;                 // keys per sequence block
  static constexpr int LDS = D + 8;             // smem row stride in elements (pad: no bank conflicts)
  static constexpr int Q_ELEMS = BM * LDS;
  static constexpr int KV_ELEMS = 2 /*stages*/ * 2 /*K,V*/ * BN * LDS;
  // Depth ring (since v5): per warp RST stages of RDL kd rows + RDL vd rows, a cp.async
  // prefetch ring over the warp's flattened (group, chunk) sequence. Stages chosen to keep the
  // occupancy the registers allow on sm_90 (228 KB smem/SM, 1 KB reserved per CTA):
  //   d=64 MT=1 (3 CTAs/SM): 3 stages -> 73472 B;  d=64 MT=2 (2 CTAs/SM): 4 stages -> 101120 B;
  //   d=128 (2 CTAs/SM): 2 stages -> 104192 B.
  // Scratch: one 8-row group at a time (8 x RSD floats + 8 maxima + 8 sums per warp), merged
  // into the row state right after each group. K/V stages and the ring share one region.
  static constexpr int RDL = 16;
  static constexpr int RST = D > 64 ? 2 : (MT_ == 1 ? 3 : 4);
  static constexpr int RING_ELEMS = NWARPS * RST * 2 * RDL * LDS;
  static constexpr int RSD = D + 4;  // scratch row stride in floats (pad: conflict-free column writes)
  static constexpr int SCRATCH_FLOATS = NWARPS * (8 * RSD + 16);
  static constexpr int RING_BYTES = RING_ELEMS * 2 + SCRATCH_FLOATS * 4;
  static constexpr int UNION_BYTES = KV_ELEMS * 2 > RING_BYTES ? KV_ELEMS * 2 : RING_BYTES;
  static constexpr int SMEM_BYTES = Q_ELEMS * 2 + UNION_BYTES;
  static constexpr int SMEM_BYTES_NODEPTH = Q_ELEMS * 2 + KV_ELEMS * 2;  // L = 0
  // sm_90: 233472 B of shared memory per SM, 1 KB reserved per CTA
  static_assert((SMEM_BYTES + 1024) * MIN_CTAS <= 233472, "depth ring would cost occupancy on sm_90");
  static_assert(RDL == 16 && (RDL * (D / 8)) % 32 == 0, "ring chunks: one m16 tile, whole warp passes");
};

template <typename T, int D, int MT_, bool FOLD = true>
__global__ void __launch_bounds__(FwdConfig<D, MT_>::NWARPS * 32, FwdConfig<D, MT_>::MIN_CTAS)
fwd_mma_kernel(const moda_attn_params p, const int flags) {
  using Cfg = FwdConfig<D, MT_>;
  using Mma = MmaOp<T>;
  constexpr int NWARPS = Cfg::NWARPS, BM = Cfg::BM, BN = Cfg::BN, LDS = Cfg::LDS;
  constexpr int MT = Cfg::MT, WROWS = Cfg::WROWS;
  constexpr int NR = 2 * MT;      // rows per lane: row mt*16 + qr + 8*half, index r = 2*mt + half
  constexpr int NTHREADS = NWARPS * 32;
  constexpr int KSTEPS = D / 16;  // k-steps over the head dim
  constexpr float LOG2E = 1.4426950408889634f;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T *sQ = reinterpret_cast<T *>(smem_raw);
  unsigned char *sUnion = smem_raw + Cfg::Q_ELEMS * 2;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int qr = lane / 4, qc = lane % 4;  // fragment row / column of this lane
  const int64_t tile = gridDim.x - 1 - blockIdx.x;  // heavy (late) causal tiles first
  const int64_t g = blockIdx.y, b = blockIdx.z;
  const int64_t G = p.G, T_ = p.T, S = p.S, L = p.L;
  const int64_t TG = T_ * G;
  const int64_t R0 = tile * BM;                   // first packed row of this CTA
  const int64_t Rw = R0 + warp * WROWS;           // first packed row of this warp
  const float scale_log2 = (float)p.scale * LOG2E;
  const bool causal = p.causal != 0;

  const T *q = static_cast<const T *>(p.q);
  const T *k = static_cast<const T *>(p.k);
  const T *v = static_cast<const T *>(p.v);

  // ---- Q tile -> smem (rows past T*G are zero) ----
  load_rows_async<D, LDS>(sQ, BM, tid, NTHREADS, [&](int r) -> const T * {
    const int64_t R = R0 + r;
    return R < TG ? packed_row(q, p.q_stride, b, g, G, R) : nullptr;
  });
  cp_async_commit();

  // ---- depth ring (L > 0; attn_fwd_common.cuh): this warp's 2*MT groups of 8 packed rows;
  // its first chunks go out together with the Q tile.
  using Ring = FwdDepthRing<T, D, 2 * MT, Cfg::RST, LDS, Cfg::RSD>;
  static_assert(Ring::RDL == Cfg::RDL && Ring::WARP_RING_ELEMS * NWARPS == Cfg::RING_ELEMS &&
                Ring::WARP_SCRATCH_FLOATS * NWARPS == Cfg::SCRATCH_FLOATS, "ring layout");
  Ring ring;
  if (L > 0) {
    ring.init(p, flags, reinterpret_cast<T *>(sUnion) + warp * Ring::WARP_RING_ELEMS, Rw, b, g, lane);
    ring.prologue(p);
    cp_async_wait<Cfg::RST - 1>();  // the Q tile (the oldest group) has landed
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();

  // Per-row online-softmax state of this lane's rows (Rw + mt*16 + qr + 8*half), log2 units.
  float row_m[NR], row_l[NR];     // row_l: partial over this lane's columns (quad-reduced at the end)
  float acc_o[MT][D / 8][4];
#pragma unroll
  for (int r = 0; r < NR; ++r) { row_m[r] = -INFINITY; row_l[r] = 0.f; }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < D / 8; ++j) acc_o[mt][j][0] = acc_o[mt][j][1] = acc_o[mt][j][2] = acc_o[mt][j][3] = 0.f;

  // ================= phase 1: depth rows, transposed small GEMMs =================
  if (L > 0) {
    float *scr = reinterpret_cast<float *>(sUnion + Cfg::RING_ELEMS * 2) + warp * Ring::WARP_SCRATCH_FLOATS;
    ring.template run<Mma, MT>(p, sQ, R0, scr, scale_log2, row_m, row_l, acc_o);
    __syncthreads();  // every warp is done with the ring and scratch before K/V reuse them
  }

  // ================= phase 2: sequence keys, FlashAttention-2 =================
  T *sKV = reinterpret_cast<T *>(sUnion);
  auto sK = [&](int stage) { return sKV + stage * 2 * BN * LDS; };
  auto sV = [&](int stage) { return sKV + stage * 2 * BN * LDS + BN * LDS; };

  const int64_t t_first_cta = R0 / G;
  const int64_t t_last_cta = (R0 + BM - 1 < TG ? R0 + BM - 1 : TG - 1) / G;
  int64_t kv_end = S;
  if (causal) { int64_t e = S - T_ + t_last_cta + 1; kv_end = e < S ? e : S; }
  if (kv_end < 0) kv_end = 0;
  const int n_blocks = (int)((kv_end + BN - 1) / BN);
  // Keys below this need no mask for any row of the CTA.
  const int unmasked_end = (int)(causal ? (S - T_ + t_first_cta + 1 < S ? S - T_ + t_first_cta + 1 : S) : S);

  // Last visible key of this lane's rows.
  int row_lim[NR];  // key indices fit in int: fwd_mma_supported requires S < 2^31
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    int64_t R = Rw + (r / 2) * 16 + qr + (r % 2) * 8;
    int64_t t = (R < TG ? R : TG - 1) / G;
    row_lim[r] = (int)(causal ? (S - T_ + t < S - 1 ? S - T_ + t : S - 1) : S - 1);
  }

  const bool kv_hint = (flags & FWD_KV_EVICT_LAST) != 0;
  const uint64_t kv_pol = kv_hint ? l2_policy_evict_last() : 0;
  auto load_kv = [&](int blk, int stage) {
    int64_t j0 = (int64_t)blk * BN;
    load_rows_async_hint<D, LDS>(sK(stage), BN, tid, NTHREADS, kv_hint, kv_pol, [&](int r) -> const T * {
      int64_t j = j0 + r;
      return j < S ? k + b * p.k_stride[0] + j * p.k_stride[1] + g * p.k_stride[2] : nullptr;
    });
    load_rows_async_hint<D, LDS>(sV(stage), BN, tid, NTHREADS, kv_hint, kv_pol, [&](int r) -> const T * {
      int64_t j = j0 + r;
      return j < S ? v + b * p.v_stride[0] + j * p.v_stride[1] + g * p.v_stride[2] : nullptr;
    });
    cp_async_commit();
  };

  if (n_blocks > 0) {
    // Q fragments (A operand) of this warp's 16 rows.
    uint32_t q_a[MT][KSTEPS][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks)
        ldmatrix_x4(q_a[mt][ks], sQ + (warp * WROWS + mt * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);

    load_kv(0, 0);
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int stage = blk & 1;
      if (blk + 1 < n_blocks) { load_kv(blk + 1, stage ^ 1); cp_async_wait<1>(); }
      else cp_async_wait<0>();
      __syncthreads();

      const T *k_s = sK(stage), *v_s = sV(stage);
      float s[MT][BN / 8][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks)
#pragma unroll
        for (int np = 0; np < BN / 16; ++np) {
          uint32_t kb[4];
          ldmatrix_x4(kb, k_s + (np * 16 + (lane & 7) + ((lane >> 4) & 1) * 8) * LDS + ks * 16 +
                              ((lane >> 3) & 1) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            Mma::run(s[mt][2 * np], q_a[mt][ks], kb[0], kb[1]);
            Mma::run(s[mt][2 * np + 1], q_a[mt][ks], kb[2], kb[3]);
          }
        }

      const int j0 = blk * BN;
      const bool need_mask = j0 + BN > unmasked_end;
      float blk_max[NR];
#pragma unroll
      for (int r = 0; r < NR; ++r) blk_max[r] = -INFINITY;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = mt * 2 + (e >> 1);
            // FOLD: raw q.k, the scale folded into the exp2 argument below (one FFMA);
            // else the v3 code: scaled here (FMUL), then exp2(x - m) (FADD)
            float x = FOLD ? s[mt][nt][e] : s[mt][nt][e] * scale_log2;
            if (need_mask) {
              int j = j0 + nt * 8 + 2 * qc + (e & 1);
              if (j > row_lim[r]) x = -INFINITY;
            }
            s[mt][nt][e] = x;
            blk_max[r] = fmaxf(blk_max[r], x);
          }
      float corr[NR], m_use[NR];
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        // scale > 0, so max(raw) * scale = max(scaled); -inf stays -inf
        float m_new = fmaxf(row_m[r], warp_quad_max(blk_max[r]) * (FOLD ? scale_log2 : 1.f));
        m_use[r] = m_new == -INFINITY ? 0.f : m_new;
        corr[r] = exp2_ftz(row_m[r] - m_use[r]);
        row_m[r] = m_new;
        row_l[r] *= corr[r];
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          acc_o[mt][j][0] *= corr[2 * mt]; acc_o[mt][j][1] *= corr[2 * mt];
          acc_o[mt][j][2] *= corr[2 * mt + 1]; acc_o[mt][j][3] *= corr[2 * mt + 1];
        }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = mt * 2 + (e >> 1);
            // one FFMA + EX2 per score: exp2(s * scale * log2e - m)
            float pe = FOLD ? exp2_ftz(fmaf(s[mt][nt][e], scale_log2, -m_use[r])) : exp2_ftz(s[mt][nt][e] - m_use[r]);
            s[mt][nt][e] = pe;
            row_l[r] += pe;
          }
      // O += P V: P from the S accumulators, V^T fragments by ldmatrix.trans.
#pragma unroll
      for (int ks = 0; ks < BN / 16; ++ks) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          pa[mt][0] = Mma::pack(s[mt][2 * ks][0], s[mt][2 * ks][1]);
          pa[mt][1] = Mma::pack(s[mt][2 * ks][2], s[mt][2 * ks][3]);
          pa[mt][2] = Mma::pack(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
          pa[mt][3] = Mma::pack(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
        }
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, v_s + (ks * 16 + (lane & 15)) * LDS + dn * 16 + (lane >> 4) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            Mma::run(acc_o[mt][2 * dn], pa[mt], vb[0], vb[1]);
            Mma::run(acc_o[mt][2 * dn + 1], pa[mt], vb[2], vb[3]);
          }
        }
      }
      __syncthreads();  // this stage is free for the load two blocks ahead
    }
  }

  // ---- epilogue: normalise, write O and lse ----
  T *o = static_cast<T *>(p.o);
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    const int mt = r / 2, h2 = r % 2;
    float l = warp_quad_sum(row_l[r]);
    int64_t R = Rw + mt * 16 + qr + h2 * 8;
    if (R >= TG) continue;
    int64_t t = R / G, h = g * G + R % G;
    float inv = l > 0.f ? 1.f / l : 0.f;
    T *orow = o + b * p.o_stride[0] + t * p.o_stride[1] + h * p.o_stride[2];
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      uint32_t packed = Mma::pack(acc_o[mt][j][h2 * 2] * inv, acc_o[mt][j][h2 * 2 + 1] * inv);
      *reinterpret_cast<uint32_t *>(orow + j * 8 + 2 * qc) = packed;
    }
    if (qc == 0) {
      float lse = l > 0.f ? row_m[r] * 0.6931471805599453f + logf(l) : -INFINITY;
      p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + t * p.lse_stride[2]] = lse;
    }
  }
}

// ---- host side ----
static bool aligned16(const void *ptr) { return ((uintptr_t)ptr & 15) == 0; }
static bool strides_mult8(const int64_t *st, int n) {
  for (int i = 0; i < n; ++i) if (st[i] % 8 != 0) return false;
  return true;
}

bool fwd_mma_supported(const moda_attn_params *p, int cc) {
  if (cc < 80) return false;
  if (p->dtype != MODA_BF16 && p->dtype != MODA_F16) return false;
  if (p->d != 64 && p->d != 128) return false;
  if (!aligned16(p->q) || !aligned16(p->k) || !aligned16(p->v)) return false;
  if (!strides_mult8(p->q_stride, 3) || !strides_mult8(p->k_stride, 3) ||
      !strides_mult8(p->v_stride, 3))
    return false;
  if (((uintptr_t)p->o & 3) != 0 || p->o_stride[0] % 2 || p->o_stride[1] % 2 || p->o_stride[2] % 2)
    return false;
  if (p->L > 0) {
    if (!aligned16(p->kd) || !aligned16(p->vd)) return false;
    if (!strides_mult8(p->kd_stride, 4) || !strides_mult8(p->vd_stride, 4)) return false;
  }
  if (p->B > 65535 || p->Hk > 65535) return false;
  if (p->S >= (1ll << 31) - 256 || p->T * p->G >= (1ll << 31)) return false;
  // the depth ring's 32-bit index math: a group's visible depth rows (8 tokens, or a chunk's
  // tokens up to T) times L stay below 2^31 - 64 (kd alone would be >= 256 GB otherwise)
  if (p->L > 0 && (p->chunk > 0 ? p->T + 8 : 8) * p->L >= (1ll << 31) - 64) return false;
  return true;
}

// m-tiles per warp: 2 (32 rows, K/V fragments reused twice) pays where the sequence part
// dominates; where depth dominates (short T, large L) 1 keeps more warps per SM for the
// latency-bound depth phase (measured: docs/CUDA_NOTES.md). MODA_CUDA_FWD_MT=1|2 forces it (tests).
static int fwd_mt(const moda_attn_params *p) {
  static int forced = -1;
  if (forced < 0) {
    const char *e = getenv("MODA_CUDA_FWD_MT");
    forced = e && (e[0] == '1' || e[0] == '2') ? e[0] - '0' : 0;
  }
  if (p->d != 64) return 1;
  if (forced) return forced;
  int64_t seq_keys = mean_seq_keys(p);
  return seq_keys >= 1024 && seq_keys >= 16 * p->L ? 2 : 1;
}

static int fwd_flags();

const char *fwd_mma_name(const moda_attn_params *p) {
  if (fwd_wgmma_supported(p, current_cc(), fwd_flags())) return fwd_wgmma_name(p, fwd_flags());
  if (p->d == 128) return "mma_sync_d128";
  return fwd_mt(p) == 2 ? "mma_sync_d64x2" : "mma_sync_d64";
}

static int g_fwd_flags = -1;  // -1: not read yet
static int fwd_flags() {
  if (g_fwd_flags < 0) {
    const char *e = getenv("MODA_CUDA_FWD_FLAGS");
    g_fwd_flags = e && *e ? atoi(e) & FWD_FLAGS_MASK : FWD_FLAGS_DEFAULT;
  }
  return g_fwd_flags;
}
void fwd_set_flags(int flags) { g_fwd_flags = flags < 0 ? -1 : flags & FWD_FLAGS_MASK; }

template <typename T, int D, int MT, bool FOLD>
static int launch_fwd_variant(const moda_attn_params *p, cudaStream_t stream, int flags) {
  using Cfg = FwdConfig<D, MT>;
  // only the Q tile and the K/V stages when there is no depth phase
  const int smem = p->L > 0 ? Cfg::SMEM_BYTES : Cfg::SMEM_BYTES_NODEPTH;
  if (const int st = allow_dynamic_smem<fwd_mma_kernel<T, D, MT, FOLD>>(Cfg::SMEM_BYTES, "fwd_mma")) return st;
  int64_t tiles = (p->T * p->G + Cfg::BM - 1) / Cfg::BM;
  if (tiles <= 0) return MODA_OK;
  if (tiles > 0x7fffffff)
    return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn fwd: T*G too large");
  dim3 grid((unsigned)tiles, (unsigned)p->Hk, (unsigned)p->B);
  fwd_mma_kernel<T, D, MT, FOLD><<<grid, Cfg::NWARPS * 32, smem, stream>>>(*p, flags);
  MODA_CUDA_CHECK_LAUNCH("fwd_mma_kernel");
  return MODA_OK;
}

template <typename T, int D, int MT>
static int launch_fwd(const moda_attn_params *p, cudaStream_t stream) {
  const int flags = fwd_flags();
  // FWD_NO_FOLD (bit 2): the v3 softmax arithmetic, for A/B measurements
  if ((flags & FWD_NO_FOLD) == 0) return launch_fwd_variant<T, D, MT, true>(p, stream, flags);
  return launch_fwd_variant<T, D, MT, false>(p, stream, flags);
}

int fwd_mma_launch(const moda_attn_params *p, cudaStream_t stream) {
  const int flags = fwd_flags();
  if (fwd_wgmma_supported(p, current_cc(), flags)) return fwd_wgmma_launch(p, stream, flags);
  const int mt = fwd_mt(p);
  if (p->dtype == MODA_BF16) {
    if (p->d == 128) return launch_fwd<__nv_bfloat16, 128, 1>(p, stream);
    return mt == 2 ? launch_fwd<__nv_bfloat16, 64, 2>(p, stream) : launch_fwd<__nv_bfloat16, 64, 1>(p, stream);
  }
  if (p->d == 128) return launch_fwd<__half, 128, 1>(p, stream);
  return mt == 2 ? launch_fwd<__half, 64, 2>(p, stream) : launch_fwd<__half, 64, 1>(p, stream);
}

}  // namespace moda_cuda
