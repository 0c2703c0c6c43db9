// `routemoe bench checkpoint`: time and size of save_checkpoint and load_checkpoint
// (framework/train/checkpoint.h) for the reference config (docs/performance.md, "Checkpoints").
//
// Builds the model (experts split over --ep ranks, default all ranks) and AdamW with non-zero
// moments (one update from synthetic gradients), routes a probe set for the routing record,
// then alternates, --repeats times: save (all ranks, collective: with parallel HDF5 every rank
// writes its expert slices, otherwise rank 0 writes gathered tensors), load (every rank reads its
// slice). With parallel HDF5 and several ranks, each round also times the write path of a build
// without it (expert shards gathered over the ep group, rank 0 writes), printed with
// ratio=parallel/gathered. Each figure is the median over repeats of the slowest rank (max over
// ranks of the barrier-to-finish time). Loads read a file that was just written, so it is normally
// in the page cache: the load figure is HDF5 + checksum + copy speed, not disk speed.
//
//   routemoe bench checkpoint                       # 1 rank
//   mpirun -np 2 routemoe bench checkpoint          # 2 ranks, ep 2

#include <fmt/format.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/cli/commands.h"
#include "framework/config.h"
#include "framework/cpu/kernels.h"
#include "framework/error.h"
#include "framework/h5.h"
#include "framework/optim.h"
#include "framework/rng.h"
#include "framework/timer.h"
#include "framework/train/checkpoint.h"
#include "layers/model.h"

