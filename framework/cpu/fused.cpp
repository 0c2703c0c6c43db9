// Fused CPU kernels: the causal attention core, the grouped expert FFN and the cross-entropy
// forward + backward. Each does in one call, with one pass over memory where the unfused
// sequence made several, what a sequence of the elementary kernels does (see kernels.h and
// moe_kernels.h for the contracts). Independent pieces of work (a (sequence, head) pair, an
// expert) run in parallel, one per thread, with single-threaded GEMMs (detail.h): every output
// element is computed by one thread in a fixed order, so results do not depend on the thread
// count.

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "framework/cpu/check_sizes.h"
#include "framework/cpu/detail.h"
#include "framework/cpu/kernels.h"
#include "framework/cpu/moe_kernels.h"
#include "framework/error.h"

namespace routemoe::cpu {

namespace {

using detail::gemm_nocheck;

// Query (and key) rows per block of the causal attention: the GEMMs of a block cover the keys
// up to the block's end, so about (1 + 1/blocks) / 2 of the full T x T work is done.
constexpr std::int64_t kAttnBlock = 64;

// Uninitialised scratch of n elements (every element is written before it is read).
template <typename T>
std::unique_ptr<T[]> scratch(std::int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<std::size_t>(std::max<std::int64_t>(n, 1))]);
}

// Row i of a causal score matrix: y[0..len) = softmax(x[0..len)) with softmax_forward's
// arithmetic (exp in T, sum in double, multiply by the double reciprocal), y[len..cols) = 0.
// NaN anywhere in x[0..len) gives NaN over [0, len). In place (y == x) allowed.
template <typename T>
void causal_softmax_row(const T* x, T* y, std::int64_t len, std::int64_t cols) {
  T mx = -std::numeric_limits<T>::infinity();
  bool nan = false;
  for (std::int64_t j = 0; j < len; ++j) {
    nan = nan || std::isnan(x[j]);
    mx = x[j] > mx ? x[j] : mx;
  }
  if (nan) {
    std::fill(y, y + len, std::numeric_limits<T>::quiet_NaN());
  } else if (mx == -std::numeric_limits<T>::infinity()) {
    std::fill(y, y + len, T(0));
  } else {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (std::int64_t j = 0; j < len; ++j) {
      const T e = detail::exp_t<T>(x[j] - mx);
      y[j] = e;
      sum += static_cast<double>(e);
    }
    const double inv = 1.0 / sum;
#pragma omp simd
    for (std::int64_t j = 0; j < len; ++j) y[j] = static_cast<T>(static_cast<double>(y[j]) * inv);
  }
  std::fill(y + len, y + cols, T(0));
}

void check_attention(const char* kernel, std::int64_t batch, std::int64_t t, std::int64_t heads,
                     std::int64_t dh) {
  detail::check_sizes(kernel, {{"batch", batch}, {"t", t}, {"heads", heads}, {"dh", dh}});
  detail::check_blas_size(kernel, "t", t);
  detail::check_blas_size(kernel, "3 d", 3 * heads * dh);
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// Causal attention

template <typename T>
void causal_attention_forward(const T* qkv, T* probs, T* ctx, std::int64_t batch, std::int64_t t,
                              std::int64_t heads, std::int64_t dh) {
  check_attention("causal_attention_forward", batch, t, heads, dh);
  if (batch == 0 || t == 0 || heads == 0) return;
  const std::int64_t d = heads * dh, ld = 3 * d, pairs = batch * heads;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(dh)));
