#pragma once
// What `routemoe train` prints on rank 0: the banner, a progress bar on terminals, one console
// line per log interval, and the summary at the end.

#include <cstdint>
#include <string>

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

  bool bar_ = false;
  std::int64_t start_step_ = 0;  // the first step of this run (after a resume: its step)
  Timer clock_;                  // since on_start
};

}  // namespace routemoe::cli
