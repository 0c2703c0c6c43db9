#pragma once
// Check macros for the CUDA runtime, kernel launches, cuBLAS and NCCL. Include only from code
// built with ROUTEMOE_HAVE_CUDA=1. Each throws routemoe::Error with the failing call, file:line
// and the MPI rank (see framework/error.h).

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "framework/error.h"

namespace routemoe::detail {
const char* cublas_status_name(cublasStatus_t status) noexcept;
}

#define RM_CUDA_CHECK(call)                                                                    \
  do {                                                                                         \
    const cudaError_t rm_cuda_rc_ = (call);                                                    \
    if (rm_cuda_rc_ != cudaSuccess)                                                            \
      ::routemoe::raise_error(                                                                 \
          ::routemoe::ErrorKind::Cuda, #call,                                                  \
          std::string(cudaGetErrorName(rm_cuda_rc_)) + ": " + cudaGetErrorString(rm_cuda_rc_), \
          __FILE__, __LINE__);                                                                 \
  } while (0)

// Checks the kernel launched just before it (bad configuration, missing image for this GPU).
// `kernel_name` is a string literal naming the kernel.
#define RM_CUDA_CHECK_LAUNCH(kernel_name)                                                      \
  do {                                                                                         \
    const cudaError_t rm_cuda_rc_ = cudaGetLastError();                                        \
    if (rm_cuda_rc_ != cudaSuccess)                                                            \
      ::routemoe::raise_error(                                                                 \
          ::routemoe::ErrorKind::Cuda, "launch of " kernel_name,                               \
          std::string(cudaGetErrorName(rm_cuda_rc_)) + ": " + cudaGetErrorString(rm_cuda_rc_), \
          __FILE__, __LINE__);                                                                 \
  } while (0)

#define RM_CUBLAS_CHECK(call)                                                                  \
  do {                                                                                         \
    const cublasStatus_t rm_cublas_rc_ = (call);                                               \
    if (rm_cublas_rc_ != CUBLAS_STATUS_SUCCESS)                                                \
      ::routemoe::raise_error(::routemoe::ErrorKind::Cublas, #call,                            \
                              ::routemoe::detail::cublas_status_name(rm_cublas_rc_), __FILE__, \
                              __LINE__);                                                       \
  } while (0)

#if ROUTEMOE_HAVE_NCCL
#include <nccl.h>
#define RM_NCCL_CHECK(call)                                                                        \
  do {                                                                                             \
    const ncclResult_t rm_nccl_rc_ = (call);                                                       \
    if (rm_nccl_rc_ != ncclSuccess)                                                                \
      ::routemoe::raise_error(::routemoe::ErrorKind::Nccl, #call, ncclGetErrorString(rm_nccl_rc_), \
                              __FILE__, __LINE__);                                                 \
  } while (0)
#endif
