#pragma once
// Subcommands of the `routemoe` executable. Each register_* function adds its subcommand (with
// options bound to an options struct it owns) to the CLI11 app and returns a callable that runs
// it after parsing.

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>

namespace routemoe::cli {

using Runner = std::function<int()>;

// `routemoe train`: the training loop over a TOML config with --section.key overrides.
Runner register_train(CLI::App& app);
// `routemoe prepare`: text files -> token shards; --corrupt: corrupted held-out splits.
Runner register_prepare(CLI::App& app);
// `routemoe eval`: loss, bits per byte and perplexity of a checkpoint on a split.
Runner register_eval(CLI::App& app);
// `routemoe trace`: routing-fluctuation analysis of trace files and checkpoints (no MPI).
Runner register_trace(CLI::App& app);
// `routemoe inspect`: what a checkpoint or trace file holds; one-line errors for damaged files.
Runner register_inspect(CLI::App& app);

// `routemoe bench <name>`: the benchmarks of framework/bench (gemm, train, alltoall, checkpoint),
// all run by the benchmark engine (framework/bench/engine.h).
Runner register_bench(CLI::App& app);

}  // namespace routemoe::cli
