// CPU neural-network kernels: softmax, layernorm, GELU, cross-entropy, AdamW, and the row
// gather/scatter used for the embedding lookup and the token permutation. See kernels.h for the
// contract of each.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "framework/cpu/check_sizes.h"
#include "framework/cpu/detail.h"
#include "framework/cpu/kernels.h"
#include "framework/error.h"

namespace routemoe::cpu {

namespace {

// Row-parallel loops go parallel above this many elements.
constexpr std::int64_t kParallelElems = 16384;
// Scatter-style accumulations run in parallel over blocks of this many columns; every element
// of the destination is owned by one thread and accumulated in increasing source index.
constexpr std::int64_t kColBlock = 64;

// Throws Error(Data) unless every idx[i], i < n, lies in [0, bound) (or is `allowed`).
void check_indices(const char* kernel, const char* name, const std::int32_t* idx, std::int64_t n,
                   std::int64_t bound, std::int32_t allowed = 0) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int32_t v = idx[i];
    if (v == allowed && allowed < 0) continue;
    RM_CHECK_KIND(Data, v >= 0 && v < bound,
                  fmt::format("{}: {}[{}] = {} is outside [0, {})", kernel, name, i, v, bound));
  }
}

// dst[idx[i], :] += (w ? w[i] : 1) * src[i, :] for i = 0, 1, ..., m-1 in that order, for each
// column; parallel over column blocks so that the result does not depend on the thread count.
template <typename T>
void scatter_accumulate(const T* src, const std::int32_t* idx, const T* w, T* dst, std::int64_t m,
                        std::int64_t d) {
  if (m <= 0 || d <= 0) return;
  const std::int64_t blocks = (d + kColBlock - 1) / kColBlock;
#pragma omp parallel for if (m * d > kParallelElems && blocks > 1)
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::int64_t j0 = blk * kColBlock;
    const std::int64_t j1 = std::min(d, j0 + kColBlock);
    for (std::int64_t i = 0; i < m; ++i) {
      const T* s = src + i * d;
      T* o = dst + static_cast<std::int64_t>(idx[i]) * d;
      if (w != nullptr) {
        const T wi = w[i];
        for (std::int64_t j = j0; j < j1; ++j) o[j] += wi * s[j];
      } else {
        for (std::int64_t j = j0; j < j1; ++j) o[j] += s[j];
      }
    }
  }
}

// Maximum of a row; NaN propagates (a NaN anywhere gives NaN).
template <typename T>
T row_max(const T* x, std::int64_t cols) {
  T mx = -std::numeric_limits<T>::infinity();
  for (std::int64_t j = 0; j < cols; ++j) {
    if (std::isnan(x[j])) return x[j];
    if (x[j] > mx) mx = x[j];
  }
  return mx;
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// Softmax

template <typename T>
void softmax_forward(const T* x, T* y, std::int64_t rows, std::int64_t cols) {
  detail::check_sizes("softmax_forward", {{"rows", rows}, {"cols", cols}});
  if (rows <= 0 || cols <= 0) return;
#pragma omp parallel for if (rows * cols > kParallelElems)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const T mx = row_max(xr, cols);
    if (mx == -std::numeric_limits<T>::infinity()) {
      for (std::int64_t j = 0; j < cols; ++j) yr[j] = T(0);
      continue;
    }
    double sum = 0.0;
    for (std::int64_t j = 0; j < cols; ++j) {
      const T e = std::exp(xr[j] - mx);
      yr[j] = e;
      sum += static_cast<double>(e);
    }
    const double inv = 1.0 / sum;
    for (std::int64_t j = 0; j < cols; ++j)
      yr[j] = static_cast<T>(static_cast<double>(yr[j]) * inv);
  }
}

template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, std::int64_t rows, std::int64_t cols) {
  detail::check_sizes("softmax_backward", {{"rows", rows}, {"cols", cols}});
  if (rows <= 0 || cols <= 0) return;
#pragma omp parallel for if (rows * cols > kParallelElems)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* yr = y + r * cols;
    const T* dyr = dy + r * cols;
    T* dxr = dx + r * cols;
    double dot = 0.0;
    for (std::int64_t j = 0; j < cols; ++j) {
      dot += static_cast<double>(dyr[j]) * static_cast<double>(yr[j]);
    }
    const T d = static_cast<T>(dot);
    for (std::int64_t j = 0; j < cols; ++j) dxr[j] = yr[j] * (dyr[j] - d);
  }
}

