#include "framework/runfile.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "framework/error.h"
#include "framework/h5.h"
#include "framework/tensor.h"

namespace routemoe::runfile {

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

// "checkpoint or trace" for the accepted kinds, in the caller's order.
std::string nouns(std::initializer_list<Kind> kinds) {
  std::string out;
  for (Kind k : kinds) out += fmt::format("{}{}", out.empty() ? "" : " or ", kind_noun(k));
  return out;
}

std::string layer_group(const std::string& group, std::size_t m) {
  return fmt::format("{}/layer{}", group, m);
}

}  // namespace

std::string_view format_name(Kind kind) {
  return kind == Kind::Checkpoint ? kCheckpointFormat : kTraceFormat;
}

std::int64_t format_version(Kind kind) {
  return kind == Kind::Checkpoint ? kCheckpointVersion : kTraceVersion;
}

std::string_view kind_noun(Kind kind) {
  return kind == Kind::Checkpoint ? "checkpoint" : "trace";
}

// ---------------------------------------------------------------------------------------------
// Header

void write_header(h5::File& f, Kind kind) {
  f.set_attr("/", "format", std::string(format_name(kind)));
  f.set_attr("/", "format_version", format_version(kind));
}

Header check_header(const h5::File& f, const std::string& path,
                    std::initializer_list<Kind> accept) {
  RM_CHECK(accept.size() > 0, "check_header needs at least one accepted kind");
  RM_CHECK_KIND(Data, f.has_attr("/", "format"),
                fmt::format("{}: not a routemoe {} (no 'format' attribute)", path, nouns(accept)));
  const std::string format = f.attr_string("/", "format");
  Header h;
  if (format == kCheckpointFormat) {
    h.kind = Kind::Checkpoint;
  } else if (format == kTraceFormat) {
    h.kind = Kind::Trace;
  } else {
    RM_FAIL(Data,
            fmt::format("{}: not a routemoe {} (format is '{}')", path, nouns(accept), format));
  }
  RM_CHECK_KIND(Data, std::find(accept.begin(), accept.end(), h.kind) != accept.end(),
                fmt::format("{}: not a routemoe {} (it is a routemoe {})", path, nouns(accept),
                            kind_noun(h.kind)));
  RM_CHECK_KIND(Data, f.has_attr("/", "format_version"),
                fmt::format("{}: {} without a 'format_version' attribute", path, format));
  h.version = f.attr_int("/", "format_version");
  const std::int64_t newest = format_version(h.kind);
  RM_CHECK_KIND(Data, h.version <= newest,
                fmt::format("{}: {} format_version {} is not supported: it is newer than this "
                            "build reads ({}); use a newer routemoe",
                            path, format, h.version, newest));
  RM_CHECK_KIND(Data, h.version >= 1,
                fmt::format("{}: {} has an invalid format_version {} (versions start at 1)", path,
                            format, h.version));
  return h;
}

// ---------------------------------------------------------------------------------------------
// Router list

std::string join_routers(const std::vector<std::string>& routers) {
  return fmt::format("{}", fmt::join(routers, ","));
}

