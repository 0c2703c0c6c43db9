// Data layer: shard I/O and validation, `prepare` logic, datasets and the batch loader.

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "framework/data.h"
#include "framework/error.h"

namespace routemoe {
namespace {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            (std::string("routemoe_test_data_") + std::to_string(::getpid()) + "_" +
             info->test_suite_name() + "_" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<unsigned char>((std::istreambuf_iterator<char>(in)),
                                    std::istreambuf_iterator<char>());
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

void set_le32(std::vector<unsigned char>& b, std::size_t offset, std::int32_t value) {
  const auto v = static_cast<std::uint32_t>(value);
  for (int i = 0; i < 4; ++i) b[offset + i] = static_cast<unsigned char>(v >> (8 * i));
}

std::vector<std::uint16_t> iota_tokens(int n, int mod) {
  std::vector<std::uint16_t> t(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = static_cast<std::uint16_t>(i % mod);
  return t;
}

// Runs `fn`, expects Error(Data) whose message contains every string in `needles`.
void expect_data_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Data) << e.what();
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    for (const std::string& n : needles) {
      EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
    }
  }
}

TEST(Shard, WriteReadRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("shard.bin");
  const std::vector<std::uint16_t> tokens = {0, 1, 255, 256, 50256, 65535, 7};
  write_shard(path, tokens);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(fs::file_size(path), 1024u + 2u * tokens.size());
  const std::vector<unsigned char> raw = read_bytes(path);
  EXPECT_EQ(raw[0] | (raw[1] << 8) | (raw[2] << 16) | (raw[3] << 24), 20240520);
  EXPECT_EQ(raw[4], 1);
  EXPECT_EQ(raw[8], tokens.size());
  EXPECT_EQ(raw[1024 + 6], 0);  // tokens[3] = 256, little endian
  EXPECT_EQ(raw[1024 + 7], 1);

  const TokenShard shard = load_tokens(path, 65536);
  EXPECT_EQ(shard.format, ShardFormat::LlmC);
  EXPECT_EQ(shard.tokens, tokens);
  EXPECT_EQ(shard.path, path);

  // A .bin that starts with the magic is llm.c even when headerless files are allowed.
  EXPECT_EQ(load_tokens(path, 65536, true).format, ShardFormat::LlmC);

  // Empty shard round-trips too.
  write_shard(dir.file("empty.bin"), std::vector<std::uint16_t>{});
  EXPECT_TRUE(load_tokens(dir.file("empty.bin"), 256).tokens.empty());
}

TEST(Shard, HeaderlessNanoGptFile) {
  TempDir dir;
  const std::string path = dir.file("train.bin");
  write_bytes(path, {1, 0, 2, 0, 0x34, 0x12});
  const TokenShard shard = load_tokens(path, 65536, /*allow_headerless=*/true);
  EXPECT_EQ(shard.format, ShardFormat::Headerless);
  EXPECT_EQ(shard.tokens, (std::vector<std::uint16_t>{1, 2, 0x1234}));
  // Without permission it is not a shard.
  expect_data_error([&] { load_tokens(path, 65536, false); }, {path, "not a routemoe/llm.c"});
  // Odd size.
  const std::string odd = dir.file("odd.bin");
  write_bytes(odd, {1, 0, 2});
  expect_data_error([&] { load_tokens(odd, 65536, true); }, {odd, "odd size 3"});
  // Headerless is only for .bin names.
  const std::string tok = dir.file("tokens.u16");
  write_bytes(tok, {1, 0, 2, 0});
  expect_data_error([&] { load_tokens(tok, 65536, true); }, {tok, "not a routemoe/llm.c"});
}

class MalformedShard : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("bad.bin");
    write_shard(path_, iota_tokens(10, 200));
    bytes_ = read_bytes(path_);
  }
  void rewrite() { write_bytes(path_, bytes_); }

  TempDir dir_;
  std::string path_;
  std::vector<unsigned char> bytes_;
};

TEST_F(MalformedShard, Truncated) {
  bytes_.resize(bytes_.size() - 3);
  rewrite();
  expect_data_error([&] { load_tokens(path_, 256); },
                    {path_, "truncated", "1044 bytes expected", "1041 bytes"});
}

