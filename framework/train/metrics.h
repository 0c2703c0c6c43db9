#pragma once
// metrics.jsonl of a run (rank 0 writes it): one JSON line per step and one per validation pass
// (docs/configuration.md, "Run directory"), and the same lines as metrics.csv, rewritten at
// every sync (checkpoints and the end of the run). "step" is the number of steps completed, the
// convention of the console, the checkpoint names and the trace records: the line of the first
// step has "step": 1, and the validation after 100 steps has "step": 100.
//
// Every line goes to the file with write(2) as soon as it is complete (no user-space buffer),
// and the file is synced at checkpoints and at the end: a failed or short write (disk full,
// quota, a file system gone read-only) is an Error(Io) naming the file and the system's cause,
// never a silently lost line.

#include <cstdint>
#include <string>

#include "framework/train/step.h"

namespace routemoe {

// metrics.csv beside metrics.jsonl: "<dir>/metrics.jsonl" -> "<dir>/metrics.csv".
std::string csv_path(const std::string& metrics_jsonl);
// Writes the lines of `jsonl_path` as CSV to `csv_path` (atomically: a temporary file and a
// rename): one row per line, in order; one column per key in the order of first appearance,
// arrays flattened to key.0, key.1, ... (expert_load.L.E); a key missing from a line (the
// validation lines carry only step and val_loss) and null are empty cells.
void write_metrics_csv(const std::string& jsonl_path, const std::string& csv_path);

class MetricsLog {
 public:
  // Opens `path` for appending (resume) or truncating; `enabled` false (ranks > 0) writes nothing.
  // `slots_per_step`: routed slots of a step (tokens x top_k; 0: unknown), the denominator of
  // "dropped_frac".
  MetricsLog(const std::string& path, bool enabled, bool append, std::int64_t slots_per_step = 0);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // The line of step r, logged as "step": r.step + 1 (with "skipped": true when its update was
  // not applied, see step.h).
  void step(const StepResult& r, std::int64_t epoch, double tokens_per_s);
  // A validation pass after `steps_done` steps.
  void validation(std::int64_t steps_done, double val_loss);
  // Forces what was written to stable storage (fsync); Error(Io) when the system reports a
  // failure it could not report at write time (e.g. on NFS). Then rewrites metrics.csv from
  // the file (write_metrics_csv), so that the CSV holds the same lines as of this sync.
  void sync();

 private:
  void write_line(const std::string& line);

  std::string path_;
  bool enabled_;
  std::int64_t slots_per_step_ = 0;
  int fd_ = -1;
};

}  // namespace routemoe
