#pragma once
// metrics.jsonl of a run (rank 0 writes it): one JSON line per step and one per validation pass
// (docs/configuration.md, "Run directory").
//
// Every line goes to the file with write(2) as soon as it is complete (no user-space buffer),
// and the file is synced at checkpoints and at the end: a failed or short write (disk full,
// quota, a file system gone read-only) is an Error(Io) naming the file and the system's cause,
// never a silently lost line.

#include <cstdint>
#include <string>

#include "framework/train/step.h"

namespace routemoe {

class MetricsLog {
 public:
  // Opens `path` for appending (resume) or truncating; `enabled` false (ranks > 0) writes nothing.
  MetricsLog(const std::string& path, bool enabled, bool append);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // The line of step r (with "skipped": true when its update was not applied, see step.h).
  void step(const StepResult& r, std::int64_t epoch, double tokens_per_s);
  void validation(std::int64_t step, double val_loss);
  // Forces what was written to stable storage (fsync); Error(Io) when the system reports a
  // failure it could not report at write time (e.g. on NFS).
  void sync();

 private:
  void write_line(const std::string& line);

  std::string path_;
  bool enabled_;
  int fd_ = -1;
};

}  // namespace routemoe
