#include "framework/timer.h"

#include <fmt/format.h>

namespace routemoe {

std::string TimerSet::report() const {
  std::string out;
  for (const auto& [name, s] : stats_) {
    out += fmt::format("{:<24} {:>10.3f} s {:>8} x {:>10.3f} ms\n", name, s.total_s, s.count,
                       s.count > 0 ? 1e3 * s.total_s / static_cast<double>(s.count) : 0.0);
  }
  return out;
}

}  // namespace routemoe
