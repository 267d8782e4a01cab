// bench/bench_cuda.h: what the standalone CUDA benchmarks (copy_sms.cu, dq_reduce.cu) share.
#pragma once
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

// A CUDA runtime call that must succeed: on failure, print where and why, and exit.
#define CK(x)                                                                         \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)