TEST_F(MalformedShard, TrailingBytes) {
  bytes_.push_back(0);
  bytes_.push_back(0);
  rewrite();
  expect_data_error([&] { load_tokens(path_, 256); },
                    {path_, "2 trailing bytes", "1044 bytes expected", "1046 found"});
}

TEST_F(MalformedShard, ShorterThanHeader) {
  bytes_.resize(500);
  rewrite();
  expect_data_error([&] { load_tokens(path_, 256); }, {path_, "500 bytes", "1024-byte header"});
}

TEST_F(MalformedShard, BadMagic) {
  set_le32(bytes_, 0, 12345);
  rewrite();
  expect_data_error([&] { load_tokens(path_, 256); },
                    {path_, "not a routemoe/llm.c token shard (magic 12345, expected 20240520)"});
}

TEST_F(MalformedShard, BadVersion) {
  set_le32(bytes_, 4, 7);
  rewrite();
  expect_data_error([&] { load_tokens(path_, 256); }, {path_, "version 7"});
}

TEST_F(MalformedShard, OutOfVocabToken) {
  // Token 5 (value 5) becomes 300.
  bytes_[1024 + 2 * 5] = 300 & 0xff;
  bytes_[1024 + 2 * 5 + 1] = 300 >> 8;
  rewrite();
  expect_data_error([&] { load_tokens(path_, 256); },
                    {path_, "token 300 at position 5", "vocab_size 256"});
  EXPECT_EQ(load_tokens(path_, 301).tokens[5], 300);
}

TEST_F(MalformedShard, MissingFile) {
  const std::string missing = dir_.file("missing.bin");
  expect_data_error([&] { load_tokens(missing, 256); }, {missing, "no such"});
}