#pragma omp parallel for schedule(dynamic, 1) if (pairs > 1)
  for (std::int64_t bh = 0; bh < pairs; ++bh) {
    const std::int64_t b = bh / heads, h = bh % heads;
    const T* q = qkv + b * t * ld + h * dh;
    const T* k = q + d;
    const T* v = q + 2 * d;
    T* p = probs + bh * t * t;
    T* c = ctx + b * t * d + h * dh;
    for (std::int64_t i0 = 0; i0 < t; i0 += kAttnBlock) {
      const std::int64_t i1 = std::min(t, i0 + kAttnBlock), m = i1 - i0;
      // Scores of queries [i0, i1) against keys [0, i1); the softmax masks j > i.
      gemm_nocheck<T>(false, true, m, i1, dh, scale, q + i0 * ld, ld, k, ld, T(0), p + i0 * t, t);
      for (std::int64_t i = i0; i < i1; ++i) causal_softmax_row(p + i * t, p + i * t, i + 1, t);
      gemm_nocheck<T>(false, false, m, dh, i1, T(1), p + i0 * t, t, v, ld, T(0), c + i0 * d, d);
    }
  }
}

template <typename T>
void causal_attention_backward(const T* qkv, const T* probs, const T* dctx, const T* d_avg, T* dqkv,
                               std::int64_t batch, std::int64_t t, std::int64_t heads,
                               std::int64_t dh) {
  check_attention("causal_attention_backward", batch, t, heads, dh);
  if (batch == 0 || t == 0 || heads == 0) return;
  const std::int64_t d = heads * dh, ld = 3 * d, pairs = batch * heads;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(dh)));
  const T inv_heads = static_cast<T>(1.0 / static_cast<double>(heads));
  const int threads = pairs > 1 ? omp_get_max_threads() : 1;
  const auto work = scratch<T>(static_cast<std::int64_t>(threads) * t * t);  // dS per thread
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t bh = 0; bh < pairs; ++bh) {
    const std::int64_t b = bh / heads, h = bh % heads;
    const T* q = qkv + b * t * ld + h * dh;
    const T* k = q + d;
    const T* v = q + 2 * d;
    const T* p = probs + bh * t * t;
    const T* dc = dctx + b * t * d + h * dh;
    const T* da = d_avg != nullptr ? d_avg + b * t * t : nullptr;
    T* dq = dqkv + b * t * ld + h * dh;
    T* dk = dq + d;
    T* dv = dq + 2 * d;
    T* ds = work.get() + static_cast<std::int64_t>(omp_get_thread_num()) * t * t;
    // dP = dctx V^T (+ d_avg / H), then dS = P (dP - <dP, P>) row by row, causal part only;
    // within a diagonal block the entries j > i are set to 0 for the GEMMs below.
    for (std::int64_t i0 = 0; i0 < t; i0 += kAttnBlock) {
      const std::int64_t i1 = std::min(t, i0 + kAttnBlock), m = i1 - i0;
      gemm_nocheck<T>(false, true, m, i1, dh, T(1), dc + i0 * d, d, v, ld, T(0), ds + i0 * t, t);
      for (std::int64_t i = i0; i < i1; ++i) {
        T* row = ds + i * t;
        const T* prow = p + i * t;
        const std::int64_t len = i + 1;
        if (da != nullptr) {
          const T* arow = da + i * t;
          for (std::int64_t j = 0; j < len; ++j) row[j] += inv_heads * arow[j];
        }
        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
        for (std::int64_t j = 0; j < len; ++j) {
          dot += static_cast<double>(row[j]) * static_cast<double>(prow[j]);
        }
        const T dd = static_cast<T>(dot);
#pragma omp simd
        for (std::int64_t j = 0; j < len; ++j) row[j] = prow[j] * (row[j] - dd);
        std::fill(row + len, row + i1, T(0));
      }
    }
    // dV = P^T dctx and dK = scale dS^T Q by key blocks [j0, j1): queries i >= j0 only.
    for (std::int64_t j0 = 0; j0 < t; j0 += kAttnBlock) {
      const std::int64_t j1 = std::min(t, j0 + kAttnBlock), m = j1 - j0, rest = t - j0;
      gemm_nocheck<T>(true, false, m, dh, rest, T(1), p + j0 * t + j0, t, dc + j0 * d, d, T(0),
                      dv + j0 * ld, ld);
      gemm_nocheck<T>(true, false, m, dh, rest, scale, ds + j0 * t + j0, t, q + j0 * ld, ld, T(0),
                      dk + j0 * ld, ld);
    }
    // dQ = scale dS K by query blocks: keys j < i1 only.
    for (std::int64_t i0 = 0; i0 < t; i0 += kAttnBlock) {
      const std::int64_t i1 = std::min(t, i0 + kAttnBlock), m = i1 - i0;
      gemm_nocheck<T>(false, false, m, dh, i1, scale, ds + i0 * t, t, k, ld, T(0), dq + i0 * ld,
                      ld);
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Grouped expert FFN

namespace {

// y[rows, out] = x[rows, in] w[out, in]^T + b (b may be null), on the calling thread, with
// linear_forward's arithmetic (bias first, then the product accumulated onto it).
template <typename T>
void linear_rows(const T* x, const T* w, const T* b, T* y, std::int64_t rows, std::int64_t in,
                 std::int64_t out) {
  T beta = T(0);
  if (b != nullptr) {
    for (std::int64_t i = 0; i < rows; ++i) std::copy(b, b + out, y + i * out);
    beta = T(1);
  }
  gemm_nocheck<T>(false, true, rows, out, in, T(1), x, in, w, in, beta, y, out);
}

// out[cols] += column sums of x[rows, cols] (each column in increasing row order, in double):
// sum_rows on the calling thread.
template <typename T>
void column_sums(const T* x, T* out, std::int64_t rows, std::int64_t cols) {
  constexpr std::int64_t kBlock = 64;
  for (std::int64_t j0 = 0; j0 < cols; j0 += kBlock) {
    const std::int64_t j1 = std::min(cols, j0 + kBlock);
    double acc[kBlock] = {};
    for (std::int64_t i = 0; i < rows; ++i) {
      const T* row = x + i * cols;
#pragma omp simd
      for (std::int64_t j = j0; j < j1; ++j) acc[j - j0] += static_cast<double>(row[j]);
    }
    for (std::int64_t j = j0; j < j1; ++j) out[j] += static_cast<T>(acc[j - j0]);
  }
}

RM_SIMD_CLONES void gelu_rows_f32(const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = detail::gelu_value(x[i]);
}
// y = gelu(x), g = gelu'(x) from one exp each.
RM_SIMD_CLONES void gelu_and_slope_f32(const float* x, float* y, float* g, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float s = detail::gelu_sigmoid(x[i]);
    y[i] = x[i] * s;
    g[i] = detail::gelu_slope(x[i], s);
  }
}
RM_SIMD_CLONES void mul_rows_f32(float* y, const float* g, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = y[i] * g[i];
}

template <typename T>
void gelu_rows(const T* x, T* y, std::int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    gelu_rows_f32(x, y, n);
  } else {
    for (std::int64_t i = 0; i < n; ++i) y[i] = detail::gelu_value(x[i]);
  }
}
template <typename T>
void gelu_and_slope(const T* x, T* y, T* g, std::int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    gelu_and_slope_f32(x, y, g, n);
  } else {
    for (std::int64_t i = 0; i < n; ++i) {
      const T s = detail::gelu_sigmoid(x[i]);
      y[i] = x[i] * s;
      g[i] = detail::gelu_slope(x[i], s);
    }
  }
}
template <typename T>
void mul_rows(T* y, const T* g, std::int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    mul_rows_f32(y, g, n);
  } else {
    for (std::int64_t i = 0; i < n; ++i) y[i] = y[i] * g[i];
  }
}

