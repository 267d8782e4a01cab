// attn_simt.cu: plain SIMT MoDA kernels (float32 accumulation): the forward for float32 and for
// every case the tensor-core kernel does not take, and this version's backward.
//
// One warp per output row: a lane holds head-dim elements lane, lane+32, ... (d <= 256), dot
// products are warp-reduced with shuffles, and every key is visited one at a time. Simple, exact
// to float32 rounding, deterministic (no atomics): each gradient row is owned by one warp that
// loops over everything that contributes to it in a fixed order.
//
// Backward (SPEC section 2), four launches:
//   1. D[b,h,t] = <dO, O>                     (workspace, float32 [B,Hq,T])
//   2. dq: warp per query row, over its visible sequence and depth keys
//   3. dk, dv: warp per (b, key j, kv head g), over the queries t that see j and the G heads
//   4. dkd, dvd: warp per (b, token u, slot l, kv head g), over the queries that see that row
#include <math.h>

#include "moda_cuda_internal.cuh"

namespace moda_cuda {

constexpr int SIMT_MAX_PER_LANE = 8;  // d <= 256
constexpr int SIMT_WARPS = 4;

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T>
__device__ __forceinline__ void load_row(float (&r)[SIMT_MAX_PER_LANE], const T *row, int d, int lane) {
#pragma unroll
  for (int e = 0; e < SIMT_MAX_PER_LANE; ++e) {
    int c = lane + 32 * e;
    r[e] = c < d ? Elem<T>::to_float(row[c]) : 0.f;
  }
}
template <typename T>
__device__ __forceinline__ void store_row(T *row, const float (&r)[SIMT_MAX_PER_LANE], float mul, int d,
                                          int lane) {
#pragma unroll
  for (int e = 0; e < SIMT_MAX_PER_LANE; ++e) {
    int c = lane + 32 * e;
    if (c < d) row[c] = Elem<T>::from_float(r[e] * mul);
  }
}
template <typename T>
__device__ __forceinline__ float dot_row(const float (&a)[SIMT_MAX_PER_LANE], const T *row, int d, int lane) {
  float s = 0.f;
#pragma unroll
  for (int e = 0; e < SIMT_MAX_PER_LANE; ++e) {
    int c = lane + 32 * e;
    if (c < d) s += a[e] * Elem<T>::to_float(row[c]);
  }
  return warp_sum(s);
}
template <typename T>
__device__ __forceinline__ void axpy_row(float (&acc)[SIMT_MAX_PER_LANE], float a, const T *row, int d, int lane) {
#pragma unroll
  for (int e = 0; e < SIMT_MAX_PER_LANE; ++e) {
    int c = lane + 32 * e;
    if (c < d) acc[e] += a * Elem<T>::to_float(row[c]);
  }
}

// Visible sequence keys of query t: [0, key_end(t)).
__device__ __forceinline__ int64_t key_end(const moda_attn_params &p, int64_t t) {
  if (!p.causal) return p.S;
  int64_t e = p.S - p.T + t + 1;
  return e < 0 ? 0 : (e > p.S ? p.S : e);
}
// Depth tokens query t sees: [u_lo, u_hi].
__device__ __forceinline__ void depth_tokens(const moda_attn_params &p, int64_t t, int64_t *u_lo,
                                             int64_t *u_hi) {
  if (p.chunk <= 0) { *u_lo = t; *u_hi = t; return; }
  *u_lo = (t / p.chunk) * p.chunk;
  if (p.causal) *u_hi = t;
  else { int64_t e = *u_lo + p.chunk - 1; *u_hi = e < p.T - 1 ? e : p.T - 1; }
}
// Queries that see the depth rows of token u: [t_lo, t_hi].
__device__ __forceinline__ void depth_queries(const moda_attn_params &p, int64_t u, int64_t *t_lo,
                                              int64_t *t_hi) {
  if (p.chunk <= 0) { *t_lo = u; *t_hi = u; return; }
  int64_t c0 = (u / p.chunk) * p.chunk;
  int64_t e = c0 + p.chunk - 1;
  *t_hi = e < p.T - 1 ? e : p.T - 1;
  *t_lo = p.causal ? u : c0;
}

template <typename T> __device__ __forceinline__ const T *qrow(const moda_attn_params &p, const void *base, const int64_t *st, int64_t b, int64_t t, int64_t h) {
  return static_cast<const T *>(base) + b * st[0] + t * st[1] + h * st[2];
}
template <typename T> __device__ __forceinline__ const T *drow(const moda_attn_params &p, const void *base, const int64_t *st, int64_t b, int64_t u, int64_t l, int64_t g) {
  return static_cast<const T *>(base) + b * st[0] + u * st[1] + l * st[2] + g * st[3];
}

// ---------------- forward ----------------
template <typename T>
__global__ void __launch_bounds__(SIMT_WARPS * 32) fwd_simt_kernel(const moda_attn_params p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * (int64_t)SIMT_WARPS + threadIdx.x / 32;  // (b, t, h) flattened
  if (row >= p.B * p.T * p.Hq) return;
  const int64_t h = row % p.Hq, t = (row / p.Hq) % p.T, b = row / (p.Hq * p.T);
  const int64_t g = h / p.G;
  const int d = (int)p.d;
  const float scale = (float)p.scale;

  float qv[SIMT_MAX_PER_LANE], acc[SIMT_MAX_PER_LANE];
  load_row(qv, qrow<T>(p, p.q, p.q_stride, b, t, h), d, lane);
#pragma unroll
  for (int e = 0; e < SIMT_MAX_PER_LANE; ++e) acc[e] = 0.f;
  float m = -INFINITY, l = 0.f;

  auto visit = [&](const T *krow, const T *vrow) {
    float s = dot_row(qv, krow, d, lane) * scale;
    float m_new = fmaxf(m, s);
    float corr = expf(m - m_new), pe = expf(s - m_new);
    l = l * corr + pe;
#pragma unroll
    for (int e = 0; e < SIMT_MAX_PER_LANE; ++e) acc[e] *= corr;
    axpy_row(acc, pe, vrow, d, lane);
    m = m_new;
  };
  const int64_t je = key_end(p, t);
  for (int64_t j = 0; j < je; ++j)
    visit(qrow<T>(p, p.k, p.k_stride, b, j, g), qrow<T>(p, p.v, p.v_stride, b, j, g));
  if (p.L > 0) {
    int64_t u_lo, u_hi;
    depth_tokens(p, t, &u_lo, &u_hi);
    for (int64_t u = u_lo; u <= u_hi; ++u)
      for (int64_t li = 0; li < p.L; ++li)
        visit(drow<T>(p, p.kd, p.kd_stride, b, u, li, g), drow<T>(p, p.vd, p.vd_stride, b, u, li, g));
  }
  T *orow = static_cast<T *>(p.o) + b * p.o_stride[0] + t * p.o_stride[1] + h * p.o_stride[2];
  store_row(orow, acc, l > 0.f ? 1.f / l : 0.f, d, lane);
  if (lane == 0)
    p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + t * p.lse_stride[2]] =
        l > 0.f ? m + logf(l) : -INFINITY;
}

