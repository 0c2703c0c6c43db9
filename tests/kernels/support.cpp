// Shared helpers of the kernel tests; see support.h.

#include "tests/kernels/support.h"

#include <cctype>
#include <cmath>
#include <cstring>
#include <sstream>

namespace routemoe::kerneltest {

double bound_wide(double ck) {
  return std::max(1e-12, ck * kU64);
}

namespace {

// FNV-1a of the name: a stable seed per case.
std::uint32_t seed_of(std::string_view name) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : name) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return static_cast<std::uint32_t>(h ^ (h >> 32));
}

}  // namespace

Gen::Gen(std::string_view name) : engine_(seed_of(name)) {}

std::vector<double> Gen::uniform(i64 n, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(engine_);
  return v;
}

double Gen::uniform1(double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(engine_);
}

std::vector<i32> Gen::ids(i64 n, i64 bound) {
  std::uniform_int_distribution<i32> dist(0, static_cast<i32>(bound - 1));
  std::vector<i32> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(engine_);
  return v;
}

bool Gen::coin(double p) {
  return std::bernoulli_distribution(p)(engine_);
}

::testing::AssertionResult within(std::span<const double> got, std::span<const double> want,
                                  std::span<const double> tol) {
  if (got.size() != want.size() || want.size() != tol.size())
    return ::testing::AssertionFailure()
           << "size mismatch " << got.size() << " " << want.size() << " " << tol.size();
  std::size_t bad = 0;
  double worst = 0.0;
  std::ostringstream os;
  os.precision(17);
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    const bool ok = std::isnan(w) ? std::isnan(g) : (g == w || std::abs(g - w) <= tol[i]);
    if (ok) continue;
    if (bad < 6)
      os << "\n  [" << i << "] got " << g << " expected " << w << " |diff| " << std::abs(g - w)
         << " tol " << tol[i];
    ++bad;
    worst = std::max(worst, std::abs(g - w) / std::max(tol[i], 1e-300));
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << got.size() << " elements out of tolerance (worst diff/tol " << worst
         << "):" << os.str();
}

template <typename T>
::testing::AssertionResult same_bits(std::span<const T> a, std::span<const T> b) {
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

template ::testing::AssertionResult same_bits<float>(std::span<const float>,
                                                     std::span<const float>);
template ::testing::AssertionResult same_bits<double>(std::span<const double>,
                                                      std::span<const double>);
template ::testing::AssertionResult same_bits<i32>(std::span<const i32>, std::span<const i32>);
template ::testing::AssertionResult same_bits<i64>(std::span<const i64>, std::span<const i64>);
template ::testing::AssertionResult same_bits<std::uint8_t>(std::span<const std::uint8_t>,
                                                            std::span<const std::uint8_t>);

std::string normalized(std::string_view s) {
  std::string out;
  for (char ch : s)
    if (std::isalnum(static_cast<unsigned char>(ch)))
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

}  // namespace routemoe::kerneltest
