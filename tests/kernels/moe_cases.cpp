// The kernel table (cases.h), part two: the kernels of the MoE layer and its routers
// (framework/cpu/moe_kernels.h). Same conventions as cases.cpp: each case has an input generator,
// the CPU call and a naive double reference with the tolerance of every output written next to
// it (ck, mag: |cpu - ref| <= bound<T>(ck) * mag, support.h). These kernels have no CUDA twin yet:
// every case is cuda_twin = false (driver c reports them as skipped).
//
// The MoE kernels accumulate in double and round once at the end, so most of them are far inside
// these bounds; the bounds are nevertheless written as for any implementation of the formula
// (a length-K sum costs K roundings), as in cases.cpp, so that they stay valid for a kernel that
// sums in T. Integer results (indices, flags, counts, offsets) and copies are exact.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "framework/cpu/kernels.h"
#include "framework/cpu/moe_kernels.h"
#include "tests/kernels/cases.h"

namespace routemoe::kerneltest {
namespace {

using Table = std::vector<Case>;
using cpu::GateRule;

// Appends a case of a kernel without a CUDA twin.
void push(Table& t, Case c) {
  c.cuda_twin = false;
  t.push_back(std::move(c));
}

std::size_t at(i64 i) {
  return static_cast<std::size_t>(i);
}

// Softmax of a finite row (reference).
std::vector<double> softmax_ref(const double* x, i64 n) {
  std::vector<double> y(at(n));
  if (n == 0) return y;
  const double m = *std::max_element(x, x + n);
  double sum = 0.0;
  for (i64 j = 0; j < n; ++j) sum += std::exp(x[j] - m);
  for (i64 j = 0; j < n; ++j) y[at(j)] = std::exp(x[j] - m) / sum;
  return y;
}

// The k best entries of a row, best first (reference): a stable sort on the key (is NaN, -x),
// so equal values keep their index order (lower index first) and NaNs come after every number.
std::vector<i32> topk_ref(const double* x, i64 e, i64 k) {
  std::vector<i32> order(at(e));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](i32 a, i32 b) {
    const bool na = std::isnan(x[a]), nb = std::isnan(x[b]);
    if (na || nb) return !na && nb;
    return x[a] > x[b];
  });
  order.resize(at(k));
  return order;
}

// k distinct experts of [0, e) per token, in random order, never one of `absent`.
std::vector<i32> distinct_choices(Gen& g, i64 n, i64 e, i64 k, const std::vector<i32>& absent) {
  std::vector<i32> allowed;
  for (i32 x = 0; x < e; ++x)
    if (std::find(absent.begin(), absent.end(), x) == absent.end()) allowed.push_back(x);
  if (static_cast<i64>(allowed.size()) < k) throw std::logic_error("too few experts for k");
  std::vector<i32> out;
  for (i64 i = 0; i < n; ++i) {
    const auto keys = g.uniform(static_cast<i64>(allowed.size()), 0, 1);
    std::vector<std::size_t> order(allowed.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::sort(order.begin(), order.end(),
              [&](std::size_t a, std::size_t b) { return keys[a] < keys[b]; });
    for (i64 j = 0; j < k; ++j) out.push_back(allowed[order[at(j)]]);
  }
  return out;
}

// n ids of [0, e), never one of `absent` (which must leave at least one expert).
std::vector<i32> assignment(Gen& g, i64 n, i64 e, const std::vector<i32>& absent) {
  return distinct_choices(g, n, e, std::min<i64>(e, 1), absent);
}

// The capacity rule, written as ranks (reference): slot (i, j) is the r-th slot of its expert in
// priority order, where r counts the slots (i', j') of the same expert with j' < j, or j' == j
// and i' < i; it is kept iff cap < 0 or r < cap.
std::vector<i64> kept_ref(const std::vector<i32>& choice, i64 n, i64 k, i64 cap) {
  std::vector<i64> kept(at(n * k));
  for (i64 i = 0; i < n; ++i)
    for (i64 j = 0; j < k; ++j) {
      i64 rank = 0;
      for (i64 i2 = 0; i2 < n; ++i2)
        for (i64 j2 = 0; j2 < k; ++j2)
          if (choice[at(i2 * k + j2)] == choice[at(i * k + j)] && (j2 < j || (j2 == j && i2 < i)))
            ++rank;
      kept[at(i * k + j)] = cap < 0 || rank < cap ? 1 : 0;
    }
  return kept;
}

// ================================================================================================
// Attention helpers: causal mask, head average
// ================================================================================================

void add_mask_future(Table& t, i64 rows, i64 tt) {
  Case c;
  c.kernel = "mask_future";
  c.name = fmt::format("rows={} t={}", rows, tt);
  c.generate = [=](Gen& g, Data& d) { d.value("x", rows * tt) = g.uniform(rows * tt, -2, 2); };
  c.forward.cpu = cpu_call([=](const auto& b) { cpu::mask_future(b["x"], rows, tt); });
  // Exact: row r is query i = r % t; its entries j > i become -inf, the others are untouched.
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& x = in["x"];
    auto& y = e.out("x", rows * tt, Rule::Exact);
    for (i64 r = 0; r < rows; ++r)
      for (i64 j = 0; j < tt; ++j) y[at(r * tt + j)].value = j > r % tt ? -kInf : x[at(r * tt + j)];
  };
  c.threads = true;
  if (rows == 0 || tt == 0) set_noop(c);
  push(t, std::move(c));
}

void add_head_mean(Table& t, i64 batch, i64 heads, i64 m, bool fd = false) {
  const i64 np = batch * heads * m, na = batch * m;
  Case c;
  c.kernel = "head_mean";
  c.name = fmt::format("batch={} heads={} m={}", batch, heads, m);
  c.generate = [=](Gen& g, Data& d) {
    d.value("p", np) = g.uniform(np, -1, 1);
    d.value("avg", na);  // overwritten
    d.value("davg", na) = g.uniform(na, -1, 1);
    d.value("dp", np) = g.uniform(np, -1, 1);  // +=
  };
  c.forward.cpu =
      cpu_call([=](const auto& b) { cpu::head_mean(b["p"], b["avg"], batch, heads, m); });
  // avg = (1/H) sum_h p: a sum of H terms and a division: ck = 2 (H + 2), S = (1/H) sum_h |p|.
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& p = in["p"];
    auto& avg = e.out("avg", na);
    for (i64 b = 0; b < batch; ++b)
      for (i64 x = 0; x < m; ++x) {
        double s = 0.0, mag = 0.0;
        for (i64 h = 0; h < heads; ++h) {
          s += p[at((b * heads + h) * m + x)];
          mag += std::abs(p[at((b * heads + h) * m + x)]);
        }
        const double fh = static_cast<double>(heads);
        avg[at(b * m + x)] = {s / fh, 2.0 * (fh + 2.0), mag / fh, 0.0};
      }
  };
  Pass bwd;
  bwd.cpu = cpu_call(
      [=](const auto& b) { cpu::head_mean_backward(b["davg"], b["dp"], batch, heads, m); });
  // dp += davg / H: the rounding of 1/H (or of the quotient), the product and the sum: ck = 4,
  // S = |dp0| + |davg| / H.
  bwd.reference = [=](const Data& in, Expect& e) {
    const auto& davg = in["davg"];
    const auto& dp0 = in["dp"];
    auto& dp = e.out("dp", np);
    const double fh = static_cast<double>(heads);
    for (i64 b = 0; b < batch; ++b)
      for (i64 h = 0; h < heads; ++h)
        for (i64 x = 0; x < m; ++x) {
          const i64 k = (b * heads + h) * m + x;
          const double g = davg[at(b * m + x)] / fh;
          dp[at(k)] = {dp0[at(k)] + g, 4.0, std::abs(dp0[at(k)]) + std::abs(g), 0.0};
        }
  };
  c.backward = std::move(bwd);
  c.threads = true;
  c.fd = fd;
  c.loss = {{"avg", "davg"}};
  c.grads = {{"p", "dp"}};
  // No heads: the mean is undefined and nothing is written.
  if (np == 0) set_noop(c);
  push(t, std::move(c));
}

void attention_helper_cases(Table& t) {
  // Square score matrices: one sequence, batch x heads of them, rows that are not a multiple of
  // t, a single token; more than the parallel threshold (2 x 130 x 130).
  const i64 mask_shapes[][2] = {{1, 1}, {4, 4}, {12, 4}, {7, 3}, {260, 130}, {0, 5}, {3, 0}};
  for (const auto& s : mask_shapes) add_mask_future(t, s[0], s[1]);
  // [batch, heads, T*T] probabilities; one head (the mean is a copy); the parallel threshold.
  const i64 mean_shapes[][3] = {{1, 1, 1}, {2, 3, 16}, {3, 1, 9}, {1, 4, 7}, {4, 8, 1089}};
  for (const auto& s : mean_shapes) add_head_mean(t, s[0], s[1], s[2]);
  for (const auto& s :
       {std::array<i64, 3>{1, 1, 3}, std::array<i64, 3>{2, 3, 4}, std::array<i64, 3>{1, 4, 9}})
    add_head_mean(t, s[0], s[1], s[2], true);
  add_head_mean(t, 0, 4, 9);  // empty batch
  add_head_mean(t, 2, 0, 9);  // no heads
  add_head_mean(t, 2, 3, 0);  // empty matrices
}

