// CPU kernels of the MoE layer and its routers. See moe_kernels.h for the contract of each.

#include "framework/cpu/moe_kernels.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "framework/cpu/check_sizes.h"
#include "framework/cpu/kernels.h"
#include "framework/error.h"

namespace routemoe::cpu {

namespace {

// Row-parallel loops go parallel above this many elements.
constexpr std::int64_t kParallelElems = 16384;

void check_index_range(const char* kernel, const char* name, const std::int32_t* idx,
                       std::int64_t n, std::int64_t bound) {
  for (std::int64_t i = 0; i < n; ++i) {
    RM_CHECK_KIND(
        Data, idx[i] >= 0 && idx[i] < bound,
        fmt::format("{}: {}[{}] = {} is outside [0, {})", kernel, name, i, idx[i], bound));
  }
}

std::size_t at(std::int64_t i) {
  return static_cast<std::size_t>(i);
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// Attention helpers

template <typename T>
void mask_future(T* x, std::int64_t rows, std::int64_t t) {
  detail::check_sizes("mask_future", {{"rows", rows}, {"t", t}});
  if (t == 0) return;  // no columns (and no r % t to take)
  const T ninf = -std::numeric_limits<T>::infinity();
#pragma omp parallel for if (rows * t > kParallelElems)
  for (std::int64_t r = 0; r < rows; ++r) {
    T* row = x + r * t;
    for (std::int64_t j = r % t + 1; j < t; ++j) row[j] = ninf;
  }
}

template <typename T>
void head_mean(const T* p, T* avg, std::int64_t batch, std::int64_t heads, std::int64_t m) {
  detail::check_sizes("head_mean", {{"batch", batch}, {"heads", heads}, {"m", m}});
  if (heads <= 0) return;
#pragma omp parallel for if (batch * heads * m > kParallelElems)
  for (std::int64_t b = 0; b < batch; ++b) {
    const T* pb = p + b * heads * m;
    T* ab = avg + b * m;
    for (std::int64_t x = 0; x < m; ++x) {
      double s = 0.0;
      for (std::int64_t h = 0; h < heads; ++h) s += static_cast<double>(pb[h * m + x]);
      ab[x] = static_cast<T>(s / static_cast<double>(heads));
    }
  }
}

template <typename T>
void head_mean_backward(const T* davg, T* dp, std::int64_t batch, std::int64_t heads,
                        std::int64_t m) {
  detail::check_sizes("head_mean_backward", {{"batch", batch}, {"heads", heads}, {"m", m}});
  if (heads <= 0) return;
  const T inv = static_cast<T>(1.0 / static_cast<double>(heads));
#pragma omp parallel for if (batch * heads * m > kParallelElems)
  for (std::int64_t bh = 0; bh < batch * heads; ++bh) {
    const T* da = davg + (bh / heads) * m;
    T* d = dp + bh * m;
    for (std::int64_t x = 0; x < m; ++x) d[x] += inv * da[x];
  }
}

// ----------------------------------------------------------------------------------------------
// Elementwise and row helpers

template <typename T>
void mul(const T* a, const T* b, T* y, std::int64_t n) {
  detail::check_sizes("mul", {{"n", n}});
#pragma omp parallel for if (n > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) y[i] = a[i] * b[i];
}

template <typename T>
void row_logsumexp(const T* x, T* out, std::int64_t n, std::int64_t e) {
  detail::check_sizes("row_logsumexp", {{"n", n}, {"e", e}});
#pragma omp parallel for if (n * e > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) {
    const T* r = x + i * e;
    double mx = -std::numeric_limits<double>::infinity();
    for (std::int64_t j = 0; j < e; ++j) mx = std::max(mx, static_cast<double>(r[j]));
    double s = 0;
    for (std::int64_t j = 0; j < e; ++j) s += std::exp(static_cast<double>(r[j]) - mx);
    out[i] = static_cast<T>(mx + std::log(s));
  }
}

template <typename T>
void softmax_lse_backward(const T* p, const T* dp, const T* dlse, T* dz, std::int64_t n,
                          std::int64_t e) {
  detail::check_sizes("softmax_lse_backward", {{"n", n}, {"e", e}});
#pragma omp parallel for if (n * e > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) {
    const T* pr = p + i * e;
    const T* dpr = dp + i * e;
    T* dzr = dz + i * e;
    double dot = 0.0;
    for (std::int64_t j = 0; j < e; ++j) dot += static_cast<double>(dpr[j]) * pr[j];
    const T d = static_cast<T>(dot);
    const T dl = dlse[i];
    for (std::int64_t j = 0; j < e; ++j) dzr[j] = pr[j] * (dpr[j] - d) + dl * pr[j];
  }
}

template <typename T>
void row_normalize(const T* x, T* unit, T* norm, std::int64_t rows, std::int64_t cols) {
  detail::check_sizes("row_normalize", {{"rows", rows}, {"cols", cols}});
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    double s = 0;
    for (std::int64_t f = 0; f < cols; ++f) s += static_cast<double>(xr[f]) * xr[f];
    const double nrm = std::sqrt(s);
    RM_CHECK_KIND(Data, nrm > 0, fmt::format("row_normalize: row {} is zero", r));
    norm[r] = static_cast<T>(nrm);
    for (std::int64_t f = 0; f < cols; ++f) unit[r * cols + f] = static_cast<T>(xr[f] / nrm);
  }
}

