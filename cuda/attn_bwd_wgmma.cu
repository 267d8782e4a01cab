// attn_bwd_wgmma.cu: the warp-specialised sequence kernels of the MoDA backward for Hopper (sm_90a,
// d = 64): the dK/dV kernel (FlashAttention-3's layout applied to kernel 2 of attn_bwd_mma.cu; its
// v9 loop below, the 128-row steps of v10 further down) and the dQ kernel (v11, kernel 4's
// sequence part), which since session 22 split the backward where the sequence part is long:
// dK/dV without dQ, then dQ in a second pass, instead of dQ summed by float32 reductions.
//
// Why: bwd_dkv_wgmma_kernel (attn_bwd_mma.cu) is one warpgroup per 64 keys that loads its own
// Q/dO tiles by cp.async and meets at __syncthreads twice per step, so copies, softmax and GEMMs
// never overlap within a CTA, and every 64 keys re-read each Q/dO tile from L2 (profile, session 5:
// T=4096 dK/dV 1.69 ms, ~165 TF/s). Here:
// - CTA = 128 keys of one KV head and batch, 3 warpgroups (384 threads, 1 CTA/SM). Warpgroup 0
//   is the producer: after setmaxnreg.dec its warp 0 loads the K/V block once (TMA, 4-d rows
//   maps) and then streams the packed query rows that can see the block in steps of 64: Q and dO
//   by TMA through the 5-d packed-rows map (rows R = t*G + i in order, tokens past T zero-filled;
//   G must divide 64), lse2/delta by 1-d bulk copies (the workspace pads them to stat_rows), into
//   NST stages with full/empty mbarriers.
// - Warpgroups 1 and 2 (setmaxnreg.inc 240) own keys 0..63 and 64..127 of the block; per step,
//   on the same shared Q/dO tiles (half the Q/dO traffic per key of the 64-key kernel):
//       S^T  = K_w Q^T, dP^T = V_w dO^T     SS wgmma m64n64k16 (A = the K/V tile, K-major)
//       P^T, dS^T on the accumulators       (the arithmetic of bwd_dkv_wgmma_kernel)
//       dV += P^T dO, dK += dS^T Q           RS wgmma, B = the dO / Q tiles read MN-major
// - DQ (deterministic = 0): both warpgroups put dS^T into a 128-key tile; the warpgroup
//   whose turn it is (they alternate by step) waits for the other's half on a named barrier and
//   runs dQ_step = dS K (m64n64, k = 128 keys, SS: A = dS read MN-major, B = the K tile MN-major),
//   added to the float32 accumulator [B, Hk, T*G, d] by vector reductions: one 64 x 64 reduction
//   per 128 keys, half of bwd_dkv_wgmma_kernel's. (Measured and dropped, session 6: each
//   warpgroup its own 64 keys' dQ without the coupling, 1.2x slower; the tile through smem to
//   one cp.reduce.async.bulk, FA3's way, no faster than the vector reductions.) The depth kernel
//   (attn_bwd_depth.cu), or the dQ kernel's depth part, then adds the accumulator.
// - Variants: PIPE (the default; MODA_CUDA_BWD_WS=1 selects the older loop: the softmax of the
//   next step under this step's dV/dK) and ORDERED (MODA_CUDA_BWD_ORDERED_DQ=1, deterministic dQ
//   by ordered adds); see their comments below.
// The launcher falls back (launched = false) where a tensor is not TMA-encodable or G does not
// divide 64. MODA_CUDA_BWD_WS=0 turns the kernel off (on by default: see ws_mode).
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <type_traits>

#include "moda_cuda_internal.cuh"
#include "mma_helpers.cuh"
#include "attn_bwd_common.cuh"
#include "tma_helpers.cuh"
#include "wgmma_gemm.cuh"

namespace moda_cuda {
namespace {

// The barriers of the warp-specialised kernels' stage ring, set up by thread 0: full[s] (the
// producer thread, which also announces the bytes), empty[s] (every one of the 256 consumer
// threads releases its own reads), and `once` for the tiles loaded once per CTA; then the last
// CTA-wide barrier (the producer's idle warps exit after it).
template <int NST>
__device__ __forceinline__ void ws_init_barriers(uint64_t *full, uint64_t *empty, uint64_t *once) {
  if (threadIdx.x == 0) {
    for (int s = 0; s < NST; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 256);
    }
    mbar_init(once, 1);
    mbar_fence_init();
  }
  __syncthreads();
}

// PIPE (v9, the default since session 8; MODA_CUDA_BWD_WS=1 selects the v8 loop): each consumer
// warpgroup issues S/dP of step j+1 before dV/dK of step j and runs the softmax of step j+1 under
// dV/dK(j); P^T and dS^T go through smem tiles (dV/dK as SS wgmmas) so that the registers of two
// steps fit. Measured (session 8, H100, fwd+bwd nd, this kernel's time): T=4096 1.80 vs 2.20 ms,
// T=16384 26.4 vs 32.2, LM-64 0.76 vs 0.90, DeiT-Tiny-64 0.20 vs 0.23. docs/CUDA_NOTES.md, "v9".
template <bool PIPE = false>
struct WsBwdConfig {
  static constexpr int D = 64, BN = 128, BQ = 64, NST = PIPE ? 4 : 3, NTHREADS = 384;
  static constexpr int TILE = 64 * D * 2;            // one sw128 tile of 64 rows (8 KB)
  static constexpr int KV_BYTES = 2 * 2 * TILE;      // the K and V blocks, 128 rows each
  static constexpr int STAGE_BYTES = 2 * TILE;       // Q and dO tiles of one step
  static constexpr int DS_BYTES = 2 * 2 * TILE;      // dS^T: 2 step parities x 128 keys
  static constexpr int PT_BYTES = PIPE ? 2 * 2 * TILE : 0;  // P^T: 2 parities x 2 warpgroups x 64 keys
  static constexpr int STAT_BYTES = 2 * BQ * 4;      // lse2, delta of one step
  static constexpr int BAR_BYTES = PIPE ? 128 : 64;  // full[NST], empty[NST], kv: 8 bytes each
  // K/V | stages | dS^T (DQ or PIPE) | P^T (PIPE) | stats of each stage | barriers, after 1024
  // bytes of alignment slack
  static constexpr int smem_bytes(bool dq) {
    return 1024 + KV_BYTES + NST * STAGE_BYTES + (dq || PIPE ? DS_BYTES : 0) + PT_BYTES + NST * STAT_BYTES + BAR_BYTES;
  }
  static_assert((2 * NST + 1) * 8 <= BAR_BYTES, "barriers fit");
  static_assert(128 * 24 + 256 * 240 <= NTHREADS * ((65536 / NTHREADS) & ~7), "register split of the three warpgroups");
};

// ORDERED (with DQ, not PIPE; MODA_CUDA_BWD_ORDERED_DQ=1, deterministic = 1): the dQ adds in a
// fixed key-block order (descending, the grid reversed) under the counters dq_sem (sem_wait_eq in
// attn_bwd_common.cuh) instead of reductions: deterministic without the dQ kernel's second pass.
template <typename T, bool DQ, bool PIPE, bool ORDERED = false>
__global__ void __launch_bounds__(WsBwdConfig<PIPE>::NTHREADS, 1)
bwd_dkv_wgmma_ws_kernel(const moda_attn_params p, const float *ws_lse2, const float *ws_delta, float *dq_accum, int *dq_sem,
                        const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v,
                        const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_do,
                        int q_evict_last, int dq_red4) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = WsBwdConfig<PIPE>;
  using Mma = MmaOp<T>;
  constexpr int D = Cfg::D, BN = Cfg::BN, BQ = Cfg::BQ, NST = Cfg::NST, TILE = Cfg::TILE;
  constexpr int NT = BQ / 8;
  static_assert(D == 64, "S/dP by wgmma_ss_kmajor_d64");
  constexpr int kBarDs = 1;  // named barriers 1, 2: the dS^T tile of step parity 0, 1 is complete
  constexpr int kBarOrd = 7; // ORDERED: 7, 8: a warpgroup's turn on a row block (poll, then adds)
  static_assert(!ORDERED || (DQ && !PIPE), "ORDERED: the dQ of the non-PIPE loop");

