// Corrupted evaluation text (framework/corruption.h) on hand-made text: exact counts, stopwords
// untouched, same seed -> same output, another seed -> another output; and the corrupted shard
// set that `routemoe prepare --corrupt` writes (framework/data.h, prepare_corrupted).

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "framework/corruption.h"
#include "framework/data.h"
#include "framework/error.h"

namespace routemoe {
namespace {

namespace fs = std::filesystem;

// Space-separated items of `text` (the hand-made texts below use single spaces and newlines).
std::vector<std::string> items(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// A paragraph of `content` content words (c0, c1, ... with a prefix) and `stop` stopwords,
// interleaved: content words at even positions until they run out.
std::string paragraph(const std::string& prefix, int content, int stop) {
  static const char* const kStop[] = {"the", "The", "of", "AND", "to", "don't", "is", "was"};
  std::string p;
  int c = 0, s = 0;
  while (c < content || s < stop) {
    if (!p.empty()) p += ' ';
    if (c < content && (s >= stop || (c + s) % 2 == 0)) {
      p += prefix + "word" + std::to_string(c++);
    } else {
      p += kStop[s++ % 8];
    }
  }
  return p;
}

// Every item of `out` equals the item of `in` at the same place, or is the marker where `in`
// has a non-stopword. Returns the number of markers.
int check_swaps(const std::string& in, const std::string& out, const std::string& marker) {
  const std::vector<std::string> a = items(in), b = items(out);
  EXPECT_EQ(a.size(), b.size());
  int swapped = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (a[i] == b[i]) continue;
    EXPECT_EQ(b[i], marker) << "item " << i << ": " << a[i] << " -> " << b[i];
    EXPECT_FALSE(is_stopword(a[i])) << "stopword swapped: " << a[i];
    ++swapped;
  }
  return swapped;
}

TEST(Stopwords, NltkEnglishListCaseInsensitive) {
  EXPECT_EQ(english_stopwords().size(), 179u);
  for (const char* w : {"the", "The", "THE", "don't", "don\xe2\x80\x99t", "mustn't", "ourselves"}) {
    EXPECT_TRUE(is_stopword(w)) << w;
  }
  for (const char* w : {"light", "Newton", "thee", "dont", "<unk>"})
    EXPECT_FALSE(is_stopword(w)) << w;
}

TEST(Words, JoinersOnlyBetweenLetters) {
  const std::string text =
      "well-known don't _italic_ Moses' x--y caf\xc3\xa9 \xe2\x80\x9cquoted\xe2\x80\x9d 42";
  std::vector<std::string> words;
  for (const auto& [b, e] : find_words(text)) words.push_back(text.substr(b, e - b));
  const std::vector<std::string> expected = {"well-known", "don't",       "italic", "Moses",
                                             "x--y",       "caf\xc3\xa9", "quoted", "42"};
  EXPECT_EQ(words, expected);
}

TEST(WordSwap, ExactCountPerParagraph) {
  // Paragraph 1: 80 words (60 content, 20 stopwords): floor(0.025 * 80) = 2 swaps.
  // Paragraph 2: 10 words: floor(0.25) = 0, at least one per paragraph: 1 swap.
  // Paragraph 3 (after a document separator): 40 words: floor(1.0) = 1 swap.
  const std::string p1 = paragraph("a", 60, 20), p2 = paragraph("b", 6, 4),
                    p3 = paragraph("c", 30, 10);
  const std::string text = p1 + "\n \n" + p2 + "\n\x1c" + p3 + "\n";
  WordSwapOptions o;  // rate 0.025, marker <unk>, unit paragraph, at least 1, seed 1
  CorruptionStats st;
  const std::string out = word_swap(text, o, &st);
  EXPECT_EQ(st.words, 130);
  EXPECT_EQ(st.eligible, 96);
  EXPECT_EQ(st.changed, 4);
  EXPECT_EQ(check_swaps(text, out, "<unk>"), 4);
  const std::size_t cut1 = out.find("\n \n"), cut2 = out.find('\x1c');
  ASSERT_NE(cut1, std::string::npos);
  ASSERT_NE(cut2, std::string::npos);
  EXPECT_EQ(count(out.substr(0, cut1), "<unk>"), 2u);
  EXPECT_EQ(count(out.substr(cut1, cut2 - cut1), "<unk>"), 1u);
  EXPECT_EQ(count(out.substr(cut2), "<unk>"), 1u);
  EXPECT_EQ(count(out, "\x1c"), 1u);  // the separator and the blank line are kept
  EXPECT_EQ(count(out, "\n \n"), 1u);

  // Without the minimum, paragraph 2 keeps all its words.
  o.min_per_unit = 0;
  const std::string out0 = word_swap(text, o, &st);
  EXPECT_EQ(st.changed, 3);
  const std::size_t at1 = out0.find("\n \n"), at2 = out0.find('\x1c');
  EXPECT_EQ(count(out0.substr(at1, at2 - at1), "<unk>"), 0u);
}

TEST(WordSwap, LineAndTextUnits) {
  std::string text;
  for (int l = 0; l < 10; ++l) text += paragraph(fmt::format("l{}_", l), 9, 3) + "\n";
  WordSwapOptions o;
  o.unit = CorruptUnit::Line;  // 10 lines of 12 words: floor(0.3) = 0, at least 1 each
  CorruptionStats st;
  std::string out = word_swap(text, o, &st);
  EXPECT_EQ(st.changed, 10);
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) EXPECT_EQ(count(line, "<unk>"), 1u) << line;
  o.unit = CorruptUnit::Paragraph;  // one paragraph of 120 words: floor(3.0) = 3
  out = word_swap(text, o, &st);
  EXPECT_EQ(st.changed, 3);
  EXPECT_EQ(check_swaps(text, out, "<unk>"), 3);
  o.unit = CorruptUnit::Text;
  o.rate = 0.1;  // floor(12.0) = 12
  out = word_swap(text, o, &st);
  EXPECT_EQ(st.changed, 12);
  EXPECT_EQ(check_swaps(text, out, "<unk>"), 12);
}

TEST(WordSwap, ExactRateOnALongText) {
  const std::string text = paragraph("w", 3000, 1000);  // 4000 words, one paragraph
  WordSwapOptions o;
  CorruptionStats st;
  const std::string out = word_swap(text, o, &st);
  EXPECT_EQ(st.changed, 100);  // floor(0.025 * 4000)
  EXPECT_EQ(check_swaps(text, out, "<unk>"), 100);
  // Rate 1: every non-stopword goes, every stopword ("The", "AND", "don't" included) stays.
  o.rate = 1.0;
  const std::string all = word_swap(text, o, &st);
  EXPECT_EQ(st.changed, 3000);
  EXPECT_EQ(check_swaps(text, all, "<unk>"), 3000);
  EXPECT_EQ(count(all, "The "), count(text, "The "));
}

TEST(WordSwap, SeedDecides) {
  const std::string text = paragraph("a", 300, 100) + "\n\n" + paragraph("b", 150, 50);
  WordSwapOptions o;
  o.marker = "[UNK]";
  const std::string one = word_swap(text, o);
  EXPECT_EQ(word_swap(text, o), one);  // same seed, same output
  o.seed = 2;
  const std::string two = word_swap(text, o);
  EXPECT_NE(two, one);
  EXPECT_EQ(check_swaps(text, two, "[UNK]"), 15);  // 10 + 5
  EXPECT_EQ(count(two, "[UNK]"), count(one, "[UNK]"));
}

TEST(WordSwap, ChoiceIsUniform) {
  // One line of 40 words (10 content): floor(0.025 * 40) = 1 swap among the 10 content words.
  // Over 3000 seeds each is chosen ~300 times (binomial sd 16.4); the bound 300 +- 82 is 5 sd.
  const std::string text = paragraph("u", 10, 30);
  std::map<std::string, int> hits;
  WordSwapOptions o;
  for (std::uint64_t seed = 1; seed <= 3000; ++seed) {
    o.seed = seed;
    const std::vector<std::string> a = items(text), b = items(word_swap(text, o));
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (a[i] != b[i]) ++hits[a[i]];
    }
  }
  ASSERT_EQ(hits.size(), 10u);
  for (const auto& [word, n] : hits) {
    EXPECT_GE(n, 218) << word;
    EXPECT_LE(n, 382) << word;
  }
}