// ================================================================================================
// Elementwise and row helpers
// ================================================================================================

enum class MulAlias { None, A, B };

void add_mul(Table& t, i64 n, MulAlias alias) {
  Case c;
  c.kernel = "mul";
  c.name = fmt::format("n={}{}", n,
                       alias == MulAlias::A   ? " y=a"
                       : alias == MulAlias::B ? " y=b"
                                              : "");
  c.generate = [=](Gen& g, Data& d) {
    d.value("a", n) = g.uniform(n, -2, 2);
    d.value("b", n) = g.uniform(n, -2, 2);
    if (alias == MulAlias::A) {
      d.alias("y", "a");
    } else if (alias == MulAlias::B) {
      d.alias("y", "b");
    } else {
      d.value("y", n);
    }
  };
  c.forward.cpu = cpu_call([=](const auto& b) { cpu::mul(b["a"], b["b"], b["y"], n); });
  // One rounding: ck = 1, S = |a b|.
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& a = in["a"];
    const auto& b = in["b"];
    auto& y = e.out("y", n);
    for (i64 i = 0; i < n; ++i) {
      const double v = a[at(i)] * b[at(i)];
      y[at(i)] = {v, 1.0, std::abs(v), 0.0};
    }
  };
  c.threads = true;
  if (n == 0) set_noop(c);
  push(t, std::move(c));
}

struct LseSpec {
  i64 n, e;
  double range = 5.0;    // entries in [-range, range]
  bool shift = true;     // row 2 shifted by +1000 (needs the max subtraction)
  bool neg_inf = false;  // 25% -inf entries (every row keeps a finite one)
  bool nan_row = false;  // a NaN in row 3: its lse is NaN
};

// Reference log-sum-exp of one row and the S of its bound: exp of the max-subtracted arguments
// (in [-range, 0]) costs u (range + 2) relative per term, the sum of e terms e u relative, the log
// turns relative into absolute error, adding the max one rounding of |lse|: ck = 4,
// S = e + range + 8 + |lse| with range = max - min over the finite entries (as for the lse of
// cross_entropy in cases.cpp). e == 0: -inf exactly.
Want lse_ref(const double* x, i64 e) {
  if (e == 0) return {-kInf, 0.0, 0.0, 0.0};
  double mx = -kInf, mn = kInf;
  for (i64 j = 0; j < e; ++j) {
    if (std::isnan(x[j])) return {kNaN, 0.0, 0.0, 0.0};
    mx = std::max(mx, x[j]);
    if (std::isfinite(x[j])) mn = std::min(mn, x[j]);
  }
  double sum = 0.0;
  for (i64 j = 0; j < e; ++j) sum += std::exp(x[j] - mx);
  const double l = mx + std::log(sum);
  return {l, 4.0, static_cast<double>(e) + (mx - mn) + 8.0 + std::abs(l), 0.0};
}

void add_logsumexp(Table& t, const LseSpec& s) {
  const i64 n = s.n, e = s.e;
  Case c;
  c.kernel = "row_logsumexp";
  c.name = fmt::format("n={} e={} range={}{}{}{}", n, e, s.range, flag(s.shift, "shift"),
                       flag(s.neg_inf, "-inf"), flag(s.nan_row, "nan_row"));
  c.generate = [=](Gen& g, Data& d) {
    auto& x = d.value("x", n * e) = g.uniform(n * e, -s.range, s.range);
    if (s.shift && n > 2)
      for (i64 j = 0; j < e; ++j) x[at(2 * e + j)] += 1000.0;
    if (s.neg_inf)
      for (i64 i = 0; i < n; ++i)
        for (i64 j = 0; j < e; ++j)
          if (j != i % e && g.coin(0.25)) x[at(i * e + j)] = -kInf;
    if (s.nan_row && n > 3 && e > 0) x[at(3 * e + e / 2)] = kNaN;
    d.value("out", n);
  };
  c.forward.cpu = cpu_call([=](const auto& b) { cpu::row_logsumexp(b["x"], b["out"], n, e); });
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& x = in["x"];
    auto& out = ex.out("out", n);
    for (i64 i = 0; i < n; ++i) out[at(i)] = lse_ref(x.data() + i * e, e);
  };
  c.threads = true;
  if (n == 0) set_noop(c);
  push(t, std::move(c));
}

struct SoftmaxLseSpec {
  i64 n, e;
  bool inplace = false;  // backward dz == dp
  bool fd = false;
};

// The router's softmax gate: p = softmax(z) and lse = logsumexp(z) forward (softmax_forward of
// kernels.h and row_logsumexp), softmax_lse_backward back.
void add_softmax_lse(Table& t, const SoftmaxLseSpec& s) {
  const i64 n = s.n, e = s.e;
  constexpr double range = 3.0;
  Case c;
  c.kernel = "softmax_lse_backward";
  c.name = fmt::format("n={} e={}{}", n, e, flag(s.inplace, "dz=dp"));
  c.generate = [=](Gen& g, Data& d) {
    d.value("z", n * e) = g.uniform(n * e, -range, range);
    d.value("p", n * e);
    d.value("lse", n);
    d.value("dp", n * e) = g.uniform(n * e, -1, 1);
    d.value("dlse", n) = g.uniform(n, -1, 1);
    if (s.inplace) {
      d.alias("dz", "dp");
    } else {
      d.value("dz", n * e);  // overwritten
    }
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::softmax_forward(b["z"], b["p"], n, e);
    cpu::row_logsumexp(b["z"], b["lse"], n, e);
  });
  // p: the softmax bound of cases.cpp, ck = 2 (e + 32), S = p; lse: lse_ref.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& z = in["z"];
    auto& p = ex.out("p", n * e);
    auto& lse = ex.out("lse", n);
    for (i64 i = 0; i < n; ++i) {
      const auto row = softmax_ref(z.data() + i * e, e);
      for (i64 j = 0; j < e; ++j)
        p[at(i * e + j)] = {row[at(j)], 2.0 * (static_cast<double>(e) + 32.0), row[at(j)], 0.0};
      lse[at(i)] = lse_ref(z.data() + i * e, e);
    }
  };
  Pass bwd;
  bwd.cpu = cpu_call(
      [=](const auto& b) { cpu::softmax_lse_backward(b["p"], b["dp"], b["dlse"], b["dz"], n, e); });
  // dz_j = p_j (dp_j - sum_k dp_k p_k) + dlse p_j: the length-e dot product, the subtraction, two
  // products and the sum: ck = 2 (e + 6), S = |p_j| (|dp_j| + sum_k |dp_k p_k| + |dlse|).
  bwd.reference = [=](const Data& in, Expect& ex) {
    const auto& p = in["p"];
    const auto& dp = in["dp"];
    const auto& dlse = in["dlse"];
    auto& dz = ex.out("dz", n * e);
    for (i64 i = 0; i < n; ++i) {
      double dot = 0.0, sabs = 0.0;
      for (i64 j = 0; j < e; ++j) {
        dot += dp[at(i * e + j)] * p[at(i * e + j)];
        sabs += std::abs(dp[at(i * e + j)] * p[at(i * e + j)]);
      }
      for (i64 j = 0; j < e; ++j) {
        const double pj = p[at(i * e + j)], dpj = dp[at(i * e + j)], dl = dlse[at(i)];
        dz[at(i * e + j)] = {pj * (dpj - dot) + dl * pj, 2.0 * (static_cast<double>(e) + 6.0),
                             std::abs(pj) * (std::abs(dpj) + sabs + std::abs(dl)), 0.0};
      }
    }
  };
  c.backward = std::move(bwd);
  c.threads = true;
  c.fd = s.fd;
  c.loss = {{"p", "dp"}, {"lse", "dlse"}};
  c.grads = {{"z", "dz"}};
  if (n == 0) set_noop(c);
  push(t, std::move(c));
}

