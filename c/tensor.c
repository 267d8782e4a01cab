/* tensor.c: storage, the tensor struct, views, copies, fills and the backend registry. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- backends ---- */

static moda_backend backends[MODA_NUM_DEVICES];
static int backend_registered[MODA_NUM_DEVICES];

int moda_register_backend(int device, const moda_backend *backend) {
  if (device <= MODA_CPU || device >= MODA_NUM_DEVICES)
    return moda_set_error(MODA_ERR_ARG, "moda_register_backend: device %d is not a backend device", device);
  if (!backend) return moda_set_error(MODA_ERR_ARG, "moda_register_backend: backend is NULL");
  backends[device] = *backend;
  backend_registered[device] = 1;
  return MODA_OK;
}

const moda_backend *moda_get_backend(int device) {
  if (device <= MODA_CPU || device >= MODA_NUM_DEVICES || !backend_registered[device]) return NULL;
  return &backends[device];
}

static int need_backend(int device, const char *what, const moda_backend **out) {
  const moda_backend *b = moda_get_backend(device);
  if (!b) return moda_set_error(MODA_ERR_DEVICE, "%s: no backend for device '%s' (is the CUDA library loaded?)",
                                what, moda_device_name(device));
  *out = b;
  return MODA_OK;
}

/* ---- host memory ---- */

void *moda_aligned_alloc(size_t nbytes) {
  void *p = NULL;
  if (posix_memalign(&p, 64, nbytes ? nbytes : 64) != 0) return NULL;
  return p;
}

void moda_aligned_free(void *p) { free(p); }

/* ---- element access ---- */

int moda_dtype_is_float(int dtype) {
  return dtype == MODA_F32 || dtype == MODA_F64 || dtype == MODA_F16 || dtype == MODA_BF16;
}

double moda_load_f64(const void *base, int64_t i, int dtype) {
  switch (dtype) {
  case MODA_F32: return ((const float *)base)[i];
  case MODA_F64: return ((const double *)base)[i];
  case MODA_F16: return moda_half_to_float(((const uint16_t *)base)[i]);
  case MODA_BF16: return moda_bf16_to_float(((const uint16_t *)base)[i]);
  case MODA_I32: return ((const int32_t *)base)[i];
  case MODA_I64: return (double)((const int64_t *)base)[i];
  case MODA_U8: return ((const uint8_t *)base)[i];
  }
  return NAN;
}

/* Float to int conversion of an out-of-range value is undefined in C: clamp, NaN -> 0. */
static double clamp_to(double v, double lo, double hi) {
  if (v != v) return 0;
  return v < lo ? lo : v > hi ? hi : v;
}

void moda_store_f64(void *base, int64_t i, int dtype, double v) {
  switch (dtype) {
  case MODA_F32: ((float *)base)[i] = (float)v; break;
  case MODA_F64: ((double *)base)[i] = v; break;
  case MODA_F16: ((uint16_t *)base)[i] = moda_float_to_half((float)v); break;
  case MODA_BF16: ((uint16_t *)base)[i] = moda_float_to_bf16((float)v); break;
  case MODA_I32: ((int32_t *)base)[i] = (int32_t)clamp_to(v, -2147483648.0, 2147483647.0); break;
  case MODA_I64:
    ((int64_t *)base)[i] = (int64_t)clamp_to(v, -9223372036854775808.0, 9223372036854774784.0);
    break;
  case MODA_U8: ((uint8_t *)base)[i] = (uint8_t)clamp_to(v, 0, 255); break;
  }
}

const char *moda_shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
  size_t len = 0;
  len += (size_t)snprintf(buf, n, "[");
  for (int d = 0; d < ndim && len < n; d++)
    len += (size_t)snprintf(buf + len, n - len, d ? ", %lld" : "%lld", (long long)shape[d]);
  if (len < n) snprintf(buf + len, n - len, "]");
  return buf;
}

/* ---- creation and lifetime ---- */

