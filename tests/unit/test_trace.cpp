// Trace analysis (framework/trace): synthetic trace and checkpoint files written exactly as
// docs/checkpoint-format.md specifies, with answers computed by hand.

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "framework/error.h"
#include "framework/h5.h"
#include "framework/trace/analysis.h"
#include "framework/trace/svg.h"

namespace routemoe::trace {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            (std::string("routemoe_test_trace_") + std::to_string(::getpid()) + "_" +
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

// The hand-designed fixture: P = 4 probe tokens, 2 MoE layers, k = 2, E = 4, 3 records at
// steps 0, 10, 20 (epochs 0, 1, 2; 10 steps per epoch). experts[record][layer] is [P, k].
//
// layer 0: r0 (0,1) (1,2) (2,3) (3,0)
//          r1 (1,0) (1,2) (2,3) (3,0)   token 0 swaps order: top-1 flips, set unchanged
//          r2 (1,0) (2,1) (3,1) (3,0)   token 1 swaps, token 2 changes top-1 and set
//   r0->r1: flip 1/4 = 0.25, set change 0;  r1->r2: flip 2/4 = 0.5, set change 1/4 = 0.25
//   last-change epochs: t0 1, t1 2, t2 2, t3 never (0) -> {0: 1, 1: 1, 2: 2}, mean 1.25
//   load at r2: top-1 (1, 2, 3, 3) -> counts (0, 1, 1, 2), entropy 1.5 ln 2, / ln 4 = 0.75
// layer 1: r0 (0,1) (0,2) (1,2) (2,3)
//          r1 same as r0                no change
//          r2 (1,0) (2,3) (2,1) (2,3)   t0 swaps, t1 new set, t2 swaps
//   r0->r1: 0 / 0;  r1->r2: flip 3/4 = 0.75, set change 1/4 = 0.25
//   last-change epochs: t0 2, t1 2, t2 2, t3 never -> {0: 1, 1: 0, 2: 3}, mean 1.5
//   load at r2: top-1 (1, 2, 2, 2) -> counts (0, 1, 3, 0), entropy -(.25 ln .25 + .75 ln .75)
// agreement of layers 0 and 1 (same top-1): r0 1/4, r1 0, r2 (1,2,3,3) vs (1,2,2,2) 2/4;
//   last 0.5, mean (0.25 + 0 + 0.5) / 3 = 0.25
const std::vector<std::vector<std::vector<std::int32_t>>> kExperts = {
    {{0, 1, 1, 2, 2, 3, 3, 0}, {0, 1, 0, 2, 1, 2, 2, 3}},
    {{1, 0, 1, 2, 2, 3, 3, 0}, {0, 1, 0, 2, 1, 2, 2, 3}},
    {{1, 0, 2, 1, 3, 1, 3, 0}, {1, 0, 2, 3, 2, 1, 2, 3}},
};
const std::int64_t kSteps[] = {0, 10, 20};
const std::int64_t kEpochs[] = {0, 1, 2};
const char* const kReasons[] = {"checkpoint", "epoch_end", "final"};

struct TraceSpec {
  std::string format = "routemoe-trace";
  std::int64_t version = 1;
  std::int64_t probe = 4, top_k = 2, n_experts = 4, n_layers = 2;
  std::vector<std::vector<std::vector<std::int32_t>>> experts = kExperts;
  std::vector<std::int64_t> steps{kSteps, kSteps + 3};
  std::vector<std::int64_t> epochs{kEpochs, kEpochs + 3};
  // Record `bad_record` gets experts of shape [bad_p, bad_k] in layer 1 (when bad_record >= 0).
  int bad_record = -1;
  std::int64_t bad_p = 0, bad_k = 0;
  // Record whose layer 1 experts dataset is left out (when >= 0).
  int missing_record = -1;
};

std::vector<float> fill(std::size_t n, float v) {
  return std::vector<float>(n, v);
}

// Writes one routing record group (docs/checkpoint-format.md "Routing record").
void write_record(h5::File& f, const std::string& group, const TraceSpec& s, std::size_t r) {
  for (std::int64_t m = 0; m < s.n_layers; ++m) {
    const std::string layer = group + "/layer" + std::to_string(m);
    std::vector<std::int32_t> ex = s.experts[r][static_cast<std::size_t>(m)];
    Shape shape{s.probe, s.top_k};
    if (static_cast<int>(r) == s.bad_record && m == 1) {
      shape = {s.bad_p, s.bad_k};
      ex.assign(static_cast<std::size_t>(s.bad_p * s.bad_k), 0);
    }
    if (static_cast<int>(r) == s.missing_record && m == 1) {
      f.write_f32(layer + "/gates", fill(ex.size(), 0.5f).data(), shape);
      continue;
    }
    f.write_i32(layer + "/experts", ex.data(), shape);
    f.write_f32(layer + "/gates", fill(ex.size(), 0.5f).data(), shape);
    f.write_f32(layer + "/probs", fill(ex.size(), 0.25f).data(), shape);
    f.set_attr(layer, "router", std::string("topk"));
  }
  f.set_attr(group, "step", s.steps[r]);
  f.set_attr(group, "epoch", s.epochs[r]);
  f.set_attr(group, "reason", std::string(kReasons[std::min<std::size_t>(r, 2)]));
}

std::string config_toml(const TraceSpec& s) {
  return "[model]\nn_layers = 2\nn_experts = " + std::to_string(s.n_experts) +
         "\ntop_k = " + std::to_string(s.top_k) + "\n\n[train]\nsteps = 20\n";
}

void write_trace(const std::string& path, const TraceSpec& s = {}) {
  h5::File f = h5::File::create(path);
  f.set_attr("/", "format", s.format);
  f.set_attr("/", "format_version", s.version);
  f.set_attr("/", "config", config_toml(s));
  f.set_attr("/", "n_moe_layers", s.n_layers);
  f.set_attr("/", "top_k", s.top_k);
  f.set_attr("/", "n_experts", s.n_experts);
  f.set_attr("/", "seq_len", std::int64_t{2});
  f.set_attr("/", "routers", std::string("topk,topk"));
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(s.probe), 7);
  f.write_i32("/probe/tokens", tokens.data(), {s.probe});
  for (std::size_t r = 0; r < s.experts.size(); ++r) {
    char name[32];
    std::snprintf(name, sizeof(name), "/records/%06zu", r);
    write_record(f, name, s, r);
  }
  f.close();
}

// A checkpoint holding record r of the spec as its /routing group.
void write_checkpoint(const std::string& path, std::size_t r, const TraceSpec& s = {}) {
  h5::File f = h5::File::create(path);
  f.set_attr("/", "format", std::string("routemoe-checkpoint"));
  f.set_attr("/", "format_version", s.version);
  f.set_attr("/", "config", config_toml(s));
  f.set_attr("/", "step", s.steps[r]);
  f.set_attr("/", "epoch", s.epochs[r]);
  f.set_attr("/", "world_size", std::int64_t{1});
  f.set_attr("/", "ep_size", std::int64_t{1});
  f.set_attr("/", "data_seed", std::int64_t{1});
  const float w[4] = {1, 2, 3, 4};
  f.write_f32("/params/tok_emb", w, {2, 2});
  write_record(f, "/routing", s, r);
  f.close();
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

const PairFlip& flip(const RunMetrics& m, std::size_t to_record, std::int64_t layer) {
  for (const PairFlip& p : m.flips) {
    if (p.to_record == to_record && p.layer == layer) return p;
  }
  throw std::runtime_error("no such pair");
}

void expect_fixture_metrics(const RunMetrics& m) {
  ASSERT_EQ(m.flips.size(), 4u);
  EXPECT_DOUBLE_EQ(flip(m, 1, 0).top1_flip_rate, 0.25);
  EXPECT_DOUBLE_EQ(flip(m, 1, 0).topk_change_rate, 0.0);  // order swapped, same set
  EXPECT_DOUBLE_EQ(flip(m, 2, 0).top1_flip_rate, 0.5);
  EXPECT_DOUBLE_EQ(flip(m, 2, 0).topk_change_rate, 0.25);
  EXPECT_DOUBLE_EQ(flip(m, 1, 1).top1_flip_rate, 0.0);
  EXPECT_DOUBLE_EQ(flip(m, 1, 1).topk_change_rate, 0.0);
  EXPECT_DOUBLE_EQ(flip(m, 2, 1).top1_flip_rate, 0.75);
  EXPECT_DOUBLE_EQ(flip(m, 2, 1).topk_change_rate, 0.25);
  EXPECT_EQ(flip(m, 2, 1).from_step, 10);
  EXPECT_EQ(flip(m, 2, 1).to_step, 20);
  EXPECT_EQ(flip(m, 2, 1).from_epoch, 1);
  EXPECT_EQ(flip(m, 2, 1).to_epoch, 2);

  ASSERT_EQ(m.last_change.size(), 2u);
  const LastChange& l0 = m.last_change[0];
  ASSERT_EQ(l0.bins.size(), 3u);
  EXPECT_EQ(l0.bins[0].epoch, 0);
  EXPECT_EQ(l0.bins[0].tokens, 1);
  EXPECT_EQ(l0.bins[1].epoch, 1);
  EXPECT_EQ(l0.bins[1].tokens, 1);
  EXPECT_EQ(l0.bins[2].epoch, 2);
  EXPECT_EQ(l0.bins[2].tokens, 2);
  EXPECT_DOUBLE_EQ(l0.bins[2].share, 0.5);
  EXPECT_EQ(l0.never_changed, 1);
  EXPECT_DOUBLE_EQ(l0.mean_epoch, 1.25);
  EXPECT_DOUBLE_EQ(l0.mean_step, 12.5);  // (10 + 20 + 20 + 0) / 4
  const LastChange& l1 = m.last_change[1];
  ASSERT_EQ(l1.bins.size(), 3u);
  EXPECT_EQ(l1.bins[0].tokens, 1);
  EXPECT_EQ(l1.bins[1].tokens, 0);
  EXPECT_EQ(l1.bins[2].tokens, 3);
  EXPECT_EQ(l1.never_changed, 1);
  EXPECT_DOUBLE_EQ(l1.mean_epoch, 1.5);
  EXPECT_DOUBLE_EQ(l1.mean_step, 15.0);

  ASSERT_EQ(m.load.size(), 2u);
  EXPECT_EQ(m.load[0].step, 20);
  EXPECT_EQ(m.load[0].counts, (std::vector<std::int64_t>{0, 1, 1, 2}));
  EXPECT_EQ(m.load[0].shares, (std::vector<double>{0, 0.25, 0.25, 0.5}));
  EXPECT_NEAR(m.load[0].entropy, 1.5 * std::log(2.0), 1e-12);
  EXPECT_NEAR(m.load[0].entropy_norm, 0.75, 1e-12);
  EXPECT_EQ(m.load[1].counts, (std::vector<std::int64_t>{0, 1, 3, 0}));
  const double h1 = -(0.25 * std::log(0.25) + 0.75 * std::log(0.75));
  EXPECT_NEAR(m.load[1].entropy, h1, 1e-12);
  EXPECT_NEAR(m.load[1].entropy_norm, h1 / std::log(4.0), 1e-12);

  ASSERT_EQ(m.agreement.size(), 1u);
  EXPECT_EQ(m.agreement[0].layer_a, 0);
  EXPECT_EQ(m.agreement[0].layer_b, 1);
  EXPECT_DOUBLE_EQ(m.agreement[0].last, 0.5);
  EXPECT_DOUBLE_EQ(m.agreement[0].mean, 0.25);
  EXPECT_TRUE(m.notes.empty());
}

// The fixture as an in-memory run (no files).
trace::Run fixture_run() {
  trace::Run run;
  run.label = "mem";
  run.n_probe = 4;
  run.top_k = 2;
  run.n_experts = 4;
  run.n_moe_layers = 2;
  for (std::size_t r = 0; r < 3; ++r) {
    Record rec;
    rec.step = kSteps[r];
    rec.epoch = kEpochs[r];
    rec.reason = kReasons[r];
    for (const auto& ex : kExperts[r]) {
      LayerRouting layer;
      layer.router = "topk";
      layer.experts = ex;
      rec.layers.push_back(layer);
    }
    run.records.push_back(rec);
  }
  return run;
}

// A minimal XML well-formedness check: balanced tags, quoted attributes, one root element.
bool well_formed(const std::string& xml, std::string* why) {
  std::vector<std::string> stack;
  std::size_t i = 0, roots = 0;
  while ((i = xml.find('<', i)) != std::string::npos) {
    const std::size_t end = xml.find('>', i);
    if (end == std::string::npos) return *why = "unterminated tag", false;
    std::string tag = xml.substr(i + 1, end - i - 1);
    i = end + 1;
    if (std::count(tag.begin(), tag.end(), '"') % 2 != 0) return *why = "quote in " + tag, false;
    if (tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name) return *why = "unbalanced </" + name + ">", false;
      stack.pop_back();
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" \n/"));
    if (stack.empty()) ++roots;
    if (tag.back() != '/') stack.push_back(name);
  }
  if (!stack.empty()) return *why = "unclosed <" + stack.back() + ">", false;
  if (roots != 1) return *why = "roots: " + std::to_string(roots), false;
  return true;
}

