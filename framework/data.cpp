#include "framework/data.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <system_error>

#include "framework/corruption.h"
#include "framework/error.h"
#include "framework/json.h"
#include "framework/rng.h"

namespace routemoe {

namespace fs = std::filesystem;

namespace {

std::int32_t read_le32(const unsigned char* p) {
  const std::uint32_t v =
      static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
      (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
  return static_cast<std::int32_t>(v);
}

void write_le32(unsigned char* p, std::int32_t value) {
  const auto v = static_cast<std::uint32_t>(value);
  p[0] = static_cast<unsigned char>(v);
  p[1] = static_cast<unsigned char>(v >> 8);
  p[2] = static_cast<unsigned char>(v >> 16);
  p[3] = static_cast<unsigned char>(v >> 24);
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Reads `count` little-endian uint16 tokens from `in` into `out` ([count]).
void read_tokens(std::ifstream& in, const std::string& path, std::int64_t count,
                 std::vector<std::uint16_t>& out) {
  out.resize(static_cast<std::size_t>(count));
  const auto bytes = static_cast<std::streamsize>(count * 2);
  in.read(reinterpret_cast<char*>(out.data()), bytes);
  if (in.gcount() != bytes) {
    RM_FAIL(Data,
            fmt::format("{}: read failed after {} of {} token bytes", path, in.gcount(), bytes));
  }
  if constexpr (std::endian::native == std::endian::big) {
    for (auto& t : out) t = static_cast<std::uint16_t>((t >> 8) | (t << 8));
  }
}

// Writes an llm.c shard to exactly `path` (no rename). Throws Error(Io).
void write_shard_file(const std::string& path, std::span<const std::uint16_t> tokens) {
  RM_CHECK(tokens.size() <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
           fmt::format("{}: {} tokens do not fit the int32 token count of an llm.c shard", path,
                       tokens.size()));
  std::array<unsigned char, kShardHeaderBytes> header{};
  write_le32(header.data() + 0, kShardMagic);
  write_le32(header.data() + 4, kShardVersion);
  write_le32(header.data() + 8, static_cast<std::int32_t>(tokens.size()));
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) RM_FAIL(Io, fmt::format("{}: cannot open for writing", path));
  out.write(reinterpret_cast<const char*>(header.data()), kShardHeaderBytes);
  if constexpr (std::endian::native == std::endian::little) {
    out.write(reinterpret_cast<const char*>(tokens.data()),
              static_cast<std::streamsize>(tokens.size() * 2));
  } else {
    std::vector<unsigned char> buf(tokens.size() * 2);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      buf[2 * i] = static_cast<unsigned char>(tokens[i]);
      buf[2 * i + 1] = static_cast<unsigned char>(tokens[i] >> 8);
    }
    out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  }
  out.close();
  if (!out) RM_FAIL(Io, fmt::format("{}: write failed", path));
}

void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) RM_FAIL(Io, fmt::format("{}: cannot open for writing", path));
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) RM_FAIL(Io, fmt::format("{}: write failed", path));
}

void rename_file(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) RM_FAIL(Io, fmt::format("cannot rename {} to {}: {}", from, to, ec.message()));
}

// Glob match of a whole name: `*` matches any run of characters, `?` one character.
bool glob_match(std::string_view pattern, std::string_view name) {
  std::size_t p = 0, n = 0, star = std::string_view::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

// Regular files in `dir` whose name matches one of `patterns`, sorted by path.
std::vector<std::string> match_in_dir(const fs::path& dir,
                                      const std::vector<std::string>& patterns) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const bool match = std::any_of(patterns.begin(), patterns.end(),
                                   [&](const std::string& p) { return glob_match(p, name); });
    std::error_code fec;
    if (match && it->is_regular_file(fec)) out.push_back(it->path().string());
  }
  if (ec) RM_FAIL(Data, fmt::format("{}: cannot list directory: {}", dir.string(), ec.message()));
  std::sort(out.begin(), out.end());
  return out;
}

bool is_prepared_output(const std::string& name) {
  return glob_match("train_*.bin", name) || glob_match("val_*.bin", name) ||
         glob_match("test_*.bin", name) || name == "meta.json";
}

}  // namespace

