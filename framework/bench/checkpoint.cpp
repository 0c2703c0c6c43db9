// `routemoe bench checkpoint`: time and size of save_checkpoint and load_checkpoint
// (framework/train/checkpoint.h) for the reference config (docs/performance.md, "Checkpoints").
//
// Builds the model (experts split over --ep ranks, default all ranks) and AdamW with non-zero
// moments (one update from synthetic gradients), routes a probe set for the routing record,
// then runs --warmup untimed and --iters timed rounds of: save (all ranks, collective: with
// parallel HDF5 every rank writes its expert slices, otherwise rank 0 writes gathered tensors),
// load (every rank reads its slice). With parallel HDF5 and several ranks, each round also times
// the write path of a build without it (expert shards gathered over the ep group, rank 0
// writes), printed with ratio=parallel/gathered. Each operation starts after a barrier; each
// rank takes the median of its rounds and the figure is the maximum over the ranks. Loads read
// a file that was just written, so it is normally in the page cache: the load figure is HDF5 +
// checksum + copy speed, not disk speed.
//
//   routemoe bench checkpoint                       # 1 rank
//   mpirun -np 2 routemoe bench checkpoint          # 2 ranks, ep 2

#include "framework/train/checkpoint.h"

#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "framework/bench/benchmarks.h"
#include "framework/config.h"
#include "framework/error.h"
#include "framework/optim.h"
#include "framework/rng.h"
#include "framework/timer.h"
#include "layers/model.h"

