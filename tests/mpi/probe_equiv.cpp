// Probe routing does not depend on the layout: the routing record of the probe set, computed from
// the same checkpoint, is the same on 1, 2 and 4 ranks and for every ep_size.
//
//   probe_equiv --expect-ranks N --ep E --run DIR [--data DIR --train]
//
// --train (the 1-rank entry, a fixture): trains a small model whose MoE layers after the first
// use the `ac` router (the router whose statistics span several tokens) for a few steps on one
// rank, writing a checkpoint with its routing record and the trace with the probe tokens into
// --run. Every entry (this one included) then loads that checkpoint on its own ranks, routes the
// probe set of the trace with route_probe and compares every dataset of every layer (experts,
// gates, routing probabilities, AC feature weights) with the checkpoint's /routing record, which
// the 1-rank trainer wrote. The AC weights are taken over the whole probe set on any layout
// (framework/train/checkpoint.cpp, route_probe); the other routers are per token or per sequence.
// Every dataset must be identical, bit for bit: route_probe runs its GEMMs in a fixed summation
// order (ops::RowStableGemm), so a layer's values no longer depend on how many rows each GEMM
// (gate, attention, expert FFN) sees, and the AC statistics are summed in global sequence order.
// The largest value differences are printed as well, to show how far a failing layout is off.
// Per-rank AC statistics (the behaviour this test guards against) move M by percents and
// change expert choices; BLAS GEMMs on per-rank slices moved values by ~1e-7.

#include <fmt/format.h>
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/error.h"
#include "framework/h5.h"
#include "framework/ops.h"
#include "framework/optim.h"
#include "framework/runfile.h"
#include "framework/train/checkpoint.h"
#include "framework/train/trainer.h"
#include "layers/model.h"

using namespace routemoe;

namespace {

RunConfig make_config(const std::string& data, const std::string& run) {
  RunConfig cfg;
  cfg.model.vocab_size = 256;
  cfg.model.seq_len = 32;
  cfg.model.d_model = 32;
  cfg.model.n_heads = 2;
  cfg.model.n_layers = 3;
  cfg.model.d_ff = 48;
  cfg.model.n_experts = 4;
  cfg.model.top_k = 2;
  cfg.model.routers = {"ac"};  // layer 0 routes with topk, layers 1 and 2 with ac
  cfg.optim.lr = 3e-3;
  cfg.optim.warmup = 2;
  cfg.train.steps = 6;
  cfg.train.batch_size = 4;
  cfg.train.eval_every = 0;
  cfg.train.eval_batches = 1;
  cfg.train.log_every = 6;
  cfg.train.threads = 1;
  cfg.train.progress = false;
  cfg.train.out_dir = run;
  cfg.data.path = data;
  cfg.checkpoint.every = 6;
  cfg.checkpoint.probe_tokens = 8 * 32;  // 8 sequences: whole sequences on 1, 2 and 4 ranks
  cfg.checkpoint.trace = true;
  return cfg;
}

// How far a record is from the reference (expert choices, largest value differences).
struct Comparison {
  std::string mismatch;     // first expert choice (or router, shape) that differs; "" if none
  double gates = 0;         // max |gate - ref|
  double probs = 0;         // max |prob - ref|
  double ac_scale_rel = 0;  // max |M - ref| / |ref|
  bool bits = true;         // gates, probabilities and AC weights bit-identical
};

template <typename V>
bool same_bits(const std::vector<V>& x, const std::vector<V>& y) {
  return x.size() == y.size() &&
         (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(V)) == 0);
}

