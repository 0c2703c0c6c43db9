#pragma once
// The benchmark engine behind every `routemoe bench` command (docs/performance.md, "How the
// benchmarks run").
//
// A benchmark is a `Benchmark` entry: a name, how it runs under MPI, the defaults of the common
// options, and a `setup` function that adds its own options and returns the function that runs
// it. The engine owns everything the benchmarks share:
//   - the common options --warmup, --iters, --threads and --json FILE;
//   - the MPI set-up (none, optional under mpirun, or at least two ranks) and the world
//     communicator, split into expert-parallel groups on request;
//   - the timing loop (warm-up iterations, then timed ones) and the statistics of a case
//     (median, min, max; for several ranks, the maximum over the ranks of each rank's figure);
//   - the machine-load check: the cores other processes took during the run, printed as the
//     last line of every benchmark and written to the JSON file;
//   - the summary line of a case (docs/architecture.md, "Conventions": `bench <name> <key>=<case>
//   ...` with each
//     figure and its unit and, where there is a comparison, `ratio=<r> (<a>/<b>...)`);
//   - the JSON file: {"bench": ..., <header fields>, "cases": [...], <load fields>}.
// Each benchmark only builds its cases, times them with the engine, and prints them.

#include <CLI/CLI.hpp>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "framework/timer.h"

namespace routemoe::comm {
class Communicator;
struct ProcessGroups;
}  // namespace routemoe::comm

namespace routemoe::bench {

// ---- timing ------------------------------------------------------------------------------------

// How many times a case runs: `warmup` untimed iterations, then `iters` timed ones; with
// `min_seconds` > 0, timed iterations continue until that much timed work has been done (single
// process only: ranks would stop after different counts).
struct Schedule {
  int warmup = 1;
  int iters = 5;
  double min_seconds = 0.0;
};

// Statistics of the timed iterations of a case (seconds, or any per-iteration figure). The
// median of an even count is the mean of the two middle values.
struct Stats {
  double median = 0.0;
  double min = 0.0;
  double max = 0.0;
  int count = 0;
};

Stats summarize(std::vector<double> samples);

// Runs `body` by `schedule` and returns the seconds of each timed iteration.
std::vector<double> time_iterations(const Schedule& schedule, const std::function<void()>& body);

// summarize(time_iterations(schedule, body)).
Stats time_case(const Schedule& schedule, const std::function<void()>& body);

// For iterations that time themselves (several figures per iteration, barriers between them):
// calls body(iteration, timed) for schedule.warmup untimed then schedule.iters timed iterations
// (min_seconds is not used, so every rank runs the same count).
void run_iterations(const Schedule& schedule,
                    const std::function<void(int iteration, bool timed)>& body);

// The figure of a multi-rank case: the maximum over the ranks of `world` of each rank's median
// (and of each rank's min and max). Collective; one all-reduce for all of `stats`.
void max_over_ranks(comm::Communicator& world, std::span<Stats> stats);
Stats max_over_ranks(comm::Communicator& world, const Stats& stats);

// ---- the machine-load check --------------------------------------------------------------------

// What else ran during a benchmark. Other processes distort the figures (OpenMP-parallel code
// badly), so the engine measures the CPU time the machine spent busy (/proc/stat) minus the CPU
// time of this job (this process, its finished children such as the PyTorch subprocess, and the
// other ranks of the job on the same node), per second of wall time: the average number of
// cores that other processes took. The 1-minute load average is reported too, but it includes
// the benchmark's own threads.
struct LoadReport {
  double other_cores = -1.0;  // < 0 when /proc/stat is unreadable; max over nodes
  double load_start = -1.0;   // 1-minute load average at the start (-1: unknown)
  double load_end = -1.0;
  int cores = 1;  // hardware threads of this machine
  // Above this many cores taken by others, figures are not reliable and the load line says so.
  static constexpr double kSharedThreshold = 0.2;
  bool shared() const { return other_cores > kSharedThreshold; }
};

class LoadMonitor {
 public:
  LoadMonitor();  // samples now
  // The load since construction. Collective over MPI_COMM_WORLD when MPI is active (the ranks
  // of one node count as this job; the figure is the maximum over the nodes).
  LoadReport finish() const;

 private:
  double machine_busy_s_ = -1.0;
  double ours_s_ = 0.0;
  double load_start_ = -1.0;
  Timer wall_;
};

// "bench <name> load: other processes used X cores on average during the run (...)" with a
// warning when the machine was shared.
std::string format_load(std::string_view bench, const LoadReport& load);

// ---- the summary line of a case ----------------------------------------------------------------

// One line per case (docs/architecture.md, "Conventions"):
//   bench <bench> <key>=<name> <figure> ... [ratio=<r> (<which>)] ...
// Items appear in the order they are added. A ratio must say which way round it is: `which` is
// "a/b" with an optional qualifier, e.g. "ours/torch" or "ours/bare time".
class CaseLine {
 public:
  // `name_width` pads the case name so that the columns of several lines line up.
  CaseLine(std::string bench, std::string key, std::string name, int name_width = 0);

