// Driver (b) of the kernel table (cases.h): every backward kernel against central finite
// differences of its forward, on the double instantiation (the very code the model runs in
// float), for the cases the table marks `fd` (small sizes, finite O(1) inputs).
//
// Method. For a case with forward y = f(x) and upstream gradients r (the arrays the backward
// reads as dy), the scalar loss is L(x) = sum_k r_k y_k, so the analytic gradient is the
// kernel's backward with dy = r, run after the forward at the unperturbed point (the backward
// reads what that forward saved) into zeroed gradient arrays. Every element x_i of every
// differentiable input is perturbed, with every array restored to its generated contents before
// each evaluation (forwards that accumulate start from the same values):
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
// Float (h = 1e-2), for the cases marked `fd_float`: truncation h^2/6 |L'''| ~ 1e-4, round-off
// of the float forward ~ K u sum|r y| / h ~ 8 * 6e-8 * 10 / 1e-2 ~ 5e-4; so
//     |fd_i - analytic_i| <= 2e-2 (|analytic_i| + 0.1)
// (2 % relative, 2e-3 absolute floor) holds with margin yet still catches wrong formulas.

#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "tests/kernels/cases.h"

namespace routemoe::kerneltest {
namespace {

struct FdTol {
  double h;
  double rel;  // |fd - an| <= rel * (|an| + floor)
  double floor;
};
constexpr FdTol kDoubleTol{1e-6, 1e-6, 1.0};
constexpr FdTol kFloatTol{1e-2, 2e-2, 0.1};

template <typename T>
void gradcheck(const Case& c, const FdTol& tol) {
  SCOPED_TRACE(c.kernel + " " + c.name + " (" + type_name<T>() + ")");
  ASSERT_TRUE(c.backward.has_value());
  ASSERT_FALSE(c.loss.empty());
  ASSERT_FALSE(c.grads.empty());
  Gen gen(c.kernel + "/" + c.name);
  Data data;
  c.generate(gen, data);
  HostArrays<T> h(data);
  const Data init = h.snapshot();  // the generated arrays as stored in T

  // Analytic gradients: forward, then the backward into zeroed gradient arrays.
  c.forward.cpu.get<T>()(h.bind());
  for (const auto& [param, grad] : c.grads)
    for (T& v : h.values(grad)) v = T(0);
  c.backward->cpu.get<T>()(h.bind());
  std::vector<std::vector<double>> analytic;
  for (const auto& [param, grad] : c.grads) {
    const auto v = h.values(grad);
    analytic.emplace_back(v.begin(), v.end());
  }

  auto loss = [&]() {
    c.forward.cpu.get<T>()(h.bind());
    double sum = 0.0;
    for (const auto& [y, dy] : c.loss) {
      const auto yv = h.values(y);
      const auto& r = init[dy];
      EXPECT_EQ(yv.size(), r.size()) << y;
      for (std::size_t k = 0; k < r.size() && k < yv.size(); ++k)
        sum += r[k] * static_cast<double>(yv[k]);
    }
    return sum;
  };

  for (std::size_t g = 0; g < c.grads.size(); ++g) {
    const std::string& param = c.grads[g].first;
    const auto& x0 = init[param];
    ASSERT_EQ(x0.size(), analytic[g].size()) << param;
    int bad = 0;
    std::ostringstream os;
    os.precision(12);
    for (std::size_t i = 0; i < x0.size(); ++i) {
      const T saved = static_cast<T>(x0[i]);
      ASSERT_TRUE(std::isfinite(saved)) << param << "[" << i << "]: inputs must be finite";
      const T plus = static_cast<T>(saved + tol.h);
      const T minus = static_cast<T>(saved - tol.h);
      h.load(init);
      h.values(param)[i] = plus;
      const double lp = loss();
      h.load(init);
      h.values(param)[i] = minus;
      const double lm = loss();
      const double fd = (lp - lm) / (static_cast<double>(plus) - static_cast<double>(minus));
      const double an = analytic[g][i];
      const double bound = tol.rel * (std::abs(an) + tol.floor);
      if (!(std::abs(fd - an) <= bound)) {
        if (bad < 6)
          os << "\n  [" << i << "] analytic " << an << " finite-difference " << fd << " |diff| "
             << std::abs(fd - an) << " tol " << bound;
        ++bad;
      }
    }
    EXPECT_EQ(bad, 0) << "d" << param << ": " << bad << " of " << x0.size()
                      << " gradient entries disagree:" << os.str();
  }
}

class KernelGradcheck : public ::testing::TestWithParam<std::string> {};

TEST_P(KernelGradcheck, Double) {
  int n = 0;
  for (const Case& c : cases()) {
    if (c.kernel != GetParam() || !c.fd) continue;
    gradcheck<double>(c, kDoubleTol);
    ++n;
  }
  EXPECT_GT(n, 0);
}

INSTANTIATE_TEST_SUITE_P(Table, KernelGradcheck,
                         ::testing::ValuesIn(kernels([](const Case& c) { return c.fd; })),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

class KernelGradcheckFloat : public ::testing::TestWithParam<std::string> {};

TEST_P(KernelGradcheckFloat, Float) {
  int n = 0;
  for (const Case& c : cases()) {
    if (c.kernel != GetParam() || !c.fd_float) continue;
    gradcheck<float>(c, kFloatTol);
    ++n;
  }
  EXPECT_GT(n, 0);
}

INSTANTIATE_TEST_SUITE_P(Table, KernelGradcheckFloat,
                         ::testing::ValuesIn(kernels([](const Case& c) { return c.fd_float; })),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace routemoe::kerneltest
