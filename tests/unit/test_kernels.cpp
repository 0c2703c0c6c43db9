// Unit tests of the CPU kernels (framework/cpu/kernels.h) against naive references written here
// in double precision (plain loops, textbook formulas), written from the header's contract alone.
//
// Tolerances. Every float comparison uses a bound of the form
//     |kernel - reference| <= c * K * u * S
// where u = 2^-24 is the fp32 unit roundoff, K is the length of the longest chain of roundings
// that feeds the output (for a length-K dot product, K roundings of the running sum), S is the
// "absolute" magnitude of the same computation (the value the formula gives with every term
// replaced by its absolute value, e.g. sum_i |a_i b_i| for a dot product), and c a small constant
// (2..16) for the few extra roundings (scaling, bias add, exp/log/tanh/sqrt of a few ulp each) and
// slack for the (1 - K u)^-1 factor of the classical bound gamma_K = K u / (1 - K u) (Higham,
// "Accuracy and Stability of Numerical Algorithms", 3.1). The reference itself runs in double from
// the very same (float) inputs, so its own error (~K * 2^-53 * S) is negligible against this bound.
// The bound is per element, so it is independent of how the kernel orders or blocks its sums
// (blocked/pairwise summation only tightens it).
//
// The double instantiation is held to the same bound with u = 2^-53, doubled (kernel and
// reference are now equally precise) and floored at 1e-12 * S, i.e. "~1e-12 relative" to the
// absolute magnitude of the computation.
//
// Exact operations (copies, gathers, a single multiply by 1) are compared bitwise.

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numbers>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "framework/cpu/kernels.h"
#include "framework/error.h"

namespace routemoe::cpu {
namespace {

using i64 = std::int64_t;
using i32 = std::int32_t;

constexpr double kU32 = 0x1p-24;  // unit roundoff of fp32 (round to nearest)
constexpr double kU64 = 0x1p-53;  // unit roundoff of fp64
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kSentinel = -7777.25;  // exactly representable in float; marks "must not write"

// Bound factor c * K * u for the type under test (see the file comment).
template <typename T>
double bound(double k, double c) {
  if constexpr (std::is_same_v<T, float>) {
    return c * k * kU32;
  } else {
    return std::max(1e-12, 2.0 * c * k * kU64);
  }
}

template <typename T>
T nan_value() {
  return std::numeric_limits<T>::quiet_NaN();
}

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

template <typename T>
std::vector<double> to_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

template <typename T>
std::vector<T> cast_vec(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<T>(v[i]);
  return out;
}

// |got[i] - ref[i]| <= tol[i] for i < n (equal infinities pass; NaN never passes).
template <typename T>
::testing::AssertionResult close(std::span<const T> got, std::span<const double> ref,
                                 std::span<const double> tol) {
  if (got.size() != ref.size() || ref.size() != tol.size())
    return ::testing::AssertionFailure()
           << "size mismatch " << got.size() << " " << ref.size() << " " << tol.size();
  int bad = 0;
  double worst = 0.0;
  std::ostringstream os;
  os.precision(17);
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double gv = static_cast<double>(got[i]);
    const bool ok = gv == ref[i] || std::abs(gv - ref[i]) <= tol[i];
    if (!ok) {
      if (bad < 6)
        os << "\n  [" << i << "] got " << gv << " expected " << ref[i] << " |diff| "
           << std::abs(gv - ref[i]) << " tol " << tol[i];
      ++bad;
      worst = std::max(worst, std::abs(gv - ref[i]) / std::max(tol[i], 1e-300));
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << got.size() << " elements out of tolerance (worst diff/tol " << worst
         << "):" << os.str();
}

template <typename T>
::testing::AssertionResult close(const std::vector<T>& got, const std::vector<double>& ref,
                                 const std::vector<double>& tol) {
  return close<T>(std::span<const T>(got), std::span<const double>(ref),
                  std::span<const double>(tol));
}

// Bitwise equality (NaN payloads included).
template <typename T>
::testing::AssertionResult same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << "size " << a.size() << " vs " << b.size();
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) {
      std::ostringstream os;
      os.precision(17);
      os << "first difference at [" << i << "]: " << static_cast<double>(a[i]) << " vs "
         << static_cast<double>(b[i]);
      return ::testing::AssertionFailure() << os.str();
    }
  }
  return ::testing::AssertionSuccess();
}

// Every element equals kSentinel (buffer was not written).
template <typename T>
::testing::AssertionResult untouched(const std::vector<T>& v) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (static_cast<double>(v[i]) != kSentinel)
      return ::testing::AssertionFailure()
             << "element " << i << " was written: " << static_cast<double>(v[i]);
  return ::testing::AssertionSuccess();
}

template <typename T>
std::vector<T> sentinel_vec(i64 n) {
  return std::vector<T>(static_cast<std::size_t>(n), static_cast<T>(kSentinel));
}

std::string normalized(const std::string& s) {
  std::string out;
  for (char ch : s)
    if (std::isalnum(static_cast<unsigned char>(ch)))
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
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

// The call must throw routemoe::Error of kind Data whose message names the kernel.
template <typename F>
void expect_data_error(F&& f, const std::string& kernel_word, const std::string& what) {
  EXPECT_THROW(f(), Error) << what;
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Data) << what << ": " << e.what();
    EXPECT_NE(normalized(e.what()).find(kernel_word), std::string::npos)
        << what << ": message does not name the kernel (" << kernel_word << "): " << e.what();
  } catch (...) {
  }
}

// Restores the thread count on scope exit.
class ThreadGuard {
 public:
  ThreadGuard() : saved_(num_threads()) {}
  ~ThreadGuard() { set_num_threads(saved_); }
  ThreadGuard(const ThreadGuard&) = delete;
  ThreadGuard& operator=(const ThreadGuard&) = delete;

 private:
  int saved_;
};

template <typename T>
class KernelsTyped : public ::testing::Test {};
using KernelTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(KernelsTyped, KernelTypes);

// ================================================================================================
// GEMM
// ================================================================================================

// Reference of c[m, n] = alpha op(a) op(b) + beta c with the bound described at the top:
// a length-k dot product costs k roundings, alpha/beta/add 3 more: |err| <= 2 (k+3) u S with
// S = |alpha| sum_p |a_ip b_pj| + |beta c_ij|.
template <typename T>
void gemm_reference(bool ta, bool tb, i64 m, i64 n, i64 k, double alpha, const T* a, i64 lda,
                    const T* b, i64 ldb, double beta, const T* c, i64 ldc, std::vector<double>& ref,
                    std::vector<double>& tol) {
  ref.assign(static_cast<std::size_t>(m * n), 0.0);
  tol.assign(static_cast<std::size_t>(m * n), 0.0);
  for (i64 i = 0; i < m; ++i) {
    for (i64 j = 0; j < n; ++j) {
      double s = 0.0;
      double mag = 0.0;
      for (i64 p = 0; p < k; ++p) {
        const double av = ta ? a[p * lda + i] : a[i * lda + p];
        const double bv = tb ? b[j * ldb + p] : b[p * ldb + j];
        s += av * bv;
        mag += std::abs(av * bv);
      }
      const double c0 = beta == 0.0 ? 0.0 : beta * static_cast<double>(c[i * ldc + j]);
      ref[static_cast<std::size_t>(i * n + j)] = alpha * s + c0;
      tol[static_cast<std::size_t>(i * n + j)] =
          bound<T>(static_cast<double>(k) + 3.0, 2.0) * (std::abs(alpha) * mag + std::abs(c0));
    }
  }
}

// A [rows, cols] matrix with row stride ld, the padding columns filled with NaN so that a kernel
// that reads outside the matrix produces NaN and fails.
template <typename T>
std::vector<T> padded_matrix(std::mt19937& g, i64 rows, i64 cols, i64 ld) {
  std::vector<T> v(static_cast<std::size_t>(std::max<i64>(rows * ld, 1)), nan_value<T>());
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  for (i64 r = 0; r < rows; ++r)
    for (i64 c = 0; c < cols; ++c)
      v[static_cast<std::size_t>(r * ld + c)] = static_cast<T>(dist(g));
  return v;
}

template <typename T>
void check_gemm(std::mt19937& g, bool ta, bool tb, i64 m, i64 n, i64 k, i64 pad, double alpha,
                double beta) {
  SCOPED_TRACE(::testing::Message()
               << "gemm ta=" << ta << " tb=" << tb << " m=" << m << " n=" << n << " k=" << k
               << " pad=" << pad << " alpha=" << alpha << " beta=" << beta);
  const i64 a_rows = ta ? k : m, a_cols = ta ? m : k;
  const i64 b_rows = tb ? n : k, b_cols = tb ? k : n;
  const i64 lda = a_cols + pad, ldb = b_cols + pad, ldc = n + pad;
  auto a = padded_matrix<T>(g, a_rows, a_cols, lda);
  auto b = padded_matrix<T>(g, b_rows, b_cols, ldb);
  // c: the matrix part is NaN when beta == 0 (must be overwritten, NaN not propagated), random
  // otherwise; the padding holds the sentinel and must stay untouched.
  std::vector<T> c(static_cast<std::size_t>(m * ldc), static_cast<T>(kSentinel));
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  for (i64 i = 0; i < m; ++i)
    for (i64 j = 0; j < n; ++j)
      c[static_cast<std::size_t>(i * ldc + j)] =
          beta == 0.0 ? nan_value<T>() : static_cast<T>(dist(g));
  std::vector<double> ref, tol;
  gemm_reference<T>(ta, tb, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc, ref,
                    tol);
  gemm<T>(ta, tb, m, n, k, static_cast<T>(alpha), a.data(), lda, b.data(), ldb,
          static_cast<T>(beta), c.data(), ldc);
  std::vector<T> got(static_cast<std::size_t>(m * n));
  for (i64 i = 0; i < m; ++i) {
    for (i64 j = 0; j < n; ++j) got[static_cast<std::size_t>(i * n + j)] = c[i * ldc + j];
    for (i64 j = n; j < ldc; ++j)
      EXPECT_EQ(static_cast<double>(c[static_cast<std::size_t>(i * ldc + j)]), kSentinel)
          << "padding of c written at row " << i << " col " << j;
  }
  EXPECT_TRUE(close(got, ref, tol));
}

TYPED_TEST(KernelsTyped, GemmAllTransposesAndLeadingDims) {
  using T = TypeParam;
  std::mt19937 g(1234);
  struct Shape {
    i64 m, n, k;
  };
  std::vector<Shape> shapes = {{1, 1, 1},    {3, 7, 5},  {7, 1, 33}, {33, 65, 7},
                               {65, 33, 17}, {1, 65, 3}, {17, 3, 1}, {5, 5, 65}};
  std::uniform_int_distribution<int> rnd(1, 40);
  for (int r = 0; r < 3; ++r) shapes.push_back({rnd(g), rnd(g), rnd(g)});
  const double coeffs[][2] = {{1.0, 0.0}, {0.5, 1.0}, {-1.5, 0.25}};
  for (const auto& s : shapes)
    for (int t = 0; t < 4; ++t)
      for (const auto& ab : coeffs)
        for (i64 pad : {0, 5}) check_gemm<T>(g, t & 1, t & 2, s.m, s.n, s.k, pad, ab[0], ab[1]);
}

