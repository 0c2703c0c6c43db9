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

#include "framework/corruption.h"

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

// ---- `routemoe prepare` (docs/data.md) ----
//
// Documents: every input file is one document. In the token stream each document is preceded
// by the byte kDocSeparator (ASCII 0x1C, "file separator"), so a window that crosses into the
// next document sees where it starts; with `doc_separator = false` documents are concatenated
// as they are. Split points (train | val | test) move to a document start when one lies within
// a tenth of the neighbouring split's size, else to a line start within that distance, so that
// a held-out split rarely begins mid-document or mid-line.

// The byte that starts every document in a prepared token stream (ASCII "file separator").
inline constexpr std::uint16_t kDocSeparator = 0x1C;

// Result of checking bytes for UTF-8 validity (strict: no overlong forms, no surrogates, nothing
// above U+10FFFF). Each maximal invalid byte run of one failed sequence counts once.
struct Utf8Report {
  std::int64_t invalid = 0;        // invalid sequences
  std::int64_t first_offset = -1;  // byte offset of the first one (-1: valid)
};
Utf8Report check_utf8(std::string_view bytes);

struct PrepareOptions {
  double val_fraction = 0.1;   // share of tokens (after train) for validation, (0, 1)
  double test_fraction = 0.0;  // share of tokens (at the end) for the test split, [0, 1); 0: none
  std::int64_t shard_tokens = 100'000'000;  // tokens per shard at most
  bool overwrite = false;                   // replace a preparation already in out_dir
  bool doc_separator = true;                // start every document with kDocSeparator
  // What the splits must serve, checked before anything is read or written (0: not checked):
  // val needs max(probe_tokens, batch_size * seq_len + 1) tokens (the probe set and one eval
  // batch), test one eval batch, train one window of seq_len + 1.
  std::int64_t seq_len = 0;
  std::int64_t batch_size = 0;
  std::int64_t probe_tokens = 0;
};

// One input document as prepared.
struct PreparedDocument {
  std::string path;
  std::int64_t offset = 0;  // its first token (the separator, when there is one) in the stream
  std::int64_t tokens = 0;  // its tokens, separator included
  Utf8Report utf8;
};

// What `prepare_corpus` wrote.
struct PrepareResult {
  std::int64_t train_tokens = 0;
  std::int64_t val_tokens = 0;
  std::int64_t test_tokens = 0;
  std::vector<std::string> train_shards;  // out_dir/train_000000.bin, ...
  std::vector<std::string> val_shards;    // out_dir/val_000000.bin, ...
  std::vector<std::string> test_shards;   // out_dir/test_000000.bin, ... (test_fraction > 0)
  std::vector<PreparedDocument> documents;
  std::vector<std::string> warnings;  // one line each: invalid UTF-8, skipped empty files, ...
  std::string meta_path;              // out_dir/meta.json
};

// The logic of `routemoe prepare`. `inputs` are text files or directories (a directory adds its
// regular files, recursively, in path order, skipping names that start with '.'; empty files
// found there are skipped with a warning, an empty file named directly is an error; a file
// reached twice is an error). The byte tokenizer (vocab 256) turns each document into one
// token per byte; input that is not valid UTF-8 is kept byte for byte and reported in
// `warnings` (count and first offset per file). The stream is cut into train, val (the next
// floor(n * val_fraction) tokens) and test (the last floor(n * test_fraction) tokens), cut
// points moved to document or line starts as described above, and written as
// out_dir/<split>_%06d.bin shards of at most `shard_tokens` tokens plus out_dir/meta.json:
//   {"tokenizer":"byte","vocab_size":256,"document_separator":28 (or null),
//    "train_tokens":N,"val_tokens":M,"test_tokens":K,"sources":[paths],
//    "documents":[{"path":..,"offset":..,"tokens":..,"invalid_utf8":..,"first_invalid":..}],
//    "splits":{"train":[begin,end],"val":[..],"test":[..]}}
// Creates out_dir when missing. Refuses (Error(Data)) when out_dir already holds shards or
// meta.json unless `overwrite`; with `overwrite`, old files are removed only after every new
// one has been written (to .tmp files), so stale shards never mix with new ones. The size
// checks of PrepareOptions fail with Error(Config) naming the split, its size, what it needs
// and the smallest fraction that would do. Bad arguments are Error(Config).
PrepareResult prepare_corpus(const std::vector<std::string>& inputs, const std::string& out_dir,
                             const PrepareOptions& options);

// prepare_corpus with default options but these.
PrepareResult prepare_text(const std::vector<std::string>& inputs, const std::string& out_dir,
                           double val_fraction, std::int64_t shard_tokens, bool overwrite = false);

// ---- `routemoe prepare --corrupt` (framework/corruption.h has the recipes) ----

enum class CorruptKind { WordSwap, CharNoise };
// "word-swap" | "char-noise"; Error(Config) otherwise.
CorruptKind parse_corrupt_kind(const std::string& name);
const char* corrupt_kind_name(CorruptKind kind);

struct CorruptOptions {
  CorruptKind kind = CorruptKind::WordSwap;
  WordSwapOptions word_swap;    // kind WordSwap (its seed is the recipe's seed)
  CharNoiseOptions char_noise;  // kind CharNoise
  // Splits to corrupt; empty: the held-out splits the source has (val, and test if present).
  std::vector<std::string> splits;
  std::int64_t shard_tokens = 100'000'000;
  bool overwrite = false;
};

struct CorruptedSplit {
  std::string split;
  std::int64_t source_tokens = 0;  // clean tokens
  std::int64_t tokens = 0;         // corrupted tokens (character noise changes the length)
  CorruptionStats stats;
  std::vector<std::string> shards;
};

struct CorruptResult {
  std::vector<CorruptedSplit> splits;
  std::string meta_path;
};

// Writes corrupted copies of splits of the prepared, byte-tokenized data set `source_dir` (a
// directory `routemoe prepare` wrote) into out_dir as <split>_%06d.bin shards plus meta.json,
//   {"tokenizer":"byte","vocab_size":256,"document_separator":..,"source":"<source_dir>",
//    "corruption":{"recipe":"word-swap","rate":..,"seed":..,"marker":..,"unit":..,
//                  "min_per_unit":..,"stopwords":"nltk-english"} | {"recipe":"char-noise",..},
//    "<split>_tokens":..,"splits":{"<split>":{"source_tokens":..,"tokens":..,"words":..,
//                                              "eligible":..,"changed":..,...}}}
// Every split is decoded to bytes, corrupted with the same recipe and seed, and re-encoded;
// the result is a pure function of (source tokens, recipe, seed). The train split is never
// corrupted (the attack is on evaluation data). Refuses out_dir == source_dir, a source whose
// meta.json names another tokenizer, a missing split (Error(Data)), and an out_dir holding
// prepared output unless `overwrite`, with the same write-then-rename rule as prepare_corpus.
class TokenDataset;
CorruptResult prepare_corrupted(const std::string& source_dir, const std::string& out_dir,
                                const CorruptOptions& options);

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

// True when the tokens of `data` are bytes (one token per byte of text): the meta.json next to
// the shards says "tokenizer":"byte", or there is no meta.json, vocab_size is 256 and every file
// is a routemoe/llm.c shard. Used for bits per byte.
bool is_byte_tokenized(const TokenDataset& data);

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
