// The watchdog thread (comm/watchdog.h).

#include "comm/watchdog.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "comm/mpi_runtime.h"
#include "framework/error.h"

namespace routemoe::comm {

namespace {

std::int64_t monotonic_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::int64_t wall_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// What the job thread is doing, written by WatchedOp, read by the watchdog thread.
struct Progress {
  std::atomic<std::uint64_t> entered{0};   // watched operations entered so far
  std::atomic<const char*> what{nullptr};  // the innermost open one (nullptr: none)
  std::atomic<std::int64_t> since_ns{0};   // monotonic time it began or last made progress
  std::atomic<std::int64_t> step{-1};
};
Progress g_progress;

// The innermost open operation that has a detail (a file path), with that detail; rarely set,
// so a lock.
std::mutex g_detail_mutex;
const char* g_detail_what = nullptr;
std::string g_detail;

// "all_reduce (during checkpoint write /x/ckpt.h5)" or "checkpoint write /x/ckpt.h5".
std::string describe(const char* what) {
  std::lock_guard<std::mutex> lock(g_detail_mutex);
  if (g_detail_what == nullptr) return what;
  if (g_detail_what == what) return fmt::format("{} {}", what, g_detail);
  return fmt::format("{} (during {} {})", what, g_detail_what, g_detail);
}

// `s` with blanks replaced, for the space-separated heartbeat line.
std::string no_blanks(std::string s) {
  std::replace_if(
      s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\n'; }, '_');
  return s;
}

// One heartbeat as written to and read from a rank's file.
struct Beat {
  long pid = 0;
  std::string host;
  std::uint64_t entered = 0;
  std::string what;  // "-" when not in a watched operation
  double waiting_s = 0.0;
  std::int64_t stamp_ns = 0;  // writer's wall clock
};

std::string beat_path(const std::string& dir, int rank) {
  return fmt::format("{}/rank_{}", dir, rank);
}

// Parses "pid=.. host=.. entered=.. op=.. waiting_s=.. stamp_ns=.."; false when malformed.
bool parse_beat(const std::string& line, Beat& b) {
  std::istringstream in(line);
  std::string field;
  int seen = 0;
  while (in >> field) {
    const std::size_t eq = field.find('=');
    if (eq == std::string::npos) return false;
    const std::string key = field.substr(0, eq), value = field.substr(eq + 1);
    try {
      if (key == "pid") b.pid = std::stol(value);
      if (key == "host") b.host = value;
      if (key == "entered") b.entered = std::stoull(value);
      if (key == "op") b.what = value;
      if (key == "waiting_s") b.waiting_s = std::stod(value);
      if (key == "stamp_ns") b.stamp_ns = std::stoll(value);
    } catch (const std::exception&) {
      return false;
    }
    ++seen;
  }
  return seen == 6;
}

class Watchdog {
 public:
  explicit Watchdog(const WatchdogOptions& o) : opt_(o) {
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "?");
    host_ = host;
    interval_ns_ = static_cast<std::int64_t>(std::clamp(o.timeout_s / 4.0, 0.05, 5.0) * 1e9);
    if (!opt_.heartbeat_dir.empty()) open_heartbeat();
    beat();
    thread_ = std::thread([this] { loop(); });
  }

  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(beat_path(opt_.heartbeat_dir, opt_.rank).c_str());
    }
  }

  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  void open_heartbeat() {
    std::error_code ec;
    std::filesystem::create_directories(opt_.heartbeat_dir, ec);
    const std::string path = beat_path(opt_.heartbeat_dir, opt_.rank);
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    RM_CHECK_KIND(
        Io, fd_ >= 0,
        fmt::format("cannot write the heartbeat file {}: {}", path, std::strerror(errno)));
  }

  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    std::int64_t last_wake = monotonic_ns();
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::nanoseconds(interval_ns_));
      if (stop_) break;
      const std::int64_t now = monotonic_ns();
      if (now - last_wake > 2 * interval_ns_ + 1'000'000'000) forgive_suspension(now);
      last_wake = now;
      beat();
      const char* what = g_progress.what.load(std::memory_order_acquire);
      const std::int64_t since = g_progress.since_ns.load(std::memory_order_acquire);
      const double waited_s = static_cast<double>(now - since) * 1e-9;
      if (what == nullptr) continue;
      // Half-way: note the others' heartbeats, so that at the timeout a rank whose heartbeat has
      // not moved since is known to have stopped answering.
      if (waited_s > opt_.timeout_s / 2 && snapshot_since_ != since) {
        snapshot_ = read_beats();
        snapshot_since_ = since;
      }
      if (waited_s > opt_.timeout_s) fire(what, now - since, snapshot_since_ == since);
    }
  }

  // The other ranks' heartbeats (index = rank; a rank without a readable file has stamp 0).
  std::vector<Beat> read_beats() const {
    std::vector<Beat> beats(static_cast<std::size_t>(opt_.world_size));
    if (opt_.heartbeat_dir.empty()) return beats;
    for (int r = 0; r < opt_.world_size; ++r) {
      if (r == opt_.rank) continue;
      std::ifstream in(beat_path(opt_.heartbeat_dir, r));
      std::string line;
      Beat b;
      if (in && std::getline(in, line) && parse_beat(line, b))
        beats[static_cast<std::size_t>(r)] = b;
    }
    return beats;
  }

  // This process did not run for a while (SIGSTOP and SIGCONT, a suspended job or VM): the wait
  // it is in counts from now, so a rank that was stopped does not blame the others when it
  // resumes (and a job suspended as a whole resumes without a timeout).
  static void forgive_suspension(std::int64_t now) {
    std::int64_t since = g_progress.since_ns.load(std::memory_order_acquire);
    g_progress.since_ns.compare_exchange_strong(since, now, std::memory_order_acq_rel);
  }

  // Rewrites this rank's heartbeat in place (fixed length, so no truncation is needed).
  void beat() {
    if (fd_ < 0) return;
    const char* what = g_progress.what.load(std::memory_order_acquire);
    const std::int64_t since = g_progress.since_ns.load(std::memory_order_acquire);
    const double waiting = what ? static_cast<double>(monotonic_ns() - since) * 1e-9 : 0.0;
    std::string line =
        fmt::format("pid={} host={} entered={} op={} waiting_s={:.3f} stamp_ns={}", ::getpid(),
                    no_blanks(host_), g_progress.entered.load(std::memory_order_relaxed),
                    what ? no_blanks(what) : "-", waiting, wall_ns());
    line.resize(std::max<std::size_t>(line.size(), 255), ' ');
    line += '\n';
    // A failed heartbeat write is not an error of the job: the reader then sees a stale beat.
    [[maybe_unused]] const ssize_t n = ::pwrite(fd_, line.data(), line.size(), 0);
  }

  // What the other ranks' heartbeats say, for the timeout message. With a snapshot taken half-way
  // through the wait, a rank whose heartbeat has not changed since stopped answering; without
  // one, a heartbeat older than a few intervals says so.
  std::string peers_report(bool have_snapshot) const {
    if (opt_.heartbeat_dir.empty()) return "other ranks unknown (no heartbeat directory)";
    const double stale_s = 3.0 * static_cast<double>(interval_ns_) * 1e-9 + 1.0;
    const std::vector<Beat> now = read_beats();
    std::vector<std::string> stopped, alive;
    for (int r = 0; r < opt_.world_size; ++r) {
      if (r == opt_.rank) continue;
      const Beat& b = now[static_cast<std::size_t>(r)];
      if (b.stamp_ns == 0) {
        stopped.push_back(fmt::format("rank {} (no heartbeat file)", r));
        continue;
      }
      const double age = static_cast<double>(wall_ns() - b.stamp_ns) * 1e-9;
      const bool frozen = have_snapshot
                              ? snapshot_[static_cast<std::size_t>(r)].stamp_ns == b.stamp_ns
                              : age > stale_s;
      const std::string last =
          b.what == "-" ? fmt::format("outside any watched operation after #{}", b.entered)
                        : fmt::format("in {} #{}", b.what, b.entered);
      if (frozen) {
        stopped.push_back(fmt::format("rank {} (pid {} on {}, no heartbeat for {:.1f} s, last {})",
                                      r, b.pid, b.host, age, last));
      } else {
        alive.push_back(
            fmt::format("rank {} ({}{})", r, last,
                        b.what == "-" ? "" : fmt::format(" for {:.1f} s", b.waiting_s)));
      }
    }
    auto list = [](const std::vector<std::string>& v) {
      std::string s;
      const std::size_t shown = std::min<std::size_t>(v.size(), 8);
      for (std::size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + v[i];
      if (v.size() > shown) s += fmt::format(" and {} more", v.size() - shown);
      return s;
    };
    std::string out = stopped.empty() ? std::string("no rank stopped answering")
                                      : "stopped answering: " + list(stopped);
    if (!alive.empty()) out += "; alive: " + list(alive);
    return out;
  }

  [[noreturn]] void fire(const char* what, std::int64_t waited_ns, bool have_snapshot) {
    const std::int64_t step = g_progress.step.load(std::memory_order_relaxed);
    const std::string msg = fmt::format(
        "routemoe: timeout error on rank {} (pid {} on {}): no progress for {:.1f} s in {} "
        "(watched operation #{}{}; parallel.timeout_s = {:g}); {}; aborting the job\n",
        opt_.rank, ::getpid(), host_, static_cast<double>(waited_ns) * 1e-9, describe(what),
        g_progress.entered.load(std::memory_order_relaxed),
        step >= 0 ? fmt::format(", step {}", step + 1) : "", opt_.timeout_s,
        peers_report(have_snapshot));
    std::fputs(msg.c_str(), stderr);
    std::fflush(stderr);
    std::fflush(stdout);
    // From this thread: MPI_Abort (which Open MPI allows from any thread) ends every rank; a
    // single process just ends.
    if (opt_.world_size > 1 && mpi_active()) MPI_Abort(MPI_COMM_WORLD, kExitTimeout);
    std::_Exit(kExitTimeout);
  }

  WatchdogOptions opt_;
  std::string host_;
  std::int64_t interval_ns_ = 0;
  int fd_ = -1;
  std::int64_t snapshot_since_ = -1;  // the wait the snapshot belongs to
  std::vector<Beat> snapshot_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

std::unique_ptr<Watchdog>& instance() {
  static std::unique_ptr<Watchdog> w;
  return w;
}

}  // namespace