std::size_t count_of(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t i = s.find(what); i != std::string::npos; i = s.find(what, i + 1)) ++n;
  return n;
}

// ---- pure functions ----

TEST(TracePure, FlipAndSetChange) {
  const std::vector<std::int32_t> a{0, 1, 2, 3}, swapped{1, 0, 3, 2}, other{0, 2, 2, 3};
  EXPECT_DOUBLE_EQ(top1_flip_rate(a, a, 2), 0.0);
  EXPECT_DOUBLE_EQ(top1_flip_rate(a, swapped, 2), 1.0);
  EXPECT_DOUBLE_EQ(topk_change_rate(a, swapped, 2), 0.0);
  EXPECT_DOUBLE_EQ(top1_flip_rate(a, other, 2), 0.0);
  EXPECT_DOUBLE_EQ(topk_change_rate(a, other, 2), 0.5);
  EXPECT_THROW(top1_flip_rate(a, {0, 1}, 2), Error);
}

TEST(TracePure, LoadEntropyAndAgreement) {
  EXPECT_EQ(expert_counts({3, 0, 3, 1, 0, 2}, 2, 4), (std::vector<std::int64_t>{1, 0, 0, 2}));
  EXPECT_NEAR(entropy_nats({5, 5, 5, 5}), std::log(4.0), 1e-12);
  EXPECT_DOUBLE_EQ(entropy_nats({7, 0, 0}), 0.0);
  EXPECT_DOUBLE_EQ(entropy_nats({0, 0}), 0.0);
  EXPECT_NEAR(entropy_nats({1, 3}), -(0.25 * std::log(0.25) + 0.75 * std::log(0.75)), 1e-12);
  EXPECT_DOUBLE_EQ(top1_agreement({0, 1, 2, 3, 1, 0}, {0, 3, 1, 2, 1, 0}, 2), 2.0 / 3.0);
}