void add_row_normalize(Table& t, i64 rows, i64 cols, bool fd = false) {
  const i64 n = rows * cols;
  Case c;
  c.kernel = "row_normalize";
  c.name = fmt::format("rows={} cols={}", rows, cols);
  // Entries of magnitude in [0.2, 1] with random signs: no row near zero (whose direction
  // would be ill-conditioned for the finite differences).
  c.generate = [=](Gen& g, Data& d) {
    auto& x = d.value("x", n) = g.uniform(n, 0.2, 1.0);
    for (double& v : x)
      if (g.coin(0.5)) v = -v;
    d.value("unit", n);
    d.value("norm", rows);
    d.value("dunit", n) = g.uniform(n, -1, 1);
    d.value("dx", n) = g.uniform(n, -1, 1);  // +=
  };
  c.forward.cpu = cpu_call(
      [=](const auto& b) { cpu::row_normalize(b["x"], b["unit"], b["norm"], rows, cols); });
  // norm = sqrt(sum x^2): `cols` roundings of the sum (relative, all terms positive), the sqrt
  // halves them and adds one: ck = 2 (cols + 4), S = norm. unit = x / norm: the norm's error
  // and the division: ck = 2 (cols + 4), S = |unit|.
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& x = in["x"];
    auto& unit = e.out("unit", n);
    auto& norm = e.out("norm", rows);
    const double ck = 2.0 * (static_cast<double>(cols) + 4.0);
    for (i64 r = 0; r < rows; ++r) {
      double s = 0.0;
      for (i64 f = 0; f < cols; ++f) s += x[at(r * cols + f)] * x[at(r * cols + f)];
      const double nrm = std::sqrt(s);
      norm[at(r)] = {nrm, ck, nrm, 0.0};
      for (i64 f = 0; f < cols; ++f) {
        const double q = x[at(r * cols + f)] / nrm;
        unit[at(r * cols + f)] = {q, ck, std::abs(q), 0.0};
      }
    }
  };
  Pass bwd;
  bwd.cpu = cpu_call([=](const auto& b) {
    cpu::row_normalize_backward(b["unit"], b["norm"], b["dunit"], b["dx"], rows, cols);
  });
  // dx += (dq - q <q, dq>) / norm: the length-cols dot product, the product, the subtraction, the
  // division and the sum: ck = 2 (cols + 4), S = |dx0| + (|dq| + |q| sum |q dq|) / norm.
  bwd.reference = [=](const Data& in, Expect& e) {
    const auto& q = in["unit"];
    const auto& nrm = in["norm"];
    const auto& dq = in["dunit"];
    const auto& dx0 = in["dx"];
    auto& dx = e.out("dx", n);
    for (i64 r = 0; r < rows; ++r) {
      double dot = 0.0, dabs = 0.0;
      for (i64 f = 0; f < cols; ++f) {
        dot += q[at(r * cols + f)] * dq[at(r * cols + f)];
        dabs += std::abs(q[at(r * cols + f)] * dq[at(r * cols + f)]);
      }
      for (i64 f = 0; f < cols; ++f) {
        const i64 k = r * cols + f;
        const double v = dx0[at(k)] + (dq[at(k)] - q[at(k)] * dot) / nrm[at(r)];
        dx[at(k)] = {
            v, 2.0 * (static_cast<double>(cols) + 4.0),
            std::abs(dx0[at(k)]) + (std::abs(dq[at(k)]) + std::abs(q[at(k)]) * dabs) / nrm[at(r)],
            0.0};
      }
    }
  };
  c.backward = std::move(bwd);
  c.threads = true;
  c.fd = fd;
  c.loss = {{"unit", "dunit"}};
  c.grads = {{"x", "dx"}};
  if (rows == 0) set_noop(c);
  push(t, std::move(c));
}

void add_broadcast_row(Table& t, i64 n, i64 e, double alpha) {
  Case c;
  c.kernel = "broadcast_row";
  c.name = fmt::format("n={} e={} alpha={}", n, e, alpha);
  c.generate = [=](Gen& g, Data& d) {
    d.value("v", e) = g.uniform(e, -1, 1);
    d.value("x", n * e);  // overwritten
  };
  c.forward.cpu = cpu_call([=](const auto& b) { cpu::broadcast_row(b["v"], alpha, b["x"], n, e); });
  // x = alpha v: the product in double, then the rounding to T (two roundings): ck = 2,
  // S = |alpha v|.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& v = in["v"];
    auto& x = ex.out("x", n * e);
    for (i64 i = 0; i < n; ++i)
      for (i64 j = 0; j < e; ++j)
        x[at(i * e + j)] = {alpha * v[at(j)], 2.0, std::abs(alpha * v[at(j)]), 0.0};
  };
  c.threads = true;
  if (n == 0 || e == 0) set_noop(c);
  push(t, std::move(c));
}

void row_helper_cases(Table& t) {
  for (i64 n : {1, 7, 65, 20011, 0})  // 20011: above the parallel threshold
    for (MulAlias a : {MulAlias::None, MulAlias::A, MulAlias::B}) add_mul(t, n, a);

  const i64 lse_shapes[][2] = {{1, 1}, {3, 7}, {7, 1}, {33, 65}, {300, 65}};
  for (const auto& sh : lse_shapes) {
    add_logsumexp(t, {sh[0], sh[1]});
    LseSpec s{sh[0], sh[1]};
    s.neg_inf = true;
    add_logsumexp(t, s);
  }
  for (const auto& sh : {std::array<i64, 2>{5, 9}, std::array<i64, 2>{6, 300}}) {
    LseSpec s{sh[0], sh[1]};
    s.nan_row = true;
    add_logsumexp(t, s);
  }
  add_logsumexp(t, {3, 0});  // no columns: -inf
  add_logsumexp(t, {0, 7});  // empty batch

  const i64 slb_shapes[][2] = {{1, 1}, {3, 7}, {33, 65}, {5, 1}, {300, 65}};
  for (const auto& sh : slb_shapes)
    for (bool inplace : {false, true}) add_softmax_lse(t, {sh[0], sh[1], inplace});
  for (const auto& sh : {std::array<i64, 2>{1, 1}, std::array<i64, 2>{3, 7},
                         std::array<i64, 2>{5, 2}, std::array<i64, 2>{2, 16}})
    add_softmax_lse(t, {sh[0], sh[1], false, true});
  t.back().fd_float = true;    // 2 x 16
  add_softmax_lse(t, {0, 7});  // empty batch

  const i64 norm_shapes[][2] = {{1, 1}, {4, 7}, {7, 1}, {16, 65}, {3, 130}};
  for (const auto& sh : norm_shapes) add_row_normalize(t, sh[0], sh[1]);
  for (const auto& sh :
       {std::array<i64, 2>{1, 1}, std::array<i64, 2>{3, 5}, std::array<i64, 2>{4, 2}})
    add_row_normalize(t, sh[0], sh[1], true);
  add_row_normalize(t, 0, 5);  // no rows

  for (const auto& sh : {std::array<i64, 2>{1, 1}, std::array<i64, 2>{7, 4},
                         std::array<i64, 2>{65, 33}, std::array<i64, 2>{300, 65}})
    for (double alpha : {0.3, -1.25}) add_broadcast_row(t, sh[0], sh[1], alpha);
  add_broadcast_row(t, 0, 4, 0.3);  // empty batch
  add_broadcast_row(t, 5, 0, 0.3);  // no columns
}

// ================================================================================================
// Top-k and gates
// ================================================================================================

enum class TopkValues {
  Random,  // uniform in [-3, 3]
  Ties,    // integers in [0, 3]: many ties
  NaN,     // ties, 20% NaN, a NaN at index 0 of every row, row 1 all NaN
  Inf,     // ties, 20% -inf and 10% +inf
};

const char* topk_values_name(TopkValues v) {
  switch (v) {
    case TopkValues::Random:
      return "random";
    case TopkValues::Ties:
      return "ties";
    case TopkValues::NaN:
      return "nan";
    case TopkValues::Inf:
      return "inf";
  }
  return "?";
}

void add_topk_rows(Table& t, i64 n, i64 e, i64 k, TopkValues values) {
  Case c;
  c.kernel = "topk_rows";
  c.name = fmt::format("n={} e={} k={} {}", n, e, k, topk_values_name(values));
  c.generate = [=](Gen& g, Data& d) {
    auto& x = d.value("x", n * e) = g.uniform(n * e, -3, 3);
    if (values != TopkValues::Random)
      for (double& v : x) v = std::floor(v / 1.5) + 2.0;  // {0, 1, 2, 3}
    if (values == TopkValues::NaN) {
      for (double& v : x)
        if (g.coin(0.2)) v = kNaN;
      for (i64 i = 0; i < n; ++i) x[at(i * e)] = kNaN;
      if (n > 1)
        for (i64 j = 0; j < e; ++j) x[at(e + j)] = kNaN;
    }
    if (values == TopkValues::Inf)
      for (double& v : x) {
        const double r = g.uniform1(0, 1);
        if (r < 0.2) {
          v = -kInf;
        } else if (r < 0.3) {
          v = kInf;
        }
      }
    d.index("idx", n * k, -5);  // overwritten
  };
  c.forward.cpu = cpu_call([=](const auto& b) { cpu::topk_rows(b["x"], b.ids("idx"), n, e, k); });
  // Exact: the k best, best first, ties to the lower index, NaN after every number.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& x = in["x"];
    auto& idx = ex.out("idx", n * k, Rule::Exact);
    for (i64 i = 0; i < n; ++i) {
      const auto best = topk_ref(x.data() + i * e, e, k);
      for (i64 j = 0; j < k; ++j) idx[at(i * k + j)].value = best[at(j)];
    }
  };
  c.threads = true;
  if (n == 0) set_noop(c);
  push(t, std::move(c));
}