struct FfnDims {
  std::int64_t d, f;
};

// One expert's forward over its `rows` rows, on the calling thread; act: [rows, f] scratch.
template <typename T>
void ffn_group_forward(const T* x, const T* w1, const T* b1, const T* w2, const T* b2, T* h_pre,
                       T* y, T* act, std::int64_t rows, FfnDims s) {
  linear_rows(x, w1, b1, h_pre, rows, s.d, s.f);
  gelu_rows(h_pre, act, rows * s.f);
  linear_rows(act, w2, b2, y, rows, s.f, s.d);
}

// One expert's backward, on the calling thread; act, slope, dh: [rows, f] scratch each.
template <typename T>
void ffn_group_backward(const T* dy, const T* x, const T* h_pre, const T* w1, const T* w2, T* dx,
                        T* dw1, T* db1, T* dw2, T* db2, T* act, T* slope, T* dh, std::int64_t rows,
                        FfnDims s) {
  const std::int64_t d = s.d, f = s.f;
  gelu_and_slope(h_pre, act, slope, rows * f);
  // proj: dh = dy w2; dw2 += dy^T gelu(h_pre); db2 += column sums of dy.
  gemm_nocheck<T>(false, false, rows, f, d, T(1), dy, d, w2, f, T(0), dh, f);
  gemm_nocheck<T>(true, false, d, f, rows, T(1), dy, d, act, f, T(1), dw2, f);
  if (db2 != nullptr) column_sums(dy, db2, rows, d);
  mul_rows(dh, slope, rows * f);  // through the GELU
  // fc: dx = dh w1; dw1 += dh^T x; db1 += column sums of dh.
  if (dx != nullptr) gemm_nocheck<T>(false, false, rows, d, f, T(1), dh, f, w1, d, T(0), dx, d);
  gemm_nocheck<T>(true, false, f, d, rows, T(1), dh, f, x, d, T(1), dw1, d);
  if (db1 != nullptr) column_sums(dh, db1, rows, f);
}

