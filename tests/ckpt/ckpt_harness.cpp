// Helper of tests/ckpt/test_checkpoint.sh: exact and toleranced comparisons of checkpoints and
// metrics, a stand-alone loader, file mutations and the corruption fuzzer. Single process, no
// MPI (except write-both, which runs under mpiexec).
//
//   ckpt_harness compare A.h5 B.h5 [--atol X --rtol Y] [--routing]
//       every params/* and optim/{m,v}/* dataset of A equals B's: bit for bit (default) or
//       within |a-b| <= atol + rtol*|b|; also step, epoch, data seed and steps_taken; with
//       --routing the /routing record too (experts exactly, gates/probs/ac_scale as above).
//   ckpt_harness compare-metrics A.jsonl B.jsonl --from S --to E [--rtol Y]
//       the training lines of steps [S, E) agree: loss, ce_loss, aux_loss, lr and grad_norm
//       as printed (default) or within rtol, and expert_load exactly either way (integer
//       counts). A field absent from a line is a mismatch. When a step appears twice (a run
//       resumed after a crash repeats the steps after its checkpoint), the last line counts.
//   ckpt_harness load FILE --config RUN/config.toml
//       builds the model of the config, loads FILE as `routemoe train --resume` does and
//       prints "digest <hex>" of everything loaded (parameters, moments, step, epoch, seed,
//       steps_taken). Errors: one line on stderr, exit 1.
//   ckpt_harness mutate IN OUT (--delete OBJ | --set-int OBJ ATTR V | --set-string OBJ ATTR V |
//                               --swap-experts PARAM)   (PARAM: experts 0 and E-1 swapped in
//                               params/optim)
//   ckpt_harness fuzz --ckpt F --config T --routemoe EXE --work DIR [--flips N --truncations M
//                     --seconds S --min-cases C (a time budget that stops after at least C cases)
//   --seed S]
//       writes N copies of F with one flipped byte and M truncated copies, and for each runs
//       `ckpt_harness load` and `routemoe inspect --json` in subprocesses. Each must either
//       fail cleanly (exit 1 for load, 2 for inspect; exactly one stderr line naming the file) or
//       succeed with exactly the original's digest / inspect output. A signal, a hang (30 s),
//       another exit code, a multi-line or anonymous error, or different values is a failure.
//   ckpt_harness same-content A.h5 B.h5
//       every object (groups; datasets: type, shape, chunking, filters, raw bytes) and every
//       attribute of A equals B's, whatever wrote them.
//   ckpt_harness write-both --config RUN/config.toml --from CKPT --parallel A.h5 --gathered B.h5
//       under mpiexec (>= 2 ranks, the config's ep_size >= 2): loads CKPT and its routing record
//       and saves that state twice, with the parallel-HDF5 writer (CheckpointWrite::Auto, every
//       rank its expert slices) and the gathered writer (CheckpointWrite::Gathered, rank 0
//       alone). Exit 77 when the build has no parallel HDF5 (both would gather).
//   ckpt_harness check-analysis TRACE --csv DIR --label RUN
//       the CSV files `routemoe trace TRACE --csv DIR` wrote for run RUN against the metrics
//       recomputed here from the trace's raw datasets (flip and set-change rates, load and its
//       entropy, last-change epochs, cross-layer agreement).
//   ckpt_harness check-trace TRACE --records N --routers a,b,.. --P P --k K --d D [--groups G]
//                            [--ckpt-dir DIR]
//       the version-2 trace has N records, each layer's experts/gates/probs are [N, P, K] (ac:
//       ac_weights [N * G, E, D]) with the router attributes given; each checkpoint in DIR has a
//       /routing record equal to the trace record of its step (its per-token ac_scale equal to
//       the trace's per-expert weights expanded by each token's previous-layer expert).

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/config.h"
#include "framework/error.h"
#include "framework/h5.h"
#include "framework/optim.h"
#include "framework/runfile.h"
#include "framework/train/checkpoint.h"
#include "layers/model.h"

using namespace routemoe;
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------
// compare

struct Diff {
  int bad = 0;
  double worst = 0;
};

void compare_f32(const std::string& name, const std::vector<float>& a, const std::vector<float>& b,
                 double atol, double rtol, bool exact, Diff& d) {
  if (a.size() != b.size()) {
    std::printf("  %s: %zu vs %zu elements\n", name.c_str(), a.size(), b.size());
    ++d.bad;
    return;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double err = std::abs(static_cast<double>(a[i]) - b[i]);
    d.worst = std::max(d.worst, err);
    const bool ok =
        exact ? std::memcmp(&a[i], &b[i], sizeof(float)) == 0 : err <= atol + rtol * std::abs(b[i]);
    if (!ok) {
      if (d.bad < 10) std::printf("  %s[%zu]: %.9g vs %.9g\n", name.c_str(), i, a[i], b[i]);
      ++d.bad;
    }
  }
}

int cmd_compare(const std::string& pa, const std::string& pb, double atol, double rtol, bool exact,
                bool routing) {
  const h5::File a = h5::File::open_read(pa);
  const h5::File b = h5::File::open_read(pb);
  Diff d;
  for (const char* attr : {"step", "epoch", "data_seed"}) {
    if (a.attr_int("/", attr) != b.attr_int("/", attr)) {
      std::printf("  attribute %s: %ld vs %ld\n", attr, static_cast<long>(a.attr_int("/", attr)),
                  static_cast<long>(b.attr_int("/", attr)));
      ++d.bad;
    }
  }
  if (a.attr_int("/optim", "steps_taken") != b.attr_int("/optim", "steps_taken")) {
    std::printf("  optim steps_taken differs\n");
    ++d.bad;
  }
  std::int64_t tensors = 0;
  for (const char* g : {"params", "optim/m", "optim/v"}) {
    const std::vector<std::string> na = a.list(g), nb = b.list(g);
    if (na != nb) {
      std::printf("  %s: different tensor names\n", g);
      ++d.bad;
      continue;
    }
    for (const std::string& n : na) {
      const std::string name = fmt::format("{}/{}", g, n);
      Shape sa, sb;
      const std::vector<float> va = a.read_f32(name, &sa), vb = b.read_f32(name, &sb);
      if (sa != sb) {
        std::printf("  %s: shape %s vs %s\n", name.c_str(), shape_str(sa).c_str(),
                    shape_str(sb).c_str());
        ++d.bad;
        continue;
      }
      compare_f32(name, va, vb, atol, rtol, exact, d);
      ++tensors;
    }
  }
  if (routing) {
    for (const char* attr : {"step", "epoch"}) {
      if (a.attr_int("routing", attr) != b.attr_int("routing", attr)) {
        std::printf("  routing %s differs\n", attr);
        ++d.bad;
      }
    }
    for (int m = 0; a.exists(fmt::format("routing/layer{}", m)); ++m) {
      const std::string g = fmt::format("routing/layer{}", m);
      if (a.read_i32(g + "/experts") != b.read_i32(g + "/experts")) {
        std::printf("  %s/experts differ\n", g.c_str());
        ++d.bad;
      }
      for (const char* ds : {"gates", "probs", "ac_scale"}) {
        const std::string name = g + "/" + ds;
        if (!a.exists(name) && !b.exists(name)) continue;
        compare_f32(name, a.read_f32(name), b.read_f32(name), atol, rtol, exact, d);
      }
    }
  }
  std::printf("compare %s vs %s: %ld tensors, %s, max abs diff %.3g: %s\n", pa.c_str(), pb.c_str(),
              static_cast<long>(tensors),
              exact ? "bit-exact" : fmt::format("atol {} rtol {}", atol, rtol).c_str(), d.worst,
              d.bad == 0 ? "OK" : fmt::format("{} MISMATCHES", d.bad).c_str());
  return d.bad == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// compare-metrics

// The text of `key`'s value in a one-line JSON object ("" if absent): a number or a bracketed
// array as printed.
std::string field(const std::string& line, const std::string& key) {
  const std::string k = "\"" + key + "\": ";
  const std::size_t at = line.find(k);
  if (at == std::string::npos) return "";
  std::size_t i = at + k.size(), depth = 0;
  const std::size_t start = i;
  for (; i < line.size(); ++i) {
    const char c = line[i];
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
  }
  return line.substr(start, i - start);
}

std::map<long, std::string> train_lines(const std::string& path) {
  std::ifstream in(path);
  RM_CHECK_KIND(Io, in.good(), fmt::format("cannot read {}", path));
  std::map<long, std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (field(line, "loss").empty()) continue;   // validation lines
    out[std::stol(field(line, "step"))] = line;  // the last occurrence wins
  }
  return out;
}

