// The run-file format module (framework/runfile.h): routing records round-trip through HDF5 with
// the names docs/checkpoint-format.md documents, the header check refuses foreign, newer and
// broken files with one line naming the file, the router list and the file-error helper.

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "framework/error.h"
#include "framework/h5.h"
#include "framework/runfile.h"
#include "layers/routers/router.h"

namespace routemoe::runfile {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            (std::string("routemoe_test_runfile_") + std::to_string(::getpid()) + "_" +
             info->test_suite_name() + "_" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// The Error a call raises (kind Check with "(no error)" when it raises none).
Error error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e;
  }
  return Error(ErrorKind::Check, "", "(no error)", __FILE__, __LINE__);
}

// A record of 2 MoE layers (topk, then ac with feature weights), P = 3 tokens, k = 2, d = 4,
// every value distinct so that a swapped or shifted array shows.
RoutingRecord sample_record() {
  RoutingRecord r;
  r.step = 120;
  r.epoch = 3;
  r.reason = "checkpoint";
  r.tokens = 3;
  r.top_k = 2;
  r.d_model = 4;
  for (int m = 0; m < 2; ++m) {
    LayerRouting L;
    L.router = m == 0 ? "topk" : "ac";
    for (int i = 0; i < 6; ++i) {
      L.experts.push_back((i + m) % 4);
      L.gates.push_back(0.1f * static_cast<float>(i + 1) + static_cast<float>(m));
      L.probs.push_back(0.01f * static_cast<float>(i + 1) + static_cast<float>(m));
    }
    if (m == 1) {
      for (int i = 0; i < 12; ++i) L.ac_scale.push_back(1.0f + 0.5f * static_cast<float>(i));
    }
    r.layers.push_back(L);
  }
  return r;
}

void expect_same(const RoutingRecord& a, const RoutingRecord& b) {
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.epoch, b.epoch);
  EXPECT_EQ(a.reason, b.reason);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.top_k, b.top_k);
  EXPECT_EQ(a.d_model, b.d_model);
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (std::size_t m = 0; m < a.layers.size(); ++m) {
    EXPECT_EQ(a.layers[m].router, b.layers[m].router) << "layer " << m;
    EXPECT_EQ(a.layers[m].experts, b.layers[m].experts) << "layer " << m;
    // float32 stored as float32: bit-exact.
    EXPECT_EQ(a.layers[m].gates, b.layers[m].gates) << "layer " << m;
    EXPECT_EQ(a.layers[m].probs, b.layers[m].probs) << "layer " << m;
    EXPECT_EQ(a.layers[m].ac_scale, b.layers[m].ac_scale) << "layer " << m;
  }
}

TEST(RunfileNames, FormatNamesAndVersionsAreTheDocumentedOnes) {
  // Files written by earlier builds carry exactly these (docs/checkpoint-format.md).
  EXPECT_EQ(format_name(Kind::Checkpoint), "routemoe-checkpoint");
  EXPECT_EQ(format_name(Kind::Trace), "routemoe-trace");
  EXPECT_EQ(format_version(Kind::Checkpoint), 1);
  EXPECT_EQ(format_version(Kind::Trace), 2);
  EXPECT_EQ(kTraceVersionRecordGroups, 1);
  EXPECT_EQ(std::string(kRecordSteps), "records/step");
  EXPECT_EQ(trace_record_group(7), "records/000007");
}

TEST(RunfileRecord, RoundTripKeepsEveryField) {
  TempDir dir;
  const std::string path = dir.file("r.h5");
  const RoutingRecord rec = sample_record();
  {
    h5::File f = h5::File::create(path);
    write_routing(f, kRoutingGroup, rec);
    write_routing(f, trace_record_group(0), rec);
    f.close();
  }
  const h5::File f = h5::File::open_read(path);
  for (const std::string& group : {std::string(kRoutingGroup), trace_record_group(0)}) {
    const RoutingRecord back = read_routing(f, group);
    expect_same(back, rec);
    EXPECT_EQ(back.origin, path + ":" + group);
  }
  // The same with everything given, including the expert bound.
  RoutingExpect all;
  all.layers = 2;
  all.tokens = 3;
  all.top_k = 2;
  all.n_experts = 4;
  expect_same(read_routing(f, kRoutingGroup, all), rec);
  // Experts only: no values read.
  RoutingExpect experts_only;
  experts_only.values = false;
  const RoutingRecord lean = read_routing(f, kRoutingGroup, experts_only);
  ASSERT_EQ(lean.layers.size(), 2u);
  EXPECT_EQ(lean.layers[1].experts, rec.layers[1].experts);
  EXPECT_EQ(lean.layers[1].router, "ac");
  EXPECT_TRUE(lean.layers[1].gates.empty());
  EXPECT_TRUE(lean.layers[1].ac_scale.empty());
}

