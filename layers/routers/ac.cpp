// The Adaptive Clustering router (docs/model.md, "ac"): features are scaled per expert by the
// inverse dispersion of the tokens the previous MoE layer sent to that expert, M_i = w_{c_i};
// scores s = (u ⊙ M) ê^T against unit expert embeddings ê; top-k on s, gates = softmax over the
// chosen scores, routing probabilities softmax(s). M carries no gradient.
//
// With ac_fixed_norm = r > 0 (the authors' gate), constrain() rescales every embedding row to
// norm r in place before each forward, and the embeddings are exempt from weight decay; the
// scores are unchanged (they use ê), the gradient reaching e is then (I - ê ê^T) dê / r.

#include <vector>

#include "comm/communicator.h"
#include "framework/error.h"
#include "layers/routers/router.h"

namespace routemoe::layers {

namespace {

template <typename T>
class AcRouter final : public Router<T> {
 public:
  explicit AcRouter(const RouterOptions& o) : fixed_norm_(o.ac_fixed_norm) {}

  RouterKind kind() const override { return RouterKind::AC; }
  std::vector<ParamSpec> params(std::int64_t d, std::int64_t experts) const override {
    return {{"expert_emb",
             {experts, d},
             InitSpec{InitKind::Orthogonal, kAcEmbeddingGain},
             fixed_norm_ <= 0}};
  }

  // e_j <- r e_j / |e_j| in place (fixed norm r only).
  void constrain(const Exec& ex, const RouterDims& dims, std::span<T* const> w,
                 Arena& arena) override {
    if (fixed_norm_ <= 0) return;
    T* norm = ops::alloc<T>(ex, arena, dims.experts);
    ops::row_normalize<T>(ex, w[0], w[0], norm, dims.experts, dims.d);
    ops::scale<T>(ex, w[0], static_cast<T>(fixed_norm_), dims.experts * dims.d);
  }
  bool needs_previous_assignment() const override { return true; }
  ops::GateRule gate_rule() const override { return ops::GateRule::SoftmaxOfChosen; }

  RouteOutput<T> forward(const Exec& ex, const RouterDims& dims, std::span<const T* const> w,
                         const RouterInputs<T>& in, Arena& arena) override {
    const std::int64_t N = dims.tokens(), d = dims.d, E = dims.experts;
    RM_CHECK(in.prev_top1 != nullptr || in.ac_scale != nullptr,
             "ac router needs the previous layer's assignment");
    T* m = ops::alloc<T>(ex, arena, N * d);
    expert_ = {};
    if (in.ac_scale != nullptr) {
      ops::copy<T>(ex, in.ac_scale, m, N * d);
    } else {
      ac_feature_weights<T>(ex, dims, in.u, in.prev_top1, m, arena, &expert_, in.stats);
    }
    T* scaled = ops::alloc<T>(ex, arena, N * d);
    ops::mul<T>(ex, in.u, m, scaled, N * d);
    T* unit = ops::alloc<T>(ex, arena, E * d);
    T* norm = ops::alloc<T>(ex, arena, E);
    ops::row_normalize<T>(ex, w[0], unit, norm, E, d);
    T* s = ops::alloc<T>(ex, arena, N * E);
    T* lse = ops::alloc<T>(ex, arena, N);
    T* probs = ops::alloc<T>(ex, arena, N * E);
    ops::linear_forward<T>(ex, scaled, unit, nullptr, s, N, d, E);  // s = (u ⊙ M) ê^T
    ops::row_logsumexp<T>(ex, s, lse, N, E);
    ops::softmax_forward<T>(ex, s, probs, N, E);
    scale_ = m;
    scaled_ = scaled;
    unit_ = unit;
    norm_ = norm;
    probs_ = probs;
    return {s, probs, lse};
  }

  void backward(const Exec& ex, const RouterDims& dims, std::span<const T* const> /*w*/,
                std::span<T* const> g, const RouterInputs<T>& /*in*/, const RouteGrads<T>& d, T* du,
                T* /*d_attn_avg*/, Arena& arena) override {
    const std::int64_t N = dims.tokens(), D = dims.d, E = dims.experts;
    // s -> (select, probs = softmax(s), lse(s)).
    T* ds = ops::alloc<T>(ex, arena, N * E);
    ops::softmax_lse_backward<T>(ex, probs_, d.dprobs, d.dlse, ds, N, E);
    ops::add<T>(ex, d.dselect, ds, ds, N * E);
    // s = (u ⊙ M) ê^T: du += (ds ê) ⊙ M; dê = ds^T (u ⊙ M), then through ê = e / |e|.
    T* dscaled = ops::alloc<T>(ex, arena, N * D);
    ops::gemm<T>(ex, false, false, N, D, E, T(1), ds, E, unit_, D, T(0), dscaled, D);
    ops::mul<T>(ex, dscaled, scale_, dscaled, N * D);
    ops::add<T>(ex, du, dscaled, du, N * D);
    T* dunit = ops::alloc<T>(ex, arena, E * D);
    ops::gemm<T>(ex, true, false, E, D, N, T(1), ds, E, scaled_, D, T(0), dunit, D);
    ops::row_normalize_backward<T>(ex, unit_, norm_, dunit, g[0], E, D);
  }

  // The score GEMM; the statistics and scaling are elementwise (not counted, as elsewhere).
  double flops(const RouterDims& dims) const override {
    return 2.0 * static_cast<double>(dims.tokens()) * static_cast<double>(dims.d) *
           static_cast<double>(dims.experts);
  }

