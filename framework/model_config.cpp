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

std::string range_problem(std::string_view key, std::int64_t v, IntRange r) {
  if (r.contains(v)) return {};
  return fmt::format("{} must lie in [{}, {}], got {}", key, r.min, r.max, v);
}

std::int64_t size_mul(std::int64_t a, std::int64_t b, std::string_view what) {
  std::int64_t out = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &out))
    RM_FAIL(Config, fmt::format("{} overflows 64-bit integers ({} x {}): the configuration is far "
                                "larger than any machine",
                                what, a, b));
  return out;
}

std::int64_t size_add(std::int64_t a, std::int64_t b, std::string_view what) {
  std::int64_t out = 0;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &out))
    RM_FAIL(Config, fmt::format("{} overflows 64-bit integers ({} + {}): the configuration is far "
                                "larger than any machine",
                                what, a, b));
  return out;
}

void ModelConfig::validate() const {
  auto in_range = [](const char* key, std::int64_t v, IntRange r) {
    const std::string problem = range_problem(fmt::format("model.{}", key), v, r);
    if (!problem.empty()) RM_FAIL(Config, problem);
  };
  in_range("vocab_size", vocab_size, kVocabSize);
  in_range("seq_len", seq_len, kSeqLen);
  in_range("d_model", d_model, kDModel);
  in_range("n_heads", n_heads, kHeads);
  in_range("n_layers", n_layers, kLayers);
  in_range("d_ff", d_ff, kDff);
  in_range("n_experts", n_experts, kExperts);
  in_range("top_k", top_k, IntRange{1, n_experts});
  in_range("moe_every", moe_every, IntRange{1, n_layers});
  RM_CHECK_KIND(Config, seed <= static_cast<std::uint64_t>(kSeed.max),
                fmt::format("model.seed must lie in [0, {}], got {}", kSeed.max, seed));
  RM_CHECK_KIND(
      Config, d_model % n_heads == 0,
      fmt::format("model.d_model {} is not divisible by model.n_heads {}", d_model, n_heads));
  const auto m = static_cast<std::size_t>(n_moe_layers());
  RM_CHECK_KIND(
      Config, routers.size() == 1 || routers.size() == m,
      fmt::format("model.routers has {} entries; give one (for all MoE layers) or {} (one per "
                  "MoE layer)",
                  routers.size(), m));
  for (const std::string& r : routers) parse_router(r);
  auto finite = [](const char* key, double v) {
    RM_CHECK_KIND(Config, std::isfinite(v),
                  fmt::format("model.{} must be a finite number, got {}", key, v));
  };
  finite("capacity_factor", capacity_factor);
  finite("similarity_tau", similarity_tau);
  finite("aux_loss_coef", aux_loss_coef);
  finite("z_loss_coef", z_loss_coef);
  finite("ln_eps", ln_eps);
  // Beyond E no slot is ever dropped (an expert gets each token at most once); the bound keeps
  // ceil(C N k / E) an integer.
  RM_CHECK_KIND(Config, capacity_factor <= static_cast<double>(n_experts),
                fmt::format("model.capacity_factor must be at most model.n_experts ({}), got {}",
                            n_experts, capacity_factor));
  RM_CHECK_KIND(Config, similarity_tau > 0,
                fmt::format("model.similarity_tau must be positive, got {}", similarity_tau));
  RM_CHECK_KIND(Config, aux_loss_coef >= 0,
                fmt::format("model.aux_loss_coef must be >= 0, got {}", aux_loss_coef));
  RM_CHECK_KIND(Config, z_loss_coef >= 0,
                fmt::format("model.z_loss_coef must be >= 0, got {}", z_loss_coef));
  RM_CHECK_KIND(Config, ln_eps > 0, fmt::format("model.ln_eps must be positive, got {}", ln_eps));
  param_count();  // throws when the parameter count overflows
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

std::string ModelConfig::describe_router(std::int64_t moe_layer) const {
  const RouterKind r = effective_router(moe_layer);
  std::string out =
      fmt::format("block {}: {}", moe_layer * moe_every + moe_every - 1, router_name(r));
  if (r != router_of(moe_layer)) out += " (ac needs a previous MoE layer)";
  if (r == RouterKind::AC && ac_fixed_norm > 0)
    out += fmt::format(", fixed norm {}", ac_fixed_norm);
  if (r == RouterKind::Similarity) out += fmt::format(", tau {}", similarity_tau);
  if ((r == RouterKind::Similarity || r == RouterKind::Attention) &&
      (graph_mix != "probs" || graph_self_weight > 0)) {
    out += fmt::format(", mix {}, self-weight {}", graph_mix, graph_self_weight);
  }
  return out + fmt::format(", aux {}", aux_coef_of(moe_layer));
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

ParamCount ModelConfig::param_count() const {
  const std::int64_t d = d_model, F = d_ff, E = n_experts;
  const char* what = "the parameter count";
  auto mul = [&](std::int64_t a, std::int64_t b) { return size_mul(a, b, what); };
  auto add = [&](std::int64_t a, std::int64_t b) { return size_add(a, b, what); };
  // Token and position embeddings, final LayerNorm.
  std::int64_t dense = add(add(mul(vocab_size, d), mul(seq_len, d)), 2 * d);
  // Per block: ln1, attention qkv (3d x d + 3d) and projection (d x d + d), ln2.
  const std::int64_t attention = add(add(mul(4 * d, d), 4 * d), 4 * d);
  const std::int64_t ffn = add(mul(2 * d, F), add(F, d));  // fc, proj, their biases
  const std::int64_t moe_layers = n_moe_layers();
  dense = add(dense, mul(n_layers, attention));
  dense = add(dense, mul(n_layers - moe_layers, ffn));
  dense = add(dense, mul(moe_layers, mul(E, d)));  // one E x d router matrix per MoE layer
  return ParamCount{dense, mul(moe_layers, mul(E, ffn))};
}

}  // namespace routemoe
