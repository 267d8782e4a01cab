/* internal.h: helpers shared by the core's .c files; not part of the public API. */
#ifndef MODA_INTERNAL_H
#define MODA_INTERNAL_H

#include "moda.h"

/* Calls fn(ctx, begin, end, tid) over [0, n) split into ranges of at most `grain` items,
 * handed out dynamically to moda_get_num_threads() threads (tid in [0, nthreads)). Runs inline
 * when one thread suffices. Returns MODA_OK, or the first nonzero status a call returned
 * (fn returns a status; later ranges are skipped once one fails). */
typedef int (*moda_range_fn)(void *ctx, int64_t begin, int64_t end, int tid);
int moda_parallel_for(int64_t n, int64_t grain, moda_range_fn fn, void *ctx);

/* Aligned host allocation for scratch buffers (64-byte aligned); NULL on failure. */
void *moda_aligned_alloc(size_t nbytes);
void moda_aligned_free(void *p);

#define MODA_CHECK(expr) do { int st_ = (expr); if (st_ != MODA_OK) return st_; } while (0)

#endif

/* ---- walking strided tensors ----
 * moda_nditer visits the index space of a shape one innermost row at a time, tracking the
 * element offset of the row start in up to 4 operands with their own strides (a broadcast dim
 * has stride 0). Usage:
 *   moda_nditer it; moda_nditer_init(&it, t->ndim, t->shape, 1, strides);
 *   if (it.numel) do { ... it.off[0], it.inner, it.inner_stride[0] ... } while (moda_nditer_next(&it));
 */
typedef struct moda_nditer {
  int ndim, nops;
  int64_t numel;               /* 0: nothing to visit */
  int64_t inner;               /* length of a row (the last dim; 1 for a 0-d tensor) */
  int64_t inner_stride[4];
  int64_t shape[MODA_MAX_DIMS], idx[MODA_MAX_DIMS];
  int64_t stride[4][MODA_MAX_DIMS];
  int64_t off[4];
} moda_nditer;

static inline void moda_nditer_init(moda_nditer *it, int ndim, const int64_t *shape, int nops,
                                    const int64_t *const *strides) {
  it->ndim = ndim; it->nops = nops; it->numel = 1;
  for (int d = 0; d < ndim; d++) {
    it->shape[d] = shape[d]; it->idx[d] = 0; it->numel *= shape[d];
    for (int i = 0; i < nops; i++) it->stride[i][d] = strides[i][d];
  }
  it->inner = ndim ? shape[ndim - 1] : 1;
  for (int i = 0; i < nops; i++) {
    it->off[i] = 0;
    it->inner_stride[i] = ndim ? strides[i][ndim - 1] : 0;
  }
}

/* Moves to the next row; 0 when all rows have been visited. */
static inline int moda_nditer_next(moda_nditer *it) {
  for (int d = it->ndim - 2; d >= 0; d--) {
    if (++it->idx[d] < it->shape[d]) {
      for (int i = 0; i < it->nops; i++) it->off[i] += it->stride[i][d];
      return 1;
    }
    for (int i = 0; i < it->nops; i++) it->off[i] -= it->stride[i][d] * (it->shape[d] - 1);
    it->idx[d] = 0;
  }
  return 0;
}

/* ---- element access as double / int64 (host memory) ---- */
double moda_load_f64(const void *base, int64_t i, int dtype);
void moda_store_f64(void *base, int64_t i, int dtype, double v);   /* clamps for int dtypes */
int moda_dtype_is_float(int dtype);
/* A shape as "[2, 3, 4]" into buf (for error messages). */
const char *moda_shape_str(char *buf, size_t n, int ndim, const int64_t *shape);
