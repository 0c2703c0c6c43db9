#pragma once
// metrics.jsonl of a run (rank 0 writes it): one JSON line per step and one per validation pass
// (docs/configuration.md, "Run directory").

#include <cstdint>
#include <fstream>
#include <string>

#include "framework/train/step.h"

namespace routemoe {

class MetricsLog {
 public:
  // Opens `path` for appending (resume) or truncating; `enabled` false (ranks > 0) writes nothing.
  MetricsLog(const std::string& path, bool enabled, bool append);

  void step(const StepResult& r, std::int64_t epoch, double tokens_per_s);
  void validation(std::int64_t step, double val_loss);
  void flush();

 private:
  std::string path_;
  bool enabled_;
  std::ofstream out_;
};

}  // namespace routemoe