TokenShard load_tokens(const std::string& path, int vocab_size, bool allow_headerless) {
  RM_CHECK_KIND(
      Config, vocab_size >= 1 && vocab_size <= 65536,
      fmt::format("{}: vocab_size {} is outside [1, 65536] for uint16 tokens", path, vocab_size));
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) RM_FAIL(Data, fmt::format("{}: no such token shard file", path));
  if (fs::is_directory(st))
    RM_FAIL(Data, fmt::format("{}: is a directory, not a token shard", path));
  const std::uintmax_t size_u = fs::file_size(path, ec);
  if (ec) RM_FAIL(Data, fmt::format("{}: cannot stat token shard: {}", path, ec.message()));
  const auto size = static_cast<std::int64_t>(size_u);
  std::ifstream in(path, std::ios::binary);
  if (!in) RM_FAIL(Data, fmt::format("{}: cannot open token shard for reading", path));

  std::array<unsigned char, kShardHeaderBytes> header{};
  const std::int64_t head_bytes = std::min<std::int64_t>(size, kShardHeaderBytes);
  in.read(reinterpret_cast<char*>(header.data()), static_cast<std::streamsize>(head_bytes));
  if (in.gcount() != head_bytes) RM_FAIL(Data, fmt::format("{}: read failed in the header", path));
  const bool has_magic = size >= 4 && read_le32(header.data()) == kShardMagic;

  TokenShard shard;
  shard.path = path;
  if (has_magic) {
    shard.format = ShardFormat::LlmC;
    if (size < kShardHeaderBytes) {
      RM_FAIL(Data, fmt::format("{}: truncated llm.c shard: file is {} bytes, shorter than the "
                                "{}-byte header",
                                path, size, kShardHeaderBytes));
    }
    const std::int32_t version = read_le32(header.data() + 4);
    if (version != kShardVersion) {
      RM_FAIL(Data, fmt::format("{}: unsupported llm.c shard version {} (expected {})", path,
                                version, kShardVersion));
    }
    const std::int64_t n = read_le32(header.data() + 8);
    if (n < 0) RM_FAIL(Data, fmt::format("{}: negative token count {} in the header", path, n));
    const std::int64_t expected = kShardHeaderBytes + 2 * n;
    if (size < expected) {
      RM_FAIL(Data, fmt::format("{}: truncated llm.c shard: header says {} tokens, so {} bytes "
                                "expected, but the file has {} bytes",
                                path, n, expected, size));
    }
    if (size > expected) {
      RM_FAIL(Data, fmt::format("{}: {} trailing bytes after the {} tokens the header declares "
                                "({} bytes expected, {} found)",
                                path, size - expected, n, expected, size));
    }
    read_tokens(in, path, n, shard.tokens);
  } else if (allow_headerless && ends_with(path, ".bin")) {
    shard.format = ShardFormat::Headerless;
    if (size % 2 != 0) {
      RM_FAIL(Data, fmt::format("{}: headerless (nanoGPT) token file has odd size {} bytes; "
                                "uint16 tokens need an even size",
                                path, size));
    }
    in.seekg(0);
    read_tokens(in, path, size / 2, shard.tokens);
  } else if (size < 4) {
    RM_FAIL(Data, fmt::format("{}: not a routemoe/llm.c token shard (file is {} bytes, shorter "
                              "than the {}-byte header)",
                              path, size, kShardHeaderBytes));
  } else {
    const std::int32_t magic = read_le32(header.data());
    RM_FAIL(Data, fmt::format("{}: not a routemoe/llm.c token shard (magic {}, expected {}){}",
                              path, magic, kShardMagic,
                              size < kShardHeaderBytes
                                  ? fmt::format("; file is {} bytes, shorter than the {}-byte "
                                                "header",
                                                size, kShardHeaderBytes)
                                  : std::string()));
  }

  const auto limit = static_cast<std::uint32_t>(vocab_size);
  for (std::size_t i = 0; i < shard.tokens.size(); ++i) {
    if (shard.tokens[i] >= limit) {
      RM_FAIL(Data, fmt::format("{}: token {} at position {} is out of range for vocab_size {}",
                                path, shard.tokens[i], i, vocab_size));
    }
  }
  return shard;
}

void write_shard(const std::string& path, std::span<const std::uint16_t> tokens) {
  const std::string tmp = path + ".tmp";
  try {
    write_shard_file(tmp, tokens);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  rename_file(tmp, path);
}

std::vector<std::uint16_t> encode_bytes(std::string_view text) {
  std::vector<std::uint16_t> out(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    out[i] = static_cast<std::uint16_t>(static_cast<unsigned char>(text[i]));
  }
  return out;
}

std::string decode_bytes(std::span<const std::uint16_t> tokens) {
  std::string out(tokens.size(), '\0');
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] > 255) {
      RM_FAIL(Data,
              fmt::format("token {} at position {} is not a byte token (vocab 256)", tokens[i], i));
    }
    out[i] = static_cast<char>(static_cast<unsigned char>(tokens[i]));
  }
  return out;
}

Utf8Report check_utf8(std::string_view bytes) {
  Utf8Report r;
  std::size_t i = 0;
  while (i < bytes.size()) {
    std::uint32_t cp = 0;
    const int len = utf8_sequence(bytes, i, &cp);
    if (len > 0) {
      i += static_cast<std::size_t>(len);
      continue;
    }
    if (r.invalid == 0) r.first_offset = static_cast<std::int64_t>(i);
    ++r.invalid;
    // The failed sequence: its first byte and the continuation bytes right after it.
    ++i;
    while (i < bytes.size() && (static_cast<unsigned char>(bytes[i]) & 0xC0) == 0x80) ++i;
  }
  return r;
}

