#pragma once
// The run directory of `routemoe train` (train.out_dir): its files, its lock and run identity,
// its preparation, and resuming a run from one of its checkpoints.
//
// Order of a start (nothing of the run is written before every check has passed):
//   open_run_dir   rank 0 creates the directory, takes its lock, refuses a directory that holds
//                  another run, and reads the run id (or makes a new one);
//   resume_run     loads the checkpoint (only the run's own are considered), checks that the
//                  data order and the trace can continue;
//   commit_run_dir writes run_id (when new) and config.toml, and drops what the interrupted run
//                  logged after its checkpoint.

#include <cstdint>
#include <string>
#include <vector>

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
  std::string run_id;       // <out_dir>/run_id (the run's identity, one line)
  std::string lock;         // <out_dir>/run.lock (held by the job's rank 0)
  std::string heartbeat;    // <out_dir>/heartbeat (one file per rank, comm/watchdog.h)
};

RunPaths run_paths(const RunConfig& cfg);

// An exclusive flock(2) on a lock file, held until destruction (or until the process ends: the
// kernel releases it even after SIGKILL). The holder writes "pid=<pid> host=<host>" into it.
class RunLock {
 public:
  RunLock() = default;
  // Takes the lock or throws Error(Config), one line naming the directory and the holder.
  explicit RunLock(const std::string& path);
  ~RunLock();
  RunLock(RunLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  RunLock& operator=(RunLock&& o) noexcept;
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

// A new random run id: 32 hex digits.
std::string new_run_id();

struct RunDir {
  RunLock lock;         // held on rank 0
  std::string run_id;   // the same on every rank
  bool new_id = false;  // made now: commit_run_dir writes it
};

// Rank 0 creates the directory, takes its lock (Error(Config) naming the holder's pid when
// another job holds it), refuses a directory that already holds a run unless resuming, and reads
// <out_dir>/run_id; a directory without one gets a new id (a fresh run, or a resume by path
// into a new directory: the new directory is a new run). Writes nothing else. Collective.
RunDir open_run_dir(const RunConfig& cfg, const RunPaths& paths, comm::Communicator& world);

struct ResumePoint {
  std::string checkpoint;  // empty: a fresh run
  std::int64_t step = 0;   // steps completed in the checkpoint
};

// Resumes from train.resume: "auto" takes the newest checkpoint of this run (files of other
// runs or without a run id are ignored; when none is the run's own, Error(Config) names them);
// a path must not belong to another run than this directory's. Loads the model and the
// optimiser (each rank its slice), checks the data seed and the step count, and (rank 0) that
// the trace can go on with `probe` (check_trace_continues). Writes nothing. Returns a fresh
// ResumePoint when train.resume is empty. Collective.
ResumePoint resume_run(const RunConfig& cfg, const RunPaths& paths, const RunDir& run,
                       const std::vector<std::int32_t>& probe, Model& model, AdamW& opt,
                       comm::Communicator& world);

// Rank 0 writes the run id (when new) and the resolved configuration and, after a resume, drops
// the metrics lines and trace records the interrupted run wrote after its checkpoint.
// Collective (ends with a barrier).
void commit_run_dir(const RunConfig& cfg, const RunPaths& paths, const RunDir& run,
                    const ResumePoint& resumed, comm::Communicator& world);

}  // namespace routemoe
