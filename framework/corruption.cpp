#include "framework/corruption.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "framework/data.h"
#include "framework/error.h"
#include "framework/rng.h"

namespace routemoe {

namespace {

// Philox streams of the two recipes (far from parameter ids and the data streams).
constexpr std::uint64_t kWordSwapStream = 0xC0FF000000000001ull;
constexpr std::uint64_t kCharNoiseStream = 0xC0FF000000000002ull;

// The English stopword list of NLTK's stopwords corpus (nltk_data, corpora/stopwords/english:
// 179 entries), which TextAttack's StopwordModification constraint uses by default. NLTK took
// its lists from the Snowball project's stop lists and added the contraction fragments.
constexpr std::string_view kStopwords[] = {
    // pronouns
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "you're", "you've",
    "you'll", "you'd", "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself",
    "she", "she's", "her", "hers", "herself", "it", "it's", "its", "itself", "they", "them",
    "their", "theirs", "themselves", "what", "which", "who", "whom", "this", "that", "that'll",
    "these", "those",
    // verbs
    "am", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had", "having", "do",
    "does", "did", "doing",
    // articles, conjunctions, prepositions
    "a", "an", "the", "and", "but", "if", "or", "because", "as", "until", "while", "of", "at", "by",
    "for", "with", "about", "against", "between", "into", "through", "during", "before", "after",
    "above", "below", "to", "from", "up", "down", "in", "out", "on", "off", "over", "under",
    // adverbs, determiners
    "again", "further", "then", "once", "here", "there", "when", "where", "why", "how", "all",
    "any", "both", "each", "few", "more", "most", "other", "some", "such", "no", "nor", "not",
    "only", "own", "same", "so", "than", "too", "very",
    // contraction fragments and modals
    "s", "t", "can", "will", "just", "don", "don't", "should", "should've", "now", "d", "ll", "m",
    "o", "re", "ve", "y", "ain", "aren", "aren't", "couldn", "couldn't", "didn", "didn't", "doesn",
    "doesn't", "hadn", "hadn't", "hasn", "hasn't", "haven", "haven't", "isn", "isn't", "ma",
    "mightn", "mightn't", "mustn", "mustn't", "needn", "needn't", "shan", "shan't", "shouldn",
    "shouldn't", "wasn", "wasn't", "weren", "weren't", "won", "won't", "wouldn", "wouldn't"};

bool is_letter(std::uint32_t cp) {
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9');
  }
  if (cp < 0xC0 || cp == 0xD7 || cp == 0xF7) return false;
  if (cp >= 0x2000 && cp <= 0x2BFF) return false;
  return !(cp >= 0x3000 && cp <= 0x303F);
}

bool is_joiner(std::uint32_t cp) {
  return cp == '\'' || cp == '-' || cp == '_' || cp == 0x2019;
}

// Code point at text[i] and its length; an invalid byte is (0xFFFFFFFF, 1): neither letter nor
// joiner.
std::pair<std::uint32_t, int> code_point(std::string_view text, std::size_t i) {
  std::uint32_t cp = 0;
  const int len = utf8_sequence(text, i, &cp);
  return len == 0 ? std::pair<std::uint32_t, int>{0xFFFFFFFFu, 1} : std::pair{cp, len};
}

// floor(rate * count), rate in [0, 1].
std::int64_t share(double rate, std::int64_t count) {
  return static_cast<std::int64_t>(std::floor(rate * static_cast<double>(count)));
}

// `k` distinct indices of [0, m), uniformly (partial Fisher-Yates), sorted.
std::vector<std::int64_t> choose(Philox& rng, std::int64_t m, std::int64_t k) {
  std::vector<std::int64_t> idx(static_cast<std::size_t>(m));
  for (std::int64_t i = 0; i < m; ++i) idx[static_cast<std::size_t>(i)] = i;
  for (std::int64_t i = 0; i < k; ++i) {
    const auto j = i + static_cast<std::int64_t>(rng.next_below(static_cast<std::uint64_t>(m - i)));
    std::swap(idx[static_cast<std::size_t>(i)], idx[static_cast<std::size_t>(j)]);
  }
  idx.resize(static_cast<std::size_t>(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

// The units of `words` (consecutive index ranges): paragraphs, lines or the whole text. A
// paragraph ends at a blank line (only spaces, tabs or '\r') or a document separator.
std::vector<std::pair<std::size_t, std::size_t>> word_units(
    std::string_view text, const std::vector<std::pair<std::size_t, std::size_t>>& words,
    CorruptUnit unit) {
  std::vector<std::pair<std::size_t, std::size_t>> units;
  std::int64_t line = 0, para = 0, current = -1;
  bool line_blank = true, para_words = false;
  std::size_t pos = 0;
  for (std::size_t w = 0; w < words.size(); ++w) {
    for (; pos < words[w].first; ++pos) {
      const char c = text[pos];
      if (c == '\n') {
        if (line_blank && para_words) {
          ++para;
          para_words = false;
        }
        ++line;
        line_blank = true;
      } else if (static_cast<std::uint16_t>(static_cast<unsigned char>(c)) == kDocSeparator) {
        if (para_words) ++para;
        para_words = false;
      } else if (c != ' ' && c != '\t' && c != '\r') {
        line_blank = false;
      }
    }
    const std::int64_t id = unit == CorruptUnit::Text ? 0 : unit == CorruptUnit::Line ? line : para;
    if (id != current) {
      units.emplace_back(w, w);
      current = id;
    }
    ++units.back().second;
    para_words = true;
    line_blank = false;
    pos = words[w].second;
  }
  return units;
}

void check_rate(double rate, const char* what) {
  RM_CHECK_KIND(Config, std::isfinite(rate) && rate >= 0.0 && rate <= 1.0,
                fmt::format("{}: rate {} must be in [0, 1]", what, rate));
}

}  // namespace

CorruptUnit parse_corrupt_unit(const std::string& name) {
  if (name == "paragraph") return CorruptUnit::Paragraph;
  if (name == "line") return CorruptUnit::Line;
  if (name == "text") return CorruptUnit::Text;
  RM_FAIL(Config, fmt::format("word-swap unit '{}' is not one of paragraph, line, text", name));
}

const char* corrupt_unit_name(CorruptUnit unit) {
  switch (unit) {
    case CorruptUnit::Paragraph:
      return "paragraph";
    case CorruptUnit::Line:
      return "line";
    default:
      return "text";
  }
}

int utf8_sequence(std::string_view text, std::size_t i, std::uint32_t* cp) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  int len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    if (b0 == 0xF0) lo = 0x90;  // no overlong forms
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (i + static_cast<std::size_t>(len) > text.size()) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  std::uint32_t v = b0 & (0x7Fu >> len);
  for (int k = 1; k < len; ++k) {
    const unsigned char b = byte(i + static_cast<std::size_t>(k));
    if ((b & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b & 0x3Fu);
  }
  *cp = v;
  return len;
}

const std::vector<std::string_view>& english_stopwords() {
  static const std::vector<std::string_view> list(std::begin(kStopwords), std::end(kStopwords));
  return list;
}

bool is_stopword(std::string_view word) {
  static const std::unordered_set<std::string_view> set(std::begin(kStopwords),
                                                        std::end(kStopwords));
  std::string key;
  key.reserve(word.size());
  for (std::size_t i = 0; i < word.size(); ++i) {
    if (word.substr(i, 3) == "\xE2\x80\x99") {  // U+2019 right single quotation mark
      key += '\'';
      i += 2;
      continue;
    }
    const char c = word[i];
    key += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  return set.count(key) > 0;
}

std::vector<std::pair<std::size_t, std::size_t>> find_words(std::string_view text) {
  std::vector<std::pair<std::size_t, std::size_t>> words;
  std::size_t i = 0;
  while (i < text.size()) {
    auto [cp, len] = code_point(text, i);
    if (!is_letter(cp)) {
      i += static_cast<std::size_t>(len);
      continue;
    }
    const std::size_t begin = i;
    std::size_t end = i;  // after the last letter: joiners only count between letters
    while (i < text.size() && (is_letter(cp) || is_joiner(cp))) {
      i += static_cast<std::size_t>(len);
      if (is_letter(cp)) end = i;
      if (i < text.size()) std::tie(cp, len) = code_point(text, i);
    }
    words.emplace_back(begin, end);
    i = end;
  }
  return words;
}

std::string word_swap(std::string_view text, const WordSwapOptions& options,
                      CorruptionStats* stats) {
  check_rate(options.rate, "word-swap");
  RM_CHECK_KIND(Config, options.min_per_unit >= 0,
                fmt::format("word-swap: min_per_unit {} must be >= 0", options.min_per_unit));
  const auto words = find_words(text);
  std::vector<bool> eligible(words.size());
  for (std::size_t w = 0; w < words.size(); ++w) {
    eligible[w] = !is_stopword(text.substr(words[w].first, words[w].second - words[w].first));
  }
  const std::vector<std::pair<std::size_t, std::size_t>> units =
      word_units(text, words, options.unit);
  Philox rng(options.seed, kWordSwapStream);
  std::vector<bool> swap(words.size(), false);
  CorruptionStats st;
  st.words = static_cast<std::int64_t>(words.size());
  for (const auto& [begin, end] : units) {
    std::vector<std::size_t> candidates;
    for (std::size_t w = begin; w < end; ++w) {
      if (eligible[w]) candidates.push_back(w);
    }
    std::int64_t k = share(options.rate, static_cast<std::int64_t>(end - begin));
    if (end > begin) k = std::max(k, options.min_per_unit);
    k = std::min<std::int64_t>(k, static_cast<std::int64_t>(candidates.size()));
    st.eligible += static_cast<std::int64_t>(candidates.size());
    for (std::int64_t c : choose(rng, static_cast<std::int64_t>(candidates.size()), k)) {
      swap[candidates[static_cast<std::size_t>(c)]] = true;
    }
    st.changed += k;
  }
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  for (std::size_t w = 0; w < words.size(); ++w) {
    if (!swap[w]) continue;
    out.append(text.substr(pos, words[w].first - pos));
    out += options.marker;
    pos = words[w].second;
  }
  out.append(text.substr(pos));
  if (stats != nullptr) *stats = st;
  return out;
}

std::string char_noise(std::string_view text, const CharNoiseOptions& options,
                       CorruptionStats* stats) {
  check_rate(options.rate, "char-noise");
  std::vector<std::pair<std::size_t, int>> letters;  // byte offset, length
  for (std::size_t i = 0; i < text.size();) {
    const auto [cp, len] = code_point(text, i);
    if (is_letter(cp)) letters.emplace_back(i, len);
    i += static_cast<std::size_t>(len);
  }
  Philox rng(options.seed, kCharNoiseStream);
  const auto m = static_cast<std::int64_t>(letters.size());
  const std::vector<std::int64_t> chosen = choose(rng, m, share(options.rate, m));
  CorruptionStats st;
  st.eligible = m;
  st.changed = static_cast<std::int64_t>(chosen.size());
  const auto random_letter = [&](char avoid) {
    if (avoid >= 'a' && avoid <= 'z') {
      const auto r = static_cast<char>(rng.next_below(25));
      return static_cast<char>('a' + r + (r >= avoid - 'a' ? 1 : 0));
    }
    return static_cast<char>('a' + rng.next_below(26));
  };
  std::string out;
  out.reserve(text.size() + chosen.size());
  std::size_t pos = 0;
  for (std::int64_t c : chosen) {
    const auto [at, len] = letters[static_cast<std::size_t>(c)];
    out.append(text.substr(pos, at - pos));
    const std::string_view original = text.substr(at, static_cast<std::size_t>(len));
    switch (rng.next_below(3)) {
      case 0:  // insert before
        out += random_letter('\0');
        out.append(original);
        ++st.inserted;
        break;
      case 1:  // delete
        ++st.deleted;
        break;
      default:  // substitute
        out += random_letter(len == 1 ? original[0] : '\0');
        ++st.substituted;
        break;
    }
    pos = at + static_cast<std::size_t>(len);
  }
  out.append(text.substr(pos));
  if (stats != nullptr) *stats = st;
  return out;
}

}  // namespace routemoe
