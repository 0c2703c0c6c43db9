#include "framework/bench/benchmarks.h"

#include <algorithm>

#include "framework/ops.h"
#include "framework/rng.h"
#include "framework/tensor.h"

namespace routemoe::bench {

std::vector<Benchmark> all_benchmarks() {
  std::vector<Benchmark> v;
  v.push_back(gemm_benchmark());
  v.push_back(train_benchmark());
  v.push_back(alltoall_benchmark());
  v.push_back(checkpoint_benchmark());
  return v;
}

void add_model_options(CLI::App& cmd, ModelShape& s) {
  cmd.add_option("--vocab", s.vocab, "vocabulary size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--seq-len", s.seq_len, "context length T")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--d", s.d_model, "model width d_model")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--heads", s.n_heads, "attention heads")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--layers", s.n_layers, "blocks")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--moe-every", s.moe_every, "an MoE block every this many blocks (1: all)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--experts", s.n_experts, "experts per MoE layer")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--top-k", s.top_k, "experts per token")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--d-ff", s.d_ff, "expert (and dense FFN) hidden width")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
}

ModelConfig model_config(const ModelShape& s, const std::string& router, std::uint64_t seed) {
  ModelConfig c;
  c.vocab_size = s.vocab;
  c.seq_len = s.seq_len;
  c.d_model = s.d_model;
  c.n_heads = s.n_heads;
  c.n_layers = s.n_layers;
  c.d_ff = s.d_ff;
  c.n_experts = s.n_experts;
  c.top_k = s.top_k;
  c.moe_every = s.moe_every;
  c.routers = {router};
  c.seed = seed;
  c.validate();
  return c;
}

double square_gemm_gflops(std::int64_t n) {
  Tensor a = Tensor::empty({n, n}), b = Tensor::empty({n, n}), c = Tensor::zeros({n, n});
  fill_uniform(a, 1, 1, -1.0f, 1.0f);
  fill_uniform(b, 1, 2, -1.0f, 1.0f);
  const Stats s = time_case(Schedule{1, 3, 0.5}, [&] {
    ops::gemm<float>(Exec::cpu(), false, false, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(),
                     n, 0.0f, c.data<float>(), n);
  });
  const double dn = static_cast<double>(n);
  return 2.0 * dn * dn * dn / s.min * 1e-9;
}

}  // namespace routemoe::bench