  extern __shared__ __align__(16) unsigned char smem_raw[];  // rounded up to 1024 below
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  unsigned char *sK = smem, *sV = smem + 2 * TILE;
  unsigned char *sStage = smem + Cfg::KV_BYTES;
  auto sQ = [&](int st) { return sStage + st * Cfg::STAGE_BYTES; };
  auto sdO = [&](int st) { return sStage + st * Cfg::STAGE_BYTES + TILE; };
  unsigned char *sDS = sStage + NST * Cfg::STAGE_BYTES;  // [parity][128 keys][64 rows], sw128
  unsigned char *sPT = sDS + (DQ || PIPE ? Cfg::DS_BYTES : 0);  // PIPE: [parity][warpgroup][64 keys][64 rows]
  float *sStat = reinterpret_cast<float *>(sPT + Cfg::PT_BYTES);
  auto sLse = [&](int st) { return sStat + st * 2 * BQ; };
  auto sDelta = [&](int st) { return sStat + st * 2 * BQ + BQ; };
  uint64_t *full = reinterpret_cast<uint64_t *>(sStat + NST * 2 * BQ);
  uint64_t *empty = full + NST, *kvbar = empty + NST;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t G = p.G, T_ = p.T, S = p.S, TG = T_ * G;
  // key-block-major; ORDERED: the last key block first (see the dQ adds below)
  const int64_t kblk = ORDERED ? (S + BN - 1) / BN - 1 - blockIdx.x / p.Hk : blockIdx.x / p.Hk;
  const int64_t g = blockIdx.x % p.Hk, b = blockIdx.z;
  const int64_t i0 = kblk * BN;
  const bool causal = p.causal != 0;
  // packed query rows [R_begin, R_end) that include every row that can see some key of the block;
  // R_begin rounded down to a multiple of 64 so each step's lse2/delta rows are one aligned bulk
  // copy (the rows before the first that sees the block are masked: < 1 step of extra work)
  int64_t t_lo = causal ? i0 - (S - T_) : 0;
  if (t_lo < 0) t_lo = 0;
  const int64_t R_begin = t_lo * G / BQ * BQ, R_end = TG;
  const int n_qblk = R_end > R_begin ? (int)((R_end - R_begin + BQ - 1) / BQ) : 0;

  ws_init_barriers<NST>(full, empty, kvbar);

  if (warp < 4) {  // ---------------- producer warpgroup ----------------
    setmaxnreg_dec<24>();
    if (warp != 0 || n_qblk == 0) return;  // one thread of warp 0 issues every copy
    if (lane != 0) return;
    const float *lse2_bg = ws_lse2 + (b * p.Hk + g) * stat_rows(TG), *delta_bg = ws_delta + (b * p.Hk + g) * stat_rows(TG);
    {
      tma_prefetch_map(&tm_q);
      tma_prefetch_map(&tm_do);
      mbar_arrive_expect_tx(kvbar, Cfg::KV_BYTES);  // rows past S count too (zero-filled)
      tma_load_4d(sK, &tm_k, kvbar, 0, (int)g, (int)i0, (int)b);
      tma_load_4d(sV, &tm_v, kvbar, 0, (int)g, (int)i0, (int)b);
    }
    for (int blk = 0; blk < n_qblk; ++blk) {
      const int st = blk % NST;
      if (blk >= NST) mbar_wait(&empty[st], ((blk / NST) - 1) & 1);  // the consumers released its last use
      const int64_t Rq = R_begin + (int64_t)blk * BQ;
      mbar_arrive_expect_tx(&full[st], 2 * TILE + Cfg::STAT_BYTES);
      if (q_evict_last) {  // MODA_CUDA_BWD_SEQ_L2 (default): every key block's CTA re-reads these rows
        const uint64_t pol = l2_policy_evict_last();
        tma_load_5d_hint(sQ(st), &tm_q, &full[st], 0, 0, (int)(Rq / G), (int)g, (int)b, pol);
        tma_load_5d_hint(sdO(st), &tm_do, &full[st], 0, 0, (int)(Rq / G), (int)g, (int)b, pol);
      } else {
        tma_load_5d(sQ(st), &tm_q, &full[st], 0, 0, (int)(Rq / G), (int)g, (int)b);
        tma_load_5d(sdO(st), &tm_do, &full[st], 0, 0, (int)(Rq / G), (int)g, (int)b);
      }
      // 64 rows from a multiple of 64: inside the padded stat_rows(T*G) (+inf / 0 past T*G)
      bulk_load(sLse(st), lse2_bg + Rq, BQ * 4, &full[st]);
      bulk_load(sDelta(st), delta_bg + Rq, BQ * 4, &full[st]);
    }
    return;
  }