TEST(TracePure, FixtureInMemory) {
  const trace::Run run = fixture_run();
  validate(run);
  expect_fixture_metrics(analyse(run));
}

TEST(TracePure, ValidateRejectsOutOfRangeAndMismatch) {
  trace::Run run = fixture_run();
  run.records[1].layers[0].experts[3] = 4;
  EXPECT_NE(error_of([&] { validate(run); }).find("outside [0, 4)"), std::string::npos);
  run = fixture_run();
  run.records[2].layers[1].experts.resize(6);
  EXPECT_NE(error_of([&] { validate(run); }).find("same probe tokens"), std::string::npos);
}

TEST(TracePure, OneRecordHasNoPairs) {
  trace::Run run = fixture_run();
  run.records.resize(1);
  const RunMetrics m = analyse(run);
  EXPECT_TRUE(m.flips.empty());
  EXPECT_TRUE(m.last_change.empty());
  ASSERT_EQ(m.load.size(), 2u);
  EXPECT_EQ(m.load[0].counts, (std::vector<std::int64_t>{1, 1, 1, 1}));
  EXPECT_NEAR(m.load[0].entropy_norm, 1.0, 1e-12);
  ASSERT_EQ(m.agreement.size(), 1u);
  EXPECT_DOUBLE_EQ(m.agreement[0].last, 0.25);
  ASSERT_FALSE(m.notes.empty());
  const std::string table = format_table({m});
  EXPECT_NE(table.find("no pairs"), std::string::npos) << table;
  EXPECT_NE(table.find("note:"), std::string::npos) << table;
  const std::string svg = fluctuation_svg({m});
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(count_of(svg, "<polyline"), 0u);
  EXPECT_NE(svg.find("no pairs"), std::string::npos);
  EXPECT_EQ(flips_csv({m}),
            "run,layer,from_step,to_step,from_epoch,to_epoch,top1_flip_rate,topk_change_rate\n");

  run.records.clear();
  const RunMetrics empty = analyse(run);
  EXPECT_TRUE(empty.load.empty());
  EXPECT_TRUE(empty.agreement.empty());
  EXPECT_NE(format_table({empty}).find("no routing records"), std::string::npos);
  std::string why;
  EXPECT_TRUE(well_formed(load_svg({empty}), &why)) << why;
}