TEST(RunfileRecord, OnDiskNamesAreTheDocumentedOnes) {
  // Read back with the raw HDF5 layer, not with read_routing: the names h5py users and older
  // files rely on (docs/checkpoint-format.md, "Routing record").
  TempDir dir;
  const std::string path = dir.file("r.h5");
  {
    h5::File f = h5::File::create(path);
    write_routing(f, "routing", sample_record());
    f.close();
  }
  const h5::File f = h5::File::open_read(path);
  EXPECT_EQ(f.attr_int("routing", "step"), 120);
  EXPECT_EQ(f.attr_int("routing", "epoch"), 3);
  EXPECT_EQ(f.attr_string("routing", "reason"), "checkpoint");
  EXPECT_EQ(f.list("routing"), (std::vector<std::string>{"layer0", "layer1"}));
  EXPECT_EQ(f.list("routing/layer0"), (std::vector<std::string>{"experts", "gates", "probs"}));
  EXPECT_EQ(f.list("routing/layer1"),
            (std::vector<std::string>{"ac_scale", "experts", "gates", "probs"}));
  EXPECT_EQ(f.attr_string("routing/layer1", "router"), "ac");
  EXPECT_EQ(f.shape_of("routing/layer0/experts"), (Shape{3, 2}));
  EXPECT_EQ(f.shape_of("routing/layer1/ac_scale"), (Shape{3, 4}));
  EXPECT_EQ(f.read_i32("routing/layer1/experts"), sample_record().layers[1].experts);
}

TEST(RunfileRecord, RecordWithoutLayersRoundTrips) {
  TempDir dir;
  const std::string path = dir.file("r.h5");
  RoutingRecord rec;
  rec.step = 5;
  rec.epoch = 1;
  rec.reason = "final";
  {
    h5::File f = h5::File::create(path);
    write_routing(f, "routing", rec);
    f.close();
  }
  const h5::File f = h5::File::open_read(path);
  EXPECT_TRUE(f.exists("routing/empty"));
  const RoutingRecord back = read_routing(f, "routing");
  EXPECT_TRUE(back.layers.empty());
  EXPECT_EQ(back.step, 5);
  EXPECT_EQ(back.reason, "final");
}

TEST(RunfileRecord, ReaderRefusesWhatDoesNotFit) {
  TempDir dir;
  const std::string path = dir.file("r.h5");
  {
    h5::File f = h5::File::create(path);
    write_routing(f, "good", sample_record());
    RoutingRecord bad = sample_record();
    bad.layers[1].experts[4] = 9;  // outside [0, 4)
    write_routing(f, "bad_id", bad);
    // layer1 with a gates dataset of another shape than its experts.
    RoutingRecord odd = sample_record();
    odd.layers.resize(1);
    write_routing(f, "odd", odd);
    const std::vector<float> g(4, 0.5f);
    const std::vector<std::int32_t> e(6, 0);
    f.write_i32("odd/layer1/experts", e.data(), {3, 2});
    f.write_f32("odd/layer1/gates", g.data(), {2, 2});
    f.write_f32("odd/layer1/probs", g.data(), {2, 2});
    f.close();
  }
  const h5::File f = h5::File::open_read(path);
  auto refused = [&](const std::string& group, const RoutingExpect& expect,
                     const std::string& what) {
    const Error e = error_of([&] { read_routing(f, group, expect); });
    EXPECT_EQ(e.kind(), ErrorKind::Data) << e.what();
    const std::string msg = e.detail();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  };
  RoutingExpect p4;
  p4.tokens = 4;
  refused("good", p4, "layer0/experts has shape [3, 2], expected [4, 2]");
  RoutingExpect k1;
  k1.top_k = 1;
  refused("good", k1, "expected [3, 1]");
  RoutingExpect three;
  three.layers = 3;
  refused("good", three, "missing dataset layer2/experts (the file has 3 MoE layers)");
  RoutingExpect e4;
  e4.n_experts = 4;
  refused("bad_id", e4, "layer1/experts holds expert 9 (token 2), outside [0, 4)");
  refused("odd", {}, "layer1/gates has shape [2, 2], experts has [3, 2]");
  refused("missing", {}, "missing group");
  // The expert bound is only checked when asked for.
  EXPECT_EQ(read_routing(f, "bad_id").layers[1].experts[4], 9);
}

