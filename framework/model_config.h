#pragma once
// Model hyper-parameters (TOML section [model]); docs/model.md defines each one exactly.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace routemoe {

enum class RouterKind { TopK, Similarity, Attention, AC };

// What the graph routers (similarity, attention) mix over the tokens of a sequence
// (docs/model.md, "Graph mixing"): the gate probabilities p (the papers' p~ = A p, the default) or
// the gate logits z (p~ = softmax(A z)).
enum class GraphMix { Probs, Logits };

// "topk" | "similarity" | "attention" | "ac"; throws Error(Config) for anything else.
RouterKind parse_router(const std::string& name);
const char* router_name(RouterKind kind);
// "probs" | "logits"; throws Error(Config) for anything else.
GraphMix parse_graph_mix(const std::string& name);

// The valid values of an integer configuration key, both ends included.
struct IntRange {
  std::int64_t min = INT64_MIN;
  std::int64_t max = INT64_MAX;
  bool contains(std::int64_t v) const { return v >= min && v <= max; }
};

// "KEY must lie in [MIN, MAX], got V" when v is outside r, else "".
std::string range_problem(std::string_view key, std::int64_t v, IntRange r);

// Size arithmetic for configurations: a*b and a+b of non-negative sizes, Error(Config) naming
// `what` when the result does not fit in 64 bits (instead of wrapping around).
std::int64_t size_mul(std::int64_t a, std::int64_t b, std::string_view what);
std::int64_t size_add(std::int64_t a, std::int64_t b, std::string_view what);

// Parameter counts of a model (elements, not bytes).
struct ParamCount {
  std::int64_t dense = 0;    // held by every rank: embeddings, attention, LayerNorms, dense FFNs,
                             // routers
  std::int64_t experts = 0;  // every expert of every MoE layer once (sharded under EP)
  std::int64_t total() const { return dense + experts; }
};

struct ModelConfig {
  // Sane ranges of the size keys (docs/configuration.md): every size the model derives from
  // them is computed with checked arithmetic (size_mul), so none can overflow unnoticed.
  static constexpr IntRange kVocabSize{1, 65536};  // tokens are stored as uint16
  static constexpr IntRange kSeqLen{1, 1 << 20};
  static constexpr IntRange kDModel{1, 1 << 16};
  static constexpr IntRange kHeads{1, 1 << 12};
  static constexpr IntRange kLayers{1, 1 << 12};
  static constexpr IntRange kDff{1, 1 << 20};
  static constexpr IntRange kExperts{1, 1 << 16};
  static constexpr IntRange kSeed{0, INT64_MAX};  // TOML integers are signed 64-bit

  std::int64_t vocab_size = 256;
  std::int64_t seq_len = 256;
  std::int64_t d_model = 256;
  std::int64_t n_heads = 4;
  std::int64_t n_layers = 4;
  std::int64_t d_ff = 512;
  std::int64_t n_experts = 8;
  std::int64_t top_k = 2;
  std::int64_t moe_every = 1;
  std::vector<std::string> routers = {"topk"};
  double capacity_factor = 0.0;
  double similarity_tau = 1.0;
  bool similarity_causal = true;
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.0;
  // Switch-loss coefficient of the MoE layers that really route with each router (the first
  // MoE layer's `ac` counts as topk); < 0: model.aux_loss_coef.
  double aux_loss_coef_topk = -1.0;
  double aux_loss_coef_similarity = -1.0;
  double aux_loss_coef_attention = -1.0;
  double aux_loss_coef_ac = -1.0;
  // ac: > 0 renormalises every expert embedding to this norm before each forward and exempts the
  // embeddings from weight decay (the authors' code: 1.5); 0: free embeddings (default).
  double ac_fixed_norm = 0.0;
  // similarity and attention: what is mixed ("probs" or "logits"), and the self-weight alpha of
  // the mixing matrix alpha I + (1 - alpha) A (0: the papers' form).
  std::string graph_mix = "probs";
  double graph_self_weight = 0.0;
  double ln_eps = 1e-5;
  std::uint64_t seed = 1234;  // parameter initialisation

  bool operator==(const ModelConfig&) const = default;

  // Throws Error(Config) naming the key for any out-of-range or inconsistent value, and for a
  // model whose parameter count does not fit in 64 bits.
  void validate() const;
  bool is_moe_block(std::int64_t layer) const { return layer % moe_every == moe_every - 1; }
  std::int64_t n_moe_layers() const { return n_layers / moe_every; }
  // Router of MoE layer m (0-based among MoE layers), after expanding a one-entry list.
  RouterKind router_of(std::int64_t moe_layer) const;
  // The router MoE layer m actually routes with: `ac` on the first MoE layer falls back to topk.
  RouterKind effective_router(std::int64_t moe_layer) const;
  std::vector<std::string> expanded_routers() const;
  // Switch-loss coefficient of MoE layer m (by the router it really uses).
  double aux_coef_of(std::int64_t moe_layer) const;
  // What MoE layer m really routes with, for the training banner: "block B: ROUTER" with the
  // router's options that apply (e.g. "block 1: topk (ac needs a previous MoE layer), aux 0.01",
  // "block 3: ac, fixed norm 1.5, aux 0").
  std::string describe_router(std::int64_t moe_layer) const;
  // The checks of the router options above (called by validate()).
  void validate_router_options() const;
  // Parameters of the model (layers/model.cpp declares exactly these), in checked arithmetic.
  ParamCount param_count() const;
};

}  // namespace routemoe