// ---------------- backward ----------------
template <typename T>
__global__ void __launch_bounds__(SIMT_WARPS * 32) bwd_dot_do_o_kernel(const moda_attn_params p, float *Dbuf) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * (int64_t)SIMT_WARPS + threadIdx.x / 32;
  if (row >= p.B * p.T * p.Hq) return;
  const int64_t h = row % p.Hq, t = (row / p.Hq) % p.T, b = row / (p.Hq * p.T);
  float dov[SIMT_MAX_PER_LANE];
  load_row(dov, qrow<T>(p, p.dout, p.dout_stride, b, t, h), (int)p.d, lane);
  float D = dot_row(dov, qrow<T>(p, p.o, p.o_stride, b, t, h), (int)p.d, lane);
  if (lane == 0) Dbuf[(b * p.Hq + h) * p.T + t] = D;
}

__device__ __forceinline__ float lse_at(const moda_attn_params &p, int64_t b, int64_t h, int64_t t) {
  return p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + t * p.lse_stride[2]];
}

template <typename T>
__global__ void __launch_bounds__(SIMT_WARPS * 32) bwd_dq_kernel(const moda_attn_params p, const float *Dbuf) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * (int64_t)SIMT_WARPS + threadIdx.x / 32;
  if (row >= p.B * p.T * p.Hq) return;
  const int64_t h = row % p.Hq, t = (row / p.Hq) % p.T, b = row / (p.Hq * p.T);
  const int64_t g = h / p.G;
  const int d = (int)p.d;
  const float scale = (float)p.scale;
  float qv[SIMT_MAX_PER_LANE], dov[SIMT_MAX_PER_LANE], dq[SIMT_MAX_PER_LANE];
  load_row(qv, qrow<T>(p, p.q, p.q_stride, b, t, h), d, lane);
  load_row(dov, qrow<T>(p, p.dout, p.dout_stride, b, t, h), d, lane);