namespace {

// ---- prepare: inputs ----

struct InputFile {
  std::string path;
  std::int64_t bytes = 0;
};

bool hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

// The files named by `inputs` (directories expanded), each once.
std::vector<InputFile> expand_inputs(const std::vector<std::string>& inputs,
                                     std::vector<std::string>& warnings) {
  std::vector<InputFile> files;
  std::map<std::string, std::string> seen;  // canonical path -> as named
  const auto add = [&](const fs::path& p, std::int64_t bytes) {
    std::error_code ec;
    const std::string key = fs::weakly_canonical(p, ec).string();
    const auto [it, fresh] = seen.emplace(ec ? p.string() : key, p.string());
    if (!fresh) {
      RM_FAIL(Data, fmt::format("{}: input named twice (also as {})", p.string(), it->second));
    }
    files.push_back(InputFile{p.string(), bytes});
  };
  for (const std::string& input : inputs) {
    std::error_code ec;
    const fs::file_status st = fs::status(input, ec);
    if (!fs::exists(st)) RM_FAIL(Data, fmt::format("{}: input text file does not exist", input));
    if (fs::is_regular_file(st)) {
      const auto bytes = static_cast<std::int64_t>(fs::file_size(input, ec));
      if (ec || bytes == 0) RM_FAIL(Data, fmt::format("{}: input text file is empty", input));
      add(input, bytes);
      continue;
    }
    if (!fs::is_directory(st)) {
      RM_FAIL(Data, fmt::format("{}: input is not a regular file or a directory", input));
    }
    std::vector<fs::path> found;
    fs::recursive_directory_iterator it(input, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
      if (hidden(it->path())) {
        if (it->is_directory(ec)) it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file(ec)) found.push_back(it->path());
    }
    if (ec) RM_FAIL(Data, fmt::format("{}: cannot list directory: {}", input, ec.message()));
    std::sort(found.begin(), found.end());
    std::int64_t kept = 0;
    for (const fs::path& p : found) {
      const auto bytes = static_cast<std::int64_t>(fs::file_size(p, ec));
      if (ec || bytes == 0) {
        warnings.push_back(fmt::format("{}: empty file skipped", p.string()));
        continue;
      }
      add(p, bytes);
      ++kept;
    }
    if (kept == 0) RM_FAIL(Data, fmt::format("{}: directory holds no non-empty files", input));
  }
  return files;
}

// ---- prepare: split sizes ----

struct SplitSizes {
  std::int64_t train = 0, val = 0, test = 0;
};

// What each split must hold (PrepareOptions: 0 = unchecked).
struct SplitNeeds {
  std::int64_t train = 1, val = 1, test = 1;
  std::string val_why, test_why, train_why;
};

SplitNeeds split_needs(const PrepareOptions& o) {
  SplitNeeds n;
  const std::int64_t T = o.seq_len, B = o.batch_size;
  if (T > 0) {
    n.train = T + 1;
    n.train_why = fmt::format("one window, --seq-len {} + 1", T);
  }
  const std::int64_t batch = T > 0 ? std::max<std::int64_t>(1, B) * T + 1 : 1;
  const std::string batch_why =
      T > 0 ? fmt::format("one eval batch, --batch-size {} x --seq-len {} + 1 = {}",
                          std::max<std::int64_t>(1, B), T, batch)
            : std::string();
  n.test = batch;
  n.test_why = batch_why;
  n.val = std::max(batch, o.probe_tokens);
  if (o.probe_tokens > 0) {
    n.val_why = fmt::format("the probe set, --probe-tokens {}", o.probe_tokens);
    if (!batch_why.empty()) n.val_why += "; " + batch_why;
  } else {
    n.val_why = batch_why;
  }
  return n;
}

// The smallest fraction with 3 significant digits that gives at least `need` of `n` tokens.
double min_fraction(std::int64_t need, std::int64_t n) {
  const double f = static_cast<double>(need) / static_cast<double>(n);
  const double step = std::pow(10.0, std::floor(std::log10(f)) - 2);
  double m = std::ceil(f / step) * step;
  while (static_cast<std::int64_t>(std::floor(static_cast<double>(n) * m)) < need) m += step;
  return m;
}

SplitSizes split_sizes(std::int64_t n, const PrepareOptions& o) {
  SplitSizes s;
  s.val = static_cast<std::int64_t>(std::floor(static_cast<double>(n) * o.val_fraction));
  s.test = static_cast<std::int64_t>(std::floor(static_cast<double>(n) * o.test_fraction));
  s.train = n - s.val - s.test;
  return s;
}

// Refuses sizes below the needs of PrepareOptions (Config, with the fraction that would do) and
// empty splits (Data).
void check_split_sizes(std::int64_t n, const SplitSizes& s, const PrepareOptions& o) {
  const SplitNeeds need = split_needs(o);
  const auto refuse = [&](const char* split, const char* flag, double fraction, std::int64_t have,
                          std::int64_t needed, const std::string& why) {
    RM_FAIL(Config, fmt::format("prepare: {} {} gives the {} split {} of {} tokens, fewer than the "
                                "{} it needs ({}); use {} {:.3g} or more, or more text",
                                flag, fraction, split, have, n, needed, why, flag,
                                min_fraction(needed, n)));
  };
  const bool checked = o.seq_len > 0 || o.probe_tokens > 0;
  if (checked && s.val < need.val) {
    refuse("val", "--val-fraction", o.val_fraction, s.val, need.val, need.val_why);
  }
  if (checked && o.test_fraction > 0 && s.test < need.test) {
    refuse("test", "--test-fraction", o.test_fraction, s.test, need.test, need.test_why);
  }
  if (o.seq_len > 0 && s.train < need.train) {
    RM_FAIL(Config,
            fmt::format("prepare: --val-fraction {} and --test-fraction {} leave the train "
                        "split {} of {} tokens, fewer than the {} it needs ({})",
                        o.val_fraction, o.test_fraction, s.train, n, need.train, need.train_why));
  }
  if (s.train < 1 || s.val < 1 || (o.test_fraction > 0 && s.test < 1)) {
    RM_FAIL(Data, fmt::format("prepare: {} tokens are too few to split with val_fraction {} and "
                              "test_fraction {} (train {}, val {}, test {} tokens; each split "
                              "asked for must be non-empty)",
                              n, o.val_fraction, o.test_fraction, s.train, s.val, s.test));
  }
}

// ---- prepare: cut points ----

// `cut` moved to the nearest document start within `tol` tokens, else to the nearest line start
// (the token after a '\n') within `tol`, else unchanged.
std::int64_t snap_cut(const std::vector<std::uint16_t>& tokens,
                      const std::vector<std::int64_t>& doc_starts, std::int64_t cut,
                      std::int64_t tol) {
  if (tol <= 0) return cut;
  std::int64_t best = -1;
  for (std::int64_t d : doc_starts) {
    if (d > 0 && std::abs(d - cut) <= tol && (best < 0 || std::abs(d - cut) < std::abs(best - cut)))
      best = d;
  }
  if (best >= 0) return best;
  const auto n = static_cast<std::int64_t>(tokens.size());
  for (std::int64_t d = 0; d <= tol; ++d) {
    for (const std::int64_t p : {cut - d, cut + d}) {
      if (p > 0 && p < n && tokens[static_cast<std::size_t>(p - 1)] == '\n') return p;
    }
  }
  return cut;
}

// ---- prepare: writing a shard set ----

struct SplitOut {
  const char* name;
  std::span<const std::uint16_t> tokens;
  std::vector<std::string>* paths;  // receives the final shard paths
};

// Refuses an out_dir that holds prepared output unless `overwrite` (or creates it); returns the
// outputs already there.
std::vector<std::string> claim_out_dir(const std::string& out_dir, bool overwrite) {
  std::error_code ec;
  const fs::file_status dst = fs::status(out_dir, ec);
  std::vector<std::string> old_outputs;
  if (!fs::exists(dst)) {
    fs::create_directories(out_dir, ec);
    if (ec) RM_FAIL(Io, fmt::format("{}: cannot create directory: {}", out_dir, ec.message()));
    return old_outputs;
  }
  if (!fs::is_directory(dst)) {
    RM_FAIL(Data, fmt::format("{}: output path exists and is not a directory", out_dir));
  }
  for (fs::directory_iterator it(out_dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (is_prepared_output(it->path().filename().string()))
      old_outputs.push_back(it->path().string());
  }
  if (ec) RM_FAIL(Io, fmt::format("{}: cannot list directory: {}", out_dir, ec.message()));
  std::sort(old_outputs.begin(), old_outputs.end());
  if (!old_outputs.empty() && !overwrite) {
    RM_FAIL(Data, fmt::format("{}: already holds prepared data ({} and {} more file(s)); "
                              "refusing to overwrite without overwrite (--overwrite)",
                              out_dir, fs::path(old_outputs.front()).filename().string(),
                              old_outputs.size() - 1));
  }
  return old_outputs;
}

// Writes every split as <name>_%06d.bin shards and meta.json into out_dir: all to .tmp files
// first (removed again on failure, leaving out_dir as it was), then stale outputs are removed
// and the new files renamed into place. Returns the path of meta.json.
std::string write_prepared(const std::string& out_dir, const std::vector<SplitOut>& splits,
                           const std::string& meta, std::int64_t shard_tokens, bool overwrite) {
  const std::vector<std::string> old_outputs = claim_out_dir(out_dir, overwrite);
  const std::string meta_path = (fs::path(out_dir) / "meta.json").string();
  std::vector<std::string> tmps;
  std::error_code ec;
  try {
    for (const SplitOut& s : splits) {
      const auto n = static_cast<std::int64_t>(s.tokens.size());
      for (std::int64_t b = 0, i = 0; b < n; b += shard_tokens, ++i) {
        const std::int64_t e = std::min(n, b + shard_tokens);
        const std::string path =
            (fs::path(out_dir) / fmt::format("{}_{:06d}.bin", s.name, i)).string();
        tmps.push_back(path + ".tmp");
        write_shard_file(tmps.back(), s.tokens.subspan(static_cast<std::size_t>(b),
                                                       static_cast<std::size_t>(e - b)));
        s.paths->push_back(path);
      }
    }
    tmps.push_back(meta_path + ".tmp");
    write_text_file(tmps.back(), meta);
  } catch (...) {
    for (const std::string& t : tmps) fs::remove(t, ec);
    throw;
  }
  std::set<std::string> finals;
  for (const std::string& t : tmps) finals.insert(t.substr(0, t.size() - 4));
  for (const std::string& old : old_outputs) {
    if (finals.count(old) == 0) {
      fs::remove(old, ec);
      if (ec) RM_FAIL(Io, fmt::format("{}: cannot remove stale shard: {}", old, ec.message()));
    }
  }
  for (const std::string& t : tmps) rename_file(t, t.substr(0, t.size() - 4));
  return meta_path;
}

std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) RM_FAIL(Data, fmt::format("{}: cannot open input text file", path));
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) RM_FAIL(Data, fmt::format("{}: read failed", path));
  return content;
}

