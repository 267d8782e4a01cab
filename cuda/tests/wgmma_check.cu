// wgmma_check.cu: standalone device check of the sm_90a wgmma helpers (mma_helpers.cuh bottom
// section + wgmma_ops.cuh) exactly as the forward kernel uses them:
//   use 1, S = Q K^T: B = K^T, K stored [rows][D] in the 128B-swizzled layout (K-major B,
//          TRANS_B = 0); k16 step ks starts at tile + (ks/4)*rows*128 + n0*128 + (ks%4)*32,
//          lbo = 16, sbo = 1024.
//   use 2, O += P V: B = V, V stored [keys][D] swizzled (MN-major B, TRANS_B = 1); k16 step ks
//          starts at tile + ks*16*128, lbo = keys*128 (atom-column distance), sbo = 1024.
// One warpgroup (128 threads) per launch; A fragments built by hand from a plain row-major smem
// copy in the mma.sync m16n8k16 A layout; B written by 16-byte cp.async at sw128_offset into
// 1024-byte-aligned dynamic smem; cp.async.wait_group 0 + fence.proxy.async + barrier +
// wgmma.fence; k-steps (first scale_d = 0 unless the case says otherwise); commit; wait<0>;
// accumulators written out in the m16n8 C layout per warp.
//   use 3 (SS form, WgmmaSS<T, 64, 1, 1>), the backward's dQ = dS K of
//          bwd_dkv_wgmma_kernel<T, true>: A = dS^T tile [key][row] swizzled (MN-major A), written
//          by 4-byte st.shared of (row, row + 1) pairs from the accumulator layout; B = K tile
//          [key][d] swizzled by cp.async (MN-major B); k16 step kk starts at +kk*2048 in both,
//          lbo = atom-column distance (64*128), sbo = 1024; first scale_d = 0. Control: both
//          operands K-major (WgmmaSS<T, 64, 0, 0>, +32 B per step, lbo 16, sbo 1024); and the
//          kernel's form on NaN-poisoned accumulators (scale_d = 0 must ignore them).
//   use 4 (SS form, WgmmaSS<T, 64, 0, 1>), dV += P^T dO of the v9 dK/dV loop: A = P^T tile
//          [key][row] K-major (+32 B per step, lbo 16, sbo 1024), B = dO tile [row][d] MN-major.
// Reference: float64 on the host. A failing primary case is re-run with alternative (lbo, sbo)
// encodings and the log says which of them pass (SS: per operand, plus the other TRANS_A /
// TRANS_B combinations as uncounted cross-checks).
// Build / run (device machine), from the repository root:
//   nvcc -O2 -std=c++17 -I cuda -gencode arch=compute_90a,code=sm_90a
//        cuda/tests/wgmma_check.cu -o build/wgmma_check && build/wgmma_check [diag]
//   or: cuda/run_checks.sh wgmma [diag] [sanitize]
//   (diag: run the alternative encodings for every case, not only the failing ones)
// Exit status: 0 when every primary case passes (or the device is not sm_90: skipped), 1 otherwise.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <string>
#include <vector>

#include "../mma_helpers.cuh"
#include "../wgmma_ops.cuh"
#include "../wgmma_gemm.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "wgmma_check must be built for sm_90a only: -gencode arch=compute_90a,code=sm_90a"
#endif

using namespace moda_cuda;

// ------------------------------------------------------------------------------------------
// device side
// ------------------------------------------------------------------------------------------

template <typename T> struct SingleArgs {
  const T *A;        // [64][16*KS] row-major
  const T *B;        // [brows][bcols] row-major (use 1: K [rows][D]; use 2: V [keys][D])
  float *out;        // [64][N]
  int brows, bcols;  // B source / swizzled tile extent (tile rows = brows)
  int n0;            // use 1: first key row of the tile this instruction reads
  uint32_t lbo, sbo; // descriptor strides (bytes)
  float acc_init;    // accumulator value before the first wgmma
  int first_scale;   // scale_d of the first k-step (later ones: 1)
};

__device__ __forceinline__ uint8_t *align1024(uint8_t *p) {
  return (uint8_t *)(((uintptr_t)p + 1023) & ~(uintptr_t)1023);
}

// Swizzled tile size in bytes: rows x (atom columns of 64 elements, 128 B per row each).
__host__ __device__ inline int tile_bytes(int rows, int cols) { return rows * 128 * ((cols + 63) / 64); }

// Copies src [rows][cols] (row-major, global) into the swizzled tile at dst with 16-byte
// cp.async chunks, as the forward loads K/V; the caller waits, fences the proxy and syncs.
template <typename T>
__device__ void fill_swizzled(uint8_t *dst, const T *src, int rows, int cols) {
  const int cch = cols / 8;  // 16-byte chunks per row
  for (int i = threadIdx.x; i < rows * cch; i += blockDim.x) {
    int r = i / cch, c = (i % cch) * 8;
    cp_async_16(dst + sw128_offset(r, c, rows), src + (size_t)r * cols + c);
  }
  cp_async_commit();
}