  // ---------------- consumer warpgroups ----------------
  setmaxnreg_inc<240>();
  // (cwg by __shfl_sync from lane 0, so that ptxas keeps the descriptors in uniform registers and
  // drops the R2UR before each wgmma - 783 -> 669 instructions per v9 step - measured slower on
  // the H100 in session 9: dK/dV 9.78 -> 10.15 ms at T=16384, 19.7 -> 20.4-21.0 at G=16)
  const int cwarp = warp - 4, cwg = cwarp / 4, wq = cwarp % 4;  // wq: warp within its warpgroup
  const int qr = lane / 4, qc = lane % 4;
  const float scale_log2 = (float)p.scale * 1.4426950408889634f;
  const int64_t i0w = i0 + cwg * 64;  // this warpgroup's first key
  int64_t key_pos[2];
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) key_pos[h2] = i0w + wq * 16 + qr + 8 * h2;

  // PIPE: not zeroed here; the first step's dV/dK wgmmas overwrite them (scale-d = 0). With
  // zero-initialised accumulators that wgmmas then carry through the loop, ptxas serialises the
  // wgmmas (C7515) even where every group is waited for in its own step (bisected, session 7).
  float acc_dk[D / 8][4], acc_dv[D / 8][4];
  auto zero_acc = [&]() {
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_dk[j][e] = acc_dv[j][e] = 0.f;
  };
  if (!PIPE) zero_acc();

  const uint32_t k_w = smem_u32(sK) + cwg * TILE, v_w = smem_u32(sV) + cwg * TILE;
  // S^T = K_w Q^T, dP^T = V_w dO^T of step blk (waits for its stage): both operands K-major sw128
  // tiles (k16 step ks: +32 bytes). Issued and committed.
  float s[NT][4], dp[NT][4];
  auto issue_sdp = [&](int blk) {
    const int st = blk % NST;
    mbar_wait(&full[st], (blk / NST) & 1);
    wgmma_fence_operand(s);
    wgmma_fence_operand(dp);
    wgmma_fence();
    wgmma_ss_kmajor_d64<T, BQ>(s, k_w, smem_u32(sQ(st)), 0);
    wgmma_ss_kmajor_d64<T, BQ>(dp, v_w, smem_u32(sdO(st)), 0);
    wgmma_commit();
  };
  if constexpr (PIPE) {
    // v9: softmax(j+1) runs under dV/dK(j). Per step j, with P^T(j), dS^T(j) already in the
    // parity-(j&1) tiles:
    //   issue S/dP(j+1) (group A), issue dV/dK(j) (SS, group B), wait<1> (A retired, B running),
    //   softmax(j+1) -> the parity-((j+1)&1) tiles -> warpgroup barrier, wait<0> (B retired) ->
    //   release stage j -> (DQ, this warpgroup's turn) dQ(j), waited for.
    // Every group is retired inside its step: ptxas sees the group order within one loop body
    // (a group left in flight across the back-edge made it serialise the wgmmas, C7514/C7515).
    // Tile reuse: parity p is rewritten by softmax(j+2) in step j+1, after B_j retired (end of
    // step j); with DQ also after dQ(j) of the other warpgroup, hence the FREE barriers.
    // Named barriers: 1, 2 (kBarDs) the parity's dS^T tile has both halves; 3, 4 this warpgroup's
    // tiles are written; 5, 6 (DQ) the turn warpgroup's dQ of that parity is done.
    constexpr int kBarWg = 3, kBarFree = 5;
    // 32-bit indices (ws_bwd_maps keeps S and T*G below 2^31): the loop keeps two steps'
    // accumulators in 168 registers, so every register of index arithmetic counts
    const int S32 = (int)S, key_lim32 = (int)(S - T_), G32 = (int)G, Rb32 = (int)R_begin, i0w32 = (int)i0w;
    const int key_pos32[2] = {i0w32 + wq * 16 + qr, i0w32 + wq * 16 + qr + 8};
    float *dq_bg = DQ ? dq_accum + (b * p.Hk + g) * TG * D : nullptr;
    auto softmax_to_tiles = [&](int blk) {
      const int st = blk % NST, par = blk & 1;
      const int Rq = Rb32 + blk * BQ;
      wgmma_fence_operand(s);
      wgmma_fence_operand(dp);
      if constexpr (DQ) {  // the other warpgroup's dQ(blk - 2) still reads this parity's tile
        if (blk >= 2 && cwg != par) named_bar_sync(kBarFree + par, 256);
      }
      if (causal && key_lim32 + Rq / G32 < i0w32 + 63)  // the step's first row misses a key
        bwd_p_ds_store_t<T, NT, true>(s, dp, smem_u32(sLse(st)), smem_u32(sDelta(st)), qr, qc, scale_log2, key_pos32,
                                      key_lim32, Rq, G32, S32, smem_u32(sPT + (par * 2 + cwg) * TILE), wq * 16,
                                      smem_u32(sDS + par * 2 * TILE), cwg * 64 + wq * 16);
      else
        bwd_p_ds_store_t<T, NT, false>(s, dp, smem_u32(sLse(st)), smem_u32(sDelta(st)), qr, qc, scale_log2, key_pos32,
                                       key_lim32, Rq, G32, S32, smem_u32(sPT + (par * 2 + cwg) * TILE), wq * 16,
                                       smem_u32(sDS + par * 2 * TILE), cwg * 64 + wq * 16);
      fence_proxy_async_smem();  // this thread's tile stores -> visible to the SS wgmmas
      named_bar_sync(kBarWg + cwg, 128);
      if constexpr (DQ) {
        if (cwg != par) named_bar_arrive(kBarDs + par, 256);  // the turn warpgroup may read this half
      }
    };
    // dV += P^T dO, dK += dS^T Q of step blk: A = this warpgroup's P^T / dS^T rows (K-major),
    // B = the Q / dO tiles MN-major; the first step overwrites the accumulators
    auto issue_dvdk = [&](int blk) {
      const int st = blk % NST, par = blk & 1;
      wgmma_fence_operand(acc_dv);
      wgmma_fence_operand(acc_dk);
      wgmma_fence();
      const uint32_t pt_a = smem_u32(sPT + (par * 2 + cwg) * TILE), ds_a = smem_u32(sDS + par * 2 * TILE) + cwg * TILE;
#pragma unroll
      for (int ks = 0; ks < BQ / 16; ++ks)
        WgmmaSS<T, D, 0, 1>::run(acc_dv, wgmma_desc_sw128(pt_a + ks * 32, 16, 1024),
                                 wgmma_desc_sw128(smem_u32(sdO(st)) + ks * 16 * 128, BQ * 128, 1024), blk > 0 || ks > 0);
#pragma unroll
      for (int ks = 0; ks < BQ / 16; ++ks)
        WgmmaSS<T, D, 0, 1>::run(acc_dk, wgmma_desc_sw128(ds_a + ks * 32, 16, 1024),
                                 wgmma_desc_sw128(smem_u32(sQ(st)) + ks * 16 * 128, BQ * 128, 1024), blk > 0 || ks > 0);
      wgmma_commit();
    };
    // after dV/dK(blk) retired: release its stage; DQ: on this warpgroup's turn, dQ(blk)
    auto finish_step = [&](int blk) {
      const int par = blk & 1;
      wgmma_fence_operand(acc_dv);
      wgmma_fence_operand(acc_dk);
      mbar_arrive(&empty[blk % NST]);  // every consumer thread, as in the loop below
      if constexpr (DQ) {
        if (cwg == par) {
          named_bar_sync(kBarDs + par, 256);
          if (dq_red4)
            dq_step_reduce<T, BN, true>(smem_u32(sDS + par * 2 * TILE), smem_u32(sK), dq_bg,
                                        Rb32 + blk * BQ + wq * 16 + qr, R_end, qc);
          else
            dq_step_reduce<T, BN>(smem_u32(sDS + par * 2 * TILE), smem_u32(sK), dq_bg, Rb32 + blk * BQ + wq * 16 + qr,
                                  R_end, qc);
          if (blk + 2 < n_qblk) named_bar_arrive(kBarFree + par, 256);
        }
      }
    };
    if (n_qblk > 0) {
      mbar_wait(kvbar, 0);
      issue_sdp(0);
      wgmma_wait<0>();
      softmax_to_tiles(0);
      // every step but the last: the groups are issued unconditionally, so that ptxas sees which
      // one wait<1> retires (with a conditional S/dP issue it took the softmax's reads for reads
      // of in-flight accumulators and serialised, C7514)
      for (int blk = 0; blk + 1 < n_qblk; ++blk) {
        issue_sdp(blk + 1);
        issue_dvdk(blk);
        wgmma_wait<1>();  // S/dP(blk + 1) retired; dV/dK(blk) runs under its softmax
        softmax_to_tiles(blk + 1);
        wgmma_wait<0>();
        finish_step(blk);
      }
      issue_dvdk(n_qblk - 1);
      wgmma_wait<0>();
      finish_step(n_qblk - 1);
    }
    if (n_qblk == 0) zero_acc();  // no query row sees the block: dK = dV = 0
    const int64_t kp[2] = {key_pos32[0], key_pos32[1]};  // (key_pos, recomputed: fewer live registers)
    store_dk_dv<T>(p, acc_dk, acc_dv, kp, b, g, qc);
  } else {
    // Per step: S/dP -> softmax -> dV/dK (+ dS^T to smem) -> release the stage -> dQ, each GEMM
    // waited for before the next phase; the two warpgroups' phases interleave on the tensor cores.
    // (Issuing S/dP(blk + 1) before waiting for dV/dK(blk) made ptxas serialize the wgmmas.)
    if (n_qblk > 0) mbar_wait(kvbar, 0);
    for (int blk = 0; blk < n_qblk; ++blk) {
      const int st = blk % NST;
      const int64_t Rq = R_begin + (int64_t)blk * BQ;
      issue_sdp(blk);
      wgmma_wait<0>();
      wgmma_fence_operand(s);
      wgmma_fence_operand(dp);

      // P^T and dS^T in place (as bwd_dkv_wgmma_kernel), packed as the A fragments of dV/dK
      uint32_t pa[BQ / 16][4], da[BQ / 16][4];
      if (causal && S - T_ + Rq / G < i0w + 63)  // the step's first row misses a key
        bwd_p_ds_causal<NT, true>(s, dp, sLse(st), sDelta(st), qc, scale_log2, key_pos, S - T_, Rq, G);
      else
        bwd_p_ds_causal<NT, false>(s, dp, sLse(st), sDelta(st), qc, scale_log2, key_pos, S - T_, Rq, G);
      pack_acc_as_a<T, BQ / 16>(s, pa);
      pack_acc_as_a<T, BQ / 16>(dp, da);
      // dV += P^T dO, dK += dS^T Q
      wgmma_fence_operand(acc_dv);
      wgmma_fence_operand(acc_dk);
      wgmma_fence();
      wgmma_rs_mnmajor<T, D, BQ / 16>(acc_dv, pa, smem_u32(sdO(st)), BQ, 1);
      wgmma_rs_mnmajor<T, D, BQ / 16>(acc_dk, da, smem_u32(sQ(st)), BQ, 1);
      wgmma_commit();
      if constexpr (DQ) {
        // dS^T -> the step parity's 128-key tile (this warpgroup's 64 key rows)
        store_ds_t<NT>(sDS + (blk & 1) * 2 * TILE, BN, cwg * 64 + wq * 16, da, key_pos, S, qr, qc);
        fence_proxy_async_smem();  // this thread's dS^T stores -> visible to the dQ wgmma
      }
      wgmma_wait<0>();
      wgmma_fence_operand(acc_dv);
      wgmma_fence_operand(acc_dk);
      // every thread arrives after its own reads of the stage's lse2/delta (and its warpgroup's wgmma
      // reads of Q and dO): one arrival per warp after __syncwarp is enough by the memory model, but
      // compute-sanitizer's racecheck then reports the next bulk copy into the stage as a race
      mbar_arrive(&empty[st]);

      if constexpr (DQ) {
        // The warpgroups take turns at dQ over all 128 keys; the other one only announces its half.
        // The tile of this parity is written again two steps on, by which time its reader has passed
        // its wgmma wait: the writer's intermediate step waited (or was waited for) on the other
        // parity's barrier.
        if (cwg == (blk & 1)) {
          named_bar_sync(kBarDs + (blk & 1), 256);
          if constexpr (ORDERED) {
            // The key blocks that see this row block add in DESCENDING order, the last one
            // first, so this CTA waits only for key block kblk + 1, which the reversed grid
            // launched no later than this one (no deadlock) and which starts at a later row block,
            // so is ahead of this CTA on every row block they share: neighbours run in step.
            // Ascending order chained each CTA to the end of the one before (every resident key
            // block finished with key block 0): 2.2x slower at T=16384 (session 8, H100).
            // The last key block k that sees Rq (R_begin(k) <= Rq, R_begin as above, monotone):
            // max(0, k BN - (S - T)) G < Rq + BQ  <=>  k <= (floor((Rq + BQ - 1) / G) + S - T) / BN.
            int64_t kmax = (S + BN - 1) / BN - 1;
            if (causal) {
              const int64_t kc = ((Rq + BQ - 1) / G + (S - T_)) / BN;
              if (kc < kmax) kmax = kc;
            }
            const int turn = (int)(kmax - kblk);  // adds before this one: key blocks kblk+1 .. kmax
            float acc_dq[8][4];
            dq_step<T, BN>(smem_u32(sDS) + (blk & 1) * 2 * TILE, smem_u32(sK), acc_dq);
            int *sem = dq_sem + (b * p.Hk + g) * (stat_rows(TG) / BQ) + Rq / BQ;
            if (wq == 0 && lane == 0) sem_wait_eq(sem, turn);
            named_bar_sync(kBarOrd + cwg, 128);
            // the first turn (key block kmax) covers every row of the block (P = 0 on the rows it
            // does not see): it stores
            dq_add_ordered(acc_dq, dq_accum + (b * p.Hk + g) * TG * D, Rq + wq * 16 + qr, R_end, qc, turn == 0);
            named_bar_sync(kBarOrd + cwg, 128);  // every warp's adds are issued before the release
            if (wq == 0 && lane == 0) sem_release(sem, turn + 1);
          } else {
            // this warp's 16 query rows of the step: unscaled dS K, added by vector reductions
            if (dq_red4)
              dq_step_reduce<T, BN, true>(smem_u32(sDS) + (blk & 1) * 2 * TILE, smem_u32(sK),
                                          dq_accum + (b * p.Hk + g) * TG * D, Rq + wq * 16 + qr, R_end, qc);
            else
              dq_step_reduce<T, BN>(smem_u32(sDS) + (blk & 1) * 2 * TILE, smem_u32(sK),
                                    dq_accum + (b * p.Hk + g) * TG * D, Rq + wq * 16 + qr, R_end, qc);
          }
        } else {
          named_bar_arrive(kBarDs + (blk & 1), 256);
        }
      }
    }
  }

  if constexpr (!PIPE) store_dk_dv<T>(p, acc_dk, acc_dv, key_pos, b, g, qc);
