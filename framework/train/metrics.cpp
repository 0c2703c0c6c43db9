#include "framework/train/metrics.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "comm/watchdog.h"
#include "framework/error.h"

namespace routemoe {

namespace {

std::string json_loads(const std::vector<MoeLayerStats>& moe) {
  std::string s = "[";
  for (std::size_t m = 0; m < moe.size(); ++m) {
    s += fmt::format("{}[{}]", m ? ", " : "", fmt::join(moe[m].load, ", "));
  }
  return s + "]";
}

// A number with `digits` decimals, or null when it is not finite (JSON has no NaN).
std::string num(double v, const char* spec) {
  return std::isfinite(v) ? fmt::format(fmt::runtime(spec), v) : std::string("null");
}

}  // namespace

MetricsLog::MetricsLog(const std::string& path, bool enabled, bool append)
    : path_(path), enabled_(enabled) {
  if (!enabled_) return;
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC);
  fd_ = ::open(path.c_str(), flags, 0644);
  RM_CHECK_KIND(Io, fd_ >= 0, fmt::format("cannot open {}: {}", path, std::strerror(errno)));
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::write_line(const std::string& line) {
  if (!enabled_) return;
  const comm::WatchedOp watched("metrics write", path_);
  const off_t before = ::lseek(fd_, 0, SEEK_END);
  std::size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      // Leave whole lines only: drop the part of this one that made it (best effort).
      if (before >= 0 && ::ftruncate(fd_, before) != 0) errno = err;
      RM_FAIL(Io, fmt::format("cannot write {}: {} (errno {}; after {} of {} bytes of a line)",
                              path_, std::strerror(err), err, done, line.size()));
    }
    done += static_cast<std::size_t>(n);
  }
}

void MetricsLog::step(const StepResult& r, std::int64_t epoch, double tokens_per_s) {
  if (!enabled_) return;
  write_line(fmt::format(
      "{{\"step\": {}, \"epoch\": {}, \"loss\": {}, \"ce_loss\": {}, \"aux_loss\": {}, \"lr\": "
      "{:.6e}, \"grad_norm\": {}, \"tokens_per_s\": {:.1f}, \"skipped\": {}, \"expert_load\": "
      "{}}}\n",
      r.step, epoch, num(r.loss, "{:.6f}"), num(r.ce_loss, "{:.6f}"), num(r.aux_loss, "{:.6f}"),
      r.lr, num(r.grad_norm, "{:.6f}"), tokens_per_s, r.skipped ? "true" : "false",
      json_loads(r.moe)));
}

void MetricsLog::validation(std::int64_t step, double val_loss) {
  if (!enabled_) return;
  write_line(fmt::format("{{\"step\": {}, \"val_loss\": {}}}\n", step, num(val_loss, "{:.6f}")));
}

void MetricsLog::sync() {
  if (!enabled_) return;
  const comm::WatchedOp watched("metrics sync", path_);
  RM_CHECK_KIND(Io, ::fsync(fd_) == 0,
                fmt::format("cannot write {}: {} (fsync)", path_, std::strerror(errno)));
}

}  // namespace routemoe
