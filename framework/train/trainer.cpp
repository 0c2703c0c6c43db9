#include "framework/train/trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <thread>

#include "comm/agree.h"
#include "comm/mpi_runtime.h"
#include "comm/watchdog.h"
#include "framework/arena.h"
#include "framework/data.h"
#include "framework/error.h"
#include "framework/ops.h"
#include "framework/optim.h"
#include "framework/timer.h"
#include "framework/train/checkpoint.h"
#include "framework/train/evaluate.h"
#include "framework/train/metrics.h"
#include "framework/train/preempt.h"
#include "framework/train/run_dir.h"
#include "layers/model.h"

namespace routemoe {

namespace {

// The training and validation splits with their loaders.
struct TrainData {
  TokenDataset train;
  TokenDataset val;
  BatchLoader train_loader;
  BatchLoader val_loader;

  TrainData(const RunConfig& cfg, const BatchLoaderOptions& lo)
      : train(cfg.data.path, cfg.data.train_split, static_cast<int>(cfg.model.vocab_size),
              cfg.data.headerless),
        val(cfg.data.path, cfg.data.val_split, static_cast<int>(cfg.model.vocab_size),
            cfg.data.headerless),
        train_loader(train, lo),
        val_loader(val, lo) {}
};

std::unique_ptr<TrainData> load_data(const RunConfig& cfg) {
  BatchLoaderOptions lo;
  lo.batch_size = cfg.train.batch_size;
  lo.seq_len = cfg.model.seq_len;
  lo.seed = cfg.train.seed;
  return std::make_unique<TrainData>(cfg, lo);
}

// Threads per rank when train.threads = 0: the cores of the node shared by its ranks.
int default_threads(int ranks_on_node) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / std::max(1, ranks_on_node));
}

void check_layout(const RunConfig& cfg, const comm::ProcessGroups& groups) {
  const std::int64_t W = groups.world->size();
  RM_CHECK_KIND(Config, groups.ep_size == cfg.parallel.ep_size,
                fmt::format("process groups built for ep_size {}, config has {}", groups.ep_size,
                            cfg.parallel.ep_size));
  RM_CHECK_KIND(Config, cfg.train.batch_size % (W * cfg.train.grad_accum) == 0,
                fmt::format("train.batch_size {} must be divisible by ranks ({}) x "
                            "train.grad_accum ({})",
                            cfg.train.batch_size, W, cfg.train.grad_accum));
}

// The probe set: the first checkpoint.probe_tokens tokens of the validation split, as whole
// sequences, a multiple of the rank count.
std::vector<std::int32_t> make_probe_set(const RunConfig& cfg, const TokenDataset& val, int ranks) {
  const std::int64_t unit = cfg.model.seq_len * ranks;
  const std::int64_t n = std::min(cfg.checkpoint.probe_tokens, val.size()) / unit * unit;
  RM_CHECK_KIND(Config, n > 0,
                fmt::format("the validation split ({} tokens) is too small for one probe "
                            "sequence per rank ({} tokens)",
                            val.size(), unit));
  return {val.tokens().begin(), val.tokens().begin() + n};
}

// The loop's state between steps.
struct Loop {
  const RunConfig& cfg;
  comm::ProcessGroups& groups;
  const RunPaths& paths;
  Model& model;
  AdamW& optimizer;
  TrainData& data;
  const std::vector<std::int32_t>& probe;
  MetricsLog& metrics;
  TrainObserver* observer;
  std::string run_id;
  std::int64_t start_step = 0;
  TrainSummary summary;
  Timer run_timer, interval_timer;
  double interval_loss = 0.0;
  std::int64_t interval_steps = 0;
  std::int64_t consecutive_skips = 0;
  bool have_val = false;

  bool lead() const { return groups.world->rank() == 0; }
  double tokens_per_step() const {
    return static_cast<double>(cfg.train.batch_size * cfg.model.seq_len);
  }
};