TEST(Shard, WriteReplacesAtomically) {
  TempDir dir;
  const std::string path = dir.file("s.bin");
  write_shard(path, iota_tokens(100, 256));
  write_shard(path, iota_tokens(3, 256));
  EXPECT_EQ(load_tokens(path, 256).tokens.size(), 3u);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(Bytes, EncodeDecode) {
  const std::string text = "Opticks \xc3\xa6 light";  // UTF-8 bytes kept as they are
  const std::vector<std::uint16_t> t = encode_bytes(text);
  ASSERT_EQ(t.size(), text.size());
  EXPECT_EQ(t[9], 0xa6);
  EXPECT_EQ(decode_bytes(t), text);
  const std::vector<std::uint16_t> bad = {65, 256};
  expect_data_error([&] { decode_bytes(bad); }, {"token 256 at position 1"});
}

TEST(Prepare, CountsSplitAndMeta) {
  TempDir dir;
  const std::string a = dir.file("a.txt"), b = dir.file("b.txt");
  std::string text_a, text_b;
  for (int i = 0; i < 60; ++i) text_a += static_cast<char>('a' + i % 26);
  for (int i = 0; i < 40; ++i) text_b += static_cast<char>('A' + i % 26);
  write_text(a, text_a);
  write_text(b, text_b);
  const std::string out = dir.file("out");
  // 102 tokens: each document starts with the separator 0x1C. val = floor(102 * 0.25) = 25;
  // no document or line start lies within 25 / 10 = 2 tokens of the cut at 77, so it stays.
  const PrepareResult r = prepare_text({a, b}, out, 0.25, 30);
  EXPECT_EQ(r.train_tokens, 77);
  EXPECT_EQ(r.val_tokens, 25);
  EXPECT_EQ(r.test_tokens, 0);
  ASSERT_EQ(r.train_shards.size(), 3u);  // 30 + 30 + 17
  ASSERT_EQ(r.val_shards.size(), 1u);
  EXPECT_TRUE(r.test_shards.empty());
  EXPECT_EQ(fs::path(r.train_shards[0]).filename(), "train_000000.bin");
  EXPECT_EQ(fs::path(r.train_shards[2]).filename(), "train_000002.bin");
  EXPECT_EQ(fs::path(r.val_shards[0]).filename(), "val_000000.bin");
  EXPECT_EQ(load_tokens(r.train_shards[0], 256).tokens.size(), 30u);
  EXPECT_EQ(load_tokens(r.train_shards[2], 256).tokens.size(), 17u);
  ASSERT_EQ(r.documents.size(), 2u);
  EXPECT_EQ(r.documents[0].offset, 0);
  EXPECT_EQ(r.documents[0].tokens, 61);
  EXPECT_EQ(r.documents[1].offset, 61);
  EXPECT_EQ(r.documents[1].tokens, 41);
  EXPECT_TRUE(r.warnings.empty());

  const std::string all = "\x1c" + text_a + "\x1c" + text_b;
  const TokenDataset train(out, "train", 256);
  const TokenDataset val(out, "val", 256);
  EXPECT_EQ(train.size(), 77);
  EXPECT_EQ(val.size(), 25);
  EXPECT_EQ(train.files().size(), 3u);
  EXPECT_EQ(decode_bytes(train.tokens()), all.substr(0, 77));
  EXPECT_EQ(decode_bytes(val.tokens()), all.substr(77));

  std::ifstream meta_in(r.meta_path);
  const std::string meta((std::istreambuf_iterator<char>(meta_in)),
                         std::istreambuf_iterator<char>());
  EXPECT_NE(meta.find("\"tokenizer\":\"byte\""), std::string::npos) << meta;
  EXPECT_NE(meta.find("\"vocab_size\":256"), std::string::npos) << meta;
  EXPECT_NE(meta.find("\"document_separator\":28"), std::string::npos) << meta;
  EXPECT_NE(meta.find("\"train_tokens\":77"), std::string::npos) << meta;
  EXPECT_NE(meta.find("\"val_tokens\":25"), std::string::npos) << meta;
  EXPECT_NE(meta.find("\"test_tokens\":0"), std::string::npos) << meta;
  EXPECT_NE(meta.find("a.txt\",\""), std::string::npos) << meta;
  EXPECT_NE(meta.find("\"splits\":{\"train\":[0,77],\"val\":[77,102],\"test\":[102,102]}"),
            std::string::npos)
      << meta;
}

TEST(Prepare, WithoutSeparatorDocumentsAreConcatenated) {
  TempDir dir;
  write_text(dir.file("a.txt"), std::string(60, 'a'));
  write_text(dir.file("b.txt"), std::string(40, 'b'));
  PrepareOptions o;
  o.val_fraction = 0.25;
  o.doc_separator = false;
  const PrepareResult r =
      prepare_corpus({dir.file("a.txt"), dir.file("b.txt")}, dir.file("out"), o);
  EXPECT_EQ(r.train_tokens, 75);
  EXPECT_EQ(r.val_tokens, 25);
  EXPECT_EQ(decode_bytes(TokenDataset(dir.file("out"), "train", 256).tokens()),
            std::string(60, 'a') + std::string(15, 'b'));
  std::ifstream meta_in(r.meta_path);
  const std::string meta((std::istreambuf_iterator<char>(meta_in)),
                         std::istreambuf_iterator<char>());
  EXPECT_NE(meta.find("\"document_separator\":null"), std::string::npos) << meta;
}

TEST(Prepare, RefusesToOverwriteUnlessAsked) {
  TempDir dir;
  const std::string in = dir.file("in.txt");
  write_text(in, std::string(1000, 'x'));
  const std::string out = dir.file("out");
  prepare_text({in}, out, 0.1, 100);  // 1001 tokens: train 901 in 10 shards
  EXPECT_TRUE(fs::exists(out + "/train_000008.bin"));
  expect_data_error([&] { prepare_text({in}, out, 0.1, 100); }, {out, "overwrite"});
  EXPECT_TRUE(fs::exists(out + "/train_000008.bin"));  // nothing lost

  write_text(in, std::string(199, 'y'));  // + the separator: 200 tokens
  const PrepareResult r = prepare_text({in}, out, 0.5, 100, /*overwrite=*/true);
  EXPECT_EQ(r.train_shards.size(), 1u);
  EXPECT_FALSE(fs::exists(out + "/train_000001.bin"));  // stale shards removed
  for (const auto& e : fs::directory_iterator(out)) {
    EXPECT_NE(e.path().extension(), ".tmp") << e.path();
  }
  EXPECT_EQ(TokenDataset(out, "train", 256).size(), 100);
}

TEST(Prepare, BadInputs) {
  TempDir dir;
  const std::string out = dir.file("out");
  const std::string missing = dir.file("nope.txt");
  expect_data_error([&] { prepare_text({missing}, out, 0.1, 100); }, {missing, "does not exist"});
  const std::string empty = dir.file("empty.txt");
  write_text(empty, "");
  expect_data_error([&] { prepare_text({empty}, out, 0.1, 100); }, {empty, "empty"});
  const std::string tiny = dir.file("tiny.txt");
  write_text(tiny, "abc");
  expect_data_error([&] { prepare_text({tiny}, out, 0.1, 100); }, {"too few"});
  EXPECT_THROW(prepare_text({tiny}, out, 1.0, 100), Error);
  EXPECT_THROW(prepare_text({tiny}, out, 0.5, 0), Error);
  EXPECT_FALSE(fs::exists(out));  // nothing was created for failed runs
}

// Runs `fn`, expects Error(Config) whose one-line message contains every string in `needles`.
void expect_config_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Config) << e.what();
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    for (const std::string& n : needles) {
      EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
    }
  }
}