void start_watchdog(const WatchdogOptions& options) {
  RM_CHECK(options.timeout_s > 0, "start_watchdog: timeout_s must be positive");
  stop_watchdog();
  instance() = std::make_unique<Watchdog>(options);
}

void stop_watchdog() noexcept {
  instance().reset();
}

bool watchdog_running() noexcept {
  return instance() != nullptr;
}

void watchdog_note_step(std::int64_t step) noexcept {
  g_progress.step.store(step, std::memory_order_relaxed);
}

WatchedOp::WatchedOp(const char* what) noexcept
    : outer_what_(g_progress.what.load(std::memory_order_relaxed)) {
  g_progress.entered.fetch_add(1, std::memory_order_relaxed);
  g_progress.since_ns.store(monotonic_ns(), std::memory_order_release);
  g_progress.what.store(what, std::memory_order_release);
}

WatchedOp::WatchedOp(const char* what, std::string detail) : WatchedOp(what) {
  has_detail_ = true;
  std::lock_guard<std::mutex> lock(g_detail_mutex);
  outer_detail_what_ = std::exchange(g_detail_what, what);
  outer_detail_ = std::exchange(g_detail, std::move(detail));
}

WatchedOp::~WatchedOp() {
  if (has_detail_) {
    std::lock_guard<std::mutex> lock(g_detail_mutex);
    g_detail_what = outer_detail_what_;
    g_detail = std::move(outer_detail_);
  }
  // Leaving a span is progress: an enclosing span counts again from now.
  g_progress.since_ns.store(monotonic_ns(), std::memory_order_release);
  g_progress.what.store(outer_what_, std::memory_order_release);
}

WatchdogGuard::WatchdogGuard(const WatchdogOptions& options) {
  if (options.timeout_s <= 0) return;
  start_watchdog(options);
  started_ = true;
}

WatchdogGuard::~WatchdogGuard() {
  if (started_) stop_watchdog();
}

}  // namespace routemoe::comm
