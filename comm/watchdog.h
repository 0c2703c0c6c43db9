#pragma once
// The watchdog of a running job (docs/parallelism.md, "Timeouts"): a thread that ends the whole
// job when this rank has been waiting in one collective or one file write for longer than
// `parallel.timeout_s`, instead of letting it hang forever on a rank that stopped answering
// (a SIGSTOPped or swapped-out process, a dead node, a hung file system).
//
// The code that may block marks the span with a WatchedOp (the MPI communicator does it for every
// collective; the trainer for checkpoint, trace and metrics writes). Marking is a few atomic
// stores, no lock, no system call. Spans nest: leaving an inner span counts as progress, so an
// outer span (a checkpoint write made of many collectives) fires only when no inner step has
// completed for the whole timeout.
//
// Heartbeats: with a heartbeat directory (the trainer uses <train.out_dir>/heartbeat, which all
// ranks must see), the watchdog thread of each rank rewrites its file `rank_<r>` every
// timeout/4 (at most every 5 s): pid, host, the number of watched operations it has entered,
// the one it is in and for how long. When the timeout fires, the rank reads the others' files and
// names the ranks that stopped answering (no heartbeat for several intervals: the process is
// stopped or dead, or its node is unreachable) and says where the live ones are (a rank in
// another operation, or outside any, did not reach this one). One line on stderr:
//   routemoe: timeout error on rank 0 (pid 812 on node1): no progress for 10.0 s in all_reduce
//   (watched operation #4711, step 17; parallel.timeout_s = 10); stopped answering: rank 1
//   (pid 813 on node1, no heartbeat for 10.2 s, last in all_to_all_v #4709); alive: rank 2 (in
//   all_reduce #4711 for 10.0 s); aborting the job
// and the job ends with exit status kExitTimeout (MPI_Abort when MPI runs with several ranks,
// else _exit). Time during which this process itself did not run (SIGSTOP, a suspended job)
// does not count against its own wait: a resumed rank does not blame the others.

#include <cstdint>
#include <string>

namespace routemoe::comm {

// Exit status of a job ended by the watchdog.
inline constexpr int kExitTimeout = 3;

struct WatchdogOptions {
  double timeout_s = 300.0;   // > 0
  std::string heartbeat_dir;  // "" : no heartbeat files (only this rank is named)
  int rank = 0;
  int world_size = 1;
};

// Starts the watchdog thread (replacing a running one). Not thread-safe against itself: call
// from the main thread. Throws Error(Io) when the heartbeat directory cannot be written.
void start_watchdog(const WatchdogOptions& options);
// Stops and joins the thread and removes this rank's heartbeat file. Idempotent; never throws.
void stop_watchdog() noexcept;
// True while a watchdog thread runs.
bool watchdog_running() noexcept;
// The current training step, for the timeout message (-1: none).
void watchdog_note_step(std::int64_t step) noexcept;

// Marks the lifetime of this object as a wait the watchdog times: `what` names the operation
// and must be a string literal (the watchdog thread may read it at any time); `detail` (a file
// path) is copied and shown after it in the timeout message. Use from the thread that runs the
// job (the watchdog does not time other threads).
class WatchedOp {
 public:
  explicit WatchedOp(const char* what) noexcept;
  WatchedOp(const char* what, std::string detail);
  ~WatchedOp();
  WatchedOp(const WatchedOp&) = delete;
  WatchedOp& operator=(const WatchedOp&) = delete;

 private:
  const char* outer_what_;
  bool has_detail_ = false;
  const char* outer_detail_what_ = nullptr;
  std::string outer_detail_;
};

// RAII: start_watchdog in the constructor when timeout_s > 0, stop_watchdog in the destructor.
class WatchdogGuard {
 public:
  explicit WatchdogGuard(const WatchdogOptions& options);
  ~WatchdogGuard();
  WatchdogGuard(const WatchdogGuard&) = delete;
  WatchdogGuard& operator=(const WatchdogGuard&) = delete;

 private:
  bool started_ = false;
};

}  // namespace routemoe::comm