// The probe set's routing after `done` steps (collective), appended to the trace (rank 0).
RoutingRecord record_routing(Loop& L, std::int64_t done, std::int64_t epoch, const char* reason) {
  RoutingRecord rec = route_probe(L.model, L.probe, L.cfg.model.seq_len, *L.groups.world);
  rec.step = done;
  rec.epoch = epoch;
  rec.reason = reason;
  if (L.lead() && L.cfg.checkpoint.trace) {
    append_trace(L.paths.trace, L.cfg, L.probe, rec, L.run_id);
  }
  return rec;
}

// The probe set's routing at epoch ends, checkpoints, every record_every steps and the end; a
// checkpoint every checkpoint.every steps and after the last one (when checkpoint.every > 0),
// and when the run stops on a signal (`stopping`). Steps are counted as steps completed.
void record_and_checkpoint(Loop& L, const StepResult& r, bool stopping) {
  const CheckpointConfig& cc = L.cfg.checkpoint;
  const std::int64_t done = r.step + 1;
  const bool last = done == L.cfg.train.steps;
  const bool ckpt = stopping || (cc.every > 0 && (done % cc.every == 0 || last));
  const bool epoch_end = L.data.train_loader.is_epoch_end(r.step);
  const bool interval = cc.record_every > 0 && done % cc.record_every == 0;
  if (!(ckpt || epoch_end || interval || last)) return;
  comm::Communicator& world = *L.groups.world;
  const RoutingRecord rec = record_routing(L, done, L.data.train_loader.epoch_of_step(r.step),
                                           ckpt        ? "checkpoint"
                                           : epoch_end ? "epoch_end"
                                           : last      ? "final"
                                                       : "interval");
  if (!ckpt) return;
  const std::string path = fmt::format("{}/ckpt_{:08d}.h5", L.paths.checkpoints, done);
  save_checkpoint(path, L.cfg, L.model, L.optimizer,
                  CheckpointState{done, rec.epoch, L.cfg.train.seed, L.run_id}, rec, L.groups);
  L.summary.last_checkpoint = path;
  if (L.lead()) {
    prune_checkpoints(L.paths.checkpoints, cc.keep_last, L.run_id);
    L.metrics.sync();
  }
  world.barrier();
}

// Validation on the eval schedule (and at the end); returns the loss when it ran.
std::optional<double> maybe_evaluate(Loop& L, const StepResult& r) {
  const TrainConfig& tc = L.cfg.train;
  const std::int64_t done = r.step + 1;
  if (done != tc.steps && (tc.eval_every <= 0 || done % tc.eval_every != 0)) return std::nullopt;
  // Validation as `routemoe eval --capacity train --micro-batch B/ranks` computes it
  // (framework/train/evaluate.h): each rank's rows of a batch in one forward pass.
  EvalOptions eo;
  eo.max_batches = tc.eval_batches;
  eo.micro_batch = tc.batch_size / L.groups.world->size();
  eo.dropless = false;
  const double v = evaluate_split(L.model, L.data.val_loader, eo, *L.groups.world).loss;
  L.summary.best_val_loss = L.have_val ? std::min(L.summary.best_val_loss, v) : v;
  L.summary.final_val_loss = v;
  L.have_val = true;
  L.metrics.validation(done, v);
  return v;
}

// Metrics, records and checkpoints, evaluation, the summary's running figures, the observer.
void after_step(Loop& L, const StepResult& r, bool stopping) {
  const std::int64_t done = r.step + 1;
  L.metrics.step(
      r, L.data.train_loader.epoch_of_step(r.step),
      static_cast<double>(done - L.start_step) * L.tokens_per_step() / L.run_timer.seconds());
  if (r.step == L.start_step) L.summary.first_loss = r.loss;
  L.summary.losses.push_back(r.loss);
  L.summary.expert_load.clear();
  for (const MoeLayerStats& m : r.moe) L.summary.expert_load.push_back(m.load);
  L.interval_loss += r.loss;
  ++L.interval_steps;
  record_and_checkpoint(L, r, stopping);
  const std::optional<double> val = maybe_evaluate(L, r);
  StepReport report{r, L.cfg.train.steps, false, 0.0, 0.0, val};
  report.log_line =
      done % L.cfg.train.log_every == 0 || done == L.cfg.train.steps || val || stopping;
  if (report.log_line) {
    report.interval_loss = L.interval_loss / static_cast<double>(L.interval_steps);
    report.interval_tokens_per_s =
        static_cast<double>(L.interval_steps) * L.tokens_per_step() / L.interval_timer.seconds();
    L.summary.final_loss = report.interval_loss;
    L.interval_loss = 0;
    L.interval_steps = 0;
    L.interval_timer.restart();
  }
  if (L.lead() && L.observer != nullptr) L.observer->on_step(report);
}

