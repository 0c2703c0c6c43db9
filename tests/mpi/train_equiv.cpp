// Multi-rank training equivalence: the same global batches trained for a few steps on 1, 2 and
// 4 ranks (any ep_size) must give the same loss trajectory and the same final parameters.
//
//   train_equiv --expect-ranks N --data DIR --router R --ep E --out FILE.h5
//               [--reference REF.h5] [--repeat] [--messages]
//
// The ep group's exchange goes through shared memory when its ranks share a node (as in
// training); --messages asks for MPI messages overlapped with the experts instead (as across
// nodes). Either way the run fails unless the exchange uses the transport asked for.
// Every run uses micro-batches of the same 2 sequences (grad_accum = 4 / ranks), so each
// router sees exactly the same token groups whatever the rank count: the AC statistics and
// the load-balancing loss are per micro-batch, as in the papers. The run writes its losses and
// full parameters (expert shards gathered) to --out; with --reference it compares against a
// file written by the 1-rank run.
//
// --repeat (the 1-rank entries, which write that reference): the same training runs a second
// time in the same process, from a fresh model, and must give BIT-IDENTICAL step losses, final
// parameters and expert loads. Training is deterministic by design (Philox streams keyed by
// seed and step, fixed reduction orders), so any difference is a bug: uninitialised memory,
// state leaking from one run into the next (arenas, data loader, caches), a race. --out is
// written only when the repeat matched, so the multi-rank entries never compare against a
// trajectory that does not reproduce.
//
// Tolerance (fp32): the rank count changes only the order of floating-point sums (gradient
// all-reduces, expert rows arriving from several sources); the forward of a step is computed
// on identical parameters, so step losses agree to the printed digits (measured: exactly). Adam
// divides each update by sqrt(v): for parameters whose gradient is tiny, a rounding-level
// difference moves the update by far more than the gradient's relative error, so parameters
// drift apart slowly (measured after 10 steps at lr 3e-3: at most 3e-6 absolute). The bounds
// (loss 2e-5 relative; parameters 2e-5 absolute + 2e-4 relative) sit 7-10x above that and far
// below what a real mistake does (a missing gradient contribution shifts the loss by ~1e-3 and
// parameters by ~lr per step).

#include <fmt/format.h>
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "comm/communicator.h"
#include "comm/mpi_runtime.h"
#include "framework/error.h"
#include "framework/h5.h"
#include "framework/train/trainer.h"
#include "layers/model.h"

using namespace routemoe;

