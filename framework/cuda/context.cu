// CUDA execution context (device, non-blocking stream, cuBLAS handle), device enumeration and
// the cuBLAS status names used by RM_CUBLAS_CHECK.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <string>

#include "framework/cuda/check.h"
#include "framework/cuda/context.h"
#include "framework/cuda/cublas_api.h"

namespace routemoe::detail {

const char* cublas_status_name(cublasStatus_t status) noexcept {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
      break;
  }
  return "CUBLAS_STATUS_<unknown>";
}

}  // namespace routemoe::detail

namespace routemoe::cuda {

namespace {
cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}
cublasHandle_t as_handle(void* h) {
  return static_cast<cublasHandle_t>(h);
}
}  // namespace

Context::Context(int device) : device_(device) {
  RM_CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t stream = nullptr;
  RM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t handle = nullptr;
  const blas::Api& cublas = blas::api();  // loads cuBLAS on first use
  cublasStatus_t rc = cublas.create(&handle);
  if (rc == CUBLAS_STATUS_SUCCESS) rc = cublas.set_stream(handle, stream);
  // Plain fp32 GEMMs (no TF32 tensor-op downgrade): the parity tests compare against CBLAS.
  if (rc == CUBLAS_STATUS_SUCCESS) rc = cublas.set_math_mode(handle, CUBLAS_DEFAULT_MATH);
  if (rc != CUBLAS_STATUS_SUCCESS) {
    if (handle != nullptr) (void)cublas.destroy(handle);
    (void)cudaStreamDestroy(stream);
    RM_CUBLAS_CHECK(rc);  // throws
  }
  stream_ = stream;
  cublas_ = handle;
}

Context::~Context() {
  // Best effort: make the context's device current so that the handle and stream are released
  // on the device they were created on. Never throws.
  int current = -1;
  const bool switched = cudaGetDevice(&current) == cudaSuccess && current != device_ &&
                        cudaSetDevice(device_) == cudaSuccess;
  if (cublas_ != nullptr) {
    const cublasStatus_t rc = blas::api().destroy(as_handle(cublas_));
    if (rc != CUBLAS_STATUS_SUCCESS) {
      std::fprintf(stderr, "routemoe: cublasDestroy failed: %s\n", detail::cublas_status_name(rc));
    }
  }
  if (stream_ != nullptr) {
    const cudaError_t rc = cudaStreamDestroy(as_stream(stream_));
    if (rc != cudaSuccess) {
      std::fprintf(stderr, "routemoe: cudaStreamDestroy failed: %s: %s\n", cudaGetErrorName(rc),
                   cudaGetErrorString(rc));
    }
  }
  if (switched) (void)cudaSetDevice(current);
}

void Context::synchronize() const {
  RM_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));
}

int device_count() {
  int count = 0;
  const cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc == cudaSuccess) return count;
  (void)cudaGetLastError();  // not sticky, but leave nothing behind
  if (rc == cudaErrorNoDevice) return 0;
  // Without any driver installed the runtime reports an insufficient driver of version 0: a
  // machine without a GPU. A driver that is present but older than the runtime is an error.
  int driver = -1;
  if (rc == cudaErrorInsufficientDriver && cudaDriverGetVersion(&driver) == cudaSuccess &&
      driver == 0) {
    return 0;
  }
  int runtime = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  raise_error(ErrorKind::Cuda, "cudaGetDeviceCount",
              std::string(cudaGetErrorName(rc)) + ": " + cudaGetErrorString(rc) +
                  " (driver API version " + std::to_string(driver) + ", runtime " +
                  std::to_string(runtime) + "): the GPUs of this machine cannot be used",
              __FILE__, __LINE__);
}

}  // namespace routemoe::cuda
