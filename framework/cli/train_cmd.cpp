// `routemoe train --config run.toml [--section.key=value ...]` and `routemoe prepare`.

#include <fmt/format.h>

#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/cli/commands.h"
#include "framework/cli/train_console.h"
#include "framework/config.h"
#include "framework/data.h"
#include "framework/memory_estimate.h"
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
  // Every key as --section.key (train.resume also as --resume); the command line wins over
  // --config FILE, which wins over the defaults.
  register_run_options(*cmd, st->config_path);
  return [st, cmd]() {
    st->cfg = resolve_run_config(*cmd, st->config_path);
    st->cfg.validate();
    std::unique_ptr<comm::Communicator> world;
    if (comm::launched_by_mpi()) {
      comm::init_mpi(nullptr, nullptr);
      world = comm::make_mpi_world();
    } else {
      world = comm::make_self();
    }
    comm::ProcessGroups groups =
        comm::ProcessGroups::create(std::move(world), static_cast<int>(st->cfg.parallel.ep_size));
    // Before anything large is allocated: refuse, with the numbers, a run that cannot fit.
    check_memory_fits(estimate_memory(st->cfg, groups.world->size(), groups.ep_size),
                      comm::ranks_on_node(), available_memory());
    TrainConsole console(st->cfg.train.progress);
    run_training(st->cfg, groups, &console);
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