std::vector<std::string> split_routers(const std::string& text) {
  std::vector<std::string> out;
  if (text.find_first_not_of(" \t") == std::string::npos) return out;
  std::size_t begin = 0;
  while (true) {
    const std::size_t comma = text.find(',', begin);
    std::string name = text.substr(begin, comma == std::string::npos ? comma : comma - begin);
    const std::size_t first = name.find_first_not_of(" \t");
    name = first == std::string::npos
               ? std::string()
               : name.substr(first, name.find_last_not_of(" \t") - first + 1);
    out.push_back(std::move(name));
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Routing record

void write_routing(h5::File& f, const std::string& group, const RoutingRecord& r) {
  const std::int64_t P = r.tokens, K = r.top_k;
  for (std::size_t m = 0; m < r.layers.size(); ++m) {
    const LayerRouting& L = r.layers[m];
    const std::string g = layer_group(group, m);
    f.write_i32(g + "/experts", L.experts.data(), {P, K});
    f.write_f32(g + "/gates", L.gates.data(), {P, K});
    f.write_f32(g + "/probs", L.probs.data(), {P, K});
    if (!L.ac_scale.empty()) f.write_f32(g + "/ac_scale", L.ac_scale.data(), {P, r.d_model});
    f.set_attr(g, "router", L.router);
  }
  if (r.layers.empty()) f.write_scalar(group + "/empty", 0.0);  // makes the group exist
  f.set_attr(group, "step", r.step);
  f.set_attr(group, "epoch", r.epoch);
  f.set_attr(group, "reason", r.reason);
}

RoutingRecord read_routing(const h5::File& f, const std::string& group,
                           const RoutingExpect& expect) {
  RoutingRecord rec;
  rec.origin = fmt::format("{}:{}", f.path(), group);
  const std::string& at = rec.origin;
  RM_CHECK_KIND(Data, f.exists(group), fmt::format("{}: missing group", at));
  rec.step = f.attr_int(group, "step");
  rec.epoch = f.attr_int(group, "epoch");
  if (f.has_attr(group, "reason")) rec.reason = f.attr_string(group, "reason");
  rec.tokens = expect.tokens;
  rec.top_k = expect.top_k;
  for (std::size_t m = 0;
       expect.layers < 0 ? f.exists(layer_group(group, m)) : std::cmp_less(m, expect.layers); ++m) {
    const std::string g = layer_group(group, m);
    const std::string experts = g + "/experts";
    RM_CHECK_KIND(Data, f.exists(experts),
                  expect.layers < 0
                      ? fmt::format("{}: missing dataset layer{}/experts", at, m)
                      : fmt::format("{}: missing dataset layer{}/experts (the file has {} MoE "
                                    "layers)",
                                    at, m, expect.layers));
    LayerRouting L;
    Shape es;
    L.experts = f.read_i32(experts, &es);
    if (es.size() == 2 && rec.tokens == 0) rec.tokens = es[0];
    if (es.size() == 2 && rec.top_k == 0) rec.top_k = es[1];
    RM_CHECK_KIND(Data, es == (Shape{rec.tokens, rec.top_k}),
                  fmt::format("{}: layer{}/experts has shape {}, expected [{}, {}] (every record "
                              "must route the same probe tokens with the same top_k)",
                              at, m, shape_str(es), rec.tokens, rec.top_k));
    if (expect.n_experts > 0) {
      for (std::size_t i = 0; i < L.experts.size(); ++i) {
        const std::int32_t e = L.experts[i];
        RM_CHECK_KIND(
            Data, e >= 0 && e < expect.n_experts,
            fmt::format("{}: layer{}/experts holds expert {} (token {}), outside [0, {})", at, m, e,
                        i / static_cast<std::size_t>(rec.top_k), expect.n_experts));
      }
    }
    if (f.has_attr(g, "router")) L.router = f.attr_string(g, "router");
    if (expect.values) {
      for (auto [name, dst] : {std::pair{"gates", &L.gates}, std::pair{"probs", &L.probs}}) {
        Shape s;
        *dst = f.read_f32(fmt::format("{}/{}", g, name), &s);
        RM_CHECK_KIND(Data, s == es,
                      fmt::format("{}: layer{}/{} has shape {}, experts has {}", at, m, name,
                                  shape_str(s), shape_str(es)));
      }
      if (f.exists(g + "/ac_scale")) {
        Shape s;
        L.ac_scale = f.read_f32(g + "/ac_scale", &s);
        if (s.size() == 2 && rec.d_model == 0) rec.d_model = s[1];
        RM_CHECK_KIND(Data, s == (Shape{rec.tokens, rec.d_model}),
                      fmt::format("{}: layer{}/ac_scale has shape {}, expected [{}, {}]", at, m,
                                  shape_str(s), rec.tokens, rec.d_model));
      }
    }
    rec.layers.push_back(std::move(L));
  }
  return rec;
}

// ---------------------------------------------------------------------------------------------
// Trace root

void write_trace_info(h5::File& f, const TraceInfo& info, const std::int32_t* probe) {
  write_header(f, Kind::Trace);
  f.set_attr("/", "config", info.config);
  f.set_attr("/", "n_moe_layers", info.n_moe_layers);
  f.set_attr("/", "top_k", info.top_k);
  f.set_attr("/", "n_experts", info.n_experts);
  f.set_attr("/", "seq_len", info.seq_len);
  f.set_attr("/", "routers", join_routers(info.routers));
  if (!info.run_id.empty()) f.set_attr("/", "run_id", info.run_id);
  f.write_i32(kProbeTokens, probe, {info.probe_tokens});
}

TraceInfo read_trace_info(const h5::File& f) {
  TraceInfo t;
  t.n_moe_layers = f.attr_int("/", "n_moe_layers");
  t.top_k = f.attr_int("/", "top_k");
  t.n_experts = f.attr_int("/", "n_experts");
  t.seq_len = f.attr_int("/", "seq_len");
  t.routers = split_routers(f.attr_string("/", "routers"));
  t.config = f.attr_string("/", "config");
  t.run_id = read_run_id(f);
  RM_CHECK_KIND(Data, t.n_moe_layers >= 1 && t.top_k >= 1 && t.n_experts >= t.top_k,
                fmt::format("{}: bad model attributes (n_moe_layers {}, top_k {}, n_experts {})",
                            f.path(), t.n_moe_layers, t.top_k, t.n_experts));
  const Shape probe = f.shape_of(kProbeTokens);
  RM_CHECK_KIND(
      Data, probe.size() == 1,
      fmt::format("{}: {} has shape {}, expected [P]", f.path(), kProbeTokens, shape_str(probe)));
  t.probe_tokens = probe[0];
  return t;
}

std::string trace_record_group(std::int64_t index) {
  return fmt::format("{}/{:06d}", kRecordsGroup, index);
}

std::vector<std::string> trace_record_groups(const h5::File& f) {
  if (!f.exists(kRecordsGroup)) return {};
  std::vector<std::pair<std::int64_t, std::string>> found;
  for (const std::string& name : f.list(kRecordsGroup)) {
    const std::int64_t index = parse_index(name);
    RM_CHECK_KIND(Data, index >= 0,
                  fmt::format("{}: unexpected member {}/{} (records are named by a 6-digit index)",
                              f.path(), kRecordsGroup, name));
    found.emplace_back(index, name);
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (const auto& [index, name] : found) out.push_back(fmt::format("{}/{}", kRecordsGroup, name));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Checkpoint root

void write_checkpoint_info(h5::File& f, const CheckpointInfo& c) {
  write_header(f, Kind::Checkpoint);
  f.set_attr("/", "config", c.config);
  f.set_attr("/", "step", c.step);
  f.set_attr("/", "epoch", c.epoch);
  f.set_attr("/", "data_seed", static_cast<std::int64_t>(c.data_seed));
  f.set_attr("/", "world_size", c.world_size);
  f.set_attr("/", "ep_size", c.ep_size);
  f.set_attr("/", "routers", join_routers(c.routers));
  if (!c.run_id.empty()) f.set_attr("/", "run_id", c.run_id);
}

CheckpointInfo read_checkpoint_info(const h5::File& f) {
  CheckpointInfo c;
  c.step = f.attr_int("/", "step");
  c.epoch = f.attr_int("/", "epoch");
  c.data_seed = static_cast<std::uint64_t>(f.attr_int("/", "data_seed"));
  c.world_size = f.attr_int("/", "world_size");
  c.ep_size = f.attr_int("/", "ep_size");
  c.routers = split_routers(f.attr_string("/", "routers"));
  c.config = f.attr_string("/", "config");
  c.run_id = read_run_id(f);
  RM_CHECK_KIND(Data, c.step >= 0, fmt::format("{}: negative step {}", f.path(), c.step));
  return c;
}

std::string read_run_id(const h5::File& f) {
  return f.has_attr("/", "run_id") ? f.attr_string("/", "run_id") : std::string();
}

// ---------------------------------------------------------------------------------------------
// Errors while reading

void rethrow_for_file(const std::string& path, std::exception_ptr error) {
  std::string cause;
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    switch (e.kind()) {
      case ErrorKind::Config:
      case ErrorKind::Data:
      case ErrorKind::Io:
      case ErrorKind::Hdf5:
        cause = e.detail().empty() ? e.what() : e.detail();
        break;
      default:
        cause = e.what();  // an internal error: keep where it was raised
        break;
    }
  } catch (const std::exception& e) {
    cause = e.what();
  } catch (...) {
    cause = "unknown error";
  }
  std::replace(cause.begin(), cause.end(), '\n', ' ');
  std::replace(cause.begin(), cause.end(), '\r', ' ');
  if (cause.find(path) == std::string::npos) cause = fmt::format("{}: {}", path, cause);
  RM_FAIL(Data, cause);
}

}  // namespace routemoe::runfile
