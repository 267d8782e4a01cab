// backend.cu: the MODA_CUDA backend: device discovery, memory, copies, fills, the backward
// workspace, and the registration with the core (moda_register_backend).
#include <stdio.h>
#include <string.h>
#include <mutex>

#include "moda_cuda_internal.cuh"

namespace moda_cuda {

int current_cc() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) return 0;
  return major * 10 + minor;
}

// ---- the grow-only workspace ----
static std::mutex g_ws_mutex;
static void *g_ws_ptr = nullptr;
static int64_t g_ws_bytes = 0;

int workspace_get(void **ptr, int64_t bytes) {
  std::lock_guard<std::mutex> lock(g_ws_mutex);
  if (bytes <= g_ws_bytes) { *ptr = g_ws_ptr; return MODA_OK; }
  if (g_ws_ptr) {
    MODA_CUDA_CHECK(cudaFree(g_ws_ptr), "free workspace");  // cudaFree synchronizes the device
    g_ws_ptr = nullptr; g_ws_bytes = 0;
  }
  int64_t want = bytes < (1 << 20) ? (1 << 20) : bytes;
  MODA_CUDA_CHECK(cudaMalloc(&g_ws_ptr, (size_t)want), "allocate workspace");
  g_ws_bytes = want;
  *ptr = g_ws_ptr;
  return MODA_OK;
}

// ---- strided, dtype-converting copy and fill ----
struct StridedDesc {
  int32_t ndim, dst_dtype, src_dtype, pad_;
  int64_t numel;
  int64_t shape[MODA_MAX_DIMS];
  int64_t dst_stride[MODA_MAX_DIMS];
  int64_t src_stride[MODA_MAX_DIMS];
};

__device__ __forceinline__ bool is_int_dtype(int dt) {
  return dt == MODA_I32 || dt == MODA_I64 || dt == MODA_U8;
}

__device__ __forceinline__ double load_double(const void *base, int dt, int64_t i) {
  switch (dt) {
    case MODA_F32: return ((const float *)base)[i];
    case MODA_F64: return ((const double *)base)[i];
    case MODA_F16: return __half2float(((const __half *)base)[i]);
    case MODA_BF16: return __bfloat162float(((const __nv_bfloat16 *)base)[i]);
    case MODA_I32: return ((const int32_t *)base)[i];
    case MODA_I64: return (double)((const int64_t *)base)[i];
    default: return ((const uint8_t *)base)[i];
  }
}
__device__ __forceinline__ int64_t load_int(const void *base, int dt, int64_t i) {
  switch (dt) {
    case MODA_I32: return ((const int32_t *)base)[i];
    case MODA_I64: return ((const int64_t *)base)[i];
    default: return ((const uint8_t *)base)[i];
  }
}
// Float to integer conversions truncate toward zero, as C casts do (the core's CPU copy too).
__device__ __forceinline__ void store_double(void *base, int dt, int64_t i, double x) {
  switch (dt) {
    case MODA_F32: ((float *)base)[i] = (float)x; break;
    case MODA_F64: ((double *)base)[i] = x; break;
    case MODA_F16: ((__half *)base)[i] = __float2half_rn((float)x); break;
    case MODA_BF16: ((__nv_bfloat16 *)base)[i] = __float2bfloat16_rn((float)x); break;
    case MODA_I32: ((int32_t *)base)[i] = (int32_t)x; break;
    case MODA_I64: ((int64_t *)base)[i] = (int64_t)x; break;
    default: ((uint8_t *)base)[i] = (uint8_t)x; break;
  }
}
__device__ __forceinline__ void store_int(void *base, int dt, int64_t i, int64_t x) {
  switch (dt) {
    case MODA_I32: ((int32_t *)base)[i] = (int32_t)x; break;
    case MODA_I64: ((int64_t *)base)[i] = x; break;
    default: ((uint8_t *)base)[i] = (uint8_t)x; break;
  }
}

// Element i (row-major over shape) -> element offsets in dst and src.
__device__ __forceinline__ void strided_offsets(const StridedDesc &d, int64_t i, int64_t *dst_off,
                                                int64_t *src_off) {
  int64_t od = 0, os = 0;
  for (int k = d.ndim - 1; k >= 0; --k) {
    int64_t n = d.shape[k];
    int64_t c = i % n;
    i /= n;
    od += c * d.dst_stride[k];
    os += c * d.src_stride[k];
  }
  *dst_off = od; *src_off = os;
}

