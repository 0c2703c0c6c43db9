#pragma once
// Corrupted evaluation text (docs/evaluation.md, "Corrupted test data"): two recipes, each a
// pure function of (text, options, seed), applied by `routemoe prepare --corrupt` to the held-out
// splits of a prepared data set.
//
// Word swap, the attack of the AC paper's language-model code (Fsoft-AIC, Tight Clusters Make
// Specialized Experts, which runs TextAttack's Augmenter over each line of WikiText-103 with a
// word swap to a fixed unknown word, a stopword constraint and pct_words_to_swap = 0.025): in
// each unit of text floor(rate x words) words are replaced by `marker`, chosen uniformly without
// replacement among the words that are not stopwords, and at least `min_per_unit` of a unit that
// has words (TextAttack: at least one per line). `words` counts every word of the unit,
// stopwords included, as TextAttack does. A unit is a paragraph (text between blank lines or
// document separators 0x1C: a line of WikiText-103 is one paragraph, so this is the authors'
// unit also for hard-wrapped text), a line, or the whole text. Stopwords are the NLTK English
// list (english_stopwords(), matched case-insensitively; TextAttack compares case-sensitively,
// so there "The" can be swapped, here it cannot).
//
// Character noise: floor(rate x letters) letters or digits of the text, chosen uniformly without
// replacement, are each deleted, replaced by another lowercase ASCII letter, or preceded by an
// inserted lowercase ASCII letter (one of the three, uniformly). Whitespace, punctuation and
// document separators are never touched, so lines and documents keep their boundaries.
//
// Words and letters: a word is a run of letters and digits, with the joiners ' - _ and U+2019
// allowed between two of them ("don't", "well-known"; TextAttack's words_from_text keeps the
// same joiners, also at the end of a word, which here belong to the text around it). Letters are
// ASCII letters and every non-ASCII code point from U+00C0 on except the multiplication and
// division signs and the punctuation and symbol blocks U+2000-U+2BFF and U+3000-U+303F; bytes that
// are not valid UTF-8 are neither.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace routemoe {

enum class CorruptUnit { Paragraph, Line, Text };

// "paragraph" | "line" | "text"; Error(Config) otherwise.
CorruptUnit parse_corrupt_unit(const std::string& name);
const char* corrupt_unit_name(CorruptUnit unit);

struct WordSwapOptions {
  double rate = 0.025;           // share of the words of a unit, [0, 1]
  std::string marker = "<unk>";  // replacement of every swapped word
  CorruptUnit unit = CorruptUnit::Paragraph;
  std::int64_t min_per_unit = 1;  // at least this many per unit that has words
  std::uint64_t seed = 1;
};

struct CharNoiseOptions {
  double rate = 0.05;  // share of letters and digits edited, [0, 1]
  std::uint64_t seed = 1;
};

// What one corruption did.
struct CorruptionStats {
  std::int64_t words = 0;     // word swap: words in the text
  std::int64_t eligible = 0;  // words that are not stopwords | letters and digits
  std::int64_t changed = 0;   // words replaced | characters edited
  std::int64_t inserted = 0, deleted = 0, substituted = 0;  // character noise
};

// Length of the valid UTF-8 sequence that starts at text[i] (1-4), with its code point in *cp,
// or 0 when none starts there (strict: no overlong forms, surrogates or values above U+10FFFF).
int utf8_sequence(std::string_view text, std::size_t i, std::uint32_t* cp);

// The NLTK English stopword list (179 entries, lowercase, ASCII apostrophes).
const std::vector<std::string_view>& english_stopwords();
// True when `word` is one of them, compared after ASCII lowercasing (and with U+2019 read as ').
bool is_stopword(std::string_view word);

// The words of `text` as [begin, end) byte ranges (see above).
std::vector<std::pair<std::size_t, std::size_t>> find_words(std::string_view text);

std::string word_swap(std::string_view text, const WordSwapOptions& options,
                      CorruptionStats* stats = nullptr);
std::string char_noise(std::string_view text, const CharNoiseOptions& options,
                       CorruptionStats* stats = nullptr);

}  // namespace routemoe
