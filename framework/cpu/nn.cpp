// CPU neural-network kernels: softmax, layernorm, GELU, cross-entropy, AdamW, and the row
// gather/scatter used for the embedding lookup and the token permutation. See kernels.h for the
// contract of each.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "framework/cpu/check_sizes.h"
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
// LayerNorm

template <typename T>
void layernorm_forward(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd,
                       std::int64_t rows, std::int64_t cols, T eps) {
  detail::check_sizes("layernorm_forward", {{"rows", rows}, {"cols", cols}});
  if (rows <= 0) return;
#pragma omp parallel for if (rows * cols > kParallelElems)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    double mu = 0.0;
    for (std::int64_t j = 0; j < cols; ++j) mu += static_cast<double>(xr[j]);
    mu = cols > 0 ? mu / static_cast<double>(cols) : 0.0;
    double var = 0.0;
    for (std::int64_t j = 0; j < cols; ++j) {
      const double c = static_cast<double>(xr[j]) - mu;
      var += c * c;
    }
    var = cols > 0 ? var / static_cast<double>(cols) : 0.0;
    const double rs = 1.0 / std::sqrt(var + static_cast<double>(eps));
    for (std::int64_t j = 0; j < cols; ++j) {
      const double xhat = (static_cast<double>(xr[j]) - mu) * rs;
      const double g = gamma != nullptr ? static_cast<double>(gamma[j]) : 1.0;
      const double b = beta != nullptr ? static_cast<double>(beta[j]) : 0.0;
      yr[j] = static_cast<T>(xhat * g + b);
    }
    if (mean != nullptr) mean[r] = static_cast<T>(mu);
    if (rstd != nullptr) rstd[r] = static_cast<T>(rs);
  }
}

template <typename T>
void layernorm_backward(const T* dy, const T* x, const T* gamma, const T* mean, const T* rstd,
                        T* dx, T* dgamma, T* dbeta, std::int64_t rows, std::int64_t cols) {
  detail::check_sizes("layernorm_backward", {{"rows", rows}, {"cols", cols}});
  if (rows <= 0 || cols <= 0) return;
  if (dx != nullptr) {
#pragma omp parallel for if (rows * cols > kParallelElems)
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* dyr = dy + r * cols;
      const T* xr = x + r * cols;
      T* dxr = dx + r * cols;
      const double mu = static_cast<double>(mean[r]);
      const double rs = static_cast<double>(rstd[r]);
      double sum_g = 0.0;
      double sum_gx = 0.0;
      for (std::int64_t j = 0; j < cols; ++j) {
        const double g =
            static_cast<double>(dyr[j]) * (gamma != nullptr ? static_cast<double>(gamma[j]) : 1.0);
        const double xhat = (static_cast<double>(xr[j]) - mu) * rs;
        sum_g += g;
        sum_gx += g * xhat;
      }
      const double mean_g = sum_g / static_cast<double>(cols);
      const double mean_gx = sum_gx / static_cast<double>(cols);
      for (std::int64_t j = 0; j < cols; ++j) {
        const double g =
            static_cast<double>(dyr[j]) * (gamma != nullptr ? static_cast<double>(gamma[j]) : 1.0);
        const double xhat = (static_cast<double>(xr[j]) - mu) * rs;
        dxr[j] = static_cast<T>(rs * (g - mean_g - xhat * mean_gx));
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
// GELU (tanh form)

namespace {
constexpr double kSqrt2OverPi = 0.79788456080286535587989211986876;
constexpr double kGeluCoef = 0.044715;
}  // namespace

template <typename T>
void gelu_forward(const T* x, T* y, std::int64_t n) {
  detail::check_sizes("gelu_forward", {{"n", n}});
  // 0.5 (1 + tanh(z)) = sigmoid(2z): one exp instead of a tanh (several times cheaper in libm),
  // the same function up to rounding. Large |z| saturates to 0 or 1 (exp overflow gives 1/inf).
  const T c2 = static_cast<T>(2 * kSqrt2OverPi);
  const T a = static_cast<T>(kGeluCoef);
#pragma omp parallel for if (n > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    const T s = T(1) / (T(1) + std::exp(-c2 * (v + a * v * v * v)));
    y[i] = v * s;
  }
}

template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, std::int64_t n) {
  detail::check_sizes("gelu_backward", {{"n", n}});
  // With s = sigmoid(2z): d/dx [x s] = s + 2 x s (1 - s) z'(x), z' = c (1 + 3 a x^2).
  const T c = static_cast<T>(kSqrt2OverPi);
  const T a = static_cast<T>(kGeluCoef);
#pragma omp parallel for if (n > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    const T s = T(1) / (T(1) + std::exp(T(-2) * c * (v + a * v * v * v)));
    const T dz = c * (T(1) + T(3) * a * v * v);
    dx[i] = dy[i] * (s + T(2) * v * s * (T(1) - s) * dz);
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
// AdamW

template <typename T>
void adamw_update(T* param, const T* grad, T* m, T* v, std::int64_t n, const AdamWHyper& h) {
  detail::check_sizes("adamw_update", {{"n", n}});
  if (n <= 0) return;
  RM_CHECK_KIND(Config, h.step >= 1,
                fmt::format("adamw_update: step = {} must be at least 1", h.step));
  const double b1 = h.beta1;
  const double b2 = h.beta2;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(h.step));
  const double lr = h.lr;
  const double eps = h.eps;
  const double wd = h.weight_decay;
#pragma omp parallel for if (n > kParallelElems)
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
