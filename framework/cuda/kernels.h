#pragma once
// CUDA twins of framework/cpu/kernels.h: same names, arguments and semantics, fp32 only, all
// pointers in device memory, work queued on the context's stream (asynchronous unless stated).
// Every launch is checked (RM_CUDA_CHECK_LAUNCH). Index arguments are NOT range-checked on the
// device; the caller validates them (the CPU kernels are the reference and do check).
// Built only when ROUTEMOE_HAVE_CUDA.

#include <cstdint>

#include "framework/cpu/kernels.h"  // AdamWHyper
#include "framework/cuda/context.h"

namespace routemoe::cuda {

using cpu::AdamWHyper;

void gemm(const Context& ctx, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
          std::int64_t k, float alpha, const float* a, std::int64_t lda, const float* b,
          std::int64_t ldb, float beta, float* c, std::int64_t ldc);
void gemm_strided_batched(const Context& ctx, bool trans_a, bool trans_b, std::int64_t m,
                          std::int64_t n, std::int64_t k, float alpha, const float* a,
                          std::int64_t lda, std::int64_t stride_a, const float* b, std::int64_t ldb,
                          std::int64_t stride_b, float beta, float* c, std::int64_t ldc,
                          std::int64_t stride_c, std::int64_t batch);

void linear_forward(const Context& ctx, const float* x, const float* w, const float* b, float* y,
                    std::int64_t n, std::int64_t in, std::int64_t out);
void linear_backward(const Context& ctx, const float* dy, const float* x, const float* w, float* dx,
                     float* dw, float* db, std::int64_t n, std::int64_t in, std::int64_t out);

void softmax_forward(const Context& ctx, const float* x, float* y, std::int64_t rows,
                     std::int64_t cols);
void softmax_backward(const Context& ctx, const float* y, const float* dy, float* dx,
                      std::int64_t rows, std::int64_t cols);

void layernorm_forward(const Context& ctx, const float* x, const float* gamma, const float* beta,
                       float* y, float* mean, float* rstd, std::int64_t rows, std::int64_t cols,
                       float eps);
void layernorm_backward(const Context& ctx, const float* dy, const float* x, const float* gamma,
                        const float* mean, const float* rstd, float* dx, float* dgamma,
                        float* dbeta, std::int64_t rows, std::int64_t cols);

void gelu_forward(const Context& ctx, const float* x, float* y, std::int64_t n);
void gelu_backward(const Context& ctx, const float* x, const float* dy, float* dx, std::int64_t n);

void cross_entropy_forward(const Context& ctx, const float* logits, const std::int32_t* targets,
                           float* losses, float* lse, std::int64_t n, std::int64_t v);
void cross_entropy_backward(const Context& ctx, const float* logits, const std::int32_t* targets,
                            const float* lse, const float* dloss, float* dlogits, std::int64_t n,
                            std::int64_t v);

void adamw_update(const Context& ctx, float* param, const float* grad, float* m, float* v,
                  std::int64_t n, const AdamWHyper& h);

void gather_rows_forward(const Context& ctx, const float* src, const std::int32_t* idx, float* dst,
                         std::int64_t m, std::int64_t n, std::int64_t d);
void gather_rows_backward(const Context& ctx, const float* ddst, const std::int32_t* idx,
                          float* dsrc, std::int64_t m, std::int64_t n, std::int64_t d);
void scatter_add_rows_forward(const Context& ctx, const float* src, const std::int32_t* idx,
                              const float* w, float* dst, std::int64_t m, std::int64_t n,
                              std::int64_t d);
void scatter_add_rows_backward(const Context& ctx, const float* ddst, const std::int32_t* idx,
                               const float* src, const float* w, float* dsrc, float* dw,
                               std::int64_t m, std::int64_t n, std::int64_t d);

void fill(const Context& ctx, float* x, float value, std::int64_t n);
void axpy(const Context& ctx, float alpha, const float* x, float* y, std::int64_t n);
void scale(const Context& ctx, float* x, float alpha, std::int64_t n);
void add(const Context& ctx, const float* a, const float* b, float* y, std::int64_t n);
void sum_rows(const Context& ctx, const float* x, float* out, std::int64_t rows, std::int64_t cols);
// Synchronous: returns the sum of squares (accumulated in double).
double sum_squares(const Context& ctx, const float* x, std::int64_t n);

// Philox fills, bit-identical to framework/rng.h on the CPU (default stream, synchronous).
void fill_uniform(float* x, std::int64_t n, std::uint64_t seed, std::uint64_t stream, float lo,
                  float hi, std::uint64_t index_offset);
void fill_normal(float* x, std::int64_t n, std::uint64_t seed, std::uint64_t stream, float mean,
                 float std, std::uint64_t index_offset);

}  // namespace routemoe::cuda