// ----------------------------------------------------------------------------------------------
// LayerNorm. Per row: the mean, the biased variance and the normalised output in double; the
// row sums are vectorised (a fixed lane order, so the result depends on the ISA the loop runs
// with, never on the thread count).

namespace {

template <typename T>
[[gnu::always_inline]] inline void layernorm_row(const T* xr, const T* gamma, const T* beta, T* yr,
                                                 T* mean, T* rstd, std::int64_t cols, T eps) {
  double mu = 0.0;
#pragma omp simd reduction(+ : mu)
  for (std::int64_t j = 0; j < cols; ++j) mu += static_cast<double>(xr[j]);
  mu = cols > 0 ? mu / static_cast<double>(cols) : 0.0;
  double var = 0.0;
#pragma omp simd reduction(+ : var)
  for (std::int64_t j = 0; j < cols; ++j) {
    const double c = static_cast<double>(xr[j]) - mu;
    var += c * c;
  }
  var = cols > 0 ? var / static_cast<double>(cols) : 0.0;
  const double rs = 1.0 / std::sqrt(var + static_cast<double>(eps));
#pragma omp simd
  for (std::int64_t j = 0; j < cols; ++j) {
    const double xhat = (static_cast<double>(xr[j]) - mu) * rs;
    yr[j] = static_cast<T>(xhat * static_cast<double>(gamma[j]) + static_cast<double>(beta[j]));
  }
  if (mean != nullptr) *mean = static_cast<T>(mu);
  if (rstd != nullptr) *rstd = static_cast<T>(rs);
}

RM_SIMD_CLONES void layernorm_row_f32(const float* xr, const float* gamma, const float* beta,
                                      float* yr, float* mean, float* rstd, std::int64_t cols,
                                      float eps) {
  layernorm_row(xr, gamma, beta, yr, mean, rstd, cols, eps);
}

// dx of one row.
template <typename T>
[[gnu::always_inline]] inline void layernorm_dx_row(const T* dyr, const T* xr, const T* gamma,
                                                    double mu, double rs, T* dxr,
                                                    std::int64_t cols) {
  double sum_g = 0.0;
  double sum_gx = 0.0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
  for (std::int64_t j = 0; j < cols; ++j) {
    const double g = static_cast<double>(dyr[j]) * static_cast<double>(gamma[j]);
    const double xhat = (static_cast<double>(xr[j]) - mu) * rs;
    sum_g += g;
    sum_gx += g * xhat;
  }
  const double mean_g = sum_g / static_cast<double>(cols);
  const double mean_gx = sum_gx / static_cast<double>(cols);
#pragma omp simd
  for (std::int64_t j = 0; j < cols; ++j) {
    const double g = static_cast<double>(dyr[j]) * static_cast<double>(gamma[j]);
    const double xhat = (static_cast<double>(xr[j]) - mu) * rs;
    dxr[j] = static_cast<T>(rs * (g - mean_g - xhat * mean_gx));
  }
}

RM_SIMD_CLONES void layernorm_dx_row_f32(const float* dyr, const float* xr, const float* gamma,
                                         double mu, double rs, float* dxr, std::int64_t cols) {
  layernorm_dx_row(dyr, xr, gamma, mu, rs, dxr, cols);
}

}  // namespace

template <typename T>
void layernorm_forward(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd,
                       std::int64_t rows, std::int64_t cols, T eps) {
  detail::check_sizes("layernorm_forward", {{"rows", rows}, {"cols", cols}});
  if (rows <= 0) return;
  // A null gamma (beta) is ones (zeros): the same loop with explicit arrays, so that the results
  // are bitwise those of passing ones (zeros).
  std::vector<T> ones, zeros;
  if (gamma == nullptr)
    gamma = (ones = std::vector<T>(static_cast<std::size_t>(cols), T(1))).data();
  if (beta == nullptr) beta = (zeros = std::vector<T>(static_cast<std::size_t>(cols), T(0))).data();
#pragma omp parallel for if (rows * cols > kParallelElems)
  for (std::int64_t r = 0; r < rows; ++r) {
    T* mr = mean != nullptr ? mean + r : nullptr;
    T* sr = rstd != nullptr ? rstd + r : nullptr;
    if constexpr (std::is_same_v<T, float>) {
      layernorm_row_f32(x + r * cols, gamma, beta, y + r * cols, mr, sr, cols, eps);
    } else {
      layernorm_row(x + r * cols, gamma, beta, y + r * cols, mr, sr, cols, eps);
    }
  }
}

