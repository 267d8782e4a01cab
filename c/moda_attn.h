/* moda_attn.h: Mixture-of-Depths attention (shared/moda/SPEC.md) on tensors.
 *
 * moda_attn_fwd / moda_attn_bwd validate their tensors, fill a moda_attn_params (raw pointers
 * and element strides, the same struct every backend reads), and dispatch: CPU tensors to the
 * fast or the reference CPU implementation, other devices to the registered backend.
 *
 * Shapes (SPEC section 1): q [B,T,Hq,d]; k, v [B,S,Hk,d]; kd, vd [B,T,L,Hk,d] (NULL when L = 0);
 * o [B,T,Hq,d]; lse [B,Hq,T] float32. Hq = G*Hk. Only the last dim of each tensor must be
 * contiguous; every other dim may have any stride, so the first L slots of a pre-allocated
 * [B,T,L_max,Hk,d] depth buffer are read in place (a narrow view). */
#ifndef MODA_ATTN_H
#define MODA_ATTN_H

#include "moda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* MODA_CDEF_BEGIN */
typedef enum moda_attn_mask { MODA_MASK_CAUSAL = 0, MODA_MASK_FULL = 1 } moda_attn_mask;
typedef enum moda_attn_depth { MODA_DEPTH_TOKEN = 0, MODA_DEPTH_CHUNK = 1 } moda_attn_depth;
typedef enum moda_attn_impl { MODA_IMPL_FAST = 0, MODA_IMPL_REFERENCE = 1 } moda_attn_impl;

typedef struct moda_attn_opts {
  int32_t mask;           /* moda_attn_mask */
  int32_t depth;          /* moda_attn_depth */
  int32_t chunk;          /* C tokens, for MODA_DEPTH_CHUNK (>= 1) */
  int32_t impl;           /* moda_attn_impl */
  int32_t deterministic;  /* backends with atomics: 1 = reproducible sums */
  int32_t pad_;
  double scale;           /* softmax scale; <= 0 means 1/sqrt(d) */
} moda_attn_opts;

/* Everything a kernel needs, validated. Strides are in elements; the last dim is contiguous.
 * Index order of each stride array is the tensor's dim order without the last dim. */
typedef struct moda_attn_params {
  int32_t dtype;          /* of q, k, v, kd, vd, o, dout and the gradients */
  int32_t causal;         /* 1: causal mask (query t at absolute position S-T+t) */
  int32_t chunk;          /* 0: token depth visibility; C >= 1: chunk visibility, C tokens */
  int32_t impl;
  int32_t deterministic;
  int32_t pad_;
  int64_t B, T, S, Hq, Hk, G, L, d;
  double scale;
  const void *q;   int64_t q_stride[3];    /* [B,T,Hq] */
  const void *k;   int64_t k_stride[3];    /* [B,S,Hk] */
  const void *v;   int64_t v_stride[3];
  const void *kd;  int64_t kd_stride[4];   /* [B,T,L,Hk]; NULL when L = 0 */
  const void *vd;  int64_t vd_stride[4];
  void *o;         int64_t o_stride[3];    /* output of fwd, input of bwd */
  float *lse;      int64_t lse_stride[3];  /* [B,Hq,T]; all three strides are honoured */
  /* backward only */
  const void *dout; int64_t dout_stride[3];
  void *dq;        int64_t dq_stride[3];
  void *dk;        int64_t dk_stride[3];
  void *dv;        int64_t dv_stride[3];
  void *dkd;       int64_t dkd_stride[4];
  void *dvd;       int64_t dvd_stride[4];
} moda_attn_params;

/* o and lse are written. kd and vd may both be NULL (L = 0). */
int moda_attn_fwd(moda_tensor *o, moda_tensor *lse, const moda_tensor *q, const moda_tensor *k,
                  const moda_tensor *v, const moda_tensor *kd, const moda_tensor *vd,
                  const moda_attn_opts *opts);
/* dq, dk, dv (and dkd, dvd when L > 0) are overwritten with the full gradients. */
int moda_attn_bwd(moda_tensor *dq, moda_tensor *dk, moda_tensor *dv, moda_tensor *dkd,
                  moda_tensor *dvd, const moda_tensor *dout, const moda_tensor *q,
                  const moda_tensor *k, const moda_tensor *v, const moda_tensor *kd,
                  const moda_tensor *vd, const moda_tensor *o, const moda_tensor *lse,
                  const moda_attn_opts *opts);

/* Which kernels moda_attn_fwd and moda_attn_bwd would run for these tensors and opts (the
 * forward's o and lse need not exist): *fwd_name and *bwd_name get static strings, e.g.
 * "cpu_fast", "cpu_reference", or the CUDA backend's names ("wgmma_d64_ws", "mma_sync_d128",
 * "wgmma_d64_ws_atomic_dq_fdepth", ...). Validation and errors as moda_attn_fwd. */
int moda_attn_kernel_names(const char **fwd_name, const char **bwd_name, const moda_tensor *q,
                           const moda_tensor *k, const moda_tensor *v, const moda_tensor *kd,
                           const moda_tensor *vd, const moda_attn_opts *opts);

/* The CPU implementations, on validated params (dtype f32 or f64; the reference also takes f16
 * and bf16). The reference accumulates in float64 with plain loops: the oracle. */
int moda_attn_fwd_ref_cpu(const moda_attn_params *p);
int moda_attn_bwd_ref_cpu(const moda_attn_params *p);
int moda_attn_fwd_fast_cpu(const moda_attn_params *p);
int moda_attn_bwd_fast_cpu(const moda_attn_params *p);
/* MODA_CDEF_END */

#ifdef __cplusplus
}
#endif
#endif
