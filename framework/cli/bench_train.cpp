// `routemoe bench train`: tokens/s of one training step of the reference config on this
// framework and, in the same run and with the same number of threads, of the independent
// PyTorch reference (tests/reference/reference_model.py, run eagerly by
// tests/reference/bench_step.py under Debian's /usr/bin/python3), for each router; plus the
// step's achieved GFLOP/s against a square-GEMM ceiling measured in the same run, and each
// router's step-time overhead over topk (docs/performance.md).
//
// A training step, on both sides: zero the gradients, forward + backward of the loss, clip by
// global norm, one AdamW update. Data are random tokens (Philox), weights are the framework's
// initialisation (ours) and torch's random initialisation (theirs): only the time is compared.

#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "framework/cli/commands.h"
#include "framework/cpu/kernels.h"
#include "framework/error.h"
#include "framework/model_config.h"
#include "framework/optim.h"
#include "framework/params.h"
#include "framework/rng.h"
#include "framework/tensor.h"
#include "framework/timer.h"
#include "layers/model.h"

namespace routemoe::cli {

namespace {

struct BenchTrainOptions {
  int threads = 0;  // 0: all cores
  int warmup = 2;
  int steps = 5;
  std::vector<std::string> routers = {"topk", "similarity", "attention", "ac"};
  std::string python = "/usr/bin/python3";
  std::string script;  // empty: tests/reference/bench_step.py found from the source tree / cwd
  bool no_torch = false;
  std::uint64_t seed = 1;
  std::int64_t square = 2048;
  std::string json;
  // Reference config (docs/performance.md): every block is an MoE block with the router under test.
  std::int64_t batch = 8, seq_len = 256, vocab = 256, d_model = 256, n_heads = 4, n_layers = 4;
  std::int64_t d_ff = 512, n_experts = 8, top_k = 2, moe_every = 1;
};

ModelConfig model_config(const BenchTrainOptions& o, const std::string& router) {
  ModelConfig c;
  c.vocab_size = o.vocab;
  c.seq_len = o.seq_len;
  c.d_model = o.d_model;
  c.n_heads = o.n_heads;
  c.n_layers = o.n_layers;
  c.d_ff = o.d_ff;
  c.n_experts = o.n_experts;
  c.top_k = o.top_k;
  c.moe_every = o.moe_every;
  c.routers = {router};
  c.seed = o.seed;
  c.validate();
  return c;
}

// Forward FLOPs of one step (2 per multiply-add), counting the matrix products only
// (N = B·T tokens, H heads, dh = d/H, E experts, k = top_k, V = vocab):
//   every block, attention: QKV 2·N·d·3d + scores 2·B·H·T·T·dh (= 2·B·T²·d) + P·V 2·B·T²·d
//     + output projection 2·N·d·d. The full T×T products are counted (no causal halving).
//   MoE block, experts: (FC1 + FC2) over the N·k routed slots (dropless) = 2 · 2·(N·k)·d·d_ff.
//   MoE block, router: gate logits 2·N·d·E (topk, similarity, attention, and ac on the first
//     MoE layer, which routes with topk); similarity adds S = U·Uᵀ per sequence 2·B·T²·d and
//     p̃ = S·p 2·B·T²·E; attention adds p̃ = Ā·p 2·B·T²·E; ac scores (u⊙M)·êᵀ 2·N·d·E.
//   dense block: 2 · 2·N·d·d_ff.   LM head (tied): 2·N·d·V.
// A training step = forward + backward, backward = 2 × forward (gradients with respect to
// both operands of every product), so step FLOPs = 3 × forward FLOPs. Element-wise work
// (LayerNorm, GELU, softmax, AdamW) is not counted.
double step_flops(const ModelConfig& c, std::int64_t batch) {
  const double B = static_cast<double>(batch), T = static_cast<double>(c.seq_len);
  const double N = B * T, d = static_cast<double>(c.d_model), F = static_cast<double>(c.d_ff);
  const double E = static_cast<double>(c.n_experts), k = static_cast<double>(c.top_k);
  const double V = static_cast<double>(c.vocab_size);
  double fwd = 2.0 * N * d * V;  // LM head
  std::int64_t moe_layer = 0;
  for (std::int64_t l = 0; l < c.n_layers; ++l) {
    fwd += 2.0 * N * d * 3.0 * d + 2.0 * 2.0 * B * T * T * d + 2.0 * N * d * d;
    if (!c.is_moe_block(l)) {
      fwd += 2.0 * 2.0 * N * d * F;
      continue;
    }
    fwd += 2.0 * 2.0 * (N * k) * d * F;
    switch (c.effective_router(moe_layer++)) {
      case RouterKind::TopK:
        fwd += 2.0 * N * d * E;
        break;
      case RouterKind::Similarity:
        fwd += 2.0 * N * d * E + 2.0 * B * T * T * d + 2.0 * B * T * T * E;
        break;
      case RouterKind::Attention:
        fwd += 2.0 * N * d * E + 2.0 * B * T * T * E;
        break;
      case RouterKind::AC:
        fwd += 2.0 * N * d * E;
        break;
    }
  }
  return 3.0 * fwd;
}

double median(std::vector<double> v) {
  RM_CHECK(!v.empty(), "median of no values");
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Best GFLOP/s of a square n×n×n fp32 GEMM through cpu::gemm (as `routemoe bench gemm`'s
// "square" case): one warm-up, then at least 3 repetitions and 0.5 s.
double square_gemm_gflops(std::int64_t n) {
  Tensor a = Tensor::empty({n, n}), b = Tensor::empty({n, n}), c = Tensor::zeros({n, n});
  fill_uniform(a, 1, 1, -1.0f, 1.0f);
  fill_uniform(b, 1, 2, -1.0f, 1.0f);
  auto once = [&] {
    cpu::gemm<float>(false, false, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(), n, 0.0f,
                     c.data<float>(), n);
  };
  once();
  double best = 1e300;
  int reps = 0;
  Timer total;
  while (reps < 3 || total.seconds() < 0.5) {
    Timer t;
    once();
    best = std::min(best, t.seconds());
    ++reps;
  }
  const double dn = static_cast<double>(n);
  return 2.0 * dn * dn * dn / best * 1e-9;
}

// Median seconds of our training step for `router`.
double time_ours(const BenchTrainOptions& o, const ModelConfig& mc) {
  Model model(mc);
  ParamStore& params = model.params();
  const OptimConfig oc;
  AdamW opt(params, oc);
  const std::int64_t n = o.batch * o.seq_len;
  std::vector<std::int32_t> inputs(static_cast<std::size_t>(n)), targets(inputs.size());
  Philox rng(o.seed, 0);
  for (std::int32_t& t : inputs) t = static_cast<std::int32_t>(rng.next_below(mc.vocab_size));
  for (std::int32_t& t : targets) t = static_cast<std::int32_t>(rng.next_below(mc.vocab_size));
  auto step = [&] {
    params.zero_grads();
    model.forward_backward(inputs.data(), targets.data(), o.batch, o.seq_len, 1.0);
    clip_grads(params, oc.grad_clip, std::sqrt(local_grad_sq_norm(params)));
    opt.step(oc.lr);
  };
  for (int i = 0; i < o.warmup; ++i) step();
  std::vector<double> times;
  for (int i = 0; i < o.steps; ++i) {
    Timer t;
    step();
    times.push_back(t.seconds());
  }
  return median(times);
}

// ---- the PyTorch side (a subprocess) ----------------------------------------------------------

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return q + "'";
}

struct ProcessResult {
  int status = -1;  // exit status, -1 if it did not exit normally
  std::string output;
};

ProcessResult run_process(const std::string& command) {
  ProcessResult r;
  std::FILE* p = ::popen(command.c_str(), "r");
  RM_CHECK_KIND(Io, p != nullptr, fmt::format("cannot start `{}`", command));
  char buf[4096];
  std::size_t got = 0;
  while ((got = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, got);
  const int st = ::pclose(p);
  r.status = (st != -1 && WIFEXITED(st)) ? WEXITSTATUS(st) : -1;
  return r;
}

// The last line of `out` that starts with '{' (bench_step.py's JSON line), or "".
std::string json_line(const std::string& out) {
  std::string last;
  std::size_t pos = 0;
  while (pos < out.size()) {
    std::size_t end = out.find('\n', pos);
    if (end == std::string::npos) end = out.size();
    if (out[pos] == '{') last = out.substr(pos, end - pos);
    pos = end + 1;
  }
  return last;
}

// Minimal field access for the flat JSON line bench_step.py prints.
std::optional<std::string> json_raw(const std::string& line, const std::string& key) {
  const std::string k = "\"" + key + "\":";
  std::size_t p = line.find(k);
  if (p == std::string::npos) return std::nullopt;
  p += k.size();
  while (p < line.size() && line[p] == ' ') ++p;
  if (p >= line.size()) return std::nullopt;
  if (line[p] == '"') {
    std::string s;
    for (++p; p < line.size() && line[p] != '"'; ++p) {
      if (line[p] == '\\' && p + 1 < line.size()) ++p;
      s += line[p];
    }
    return s;
  }
  const std::size_t end = line.find_first_of(",}", p);
  return line.substr(p, end == std::string::npos ? std::string::npos : end - p);
}

struct TorchResult {
  bool ok = false;
  double median_s = 0;
  std::string version;
  std::string error;  // why there is no figure
};

TorchResult parse_torch(const ProcessResult& r, bool want_median = true) {
  TorchResult t;
  const std::string line = json_line(r.output);
  if (line.empty()) {
    std::string tail = r.output.size() > 400 ? r.output.substr(r.output.size() - 400) : r.output;
    std::replace(tail.begin(), tail.end(), '\n', ' ');
    t.error = fmt::format("no result line (exit status {}): {}", r.status, tail);
    return t;
  }
  if (json_raw(line, "ok").value_or("") != "true") {
    t.error = json_raw(line, "error").value_or("bench_step.py reported a failure");
    return t;
  }
  t.version = json_raw(line, "torch").value_or("?");
  if (!want_median) {  // the --probe line
    t.ok = true;
    return t;
  }
  if (auto m = json_raw(line, "median_s")) t.median_s = std::strtod(m->c_str(), nullptr);
  t.ok = t.median_s > 0;
  if (!t.ok) t.error = "no valid median_s in " + line;
  return t;
}

std::string find_script(const std::string& given) {
  namespace fs = std::filesystem;
  if (!given.empty()) return given;
  std::vector<fs::path> candidates;
  // This file is framework/cli/bench_train.cpp of the source tree.
  const fs::path self(__FILE__);
  if (self.is_absolute())
    candidates.push_back(self.parent_path().parent_path().parent_path() / "tests" / "reference" /
                         "bench_step.py");
  candidates.push_back(fs::path("tests") / "reference" / "bench_step.py");
  for (const fs::path& p : candidates) {
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  return "";
}

std::string torch_command(const BenchTrainOptions& o, const std::string& script, int threads,
                          const std::string& args) {
  // The thread-count variables keep torch's BLAS/OpenMP at the same count as torch.set_num_threads.
  return fmt::format(
      "OMP_NUM_THREADS={0} OPENBLAS_NUM_THREADS={0} MKL_NUM_THREADS={0} {1} {2} {3} 2>&1", threads,
      shell_quote(o.python), shell_quote(script), args);
}

// What else ran during the benchmark. Other processes distort both sides (OpenMP-parallel code
// badly), so the run reports the CPU time the whole machine spent busy (/proc/stat) minus the
// CPU time of this process and its finished children (the torch subprocesses), per second of
// wall time: the average number of cores other processes took. The 1-minute load average is
// printed too, but it includes this benchmark's own threads.
double load_average() {
  double l[1] = {-1.0};
  return ::getloadavg(l, 1) == 1 ? l[0] : -1.0;
}

struct CpuSample {
  double machine_busy_s = -1.0;  // all CPUs, since boot; < 0 when /proc/stat is unreadable
  double ours_s = 0.0;           // this process + waited-for children
  Timer wall;
};

CpuSample cpu_sample() {
  CpuSample c;
  std::ifstream f("/proc/stat");
  std::string cpu;
  unsigned long long v[8] = {};
  if (f >> cpu && cpu == "cpu") {
    for (unsigned long long& x : v) f >> x;
    if (f) {
      // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
      const unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
      c.machine_busy_s = static_cast<double>(busy) / static_cast<double>(::sysconf(_SC_CLK_TCK));
    }
  }
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec);
  };
  rusage self{}, children{};
  ::getrusage(RUSAGE_SELF, &self);
  ::getrusage(RUSAGE_CHILDREN, &children);
  c.ours_s = seconds(self.ru_utime) + seconds(self.ru_stime) + seconds(children.ru_utime) +
             seconds(children.ru_stime);
  return c;
}

// Average number of cores used by other processes since `start`; < 0 when unknown.
double other_cores_since(const CpuSample& start) {
  const CpuSample now = cpu_sample();
  const double wall = start.wall.seconds();
  if (start.machine_busy_s < 0 || now.machine_busy_s < 0 || wall <= 0) return -1.0;
  const double others = (now.machine_busy_s - start.machine_busy_s) - (now.ours_s - start.ours_s);
  return std::max(0.0, others / wall);
}

struct CaseResult {
  std::string router;
  double flops = 0;
  double ours_s = 0;
  TorchResult torch;
};

}  // namespace

Runner register_bench_train(CLI::App& bench) {
  auto opts = std::make_shared<BenchTrainOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "train",
      "training step tokens/s vs the PyTorch reference (same run, same threads), per router");
  cmd->add_option("--threads", opts->threads, "CPU threads for both sides (0: all cores)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--warmup", opts->warmup, "untimed warm-up steps per side and router")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--steps", opts->steps, "timed steps per side and router (median reported)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--routers", opts->routers, "routers to run (the overhead lines need topk)")
      ->check(CLI::IsMember({"topk", "similarity", "attention", "ac"}))
      ->delimiter(',');
  cmd->add_option("--python", opts->python, "python with torch for the reference side");
  cmd->add_option("--script", opts->script,
                  "tests/reference/bench_step.py (default: found from the source tree or cwd)");
  cmd->add_flag("--no-torch", opts->no_torch, "skip the PyTorch side (ratio n/a)");
  cmd->add_option("--seed", opts->seed, "seed of the random tokens");
  cmd->add_option("--batch", opts->batch, "sequences per step")->check(CLI::PositiveNumber);
  cmd->add_option("--square", opts->square, "size of the square GEMM that sets the ceiling")
      ->check(CLI::Range(16, 16384));
  cmd->add_option("--json", opts->json, "also write the results as JSON to this file");
  return [opts]() {
    const BenchTrainOptions& o = *opts;
    const int threads = o.threads > 0
                            ? o.threads
                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    cpu::set_num_threads(threads);

    // Is the torch side available?
    std::string script;
    std::string torch_missing;
    std::string torch_version;
    if (o.no_torch) {
      torch_missing = "--no-torch";
    } else if (o.python.find('/') != std::string::npos && ::access(o.python.c_str(), X_OK) != 0) {
      torch_missing = fmt::format("{} not found or not executable", o.python);
    } else if ((script = find_script(o.script)).empty()) {
      torch_missing =
          "tests/reference/bench_step.py not found (run from the repository root or pass --script)";
    } else {
      TorchResult probe =
          parse_torch(run_process(torch_command(o, script, threads, "--probe")), false);
      if (!probe.ok)
        torch_missing = probe.error;
      else
        torch_version = probe.version;
    }

    fmt::print(
        "routemoe bench train: B={} T={} vocab={} d={} heads={} layers={} (moe_every={}) "
        "experts={} top_k={} d_ff={}; {} threads both sides; {} warm-up + {} timed steps, "
        "median; step = zero_grad + forward/backward + clip + AdamW\n",
        o.batch, o.seq_len, o.vocab, o.d_model, o.n_heads, o.n_layers, o.moe_every, o.n_experts,
        o.top_k, o.d_ff, threads, o.warmup, o.steps);
    if (torch_missing.empty())
      fmt::print("bench train torch side: {} {} (torch {}), reference_model.py eager\n", o.python,
                 script, torch_version);
    else
      fmt::print("bench train torch side: unavailable: {}; reporting ours only (ratio n/a)\n",
                 torch_missing);
    const double load_start = load_average();
    const CpuSample cpu_start = cpu_sample();
    const double ceiling_start = square_gemm_gflops(o.square);
    std::fflush(stdout);

    const double tokens = static_cast<double>(o.batch * o.seq_len);
    std::vector<CaseResult> results;
    for (const std::string& router : o.routers) {
      CaseResult r;
      r.router = router;
      const ModelConfig mc = model_config(o, router);
      r.flops = step_flops(mc, o.batch);
      r.ours_s = time_ours(o, mc);
      fmt::print(stderr, "bench train: router={} ours {:.1f} ms/step\n", router, r.ours_s * 1e3);
      if (torch_missing.empty()) {
        const std::string args = fmt::format(
            "--router {} --batch {} --seq-len {} --vocab-size {} --d-model {} --n-heads {} "
            "--n-layers {} --d-ff {} --n-experts {} --top-k {} --moe-every {} --threads {} "
            "--warmup {} --steps {} --seed {}",
            router, o.batch, o.seq_len, o.vocab, o.d_model, o.n_heads, o.n_layers, o.d_ff,
            o.n_experts, o.top_k, o.moe_every, threads, o.warmup, o.steps, o.seed);
        r.torch = parse_torch(run_process(torch_command(o, script, threads, args)));
        if (r.torch.ok)
          fmt::print(stderr, "bench train: router={} torch {:.1f} ms/step\n", router,
                     r.torch.median_s * 1e3);
        else
          fmt::print("bench train router={} torch side failed: {}\n", router, r.torch.error);
      } else {
        r.torch.error = torch_missing;
      }
      results.push_back(r);
    }

    // The ceiling is measured at the start and again at the end, and the higher figure is
    // used: a short measurement is easily halved by another process taking a core.
    const double ceiling_end = square_gemm_gflops(o.square);
    const double ceiling = std::max(ceiling_start, ceiling_end);
    const double load_end = load_average();
    const double others = other_cores_since(cpu_start);
    fmt::print(
        "bench train ceiling: square {0}x{0}x{0} fp32 GEMM through cpu::gemm {1:.1f} GFLOP/s "
        "(best of {2:.1f} at start, {3:.1f} at end)\n",
        o.square, ceiling, ceiling_start, ceiling_end);
    for (const CaseResult& r : results) {
      const double gflops = r.flops / r.ours_s * 1e-9;
      const std::string theirs =
          r.torch.ok ? fmt::format("torch={:.0f} tok/s", tokens / r.torch.median_s) : "torch=n/a";
      const std::string ratio =
          r.torch.ok ? fmt::format("{:.2f}", r.torch.median_s / r.ours_s) : std::string("n/a");
      fmt::print(
          "bench train router={:<10} ours={:.0f} tok/s {} ratio={} (ours/torch) "
          "gflops={:.1f} ({:.0f}% of {:.1f} GFLOP/s ceiling; {:.1f} GFLOP/step) "
          "step ours={:.1f} ms torch={}\n",
          r.router, tokens / r.ours_s, theirs, ratio, gflops, 100.0 * gflops / ceiling, ceiling,
          r.flops * 1e-9, r.ours_s * 1e3,
          r.torch.ok ? fmt::format("{:.1f} ms", r.torch.median_s * 1e3) : std::string("n/a"));
    }

    const CaseResult* topk = nullptr;
    for (const CaseResult& r : results)
      if (r.router == "topk") topk = &r;
    if (topk != nullptr) {
      for (const CaseResult& r : results) {
        if (&r == topk) continue;
        const std::string torch_over =
            r.torch.ok && topk->torch.ok
                ? fmt::format("{:+.1f}%", 100.0 * (r.torch.median_s / topk->torch.median_s - 1.0))
                : std::string("n/a");
        fmt::print(
            "bench train router={:<10} overhead vs topk = {:+.1f}% (ours, step {:.1f} ms vs "
            "{:.1f} ms; torch {})\n",
            r.router, 100.0 * (r.ours_s / topk->ours_s - 1.0), r.ours_s * 1e3, topk->ours_s * 1e3,
            torch_over);
      }
    }
    const double cores = static_cast<double>(std::max(1u, std::thread::hardware_concurrency()));
    fmt::print(
        "bench train load: other processes used {:.2f} cores on average during the run "
        "(1-min load average {:.2f} at start, {:.2f} at end incl. this run; {} cores){}\n",
        others, load_start, load_end, cores,
        others > 0.2 ? "; WARNING: the machine was shared, figures are not reliable" : "");

    if (!o.json.empty()) {
      std::ofstream f(o.json);
      RM_CHECK_KIND(Io, f.good(), fmt::format("cannot open {} for writing", o.json));
      f << fmt::format(
          "{{\"threads\": {}, \"batch\": {}, \"seq_len\": {}, \"warmup\": {}, "
          "\"steps\": {}, \"ceiling_gflops\": {:.3f}, \"load_start\": {:.2f}, "
          "\"load_end\": {:.2f}, \"other_cores\": {:.3f}, \"cases\": [",
          threads, o.batch, o.seq_len, o.warmup, o.steps, ceiling, load_start, load_end, others);
      for (std::size_t i = 0; i < results.size(); ++i) {
        const CaseResult& r = results[i];
        const std::string torch_s = r.torch.ok ? fmt::format("{:.6f}", r.torch.median_s) : "null";
        const std::string ratio =
            r.torch.ok ? fmt::format("{:.4f}", r.torch.median_s / r.ours_s) : "null";
        const std::string over =
            topk != nullptr ? fmt::format("{:.4f}", r.ours_s / topk->ours_s - 1.0) : "null";
        f << (i ? ", " : "")
          << fmt::format(
                 "{{\"router\": \"{}\", \"ours_step_s\": {:.6f}, \"torch_step_s\": {}, "
                 "\"ours_tok_s\": {:.1f}, \"ratio_ours_over_torch\": {}, "
                 "\"step_gflop\": {:.4f}, \"gflops\": {:.3f}, \"overhead_vs_topk\": {}}}",
                 r.router, r.ours_s, torch_s, tokens / r.ours_s, ratio, r.flops * 1e-9,
                 r.flops / r.ours_s * 1e-9, over);
      }
      f << "]}\n";
      RM_CHECK_KIND(Io, f.good(), fmt::format("write to {} failed", o.json));
    }
    return 0;
  };
}

}  // namespace routemoe::cli