struct GateSpec {
  i64 n, e, k;
  GateRule rule;
  bool fd = false;  // scores separated by at least 0.3 (no near-ties)
};

void add_topk_gates(Table& t, const GateSpec& s) {
  const i64 n = s.n, e = s.e, k = s.k;
  const bool renorm = s.rule == GateRule::Renormalize;
  Case c;
  c.kernel = "topk_gates";
  c.name = fmt::format("n={} e={} k={} {}", n, e, k, renorm ? "renormalize" : "softmax_of_chosen");
  // Renormalize: s are probabilities (softmax rows of scores in [-3, 3]); SoftmaxOfChosen: s are
  // the scores. The choice is the top-k of s, as the MoE layer takes it.
  c.generate = [=](Gen& g, Data& d) {
    std::vector<double> z = g.uniform(n * e, -3, 3);
    if (s.fd)
      for (i64 i = 0; i < n; ++i) {  // a random permutation of 0.5 * {0, .., e-1}, +-0.1
        const auto perm = distinct_choices(g, 1, e, e, {});
        for (i64 j = 0; j < e; ++j)
          z[at(i * e + j)] =
              0.5 * perm[at(j)] - 0.25 * static_cast<double>(e) + g.uniform1(-0.1, 0.1);
      }
    auto& sv = d.value("s", n * e);
    for (i64 i = 0; i < n; ++i) {
      const auto row = renorm ? softmax_ref(z.data() + i * e, e)
                              : std::vector<double>(z.begin() + i * e, z.begin() + (i + 1) * e);
      std::copy(row.begin(), row.end(), sv.begin() + i * e);
    }
    auto& choice = d.index("choice", n * k);
    for (i64 i = 0; i < n; ++i) {
      const auto best = topk_ref(sv.data() + i * e, e, k);
      std::copy(best.begin(), best.end(), choice.begin() + i * k);
    }
    d.value("gates", n * k);
    d.index("top1", n, -5);
    d.value("dgates", n * k) = g.uniform(n * k, -1, 1);
    d.value("ds", n * e);  // overwritten
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::topk_gates_forward(b["s"], b.ids("choice"), b["gates"], b.ids("top1"), n, e, k, s.rule);
  });
  // Renormalize: g_j = s_j / sum_m s_m over the chosen (positive) s: the length-k sum and the
  // division: ck = 2 (k + 2), S = g_j.
  // SoftmaxOfChosen: g_j = exp(s_j - max) / sum_m exp(s_m - max): the softmax bound of cases.cpp
  // over k terms, ck = 2 (k + 32), S = g_j. top1 = the first choice, exactly.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& sv = in["s"];
    const auto& choice = in.ids("choice");
    auto& gates = ex.out("gates", n * k);
    auto& top1 = ex.out("top1", n, Rule::Exact);
    const double fk = static_cast<double>(k);
    for (i64 i = 0; i < n; ++i) {
      std::vector<double> chosen(at(k));
      for (i64 j = 0; j < k; ++j) chosen[at(j)] = sv[at(i * e + choice[at(i * k + j)])];
      std::vector<double> g(at(k));
      if (renorm) {
        const double z = std::accumulate(chosen.begin(), chosen.end(), 0.0);
        for (i64 j = 0; j < k; ++j) g[at(j)] = chosen[at(j)] / z;
      } else {
        g = softmax_ref(chosen.data(), k);
      }
      for (i64 j = 0; j < k; ++j)
        gates[at(i * k + j)] = {g[at(j)], renorm ? 2.0 * (fk + 2.0) : 2.0 * (fk + 32.0),
                                std::abs(g[at(j)]), 0.0};
      top1[at(i)].value = choice[at(i * k)];
    }
  };
  Pass bwd;
  bwd.cpu = cpu_call([=](const auto& b) {
    cpu::topk_gates_backward(b["s"], b.ids("choice"), b["gates"], b["dgates"], b["ds"], n, e, k,
                             s.rule);
  });
  // With q = sum_m dg_m g_m (a length-k dot product), at the chosen experts
  //   SoftmaxOfChosen: ds_j = g_j (dg_j - q):         ck = 2 (k + 4), S = |g_j| (|dg_j| + Q);
  //   Renormalize:     ds_j = (dg_j - q) / sum_m s_m: ck = 2 (k + 4), S = (|dg_j| + Q) / sum s;
  // Q = sum_m |dg_m g_m|; every other entry exactly 0.
  bwd.reference = [=](const Data& in, Expect& ex) {
    const auto& sv = in["s"];
    const auto& choice = in.ids("choice");
    const auto& gates = in["gates"];
    const auto& dg = in["dgates"];
    auto& ds = ex.out("ds", n * e);  // zeros (tolerance 0) off the chosen experts
    const double ck = 2.0 * (static_cast<double>(k) + 4.0);
    for (i64 i = 0; i < n; ++i) {
      double q = 0.0, qabs = 0.0, z = 0.0;
      for (i64 j = 0; j < k; ++j) {
        q += dg[at(i * k + j)] * gates[at(i * k + j)];
        qabs += std::abs(dg[at(i * k + j)] * gates[at(i * k + j)]);
        z += sv[at(i * e + choice[at(i * k + j)])];
      }
      for (i64 j = 0; j < k; ++j) {
        const double gj = gates[at(i * k + j)], dgj = dg[at(i * k + j)];
        Want& w = ds[at(i * e + choice[at(i * k + j)])];
        if (renorm) {
          w = {(dgj - q) / z, ck, (std::abs(dgj) + qabs) / z, 0.0};
        } else {
          w = {gj * (dgj - q), ck, std::abs(gj) * (std::abs(dgj) + qabs), 0.0};
        }
      }
    }
  };
  c.backward = std::move(bwd);
  c.fd = s.fd;
  c.loss = {{"gates", "dgates"}};
  c.grads = {{"s", "ds"}};
  if (n == 0) set_noop(c);
  push(t, std::move(c));
}

void topk_cases(Table& t) {
  // k = 1, k = e, one expert, ties (lower index first), NaN (never ahead of a number, also at
  // index 0), infinities; more than the parallel threshold (600 x 16 x 2).
  const i64 shapes[][3] = {{1, 1, 1}, {5, 4, 1},  {5, 4, 2}, {5, 4, 4},
                           {9, 8, 3}, {3, 33, 5}, {7, 3, 3}, {600, 16, 2}};
  for (const auto& sh : shapes)
    for (TopkValues v : {TopkValues::Random, TopkValues::Ties, TopkValues::NaN, TopkValues::Inf})
      add_topk_rows(t, sh[0], sh[1], sh[2], v);
  add_topk_rows(t, 0, 4, 2, TopkValues::Random);  // empty batch

  for (GateRule rule : {GateRule::Renormalize, GateRule::SoftmaxOfChosen}) {
    const i64 ref_shapes[][3] = {{1, 1, 1}, {5, 4, 1},  {5, 4, 2},  {5, 4, 4},
                                 {9, 8, 3}, {3, 33, 5}, {65, 16, 4}};
    for (const auto& sh : ref_shapes) add_topk_gates(t, {sh[0], sh[1], sh[2], rule});
    // Gradient checks: k = 1 (gate 1, gradient 0), 1 < k < e, k = e.
    const i64 fd_shapes[][3] = {{3, 4, 1}, {3, 4, 2}, {2, 5, 3}, {3, 4, 4}};
    for (const auto& sh : fd_shapes) {
      add_topk_gates(t, {sh[0], sh[1], sh[2], rule, true});
      t.back().fd_float = sh[2] == 3;
    }
    add_topk_gates(t, {0, 4, 2, rule});  // empty batch
  }
}

// ================================================================================================
// Auxiliary-loss statistics
// ================================================================================================

