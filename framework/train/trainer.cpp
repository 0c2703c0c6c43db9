#include "framework/train/trainer.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "comm/mpi_runtime.h"
#include "framework/arena.h"
#include "framework/ops.h"
#include "framework/data.h"
#include "framework/error.h"
#include "framework/optim.h"
#include "framework/timer.h"
#include "framework/train/checkpoint.h"
#include "layers/model.h"

namespace routemoe {

namespace {

namespace fs = std::filesystem;

std::string json_loads(const std::vector<MoeLayerStats>& moe) {
  std::string s = "[";
  for (std::size_t m = 0; m < moe.size(); ++m)
    s += fmt::format("{}[{}]", m ? ", " : "", fmt::join(moe[m].load, ", "));
  return s + "]";
}

// Mean validation cross-entropy over `max_batches` sequential batches (0: all); each rank takes
// its rows of every batch.
double evaluate(Model& model, const BatchLoader& val, std::int64_t max_batches,
                comm::Communicator& world) {
  const std::int64_t rows = val.options().batch_size / world.size();
  const std::vector<Batch> batches = val.eval_batches(max_batches, world.rank() * rows, rows);
  double acc[2] = {0.0, 0.0};  // sum of token losses, tokens
  for (const Batch& b : batches) {
    const StepStats s = model.forward(b.inputs.data(), b.targets.data(), b.rows, b.seq_len);
    acc[0] += s.ce_loss * static_cast<double>(s.tokens);
    acc[1] += static_cast<double>(s.tokens);
  }
  world.all_reduce(acc, 2, comm::DataType::F64, comm::ReduceOp::Sum);
  return acc[1] > 0 ? acc[0] / acc[1] : 0.0;
}

// Threads per rank when train.threads = 0: the cores of the node shared by its ranks.
int default_threads(int ranks_on_node) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / std::max(1, ranks_on_node));
}

class ProgressBar {
 public:
  ProgressBar(bool enabled, std::int64_t total)
      : enabled_(enabled && isatty(STDOUT_FILENO) == 1), total_(total) {}
  void update(std::int64_t done, const std::string& text) {
    if (!enabled_) return;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(kWidth * done / std::max<std::int64_t>(1, total_));
    std::printf("\r[%s%s] %3d%% %s\033[K",
                std::string(static_cast<std::size_t>(filled), '#').c_str(),
                std::string(static_cast<std::size_t>(kWidth - filled), '.').c_str(),
                static_cast<int>(100 * done / std::max<std::int64_t>(1, total_)), text.c_str());
    std::fflush(stdout);
  }
  // Clears the bar so that a normal line can be printed.
  void clear() {
    if (enabled_) std::printf("\r\033[K");
  }

 private:
  bool enabled_;
  std::int64_t total_;
};

}  // namespace

