#pragma once
// CPU kernels: the reference implementation of every numeric operation of the model. Each
// CUDA twin in framework/cuda/kernels.h has the same name, arguments and semantics (fp32 only),
// and is tested against these.
//
// Conventions
// - Row-major, contiguous unless a leading dimension is given. Shapes are in the argument
//   names and in the comment of each function: x[n, d] is n rows of d values.
// - Templates are instantiated for float (what the model runs) and double (gradient checks by
//   finite differences run the very same code in double).
// - Sizes may be zero: every kernel is a no-op on an empty batch.
// - "+=" in a comment means the output is accumulated into, never overwritten; the caller zeroes
//   gradient buffers once per step.
// - Index arguments (token ids, row indices) are int32 and range-checked: an out-of-range index
//   throws routemoe::Error(Data) naming the kernel, the position and the bound.
// - Reductions over rows run in parallel over rows (OpenMP); every row's reduction is sequential,
//   so results do not depend on the number of threads. Scatter-style accumulations run in
//   parallel over column blocks and accumulate rows in increasing order: also thread-count
//   independent. Sums of float data are accumulated in double.
// - Optional outputs documented as "skipped when null" may be null; so may layernorm's gamma
//   (ones), beta (zeros), mean and rstd (not saved), linear_backward's dw and
//   cross_entropy_forward's lse. Forward softmax and layernorm may run in place (y == x).
// - Bad sizes (negative, above INT_MAX for BLAS, too small a leading dimension) throw
//   routemoe::Error(Shape).

#include <cstdint>

namespace routemoe::cpu {

// ----------------------------------------------------------------------------------------------
// GEMM through CBLAS.
// c[m, n] = alpha * op(a) @ op(b) + beta * c, op(a)[m, k], op(b)[k, n].
// a is [m, k] with row stride lda (>= k), or [k, m] with lda >= m when trans_a;
// b is [k, n] with ldb >= n, or [n, k] with ldb >= k when trans_b; c is [m, n] with ldc >= n.
// beta == 0 overwrites c (NaNs in c are not propagated).
template <typename T>
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha,
          const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
          std::int64_t ldc);

// `batch` independent GEMMs as above; matrix i starts at a + i*stride_a, b + i*stride_b,
// c + i*stride_c.
template <typename T>
void gemm_strided_batched(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
                          std::int64_t k, T alpha, const T* a, std::int64_t lda,
                          std::int64_t stride_a, const T* b, std::int64_t ldb,
                          std::int64_t stride_b, T beta, T* c, std::int64_t ldc,
                          std::int64_t stride_c, std::int64_t batch);

// ----------------------------------------------------------------------------------------------
// Linear layer: y[n, out] = x[n, in] @ w[out, in]^T + b[out] (b may be null).
template <typename T>
void linear_forward(const T* x, const T* w, const T* b, T* y, std::int64_t n, std::int64_t in,
                    std::int64_t out);
// dx[n, in] = dy[n, out] @ w (overwritten; skipped when dx is null);
// dw[out, in] += dy^T @ x; db[out] += column sums of dy (skipped when db is null).
template <typename T>
void linear_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* db, std::int64_t n,
                     std::int64_t in, std::int64_t out);

// ----------------------------------------------------------------------------------------------
// Softmax over the last dimension: y[rows, cols] (max-subtracted, exact for -inf entries;
// a row that is entirely -inf gives all zeros).
template <typename T>
void softmax_forward(const T* x, T* y, std::int64_t rows, std::int64_t cols);
// dx[rows, cols] = y * (dy - sum_j dy_j y_j) (overwritten). May alias dy.
template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, std::int64_t rows, std::int64_t cols);

// ----------------------------------------------------------------------------------------------
// LayerNorm over the last dimension: y = (x - mean) * rstd * gamma + beta,
// rstd = 1 / sqrt(var + eps) with the biased variance. Saves mean[rows], rstd[rows].
template <typename T>
void layernorm_forward(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd,
                       std::int64_t rows, std::int64_t cols, T eps);
// dx[rows, cols] overwritten; dgamma[cols] += ; dbeta[cols] += .
template <typename T>
void layernorm_backward(const T* dy, const T* x, const T* gamma, const T* mean, const T* rstd,
                        T* dx, T* dgamma, T* dbeta, std::int64_t rows, std::int64_t cols);

// ----------------------------------------------------------------------------------------------
// GELU, tanh form: y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise over n.
template <typename T>
void gelu_forward(const T* x, T* y, std::int64_t n);
// dx[n] = dy * gelu'(x) (overwritten). May alias dy.
template <typename T>
void gelu_backward(const T* x, const T* dy, T* dx, std::int64_t n);

// ----------------------------------------------------------------------------------------------
// Cross-entropy of logits[n, v] against targets[n]: losses[i] = lse[i] - logits[i, targets[i]],
// lse[i] = log sum_j exp(logits[i, j]) (saved for the backward). A target of -1 means "ignore":
// loss 0 and zero gradient. Other targets must lie in [0, v).
template <typename T>
void cross_entropy_forward(const T* logits, const std::int32_t* targets, T* losses, T* lse,
                           std::int64_t n, std::int64_t v);