TEST(TracePure, OneEpochGetsANote) {
  trace::Run run = fixture_run();
  for (trace::Record& r : run.records) r.epoch = 0;
  const RunMetrics m = analyse(run);
  ASSERT_EQ(m.notes.size(), 1u);
  EXPECT_NE(m.notes[0].find("all records are in epoch 0"), std::string::npos);
  ASSERT_EQ(m.last_change[0].bins.size(), 1u);
  EXPECT_EQ(m.last_change[0].bins[0].tokens, 4);
  EXPECT_DOUBLE_EQ(m.last_change[0].mean_step, 12.5);
}

TEST(TracePure, NiceTicks) {
  EXPECT_EQ(nice_ticks(0, 1, 5), (std::vector<double>{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}));
  const auto t = nice_ticks(0, 0.37, 6);
  EXPECT_DOUBLE_EQ(t.front(), 0);
  EXPECT_GE(t.back(), 0.37);
  EXPECT_LE(t.size(), 10u);
  const auto same = nice_ticks(3, 3, 5);
  EXPECT_LT(same.front(), 3);
  EXPECT_GT(same.back(), 3);
}

// ---- files ----

TEST(TraceFile, ReadsTheSyntheticTrace) {
  TempDir dir;
  const std::string path = dir.file("trace.h5");
  write_trace(path);
  const trace::Run run = read_trace(path);
  EXPECT_EQ(run.n_probe, 4);
  EXPECT_EQ(run.top_k, 2);
  EXPECT_EQ(run.n_experts, 4);
  EXPECT_EQ(run.n_moe_layers, 2);
  EXPECT_EQ(run.routers, (std::vector<std::string>{"topk", "topk"}));
  ASSERT_EQ(run.records.size(), 3u);
  EXPECT_EQ(run.records[1].reason, "epoch_end");
  EXPECT_EQ(run.records[2].step, 20);
  expect_fixture_metrics(analyse(run));
  EXPECT_DOUBLE_EQ(steps_per_epoch(run), 10.0);
}