std::string memory_report(const Model& model, AdamW& optimizer) {
  std::vector<ArenaStats> mem = model.memory_report();
  ArenaStats adam;
  adam.name = "adamw m+v";
  adam.capacity = adam.used = adam.peak = optimizer.m().nbytes() + optimizer.v().nbytes();
  adam.blocks = 2;
  mem.insert(mem.begin() + 2, adam);
  return format_arena_report(mem);
}

// train.nonfinite for a skipped step: count it, or stop (Error(Data) on every rank alike: the
// values come out of all-reduces).
void apply_nonfinite_policy(Loop& L, const StepResult& r) {
  if (!r.skipped) {
    L.consecutive_skips = 0;
    return;
  }
  ++L.summary.skipped_steps;
  ++L.consecutive_skips;
  const TrainConfig& tc = L.cfg.train;
  const std::string what = fmt::format("step {}: loss {}, gradient norm {}; not applied",
                                       r.step + 1, r.loss, r.grad_norm);
  // Every rank decides alike: an AgreedError, which the job reports once.
  if (tc.nonfinite == "stop") {
    throw AgreedError(ErrorKind::Data, "",
                      fmt::format("non-finite {} (train.nonfinite = stop); resume from the last "
                                  "checkpoint, e.g. with a lower optim.lr",
                                  what),
                      __FILE__, __LINE__);
  }
  if (L.consecutive_skips > tc.nonfinite_limit) {
    throw AgreedError(
        ErrorKind::Data, "",
        fmt::format("{} non-finite steps in a row, the last {} (train.nonfinite_limit = "
                    "{}); resume from the last checkpoint, e.g. with a lower optim.lr",
                    L.consecutive_skips, what, tc.nonfinite_limit),
        __FILE__, __LINE__);
  }
}

// The steps from start_step on, until train.steps or an agreed stop signal.
void run_loop(Loop& L, StepContext& ctx) {
  comm::Communicator& world = *L.groups.world;
  for (std::int64_t step = L.start_step; step < L.cfg.train.steps; ++step) {
    comm::watchdog_note_step(step);
    const StepResult r = train_step(ctx, step);
    apply_nonfinite_policy(L, r);
    const int signo = stop_agreed(world);  // every rank finishes this step, then all stop
    after_step(L, r, signo != 0);
    L.summary.steps = step + 1 - L.start_step;
    if (signo != 0) {
      L.summary.stop_signal = signo;
      break;
    }
  }
}

void finish(Loop& L, const AfterTraining& after) {
  TrainSummary& s = L.summary;
  s.memory = memory_report(L.model, L.optimizer);
  s.seconds = L.run_timer.seconds();
  s.tokens_per_s = static_cast<double>(s.steps) * L.tokens_per_step() / s.seconds;
  L.metrics.sync();
  if (after) after(L.model);
  if (L.lead() && L.observer != nullptr) L.observer->on_finish(s);
  if (s.stop_signal != 0) comm::request_exit_status(kExitPreempted);
}

}  // namespace