// k == 0: op(a) op(b) is the zero matrix, so c = beta * c (beta == 0 gives zeros, even over NaN).
TYPED_TEST(KernelsTyped, GemmZeroInnerDimension) {
  using T = TypeParam;
  const i64 m = 3, n = 4;
  std::vector<T> a(4, static_cast<T>(1)), b(4, static_cast<T>(1));
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    const i64 lda = ta ? m : 1, ldb = tb ? 1 : n;
    std::vector<T> c(static_cast<std::size_t>(m * n), nan_value<T>());
    gemm<T>(ta, tb, m, n, 0, T(1), a.data(), lda, b.data(), ldb, T(0), c.data(), n);
    for (auto x : c) EXPECT_EQ(static_cast<double>(x), 0.0) << "ta=" << ta << " tb=" << tb;
    std::vector<T> c2(static_cast<std::size_t>(m * n), static_cast<T>(3));
    gemm<T>(ta, tb, m, n, 0, T(1), a.data(), lda, b.data(), ldb, T(0.5), c2.data(), n);
    for (auto x : c2) EXPECT_EQ(static_cast<double>(x), 1.5) << "ta=" << ta << " tb=" << tb;
  }
}

template <typename T>
void check_gemm_batched(std::mt19937& g, bool ta, bool tb, i64 m, i64 n, i64 k, i64 batch,
                        bool broadcast_b, double alpha, double beta) {
  SCOPED_TRACE(::testing::Message() << "gemm_strided_batched ta=" << ta << " tb=" << tb
                                    << " m=" << m << " n=" << n << " k=" << k << " batch=" << batch
                                    << " broadcast_b=" << broadcast_b << " beta=" << beta);
  const i64 a_rows = ta ? k : m, a_cols = ta ? m : k;
  const i64 b_rows = tb ? n : k, b_cols = tb ? k : n;
  const i64 lda = a_cols + 2, ldb = b_cols + 1, ldc = n + 3;
  // Strides larger than the matrices; the gaps are NaN in the inputs, sentinel in c.
  const i64 stride_a = a_rows * lda + 7, stride_b = broadcast_b ? 0 : b_rows * ldb + 5;
  const i64 stride_c = m * ldc + 4;
  const i64 nb = broadcast_b ? 1 : batch;
  std::vector<T> a(static_cast<std::size_t>(batch * stride_a), nan_value<T>());
  std::vector<T> b(
      static_cast<std::size_t>(std::max<i64>(nb * std::max<i64>(stride_b, b_rows * ldb), 1)),
      nan_value<T>());
  std::vector<T> c(static_cast<std::size_t>(batch * stride_c), static_cast<T>(kSentinel));
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  for (i64 q = 0; q < batch; ++q) {
    for (i64 r = 0; r < a_rows; ++r)
      for (i64 s = 0; s < a_cols; ++s) a[q * stride_a + r * lda + s] = static_cast<T>(dist(g));
    for (i64 i = 0; i < m; ++i)
      for (i64 j = 0; j < n; ++j)
        c[q * stride_c + i * ldc + j] = beta == 0.0 ? nan_value<T>() : static_cast<T>(dist(g));
  }
  for (i64 q = 0; q < nb; ++q)
    for (i64 r = 0; r < b_rows; ++r)
      for (i64 s = 0; s < b_cols; ++s) b[q * stride_b + r * ldb + s] = static_cast<T>(dist(g));
  std::vector<std::vector<double>> refs(batch), tols(batch);
  for (i64 q = 0; q < batch; ++q)
    gemm_reference<T>(ta, tb, m, n, k, alpha, a.data() + q * stride_a, lda, b.data() + q * stride_b,
                      ldb, beta, c.data() + q * stride_c, ldc, refs[q], tols[q]);
  const std::vector<T> c_before = c;
  gemm_strided_batched<T>(ta, tb, m, n, k, static_cast<T>(alpha), a.data(), lda, stride_a, b.data(),
                          ldb, stride_b, static_cast<T>(beta), c.data(), ldc, stride_c, batch);
  for (i64 q = 0; q < batch; ++q) {
    std::vector<T> got(static_cast<std::size_t>(m * n));
    for (i64 i = 0; i < m; ++i)
      for (i64 j = 0; j < n; ++j) got[i * n + j] = c[q * stride_c + i * ldc + j];
    EXPECT_TRUE(close(got, refs[q], tols[q])) << "batch entry " << q;
  }
  // Everything outside the matrices (row padding and gaps between matrices) is untouched.
  for (std::size_t idx = 0; idx < c.size(); ++idx) {
    const i64 q = static_cast<i64>(idx) / stride_c, off = static_cast<i64>(idx) % stride_c;
    const bool inside = q < batch && off < m * ldc && off % ldc < n;
    if (!inside) {
      EXPECT_TRUE(std::memcmp(&c[idx], &c_before[idx], sizeof(T)) == 0)
          << "written outside the matrices at " << idx;
    }
  }
}

TYPED_TEST(KernelsTyped, GemmStridedBatched) {
  using T = TypeParam;
  std::mt19937 g(77);
  struct Shape {
    i64 m, n, k, batch;
  };
  const Shape shapes[] = {{1, 1, 1, 1}, {3, 7, 5, 3}, {33, 7, 65, 2}, {7, 33, 3, 5}, {65, 1, 7, 3}};
  for (const auto& s : shapes)
    for (int t = 0; t < 4; ++t) {
      check_gemm_batched<T>(g, t & 1, t & 2, s.m, s.n, s.k, s.batch, false, 1.0, 0.0);
      check_gemm_batched<T>(g, t & 1, t & 2, s.m, s.n, s.k, s.batch, false, -0.5, 0.75);
      check_gemm_batched<T>(g, t & 1, t & 2, s.m, s.n, s.k, s.batch, true, 1.0, 0.0);
    }
}

// ================================================================================================
// Linear
// ================================================================================================

TYPED_TEST(KernelsTyped, LinearForward) {
  using T = TypeParam;
  std::mt19937 g(11);
  struct Shape {
    i64 n, in, out;
  };
  const Shape shapes[] = {{1, 1, 1}, {3, 7, 5}, {33, 17, 65}, {7, 65, 3}, {65, 33, 33}};
  for (const auto& s : shapes) {
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(::testing::Message()
                   << "n=" << s.n << " in=" << s.in << " out=" << s.out << " bias=" << with_bias);
      auto x = random_vec<T>(g, s.n * s.in);
      auto w = random_vec<T>(g, s.out * s.in);
      auto b = random_vec<T>(g, s.out);
      std::vector<T> y(static_cast<std::size_t>(s.n * s.out), nan_value<T>());  // overwritten
      // y = x w^T + b: a length-`in` dot product plus the bias: |err| <= 2 (in+2) u S.
      std::vector<double> ref(y.size()), tol(y.size());
      for (i64 i = 0; i < s.n; ++i)
        for (i64 o = 0; o < s.out; ++o) {
          double acc = with_bias ? static_cast<double>(b[o]) : 0.0;
          double mag = std::abs(acc);
          for (i64 p = 0; p < s.in; ++p) {
            acc += static_cast<double>(x[i * s.in + p]) * w[o * s.in + p];
            mag += std::abs(static_cast<double>(x[i * s.in + p]) * w[o * s.in + p]);
          }
          ref[i * s.out + o] = acc;
          tol[i * s.out + o] = bound<T>(static_cast<double>(s.in) + 2.0, 2.0) * mag;
        }
      linear_forward<T>(x.data(), w.data(), with_bias ? b.data() : nullptr, y.data(), s.n, s.in,
                        s.out);
      EXPECT_TRUE(close(y, ref, tol));
    }
  }
}

TYPED_TEST(KernelsTyped, LinearBackward) {
  using T = TypeParam;
  std::mt19937 g(12);
  struct Shape {
    i64 n, in, out;
  };
  const Shape shapes[] = {{1, 1, 1}, {3, 7, 5}, {33, 17, 65}, {7, 65, 3}, {65, 33, 33}};
  for (const auto& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "n=" << s.n << " in=" << s.in << " out=" << s.out);
    auto x = random_vec<T>(g, s.n * s.in);
    auto w = random_vec<T>(g, s.out * s.in);
    auto dy = random_vec<T>(g, s.n * s.out);
    const auto dw0 = random_vec<T>(g, s.out * s.in);  // "+=": pre-filled gradient buffers
    const auto db0 = random_vec<T>(g, s.out);
    // dx = dy w: length-`out` dot products, |err| <= 2 (out+1) u sum|dy w|.
    std::vector<double> rdx(static_cast<std::size_t>(s.n * s.in)), tdx(rdx.size());
    for (i64 i = 0; i < s.n; ++i)
      for (i64 p = 0; p < s.in; ++p) {
        double acc = 0, mag = 0;
        for (i64 o = 0; o < s.out; ++o) {
          acc += static_cast<double>(dy[i * s.out + o]) * w[o * s.in + p];
          mag += std::abs(static_cast<double>(dy[i * s.out + o]) * w[o * s.in + p]);
        }
        rdx[i * s.in + p] = acc;
        tdx[i * s.in + p] = bound<T>(static_cast<double>(s.out) + 1.0, 2.0) * mag;
      }
    // dw += dy^T x: length-n dot products plus the accumulation, |err| <= 2 (n+2) u S.
    std::vector<double> rdw(dw0.size()), tdw(dw0.size());
    for (i64 o = 0; o < s.out; ++o)
      for (i64 p = 0; p < s.in; ++p) {
        double acc = dw0[o * s.in + p], mag = std::abs(acc);
        for (i64 i = 0; i < s.n; ++i) {
          acc += static_cast<double>(dy[i * s.out + o]) * x[i * s.in + p];
          mag += std::abs(static_cast<double>(dy[i * s.out + o]) * x[i * s.in + p]);
        }
        rdw[o * s.in + p] = acc;
        tdw[o * s.in + p] = bound<T>(static_cast<double>(s.n) + 2.0, 2.0) * mag;
      }
    // db += column sums of dy: |err| <= 2 (n+1) u S.
    std::vector<double> rdb(db0.size()), tdb(db0.size());
    for (i64 o = 0; o < s.out; ++o) {
      double acc = db0[o], mag = std::abs(acc);
      for (i64 i = 0; i < s.n; ++i) {
        acc += dy[i * s.out + o];
        mag += std::abs(static_cast<double>(dy[i * s.out + o]));
      }
      rdb[o] = acc;
      tdb[o] = bound<T>(static_cast<double>(s.n) + 1.0, 2.0) * mag;
    }
    {
      std::vector<T> dx(rdx.size(), nan_value<T>());  // overwritten
      auto dw = dw0;
      auto db = db0;
      linear_backward<T>(dy.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(), s.n, s.in,
                         s.out);
      EXPECT_TRUE(close(dx, rdx, tdx)) << "dx";
      EXPECT_TRUE(close(dw, rdw, tdw)) << "dw";
      EXPECT_TRUE(close(db, rdb, tdb)) << "db";
    }
    {
      // dx and db null: skipped; dw still accumulated.
      auto dw = dw0;
      linear_backward<T>(dy.data(), x.data(), w.data(), nullptr, dw.data(), nullptr, s.n, s.in,
                         s.out);
      EXPECT_TRUE(close(dw, rdw, tdw)) << "dw with dx, db null";
    }
  }
}

