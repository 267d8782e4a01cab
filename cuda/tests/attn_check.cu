// attn_check.cu: standalone check of the CUDA MoDA kernels against a float64 CPU reference
// (SPEC sections 1, 2, 5), independent of the Lua core. Built and run by cuda/run_checks.sh:
//   nvcc ... cuda/tests/attn_check.cu cuda/attn.cu cuda/attn_simt.cu cuda/attn_fwd_mma.cu cuda/backend.cu
// It defines the few core functions the library uses (moda_set_error, ...) so it needs no libmoda.
// Every case: fresh random inputs, outputs poisoned with NaN, depth read from a [B,T,Lmax,Hk,d]
// buffer with Lmax > L (strided), error = max|out-ref| / max|ref| per tensor, NaN fails.
// Usage: attn_check [quick|full|bwd|san] [bench]   (bwd: the backward grid alone, full includes
// it; san: a few small backward cases for compute-sanitizer; decode: the decode-path cases alone;
// decsmall: the small decode cases, for compute-sanitizer; depth: forward-only cases aimed at the
// tensor-core forward's depth phase (ring path: L not a multiple of 16, groups spanning tokens
// and chunks, rows past T*G); depthsan: a few small ones for compute-sanitizer; wgmmabench: no
// checks, times the mma.sync forward (flag bit 4) against the wgmma forward on the paper and
// model shapes, interleaved in one process, and prints a table; run it with MODA_CUDA_WGMMA=1)
// Backward cases also rerun the backward and require bit-identical gradients (determinism).
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "moda_cuda.h"

// attn_fwd_mma.cu's flag override (moda_cuda_internal.cuh): the checker links the objects directly.
namespace moda_cuda { void fwd_set_flags(int flags); }

// ---- the core functions libmoda_cuda uses (the real ones live in libmoda.so) ----
static char g_err[1024];
extern "C" int moda_set_error(int status, const char *fmt, ...) {
  va_list ap; va_start(ap, fmt); vsnprintf(g_err, sizeof g_err, fmt, ap); va_end(ap);
  return status;
}
extern "C" const char *moda_last_error(void) { return g_err; }
extern "C" const char *moda_dtype_name(int dt) {
  static const char *n[] = {"float32", "float64", "float16", "bfloat16", "int32", "int64", "uint8"};
  return dt >= 0 && dt < 7 ? n[dt] : "invalid";
}
extern "C" const char *moda_device_name(int dev) { return dev == 0 ? "cpu" : dev == 1 ? "cuda" : "invalid"; }
extern "C" int64_t moda_dtype_size(int dt) {
  static const int64_t s[] = {4, 8, 2, 2, 4, 8, 1};
  return dt >= 0 && dt < 7 ? s[dt] : 0;
}
extern "C" int moda_register_backend(int, const moda_backend *) { return 0; }
extern "C" int64_t moda_tensor_numel(const moda_tensor *t) {
  int64_t n = 1; for (int i = 0; i < t->ndim; ++i) n *= t->sizes[i]; return n;
}
extern "C" void *moda_tensor_data(const moda_tensor *t) {
  return (char *)t->storage->data + t->offset * moda_dtype_size(t->dtype_id);
}
extern "C" int moda_tensor_is_contiguous(const moda_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; --i) { if (t->sizes[i] != 1 && t->strides[i] != s) return 0; s *= t->sizes[i]; }
  return 1;
}

#define CK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
  fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); exit(2); } } while (0)

struct Case {
  int B, T, S, Hk, G, L, d, causal, chunk, dtype;
  bool bwd;
  int decode_mode = 0;  // moda_cuda_set_decode_mode for this case (2: force the split-K decode path)
  int deterministic = 1;  // p.deterministic for the backward (both settings must be bit-reproducible)
};

static std::mt19937_64 rng(12345);

// A host buffer of values already rounded to the dtype, plus its device copy.
struct Buf {
  std::vector<double> h;   // values (as the dtype represents them)
  void *dev = nullptr;
  int dtype = MODA_F32;
  size_t n = 0;
  void alloc(size_t n_, int dt) {
    n = n_; dtype = dt; h.assign(n, 0.0);
    CK(cudaMalloc(&dev, n * moda_dtype_size(dt) + 16));
  }
  void randn() {
    std::normal_distribution<double> nd(0.0, 1.0);
    for (auto &x : h) x = nd(rng);
    upload();
  }
  void upload() {
    size_t es = moda_dtype_size(dtype);
    std::vector<unsigned char> raw(n * es);
    for (size_t i = 0; i < n; ++i) {
      float f = (float)h[i];
      if (dtype == MODA_F32) { memcpy(&raw[i * 4], &f, 4); h[i] = f; }
      else if (dtype == MODA_F16) { __half v = __float2half_rn(f); memcpy(&raw[i * 2], &v, 2); h[i] = __half2float(v); }
      else { __nv_bfloat16 v = __float2bfloat16_rn(f); memcpy(&raw[i * 2], &v, 2); h[i] = __bfloat162float(v); }
    }
    CK(cudaMemcpy(dev, raw.data(), raw.size(), cudaMemcpyHostToDevice));
  }
  void poison() { CK(cudaMemset(dev, 0xff, n * moda_dtype_size(dtype))); }  // NaN in f32/f16/bf16
  std::vector<double> download() const {
    size_t es = moda_dtype_size(dtype);
    std::vector<unsigned char> raw(n * es);
    CK(cudaMemcpy(raw.data(), dev, raw.size(), cudaMemcpyDeviceToHost));
    std::vector<double> out(n);
    for (size_t i = 0; i < n; ++i) {
      if (dtype == MODA_F32) { float f; memcpy(&f, &raw[i * 4], 4); out[i] = f; }
      else if (dtype == MODA_F16) { __half v; memcpy(&v, &raw[i * 2], 2); out[i] = __half2float(v); }
      else { __nv_bfloat16 v; memcpy(&v, &raw[i * 2], 2); out[i] = __bfloat162float(v); }
    }
    return out;
  }
  void release() { if (dev) cudaFree(dev); dev = nullptr; }
};

