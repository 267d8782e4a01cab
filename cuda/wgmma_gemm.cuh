// wgmma_gemm.cuh: the k-loops every sm_90a kernel issues, with the descriptor arithmetic in one
// place (a convention found wrong on the device is fixed here for all of them).
// A comes from registers (a[ks] = the A fragment of k16 step ks, the mma.sync m16n8k16 A layout
// per warp); B is a 128-byte-swizzled tile (sw128_offset layout, `rows` rows per atom column) at
// shared address `tile`. scale_first = 0 makes the first step overwrite acc (acc = A * B).
// Only issues: the caller fences, commits and waits.
#pragma once

#include "mma_helpers.cuh"
#include "wgmma_ops.cuh"

namespace moda_cuda {

// B read K-major: the tile's rows are the n side, its columns the k side (e.g. S = Q K^T with
// the K tile [keys][d]). k16 step ks lies in atom column ks/4, 32*(ks%4) bytes into its rows.
template <typename T, int N, int KSTEPS>
__device__ __forceinline__ void wgmma_rs_kmajor(float (&acc)[N / 8][4], const uint32_t (&a)[KSTEPS][4],
                                                uint32_t tile, int rows, int scale_first) {
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks)
    WgmmaRS<T, N, 0>::run(acc, a[ks], wgmma_desc_sw128(tile + (ks / 4) * rows * 128 + (ks % 4) * 32, 16, 1024),
                          ks > 0 ? 1 : scale_first);
}

// B read MN-major: the tile's rows are the k side, its columns the n side (e.g. O += P V with
// the V tile [keys][d]). k16 step ks starts 16 rows (2048 bytes) further; the n side's atom
// columns are rows*128 bytes apart.
template <typename T, int N, int KSTEPS>
__device__ __forceinline__ void wgmma_rs_mnmajor(float (&acc)[N / 8][4], const uint32_t (&a)[KSTEPS][4],
                                                 uint32_t tile, int rows, int scale_first) {
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks)
    WgmmaRS<T, N, 1>::run(acc, a[ks], wgmma_desc_sw128(tile + ks * 16 * 128, rows * 128, 1024),
                          ks > 0 ? 1 : scale_first);
}

// A and B both from shared memory, both read K-major from 64-column sw128 tiles (the k side is
// d = 64: one atom column, k16 step ks 32 bytes into the rows), e.g. S^T = K Q^T in the dK/dV
// kernels and S = Q K^T in the dQ kernel.
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss_kmajor_d64(float (&acc)[N / 8][4], uint32_t tile_a, uint32_t tile_b,
                                                    int scale_first) {
#pragma unroll
  for (int ks = 0; ks < 4; ++ks)
    WgmmaSS<T, N, 0, 0>::run(acc, wgmma_desc_sw128(tile_a + ks * 32, 16, 1024), wgmma_desc_sw128(tile_b + ks * 32, 16, 1024),
                             ks > 0 ? 1 : scale_first);
}

}  // namespace moda_cuda