static int check_shape(const char *what, int ndim, const int64_t *shape, int64_t elsize, int64_t *numel) {
  if (ndim < 0 || ndim > MODA_MAX_DIMS)
    return moda_set_error(MODA_ERR_ARG, "%s: ndim must be in 0..%d, got %d", what, MODA_MAX_DIMS, ndim);
  if (ndim > 0 && !shape) return moda_set_error(MODA_ERR_ARG, "%s: shape is NULL", what);
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 0)
      return moda_set_error(MODA_ERR_ARG, "%s: size of dim %d must be >= 0, got %lld", what, d, (long long)shape[d]);
    if (shape[d] && n > (INT64_MAX / 2) / elsize / shape[d])
      return moda_set_error(MODA_ERR_ARG, "%s: shape is too large", what);
    n *= shape[d];
  }
  *numel = n;
  return MODA_OK;
}

static int check_dtype_device(const char *what, int dtype, int device) {
  if (moda_dtype_size(dtype) == 0) return moda_set_error(MODA_ERR_DTYPE, "%s: invalid dtype %d", what, dtype);
  if (device < 0 || device >= MODA_NUM_DEVICES)
    return moda_set_error(MODA_ERR_DEVICE, "%s: invalid device %d", what, device);
  return MODA_OK;
}

static void contiguous_strides(int ndim, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; d--) { stride[d] = s; s *= shape[d] > 0 ? shape[d] : 1; }
}

static moda_tensor *tensor_alloc(moda_storage *st, int dtype, int device, int ndim, const int64_t *shape,
                                 const int64_t *stride, int64_t offset) {
  moda_tensor *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->storage = st; t->dtype_id = dtype; t->device_id = device; t->ndim = ndim; t->offset = offset;
  for (int d = 0; d < ndim; d++) { t->sizes[d] = shape[d]; t->strides[d] = stride[d]; }
  return t;
}

int moda_tensor_empty(moda_tensor **out, int dtype, int device, int ndim, const int64_t *shape) {
  if (!out) return moda_set_error(MODA_ERR_ARG, "moda_tensor_empty: out is NULL");
  *out = NULL;
  MODA_CHECK(check_dtype_device("moda_tensor_empty", dtype, device));
  int64_t numel, elsize = moda_dtype_size(dtype);
  MODA_CHECK(check_shape("moda_tensor_empty", ndim, shape, elsize, &numel));
  int64_t nbytes = numel * elsize;
  moda_storage *st = calloc(1, sizeof *st);
  if (!st) return moda_set_error(MODA_ERR_NOMEM, "moda_tensor_empty: out of memory");
  st->nbytes = nbytes; st->refcount = 1; st->device = device; st->owns_data = 1;
  if (device == MODA_CPU) {
    st->data = moda_aligned_alloc((size_t)nbytes);
    if (!st->data) {
      free(st);
      return moda_set_error(MODA_ERR_NOMEM, "moda_tensor_empty: out of memory allocating %lld bytes", (long long)nbytes);
    }
  } else {
    const moda_backend *b = NULL;
    int status = need_backend(device, "moda_tensor_empty", &b);
    if (status == MODA_OK && !b->alloc) status = moda_set_error(MODA_ERR_UNSUPPORTED, "moda_tensor_empty: backend has no alloc");
    if (status == MODA_OK) status = b->alloc(&st->data, nbytes ? nbytes : 64);
    if (status != MODA_OK) { free(st); return status; }
  }
  int64_t stride[MODA_MAX_DIMS];
  contiguous_strides(ndim, shape, stride);
  *out = tensor_alloc(st, dtype, device, ndim, shape, stride, 0);
  if (!*out) {
    st->refcount = 0;
    if (device == MODA_CPU) moda_aligned_free(st->data); else moda_get_backend(device)->free(st->data);
    free(st);
    return moda_set_error(MODA_ERR_NOMEM, "moda_tensor_empty: out of memory");
  }
  return MODA_OK;
}