TEST(TraceFile, RunDirectoriesAndCheckpointsGiveTheSameAnswers) {
  TempDir dir;
  fs::create_directories(dir.file("runA/checkpoints"));
  write_trace(dir.file("runA/trace.h5"));
  // The checkpoints of run B, given out of order: they are sorted by step.
  fs::create_directories(dir.file("runB/checkpoints"));
  for (std::size_t r : {2u, 0u, 1u}) {
    char name[64];
    std::snprintf(name, sizeof(name), "runB/checkpoints/ckpt_%08lld.h5",
                  static_cast<long long>(kSteps[r]));
    write_checkpoint(dir.file(name), r);
  }
  const std::vector<trace::Run> runs =
      load_runs({dir.file("runA"), dir.file("runB/checkpoints/ckpt_00000020.h5"),
                 dir.file("runB/checkpoints/ckpt_00000000.h5"),
                 dir.file("runB/checkpoints/ckpt_00000010.h5")},
                {});
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].label, "runA");
  EXPECT_EQ(runs[1].label, "runB");
  EXPECT_EQ(runs[1].sources.size(), 3u);
  EXPECT_EQ(runs[1].n_experts, 4);  // from the [model] section of the config attribute
  ASSERT_EQ(runs[1].records.size(), 3u);
  EXPECT_EQ(runs[1].records[0].step, 0);
  EXPECT_EQ(runs[1].records[2].step, 20);
  for (const trace::Run& run : runs) expect_fixture_metrics(analyse(run));

  // A run directory without trace.h5 falls back to its checkpoints; labels can be given.
  const std::vector<trace::Run> by_dir = load_runs({dir.file("runB")}, {"ac"});
  ASSERT_EQ(by_dir.size(), 1u);
  EXPECT_EQ(by_dir[0].label, "ac");
  EXPECT_EQ(by_dir[0].records.size(), 3u);
  EXPECT_NE(error_of([&] {
              load_runs({dir.file("runA"), dir.file("runB")}, {"one"});
            }).find("1 label(s) for 2 run(s)"),
            std::string::npos);
}