__global__ void strided_copy_kernel(StridedDesc d, void *dst, const void *src) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < d.numel;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t od, os;
    strided_offsets(d, i, &od, &os);
    if (is_int_dtype(d.dst_dtype) && is_int_dtype(d.src_dtype))
      store_int(dst, d.dst_dtype, od, load_int(src, d.src_dtype, os));
    else
      store_double(dst, d.dst_dtype, od, load_double(src, d.src_dtype, os));
  }
}

__global__ void strided_fill_kernel(StridedDesc d, void *dst, double value) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < d.numel;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t od, os;
    strided_offsets(d, i, &od, &os);
    store_double(dst, d.dst_dtype, od, value);
  }
}

static int grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  return (int)(blocks > 65536 ? 65536 : (blocks < 1 ? 1 : blocks));
}

static int check_tensor(const moda_tensor *t, const char *name) {
  if (!t) return moda_set_error(MODA_ERR_ARG, "cuda backend: %s is NULL", name);
  if (t->device_id != MODA_CUDA)
    return moda_set_error(MODA_ERR_DEVICE, "cuda backend: %s is on %s, not cuda", name,
                          moda_device_name(t->device_id));
  if (t->ndim < 0 || t->ndim > MODA_MAX_DIMS)
    return moda_set_error(MODA_ERR_ARG, "cuda backend: %s has %d dims", name, t->ndim);
  if (t->dtype_id < 0 || t->dtype_id >= MODA_NUM_DTYPES)
    return moda_set_error(MODA_ERR_DTYPE, "cuda backend: %s has invalid dtype %d", name, t->dtype_id);
  return MODA_OK;
}

// ---- backend entries ----
static int backend_alloc(void **ptr, int64_t nbytes) {
  if (!ptr) return moda_set_error(MODA_ERR_ARG, "cuda alloc: NULL out pointer");
  *ptr = nullptr;
  if (nbytes <= 0) return MODA_OK;
  cudaError_t err = cudaMalloc(ptr, (size_t)nbytes);
  if (err != cudaSuccess) {
    *ptr = nullptr;
    cudaGetLastError();  // clear a non-sticky out-of-memory error
    return moda_set_error(err == cudaErrorMemoryAllocation ? MODA_ERR_NOMEM : MODA_ERR_CUDA,
                          "cuda: cudaMalloc(%lld bytes): %s", (long long)nbytes,
                          cudaGetErrorString(err));
  }
  return MODA_OK;
}

static void backend_free(void *ptr) {
  if (ptr) cudaFree(ptr);  // no way to report from here; a failing free leaves the error sticky
}

static int backend_memcpy(void *dst, int dst_device, const void *src, int src_device,
                          int64_t nbytes) {
  if (nbytes <= 0) return MODA_OK;
  if (!dst || !src) return moda_set_error(MODA_ERR_ARG, "cuda memcpy: NULL pointer");
  cudaMemcpyKind kind;
  if (dst_device == MODA_CUDA && src_device == MODA_CUDA) kind = cudaMemcpyDeviceToDevice;
  else if (dst_device == MODA_CUDA && src_device == MODA_CPU) kind = cudaMemcpyHostToDevice;
  else if (dst_device == MODA_CPU && src_device == MODA_CUDA) kind = cudaMemcpyDeviceToHost;
  else if (dst_device == MODA_CPU && src_device == MODA_CPU) kind = cudaMemcpyHostToHost;
  else return moda_set_error(MODA_ERR_DEVICE, "cuda memcpy: bad devices %d <- %d", dst_device, src_device);
  // cudaMemcpy orders after earlier work on the legacy default stream and returns when done.
  MODA_CUDA_CHECK(cudaMemcpy(dst, src, (size_t)nbytes, kind), "cudaMemcpy");
  return MODA_OK;
}

