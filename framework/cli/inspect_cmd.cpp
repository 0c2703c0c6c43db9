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
// text (design.md section 7).

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

std::string shape_text(const Shape& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += fmt::format("{}{}", i ? ", " : "", s[i]);
  return out + "]";
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
  CLI::App app;
  std::string unused;
  register_run_options(app, cfg, unused);
  try {
    apply_config_file(app, tmpl);
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
};

LayerSummary layer_summary(const h5::File& f, const std::string& g, std::int64_t n_experts) {
  LayerSummary L;
  if (f.has_attr(g, "router")) L.router = f.attr_string(g, "router");
  Shape es, gs, ps;
  const std::vector<std::int32_t> experts = f.read_i32(g + "/experts", &es);
  RM_CHECK_KIND(
      Data, es.size() == 2,
      fmt::format("{}: {}/experts has shape {}, expected [P, k]", f.path(), g, shape_text(es)));
  L.P = es[0];
  L.k = es[1];
  const std::vector<float> gates = f.read_f32(g + "/gates", &gs);
  const std::vector<float> probs = f.read_f32(g + "/probs", &ps);
  RM_CHECK_KIND(Data, gs == es && ps == es,
                fmt::format("{}: {}: gates {} / probs {} do not match experts {}", f.path(), g,
                            shape_text(gs), shape_text(ps), shape_text(es)));
  L.first_load.assign(static_cast<std::size_t>(n_experts), 0);
  for (std::int64_t i = 0; i < L.P; ++i) {
    const std::int32_t e = experts[static_cast<std::size_t>(i * L.k)];
    RM_CHECK_KIND(Data, e >= 0 && e < n_experts,
                  fmt::format("{}: {}/experts holds expert {} (the model has {})", f.path(), g, e,
                              n_experts));
    ++L.first_load[static_cast<std::size_t>(e)];
  }
  double gsum = 0, psum = 0;
  for (float v : gates) gsum += v;
  for (float v : probs) psum += v;
  const double n = std::max<double>(1, static_cast<double>(gates.size()));
  L.gate_mean = gsum / n;
  L.prob_mean = psum / n;
  if (f.exists(g + "/ac_scale")) {
    L.ac_scale = true;
    L.ac_shape = f.shape_of(g + "/ac_scale");
    (void)f.read_f32(g + "/ac_scale");  // verifies its checksum
  }
  return L;
}

std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

int inspect_checkpoint(const h5::File& f, bool json, std::int64_t version) {
  const std::string& path = f.path();
  const std::string config = f.attr_string("/", "config");
  const RunConfig cfg = parse_stored_config(path, config);
  // Load it as a resume would: every tensor's presence, shape, checksum and finiteness.
  Model model(cfg.model);
  AdamW opt(model.params(), cfg.optim);
  const CheckpointState st = load_checkpoint(path, model, opt);
  const std::int64_t world_size = f.attr_int("/", "world_size");
  const std::int64_t ep_size = f.attr_int("/", "ep_size");
  const std::int64_t steps_taken = f.attr_int("/optim", "steps_taken");

  std::vector<TensorInfo> params, moments;
  for (const std::string& n : f.list("params")) params.push_back(tensor_info(f, "params/" + n));
  std::int64_t param_numel = 0;
  for (const TensorInfo& t : params) param_numel += t.numel;
  for (const char* g : {"optim/m", "optim/v"}) {
    for (const std::string& n : f.list(g))
      moments.push_back(tensor_info(f, fmt::format("{}/{}", g, n)));
  }
  // Optimiser state: one m and one v per parameter.
  const std::size_t n_m = f.list("optim/m").size(), n_v = f.list("optim/v").size();
  const bool optim_complete = n_m == params.size() && n_v == params.size();

  std::vector<LayerSummary> layers;
  std::int64_t r_step = -1, r_epoch = -1;
  std::string r_reason;
  const bool has_routing = f.exists("routing");
  if (has_routing) {
    r_step = f.attr_int("routing", "step");
    r_epoch = f.attr_int("routing", "epoch");
    r_reason = f.attr_string("routing", "reason");
    for (std::int64_t m = 0; f.exists(fmt::format("routing/layer{}", m)); ++m) {
      layers.push_back(layer_summary(f, fmt::format("routing/layer{}", m), cfg.model.n_experts));
    }
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
            first ? "" : ", ", json_quote(t.name), shape_text(t.shape), t.dtype, t.numel,
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
            L.ac_scale ? shape_text(L.ac_shape) : std::string("null"));
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
             fmt::join(cfg.model.expanded_routers(), ","), cfg.model.d_model, cfg.model.n_experts,
             cfg.model.top_k);
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
               shape_text(t.shape), t.dtype, t.numel, t.min, t.max, t.mean,
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
          L.ac_scale ? fmt::format("  ac_scale {}", shape_text(L.ac_shape)) : "");
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
  const std::int64_t n_moe = f.attr_int("/", "n_moe_layers");
  const std::int64_t top_k = f.attr_int("/", "top_k");
  const std::int64_t n_experts = f.attr_int("/", "n_experts");
  const std::int64_t seq_len = f.attr_int("/", "seq_len");
  const std::string routers = f.attr_string("/", "routers");
  const std::string config = f.attr_string("/", "config");
  Shape probe_shape;
  (void)f.read_i32("probe/tokens", &probe_shape);
  struct Rec {
    std::string name;
    std::int64_t step, epoch;
    std::string reason;
    std::vector<LayerSummary> layers;
  };
  std::vector<Rec> recs;
  for (const std::string& n : f.list("records")) {
    const std::string g = "records/" + n;
    Rec r{n, f.attr_int(g, "step"), f.attr_int(g, "epoch"), f.attr_string(g, "reason"), {}};
    for (std::int64_t m = 0; m < n_moe; ++m) {
      const std::string lg = fmt::format("{}/layer{}", g, m);
      RM_CHECK_KIND(Data, f.exists(lg),
                    fmt::format("{}: record {} has no layer{} (the trace has {} MoE layers)", path,
                                n, m, n_moe));
      r.layers.push_back(layer_summary(f, lg, n_experts));
    }
    recs.push_back(std::move(r));
  }
  if (json) {
    std::string o = "{";
    o += fmt::format("\"file\": {}, \"format\": \"routemoe-trace\", \"format_version\": {}, ",
                     json_quote(path), version);
    o += fmt::format(
        "\"n_moe_layers\": {}, \"top_k\": {}, \"n_experts\": {}, \"seq_len\": {}, \"routers\": "
        "{}, ",
        n_moe, top_k, n_experts, seq_len, json_quote(routers));
    o += fmt::format("\"probe_tokens\": {}, \"config\": {}, \"records\": [",
                     shape_numel(probe_shape), json_quote(config));
    for (std::size_t i = 0; i < recs.size(); ++i) {
      const Rec& r = recs[i];
      o += fmt::format(
          "{}{{\"index\": {}, \"group\": {}, \"step\": {}, \"epoch\": {}, \"reason\": {}, "
          "\"layers\": [",
          i ? ", " : "", i, json_quote("records/" + r.name), r.step, r.epoch, json_quote(r.reason));
      for (std::size_t m = 0; m < r.layers.size(); ++m) {
        const LayerSummary& L = r.layers[m];
        o += fmt::format(
            "{}{{\"router\": {}, \"P\": {}, \"k\": {}, \"first_choice_load\": [{}], \"ac_scale\": "
            "{}}}",
            m ? ", " : "", json_quote(L.router), L.P, L.k, fmt::join(L.first_load, ", "),
            L.ac_scale ? shape_text(L.ac_shape) : std::string("null"));
      }
      o += "]}";
    }
    o += "]}\n";
    std::fputs(o.c_str(), stdout);
    return 0;
  }
  fmt::print("{}: routemoe trace, format version {}\n", path, version);
  fmt::print("  {} MoE layers (routers {}), {} experts top-{}, seq_len {}, {} probe tokens\n",
             n_moe, routers, n_experts, top_k, seq_len, shape_numel(probe_shape));
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