TEST(TraceFile, ErrorsNameTheFile) {
  TempDir dir;
  const std::string missing = dir.file("nope.h5");
  std::string msg = error_of([&] { load_runs({missing}, {}); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
  EXPECT_NE(msg.find("no such file"), std::string::npos) << msg;

  TraceSpec newer;
  newer.version = 2;
  const std::string newer_path = dir.file("newer.h5");
  write_trace(newer_path, newer);
  msg = error_of([&] { load_runs({newer_path}, {}); });
  EXPECT_NE(msg.find(newer_path), std::string::npos) << msg;
  EXPECT_NE(msg.find("newer"), std::string::npos) << msg;

  TraceSpec wrong;
  wrong.format = "something-else";
  const std::string wrong_path = dir.file("wrong.h5");
  write_trace(wrong_path, wrong);
  msg = error_of([&] { load_runs({wrong_path}, {}); });
  EXPECT_NE(msg.find(wrong_path), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a routemoe trace or checkpoint"), std::string::npos) << msg;

  const std::string text_path = dir.file("text.h5");
  std::ofstream(text_path) << "not hdf5\n";
  msg = error_of([&] { load_runs({text_path}, {}); });
  EXPECT_NE(msg.find(text_path), std::string::npos) << msg;

  TraceSpec missing_ds;
  missing_ds.missing_record = 1;
  const std::string missing_ds_path = dir.file("missing_ds.h5");
  write_trace(missing_ds_path, missing_ds);
  msg = error_of([&] { read_trace(missing_ds_path); });
  EXPECT_NE(msg.find(missing_ds_path), std::string::npos) << msg;
  EXPECT_NE(msg.find("records/000001"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layer1/experts"), std::string::npos) << msg;

  TraceSpec bad_p;
  bad_p.bad_record = 2;
  bad_p.bad_p = 3;
  bad_p.bad_k = 2;
  const std::string bad_p_path = dir.file("bad_p.h5");
  write_trace(bad_p_path, bad_p);
  msg = error_of([&] { read_trace(bad_p_path); });
  EXPECT_NE(msg.find(bad_p_path), std::string::npos) << msg;
  EXPECT_NE(msg.find("[3, 2], expected [4, 2]"), std::string::npos) << msg;

  TraceSpec bad_k;
  bad_k.bad_record = 1;
  bad_k.bad_p = 4;
  bad_k.bad_k = 1;
  const std::string bad_k_path = dir.file("bad_k.h5");
  write_trace(bad_k_path, bad_k);
  msg = error_of([&] { read_trace(bad_k_path); });
  EXPECT_NE(msg.find("[4, 1], expected [4, 2]"), std::string::npos) << msg;

  // Checkpoints with different k between records.
  fs::create_directories(dir.file("run/checkpoints"));
  write_checkpoint(dir.file("run/checkpoints/ckpt_00000000.h5"), 0);
  TraceSpec k1;
  k1.bad_record = 1;
  k1.bad_p = 4;
  k1.bad_k = 1;
  const std::string k1_path = dir.file("run/checkpoints/ckpt_00000010.h5");
  write_checkpoint(k1_path, 1, k1);
  msg = error_of([&] { load_runs({dir.file("run")}, {}); });
  EXPECT_NE(msg.find(k1_path), std::string::npos) << msg;

  // A trace given where a checkpoint is expected, and the other way round.
  write_trace(dir.file("t.h5"));
  EXPECT_NE(error_of([&] {
              read_checkpoints({dir.file("t.h5")});
            }).find("not a routemoe checkpoint (it is a routemoe trace)"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              read_trace(dir.file("run/checkpoints/ckpt_00000000.h5"));
            }).find("not a routemoe trace (it is a routemoe checkpoint)"),
            std::string::npos);
}

TEST(TraceFile, OneRecordTraceIsNotAnError) {
  TempDir dir;
  TraceSpec one;
  one.experts.resize(1);
  write_trace(dir.file("one.h5"), one);
  const std::vector<trace::Run> runs = load_runs({dir.file("one.h5")}, {});
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].label, "one");
  const RunMetrics m = analyse(runs[0]);
  EXPECT_TRUE(m.flips.empty());
  EXPECT_NE(format_table({m}).find("no pairs of consecutive records"), std::string::npos);
}

// Writes the fixture as files (into ROUTEMOE_TRACE_FIXTURE_DIR when set, for trying `routemoe
// trace` and the h5py snippet of docs/analysis.md by hand; else into a temporary directory) and
// checks that a run directory of checkpoints reads back as the same run as its trace file.
TEST(TraceFile, FixtureFilesReadBackAsOneRun) {
  const char* env = std::getenv("ROUTEMOE_TRACE_FIXTURE_DIR");
  const fs::path dir =
      env != nullptr && *env != 0
          ? fs::path(env)
          : fs::temp_directory_path() / ("routemoe_trace_fixture_" + std::to_string(::getpid()));
  fs::create_directories(dir / "topk");
  fs::create_directories(dir / "ckpt_run" / "checkpoints");
  write_trace((dir / "topk" / "trace.h5").string());
  for (std::size_t r = 0; r < 3; ++r) {
    char name[64];
    std::snprintf(name, sizeof(name), "ckpt_run/checkpoints/ckpt_%08lld.h5",
                  static_cast<long long>(kSteps[r]));
    write_checkpoint((dir / name).string(), r);
  }
  const std::vector<trace::Run> runs =
      load_runs({(dir / "topk").string(), (dir / "ckpt_run").string()}, {});
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].records.size(), 3u);
  EXPECT_EQ(runs[1].records.size(), 3u);
  if (env == nullptr || *env == 0) fs::remove_all(dir);
}

// ---- reports ----