namespace routemoe::cli {

namespace {

namespace fs = std::filesystem;

struct BenchCheckpointOptions {
  std::int64_t vocab = 256, seq_len = 256, d_model = 256, n_heads = 4, n_layers = 4;
  std::int64_t d_ff = 512, n_experts = 8, top_k = 2;
  std::string router = "topk";
  int ep = 0;  // 0: all ranks
  int repeats = 5;
  int threads = 0;
  std::int64_t probe_sequences = 8;
  std::string dir;  // "": <tmp>/routemoe-bench-checkpoint
  bool keep = false;
  std::string json;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

Runner register_bench_checkpoint(CLI::App& bench) {
  auto opts = std::make_shared<BenchCheckpointOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "checkpoint",
      "save/load time and size of a checkpoint of the reference config (mpirun for >1 rank)");
  cmd->add_option("--d", opts->d_model, "model width")->capture_default_str();
  cmd->add_option("--layers", opts->n_layers, "blocks (all MoE)")->capture_default_str();
  cmd->add_option("--heads", opts->n_heads, "attention heads")->capture_default_str();
  cmd->add_option("--experts", opts->n_experts, "experts per MoE layer")->capture_default_str();
  cmd->add_option("--top-k", opts->top_k, "experts per token")->capture_default_str();
  cmd->add_option("--d-ff", opts->d_ff, "expert hidden width")->capture_default_str();
  cmd->add_option("--seq-len", opts->seq_len, "context length")->capture_default_str();
  cmd->add_option("--vocab", opts->vocab, "vocabulary")->capture_default_str();
  cmd->add_option("--router", opts->router, "router of every MoE layer")
      ->check(CLI::IsMember({"topk", "similarity", "attention", "ac"}))
      ->capture_default_str();
  cmd->add_option("--ep", opts->ep, "expert-parallel size (0: all ranks)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--repeats", opts->repeats, "timed save+load pairs (median reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--probe-sequences", opts->probe_sequences,
                  "sequences in the routing record's probe set (multiple of the ranks)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--threads", opts->threads, "CPU threads per rank (0: cores / ranks on node)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--dir", opts->dir,
                  "directory for the checkpoint file, shared by all ranks (default: "
                  "<tmp>/routemoe-bench-checkpoint)");
  cmd->add_flag("--keep", opts->keep, "keep the checkpoint file");
  cmd->add_option("--json", opts->json, "also write the result as JSON to this file");
  return [opts]() {
    const BenchCheckpointOptions& o = *opts;
    std::unique_ptr<comm::Communicator> world_comm;
    if (comm::launched_by_mpi()) {
      comm::init_mpi(nullptr, nullptr);
      world_comm = comm::make_mpi_world();
    } else {
      world_comm = comm::make_self();
    }
    const int W = world_comm->size();
    const int ep = o.ep > 0 ? o.ep : W;
    comm::ProcessGroups groups = comm::ProcessGroups::create(std::move(world_comm), ep);
    comm::Communicator& world = *groups.world;
    const bool lead = world.rank() == 0;
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    cpu::set_num_threads(o.threads > 0 ? o.threads
                                       : std::max(1, cores / std::max(1, comm::ranks_on_node())));

    RunConfig cfg;
    ModelConfig& mc = cfg.model;
    mc.vocab_size = o.vocab;
    mc.seq_len = o.seq_len;
    mc.d_model = o.d_model;
    mc.n_heads = o.n_heads;
    mc.n_layers = o.n_layers;
    mc.d_ff = o.d_ff;
    mc.n_experts = o.n_experts;
    mc.top_k = o.top_k;
    mc.routers = {o.router};
    cfg.parallel.ep_size = ep;
    mc.validate();
    RM_CHECK_KIND(Config, o.n_experts % ep == 0,
                  fmt::format("--ep {} does not divide --experts {}", ep, o.n_experts));
    RM_CHECK_KIND(Config, o.probe_sequences % W == 0,
                  fmt::format("--probe-sequences {} is not a multiple of the {} ranks",
                              o.probe_sequences, W));

    Model model(mc, groups.ep.get());
    AdamW opt(model.params(), cfg.optim);
    // Non-zero moments: one update from synthetic gradients.
    for (Param& p : model.params().params()) {
      const float* v = p.value.data<float>();
      float* g = p.grad.data<float>();
      for (std::int64_t i = 0; i < p.grad.numel(); ++i) g[i] = 0.01f * v[i] + 1e-4f;
    }
    opt.step(1e-4);
    // The routing record of a random probe set.
    std::vector<std::int32_t> probe(static_cast<std::size_t>(o.probe_sequences * o.seq_len));
    Philox rng(7, 0);
    for (std::int32_t& t : probe)
      t = static_cast<std::int32_t>(rng.next_below(static_cast<std::uint64_t>(o.vocab)));
    RoutingRecord rec = route_probe(model, probe, o.seq_len, world);
    rec.step = 1;
    rec.reason = "checkpoint";

    const fs::path dir =
        o.dir.empty() ? fs::temp_directory_path() / "routemoe-bench-checkpoint" : fs::path(o.dir);
    const std::string path = (dir / "ckpt_00000001.h5").string();
    std::int64_t global_params = 0;
    for (const Param& p : model.params().params()) global_params += shape_numel(p.global_shape);
    if (lead) {
      fmt::print(
          "routemoe bench checkpoint: {} rank(s), ep {}, parallel HDF5 writes {}; model d {} T {} "
          "{} heads {} layers "
          "(all MoE, {}) {} experts top-{} d_ff {}: {} parameters ({:.1f} MiB of params + AdamW m, "
          "v); "
          "{} threads/rank; {} repeats, median of the slowest rank; file {}\n",
          W, ep, W > 1 && ROUTEMOE_HAVE_PARALLEL_HDF5 ? "on" : "off (rank 0 writes)", o.d_model,
          o.seq_len, o.n_heads, o.n_layers, o.router, o.n_experts, o.top_k, o.d_ff, global_params,
          3.0 * 4.0 * static_cast<double>(global_params) / (1 << 20), cpu::num_threads(), o.repeats,
          path);
      std::fflush(stdout);
    }

    // Warm-up round (untimed), then timed rounds: save, load and (with parallel HDF5 writes)
    // the gathered save that a build without parallel HDF5 would do.
    const bool compare_gathered = W > 1 && ROUTEMOE_HAVE_PARALLEL_HDF5;
    std::vector<double> save_s, load_s, gathered_s;
    for (int r = -1; r < o.repeats; ++r) {
      if (compare_gathered) {
        world.barrier();
        Timer tg;
        save_checkpoint(path, cfg, model, opt, CheckpointState{1, 1, 1}, rec, groups,
                        CheckpointWrite::Gathered);
        double g = tg.seconds();
        world.all_reduce(&g, 1, comm::DataType::F64, comm::ReduceOp::Max);
        if (r >= 0) gathered_s.push_back(g);
      }
      world.barrier();
      Timer t;
      save_checkpoint(path, cfg, model, opt, CheckpointState{1, 0, cfg.train.seed}, rec, groups);
      double s = t.seconds();
      world.all_reduce(&s, 1, comm::DataType::F64, comm::ReduceOp::Max);
      world.barrier();
      t.restart();
      (void)load_checkpoint(path, model, opt);
      double l = t.seconds();
      world.all_reduce(&l, 1, comm::DataType::F64, comm::ReduceOp::Max);
      if (r >= 0) {
        save_s.push_back(s);
        load_s.push_back(l);
      }
    }
    const double bytes = lead ? static_cast<double>(fs::file_size(path)) : 0.0;
    const double save = median(save_s), load = median(load_s);
    if (lead) {
      const double mib = bytes / (1 << 20);
      fmt::print(
          "bench checkpoint case=d{}_l{}_e{}_ff{} ranks={} ep={} size={:.2f} MiB save={:.1f} ms "
          "({:.0f} MB/s) "
          "load={:.1f} ms ({:.0f} MB/s)\n",
          o.d_model, o.n_layers, o.n_experts, o.d_ff, W, ep, mib, save * 1e3, bytes / save * 1e-6,
          load * 1e3, bytes / load * 1e-6);
      if (compare_gathered) {
        const double g = median(gathered_s);
        fmt::print(
            "bench checkpoint case=d{}_l{}_e{}_ff{}_gathered ranks={} ep={} parallel_save={:.1f} "
            "ms "
            "gathered_save={:.1f} ms ({:.0f} MB/s) ratio={:.2f} (parallel/gathered time)\n",
            o.d_model, o.n_layers, o.n_experts, o.d_ff, W, ep, save * 1e3, g * 1e3,
            bytes / g * 1e-6, save / g);
      }
      fmt::print("  save: min {:.1f} ms, max {:.1f} ms; load: min {:.1f} ms, max {:.1f} ms\n",
                 *std::min_element(save_s.begin(), save_s.end()) * 1e3,
                 *std::max_element(save_s.begin(), save_s.end()) * 1e3,
                 *std::min_element(load_s.begin(), load_s.end()) * 1e3,
                 *std::max_element(load_s.begin(), load_s.end()) * 1e3);
      std::fflush(stdout);
      if (!o.json.empty()) {
        std::ofstream f(o.json);
        f << fmt::format(
            "{{\"ranks\": {}, \"ep\": {}, \"d_model\": {}, \"n_layers\": {}, \"n_experts\": {}, "
            "\"d_ff\": {}, "
            "\"parameters\": {}, \"bytes\": {:.0f}, \"save_s\": {:.6e}, \"load_s\": {:.6e}}}\n",
            W, ep, o.d_model, o.n_layers, o.n_experts, o.d_ff, global_params, bytes, save, load);
        RM_CHECK_KIND(Io, f.good(), fmt::format("cannot write {}", o.json));
      }
      if (!o.keep) {
        std::error_code ec;
        fs::remove(path, ec);
      }
    }
    world.barrier();
    groups.release();
    return 0;
  };
}

}  // namespace routemoe::cli
