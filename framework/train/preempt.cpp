#include "framework/train/preempt.h"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "framework/error.h"
#include "framework/stop_signals.h"

namespace routemoe {

namespace {

std::atomic<int> g_received{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free flag");

extern "C" void on_stop_signal(int signo) {
  int none = 0;
  // First signal: remember it. Any later one: the user or the batch system insists.
  if (!g_received.compare_exchange_strong(none, signo)) _exit(128 + signo);
}

}  // namespace

StopSignals::StopSignals(const std::vector<std::string>& names) {
  std::vector<int> numbers;
  for (const std::string& name : names) {
    if (name.empty()) continue;
    const int signo = stop_signal_number(name);
    RM_CHECK_KIND(Config, signo != 0, fmt::format("train.stop_signals: unknown signal '{}'", name));
    numbers.push_back(signo);
  }
  // While one stop signal is handled the others wait, so they count in the order they came.
  sigset_t all;
  sigemptyset(&all);
  for (int signo : numbers) sigaddset(&all, signo);
  // Inside a guard that already handles these signals (the train command holds one from its
  // start to the end of MPI, run_training another), a signal recorded earlier is kept.
  bool nested = !numbers.empty();
  for (int signo : numbers) {
    struct sigaction current {};
    nested =
        nested && sigaction(signo, nullptr, &current) == 0 && current.sa_handler == on_stop_signal;
  }
  if (!nested) g_received.store(0);
  for (int signo : numbers) {
    const std::string name = signal_name(signo);
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    action.sa_mask = all;
    action.sa_flags = SA_RESTART;
    struct sigaction old {};
    RM_CHECK_KIND(Io, sigaction(signo, &action, &old) == 0,
                  fmt::format("cannot install a handler for {}: {}", name, std::strerror(errno)));
    previous_.emplace_back(signo, old);
  }
}

StopSignals::~StopSignals() {
  for (auto it = previous_.rbegin(); it != previous_.rend(); ++it) {
    sigaction(it->first, &it->second, nullptr);
  }
}

int StopSignals::received() noexcept {
  return g_received.load();
}

int stop_agreed(comm::Communicator& world) {
  std::int32_t signo = StopSignals::received();
  world.all_reduce(&signo, 1, comm::DataType::I32, comm::ReduceOp::Max);
  return signo;
}

std::string signal_name(int signo) {
  const char* abbrev = sigabbrev_np(signo);
  return abbrev != nullptr ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", signo);
}

}  // namespace routemoe