template <typename T>
void layernorm_backward(const T* dy, const T* x, const T* gamma, const T* mean, const T* rstd,
                        T* dx, T* dgamma, T* dbeta, std::int64_t rows, std::int64_t cols) {
  detail::check_sizes("layernorm_backward", {{"rows", rows}, {"cols", cols}});
  if (rows <= 0 || cols <= 0) return;
  if (dx != nullptr) {
    std::vector<T> ones;
    if (gamma == nullptr) {
      gamma = (ones = std::vector<T>(static_cast<std::size_t>(cols), T(1))).data();
    }
#pragma omp parallel for if (rows * cols > kParallelElems)
    for (std::int64_t r = 0; r < rows; ++r) {
      const double mu = static_cast<double>(mean[r]);
      const double rs = static_cast<double>(rstd[r]);
      if constexpr (std::is_same_v<T, float>) {
        layernorm_dx_row_f32(dy + r * cols, x + r * cols, gamma, mu, rs, dx + r * cols, cols);
      } else {
        layernorm_dx_row(dy + r * cols, x + r * cols, gamma, mu, rs, dx + r * cols, cols);
      }
    }
  }
  if (dgamma == nullptr && dbeta == nullptr) return;
  // Column sums over the rows, each column summed in increasing row order by one thread.
  const std::int64_t blocks = (cols + kColBlock - 1) / kColBlock;
#pragma omp parallel for if (rows * cols > kParallelElems && blocks > 1)
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::int64_t j0 = blk * kColBlock;
    const std::int64_t j1 = std::min(cols, j0 + kColBlock);
    double acc_g[kColBlock] = {};
    double acc_b[kColBlock] = {};
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* dyr = dy + r * cols;
      const T* xr = x + r * cols;
      const double mu = static_cast<double>(mean[r]);
      const double rs = static_cast<double>(rstd[r]);
#pragma omp simd
      for (std::int64_t j = j0; j < j1; ++j) {
        const double d = static_cast<double>(dyr[j]);
        acc_g[j - j0] += d * ((static_cast<double>(xr[j]) - mu) * rs);
        acc_b[j - j0] += d;
      }
    }
    for (std::int64_t j = j0; j < j1; ++j) {
      if (dgamma != nullptr) dgamma[j] += static_cast<T>(acc_g[j - j0]);
      if (dbeta != nullptr) dbeta[j] += static_cast<T>(acc_b[j - j0]);
    }
  }
}

// ----------------------------------------------------------------------------------------------
// GELU (tanh form), through detail::gelu_value / gelu_sigmoid / gelu_slope (detail.h)

namespace {

// Elements per parallel chunk of the GELU loops.
constexpr std::int64_t kGeluChunk = 4096;

RM_SIMD_CLONES void gelu_forward_f32(const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = detail::gelu_value(x[i]);
}
RM_SIMD_CLONES void gelu_backward_f32(const float* x, const float* dy, float* dx, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    dx[i] = dy[i] * detail::gelu_slope(v, detail::gelu_sigmoid(v));
  }
}

}  // namespace

template <typename T>
void gelu_forward(const T* x, T* y, std::int64_t n) {
  detail::check_sizes("gelu_forward", {{"n", n}});
#pragma omp parallel for if (n > kParallelElems)
  for (std::int64_t c = 0; c < n; c += kGeluChunk) {
    const std::int64_t e = std::min(n, c + kGeluChunk);
    if constexpr (std::is_same_v<T, float>) {
      gelu_forward_f32(x + c, y + c, e - c);
    } else {
      for (std::int64_t i = c; i < e; ++i) y[i] = detail::gelu_value(x[i]);
    }
  }
}