// Checks sizes and offsets; returns the number of non-empty groups and the most rows of one.
std::pair<std::int64_t, std::int64_t> check_groups(const char* kernel, const std::int64_t* offset,
                                                   std::int64_t groups, std::int64_t d,
                                                   std::int64_t f) {
  detail::check_sizes(kernel, {{"groups", groups}, {"d", d}, {"f", f}});
  detail::check_blas_size(kernel, "d", d);
  detail::check_blas_size(kernel, "f", f);
  std::int64_t nonempty = 0, most = 0;
  for (std::int64_t g = 0; g < groups; ++g) {
    const std::int64_t rows = offset[g + 1] - offset[g];
    RM_CHECK_KIND(Shape, offset[g] >= 0 && rows >= 0,
                  fmt::format("{}: offsets [{}] = {}, [{}] = {} are not a non-decreasing list "
                              "from 0",
                              kernel, g, offset[g], g + 1, offset[g + 1]));
    detail::check_blas_size(kernel, "rows of a group", rows);
    nonempty += rows > 0 ? 1 : 0;
    most = std::max(most, rows);
  }
  return {nonempty, most};
}

// Runs body(g, thread) for every non-empty group: in parallel (one thread per group) when there
// are at least as many non-empty groups as threads, else in order on thread 0 (the elementary
// kernels inside then use all threads).
template <typename F>
void for_groups(const std::int64_t* offset, std::int64_t groups, std::int64_t nonempty, F&& body) {
  const int threads = omp_get_max_threads();
  if (threads > 1 && nonempty >= threads) {
#pragma omp parallel for schedule(dynamic, 1)
    for (std::int64_t g = 0; g < groups; ++g) {
      if (offset[g + 1] > offset[g]) body(g, omp_get_thread_num());
    }
  } else {
    for (std::int64_t g = 0; g < groups; ++g) {
      if (offset[g + 1] > offset[g]) body(g, 0);
    }
  }
}

}  // namespace