// ================================================================================================
// Softmax
// ================================================================================================

// Reference softmax of one row, exact for -inf entries, all -inf gives zeros.
void softmax_row_ref(const double* x, double* y, i64 cols) {
  double mx = -kInf;
  for (i64 j = 0; j < cols; ++j) mx = std::max(mx, x[j]);
  if (mx == -kInf) {
    for (i64 j = 0; j < cols; ++j) y[j] = 0.0;
    return;
  }
  double s = 0.0;
  for (i64 j = 0; j < cols; ++j) s += x[j] == -kInf ? 0.0 : std::exp(x[j] - mx);
  for (i64 j = 0; j < cols; ++j) y[j] = x[j] == -kInf ? 0.0 : std::exp(x[j] - mx) / s;
}

// Logits in [-5, 5] (one row shifted by +1000 to require max subtraction), a fraction of -inf
// entries when `with_neg_inf`, row 0 entirely -inf and row 1 with a single finite entry.
template <typename T>
std::vector<T> softmax_input(std::mt19937& g, i64 rows, i64 cols, bool with_neg_inf) {
  auto x = random_vec<T>(g, rows * cols, -5.0, 5.0);
  if (rows > 2)
    for (i64 j = 0; j < cols; ++j) x[2 * cols + j] += static_cast<T>(1000);
  if (with_neg_inf) {
    std::bernoulli_distribution coin(0.25);
    for (auto& v : x)
      if (coin(g)) v = -std::numeric_limits<T>::infinity();
    for (i64 j = 0; j < cols; ++j) x[j] = -std::numeric_limits<T>::infinity();
    if (rows > 1) {
      for (i64 j = 0; j < cols; ++j) x[cols + j] = -std::numeric_limits<T>::infinity();
      x[cols + cols / 2] = static_cast<T>(0.5);
    }
  }
  return x;
}

TYPED_TEST(KernelsTyped, SoftmaxForward) {
  using T = TypeParam;
  std::mt19937 g(21);
  const std::pair<i64, i64> shapes[] = {{1, 1}, {3, 7}, {7, 33}, {33, 65}, {5, 1}, {65, 3}};
  for (const auto& [rows, cols] : shapes) {
    for (bool neg_inf : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "rows=" << rows << " cols=" << cols << " -inf=" << neg_inf);
      auto x = softmax_input<T>(g, rows, cols, neg_inf);
      const auto xd = to_double(x);
      std::vector<double> ref(xd.size()), tol(xd.size());
      // Per element: the max-subtracted argument (|x - max| <= 10 here) costs ~10 u relative
      // through exp, exp itself a few ulp, the sum of `cols` positive terms cols*u relative and
      // the division one more: |err| <= 2 (cols + 32) u y. -inf entries and all -inf rows must
      // be exactly 0 (tol 0).
      for (i64 r = 0; r < rows; ++r) softmax_row_ref(&xd[r * cols], &ref[r * cols], cols);
      for (std::size_t i = 0; i < ref.size(); ++i)
        tol[i] = bound<T>(static_cast<double>(cols) + 32.0, 2.0) * ref[i];
      std::vector<T> y(x.size(), nan_value<T>());
      softmax_forward<T>(x.data(), y.data(), rows, cols);
      EXPECT_TRUE(close(y, ref, tol));
    }
  }
}

TYPED_TEST(KernelsTyped, SoftmaxBackward) {
  using T = TypeParam;
  std::mt19937 g(22);
  const std::pair<i64, i64> shapes[] = {{1, 1}, {3, 7}, {7, 33}, {33, 65}, {5, 1}, {65, 3}};
  for (const auto& [rows, cols] : shapes) {
    for (bool neg_inf : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "rows=" << rows << " cols=" << cols << " -inf=" << neg_inf);
      const auto xd = to_double(softmax_input<T>(g, rows, cols, neg_inf));
      std::vector<double> yd(xd.size());
      for (i64 r = 0; r < rows; ++r) softmax_row_ref(&xd[r * cols], &yd[r * cols], cols);
      const auto y = cast_vec<T>(yd);
      const auto dy = random_vec<T>(g, rows * cols);
      // dx_j = y_j (dy_j - s), s = sum_k dy_k y_k: the length-`cols` sum costs cols*u of
      // sum_k |dy_k y_k|, the subtraction and product 2 more: |err| <= 2 (cols+4) u S,
      // S = |y_j| (|dy_j| + sum_k |dy_k y_k|). Zero probabilities give exactly zero.
      std::vector<double> ref(yd.size()), tol(yd.size());
      for (i64 r = 0; r < rows; ++r) {
        double s = 0.0, mag = 0.0;
        for (i64 j = 0; j < cols; ++j) {
          s += static_cast<double>(dy[r * cols + j]) * y[r * cols + j];
          mag += std::abs(static_cast<double>(dy[r * cols + j]) * y[r * cols + j]);
        }
        for (i64 j = 0; j < cols; ++j) {
          const double yj = y[r * cols + j], dyj = dy[r * cols + j];
          ref[r * cols + j] = yj * (dyj - s);
          tol[r * cols + j] =
              bound<T>(static_cast<double>(cols) + 4.0, 2.0) * std::abs(yj) * (std::abs(dyj) + mag);
        }
      }
      std::vector<T> dx(y.size(), nan_value<T>());  // overwritten
      softmax_backward<T>(y.data(), dy.data(), dx.data(), rows, cols);
      EXPECT_TRUE(close(dx, ref, tol)) << "separate dx";
      auto inplace = dy;  // dx aliases dy
      softmax_backward<T>(y.data(), inplace.data(), inplace.data(), rows, cols);
      EXPECT_TRUE(close(inplace, ref, tol)) << "dx aliasing dy";
    }
  }
}

// ================================================================================================
// LayerNorm
// ================================================================================================

struct LnRef {
  std::vector<double> y, mean, rstd, y_tol, mean_tol, rstd_tol;
};

