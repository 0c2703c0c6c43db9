#pragma once
// The run-file format in one place (docs/checkpoint-format.md): the two kinds of HDF5 file a run
// writes (checkpoints and the routing trace), their format names and versions, the header check
// every reader does, the routing record of the probe set with its writer and reader, the root
// attributes of each kind, the per-layer router list, and the helper that turns any failure while
// reading a file into one Error(Data) line naming that file.
//
// Users: framework/train/checkpoint.cpp (writes and loads), framework/trace/analysis.cpp (reads
// for `routemoe trace`), framework/cli/inspect_cmd.cpp (`routemoe inspect`) and the tests. This
// module knows files, not models: it depends on h5.h and error.h only (no layers/, no train/).

#include <cstddef>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace routemoe::h5 {
class File;
}

namespace routemoe::runfile {

// ---- kinds, names, versions ----

enum class Kind { Checkpoint, Trace };

// Value of the root attribute `format`.
inline constexpr std::string_view kCheckpointFormat = "routemoe-checkpoint";
inline constexpr std::string_view kTraceFormat = "routemoe-trace";
// Value of the root attribute `format_version` this build writes, and the newest it reads.
// The version changes when an older reader would misread a file; an optional attribute that
// older readers ignore (such as `run_id`) keeps it, and readers accept files without it.
inline constexpr std::int64_t kCheckpointVersion = 1;
inline constexpr std::int64_t kTraceVersion = 2;
// Trace versions this build reads: 1 (one group per record, rewritten by copying the file) and
// 2 (records as rows of extendible datasets, appended in place; per-expert AC weights).
inline constexpr std::int64_t kTraceVersionRecordGroups = 1;

// "routemoe-checkpoint" | "routemoe-trace".
std::string_view format_name(Kind kind);
// kCheckpointVersion | kTraceVersion.
std::int64_t format_version(Kind kind);
// "checkpoint" | "trace" (for messages).
std::string_view kind_noun(Kind kind);

// Group names inside the files.
inline constexpr const char* kRoutingGroup = "routing";  // a checkpoint's routing record
inline constexpr const char* kRecordsGroup = "records";  // v1: records/<index:06d>; v2: columns
// Trace version 2: the column whose length is the number of complete records (written last).
inline constexpr const char* kRecordSteps = "records/step";
inline constexpr const char* kProbeTokens = "probe/tokens";
// A checkpoint's tensors: params/<name>, optim/m/<name>, optim/v/<name> (in this order).
inline constexpr const char* kTensorGroups[3] = {"params", "optim/m", "optim/v"};

// ---- header ----

struct Header {
  Kind kind = Kind::Checkpoint;
  std::int64_t version = 0;
};

// Writes the root attributes `format` and `format_version` (the current version) of `kind`.
void write_header(h5::File& f, Kind kind);

// Checks the root attributes of the open file `f` (shown as `path`) against the kinds the caller
// accepts (in the order they are named in messages) and returns what the file is. Refuses with
// one Error(Data) line naming `path`:
//   "<path>: not a routemoe checkpoint or trace (no 'format' attribute)"
//   "<path>: not a routemoe checkpoint or trace (format is 'foo')"
//   "<path>: not a routemoe checkpoint (it is a routemoe trace)"
//   "<path>: routemoe-checkpoint without a 'format_version' attribute"
//   "<path>: routemoe-checkpoint format_version 2 is not supported: it is newer than this build
//    reads (1); use a newer routemoe"
//   "<path>: routemoe-checkpoint has an invalid format_version 0 (versions start at 1)"
Header check_header(const h5::File& f, const std::string& path, std::initializer_list<Kind> accept);

// ---- per-layer router list ----

// The `routers` root attribute: router names joined by "," ("topk,ac").
std::string join_routers(const std::vector<std::string>& routers);
// Its inverse; blanks around names are dropped, "" is the empty list.
std::vector<std::string> split_routers(const std::string& text);

// ---- routing record ----

// One MoE layer of a routing record (rows of all ranks, probe order).
struct LayerRouting {
  std::string router;                    // the router the layer used ("" when the file has none)
  std::vector<std::int32_t> experts;     // [P, k] chosen experts, best first
  std::vector<float> gates;              // [P, k] gate weights of the chosen experts
  std::vector<float> probs;              // [P, k] routing probability of each chosen expert
  std::vector<float> ac_scale;           // [P, d] AC feature weights M_i of each token (ac layers
                                         // of a checkpoint or a version-1 trace, and in memory
                                         // after route_probe; else empty)
  std::vector<float> ac_weights;         // [G, E, d] per-expert AC weights w_e of each token
                                         // group (ac layers of a version-2 trace, or filled by
                                         // derive_ac_weights; else empty)
  std::vector<std::uint8_t> ac_present;  // [G, E] 1 where group g sent tokens to expert e at
                                         // the previous MoE layer (w_e exists), else 0
  // Graph diagnostics of similarity/attention layers (docs/model.md, "Graph diagnostics"): the
  // mixing matrix's mean self-weight, mean row entropy (nats), mean effective number of
  // neighbours exp(H) and mean normalised entropy H / log(n_i) over the probe tokens; empty for
  // other routers and for traces written before them.
  std::vector<float> graph;
};
// Entries of LayerRouting::graph.
inline constexpr std::size_t kGraphStats = 4;
inline constexpr const char* kGraphStatNames[kGraphStats] = {"self_weight", "entropy", "neighbours",
                                                             "entropy_norm"};

// The routing record of the probe set: a checkpoint's /routing, or one trace /records/<index>.
struct RoutingRecord {
  std::int64_t step = 0;     // optimiser steps completed
  std::int64_t epoch = 0;    // epoch of the last step taken
  std::string reason;        // initial | checkpoint | epoch_end | final | interval ("" when absent)
  std::int64_t tokens = 0;   // P
  std::int64_t top_k = 0;    // k
  std::int64_t d_model = 0;  // d: row width of ac_scale (read: 0 when no layer has ac_scale)
  // Token groups whose tokens the AC statistics of a record came from, each the next P/G tokens:
  // 1 since probe routing takes them over the whole probe set on any layout; older runs routed
  // each rank's slice separately (one group per rank).
  std::int64_t groups = 1;
  std::int64_t n_experts = 0;        // E: rows of ac_weights per group (0 when no layer has them)
  std::vector<LayerRouting> layers;  // one per MoE layer
  std::string origin;  // where it was read from ("<file>:<group>"), for messages; "" in memory
};

// Writes `record` into group `group` of `f` (created with its parents). Collective in a parallel
// file (every rank passes the same record).
void write_routing(h5::File& f, const std::string& group, const RoutingRecord& record);

// What read_routing expects; 0 / -1 mean "whatever the file says".
struct RoutingExpect {
  std::int64_t layers = -1;    // MoE layers; -1: layer0, layer1, ... as long as they exist
  std::int64_t tokens = 0;     // P (0: taken from layer0)
  std::int64_t top_k = 0;      // k (0: taken from layer0)
  std::int64_t n_experts = 0;  // > 0: every expert id must lie in [0, n_experts)
  bool values = true;          // also read gates, probs and ac_scale (else experts and router)
};

// Reads the routing record in group `group`. Every layer's experts must be [P, k] (the same for
// all layers), gates and probs the shape of experts, ac_scale [P, d]. Refuses with Error(Data)
// naming "<file>:<group>" and what is wrong.
RoutingRecord read_routing(const h5::File& f, const std::string& group,
                           const RoutingExpect& expect = {});

// ---- AC weights: per token (M_i) and per expert (w_e) ----

// Fills ac_weights and ac_present of every layer that has ac_scale from it: M_i = w_{c_i}, with
// c_i token i's top-1 expert at the previous MoE layer of the same record and token i in group
// i / (P / groups). Every token of one group and expert must carry the same row (else an
// internal error: the groups do not match how the probe was routed). Sets record.n_experts.
void derive_ac_weights(RoutingRecord& record, std::int64_t n_experts);
// For a record read from a file that does not say how the probe was split (a version-1 trace):
// sets record.groups to the fewest groups of whole sequences (of seq_len tokens) under which
// every group's tokens of one expert share their AC weights, and derives them (1 when no layer
// has AC weights). Error(Data) when no split fits.
std::int64_t infer_ac_groups(RoutingRecord& record, std::int64_t n_experts, std::int64_t seq_len);
// M [P, d] of layer m: ac_scale when present, else expanded from ac_weights (Error(Data) when a
// token's group has no weights for its expert); empty for a layer without AC weights.
std::vector<float> ac_token_weights(const RoutingRecord& record, std::size_t m);

// ---- root attributes of each kind ----

// A trace file's root (everything but the records).
struct TraceInfo {
  std::int64_t n_moe_layers = 0;
  std::int64_t top_k = 0;
  std::int64_t n_experts = 0;
  std::int64_t seq_len = 0;
  std::vector<std::string> routers;  // configured router per MoE layer
  std::string config;                // resolved configuration (TOML)
  std::int64_t probe_tokens = 0;     // P (read: the length of probe/tokens)
  std::string run_id;        // the run that wrote it (root attribute `run_id`; "" when absent)
  std::int64_t d_model = 0;  // d (version 2; read as 0 from a version-1 trace)
  std::int64_t version = 0;  // read: the file's format_version
};

// Creates a trace's root: header, model facts, router list, configuration and the probe tokens
// (`info.probe_tokens` of them).
void write_trace_info(h5::File& f, const TraceInfo& info, const std::int32_t* probe);
// Reads the root attributes and the probe length of a trace whose header was checked; refuses
// inconsistent model facts (n_moe_layers < 1, top_k < 1, n_experts < top_k, probe not [P]).
TraceInfo read_trace_info(const h5::File& f);

// Version 1: group of trace record `index`: "records/000042".
std::string trace_record_group(std::int64_t index);
// Version 1: the record groups of a trace ("records/000000", ...) in the order they were taken;
// refuses a member of /records that is not a decimal index. Empty when the trace has no /records.
std::vector<std::string> trace_record_groups(const h5::File& f);

// Number of complete records of a trace (either version; header checked).
std::int64_t trace_record_count(const h5::File& f);
// The complete records of a trace (either version), in the order they were taken; `expect` as
// for read_routing (layers, tokens and top_k default to the trace's). A version-2 trace gives
// ac_weights/ac_present (not ac_scale), a version-1 trace ac_scale. Rows beyond the committed
// record count (left by an append that was killed) are ignored. Error(Data) naming the file.
std::vector<RoutingRecord> read_trace_records(const h5::File& f, RoutingExpect expect = {});

// Writes a new version-2 trace at `path` holding `records` (at least one; the first fixes which
// layers store AC weights): into `path`.tmp, renamed over `path` when complete.
void create_trace(const std::string& path, const TraceInfo& info, const std::int32_t* probe,
                  const std::vector<RoutingRecord>& records);
// Appends `record` to the trace at `path`. Without a trace there, creates one (create_trace with
// `info` and `probe`); a version-1 trace is first rewritten as version 2 (once, by create_trace).
// A version-2 trace is appended in place (h5::File::open_append): every dataset of the record
// first, flushed, then the row of records/step that commits it. A process killed at any point
// leaves the earlier records readable; the next append overwrites what the killed one left.
// Refuses (Error(Data)) a record whose shapes differ from the trace's.
void append_trace_record(const std::string& path, const TraceInfo& info, const std::int32_t* probe,
                         const RoutingRecord& record);
// Drops the records of a trace taken after `step` (the resume path, rare): the records kept are
// written to a new version-2 trace (create_trace: a copy renamed over `path`, so a process
// killed meanwhile leaves the old trace whole); with none kept the file is removed. Returns how
// many records remain.
std::int64_t truncate_trace(const std::string& path, std::int64_t step);

// A checkpoint's root attributes (the tensors, /optim and /routing are written by their owners).
struct CheckpointInfo {
  std::int64_t step = 0;  // optimiser steps completed
  std::int64_t epoch = 0;
  std::uint64_t data_seed = 0;
  std::int64_t world_size = 1;  // layout of the run that wrote it (informative)
  std::int64_t ep_size = 1;
  std::vector<std::string> routers;  // configured router per MoE layer
  std::string config;                // resolved configuration (TOML)
  std::string run_id;  // the run that wrote it (root attribute `run_id`; "" when absent)
};

// Writes the header and the attributes of `info` on the root. Collective in a parallel file.
void write_checkpoint_info(h5::File& f, const CheckpointInfo& info);
// Reads them from a checkpoint whose header was checked; refuses a negative step.
CheckpointInfo read_checkpoint_info(const h5::File& f);

// The root attribute `run_id` of an open checkpoint or trace: "" when the file has none (written
// before run ids existed, or by a writer that had none).
std::string read_run_id(const h5::File& f);

// ---- errors while reading a file ----

// Rethrows the exception being handled (call it inside a catch block) as one Error(Data) line
// naming `path`: "<path>: <cause>", where the cause is the detail of a user-facing routemoe error
// (Config, Data, Io, HDF5; prefixed with the path unless it names it already) or the full
// message of anything else (internal errors keep their source location). Line breaks become
// spaces.
[[noreturn]] void rethrow_for_file(const std::string& path, std::exception_ptr error);

// Runs `read` and rethrows whatever it raises through rethrow_for_file(path).
template <typename Fn>
auto reading(const std::string& path, Fn&& read) -> decltype(read()) {
  try {
    return read();
  } catch (...) {
    rethrow_for_file(path, std::current_exception());
  }
}

}  // namespace routemoe::runfile
