// `routemoe train --config run.toml [--section.key=value ...]` (`routemoe prepare` is in
// prepare_cmd.cpp).

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

}  // namespace routemoe::cli
