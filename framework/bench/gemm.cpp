// `routemoe bench gemm`: GFLOP/s of the CPU GEMM (CBLAS) on the shapes of the reference
// training config (docs/performance.md) and on a large square GEMM, which is the machine's
// practical ceiling that `bench train` compares a training step against.

#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

#include "framework/bench/benchmarks.h"
#include "framework/ops.h"
#include "framework/rng.h"
#include "framework/tensor.h"

namespace routemoe::bench {

namespace {

struct GemmCase {
  std::string name;
  bool trans_a;
  bool trans_b;
  std::int64_t m, n, k, batch;
};

struct GemmOptions {
  double min_seconds = 0.5;
  std::int64_t square = 2048;
  // Reference training config (vocab 256, T 256, d 256, 4 heads, 8 experts, top-2, d_ff 512,
  // batch 8): N = 2048 tokens, 512 rows per expert when balanced.
  std::int64_t tokens = 2048, d = 256, heads = 4, seq = 256, d_ff = 512, experts = 8, top_k = 2;
  std::int64_t vocab = 256;
};

std::vector<GemmCase> model_cases(const GemmOptions& o) {
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

// Seconds of one GEMM of case `c`, by `schedule`.
Stats time_gemm(const GemmCase& c, const Schedule& schedule) {
  // Operands as stored: A is [m,k] or [k,m], B is [k,n] or [n,k]; lda/ldb are the row lengths.
  const std::int64_t a_rows = c.trans_a ? c.k : c.m, a_cols = c.trans_a ? c.m : c.k;
  const std::int64_t b_rows = c.trans_b ? c.n : c.k, b_cols = c.trans_b ? c.k : c.n;
  Tensor a = Tensor::empty({c.batch, a_rows, a_cols});
  Tensor b = Tensor::empty({c.batch, b_rows, b_cols});
  Tensor out = Tensor::zeros({c.batch, c.m, c.n});
  fill_uniform(a, 1, 1, -1.0f, 1.0f);
  fill_uniform(b, 1, 2, -1.0f, 1.0f);
  // The warm-up starts the thread pool and takes the page faults.
  return time_case(schedule, [&] {
    ops::gemm_strided_batched<float>(Exec::cpu(), c.trans_a, c.trans_b, c.m, c.n, c.k, 1.0f,
                                     a.data<float>(), a_cols, a_rows * a_cols, b.data<float>(),
                                     b_cols, b_rows * b_cols, 0.0f, out.data<float>(), c.n,
                                     c.m * c.n, c.batch);
  });
}

double gflop(const GemmCase& c) {
  return 2.0 * static_cast<double>(c.m) * static_cast<double>(c.n) * static_cast<double>(c.k) *
         static_cast<double>(c.batch) * 1e-9;
}

void run(const GemmOptions& o, Context& ctx) {
  const Schedule schedule{ctx.common().warmup, ctx.common().iters, o.min_seconds};
  fmt::print(
      "routemoe bench gemm: CPU fp32 GEMM through CBLAS, {} threads; {} warm-up + >= {} timed "
      "repetitions and >= {:.2f} s per case; best (min time) and median reported\n",
      ctx.threads(), schedule.warmup, schedule.iters, schedule.min_seconds);
  std::fflush(stdout);
  const std::vector<GemmCase> cases = model_cases(o);
  std::vector<Stats> results;
  for (const GemmCase& c : cases) {
    const Stats s = time_gemm(c, schedule);
    results.push_back(s);
    print_case(CaseLine("gemm", "case", c.name, 18)
                   .field("m", std::to_string(c.m))
                   .field("n", std::to_string(c.n))
                   .field("k", std::to_string(c.k))
                   .field("batch", std::to_string(c.batch))
                   .figure("best", gflop(c) / s.min, 1, "GFLOP/s")
                   .figure("median", gflop(c) / s.median, 1, "GFLOP/s")
                   .field("reps", std::to_string(s.count)));
    ctx.json()
        .add_case()
        .str("name", c.name)
        .integer("m", c.m)
        .integer("n", c.n)
        .integer("k", c.k)
        .integer("batch", c.batch)
        .integer("reps", s.count)
        .num("gflops_best", gflop(c) / s.min)
        .num("gflops_median", gflop(c) / s.median)
        .stats_s("time", s);
  }
  // All cases but the last (square) make up the model shapes.
  double model_gflop = 0, model_seconds = 0;
  for (std::size_t i = 0; i + 1 < cases.size(); ++i) {
    model_gflop += gflop(cases[i]);
    model_seconds += results[i].min;
  }
  const double model = model_gflop / model_seconds;
  const double ceiling = gflop(cases.back()) / results.back().min;
  print_case(CaseLine("gemm", "case", "model_shapes", 18)
                 .figure("model", model, 1, "GFLOP/s")
                 .figure("ceiling", ceiling, 1, "GFLOP/s")
                 .ratio(model / ceiling, 2, "model/ceiling"));
  ctx.json()
      .header()
      .integer("threads", ctx.threads())
      .num("min_seconds", o.min_seconds)
      .num("model_gflops", model)
      .num("ceiling_gflops", ceiling);
}

}  // namespace

Benchmark gemm_benchmark() {
  Benchmark b;
  b.name = "gemm";
  b.description = "CPU GEMM GFLOP/s on the reference model's shapes and a large square GEMM";
  b.ranks = Ranks::One;
  b.defaults.warmup = 1;
  b.defaults.iters = 3;
  b.iters_help = "timed repetitions per case, at least (see --min-seconds)";
  b.setup = [](CLI::App& cmd) {
    auto o = std::make_shared<GemmOptions>();
    cmd.add_option("--min-seconds", o->min_seconds,
                   "keep repeating a case until this many seconds were timed")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    cmd.add_option("--square", o->square, "size of the large square GEMM")
        ->check(CLI::Range(16, 16384))
        ->capture_default_str();
    return [o](Context& ctx) { run(*o, ctx); };
  };
  return b;
}

}  // namespace routemoe::bench
