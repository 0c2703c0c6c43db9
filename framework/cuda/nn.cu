// CUDA twins of the neural-network kernels of framework/cpu/kernels.h (fp32 only).
//
// Numerics
// - Row reductions (softmax, layernorm, cross-entropy, the dw dot product of scatter_add_rows)
//   use one thread block per row (grid-stride over rows), fp32 accumulation, each thread summing
//   a strided share of the row and the block combining the partial sums through warp shuffles.
//   No double and no Kahan summation: the rounding error is at most about cols * 2^-24 times the
//   sum of the magnitudes of the terms (the CPU kernels accumulate in double, so this bound is
//   also the CPU/GPU difference that tests/kernels (gpu_parity) allows). The summation order
//   is fixed, so these kernels are deterministic.
// - Row maxima propagate NaN (like the CPU's row_max): a row with a NaN gives NaN outputs.
// - Column reductions (layernorm dgamma/dbeta) use a fixed-order tile reduction: deterministic.
// - Scatters with possibly repeated indices (gather_rows_backward, scatter_add_rows_forward) use
//   atomicAdd: the order of the additions into one element is not fixed, so results may differ
//   between runs in the last bits (the CPU kernels are deterministic and add in increasing index
//   order).
// - Transcendentals are the accurate CUDA versions (expf, logf, tanhf, sqrtf; no fast-math).

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "framework/cuda/check.h"
#include "framework/cuda/kernels.h"
#include "framework/cuda/launch.cuh"

namespace routemoe::cuda {

namespace {

using namespace detail;  // launch helpers (launch.cuh)

// One block per row (grid-stride over rows beyond kMaxGrid).
unsigned row_grid(std::int64_t rows) {
  return static_cast<unsigned>(std::clamp<std::int64_t>(rows, 1, kMaxGrid));
}

// Threads per row block: a multiple of 32, enough to cover short rows without idle warps.
int row_block(std::int64_t cols) {
  if (cols <= 32) return 32;
  if (cols <= 64) return 64;
  if (cols <= 128) return 128;
  if (cols <= 4096) return 256;
  return 512;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}
// Maximum that propagates NaN (fmaxf would drop it).
__device__ __forceinline__ float nan_max(float a, float b) {
  return (isnan(a) || a > b) ? a : b;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = nan_max(v, __shfl_down_sync(0xffffffffu, v, off));
  return v;
}

// Block-wide reductions (blockDim.x a multiple of 32, at most 1024). Every thread of the block
// must call them; every thread gets the result. They end with a barrier, so they may be called
// back to back.
__device__ float block_sum(float v) {
  __shared__ float part[32];
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0f;
  if (warp == 0) {
    v = warp_sum(v);
    if (lane == 0) part[0] = v;
  }
  __syncthreads();
  v = part[0];
  __syncthreads();
  return v;
}

__device__ float block_max(float v) {
  __shared__ float part[32];
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : -INFINITY;
  if (warp == 0) {
    v = warp_max(v);
    if (lane == 0) part[0] = v;
  }
  __syncthreads();
  v = part[0];
  __syncthreads();
  return v;
}

// ---------------------------------------------------------------------------------------------
// Softmax

__global__ void softmax_forward_kernel(const float* x, float* y, std::int64_t rows,
                                       std::int64_t cols) {
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    float m = -INFINITY;
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = nan_max(m, xr[c]);
    m = block_max(m);
    if (m == -INFINITY) {  // entirely -inf (uniform over the block): all zeros
      for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = 0.0f;
      continue;
    }
    float s = 0.0f;
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float e = expf(xr[c] - m);  // exp(-inf) == 0 exactly
      yr[c] = e;
      s += e;
    }
    s = block_sum(s);
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = yr[c] / s;
  }
}

