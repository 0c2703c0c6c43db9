#include "framework/data.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <system_error>

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
  return glob_match("train_*.bin", name) || glob_match("val_*.bin", name) || name == "meta.json";
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

PrepareResult prepare_text(const std::vector<std::string>& inputs, const std::string& out_dir,
                           double val_fraction, std::int64_t shard_tokens, bool overwrite) {
  RM_CHECK_KIND(Config, !inputs.empty(), "prepare: no input text files given");
  RM_CHECK_KIND(Config, !out_dir.empty(), "prepare: empty output directory");
  RM_CHECK_KIND(Config, std::isfinite(val_fraction) && val_fraction > 0.0 && val_fraction < 1.0,
                fmt::format("prepare: val_fraction {} must be in (0, 1)", val_fraction));
  RM_CHECK_KIND(Config,
                shard_tokens >= 1 && shard_tokens <= std::numeric_limits<std::int32_t>::max(),
                fmt::format("prepare: shard_tokens {} must be in [1, 2^31-1]", shard_tokens));

  // Read every input before touching out_dir.
  std::string text;
  for (const std::string& input : inputs) {
    std::error_code ec;
    const fs::file_status st = fs::status(input, ec);
    if (!fs::exists(st)) RM_FAIL(Data, fmt::format("{}: input text file does not exist", input));
    if (!fs::is_regular_file(st)) {
      RM_FAIL(Data, fmt::format("{}: input is not a regular file", input));
    }
    std::ifstream in(input, std::ios::binary);
    if (!in) RM_FAIL(Data, fmt::format("{}: cannot open input text file", input));
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) RM_FAIL(Data, fmt::format("{}: read failed", input));
    if (content.empty()) RM_FAIL(Data, fmt::format("{}: input text file is empty", input));
    text += content;
  }
  const std::vector<std::uint16_t> tokens = encode_bytes(text);
  const auto n = static_cast<std::int64_t>(tokens.size());
  const auto n_val = static_cast<std::int64_t>(std::floor(static_cast<double>(n) * val_fraction));
  const std::int64_t n_train = n - n_val;
  if (n_val < 1 || n_train < 1) {
    RM_FAIL(Data, fmt::format("prepare: {} tokens are too few to split with val_fraction {} "
                              "(train {} tokens, val {} tokens; both must be non-empty)",
                              n, val_fraction, n_train, n_val));
  }

  // Refuse to mix with an earlier preparation unless asked to.
  std::error_code ec;
  const fs::file_status dst = fs::status(out_dir, ec);
  std::vector<std::string> old_outputs;
  if (fs::exists(dst)) {
    if (!fs::is_directory(dst)) {
      RM_FAIL(Data, fmt::format("{}: output path exists and is not a directory", out_dir));
    }
    for (fs::directory_iterator it(out_dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (is_prepared_output(it->path().filename().string())) {
        old_outputs.push_back(it->path().string());
      }
    }
    if (ec) RM_FAIL(Io, fmt::format("{}: cannot list directory: {}", out_dir, ec.message()));
    std::sort(old_outputs.begin(), old_outputs.end());
    if (!old_outputs.empty() && !overwrite) {
      RM_FAIL(Data, fmt::format("{}: already holds prepared data ({} and {} more file(s)); "
                                "refusing to overwrite without overwrite (--overwrite)",
                                out_dir, fs::path(old_outputs.front()).filename().string(),
                                old_outputs.size() - 1));
    }
  } else {
    fs::create_directories(out_dir, ec);
    if (ec) RM_FAIL(Io, fmt::format("{}: cannot create directory: {}", out_dir, ec.message()));
  }

  PrepareResult result;
  result.train_tokens = n_train;
  result.val_tokens = n_val;
  result.meta_path = (fs::path(out_dir) / "meta.json").string();

  // Write everything to .tmp files first; on failure remove them and leave out_dir as it was.
  std::vector<std::string> tmps;
  try {
    const auto write_split = [&](const char* split, std::int64_t begin, std::int64_t end,
                                 std::vector<std::string>& paths) {
      for (std::int64_t s = begin, i = 0; s < end; s += shard_tokens, ++i) {
        const std::int64_t e = std::min(end, s + shard_tokens);
        const std::string path =
            (fs::path(out_dir) / fmt::format("{}_{:06d}.bin", split, i)).string();
        tmps.push_back(path + ".tmp");
        write_shard_file(tmps.back(),
                         std::span<const std::uint16_t>(tokens).subspan(
                             static_cast<std::size_t>(s), static_cast<std::size_t>(e - s)));
        paths.push_back(path);
      }
    };
    write_split("train", 0, n_train, result.train_shards);
    write_split("val", n_train, n, result.val_shards);

    std::string meta = fmt::format(
        "{{\"tokenizer\":\"byte\",\"vocab_size\":{},\"train_tokens\":{},\"val_tokens\":{},"
        "\"sources\":[",
        kByteVocabSize, n_train, n_val);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      meta += fmt::format("{}{}", i == 0 ? "" : ",", json_quote(inputs[i]));
    }
    meta += "]}\n";
    tmps.push_back(result.meta_path + ".tmp");
    write_text_file(tmps.back(), meta);
  } catch (...) {
    for (const std::string& t : tmps) fs::remove(t, ec);
    throw;
  }

  // Every new file is on disk: drop stale outputs, then move the new ones into place.
  std::set<std::string> finals(result.train_shards.begin(), result.train_shards.end());
  finals.insert(result.val_shards.begin(), result.val_shards.end());
  finals.insert(result.meta_path);
  for (const std::string& old : old_outputs) {
    if (finals.count(old) == 0) {
      fs::remove(old, ec);
      if (ec) RM_FAIL(Io, fmt::format("{}: cannot remove stale shard: {}", old, ec.message()));
    }
  }
  for (const std::string& t : tmps) rename_file(t, t.substr(0, t.size() - 4));
  return result;
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

}  // namespace routemoe