TEST(WordSwap, BadOptions) {
  WordSwapOptions o;
  o.rate = 1.5;
  EXPECT_THROW(word_swap("text", o), Error);
  o.rate = 0.1;
  o.min_per_unit = -1;
  EXPECT_THROW(word_swap("text", o), Error);
  EXPECT_THROW(parse_corrupt_unit("sentence"), Error);
}

// Letters of `s` removed: what character noise must leave as it was.
std::string non_letters(const std::string& s) {
  std::string out;
  for (char c : s) {
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!letter) out += c;
  }
  return out;
}

TEST(CharNoise, ExactCountAndOnlyLettersChange) {
  std::string text;
  for (int i = 0; i < 100; ++i)
    text +=
        "Lights, rays.\n\x1c"
        "bodies 4242; ";  // 20 letters
  CharNoiseOptions o;     // rate 0.05, seed 1
  CorruptionStats st;
  const std::string out = char_noise(text, o, &st);
  EXPECT_EQ(st.eligible, 2000);
  EXPECT_EQ(st.changed, 100);  // floor(0.05 * 2000)
  EXPECT_EQ(st.inserted + st.deleted + st.substituted, 100);
  EXPECT_GT(st.inserted, 0);
  EXPECT_GT(st.deleted, 0);
  EXPECT_GT(st.substituted, 0);
  EXPECT_EQ(static_cast<std::int64_t>(out.size()),
            static_cast<std::int64_t>(text.size()) + st.inserted - st.deleted);
  EXPECT_EQ(non_letters(out), non_letters(text));  // punctuation, spaces, separators kept
  EXPECT_EQ(char_noise(text, o), out);
  o.seed = 7;
  EXPECT_NE(char_noise(text, o), out);
}

