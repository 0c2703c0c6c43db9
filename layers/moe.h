#pragma once
// The MoE layer: router -> top-k -> capacity -> permutation of tokens by expert -> grouped
// expert GEMMs (one per expert over its contiguous rows) -> weighted combine, and its backward.
// The four routers (topk, similarity, attention, ac) follow docs/model.md exactly.
//
// Templated on the element type: float is what the model runs; double runs the same code for
// gradient checks by finite differences. Pointers are CPU memory, row-major. Scratch and saved
// activations come from an Arena (valid until the arena resets).

#include <cstdint>

#include "comm/communicator.h"
#include "framework/arena.h"
#include "framework/model_config.h"
#include "layers/dispatch.h"

namespace routemoe::layers {

struct MoeDims {
  std::int64_t batch = 1;        // B sequences
  std::int64_t seq = 1;          // T tokens per sequence; N = B*T rows in (b, t) order
  std::int64_t d = 1;            // d_model
  std::int64_t d_ff = 1;         // expert hidden width
  std::int64_t experts = 1;      // E
  std::int64_t top_k = 1;        // k
  double capacity_factor = 0.0;  // <= 0: dropless
  std::int64_t tokens() const { return batch * seq; }
};

struct RouterOptions {
  RouterKind kind = RouterKind::TopK;  // the router actually used (ac on the first layer: topk)
  double tau = 1.0;                    // similarity temperature
  bool causal = true;                  // similarity graph restricted to j <= i
  double aux_coef = 0.01;              // Switch load-balancing loss coefficient
  double z_coef = 0.0;                 // router z-loss coefficient
};

// Inputs of the layer besides the parameters.
template <typename T>
struct MoeInputs {
  const T* u = nullptr;                     // [N, d] router and expert input (LN2 output)
  const T* attn_avg = nullptr;              // [B, T, T] head-averaged attention (attention router)
  const std::int32_t* prev_top1 = nullptr;  // [N] previous MoE layer's first choices (ac)
  const T* ac_scale = nullptr;              // [N, d] fixed AC weights (gradient checks), else null
  // Expert-parallel group: rank q of P owns experts [q*E/P, (q+1)*E/P) and the weights in
  // MoeWeights are that shard. Null (or size 1): all experts are local.
  comm::Communicator* ep = nullptr;
};

// Expert weights hold the local experts only: [E_local, ...] with E_local = E / ep size.
template <typename T>
struct MoeWeights {
  const T* gate = nullptr;        // [E, d]  (topk, similarity, attention)
  const T* expert_emb = nullptr;  // [E, d]  (ac)
  const T* w1 = nullptr;          // [E, d_ff, d]
  const T* b1 = nullptr;          // [E, d_ff]
  const T* w2 = nullptr;          // [E, d, d_ff]
  const T* b2 = nullptr;          // [E, d]
};

// Gradient buffers, accumulated into (+=). Null entries are skipped for parameters the router
// does not have.
template <typename T>
struct MoeGrads {
  T* gate = nullptr;
  T* expert_emb = nullptr;
  T* w1 = nullptr;
  T* b1 = nullptr;
  T* w2 = nullptr;
  T* b2 = nullptr;
};

// What forward saves for backward, and the routing decision (for traces and the next AC layer).
template <typename T>
struct MoeCache {
  // Router.
  T* probs = nullptr;              // [N, E] softmax of gate logits (topk family) / softmax(s) (ac)
  T* select = nullptr;             // [N, E] selection vector: p, p~ (graph routers) or s (ac)
  T* graph = nullptr;              // [B, T, T] similarity matrix S (similarity router)
  T* scale = nullptr;              // [N, d] AC feature weights M_i (ac)
  T* scaled = nullptr;             // [N, d] u * M (ac)
  T* emb_unit = nullptr;           // [E, d] e_j / |e_j| (ac)
  T* emb_norm = nullptr;           // [E] |e_j| (ac)
  T* lse = nullptr;                // [N] logsumexp of the router logits (z-loss)
  std::int32_t* choice = nullptr;  // [N, k] chosen experts, best first
  T* gates = nullptr;              // [N, k] gate weights
  std::uint8_t* kept = nullptr;    // [N, k] 1 when the slot survived the capacity limit
  std::int32_t* top1 = nullptr;    // [N] first chosen expert
  T* top1_frac = nullptr;          // [E] f_e
  // Dispatch on the token side (slots sorted by global expert, then by token).
  std::int64_t slots = 0;                 // S kept slots
  std::int64_t* expert_offset = nullptr;  // [E + 1] first slot of each expert
  std::int32_t* slot_token = nullptr;     // [S] token of each slot
  std::int32_t* slot_pos = nullptr;       // [S] i * k + j of each slot
  T* slot_gate = nullptr;                 // [S]
  T* x_in = nullptr;                      // [S, d] expert inputs in slot order
  T* y_out = nullptr;                     // [S, d] expert outputs in slot order
  // Expert side: the rows this rank's experts process (see layers/dispatch.h), grouped by
  // local expert, then by source rank, then in slot order. Without expert parallelism these
  // alias the slot-order buffers.
  DispatchPlan plan;
  T* ex_in = nullptr;   // [R, d]
  T* h_pre = nullptr;   // [R, d_ff] before GELU
  T* h_act = nullptr;   // [R, d_ff] after GELU
  T* ex_out = nullptr;  // [R, d]
  // Loss terms of this layer (already multiplied by nothing: raw values).
  double switch_loss = 0.0;  // E * sum_e f_e P_e
  double z_loss = 0.0;       // mean_i lse_i^2
  std::int64_t dropped = 0;  // slots dropped by the capacity limit
};

// y[N, d] = MoE(u[N, d]) (overwritten); see MoeInputs. With expert parallelism every rank of
// the ep group must call this collectively (two all-to-all exchanges).
template <typename T>
void moe_forward(const MoeDims& dims, const RouterOptions& opts, const MoeWeights<T>& w,
                 const MoeInputs<T>& in, T* y, MoeCache<T>& cache, Arena& arena);

// AC feature weights M[N, d] from u[N, d] and the previous layer's top-1 assignment
// (docs/model.md).
template <typename T>
void ac_feature_weights(const MoeDims& dims, const T* u, const std::int32_t* prev_top1, T* m);

// Backward of y and of the layer's auxiliary losses (aux_coef * switch + z_coef * z):
// du[N, d] overwritten; d_attn_avg [B, T, T] += (attention router; may be null otherwise);
// parameter gradients += into g.
template <typename T>
void moe_backward(const MoeDims& dims, const RouterOptions& opts, const MoeWeights<T>& w,
                  const MoeGrads<T>& g, const MoeInputs<T>& in, const MoeCache<T>& cache,
                  const T* dy, T* du, T* d_attn_avg, Arena& arena);

// Top-k of each row of x[n, e]: the k largest entries, best first, ties to the lower index.
template <typename T>
void topk_rows(const T* x, std::int32_t* idx, std::int64_t n, std::int64_t e, std::int64_t k);

}  // namespace routemoe::layers
