// moda_cuda_internal.cuh: helpers shared by the .cu files of libmoda_cuda.so (not installed).
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "moda.h"
#include "moda_attn.h"
#include "moda_cuda.h"

// Returns from the enclosing function with MODA_ERR_CUDA and the CUDA error text when a CUDA call
// fails. `what` names the operation for the message.
#define MODA_CUDA_CHECK(call, what)                                                          \
  do {                                                                                       \
    cudaError_t moda_err_ = (call);                                                          \
    if (moda_err_ != cudaSuccess)                                                            \
      return moda_set_error(MODA_ERR_CUDA, "cuda: %s: %s (%s)", (what),                      \
                            cudaGetErrorString(moda_err_), cudaGetErrorName(moda_err_));      \
  } while (0)

// After a kernel launch: a launch error (bad configuration, a sticky error from earlier work).
#define MODA_CUDA_CHECK_LAUNCH(what) MODA_CUDA_CHECK(cudaGetLastError(), what)

namespace moda_cuda {

// n / d for 0 <= n < 2^31 and a run-time divisor 1 <= d < 2^31 by one multiply-high, an add and a
// shift (Granlund-Montgomery, as CUTLASS's FastDivmod), instead of the ~25 instructions of an
// integer division: shift = ceil(log2 d), mul = floor(2^32 (2^shift - d) / d) + 1. Checked for
// every d < 1100, the powers of two and their neighbours and random d, n (session 8, Python).
struct FastDiv {
  uint32_t mul, shift;
  __device__ __forceinline__ explicit FastDiv(uint32_t d) {
    shift = d > 1 ? 32 - __clz(d - 1) : 0;
    mul = (uint32_t)((((1ull << 32) * ((1ull << shift) - d)) / d) + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, mul) + n) >> shift; }
};

// ---- element conversions (device) ----
template <typename T> struct Elem;
template <> struct Elem<float> {
  static __device__ __forceinline__ float to_float(float x) { return x; }
  static __device__ __forceinline__ float from_float(float x) { return x; }
};
template <> struct Elem<__half> {
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};
template <> struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

// Packed row R = t*G + i of KV head g (token t, query head g*G + i) in a [B, T, Hq, d] tensor
// with element strides st: the row every tensor-core kernel's GQA packing addresses.
template <typename T>
__device__ __forceinline__ T *packed_row(T *base, const int64_t *st, int64_t b, int64_t g, int64_t G, int64_t R) {
  return base + b * st[0] + (R / G) * st[1] + (g * G + R % G) * st[2];
}

// Rows of lse2 / delta per (batch, KV head) in the backward's workspace: T*G rounded up to 128
// (padding: lse2 = +inf, delta = 0), so any 64- or 128-row block starting at a multiple of its size
// is an aligned bulk copy inside the padding (the warp-specialised dK/dV kernels' loads; 128 for
// the 128-row steps of bwd_dkv_wgmma_q128_kernel).
__host__ __device__ __forceinline__ constexpr int64_t stat_rows(int64_t TG) { return (TG + 127) / 128 * 128; }

// Mean visible sequence keys per query: the measure the kernel-choice rules use (a causal query
// sees S - T + t + 1 keys, T/2 fewer on average than a full one).
__host__ __forceinline__ int64_t mean_seq_keys(const moda_attn_params *p) { return p->causal ? p->S - p->T / 2 : p->S; }

// The library-owned grow-only workspace (backend.cu).
int workspace_get(void **ptr, int64_t bytes);

// Forward / backward launchers (attn_fwd_mma.cu, attn_simt.cu). They assume validated params.
bool fwd_mma_supported(const moda_attn_params *p, int cc);
const char *fwd_mma_name(const moda_attn_params *p);
int fwd_mma_launch(const moda_attn_params *p, cudaStream_t stream);
// Overrides MODA_CUDA_FWD_FLAGS (the bits in attn_fwd_common.cuh) for later launches; -1 re-reads
// the environment. For tests and A/B timing in one process (attn_check wgmmabench); not thread-safe.
void fwd_set_flags(int flags);
// wgmma kernels (sm_90a): MODA_CUDA_WGMMA = 0 (off), 1 or unset (where the shape rules pick
// them), 2 (wherever they can run; tests). attn_fwd_wgmma.cu.
int wgmma_mode();
int wgmma_bwd_mode();  // MODA_CUDA_WGMMA_BWD=0..3 (none, both, dK/dV, dQ), else 1 when wgmma_mode() > 0
// wgmma forward (attn_fwd_wgmma.cu, sm_90a): taken by fwd_mma_launch where supported.
bool fwd_wgmma_supported(const moda_attn_params *p, int cc, int flags);
const char *fwd_wgmma_name(const moda_attn_params *p, int flags);
int fwd_wgmma_launch(const moda_attn_params *p, cudaStream_t stream, int flags);
int fwd_simt_launch(const moda_attn_params *p, cudaStream_t stream);
int bwd_simt_launch(const moda_attn_params *p, cudaStream_t stream, float *workspace);
// Tensor-core backward (attn_bwd_mma.cu): bf16/fp16, d = 64/128, aligned rows; deterministic
// unless p->deterministic = 0 and the atomic-dQ path is taken (bwd_atomic_dq_selected).
bool bwd_mma_supported(const moda_attn_params *p, int cc);
const char *bwd_mma_name(const moda_attn_params *p);
int64_t dq_part_offset(const moda_attn_params *p);  // floats: where the concurrent depth kernel's dq part starts
int64_t bwd_mma_workspace_floats(const moda_attn_params *p);
int bwd_mma_launch(const moda_attn_params *p, cudaStream_t stream, float *workspace);
// The warp-specialised sequence dK/dV kernel (attn_bwd_wgmma.cu, sm_90a, d = 64, G dividing 64,
// TMA-encodable q, k, v, dout): MODA_CUDA_BWD_WS; launched = false where it cannot run (the
// caller then runs bwd_dkv_wgmma_kernel). dq_accum != nullptr: dQ by float32 reductions.
bool bwd_ws_selected(const moda_attn_params *p);
bool bwd_ws_launchable(const moda_attn_params *p);
// the sequence dQ by the warp-specialised dQ kernel (attn_bwd_wgmma.cu; default, MODA_CUDA_BWD_DQ_WS=0 off):
// unscaled float32 into dq_buf [B, Hk, T*G, d] for the depth kernel; launched = false where its
// TMA maps do not encode
bool bwd_dq_ws_selected(const moda_attn_params *p);
int bwd_dq_ws_launch(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta, float *dq_buf,
                     bool *launched);
