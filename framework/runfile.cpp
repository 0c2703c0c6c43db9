#include "framework/runfile.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
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
// AC weights

namespace {

// w_e of every token group of layer m from its M_i (see derive_ac_weights); the token where a
// group's tokens of one expert disagree, or -1.
std::int64_t derive_layer(RoutingRecord& r, std::size_t m, std::int64_t E) {
  const std::int64_t P = r.tokens, K = r.top_k, d = r.d_model, G = r.groups;
  LayerRouting& L = r.layers[m];
  RM_CHECK(m > 0, "MoE layer 0 has AC weights but no previous MoE layer");
  RM_CHECK(E > 0 && G >= 1 && P % G == 0 && std::cmp_equal(L.ac_scale.size(), P * d),
           fmt::format("derive_ac_weights: P {} d {} groups {} E {}, ac_scale {}", P, d, G, E,
                       L.ac_scale.size()));
  const std::vector<std::int32_t>& prev = r.layers[m - 1].experts;
  L.ac_weights.assign(static_cast<std::size_t>(G * E * d), 0.0f);
  L.ac_present.assign(static_cast<std::size_t>(G * E), 0);
  for (std::int64_t i = 0; i < P; ++i) {
    const std::int64_t g = i / (P / G), e = prev[static_cast<std::size_t>(i * K)];
    RM_CHECK(e >= 0 && e < E, fmt::format("expert {} outside [0, {})", e, E));
    const float* row = L.ac_scale.data() + i * d;
    float* w = L.ac_weights.data() + (g * E + e) * d;
    std::uint8_t& present = L.ac_present[static_cast<std::size_t>(g * E + e)];
    if (present == 0) {
      std::copy(row, row + d, w);
      present = 1;
    } else if (std::memcmp(row, w, static_cast<std::size_t>(d) * sizeof(float)) != 0) {
      return i;
    }
  }
  return -1;
}

}  // namespace

void derive_ac_weights(RoutingRecord& r, std::int64_t n_experts) {
  r.n_experts = n_experts;
  for (std::size_t m = 0; m < r.layers.size(); ++m) {
    if (r.layers[m].ac_scale.empty()) continue;
    const std::int64_t bad = derive_layer(r, m, n_experts);
    RM_CHECK(bad < 0, fmt::format("MoE layer {} token {}: its AC weights differ from those of "
                                  "the other tokens of its expert in its token group ({} groups)",
                                  m, bad, r.groups));
  }
}

std::int64_t infer_ac_groups(RoutingRecord& r, std::int64_t n_experts, std::int64_t seq_len) {
  const bool ac = std::any_of(r.layers.begin(), r.layers.end(),
                              [](const LayerRouting& l) { return !l.ac_scale.empty(); });
  const std::int64_t sequences = seq_len > 0 ? r.tokens / seq_len : 0;
  for (std::int64_t g = 1; ac && g <= sequences; ++g) {
    if (sequences % g != 0) continue;
    r.groups = g;
    bool ok = true;
    for (std::size_t m = 0; ok && m < r.layers.size(); ++m) {
      if (!r.layers[m].ac_scale.empty()) ok = derive_layer(r, m, n_experts) < 0;
    }
    if (ok) {
      r.n_experts = n_experts;
      return g;
    }
  }
  RM_CHECK_KIND(Data, !ac,
                fmt::format("{}: no split of the probe sequences into token groups explains its "
                            "AC weights",
                            r.origin.empty() ? std::string("routing record") : r.origin));
  r.groups = 1;
  return 1;
}