int moda_tensor_wrap(moda_tensor **out, void *data, int dtype, int device, int ndim, const int64_t *shape,
                     const int64_t *stride) {
  if (!out) return moda_set_error(MODA_ERR_ARG, "moda_tensor_wrap: out is NULL");
  *out = NULL;
  if (!data) return moda_set_error(MODA_ERR_ARG, "moda_tensor_wrap: data is NULL");
  MODA_CHECK(check_dtype_device("moda_tensor_wrap", dtype, device));
  int64_t numel, elsize = moda_dtype_size(dtype);
  MODA_CHECK(check_shape("moda_tensor_wrap", ndim, shape, elsize, &numel));
  int64_t cstride[MODA_MAX_DIMS];
  contiguous_strides(ndim, shape, cstride);
  if (!stride) stride = cstride;
  /* The extent the strides reach is the storage size we record (negative strides refused). */
  int64_t extent = numel ? 1 : 0;
  for (int d = 0; d < ndim; d++) {
    if (stride[d] < 0) return moda_set_error(MODA_ERR_ARG, "moda_tensor_wrap: negative stride in dim %d", d);
    if (shape[d] > 0) extent += (shape[d] - 1) * stride[d];
  }
  moda_storage *st = calloc(1, sizeof *st);
  if (!st) return moda_set_error(MODA_ERR_NOMEM, "moda_tensor_wrap: out of memory");
  st->data = data; st->nbytes = extent * elsize; st->refcount = 1; st->device = device; st->owns_data = 0;
  *out = tensor_alloc(st, dtype, device, ndim, shape, stride, 0);
  if (!*out) { free(st); return moda_set_error(MODA_ERR_NOMEM, "moda_tensor_wrap: out of memory"); }
  return MODA_OK;
}