// Relative error max|a-r| / max|r| over the elements idx(i) of a that the reference covers.
static double rel_err(const std::vector<double> &got, const std::vector<double> &ref,
                      const std::vector<size_t> &where) {
  double md = 0, mr = 0;
  for (size_t k = 0; k < where.size(); ++k) {
    double g = got[where[k]], r = ref[k];
    if (!(g == g)) return INFINITY;  // NaN
    md = fmax(md, fabs(g - r));
    mr = fmax(mr, fabs(r));
  }
  return mr > 0 ? md / mr : md;
}

static const char *dtname(int dt) { return dt == MODA_F32 ? "f32" : dt == MODA_F16 ? "f16" : "bf16"; }

struct Result {
  double err_o, err_lse, err_dq, err_dk, err_dv, err_dkd, err_dvd;
  const char *kernel, *bwd_kernel;
  bool bwd_repro;  // a second backward on the same inputs gave bit-identical gradients
};

static Result run_case(const Case &c) {
  const int B = c.B, T = c.T, S = c.S, Hk = c.Hk, G = c.G, L = c.L, d = c.d, Hq = G * Hk;
  const int Lmax = L + 2;  // depth buffer has more slots than L: strided read
  const double scale = 1.0 / sqrt((double)d);
  Buf q, k, v, kd, vd, o, dout, dq, dk, dv, dkd, dvd;
  q.alloc((size_t)B * T * Hq * d, c.dtype); q.randn();
  k.alloc((size_t)B * S * Hk * d, c.dtype); k.randn();
  v.alloc((size_t)B * S * Hk * d, c.dtype); v.randn();
  size_t nd = (size_t)B * T * Lmax * Hk * d;
  kd.alloc(nd > 0 ? nd : 1, c.dtype); kd.randn();
  vd.alloc(nd > 0 ? nd : 1, c.dtype); vd.randn();
  o.alloc((size_t)B * T * Hq * d, c.dtype); o.poison();
  float *lse_dev; CK(cudaMalloc(&lse_dev, sizeof(float) * B * Hq * T + 16));
  CK(cudaMemset(lse_dev, 0xff, sizeof(float) * B * Hq * T));

  moda_attn_params p;
  memset(&p, 0, sizeof p);
  p.dtype = c.dtype; p.causal = c.causal; p.chunk = c.chunk; p.deterministic = c.deterministic;
  p.B = B; p.T = T; p.S = S; p.Hq = Hq; p.Hk = Hk; p.G = G; p.L = L; p.d = d; p.scale = scale;
  int64_t qs[3] = {(int64_t)T * Hq * d, (int64_t)Hq * d, d};
  int64_t ks[3] = {(int64_t)S * Hk * d, (int64_t)Hk * d, d};
  int64_t ds[4] = {(int64_t)T * Lmax * Hk * d, (int64_t)Lmax * Hk * d, (int64_t)Hk * d, d};
  int64_t ls[3] = {(int64_t)Hq * T, T, 1};
  p.q = q.dev; memcpy(p.q_stride, qs, sizeof qs);
  p.k = k.dev; memcpy(p.k_stride, ks, sizeof ks);
  p.v = v.dev; memcpy(p.v_stride, ks, sizeof ks);
  p.kd = L > 0 ? kd.dev : nullptr; memcpy(p.kd_stride, ds, sizeof ds);
  p.vd = L > 0 ? vd.dev : nullptr; memcpy(p.vd_stride, ds, sizeof ds);
  p.o = o.dev; memcpy(p.o_stride, qs, sizeof qs);
  p.lse = lse_dev; memcpy(p.lse_stride, ls, sizeof ls);

  if (moda_cuda_set_decode_mode(c.decode_mode)) { fprintf(stderr, "%s\n", moda_last_error()); exit(3); }
  Result res = {NAN, NAN, 0, 0, 0, 0, 0, moda_attn_fwd_cuda_kernel_name(&p), "-", true};
  int st;
  if (c.decode_mode) {
    // caller-owned workspace of exactly the reported size (an undersized report shows up in
    // memcheck and in the results)
    int64_t wsb = moda_attn_fwd_cuda_workspace_size(&p);
    void *ws = nullptr;
    if (wsb > 0) { CK(cudaMalloc(&ws, (size_t)wsb)); CK(cudaMemset(ws, 0xff, (size_t)wsb)); }
    st = moda_attn_fwd_cuda_ws(&p, nullptr, ws, wsb);
    CK(cudaDeviceSynchronize());
    if (ws) CK(cudaFree(ws));
  } else {
    st = moda_attn_fwd_cuda(&p, nullptr);
  }
  moda_cuda_set_decode_mode(0);
  if (st) { fprintf(stderr, "fwd failed: %s\n", moda_last_error()); exit(3); }
  CK(cudaDeviceSynchronize());

  // ---- float64 reference ----
  auto KDi = [&](int b, int u, int l, int g) { return ((((size_t)b * T + u) * Lmax + l) * Hk + g) * d; };
  std::vector<double> ro((size_t)B * T * Hq * d), rlse((size_t)B * Hq * T);
  std::vector<double> rdq(ro.size(), 0), rdk(k.n, 0), rdv(v.n, 0), rdkd(nd, 0), rdvd(nd, 0);
  if (c.bwd) { dout.alloc(ro.size(), c.dtype); dout.randn(); }
  struct Key { const double *kr, *vr; double *dkr, *dvr; };
  std::vector<Key> keys;
  std::vector<double> sc, dpv;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < Hq; ++h) {
        int g = h / G;
        keys.clear();
        int je = c.causal ? S - T + t + 1 : S;
        for (int j = 0; j < je; ++j)
          keys.push_back({&k.h[(((size_t)b * S + j) * Hk + g) * d], &v.h[(((size_t)b * S + j) * Hk + g) * d],
                          &rdk[(((size_t)b * S + j) * Hk + g) * d], &rdv[(((size_t)b * S + j) * Hk + g) * d]});
        if (L > 0) {
          int u_lo = t, u_hi = t;
          if (c.chunk > 0) {
            u_lo = (t / c.chunk) * c.chunk;
            u_hi = c.causal ? t : std::min(T - 1, u_lo + c.chunk - 1);
          }
          for (int u = u_lo; u <= u_hi; ++u)
            for (int l = 0; l < L; ++l)
              keys.push_back({&kd.h[KDi(b, u, l, g)], &vd.h[KDi(b, u, l, g)], &rdkd[KDi(b, u, l, g)], &rdvd[KDi(b, u, l, g)]});
        }
        const double *qr = &q.h[(((size_t)b * T + t) * Hq + h) * d];
        sc.resize(keys.size());
        double m = -INFINITY;
        for (size_t i = 0; i < keys.size(); ++i) {
          double s = 0; for (int x = 0; x < d; ++x) s += qr[x] * keys[i].kr[x];
          sc[i] = s * scale; m = fmax(m, sc[i]);
        }
        double Z = 0; for (size_t i = 0; i < keys.size(); ++i) { sc[i] = exp(sc[i] - m); Z += sc[i]; }
        double *orow = &ro[(((size_t)b * T + t) * Hq + h) * d];
        for (size_t i = 0; i < keys.size(); ++i) {
          sc[i] /= Z;
          for (int x = 0; x < d; ++x) orow[x] += sc[i] * keys[i].vr[x];
        }
        rlse[((size_t)b * Hq + h) * T + t] = m + log(Z);
        if (!c.bwd) continue;
        const double *dor = &dout.h[(((size_t)b * T + t) * Hq + h) * d];
        double D = 0; for (int x = 0; x < d; ++x) D += dor[x] * orow[x];
        double *dqr = &rdq[(((size_t)b * T + t) * Hq + h) * d];
        for (size_t i = 0; i < keys.size(); ++i) {
          double dp = 0; for (int x = 0; x < d; ++x) dp += dor[x] * keys[i].vr[x];
          double dsv = sc[i] * (dp - D);
          for (int x = 0; x < d; ++x) {
            dqr[x] += scale * dsv * keys[i].kr[x];
            keys[i].dkr[x] += scale * dsv * qr[x];
            keys[i].dvr[x] += sc[i] * dor[x];
          }
        }
      }

  std::vector<size_t> all_o(ro.size());
  for (size_t i = 0; i < all_o.size(); ++i) all_o[i] = i;
  res.err_o = rel_err(o.download(), ro, all_o);
  {
    std::vector<float> lh(rlse.size());
    CK(cudaMemcpy(lh.data(), lse_dev, lh.size() * 4, cudaMemcpyDeviceToHost));
    std::vector<double> lg(lh.begin(), lh.end());
    std::vector<size_t> all(rlse.size()); for (size_t i = 0; i < all.size(); ++i) all[i] = i;
    res.err_lse = rel_err(lg, rlse, all);
  }
  if (c.bwd) {
    dq.alloc(q.n, c.dtype); dq.poison();
    dk.alloc(k.n, c.dtype); dk.poison();
    dv.alloc(v.n, c.dtype); dv.poison();
    dkd.alloc(nd > 0 ? nd : 1, c.dtype); dkd.poison();
    dvd.alloc(nd > 0 ? nd : 1, c.dtype); dvd.poison();
    p.dout = dout.dev; memcpy(p.dout_stride, qs, sizeof qs);
    p.dq = dq.dev; memcpy(p.dq_stride, qs, sizeof qs);
    p.dk = dk.dev; memcpy(p.dk_stride, ks, sizeof ks);
    p.dv = dv.dev; memcpy(p.dv_stride, ks, sizeof ks);
    p.dkd = L > 0 ? dkd.dev : nullptr; memcpy(p.dkd_stride, ds, sizeof ds);
    p.dvd = L > 0 ? dvd.dev : nullptr; memcpy(p.dvd_stride, ds, sizeof ds);
    res.bwd_kernel = moda_attn_bwd_cuda_kernel_name(&p);
    st = moda_attn_bwd_cuda(&p, nullptr, nullptr, 0);
    if (st) { fprintf(stderr, "bwd failed: %s\n", moda_last_error()); exit(3); }
    CK(cudaDeviceSynchronize());
    // Determinism: poison again, rerun on the same inputs, every gradient bit-identical.
    {
      std::vector<std::vector<double>> first;
      for (Buf *x : {&dq, &dk, &dv, &dkd, &dvd}) first.push_back(x->download());
      for (Buf *x : {&dq, &dk, &dv, &dkd, &dvd}) x->poison();
      st = moda_attn_bwd_cuda(&p, nullptr, nullptr, 0);
      if (st) { fprintf(stderr, "bwd failed: %s\n", moda_last_error()); exit(3); }
      CK(cudaDeviceSynchronize());
      int xi = 0;
      // the atomic-dQ path (deterministic = 0 only) sums dq in a run-dependent order
      const bool dq_varies = strstr(res.bwd_kernel, "atomic") != nullptr;
      for (Buf *x : {&dq, &dk, &dv, &dkd, &dvd}) {
        if (L == 0 && (x == &dkd || x == &dvd)) { ++xi; continue; }  // not outputs when L = 0
        if (dq_varies && x == &dq) { ++xi; continue; }
        std::vector<double> again = x->download();
        for (size_t i = 0; i < again.size(); ++i)
          if (memcmp(&again[i], &first[xi][i], sizeof(double)) != 0) { res.bwd_repro = false; break; }
        ++xi;
      }
    }
    res.err_dq = rel_err(dq.download(), rdq, all_o);
    std::vector<size_t> allk(k.n); for (size_t i = 0; i < allk.size(); ++i) allk[i] = i;
    res.err_dk = rel_err(dk.download(), rdk, allk);
    res.err_dv = rel_err(dv.download(), rdv, allk);
    if (L > 0) {
      // only the first L slots of each token are gradients; compare those
      std::vector<size_t> wh; std::vector<double> rk, rv;
      for (int b = 0; b < B; ++b) for (int u = 0; u < T; ++u) for (int l = 0; l < L; ++l)
        for (int g = 0; g < Hk; ++g) for (int x = 0; x < d; ++x) {
          size_t i = KDi(b, u, l, g) + x; wh.push_back(i); rk.push_back(rdkd[i]); rv.push_back(rdvd[i]);
        }
      res.err_dkd = rel_err(dkd.download(), rk, wh);
      res.err_dvd = rel_err(dvd.download(), rv, wh);
    }
  }
  for (Buf *x : {&q, &k, &v, &kd, &vd, &o, &dout, &dq, &dk, &dv, &dkd, &dvd}) x->release();
  cudaFree(lse_dev);
  return res;
}

