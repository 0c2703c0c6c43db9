// `routemoe train --config run.toml [--section.key=value ...] [--dry-run]` (`routemoe prepare`
// is in prepare_cmd.cpp).

#include <fmt/format.h>

#include <cstdio>

#include "comm/agree.h"
#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/cli/commands.h"
#include "framework/cli/train_console.h"
#include "framework/config.h"
#include "framework/data.h"
#include "framework/error.h"
#include "framework/memory_estimate.h"
#include "framework/train/preempt.h"
#include "framework/train/trainer.h"

namespace routemoe::cli {

namespace {

// Unknown --options (kept by allow_extras so that they are checked by every rank together):
// Error(Config) naming the first with the closest option.
void check_no_extras(const CLI::App& cmd) {
  const std::vector<std::string> extra = cmd.remaining();
  if (extra.empty()) return;
  std::vector<std::string> names;
  for (const CLI::Option* o : cmd.get_options()) {
    for (const std::string& n : o->get_lnames()) names.push_back("--" + n);
  }
  std::string first = extra.front();
  first = first.substr(0, first.find('='));
  const std::string near = closest_name(first, names);
  RM_FAIL(Config, fmt::format("unknown option '{}'{}; every configuration key is an option "
                              "--section.key (routemoe train --help, docs/configuration.md)",
                              first, near.empty() ? "" : fmt::format(" (did you mean {}?)", near)));
}

// Warnings about a configuration that is valid but probably not what was meant (rank 0).
void warn_about(const RunConfig& cfg) {
  if (cfg.optim.warmup >= cfg.train.steps) {
    std::fprintf(stderr,
                 "routemoe: warning: optim.warmup %lld >= train.steps %lld: the learning rate "
                 "never reaches optim.lr; lower optim.warmup\n",
                 static_cast<long long>(cfg.optim.warmup), static_cast<long long>(cfg.train.steps));
  }
}

void print_dry_run(const RunConfig& cfg, const MemoryEstimate& mem, const DryRunReport& rep,
                   int world) {
  fmt::print("routemoe train --dry-run: the configuration is valid; nothing was written\n\n");
  fmt::print("# resolved configuration\n{}\n", cfg.to_toml());
  fmt::print("parameters: {} ({} dense on every rank, {} in experts)\n", mem.params_total,
             cfg.model.param_count().dense, cfg.model.param_count().experts);
  fmt::print("data: {} train tokens, {} val tokens\n", rep.train_tokens, rep.val_tokens);
  fmt::print("ranks: {}, expert-parallel size {}, device cpu, {} thread(s) per rank\n", world,
             cfg.parallel.ep_size, rep.threads);
  fmt::print("memory per rank (estimate): {}\n", describe(mem));
  fmt::print(
      "time per step: {:.1f} ms, measured on one training step of the first batch (it includes "
      "first-touch allocation, so steps of the run are usually faster); {} steps: about {:.0f} s "
      "plus validation and checkpoints\n",
      rep.step_seconds * 1e3, cfg.train.steps,
      rep.step_seconds * static_cast<double>(cfg.train.steps));
}

}  // namespace

Runner register_train(CLI::App& app) {
  struct State {
    RunConfig cfg;
    std::string config_path;
    bool dry_run = false;
  };
  auto st = std::make_shared<State>();
  CLI::App* cmd =
      app.add_subcommand("train", "train an MoE language model (see docs/configuration.md)");
  // Every key as --section.key (train.resume also as --resume); the command line wins over
  // --config FILE, which wins over the defaults.
  register_run_options(*cmd, st->config_path);
  cmd->add_flag("--dry-run", st->dry_run,
                "validate the configuration, the data and the run directory, print the resolved "
                "configuration, the parameter count, the memory per rank and the time of one "
                "step; write nothing");
  cmd->allow_extras();
  return [st, cmd]() {
    std::unique_ptr<comm::Communicator> world;
    if (comm::launched_by_mpi()) {
      comm::init_mpi(nullptr, nullptr);
      world = comm::make_mpi_world();
    } else {
      world = comm::make_self();
    }
    // Every rank checks the command line, the file and the layout; an error is reported once.
    MemoryEstimate mem;
    const int node_ranks = comm::ranks_on_node();  // collective: outside the checks
    comm::agree_on_input(*world, [&] {
      check_no_extras(*cmd);
      st->cfg = resolve_run_config(*cmd, st->config_path);
      st->cfg.validate();
      RM_CHECK_KIND(Config, world->size() % st->cfg.parallel.ep_size == 0,
                    fmt::format("parallel.ep_size {} must divide the number of ranks ({})",
                                st->cfg.parallel.ep_size, world->size()));
      const RunConfig& c = st->cfg;
      RM_CHECK_KIND(Config, c.train.batch_size % (world->size() * c.train.grad_accum) == 0,
                    fmt::format("train.batch_size {} must be divisible by ranks ({}) x "
                                "train.grad_accum ({})",
                                c.train.batch_size, world->size(), c.train.grad_accum));
      // Before anything large is allocated: refuse, with the numbers, a run that cannot fit.
      mem = estimate_memory(st->cfg, world->size(), static_cast<int>(st->cfg.parallel.ep_size));
      check_memory_fits(mem, node_ranks, available_memory());
    });
    // The stop signals are handled from here until MPI has ended: one that arrives before the
    // first step stops the run after it (run_training's own guard keeps it), one that arrives
    // after the last step (while the plots are drawn or the ranks finalise) finds the run
    // finished and must not kill the process.
    const StopSignals signals(st->cfg.train.stop_signals);
    const int world_size = world->size();
    if (world->rank() == 0) warn_about(st->cfg);
    comm::ProcessGroups groups =
        comm::ProcessGroups::create(std::move(world), static_cast<int>(st->cfg.parallel.ep_size),
                                    st->cfg.parallel.shared_memory);
    if (st->dry_run) {
      const DryRunReport rep = dry_run(st->cfg, groups);
      if (groups.world->rank() == 0) print_dry_run(st->cfg, mem, rep, world_size);
      return 0;
    }
    TrainConsole console(st->cfg.train.progress);
    const TrainSummary summary = run_training(st->cfg, groups, &console);
    const int late = StopSignals::received();
    if (late != 0 && summary.stop_signal == 0 && groups.world->rank() == 0) {
      fmt::print("{} arrived after the last step; the run is finished, nothing to stop\n",
                 signal_name(late));
      std::fflush(stdout);
    }
    comm::finalize_mpi();  // inside the guard (main's own call then finds MPI ended)
    return 0;
  };
}

}  // namespace routemoe::cli
