// The softmax top-k router (the SMoE baseline): p = softmax(u W_g^T); top-k and the renormalised
// gates are taken on p itself (docs/model.md, "topk").

#include "layers/routers/router.h"

namespace routemoe::layers {

namespace {

template <typename T>
class TopkRouter final : public Router<T> {
 public:
  RouterKind kind() const override { return RouterKind::TopK; }
  std::vector<ParamSpec> params(std::int64_t d, std::int64_t experts) const override {
    return {SoftmaxGate<T>::param(d, experts)};
  }

  RouteOutput<T> forward(const Exec& ex, const RouterDims& dims, std::span<const T* const> w,
                         const RouterInputs<T>& in, Arena& arena) override {
    gate_.forward(ex, dims.tokens(), dims.d, dims.experts, in.u, w[0], arena);
    return {gate_.probs, gate_.probs, gate_.lse};
  }

  void backward(const Exec& ex, const RouterDims& dims, std::span<const T* const> w,
                std::span<T* const> g, const RouterInputs<T>& in, const RouteGrads<T>& d, T* du,
                T* /*d_attn_avg*/, Arena& arena) override {
    const std::int64_t N = dims.tokens(), E = dims.experts;
    T* dp = ops::alloc<T>(ex, arena, N * E);  // select and probs are both p
    ops::add<T>(ex, d.dselect, d.dprobs, dp, N * E);
    gate_.backward(ex, N, dims.d, E, in.u, w[0], dp, d.dlse, du, g[0], arena);
  }

  double flops(const RouterDims& dims) const override {
    return SoftmaxGate<T>::flops(dims.tokens(), dims.d, dims.experts);
  }

 private:
  SoftmaxGate<T> gate_;
};

}  // namespace

template <typename T>
std::unique_ptr<Router<T>> make_topk_router(const RouterOptions& /*options*/) {
  return std::make_unique<TopkRouter<T>>();
}

template std::unique_ptr<Router<float>> make_topk_router<float>(const RouterOptions&);
template std::unique_ptr<Router<double>> make_topk_router<double>(const RouterOptions&);

}  // namespace routemoe::layers
