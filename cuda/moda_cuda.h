/* moda_cuda.h: the CUDA backend of moda (build/libmoda_cuda.so, `make cuda`).
 *
 * - moda_cuda_init() registers a moda_backend for MODA_CUDA (device memory, host<->device
 *   copies, strided dtype-converting copies and fills on the device, attention fwd/bwd on the
 *   default stream), so moda_tensor_* and moda_attn_fwd/bwd work on GPU tensors.
 * - moda_attn_fwd_cuda / moda_attn_bwd_cuda run MoDA attention (shared/moda/SPEC.md) on validated
 *   moda_attn_params (c/moda_attn.h) on a caller-given stream. Every call returns a moda_status;
 *   a CUDA failure returns MODA_ERR_CUDA with the CUDA error text in moda_last_error().
 * - No allocations in the hot path: the backward needs a float32 workspace of
 *   moda_attn_bwd_cuda_workspace_size(p) bytes, the decode forward one of
 *   moda_attn_fwd_cuda_workspace_size(p) bytes. Pass one, or pass NULL to use a grow-only buffer
 *   the library keeps (allocated on the first call that needs more, then reused).
 *
 * Kernels (picked at run time): bf16/fp16 with head dim 64 or 128 and 16-byte aligned rows on
 * sm_80+ use the tensor-core (mma.sync m16n8k16) forward, on sm_90 the wgmma (sm_90a) kernels
 * where the sequence is long; every other case (float32, other head dims up to 256, unaligned
 * strides, older GPUs) uses a plain SIMT kernel with float32 accumulation. The backward follows
 * the same split (tensor-core kernels in attn_bwd_mma.cu, SIMT otherwise); both are deterministic
 * (no atomics) by default. With deterministic = 0 on sm_90, d = 64 and a long sequence part, dQ
 * is summed by float32 atomics (faster; its last bits then vary run to run).
 *
 * The block between MODA_CDEF_BEGIN and MODA_CDEF_END is plain C for LuaJIT's ffi.cdef
 * (streams are void* there): `luajit tools/gen_cdef.lua cuda/moda_cuda.h > lua/moda/cuda_cdef.lua`. */
#ifndef MODA_CUDA_H
#define MODA_CUDA_H

#include <stdint.h>
#include "moda.h"
#include "moda_attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* MODA_CDEF_BEGIN */
/* Number of CUDA devices; 0 when there is no driver, no device, or CUDA fails (never an error). */
int moda_cuda_device_count(void);
/* Registers the MODA_CUDA backend (idempotent). MODA_ERR_DEVICE when no GPU exists. */
int moda_cuda_init(void);
/* cudaDeviceSynchronize, checked. */
int moda_cuda_synchronize(void);
/* Name of the current device ("NVIDIA H100 80GB HBM3") and its compute capability (major*10+minor);
 * name_out gets at most name_len bytes including the NUL. */
int moda_cuda_device_info(char *name_out, int name_len, int *cc_out);
/* Free the library-owned backward workspace (the next backward reallocates it). */
int moda_cuda_release_workspace(void);

/* Bytes of float32 workspace moda_attn_bwd_cuda needs for these params. */
int64_t moda_attn_bwd_cuda_workspace_size(const moda_attn_params *p);
/* Which forward kernel moda_attn_fwd_cuda would run: "mma_sync_d64", "mma_sync_d64x2",
   "mma_sync_d128", "wgmma_d64_ws" (warp-specialised), "wgmma_d64", "wgmma_d128", "decode_d64_r8",
   ..., "simt". */
const char *moda_attn_fwd_cuda_kernel_name(const moda_attn_params *p);
/* Which backward kernels moda_attn_bwd_cuda would run: "mma_sync_d64", "mma_sync_d128",
   "wgmma_d64" (sm_90a kernels for the sequence parts), "wgmma_d64_ws" (with the warp-specialised
   dK/dV kernel), "simt"; "_atomic_dq" appended where dQ is summed by atomics (deterministic = 0),
   "_ordered_dq" where it is summed in a fixed order by the warp-specialised kernel (deterministic),
   "_fdepth" where the dQ kernel computes dkd and dvd, "_dtok" where the depth kernel
   (attn_bwd_depth.cu) computes dkd, dvd and dq's depth part, "_dtma" where its TMA variant
   (attn_bwd_depth_tma.cu, sm_90) does, "_conc" appended where it runs on its own SMs beside the
   sequence kernels (a side stream, joined before the call's work ends). */
const char *moda_attn_bwd_cuda_kernel_name(const moda_attn_params *p);

/* Bytes of float32 workspace moda_attn_fwd_cuda needs for these params: 0 for the tiled
 * kernels, the split partials for the decode path (T <= 16 queries, S >= 1024 cached keys). */
int64_t moda_attn_fwd_cuda_workspace_size(const moda_attn_params *p);
/* Decode-path choice, a process-wide knob for tests and benchmarks: 0 automatic (default),
 * 1 never, 2 whenever the decode kernels can run it (T <= 16, d 64/128, 16-byte aligned rows). */
int moda_cuda_set_decode_mode(int mode);

/* stream: a cudaStream_t (NULL = the legacy default stream). Uses the library-owned workspace
 * when the decode path needs one (shared with the backward: stream-ordered calls only). */
int moda_attn_fwd_cuda(const moda_attn_params *p, void *stream);
/* Same, with a caller-owned workspace: NULL (library-owned, grow-only) or
 * workspace_bytes >= moda_attn_fwd_cuda_workspace_size(p). */
int moda_attn_fwd_cuda_ws(const moda_attn_params *p, void *stream, void *workspace,
                          int64_t workspace_bytes);
/* workspace: NULL (library-owned, grow-only) or workspace_bytes >= moda_attn_bwd_cuda_workspace_size. */
int moda_attn_bwd_cuda(const moda_attn_params *p, void *stream, void *workspace,
                       int64_t workspace_bytes);
/* MODA_CDEF_END */

#ifdef __cplusplus
}
#endif
#endif
