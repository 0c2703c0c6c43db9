// `routemoe train --config run.toml [--section.key=value ...]` and `routemoe prepare`.

#include <fmt/format.h>

#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/cli/commands.h"
#include "framework/config.h"
#include "framework/data.h"
#include "framework/train/trainer.h"

namespace routemoe::cli {

Runner register_train(CLI::App& app) {
  struct State {
    RunConfig cfg;
    std::string config_path;
  };
  auto st = std::make_shared<State>();
  CLI::App* cmd =
      app.add_subcommand("train", "train an MoE language model (see docs/configuration.md)");
  register_run_options(*cmd, st->cfg, st->config_path);
  cmd->add_option("--resume", st->cfg.train.resume,
                  "resume: auto (newest checkpoint of train.out_dir) or a checkpoint path (same as "
                  "--train.resume)");
  return [st, cmd]() {
    apply_config_file(*cmd, st->config_path);
    std::unique_ptr<comm::Communicator> world;
    if (comm::launched_by_mpi()) {
      comm::init_mpi(nullptr, nullptr);
      world = comm::make_mpi_world();
    } else {
      world = comm::make_self();
    }
    comm::ProcessGroups groups =
        comm::ProcessGroups::create(std::move(world), static_cast<int>(st->cfg.parallel.ep_size));
    const TrainSummary s = run_training(st->cfg, groups);
    if (groups.world->rank() != 0) return 0;
    fmt::print("\nsummary: {} steps in {:.1f} s, {:.0f} tokens/s\n", s.steps, s.seconds,
               s.tokens_per_s);
    fmt::print("  train loss {:.4f} (step 1: {:.4f})\n", s.final_loss, s.first_loss);
    fmt::print("  val loss   {:.4f} (best {:.4f}); unigram entropy {:.4f} nats\n", s.final_val_loss,
               s.best_val_loss, s.unigram_entropy);
    for (std::size_t m = 0; m < s.expert_load.size(); ++m) {
      std::int64_t total = 0;
      for (std::int64_t v : s.expert_load[m]) total += v;
      std::string shares;
      for (std::int64_t v : s.expert_load[m]) {
        shares += fmt::format(
            " {:4.1f}%",
            total > 0 ? 100.0 * static_cast<double>(v) / static_cast<double>(total) : 0.0);
      }
      fmt::print("  expert load, MoE layer {}:{}\n", m, shares);
    }
    fmt::print("  metrics: {}/metrics.jsonl\n", s.out_dir);
    fmt::print("memory (rank 0):\n{}", s.memory);
    return 0;
  };
}

Runner register_prepare(CLI::App& app) {
  struct State {
    std::vector<std::string> inputs;
    std::string out;
    double val_fraction = 0.1;
    std::int64_t shard_tokens = 100'000'000;
    bool overwrite = false;
  };
  auto st = std::make_shared<State>();
  CLI::App* cmd = app.add_subcommand(
      "prepare",
      "turn UTF-8 text files into token shards (byte tokenizer, vocab 256) with a "
      "train/validation split");
  cmd->add_option("inputs", st->inputs, "UTF-8 text files")->required()->check(CLI::ExistingFile);
  cmd->add_option("--out", st->out, "output directory for train_*.bin, val_*.bin, meta.json")
      ->required();
  cmd->add_option("--val-fraction", st->val_fraction, "share of tokens (at the end) for validation")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--shard-tokens", st->shard_tokens, "tokens per shard at most")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag("--overwrite", st->overwrite, "replace shards already in --out");
  return [st]() {
    const PrepareResult r =
        prepare_text(st->inputs, st->out, st->val_fraction, st->shard_tokens, st->overwrite);
    fmt::print("prepare: {} train tokens in {} shard(s), {} val tokens in {} shard(s) -> {}\n",
               r.train_tokens, r.train_shards.size(), r.val_tokens, r.val_shards.size(), st->out);
    return 0;
  };
}

}  // namespace routemoe::cli