template <typename T>
void grouped_ffn_forward(const T* x, const T* w1, const T* b1, const T* w2, const T* b2, T* h_pre,
                         T* y, const std::int64_t* offset, std::int64_t groups, std::int64_t d,
                         std::int64_t f) {
  const auto [nonempty, most] = check_groups("grouped_ffn_forward", offset, groups, d, f);
  if (nonempty == 0) return;
  const std::int64_t threads = omp_get_max_threads();
  const bool parallel = threads > 1 && nonempty >= threads;
  if (!parallel) {  // few groups: the elementary kernels, each with all threads
    for (std::int64_t g = 0; g < groups; ++g) {
      const std::int64_t r0 = offset[g], rows = offset[g + 1] - r0;
      if (rows == 0) continue;
      linear_forward<T>(x + r0 * d, w1 + g * f * d, b1 != nullptr ? b1 + g * f : nullptr,
                        h_pre + r0 * f, rows, d, f);
    }
    const std::int64_t rows = offset[groups] - offset[0];
    auto act = scratch<T>(rows * f);
    const T* hp = h_pre + offset[0] * f;
#pragma omp parallel for if (rows * f > 65536)
    for (std::int64_t c = 0; c < rows; c += 64) {
      gelu_rows(hp + c * f, act.get() + c * f, std::min<std::int64_t>(64, rows - c) * f);
    }
    for (std::int64_t g = 0; g < groups; ++g) {
      const std::int64_t r0 = offset[g], n = offset[g + 1] - r0;
      if (n == 0) continue;
      linear_forward<T>(act.get() + (r0 - offset[0]) * f, w2 + g * d * f,
                        b2 != nullptr ? b2 + g * d : nullptr, y + r0 * d, n, f, d);
    }
    return;
  }
  const auto act = scratch<T>(threads * most * f);
  for_groups(offset, groups, nonempty, [&](std::int64_t g, int thread) {
    const std::int64_t r0 = offset[g];
    ffn_group_forward(x + r0 * d, w1 + g * f * d, b1 != nullptr ? b1 + g * f : nullptr,
                      w2 + g * d * f, b2 != nullptr ? b2 + g * d : nullptr, h_pre + r0 * f,
                      y + r0 * d, act.get() + thread * most * f, offset[g + 1] - r0, {d, f});
  });
}

template <typename T>
void grouped_ffn_backward(const T* dy, const T* x, const T* h_pre, const T* w1, const T* w2, T* dx,
                          T* dw1, T* db1, T* dw2, T* db2, const std::int64_t* offset,
                          std::int64_t groups, std::int64_t d, std::int64_t f) {
  const auto [nonempty, most] = check_groups("grouped_ffn_backward", offset, groups, d, f);
  if (nonempty == 0) return;
  const std::int64_t threads = omp_get_max_threads();
  const bool parallel = threads > 1 && nonempty >= threads;
  const std::int64_t units = parallel ? threads : 1;
  const auto work = scratch<T>(units * 3 * most * f);
  if (!parallel) {  // few groups: groups in order, each GEMM with all threads
    for (std::int64_t g = 0; g < groups; ++g) {
      const std::int64_t r0 = offset[g], rows = offset[g + 1] - r0;
      if (rows == 0) continue;
      T* act = work.get();
      T* slope = act + most * f;
      T* dh = slope + most * f;
      const T* hp = h_pre + r0 * f;
#pragma omp parallel for if (rows * f > 65536)
      for (std::int64_t c = 0; c < rows; c += 64) {
        const std::int64_t n = std::min<std::int64_t>(64, rows - c) * f;
        gelu_and_slope(hp + c * f, act + c * f, slope + c * f, n);
      }
      linear_backward<T>(dy + r0 * d, act, w2 + g * d * f, dh, dw2 + g * d * f,
                         db2 != nullptr ? db2 + g * d : nullptr, rows, f, d);
#pragma omp parallel for if (rows * f > 65536)
      for (std::int64_t c = 0; c < rows; c += 64) {
        mul_rows(dh + c * f, slope + c * f, std::min<std::int64_t>(64, rows - c) * f);
      }
      linear_backward<T>(dh, x + r0 * d, w1 + g * f * d, dx != nullptr ? dx + r0 * d : nullptr,
                         dw1 + g * f * d, db1 != nullptr ? db1 + g * f : nullptr, rows, d, f);
    }
    return;
  }
  for_groups(offset, groups, nonempty, [&](std::int64_t g, int thread) {
    const std::int64_t r0 = offset[g];
    T* act = work.get() + static_cast<std::int64_t>(thread) * 3 * most * f;
    ffn_group_backward(dy + r0 * d, x + r0 * d, h_pre + r0 * f, w1 + g * f * d, w2 + g * d * f,
                       dx != nullptr ? dx + r0 * d : nullptr, dw1 + g * f * d,
                       db1 != nullptr ? db1 + g * f : nullptr, dw2 + g * d * f,
                       db2 != nullptr ? db2 + g * d : nullptr, act, act + most * f,
                       act + 2 * most * f, offset[g + 1] - r0, {d, f});
  });
}

