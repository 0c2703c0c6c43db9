#include "framework/config.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <type_traits>

#include "framework/error.h"
#include "framework/stop_signals.h"

namespace routemoe {

namespace {

// Ranges of the integer keys outside [model] (whose ranges are ModelConfig's).
constexpr std::int64_t kMaxSteps = std::int64_t{1} << 40;
constexpr IntRange kPositiveSteps{1, kMaxSteps};
constexpr IntRange kSteps{0, kMaxSteps};
constexpr IntRange kSeed{0, INT64_MAX};
constexpr IntRange kNoRange{};  // keys that are not integers

// The single table of configuration keys: command-line options, TOML reading and writing,
// validation and the documentation test all walk it, so they cannot drift apart. Each entry:
// key, the field, help text, and for integers the range of valid values.
template <typename Config, typename Fn>
void for_each_key(Config& c, Fn&& fn) {
  auto& m = c.model;
  using MC = ModelConfig;
  fn("model.vocab_size", m.vocab_size, "vocabulary size (256 for the byte tokenizer)",
     MC::kVocabSize);
  fn("model.seq_len", m.seq_len, "context length T (tokens per training sequence)", MC::kSeqLen);
  fn("model.d_model", m.d_model, "model width d", MC::kDModel);
  fn("model.n_heads", m.n_heads, "attention heads (divides d_model)", MC::kHeads);
  fn("model.n_layers", m.n_layers, "transformer blocks", MC::kLayers);
  fn("model.d_ff", m.d_ff, "hidden width of the dense FFN and of every expert", MC::kDff);
  fn("model.n_experts", m.n_experts, "experts per MoE layer", MC::kExperts);
  fn("model.top_k", m.top_k, "experts per token", IntRange{1, MC::kExperts.max});
  fn("model.moe_every", m.moe_every, "block l is MoE iff l % moe_every == moe_every - 1",
     IntRange{1, MC::kLayers.max});
  fn("model.routers", m.routers,
     "router per MoE layer: topk, similarity, attention, ac (one entry = all)", kNoRange);
  fn("model.capacity_factor", m.capacity_factor, "expert capacity factor; <= 0 is dropless",
     kNoRange);
  fn("model.similarity_tau", m.similarity_tau, "temperature of the similarity router", kNoRange);
  fn("model.similarity_causal", m.similarity_causal, "similarity graph only over earlier tokens",
     kNoRange);
  fn("model.aux_loss_coef", m.aux_loss_coef, "Switch load-balancing loss coefficient", kNoRange);
  fn("model.z_loss_coef", m.z_loss_coef, "router z-loss coefficient", kNoRange);
  fn("model.aux_loss_coef_topk", m.aux_loss_coef_topk,
     "Switch loss coefficient of topk layers (< 0: model.aux_loss_coef)", kNoRange);
  fn("model.aux_loss_coef_similarity", m.aux_loss_coef_similarity,
     "Switch loss coefficient of similarity layers (< 0: model.aux_loss_coef)", kNoRange);
  fn("model.aux_loss_coef_attention", m.aux_loss_coef_attention,
     "Switch loss coefficient of attention layers (< 0: model.aux_loss_coef)", kNoRange);
  fn("model.aux_loss_coef_ac", m.aux_loss_coef_ac,
     "Switch loss coefficient of ac layers (< 0: model.aux_loss_coef)", kNoRange);
  fn("model.ac_fixed_norm", m.ac_fixed_norm,
     "ac: expert embeddings renormalised to this norm every forward, no decay (0: off)", kNoRange);
  fn("model.graph_mix", m.graph_mix, "similarity/attention: mix gate probs or logits", kNoRange);
  fn("model.graph_self_weight", m.graph_self_weight,
     "similarity/attention self-weight alpha: alpha I + (1 - alpha) A", kNoRange);
  fn("model.ln_eps", m.ln_eps, "LayerNorm epsilon", kNoRange);
  fn("model.seed", m.seed, "parameter initialisation seed", MC::kSeed);
  auto& o = c.optim;
  fn("optim.lr", o.lr, "peak learning rate", kNoRange);
  fn("optim.lr_min", o.lr_min, "final learning rate of the cosine schedule", kNoRange);
  fn("optim.warmup", o.warmup, "linear warmup steps", kSteps);
  fn("optim.beta1", o.beta1, "AdamW beta1", kNoRange);
  fn("optim.beta2", o.beta2, "AdamW beta2", kNoRange);
  fn("optim.eps", o.eps, "AdamW epsilon", kNoRange);
  fn("optim.weight_decay", o.weight_decay, "decoupled weight decay (not on biases and LayerNorms)",
     kNoRange);
  fn("optim.grad_clip", o.grad_clip, "clip the global gradient norm to this (<= 0: off)", kNoRange);
  auto& t = c.train;
  fn("train.steps", t.steps, "optimiser steps", kPositiveSteps);
  fn("train.batch_size", t.batch_size, "global sequences per step", IntRange{1, 1 << 24});
  fn("train.grad_accum", t.grad_accum, "micro-batches per step on each rank", IntRange{1, 1 << 20});
  fn("train.eval_every", t.eval_every, "steps between validation passes (0: at the end only)",
     kSteps);
  fn("train.eval_batches", t.eval_batches, "validation batches per pass (0: whole split)", kSteps);
  fn("train.log_every", t.log_every, "steps between console lines", kPositiveSteps);
  fn("train.seed", t.seed, "data order seed", kSeed);
  fn("train.threads", t.threads, "CPU threads per rank (0: cores / ranks per node)",
     IntRange{0, 4096});
  fn("train.out_dir", t.out_dir, "run directory for metrics and the resolved config", kNoRange);
  fn("train.progress", t.progress, "progress bar when stdout is a terminal", kNoRange);
  fn("train.resume", t.resume, "resume from a checkpoint: auto (newest in the run) or a path",
     kNoRange);
  fn("train.stop_signals", t.stop_signals,
     "signals that end the run with a checkpoint and exit status 75 (SIGTERM, SIGUSR1, ...)",
     kNoRange);
  fn("train.nonfinite", t.nonfinite, "a non-finite loss or gradient norm: skip the step | stop",
     kNoRange);
  fn("train.nonfinite_limit", t.nonfinite_limit, "consecutive skipped steps that stop the run",
     IntRange{1, 1 << 20});
  auto& d = c.data;
  fn("data.path", d.path, "shard directory, or a pattern with {split}", kNoRange);
  fn("data.headerless", d.headerless, "also accept headerless nanoGPT .bin files", kNoRange);
  fn("data.train_split", d.train_split, "split name of the training shards", kNoRange);
  fn("data.val_split", d.val_split, "split name of the validation shards", kNoRange);
  fn("parallel.ep_size", c.parallel.ep_size, "expert-parallel group size", MC::kExperts);
  fn("parallel.timeout_s", c.parallel.timeout_s,
     "seconds a collective or file write may wait before the job is ended (0: no timeout)",
     kNoRange);
  fn("parallel.shared_memory", c.parallel.shared_memory,
     "expert-parallel ranks on one node exchange rows through shared memory (false: MPI "
     "messages, overlapped with the experts)",
     kNoRange);
  auto& k = c.checkpoint;
  fn("checkpoint.every", k.every, "steps between checkpoints (0: none)", kSteps);
  fn("checkpoint.keep_last", k.keep_last, "checkpoints kept (older are deleted)",
     IntRange{1, 1 << 20});
  fn("checkpoint.dir", k.dir, "checkpoint directory (default <train.out_dir>/checkpoints)",
     kNoRange);
  fn("checkpoint.probe_tokens", k.probe_tokens, "held-out tokens routed for every routing record",
     IntRange{1, INT32_MAX});
  fn("checkpoint.record_every", k.record_every, "extra routing records every N steps (0: off)",
     kSteps);
  fn("checkpoint.trace", k.trace, "append routing records to <train.out_dir>/trace.h5", kNoRange);
}

// Further command-line names of a key: the same CLI11 option, so that a key given under any of
// its names counts as given on the command line (and wins over the file).
std::string_view alias_of(std::string_view key) {
  if (key == "train.resume") return "--resume";
  return {};
}

// ---------------------------------------------------------------------------------------------
// Text helpers

// `s` for a one-line message: control characters as \xNN, everything else as is.
std::string printable(std::string_view s) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      out += fmt::format("\\x{:02x}", u);
    } else {
      out += c;
    }
  }
  return out;
}