// The token stream of all documents (each after a separator when asked), with their records.
std::vector<std::uint16_t> read_documents(const std::vector<InputFile>& files, bool separator,
                                          PrepareResult& result) {
  std::vector<std::uint16_t> tokens;
  for (const InputFile& f : files) {
    const std::string text = read_file_bytes(f.path);
    if (text.empty()) RM_FAIL(Data, fmt::format("{}: input text file is empty", f.path));
    PreparedDocument doc;
    doc.path = f.path;
    doc.offset = static_cast<std::int64_t>(tokens.size());
    doc.utf8 = check_utf8(text);
    if (doc.utf8.invalid > 0) {
      result.warnings.push_back(fmt::format(
          "{}: not valid UTF-8: {} invalid byte sequence(s), the first at byte offset {}; the "
          "bytes are kept as they are (byte tokenizer)",
          f.path, doc.utf8.invalid, doc.utf8.first_offset));
    }
    const auto stray = std::count(text.begin(), text.end(), static_cast<char>(kDocSeparator));
    if (separator && stray > 0) {
      result.warnings.push_back(fmt::format(
          "{}: holds {} byte(s) 0x1C, the document separator; they will read as document starts",
          f.path, stray));
    }
    if (separator) tokens.push_back(kDocSeparator);
    const std::vector<std::uint16_t> t = encode_bytes(text);
    tokens.insert(tokens.end(), t.begin(), t.end());
    doc.tokens = static_cast<std::int64_t>(tokens.size()) - doc.offset;
    result.documents.push_back(std::move(doc));
  }
  return tokens;
}

