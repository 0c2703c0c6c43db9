#pragma once
// Hand-written SVG plots of the trace analysis and the HTML report (docs/analysis.md), laid out
// to go on a slide as they are: every label is measured with the advance widths of DejaVu Sans
// (the first font the files ask for; wider than Helvetica or Arial, so a label measured with it
// fits in those too) and shortened in the middle, or placed, so that no two labels overlap and
// none leaves the canvas, whatever the run names. Legends sit below the plot areas; one colour
// per run and one dash pattern per MoE layer; legends name each run's routers.
//   - fluctuation.svg: top-1 flip rate between consecutive records against the step (or the
//     fractional epoch when the runs' epoch_end records give the steps per epoch);
//   - entropy.svg: expert-load entropy H / log E of every record against the step;
//   - load.svg: expert load at the last record, small multiples: one row of panels per run
//     (wrapped after 4 panels), one panel per MoE layer, the uniform share 1/E marked;
//   - loss.svg: training and validation loss from each run's metrics.jsonl.

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

// Width in px of `text` set in DejaVu Sans at `size` px (bold or regular); a character outside
// ASCII counts as one em (wider than any of them).
double text_width(const std::string& text, double size, bool bold = false);
// `text` shortened in the middle with "..." so that it is at most `width` px wide (unchanged
// when it fits); never splits a UTF-8 character.
std::string fit_text(const std::string& text, double width, double size, bool bold = false);
// Run names for legends and titles, each at most `width` px at `size` px: unchanged when all fit;
// else a prefix they all share (up to a separator) is replaced by "...", the rest shortened in
// the middle, and names that still coincide get " (2)", " (3)", ...
std::vector<std::string> short_names(const std::vector<std::string>& names, double width,
                                     double size);

std::string fluctuation_svg(const std::vector<RunMetrics>& metrics);
std::string entropy_svg(const std::vector<RunMetrics>& metrics);
std::string load_svg(const std::vector<RunMetrics>& metrics);
std::string loss_svg(const std::vector<RunMetrics>& metrics);

// One self-contained HTML page: the runs, the four plots inline and the report's tables.
std::string html_report(const std::vector<RunMetrics>& metrics);

// Writes fluctuation.svg, entropy.svg, load.svg and loss.svg into `dir` (created when missing);
// returns the paths.
std::vector<std::string> write_svg_dir(const std::string& dir,
                                       const std::vector<RunMetrics>& metrics);

}  // namespace routemoe::trace
