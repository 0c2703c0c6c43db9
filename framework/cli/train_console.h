#pragma once
// What `routemoe train` prints on rank 0: the banner, a progress bar on terminals, one console
// line per log interval, and the summary at the end: losses, each MoE layer's expert load with
// its router (a layer with a (nearly) idle expert is remarked on), the `routemoe trace` table of
// the run's routing records, the plots written from them (<out_dir>/plots), the run's files and
// the commands to try next (docs/analysis.md, "After a run").

#include <cstdint>
#include <string>
#include <vector>

#include "framework/timer.h"
#include "framework/train/trainer.h"

namespace routemoe::cli {

class TrainConsole final : public TrainObserver {
 public:
  // `progress`: draw a progress bar when stdout is a terminal and the job was not started by an
  // MPI launcher (under mpirun a rank's stdout is a pseudo-terminal even when the job writes to a
  // log: the console lines are the progress there).
  explicit TrainConsole(bool progress);

  void on_start(const RunConfig& cfg, const RunInfo& info) override;
  void on_step(const StepReport& report) override;
  void on_finish(const TrainSummary& summary) override;

 private:
  void draw_bar(std::int64_t done, std::int64_t total, const std::string& text) const;
  void clear_bar() const;
  void print_expert_load(const TrainSummary& s) const;
  void print_routing(const TrainSummary& s) const;
  void print_next(const TrainSummary& s) const;

  bool bar_ = false;
  std::vector<std::string> routers_;  // per MoE layer
  int world_size_ = 1;
  std::int64_t total_steps_ = 0;
  std::int64_t start_step_ = 0;  // the first step of this run (after a resume: its step)
  Timer clock_;                  // since on_start
};

}  // namespace routemoe::cli