  const T* feature_weights() const override { return scale_; }
  AcExpertWeights<T> expert_weights() const override { return expert_; }

 private:
  const T* scale_ = nullptr;   // [N, d] M
  const T* scaled_ = nullptr;  // [N, d] u ⊙ M
  const T* unit_ = nullptr;    // [E, d] ê
  const T* norm_ = nullptr;    // [E] |e|
  const T* probs_ = nullptr;   // [N, E] softmax(s)
  double fixed_norm_ = 0.0;    // > 0: constrain() keeps |e_j| = fixed_norm_
  AcExpertWeights<T> expert_;  // w [E, d] and token counts [E] (null with fixed ac_scale)
};

// Sums over every rank of `stats`, added in global sequence order: part[S, width] holds this
// rank's per-sequence sums; out[width] (overwritten) = sum over all ranks' rows, rank-major.
void add_in_sequence_order(const Exec& ex, comm::Communicator& stats, const double* part,
                           std::int64_t sequences, std::int64_t width, double* out, Arena& arena) {
  const std::int64_t W = stats.size();
  // The gather runs on host buffers when the communicator's device is not the Exec's.
  std::vector<double> host_part, host_all;
  double* all = ops::alloc<double>(ex, arena, W * sequences * width);
  if (stats.device() == ex.device) {
    stats.all_gather(part, all, sequences * width, comm::DataType::F64);
  } else {
    host_part.resize(static_cast<std::size_t>(sequences * width));
    host_all.resize(static_cast<std::size_t>(W * sequences * width));
    ops::to_host<double>(ex, part, host_part.data(), sequences * width);
    stats.all_gather(host_part.data(), host_all.data(), sequences * width, comm::DataType::F64);
    ops::to_device<double>(ex, host_all.data(), all, W * sequences * width);
  }
  ops::fill<double>(ex, out, 0.0, width);
  for (std::int64_t s = 0; s < W * sequences; ++s)
    ops::axpy<double>(ex, 1.0, all + s * width, out, width);
}

}  // namespace

template <typename T>
void ac_feature_weights(const Exec& ex, const RouterDims& dims, const T* u,
                        const std::int32_t* prev, T* m, Arena& arena, AcExpertWeights<T>* stats,
                        comm::Communicator* group) {
  const std::int64_t N = dims.tokens(), d = dims.d, E = dims.experts;
  double* sum = ops::zeros<double>(ex, arena, E * d);
  double* count = ops::zeros<double>(ex, arena, E);
  double* absdev = ops::zeros<double>(ex, arena, E * d);
  T* w = ops::alloc<T>(ex, arena, E * d);
  if (group == nullptr) {
    ops::ac_expert_sums<T>(ex, u, prev, sum, count, N, d, E);
    ops::ac_expert_absdev<T>(ex, u, prev, sum, count, absdev, N, d, E);
  } else {
    // Per-sequence partial sums, added over all ranks in sequence order (two passes: the mean
    // absolute deviation needs the global means).
    const std::int64_t B = dims.batch, Tn = dims.seq;
    RM_CHECK(comm::all_reduce_value<std::int64_t>(*group, B, comm::ReduceOp::Max) ==
                 comm::all_reduce_value<std::int64_t>(*group, B, comm::ReduceOp::Min),
             "ac statistics over ranks need the same number of sequences on every rank");
    double* part_sum = ops::zeros<double>(ex, arena, B * E * d);
    double* part_count = ops::zeros<double>(ex, arena, B * E);
    for (std::int64_t b = 0; b < B; ++b) {
      ops::ac_expert_sums<T>(ex, u + b * Tn * d, prev + b * Tn, part_sum + b * E * d,
                             part_count + b * E, Tn, d, E);
    }
    add_in_sequence_order(ex, *group, part_sum, B, E * d, sum, arena);
    add_in_sequence_order(ex, *group, part_count, B, E, count, arena);
    double* part_dev = ops::zeros<double>(ex, arena, B * E * d);
    for (std::int64_t b = 0; b < B; ++b) {
      ops::ac_expert_absdev<T>(ex, u + b * Tn * d, prev + b * Tn, sum, count, part_dev + b * E * d,
                               Tn, d, E);
    }
    add_in_sequence_order(ex, *group, part_dev, B, E * d, absdev, arena);
  }
  ops::ac_expert_weights<T>(ex, absdev, count, w, d, E, kAcEpsilon, kAcClipFactor);
  ops::gather_rows_forward<T>(ex, w, prev, m, N, E, d);
  if (stats != nullptr) *stats = {w, count};
}

template <typename T>
std::unique_ptr<Router<T>> make_ac_router(const RouterOptions& options) {
  return std::make_unique<AcRouter<T>>(options);
}

template void ac_feature_weights<float>(const Exec&, const RouterDims&, const float*,
                                        const std::int32_t*, float*, Arena&,
                                        AcExpertWeights<float>*, comm::Communicator*);
template void ac_feature_weights<double>(const Exec&, const RouterDims&, const double*,
                                         const std::int32_t*, double*, Arena&,
                                         AcExpertWeights<double>*, comm::Communicator*);
template std::unique_ptr<Router<float>> make_ac_router<float>(const RouterOptions&);
template std::unique_ptr<Router<double>> make_ac_router<double>(const RouterOptions&);

}  // namespace routemoe::layers