#elif defined(__CUDA_ARCH__)
  __trap();  // a build without sm_90a code: fail loudly rather than leave dK and dV unwritten
#endif
}

// v10 (the default where the kernel computes no dQ; MODA_CUDA_BWD_WS=3 everywhere): steps of
// 128 query rows, FlashAttention-3's
// hdim-64 backward layout on this kernel's producer. Why: the v9 step (64 rows) is latency-bound
// at ~31% of the tensor rate and ~34% of the issue slots (docs/CUDA_NOTES.md, session 21), and its
// 128-row form does not fit shared memory with P^T and dS^T tiles of two parities. Here, per step
// and consumer warpgroup (64 keys):
//   S^T = K_w Q^T, dP^T = V_w dO^T   SS wgmma m64n128k16 (half the wgmma issues per FLOP)
//   P^T, dS^T in registers            (bwd_p_ds_causal, as the v8 loop)
//   dV += P^T dO, dK += dS^T Q        RS wgmma, k = 128 rows: P^T never goes through smem
//   dS^T -> the step parity's tile    [2 row halves][128 keys][64 rows], sw128
//   dQ of its own 64 rows             dS K over all 128 keys (SS, both halves of the block's keys)
// so no step has a dQ "turn": both warpgroups meet once per step (the dS^T tile is complete) and
// each reduces a 64 x 64 float32 block into the accumulator. Nothing overlaps within a warpgroup
// (the registers of two 128-row steps do not fit); the two warpgroups interleave on the tensor
// cores as FA3's do. Q and dO come in 64-row TMA boxes, two per tensor and step; lse2 / delta in
// 128-row bulk copies (stat_rows pads the workspace to 128 rows for this).
struct WsBwdQ128Config {
  static constexpr int D = 64, BN = 128, BQ = 128, NST = 3, NTHREADS = 384;
  static constexpr int TILE = 64 * D * 2;            // one sw128 tile of 64 rows (8 KB)
  static constexpr int KV_BYTES = 2 * 2 * TILE;      // the K and V blocks, 128 rows each
  static constexpr int STAGE_BYTES = 2 * 2 * TILE;   // Q and dO of one step, 128 rows each
  static constexpr int DS_BYTES = 2 * 4 * TILE;      // dS^T: 2 step parities x 128 keys x 128 rows
  static constexpr int STAT_BYTES = 2 * BQ * 4;      // lse2, delta of one step
  static constexpr int BAR_BYTES = 64;               // full[NST], empty[NST], kv: 8 bytes each
  static constexpr int smem_bytes(bool dq) {
    return 1024 + KV_BYTES + NST * STAGE_BYTES + (dq ? DS_BYTES : 0) + NST * STAT_BYTES + BAR_BYTES;
  }
  static_assert((2 * NST + 1) * 8 <= BAR_BYTES, "barriers fit");
};
static_assert(WsBwdQ128Config::smem_bytes(true) <= 227 * 1024, "fits the H100's shared memory per block");

