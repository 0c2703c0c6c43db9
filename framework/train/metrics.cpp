#include "framework/train/metrics.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string_view>
#include <vector>

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

// Flattens the JSON value at `at` of one metrics line into (column, text) pairs: numbers, null,
// true and false as they are, arrays as column.0, column.1, ... (nested: column.0.3).
std::size_t flatten_value(std::string_view line, std::size_t at, const std::string& column,
                          std::vector<std::pair<std::string, std::string>>& out) {
  while (at < line.size() && line[at] == ' ') ++at;
  if (at < line.size() && line[at] == '[') {
    ++at;
    for (int i = 0; at < line.size(); ++i) {
      while (at < line.size() && line[at] == ' ') ++at;
      if (at >= line.size() || line[at] == ']') return at + 1;
      at = flatten_value(line, at, fmt::format("{}.{}", column, i), out);
      while (at < line.size() && (line[at] == ' ' || line[at] == ',')) ++at;
    }
    return at;
  }
  const std::size_t end = line.find_first_of(",]}", at);
  std::string v(line.substr(at, end - at));
  while (!v.empty() && v.back() == ' ') v.pop_back();
  out.emplace_back(column, v == "null" ? "" : v);
  return end;
}

// The columns of one metrics.jsonl line (which holds no strings but its keys).
std::vector<std::pair<std::string, std::string>> flatten_line(std::string_view line) {
  std::vector<std::pair<std::string, std::string>> out;
  std::size_t at = line.find('"');
  while (at != std::string_view::npos) {
    const std::size_t key_end = line.find('"', at + 1);
    const std::size_t colon = line.find(':', key_end == std::string_view::npos ? at : key_end);
    if (key_end == std::string_view::npos || colon == std::string_view::npos) break;
    const std::string key(line.substr(at + 1, key_end - at - 1));
    at = flatten_value(line, colon + 1, key, out);
    if (at == std::string_view::npos) break;
    at = line.find('"', at);
  }
  return out;
}

}  // namespace

std::string csv_path(const std::string& metrics_jsonl) {
  const std::string ext = ".jsonl";
  const bool jsonl = metrics_jsonl.size() >= ext.size() &&
                     metrics_jsonl.compare(metrics_jsonl.size() - ext.size(), ext.size(), ext) == 0;
  return (jsonl ? metrics_jsonl.substr(0, metrics_jsonl.size() - ext.size()) : metrics_jsonl) +
         ".csv";
}

void write_metrics_csv(const std::string& jsonl_path, const std::string& csv_path) {
  std::ifstream in(jsonl_path);
  RM_CHECK_KIND(Io, in.is_open(), fmt::format("cannot read {}", jsonl_path));
  std::vector<std::vector<std::pair<std::string, std::string>>> rows;
  std::vector<std::string> columns;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    rows.push_back(flatten_line(line));
    for (const auto& [c, v] : rows.back()) {
      if (std::find(columns.begin(), columns.end(), c) == columns.end()) columns.push_back(c);
    }
  }
  std::string text = fmt::format("{}\n", fmt::join(columns, ","));
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < columns.size(); ++i) {
      if (i > 0) text += ',';
      for (const auto& [c, v] : row) {
        if (c == columns[i]) text += v;
      }
    }
    text += '\n';
  }
  const std::string tmp = csv_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.close();
    RM_CHECK_KIND(Io, !out.fail(), fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
  }
  RM_CHECK_KIND(Io, std::rename(tmp.c_str(), csv_path.c_str()) == 0,
                fmt::format("cannot rename {} to {}: {}", tmp, csv_path, std::strerror(errno)));
}

MetricsLog::MetricsLog(const std::string& path, bool enabled, bool append,
                       std::int64_t slots_per_step)
    : path_(path), enabled_(enabled), slots_per_step_(slots_per_step) {
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
  std::string dropped = "[", dropped_frac = "[";
  for (std::size_t m = 0; m < r.moe.size(); ++m) {
    dropped += fmt::format("{}{}", m ? ", " : "", r.moe[m].dropped);
    dropped_frac += fmt::format("{}{}", m ? ", " : "",
                                slots_per_step_ > 0 ? num(static_cast<double>(r.moe[m].dropped) /
                                                              static_cast<double>(slots_per_step_),
                                                          "{:.6f}")
                                                    : std::string("null"));
  }
  dropped += "]";
  dropped_frac += "]";
  write_line(fmt::format(
      "{{\"step\": {}, \"epoch\": {}, \"loss\": {}, \"ce_loss\": {}, \"aux_loss\": {}, "
      "\"balance_loss\": {}, \"z_loss\": {}, \"lr\": {:.6e}, \"grad_norm\": {}, "
      "\"tokens_per_s\": {:.1f}, \"skipped\": {}, \"expert_load\": {}, \"dropped\": {}, "
      "\"dropped_frac\": {}}}\n",
      r.step + 1, epoch, num(r.loss, "{:.6f}"), num(r.ce_loss, "{:.6f}"), num(r.aux_loss, "{:.6f}"),
      num(r.balance_loss, "{:.6f}"), num(r.z_loss, "{:.6f}"), r.lr, num(r.grad_norm, "{:.6f}"),
      tokens_per_s, r.skipped ? "true" : "false", json_loads(r.moe), dropped, dropped_frac));
}

void MetricsLog::validation(std::int64_t steps_done, double val_loss) {
  if (!enabled_) return;
  write_line(
      fmt::format("{{\"step\": {}, \"val_loss\": {}}}\n", steps_done, num(val_loss, "{:.6f}")));
}

void MetricsLog::sync() {
  if (!enabled_) return;
  const comm::WatchedOp watched("metrics sync", path_);
  RM_CHECK_KIND(Io, ::fsync(fd_) == 0,
                fmt::format("cannot write {}: {} (fsync)", path_, std::strerror(errno)));
  const std::string csv = csv_path(path_);
  write_metrics_csv(path_, csv);
}

}  // namespace routemoe
