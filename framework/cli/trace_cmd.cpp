// `routemoe trace RUN_OR_FILE...`: routing-fluctuation analysis of trace files, run directories
// and checkpoints (docs/analysis.md). The table goes to stdout; CSV, JSON, SVG and the HTML
// report only to the files named by --csv, --json, --svg and --html (docs/architecture.md,
// "Conventions").

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>

#include "framework/cli/commands.h"
#include "framework/trace/analysis.h"
#include "framework/trace/svg.h"

namespace routemoe::cli {

Runner register_trace(CLI::App& app) {
  struct State {
    std::vector<std::string> inputs;
    std::vector<std::string> labels;
    std::string csv_dir;
    std::string json_path;
    std::string svg_dir;
    std::string html_path;
  };
  auto st = std::make_shared<State>();
  CLI::App* cmd = app.add_subcommand(
      "trace",
      "routing-fluctuation analysis of probe-set routing records: flip rates, last-change "
      "epochs, expert load, cross-layer agreement (docs/analysis.md)");
  cmd->add_option("inputs", st->inputs,
                  "trace files (trace.h5), run directories, or checkpoint files (the checkpoints "
                  "of one run directory form one run, ordered by step)")
      ->required();
  cmd->add_option("--label", st->labels,
                  "names of the runs, in order, comma-separated (default: run directory names)")
      ->delimiter(',');
  cmd->add_option("--csv", st->csv_dir,
                  "write flips.csv, load.csv, last_change.csv, agreement.csv into DIR");
  cmd->add_option("--json", st->json_path, "write all metrics as JSON to FILE");
  cmd->add_option("--svg", st->svg_dir,
                  "write fluctuation.svg, entropy.svg, load.svg and loss.svg into DIR");
  cmd->add_option("--html", st->html_path,
                  "write one self-contained HTML report (tables and all plots) to FILE");
  return [st]() {
    const std::vector<trace::Run> runs = trace::load_runs(st->inputs, st->labels);
    std::vector<trace::RunMetrics> metrics;
    for (const trace::Run& run : runs) metrics.push_back(trace::analyse(run));
    std::fputs(trace::format_table(metrics).c_str(), stdout);
    std::fflush(stdout);
    std::vector<std::string> written;
    if (!st->csv_dir.empty()) {
      for (const std::string& p : trace::write_csv_dir(st->csv_dir, metrics)) written.push_back(p);
    }
    // Files go where they are named; a missing parent directory is created (as --csv/--svg
    // create theirs).
    auto write_file = [&](const std::string& path, const std::string& text) {
      const std::filesystem::path parent = std::filesystem::path(path).parent_path();
      std::error_code ec;
      if (!parent.empty()) std::filesystem::create_directories(parent, ec);
      trace::write_text_file(path, text);
      written.push_back(path);
    };
    if (!st->json_path.empty()) write_file(st->json_path, trace::to_json(metrics));
    if (!st->html_path.empty()) write_file(st->html_path, trace::html_report(metrics));
    if (!st->svg_dir.empty()) {
      for (const std::string& p : trace::write_svg_dir(st->svg_dir, metrics)) written.push_back(p);
    }
    for (const std::string& p : written) fmt::print(stderr, "trace: wrote {}\n", p);
    return 0;
  };
}

}  // namespace routemoe::cli
