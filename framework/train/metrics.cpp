#include "framework/train/metrics.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

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

}  // namespace

MetricsLog::MetricsLog(const std::string& path, bool enabled, bool append)
    : path_(path), enabled_(enabled) {
  if (!enabled_) return;
  out_.open(path, append ? std::ios::app : std::ios::trunc);
  RM_CHECK_KIND(Io, out_.good(), fmt::format("cannot write {}", path));
}

void MetricsLog::step(const StepResult& r, std::int64_t epoch, double tokens_per_s) {
  if (!enabled_) return;
  out_ << fmt::format(
      "{{\"step\": {}, \"epoch\": {}, \"loss\": {:.6f}, \"ce_loss\": {:.6f}, \"aux_loss\": "
      "{:.6f}, \"lr\": {:.6e}, \"grad_norm\": {:.6f}, \"tokens_per_s\": {:.1f}, \"expert_load\": "
      "{}}}\n",
      r.step, epoch, r.loss, r.ce_loss, r.aux_loss, r.lr, r.grad_norm, tokens_per_s,
      json_loads(r.moe));
}

void MetricsLog::validation(std::int64_t step, double val_loss) {
  if (!enabled_) return;
  out_ << fmt::format("{{\"step\": {}, \"val_loss\": {:.6f}}}\n", step, val_loss);
}

void MetricsLog::flush() {
  if (enabled_) out_.flush();
}

}  // namespace routemoe