// A fragment of k16 step ks for this thread (mma.sync m16n8k16 A layout of rows 16w..16w+15).
template <typename T>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], const T *As, int lda, int ks) {
  const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3;
  const int r = 16 * w + (lane >> 2), c = 2 * (lane & 3), k0 = 16 * ks;
  a[0] = *(const uint32_t *)(As + r * lda + k0 + c);
  a[1] = *(const uint32_t *)(As + (r + 8) * lda + k0 + c);
  a[2] = *(const uint32_t *)(As + r * lda + k0 + c + 8);
  a[3] = *(const uint32_t *)(As + (r + 8) * lda + k0 + c + 8);
}

// Writes accumulators d[N/8][4] (per warp the m16n8 C layout of n8 tile j) to out [64][N].
template <int N>
__device__ __forceinline__ void store_acc(float *out, const float (&d)[N / 8][4]) {
  const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3;
  const int r = 16 * w + (lane >> 2), c = 2 * (lane & 3);
#pragma unroll
  for (int j = 0; j < N / 8; ++j) {
    out[r * N + 8 * j + c] = d[j][0];
    out[r * N + 8 * j + c + 1] = d[j][1];
    out[(r + 8) * N + 8 * j + c] = d[j][2];
    out[(r + 8) * N + 8 * j + c + 1] = d[j][3];
  }
}

// One wgmma chain: D[64][N] (+)= A[64][16 KS] * B, B from the swizzled tile per use 1 / use 2.
template <typename T, int N, int TRANS_B, int KS>
__global__ void __launch_bounds__(128) single_kernel(SingleArgs<T> p) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t *tile = align1024(smem_raw);
  const int K = 16 * KS;
  T *As = (T *)(tile + tile_bytes(p.brows, p.bcols));
  fill_swizzled(tile, p.B, p.brows, p.bcols);
  for (int i = threadIdx.x; i < 64 * K; i += blockDim.x) As[i] = p.A[i];
  cp_async_wait<0>();
  fence_proxy_async_smem();
  __syncthreads();

  uint32_t a[KS][4];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) load_a_frag(a[ks], As, K, ks);
  float d[N / 8][4];
#pragma unroll
  for (int j = 0; j < N / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) d[j][e] = p.acc_init;

  const uint32_t base = smem_u32(tile);
  wgmma_fence_operand(d);
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    uint32_t addr;
    if (TRANS_B == 0)  // use 1: K-major B = K^T, K [rows][D]
      addr = base + (ks / 4) * p.brows * 128 + p.n0 * 128 + (ks % 4) * 32;
    else               // use 2: MN-major B = V [keys][D]
      addr = base + ks * 16 * 128;
    WgmmaRS<T, N, TRANS_B>::run(d, a[ks], wgmma_desc_sw128(addr, p.lbo, p.sbo), ks == 0 ? p.first_scale : 1);
  }
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operand(d);
  store_acc<N>(p.out, d);
}

// The forward's chain: S = Q K^T (use 1, N = NK keys), P = bf16/fp16(S) re-packed from the
// accumulator layout into A fragments, O = P V (use 2, N = D).
template <typename T> struct ChainArgs {
  const T *Q, *Kt, *V;  // Q [64][D], K [NK][D], V [NK][D]
  float *S, *O;         // [64][NK], [64][D]
};

template <typename T, int NK, int D>
__global__ void __launch_bounds__(128) chain_kernel(ChainArgs<T> p) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t *ktile = align1024(smem_raw);
  uint8_t *vtile = ktile + tile_bytes(NK, D);
  T *Qs = (T *)(vtile + tile_bytes(NK, D));
  fill_swizzled(ktile, p.Kt, NK, D);
  fill_swizzled(vtile, p.V, NK, D);
  for (int i = threadIdx.x; i < 64 * D; i += blockDim.x) Qs[i] = p.Q[i];
  cp_async_wait<0>();
  fence_proxy_async_smem();
  __syncthreads();

  uint32_t aq[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) load_a_frag(aq[ks], Qs, D, ks);
  float s[NK / 8][4];
#pragma unroll
  for (int j = 0; j < NK / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
  const uint32_t kb = smem_u32(ktile), vb = smem_u32(vtile);
  wgmma_fence_operand(s);
  wgmma_fence();
  wgmma_rs_kmajor<T, NK, D / 16>(s, aq, kb, NK, 0);  // the kernels' own k-loop (wgmma_gemm.cuh)
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operand(s);
  store_acc<NK>(p.S, s);

  uint32_t ap[NK / 16][4];
#pragma unroll
  for (int t = 0; t < NK / 16; ++t) {
    ap[t][0] = MmaOp<T>::pack(s[2 * t][0], s[2 * t][1]);
    ap[t][1] = MmaOp<T>::pack(s[2 * t][2], s[2 * t][3]);
    ap[t][2] = MmaOp<T>::pack(s[2 * t + 1][0], s[2 * t + 1][1]);
    ap[t][3] = MmaOp<T>::pack(s[2 * t + 1][2], s[2 * t + 1][3]);
  }
  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[j][e] = 0.f;
  wgmma_fence_operand(o);
  wgmma_fence();
  wgmma_rs_mnmajor<T, D, NK / 16>(o, ap, vb, NK, 0);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operand(o);
  store_acc<D>(p.O, o);
}