#pragma unroll
  for (int e = 0; e < SIMT_MAX_PER_LANE; ++e) dq[e] = 0.f;
  const float lse = lse_at(p, b, h, t), D = Dbuf[(b * p.Hq + h) * p.T + t];

  auto visit = [&](const T *krow, const T *vrow) {
    float pe = expf(dot_row(qv, krow, d, lane) * scale - lse);
    float ds = pe * (dot_row(dov, vrow, d, lane) - D);
    axpy_row(dq, ds, krow, d, lane);
  };
  const int64_t je = key_end(p, t);
  for (int64_t j = 0; j < je; ++j)
    visit(qrow<T>(p, p.k, p.k_stride, b, j, g), qrow<T>(p, p.v, p.v_stride, b, j, g));
  if (p.L > 0) {
    int64_t u_lo, u_hi;
    depth_tokens(p, t, &u_lo, &u_hi);
    for (int64_t u = u_lo; u <= u_hi; ++u)
      for (int64_t li = 0; li < p.L; ++li)
        visit(drow<T>(p, p.kd, p.kd_stride, b, u, li, g), drow<T>(p, p.vd, p.vd_stride, b, u, li, g));
  }
  T *out = static_cast<T *>(p.dq) + b * p.dq_stride[0] + t * p.dq_stride[1] + h * p.dq_stride[2];
  store_row(out, dq, scale, d, lane);
}

// Gradient of one key/value row (krow, vrow) seen by queries t in [t_lo, t_hi] of all G heads.
template <typename T>
__device__ __forceinline__ void kv_row_grad(const moda_attn_params &p, const float *Dbuf, int64_t b,
                                            int64_t g, const T *krow, const T *vrow, int64_t t_lo,
                                            int64_t t_hi, int lane, float (&dk)[SIMT_MAX_PER_LANE],
                                            float (&dv)[SIMT_MAX_PER_LANE]) {
  const int d = (int)p.d;
  const float scale = (float)p.scale;
  float kv[SIMT_MAX_PER_LANE], vv[SIMT_MAX_PER_LANE];
  load_row(kv, krow, d, lane);
  load_row(vv, vrow, d, lane);
#pragma unroll
  for (int e = 0; e < SIMT_MAX_PER_LANE; ++e) dk[e] = dv[e] = 0.f;
  for (int64_t t = t_lo; t <= t_hi; ++t)
    for (int64_t h = g * p.G; h < (g + 1) * p.G; ++h) {
      const T *qr = qrow<T>(p, p.q, p.q_stride, b, t, h);
      const T *dor = qrow<T>(p, p.dout, p.dout_stride, b, t, h);
      float pe = expf(dot_row(kv, qr, d, lane) * scale - lse_at(p, b, h, t));
      float ds = pe * (dot_row(vv, dor, d, lane) - Dbuf[(b * p.Hq + h) * p.T + t]);
      axpy_row(dv, pe, dor, d, lane);
      axpy_row(dk, ds, qr, d, lane);
    }
}

template <typename T>
__global__ void __launch_bounds__(SIMT_WARPS * 32) bwd_dkv_kernel(const moda_attn_params p, const float *Dbuf) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * (int64_t)SIMT_WARPS + threadIdx.x / 32;  // (b, j, g)
  if (row >= p.B * p.S * p.Hk) return;
  const int64_t g = row % p.Hk, j = (row / p.Hk) % p.S, b = row / (p.Hk * p.S);
  // Queries that see key j: causal: S-T+t >= j.
  int64_t t_lo = p.causal ? j - (p.S - p.T) : 0;
  if (t_lo < 0) t_lo = 0;
  float dk[SIMT_MAX_PER_LANE], dv[SIMT_MAX_PER_LANE];
  kv_row_grad<T>(p, Dbuf, b, g, qrow<T>(p, p.k, p.k_stride, b, j, g),
                 qrow<T>(p, p.v, p.v_stride, b, j, g), t_lo, p.T - 1, lane, dk, dv);
  T *dkr = static_cast<T *>(p.dk) + b * p.dk_stride[0] + j * p.dk_stride[1] + g * p.dk_stride[2];
  T *dvr = static_cast<T *>(p.dv) + b * p.dv_stride[0] + j * p.dv_stride[1] + g * p.dv_stride[2];
  store_row(dkr, dk, (float)p.scale, (int)p.d, lane);
  store_row(dvr, dv, 1.f, (int)p.d, lane);
}

