/* ops.c: elementwise ops, reductions and matmul on CPU tensors.
 * Elementwise ops compute in double and store in out's dtype: simple and exact enough for every
 * dtype; float32 contiguous operands take a direct loop. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "internal.h"

static int check_cpu(const char *what, const char *arg, const moda_tensor *t) {
  if (!t || !t->storage) return moda_set_error(MODA_ERR_ARG, "%s: %s is NULL", what, arg);
  if (t->device_id != MODA_CPU)
    return moda_set_error(MODA_ERR_DEVICE, "%s: %s is on %s, this op runs on cpu tensors", what, arg,
                          moda_device_name(t->device_id));
  return MODA_OK;
}

static double apply_binary(int op, double a, double b) {
  switch (op) {
  case MODA_OP_ADD: return a + b;
  case MODA_OP_SUB: return a - b;
  case MODA_OP_MUL: return a * b;
  case MODA_OP_DIV: return a / b;
  case MODA_OP_POW: return pow(a, b);
  case MODA_OP_MAX: return a != a || b != b ? NAN : a > b ? a : b;
  case MODA_OP_MIN: return a != a || b != b ? NAN : a < b ? a : b;
  }
  return NAN;
}

static double apply_unary(int op, double a) {
  switch (op) {
  case MODA_OP_NEG: return -a;
  case MODA_OP_ABS: return fabs(a);
  case MODA_OP_EXP: return exp(a);
  case MODA_OP_LOG: return log(a);
  case MODA_OP_SQRT: return sqrt(a);
  case MODA_OP_TANH: return tanh(a);
  case MODA_OP_SIGMOID: return 1.0 / (1.0 + exp(-a));
  case MODA_OP_RELU: return a > 0 ? a : 0 * a;   /* keeps NaN a NaN */
  }
  return NAN;
}

/* Strides of `t` seen through the broadcast shape `shape` (ndim dims, aligned right). */
static void broadcast_strides(const moda_tensor *t, int ndim, const int64_t *shape, int64_t *stride) {
  int lead = ndim - t->ndim;
  for (int d = 0; d < ndim; d++) {
    int td = d - lead;
    stride[d] = td < 0 || t->sizes[td] == 1 ? 0 : t->strides[td];
    (void)shape;
  }
}

int moda_tensor_binary(moda_tensor *out, const moda_tensor *a, const moda_tensor *b, int op) {
  MODA_CHECK(check_cpu("binary op", "out", out));
  MODA_CHECK(check_cpu("binary op", "a", a));
  MODA_CHECK(check_cpu("binary op", "b", b));
  if (op < MODA_OP_ADD || op > MODA_OP_MIN) return moda_set_error(MODA_ERR_ARG, "binary op: unknown op %d", op);
  /* numpy broadcasting: align right; sizes equal or one of them 1 */
  int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
  int64_t shape[MODA_MAX_DIMS];
  for (int d = 0; d < nd; d++) {
    int da = d - (nd - a->ndim), db = d - (nd - b->ndim);
    int64_t sa = da < 0 ? 1 : a->sizes[da], sb = db < 0 ? 1 : b->sizes[db];
    if (sa != sb && sa != 1 && sb != 1) {
      char x[160], y[160];
      return moda_set_error(MODA_ERR_SHAPE, "binary op: shapes %s and %s do not broadcast (dim %d: %lld vs %lld)",
                            moda_shape_str(x, sizeof x, a->ndim, a->sizes), moda_shape_str(y, sizeof y, b->ndim, b->sizes),
                            d, (long long)sa, (long long)sb);
    }
    shape[d] = sa == 1 ? sb : sa;
  }
  int ok = out->ndim == nd;
  for (int d = 0; ok && d < nd; d++) ok = out->sizes[d] == shape[d];
  if (!ok) {
    char x[160], y[160];
    return moda_set_error(MODA_ERR_SHAPE, "binary op: out has shape %s, expected the broadcast shape %s",
                          moda_shape_str(x, sizeof x, out->ndim, out->sizes), moda_shape_str(y, sizeof y, nd, shape));
  }
  int64_t sa[MODA_MAX_DIMS], sb[MODA_MAX_DIMS];
  broadcast_strides(a, nd, shape, sa);
  broadcast_strides(b, nd, shape, sb);
  const int64_t *strides[3] = {out->strides, sa, sb};
  moda_nditer it;
  moda_nditer_init(&it, nd, shape, 3, strides);
  if (!it.numel) return MODA_OK;
  char *po = moda_tensor_data(out);
  const char *pa = moda_tensor_data(a), *pb = moda_tensor_data(b);
  int to = out->dtype_id, ta = a->dtype_id, tb = b->dtype_id;
  int f32 = to == MODA_F32 && ta == MODA_F32 && tb == MODA_F32 && op <= MODA_OP_DIV;
  do {
    int64_t n = it.inner, so = it.inner_stride[0], s1 = it.inner_stride[1], s2 = it.inner_stride[2];
    if (f32) {
      float *o = (float *)po + it.off[0];
      const float *x = (const float *)pa + it.off[1], *y = (const float *)pb + it.off[2];
      for (int64_t i = 0; i < n; i++) {
        float u = x[i * s1], v = y[i * s2];
        o[i * so] = op == MODA_OP_ADD ? u + v : op == MODA_OP_SUB ? u - v : op == MODA_OP_MUL ? u * v : u / v;
      }
    } else {
      for (int64_t i = 0; i < n; i++)
        moda_store_f64(po, it.off[0] + i * so, to,
                       apply_binary(op, moda_load_f64(pa, it.off[1] + i * s1, ta), moda_load_f64(pb, it.off[2] + i * s2, tb)));
    }
  } while (moda_nditer_next(&it));
  return MODA_OK;
}