static void bench_fwd(int B, int T, int Hk, int G, int L, int d, int causal, int chunk) {
  int Hq = Hk * G;
  size_t nq = (size_t)B * T * Hq * d, nk = (size_t)B * T * Hk * d, nd = (size_t)B * T * L * Hk * d;
  void *q, *k, *v, *kd, *vd, *o; float *lse;
  CK(cudaMalloc(&q, nq * 2)); CK(cudaMalloc(&k, nk * 2)); CK(cudaMalloc(&v, nk * 2));
  CK(cudaMalloc(&kd, nd * 2 + 16)); CK(cudaMalloc(&vd, nd * 2 + 16)); CK(cudaMalloc(&o, nq * 2));
  CK(cudaMalloc(&lse, (size_t)B * Hq * T * 4));
  // random-ish data: fill via a quick kernel-free host pattern would be slow; use memset of a
  // non-zero bf16 pattern (0x3c00 ~ 1.0 in bf16 is 0x3f80): values differ little, fine for timing.
  CK(cudaMemset(q, 0x3e, nq * 2)); CK(cudaMemset(k, 0x3d, nk * 2)); CK(cudaMemset(v, 0x3f, nk * 2));
  CK(cudaMemset(kd, 0x3d, nd * 2)); CK(cudaMemset(vd, 0x3f, nd * 2));
  moda_attn_params p; memset(&p, 0, sizeof p);
  p.dtype = MODA_BF16; p.causal = causal; p.chunk = chunk;
  p.B = B; p.T = T; p.S = T; p.Hq = Hq; p.Hk = Hk; p.G = G; p.L = L; p.d = d; p.scale = 1.0 / sqrt((double)d);
  int64_t qs[3] = {(int64_t)T * Hq * d, (int64_t)Hq * d, d}, ks[3] = {(int64_t)T * Hk * d, (int64_t)Hk * d, d};
  int64_t ds[4] = {(int64_t)T * L * Hk * d, (int64_t)L * Hk * d, (int64_t)Hk * d, d}, ls[3] = {(int64_t)Hq * T, T, 1};
  p.q = q; memcpy(p.q_stride, qs, sizeof qs); p.k = k; memcpy(p.k_stride, ks, sizeof ks);
  p.v = v; memcpy(p.v_stride, ks, sizeof ks); p.kd = L ? kd : nullptr; memcpy(p.kd_stride, ds, sizeof ds);
  p.vd = L ? vd : nullptr; memcpy(p.vd_stride, ds, sizeof ds); p.o = o; memcpy(p.o_stride, qs, sizeof qs);
  p.lse = lse; memcpy(p.lse_stride, ls, sizeof ls);
  cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) if (moda_attn_fwd_cuda(&p, nullptr)) { fprintf(stderr, "%s\n", moda_last_error()); exit(3); }
  std::vector<float> ts;
  for (int i = 0; i < 10; ++i) {
    CK(cudaEventRecord(e0)); moda_attn_fwd_cuda(&p, nullptr); CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
    float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); ts.push_back(ms);
  }
  std::sort(ts.begin(), ts.end());
  double ms = ts[ts.size() / 2];
  double seq = causal ? (double)T * (T + 1) / 2 : (double)T * T;
  double flops = 4.0 * B * Hq * d * (seq + (double)T * L);
  printf("bench fwd B=%d T=%d Hq=%d Hk=%d L=%d d=%d %s: %.3f ms  %.1f TFLOP/s (useful)\n", B, T, Hq, Hk, L, d,
         causal ? "causal" : "full", ms, flops / ms / 1e9);
  for (void *x : {q, k, v, kd, vd, o}) cudaFree(x);
  cudaFree(lse);
}

