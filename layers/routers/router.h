#pragma once
// The router interface: every router family (topk.cpp, graph.cpp, ac.cpp in this folder) turns
// the MoE layer's input u into the scores top-k selects on, the routing probabilities the
// load-balancing loss averages, and the log-sum-exp of its logits (z-loss), and takes their
// gradients back. The MoE layer (layers/moe.h) owns everything after that: top-k, gates, the
// auxiliary losses, capacity, dispatch, experts, combine. docs/model.md gives each router's
// equations; docs/architecture.md the recipe for adding one.
//
// A Router object belongs to one MoE layer and keeps what its last forward saved for the
// backward and for diagnostics() (arena memory, valid until the arena resets). Templated on the
// element type: float is what the model runs, double runs the same code for gradient checks. All
// work goes through the device seam (framework/ops.h).

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "framework/arena.h"
#include "framework/exec.h"
#include "framework/model_config.h"
#include "framework/ops.h"
#include "framework/params.h"

namespace routemoe::comm {
class Communicator;
}

namespace routemoe::layers {

// Constants that docs/model.md names.
inline constexpr double kAcEpsilon = 1e-4;        // w_e = 1 / (MAD_e + kAcEpsilon)
inline constexpr double kAcClipFactor = 10.0;     // clip at kAcClipFactor x the mean weight
inline constexpr float kAcEmbeddingGain = 0.32f;  // orthogonal init gain of the expert embeddings
inline constexpr float kGateInitStd = 0.02f;      // normal init std of the gate weights

// A parameter a module declares; the model prefixes the name ("blocks.<l>.moe.") and owns it.
struct ParamSpec {
  std::string name;
  Shape shape;
  InitSpec init;
  bool decay = true;  // AdamW weight decay applies
};

struct RouterOptions {
  RouterKind kind = RouterKind::TopK;    // the router actually used (ac on the first layer: topk)
  double tau = 1.0;                      // similarity temperature
  bool causal = true;                    // similarity graph restricted to j <= i
  GraphMix graph_mix = GraphMix::Probs;  // similarity/attention: mix probabilities or logits
  double self_weight =
      0.0;  // similarity/attention: alpha of the mixing matrix alpha I + (1-alpha) A
  double ac_fixed_norm = 0.0;  // ac: > 0 keeps every expert embedding at this norm (constrain())
};

struct RouterDims {
  std::int64_t batch = 1;    // B sequences
  std::int64_t seq = 1;      // T tokens per sequence; N = B*T rows in (b, t) order
  std::int64_t d = 1;        // d_model
  std::int64_t experts = 1;  // E
  std::int64_t tokens() const { return batch * seq; }
};

// Inputs besides the parameters.
template <typename T>
struct RouterInputs {
  const T* u = nullptr;                     // [N, d] router input (LN2 output)
  const T* attn_avg = nullptr;              // [B, T, T] head-averaged attention (needs_attention)
  const std::int32_t* prev_top1 = nullptr;  // [N] previous MoE layer's first choices (ac)
  const T* ac_scale = nullptr;              // [N, d] fixed AC weights (gradient checks), else null
  // Evaluation routing only (route_probe): statistics that depend on several tokens (the AC
  // weights) are taken over the tokens of every rank of this group, each rank holding the same
  // number of whole sequences; null (training): over this call's tokens, as in the papers.
  comm::Communicator* stats = nullptr;
};

// One diagnostic of the last forward: `sum` over `count` items (e.g. rows of a mixing matrix), so
// that callers can add sums and counts over ranks before dividing.
struct RouterDiagnostic {
  std::string name;
  double sum = 0.0;
  double count = 0.0;
};

// What forward produces (arena memory).
template <typename T>
struct RouteOutput {
  const T* select = nullptr;  // [N, E] scores top-k chooses from (and gates derive from)
  const T* probs = nullptr;   // [N, E] routing probabilities r: P_e of the Switch loss
  const T* lse = nullptr;     // [N] log-sum-exp of the router logits (z-loss)
};

// Per-expert AC weights w_e of the last forward (docs/model.md, "ac"; arena memory).
template <typename T>
struct AcExpertWeights {
  const T* w = nullptr;           // [E, d] w_e; rows of experts without tokens are not defined
  const double* count = nullptr;  // [E] tokens c_i = e: expert e has w_e when count[e] > 0
};

// Gradients arriving at the forward's outputs (each [N, E] or [N]).
template <typename T>
struct RouteGrads {
  const T* dselect = nullptr;  // through the gates
  const T* dprobs = nullptr;   // through the Switch loss
  const T* dlse = nullptr;     // through the z-loss
};

template <typename T>
class Router {
 public:
  Router() = default;
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;
  virtual ~Router() = default;

