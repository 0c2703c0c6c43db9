#include "framework/bench/engine.h"

#include <fmt/format.h>
#include <mpi.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/error.h"
#include "framework/json.h"
#include "framework/ops.h"

namespace routemoe::bench {

// ---- timing ------------------------------------------------------------------------------------

Stats summarize(std::vector<double> samples) {
  RM_CHECK(!samples.empty(), "statistics of no samples");
  std::sort(samples.begin(), samples.end());
  const std::size_t n = samples.size();
  Stats s;
  s.median = n % 2 == 1 ? samples[n / 2] : 0.5 * (samples[n / 2 - 1] + samples[n / 2]);
  s.min = samples.front();
  s.max = samples.back();
  s.count = static_cast<int>(n);
  return s;
}

std::vector<double> time_iterations(const Schedule& schedule, const std::function<void()>& body) {
  RM_CHECK(schedule.warmup >= 0 && schedule.iters >= 1,
           fmt::format("bad schedule: {} warm-up, {} timed iterations", schedule.warmup,
                       schedule.iters));
  for (int i = 0; i < schedule.warmup; ++i) body();
  std::vector<double> times;
  double timed = 0.0;
  while (static_cast<int>(times.size()) < schedule.iters || timed < schedule.min_seconds) {
    Timer t;
    body();
    times.push_back(t.seconds());
    timed += times.back();
  }
  return times;
}

Stats time_case(const Schedule& schedule, const std::function<void()>& body) {
  return summarize(time_iterations(schedule, body));
}

void run_iterations(const Schedule& schedule,
                    const std::function<void(int iteration, bool timed)>& body) {
  RM_CHECK(schedule.warmup >= 0 && schedule.iters >= 1,
           fmt::format("bad schedule: {} warm-up, {} timed iterations", schedule.warmup,
                       schedule.iters));
  for (int it = 0; it < schedule.warmup + schedule.iters; ++it) body(it, it >= schedule.warmup);
}

void max_over_ranks(comm::Communicator& world, std::span<Stats> stats) {
  std::vector<double> v;
  v.reserve(3 * stats.size());
  for (const Stats& s : stats) {
    v.push_back(s.median);
    v.push_back(s.min);
    v.push_back(s.max);
  }
  world.all_reduce(v.data(), static_cast<std::int64_t>(v.size()), comm::DataType::F64,
                   comm::ReduceOp::Max);
  for (std::size_t i = 0; i < stats.size(); ++i) {
    stats[i].median = v[3 * i];
    stats[i].min = v[3 * i + 1];
    stats[i].max = v[3 * i + 2];
  }
}

Stats max_over_ranks(comm::Communicator& world, const Stats& stats) {
  Stats s = stats;
  max_over_ranks(world, std::span<Stats>(&s, 1));
  return s;
}

// ---- the machine-load check --------------------------------------------------------------------

namespace {

// Busy seconds of all CPUs since boot (/proc/stat), or < 0 when unreadable.
double machine_busy_seconds() {
  std::ifstream f("/proc/stat");
  std::string cpu;
  unsigned long long v[8] = {};
  if (!(f >> cpu) || cpu != "cpu") return -1.0;
  for (unsigned long long& x : v) f >> x;
  if (!f) return -1.0;
  // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
  const unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
  return static_cast<double>(busy) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// CPU seconds of this process and of its children that were waited for.
double own_cpu_seconds() {
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec);
  };
  rusage self{}, children{};
  ::getrusage(RUSAGE_SELF, &self);
  ::getrusage(RUSAGE_CHILDREN, &children);
  return seconds(self.ru_utime) + seconds(self.ru_stime) + seconds(children.ru_utime) +
         seconds(children.ru_stime);
}

double load_average() {
  double l[1] = {-1.0};
  return ::getloadavg(l, 1) == 1 ? l[0] : -1.0;
}

int hardware_threads() {
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

LoadMonitor::LoadMonitor()
    : machine_busy_s_(machine_busy_seconds()),
      ours_s_(own_cpu_seconds()),
      load_start_(load_average()) {}

LoadReport LoadMonitor::finish() const {
  LoadReport r;
  r.load_start = load_start_;
  r.load_end = load_average();
  r.cores = hardware_threads();
  const double busy = machine_busy_seconds();
  const double wall = wall_.seconds();
  double ours = own_cpu_seconds() - ours_s_;
  // 1 when this node's reading is usable, 0 otherwise (then the node reports "unknown").
  double known = (machine_busy_s_ >= 0 && busy >= 0 && wall > 0) ? 1.0 : 0.0;
  if (comm::mpi_active()) {
    // The ranks of this node are this job: sum their CPU time on the node.
    MPI_Comm node = MPI_COMM_NULL;
    RM_MPI_CHECK(
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    double v[2] = {ours, known};
    RM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v[0], 1, MPI_DOUBLE, MPI_SUM, node));
    RM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v[1], 1, MPI_DOUBLE, MPI_MIN, node));
    RM_MPI_CHECK(MPI_Comm_free(&node));
    ours = v[0];
    known = v[1];
  }
  double others = known > 0 ? std::max(0.0, ((busy - machine_busy_s_) - ours) / wall) : -1.0;
  if (comm::mpi_active()) {
    RM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &others, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  }
  r.other_cores = others;
  return r;
}

