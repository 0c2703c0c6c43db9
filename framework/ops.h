#pragma once
// The device seam: the one place that decides, per operation, whether the CPU kernel
// (framework/cpu/kernels.h, framework/cpu/moe_kernels.h: the reference) or its CUDA twin
// (framework/cuda/kernels.h) runs. Layers, routers, the optimiser and the trainer call only these
// functions, never cpu:: or cuda:: directly, so the CPU path that CI tests is the code the GPU
// runs through.
//
// Every function takes the Exec first and otherwise has the arguments and the contract of the
// CPU kernel of the same name (see those headers for shapes, aliasing and accumulation rules).
// Pointers live on exec.device. Templates are instantiated for float and double; double runs on
// the CPU only (gradient checks). An operation without a CUDA twin in this build throws
// Error(Check) naming it when asked to run on CUDA: nothing falls back to the host silently.
//
// Host synchronisation: functions returning a value to the host (sum_squares, switch_loss,
// mean_square, capacity_keep) and those taking host arrays (expert_offsets, the offsets of
// grouped_linear_*) are the points where a size or a loss value must be known on the host.

#include <cstdint>

#include "framework/arena.h"
#include "framework/cpu/kernels.h"
#include "framework/cpu/moe_kernels.h"
#include "framework/exec.h"

namespace routemoe::ops {

using cpu::AdamWHyper;
using cpu::GateRule;

// ----------------------------------------------------------------------------------------------
// Memory on the Exec's device.
// `n` elements of T from `arena` (which must live on exec.device), uninitialised / zeroed.
template <typename T>
T* alloc(const Exec& ex, Arena& arena, std::int64_t n);
template <typename T>
T* zeros(const Exec& ex, Arena& arena, std::int64_t n);
// dst[n] = src[n] (same device).
template <typename T>
void copy(const Exec& ex, const T* src, T* dst, std::int64_t n);
// dst[n] (exec.device) = host[n] (host memory), and back.
template <typename T>
void to_device(const Exec& ex, const T* host, T* dst, std::int64_t n);
template <typename T>
void to_host(const Exec& ex, const T* src, T* host, std::int64_t n);
// Threads of the CPU kernels and the BLAS (no effect on CUDA work).
void set_num_threads(int threads);
int num_threads();

// For its lifetime, every CPU GEMM sums each element in one fixed order, whatever the matrix
// shapes and threads (cpu::GemmOrder::RowStable), so that the same rows give the same bits on
// any layout of the ranks; restores the previous order after. No effect on CUDA work.
class RowStableGemm {
 public:
  RowStableGemm();
  ~RowStableGemm();
  RowStableGemm(const RowStableGemm&) = delete;
  RowStableGemm& operator=(const RowStableGemm&) = delete;

