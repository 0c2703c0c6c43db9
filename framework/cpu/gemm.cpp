// CPU GEMM through CBLAS (OpenBLAS), the linear layer built on it, and the thread-count knobs.

#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "framework/cpu/check_sizes.h"
#include "framework/cpu/detail.h"
#include "framework/cpu/kernels.h"
#include "framework/error.h"

// OpenBLAS extensions. Declared again here (identically to OpenBLAS's own cblas.h) so that this
// file also compiles when the cblas.h found first is a generic one without them.
extern "C" {
void openblas_set_num_threads(int num_threads);
}

namespace routemoe::cpu {

namespace {

void check_blas_dim(const char* what, std::int64_t value) {
  RM_CHECK_KIND(
      Shape, value >= 0 && value <= INT_MAX,
      fmt::format("gemm: {} = {} is outside [0, {}] (CBLAS takes int)", what, value, INT_MAX));
}

// Checks the dimensions and leading dimensions of one GEMM (throws Error(Shape)). Leading
// dimensions are only checked for the operands that are actually read.
void check_gemm_args(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                     std::int64_t lda, std::int64_t ldb, std::int64_t ldc) {
  check_blas_dim("m", m);
  check_blas_dim("n", n);
  check_blas_dim("k", k);
  check_blas_dim("lda", lda);
  check_blas_dim("ldb", ldb);
  check_blas_dim("ldc", ldc);
  if (m == 0 || n == 0) return;
  RM_CHECK_KIND(Shape, ldc >= n, fmt::format("gemm: ldc = {} < n = {}", ldc, n));
  if (k == 0) return;
  const std::int64_t a_cols = trans_a ? m : k;
  const std::int64_t b_cols = trans_b ? k : n;
  RM_CHECK_KIND(Shape, lda >= a_cols,
                fmt::format("gemm: lda = {} < {} (trans_a = {})", lda, a_cols, trans_a));
  RM_CHECK_KIND(Shape, ldb >= b_cols,
                fmt::format("gemm: ldb = {} < {} (trans_b = {})", ldb, b_cols, trans_b));
}

// c = beta * c over an [m, n] matrix with row stride ldc; beta == 0 writes exact zeros.
template <typename T>
void scale_c(std::int64_t m, std::int64_t n, T beta, T* c, std::int64_t ldc) {
  if (beta == T(1)) return;
  for (std::int64_t i = 0; i < m; ++i) {
    T* row = c + i * ldc;
    if (beta == T(0)) {
      for (std::int64_t j = 0; j < n; ++j) row[j] = T(0);
    } else {
      for (std::int64_t j = 0; j < n; ++j) row[j] *= beta;
    }
  }
}

std::atomic<GemmOrder> g_gemm_order{GemmOrder::Blas};

// GemmOrder::RowStable: c = alpha op(a) op(b) + beta c with every element summed over k in
// increasing order (acc += a_ik * b_kj, k = 0, 1, ...). Tiles of 4 rows x 8 columns are kept in
// registers over the whole k loop; the columns past the last full tile take a plain loop with
// the same order. Which path a column takes depends only on n, so the bits of a row depend on
// neither m, nor the other rows, nor the threads. op(b) is first copied to [k, n] row-major
// when transposed.
constexpr std::int64_t kStableRows = 4, kStableCols = 8;

template <typename T>
void row_stable_tile(bool trans_a, std::int64_t i0, std::int64_t rows, std::int64_t j0,
                     std::int64_t k, const T* a, std::int64_t lda, const T* bk, std::int64_t ldbk,
                     T acc[kStableRows][kStableCols]) {
  for (std::int64_t r = 0; r < kStableRows; ++r)
    for (std::int64_t j = 0; j < kStableCols; ++j) acc[r][j] = T(0);
  for (std::int64_t kk = 0; kk < k; ++kk) {
    const T* brow = bk + kk * ldbk + j0;
    for (std::int64_t r = 0; r < kStableRows; ++r) {
      const std::int64_t i = i0 + std::min(r, rows - 1);  // a short last group repeats its row
      const T aik = trans_a ? a[kk * lda + i] : a[i * lda + kk];
      for (std::int64_t j = 0; j < kStableCols; ++j) acc[r][j] += aik * brow[j];
    }
  }
}

template <typename T>
void gemm_row_stable(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                     T alpha, const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta,
                     T* c, std::int64_t ldc) {
  std::vector<T> bt;
  const T* bk = b;
  std::int64_t ldbk = ldb;
  if (trans_b) {
    bt.resize(static_cast<std::size_t>(k * n));
    for (std::int64_t j = 0; j < n; ++j) {
      for (std::int64_t kk = 0; kk < k; ++kk)
        bt[static_cast<std::size_t>(kk * n + j)] = b[j * ldb + kk];
    }
    bk = bt.data();
    ldbk = n;
  }
  const auto store = [&](T* crow, std::int64_t j, T v) {
    crow[j] = beta == T(0) ? alpha * v : alpha * v + beta * crow[j];
  };
  const std::int64_t groups = (m + kStableRows - 1) / kStableRows;
  const std::int64_t full_cols = n / kStableCols * kStableCols;
#pragma omp parallel for schedule(static) if (m * n * k > (1 << 16))
  for (std::int64_t g = 0; g < groups; ++g) {
    const std::int64_t i0 = g * kStableRows, rows = std::min(kStableRows, m - i0);
    T acc[kStableRows][kStableCols];
    for (std::int64_t j0 = 0; j0 < full_cols; j0 += kStableCols) {
      row_stable_tile(trans_a, i0, rows, j0, k, a, lda, bk, ldbk, acc);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t j = 0; j < kStableCols; ++j) store(c + (i0 + r) * ldc, j0 + j, acc[r][j]);
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t i = i0 + r;
      for (std::int64_t j = full_cols; j < n; ++j) {
        T v = T(0);
        for (std::int64_t kk = 0; kk < k; ++kk)
          v += (trans_a ? a[kk * lda + i] : a[i * lda + kk]) * bk[kk * ldbk + j];
        store(c + i * ldc, j, v);
      }
    }
  }
}

}  // namespace