namespace routemoe::bench {

namespace {

namespace fs = std::filesystem;

struct CheckpointOptions {
  ModelShape shape;  // reference config
  std::string router = "topk";
  int ep = 0;  // 0: all ranks
  std::int64_t probe_sequences = 8;
  std::string dir;  // "": <tmp>/routemoe-bench-checkpoint
  bool keep = false;
};

void run(const CheckpointOptions& o, Context& ctx) {
  const int W = ctx.size();
  const int ep = o.ep > 0 ? o.ep : W;
  const ModelShape& m = o.shape;
  RunConfig cfg;
  cfg.model = model_config(m, o.router, cfg.model.seed);
  cfg.parallel.ep_size = ep;
  RM_CHECK_KIND(Config, m.n_experts % ep == 0,
                fmt::format("--ep {} does not divide --experts {}", ep, m.n_experts));
  RM_CHECK_KIND(
      Config, o.probe_sequences % W == 0,
      fmt::format("--probe-sequences {} is not a multiple of the {} ranks", o.probe_sequences, W));
  comm::ProcessGroups& groups = ctx.groups(ep);
  comm::Communicator& world = *groups.world;
  const bool lead = ctx.lead();
  const Schedule schedule = ctx.schedule();

  Model model(cfg.model, groups.ep.get());
  AdamW opt(model.params(), cfg.optim);
  // Non-zero moments: one update from synthetic gradients.
  for (Param& p : model.params().params()) {
    const float* v = p.value.data<float>();
    float* g = p.grad.data<float>();
    for (std::int64_t i = 0; i < p.grad.numel(); ++i) g[i] = 0.01f * v[i] + 1e-4f;
  }
  opt.step(1e-4);
  // The routing record of a random probe set.
  std::vector<std::int32_t> probe(static_cast<std::size_t>(o.probe_sequences * m.seq_len));
  Philox rng(7, 0);
  for (std::int32_t& t : probe)
    t = static_cast<std::int32_t>(rng.next_below(static_cast<std::uint64_t>(m.vocab)));
  RoutingRecord rec = route_probe(model, probe, m.seq_len, world);
  rec.step = 1;
  rec.reason = "checkpoint";

  const fs::path dir =
      o.dir.empty() ? fs::temp_directory_path() / "routemoe-bench-checkpoint" : fs::path(o.dir);
  const std::string path = (dir / "ckpt_00000001.h5").string();
  std::int64_t global_params = 0;
  for (const Param& p : model.params().params()) global_params += shape_numel(p.global_shape);
  const bool compare_gathered = W > 1 && ROUTEMOE_HAVE_PARALLEL_HDF5;
  if (lead) {
    fmt::print(
        "routemoe bench checkpoint: {} rank(s), ep {}, parallel HDF5 writes {}; model d {} T {} "
        "{} heads {} layers (moe_every {}, {}) {} experts top-{} d_ff {}: {} parameters ({:.1f} "
        "MiB of params + AdamW m, v); {} threads/rank; {} warm-up + {} timed rounds, max over "
        "ranks of the median; file {}\n",
        W, ep, compare_gathered ? "on" : "off (rank 0 writes)", m.d_model, m.seq_len, m.n_heads,
        m.n_layers, m.moe_every, o.router, m.n_experts, m.top_k, m.d_ff, global_params,
        3.0 * 4.0 * static_cast<double>(global_params) / (1 << 20), ctx.threads(), schedule.warmup,
        schedule.iters, path);
    std::fflush(stdout);
  }

  // Each round: (with parallel HDF5 writes) the gathered save that a build without parallel
  // HDF5 would do, then the save and the load, each after a barrier.
  std::vector<double> save_s, load_s, gathered_s;
  run_iterations(schedule, [&](int, bool timed) {
    if (compare_gathered) {
      world.barrier();
      Timer tg;
      save_checkpoint(path, cfg, model, opt, CheckpointState{1, 1, 1, ""}, rec, groups,
                      CheckpointWrite::Gathered);
      if (timed) gathered_s.push_back(tg.seconds());
    }
    world.barrier();
    Timer t;
    save_checkpoint(path, cfg, model, opt, CheckpointState{1, 0, cfg.train.seed, ""}, rec, groups);
    const double s = t.seconds();
    world.barrier();
    t.restart();
    (void)load_checkpoint(path, model, opt);
    const double l = t.seconds();
    if (timed) {
      save_s.push_back(s);
      load_s.push_back(l);
    }
  });
  Stats figs[3] = {summarize(save_s), summarize(load_s),
                   compare_gathered ? summarize(gathered_s) : Stats{}};
  max_over_ranks(world, figs);
  const Stats& save = figs[0];
  const Stats& load = figs[1];
  const Stats& gathered = figs[2];
  if (!lead) return;

  const double bytes = static_cast<double>(fs::file_size(path));
  const double mib = bytes / (1 << 20);
  const std::string name =
      fmt::format("d{}_l{}_e{}_ff{}", m.d_model, m.n_layers, m.n_experts, m.d_ff);
  print_case(CaseLine("checkpoint", "case", name)
                 .field("ranks", std::to_string(W))
                 .field("ep", std::to_string(ep))
                 .figure("size", mib, 2, "MiB")
                 .figure("save", save.median * 1e3, 1, "ms")
                 .text(fmt::format("({:.0f} MB/s)", bytes / save.median * 1e-6))
                 .figure("load", load.median * 1e3, 1, "ms")
                 .text(fmt::format("({:.0f} MB/s)", bytes / load.median * 1e-6)));
  if (compare_gathered) {
    print_case(CaseLine("checkpoint", "case", name + "_gathered")
                   .field("ranks", std::to_string(W))
                   .field("ep", std::to_string(ep))
                   .figure("parallel_save", save.median * 1e3, 1, "ms")
                   .figure("gathered_save", gathered.median * 1e3, 1, "ms")
                   .text(fmt::format("({:.0f} MB/s)", bytes / gathered.median * 1e-6))
                   .ratio(save.median / gathered.median, 2, "parallel/gathered time"));
  }
  fmt::print("  save: min {:.1f} ms, max {:.1f} ms; load: min {:.1f} ms, max {:.1f} ms\n",
             save.min * 1e3, save.max * 1e3, load.min * 1e3, load.max * 1e3);
  std::fflush(stdout);

  ctx.json().header().integer("ranks", W).integer("ep", ep).integer("threads", ctx.threads());
  JsonObject& c = ctx.json()
                      .add_case()
                      .str("name", name)
                      .integer("d_model", m.d_model)
                      .integer("n_layers", m.n_layers)
                      .integer("n_experts", m.n_experts)
                      .integer("d_ff", m.d_ff)
                      .str("router", o.router)
                      .integer("parameters", global_params)
                      .num("bytes", bytes)
                      .stats_s("save", save)
                      .stats_s("load", load);
  if (compare_gathered)
    c.stats_s("gathered_save", gathered).num("ratio", save.median / gathered.median);
  if (!o.keep) {
    std::error_code ec;
    fs::remove(path, ec);
  }
}

}  // namespace

Benchmark checkpoint_benchmark() {
  Benchmark b;
  b.name = "checkpoint";
  b.description =
      "save/load time and size of a checkpoint of the reference config (mpirun for >1 rank)";
  b.ranks = Ranks::Any;
  b.defaults.warmup = 1;
  b.defaults.iters = 5;
  b.iters_help = "timed save+load rounds (median reported)";
  b.iters_alias = "--repeats";
  b.setup = [](CLI::App& cmd) {
    auto o = std::make_shared<CheckpointOptions>();
    add_model_options(cmd, o->shape);
    cmd.add_option("--router", o->router, "router of every MoE layer")
        ->check(CLI::IsMember({"topk", "similarity", "attention", "ac"}))
        ->capture_default_str();
    cmd.add_option("--ep", o->ep, "expert-parallel size (0: all ranks)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    cmd.add_option("--probe-sequences", o->probe_sequences,
                   "sequences in the routing record's probe set (multiple of the ranks)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    cmd.add_option("--dir", o->dir,
                   "directory for the checkpoint file, shared by all ranks (default: "
                   "<tmp>/routemoe-bench-checkpoint)");
    cmd.add_flag("--keep", o->keep, "keep the checkpoint file");
    return [o](Context& ctx) { run(*o, ctx); };
  };
  return b;
}

}  // namespace routemoe::bench