TEST(Prepare, DirectoriesAreDocumentsInPathOrder) {
  TempDir dir;
  fs::create_directories(dir.path() / "corpus" / "sub");
  fs::create_directories(dir.path() / "corpus" / ".git");
  write_text(dir.file("corpus/b.txt"), std::string(300, 'b'));
  write_text(dir.file("corpus/a.txt"), std::string(200, 'a'));
  write_text(dir.file("corpus/sub/c.txt"), std::string(100, 'c'));
  write_text(dir.file("corpus/.hidden.txt"), "never read");
  write_text(dir.file("corpus/.git/config"), "never read");
  write_text(dir.file("corpus/empty.txt"), "");
  write_text(dir.file("extra.txt"), std::string(400, 'x'));
  PrepareOptions o;
  o.val_fraction = 0.1;
  const PrepareResult r =
      prepare_corpus({dir.file("corpus"), dir.file("extra.txt")}, dir.file("out"), o);
  ASSERT_EQ(r.documents.size(), 4u);  // a, b, sub/c (path order), then extra
  EXPECT_EQ(fs::path(r.documents[0].path).filename(), "a.txt");
  EXPECT_EQ(fs::path(r.documents[1].path).filename(), "b.txt");
  EXPECT_EQ(fs::path(r.documents[2].path).filename(), "c.txt");
  EXPECT_EQ(fs::path(r.documents[3].path).filename(), "extra.txt");
  EXPECT_EQ(r.documents[3].offset, 201 + 301 + 101);
  EXPECT_EQ(r.train_tokens + r.val_tokens, 1004);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("empty.txt: empty file skipped"), std::string::npos)
      << r.warnings[0];
  const std::string all = decode_bytes(TokenDataset(dir.file("out"), "train", 256).tokens()) +
                          decode_bytes(TokenDataset(dir.file("out"), "val", 256).tokens());
  EXPECT_EQ(all.find("never read"), std::string::npos);
  EXPECT_EQ(all.substr(0, 3),
            "\x1c"
            "aa");
  EXPECT_EQ(all.substr(201, 2),
            "\x1c"
            "b");
}

TEST(Prepare, BadInputLists) {
  TempDir dir;
  write_text(dir.file("a.txt"), std::string(100, 'a'));
  fs::create_directories(dir.path() / "d");
  write_text(dir.file("d/a.txt"), std::string(100, 'a'));
  fs::create_directories(dir.path() / "hollow" / "x");
  write_text(dir.file("hollow/empty.txt"), "");
  const std::string out = dir.file("out");
  expect_data_error(
      [&] {
        prepare_text({dir.file("a.txt"), dir.file("a.txt")}, out, 0.1, 100);
      },
      {"a.txt", "named twice"});
  expect_data_error(
      [&] {
        prepare_text({dir.file("d"), dir.file("d/a.txt")}, out, 0.1, 100);
      },
      {"named twice"});
  expect_data_error([&] { prepare_text({dir.file("hollow")}, out, 0.1, 100); },
                    {"hollow", "no non-empty files"});
  EXPECT_FALSE(fs::exists(out));
}

