// Elementwise CUDA kernels, column sums, the sum of squares and the philox fills.
// Twins of the CPU kernels in framework/cpu/kernels.h (fp32 only).

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "framework/cuda/check.h"
#include "framework/cuda/kernels.h"
#include "framework/cuda/launch.cuh"
#include "framework/rng.h"

namespace routemoe::cuda {

namespace {

using namespace detail;  // launch helpers (launch.cuh)

__global__ void fill_kernel(float* __restrict__ x, float value, std::int64_t n) {
  for (std::int64_t i = global_index(); i < n; i += grid_stride()) x[i] = value;
}

__global__ void axpy_kernel(float alpha, const float* __restrict__ x, float* __restrict__ y,
                            std::int64_t n) {
  for (std::int64_t i = global_index(); i < n; i += grid_stride()) y[i] += alpha * x[i];
}

__global__ void scale_kernel(float* __restrict__ x, float alpha, std::int64_t n) {
  for (std::int64_t i = global_index(); i < n; i += grid_stride()) x[i] *= alpha;
}

// y may alias a or b: no __restrict__ here.
__global__ void add_kernel(const float* a, const float* b, float* y, std::int64_t n) {
  for (std::int64_t i = global_index(); i < n; i += grid_stride()) y[i] = a[i] + b[i];
}

// Column sums of x[rows, cols] added to out[cols]. A block owns 32 consecutive columns (one per
// lane, so the loads of a warp are coalesced); kRowLanes thread rows stride over the rows and
// their partial sums are combined in a fixed order in shared memory. fp32 accumulation; the
// summation order is fixed, so the result is deterministic (but differs from the CPU's
// sequential order by rounding).
constexpr int kColTile = 32;
constexpr int kRowLanes = 16;

__global__ void sum_rows_kernel(const float* __restrict__ x, float* __restrict__ out,
                                std::int64_t rows, std::int64_t cols) {
  __shared__ float part[kRowLanes][kColTile + 1];
  for (std::int64_t c0 = static_cast<std::int64_t>(blockIdx.x) * kColTile; c0 < cols;
       c0 += static_cast<std::int64_t>(gridDim.x) * kColTile) {
    const std::int64_t c = c0 + threadIdx.x;
    float s = 0.0f;
    if (c < cols) {
      for (std::int64_t r = threadIdx.y; r < rows; r += kRowLanes) s += x[r * cols + c];
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
      float t = 0.0f;
      for (int k = 0; k < kRowLanes; ++k) t += part[k][threadIdx.x];
      out[c] += t;
    }
    __syncthreads();
  }
}

// Block-wide sum in double (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ double block_sum_double(double v) {
  __shared__ double warp_part[32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = threadIdx.x < warps ? warp_part[threadIdx.x] : 0.0;
  if (warp == 0) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) warp_part[0] = v;
  }
  __syncthreads();
  v = warp_part[0];
  __syncthreads();
  return v;
}

