#pragma once
// The MoE layer as named stages (docs/architecture.md, "One training step"):
//
//   forward:  route -> select_and_gate -> aux_losses -> capacity -> slot_plan -> dispatch
//             -> experts -> combine
// (with expert parallelism the exchange to the owners and back is overlapped with the experts'
// computation, expert by expert, inside `experts`; MoeDims::overlap_exchange)
//   backward: combine_backward -> dispatch (gradients out) -> experts_backward -> combine
//             (gradients back) -> gates_backward -> aux_backward -> router backward
//
// The router (layers/routers/) is the only part that differs between routers; everything after
// it — top-k, gates, the Switch and z-losses, capacity, the slot plan, the expert exchange, the
// grouped expert GEMMs and the weighted combine — is the same code for every router.
//
// Templated on the element type: float is what the model runs; double runs the same code for
// gradient checks by finite differences. All work goes through the device seam (framework/ops.h);
// scratch and saved activations come from an Arena (valid until it resets).

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "framework/arena.h"
#include "framework/exec.h"
#include "framework/timer.h"
#include "layers/dispatch.h"
#include "layers/routers/router.h"

namespace routemoe::layers {

struct MoeDims {
  std::int64_t batch = 1;        // B sequences
  std::int64_t seq = 1;          // T tokens per sequence; N = B*T rows in (b, t) order
  std::int64_t d = 1;            // d_model
  std::int64_t d_ff = 1;         // expert hidden width
  std::int64_t experts = 1;      // E
  std::int64_t top_k = 1;        // k
  double capacity_factor = 0.0;  // <= 0: dropless
  // With expert parallelism over messages: overlap the exchange with the experts' computation,
  // expert by expert (layers/dispatch.h, exchange_overlapped); false: one blocking exchange
  // each way around all experts. When the ep communicator exchanges through shared memory (its
  // ranks on one node, Communicator::shared_memory) the exchange is a copy by the CPU that
  // nothing could overlap, so it is always one blocking exchange each way around all experts
  // (one grouped call for the local experts). The results are the same.
  bool overlap_exchange = true;
  std::int64_t tokens() const { return batch * seq; }
  RouterDims router() const { return {batch, seq, d, experts}; }
};

// Coefficients of the layer's auxiliary losses in the objective (already multiplied by the
// micro-batch's gradient scale in the backward).
struct MoeLossCoefs {
  double aux = 0.01;  // Switch load-balancing loss
  double z = 0.0;     // router z-loss
};

// Parameters: the router's (in Router::params order) and the local experts' [E_local, ...].
template <typename T>
struct MoeWeights {
  std::vector<const T*> router;
  const T* w1 = nullptr;  // [E_local, d_ff, d]
  const T* b1 = nullptr;  // [E_local, d_ff]
  const T* w2 = nullptr;  // [E_local, d, d_ff]
  const T* b2 = nullptr;  // [E_local, d]
};

// Gradient buffers of the same parameters, accumulated into (+=).
template <typename T>
struct MoeGrads {
  std::vector<T*> router;
  T* w1 = nullptr;
  T* b1 = nullptr;
  T* w2 = nullptr;
  T* b2 = nullptr;
};

// Routing decision: top-k choices, gates, first choices.
template <typename T>
struct Selection {
  std::int32_t* choice = nullptr;  // [N, k] chosen experts, best first
  T* gates = nullptr;              // [N, k]
  std::int32_t* top1 = nullptr;    // [N] first choice (next AC layer, loads, f_e)
};

// The auxiliary losses of the layer (raw values, before their coefficients).
template <typename T>
struct AuxLosses {
  T* top1_frac = nullptr;    // [E] f_e
  double switch_loss = 0.0;  // E * sum_e f_e P_e
  double z_loss = 0.0;       // mean_i lse_i^2
};

// Kept slots grouped by global expert, tokens in order within an expert.
template <typename T>
struct SlotPlan {
  std::uint8_t* kept = nullptr;           // [N, k] slot survived the capacity limit
  std::int64_t* counts = nullptr;         // [E] kept slots per expert (host)
  std::int64_t* expert_offset = nullptr;  // [E + 1] first slot of each expert (host)
  std::int64_t slots = 0;                 // S
  std::int64_t dropped = 0;               // slots dropped by the capacity limit
  std::int32_t* slot_token = nullptr;     // [S]
  std::int32_t* slot_pos = nullptr;       // [S] i * k + j
  T* slot_gate = nullptr;                 // [S]
};

// Expert-side activations. Rows in slot order [S, d] on the token side; expert-major [R, ...]
// on the owner (the same memory without expert parallelism).
template <typename T>
struct ExpertActivations {
  T* x_in = nullptr;    // [S, d] expert inputs in slot order
  T* y_out = nullptr;   // [S, d] expert outputs in slot order
  T* ex_in = nullptr;   // [R, d]
  T* h_pre = nullptr;   // [R, d_ff] before GELU (the backward recomputes the GELU from it)
  T* ex_out = nullptr;  // [R, d]
};

template <typename T>
class MoeLayer {
 public:
  // `ep`: the expert-parallel group (null or size 1: all experts local); the layer's calls are
  // collective over it.
  MoeLayer(const RouterOptions& router, comm::Communicator* ep);
  MoeLayer(const MoeLayer&) = delete;
  MoeLayer& operator=(const MoeLayer&) = delete;