TEST(TraceReport, CsvJsonTableAndSvg) {
  trace::Run a = fixture_run();
  a.label = "topk";
  trace::Run b = fixture_run();
  b.label = "ac";
  b.n_moe_layers = 1;
  for (Record& r : b.records) r.layers.resize(1);
  const std::vector<RunMetrics> metrics{analyse(a), analyse(b)};

  const std::string flips = flips_csv(metrics);
  std::istringstream lines(flips);
  std::string header, first, second;
  std::getline(lines, header);
  std::getline(lines, first);
  std::getline(lines, second);
  EXPECT_EQ(header,
            "run,layer,from_step,to_step,from_epoch,to_epoch,top1_flip_rate,topk_change_rate");
  EXPECT_EQ(first, "topk,0,0,10,0,1,0.25,0");
  EXPECT_EQ(second, "topk,1,0,10,0,1,0,0");
  EXPECT_NE(flips.find("topk,1,10,20,1,2,0.75,0.25\n"), std::string::npos);
  EXPECT_NE(flips.find("ac,0,10,20,1,2,0.5,0.25\n"), std::string::npos);
  EXPECT_NE(load_csv(metrics).find("topk,0,20,2,3,2,0.5,"), std::string::npos);
  EXPECT_NE(last_change_csv(metrics).find("topk,0,0,1,0.25,1\n"), std::string::npos);
  EXPECT_NE(last_change_csv(metrics).find("topk,1,2,3,0.75,0\n"), std::string::npos);
  EXPECT_EQ(agreement_csv(metrics),
            "run,layer_a,layer_b,last_step,agreement_last,agreement_mean\ntopk,0,1,20,0.5,0.25\n");

  const std::string json = to_json(metrics);
  EXPECT_EQ(json.front(), '{');
  EXPECT_NE(json.find("\"top1_flip_rate\": 0.75"), std::string::npos);
  EXPECT_NE(json.find("\"label\": \"ac\""), std::string::npos);
  EXPECT_NE(json.find("\"notes\": [\"one MoE layer: no cross-layer agreement\"]"),
            std::string::npos);

  const std::string table = format_table(metrics);
  EXPECT_NE(table.find("0.2500 / 0.0000"), std::string::npos) << table;
  EXPECT_NE(table.find("0.7500 / 0.2500"), std::string::npos) << table;
  EXPECT_NE(table.find("== comparison"), std::string::npos) << table;
  EXPECT_EQ(table.find('{'), std::string::npos);  // no JSON in the human table

  const std::string svg = fluctuation_svg(metrics);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  std::string why;
  EXPECT_TRUE(well_formed(svg, &why)) << why;
  EXPECT_EQ(count_of(svg, "<polyline"), 3u);  // 2 layers of topk + 1 layer of ac
  EXPECT_NE(svg.find("topk / layer 1"), std::string::npos);
  EXPECT_NE(svg.find("ac / layer 0"), std::string::npos);
  EXPECT_NE(svg.find("epoch (of the later record)"), std::string::npos);  // 10 steps/epoch
  const std::string load = load_svg(metrics);
  EXPECT_EQ(load.rfind("<svg", 0), 0u);
  EXPECT_TRUE(well_formed(load, &why)) << why;
  EXPECT_EQ(count_of(load, "class=\"bar\""), 3u * 4u);       // 3 panels of 4 bars
  EXPECT_NE(load.find("layer 1: topk"), std::string::npos);  // panels name their router

  TempDir dir;
  const auto csvs = write_csv_dir(dir.file("csv"), metrics);
  EXPECT_EQ(csvs.size(), 5u);
  for (const std::string& p : csvs) EXPECT_TRUE(fs::exists(p)) << p;
  const auto svgs = write_svg_dir(dir.file("svg"), metrics);
  ASSERT_EQ(svgs.size(), 4u);
  for (const char* name : {"fluctuation.svg", "entropy.svg", "load.svg", "loss.svg"}) {
    EXPECT_TRUE(fs::exists(dir.file("svg") + "/" + name)) << name;
  }
  std::ifstream in(svgs[0]);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, svg);
  EXPECT_FALSE(fs::exists(svgs[0] + ".tmp"));
}

TEST(TraceReport, LoadEntropyOfEveryRecord) {
  // Hand-computed from the fixture: layer 0 top-1 r0 (0,1,2,3) uniform: 1; r1 (1,1,2,3) counts
  // (0,2,1,1): 1.5 ln 2 / ln 4 = 0.75; r2 0.75. Layer 1: r0 = r1 (0,0,1,2): 0.75; r2 h1 / ln 4.
  const trace::Run run = fixture_run();
  const RunMetrics m = analyse(run);
  ASSERT_EQ(m.load_entropy.size(), 6u);  // 3 records x 2 layers
  const double h1 = -(0.25 * std::log(0.25) + 0.75 * std::log(0.75));
  const double want[3][2] = {{1.0, 0.75}, {0.75, 0.75}, {0.75, h1 / std::log(4.0)}};
  for (const EntropyPoint& e : m.load_entropy) {
    EXPECT_NEAR(e.entropy_norm, want[e.record][e.layer], 1e-12) << e.record << " " << e.layer;
    EXPECT_NEAR(e.entropy, want[e.record][e.layer] * std::log(4.0), 1e-12);
    EXPECT_EQ(e.step, kSteps[e.record]);
  }
  const std::string csv = load_entropy_csv({m});
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "run,layer,record,step,epoch,entropy_nats,entropy_norm");
  EXPECT_NE(csv.find("mem,0,0,0,0,"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",1\n"), std::string::npos) << csv;  // layer 0 at record 0: uniform
  EXPECT_NE(to_json({m}).find("\"load_entropy\": [{\"layer\": 0, \"record\": 0"),
            std::string::npos);
  const std::string svg = entropy_svg({m});
  std::string why;
  EXPECT_TRUE(well_formed(svg, &why)) << why;
  EXPECT_EQ(count_of(svg, "<polyline"), 2u);
  EXPECT_NE(svg.find("layer 1: topk"), std::string::npos);  // one run: layers with routers
}