std::string prepare_meta(const std::vector<std::string>& inputs, const PrepareOptions& o,
                         const PrepareResult& r) {
  std::string m = fmt::format(
      "{{\"tokenizer\":\"byte\",\"vocab_size\":{},\"document_separator\":{},"
      "\"train_tokens\":{},\"val_tokens\":{},\"test_tokens\":{},\"sources\":[",
      kByteVocabSize, o.doc_separator ? std::to_string(kDocSeparator) : "null", r.train_tokens,
      r.val_tokens, r.test_tokens);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    m += fmt::format("{}{}", i == 0 ? "" : ",", json_quote(inputs[i]));
  }
  m += "],\"documents\":[";
  for (std::size_t i = 0; i < r.documents.size(); ++i) {
    const PreparedDocument& d = r.documents[i];
    m += fmt::format(
        "{}{{\"path\":{},\"offset\":{},\"tokens\":{},\"invalid_utf8\":{},\"first_invalid\":{}}}",
        i == 0 ? "" : ",", json_quote(d.path), d.offset, d.tokens, d.utf8.invalid,
        d.utf8.first_offset);
  }
  const std::int64_t v0 = r.train_tokens, t0 = v0 + r.val_tokens;
  m += fmt::format("],\"splits\":{{\"train\":[0,{}],\"val\":[{},{}],\"test\":[{},{}]}}}}\n", v0, v0,
                   t0, t0, t0 + r.test_tokens);
  return m;
}

}  // namespace

PrepareResult prepare_corpus(const std::vector<std::string>& inputs, const std::string& out_dir,
                             const PrepareOptions& o) {
  RM_CHECK_KIND(Config, !inputs.empty(), "prepare: no input text files given");
  RM_CHECK_KIND(Config, !out_dir.empty(), "prepare: empty output directory");
  RM_CHECK_KIND(Config,
                std::isfinite(o.val_fraction) && o.val_fraction > 0.0 && o.val_fraction < 1.0,
                fmt::format("prepare: val_fraction {} must be in (0, 1)", o.val_fraction));
  RM_CHECK_KIND(Config,
                std::isfinite(o.test_fraction) && o.test_fraction >= 0.0 &&
                    o.val_fraction + o.test_fraction < 1.0,
                fmt::format("prepare: test_fraction {} must be >= 0 and leave room for train "
                            "(val_fraction + test_fraction < 1)",
                            o.test_fraction));
  RM_CHECK_KIND(Config,
                o.shard_tokens >= 1 && o.shard_tokens <= std::numeric_limits<std::int32_t>::max(),
                fmt::format("prepare: shard_tokens {} must be in [1, 2^31-1]", o.shard_tokens));
  RM_CHECK_KIND(Config, o.seq_len >= 0 && o.batch_size >= 0 && o.probe_tokens >= 0,
                "prepare: seq_len, batch_size and probe_tokens must be >= 0");

  PrepareResult result;
  const std::vector<InputFile> files = expand_inputs(inputs, result.warnings);
  // Up front, from the file sizes: do the fractions give every split what it needs?
  std::int64_t n = 0;
  for (const InputFile& f : files) n += f.bytes + (o.doc_separator ? 1 : 0);
  check_split_sizes(n, split_sizes(n, o), o);

  const std::vector<std::uint16_t> tokens = read_documents(files, o.doc_separator, result);
  n = static_cast<std::int64_t>(tokens.size());  // the files may have changed since
  const SplitSizes target = split_sizes(n, o);
  check_split_sizes(n, target, o);
  std::vector<std::int64_t> doc_starts;
  for (const PreparedDocument& d : result.documents) doc_starts.push_back(d.offset);
  const std::int64_t test_at =
      snap_cut(tokens, doc_starts, n - target.test,
               o.test_fraction > 0 ? std::min(target.val, target.test) / 10 : 0);
  const std::int64_t val_at =
      snap_cut(tokens, doc_starts, n - target.test - target.val, target.val / 10);
  SplitSizes cut{val_at, test_at - val_at, n - test_at};
  const SplitNeeds need = split_needs(o);
  if (cut.train < need.train || cut.val < need.val ||
      (o.test_fraction > 0 && cut.test < need.test)) {
    cut = target;  // a moved cut must not cost a split what it needs
  }
  result.train_tokens = cut.train;
  result.val_tokens = cut.val;
  result.test_tokens = cut.test;

  const std::span<const std::uint16_t> all(tokens);
  std::vector<SplitOut> splits = {
      {"train", all.subspan(0, static_cast<std::size_t>(cut.train)), &result.train_shards},
      {"val", all.subspan(static_cast<std::size_t>(cut.train), static_cast<std::size_t>(cut.val)),
       &result.val_shards}};
  if (cut.test > 0) {
    splits.push_back(
        {"test", all.subspan(static_cast<std::size_t>(cut.train + cut.val)), &result.test_shards});
  }
  result.meta_path =
      write_prepared(out_dir, splits, prepare_meta(inputs, o, result), o.shard_tokens, o.overwrite);
  return result;
}