static int same_shape_or_error(const char *what, const moda_tensor *out, const moda_tensor *a) {
  int ok = out->ndim == a->ndim;
  for (int d = 0; ok && d < a->ndim; d++) ok = out->sizes[d] == a->sizes[d];
  if (ok) return MODA_OK;
  char x[160], y[160];
  return moda_set_error(MODA_ERR_SHAPE, "%s: out has shape %s, expected %s", what,
                        moda_shape_str(x, sizeof x, out->ndim, out->sizes), moda_shape_str(y, sizeof y, a->ndim, a->sizes));
}

/* One loop for the unary and scalar forms: out = f(a). */
static int map_unary(const char *what, moda_tensor *out, const moda_tensor *a, int unary_op, int binary_op, double s,
                     int reverse) {
  MODA_CHECK(check_cpu(what, "out", out));
  MODA_CHECK(check_cpu(what, "a", a));
  MODA_CHECK(same_shape_or_error(what, out, a));
  const int64_t *strides[2] = {out->strides, a->strides};
  moda_nditer it;
  moda_nditer_init(&it, a->ndim, a->sizes, 2, strides);
  if (!it.numel) return MODA_OK;
  char *po = moda_tensor_data(out);
  const char *pa = moda_tensor_data(a);
  int to = out->dtype_id, ta = a->dtype_id;
  do {
    for (int64_t i = 0; i < it.inner; i++) {
      double x = moda_load_f64(pa, it.off[1] + i * it.inner_stride[1], ta), y;
      if (binary_op >= 0) y = reverse ? apply_binary(binary_op, s, x) : apply_binary(binary_op, x, s);
      else y = apply_unary(unary_op, x);
      moda_store_f64(po, it.off[0] + i * it.inner_stride[0], to, y);
    }
  } while (moda_nditer_next(&it));
  return MODA_OK;
}

int moda_tensor_scalar(moda_tensor *out, const moda_tensor *a, double s, int op, int reverse) {
  if (op < MODA_OP_ADD || op > MODA_OP_MIN) return moda_set_error(MODA_ERR_ARG, "scalar op: unknown op %d", op);
  return map_unary("scalar op", out, a, -1, op, s, reverse);
}

int moda_tensor_unary(moda_tensor *out, const moda_tensor *a, int op) {
  if (op < MODA_OP_NEG || op > MODA_OP_RELU) return moda_set_error(MODA_ERR_ARG, "unary op: unknown op %d", op);
  return map_unary("unary op", out, a, op, -1, 0, 0);
}