// dx may alias dy: each element is read and then written by the same thread, after the
// block-wide dot product is complete.
__global__ void softmax_backward_kernel(const float* y, const float* dy, float* dx,
                                        std::int64_t rows, std::int64_t cols) {
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* yr = y + r * cols;
    const float* dyr = dy + r * cols;
    float* dxr = dx + r * cols;
    float dot = 0.0f;
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) dot += dyr[c] * yr[c];
    dot = block_sum(dot);
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      dxr[c] = yr[c] * (dyr[c] - dot);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm (two-pass mean and biased variance; gamma/beta null are treated as 1/0, mean/rstd
// null are not saved). The forward may run in place (y == x): x and y are not __restrict__.

__global__ void layernorm_forward_kernel(const float* x, const float* __restrict__ gamma,
                                         const float* __restrict__ beta, float* y,
                                         float* __restrict__ mean, float* __restrict__ rstd,
                                         std::int64_t rows, std::int64_t cols, float eps) {
  const float fcols = static_cast<float>(cols);
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    float s = 0.0f;
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
    const float mu = cols > 0 ? block_sum(s) / fcols : 0.0f;  // cols is uniform
    float ss = 0.0f;
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float d = xr[c] - mu;
      ss += d * d;
    }
    const float var = cols > 0 ? block_sum(ss) / fcols : 0.0f;
    const float rs = 1.0f / sqrtf(var + eps);
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float g = gamma != nullptr ? gamma[c] : 1.0f;
      const float b = beta != nullptr ? beta[c] : 0.0f;
      yr[c] = (xr[c] - mu) * rs * g + b;
    }
    if (threadIdx.x == 0) {
      if (mean != nullptr) mean[r] = mu;
      if (rstd != nullptr) rstd[r] = rs;
    }
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma, xhat = (x - mean) * rstd.
__global__ void layernorm_backward_dx_kernel(const float* __restrict__ dy,
                                             const float* __restrict__ x,
                                             const float* __restrict__ gamma,
                                             const float* __restrict__ mean,
                                             const float* __restrict__ rstd, float* __restrict__ dx,
                                             std::int64_t rows, std::int64_t cols) {
  const float fcols = static_cast<float>(cols);
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* dyr = dy + r * cols;
    const float* xr = x + r * cols;
    float* dxr = dx + r * cols;
    const float mu = mean[r], rs = rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float g = dyr[c] * (gamma != nullptr ? gamma[c] : 1.0f);
      const float xhat = (xr[c] - mu) * rs;
      sg += g;
      sgx += g * xhat;
    }
    const float mean_g = block_sum(sg) / fcols;
    const float mean_gx = block_sum(sgx) / fcols;
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float g = dyr[c] * (gamma != nullptr ? gamma[c] : 1.0f);
      const float xhat = (xr[c] - mu) * rs;
      dxr[c] = rs * (g - mean_g - xhat * mean_gx);
    }
  }
}

// dgamma[c] += sum_r dy * xhat, dbeta[c] += sum_r dy: 32 columns per block (coalesced), 16 row
// lanes, fixed-order combination in shared memory (deterministic).
constexpr int kColTile = 32;
constexpr int kRowLanes = 16;