// True when `s` is well-formed UTF-8 (no overlong forms, surrogates or code points > U+10FFFF).
bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + static_cast<std::size_t>(len) > s.size()) return false;
    for (int j = 1; j < len; ++j) {
      const auto cc = static_cast<unsigned char>(s[i + static_cast<std::size_t>(j)]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    const std::uint32_t min_cp = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += static_cast<std::size_t>(len);
  }
  return true;
}

// Edit distance (insertions, deletions, substitutions) between a and b.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// " (did you mean 'X'?)" for the closest candidate within edit distance 2, else "".
std::string suggestion(std::string_view name, const std::vector<std::string>& candidates) {
  const std::string best = closest_name(name, candidates);
  return best.empty() ? std::string() : fmt::format(" (did you mean '{}'?)", best);
}

std::vector<std::string> section_names() {
  std::vector<std::string> out;
  for (const std::string& k : config_keys()) {
    std::string s = k.substr(0, k.find('.'));
    if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(std::move(s));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writing TOML

std::string toml_string(std::string_view v) {
  std::string out = "\"";
  for (const char c : v) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (u < 0x20 || u == 0x7f) {
          out += fmt::format("\\u{:04X}", u);
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// Shortest text that reads back as exactly `v` (fmt's shortest round-trip form), spelled as a
// TOML float.
std::string toml_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

template <typename T>
std::string toml_value(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) {
    return toml_string(v);
  } else if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<T, double>) {
    return toml_float(v);
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + toml_string(v[i]);
    return s + "]";
  } else {
    return fmt::format("{}", v);
  }
}

// ---------------------------------------------------------------------------------------------
// Values: the rules every key's value obeys, whether it comes from a file, the command line or
// code (validate).

std::string string_problem(const std::string& v) {
  if (v.find('\0') != std::string::npos) return "must not contain a NUL character";
  if (!valid_utf8(v)) return "is not valid UTF-8";
  return {};
}

std::string range_text(std::int64_t v, IntRange r) {
  return r.contains(v) ? std::string()
                       : fmt::format("must lie in [{}, {}], got {}", r.min, r.max, v);
}

// "" when `v` is valid for a key of range `r`, else the problem (without the key).
template <typename T>
std::string value_problem(const T& v, IntRange r) {
  if constexpr (std::is_same_v<T, std::string>) {
    return string_problem(v);
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    for (std::size_t i = 0; i < v.size(); ++i) {
      const std::string p = string_problem(v[i]);
      if (!p.empty()) return fmt::format("element {} {}", i + 1, p);
    }
    return {};
  } else if constexpr (std::is_same_v<T, double>) {
    return std::isfinite(v) ? std::string() : fmt::format("must be a finite number, got {}", v);
  } else if constexpr (std::is_same_v<T, bool>) {
    return {};
  } else {
    if constexpr (std::is_unsigned_v<T>) {
      if (v > static_cast<std::uint64_t>(INT64_MAX))
        return fmt::format("must lie in [{}, {}], got {}", r.min, r.max, v);
    }
    return range_text(static_cast<std::int64_t>(v), r);
  }
}

// Stores the integer `raw` into `out` when it lies in `r` (so that the cast cannot wrap).
template <typename T>
std::string set_integer(std::int64_t raw, IntRange r, T& out) {
  std::string problem = range_text(raw, r);
  if (problem.empty()) out = static_cast<T>(raw);
  return problem;
}

const char* toml_type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

std::string wrong_type(const char* expected, const toml::node& n) {
  return fmt::format("expected {}, got {}", expected, toml_type_name(n));
}

// Reads TOML value `n` into `out` (type check, then the key's rules); "" or the problem.
template <typename T>
std::string from_toml(const toml::node& n, IntRange r, T& out) {
  if constexpr (std::is_same_v<T, std::string>) {
    if (!n.is_string()) return wrong_type("a string", n);
    out = n.as_string()->get();
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    const toml::array* a = n.as_array();
    if (a == nullptr) return wrong_type("an array of strings", n);
    std::vector<std::string> v;
    for (std::size_t i = 0; i < a->size(); ++i) {
      const toml::node& e = *a->get(i);
      if (!e.is_string())
        return fmt::format("expected an array of strings, element {} is {}", i + 1,
                           toml_type_name(e));
      v.push_back(e.as_string()->get());
    }
    out = std::move(v);
  } else if constexpr (std::is_same_v<T, bool>) {
    if (!n.is_boolean()) return wrong_type("a boolean (true or false)", n);
    out = n.as_boolean()->get();
  } else if constexpr (std::is_same_v<T, double>) {
    if (const auto* i = n.as_integer()) {
      constexpr std::int64_t exact = std::int64_t{1} << 53;  // integers a double holds exactly
      if (i->get() < -exact || i->get() > exact)
        return fmt::format("the integer {} has no exact float value; write it as a float",
                           i->get());
      out = static_cast<double>(i->get());
    } else if (const auto* f = n.as_floating_point()) {
      out = f->get();
    } else {
      return wrong_type("a float", n);
    }
  } else {
    if (!n.is_integer()) return wrong_type("an integer", n);
    return set_integer(n.as_integer()->get(), r, out);
  }
  return value_problem(out, r);
}

// Reads the command-line text `s` into `out`; "" or the problem.
template <typename T>
std::string from_text(std::string_view s, IntRange r, T& out) {
  if constexpr (std::is_same_v<T, std::string>) {
    out = std::string(s);
  } else if constexpr (std::is_same_v<T, bool>) {
    if (s == "true" || s == "1" || s == "yes" || s == "on") {
      out = true;
    } else if (s == "false" || s == "0" || s == "no" || s == "off") {
      out = false;
    } else {
      return fmt::format("'{}' is not a boolean (true or false)", printable(s));
    }
  } else if constexpr (std::is_same_v<T, double>) {
    std::string_view t = s.starts_with('+') ? s.substr(1) : s;
    const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
    if (t.empty() || ec != std::errc() || end != t.data() + t.size())
      return fmt::format("'{}' is not a finite number", printable(s));
  } else {
    std::string_view t = s.starts_with('+') ? s.substr(1) : s;
    std::int64_t raw = 0;
    const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), raw);
    if (ec == std::errc::result_out_of_range)
      return fmt::format("'{}' does not fit in a 64-bit integer; the range is [{}, {}]",
                         printable(s), r.min, r.max);
    if (t.empty() || ec != std::errc() || end != t.data() + t.size())
      return fmt::format("'{}' is not an integer", printable(s));
    return set_integer(raw, r, out);
  }
  return value_problem(out, r);
}

