// `routemoe bench gemm`: GFLOP/s of the CPU GEMM (CBLAS) on the shapes of the reference
// training config (docs/performance.md) and on a large square GEMM, which is the machine's
// practical ceiling that later benchmarks compare a training step against.

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "framework/cli/commands.h"
#include "framework/cpu/kernels.h"
#include "framework/error.h"
#include "framework/rng.h"
#include "framework/tensor.h"
#include "framework/timer.h"

namespace routemoe::cli {

namespace {

struct GemmCase {
  std::string name;
  bool trans_a;
  bool trans_b;
  std::int64_t m, n, k, batch;
};

struct BenchGemmOptions {
  int threads = 0;
  double min_seconds = 0.5;
  std::int64_t square = 2048;
  std::string json;
  // Reference training config (issue: vocab 256, T 256, d 256, 4 heads, 8 experts, top-2,
  // d_ff 512, batch 8): N = 2048 tokens, 512 rows per expert when balanced.
  std::int64_t tokens = 2048, d = 256, heads = 4, seq = 256, d_ff = 512, experts = 8, top_k = 2;
  std::int64_t vocab = 256;
};

std::vector<GemmCase> model_cases(const BenchGemmOptions& o) {
  const std::int64_t rows_per_expert = o.tokens * o.top_k / o.experts;
  const std::int64_t dh = o.d / o.heads;
  const std::int64_t seqs = o.tokens / o.seq;
  return {
      {"qkv_fwd", false, true, o.tokens, 3 * o.d, o.d, 1},
      {"qkv_dweight", true, false, 3 * o.d, o.d, o.tokens, 1},
      {"attn_scores", false, true, o.seq, o.seq, dh, seqs * o.heads},
      {"attn_values", false, false, o.seq, dh, o.seq, seqs * o.heads},
      {"attn_proj_fwd", false, true, o.tokens, o.d, o.d, 1},
      {"expert_fc1_fwd", false, true, rows_per_expert, o.d_ff, o.d, 1},
      {"expert_fc2_fwd", false, true, rows_per_expert, o.d, o.d_ff, 1},
      {"expert_fc1_dinput", false, false, rows_per_expert, o.d, o.d_ff, 1},
      {"expert_fc1_dweight", true, false, o.d_ff, o.d, rows_per_expert, 1},
      {"lm_head_fwd", false, true, o.tokens, o.vocab, o.d, 1},
      {"square", false, false, o.square, o.square, o.square, 1},
  };
}

struct Result {
  GemmCase c;
  double best_s;
  double median_s;
  int reps;
};

Result run_case(const GemmCase& c, double min_seconds) {
  // Operands as stored: A is [m,k] or [k,m], B is [k,n] or [n,k]; lda/ldb are the row lengths.
  const std::int64_t a_rows = c.trans_a ? c.k : c.m, a_cols = c.trans_a ? c.m : c.k;
  const std::int64_t b_rows = c.trans_b ? c.n : c.k, b_cols = c.trans_b ? c.k : c.n;
  Tensor a = Tensor::empty({c.batch, a_rows, a_cols});
  Tensor b = Tensor::empty({c.batch, b_rows, b_cols});
  Tensor out = Tensor::zeros({c.batch, c.m, c.n});
  fill_uniform(a, 1, 1, -1.0f, 1.0f);
  fill_uniform(b, 1, 2, -1.0f, 1.0f);
  auto once = [&] {
    cpu::gemm_strided_batched<float>(
        c.trans_a, c.trans_b, c.m, c.n, c.k, 1.0f, a.data<float>(), a_cols, a_rows * a_cols,
        b.data<float>(), b_cols, b_rows * b_cols, 0.0f, out.data<float>(), c.n, c.m * c.n, c.batch);
  };
  once();  // warm-up: thread pool start, page faults
  std::vector<double> times;
  Timer total;
  while (times.size() < 3 || total.seconds() < min_seconds) {
    Timer t;
    once();
    times.push_back(t.seconds());
  }
  std::sort(times.begin(), times.end());
  return {c, times.front(), times[times.size() / 2], static_cast<int>(times.size())};
}

double gflops(const GemmCase& c, double seconds) {
  return 2.0 * static_cast<double>(c.m) * static_cast<double>(c.n) * static_cast<double>(c.k) *
         static_cast<double>(c.batch) / seconds * 1e-9;
}

}  // namespace

Runner register_bench_gemm(CLI::App& bench) {
  auto opts = std::make_shared<BenchGemmOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "gemm", "CPU GEMM GFLOP/s on the reference model's shapes and a large square GEMM");
  cmd->add_option("--threads", opts->threads, "CPU threads (0: library default = all cores)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--min-seconds", opts->min_seconds, "minimum timed seconds per case")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--square", opts->square, "size of the large square GEMM")
      ->check(CLI::Range(16, 16384));
  cmd->add_option("--json", opts->json, "also write the results as JSON to this file");
  return [opts]() {
    if (opts->threads > 0) cpu::set_num_threads(opts->threads);
    fmt::print(
        "routemoe bench gemm: CPU fp32 GEMM through CBLAS, {} threads, best of >= {:.2f} s per "
        "case\n",
        cpu::num_threads(), opts->min_seconds);
    std::vector<Result> results;
    for (const GemmCase& c : model_cases(*opts)) {
      Result r = run_case(c, opts->min_seconds);
      fmt::print(
          "bench gemm case={:<18} m={:<5} n={:<5} k={:<5} batch={:<3} {:>8.1f} GFLOP/s  "
          "(median {:.1f}, {} reps)\n",
          c.name, c.m, c.n, c.k, c.batch, gflops(c, r.best_s), gflops(c, r.median_s), r.reps);
      std::fflush(stdout);
      results.push_back(r);
    }
    const double ceiling = gflops(results.back().c, results.back().best_s);
    double model_flops = 0, model_seconds = 0;
    for (std::size_t i = 0; i + 1 < results.size(); ++i) {
      model_flops += gflops(results[i].c, 1.0);
      model_seconds += results[i].best_s;
    }
    const double model = model_flops / model_seconds;
    fmt::print(
        "bench gemm summary: model shapes {:.1f} GFLOP/s, square ceiling {:.1f} GFLOP/s, "
        "ratio={:.2f} (model/ceiling)\n",
        model, ceiling, model / ceiling);
    if (!opts->json.empty()) {
      std::ofstream f(opts->json);
      RM_CHECK_KIND(Io, f.good(), fmt::format("cannot open {} for writing", opts->json));
      f << "{\"threads\": " << cpu::num_threads() << ", \"cases\": [";
      for (std::size_t i = 0; i < results.size(); ++i) {
        const Result& r = results[i];
        f << (i ? ", " : "")
          << fmt::format(
                 "{{\"name\": \"{}\", \"m\": {}, \"n\": {}, \"k\": {}, \"batch\": {}, "
                 "\"gflops_best\": {:.3f}, \"gflops_median\": {:.3f}}}",
                 r.c.name, r.c.m, r.c.n, r.c.k, r.c.batch, gflops(r.c, r.best_s),
                 gflops(r.c, r.median_s));
      }
      f << fmt::format("], \"model_gflops\": {:.3f}, \"ceiling_gflops\": {:.3f}}}\n", model,
                       ceiling);
      RM_CHECK_KIND(Io, f.good(), fmt::format("write to {} failed", opts->json));
    }
    return 0;
  };
}

}  // namespace routemoe::cli
