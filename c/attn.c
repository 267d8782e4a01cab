/* attn.c: moda_attn_fwd / moda_attn_bwd: validate the tensors of one MoDA attention call,
 * describe them in a moda_attn_params (raw pointers + element strides), and dispatch to the
 * CPU fast path, the CPU reference, or the backend registered for the tensors' device.
 *
 * Every check names the argument, what was expected and what was given, because these
 * messages surface unchanged as Lua errors ("moda.attention: k: expected shape ...").
 *
 * dtypes: f32 and f64 run on the fast CPU path; f16 and bf16 CPU tensors always run on the
 * reference (float64 accumulation, slow but exact) even when opts->impl asks for the fast
 * path: half-precision CPU attention is for checking other backends, not for speed. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "moda_attn.h"

#define CPU_MAX_HEAD_DIM 256

/* "[2, 5, 3, 32]" */
static const char *shape_str(const moda_tensor *t, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < t->ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)t->sizes[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
  return buf;
}

/* Checks rank, dtype, device, shape and last-dim contiguity of one tensor.
 * want[i] >= 0 is a required size, -1 a free one (bound by the caller afterwards); labels name
 * the dims for the message, e.g. "k: expected shape [B=2, S, Hk, d=64], got [2, 5, 3, 32]". */
static int check_tensor(const char *fn, const char *name, const moda_tensor *t, int ndim,
                        const char *const *labels, const int64_t *want, int dtype,
                        const char *dtype_why, int device) {
  char got[160], exp[200];
  if (!t) return moda_set_error(MODA_ERR_ARG, "%s: %s: expected a tensor, got NULL", fn, name);
  /* The expected shape string, built once for the rank and the shape messages. */
  size_t k = (size_t)snprintf(exp, sizeof exp, "[");
  for (int i = 0; i < ndim && k < sizeof exp; i++) {
    if (want[i] >= 0)
      k += (size_t)snprintf(exp + k, sizeof exp - k, "%s%s=%lld", i ? ", " : "", labels[i],
                            (long long)want[i]);
    else
      k += (size_t)snprintf(exp + k, sizeof exp - k, "%s%s", i ? ", " : "", labels[i]);
  }
  if (k < sizeof exp) snprintf(exp + k, sizeof exp - k, "]");
  if (t->ndim != ndim)
    return moda_set_error(MODA_ERR_SHAPE, "%s: %s: expected a %d-d tensor of shape %s, got %d-d %s",
                          fn, name, ndim, exp, t->ndim, shape_str(t, got, sizeof got));
  if (t->dtype_id != dtype)
    return moda_set_error(MODA_ERR_DTYPE, "%s: %s: expected dtype %s%s, got %s", fn, name,
                          moda_dtype_name(dtype), dtype_why, moda_dtype_name(t->dtype_id));
  if (t->device_id != device)
    return moda_set_error(MODA_ERR_DEVICE, "%s: %s: expected device %s (the device of q), got %s",
                          fn, name, moda_device_name(device), moda_device_name(t->device_id));
  for (int i = 0; i < ndim; i++)
    if (want[i] >= 0 && t->sizes[i] != want[i])
      return moda_set_error(MODA_ERR_SHAPE, "%s: %s: expected shape %s, got %s", fn, name, exp,
                            shape_str(t, got, sizeof got));
  for (int i = 0; i < ndim; i++)   /* only the depth count L may be 0 (no depth rows) */
    if (t->sizes[i] < (strcmp(labels[i], "L") == 0 ? 0 : 1))
      return moda_set_error(MODA_ERR_SHAPE, "%s: %s: expected every dim >= 1, got %s", fn, name,
                            shape_str(t, got, sizeof got));
  if (t->strides[ndim - 1] != 1)
    return moda_set_error(MODA_ERR_ARG,
                          "%s: %s: expected the last dim to be contiguous (stride 1), got stride %lld",
                          fn, name, (long long)t->strides[ndim - 1]);
  return MODA_OK;
}

static const char *const L_BTHD[] = {"B", "T", "Hq", "d"};
static const char *const L_BSHD[] = {"B", "S", "Hk", "d"};
static const char *const L_DEPTH[] = {"B", "T", "L", "Hk", "d"};
static const char *const L_LSE[] = {"B", "Hq", "T"};

static const void *data_of(const moda_tensor *t) {
  return t && t->storage ? (const char *)t->storage->data + t->offset * moda_dtype_size(t->dtype_id) : NULL;
}
static void copy_strides(int64_t *dst, const moda_tensor *t, int n) {
  for (int i = 0; i < n; i++) dst[i] = t ? t->strides[i] : 0;
}