double reduce_gradients(ParamStore& params, comm::ProcessGroups& groups) {
  const bool dp = groups.world->size() > 1;
  double sq[2] = {0.0, 0.0};  // dense (replicated), expert (sharded over the ep group)
  for (Param& p : params.params()) {
    float* g = p.grad.data<float>();
    const std::int64_t n = p.grad.numel();
    if (p.expert) {
      if (groups.edp->size() > 1)
        groups.edp->all_reduce(g, n, comm::DataType::F32, comm::ReduceOp::Sum);
      sq[1] += ops::sum_squares<float>(params.exec(), g, n);
    } else {
      if (dp) groups.world->all_reduce(g, n, comm::DataType::F32, comm::ReduceOp::Sum);
      sq[0] += ops::sum_squares<float>(params.exec(), g, n);
    }
  }
  // Dense parameters are identical on every rank after the all-reduce: count them once. Each
  // expert lives on exactly one rank of the ep group: sum the shards over that group.
  if (groups.ep->size() > 1)
    groups.ep->all_reduce(&sq[1], 1, comm::DataType::F64, comm::ReduceOp::Sum);
  return std::sqrt(sq[0] + sq[1]);
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

TrainSummary run_training(const RunConfig& cfg, comm::ProcessGroups& groups,
                          const AfterTraining& after) {
  cfg.validate();
  comm::Communicator& world = *groups.world;
  const int W = world.size();
  const bool lead = world.rank() == 0;
  const TrainConfig& tc = cfg.train;
  const ModelConfig& mc = cfg.model;
  RM_CHECK_KIND(Config, groups.ep_size == cfg.parallel.ep_size,
                fmt::format("process groups built for ep_size {}, config has {}", groups.ep_size,
                            cfg.parallel.ep_size));
  RM_CHECK_KIND(
      Config, tc.batch_size % (static_cast<std::int64_t>(W) * tc.grad_accum) == 0,
      fmt::format("train.batch_size {} must be divisible by ranks ({}) x train.grad_accum ({})",
                  tc.batch_size, W, tc.grad_accum));
  ops::set_num_threads(tc.threads > 0 ? tc.threads : default_threads(comm::ranks_on_node()));

  // Run directory (rank 0): never reuse one that holds an earlier run, unless resuming it.
  const fs::path out(tc.out_dir);
  const bool resuming = !tc.resume.empty();
  const std::string ckpt_dir =
      cfg.checkpoint.dir.empty() ? (out / "checkpoints").string() : cfg.checkpoint.dir;
  std::ofstream metrics;
  if (lead) {
    RM_CHECK_KIND(
        Config, resuming || !fs::exists(out / "metrics.jsonl"),
        fmt::format(
            "train.out_dir {} already holds a run (metrics.jsonl); choose another directory "
            "or resume it with --resume auto",
            tc.out_dir));
    fs::create_directories(out);
    std::ofstream f(out / "config.toml");
    f << cfg.to_toml();
    RM_CHECK_KIND(Io, f.good(), fmt::format("cannot write {}", (out / "config.toml").string()));
  }
  world.barrier();

  // Data.
  const int vocab = static_cast<int>(mc.vocab_size);
  TokenDataset train_data(cfg.data.path, cfg.data.train_split, vocab, cfg.data.headerless);
  TokenDataset val_data(cfg.data.path, cfg.data.val_split, vocab, cfg.data.headerless);
  BatchLoaderOptions lo;
  lo.batch_size = tc.batch_size;
  lo.seq_len = mc.seq_len;
  lo.seed = tc.seed;
  BatchLoader train_loader(train_data, lo);
  BatchLoader val_loader(val_data, lo);

  TrainSummary summary;
  summary.out_dir = tc.out_dir;
  summary.unigram_entropy = unigram_entropy(train_data.tokens(), mc.vocab_size);

  Model model(mc, groups.ep.get());
  AdamW optimizer(model.params(), cfg.optim);
  std::int64_t start_step = 0;
  if (resuming) {
    std::string path = tc.resume;
    if (path == "auto") {
      const std::vector<std::string> found = list_checkpoints(ckpt_dir);
      RM_CHECK_KIND(Config, !found.empty(),
                    fmt::format("--resume auto: no checkpoint in {}", ckpt_dir));
      path = found.back();
    }
    const CheckpointState st = load_checkpoint(path, model, optimizer);
    RM_CHECK_KIND(
        Config, st.data_seed == tc.seed,
        fmt::format(
            "{} was trained with train.seed {}, this run has {}: the data order would change", path,
            st.data_seed, tc.seed));
    RM_CHECK_KIND(Config, st.step < tc.steps,
                  fmt::format("{} is at step {}; train.steps is {}: nothing left to train", path,
                              st.step, tc.steps));
    start_step = st.step;
    if (lead) {
      // What the interrupted run logged after its checkpoint is redone now: drop it.
      truncate_run_after((out / "metrics.jsonl").string(), (out / "trace.h5").string(), st.step);
      fmt::print("resumed from {} at step {}\n", path, st.step);
    }
  }
  if (lead) {
    metrics.open(out / "metrics.jsonl", resuming ? std::ios::app : std::ios::trunc);
    RM_CHECK_KIND(Io, metrics.good(),
                  fmt::format("cannot write {}", (out / "metrics.jsonl").string()));
  }
  // The probe set: the first checkpoint.probe_tokens tokens of the validation split, as whole
  // sequences, a multiple of the rank count.
  std::vector<std::int32_t> probe;
  {
    const std::int64_t unit = mc.seq_len * W;
    const std::int64_t n = std::min(cfg.checkpoint.probe_tokens, val_data.size()) / unit * unit;
    RM_CHECK_KIND(Config, n > 0,
                  fmt::format("the validation split ({} tokens) is too small for one probe "
                              "sequence per rank ({} tokens)",
                              val_data.size(), unit));
    probe.assign(val_data.tokens().begin(), val_data.tokens().begin() + n);
  }
  if (lead) {
    fmt::print("routemoe train: {} parameters, {} layers ({} MoE, routers {}), {} experts top-{}\n",
               model.params().numel(), mc.n_layers, mc.n_moe_layers(),
               fmt::join(mc.expanded_routers(), ","), mc.n_experts, mc.top_k);
    fmt::print("data: {} train tokens, {} val tokens from {}; unigram entropy {:.3f} nats\n",
               train_data.size(), val_data.size(), cfg.data.path, summary.unigram_entropy);
    fmt::print("parallel: {} rank(s), expert-parallel size {}, data-parallel groups {}\n", W,
               groups.ep_size, W / groups.ep_size);
    fmt::print("run directory: {}\n", tc.out_dir);
    std::fflush(stdout);
  }

  // Each rank takes rows [rank * B/W, (rank+1) * B/W) of every global batch, in grad_accum
  // micro-batches; every micro-batch's loss carries weight 1 / (W * grad_accum).
  const std::int64_t rank_rows = tc.batch_size / W;
  const std::int64_t micro = rank_rows / tc.grad_accum;
  const double micro_scale = 1.0 / static_cast<double>(W * tc.grad_accum);
  const std::int64_t tokens_per_step = tc.batch_size * mc.seq_len;
  // Under mpirun, stdout of a rank is a pseudo-terminal even when the job writes to a log: the
  // console lines every log_every steps are the progress there.
  ProgressBar bar(tc.progress && lead && !comm::launched_by_mpi(), tc.steps);
  Timer run_timer, interval_timer;
  double interval_loss = 0;
  std::int64_t interval_steps = 0;
  bool have_val = false;
  for (std::int64_t step = start_step; step < tc.steps; ++step) {
    model.params().zero_grads();
    StepStats agg;
    for (std::int64_t a = 0; a < tc.grad_accum; ++a) {
      const Batch b = train_loader.batch_at(step, world.rank() * rank_rows + a * micro, micro);
      const StepStats s =
          model.forward_backward(b.inputs.data(), b.targets.data(), b.rows, b.seq_len, micro_scale);
      agg.loss += s.loss * micro_scale;
      agg.ce_loss += s.ce_loss * micro_scale;
      agg.aux_loss += s.aux_loss * micro_scale;
      if (a == 0) {
        agg.moe = s.moe;
      } else {
        for (std::size_t m = 0; m < s.moe.size(); ++m) {
          for (std::size_t e = 0; e < s.moe[m].load.size(); ++e)
            agg.moe[m].load[e] += s.moe[m].load[e];
        }
      }
    }
    // Losses and loads over all ranks.
    {
      double l[3] = {agg.loss, agg.ce_loss, agg.aux_loss};
      world.all_reduce(l, 3, comm::DataType::F64, comm::ReduceOp::Sum);
      agg.loss = l[0];
      agg.ce_loss = l[1];
      agg.aux_loss = l[2];
      for (MoeLayerStats& m : agg.moe) {
        world.all_reduce(m.load.data(), static_cast<std::int64_t>(m.load.size()),
                         comm::DataType::I64, comm::ReduceOp::Sum);
      }
    }
    RM_CHECK_KIND(Data, std::isfinite(agg.loss),
                  fmt::format("training loss became {} at step {}", agg.loss, step));
    const double grad_norm = reduce_gradients(model.params(), groups);
    clip_grads(model.params(), cfg.optim.grad_clip, grad_norm);
    const double lr = lr_at(cfg.optim, step, tc.steps);
    optimizer.step(lr);
    if (step == start_step) summary.first_loss = agg.loss;
    summary.losses.push_back(agg.loss);
    interval_loss += agg.loss;
    ++interval_steps;
    const double elapsed = run_timer.seconds();
    const double tok_s = static_cast<double>((step + 1 - start_step) * tokens_per_step) / elapsed;
    if (lead)
      metrics << fmt::format(
          "{{\"step\": {}, \"epoch\": {}, \"loss\": {:.6f}, \"ce_loss\": {:.6f}, \"aux_loss\": "
          "{:.6f}, "
          "\"lr\": {:.6e}, \"grad_norm\": {:.6f}, \"tokens_per_s\": {:.1f}, \"expert_load\": "
          "{}}}\n",
          step, train_loader.epoch_of_step(step), agg.loss, agg.ce_loss, agg.aux_loss, lr,
          grad_norm, tok_s, json_loads(agg.moe));
    summary.expert_load.clear();
    for (const MoeLayerStats& m : agg.moe) summary.expert_load.push_back(m.load);

    const bool last = step + 1 == tc.steps;
    // Routing records and checkpoints.
    const bool ckpt = cfg.checkpoint.every > 0 && ((step + 1) % cfg.checkpoint.every == 0);
    const bool epoch_end = train_loader.is_epoch_end(step);
    const bool interval =
        cfg.checkpoint.record_every > 0 && (step + 1) % cfg.checkpoint.record_every == 0;
    if (ckpt || epoch_end || interval || last) {
      RoutingRecord rec = route_probe(model, probe, mc.seq_len, world);
      rec.step = step + 1;
      rec.epoch = train_loader.epoch_of_step(step);
      rec.reason = ckpt ? "checkpoint" : epoch_end ? "epoch_end" : last ? "final" : "interval";
      if (lead && cfg.checkpoint.trace) append_trace((out / "trace.h5").string(), cfg, probe, rec);
      if (ckpt) {
        const std::string path = fmt::format("{}/ckpt_{:08d}.h5", ckpt_dir, step + 1);
        save_checkpoint(path, cfg, model, optimizer, CheckpointState{step + 1, rec.epoch, tc.seed},
                        rec, groups);
        if (lead) prune_checkpoints(ckpt_dir, cfg.checkpoint.keep_last);
        world.barrier();
      }
    }
    const bool do_eval = last || (tc.eval_every > 0 && (step + 1) % tc.eval_every == 0);
    std::string val_text;
    if (do_eval) {
      summary.final_val_loss = evaluate(model, val_loader, tc.eval_batches, world);
      summary.best_val_loss = have_val ? std::min(summary.best_val_loss, summary.final_val_loss)
                                       : summary.final_val_loss;
      have_val = true;
      if (lead)
        metrics << fmt::format("{{\"step\": {}, \"val_loss\": {:.6f}}}\n", step,
                               summary.final_val_loss);
      val_text = fmt::format(" | val {:.4f}", summary.final_val_loss);
    }
    if (lead) metrics.flush();
    if ((step + 1) % tc.log_every == 0 || last || do_eval) {
      const double mean = interval_loss / static_cast<double>(interval_steps);
      const double itok =
          static_cast<double>(interval_steps * tokens_per_step) / interval_timer.seconds();
      bar.clear();
      if (lead)
        fmt::print(
            "step {:>6}/{} | loss {:.4f} | aux {:.4f} | lr {:.2e} | gnorm {:.3f} | {:.0f} "
            "tok/s{}\n",
            step + 1, tc.steps, mean, agg.aux_loss, lr, grad_norm, itok, val_text);
      std::fflush(stdout);
      summary.final_loss = mean;
      interval_loss = 0;
      interval_steps = 0;
      interval_timer.restart();
    }
    bar.update(step + 1, fmt::format("step {}/{} loss {:.4f}", step + 1, tc.steps, agg.loss));
  }
  bar.clear();
  summary.steps = tc.steps - start_step;
  {
    std::vector<ArenaStats> mem = model.memory_report();
    ArenaStats adam;
    adam.name = "adamw m+v";
    adam.capacity = adam.used = adam.peak = optimizer.m().nbytes() + optimizer.v().nbytes();
    adam.blocks = 2;
    mem.insert(mem.begin() + 2, adam);
    summary.memory = format_arena_report(mem);
  }
  summary.seconds = run_timer.seconds();
  summary.tokens_per_s = static_cast<double>(summary.steps * tokens_per_step) / summary.seconds;
  if (after) after(model);
  return summary;
}

}  // namespace routemoe
