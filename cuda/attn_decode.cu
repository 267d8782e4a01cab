// attn_decode.cu: MoDA forward for decoding: T = 1..16 new queries against a long KV cache
// (query t at absolute position S - T + t), plus their depth rows, with split-K over the keys.
//
// Why a separate path: the tiled forward (attn_fwd_mma.cu) gives one CTA a tile of 64..128
// packed rows and walks all S keys; with T*G = 1..64 rows that is B*Hk CTAs (64 at B=8, Hk=8)
// each streaming the whole cache: a few SMs busy, most of the tile empty. Decoding is
// memory-bound (every K/V byte is used T*G times), so the plan is FlashDecoding's:
//   1. split kernel: CTA (row tile, split, kv head g, batch b) walks its slice of the key range
//      and writes an unnormalised partial (o, m, l) per packed row to a float32 workspace;
//   2. combine kernel: a warp per packed row merges the partials through their maxima and
//      writes o (input dtype) and lse.
//
// Key range of one row tile: the visible sequence keys [0, seq_end) followed by the depth rows
// of the tokens the tile's rows can see (token u_lo..u_hi, L rows each), one index space
// [0, seq_end + (u_hi - u_lo + 1) * L) that the splits cut evenly. Depth rows are few
// (T*L <= 16*64 typically) next to S >= 1024 keys, so they are just more keys with their own
// mask; there is no separate depth phase.
//
// SIMT with float32 accumulation (the same code for bf16, fp16 and float32): per CTA the G query
// heads of the tile's tokens (RT = 4, 8 or 16 packed rows) share every K/V block loaded to shared
// memory (GQA packing). At T*G <= 16 rows a key costs 2*RT*d FMAs against 4*d bytes read, which
// the FMA units keep up with at memory speed; the tiled tensor-core kernel remains the better
// choice when T*G is large and S is short (see decode_wanted()).
#include <math.h>
#include <stdlib.h>

#include "moda_cuda_internal.cuh"
#include "mma_helpers.cuh"

