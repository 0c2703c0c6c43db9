#include "framework/cli/train_console.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "comm/mpi_runtime.h"
#include "framework/error.h"
#include "framework/ops.h"
#include "framework/runfile.h"
#include "framework/trace/analysis.h"
#include "framework/trace/svg.h"
#include "framework/train/preempt.h"

namespace routemoe::cli {

namespace {

// "HH:MM:SS" (UTC) of now.
std::string utc_time() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  return fmt::format("{:02d}:{:02d}:{:02d}", tm.tm_hour, tm.tm_min, tm.tm_sec);
}

// "1h02m", "3m05s", "42s".
std::string duration(double seconds) {
  const auto s = static_cast<std::int64_t>(std::max(0.0, seconds) + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02d}m", s / 3600, s % 3600 / 60);
  if (s >= 60) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

}  // namespace

TrainConsole::TrainConsole(bool progress)
    : bar_(progress && isatty(STDOUT_FILENO) == 1 && !comm::launched_by_mpi()) {}

namespace {

// An expert with less than this share of the uniform load 1/E is called (nearly) idle: with 4
// experts, below 2.5% of the tokens.
constexpr double kIdleShareOfUniform = 0.1;

}  // namespace

void TrainConsole::on_start(const RunConfig& cfg, const RunInfo& info) {
  const ModelConfig& mc = cfg.model;
  routers_ = mc.expanded_routers();
  world_size_ = info.world_size;
  total_steps_ = cfg.train.steps;
  if (!info.resumed_from.empty()) {
    fmt::print("resumed from {} at step {}\n", info.resumed_from, info.start_step);
  }
  fmt::print("routemoe train: {} parameters, {} layers ({} MoE), {} experts top-{}\n",
             info.parameters, mc.n_layers, mc.n_moe_layers(), mc.n_experts, mc.top_k);
  // Each MoE block with the router it really runs and its options (ModelConfig::describe_router).
  std::vector<std::string> layers;
  for (std::int64_t m = 0; m < mc.n_moe_layers(); ++m) layers.push_back(mc.describe_router(m));
  fmt::print("routers: {}\n", fmt::join(layers, "; "));
  fmt::print("device: cpu, {} thread(s) per rank\n", ops::num_threads());
  fmt::print("data: {} train tokens, {} val tokens from {}; unigram entropy {:.3f} nats\n",
             info.train_tokens, info.val_tokens, cfg.data.path, info.unigram_entropy);
  fmt::print("parallel: {} rank(s), expert-parallel size {}, data-parallel groups {}{}\n",
             info.world_size, cfg.parallel.ep_size, info.world_size / cfg.parallel.ep_size,
             info.exchange.empty() ? "" : "; expert exchange by " + info.exchange);
  fmt::print("run directory: {}\n", cfg.train.out_dir);
  fmt::print("console lines: avg loss = mean training loss since the previous line\n");
  std::fflush(stdout);
  start_step_ = info.start_step;
  clock_.restart();
}

void TrainConsole::on_step(const StepReport& rep) {
  const StepResult& r = rep.result;
  const std::int64_t done = r.step + 1;
  if (rep.log_line) {
    const std::string val = rep.val_loss ? fmt::format(" | val {:.4f}", *rep.val_loss) : "";
    clear_bar();
    // ms/step and the ETA over the steps of this run so far (validation and checkpoints
    // included); the time stamp is UTC.
    const auto ran = static_cast<double>(std::max<std::int64_t>(1, done - start_step_));
    const double per_step = clock_.seconds() / ran;
    fmt::print(
        "{} step {:>6}/{} | avg loss {:.4f} | bal {:.4f} | z {:.4f} | lr {:.2e} | gnorm {:.3f} | "
        "{:.0f} tok/s | {:.0f} ms/step | ETA {}{}\n",
        utc_time(), done, rep.total_steps, rep.interval_loss, r.balance_loss, r.z_loss, r.lr,
        r.grad_norm, rep.interval_tokens_per_s, per_step * 1e3,
        duration(per_step * static_cast<double>(rep.total_steps - done)), val);
    std::fflush(stdout);
  }
  draw_bar(done, rep.total_steps,
           fmt::format("step {}/{} loss {:.4f}", done, rep.total_steps, r.loss));
}

void TrainConsole::on_finish(const TrainSummary& s) {
  clear_bar();
  fmt::print("\nsummary: {} steps in {:.1f} s, {:.0f} tokens/s\n", s.steps, s.seconds,
             s.tokens_per_s);
  fmt::print("  train loss {:.4f} (step 1: {:.4f})\n", s.final_loss, s.first_loss);
  fmt::print("  val loss   {:.4f} (best {:.4f}); unigram entropy {:.4f} nats\n", s.final_val_loss,
             s.best_val_loss, s.unigram_entropy);
  print_expert_load(s);
  if (s.skipped_steps > 0) {
    fmt::print("  {} non-finite step(s) skipped, none applied (train.nonfinite)\n",
               s.skipped_steps);
  }
  fmt::print("memory (rank 0):\n{}", s.memory);
  print_routing(s);
  if (s.stop_signal != 0) {
    fmt::print(
        "\nstopped by {} after {} step(s): checkpoint {}; exit status {} (resume with "
        "--resume auto)\n",
        signal_name(s.stop_signal), s.steps, s.last_checkpoint, kExitPreempted);
  }
  print_next(s);
  std::fflush(stdout);
}

// One line per MoE layer, named by its router: the share of the last step's tokens per expert,
// and a remark when an expert gets (nearly) none of them (the layer is collapsing).
void TrainConsole::print_expert_load(const TrainSummary& s) const {
  for (std::size_t m = 0; m < s.expert_load.size(); ++m) {
    const std::vector<std::int64_t>& load = s.expert_load[m];
    std::int64_t total = 0;
    for (std::int64_t v : load) total += v;
    std::string shares;
    std::vector<std::size_t> idle;
    for (std::size_t e = 0; e < load.size(); ++e) {
      const double share =
          total > 0 ? static_cast<double>(load[e]) / static_cast<double>(total) : 0.0;
      shares += fmt::format(" {:4.1f}%", 100.0 * share);
      if (total > 0 && share < kIdleShareOfUniform / static_cast<double>(load.size())) {
        idle.push_back(e);
      }
    }
    const std::string router = m < routers_.size() ? routers_[m] : "?";
    std::string remark;
    if (!idle.empty()) {
      remark = fmt::format("  <- collapsing: expert{} {} (nearly) idle", idle.size() > 1 ? "s" : "",
                           fmt::join(idle, ", "));
    }
    fmt::print("  expert load, MoE layer {} ({}):{}{}\n", m, router, shares, remark);
  }
}

// The run's routing records as `routemoe trace` reports them, and their plots in
// <out_dir>/plots. A run without records (checkpoint.trace = false and no checkpoints) or a
// failure here only leaves a note: the training itself has succeeded.
void TrainConsole::print_routing(const TrainSummary& s) const {
  try {
    const std::vector<trace::Run> runs = trace::load_runs({s.out_dir}, {});
    std::vector<trace::RunMetrics> metrics;
    for (const trace::Run& run : runs) metrics.push_back(trace::analyse(run));
    fmt::print("\nrouting of the probe set (as `routemoe trace {}` reports it):\n{}", s.out_dir,
               trace::format_table(metrics));
    const std::string dir = (std::filesystem::path(s.out_dir) / "plots").string();
    std::vector<std::string> written = trace::write_svg_dir(dir, metrics);
    const std::string html = dir + "/report.html";
    trace::write_text_file(html, trace::html_report(metrics));
    written.push_back(html);
    fmt::print("\nplots:\n");
    for (const std::string& p : written) fmt::print("  {}\n", p);
  } catch (const Error& e) {
    fmt::print("\nrouting: no report ({})\n", e.detail());
  }
}

// The run's files and the commands a user tries next.
void TrainConsole::print_next(const TrainSummary& s) const {
  const std::string& d = s.out_dir;
  const std::string mpi = world_size_ > 1 ? fmt::format("mpirun -np {} ", world_size_) : "";
  const bool trace = std::filesystem::exists(std::filesystem::path(d) / "trace.h5");
  fmt::print("\nfiles: {}/metrics.jsonl (one line per step and per validation){}, {}/config.toml\n",
             d, trace ? fmt::format(", {}/trace.h5", d) : "", d);
  if (!s.last_checkpoint.empty()) fmt::print("  last checkpoint: {}\n", s.last_checkpoint);
  fmt::print("next:\n");
  if (!s.last_checkpoint.empty()) {
    fmt::print("  {}routemoe train --config {}/config.toml --resume auto --train.steps={}\n", mpi,
               d, 2 * total_steps_);
    fmt::print("      continue this run from its last checkpoint\n");
    fmt::print("  routemoe inspect {}\n", s.last_checkpoint);
    fmt::print("      what the checkpoint holds, its routing record included\n");
  }
  if (trace) {
    fmt::print(
        "  {}routemoe train --config {}/config.toml --model.routers=topk --train.out_dir={}-topk\n"
        "  routemoe trace {} {}-topk --svg {}-vs-topk\n"
        "      the same run with top-k routing everywhere, and the two runs' routing compared\n",
        mpi, d, d, d, d, d);
    fmt::print("  routemoe inspect {}/trace.h5\n      the routing records, one line each\n", d);
  } else {
    fmt::print(
        "  {}routemoe train --config {}/config.toml --checkpoint.trace=true "
        "--checkpoint.record_every=10 --train.out_dir={}-traced\n"
        "      the same run with its routing recorded, for `routemoe trace`\n",
        mpi, d, d);
  }
}

void TrainConsole::draw_bar(std::int64_t done, std::int64_t total, const std::string& text) const {
  if (!bar_) return;
  constexpr int kWidth = 30;
  const std::int64_t t = std::max<std::int64_t>(1, total);
  const int filled = static_cast<int>(kWidth * done / t);
  std::printf("\r[%s%s] %3d%% %s\033[K", std::string(static_cast<std::size_t>(filled), '#').c_str(),
              std::string(static_cast<std::size_t>(kWidth - filled), '.').c_str(),
              static_cast<int>(100 * done / t), text.c_str());
  std::fflush(stdout);
}

void TrainConsole::clear_bar() const {
  if (bar_) std::printf("\r\033[K");
}

}  // namespace routemoe::cli