  // "key=<value with precision digits> unit".
  CaseLine& figure(std::string_view key, double value, int precision, std::string_view unit);
  // "key=value".
  CaseLine& field(std::string_view key, std::string_view value);
  // "ratio=<value> (which)", or "ratio=n/a (which)" when there is no value.
  CaseLine& ratio(std::optional<double> value, int precision, std::string_view which);
  // Free text (details in brackets, a second figure of the same key, ...).
  CaseLine& text(std::string_view text);

  std::string str() const;

 private:
  std::string head_;
  std::vector<std::string> items_;
};

// Prints the line on stdout and flushes (the one function every benchmark prints cases with).
void print_case(const CaseLine& line);

// ---- the --json file ---------------------------------------------------------------------------

// Flat JSON objects written by hand: keys in the order they are set, numbers in full precision
// (shortest round-trip form), non-finite numbers and absent values as null.
class JsonObject {
 public:
  JsonObject& num(std::string_view key, double value);
  JsonObject& num(std::string_view key, std::optional<double> value);
  JsonObject& integer(std::string_view key, std::int64_t value);
  JsonObject& str(std::string_view key, std::string_view value);
  JsonObject& boolean(std::string_view key, bool value);
  // "<prefix>_s", "<prefix>_min_s", "<prefix>_max_s": the median, min and max of `stats`.
  JsonObject& stats_s(std::string_view prefix, const Stats& stats);
  std::string text() const;  // {"k": v, ...}
  // The members without braces: "\"k\": v, ..." (empty when there are none).
  std::string members() const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

// What `--json FILE` receives: {"bench": <name>, <header>, "cases": [<case>, ...], <load>}.
class JsonReport {
 public:
  JsonObject& header() { return header_; }
  JsonObject& add_case() { return cases_.emplace_back(); }
  // Writes the file through `<path>.tmp` and a rename; one-line Error(Io) on failure.
  void write(const std::string& path, std::string_view bench, const LoadReport& load) const;

 private:
  JsonObject header_;
  std::deque<JsonObject> cases_;  // deque: add_case() references stay valid
};

// ---- benchmarks and their context --------------------------------------------------------------

// How a benchmark runs under MPI.
enum class Ranks {
  One,        // a single process; MPI is not started (under mpirun every process runs alone)
  Any,        // under mpirun: all ranks together; otherwise one rank without MPI
  TwoOrMore,  // must run under mpirun with at least 2 ranks
};

// The options every benchmark takes (--warmup, --iters, --threads, --json).
struct CommonOptions {
  int warmup = 1;
  int iters = 5;
  int threads = 0;  // 0: the cores of this node divided by the ranks on it
  std::string json;
};

// What a running benchmark gets from the engine.
class Context {
 public:
  Context(std::string bench, CommonOptions common, std::unique_ptr<comm::Communicator> world);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const std::string& bench() const { return bench_; }
  const CommonOptions& common() const { return common_; }
  // warm-up and timed iterations from the common options (min_seconds 0).
  Schedule schedule() const { return {common_.warmup, common_.iters, 0.0}; }
  int threads() const;  // CPU threads per rank as set by the engine

  comm::Communicator& world();
  int rank();
  int size();
  bool lead() { return rank() == 0; }  // prints and writes files
  // The world split into expert-parallel groups of `ep_size` ranks (created on the first call,
  // collectively; later calls must pass the same size). world() is groups.world afterwards.
  // `shared_memory`: see comm::ProcessGroups::create.
  comm::ProcessGroups& groups(int ep_size, bool shared_memory = true);

  // The --json file's content (written by the lead rank when --json is given).
  JsonReport& json() { return json_; }

  // Collective release of the communicators (the engine calls it at the end).
  void release();

 private:
  std::string bench_;
  CommonOptions common_;
  std::unique_ptr<comm::Communicator> world_;
  std::unique_ptr<comm::ProcessGroups> groups_;
  JsonReport json_;
};

// A benchmark as the engine registers it.
struct Benchmark {
  std::string name;         // `routemoe bench <name>`
  std::string description;  // --help
  Ranks ranks = Ranks::One;
  CommonOptions defaults;  // defaults of the common options
  std::string iters_help = "timed iterations per case (median reported)";
  std::string iters_alias;  // an older name of --iters ("--steps"), or empty
  // Adds the benchmark's own options to `cmd` (bound to state the returned function keeps) and
  // returns the function that runs the benchmark.
  std::function<std::function<void(Context&)>(CLI::App& cmd)> setup;
};

// Adds `<bench> <name>` for each benchmark, with the common options, and returns the function
// that runs the one selected on the command line (returns the exit code; call it only when
// `bench` got a subcommand). Running: MPI set-up per `ranks`, CPU threads, load monitor, the
// benchmark, the load line, the JSON file, release of the communicators.
std::function<int()> add_benchmarks(CLI::App& bench, std::vector<Benchmark> benchmarks);

}  // namespace routemoe::bench