PrepareResult prepare_text(const std::vector<std::string>& inputs, const std::string& out_dir,
                           double val_fraction, std::int64_t shard_tokens, bool overwrite) {
  PrepareOptions o;
  o.val_fraction = val_fraction;
  o.shard_tokens = shard_tokens;
  o.overwrite = overwrite;
  return prepare_corpus(inputs, out_dir, o);
}

std::vector<std::string> list_shards(const std::string& source, const std::string& split) {
  RM_CHECK_KIND(Config, !source.empty(), fmt::format("empty data path for split '{}'", split));
  std::string pattern = source;
  for (std::size_t pos; (pos = pattern.find("{split}")) != std::string::npos;) {
    pattern.replace(pos, 7, split);
  }
  std::error_code ec;
  if (fs::is_directory(pattern, ec)) {
    std::vector<std::string> files = match_in_dir(pattern, {split + "_*.bin", split + ".bin"});
    if (files.empty()) {
      RM_FAIL(Data, fmt::format("{}: no {}_*.bin or {}.bin shard files for split '{}'", pattern,
                                split, split, split));
    }
    return files;
  }
  const fs::path p(pattern);
  const std::string name = p.filename().string();
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (name.find_first_of("*?") == std::string::npos) {
    if (!fs::exists(p, ec)) {
      RM_FAIL(Data,
              fmt::format("{}: no such shard file or directory (split '{}')", pattern, split));
    }
    return {pattern};
  }
  if (!fs::is_directory(dir, ec)) {
    RM_FAIL(Data, fmt::format("{}: directory {} of the shard pattern does not exist (split '{}')",
                              pattern, dir.string(), split));
  }
  std::vector<std::string> files = match_in_dir(dir, {name});
  if (files.empty()) {
    RM_FAIL(Data,
            fmt::format("{}: no shard files match this pattern (split '{}')", pattern, split));
  }
  return files;
}

TokenDataset::TokenDataset(const std::string& source, const std::string& split, int vocab_size,
                           bool allow_headerless)
    : source_(source), split_(split), vocab_size_(vocab_size) {
  for (const std::string& path : list_shards(source, split)) {
    TokenShard shard = load_tokens(path, vocab_size, allow_headerless);
    const auto offset = static_cast<std::int64_t>(tokens_.size());
    const auto count = static_cast<std::int64_t>(shard.tokens.size());
    files_.push_back(FileInfo{path, shard.format, offset, count});
    tokens_.insert(tokens_.end(), shard.tokens.begin(), shard.tokens.end());
  }
  if (tokens_.empty()) {
    RM_FAIL(Data, fmt::format("{}: split '{}' has 0 tokens ({} shard file(s), all empty)", source,
                              split, files_.size()));
  }
}

BatchLoader::BatchLoader(const TokenDataset& data, const BatchLoaderOptions& options)
    : data_(&data), options_(options) {
  RM_CHECK_KIND(Config, options.batch_size >= 1,
                fmt::format("batch_size {} must be >= 1", options.batch_size));
  RM_CHECK_KIND(Config, options.seq_len >= 1,
                fmt::format("seq_len {} must be >= 1", options.seq_len));
  if (data.size() < options.seq_len + 1) {
    RM_FAIL(Data, fmt::format("{}: split '{}' has {} tokens; a window of seq_len {} needs at "
                              "least {}",
                              data.source(), data.split(), data.size(), options.seq_len,
                              options.seq_len + 1));
  }
}

std::int64_t BatchLoader::resolve_rows(std::int64_t row_begin, std::int64_t row_count) const {
  const std::int64_t b = options_.batch_size;
  if (row_count < 0) row_count = b - row_begin;
  RM_CHECK(row_begin >= 0 && row_count >= 0 && row_begin + row_count <= b,
           fmt::format("rows [{}, {}) are outside the global batch of {} rows", row_begin,
                       row_begin + row_count, b));
  return row_count;
}

std::int64_t BatchLoader::window_start(std::int64_t step, std::int64_t row) const {
  RM_CHECK(step >= 0, fmt::format("negative step {}", step));
  RM_CHECK(row >= 0 && row < options_.batch_size,
           fmt::format("row {} outside the global batch of {} rows", row, options_.batch_size));
  Philox rng(options_.seed, kDataStreamBase + static_cast<std::uint64_t>(step));
  rng.set_counter(static_cast<std::uint64_t>(row));
  const auto windows = static_cast<std::uint64_t>(data_->size() - options_.seq_len);
  return static_cast<std::int64_t>(rng.next_below(windows));
}

