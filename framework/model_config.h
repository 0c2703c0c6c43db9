#pragma once
// Model hyper-parameters (TOML section [model]); docs/model.md defines each one exactly.

#include <cstdint>
#include <string>
#include <vector>

namespace routemoe {

enum class RouterKind { TopK, Similarity, Attention, AC };

// "topk" | "similarity" | "attention" | "ac"; throws Error(Config) for anything else.
RouterKind parse_router(const std::string& name);
const char* router_name(RouterKind kind);

struct ModelConfig {
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
  double ln_eps = 1e-5;
  std::uint64_t seed = 1234;  // parameter initialisation

  // Throws Error(Config) naming the key for any out-of-range or inconsistent value.
  void validate() const;
  bool is_moe_block(std::int64_t layer) const { return layer % moe_every == moe_every - 1; }
  std::int64_t n_moe_layers() const { return n_layers / moe_every; }
  // Router of MoE layer m (0-based among MoE layers), after expanding a one-entry list.
  RouterKind router_of(std::int64_t moe_layer) const;
  // The router MoE layer m actually routes with: `ac` on the first MoE layer falls back to topk.
  RouterKind effective_router(std::int64_t moe_layer) const;
  std::vector<std::string> expanded_routers() const;
};

}  // namespace routemoe
