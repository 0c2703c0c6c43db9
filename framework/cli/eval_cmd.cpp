// `routemoe eval CHECKPOINT|RUN_DIR [--split val|test|NAME] [--data PATH] [--batches N|all]
//  [--capacity dropless|train] [--micro-batch N] [--ep-size N] [--json FILE]`
// (docs/evaluation.md): the mean cross-entropy, bits per byte and perplexity of a checkpoint
// on a split, on any number of ranks (under mpirun or not). The model comes from the
// checkpoint's stored configuration; the evaluation itself is framework/train/evaluate.h, the
// code the trainer's validation passes run, so that `eval --capacity train` of a checkpoint
// gives the validation loss `train` logged at that step (same batches).

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>
#include <thread>

#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/cli/commands.h"
#include "framework/data.h"
#include "framework/error.h"
#include "framework/json.h"
#include "framework/ops.h"
#include "framework/optim.h"
#include "framework/runfile.h"
#include "framework/train/checkpoint.h"
#include "framework/train/evaluate.h"
#include "layers/model.h"

namespace routemoe::cli {

namespace {

struct EvalState {
  std::string target;  // checkpoint or run directory
  std::string split;   // "": the checkpoint's data.val_split
  std::string data;    // "": the checkpoint's data.path
  std::string batches = "all";
  std::string capacity = "dropless";
  std::int64_t micro_batch = 0;
  std::int64_t ep_size = 0;
  int threads = 0;
  std::string json;
};

// What one evaluation reports (rank 0 prints it).
struct EvalReport {
  StoredCheckpoint ckpt;
  std::string data;
  std::string split;
  std::int64_t split_tokens = 0;
  std::size_t shards = 0;
  std::int64_t available_batches = 0;
  bool byte_tokens = false;
  bool dropless = true;
  int ranks = 1;
  int ep_size = 1;
  EvalResult result;
};

std::int64_t parse_batches(const std::string& text) {
  if (text == "all") return 0;
  std::size_t used = 0;
  long long n = -1;
  try {
    n = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  RM_CHECK_KIND(Config, used == text.size() && n >= 1,
                fmt::format("eval: --batches '{}' must be 'all' or a positive integer", text));
  return n;
}

// The dataset, with a hint when the checkpoint's own data path does not resolve from here.
TokenDataset load_split(const EvalState& st, const RunConfig& cfg, const std::string& data,
                        const std::string& split) {
  try {
    return TokenDataset(data, split, static_cast<int>(cfg.model.vocab_size), cfg.data.headerless);
  } catch (const Error& e) {
    if (!st.data.empty() || e.kind() != ErrorKind::Data) throw;
    RM_FAIL(Data, fmt::format("{} (the checkpoint's data.path; give --data to evaluate on data "
                              "elsewhere)",
                              e.detail()));
  }
}

EvalReport evaluate(const EvalState& st, comm::ProcessGroups& groups, StoredCheckpoint ckpt) {
  const RunConfig& cfg = ckpt.config;
  comm::Communicator& world = *groups.world;
  EvalReport rep;
  rep.data = st.data.empty() ? cfg.data.path : st.data;
  rep.split = st.split.empty() ? cfg.data.val_split : st.split;
  rep.dropless = st.capacity == "dropless";
  rep.ranks = world.size();
  rep.ep_size = groups.ep_size;
  const TokenDataset data = load_split(st, cfg, rep.data, rep.split);
  rep.split_tokens = data.size();
  rep.shards = data.files().size();
  rep.byte_tokens = is_byte_tokenized(data);
  const BatchLoader loader(data, {cfg.train.batch_size, cfg.model.seq_len, cfg.train.seed});
  rep.available_batches = loader.eval_num_batches();

  const int threads =
      st.threads > 0
          ? st.threads
          : std::max(1, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) /
                            std::max(1, comm::ranks_on_node()));
  ops::set_num_threads(threads);
  Model model(cfg.model, groups.ep.get());
  AdamW optimizer(model.params(), cfg.optim);
  load_checkpoint(ckpt.path, model, optimizer);

  EvalOptions eo;
  eo.max_batches = parse_batches(st.batches);
  // The token groups of one forward pass are those of the run's own validation passes (each
  // training rank's rows of a batch), whatever the number of ranks here.
  eo.micro_batch = st.micro_batch > 0
                       ? st.micro_batch
                       : cfg.train.batch_size / std::max<std::int64_t>(1, ckpt.info.world_size);
  eo.dropless = rep.dropless;
  rep.result = evaluate_split(model, loader, eo, world);
  rep.ckpt = std::move(ckpt);
  return rep;
}

std::string number(double v) {
  return std::isfinite(v) ? fmt::format("{:.17g}", v) : "null";
}

void print_report(const EvalReport& r) {
  const RunConfig& cfg = r.ckpt.config;
  const double ppl = std::exp(r.result.loss);
  fmt::print("routemoe eval\n");
  fmt::print("  checkpoint  {} (step {}, routers {})\n", r.ckpt.path, r.ckpt.info.step,
             runfile::join_routers(r.ckpt.info.routers));
  fmt::print("  data        {}, split {}: {} tokens in {} shard(s){}\n", r.data, r.split,
             r.split_tokens, r.shards, r.byte_tokens ? ", byte tokenizer" : "");
  fmt::print(
      "  batches     {} of {} (sequential windows, {} sequences x {} tokens each): {} "
      "predicted tokens\n",
      r.result.batches, r.available_batches, cfg.train.batch_size, cfg.model.seq_len,
      r.result.tokens);
  if (r.dropless) {
    fmt::print("  routing     dropless: every routed slot kept{}\n",
               cfg.model.capacity_factor > 0
                   ? fmt::format(" (training capacity factor {}: --capacity train)",
                                 cfg.model.capacity_factor)
                   : std::string(" (the model trained dropless too)"));
  } else {
    fmt::print("  routing     training capacity factor {}\n",
               cfg.model.capacity_factor > 0 ? fmt::format("{}", cfg.model.capacity_factor)
                                             : std::string("<= 0: dropless"));
  }
  fmt::print("  layout      {} rank(s), ep_size {}, {} sequences per forward pass\n", r.ranks,
             r.ep_size, r.result.micro_batch);
  fmt::print("  loss        {:.6f} nats/token\n", r.result.loss);
  if (r.byte_tokens) {
    fmt::print("  bits/byte   {:.6f}\n", bits_per_byte(r.result.loss, 1.0));
  } else {
    fmt::print("  bits/byte   n/a (the tokens are not bytes)\n");
  }
  fmt::print("  perplexity  {:.4f}\n", ppl);
}

void write_json(const std::string& path, const EvalReport& r) {
  const RunConfig& cfg = r.ckpt.config;
  std::string o = "{";
  o += fmt::format("\"checkpoint\": {}, \"step\": {}, \"routers\": {}, ", json_quote(r.ckpt.path),
                   r.ckpt.info.step, json_quote(runfile::join_routers(r.ckpt.info.routers)));
  o += fmt::format("\"data\": {}, \"split\": {}, \"split_tokens\": {}, ", json_quote(r.data),
                   json_quote(r.split), r.split_tokens);
  o += fmt::format(
      "\"batches\": {}, \"available_batches\": {}, \"batch_size\": {}, "
      "\"seq_len\": {}, \"tokens\": {}, ",
      r.result.batches, r.available_batches, cfg.train.batch_size, cfg.model.seq_len,
      r.result.tokens);
  o += fmt::format("\"capacity\": \"{}\", \"capacity_factor\": {}, ",
                   r.dropless ? "dropless" : "train", number(cfg.model.capacity_factor));
  o += fmt::format("\"ranks\": {}, \"ep_size\": {}, \"micro_batch\": {}, ", r.ranks, r.ep_size,
                   r.result.micro_batch);
  o += fmt::format("\"loss\": {}, \"bits_per_byte\": {}, \"perplexity\": {}}}\n",
                   number(r.result.loss),
                   r.byte_tokens ? number(bits_per_byte(r.result.loss, 1.0)) : "null",
                   number(std::exp(r.result.loss)));
  std::ofstream out(path, std::ios::trunc);
  out << o;
  out.close();
  RM_CHECK_KIND(Io, out.good(), fmt::format("eval: cannot write {}", path));
}

int run_eval(const EvalState& st) {
  std::unique_ptr<comm::Communicator> world;
  if (comm::launched_by_mpi()) {
    comm::init_mpi(nullptr, nullptr);
    world = comm::make_mpi_world();
  } else {
    world = comm::make_self();
  }
  const std::string path = resolve_checkpoint(st.target);
  StoredCheckpoint ckpt = read_stored_checkpoint(path);
  // Data parallel by default (every rank holds all experts): then every forward pass is the
  // same computation whatever the rank count, and the result is identical on 1, 2 or 4 ranks.
  // Under expert parallelism the expert GEMMs see tokens of several ranks at once, which moves
  // the loss at rounding level (docs/evaluation.md).
  const int ep = st.ep_size > 0 ? static_cast<int>(st.ep_size) : 1;
  RM_CHECK_KIND(Config, ckpt.config.model.n_experts % ep == 0,
                fmt::format("eval: --ep-size {} must divide the {} experts", ep,
                            ckpt.config.model.n_experts));
  comm::ProcessGroups groups = comm::ProcessGroups::create(std::move(world), ep);
  const EvalReport rep = evaluate(st, groups, std::move(ckpt));
  if (groups.world->rank() == 0) {
    print_report(rep);
    if (!st.json.empty()) write_json(st.json, rep);
  }
  return 0;
}

}  // namespace

Runner register_eval(CLI::App& app) {
  auto st = std::make_shared<EvalState>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "mean loss, bits per byte and perplexity of a checkpoint on a split (docs/evaluation.md)");
  cmd->add_option("checkpoint", st->target,
                  "checkpoint file, or a run directory (its newest checkpoint)")
      ->required();
  cmd->add_option("--split", st->split,
                  "split name: val, test, or any <name>_*.bin set (default: the checkpoint's "
                  "data.val_split, val)");
  cmd->add_option("--data", st->data,
                  "prepared data: directory, {split} pattern, glob or file (default: the "
                  "checkpoint's data.path)");
  cmd->add_option("--batches", st->batches,
                  "eval batches from the start of the split, or all (full batches only)")
      ->capture_default_str();
  cmd->add_option("--capacity", st->capacity,
                  "dropless (every routed slot kept) or train (the training capacity factor, "
                  "as train's validation)")
      ->check(CLI::IsMember({"dropless", "train"}))
      ->capture_default_str();
  cmd->add_option("--micro-batch", st->micro_batch,
                  "sequences per forward pass (default: the batch size / the training run's "
                  "ranks, as its validation)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ep-size", st->ep_size,
                  "expert-parallel group size; divides the ranks and the experts (default 1: "
                  "every rank holds all experts, results identical on any rank count)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads", st->threads, "CPU threads per rank (0: cores / ranks on the node)")
      ->capture_default_str();
  cmd->add_option("--json", st->json, "also write the result as JSON to this file");
  return [st]() { return run_eval(*st); };
}

}  // namespace routemoe::cli
