/* moda.h: the core of moda: status codes and errors, the one tensor struct, tensor creation,
 * views, copies, random numbers, elementwise ops and reductions, threads, and the backend
 * interface through which the CUDA library plugs in.
 *
 * Conventions
 * - Every function that can fail returns a moda_status (MODA_OK = 0) and, on failure, leaves a
 *   message for moda_last_error() (thread-local). Nothing user-supplied reaches an assert.
 * - Argument order follows torch7's THNN: outputs first, then inputs, then options.
 * - Shapes and strides are in elements; offset is in elements of the tensor's dtype.
 *
 * The block between MODA_CDEF_BEGIN and MODA_CDEF_END is plain C that tools/gen_cdef.lua copies
 * into lua/moda/cdef.lua for LuaJIT's ffi.cdef: keep it free of macros and includes there. */
#ifndef MODA_H
#define MODA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MODA_MAX_DIMS 8

/* MODA_CDEF_BEGIN */
typedef enum moda_status {
  MODA_OK = 0,
  MODA_ERR_ARG = 1,         /* a bad argument: NULL, out of range, inconsistent */
  MODA_ERR_SHAPE = 2,       /* shapes do not match what the op needs */
  MODA_ERR_DTYPE = 3,       /* dtype not supported or mismatched */
  MODA_ERR_DEVICE = 4,      /* device mismatch, or no backend for the device */
  MODA_ERR_NOMEM = 5,       /* an allocation failed */
  MODA_ERR_IO = 6,          /* a file could not be read or written */
  MODA_ERR_FORMAT = 7,      /* a file's contents are malformed */
  MODA_ERR_CUDA = 8,        /* a CUDA call failed (message has the CUDA text) */
  MODA_ERR_UNSUPPORTED = 9  /* a valid request this build cannot do */
} moda_status;

typedef enum moda_dtype {
  MODA_F32 = 0, MODA_F64 = 1, MODA_F16 = 2, MODA_BF16 = 3,
  MODA_I32 = 4, MODA_I64 = 5, MODA_U8 = 6,
  MODA_NUM_DTYPES = 7
} moda_dtype;

typedef enum moda_device { MODA_CPU = 0, MODA_CUDA = 1, MODA_NUM_DEVICES = 2 } moda_device;

/* Reference-counted storage. A view shares its storage with the tensor it came from. */
typedef struct moda_storage {
  void *data;          /* host pointer (MODA_CPU) or device pointer */
  int64_t nbytes;
  int32_t refcount;
  int32_t device;      /* moda_device */
  int32_t owns_data;   /* 0 for storage wrapping memory someone else frees */
  int32_t pad_;
} moda_storage;

/* The one tensor struct. Heap allocated by the functions below, freed by moda_tensor_free.
 * Field names differ from the Lua methods on purpose: in LuaJIT a struct field hides a metatype
 * method of the same name, and Lua users call t:shape(), t:stride(i), t:dim(), t.dtype. */
typedef struct moda_tensor {
  moda_storage *storage;
  int64_t offset;                 /* elements from storage->data */
  int64_t sizes[8];               /* the shape */
  int64_t strides[8];             /* in elements */
  int32_t ndim;
  int32_t dtype_id;               /* moda_dtype */
  int32_t device_id;              /* moda_device */
  int32_t pad_;
} moda_tensor;

/* ---- errors ---- */
const char *moda_last_error(void);
int moda_set_error(int status, const char *fmt, ...);   /* returns status; for backends */
void moda_clear_error(void);

/* ---- dtypes ---- */
int64_t moda_dtype_size(int dtype);                 /* bytes, 0 for an invalid dtype */
const char *moda_dtype_name(int dtype);             /* "float32", ...; "invalid" */
int moda_dtype_from_name(const char *name);         /* -1 when unknown */
const char *moda_device_name(int device);           /* "cpu", "cuda" */
float moda_half_to_float(uint16_t h);
uint16_t moda_float_to_half(float f);               /* round to nearest even */
float moda_bf16_to_float(uint16_t h);
uint16_t moda_float_to_bf16(float f);               /* round to nearest even */

/* ---- tensors ---- */
int moda_tensor_empty(moda_tensor **out, int dtype, int device, int ndim, const int64_t *shape);
/* A tensor over memory the caller owns (not freed by moda); data must outlive the tensor. */
int moda_tensor_wrap(moda_tensor **out, void *data, int dtype, int device, int ndim,
                     const int64_t *shape, const int64_t *stride);
void moda_tensor_free(moda_tensor *t);              /* drops one reference to the storage */
void *moda_tensor_data(const moda_tensor *t);       /* address of element 0 */
int64_t moda_tensor_numel(const moda_tensor *t);
int moda_tensor_is_contiguous(const moda_tensor *t);

/* Views: share storage. */
int moda_tensor_as_strided(moda_tensor **out, const moda_tensor *t, int ndim, const int64_t *shape,
                           const int64_t *stride, int64_t offset);
