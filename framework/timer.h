#pragma once
// Wall-clock timers for steps, phases and benchmarks (steady clock). A TimerSet is an ordinary
// object owned by whoever measures (the trainer, a benchmark); there is no global registry.

#include <chrono>
#include <map>
#include <string>

namespace routemoe {

class Timer {
 public:
  Timer() : start_(std::chrono::steady_clock::now()) {}
  void restart() { start_ = std::chrono::steady_clock::now(); }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

struct TimerStats {
  double total_s = 0.0;
  long long count = 0;
};

// Named accumulating timers: `auto s = timers.scope("attention");` adds the scope's duration.
class TimerSet {
 public:
  class Scope {
   public:
    Scope(TimerSet& set, std::string name) : set_(set), name_(std::move(name)) {}
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    ~Scope() { set_.add(name_, timer_.seconds()); }

   private:
    TimerSet& set_;
    std::string name_;
    Timer timer_;
  };

  Scope scope(std::string name) { return Scope(*this, std::move(name)); }
  void add(const std::string& name, double seconds) {
    TimerStats& s = stats_[name];
    s.total_s += seconds;
    ++s.count;
  }
  const std::map<std::string, TimerStats>& stats() const { return stats_; }
  void clear() { stats_.clear(); }
  // "name: total s (count, mean ms)" lines sorted by name.
  std::string report() const;

 private:
  std::map<std::string, TimerStats> stats_;
};

}  // namespace routemoe
