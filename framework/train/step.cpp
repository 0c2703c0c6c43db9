#include "framework/train/step.h"

#include <fmt/format.h>

#include <cmath>

#include "framework/data.h"
#include "framework/error.h"
#include "framework/ops.h"
#include "framework/optim.h"

namespace routemoe {

namespace {

// Forward/backward of this rank's micro-batches: rows [rank * B/W + a * micro, ...) of the
// global batch, each micro-batch's loss weighted 1 / (W * grad_accum).
StepResult run_micro_batches(StepContext& ctx, std::int64_t step) {
  const int W = ctx.groups.world->size();
  const std::int64_t accum = ctx.cfg.train.grad_accum;
  const std::int64_t rank_rows = ctx.cfg.train.batch_size / W;
  const std::int64_t micro = rank_rows / accum;
  const double scale = 1.0 / static_cast<double>(W * accum);
  StepResult r;
  r.step = step;
  for (std::int64_t a = 0; a < accum; ++a) {
    const Batch b =
        ctx.loader.batch_at(step, ctx.groups.world->rank() * rank_rows + a * micro, micro);
    const StepStats s =
        ctx.model.forward_backward(b.inputs.data(), b.targets.data(), b.rows, b.seq_len, scale);
    r.loss += s.loss * scale;
    r.ce_loss += s.ce_loss * scale;
    r.aux_loss += s.aux_loss * scale;
    if (a == 0) {
      r.moe = s.moe;
      continue;
    }
    for (std::size_t m = 0; m < s.moe.size(); ++m) {
      for (std::size_t e = 0; e < s.moe[m].load.size(); ++e) r.moe[m].load[e] += s.moe[m].load[e];
    }
  }
  return r;
}

// Losses and loads summed over all ranks.
void all_reduce_stats(StepResult& r, comm::Communicator& world) {
  double l[3] = {r.loss, r.ce_loss, r.aux_loss};
  world.all_reduce(l, 3, comm::DataType::F64, comm::ReduceOp::Sum);
  r.loss = l[0];
  r.ce_loss = l[1];
  r.aux_loss = l[2];
  for (MoeLayerStats& m : r.moe) {
    world.all_reduce(m.load.data(), static_cast<std::int64_t>(m.load.size()), comm::DataType::I64,
                     comm::ReduceOp::Sum);
  }
}

}  // namespace

StepResult train_step(StepContext& ctx, std::int64_t step) {
  ctx.model.params().zero_grads();
  StepResult r = run_micro_batches(ctx, step);
  all_reduce_stats(r, *ctx.groups.world);
  r.grad_norm = reduce_gradients(ctx.model.params(), ctx.groups);
  r.lr = lr_at(ctx.cfg.optim, step, ctx.cfg.train.steps);
  // The same decision on every rank: both values are results of all-reduces.
  r.skipped = !std::isfinite(r.loss) || !std::isfinite(r.grad_norm);
  if (r.skipped) return r;
  clip_grads(ctx.model.params(), ctx.cfg.optim.grad_clip, r.grad_norm);
  ctx.optimizer.step(r.lr);
  return r;
}

double reduce_gradients(ParamStore& params, comm::ProcessGroups& groups) {
  const bool dp = groups.world->size() > 1;
  double sq[2] = {0.0, 0.0};  // dense (replicated), expert (sharded over the ep group)
  for (Param& p : params.params()) {
    float* g = p.grad.data<float>();
    const std::int64_t n = p.grad.numel();
    if (p.expert) {
      if (groups.edp->size() > 1) {
        groups.edp->all_reduce(g, n, comm::DataType::F32, comm::ReduceOp::Sum);
      }
      sq[1] += ops::sum_squares<float>(params.exec(), g, n);
    } else {
      if (dp) groups.world->all_reduce(g, n, comm::DataType::F32, comm::ReduceOp::Sum);
      sq[0] += ops::sum_squares<float>(params.exec(), g, n);
    }
  }
  // Dense parameters are identical on every rank after the all-reduce: count them once. Each
  // expert lives on exactly one rank of the ep group: sum the shards over that group.
  if (groups.ep->size() > 1) {
    groups.ep->all_reduce(&sq[1], 1, comm::DataType::F64, comm::ReduceOp::Sum);
  }
  return std::sqrt(sq[0] + sq[1]);
}

}  // namespace routemoe