namespace moda_cuda {

constexpr int DEC_THREADS = 128;
constexpr float DEC_LOG2E = 1.4426950408889634f;

template <typename T, int D, int RT>
struct DecCfg {
  // keys per shared-memory block: 16 KB of K+V per stage (64 keys of 128-byte rows, else 32)
  static constexpr int NB = D * (int)sizeof(T) <= 128 ? 64 : 32;
  static constexpr int STAGES = 3;                       // cp.async ring: two blocks in flight
  static constexpr int E = 16 / (int)sizeof(T);          // elements per 16-byte chunk
  static constexpr int CH = D / E;                       // 16-byte chunks per row
  static constexpr int LDS = D + E;                      // row stride (+16 bytes: no bank conflicts)
  static constexpr int GROUPS = DEC_THREADS / NB;        // score phase: key j = tid % NB, row group tid / NB
  static constexpr int SROWS = RT / GROUPS;              // rows per thread in the score phase
  // PV phase: column pair tid % PAIRS of every row, over the key slice tid / PAIRS (KSLICE keys)
  // of each block: V is read and converted once per CTA, and the KGROUPS partial sums are
  // added once at the end.
  static constexpr int PAIRS = D / 2;
  static constexpr int KGROUPS = DEC_THREADS / PAIRS;
  static constexpr int KSLICE = NB / KGROUPS;
  static constexpr int KV_BYTES = STAGES * 2 /*K,V*/ * NB * LDS * (int)sizeof(T);
  static constexpr int SMEM_BYTES = KV_BYTES + (RT * D + RT * NB + 3 * RT) * 4 + RT * 4;
  static_assert(SROWS >= 1 && RT % GROUPS == 0, "score phase mapping");
  static_assert(KSLICE % 4 == 0 && KGROUPS * RT * D * 4 <= KV_BYTES, "PV phase mapping");
};

// 16 bytes of T -> E floats.
template <typename T> struct Chunk;
template <> struct Chunk<__nv_bfloat16> {
  static __device__ __forceinline__ void to_float(const uint4 &c, float (&f)[8]) {
    const uint32_t w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // bf16 -> f32 is a 16-bit shift
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};
template <> struct Chunk<__half> {
  static __device__ __forceinline__ void to_float(const uint4 &c, float (&f)[8]) {
    const uint32_t w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 x = __half22float2(*reinterpret_cast<const __half2 *>(&w[i]));
      f[2 * i] = x.x; f[2 * i + 1] = x.y;
    }
  }
};
template <> struct Chunk<float> {
  static __device__ __forceinline__ void to_float(const uint4 &c, float (&f)[4]) {
    f[0] = __uint_as_float(c.x); f[1] = __uint_as_float(c.y);
    f[2] = __uint_as_float(c.z); f[3] = __uint_as_float(c.w);
  }
};
// Two consecutive elements -> float2.
__device__ __forceinline__ float2 pair_to_float2(const __nv_bfloat16 *p) {
  uint32_t w = *reinterpret_cast<const uint32_t *>(p);
  return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}
__device__ __forceinline__ float2 pair_to_float2(const __half *p) {
  return __half22float2(*reinterpret_cast<const __half2 *>(p));
}
__device__ __forceinline__ float2 pair_to_float2(const float *p) {
  return *reinterpret_cast<const float2 *>(p);
}

// The split plan, the same on the host (sizes, grid) and in the kernels.
struct DecodePlan {
  int rt;              // packed rows per CTA: 4, 8 or 16
  int ntiles;          // ceil(T*G / rt)
  int nsplit;          // splits of each tile's key range
  int64_t keys_per_split;
};

// Depth tokens [u_lo, u_hi] the packed rows [R0, R1] can see (SPEC "depth visibility").
__host__ __device__ __forceinline__ void dec_depth_tokens(const moda_attn_params &p, int64_t R0, int64_t R1,
                                                          int64_t *u_lo, int64_t *u_hi) {
  int64_t t_first = R0 / p.G, t_last = R1 / p.G;
  if (p.chunk <= 0) { *u_lo = t_first; *u_hi = t_last; return; }
  *u_lo = (t_first / p.chunk) * p.chunk;
  if (p.causal) *u_hi = t_last;
  else { int64_t e = (t_last / p.chunk) * p.chunk + p.chunk - 1; *u_hi = e < p.T - 1 ? e : p.T - 1; }
}

template <typename T, int D, int RT>
__global__ void __launch_bounds__(DEC_THREADS)
decode_split_kernel(const moda_attn_params p, const DecodePlan plan, float *__restrict__ part_o,
                    float *__restrict__ part_ml) {
  using Cfg = DecCfg<T, D, RT>;
  constexpr int NB = Cfg::NB, E = Cfg::E, CH = Cfg::CH, LDS = Cfg::LDS, STAGES = Cfg::STAGES;
  constexpr int GROUPS = Cfg::GROUPS, SROWS = Cfg::SROWS;
  constexpr int PAIRS = Cfg::PAIRS, KGROUPS = Cfg::KGROUPS, KSLICE = Cfg::KSLICE;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T *sKV = reinterpret_cast<T *>(smem_raw);                       // [stage][K|V][NB][LDS]
  float *sQ = reinterpret_cast<float *>(smem_raw + Cfg::KV_BYTES);  // [RT][D], pre-scaled to log2 units
  float *sP = sQ + RT * D;                                        // [RT][NB] scores, then probabilities
  float *sM = sP + RT * NB, *sL = sM + RT, *sCorr = sL + RT;      // running max / sum, rescale factor
  int *sTok = reinterpret_cast<int *>(sCorr + RT);                // token of each row
  auto sK = [&](int st) { return sKV + (st * 2) * NB * LDS; };
  auto sV = [&](int st) { return sKV + (st * 2 + 1) * NB * LDS; };

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int tile = blockIdx.x / plan.nsplit, split = blockIdx.x % plan.nsplit;
  const int64_t g = blockIdx.y, b = blockIdx.z;
  const int64_t G = p.G, TG = p.T * p.G, S = p.S, L = p.L;
  const int64_t R0 = (int64_t)tile * RT;
  const int nrows = (int)(TG - R0 < RT ? TG - R0 : RT);
  const float scale_log2 = (float)p.scale * DEC_LOG2E;

  // Key range of this tile: sequence [0, seq_end), then depth tokens u_lo..u_hi (L rows each).
  const int64_t t_last = (R0 + nrows - 1) / G;
  int64_t seq_end = p.causal ? S - p.T + t_last + 1 : S;
  seq_end = seq_end < 0 ? 0 : (seq_end > S ? S : seq_end);
  int64_t u_lo = 0, u_hi = -1;
  if (L > 0) dec_depth_tokens(p, R0, R0 + nrows - 1, &u_lo, &u_hi);
  const int64_t n_keys = seq_end + (u_hi - u_lo + 1) * L;
  const int64_t k_begin = (int64_t)split * plan.keys_per_split;
  const int64_t k_end = k_begin + plan.keys_per_split < n_keys ? k_begin + plan.keys_per_split : n_keys;

  const T *k = static_cast<const T *>(p.k), *v = static_cast<const T *>(p.v);
  const T *kd = static_cast<const T *>(p.kd), *vd = static_cast<const T *>(p.vd);
  auto key_row = [&](int64_t i, bool value) -> const T * {
    if (i < seq_end) {
      const int64_t *st = value ? p.v_stride : p.k_stride;
      return (value ? v : k) + b * st[0] + i * st[1] + g * st[2];
    }
    int64_t x = i - seq_end, u = u_lo + x / L, l = x % L;
    const int64_t *st = value ? p.vd_stride : p.kd_stride;
    return (value ? vd : kd) + b * st[0] + u * st[1] + l * st[2] + g * st[3];
  };
  // K and V rows of block kb into stage st; keys past k_end are zero (their P is 0, and 0 * a
  // stale NaN would poison O). Always commits a group (empty past the end) so that
  // cp_async_wait<STAGES - 2> counts blocks uniformly.
  auto load_block = [&](int64_t kb, int st) {
    for (int c = tid; c < 2 * NB * CH && kb < k_end; c += DEC_THREADS) {
      const int which = c / (NB * CH), r = (c / CH) % NB, x = c % CH;
      T *dst = (which ? sV(st) : sK(st)) + r * LDS + x * E;
      const int64_t i = kb + r;
      if (i < k_end) cp_async_16(dst, key_row(i, which) + x * E);
      else *reinterpret_cast<uint4 *>(dst) = make_uint4(0, 0, 0, 0);
    }
    cp_async_commit();
  };

  // Q rows (scaled, float) and row state; rows past T*G are zero and never written out.
  const T *q = static_cast<const T *>(p.q);
  for (int e = tid; e < RT * D; e += DEC_THREADS) {
    const int r = e / D, c = e % D;
    float x = 0.f;
    if (r < nrows) {
      const int64_t R = R0 + r, t = R / G, h = g * G + R % G;
      x = Elem<T>::to_float(q[b * p.q_stride[0] + t * p.q_stride[1] + h * p.q_stride[2] + c]) * scale_log2;
    }
    sQ[e] = x;
  }
  if (tid < RT) {
    sM[tid] = -INFINITY; sL[tid] = 0.f;
    sTok[tid] = (int)((R0 + (tid < nrows ? tid : nrows - 1)) / G);
  }

  float acc[RT][2];  // O of every row, columns 2*cp, 2*cp+1, over this thread's key slices (unnormalised)
#pragma unroll
  for (int i = 0; i < RT; ++i) acc[i][0] = acc[i][1] = 0.f;
  const int cp = tid % PAIRS, kgrp = tid / PAIRS;
  // Keys below this are visible to every row of the tile (no mask needed).
  const int64_t vis_all_end = p.causal ? (S - p.T + (R0 / G) + 1 < seq_end ? S - p.T + (R0 / G) + 1 : seq_end)
                                       : seq_end;
  const int kj = tid % NB, sg = tid / NB;  // score phase: this thread's key and row group

  // Prologue: the first STAGES-1 blocks in flight.
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) load_block(k_begin + (int64_t)s * NB, s);
  int stage = 0;
  for (int64_t kb = k_begin; kb < k_end; kb += NB, stage = stage + 1 == STAGES ? 0 : stage + 1) {
    cp_async_wait<STAGES - 2>();  // block kb has landed (this thread's copies)
    __syncthreads();  // ... everyone's; and everyone is done with the block before it
    {
      // refill the stage the previous block used
      const int st_next = stage == 0 ? STAGES - 1 : stage - 1;
      load_block(kb + (int64_t)(STAGES - 1) * NB, st_next);
    }

    // ---- scores S[r][j] = q_r . k_j (log2 units), masked ----
    {
      float s[SROWS];
#pragma unroll
      for (int i = 0; i < SROWS; ++i) s[i] = 0.f;
      const T *krow = sK(stage) + kj * LDS;
#pragma unroll
      for (int x = 0; x < CH; ++x) {
        float kf[E];
        Chunk<T>::to_float(*reinterpret_cast<const uint4 *>(krow + x * E), kf);
#pragma unroll
        for (int i = 0; i < SROWS; ++i) {
          const float *qrow = sQ + (sg + GROUPS * i) * D + x * E;
#pragma unroll
          for (int e4 = 0; e4 < E; e4 += 4) {
            float4 qv = *reinterpret_cast<const float4 *>(qrow + e4);
            s[i] += qv.x * kf[e4] + qv.y * kf[e4 + 1] + qv.z * kf[e4 + 2] + qv.w * kf[e4 + 3];
          }
        }
      }
      const int64_t i_key = kb + kj;
      if (kb + NB <= vis_all_end && kb + NB <= k_end) {  // the common block: nothing masked
#pragma unroll
        for (int i = 0; i < SROWS; ++i) sP[(sg + GROUPS * i) * NB + kj] = s[i];
      } else {
        const bool in_range = i_key < k_end, is_seq = i_key < seq_end;
        const int64_t u = is_seq ? -1 : u_lo + (i_key - seq_end) / L;
#pragma unroll
        for (int i = 0; i < SROWS; ++i) {
          const int r = sg + GROUPS * i;
          const int64_t t = sTok[r];
          bool vis = in_range;
          if (is_seq) vis = vis && (!p.causal || i_key <= S - p.T + t);
          else if (p.chunk <= 0) vis = vis && u == t;
          else vis = vis && u / p.chunk == t / p.chunk && (!p.causal || u <= t);
          sP[r * NB + kj] = vis ? s[i] : -INFINITY;
        }
      }
    }
    __syncthreads();

    // ---- online softmax, a warp per row ----
    for (int r = warp; r < RT; r += DEC_THREADS / 32) {
      float x[NB / 32], mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < NB / 32; ++i) { x[i] = sP[r * NB + lane + 32 * i]; mx = fmaxf(mx, x[i]); }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_old = sM[r], m_new = fmaxf(m_old, mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < NB / 32; ++i) {
        const float pe = exp2_ftz(x[i] - m_use);
        sP[r * NB + lane + 32 * i] = pe;
        sum += pe;
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      __syncwarp();  // every lane has read sM[r] before lane 0 updates it
      if (lane == 0) {
        const float corr = exp2_ftz(m_old - m_use);
        sCorr[r] = corr;
        sL[r] = sL[r] * corr + sum;
        sM[r] = m_new;
      }
    }
    __syncthreads();

    // ---- O = O * corr + P V over this thread's key slice ----
    {
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        const float corr = sCorr[i];
        acc[i][0] *= corr; acc[i][1] *= corr;
      }
      const int j0 = kgrp * KSLICE;
      const T *vcol = sV(stage) + j0 * LDS + 2 * cp;
#pragma unroll
      for (int j = 0; j < KSLICE; j += 4) {
        float2 vv[4];
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) vv[jj] = pair_to_float2(vcol + (j + jj) * LDS);
#pragma unroll
        for (int i = 0; i < RT; ++i) {
          const float4 pp = *reinterpret_cast<const float4 *>(sP + i * NB + j0 + j);
          acc[i][0] += pp.x * vv[0].x + pp.y * vv[1].x + pp.z * vv[2].x + pp.w * vv[3].x;
          acc[i][1] += pp.x * vv[0].y + pp.y * vv[1].y + pp.z * vv[2].y + pp.w * vv[3].y;
        }
      }
    }
  }
  cp_async_wait<0>();  // the trailing (empty or unused) groups, before the K/V smem is reused
  __syncthreads();     // sM / sL final (also when this split had no keys); K/V smem free

  // ---- sum the KGROUPS key slices (smem, over the K/V buffers), write the partials:
  //      part_o [b][g][R][split][D], part_ml [b][g][R][split][2] ----
  float *sRed = reinterpret_cast<float *>(smem_raw);  // [KGROUPS][RT][D]