template <typename T>
void row_normalize_backward(const T* unit, const T* norm, const T* dunit, T* dx, std::int64_t rows,
                            std::int64_t cols) {
  detail::check_sizes("row_normalize_backward", {{"rows", rows}, {"cols", cols}});
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* q = unit + r * cols;
    const T* dq = dunit + r * cols;
    double dot = 0;
    for (std::int64_t f = 0; f < cols; ++f) dot += static_cast<double>(q[f]) * dq[f];
    for (std::int64_t f = 0; f < cols; ++f) {
      dx[r * cols + f] += static_cast<T>((dq[f] - q[f] * dot) / norm[r]);
    }
  }
}

template <typename T>
void broadcast_row(const T* v, double alpha, T* x, std::int64_t n, std::int64_t e) {
  detail::check_sizes("broadcast_row", {{"n", n}, {"e", e}});
  std::vector<T> row(at(e));
  for (std::int64_t j = 0; j < e; ++j) row[at(j)] = static_cast<T>(alpha * v[j]);
#pragma omp parallel for if (n * e > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) std::copy(row.begin(), row.end(), x + i * e);
}

// ----------------------------------------------------------------------------------------------
// Top-k and gates

template <typename T>
void topk_rows(const T* x, std::int32_t* idx, std::int64_t n, std::int64_t e, std::int64_t k) {
  detail::check_sizes("topk_rows", {{"n", n}, {"e", e}, {"k", k}});
  RM_CHECK_KIND(Shape, n == 0 || (k >= 1 && k <= e),
                fmt::format("topk_rows: k = {} with {} columns", k, e));
#pragma omp parallel for if (n * e * k > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) {
    const T* r = x + i * e;
    std::int32_t* out = idx + i * k;
    for (std::int64_t j = 0; j < k; ++j) {
      std::int32_t best = -1;
      for (std::int64_t c = 0; c < e; ++c) {
        bool taken = false;
        for (std::int64_t t = 0; t < j; ++t) taken = taken || out[t] == c;
        // Strict '>' keeps the lower index on ties. A NaN never wins over a number: a NaN
        // compares false either way, so a number also replaces a NaN held as the best so far.
        if (!taken && (best < 0 || r[c] > r[best] || (std::isnan(r[best]) && !std::isnan(r[c]))))
          best = static_cast<std::int32_t>(c);
      }
      out[j] = best;
    }
  }
}

template <typename T>
void topk_gates_forward(const T* s, const std::int32_t* choice, T* gates, std::int32_t* top1,
                        std::int64_t n, std::int64_t e, std::int64_t k, GateRule rule) {
  detail::check_sizes("topk_gates_forward", {{"n", n}, {"e", e}, {"k", k}});
  check_index_range("topk_gates_forward", "choice", choice, n * k, e);
  for (std::int64_t i = 0; i < n; ++i) {
    const T* si = s + i * e;
    const std::int32_t* ch = choice + i * k;
    T* g = gates + i * k;
    if (rule == GateRule::SoftmaxOfChosen) {  // ch[0] holds the largest score
      double z = 0;
      for (std::int64_t j = 0; j < k; ++j)
        z += std::exp(static_cast<double>(si[ch[j]]) - si[ch[0]]);
      for (std::int64_t j = 0; j < k; ++j) {
        g[j] = static_cast<T>(std::exp(static_cast<double>(si[ch[j]]) - si[ch[0]]) / z);
      }
    } else {
      double z = 0;
      for (std::int64_t j = 0; j < k; ++j) z += si[ch[j]];
      for (std::int64_t j = 0; j < k; ++j) g[j] = static_cast<T>(si[ch[j]] / z);
    }
    if (k > 0) top1[i] = ch[0];
  }
}