static void storage_release(moda_storage *st) {
  if (!st) return;
  if (__atomic_sub_fetch(&st->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (st->owns_data) {
    if (st->device == MODA_CPU) moda_aligned_free(st->data);
    else {
      const moda_backend *b = moda_get_backend(st->device);
      if (b && b->free) b->free(st->data);
    }
  }
  free(st);
}

void moda_tensor_free(moda_tensor *t) {
  if (!t) return;
  storage_release(t->storage);
  free(t);
}

void *moda_tensor_data(const moda_tensor *t) {
  if (!t || !t->storage) return NULL;
  return (char *)t->storage->data + t->offset * moda_dtype_size(t->dtype_id);
}

int64_t moda_tensor_numel(const moda_tensor *t) {
  if (!t) return 0;
  int64_t n = 1;
  for (int d = 0; d < t->ndim; d++) n *= t->sizes[d];
  return n;
}

int moda_tensor_is_contiguous(const moda_tensor *t) {
  if (!t) return 0;
  int64_t s = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    if (t->sizes[d] == 1) continue;            /* the stride of a size-1 dim never matters */
    if (t->sizes[d] == 0) return 1;
    if (t->strides[d] != s) return 0;
    s *= t->sizes[d];
  }
  return 1;
}

/* ---- views ---- */

static int check_tensor(const char *what, const char *arg, const moda_tensor *t) {
  if (!t) return moda_set_error(MODA_ERR_ARG, "%s: %s is NULL", what, arg);
  if (!t->storage) return moda_set_error(MODA_ERR_ARG, "%s: %s has no storage", what, arg);
  return MODA_OK;
}

static int new_view(moda_tensor **out, const moda_tensor *t, int ndim, const int64_t *shape, const int64_t *stride,
                    int64_t offset) {
  moda_tensor *v = tensor_alloc(t->storage, t->dtype_id, t->device_id, ndim, shape, stride, offset);
  if (!v) return moda_set_error(MODA_ERR_NOMEM, "view: out of memory");
  __atomic_add_fetch(&t->storage->refcount, 1, __ATOMIC_RELAXED);
  *out = v;
  return MODA_OK;
}

int moda_tensor_as_strided(moda_tensor **out, const moda_tensor *t, int ndim, const int64_t *shape,
                           const int64_t *stride, int64_t offset) {
  if (!out) return moda_set_error(MODA_ERR_ARG, "as_strided: out is NULL");
  *out = NULL;
  MODA_CHECK(check_tensor("as_strided", "tensor", t));
  int64_t numel, elsize = moda_dtype_size(t->dtype_id);
  MODA_CHECK(check_shape("as_strided", ndim, shape, elsize, &numel));
  if (ndim > 0 && !stride) return moda_set_error(MODA_ERR_ARG, "as_strided: stride is NULL");
  if (offset < 0) return moda_set_error(MODA_ERR_ARG, "as_strided: offset must be >= 0, got %lld", (long long)offset);
  if (numel > 0) {
    int64_t lo = offset, hi = offset;
    for (int d = 0; d < ndim; d++) {
      int64_t reach = (shape[d] - 1) * stride[d];
      if (reach < 0) lo += reach; else hi += reach;
    }
    if (lo < 0 || (hi + 1) * elsize > t->storage->nbytes)
      return moda_set_error(MODA_ERR_ARG, "as_strided: view reaches elements [%lld, %lld] outside a storage of %lld elements",
                            (long long)lo, (long long)hi, (long long)(t->storage->nbytes / elsize));
  }
  return new_view(out, t, ndim, shape, stride, offset);
}

int moda_tensor_view(moda_tensor **out, const moda_tensor *t, int ndim, const int64_t *shape) {
  if (!out) return moda_set_error(MODA_ERR_ARG, "view: out is NULL");
  *out = NULL;
  MODA_CHECK(check_tensor("view", "tensor", t));
  int64_t numel;
  MODA_CHECK(check_shape("view", ndim, shape, moda_dtype_size(t->dtype_id), &numel));
  char a[160], b[160];
  if (numel != moda_tensor_numel(t))
    return moda_set_error(MODA_ERR_SHAPE, "view: shape %s has %lld elements, the tensor of shape %s has %lld",
                          moda_shape_str(a, sizeof a, ndim, shape), (long long)numel,
                          moda_shape_str(b, sizeof b, t->ndim, t->sizes), (long long)moda_tensor_numel(t));
  if (!moda_tensor_is_contiguous(t))
    return moda_set_error(MODA_ERR_ARG, "view: the tensor is not contiguous (use reshape or contiguous first)");
  int64_t stride[MODA_MAX_DIMS];
  contiguous_strides(ndim, shape, stride);
  return new_view(out, t, ndim, shape, stride, t->offset);
}

int moda_tensor_permute(moda_tensor **out, const moda_tensor *t, int ndim, const int32_t *perm) {
  if (!out) return moda_set_error(MODA_ERR_ARG, "permute: out is NULL");
  *out = NULL;
  MODA_CHECK(check_tensor("permute", "tensor", t));
  if (ndim != t->ndim)
    return moda_set_error(MODA_ERR_ARG, "permute: expected %d dims in the permutation, got %d", t->ndim, ndim);
  if (ndim > 0 && !perm) return moda_set_error(MODA_ERR_ARG, "permute: perm is NULL");
  int seen[MODA_MAX_DIMS] = {0};
  int64_t shape[MODA_MAX_DIMS], stride[MODA_MAX_DIMS];
  for (int d = 0; d < ndim; d++) {
    int p = perm[d];
    if (p < 0 || p >= ndim || seen[p])
      return moda_set_error(MODA_ERR_ARG, "permute: not a permutation of 0..%d (entry %d is %d)", ndim - 1, d, p);
    seen[p] = 1;
    shape[d] = t->sizes[p];
    stride[d] = t->strides[p];
  }
  return new_view(out, t, ndim, shape, stride, t->offset);
}

int moda_tensor_transpose(moda_tensor **out, const moda_tensor *t, int dim0, int dim1) {
  if (!out) return moda_set_error(MODA_ERR_ARG, "transpose: out is NULL");
  *out = NULL;
  MODA_CHECK(check_tensor("transpose", "tensor", t));
  if (dim0 < 0 || dim0 >= t->ndim || dim1 < 0 || dim1 >= t->ndim)
    return moda_set_error(MODA_ERR_ARG, "transpose: dims (%d, %d) out of range for a %d-d tensor", dim0, dim1, t->ndim);
  int32_t perm[MODA_MAX_DIMS];
  for (int d = 0; d < t->ndim; d++) perm[d] = d;
  perm[dim0] = dim1;
  perm[dim1] = dim0;
  return moda_tensor_permute(out, t, t->ndim, perm);
}

int moda_tensor_narrow(moda_tensor **out, const moda_tensor *t, int dim, int64_t start, int64_t length) {
  if (!out) return moda_set_error(MODA_ERR_ARG, "narrow: out is NULL");
  *out = NULL;
  MODA_CHECK(check_tensor("narrow", "tensor", t));
  if (dim < 0 || dim >= t->ndim)
    return moda_set_error(MODA_ERR_ARG, "narrow: dim %d out of range for a %d-d tensor", dim, t->ndim);
  if (start < 0 || length < 0 || start + length > t->sizes[dim])
    return moda_set_error(MODA_ERR_ARG, "narrow: range [%lld, %lld) out of bounds for dim %d of size %lld",
                          (long long)start, (long long)(start + length), dim, (long long)t->sizes[dim]);
  int64_t shape[MODA_MAX_DIMS];
  memcpy(shape, t->sizes, sizeof shape);
  shape[dim] = length;
  return new_view(out, t, t->ndim, shape, t->strides, t->offset + start * t->strides[dim]);
}

int moda_tensor_select(moda_tensor **out, const moda_tensor *t, int dim, int64_t index) {
  if (!out) return moda_set_error(MODA_ERR_ARG, "select: out is NULL");
  *out = NULL;
  MODA_CHECK(check_tensor("select", "tensor", t));
  if (dim < 0 || dim >= t->ndim)
    return moda_set_error(MODA_ERR_ARG, "select: dim %d out of range for a %d-d tensor", dim, t->ndim);
  if (index < 0 || index >= t->sizes[dim])
    return moda_set_error(MODA_ERR_ARG, "select: index %lld out of range for dim %d of size %lld", (long long)index,
                          dim, (long long)t->sizes[dim]);
  int64_t shape[MODA_MAX_DIMS], stride[MODA_MAX_DIMS];
  int n = 0;
  for (int d = 0; d < t->ndim; d++)
    if (d != dim) { shape[n] = t->sizes[d]; stride[n] = t->strides[d]; n++; }
  return new_view(out, t, n, shape, stride, t->offset + index * t->strides[dim]);
}

/* ---- copies ---- */

/* Host-to-host strided copy with dtype conversion. */
static void copy_host(moda_tensor *dst, const moda_tensor *src) {
  const int64_t *strides[2] = {dst->strides, src->strides};
  moda_nditer it;
  moda_nditer_init(&it, dst->ndim, dst->sizes, 2, strides);
  if (!it.numel) return;
  char *dbase = moda_tensor_data(dst);
  const char *sbase = moda_tensor_data(src);
  int dt = dst->dtype_id, st = src->dtype_id;
  int64_t es = moda_dtype_size(dt);
  int same = dt == st;
  int ints = !moda_dtype_is_float(dt) && !moda_dtype_is_float(st);
  do {
    int64_t n = it.inner, ds = it.inner_stride[0], ss = it.inner_stride[1];
    char *d = dbase + it.off[0] * es;
    const char *s = sbase + it.off[1] * moda_dtype_size(st);
    if (same && ds == 1 && ss == 1) { memcpy(d, s, (size_t)(n * es)); continue; }
    if (same) {
      for (int64_t i = 0; i < n; i++) memcpy(d + i * ds * es, s + i * ss * es, (size_t)es);
    } else if (ints) {   /* integer to integer without a trip through double (int64 precision) */
      for (int64_t i = 0; i < n; i++) {
        int64_t v = st == MODA_I32 ? ((const int32_t *)s)[i * ss] : st == MODA_I64 ? ((const int64_t *)s)[i * ss]
                                                                                   : ((const uint8_t *)s)[i * ss];
        if (dt == MODA_I64) ((int64_t *)d)[i * ds] = v;
        else moda_store_f64(d, i * ds, dt, (double)v);
      }
    } else if (dt == MODA_F32 && st == MODA_F64) {
      for (int64_t i = 0; i < n; i++) ((float *)d)[i * ds] = (float)((const double *)s)[i * ss];
    } else if (dt == MODA_F64 && st == MODA_F32) {
      for (int64_t i = 0; i < n; i++) ((double *)d)[i * ds] = ((const float *)s)[i * ss];
    } else {
      for (int64_t i = 0; i < n; i++) moda_store_f64(d, i * ds, dt, moda_load_f64(s, i * ss, st));
    }
  } while (moda_nditer_next(&it));
}

static int same_shape(const moda_tensor *a, const moda_tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int d = 0; d < a->ndim; d++) if (a->sizes[d] != b->sizes[d]) return 0;
  return 1;
}

