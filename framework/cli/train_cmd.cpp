// `routemoe train --config run.toml [--section.key=value ...]` (`routemoe prepare` is in
// prepare_cmd.cpp).

#include <fmt/format.h>

#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/cli/commands.h"
#include "framework/cli/train_console.h"
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
    TrainConsole console(st->cfg.train.progress);
    run_training(st->cfg, groups, &console);
    return 0;
  };
}

}  // namespace routemoe::cli