// Median forward time (ms) of one shape under the given MODA_CUDA_FWD_FLAGS bits; buffers as
// bench_fwd (contiguous [B,T,L,Hk,d] depth, constant bf16 patterns).
struct BenchShape { const char *label; int B, T, Hk, G, L, causal; };
static double time_fwd_flags(const moda_attn_params &p, int flags, int reps) {
  moda_cuda::fwd_set_flags(flags);
  cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) if (moda_attn_fwd_cuda(&p, nullptr)) { fprintf(stderr, "%s\n", moda_last_error()); exit(3); }
  std::vector<float> ts;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(e0)); moda_attn_fwd_cuda(&p, nullptr); CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
    float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); ts.push_back(ms);
  }
  CK(cudaGetLastError());
  cudaEventDestroy(e0); cudaEventDestroy(e1);
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}
// A/B forward timing in one process: flags `a` vs flags `b` (MODA_CUDA_FWD_FLAGS bits) on the
// paper and model shapes. wgmmabench: the mma.sync kernel (bit 4) vs the wgmma kernel (run with
// MODA_CUDA_WGMMA=1).
static void ab_bench(int a, int b, const char *a_name, const char *b_name) {
  const BenchShape shapes[] = {
      {"paper T=4096", 1, 4096, 8, 8, 64, 1},       {"paper T=16384", 1, 16384, 8, 8, 64, 1},
      {"paper T=16384 L=0", 1, 16384, 8, 8, 0, 1},  {"DeiT-Tiny L=22", 256, 197, 1, 4, 22, 0},
      {"DeiT-Tiny-64 L=126", 256, 197, 1, 4, 126, 0}, {"LM-64 L=126", 8, 2048, 2, 4, 126, 1},
      {"paper T=65536", 1, 65536, 8, 8, 64, 1}};
  const int OLD = a, NEW = b;
  const int d = 64, rounds = 3;
  struct Row { std::string label, kernel_a, kernel_b; double old_ms, new_ms, floor_ms; };
  std::vector<Row> rows;
  for (const BenchShape &sh : shapes) {
    const int B = sh.B, T = sh.T, Hk = sh.Hk, G = sh.G, L = sh.L, Hq = Hk * G;
    size_t nq = (size_t)B * T * Hq * d, nk = (size_t)B * T * Hk * d, nd = (size_t)B * T * L * Hk * d;
    void *q, *k, *v, *kd, *vd, *o; float *lse;
    CK(cudaMalloc(&q, nq * 2)); CK(cudaMalloc(&k, nk * 2)); CK(cudaMalloc(&v, nk * 2));
    CK(cudaMalloc(&kd, nd * 2 + 16)); CK(cudaMalloc(&vd, nd * 2 + 16)); CK(cudaMalloc(&o, nq * 2));
    CK(cudaMalloc(&lse, (size_t)B * Hq * T * 4));
    CK(cudaMemset(q, 0x3e, nq * 2)); CK(cudaMemset(k, 0x3d, nk * 2)); CK(cudaMemset(v, 0x3f, nk * 2));
    CK(cudaMemset(kd, 0x3d, nd * 2)); CK(cudaMemset(vd, 0x3f, nd * 2));
    moda_attn_params p; memset(&p, 0, sizeof p);
    p.dtype = MODA_BF16; p.causal = sh.causal; p.chunk = 0;
    p.B = B; p.T = T; p.S = T; p.Hq = Hq; p.Hk = Hk; p.G = G; p.L = L; p.d = d; p.scale = 1.0 / sqrt((double)d);
    int64_t qs[3] = {(int64_t)T * Hq * d, (int64_t)Hq * d, d}, ks[3] = {(int64_t)T * Hk * d, (int64_t)Hk * d, d};
    int64_t ds[4] = {(int64_t)T * L * Hk * d, (int64_t)L * Hk * d, (int64_t)Hk * d, d}, ls[3] = {(int64_t)Hq * T, T, 1};
    p.q = q; memcpy(p.q_stride, qs, sizeof qs); p.k = k; memcpy(p.k_stride, ks, sizeof ks);
    p.v = v; memcpy(p.v_stride, ks, sizeof ks); p.kd = L ? kd : nullptr; memcpy(p.kd_stride, ds, sizeof ds);
    p.vd = L ? vd : nullptr; memcpy(p.vd_stride, ds, sizeof ds); p.o = o; memcpy(p.o_stride, qs, sizeof qs);
    p.lse = lse; memcpy(p.lse_stride, ls, sizeof ls);
    double t_old = INFINITY, t_new = INFINITY;
    for (int r = 0; r < rounds; ++r) {  // interleaved; best of the rounds' medians
      t_old = fmin(t_old, time_fwd_flags(p, OLD, 10));
      t_new = fmin(t_new, time_fwd_flags(p, NEW, 10));
    }
    // bytes every forward must move (q, k, v, kd, vd read, o written) at 3.0 TB/s
    double bytes = 2.0 * (2.0 * nq + 2.0 * nk + 2.0 * nd);
    moda_cuda::fwd_set_flags(OLD);
    std::string ka = moda_attn_fwd_cuda_kernel_name(&p);
    moda_cuda::fwd_set_flags(NEW);
    std::string kb = moda_attn_fwd_cuda_kernel_name(&p);
    rows.push_back({sh.label, ka, kb, t_old, t_new, bytes / 3.0e12 * 1e3});
    printf("bench %-20s %s %-15s %8.3f ms  %s %-15s %8.3f ms\n", sh.label, a_name, ka.c_str(), t_old, b_name, kb.c_str(), t_new);
    fflush(stdout);
    for (void *x : {q, k, v, kd, vd, o}) cudaFree(x);
    cudaFree(lse);
  }
  moda_cuda::fwd_set_flags(-1);
  printf("\nforward, bf16, d=64, ms (best of %d interleaved 10-run medians); floor = compulsory bytes at 3.0 TB/s\n", rounds);
  printf("| %-20s | %-15s | %-15s | %10s | %10s | %8s | %8s |\n", "shape", a_name, b_name, "ms", "ms", "ratio", "floor");
  printf("|%s|%s|%s|%s|%s|%s|%s|\n", "----------------------", "-----------------", "-----------------", "------------",
         "------------", "----------", "----------");
  for (const Row &r : rows)
    printf("| %-20s | %-15s | %-15s | %10.3f | %10.3f | %8.2f | %8.3f |\n", r.label.c_str(), r.kernel_a.c_str(),
           r.kernel_b.c_str(), r.old_ms, r.new_ms, r.old_ms / r.new_ms, r.floor_ms);
}