#pragma unroll
  for (int i = 0; i < RT; ++i)
    *reinterpret_cast<float2 *>(sRed + (kgrp * RT + i) * D + 2 * cp) = make_float2(acc[i][0], acc[i][1]);
  __syncthreads();
  const int64_t row_base = (b * p.Hk + g) * TG + R0;
  for (int e = tid; e < nrows * D; e += DEC_THREADS) {
    float sum = 0.f;
#pragma unroll
    for (int kgi = 0; kgi < KGROUPS; ++kgi) sum += sRed[kgi * RT * D + e];
    const int r = e / D, c = e % D;
    part_o[((row_base + r) * plan.nsplit + split) * D + c] = sum;
  }
  if (tid < nrows)
    *reinterpret_cast<float2 *>(part_ml + ((row_base + tid) * plan.nsplit + split) * 2) =
        make_float2(sM[tid], sL[tid]);
}

// A warp per packed row: merge the nsplit partials, write o (dtype T) and lse (natural log).
template <typename T, int D>
__global__ void __launch_bounds__(DEC_THREADS)
decode_combine_kernel(const moda_attn_params p, const DecodePlan plan, const float *__restrict__ part_o,
                      const float *__restrict__ part_ml) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * (DEC_THREADS / 32) + threadIdx.x / 32;
  const int64_t TG = p.T * p.G, n_rows = p.B * p.Hk * TG;
  if (row >= n_rows) return;
  const int ns = plan.nsplit;
  const float *ml = part_ml + row * ns * 2;
  float M = -INFINITY;
  for (int s = lane; s < ns; s += 32) M = fmaxf(M, ml[2 * s]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
  const float M_use = M == -INFINITY ? 0.f : M;
  float lsum = 0.f;
  for (int s = lane; s < ns; s += 32) lsum += ml[2 * s + 1] * exp2_ftz(ml[2 * s] - M_use);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) lsum += __shfl_xor_sync(0xffffffffu, lsum, o);
  const float inv = lsum > 0.f ? 1.f / lsum : 0.f;

  constexpr int PER_LANE = D / 32;
  float o[PER_LANE];
