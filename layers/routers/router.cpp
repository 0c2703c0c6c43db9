// The router factory and the softmax gate shared by the topk and graph families.

#include "layers/routers/router.h"

#include <fmt/format.h>

#include "framework/error.h"

namespace routemoe::layers {

// Each family's file defines its maker.
template <typename T>
std::unique_ptr<Router<T>> make_topk_router(const RouterOptions& options);
template <typename T>
std::unique_ptr<Router<T>> make_graph_router(const RouterOptions& options);
template <typename T>
std::unique_ptr<Router<T>> make_ac_router(const RouterOptions& options);

template <typename T>
std::unique_ptr<Router<T>> make_router(const RouterOptions& options) {
  switch (options.kind) {
    case RouterKind::TopK:
      return make_topk_router<T>(options);
    case RouterKind::Similarity:
    case RouterKind::Attention:
      return make_graph_router<T>(options);
    case RouterKind::AC:
      return make_ac_router<T>(options);
  }
  RM_FAIL(Check, fmt::format("no router for kind {}", static_cast<int>(options.kind)));
}

template <typename T>
void SoftmaxGate<T>::forward(const Exec& ex, std::int64_t n, std::int64_t d, std::int64_t e,
                             const T* u, const T* gate, Arena& arena) {
  T* logits = ops::alloc<T>(ex, arena, n * e);
  T* p = ops::alloc<T>(ex, arena, n * e);
  T* l = ops::alloc<T>(ex, arena, n);
  ops::linear_forward<T>(ex, u, gate, nullptr, logits, n, d, e);
  ops::row_logsumexp<T>(ex, logits, l, n, e);
  ops::softmax_forward<T>(ex, logits, p, n, e);
  this->logits = logits;
  probs = p;
  lse = l;
}

template <typename T>
void SoftmaxGate<T>::backward(const Exec& ex, std::int64_t n, std::int64_t d, std::int64_t e,
                              const T* u, const T* gate, const T* dp, const T* dlse, T* du,
                              T* dgate, Arena& arena) const {
  T* dz = ops::alloc<T>(ex, arena, n * e);
  ops::softmax_lse_backward<T>(ex, probs, dp, dlse, dz, n, e);
  backward_logits(ex, n, d, e, u, gate, dz, du, dgate);
}

template <typename T>
void SoftmaxGate<T>::backward_logits(const Exec& ex, std::int64_t n, std::int64_t d, std::int64_t e,
                                     const T* u, const T* gate, const T* dz, T* du,
                                     T* dgate) const {
  ops::gemm<T>(ex, true, false, e, d, n, T(1), dz, e, u, d, T(1), dgate, d);   // dW_g += dz^T u
  ops::gemm<T>(ex, false, false, n, d, e, T(1), dz, e, gate, d, T(1), du, d);  // du += dz W_g
}

template <typename T>
ParamSpec SoftmaxGate<T>::param(std::int64_t d, std::int64_t e) {
  return {"gate.weight", {e, d}, InitSpec{InitKind::Normal, kGateInitStd}, true};
}

template <typename T>
double SoftmaxGate<T>::flops(std::int64_t n, std::int64_t d, std::int64_t e) {
  return 2.0 * static_cast<double>(n) * static_cast<double>(d) * static_cast<double>(e);
}

template std::unique_ptr<Router<float>> make_router<float>(const RouterOptions&);
template std::unique_ptr<Router<double>> make_router<double>(const RouterOptions&);
template struct SoftmaxGate<float>;
template struct SoftmaxGate<double>;

}  // namespace routemoe::layers
