#pragma once
// Hand-written SVG plots of the trace analysis (docs/analysis.md):
//   - fluctuation.svg: top-1 flip rate between consecutive records against epoch (fractional
//     epoch = step / steps_per_epoch when the runs' epoch_end records give it, else step), one
//     polyline per MoE layer per run, all runs on one chart with a legend;
//   - load.svg: expert load bar charts at the last record, one panel per run and layer, with the
//     uniform share 1/E marked.

#include <string>
#include <vector>

#include "framework/trace/analysis.h"

namespace routemoe::trace {

// Steps per epoch of a run, from a record with reason epoch_end at epoch > 0 (its step is a
// whole number of epochs); 0 when the run has no such record.
double steps_per_epoch(const Run& run);

// "Nice" axis ticks (1, 2 or 5 times a power of ten) covering [lo, hi] with about `target`
// intervals; the first and last ticks enclose the range.
std::vector<double> nice_ticks(double lo, double hi, int target);

std::string fluctuation_svg(const std::vector<RunMetrics>& metrics);
std::string load_svg(const std::vector<RunMetrics>& metrics);

// Writes fluctuation.svg and load.svg into `dir` (created when missing); returns the paths.
std::vector<std::string> write_svg_dir(const std::string& dir,
                                       const std::vector<RunMetrics>& metrics);

}  // namespace routemoe::trace