TEST(RunfileHeader, AcceptsItsKindsAndRefusesEverythingElse) {
  TempDir dir;
  auto make = [&](const std::string& name, const std::function<void(h5::File&)>& fill) {
    const std::string path = dir.file(name);
    h5::File f = h5::File::create(path);
    fill(f);
    f.close();
    return path;
  };
  const std::string ckpt = make("ckpt.h5", [](h5::File& f) { write_header(f, Kind::Checkpoint); });
  const std::string trace = make("trace.h5", [](h5::File& f) { write_header(f, Kind::Trace); });
  {
    const h5::File f = h5::File::open_read(ckpt);
    EXPECT_EQ(f.attr_string("/", "format"), "routemoe-checkpoint");
    EXPECT_EQ(f.attr_int("/", "format_version"), 1);
    const Header h = check_header(f, ckpt, {Kind::Trace, Kind::Checkpoint});
    EXPECT_EQ(h.kind, Kind::Checkpoint);
    EXPECT_EQ(h.version, 1);
    EXPECT_EQ(check_header(f, ckpt, {Kind::Checkpoint}).kind, Kind::Checkpoint);
  }
  EXPECT_EQ(check_header(h5::File::open_read(trace), trace, {Kind::Trace}).kind, Kind::Trace);

  const std::string none =
      make("none.h5", [](h5::File& f) { f.set_attr("/", "step", std::int64_t{1}); });
  const std::string other =
      make("other.h5", [](h5::File& f) { f.set_attr("/", "format", std::string("hdf5-thing")); });
  const std::string newer = make("newer.h5", [](h5::File& f) {
    write_header(f, Kind::Trace);
    f.set_attr("/", "format_version", std::int64_t{3});
  });
  const std::string zero = make("zero.h5", [](h5::File& f) {
    write_header(f, Kind::Checkpoint);
    f.set_attr("/", "format_version", std::int64_t{0});
  });
  const std::string unversioned = make("unversioned.h5", [](h5::File& f) {
    f.set_attr("/", "format", std::string("routemoe-checkpoint"));
  });
  auto refused = [](const std::string& path, std::initializer_list<Kind> accept,
                    const std::string& expect) {
    const h5::File f = h5::File::open_read(path);
    const Error e = error_of([&] { check_header(f, path, accept); });
    EXPECT_EQ(e.kind(), ErrorKind::Data) << e.what();
    const std::string msg = e.detail();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;  // starts with the file
    EXPECT_NE(msg.find(expect), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  };
  refused(none, {Kind::Checkpoint, Kind::Trace},
          "not a routemoe checkpoint or trace (no 'format' attribute)");
  refused(other, {Kind::Trace, Kind::Checkpoint},
          "not a routemoe trace or checkpoint (format is 'hdf5-thing')");
  refused(trace, {Kind::Checkpoint}, "not a routemoe checkpoint (it is a routemoe trace)");
  refused(ckpt, {Kind::Trace}, "not a routemoe trace (it is a routemoe checkpoint)");
  refused(newer, {Kind::Trace},
          "routemoe-trace format_version 3 is not supported: it is newer than this build reads "
          "(2)");
  refused(zero, {Kind::Checkpoint}, "invalid format_version 0");
  refused(unversioned, {Kind::Checkpoint}, "routemoe-checkpoint without a 'format_version'");
}

TEST(RunfileRouters, JoinAndSplit) {
  EXPECT_EQ(join_routers({"topk", "similarity", "ac"}), "topk,similarity,ac");
  EXPECT_EQ(join_routers({}), "");
  EXPECT_EQ(split_routers("topk,similarity,ac"),
            (std::vector<std::string>{"topk", "similarity", "ac"}));
  EXPECT_EQ(split_routers(" topk , ac "), (std::vector<std::string>{"topk", "ac"}));
  EXPECT_TRUE(split_routers("").empty());
  EXPECT_EQ(split_routers("topk,,ac"), (std::vector<std::string>{"topk", "", "ac"}));
  const std::vector<std::string> one{"attention"};
  EXPECT_EQ(split_routers(join_routers(one)), one);
}

TEST(RunfileInfo, TraceRootRoundTripsAndRecordsComeInIndexOrder) {
  TempDir dir;
  const std::string path = dir.file("trace.h5");
  TraceInfo info;
  info.n_moe_layers = 2;
  info.top_k = 2;
  info.n_experts = 4;
  info.seq_len = 3;
  info.routers = {"topk", "ac"};
  info.config = "[model]\nn_experts = 4\n";
  info.probe_tokens = 6;
  const std::vector<std::int32_t> probe{5, 4, 3, 2, 1, 0};
  {
    h5::File f = h5::File::create(path);
    write_trace_info(f, info, probe.data());
    RoutingRecord r = sample_record();
    for (std::int64_t index : {2, 0, 10, 1}) {
      r.step = 100 + index;
      write_routing(f, trace_record_group(index), r);
    }
    f.close();
  }
  const h5::File f = h5::File::open_read(path);
  EXPECT_EQ(check_header(f, path, {Kind::Trace}).kind, Kind::Trace);
  EXPECT_EQ(f.attr_string("/", "routers"), "topk,ac");  // the documented attribute
  EXPECT_EQ(f.read_i32("probe/tokens"), probe);
  const TraceInfo back = read_trace_info(f);
  EXPECT_EQ(back.n_moe_layers, 2);
  EXPECT_EQ(back.top_k, 2);
  EXPECT_EQ(back.n_experts, 4);
  EXPECT_EQ(back.seq_len, 3);
  EXPECT_EQ(back.routers, info.routers);
  EXPECT_EQ(back.config, info.config);
  EXPECT_EQ(back.probe_tokens, 6);
  const std::vector<std::string> groups = trace_record_groups(f);
  EXPECT_EQ(groups, (std::vector<std::string>{"records/000000", "records/000001", "records/000002",
                                              "records/000010"}));
  EXPECT_EQ(read_routing(f, groups.back()).step, 110);
}

TEST(RunfileInfo, TraceWithAForeignRecordNameIsRefused) {
  TempDir dir;
  const std::string path = dir.file("trace.h5");
  {
    h5::File f = h5::File::create(path);
    write_routing(f, "records/000000", sample_record());
    write_routing(f, "records/latest", sample_record());
    f.close();
  }
  const h5::File f = h5::File::open_read(path);
  const Error e = error_of([&] { trace_record_groups(f); });
  EXPECT_EQ(e.kind(), ErrorKind::Data);
  EXPECT_NE(e.detail().find(path + ": unexpected member records/latest"), std::string::npos)
      << e.detail();
}

TEST(RunfileInfo, CheckpointRootRoundTripsAndRefusesANegativeStep) {
  TempDir dir;
  const std::string path = dir.file("ckpt.h5");
  CheckpointInfo info;
  info.step = 40;
  info.epoch = 2;
  info.data_seed = 99;
  info.world_size = 4;
  info.ep_size = 2;
  info.routers = {"topk", "similarity"};
  info.config = "[train]\nsteps = 40\n";
  {
    h5::File f = h5::File::create(path);
    write_checkpoint_info(f, info);
    f.close();
  }
  {
    const h5::File f = h5::File::open_read(path);
    EXPECT_EQ(check_header(f, path, {Kind::Checkpoint}).version, 1);
    for (const char* attr : {"step", "epoch", "data_seed", "world_size", "ep_size"})
      EXPECT_TRUE(f.has_attr("/", attr)) << attr;
    EXPECT_EQ(f.attr_string("/", "routers"), "topk,similarity");
    const CheckpointInfo back = read_checkpoint_info(f);
    EXPECT_EQ(back.step, 40);
    EXPECT_EQ(back.epoch, 2);
    EXPECT_EQ(back.data_seed, 99u);
    EXPECT_EQ(back.world_size, 4);
    EXPECT_EQ(back.ep_size, 2);
    EXPECT_EQ(back.routers, info.routers);
    EXPECT_EQ(back.config, info.config);
  }
  {
    h5::File f = h5::File::open_rw(path);
    f.set_attr("/", "step", std::int64_t{-3});
    f.close();
  }
  const h5::File f = h5::File::open_read(path);
  const Error e = error_of([&] { read_checkpoint_info(f); });
  EXPECT_EQ(e.kind(), ErrorKind::Data);
  EXPECT_NE(e.detail().find(path + ": negative step -3"), std::string::npos) << e.detail();
}

// The run id is an optional root attribute of both kinds: written when known, read back, and a
// file without it (written before run ids) still reads, with an empty id.
TEST(RunfileInfo, RunIdIsAnOptionalRootAttributeOfBothKinds) {
  TempDir dir;
  const std::string id = "0123456789abcdef0123456789abcdef";
  CheckpointInfo ckpt;
  ckpt.routers = {"topk"};
  TraceInfo trace;
  trace.n_moe_layers = 1;
  trace.top_k = 1;
  trace.n_experts = 2;
  trace.seq_len = 1;
  trace.routers = {"topk"};
  trace.probe_tokens = 1;
  const std::int32_t probe[1] = {7};
  for (const std::string& run_id : {id, std::string()}) {
    const std::string c = dir.file("ckpt" + run_id + ".h5"), t = dir.file("trace" + run_id + ".h5");
    ckpt.run_id = run_id;
    trace.run_id = run_id;
    {
      h5::File f = h5::File::create(c);
      write_checkpoint_info(f, ckpt);
      f.close();
      h5::File g = h5::File::create(t);
      write_trace_info(g, trace, probe);
      g.close();
    }
    const h5::File f = h5::File::open_read(c), g = h5::File::open_read(t);
    EXPECT_EQ(f.has_attr("/", "run_id"), !run_id.empty());
    EXPECT_EQ(g.has_attr("/", "run_id"), !run_id.empty());
    EXPECT_EQ(read_checkpoint_info(f).run_id, run_id);
    EXPECT_EQ(read_trace_info(g).run_id, run_id);
    EXPECT_EQ(read_run_id(f), run_id);
    EXPECT_EQ(check_header(f, c, {Kind::Checkpoint}).version, 1);  // no version change
  }
}

TEST(RunfileErrors, ReadingRethrowsOneDataLineNamingTheFile) {
  const std::string path = "/runs/a/ckpt_00000004.h5";
  // A value passes through.
  EXPECT_EQ(reading(path, [] { return 42; }), 42);
  // A user-facing error without the path: its detail, prefixed with the path.
  Error e = error_of([&] { reading(path, [] { RM_FAIL(Io, "cannot read it"); }); });
  EXPECT_EQ(e.kind(), ErrorKind::Data);
  EXPECT_EQ(e.detail(), path + ": cannot read it");
  // One that names the file already: the detail as it is (no call text, no second path).
  e = error_of(
      [&] { reading(path, [&] { RM_CHECK_KIND(Hdf5, 1 == 2, path + ": damaged\nchunk"); }); });
  EXPECT_EQ(e.kind(), ErrorKind::Data);
  EXPECT_EQ(e.detail(), path + ": damaged chunk");
  // Anything else: its message.
  e = error_of([&] { reading(path, [] { throw std::out_of_range("vector::at"); }); });
  EXPECT_EQ(e.detail(), path + ": vector::at");
  // An internal error keeps where it was raised.
  e = error_of([&] { reading(path, [] { RM_CHECK(false, "invariant"); }); });
  EXPECT_EQ(e.kind(), ErrorKind::Data);
  EXPECT_NE(e.detail().find("test_runfile.cpp:"), std::string::npos) << e.detail();
  EXPECT_NE(e.detail().find("invariant"), std::string::npos) << e.detail();
  EXPECT_EQ(e.detail().rfind(path + ": ", 0), 0u) << e.detail();
}

// ---- trace version 2 ----

// A record of 3 MoE layers (topk, ac, ac) over P = 8 tokens in `groups` token groups, k = 2,
// E = 4, d = 3: layer 0's top-1 choices leave expert 3 without tokens in group 0, and every ac
// layer's M_i is w[group of i, top-1 of i at the previous layer] of distinct random weights.
RoutingRecord ac_record(std::int64_t step, std::int64_t groups, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(0.5f, 3.0f);
  RoutingRecord r;
  r.step = step;
  r.epoch = step / 100;
  r.reason = "interval";
  r.tokens = 8;
  r.top_k = 2;
  r.d_model = 3;
  r.groups = groups;
  const std::int64_t E = 4, P = 8, d = 3;
  for (int m = 0; m < 3; ++m) {
    LayerRouting L;
    L.router = m == 0 ? "topk" : "ac";
    for (std::int64_t i = 0; i < P; ++i) {
      const auto first = static_cast<std::int32_t>(m == 0 ? i % 3 : (i * 5 + seed + m) % E);
      L.experts.insert(L.experts.end(), {first, static_cast<std::int32_t>((first + 1) % E)});
      L.gates.insert(L.gates.end(), {uni(rng), uni(rng)});
      L.probs.insert(L.probs.end(), {uni(rng), uni(rng)});
    }
    if (m > 0) {
      std::vector<float> w(static_cast<std::size_t>(groups * E * d));
      for (float& x : w) x = uni(rng);
      const std::vector<std::int32_t>& prev = r.layers.back().experts;
      for (std::int64_t i = 0; i < P; ++i) {
        const std::int64_t g = i / (P / groups), e = prev[static_cast<std::size_t>(i * 2)];
        L.ac_scale.insert(L.ac_scale.end(), w.begin() + (g * E + e) * d,
                          w.begin() + (g * E + e + 1) * d);
      }
    }
    r.layers.push_back(std::move(L));
  }
  return r;
}

TraceInfo ac_info() {
  TraceInfo info;
  info.n_moe_layers = 3;
  info.top_k = 2;
  info.n_experts = 4;
  info.seq_len = 2;
  info.d_model = 3;
  info.routers = {"topk", "ac", "ac"};
  info.config = "[model]\nn_experts = 4\n";
  info.probe_tokens = 8;
  return info;
}

const std::vector<std::int32_t> kProbe{7, 6, 5, 4, 3, 2, 1, 0};

// Everything of `b` in `a`, the AC weights compared per token (a holds per-expert ones).
void expect_same_routing(const RoutingRecord& a, const RoutingRecord& b) {
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.epoch, b.epoch);
  EXPECT_EQ(a.reason, b.reason);
  EXPECT_EQ(a.groups, b.groups);
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (std::size_t m = 0; m < a.layers.size(); ++m) {
    EXPECT_EQ(a.layers[m].router, b.layers[m].router) << "layer " << m;
    EXPECT_EQ(a.layers[m].experts, b.layers[m].experts) << "layer " << m;
    EXPECT_EQ(a.layers[m].gates, b.layers[m].gates) << "layer " << m;
    EXPECT_EQ(a.layers[m].probs, b.layers[m].probs) << "layer " << m;
    EXPECT_EQ(ac_token_weights(a, m), b.layers[m].ac_scale) << "layer " << m;  // bit-exact
  }
}

