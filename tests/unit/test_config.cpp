// Configuration: TOML + --section.key overrides, unknown keys and bad values rejected, every
// key documented in docs/configuration.md.

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "framework/config.h"
#include "framework/error.h"

namespace routemoe {
namespace {

namespace fs = std::filesystem;

// Parses `args` (after the program name) with the TOML text written to a temp file.
RunConfig parse(const std::string& toml, std::vector<std::string> args) {
  const fs::path file =
      fs::temp_directory_path() / ("routemoe_cfg_" + std::to_string(::getpid()) + ".toml");
  {
    std::ofstream f(file);
    f << toml;
  }
  RunConfig cfg;
  std::string config_path;
  CLI::App app;
  register_run_options(app, cfg, config_path);
  args.insert(args.begin(), "--config=" + file.string());
  std::vector<const char*> argv = {"test"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  app.parse(static_cast<int>(argv.size()), argv.data());
  apply_config_file(app, config_path);
  fs::remove(file);
  return cfg;
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
  try {
    parse("[model]\nd_modle = 64\n", {});
    FAIL() << "unknown key accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Config);
    EXPECT_NE(std::string(e.what()).find("model.d_modle"), std::string::npos) << e.what();
  }
}

TEST(Config, MalformedValueIsAnError) {
  EXPECT_THROW(parse("[model]\nd_model = \"wide\"\n", {}), Error);
  EXPECT_THROW(parse("[model\n", {}), Error);
}

TEST(Config, OutOfRangeValuesAreRejectedByValidate) {
  auto expect_invalid = [](const std::string& toml, const std::string& key) {
    const RunConfig c = parse(toml, {});
    try {
      c.validate();
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
}

TEST(Config, ResolvedTomlRoundTrips) {
  RunConfig a = parse("[model]\nrouters = [\"similarity\"]\nsimilarity_tau = 0.5\n",
                      {"--train.out_dir=x \"y\" \\z"});
  const RunConfig b = parse(a.to_toml(), {});
  EXPECT_EQ(b.to_toml(), a.to_toml());
  EXPECT_EQ(b.train.out_dir, "x \"y\" \\z");  // quotes and backslashes survive the TOML
  const RunConfig c = parse(b.to_toml(), {"--data.path=it's \"here\""});  // ' forces a basic string
  const RunConfig d = parse(c.to_toml(), {});
  EXPECT_EQ(d.data.path, "it's \"here\"");
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