// dq_sem != nullptr: dQ by ordered adds (deterministic; dq_accum and dq_sem zeroed by the caller).
int bwd_dkv_ws_launch(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta,
                      float *dq_accum, int *dq_sem, bool *launched);

// The depth part of the backward for token visibility (attn_bwd_depth.cu): dkd, dvd and dq's
// depth part, added to the unscaled float32 sequence dQ in dq_seq; writes dq. Runs last.
// _supported: where it can run (the choice is attn_bwd_mma.cu's bwd_depth_kernel_selected).
bool bwd_depth_kernel_supported(const moda_attn_params *p);
int bwd_depth_launch(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta,
                     const float *dq_seq);
// The concurrent variant: _sms is how many SMs it takes (0: not concurrent); _fork records an
// event on `stream` and starts the depth kernel after it on a side stream, writing dq's depth part
// to dq_part; _join makes `stream` wait for it and writes dq = scale * (dq_seq + dq_part).
// (dq_kernel: dQ's sequence part by the dQ kernel, not by atomics in the dK/dV kernel);
// _possible: it could run (the shape and the switches), whatever the rule says.
int bwd_depth_concurrent_sms(const moda_attn_params *p, bool dq_kernel);
bool bwd_depth_concurrent_possible(const moda_attn_params *p);
double bwd_seq_depth_ratio(const moda_attn_params *p);  // estimated sequence / depth backward time
int bwd_depth_concurrent_fork(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta,
                              float *dq_part, int sms);
int bwd_depth_concurrent_join(const moda_attn_params *p, cudaStream_t stream, const float *dq_seq,
                              const float *dq_part);

// The same depth backward as a TMA stream (attn_bwd_depth_tma.cu; sm_90a, d = 64, G dividing 8):
// _selected where it runs instead (alone or in the concurrent backward); _launch with dq_part
// (the concurrent backward, at most max_ctas CTAs) or dq_seq (writes dq), as the kernel it replaces.
bool bwd_depth_tma_selected(const moda_attn_params *p, bool concurrent);
int bwd_depth_tma_launch(const moda_attn_params *p, cudaStream_t stream, const float *lse2, const float *delta,
                         const float *dq_seq, float *dq_part, int max_ctas);

// Decode path (attn_decode.cu): T <= 16 queries against a long cache, split-K + combine.
bool fwd_decode_selected(const moda_attn_params *p);
int64_t fwd_decode_workspace_bytes(const moda_attn_params *p);
const char *fwd_decode_name(const moda_attn_params *p);
int fwd_decode_launch(const moda_attn_params *p, cudaStream_t stream, void *workspace);

int current_cc();  // compute capability major*10+minor of the current device (queried per call)

// Lets Kernel launch with `bytes` of dynamic shared memory (beyond the 48 KB default). Launchers call
// it before every launch; the driver call runs only when `bytes` exceeds what this kernel was
// allowed so far (one static per kernel instantiation, as the attribute is per kernel).
template <auto Kernel>
int allow_dynamic_smem(int bytes, const char *kernel_name) {
  static int allowed = 0;
  if (bytes <= allowed) return MODA_OK;
  const cudaError_t err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess)
    return moda_set_error(MODA_ERR_CUDA, "cuda: cudaFuncSetAttribute(%s, %d bytes of dynamic smem): %s (%s)",
                          kernel_name, bytes, cudaGetErrorString(err), cudaGetErrorName(err));
  allowed = bytes;
  return MODA_OK;
}

}  // namespace moda_cuda