#pragma unroll
  for (int e = 0; e < PER_LANE; ++e) o[e] = 0.f;
  const float *po = part_o + row * ns * D;
  for (int s = 0; s < ns; ++s) {
    const float w = exp2_ftz(ml[2 * s] - M_use);  // 0 for an empty split (m = -inf)
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) o[e] += w * po[s * D + lane + 32 * e];
  }
  const int64_t R = row % TG, bg = row / TG, g = bg % p.Hk, b = bg / p.Hk;
  const int64_t t = R / p.G, h = g * p.G + R % p.G;
  T *orow = static_cast<T *>(p.o) + b * p.o_stride[0] + t * p.o_stride[1] + h * p.o_stride[2];
#pragma unroll
  for (int e = 0; e < PER_LANE; ++e) orow[lane + 32 * e] = Elem<T>::from_float(o[e] * inv);
  if (lane == 0)
    p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + t * p.lse_stride[2]] =
        lsum > 0.f ? M * 0.6931471805599453f + logf(lsum) : -INFINITY;
}

// ---- host side ----

// 0: automatic (decode_wanted), 1: never, 2: whenever decode_eligible (tests, benches).
static int g_decode_mode = 0;

static int sm_count() {
  static int n = 0;
  if (n == 0) {
    int dev = 0, c = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && c > 0)
      n = c;
    else
      n = 132;  // only sizes the split count; any value is correct
  }
  return n;
}