std::vector<float> ac_token_weights(const RoutingRecord& r, std::size_t m) {
  const LayerRouting& L = r.layers.at(m);
  if (!L.ac_scale.empty() || L.ac_weights.empty()) return L.ac_scale;
  const std::int64_t P = r.tokens, K = r.top_k, d = r.d_model, G = r.groups, E = r.n_experts;
  const std::string at = r.origin.empty() ? std::string("routing record") : r.origin;
  RM_CHECK_KIND(
      Data, m > 0 && G >= 1 && P % G == 0 && E > 0,
      fmt::format("{}: layer{} has AC weights but {} token groups for {} tokens", at, m, G, P));
  std::vector<float> out(static_cast<std::size_t>(P * d));
  const std::vector<std::int32_t>& prev = r.layers[m - 1].experts;
  for (std::int64_t i = 0; i < P; ++i) {
    const std::int64_t g = i / (P / G), e = prev[static_cast<std::size_t>(i * K)];
    RM_CHECK_KIND(Data, e >= 0 && e < E && L.ac_present[static_cast<std::size_t>(g * E + e)] != 0,
                  fmt::format("{}: layer{} has no AC weights for expert {} in token group {}, "
                              "which token {} was sent to",
                              at, m, e, g, i));
    const float* w = L.ac_weights.data() + (g * E + e) * d;
    std::copy(w, w + d, out.begin() + i * d);
  }
  return out;
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
  f.set_attr("/", "d_model", info.d_model);
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
  t.version = f.attr_int("/", "format_version");
  if (t.version >= 2) t.d_model = f.attr_int("/", "d_model");
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
// Trace records, version 2: one row per record in extendible datasets

namespace {

using Elem = h5::File::Elem;
constexpr std::int64_t kColumnChunk = 256;  // rows per chunk of the per-record columns
constexpr const char* kEpochs = "records/epoch";
constexpr const char* kReasons = "records/reason";
constexpr const char* kGroups = "records/groups";
constexpr const char* kAcRows = "records/ac_row";

std::string trace_layer(std::size_t m) {
  return fmt::format("{}/layer{}", kRecordsGroup, m);
}

// What the datasets of a version-2 trace fix.
struct Columns {
  std::int64_t layers = 0, P = 0, K = 0, E = 0, d = 0;
  std::vector<bool> ac;     // per layer: stores AC weights
  std::vector<bool> graph;  // per layer: stores graph diagnostics (optional; newer traces)
};

Columns columns_of(const h5::File& f) {
  Columns c;
  while (f.exists(trace_layer(static_cast<std::size_t>(c.layers)) + "/experts")) ++c.layers;
  RM_CHECK_KIND(Data, c.layers >= 1,
                fmt::format("{}: no {}/layer0/experts", f.path(), kRecordsGroup));
  const Shape es = f.shape_of(trace_layer(0) + "/experts");
  RM_CHECK_KIND(Data, es.size() == 3,
                fmt::format("{}: {}/layer0/experts has shape {}, expected [records, P, k]",
                            f.path(), kRecordsGroup, shape_str(es)));
  c.P = es[1];
  c.K = es[2];
  for (std::size_t m = 0; std::cmp_less(m, c.layers); ++m) {
    const std::string w = trace_layer(m) + "/ac_weights";
    c.ac.push_back(f.exists(w));
    c.graph.push_back(f.exists(trace_layer(m) + "/graph"));
    if (!c.ac.back()) continue;
    const Shape ws = f.shape_of(w);
    RM_CHECK_KIND(
        Data, ws.size() == 3,
        fmt::format("{}: {} has shape {}, expected [rows, E, d]", f.path(), w, shape_str(ws)));
    c.E = ws[1];
    c.d = ws[2];
  }
  return c;
}

bool any_ac(const Columns& c) {
  return std::find(c.ac.begin(), c.ac.end(), true) != c.ac.end();
}

// The columns of a new trace, shaped by its first record (AC weights derived).
Columns create_columns(h5::File& f, const RoutingRecord& r) {
  Columns c;
  c.layers = static_cast<std::int64_t>(r.layers.size());
  c.P = r.tokens;
  c.K = r.top_k;
  c.E = r.n_experts;
  c.d = r.d_model;
  for (const char* col : {kRecordSteps, kEpochs, kGroups, kAcRows})
    f.create_rows(col, Elem::I64, {}, kColumnChunk);
  f.create_rows(kReasons, Elem::Str16, {}, kColumnChunk);
  for (std::size_t m = 0; m < r.layers.size(); ++m) {
    const std::string g = trace_layer(m);
    f.create_rows(g + "/experts", Elem::I32, {c.P, c.K}, 1);
    f.create_rows(g + "/gates", Elem::F32, {c.P, c.K}, 1);
    f.create_rows(g + "/probs", Elem::F32, {c.P, c.K}, 1);
    f.set_attr(g, "router", r.layers[m].router);
    c.graph.push_back(!r.layers[m].graph.empty());
    if (c.graph.back())
      f.create_rows(g + "/graph", Elem::F32, {static_cast<std::int64_t>(kGraphStats)},
                    kColumnChunk);
    c.ac.push_back(!r.layers[m].ac_weights.empty());
    if (!c.ac.back()) continue;
    f.create_rows(g + "/ac_weights", Elem::F32, {c.E, c.d}, 1);
    f.create_rows(g + "/ac_present", Elem::U8, {c.E}, 1);
  }
  return c;
}

// Refuses a record that does not fit the trace's columns.
void check_fits(const Columns& c, const RoutingRecord& r, const std::string& path) {
  RM_CHECK_KIND(Data,
                std::cmp_equal(r.layers.size(), c.layers) && r.tokens == c.P && r.top_k == c.K,
                fmt::format("{}: the trace holds records of {} MoE layers, P {}, k {}; this one "
                            "has {} layers, P {}, k {} (a trace of another model?)",
                            path, c.layers, c.P, c.K, r.layers.size(), r.tokens, r.top_k));
  for (std::size_t m = 0; m < r.layers.size(); ++m) {
    const LayerRouting& L = r.layers[m];
    const bool ac = !L.ac_weights.empty();
    RM_CHECK_KIND(Data, ac == c.ac[m],
                  fmt::format("{}: MoE layer {} {} AC weights in the trace but {} in this record",
                              path, m, c.ac[m] ? "has" : "has no", ac ? "has them" : "not"));
    RM_CHECK_KIND(Data,
                  !ac || (std::cmp_equal(L.ac_weights.size(), r.groups * c.E * c.d) &&
                          std::cmp_equal(L.ac_present.size(), r.groups * c.E)),
                  fmt::format("{}: MoE layer {}: AC weights of {} values for {} groups, the "
                              "trace stores [E {}, d {}] per group",
                              path, m, L.ac_weights.size(), r.groups, c.E, c.d));
  }
}

// Writes record `r` as row `row` (its AC rows from `ac_row`): the data, then the step that
// commits it; with `in_place`, a flush before and after the commit.
void write_record_row(h5::File& f, const Columns& c, std::int64_t row, std::int64_t ac_row,
                      const RoutingRecord& r, bool in_place) {
  for (std::size_t m = 0; m < r.layers.size(); ++m) {
    const LayerRouting& L = r.layers[m];
    const std::string g = trace_layer(m);
    f.write_rows(g + "/experts", Elem::I32, row, 1, L.experts.data());
    f.write_rows(g + "/gates", Elem::F32, row, 1, L.gates.data());
    f.write_rows(g + "/probs", Elem::F32, row, 1, L.probs.data());
    if (c.graph[m]) {  // a record without diagnostics (cannot happen for one model): NaN
      std::vector<float> stats(kGraphStats, std::numeric_limits<float>::quiet_NaN());
      if (L.graph.size() == kGraphStats) stats = L.graph;
      f.write_rows(g + "/graph", Elem::F32, row, 1, stats.data());
    }
    if (!c.ac[m]) continue;
    f.write_rows(g + "/ac_weights", Elem::F32, ac_row, r.groups, L.ac_weights.data());
    f.write_rows(g + "/ac_present", Elem::U8, ac_row, r.groups, L.ac_present.data());
  }
  RM_CHECK_KIND(Data, r.reason.size() <= 16,
                fmt::format("record reason '{}' is longer than 16 bytes", r.reason));
  char reason[16] = {};
  std::memcpy(reason, r.reason.data(), r.reason.size());
  f.write_rows(kEpochs, Elem::I64, row, 1, &r.epoch);
  f.write_rows(kReasons, Elem::Str16, row, 1, reason);
  f.write_rows(kGroups, Elem::I64, row, 1, &r.groups);
  f.write_rows(kAcRows, Elem::I64, row, 1, &ac_row);
  if (in_place) f.flush();
  f.write_rows(kRecordSteps, Elem::I64, row, 1, &r.step);  // the commit
  if (in_place) f.flush();
}

// First AC row after the first `records` records.
std::int64_t ac_rows_after(const h5::File& f, const Columns& c, std::int64_t records) {
  if (records == 0 || !any_ac(c)) return 0;
  std::int64_t last[2] = {0, 0};
  f.read_rows(kAcRows, Elem::I64, records - 1, 1, &last[0]);
  f.read_rows(kGroups, Elem::I64, records - 1, 1, &last[1]);
  return last[0] + last[1];
}

template <typename T>
std::vector<T> read_column(const h5::File& f, const char* name, Elem elem, std::int64_t n) {
  std::vector<T> v(static_cast<std::size_t>(n));
  f.read_rows(name, elem, 0, n, v.data());
  return v;
}

// The first `n` records of every layer's experts/gates/probs, split per record.
std::vector<RoutingRecord> read_columns(const h5::File& f, const Columns& c,
                                        const RoutingExpect& expect) {
  const std::int64_t R = f.rows(kRecordSteps);
  const auto steps = read_column<std::int64_t>(f, kRecordSteps, Elem::I64, R);
  const auto epochs = read_column<std::int64_t>(f, kEpochs, Elem::I64, R);
  const auto groups = read_column<std::int64_t>(f, kGroups, Elem::I64, R);
  const auto ac_rows = read_column<std::int64_t>(f, kAcRows, Elem::I64, R);
  std::vector<char> reasons(static_cast<std::size_t>(R * 16));
  f.read_rows(kReasons, Elem::Str16, 0, R, reasons.data());
  std::vector<RoutingRecord> recs(static_cast<std::size_t>(R));
  for (std::size_t r = 0; r < recs.size(); ++r) {
    RoutingRecord& rec = recs[r];
    rec.origin = fmt::format("{}:records[{}]", f.path(), r);
    rec.step = steps[r];
    rec.epoch = epochs[r];
    const char* text = reasons.data() + r * 16;
    rec.reason.assign(text, strnlen(text, 16));
    rec.groups = groups[r];
    rec.tokens = c.P;
    rec.top_k = c.K;
    rec.layers.resize(static_cast<std::size_t>(c.layers));
    if (any_ac(c) && expect.values) {
      rec.d_model = c.d;
      rec.n_experts = c.E;
      RM_CHECK_KIND(Data, rec.groups >= 1 && c.P % rec.groups == 0 && ac_rows[r] >= 0,
                    fmt::format("{}: {} token groups and AC row {} for {} probe tokens", rec.origin,
                                rec.groups, ac_rows[r], c.P));
    }
  }
  return recs;
}

void read_layer(const h5::File& f, const Columns& c, std::size_t m, const RoutingExpect& expect,
                const std::vector<std::int64_t>& ac_rows, std::vector<RoutingRecord>& recs) {
  const auto R = static_cast<std::int64_t>(recs.size());
  const std::string g = trace_layer(m);
  const std::int64_t per = c.P * c.K;
  std::vector<std::int32_t> experts(static_cast<std::size_t>(R * per));
  f.read_rows(g + "/experts", Elem::I32, 0, R, experts.data());
  std::vector<float> gates, probs;
  if (expect.values) {
    gates.resize(experts.size());
    probs.resize(experts.size());
    f.read_rows(g + "/gates", Elem::F32, 0, R, gates.data());
    f.read_rows(g + "/probs", Elem::F32, 0, R, probs.data());
  }
  const std::string router = f.has_attr(g, "router") ? f.attr_string(g, "router") : "";
  std::vector<float> graph;
  if (c.graph[m]) {
    graph.resize(static_cast<std::size_t>(R) * kGraphStats);
    f.read_rows(g + "/graph", Elem::F32, 0, R, graph.data());
  }
  for (std::int64_t r = 0; r < R; ++r) {
    LayerRouting& L = recs[static_cast<std::size_t>(r)].layers[m];
    L.router = router;
    L.experts.assign(experts.begin() + r * per, experts.begin() + (r + 1) * per);
    if (expect.n_experts > 0) {
      for (std::size_t i = 0; i < L.experts.size(); ++i) {
        const std::int32_t e = L.experts[i];
        RM_CHECK_KIND(Data, e >= 0 && e < expect.n_experts,
                      fmt::format("{}: layer{}/experts holds expert {} (token {}), outside [0, {})",
                                  recs[static_cast<std::size_t>(r)].origin, m, e,
                                  i / static_cast<std::size_t>(c.K), expect.n_experts));
      }
    }
    if (c.graph[m]) {
      const auto at = graph.begin() + r * static_cast<std::int64_t>(kGraphStats);
      L.graph.assign(at, at + static_cast<std::int64_t>(kGraphStats));
    }
    if (!expect.values) continue;
    L.gates.assign(gates.begin() + r * per, gates.begin() + (r + 1) * per);
    L.probs.assign(probs.begin() + r * per, probs.begin() + (r + 1) * per);
  }
  if (!expect.values || !c.ac[m] || R == 0) return;
  const std::int64_t rows = ac_rows.back() + recs.back().groups;
  std::vector<float> w(static_cast<std::size_t>(rows * c.E * c.d));
  std::vector<std::uint8_t> present(static_cast<std::size_t>(rows * c.E));
  f.read_rows(g + "/ac_weights", Elem::F32, 0, rows, w.data());
  f.read_rows(g + "/ac_present", Elem::U8, 0, rows, present.data());
  for (std::int64_t r = 0; r < R; ++r) {
    RoutingRecord& rec = recs[static_cast<std::size_t>(r)];
    const std::int64_t b = ac_rows[static_cast<std::size_t>(r)], n = rec.groups;
    RM_CHECK_KIND(Data, b + n <= rows,
                  fmt::format("{}: AC rows [{}, {}) beyond the {} rows of {}/ac_weights",
                              rec.origin, b, b + n, rows, g));
    LayerRouting& L = rec.layers[m];
    L.ac_weights.assign(w.begin() + b * c.E * c.d, w.begin() + (b + n) * c.E * c.d);
    L.ac_present.assign(present.begin() + b * c.E, present.begin() + (b + n) * c.E);
  }
}

std::vector<RoutingRecord> read_records_v2(const h5::File& f, const RoutingExpect& expect) {
  const Columns c = columns_of(f);
  RM_CHECK_KIND(Data, expect.layers < 0 || c.layers == expect.layers,
                fmt::format("{}: {} MoE layers of records, the file says {}", f.path(), c.layers,
                            expect.layers));
  RM_CHECK_KIND(
      Data,
      (expect.tokens == 0 || c.P == expect.tokens) && (expect.top_k == 0 || c.K == expect.top_k),
      fmt::format("{}: records of [P {}, k {}], expected [{}, {}]", f.path(), c.P, c.K,
                  expect.tokens, expect.top_k));
  std::vector<RoutingRecord> recs = read_columns(f, c, expect);
  std::vector<std::int64_t> ac_rows;
  if (!recs.empty() && any_ac(c)) {
    ac_rows =
        read_column<std::int64_t>(f, kAcRows, Elem::I64, static_cast<std::int64_t>(recs.size()));
  }
  for (std::size_t m = 0; std::cmp_less(m, c.layers); ++m)
    read_layer(f, c, m, expect, ac_rows, recs);
  return recs;
}

}  // namespace

std::int64_t trace_record_count(const h5::File& f) {
  if (f.attr_int("/", "format_version") == kTraceVersionRecordGroups) {
    return static_cast<std::int64_t>(trace_record_groups(f).size());
  }
  return f.exists(kRecordSteps) ? f.rows(kRecordSteps) : 0;
}

std::vector<RoutingRecord> read_trace_records(const h5::File& f, RoutingExpect expect) {
  if (f.attr_int("/", "format_version") != kTraceVersionRecordGroups) {
    return f.exists(kRecordSteps) ? read_records_v2(f, expect) : std::vector<RoutingRecord>{};
  }
  std::vector<RoutingRecord> recs;
  for (const std::string& group : trace_record_groups(f)) {
    recs.push_back(read_routing(f, group, expect));
  }
  return recs;
}

void create_trace(const std::string& path, const TraceInfo& info, const std::int32_t* probe,
                  const std::vector<RoutingRecord>& records) {
  RM_CHECK(!records.empty(), "create_trace needs a first record");
  const std::string tmp = path + ".tmp";
  std::error_code ec;
  std::filesystem::remove(tmp, ec);
  {
    h5::File f = h5::File::create(tmp);
    write_trace_info(f, info, probe);
    Columns c;
    std::int64_t ac_row = 0;
    for (std::size_t r = 0; r < records.size(); ++r) {
      RoutingRecord rec = records[r];
      derive_ac_weights(rec, info.n_experts);
      if (r == 0) c = create_columns(f, rec);
      check_fits(c, rec, path);
      write_record_row(f, c, static_cast<std::int64_t>(r), ac_row, rec, false);
      if (any_ac(c)) ac_row += rec.groups;
    }
    f.close();
  }
  std::filesystem::rename(tmp, path, ec);
  RM_CHECK_KIND(Io, !ec, fmt::format("cannot rename {} to {}: {}", tmp, path, ec.message()));
}

namespace {

// Everything a trace holds, read at once (the rare paths that rewrite a trace).
struct WholeTrace {
  TraceInfo info;
  std::vector<std::int32_t> probe;
  std::vector<RoutingRecord> records;
};

WholeTrace read_whole_trace(const std::string& path) {
  return reading(path, [&]() {
    const h5::File f = h5::File::open_read(path);
    check_header(f, path, {Kind::Trace});
    WholeTrace t;
    t.info = read_trace_info(f);
    t.probe = f.read_i32(kProbeTokens);
    t.records = read_trace_records(f);
    for (RoutingRecord& r : t.records) {
      // A version-1 record carries M_i but not how the probe was split into token groups.
      if (t.info.version == kTraceVersionRecordGroups)
        infer_ac_groups(r, t.info.n_experts, t.info.seq_len);
      t.info.d_model = std::max(t.info.d_model, r.d_model);
    }
    return t;
  });
}

}  // namespace

void append_trace_record(const std::string& path, const TraceInfo& info, const std::int32_t* probe,
                         const RoutingRecord& record) {
  if (!std::filesystem::exists(path)) {
    create_trace(path, info, probe, {record});
    return;
  }
  std::int64_t version = 0;
  reading(path, [&]() {
    const h5::File f = h5::File::open_read(path);
    version = check_header(f, path, {Kind::Trace}).version;
  });
  if (version == kTraceVersionRecordGroups) {  // rewritten as version 2, once
    WholeTrace t = read_whole_trace(path);
    t.records.push_back(record);
    t.info.d_model = std::max(t.info.d_model, record.d_model);
    create_trace(path, t.info, t.probe.data(), t.records);
    return;
  }
  h5::File f = h5::File::open_append(path);
  const Columns c = columns_of(f);
  RoutingRecord rec = record;
  derive_ac_weights(rec, f.attr_int("/", "n_experts"));
  check_fits(c, rec, path);
  const std::int64_t row = f.rows(kRecordSteps);
  write_record_row(f, c, row, ac_rows_after(f, c, row), rec, true);
  f.close();
}

std::int64_t truncate_trace(const std::string& path, std::int64_t step) {
  WholeTrace t = read_whole_trace(path);
  std::size_t keep = 0;
  while (keep < t.records.size() && t.records[keep].step <= step) ++keep;
  if (keep == t.records.size()) return static_cast<std::int64_t>(keep);  // nothing to drop
  if (keep == 0) {
    std::filesystem::remove(path);  // nothing to keep: the next append starts a new trace
    return 0;
  }
  t.records.resize(keep);
  create_trace(path, t.info, t.probe.data(), t.records);
  return static_cast<std::int64_t>(keep);
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