int moda_tensor_view(moda_tensor **out, const moda_tensor *t, int ndim, const int64_t *shape);
int moda_tensor_permute(moda_tensor **out, const moda_tensor *t, int ndim, const int32_t *perm);
int moda_tensor_transpose(moda_tensor **out, const moda_tensor *t, int dim0, int dim1);
int moda_tensor_narrow(moda_tensor **out, const moda_tensor *t, int dim, int64_t start,
                       int64_t length);
int moda_tensor_select(moda_tensor **out, const moda_tensor *t, int dim, int64_t index);
/* A new reference to t itself when t is contiguous, else a contiguous copy. */
int moda_tensor_contiguous(moda_tensor **out, const moda_tensor *t);
/* dst and src of equal shape; any strides, dtypes and devices (converting as needed). */
int moda_tensor_copy(moda_tensor *dst, const moda_tensor *src);
int moda_tensor_fill(moda_tensor *t, double value);
/* Read or write one element as double (cpu). */
int moda_tensor_get(const moda_tensor *t, const int64_t *index, double *value);
int moda_tensor_set(moda_tensor *t, const int64_t *index, double value);

/* ---- random numbers ----
 * One global generator: a seed and a counter. Element i of a fill draws from a counter-based
 * hash of (seed, counter + i), so the stream does not depend on the thread count or on how the
 * fill is split. Each fill advances the counter by the elements it drew. */
void moda_manual_seed(uint64_t seed);
void moda_rng_get_state(uint64_t *seed, uint64_t *counter);
void moda_rng_set_state(uint64_t seed, uint64_t counter);
int moda_tensor_randn(moda_tensor *t, double mean, double std);
int moda_tensor_rand(moda_tensor *t, double low, double high);

/* ---- elementwise ops and reductions (cpu; float dtypes computed in double for f16/bf16) ---- */
typedef enum moda_binary_op {
  MODA_OP_ADD = 0, MODA_OP_SUB = 1, MODA_OP_MUL = 2, MODA_OP_DIV = 3, MODA_OP_POW = 4,
  MODA_OP_MAX = 5, MODA_OP_MIN = 6
} moda_binary_op;
typedef enum moda_unary_op {
  MODA_OP_NEG = 0, MODA_OP_ABS = 1, MODA_OP_EXP = 2, MODA_OP_LOG = 3, MODA_OP_SQRT = 4,
  MODA_OP_TANH = 5, MODA_OP_SIGMOID = 6, MODA_OP_RELU = 7
} moda_unary_op;
typedef enum moda_reduce_op {
  MODA_RED_SUM = 0, MODA_RED_MAX = 1, MODA_RED_MIN = 2, MODA_RED_SUMSQ = 3,
  MODA_RED_ABSMAX = 4, MODA_RED_NANCOUNT = 5
} moda_reduce_op;
/* out = a op b with numpy broadcasting; out has the broadcast shape. */
int moda_tensor_binary(moda_tensor *out, const moda_tensor *a, const moda_tensor *b, int op);
/* out = a op s, or s op a when reverse != 0. */
int moda_tensor_scalar(moda_tensor *out, const moda_tensor *a, double s, int op, int reverse);
int moda_tensor_unary(moda_tensor *out, const moda_tensor *a, int op);
int moda_tensor_reduce_all(const moda_tensor *a, int op, double *result);
/* out[..., m, n] = a[..., m, k] @ b[..., k, n]; f32/f64 through BLAS, batch dims must match. */
int moda_tensor_matmul(moda_tensor *out, const moda_tensor *a, const moda_tensor *b);

/* ---- threads ---- */
void moda_set_num_threads(int n);                  /* n <= 0: the number of online cpus */
int moda_get_num_threads(void);

/* ---- backends ----
 * The core owns CPU memory; another library (libmoda_cuda.so) registers the functions that
 * allocate, free and copy memory of its device, and run ops on it. Any entry may be NULL. */
struct moda_attn_params;
typedef struct moda_backend {
  const char *name;
  int (*alloc)(void **ptr, int64_t nbytes);
  void (*free)(void *ptr);
  /* nbytes from src to dst; each side is MODA_CPU or this backend's device */
  int (*memcpy)(void *dst, int dst_device, const void *src, int src_device, int64_t nbytes);
  /* strided/dtype-converting copy between two tensors on this device */
  int (*copy)(moda_tensor *dst, const moda_tensor *src);
  int (*fill)(moda_tensor *t, double value);
  int (*attn_fwd)(const struct moda_attn_params *p);
  int (*attn_bwd)(const struct moda_attn_params *p);
  /* which kernel attn_fwd (backward = 0) or attn_bwd (1) would run for p: a static string */
  const char *(*attn_kernel_name)(const struct moda_attn_params *p, int backward);
} moda_backend;
int moda_register_backend(int device, const moda_backend *backend);
const moda_backend *moda_get_backend(int device);
/* MODA_CDEF_END */

#ifdef __cplusplus
}
#endif
#endif