  // Phases of the layer's work go to `timers` (framework/timer.h) from now on; null (the
  // default) turns the profile off.
  void set_timers(TimerSet* timers) { timers_ = timers; }

  Router<T>& router() { return *router_; }
  const Router<T>& router() const { return *router_; }
  // Expert parameters (names relative to the layer) with their global shapes [E, ...]: fc and
  // proj weights initialised by `fc_init` and `proj_init`, biases zero and without decay.
  static std::vector<ParamSpec> expert_params(std::int64_t d, std::int64_t d_ff,
                                              std::int64_t experts, InitSpec fc_init,
                                              InitSpec proj_init);

  // y[N, d] = MoE(u[N, d]) (overwritten).
  void forward(const Exec& ex, const MoeDims& dims, const MoeWeights<T>& w,
               const RouterInputs<T>& in, T* y, Arena& arena);
  // Backward of y and of coef.aux * switch + coef.z * z: du[N, d] overwritten;
  // d_attn_avg [B, T, T] += (attention router; may be null otherwise); parameter gradients +=.
  void backward(const Exec& ex, const MoeWeights<T>& w, const MoeGrads<T>& g,
                const RouterInputs<T>& in, const MoeLossCoefs& coef, const T* dy, T* du,
                T* d_attn_avg, Arena& arena);

  // What the last forward decided (arena memory).
  const RouteOutput<T>& route() const { return route_; }
  const Selection<T>& selection() const { return sel_; }
  const AuxLosses<T>& aux() const { return aux_; }
  const SlotPlan<T>& slots() const { return slots_; }

 private:
  // Whether an exchange with the current plan overlaps the experts (MoeDims::overlap_exchange).
  bool overlaps() const;
  void select_and_gate(const Exec& ex, Arena& arena);
  void aux_losses(const Exec& ex, Arena& arena);
  void capacity(const Exec& ex, Arena& arena);
  void slot_plan(const Exec& ex, Arena& arena);
  void dispatch(const Exec& ex, const T* u, Arena& arena);
  void experts(const Exec& ex, const MoeWeights<T>& w, Arena& arena);
  void combine(const Exec& ex, T* y, Arena& arena);
  void overlapped(const T* slot_in, T* owner_in, T* owner_out, T* slot_out, double flops,
                  const std::function<void(std::int64_t)>& expert);
  // Backward stages; each returns the gradient it produces (arena memory).
  T* combine_backward(const Exec& ex, const T* dy, T* dslot_gate, Arena& arena);
  T* experts_backward(const Exec& ex, const MoeWeights<T>& w, const MoeGrads<T>& g, const T* dy_out,
                      Arena& arena);
  T* gates_backward(const Exec& ex, const T* dslot_gate, Arena& arena);
  RouteGrads<T> aux_backward(const Exec& ex, const MoeLossCoefs& coef, const T* dselect,
                             Arena& arena);

  std::unique_ptr<Router<T>> router_;
  comm::Communicator* ep_ = nullptr;
  TimerSet* timers_ = nullptr;
  MoeDims dims_;
  RouteOutput<T> route_;
  Selection<T> sel_;
  AuxLosses<T> aux_;
  SlotPlan<T> slots_;
  DispatchPlan plan_;
  bool overlap_ = false;  // the forward's choice, made in dispatch (overlaps())
  ExpertActivations<T> act_;
};

}  // namespace routemoe::layers