// OVL (MODA_CUDA_BWD_WS=4, with DQ): dV/dK are not waited for before the dS^T barrier, so the dQ
// wgmmas queue behind them and the stage is released after both. PP (without DQ, whose dS^T
// barrier couples the warpgroups anyway): S/dP and dV/dK issues in PingPong order.
template <typename T, bool DQ, bool OVL, bool PP = false>
__global__ void __launch_bounds__(WsBwdQ128Config::NTHREADS, 1)
bwd_dkv_wgmma_q128_kernel(const moda_attn_params p, const float *ws_lse2, const float *ws_delta, float *dq_accum,
                          const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v,
                          const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_do,
                          int q_evict_last, int dq_red4) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = WsBwdQ128Config;
  constexpr int D = Cfg::D, BN = Cfg::BN, BQ = Cfg::BQ, NST = Cfg::NST, TILE = Cfg::TILE;
  constexpr int NT = BQ / 8;
  static_assert(D == 64, "S/dP by wgmma_ss_kmajor_d64");
  constexpr int kBarDs = 1;  // named barriers 1, 2: both halves of step parity 0, 1's dS^T tile are written
  constexpr int kBarPP = 3;  // PP: named barriers 3, 4
  static_assert(BQ % 64 == 0 && stat_rows(1) % BQ == 0, "a step's stats are one bulk copy inside the padding");
  static_assert(!(PP && DQ), "PP: the kernel without dQ");

  extern __shared__ __align__(16) unsigned char smem_raw[];  // rounded up to 1024 below
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  unsigned char *sK = smem, *sV = smem + 2 * TILE;
  unsigned char *sStage = smem + Cfg::KV_BYTES;
  auto sQ = [&](int st) { return sStage + st * Cfg::STAGE_BYTES; };
  auto sdO = [&](int st) { return sStage + st * Cfg::STAGE_BYTES + 2 * TILE; };
  unsigned char *sDS = sStage + NST * Cfg::STAGE_BYTES;  // DQ: [parity][row half][128 keys][64 rows]
  float *sStat = reinterpret_cast<float *>(sDS + (DQ ? Cfg::DS_BYTES : 0));
  auto sLse = [&](int st) { return sStat + st * 2 * BQ; };
  auto sDelta = [&](int st) { return sStat + st * 2 * BQ + BQ; };
  uint64_t *full = reinterpret_cast<uint64_t *>(sStat + NST * 2 * BQ);
  uint64_t *empty = full + NST, *kvbar = empty + NST;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t G = p.G, T_ = p.T, S = p.S, TG = T_ * G;
  const int64_t kblk = blockIdx.x / p.Hk, g = blockIdx.x % p.Hk, b = blockIdx.z;
  const int64_t i0 = kblk * BN;
  const bool causal = p.causal != 0;
  // packed rows from the first that can see a key of the block, rounded down to a step
  int64_t t_lo = causal ? i0 - (S - T_) : 0;
  if (t_lo < 0) t_lo = 0;
  const int64_t R_begin = t_lo * G / BQ * BQ, R_end = TG;
  const int n_qblk = R_end > R_begin ? (int)((R_end - R_begin + BQ - 1) / BQ) : 0;

  ws_init_barriers<NST>(full, empty, kvbar);

  if (warp < 4) {  // ---------------- producer warpgroup ----------------
    setmaxnreg_dec<24>();
    if (warp != 0 || n_qblk == 0 || lane != 0) return;
    const float *lse2_bg = ws_lse2 + (b * p.Hk + g) * stat_rows(TG), *delta_bg = ws_delta + (b * p.Hk + g) * stat_rows(TG);
    tma_prefetch_map(&tm_q);
    tma_prefetch_map(&tm_do);
    mbar_arrive_expect_tx(kvbar, Cfg::KV_BYTES);
    tma_load_4d(sK, &tm_k, kvbar, 0, (int)g, (int)i0, (int)b);
    tma_load_4d(sV, &tm_v, kvbar, 0, (int)g, (int)i0, (int)b);
    const uint64_t pol = l2_policy_evict_last();
    for (int blk = 0; blk < n_qblk; ++blk) {
      const int st = blk % NST;
      if (blk >= NST) mbar_wait(&empty[st], ((blk / NST) - 1) & 1);
      const int64_t Rq = R_begin + (int64_t)blk * BQ;
      mbar_arrive_expect_tx(&full[st], Cfg::STAGE_BYTES + Cfg::STAT_BYTES);
      // two 64-row boxes per tensor (rows past T*G, even whole boxes, arrive zero-filled)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int tok = (int)((Rq + 64 * h) / G);
        if (q_evict_last) {
          tma_load_5d_hint(sQ(st) + h * TILE, &tm_q, &full[st], 0, 0, tok, (int)g, (int)b, pol);
          tma_load_5d_hint(sdO(st) + h * TILE, &tm_do, &full[st], 0, 0, tok, (int)g, (int)b, pol);
        } else {
          tma_load_5d(sQ(st) + h * TILE, &tm_q, &full[st], 0, 0, tok, (int)g, (int)b);
          tma_load_5d(sdO(st) + h * TILE, &tm_do, &full[st], 0, 0, tok, (int)g, (int)b);
        }
      }
      bulk_load(sLse(st), lse2_bg + Rq, BQ * 4, &full[st]);
      bulk_load(sDelta(st), delta_bg + Rq, BQ * 4, &full[st]);
    }
    return;
  }

  // ---------------- consumer warpgroups ----------------
  setmaxnreg_inc<240>();
  const int cwarp = warp - 4, cwg = cwarp / 4, wq = cwarp % 4;
  const int qr = lane / 4, qc = lane % 4;
  const float scale_log2 = (float)p.scale * 1.4426950408889634f;
  const int64_t i0w = i0 + cwg * 64;
  const int64_t key_pos[2] = {i0w + wq * 16 + qr, i0w + wq * 16 + qr + 8};
  float acc_dk[D / 8][4], acc_dv[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[j][e] = acc_dv[j][e] = 0.f;
  float *dq_bg = DQ ? dq_accum + (b * p.Hk + g) * TG * D : nullptr;
  const uint32_t k_w = smem_u32(sK) + cwg * TILE, v_w = smem_u32(sV) + cwg * TILE;
  PingPong pp{kBarPP, cwg};  // PP: 2 issue points per step (S/dP, dV/dK)

  if (n_qblk > 0) mbar_wait(kvbar, 0);
  for (int blk = 0; blk < n_qblk; ++blk) {
    const int st = blk % NST, par = blk & 1;
    const int64_t Rq = R_begin + (int64_t)blk * BQ;
    float s[NT][4], dp[NT][4];
    mbar_wait(&full[st], (blk / NST) & 1);
    if constexpr (PP) pp.before();
    wgmma_fence_operand(s);
    wgmma_fence_operand(dp);
    wgmma_fence();
    wgmma_ss_kmajor_d64<T, BQ>(s, k_w, smem_u32(sQ(st)), 0);
    wgmma_ss_kmajor_d64<T, BQ>(dp, v_w, smem_u32(sdO(st)), 0);
    wgmma_commit();
    if constexpr (PP) pp.after(false);
    wgmma_wait<0>();
    wgmma_fence_operand(s);
    wgmma_fence_operand(dp);

    uint32_t pa[BQ / 16][4], da[BQ / 16][4];
    if (causal && S - T_ + Rq / G < i0w + 63)  // the step's first row misses a key of this warpgroup
      bwd_p_ds_causal<NT, true>(s, dp, sLse(st), sDelta(st), qc, scale_log2, key_pos, S - T_, Rq, G);
    else
      bwd_p_ds_causal<NT, false>(s, dp, sLse(st), sDelta(st), qc, scale_log2, key_pos, S - T_, Rq, G);
    pack_acc_as_a<T, BQ / 16>(s, pa);
    pack_acc_as_a<T, BQ / 16>(dp, da);
    if constexpr (PP) pp.before();
    wgmma_fence_operand(acc_dv);
    wgmma_fence_operand(acc_dk);
    wgmma_fence();
    wgmma_rs_mnmajor<T, D, BQ / 16>(acc_dv, pa, smem_u32(sdO(st)), BQ, 1);
    wgmma_rs_mnmajor<T, D, BQ / 16>(acc_dk, da, smem_u32(sQ(st)), BQ, 1);
    wgmma_commit();
    if constexpr (PP) pp.after(blk + 1 == n_qblk);
    if constexpr (DQ) {
      // this warpgroup's 64 key rows of dS^T, both row halves; the parity's previous readers (dQ
      // of step blk - 2, both warpgroups) finished before the barrier of step blk - 1
      store_ds_t<NT>(sDS + par * 4 * TILE, BN, cwg * 64 + wq * 16, da, key_pos, S, qr, qc);
      fence_proxy_async_smem();  // this thread's dS^T stores -> visible to the dQ wgmmas
    }
    auto release_stage = [&]() {  // the stage's Q, dO and stats are read (dQ reads only K and dS^T)
      wgmma_fence_operand(acc_dv);
      wgmma_fence_operand(acc_dk);
      mbar_arrive(&empty[st]);
    };
    if constexpr (!(DQ && OVL)) {
      wgmma_wait<0>();
      release_stage();
    }
    if constexpr (DQ) {
      named_bar_sync(kBarDs + par, 256);
      const uint32_t ds_half = smem_u32(sDS + par * 4 * TILE) + cwg * 2 * TILE;  // rows cwg*64 .. +63
      float acc_dq[D / 8][4];
      dq_step_issue<T, BN>(ds_half, smem_u32(sK), acc_dq);  // OVL: queued behind dV/dK on the tensor cores
      wgmma_wait<0>();
      wgmma_fence_operand(acc_dq);
      if constexpr (OVL) release_stage();
      const int64_t R = Rq + cwg * 64 + wq * 16 + qr;
      if (dq_red4) dq_reduce<true>(acc_dq, dq_bg, R, R_end, qc);
      else dq_reduce<false>(acc_dq, dq_bg, R, R_end, qc);
    }
  }
  store_dk_dv<T>(p, acc_dk, acc_dv, key_pos, b, g, qc);
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// v11 (the default; MODA_CUDA_BWD_DQ_WS=0 turns it off): the sequence part of dQ, warp-specialised,
// for the flows where a dQ kernel runs (deterministic, or the concurrent backward) and the depth
// kernel finishes dq. Why: the v10 dK/dV kernel without dQ runs at ~600 TF/s at T=16384 (ncu,
// session 22), with dQ by float32 reductions at ~330: the reductions (128-key blocks: ~17 GB of
// red.add at T=16384) cost more than a second pass over the keys. Here, per CTA 128 packed query
// rows of one (b, KV head): warpgroup 0's one thread loads the rows' Q and dO once (TMA) and streams
// K/V blocks of 128 keys through NST stages; warpgroups 1 and 2 own 64 rows each and need nothing
// from each other:
//   S = Q_w K^T, dP = dO_w V^T   SS wgmma m64n128k16 (A = the Q / dO tile, B = the K / V block, K-major)
//   P, dS in registers           P = exp2(S scale_log2 - lse2), dS = P (dP - delta); keys >= S and
//                                 causal-hidden keys masked to 0 (only in blocks that need it)
//   dQ += dS K                   RS wgmma, k = 128 keys, B = the K block read MN-major
// dQ stays in registers for the whole key loop: written once, unscaled, in float32 to dq_buf
// [B, Hk, T*G, d] (deterministic; the depth kernel adds its part, scales and writes dq).
struct DqWsConfig {
  static constexpr int D = 64, BM = 128, BN = 128, NST = 4, NTHREADS = 384;
  static constexpr int TILE = 64 * D * 2;            // one sw128 tile of 64 rows (8 KB)
  static constexpr int QDO_BYTES = 2 * 2 * TILE;     // Q and dO of the CTA's 128 rows
  static constexpr int STAGE_BYTES = 2 * 2 * TILE;   // K and V of one block, 128 keys each
  static constexpr int STAT_BYTES = 2 * BM * 4;      // lse2, delta of the 128 rows
  static constexpr int BAR_BYTES = 128;              // full[NST], empty[NST], qbar: 8 bytes each
  static constexpr int SMEM_BYTES = 1024 + QDO_BYTES + NST * STAGE_BYTES + STAT_BYTES + BAR_BYTES;
  static_assert((2 * NST + 1) * 8 <= BAR_BYTES, "barriers fit");
};
static_assert(DqWsConfig::SMEM_BYTES <= 227 * 1024, "fits the H100's shared memory per block");
static_assert(DqWsConfig::BN == WsBwdConfig<>::BN && DqWsConfig::BM % WsBwdConfig<>::BQ == 0,
              "ws_bwd_maps' boxes: one K/V box per key block, 64-row Q/dO boxes");

// P = exp2(S scale_log2 - lse2), dS = P (dP - delta) in place on a warp's 16 query rows x 8*NT key
// columns (element e of tile nt: row qr + 8*(e >> 1), key key0 + nt*8 + 2*qc + (e & 1)); with MASK,
// keys past key_max[row] (the row's last visible key: causal limit and S - 1) give P = dS = 0.
template <int NT, bool MASK>
__device__ __forceinline__ void dq_p_ds_rows(float (&s)[NT][4], float (&dp)[NT][4], const float (&lse2)[2],
                                             const float (&delta)[2], float scale_log2, int key0,
                                             const int (&key_max)[2], int qc) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h2 = e >> 1;
      const bool vis = !MASK || key0 + nt * 8 + 2 * qc + (e & 1) <= key_max[h2];
      float pe, ds;
      p_ds(s[nt][e], dp[nt][e], lse2[h2], delta[h2], scale_log2, vis, pe, ds);
      dp[nt][e] = ds;
    }
}

