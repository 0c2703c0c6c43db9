#pragma once
// The training loop of `routemoe train` (docs/architecture.md, "One training step"):
//   load data and the probe set (agreed: bad data is one error for the job, before anything
//   is written) -> open_run_dir (lock, run id) -> watchdog and stop signals -> Model + AdamW ->
//   resume_run -> commit_run_dir -> for each step: train_step (step.h), the
//   non-finite policy, the stop-signal agreement (preempt.h), then the after-step work —
//   metrics, routing records and checkpoints, evaluation — and a report to the observer (the
//   CLI prints the banner, the progress bar and the console lines; run_training prints nothing
//   itself). A checkpoint is written after the last step whenever checkpoint.every > 0, and
//   after the step during which a stop signal arrived (then the process is asked to end with
//   kExitPreempted, comm::request_exit_status).

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "framework/config.h"
#include "framework/train/step.h"

namespace routemoe {

class Model;

struct TrainSummary {
  std::int64_t steps = 0;
  double first_loss = 0.0;      // training loss of the first step of this run
  double final_loss = 0.0;      // mean training loss over the last log interval
  double final_val_loss = 0.0;  // last validation cross-entropy (nats/token)
  double best_val_loss = 0.0;
  double unigram_entropy = 0.0;  // entropy of the training split's token distribution (nats)
  double tokens_per_s = 0.0;     // training throughput over the whole run
  double seconds = 0.0;
  std::vector<std::vector<std::int64_t>>
      expert_load;             // per MoE layer, tokens per expert (last step)
  std::vector<double> losses;  // training loss of every step (mean over ranks and micro-batches)
  std::string memory;  // rank 0's memory report: parameters, gradients, AdamW, activation arena
  std::string out_dir;
  std::string run_id;
  std::int64_t skipped_steps = 0;  // non-finite steps skipped (train.nonfinite = skip)
  int stop_signal = 0;             // the stop signal that ended the run early (0: it completed)
  std::string last_checkpoint;     // the newest checkpoint this run wrote ("" when none)
};

// What the run is, for the banner.
struct RunInfo {
  std::int64_t parameters = 0;  // of the whole model (every expert once, whatever the ranks)
  std::int64_t train_tokens = 0;
  std::int64_t val_tokens = 0;
  double unigram_entropy = 0.0;
  int world_size = 1;
  // How the ep group exchanges rows: "shared memory" (its ranks on one node), "messages", or
  // "" without expert parallelism.
  std::string exchange;
  std::string resumed_from;  // checkpoint path, empty for a fresh run
  std::int64_t start_step = 0;
};

// One step as the console sees it.
struct StepReport {
  const StepResult& result;
  std::int64_t total_steps = 0;
  bool log_line = false;       // a console line is due (log_every, evaluation, last step)
  double interval_loss = 0.0;  // mean training loss since the previous console line
  double interval_tokens_per_s = 0.0;
  std::optional<double> val_loss;  // when this step ran a validation pass
};

// Receives the run's progress on rank 0 (other ranks are not called).
class TrainObserver {
 public:
  virtual ~TrainObserver() = default;
  virtual void on_start(const RunConfig& /*cfg*/, const RunInfo& /*info*/) {}
  virtual void on_step(const StepReport& /*report*/) {}
  virtual void on_finish(const TrainSummary& /*summary*/) {}
};

// Optional callback with the trained model before run_training returns (collective code such
// as gathering expert shards may run in it: every rank calls it).
using AfterTraining = std::function<void(Model&)>;

// Runs training as configured on the ranks of `groups` (collective). Validates the config
// first; rank 0 creates and locks train.out_dir (refusing one that already holds a run or that
// another job holds) and writes the metrics. A non-finite step with train.nonfinite = stop, or
// more than train.nonfinite_limit in a row, is Error(Data) on every rank. Each rank trains on its
// rows of every global batch; dense gradients are summed over the world, expert gradients over the
// expert-data-parallel group. The returned summary is the same on every rank. `observer` (may be
// null) is called on rank 0.
TrainSummary run_training(const RunConfig& cfg, comm::ProcessGroups& groups,
                          TrainObserver* observer = nullptr, const AfterTraining& after = nullptr);

// What `routemoe train --dry-run` measured (the same on every rank).
struct DryRunReport {
  int threads = 1;  // CPU threads per rank
  std::int64_t train_tokens = 0;
  std::int64_t val_tokens = 0;
  double step_seconds = 0.0;  // wall time of one training step (the first: an upper bound)
};

// `routemoe train --dry-run` (collective): validates the configuration, the layout, the run
// directory (without creating it) and the data as run_training does, builds the model and the
// optimiser and times one training step of the first batch. Writes nothing.
DryRunReport dry_run(const RunConfig& cfg, comm::ProcessGroups& groups);

// Shannon entropy (nats) of the unigram distribution of `tokens`.
double unigram_entropy(const std::vector<std::uint16_t>& tokens, std::int64_t vocab_size);

}  // namespace routemoe