/* A contiguous copy of t on `device` with `dtype`. */
static int copy_to_new(moda_tensor **out, const moda_tensor *t, int dtype, int device) {
  MODA_CHECK(moda_tensor_empty(out, dtype, device, t->ndim, t->sizes));
  int status = moda_tensor_copy(*out, t);
  if (status != MODA_OK) { moda_tensor_free(*out); *out = NULL; }
  return status;
}

int moda_tensor_copy(moda_tensor *dst, const moda_tensor *src) {
  MODA_CHECK(check_tensor("copy", "dst", dst));
  MODA_CHECK(check_tensor("copy", "src", src));
  if (!same_shape(dst, src)) {
    char a[160], b[160];
    return moda_set_error(MODA_ERR_SHAPE, "copy: dst has shape %s, src has shape %s",
                          moda_shape_str(a, sizeof a, dst->ndim, dst->sizes), moda_shape_str(b, sizeof b, src->ndim, src->sizes));
  }
  if (moda_tensor_numel(dst) == 0) return MODA_OK;
  int dd = dst->device_id, sd = src->device_id;
  if (dd == MODA_CPU && sd == MODA_CPU) { copy_host(dst, src); return MODA_OK; }

  const moda_backend *b = NULL;
  if (dd == sd) {    /* both on one accelerator */
    MODA_CHECK(need_backend(dd, "copy", &b));
    if (!b->copy) return moda_set_error(MODA_ERR_UNSUPPORTED, "copy: backend %s has no copy", b->name);
    return b->copy(dst, src);
  }
  if (dd != MODA_CPU && sd != MODA_CPU)
    return moda_set_error(MODA_ERR_UNSUPPORTED, "copy: between two different accelerator devices");
  int dev = dd == MODA_CPU ? sd : dd;
  MODA_CHECK(need_backend(dev, "copy", &b));
  if (!b->memcpy) return moda_set_error(MODA_ERR_UNSUPPORTED, "copy: backend %s has no memcpy", b->name);

  /* Across devices the bytes move contiguous and in dst's dtype; conversion and strides are
   * handled on whichever side has them, through temporaries. */
  int64_t nbytes = moda_tensor_numel(dst) * moda_dtype_size(dst->dtype_id);
  if (sd == MODA_CPU) {   /* host -> device */
    moda_tensor *h = NULL, *dtmp = NULL;
    int status = MODA_OK;
    if (src->dtype_id == dst->dtype_id && moda_tensor_is_contiguous(src)) h = (moda_tensor *)src;
    else status = copy_to_new(&h, src, dst->dtype_id, MODA_CPU);
    if (status == MODA_OK) {
      if (moda_tensor_is_contiguous(dst)) {
        status = b->memcpy(moda_tensor_data(dst), dd, moda_tensor_data(h), MODA_CPU, nbytes);
      } else {
        status = moda_tensor_empty(&dtmp, dst->dtype_id, dd, dst->ndim, dst->sizes);
        if (status == MODA_OK) status = b->memcpy(moda_tensor_data(dtmp), dd, moda_tensor_data(h), MODA_CPU, nbytes);
        if (status == MODA_OK) status = moda_tensor_copy(dst, dtmp);
      }
    }
    if (h != src) moda_tensor_free(h);
    moda_tensor_free(dtmp);
    return status;
  }
  /* device -> host */
  moda_tensor *dsrc = NULL, *h = NULL;
  int status = MODA_OK;
  if (src->dtype_id == dst->dtype_id && moda_tensor_is_contiguous(src)) dsrc = (moda_tensor *)src;
  else status = copy_to_new(&dsrc, src, dst->dtype_id, sd);      /* convert on the device */
  if (status == MODA_OK) {
    if (moda_tensor_is_contiguous(dst)) {
      status = b->memcpy(moda_tensor_data(dst), MODA_CPU, moda_tensor_data(dsrc), sd, nbytes);
    } else {
      status = moda_tensor_empty(&h, dst->dtype_id, MODA_CPU, dst->ndim, dst->sizes);
      if (status == MODA_OK) status = b->memcpy(moda_tensor_data(h), MODA_CPU, moda_tensor_data(dsrc), sd, nbytes);
      if (status == MODA_OK) copy_host(dst, h);
    }
  }
  if (dsrc != src) moda_tensor_free(dsrc);
  moda_tensor_free(h);
  return status;
}