 private:
  cpu::GemmOrder previous_;
};

// ----------------------------------------------------------------------------------------------
// framework/cpu/kernels.h
template <typename T>
void gemm(const Exec& ex, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
          std::int64_t k, T alpha, const T* a, std::int64_t lda, const T* b, std::int64_t ldb,
          T beta, T* c, std::int64_t ldc);
template <typename T>
void gemm_strided_batched(const Exec& ex, bool trans_a, bool trans_b, std::int64_t m,
                          std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda,
                          std::int64_t stride_a, const T* b, std::int64_t ldb,
                          std::int64_t stride_b, T beta, T* c, std::int64_t ldc,
                          std::int64_t stride_c, std::int64_t batch);
template <typename T>
void linear_forward(const Exec& ex, const T* x, const T* w, const T* b, T* y, std::int64_t n,
                    std::int64_t in, std::int64_t out);
template <typename T>
void linear_backward(const Exec& ex, const T* dy, const T* x, const T* w, T* dx, T* dw, T* db,
                     std::int64_t n, std::int64_t in, std::int64_t out);
template <typename T>
void softmax_forward(const Exec& ex, const T* x, T* y, std::int64_t rows, std::int64_t cols);
template <typename T>
void softmax_backward(const Exec& ex, const T* y, const T* dy, T* dx, std::int64_t rows,
                      std::int64_t cols);
template <typename T>
void layernorm_forward(const Exec& ex, const T* x, const T* gamma, const T* beta, T* y, T* mean,
                       T* rstd, std::int64_t rows, std::int64_t cols, T eps);
template <typename T>
void layernorm_backward(const Exec& ex, const T* dy, const T* x, const T* gamma, const T* mean,
                        const T* rstd, T* dx, T* dgamma, T* dbeta, std::int64_t rows,
                        std::int64_t cols);
template <typename T>
void gelu_forward(const Exec& ex, const T* x, T* y, std::int64_t n);
template <typename T>
void gelu_backward(const Exec& ex, const T* x, const T* dy, T* dx, std::int64_t n);
template <typename T>
void cross_entropy_forward(const Exec& ex, const T* logits, const std::int32_t* targets, T* losses,
                           T* lse, std::int64_t n, std::int64_t v);
template <typename T>
void cross_entropy_backward(const Exec& ex, const T* logits, const std::int32_t* targets,
                            const T* lse, const T* dloss, T* dlogits, std::int64_t n,
                            std::int64_t v);
template <typename T>
void cross_entropy_fused(const Exec& ex, T* logits, const std::int32_t* targets, const T* dloss,
                         T* losses, T* lse, std::int64_t n, std::int64_t v);
template <typename T>
void adamw_update(const Exec& ex, T* param, const T* grad, T* m, T* v, std::int64_t n,
                  const AdamWHyper& h);
template <typename T>
void gather_rows_forward(const Exec& ex, const T* src, const std::int32_t* idx, T* dst,
                         std::int64_t m, std::int64_t n, std::int64_t d);
template <typename T>
void gather_rows_backward(const Exec& ex, const T* ddst, const std::int32_t* idx, T* dsrc,
                          std::int64_t m, std::int64_t n, std::int64_t d);
template <typename T>
void scatter_add_rows_forward(const Exec& ex, const T* src, const std::int32_t* idx, const T* w,
                              T* dst, std::int64_t m, std::int64_t n, std::int64_t d);
template <typename T>
void scatter_add_rows_backward(const Exec& ex, const T* ddst, const std::int32_t* idx, const T* src,
                               const T* w, T* dsrc, T* dw, std::int64_t m, std::int64_t n,
                               std::int64_t d);
template <typename T>
void fill(const Exec& ex, T* x, T value, std::int64_t n);
template <typename T>
void axpy(const Exec& ex, T alpha, const T* x, T* y, std::int64_t n);
template <typename T>
void scale(const Exec& ex, T* x, T alpha, std::int64_t n);
template <typename T>
void add(const Exec& ex, const T* a, const T* b, T* y, std::int64_t n);
template <typename T>
void sum_rows(const Exec& ex, const T* x, T* out, std::int64_t rows, std::int64_t cols);
template <typename T>
double sum_squares(const Exec& ex, const T* x, std::int64_t n);

// ----------------------------------------------------------------------------------------------
// framework/cpu/moe_kernels.h
template <typename T>
void mask_future(const Exec& ex, T* x, std::int64_t rows, std::int64_t t);
template <typename T>
void causal_attention_forward(const Exec& ex, const T* qkv, T* probs, T* ctx, std::int64_t batch,
                              std::int64_t t, std::int64_t heads, std::int64_t dh);
template <typename T>
void causal_attention_backward(const Exec& ex, const T* qkv, const T* probs, const T* dctx,
                               const T* d_avg, T* dqkv, std::int64_t batch, std::int64_t t,
                               std::int64_t heads, std::int64_t dh);
template <typename T>
void head_mean(const Exec& ex, const T* p, T* avg, std::int64_t batch, std::int64_t heads,
               std::int64_t m);
template <typename T>
void head_mean_backward(const Exec& ex, const T* davg, T* dp, std::int64_t batch,
                        std::int64_t heads, std::int64_t m);
template <typename T>
void mul(const Exec& ex, const T* a, const T* b, T* y, std::int64_t n);
template <typename T>
void row_logsumexp(const Exec& ex, const T* x, T* out, std::int64_t n, std::int64_t e);
template <typename T>
void softmax_lse_backward(const Exec& ex, const T* p, const T* dp, const T* dlse, T* dz,
                          std::int64_t n, std::int64_t e);
template <typename T>
void row_normalize(const Exec& ex, const T* x, T* unit, T* norm, std::int64_t rows,
                   std::int64_t cols);
template <typename T>
void row_normalize_backward(const Exec& ex, const T* unit, const T* norm, const T* dunit, T* dx,
                            std::int64_t rows, std::int64_t cols);
template <typename T>
void broadcast_row(const Exec& ex, const T* v, double alpha, T* x, std::int64_t n, std::int64_t e);
template <typename T>
void topk_rows(const Exec& ex, const T* x, std::int32_t* idx, std::int64_t n, std::int64_t e,
               std::int64_t k);
template <typename T>
void topk_gates_forward(const Exec& ex, const T* s, const std::int32_t* choice, T* gates,
                        std::int32_t* top1, std::int64_t n, std::int64_t e, std::int64_t k,
                        GateRule rule);
template <typename T>
void topk_gates_backward(const Exec& ex, const T* s, const std::int32_t* choice, const T* gates,
                         const T* dgates, T* ds, std::int64_t n, std::int64_t e, std::int64_t k,
                         GateRule rule);
template <typename T>
void top1_fraction(const Exec& ex, const std::int32_t* top1, T* frac, std::int64_t n,
                   std::int64_t e);
template <typename T>
double switch_loss(const Exec& ex, const T* frac, const T* probs, std::int64_t n, std::int64_t e);
template <typename T>
double mean_square(const Exec& ex, const T* x, std::int64_t n);
std::int64_t capacity_keep(const Exec& ex, const std::int32_t* choice, std::uint8_t* kept,
                           std::int64_t* counts, std::int64_t n, std::int64_t e, std::int64_t k,
                           std::int64_t cap);
void expert_offsets(const Exec& ex, const std::int64_t* counts, std::int64_t* offset,
                    std::int64_t e);
template <typename T>
void slot_plan(const Exec& ex, const std::int32_t* choice, const std::uint8_t* kept, const T* gates,
               const std::int64_t* offset, std::int32_t* slot_token, std::int32_t* slot_pos,
               T* slot_gate, std::int64_t n, std::int64_t e, std::int64_t k);
template <typename T>
void ac_expert_sums(const Exec& ex, const T* u, const std::int32_t* assign, double* sum,
                    double* count, std::int64_t n, std::int64_t d, std::int64_t e);
template <typename T>
void ac_expert_absdev(const Exec& ex, const T* u, const std::int32_t* assign, const double* sum,
                      const double* count, double* absdev, std::int64_t n, std::int64_t d,
                      std::int64_t e);
template <typename T>
void ac_expert_weights(const Exec& ex, const double* absdev, const double* count, T* w,
                       std::int64_t d, std::int64_t e, double eps, double clip_factor);
template <typename T>
void mixing_row_stats(const Exec& ex, const T* a, double alpha, std::int64_t batch, std::int64_t t,
                      bool causal, double* out);
template <typename T>
void grouped_linear_forward(const Exec& ex, const T* x, const T* w, const T* b, T* y,
                            const std::int64_t* offset, std::int64_t groups, std::int64_t in,
                            std::int64_t out);
template <typename T>
void grouped_linear_backward(const Exec& ex, const T* dy, const T* x, const T* w, T* dx, T* dw,
                             T* db, const std::int64_t* offset, std::int64_t groups,
                             std::int64_t in, std::int64_t out);
template <typename T>
void grouped_ffn_forward(const Exec& ex, const T* x, const T* w1, const T* b1, const T* w2,
                         const T* b2, T* h_pre, T* y, const std::int64_t* offset,
                         std::int64_t groups, std::int64_t d, std::int64_t f);
template <typename T>
void grouped_ffn_backward(const Exec& ex, const T* dy, const T* x, const T* h_pre, const T* w1,
                          const T* w2, T* dx, T* dw1, T* db1, T* dw2, T* db2,
                          const std::int64_t* offset, std::int64_t groups, std::int64_t d,
                          std::int64_t f);

}  // namespace routemoe::ops
