// CPU elementwise helpers: fill, axpy, scale, add, column sums, sum of squares.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "framework/cpu/check_sizes.h"
#include "framework/cpu/detail.h"
#include "framework/cpu/kernels.h"

namespace routemoe::cpu {

namespace {

// Elementwise loops go parallel above this many elements.
constexpr std::int64_t kParallelElems = 1 << 16;
// sum_squares sums fixed-size chunks (independent of the thread count) and then the chunk sums
// in order, so its result does not depend on the number of threads.
constexpr std::int64_t kSumChunk = 1 << 14;
// Column sums run in parallel over blocks of this many columns.
constexpr std::int64_t kColBlock = 64;

// Sum of squares of one chunk in double (vectorised: a fixed lane order).
template <typename T>
[[gnu::always_inline]] inline double sum_squares_chunk(const T* x, std::int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (std::int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    acc += v * v;
  }
  return acc;
}

RM_SIMD_CLONES double sum_squares_chunk_f32(const float* x, std::int64_t n) {
  return sum_squares_chunk(x, n);
}

}  // namespace

template <typename T>
void fill(T* x, T value, std::int64_t n) {
  detail::check_sizes("fill", {{"n", n}});
#pragma omp parallel for if (n > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) x[i] = value;
}

template <typename T>
void axpy(T alpha, const T* x, T* y, std::int64_t n) {
  detail::check_sizes("axpy", {{"n", n}});
#pragma omp parallel for if (n > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <typename T>
void scale(T* x, T alpha, std::int64_t n) {
  detail::check_sizes("scale", {{"n", n}});
#pragma omp parallel for if (n > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) x[i] *= alpha;
}

template <typename T>
void add(const T* a, const T* b, T* y, std::int64_t n) {
  detail::check_sizes("add", {{"n", n}});
#pragma omp parallel for if (n > kParallelElems)
  for (std::int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

template <typename T>
void sum_rows(const T* x, T* out, std::int64_t rows, std::int64_t cols) {
  detail::check_sizes("sum_rows", {{"rows", rows}, {"cols", cols}});
  if (rows <= 0 || cols <= 0) return;
  const std::int64_t blocks = (cols + kColBlock - 1) / kColBlock;
  // Each column is summed over the rows in increasing order (in double), by one thread.
#pragma omp parallel for if (rows * cols > 16384 && blocks > 1)
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::int64_t j0 = blk * kColBlock;
    const std::int64_t j1 = std::min(cols, j0 + kColBlock);
    double acc[kColBlock] = {};
    for (std::int64_t i = 0; i < rows; ++i) {
      const T* row = x + i * cols;
      for (std::int64_t j = j0; j < j1; ++j) acc[j - j0] += static_cast<double>(row[j]);
    }
    for (std::int64_t j = j0; j < j1; ++j) out[j] += static_cast<T>(acc[j - j0]);
  }
}

template <typename T>
double sum_squares(const T* x, std::int64_t n) {
  detail::check_sizes("sum_squares", {{"n", n}});
  if (n <= 0) return 0.0;
  const std::int64_t chunks = (n + kSumChunk - 1) / kSumChunk;
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
#pragma omp parallel for if (n > kParallelElems)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t i0 = c * kSumChunk;
    const std::int64_t i1 = std::min(n, i0 + kSumChunk);
    if constexpr (std::is_same_v<T, float>) {
      partial[static_cast<std::size_t>(c)] = sum_squares_chunk_f32(x + i0, i1 - i0);
    } else {
      partial[static_cast<std::size_t>(c)] = sum_squares_chunk(x + i0, i1 - i0);
    }
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

#define ROUTEMOE_INSTANTIATE_ELEMENTWISE(T)                            \
  template void fill<T>(T*, T, std::int64_t);                          \
  template void axpy<T>(T, const T*, T*, std::int64_t);                \
  template void scale<T>(T*, T, std::int64_t);                         \
  template void add<T>(const T*, const T*, T*, std::int64_t);          \
  template void sum_rows<T>(const T*, T*, std::int64_t, std::int64_t); \
  template double sum_squares<T>(const T*, std::int64_t);

ROUTEMOE_INSTANTIATE_ELEMENTWISE(float)
ROUTEMOE_INSTANTIATE_ELEMENTWISE(double)

#undef ROUTEMOE_INSTANTIATE_ELEMENTWISE

}  // namespace routemoe::cpu
