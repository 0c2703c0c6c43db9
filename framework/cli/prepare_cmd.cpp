// `routemoe prepare`: text files or directories -> byte-level token shards with train, val and
// (optionally) test splits; `routemoe prepare --corrupt RECIPE --from DIR`: a corrupted copy of
// a prepared set's held-out splits (docs/data.md, docs/evaluation.md). The logic is in
// framework/data.h (prepare_corpus, prepare_corrupted); this file parses flags and prints.

#include <fmt/format.h>

#include <cstdio>

#include "framework/cli/commands.h"
#include "framework/config.h"
#include "framework/corruption.h"
#include "framework/data.h"
#include "framework/error.h"

namespace routemoe::cli {

namespace {

struct PrepareState {
  std::vector<std::string> inputs;
  std::string out;
  PrepareOptions options;
  bool no_separator = false;
  // --corrupt
  std::string corrupt;
  std::string from;
  double rate = -1.0;  // < 0: the recipe's default
  std::uint64_t seed = 1;
  std::string marker = "<unk>";
  std::string unit = "paragraph";
  std::int64_t min_per_unit = 1;
  std::vector<std::string> splits;
};

void add_options(CLI::App& cmd, PrepareState& st) {
  const RunConfig defaults;
  st.options.seq_len = defaults.model.seq_len;
  st.options.batch_size = defaults.train.batch_size;
  st.options.probe_tokens = defaults.checkpoint.probe_tokens;
  cmd.add_option("inputs", st.inputs,
                 "UTF-8 text files or directories (each file is one document)");
  cmd.add_option("--out", st.out, "output directory for <split>_*.bin and meta.json")->required();
  cmd.add_option("--val-fraction", st.options.val_fraction,
                 "share of tokens for validation (before the test split)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd.add_option("--test-fraction", st.options.test_fraction,
                 "share of tokens (at the end) for the test split; 0: no test split")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd.add_option("--shard-tokens", st.options.shard_tokens, "tokens per shard at most")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_flag("--overwrite", st.options.overwrite, "replace shards already in --out");
  cmd.add_flag("--no-doc-separator", st.no_separator,
               "do not start each document with the byte 0x1C");
  cmd.add_option("--seq-len", st.options.seq_len,
                 "size check: the model's sequence length (0: unchecked)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--batch-size", st.options.batch_size,
                 "size check: sequences per eval batch (train.batch_size)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--probe-tokens", st.options.probe_tokens,
                 "size check: tokens of the probe set, from val (checkpoint.probe_tokens)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--corrupt", st.corrupt,
                 "write a corrupted copy of --from's held-out splits: word-swap | char-noise")
      ->check(CLI::IsMember({"word-swap", "char-noise"}));
  cmd.add_option("--from", st.from, "--corrupt: the prepared (clean) data directory");
  cmd.add_option("--rate", st.rate,
                 "--corrupt: share of words (word-swap, default 0.025) or letters (char-noise, "
                 "default 0.05) changed")
      ->check(CLI::Range(0.0, 1.0));
  cmd.add_option("--seed", st.seed, "--corrupt: random seed of the recipe")->capture_default_str();
  cmd.add_option("--marker", st.marker, "word-swap: the unknown-word marker")
      ->capture_default_str();
  cmd.add_option("--unit", st.unit,
                 "word-swap: count per paragraph (the AC paper's code: a WikiText line is a "
                 "paragraph), per line, or over the whole text")
      ->check(CLI::IsMember({"paragraph", "line", "text"}))
      ->capture_default_str();
  cmd.add_option("--min-per-unit", st.min_per_unit,
                 "word-swap: at least this many swaps in a unit with words (the authors: 1)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--splits", st.splits, "--corrupt: splits to corrupt (default: val and test)")
      ->delimiter(',');
}

int run_prepare(const PrepareState& st) {
  RM_CHECK_KIND(Config, !st.inputs.empty(),
                "prepare: no input files or directories given (or use --corrupt with --from)");
  RM_CHECK_KIND(Config, st.from.empty(), "prepare: --from is only for --corrupt");
  PrepareOptions o = st.options;
  o.doc_separator = !st.no_separator;
  const PrepareResult r = prepare_corpus(st.inputs, st.out, o);
  for (const std::string& w : r.warnings) std::fprintf(stderr, "prepare: warning: %s\n", w.c_str());
  fmt::print("prepare: {} document(s){} -> {}\n", r.documents.size(),
             o.doc_separator ? ", each starting with the separator byte 0x1C" : "", st.out);
  fmt::print("  train {:>10} tokens in {} shard(s)\n", r.train_tokens, r.train_shards.size());
  fmt::print("  val   {:>10} tokens in {} shard(s)\n", r.val_tokens, r.val_shards.size());
  if (r.test_tokens > 0) {
    fmt::print("  test  {:>10} tokens in {} shard(s)\n", r.test_tokens, r.test_shards.size());
  }
  return 0;
}

int run_corrupt(const PrepareState& st) {
  RM_CHECK_KIND(Config, st.inputs.empty(),
                "prepare --corrupt reads the prepared set named by --from, not input files");
  RM_CHECK_KIND(Config, !st.from.empty(), "prepare --corrupt needs --from DIR (prepared data)");
  CorruptOptions o;
  o.kind = parse_corrupt_kind(st.corrupt);
  o.word_swap.seed = o.char_noise.seed = st.seed;
  if (st.rate >= 0) o.word_swap.rate = o.char_noise.rate = st.rate;
  o.word_swap.marker = st.marker;
  o.word_swap.unit = parse_corrupt_unit(st.unit);
  o.word_swap.min_per_unit = st.min_per_unit;
  o.splits = st.splits;
  o.shard_tokens = st.options.shard_tokens;
  o.overwrite = st.options.overwrite;
  const CorruptResult r = prepare_corrupted(st.from, st.out, o);
  const bool words = o.kind == CorruptKind::WordSwap;
  fmt::print("prepare: {} of {} (rate {}, seed {}{}) -> {}\n", corrupt_kind_name(o.kind), st.from,
             words ? o.word_swap.rate : o.char_noise.rate, st.seed,
             words ? fmt::format(", marker {}, unit {}", o.word_swap.marker, st.unit) : "", st.out);
  for (const CorruptedSplit& s : r.splits) {
    const CorruptionStats& c = s.stats;
    const double of = words ? static_cast<double>(c.words) : static_cast<double>(c.eligible);
    fmt::print("  {:<5} {} of {} {} changed ({:.2f}%), {} -> {} tokens\n", s.split, c.changed,
               words ? c.words : c.eligible, words ? "words" : "letters",
               of > 0 ? 100.0 * static_cast<double>(c.changed) / of : 0.0, s.source_tokens,
               s.tokens);
  }
  return 0;
}

}  // namespace

Runner register_prepare(CLI::App& app) {
  auto st = std::make_shared<PrepareState>();
  CLI::App* cmd = app.add_subcommand(
      "prepare",
      "turn text files or directories into token shards (byte tokenizer, vocab 256) with train, "
      "val and test splits; or, with --corrupt, corrupt a prepared set's held-out splits");
  add_options(*cmd, *st);
  return [st]() { return st->corrupt.empty() ? run_prepare(*st) : run_corrupt(*st); };
}

}  // namespace routemoe::cli
