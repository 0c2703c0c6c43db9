#pragma once
// Offline routing-fluctuation analysis (docs/analysis.md): reads the routing
// records of the probe set from trace files (`<run>/trace.h5`) or checkpoints
// (docs/checkpoint-format.md) and computes, per run:
//   - per MoE layer and pair of consecutive records: top-1 flip rate and top-k set change rate;
//   - per layer: the StableMoE-style last-change epoch distribution of each token's top-1 expert;
//   - per layer, at the last record: the expert load histogram (first choices) and its entropy,
//     and the entropy at every record (load balance over time);
//   - for consecutive MoE layers: top-1 agreement at the last record and averaged over records.
// The metric functions are pure (in-memory records in, numbers out); reading and writing files
// is separate. Bad files are Error(Io) / Error(Data) naming the file; the file format (names,
// versions, header check, routing record) is framework/runfile.h.

#include <cstdint>
#include <string>
#include <vector>

#include "framework/runfile.h"

namespace routemoe::trace {

// One MoE layer of a routing record and the record itself: the one definition of the format
// (framework/runfile.h). The reader fills experts and router only; the metrics use experts (the
// chosen experts of every probe token, best first, [P * k]) and the record's step and epoch.
using runfile::LayerRouting;
using Record = runfile::RoutingRecord;

// One point of a loss curve: a line of a run's metrics.jsonl.
struct LossPoint {
  std::int64_t step = 0;  // its "step" field
  double loss = 0;        // "loss" of a training line, "val_loss" of a validation line
};

// A sequence of routing records of one run.
struct Run {
  std::string label;
  std::vector<std::string> sources;  // files it was read from
  std::int64_t n_probe = 0;          // P
  std::int64_t top_k = 0;            // k
  std::int64_t n_experts = 0;        // E
  std::int64_t n_moe_layers = 0;
  std::vector<std::string> routers;   // per MoE layer (may be empty when unknown)
  std::vector<Record> records;        // in the order taken
  std::string run_dir;                // the run directory ("" when unknown)
  std::vector<LossPoint> train_loss;  // from <run_dir>/metrics.jsonl (empty without one)
  std::vector<LossPoint> val_loss;
};

// Checks that every record has n_moe_layers layers of [n_probe, top_k] expert ids in
// [0, n_experts); throws Error(Data) naming the record's origin otherwise.
void validate(const Run& run);

// ---- pure metrics on one layer's records (a, b: [P * k] expert ids) ----

// Share of tokens whose first (top-1) expert differs between a and b.
double top1_flip_rate(const std::vector<std::int32_t>& a, const std::vector<std::int32_t>& b,
                      std::int64_t top_k);
// Share of tokens whose set of k chosen experts differs (order within the top-k ignored).
double topk_change_rate(const std::vector<std::int32_t>& a, const std::vector<std::int32_t>& b,
                        std::int64_t top_k);
// Number of tokens whose first choice is e, for e in [0, n_experts).
std::vector<std::int64_t> expert_counts(const std::vector<std::int32_t>& experts,
                                        std::int64_t top_k, std::int64_t n_experts);
// Shannon entropy in nats of a histogram of counts (0 log 0 = 0; 0 for an empty histogram).
double entropy_nats(const std::vector<std::int64_t>& counts);
// Share of tokens whose first choice has the same expert index in both layers.
double top1_agreement(const std::vector<std::int32_t>& layer_a,
                      const std::vector<std::int32_t>& layer_b, std::int64_t top_k);

// ---- per-run results ----

struct PairFlip {
  std::int64_t layer = 0;
  std::size_t from_record = 0, to_record = 0;
  std::int64_t from_step = 0, to_step = 0, from_epoch = 0, to_epoch = 0;
  double top1_flip_rate = 0;
  double topk_change_rate = 0;
};

struct LastChangeBin {
  std::int64_t epoch = 0;
  std::int64_t tokens = 0;  // tokens whose last top-1 change was at this epoch (0: also never)
  double share = 0;         // tokens / P
};

struct LastChange {
  std::int64_t layer = 0;
  std::vector<LastChangeBin> bins;  // epoch 0 and the epoch of every record after the first
  std::int64_t never_changed = 0;   // tokens that never changed (counted in the epoch-0 bin)
  double mean_epoch = 0;            // mean last-change epoch over tokens (never = 0)
  double mean_step = 0;             // the same with the step of that record (never = 0)
};

struct Load {
  std::int64_t layer = 0;
  std::int64_t step = 0, epoch = 0;  // of the record it describes (the last one)
  std::vector<std::int64_t> counts;  // first-choice tokens per expert
  std::vector<double> shares;        // counts / P
  double entropy = 0;                // nats
  double entropy_norm = 0;           // entropy / log(E); 1 when E == 1
};

// Expert load entropy of one layer at one record (first choices).
struct EntropyPoint {
  std::int64_t layer = 0;
  std::size_t record = 0;
  std::int64_t step = 0, epoch = 0;
  double entropy = 0;       // nats
  double entropy_norm = 0;  // entropy / log(E)
};

struct Agreement {
  std::int64_t layer_a = 0, layer_b = 0;  // consecutive MoE layers m, m + 1
  double last = 0;                        // at the last record
  double mean = 0;                        // mean over all records
};

struct RunMetrics {
  const Run* run = nullptr;                // the analysed run (not owned)
  std::vector<PairFlip> flips;             // ordered by pair, then layer
  std::vector<LastChange> last_change;     // per layer; empty with fewer than 2 records
  std::vector<Load> load;                  // per layer; empty without records
  std::vector<EntropyPoint> load_entropy;  // every record, then layer
  std::vector<Agreement> agreement;        // per consecutive layer pair; empty without records
  std::vector<std::string> notes;          // why metrics were omitted
};

// All metrics of a validated run.
RunMetrics analyse(const Run& run);

// StableMoE-style last-change epochs of one layer (needs >= 2 records).
LastChange last_change_epochs(const Run& run, std::int64_t layer);
// Expert load of one layer at one record.
Load expert_load(const Run& run, std::size_t record, std::int64_t layer);

// ---- files ----

// Reads a trace file (format `routemoe-trace`) as one run. Errors name the file.
Run read_trace(const std::string& path);
// The training ("loss") and validation ("val_loss") lines of a metrics.jsonl file, in file order;
// lines without a step or a loss (a truncated last line) are skipped. Error(Io) when the file
// cannot be read.
void read_metrics(const std::string& path, std::vector<LossPoint>& train,
                  std::vector<LossPoint>& val);
// Reads the /routing records of checkpoint files (format `routemoe-checkpoint`) of one run,
// ordered by step.
Run read_checkpoints(const std::vector<std::string>& paths);

// Resolves command-line inputs into runs: a trace file, a run directory (its trace.h5, or its
// checkpoints/ckpt_*.h5 when it has no trace) or checkpoint files (grouped into one run per
// directory). `labels`, when not empty, names the runs in order (one per run); otherwise the
// run directory's name is used. Every run is validated. A run directory's metrics.jsonl (next to
// its trace.h5 or above its checkpoints/), when there is one, gives the loss curves.
std::vector<Run> load_runs(const std::vector<std::string>& inputs,
                           const std::vector<std::string>& labels);

// ---- reports ----

// The human-readable report (aligned tables) for stdout.
std::string format_table(const std::vector<RunMetrics>& metrics);
// All metrics as one JSON document.
std::string to_json(const std::vector<RunMetrics>& metrics);
// CSV texts: flips.csv, load.csv, last_change.csv, agreement.csv, load_entropy.csv.
std::string flips_csv(const std::vector<RunMetrics>& metrics);
std::string load_csv(const std::vector<RunMetrics>& metrics);
std::string last_change_csv(const std::vector<RunMetrics>& metrics);
std::string agreement_csv(const std::vector<RunMetrics>& metrics);
std::string load_entropy_csv(const std::vector<RunMetrics>& metrics);

// Writes `text` to `path` atomically (temporary file, then rename); Error(Io) on failure.
void write_text_file(const std::string& path, const std::string& text);
// Writes the five CSV files into `dir` (created when missing); returns the paths written.
std::vector<std::string> write_csv_dir(const std::string& dir,
                                       const std::vector<RunMetrics>& metrics);

}  // namespace routemoe::trace