static bool aligned_rows(const void *ptr, const int64_t *st, int n, int elems16) {
  if (((uintptr_t)ptr & 15) != 0) return false;
  for (int i = 0; i < n; ++i) if (st[i] % elems16 != 0) return false;
  return true;
}

// What the split kernel can run: d 64/128, 16-byte aligned K/V/depth rows (cp.async), T <= 16.
static bool decode_eligible(const moda_attn_params *p) {
  if (p->d != 64 && p->d != 128) return false;
  if (p->T < 1 || p->T > 16 || p->S < 1) return false;
  if (p->T * p->G > 65535 * 16 || p->B > 65535 || p->Hk > 65535) return false;
  const int e16 = 16 / (int)moda_dtype_size(p->dtype);
  if (!aligned_rows(p->k, p->k_stride, 3, e16) || !aligned_rows(p->v, p->v_stride, 3, e16)) return false;
  if (p->L > 0 && (!aligned_rows(p->kd, p->kd_stride, 4, e16) || !aligned_rows(p->vd, p->vd_stride, 4, e16)))
    return false;
  if (p->S >= (1ll << 31) - 4096) return false;
  return true;
}

// The rule (docs/CUDA_NOTES.md, "Decode path"): T <= 16 new queries and a cache of S >= 1024
// keys. There the tiled kernel has at most B*Hk CTAs of mostly empty tiles, each walking all S
// keys; the split kernel spreads the keys over the SMs.
static bool decode_wanted(const moda_attn_params *p) {
  if (g_decode_mode == 1 || !decode_eligible(p)) return false;
  if (g_decode_mode == 2) return true;
  return p->T <= 16 && p->S >= 1024;
}

