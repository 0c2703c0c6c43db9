// `routemoe inspect FILE [--json]`: what a checkpoint or a trace file holds
// (docs/checkpoint-format.md).
//
// Checkpoint: format and version, step/epoch/data seed, the layout it was written with, the
// stored configuration, every tensor (shape, dtype, elements, min/max/mean), the optimiser state
// and the routing record (per MoE layer: router, P, k, load of the first choices). The file is
// also loaded exactly as `routemoe train --resume` loads it (a model built from the stored
// configuration, load_checkpoint), so inspect exits 0 only for a checkpoint that resumes.
// Trace: the model facts and the list of records (index, step, epoch, reason).
//
// Any problem is one line on stderr, "routemoe inspect: <file>: <cause>", and exit code 1.
// Single process, no MPI. --json prints the same facts as one JSON document instead of the
// text (docs/architecture.md, "Conventions").

#include <fmt/format.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "framework/cli/commands.h"
#include "framework/config.h"
#include "framework/error.h"
#include "framework/h5.h"
#include "framework/json.h"
#include "framework/optim.h"
#include "framework/runfile.h"
#include "framework/train/checkpoint.h"
#include "layers/model.h"

namespace routemoe::cli {

namespace {

namespace fs = std::filesystem;

// A number for JSON (non-finite values become null).
std::string jnum(double v) {
  return std::isfinite(v) ? fmt::format("{:.9g}", v) : "null";
}

struct TensorInfo {
  std::string name;
  Shape shape;
  std::string dtype;
  std::int64_t numel = 0;
  double min = 0, max = 0, mean = 0;
  std::int64_t nonfinite = 0;
};

// "float32", "int32", ... of dataset `name`.
std::string dtype_of(const h5::File& f, const std::string& name) {
  h5::Handle ds(RM_HDF5_CHECK(H5Dopen2(f.id(), name.c_str(), H5P_DEFAULT)));
  h5::Handle type(RM_HDF5_CHECK(H5Dget_type(ds.id())));
  const H5T_class_t cls = H5Tget_class(type.id());
  const std::size_t size = H5Tget_size(type.id());
  if (cls == H5T_FLOAT) return fmt::format("float{}", size * 8);
  if (cls == H5T_INTEGER) {
    return fmt::format("{}int{}", H5Tget_sign(type.id()) == H5T_SGN_NONE ? "u" : "", size * 8);
  }
  return fmt::format("class{}:{}B", static_cast<int>(cls), size);
}

// Reads the whole dataset (which verifies its Fletcher32 checksums) and summarises it.
TensorInfo tensor_info(const h5::File& f, const std::string& name) {
  TensorInfo t;
  t.name = name;
  t.dtype = dtype_of(f, name);
  std::vector<double> values;
  if (t.dtype.rfind("float", 0) == 0) {
    for (float v : f.read_f32(name, &t.shape)) values.push_back(v);
  } else {
    for (std::int64_t v : f.read_i64(name, &t.shape)) values.push_back(static_cast<double>(v));
  }
  t.numel = static_cast<std::int64_t>(values.size());
  double sum = 0;
  t.min = std::numeric_limits<double>::infinity();
  t.max = -t.min;
  std::int64_t finite = 0;
  for (double v : values) {
    if (!std::isfinite(v)) {
      ++t.nonfinite;
      continue;
    }
    t.min = std::min(t.min, v);
    t.max = std::max(t.max, v);
    sum += v;
    ++finite;
  }
  if (finite == 0) t.min = t.max = std::numeric_limits<double>::quiet_NaN();
  t.mean =
      finite > 0 ? sum / static_cast<double>(finite) : std::numeric_limits<double>::quiet_NaN();
  return t;
}

// The stored configuration (TOML) as a RunConfig, parsed like `routemoe train --config`.
RunConfig parse_stored_config(const std::string& path, const std::string& toml) {
  std::string tmpl = (fs::temp_directory_path() / "routemoe-inspect-XXXXXX.toml").string();
  const int fd = mkstemps(tmpl.data(), 5);
  RM_CHECK_KIND(Io, fd >= 0,
                fmt::format("{}: cannot create a temporary file for its config", path));
  close(fd);
  struct Remove {
    std::string p;
    ~Remove() {
      std::error_code ec;
      fs::remove(p, ec);
    }
  } cleanup{tmpl};
  {
    std::ofstream out(tmpl);
    out << toml;
    RM_CHECK_KIND(Io, out.good(), fmt::format("cannot write {}", tmpl));
  }
  RunConfig cfg;
  try {
    read_config_file(tmpl, cfg);
    cfg.model.validate();
  } catch (const Error& e) {
    std::string what = e.detail().empty() ? e.what() : e.detail();
    const std::size_t at = what.find(tmpl);
    if (at != std::string::npos) what.replace(at, tmpl.size(), "config");
    RM_FAIL(Data, fmt::format("{}: stored configuration is invalid: {}", path, what));
  }
  return cfg;
}

struct LayerSummary {
  std::string router;
  std::int64_t P = 0, k = 0;
  std::vector<std::int64_t> first_load;  // tokens whose first choice is expert e
  double gate_mean = 0, prob_mean = 0;
  bool ac_scale = false;
  Shape ac_shape;
  Shape ac_weights_shape;  // [G, E, d] per-expert AC weights (version-2 trace records)
};

// Summary of one layer of a routing record read by runfile::read_routing (which checked the
// shapes and that every expert id is below n_experts).
LayerSummary layer_summary(const runfile::RoutingRecord& rec, std::size_t m,
                           std::int64_t n_experts) {
  const runfile::LayerRouting& R = rec.layers[m];
  LayerSummary L;
  L.router = R.router;
  L.P = rec.tokens;
  L.k = rec.top_k;
  L.first_load.assign(static_cast<std::size_t>(n_experts), 0);
  for (std::int64_t i = 0; i < L.P; ++i) ++L.first_load[R.experts[i * L.k]];
  double gsum = 0, psum = 0;
  for (float v : R.gates) gsum += v;
  for (float v : R.probs) psum += v;
  const double n = std::max<double>(1, static_cast<double>(R.gates.size()));
  L.gate_mean = gsum / n;
  L.prob_mean = psum / n;
  L.ac_scale = !R.ac_scale.empty();
  if (L.ac_scale) L.ac_shape = {rec.tokens, rec.d_model};
  if (!R.ac_weights.empty()) L.ac_weights_shape = {rec.groups, rec.n_experts, rec.d_model};
  return L;
}

std::vector<LayerSummary> record_summary(const runfile::RoutingRecord& rec,
                                         std::int64_t n_experts) {
  std::vector<LayerSummary> out;
  for (std::size_t m = 0; m < rec.layers.size(); ++m)
    out.push_back(layer_summary(rec, m, n_experts));
  return out;
}

int inspect_checkpoint(const h5::File& f, bool json, std::int64_t version) {
  const std::string& path = f.path();
  const runfile::CheckpointInfo info = runfile::read_checkpoint_info(f);
  const std::string& config = info.config;
  const RunConfig cfg = parse_stored_config(path, config);
  // Load it as a resume would: every tensor's presence, shape, checksum and finiteness.
  Model model(cfg.model);
  AdamW opt(model.params(), cfg.optim);
  const CheckpointState st = load_checkpoint(path, model, opt);
  const std::int64_t world_size = info.world_size;
  const std::int64_t ep_size = info.ep_size;
  const std::int64_t steps_taken = f.attr_int("/optim", "steps_taken");

  std::vector<TensorInfo> params, moments;
  const auto& [g_params, g_m, g_v] = runfile::kTensorGroups;
  for (const std::string& n : f.list(g_params))
    params.push_back(tensor_info(f, fmt::format("{}/{}", g_params, n)));
  std::int64_t param_numel = 0;
  for (const TensorInfo& t : params) param_numel += t.numel;
  for (const char* g : {g_m, g_v}) {
    for (const std::string& n : f.list(g))
      moments.push_back(tensor_info(f, fmt::format("{}/{}", g, n)));
  }
  // Optimiser state: one m and one v per parameter.
  const std::size_t n_m = f.list(g_m).size(), n_v = f.list(g_v).size();
  const bool optim_complete = n_m == params.size() && n_v == params.size();

  std::vector<LayerSummary> layers;
  std::int64_t r_step = -1, r_epoch = -1;
  std::string r_reason;
  const bool has_routing = f.exists(runfile::kRoutingGroup);
  if (has_routing) {
    runfile::RoutingExpect expect;
    expect.n_experts = cfg.model.n_experts;
    const runfile::RoutingRecord rec = runfile::read_routing(f, runfile::kRoutingGroup, expect);
    r_step = rec.step;
    r_epoch = rec.epoch;
    r_reason = rec.reason;
    layers = record_summary(rec, cfg.model.n_experts);
  }
  const auto file_size = static_cast<double>(fs::file_size(path));

  if (json) {
    std::string o = "{";
    o += fmt::format("\"file\": {}, \"format\": \"routemoe-checkpoint\", \"format_version\": {}, ",
                     json_quote(path), version);
    o += fmt::format("\"bytes\": {:.0f}, \"step\": {}, \"epoch\": {}, \"data_seed\": {}, ",
                     file_size, st.step, st.epoch, st.data_seed);
    o += fmt::format("\"world_size\": {}, \"ep_size\": {}, \"config\": {}, ", world_size, ep_size,
                     json_quote(config));
    o += fmt::format("\"parameters\": {}, \"tensors\": [", param_numel);
    bool first = true;
    for (const std::vector<TensorInfo>* list : {&params, &moments}) {
      for (const TensorInfo& t : *list) {
        o += fmt::format(
            "{}{{\"name\": {}, \"shape\": {}, \"dtype\": \"{}\", \"numel\": {}, \"min\": {}, "
            "\"max\": {}, \"mean\": {}, \"nonfinite\": {}}}",
            first ? "" : ", ", json_quote(t.name), shape_str(t.shape), t.dtype, t.numel,
            jnum(t.min), jnum(t.max), jnum(t.mean), t.nonfinite);
        first = false;
      }
    }
    o += fmt::format("], \"optimizer\": {{\"present\": {}, \"steps_taken\": {}}}, ",
                     optim_complete ? "true" : "false", steps_taken);
    if (has_routing) {
      o += fmt::format("\"routing\": {{\"step\": {}, \"epoch\": {}, \"reason\": {}, \"layers\": [",
                       r_step, r_epoch, json_quote(r_reason));
      for (std::size_t m = 0; m < layers.size(); ++m) {
        const LayerSummary& L = layers[m];
        o += fmt::format(
            "{}{{\"layer\": {}, \"router\": {}, \"P\": {}, \"k\": {}, \"first_choice_load\": [{}], "
            "\"gate_mean\": {}, \"prob_mean\": {}, \"ac_scale\": {}}}",
            m ? ", " : "", m, json_quote(L.router), L.P, L.k, fmt::join(L.first_load, ", "),
            jnum(L.gate_mean), jnum(L.prob_mean),
            L.ac_scale ? shape_str(L.ac_shape) : std::string("null"));
      }
      o += "]}";
    } else {
      o += "\"routing\": null";
    }
    o += "}\n";
    std::fputs(o.c_str(), stdout);
    return 0;
  }

  fmt::print("{}: routemoe checkpoint, format version {}, {:.2f} MiB\n", path, version,
             file_size / (1 << 20));
  fmt::print("  step {}, epoch {}, data seed {}\n", st.step, st.epoch, st.data_seed);
  fmt::print("  written by {} rank(s), expert-parallel size {} (any layout can load it)\n",
             world_size, ep_size);
  fmt::print("  model: {} parameters, {} layers ({} MoE, routers {}), d {}, {} experts top-{}\n",
             param_numel, cfg.model.n_layers, cfg.model.n_moe_layers(),
             runfile::join_routers(cfg.model.expanded_routers()), cfg.model.d_model,
             cfg.model.n_experts, cfg.model.top_k);
  fmt::print("  optimizer: AdamW state {} (m and v for {}/{} tensors), steps_taken {}\n",
             optim_complete ? "present" : "INCOMPLETE", std::min(n_m, n_v), params.size(),
             steps_taken);
  fmt::print("\ntensors:\n");
  std::size_t w = 4;
  for (const TensorInfo& t : params) w = std::max(w, t.name.size());
  fmt::print("  {:<{}}  {:<16} {:<8} {:>10} {:>12} {:>12} {:>12}\n", "name", w, "shape", "dtype",
             "elements", "min", "max", "mean");
  for (const TensorInfo& t : params) {
    fmt::print("  {:<{}}  {:<16} {:<8} {:>10} {:>12.5g} {:>12.5g} {:>12.5g}{}\n", t.name, w,
               shape_str(t.shape), t.dtype, t.numel, t.min, t.max, t.mean,
               t.nonfinite ? fmt::format("  ({} non-finite)", t.nonfinite) : "");
  }
  double m_abs = 0, v_max = 0;
  std::int64_t mom_numel = 0;
  for (const TensorInfo& t : moments) {
    mom_numel += t.numel;
    if (t.name.rfind("optim/m/", 0) == 0)
      m_abs = std::max({m_abs, std::abs(t.min), std::abs(t.max)});
    if (t.name.rfind("optim/v/", 0) == 0) v_max = std::max(v_max, t.max);
  }
  fmt::print("  optim/m/*, optim/v/*: {} tensors, {} elements, max |m| {:.4g}, max v {:.4g}\n",
             moments.size(), mom_numel, m_abs, v_max);
  if (has_routing) {
    fmt::print("\nrouting record: step {}, epoch {}, reason {}\n", r_step, r_epoch, r_reason);
    for (std::size_t m = 0; m < layers.size(); ++m) {
      const LayerSummary& L = layers[m];
      fmt::print(
          "  layer{} {:<10} P {} k {}  first-choice load [{}]  mean gate {:.4f}  mean prob "
          "{:.4f}{}\n",
          m, L.router, L.P, L.k, fmt::join(L.first_load, " "), L.gate_mean, L.prob_mean,
          L.ac_scale ? fmt::format("  ac_scale {}", shape_str(L.ac_shape)) : "");
    }
  } else {
    fmt::print("\nrouting record: none\n");
  }
  fmt::print("\nconfig:\n");
  std::string indented;
  std::size_t begin = 0;
  while (begin < config.size()) {
    std::size_t end = config.find('\n', begin);
    if (end == std::string::npos) end = config.size();
    const std::string line = config.substr(begin, end - begin);
    indented += line.empty() ? "\n" : "  " + line + "\n";
    begin = end + 1;
  }
  while (!indented.empty() && indented.back() == '\n') indented.pop_back();
  fmt::print("{}\n", indented);
  std::fflush(stdout);
  return 0;
}

int inspect_trace(const h5::File& f, bool json, std::int64_t version) {
  const std::string& path = f.path();
  const runfile::TraceInfo info = runfile::read_trace_info(f);
  (void)f.read_i32(runfile::kProbeTokens);  // verifies its checksum
  const std::int64_t n_moe = info.n_moe_layers, top_k = info.top_k, n_experts = info.n_experts;
  const std::string routers = runfile::join_routers(info.routers);
  struct Rec {
    std::string group;
    std::int64_t step, epoch;
    std::string reason;
    std::vector<LayerSummary> layers;
  };
  std::vector<Rec> recs;
  runfile::RoutingExpect expect;
  expect.layers = n_moe;
  expect.tokens = info.probe_tokens;
  expect.top_k = top_k;
  expect.n_experts = n_experts;
  const std::vector<runfile::RoutingRecord> all = runfile::read_trace_records(f, expect);
  const std::vector<std::string> groups = version == runfile::kTraceVersionRecordGroups
                                              ? runfile::trace_record_groups(f)
                                              : std::vector<std::string>{};
  for (std::size_t i = 0; i < all.size(); ++i) {
    const runfile::RoutingRecord& rec = all[i];
    recs.push_back({i < groups.size() ? groups[i] : fmt::format("records[{}]", i), rec.step,
                    rec.epoch, rec.reason, record_summary(rec, n_experts)});
  }
  if (json) {
    std::string o = "{";
    o += fmt::format("\"file\": {}, \"format\": \"routemoe-trace\", \"format_version\": {}, ",
                     json_quote(path), version);
    o += fmt::format(
        "\"n_moe_layers\": {}, \"top_k\": {}, \"n_experts\": {}, \"seq_len\": {}, \"routers\": "
        "{}, ",
        n_moe, top_k, n_experts, info.seq_len, json_quote(routers));
    o += fmt::format("\"probe_tokens\": {}, \"config\": {}, \"records\": [", info.probe_tokens,
                     json_quote(info.config));
    for (std::size_t i = 0; i < recs.size(); ++i) {
      const Rec& r = recs[i];
      o += fmt::format(
          "{}{{\"index\": {}, \"group\": {}, \"step\": {}, \"epoch\": {}, \"reason\": {}, "
          "\"layers\": [",
          i ? ", " : "", i, json_quote(r.group), r.step, r.epoch, json_quote(r.reason));
      for (std::size_t m = 0; m < r.layers.size(); ++m) {
        const LayerSummary& L = r.layers[m];
        o += fmt::format(
            "{}{{\"router\": {}, \"P\": {}, \"k\": {}, \"first_choice_load\": [{}], \"ac_scale\": "
            "{}, \"ac_weights\": {}}}",
            m ? ", " : "", json_quote(L.router), L.P, L.k, fmt::join(L.first_load, ", "),
            L.ac_scale ? shape_str(L.ac_shape) : std::string("null"),
            L.ac_weights_shape.empty() ? std::string("null") : shape_str(L.ac_weights_shape));
      }
      o += "]}";
    }
    o += "]}\n";
    std::fputs(o.c_str(), stdout);
    return 0;
  }
  fmt::print("{}: routemoe trace, format version {}\n", path, version);
  fmt::print("  {} MoE layers (routers {}), {} experts top-{}, seq_len {}, {} probe tokens\n",
             n_moe, routers, n_experts, top_k, info.seq_len, info.probe_tokens);
  fmt::print("  {} routing records\n\n", recs.size());
  fmt::print("  {:>5} {:>8} {:>6}  {:<10}  first-choice load per layer\n", "index", "step", "epoch",
             "reason");
  for (std::size_t i = 0; i < recs.size(); ++i) {
    const Rec& r = recs[i];
    std::string loads;
    for (const LayerSummary& L : r.layers)
      loads += fmt::format("{}[{}]", loads.empty() ? "" : " ", fmt::join(L.first_load, " "));
    fmt::print("  {:>5} {:>8} {:>6}  {:<10}  {}\n", i, r.step, r.epoch, r.reason, loads);
  }
  std::fflush(stdout);
  return 0;
}

int inspect(const std::string& path, bool json) {
  std::error_code ec;
  RM_CHECK_KIND(Io, fs::exists(path, ec), fmt::format("{}: no such file or directory", path));
  RM_CHECK_KIND(Io, !fs::is_directory(path, ec),
                fmt::format("{}: is a directory, expected a checkpoint or trace file", path));
  RM_CHECK_KIND(Io, fs::is_regular_file(path, ec), fmt::format("{}: not a regular file", path));
  RM_CHECK_KIND(Data, fs::file_size(path, ec) > 0, fmt::format("{}: empty file (0 bytes)", path));
  // A file HDF5 cannot open is refused with HDF5's own reason ("not a readable HDF5 file
  // (truncated file: eof = ...)").
  const h5::File f = h5::File::open_read(path);
  const runfile::Header header =
      runfile::check_header(f, path, {runfile::Kind::Checkpoint, runfile::Kind::Trace});
  return header.kind == runfile::Kind::Trace ? inspect_trace(f, json, header.version)
                                             : inspect_checkpoint(f, json, header.version);
}

}  // namespace

Runner register_inspect(CLI::App& app) {
  struct State {
    std::string path;
    bool json = false;
  };
  auto st = std::make_shared<State>();
  CLI::App* cmd = app.add_subcommand(
      "inspect",
      "show what a checkpoint (step, layout, config, tensors, optimizer state, routing record) or "
      "a trace file (its routing records) holds; exits 1 with a one-line error for a damaged file");
  cmd->add_option("file", st->path, "a checkpoint ckpt_<step>.h5 or a trace.h5")->required();
  cmd->add_flag("--json", st->json, "print the facts as one JSON document instead of the text");
  return [st]() {
    try {
      return runfile::reading(st->path, [&]() { return inspect(st->path, st->json); });
    } catch (const Error& e) {
      // One line naming the file (runfile::reading made sure of both).
      std::fflush(stdout);
      std::fprintf(stderr, "routemoe inspect: %s\n", e.detail().c_str());
      return 1;
    }
  };
}

}  // namespace routemoe::cli