Comparison compare(const RoutingRecord& a, const RoutingRecord& b) {
  Comparison c;
  if (a.layers.size() != b.layers.size()) {
    c.mismatch = fmt::format("{} vs {} layers", a.layers.size(), b.layers.size());
    return c;
  }
  for (std::size_t m = 0; m < a.layers.size(); ++m) {
    const LayerRouting& x = a.layers[m];
    const LayerRouting& y = b.layers[m];
    if (x.router != y.router || x.experts.size() != y.experts.size() ||
        x.gates.size() != y.gates.size() || x.probs.size() != y.probs.size() ||
        x.ac_scale.size() != y.ac_scale.size()) {
      c.mismatch = fmt::format("layer{}: router or shapes differ", m);
      return c;
    }
    for (std::size_t i = 0; i < x.experts.size(); ++i) {
      if (x.experts[i] != y.experts[i] && c.mismatch.empty())
        c.mismatch = fmt::format("layer{} ({}) slot {}: expert {} vs {}", m, x.router, i,
                                 x.experts[i], y.experts[i]);
    }
    for (std::size_t i = 0; i < x.gates.size(); ++i) {
      c.gates = std::max(c.gates, std::abs(static_cast<double>(x.gates[i]) - y.gates[i]));
      c.probs = std::max(c.probs, std::abs(static_cast<double>(x.probs[i]) - y.probs[i]));
    }
    for (std::size_t i = 0; i < x.ac_scale.size(); ++i) {
      const double ref = y.ac_scale[i];
      c.ac_scale_rel = std::max(c.ac_scale_rel, std::abs(x.ac_scale[i] - ref) / std::abs(ref));
    }
    c.bits = c.bits && same_bits(x.gates, y.gates) && same_bits(x.probs, y.probs) &&
             same_bits(x.ac_scale, y.ac_scale);
  }
  return c;
}

int run(int argc, char** argv) {
  CLI::App app{"probe routing on any layout"};
  int expect = 1, ep = 1;
  bool train = false;
  std::string data, dir;
  app.add_option("--expect-ranks", expect)->required();
  app.add_option("--ep", ep);
  app.add_option("--run", dir)->required();
  app.add_option("--data", data);
  app.add_flag("--train", train, "train the checkpoint first (one rank)");
  app.parse(argc, argv);

  comm::init_mpi(&argc, &argv);
  comm::ProcessGroups groups = comm::ProcessGroups::create(comm::make_mpi_world(), ep);
  comm::Communicator& world = *groups.world;
  if (world.size() != expect) {
    std::fprintf(stderr, "probe_equiv: expected %d ranks, got %d\n", expect, world.size());
    return 1;
  }
  RunConfig cfg = make_config(data, dir);
  cfg.parallel.ep_size = ep;
  if (train) {
    RM_CHECK(world.size() == 1 && !data.empty(), "--train runs on one rank with --data");
    std::filesystem::remove_all(dir);
    run_training(cfg, groups);
  }
  const std::vector<std::string> ckpts = list_checkpoints(dir + "/checkpoints");
  RM_CHECK(ckpts.size() == 1,
           fmt::format("{}/checkpoints holds {} checkpoints, expected 1", dir, ckpts.size()));
  const std::vector<std::int32_t> probe =
      h5::File::open_read(dir + "/trace.h5").read_i32(runfile::kProbeTokens);
  const RoutingRecord expected =
      runfile::read_routing(h5::File::open_read(ckpts[0]), runfile::kRoutingGroup);

  ops::set_num_threads(1);
  Model model(cfg.model, groups.ep.get());
  AdamW opt(model.params(), cfg.optim);
  load_checkpoint(ckpts[0], model, opt);
  const RoutingRecord got = route_probe(model, probe, cfg.model.seq_len, world);
  const Comparison c = compare(got, expected);
  const bool ok = c.mismatch.empty() && c.bits;
  if (world.rank() == 0) {
    std::printf(
        "probe_equiv: %d rank(s), ep %d: %zu probe tokens, MoE layers %s: expert choices %s; "
        "gates, probabilities and AC weights %s (max |gate diff| %.3g, max |prob diff| %.3g, AC "
        "weights max rel diff %.3g): %s\n",
        world.size(), ep, probe.size(),
        runfile::join_routers(model.config().expanded_routers()).c_str(),
        c.mismatch.empty() ? "identical" : ("DIFFER: " + c.mismatch).c_str(),
        c.bits ? "bit-identical" : "NOT bit-identical", c.gates, c.probs, c.ac_scale_rel,
        ok ? "OK" : "MISMATCH");
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int rc = 1;
  try {
    rc = run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "probe_equiv: %s\n", e.what());
    comm::abort_world(1);
  }
  int any = rc;
  if (comm::mpi_active()) MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  comm::finalize_mpi();
  return any;
}