// ---------------------------------------------------------------------------------------------
// Reading TOML

// "FILE:LINE:COL" (just FILE when the position is unknown).
std::string where(const std::string& source, const toml::source_position& pos) {
  if (pos.line == 0) return printable(source);
  return fmt::format("{}:{}:{}", printable(source), pos.line, pos.column);
}

// Line `line` (1-based) of `text`, trimmed and shortened for a message.
std::string line_excerpt(std::string_view text, std::size_t line) {
  std::size_t begin = 0;
  for (std::size_t l = 1; l < line && begin != std::string_view::npos; ++l) {
    begin = text.find('\n', begin);
    if (begin != std::string_view::npos) ++begin;
  }
  if (begin == std::string_view::npos || begin > text.size()) return {};
  std::string_view s = text.substr(begin, text.find('\n', begin) - begin);
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  constexpr std::size_t kMax = 60;
  return s.size() > kMax ? printable(s.substr(0, kMax)) + "..." : printable(s);
}

// A light scan of TOML text (strings, comments, brackets; no values) that finds which key's
// value a parse error at line `line` (1-based) belongs to: "section.key", or "" for a table
// header or a line outside any key-value.
class KeyScanner {
 public:
  explicit KeyScanner(std::string_view text) : text_(text) {}

  std::string key_at(std::size_t line) {
    std::size_t at = 0;
    for (std::size_t l = 1; l < line && at < text_.size(); ++l) at = scan_line(at);
    if (depth_ > 0 || multiline_ != 0) return key_;  // inside a value that began earlier
    key_.clear();
    if (at < text_.size()) scan_line(at);
    return key_;
  }