template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, std::int64_t n) {
  detail::check_sizes("gelu_backward", {{"n", n}});
#pragma omp parallel for if (n > kParallelElems)
  for (std::int64_t c = 0; c < n; c += kGeluChunk) {
    const std::int64_t e = std::min(n, c + kGeluChunk);
    if constexpr (std::is_same_v<T, float>) {
      gelu_backward_f32(x + c, dy + c, dx + c, e - c);
    } else {
      for (std::int64_t i = c; i < e; ++i) {
        dx[i] = dy[i] * detail::gelu_slope(x[i], detail::gelu_sigmoid(x[i]));
      }
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Cross-entropy

template <typename T>
void cross_entropy_forward(const T* logits, const std::int32_t* targets, T* losses, T* lse,
                           std::int64_t n, std::int64_t v) {
  detail::check_sizes("cross_entropy_forward", {{"n", n}, {"v", v}});
  if (n <= 0) return;
  check_indices("cross_entropy_forward", "targets", targets, n, v, -1);
#pragma omp parallel for if (n * v > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) {
    const T* row = logits + i * v;
    const T mx = row_max(row, v);
    double l;
    if (mx == -std::numeric_limits<T>::infinity()) {
      l = -std::numeric_limits<double>::infinity();
    } else {
      double sum = 0.0;
      for (std::int64_t j = 0; j < v; ++j) sum += std::exp(static_cast<double>(row[j] - mx));
      l = static_cast<double>(mx) + std::log(sum);
    }
    if (lse != nullptr) lse[i] = static_cast<T>(l);
    const std::int32_t t = targets[i];
    losses[i] = t < 0 ? T(0) : static_cast<T>(l - static_cast<double>(row[t]));
  }
}

template <typename T>
void cross_entropy_backward(const T* logits, const std::int32_t* targets, const T* lse,
                            const T* dloss, T* dlogits, std::int64_t n, std::int64_t v) {
  detail::check_sizes("cross_entropy_backward", {{"n", n}, {"v", v}});
  if (n <= 0 || v <= 0) return;
  check_indices("cross_entropy_backward", "targets", targets, n, v, -1);
#pragma omp parallel for if (n * v > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) {
    const T* row = logits + i * v;
    T* drow = dlogits + i * v;
    const std::int32_t t = targets[i];
    if (t < 0) {
      for (std::int64_t j = 0; j < v; ++j) drow[j] = T(0);
      continue;
    }
    const double l = static_cast<double>(lse[i]);
    const double g = static_cast<double>(dloss[i]);
    for (std::int64_t j = 0; j < v; ++j) {
      const double p = std::exp(static_cast<double>(row[j]) - l);
      drow[j] = static_cast<T>(g * (j == t ? p - 1.0 : p));
    }
  }
}

// ----------------------------------------------------------------------------------------------
// AdamW (in double per element; vectorised)

namespace {

struct AdamWConsts {
  double b1, b2, bc1, bc2, lr, eps, wd;
};

template <typename T>
[[gnu::always_inline]] inline void adamw_chunk(T* param, const T* grad, T* m, T* v, std::int64_t n,
                                               const AdamWConsts& k) {
  const double b1 = k.b1, b2 = k.b2, bc1 = k.bc1, bc2 = k.bc2, lr = k.lr, eps = k.eps, wd = k.wd;
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(grad[i]);
    const double mi = b1 * static_cast<double>(m[i]) + (1.0 - b1) * g;
    const double vi = b2 * static_cast<double>(v[i]) + (1.0 - b2) * g * g;
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    const double p = static_cast<double>(param[i]);
    const double upd = (mi / bc1) / (std::sqrt(vi / bc2) + eps) + wd * p;
    param[i] = static_cast<T>(p - lr * upd);
  }
}

RM_SIMD_CLONES void adamw_chunk_f32(float* param, const float* grad, float* m, float* v,
                                    std::int64_t n, const AdamWConsts& k) {
  adamw_chunk(param, grad, m, v, n, k);
}

constexpr std::int64_t kAdamChunk = 8192;

}  // namespace