TEST(Prepare, InvalidUtf8IsKeptAndReported) {
  TempDir dir;
  // Offsets: "valid \xc3\xa9 " is 9 bytes; then \xff (invalid), then "ok", then a truncated
  // 3-byte sequence \xe2\x82 followed by 'x' (one invalid sequence), then valid text.
  const std::string text =
      std::string("valid \xc3\xa9 \xff") + "ok\xe2\x82x" + std::string(200, 'z');
  write_text(dir.file("latin.txt"), text);
  write_text(dir.file("fine.txt"), std::string(100, 'f'));
  const PrepareResult r =
      prepare_text({dir.file("fine.txt"), dir.file("latin.txt")}, dir.file("out"), 0.1, 1000);
  ASSERT_EQ(r.warnings.size(), 1u);
  const std::string& w = r.warnings[0];
  EXPECT_NE(w.find("latin.txt: not valid UTF-8: 2 invalid byte sequence(s), the first at byte "
                   "offset 9"),
            std::string::npos)
      << w;
  EXPECT_EQ(r.documents[1].utf8.invalid, 2);
  EXPECT_EQ(r.documents[1].utf8.first_offset, 9);
  EXPECT_EQ(r.documents[0].utf8.invalid, 0);
  const std::string all = decode_bytes(TokenDataset(dir.file("out"), "train", 256).tokens()) +
                          decode_bytes(TokenDataset(dir.file("out"), "val", 256).tokens());
  EXPECT_EQ(all.substr(102), text);  // byte for byte
  std::ifstream meta_in(r.meta_path);
  const std::string meta((std::istreambuf_iterator<char>(meta_in)),
                         std::istreambuf_iterator<char>());
  EXPECT_NE(meta.find("\"invalid_utf8\":2,\"first_invalid\":9"), std::string::npos) << meta;
}