__global__ void layernorm_backward_params_kernel(
    const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ mean,
    const float* __restrict__ rstd, float* __restrict__ dgamma, float* __restrict__ dbeta,
    std::int64_t rows, std::int64_t cols) {
  __shared__ float part_g[kRowLanes][kColTile + 1];
  __shared__ float part_b[kRowLanes][kColTile + 1];
  for (std::int64_t c0 = static_cast<std::int64_t>(blockIdx.x) * kColTile; c0 < cols;
       c0 += static_cast<std::int64_t>(gridDim.x) * kColTile) {
    const std::int64_t c = c0 + threadIdx.x;
    float sg = 0.0f, sb = 0.0f;
    if (c < cols) {
      for (std::int64_t r = threadIdx.y; r < rows; r += kRowLanes) {
        const float d = dy[r * cols + c];
        sg += d * ((x[r * cols + c] - mean[r]) * rstd[r]);
        sb += d;
      }
    }
    part_g[threadIdx.y][threadIdx.x] = sg;
    part_b[threadIdx.y][threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
      float tg = 0.0f, tb = 0.0f;
      for (int k = 0; k < kRowLanes; ++k) {
        tg += part_g[k][threadIdx.x];
        tb += part_b[k][threadIdx.x];
      }
      if (dgamma != nullptr) dgamma[c] += tg;
      if (dbeta != nullptr) dbeta[c] += tb;
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// GELU (tanh form)

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;

__global__ void gelu_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                    std::int64_t n) {
  for (std::int64_t i = global_index(); i < n; i += grid_stride()) {
    const float v = x[i];
    const float t = tanhf(kSqrt2OverPi * (v + kGeluC * v * v * v));
    y[i] = 0.5f * v * (1.0f + t);
  }
}

// dx may alias dy (same element read then written by one thread).
__global__ void gelu_backward_kernel(const float* x, const float* dy, float* dx, std::int64_t n) {
  for (std::int64_t i = global_index(); i < n; i += grid_stride()) {
    const float v = x[i];
    const float t = tanhf(kSqrt2OverPi * (v + kGeluC * v * v * v));
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluC * v * v);
    const float grad = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
    dx[i] = dy[i] * grad;
  }
}

// ---------------------------------------------------------------------------------------------
// Row gathers and scatters (embedding, token permutation)

// dst[i, :] = src[idx[i], :] for i < m (gather_rows_forward, also the embedding lookup).
__global__ void gather_rows_kernel(const float* __restrict__ src,
                                   const std::int32_t* __restrict__ idx, float* __restrict__ dst,
                                   std::int64_t m, std::int64_t d) {
  const std::int64_t total = m * d;
  for (std::int64_t e = global_index(); e < total; e += grid_stride()) {
    const std::int64_t i = e / d, j = e - i * d;
    dst[e] = src[static_cast<std::int64_t>(idx[i]) * d + j];
  }
}

// dst[idx[i], :] += w[i] * src[i, :] (w null: 1) with atomicAdd: repeated indices are summed in
// an unspecified order (non-deterministic in the last bits). Used by gather_rows_backward and
// scatter_add_rows_forward.
__global__ void scatter_add_rows_kernel(const float* __restrict__ src,
                                        const std::int32_t* __restrict__ idx,
                                        const float* __restrict__ w, float* dst, std::int64_t m,
                                        std::int64_t d) {
  const std::int64_t total = m * d;
  for (std::int64_t e = global_index(); e < total; e += grid_stride()) {
    const std::int64_t i = e / d, j = e - i * d;
    const float v = w != nullptr ? w[i] * src[e] : src[e];
    atomicAdd(dst + static_cast<std::int64_t>(idx[i]) * d + j, v);
  }
}

// dsrc[i, :] = w[i] * ddst[idx[i], :] (skipped when dsrc is null);
// dw[i] = dot(ddst[idx[i], :], src[i, :]) when want_dw.
__global__ void scatter_add_rows_backward_kernel(const float* __restrict__ ddst,
                                                 const std::int32_t* __restrict__ idx,
                                                 const float* __restrict__ src,
                                                 const float* __restrict__ w, float* dsrc,
                                                 float* dw, std::int64_t m, std::int64_t d,
                                                 bool want_dw) {
  for (std::int64_t i = blockIdx.x; i < m; i += gridDim.x) {
    const float* g = ddst + static_cast<std::int64_t>(idx[i]) * d;
    const float wi = w != nullptr ? w[i] : 1.0f;
    float dot = 0.0f;
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float gj = g[j];
      if (dsrc != nullptr) dsrc[i * d + j] = wi * gj;
      if (want_dw) dot += gj * src[i * d + j];
    }
    if (want_dw) {  // uniform over the block
      dot = block_sum(dot);
      if (threadIdx.x == 0) dw[i] = dot;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

__global__ void cross_entropy_forward_kernel(const float* __restrict__ logits,
                                             const std::int32_t* __restrict__ targets,
                                             float* __restrict__ losses, float* __restrict__ lse,
                                             std::int64_t n, std::int64_t v) {
  for (std::int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const float* xr = logits + r * v;
    float m = -INFINITY;
    for (std::int64_t c = threadIdx.x; c < v; c += blockDim.x) m = nan_max(m, xr[c]);
    m = block_max(m);
    float s = 0.0f;
    if (m != -INFINITY) {
      for (std::int64_t c = threadIdx.x; c < v; c += blockDim.x) s += expf(xr[c] - m);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) {
      const float l = m == -INFINITY ? -INFINITY : m + logf(s);
      if (lse != nullptr) lse[r] = l;
      const std::int32_t t = targets[r];
      // Negative target (-1): ignored. A target >= v is invalid (the CPU kernel throws); it gives
      // NaN here rather than reading out of bounds.
      losses[r] = t < 0 ? 0.0f : (t < v ? l - xr[t] : NAN);
    }
  }
}

__global__ void cross_entropy_backward_kernel(const float* __restrict__ logits,
                                              const std::int32_t* __restrict__ targets,
                                              const float* __restrict__ lse,
                                              const float* __restrict__ dloss,
                                              float* __restrict__ dlogits, std::int64_t n,
                                              std::int64_t v) {
  const std::int64_t total = n * v;
  for (std::int64_t e = global_index(); e < total; e += grid_stride()) {
    const std::int64_t r = e / v, c = e - r * v;
    const std::int32_t t = targets[r];
    if (t < 0) {
      dlogits[e] = 0.0f;
      continue;
    }
    const float p = expf(logits[e] - lse[r]);
    dlogits[e] = dloss[r] * (c == t ? p - 1.0f : p);
  }
}

// ---------------------------------------------------------------------------------------------
// AdamW: fp32 per element; the bias corrections are computed once in double on the host.

__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad,
                             float* __restrict__ m, float* __restrict__ v, std::int64_t n, float lr,
                             float beta1, float beta2, float one_minus_beta1, float one_minus_beta2,
                             float eps, float weight_decay, float bc1, float bc2) {
  for (std::int64_t i = global_index(); i < n; i += grid_stride()) {
    const float g = grad[i];
    const float mi = beta1 * m[i] + one_minus_beta1 * g;
    const float vi = beta2 * v[i] + one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi / bc1;
    const float vhat = vi / bc2;
    const float p = param[i];
    param[i] = p - lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * p);
  }
}

}  // namespace