void add_top1_fraction(Table& t, i64 n, i64 e, std::vector<i32> absent) {
  Case c;
  c.kernel = "top1_fraction";
  c.name = fmt::format("n={} e={} absent={}", n, e, fmt::join(absent, ","));
  c.generate = [=](Gen& g, Data& d) {
    d.index("top1", n) = assignment(g, n, e, absent);
    d.value("frac", e);  // overwritten
  };
  c.forward.cpu =
      cpu_call([=](const auto& b) { cpu::top1_fraction(b.ids("top1"), b["frac"], n, e); });
  // frac = count / n: an exact count, a division and a rounding: ck = 2, S = frac; all zero when
  // n == 0 (exact).
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& top1 = in.ids("top1");
    auto& frac = ex.out("frac", e);
    std::vector<double> count(at(e), 0.0);
    for (i32 x : top1) count[at(x)] += 1.0;
    for (i64 x = 0; x < e; ++x) {
      const double f = n > 0 ? count[at(x)] / static_cast<double>(n) : 0.0;
      frac[at(x)] = {f, 2.0, f, 0.0};
    }
  };
  c.threads = true;
  if (e == 0) set_noop(c);
  push(t, std::move(c));
}

// Routing probabilities [n, e] (softmax rows) and the top-1 fractions of a random assignment that
// leaves `absent` experts without tokens.
void routing_stats(Gen& g, Data& d, i64 n, i64 e, const std::vector<i32>& absent) {
  auto& probs = d.value("probs", n * e);
  const auto z = g.uniform(n * e, -3, 3);
  for (i64 i = 0; i < n; ++i) {
    const auto row = softmax_ref(z.data() + i * e, e);
    std::copy(row.begin(), row.end(), probs.begin() + i * e);
  }
  auto& frac = d.value("frac", e, 0.0);
  for (i32 x : assignment(g, n, e, absent)) frac[at(x)] += 1.0 / static_cast<double>(n);
}

void add_switch_loss(Table& t, i64 n, i64 e, std::vector<i32> absent) {
  Case c;
  c.kernel = "switch_loss";
  c.name = fmt::format("n={} e={} absent={}", n, e, fmt::join(absent, ","));
  c.generate = [=](Gen& g, Data& d) {
    routing_stats(g, d, n, e, absent);
    d.wide("result", 1);
  };
  c.forward.cpu = cpu_call(
      [=](const auto& b) { *b.wide("result") = cpu::switch_loss(b["frac"], b["probs"], n, e); });
  // E sum_e f_e P_e, P_e = (1/n) sum_i p_ie, accumulated in double for either type (inputs
  // exact in double): n + e + 4 roundings of S = E sum_e |f_e| (1/n) sum_i |p_ie|: ck =
  // 2 (n + e + 4), Rule::Wide. n == 0: exactly 0.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& frac = in["frac"];
    const auto& probs = in["probs"];
    double sw = 0.0, mag = 0.0;
    for (i64 x = 0; x < e; ++x) {
      double pe = 0.0, pabs = 0.0;
      for (i64 i = 0; i < n; ++i) {
        pe += probs[at(i * e + x)];
        pabs += std::abs(probs[at(i * e + x)]);
      }
      if (n > 0) {
        sw += frac[at(x)] * pe / static_cast<double>(n);
        mag += std::abs(frac[at(x)]) * pabs / static_cast<double>(n);
      }
    }
    const double fe = static_cast<double>(e);
    ex.out("result", 1, Rule::Wide)[0] = {fe * sw, 2.0 * (static_cast<double>(n) + fe + 4.0),
                                          fe * mag, 0.0};
  };
  c.threads = true;
  push(t, std::move(c));
}

void add_mean_square(Table& t, i64 n) {
  Case c;
  c.kernel = "mean_square";
  c.name = fmt::format("n={}", n);
  c.generate = [=](Gen& g, Data& d) {
    d.value("x", n) = g.uniform(n, -3, 3);
    d.wide("result", 1);
  };
  c.forward.cpu = cpu_call([=](const auto& b) { *b.wide("result") = cpu::mean_square(b["x"], n); });
  // (1/n) sum x^2 in double (squares of floats exact): ck = 2 (n + 2), S = the value; n == 0:
  // exactly 0.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    double s = 0.0;
    for (double v : in["x"]) s += v * v;
    const double v = n > 0 ? s / static_cast<double>(n) : 0.0;
    ex.out("result", 1, Rule::Wide)[0] = {v, 2.0 * (static_cast<double>(n) + 2.0), v, 0.0};
  };
  c.threads = true;
  push(t, std::move(c));
}

void aux_cases(Table& t) {
  struct Shape {
    i64 n, e;
    std::vector<i32> absent;
  };
  const std::vector<Shape> shapes = {
      {1, 1, {}},      {7, 4, {}}, {7, 4, {3}}, {33, 8, {0, 5}}, {10, 6, {1, 2, 3, 4, 5}},
      {1000, 16, {7}}, {0, 4, {}}};
  for (const Shape& s : shapes) {
    add_top1_fraction(t, s.n, s.e, s.absent);
    add_switch_loss(t, s.n, s.e, s.absent);
  }
  add_top1_fraction(t, 0, 0, {});  // nothing at all
  for (i64 n : {1, 7, 65, 1001, 0}) add_mean_square(t, n);
}

// ================================================================================================
// Capacity and the slot plan
// ================================================================================================

struct SlotSpec {
  i64 n, e, k;
  i64 cap;  // < 0: unlimited
  std::vector<i32> absent;
};

std::string slot_name(const SlotSpec& s) {
  return fmt::format("n={} e={} k={} cap={} absent={}", s.n, s.e, s.k, s.cap,
                     fmt::join(s.absent, ","));
}

void add_capacity_keep(Table& t, const SlotSpec& s) {
  const i64 n = s.n, e = s.e, k = s.k, cap = s.cap;
  Case c;
  c.kernel = "capacity_keep";
  c.name = slot_name(s);
  c.generate = [=](Gen& g, Data& d) {
    d.index("choice", n * k) = distinct_choices(g, n, e, k, s.absent);
    d.bytes("kept", n * k, 7);  // overwritten
    d.longs("counts", e, -3);   // overwritten
    d.longs("dropped", 1, -3);  // the return value
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    *b.longs("dropped") =
        cpu::capacity_keep(b.ids("choice"), b.bytes("kept"), b.longs("counts"), n, e, k, cap);
  });
  // Exact: kept by rank (kept_ref), counts the kept slots per expert, dropped the others.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& choice = in.ids("choice");
    const auto kept = kept_ref(choice, n, k, cap);
    auto& kout = ex.out("kept", n * k, Rule::Exact);
    auto& counts = ex.out("counts", e, Rule::Exact);
    i64 dropped = 0;
    for (i64 q = 0; q < n * k; ++q) {
      kout[at(q)].value = static_cast<double>(kept[at(q)]);
      if (kept[at(q)] != 0) {
        counts[at(choice[at(q)])].value += 1.0;
      } else {
        ++dropped;
      }
    }
    ex.out("dropped", 1, Rule::Exact)[0].value = static_cast<double>(dropped);
  };
  c.threads = true;
  push(t, std::move(c));
}

void add_expert_offsets(Table& t, i64 e) {
  Case c;
  c.kernel = "expert_offsets";
  c.name = fmt::format("e={}", e);
  c.generate = [=](Gen& g, Data& d) {
    auto& counts = d.longs("counts", e);
    const auto ids = g.ids(e, 10);  // counts in [0, 9], zeros (absent experts) included
    for (i64 x = 0; x < e; ++x) counts[at(x)] = ids[at(x)] < 3 ? 0 : ids[at(x)];
    d.longs("offset", e + 1, -3);  // overwritten
  };
  c.forward.cpu = cpu_call(
      [=](const auto& b) { cpu::expert_offsets(b.longs("counts"), b.longs("offset"), e); });
  // Exact prefix sums.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& counts = in.ints("counts");
    auto& off = ex.out("offset", e + 1, Rule::Exact);
    double acc = 0.0;
    off[0].value = 0.0;
    for (i64 x = 0; x < e; ++x) off[at(x + 1)].value = acc += static_cast<double>(counts[at(x)]);
  };
  c.threads = true;
  push(t, std::move(c));
}

