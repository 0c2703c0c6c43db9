#pragma once
// Training data: token shard files, the byte-level `routemoe prepare` step, token datasets and
// the deterministic batch loader.
//
// Shard formats (readers pick by content, not by name):
//   * llm.c / routemoe shard: a header of 256 little-endian int32 ([0] magic 20240520,
//     [1] version 1, [2] token count n, rest zero), then n little-endian uint16 tokens. This is
//     what `write_shard` and `prepare_text` write.
//   * nanoGPT `.bin`: raw little-endian uint16 tokens, no header. Only accepted when the caller
//     allows headerless files and the name ends in `.bin`; a `.bin` file that starts with the
//     magic is always read as llm.c.
// Every problem with a data file is an Error(ErrorKind::Data) whose one-line message names the
// file and the problem.
//
// Batches: global batch row r of training step s reads the window of T+1 tokens starting at a
// position drawn from Philox(seed, kDataStreamBase + s) at counter r, so a data-parallel rank
// that asks for rows [rank*B_local, (rank+1)*B_local) gets exactly the rows one process would.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace routemoe {

inline constexpr std::int32_t kShardMagic = 20240520;
inline constexpr std::int32_t kShardVersion = 1;
inline constexpr std::int64_t kShardHeaderInts = 256;
inline constexpr std::int64_t kShardHeaderBytes = kShardHeaderInts * 4;  // 1024
// Vocabulary of the byte-level tokenizer: token = byte value.
inline constexpr int kByteVocabSize = 256;
// Philox stream offset of data sampling (step s uses stream kDataStreamBase + s), far from the
// small parameter ids that parameter initialisation uses as streams.
inline constexpr std::uint64_t kDataStreamBase = 0xDA7A000000000000ull;

enum class ShardFormat {
  LlmC,       // 1024-byte header + uint16 tokens
  Headerless  // nanoGPT: raw uint16 tokens
};

// One loaded shard file.
struct TokenShard {
  std::string path;
  ShardFormat format = ShardFormat::LlmC;
  std::vector<std::uint16_t> tokens;  // [n]
};

// Reads and validates one shard. Every token must be < vocab_size (vocab_size in [1, 65536]).
// `allow_headerless`: a `.bin` file without the llm.c magic is read as nanoGPT raw uint16 tokens
// (its size must be even); otherwise such a file is an error naming the magic it found.
// Throws Error(Data) for a missing/unreadable file, a file shorter than the header, a wrong
// magic, an unsupported version, a token count that does not match the file size (truncated or
// trailing bytes, with expected and found byte counts), an odd-sized headerless file, or a token
// >= vocab_size (naming its position).
TokenShard load_tokens(const std::string& path, int vocab_size, bool allow_headerless = false);

// Writes `tokens` ([n], n < 2^31) as an llm.c-format shard. Writes `path + ".tmp"` first and
// renames it over `path`, so a crash never leaves a half-written shard under `path`.
// Throws Error(Io) when the file cannot be written.
void write_shard(const std::string& path, std::span<const std::uint16_t> tokens);

// Byte-level tokenizer (vocab 256): one token per byte, UTF-8 bytes as they are.
std::vector<std::uint16_t> encode_bytes(std::string_view text);
// Inverse of encode_bytes; a token > 255 is an Error(Data).
std::string decode_bytes(std::span<const std::uint16_t> tokens);

// What `prepare_text` wrote.
struct PrepareResult {
  std::int64_t train_tokens = 0;
  std::int64_t val_tokens = 0;
  std::vector<std::string> train_shards;  // out_dir/train_000000.bin, ...
  std::vector<std::string> val_shards;    // out_dir/val_000000.bin, ...
  std::string meta_path;                  // out_dir/meta.json
};

// The logic of `routemoe prepare`: byte-tokenizes the concatenation of `inputs` (each must exist
// and be non-empty), puts the last `val_fraction` (0 < f < 1) of the token stream into the
// validation split (floor(n*f) tokens; both splits must end up non-empty), and writes
// out_dir/train_%06d.bin and out_dir/val_%06d.bin shards of at most `shard_tokens` tokens each
// plus out_dir/meta.json:
//   {"tokenizer":"byte","vocab_size":256,"train_tokens":N,"val_tokens":M,"sources":[...]}
// Creates out_dir when missing. Refuses (Error(Data)) when out_dir already holds train_*.bin,
// val_*.bin or meta.json unless `overwrite`; with `overwrite`, old shards are removed only after
// every new shard has been written (to .tmp files), so stale shards never mix with new ones.
// Bad arguments are Error(Config).
PrepareResult prepare_text(const std::vector<std::string>& inputs, const std::string& out_dir,
                           double val_fraction, std::int64_t shard_tokens, bool overwrite = false);

// Shard files of one split, sorted by name. `source` is one of:
//   * a directory: its files `<split>_*.bin` (routemoe/llm.c) and `<split>.bin` (nanoGPT);
//   * a pattern containing `{split}`, which is replaced by the split name, then as below;
//   * a glob-like pattern: `*` and `?` in the last path component (the directory is literal).
// Throws Error(Data) when nothing matches (naming the pattern and split) or the directory is
// missing.
std::vector<std::string> list_shards(const std::string& source, const std::string& split);

// All tokens of one split, concatenated in shard-name order (our data sets are small).
class TokenDataset {
 public:
  struct FileInfo {
    std::string path;
    ShardFormat format;
    std::int64_t offset;  // first token of this file in tokens()
    std::int64_t num_tokens;
  };