  virtual RouterKind kind() const = 0;
  // Parameters, in the order forward/backward receive them (names relative to the MoE layer).
  virtual std::vector<ParamSpec> params(std::int64_t d, std::int64_t experts) const = 0;
  virtual bool needs_attention() const { return false; }
  virtual bool needs_previous_assignment() const { return false; }
  virtual ops::GateRule gate_rule() const { return ops::GateRule::Renormalize; }

  // `w` holds the parameters of params() in order.
  virtual RouteOutput<T> forward(const Exec& ex, const RouterDims& dims,
                                 std::span<const T* const> w, const RouterInputs<T>& in,
                                 Arena& arena) = 0;
  // du[N, d] +=; d_attn_avg [B, T, T] += (needs_attention only); parameter gradients `g` +=.
  virtual void backward(const Exec& ex, const RouterDims& dims, std::span<const T* const> w,
                        std::span<T* const> g, const RouterInputs<T>& in, const RouteGrads<T>& d,
                        T* du, T* d_attn_avg, Arena& arena) = 0;
  // Floating-point operations of the GEMMs of one forward (multiply-add = 2; elementwise work is
  // not counted).
  virtual double flops(const RouterDims& dims) const = 0;
  // AC feature weights M [N, d] of the last forward (ac only, else null).
  virtual const T* feature_weights() const { return nullptr; }
  // Called by the model on the router's parameters (params() order) before every forward, in
  // training and in evaluation: a router may project them onto a constraint set in place (ac
  // with a fixed norm rescales its expert embeddings, as the authors' gate does). Default: none.
  virtual void constrain(const Exec& /*ex*/, const RouterDims& /*dims*/, std::span<T* const> /*w*/,
                         Arena& /*arena*/) {}
  // Named diagnostics of the last forward (graph routers: the mixing matrix; others: none).
  virtual std::vector<RouterDiagnostic> diagnostics(const Exec& /*ex*/) const { return {}; }
  // The per-expert weights w [E, d] that M gathers from, and which experts had tokens, of the
  // last forward (ac computing them from the previous assignment, else both null).
  virtual AcExpertWeights<T> expert_weights() const { return {}; }
};

// The factory: one line per router family.
template <typename T>
std::unique_ptr<Router<T>> make_router(const RouterOptions& options);

// AC feature weights M[N, d] = w_{c_i} (docs/model.md, "ac") from u[N, d] and the previous MoE
// layer's top-1 assignment c = prev[N]. `stats`, when given, receives w [E, d] and the token
// counts [E] (arena memory). `group` null: w comes from the tokens of this call. Otherwise w
// comes from the tokens of every rank of `group` (collective; each rank passes the same dims):
// the sums of each sequence are gathered and added in global sequence order (rank order, then
// sequence order within a rank), so every rank gets the same w, bit for bit, however the
// sequences are split over ranks.
template <typename T>
void ac_feature_weights(const Exec& ex, const RouterDims& dims, const T* u,
                        const std::int32_t* prev, T* m, Arena& arena,
                        AcExpertWeights<T>* stats = nullptr, comm::Communicator* group = nullptr);

// Shared by the softmax-gated families (topk, graph): logits z = u W_g^T, p = softmax(z).
template <typename T>
struct SoftmaxGate {
  const T* logits = nullptr;  // [N, E] z
  const T* probs = nullptr;   // [N, E] p
  const T* lse = nullptr;     // [N]
  void forward(const Exec& ex, std::int64_t n, std::int64_t d, std::int64_t e, const T* u,
               const T* gate, Arena& arena);
  // dp [N, E] arriving at p, dlse [N] at lse: dW_g += dz^T u, du += dz W_g.
  void backward(const Exec& ex, std::int64_t n, std::int64_t d, std::int64_t e, const T* u,
                const T* gate, const T* dp, const T* dlse, T* du, T* dgate, Arena& arena) const;
  // The same from the gradient dz [N, E] arriving at the logits directly.
  void backward_logits(const Exec& ex, std::int64_t n, std::int64_t d, std::int64_t e, const T* u,
                       const T* gate, const T* dz, T* du, T* dgate) const;
  static ParamSpec param(std::int64_t d, std::int64_t e);
  static double flops(std::int64_t n, std::int64_t d, std::int64_t e);
};

}  // namespace routemoe::layers