/* Validates everything the forward and the backward share and fills p (less the gradients).
 * names_only (moda_attn_kernel_names): o and lse are not checked (NULL: p->o, p->lse stay NULL). */
static int setup(const char *fn, moda_attn_params *p, const moda_tensor *q, const moda_tensor *k,
                 const moda_tensor *v, const moda_tensor *kd, const moda_tensor *vd,
                 const moda_tensor *o, const moda_tensor *lse, const moda_attn_opts *opts_in,
                 int names_only) {
  moda_attn_opts defaults = {MODA_MASK_CAUSAL, MODA_DEPTH_TOKEN, 64, MODA_IMPL_FAST, 0, 0, 0.0};
  const moda_attn_opts *opts = opts_in ? opts_in : &defaults;
  memset(p, 0, sizeof *p);
  if (opts->mask != MODA_MASK_CAUSAL && opts->mask != MODA_MASK_FULL)
    return moda_set_error(MODA_ERR_ARG, "%s: opts.mask: expected MODA_MASK_CAUSAL (0) or MODA_MASK_FULL (1), got %d",
                          fn, opts->mask);
  if (opts->depth != MODA_DEPTH_TOKEN && opts->depth != MODA_DEPTH_CHUNK)
    return moda_set_error(MODA_ERR_ARG, "%s: opts.depth: expected MODA_DEPTH_TOKEN (0) or MODA_DEPTH_CHUNK (1), got %d",
                          fn, opts->depth);
  if (opts->impl != MODA_IMPL_FAST && opts->impl != MODA_IMPL_REFERENCE)
    return moda_set_error(MODA_ERR_ARG, "%s: opts.impl: expected MODA_IMPL_FAST (0) or MODA_IMPL_REFERENCE (1), got %d",
                          fn, opts->impl);
  if (opts->depth == MODA_DEPTH_CHUNK && opts->chunk < 1)
    return moda_set_error(MODA_ERR_ARG, "%s: opts.chunk: expected >= 1 for depth=chunk, got %d",
                          fn, opts->chunk);
  if (!(opts->scale == opts->scale) || isinf(opts->scale))
    return moda_set_error(MODA_ERR_ARG, "%s: opts.scale: expected a finite number, got %g", fn,
                          opts->scale);

  if (!q) return moda_set_error(MODA_ERR_ARG, "%s: q: expected a tensor, got NULL", fn);
  const int dt = q->dtype_id, dev = q->device_id;
  if (dt != MODA_F32 && dt != MODA_F64 && dt != MODA_F16 && dt != MODA_BF16)
    return moda_set_error(MODA_ERR_DTYPE,
                          "%s: q: expected dtype float32, float64, float16 or bfloat16, got %s", fn,
                          moda_dtype_name(dt));
  if (dev < 0 || dev >= MODA_NUM_DEVICES)
    return moda_set_error(MODA_ERR_DEVICE, "%s: q: unknown device id %d", fn, dev);
  const char *same = " (the dtype of q)";
  int64_t w[5] = {-1, -1, -1, -1, -1};
  MODA_CHECK(check_tensor(fn, "q", q, 4, L_BTHD, w, dt, same, dev));
  const int64_t B = q->sizes[0], T = q->sizes[1], Hq = q->sizes[2], d = q->sizes[3];
  if (dev == MODA_CPU && d > CPU_MAX_HEAD_DIM)
    return moda_set_error(MODA_ERR_SHAPE, "%s: q: expected head dim d <= %d on cpu, got d=%lld",
                          fn, CPU_MAX_HEAD_DIM, (long long)d);

  int64_t wk[4] = {B, -1, -1, d};
  MODA_CHECK(check_tensor(fn, "k", k, 4, L_BSHD, wk, dt, same, dev));
  const int64_t S = k->sizes[1], Hk = k->sizes[2];
  int64_t wv[4] = {B, S, Hk, d};
  MODA_CHECK(check_tensor(fn, "v", v, 4, L_BSHD, wv, dt, same, dev));
  if (Hq % Hk != 0)
    return moda_set_error(MODA_ERR_SHAPE,
                          "%s: q/k: expected the query heads Hq=%lld to be a multiple of the kv heads Hk=%lld",
                          fn, (long long)Hq, (long long)Hk);
  if (opts->mask == MODA_MASK_CAUSAL && S < T)
    return moda_set_error(MODA_ERR_SHAPE,
                          "%s: k: expected S >= T for the causal mask (queries are the last T of S positions), got S=%lld, T=%lld",
                          fn, (long long)S, (long long)T);

  if ((kd == NULL) != (vd == NULL))
    return moda_set_error(MODA_ERR_ARG, "%s: %s: expected kd and vd both given or both NULL, got %s only",
                          fn, kd ? "vd" : "kd", kd ? "kd" : "vd");
  int64_t L = 0;
  if (kd) {   /* a [B, T, 0, Hk, d] pair is allowed and means L = 0, as NULL does */
    int64_t wkd[5] = {B, T, -1, Hk, d};
    MODA_CHECK(check_tensor(fn, "kd", kd, 5, L_DEPTH, wkd, dt, same, dev));
    L = kd->sizes[2];
    int64_t wvd[5] = {B, T, L, Hk, d};
    MODA_CHECK(check_tensor(fn, "vd", vd, 5, L_DEPTH, wvd, dt, same, dev));
  }
  if (!names_only) {  /* moda_attn_kernel_names: the outputs need not exist */
    int64_t wo[4] = {B, T, Hq, d};
    MODA_CHECK(check_tensor(fn, "o", o, 4, L_BTHD, wo, dt, same, dev));
    int64_t wl[3] = {B, Hq, T};
    MODA_CHECK(check_tensor(fn, "lse", lse, 3, L_LSE, wl, MODA_F32, " (lse is always float32)", dev));
  }

  p->dtype = dt;
  p->causal = opts->mask == MODA_MASK_CAUSAL;
  p->chunk = opts->depth == MODA_DEPTH_CHUNK ? opts->chunk : 0;
  p->impl = opts->impl;
  p->deterministic = opts->deterministic;
  p->B = B; p->T = T; p->S = S; p->Hq = Hq; p->Hk = Hk; p->G = Hq / Hk; p->L = L; p->d = d;
  p->scale = opts->scale > 0 ? opts->scale : 1.0 / sqrt((double)d);
  p->q = data_of(q);   copy_strides(p->q_stride, q, 3);
  p->k = data_of(k);   copy_strides(p->k_stride, k, 3);
  p->v = data_of(v);   copy_strides(p->v_stride, v, 3);
  p->kd = L ? data_of(kd) : NULL; copy_strides(p->kd_stride, L ? kd : NULL, 4);
  p->vd = L ? data_of(vd) : NULL; copy_strides(p->vd_stride, L ? vd : NULL, 4);
  p->o = (void *)data_of(o);              copy_strides(p->o_stride, o, 3);
  p->lse = (float *)data_of(lse);         copy_strides(p->lse_stride, lse, 3);
  return MODA_OK;
}