TEST(RunfileAc, PerExpertWeightsAreTheRowsEveryTokenOfTheGroupCarries) {
  RoutingRecord r = ac_record(10, 2, 1);
  derive_ac_weights(r, 4);
  ASSERT_EQ(r.layers[1].ac_weights.size(), 2u * 4 * 3);
  // Layer 0 top-1 is i % 3: group 0 (tokens 0..3) chose 0, 1, 2, 0; group 1 (4..7) 1, 2, 0, 1.
  EXPECT_EQ(r.layers[1].ac_present, (std::vector<std::uint8_t>{1, 1, 1, 0, 1, 1, 1, 0}));
  for (std::int64_t i = 0; i < 8; ++i) {  // M_i = w[group, c_i]
    const std::int64_t g = i / 4, e = i % 3;
    for (std::int64_t j = 0; j < 3; ++j) {
      EXPECT_EQ(r.layers[1].ac_scale[static_cast<std::size_t>(i * 3 + j)],
                r.layers[1].ac_weights[static_cast<std::size_t>((g * 4 + e) * 3 + j)]);
    }
  }
  EXPECT_TRUE(r.layers[0].ac_weights.empty());
  // The expansion gives M back bit for bit once ac_scale is gone.
  RoutingRecord lean = r;
  for (LayerRouting& L : lean.layers) L.ac_scale.clear();
  for (std::size_t m = 0; m < 3; ++m) EXPECT_EQ(ac_token_weights(lean, m), r.layers[m].ac_scale);
  // Two groups' weights taken as one group do not fit: an internal error, never a silent mix.
  RoutingRecord wrong = ac_record(10, 2, 1);
  wrong.groups = 1;
  EXPECT_EQ(error_of([&] { derive_ac_weights(wrong, 4); }).kind(), ErrorKind::Check);
  // ... while inference (for version-1 files, which do not record the groups) finds 2.
  EXPECT_EQ(infer_ac_groups(wrong, 4, 2), 2);
  EXPECT_EQ(wrong.layers[2].ac_weights, r.layers[2].ac_weights);
}