TEST(CharNoise, EveryEditIsOneOfThree) {
  // Rate 1 on one-letter words: each word becomes two letters (insert, the original second),
  // none (delete) or one other letter (substitute).
  std::string text;
  for (int i = 0; i < 260; ++i) text += std::string(1, static_cast<char>('a' + i % 26)) + " ";
  CharNoiseOptions o;
  o.rate = 1.0;
  CorruptionStats st;
  const std::string out = char_noise(text, o, &st);
  std::vector<std::string> words;
  std::string cur;
  for (char c : out) {
    if (c == ' ') {
      words.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  ASSERT_EQ(words.size(), 260u);
  std::int64_t ins = 0, del = 0, sub = 0;
  for (std::size_t i = 0; i < words.size(); ++i) {
    const char original = static_cast<char>('a' + i % 26);
    const std::string& w = words[i];
    if (w.size() == 2) {
      EXPECT_EQ(w[1], original);
      ++ins;
    } else if (w.empty()) {
      ++del;
    } else {
      ASSERT_EQ(w.size(), 1u);
      EXPECT_NE(w[0], original) << "substitution kept the letter";
      EXPECT_TRUE(w[0] >= 'a' && w[0] <= 'z');
      ++sub;
    }
  }
  EXPECT_EQ(ins, st.inserted);
  EXPECT_EQ(del, st.deleted);
  EXPECT_EQ(sub, st.substituted);
}

TEST(CharNoise, KeepsUtf8Valid) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "caf\xc3\xa9 \xce\xbb\xcf\x8c\xce\xb3\xce\xbf\xcf\x82 ";
  CharNoiseOptions o;
  o.rate = 0.5;
  const std::string out = char_noise(text, o);
  EXPECT_NE(out, text);
  EXPECT_EQ(check_utf8(out).invalid, 0);
}

class CorruptSet : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / (std::string("routemoe_test_corrupt_") +
                                        std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::string text;
    for (int p = 0; p < 60; ++p) text += paragraph(fmt::format("p{}", p), 45, 15) + "\n\n";
    std::ofstream(dir_ / "in.txt") << text;
    PrepareOptions o;
    o.val_fraction = 0.25;
    o.test_fraction = 0.25;
    prepare_corpus({(dir_ / "in.txt").string()}, clean(), o);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string clean() const { return (dir_ / "clean").string(); }
  std::string out(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

TEST_F(CorruptSet, WritesHeldOutSplitsWithRecipe) {
  CorruptOptions o;
  o.word_swap.seed = 5;
  const CorruptResult r = prepare_corrupted(clean(), out("ws"), o);
  ASSERT_EQ(r.splits.size(), 2u);  // val and test; train is never corrupted
  EXPECT_EQ(r.splits[0].split, "val");
  EXPECT_EQ(r.splits[1].split, "test");
  EXPECT_FALSE(fs::exists(out("ws/train_000000.bin")));
  for (const CorruptedSplit& s : r.splits) {
    const TokenDataset clean_split(clean(), s.split, 256);
    const TokenDataset bad(out("ws"), s.split, 256);
    const std::string before = decode_bytes(clean_split.tokens());
    const std::string after = decode_bytes(bad.tokens());
    EXPECT_EQ(s.source_tokens, clean_split.size());
    EXPECT_EQ(s.tokens, bad.size());
    EXPECT_GT(s.stats.changed, 0);
    EXPECT_EQ(count(after, "<unk>"), static_cast<std::size_t>(s.stats.changed));
    WordSwapOptions w;
    w.seed = 5;
    EXPECT_EQ(after, word_swap(before, w));  // the recipe, applied to the clean split
  }
  std::ifstream in(r.meta_path);
  const std::string meta((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* key :
       {"\"tokenizer\":\"byte\"", "\"document_separator\":28", "\"recipe\":\"word-swap\"",
        "\"rate\":0.025", "\"seed\":5", "\"marker\":\"<unk>\"", "\"unit\":\"paragraph\"",
        "\"min_per_unit\":1", "\"stopwords\":\"nltk-english\"", "\"val\":{\"source_tokens\""}) {
    EXPECT_NE(meta.find(key), std::string::npos) << key << " not in " << meta;
  }
  // Deterministic: the same recipe again gives the same bytes; another seed other bytes.
  prepare_corrupted(clean(), out("ws_again"), o);
  EXPECT_EQ(TokenDataset(out("ws_again"), "test", 256).tokens(),
            TokenDataset(out("ws"), "test", 256).tokens());
  o.word_swap.seed = 6;
  prepare_corrupted(clean(), out("ws6"), o);
  EXPECT_NE(TokenDataset(out("ws6"), "test", 256).tokens(),
            TokenDataset(out("ws"), "test", 256).tokens());
}

TEST_F(CorruptSet, CharNoiseAndRefusals) {
  CorruptOptions o;
  o.kind = CorruptKind::CharNoise;
  o.splits = {"test"};
  const CorruptResult r = prepare_corrupted(clean(), out("cn"), o);
  ASSERT_EQ(r.splits.size(), 1u);
  EXPECT_EQ(r.splits[0].stats.changed, r.splits[0].stats.eligible / 20);  // floor(0.05 x)
  EXPECT_FALSE(fs::exists(out("cn/val_000000.bin")));

  EXPECT_THROW(prepare_corrupted(clean(), clean(), o), Error);       // onto the source
  EXPECT_THROW(prepare_corrupted(clean(), out("cn"), o), Error);     // no --overwrite
  EXPECT_THROW(prepare_corrupted(out("nope"), out("x"), o), Error);  // no source
  o.splits = {"train"};
  EXPECT_THROW(prepare_corrupted(clean(), out("tr"), o), Error);  // never train
  o.splits = {"nosuch"};
  EXPECT_THROW(prepare_corrupted(clean(), out("ns"), o), Error);  // missing split
  EXPECT_THROW(parse_corrupt_kind("typo"), Error);
}

}  // namespace
}  // namespace routemoe