TEST(Utf8, StrictValidation) {
  EXPECT_EQ(check_utf8("plain ascii").invalid, 0);
  EXPECT_EQ(check_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80").invalid, 0);  // e-acute, euro, emoji
  EXPECT_EQ(check_utf8("plain").first_offset, -1);
  const auto bad = [](std::string_view s) { return check_utf8(s); };
  EXPECT_EQ(bad("a\xc0\x80").invalid, 1);  // overlong NUL
  EXPECT_EQ(bad("a\xc0\x80").first_offset, 1);
  EXPECT_EQ(bad("\xe0\x80\xaf").invalid, 1);      // overlong 3-byte
  EXPECT_EQ(bad("\xed\xa0\x80").invalid, 1);      // surrogate U+D800
  EXPECT_EQ(bad("\xf4\x90\x80\x80").invalid, 1);  // above U+10FFFF
  EXPECT_EQ(bad("\xf5\x80\x80\x80").invalid, 1);  // no such lead byte
  EXPECT_EQ(bad("ab\xe2\x82").invalid, 1);        // truncated at the end
  EXPECT_EQ(bad("ab\xe2\x82").first_offset, 2);
  EXPECT_EQ(bad("\x80\x80 x \xff").invalid, 2);  // a run of stray continuations, then 0xff
  EXPECT_EQ(bad("\xef\xbb\xbf").invalid, 0);     // a byte order mark is valid UTF-8
}

TEST(Prepare, FractionsCheckedAgainstSequenceAndProbeUpFront) {
  TempDir dir;
  write_text(dir.file("in.txt"), std::string(2999, 'x'));  // 3000 tokens with the separator
  const std::string out = dir.file("out");
  PrepareOptions o;
  o.seq_len = 64;
  o.batch_size = 4;
  o.probe_tokens = 512;
  o.val_fraction = 0.1;  // 300 tokens: enough for one eval batch (257), not for the probe (512)
  expect_config_error(
      [&] { prepare_corpus({dir.file("in.txt")}, out, o); },
      {"--val-fraction 0.1", "val split 300 of 3000 tokens", "the 512 it needs",
       "--probe-tokens 512", "4 x --seq-len 64 + 1 = 257", "use --val-fraction 0.171 or more"});
  o.val_fraction = 0.2;
  o.test_fraction = 0.05;  // 150 < 257
  expect_config_error([&] { prepare_corpus({dir.file("in.txt")}, out, o); },
                      {"--test-fraction 0.05", "test split 150 of 3000", "the 257 it needs",
                       "use --test-fraction 0.0857 or more"});
  o.seq_len = 1000;  // val needs 4 * 1000 + 1 > 3000: the val check comes first
  o.val_fraction = 0.5;
  o.test_fraction = 0.0;
  expect_config_error([&] { prepare_corpus({dir.file("in.txt")}, out, o); },
                      {"val split 1500 of 3000", "the 4001 it needs", "use --val-fraction 1.34"});
  o.batch_size = 1;
  o.probe_tokens = 0;
  o.val_fraction = 0.4;
  o.test_fraction = 0.4;  // train 600 < 1001
  expect_config_error([&] { prepare_corpus({dir.file("in.txt")}, out, o); },
                      {"train split 600 of 3000", "the 1001 it needs", "--seq-len 1000 + 1"});
  EXPECT_FALSE(fs::exists(out));  // checked before anything was written
  o.seq_len = 64;
  o.batch_size = 4;
  o.probe_tokens = 512;
  o.val_fraction = 0.2;
  o.test_fraction = 0.1;
  const PrepareResult r = prepare_corpus({dir.file("in.txt")}, out, o);
  EXPECT_EQ(r.val_tokens, 600);
  EXPECT_EQ(r.test_tokens, 300);
  EXPECT_EQ(r.train_tokens, 2100);
}

TEST(Prepare, TestSplitAndCutsAtDocumentStarts) {
  TempDir dir;
  write_text(dir.file("1.txt"), std::string(500, 'a'));
  write_text(dir.file("2.txt"), std::string(300, 'b'));
  write_text(dir.file("3.txt"), std::string(200, 'c'));
  PrepareOptions o;
  o.val_fraction = 0.28;  // floor(1003 * 0.28) = 280: target cut 523, document 2 starts at 501
  o.test_fraction = 0.2;  // floor(1003 * 0.2) = 200: target cut 803, document 3 starts at 802
  const PrepareResult r =
      prepare_corpus({dir.file("1.txt"), dir.file("2.txt"), dir.file("3.txt")}, dir.file("out"), o);
  EXPECT_EQ(r.train_tokens, 501);
  EXPECT_EQ(r.val_tokens, 301);
  EXPECT_EQ(r.test_tokens, 201);
  ASSERT_EQ(r.test_shards.size(), 1u);
  EXPECT_EQ(fs::path(r.test_shards[0]).filename(), "test_000000.bin");
  EXPECT_EQ(decode_bytes(TokenDataset(dir.file("out"), "val", 256).tokens()),
            "\x1c" + std::string(300, 'b'));
  EXPECT_EQ(decode_bytes(TokenDataset(dir.file("out"), "test", 256).tokens()),
            "\x1c" + std::string(200, 'c'));
  // Too far (more than a tenth of the split) from a document start: the cut stays.
  o.test_fraction = 0.15;  // 150: target 853, document 3 at 802 is 51 > 15 away
  o.overwrite = true;
  const PrepareResult r2 =
      prepare_corpus({dir.file("1.txt"), dir.file("2.txt"), dir.file("3.txt")}, dir.file("out"), o);
  EXPECT_EQ(r2.test_tokens, 150);
  EXPECT_EQ(r2.val_tokens, 280);  // target 573, document 2 at 501 is 72 > 28 away
}

TEST(Prepare, CutsMoveToLineStarts) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 40; ++i) text += std::string(24, static_cast<char>('a' + i % 26)) + "\n";
  write_text(dir.file("in.txt"), text);  // 1000 bytes, 1001 tokens; lines start at 1 + 25 k
  PrepareOptions o;
  o.val_fraction = 0.21;  // 210: target cut 791, tolerance 21; line starts 801 (10 away), 776 (15)
  const PrepareResult r = prepare_corpus({dir.file("in.txt")}, dir.file("out"), o);
  EXPECT_EQ(r.train_tokens, 801);
  EXPECT_EQ(r.val_tokens, 200);
  const std::string val = decode_bytes(TokenDataset(dir.file("out"), "val", 256).tokens());
  EXPECT_EQ(val.substr(0, 25), std::string(24, 'g') + "\n");  // line 32 starts the split
}