int cmd_compare_metrics(const std::string& pa, const std::string& pb, long from, long to,
                        double rtol) {
  // expert_load as integer counts, one list per MoE layer: "[[27, 12], [3, 36]]" -> {{27, 12},
  // {3, 36}}. False for anything else (also an absent field), so that a malformed or missing load
  // is a mismatch, never a vacuous pass.
  using Loads = std::vector<std::vector<long long>>;
  const auto parse_loads = [](const std::string& text, Loads& out) {
    out.clear();
    std::size_t i = 0;
    const auto skip = [&] {
      while (i < text.size() && text[i] == ' ') ++i;
    };
    const auto eat = [&](char c) {
      skip();
      if (i >= text.size() || text[i] != c) return false;
      ++i;
      return true;
    };
    if (!eat('[')) return false;
    if (eat(']')) return (skip(), i == text.size());
    do {
      if (!eat('[')) return false;
      out.emplace_back();
      if (eat(']')) continue;
      do {
        skip();
        std::size_t j = i;
        while (j < text.size() && text[j] >= '0' && text[j] <= '9') ++j;
        if (j == i || j - i > 18) return false;  // a non-negative count of at most 18 digits
        out.back().push_back(std::stoll(text.substr(i, j - i)));
        i = j;
      } while (eat(','));
      if (!eat(']')) return false;
    } while (eat(','));
    if (!eat(']')) return false;
    skip();
    return i == text.size();
  };

  const std::map<long, std::string> a = train_lines(pa), b = train_lines(pb);
  int bad = 0;
  double worst = 0;
  for (long s = from; s < to; ++s) {
    if (!a.count(s) || !b.count(s)) {
      std::printf("  step %ld missing in %s\n", s, a.count(s) ? pb.c_str() : pa.c_str());
      ++bad;
      continue;
    }
    for (const char* key : {"loss", "ce_loss", "aux_loss", "lr", "grad_norm"}) {
      const std::string va = field(a.at(s), key), vb = field(b.at(s), key);
      bool ok = !va.empty() && va == vb;
      if (rtol > 0 && !va.empty() && !vb.empty()) {
        const double x = std::stod(va), y = std::stod(vb);
        const double rel = std::abs(x - y) / std::max(1e-12, std::abs(y));
        if (std::strcmp(key, "loss") == 0) worst = std::max(worst, rel);
        // grad_norm of a step on different layouts and aux_loss near 0 need an absolute floor.
        ok = rel <= rtol || std::abs(x - y) <= 2e-6;
      }
      if (!ok) {
        std::printf("  step %ld %s: %s vs %s\n", s, key, va.empty() ? "(absent)" : va.c_str(),
                    vb.empty() ? "(absent)" : vb.c_str());
        ++bad;
      }
    }
    // expert_load: exactly, also with --rtol. The counts are integers (first choices per expert,
    // summed over ranks); the layouts that --rtol compares route identical micro-batches with
    // logits equal to rounding, and their loads agree exactly (tests/ckpt/test_checkpoint.sh,
    // reshard), so any difference is a routing difference.
    const std::string ta = field(a.at(s), "expert_load"), tb = field(b.at(s), "expert_load");
    Loads la, lb;
    const bool pa_ok = parse_loads(ta, la), pb_ok = parse_loads(tb, lb);
    std::string why;
    if (!pa_ok || !pb_ok) {
      why = "not a list of integer lists";
    } else if (la.size() != lb.size()) {
      why = fmt::format("{} vs {} MoE layers", la.size(), lb.size());
    } else {
      for (std::size_t m = 0; m < la.size() && why.empty(); ++m) {
        if (la[m].size() != lb[m].size()) {
          why = fmt::format("layer {}: {} vs {} experts", m, la[m].size(), lb[m].size());
          continue;
        }
        for (std::size_t e = 0; e < la[m].size() && why.empty(); ++e) {
          if (la[m][e] != lb[m][e])
            why = fmt::format("layer {} expert {}: {} vs {} tokens", m, e, la[m][e], lb[m][e]);
        }
      }
    }
    if (!why.empty()) {
      std::printf("  step %ld expert_load (%s): %s vs %s\n", s, why.c_str(),
                  ta.empty() ? "(absent)" : ta.c_str(), tb.empty() ? "(absent)" : tb.c_str());
      ++bad;
    }
  }
  std::printf(
      "compare-metrics steps [%ld, %ld): %s, expert_load exact, max loss rel diff %.3g: %s\n", from,
      to, rtol > 0 ? fmt::format("rtol {}", rtol).c_str() : "exact text", worst,
      bad == 0 ? "OK" : "MISMATCH");
  return bad == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// load

RunConfig read_config(const std::string& path) {
  RunConfig cfg;
  read_config_file(path, cfg);
  return cfg;
}

std::uint64_t fnv(std::uint64_t h, const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

int cmd_load(const std::string& file, const std::string& config) {
  const RunConfig cfg = read_config(config);
  Model model(cfg.model);
  AdamW opt(model.params(), cfg.optim);
  const CheckpointState st = load_checkpoint(file, model, opt);
  std::uint64_t h = 1469598103934665603ull;
  for (const Param& p : model.params().params()) {
    h = fnv(h, p.value.data<float>(), static_cast<std::size_t>(p.value.numel()) * sizeof(float));
  }
  h = fnv(h, opt.m().data<float>(), static_cast<std::size_t>(opt.m().numel()) * sizeof(float));
  h = fnv(h, opt.v().data<float>(), static_cast<std::size_t>(opt.v().numel()) * sizeof(float));
  const std::int64_t facts[4] = {st.step, st.epoch, static_cast<std::int64_t>(st.data_seed),
                                 opt.steps_taken()};
  h = fnv(h, facts, sizeof(facts));
  std::printf("digest %016llx step %ld\n", static_cast<unsigned long long>(h),
              static_cast<long>(st.step));
  return 0;
}

// ---------------------------------------------------------------------------------------------
// mutate

int cmd_mutate(const std::string& in, const std::string& out, const std::vector<std::string>& del,
               const std::vector<std::string>& set_int, const std::vector<std::string>& set_str,
               const std::vector<std::string>& swap) {
  fs::copy_file(in, out, fs::copy_options::overwrite_existing);
  h5::File f = h5::File::open_rw(out);
  // Experts 0 and E-1 of a tensor (and of its moments) trade places.
  for (const std::string& name : swap) {
    for (const char* g : {"params", "optim/m", "optim/v"}) {
      const std::string ds = fmt::format("{}/{}", g, name);
      const std::int64_t E = f.shape_of(ds).at(0);
      std::vector<float> first = f.read_f32_rows(ds, 0, 1), last = f.read_f32_rows(ds, E - 1, 1);
      f.write_f32_rows(ds, 0, 1, last.data());
      f.write_f32_rows(ds, E - 1, 1, first.data());
    }
  }
  for (const std::string& obj : del) RM_HDF5_CHECK(H5Ldelete(f.id(), obj.c_str(), H5P_DEFAULT));
  for (std::size_t i = 0; i + 2 < set_int.size(); i += 3) {
    f.set_attr(set_int[i], set_int[i + 1], static_cast<std::int64_t>(std::stoll(set_int[i + 2])));
  }
  for (std::size_t i = 0; i + 2 < set_str.size(); i += 3)
    f.set_attr(set_str[i], set_str[i + 1], set_str[i + 2]);
  f.close();
  return 0;
}

// ---------------------------------------------------------------------------------------------
// fuzz

struct Outcome {
  int status = -1;  // exit code, or -signal
  bool timed_out = false;
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

Outcome run_process(const std::vector<std::string>& argv, const std::string& work) {
  const std::string out = work + "/stdout.txt", err = work + "/stderr.txt";
  std::fflush(nullptr);  // or the child repeats our buffered output
  const pid_t pid = fork();
  RM_CHECK_KIND(Io, pid >= 0, "fork failed");
  if (pid == 0) {
    if (!std::freopen(out.c_str(), "w", stdout) || !std::freopen(err.c_str(), "w", stderr))
      _exit(99);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(98);
  }
  Outcome o;
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (true) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      o.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  o.status = WIFEXITED(status)     ? WEXITSTATUS(status)
             : WIFSIGNALED(status) ? -WTERMSIG(status)
                                   : -999;
  o.out = slurp(out);
  o.err = slurp(err);
  return o;
}

// "" when `o` is acceptable for the damaged file `file` given the original's output `good`;
// a clean refusal exits with `refused` (the harness's load: 1; `routemoe inspect`: 2, the exit
// status of bad input, docs/architecture.md "Messages and exit statuses").
std::string judge(const Outcome& o, const Outcome& good, const std::string& file, int refused) {
  if (o.timed_out) return "hung (killed after 30 s)";
  if (o.status < 0) return fmt::format("crashed with signal {}", -o.status);
  if (o.status == 0) return o.out == good.out ? "" : "loaded DIFFERENT values without an error";
  if (o.status != refused) return fmt::format("exit code {} (expected {})", o.status, refused);
  std::string err = o.err;
  while (!err.empty() && err.back() == '\n') err.pop_back();
  if (err.empty()) return fmt::format("exit {} without a message", refused);
  if (err.find('\n') != std::string::npos) return "error message is not one line: " + o.err;
  if (err.find(file) == std::string::npos) return "error message does not name the file: " + err;
  return "";
}

// Offsets of the bytes of `path` that are not raw dataset storage (chunks or contiguous data).
herr_t visit_dataset(hid_t loc, const char* name, const H5O_info_t* info, void* out) {
  if (info->type != H5O_TYPE_DATASET) return 0;
  auto* raw = static_cast<std::vector<std::pair<haddr_t, hsize_t>>*>(out);
  h5::Handle ds(RM_HDF5_CHECK(H5Dopen2(loc, name, H5P_DEFAULT)));
  h5::Handle dcpl(RM_HDF5_CHECK(H5Dget_create_plist(ds.id())));
  if (H5Pget_layout(dcpl.id()) == H5D_CHUNKED) {
    h5::Handle space(RM_HDF5_CHECK(H5Dget_space(ds.id())));
    hsize_t n = 0;
    RM_HDF5_CHECK(H5Dget_num_chunks(ds.id(), space.id(), &n));
    for (hsize_t i = 0; i < n; ++i) {
      haddr_t addr = 0;
      hsize_t size = 0;
      unsigned mask = 0;
      RM_HDF5_CHECK(H5Dget_chunk_info(ds.id(), space.id(), i, nullptr, &mask, &addr, &size));
      raw->emplace_back(addr, size);
    }
  } else if (const haddr_t addr = H5Dget_offset(ds.id()); addr != HADDR_UNDEF) {
    raw->emplace_back(addr, H5Dget_storage_size(ds.id()));
  }
  return 0;
}

std::vector<std::size_t> metadata_bytes(const std::string& path, std::size_t file_size) {
  const h5::File f = h5::File::open_read(path);
  std::vector<std::pair<haddr_t, hsize_t>> raw;
  RM_HDF5_CHECK(H5Ovisit(f.id(), H5_INDEX_NAME, H5_ITER_INC, visit_dataset, &raw));
  std::vector<bool> is_raw(file_size, false);
  for (const auto& [addr, size] : raw) {
    for (hsize_t i = 0; i < size && addr + i < file_size; ++i) is_raw[addr + i] = true;
  }
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < file_size; ++i) {
    if (!is_raw[i]) out.push_back(i);
  }
  return out;
}

int cmd_fuzz(const std::string& orig, const std::string& config, const std::string& self,
             const std::string& routemoe, const std::string& work, int flips, int truncations,
             unsigned seed, double seconds, int min_cases) {
  fs::create_directories(work);
  const std::string bytes = slurp(orig);
  RM_CHECK_KIND(Io, !bytes.empty(), fmt::format("cannot read {}", orig));
  const std::string victim = (fs::path(work) / "ckpt_damaged.h5").string();
  auto loader = [&](const std::string& f) {
    return std::vector<std::string>{self, "load", f, "--config", config};
  };
  auto inspector = [&](const std::string& f) {
    return std::vector<std::string>{routemoe, "inspect", "--json", f};
  };
  // The originals' outputs, from the same path the damaged copies take.
  { std::ofstream(victim, std::ios::binary) << bytes; }
  const Outcome good_load = run_process(loader(victim), work);
  const Outcome good_inspect = run_process(inspector(victim), work);
  RM_CHECK_KIND(
      Check, good_load.status == 0 && good_inspect.status == 0,
      fmt::format("the undamaged file does not load: {}{}", good_load.err, good_inspect.err));
  const std::vector<std::size_t> metadata = metadata_bytes(orig, bytes.size());
  std::printf("fuzz: %s: %zu bytes, %zu of them HDF5 metadata (outside raw data chunks)\n",
              orig.c_str(), bytes.size(), metadata.size());
  std::mt19937_64 rng(seed);
  int bad = 0, refused = 0, identical = 0;
  std::map<std::string, int> messages;  // how the refusals read (first words after the path)
  // Flips and truncations interleaved in their ratio, so that a run cut short by the time budget
  // still has both kinds; the budget ends the loop only after min_cases corruptions.
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const int total = flips + truncations;
  int done = 0, done_flips = 0, done_truncations = 0;
  for (int c = 0; c < total; ++c) {
    if (seconds > 0 && done >= min_cases && elapsed() > seconds) break;
    const bool flip = done_truncations >= truncations ||
                      (done_flips < flips && done_flips * truncations <= done_truncations * flips);
    ++(flip ? done_flips : done_truncations);
    ++done;
    std::string damaged = bytes;
    std::string what;
    if (flip) {
      // Half the flips in HDF5 metadata (superblock, object headers, chunk indexes, heaps: every
      // byte outside raw data chunks), half anywhere (mostly tensor data).
      const std::size_t at =
          done_flips % 2 == 1 ? metadata[rng() % metadata.size()] : rng() % bytes.size();
      const auto mask = static_cast<unsigned char>(1u << (rng() % 8));
      damaged[at] = static_cast<char>(static_cast<unsigned char>(damaged[at]) ^ mask);
      what = fmt::format("flip bit 0x{:02x} at byte {}", mask, at);
    } else {
      const std::size_t at = rng() % bytes.size();
      damaged.resize(at);
      what = fmt::format("truncate to {} of {} bytes", at, bytes.size());
    }
    { std::ofstream(victim, std::ios::binary | std::ios::trunc) << damaged; }
    const Outcome l = run_process(loader(victim), work);
    const Outcome i = run_process(inspector(victim), work);
    const std::string jl = judge(l, good_load, victim, 1), ji = judge(i, good_inspect, victim, 2);
    if (!jl.empty() || !ji.empty()) {
      ++bad;
      std::printf("FAIL %s:%s%s%s%s\n", what.c_str(), jl.empty() ? "" : " load: ", jl.c_str(),
                  ji.empty() ? "" : " inspect: ", ji.c_str());
      std::fflush(stdout);
      continue;
    }
    if (l.status == 0 && i.status == 0) {
      ++identical;
    } else {
      ++refused;
      const std::string& msg = l.status != 0 ? l.err : i.err;
      const std::size_t p = msg.find(victim);
      std::string key = msg.substr(p + victim.size(), 60);
      if (const std::size_t nl = key.find('\n'); nl != std::string::npos) key.resize(nl);
      ++messages[key];
    }
    // A file that one reader refuses and the other accepts is fine (inspect reads the routing
    // record that a resume does not), as long as what was accepted is identical.
  }
  std::printf(
      "fuzz: %d corruptions (%d byte flips, %d truncations, seed %u, %.0f s): %d refused with a "
      "one-line error, %d loaded identical values, %d FAILED\n",
      done, done_flips, done_truncations, seed, elapsed(), refused, identical, bad);
  if (done < total) {
    std::printf("fuzz: the %.0f s budget ended the run after %d of %d corruptions\n", seconds, done,
                total);
  }
  std::printf("most common refusals (text after the file name):\n");
  std::vector<std::pair<int, std::string>> common;
  for (const auto& [k, n] : messages) common.emplace_back(n, k);
  std::sort(common.rbegin(), common.rend());
  for (std::size_t j = 0; j < std::min<std::size_t>(8, common.size()); ++j) {
    std::printf("  %4d  %s\n", common[j].first, common[j].second.c_str());
  }
  std::error_code ec;
  fs::remove(victim, ec);
  return bad == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// check-trace

// The raw datasets of a version-2 trace (docs/checkpoint-format.md), read here with h5::File
// (not runfile): every column has exactly `records` rows, the router attributes, shapes and
// expert ids are as configured, ac layers store per-expert weights [groups, E, d] per record,
// and each checkpoint's /routing record equals the trace record of its step: experts, gates and
// probs bit for bit, and its per-token AC weights M_i equal w_{c_i} of token i's group expanded
// here from the trace (with the present flags exactly the experts some token of the group chose).
int cmd_check_trace(const std::string& path, int records, const std::vector<std::string>& routers,
                    std::int64_t P, std::int64_t K, std::int64_t D, std::int64_t G,
                    const std::string& ckpt_dir) {
  const h5::File f = h5::File::open_read(path);
  int bad = 0;
  auto fail = [&](const std::string& msg) {
    if (bad < 20) std::printf("  %s\n", msg.c_str());
    ++bad;
  };
  if (f.attr_string("/", "format") != "routemoe-trace") fail("format is not routemoe-trace");
  if (f.attr_int("/", "format_version") != 2) fail("format_version is not 2");
  if (f.attr_int("/", "n_moe_layers") != static_cast<std::int64_t>(routers.size()))
    fail("n_moe_layers");
  if (f.attr_int("/", "top_k") != K) fail("top_k");
  if (f.attr_int("/", "d_model") != D) fail("d_model");
  const std::int64_t E = f.attr_int("/", "n_experts");
  if (f.shape_of("probe/tokens") != Shape{P}) fail("probe/tokens shape");
  const std::vector<std::int64_t> steps = f.read_i64("records/step");
  const auto R = static_cast<std::int64_t>(steps.size());
  if (R != records) fail(fmt::format("{} records, expected {}", R, records));
  for (const char* col : {"records/epoch", "records/groups", "records/ac_row", "records/reason"}) {
    if (f.shape_of(col) != Shape{R}) fail(fmt::format("{}: shape is not [{}]", col, R));
  }
  const std::vector<std::int64_t> groups = f.read_i64("records/groups");
  const std::vector<std::int64_t> ac_row = f.read_i64("records/ac_row");
  std::map<std::int64_t, std::int64_t> by_step;  // step -> record
  for (std::int64_t r = 0; r < R; ++r) {
    const auto u = static_cast<std::size_t>(r);
    if (r > 0 && steps[u] <= steps[u - 1])
      fail(fmt::format("record {}: step {} after step {}", r, steps[u], steps[u - 1]));
    if (groups[u] != G)
      fail(fmt::format("record {}: {} token groups, expected {}", r, groups[u], G));
    by_step[steps[u]] = r;
  }
  std::vector<std::vector<std::int32_t>> experts(routers.size());
  std::vector<std::vector<float>> gates(routers.size()), probs(routers.size()), w(routers.size());
  std::vector<std::vector<std::int32_t>> present(routers.size());
  for (std::size_t m = 0; m < routers.size(); ++m) {
    const std::string lg = fmt::format("records/layer{}", m);
    const std::string want = m == 0 && routers[m] == "ac" ? "topk" : routers[m];
    if (f.attr_string(lg, "router") != want)
      fail(fmt::format("{}: router {}, expected {}", lg, f.attr_string(lg, "router"), want));
    for (const char* ds : {"experts", "gates", "probs"}) {
      const Shape s = f.shape_of(lg + "/" + ds);
      if (s != Shape{R, P, K})
        fail(fmt::format("{}/{}: shape {}, expected [{}, {}, {}]", lg, ds, shape_str(s), R, P, K));
    }
    experts[m] = f.read_i32(lg + "/experts");
    gates[m] = f.read_f32(lg + "/gates");
    probs[m] = f.read_f32(lg + "/probs");
    for (std::int32_t e : experts[m]) {
      if (e < 0 || e >= E) {
        fail(fmt::format("{}: expert id {}", lg, e));
        break;
      }
    }
    const bool ac = want == "ac";
    if (ac != f.exists(lg + "/ac_weights"))
      fail(fmt::format("{}: ac_weights {} expected", lg, ac ? "" : "not"));
    if (f.exists(lg + "/ac_scale")) fail(lg + ": per-token ac_scale in a version-2 trace");
    if (!ac) continue;
    if (f.shape_of(lg + "/ac_weights") != Shape{R * G, E, D})
      fail(fmt::format("{}/ac_weights: shape {}, expected [{}, {}, {}]", lg,
                       shape_str(f.shape_of(lg + "/ac_weights")), R * G, E, D));
    if (f.shape_of(lg + "/ac_present") != Shape{R * G, E}) fail(lg + "/ac_present: shape");
    w[m] = f.read_f32(lg + "/ac_weights");
    for (std::int32_t v : f.read_i32(lg + "/ac_present")) present[m].push_back(v);
    for (std::int64_t r = 0; r < R; ++r) {
      if (ac_row[static_cast<std::size_t>(r)] != r * G)
        fail(fmt::format("record {}: ac_row {}, expected {}", r,
                         ac_row[static_cast<std::size_t>(r)], r * G));
    }
  }
  if (bad > 0) {
    std::printf("check-trace %s: MISMATCH\n", path.c_str());
    return 1;
  }
  int ckpts = 0;
  const std::int64_t rowPK = P * K;
  auto rows_equal = [](const auto& v, std::int64_t r, std::int64_t n, const auto& other) {
    return std::equal(v.begin() + r * n, v.begin() + (r + 1) * n, other.begin(), other.end());
  };
  if (!ckpt_dir.empty()) {
    for (const std::string& c : list_checkpoints(ckpt_dir)) {
      const h5::File cf = h5::File::open_read(c);
      const std::int64_t step = cf.attr_int("routing", "step");
      if (!by_step.count(step)) {
        fail(fmt::format("{}: no trace record of step {}", c, step));
        continue;
      }
      const std::int64_t r = by_step[step];
      for (std::size_t m = 0; m < routers.size(); ++m) {
        const std::string a = fmt::format("routing/layer{}", m);
        if (!rows_equal(experts[m], r, rowPK, cf.read_i32(a + "/experts")) ||
            !rows_equal(gates[m], r, rowPK, cf.read_f32(a + "/gates")) ||
            !rows_equal(probs[m], r, rowPK, cf.read_f32(a + "/probs"))) {
          fail(fmt::format("{}: {} differs from trace record {}", c, a, r));
        }
        if (w[m].empty()) continue;
        // M_i of the checkpoint against w[group of i, top-1 of i at layer m - 1] of the trace.
        const std::vector<float> M = cf.read_f32(a + "/ac_scale");
        std::vector<int> seen(static_cast<std::size_t>(G * E), 0);
        for (std::int64_t i = 0; i < P; ++i) {
          const std::int64_t g = i / (P / G);
          const std::int32_t e = experts[m - 1][static_cast<std::size_t>(r * rowPK + i * K)];
          const std::int64_t row = (r * G + g) * E + e;
          seen[static_cast<std::size_t>(g * E + e)] = 1;
          if (present[m][static_cast<std::size_t>(row)] != 1 ||
              !std::equal(M.begin() + i * D, M.begin() + (i + 1) * D, w[m].begin() + row * D)) {
            fail(
                fmt::format("{}: {} token {}: M_i differs from the trace's w of expert {} in "
                            "group {}",
                            c, a, i, e, g));
            break;
          }
        }
        for (std::int64_t ge = 0; ge < G * E; ++ge) {
          if (present[m][static_cast<std::size_t>(r * G * E + ge)] !=
              seen[static_cast<std::size_t>(ge)])
            fail(fmt::format("{}: {} ac_present of group/expert {} is not 'some token chose it'", c,
                             a, ge));
        }
      }
      ++ckpts;
    }
  }
  std::printf(
      "check-trace %s: %ld records, %zu MoE layers, P %ld k %ld, %ld token groups; %d checkpoint "
      "records matched (ac: per-token M = per-expert w): %s\n",
      path.c_str(), static_cast<long>(R), routers.size(), static_cast<long>(P),
      static_cast<long>(K), static_cast<long>(G), ckpts, bad == 0 ? "OK" : "MISMATCH");
  return bad == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// same-content

// Every object of an HDF5 file by path ("." is the root): "group", or a dataset's type, shape,
// storage layout (chunk shape, filters) and raw bytes; every attribute ("<object>@<name>") as its
// type and raw bytes. Two files with equal maps hold the same content, whatever wrote them.
using Content = std::map<std::string, std::string>;

std::string type_text(hid_t type) {
  return fmt::format("class {} size {} sign {}", static_cast<int>(H5Tget_class(type)),
                     H5Tget_size(type), static_cast<int>(H5Tget_sign(type)));
}

herr_t collect_attribute(hid_t obj, const char* name, const H5A_info_t*, void* out) {
  auto* c = static_cast<std::pair<Content*, std::string>*>(out);
  h5::Handle attr(RM_HDF5_CHECK(H5Aopen(obj, name, H5P_DEFAULT)));
  h5::Handle type(RM_HDF5_CHECK(H5Aget_type(attr.id())));
  h5::Handle space(RM_HDF5_CHECK(H5Aget_space(attr.id())));
  const auto n = static_cast<std::size_t>(RM_HDF5_CHECK(H5Sget_simple_extent_npoints(space.id())));
  std::string bytes(n * H5Tget_size(type.id()), '\0');
  if (!bytes.empty()) RM_HDF5_CHECK(H5Aread(attr.id(), type.id(), bytes.data()));
  (*c->first)[c->second + "@" + name] = type_text(type.id()) + " value " + bytes;
  return 0;
}

herr_t collect_object(hid_t loc, const char* name, const H5O_info_t* info, void* out) {
  auto* content = static_cast<Content*>(out);
  h5::Handle obj(RM_HDF5_CHECK(H5Oopen(loc, name, H5P_DEFAULT)));
  std::pair<Content*, std::string> attrs{content, name};
  RM_HDF5_CHECK(
      H5Aiterate2(obj.id(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attribute, &attrs));
  if (info->type == H5O_TYPE_GROUP) {
    (*content)[name] = "group";
    return 0;
  }
  if (info->type != H5O_TYPE_DATASET) {
    (*content)[name] = fmt::format("object of type {}", static_cast<int>(info->type));
    return 0;
  }
  h5::Handle type(RM_HDF5_CHECK(H5Dget_type(obj.id())));
  h5::Handle space(RM_HDF5_CHECK(H5Dget_space(obj.id())));
  const int nd = RM_HDF5_CHECK(H5Sget_simple_extent_ndims(space.id()));
  std::vector<hsize_t> dims(static_cast<std::size_t>(nd));
  if (nd > 0) RM_HDF5_CHECK(H5Sget_simple_extent_dims(space.id(), dims.data(), nullptr));
  h5::Handle dcpl(RM_HDF5_CHECK(H5Dget_create_plist(obj.id())));
  std::string layout = fmt::format("layout {}", static_cast<int>(H5Pget_layout(dcpl.id())));
  if (H5Pget_layout(dcpl.id()) == H5D_CHUNKED) {
    std::vector<hsize_t> chunk(static_cast<std::size_t>(nd));
    RM_HDF5_CHECK(H5Pget_chunk(dcpl.id(), nd, chunk.data()));
    layout +=
        fmt::format(" chunk [{}] filters {}", fmt::join(chunk, ", "), H5Pget_nfilters(dcpl.id()));
  }
  h5::Handle mem(RM_HDF5_CHECK(H5Tget_native_type(type.id(), H5T_DIR_ASCEND)));
  const auto n = static_cast<std::size_t>(RM_HDF5_CHECK(H5Sget_simple_extent_npoints(space.id())));
  std::string bytes(n * H5Tget_size(mem.id()), '\0');
  if (!bytes.empty()) {
    RM_HDF5_CHECK(H5Dread(obj.id(), mem.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()));
  }
  (*content)[name] = fmt::format("dataset {} shape [{}] {} bytes ", type_text(type.id()),
                                 fmt::join(dims, ", "), layout) +
                     bytes;
  return 0;
}

Content file_content(const std::string& path) {
  const h5::File f = h5::File::open_read(path);
  Content c;
  RM_HDF5_CHECK(H5Ovisit(f.id(), H5_INDEX_NAME, H5_ITER_INC, collect_object, &c));
  return c;
}

int cmd_same_content(const std::string& pa, const std::string& pb) {
  const Content a = file_content(pa), b = file_content(pb);
  int bad = 0;
  auto report = [&](const std::string& msg) {
    if (bad < 10) std::printf("  %s\n", msg.c_str());
    ++bad;
  };
  std::size_t datasets = 0, attributes = 0;
  for (const auto& [key, value] : a) {
    (key.find('@') != std::string::npos ? attributes : datasets) +=
        value.rfind("dataset", 0) == 0 || key.find('@') != std::string::npos ? 1 : 0;
    const auto it = b.find(key);
    if (it == b.end()) {
      report(fmt::format("{}: only in {}", key, pa));
    } else if (it->second != value) {
      // Name the first differing element of a dataset (4-byte elements: float32 / int32).
      const std::string& w = it->second;
      std::size_t at = 0;
      while (at < value.size() && at < w.size() && value[at] == w[at]) ++at;
      report(
          fmt::format("{}: differs (sizes {} and {}, first difference at byte {} of the "
                      "description + data)",
                      key, value.size(), w.size(), at));
    }
  }
  for (const auto& [key, value] : b) {
    if (!a.count(key)) report(fmt::format("{}: only in {}", key, pb));
  }
  std::printf("same-content %s vs %s: %zu objects (%zu datasets), %zu attributes: %s\n", pa.c_str(),
              pb.c_str(), a.size() - attributes, datasets, attributes,
              bad == 0 ? "IDENTICAL" : fmt::format("{} DIFFERENCES", bad).c_str());
  return bad == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// write-both (under mpiexec)

int cmd_write_both(const std::string& config, const std::string& from, const std::string& par,
                   const std::string& gat) {
  comm::init_mpi(nullptr, nullptr);
  const RunConfig cfg = read_config(config);
  comm::ProcessGroups groups =
      comm::ProcessGroups::create(comm::make_mpi_world(), static_cast<int>(cfg.parallel.ep_size));
  const int W = groups.world->size();
  const bool lead = groups.world->rank() == 0;
  if (!ROUTEMOE_HAVE_PARALLEL_HDF5) {
    if (lead) std::printf("SKIP: this build has no parallel HDF5; both writers would gather\n");
    groups.release();
    comm::finalize_mpi();
    return 77;
  }
  RM_CHECK_KIND(Config, W >= 2 && groups.ep_size >= 2,
                fmt::format("write-both needs >= 2 ranks and ep_size >= 2 (got {} ranks, ep {}): "
                            "else no expert slice is gathered",
                            W, groups.ep_size));
  Model model(cfg.model, groups.ep.get());
  AdamW opt(model.params(), cfg.optim);
  const CheckpointState st = load_checkpoint(from, model, opt);
  const RoutingRecord rec = [&] {
    const h5::File f = h5::File::open_read(from);
    return runfile::read_routing(f, runfile::kRoutingGroup);
  }();
  save_checkpoint(par, cfg, model, opt, st, rec, groups, CheckpointWrite::Auto);
  save_checkpoint(gat, cfg, model, opt, st, rec, groups, CheckpointWrite::Gathered);
  if (lead) {
    std::printf(
        "write-both: %d ranks, ep %d: %s (parallel HDF5, each rank its experts) and %s "
        "(gathered to rank 0) from %s\n",
        W, groups.ep_size, par.c_str(), gat.c_str(), from.c_str());
  }
  groups.release();
  comm::finalize_mpi();
  return 0;
}

// ---------------------------------------------------------------------------------------------
// check-analysis

// The CSV files of `routemoe trace --csv DIR` for the run `label` of one trace, against the
// metrics recomputed here from the trace's raw datasets (h5::File, not the analysis library or
// runfile::read_routing), by the definitions of docs/analysis.md.
//
// Exactness: a rate that is a ratio of two integer counts is one correctly rounded division on
// both sides, and the CSV prints the shortest text that reads back as the same double, so those
// compare exactly (as do counts, steps and epochs). Entropies, agreements (1 - flip rate in the
// library, same/P here) and means over records are sums in another order: |a - b| <= 1e-12, far
// above double rounding over <= E or <= records terms (~1e-16 relative) and far below one token
// in P (>= 1/P).
int cmd_check_analysis(const std::string& trace_path, const std::string& dir,
                       const std::string& label) {
  const h5::File f = h5::File::open_read(trace_path);
  const std::int64_t L = f.attr_int("/", "n_moe_layers"), K = f.attr_int("/", "top_k"),
                     E = f.attr_int("/", "n_experts");
  struct Rec {
    std::int64_t step, epoch;
    std::vector<std::vector<std::int32_t>> layers;  // [L][P * K]
  };
  std::vector<Rec> recs;
  std::int64_t P = 0;
  // Version 2: records are rows of records/step, records/epoch, records/layer<m>/experts.
  const std::vector<std::int64_t> steps = f.read_i64("records/step");
  const std::vector<std::int64_t> epochs = f.read_i64("records/epoch");
  for (std::size_t r = 0; r < steps.size(); ++r) recs.push_back({steps[r], epochs[r], {}});
  for (std::int64_t m = 0; m < L; ++m) {
    Shape s;
    const std::vector<std::int32_t> all = f.read_i32(fmt::format("records/layer{}/experts", m), &s);
    P = s.at(1);
    for (std::size_t r = 0; r < recs.size(); ++r) {
      const auto n = static_cast<std::ptrdiff_t>(P * K);
      recs[r].layers.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(r) * n,
                                  all.begin() + static_cast<std::ptrdiff_t>(r + 1) * n);
    }
  }
  RM_CHECK_KIND(Data, recs.size() >= 2 && P > 0,
                fmt::format("{}: check-analysis needs >= 2 records", trace_path));
  const double dP = static_cast<double>(P);
  auto top1 = [&](const Rec& r, std::int64_t m, std::int64_t i) {
    return r.layers[static_cast<std::size_t>(m)][static_cast<std::size_t>(i * K)];
  };

  int bad = 0, checked = 0;
  auto fail = [&](const std::string& msg) {
    if (bad < 20) std::printf("  %s\n", msg.c_str());
    ++bad;
  };
  // rows of a CSV (header checked, split on ',').
  auto rows_of = [&](const std::string& name, const std::string& header) {
    std::ifstream in((fs::path(dir) / name).string());
    RM_CHECK_KIND(Io, in.good(), fmt::format("cannot read {}/{}", dir, name));
    std::string line;
    std::getline(in, line);
    if (line != header) fail(fmt::format("{}: header '{}', expected '{}'", name, line, header));
    std::vector<std::vector<std::string>> rows;
    while (std::getline(in, line)) {
      std::vector<std::string> cells;
      std::stringstream ss(line);
      std::string cell;
      while (std::getline(ss, cell, ',')) cells.push_back(cell);
      rows.push_back(cells);
    }
    return rows;
  };
  // Compares one CSV row with the expected cells: integers and exact doubles as text values,
  // toleranced doubles within 1e-12.
  struct Cell {
    double value;
    bool exact;
  };
  auto compare_row = [&](const std::string& name, std::size_t index,
                         const std::vector<std::string>& got, const std::vector<Cell>& want) {
    ++checked;
    if (got.size() != want.size() + 1 || got[0] != label) {
      fail(fmt::format("{} row {}: {} cells / run '{}', expected {} cells / run '{}'", name, index,
                       got.size(), got.empty() ? "" : got[0], want.size() + 1, label));
      return;
    }
    for (std::size_t c = 0; c < want.size(); ++c) {
      const double v = std::stod(got[c + 1]);
      const bool ok = want[c].exact ? v == want[c].value : std::abs(v - want[c].value) <= 1e-12;
      if (!ok) {
        fail(fmt::format("{} row {} column {}: {} in the CSV, recomputed {:.17g}", name, index,
                         c + 1, got[c + 1], want[c].value));
      }
    }
  };
  auto exact = [](double v) { return Cell{v, true}; };
  auto approx = [](double v) { return Cell{v, false}; };
  auto count_rows = [&](const std::string& name, std::size_t got, std::size_t want) {
    if (got != want) fail(fmt::format("{}: {} rows, expected {}", name, got, want));
  };

  // flips.csv: one row per pair of consecutive records and layer.
  {
    const auto rows =
        rows_of("flips.csv",
                "run,layer,from_step,to_step,from_epoch,to_epoch,top1_flip_rate,topk_change_rate");
    count_rows("flips.csv", rows.size(), (recs.size() - 1) * static_cast<std::size_t>(L));
    std::size_t row = 0;
    for (std::size_t r = 1; r < recs.size(); ++r) {
      for (std::int64_t m = 0; m < L && row < rows.size(); ++m, ++row) {
        std::int64_t flips = 0, changed = 0;
        for (std::int64_t i = 0; i < P; ++i) {
          flips += top1(recs[r - 1], m, i) != top1(recs[r], m, i) ? 1 : 0;
          std::multiset<std::int32_t> a, b;
          for (std::int64_t j = 0; j < K; ++j) {
            a.insert(recs[r - 1]
                         .layers[static_cast<std::size_t>(m)][static_cast<std::size_t>(i * K + j)]);
            b.insert(
                recs[r].layers[static_cast<std::size_t>(m)][static_cast<std::size_t>(i * K + j)]);
          }
          changed += a != b ? 1 : 0;
        }
        compare_row(
            "flips.csv", row, rows[row],
            {exact(static_cast<double>(m)), exact(static_cast<double>(recs[r - 1].step)),
             exact(static_cast<double>(recs[r].step)),
             exact(static_cast<double>(recs[r - 1].epoch)),
             exact(static_cast<double>(recs[r].epoch)), exact(static_cast<double>(flips) / dP),
             exact(static_cast<double>(changed) / dP)});
      }
    }
  }
  // load.csv: first-choice load of every layer and expert at the last record.
  {
    const auto rows =
        rows_of("load.csv", "run,layer,step,epoch,expert,tokens,share,entropy_nats,entropy_norm");
    count_rows("load.csv", rows.size(), static_cast<std::size_t>(L * E));
    const Rec& last = recs.back();
    std::size_t row = 0;
    for (std::int64_t m = 0; m < L; ++m) {
      std::vector<std::int64_t> counts(static_cast<std::size_t>(E), 0);
      for (std::int64_t i = 0; i < P; ++i) ++counts.at(static_cast<std::size_t>(top1(last, m, i)));
      double h = 0;
      for (std::int64_t c : counts) {
        if (c > 0) h -= static_cast<double>(c) / dP * std::log(static_cast<double>(c) / dP);
      }
      const double norm = E > 1 ? h / std::log(static_cast<double>(E)) : 1.0;
      for (std::int64_t e = 0; e < E && row < rows.size(); ++e, ++row) {
        const auto c = static_cast<double>(counts[static_cast<std::size_t>(e)]);
        compare_row("load.csv", row, rows[row],
                    {exact(static_cast<double>(m)), exact(static_cast<double>(last.step)),
                     exact(static_cast<double>(last.epoch)), exact(static_cast<double>(e)),
                     exact(c), exact(c / dP), approx(h), approx(norm)});
      }
    }
  }
  // last_change.csv: per layer, the epoch of each token's last top-1 change (0: never), binned
  // over epoch 0 and the epochs of the records after the first.
  {
    const auto rows =
        rows_of("last_change.csv", "run,layer,epoch,tokens,share,never_changed_tokens");
    std::set<std::int64_t> epochs{0};
    for (std::size_t r = 1; r < recs.size(); ++r) epochs.insert(recs[r].epoch);
    count_rows("last_change.csv", rows.size(), static_cast<std::size_t>(L) * epochs.size());
    std::size_t row = 0;
    for (std::int64_t m = 0; m < L; ++m) {
      std::map<std::int64_t, std::int64_t> bins;
      std::int64_t never = 0;
      for (std::int64_t i = 0; i < P; ++i) {
        std::int64_t last_epoch = -1;
        for (std::size_t r = 1; r < recs.size(); ++r) {
          if (top1(recs[r], m, i) != top1(recs[r - 1], m, i)) last_epoch = recs[r].epoch;
        }
        if (last_epoch < 0) ++never;
        ++bins[std::max<std::int64_t>(last_epoch, 0)];
      }
      for (std::int64_t e : epochs) {
        if (row >= rows.size()) break;
        const auto tokens = static_cast<double>(bins[e]);
        compare_row("last_change.csv", row, rows[row],
                    {exact(static_cast<double>(m)), exact(static_cast<double>(e)), exact(tokens),
                     exact(tokens / dP), exact(e == 0 ? static_cast<double>(never) : 0.0)});
        ++row;
      }
    }
  }
  // agreement.csv: share of tokens with the same top-1 expert index in layers m and m + 1.
  {
    const auto rows =
        rows_of("agreement.csv", "run,layer_a,layer_b,last_step,agreement_last,agreement_mean");
    count_rows("agreement.csv", rows.size(),
               static_cast<std::size_t>(std::max<std::int64_t>(L - 1, 0)));
    for (std::int64_t m = 0; m + 1 < L && static_cast<std::size_t>(m) < rows.size(); ++m) {
      double sum = 0, last = 0;
      for (const Rec& r : recs) {
        std::int64_t same = 0;
        for (std::int64_t i = 0; i < P; ++i) same += top1(r, m, i) == top1(r, m + 1, i) ? 1 : 0;
        last = static_cast<double>(same) / dP;
        sum += last;
      }
      compare_row("agreement.csv", static_cast<std::size_t>(m), rows[static_cast<std::size_t>(m)],
                  {exact(static_cast<double>(m)), exact(static_cast<double>(m + 1)),
                   exact(static_cast<double>(recs.back().step)), approx(last),
                   approx(sum / static_cast<double>(recs.size()))});
    }
  }
  std::printf(
      "check-analysis %s: %zu records, %ld MoE layers, P %ld k %ld E %ld; %d CSV rows "
      "recomputed from the trace: %s\n",
      trace_path.c_str(), recs.size(), static_cast<long>(L), static_cast<long>(P),
      static_cast<long>(K), static_cast<long>(E), checked,
      bad == 0 ? "OK" : fmt::format("{} MISMATCHES", bad).c_str());
  return bad == 0 ? 0 : 1;
}

std::string one_line(const std::exception& e) {
  const auto* err = dynamic_cast<const Error*>(&e);
  std::string s = err != nullptr && !err->detail().empty() ? err->detail() : e.what();
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"checkpoint test helper"};
  app.require_subcommand(1);
  std::string a, b, config, routemoe, work, ckpt_dir;
  double atol = 0, rtol = 0;
  bool routing = false;
  long from = 0, to = 0;
  int flips = 200, truncations = 50, records = 0;
  unsigned seed = 1;
  std::int64_t P = 0, K = 0, D = 0, G = 1;
  std::vector<std::string> del, set_int, set_str, routers, swap;

  CLI::App* compare = app.add_subcommand("compare");
  compare->add_option("a", a)->required();
  compare->add_option("b", b)->required();
  compare->add_option("--atol", atol);
  compare->add_option("--rtol", rtol);
  compare->add_flag("--routing", routing);
  CLI::App* metrics = app.add_subcommand("compare-metrics");
  metrics->add_option("a", a)->required();
  metrics->add_option("b", b)->required();
  metrics->add_option("--from", from)->required();
  metrics->add_option("--to", to)->required();
  metrics->add_option("--rtol", rtol);
  CLI::App* load = app.add_subcommand("load");
  load->add_option("file", a)->required();
  load->add_option("--config", config)->required();
  CLI::App* mutate = app.add_subcommand("mutate");
  mutate->add_option("in", a)->required();
  mutate->add_option("out", b)->required();
  mutate->add_option("--delete", del);
  mutate->add_option("--set-int", set_int)->expected(3);
  mutate->add_option("--set-string", set_str)->expected(3);
  mutate->add_option("--swap-experts", swap);
  CLI::App* fuzz = app.add_subcommand("fuzz");
  fuzz->add_option("--ckpt", a)->required();
  fuzz->add_option("--config", config)->required();
  fuzz->add_option("--routemoe", routemoe)->required();
  fuzz->add_option("--work", work)->required();
  fuzz->add_option("--flips", flips);
  fuzz->add_option("--truncations", truncations);
  fuzz->add_option("--seed", seed);
  double fuzz_seconds = 0;
  int fuzz_min_cases = 0;
  fuzz->add_option("--seconds", fuzz_seconds, "time budget (0: none); at least --min-cases run");
  fuzz->add_option("--min-cases", fuzz_min_cases);
  CLI::App* trace = app.add_subcommand("check-trace");
  trace->add_option("trace", a)->required();
  trace->add_option("--records", records)->required();
  trace->add_option("--routers", routers)->required()->delimiter(',');
  trace->add_option("--P", P)->required();
  trace->add_option("--k", K)->required();
  trace->add_option("--d", D)->required();
  trace->add_option("--ckpt-dir", ckpt_dir);
  trace->add_option("--groups", G, "token groups per record (the ranks of the run)");
  CLI::App* same = app.add_subcommand("same-content");
  same->add_option("a", a)->required();
  same->add_option("b", b)->required();
  std::string from_ckpt, label;
  CLI::App* both = app.add_subcommand("write-both");
  both->add_option("--config", config)->required();
  both->add_option("--from", from_ckpt)->required();
  both->add_option("--parallel", a)->required();
  both->add_option("--gathered", b)->required();
  CLI::App* analysis = app.add_subcommand("check-analysis");
  analysis->add_option("trace", a)->required();
  analysis->add_option("--csv", b)->required();
  analysis->add_option("--label", label)->required();
  CLI11_PARSE(app, argc, argv);

  try {
    if (compare->parsed()) return cmd_compare(a, b, atol, rtol, atol == 0 && rtol == 0, routing);
    if (metrics->parsed()) return cmd_compare_metrics(a, b, from, to, rtol);
    if (load->parsed()) return cmd_load(a, config);
    if (mutate->parsed()) return cmd_mutate(a, b, del, set_int, set_str, swap);
    if (fuzz->parsed()) {
      return cmd_fuzz(a, config, fs::canonical("/proc/self/exe").string(), routemoe, work, flips,
                      truncations, seed, fuzz_seconds, fuzz_min_cases);
    }
    if (trace->parsed()) return cmd_check_trace(a, records, routers, P, K, D, G, ckpt_dir);
    if (same->parsed()) return cmd_same_content(a, b);
    if (both->parsed()) return cmd_write_both(config, from_ckpt, a, b);
    if (analysis->parsed()) return cmd_check_analysis(a, b, label);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "ckpt_harness: %s\n", one_line(e).c_str());
    if (comm::mpi_active()) comm::abort_world(1);  // write-both: no rank waits forever
    return 1;
  }
  return 1;
}
