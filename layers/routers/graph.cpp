// The graph-of-tokens routers (docs/model.md, "similarity" and "attention"): the softmax gate's
// probabilities p are mixed over the tokens of the same sequence, p~_b = A_b p_b, with A the
// similarity graph S = softmax(mask(u u^T / (tau sqrt d))) (similarity) or the same block's
// head-averaged attention probabilities (attention). Top-k, gates and the Switch loss use p~.
// Gradients flow into p, into S (hence u) or into the attention probabilities.
//
// Two documented readings beside that form (docs/model.md, "Graph mixing"): the mixing matrix
// alpha I + (1 - alpha) A with a self-weight alpha (0: the form above), and mixing the gate
// logits z instead of p, p~ = softmax((alpha I + (1 - alpha) A) z).

#include <cmath>

#include "framework/error.h"
#include "layers/routers/router.h"

namespace routemoe::layers {

namespace {

template <typename T>
class GraphRouter final : public Router<T> {
 public:
  explicit GraphRouter(const RouterOptions& o) : options_(o) {}

  RouterKind kind() const override { return options_.kind; }
  std::vector<ParamSpec> params(std::int64_t d, std::int64_t experts) const override {
    return {SoftmaxGate<T>::param(d, experts)};
  }
  bool needs_attention() const override { return options_.kind == RouterKind::Attention; }

  RouteOutput<T> forward(const Exec& ex, const RouterDims& dims, std::span<const T* const> w,
                         const RouterInputs<T>& in, Arena& arena) override {
    const std::int64_t N = dims.tokens(), E = dims.experts;
    dims_ = dims;
    gate_.forward(ex, N, dims.d, E, in.u, w[0], arena);
    graph_ = needs_attention() ? in.attn_avg : similarity_graph(ex, dims, in.u, arena);
    RM_CHECK(graph_ != nullptr, "attention router without attention probabilities");
    T* mixed = ops::alloc<T>(ex, arena, N * E);
    mix(ex, dims, mixed_source(), mixed);
    if (options_.graph_mix == GraphMix::Logits) ops::softmax_forward<T>(ex, mixed, mixed, N, E);
    mixed_ = mixed;
    return {mixed, mixed, gate_.lse};
  }

  void backward(const Exec& ex, const RouterDims& dims, std::span<const T* const> w,
                std::span<T* const> g, const RouterInputs<T>& in, const RouteGrads<T>& d, T* du,
                T* d_attn_avg, Arena& arena) override {
    const std::int64_t B = dims.batch, Tn = dims.seq, E = dims.experts, N = dims.tokens();
    T* dmix = ops::alloc<T>(ex, arena, N * E);  // select and probs are both p~
    ops::add<T>(ex, d.dselect, d.dprobs, dmix, N * E);
    const bool logits = options_.graph_mix == GraphMix::Logits;
    if (logits) ops::softmax_backward<T>(ex, mixed_, dmix, dmix, N, E);  // to A' z
    T* dsrc = ops::alloc<T>(ex, arena, N * E);
    T* dgraph = ops::alloc<T>(ex, arena, B * Tn * Tn);
    mix_backward(ex, dims, mixed_source(), dmix, dsrc, dgraph, arena);
    if (needs_attention()) {
      RM_CHECK(d_attn_avg != nullptr, "attention router backward without d_attn_avg");
      ops::axpy<T>(ex, T(1), dgraph, d_attn_avg, B * Tn * Tn);
    } else {
      similarity_backward(ex, dims, in.u, dgraph, du);
    }
    if (!logits) {
      gate_.backward(ex, N, dims.d, E, in.u, w[0], dsrc, d.dlse, du, g[0], arena);
      return;
    }
    // dz = dsrc + dlse * p (the z-loss is on the raw logits).
    T* dz = ops::zeros<T>(ex, arena, N * E);
    ops::softmax_lse_backward<T>(ex, gate_.probs, dz, d.dlse, dz, N, E);
    ops::add<T>(ex, dz, dsrc, dz, N * E);
    gate_.backward_logits(ex, N, dims.d, E, in.u, w[0], dz, du, g[0]);
  }

  double flops(const RouterDims& dims) const override {
    const double B = static_cast<double>(dims.batch), Tn = static_cast<double>(dims.seq);
    double f = SoftmaxGate<T>::flops(dims.tokens(), dims.d, dims.experts);
    f += 2.0 * B * Tn * Tn * static_cast<double>(dims.experts);                    // mixing
    if (!needs_attention()) f += 2.0 * B * Tn * Tn * static_cast<double>(dims.d);  // u u^T
    return f;
  }

  // The mixing matrix alpha I + (1 - alpha) A of the last forward over its B*T rows.
  std::vector<RouterDiagnostic> diagnostics(const Exec& ex) const override {
    if (graph_ == nullptr) return {};
    double s[5];
    const bool causal = needs_attention() || options_.causal;
    ops::mixing_row_stats<T>(ex, graph_, options_.self_weight, dims_.batch, dims_.seq, causal, s);
    const auto rows = static_cast<double>(dims_.tokens());
    return {{"self_weight", s[0], rows},
            {"entropy", s[1], rows},
            {"neighbours", s[2], rows},
            {"entropy_norm", s[3], s[4]}};
  }

