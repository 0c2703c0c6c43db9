// Gradient checks by central finite differences for every backward kernel of
// framework/cpu/kernels.h, on the double instantiation (the very code the model runs in float).
//
// Method. For a kernel y = f(x) and a fixed random r, the scalar loss is L(x) = sum_k r_k y_k, so
// the analytic gradient is the kernel's backward with dy = r. Every element x_i of every
// differentiable input is perturbed:
//     fd_i = (L(x + h e_i) - L(x - h e_i)) / (x_i^+ - x_i^-)
// where x_i^+- are the perturbed values as actually stored (so the step is exact in T).
//
// Tolerance (double, h = 1e-6). Truncation error of the central difference is
// h^2 / 6 |L'''| ~ 1e-13 for the O(1) inputs used here (|L'''| = O(1..10)); round-off is about
// eps64 |L| / h ~ 1e-16 * 10 / 1e-6 = 1e-9 (the forward is evaluated to ~cols * eps64 relative,
// which adds a similar 1e-9). Both are far below
//     |fd_i - analytic_i| <= 1e-6 (|analytic_i| + 1)            (rel 1e-6 and abs 1e-6 combined),
// while a wrong formula (a missing term, a wrong factor, a transposed index) gives errors of
// order 1e-2..1, i.e. the check has about five orders of magnitude of separation on each side.
//
// Float (h = 1e-2), one check on layernorm and softmax: truncation h^2/6 |L'''| ~ 1e-4, round-off
// of the float forward ~ K u sum|r y| / h ~ 8 * 6e-8 * 10 / 1e-2 ~ 5e-4; so
//     |fd_i - analytic_i| <= 2e-2 (|analytic_i| + 0.1)
// (2 % relative, 2e-3 absolute floor) holds with margin yet still catches wrong formulas.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "framework/cpu/kernels.h"