template <typename T>
void topk_gates_backward(const T* s, const std::int32_t* choice, const T* gates, const T* dgates,
                         T* ds, std::int64_t n, std::int64_t e, std::int64_t k, GateRule rule) {
  detail::check_sizes("topk_gates_backward", {{"n", n}, {"e", e}, {"k", k}});
  check_index_range("topk_gates_backward", "choice", choice, n * k, e);
  std::fill(ds, ds + n * e, T(0));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int32_t* ch = choice + i * k;
    const T* g = gates + i * k;
    const T* dg = dgates + i * k;
    T* dsi = ds + i * e;
    double dot = 0;
    for (std::int64_t j = 0; j < k; ++j) dot += static_cast<double>(dg[j]) * g[j];
    if (rule == GateRule::SoftmaxOfChosen) {  // ds_c = g (dg - sum g dg)
      for (std::int64_t j = 0; j < k; ++j) dsi[ch[j]] += static_cast<T>(g[j] * (dg[j] - dot));
    } else {  // g_j = s_cj / sum: ds_cm = (dg_m - sum_j dg_j g_j) / sum
      double sum = 0;
      for (std::int64_t j = 0; j < k; ++j) sum += s[i * e + ch[j]];
      for (std::int64_t j = 0; j < k; ++j) dsi[ch[j]] += static_cast<T>((dg[j] - dot) / sum);
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Auxiliary-loss statistics

template <typename T>
void top1_fraction(const std::int32_t* top1, T* frac, std::int64_t n, std::int64_t e) {
  detail::check_sizes("top1_fraction", {{"n", n}, {"e", e}});
  check_index_range("top1_fraction", "top1", top1, n, e);
  std::vector<std::int64_t> count(at(e), 0);
  for (std::int64_t i = 0; i < n; ++i) ++count[at(top1[i])];
  for (std::int64_t j = 0; j < e; ++j) {
    frac[j] =
        n > 0 ? static_cast<T>(static_cast<double>(count[at(j)]) / static_cast<double>(n)) : T(0);
  }
}

template <typename T>
double switch_loss(const T* frac, const T* probs, std::int64_t n, std::int64_t e) {
  detail::check_sizes("switch_loss", {{"n", n}, {"e", e}});
  if (n == 0) return 0.0;
  double sw = 0;
  for (std::int64_t j = 0; j < e; ++j) {
    double pe = 0;
    for (std::int64_t i = 0; i < n; ++i) pe += probs[i * e + j];
    sw += static_cast<double>(frac[j]) * pe / static_cast<double>(n);
  }
  return static_cast<double>(e) * sw;
}

template <typename T>
double mean_square(const T* x, std::int64_t n) {
  detail::check_sizes("mean_square", {{"n", n}});
  if (n == 0) return 0.0;
  double z = 0;
  for (std::int64_t i = 0; i < n; ++i) z += static_cast<double>(x[i]) * x[i];
  return z / static_cast<double>(n);
}

// ----------------------------------------------------------------------------------------------
// Capacity and the slot plan

std::int64_t capacity_keep(const std::int32_t* choice, std::uint8_t* kept, std::int64_t* counts,
                           std::int64_t n, std::int64_t e, std::int64_t k, std::int64_t cap) {
  detail::check_sizes("capacity_keep", {{"n", n}, {"e", e}, {"k", k}});
  check_index_range("capacity_keep", "choice", choice, n * k, e);
  std::fill(counts, counts + e, std::int64_t{0});
  std::int64_t dropped = 0;
  for (std::int64_t j = 0; j < k; ++j) {
    for (std::int64_t i = 0; i < n; ++i) {
      std::int64_t& c = counts[choice[i * k + j]];
      const bool keep = cap < 0 || c < cap;
      kept[i * k + j] = keep ? 1 : 0;
      if (keep) {
        ++c;
      } else {
        ++dropped;
      }
    }
  }
  return dropped;
}

void expert_offsets(const std::int64_t* counts, std::int64_t* offset, std::int64_t e) {
  detail::check_sizes("expert_offsets", {{"e", e}});
  offset[0] = 0;
  for (std::int64_t j = 0; j < e; ++j) offset[j + 1] = offset[j] + counts[j];
}

template <typename T>
void slot_plan(const std::int32_t* choice, const std::uint8_t* kept, const T* gates,
               const std::int64_t* offset, std::int32_t* slot_token, std::int32_t* slot_pos,
               T* slot_gate, std::int64_t n, std::int64_t e, std::int64_t k) {
  detail::check_sizes("slot_plan", {{"n", n}, {"e", e}, {"k", k}});
  check_index_range("slot_plan", "choice", choice, n * k, e);
  std::vector<std::int64_t> next(offset, offset + e);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < k; ++j) {
      if (!kept[i * k + j]) continue;
      const std::int64_t s = next[at(choice[i * k + j])]++;
      slot_token[s] = static_cast<std::int32_t>(i);
      slot_pos[s] = static_cast<std::int32_t>(i * k + j);
      slot_gate[s] = gates[i * k + j];
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Adaptive Clustering router

template <typename T>
void ac_expert_sums(const T* u, const std::int32_t* assign, double* sum, double* count,
                    std::int64_t n, std::int64_t d, std::int64_t e) {
  detail::check_sizes("ac_expert_sums", {{"n", n}, {"d", d}, {"e", e}});
  check_index_range("ac_expert_sums", "assign", assign, n, e);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t c = assign[i];
    count[c] += 1.0;
    for (std::int64_t f = 0; f < d; ++f) sum[c * d + f] += u[i * d + f];
  }
}

template <typename T>
void ac_expert_absdev(const T* u, const std::int32_t* assign, const double* sum,
                      const double* count, double* absdev, std::int64_t n, std::int64_t d,
                      std::int64_t e) {
  detail::check_sizes("ac_expert_absdev", {{"n", n}, {"d", d}, {"e", e}});
  check_index_range("ac_expert_absdev", "assign", assign, n, e);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t c = assign[i];
    for (std::int64_t f = 0; f < d; ++f) {
      const double mean = sum[c * d + f] / count[c];
      absdev[c * d + f] += std::abs(static_cast<double>(u[i * d + f]) - mean);
    }
  }
}

template <typename T>
void ac_expert_weights(const double* absdev, const double* count, T* w, std::int64_t d,
                       std::int64_t e, double eps, double clip_factor) {
  detail::check_sizes("ac_expert_weights", {{"d", d}, {"e", e}});
  std::vector<double> inv(at(e * d), 0.0);
  double total = 0;
  std::int64_t present = 0;
  for (std::int64_t x = 0; x < e; ++x) {
    if (count[x] <= 0) continue;
    ++present;
    for (std::int64_t f = 0; f < d; ++f) {
      inv[at(x * d + f)] = 1.0 / (absdev[x * d + f] / count[x] + eps);
      total += inv[at(x * d + f)];
    }
  }
  std::fill(w, w + e * d, T(0));
  if (present == 0) return;
  const double clip = clip_factor * total / static_cast<double>(present * d);
  std::vector<double> colmean(at(d), 0.0);
  for (std::int64_t x = 0; x < e; ++x) {
    if (count[x] <= 0) continue;
    for (std::int64_t f = 0; f < d; ++f) {
      double& v = inv[at(x * d + f)];
      v = std::min(v, clip);
      colmean[at(f)] += v / static_cast<double>(present);
    }
  }
  for (std::int64_t x = 0; x < e; ++x) {
    if (count[x] <= 0) continue;
    for (std::int64_t f = 0; f < d; ++f)
      w[x * d + f] = static_cast<T>(inv[at(x * d + f)] / colmean[at(f)]);
  }
}

// ----------------------------------------------------------------------------------------------
// Grouped linear layer

// ----------------------------------------------------------------------------------------------
// Graph routers

template <typename T>
void mixing_row_stats(const T* a, double alpha, std::int64_t batch, std::int64_t t, bool causal,
                      double* out) {
  detail::check_sizes("mixing_row_stats", {{"batch", batch}, {"t", t}});
  RM_CHECK_KIND(Data, alpha >= 0 && alpha <= 1,
                fmt::format("mixing_row_stats: alpha = {} is outside [0, 1]", alpha));
  std::fill(out, out + 5, 0.0);
  for (std::int64_t r = 0; r < batch * t; ++r) {
    const std::int64_t i = r % t;
    const std::int64_t n = causal ? i + 1 : t;
    const T* row = a + r * t;
    double h = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const double m = (1.0 - alpha) * static_cast<double>(row[j]) + (j == i ? alpha : 0.0);
      if (m > 0) h -= m * std::log(m);
    }
    out[0] += (1.0 - alpha) * static_cast<double>(row[i]) + alpha;
    out[1] += h;
    out[2] += std::exp(h);
    if (n >= 2) {
      out[3] += h / std::log(static_cast<double>(n));
      out[4] += 1.0;
    }
  }
}