void add_slot_plan(Table& t, const SlotSpec& s) {
  const i64 n = s.n, e = s.e, k = s.k;
  Case c;
  c.kernel = "slot_plan";
  c.name = slot_name(s);
  // The MoE layer's inputs: choices, the kept flags of the capacity rule, the offsets of the
  // kept counts.
  c.generate = [=](Gen& g, Data& d) {
    const auto choice = distinct_choices(g, n, e, k, s.absent);
    const auto kept = kept_ref(choice, n, k, s.cap);
    d.index("choice", n * k) = choice;
    d.bytes("kept", n * k) = kept;
    d.value("gates", n * k) = g.uniform(n * k, 0, 1);
    auto& off = d.longs("offset", e + 1, 0);
    for (i64 q = 0; q < n * k; ++q)
      if (kept[at(q)] != 0) ++off[at(choice[at(q)] + 1)];
    for (i64 x = 0; x < e; ++x) off[at(x + 1)] += off[at(x)];
    const i64 slots = off[at(e)];
    d.index("slot_token", slots, -5);  // overwritten
    d.index("slot_pos", slots, -5);    // overwritten
    d.value("slot_gate", slots);       // overwritten
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::slot_plan(b.ids("choice"), b.bytes("kept"), b["gates"], b.longs("offset"),
                   b.ids("slot_token"), b.ids("slot_pos"), b["slot_gate"], n, e, k);
  });
  // Exact: kept slots grouped by expert (in expert order), tokens in order within an expert.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& choice = in.ids("choice");
    const auto& kept = in.ints("kept");
    const auto& gates = in["gates"];
    std::vector<double> token, pos, gate;
    for (i64 x = 0; x < e; ++x)
      for (i64 i = 0; i < n; ++i)
        for (i64 j = 0; j < k; ++j)
          if (kept[at(i * k + j)] != 0 && choice[at(i * k + j)] == x) {
            token.push_back(static_cast<double>(i));
            pos.push_back(static_cast<double>(i * k + j));
            gate.push_back(gates[at(i * k + j)]);
          }
    const i64 slots = static_cast<i64>(token.size());
    auto& ot = ex.out("slot_token", slots, Rule::Exact);
    auto& op = ex.out("slot_pos", slots, Rule::Exact);
    auto& og = ex.out("slot_gate", slots, Rule::Exact);
    for (i64 q = 0; q < slots; ++q) {
      ot[at(q)].value = token[at(q)];
      op[at(q)].value = pos[at(q)];
      og[at(q)].value = gate[at(q)];
    }
  };
  c.threads = true;
  if (n == 0) set_noop(c);
  push(t, std::move(c));
}

void slot_cases(Table& t) {
  // Unlimited, capacity 0 (everything dropped), tight and loose capacities; k = 1 and k = e;
  // absent experts; first choices admitted before second choices.
  const std::vector<SlotSpec> specs = {
      {1, 1, 1, -1, {}},     {6, 4, 1, -1, {}},  {6, 4, 2, -1, {2}}, {6, 4, 4, -1, {}},
      {6, 4, 2, 0, {}},      {6, 4, 2, 1, {}},   {9, 4, 2, 3, {1}},  {9, 4, 4, 5, {}},
      {12, 6, 3, 4, {0, 5}}, {33, 8, 2, 9, {3}}, {33, 8, 1, 2, {}},  {300, 16, 2, 40, {15}},
      {8, 4, 2, 100, {}},    {0, 4, 2, 3, {}},   {0, 4, 2, -1, {}}};
  for (const SlotSpec& s : specs) {
    add_capacity_keep(t, s);
    add_slot_plan(t, s);
  }
  for (i64 e : {1, 4, 17, 0}) add_expert_offsets(t, e);
}

// ================================================================================================
// Adaptive Clustering router statistics
// ================================================================================================

struct AcSpec {
  i64 n, d, e;
  std::vector<i32> absent;
};

std::string ac_name(const AcSpec& s) {
  return fmt::format("n={} d={} e={} absent={}", s.n, s.d, s.e, fmt::join(s.absent, ","));
}

// The per-expert sums and counts of `assign` over u (double, reference).
void expert_sums_ref(const std::vector<double>& u, const std::vector<i32>& assign, i64 d, i64 e,
                     std::vector<double>& sum, std::vector<double>& count) {
  sum.assign(at(e * d), 0.0);
  count.assign(at(e), 0.0);
  for (std::size_t i = 0; i < assign.size(); ++i) {
    count[at(assign[i])] += 1.0;
    for (i64 f = 0; f < d; ++f) sum[at(assign[i] * d + f)] += u[i * at(d) + at(f)];
  }
}

void add_ac_sums(Table& t, const AcSpec& s) {
  const i64 n = s.n, d = s.d, e = s.e;
  Case c;
  c.kernel = "ac_expert_sums";
  c.name = ac_name(s);
  c.generate = [=](Gen& g, Data& dd) {
    dd.value("u", n * d) = g.uniform(n * d, -2, 2);
    dd.index("assign", n) = assignment(g, n, e, s.absent);
    dd.wide("sum", e * d) = g.uniform(e * d, -1, 1);  // +=
    auto& count = dd.wide("count", e);                // +=, integers
    for (i64 x = 0; x < e; ++x) count[at(x)] = std::floor(g.uniform1(0, 4));
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::ac_expert_sums(b["u"], b.ids("assign"), b.wide("sum"), b.wide("count"), n, d, e);
  });
  // In double for either type (Rule::Wide): sum += the rows of the expert's n_e tokens, ck =
  // 2 (n_e + 2), S = |sum0| + sum |u|; count += n_e exactly; experts without tokens unchanged.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& u = in["u"];
    const auto& assign = in.ids("assign");
    std::vector<double> sum, count, mag(at(e * d), 0.0);
    expert_sums_ref(u, assign, d, e, sum, count);
    for (i64 i = 0; i < n; ++i)
      for (i64 f = 0; f < d; ++f) mag[at(assign[at(i)] * d + f)] += std::abs(u[at(i * d + f)]);
    const auto& sum0 = in["sum"];
    const auto& count0 = in["count"];
    auto& osum = ex.out("sum", e * d, Rule::Wide);
    auto& ocount = ex.out("count", e, Rule::Wide);
    for (i64 x = 0; x < e; ++x) {
      const double ne = count[at(x)];
      ocount[at(x)] = {count0[at(x)] + ne, 0.0, 0.0, 0.0};
      for (i64 f = 0; f < d; ++f) {
        const i64 q = x * d + f;
        osum[at(q)] = {sum0[at(q)] + sum[at(q)], ne > 0 ? 2.0 * (ne + 2.0) : 0.0,
                       ne > 0 ? std::abs(sum0[at(q)]) + mag[at(q)] : 0.0, 0.0};
      }
    }
  };
  c.threads = true;
  if (n == 0) set_noop(c);
  push(t, std::move(c));
}

void add_ac_absdev(Table& t, const AcSpec& s) {
  const i64 n = s.n, d = s.d, e = s.e;
  Case c;
  c.kernel = "ac_expert_absdev";
  c.name = ac_name(s);
  // sum and count of the tokens (as the router computes them); absent experts have count 0 and
  // sum 0, which the kernel must not divide.
  c.generate = [=](Gen& g, Data& dd) {
    const auto u = g.uniform(n * d, -2, 2);
    const auto assign = assignment(g, n, e, s.absent);
    std::vector<double> sum, count;
    expert_sums_ref(u, assign, d, e, sum, count);
    dd.value("u", n * d) = u;
    dd.index("assign", n) = assign;
    dd.wide("sum", e * d) = sum;
    dd.wide("count", e) = count;
    dd.wide("absdev", e * d) = g.uniform(e * d, 0, 1);  // +=
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::ac_expert_absdev(b["u"], b.ids("assign"), b.wide("sum"), b.wide("count"), b.wide("absdev"),
                          n, d, e);
  });
  // In double (Rule::Wide): absdev += sum |u - mean| over the expert's n_e tokens, mean =
  // sum / count: ck = 2 (n_e + 4), S = |absdev0| + sum (|u| + |mean|); absent experts unchanged.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& u = in["u"];
    const auto& assign = in.ids("assign");
    const auto& sum = in["sum"];
    const auto& count = in["count"];
    const auto& a0 = in["absdev"];
    std::vector<double> acc(a0), mag(at(e * d)), ne(at(e), 0.0);
    for (i64 q = 0; q < e * d; ++q) mag[at(q)] = std::abs(a0[at(q)]);
    for (i64 i = 0; i < n; ++i) {
      const i64 x = assign[at(i)];
      ne[at(x)] += 1.0;
      for (i64 f = 0; f < d; ++f) {
        const double mean = sum[at(x * d + f)] / count[at(x)];
        acc[at(x * d + f)] += std::abs(u[at(i * d + f)] - mean);
        mag[at(x * d + f)] += std::abs(u[at(i * d + f)]) + std::abs(mean);
      }
    }
    auto& out = ex.out("absdev", e * d, Rule::Wide);
    for (i64 x = 0; x < e; ++x)
      for (i64 f = 0; f < d; ++f) {
        const i64 q = x * d + f;
        out[at(q)] = {acc[at(q)], ne[at(x)] > 0 ? 2.0 * (ne[at(x)] + 4.0) : 0.0,
                      ne[at(x)] > 0 ? mag[at(q)] : 0.0, 0.0};
      }
  };
  c.threads = true;
  if (n == 0) set_noop(c);
  push(t, std::move(c));
}

struct AcWeightSpec {
  i64 d, e;
  std::vector<i32> absent;
  bool clip = false;  // one dispersion 0 (w = 1 / eps) among enough entries to be clipped
  double eps = 1e-4, clip_factor = 10.0;
};