herr_t innermost(unsigned n, const H5E_error2_t* e, void* out) {
  // Walked upwards: frame 0 is where HDF5 detected the problem (e.g. "truncated file: eof = ...").
  if (n == 0 && e != nullptr && e->desc != nullptr) *static_cast<std::string*>(out) = e->desc;
  return 0;
}

// Opens `path` read-only; a file HDF5 cannot open is refused with HDF5's own reason.
h5::File open_explained(const std::string& path) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t probe = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (probe < 0) {
    std::string why;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost, &why);
    RM_FAIL(Data, fmt::format("{}: not a readable HDF5 file{}", path,
                              why.empty() ? "" : " (" + why + ")"));
  }
  H5Fclose(probe);
  return h5::File::open_read(path);
}

int inspect(const std::string& path, bool json) {
  std::error_code ec;
  RM_CHECK_KIND(Io, fs::exists(path, ec), fmt::format("{}: no such file or directory", path));
  RM_CHECK_KIND(Io, !fs::is_directory(path, ec),
                fmt::format("{}: is a directory, expected a checkpoint or trace file", path));
  RM_CHECK_KIND(Io, fs::is_regular_file(path, ec), fmt::format("{}: not a regular file", path));
  RM_CHECK_KIND(Data, fs::file_size(path, ec) > 0, fmt::format("{}: empty file (0 bytes)", path));
  const h5::File f = open_explained(path);
  RM_CHECK_KIND(
      Data, f.has_attr("/", "format"),
      fmt::format("{}: not a routemoe checkpoint or trace (no 'format' attribute)", path));
  const std::string format = f.attr_string("/", "format");
  RM_CHECK_KIND(
      Data, format == "routemoe-checkpoint" || format == "routemoe-trace",
      fmt::format("{}: not a routemoe checkpoint or trace (format is '{}')", path, format));
  const std::int64_t version = f.attr_int("/", "format_version");
  RM_CHECK_KIND(Data, version >= 1 && version <= kCheckpointFormatVersion,
                fmt::format("{}: {} format version {} is not supported (this build reads 1..{})",
                            path, format, version, kCheckpointFormatVersion));
  return format == "routemoe-trace" ? inspect_trace(f, json, version)
                                    : inspect_checkpoint(f, json, version);
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
      return inspect(st->path, st->json);
    } catch (const std::exception& e) {
      // One line naming the file: the detail of a routemoe::Error (without source location),
      // prefixed with the path when the detail does not name it already.
      const auto* err = dynamic_cast<const Error*>(&e);
      std::string what = err != nullptr && !err->detail().empty() ? err->detail() : e.what();
      if (what.find(st->path) == std::string::npos) what = fmt::format("{}: {}", st->path, what);
      std::fflush(stdout);
      std::fprintf(stderr, "routemoe inspect: %s\n", one_line(what).c_str());
      return 1;
    }
  };
}

}  // namespace routemoe::cli