template <typename T>
void adamw_update(T* param, const T* grad, T* m, T* v, std::int64_t n, const AdamWHyper& h) {
  detail::check_sizes("adamw_update", {{"n", n}});
  if (n <= 0) return;
  RM_CHECK_KIND(Config, h.step >= 1,
                fmt::format("adamw_update: step = {} must be at least 1", h.step));
  const AdamWConsts k{h.beta1,
                      h.beta2,
                      1.0 - std::pow(h.beta1, static_cast<double>(h.step)),
                      1.0 - std::pow(h.beta2, static_cast<double>(h.step)),
                      h.lr,
                      h.eps,
                      h.weight_decay};
#pragma omp parallel for if (n > kParallelElems)
  for (std::int64_t c = 0; c < n; c += kAdamChunk) {
    const std::int64_t len = std::min(kAdamChunk, n - c);
    if constexpr (std::is_same_v<T, float>) {
      adamw_chunk_f32(param + c, grad + c, m + c, v + c, len, k);
    } else {
      adamw_chunk(param + c, grad + c, m + c, v + c, len, k);
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Row gather / scatter

template <typename T>
void gather_rows_forward(const T* src, const std::int32_t* idx, T* dst, std::int64_t m,
                         std::int64_t n, std::int64_t d) {
  detail::check_sizes("gather_rows_forward", {{"m", m}, {"n", n}, {"d", d}});
  if (m <= 0) return;
  check_indices("gather_rows_forward", "idx", idx, m, n);
  if (d <= 0) return;
#pragma omp parallel for if (m * d > kParallelElems)
  for (std::int64_t i = 0; i < m; ++i) {
    std::copy_n(src + static_cast<std::int64_t>(idx[i]) * d, d, dst + i * d);
  }
}

template <typename T>
void gather_rows_backward(const T* ddst, const std::int32_t* idx, T* dsrc, std::int64_t m,
                          std::int64_t n, std::int64_t d) {
  detail::check_sizes("gather_rows_backward", {{"m", m}, {"n", n}, {"d", d}});
  if (m <= 0) return;
  check_indices("gather_rows_backward", "idx", idx, m, n);
  scatter_accumulate<T>(ddst, idx, nullptr, dsrc, m, d);
}

template <typename T>
void scatter_add_rows_forward(const T* src, const std::int32_t* idx, const T* w, T* dst,
                              std::int64_t m, std::int64_t n, std::int64_t d) {
  detail::check_sizes("scatter_add_rows_forward", {{"m", m}, {"n", n}, {"d", d}});
  if (m <= 0) return;
  check_indices("scatter_add_rows_forward", "idx", idx, m, n);
  scatter_accumulate<T>(src, idx, w, dst, m, d);
}

template <typename T>
void scatter_add_rows_backward(const T* ddst, const std::int32_t* idx, const T* src, const T* w,
                               T* dsrc, T* dw, std::int64_t m, std::int64_t n, std::int64_t d) {
  detail::check_sizes("scatter_add_rows_backward", {{"m", m}, {"n", n}, {"d", d}});
  if (m <= 0) return;
  check_indices("scatter_add_rows_backward", "idx", idx, m, n);
  const bool want_dw = dw != nullptr && w != nullptr;
#pragma omp parallel for if (m * d > kParallelElems)
  for (std::int64_t i = 0; i < m; ++i) {
    const T* g = ddst + static_cast<std::int64_t>(idx[i]) * d;
    if (dsrc != nullptr) {
      T* o = dsrc + i * d;
      if (w != nullptr) {
        const T wi = w[i];
        for (std::int64_t j = 0; j < d; ++j) o[j] = wi * g[j];
      } else {
        for (std::int64_t j = 0; j < d; ++j) o[j] = g[j];
      }
    }
    if (want_dw) {
      const T* s = src + i * d;
      double dot = 0.0;
      for (std::int64_t j = 0; j < d; ++j) {
        dot += static_cast<double>(g[j]) * static_cast<double>(s[j]);
      }
      dw[i] = static_cast<T>(dot);
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Explicit instantiations

#define ROUTEMOE_INSTANTIATE_NN(T)                                                               \
  template void softmax_forward<T>(const T*, T*, std::int64_t, std::int64_t);                    \
  template void softmax_backward<T>(const T*, const T*, T*, std::int64_t, std::int64_t);         \
  template void layernorm_forward<T>(const T*, const T*, const T*, T*, T*, T*, std::int64_t,     \
                                     std::int64_t, T);                                           \
  template void layernorm_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*,  \
                                      T*, std::int64_t, std::int64_t);                           \
  template void gelu_forward<T>(const T*, T*, std::int64_t);                                     \
  template void gelu_backward<T>(const T*, const T*, T*, std::int64_t);                          \
  template void cross_entropy_forward<T>(const T*, const std::int32_t*, T*, T*, std::int64_t,    \
                                         std::int64_t);                                          \
  template void cross_entropy_backward<T>(const T*, const std::int32_t*, const T*, const T*, T*, \
                                          std::int64_t, std::int64_t);                           \
  template void adamw_update<T>(T*, const T*, T*, T*, std::int64_t, const AdamWHyper&);          \
  template void gather_rows_forward<T>(const T*, const std::int32_t*, T*, std::int64_t,          \
                                       std::int64_t, std::int64_t);                              \
  template void gather_rows_backward<T>(const T*, const std::int32_t*, T*, std::int64_t,         \
                                        std::int64_t, std::int64_t);                             \
  template void scatter_add_rows_forward<T>(const T*, const std::int32_t*, const T*, T*,         \
                                            std::int64_t, std::int64_t, std::int64_t);           \
  template void scatter_add_rows_backward<T>(const T*, const std::int32_t*, const T*, const T*,  \
                                             T*, T*, std::int64_t, std::int64_t, std::int64_t);

ROUTEMOE_INSTANTIATE_NN(float)
ROUTEMOE_INSTANTIATE_NN(double)

#undef ROUTEMOE_INSTANTIATE_NN

}  // namespace routemoe::cpu