// The feature weights of docs/model.md ("ac") from per-expert absolute deviations and counts
// (reference): for present experts (count > 0) w = 1 / (absdev / count + eps), clipped at
// clip_factor x the mean of all their entries, each column divided by its mean over them; absent
// rows 0. `clipped` counts the entries the clip changed.
std::vector<double> ac_weights_ref(const std::vector<double>& absdev,
                                   const std::vector<double>& count, i64 d, i64 e, double eps,
                                   double clip_factor, int* clipped = nullptr) {
  std::vector<double> w(at(e * d), 0.0);
  std::vector<i64> present;
  for (i64 x = 0; x < e; ++x)
    if (count[at(x)] > 0) present.push_back(x);
  if (present.empty() || d == 0) return w;
  double mean = 0.0;
  for (i64 x : present)
    for (i64 f = 0; f < d; ++f) {
      w[at(x * d + f)] = 1.0 / (absdev[at(x * d + f)] / count[at(x)] + eps);
      mean += w[at(x * d + f)];
    }
  mean /= static_cast<double>(present.size()) * static_cast<double>(d);
  int nclip = 0;
  for (i64 x : present)
    for (i64 f = 0; f < d; ++f)
      if (w[at(x * d + f)] > clip_factor * mean) {
        w[at(x * d + f)] = clip_factor * mean;
        ++nclip;
      }
  if (clipped != nullptr) *clipped = nclip;
  for (i64 f = 0; f < d; ++f) {
    double col = 0.0;
    for (i64 x : present) col += w[at(x * d + f)];
    col /= static_cast<double>(present.size());
    for (i64 x : present) w[at(x * d + f)] /= col;
  }
  return w;
}

void add_ac_weights(Table& t, const AcWeightSpec& s) {
  const i64 d = s.d, e = s.e;
  Case c;
  c.kernel = "ac_expert_weights";
  c.name = fmt::format("d={} e={} absent={}{} eps={} clip={}", d, e, fmt::join(s.absent, ","),
                       flag(s.clip, "clipped"), s.eps, s.clip_factor);
  // Present experts: 1..6 tokens, mean absolute deviations in [0.05, 1]. Absent experts: count
  // 0 and NaN deviations (a kernel that reads them turns every weight NaN).
  c.generate = [=](Gen& g, Data& dd) {
    auto& count = dd.wide("count", e);
    auto& absdev = dd.wide("absdev", e * d);
    for (i64 x = 0; x < e; ++x) {
      const bool absent = std::find(s.absent.begin(), s.absent.end(), x) != s.absent.end();
      count[at(x)] = absent ? 0.0 : std::floor(g.uniform1(1, 7));
      for (i64 f = 0; f < d; ++f)
        absdev[at(x * d + f)] = absent ? kNaN : count[at(x)] * g.uniform1(0.05, 1.0);
    }
    if (s.clip) {
      for (i64 x = 0; x < e; ++x)
        if (count[at(x)] > 0) {
          absdev[at(x * d)] = 0.0;
          break;
        }
      int clipped = 0;
      ac_weights_ref(absdev, count, d, e, s.eps, s.clip_factor, &clipped);
      if (clipped == 0) throw std::logic_error("ac_expert_weights case: the clip is not active");
    }
    dd.value("w", e * d);  // overwritten
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::ac_expert_weights(b.wide("absdev"), b.wide("count"), b["w"], d, e, s.eps, s.clip_factor);
  });
  // In double, one rounding to T at the end: the inverse (3 roundings), the mean of P d entries,
  // the clip (min, 1-Lipschitz), the column mean of P entries and the division: ck =
  // 2 (P d + P + 8), S = |w| (all terms positive: no cancellation). Absent rows exactly 0.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& count = in["count"];
    const auto w = ac_weights_ref(in["absdev"], count, d, e, s.eps, s.clip_factor);
    double present = 0.0;
    for (double v : count) present += v > 0 ? 1.0 : 0.0;
    const double ck = 2.0 * (present * static_cast<double>(d) + present + 8.0);
    auto& out = ex.out("w", e * d);
    for (i64 q = 0; q < e * d; ++q) out[at(q)] = {w[at(q)], ck, std::abs(w[at(q)]), 0.0};
  };
  c.threads = true;
  if (d == 0 || e == 0) set_noop(c);
  push(t, std::move(c));
}

void ac_cases(Table& t) {
  const std::vector<AcSpec> specs = {{1, 1, 1, {}},           {6, 2, 3, {1}},  {12, 3, 4, {}},
                                     {33, 7, 8, {0, 6}},      {65, 5, 4, {3}}, {200, 16, 8, {2}},
                                     {9, 4, 5, {0, 1, 2, 3}}, {0, 3, 4, {}}};
  for (const AcSpec& s : specs) {
    add_ac_sums(t, s);
    add_ac_absdev(t, s);
  }
  const std::vector<AcWeightSpec> wspecs = {{1, 1, {}},
                                            {2, 3, {1}},
                                            {3, 4, {}},
                                            {7, 8, {0, 6}},
                                            {16, 8, {2}},
                                            {5, 4, {0, 1, 2}},
                                            {5, 4, {}, true},
                                            {7, 8, {0, 6}, true},
                                            {16, 8, {2}, true},
                                            {4, 6, {}, true, 1e-2, 3.0},
                                            {3, 4, {0, 1, 2, 3}},
                                            {0, 3, {}},
                                            {3, 0, {}}};
  for (const AcWeightSpec& s : wspecs) add_ac_weights(t, s);
}

// ================================================================================================
// Graph routers: statistics of the mixing matrix
// ================================================================================================

void add_mixing_row_stats(Table& t, i64 batch, i64 tt, bool causal, double alpha) {
  Case c;
  c.kernel = "mixing_row_stats";
  c.name = fmt::format("batch={} t={} causal={} alpha={}", batch, tt, causal, alpha);
  c.generate = [=](Gen& g, Data& d) {
    // Rows of distributions over the tokens each row may use, with some exact zeros (0 log 0);
    // causal rows have zeros past the diagonal.
    auto& a = d.value("a", batch * tt * tt, 0.0);
    for (i64 r = 0; r < batch * tt; ++r) {
      const i64 n = causal ? r % tt + 1 : tt;
      double sum = 0.0;
      for (i64 j = 0; j < n; ++j)
        sum += a[at(r * tt + j)] = g.coin(0.2) ? 0.0 : g.uniform1(0.05, 1);
      if (sum == 0.0) sum = a[at(r * tt)] = 1.0;
      for (i64 j = 0; j < n; ++j) a[at(r * tt + j)] /= sum;
    }
    d.wide("out", 5);
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::mixing_row_stats(b["a"], alpha, batch, tt, causal, b.wide("out"));
  });
  // In double from the stored values. Per row, m_j = (1 - alpha) a_j (+ alpha) costs 2 roundings
  // and m log m one more plus the log's, which moves m log m by ~u m (|log m| + 1) per rounding
  // of m: |dH_i| <= (n + 6) u S_i with S_i = sum_j m_j (|log m_j| + 1); the sums over the R rows
  // add R roundings. exp(H_i) inherits |dH_i| as a relative error, H_i / log n_i one rounding
  // and the log's. Bounds: ck = 2 (n + R + 8) for the sums over rows (factor 2: safety), with
  // S = sum of the magnitudes; the row count out[4] is exact.
  c.forward.reference = [=](const Data& in, Expect& ex) {
    const auto& a = in["a"];
    double self = 0, ent = 0, nb = 0, norm = 0, rows2 = 0, s_self = 0, s_ent = 0, s_nb = 0,
           s_norm = 0;
    for (i64 r = 0; r < batch * tt; ++r) {
      const i64 i = r % tt, n = causal ? i + 1 : tt;
      double h = 0, mag = 0;
      for (i64 j = 0; j < n; ++j) {
        const double m = (1.0 - alpha) * a[at(r * tt + j)] + (j == i ? alpha : 0.0);
        if (m > 0) {
          h -= m * std::log(m);
          mag += m * (std::abs(std::log(m)) + 1.0);
        }
      }
      self += (1.0 - alpha) * a[at(r * tt + i)] + alpha;
      s_self += (1.0 - alpha) * a[at(r * tt + i)] + alpha;
      ent += h;
      s_ent += mag;
      nb += std::exp(h);
      s_nb += std::exp(h) * (1.0 + mag);
      if (n >= 2) {
        norm += h / std::log(static_cast<double>(n));
        s_norm += (mag + h) / std::log(static_cast<double>(n));
        rows2 += 1.0;
      }
    }
    const double ck = 2.0 * (static_cast<double>(tt + batch * tt) + 8.0);
    auto& out = ex.out("out", 5, Rule::Wide);
    out[0] = {self, ck, s_self, 0.0};
    out[1] = {ent, ck, s_ent, 0.0};
    out[2] = {nb, ck, s_nb, 0.0};
    out[3] = {norm, ck, s_norm, 0.0};
    out[4] = {rows2, 0.0, 0.0, 0.0};
  };
  push(t, std::move(c));
}