std::string format_load(std::string_view bench, const LoadReport& load) {
  const std::string others =
      load.other_cores >= 0 ? fmt::format("{:.2f}", load.other_cores) : std::string("unknown");
  return fmt::format(
      "bench {} load: other processes used {} cores on average during the run (1-min load "
      "average {:.2f} at start, {:.2f} at end incl. this run; {} cores){}",
      bench, others, load.load_start, load.load_end, load.cores,
      load.shared() ? "; WARNING: the machine was shared, figures are not reliable" : "");
}

// ---- the summary line of a case ----------------------------------------------------------------

CaseLine::CaseLine(std::string bench, std::string key, std::string name, int name_width) {
  RM_CHECK(!bench.empty() && !key.empty() && !name.empty(), "a case line needs bench, key, name");
  RM_CHECK(name.find(' ') == std::string::npos,
           fmt::format("case name '{}' contains a space", name));
  head_ = fmt::format("bench {} {}={}", bench, key, name);
  if (static_cast<int>(name.size()) < name_width) {
    head_.append(static_cast<std::size_t>(name_width) - name.size(), ' ');
  }
}

CaseLine& CaseLine::figure(std::string_view key, double value, int precision,
                           std::string_view unit) {
  items_.push_back(unit.empty() ? fmt::format("{}={:.{}f}", key, value, precision)
                                : fmt::format("{}={:.{}f} {}", key, value, precision, unit));
  return *this;
}

CaseLine& CaseLine::field(std::string_view key, std::string_view value) {
  items_.push_back(fmt::format("{}={}", key, value));
  return *this;
}

CaseLine& CaseLine::ratio(std::optional<double> value, int precision, std::string_view which) {
  RM_CHECK(which.find('/') != std::string_view::npos,
           fmt::format("ratio label '{}' does not say which way round (a/b)", which));
  items_.push_back(value ? fmt::format("ratio={:.{}f} ({})", *value, precision, which)
                         : fmt::format("ratio=n/a ({})", which));
  return *this;
}

CaseLine& CaseLine::text(std::string_view text) {
  items_.emplace_back(text);
  return *this;
}

std::string CaseLine::str() const {
  std::string s = head_;
  for (const std::string& item : items_) {
    s += ' ';
    s += item;
  }
  return s;
}

void print_case(const CaseLine& line) {
  fmt::print("{}\n", line.str());
  std::fflush(stdout);
}

// ---- the --json file ---------------------------------------------------------------------------

JsonObject& JsonObject::num(std::string_view key, double value) {
  fields_.emplace_back(std::string(key),
                       std::isfinite(value) ? fmt::format("{}", value) : std::string("null"));
  return *this;
}

JsonObject& JsonObject::num(std::string_view key, std::optional<double> value) {
  if (value) return num(key, *value);
  fields_.emplace_back(std::string(key), "null");
  return *this;
}

JsonObject& JsonObject::integer(std::string_view key, std::int64_t value) {
  fields_.emplace_back(std::string(key), fmt::format("{}", value));
  return *this;
}

JsonObject& JsonObject::str(std::string_view key, std::string_view value) {
  fields_.emplace_back(std::string(key), json_quote(value));
  return *this;
}

JsonObject& JsonObject::boolean(std::string_view key, bool value) {
  fields_.emplace_back(std::string(key), value ? "true" : "false");
  return *this;
}

JsonObject& JsonObject::stats_s(std::string_view prefix, const Stats& stats) {
  num(fmt::format("{}_s", prefix), stats.median);
  num(fmt::format("{}_min_s", prefix), stats.min);
  num(fmt::format("{}_max_s", prefix), stats.max);
  return *this;
}

std::string JsonObject::members() const {
  std::string s;
  for (const auto& [key, value] : fields_) {
    if (!s.empty()) s += ", ";
    s += json_quote(key);
    s += ": ";
    s += value;
  }
  return s;
}

std::string JsonObject::text() const {
  return "{" + members() + "}";
}

