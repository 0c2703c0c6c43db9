#pragma once
// Preemption (docs/parallelism.md, "Preemption"): the signals of train.stop_signals ask the run
// to stop. The handler only records the signal (one lock-free atomic; async-signal-safe); the
// training loop agrees on it once per step (stop_agreed: a max all-reduce of the signal number),
// so every rank finishes the same step, the run writes a checkpoint, and the process ends with
// kExitPreempted, which a job script can take as "requeue me". A second stop signal, while the
// first is being handled, ends the process at once with 128 + the signal number.

#include <csignal>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"

namespace routemoe {

// Exit status after a preemption checkpoint (EX_TEMPFAIL of sysexits.h: "try again later").
inline constexpr int kExitPreempted = 75;

// Installs the handlers of the named signals (framework/stop_signals.h names) for its lifetime
// and clears the record of an earlier signal, unless it is nested in a guard that handles the
// same signals (then an earlier signal stays recorded); the destructor restores the previous
// handlers.
class StopSignals {
 public:
  explicit StopSignals(const std::vector<std::string>& names);
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The first stop signal this process received (0: none).
  static int received() noexcept;

 private:
  std::vector<std::pair<int, struct sigaction>> previous_;
};

// Collective over `world`: the largest signal number any rank received (0: none), the same on
// every rank. One all-reduce.
int stop_agreed(comm::Communicator& world);

// "SIGTERM" for a signal number (for messages).
std::string signal_name(int signo);

}  // namespace routemoe