// ----------------------------------------------------------------------------------------------
// Cross-entropy forward + backward

namespace {

// exp of a double argument for sums and products rounded to T afterwards: the vectorisable
// approximation for float (relative error < 3e-10), std::exp for double.
template <typename T>
inline double exp_for(double x) {
  if constexpr (std::is_same_v<T, float>) {
    return detail::exp_f64_approx(x);
  } else {
    return std::exp(x);
  }
}

template <typename T>
void cross_entropy_row(T* row, std::int32_t t, T g, T* loss, T* lse, std::int64_t v) {
  T mx = -std::numeric_limits<T>::infinity();
  bool nan = false;
  for (std::int64_t j = 0; j < v; ++j) {
    nan = nan || std::isnan(row[j]);
    mx = row[j] > mx ? row[j] : mx;
  }
  double l;
  if (nan) {
    l = std::numeric_limits<double>::quiet_NaN();
  } else if (mx == -std::numeric_limits<T>::infinity()) {
    l = -std::numeric_limits<double>::infinity();
  } else {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (std::int64_t j = 0; j < v; ++j) sum += exp_for<T>(static_cast<double>(row[j] - mx));
    l = static_cast<double>(mx) + std::log(sum);
  }
  const T lt = static_cast<T>(l);
  if (lse != nullptr) *lse = lt;
  *loss = t < 0 ? T(0) : static_cast<T>(l - static_cast<double>(row[t]));
  if (t < 0) {
    std::fill(row, row + v, T(0));
    return;
  }
  const double ls = static_cast<double>(lt), gd = static_cast<double>(g);
  const double pt = exp_for<T>(static_cast<double>(row[t]) - ls);
#pragma omp simd
  for (std::int64_t j = 0; j < v; ++j) {
    row[j] = static_cast<T>(gd * exp_for<T>(static_cast<double>(row[j]) - ls));
  }
  row[t] = static_cast<T>(gd * (pt - 1.0));
}

}  // namespace

template <typename T>
void cross_entropy_fused(T* logits, const std::int32_t* targets, const T* dloss, T* losses, T* lse,
                         std::int64_t n, std::int64_t v) {
  detail::check_sizes("cross_entropy_fused", {{"n", n}, {"v", v}});
  if (n <= 0) return;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int32_t t = targets[i];
    RM_CHECK_KIND(Data, t == -1 || (t >= 0 && t < v),
                  fmt::format("cross_entropy_fused: targets[{}] = {} is outside [0, {})", i, t, v));
  }
#pragma omp parallel for if (n * v > 16384)
  for (std::int64_t i = 0; i < n; ++i) {
    cross_entropy_row(logits + i * v, targets[i], dloss[i], losses + i,
                      lse != nullptr ? lse + i : nullptr, v);
  }
}

#define RM_INSTANTIATE(T)                                                                         \
  template void causal_attention_forward<T>(const T*, T*, T*, std::int64_t, std::int64_t,         \
                                            std::int64_t, std::int64_t);                          \
  template void causal_attention_backward<T>(const T*, const T*, const T*, const T*, T*,          \
                                             std::int64_t, std::int64_t, std::int64_t,            \
                                             std::int64_t);                                       \
  template void grouped_ffn_forward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*,  \
                                       const std::int64_t*, std::int64_t, std::int64_t,           \
                                       std::int64_t);                                             \
  template void grouped_ffn_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, \
                                        T*, T*, T*, const std::int64_t*, std::int64_t,            \
                                        std::int64_t, std::int64_t);                              \
  template void cross_entropy_fused<T>(T*, const std::int32_t*, const T*, T*, T*, std::int64_t,   \
                                       std::int64_t);
RM_INSTANTIATE(float)
RM_INSTANTIATE(double)
#undef RM_INSTANTIATE

}  // namespace routemoe::cpu
