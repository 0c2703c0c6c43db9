#pragma once
// The signals that `train.stop_signals` may name (docs/configuration.md): the ones a batch system
// or a user sends to ask a job to stop (Slurm: SIGTERM at scancel and at the time limit after
// `--signal`, usually SIGUSR1 or SIGUSR2 a while before). The trainer installs their handlers
// (framework/train/preempt.h); the configuration check refuses other names.

#include <string>
#include <string_view>

namespace routemoe {

// The signal number of `name` ("SIGTERM", "SIGUSR1", ...; exact spelling), 0 when not accepted.
int stop_signal_number(std::string_view name) noexcept;
// The accepted names, comma-separated (for messages).
std::string stop_signal_names();

}  // namespace routemoe