// PP: the issue points (S/dP of block 0; dQ of block kb with S/dP of kb + 1; dQ of the last) in
// PingPong order (the default, pp_mode). PIPE (MODA_CUDA_BWD_DQ_WS=2, opt-in: 92.2 ms at T=65536
// against PP's 85.3, session 23): each warpgroup walks the
// stages in 64-key halves with two register sets, S/dP of half h + 1 issued before the softmax of
// half h, so that the softmax runs under the warpgroup's own GEMMs (FA3's intra-warpgroup
// overlap; 128-key blocks leave no registers for a second set).
template <typename T, bool PP = false, bool PIPE = false>
__global__ void __launch_bounds__(DqWsConfig::NTHREADS, 1)
bwd_dq_wgmma_ws_kernel(const moda_attn_params p, const float *ws_lse2, const float *ws_delta, float *dq_buf,
                       const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v,
                       const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_do) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = DqWsConfig;
  constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, NST = Cfg::NST, TILE = Cfg::TILE;
  constexpr int NT = BN / 8;
  static_assert(D == 64, "S/dP by wgmma_ss_kmajor_d64");
  static_assert(stat_rows(1) % BM == 0, "the CTA's stats are one bulk copy inside the padding");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  unsigned char *sQ = smem, *sdO = smem + 2 * TILE;  // [128 rows][64], two 64-row tiles each
  unsigned char *sStage = smem + Cfg::QDO_BYTES;
  auto sK = [&](int st) { return sStage + st * Cfg::STAGE_BYTES; };
  auto sV = [&](int st) { return sStage + st * Cfg::STAGE_BYTES + 2 * TILE; };
  float *sLse = reinterpret_cast<float *>(sStage + NST * Cfg::STAGE_BYTES), *sDelta = sLse + BM;
  uint64_t *full = reinterpret_cast<uint64_t *>(sDelta + BM);
  uint64_t *empty = full + NST, *qbar = empty + NST;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t G = p.G, T_ = p.T, S = p.S, TG = T_ * G;
  const int64_t tile = gridDim.x - 1 - blockIdx.x;  // heavy (late) causal tiles first
  const int64_t g = blockIdx.y, b = blockIdx.z;
  const int64_t R0 = tile * BM;
  const bool causal = p.causal != 0;
  // key blocks that some row of the tile sees: up to the last row's causal limit (S - T + its token)
  int64_t key_end = S;
  if (causal) {
    const int64_t R_last = (R0 + BM < TG ? R0 + BM : TG) - 1;
    const int64_t lim = S - T_ + R_last / G + 1;
    if (lim < key_end) key_end = lim;
  }
  const int n_kblk = key_end > 0 ? (int)((key_end + BN - 1) / BN) : 0;

  ws_init_barriers<NST>(full, empty, qbar);

  if (warp < 4) {  // ---------------- producer warpgroup ----------------
    setmaxnreg_dec<24>();
    if (warp != 0 || lane != 0) return;
    tma_prefetch_map(&tm_k);
    tma_prefetch_map(&tm_v);
    // the tile's Q, dO (rows past T*G zero-filled) and stats (padding: lse2 = +inf, delta = 0)
    mbar_arrive_expect_tx(qbar, Cfg::QDO_BYTES + Cfg::STAT_BYTES);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int tok = (int)((R0 + 64 * h) / G);
      tma_load_5d(sQ + h * TILE, &tm_q, qbar, 0, 0, tok, (int)g, (int)b);
      tma_load_5d(sdO + h * TILE, &tm_do, qbar, 0, 0, tok, (int)g, (int)b);
    }
    const int64_t stat_off = (b * p.Hk + g) * stat_rows(TG) + R0;
    bulk_load(sLse, ws_lse2 + stat_off, BM * 4, qbar);
    bulk_load(sDelta, ws_delta + stat_off, BM * 4, qbar);
    for (int kb = 0; kb < n_kblk; ++kb) {
      const int st = kb % NST;
      if (kb >= NST) mbar_wait(&empty[st], ((kb / NST) - 1) & 1);
      mbar_arrive_expect_tx(&full[st], Cfg::STAGE_BYTES);  // keys past S count too (zero-filled)
      tma_load_4d(sK(st), &tm_k, &full[st], 0, (int)g, kb * BN, (int)b);
      tma_load_4d(sV(st), &tm_v, &full[st], 0, (int)g, kb * BN, (int)b);
    }
    return;
  }

  // ---------------- consumer warpgroups ----------------
  setmaxnreg_inc<240>();
  const int cwarp = warp - 4, cwg = cwarp / 4, wq = cwarp % 4;
  const int qr = lane / 4, qc = lane % 4;
  const float scale_log2 = (float)p.scale * 1.4426950408889634f;
  const int rloc = cwg * 64 + wq * 16 + qr;  // this lane's first row in the tile (+8: its second)
  // 32-bit key indices (ws_bwd_maps keeps S below 2^31); key_max: each row's last visible key
  int key_max[2];
  const int S32 = (int)S;
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    const int64_t R = R0 + rloc + 8 * h2;
    int km = S32 - 1;
    if (causal && R < TG) {
      const int64_t c = S - T_ + R / G;
      if (c < km) km = (int)c;
    }
    key_max[h2] = km;
  }
  // every key of block kb visible to every row of this warpgroup: no per-element mask
  int64_t R_first = R0 + cwg * 64;
  if (R_first >= TG) R_first = TG - 1;
  const int64_t wg_key_max64 = causal ? (S - T_ + R_first / G < S - 1 ? S - T_ + R_first / G : S - 1) : S - 1;
  const int wg_key_max = (int)(wg_key_max64 < -1 ? -1 : wg_key_max64);

  // not zeroed: the first block's dQ wgmmas overwrite it (scale-d = 0); zero-initialised
  // accumulators carried through a loop with a group in flight made ptxas serialise (v9, C7515)
  float acc_dq[D / 8][4];
  float s[NT][4], dp[NT][4];
  const uint32_t q_w = smem_u32(sQ) + cwg * TILE, do_w = smem_u32(sdO) + cwg * TILE;
  auto issue_sdp = [&](int kb) {
    const int st = kb % NST;
    mbar_wait(&full[st], (kb / NST) & 1);
    wgmma_fence_operand(s);
    wgmma_fence_operand(dp);
    wgmma_fence();
    wgmma_ss_kmajor_d64<T, BN>(s, q_w, smem_u32(sK(st)), 0);
    wgmma_ss_kmajor_d64<T, BN>(dp, do_w, smem_u32(sV(st)), 0);
    wgmma_commit();
  };
  float lse2[2], delta[2];  // this lane's two rows' stats (read once the tile's copies land)
  uint32_t ds_a[BN / 16][4];
  PingPong pp{1, cwg};  // PP: named barriers 1, 2; n_kblk + 1 issue points
  // P, dS of block kb (its S/dP retired), packed as the A fragments of dQ += dS K, issued (PP: in
  // this warpgroup's turn, which the caller ends with pp.after once it has issued the rest)
  auto softmax_issue_dq = [&](int kb) {
    wgmma_fence_operand(s);
    wgmma_fence_operand(dp);
    const int key0 = kb * BN;
    if (key0 + BN - 1 > wg_key_max) dq_p_ds_rows<NT, true>(s, dp, lse2, delta, scale_log2, key0, key_max, qc);
    else dq_p_ds_rows<NT, false>(s, dp, lse2, delta, scale_log2, key0, key_max, qc);
    pack_acc_as_a<T, BN / 16>(dp, ds_a);
    if constexpr (PP) pp.before();
    wgmma_fence_operand(acc_dq);
    wgmma_fence();
    wgmma_rs_mnmajor<T, D, BN / 16>(acc_dq, ds_a, smem_u32(sK(kb % NST)), BN, kb > 0 ? 1 : 0);
    wgmma_commit();
  };
  mbar_wait(qbar, 0);
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    lse2[h2] = sLse[rloc + 8 * h2];
    delta[h2] = sDelta[rloc + 8 * h2];
  }
  if constexpr (PIPE) {
    static_assert(!PP, "PIPE without PP");
    // halves h = 0 .. 2 n_kblk - 1 (keys 64 h ..): even h in the X registers, odd h in Y
    constexpr int NH = 8;  // n8 tiles of a 64-key half
    float sX[NH][4], dpX[NH][4], sY[NH][4], dpY[NH][4];
    uint32_t dsX[4][4], dsY[4][4];
    auto half_k = [&](int h) { return smem_u32(sK((h >> 1) % NST)) + (h & 1) * TILE; };
    auto half_v = [&](int h) { return smem_u32(sV((h >> 1) % NST)) + (h & 1) * TILE; };
    auto issue_sdp_h = [&](int h, float (&sr)[NH][4], float (&dpr)[NH][4]) {
      if ((h & 1) == 0) mbar_wait(&full[(h >> 1) % NST], ((h >> 1) / NST) & 1);
      wgmma_fence_operand(sr);
      wgmma_fence_operand(dpr);
      wgmma_fence();
      wgmma_ss_kmajor_d64<T, 64>(sr, q_w, half_k(h), 0);
      wgmma_ss_kmajor_d64<T, 64>(dpr, do_w, half_v(h), 0);
      wgmma_commit();
    };
    // P, dS of half h packed into ds, dQ += dS K_h issued; FENCE_ACC = false where dQ of the
    // previous half is still running (wgmma-to-wgmma accumulation needs no fence, and a fence
    // of acc_dq there made ptxas serialise, C7514)
    auto softmax_issue_dq_h = [&](int h, float (&sr)[NH][4], float (&dpr)[NH][4], uint32_t (&ds)[4][4],
                                  auto fence_acc) {
      wgmma_fence_operand(sr);
      wgmma_fence_operand(dpr);
      const int key0 = h * 64;
      if (key0 + 63 > wg_key_max) dq_p_ds_rows<NH, true>(sr, dpr, lse2, delta, scale_log2, key0, key_max, qc);
      else dq_p_ds_rows<NH, false>(sr, dpr, lse2, delta, scale_log2, key0, key_max, qc);
      pack_acc_as_a<T, 4>(dpr, ds);
      if constexpr (decltype(fence_acc)::value) wgmma_fence_operand(acc_dq);
      wgmma_fence();
      wgmma_rs_mnmajor<T, D, 4>(acc_dq, ds, half_k(h), 64, h > 0 ? 1 : 0);
      wgmma_commit();
    };
    // per stage (halves h, h + 1): both S/dP issued, the softmax of h under S/dP(h + 1), that of
    // h + 1 under dQ(h); every group retired inside the body (a group in flight across the
    // back-edge made ptxas serialise: v9, and this loop's first form)
    for (int kb = 0; kb < n_kblk; ++kb) {
      const int h = 2 * kb;
      issue_sdp_h(h, sX, dpX);
      issue_sdp_h(h + 1, sY, dpY);
      wgmma_wait<1>();  // S/dP(h) retired
      softmax_issue_dq_h(h, sX, dpX, dsX, std::true_type{});
      wgmma_wait<1>();  // S/dP(h + 1) retired; dQ(h) may run on
      softmax_issue_dq_h(h + 1, sY, dpY, dsY, std::false_type{});
      wgmma_wait<0>();
      wgmma_fence_operand(acc_dq);
      mbar_arrive(&empty[kb % NST]);
    }
    if (n_kblk == 0) {
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dq[j][e] = 0.f;
    }
  } else if (n_kblk > 0) {
    if constexpr (PP) pp.before();
    issue_sdp(0);
    if constexpr (PP) pp.after(false);
    wgmma_wait<0>();
    // every block but the last: the groups issued unconditionally (as the v9 loop, so that ptxas
    // sees which group wait<1> retires): dQ(kb), then S/dP(kb + 1) queued behind it
    for (int kb = 0; kb + 1 < n_kblk; ++kb) {
      softmax_issue_dq(kb);
      issue_sdp(kb + 1);
      if constexpr (PP) pp.after(false);
      wgmma_wait<1>();  // dQ(kb) retired: block kb's K/V are read
      wgmma_fence_operand(acc_dq);
      mbar_arrive(&empty[kb % NST]);
      wgmma_wait<0>();
    }
    softmax_issue_dq(n_kblk - 1);
    if constexpr (PP) pp.after(true);
    wgmma_wait<0>();
    wgmma_fence_operand(acc_dq);
    mbar_arrive(&empty[(n_kblk - 1) % NST]);
  } else {
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_dq[j][e] = 0.f;
  }
  // rows < T*G: unscaled float32, every element once
  store_acc_rows_f32<D>(acc_dq, dq_buf + (b * p.Hk + g) * TG * D, R0 + rloc, TG, qc);
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// The four TMA maps, or false where one is not encodable (or G does not divide the 64-row box).
bool ws_bwd_maps(const moda_attn_params *p, CUtensorMap *tm_k, CUtensorMap *tm_v, CUtensorMap *tm_q,
                 CUtensorMap *tm_do) {
  if (p->d != 64 || 64 % p->G != 0) return false;
  // TMA coordinates are 32-bit: key and token indices (and the packed rows) stay below 2^31
  if (p->S >= (1ll << 31) - 256 || p->T * p->G >= (1ll << 31) - 64) return false;
  return !encode_rows_map(tm_k, p->k, p->B, p->S, p->Hk, 64, p->k_stride, WsBwdConfig<>::BN) &&
         !encode_rows_map(tm_v, p->v, p->B, p->S, p->Hk, 64, p->v_stride, WsBwdConfig<>::BN) &&
         !encode_packed_rows_map(tm_q, p->q, p->B, p->T, p->Hk, p->G, 64, p->q_stride, WsBwdConfig<>::BQ) &&
         !encode_packed_rows_map(tm_do, p->dout, p->B, p->T, p->Hk, p->G, 64, p->dout_stride, WsBwdConfig<>::BQ);
}