// dlogits[n, v] = dloss[i] * (softmax(logits[i]) - onehot(targets[i])) (overwritten).
template <typename T>
void cross_entropy_backward(const T* logits, const std::int32_t* targets, const T* lse,
                            const T* dloss, T* dlogits, std::int64_t n, std::int64_t v);

// Forward and backward in one pass, for a training step whose loss gradient is known before the
// forward (the LM head): losses[n] and lse[n] (skipped when null) as cross_entropy_forward, then
// logits[n, v] overwritten by dlogits as cross_entropy_backward gives them for dloss[n], from
// the lse as stored (rounded to T). Saves the backward's pass over the logits and the buffer.
template <typename T>
void cross_entropy_fused(T* logits, const std::int32_t* targets, const T* dloss, T* losses, T* lse,
                         std::int64_t n, std::int64_t v);

// ----------------------------------------------------------------------------------------------
// AdamW (Loshchilov & Hutter) with decoupled weight decay, over n elements:
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p -= lr * ( (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps) + weight_decay * p )
// step counts from 1. Moments are always fp32/T, like the parameters.
struct AdamWHyper {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;
  std::int64_t step = 1;
};
template <typename T>
void adamw_update(T* param, const T* grad, T* m, T* v, std::int64_t n, const AdamWHyper& h);

// ----------------------------------------------------------------------------------------------
// Row gather: dst[i, :] = src[idx[i], :] for i < m; src[n, d], dst[m, d]. This is also the
// embedding lookup (src = table[vocab, d], idx = token ids, m tokens) and the token permutation.
template <typename T>
void gather_rows_forward(const T* src, const std::int32_t* idx, T* dst, std::int64_t m,
                         std::int64_t n, std::int64_t d);
// dsrc[n, d] += scatter of ddst[m, d] by idx (the embedding's table gradient). Repeated indices
// accumulate in increasing i, so the result is deterministic.
template <typename T>
void gather_rows_backward(const T* ddst, const std::int32_t* idx, T* dsrc, std::int64_t m,
                          std::int64_t n, std::int64_t d);

// Weighted row scatter-add (un-permute and combine): dst[idx[i], :] += w[i] * src[i, :]
// for i < m; src[m, d], dst[n, d], w[m] (w null means all ones). Repeated indices accumulate in
// increasing i, so the result is deterministic.
template <typename T>
void scatter_add_rows_forward(const T* src, const std::int32_t* idx, const T* w, T* dst,
                              std::int64_t m, std::int64_t n, std::int64_t d);
// dsrc[i, :] = w[i] * ddst[idx[i], :] (overwritten);
// dw[i] = dot(ddst[idx[i], :], src[i, :]) (overwritten; skipped when dw or w is null).
template <typename T>
void scatter_add_rows_backward(const T* ddst, const std::int32_t* idx, const T* src, const T* w,
                               T* dsrc, T* dw, std::int64_t m, std::int64_t n, std::int64_t d);

// ----------------------------------------------------------------------------------------------
// Elementwise helpers (no backward of their own: they are linear).
template <typename T>
void fill(T* x, T value, std::int64_t n);
// y[n] += alpha * x[n]
template <typename T>
void axpy(T alpha, const T* x, T* y, std::int64_t n);
// x[n] *= alpha
template <typename T>
void scale(T* x, T alpha, std::int64_t n);
// y[n] = a[n] + b[n] (y may alias a or b)
template <typename T>
void add(const T* a, const T* b, T* y, std::int64_t n);
// out[cols] += column sums of x[rows, cols]
template <typename T>
void sum_rows(const T* x, T* out, std::int64_t rows, std::int64_t cols);
// sum of x[i]^2 over n, accumulated in double
template <typename T>
double sum_squares(const T* x, std::int64_t n);

// Number of threads the CPU kernels and the BLAS use (OpenMP and OpenBLAS).
void set_num_threads(int threads);
int num_threads();

// Large scratch buffers of the CPU kernels (the fused expert FFN's: hundreds of MB per call at
// d_ff 2048) stay in the process's heap once freed and are reused by the next call, instead of
// being mapped and unmapped by every call (glibc maps allocations above its threshold, and each
// call then pays first-touch page faults: measured 12 % of the step of `bench train --d 512
// --d-ff 2048 --experts 16 --seq-len 512`). The routemoe executable calls it once at start;
// no effect without glibc.
void reuse_freed_memory();

// The summation order of every GEMM (gemm, gemm_strided_batched, linear and the fused kernels),
// a process-wide setting like the thread count:
//   Blas       OpenBLAS, fast; an element's rounding can depend on m, n and the thread count
//              (measured: rows of A·B differ in the last bits when A has 64 rows instead of 256);
//   RowStable  every element c[i][j] summed over k in increasing order by one loop, whatever
//              m, n, the thread count or the layout of the ranks: the same inputs give the
//              same bits. Several times slower; route_probe uses it (RowStableGemm in
//              framework/ops.h) so that probe routing records do not depend on the rank count.
enum class GemmOrder { Blas, RowStable };
void set_gemm_order(GemmOrder order);
GemmOrder gemm_order();

}  // namespace routemoe::cpu