// SS form, the backward's dQ = dS K (bwd_dkv_wgmma_kernel<T, true>): D[64 rows][64 d] =
// dS[64 rows][64 keys] * K[64 keys][64 d], both operands from swizzled smem by descriptor.
//   TRANS_A = 1 (the kernel's A): dS^T stored [key][row], element (key, row) at
//     sw128_offset(key, row, 64), written as in the kernel: each thread holds dS^T in the m64n64
//     accumulator layout (key = 16w + lane/4 (+8), row = 8nt + 2(lane%4) (+1)), packs the
//     (row, row + 1) pair and stores it with one 4-byte st.shared; k16 step kk at +kk*2048.
//   TRANS_A = 0 (control): dS stored [row][key] K-major (cp.async); k16 step kk at +kk*32.
//   TRANS_B = 1 (the kernel's B): K stored [key][d] MN-major (cp.async); step kk at +kk*2048.
//   TRANS_B = 0 (control): K^T stored [d][key] K-major (cp.async); step kk at +kk*32.
// As in the kernel the B tile (its K copy) precedes the A tile (its dS^T tile) in smem.
template <typename T> struct SSArgs {
  const float *AtF;  // TRANS_A 1: dS^T [64 keys][64 rows], float values exact in T
  const T *A;        // TRANS_A 0: dS [64 rows][64 keys]
  const T *B;        // TRANS_B 1: K [64 keys][64 d]; TRANS_B 0: K^T [64 d][64 keys]
  float *out;        // [64][64]
  uint32_t lbo_a, sbo_a, lbo_b, sbo_b;
  float acc_init;    // accumulator value before the first wgmma
  int first_scale;   // scale_d of the first k-step (later ones: 1)
};

constexpr int kSSTile = 64 * 64 * 2;  // bytes of one 64 x 64 swizzled tile

template <typename T, int TRANS_A, int TRANS_B>
__global__ void __launch_bounds__(128) ss_kernel(SSArgs<T> p) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t *btile = align1024(smem_raw);
  uint8_t *atile = btile + kSSTile;
  fill_swizzled(btile, p.B, 64, 64);
  if (TRANS_A) {
    const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3, qr = lane >> 2, qc = lane & 3;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int h2 = 0; h2 < 2; ++h2) {
        const int key = 16 * w + qr + 8 * h2, row = nt * 8 + 2 * qc;
        const float2 v = *reinterpret_cast<const float2 *>(p.AtF + key * 64 + row);
        *reinterpret_cast<uint32_t *>(atile + sw128_offset(key, row, 64)) = MmaOp<T>::pack(v.x, v.y);
      }
  } else {
    fill_swizzled(atile, p.A, 64, 64);
  }
  cp_async_wait<0>();
  fence_proxy_async_smem();
  __syncthreads();

  float d[8][4];
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) d[j][e] = p.acc_init;
  const uint32_t abase = smem_u32(atile), bbase = smem_u32(btile);
  wgmma_fence_operand(d);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {  // k = keys, 16 per step
    const uint32_t aaddr = abase + (TRANS_A ? kk * 16 * 128 : kk * 32);
    const uint32_t baddr = bbase + (TRANS_B ? kk * 16 * 128 : kk * 32);
    WgmmaSS<T, 64, TRANS_A, TRANS_B>::run(d, wgmma_desc_sw128(aaddr, p.lbo_a, p.sbo_a),
                                          wgmma_desc_sw128(baddr, p.lbo_b, p.sbo_b),
                                          kk > 0 ? 1 : p.first_scale);
  }
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operand(d);
  store_acc<64>(p.out, d);
}

// ------------------------------------------------------------------------------------------
// host side
// ------------------------------------------------------------------------------------------

static int g_pass = 0, g_fail = 0;

template <typename T> struct TypeInfo;
template <> struct TypeInfo<__nv_bfloat16> {
  static const char *name() { return "bf16"; }
  static __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
  static float to(__nv_bfloat16 x) { return __bfloat162float(x); }
};
template <> struct TypeInfo<__half> {
  static const char *name() { return "f16"; }
  static __half from(float x) { return __float2half_rn(x); }
  static float to(__half x) { return __half2float(x); }
};

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 12345) {}
  float uni() {  // [-1, 1)
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    return (float)((s >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
  }
};

template <typename T>
static void random_matrix(std::vector<T> &t, std::vector<float> &f, size_t n, Rng &rng) {
  t.resize(n); f.resize(n);
  for (size_t i = 0; i < n; ++i) { t[i] = TypeInfo<T>::from(rng.uni()); f[i] = TypeInfo<T>::to(t[i]); }
}

static uint64_t hash_str(const std::string &s) {
  uint64_t h = 1469598103934665603ull;
  for (char c : s) { h ^= (uint8_t)c; h *= 1099511628211ull; }
  return h;
}

// Launch + sync; prints any error. A sticky error resets the device so later cases still run.
static bool check_launch(const char *what) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e == cudaSuccess) return true;
  printf("  CUDA error in %s: %s (%s)\n", what, cudaGetErrorName(e), cudaGetErrorString(e));
  if (cudaDeviceSynchronize() != cudaSuccess || cudaGetLastError() != cudaSuccess) {
    printf("  (sticky error: cudaDeviceReset, later cases run in a fresh context)\n");
    cudaDeviceReset();
  }
  return false;
}