int main(int argc, char **argv) {
  bool full = argc > 1 && !strcmp(argv[1], "full");
  bool bwd_grid = full || (argc > 1 && !strcmp(argv[1], "bwd"));  // `bwd`: the backward grid alone
  bool bench = argc > 2 && !strcmp(argv[2], "bench");
  char name[256]; int cc = 0;
  if (moda_cuda_device_info(name, sizeof name, &cc)) { fprintf(stderr, "%s\n", moda_last_error()); return 2; }
  printf("device: %s (sm_%d)\n", name, cc);
  if (argc > 1 && !strcmp(argv[1], "wgmmabench")) {  // run with MODA_CUDA_WGMMA=1 (or 2)
    ab_bench(1 | 16, 1, "mma.sync", "wgmma");
    ab_bench(1, 1 | 32, "wgmma", "wgmma ws");  // the warp-specialised kernel (flag bit 5)
    return 0;
  }
  std::vector<Case> cases;
  int dts[3] = {MODA_BF16, MODA_F16, MODA_F32};
  // name: B T S Hk G L d causal chunk dtype bwd
  for (int dt : dts) {
    for (int d : {64, 128}) {
      cases.push_back({1, 1, 1, 1, 1, 0, d, 1, 0, dt, true});
      cases.push_back({2, 37, 37, 2, 4, 5, d, 1, 0, dt, true});
      cases.push_back({1, 97, 104, 1, 8, 1, d, 1, 0, dt, true});        // S > T
      cases.push_back({1, 131, 131, 2, 2, 64, d, 0, 0, dt, true});      // full
      cases.push_back({1, 70, 70, 1, 16, 3, d, 1, 16, dt, true});       // chunk causal
      cases.push_back({1, 53, 53, 2, 1, 5, d, 0, 8, dt, true});         // chunk full, G=1
      cases.push_back({1, 200, 211, 1, 5, 5, d, 1, 0, dt, true});       // odd G, S > T
      // >= 5 key blocks of 128 for every row: each of the wgmma forward's two K/V stages is refilled
      cases.push_back({1, 150, 660, 1, 4, 3, d, 0, 0, dt, false});
      if (full) {
        cases.push_back({1, 1000, 1000, 1, 8, 64, d, 1, 0, dt, dt != MODA_F32 ? false : false});
        cases.push_back({1, 997, 997, 2, 4, 5, d, 0, 64, dt, false});
        cases.push_back({1, 257, 300, 1, 16, 64, d, 1, 64, dt, true});
        cases.push_back({2, 129, 129, 1, 2, 0, d, 1, 0, dt, true});
      }
    }
    // head dims the tensor-core kernels do not take (the SIMT kernels: 1..256)
    cases.push_back({2, 37, 37, 2, 4, 5, 32, 1, 0, dt, true});
    cases.push_back({1, 29, 33, 1, 4, 3, 256, 1, 8, dt, true});   // chunk causal, S > T
    cases.push_back({1, 23, 23, 2, 1, 1, 40, 0, 0, dt, true});    // 80-byte rows in half precision
  }
  const size_t bwd_grid_begin = cases.size();
  // Backward grid (tensor-core backward, attn_bwd_mma.cu): T incl. primes up to 997, G 1..16,
  // L 0/1/5/64, d 64/128, both masks, token and chunk depth (C 4/16/64), bf16/fp16, S > T,
  // deterministic on and off; every case also checks that a second run is bit-identical.
  // The float64 reference costs ~B*T*Hq*(S + visible depth rows)*d: G is halved until that
  // product stays under 6e6 (seconds per case), plus a few explicit large cases.
  if (bwd_grid) {
    const int Ts[] = {1, 2, 17, 64, 127, 251, 509, 997};
    const int Gs[] = {1, 2, 4, 8, 16};
    const int Ls[] = {0, 1, 5, 64};
    const int Cs[] = {4, 16, 64};
    for (int i = 0; i < 48; ++i) {
      Case c{};
      c.causal = i % 2;
      c.chunk = (i / 2) % 2 ? Cs[(i / 8) % 3] : 0;
      c.L = Ls[(i / 4) % 4];
      c.T = Ts[(i * 5 + 1 + i / 16) % 8];
      c.G = Gs[(i * 3 + i / 16) % 5];
      c.d = (i / 3) % 2 ? 128 : 64;
      c.dtype = (i / 5) % 2 ? MODA_F16 : MODA_BF16;
      c.S = i % 3 == 0 ? c.T + 29 : c.T;
      c.Hk = c.T <= 64 ? 2 : 1;
      c.B = c.T <= 64 ? 2 : 1;
      c.bwd = true;
      c.deterministic = (i / 7) % 2;
      for (;;) {
        double vis_depth = c.chunk ? (double)c.chunk * c.L : c.L;
        double cost = (double)c.B * c.T * c.G * c.Hk * (c.S + vis_depth);
        if (cost <= 6e6 || c.G == 1) break;
        c.G /= 2;
      }
      cases.push_back(c);
    }
    // name: B T S Hk G L d causal chunk dtype bwd decode_mode deterministic
    cases.push_back({1, 997, 997, 1, 16, 1, 64, 1, 0, MODA_BF16, true, 0, 0});
    cases.push_back({1, 509, 521, 1, 8, 64, 128, 1, 64, MODA_F16, true, 0, 1});
    cases.push_back({1, 383, 383, 2, 4, 64, 64, 0, 16, MODA_BF16, true, 0, 0});
    cases.push_back({3, 197, 197, 1, 4, 22, 64, 0, 0, MODA_BF16, true, 0, 1});   // DeiT-Tiny-like
    cases.push_back({1, 300, 300, 1, 3, 5, 64, 1, 0, MODA_F32, true, 0, 1});     // f32: SIMT path
    // d = 64 causal with S > T (KV cache): key blocks every query sees whole (the grid's S > T
    // cases are d = 128); token visibility with G dividing 8 (the fused depth gradients)
    cases.push_back({1, 77, 300, 1, 3, 1, 64, 1, 0, MODA_BF16, true, 0, 1});
    cases.push_back({1, 125, 250, 2, 8, 5, 64, 1, 0, MODA_F16, true, 0, 1});
    cases.push_back({2, 131, 131, 1, 2, 7, 64, 1, 0, MODA_BF16, true, 0, 1});
    cases.push_back({1, 97, 97, 2, 1, 3, 64, 0, 0, MODA_F16, true, 0, 1});
    // the token-visibility depth kernel (attn_bwd_depth.cu): units of 8/G tokens with T not a
    // multiple of them, several 64-row items per unit (L = 126: the last one partial), G = 16, 32
    // (one token per unit), d = 128, B and Hk > 1 (units of several (b, g) in one CTA)
    cases.push_back({2, 99, 99, 2, 4, 126, 64, 0, 0, MODA_BF16, true, 0, 1});
    cases.push_back({1, 61, 61, 1, 1, 300, 64, 1, 0, MODA_F16, true, 0, 0});
    cases.push_back({1, 45, 50, 2, 32, 70, 64, 1, 0, MODA_BF16, true, 0, 1});
    cases.push_back({2, 33, 33, 1, 16, 64, 128, 0, 0, MODA_F16, true, 0, 0});
    cases.push_back({1, 73, 73, 3, 2, 9, 128, 1, 0, MODA_BF16, true, 0, 1});
    cases.push_back({1, 40, 40, 1, 32, 130, 128, 0, 0, MODA_BF16, true, 0, 0});
  }
  const size_t bwd_grid_end = cases.size();
  // Decode path (split-K over a long cache, attn_decode.cu), forced on: T 1, 3, 16 new queries,
  // S 1000..70000 cached keys, G 1..16, L 0..64, token and chunk depth, both masks.
  // name: B T S Hk G L d causal chunk dtype bwd decode_mode
  cases.push_back({1, 1, 1000, 1, 1, 0, 64, 1, 0, MODA_F32, false, 2});
  cases.push_back({2, 3, 1031, 2, 8, 5, 128, 1, 0, MODA_F16, false, 2});
  cases.push_back({1, 16, 1500, 1, 16, 64, 64, 1, 64, MODA_BF16, false, 2});   // 256 rows, chunk
  cases.push_back({1, 16, 2048, 2, 3, 64, 64, 0, 16, MODA_F16, false, 2});     // full, chunk
  cases.push_back({3, 1, 1024, 4, 16, 0, 128, 1, 0, MODA_BF16, false, 2});
  cases.push_back({1, 7, 1200, 1, 4, 17, 64, 1, 4, MODA_F32, false, 2});
  cases.push_back({2, 16, 1100, 1, 1, 64, 128, 1, 0, MODA_BF16, false, 2});
  const size_t decode_small_end = cases.size();
  if (full || (argc > 1 && !strcmp(argv[1], "decode"))) {
    cases.push_back({8, 1, 8192, 2, 4, 64, 64, 1, 0, MODA_BF16, false, 2});
    cases.push_back({1, 16, 70000, 1, 2, 3, 64, 1, 0, MODA_BF16, false, 2});
    cases.push_back({1, 3, 65537, 1, 5, 1, 128, 1, 0, MODA_F32, false, 2});
    cases.push_back({1, 1, 70000, 1, 16, 64, 128, 1, 0, MODA_F16, false, 2});
    cases.push_back({2, 16, 9000, 1, 4, 64, 64, 1, 64, MODA_F32, false, 2});
    cases.push_back({1, 3, 20000, 2, 2, 64, 128, 0, 0, MODA_BF16, false, 2});  // full mask
    cases.push_back({1, 16, 4096, 1, 8, 64, 64, 1, 0, MODA_BF16, false, 0});   // automatic choice
  }
  if (argc > 1 && !strcmp(argv[1], "bwd"))
    cases = std::vector<Case>(cases.begin() + bwd_grid_begin, cases.begin() + bwd_grid_end);
  // decode: the decode cases alone (small and large); decsmall: the small ones (compute-sanitizer)
  if (argc > 1 && (!strcmp(argv[1], "decode") || !strcmp(argv[1], "decsmall")))
    cases = std::vector<Case>(cases.begin() + bwd_grid_end,
                              !strcmp(argv[1], "decode") ? cases.end() : cases.begin() + decode_small_end);
  if (argc > 1 && !strcmp(argv[1], "san")) {  // small backward cases for compute-sanitizer
    cases.clear();
    // name: B T S Hk G L d causal chunk dtype bwd decode_mode deterministic
    cases.push_back({2, 37, 41, 2, 4, 5, 64, 1, 0, MODA_BF16, true, 0, 1});
    cases.push_back({1, 70, 70, 1, 16, 3, 128, 1, 16, MODA_F16, true, 0, 0});
    cases.push_back({1, 53, 60, 2, 1, 5, 64, 0, 8, MODA_BF16, true, 0, 1});
    cases.push_back({1, 33, 33, 1, 2, 0, 128, 0, 0, MODA_BF16, true, 0, 1});
    // d = 64, deterministic = 0: the atomic-dQ and fused-depth paths when switched on (full mask
    // with S % 64 != 0: keys past S in the last block; causal with S > T)
    cases.push_back({1, 70, 75, 2, 4, 3, 64, 0, 0, MODA_F16, true, 0, 0});
    cases.push_back({1, 61, 66, 1, 8, 2, 64, 1, 0, MODA_BF16, true, 0, 0});
    // the depth kernel: several items per unit, G = 32, d = 128
    cases.push_back({1, 21, 21, 2, 4, 70, 64, 0, 0, MODA_BF16, true, 0, 1});
    cases.push_back({1, 9, 9, 1, 32, 5, 128, 1, 0, MODA_F16, true, 0, 0});
    // the SIMT kernels at d = 256 (8 elements per lane) and 40
    cases.push_back({1, 29, 33, 1, 4, 3, 256, 1, 8, MODA_BF16, true, 0, 1});
    cases.push_back({1, 23, 23, 2, 1, 1, 40, 0, 0, MODA_F32, true, 0, 1});
  }
  // Forward-only cases aimed at the depth phase of the tensor-core forward (the ring: chunk
  // sequence across groups, L not a multiple of 16, tokens spanning groups, chunk visibility,
  // rows past T*G, MT = 2 at T = 2100). run_checks.sh v6 runs them on the default kernels, with
  // the wgmma forward forced, on mma.sync with MT = 2 and without the L2 hints.
  if (argc > 1 && !strcmp(argv[1], "depth")) {
    cases.clear();
    // name: B T S Hk G L d causal chunk dtype bwd
    cases.push_back({1, 197, 197, 1, 4, 126, 64, 0, 0, MODA_BF16, false});   // DeiT-Tiny-64-like
    cases.push_back({2, 61, 61, 2, 3, 17, 64, 1, 0, MODA_BF16, false});      // odd G, L = 17
    cases.push_back({1, 300, 300, 1, 1, 1, 64, 1, 0, MODA_F16, false});      // G = 1, L = 1: 8 rows per group
    cases.push_back({1, 129, 140, 1, 8, 64, 64, 1, 0, MODA_BF16, false});    // S > T
    cases.push_back({1, 257, 257, 1, 16, 5, 128, 0, 0, MODA_F16, false});    // d = 128, token over 2 groups
    cases.push_back({1, 200, 200, 1, 2, 3, 64, 1, 16, MODA_BF16, false});    // chunk causal C = 16
    cases.push_back({1, 150, 150, 2, 4, 7, 128, 0, 64, MODA_BF16, false});   // chunk full C = 64, d = 128
    cases.push_back({1, 97, 97, 1, 5, 33, 64, 0, 4, MODA_F16, false});       // chunk full C = 4, odd G
    cases.push_back({1, 131, 131, 1, 4, 2, 64, 0, 64, MODA_F16, false});     // partial last chunk
    cases.push_back({3, 37, 37, 1, 2, 126, 64, 0, 0, MODA_F16, false});
    cases.push_back({1, 33, 33, 1, 1, 300, 64, 1, 0, MODA_BF16, false});     // L = 300
    cases.push_back({1, 45, 45, 1, 7, 40, 128, 1, 5, MODA_BF16, false});     // d = 128 chunk C = 5
    cases.push_back({1, 100, 100, 1, 4, 0, 64, 1, 0, MODA_BF16, false});     // L = 0
    cases.push_back({1, 2100, 2100, 1, 8, 64, 64, 1, 0, MODA_BF16, false});  // MT = 2 by the size rule
  }
  if (argc > 1 && !strcmp(argv[1], "depthsan")) {  // small forward cases for compute-sanitizer
    cases.clear();
    cases.push_back({1, 37, 37, 1, 4, 21, 64, 1, 0, MODA_BF16, false});
    cases.push_back({1, 53, 60, 2, 3, 5, 128, 0, 8, MODA_F16, false});
    cases.push_back({1, 70, 70, 1, 2, 3, 64, 1, 16, MODA_BF16, false});
  }
  int fails = 0;
  printf("%-5s %2s %4s %4s %2s %2s %3s %3s %-6s %5s %-14s %9s %9s %9s %9s %9s %9s %9s %-13s %3s %5s %s\n", "dtype", "B", "T", "S",
         "Hk", "G", "L", "d", "mask", "chunk", "kernel", "o", "lse", "dq", "dk", "dv", "dkd", "dvd", "bwd kernel",
         "det", "repro", "ok");
  for (const Case &c : cases) {
    Result r = run_case(c);
    double tol = c.dtype == MODA_F32 ? 1e-5 : 1e-2;
    double worst = fmax(fmax(r.err_o, r.err_lse), fmax(fmax(r.err_dq, r.err_dk), fmax(r.err_dv, fmax(r.err_dkd, r.err_dvd))));
    bool ok = worst < tol && r.bwd_repro;  // NaN/inf compare false
    if (!ok) ++fails;
    printf("%-5s %2d %4d %4d %2d %2d %3d %3d %-6s %5d %-14s %9.2e %9.2e %9.2e %9.2e %9.2e %9.2e %9.2e %-13s %3d %5s %s\n", dtname(c.dtype),
           c.B, c.T, c.S, c.Hk, c.G, c.L, c.d, c.causal ? "causal" : "full", c.chunk, r.kernel, r.err_o, r.err_lse,
           r.err_dq, r.err_dk, r.err_dv, r.err_dkd, r.err_dvd, r.bwd_kernel, c.deterministic,
           c.bwd ? (r.bwd_repro ? "bits" : "DIFF") : "-", ok ? "PASS" : "FAIL");
    fflush(stdout);
  }
  printf("%d cases, %d failed\n", (int)cases.size(), fails);
  if (bench) {
    for (int T : {4096, 16384}) bench_fwd(1, T, 8, 8, 64, 64, 1, 0);
    bench_fwd(1, 16384, 8, 8, 0, 64, 1, 0);
    bench_fwd(256, 197, 1, 4, 126, 64, 0, 0);
    bench_fwd(8, 2048, 2, 4, 126, 64, 1, 0);
  }
  return fails ? 1 : 0;
}