// Pass 1: each block writes the double sum of squares of its grid-stride share to partial[block].
// (A float squared is exact in double, so only the additions round.)
__global__ void sum_squares_partial_kernel(const float* __restrict__ x, std::int64_t n,
                                           double* __restrict__ partial) {
  double s = 0.0;
  for (std::int64_t i = global_index(); i < n; i += grid_stride()) {
    const double v = x[i];
    s += v * v;
  }
  s = block_sum_double(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Pass 2: one block adds the partials in a fixed order (deterministic result).
__global__ void sum_partials_kernel(const double* __restrict__ partial, int count,
                                    double* __restrict__ result) {
  double s = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
  s = block_sum_double(s);
  if (threadIdx.x == 0) *result = s;
}

// Stream-ordered scratch memory released on scope exit (errors on release are ignored: the
// memory is returned to the pool and a failing stream is reported by the next check).
class StreamScratch {
 public:
  StreamScratch(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
    RM_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  ~StreamScratch() {
    if (ptr_ != nullptr) (void)cudaFreeAsync(ptr_, stream_);
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

// Philox fills. mul_then_add (framework/rng.h) rounds the product and the sum separately on both
// sides, so that the GPU values are bit-identical to the CPU's.
__global__ void fill_uniform_kernel(float* __restrict__ x, std::int64_t n, std::uint64_t seed,
                                    std::uint64_t stream, float lo, float hi,
                                    std::uint64_t index_offset) {
  const float width = __fsub_rn(hi, lo);
  for (std::int64_t i = global_index(); i < n; i += grid_stride()) {
    const float u = philox_uniform(seed, stream, index_offset + static_cast<std::uint64_t>(i));
    x[i] = mul_then_add(width, u, lo);
  }
}

__global__ void fill_normal_kernel(float* __restrict__ x, std::int64_t n, std::uint64_t seed,
                                   std::uint64_t stream, float mean, float stddev,
                                   std::uint64_t index_offset) {
  for (std::int64_t i = global_index(); i < n; i += grid_stride()) {
    const float z = philox_normal(seed, stream, index_offset + static_cast<std::uint64_t>(i));
    x[i] = mul_then_add(stddev, z, mean);
  }
}

}  // namespace

void fill(const Context& ctx, float* x, float value, std::int64_t n) {
  check_sizes("fill", n);
  if (n == 0) return;
  fill_kernel<<<grid_for(n), kBlock, 0, stream_of(ctx)>>>(x, value, n);
  RM_CUDA_CHECK_LAUNCH("fill_kernel");
}

void axpy(const Context& ctx, float alpha, const float* x, float* y, std::int64_t n) {
  check_sizes("axpy", n);
  if (n == 0) return;
  axpy_kernel<<<grid_for(n), kBlock, 0, stream_of(ctx)>>>(alpha, x, y, n);
  RM_CUDA_CHECK_LAUNCH("axpy_kernel");
}

void scale(const Context& ctx, float* x, float alpha, std::int64_t n) {
  check_sizes("scale", n);
  if (n == 0) return;
  scale_kernel<<<grid_for(n), kBlock, 0, stream_of(ctx)>>>(x, alpha, n);
  RM_CUDA_CHECK_LAUNCH("scale_kernel");
}

void add(const Context& ctx, const float* a, const float* b, float* y, std::int64_t n) {
  check_sizes("add", n);
  if (n == 0) return;
  add_kernel<<<grid_for(n), kBlock, 0, stream_of(ctx)>>>(a, b, y, n);
  RM_CUDA_CHECK_LAUNCH("add_kernel");
}

void sum_rows(const Context& ctx, const float* x, float* out, std::int64_t rows,
              std::int64_t cols) {
  check_sizes("sum_rows", rows, cols);
  if (rows == 0 || cols == 0) return;
  const std::int64_t tiles = (cols + kColTile - 1) / kColTile;
  const dim3 grid(static_cast<unsigned>(std::min<std::int64_t>(tiles, kMaxGrid)));
  const dim3 block(kColTile, kRowLanes);
  sum_rows_kernel<<<grid, block, 0, stream_of(ctx)>>>(x, out, rows, cols);
  RM_CUDA_CHECK_LAUNCH("sum_rows_kernel");
}

double sum_squares(const Context& ctx, const float* x, std::int64_t n) {
  check_sizes("sum_squares", n);
  if (n == 0) return 0.0;
  constexpr int kMaxPartials = 1024;
  const std::int64_t blocks64 = std::min<std::int64_t>((n + kBlock - 1) / kBlock, kMaxPartials);
  const int blocks = static_cast<int>(blocks64);
  const cudaStream_t stream = stream_of(ctx);
  StreamScratch scratch(static_cast<std::size_t>(blocks + 1) * sizeof(double), stream);
  double* partial = scratch.as<double>();
  sum_squares_partial_kernel<<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(x, n, partial);
  RM_CUDA_CHECK_LAUNCH("sum_squares_partial_kernel");
  sum_partials_kernel<<<1, kBlock, 0, stream>>>(partial, blocks, partial + blocks);
  RM_CUDA_CHECK_LAUNCH("sum_partials_kernel");
  double result = 0.0;
  RM_CUDA_CHECK(
      cudaMemcpyAsync(&result, partial + blocks, sizeof(double), cudaMemcpyDeviceToHost, stream));
  RM_CUDA_CHECK(cudaStreamSynchronize(stream));
  return result;
}

// The fills run on the legacy default stream and wait for the whole device afterwards, so the
// values are in place for any stream when they return. They do NOT wait for work queued earlier on
// a non-blocking Context stream: the caller must not fill memory that such work still uses.
void fill_uniform(float* x, std::int64_t n, std::uint64_t seed, std::uint64_t stream, float lo,
                  float hi, std::uint64_t index_offset) {
  check_sizes("fill_uniform", n);
  if (n == 0) return;
  fill_uniform_kernel<<<grid_for(n), kBlock>>>(x, n, seed, stream, lo, hi, index_offset);
  RM_CUDA_CHECK_LAUNCH("fill_uniform_kernel");
  RM_CUDA_CHECK(cudaDeviceSynchronize());
}

void fill_normal(float* x, std::int64_t n, std::uint64_t seed, std::uint64_t stream, float mean,
                 float std, std::uint64_t index_offset) {
  check_sizes("fill_normal", n);
  if (n == 0) return;
  fill_normal_kernel<<<grid_for(n), kBlock>>>(x, n, seed, stream, mean, std, index_offset);
  RM_CUDA_CHECK_LAUNCH("fill_normal_kernel");
  RM_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace routemoe::cuda