#define CK(x)                                                                                    \
  do {                                                                                           \
    cudaError_t e_ = (x);                                                                        \
    if (e_ != cudaSuccess) {                                                                     \
      printf("  CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, #x);    \
      ok = false;                                                                                \
    }                                                                                            \
  } while (0)

template <typename Kern>
static cudaError_t prep_kernel(Kern k, size_t smem) {
  return cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
}

template <typename T>
static cudaError_t launch_single(int N, int tb, int KS, const SingleArgs<T> &a, size_t smem) {
#define WG_L(n, t, k)                                                                            \
  if (N == n && tb == t && KS == k) {                                                            \
    cudaError_t e_ = prep_kernel(single_kernel<T, n, t, k>, smem);                               \
    if (e_ != cudaSuccess) return e_;                                                            \
    single_kernel<T, n, t, k><<<1, 128, smem>>>(a);                                              \
    return cudaSuccess;                                                                          \
  }
  WG_L(64, 0, 1) WG_L(64, 0, 4) WG_L(64, 0, 8) WG_L(128, 0, 4) WG_L(128, 0, 8)
  WG_L(64, 1, 1) WG_L(64, 1, 4) WG_L(64, 1, 8) WG_L(128, 1, 4) WG_L(128, 1, 8)
#undef WG_L
  return cudaErrorInvalidValue;
}

struct Case {
  std::string name;
  int use;          // 1: S = Q K^T (TRANS_B 0), 2: O = P V (TRANS_B 1)
  int N, KS;        // instruction n, number of k16 steps
  int rows, n0;     // use 1: key rows in the smem tile, first row read (tile rows >= n0 + N)
  float acc_init;   // value in the accumulators before the first wgmma
  int first_scale;  // scale_d of the first step
};

struct Result { bool ok; double max_err; int bad; std::string detail; };

// Runs one single-op case with the given descriptor strides; compares with the float64 reference.
template <typename T>
static Result run_single(const Case &c, uint32_t lbo, uint32_t sbo) {
  Result res{false, INFINITY, -1, ""};
  bool ok = true;
  const int K = 16 * c.KS, N = c.N;
  const int brows = c.use == 1 ? c.rows : K, bcols = c.use == 1 ? K : N;
  Rng rng(hash_str(c.name) ^ (sizeof(T) * 77));
  std::vector<T> hA, hB; std::vector<float> fA, fB;
  random_matrix(hA, fA, (size_t)64 * K, rng);
  random_matrix(hB, fB, (size_t)brows * bcols, rng);

  // reference: out[m][n] = acc(init) + sum_k A[m][k] B(k, n)
  std::vector<double> ref((size_t)64 * N), mag((size_t)64 * N);
  const bool keep_init = c.first_scale != 0;
  for (int m = 0; m < 64; ++m)
    for (int n = 0; n < N; ++n) {
      double s = keep_init ? (double)c.acc_init : 0.0, a = keep_init ? fabs((double)c.acc_init) : 0.0;
      for (int k = 0; k < K; ++k) {
        double b = c.use == 1 ? fB[(size_t)(c.n0 + n) * bcols + k] : fB[(size_t)k * bcols + n];
        s += (double)fA[(size_t)m * K + k] * b;
        a += fabs((double)fA[(size_t)m * K + k] * b);
      }
      ref[(size_t)m * N + n] = s; mag[(size_t)m * N + n] = a;
    }

  // smem: alignment slack + tile + A copy + room for reads through a wrong (lbo, sbo) variant
  size_t smem = 1024 + tile_bytes(brows, bcols) + (size_t)64 * K * sizeof(T) + 2 * (size_t)std::max(lbo, sbo) + 4096;
  if (smem > 227 * 1024) smem = 227 * 1024;
  T *dA = nullptr, *dB = nullptr; float *dO = nullptr;
  CK(cudaMalloc(&dA, hA.size() * sizeof(T)));
  CK(cudaMalloc(&dB, hB.size() * sizeof(T)));
  CK(cudaMalloc(&dO, (size_t)64 * N * sizeof(float)));
  if (!ok) { res.detail = "cudaMalloc failed"; return res; }
  CK(cudaMemcpy(dA, hA.data(), hA.size() * sizeof(T), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dB, hB.data(), hB.size() * sizeof(T), cudaMemcpyHostToDevice));
  CK(cudaMemset(dO, 0xFF, (size_t)64 * N * sizeof(float)));  // NaN poison
  SingleArgs<T> a{dA, dB, dO, brows, bcols, c.n0, lbo, sbo, c.acc_init, c.first_scale};
  cudaError_t le = launch_single<T>(N, c.use == 1 ? 0 : 1, c.KS, a, smem);
  if (le != cudaSuccess) {
    printf("  launch of %s failed: %s\n", c.name.c_str(), cudaGetErrorString(le));
    ok = false;
  }
  if (ok && !check_launch(c.name.c_str())) ok = false;
  std::vector<float> out((size_t)64 * N, NAN);
  if (ok) CK(cudaMemcpy(out.data(), dO, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  cudaFree(dA); cudaFree(dB); cudaFree(dO);
  if (!ok) { res.detail = "CUDA error"; return res; }

  double maxe = 0; int bad = 0; char buf[256]; std::string det;
  for (int m = 0; m < 64; ++m)
    for (int n = 0; n < N; ++n) {
      size_t i = (size_t)m * N + n;
      double e = fabs((double)out[i] - ref[i]);
      if (!(e == e)) e = INFINITY;
      maxe = std::max(maxe, e);
      if (!(e <= 2e-3 * mag[i] + 1e-4)) {
        if (bad < 3) {
          snprintf(buf, sizeof buf, " (m=%d n=%d got %.5g want %.5g)", m, n, out[i], ref[i]);
          det += buf;
        }
        ++bad;
      }
    }
  res.ok = bad == 0; res.max_err = maxe; res.bad = bad; res.detail = det;
  return res;
}

// Alternative (lbo, sbo) encodings tried when a primary case fails (or always with "diag").
static std::vector<std::pair<std::string, std::pair<uint32_t, uint32_t>>> variants(const Case &c) {
  std::vector<std::pair<std::string, std::pair<uint32_t, uint32_t>>> v;
  if (c.use == 1) {
    const uint32_t col = (uint32_t)c.rows * 128;  // atom-column distance of the K tile
    v.push_back({"lbo=1024,sbo=1024", {1024, 1024}});
    v.push_back({"lbo=atomcol,sbo=1024", {col, 1024}});
    v.push_back({"lbo=1024,sbo=16 (swapped)", {1024, 16}});
    v.push_back({"lbo=0,sbo=1024", {0, 1024}});
  } else {
    const uint32_t col = (uint32_t)16 * c.KS * 128;  // atom-column distance of the V tile
    v.push_back({"lbo=1024,sbo=atomcol (swapped)", {1024, col}});
    v.push_back({"lbo=atomcol,sbo=2048", {col, 2048}});
    v.push_back({"lbo=16,sbo=1024", {16, 1024}});
    v.push_back({"lbo=1024,sbo=1024", {1024, 1024}});
  }
  return v;
}

template <typename T>
static void case_single(const Case &c0, bool diag) {
  Case c = c0; c.name = c0.name + "_" + TypeInfo<T>::name();
  const uint32_t lbo = c.use == 1 ? 16u : (uint32_t)16 * c.KS * 128, sbo = 1024;
  Result r = run_single<T>(c, lbo, sbo);
  printf("%s %-34s max_abs_err %.3g  [lbo=%u sbo=%u]", r.ok ? "PASS" : "FAIL", c.name.c_str(), r.max_err, lbo, sbo);
  if (!r.ok) printf("  %d bad%s", r.bad, r.detail.c_str());
  printf("\n");
  (r.ok ? g_pass : g_fail)++;
  if (r.ok && !diag) return;
  bool any = false;
  for (auto &v : variants(c)) {
    Result rv = run_single<T>(c, v.second.first, v.second.second);
    printf("    variant %-32s %s max_abs_err %.3g\n", v.first.c_str(), rv.ok ? "passes" : "fails ", rv.max_err);
    any |= rv.ok;
  }
  if (!r.ok)
    printf("    => %s\n", any ? "fix: use the passing variant's (lbo, sbo) for this use"
                              : "no (lbo, sbo) variant passes: the error is elsewhere (address step, "
                                "swizzle, fragment layout, fences)");
}

template <typename T, int NK, int D>
static void case_chain() {
  std::string name = "qkpv_nk" + std::to_string(NK) + "_d" + std::to_string(D) + "_" + TypeInfo<T>::name();
  bool ok = true;
  Rng rng(hash_str(name));
  std::vector<T> hQ, hK, hV; std::vector<float> fQ, fK, fV;
  random_matrix(hQ, fQ, (size_t)64 * D, rng);
  random_matrix(hK, fK, (size_t)NK * D, rng);
  random_matrix(hV, fV, (size_t)NK * D, rng);
  size_t smem = 1024 + 2 * (size_t)tile_bytes(NK, D) + (size_t)64 * D * sizeof(T);
  T *dQ = nullptr, *dK = nullptr, *dV = nullptr; float *dS = nullptr, *dO = nullptr;
  CK(cudaMalloc(&dQ, hQ.size() * sizeof(T)));
  CK(cudaMalloc(&dK, hK.size() * sizeof(T)));
  CK(cudaMalloc(&dV, hV.size() * sizeof(T)));
  CK(cudaMalloc(&dS, (size_t)64 * NK * sizeof(float)));
  CK(cudaMalloc(&dO, (size_t)64 * D * sizeof(float)));
  if (ok) {
    CK(cudaMemcpy(dQ, hQ.data(), hQ.size() * sizeof(T), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dK, hK.data(), hK.size() * sizeof(T), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dV, hV.data(), hV.size() * sizeof(T), cudaMemcpyHostToDevice));
    CK(cudaMemset(dS, 0xFF, (size_t)64 * NK * sizeof(float)));
    CK(cudaMemset(dO, 0xFF, (size_t)64 * D * sizeof(float)));
  }
  if (ok) {
    CK(prep_kernel(chain_kernel<T, NK, D>, smem));
    if (ok) {
      chain_kernel<T, NK, D><<<1, 128, smem>>>(ChainArgs<T>{dQ, dK, dV, dS, dO});
      ok = check_launch(name.c_str());
    }
  }
  std::vector<float> S((size_t)64 * NK, NAN), O((size_t)64 * D, NAN);
  if (ok) {
    CK(cudaMemcpy(S.data(), dS, S.size() * sizeof(float), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(O.data(), dO, O.size() * sizeof(float), cudaMemcpyDeviceToHost));
  }
  cudaFree(dQ); cudaFree(dK); cudaFree(dV); cudaFree(dS); cudaFree(dO);
  double es = 0, eo = 0; int bad = 0; char buf[256]; std::string det;
  if (ok) {
    for (int m = 0; m < 64; ++m)
      for (int n = 0; n < NK; ++n) {
        double s = 0, a = 0;
        for (int k = 0; k < D; ++k) {
          double x = (double)fQ[(size_t)m * D + k] * fK[(size_t)n * D + k];
          s += x; a += fabs(x);
        }
        double got = S[(size_t)m * NK + n], e = fabs(got - s);
        if (!(e == e)) e = INFINITY;
        es = std::max(es, e);
        if (!(e <= 2e-3 * a + 1e-4)) {
          if (bad < 3) { snprintf(buf, sizeof buf, " (S m=%d n=%d got %.5g want %.5g)", m, n, got, s); det += buf; }
          ++bad;
        }
      }
    // O reference from the device's own S rounded to T, as the kernel packs it
    for (int m = 0; m < 64; ++m)
      for (int n = 0; n < D; ++n) {
        double s = 0, a = 0;
        for (int k = 0; k < NK; ++k) {
          double pk = TypeInfo<T>::to(TypeInfo<T>::from(S[(size_t)m * NK + k]));
          double x = pk * fV[(size_t)k * D + n];
          s += x; a += fabs(x);
        }
        double got = O[(size_t)m * D + n], e = fabs(got - s);
        if (!(e == e)) e = INFINITY;
        eo = std::max(eo, e);
        if (!(e <= 2e-3 * a + 1e-4)) {
          if (bad < 3) { snprintf(buf, sizeof buf, " (O m=%d n=%d got %.5g want %.5g)", m, n, got, s); det += buf; }
          ++bad;
        }
      }
  }
  bool pass = ok && bad == 0;
  printf("%s %-34s max_abs_err %.3g  (S %.3g, O %.3g)", pass ? "PASS" : "FAIL", name.c_str(),
         ok ? std::max(es, eo) : INFINITY, es, eo);
  if (!pass) printf("  %s%d bad%s", ok ? "" : "CUDA error; ", bad, det.c_str());
  printf("\n");
  (pass ? g_pass : g_fail)++;
}

// ---- SS form: dQ = dS K as bwd_dkv_wgmma_kernel<T, true> runs it ----

struct Enc { std::string name; uint32_t lbo, sbo; };
static const uint32_t kSSAtomCol = 64 * 128;  // the tiles' atom-column distance (one column here)
// Primary encoding per operand: MN-major lbo = atom-column distance (the kernel's BQ*128 / BN*128),
// sbo = 1024; K-major lbo = 16 (unused), sbo = 1024.
static Enc ss_primary(int trans) {
  return trans ? Enc{"lbo=atomcol,sbo=1024", kSSAtomCol, 1024} : Enc{"lbo=16,sbo=1024", 16, 1024};
}
static std::vector<Enc> ss_alternatives(int trans) {
  if (trans)
    return {{"lbo=1024,sbo=atomcol (swapped)", 1024, kSSAtomCol},
            {"lbo=atomcol,sbo=2048", kSSAtomCol, 2048},
            {"lbo=16,sbo=1024", 16, 1024},
            {"lbo=1024,sbo=1024", 1024, 1024}};
  return {{"lbo=1024,sbo=1024", 1024, 1024},
          {"lbo=atomcol,sbo=1024", kSSAtomCol, 1024},
          {"lbo=1024,sbo=16 (swapped)", 1024, 16},
          {"lbo=0,sbo=1024", 0, 1024}};
}

struct SSCase {
  std::string name;
  int ta, tb;       // TRANS_A, TRANS_B of the instruction
  float acc_init;   // value in the accumulators before the first wgmma
  int first_scale;  // scale_d of the first step
};

template <typename T>
static cudaError_t launch_ss(int ta, int tb, const SSArgs<T> &a, size_t smem) {
#define SS_L(x, y)                                                                               \
  if (ta == x && tb == y) {                                                                      \
    cudaError_t e_ = prep_kernel(ss_kernel<T, x, y>, smem);                                      \
    if (e_ != cudaSuccess) return e_;                                                            \
    ss_kernel<T, x, y><<<1, 128, smem>>>(a);                                                     \
    return cudaSuccess;                                                                          \
  }
  SS_L(1, 1) SS_L(0, 0) SS_L(1, 0) SS_L(0, 1)
#undef SS_L
  return cudaErrorInvalidValue;
}

// Runs one SS case (data seeded by seed_name) with the given transposes and encodings.
template <typename T>
static Result run_ss(const SSCase &c, const std::string &seed_name, int ta, int tb, const Enc &ea, const Enc &eb) {
  Result res{false, INFINITY, -1, ""};
  bool ok = true;
  Rng rng(hash_str(seed_name) ^ (sizeof(T) * 77));
  std::vector<T> hdS, hK; std::vector<float> fdS, fK;
  random_matrix(hdS, fdS, 64 * 64, rng);  // dS [row][key]
  random_matrix(hK, fK, 64 * 64, rng);    // K [key][d]
  std::vector<float> AtF(64 * 64);        // dS^T [key][row] (float, exact in T)
  std::vector<T> hKt(64 * 64);            // K^T [d][key]
  for (int r = 0; r < 64; ++r)
    for (int k = 0; k < 64; ++k) AtF[k * 64 + r] = fdS[r * 64 + k];
  for (int k = 0; k < 64; ++k)
    for (int n = 0; n < 64; ++n) hKt[n * 64 + k] = hK[k * 64 + n];
  const std::vector<T> &hB = tb ? hK : hKt;

  // reference: out[r][n] = acc(init) + sum_key dS[r][key] K[key][n]
  std::vector<double> ref(64 * 64), mag(64 * 64);
  const bool keep_init = c.first_scale != 0;
  for (int r = 0; r < 64; ++r)
    for (int n = 0; n < 64; ++n) {
      double s = keep_init ? (double)c.acc_init : 0.0, a = keep_init ? fabs((double)c.acc_init) : 0.0;
      for (int k = 0; k < 64; ++k) {
        double x = (double)fdS[r * 64 + k] * fK[k * 64 + n];
        s += x; a += fabs(x);
      }
      ref[r * 64 + n] = s; mag[r * 64 + n] = a;
    }

  // smem: alignment slack + B tile + A tile + room for reads through a wrong (lbo, sbo) variant
  const uint32_t mx = std::max(std::max(ea.lbo, ea.sbo), std::max(eb.lbo, eb.sbo));
  const size_t smem = 1024 + 2 * (size_t)kSSTile + 2 * (size_t)mx + 4096;
  float *dAtF = nullptr, *dO = nullptr; T *dA = nullptr, *dB = nullptr;
  CK(cudaMalloc(&dAtF, AtF.size() * sizeof(float)));
  CK(cudaMalloc(&dA, hdS.size() * sizeof(T)));
  CK(cudaMalloc(&dB, hB.size() * sizeof(T)));
  CK(cudaMalloc(&dO, 64 * 64 * sizeof(float)));
  if (!ok) { cudaFree(dAtF); cudaFree(dA); cudaFree(dB); cudaFree(dO); res.detail = "cudaMalloc failed"; return res; }
  CK(cudaMemcpy(dAtF, AtF.data(), AtF.size() * sizeof(float), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dA, hdS.data(), hdS.size() * sizeof(T), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dB, hB.data(), hB.size() * sizeof(T), cudaMemcpyHostToDevice));
  CK(cudaMemset(dO, 0xFF, 64 * 64 * sizeof(float)));  // NaN poison
  SSArgs<T> a{dAtF, dA, dB, dO, ea.lbo, ea.sbo, eb.lbo, eb.sbo, c.acc_init, c.first_scale};
  if (ok) {
    cudaError_t le = launch_ss<T>(ta, tb, a, smem);
    if (le != cudaSuccess) {
      printf("  launch of %s failed: %s\n", c.name.c_str(), cudaGetErrorString(le));
      ok = false;
    }
  }
  if (ok && !check_launch(c.name.c_str())) ok = false;
  std::vector<float> out(64 * 64, NAN);
  if (ok) CK(cudaMemcpy(out.data(), dO, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  cudaFree(dAtF); cudaFree(dA); cudaFree(dB); cudaFree(dO);
  if (!ok) { res.detail = "CUDA error"; return res; }

  double maxe = 0; int bad = 0; char buf[256]; std::string det;
  for (int i = 0; i < 64 * 64; ++i) {
    double e = fabs((double)out[i] - ref[i]);
    if (!(e == e)) e = INFINITY;
    maxe = std::max(maxe, e);
    if (!(e <= 2e-3 * mag[i] + 1e-4)) {
      if (bad < 3) {
        snprintf(buf, sizeof buf, " (m=%d n=%d got %.5g want %.5g)", i / 64, i % 64, out[i], ref[i]);
        det += buf;
      }
      ++bad;
    }
  }
  res.ok = bad == 0; res.max_err = maxe; res.bad = bad; res.detail = det;
  return res;
}

// One counted SS case with the primary encodings; on failure (or with diag) the alternative
// (lbo, sbo) encodings of A, of B and (same major-ness) of both, then the other TRANS_A/TRANS_B
// combinations with primary encodings as uncounted cross-checks that localise the fault.
template <typename T>
static void case_ss(const SSCase &c0, bool diag) {
  SSCase c = c0; c.name = c0.name + "_" + TypeInfo<T>::name();
  const Enc pa = ss_primary(c.ta), pb = ss_primary(c.tb);
  Result r = run_ss<T>(c, c.name, c.ta, c.tb, pa, pb);
  printf("%s %-34s max_abs_err %.3g  [A %s, B %s]", r.ok ? "PASS" : "FAIL", c.name.c_str(), r.max_err,
         pa.name.c_str(), pb.name.c_str());
  if (!r.ok) printf("  %d bad%s", r.bad, r.detail.c_str());
  printf("\n");
  (r.ok ? g_pass : g_fail)++;
  if (r.ok && !diag) return;
  bool any = false;
  for (auto &e : ss_alternatives(c.ta)) {
    Result rv = run_ss<T>(c, c.name, c.ta, c.tb, e, pb);
    printf("    variant A %-30s %s max_abs_err %.3g\n", e.name.c_str(), rv.ok ? "passes" : "fails ", rv.max_err);
    any |= rv.ok;
  }
  for (auto &e : ss_alternatives(c.tb)) {
    Result rv = run_ss<T>(c, c.name, c.ta, c.tb, pa, e);
    printf("    variant B %-30s %s max_abs_err %.3g\n", e.name.c_str(), rv.ok ? "passes" : "fails ", rv.max_err);
    any |= rv.ok;
  }
  if (c.ta == c.tb)
    for (auto &e : ss_alternatives(c.ta)) {
      Result rv = run_ss<T>(c, c.name, c.ta, c.tb, e, e);
      printf("    variant AB %-29s %s max_abs_err %.3g\n", e.name.c_str(), rv.ok ? "passes" : "fails ", rv.max_err);
      any |= rv.ok;
    }
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      if (ta == c.ta && tb == c.tb) continue;
      Result rv = run_ss<T>(c, c.name, ta, tb, ss_primary(ta), ss_primary(tb));
      printf("    cross-check TRANS_A=%d TRANS_B=%d (primary enc.) %s max_abs_err %.3g\n", ta, tb,
             rv.ok ? "passes" : "fails ", rv.max_err);
    }
  if (!r.ok)
    printf("    => %s\n", any ? "fix: use the passing variant's (lbo, sbo) for that operand"
                              : "no (lbo, sbo) variant passes: the error is elsewhere (address step, "
                                "swizzle, dS^T store layout, transpose flags, fences); see the cross-checks");
}

template <typename T>
static void all_cases(bool diag) {
  const float nan = NAN;
  std::vector<Case> cs = {
      // use 1: S = Q K^T, K [rows][D] swizzled, K-major B (TRANS_B 0)
      {"qk_n64_d64", 1, 64, 4, 64, 0, 0.f, 0},
      {"qk_n128_d64", 1, 128, 4, 128, 0, 0.f, 0},
      {"qk_n128_d128", 1, 128, 8, 128, 0, 0.f, 0},
      {"qk_n64_d128", 1, 64, 8, 64, 0, 0.f, 0},
      {"qk_n64_d128_rows128_n0_64", 1, 64, 8, 128, 64, 0.f, 0},  // 2nd half of a 128-key tile
      {"qk_n64_d64_rows128_n0_64", 1, 64, 4, 128, 64, 0.f, 0},
      {"qk_n64_k16_1step", 1, 64, 1, 64, 0, 0.f, 0},
      // use 2: O = P V, V [keys][D] swizzled, MN-major B (TRANS_B 1)
      {"pv_k64_d64", 2, 64, 4, 0, 0, 0.f, 0},
      {"pv_k128_d64", 2, 64, 8, 0, 0, 0.f, 0},
      {"pv_k64_d128", 2, 128, 4, 0, 0, 0.f, 0},
      {"pv_k128_d128", 2, 128, 8, 0, 0, 0.f, 0},
      {"pv_k16_d64_1step", 2, 64, 1, 0, 0, 0.f, 0},
      // scale_d = 0 on NaN-poisoned accumulators must ignore them
      {"qk_n64_d64_scale0_nanacc", 1, 64, 4, 64, 0, nan, 0},
      {"qk_n128_d128_scale0_nanacc", 1, 128, 8, 128, 0, nan, 0},
      {"pv_k128_d128_scale0_nanacc", 2, 128, 8, 0, 0, nan, 0},
      // scale_d = 1 from the first step: accumulate onto values already in the registers
      {"qk_n64_d64_accum_onto_0.75", 1, 64, 4, 64, 0, 0.75f, 1},
      {"pv_k64_d128_accum_onto_-1.5", 2, 128, 4, 0, 0, -1.5f, 1},
  };
  for (auto &c : cs) case_single<T>(c, diag);
  case_chain<T, 64, 64>();
  case_chain<T, 128, 64>();
  case_chain<T, 64, 128>();
  case_chain<T, 128, 128>();
  // SS form: dQ = dS K of bwd_dkv_wgmma_kernel<T, true> (A = dS^T tile MN-major, B = K tile MN-major)
  const std::vector<SSCase> ss = {
      {"ss_dq_dsT_k", 1, 1, 0.f, 0},                   // exactly the kernel's usage
      {"ss_kmajor_control", 0, 0, 0.f, 0},             // A [rows][k], B [n][k], both K-major
      {"ss_dq_dsT_k_scale0_nanacc", 1, 1, nan, 0},     // scale_d = 0 must ignore NaN accumulators
      // dV += P^T dO / dK += dS^T Q of the v9 dK/dV loop (MODA_CUDA_BWD_WS=2): A = the P^T / dS^T
      // tile [key][row] K-major, B = the dO / Q tile [row][d] MN-major; first step scale_d = 0
      {"ss_dvdk_pT_do", 0, 1, 0.f, 0},
      {"ss_dvdk_pT_do_scale0_nanacc", 0, 1, nan, 0},
  };
  for (auto &c : ss) case_ss<T>(c, diag);
}

int main(int argc, char **argv) {
  const bool diag = argc > 1 && !strcmp(argv[1], "diag");
  int ndev = 0;
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess || ndev == 0) {
    printf("SKIP wgmma_check: no CUDA device (%s)\n", cudaGetErrorString(e));
    return 0;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) { printf("wgmma_check: cudaGetDeviceProperties failed\n"); return 1; }
  if (prop.major != 9 || prop.minor != 0) {
    printf("SKIP wgmma_check: device %s is sm_%d%d, wgmma needs sm_90a\n", prop.name, prop.major, prop.minor);
    return 0;
  }
  printf("wgmma_check on %s (sm_%d%d)%s\n", prop.name, prop.major, prop.minor, diag ? ", diag: all variants" : "");
  all_cases<__nv_bfloat16>(diag);
  all_cases<__half>(diag);
  printf("wgmma_check: %d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