// Reference LayerNorm forward with the error bounds:
// - mean: a length-cols sum, |err| <= 2 (cols+2) u mean|x|.
// - rstd: the variance of `cols` terms, by two passes or by E[x^2] - mean^2 (which cancels when
//   mean^2 ~ var), costs (cols + few) u relative to (E[x^2] + mean^2 + eps) / (var + eps), the
//   sqrt and division a few u more: |err| <= 2 (cols+8) u S_r, S_r = rstd (E x^2 + mean^2 + eps) /
//   (var + eps).
// - y = (x - mean) rstd gamma + beta: the error of (x - mean) is u |x - mean| + err(mean); times
//   rstd and its relative error, times gamma, plus beta: |err| <= 2 (cols+8) u S_y,
//   S_y = |gamma| (rstd (|x - mean| + mean|x|) + |xhat| S_r / rstd) + |beta|.
template <typename T>
LnRef layernorm_ref(const std::vector<T>& x, const std::vector<T>& gamma,
                    const std::vector<T>& beta, i64 rows, i64 cols, double eps) {
  LnRef r;
  r.y.resize(x.size());
  r.y_tol.resize(x.size());
  r.mean.resize(rows);
  r.rstd.resize(rows);
  r.mean_tol.resize(rows);
  r.rstd_tol.resize(rows);
  const double f = bound<T>(static_cast<double>(cols) + 8.0, 2.0);
  for (i64 i = 0; i < rows; ++i) {
    const T* xr = &x[i * cols];
    double mean = 0.0, mean_abs = 0.0, ex2 = 0.0;
    for (i64 j = 0; j < cols; ++j) {
      mean += xr[j];
      mean_abs += std::abs(static_cast<double>(xr[j]));
      ex2 += static_cast<double>(xr[j]) * xr[j];
    }
    mean /= static_cast<double>(cols);
    mean_abs /= static_cast<double>(cols);
    ex2 /= static_cast<double>(cols);
    double var = 0.0;
    for (i64 j = 0; j < cols; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    var /= static_cast<double>(cols);
    const double rstd = 1.0 / std::sqrt(var + eps);
    const double s_r = rstd * (ex2 + mean * mean + eps) / (var + eps);
    r.mean[i] = mean;
    r.rstd[i] = rstd;
    r.mean_tol[i] = bound<T>(static_cast<double>(cols) + 2.0, 2.0) * mean_abs;
    r.rstd_tol[i] = f * s_r;
    for (i64 j = 0; j < cols; ++j) {
      const double xhat = (xr[j] - mean) * rstd;
      r.y[i * cols + j] = xhat * gamma[j] + beta[j];
      const double s_y =
          std::abs(static_cast<double>(gamma[j])) *
              (rstd * (std::abs(xr[j] - mean) + mean_abs) + std::abs(xhat) * s_r / rstd) +
          std::abs(static_cast<double>(beta[j]));
      r.y_tol[i * cols + j] = f * s_y;
    }
  }
  return r;
}

// Rows of x in [-2, 2] plus a per-row offset in [-1, 1].
template <typename T>
std::vector<T> layernorm_input(std::mt19937& g, i64 rows, i64 cols) {
  auto x = random_vec<T>(g, rows * cols, -2.0, 2.0);
  std::uniform_real_distribution<double> off(-1.0, 1.0);
  for (i64 i = 0; i < rows; ++i) {
    const double o = off(g);
    for (i64 j = 0; j < cols; ++j) x[i * cols + j] = static_cast<T>(x[i * cols + j] + o);
  }
  return x;
}

TYPED_TEST(KernelsTyped, LayerNormForward) {
  using T = TypeParam;
  std::mt19937 g(31);
  const double eps = 1e-5;
  const std::pair<i64, i64> shapes[] = {{1, 1},   {3, 1},  {3, 7},  {7, 33},
                                        {33, 65}, {65, 3}, {2, 130}};
  for (const auto& [rows, cols] : shapes) {
    SCOPED_TRACE(::testing::Message() << "rows=" << rows << " cols=" << cols);
    const auto x = layernorm_input<T>(g, rows, cols);
    const auto gamma = random_vec<T>(g, cols, 0.5, 1.5);
    const auto beta = random_vec<T>(g, cols, -0.5, 0.5);
    const auto r = layernorm_ref(x, gamma, beta, rows, cols, eps);
    std::vector<T> y(x.size(), nan_value<T>()), mean(rows, nan_value<T>()),
        rstd(rows, nan_value<T>());
    layernorm_forward<T>(x.data(), gamma.data(), beta.data(), y.data(), mean.data(), rstd.data(),
                         rows, cols, static_cast<T>(eps));
    EXPECT_TRUE(close(mean, r.mean, r.mean_tol)) << "mean";
    // eps is passed as T: for float that changes var + eps by at most u * eps relative, far
    // inside the rstd bound.
    EXPECT_TRUE(close(rstd, r.rstd, r.rstd_tol)) << "rstd";
    EXPECT_TRUE(close(y, r.y, r.y_tol)) << "y";
  }
}

TYPED_TEST(KernelsTyped, LayerNormBackward) {
  using T = TypeParam;
  std::mt19937 g(32);
  const double eps = 1e-5;
  const std::pair<i64, i64> shapes[] = {{1, 1},   {3, 1},  {3, 7},  {7, 33},
                                        {33, 65}, {65, 3}, {2, 130}};
  for (const auto& [rows, cols] : shapes) {
    SCOPED_TRACE(::testing::Message() << "rows=" << rows << " cols=" << cols);
    const auto x = layernorm_input<T>(g, rows, cols);
    const auto gamma = random_vec<T>(g, cols, 0.5, 1.5);
    const auto beta = random_vec<T>(g, cols);
    const auto dy = random_vec<T>(g, rows * cols);
    // Saved statistics from the reference (rounded to T); the backward is checked against these
    // inputs independently of the kernel's forward.
    const auto fwd = layernorm_ref(x, gamma, beta, rows, cols, eps);
    const auto mean = cast_vec<T>(fwd.mean);
    const auto rstd = cast_vec<T>(fwd.rstd);
    const auto dgamma0 = random_vec<T>(g, cols);
    const auto dbeta0 = random_vec<T>(g, cols);
    // Textbook backward: xhat = (x - mean) rstd, gdy = dy gamma,
    // dx = rstd (gdy - mean(gdy) - xhat mean(gdy xhat)); dgamma += sum_rows dy xhat;
    // dbeta += sum_rows dy.
    // Bounds: xhat carries u (|x| + |mean|) rstd =: e_j (in units of u); the two row means are
    // length-cols sums; so |err dx_j| <= 2 (cols+8) u S with
    // S = rstd (|gdy_j| + mean|gdy| + (|xhat_j| + e_j) mean(|gdy| (|xhat| + e))),
    // |err dgamma| <= 2 (rows+8) u (|dgamma0| + sum_rows |dy| (|xhat| + e)),
    // |err dbeta| <= 2 (rows+2) u (|dbeta0| + sum_rows |dy|).
    std::vector<double> rdx(x.size()), tdx(x.size());
    std::vector<double> rdg(dgamma0.begin(), dgamma0.end()), rdb(dbeta0.begin(), dbeta0.end());
    std::vector<double> mdg(cols), mdb(cols);
    for (i64 j = 0; j < cols; ++j) {
      mdg[j] = std::abs(rdg[j]);
      mdb[j] = std::abs(rdb[j]);
    }
    for (i64 i = 0; i < rows; ++i) {
      const double mu = mean[i], rs = rstd[i];
      double a = 0, b = 0, a_abs = 0, b_abs = 0;
      std::vector<double> xhat(cols), e(cols), gd(cols);
      for (i64 j = 0; j < cols; ++j) {
        xhat[j] = (x[i * cols + j] - mu) * rs;
        e[j] = (std::abs(static_cast<double>(x[i * cols + j])) + std::abs(mu)) * rs;
        gd[j] = static_cast<double>(dy[i * cols + j]) * gamma[j];
        a += gd[j];
        b += gd[j] * xhat[j];
        a_abs += std::abs(gd[j]);
        b_abs += std::abs(gd[j]) * (std::abs(xhat[j]) + e[j]);
        rdg[j] += dy[i * cols + j] * xhat[j];
        rdb[j] += dy[i * cols + j];
        mdg[j] += std::abs(dy[i * cols + j]) * (std::abs(xhat[j]) + e[j]);
        mdb[j] += std::abs(static_cast<double>(dy[i * cols + j]));
      }
      const double n = static_cast<double>(cols);
      a /= n;
      b /= n;
      a_abs /= n;
      b_abs /= n;
      for (i64 j = 0; j < cols; ++j) {
        rdx[i * cols + j] = rs * (gd[j] - a - xhat[j] * b);
        tdx[i * cols + j] = bound<T>(n + 8.0, 2.0) * rs *
                            (std::abs(gd[j]) + a_abs + (std::abs(xhat[j]) + e[j]) * b_abs);
      }
    }
    std::vector<double> tdg(cols), tdb(cols);
    for (i64 j = 0; j < cols; ++j) {
      tdg[j] = bound<T>(static_cast<double>(rows) + 8.0, 2.0) * mdg[j];
      tdb[j] = bound<T>(static_cast<double>(rows) + 2.0, 2.0) * mdb[j];
    }
    std::vector<T> dx(x.size(), nan_value<T>());  // overwritten
    auto dgamma = dgamma0;                        // +=
    auto dbeta = dbeta0;                          // +=
    layernorm_backward<T>(dy.data(), x.data(), gamma.data(), mean.data(), rstd.data(), dx.data(),
                          dgamma.data(), dbeta.data(), rows, cols);
    EXPECT_TRUE(close(dx, rdx, tdx)) << "dx";
    EXPECT_TRUE(close(dgamma, rdg, tdg)) << "dgamma";
    EXPECT_TRUE(close(dbeta, rdb, tdb)) << "dbeta";
  }
}

// ================================================================================================
// GELU
// ================================================================================================

double gelu_ref(double x) {
  const double k = std::sqrt(2.0 / std::numbers::pi);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}
double gelu_grad_ref(double x) {
  const double k = std::sqrt(2.0 / std::numbers::pi);
  const double t = std::tanh(k * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
}

template <typename T>
std::vector<T> gelu_input(std::mt19937& g, i64 n) {
  auto x = random_vec<T>(g, n, -6.0, 6.0);
  const double special[] = {0.0, 1e-3, -1e-3, 3.0, -3.0, 10.0, -10.0, -20.0, 20.0};
  for (std::size_t i = 0; i < std::size(special) && i < x.size(); ++i)
    x[i] = static_cast<T>(special[i]);
  return x;
}

TYPED_TEST(KernelsTyped, GeluForwardBackward) {
  using T = TypeParam;
  std::mt19937 g(41);
  for (i64 n : {1, 3, 7, 33, 65, 1000}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const auto x = gelu_input<T>(g, n);
    const auto dy = random_vec<T>(g, n);
    // Forward: z = k (x + c x^3) has a few u relative error, which moves tanh by at most
    // few u * |z| sech^2(z) <= few u (|z| sech^2 z <= 0.45), tanh itself a few ulp, then
    // 0.5 x (1 + t) and the final rounding: |err| <= 16 u (|x| + |y|).
    // Backward: 0.5 (1 + t) is within ~4 u; (1 - t^2) within ~6 u absolute and is multiplied by
    // 0.5 k x (1 + 3c x^2): |err| <= 16 u |dy| (1 + |x| (1 + 0.135 x^2)).
    std::vector<double> ry(n), ty(n), rdx(n), tdx(n);
    for (i64 i = 0; i < n; ++i) {
      const double xi = x[i];
      ry[i] = gelu_ref(xi);
      ty[i] = bound<T>(1.0, 16.0) * (std::abs(xi) + std::abs(ry[i]));
      rdx[i] = static_cast<double>(dy[i]) * gelu_grad_ref(xi);
      tdx[i] = bound<T>(1.0, 16.0) * std::abs(static_cast<double>(dy[i])) *
               (1.0 + std::abs(xi) * (1.0 + 0.135 * xi * xi));
    }
    std::vector<T> y(n, nan_value<T>());
    gelu_forward<T>(x.data(), y.data(), n);
    EXPECT_TRUE(close(y, ry, ty)) << "forward";
    std::vector<T> dx(n, nan_value<T>());  // overwritten
    gelu_backward<T>(x.data(), dy.data(), dx.data(), n);
    EXPECT_TRUE(close(dx, rdx, tdx)) << "backward";
    auto inplace = dy;  // dx aliases dy
    gelu_backward<T>(x.data(), inplace.data(), inplace.data(), n);
    EXPECT_TRUE(close(inplace, rdx, tdx)) << "backward, dx aliasing dy";
  }
}

// ================================================================================================
// Embedding
// ================================================================================================

TYPED_TEST(KernelsTyped, EmbeddingForwardBackward) {
  using T = TypeParam;
  std::mt19937 g(51);
  struct Shape {
    i64 n, vocab, d;
  };
  const Shape shapes[] = {{1, 1, 1}, {3, 7, 5}, {33, 5, 7}, {65, 3, 33}, {7, 65, 1}};
  for (const auto& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "n=" << s.n << " vocab=" << s.vocab << " d=" << s.d);
    const auto table = random_vec<T>(g, s.vocab * s.d);
    auto ids = random_ids(g, s.n, s.vocab);  // small vocab: many repeated ids
    ids[0] = static_cast<i32>(s.vocab - 1);  // the last row is reachable
    // Forward is a copy: bitwise.
    std::vector<T> out(static_cast<std::size_t>(s.n * s.d), nan_value<T>());
    std::vector<T> expect(out.size());
    for (i64 i = 0; i < s.n; ++i)
      for (i64 j = 0; j < s.d; ++j) expect[i * s.d + j] = table[ids[i] * s.d + j];
    gather_rows_forward<T>(table.data(), ids.data(), out.data(), s.n, s.vocab, s.d);
    EXPECT_TRUE(same_bits(out, expect)) << "forward";
    // Backward: dtable += scatter; a row hit `c` times is a sum of c + 1 terms:
    // |err| <= 2 (c+1) u (|dtable0| + sum |dout|).
    const auto dout = random_vec<T>(g, s.n * s.d);
    const auto dtable0 = random_vec<T>(g, s.vocab * s.d);
    std::vector<double> ref(dtable0.begin(), dtable0.end()), mag(ref.size());
    std::vector<double> count(static_cast<std::size_t>(s.vocab), 0.0);
    for (std::size_t i = 0; i < ref.size(); ++i) mag[i] = std::abs(ref[i]);
    for (i64 i = 0; i < s.n; ++i) {
      count[ids[i]] += 1.0;
      for (i64 j = 0; j < s.d; ++j) {
        ref[ids[i] * s.d + j] += dout[i * s.d + j];
        mag[ids[i] * s.d + j] += std::abs(static_cast<double>(dout[i * s.d + j]));
      }
    }
    std::vector<double> tol(ref.size());
    for (i64 v = 0; v < s.vocab; ++v)
      for (i64 j = 0; j < s.d; ++j)
        tol[v * s.d + j] = bound<T>(count[v] + 1.0, 2.0) * mag[v * s.d + j];
    auto dtable = dtable0;
    gather_rows_backward<T>(dout.data(), ids.data(), dtable.data(), s.n, s.vocab, s.d);
    EXPECT_TRUE(close(dtable, ref, tol)) << "backward";
  }
}

TYPED_TEST(KernelsTyped, EmbeddingOutOfRangeIdsThrowData) {
  using T = TypeParam;
  const i64 n = 7, vocab = 13, d = 3;
  std::vector<T> table(vocab * d, T(1)), out(n * d), dout(n * d, T(1)), dtable(vocab * d);
  for (i32 bad : {static_cast<i32>(vocab), static_cast<i32>(vocab + 100), -1,
                  std::numeric_limits<i32>::min()}) {
    std::vector<i32> ids(n, 2);
    ids[5] = bad;
    const std::string what = "id " + std::to_string(bad);
    expect_data_error(
        [&] { gather_rows_forward<T>(table.data(), ids.data(), out.data(), n, vocab, d); },
        "gather", "embedding lookup (gather_rows_forward) " + what);
    expect_data_error(
        [&] { gather_rows_backward<T>(dout.data(), ids.data(), dtable.data(), n, vocab, d); },
        "gather", "embedding gradient (gather_rows_backward) " + what);
  }
}

// ================================================================================================
// Cross-entropy
// ================================================================================================

TYPED_TEST(KernelsTyped, CrossEntropyForwardBackward) {
  using T = TypeParam;
  std::mt19937 g(61);
  const std::pair<i64, i64> shapes[] = {{1, 1}, {3, 7}, {33, 65}, {7, 1}, {65, 33}, {5, 1000}};
  for (const auto& [n, v] : shapes) {
    SCOPED_TRACE(::testing::Message() << "n=" << n << " v=" << v);
    auto logits = random_vec<T>(g, n * v, -8.0, 8.0);
    if (n > 2)
      for (i64 j = 0; j < v; ++j) logits[2 * v + j] += static_cast<T>(1000);  // needs max-shift
    auto targets = random_ids(g, n, v);
    std::bernoulli_distribution ignore(0.2);
    for (auto& t : targets)
      if (ignore(g)) t = -1;
    if (n > 1) targets[1] = -1;
    targets[0] = static_cast<i32>(v - 1);
    // Reference. lse = max + log sum exp(x - max): exp of arguments in [-range, 0] costs
    // u (range + 2) relative per term, the sum of v terms v u relative, log turns relative into
    // absolute error, adding max one rounding of |lse|; the loss subtracts x_t:
    // |err loss| <= 4 u S, S = v + range + 8 + |lse| + |x_t| + |loss|.
    std::vector<double> rl(n), tl(n), rlse(n), tlse(n), range(n);
    for (i64 i = 0; i < n; ++i) {
      double mx = -kInf, mn = kInf;
      for (i64 j = 0; j < v; ++j) {
        mx = std::max(mx, static_cast<double>(logits[i * v + j]));
        mn = std::min(mn, static_cast<double>(logits[i * v + j]));
      }
      double s = 0.0;
      for (i64 j = 0; j < v; ++j) s += std::exp(logits[i * v + j] - mx);
      rlse[i] = mx + std::log(s);
      range[i] = mx - mn;
      const double s_lse = static_cast<double>(v) + range[i] + 8.0 + std::abs(rlse[i]);
      tlse[i] = bound<T>(1.0, 4.0) * s_lse;
      if (targets[i] < 0) {
        rl[i] = 0.0;
        tl[i] = 0.0;  // ignored: exactly 0
      } else {
        const double xt = logits[i * v + targets[i]];
        rl[i] = rlse[i] - xt;
        tl[i] = bound<T>(1.0, 4.0) * (s_lse + std::abs(xt) + std::abs(rl[i]));
      }
    }
    std::vector<T> losses(n, nan_value<T>()), lse(n, nan_value<T>());
    cross_entropy_forward<T>(logits.data(), targets.data(), losses.data(), lse.data(), n, v);
    EXPECT_TRUE(close(losses, rl, tl)) << "losses";
    std::vector<T> lse_kept;
    std::vector<double> rlse_kept, tlse_kept;
    for (i64 i = 0; i < n; ++i)
      if (targets[i] >= 0) {  // lse of ignored rows is unspecified
        lse_kept.push_back(lse[i]);
        rlse_kept.push_back(rlse[i]);
        tlse_kept.push_back(tlse[i]);
      }
    EXPECT_TRUE(close(lse_kept, rlse_kept, tlse_kept)) << "lse";

    // Backward from the reference lse rounded to T (independent of the kernel's forward).
    // p_j = exp(x_j - lse): the argument carries u (|x_j| + |lse|), exp a few ulp; a kernel that
    // recomputes the softmax instead pays the v u + range u of the forward. Subtracting the one-hot
    // and multiplying by dloss add a rounding each:
    // |err| <= 4 u |dloss| (p (|x_j| + |lse| + v + range + 8) + [j == t]).
    const auto lse_in = cast_vec<T>(rlse);
    const auto dloss = random_vec<T>(g, n);
    std::vector<double> rdl(n * v), tdl(n * v);
    for (i64 i = 0; i < n; ++i)
      for (i64 j = 0; j < v; ++j) {
        const std::size_t k = static_cast<std::size_t>(i * v + j);
        if (targets[i] < 0) {
          rdl[k] = 0.0;
          tdl[k] = 0.0;
          continue;
        }
        const double xj = logits[k];
        const double p = std::exp(xj - static_cast<double>(lse_in[i]));
        const double onehot = j == targets[i] ? 1.0 : 0.0;
        rdl[k] = static_cast<double>(dloss[i]) * (p - onehot);
        tdl[k] = bound<T>(1.0, 4.0) * std::abs(static_cast<double>(dloss[i])) *
                 (p * (std::abs(xj) + std::abs(static_cast<double>(lse_in[i])) +
                       static_cast<double>(v) + range[i] + 8.0) +
                  onehot);
      }
    std::vector<T> dlogits(n * v, nan_value<T>());  // overwritten, ignored rows included
    cross_entropy_backward<T>(logits.data(), targets.data(), lse_in.data(), dloss.data(),
                              dlogits.data(), n, v);
    EXPECT_TRUE(close(dlogits, rdl, tdl)) << "dlogits";
  }
}

TYPED_TEST(KernelsTyped, CrossEntropyOutOfRangeTargetsThrowData) {
  using T = TypeParam;
  const i64 n = 6, v = 11;
  std::vector<T> logits(n * v, T(0.5)), losses(n), lse(n, T(3)), dloss(n, T(1)), dl(n * v);
  for (i32 bad :
       {static_cast<i32>(v), static_cast<i32>(v + 7), -2, std::numeric_limits<i32>::min()}) {
    std::vector<i32> targets = {0, 1, -1, 4, bad, 10};
    const std::string what = "target " + std::to_string(bad);
    expect_data_error(
        [&] {
          cross_entropy_forward<T>(logits.data(), targets.data(), losses.data(), lse.data(), n, v);
        },
        "crossentropy", "cross_entropy_forward " + what);
    expect_data_error(
        [&] {
          cross_entropy_backward<T>(logits.data(), targets.data(), lse.data(), dloss.data(),
                                    dl.data(), n, v);
        },
        "crossentropy", "cross_entropy_backward " + what);
  }
}

// ================================================================================================
// AdamW
// ================================================================================================

TYPED_TEST(KernelsTyped, AdamWSeveralSteps) {
  using T = TypeParam;
  std::mt19937 g(71);
  const AdamWHyper variants[] = {
      {1e-2, 0.9, 0.95, 1e-8, 0.1, 1},
      {3e-3, 0.8, 0.999, 1e-6, 0.0, 1},
  };
  for (const auto& base : variants) {
    for (i64 n : {1, 7, 65}) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " lr=" << base.lr << " beta1=" << base.beta1
                                        << " beta2=" << base.beta2 << " wd=" << base.weight_decay);
      auto p = random_vec<T>(g, n);
      std::vector<T> m(n, T(0)), v(n, T(0));
      // Double-precision run of the same updates, from the same initial state, for the
      // end-to-end check of the double instantiation.
      std::vector<double> pe(p.begin(), p.end()), me(n, 0.0), ve(n, 0.0);
      const double b1 = base.beta1, b2 = base.beta2;
      // Per-step bound. The hyperparameters are double; a kernel may round beta to T before
      // forming 1 - beta, which costs u / (1 - beta) relative (cancellation), and the same in the
      // bias corrections 1 - beta^t. With those, the moments and the step direction
      // mhat / (sqrt(vhat) + eps) carry at most C u relative error with
      // C = 8 + 2/(1-beta1) + 2/(1-beta2) (m's error is relative to b1|m| + (1-b1)|g|, which
      // does not cancel), and the parameter update adds a rounding of |p| and |p'|:
      //   |err m| <= C u (b1 |m| + (1 - b1) |g|);   |err v| <= C u (b2 v + (1 - b2) g^2);
      //   |err p| <= C u (|p| + |p'| + lr (mabs_hat / (sqrt(vhat) + eps) + wd |p|)).
      const double cfac = 8.0 + 2.0 / (1.0 - b1) + 2.0 / (1.0 - b2);
      for (std::int64_t step = 1; step <= 6; ++step) {
        SCOPED_TRACE(::testing::Message() << "step " << step);
        AdamWHyper h = base;
        h.step = step;
        const auto grad = random_vec<T>(g, n, -2.0, 2.0);
        const double c1 = 1.0 - std::pow(b1, static_cast<double>(step));
        const double c2 = 1.0 - std::pow(b2, static_cast<double>(step));
        std::vector<double> rp(n), rm(n), rv(n), tp(n), tm(n), tv(n);
        for (i64 i = 0; i < n; ++i) {
          const double gi = grad[i], pi = p[i], mi = m[i], vi = v[i];
          rm[i] = b1 * mi + (1 - b1) * gi;
          rv[i] = b2 * vi + (1 - b2) * gi * gi;
          const double mhat = rm[i] / c1, vhat = rv[i] / c2;
          rp[i] = pi - h.lr * (mhat / (std::sqrt(vhat) + h.eps) + h.weight_decay * pi);
          const double mabs = b1 * std::abs(mi) + (1 - b1) * std::abs(gi);
          tm[i] = bound<T>(1.0, cfac) * mabs;
          tv[i] = bound<T>(1.0, cfac) * rv[i];
          tp[i] =
              bound<T>(1.0, cfac) *
              (std::abs(pi) + std::abs(rp[i]) +
               h.lr * ((mabs / c1) / (std::sqrt(vhat) + h.eps) + h.weight_decay * std::abs(pi)));
          // End-to-end double trajectory.
          me[i] = b1 * me[i] + (1 - b1) * gi;
          ve[i] = b2 * ve[i] + (1 - b2) * gi * gi;
          pe[i] -= h.lr * ((me[i] / c1) / (std::sqrt(ve[i] / c2) + h.eps) + h.weight_decay * pe[i]);
        }
        adamw_update<T>(p.data(), grad.data(), m.data(), v.data(), n, h);
        EXPECT_TRUE(close(m, rm, tm)) << "m";
        EXPECT_TRUE(close(v, rv, tv)) << "v";
        EXPECT_TRUE(close(p, rp, tp)) << "param";
      }
      if constexpr (std::is_same_v<T, double>) {
        // Six steps in double against the independent double trajectory: ~1e-12 relative.
        std::vector<double> tol(n);
        for (i64 i = 0; i < n; ++i) tol[i] = 1e-12 * (1.0 + std::abs(pe[i]));
        EXPECT_TRUE(close(p, pe, tol)) << "end-to-end param";
      }
    }
  }
}

