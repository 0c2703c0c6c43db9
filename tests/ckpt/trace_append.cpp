// The in-place trace append (runfile::append_trace_record, docs/checkpoint-format.md "Trace
// file") under SIGKILL, and its cost. Single process; children are forked.
//
//   trace_append crash --work DIR [--seconds S] [--min-appends N]
//       Builds a trace of synthetic records (3 MoE layers: topk, ac, ac; 2 token groups, so each
//       record has 2 rows of per-expert AC weights) and, for record counts R = 1, 2, ..., 24,
//       then around the chunk and index boundaries 32, 64, 128, 256, kills the append of record
//       R at EVERY write the append makes: a forked child counts its write calls (pwrite, write,
//       ftruncate, intercepted below) and sends itself SIGKILL before the j-th, for j = 0 .. all
//       of them. After each kill the trace must read back (runfile, as `routemoe trace` reads
//       it) with R or R + 1 records, each equal to what was appended; the next append must then
//       succeed and give one record more. The same for truncate_trace (the resume path). The
//       budget S (default 120 s) stops the enumeration only after the first N values of R
//       (default 4: R = 1..4 include both sizes of write sequence seen, 69 and 78 writes).
//   trace_append measure --work DIR [--records N]
//       Appends N records (default 1000) of a tiny model and N/5 of a larger one and prints, per
//       window of records, the bytes written and the median time of one append, the file size
//       per record, and the file size at the end of the window (what a version-1 append, a copy
//       of the whole file, copied).
//
// Every kill is a real SIGKILL of a process in the middle of HDF5 calls: what the file holds
// afterwards is exactly the writes made before it (the page cache keeps them; power loss is a
// different failure and not what this tests).

#include <dlfcn.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "framework/error.h"
#include "framework/h5.h"
#include "framework/rng.h"
#include "framework/runfile.h"

using namespace routemoe;
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Write interception: HDF5 writes through pwrite (and write/ftruncate); the executable's
// definitions take precedence over the C library's for every shared library.

namespace {
long g_kill_at = -1;      // >= 0: SIGKILL before the write call with this index
long g_calls = 0;         // write calls since arm()
long long g_bytes = 0;    // bytes written since arm()
bool g_counting = false;  // count (and maybe kill) only between arm() and disarm()

void before_write(std::size_t bytes) {
  if (!g_counting) return;
  if (g_kill_at >= 0 && g_calls == g_kill_at) raise(SIGKILL);
  ++g_calls;
  g_bytes += static_cast<long long>(bytes);
}

void arm(long kill_at) {
  g_kill_at = kill_at;
  g_calls = 0;
  g_bytes = 0;
  g_counting = true;
}

void disarm() {
  g_counting = false;
}

template <typename Fn>
Fn real(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}
}  // namespace

extern "C" ssize_t pwrite(int fd, const void* buf, size_t n, off_t offset) {
  static const auto fn = real<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite");
  if (fd > 2) before_write(n);
  return fn(fd, buf, n, offset);
}

extern "C" ssize_t pwrite64(int fd, const void* buf, size_t n, off_t offset) {
  static const auto fn = real<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite64");
  if (fd > 2) before_write(n);
  return fn(fd, buf, n, offset);
}

extern "C" ssize_t write(int fd, const void* buf, size_t n) {
  static const auto fn = real<ssize_t (*)(int, const void*, size_t)>("write");
  if (fd > 2) before_write(n);
  return fn(fd, buf, n);
}

extern "C" int ftruncate(int fd, off_t length) {
  static const auto fn = real<int (*)(int, off_t)>("ftruncate");
  if (fd > 2) before_write(0);
  return fn(fd, length);
}