static int backend_copy(moda_tensor *dst, const moda_tensor *src) {
  int st;
  if ((st = check_tensor(dst, "dst")) || (st = check_tensor(src, "src"))) return st;
  if (dst->ndim != src->ndim)
    return moda_set_error(MODA_ERR_SHAPE, "cuda copy: %d dims vs %d", dst->ndim, src->ndim);
  for (int k = 0; k < dst->ndim; ++k)
    if (dst->sizes[k] != src->sizes[k])
      return moda_set_error(MODA_ERR_SHAPE, "cuda copy: dim %d is %lld vs %lld", k,
                            (long long)dst->sizes[k], (long long)src->sizes[k]);
  int64_t n = moda_tensor_numel(dst);
  if (n == 0) return MODA_OK;
  void *dp = moda_tensor_data(dst);
  const void *sp = moda_tensor_data(src);
  if (dst->dtype_id == src->dtype_id && moda_tensor_is_contiguous(dst) &&
      moda_tensor_is_contiguous(src)) {
    MODA_CUDA_CHECK(cudaMemcpyAsync(dp, sp, (size_t)(n * moda_dtype_size(dst->dtype_id)),
                                    cudaMemcpyDeviceToDevice, 0), "cudaMemcpyAsync (copy)");
    return MODA_OK;
  }
  StridedDesc d;
  memset(&d, 0, sizeof d);
  d.ndim = dst->ndim; d.dst_dtype = dst->dtype_id; d.src_dtype = src->dtype_id; d.numel = n;
  for (int k = 0; k < dst->ndim; ++k) {
    d.shape[k] = dst->sizes[k]; d.dst_stride[k] = dst->strides[k]; d.src_stride[k] = src->strides[k];
  }
  strided_copy_kernel<<<grid_for(n, 256), 256, 0, 0>>>(d, dp, sp);
  MODA_CUDA_CHECK_LAUNCH("strided_copy_kernel");
  return MODA_OK;
}

static int backend_fill(moda_tensor *t, double value) {
  int st;
  if ((st = check_tensor(t, "tensor"))) return st;
  int64_t n = moda_tensor_numel(t);
  if (n == 0) return MODA_OK;
  if (value == 0.0 && moda_tensor_is_contiguous(t)) {  // +0.0 is all-zero bits in every dtype
    MODA_CUDA_CHECK(cudaMemsetAsync(moda_tensor_data(t), 0,
                                    (size_t)(n * moda_dtype_size(t->dtype_id)), 0),
                    "cudaMemsetAsync (fill)");
    return MODA_OK;
  }
  StridedDesc d;
  memset(&d, 0, sizeof d);
  d.ndim = t->ndim; d.dst_dtype = t->dtype_id; d.src_dtype = t->dtype_id; d.numel = n;
  for (int k = 0; k < t->ndim; ++k) { d.shape[k] = t->sizes[k]; d.dst_stride[k] = t->strides[k]; }
  strided_fill_kernel<<<grid_for(n, 256), 256, 0, 0>>>(d, moda_tensor_data(t), value);
  MODA_CUDA_CHECK_LAUNCH("strided_fill_kernel");
  return MODA_OK;
}

static int backend_attn_fwd(const moda_attn_params *p) { return moda_attn_fwd_cuda(p, nullptr); }
static int backend_attn_bwd(const moda_attn_params *p) {
  return moda_attn_bwd_cuda(p, nullptr, nullptr, 0);
}

static const char *backend_attn_kernel_name(const moda_attn_params *p, int backward) {
  return backward ? moda_attn_bwd_cuda_kernel_name(p) : moda_attn_fwd_cuda_kernel_name(p);
}

static const moda_backend g_backend = {
  "cuda", backend_alloc, backend_free, backend_memcpy, backend_copy, backend_fill,
  backend_attn_fwd, backend_attn_bwd, backend_attn_kernel_name,
};

}  // namespace moda_cuda

using namespace moda_cuda;

extern "C" int moda_cuda_device_count(void) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) { cudaGetLastError(); return 0; }
  return n;
}

extern "C" int moda_cuda_init(void) {
  if (moda_cuda_device_count() <= 0)
    return moda_set_error(MODA_ERR_DEVICE, "cuda: no CUDA device (cudaGetDeviceCount = 0)");
  MODA_CUDA_CHECK(cudaFree(nullptr), "create context");
  return moda_register_backend(MODA_CUDA, &g_backend);
}

extern "C" int moda_cuda_synchronize(void) {
  MODA_CUDA_CHECK(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return MODA_OK;
}

extern "C" int moda_cuda_device_info(char *name_out, int name_len, int *cc_out) {
  int dev = 0;
  MODA_CUDA_CHECK(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp prop;
  MODA_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  if (name_out && name_len > 0) snprintf(name_out, (size_t)name_len, "%s", prop.name);
  if (cc_out) *cc_out = prop.major * 10 + prop.minor;
  return MODA_OK;
}

extern "C" int moda_cuda_release_workspace(void) {
  std::lock_guard<std::mutex> lock(g_ws_mutex);
  if (g_ws_ptr) {
    MODA_CUDA_CHECK(cudaFree(g_ws_ptr), "free workspace");
    g_ws_ptr = nullptr; g_ws_bytes = 0;
  }
  return MODA_OK;
}
