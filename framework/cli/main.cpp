// routemoe: the single executable. Subcommands are registered in framework/cli/*.cpp.
//
// Errors (docs/architecture.md, "Messages and exit statuses"): every exception ends in the one
// catch below as one line. Errors caused by the user's input (configuration, flags, data and
// other files: ErrorKind Config, Data, Io) read "routemoe: <kind> error: <what is wrong and what
// to do>"; internal errors, and every error under --verbose, also name the rank, the source
// location and the failed condition. An error every rank agreed on (AgreedError,
// comm::agree_on_input) is printed once, by rank 0, and every rank exits with its status; any
// other error in a multi-rank job names its rank and ends every rank (MPI_Abort) instead of
// leaving the others waiting in a collective. The exit statuses are listed by kExitHelp.

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "build_info.h"
#include "comm/mpi_runtime.h"
#include "framework/cli/commands.h"
#include "framework/config.h"
#include "framework/cpu/kernels.h"
#include "framework/error.h"

namespace {

const std::vector<std::string> kCommands = {"train", "prepare", "eval",
                                            "trace", "inspect", "bench"};

constexpr const char* kExitHelp =
    "Exit statuses: 0 success; 1 internal error or I/O failure; 2 bad command line, "
    "configuration or input data; 3 a collective or file write timed out "
    "(parallel.timeout_s); 75 stopped by a stop signal after writing a checkpoint (resume with "
    "--resume auto); 128+N a second stop signal N.";

constexpr const char* kExamples =
    "Examples:\n"
    "  routemoe prepare examples/data/opticks.txt --out data/opticks --val-fraction 0.1\n"
    "  routemoe train --config examples/configs/tiny.toml --dry-run\n"
    "  routemoe train --config examples/configs/tiny.toml --train.out_dir runs/tiny\n"
    "  mpirun -np 2 routemoe train --config examples/configs/quickstart.toml "
    "--parallel.ep_size=2\n"
    "  routemoe train --config runs/tiny/config.toml --resume auto --train.steps 400\n"
    "  routemoe inspect runs/tiny/checkpoints/ckpt_00000200.h5\n"
    "  routemoe trace runs/tiny --svg plots\n"
    "  routemoe eval runs/tiny --split val";

std::string version_text() {
  const auto yes = [](int v) { return v != 0 ? "yes" : "no"; };
  return fmt::format("routemoe {} (commit {})\nbuilt with: CUDA {}, NCCL {}, parallel HDF5 {}",
                     ROUTEMOE_VERSION, ROUTEMOE_BUILD_COMMIT, yes(ROUTEMOE_BUILT_CUDA),
                     yes(ROUTEMOE_BUILT_NCCL), yes(ROUTEMOE_BUILT_PARALLEL_HDF5));
}

// This process's rank as the MPI launcher announces it before MPI starts (0 without one).
int launcher_rank() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"}) {
    if (const char* v = std::getenv(var); v != nullptr && *v != '\0') return std::atoi(v);
  }
  return 0;
}

// True for the one process of a job that prints a message every process has: rank 0.
bool prints_for_job() {
  return routemoe::comm::mpi_active() ? routemoe::comm::world_rank() == 0 : launcher_rank() == 0;
}

// The command named on the command line, checked before CLI11 parses it: "" when it is one of
// kCommands or when only --help/--version is asked for, else the problem.
std::string command_problem(int argc, char** argv) {
  const std::string names = "train, prepare, eval, trace, inspect, bench";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.starts_with("-")) {
      if (a == "-h" || a == "--help" || a == "--help-all" || a == "--version") return {};
      continue;
    }
    for (const std::string& c : kCommands) {
      if (a == c) return {};
    }
    const std::string near = routemoe::closest_name(a, kCommands);
    return fmt::format("unknown command '{}'{}; the commands are {} (see routemoe --help)", a,
                       near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near), names);
  }
  return fmt::format("no command given; the commands are {} (see routemoe --help)", names);
}

}  // namespace

int main(int argc, char** argv) {
  routemoe::cpu::reuse_freed_memory();
  CLI::App app{
      "routemoe: expert-parallel Mixture-of-Experts training with graph-of-tokens and "
      "adaptive-clustering routers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_text());
  bool verbose = false;
  app.add_flag(
      "--verbose", verbose,
      "errors also name the rank, the source location and the failed condition (before the "
      "command: routemoe --verbose train ...)");
  app.footer(fmt::format("{}\n\n{}", kExamples, kExitHelp));

  routemoe::cli::Runner run_train = routemoe::cli::register_train(app);
  routemoe::cli::Runner run_prepare = routemoe::cli::register_prepare(app);
  routemoe::cli::Runner run_eval = routemoe::cli::register_eval(app);
  routemoe::cli::Runner run_trace = routemoe::cli::register_trace(app);
  routemoe::cli::Runner run_inspect = routemoe::cli::register_inspect(app);
  routemoe::cli::Runner run_bench = routemoe::cli::register_bench(app);

  if (const std::string problem = command_problem(argc, argv); !problem.empty()) {
    if (prints_for_job()) std::fprintf(stderr, "routemoe: usage error: %s\n", problem.c_str());
    return routemoe::kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::string sub;
    for (const CLI::App* s : app.get_subcommands()) sub = s->get_name() + " ";
    if (prints_for_job()) {
      std::fprintf(stderr, "routemoe: usage error: %s (see routemoe %s--help)\n", e.what(),
                   sub.c_str());
    }
    return routemoe::kExitUsage;
  }

  try {
    int rc = 1;
    if (app.got_subcommand("train")) rc = run_train();
    if (app.got_subcommand("prepare")) rc = run_prepare();
    if (app.got_subcommand("eval")) rc = run_eval();
    if (app.got_subcommand("trace")) rc = run_trace();
    if (app.got_subcommand("inspect")) rc = run_inspect();
    if (app.got_subcommand("bench")) rc = run_bench();  // starts MPI itself where needed
    routemoe::comm::finalize_mpi();
    return rc;
  } catch (const std::exception& e) {
    const int status = routemoe::exit_status_for(e);
    const bool agreed = dynamic_cast<const routemoe::AgreedError*>(&e) != nullptr;
    const bool several = routemoe::comm::mpi_active() && routemoe::comm::world_size() > 1;
    if (agreed || !several) {
      // Every rank has this error (or there is one rank): one line for the job, a clean end.
      if (prints_for_job()) {
        std::fprintf(stderr, "routemoe: %s\n", routemoe::user_message(e, verbose, false).c_str());
      }
      std::fflush(stderr);
      routemoe::comm::finalize_mpi();
      return status;
    }
    std::fprintf(stderr, "routemoe: %s\n", routemoe::user_message(e, verbose, true).c_str());
    routemoe::comm::abort_world(status);
  }
}