TEST(TraceText, WidthsFitAndShortNames) {
  // DejaVu Sans: "0" is 1303/2048 em, "W" 2025/2048 em; a non-ASCII character counts 1 em.
  EXPECT_NEAR(text_width("00", 12), 2 * 1303.0 / 2048 * 12, 1e-9);
  EXPECT_NEAR(text_width("W", 10, true), 2259.0 / 2048 * 10, 1e-9);
  EXPECT_NEAR(text_width("\xc3\xa9", 12), 12, 1e-9);  // é
  EXPECT_EQ(fit_text("short", 200, 12), "short");
  const std::string name = "quickstart-2026-01-15T14-22-41-mixed-routers";
  const std::string fit = fit_text(name, 150, 12);
  EXPECT_LE(text_width(fit, 12), 150);
  EXPECT_NE(fit.find("..."), std::string::npos);
  EXPECT_EQ(fit.substr(0, 4), "quic");  // both ends kept
  EXPECT_EQ(fit.substr(fit.size() - 4), "ters");
  const std::string accents = "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9";
  const std::string cut = fit_text(accents, 60, 12);
  EXPECT_LE(text_width(cut, 12), 60);
  EXPECT_EQ(std::count(cut.begin(), cut.end(), '\xc3'), std::count(cut.begin(), cut.end(), '\xa9'))
      << "a UTF-8 character was split";
  EXPECT_EQ(fit_text(name, 5, 12), "");  // not even the ellipsis fits

  // All fit: unchanged. Too long: the shared prefix goes (up to a separator), ends stay apart.
  EXPECT_EQ(short_names({"a", "b"}, 100, 12), (std::vector<std::string>{"a", "b"}));
  const auto names = short_names({"quickstart-2026-01-15T14-22-33-topk", name}, 150, 12);
  EXPECT_EQ(names[0], "...33-topk");
  EXPECT_EQ(names[1], "...41-mixed-routers");
  // Names that differ only where they are cut get numbered.
  const std::string x(80, 'x');
  const auto same = short_names({x + "a" + x, x + "b" + x}, 100, 12);
  EXPECT_NE(same[0], same[1]);
  EXPECT_LE(text_width(same[1], 12), 100);
}

TEST(TraceFile, MetricsNextToTheTraceGiveLossCurves) {
  TempDir dir;
  const std::string run_dir = dir.file("run-a");
  fs::create_directories(run_dir);
  write_trace(run_dir + "/trace.h5");
  std::ofstream(run_dir + "/metrics.jsonl")
      << "{\"step\": 0, \"epoch\": 0, \"loss\": 5.5, \"ce_loss\": 5.4, \"aux_loss\": 0.1}\n"
      << "{\"step\": 1, \"epoch\": 0, \"loss\": 5.25, \"ce_loss\": 5.2, \"aux_loss\": 0.05}\n"
      << "{\"step\": 1, \"val_loss\": 5.125}\n"
      << "{\"step\": 2, \"epoch\": 0, \"lo";  // a line cut by a killed run: skipped
  const std::vector<trace::Run> runs = load_runs({run_dir}, {});
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].run_dir, run_dir);
  ASSERT_EQ(runs[0].train_loss.size(), 2u);
  EXPECT_EQ(runs[0].train_loss[1].step, 1);
  EXPECT_EQ(runs[0].train_loss[1].loss, 5.25);  // "loss", not "ce_loss"
  ASSERT_EQ(runs[0].val_loss.size(), 1u);
  EXPECT_EQ(runs[0].val_loss[0].loss, 5.125);
  // The trace file named directly finds the same metrics.
  EXPECT_EQ(load_runs({run_dir + "/trace.h5"}, {})[0].train_loss.size(), 2u);
  std::vector<RunMetrics> metrics{analyse(runs[0])};
  const std::string svg = loss_svg(metrics);
  std::string why;
  EXPECT_TRUE(well_formed(svg, &why)) << why;
  EXPECT_EQ(count_of(svg, "<polyline"), 2u);  // training and validation
  EXPECT_EQ(svg.find("no metrics.jsonl next to the traces"), std::string::npos);
  // Without metrics: a note instead of curves.
  trace::Run bare = fixture_run();
  const std::string none = loss_svg({analyse(bare)});
  EXPECT_EQ(count_of(none, "<polyline"), 0u);
  EXPECT_NE(none.find("no metrics.jsonl next to the traces"), std::string::npos);
}

TEST(TraceReport, HtmlHoldsTablesAndPlotsAndEscapesNames) {
  trace::Run a = fixture_run();
  a.label = "run <a> & \"b\"";
  const std::vector<RunMetrics> metrics{analyse(a)};
  const std::string html = html_report(metrics);
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(count_of(html, "<svg "), 4u);
  EXPECT_EQ(count_of(html, "</svg>"), 4u);
  EXPECT_NE(html.find("routing fluctuation between consecutive records"), std::string::npos);
  EXPECT_NE(html.find("run &lt;a&gt; &amp; &quot;b&quot;"), std::string::npos);
  EXPECT_EQ(html.find("<a>"), std::string::npos);   // never raw
  EXPECT_EQ(html.find("src="), std::string::npos);  // self-contained
}

}  // namespace
}  // namespace routemoe::trace