template <typename T, int D, int RT>
static int decode_prepare() {  // dynamic smem attribute, once per instantiation; resident CTAs per SM
  using Cfg = DecCfg<T, D, RT>;
  static int per_sm = 0;
  if (per_sm == 0) {
    if (cudaFuncSetAttribute(decode_split_kernel<T, D, RT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             Cfg::SMEM_BYTES) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_split_kernel<T, D, RT>, DEC_THREADS,
                                                      Cfg::SMEM_BYTES) != cudaSuccess || per_sm < 1) {
      cudaGetLastError();  // the launch reports a real problem; here it only sizes the split count
      per_sm = 1;
    }
  }
  return per_sm;
}
template <typename T, int D>
static int decode_per_sm_d(int rt) {
  return rt == 4 ? decode_prepare<T, D, 4>() : rt == 8 ? decode_prepare<T, D, 8>() : decode_prepare<T, D, 16>();
}
static int decode_per_sm(const moda_attn_params *p, int rt) {
  switch (p->dtype) {
    case MODA_BF16: return p->d == 64 ? decode_per_sm_d<__nv_bfloat16, 64>(rt) : decode_per_sm_d<__nv_bfloat16, 128>(rt);
    case MODA_F16: return p->d == 64 ? decode_per_sm_d<__half, 64>(rt) : decode_per_sm_d<__half, 128>(rt);
    default: return p->d == 64 ? decode_per_sm_d<float, 64>(rt) : decode_per_sm_d<float, 128>(rt);
  }
}

static DecodePlan decode_plan(const moda_attn_params *p) {
  DecodePlan pl;
  const int64_t TG = p->T * p->G;
  pl.rt = TG <= 4 ? 4 : TG <= 8 ? 8 : 16;
  pl.ntiles = (int)((TG + pl.rt - 1) / pl.rt);
  // Longest key range of any tile: all S keys plus every depth row (T <= 16 tokens).
  const int64_t max_keys = p->S + p->T * p->L;
  const int64_t pairs = p->B * p->Hk * pl.ntiles;
  // One full wave: as many CTAs as the SMs hold at once (every split has the same work, so they
  // end together; measured v1: 8 CTAs per SM, i.e. 1.6 waves, lost ~20% to the tail).
  // Each split keeps at least 256 keys so the partials stay small next to the K/V traffic.
  const int64_t slots = (int64_t)sm_count() * decode_per_sm(p, pl.rt);
  int64_t want = slots / pairs;
  int64_t most = (max_keys + 255) / 256;
  int64_t ns = want < most ? want : most;
  if (ns < 1) ns = 1;
  if (ns > 1024) ns = 1024;
  pl.keys_per_split = (max_keys + ns - 1) / ns;
  pl.keys_per_split = (pl.keys_per_split + 63) / 64 * 64;  // whole key blocks per split
  pl.nsplit = (int)((max_keys + pl.keys_per_split - 1) / pl.keys_per_split);
  return pl;
}

bool fwd_decode_selected(const moda_attn_params *p) { return decode_wanted(p); }

