#include "framework/config.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "framework/error.h"
#include "framework/json.h"

namespace routemoe {

namespace {

// The single table of configuration keys: registration, documentation test and TOML export
// all walk it, so they cannot drift apart.
template <typename Fn>
void for_each_key(RunConfig& c, Fn&& fn) {
  ModelConfig& m = c.model;
  fn("model.vocab_size", m.vocab_size, "vocabulary size (256 for the byte tokenizer)");
  fn("model.seq_len", m.seq_len, "context length T (tokens per training sequence)");
  fn("model.d_model", m.d_model, "model width d");
  fn("model.n_heads", m.n_heads, "attention heads (divides d_model)");
  fn("model.n_layers", m.n_layers, "transformer blocks");
  fn("model.d_ff", m.d_ff, "hidden width of the dense FFN and of every expert");
  fn("model.n_experts", m.n_experts, "experts per MoE layer");
  fn("model.top_k", m.top_k, "experts per token");
  fn("model.moe_every", m.moe_every, "block l is MoE iff l % moe_every == moe_every - 1");
  fn("model.routers", m.routers,
     "router per MoE layer: topk, similarity, attention, ac (one entry = all)");
  fn("model.capacity_factor", m.capacity_factor, "expert capacity factor; <= 0 is dropless");
  fn("model.similarity_tau", m.similarity_tau, "temperature of the similarity router");
  fn("model.similarity_causal", m.similarity_causal, "similarity graph only over earlier tokens");
  fn("model.aux_loss_coef", m.aux_loss_coef, "Switch load-balancing loss coefficient");
  fn("model.z_loss_coef", m.z_loss_coef, "router z-loss coefficient");
  fn("model.aux_loss_coef_topk", m.aux_loss_coef_topk,
     "Switch loss coefficient of topk layers (< 0: model.aux_loss_coef)");
  fn("model.aux_loss_coef_similarity", m.aux_loss_coef_similarity,
     "Switch loss coefficient of similarity layers (< 0: model.aux_loss_coef)");
  fn("model.aux_loss_coef_attention", m.aux_loss_coef_attention,
     "Switch loss coefficient of attention layers (< 0: model.aux_loss_coef)");
  fn("model.aux_loss_coef_ac", m.aux_loss_coef_ac,
     "Switch loss coefficient of ac layers (< 0: model.aux_loss_coef)");
  fn("model.ac_fixed_norm", m.ac_fixed_norm,
     "ac: expert embeddings renormalised to this norm every forward, no decay (0: off)");
  fn("model.graph_mix", m.graph_mix, "similarity/attention mix gate probs or logits");
  fn("model.graph_self_weight", m.graph_self_weight,
     "similarity/attention self-weight alpha: alpha I + (1 - alpha) A");
  fn("model.ln_eps", m.ln_eps, "LayerNorm epsilon");
  fn("model.seed", m.seed, "parameter initialisation seed");
  OptimConfig& o = c.optim;
  fn("optim.lr", o.lr, "peak learning rate");
  fn("optim.lr_min", o.lr_min, "final learning rate of the cosine schedule");
  fn("optim.warmup", o.warmup, "linear warmup steps");
  fn("optim.beta1", o.beta1, "AdamW beta1");
  fn("optim.beta2", o.beta2, "AdamW beta2");
  fn("optim.eps", o.eps, "AdamW epsilon");
  fn("optim.weight_decay", o.weight_decay, "decoupled weight decay (not on biases and LayerNorms)");
  fn("optim.grad_clip", o.grad_clip, "clip the global gradient norm to this (<= 0: off)");
  TrainConfig& t = c.train;
  fn("train.steps", t.steps, "optimiser steps");
  fn("train.batch_size", t.batch_size, "global sequences per step");
  fn("train.grad_accum", t.grad_accum, "micro-batches per step on each rank");
  fn("train.eval_every", t.eval_every, "steps between validation passes (0: at the end only)");
  fn("train.eval_batches", t.eval_batches, "validation batches per pass (0: whole split)");
  fn("train.log_every", t.log_every, "steps between console lines");
  fn("train.seed", t.seed, "data order seed");
  fn("train.threads", t.threads, "CPU threads per rank (0: cores / ranks per node)");
  fn("train.out_dir", t.out_dir, "run directory for metrics and the resolved config");
  fn("train.progress", t.progress, "progress bar when stdout is a terminal");
  fn("train.resume", t.resume, "resume from a checkpoint: auto (newest in the run) or a path");
  DataConfig& d = c.data;
  fn("data.path", d.path, "shard directory, or a pattern with {split}");
  fn("data.headerless", d.headerless, "also accept headerless nanoGPT .bin files");
  fn("data.train_split", d.train_split, "split name of the training shards");
  fn("data.val_split", d.val_split, "split name of the validation shards");
  fn("parallel.ep_size", c.parallel.ep_size, "expert-parallel group size");
  CheckpointConfig& k = c.checkpoint;
  fn("checkpoint.every", k.every, "steps between checkpoints (0: none)");
  fn("checkpoint.keep_last", k.keep_last, "checkpoints kept (older are deleted)");
  fn("checkpoint.dir", k.dir, "checkpoint directory (default <train.out_dir>/checkpoints)");
  fn("checkpoint.probe_tokens", k.probe_tokens, "held-out tokens routed for every routing record");
  fn("checkpoint.record_every", k.record_every, "extra routing records every N steps (0: off)");
  fn("checkpoint.trace", k.trace, "append routing records to <train.out_dir>/trace.h5");
}

// A TOML string: a literal '...' string when possible (no escapes at all, so backslashes in
// paths survive CLI11's reader, which does not unescape \\), else a basic string with escapes.
std::string toml_quote(const std::string& v) {
  const bool literal =
      v.find('\'') == std::string::npos &&
      std::none_of(v.begin(), v.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; });
  return literal ? "'" + v + "'" : json_quote(v);
}

template <typename T>
std::string toml_value(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) {
    return toml_quote(v);
  } else if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i)
      s += fmt::format("{}{}", i ? ", " : "", toml_quote(v[i]));
    return s + "]";
  } else {
    return fmt::format("{}", v);
  }
}

}  // namespace