template <typename T>
void grouped_linear_forward(const T* x, const T* w, const T* b, T* y, const std::int64_t* offset,
                            std::int64_t groups, std::int64_t in, std::int64_t out) {
  detail::check_sizes("grouped_linear_forward", {{"groups", groups}, {"in", in}, {"out", out}});
  for (std::int64_t g = 0; g < groups; ++g) {
    const std::int64_t r0 = offset[g], rows = offset[g + 1] - r0;
    if (rows == 0) continue;
    linear_forward<T>(x + r0 * in, w + g * out * in, b != nullptr ? b + g * out : nullptr,
                      y + r0 * out, rows, in, out);
  }
}

template <typename T>
void grouped_linear_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* db,
                             const std::int64_t* offset, std::int64_t groups, std::int64_t in,
                             std::int64_t out) {
  detail::check_sizes("grouped_linear_backward", {{"groups", groups}, {"in", in}, {"out", out}});
  for (std::int64_t g = 0; g < groups; ++g) {
    const std::int64_t r0 = offset[g], rows = offset[g + 1] - r0;
    if (rows == 0) continue;
    linear_backward<T>(dy + r0 * out, x + r0 * in, w + g * out * in,
                       dx != nullptr ? dx + r0 * in : nullptr, dw + g * out * in,
                       db != nullptr ? db + g * out : nullptr, rows, in, out);
  }
}

