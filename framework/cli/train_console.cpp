#include "framework/cli/train_console.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <cstdio>

#include "comm/mpi_runtime.h"
#include "framework/runfile.h"
#include "framework/train/preempt.h"

namespace routemoe::cli {

TrainConsole::TrainConsole(bool progress)
    : bar_(progress && isatty(STDOUT_FILENO) == 1 && !comm::launched_by_mpi()) {}

void TrainConsole::on_start(const RunConfig& cfg, const RunInfo& info) {
  const ModelConfig& mc = cfg.model;
  if (!info.resumed_from.empty()) {
    fmt::print("resumed from {} at step {}\n", info.resumed_from, info.start_step);
  }
  fmt::print("routemoe train: {} parameters, {} layers ({} MoE, routers {}), {} experts top-{}\n",
             info.parameters, mc.n_layers, mc.n_moe_layers(),
             runfile::join_routers(mc.expanded_routers()), mc.n_experts, mc.top_k);
  std::vector<std::string> layers;
  for (std::int64_t m = 0; m < mc.n_moe_layers(); ++m) layers.push_back(mc.describe_router(m));
  fmt::print("MoE layers: {}\n", fmt::join(layers, "; "));
  fmt::print("data: {} train tokens, {} val tokens from {}; unigram entropy {:.3f} nats\n",
             info.train_tokens, info.val_tokens, cfg.data.path, info.unigram_entropy);
  fmt::print("parallel: {} rank(s), expert-parallel size {}, data-parallel groups {}\n",
             info.world_size, cfg.parallel.ep_size, info.world_size / cfg.parallel.ep_size);
  fmt::print("run directory: {}\n", cfg.train.out_dir);
  std::fflush(stdout);
}

void TrainConsole::on_step(const StepReport& rep) {
  const StepResult& r = rep.result;
  const std::int64_t done = r.step + 1;
  if (rep.log_line) {
    const std::string val = rep.val_loss ? fmt::format(" | val {:.4f}", *rep.val_loss) : "";
    clear_bar();
    fmt::print(
        "step {:>6}/{} | loss {:.4f} | aux {:.4f} | lr {:.2e} | gnorm {:.3f} | {:.0f} tok/s{}\n",
        done, rep.total_steps, rep.interval_loss, r.aux_loss, r.lr, r.grad_norm,
        rep.interval_tokens_per_s, val);
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
  for (std::size_t m = 0; m < s.expert_load.size(); ++m) {
    std::int64_t total = 0;
    for (std::int64_t v : s.expert_load[m]) total += v;
    std::string shares;
    for (std::int64_t v : s.expert_load[m]) {
      shares += fmt::format(
          " {:4.1f}%",
          total > 0 ? 100.0 * static_cast<double>(v) / static_cast<double>(total) : 0.0);
    }
    fmt::print("  expert load, MoE layer {}:{}\n", m, shares);
  }
  if (s.skipped_steps > 0) {
    fmt::print("  {} non-finite step(s) skipped, none applied (train.nonfinite)\n",
               s.skipped_steps);
  }
  fmt::print("  metrics: {}/metrics.jsonl\n", s.out_dir);
  if (s.stop_signal != 0) {
    fmt::print(
        "stopped by {} after {} step(s): checkpoint {}; exit status {} (resume with "
        "--resume auto)\n",
        signal_name(s.stop_signal), s.steps, s.last_checkpoint, kExitPreempted);
  }
  fmt::print("memory (rank 0):\n{}", s.memory);
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