Batch BatchLoader::make_batch(std::int64_t step, std::int64_t row_begin, std::int64_t row_count,
                              const std::vector<std::int64_t>& starts) const {
  const std::int64_t t_len = options_.seq_len;
  Batch b;
  b.step = step;
  b.row_begin = row_begin;
  b.rows = row_count;
  b.seq_len = t_len;
  b.starts = starts;
  b.inputs.resize(static_cast<std::size_t>(row_count * t_len));
  b.targets.resize(b.inputs.size());
  const std::uint16_t* tok = data_->tokens().data();
  for (std::int64_t r = 0; r < row_count; ++r) {
    const std::uint16_t* w = tok + starts[static_cast<std::size_t>(r)];
    for (std::int64_t t = 0; t < t_len; ++t) {
      b.inputs[static_cast<std::size_t>(r * t_len + t)] = w[t];
      b.targets[static_cast<std::size_t>(r * t_len + t)] = w[t + 1];
    }
  }
  return b;
}

Batch BatchLoader::batch_at(std::int64_t step, std::int64_t row_begin,
                            std::int64_t row_count) const {
  row_count = resolve_rows(row_begin, row_count);
  std::vector<std::int64_t> starts(static_cast<std::size_t>(row_count));
  for (std::int64_t r = 0; r < row_count; ++r) {
    starts[static_cast<std::size_t>(r)] = window_start(step, row_begin + r);
  }
  return make_batch(step, row_begin, row_count, starts);
}

Batch BatchLoader::next(std::int64_t row_begin, std::int64_t row_count) {
  Batch b = batch_at(step_, row_begin, row_count);
  ++step_;
  return b;
}

std::int64_t BatchLoader::steps_per_epoch() const {
  return std::max<std::int64_t>(1, data_->size() / (options_.batch_size * options_.seq_len));
}

Batch BatchLoader::eval_batch(std::int64_t index, std::int64_t row_begin,
                              std::int64_t row_count) const {
  RM_CHECK(index >= 0 && index < eval_num_batches(),
           fmt::format("eval batch {} outside [0, {})", index, eval_num_batches()));
  row_count = resolve_rows(row_begin, row_count);
  std::vector<std::int64_t> starts(static_cast<std::size_t>(row_count));
  for (std::int64_t r = 0; r < row_count; ++r) {
    starts[static_cast<std::size_t>(r)] =
        (index * options_.batch_size + row_begin + r) * options_.seq_len;
  }
  return make_batch(index, row_begin, row_count, starts);
}

std::vector<Batch> BatchLoader::eval_batches(std::int64_t max_batches, std::int64_t row_begin,
                                             std::int64_t row_count) const {
  const std::int64_t available = eval_num_batches();
  if (available == 0) {
    RM_FAIL(Data, fmt::format("{}: split '{}' has {} tokens, fewer than one eval batch of {} x {} "
                              "(+1) = {} tokens",
                              data_->source(), data_->split(), data_->size(), options_.batch_size,
                              options_.seq_len, options_.batch_size * options_.seq_len + 1));
  }
  const std::int64_t count = max_batches <= 0 ? available : std::min(max_batches, available);
  std::vector<Batch> out;
  out.reserve(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) out.push_back(eval_batch(i, row_begin, row_count));
  return out;
}

LoaderState BatchLoader::state() const {
  return LoaderState{step_, options_.seed, options_.batch_size, options_.seq_len};
}

void BatchLoader::set_state(const LoaderState& state) {
  RM_CHECK_KIND(Config,
                state.seed == options_.seed && state.batch_size == options_.batch_size &&
                    state.seq_len == options_.seq_len,
                fmt::format("data loader state is for seed {}, batch {} x {}, but this loader has "
                            "seed {}, batch {} x {}",
                            state.seed, state.batch_size, state.seq_len, options_.seed,
                            options_.batch_size, options_.seq_len));
  RM_CHECK_KIND(Config, state.step >= 0,
                fmt::format("data loader state has negative step {}", state.step));
  step_ = state.step;
}

CorruptKind parse_corrupt_kind(const std::string& name) {
  if (name == "word-swap") return CorruptKind::WordSwap;
  if (name == "char-noise") return CorruptKind::CharNoise;
  RM_FAIL(Config, fmt::format("corruption '{}' is not one of word-swap, char-noise", name));
}

const char* corrupt_kind_name(CorruptKind kind) {
  return kind == CorruptKind::WordSwap ? "word-swap" : "char-noise";
}

