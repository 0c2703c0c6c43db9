#include "framework/model_config.h"

#include <fmt/format.h>

#include <cmath>
#include <utility>

#include "framework/error.h"

namespace routemoe {

RouterKind parse_router(const std::string& name) {
  if (name == "topk") return RouterKind::TopK;
  if (name == "similarity") return RouterKind::Similarity;
  if (name == "attention") return RouterKind::Attention;
  if (name == "ac") return RouterKind::AC;
  RM_FAIL(Config,
          fmt::format("unknown router '{}' (expected topk, similarity, attention or ac)", name));
}

const char* router_name(RouterKind kind) {
  switch (kind) {
    case RouterKind::TopK:
      return "topk";
    case RouterKind::Similarity:
      return "similarity";
    case RouterKind::Attention:
      return "attention";
    case RouterKind::AC:
      return "ac";
  }
  return "?";
}

GraphMix parse_graph_mix(const std::string& name) {
  if (name == "probs") return GraphMix::Probs;
  if (name == "logits") return GraphMix::Logits;
  RM_FAIL(Config, fmt::format("model.graph_mix must be \"probs\" or \"logits\", got '{}'", name));
}

void ModelConfig::validate() const {
  auto positive = [](const char* key, std::int64_t v) {
    RM_CHECK_KIND(Config, v > 0, fmt::format("model.{} must be positive, got {}", key, v));
  };
  positive("vocab_size", vocab_size);
  positive("seq_len", seq_len);
  positive("d_model", d_model);
  positive("n_heads", n_heads);
  positive("n_layers", n_layers);
  positive("d_ff", d_ff);
  positive("n_experts", n_experts);
  positive("top_k", top_k);
  positive("moe_every", moe_every);
  RM_CHECK_KIND(
      Config, vocab_size <= 65536,
      fmt::format("model.vocab_size {} exceeds 65536 (tokens are stored as uint16)", vocab_size));
  RM_CHECK_KIND(
      Config, d_model % n_heads == 0,
      fmt::format("model.d_model {} is not divisible by model.n_heads {}", d_model, n_heads));
  RM_CHECK_KIND(Config, top_k <= n_experts,
                fmt::format("model.top_k {} exceeds model.n_experts {}", top_k, n_experts));
  RM_CHECK_KIND(Config, moe_every <= n_layers,
                fmt::format("model.moe_every {} exceeds model.n_layers {}: no MoE layer", moe_every,
                            n_layers));
  const auto m = static_cast<std::size_t>(n_moe_layers());
  RM_CHECK_KIND(
      Config, routers.size() == 1 || routers.size() == m,
      fmt::format("model.routers has {} entries; give one (for all MoE layers) or {} (one per "
                  "MoE layer)",
                  routers.size(), m));
  for (const std::string& r : routers) parse_router(r);
  RM_CHECK_KIND(Config, similarity_tau > 0,
                fmt::format("model.similarity_tau must be positive, got {}", similarity_tau));
  RM_CHECK_KIND(Config, aux_loss_coef >= 0,
                fmt::format("model.aux_loss_coef must be >= 0, got {}", aux_loss_coef));
  RM_CHECK_KIND(Config, z_loss_coef >= 0,
                fmt::format("model.z_loss_coef must be >= 0, got {}", z_loss_coef));
  RM_CHECK_KIND(Config, ln_eps > 0, fmt::format("model.ln_eps must be positive, got {}", ln_eps));
  validate_router_options();
}

void ModelConfig::validate_router_options() const {
  const std::pair<const char*, double> per_router[] = {
      {"aux_loss_coef_topk", aux_loss_coef_topk},
      {"aux_loss_coef_similarity", aux_loss_coef_similarity},
      {"aux_loss_coef_attention", aux_loss_coef_attention},
      {"aux_loss_coef_ac", aux_loss_coef_ac},
      {"ac_fixed_norm", ac_fixed_norm},
      {"graph_self_weight", graph_self_weight}};
  for (const auto& [key, v] : per_router) {
    RM_CHECK_KIND(Config, std::isfinite(v),
                  fmt::format("model.{} must be a finite number, got {}", key, v));
  }
  RM_CHECK_KIND(Config, ac_fixed_norm >= 0,
                fmt::format("model.ac_fixed_norm must be >= 0 (0: off), got {}", ac_fixed_norm));
  RM_CHECK_KIND(
      Config, graph_self_weight >= 0 && graph_self_weight <= 1,
      fmt::format("model.graph_self_weight must lie in [0, 1], got {}", graph_self_weight));
  parse_graph_mix(graph_mix);
}

double ModelConfig::aux_coef_of(std::int64_t moe_layer) const {
  double own = -1.0;
  switch (effective_router(moe_layer)) {
    case RouterKind::TopK:
      own = aux_loss_coef_topk;
      break;
    case RouterKind::Similarity:
      own = aux_loss_coef_similarity;
      break;
    case RouterKind::Attention:
      own = aux_loss_coef_attention;
      break;
    case RouterKind::AC:
      own = aux_loss_coef_ac;
      break;
  }
  return own >= 0 ? own : aux_loss_coef;
}

RouterKind ModelConfig::router_of(std::int64_t moe_layer) const {
  const std::string& name =
      routers.size() == 1 ? routers[0] : routers.at(static_cast<std::size_t>(moe_layer));
  return parse_router(name);
}

RouterKind ModelConfig::effective_router(std::int64_t moe_layer) const {
  const RouterKind r = router_of(moe_layer);
  return (r == RouterKind::AC && moe_layer == 0) ? RouterKind::TopK : r;
}

std::vector<std::string> ModelConfig::expanded_routers() const {
  std::vector<std::string> out;
  for (std::int64_t m = 0; m < n_moe_layers(); ++m) out.emplace_back(router_name(router_of(m)));
  return out;
}

}  // namespace routemoe