static int dispatch(const char *fn, const moda_attn_params *p, int device, int backward) {
  if (device == MODA_CPU) {
    int fast = p->impl == MODA_IMPL_FAST && (p->dtype == MODA_F32 || p->dtype == MODA_F64);
    if (backward) return fast ? moda_attn_bwd_fast_cpu(p) : moda_attn_bwd_ref_cpu(p);
    return fast ? moda_attn_fwd_fast_cpu(p) : moda_attn_fwd_ref_cpu(p);
  }
  const moda_backend *be = moda_get_backend(device);
  int (*op)(const moda_attn_params *) = !be ? NULL : backward ? be->attn_bwd : be->attn_fwd;
  if (!op)
    return moda_set_error(MODA_ERR_DEVICE, "%s: no backend for %s%s", fn, moda_device_name(device),
                          be ? " implements attention" : " (is libmoda_cuda loaded?)");
  return op(p);
}

int moda_attn_fwd(moda_tensor *o, moda_tensor *lse, const moda_tensor *q, const moda_tensor *k,
                  const moda_tensor *v, const moda_tensor *kd, const moda_tensor *vd,
                  const moda_attn_opts *opts) {
  const char *fn = "moda_attn_fwd";
  moda_attn_params p;
  MODA_CHECK(setup(fn, &p, q, k, v, kd, vd, o, lse, opts, 0));
  return dispatch(fn, &p, q->device_id, 0);
}