namespace routemoe::cpu {
namespace {

using i64 = std::int64_t;
using i32 = std::int32_t;

template <typename T>
std::vector<T> random_vec(std::mt19937& g, i64 n, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<T>(dist(g));
  return v;
}

std::vector<i32> random_ids(std::mt19937& g, i64 n, i64 bound_exclusive) {
  std::uniform_int_distribution<i32> dist(0, static_cast<i32>(bound_exclusive - 1));
  std::vector<i32> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(g);
  return v;
}

// L = sum_k r_k y_k, accumulated in double.
template <typename T>
double dot_loss(const std::vector<T>& r, const std::vector<T>& y) {
  EXPECT_EQ(r.size(), y.size());
  double s = 0.0;
  for (std::size_t k = 0; k < r.size(); ++k) s += static_cast<double>(r[k]) * y[k];
  return s;
}

struct FdTol {
  double h;
  double rel;  // |fd - an| <= rel * (|an| + floor)
  double floor;
};
constexpr FdTol kDoubleTol{1e-6, 1e-6, 1.0};
constexpr FdTol kFloatTol{1e-2, 2e-2, 0.1};

// Compares analytic[i] with the central difference of loss() in param[i], for every i.
template <typename T>
void fd_check(const std::string& name, std::vector<T>& param, const std::vector<T>& analytic,
              const std::function<double()>& loss, const FdTol& tol) {
  ASSERT_EQ(param.size(), analytic.size()) << name;
  int bad = 0;
  std::ostringstream os;
  os.precision(12);
  for (std::size_t i = 0; i < param.size(); ++i) {
    const T saved = param[i];
    const T plus = static_cast<T>(saved + tol.h);
    const T minus = static_cast<T>(saved - tol.h);
    param[i] = plus;
    const double lp = loss();
    param[i] = minus;
    const double lm = loss();
    param[i] = saved;
    const double fd = (lp - lm) / (static_cast<double>(plus) - static_cast<double>(minus));
    const double an = analytic[i];
    const double bound = tol.rel * (std::abs(an) + tol.floor);
    if (!(std::abs(fd - an) <= bound)) {
      if (bad < 6)
        os << "\n  [" << i << "] analytic " << an << " finite-difference " << fd << " |diff| "
           << std::abs(fd - an) << " tol " << bound;
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << param.size()
                    << " gradient entries disagree:" << os.str();
}

// ------------------------------------------------------------------------------------------------
// Linear: d/dx, d/dw, d/db.
TEST(Gradcheck, Linear) {
  std::mt19937 g(1);
  struct Shape {
    i64 n, in, out;
  };
  for (const Shape& s : {Shape{1, 1, 1}, Shape{3, 5, 7}, Shape{7, 3, 1}, Shape{2, 9, 4}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << s.n << " in=" << s.in << " out=" << s.out);
    auto x = random_vec<double>(g, s.n * s.in);
    auto w = random_vec<double>(g, s.out * s.in);
    auto b = random_vec<double>(g, s.out);
    const auto r = random_vec<double>(g, s.n * s.out);
    std::vector<double> y(static_cast<std::size_t>(s.n * s.out));
    auto loss = [&] {
      linear_forward<double>(x.data(), w.data(), b.data(), y.data(), s.n, s.in, s.out);
      return dot_loss(r, y);
    };
    std::vector<double> dx(x.size()), dw(w.size(), 0.0), db(b.size(), 0.0);
    linear_backward<double>(r.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(), s.n,
                            s.in, s.out);
    fd_check("linear dx", x, dx, loss, kDoubleTol);
    fd_check("linear dw", w, dw, loss, kDoubleTol);
    fd_check("linear db", b, db, loss, kDoubleTol);
  }
}

// ------------------------------------------------------------------------------------------------
// Softmax: d/dx (the backward takes y from the forward).
template <typename T>
void softmax_gradcheck(std::mt19937& g, i64 rows, i64 cols, const FdTol& tol) {
  SCOPED_TRACE(::testing::Message() << "rows=" << rows << " cols=" << cols);
  auto x = random_vec<T>(g, rows * cols, -3.0, 3.0);
  const auto r = random_vec<T>(g, rows * cols);
  std::vector<T> y(x.size());
  auto loss = [&] {
    softmax_forward<T>(x.data(), y.data(), rows, cols);
    return dot_loss(r, y);
  };
  loss();
  const auto y0 = y;
  std::vector<T> dx(x.size());
  softmax_backward<T>(y0.data(), r.data(), dx.data(), rows, cols);
  fd_check("softmax dx", x, dx, loss, tol);
}

TEST(Gradcheck, Softmax) {
  std::mt19937 g(2);
  for (auto [rows, cols] : {std::pair<i64, i64>{1, 1}, {3, 7}, {5, 1}, {2, 33}})
    softmax_gradcheck<double>(g, rows, cols, kDoubleTol);
}

// ------------------------------------------------------------------------------------------------
// LayerNorm: d/dx, d/dgamma, d/dbeta (the backward takes mean/rstd from the forward).
template <typename T>
void layernorm_gradcheck(std::mt19937& g, i64 rows, i64 cols, const FdTol& tol) {
  SCOPED_TRACE(::testing::Message() << "rows=" << rows << " cols=" << cols);
  const T eps = static_cast<T>(1e-5);
  auto x = random_vec<T>(g, rows * cols, -2.0, 2.0);
  auto gamma = random_vec<T>(g, cols, 0.5, 1.5);
  auto beta = random_vec<T>(g, cols);
  const auto r = random_vec<T>(g, rows * cols);
  std::vector<T> y(x.size()), mean(rows), rstd(rows);
  auto loss = [&] {
    layernorm_forward<T>(x.data(), gamma.data(), beta.data(), y.data(), mean.data(), rstd.data(),
                         rows, cols, eps);
    return dot_loss(r, y);
  };
  loss();
  const auto mean0 = mean, rstd0 = rstd;
  std::vector<T> dx(x.size()), dgamma(cols, T(0)), dbeta(cols, T(0));
  layernorm_backward<T>(r.data(), x.data(), gamma.data(), mean0.data(), rstd0.data(), dx.data(),
                        dgamma.data(), dbeta.data(), rows, cols);
  fd_check("layernorm dx", x, dx, loss, tol);
  fd_check("layernorm dgamma", gamma, dgamma, loss, tol);
  fd_check("layernorm dbeta", beta, dbeta, loss, tol);
}

TEST(Gradcheck, LayerNorm) {
  std::mt19937 g(3);
  for (auto [rows, cols] : {std::pair<i64, i64>{1, 1}, {3, 7}, {5, 2}, {2, 33}, {1, 3}})
    layernorm_gradcheck<double>(g, rows, cols, kDoubleTol);
}

// ------------------------------------------------------------------------------------------------
// GELU: d/dx, over a range that covers both tails and the bend.
TEST(Gradcheck, Gelu) {
  std::mt19937 g(4);
  for (i64 n : {1, 7, 65}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    auto x = random_vec<double>(g, n, -5.0, 5.0);
    x[0] = 0.0;
    const auto r = random_vec<double>(g, n);
    std::vector<double> y(x.size());
    auto loss = [&] {
      gelu_forward<double>(x.data(), y.data(), n);
      return dot_loss(r, y);
    };
    std::vector<double> dx(x.size());
    gelu_backward<double>(x.data(), r.data(), dx.data(), n);
    fd_check("gelu dx", x, dx, loss, kDoubleTol);
  }
}

// ------------------------------------------------------------------------------------------------
// Embedding: d/dtable, with repeated ids and rows never looked up (zero gradient).
TEST(Gradcheck, Embedding) {
  std::mt19937 g(5);
  struct Shape {
    i64 n, vocab, d;
  };
  for (const Shape& s : {Shape{1, 1, 1}, Shape{7, 3, 5}, Shape{5, 9, 3}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << s.n << " vocab=" << s.vocab << " d=" << s.d);
    auto table = random_vec<double>(g, s.vocab * s.d);
    auto ids = random_ids(g, s.n, s.vocab);
    if (s.n > 2) ids[2] = ids[0];
    const auto r = random_vec<double>(g, s.n * s.d);
    std::vector<double> out(static_cast<std::size_t>(s.n * s.d));
    auto loss = [&] {
      gather_rows_forward<double>(table.data(), ids.data(), out.data(), s.n, s.vocab, s.d);
      return dot_loss(r, out);
    };
    std::vector<double> dtable(table.size(), 0.0);
    gather_rows_backward<double>(r.data(), ids.data(), dtable.data(), s.n, s.vocab, s.d);
    fd_check("embedding dtable", table, dtable, loss, kDoubleTol);
  }
}

// ------------------------------------------------------------------------------------------------
// Cross-entropy: d/dlogits with L = sum_i r_i loss_i (dloss = r), ignored targets included.
TEST(Gradcheck, CrossEntropy) {
  std::mt19937 g(6);
  for (auto [n, v] : {std::pair<i64, i64>{1, 1}, {3, 7}, {5, 33}, {4, 2}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n << " v=" << v);
    auto logits = random_vec<double>(g, n * v, -3.0, 3.0);
    auto targets = random_ids(g, n, v);
    if (n > 1) targets[1] = -1;
    const auto r = random_vec<double>(g, n);
    std::vector<double> losses(n), lse(n);
    auto loss = [&] {
      cross_entropy_forward<double>(logits.data(), targets.data(), losses.data(), lse.data(), n, v);
      return dot_loss(r, losses);
    };
    loss();
    const auto lse0 = lse;
    std::vector<double> dlogits(logits.size());
    cross_entropy_backward<double>(logits.data(), targets.data(), lse0.data(), r.data(),
                                   dlogits.data(), n, v);
    fd_check("cross_entropy dlogits", logits, dlogits, loss, kDoubleTol);
  }
}

// ------------------------------------------------------------------------------------------------
// Row gather: d/dsrc, with repeated indices and rows never gathered.
TEST(Gradcheck, GatherRows) {
  std::mt19937 g(7);
  struct Shape {
    i64 m, n, d;
  };
  for (const Shape& s : {Shape{1, 1, 1}, Shape{7, 3, 5}, Shape{3, 7, 2}}) {
    SCOPED_TRACE(::testing::Message() << "m=" << s.m << " n=" << s.n << " d=" << s.d);
    auto src = random_vec<double>(g, s.n * s.d);
    auto idx = random_ids(g, s.m, s.n);
    if (s.m > 2) idx[2] = idx[0];
    const auto r = random_vec<double>(g, s.m * s.d);
    std::vector<double> dst(static_cast<std::size_t>(s.m * s.d));
    auto loss = [&] {
      gather_rows_forward<double>(src.data(), idx.data(), dst.data(), s.m, s.n, s.d);
      return dot_loss(r, dst);
    };
    std::vector<double> dsrc(src.size(), 0.0);
    gather_rows_backward<double>(r.data(), idx.data(), dsrc.data(), s.m, s.n, s.d);
    fd_check("gather_rows dsrc", src, dsrc, loss, kDoubleTol);
  }
}

// ------------------------------------------------------------------------------------------------
// Weighted scatter-add: d/dsrc and d/dw (and d/dsrc without weights), repeated indices.
TEST(Gradcheck, ScatterAddRows) {
  std::mt19937 g(8);
  struct Shape {
    i64 m, n, d;
  };
  for (const Shape& s : {Shape{1, 1, 1}, Shape{7, 3, 5}, Shape{3, 7, 2}}) {
    for (bool weighted : {true, false}) {
      SCOPED_TRACE(::testing::Message()
                   << "m=" << s.m << " n=" << s.n << " d=" << s.d << " weighted=" << weighted);
      auto src = random_vec<double>(g, s.m * s.d);
      auto w = random_vec<double>(g, s.m, 0.1, 1.0);
      auto idx = random_ids(g, s.m, s.n);
      if (s.m > 2) idx[2] = idx[0];
      const auto dst0 = random_vec<double>(g, s.n * s.d);
      const auto r = random_vec<double>(g, s.n * s.d);
      std::vector<double> dst;
      auto loss = [&] {
        dst = dst0;  // the forward accumulates into dst
        scatter_add_rows_forward<double>(src.data(), idx.data(), weighted ? w.data() : nullptr,
                                         dst.data(), s.m, s.n, s.d);
        return dot_loss(r, dst);
      };
      std::vector<double> dsrc(src.size()), dw(w.size());
      scatter_add_rows_backward<double>(r.data(), idx.data(), src.data(),
                                        weighted ? w.data() : nullptr, dsrc.data(), dw.data(), s.m,
                                        s.n, s.d);
      fd_check("scatter_add_rows dsrc", src, dsrc, loss, kDoubleTol);
      if (weighted) fd_check("scatter_add_rows dw", w, dw, loss, kDoubleTol);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The float path (tolerance reasoning at the top of the file).
TEST(Gradcheck, FloatLayerNormAndSoftmax) {
  std::mt19937 g(9);
  layernorm_gradcheck<float>(g, 3, 7, kFloatTol);
  softmax_gradcheck<float>(g, 3, 7, kFloatTol);
}

}  // namespace
}  // namespace routemoe::cpu