 private:
  // Scans one line from `at`; returns the start of the next line.
  std::size_t scan_line(std::size_t at) {
    if (depth_ == 0 && multiline_ == 0) {
      while (at < text_.size() && (text_[at] == ' ' || text_[at] == '\t')) ++at;
      if (at < text_.size() && text_[at] == '[') return header(at);
      at = key(at);
    }
    while (at < text_.size() && text_[at] != '\n') at = value_char(at);
    return at < text_.size() ? at + 1 : at;
  }

  std::size_t header(std::size_t at) {
    const std::size_t end = text_.find('\n', at);
    std::string_view h = text_.substr(at, end == std::string_view::npos ? end : end - at);
    h = h.substr(0, h.find('#'));
    std::string name;
    for (const char c : h) {
      if (c != '[' && c != ']' && c != ' ' && c != '\t' && c != '"' && c != '\'' && c != '\r')
        name += c;
    }
    section_ = name;
    key_.clear();
    return end == std::string_view::npos ? text_.size() : end + 1;
  }

  // Reads "key =" at the start of a line (when there is one); returns where the value starts.
  std::size_t key(std::size_t at) {
    std::string name;
    char quote = 0;
    for (std::size_t i = at; i < text_.size() && text_[i] != '\n'; ++i) {
      const char c = text_[i];
      if (quote != 0) {
        if (c == quote) {
          quote = 0;
        } else {
          name += c;
        }
      } else if (c == '"' || c == '\'') {
        quote = c;
      } else if (c == '=') {
        key_ = section_.empty() ? name : section_ + "." + name;
        return i + 1;
      } else if (c == '#') {
        break;
      } else if (c != ' ' && c != '\t') {
        name += c;
      }
    }
    return at;
  }