int moda_attn_bwd(moda_tensor *dq, moda_tensor *dk, moda_tensor *dv, moda_tensor *dkd,
                  moda_tensor *dvd, const moda_tensor *dout, const moda_tensor *q,
                  const moda_tensor *k, const moda_tensor *v, const moda_tensor *kd,
                  const moda_tensor *vd, const moda_tensor *o, const moda_tensor *lse,
                  const moda_attn_opts *opts) {
  const char *fn = "moda_attn_bwd";
  moda_attn_params p;
  MODA_CHECK(setup(fn, &p, q, k, v, kd, vd, o, lse, opts, 0));
  const int dt = p.dtype, dev = q->device_id;
  const char *same = " (the dtype of q)";
  int64_t wq[4] = {p.B, p.T, p.Hq, p.d}, wk[4] = {p.B, p.S, p.Hk, p.d};
  int64_t wkd[5] = {p.B, p.T, p.L, p.Hk, p.d};
  MODA_CHECK(check_tensor(fn, "dout", dout, 4, L_BTHD, wq, dt, same, dev));
  MODA_CHECK(check_tensor(fn, "dq", dq, 4, L_BTHD, wq, dt, same, dev));
  MODA_CHECK(check_tensor(fn, "dk", dk, 4, L_BSHD, wk, dt, same, dev));
  MODA_CHECK(check_tensor(fn, "dv", dv, 4, L_BSHD, wk, dt, same, dev));
  if (p.L > 0) {
    MODA_CHECK(check_tensor(fn, "dkd", dkd, 5, L_DEPTH, wkd, dt, same, dev));
    MODA_CHECK(check_tensor(fn, "dvd", dvd, 5, L_DEPTH, wkd, dt, same, dev));
  } else {
    /* No depth rows: dkd and dvd are NULL, or empty [B, T, 0, Hk, d] tensors (nothing written). */
    if (dkd) MODA_CHECK(check_tensor(fn, "dkd", dkd, 5, L_DEPTH, wkd, dt, same, dev));
    if (dvd) MODA_CHECK(check_tensor(fn, "dvd", dvd, 5, L_DEPTH, wkd, dt, same, dev));
    dkd = dvd = NULL;
  }
  p.dout = data_of(dout);      copy_strides(p.dout_stride, dout, 3);
  p.dq = (void *)data_of(dq);  copy_strides(p.dq_stride, dq, 3);
  p.dk = (void *)data_of(dk);  copy_strides(p.dk_stride, dk, 3);
  p.dv = (void *)data_of(dv);  copy_strides(p.dv_stride, dv, 3);
  p.dkd = (void *)data_of(dkd); copy_strides(p.dkd_stride, dkd, 4);
  p.dvd = (void *)data_of(dvd); copy_strides(p.dvd_stride, dvd, 4);
  return dispatch(fn, &p, dev, 1);
}

int moda_attn_kernel_names(const char **fwd_name, const char **bwd_name, const moda_tensor *q,
                           const moda_tensor *k, const moda_tensor *v, const moda_tensor *kd,
                           const moda_tensor *vd, const moda_attn_opts *opts) {
  const char *fn = "moda_attn_kernel_names";
  if (!fwd_name || !bwd_name)
    return moda_set_error(MODA_ERR_ARG, "%s: fwd_name, bwd_name: expected pointers, got NULL", fn);
  *fwd_name = *bwd_name = NULL;
  moda_attn_params p;
  MODA_CHECK(setup(fn, &p, q, k, v, kd, vd, NULL, NULL, opts, 1));
  const int device = q->device_id;
  if (device == MODA_CPU) {  /* as dispatch() picks */
    const int fast = p.impl == MODA_IMPL_FAST && (p.dtype == MODA_F32 || p.dtype == MODA_F64);
    *fwd_name = *bwd_name = fast ? "cpu_fast" : "cpu_reference";
    return MODA_OK;
  }
  const moda_backend *be = moda_get_backend(device);
  if (!be || !be->attn_kernel_name)
    return moda_set_error(MODA_ERR_DEVICE, "%s: no backend for %s%s", fn, moda_device_name(device),
                          be ? " names its attention kernels" : " (is libmoda_cuda loaded?)");
  /* The kernels' choice depends on the outputs' and gradients' layouts too (TMA-encodable,
   * aligned), which this call does not see: name them for outputs laid out like their inputs, as
   * moda.attention and moda.attention_backward allocate them (o, dout, dq like q; dk, dv like k,
   * v; dkd, dvd like kd, vd). Until session 16 they were left NULL here, and the warp-specialised
   * and TMA backward kernels were named as not running where they did. */
  p.o = (void *)p.q;
  p.dout = p.q;
  p.dq = (void *)p.q;
  memcpy(p.o_stride, p.q_stride, sizeof p.q_stride);
  memcpy(p.dout_stride, p.q_stride, sizeof p.q_stride);
  memcpy(p.dq_stride, p.q_stride, sizeof p.q_stride);
  p.dk = (void *)p.k;
  p.dv = (void *)p.v;
  memcpy(p.dk_stride, p.k_stride, sizeof p.k_stride);
  memcpy(p.dv_stride, p.v_stride, sizeof p.v_stride);
  p.dkd = (void *)p.kd;
  p.dvd = (void *)p.vd;
  memcpy(p.dkd_stride, p.kd_stride, sizeof p.kd_stride);
  memcpy(p.dvd_stride, p.vd_stride, sizeof p.vd_stride);
  *fwd_name = be->attn_kernel_name(&p, 0);
  *bwd_name = be->attn_kernel_name(&p, 1);
  return MODA_OK;
}