TEST(RunfileAc, DerivedWeightsAreTheAcRoutersOwn) {
  // The router's per-expert weights (Router::expert_weights) against the rows derive_ac_weights
  // recovers from its per-token M: equal bit for bit for every expert with tokens, and the
  // present flags are exactly the experts with tokens.
  using namespace routemoe::layers;
  const std::int64_t B = 2, T = 5, d = 6, E = 4, N = B * T;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> u(static_cast<std::size_t>(N * d)), emb(static_cast<std::size_t>(E * d));
  for (float& x : u) x = normal(rng);
  for (float& x : emb) x = normal(rng);
  std::vector<std::int32_t> prev(static_cast<std::size_t>(N));
  for (std::int64_t i = 0; i < N; ++i) prev[i] = static_cast<std::int32_t>((i * 7 + 3) % (E - 1));
  Arena arena("test", Device::CPU);
  auto router = make_router<float>(RouterOptions{RouterKind::AC, 1.0, true});
  const float* w[] = {emb.data()};
  RouterInputs<float> in;
  in.u = u.data();
  in.prev_top1 = prev.data();
  router->forward(Exec::cpu(), RouterDims{B, T, d, E}, w, in, arena);
  const AcExpertWeights<float> own = router->expert_weights();
  ASSERT_NE(own.w, nullptr);
  ASSERT_NE(own.count, nullptr);
  RoutingRecord r;
  r.tokens = N;
  r.top_k = 1;
  r.d_model = d;
  r.groups = 1;
  r.layers.resize(2);
  r.layers[0].experts = prev;  // the previous layer's top-1 (k = 1)
  r.layers[1].ac_scale.assign(router->feature_weights(), router->feature_weights() + N * d);
  derive_ac_weights(r, E);
  for (std::int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(r.layers[1].ac_present[static_cast<std::size_t>(e)], own.count[e] > 0 ? 1 : 0);
    if (own.count[e] <= 0) continue;
    for (std::int64_t j = 0; j < d; ++j) {
      EXPECT_EQ(r.layers[1].ac_weights[static_cast<std::size_t>(e * d + j)], own.w[e * d + j])
          << "expert " << e << " feature " << j;
    }
  }
  EXPECT_EQ(r.layers[1].ac_present[3], 0);  // expert 3 had no tokens
  // A router without AC statistics reports none.
  auto topk = make_router<float>(RouterOptions{RouterKind::TopK, 1.0, true});
  EXPECT_EQ(topk->expert_weights().w, nullptr);
}