namespace {

// Every parameter by name, in the order of the parameter store.
using Params = std::vector<std::pair<std::string, std::vector<float>>>;

// Full (all experts) copy of every parameter, gathered over the ep group.
Params gather_params(Model& model, comm::ProcessGroups& g) {
  Params out;
  for (const Param& p : model.params().params()) {
    const std::int64_t n = p.value.numel();
    std::vector<float> full(static_cast<std::size_t>(n * (p.expert ? g.ep->size() : 1)));
    if (p.expert) {
      g.ep->all_gather(p.value.data<float>(), full.data(), n, comm::DataType::F32);
    } else {
      std::copy(p.value.data<float>(), p.value.data<float>() + n, full.begin());
    }
    out.emplace_back(p.name, std::move(full));
  }
  return out;
}

// Where two runs in one process differ bit for bit ("" when they do not).
std::string first_difference(const TrainSummary& a, const Params& pa, const TrainSummary& b,
                             const Params& pb) {
  const auto same = [](const void* x, const void* y, std::size_t bytes) {
    return std::memcmp(x, y, bytes) == 0;
  };
  if (a.losses.size() != b.losses.size())
    return fmt::format("{} vs {} steps", a.losses.size(), b.losses.size());
  for (std::size_t i = 0; i < a.losses.size(); ++i) {
    if (!same(&a.losses[i], &b.losses[i], sizeof(double)))
      return fmt::format("step {} loss {:.17g} vs {:.17g}", i, a.losses[i], b.losses[i]);
  }
  if (a.expert_load != b.expert_load) return "expert loads of the last step";
  if (pa.size() != pb.size()) return fmt::format("{} vs {} parameters", pa.size(), pb.size());
  for (std::size_t p = 0; p < pa.size(); ++p) {
    const std::vector<float>& x = pa[p].second;
    const std::vector<float>& y = pb[p].second;
    if (pa[p].first != pb[p].first || x.size() != y.size())
      return fmt::format("parameter {}: {} [{}] vs {} [{}]", p, pa[p].first, x.size(), pb[p].first,
                         y.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (!same(&x[i], &y[i], sizeof(float)))
        return fmt::format("{}[{}]: {:.9g} vs {:.9g}", pa[p].first, i, x[i], y[i]);
    }
  }
  return "";
}

int run(int argc, char** argv) {
  CLI::App app{"multi-rank training equivalence"};
  int expect = 1, ep = 1, steps = 10;
  bool repeat = false, messages = false;
  std::string data, router = "topk", out, reference;
  app.add_option("--expect-ranks", expect)->required();
  app.add_option("--data", data)->required();
  app.add_option("--router", router);
  app.add_option("--ep", ep);
  app.add_option("--steps", steps);
  app.add_option("--out", out)->required();
  app.add_option("--reference", reference);
  app.add_flag("--repeat", repeat, "train twice in this process; the runs must be bit-identical");
  app.add_flag("--messages", messages,
               "exchange by MPI messages (overlapped with the experts) even on one node");
  app.parse(argc, argv);

  comm::init_mpi(&argc, &argv);
  comm::ProcessGroups groups =
      comm::ProcessGroups::create(comm::make_mpi_world(), ep, /*shared_memory=*/!messages);
  if (ep > 1 && groups.ep->shared_memory() == messages) {
    std::fprintf(stderr, "train_equiv: the exchange %s shared memory, expected %s\n",
                 messages ? "uses" : "does not use", messages ? "messages" : "shared memory");
    return 1;
  }
  const int W = groups.world->size();
  if (W != expect) {
    std::fprintf(stderr, "train_equiv: expected %d ranks, got %d\n", expect, W);
    return 1;
  }
  RunConfig cfg;
  cfg.model.vocab_size = 256;
  cfg.model.seq_len = 32;
  cfg.model.d_model = 32;
  cfg.model.n_heads = 2;
  cfg.model.n_layers = 3;
  cfg.model.d_ff = 48;
  cfg.model.n_experts = 4;
  cfg.model.top_k = 2;
  cfg.model.routers = {router};
  cfg.model.z_loss_coef = 0.001;
  cfg.optim.lr = 3e-3;
  cfg.optim.lr_min = 3e-4;
  cfg.optim.warmup = 2;
  cfg.train.steps = steps;
  cfg.train.batch_size = 8;
  cfg.train.grad_accum = 4 / W;
  cfg.train.eval_every = 0;
  cfg.train.eval_batches = 2;
  cfg.train.log_every = steps;
  cfg.train.threads = 1;
  cfg.train.progress = false;
  cfg.data.path = data;
  cfg.parallel.ep_size = ep;

  // One training run in the run directory `dir` (removed first): its summary and the full
  // parameters after it.
  const auto train = [&](const std::string& dir, Params& params) {
    cfg.train.out_dir = dir;
    if (groups.world->rank() == 0) std::filesystem::remove_all(dir);
    groups.world->barrier();
    return run_training(cfg, groups, nullptr, [&](Model& m) { params = gather_params(m, groups); });
  };
  if (groups.world->rank() == 0) std::filesystem::remove(out);  // never leave a stale result
  Params params;
  const TrainSummary s = train(out + ".run", params);
  std::string repeat_diff;
  if (repeat) {
    Params params2;
    const TrainSummary s2 = train(out + ".run2", params2);
    repeat_diff = first_difference(s, params, s2, params2);
  }
  if (groups.world->rank() != 0) return 0;
  if (repeat) {
    if (!repeat_diff.empty()) {
      std::printf(
          "train_equiv: %d rank(s), router %s: a second run in the same process differs: %s: "
          "NOT REPRODUCIBLE (no output written)\n",
          W, router.c_str(), repeat_diff.c_str());
      return 1;
    }
    std::size_t values = 0;
    for (const auto& p : params) values += p.second.size();
    std::printf(
        "train_equiv: %d rank(s), router %s: second run in the same process bit-identical (%zu "
        "step losses, %zu parameter values, expert loads)\n",
        W, router.c_str(), s.losses.size(), values);
  }

  h5::File f = h5::File::create(out);
  std::vector<float> losses(s.losses.begin(), s.losses.end());
  f.write_f32("/losses", losses.data(), {static_cast<std::int64_t>(losses.size())});
  for (const auto& [name, v] : params)
    f.write_f32("/params/" + name, v.data(), {static_cast<std::int64_t>(v.size())});
  f.close();
  if (reference.empty()) {
    std::printf("train_equiv: %d rank(s), router %s: wrote reference %s (final loss %.6f)\n", W,
                router.c_str(), out.c_str(), s.losses.back());
    return 0;
  }
  const h5::File ref = h5::File::open_read(reference);
  const std::vector<float> ref_losses = ref.read_f32("/losses");
  int bad = 0;
  double worst_loss = 0, worst_param = 0;
  for (std::size_t i = 0; i < losses.size(); ++i) {
    const double err = std::abs(static_cast<double>(losses[i]) - ref_losses.at(i));
    worst_loss = std::max(worst_loss, err / std::abs(ref_losses[i]));
    if (err > 2e-5 * std::abs(ref_losses[i])) {
      std::printf("  step %zu: loss %.8f vs 1-rank %.8f\n", i, losses[i], ref_losses[i]);
      ++bad;
    }
  }
  for (const auto& [name, v] : params) {
    const std::vector<float> r = ref.read_f32("/params/" + name);
    for (std::size_t i = 0; i < v.size(); ++i) {
      const double err = std::abs(static_cast<double>(v[i]) - r.at(i));
      worst_param = std::max(worst_param, err);
      if (err > 2e-5 + 2e-4 * std::abs(r[i])) {
        if (bad < 20) std::printf("  %s[%zu]: %.8g vs 1-rank %.8g\n", name.c_str(), i, v[i], r[i]);
        ++bad;
      }
    }
  }
  std::printf(
      "train_equiv: %d rank(s), ep %d, router %s: max loss rel diff %.3g, max param abs diff %.3g: "
      "%s\n",
      W, ep, router.c_str(), worst_loss, worst_param, bad == 0 ? "OK" : "MISMATCH");
  return bad == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int rc = 1;
  try {
    rc = run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_equiv: %s\n", e.what());
    comm::abort_world(1);
  }
  // Every rank must agree on failure: a mismatch found on rank 0 fails the whole run.
  int any = rc;
  if (comm::mpi_active()) MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  comm::finalize_mpi();
  return any;
}
