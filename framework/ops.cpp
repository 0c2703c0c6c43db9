// The device seam (see ops.h): each operation checks where it runs and calls the CPU kernel or
// its CUDA twin. RM_OP routes an operation that has a CUDA twin; RM_OP_CPU one that has not (yet):
// asked to run on CUDA it throws Error(Check) naming the operation instead of touching device
// memory from the host.

#include "framework/ops.h"

#include <fmt/format.h>

#include <type_traits>

#include "framework/device.h"
#include "framework/error.h"

#if ROUTEMOE_HAVE_CUDA
#include "framework/cuda/context.h"
#include "framework/cuda/kernels.h"
#endif

namespace routemoe::ops {

namespace {

[[noreturn]] void not_on_cuda(const char* op, const char* why) {
  RM_FAIL(Check, fmt::format("ops::{} cannot run on CUDA: {}", op, why));
}

#if ROUTEMOE_HAVE_CUDA
const cuda::Context& context_of(const Exec& ex) {
  RM_CHECK(ex.cuda != nullptr, "a CUDA Exec without a cuda::Context");
  return *ex.cuda;
}
#endif

}  // namespace

#if ROUTEMOE_HAVE_CUDA
#define RM_OP(op, ...)                                    \
  if (ex.device == Device::CUDA) {                        \
    if constexpr (std::is_same_v<T, float>) {             \
      return cuda::op(context_of(ex), __VA_ARGS__);       \
    } else {                                              \
      not_on_cuda(#op, "the CUDA kernels run fp32 only"); \
    }                                                     \
  }                                                       \
  return cpu::op<T>(__VA_ARGS__)
#else
#define RM_OP(op, ...)                                                               \
  if (ex.device == Device::CUDA) not_on_cuda(#op, "this build has no CUDA backend"); \
  return cpu::op<T>(__VA_ARGS__)
#endif
#define RM_OP_CPU(op, ...)                                                                \
  if (ex.device == Device::CUDA) not_on_cuda(#op, "no CUDA kernel for it in this build"); \
  return cpu::op<T>(__VA_ARGS__)

// ----------------------------------------------------------------------------------------------
// Memory

template <typename T>
T* alloc(const Exec& ex, Arena& arena, std::int64_t n) {
  RM_CHECK(arena.device() == ex.device, "an arena on another device than the Exec");
  return alloc_array<T>(arena, n);
}

template <typename T>
T* zeros(const Exec& ex, Arena& arena, std::int64_t n) {
  T* p = alloc<T>(ex, arena, n);
  device_zero(p, ex.device, static_cast<std::size_t>(n) * sizeof(T));
  return p;
}

template <typename T>
void copy(const Exec& ex, const T* src, T* dst, std::int64_t n) {
  device_copy(dst, ex.device, src, ex.device, static_cast<std::size_t>(n) * sizeof(T));
}

template <typename T>
void to_device(const Exec& ex, const T* host, T* dst, std::int64_t n) {
  device_copy(dst, ex.device, host, Device::CPU, static_cast<std::size_t>(n) * sizeof(T));
}

template <typename T>
void to_host(const Exec& ex, const T* src, T* host, std::int64_t n) {
  device_copy(host, Device::CPU, src, ex.device, static_cast<std::size_t>(n) * sizeof(T));
}

void set_num_threads(int threads) {
  cpu::set_num_threads(threads);
}

int num_threads() {
  return cpu::num_threads();
}

RowStableGemm::RowStableGemm() : previous_(cpu::gemm_order()) {
  cpu::set_gemm_order(cpu::GemmOrder::RowStable);
}

RowStableGemm::~RowStableGemm() {
  cpu::set_gemm_order(previous_);
}

std::int64_t capacity_keep(const Exec& ex, const std::int32_t* choice, std::uint8_t* kept,
                           std::int64_t* counts, std::int64_t n, std::int64_t e, std::int64_t k,
                           std::int64_t cap) {
  if (ex.device == Device::CUDA)
    not_on_cuda("capacity_keep", "no CUDA kernel for it in this build");
  return cpu::capacity_keep(choice, kept, counts, n, e, k, cap);
}

void expert_offsets(const Exec& ex, const std::int64_t* counts, std::int64_t* offset,
                    std::int64_t e) {
  (void)ex;  // host arrays on every device: the slot count is a size the host needs
  cpu::expert_offsets(counts, offset, e);
}

// ----------------------------------------------------------------------------------------------
// Kernels

template <typename T>
void gemm(const Exec& ex, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
          std::int64_t k, T alpha, const T* a, std::int64_t lda, const T* b, std::int64_t ldb,
          T beta, T* c, std::int64_t ldc) {
  RM_OP(gemm, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <typename T>
void gemm_strided_batched(const Exec& ex, bool trans_a, bool trans_b, std::int64_t m,
                          std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda,
                          std::int64_t stride_a, const T* b, std::int64_t ldb,
                          std::int64_t stride_b, T beta, T* c, std::int64_t ldc,
                          std::int64_t stride_c, std::int64_t batch) {
  RM_OP(gemm_strided_batched, trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b,
        beta, c, ldc, stride_c, batch);
}

template <typename T>
void linear_forward(const Exec& ex, const T* x, const T* w, const T* b, T* y, std::int64_t n,
                    std::int64_t in, std::int64_t out) {
  RM_OP(linear_forward, x, w, b, y, n, in, out);
}

template <typename T>
void linear_backward(const Exec& ex, const T* dy, const T* x, const T* w, T* dx, T* dw, T* db,
                     std::int64_t n, std::int64_t in, std::int64_t out) {
  RM_OP(linear_backward, dy, x, w, dx, dw, db, n, in, out);
}

template <typename T>
void softmax_forward(const Exec& ex, const T* x, T* y, std::int64_t rows, std::int64_t cols) {
  RM_OP(softmax_forward, x, y, rows, cols);
}

template <typename T>
void softmax_backward(const Exec& ex, const T* y, const T* dy, T* dx, std::int64_t rows,
                      std::int64_t cols) {
  RM_OP(softmax_backward, y, dy, dx, rows, cols);
}

template <typename T>
void layernorm_forward(const Exec& ex, const T* x, const T* gamma, const T* beta, T* y, T* mean,
                       T* rstd, std::int64_t rows, std::int64_t cols, T eps) {
  RM_OP(layernorm_forward, x, gamma, beta, y, mean, rstd, rows, cols, eps);
}

template <typename T>
void layernorm_backward(const Exec& ex, const T* dy, const T* x, const T* gamma, const T* mean,
                        const T* rstd, T* dx, T* dgamma, T* dbeta, std::int64_t rows,
                        std::int64_t cols) {
  RM_OP(layernorm_backward, dy, x, gamma, mean, rstd, dx, dgamma, dbeta, rows, cols);
}

template <typename T>
void gelu_forward(const Exec& ex, const T* x, T* y, std::int64_t n) {
  RM_OP(gelu_forward, x, y, n);
}

template <typename T>
void gelu_backward(const Exec& ex, const T* x, const T* dy, T* dx, std::int64_t n) {
  RM_OP(gelu_backward, x, dy, dx, n);
}

template <typename T>
void cross_entropy_forward(const Exec& ex, const T* logits, const std::int32_t* targets, T* losses,
                           T* lse, std::int64_t n, std::int64_t v) {
  RM_OP(cross_entropy_forward, logits, targets, losses, lse, n, v);
}

template <typename T>
void cross_entropy_backward(const Exec& ex, const T* logits, const std::int32_t* targets,
                            const T* lse, const T* dloss, T* dlogits, std::int64_t n,
                            std::int64_t v) {
  RM_OP(cross_entropy_backward, logits, targets, lse, dloss, dlogits, n, v);
}

template <typename T>
void cross_entropy_fused(const Exec& ex, T* logits, const std::int32_t* targets, const T* dloss,
                         T* losses, T* lse, std::int64_t n, std::int64_t v) {
  RM_OP_CPU(cross_entropy_fused, logits, targets, dloss, losses, lse, n, v);
}

template <typename T>
void adamw_update(const Exec& ex, T* param, const T* grad, T* m, T* v, std::int64_t n,
                  const AdamWHyper& h) {
  RM_OP(adamw_update, param, grad, m, v, n, h);
}

template <typename T>
void gather_rows_forward(const Exec& ex, const T* src, const std::int32_t* idx, T* dst,
                         std::int64_t m, std::int64_t n, std::int64_t d) {
  RM_OP(gather_rows_forward, src, idx, dst, m, n, d);
}

template <typename T>
void gather_rows_backward(const Exec& ex, const T* ddst, const std::int32_t* idx, T* dsrc,
                          std::int64_t m, std::int64_t n, std::int64_t d) {
  RM_OP(gather_rows_backward, ddst, idx, dsrc, m, n, d);
}

template <typename T>
void scatter_add_rows_forward(const Exec& ex, const T* src, const std::int32_t* idx, const T* w,
                              T* dst, std::int64_t m, std::int64_t n, std::int64_t d) {
  RM_OP(scatter_add_rows_forward, src, idx, w, dst, m, n, d);
}

template <typename T>
void scatter_add_rows_backward(const Exec& ex, const T* ddst, const std::int32_t* idx, const T* src,
                               const T* w, T* dsrc, T* dw, std::int64_t m, std::int64_t n,
                               std::int64_t d) {
  RM_OP(scatter_add_rows_backward, ddst, idx, src, w, dsrc, dw, m, n, d);
}

template <typename T>
void fill(const Exec& ex, T* x, T value, std::int64_t n) {
  RM_OP(fill, x, value, n);
}

template <typename T>
void axpy(const Exec& ex, T alpha, const T* x, T* y, std::int64_t n) {
  RM_OP(axpy, alpha, x, y, n);
}

template <typename T>
void scale(const Exec& ex, T* x, T alpha, std::int64_t n) {
  RM_OP(scale, x, alpha, n);
}

template <typename T>
void add(const Exec& ex, const T* a, const T* b, T* y, std::int64_t n) {
  RM_OP(add, a, b, y, n);
}

template <typename T>
void sum_rows(const Exec& ex, const T* x, T* out, std::int64_t rows, std::int64_t cols) {
  RM_OP(sum_rows, x, out, rows, cols);
}

template <typename T>
void mask_future(const Exec& ex, T* x, std::int64_t rows, std::int64_t t) {
  RM_OP_CPU(mask_future, x, rows, t);
}

template <typename T>
void causal_attention_forward(const Exec& ex, const T* qkv, T* probs, T* ctx, std::int64_t batch,
                              std::int64_t t, std::int64_t heads, std::int64_t dh) {
  RM_OP_CPU(causal_attention_forward, qkv, probs, ctx, batch, t, heads, dh);
}

template <typename T>
void causal_attention_backward(const Exec& ex, const T* qkv, const T* probs, const T* dctx,
                               const T* d_avg, T* dqkv, std::int64_t batch, std::int64_t t,
                               std::int64_t heads, std::int64_t dh) {
  RM_OP_CPU(causal_attention_backward, qkv, probs, dctx, d_avg, dqkv, batch, t, heads, dh);
}

template <typename T>
void head_mean(const Exec& ex, const T* p, T* avg, std::int64_t batch, std::int64_t heads,
               std::int64_t m) {
  RM_OP_CPU(head_mean, p, avg, batch, heads, m);
}

template <typename T>
void head_mean_backward(const Exec& ex, const T* davg, T* dp, std::int64_t batch,
                        std::int64_t heads, std::int64_t m) {
  RM_OP_CPU(head_mean_backward, davg, dp, batch, heads, m);
}

template <typename T>
void mul(const Exec& ex, const T* a, const T* b, T* y, std::int64_t n) {
  RM_OP_CPU(mul, a, b, y, n);
}

template <typename T>
void row_logsumexp(const Exec& ex, const T* x, T* out, std::int64_t n, std::int64_t e) {
  RM_OP_CPU(row_logsumexp, x, out, n, e);
}

template <typename T>
void softmax_lse_backward(const Exec& ex, const T* p, const T* dp, const T* dlse, T* dz,
                          std::int64_t n, std::int64_t e) {
  RM_OP_CPU(softmax_lse_backward, p, dp, dlse, dz, n, e);
}

template <typename T>
void row_normalize(const Exec& ex, const T* x, T* unit, T* norm, std::int64_t rows,
                   std::int64_t cols) {
  RM_OP_CPU(row_normalize, x, unit, norm, rows, cols);
}

template <typename T>
void row_normalize_backward(const Exec& ex, const T* unit, const T* norm, const T* dunit, T* dx,
                            std::int64_t rows, std::int64_t cols) {
  RM_OP_CPU(row_normalize_backward, unit, norm, dunit, dx, rows, cols);
}

template <typename T>
void broadcast_row(const Exec& ex, const T* v, double alpha, T* x, std::int64_t n, std::int64_t e) {
  RM_OP_CPU(broadcast_row, v, alpha, x, n, e);
}

template <typename T>
void topk_rows(const Exec& ex, const T* x, std::int32_t* idx, std::int64_t n, std::int64_t e,
               std::int64_t k) {
  RM_OP_CPU(topk_rows, x, idx, n, e, k);
}

template <typename T>
void topk_gates_forward(const Exec& ex, const T* s, const std::int32_t* choice, T* gates,
                        std::int32_t* top1, std::int64_t n, std::int64_t e, std::int64_t k,
                        GateRule rule) {
  RM_OP_CPU(topk_gates_forward, s, choice, gates, top1, n, e, k, rule);
}

template <typename T>
void topk_gates_backward(const Exec& ex, const T* s, const std::int32_t* choice, const T* gates,
                         const T* dgates, T* ds, std::int64_t n, std::int64_t e, std::int64_t k,
                         GateRule rule) {
  RM_OP_CPU(topk_gates_backward, s, choice, gates, dgates, ds, n, e, k, rule);
}

template <typename T>
void top1_fraction(const Exec& ex, const std::int32_t* top1, T* frac, std::int64_t n,
                   std::int64_t e) {
  RM_OP_CPU(top1_fraction, top1, frac, n, e);
}

template <typename T>
void slot_plan(const Exec& ex, const std::int32_t* choice, const std::uint8_t* kept, const T* gates,
               const std::int64_t* offset, std::int32_t* slot_token, std::int32_t* slot_pos,
               T* slot_gate, std::int64_t n, std::int64_t e, std::int64_t k) {
  RM_OP_CPU(slot_plan, choice, kept, gates, offset, slot_token, slot_pos, slot_gate, n, e, k);
}

template <typename T>
void ac_expert_sums(const Exec& ex, const T* u, const std::int32_t* assign, double* sum,
                    double* count, std::int64_t n, std::int64_t d, std::int64_t e) {
  RM_OP_CPU(ac_expert_sums, u, assign, sum, count, n, d, e);
}

template <typename T>
void ac_expert_absdev(const Exec& ex, const T* u, const std::int32_t* assign, const double* sum,
                      const double* count, double* absdev, std::int64_t n, std::int64_t d,
                      std::int64_t e) {
  RM_OP_CPU(ac_expert_absdev, u, assign, sum, count, absdev, n, d, e);
}

template <typename T>
void ac_expert_weights(const Exec& ex, const double* absdev, const double* count, T* w,
                       std::int64_t d, std::int64_t e, double eps, double clip_factor) {
  RM_OP_CPU(ac_expert_weights, absdev, count, w, d, e, eps, clip_factor);
}

template <typename T>
void mixing_row_stats(const Exec& ex, const T* a, double alpha, std::int64_t batch, std::int64_t t,
                      bool causal, double* out) {
  RM_OP_CPU(mixing_row_stats, a, alpha, batch, t, causal, out);
}

template <typename T>
void grouped_linear_forward(const Exec& ex, const T* x, const T* w, const T* b, T* y,
                            const std::int64_t* offset, std::int64_t groups, std::int64_t in,
                            std::int64_t out) {
  RM_OP_CPU(grouped_linear_forward, x, w, b, y, offset, groups, in, out);
}

template <typename T>
void grouped_linear_backward(const Exec& ex, const T* dy, const T* x, const T* w, T* dx, T* dw,
                             T* db, const std::int64_t* offset, std::int64_t groups,
                             std::int64_t in, std::int64_t out) {
  RM_OP_CPU(grouped_linear_backward, dy, x, w, dx, dw, db, offset, groups, in, out);
}

template <typename T>
void grouped_ffn_forward(const Exec& ex, const T* x, const T* w1, const T* b1, const T* w2,
                         const T* b2, T* h_pre, T* y, const std::int64_t* offset,
                         std::int64_t groups, std::int64_t d, std::int64_t f) {
  RM_OP_CPU(grouped_ffn_forward, x, w1, b1, w2, b2, h_pre, y, offset, groups, d, f);
}

template <typename T>
void grouped_ffn_backward(const Exec& ex, const T* dy, const T* x, const T* h_pre, const T* w1,
                          const T* w2, T* dx, T* dw1, T* db1, T* dw2, T* db2,
                          const std::int64_t* offset, std::int64_t groups, std::int64_t d,
                          std::int64_t f) {
  RM_OP_CPU(grouped_ffn_backward, dy, x, h_pre, w1, w2, dx, dw1, db1, dw2, db2, offset, groups, d,
            f);
}

template <typename T>
double sum_squares(const Exec& ex, const T* x, std::int64_t n) {
  RM_OP(sum_squares, x, n);
}

template <typename T>
double switch_loss(const Exec& ex, const T* frac, const T* probs, std::int64_t n, std::int64_t e) {
  RM_OP_CPU(switch_loss, frac, probs, n, e);
}

template <typename T>
double mean_square(const Exec& ex, const T* x, std::int64_t n) {
  RM_OP_CPU(mean_square, x, n);
}

#define RM_INSTANTIATE(T)                                                                          \
  template T* alloc<T>(const Exec&, Arena&, std::int64_t);                                         \
  template T* zeros<T>(const Exec&, Arena&, std::int64_t);                                         \
  template void copy<T>(const Exec&, const T*, T*, std::int64_t);                                  \
  template void gemm<T>(const Exec&, bool, bool, std::int64_t, std::int64_t, std::int64_t, T,      \
                        const T*, std::int64_t, const T*, std::int64_t, T, T*, std::int64_t);      \
  template void gemm_strided_batched<T>(const Exec&, bool, bool, std::int64_t, std::int64_t,       \
                                        std::int64_t, T, const T*, std::int64_t, std::int64_t,     \
                                        const T*, std::int64_t, std::int64_t, T, T*, std::int64_t, \
                                        std::int64_t, std::int64_t);                               \
  template void linear_forward<T>(const Exec&, const T*, const T*, const T*, T*, std::int64_t,     \
                                  std::int64_t, std::int64_t);                                     \
  template void linear_backward<T>(const Exec&, const T*, const T*, const T*, T*, T*, T*,          \
                                   std::int64_t, std::int64_t, std::int64_t);                      \
  template void softmax_forward<T>(const Exec&, const T*, T*, std::int64_t, std::int64_t);         \
  template void softmax_backward<T>(const Exec&, const T*, const T*, T*, std::int64_t,             \
                                    std::int64_t);                                                 \
  template void layernorm_forward<T>(const Exec&, const T*, const T*, const T*, T*, T*, T*,        \
                                     std::int64_t, std::int64_t, T);                               \
  template void layernorm_backward<T>(const Exec&, const T*, const T*, const T*, const T*,         \
                                      const T*, T*, T*, T*, std::int64_t, std::int64_t);           \
  template void gelu_forward<T>(const Exec&, const T*, T*, std::int64_t);                          \
  template void gelu_backward<T>(const Exec&, const T*, const T*, T*, std::int64_t);               \
  template void cross_entropy_forward<T>(const Exec&, const T*, const std::int32_t*, T*, T*,       \
                                         std::int64_t, std::int64_t);                              \
  template void cross_entropy_backward<T>(const Exec&, const T*, const std::int32_t*, const T*,    \
                                          const T*, T*, std::int64_t, std::int64_t);               \
  template void adamw_update<T>(const Exec&, T*, const T*, T*, T*, std::int64_t,                   \
                                const AdamWHyper&);                                                \
  template void gather_rows_forward<T>(const Exec&, const T*, const std::int32_t*, T*,             \
                                       std::int64_t, std::int64_t, std::int64_t);                  \
  template void gather_rows_backward<T>(const Exec&, const T*, const std::int32_t*, T*,            \
                                        std::int64_t, std::int64_t, std::int64_t);                 \
  template void scatter_add_rows_forward<T>(const Exec&, const T*, const std::int32_t*, const T*,  \
                                            T*, std::int64_t, std::int64_t, std::int64_t);         \
  template void scatter_add_rows_backward<T>(const Exec&, const T*, const std::int32_t*, const T*, \
                                             const T*, T*, T*, std::int64_t, std::int64_t,         \
                                             std::int64_t);                                        \
  template void fill<T>(const Exec&, T*, T, std::int64_t);                                         \
  template void axpy<T>(const Exec&, T, const T*, T*, std::int64_t);                               \
  template void scale<T>(const Exec&, T*, T, std::int64_t);                                        \
  template void add<T>(const Exec&, const T*, const T*, T*, std::int64_t);                         \
  template void sum_rows<T>(const Exec&, const T*, T*, std::int64_t, std::int64_t);                \
  template void mask_future<T>(const Exec&, T*, std::int64_t, std::int64_t);                       \
  template void head_mean<T>(const Exec&, const T*, T*, std::int64_t, std::int64_t, std::int64_t); \
  template void head_mean_backward<T>(const Exec&, const T*, T*, std::int64_t, std::int64_t,       \
                                      std::int64_t);                                               \
  template void mul<T>(const Exec&, const T*, const T*, T*, std::int64_t);                         \
  template void row_logsumexp<T>(const Exec&, const T*, T*, std::int64_t, std::int64_t);           \
  template void softmax_lse_backward<T>(const Exec&, const T*, const T*, const T*, T*,             \
                                        std::int64_t, std::int64_t);                               \
  template void row_normalize<T>(const Exec&, const T*, T*, T*, std::int64_t, std::int64_t);       \
  template void row_normalize_backward<T>(const Exec&, const T*, const T*, const T*, T*,           \
                                          std::int64_t, std::int64_t);                             \
  template void broadcast_row<T>(const Exec&, const T*, double, T*, std::int64_t, std::int64_t);   \
  template void topk_rows<T>(const Exec&, const T*, std::int32_t*, std::int64_t, std::int64_t,     \
                             std::int64_t);                                                        \
  template void topk_gates_forward<T>(const Exec&, const T*, const std::int32_t*, T*,              \
                                      std::int32_t*, std::int64_t, std::int64_t, std::int64_t,     \
                                      GateRule);                                                   \
  template void topk_gates_backward<T>(const Exec&, const T*, const std::int32_t*, const T*,       \
                                       const T*, T*, std::int64_t, std::int64_t, std::int64_t,     \
                                       GateRule);                                                  \
  template void top1_fraction<T>(const Exec&, const std::int32_t*, T*, std::int64_t,               \
                                 std::int64_t);                                                    \
  template void slot_plan<T>(const Exec&, const std::int32_t*, const std::uint8_t*, const T*,      \
                             const std::int64_t*, std::int32_t*, std::int32_t*, T*, std::int64_t,  \
                             std::int64_t, std::int64_t);                                          \
  template void ac_expert_sums<T>(const Exec&, const T*, const std::int32_t*, double*, double*,    \
                                  std::int64_t, std::int64_t, std::int64_t);                       \
  template void ac_expert_absdev<T>(const Exec&, const T*, const std::int32_t*, const double*,     \
                                    const double*, double*, std::int64_t, std::int64_t,            \
                                    std::int64_t);                                                 \
  template void ac_expert_weights<T>(const Exec&, const double*, const double*, T*, std::int64_t,  \
                                     std::int64_t, double, double);                                \
  template void mixing_row_stats<T>(const Exec&, const T*, double, std::int64_t, std::int64_t,     \
                                    bool, double*);                                                \
  template void grouped_linear_forward<T>(const Exec&, const T*, const T*, const T*, T*,           \
                                          const std::int64_t*, std::int64_t, std::int64_t,         \
                                          std::int64_t);                                           \
  template void grouped_linear_backward<T>(const Exec&, const T*, const T*, const T*, T*, T*, T*,  \
                                           const std::int64_t*, std::int64_t, std::int64_t,        \
                                           std::int64_t);                                          \
  template double sum_squares<T>(const Exec&, const T*, std::int64_t);                             \
  template double switch_loss<T>(const Exec&, const T*, const T*, std::int64_t, std::int64_t);     \
  template double mean_square<T>(const Exec&, const T*, std::int64_t);                             \
  template void cross_entropy_fused<T>(const Exec&, T*, const std::int32_t*, const T*, T*, T*,     \
                                       std::int64_t, std::int64_t);                                \
  template void causal_attention_forward<T>(const Exec&, const T*, T*, T*, std::int64_t,           \
                                            std::int64_t, std::int64_t, std::int64_t);             \
  template void causal_attention_backward<T>(const Exec&, const T*, const T*, const T*, const T*,  \
                                             T*, std::int64_t, std::int64_t, std::int64_t,         \
                                             std::int64_t);                                        \
  template void grouped_ffn_forward<T>(const Exec&, const T*, const T*, const T*, const T*,        \
                                       const T*, T*, T*, const std::int64_t*, std::int64_t,        \
                                       std::int64_t, std::int64_t);                                \
  template void grouped_ffn_backward<T>(const Exec&, const T*, const T*, const T*, const T*,       \
                                        const T*, T*, T*, T*, T*, T*, const std::int64_t*,         \
                                        std::int64_t, std::int64_t, std::int64_t);

RM_INSTANTIATE(float)
RM_INSTANTIATE(double)
#undef RM_INSTANTIATE

template std::int32_t* alloc<std::int32_t>(const Exec&, Arena&, std::int64_t);
template std::int64_t* alloc<std::int64_t>(const Exec&, Arena&, std::int64_t);
template std::uint8_t* alloc<std::uint8_t>(const Exec&, Arena&, std::int64_t);
template std::int32_t* zeros<std::int32_t>(const Exec&, Arena&, std::int64_t);
template std::int64_t* zeros<std::int64_t>(const Exec&, Arena&, std::int64_t);
template void copy<std::int32_t>(const Exec&, const std::int32_t*, std::int32_t*, std::int64_t);
template void to_device<float>(const Exec&, const float*, float*, std::int64_t);
template void to_device<std::int32_t>(const Exec&, const std::int32_t*, std::int32_t*,
                                      std::int64_t);
template void to_device<double>(const Exec&, const double*, double*, std::int64_t);
template void to_host<float>(const Exec&, const float*, float*, std::int64_t);
template void to_host<double>(const Exec&, const double*, double*, std::int64_t);
template void to_host<std::int32_t>(const Exec&, const std::int32_t*, std::int32_t*, std::int64_t);

}  // namespace routemoe::ops
