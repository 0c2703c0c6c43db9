#pragma once
// The run directory of `routemoe train` (train.out_dir): its files, its preparation, and resuming
// a run from one of its checkpoints.

#include <cstdint>
#include <string>

#include "comm/communicator.h"
#include "framework/config.h"

namespace routemoe {

class Model;
class AdamW;

struct RunPaths {
  std::string out_dir;      // train.out_dir
  std::string checkpoints;  // checkpoint.dir, or <out_dir>/checkpoints
  std::string config;       // <out_dir>/config.toml (the resolved configuration)
  std::string metrics;      // <out_dir>/metrics.jsonl
  std::string trace;        // <out_dir>/trace.h5
};

RunPaths run_paths(const RunConfig& cfg);

// Rank 0 creates the directory, refusing one that already holds a run unless resuming, and
// writes the resolved configuration. Collective (ends with a barrier).
void prepare_run_dir(const RunConfig& cfg, const RunPaths& paths, comm::Communicator& world);

struct ResumePoint {
  std::string checkpoint;  // empty: a fresh run
  std::int64_t step = 0;   // steps completed in the checkpoint
};

// Resumes from train.resume ("auto": the newest checkpoint of the run): loads the model and the
// optimiser (each rank its slice), checks the data seed and the step count, and (rank 0) drops
// the metrics lines and trace records the interrupted run wrote after the checkpoint. Returns a
// fresh ResumePoint when train.resume is empty. Collective.
ResumePoint resume_run(const RunConfig& cfg, const RunPaths& paths, Model& model, AdamW& opt,
                       comm::Communicator& world);

}  // namespace routemoe