int moda_tensor_contiguous(moda_tensor **out, const moda_tensor *t) {
  if (!out) return moda_set_error(MODA_ERR_ARG, "contiguous: out is NULL");
  *out = NULL;
  MODA_CHECK(check_tensor("contiguous", "tensor", t));
  if (moda_tensor_is_contiguous(t)) return new_view(out, t, t->ndim, t->sizes, t->strides, t->offset);
  return copy_to_new(out, t, t->dtype_id, t->device_id);
}

int moda_tensor_fill(moda_tensor *t, double value) {
  MODA_CHECK(check_tensor("fill", "tensor", t));
  if (t->device_id != MODA_CPU) {
    const moda_backend *b = NULL;
    MODA_CHECK(need_backend(t->device_id, "fill", &b));
    if (!b->fill) return moda_set_error(MODA_ERR_UNSUPPORTED, "fill: backend %s has no fill", b->name);
    return b->fill(t, value);
  }
  const int64_t *strides[1] = {t->strides};
  moda_nditer it;
  moda_nditer_init(&it, t->ndim, t->sizes, 1, strides);
  if (!it.numel) return MODA_OK;
  char *base = moda_tensor_data(t);
  int dt = t->dtype_id;
  do {
    if (dt == MODA_F32) {
      float *p = (float *)base + it.off[0];
      for (int64_t i = 0; i < it.inner; i++) p[i * it.inner_stride[0]] = (float)value;
    } else {
      for (int64_t i = 0; i < it.inner; i++) moda_store_f64(base, it.off[0] + i * it.inner_stride[0], dt, value);
    }
  } while (moda_nditer_next(&it));
  return MODA_OK;
}