// ================================================================================================
// Row gather and scatter-add
// ================================================================================================

TYPED_TEST(KernelsTyped, GatherRows) {
  using T = TypeParam;
  std::mt19937 g(81);
  struct Shape {
    i64 m, n, d;
  };
  const Shape shapes[] = {{1, 1, 1}, {3, 7, 5}, {33, 7, 3}, {65, 33, 7}, {7, 65, 33}, {9, 2, 1}};
  for (const auto& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "m=" << s.m << " n=" << s.n << " d=" << s.d);
    const auto src = random_vec<T>(g, s.n * s.d);
    auto idx = random_ids(g, s.m, s.n);
    idx[0] = static_cast<i32>(s.n - 1);
    if (s.m > 2) idx[2] = idx[1];  // at least one repeat
    std::vector<T> dst(s.m * s.d, nan_value<T>()), expect(s.m * s.d);
    for (i64 i = 0; i < s.m; ++i)
      for (i64 j = 0; j < s.d; ++j) expect[i * s.d + j] = src[idx[i] * s.d + j];
    gather_rows_forward<T>(src.data(), idx.data(), dst.data(), s.m, s.n, s.d);
    EXPECT_TRUE(same_bits(dst, expect)) << "forward";
    // Backward: dsrc += scatter of ddst; a row hit c times: |err| <= 2 (c+1) u S.
    const auto ddst = random_vec<T>(g, s.m * s.d);
    const auto dsrc0 = random_vec<T>(g, s.n * s.d);
    std::vector<double> ref(dsrc0.begin(), dsrc0.end()), mag(ref.size()), count(s.n, 0.0);
    for (std::size_t i = 0; i < ref.size(); ++i) mag[i] = std::abs(ref[i]);
    for (i64 i = 0; i < s.m; ++i) {
      count[idx[i]] += 1.0;
      for (i64 j = 0; j < s.d; ++j) {
        ref[idx[i] * s.d + j] += ddst[i * s.d + j];
        mag[idx[i] * s.d + j] += std::abs(static_cast<double>(ddst[i * s.d + j]));
      }
    }
    std::vector<double> tol(ref.size());
    for (i64 r = 0; r < s.n; ++r)
      for (i64 j = 0; j < s.d; ++j)
        tol[r * s.d + j] = bound<T>(count[r] + 1.0, 2.0) * mag[r * s.d + j];
    auto dsrc = dsrc0;
    gather_rows_backward<T>(ddst.data(), idx.data(), dsrc.data(), s.m, s.n, s.d);
    EXPECT_TRUE(close(dsrc, ref, tol)) << "backward";
  }
}