TEST(RunfileTraceV2, CreateAppendReadKeepEveryRecord) {
  TempDir dir;
  const std::string path = dir.file("trace.h5");
  const TraceInfo info = ac_info();
  std::vector<RoutingRecord> recs{ac_record(10, 2, 1), ac_record(20, 1, 2), ac_record(30, 2, 3)};
  append_trace_record(path, info, kProbe.data(), recs[0]);  // creates it
  append_trace_record(path, info, kProbe.data(), recs[1]);
  append_trace_record(path, info, kProbe.data(), recs[2]);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  const h5::File f = h5::File::open_read(path);
  EXPECT_EQ(check_header(f, path, {Kind::Trace}).version, 2);
  EXPECT_EQ(trace_record_count(f), 3);
  // The documented layout (docs/checkpoint-format.md, "Trace file, version 2").
  EXPECT_EQ(f.read_i64("records/step"), (std::vector<std::int64_t>{10, 20, 30}));
  EXPECT_EQ(f.read_i64("records/groups"), (std::vector<std::int64_t>{2, 1, 2}));
  EXPECT_EQ(f.read_i64("records/ac_row"), (std::vector<std::int64_t>{0, 2, 3}));
  EXPECT_EQ(f.shape_of("records/layer0/experts"), (Shape{3, 8, 2}));
  EXPECT_EQ(f.shape_of("records/layer2/ac_weights"), (Shape{5, 4, 3}));
  EXPECT_EQ(f.shape_of("records/layer2/ac_present"), (Shape{5, 4}));
  EXPECT_FALSE(f.exists("records/layer0/ac_weights"));
  EXPECT_EQ(f.attr_string("records/layer1", "router"), "ac");
  EXPECT_EQ(f.attr_int("/", "d_model"), 3);
  const TraceInfo back = read_trace_info(f);
  EXPECT_EQ(back.version, 2);
  EXPECT_EQ(back.d_model, 3);
  const std::vector<RoutingRecord> got = read_trace_records(f);
  ASSERT_EQ(got.size(), 3u);
  for (std::size_t r = 0; r < 3; ++r) {
    expect_same_routing(got[r], recs[r]);
    EXPECT_EQ(got[r].origin, fmt::format("{}:records[{}]", path, r));
  }
  // Without values: experts and routers only.
  RoutingExpect lean;
  lean.values = false;
  const std::vector<RoutingRecord> few = read_trace_records(f, lean);
  EXPECT_EQ(few[2].layers[1].experts, recs[2].layers[1].experts);
  EXPECT_TRUE(few[2].layers[1].gates.empty());
  EXPECT_TRUE(few[2].layers[1].ac_weights.empty());
}

