#pragma once
// The `routemoe bench` commands and what they share beyond the engine (framework/bench/engine.h).
// all_benchmarks() is the one list the CLI registers; each benchmark lives in its own file.

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "framework/bench/engine.h"
#include "framework/model_config.h"

namespace routemoe::bench {

// `bench gemm`: CPU GEMM GFLOP/s on the reference model's shapes and a large square GEMM
// (gemm.cpp).
Benchmark gemm_benchmark();
// `bench train`: training-step tokens/s against the PyTorch reference, per router (train.cpp).
Benchmark train_benchmark();
// `bench alltoall`: expert-parallel dispatch + combine against a bare MPI_Alltoallv (alltoall.cpp).
Benchmark alltoall_benchmark();
// `bench checkpoint`: save/load time and size of a checkpoint (checkpoint.cpp).
Benchmark checkpoint_benchmark();

// Every benchmark, in the order `routemoe bench --help` lists them.
std::vector<Benchmark> all_benchmarks();

// ---- shared by several benchmarks --------------------------------------------------------------

// The model of `bench train` and `bench checkpoint`; the defaults are the reference config of
// docs/performance.md (vocab 256, T 256, d 256, 4 heads, 4 layers all MoE, 8 experts top-2,
// d_ff 512).
struct ModelShape {
  std::int64_t vocab = 256, seq_len = 256, d_model = 256, n_heads = 4, n_layers = 4;
  std::int64_t d_ff = 512, n_experts = 8, top_k = 2, moe_every = 1;
};

// --vocab --seq-len --d --heads --layers --moe-every --experts --top-k --d-ff, bound to `shape`.
void add_model_options(CLI::App& cmd, ModelShape& shape);

// A validated ModelConfig of `shape` with `router` in every MoE layer (Error(Config) if invalid).
ModelConfig model_config(const ModelShape& shape, const std::string& router, std::uint64_t seed);

// Best GFLOP/s of an n x n x n fp32 GEMM through cpu::gemm, the machine's practical ceiling
// (the "square" case of `bench gemm`): one warm-up, then at least 3 repetitions and 0.5 s.
double square_gemm_gflops(std::int64_t n);

}  // namespace routemoe::bench