template <typename T>
void check_scatter_add(std::mt19937& g, i64 m, i64 n, i64 d, bool weighted) {
  SCOPED_TRACE(::testing::Message()
               << "m=" << m << " n=" << n << " d=" << d << " weighted=" << weighted);
  const auto src = random_vec<T>(g, m * d);
  auto idx = random_ids(g, m, n);
  idx[0] = static_cast<i32>(n - 1);
  if (m > 3) idx[3] = idx[1];  // at least one repeat
  const auto w = random_vec<T>(g, m, 0.0, 1.0);
  const T* wp = weighted ? w.data() : nullptr;
  auto wi = [&](i64 i) { return weighted ? static_cast<double>(w[i]) : 1.0; };
  // Forward: dst[idx[i]] += w[i] src[i] in increasing i. A row hit c times is a sum of c + 1
  // terms, each product one rounding: |err| <= 2 (c+2) u (|dst0| + sum |w src|).
  const auto dst0 = random_vec<T>(g, n * d);
  std::vector<double> ref(dst0.begin(), dst0.end()), mag(ref.size()), count(n, 0.0);
  for (std::size_t i = 0; i < ref.size(); ++i) mag[i] = std::abs(ref[i]);
  for (i64 i = 0; i < m; ++i) {
    count[idx[i]] += 1.0;
    for (i64 j = 0; j < d; ++j) {
      ref[idx[i] * d + j] += wi(i) * src[i * d + j];
      mag[idx[i] * d + j] += std::abs(wi(i) * src[i * d + j]);
    }
  }
  std::vector<double> tol(ref.size());
  for (i64 r = 0; r < n; ++r)
    for (i64 j = 0; j < d; ++j) tol[r * d + j] = bound<T>(count[r] + 2.0, 2.0) * mag[r * d + j];
  auto dst = dst0;
  scatter_add_rows_forward<T>(src.data(), idx.data(), wp, dst.data(), m, n, d);
  EXPECT_TRUE(close(dst, ref, tol)) << "forward";

  // Backward: dsrc[i] = w[i] ddst[idx[i]] (one product: |err| <= u |.|, exact when w is null);
  // dw[i] = dot(ddst[idx[i]], src[i]) (length d: |err| <= 2 (d+1) u sum |ddst src|).
  const auto ddst = random_vec<T>(g, n * d);
  std::vector<double> rds(m * d), tds(m * d), rdw(m), tdw(m);
  for (i64 i = 0; i < m; ++i) {
    double dot = 0, dmag = 0;
    for (i64 j = 0; j < d; ++j) {
      const double dd = ddst[idx[i] * d + j];
      rds[i * d + j] = wi(i) * dd;
      tds[i * d + j] = weighted ? bound<T>(1.0, 1.0) * std::abs(rds[i * d + j]) : 0.0;
      dot += dd * src[i * d + j];
      dmag += std::abs(dd * src[i * d + j]);
    }
    rdw[i] = dot;
    tdw[i] = bound<T>(static_cast<double>(d) + 1.0, 2.0) * dmag;
  }
  std::vector<T> dsrc(m * d, nan_value<T>());  // overwritten
  auto dw = sentinel_vec<T>(m);                // overwritten when w is given, else untouched
  if (weighted) std::fill(dw.begin(), dw.end(), nan_value<T>());
  scatter_add_rows_backward<T>(ddst.data(), idx.data(), src.data(), wp, dsrc.data(), dw.data(), m,
                               n, d);
  EXPECT_TRUE(close(dsrc, rds, tds)) << "dsrc";
  if (weighted) {
    EXPECT_TRUE(close(dw, rdw, tdw)) << "dw";
    // dw null: skipped, dsrc still written.
    std::vector<T> dsrc2(m * d, nan_value<T>());
    scatter_add_rows_backward<T>(ddst.data(), idx.data(), src.data(), wp, dsrc2.data(), nullptr, m,
                                 n, d);
    EXPECT_TRUE(close(dsrc2, rds, tds)) << "dsrc with dw null";
  } else {
    EXPECT_TRUE(untouched(dw)) << "dw must not be written when w is null";
  }
}

TYPED_TEST(KernelsTyped, ScatterAddRows) {
  using T = TypeParam;
  std::mt19937 g(91);
  struct Shape {
    i64 m, n, d;
  };
  const Shape shapes[] = {{1, 1, 1}, {3, 7, 5}, {33, 7, 3}, {65, 33, 7}, {7, 65, 33}, {9, 2, 1}};
  for (const auto& s : shapes)
    for (bool weighted : {true, false}) check_scatter_add<T>(g, s.m, s.n, s.d, weighted);
}

TYPED_TEST(KernelsTyped, RowIndicesOutOfRangeThrowData) {
  using T = TypeParam;
  const i64 m = 6, n = 9, d = 2;
  std::vector<T> src(std::max(m, n) * d, T(1)), dst(std::max(m, n) * d), w(m, T(1)), dw(m);
  for (i32 bad :
       {static_cast<i32>(n), static_cast<i32>(n + 50), -1, std::numeric_limits<i32>::min()}) {
    std::vector<i32> idx = {0, 8, 3, bad, 1, 2};
    const std::string what = "index " + std::to_string(bad);
    expect_data_error([&] { gather_rows_forward<T>(src.data(), idx.data(), dst.data(), m, n, d); },
                      "gather", "gather_rows_forward " + what);
    expect_data_error([&] { gather_rows_backward<T>(src.data(), idx.data(), dst.data(), m, n, d); },
                      "gather", "gather_rows_backward " + what);
    expect_data_error(
        [&] { scatter_add_rows_forward<T>(src.data(), idx.data(), w.data(), dst.data(), m, n, d); },
        "scatter", "scatter_add_rows_forward " + what);
    expect_data_error(
        [&] { scatter_add_rows_forward<T>(src.data(), idx.data(), nullptr, dst.data(), m, n, d); },
        "scatter", "scatter_add_rows_forward (no weights) " + what);
    expect_data_error(
        [&] {
          scatter_add_rows_backward<T>(src.data(), idx.data(), src.data(), w.data(), dst.data(),
                                       dw.data(), m, n, d);
        },
        "scatter", "scatter_add_rows_backward " + what);
  }
}

// ================================================================================================
// Elementwise helpers
// ================================================================================================

TYPED_TEST(KernelsTyped, ElementwiseHelpers) {
  using T = TypeParam;
  std::mt19937 g(101);
  for (i64 n : {1, 3, 7, 33, 65, 1001}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    {
      std::vector<T> x(n, nan_value<T>());
      fill<T>(x.data(), static_cast<T>(2.5), n);
      for (auto v : x) ASSERT_EQ(static_cast<double>(v), 2.5) << "fill";
    }
    const auto x = random_vec<T>(g, n);
    const auto y0 = random_vec<T>(g, n);
    const double alpha = -0.75;
    {
      // y += alpha x: a product and a sum (or one fma): |err| <= 2 u (|y| + |alpha x|).
      std::vector<double> ref(n), tol(n);
      for (i64 i = 0; i < n; ++i) {
        ref[i] = static_cast<double>(y0[i]) + alpha * x[i];
        tol[i] =
            bound<T>(1.0, 2.0) * (std::abs(static_cast<double>(y0[i])) + std::abs(alpha * x[i]));
      }
      auto y = y0;
      axpy<T>(static_cast<T>(alpha), x.data(), y.data(), n);
      EXPECT_TRUE(close(y, ref, tol)) << "axpy";
    }
    {
      // x *= alpha: one rounding.
      std::vector<double> ref(n), tol(n);
      for (i64 i = 0; i < n; ++i) {
        ref[i] = alpha * x[i];
        tol[i] = bound<T>(1.0, 1.0) * std::abs(ref[i]);
      }
      auto xs = x;
      scale<T>(xs.data(), static_cast<T>(alpha), n);
      EXPECT_TRUE(close(xs, ref, tol)) << "scale";
    }
    {
      // y = a + b: one rounding; also with y aliasing a and y aliasing b.
      std::vector<double> ref(n), tol(n);
      for (i64 i = 0; i < n; ++i) {
        ref[i] = static_cast<double>(x[i]) + y0[i];
        tol[i] = bound<T>(1.0, 1.0) * std::abs(ref[i]);
      }
      std::vector<T> y(n, nan_value<T>());
      add<T>(x.data(), y0.data(), y.data(), n);
      EXPECT_TRUE(close(y, ref, tol)) << "add";
      auto a = x;
      add<T>(a.data(), y0.data(), a.data(), n);
      EXPECT_TRUE(close(a, ref, tol)) << "add, y aliasing a";
      auto b = y0;
      add<T>(x.data(), b.data(), b.data(), n);
      EXPECT_TRUE(close(b, ref, tol)) << "add, y aliasing b";
    }
    {
      // sum of squares accumulated in double: a square of a float is exact in double, so the
      // only error is the double summation, |err| <= n 2^-53 sum x^2 (< 1e-12 relative here).
      double ref = 0.0;
      for (i64 i = 0; i < n; ++i) ref += static_cast<double>(x[i]) * x[i];
      const double got = sum_squares<T>(x.data(), n);
      EXPECT_NEAR(got, ref, 1e-12 * ref) << "sum_squares";
    }
  }
  // sum_rows: out[cols] += column sums, a sum of rows + 1 terms: |err| <= 2 (rows+1) u S.
  const std::pair<i64, i64> shapes[] = {{1, 1}, {3, 7}, {33, 65}, {65, 3}, {7, 1}, {1, 33}};
  for (const auto& [rows, cols] : shapes) {
    SCOPED_TRACE(::testing::Message() << "sum_rows rows=" << rows << " cols=" << cols);
    const auto x = random_vec<T>(g, rows * cols);
    const auto out0 = random_vec<T>(g, cols);
    std::vector<double> ref(out0.begin(), out0.end()), tol(cols);
    for (i64 j = 0; j < cols; ++j) {
      double mag = std::abs(ref[j]);
      for (i64 i = 0; i < rows; ++i) {
        ref[j] += x[i * cols + j];
        mag += std::abs(static_cast<double>(x[i * cols + j]));
      }
      tol[j] = bound<T>(static_cast<double>(rows) + 1.0, 2.0) * mag;
    }
    auto out = out0;
    sum_rows<T>(x.data(), out.data(), rows, cols);
    EXPECT_TRUE(close(out, ref, tol));
  }
}