int moda_tensor_reduce_all(const moda_tensor *a, int op, double *result) {
  MODA_CHECK(check_cpu("reduce", "a", a));
  if (!result) return moda_set_error(MODA_ERR_ARG, "reduce: result is NULL");
  if (op < MODA_RED_SUM || op > MODA_RED_NANCOUNT) return moda_set_error(MODA_ERR_ARG, "reduce: unknown op %d", op);
  const int64_t *strides[1] = {a->strides};
  moda_nditer it;
  moda_nditer_init(&it, a->ndim, a->sizes, 1, strides);
  if (!it.numel) {
    if (op == MODA_RED_MAX || op == MODA_RED_MIN)
      return moda_set_error(MODA_ERR_ARG, "reduce: max/min of an empty tensor");
    *result = 0;
    return MODA_OK;
  }
  const char *pa = moda_tensor_data(a);
  double acc = op == MODA_RED_MAX ? -INFINITY : op == MODA_RED_MIN ? INFINITY : 0;
  int nan = 0;
  do {
    for (int64_t i = 0; i < it.inner; i++) {
      double x = moda_load_f64(pa, it.off[0] + i * it.inner_stride[0], a->dtype_id);
      if (x != x) nan = 1;
      switch (op) {
      case MODA_RED_SUM: acc += x; break;
      case MODA_RED_MAX: if (x > acc) acc = x; break;
      case MODA_RED_MIN: if (x < acc) acc = x; break;
      case MODA_RED_SUMSQ: acc += x * x; break;
      case MODA_RED_ABSMAX: if (fabs(x) > acc) acc = fabs(x); break;
      case MODA_RED_NANCOUNT: acc += x != x; break;
      }
    }
  } while (moda_nditer_next(&it));
  /* NaN poisons max/min/absmax: a comparison must never pass because a NaN was skipped */
  if (nan && (op == MODA_RED_MAX || op == MODA_RED_MIN || op == MODA_RED_ABSMAX)) acc = NAN;
  *result = acc;
  return MODA_OK;
}

int moda_tensor_matmul(moda_tensor *out, const moda_tensor *a, const moda_tensor *b) {
  MODA_CHECK(check_cpu("matmul", "out", out));
  MODA_CHECK(check_cpu("matmul", "a", a));
  MODA_CHECK(check_cpu("matmul", "b", b));
  int dt = a->dtype_id;
  if ((dt != MODA_F32 && dt != MODA_F64) || b->dtype_id != dt || out->dtype_id != dt)
    return moda_set_error(MODA_ERR_DTYPE, "matmul: expected out, a, b all float32 or all float64, got %s, %s, %s",
                          moda_dtype_name(out->dtype_id), moda_dtype_name(a->dtype_id), moda_dtype_name(b->dtype_id));
  int nd = a->ndim;
  if (nd < 2 || b->ndim != nd || out->ndim != nd)
    return moda_set_error(MODA_ERR_SHAPE, "matmul: expected a, b, out of equal rank >= 2, got %d, %d, %d", a->ndim,
                          b->ndim, out->ndim);
  int64_t m = a->sizes[nd - 2], k = a->sizes[nd - 1], n = b->sizes[nd - 1], batch = 1;
  int ok = b->sizes[nd - 2] == k && out->sizes[nd - 2] == m && out->sizes[nd - 1] == n;
  for (int d = 0; d < nd - 2; d++) {
    ok = ok && b->sizes[d] == a->sizes[d] && out->sizes[d] == a->sizes[d];
    batch *= a->sizes[d];
  }
  if (!ok) {
    char x[160], y[160], z[160];
    return moda_set_error(MODA_ERR_SHAPE, "matmul: shapes a %s, b %s, out %s do not fit [..., m, k] @ [..., k, n] -> [..., m, n]",
                          moda_shape_str(x, sizeof x, a->ndim, a->sizes), moda_shape_str(y, sizeof y, b->ndim, b->sizes),
                          moda_shape_str(z, sizeof z, out->ndim, out->sizes));
  }
  if (!moda_tensor_is_contiguous(out)) return moda_set_error(MODA_ERR_ARG, "matmul: out must be contiguous");
  if (m * n == 0) return MODA_OK;
  moda_tensor *ac = NULL, *bc = NULL;
  int st = moda_tensor_contiguous(&ac, a);
  if (st == MODA_OK) st = moda_tensor_contiguous(&bc, b);
  if (st == MODA_OK && (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX))
    st = moda_set_error(MODA_ERR_ARG, "matmul: dims exceed the BLAS int range");
  if (st == MODA_OK) {
    for (int64_t i = 0; i < batch; i++) {
      if (dt == MODA_F32)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f,
                    (const float *)moda_tensor_data(ac) + i * m * k, (int)(k ? k : 1),
                    (const float *)moda_tensor_data(bc) + i * k * n, (int)n, 0.0f,
                    (float *)moda_tensor_data(out) + i * m * n, (int)n);
      else
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0,
                    (const double *)moda_tensor_data(ac) + i * m * k, (int)(k ? k : 1),
                    (const double *)moda_tensor_data(bc) + i * k * n, (int)n, 0.0,
                    (double *)moda_tensor_data(out) + i * m * n, (int)n);
    }
  }
  moda_tensor_free(ac);
  moda_tensor_free(bc);
  return st;
}