TEST(RunfileTraceV2, GraphDiagnosticsAreAnOptionalPerLayerDataset) {
  TempDir dir;
  const TraceInfo info = ac_info();
  // A trace of records with graph diagnostics on layer 0 (values exact in float).
  const std::string with = dir.file("with.h5");
  std::vector<RoutingRecord> recs{ac_record(10, 1, 1), ac_record(20, 1, 2)};
  recs[0].layers[0].graph = {0.5f, 1.25f, 3.5f, 0.75f};
  recs[1].layers[0].graph = {0.25f, 2.0f, 7.5f, 1.0f};
  for (const RoutingRecord& r : recs) append_trace_record(with, info, kProbe.data(), r);
  {
    const h5::File f = h5::File::open_read(with);
    EXPECT_EQ(f.shape_of("records/layer0/graph"), (Shape{2, kGraphStats}));
    EXPECT_FALSE(f.exists("records/layer1/graph"));
    RoutingExpect lean;  // read with or without the values
    lean.values = false;
    for (const RoutingExpect& e : {RoutingExpect{}, lean}) {
      const std::vector<RoutingRecord> got = read_trace_records(f, e);
      ASSERT_EQ(got.size(), 2u);
      for (std::size_t r = 0; r < 2; ++r) {
        EXPECT_EQ(got[r].layers[0].graph, recs[r].layers[0].graph);
        EXPECT_TRUE(got[r].layers[1].graph.empty());
      }
    }
  }
  // A trace without them (older writers) still reads, and appending a record that has them
  // writes none (the column does not exist).
  const std::string without = dir.file("without.h5");
  append_trace_record(without, info, kProbe.data(), ac_record(10, 1, 1));
  append_trace_record(without, info, kProbe.data(), recs[1]);
  const h5::File f = h5::File::open_read(without);
  EXPECT_FALSE(f.exists("records/layer0/graph"));
  const std::vector<RoutingRecord> got = read_trace_records(f);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_TRUE(got[1].layers[0].graph.empty());
  EXPECT_EQ(got[1].layers[0].experts, recs[1].layers[0].experts);
}