// ================================================================================================
// Empty batches: every kernel is a no-op, writes nothing and reads no index.
// ================================================================================================

TYPED_TEST(KernelsTyped, ZeroSizeBatchesAreNoOps) {
  using T = TypeParam;
  const i64 cap = 256;
  auto in1 = std::vector<T>(cap, T(0.5));
  auto in2 = std::vector<T>(cap, T(0.25));
  auto in3 = std::vector<T>(cap, T(1));
  std::vector<i32> bad_ids(cap, 1 << 30);  // never read: an empty batch must not throw
  auto o1 = sentinel_vec<T>(cap), o2 = sentinel_vec<T>(cap), o3 = sentinel_vec<T>(cap),
       o4 = sentinel_vec<T>(cap);
  auto check_all = [&](const char* what) {
    EXPECT_TRUE(untouched(o1)) << what;
    EXPECT_TRUE(untouched(o2)) << what;
    EXPECT_TRUE(untouched(o3)) << what;
    EXPECT_TRUE(untouched(o4)) << what;
  };
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    // Leading dimensions are the minimal ones the header allows (0 where a dimension is 0).
    gemm<T>(ta, tb, 0, 5, 3, T(1), in1.data(), ta ? 0 : 3, in2.data(), tb ? 3 : 5, T(0), o1.data(),
            5);
    check_all("gemm m=0");
    gemm<T>(ta, tb, 4, 0, 3, T(1), in1.data(), ta ? 4 : 3, in2.data(), tb ? 3 : 0, T(0), o1.data(),
            0);
    check_all("gemm n=0");
    gemm_strided_batched<T>(ta, tb, 3, 4, 5, T(1), in1.data(), ta ? 3 : 5, 15, in2.data(),
                            tb ? 5 : 4, 20, T(0), o1.data(), 4, 12, 0);
    check_all("gemm_strided_batched batch=0");
    gemm_strided_batched<T>(ta, tb, 0, 4, 5, T(1), in1.data(), ta ? 0 : 5, 0, in2.data(),
                            tb ? 5 : 4, 20, T(0), o1.data(), 4, 0, 3);
    check_all("gemm_strided_batched m=0");
  }
  linear_forward<T>(in1.data(), in2.data(), in3.data(), o1.data(), 0, 7, 5);
  check_all("linear_forward n=0");
  linear_backward<T>(in1.data(), in2.data(), in3.data(), o1.data(), o2.data(), o3.data(), 0, 7, 5);
  check_all("linear_backward n=0 (dw, db += nothing)");
  softmax_forward<T>(in1.data(), o1.data(), 0, 7);
  check_all("softmax_forward rows=0");
  softmax_backward<T>(in1.data(), in2.data(), o1.data(), 0, 7);
  check_all("softmax_backward rows=0");
  layernorm_forward<T>(in1.data(), in2.data(), in3.data(), o1.data(), o2.data(), o3.data(), 0, 7,
                       T(1e-5));
  check_all("layernorm_forward rows=0");
  layernorm_backward<T>(in1.data(), in2.data(), in3.data(), in2.data(), in3.data(), o1.data(),
                        o2.data(), o3.data(), 0, 7);
  check_all("layernorm_backward rows=0");
  gelu_forward<T>(in1.data(), o1.data(), 0);
  check_all("gelu_forward n=0");
  gelu_backward<T>(in1.data(), in2.data(), o1.data(), 0);
  check_all("gelu_backward n=0");
  gather_rows_forward<T>(in1.data(), bad_ids.data(), o1.data(), 0, 11, 3);
  check_all("embedding_forward n=0");
  gather_rows_backward<T>(in1.data(), bad_ids.data(), o1.data(), 0, 11, 3);
  check_all("embedding_backward n=0");
  cross_entropy_forward<T>(in1.data(), bad_ids.data(), o1.data(), o2.data(), 0, 9);
  check_all("cross_entropy_forward n=0");
  cross_entropy_backward<T>(in1.data(), bad_ids.data(), in2.data(), in3.data(), o1.data(), 0, 9);
  check_all("cross_entropy_backward n=0");
  {
    AdamWHyper h;
    h.weight_decay = 0.1;
    adamw_update<T>(o1.data(), in1.data(), o2.data(), o3.data(), 0, h);
    check_all("adamw_update n=0");
  }
  gather_rows_forward<T>(in1.data(), bad_ids.data(), o1.data(), 0, 5, 3);
  check_all("gather_rows_forward m=0");
  gather_rows_backward<T>(in1.data(), bad_ids.data(), o1.data(), 0, 5, 3);
  check_all("gather_rows_backward m=0");
  scatter_add_rows_forward<T>(in1.data(), bad_ids.data(), in2.data(), o1.data(), 0, 5, 3);
  check_all("scatter_add_rows_forward m=0");
  scatter_add_rows_forward<T>(in1.data(), bad_ids.data(), nullptr, o1.data(), 0, 5, 3);
  check_all("scatter_add_rows_forward m=0, no weights");
  scatter_add_rows_backward<T>(in1.data(), bad_ids.data(), in2.data(), in3.data(), o1.data(),
                               o2.data(), 0, 5, 3);
  check_all("scatter_add_rows_backward m=0");
  fill<T>(o1.data(), T(3), 0);
  check_all("fill n=0");
  axpy<T>(T(2), in1.data(), o1.data(), 0);
  check_all("axpy n=0");
  scale<T>(o1.data(), T(2), 0);
  check_all("scale n=0");
  add<T>(in1.data(), in2.data(), o1.data(), 0);
  check_all("add n=0");
  sum_rows<T>(in1.data(), o1.data(), 0, 7);
  check_all("sum_rows rows=0");
  EXPECT_EQ(sum_squares<T>(in1.data(), 0), 0.0);
}

// ================================================================================================
// Optional (null) arguments and in-place forwards (header: "Optional outputs documented as
// 'skipped when null' may be null; so may layernorm's gamma (ones), beta (zeros), mean and rstd
// (not saved), linear_backward's dw and cross_entropy_forward's lse. Forward softmax and
// layernorm may run in place (y == x).")
// ================================================================================================

TYPED_TEST(KernelsTyped, LayerNormNullGammaBetaStatsAndInPlace) {
  using T = TypeParam;
  std::mt19937 g(301);
  const double eps = 1e-5;
  for (auto [rows, cols] : {std::pair<i64, i64>{3, 7}, {33, 65}, {1, 1}}) {
    SCOPED_TRACE(::testing::Message() << "rows=" << rows << " cols=" << cols);
    const auto x = layernorm_input<T>(g, rows, cols);
    const std::vector<T> ones(cols, T(1)), zeros(cols, T(0));
    const auto r = layernorm_ref(x, ones, zeros, rows, cols, eps);
    {
      std::vector<T> y(x.size(), nan_value<T>());
      layernorm_forward<T>(x.data(), nullptr, nullptr, y.data(), nullptr, nullptr, rows, cols,
                           static_cast<T>(eps));
      EXPECT_TRUE(close(y, r.y, r.y_tol)) << "gamma, beta, mean, rstd null";
    }
    {
      auto y = x;  // in place
      std::vector<T> mean(rows, nan_value<T>()), rstd(rows, nan_value<T>());
      layernorm_forward<T>(y.data(), ones.data(), zeros.data(), y.data(), mean.data(), rstd.data(),
                           rows, cols, static_cast<T>(eps));
      EXPECT_TRUE(close(y, r.y, r.y_tol)) << "in place";
      EXPECT_TRUE(close(mean, r.mean, r.mean_tol)) << "in place mean";
      EXPECT_TRUE(close(rstd, r.rstd, r.rstd_tol)) << "in place rstd";
    }
    {
      // Backward with gamma null must equal the backward with gamma = ones.
      const auto dy = random_vec<T>(g, rows * cols);
      const auto mean = cast_vec<T>(r.mean);
      const auto rstd = cast_vec<T>(r.rstd);
      std::vector<T> dx1(x.size()), dg1(cols, T(0)), db1(cols, T(0));
      std::vector<T> dx2(x.size()), dg2(cols, T(0)), db2(cols, T(0));
      layernorm_backward<T>(dy.data(), x.data(), ones.data(), mean.data(), rstd.data(), dx1.data(),
                            dg1.data(), db1.data(), rows, cols);
      layernorm_backward<T>(dy.data(), x.data(), nullptr, mean.data(), rstd.data(), dx2.data(),
                            dg2.data(), db2.data(), rows, cols);
      EXPECT_TRUE(same_bits(dx1, dx2)) << "backward dx, gamma null vs ones";
      EXPECT_TRUE(same_bits(dg1, dg2)) << "backward dgamma, gamma null vs ones";
      EXPECT_TRUE(same_bits(db1, db2)) << "backward dbeta, gamma null vs ones";
    }
  }
}

TYPED_TEST(KernelsTyped, SoftmaxInPlace) {
  using T = TypeParam;
  std::mt19937 g(302);
  for (auto [rows, cols] : {std::pair<i64, i64>{3, 7}, {33, 65}, {1, 1}}) {
    SCOPED_TRACE(::testing::Message() << "rows=" << rows << " cols=" << cols);
    auto x = softmax_input<T>(g, rows, cols, true);
    const auto xd = to_double(x);
    std::vector<double> ref(xd.size()), tol(xd.size());
    for (i64 r = 0; r < rows; ++r) softmax_row_ref(&xd[r * cols], &ref[r * cols], cols);
    for (std::size_t i = 0; i < ref.size(); ++i)
      tol[i] = bound<T>(static_cast<double>(cols) + 32.0, 2.0) * ref[i];
    softmax_forward<T>(x.data(), x.data(), rows, cols);
    EXPECT_TRUE(close(x, ref, tol));
  }
}

TYPED_TEST(KernelsTyped, LinearBackwardNullDw) {
  using T = TypeParam;
  std::mt19937 g(303);
  const i64 n = 7, in = 5, out = 3;
  const auto x = random_vec<T>(g, n * in), w = random_vec<T>(g, out * in),
             dy = random_vec<T>(g, n * out), db0 = random_vec<T>(g, out);
  std::vector<T> dx_full(n * in), dw_full(out * in, T(0));
  auto db_full = db0;
  linear_backward<T>(dy.data(), x.data(), w.data(), dx_full.data(), dw_full.data(), db_full.data(),
                     n, in, out);
  std::vector<T> dx(n * in, nan_value<T>());
  auto db = db0;
  linear_backward<T>(dy.data(), x.data(), w.data(), dx.data(), nullptr, db.data(), n, in, out);
  EXPECT_TRUE(same_bits(dx, dx_full)) << "dx with dw null";
  EXPECT_TRUE(same_bits(db, db_full)) << "db with dw null";
}

