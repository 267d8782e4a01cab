// attn.cu: the C entry points moda_attn_fwd_cuda / moda_attn_bwd_cuda: sanity checks on the
// params (the core validates tensors; these guard direct callers such as the benchmark), kernel
// choice by device and shape, and the backward workspace.
#include "moda_cuda_internal.cuh"

using namespace moda_cuda;

static int check_params(const moda_attn_params *p, bool backward) {
  if (!p) return moda_set_error(MODA_ERR_ARG, "cuda attn: NULL params");
  if (p->dtype != MODA_F32 && p->dtype != MODA_F16 && p->dtype != MODA_BF16)
    return moda_set_error(MODA_ERR_DTYPE, "cuda attn: dtype %s not supported (float32, float16, bfloat16)",
                          moda_dtype_name(p->dtype));
  if (p->B < 0 || p->T < 0 || p->S < 0 || p->L < 0 || p->Hk < 1 || p->G < 1 || p->Hq != p->G * p->Hk)
    return moda_set_error(MODA_ERR_SHAPE, "cuda attn: bad sizes B=%lld T=%lld S=%lld Hq=%lld Hk=%lld G=%lld L=%lld",
                          (long long)p->B, (long long)p->T, (long long)p->S, (long long)p->Hq,
                          (long long)p->Hk, (long long)p->G, (long long)p->L);
  if (p->d < 1 || p->d > 256)
    return moda_set_error(MODA_ERR_UNSUPPORTED, "cuda attn: head dim %lld not supported (1..256)", (long long)p->d);
  if (p->causal && p->S < p->T)
    return moda_set_error(MODA_ERR_SHAPE, "cuda attn: causal mask needs S >= T (S=%lld, T=%lld)",
                          (long long)p->S, (long long)p->T);
  if (p->chunk < 0) return moda_set_error(MODA_ERR_ARG, "cuda attn: chunk %d < 0", p->chunk);
  if (!(p->scale > 0.0)) return moda_set_error(MODA_ERR_ARG, "cuda attn: scale must be > 0 (the core fills 1/sqrt(d))");
  int64_t rows = p->B * p->T * p->Hq;
  if (rows > 0 && (!p->q || !p->o || !p->lse))
    return moda_set_error(MODA_ERR_ARG, "cuda attn: NULL q, o or lse");
  if (p->B * p->S > 0 && (!p->k || !p->v)) return moda_set_error(MODA_ERR_ARG, "cuda attn: NULL k or v");
  if (p->L > 0 && rows > 0 && (!p->kd || !p->vd))
    return moda_set_error(MODA_ERR_ARG, "cuda attn: L = %lld but kd or vd is NULL", (long long)p->L);
  if (backward) {
    if (rows > 0 && (!p->dout || !p->dq)) return moda_set_error(MODA_ERR_ARG, "cuda attn bwd: NULL dout or dq");
    if (p->B * p->S > 0 && (!p->dk || !p->dv)) return moda_set_error(MODA_ERR_ARG, "cuda attn bwd: NULL dk or dv");
    if (p->L > 0 && rows > 0 && (!p->dkd || !p->dvd))
      return moda_set_error(MODA_ERR_ARG, "cuda attn bwd: L > 0 but dkd or dvd is NULL");
  }
  return MODA_OK;
}

extern "C" const char *moda_attn_fwd_cuda_kernel_name(const moda_attn_params *p) {
  if (!p) return "none";
  if (fwd_decode_selected(p)) return fwd_decode_name(p);
  return fwd_mma_supported(p, current_cc()) ? fwd_mma_name(p) : "simt";
}

extern "C" int64_t moda_attn_fwd_cuda_workspace_size(const moda_attn_params *p) {
  if (!p || p->B * p->T * p->Hq == 0) return 0;
  return fwd_decode_workspace_bytes(p);
}

// Kernel choice: the decode path (split-K, attn_decode.cu) for T <= 16 queries against a cache
// of S >= 1024 keys; else the tensor-core kernel where it applies; else SIMT.
extern "C" int moda_attn_fwd_cuda_ws(const moda_attn_params *p, void *stream, void *workspace,
                                     int64_t workspace_bytes) {
  if (int st = check_params(p, false)) return st;
  if (p->B * p->T * p->Hq == 0) return MODA_OK;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (fwd_decode_selected(p)) {
    int64_t need = fwd_decode_workspace_bytes(p);
    if (workspace) {
      if (workspace_bytes < need)
        return moda_set_error(MODA_ERR_ARG, "cuda attn fwd: workspace of %lld bytes, %lld needed",
                              (long long)workspace_bytes, (long long)need);
    } else if (int st = workspace_get(&workspace, need)) {
      return st;
    }
    return fwd_decode_launch(p, s, workspace);
  }
  if (fwd_mma_supported(p, current_cc())) return fwd_mma_launch(p, s);
  return fwd_simt_launch(p, s);
}

extern "C" int moda_attn_fwd_cuda(const moda_attn_params *p, void *stream) {
  return moda_attn_fwd_cuda_ws(p, stream, nullptr, 0);
}

extern "C" const char *moda_attn_bwd_cuda_kernel_name(const moda_attn_params *p) {
  if (!p) return "none";
  return bwd_mma_supported(p, current_cc()) ? bwd_mma_name(p) : "simt";
}

extern "C" int64_t moda_attn_bwd_cuda_workspace_size(const moda_attn_params *p) {
  if (!p) return 0;
  int64_t n = p->B * p->Hq * p->T;  // SIMT: D = rowsum(dO * O), float32
  int64_t n_mma = bwd_mma_workspace_floats(p);  // mma: D and lse*log2(e) per packed row
  if (n_mma > n) n = n_mma;
  return ((n * 4 + 255) / 256) * 256;
}

extern "C" int moda_attn_bwd_cuda(const moda_attn_params *p, void *stream, void *workspace,
                                  int64_t workspace_bytes) {
  if (int st = check_params(p, true)) return st;
  int64_t need = moda_attn_bwd_cuda_workspace_size(p);
  if (need == 0 && p->B * p->S * p->Hk == 0) return MODA_OK;
  if (workspace) {
    if (workspace_bytes < need)
      return moda_set_error(MODA_ERR_ARG, "cuda attn bwd: workspace of %lld bytes, %lld needed",
                            (long long)workspace_bytes, (long long)need);
  } else if (need > 0) {
    if (int st = workspace_get(&workspace, need)) return st;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (bwd_mma_supported(p, current_cc())) return bwd_mma_launch(p, s, static_cast<float *>(workspace));
  return bwd_simt_launch(p, s, static_cast<float *>(workspace));
}