TEST(RunfileTraceV2, RowsBeyondTheCommittedStepsAreIgnored) {
  // What an append killed after its data but before records/step leaves: longer data columns.
  TempDir dir;
  const std::string path = dir.file("trace.h5");
  const TraceInfo info = ac_info();
  create_trace(path, info, kProbe.data(), {ac_record(10, 2, 1), ac_record(20, 2, 2)});
  {
    h5::File f = h5::File::open_append(path);
    const RoutingRecord extra = ac_record(30, 2, 3);
    f.write_rows("records/layer0/experts", h5::File::Elem::I32, 2, 1,
                 extra.layers[0].experts.data());
    f.write_rows("records/epoch", h5::File::Elem::I64, 2, 1, &extra.epoch);
    f.close();
  }
  const h5::File f = h5::File::open_read(path);
  EXPECT_EQ(f.shape_of("records/layer0/experts"), (Shape{3, 8, 2}));
  EXPECT_EQ(read_trace_records(f).size(), 2u);
  EXPECT_EQ(trace_record_count(f), 2);
}

TEST(RunfileTraceV2, AppendRefusesARecordOfAnotherShape) {
  TempDir dir;
  const std::string path = dir.file("trace.h5");
  const TraceInfo info = ac_info();
  append_trace_record(path, info, kProbe.data(), ac_record(10, 2, 1));
  RoutingRecord other = ac_record(20, 2, 2);
  other.layers.pop_back();
  const Error e = error_of([&] { append_trace_record(path, info, kProbe.data(), other); });
  EXPECT_EQ(e.kind(), ErrorKind::Data);
  EXPECT_NE(e.detail().find(path + ": the trace holds records of 3 MoE layers"), std::string::npos)
      << e.detail();
  const h5::File f = h5::File::open_read(path);
  EXPECT_EQ(trace_record_count(f), 1);
}

TEST(RunfileTraceV2, TruncateKeepsTheRecordsUpToAStep) {
  TempDir dir;
  const std::string path = dir.file("trace.h5");
  const TraceInfo info = ac_info();
  std::vector<RoutingRecord> recs;
  for (int r = 0; r < 5; ++r) {
    recs.push_back(ac_record(10 * (r + 1), 1 + r % 2, static_cast<unsigned>(r)));
    append_trace_record(path, info, kProbe.data(), recs.back());
  }
  EXPECT_EQ(truncate_trace(path, 50), 5);  // nothing after step 50
  EXPECT_EQ(truncate_trace(path, 35), 3);
  {
    const h5::File f = h5::File::open_read(path);
    const std::vector<RoutingRecord> got = read_trace_records(f);
    ASSERT_EQ(got.size(), 3u);
    for (std::size_t r = 0; r < 3; ++r) expect_same_routing(got[r], recs[r]);
    EXPECT_EQ(f.shape_of("records/layer1/ac_weights"), (Shape{1 + 2 + 1, 4, 3}));
  }
  append_trace_record(path, info, kProbe.data(), recs[3]);  // the resumed run appends again
  {
    const h5::File f = h5::File::open_read(path);
    EXPECT_EQ(read_trace_records(f).size(), 4u);
  }
  EXPECT_EQ(truncate_trace(path, 5), 0);  // before the first record: no trace left
  EXPECT_FALSE(fs::exists(path));
}

TEST(RunfileTraceV1, StillReadAndRewrittenAsVersion2OnTheNextAppend) {
  // A version-1 trace of a 2-rank run (M_i from 2 token groups, which version 1 did not record).
  TempDir dir;
  const std::string path = dir.file("trace.h5");
  TraceInfo info = ac_info();
  std::vector<RoutingRecord> recs{ac_record(10, 2, 1), ac_record(20, 2, 2)};
  {
    h5::File f = h5::File::create(path);
    write_trace_info(f, info, kProbe.data());
    f.set_attr("/", "format_version", std::int64_t{1});
    for (std::size_t r = 0; r < recs.size(); ++r) {
      write_routing(f, trace_record_group(static_cast<std::int64_t>(r)), recs[r]);
    }
    f.close();
  }
  {
    const h5::File f = h5::File::open_read(path);
    EXPECT_EQ(check_header(f, path, {Kind::Trace}).version, 1);
    EXPECT_EQ(trace_record_count(f), 2);
    const std::vector<RoutingRecord> got = read_trace_records(f);
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(got[1].layers[2].ac_scale, recs[1].layers[2].ac_scale);  // per token, as written
    EXPECT_TRUE(got[1].layers[2].ac_weights.empty());
  }
  recs.push_back(ac_record(30, 2, 3));
  append_trace_record(path, info, kProbe.data(), recs.back());
  const h5::File f = h5::File::open_read(path);
  EXPECT_EQ(check_header(f, path, {Kind::Trace}).version, 2);
  const std::vector<RoutingRecord> got = read_trace_records(f);
  ASSERT_EQ(got.size(), 3u);
  for (std::size_t r = 0; r < 3; ++r) expect_same_routing(got[r], recs[r]);  // groups 2 inferred
  EXPECT_FALSE(f.exists("records/000000"));
}

}  // namespace
}  // namespace routemoe::runfile
