#pragma once
// Shared helpers of the kernel tests (tests/kernels): random inputs, the floating-point error
// bounds, comparisons and error expectations. Used by the case table (cases.h) and its three
// drivers.
//
// Error bounds. Every comparison of a kernel with the naive double reference uses a bound of the
// form
//     |kernel - reference| <= c * K * u * S
// where u = 2^-24 is the fp32 unit roundoff, K is the length of the longest chain of roundings
// that feeds the output (for a length-K dot product, K roundings of the running sum), S is the
// "absolute" magnitude of the same computation (the value the formula gives with every term
// replaced by its absolute value, e.g. sum_i |a_i b_i| for a dot product), and c a small constant
// (2..16) for the few extra roundings (scaling, bias add, exp/log/tanh/sqrt of a few ulp each) and
// slack for the (1 - K u)^-1 factor of the classical bound gamma_K = K u / (1 - K u) (Higham,
// "Accuracy and Stability of Numerical Algorithms", 3.1). The reference itself runs in double from
// the very same inputs (as stored in the type under test), so its own error (~K * 2^-53 * S) is
// negligible against this bound. The bound is per element, so it is independent of how the
// kernel orders or blocks its sums (blocked/pairwise summation only tightens it). A case writes
// the product c * K (`ck`) and S (`mag`) next to each reference value.
//
// The double instantiation is held to the same bound with u = 2^-53, doubled (kernel and
// reference are now equally precise) and floored at 1e-12 * S, i.e. "~1e-12 relative" to the
// absolute magnitude of the computation. Results that the kernels accumulate in double whatever
// the type (sum_squares) use that double rule for both types.
//
// Exact operations (copies, gathers, empty sums) are compared bitwise or with a zero tolerance.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "framework/cpu/kernels.h"
#include "framework/error.h"

namespace routemoe::kerneltest {

using i64 = std::int64_t;
using i32 = std::int32_t;

inline constexpr double kU32 = 0x1p-24;  // unit roundoff of fp32 (round to nearest)
inline constexpr double kU64 = 0x1p-53;  // unit roundoff of fp64
inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Absorbs results that underflow to fp32 subnormals in the CUDA-vs-CPU bounds.
inline constexpr double kTiny = 1e-37;
// Exactly representable in float; marks memory that must not be written (guards, padding).
inline constexpr double kSentinel = -7777.25;
// An index no kernel may read: guards of index arrays hold it (a read throws Error(Data)).
inline constexpr i32 kBadIndex = 1 << 30;
// Guards of int64 arrays (no count or offset is this large) and of uint8 arrays.
inline constexpr i64 kBadLong = (i64{1} << 40) + 7;
inline constexpr std::uint8_t kByteGuard = 0xA5;

// Bound factor for the rounding chain constant ck = c * K of the type under test (see above):
// |kernel - reference| <= bound<T>(ck) * S.
template <typename T>
double bound(double ck) {
  if constexpr (std::is_same_v<T, float>) {
    return ck * kU32;
  } else {
    static_assert(std::is_same_v<T, double>);
    return std::max(1e-12, 2.0 * ck * kU64);
  }
}
// The same for results accumulated in double whatever the type under test.
double bound_wide(double ck);

template <typename T>
constexpr const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

// The random source of one case. Seeded from the case's name, so that a case draws the same
// inputs whichever driver runs it and whatever else runs before it.
class Gen {
 public:
  explicit Gen(std::string_view name);
  // n values uniform in [lo, hi) (in double; the drivers round them to the type under test).
  std::vector<double> uniform(i64 n, double lo, double hi);
  double uniform1(double lo, double hi);
  // n indices uniform in [0, bound).
  std::vector<i32> ids(i64 n, i64 bound);
  bool coin(double p);

 private:
  std::mt19937 engine_;
};

// |got[i] - want[i]| <= tol[i] for every i. Equal values (infinities included) pass; a NaN
// expected value requires a NaN; a NaN where a number is expected never passes.
::testing::AssertionResult within(std::span<const double> got, std::span<const double> want,
                                  std::span<const double> tol);

// Bitwise equality (NaN payloads included).
template <typename T>
::testing::AssertionResult same_bits(std::span<const T> a, std::span<const T> b);
template <typename T>
::testing::AssertionResult same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return same_bits<T>(std::span<const T>(a), std::span<const T>(b));
}

// The call must throw routemoe::Error of the given kind.
template <typename F>
void expect_error_kind(F&& f, ErrorKind kind, const std::string& what) {
  EXPECT_THROW(f(), Error) << what;
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << what << ": " << e.what();
  } catch (...) {
  }
}

// Lower-case letters and digits of `s` (so "cross_entropy" matches "crossentropy").
std::string normalized(std::string_view s);

// The call must throw routemoe::Error of kind Data whose message names the kernel.
template <typename F>
void expect_data_error(F&& f, const std::string& kernel_word, const std::string& what) {
  EXPECT_THROW(f(), Error) << what;
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Data) << what << ": " << e.what();
    EXPECT_NE(normalized(e.what()).find(normalized(kernel_word)), std::string::npos)
        << what << ": message does not name the kernel (" << kernel_word << "): " << e.what();
  } catch (...) {
  }
}

// Restores the CPU kernels' thread count on scope exit.
class ThreadGuard {
 public:
  ThreadGuard() : saved_(cpu::num_threads()) {}
  ~ThreadGuard() { cpu::set_num_threads(saved_); }
  ThreadGuard(const ThreadGuard&) = delete;
  ThreadGuard& operator=(const ThreadGuard&) = delete;

 private:
  int saved_;
};

}  // namespace routemoe::kerneltest