void JsonReport::write(const std::string& path, std::string_view bench,
                       const LoadReport& load) const {
  JsonObject head;
  head.str("bench", bench);
  std::string out = "{" + head.members();
  if (const std::string h = header_.members(); !h.empty()) out += ", " + h;
  out += ", \"cases\": [";
  for (std::size_t i = 0; i < cases_.size(); ++i) {
    out += i ? ",\n  " : "\n  ";
    out += cases_[i].text();
  }
  out += cases_.empty() ? "]" : "\n]";
  JsonObject tail;
  tail.num("other_cores",
           load.other_cores >= 0 ? std::optional<double>(load.other_cores) : std::nullopt);
  tail.num("load_start", load.load_start);
  tail.num("load_end", load.load_end);
  tail.integer("cores", load.cores);
  tail.boolean("machine_shared", load.shared());
  out += ", " + tail.members() + "}\n";

  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    RM_CHECK_KIND(Io, f.good(), fmt::format("cannot open {} for writing (--json)", tmp));
    f << out;
    f.flush();
    RM_CHECK_KIND(Io, f.good(), fmt::format("write to {} failed (--json)", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  RM_CHECK_KIND(Io, !ec, fmt::format("cannot rename {} to {}: {}", tmp, path, ec.message()));
}

// ---- benchmarks and their context --------------------------------------------------------------

Context::Context(std::string bench, CommonOptions common, std::unique_ptr<comm::Communicator> world)
    : bench_(std::move(bench)), common_(std::move(common)), world_(std::move(world)) {}

Context::~Context() = default;

int Context::threads() const {
  return ops::num_threads();
}

comm::Communicator& Context::world() {
  return groups_ ? *groups_->world : *world_;
}
int Context::rank() {
  return world().rank();
}
int Context::size() {
  return world().size();
}

comm::ProcessGroups& Context::groups(int ep_size, bool shared_memory) {
  if (!groups_) {
    groups_ = std::make_unique<comm::ProcessGroups>(
        comm::ProcessGroups::create(std::move(world_), ep_size, shared_memory));
  }
  RM_CHECK(groups_->ep_size == ep_size,
           fmt::format("process groups already split with ep {}, asked for {}", groups_->ep_size,
                       ep_size));
  return *groups_;
}

void Context::release() {
  if (groups_) {
    groups_->release();
    groups_.reset();
  } else if (world_) {
    world_->release();
    world_.reset();
  }
}

namespace {

std::unique_ptr<comm::Communicator> start_world(const Benchmark& b) {
  const std::string how = fmt::format("run it as `mpirun -np 2 routemoe bench {}`", b.name);
  switch (b.ranks) {
    case Ranks::One:
      return comm::make_self();
    case Ranks::Any:
      if (!comm::launched_by_mpi()) return comm::make_self();
      comm::init_mpi(nullptr, nullptr);
      return comm::make_mpi_world();
    case Ranks::TwoOrMore: {
      RM_CHECK_KIND(Config, comm::launched_by_mpi(),
                    fmt::format("routemoe bench {} needs at least 2 MPI ranks: {}", b.name, how));
      comm::init_mpi(nullptr, nullptr);
      const int w = comm::world_size();
      RM_CHECK_KIND(
          Config, w >= 2,
          fmt::format("routemoe bench {} needs at least 2 MPI ranks, got {}: {}", b.name, w, how));
      return comm::make_mpi_world();
    }
  }
  RM_FAIL(Check, "unknown Ranks value");
}

int run_benchmark(const Benchmark& b, const CommonOptions& common,
                  const std::function<void(Context&)>& run) {
  Context ctx(b.name, common, start_world(b));
  const int cores = hardware_threads();
  ops::set_num_threads(common.threads > 0
                           ? common.threads
                           : std::max(1, cores / std::max(1, comm::ranks_on_node())));
  const LoadMonitor monitor;
  run(ctx);
  const LoadReport load = monitor.finish();
  if (ctx.lead()) {
    fmt::print("{}\n", format_load(b.name, load));
    std::fflush(stdout);
    if (!common.json.empty()) ctx.json().write(common.json, b.name, load);
  }
  ctx.world().barrier();  // nobody leaves before the lead has written the file
  ctx.release();
  return 0;
}

}  // namespace

std::function<int()> add_benchmarks(CLI::App& bench, std::vector<Benchmark> benchmarks) {
  struct Entry {
    Benchmark b;
    CLI::App* cmd = nullptr;
    CommonOptions common;
    std::function<void(Context&)> run;
  };
  auto entries = std::make_shared<std::vector<Entry>>();
  entries->reserve(benchmarks.size());
  for (Benchmark& b : benchmarks) {
    RM_CHECK(b.setup != nullptr, fmt::format("benchmark {} has no setup", b.name));
    Entry& e = entries->emplace_back();
    e.b = std::move(b);
    e.common = e.b.defaults;
    e.cmd = bench.add_subcommand(e.b.name, e.b.description);
    CLI::App& cmd = *e.cmd;
    cmd.add_option("--warmup", e.common.warmup, "untimed warm-up iterations per case")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    const std::string iters_names =
        e.b.iters_alias.empty() ? std::string("--iters") : "--iters," + e.b.iters_alias;
    cmd.add_option(iters_names, e.common.iters, e.b.iters_help)
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    cmd.add_option("--threads", e.common.threads,
                   "CPU threads per rank (0: the cores of the node / the ranks on it)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    cmd.add_option("--json", e.common.json,
                   "also write the results as JSON to this file (by the first rank)");
    e.run = e.b.setup(cmd);
  }
  return [entries]() {
    for (Entry& e : *entries) {
      if (e.cmd->parsed()) return run_benchmark(e.b, e.common, e.run);
    }
    RM_FAIL(Check, "no benchmark was selected");
  };
}

}  // namespace routemoe::bench