#define RM_INSTANTIATE(T)                                                                          \
  template void mask_future<T>(T*, std::int64_t, std::int64_t);                                    \
  template void head_mean<T>(const T*, T*, std::int64_t, std::int64_t, std::int64_t);              \
  template void head_mean_backward<T>(const T*, T*, std::int64_t, std::int64_t, std::int64_t);     \
  template void mul<T>(const T*, const T*, T*, std::int64_t);                                      \
  template void row_logsumexp<T>(const T*, T*, std::int64_t, std::int64_t);                        \
  template void softmax_lse_backward<T>(const T*, const T*, const T*, T*, std::int64_t,            \
                                        std::int64_t);                                             \
  template void row_normalize<T>(const T*, T*, T*, std::int64_t, std::int64_t);                    \
  template void row_normalize_backward<T>(const T*, const T*, const T*, T*, std::int64_t,          \
                                          std::int64_t);                                           \
  template void broadcast_row<T>(const T*, double, T*, std::int64_t, std::int64_t);                \
  template void topk_rows<T>(const T*, std::int32_t*, std::int64_t, std::int64_t, std::int64_t);   \
  template void topk_gates_forward<T>(const T*, const std::int32_t*, T*, std::int32_t*,            \
                                      std::int64_t, std::int64_t, std::int64_t, GateRule);         \
  template void topk_gates_backward<T>(const T*, const std::int32_t*, const T*, const T*, T*,      \
                                       std::int64_t, std::int64_t, std::int64_t, GateRule);        \
  template void top1_fraction<T>(const std::int32_t*, T*, std::int64_t, std::int64_t);             \
  template double switch_loss<T>(const T*, const T*, std::int64_t, std::int64_t);                  \
  template double mean_square<T>(const T*, std::int64_t);                                          \
  template void slot_plan<T>(const std::int32_t*, const std::uint8_t*, const T*,                   \
                             const std::int64_t*, std::int32_t*, std::int32_t*, T*, std::int64_t,  \
                             std::int64_t, std::int64_t);                                          \
  template void ac_expert_sums<T>(const T*, const std::int32_t*, double*, double*, std::int64_t,   \
                                  std::int64_t, std::int64_t);                                     \
  template void ac_expert_absdev<T>(const T*, const std::int32_t*, const double*, const double*,   \
                                    double*, std::int64_t, std::int64_t, std::int64_t);            \
  template void ac_expert_weights<T>(const double*, const double*, T*, std::int64_t, std::int64_t, \
                                     double, double);                                              \
  template void mixing_row_stats<T>(const T*, double, std::int64_t, std::int64_t, bool, double*);  \
  template void grouped_linear_forward<T>(const T*, const T*, const T*, T*, const std::int64_t*,   \
                                          std::int64_t, std::int64_t, std::int64_t);               \
  template void grouped_linear_backward<T>(const T*, const T*, const T*, T*, T*, T*,               \
                                           const std::int64_t*, std::int64_t, std::int64_t,        \
                                           std::int64_t);
RM_INSTANTIATE(float)
RM_INSTANTIATE(double)
#undef RM_INSTANTIATE

}  // namespace routemoe::cpu