TEST(Dataset, PatternsAndMissingSplits) {
  TempDir dir;
  write_shard(dir.file("train_000001.bin"), iota_tokens(5, 256));
  write_shard(dir.file("train_000000.bin"), std::vector<std::uint16_t>{100, 101});
  write_shard(dir.file("val_000000.bin"), std::vector<std::uint16_t>{});
  const TokenDataset by_dir(dir.path().string(), "train", 256);
  ASSERT_EQ(by_dir.size(), 7);
  EXPECT_EQ(by_dir.tokens()[0], 100);  // sorted by name
  EXPECT_EQ(by_dir.files()[1].offset, 2);
  const TokenDataset by_glob(dir.file("train_*.bin"), "ignored", 256);
  EXPECT_EQ(by_glob.tokens(), by_dir.tokens());
  const TokenDataset by_placeholder(dir.file("{split}_00000?.bin"), "train", 256);
  EXPECT_EQ(by_placeholder.tokens(), by_dir.tokens());

  expect_data_error([&] { TokenDataset(dir.path().string(), "val", 256); },
                    {"split 'val'", "0 tokens"});
  expect_data_error([&] { TokenDataset(dir.path().string(), "test", 256); },
                    {dir.path().string(), "split 'test'"});
  expect_data_error([&] { TokenDataset(dir.file("nope_*.bin"), "train", 256); }, {"nope_*.bin"});
  expect_data_error([&] { TokenDataset(dir.path().string(), "train", 50); },
                    {"train_000000.bin", "token 100 at position 0"});
}

class Loader : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::uint16_t> tokens(1000);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::uint16_t>(i);
    write_shard(dir_.file("train_000000.bin"), tokens);
    data_ = std::make_unique<TokenDataset>(dir_.path().string(), "train", 1000);
  }
  TempDir dir_;
  std::unique_ptr<TokenDataset> data_;
};

TEST_F(Loader, RowsArePureFunctionOfSeedStepRow) {
  const BatchLoader loader(*data_, {/*batch_size=*/4, /*seq_len=*/16, /*seed=*/42});
  for (std::int64_t step : {0, 1, 17}) {
    const Batch all = loader.batch_at(step, 0, 4);
    const Batch part = loader.batch_at(step, 2, 2);
    ASSERT_EQ(all.inputs.size(), 4u * 16u);
    ASSERT_EQ(part.inputs.size(), 2u * 16u);
    EXPECT_EQ(part.row_begin, 2);
    for (std::size_t i = 0; i < part.inputs.size(); ++i) {
      EXPECT_EQ(part.inputs[i], all.inputs[2 * 16 + i]);
      EXPECT_EQ(part.targets[i], all.targets[2 * 16 + i]);
    }
    // Same seed in a fresh loader: same batch; a different seed: a different one.
    const BatchLoader again(*data_, {4, 16, 42});
    EXPECT_EQ(again.batch_at(step, 0, 4).inputs, all.inputs);
    const BatchLoader other(*data_, {4, 16, 43});
    EXPECT_NE(other.batch_at(step, 0, 4).starts, all.starts);
  }
  EXPECT_NE(loader.batch_at(0, 0, 4).starts, loader.batch_at(1, 0, 4).starts);
  // The global batch size does not change a row's window.
  const BatchLoader wider(*data_, {8, 16, 42});
  EXPECT_EQ(wider.window_start(5, 3), loader.window_start(5, 3));
  EXPECT_THROW(loader.batch_at(0, 3, 2), Error);
}