TYPED_TEST(KernelsTyped, CrossEntropyNullLse) {
  using T = TypeParam;
  std::mt19937 g(304);
  const i64 n = 9, v = 33;
  const auto logits = random_vec<T>(g, n * v, -8.0, 8.0);
  auto targets = random_ids(g, n, v);
  targets[4] = -1;
  std::vector<T> l1(n), lse(n), l2(n, nan_value<T>());
  cross_entropy_forward<T>(logits.data(), targets.data(), l1.data(), lse.data(), n, v);
  cross_entropy_forward<T>(logits.data(), targets.data(), l2.data(), nullptr, n, v);
  EXPECT_TRUE(same_bits(l1, l2)) << "losses with lse null";
}

// ================================================================================================
// Bad sizes throw routemoe::Error(Shape) (header: "Bad sizes (negative, above INT_MAX for BLAS,
// too small a leading dimension) throw routemoe::Error(Shape).")
// ================================================================================================

TYPED_TEST(KernelsTyped, GemmBadSizesThrowShape) {
  using T = TypeParam;
  std::vector<T> a(256, T(1)), b(256, T(1)), c(256, T(0)), d(256, T(0));
  std::vector<i32> ids(64, 0);
  const ErrorKind S = ErrorKind::Shape;
  // GEMM: m = 3, n = 4, k = 5.
  expect_error_kind(
      [&] { gemm<T>(false, false, 3, 4, 5, T(1), a.data(), 4, b.data(), 4, T(0), c.data(), 4); }, S,
      "gemm lda < k");
  expect_error_kind(
      [&] { gemm<T>(true, false, 3, 4, 5, T(1), a.data(), 2, b.data(), 4, T(0), c.data(), 4); }, S,
      "gemm trans_a lda < m");
  expect_error_kind(
      [&] { gemm<T>(false, false, 3, 4, 5, T(1), a.data(), 5, b.data(), 3, T(0), c.data(), 4); }, S,
      "gemm ldb < n");
  expect_error_kind(
      [&] { gemm<T>(false, true, 3, 4, 5, T(1), a.data(), 5, b.data(), 4, T(0), c.data(), 4); }, S,
      "gemm trans_b ldb < k");
  expect_error_kind(
      [&] { gemm<T>(false, false, 3, 4, 5, T(1), a.data(), 5, b.data(), 4, T(0), c.data(), 3); }, S,
      "gemm ldc < n");
  expect_error_kind(
      [&] { gemm<T>(false, false, -1, 4, 5, T(1), a.data(), 5, b.data(), 4, T(0), c.data(), 4); },
      S, "gemm m < 0");
  expect_error_kind(
      [&] {
        gemm<T>(false, false, 3, 4, std::int64_t{1} << 32, T(1), a.data(), std::int64_t{1} << 32,
                b.data(), 4, T(0), c.data(), 4);
      },
      S, "gemm k > INT_MAX");
  expect_error_kind(
      [&] {
        gemm_strided_batched<T>(false, false, 3, 4, 5, T(1), a.data(), 5, 15, b.data(), 4, 20, T(0),
                                c.data(), 4, 12, -1);
      },
      S, "gemm_strided_batched batch < 0");
}

// The same contract for the non-BLAS kernels: a negative size is a Shape error, not a no-op.
TYPED_TEST(KernelsTyped, NegativeSizesThrowShape) {
  using T = TypeParam;
  std::vector<T> a(256, T(1)), b(256, T(1)), c(256, T(0)), d(256, T(0));
  std::vector<i32> ids(64, 0);
  const ErrorKind S = ErrorKind::Shape;
  expect_error_kind([&] { linear_forward<T>(a.data(), b.data(), nullptr, c.data(), -1, 3, 3); }, S,
                    "linear_forward n < 0");
  expect_error_kind([&] { softmax_forward<T>(a.data(), c.data(), -1, 3); }, S,
                    "softmax_forward rows < 0");
  expect_error_kind(
      [&] {
        layernorm_forward<T>(a.data(), nullptr, nullptr, c.data(), nullptr, nullptr, 2, -3,
                             T(1e-5));
      },
      S, "layernorm_forward cols < 0");
  expect_error_kind([&] { gelu_forward<T>(a.data(), c.data(), -1); }, S, "gelu_forward n < 0");
  expect_error_kind([&] { gather_rows_forward<T>(a.data(), ids.data(), c.data(), 2, 4, -1); }, S,
                    "embedding_forward d < 0");
  expect_error_kind(
      [&] { cross_entropy_forward<T>(a.data(), ids.data(), c.data(), d.data(), -2, 4); }, S,
      "cross_entropy_forward n < 0");
  expect_error_kind([&] { gather_rows_forward<T>(a.data(), ids.data(), c.data(), -1, 4, 2); }, S,
                    "gather_rows_forward m < 0");
  expect_error_kind(
      [&] { scatter_add_rows_forward<T>(a.data(), ids.data(), nullptr, c.data(), 2, 4, -1); }, S,
      "scatter_add_rows_forward d < 0");
  expect_error_kind([&] { fill<T>(c.data(), T(0), -1); }, S, "fill n < 0");
  expect_error_kind([&] { sum_rows<T>(a.data(), c.data(), 2, -1); }, S, "sum_rows cols < 0");
}

// ================================================================================================
// Thread-count independence: every row reduction is sequential, so 1 and 2 threads must give
// bitwise-identical results.
// ================================================================================================

template <typename T>
struct ThreadRun {
  std::vector<T> sm_y, sm_dx, ln_y, ln_mean, ln_rstd, ln_dx, ln_dgamma, ln_dbeta, sc_dst, sc_dsrc,
      sc_dw, ce_loss, ce_lse, ce_dl, sr_out;
};

template <typename T>
ThreadRun<T> run_reductions() {
  std::mt19937 g(555);
  const i64 rows = 257, cols = 65;
  ThreadRun<T> r;
  {
    const auto x = softmax_input<T>(g, rows, cols, true);
    const auto dy = random_vec<T>(g, rows * cols);
    r.sm_y.assign(x.size(), T(0));
    r.sm_dx.assign(x.size(), T(0));
    softmax_forward<T>(x.data(), r.sm_y.data(), rows, cols);
    softmax_backward<T>(r.sm_y.data(), dy.data(), r.sm_dx.data(), rows, cols);
  }
  {
    const auto x = layernorm_input<T>(g, rows, cols);
    const auto gamma = random_vec<T>(g, cols, 0.5, 1.5);
    const auto beta = random_vec<T>(g, cols);
    const auto dy = random_vec<T>(g, rows * cols);
    r.ln_y.assign(x.size(), T(0));
    r.ln_mean.assign(rows, T(0));
    r.ln_rstd.assign(rows, T(0));
    r.ln_dx.assign(x.size(), T(0));
    r.ln_dgamma = random_vec<T>(g, cols);
    r.ln_dbeta = random_vec<T>(g, cols);
    layernorm_forward<T>(x.data(), gamma.data(), beta.data(), r.ln_y.data(), r.ln_mean.data(),
                         r.ln_rstd.data(), rows, cols, T(1e-5));
    layernorm_backward<T>(dy.data(), x.data(), gamma.data(), r.ln_mean.data(), r.ln_rstd.data(),
                          r.ln_dx.data(), r.ln_dgamma.data(), r.ln_dbeta.data(), rows, cols);
  }
  {
    const i64 m = 301, n = 37, d = 33;
    const auto src = random_vec<T>(g, m * d);
    const auto idx = random_ids(g, m, n);  // ~8 hits per destination row
    const auto w = random_vec<T>(g, m);
    const auto ddst = random_vec<T>(g, n * d);
    r.sc_dst = random_vec<T>(g, n * d);
    r.sc_dsrc.assign(m * d, T(0));
    r.sc_dw.assign(m, T(0));
    scatter_add_rows_forward<T>(src.data(), idx.data(), w.data(), r.sc_dst.data(), m, n, d);
    scatter_add_rows_backward<T>(ddst.data(), idx.data(), src.data(), w.data(), r.sc_dsrc.data(),
                                 r.sc_dw.data(), m, n, d);
  }
  {
    const i64 n = 129, v = 65;
    const auto logits = random_vec<T>(g, n * v, -8.0, 8.0);
    auto targets = random_ids(g, n, v);
    targets[3] = -1;
    const auto dloss = random_vec<T>(g, n);
    r.ce_loss.assign(n, T(0));
    r.ce_lse.assign(n, T(0));
    r.ce_dl.assign(n * v, T(0));
    cross_entropy_forward<T>(logits.data(), targets.data(), r.ce_loss.data(), r.ce_lse.data(), n,
                             v);
    cross_entropy_backward<T>(logits.data(), targets.data(), r.ce_lse.data(), dloss.data(),
                              r.ce_dl.data(), n, v);
  }
  {
    const auto x = random_vec<T>(g, rows * cols);
    r.sr_out = random_vec<T>(g, cols);
    sum_rows<T>(x.data(), r.sr_out.data(), rows, cols);
  }
  return r;
}

TYPED_TEST(KernelsTyped, ThreadCountIndependence) {
  using T = TypeParam;
  ThreadGuard guard;
  set_num_threads(1);
  EXPECT_EQ(num_threads(), 1);
  const auto one = run_reductions<T>();
  set_num_threads(2);
  EXPECT_EQ(num_threads(), 2);
  const auto two = run_reductions<T>();
  EXPECT_TRUE(same_bits(one.sm_y, two.sm_y)) << "softmax_forward";
  EXPECT_TRUE(same_bits(one.sm_dx, two.sm_dx)) << "softmax_backward";
  EXPECT_TRUE(same_bits(one.ln_y, two.ln_y)) << "layernorm_forward y";
  EXPECT_TRUE(same_bits(one.ln_mean, two.ln_mean)) << "layernorm_forward mean";
  EXPECT_TRUE(same_bits(one.ln_rstd, two.ln_rstd)) << "layernorm_forward rstd";
  EXPECT_TRUE(same_bits(one.ln_dx, two.ln_dx)) << "layernorm_backward dx";
  EXPECT_TRUE(same_bits(one.ln_dgamma, two.ln_dgamma)) << "layernorm_backward dgamma";
  EXPECT_TRUE(same_bits(one.ln_dbeta, two.ln_dbeta)) << "layernorm_backward dbeta";
  EXPECT_TRUE(same_bits(one.sc_dst, two.sc_dst)) << "scatter_add_rows_forward";
  EXPECT_TRUE(same_bits(one.sc_dsrc, two.sc_dsrc)) << "scatter_add_rows_backward dsrc";
  EXPECT_TRUE(same_bits(one.sc_dw, two.sc_dw)) << "scatter_add_rows_backward dw";
  EXPECT_TRUE(same_bits(one.ce_loss, two.ce_loss)) << "cross_entropy_forward loss";
  EXPECT_TRUE(same_bits(one.ce_lse, two.ce_lse)) << "cross_entropy_forward lse";
  EXPECT_TRUE(same_bits(one.ce_dl, two.ce_dl)) << "cross_entropy_backward";
  EXPECT_TRUE(same_bits(one.sr_out, two.sr_out)) << "sum_rows";
}

TEST(Kernels, SetNumThreadsRoundTrip) {
  ThreadGuard guard;
  set_num_threads(3);
  EXPECT_EQ(num_threads(), 3);
  set_num_threads(1);
  EXPECT_EQ(num_threads(), 1);
}

}  // namespace
}  // namespace routemoe::cpu
