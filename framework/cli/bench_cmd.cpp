// `routemoe bench <name>`: every benchmark of framework/bench (bench::all_benchmarks()),
// registered through the benchmark engine (framework/bench/engine.h).

#include "framework/bench/benchmarks.h"
#include "framework/cli/commands.h"

namespace routemoe::cli {

Runner register_bench(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "benchmarks (not tests): print measured figures");
  bench->require_subcommand(1);
  return bench::add_benchmarks(*bench, bench::all_benchmarks());
}

}  // namespace routemoe::cli