int64_t fwd_decode_workspace_bytes(const moda_attn_params *p) {
  if (!decode_wanted(p)) return 0;
  DecodePlan pl = decode_plan(p);
  int64_t rows = p->B * p->Hk * p->T * p->G;
  int64_t floats = rows * pl.nsplit * (p->d + 2);
  return (floats * 4 + 255) / 256 * 256;
}

const char *fwd_decode_name(const moda_attn_params *p) {
  DecodePlan pl = decode_plan(p);
  static const char *names[2][3] = {{"decode_d64_r4", "decode_d64_r8", "decode_d64_r16"},
                                    {"decode_d128_r4", "decode_d128_r8", "decode_d128_r16"}};
  return names[p->d == 128][pl.rt == 4 ? 0 : pl.rt == 8 ? 1 : 2];
}

template <typename T, int D, int RT>
static int launch_decode_rt(const moda_attn_params *p, const DecodePlan &pl, cudaStream_t stream,
                            float *part_o, float *part_ml) {
  using Cfg = DecCfg<T, D, RT>;
  decode_prepare<T, D, RT>();  // sets the dynamic shared-memory limit (decode_plan did already)
  dim3 grid((unsigned)((int64_t)pl.ntiles * pl.nsplit), (unsigned)p->Hk, (unsigned)p->B);
  decode_split_kernel<T, D, RT><<<grid, DEC_THREADS, Cfg::SMEM_BYTES, stream>>>(*p, pl, part_o, part_ml);
  MODA_CUDA_CHECK_LAUNCH("decode_split_kernel");
  int64_t rows = p->B * p->Hk * p->T * p->G;
  int64_t blocks = (rows + DEC_THREADS / 32 - 1) / (DEC_THREADS / 32);
  decode_combine_kernel<T, D><<<(unsigned)blocks, DEC_THREADS, 0, stream>>>(*p, pl, part_o, part_ml);
  MODA_CUDA_CHECK_LAUNCH("decode_combine_kernel");
  return MODA_OK;
}

template <typename T, int D>
static int launch_decode_d(const moda_attn_params *p, const DecodePlan &pl, cudaStream_t s, float *po,
                           float *pml) {
  if (pl.rt == 4) return launch_decode_rt<T, D, 4>(p, pl, s, po, pml);
  if (pl.rt == 8) return launch_decode_rt<T, D, 8>(p, pl, s, po, pml);
  return launch_decode_rt<T, D, 16>(p, pl, s, po, pml);
}

// workspace: at least fwd_decode_workspace_bytes(p) bytes (the caller checked).
int fwd_decode_launch(const moda_attn_params *p, cudaStream_t stream, void *workspace) {
  DecodePlan pl = decode_plan(p);
  const int64_t rows = p->B * p->Hk * p->T * p->G;
  if ((int64_t)pl.ntiles * pl.nsplit > 0x7fffffff || rows / (DEC_THREADS / 32) > 0x7fffffff)
    return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn decode: grid too large");
  float *part_o = static_cast<float *>(workspace);
  float *part_ml = part_o + rows * pl.nsplit * p->d;
  switch (p->dtype) {
    case MODA_BF16:
      return p->d == 64 ? launch_decode_d<__nv_bfloat16, 64>(p, pl, stream, part_o, part_ml)
                        : launch_decode_d<__nv_bfloat16, 128>(p, pl, stream, part_o, part_ml);
    case MODA_F16:
      return p->d == 64 ? launch_decode_d<__half, 64>(p, pl, stream, part_o, part_ml)
                        : launch_decode_d<__half, 128>(p, pl, stream, part_o, part_ml);
    case MODA_F32:
      return p->d == 64 ? launch_decode_d<float, 64>(p, pl, stream, part_o, part_ml)
                        : launch_decode_d<float, 128>(p, pl, stream, part_o, part_ml);
  }
  return moda_set_error(MODA_ERR_DTYPE, "cuda attn decode: dtype %s not supported", moda_dtype_name(p->dtype));
}

}  // namespace moda_cuda

extern "C" int moda_cuda_set_decode_mode(int mode) {
  if (mode < 0 || mode > 2)
    return moda_set_error(MODA_ERR_ARG, "moda_cuda_set_decode_mode: mode %d (0 auto, 1 never, 2 always)", mode);
  moda_cuda::g_decode_mode = mode;
  return MODA_OK;
}