namespace {

// ---------------------------------------------------------------------------------------------
// Synthetic records: deterministic in their index.

struct Model {
  std::int64_t P, K, E, d, seq_len, groups;
  std::vector<std::string> routers;  // per MoE layer (the record's; ac layers after the first)
};

runfile::TraceInfo info_of(const Model& m) {
  runfile::TraceInfo info;
  info.n_moe_layers = static_cast<std::int64_t>(m.routers.size());
  info.top_k = m.K;
  info.n_experts = m.E;
  info.seq_len = m.seq_len;
  info.d_model = m.d;
  info.routers = m.routers;
  info.config = "[model]\nn_experts = " + std::to_string(m.E) + "\n";
  info.probe_tokens = m.P;
  return info;
}

std::vector<std::int32_t> probe_of(const Model& m) {
  std::vector<std::int32_t> probe(static_cast<std::size_t>(m.P));
  for (std::size_t i = 0; i < probe.size(); ++i) probe[i] = static_cast<std::int32_t>(i % 97);
  return probe;
}

runfile::RoutingRecord record_of(const Model& m, std::int64_t index) {
  Philox rng(1234, static_cast<std::uint64_t>(index));
  runfile::RoutingRecord r;
  r.step = 10 * (index + 1);
  r.epoch = index / 7;
  r.reason = index % 3 == 0 ? "checkpoint" : "interval";
  r.tokens = m.P;
  r.top_k = m.K;
  r.d_model = m.d;
  r.groups = m.groups;
  for (std::size_t l = 0; l < m.routers.size(); ++l) {
    runfile::LayerRouting L;
    L.router = m.routers[l];
    for (std::int64_t i = 0; i < m.P; ++i) {
      const auto first = static_cast<std::int32_t>(rng.next_below(static_cast<std::uint64_t>(m.E)));
      for (std::int64_t j = 0; j < m.K; ++j) {
        L.experts.push_back(static_cast<std::int32_t>((first + j) % m.E));
        L.gates.push_back(static_cast<float>(rng.next_below(1000)) / 1000.0f);
        L.probs.push_back(static_cast<float>(rng.next_below(1000)) / 1000.0f);
      }
    }
    if (L.router == "ac") {
      // M_i = w[group of i, top-1 of i at the previous layer]
      std::vector<float> w(static_cast<std::size_t>(m.groups * m.E * m.d));
      for (float& x : w) x = 0.5f + static_cast<float>(rng.next_below(1000)) / 500.0f;
      const std::vector<std::int32_t>& prev = r.layers.back().experts;
      for (std::int64_t i = 0; i < m.P; ++i) {
        const std::int64_t g = i / (m.P / m.groups), e = prev[static_cast<std::size_t>(i * m.K)];
        const float* row = w.data() + (g * m.E + e) * m.d;
        L.ac_scale.insert(L.ac_scale.end(), row, row + m.d);
      }
    }
    r.layers.push_back(std::move(L));
  }
  return r;
}

// "" when the trace at `path` reads back as records 0 .. n-1 with n in [lo, hi]; else why not.
std::string verify(const Model& m, const std::string& path, std::int64_t lo, std::int64_t hi,
                   std::int64_t* count) {
  try {
    const h5::File f = h5::File::open_read(path);
    runfile::check_header(f, path, {runfile::Kind::Trace});
    const std::vector<runfile::RoutingRecord> recs = runfile::read_trace_records(f);
    const auto n = static_cast<std::int64_t>(recs.size());
    *count = n;
    if (n < lo || n > hi) return fmt::format("{} records, expected {}..{}", n, lo, hi);
    for (std::int64_t r = 0; r < n; ++r) {
      const runfile::RoutingRecord want = record_of(m, r);
      const runfile::RoutingRecord& got = recs[static_cast<std::size_t>(r)];
      if (got.step != want.step || got.epoch != want.epoch || got.reason != want.reason ||
          got.groups != want.groups)
        return fmt::format("record {}: step/epoch/reason/groups differ", r);
      for (std::size_t l = 0; l < want.layers.size(); ++l) {
        const auto& a = got.layers[l];
        const auto& b = want.layers[l];
        if (a.experts != b.experts || a.gates != b.gates || a.probs != b.probs ||
            a.router != b.router)
          return fmt::format("record {} layer {}: routing differs", r, l);
        if (runfile::ac_token_weights(got, l) != b.ac_scale)
          return fmt::format("record {} layer {}: AC weights differ", r, l);
      }
    }
    return "";
  } catch (const std::exception& e) {
    return std::string("unreadable: ") + e.what();
  }
}

// Runs `fn` in a child killed before its write call `kill_at`; true when the child was killed
// (false: it finished first).
template <typename Fn>
bool run_killed(long kill_at, Fn&& fn) {
  std::fflush(stdout);
  const pid_t pid = fork();
  RM_CHECK(pid >= 0, "fork failed");
  if (pid == 0) {
    int rc = 0;
    try {
      arm(kill_at);
      fn();
      disarm();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      rc = 3;
    }
    _exit(rc);
  }
  int status = 0;
  RM_CHECK(waitpid(pid, &status, 0) == pid, "waitpid failed");
  if (WIFSIGNALED(status)) {
    RM_CHECK(WTERMSIG(status) == SIGKILL, fmt::format("child died of signal {}", WTERMSIG(status)));
    return true;
  }
  RM_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
           fmt::format("child exited with {}", WEXITSTATUS(status)));
  return false;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int cmd_crash(const std::string& work, double budget, int min_appends) {
  const auto t0 = std::chrono::steady_clock::now();
  fs::create_directories(work);
  const Model m{64, 2, 4, 8, 32, 2, {"topk", "ac", "ac"}};
  const runfile::TraceInfo info = info_of(m);
  const std::vector<std::int32_t> probe = probe_of(m);
  const std::string base = (fs::path(work) / "base.h5").string();
  const std::string before = (fs::path(work) / "before.h5").string();
  const std::string crashed = (fs::path(work) / "crashed.h5").string();
  fs::remove(base);
  runfile::create_trace(base, info, probe.data(), {record_of(m, 0)});
  std::vector<std::int64_t> counts;
  for (std::int64_t r = 1; r <= 24; ++r) counts.push_back(r);
  for (std::int64_t r : {31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257}) counts.push_back(r);
  int bad = 0, kills = 0, rounds = 0;
  std::int64_t have = 1;  // records in base
  for (std::int64_t R : counts) {
    if (rounds >= min_appends && seconds_since(t0) > budget) {
      std::printf("budget of %.0f s reached before R = %ld\n", budget, static_cast<long>(R));
      break;
    }
    for (; have < R; ++have)
      runfile::append_trace_record(base, info, probe.data(), record_of(m, have));
    fs::copy_file(base, before, fs::copy_options::overwrite_existing);
    const runfile::RoutingRecord next = record_of(m, R);
    arm(-1);
    runfile::append_trace_record(base, info, probe.data(), next);  // counts the writes
    disarm();
    const long writes = g_calls;
    ++have;
    for (long j = 0; j <= writes; ++j) {
      fs::copy_file(before, crashed, fs::copy_options::overwrite_existing);
      const bool killed =
          run_killed(j, [&]() { runfile::append_trace_record(crashed, info, probe.data(), next); });
      if (j < writes && !killed) {
        std::printf("R %ld: the append finished before write %ld of %ld\n", static_cast<long>(R), j,
                    writes);
        ++bad;
      }
      kills += killed ? 1 : 0;
      std::int64_t n = 0;
      std::string why = verify(m, crashed, R, R + 1, &n);
      if (why.empty()) {  // the next append completes what the killed one left
        try {
          runfile::append_trace_record(crashed, info, probe.data(), record_of(m, n));
          why = verify(m, crashed, n + 1, n + 1, &n);
        } catch (const std::exception& e) {
          why = std::string("the next append failed: ") + e.what();
        }
      }
      if (!why.empty()) {
        if (bad < 20)
          std::printf("R %ld, killed before write %ld of %ld: %s\n", static_cast<long>(R), j,
                      writes, why.c_str());
        ++bad;
      }
    }
    ++rounds;
    std::printf(
        "append of record %ld: %ld writes, killed before each: %s\n", static_cast<long>(R), writes,
        bad == 0 ? "every earlier record reads back, the next append completes" : "FAILURES");
  }
  // Truncation (resume): keep 3 of 6 records, killed at every write.
  for (std::int64_t R : {6}) {
    fs::remove(before);
    runfile::create_trace(before, info, probe.data(), {record_of(m, 0)});
    for (std::int64_t r = 1; r < R; ++r)
      runfile::append_trace_record(before, info, probe.data(), record_of(m, r));
    const std::int64_t keep = R / 2;
    const std::int64_t step = record_of(m, keep - 1).step;
    fs::copy_file(before, crashed, fs::copy_options::overwrite_existing);
    arm(-1);
    runfile::truncate_trace(crashed, step);
    disarm();
    const long writes = g_calls;
    for (long j = 0; j <= writes; ++j) {
      fs::copy_file(before, crashed, fs::copy_options::overwrite_existing);
      kills += run_killed(j, [&]() { runfile::truncate_trace(crashed, step); }) ? 1 : 0;
      std::int64_t n = 0;
      std::string why = verify(m, crashed, keep, R, &n);
      if (why.empty() && n != keep && n != R) why = fmt::format("{} records after the kill", n);
      if (why.empty()) {
        try {
          if (runfile::truncate_trace(crashed, step) != keep) why = "the retry kept another count";
          runfile::append_trace_record(crashed, info, probe.data(), record_of(m, keep));
          if (why.empty()) why = verify(m, crashed, keep + 1, keep + 1, &n);
        } catch (const std::exception& e) {
          why = std::string("the retry failed: ") + e.what();
        }
      }
      if (!why.empty()) {
        if (bad < 20)
          std::printf("truncate %ld -> %ld, killed before write %ld of %ld: %s\n",
                      static_cast<long>(R), static_cast<long>(keep), j, writes, why.c_str());
        ++bad;
      }
    }
    std::printf("truncation of %ld records to %ld: %ld writes, killed before each\n",
                static_cast<long>(R), static_cast<long>(keep), writes);
  }
  std::printf("trace_append crash: %d appends enumerated, %d kills: %s (%.1f s)\n", rounds, kills,
              bad == 0 ? "OK" : "FAILED", seconds_since(t0));
  return bad == 0 && rounds >= min_appends ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// measure

int cmd_measure(const std::string& work, std::int64_t records) {
  fs::create_directories(work);
  struct Case {
    const char* name;
    Model m;
    std::int64_t divide;  // appends: records / divide
  };
  // The test-suite model (d 32, 4 experts, 256 probe tokens, layers topk,ac) and a larger one.
  const Case cases[] = {{"tiny: P 256, k 2, E 4, d 32, layers topk,ac, 1 group",
                         {256, 2, 4, 32, 32, 1, {"topk", "ac"}},
                         1},
                        {"larger: P 4096, k 2, E 16, d 256, layers topk,ac,ac,ac, 2 groups",
                         {4096, 2, 16, 256, 128, 2, {"topk", "ac", "ac", "ac"}},
                         5}};
  for (const Case& c : cases) {
    const std::int64_t n = std::max<std::int64_t>(2, records / c.divide);
    const std::string path = (fs::path(work) / "measure.h5").string();
    fs::remove(path);
    const runfile::TraceInfo info = info_of(c.m);
    const std::vector<std::int32_t> probe = probe_of(c.m);
    runfile::create_trace(path, info, probe.data(), {record_of(c.m, 0)});
    const runfile::RoutingRecord rec = record_of(c.m, 1);
    std::printf("%s\n", c.name);
    std::printf("  %-14s %14s %16s %16s %18s\n", "records", "bytes/append", "median ms/append",
                "file bytes/rec", "v1 copy bytes/app");
    const std::int64_t window = std::max<std::int64_t>(1, n / 5);
    std::vector<double> ms;
    long long bytes = 0;
    std::int64_t size_begin = static_cast<std::int64_t>(fs::file_size(path));
    for (std::int64_t r = 1; r < n; ++r) {
      arm(-1);
      const auto t = std::chrono::steady_clock::now();
      runfile::append_trace_record(path, info, probe.data(), rec);
      ms.push_back(seconds_since(t) * 1e3);
      disarm();
      bytes += g_bytes;
      if (r % window == 0 || r + 1 == n) {
        std::sort(ms.begin(), ms.end());
        const auto size = static_cast<std::int64_t>(fs::file_size(path));
        std::printf("  %6ld..%-6ld %14lld %16.3f %16ld %18ld\n",
                    static_cast<long>(r + 1 - static_cast<std::int64_t>(ms.size())),
                    static_cast<long>(r), bytes / static_cast<long long>(ms.size()),
                    ms[ms.size() / 2],
                    static_cast<long>((size - size_begin) / static_cast<std::int64_t>(ms.size())),
                    static_cast<long>(size));
        ms.clear();
        bytes = 0;
        size_begin = size;
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"in-place trace appends under SIGKILL, and their cost"};
  std::string work;
  double seconds = 120;
  int min_appends = 4;
  std::int64_t records = 1000;
  CLI::App* crash = app.add_subcommand("crash");
  crash->add_option("--work", work)->required();
  crash->add_option("--seconds", seconds);
  crash->add_option("--min-appends", min_appends);
  CLI::App* measure = app.add_subcommand("measure");
  measure->add_option("--work", work)->required();
  measure->add_option("--records", records);
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);
  try {
    if (crash->parsed()) return cmd_crash(work, seconds, min_appends);
    return cmd_measure(work, records);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "trace_append: %s\n", e.what());
    return 1;
  }
}