  // Lists the split's shards with list_shards, loads and validates each against vocab_size.
  // Throws Error(Data) when no file matches or the split has zero tokens.
  TokenDataset(const std::string& source, const std::string& split, int vocab_size,
               bool allow_headerless = false);

  const std::string& split() const { return split_; }
  const std::string& source() const { return source_; }
  int vocab_size() const { return vocab_size_; }
  std::int64_t size() const { return static_cast<std::int64_t>(tokens_.size()); }
  const std::vector<std::uint16_t>& tokens() const { return tokens_; }  // [size()]
  const std::vector<FileInfo>& files() const { return files_; }

 private:
  std::string source_;
  std::string split_;
  int vocab_size_;
  std::vector<std::uint16_t> tokens_;
  std::vector<FileInfo> files_;
};

// One batch, or the rows [row_begin, row_begin + rows) of one global batch.
struct Batch {
  std::int64_t step = 0;             // training step, or eval batch index
  std::int64_t row_begin = 0;        // first global row held here
  std::int64_t rows = 0;             // B (local rows)
  std::int64_t seq_len = 0;          // T
  std::vector<std::int32_t> inputs;  // [rows, T] row-major
  std::vector<std::int32_t>
      targets;  // [rows, T] row-major: targets[r][t] = token after inputs[r][t]
  std::vector<std::int64_t> starts;  // [rows] offset in the split of each row's first input token
};

struct BatchLoaderOptions {
  std::int64_t batch_size = 8;  // global B (all data-parallel ranks together)
  std::int64_t seq_len = 64;    // T
  std::uint64_t seed = 0;
};

// The loader's resumable position, stored in checkpoints. seed, batch_size and seq_len are kept
// so that resuming with a different sampling stream is caught.
struct LoaderState {
  std::int64_t step = 0;  // next training step next() will return
  std::uint64_t seed = 0;
  std::int64_t batch_size = 0;
  std::int64_t seq_len = 0;
};

// Produces (inputs, targets) batches from a dataset. The dataset must outlive the loader.
class BatchLoader {
 public:
  // Throws Error(Config) for B < 1 or T < 1, Error(Data) when the split holds fewer than T+1
  // tokens (not even one window).
  BatchLoader(const TokenDataset& data, const BatchLoaderOptions& options);

  const BatchLoaderOptions& options() const { return options_; }
  const TokenDataset& dataset() const { return *data_; }

  // --- training: random windows, a pure function of (seed, step, row) ---
  // Start of the window of global row `row` at `step`: uniform in [0, size - T - 1].
  std::int64_t window_start(std::int64_t step, std::int64_t row) const;
  // Rows [row_begin, row_begin + row_count) of the global batch of `step`;
  // 0 <= row_begin, row_begin + row_count <= B. Does not touch the loader's state.
  Batch batch_at(std::int64_t step, std::int64_t row_begin, std::int64_t row_count) const;
  // batch_at(state().step, row_begin, row_count), then advances the step counter. row_count < 0
  // means all rows from row_begin.
  Batch next(std::int64_t row_begin = 0, std::int64_t row_count = -1);

  // --- epochs ---
  // Tokens of one epoch: the size of the split.
  std::int64_t tokens_per_epoch() const { return data_->size(); }
  // Steps of one epoch: max(1, tokens_per_epoch / (B*T)).
  std::int64_t steps_per_epoch() const;
  // Epoch that training step `step` belongs to (step / steps_per_epoch, from 0).
  std::int64_t epoch_of_step(std::int64_t step) const { return step / steps_per_epoch(); }
  // True when `step` is the last step of an epoch ((step + 1) % steps_per_epoch == 0).
  bool is_epoch_end(std::int64_t step) const { return (step + 1) % steps_per_epoch() == 0; }

  // --- evaluation: sequential non-overlapping windows ---
  // Window w starts at w*T; the split holds (size - 1) / T windows.
  std::int64_t eval_windows() const { return (data_->size() - 1) / options_.seq_len; }
  // Full eval batches of B windows (a final partial batch is left out so that every batch has
  // the same shape on every rank).
  std::int64_t eval_num_batches() const { return eval_windows() / options_.batch_size; }
  // Rows [row_begin, row_begin + row_count) of eval batch `index`: global row r holds window
  // index*B + r.
  Batch eval_batch(std::int64_t index, std::int64_t row_begin = 0,
                   std::int64_t row_count = -1) const;
  // Eval batches 0 .. min(max_batches, eval_num_batches()) - 1 (max_batches <= 0: all).
  // Throws Error(Data) when the split holds fewer than B*T+1 tokens (not one full batch).
  std::vector<Batch> eval_batches(std::int64_t max_batches, std::int64_t row_begin = 0,
                                  std::int64_t row_count = -1) const;

  // --- checkpoint state ---
  LoaderState state() const;
  // Restores the step counter. Throws Error(Config) when seed, batch_size or seq_len differ from
  // this loader's (the resumed run would read a different sample stream).
  void set_state(const LoaderState& state);

 private:
  Batch make_batch(std::int64_t step, std::int64_t row_begin, std::int64_t row_count,
                   const std::vector<std::int64_t>& starts) const;
  std::int64_t resolve_rows(std::int64_t row_begin, std::int64_t row_count) const;

  const TokenDataset* data_;
  BatchLoaderOptions options_;
  std::int64_t step_ = 0;
};

}  // namespace routemoe