namespace detail {

template <typename T>
void gemm_nocheck(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                  T alpha, const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
                  std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    scale_c(m, n, beta, c, ldc);
    return;
  }
  if (g_gemm_order.load(std::memory_order_relaxed) == GemmOrder::RowStable) {
    gemm_row_stable(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  const auto mi = static_cast<int>(m);
  const auto ni = static_cast<int>(n);
  const auto ki = static_cast<int>(k);
  const auto ldai = static_cast<int>(lda);
  const auto ldbi = static_cast<int>(ldb);
  const auto ldci = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, mi, ni, ki, alpha, a, ldai, b, ldbi, beta, c, ldci);
  } else {
    static_assert(std::is_same_v<T, double>, "gemm is instantiated for float and double only");
    cblas_dgemm(CblasRowMajor, ta, tb, mi, ni, ki, alpha, a, ldai, b, ldbi, beta, c, ldci);
  }
}

template void gemm_nocheck<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float,
                                  const float*, std::int64_t, const float*, std::int64_t, float,
                                  float*, std::int64_t);
template void gemm_nocheck<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double,
                                   const double*, std::int64_t, const double*, std::int64_t, double,
                                   double*, std::int64_t);

void check_blas_size(const char* kernel, const char* what, std::int64_t value) {
  RM_CHECK_KIND(Shape, value >= 0 && value <= INT_MAX,
                fmt::format("{}: {} = {} is outside [0, {}] (CBLAS takes int)", kernel, what, value,
                            INT_MAX));
}

}  // namespace detail

