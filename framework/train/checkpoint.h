#pragma once
// HDF5 checkpoints and routing traces (docs/checkpoint-format.md).
//
// A checkpoint holds the parameters and AdamW moments with their global shapes (expert tensors
// with all experts), the step, epoch, data seed, the resolved configuration and the routing
// record of the probe set at that step. All ranks write it together: with parallel HDF5 every
// rank writes its own expert slices (dense tensors by rank 0); without it the expert shards are
// gathered and rank 0 writes. Any rank count and ep_size can load it (each rank reads its
// slice). Files are written to <name>.tmp, closed and renamed. The names, versions, header check
// and the routing record are those of framework/runfile.h.
//
// Failures while writing (disk full, permissions) are agreed by all ranks before anything
// collective happens next (comm/agree.h): after every collective step of the write each rank
// reports whether its part failed, and on a failure every rank abandons the file (no
// collective close), rank 0 removes the .tmp, and all ranks throw the same Error(Io) naming the
// path and the system's cause. The previous checkpoint is untouched.
//
// A checkpoint belongs to the run that wrote it (root attribute `run_id`): listing, pruning and
// `--resume auto` consider only the files of the run (see list_run_checkpoints).

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "framework/config.h"
#include "framework/runfile.h"

namespace routemoe {

class Model;
class AdamW;

// The routing record of the probe set (framework/runfile.h, the one definition of the format).
using runfile::LayerRouting;
using runfile::RoutingRecord;

struct CheckpointState {
  std::int64_t step = 0;  // optimiser steps completed
  std::int64_t epoch = 0;
  std::uint64_t data_seed = 0;
  std::string run_id;  // the run that wrote it ("" for files from before run ids)
};

// Routes `probe` ([sequences, seq_len] tokens, sequences divisible by the world size) in
// evaluation mode (no capacity dropping) and gathers the record on every rank. Collective.
RoutingRecord route_probe(Model& model, const std::vector<std::int32_t>& probe,
                          std::int64_t seq_len, comm::Communicator& world);

// How a multi-rank checkpoint is written: Auto uses parallel HDF5 (each rank writes its expert
// slices) when available; Gathered always gathers expert shards to rank 0, which writes alone
// (the fallback, also used by `routemoe bench checkpoint` for comparison).
enum class CheckpointWrite { Auto, Gathered };

// Writes `path` (collective over groups.world). The record may be empty (no layers). Refuses,
// on every rank, to write a model or optimiser state holding a non-finite value.
void save_checkpoint(const std::string& path, const RunConfig& cfg, Model& model, AdamW& opt,
                     const CheckpointState& state, const RoutingRecord& record,
                     comm::ProcessGroups& groups, CheckpointWrite mode = CheckpointWrite::Auto);

// Loads `path` into model and optimiser (each rank its slice); checks format, version and
// every tensor's shape against the model. Throws Error(Data) with the file and the cause.
CheckpointState load_checkpoint(const std::string& path, Model& model, AdamW& opt);

// Checkpoint files ckpt_<step>.h5 in `dir` (by name only), oldest first.
std::vector<std::string> list_checkpoints(const std::string& dir);

// The checkpoint files of `dir` split by owner: `own` are those whose root attribute run_id is
// `run_id`, oldest first; `foreign` are the others (another run's, a file without a run id,
// a file that is not a readable checkpoint), each as "<file name> (<why>)", for messages.
struct RunCheckpoints {
  std::vector<std::string> own;
  std::vector<std::string> foreign;
};
RunCheckpoints list_run_checkpoints(const std::string& dir, const std::string& run_id);

// Refuses (Error(Config), one line naming the file and its owner) a run that could overwrite a
// checkpoint of another run, or a stray file, in `dir`: a ckpt_<step>.h5 that is not run
// `run_id`'s and whose step lies in (from_step, to_step], the steps this run may still write.
void check_foreign_checkpoints(const std::string& dir, const std::string& run_id,
                               std::int64_t from_step, std::int64_t to_step);

// Deletes all but the newest `keep_last` (>= 1) checkpoints of run `run_id` in `dir`; files of
// other runs and stray files are never touched.
void prune_checkpoints(const std::string& dir, std::int64_t keep_last, const std::string& run_id);

// Appends `record` to the run's trace file (created with the probe tokens and `run_id` on first
// use) in place (runfile::append_trace_record): the time and bytes of an append do not grow with
// the records already there. Rank 0 only; a process killed during an append leaves every
// complete record readable; a failed write throws Error(Io) naming the file.
void append_trace(const std::string& path, const RunConfig& cfg,
                  const std::vector<std::int32_t>& probe, const RoutingRecord& record,
                  const std::string& run_id);

// Refuses (Error(Config), one line) to resume into the trace at `path` when the records this run
// would append are not comparable with those it holds: another run's trace, or a changed
// number of MoE layers, top_k, n_experts, seq_len, router list or probe set (size or tokens).
// Nothing is written. A missing trace is fine. Rank 0 only.
void check_trace_continues(const std::string& path, const RunConfig& cfg,
                           const std::vector<std::int32_t>& probe, const std::string& run_id);

// After resuming at `step` (steps completed): removes the metrics lines of later steps
// (their "step" field, 0-based, is >= step) and the trace records taken after `step`, so that
// the resumed run does not log those steps twice. Rank 0 only; missing files are fine.
void truncate_run_after(const std::string& metrics_path, const std::string& trace_path,
                        std::int64_t step);

}  // namespace routemoe