// A default-on switch: 1 unless the variable is set and starts with '0'.
int env_on_unless_zero(const char *name) {
  const char *e = getenv(name);
  return e && e[0] == '0' ? 0 : 1;
}

// MODA_CUDA_BWD_SEQ_L2: unset or 1 (default): the ws dK/dV kernel loads q and dO (re-read by every
// key block's CTA) with L2 evict_last, so that beside the concurrent depth kernel's stream they stay
// in L2 (session 18, H100: LM-64 f+b 1.386-1.402 ms vs 1.406-1.432 without, DeiT-Tiny 0.574-0.576
// vs 0.578-0.581); 0: no hint. (The same hint on the dQ kernel's K, V cp.async loads made ptxas
// emit an LDGSTS with an odd uniform descriptor register, an illegal instruction on the H100, in
// the wgmma dQ kernel: not kept.)
int seq_q_evict_last() {
  static const int on = env_on_unless_zero("MODA_CUDA_BWD_SEQ_L2");
  return on;
}
// MODA_CUDA_BWD_DQ_RED4: unset or 1 (default): dQ's float32 reductions 4 floats wide; 0: 2 wide
// (session 18, H100: the ws dK/dV kernel at DeiT-Tiny 0.119 vs 0.125 ms, DeiT-Tiny-64 0.119 vs 0.123)
int dq_red4_mode() {
  static const int on = env_on_unless_zero("MODA_CUDA_BWD_DQ_RED4");
  return on;
}

template <typename T, bool DQ, bool PIPE, bool ORDERED = false>
int launch_ws(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta, float *dq_accum,
              int *dq_sem, const CUtensorMap &tm_k, const CUtensorMap &tm_v, const CUtensorMap &tm_q,
              const CUtensorMap &tm_do) {
  using Cfg = WsBwdConfig<PIPE>;
  constexpr int smem = Cfg::smem_bytes(DQ);
  if (const int st = allow_dynamic_smem<bwd_dkv_wgmma_ws_kernel<T, DQ, PIPE, ORDERED>>(smem, "bwd_dkv_wgmma_ws"))
    return st;
  const int64_t kblocks = (p->S + Cfg::BN - 1) / Cfg::BN;
  dim3 grid((unsigned)(kblocks * p->Hk), 1, (unsigned)p->B);
  bwd_dkv_wgmma_ws_kernel<T, DQ, PIPE, ORDERED><<<grid, Cfg::NTHREADS, smem, stream>>>(
      *p, lse2, delta, dq_accum, dq_sem, tm_k, tm_v, tm_q, tm_do, seq_q_evict_last(), dq_red4_mode());
  MODA_CUDA_CHECK_LAUNCH("bwd_dkv_wgmma_ws_kernel");
  return MODA_OK;
}

template <typename T, bool DQ, bool OVL = false, bool PP = false>
int launch_ws_q128(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta,
                   float *dq_accum, const CUtensorMap &tm_k, const CUtensorMap &tm_v, const CUtensorMap &tm_q,
                   const CUtensorMap &tm_do) {
  constexpr int smem = WsBwdQ128Config::smem_bytes(DQ);
  if (const int st = allow_dynamic_smem<bwd_dkv_wgmma_q128_kernel<T, DQ, OVL, PP>>(smem, "bwd_dkv_wgmma_q128")) return st;
  const int64_t kblocks = (p->S + WsBwdQ128Config::BN - 1) / WsBwdQ128Config::BN;
  dim3 grid((unsigned)(kblocks * p->Hk), 1, (unsigned)p->B);
  bwd_dkv_wgmma_q128_kernel<T, DQ, OVL, PP><<<grid, WsBwdQ128Config::NTHREADS, smem, stream>>>(
      *p, lse2, delta, dq_accum, tm_k, tm_v, tm_q, tm_do, seq_q_evict_last(), dq_red4_mode());
  MODA_CUDA_CHECK_LAUNCH("bwd_dkv_wgmma_q128_kernel");
  return MODA_OK;
}

template <typename T, bool PP = false, bool PIPE = false>
int launch_dq_ws(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta, float *dq_buf,
                 const CUtensorMap &tm_k, const CUtensorMap &tm_v, const CUtensorMap &tm_q, const CUtensorMap &tm_do) {
  if (const int st = allow_dynamic_smem<bwd_dq_wgmma_ws_kernel<T, PP, PIPE>>(DqWsConfig::SMEM_BYTES, "bwd_dq_wgmma_ws")) return st;
  const int64_t tiles = (p->T * p->G + DqWsConfig::BM - 1) / DqWsConfig::BM;
  dim3 grid((unsigned)tiles, (unsigned)p->Hk, (unsigned)p->B);
  bwd_dq_wgmma_ws_kernel<T, PP, PIPE><<<grid, DqWsConfig::NTHREADS, DqWsConfig::SMEM_BYTES, stream>>>(*p, lse2, delta, dq_buf, tm_k,
                                                                                          tm_v, tm_q, tm_do);
  MODA_CUDA_CHECK_LAUNCH("bwd_dq_wgmma_ws_kernel");
  return MODA_OK;
}

}  // namespace

