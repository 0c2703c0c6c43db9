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
};

// Routes `probe` ([sequences, seq_len] tokens, sequences divisible by the world size) in
// evaluation mode (no capacity dropping) and gathers the record on every rank. Collective.
RoutingRecord route_probe(Model& model, const std::vector<std::int32_t>& probe,
                          std::int64_t seq_len, comm::Communicator& world);

// How a multi-rank checkpoint is written: Auto uses parallel HDF5 (each rank writes its expert
// slices) when available; Gathered always gathers expert shards to rank 0, which writes alone
// (the fallback, also used by `routemoe bench checkpoint` for comparison).
enum class CheckpointWrite { Auto, Gathered };

// Writes `path` (collective over groups.world). The record may be empty (no layers).
void save_checkpoint(const std::string& path, const RunConfig& cfg, Model& model, AdamW& opt,
                     const CheckpointState& state, const RoutingRecord& record,
                     comm::ProcessGroups& groups, CheckpointWrite mode = CheckpointWrite::Auto);

// Loads `path` into model and optimiser (each rank its slice); checks format, version and
// every tensor's shape against the model. Throws Error(Data) with the file and the cause.
CheckpointState load_checkpoint(const std::string& path, Model& model, AdamW& opt);

// Checkpoint files ckpt_<step>.h5 in `dir`, oldest first.
std::vector<std::string> list_checkpoints(const std::string& dir);
// Deletes all but the newest `keep_last` (>= 1) checkpoints of `dir`.
void prune_checkpoints(const std::string& dir, std::int64_t keep_last);

// Appends `record` to the run's trace file (created with the probe tokens on first use) in
// place (runfile::append_trace_record): the time and bytes of an append do not grow with the
// records already there. Rank 0 only; a process killed during an append leaves every complete
// record readable.
void append_trace(const std::string& path, const RunConfig& cfg,
                  const std::vector<std::int32_t>& probe, const RoutingRecord& record);

// After resuming at `step` (steps completed): removes the metrics lines of later steps
// (their "step" field, 0-based, is >= step) and the trace records taken after `step`, so that
// the resumed run does not log those steps twice. Rank 0 only; missing files are fine.
void truncate_run_after(const std::string& metrics_path, const std::string& trace_path,
                        std::int64_t step);

}  // namespace routemoe
