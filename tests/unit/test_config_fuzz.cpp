// Fuzz of the configuration reader: random byte edits (flips, insertions, deletions) of a valid
// config, from a fixed seed, for a time budget of a few seconds. Every edited text is either
// refused with exactly one line that names the file, or read into the configuration the text
// means: each key the text sets (as toml++ reads the text) has that value, every other key keeps
// its default. Never a crash (the suite also runs under AddressSanitizer).

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <toml++/toml.h>

#include <chrono>
#include <cmath>
#include <random>
#include <string>

#include "framework/config.h"
#include "framework/error.h"

namespace routemoe {
namespace {

// A valid configuration using most of TOML's forms: comments, basic and literal strings, escapes,
// arrays over lines, dotted keys, exponents, underscores, signs.
const char* const kBase = R"(# routemoe run
parallel.ep_size = 2

[model]
vocab_size = 256
seq_len = 1_024   # underscores
d_model = 128
n_heads = 4
n_layers = 4
d_ff = 512
n_experts = 8
top_k = 2
moe_every = 2
routers = [
  "topk",  # first MoE layer
  'ac',
]
capacity_factor = -1.25
similarity_tau = 5e-1
similarity_causal = false
aux_loss_coef = 0.01
z_loss_coef = +0.0
ln_eps = 1E-5
seed = 0x7f

[optim]
lr = 3e-4
lr_min = 3.0e-5
warmup = 10
grad_clip = 1

[train]
steps = 300
batch_size = 8
out_dir = "runs/\u00e9t\u00e9 \"q\""
resume = 'C:\runs\x'
progress = true

[data]
path = """/data/{split}_*.bin"""
headerless = false

[checkpoint]
every = 50
dir = ''
)";

// Bytes an edit writes: half of them TOML's own punctuation and digits, half any byte.
unsigned char random_byte(std::mt19937_64& gen) {
  static const std::string kSignificant = "[]{}\"'=.,#\n\\ \t_-+0123456789eExobtrufalsn";
  if (gen() % 2 == 0) return static_cast<unsigned char>(kSignificant[gen() % kSignificant.size()]);
  return static_cast<unsigned char>(gen() % 256);
}

std::string edit(std::string text, std::mt19937_64& gen) {
  const int edits = 1 + static_cast<int>(gen() % 3);
  for (int i = 0; i < edits; ++i) {
    const std::size_t at = text.empty() ? 0 : gen() % text.size();
    switch (gen() % 3) {
      case 0:  // flip
        if (!text.empty()) text[at] = static_cast<char>(random_byte(gen));
        break;
      case 1:  // insert
        text.insert(text.begin() + static_cast<std::ptrdiff_t>(at),
                    static_cast<char>(random_byte(gen)));
        break;
      default:  // delete 1..3 bytes
        text.erase(at, 1 + gen() % 3);
    }
  }
  return text;
}

// True when the configuration value `ours` (toml++'s reading of to_toml()) is what the text's
// value `theirs` means: the same value, or for a float key an integer of the same value.
bool same_value(const toml::node& ours, const toml::node& theirs) {
  if (ours.is_floating_point() && theirs.is_integer()) {
    return ours.as_floating_point()->get() == static_cast<double>(theirs.as_integer()->get());
  }
  if (ours.type() != theirs.type()) return false;
  if (ours.is_array()) return *ours.as_array() == *theirs.as_array();
  if (ours.is_floating_point()) {
    return ours.as_floating_point()->get() == theirs.as_floating_point()->get();
  }
  if (ours.is_integer()) return ours.as_integer()->get() == theirs.as_integer()->get();
  if (ours.is_boolean()) return ours.as_boolean()->get() == theirs.as_boolean()->get();
  return ours.is_string() && ours.as_string()->get() == theirs.as_string()->get();
}

// The configuration `cfg` read from `text` must hold what toml++ reads in `text`.
void expect_meaning(const std::string& text, const RunConfig& cfg) {
  toml::table meant;
  try {
    meant = toml::parse(text);
  } catch (const toml::parse_error& e) {
    ADD_FAILURE() << "accepted text that is not TOML (" << e.description() << "):\n" << text;
    return;
  }
  const toml::table ours = toml::parse(cfg.to_toml());
  static const toml::table defaults = toml::parse(RunConfig{}.to_toml());
  for (const std::string& key : config_keys()) {
    const toml::node* given = meant.at_path(key).node();
    const toml::node* want = given != nullptr ? given : defaults.at_path(key).node();
    ASSERT_NE(want, nullptr) << key;
    EXPECT_TRUE(same_value(*ours.at_path(key).node(), *want))
        << key << (given != nullptr ? " (set by the text)" : " (default)") << "\n"
        << text;
  }
  RunConfig back;
  read_config_toml(cfg.to_toml(), "round trip", back);
  EXPECT_EQ(back, cfg) << text;
}

TEST(ConfigFuzz, ByteEditsAreRefusedInOneLineOrReadAsMeant) {
  {
    RunConfig base;
    ASSERT_NO_THROW(read_config_toml(kBase, "fuzz.toml", base));
    ASSERT_EQ(base.model.seq_len, 1024);
    ASSERT_EQ(base.train.resume, "C:\\runs\\x");
    ASSERT_EQ(base.parallel.ep_size, 2);
    expect_meaning(kBase, base);
  }
  // Sized by time (a sanitizer build runs fewer cases), with a floor so a slow machine still
  // covers something; the sequence of cases is fixed by the seed.
  const auto budget = std::chrono::seconds(3);
  constexpr int kMinCases = 300;
  std::mt19937_64 gen(0x5eed0010);
  const auto start = std::chrono::steady_clock::now();
  int cases = 0, refused = 0;
  while (cases < kMinCases || std::chrono::steady_clock::now() - start < budget) {
    const std::string text = edit(kBase, gen);
    ++cases;
    RunConfig cfg;
    try {
      read_config_toml(text, "fuzz.toml", cfg);
    } catch (const Error& e) {
      ++refused;
      const std::string msg = e.what();
      ASSERT_EQ(e.kind(), ErrorKind::Config) << msg;
      ASSERT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
      ASSERT_EQ(msg.find('\r'), std::string::npos) << "not one line: " << msg;
      ASSERT_NE(msg.find("fuzz.toml"), std::string::npos) << "does not name the file: " << msg;
      continue;
    } catch (const std::exception& e) {
      FAIL() << "not a configuration error: " << e.what() << "\n" << text;
    }
    expect_meaning(text, cfg);
    if (HasFailure()) break;
  }
  RecordProperty("cases", cases);
  RecordProperty("refused", refused);
  std::printf("config fuzz: %d cases, %d refused, %d read\n", cases, refused, cases - refused);
  EXPECT_GT(refused, 0);
  EXPECT_GT(cases - refused, 0);
}

}  // namespace
}  // namespace routemoe