TEST_F(Loader, TargetsAreInputsShiftedByOne) {
  const BatchLoader loader(*data_, {3, 10, 7});
  const Batch b = loader.batch_at(4, 0, 3);
  for (std::int64_t r = 0; r < 3; ++r) {
    EXPECT_GE(b.starts[r], 0);
    EXPECT_LE(b.starts[r] + 10 + 1, 1000);
    for (std::int64_t t = 0; t < 10; ++t) {
      EXPECT_EQ(b.inputs[r * 10 + t], b.starts[r] + t);  // token value == position here
      EXPECT_EQ(b.targets[r * 10 + t], b.inputs[r * 10 + t] + 1);
    }
  }
}

TEST_F(Loader, StepCounterStateAndEpochs) {
  BatchLoader loader(*data_, {4, 16, 1});
  const Batch b0 = loader.next();
  const Batch b1 = loader.next(1, 2);
  EXPECT_EQ(b0.step, 0);
  EXPECT_EQ(b1.step, 1);
  EXPECT_EQ(b1.inputs, loader.batch_at(1, 1, 2).inputs);
  const LoaderState st = loader.state();
  EXPECT_EQ(st.step, 2);

  BatchLoader resumed(*data_, {4, 16, 1});
  resumed.set_state(st);
  EXPECT_EQ(resumed.next().inputs, loader.next().inputs);
  BatchLoader mismatched(*data_, {4, 16, 2});
  EXPECT_THROW(mismatched.set_state(st), Error);

  EXPECT_EQ(loader.tokens_per_epoch(), 1000);
  EXPECT_EQ(loader.steps_per_epoch(), 15);  // 1000 / 64
  EXPECT_EQ(loader.epoch_of_step(14), 0);
  EXPECT_EQ(loader.epoch_of_step(15), 1);
  EXPECT_TRUE(loader.is_epoch_end(14));
  EXPECT_FALSE(loader.is_epoch_end(15));
}

TEST_F(Loader, EvalWindowsAreSequential) {
  const BatchLoader loader(*data_, {4, 30, 0});
  EXPECT_EQ(loader.eval_windows(), 33);  // (1000 - 1) / 30
  EXPECT_EQ(loader.eval_num_batches(), 8);
  const std::vector<Batch> all = loader.eval_batches(0);
  ASSERT_EQ(all.size(), 8u);
  std::int64_t expect = 0;
  for (const Batch& b : all) {
    for (std::int64_t r = 0; r < b.rows; ++r) {
      EXPECT_EQ(b.starts[r], expect);
      for (std::int64_t t = 0; t < 30; ++t) {
        EXPECT_EQ(b.inputs[r * 30 + t], expect + t);
        EXPECT_EQ(b.targets[r * 30 + t], expect + t + 1);
      }
      expect += 30;
    }
  }
  EXPECT_EQ(loader.eval_batches(3).size(), 3u);
  EXPECT_EQ(loader.eval_batches(3)[2].inputs, all[2].inputs);  // deterministic
  const std::vector<Batch> rank1 = loader.eval_batches(2, 2, 2);
  EXPECT_EQ(rank1[1].starts, (std::vector<std::int64_t>{(4 + 2) * 30, (4 + 3) * 30}));
}

TEST_F(Loader, TooShortSplitErrorsClearly) {
  expect_data_error(
      [&] {
        BatchLoader(*data_, {1, 1000, 0});
      },
      {"split 'train'", "1000 tokens", "seq_len 1000"});
  const BatchLoader big(*data_, {64, 20, 0});  // 1280 + 1 tokens for one eval batch
  expect_data_error([&] { big.eval_batches(1); }, {"fewer than one eval batch"});
}

TEST(ExampleData, ShippedTextPreparesAndLoads) {
  // CMake compiles this file by its absolute path: find the repository root from it.
  const fs::path text = fs::path(__FILE__).parent_path() / "../../examples/data/opticks.txt";
  ASSERT_TRUE(fs::exists(text)) << text;
  TempDir dir;
  const PrepareResult r = prepare_text({text.string()}, dir.file("out"), 0.1, 1 << 20);
  EXPECT_GT(r.train_tokens, 300000);
  const TokenDataset val(dir.file("out"), "val", kByteVocabSize);
  const BatchLoader loader(val, {8, 64, 0});
  EXPECT_GT(loader.eval_num_batches(), 10);
}

}  // namespace
}  // namespace routemoe