static int element_offset(const char *what, const moda_tensor *t, const int64_t *index, int64_t *off) {
  MODA_CHECK(check_tensor(what, "tensor", t));
  if (t->device_id != MODA_CPU)
    return moda_set_error(MODA_ERR_DEVICE, "%s: tensor is on %s, expected cpu", what, moda_device_name(t->device_id));
  if (t->ndim > 0 && !index) return moda_set_error(MODA_ERR_ARG, "%s: index is NULL", what);
  int64_t o = 0;
  for (int d = 0; d < t->ndim; d++) {
    if (index[d] < 0 || index[d] >= t->sizes[d])
      return moda_set_error(MODA_ERR_ARG, "%s: index %lld out of range for dim %d of size %lld", what,
                            (long long)index[d], d, (long long)t->sizes[d]);
    o += index[d] * t->strides[d];
  }
  *off = o;
  return MODA_OK;
}

int moda_tensor_get(const moda_tensor *t, const int64_t *index, double *value) {
  int64_t o;
  if (!value) return moda_set_error(MODA_ERR_ARG, "get: value is NULL");
  MODA_CHECK(element_offset("get", t, index, &o));
  *value = moda_load_f64(moda_tensor_data(t), o, t->dtype_id);
  return MODA_OK;
}

int moda_tensor_set(moda_tensor *t, const int64_t *index, double value) {
  int64_t o;
  MODA_CHECK(element_offset("set", t, index, &o));
  moda_store_f64(moda_tensor_data(t), o, t->dtype_id, value);
  return MODA_OK;
}