TrainSummary run_training(const RunConfig& cfg, comm::ProcessGroups& groups,
                          TrainObserver* observer, const AfterTraining& after) {
  cfg.validate();
  check_layout(cfg, groups);
  comm::Communicator& world = *groups.world;
  ops::set_num_threads(cfg.train.threads > 0 ? cfg.train.threads
                                             : default_threads(comm::ranks_on_node()));
  const RunPaths paths = run_paths(cfg);
  // The data first: bad data is reported once for the job, before the run directory exists.
  std::unique_ptr<TrainData> data;
  std::vector<std::int32_t> probe;
  comm::agree_on_input(world, [&] {
    data = load_data(cfg);
    probe = make_probe_set(cfg, data->val, world.size());
  });
  const RunDir run = open_run_dir(cfg, paths, world);
  const comm::WatchdogGuard watchdog(
      comm::WatchdogOptions{cfg.parallel.timeout_s, paths.heartbeat, world.rank(), world.size()});
  const StopSignals signals(cfg.train.stop_signals);
  Model model(cfg.model, groups.ep.get());
  AdamW optimizer(model.params(), cfg.optim);
  const ResumePoint resumed = resume_run(cfg, paths, run, probe, model, optimizer, world);
  commit_run_dir(cfg, paths, run, resumed, world);
  MetricsLog metrics(paths.metrics, world.rank() == 0, !resumed.checkpoint.empty(),
                     cfg.train.batch_size * cfg.model.seq_len * cfg.model.top_k);
  Loop L{cfg,     groups,   paths,      model,        optimizer,      *data,   probe,
         metrics, observer, run.run_id, resumed.step, TrainSummary{}, Timer{}, Timer{}};
  L.summary.out_dir = cfg.train.out_dir;
  L.summary.run_id = run.run_id;
  L.summary.unigram_entropy = unigram_entropy(data->train.tokens(), cfg.model.vocab_size);
  if (L.lead() && observer != nullptr) {
    const std::string exchange =
        groups.ep_size <= 1 ? "" : (groups.ep->shared_memory() ? "shared memory" : "messages");
    observer->on_start(cfg, RunInfo{cfg.model.param_count().total(), data->train.size(),
                                    data->val.size(), L.summary.unigram_entropy, world.size(),
                                    exchange, resumed.checkpoint, resumed.step});
  }
  // A fresh run's routing before the first update: record "initial" at step 0.
  if (resumed.checkpoint.empty() && cfg.checkpoint.trace) record_routing(L, 0, 0, "initial");
  StepContext step_ctx{cfg, groups, model, optimizer, data->train_loader};
  run_loop(L, step_ctx);
  finish(L, after);
  return L.summary;
}

DryRunReport dry_run(const RunConfig& cfg, comm::ProcessGroups& groups) {
  cfg.validate();
  check_layout(cfg, groups);
  comm::Communicator& world = *groups.world;
  ops::set_num_threads(cfg.train.threads > 0 ? cfg.train.threads
                                             : default_threads(comm::ranks_on_node()));
  const RunPaths paths = run_paths(cfg);
  std::unique_ptr<TrainData> data;
  comm::agree_on_input(world, [&] {
    namespace fs = std::filesystem;
    RM_CHECK_KIND(Config, !cfg.train.resume.empty() || !fs::exists(paths.metrics),
                  fmt::format("train.out_dir {} already holds a run (metrics.jsonl); choose "
                              "another directory or resume it with --resume auto",
                              paths.out_dir));
    data = load_data(cfg);
    make_probe_set(cfg, data->val, world.size());
  });
  Model model(cfg.model, groups.ep.get());
  AdamW optimizer(model.params(), cfg.optim);
  StepContext ctx{cfg, groups, model, optimizer, data->train_loader};
  DryRunReport rep;
  rep.threads = ops::num_threads();
  rep.train_tokens = data->train.size();
  rep.val_tokens = data->val.size();
  // One real step (forward, backward, gradient all-reduce, update) of the first batch, timed;
  // the first step also pays for first-touch allocation, so the figure is an upper bound.
  world.barrier();
  const Timer t;
  train_step(ctx, 0);
  world.barrier();
  rep.step_seconds = t.seconds();
  return rep;
}

double unigram_entropy(const std::vector<std::uint16_t>& tokens, std::int64_t vocab_size) {
  std::vector<double> count(static_cast<std::size_t>(vocab_size), 0.0);
  for (std::uint16_t t : tokens) count[t] += 1;
  double h = 0;
  const auto n = static_cast<double>(tokens.size());
  for (double c : count) {
    if (c > 0) h -= c / n * std::log(c / n);
  }
  return h;
}

}  // namespace routemoe