  // Advances over one character (or one-line string) of a value; returns the next position.
  std::size_t value_char(std::size_t at) {
    if (multiline_ != 0) {  // inside a multi-line string, which ends at three quotes
      if (text_.compare(at, 3, std::string(3, multiline_)) == 0) {
        multiline_ = 0;
        return at + 3;
      }
      return at + (multiline_ == '"' && text_[at] == '\\' ? 2 : 1);
    }
    const char c = text_[at];
    if (c == '"' || c == '\'') {
      if (text_.compare(at, 3, std::string(3, c)) == 0) {
        multiline_ = c;
        return at + 3;
      }
      std::size_t i = at + 1;  // a one-line string ends at its quote or the line end
      while (i < text_.size() && text_[i] != c && text_[i] != '\n')
        i += (c == '"' && text_[i] == '\\') ? 2 : 1;
      return i < text_.size() && text_[i] == c ? i + 1 : std::min(i, text_.size());
    }
    if (c == '#') {
      const std::size_t end = text_.find('\n', at);
      return end == std::string_view::npos ? text_.size() : end;
    }
    if (c == '[' || c == '{') ++depth_;
    if ((c == ']' || c == '}') && depth_ > 0) --depth_;
    return at + 1;
  }

  std::string_view text_;
  std::string section_, key_;
  int depth_ = 0;
  char multiline_ = 0;
};

using Setter = std::function<std::string(const toml::node&)>;

// key -> reader of that key's value into `cfg`.
std::map<std::string, Setter, std::less<>> setters(RunConfig& cfg) {
  std::map<std::string, Setter, std::less<>> out;
  for_each_key(cfg, [&](const char* key, auto& value, const char*, IntRange r) {
    out.emplace(key, [&value, r](const toml::node& n) {
      std::decay_t<decltype(value)> v = value;
      std::string problem = from_toml(n, r, v);
      if (problem.empty()) value = std::move(v);
      return problem;
    });
  });
  return out;
}

[[noreturn]] void fail_at(const std::string& source, const toml::source_region& at,
                          const std::string& what) {
  RM_FAIL(Config, fmt::format("{}: {}", where(source, at.begin), what));
}

// One section's table: every key must be one of the section's keys, with a value it accepts.
void read_section(const std::string& source, const std::string& section, const toml::table& table,
                  const std::map<std::string, Setter, std::less<>>& set) {
  for (auto&& [name, node] : table) {
    const std::string key = section + "." + std::string(name.str());
    const auto it = set.find(key);
    if (it == set.end()) {
      fail_at(source, name.source(),
              fmt::format("unknown key '{}'{} (keys are listed in docs/configuration.md)",
                          printable(key), suggestion(key, config_keys())));
    }
    const std::string problem = it->second(node);
    if (!problem.empty()) fail_at(source, node.source(), fmt::format("{}: {}", key, problem));
  }
}

