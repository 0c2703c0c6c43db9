// routemoe: the single executable. Subcommands are registered in framework/cli/*.cpp.
//
// Errors: any routemoe::Error or std::exception (std::bad_alloc included, with a hint) ends the
// process with exit code 1 and a one-line message naming the rank (routemoe::fatal_message); in
// a multi-rank job every rank is ended (MPI_Abort) instead of leaving the others waiting in a
// collective.

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "comm/mpi_runtime.h"
#include "framework/cli/commands.h"
#include "framework/error.h"

int main(int argc, char** argv) {
  CLI::App app{
      "routemoe: expert-parallel Mixture-of-Experts training with graph-of-tokens and "
      "adaptive-clustering routers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "routemoe 0.1.0");

  routemoe::cli::Runner run_train = routemoe::cli::register_train(app);
  routemoe::cli::Runner run_prepare = routemoe::cli::register_prepare(app);
  routemoe::cli::Runner run_eval = routemoe::cli::register_eval(app);
  routemoe::cli::Runner run_trace = routemoe::cli::register_trace(app);
  routemoe::cli::Runner run_inspect = routemoe::cli::register_inspect(app);
  routemoe::cli::Runner run_bench = routemoe::cli::register_bench(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
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
    // The one catch: every error (std::bad_alloc included) becomes one line naming the rank.
    std::fprintf(stderr, "routemoe: %s\n", routemoe::fatal_message(e).c_str());
    routemoe::comm::abort_world(1);
  }
}