 private:
  const T* mixed_source() const {
    return options_.graph_mix == GraphMix::Logits ? gate_.logits : gate_.probs;
  }

  // y_b = (1 - alpha) A_b x_b + alpha x_b for every sequence b (x, y [N, E]).
  void mix(const Exec& ex, const RouterDims& dims, const T* x, T* y) const {
    const std::int64_t B = dims.batch, Tn = dims.seq, E = dims.experts;
    const T alpha = static_cast<T>(options_.self_weight);
    ops::gemm_strided_batched<T>(ex, false, false, Tn, E, Tn, T(1) - alpha, graph_, Tn, Tn * Tn, x,
                                 E, Tn * E, T(0), y, E, Tn * E, B);
    if (options_.self_weight > 0) ops::axpy<T>(ex, alpha, x, y, dims.tokens() * E);
  }

  // dx_b = (1 - alpha) A_b^T dy_b + alpha dy_b (overwritten); dA_b = (1 - alpha) dy_b x_b^T
  // (overwritten).
  void mix_backward(const Exec& ex, const RouterDims& dims, const T* x, const T* dy, T* dx,
                    T* dgraph, Arena& arena) const {
    const std::int64_t B = dims.batch, Tn = dims.seq, E = dims.experts, N = dims.tokens();
    const T alpha = static_cast<T>(options_.self_weight);
    const T* dys = dy;
    if (options_.self_weight > 0) {
      T* scaled = ops::alloc<T>(ex, arena, N * E);
      ops::copy<T>(ex, dy, scaled, N * E);
      ops::scale<T>(ex, scaled, T(1) - alpha, N * E);
      dys = scaled;
    }
    ops::gemm_strided_batched<T>(ex, true, false, Tn, E, Tn, T(1), graph_, Tn, Tn * Tn, dys, E,
                                 Tn * E, T(0), dx, E, Tn * E, B);
    if (options_.self_weight > 0) ops::axpy<T>(ex, alpha, dy, dx, N * E);
    ops::gemm_strided_batched<T>(ex, false, true, Tn, Tn, E, T(1), dys, E, Tn * E, x, E, Tn * E,
                                 T(0), dgraph, Tn, Tn * Tn, B);
  }

  T inv_temperature(std::int64_t d) const {
    return static_cast<T>(1.0 / (options_.tau * std::sqrt(static_cast<double>(d))));
  }

  // S_b = softmax(mask(u_b u_b^T / (tau sqrt d))) for every sequence: [B, T, T].
  const T* similarity_graph(const Exec& ex, const RouterDims& dims, const T* u, Arena& arena) {
    const std::int64_t B = dims.batch, Tn = dims.seq, d = dims.d;
    T* s = ops::alloc<T>(ex, arena, B * Tn * Tn);
    ops::gemm_strided_batched<T>(ex, false, true, Tn, Tn, d, inv_temperature(d), u, d, Tn * d, u, d,
                                 Tn * d, T(0), s, Tn, Tn * Tn, B);
    if (options_.causal) ops::mask_future<T>(ex, s, B * Tn, Tn);
    ops::softmax_forward<T>(ex, s, s, B * Tn, Tn);
    return s;
  }

  // S = softmax(L), L = c u u^T (masked): dL = softmax_backward(dS); du += c (dL + dL^T) u.
  void similarity_backward(const Exec& ex, const RouterDims& dims, const T* u, T* dgraph,
                           T* du) const {
    const std::int64_t B = dims.batch, Tn = dims.seq, d = dims.d;
    ops::softmax_backward<T>(ex, graph_, dgraph, dgraph, B * Tn, Tn);
    const T c = inv_temperature(d);
    ops::gemm_strided_batched<T>(ex, false, false, Tn, d, Tn, c, dgraph, Tn, Tn * Tn, u, d, Tn * d,
                                 T(1), du, d, Tn * d, B);
    ops::gemm_strided_batched<T>(ex, true, false, Tn, d, Tn, c, dgraph, Tn, Tn * Tn, u, d, Tn * d,
                                 T(1), du, d, Tn * d, B);
  }

  RouterOptions options_;
  SoftmaxGate<T> gate_;
  RouterDims dims_;
  const T* graph_ = nullptr;  // [B, T, T] A of the last forward
  const T* mixed_ = nullptr;  // [N, E] p~ of the last forward
};

}  // namespace

template <typename T>
std::unique_ptr<Router<T>> make_graph_router(const RouterOptions& options) {
  return std::make_unique<GraphRouter<T>>(options);
}

template std::unique_ptr<Router<float>> make_graph_router<float>(const RouterOptions&);
template std::unique_ptr<Router<double>> make_graph_router<double>(const RouterOptions&);

}  // namespace routemoe::layers