void read_root(const std::string& source, const toml::table& root, RunConfig& cfg) {
  const std::vector<std::string> sections = section_names();
  const auto set = setters(cfg);
  for (auto&& [name, node] : root) {
    const std::string section(name.str());
    if (std::find(sections.begin(), sections.end(), section) == sections.end()) {
      std::string hint;
      if (!node.is_table()) {  // a key written before any section header?
        for (const std::string& k : config_keys()) {
          if (hint.empty() && k.substr(k.find('.') + 1) == section)
            hint = fmt::format(" (did you mean {} in section [{}]?)", printable(section),
                               k.substr(0, k.find('.')));
        }
      }
      if (hint.empty()) hint = suggestion(section, sections);
      fail_at(source, name.source(),
              fmt::format("unknown section or key '{}' at the top level{}; the sections are "
                          "[model], [optim], [train], [data], [parallel], [checkpoint]",
                          printable(section), hint));
    }
    const toml::table* table = node.as_table();
    if (table == nullptr)
      fail_at(
          source, node.source(),
          fmt::format("{} must be a table ([{}]), got {}", section, section, toml_type_name(node)));
    read_section(source, section, *table, set);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void RunConfig::validate() const {
  for_each_key(*this, [](const char* key, const auto& value, const char*, IntRange r) {
    const std::string problem = value_problem(value, r);
    if (!problem.empty()) RM_FAIL(Config, fmt::format("{} {}", key, problem));
  });
  model.validate();
  optim.validate();
  RM_CHECK_KIND(Config, train.batch_size % train.grad_accum == 0,
                fmt::format("train.batch_size {} is not divisible by train.grad_accum {}",
                            train.batch_size, train.grad_accum));
  RM_CHECK_KIND(Config, !train.out_dir.empty(), "train.out_dir must not be empty");
  RM_CHECK_KIND(Config, !data.path.empty(), "data.path must not be empty");
  // The check involves two keys: name the one that was changed from its default first.
  const bool probe_default = checkpoint.probe_tokens == CheckpointConfig{}.probe_tokens;
  RM_CHECK_KIND(
      Config, checkpoint.probe_tokens >= model.seq_len,
      probe_default
          ? fmt::format("model.seq_len {} is longer than checkpoint.probe_tokens {} (the "
                        "held-out tokens routed for every routing record, at least one "
                        "sequence): raise checkpoint.probe_tokens to at least {} or lower "
                        "model.seq_len",
                        model.seq_len, checkpoint.probe_tokens, model.seq_len)
          : fmt::format("checkpoint.probe_tokens {} is shorter than one sequence (model.seq_len "
                        "{}): raise it to at least {} or lower model.seq_len",
                        checkpoint.probe_tokens, model.seq_len, model.seq_len));
  RM_CHECK_KIND(Config, model.n_experts % parallel.ep_size == 0,
                fmt::format("parallel.ep_size {} does not divide model.n_experts {}",
                            parallel.ep_size, model.n_experts));
  for (const std::string& s : train.stop_signals) {
    RM_CHECK_KIND(
        Config, s.empty() || stop_signal_number(s) != 0,
        fmt::format("train.stop_signals: unknown signal '{}' (one of {})", s, stop_signal_names()));
  }
  RM_CHECK_KIND(Config, train.nonfinite == "skip" || train.nonfinite == "stop",
                fmt::format("train.nonfinite must be skip or stop, got '{}'", train.nonfinite));
  RM_CHECK_KIND(
      Config, parallel.timeout_s >= 0 && parallel.timeout_s <= 1e9,
      fmt::format("parallel.timeout_s must be in [0, 1e9] (0: off), got {}", parallel.timeout_s));
}

std::string RunConfig::to_toml() const {
  std::string out, section;
  for_each_key(*this, [&](const char* key, const auto& value, const char*, IntRange) {
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

void read_config_toml(std::string_view text, const std::string& source, RunConfig& cfg) {
  toml::table root;
  try {
    root = toml::parse(text, std::string_view(source));
  } catch (const toml::parse_error& e) {
    const std::size_t at = e.source().begin.line;
    const std::string key = KeyScanner(text).key_at(at);
    const std::string line = line_excerpt(text, at);
    RM_FAIL(Config, fmt::format("{}: invalid TOML{}: {}{}", where(source, e.source().begin),
                                key.empty() ? "" : fmt::format(" in {}", printable(key)),
                                printable(e.description()),
                                line.empty() ? "" : fmt::format(" (line: {})", line)));
  }
  RunConfig next = cfg;  // all or nothing: cfg is unchanged when the text is refused
  read_root(source, root, next);
  cfg = std::move(next);
}

void read_config_file(const std::string& path, RunConfig& cfg) {
  constexpr std::uintmax_t kMaxBytes = 1 << 20;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    RM_FAIL(Config, fmt::format("config file {} does not exist or is not a file", printable(path)));
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  std::ifstream in(path, std::ios::binary);
  if (ec || !in.is_open())
    RM_FAIL(Config, fmt::format("config file {} cannot be read", printable(path)));
  if (size > kMaxBytes)
    RM_FAIL(Config, fmt::format("config file {} is larger than 1 MiB: not a configuration",
                                printable(path)));
  std::ostringstream text;
  if (size > 0) text << in.rdbuf();
  if (in.bad() || text.bad())
    RM_FAIL(Config, fmt::format("config file {} cannot be read", printable(path)));
  read_config_toml(text.str(), path, cfg);
}

void register_run_options(CLI::App& cmd, std::string& config_path) {
  cmd.add_option("--config", config_path,
                 "TOML configuration file (sections [model], [optim], [train], [data], "
                 "[parallel], [checkpoint]; see docs/configuration.md); the command line wins");
  const RunConfig defaults;
  for_each_key(defaults, [&](const char* key, const auto& value, const char* help, IntRange) {
    using T = std::decay_t<decltype(value)>;
    std::string names = fmt::format("--{}", key);
    if (!alias_of(key).empty()) names += fmt::format(",{}", alias_of(key));
    CLI::Option* opt = cmd.add_option(names, CLI::callback_t{}, help);
    if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      opt->delimiter(',')->expected(1, CLI::detail::expected_max_vector_size)->type_name("LIST");
      std::string shown;
      for (const std::string& v : value) shown += (shown.empty() ? "" : ",") + v;
      opt->default_str(shown);
    } else {
      opt->expected(1)->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
      if constexpr (std::is_same_v<T, std::string>) {
        opt->type_name("TEXT")->default_str(value);
      } else if constexpr (std::is_same_v<T, bool>) {
        opt->type_name("BOOL")->default_str(value ? "true" : "false");
      } else if constexpr (std::is_same_v<T, double>) {
        opt->type_name("FLOAT")->default_str(fmt::format("{}", value));
      } else {
        opt->type_name("INT")->default_str(fmt::format("{}", value));
      }
    }
  });
}

RunConfig resolve_run_config(const CLI::App& cmd, const std::string& config_path) {
  RunConfig cfg;
  if (!config_path.empty()) read_config_file(config_path, cfg);
  for_each_key(cfg, [&](const char* key, auto& value, const char*, IntRange r) {
    const CLI::Option* opt = cmd.get_option_no_throw(fmt::format("--{}", key));
    if (opt == nullptr || opt->count() == 0) return;
    const std::vector<std::string>& given = opt->results();
    std::string problem;
    if constexpr (std::is_same_v<std::decay_t<decltype(value)>, std::vector<std::string>>) {
      value = given;
      problem = value_problem(value, r);
    } else {
      problem = from_text(given.back(), r, value);
    }
    if (!problem.empty()) RM_FAIL(Config, fmt::format("--{}: {}", key, problem));
  });
  return cfg;
}

std::string closest_name(std::string_view name, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_d = 3;
  for (const std::string& c : candidates) {
    const std::size_t d = edit_distance(name, c);
    if (d < best_d) best = c, best_d = d;
  }
  return best;
}

std::vector<std::string> config_keys() {
  const RunConfig cfg;
  std::vector<std::string> keys;
  for_each_key(
      cfg, [&](const char* key, const auto&, const char*, IntRange) { keys.emplace_back(key); });
  return keys;
}

}  // namespace routemoe
