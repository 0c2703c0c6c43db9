// cuBLAS GEMMs with the row-major conventions of framework/cpu/kernels.h, and the linear layer
// built on them.
//
// Row-major trick: a row-major matrix X[r, c] with row stride ld is, to column-major cuBLAS, the
// matrix X^T (c x r, leading dimension ld). So C = op(A) op(B) in row-major is computed as
// C^T = op(B)^T op(A)^T in column-major: cublasSgemm(opB, opA, n, m, k, B, ldb, A, lda, C, ldc),
// where opX is CUBLAS_OP_T exactly when the row-major call asks for trans_x.
//
// The handle runs plain fp32 (CUBLAS_DEFAULT_MATH, set by Context): no TF32.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "framework/cuda/check.h"
#include "framework/cuda/cublas_api.h"
#include "framework/cuda/kernels.h"
#include "framework/cuda/launch.cuh"

namespace routemoe::cuda {

namespace {

using namespace detail;  // launch helpers (launch.cuh)

cublasHandle_t handle_of(const Context& ctx) {
  const auto h = static_cast<cublasHandle_t>(ctx.cublas());
  RM_CUBLAS_CHECK(blas::api().set_stream(h, stream_of(ctx)));
  return h;
}

// Sizes and leading dimensions are passed to cuBLAS as int: like the CPU kernels, a negative or
// too large one throws Error(Shape).
int to_int(std::int64_t v, const char* what) {
  RM_CHECK_KIND(Shape, v >= 0 && v <= INT_MAX,
                std::string("cuda::gemm: ") + what + " = " + std::to_string(v) +
                    " is negative or does not fit in a 32-bit cuBLAS argument");
  return static_cast<int>(v);
}

// Row-major a[rows, cols] needs ld >= cols (the CPU kernels check the same).
void check_ld(std::int64_t ld, std::int64_t cols, const char* what) {
  RM_CHECK_KIND(Shape, ld >= cols,
                std::string("cuda::gemm: ") + what + " = " + std::to_string(ld) +
                    " is smaller than the row length " + std::to_string(cols));
}

// Same checks as the CPU gemm: every size in [0, INT_MAX]; ldc only when c is written, lda/ldb
// only when a/b are read.
void check_gemm_args(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                     std::int64_t lda, std::int64_t ldb, std::int64_t ldc) {
  to_int(m, "m");
  to_int(n, "n");
  to_int(k, "k");
  to_int(lda, "lda");
  to_int(ldb, "ldb");
  to_int(ldc, "ldc");
  if (m == 0 || n == 0) return;
  check_ld(ldc, n, "ldc");
  if (k == 0) return;
  check_ld(lda, trans_a ? m : k, "lda");
  check_ld(ldb, trans_b ? k : n, "ldb");
}

// c[b][i, j] = beta * c[b][i, j] (0 when beta == 0, NaNs not propagated) for an [m, n] matrix
// with row stride ldc, for `batch` matrices stride_c apart. Used when k == 0.
__global__ void scale_matrix_kernel(float* __restrict__ c, std::int64_t m, std::int64_t n,
                                    std::int64_t ldc, std::int64_t stride_c, std::int64_t batch,
                                    float beta) {
  const std::int64_t total = batch * m * n;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t b = e / (m * n);
    const std::int64_t r = e - b * m * n;
    const std::int64_t i = r / n, j = r - i * n;
    float* p = c + b * stride_c + i * ldc + j;
    *p = beta == 0.0f ? 0.0f : beta * *p;
  }
}

void scale_matrix(const Context& ctx, float* c, std::int64_t m, std::int64_t n, std::int64_t ldc,
                  std::int64_t stride_c, std::int64_t batch, float beta) {
  const std::int64_t total = batch * m * n;
  if (total == 0 || beta == 1.0f) return;
  scale_matrix_kernel<<<grid_for(total), kBlock, 0, stream_of(ctx)>>>(c, m, n, ldc, stride_c, batch,
                                                                      beta);
  RM_CUDA_CHECK_LAUNCH("scale_matrix_kernel");
}

// y[i, j] += b[j] for y[n, out].
__global__ void bias_add_kernel(float* __restrict__ y, const float* __restrict__ b, std::int64_t n,
                                std::int64_t out) {
  const std::int64_t total = n * out;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    y[e] += b[e % out];
  }
}

}  // namespace

void gemm(const Context& ctx, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
          std::int64_t k, float alpha, const float* a, std::int64_t lda, const float* b,
          std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  check_gemm_args(trans_a, trans_b, m, n, k, lda, ldb, ldc);
  if (m == 0 || n == 0) return;
  if (k == 0) {  // op(a) @ op(b) is empty: c = beta * c
    scale_matrix(ctx, c, m, n, ldc, 0, 1, beta);
    return;
  }
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  RM_CUBLAS_CHECK(blas::api().sgemm(handle_of(ctx), op_b, op_a, to_int(n, "n"), to_int(m, "m"),
                                    to_int(k, "k"), &alpha, b, to_int(ldb, "ldb"), a,
                                    to_int(lda, "lda"), &beta, c, to_int(ldc, "ldc")));
}

void gemm_strided_batched(const Context& ctx, bool trans_a, bool trans_b, std::int64_t m,
                          std::int64_t n, std::int64_t k, float alpha, const float* a,
                          std::int64_t lda, std::int64_t stride_a, const float* b, std::int64_t ldb,
                          std::int64_t stride_b, float beta, float* c, std::int64_t ldc,
                          std::int64_t stride_c, std::int64_t batch) {
  check_gemm_args(trans_a, trans_b, m, n, k, lda, ldb, ldc);
  to_int(batch, "batch");
  if (m == 0 || n == 0 || batch == 0) return;
  if (k == 0) {
    scale_matrix(ctx, c, m, n, ldc, stride_c, batch, beta);
    return;
  }
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  RM_CUBLAS_CHECK(blas::api().sgemm_strided_batched(
      handle_of(ctx), op_b, op_a, to_int(n, "n"), to_int(m, "m"), to_int(k, "k"), &alpha, b,
      to_int(ldb, "ldb"), static_cast<long long>(stride_b), a, to_int(lda, "lda"),
      static_cast<long long>(stride_a), &beta, c, to_int(ldc, "ldc"),
      static_cast<long long>(stride_c), to_int(batch, "batch")));
}

void linear_forward(const Context& ctx, const float* x, const float* w, const float* b, float* y,
                    std::int64_t n, std::int64_t in, std::int64_t out) {
  if (n == 0 || out == 0) return;
  // y[n, out] = x[n, in] @ w[out, in]^T
  gemm(ctx, false, true, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
  if (b != nullptr) {
    bias_add_kernel<<<grid_for(n * out), kBlock, 0, stream_of(ctx)>>>(y, b, n, out);
    RM_CUDA_CHECK_LAUNCH("bias_add_kernel");
  }
}

void linear_backward(const Context& ctx, const float* dy, const float* x, const float* w, float* dx,
                     float* dw, float* db, std::int64_t n, std::int64_t in, std::int64_t out) {
  // dx[n, in] = dy[n, out] @ w[out, in]
  if (dx != nullptr) gemm(ctx, false, false, n, in, out, 1.0f, dy, out, w, in, 0.0f, dx, in);
  // dw[out, in] += dy^T @ x
  if (dw != nullptr) gemm(ctx, true, false, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
  // db[out] += column sums of dy (deterministic column reduction, see elementwise.cu)
  if (db != nullptr) sum_rows(ctx, dy, db, n, out);
}

}  // namespace routemoe::cuda
