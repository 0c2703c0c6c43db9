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
// `routemoe prepare`: text files -> token shards.
Runner register_prepare(CLI::App& app);
// `routemoe trace`: routing-fluctuation analysis of trace files and checkpoints (no MPI).
Runner register_trace(CLI::App& app);
// `routemoe inspect`: what a checkpoint or trace file holds; one-line errors for damaged files.
Runner register_inspect(CLI::App& app);

// `routemoe bench gemm`: CPU GEMM GFLOP/s on the model's shapes and a large square GEMM.
Runner register_bench_gemm(CLI::App& bench);
// `routemoe bench train`: training-step tokens/s vs the PyTorch reference, per router.
Runner register_bench_train(CLI::App& bench);
// `routemoe bench alltoall`: expert-parallel dispatch + combine vs a bare MPI_Alltoallv (MPI).
Runner register_bench_alltoall(CLI::App& bench);
// `routemoe bench checkpoint`: save/load time and size of a checkpoint (MPI for >1 rank).
Runner register_bench_checkpoint(CLI::App& bench);

}  // namespace routemoe::cli