template <typename T>
__global__ void __launch_bounds__(SIMT_WARPS * 32) bwd_dkvd_kernel(const moda_attn_params p, const float *Dbuf) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * (int64_t)SIMT_WARPS + threadIdx.x / 32;  // (b, u, l, g)
  if (row >= p.B * p.T * p.L * p.Hk) return;
  const int64_t g = row % p.Hk, li = (row / p.Hk) % p.L, u = (row / (p.Hk * p.L)) % p.T;
  const int64_t b = row / (p.Hk * p.L * p.T);
  int64_t t_lo, t_hi;
  depth_queries(p, u, &t_lo, &t_hi);
  float dk[SIMT_MAX_PER_LANE], dv[SIMT_MAX_PER_LANE];
  kv_row_grad<T>(p, Dbuf, b, g, drow<T>(p, p.kd, p.kd_stride, b, u, li, g),
                 drow<T>(p, p.vd, p.vd_stride, b, u, li, g), t_lo, t_hi, lane, dk, dv);
  T *dkr = static_cast<T *>(p.dkd) + b * p.dkd_stride[0] + u * p.dkd_stride[1] + li * p.dkd_stride[2] + g * p.dkd_stride[3];
  T *dvr = static_cast<T *>(p.dvd) + b * p.dvd_stride[0] + u * p.dvd_stride[1] + li * p.dvd_stride[2] + g * p.dvd_stride[3];
  store_row(dkr, dk, (float)p.scale, (int)p.d, lane);
  store_row(dvr, dv, 1.f, (int)p.d, lane);
}

// ---------------- host ----------------
static int64_t warp_blocks(int64_t rows) { return (rows + SIMT_WARPS - 1) / SIMT_WARPS; }

static int check_grid(int64_t blocks, const char *what) {
  if (blocks > 0x7fffffff)
    return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda %s: too many rows", what);
  return MODA_OK;
}

template <typename T>
static int fwd_simt(const moda_attn_params *p, cudaStream_t stream) {
  int64_t blocks = warp_blocks(p->B * p->T * p->Hq);
  if (blocks == 0) return MODA_OK;
  if (int st = check_grid(blocks, "attn fwd")) return st;
  fwd_simt_kernel<T><<<(unsigned)blocks, SIMT_WARPS * 32, 0, stream>>>(*p);
  MODA_CUDA_CHECK_LAUNCH("fwd_simt_kernel");
  return MODA_OK;
}

int fwd_simt_launch(const moda_attn_params *p, cudaStream_t stream) {
  switch (p->dtype) {
    case MODA_F32: return fwd_simt<float>(p, stream);
    case MODA_F16: return fwd_simt<__half>(p, stream);
    case MODA_BF16: return fwd_simt<__nv_bfloat16>(p, stream);
  }
  return moda_set_error(MODA_ERR_DTYPE, "cuda attn fwd: dtype %s not supported", moda_dtype_name(p->dtype));
}

template <typename T>
static int bwd_simt(const moda_attn_params *p, cudaStream_t stream, float *Dbuf) {
  const int threads = SIMT_WARPS * 32;
  int64_t qblocks = warp_blocks(p->B * p->T * p->Hq);
  int64_t kblocks = warp_blocks(p->B * p->S * p->Hk);
  int64_t dblocks = warp_blocks(p->B * p->T * p->L * p->Hk);
  int st;
  if ((st = check_grid(qblocks, "attn bwd")) || (st = check_grid(kblocks, "attn bwd")) ||
      (st = check_grid(dblocks, "attn bwd")))
    return st;
  if (qblocks > 0) {
    bwd_dot_do_o_kernel<T><<<(unsigned)qblocks, threads, 0, stream>>>(*p, Dbuf);
    MODA_CUDA_CHECK_LAUNCH("bwd_dot_do_o_kernel");
    bwd_dq_kernel<T><<<(unsigned)qblocks, threads, 0, stream>>>(*p, Dbuf);
    MODA_CUDA_CHECK_LAUNCH("bwd_dq_kernel");
  }
  if (kblocks > 0) {
    bwd_dkv_kernel<T><<<(unsigned)kblocks, threads, 0, stream>>>(*p, Dbuf);
    MODA_CUDA_CHECK_LAUNCH("bwd_dkv_kernel");
  }
  if (dblocks > 0) {
    bwd_dkvd_kernel<T><<<(unsigned)dblocks, threads, 0, stream>>>(*p, Dbuf);
    MODA_CUDA_CHECK_LAUNCH("bwd_dkvd_kernel");
  }
  return MODA_OK;
}

int bwd_simt_launch(const moda_attn_params *p, cudaStream_t stream, float *workspace) {
  switch (p->dtype) {
    case MODA_F32: return bwd_simt<float>(p, stream, workspace);
    case MODA_F16: return bwd_simt<__half>(p, stream, workspace);
    case MODA_BF16: return bwd_simt<__nv_bfloat16>(p, stream, workspace);
  }
  return moda_set_error(MODA_ERR_DTYPE, "cuda attn bwd: dtype %s not supported", moda_dtype_name(p->dtype));
}

}  // namespace moda_cuda
