// attn_bwd_common.cuh: the per-step arithmetic that the Hopper dK/dV kernels (bwd_dkv_wgmma_kernel
// in attn_bwd_mma.cu, bwd_dkv_wgmma_ws_kernel in attn_bwd_wgmma.cu) share.
#pragma once

#include <math.h>
#include <stdint.h>

namespace moda_cuda {

// P^T = exp2(S^T * scale_log2 - lse2) and dS^T = P^T (dP^T - delta), in place on a warp's 16 key
// rows x 8*NT query columns (the wgmma m64 / mma.sync m16n8 accumulator layout: element e of tile
// nt is key row qr + 8*(e >> 1), column nt*8 + 2*qc + (e & 1)), with the columns' lse2 and delta
// in shared memory. With need_mask (causal), key key_pos[e >> 1] is visible to column col where
// key_pos <= key_lim + (Rq + col) / G (key_lim = S - T; Rq = the step's first packed row).
template <int NT>
__device__ __forceinline__ void bwd_p_ds_causal(float (&s)[NT][4], float (&dp)[NT][4], const float *lse_s,
                                                const float *delta_s, int qc, float scale_log2, bool need_mask,
                                                const int64_t (&key_pos)[2], int64_t key_lim, int64_t Rq, int64_t G) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    // this lane's two columns' lse2 / delta, one 8-byte smem load each
    const float2 l2 = *reinterpret_cast<const float2 *>(lse_s + nt * 8 + 2 * qc);
    const float2 dl = *reinterpret_cast<const float2 *>(delta_s + nt * 8 + 2 * qc);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int col = nt * 8 + 2 * qc + (e & 1);
      bool vis = true;
      if (need_mask) vis = key_pos[e >> 1] <= key_lim + (Rq + col) / G;
      const float pe = vis ? exp2f(s[nt][e] * scale_log2 - ((e & 1) ? l2.y : l2.x)) : 0.f;
      s[nt][e] = pe;
      dp[nt][e] = pe * (dp[nt][e] - ((e & 1) ? dl.y : dl.x));
    }
  }
}

}  // namespace moda_cuda
