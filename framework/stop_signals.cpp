#include "framework/stop_signals.h"

#include <array>
#include <csignal>
#include <utility>

namespace routemoe {

namespace {
constexpr std::array<std::pair<std::string_view, int>, 6> kSignals = {{{"SIGTERM", SIGTERM},
                                                                       {"SIGUSR1", SIGUSR1},
                                                                       {"SIGUSR2", SIGUSR2},
                                                                       {"SIGINT", SIGINT},
                                                                       {"SIGHUP", SIGHUP},
                                                                       {"SIGXCPU", SIGXCPU}}};
}  // namespace

int stop_signal_number(std::string_view name) noexcept {
  for (const auto& [n, number] : kSignals) {
    if (n == name) return number;
  }
  return 0;
}

std::string stop_signal_names() {
  std::string out;
  for (const auto& [n, number] : kSignals) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

}  // namespace routemoe
