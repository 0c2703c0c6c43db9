// `routemoe bench train`: tokens/s of one training step of the reference config on this
// framework and, in the same run and with the same number of threads, of the independent
// PyTorch reference (tests/reference/reference_model.py, run eagerly by bench_step.py as a
// subprocess), for each router; plus the step's achieved GFLOP/s against a square-GEMM ceiling
// measured in the same run, and each router's step-time overhead over topk
// (docs/performance.md).
//
// A training step, on both sides: zero the gradients, forward + backward of the loss, clip by
// global norm, one AdamW update. Data are random tokens (Philox), weights are the framework's
// initialisation (ours) and torch's random initialisation (theirs): only the time is compared.
//
// bench_step.py (with reference_model.py beside it) is found without the source tree: --script,
// else $ROUTEMOE_BENCH_STEP, else next to the executable (the build tree copies it there), else
// in <prefix>/share/routemoe relative to an installed executable.

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "framework/arena.h"
#include "framework/bench/benchmarks.h"
#include "framework/error.h"
#include "framework/optim.h"
#include "framework/params.h"
#include "framework/rng.h"
#include "framework/timer.h"
#include "framework/train/step.h"
#include "layers/model.h"

#ifndef ROUTEMOE_BENCH_SHARE_REL
#define ROUTEMOE_BENCH_SHARE_REL "../share/routemoe"
#endif

namespace routemoe::bench {

namespace {

namespace fs = std::filesystem;

constexpr const char* kScriptEnv = "ROUTEMOE_BENCH_STEP";
constexpr const char* kNoReferenceHint = "use --no-reference to skip the comparison";

struct TrainOptions {
  std::vector<std::string> routers = {"topk", "similarity", "attention", "ac"};
  std::string python = "/usr/bin/python3";
  std::string script;  // empty: found as described at the top of this file
  bool no_reference = false;
  std::uint64_t seed = 1;
  std::int64_t square = 2048;
  std::int64_t batch = 8;
  int ep = 0;                     // under mpirun: expert-parallel size (0: all ranks)
  bool no_shared_memory = false;  // under mpirun: exchange by messages even on one node
  int profile_steps = 2;          // profiled steps after the timed ones (0: no profile table)
  ModelShape shape;  // reference config; every block is an MoE block with the router under test
};

// Our side of the benchmark: a model of config `mc` with its optimiser and random tokens.
class OursStep {
 public:
  // `groups`: the process groups under mpirun (the model's experts sharded over groups->ep, the
  // gradients reduced over the replicas), null for one process.
  OursStep(const TrainOptions& o, const ModelConfig& mc, comm::ProcessGroups* groups)
      : o_(o),
        mc_(mc),
        groups_(groups),
        model_(mc, groups != nullptr ? groups->ep.get() : nullptr) {
    opt_ = std::make_unique<AdamW>(model_.params(), oc_);
    const std::int64_t n = o.batch * mc.seq_len;
    inputs_.resize(static_cast<std::size_t>(n));
    targets_.resize(inputs_.size());
    Philox rng(o.seed, groups != nullptr ? static_cast<std::uint64_t>(groups->world->rank()) : 0);
    for (std::int32_t& t : inputs_) t = static_cast<std::int32_t>(rng.next_below(mc.vocab_size));
    for (std::int32_t& t : targets_) t = static_cast<std::int32_t>(rng.next_below(mc.vocab_size));
  }

  Model& model() { return model_; }

  // One training step; its phases go to `timers` when not null (framework/timer.h).
  void step(TimerSet* timers) {
    model_.set_timers(timers);
    ParamStore& params = model_.params();
    const double pbytes = static_cast<double>(params.numel()) * sizeof(float);
    {
      Phase ph(timers, phase::kZeroGrad, 0.0, pbytes);
      params.zero_grads();
    }
    model_.forward_backward(inputs_.data(), targets_.data(), o_.batch, mc_.seq_len, 1.0);
    if (groups_ != nullptr) {
      double norm = 0.0;
      {
        Phase ph(timers, phase::kGradReduce, 0.0, pbytes);
        norm = reduce_gradients(params, *groups_);
      }
      Phase ph(timers, phase::kGradNorm, 0.0, 2.0 * pbytes);
      clip_grads(params, oc_.grad_clip, norm);
    } else {
      Phase ph(timers, phase::kGradNorm, 0.0, 3.0 * pbytes);
      clip_grads(params, oc_.grad_clip, std::sqrt(local_grad_sq_norm(params)));
    }
    Phase ph(timers, phase::kOptimizer, 0.0, 7.0 * pbytes);
    opt_->step(oc_.lr);
  }

