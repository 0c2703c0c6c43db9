#include "layers/moe.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "framework/error.h"
#include "framework/ops.h"

namespace routemoe::layers {

namespace {

// p + i, or null for a null p (optional bias arrays).
template <typename P>
P* at(P* p, std::int64_t i) {
  return p != nullptr ? p + i : nullptr;
}

}  // namespace

template <typename T>
MoeLayer<T>::MoeLayer(const RouterOptions& router, comm::Communicator* ep)
    : router_(make_router<T>(router)), ep_(ep) {}

template <typename T>
std::vector<ParamSpec> MoeLayer<T>::expert_params(std::int64_t d, std::int64_t d_ff,
                                                  std::int64_t experts, InitSpec fc_init,
                                                  InitSpec proj_init) {
  const InitSpec zeros{InitKind::Zeros, 0.0f};
  return {{"experts.fc.weight", {experts, d_ff, d}, fc_init, true},
          {"experts.fc.bias", {experts, d_ff}, zeros, false},
          {"experts.proj.weight", {experts, d, d_ff}, proj_init, true},
          {"experts.proj.bias", {experts, d}, zeros, false}};
}

// ----------------------------------------------------------------------------------------------
// Forward

template <typename T>
void MoeLayer<T>::forward(const Exec& ex, const MoeDims& dims, const MoeWeights<T>& w,
                          const RouterInputs<T>& in, T* y, Arena& arena) {
  RM_CHECK(dims.top_k >= 1 && dims.top_k <= dims.experts,
           fmt::format("top_k {} with {} experts", dims.top_k, dims.experts));
  dims_ = dims;
  {
    Phase ph(timers_, phase::kRouter, router_->flops(dims.router()));
    route_ = router_->forward(ex, dims.router(), w.router, in, arena);
  }
  {
    Phase ph(timers_, phase::kGates);
    select_and_gate(ex, arena);
    aux_losses(ex, arena);
  }
  {
    Phase ph(timers_, phase::kSlots);
    capacity(ex, arena);
    slot_plan(ex, arena);
  }
  dispatch(ex, in.u, arena);
  experts(ex, w, arena);
  combine(ex, y, arena);
}

// Top-k on the router's selection scores; gates by the router's rule.
template <typename T>
void MoeLayer<T>::select_and_gate(const Exec& ex, Arena& arena) {
  const std::int64_t N = dims_.tokens(), E = dims_.experts, K = dims_.top_k;
  sel_.choice = ops::alloc<std::int32_t>(ex, arena, N * K);
  sel_.gates = ops::alloc<T>(ex, arena, N * K);
  sel_.top1 = ops::alloc<std::int32_t>(ex, arena, N);
  ops::topk_rows<T>(ex, route_.select, sel_.choice, N, E, K);
  ops::topk_gates_forward<T>(ex, route_.select, sel_.choice, sel_.gates, sel_.top1, N, E, K,
                             router_->gate_rule());
}

// Switch loss on the router's routing probabilities, z-loss on its log-sum-exps.
template <typename T>
void MoeLayer<T>::aux_losses(const Exec& ex, Arena& arena) {
  const std::int64_t N = dims_.tokens(), E = dims_.experts;
  aux_.top1_frac = ops::alloc<T>(ex, arena, E);
  ops::top1_fraction<T>(ex, sel_.top1, aux_.top1_frac, N, E);
  aux_.switch_loss = ops::switch_loss<T>(ex, aux_.top1_frac, route_.probs, N, E);
  aux_.z_loss = ops::mean_square<T>(ex, route_.lse, N);
}

// Capacity C > 0: ceil(C * N * k / E) slots per expert, first choices of all tokens first.
template <typename T>
void MoeLayer<T>::capacity(const Exec& ex, Arena& arena) {
  const std::int64_t N = dims_.tokens(), E = dims_.experts, K = dims_.top_k;
  const std::int64_t cap =
      dims_.capacity_factor > 0
          ? static_cast<std::int64_t>(std::ceil(dims_.capacity_factor * static_cast<double>(N * K) /
                                                static_cast<double>(E)))
          : -1;
  slots_.kept = ops::alloc<std::uint8_t>(ex, arena, N * K);
  slots_.counts = alloc_array<std::int64_t>(arena, E);  // host: sizes the slot arrays
  slots_.dropped = ops::capacity_keep(ex, sel_.choice, slots_.kept, slots_.counts, N, E, K, cap);
}

// Slots grouped by expert, tokens in order within an expert.
template <typename T>
void MoeLayer<T>::slot_plan(const Exec& ex, Arena& arena) {
  const std::int64_t N = dims_.tokens(), E = dims_.experts, K = dims_.top_k;
  slots_.expert_offset = alloc_array<std::int64_t>(arena, E + 1);
  ops::expert_offsets(ex, slots_.counts, slots_.expert_offset, E);
  const std::int64_t S = slots_.slots = slots_.expert_offset[E];
  slots_.slot_token = ops::alloc<std::int32_t>(ex, arena, S);
  slots_.slot_pos = ops::alloc<std::int32_t>(ex, arena, S);
  slots_.slot_gate = ops::alloc<T>(ex, arena, S);
  ops::slot_plan<T>(ex, sel_.choice, slots_.kept, sel_.gates, slots_.expert_offset,
                    slots_.slot_token, slots_.slot_pos, slots_.slot_gate, N, E, K);
}

template <typename T>
bool MoeLayer<T>::overlaps() const {
  return plan_.exchanges() && dims_.overlap_exchange && !ep_->shared_memory();
}

// Permutation into slot order and the dispatch plan; without overlap, the exchange to the
// experts' owners.
template <typename T>
void MoeLayer<T>::dispatch(const Exec& ex, const T* u, Arena& arena) {
  const std::int64_t N = dims_.tokens(), d = dims_.d, S = slots_.slots;
  act_.x_in = ops::alloc<T>(ex, arena, S * d);
  {
    Phase ph(timers_, phase::kSlots, 0.0, 2.0 * static_cast<double>(S * d * sizeof(T)));
    ops::gather_rows_forward<T>(ex, u, slots_.slot_token, act_.x_in, S, N, d);
  }
  Phase ph(timers_, phase::kExchange);
  plan_ = plan_dispatch(slots_.expert_offset, dims_.experts, d, ep_, arena);
  overlap_ = overlaps();  // latched: a fallback to messages inside this forward changes nothing
  act_.ex_in = act_.x_in;
  act_.y_out = nullptr;
  if (plan_.exchanges()) {
    act_.ex_in = ops::alloc<T>(ex, arena, plan_.owner_rows * d);
    if (!overlap_) dispatch_rows<T>(plan_, *ep_, act_.x_in, act_.ex_in);
  }
}

// The local experts over their contiguous row blocks: fc -> GELU -> proj (one fused call). With
// expert parallelism and overlap, expert by expert as their rows arrive, each one's outputs
// going back while the next computes (exchange_overlapped).
template <typename T>
void MoeLayer<T>::experts(const Exec& ex, const MoeWeights<T>& w, Arena& arena) {
  const std::int64_t d = dims_.d, F = dims_.d_ff, R = plan_.owner_rows, L = plan_.local_experts;
  act_.h_pre = ops::alloc<T>(ex, arena, R * F);
  act_.ex_out = ops::alloc<T>(ex, arena, R * d);
  const double flops =
      4.0 * static_cast<double>(R) * static_cast<double>(d) * static_cast<double>(F);
  if (!overlap_) {
    Phase ph(timers_, phase::kExperts, flops);
    ops::grouped_ffn_forward<T>(ex, act_.ex_in, w.w1, w.b1, w.w2, w.b2, act_.h_pre, act_.ex_out,
                                plan_.local_offset, L, d, F);
    return;
  }
  act_.y_out = ops::alloc<T>(ex, arena, slots_.slots * d);
  const auto expert = [&](std::int64_t l) {
    ops::grouped_ffn_forward<T>(ex, act_.ex_in, w.w1 + l * F * d, at(w.b1, l * F), w.w2 + l * d * F,
                                at(w.b2, l * d), act_.h_pre, act_.ex_out, plan_.local_offset + l, 1,
                                d, F);
  };
  overlapped(act_.x_in, act_.ex_in, act_.ex_out, act_.y_out, flops, expert);
}

// exchange_overlapped with its time split between the experts' phase (the computation) and the
// exchange's (the rest: posting, waiting, the transfers the computation did not hide).
template <typename T>
void MoeLayer<T>::overlapped(const T* slot_in, T* owner_in, T* owner_out, T* slot_out, double flops,
                             const std::function<void(std::int64_t)>& expert) {
  Timer wall;
  const double compute_s =
      exchange_overlapped<T>(plan_, *ep_, slot_in, owner_in, owner_out, slot_out, expert);
  if (timers_ != nullptr) {
    timers_->add(phase::kExperts, compute_s, flops);
    timers_->add(phase::kExchange, wall.seconds() - compute_s);
  }
}

// The exchange back to slot order (unless the experts' stage overlapped it), then
// y[token] += gate * expert output.
template <typename T>
void MoeLayer<T>::combine(const Exec& ex, T* y, Arena& arena) {
  const std::int64_t N = dims_.tokens(), d = dims_.d, S = slots_.slots;
  if (!plan_.exchanges()) {
    act_.y_out = act_.ex_out;
  } else if (act_.y_out == nullptr) {
    Phase ph(timers_, phase::kExchange);
    act_.y_out = ops::alloc<T>(ex, arena, S * d);
    combine_rows<T>(plan_, *ep_, act_.ex_out, act_.y_out);
  }
  Phase ph(timers_, phase::kSlots, 0.0, static_cast<double>((S + 2 * N) * d * sizeof(T)));
  ops::fill<T>(ex, y, T(0), N * d);
  ops::scatter_add_rows_forward<T>(ex, act_.y_out, slots_.slot_token, slots_.slot_gate, y, S, N, d);
}

// ----------------------------------------------------------------------------------------------
// Backward

template <typename T>
void MoeLayer<T>::backward(const Exec& ex, const MoeWeights<T>& w, const MoeGrads<T>& g,
                           const RouterInputs<T>& in, const MoeLossCoefs& coef, const T* dy, T* du,
                           T* d_attn_avg, Arena& arena) {
  const std::int64_t N = dims_.tokens(), d = dims_.d, S = slots_.slots;
  // Everything the backward allocates is scratch (its results go to du, d_attn_avg and the
  // parameter gradients): released at the end, so the blocks' backwards reuse one region.
  const Arena::Mark scratch = arena.mark();
  T* dslot_gate = ops::alloc<T>(ex, arena, S);
  const T* dy_out = combine_backward(ex, dy, dslot_gate, arena);
  const T* dx_in = experts_backward(ex, w, g, dy_out, arena);
  {
    Phase ph(timers_, phase::kSlots, 0.0, static_cast<double>((S + 2 * N) * d * sizeof(T)));
    ops::fill<T>(ex, du, T(0), N * d);
    ops::gather_rows_backward<T>(ex, dx_in, slots_.slot_token, du, S, N, d);
  }
  RouteGrads<T> dr;
  {
    Phase ph(timers_, phase::kGates);
    const T* dselect = gates_backward(ex, dslot_gate, arena);
    dr = aux_backward(ex, coef, dselect, arena);
  }
  {
    Phase ph(timers_, phase::kRouter, 2.0 * router_->flops(dims_.router()));
    router_->backward(ex, dims_.router(), w.router, g.router, in, dr, du, d_attn_avg, arena);
  }
  arena.rewind(scratch);
}

// d y_out[s] = gate_s * dy[token_s]; d gate_s = <dy[token_s], y_out[s]>.
template <typename T>
T* MoeLayer<T>::combine_backward(const Exec& ex, const T* dy, T* dslot_gate, Arena& arena) {
  const std::int64_t N = dims_.tokens(), d = dims_.d, S = slots_.slots;
  T* dy_out = ops::alloc<T>(ex, arena, S * d);
  Phase ph(timers_, phase::kSlots, 0.0, static_cast<double>(3 * S * d * sizeof(T)));
  ops::scatter_add_rows_backward<T>(ex, dy, slots_.slot_token, act_.y_out, slots_.slot_gate, dy_out,
                                    dslot_gate, S, N, d);
  return dy_out;
}

// Output gradients to the owners, the experts' backward there, input gradients back (with
// expert parallelism and overlap, expert by expert as in the forward).
template <typename T>
T* MoeLayer<T>::experts_backward(const Exec& ex, const MoeWeights<T>& w, const MoeGrads<T>& g,
                                 const T* dy_out, Arena& arena) {
  const std::int64_t d = dims_.d, F = dims_.d_ff, R = plan_.owner_rows, L = plan_.local_experts;
  const double flops =
      8.0 * static_cast<double>(R) * static_cast<double>(d) * static_cast<double>(F);
  if (overlaps()) {
    T* dex_out = ops::alloc<T>(ex, arena, R * d);
    T* dex_in = ops::alloc<T>(ex, arena, R * d);
    T* dx_in = ops::alloc<T>(ex, arena, slots_.slots * d);
    const auto expert = [&](std::int64_t l) {
      ops::grouped_ffn_backward<T>(ex, dex_out, act_.ex_in, act_.h_pre, w.w1 + l * F * d,
                                   w.w2 + l * d * F, dex_in, g.w1 + l * F * d, at(g.b1, l * F),
                                   g.w2 + l * d * F, at(g.b2, l * d), plan_.local_offset + l, 1, d,
                                   F);
    };
    overlapped(dy_out, dex_out, dex_in, dx_in, flops, expert);
    return dx_in;
  }
  const T* dex_out = dy_out;
  if (plan_.exchanges()) {
    Phase ph(timers_, phase::kExchange);
    T* recv = ops::alloc<T>(ex, arena, R * d);
    dispatch_rows<T>(plan_, *ep_, dy_out, recv);
    dex_out = recv;
  }
  T* dex_in = ops::alloc<T>(ex, arena, R * d);
  {
    Phase ph(timers_, phase::kExperts, flops);
    ops::grouped_ffn_backward<T>(ex, dex_out, act_.ex_in, act_.h_pre, w.w1, w.w2, dex_in, g.w1,
                                 g.b1, g.w2, g.b2, plan_.local_offset, L, d, F);
  }
  if (!plan_.exchanges()) return dex_in;
  Phase ph(timers_, phase::kExchange);
  T* dx_in = ops::alloc<T>(ex, arena, slots_.slots * d);
  combine_rows<T>(plan_, *ep_, dex_in, dx_in);
  return dx_in;
}

// Slot gate gradients back to [N, k] (dropped slots keep zero), then to the selection scores.
template <typename T>
T* MoeLayer<T>::gates_backward(const Exec& ex, const T* dslot_gate, Arena& arena) {
  const std::int64_t N = dims_.tokens(), E = dims_.experts, K = dims_.top_k, S = slots_.slots;
  T* dgates = ops::zeros<T>(ex, arena, N * K);
  ops::scatter_add_rows_forward<T>(ex, dslot_gate, slots_.slot_pos, nullptr, dgates, S, N * K, 1);
  T* dselect = ops::alloc<T>(ex, arena, N * E);
  ops::topk_gates_backward<T>(ex, route_.select, sel_.choice, sel_.gates, dgates, dselect, N, E, K,
                              router_->gate_rule());
  return dselect;
}

// d(aux * switch)/dr_ie = aux * E / N * f_e; d(z * mean lse^2)/dlse_i = 2 z / N * lse_i.
template <typename T>
RouteGrads<T> MoeLayer<T>::aux_backward(const Exec& ex, const MoeLossCoefs& coef, const T* dselect,
                                        Arena& arena) {
  const std::int64_t N = dims_.tokens(), E = dims_.experts;
  const double n = static_cast<double>(std::max<std::int64_t>(N, 1));
  T* dprobs = ops::alloc<T>(ex, arena, N * E);
  ops::broadcast_row<T>(ex, aux_.top1_frac, coef.aux * static_cast<double>(E) / n, dprobs, N, E);
  T* dlse = ops::alloc<T>(ex, arena, N);
  ops::copy<T>(ex, route_.lse, dlse, N);
  ops::scale<T>(ex, dlse, static_cast<T>(coef.z * 2.0 / n), N);
  return {dselect, dprobs, dlse};
}

template class MoeLayer<float>;
template class MoeLayer<double>;

}  // namespace routemoe::layers