void softmax_forward(const Context& ctx, const float* x, float* y, std::int64_t rows,
                     std::int64_t cols) {
  check_sizes("softmax_forward", rows, cols);
  if (rows == 0 || cols == 0) return;
  softmax_forward_kernel<<<row_grid(rows), row_block(cols), 0, stream_of(ctx)>>>(x, y, rows, cols);
  RM_CUDA_CHECK_LAUNCH("softmax_forward_kernel");
}

void softmax_backward(const Context& ctx, const float* y, const float* dy, float* dx,
                      std::int64_t rows, std::int64_t cols) {
  check_sizes("softmax_backward", rows, cols);
  if (rows == 0 || cols == 0) return;
  softmax_backward_kernel<<<row_grid(rows), row_block(cols), 0, stream_of(ctx)>>>(y, dy, dx, rows,
                                                                                  cols);
  RM_CUDA_CHECK_LAUNCH("softmax_backward_kernel");
}

void layernorm_forward(const Context& ctx, const float* x, const float* gamma, const float* beta,
                       float* y, float* mean, float* rstd, std::int64_t rows, std::int64_t cols,
                       float eps) {
  check_sizes("layernorm_forward", rows, cols);
  // cols == 0 still writes mean = 0 and rstd = 1/sqrt(eps) per row, like the CPU kernel.
  if (rows == 0) return;
  layernorm_forward_kernel<<<row_grid(rows), row_block(cols), 0, stream_of(ctx)>>>(
      x, gamma, beta, y, mean, rstd, rows, cols, eps);
  RM_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

void layernorm_backward(const Context& ctx, const float* dy, const float* x, const float* gamma,
                        const float* mean, const float* rstd, float* dx, float* dgamma,
                        float* dbeta, std::int64_t rows, std::int64_t cols) {
  check_sizes("layernorm_backward", rows, cols);
  if (rows == 0 || cols == 0) return;
  const cudaStream_t stream = stream_of(ctx);
  if (dx != nullptr) {
    layernorm_backward_dx_kernel<<<row_grid(rows), row_block(cols), 0, stream>>>(
        dy, x, gamma, mean, rstd, dx, rows, cols);
    RM_CUDA_CHECK_LAUNCH("layernorm_backward_dx_kernel");
  }
  if (dgamma != nullptr || dbeta != nullptr) {
    const std::int64_t tiles = (cols + kColTile - 1) / kColTile;
    const dim3 grid(static_cast<unsigned>(std::min<std::int64_t>(tiles, kMaxGrid)));
    const dim3 block(kColTile, kRowLanes);
    layernorm_backward_params_kernel<<<grid, block, 0, stream>>>(dy, x, mean, rstd, dgamma, dbeta,
                                                                 rows, cols);
    RM_CUDA_CHECK_LAUNCH("layernorm_backward_params_kernel");
  }
}

void gelu_forward(const Context& ctx, const float* x, float* y, std::int64_t n) {
  check_sizes("gelu_forward", n);
  if (n == 0) return;
  gelu_forward_kernel<<<grid_for(n), kBlock, 0, stream_of(ctx)>>>(x, y, n);
  RM_CUDA_CHECK_LAUNCH("gelu_forward_kernel");
}

void gelu_backward(const Context& ctx, const float* x, const float* dy, float* dx, std::int64_t n) {
  check_sizes("gelu_backward", n);
  if (n == 0) return;
  gelu_backward_kernel<<<grid_for(n), kBlock, 0, stream_of(ctx)>>>(x, dy, dx, n);
  RM_CUDA_CHECK_LAUNCH("gelu_backward_kernel");
}

void cross_entropy_forward(const Context& ctx, const float* logits, const std::int32_t* targets,
                           float* losses, float* lse, std::int64_t n, std::int64_t v) {
  check_sizes("cross_entropy_forward", n, v);
  // v == 0 still writes lse = -inf and loss 0 (all targets must then be ignored), like the CPU.
  if (n == 0) return;
  cross_entropy_forward_kernel<<<row_grid(n), row_block(v), 0, stream_of(ctx)>>>(logits, targets,
                                                                                 losses, lse, n, v);
  RM_CUDA_CHECK_LAUNCH("cross_entropy_forward_kernel");
}

void cross_entropy_backward(const Context& ctx, const float* logits, const std::int32_t* targets,
                            const float* lse, const float* dloss, float* dlogits, std::int64_t n,
                            std::int64_t v) {
  check_sizes("cross_entropy_backward", n, v);
  if (n == 0 || v == 0) return;
  cross_entropy_backward_kernel<<<grid_for(n * v), kBlock, 0, stream_of(ctx)>>>(
      logits, targets, lse, dloss, dlogits, n, v);
  RM_CUDA_CHECK_LAUNCH("cross_entropy_backward_kernel");
}

void adamw_update(const Context& ctx, float* param, const float* grad, float* m, float* v,
                  std::int64_t n, const AdamWHyper& h) {
  check_sizes("adamw_update", n);
  if (n == 0) return;
  RM_CHECK(h.step >= 1, "adamw_update: step counts from 1");
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(h.step));
  adamw_kernel<<<grid_for(n), kBlock, 0, stream_of(ctx)>>>(
      param, grad, m, v, n, static_cast<float>(h.lr), static_cast<float>(h.beta1),
      static_cast<float>(h.beta2), static_cast<float>(1.0 - h.beta1),
      static_cast<float>(1.0 - h.beta2), static_cast<float>(h.eps),
      static_cast<float>(h.weight_decay), static_cast<float>(bc1), static_cast<float>(bc2));
  RM_CUDA_CHECK_LAUNCH("adamw_kernel");
}