void RunConfig::validate() const {
  model.validate();
  optim.validate();
  auto positive = [](const char* key, std::int64_t v) {
    RM_CHECK_KIND(Config, v > 0, fmt::format("{} must be positive, got {}", key, v));
  };
  positive("train.steps", train.steps);
  positive("train.batch_size", train.batch_size);
  positive("train.grad_accum", train.grad_accum);
  positive("train.log_every", train.log_every);
  positive("parallel.ep_size", parallel.ep_size);
  RM_CHECK_KIND(Config, train.eval_every >= 0,
                fmt::format("train.eval_every must be >= 0, got {}", train.eval_every));
  RM_CHECK_KIND(Config, train.eval_batches >= 0,
                fmt::format("train.eval_batches must be >= 0, got {}", train.eval_batches));
  RM_CHECK_KIND(Config, train.threads >= 0,
                fmt::format("train.threads must be >= 0, got {}", train.threads));
  RM_CHECK_KIND(Config, train.batch_size % train.grad_accum == 0,
                fmt::format("train.batch_size {} is not divisible by train.grad_accum {}",
                            train.batch_size, train.grad_accum));
  RM_CHECK_KIND(Config, !train.out_dir.empty(), "train.out_dir must not be empty");
  RM_CHECK_KIND(Config, !data.path.empty(), "data.path must not be empty");
  RM_CHECK_KIND(Config, checkpoint.every >= 0,
                fmt::format("checkpoint.every must be >= 0, got {}", checkpoint.every));
  RM_CHECK_KIND(Config, checkpoint.keep_last >= 1,
                fmt::format("checkpoint.keep_last must be >= 1, got {}", checkpoint.keep_last));
  RM_CHECK_KIND(
      Config, checkpoint.probe_tokens >= model.seq_len,
      fmt::format("checkpoint.probe_tokens {} must be at least one sequence (model.seq_len {})",
                  checkpoint.probe_tokens, model.seq_len));
  RM_CHECK_KIND(
      Config, checkpoint.record_every >= 0,
      fmt::format("checkpoint.record_every must be >= 0, got {}", checkpoint.record_every));
  RM_CHECK_KIND(Config, model.n_experts % parallel.ep_size == 0,
                fmt::format("parallel.ep_size {} does not divide model.n_experts {}",
                            parallel.ep_size, model.n_experts));
}

std::string RunConfig::to_toml() const {
  RunConfig copy = *this;
  std::string out, section;
  for_each_key(copy, [&](const char* key, auto& value, const char*) {
    const std::string k = key;
    const std::string sec = k.substr(0, k.find('.'));
    if (sec != section) {
      out += fmt::format("{}[{}]\n", out.empty() ? "" : "\n", sec);
      section = sec;
    }
    out += fmt::format("{} = {}\n", k.substr(k.find('.') + 1), toml_value(value));
  });
  return out;
}

void register_run_options(CLI::App& cmd, RunConfig& cfg, std::string& config_path) {
  cmd.add_option("--config", config_path,
                 "TOML configuration file (sections [model], [optim], "
                 "[train], [data], [parallel]; see docs/configuration.md)");
  for_each_key(cfg, [&](const char* key, auto& value, const char* help) {
    CLI::Option* opt = cmd.add_option(fmt::format("--{}", key), value, help)->capture_default_str();
    if constexpr (std::is_same_v<std::decay_t<decltype(value)>, std::vector<std::string>>) {
      opt->delimiter(',');
    }
  });
}

void apply_config_file(CLI::App& cmd, const std::string& path) {
  if (path.empty()) return;
  RM_CHECK_KIND(Config, std::filesystem::is_regular_file(path),
                fmt::format("config file {} does not exist or is not a file", path));
  std::vector<CLI::ConfigItem> items;
  try {
    items = CLI::ConfigTOML().from_file(path);
  } catch (const CLI::Error& e) {
    RM_FAIL(Config, fmt::format("{}: cannot parse: {}", path, e.what()));
  }
  for (const CLI::ConfigItem& item : items) {
    if (item.name == "++" || item.name == "--") continue;  // section markers
    std::string key;
    for (const std::string& p : item.parents) key += p + ".";
    key += item.name;
    CLI::Option* opt = nullptr;
    try {
      opt = cmd.get_option("--" + key);
    } catch (const CLI::Error&) {
      opt = nullptr;
    }
    RM_CHECK_KIND(
        Config, opt != nullptr && key.find('.') != std::string::npos,
        fmt::format("{}: unknown configuration key '{}' (see docs/configuration.md)", path, key));
    if (opt->count() > 0) continue;  // the command line wins
    try {
      for (const std::string& v : item.inputs) opt->add_result(v);
      opt->run_callback();
    } catch (const CLI::Error& e) {
      RM_FAIL(Config, fmt::format("{}: {}: {}", path, key, e.what()));
    }
  }
}

std::vector<std::string> config_keys() {
  RunConfig cfg;
  std::vector<std::string> keys;
  for_each_key(cfg, [&](const char* key, auto&, const char*) { keys.emplace_back(key); });
  return keys;
}

}  // namespace routemoe
