#pragma once
// Launch helpers shared by the CUDA kernel files (internal; include from .cu files only).

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "framework/cuda/context.h"
#include "framework/error.h"

namespace routemoe::cuda::detail {

inline constexpr int kBlock = 256;
inline constexpr std::int64_t kMaxGrid = std::int64_t{1} << 20;  // grid-stride loops cover the rest

// Blocks for `work` elements of kBlock threads, at least 1, at most kMaxGrid.
inline unsigned grid_for(std::int64_t work) {
  const std::int64_t blocks = (work + kBlock - 1) / kBlock;
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, kMaxGrid));
}

inline cudaStream_t stream_of(const Context& ctx) {
  return static_cast<cudaStream_t>(ctx.stream());
}

// Sizes must be non-negative; like the CPU kernels, a negative one throws Error(Shape).
inline void check_sizes(const char* kernel, std::int64_t a, std::int64_t b = 0,
                        std::int64_t c = 0) {
  RM_CHECK_KIND(Shape, a >= 0 && b >= 0 && c >= 0,
                std::string("cuda::") + kernel + ": negative size");
}

__device__ __forceinline__ std::int64_t global_index() {
  return blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ std::int64_t grid_stride() {
  return static_cast<std::int64_t>(gridDim.x) * blockDim.x;
}

}  // namespace routemoe::cuda::detail