void mixing_cases(Table& t) {
  for (double alpha : {0.0, 0.3, 1.0}) {
    add_mixing_row_stats(t, 2, 5, true, alpha);
    add_mixing_row_stats(t, 3, 4, false, alpha);
  }
  add_mixing_row_stats(t, 4, 33, true, 0.25);
  add_mixing_row_stats(t, 1, 1, true, 0.0);  // one row, one token: no normalised entropy
  add_mixing_row_stats(t, 0, 4, true, 0.5);  // no rows
}

// ================================================================================================
// Grouped linear layer (the experts' GEMMs)
// ================================================================================================

struct GroupedSpec {
  std::vector<i64> rows;  // rows per group (0: an expert without tokens)
  i64 in, out;
  bool bias = true;  // b and db given (else null)
  bool dx = true;    // backward dx given (else null)
  bool fd = false;
};

void add_grouped_linear(Table& t, const GroupedSpec& s) {
  const i64 groups = static_cast<i64>(s.rows.size()), in = s.in, out = s.out;
  std::vector<i64> offset(at(groups + 1), 0);
  for (i64 g = 0; g < groups; ++g) offset[at(g + 1)] = offset[at(g)] + s.rows[at(g)];
  const i64 R = offset[at(groups)];
  Case c;
  c.kernel = "grouped_linear";
  c.name = fmt::format("rows={} in={} out={}{}{}", fmt::join(s.rows, ","), in, out,
                       flag(!s.bias, "bias=null"), flag(!s.dx, "dx=null"));
  c.generate = [=](Gen& g, Data& d) {
    d.value("x", R * in) = g.uniform(R * in, -1, 1);
    d.value("w", groups * out * in) = g.uniform(groups * out * in, -1, 1);
    if (s.bias) d.value("b", groups * out) = g.uniform(groups * out, -1, 1);
    d.longs("offset", groups + 1) = offset;
    d.value("y", R * out);  // overwritten
    d.value("dy", R * out) = g.uniform(R * out, -1, 1);
    if (s.dx) d.value("dx", R * in);                                           // overwritten
    d.value("dw", groups * out * in) = g.uniform(groups * out * in, -1, 1);    // +=
    if (s.bias) d.value("db", groups * out) = g.uniform(groups * out, -1, 1);  // +=
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::grouped_linear_forward(b["x"], b["w"], b.opt("b"), b["y"], b.longs("offset"), groups, in,
                                out);
  });
  // Per group the bounds of linear (cases.cpp): y = x w_g^T + b_g, ck = 2 (in + 2),
  // S = sum |x w| + |b|.
  c.forward.reference = [=](const Data& dat, Expect& e) {
    const auto& x = dat["x"];
    const auto& w = dat["w"];
    auto& y = e.out("y", R * out);
    for (i64 g = 0; g < groups; ++g)
      for (i64 r = offset[at(g)]; r < offset[at(g + 1)]; ++r)
        for (i64 o = 0; o < out; ++o) {
          double acc = s.bias ? dat["b"][at(g * out + o)] : 0.0;
          double mag = std::abs(acc);
          for (i64 p = 0; p < in; ++p) {
            acc += x[at(r * in + p)] * w[at((g * out + o) * in + p)];
            mag += std::abs(x[at(r * in + p)] * w[at((g * out + o) * in + p)]);
          }
          y[at(r * out + o)] = {acc, 2.0 * (static_cast<double>(in) + 2.0), mag, 0.0};
        }
  };
  Pass bwd;
  bwd.cpu = cpu_call([=](const auto& b) {
    cpu::grouped_linear_backward(b["dy"], b["x"], b["w"], b.opt("dx"), b["dw"], b.opt("db"),
                                 b.longs("offset"), groups, in, out);
  });
  // dx = dy w_g: ck = 2 (out + 1), S = sum |dy w|. dw_g += dy^T x over the group's R_g rows:
  // ck = 2 (R_g + 2), S = |dw0| + sum |dy x|. db_g += column sums: ck = 2 (R_g + 1),
  // S = |db0| + sum |dy|. Groups without rows keep dw and db exactly.
  bwd.reference = [=](const Data& dat, Expect& e) {
    const auto& x = dat["x"];
    const auto& w = dat["w"];
    const auto& dy = dat["dy"];
    if (s.dx) {
      auto& dx = e.out("dx", R * in);
      for (i64 g = 0; g < groups; ++g)
        for (i64 r = offset[at(g)]; r < offset[at(g + 1)]; ++r)
          for (i64 p = 0; p < in; ++p) {
            double acc = 0.0, mag = 0.0;
            for (i64 o = 0; o < out; ++o) {
              acc += dy[at(r * out + o)] * w[at((g * out + o) * in + p)];
              mag += std::abs(dy[at(r * out + o)] * w[at((g * out + o) * in + p)]);
            }
            dx[at(r * in + p)] = {acc, 2.0 * (static_cast<double>(out) + 1.0), mag, 0.0};
          }
    }
    const auto& dw0 = dat["dw"];
    auto& dw = e.out("dw", groups * out * in);
    std::vector<Want>* db = s.bias ? &e.out("db", groups * out) : nullptr;
    for (i64 g = 0; g < groups; ++g) {
      const double rg = static_cast<double>(s.rows[at(g)]);
      for (i64 o = 0; o < out; ++o) {
        for (i64 p = 0; p < in; ++p) {
          const i64 q = (g * out + o) * in + p;
          double acc = dw0[at(q)], mag = std::abs(acc);
          for (i64 r = offset[at(g)]; r < offset[at(g + 1)]; ++r) {
            acc += dy[at(r * out + o)] * x[at(r * in + p)];
            mag += std::abs(dy[at(r * out + o)] * x[at(r * in + p)]);
          }
          dw[at(q)] = {acc, rg > 0 ? 2.0 * (rg + 2.0) : 0.0, rg > 0 ? mag : 0.0, 0.0};
        }
        if (db != nullptr) {
          const double b0 = dat["db"][at(g * out + o)];
          double acc = b0, mag = std::abs(b0);
          for (i64 r = offset[at(g)]; r < offset[at(g + 1)]; ++r) {
            acc += dy[at(r * out + o)];
            mag += std::abs(dy[at(r * out + o)]);
          }
          (*db)[at(g * out + o)] = {acc, rg > 0 ? 2.0 * (rg + 1.0) : 0.0, rg > 0 ? mag : 0.0, 0.0};
        }
      }
    }
  };
  c.backward = std::move(bwd);
  c.fd = s.fd;
  c.loss = {{"y", "dy"}};
  c.grads = {{"w", "dw"}};
  if (s.dx) c.grads.emplace_back("x", "dx");
  if (s.bias) c.grads.emplace_back("b", "db");
  if (R == 0) set_noop(c);
  push(t, std::move(c));
}

void grouped_cases(Table& t) {
  // Experts with and without rows (first, middle, last), one group, many groups; null bias and
  // dx.
  const std::vector<std::vector<i64>> ref_rows = {
      {1}, {5}, {3, 0, 4}, {0, 2, 0, 7, 1}, {33, 1, 17, 0}, {9, 9, 9, 9, 9, 9, 9, 9}};
  for (const auto& rows : ref_rows)
    for (const auto& io :
         {std::array<i64, 2>{1, 1}, std::array<i64, 2>{7, 5}, std::array<i64, 2>{33, 17}}) {
      add_grouped_linear(t, {rows, io[0], io[1]});
      add_grouped_linear(t, {rows, io[0], io[1], false});
      add_grouped_linear(t, {rows, io[0], io[1], true, false});
    }
  // Gradient checks (an empty group in the middle).
  for (const auto& rows : {std::vector<i64>{2, 0, 3}, std::vector<i64>{1}, std::vector<i64>{0, 2}})
    add_grouped_linear(t, {rows, 3, 4, true, true, true});
  add_grouped_linear(t, {{2, 0, 1}, 4, 3, false, true, true});
  add_grouped_linear(t, {{}, 4, 3});      // no groups
  add_grouped_linear(t, {{0, 0}, 4, 3});  // no rows
}

}  // namespace

void moe_cases(std::vector<Case>& t) {
  attention_helper_cases(t);
  row_helper_cases(t);
  topk_cases(t);
  aux_cases(t);
  slot_cases(t);
  ac_cases(t);
  mixing_cases(t);
  grouped_cases(t);
}

}  // namespace routemoe::kerneltest