template <typename T>
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha,
          const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
          std::int64_t ldc) {
  check_gemm_args(trans_a, trans_b, m, n, k, lda, ldb, ldc);
  detail::gemm_nocheck(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <typename T>
void gemm_strided_batched(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
                          std::int64_t k, T alpha, const T* a, std::int64_t lda,
                          std::int64_t stride_a, const T* b, std::int64_t ldb,
                          std::int64_t stride_b, T beta, T* c, std::int64_t ldc,
                          std::int64_t stride_c, std::int64_t batch) {
  RM_CHECK_KIND(Shape, batch >= 0,
                fmt::format("gemm_strided_batched: batch = {} is negative", batch));
  check_gemm_args(trans_a, trans_b, m, n, k, lda, ldb, ldc);
  for (std::int64_t i = 0; i < batch; ++i) {
    detail::gemm_nocheck(trans_a, trans_b, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b,
                         ldb, beta, c + i * stride_c, ldc);
  }
}

template <typename T>
void linear_forward(const T* x, const T* w, const T* b, T* y, std::int64_t n, std::int64_t in,
                    std::int64_t out) {
  detail::check_sizes("linear_forward", {{"n", n}, {"in", in}, {"out", out}});
  if (n <= 0 || out <= 0) return;
  T beta = T(0);
  if (b != nullptr) {
    // Start from the bias in every row and accumulate the product on top of it.
#pragma omp parallel for if (n * out > 16384)
    for (std::int64_t i = 0; i < n; ++i) {
      T* row = y + i * out;
      for (std::int64_t j = 0; j < out; ++j) row[j] = b[j];
    }
    beta = T(1);
  }
  gemm<T>(false, true, n, out, in, T(1), x, in, w, in, beta, y, out);
}

template <typename T>
void linear_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* db, std::int64_t n,
                     std::int64_t in, std::int64_t out) {
  detail::check_sizes("linear_backward", {{"n", n}, {"in", in}, {"out", out}});
  if (n <= 0) return;
  if (dx != nullptr) {
    // dx[n, in] = dy[n, out] @ w[out, in]
    gemm<T>(false, false, n, in, out, T(1), dy, out, w, in, T(0), dx, in);
  }
  if (dw != nullptr) {
    // dw[out, in] += dy^T[out, n] @ x[n, in]
    gemm<T>(true, false, out, in, n, T(1), dy, out, x, in, T(1), dw, in);
  }
  if (db != nullptr) sum_rows<T>(dy, db, n, out);
}

void set_num_threads(int threads) {
  RM_CHECK_KIND(Config, threads >= 1,
                fmt::format("set_num_threads: threads = {} must be at least 1", threads));
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

int num_threads() {
  return omp_get_max_threads();
}

void reuse_freed_memory() {
#if defined(__GLIBC__)
  // Above 1 GiB glibc still maps (a buffer that size is rare and long-lived); the heap's top is
  // returned to the system only when 1 GiB of it is free.
  constexpr int kMmapThreshold = 1 << 30;
  mallopt(M_MMAP_THRESHOLD, kMmapThreshold);
  mallopt(M_TRIM_THRESHOLD, kMmapThreshold);
#endif
}

void set_gemm_order(GemmOrder order) {
  g_gemm_order.store(order);
}

GemmOrder gemm_order() {
  return g_gemm_order.load();
}

template void gemm<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float, const float*,
                          std::int64_t, const float*, std::int64_t, float, float*, std::int64_t);
template void gemm<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double,
                           const double*, std::int64_t, const double*, std::int64_t, double,
                           double*, std::int64_t);
template void gemm_strided_batched<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t,
                                          float, const float*, std::int64_t, std::int64_t,
                                          const float*, std::int64_t, std::int64_t, float, float*,
                                          std::int64_t, std::int64_t, std::int64_t);
template void gemm_strided_batched<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t,
                                           double, const double*, std::int64_t, std::int64_t,
                                           const double*, std::int64_t, std::int64_t, double,
                                           double*, std::int64_t, std::int64_t, std::int64_t);
template void linear_forward<float>(const float*, const float*, const float*, float*, std::int64_t,
                                    std::int64_t, std::int64_t);
template void linear_forward<double>(const double*, const double*, const double*, double*,
                                     std::int64_t, std::int64_t, std::int64_t);
template void linear_backward<float>(const float*, const float*, const float*, float*, float*,
                                     float*, std::int64_t, std::int64_t, std::int64_t);
template void linear_backward<double>(const double*, const double*, const double*, double*, double*,
                                      double*, std::int64_t, std::int64_t, std::int64_t);

}  // namespace routemoe::cpu
