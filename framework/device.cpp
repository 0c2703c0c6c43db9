#include "framework/device.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "framework/error.h"

#if ROUTEMOE_HAVE_CUDA
#include <cuda_runtime.h>

#include "framework/cuda/check.h"
#endif

namespace routemoe {

namespace {
constexpr std::size_t kAlignment = 256;
}

bool cuda_available() noexcept {
#if ROUTEMOE_HAVE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return count > 0;
#else
  return false;
#endif
}

void* device_alloc(Device device, std::size_t bytes) {
  if (bytes == 0) return nullptr;
  if (device == Device::CPU) {
    const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, rounded);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
#if ROUTEMOE_HAVE_CUDA
  void* p = nullptr;
  RM_CUDA_CHECK(cudaMalloc(&p, bytes));
  return p;
#else
  RM_FAIL(Check, "CUDA memory requested but this build has no CUDA backend (ROUTEMOE_CUDA=OFF)");
#endif
}

void device_free(Device device, void* ptr) noexcept {
  if (ptr == nullptr) return;
  if (device == Device::CPU) {
    std::free(ptr);
    return;
  }
#if ROUTEMOE_HAVE_CUDA
  const cudaError_t rc = cudaFree(ptr);
  if (rc != cudaSuccess) {
    std::fprintf(stderr, "routemoe: cudaFree failed: %s\n", cudaGetErrorString(rc));
  }
#endif
}

void device_copy(void* dst, Device dst_device, const void* src, Device src_device,
                 std::size_t bytes) {
  if (bytes == 0) return;
  if (dst_device == Device::CPU && src_device == Device::CPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
#if ROUTEMOE_HAVE_CUDA
  // Kernels run on non-blocking context streams, which cudaMemcpy does not wait for: fence on
  // both sides so that a copy sees finished producers and finishes before any consumer.
  RM_CUDA_CHECK(cudaDeviceSynchronize());
  RM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
  RM_CUDA_CHECK(cudaDeviceSynchronize());
#else
  RM_FAIL(Check, "copy to or from CUDA memory in a build without CUDA");
#endif
}

void device_zero(void* ptr, Device device, std::size_t bytes) {
  if (bytes == 0) return;
  if (device == Device::CPU) {
    std::memset(ptr, 0, bytes);
    return;
  }
#if ROUTEMOE_HAVE_CUDA
  RM_CUDA_CHECK(cudaDeviceSynchronize());  // see device_copy
  RM_CUDA_CHECK(cudaMemset(ptr, 0, bytes));
  RM_CUDA_CHECK(cudaDeviceSynchronize());
#else
  RM_FAIL(Check, "zeroing CUDA memory in a build without CUDA");
#endif
}

}  // namespace routemoe
