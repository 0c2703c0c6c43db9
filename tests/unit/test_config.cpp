// Configuration: TOML 1.0 files (toml++) + --section.key overrides (the command line always wins),
// unknown keys and bad values rejected in one line naming file, line and key, exact round trip of
// the resolved TOML, checked sizes, the memory estimate and its refusal, the one-line fatal
// message (std::bad_alloc included), every key documented in docs/configuration.md.

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <random>
#include <sstream>
#include <string>

#include "framework/config.h"
#include "framework/error.h"
#include "framework/memory_estimate.h"
#include "layers/model.h"

namespace routemoe {
namespace {

namespace fs = std::filesystem;

// A temporary config file that is removed at the end of the scope.
struct TempToml {
  fs::path path;
  explicit TempToml(const std::string& text, const std::string& name = "cfg") {
    path = fs::temp_directory_path() /
           fmt::format("routemoe_{}_{}_{}.toml", name, ::getpid(), counter()++);
    std::ofstream f(path, std::ios::binary);
    f << text;
  }
  ~TempToml() {
    std::error_code ec;
    fs::remove(path, ec);
  }
  static int& counter() {
    static int n = 0;
    return n;
  }
};

// Parses `args` (after the program name) with the TOML text written to a temp file, the way
// `routemoe train` does.
RunConfig parse(const std::string& toml, std::vector<std::string> args) {
  const TempToml file(toml);
  std::string config_path;
  CLI::App app;
  register_run_options(app, config_path);
  args.insert(args.begin(), "--config=" + file.path.string());
  std::vector<const char*> argv = {"test"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  app.parse(static_cast<int>(argv.size()), argv.data());
  return resolve_run_config(app, config_path);
}

RunConfig from_toml(const std::string& text, const std::string& source = "test.toml") {
  RunConfig cfg;
  read_config_toml(text, source, cfg);
  return cfg;
}

// The Error(Config) message of `fn`, or a test failure when it does not throw one.
template <typename Fn>
std::string config_error(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Config) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no configuration error";
  return {};
}

void expect_one_line_naming(const std::string& msg, const std::vector<std::string>& parts) {
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\r'), std::string::npos) << msg;
  for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << p << " | " << msg;
}

TEST(Config, FileValuesAndCommandLineOverrides) {
  const RunConfig c =
      parse("[model]\nd_model = 64\nrouters = [\"topk\", \"ac\"]\n[optim]\nlr = 0.01\n",
            {"--model.d_model=96", "--train.steps=7"});
  EXPECT_EQ(c.model.d_model, 96);  // the command line wins
  EXPECT_EQ(c.model.routers, (std::vector<std::string>{"topk", "ac"}));
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.01);
  EXPECT_EQ(c.train.steps, 7);
}

TEST(Config, UnknownKeyIsAnErrorNamingIt) {
  const std::string msg = config_error([] { parse("[model]\nd_modle = 64\n", {}); });
  expect_one_line_naming(msg, {"model.d_modle", ":2:", "did you mean 'model.d_model'"});
  expect_one_line_naming(config_error([] { from_toml("[modle]\nd_model = 64\n"); }),
                         {"test.toml:1:", "'modle'", "did you mean 'model'"});
  // A key before any section header.
  expect_one_line_naming(config_error([] { from_toml("d_model = 64\n"); }),
                         {"test.toml:1:", "'d_model'", "section [model]"});
  // Far from every key: no suggestion.
  const std::string far = config_error([] { from_toml("[train]\nzzzzzz = 1\n"); });
  expect_one_line_naming(far, {"train.zzzzzz"});
  EXPECT_EQ(far.find("did you mean"), std::string::npos) << far;
  // A nested table is not a key either.
  expect_one_line_naming(config_error([] { from_toml("[model.extra]\nx = 1\n"); }),
                         {"model.extra"});
}

TEST(Config, MalformedValueIsAnError) {
  EXPECT_THROW(parse("[model]\nd_model = \"wide\"\n", {}), Error);
  EXPECT_THROW(parse("[model\n", {}), Error);
}

TEST(Config, ValuesAreTypeChecked) {
  auto expect = [](const std::string& toml, const std::vector<std::string>& parts) {
    expect_one_line_naming(config_error([&] { from_toml(toml); }), parts);
  };
  expect("[model]\nd_model = \"64\"\n", {"test.toml:2:", "model.d_model", "expected an integer"});
  expect("[model]\nd_model = 64.0\n", {"model.d_model", "expected an integer, got a float"});
  expect("[optim]\nlr = \"0.1\"\n", {"optim.lr", "expected a float, got a string"});
  expect("[train]\nprogress = 1\n", {"train.progress", "expected a boolean"});
  expect("[train]\nout_dir = 3\n", {"train.out_dir", "expected a string"});
  expect("[model]\nrouters = \"topk\"\n", {"model.routers", "array of strings"});
  expect("[model]\nrouters = [\"topk\", 1]\n", {"model.routers", "element 2 is an integer"});
  expect("[optim]\nlr = 1979-05-27\n", {"optim.lr", "got a date"});
  expect("[optim]\nlr = nan\n", {"optim.lr", "finite"});
  expect("[model]\nln_eps = inf\n", {"model.ln_eps", "finite"});
  expect("[optim]\nwarmup = -1\n", {"optim.warmup", "[0, "});
  expect("[model]\nseed = -1\n", {"model.seed", "[0, 9223372036854775807]"});
  expect("model = 3\n", {"model must be a table"});
  expect("[[model]]\nd_model = 3\n", {"model must be a table"});
  // An integer is accepted for a float key when it converts exactly.
  EXPECT_EQ(from_toml("[optim]\nlr = 1\n").optim.lr, 1.0);
  expect("[optim]\nlr = 9007199254740993\n", {"optim.lr", "no exact float value"});
  // Dotted keys and inline tables are TOML too.
  const RunConfig c = from_toml("model.d_model = 96\ntrain = { steps = 5 }\n");
  EXPECT_EQ(c.model.d_model, 96);
  EXPECT_EQ(c.train.steps, 5);
}

// A refused text leaves the configuration as it was (all or nothing).
TEST(Config, RefusedTextChangesNothing) {
  RunConfig cfg;
  EXPECT_THROW(read_config_toml("[model]\nd_model = 64\nbogus = 1\n", "t.toml", cfg), Error);
  EXPECT_EQ(cfg, RunConfig{});
}

// Issue 10: CLI11's reader kept the last of two [model] tables and dropped the first one's keys.
TEST(Config, ReopenedTableIsRefused) {
  const std::string msg = config_error(
      [] { parse("[model]\nd_model = 64\n[train]\nsteps = 5\n[model]\nn_heads = 2\n", {}); });
  expect_one_line_naming(msg, {"routemoe_cfg_", ":5:", "invalid TOML", "'model'"});
}

// Issue 10: an unterminated string became a directory name.
TEST(Config, UnterminatedStringIsRefused) {
  const std::string msg =
      config_error([] { parse("[train]\nout_dir = \"runs/x\nsteps = 3\n", {}); });
  expect_one_line_naming(msg, {"routemoe_cfg_", ":2:", "invalid TOML in train.out_dir"});
}

// Issue 10: an unclosed list was reported as an unknown key.
TEST(Config, UnclosedListIsRefusedAsInvalidToml) {
  const std::string msg =
      config_error([] { parse("[model]\nrouters = [\"topk\", \"ac\"\nd_model = 64\n", {}); });
  expect_one_line_naming(msg, {"routemoe_cfg_", ":3:", "invalid TOML in model.routers"});
  EXPECT_EQ(msg.find("unknown"), std::string::npos) << msg;
  expect_one_line_naming(config_error([] { from_toml("[model]\nrouters = [\"topk\"\n"); }),
                         {"test.toml:2:", "invalid TOML in model.routers", "end-of-file"});
}

// Issue 10: `routemoe train --config runs/X/config.toml --resume auto` started from step 0,
// because the saved file's `resume = ''` won over --resume (only --train.resume won).
TEST(Config, ResumeOnTheCommandLineWinsOverTheFile) {
  RunConfig saved;
  saved.train.out_dir = "runs/X";
  const std::string file = saved.to_toml();
  ASSERT_NE(file.find("resume = \"\""), std::string::npos) << file;
  EXPECT_EQ(parse(file, {"--resume", "auto"}).train.resume, "auto");
  EXPECT_EQ(parse(file, {"--resume=auto"}).train.resume, "auto");
  EXPECT_EQ(parse(file, {"--train.resume=ckpt.h5"}).train.resume, "ckpt.h5");
  EXPECT_EQ(parse("[train]\nresume = \"old.h5\"\n", {"--resume", ""}).train.resume, "");
  EXPECT_EQ(parse(file, {}).train.resume, "");
}

// The command-line text of `n` (a value of a configuration as toml++ reads it back).
std::string cli_text(const toml::node& n) {
  if (const auto* a = n.as_array()) {
    std::string s;
    for (const auto& e : *a) s += (s.empty() ? "" : ",") + e.as_string()->get();
    return s;
  }
  if (const auto* f = n.as_floating_point()) return fmt::format("{}", f->get());
  if (const auto* i = n.as_integer()) return fmt::format("{}", i->get());
  if (const auto* b = n.as_boolean()) return b->get() ? "true" : "false";
  return n.as_string()->get();
}

// Every key, under every name: a file sets one value, the command line another; the command
// line's wins.
TEST(Config, CommandLineWinsOverTheFileForEveryKey) {
  RunConfig file_cfg;
  file_cfg.model.d_model = 64;
  file_cfg.model.n_heads = 2;
  file_cfg.model.routers = {"topk", "ac", "similarity", "attention"};
  file_cfg.optim.lr = 0.125;
  file_cfg.train.out_dir = "from/file";
  file_cfg.train.progress = false;
  file_cfg.train.resume = "";
  file_cfg.data.headerless = true;
  RunConfig cli_cfg;  // differs from file_cfg in every key
  cli_cfg.model = ModelConfig{512, 64,   48,    3,   3,     96,   6, 3, 3, {"similarity"},
                              1.5, 0.25, false, 0.5, 0.001, 1e-6, 99};
  cli_cfg.optim = OptimConfig{0.002, 0.0001, 11, 0.8, 0.9, 1e-7, 0.01, 2.5};
  cli_cfg.train = TrainConfig{17, 12, 3, 5, 2, 4, 77, 2, "from/cli \"q\"", true, "auto"};
  cli_cfg.data = DataConfig{"/data/{split}.bin", false, "tr", "va"};
  cli_cfg.parallel.ep_size = 2;
  cli_cfg.checkpoint = CheckpointConfig{5, 4, "ck", 4096, 7, false};
  const toml::table want = toml::parse(cli_cfg.to_toml());
  for (const bool alias : {false, true}) {
    std::vector<std::string> args;
    for (const std::string& key : config_keys()) {
      const std::string name = alias && key == "train.resume" ? "resume" : key;
      args.push_back(fmt::format("--{}={}", name, cli_text(*want.at_path(key).node())));
    }
    const RunConfig got = parse(file_cfg.to_toml(), args);
    EXPECT_EQ(got.to_toml(), cli_cfg.to_toml());
    EXPECT_EQ(got, cli_cfg);
  }
}

TEST(Config, BadCommandLineValuesNameTheOption) {
  auto expect = [](const std::string& arg, const std::vector<std::string>& parts) {
    expect_one_line_naming(config_error([&] { parse("", {arg}); }), parts);
  };
  expect("--model.d_model=wide", {"--model.d_model", "not an integer"});
  expect("--optim.lr=0.1x", {"--optim.lr", "not a finite number"});
  expect("--optim.lr=nan", {"--optim.lr", "finite"});
  expect("--train.progress=maybe", {"--train.progress", "not a boolean"});
  expect("--model.seed=-1", {"--model.seed", "[0, 9223372036854775807]"});
  expect("--train.out_dir=\xff", {"--train.out_dir", "UTF-8"});
}

TEST(Config, OutOfRangeValuesAreRejectedByValidate) {
  auto expect_invalid = [](const std::string& toml, const std::string& key) {
    try {
      parse(toml, {}).validate();  // refused when read (ranges) or by validate (relations)
      ADD_FAILURE() << "accepted: " << toml;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Config);
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  expect_invalid("[model]\nd_model = 30\nn_heads = 4\n", "model.d_model");
  expect_invalid("[model]\ntop_k = 9\nn_experts = 8\n", "model.top_k");
  expect_invalid("[model]\nrouters = [\"topk\", \"ac\"]\nn_layers = 4\n", "model.routers");
  expect_invalid("[model]\nrouters = [\"hash\"]\n", "hash");
  expect_invalid("[optim]\nlr = -1.0\n", "optim.lr");
  expect_invalid("[optim]\nbeta2 = 1.0\n", "optim.beta2");
  expect_invalid("[train]\nbatch_size = 6\ngrad_accum = 4\n", "train.batch_size");
  expect_invalid("[parallel]\nep_size = 3\n", "parallel.ep_size");
  expect_invalid("[model]\nvocab_size = 70000\n", "model.vocab_size");
  expect_invalid("[train]\nsteps = 0\n", "train.steps");
  expect_invalid("[train]\nthreads = 100000\n", "train.threads");
  expect_invalid("[model]\ncapacity_factor = 1e300\n", "model.capacity_factor");
  // validate() also checks values set in code, not only those read from text.
  RunConfig c;
  c.train.out_dir = std::string("a\0b", 3);
  EXPECT_NE(config_error([&] { c.validate(); }).find("train.out_dir must not contain a NUL"),
            std::string::npos);
  c = RunConfig{};
  c.optim.grad_clip = INFINITY;
  EXPECT_NE(config_error([&] { c.validate(); }).find("optim.grad_clip"), std::string::npos);
}

// Issue 10: d_ff = 2^62 passed validation and segfaulted in the model.
TEST(Config, HugeSizeIsRefusedWithItsRange) {
  const std::string msg = config_error([] { parse("[model]\nd_ff = 4611686018427387904\n", {}); });
  expect_one_line_naming(msg, {"routemoe_cfg_", ":2:", "model.d_ff", "must lie in [1, 1048576]"});
  expect_one_line_naming(config_error([] { parse("", {"--model.d_ff=4611686018427387904"}); }),
                         {"--model.d_ff", "must lie in [1, 1048576]"});
  ModelConfig m;
  m.d_ff = std::int64_t{1} << 62;
  expect_one_line_naming(config_error([&] { m.validate(); }), {"model.d_ff", "must lie in"});
}

// Issue 10: a 20-digit d_model became INT64_MAX.
TEST(Config, TwentyDigitIntegerIsRefused) {
  const std::string msg =
      config_error([] { parse("[model]\nd_model = 99999999999999999999\n", {}); });
  expect_one_line_naming(msg, {"routemoe_cfg_", ":2:", "model.d_model", "64 bits"});
  expect_one_line_naming(config_error([] { parse("", {"--model.d_model=99999999999999999999"}); }),
                         {"--model.d_model", "does not fit in a 64-bit integer"});
}

// Every size within its range, yet the parameter count overflows 64 bits: refused, not wrapped.
TEST(Config, ParameterCountOverflowIsRefused) {
  ModelConfig m;
  m.n_layers = ModelConfig::kLayers.max;
  m.n_experts = ModelConfig::kExperts.max;
  m.d_model = ModelConfig::kDModel.max;
  m.d_ff = ModelConfig::kDff.max;
  m.n_heads = 4;
  expect_one_line_naming(config_error([&] { m.validate(); }),
                         {"the parameter count overflows 64-bit integers"});
}

// The estimate counts exactly the parameters the model declares, with experts sharded by ep.
TEST(Config, ParameterCountMatchesTheModel) {
  ModelConfig m;
  m.vocab_size = 97, m.seq_len = 16, m.d_model = 24, m.n_heads = 3, m.n_layers = 4, m.d_ff = 40;
  m.n_experts = 4, m.top_k = 2, m.moe_every = 2, m.routers = {"ac", "similarity"};
  const Model model(m);
  EXPECT_EQ(m.param_count().total(), model.params().numel());
  RunConfig cfg;
  cfg.model = m;
  cfg.checkpoint.probe_tokens = 16;
  const MemoryEstimate one = estimate_memory(cfg, 1, 1);
  const MemoryEstimate four = estimate_memory(cfg, 4, 4);
  EXPECT_EQ(one.params_total, model.params().numel());
  EXPECT_EQ(four.params_total, one.params_total);
  EXPECT_EQ(one.params_per_rank - four.params_per_rank, m.param_count().experts * 3 / 4);
  EXPECT_EQ(one.param_bytes, 4 * one.params_per_rank);
  EXPECT_EQ(one.optimizer_bytes, 2 * one.param_bytes);
  EXPECT_EQ(one.total_bytes,
            one.param_bytes + one.grad_bytes + one.optimizer_bytes + one.activation_bytes);
}

// The activation estimate against the arena's real peak after one training micro-batch, for
// every router. The estimate counts the allocations by formula; the arena adds 256-byte
// alignment per allocation and a few small index arrays, so it may differ by a little: within
// 15% either way (measured: 1-6%).
TEST(Config, ActivationEstimateMatchesTheArena) {
  for (const char* router : {"topk", "similarity", "attention", "ac"}) {
    RunConfig cfg;
    ModelConfig& m = cfg.model;
    m.vocab_size = 64, m.seq_len = 32, m.d_model = 32, m.n_heads = 2, m.n_layers = 2;
    m.d_ff = 64, m.n_experts = 4, m.top_k = 2, m.moe_every = 1, m.routers = {router};
    cfg.train.batch_size = 2;
    cfg.checkpoint.probe_tokens = 32;
    const MemoryEstimate e = estimate_memory(cfg, 1, 1);
    ASSERT_EQ(e.activation_pass, "training micro-batch");
    Model model(m);
    std::vector<std::int32_t> tokens(2 * 32);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>(i * 7 % 64);
    model.forward_backward(tokens.data(), tokens.data(), 2, 32);
    const double peak = static_cast<double>(model.memory_report()[2].peak);
    const double ratio = static_cast<double>(e.activation_bytes) / peak;
    RecordProperty(std::string("ratio_") + router, fmt::format("{:.3f}", ratio));
    EXPECT_GT(ratio, 0.85) << router << ": estimate " << e.activation_bytes << ", arena " << peak;
    EXPECT_LT(ratio, 1.15) << router << ": estimate " << e.activation_bytes << ", arena " << peak;
  }
}

// A model far larger than memory (every size in range) is refused before allocation, with the
// numbers: needed per rank and node, and available.
TEST(Config, ModelThatCannotFitIsRefusedWithTheNumbers) {
  RunConfig cfg;
  cfg.model.d_model = 8192, cfg.model.n_heads = 64, cfg.model.d_ff = 32768;
  cfg.model.n_experts = 1024, cfg.model.n_layers = 48;
  const MemoryEstimate e = estimate_memory(cfg, 2, 2);
  EXPECT_GT(e.total_bytes, std::int64_t{1} << 47);  // over 128 TiB
  AvailableMemory avail;
  avail.node_bytes = std::int64_t{16} << 30;
  avail.node_source = "the test's budget";
  const std::string msg = config_error([&] { check_memory_fits(e, 2, avail); });
  expect_one_line_naming(msg, {"does not fit in memory", format_size(e.total_bytes), "x 2 rank(s)",
                               "16.00 GiB is available (the test's budget)", "parameters",
                               "activations", "train.batch_size"});
  // With this machine's real memory too.
  expect_one_line_naming(config_error([&] { check_memory_fits(e, 1, available_memory()); }),
                         {"does not fit"});
  // The address-space limit of the process counts as well.
  AvailableMemory ulimit;
  ulimit.process_bytes = 1 << 20;
  RunConfig small;
  expect_one_line_naming(
      config_error([&] { check_memory_fits(estimate_memory(small, 1, 1), 1, ulimit); }),
      {"address-space limit", "1.00 MiB is left"});
  // The default model fits in 16 GiB.
  EXPECT_NO_THROW(check_memory_fits(estimate_memory(small, 1, 1), 1, avail));
  const AvailableMemory here = available_memory();
  EXPECT_GT(here.node_bytes, 0) << here.node_source;
}

// Issue 10: a model that did not fit died in std::bad_alloc, printed without rank or hint.
TEST(Config, BadAllocIsOneLineWithTheRankAndAHint) {
  const std::string msg = fatal_message(std::bad_alloc());
  expect_one_line_naming(msg, {"out of memory on rank 0", "std::bad_alloc", "train.batch_size",
                               "docs/configuration.md"});
  expect_one_line_naming(fatal_message(std::runtime_error("first\nsecond")),
                         {"error on rank 0", "first; second"});
  try {
    RM_FAIL(Config, "bad value");
  } catch (const Error& e) {
    EXPECT_EQ(fatal_message(e), std::string(e.what()));
  }
}

// The resolved TOML reads back exactly: hostile strings, extreme and random doubles, extreme
// integers.
TEST(Config, ResolvedTomlRoundTripsExactly) {
  RunConfig a = parse("[model]\nrouters = [\"similarity\"]\nsimilarity_tau = 0.5\n",
                      {"--train.out_dir=x \"y\" \\z"});
  EXPECT_EQ(from_toml(a.to_toml()), a);
  EXPECT_EQ(from_toml(a.to_toml()).train.out_dir, "x \"y\" \\z");
  const std::vector<std::string> hostile = {
      "",
      "it's \"here\"",
      "back\\slash\\\\",
      "C:\\new\\table",
      "tab\there",
      "line\nbreak\r\n",
      "\x01\x02\x1f\x7f",
      "ünïcødé ☃ 🚀 \u00e9",
      "'''",
      "\"\"\"",
      "# not a comment",
      "[model]\nd_model = 1",
      "\\u0041 stays \\U00000041",
      "trailing space ",
      std::string(300, 'x'),
  };
  for (const std::string& s : hostile) {
    RunConfig c;
    c.train.out_dir = s, c.train.resume = s, c.data.path = s, c.checkpoint.dir = s;
    c.data.train_split = s + "a", c.data.val_split = "b" + s;
    c.model.routers = {s, "topk", s};
    const RunConfig back = from_toml(c.to_toml());
    EXPECT_EQ(back, c) << c.to_toml();
  }
  std::mt19937_64 gen(7);
  auto random_double = [&]() {
    for (;;) {
      const std::uint64_t bits = gen();
      double d;
      std::memcpy(&d, &bits, sizeof d);
      if (std::isfinite(d)) return d;
    }
  };
  const double special[] = {
      0.0,  -0.0, 5e-324, -5e-324, DBL_MAX, -DBL_MAX,           DBL_MIN, 0.1,
      1e22, 1e23, 1e-5,   3e-4,    1.0,     9007199254740993.0, 1e16,    123456789.0};
  for (int i = 0; i < 400; ++i) {
    RunConfig c;
    OptimConfig& o = c.optim;
    ModelConfig& m = c.model;
    double* fields[] = {
        &o.lr,           &o.lr_min,    &o.beta1,           &o.beta2,          &o.eps,
        &o.weight_decay, &o.grad_clip, &m.capacity_factor, &m.similarity_tau, &m.aux_loss_coef,
        &m.z_loss_coef,  &m.ln_eps};
    for (std::size_t j = 0; j < std::size(fields); ++j) {
      *fields[j] = i < 16 ? special[(static_cast<std::size_t>(i) + j) % 16] : random_double();
    }
    m.seed = i % 2 ? static_cast<std::uint64_t>(INT64_MAX) : 0;
    c.train.steps = i % 2 ? std::int64_t{1} << 40 : 1;
    const std::string text = c.to_toml();
    const RunConfig back = from_toml(text);
    ASSERT_EQ(back, c) << text;
    ASSERT_EQ(back.to_toml(), text);  // also tells -0.0 from 0.0
  }
}

TEST(Config, ConfigFileErrorsNameTheFile) {
  expect_one_line_naming(config_error([] {
                           RunConfig c;
                           read_config_file("/nonexistent/run.toml", c);
                         }),
                         {"/nonexistent/run.toml", "does not exist"});
  const TempToml big(std::string(2 << 20, '#'), "big");
  expect_one_line_naming(config_error([&] {
                           RunConfig c;
                           read_config_file(big.path.string(), c);
                         }),
                         {big.path.string(), "larger than 1 MiB"});
  const TempToml bad("[train]\nsteps = 1\nsteps = 2\n", "dup");
  expect_one_line_naming(config_error([&] {
                           RunConfig c;
                           read_config_file(bad.path.string(), c);
                         }),
                         {bad.path.string() + ":3:", "train.steps"});
}

TEST(Config, EveryKeyIsDocumented) {
  const fs::path doc = fs::path(ROUTEMOE_SOURCE_DIR) / "docs" / "configuration.md";
  std::ifstream f(doc);
  ASSERT_TRUE(f.good()) << doc;
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  for (const std::string& key : config_keys()) {
    EXPECT_NE(text.find("`" + key + "`"), std::string::npos)
        << key << " is not documented in docs/configuration.md (write it as `" << key << "`)";
  }
}

}  // namespace
}  // namespace routemoe
