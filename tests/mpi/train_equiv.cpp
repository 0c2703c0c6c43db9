// Multi-rank training equivalence: the same global batches trained for a few steps on 1, 2 and
// 4 ranks (any ep_size) must give the same loss trajectory and the same final parameters.
//
//   train_equiv --expect-ranks N --data DIR --router R --ep E --out FILE.h5 [--reference REF.h5]
//
// Every run uses micro-batches of the same 2 sequences (grad_accum = 4 / ranks), so each
// router sees exactly the same token groups whatever the rank count: the AC statistics and
// the load-balancing loss are per micro-batch, as in the papers. The run writes its losses and
// full parameters (expert shards gathered) to --out; with --reference it compares against a
// file written by the 1-rank run.
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

// Full (all experts) copy of every parameter, gathered over the ep group.
std::vector<std::pair<std::string, std::vector<float>>> gather_params(Model& model,
                                                                      comm::ProcessGroups& g) {
  std::vector<std::pair<std::string, std::vector<float>>> out;
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

int run(int argc, char** argv) {
  CLI::App app{"multi-rank training equivalence"};
  int expect = 1, ep = 1, steps = 10;
  std::string data, router = "topk", out, reference;
  app.add_option("--expect-ranks", expect)->required();
  app.add_option("--data", data)->required();
  app.add_option("--router", router);
  app.add_option("--ep", ep);
  app.add_option("--steps", steps);
  app.add_option("--out", out)->required();
  app.add_option("--reference", reference);
  app.parse(argc, argv);

  comm::init_mpi(&argc, &argv);
  comm::ProcessGroups groups = comm::ProcessGroups::create(comm::make_mpi_world(), ep);
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
  cfg.train.out_dir = out + ".run";
  cfg.data.path = data;
  cfg.parallel.ep_size = ep;
  if (groups.world->rank() == 0) std::filesystem::remove_all(cfg.train.out_dir);
  groups.world->barrier();

  std::vector<std::pair<std::string, std::vector<float>>> params;
  const TrainSummary s =
      run_training(cfg, groups, [&](Model& m) { params = gather_params(m, groups); });
  if (groups.world->rank() != 0) return 0;

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
