#include "framework/trace/analysis.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "framework/error.h"
#include "framework/h5.h"
#include "framework/json.h"
#include "framework/runfile.h"
#include "framework/tensor.h"

namespace routemoe::trace {

namespace fs = std::filesystem;

namespace {

// Parses a non-negative decimal number that makes up all of `s`; -1 otherwise.
std::int64_t parse_index(const std::string& s) {
  if (s.empty() || s.size() > 18) return -1;
  std::int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

// Opens `path` read-only: an existing file (not a directory) that HDF5 can open.
h5::File open_checked(const std::string& path) {
  std::error_code ec;
  RM_CHECK_KIND(Io, fs::exists(path, ec), fmt::format("{}: no such file or directory", path));
  RM_CHECK_KIND(Io, !fs::is_directory(path, ec),
                fmt::format("{}: is a directory, expected a trace or checkpoint file", path));
  // h5::File::open_read says "not a readable HDF5 file (<HDF5's reason>)"; add what was expected.
  try {
    return h5::File::open_read(path);
  } catch (const Error& e) {
    RM_FAIL(Data, fmt::format("{} (expected a routemoe trace or checkpoint)", e.detail()));
  }
}

// n_experts from the [model] section of a run's TOML configuration; 0 when absent.
std::int64_t n_experts_from_config(const std::string& toml) {
  std::istringstream in(toml);
  std::string line, section;
  while (std::getline(in, line)) {
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    line = line.substr(first);
    if (line[0] == '[') {
      section = line.substr(1, line.find(']') - 1);
      continue;
    }
    const auto eq = line.find('=');
    if (section != "model" || eq == std::string::npos) continue;
    std::string key = line.substr(0, eq);
    key.erase(key.find_last_not_of(" \t") + 1);
    if (key != "n_experts") continue;
    std::string value = line.substr(eq + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    value.erase(value.find_last_not_of(" \t\r") + 1);
    return parse_index(value) > 0 ? parse_index(value) : 0;
  }
  return 0;
}

std::string run_dir_name(const fs::path& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

// ---- formatting helpers ----

std::string num(double v) {
  return std::isfinite(v) ? fmt::format("{}", v) : "null";
}

std::string csv_str(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

// Renders rows as an aligned table: the first column left-aligned, the others right-aligned.
std::string render(const std::vector<std::vector<std::string>>& rows, const std::string& indent) {
  std::vector<std::size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line = indent;
    for (std::size_t c = 0; c < row.size(); ++c) {
      if (c == 0) {
        line += fmt::format("{:<{}}", row[c], width[c]);
      } else {
        line += fmt::format("  {:>{}}", row[c], width[c]);
      }
    }
    line.erase(line.find_last_not_of(' ') + 1);
    out += line + "\n";
  }
  return out;
}

std::string f4(double v) {
  return fmt::format("{:.4f}", v);
}

double mean_of(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Validation and metrics

void validate(const Run& run) {
  const std::string who = run.sources.empty() ? run.label : run.sources.front();
  RM_CHECK_KIND(Data, run.n_moe_layers >= 1,
                fmt::format("{}: no MoE layers (n_moe_layers = {})", who, run.n_moe_layers));
  RM_CHECK_KIND(Data, run.top_k >= 1,
                fmt::format("{}: top_k must be >= 1, got {}", who, run.top_k));
  RM_CHECK_KIND(
      Data, run.n_experts >= run.top_k,
      fmt::format("{}: n_experts {} is smaller than top_k {}", who, run.n_experts, run.top_k));
  RM_CHECK_KIND(Data, run.n_probe >= 1, fmt::format("{}: empty probe set", who));
  const auto want = static_cast<std::size_t>(run.n_probe * run.top_k);
  for (const Record& rec : run.records) {
    const std::string& at = rec.origin.empty() ? who : rec.origin;
    RM_CHECK_KIND(Data, static_cast<std::int64_t>(rec.layers.size()) == run.n_moe_layers,
                  fmt::format("{}: record has {} MoE layers, expected {}", at, rec.layers.size(),
                              run.n_moe_layers));
    for (std::size_t m = 0; m < rec.layers.size(); ++m) {
      const auto& ex = rec.layers[m].experts;
      RM_CHECK_KIND(Data, ex.size() == want,
                    fmt::format("{}: layer{} has {} expert ids, expected probe size {} x top_k {} "
                                "(every record must route the same probe tokens with the same "
                                "top_k)",
                                at, m, ex.size(), run.n_probe, run.top_k));
      for (std::size_t i = 0; i < ex.size(); ++i) {
        RM_CHECK_KIND(Data, ex[i] >= 0 && ex[i] < run.n_experts,
                      fmt::format("{}: layer{} token {} chooses expert {}, outside [0, {})", at, m,
                                  i / static_cast<std::size_t>(run.top_k), ex[i], run.n_experts));
      }
    }
  }
}

double top1_flip_rate(const std::vector<std::int32_t>& a, const std::vector<std::int32_t>& b,
                      std::int64_t top_k) {
  RM_CHECK(a.size() == b.size() && top_k > 0 && a.size() % top_k == 0,
           "records of different sizes");
  const std::size_t k = static_cast<std::size_t>(top_k);
  const std::size_t n = a.size() / k;
  if (n == 0) return 0;
  std::size_t flips = 0;
  for (std::size_t i = 0; i < n; ++i) flips += a[i * k] != b[i * k] ? 1 : 0;
  return static_cast<double>(flips) / static_cast<double>(n);
}

double topk_change_rate(const std::vector<std::int32_t>& a, const std::vector<std::int32_t>& b,
                        std::int64_t top_k) {
  RM_CHECK(a.size() == b.size() && top_k > 0 && a.size() % top_k == 0,
           "records of different sizes");
  const std::size_t k = static_cast<std::size_t>(top_k);
  const std::size_t n = a.size() / k;
  if (n == 0) return 0;
  std::size_t changed = 0;
  std::vector<std::int32_t> sa(k), sb(k);
  for (std::size_t i = 0; i < n; ++i) {
    std::copy(a.begin() + i * k, a.begin() + (i + 1) * k, sa.begin());
    std::copy(b.begin() + i * k, b.begin() + (i + 1) * k, sb.begin());
    std::sort(sa.begin(), sa.end());
    std::sort(sb.begin(), sb.end());
    changed += sa != sb ? 1 : 0;
  }
  return static_cast<double>(changed) / static_cast<double>(n);
}

std::vector<std::int64_t> expert_counts(const std::vector<std::int32_t>& experts,
                                        std::int64_t top_k, std::int64_t n_experts) {
  RM_CHECK(top_k > 0 && n_experts > 0 && experts.size() % top_k == 0, "bad load histogram input");
  std::vector<std::int64_t> counts(static_cast<std::size_t>(n_experts), 0);
  for (std::size_t i = 0; i < experts.size(); i += static_cast<std::size_t>(top_k)) {
    const std::int32_t e = experts[i];
    RM_CHECK(e >= 0 && e < n_experts, fmt::format("expert {} outside [0, {})", e, n_experts));
    ++counts[static_cast<std::size_t>(e)];
  }
  return counts;
}

double entropy_nats(const std::vector<std::int64_t>& counts) {
  std::int64_t total = 0;
  for (std::int64_t c : counts) total += c;
  if (total <= 0) return 0;
  double h = 0;
  for (std::int64_t c : counts) {
    if (c <= 0) continue;
    const double p = static_cast<double>(c) / static_cast<double>(total);
    h -= p * std::log(p);
  }
  return h;
}

double top1_agreement(const std::vector<std::int32_t>& layer_a,
                      const std::vector<std::int32_t>& layer_b, std::int64_t top_k) {
  return 1.0 - top1_flip_rate(layer_a, layer_b, top_k);
}

LastChange last_change_epochs(const Run& run, std::int64_t layer) {
  RM_CHECK(run.records.size() >= 2, "last-change epochs need at least 2 records");
  LastChange lc;
  lc.layer = layer;
  std::set<std::int64_t> epochs{0};
  for (std::size_t r = 1; r < run.records.size(); ++r) epochs.insert(run.records[r].epoch);
  std::map<std::int64_t, std::int64_t> hist;
  for (std::int64_t e : epochs) hist[e] = 0;
  const auto k = static_cast<std::size_t>(run.top_k);
  const auto m = static_cast<std::size_t>(layer);
  double sum = 0, sum_step = 0;
  for (std::size_t i = 0; i < static_cast<std::size_t>(run.n_probe); ++i) {
    std::int64_t last = 0, last_step = 0;
    bool changed = false;
    for (std::size_t r = 1; r < run.records.size(); ++r) {
      if (run.records[r].layers[m].experts[i * k] != run.records[r - 1].layers[m].experts[i * k]) {
        last = run.records[r].epoch;
        last_step = run.records[r].step;
        changed = true;
      }
    }
    lc.never_changed += changed ? 0 : 1;
    ++hist[last];
    sum += static_cast<double>(last);
    sum_step += static_cast<double>(last_step);
  }
  const auto p = static_cast<double>(run.n_probe);
  for (const auto& [epoch, tokens] : hist) {
    lc.bins.push_back({epoch, tokens, static_cast<double>(tokens) / p});
  }
  lc.mean_epoch = sum / p;
  lc.mean_step = sum_step / p;
  return lc;
}

Load expert_load(const Run& run, std::size_t record, std::int64_t layer) {
  const Record& rec = run.records.at(record);
  Load l;
  l.layer = layer;
  l.step = rec.step;
  l.epoch = rec.epoch;
  l.counts = expert_counts(rec.layers.at(static_cast<std::size_t>(layer)).experts, run.top_k,
                           run.n_experts);
  for (std::int64_t c : l.counts) {
    l.shares.push_back(static_cast<double>(c) / static_cast<double>(run.n_probe));
  }
  l.entropy = entropy_nats(l.counts);
  l.entropy_norm =
      run.n_experts > 1 ? l.entropy / std::log(static_cast<double>(run.n_experts)) : 1.0;
  return l;
}

RunMetrics analyse(const Run& run) {
  RunMetrics out;
  out.run = &run;
  const std::size_t n_rec = run.records.size();
  const std::int64_t n_layers = run.n_moe_layers;
  if (n_rec == 0) {
    out.notes.push_back("no routing records: nothing to analyse");
    return out;
  }
  if (n_rec < 2) {
    out.notes.push_back(
        "only 1 record: no pairs of consecutive records, so no flip rates and no last-change "
        "epochs");
  }
  for (std::size_t r = 1; r < n_rec; ++r) {
    const Record& a = run.records[r - 1];
    const Record& b = run.records[r];
    for (std::int64_t m = 0; m < n_layers; ++m) {
      const auto& ea = a.layers[static_cast<std::size_t>(m)].experts;
      const auto& eb = b.layers[static_cast<std::size_t>(m)].experts;
      PairFlip p;
      p.layer = m;
      p.from_record = r - 1;
      p.to_record = r;
      p.from_step = a.step;
      p.to_step = b.step;
      p.from_epoch = a.epoch;
      p.to_epoch = b.epoch;
      p.top1_flip_rate = top1_flip_rate(ea, eb, run.top_k);
      p.topk_change_rate = topk_change_rate(ea, eb, run.top_k);
      out.flips.push_back(p);
    }
  }
  if (n_rec >= 2 && run.records.front().epoch == run.records.back().epoch) {
    out.notes.push_back(fmt::format(
        "all records are in epoch {}: the last-change epochs cannot tell tokens apart (see the "
        "mean last-change step)",
        run.records.front().epoch));
  }
  if (n_rec >= 2) {
    for (std::int64_t m = 0; m < n_layers; ++m)
      out.last_change.push_back(last_change_epochs(run, m));
  }
  for (std::int64_t m = 0; m < n_layers; ++m) out.load.push_back(expert_load(run, n_rec - 1, m));
  for (std::size_t r = 0; r < n_rec; ++r) {
    for (std::int64_t m = 0; m < n_layers; ++m) {
      const Load l = expert_load(run, r, m);
      out.load_entropy.push_back({m, r, l.step, l.epoch, l.entropy, l.entropy_norm});
    }
  }
  for (std::int64_t m = 0; m + 1 < n_layers; ++m) {
    Agreement ag;
    ag.layer_a = m;
    ag.layer_b = m + 1;
    double sum = 0;
    for (const Record& rec : run.records) {
      sum += top1_agreement(rec.layers[static_cast<std::size_t>(m)].experts,
                            rec.layers[static_cast<std::size_t>(m + 1)].experts, run.top_k);
    }
    ag.last = top1_agreement(run.records.back().layers[static_cast<std::size_t>(m)].experts,
                             run.records.back().layers[static_cast<std::size_t>(m + 1)].experts,
                             run.top_k);
    ag.mean = sum / static_cast<double>(n_rec);
    out.agreement.push_back(ag);
  }
  if (n_layers < 2) out.notes.push_back("one MoE layer: no cross-layer agreement");
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading files

Run read_trace(const std::string& path) {
  return runfile::reading(path, [&]() {
    const h5::File f = open_checked(path);
    runfile::check_header(f, path, {runfile::Kind::Trace});
    const runfile::TraceInfo info = runfile::read_trace_info(f);
    Run run;
    run.sources.push_back(path);
    run.n_moe_layers = info.n_moe_layers;
    run.top_k = info.top_k;
    run.n_experts = info.n_experts;
    run.n_probe = info.probe_tokens;
    run.routers = info.routers;
    runfile::RoutingExpect expect;
    expect.layers = run.n_moe_layers;
    expect.tokens = run.n_probe;
    expect.top_k = run.top_k;
    expect.values = false;  // the metrics need the chosen experts only
    run.records = runfile::read_trace_records(f, expect);
    // The router each layer actually used (ac on the first MoE layer reports topk), when the
    // records say so; else the `routers` attribute (the configured ones).
    if (!run.records.empty() &&
        std::none_of(run.records.back().layers.begin(), run.records.back().layers.end(),
                     [](const LayerRouting& l) { return l.router.empty(); })) {
      run.routers.clear();
      for (const LayerRouting& l : run.records.back().layers) run.routers.push_back(l.router);
    }
    validate(run);
    return run;
  });
}

Run read_checkpoints(const std::vector<std::string>& paths) {
  RM_CHECK(!paths.empty(), "no checkpoint files");
  Run run;
  for (const std::string& path : paths) {
    runfile::reading(path, [&]() {
      const h5::File f = open_checked(path);
      runfile::check_header(f, path, {runfile::Kind::Checkpoint});
      RM_CHECK_KIND(Data, f.exists(runfile::kRoutingGroup),
                    fmt::format("{}: checkpoint without a /routing record", path));
      // The first checkpoint fixes the layer count, P and k; the others must agree.
      runfile::RoutingExpect expect;
      expect.tokens = run.n_probe;
      expect.top_k = run.top_k;
      expect.values = false;
      runfile::RoutingRecord rec = runfile::read_routing(f, runfile::kRoutingGroup, expect);
      const auto n_layers = static_cast<std::int64_t>(rec.layers.size());
      if (run.records.empty()) {
        RM_CHECK_KIND(Data, n_layers >= 1, fmt::format("{}:/routing: no layer<m> groups", path));
        run.n_moe_layers = n_layers;
        run.n_probe = rec.tokens;
        run.top_k = rec.top_k;
      }
      RM_CHECK_KIND(Data, n_layers == run.n_moe_layers,
                    fmt::format("{}:/routing has {} MoE layers, but {} has {}", path, n_layers,
                                run.sources.front(), run.n_moe_layers));
      run.records.push_back(std::move(rec));
      run.sources.push_back(path);
      const std::int64_t e =
          f.has_attr("/", "config") ? n_experts_from_config(f.attr_string("/", "config")) : 0;
      if (e > 0) {
        RM_CHECK_KIND(Data, run.n_experts == 0 || run.n_experts == e,
                      fmt::format("{}: n_experts {} differs from {} in {}", path, e, run.n_experts,
                                  run.sources.front()));
        run.n_experts = e;
      }
    });
  }
  if (run.n_experts == 0) {
    // No configuration to read it from: the largest expert id seen bounds it from below.
    std::int32_t max_id = 0;
    for (const Record& rec : run.records) {
      for (const LayerRouting& l : rec.layers) {
        for (std::int32_t x : l.experts) max_id = std::max(max_id, x);
      }
    }
    run.n_experts = std::max<std::int64_t>(max_id + 1, run.top_k);
  }
  std::stable_sort(run.records.begin(), run.records.end(),
                   [](const Record& a, const Record& b) { return a.step < b.step; });
  for (const LayerRouting& l : run.records.back().layers) run.routers.push_back(l.router);
  if (std::all_of(run.routers.begin(), run.routers.end(),
                  [](const std::string& r) { return r.empty(); })) {
    run.routers.clear();
  }
  validate(run);
  return run;
}

namespace {

// The number after `"key": ` in a flat JSON line; false when absent or not a number.
bool json_number(const std::string& line, const std::string& key, double* out) {
  const std::string needle = "\"" + key + "\":";
  const std::size_t at = line.find(needle);
  if (at == std::string::npos) return false;
  const char* begin = line.c_str() + at + needle.size();
  char* end = nullptr;
  const double v = std::strtod(begin, &end);
  if (end == begin || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

}  // namespace

void read_metrics(const std::string& path, std::vector<LossPoint>& train,
                  std::vector<LossPoint>& val) {
  std::ifstream in(path);
  RM_CHECK_KIND(Io, in.good(), fmt::format("{}: cannot read", path));
  std::string line;
  while (std::getline(in, line)) {
    double step = 0, loss = 0;
    if (!json_number(line, "step", &step)) continue;
    if (json_number(line, "val_loss", &loss)) {
      val.push_back({static_cast<std::int64_t>(step), loss});
    } else if (json_number(line, "loss", &loss)) {
      train.push_back({static_cast<std::int64_t>(step), loss});
    }
  }
}

std::vector<Run> load_runs(const std::vector<std::string>& inputs,
                           const std::vector<std::string>& labels) {
  struct Pending {
    bool trace = false;
    std::vector<std::string> paths;
    std::string label;
    std::string dir;  // the run directory
  };
  std::vector<Pending> pending;
  std::map<std::string, std::size_t> ckpt_run;  // run directory -> index into pending
  auto add_checkpoint = [&](const std::string& path) {
    fs::path dir = fs::absolute(path).lexically_normal().parent_path();
    if (dir.filename() == "checkpoints") dir = dir.parent_path();
    const std::string key = dir.string();
    auto it = ckpt_run.find(key);
    if (it == ckpt_run.end()) {
      it = ckpt_run.emplace(key, pending.size()).first;
      pending.push_back({false, {}, run_dir_name(dir), dir.string()});
    }
    pending[it->second].paths.push_back(path);
  };
  for (const std::string& input : inputs) {
    std::error_code ec;
    RM_CHECK_KIND(Io, fs::exists(input, ec), fmt::format("{}: no such file or directory", input));
    if (fs::is_directory(input, ec)) {
      const fs::path trace = fs::path(input) / "trace.h5";
      if (fs::exists(trace, ec)) {
        pending.push_back({true, {trace.string()}, run_dir_name(input), input});
        continue;
      }
      std::vector<std::string> ckpts;
      const fs::path dir = fs::path(input) / "checkpoints";
      if (fs::is_directory(dir, ec)) {
        for (const auto& entry : fs::directory_iterator(dir)) {
          const std::string name = entry.path().filename().string();
          if (name.rfind("ckpt_", 0) == 0 && entry.path().extension() == ".h5") {
            ckpts.push_back(entry.path().string());
          }
        }
      }
      RM_CHECK_KIND(
          Io, !ckpts.empty(),
          fmt::format("{}: run directory without trace.h5 or checkpoints/ckpt_*.h5", input));
      std::sort(ckpts.begin(), ckpts.end());
      for (const std::string& c : ckpts) add_checkpoint(c);
      continue;
    }
    const runfile::Header header = runfile::reading(input, [&]() {
      return runfile::check_header(open_checked(input), input,
                                   {runfile::Kind::Trace, runfile::Kind::Checkpoint});
    });
    if (header.kind == runfile::Kind::Trace) {
      const fs::path p(input);
      const std::string label = p.filename() == "trace.h5"
                                    ? run_dir_name(fs::absolute(p).parent_path())
                                    : p.stem().string();
      pending.push_back({true, {input}, label, fs::absolute(p).parent_path().string()});
    } else {
      add_checkpoint(input);
    }
  }
  RM_CHECK_KIND(
      Config, labels.empty() || labels.size() == pending.size(),
      fmt::format("--label gives {} label(s) for {} run(s)", labels.size(), pending.size()));
  std::vector<Run> runs;
  std::map<std::string, int> seen;
  for (std::size_t i = 0; i < pending.size(); ++i) {
    Run run = pending[i].trace ? read_trace(pending[i].paths.front())
                               : read_checkpoints(pending[i].paths);
    run.label = labels.empty() ? pending[i].label : labels[i];
    run.run_dir = pending[i].dir;
    const fs::path metrics = fs::path(run.run_dir) / "metrics.jsonl";
    std::error_code ec;
    if (!run.run_dir.empty() && fs::is_regular_file(metrics, ec)) {
      read_metrics(metrics.string(), run.train_loss, run.val_loss);
    }
    const int n = ++seen[run.label];
    if (n > 1) run.label += fmt::format("#{}", n);
    runs.push_back(std::move(run));
  }
  return runs;
}

// ---------------------------------------------------------------------------------------------
// Reports

namespace {

// The graph diagnostics of the records that have them (similarity/attention layers of newer
// traces): one row per record, per layer "self-weight / entropy / neighbours"; "" without any.
std::string graph_table(const Run& run) {
  const auto has = [](const runfile::RoutingRecord& r) {
    return std::any_of(r.layers.begin(), r.layers.end(),
                       [](const runfile::LayerRouting& l) { return !l.graph.empty(); });
  };
  if (std::none_of(run.records.begin(), run.records.end(), has)) return "";
  std::string out =
      "\n   graph mixing matrix per record (mean self-weight / row entropy nats / effective "
      "neighbours exp(H) / H over log of the tokens a row may use)\n";
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> head{"step"};
  for (std::size_t m = 0; m < run.records.front().layers.size(); ++m)
    head.push_back(fmt::format("layer {}", m));
  rows.push_back(head);
  for (const runfile::RoutingRecord& r : run.records) {
    std::vector<std::string> row{fmt::format("{}", r.step)};
    for (const runfile::LayerRouting& l : r.layers) {
      row.push_back(l.graph.size() == runfile::kGraphStats
                        ? fmt::format("{} / {} / {:.2f} / {}", f4(l.graph[0]), f4(l.graph[1]),
                                      l.graph[2], f4(l.graph[3]))
                        : std::string("-"));
    }
    rows.push_back(row);
  }
  return out + render(rows, "   ");
}

}  // namespace

std::string format_table(const std::vector<RunMetrics>& metrics) {
  std::string out;
  for (const RunMetrics& rm : metrics) {
    const Run& run = *rm.run;
    std::string sources;
    for (std::size_t i = 0; i < run.sources.size(); ++i) {
      if (i == 3 && run.sources.size() > 4) {
        sources += fmt::format(", ... ({} files)", run.sources.size());
        break;
      }
      sources += (i ? ", " : "") + run.sources[i];
    }
    out += fmt::format("== run {}: {}\n", run.label, sources);
    const std::string routers = runfile::join_routers(run.routers);
    out += fmt::format("   {} record(s)", run.records.size());
    if (!run.records.empty()) {
      out +=
          fmt::format(" (steps {}..{}, epochs {}..{})", run.records.front().step,
                      run.records.back().step, run.records.front().epoch, run.records.back().epoch);
    }
    out += fmt::format(", {} probe tokens, top-k {}, {} experts, {} MoE layer(s){}\n", run.n_probe,
                       run.top_k, run.n_experts, run.n_moe_layers,
                       routers.empty() ? "" : fmt::format(" (routers {})", routers));
    for (const std::string& note : rm.notes) out += fmt::format("   note: {}\n", note);
    const auto n_layers = static_cast<std::size_t>(run.n_moe_layers);

    if (!rm.flips.empty()) {
      out +=
          "\n   routing fluctuation between consecutive records (top-1 flip rate / top-k set "
          "change rate)\n";
      std::vector<std::vector<std::string>> rows;
      std::vector<std::string> head{"steps", "epochs"};
      for (std::size_t m = 0; m < n_layers; ++m) head.push_back(fmt::format("layer {}", m));
      rows.push_back(head);
      std::vector<std::vector<double>> flip_by_layer(n_layers), set_by_layer(n_layers);
      for (std::size_t i = 0; i < rm.flips.size(); i += n_layers) {
        const PairFlip& p = rm.flips[i];
        std::vector<std::string> row{fmt::format("{} -> {}", p.from_step, p.to_step),
                                     fmt::format("{} -> {}", p.from_epoch, p.to_epoch)};
        for (std::size_t m = 0; m < n_layers; ++m) {
          const PairFlip& q = rm.flips[i + m];
          row.push_back(fmt::format("{} / {}", f4(q.top1_flip_rate), f4(q.topk_change_rate)));
          flip_by_layer[m].push_back(q.top1_flip_rate);
          set_by_layer[m].push_back(q.topk_change_rate);
        }
        rows.push_back(row);
      }
      std::vector<std::string> mean_row{"mean", ""};
      for (std::size_t m = 0; m < n_layers; ++m) {
        mean_row.push_back(
            fmt::format("{} / {}", f4(mean_of(flip_by_layer[m])), f4(mean_of(set_by_layer[m]))));
      }
      rows.push_back(mean_row);
      out += render(rows, "   ");
    } else if (!run.records.empty()) {
      out += "\n   routing fluctuation: no pairs of consecutive records\n";
    }
    out += graph_table(run);

    if (!rm.last_change.empty()) {
      out +=
          "\n   last-change epoch of each token's top-1 expert (share of probe tokens; epoch 0 "
          "includes never changed)\n";
      std::vector<std::vector<std::string>> rows;
      std::vector<std::string> head{"epoch"};
      for (std::size_t m = 0; m < n_layers; ++m) head.push_back(fmt::format("layer {}", m));
      rows.push_back(head);
      for (std::size_t b = 0; b < rm.last_change.front().bins.size(); ++b) {
        std::vector<std::string> row{fmt::format("{}", rm.last_change.front().bins[b].epoch)};
        for (const LastChange& lc : rm.last_change) row.push_back(f4(lc.bins[b].share));
        rows.push_back(row);
      }
      std::vector<std::string> never{"never changed"}, mean{"mean epoch"}, step{"mean step"};
      for (const LastChange& lc : rm.last_change) {
        step.push_back(fmt::format("{:.1f}", lc.mean_step));
        never.push_back(
            f4(static_cast<double>(lc.never_changed) / static_cast<double>(run.n_probe)));
        mean.push_back(fmt::format("{:.2f}", lc.mean_epoch));
      }
      rows.push_back(never);
      rows.push_back(mean);
      rows.push_back(step);
      out += render(rows, "   ");
    }

    if (!rm.load.empty()) {
      out += fmt::format(
          "\n   expert load at the last record (step {}, epoch {}): share of first choices\n",
          rm.load.front().step, rm.load.front().epoch);
      std::vector<std::vector<std::string>> rows;
      std::vector<std::string> head{"expert"};
      for (std::size_t m = 0; m < n_layers; ++m) head.push_back(fmt::format("layer {}", m));
      rows.push_back(head);
      for (std::size_t e = 0; e < static_cast<std::size_t>(run.n_experts); ++e) {
        std::vector<std::string> row{fmt::format("{}", e)};
        for (const Load& l : rm.load) row.push_back(f4(l.shares[e]));
        rows.push_back(row);
      }
      std::vector<std::string> ent{"entropy (nats)"}, norm{"entropy / log E"};
      for (const Load& l : rm.load) {
        ent.push_back(f4(l.entropy));
        norm.push_back(f4(l.entropy_norm));
      }
      rows.push_back(ent);
      rows.push_back(norm);
      out += render(rows, "   ");
    }

    if (!rm.agreement.empty()) {
      out += "\n   cross-layer agreement (share of tokens with the same top-1 expert index)\n";
      std::vector<std::vector<std::string>> rows{{"layers", "last record", "mean over records"}};
      for (const Agreement& a : rm.agreement) {
        rows.push_back({fmt::format("{}-{}", a.layer_a, a.layer_b), f4(a.last), f4(a.mean)});
      }
      out += render(rows, "   ");
    }
    out += "\n";
  }

  if (metrics.size() > 1) {
    out += "== comparison (means over layers)\n";
    std::vector<std::vector<std::string>> rows{{"run", "records", "top-1 flip", "top-k change",
                                                "last-pair flip", "mean last-change epoch",
                                                "load entropy/log E", "agreement (last)"}};
    for (const RunMetrics& rm : metrics) {
      std::vector<double> flip, set, last_flip, lce, ent, agr;
      for (const PairFlip& p : rm.flips) {
        flip.push_back(p.top1_flip_rate);
        set.push_back(p.topk_change_rate);
        if (p.to_record + 1 == rm.run->records.size()) last_flip.push_back(p.top1_flip_rate);
      }
      for (const LastChange& l : rm.last_change) lce.push_back(l.mean_epoch);
      for (const Load& l : rm.load) ent.push_back(l.entropy_norm);
      for (const Agreement& a : rm.agreement) agr.push_back(a.last);
      auto cell = [](const std::vector<double>& v, bool two) {
        return v.empty() ? std::string("-")
               : two     ? fmt::format("{:.2f}", mean_of(v))
                         : f4(mean_of(v));
      };
      rows.push_back({rm.run->label, fmt::format("{}", rm.run->records.size()), cell(flip, false),
                      cell(set, false), cell(last_flip, false), cell(lce, true), cell(ent, false),
                      cell(agr, false)});
    }
    out += render(rows, "   ");
  }
  return out;
}

std::string to_json(const std::vector<RunMetrics>& metrics) {
  std::string out = "{\"format\": \"routemoe-trace-analysis\", \"version\": 1, \"runs\": [";
  for (std::size_t ri = 0; ri < metrics.size(); ++ri) {
    const RunMetrics& rm = metrics[ri];
    const Run& run = *rm.run;
    out += ri ? ",\n  {" : "\n  {";
    out += fmt::format("\"label\": {}, \"sources\": [", json_quote(run.label));
    for (std::size_t i = 0; i < run.sources.size(); ++i)
      out += (i ? ", " : "") + json_quote(run.sources[i]);
    out += fmt::format(
        "], \"n_probe\": {}, \"top_k\": {}, \"n_experts\": {}, \"n_moe_layers\": {}, "
        "\"routers\": [",
        run.n_probe, run.top_k, run.n_experts, run.n_moe_layers);
    for (std::size_t i = 0; i < run.routers.size(); ++i)
      out += (i ? ", " : "") + json_quote(run.routers[i]);
    out += "],\n   \"records\": [";
    for (std::size_t i = 0; i < run.records.size(); ++i) {
      const Record& r = run.records[i];
      out += fmt::format("{}{{\"index\": {}, \"step\": {}, \"epoch\": {}, \"reason\": {}}}",
                         i ? ", " : "", i, r.step, r.epoch, json_quote(r.reason));
    }
    out += "],\n   \"flips\": [";
    for (std::size_t i = 0; i < rm.flips.size(); ++i) {
      const PairFlip& p = rm.flips[i];
      out += fmt::format(
          "{}{{\"layer\": {}, \"from_record\": {}, \"to_record\": {}, \"from_step\": {}, "
          "\"to_step\": {}, \"from_epoch\": {}, \"to_epoch\": {}, \"top1_flip_rate\": {}, "
          "\"topk_change_rate\": {}}}",
          i ? ",\n     " : "\n     ", p.layer, p.from_record, p.to_record, p.from_step, p.to_step,
          p.from_epoch, p.to_epoch, num(p.top1_flip_rate), num(p.topk_change_rate));
    }
    out += "],\n   \"last_change\": [";
    for (std::size_t i = 0; i < rm.last_change.size(); ++i) {
      const LastChange& lc = rm.last_change[i];
      out += fmt::format(
          "{}{{\"layer\": {}, \"never_changed\": {}, \"mean_epoch\": {}, \"mean_step\": {}, "
          "\"bins\": [",
          i ? ",\n     " : "\n     ", lc.layer, lc.never_changed, num(lc.mean_epoch),
          num(lc.mean_step));
      for (std::size_t b = 0; b < lc.bins.size(); ++b) {
        out += fmt::format("{}{{\"epoch\": {}, \"tokens\": {}, \"share\": {}}}", b ? ", " : "",
                           lc.bins[b].epoch, lc.bins[b].tokens, num(lc.bins[b].share));
      }
      out += "]}";
    }
    out += "],\n   \"load\": [";
    for (std::size_t i = 0; i < rm.load.size(); ++i) {
      const Load& l = rm.load[i];
      out += fmt::format(
          "{}{{\"layer\": {}, \"step\": {}, \"epoch\": {}, \"entropy\": {}, "
          "\"entropy_norm\": {}, \"counts\": [",
          i ? ",\n     " : "\n     ", l.layer, l.step, l.epoch, num(l.entropy),
          num(l.entropy_norm));
      for (std::size_t e = 0; e < l.counts.size(); ++e)
        out += fmt::format("{}{}", e ? ", " : "", l.counts[e]);
      out += "], \"shares\": [";
      for (std::size_t e = 0; e < l.shares.size(); ++e)
        out += fmt::format("{}{}", e ? ", " : "", num(l.shares[e]));
      out += "]}";
    }
    out += "],\n   \"load_entropy\": [";
    for (std::size_t i = 0; i < rm.load_entropy.size(); ++i) {
      const EntropyPoint& e = rm.load_entropy[i];
      out += fmt::format(
          "{}{{\"layer\": {}, \"record\": {}, \"step\": {}, \"epoch\": {}, \"entropy\": {}, "
          "\"entropy_norm\": {}}}",
          i ? ", " : "", e.layer, e.record, e.step, e.epoch, num(e.entropy), num(e.entropy_norm));
    }
    out += "],\n   \"agreement\": [";
    for (std::size_t i = 0; i < rm.agreement.size(); ++i) {
      const Agreement& a = rm.agreement[i];
      out += fmt::format("{}{{\"layer_a\": {}, \"layer_b\": {}, \"last\": {}, \"mean\": {}}}",
                         i ? ", " : "", a.layer_a, a.layer_b, num(a.last), num(a.mean));
    }
    out += "],\n   \"notes\": [";
    for (std::size_t i = 0; i < rm.notes.size(); ++i)
      out += (i ? ", " : "") + json_quote(rm.notes[i]);
    out += "]}";
  }
  out += "\n]}\n";
  return out;
}

std::string flips_csv(const std::vector<RunMetrics>& metrics) {
  std::string out =
      "run,layer,from_step,to_step,from_epoch,to_epoch,top1_flip_rate,topk_change_rate\n";
  for (const RunMetrics& rm : metrics) {
    for (const PairFlip& p : rm.flips) {
      out += fmt::format("{},{},{},{},{},{},{},{}\n", csv_str(rm.run->label), p.layer, p.from_step,
                         p.to_step, p.from_epoch, p.to_epoch, num(p.top1_flip_rate),
                         num(p.topk_change_rate));
    }
  }
  return out;
}

std::string load_csv(const std::vector<RunMetrics>& metrics) {
  std::string out = "run,layer,step,epoch,expert,tokens,share,entropy_nats,entropy_norm\n";
  for (const RunMetrics& rm : metrics) {
    for (const Load& l : rm.load) {
      for (std::size_t e = 0; e < l.counts.size(); ++e) {
        out += fmt::format("{},{},{},{},{},{},{},{},{}\n", csv_str(rm.run->label), l.layer, l.step,
                           l.epoch, e, l.counts[e], num(l.shares[e]), num(l.entropy),
                           num(l.entropy_norm));
      }
    }
  }
  return out;
}

std::string last_change_csv(const std::vector<RunMetrics>& metrics) {
  std::string out = "run,layer,epoch,tokens,share,never_changed_tokens\n";
  for (const RunMetrics& rm : metrics) {
    for (const LastChange& lc : rm.last_change) {
      for (const LastChangeBin& b : lc.bins) {
        out += fmt::format("{},{},{},{},{},{}\n", csv_str(rm.run->label), lc.layer, b.epoch,
                           b.tokens, num(b.share), b.epoch == 0 ? lc.never_changed : 0);
      }
    }
  }
  return out;
}

std::string agreement_csv(const std::vector<RunMetrics>& metrics) {
  std::string out = "run,layer_a,layer_b,last_step,agreement_last,agreement_mean\n";
  for (const RunMetrics& rm : metrics) {
    for (const Agreement& a : rm.agreement) {
      out += fmt::format("{},{},{},{},{},{}\n", csv_str(rm.run->label), a.layer_a, a.layer_b,
                         rm.run->records.back().step, num(a.last), num(a.mean));
    }
  }
  return out;
}

std::string load_entropy_csv(const std::vector<RunMetrics>& metrics) {
  std::string out = "run,layer,record,step,epoch,entropy_nats,entropy_norm\n";
  for (const RunMetrics& rm : metrics) {
    for (const EntropyPoint& e : rm.load_entropy) {
      out += fmt::format("{},{},{},{},{},{},{}\n", csv_str(rm.run->label), e.layer, e.record,
                         e.step, e.epoch, num(e.entropy), num(e.entropy_norm));
    }
  }
  return out;
}

void write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    RM_CHECK_KIND(Io, out.good(), fmt::format("{}: cannot open for writing", tmp));
    out << text;
    out.flush();
    RM_CHECK_KIND(Io, out.good(), fmt::format("{}: write failed", tmp));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    RM_FAIL(Io, fmt::format("{}: cannot rename {} into place", path, tmp));
  }
}

std::vector<std::string> write_csv_dir(const std::string& dir,
                                       const std::vector<RunMetrics>& metrics) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  RM_CHECK_KIND(Io, !ec && fs::is_directory(dir),
                fmt::format("{}: cannot create directory: {}", dir, ec.message()));
  const std::vector<std::pair<std::string, std::string>> files{
      {"flips.csv", flips_csv(metrics)},
      {"load.csv", load_csv(metrics)},
      {"last_change.csv", last_change_csv(metrics)},
      {"agreement.csv", agreement_csv(metrics)},
      {"load_entropy.csv", load_entropy_csv(metrics)}};
  std::vector<std::string> written;
  for (const auto& [name, text] : files) {
    const std::string path = (fs::path(dir) / name).string();
    write_text_file(path, text);
    written.push_back(path);
  }
  return written;
}

}  // namespace routemoe::trace
