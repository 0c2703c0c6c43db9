#pragma once
// Helpers shared by the CPU kernel sources (internal header of framework/cpu, not part of the
// kernel contract):
//   - one CBLAS GEMM without argument checks, for kernels that checked their sizes up front;
//   - RM_SIMD_CLONES, which compiles a hot loop for AVX-512, AVX2 and the baseline ISA and picks
//     one when the program loads (GCC function multi-versioning), so that a portable build
//     (-march=x86-64) still runs wide vectors on the machines that have them;
//   - a vectorisable single-precision exp, and the GELU of kernels.h as scalar functions that
//     every kernel using GELU shares (so that a fused kernel computes the very same values).
// The kernel sources are compiled with -ffp-contract=off (no FMA contraction in any clone: the
// arithmetic is the one written, whatever the ISA), -fno-math-errno and -fno-trapping-math (which
// change no result; they let the compiler vectorise loops with sqrt, exp and selects).

#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace routemoe::cpu::detail {

// c[m, n] = alpha op(a) op(b) + beta c, as cpu::gemm (kernels.h), sizes already checked to be
// non-negative and within int; k == 0 scales c by beta (0: exact zeros). Called inside an OpenMP
// parallel region it runs on the calling thread only (the OpenMP build of OpenBLAS uses one
// thread when omp_in_parallel()): that is how the fused kernels run many small GEMMs side by
// side, one per thread, with results that do not depend on the thread count.
template <typename T>
void gemm_nocheck(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                  T alpha, const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
                  std::int64_t ldc);

// Throws Error(Shape) naming `kernel` unless 0 <= value <= INT_MAX (a CBLAS int argument).
void check_blas_size(const char* kernel, const char* what, std::int64_t value);

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_UNDEFINED__)
#define RM_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RM_SIMD_CLONES
#endif

// exp(x) in double for x within [-700, 700] (clamped to it outside), to a relative error below
// 3e-10: for sums and products that are rounded to float afterwards (cross-entropy).
inline double exp_f64_approx(double xd) {
  constexpr double kShift = 0x1.8p52;
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2 = 0.6931471805599453;
  xd = xd < -700.0 ? -700.0 : xd;
  xd = xd > 700.0 ? 700.0 : xd;
  const double t = xd * kLog2e + kShift;
  const double n = t - kShift;
  const double r = xd - n * kLn2;
  const std::int64_t bits =
      (std::bit_cast<std::int64_t>(t) - std::bit_cast<std::int64_t>(kShift) + 1023) << 52;
  const double p =
      1.0 +
      r * (1.0 +
           r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 +
                                          r * (1.0 / 120 + r * (1.0 / 720 + r * (1.0 / 5040 +
                                                                                 r / 40320.0)))))));
  return p * std::bit_cast<double>(bits);
}

// exp(x) for float x, computed in double and rounded once: within 0.51 ulp of the exact value
// over the whole float range (0 below -103.97, +inf above 88.72, NaN stays NaN), branch-free so
// that loops calling it vectorise. x = n ln2 + r with |r| <= ln2 / 2 (n by the round-to-nearest
// of the 1.5 2^52 shift), exp(r) by its degree-8 Taylor polynomial (relative error < 3e-10),
// 2^n from the exponent bits.
inline float exp_f32(float x) {
  const float y = static_cast<float>(exp_f64_approx(x));
  return x == x ? y : x;  // NaN in, NaN out
}

// exp of the kernels: exp_f32 for float, std::exp for double (the gradient checks).
template <typename T>
inline T exp_t(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return exp_f32(x);
  } else {
    return std::exp(x);
  }
}

// GELU, tanh form (kernels.h), through 0.5 (1 + tanh z) = sigmoid(2z): one exp instead of a tanh,
// the same function up to rounding. Large |z| saturates to 0 or 1 (exp overflow gives 1/inf).
inline constexpr double kSqrt2OverPi = 0.79788456080286535587989211986876;
inline constexpr double kGeluCoef = 0.044715;

// sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) = 0.5 (1 + tanh(z)).
template <typename T>
inline T gelu_sigmoid(T v) {
  const T c2 = static_cast<T>(2 * kSqrt2OverPi);
  const T a = static_cast<T>(kGeluCoef);
  return T(1) / (T(1) + exp_t<T>(-c2 * (v + a * v * v * v)));
}
// gelu(x) = x s.
template <typename T>
inline T gelu_value(T v) {
  return v * gelu_sigmoid(v);
}
// gelu'(x) = s + 2 x s (1 - s) z'(x), z' = c (1 + 3 a x^2), from s = gelu_sigmoid(x).
template <typename T>
inline T gelu_slope(T v, T s) {
  const T c = static_cast<T>(kSqrt2OverPi);
  const T a = static_cast<T>(kGeluCoef);
  const T dz = c * (T(1) + T(3) * a * v * v);
  return s + T(2) * v * s * (T(1) - s) * dz;
}

}  // namespace routemoe::cpu::detail
