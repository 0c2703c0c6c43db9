#include "framework/train/evaluate.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <vector>

#include "framework/error.h"
#include "framework/h5.h"
#include "framework/train/checkpoint.h"
#include "layers/model.h"

namespace routemoe {

namespace fs = std::filesystem;

namespace {

// Rows per forward pass: `requested`, or B / ranks; must divide B.
std::int64_t micro_rows(std::int64_t requested, std::int64_t batch, int ranks) {
  const std::int64_t micro = requested > 0 ? requested : batch / ranks;
  RM_CHECK_KIND(Config, micro >= 1 && batch % micro == 0,
                fmt::format("evaluation micro-batch of {} rows must divide the batch of {} rows "
                            "(and be >= 1)",
                            micro, batch));
  return micro;
}

}  // namespace

EvalResult evaluate_split(Model& model, const BatchLoader& loader, const EvalOptions& options,
                          comm::Communicator& world) {
  const std::int64_t B = loader.options().batch_size;
  const int W = world.size();
  EvalResult r;
  r.micro_batch = micro_rows(options.micro_batch, B, W);
  const std::int64_t available = loader.eval_num_batches();
  if (available == 0) loader.eval_batches(1);  // throws the loader's "fewer than one batch"
  r.batches = options.max_batches <= 0 ? available : std::min(options.max_batches, available);
  const std::int64_t per_batch = B / r.micro_batch;
  const std::int64_t total = r.batches * per_batch;
  const std::int64_t per_rank = (total + W - 1) / W;
  // [per_rank][2]: loss sum and tokens of micro-batch s * W + rank.
  std::vector<double> mine(static_cast<std::size_t>(2 * per_rank), 0.0);
  for (std::int64_t s = 0; s < per_rank; ++s) {
    const std::int64_t g = s * W + world.rank();
    // A rank without a micro-batch left repeats micro-batch 0 and drops the result, so that
    // the forward passes (collective under expert parallelism) stay in step on every rank.
    const std::int64_t at = g < total ? g : 0;
    const Batch b =
        loader.eval_batch(at / per_batch, (at % per_batch) * r.micro_batch, r.micro_batch);
    const StepStats st = model.forward(b.inputs.data(), b.targets.data(), b.rows, b.seq_len,
                                       nullptr, options.dropless);
    if (g < total) {
      mine[static_cast<std::size_t>(2 * s)] = st.ce_loss * static_cast<double>(st.tokens);
      mine[static_cast<std::size_t>(2 * s + 1)] = static_cast<double>(st.tokens);
    }
  }
  std::vector<double> all(static_cast<std::size_t>(2 * per_rank * W));
  world.all_gather(mine.data(), all.data(), 2 * per_rank, comm::DataType::F64);
  double loss = 0.0, tokens = 0.0;
  for (std::int64_t g = 0; g < total; ++g) {  // micro-batch order, whatever the rank count
    const std::size_t at = static_cast<std::size_t>(2 * ((g % W) * per_rank + g / W));
    loss += all[at];
    tokens += all[at + 1];
  }
  r.tokens = static_cast<std::int64_t>(tokens);
  r.loss = tokens > 0 ? loss / tokens : 0.0;
  return r;
}

double bits_per_byte(double nats_per_token, double bytes_per_token) {
  return nats_per_token / std::log(2.0) / bytes_per_token;
}

std::string resolve_checkpoint(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) {
    RM_FAIL(Data, fmt::format("{}: no such checkpoint file or run directory", path));
  }
  if (!fs::is_directory(st)) return path;
  for (const fs::path& dir : {fs::path(path) / "checkpoints", fs::path(path)}) {
    const std::vector<std::string> found = list_checkpoints(dir.string());
    if (!found.empty()) return found.back();
  }
  RM_FAIL(Data, fmt::format("{}: no checkpoint (ckpt_*.h5) in {}/checkpoints or in the directory "
                            "itself; was the run trained with checkpoint.every > 0?",
                            path, path));
}

namespace {

// The stored configuration (TOML) parsed as `routemoe train --config` parses a file.
RunConfig parse_stored_config(const std::string& path, const std::string& toml) {
  RunConfig cfg;
  try {
    read_config_toml(toml, "config", cfg);
    cfg.model.validate();
  } catch (const Error& e) {
    const std::string what = e.detail().empty() ? e.what() : e.detail();
    RM_FAIL(Data, fmt::format("{}: stored configuration is invalid: {}", path, what));
  }
  return cfg;
}

}  // namespace

StoredCheckpoint read_stored_checkpoint(const std::string& path) {
  std::error_code ec;
  RM_CHECK_KIND(Data, fs::exists(path, ec), fmt::format("{}: no such checkpoint file", path));
  RM_CHECK_KIND(Data, fs::is_regular_file(path, ec), fmt::format("{}: not a file", path));
  StoredCheckpoint out;
  out.path = path;
  out.info = runfile::reading(path, [&]() {
    const h5::File f = h5::File::open_read(path);
    runfile::check_header(f, path, {runfile::Kind::Checkpoint});
    return runfile::read_checkpoint_info(f);
  });
  out.config = parse_stored_config(path, out.info.config);
  return out;
}

}  // namespace routemoe