namespace {

std::string read_meta(const fs::path& dir) {
  const fs::path p = dir / "meta.json";
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return {};
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

bool has_split(const std::string& dir, const std::string& split) {
  try {
    return !list_shards(dir, split).empty();
  } catch (const Error&) {
    return false;
  }
}

std::string recipe_json(const CorruptOptions& o) {
  if (o.kind == CorruptKind::CharNoise) {
    return fmt::format("{{\"recipe\":\"char-noise\",\"rate\":{},\"seed\":{}}}", o.char_noise.rate,
                       o.char_noise.seed);
  }
  const WordSwapOptions& w = o.word_swap;
  return fmt::format(
      "{{\"recipe\":\"word-swap\",\"rate\":{},\"seed\":{},\"marker\":{},\"unit\":\"{}\","
      "\"min_per_unit\":{},\"stopwords\":\"nltk-english\"}}",
      w.rate, w.seed, json_quote(w.marker), corrupt_unit_name(w.unit), w.min_per_unit);
}

std::string corrupt_meta(const std::string& source_dir, const std::string& source_meta,
                         const CorruptOptions& o, const std::vector<CorruptedSplit>& splits) {
  const bool separator = source_meta.find("\"document_separator\":28") != std::string::npos;
  std::string m = fmt::format(
      "{{\"tokenizer\":\"byte\",\"vocab_size\":{},\"document_separator\":{},\"source\":{},"
      "\"corruption\":{}",
      kByteVocabSize, separator ? "28" : "null", json_quote(source_dir), recipe_json(o));
  for (const CorruptedSplit& s : splits) m += fmt::format(",\"{}_tokens\":{}", s.split, s.tokens);
  m += ",\"splits\":{";
  for (std::size_t i = 0; i < splits.size(); ++i) {
    const CorruptedSplit& s = splits[i];
    const CorruptionStats& st = s.stats;
    m += fmt::format(
        "{}\"{}\":{{\"source_tokens\":{},\"tokens\":{},\"words\":{},\"eligible\":{},\"changed\":{},"
        "\"inserted\":{},\"deleted\":{},\"substituted\":{}}}",
        i == 0 ? "" : ",", s.split, s.source_tokens, s.tokens, st.words, st.eligible, st.changed,
        st.inserted, st.deleted, st.substituted);
  }
  return m + "}}\n";
}

}  // namespace

CorruptResult prepare_corrupted(const std::string& source_dir, const std::string& out_dir,
                                const CorruptOptions& o) {
  RM_CHECK_KIND(Config, !out_dir.empty(), "prepare --corrupt: empty output directory");
  RM_CHECK_KIND(Config,
                o.shard_tokens >= 1 && o.shard_tokens <= std::numeric_limits<std::int32_t>::max(),
                fmt::format("prepare: shard_tokens {} must be in [1, 2^31-1]", o.shard_tokens));
  std::error_code ec;
  if (!fs::is_directory(source_dir, ec)) {
    RM_FAIL(Data, fmt::format("{}: not a directory of prepared data (--from)", source_dir));
  }
  if (fs::exists(out_dir, ec) && fs::equivalent(source_dir, out_dir, ec)) {
    RM_FAIL(Data, fmt::format("{}: the corrupted set must go to another directory than its "
                              "source {}",
                              out_dir, source_dir));
  }
  const std::string source_meta = read_meta(source_dir);
  if (!source_meta.empty() && source_meta.find("\"tokenizer\":\"byte\"") == std::string::npos) {
    RM_FAIL(Data, fmt::format("{}: meta.json does not name the byte tokenizer; corruption works "
                              "on text, so only byte-tokenized sets can be corrupted",
                              source_dir));
  }
  std::vector<std::string> names = o.splits;
  if (names.empty()) {
    for (const char* s : {"val", "test"}) {
      if (has_split(source_dir, s)) names.emplace_back(s);
    }
    if (names.empty()) {
      RM_FAIL(Data, fmt::format("{}: no val_*.bin or test_*.bin shards to corrupt", source_dir));
    }
  }
  CorruptResult result;
  std::vector<std::vector<std::uint16_t>> corrupted;
  for (const std::string& name : names) {
    RM_CHECK_KIND(Config, name != "train",
                  "prepare --corrupt: the train split is never corrupted (evaluation data only)");
    const TokenDataset clean(source_dir, name, kByteVocabSize);
    const std::string text = decode_bytes(clean.tokens());
    CorruptedSplit s;
    s.split = name;
    s.source_tokens = clean.size();
    const std::string out = o.kind == CorruptKind::WordSwap
                                ? word_swap(text, o.word_swap, &s.stats)
                                : char_noise(text, o.char_noise, &s.stats);
    corrupted.push_back(encode_bytes(out));
    s.tokens = static_cast<std::int64_t>(corrupted.back().size());
    RM_CHECK_KIND(Data, s.tokens > 0,
                  fmt::format("{}: split '{}' is empty after corruption", source_dir, name));
    result.splits.push_back(std::move(s));
  }
  std::vector<SplitOut> outs;
  for (std::size_t i = 0; i < names.size(); ++i) {
    outs.push_back({names[i].c_str(), corrupted[i], &result.splits[i].shards});
  }
  result.meta_path =
      write_prepared(out_dir, outs, corrupt_meta(source_dir, source_meta, o, result.splits),
                     o.shard_tokens, o.overwrite);
  return result;
}

bool is_byte_tokenized(const TokenDataset& data) {
  std::error_code ec;
  const fs::path dir = fs::is_directory(data.source(), ec)
                           ? fs::path(data.source())
                           : fs::path(data.files().front().path).parent_path();
  const std::string meta = read_meta(dir);
  if (!meta.empty()) return meta.find("\"tokenizer\":\"byte\"") != std::string::npos;
  return data.vocab_size() == kByteVocabSize &&
         std::all_of(data.files().begin(), data.files().end(),
                     [](const TokenDataset::FileInfo& f) { return f.format == ShardFormat::LlmC; });
}

}  // namespace routemoe
