#pragma once
// Wall-clock timers for steps, phases and benchmarks (steady clock). A TimerSet is an ordinary
// object owned by whoever measures (the trainer, a benchmark); there is no global registry. Code
// that can be profiled takes a `TimerSet*` from its caller (null: not profiled) and opens a
// `Phase` around each piece of work; with a null set a Phase does nothing (no clock read, no
// allocation), so instrumented code costs nothing when nobody asked for a profile.

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

// What a named timer accumulated: time, number of scopes, and the work done in them (matrix
// FLOPs and bytes moved, as the instrumented code counts them; 0 when not counted).
struct TimerStats {
  double total_s = 0.0;
  long long count = 0;
  double flops = 0.0;
  double bytes = 0.0;
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
  void add(const std::string& name, double seconds, double flops = 0.0, double bytes = 0.0) {
    TimerStats& s = stats_[name];
    s.total_s += seconds;
    ++s.count;
    s.flops += flops;
    s.bytes += bytes;
  }
  const std::map<std::string, TimerStats>& stats() const { return stats_; }
  void clear() { stats_.clear(); }
  // "name: total s (count, mean ms)" lines sorted by name.
  std::string report() const;

 private:
  std::map<std::string, TimerStats> stats_;
};

// One timed phase of a profiled computation: adds its duration, and the FLOPs and bytes it
// declares, to `set` under `name` when it ends. With set == nullptr it does nothing at all.
// Phases of one profile should not nest (each is meant to be one row of a table whose rows sum
// to the whole). `name` must outlive the phase (a string literal).
class Phase {
 public:
  Phase(TimerSet* set, const char* name, double flops = 0.0, double bytes = 0.0)
      : set_(set), name_(name), flops_(flops), bytes_(bytes) {
    if (set_ != nullptr) start_ = std::chrono::steady_clock::now();
  }
  Phase(const Phase&) = delete;
  Phase& operator=(const Phase&) = delete;
  ~Phase() {
    if (set_ == nullptr) return;
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    set_->add(name_, s, flops_, bytes_);
  }

 private:
  TimerSet* set_;
  const char* name_;
  double flops_;
  double bytes_;
  std::chrono::steady_clock::time_point start_{};
};

}  // namespace routemoe

namespace routemoe::phase {

// The phases of one training step as the model, its layers and `routemoe bench train` name them
// (the rows of bench train's profile table). Each piece of work of a step is in exactly one.
inline constexpr const char* kQkvProj = "attention qkv+proj GEMMs";
inline constexpr const char* kAttnCore = "attention scores/softmax/values";
inline constexpr const char* kAttnElementwise = "attention elementwise";
inline constexpr const char* kExperts = "experts/FFN (GEMMs, bias, GELU)";
inline constexpr const char* kLmHead = "LM head GEMMs";
inline constexpr const char* kRouter = "router module";
inline constexpr const char* kGates = "top-k, gates, aux losses";
inline constexpr const char* kSlots = "slot plan + permutation";
inline constexpr const char* kExchange = "exchange (dispatch/combine)";
inline constexpr const char* kLayerNorm = "layernorm";
inline constexpr const char* kElementwise = "residual/embedding elementwise";
inline constexpr const char* kCrossEntropy = "cross-entropy";
inline constexpr const char* kZeroGrad = "zero gradients";
inline constexpr const char* kGradNorm = "gradient norm + clip";
inline constexpr const char* kGradReduce = "gradient reduction";
inline constexpr const char* kOptimizer = "optimizer (AdamW)";

}  // namespace routemoe::phase