void gather_rows_forward(const Context& ctx, const float* src, const std::int32_t* idx, float* dst,
                         std::int64_t m, std::int64_t n, std::int64_t d) {
  check_sizes("gather_rows_forward", m, n, d);
  if (m == 0 || d == 0) return;
  gather_rows_kernel<<<grid_for(m * d), kBlock, 0, stream_of(ctx)>>>(src, idx, dst, m, d);
  RM_CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

void gather_rows_backward(const Context& ctx, const float* ddst, const std::int32_t* idx,
                          float* dsrc, std::int64_t m, std::int64_t n, std::int64_t d) {
  check_sizes("gather_rows_backward", m, n, d);
  if (m == 0 || d == 0) return;
  scatter_add_rows_kernel<<<grid_for(m * d), kBlock, 0, stream_of(ctx)>>>(ddst, idx, nullptr, dsrc,
                                                                          m, d);
  RM_CUDA_CHECK_LAUNCH("scatter_add_rows_kernel (gather_rows_backward)");
}

void scatter_add_rows_forward(const Context& ctx, const float* src, const std::int32_t* idx,
                              const float* w, float* dst, std::int64_t m, std::int64_t n,
                              std::int64_t d) {
  check_sizes("scatter_add_rows_forward", m, n, d);
  if (m == 0 || d == 0) return;
  scatter_add_rows_kernel<<<grid_for(m * d), kBlock, 0, stream_of(ctx)>>>(src, idx, w, dst, m, d);
  RM_CUDA_CHECK_LAUNCH("scatter_add_rows_kernel");
}

void scatter_add_rows_backward(const Context& ctx, const float* ddst, const std::int32_t* idx,
                               const float* src, const float* w, float* dsrc, float* dw,
                               std::int64_t m, std::int64_t n, std::int64_t d) {
  check_sizes("scatter_add_rows_backward", m, n, d);
  if (m == 0) return;
  const bool want_dw = dw != nullptr && w != nullptr;
  if ((d == 0 || dsrc == nullptr) && !want_dw) return;
  scatter_add_rows_backward_kernel<<<row_grid(m), row_block(d), 0, stream_of(ctx)>>>(
      ddst, idx, src, w, dsrc, dw, m, d, want_dw);
  RM_CUDA_CHECK_LAUNCH("scatter_add_rows_backward_kernel");
}

}  // namespace routemoe::cuda