 private:
  const TrainOptions& o_;
  ModelConfig mc_;
  OptimConfig oc_;
  comm::ProcessGroups* groups_;
  Model model_;
  std::unique_ptr<AdamW> opt_;
  std::vector<std::int32_t> inputs_, targets_;
};

// What bench train measured of our step for one router.
struct OursResult {
  Stats step;                  // unprofiled steps (seconds)
  TimerSet profile;            // phases summed over `profiled` steps
  int profiled = 0;            // profiled steps
  double profiled_s = 0;       // wall time of the profiled steps (mean per step)
  std::size_t peak_bytes = 0;  // activation arena peak
};

OursResult time_ours(const TrainOptions& o, const ModelConfig& mc, const Schedule& schedule,
                     comm::ProcessGroups* groups) {
  OursStep ours(o, mc, groups);
  OursResult r;
  if (groups == nullptr) {
    r.step = time_case(schedule, [&] { ours.step(nullptr); });
  } else {  // every rank the same number of steps, each after a barrier; max over ranks
    std::vector<double> t;
    run_iterations(schedule, [&](int, bool timed) {
      groups->world->barrier();
      Timer step;
      ours.step(nullptr);
      if (timed) t.push_back(step.seconds());
    });
    r.step = max_over_ranks(*groups->world, summarize(t));
  }
  if (groups != nullptr) groups->world->barrier();
  Timer wall;
  for (int i = 0; i < o.profile_steps; ++i) ours.step(&r.profile);
  r.profiled = o.profile_steps;
  r.profiled_s = o.profile_steps > 0 ? wall.seconds() / o.profile_steps : 0.0;
  for (const ArenaStats& a : ours.model().memory_report()) {
    if (a.name == "activations") r.peak_bytes = a.peak;
  }
  return r;
}

// The rows of the profile table, in the order a step runs them.
constexpr const char* kPhaseOrder[] = {
    phase::kZeroGrad,     phase::kElementwise,     phase::kLayerNorm, phase::kQkvProj,
    phase::kAttnCore,     phase::kAttnElementwise, phase::kRouter,    phase::kGates,
    phase::kSlots,        phase::kExchange,        phase::kExperts,   phase::kLmHead,
    phase::kCrossEntropy, phase::kGradReduce,      phase::kGradNorm,  phase::kOptimizer};

// Where the time of one step goes: one row per phase (ms per step, share of the profiled step,
// GFLOP/s of the matrix products or GB/s of the bytes it moves), plus what no phase covered.
void print_profile(const std::string& router, const OursResult& r, double ceiling) {
  if (r.profiled <= 0) return;
  const double steps = r.profiled, step_ms = r.profiled_s * 1e3;
  fmt::print(
      "bench train profile router={}: {} profiled step(s), {:.1f} ms/step (unprofiled "
      "median {:.1f} ms)\n",
      router, r.profiled, step_ms, r.step.median * 1e3);
  fmt::print("  {:<34} {:>9} {:>7} {:>9} {:>11}\n", "phase", "ms/step", "share", "GFLOP", "rate");
  double covered = 0, gemm_ms = 0, gemm_flop = 0;
  const auto& st = r.profile.stats();
  for (const char* name : kPhaseOrder) {
    const auto it = st.find(name);
    if (it == st.end()) continue;
    const TimerStats& t = it->second;
    const double ms = t.total_s * 1e3 / steps;
    covered += ms;
    std::string rate = "-";
    if (t.flops > 0 && t.total_s > 0) {
      rate = fmt::format("{:.1f} GFLOP/s", t.flops / t.total_s * 1e-9);
      gemm_ms += ms;
      gemm_flop += t.flops / steps;
    } else if (t.bytes > 0 && t.total_s > 0) {
      rate = fmt::format("{:.1f} GB/s", t.bytes / t.total_s * 1e-9);
    }
    fmt::print("  {:<34} {:>9.2f} {:>6.1f}% {:>9.2f} {:>11}\n", name, ms, 100.0 * ms / step_ms,
               t.flops / steps * 1e-9, rate);
  }
  fmt::print("  {:<34} {:>9.2f} {:>6.1f}%\n", "(not in any phase)", step_ms - covered,
             100.0 * (step_ms - covered) / step_ms);
  if (gemm_ms > 0) {
    fmt::print(
        "  phases with matrix products: {:.1f} ms/step ({:.0f}% of the step) at {:.1f} "
        "GFLOP/s = {:.0f}% of the {:.1f} GFLOP/s ceiling; the rest {:.1f} ms\n",
        gemm_ms, 100.0 * gemm_ms / step_ms, gemm_flop / gemm_ms * 1e-6,
        100.0 * gemm_flop / gemm_ms * 1e-6 / ceiling, ceiling, step_ms - gemm_ms);
  }
}

// A lower bound of the activation memory of one step, in floats per token: what the backward
// reads, each tensor once, leaving out whatever an elementwise function or a row gather of
// other kept tensors gives back (LayerNorm outputs, GELU outputs, expert inputs). Per block:
// the block input x (d) and the LayerNorm statistics (2 + 2), q, k, v (3d), the causal half of
// the attention probabilities (H (T + 1) / 2), the heads' context (d), the residual after
// attention (d); per MoE block also the routing probabilities and log-sum-exp (E + 1), gates and
// choices (2k), the similarity matrix (similarity router: (T + 1) / 2), the expert hidden layer
// before GELU (k d_ff) and the expert outputs (k d, for the gate gradients); per dense block the
// hidden layer before GELU (d_ff). The head: the final residual (d), its statistics (2) and the
// logits' gradient (V).
double activation_floor_floats(const ModelConfig& c, const std::string& router) {
  const double d = static_cast<double>(c.d_model), T = static_cast<double>(c.seq_len);
  const double H = static_cast<double>(c.n_heads), E = static_cast<double>(c.n_experts);
  const double k = static_cast<double>(c.top_k), F = static_cast<double>(c.d_ff);
  double per_token = d + 2.0 + static_cast<double>(c.vocab_size);
  for (std::int64_t l = 0; l < c.n_layers; ++l) {
    per_token += d + 4.0 + 3.0 * d + H * (T + 1.0) / 2.0 + d + d;
    if (!c.is_moe_block(l)) {
      per_token += F;
      continue;
    }
    per_token += E + 1.0 + 2.0 * k + k * F + k * d;
    if (router == "similarity") per_token += (T + 1.0) / 2.0;
  }
  return per_token;
}

void print_memory(const std::string& router, const ModelConfig& mc, std::int64_t batch,
                  const OursResult& r) {
  const double tokens = static_cast<double>(batch * mc.seq_len);
  const double peak = static_cast<double>(r.peak_bytes) / tokens / 1024.0;
  const double floor = activation_floor_floats(mc, router) * sizeof(float) / 1024.0;
  fmt::print(
      "bench train memory router={}: activation arena peak {} = {:.1f} KiB/token; lower "
      "bound (kept for backward) {:.1f} KiB/token; ratio={:.2f} (peak/bound)\n",
      router, format_bytes(r.peak_bytes), peak, floor, peak / floor);
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
  std::fflush(stdout);
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

// One line of at most `limit` characters from the end of `s`.
std::string tail_line(const std::string& s, std::size_t limit = 300) {
  std::string t = s.size() > limit ? s.substr(s.size() - limit) : s;
  std::replace(t.begin(), t.end(), '\n', ' ');
  while (!t.empty() && t.back() == ' ') t.pop_back();
  return t;
}

TorchResult parse_torch(const ProcessResult& r, bool want_median = true) {
  TorchResult t;
  const std::string line = json_line(r.output);
  if (line.empty()) {
    t.error = fmt::format("no result line (exit status {}): {}", r.status, tail_line(r.output));
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

// The directory of the running executable, or "" when /proc/self/exe is unreadable.
fs::path executable_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

// bench_step.py, or a one-line Error(Config) saying where it was looked for.
std::string find_script(const std::string& given) {
  auto is_file = [](const fs::path& p) {
    std::error_code ec;
    return fs::is_regular_file(p, ec);
  };
  if (!given.empty()) {
    if (!is_file(given)) {
      RM_FAIL(Config,
              fmt::format("bench train: --script {}: no such file; {}", given, kNoReferenceHint));
    }
    return given;
  }
  if (const char* env = std::getenv(kScriptEnv); env != nullptr && *env != '\0') {
    if (!is_file(env)) {
      RM_FAIL(Config, fmt::format("bench train: {}={}: no such file; {}", kScriptEnv, env,
                                  kNoReferenceHint));
    }
    return env;
  }
  std::vector<fs::path> candidates;
  if (const fs::path dir = executable_dir(); !dir.empty()) {
    candidates.push_back(dir / "bench_step.py");                             // build tree
    candidates.push_back(dir / ROUTEMOE_BENCH_SHARE_REL / "bench_step.py");  // installed
  }
  std::string tried;
  for (const fs::path& p : candidates) {
    const fs::path q = p.lexically_normal();
    if (is_file(q)) return q.string();
    tried += (tried.empty() ? "" : ", ") + q.string();
  }
  RM_FAIL(Config, fmt::format("bench train compares against PyTorch but bench_step.py is not "
                              "installed (looked at {}); set {} or --script to its path, or {}",
                              tried.empty() ? "nothing: /proc/self/exe unreadable" : tried,
                              kScriptEnv, kNoReferenceHint));
}

std::string torch_command(const TrainOptions& o, const std::string& script, int threads,
                          const std::string& args) {
  // The thread-count variables keep torch's BLAS/OpenMP at the same count as torch.set_num_threads.
  return fmt::format(
      "OMP_NUM_THREADS={0} OPENBLAS_NUM_THREADS={0} MKL_NUM_THREADS={0} PYTHONDONTWRITEBYTECODE=1 "
      "{1} {2} {3} 2>&1",
      threads, shell_quote(o.python), shell_quote(script), args);
}

// The torch version, or a one-line Error(Config) when python3 or torch is missing.
std::string probe_torch(const TrainOptions& o, const std::string& script, int threads) {
  const std::string need =
      "bench train compares against PyTorch: python3 with torch is needed (Debian: "
      "python3-torch)";
  if (o.python.find('/') != std::string::npos && ::access(o.python.c_str(), X_OK) != 0) {
    RM_FAIL(Config, fmt::format("{}; {} was not found or is not executable (--python); {}", need,
                                o.python, kNoReferenceHint));
  }
  const ProcessResult r = run_process(torch_command(o, script, threads, "--probe"));
  if (r.status == 127) {
    RM_FAIL(Config,
            fmt::format("{}; {} was not found (--python); {}", need, o.python, kNoReferenceHint));
  }
  const TorchResult probe = parse_torch(r, false);
  if (!probe.ok) RM_FAIL(Config, fmt::format("{}; {}; {}", need, probe.error, kNoReferenceHint));
  return probe.version;
}

struct CaseResult {
  std::string router;
  double flops = 0;
  Stats ours;
  TorchResult torch;
  std::shared_ptr<OursResult> detail;
};

void run(const TrainOptions& given, Context& ctx) {
  const int threads = ctx.threads();
  const Schedule schedule = ctx.schedule();
  const ModelShape& m = given.shape;
  for (const std::string& router : given.routers) (void)model_config(m, router, given.seed);
  // Under mpirun: every rank trains its own micro-batch, experts sharded over the ep group,
  // gradients reduced over the replicas; the single-process PyTorch side is not run.
  const int W = ctx.size();
  comm::ProcessGroups* groups = nullptr;
  TrainOptions o = given;
  if (W > 1) {
    const int ep = o.ep > 0 ? o.ep : W;
    RM_CHECK_KIND(Config, W % ep == 0 && m.n_experts % ep == 0,
                  fmt::format("bench train: --ep {} must divide the {} ranks and the {} experts",
                              ep, W, m.n_experts));
    groups = &ctx.groups(ep, !o.no_shared_memory);
    o.no_reference = true;
  }
  const bool lead = ctx.lead();

  // The torch side: found and probed before anything is timed.
  std::string script, torch_version;
  if (!o.no_reference) {
    script = find_script(o.script);
    torch_version = probe_torch(o, script, threads);
  }

  if (!lead) {
    // The other ranks run the same steps and collectives, and print nothing.
    (void)square_gemm_gflops(o.square);
    for (const std::string& router : o.routers) {
      (void)time_ours(o, model_config(m, router, o.seed), schedule, groups);
    }
    (void)square_gemm_gflops(o.square);
    return;
  }
  fmt::print(
      "routemoe bench train: B={} T={} vocab={} d={} heads={} layers={} (moe_every={}) "
      "experts={} top_k={} d_ff={}; {} threads both sides; {} warm-up + {} timed steps, "
      "median; step = zero_grad + forward/backward + clip + AdamW\n",
      o.batch, m.seq_len, m.vocab, m.d_model, m.n_heads, m.n_layers, m.moe_every, m.n_experts,
      m.top_k, m.d_ff, threads, schedule.warmup, schedule.iters);
  if (W > 1) {
    fmt::print(
        "bench train: {} ranks, ep {} (B={} sequences per rank; tok/s over all ranks; step = "
        "the slowest rank's median, + gradient reduction; GFLOP/s and ceiling per rank); torch "
        "side not run under mpirun\n",
        W, groups->ep_size, o.batch);
  } else if (o.no_reference) {
    fmt::print(
        "bench train torch side: skipped (--no-reference); reporting ours only (ratio n/a)\n");
  } else {
    fmt::print("bench train torch side: {} {} (torch {}), reference_model.py eager\n", o.python,
               script, torch_version);
  }
  const double ceiling_start = square_gemm_gflops(o.square);
  std::fflush(stdout);

  const double tokens = static_cast<double>(W * o.batch * m.seq_len);
  std::vector<CaseResult> results;
  for (const std::string& router : o.routers) {
    CaseResult r;
    r.router = router;
    const ModelConfig mc = model_config(m, router, o.seed);
    r.flops = Model(mc).step_flops(o.batch, mc.seq_len);
    r.detail = std::make_shared<OursResult>(time_ours(o, mc, schedule, groups));
    r.ours = r.detail->step;
    fmt::print(stderr, "bench train: router={} ours {:.1f} ms/step\n", router, r.ours.median * 1e3);
    if (!o.no_reference) {
      const std::string args = fmt::format(
          "--router {} --batch {} --seq-len {} --vocab-size {} --d-model {} --n-heads {} "
          "--n-layers {} --d-ff {} --n-experts {} --top-k {} --moe-every {} --threads {} "
          "--warmup {} --steps {} --seed {}",
          router, o.batch, m.seq_len, m.vocab, m.d_model, m.n_heads, m.n_layers, m.d_ff,
          m.n_experts, m.top_k, m.moe_every, threads, schedule.warmup, schedule.iters, o.seed);
      r.torch = parse_torch(run_process(torch_command(o, script, threads, args)));
      if (r.torch.ok) {
        fmt::print(stderr, "bench train: router={} torch {:.1f} ms/step\n", router,
                   r.torch.median_s * 1e3);
      } else {
        fmt::print("bench train router={} torch side failed: {}\n", router, r.torch.error);
      }
    } else {
      r.torch.error = "--no-reference";
    }
    results.push_back(r);
  }

  // The ceiling is measured at the start and again at the end, and the higher figure is
  // used: a short measurement is easily halved by another process taking a core.
  const double ceiling_end = square_gemm_gflops(o.square);
  const double ceiling = std::max(ceiling_start, ceiling_end);
  fmt::print(
      "bench train ceiling: square {0}x{0}x{0} fp32 GEMM through ops::gemm {1:.1f} GFLOP/s "
      "(best of {2:.1f} at start, {3:.1f} at end)\n",
      o.square, ceiling, ceiling_start, ceiling_end);
  for (const CaseResult& r : results) {
    const double ours_s = r.ours.median;
    const double gflops = r.flops / ours_s * 1e-9;
    CaseLine line("train", "router", r.router, 10);
    line.figure("ours", tokens / ours_s, 0, "tok/s");
    if (r.torch.ok) {
      line.figure("torch", tokens / r.torch.median_s, 0, "tok/s");
    } else {
      line.field("torch", "n/a");
    }
    line.ratio(r.torch.ok ? std::optional<double>(r.torch.median_s / ours_s) : std::nullopt, 2,
               "ours/torch")
        .figure("gflops", gflops, 1, "")
        .text(fmt::format("({:.0f}% of {:.1f} GFLOP/s ceiling; {:.1f} GFLOP/step)",
                          100.0 * gflops / ceiling, ceiling, r.flops * 1e-9))
        .text("step")
        .figure("ours", ours_s * 1e3, 1, "ms")
        .field("torch", r.torch.ok ? fmt::format("{:.1f} ms", r.torch.median_s * 1e3) : "n/a");
    print_case(line);
  }
  for (const CaseResult& r : results) {
    const ModelConfig mc = model_config(m, r.router, o.seed);
    print_profile(r.router, *r.detail, ceiling);
    print_memory(r.router, mc, o.batch, *r.detail);
  }

  const CaseResult* topk = nullptr;
  for (const CaseResult& r : results) {
    if (r.router == "topk") topk = &r;
  }
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
          r.router, 100.0 * (r.ours.median / topk->ours.median - 1.0), r.ours.median * 1e3,
          topk->ours.median * 1e3, torch_over);
    }
  }
  std::fflush(stdout);

  JsonReport& json = ctx.json();
  json.header()
      .integer("threads", threads)
      .integer("batch", o.batch)
      .integer("seq_len", m.seq_len)
      .integer("warmup", schedule.warmup)
      .integer("steps", schedule.iters)
      .num("ceiling_gflops", ceiling)
      .str("torch", o.no_reference ? std::string() : torch_version);
  for (const CaseResult& r : results) {
    auto torch = [&](double v) { return r.torch.ok ? std::optional<double>(v) : std::nullopt; };
    json.add_case()
        .str("router", r.router)
        .stats_s("ours_step", r.ours)
        .num("torch_step_s", torch(r.torch.median_s))
        .num("ours_tok_s", tokens / r.ours.median)
        .num("ratio_ours_over_torch", torch(r.torch.median_s / r.ours.median))
        .num("step_gflop", r.flops * 1e-9)
        .integer("activation_peak_bytes", static_cast<std::int64_t>(r.detail->peak_bytes))
        .num("activation_floor_bytes",
             activation_floor_floats(model_config(m, r.router, o.seed), r.router) *
                 static_cast<double>(sizeof(float)) * tokens)
        .num("gflops", r.flops / r.ours.median * 1e-9)
        .num("overhead_vs_topk", topk != nullptr
                                     ? std::optional<double>(r.ours.median / topk->ours.median - 1)
                                     : std::nullopt);
  }
}

}  // namespace

Benchmark train_benchmark() {
  Benchmark b;
  b.name = "train";
  b.description =
      "training step tokens/s vs the PyTorch reference (same run, same threads), per router";
  b.ranks = Ranks::Any;
  b.defaults.warmup = 2;
  b.defaults.iters = 5;
  b.iters_help = "timed steps per side and router (median reported)";
  b.iters_alias = "--steps";
  b.setup = [](CLI::App& cmd) {
    auto o = std::make_shared<TrainOptions>();
    cmd.add_option("--routers", o->routers, "routers to run (the overhead lines need topk)")
        ->check(CLI::IsMember({"topk", "similarity", "attention", "ac"}))
        ->delimiter(',')
        ->capture_default_str();
    cmd.add_option("--python", o->python, "python with torch for the reference side")
        ->capture_default_str();
    cmd.add_option("--script", o->script,
                   fmt::format("bench_step.py of the reference side (default: ${}, else next "
                               "to the executable, else {} from it)",
                               kScriptEnv, ROUTEMOE_BENCH_SHARE_REL));
    cmd.add_flag("--no-reference,--no-torch", o->no_reference,
                 "skip the PyTorch side (torch=n/a ratio=n/a)");
    cmd.add_option("--seed", o->seed, "seed of the random tokens")->capture_default_str();
    cmd.add_option("--batch", o->batch, "sequences per step")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    add_model_options(cmd, o->shape);
    cmd.add_option("--ep", o->ep,
                   "under mpirun: expert-parallel group size (0: all ranks; the rest data "
                   "parallel)")
        ->check(CLI::Range(0, 1 << 20))
        ->capture_default_str();
    cmd.add_flag("--no-shared-memory", o->no_shared_memory,
                 "under mpirun: exchange expert rows as MPI messages overlapped with the "
                 "experts even when the ranks share a node (parallel.shared_memory = false)");
    cmd.add_option("--profile-steps", o->profile_steps,
                   "profiled steps after the timed ones, for the per-phase table (0: none)")
        ->check(CLI::Range(0, 1000))
        ->capture_default_str();
    cmd.add_option("--square", o->square, "size of the square GEMM that sets the ceiling")
        ->check(CLI::Range(16, 16384))
        ->capture_default_str();
    return [o](Context& ctx) { run(*o, ctx); };
  };
  return b;
}

}  // namespace routemoe::bench