// MODA_CUDA_BWD_WS=0 turns the kernel off (bwd_dkv_wgmma_kernel runs instead); 1: its v8 loop
// (session 6, H100: 0.95x the time of bwd_dkv_wgmma_kernel at the paper's T=4096, 0.92x at
// DeiT-Tiny-64, 1.01x at LM-64; docs/CUDA_NOTES.md, v8); 2: its v9 loop (PIPE); 3: the 128-row
// steps of bwd_dkv_wgmma_q128_kernel (v10; not with the ordered dQ, which keeps v8's loop); 4: the
// same with its dQ wgmmas queued behind dV/dK (OVL). Unset (5): the rule - v10 where the kernel
// computes no dQ, v9 where it sums dQ. Measured (H100, session 22, this kernel's time, nd flows):
// without dQ v10 / v9 T=4096 0.48 / 0.67 ms, T=16384 7.6 / 9.9, T=65536 129 / 164, LM-64 0.30 /
// 0.40, DeiT-Tiny 0.075 / 0.088, DeiT-Tiny-64 0.074 / 0.086; with dQ about level at T=4096 and
// T=16384 (1.19 / 1.18, 16.6 / 16.6) and behind at DeiT-Tiny (0.130 / 0.121).
// MODA_CUDA_BWD_PP: PingPong issue order of the two consumer warpgroups, a bit mask: 1 = in v11
// (the dQ kernel), 2 = in v10 without dQ; unset = 1. Measured (H100, session 23, nd, two rounds,
// kernel ms, PP off / on): v11 T=65536 96.6 97.3 / 85.4 85.2, T=16384 6.06 5.94 / 5.04 5.09,
// LM-64 0.229 / 0.210, DeiT-Tiny 0.088 / 0.080; v10 T=65536 128.3 129.3 / 135.1 136.0 (slower:
// its steps' four GEMMs keep the tensor cores busy without it, and the barriers cost).
static int pp_mode() {
  static int mask = -1;
  if (mask < 0) {
    const char *e = getenv("MODA_CUDA_BWD_PP");
    mask = e && e[0] >= '0' && e[0] <= '3' ? e[0] - '0' : 1;
  }
  return mask;
}

static int ws_mode() {
  static int mode = -1;
  if (mode < 0) {
    const char *e = getenv("MODA_CUDA_BWD_WS");
    const char c = e && e[0] ? e[0] : '5';
    mode = c >= '0' && c <= '4' ? c - '0' : 5;
  }
  return mode;
}

bool bwd_ws_selected(const moda_attn_params *p) {
  if (!ws_mode() || p->d != 64 || 64 % p->G != 0) return false;
  CUtensorMap a, b, c, d;
  return ws_bwd_maps(p, &a, &b, &c, &d);
}

// Whether bwd_dkv_ws_launch would launch (its maps encode and the grid fits), switch aside (the
// same two checks it makes).
bool bwd_ws_launchable(const moda_attn_params *p) {
  if (p->d != 64 || 64 % p->G != 0) return false;
  CUtensorMap a, b, c, d;
  if (!ws_bwd_maps(p, &a, &b, &c, &d)) return false;
  return (p->S + WsBwdConfig<>::BN - 1) / WsBwdConfig<>::BN * p->Hk <= 0x7fffffff;
}

int bwd_dkv_ws_launch(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta,
                      float *dq_accum, int *dq_sem, bool *launched) {
  *launched = false;
  CUtensorMap tm_k, tm_v, tm_q, tm_do;
  if (!ws_bwd_maps(p, &tm_k, &tm_v, &tm_q, &tm_do)) return MODA_OK;
  if ((p->S + WsBwdConfig<>::BN - 1) / WsBwdConfig<>::BN * p->Hk > 0x7fffffff) return MODA_OK;
  *launched = true;
  const bool bf16 = p->dtype == MODA_BF16;
  if (dq_sem)
    return bf16 ? launch_ws<__nv_bfloat16, true, false, true>(p, stream, lse2, delta, dq_accum, dq_sem, tm_k, tm_v, tm_q, tm_do)
                : launch_ws<__half, true, false, true>(p, stream, lse2, delta, dq_accum, dq_sem, tm_k, tm_v, tm_q, tm_do);
  if (ws_mode() == 3 || ws_mode() == 4 || (ws_mode() == 5 && !dq_accum)) {
    if (dq_accum && ws_mode() == 4)
      return bf16 ? launch_ws_q128<__nv_bfloat16, true, true>(p, stream, lse2, delta, dq_accum, tm_k, tm_v, tm_q, tm_do)
                  : launch_ws_q128<__half, true, true>(p, stream, lse2, delta, dq_accum, tm_k, tm_v, tm_q, tm_do);
    if (dq_accum)
      return bf16 ? launch_ws_q128<__nv_bfloat16, true>(p, stream, lse2, delta, dq_accum, tm_k, tm_v, tm_q, tm_do)
                  : launch_ws_q128<__half, true>(p, stream, lse2, delta, dq_accum, tm_k, tm_v, tm_q, tm_do);
    if (pp_mode() & 2)
      return bf16 ? launch_ws_q128<__nv_bfloat16, false, false, true>(p, stream, lse2, delta, nullptr, tm_k, tm_v, tm_q, tm_do)
                  : launch_ws_q128<__half, false, false, true>(p, stream, lse2, delta, nullptr, tm_k, tm_v, tm_q, tm_do);
    return bf16 ? launch_ws_q128<__nv_bfloat16, false>(p, stream, lse2, delta, nullptr, tm_k, tm_v, tm_q, tm_do)
                : launch_ws_q128<__half, false>(p, stream, lse2, delta, nullptr, tm_k, tm_v, tm_q, tm_do);
  }
  if (ws_mode() == 2 || ws_mode() == 5) {
    if (dq_accum)
      return bf16 ? launch_ws<__nv_bfloat16, true, true>(p, stream, lse2, delta, dq_accum, nullptr, tm_k, tm_v, tm_q, tm_do)
                  : launch_ws<__half, true, true>(p, stream, lse2, delta, dq_accum, nullptr, tm_k, tm_v, tm_q, tm_do);
    return bf16 ? launch_ws<__nv_bfloat16, false, true>(p, stream, lse2, delta, nullptr, nullptr, tm_k, tm_v, tm_q, tm_do)
                : launch_ws<__half, false, true>(p, stream, lse2, delta, nullptr, nullptr, tm_k, tm_v, tm_q, tm_do);
  }
  if (dq_accum)
    return bf16 ? launch_ws<__nv_bfloat16, true, false>(p, stream, lse2, delta, dq_accum, nullptr, tm_k, tm_v, tm_q, tm_do)
                : launch_ws<__half, true, false>(p, stream, lse2, delta, dq_accum, nullptr, tm_k, tm_v, tm_q, tm_do);
  return bf16 ? launch_ws<__nv_bfloat16, false, false>(p, stream, lse2, delta, nullptr, nullptr, tm_k, tm_v, tm_q, tm_do)
              : launch_ws<__half, false, false>(p, stream, lse2, delta, nullptr, nullptr, tm_k, tm_v, tm_q, tm_do);
}

}  // namespace moda_cuda

namespace moda_cuda {
// MODA_CUDA_BWD_DQ_WS: unset or 1 (default): the sequence dQ by bwd_dq_wgmma_ws_kernel (v11)
// wherever a dQ kernel writes the float32 sequence part for the depth kernel; 0: bwd_dq_mma_kernel.
// Measured (H100, session 22): LM-64's concurrent backward 0.23 vs 0.40 ms for the dQ kernel (f+b
// 1.300 vs 1.324 ms); with it the paper's shapes drop the atomic dQ (bwd_atomic_dq_selected).
// 2: its PIPE variant (64-key halves, S/dP of the next half under this half's softmax; opt-in:
// H100, session 23, T=65536 92.2 ms against 96.9 without PP and 85.3 with PP, the default).
static int dq_ws_mode() {
  static int mode = -1;
  if (mode < 0) {
    const char *e = getenv("MODA_CUDA_BWD_DQ_WS");
    mode = e && e[0] == '0' ? 0 : e && e[0] == '2' ? 2 : 1;
  }
  return mode;
}

bool bwd_dq_ws_selected(const moda_attn_params *p) {
  if (!dq_ws_mode() || p->d != 64 || 64 % p->G != 0) return false;
  CUtensorMap a, b, c, d;
  return ws_bwd_maps(p, &a, &b, &c, &d) && p->B <= 65535 && p->Hk <= 65535;
}

int bwd_dq_ws_launch(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta, float *dq_buf,
                     bool *launched) {
  *launched = false;
  CUtensorMap tm_k, tm_v, tm_q, tm_do;
  if (!ws_bwd_maps(p, &tm_k, &tm_v, &tm_q, &tm_do)) return MODA_OK;
  *launched = true;
  const bool bf16 = p->dtype == MODA_BF16;
  if (dq_ws_mode() == 2)
    return bf16 ? launch_dq_ws<__nv_bfloat16, false, true>(p, stream, lse2, delta, dq_buf, tm_k, tm_v, tm_q, tm_do)
                : launch_dq_ws<__half, false, true>(p, stream, lse2, delta, dq_buf, tm_k, tm_v, tm_q, tm_do);
  if (pp_mode() & 1)
    return bf16 ? launch_dq_ws<__nv_bfloat16, true>(p, stream, lse2, delta, dq_buf, tm_k, tm_v, tm_q, tm_do)
                : launch_dq_ws<__half, true>(p, stream, lse2, delta, dq_buf, tm_k, tm_v, tm_q, tm_do);
  return bf16 ? launch_dq_ws<__nv_bfloat16>(p, stream, lse2, delta, dq_buf, tm_k, tm_v, tm_q, tm_do)
              : launch_dq_ws<__half>(p, stream, lse2, delta, dq_buf, tm_k, tm_v, tm_q, tm_do);
}
}  // namespace moda_cuda
