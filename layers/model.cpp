#include "layers/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "comm/communicator.h"
#include "framework/cpu/kernels.h"
#include "framework/error.h"

namespace routemoe {

using layers::AttentionCache;
using layers::AttentionDims;
using layers::AttentionGrads;
using layers::AttentionWeights;
using layers::MoeCache;
using layers::MoeDims;
using layers::MoeGrads;
using layers::MoeWeights;
using layers::RouterOptions;

namespace {
bool is_no_decay(const std::string& name) {
  return name.ends_with("bias") || name.find("ln1.") != std::string::npos ||
         name.find("ln2.") != std::string::npos || name.starts_with("ln_f.");
}
}  // namespace

struct Model::Block {
  std::int64_t index = 0;
  std::int64_t moe_index = -1;  // -1: dense block
  RouterKind router = RouterKind::TopK;
  // Parameter indices into ParamStore.
  std::size_t ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b;
  std::size_t fc_w = 0, fc_b = 0, fcp_w = 0, fcp_b = 0;                         // dense
  std::size_t gate = SIZE_MAX, emb = SIZE_MAX, w1 = 0, b1 = 0, w2 = 0, b2 = 0;  // moe
  // Saved activations of the current step (arena memory).
  float* x_in = nullptr;  // [N, d] residual stream entering the block
  float* ln1 = nullptr;   // [N, d]
  float* ln1_mean = nullptr;
  float* ln1_rstd = nullptr;
  AttentionCache<float> attn;
  float* avg_probs = nullptr;  // [B, T, T] (attention router)
  float* x_mid = nullptr;      // [N, d] after the attention residual
  float* ln2 = nullptr;        // [N, d] = u
  float* ln2_mean = nullptr;
  float* ln2_rstd = nullptr;
  MoeCache<float> moe;
  float* fc_pre = nullptr;  // dense [N, d_ff]
  float* fc_act = nullptr;
};

Model::Model(const ModelConfig& config, comm::Communicator* ep)
    : config_(config), ep_(ep), activations_("activations", Device::CPU) {
  config_.validate();
  const int ep_size = ep != nullptr ? ep->size() : 1;
  const int ep_rank = ep != nullptr ? ep->rank() : 0;
  RM_CHECK_KIND(Config, config_.n_experts % ep_size == 0,
                fmt::format("model.n_experts {} is not divisible by the expert-parallel size {}",
                            config_.n_experts, ep_size));
  const std::int64_t local_experts = config_.n_experts / ep_size;
  const std::int64_t first_expert = ep_rank * local_experts;
  const ModelConfig& c = config_;
  const std::int64_t d = c.d_model, V = c.vocab_size, F = c.d_ff, E = c.n_experts;
  const float proj_std =
      static_cast<float>(0.02 / std::sqrt(2.0 * static_cast<double>(c.n_layers)));
  const InitSpec normal02{InitKind::Normal, 0.02f}, ones{InitKind::Ones, 0},
      zeros{InitKind::Zeros, 0};
  const InitSpec proj{InitKind::Normal, proj_std};
  auto declare = [&](const std::string& name, Shape shape, InitSpec init, bool expert = false) {
    return expert ? params_.declare(name, std::move(shape), init, !is_no_decay(name), true,
                                    first_expert, local_experts)
                  : params_.declare(name, std::move(shape), init, !is_no_decay(name));
  };
  declare("wte", {V, d}, normal02);
  declare("wpe", {c.seq_len, d}, InitSpec{InitKind::Normal, 0.01f});
  std::int64_t moe_index = 0;
  for (std::int64_t l = 0; l < c.n_layers; ++l) {
    auto b = std::make_unique<Block>();
    b->index = l;
    const std::string p = fmt::format("blocks.{}.", l);
    b->ln1_w = declare(p + "ln1.weight", {d}, ones);
    b->ln1_b = declare(p + "ln1.bias", {d}, zeros);
    b->qkv_w = declare(p + "attn.qkv.weight", {3 * d, d}, normal02);
    b->qkv_b = declare(p + "attn.qkv.bias", {3 * d}, zeros);
    b->proj_w = declare(p + "attn.proj.weight", {d, d}, proj);
    b->proj_b = declare(p + "attn.proj.bias", {d}, zeros);
    b->ln2_w = declare(p + "ln2.weight", {d}, ones);
    b->ln2_b = declare(p + "ln2.bias", {d}, zeros);
    if (c.is_moe_block(l)) {
      b->moe_index = moe_index;
      b->router = c.effective_router(moe_index);
      if (b->router == RouterKind::AC) {
        b->emb = declare(p + "moe.expert_emb", {E, d}, InitSpec{InitKind::Orthogonal, 0.32f});
      } else {
        b->gate = declare(p + "moe.gate.weight", {E, d}, normal02);
      }
      b->w1 = declare(p + "moe.experts.fc.weight", {E, F, d}, normal02, true);
      b->b1 = declare(p + "moe.experts.fc.bias", {E, F}, zeros, true);
      b->w2 = declare(p + "moe.experts.proj.weight", {E, d, F}, proj, true);
      b->b2 = declare(p + "moe.experts.proj.bias", {E, d}, zeros, true);
      ++moe_index;
    } else {
      b->fc_w = declare(p + "mlp.fc.weight", {F, d}, normal02);
      b->fc_b = declare(p + "mlp.fc.bias", {F}, zeros);
      b->fcp_w = declare(p + "mlp.proj.weight", {d, F}, proj);
      b->fcp_b = declare(p + "mlp.proj.bias", {d}, zeros);
    }
    blocks_.push_back(std::move(b));
  }
  declare("ln_f.weight", {d}, ones);
  declare("ln_f.bias", {d}, zeros);
  params_.allocate();
  params_.initialize(c.seed);
}

Model::~Model() = default;

StepStats Model::forward_backward(const std::int32_t* inputs, const std::int32_t* targets,
                                  std::int64_t batch, std::int64_t seq, double grad_scale) {
  return run(inputs, targets, batch, seq, true, grad_scale, nullptr, false);
}

StepStats Model::forward(const std::int32_t* inputs, const std::int32_t* targets,
                         std::int64_t batch, std::int64_t seq, float* logits, bool dropless) {
  return run(inputs, targets, batch, seq, false, 0.0, logits, dropless);
}

std::vector<RoutingView> Model::last_routing() const {
  return routing_;
}

std::vector<ArenaStats> Model::memory_report() const {
  ArenaStats p;
  p.name = "parameters";
  p.capacity = p.used = p.peak = params_.values_flat().nbytes();
  p.blocks = 1;
  ArenaStats g = p;
  g.name = "gradients";
  return {p, g, activations_.stats()};
}

StepStats Model::run(const std::int32_t* inputs, const std::int32_t* targets, std::int64_t batch,
                     std::int64_t seq, bool backward, double grad_scale, float* logits_out,
                     bool dropless) {
  const ModelConfig& c = config_;
  RM_CHECK_KIND(Shape, batch >= 1 && seq >= 1 && seq <= c.seq_len,
                fmt::format("batch {} x seq {} (seq_len {})", batch, seq, c.seq_len));
  activations_.reset();
  Arena& A = activations_;
  const std::int64_t N = batch * seq, d = c.d_model, V = c.vocab_size, F = c.d_ff;
  const float eps = static_cast<float>(c.ln_eps);
  auto P = [&](std::size_t i) -> float* { return params_.params()[i].value.data<float>(); };
  auto G = [&](std::size_t i) -> float* { return params_.params()[i].grad.data<float>(); };
  const std::size_t wte = 0, wpe = 1;
  const std::size_t lnf_w = params_.params().size() - 2, lnf_b = lnf_w + 1;

  // --- Embeddings ------------------------------------------------------------------------------
  std::vector<std::int32_t> pos(static_cast<std::size_t>(N));
  for (std::int64_t i = 0; i < N; ++i)
    pos[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i % seq);
  float* x = alloc_array<float>(A, N * d);
  float* tmp = alloc_array<float>(A, N * d);
  cpu::gather_rows_forward<float>(P(wte), inputs, x, N, V, d);
  cpu::gather_rows_forward<float>(P(wpe), pos.data(), tmp, N, c.seq_len, d);
  cpu::add<float>(x, tmp, x, N * d);

  // --- Blocks ----------------------------------------------------------------------------------
  StepStats stats;
  routing_.clear();
  const AttentionDims adims{batch, seq, d, c.n_heads};
  const MoeDims mdims{batch, seq, d, F, c.n_experts, c.top_k, dropless ? 0.0 : c.capacity_factor};
  const std::int32_t* prev_top1 = nullptr;
  for (auto& bp : blocks_) {
    Block& b = *bp;
    b.x_in = x;
    b.ln1 = alloc_array<float>(A, N * d);
    b.ln1_mean = alloc_array<float>(A, N);
    b.ln1_rstd = alloc_array<float>(A, N);
    cpu::layernorm_forward<float>(x, P(b.ln1_w), P(b.ln1_b), b.ln1, b.ln1_mean, b.ln1_rstd, N, d,
                                  eps);
    const bool want_avg = b.moe_index >= 0 && b.router == RouterKind::Attention;
    b.avg_probs = want_avg ? alloc_array<float>(A, batch * seq * seq) : nullptr;
    float* attn_out = alloc_array<float>(A, N * d);
    layers::attention_forward<float>(adims, {P(b.qkv_w), P(b.qkv_b), P(b.proj_w), P(b.proj_b)},
                                     b.ln1, attn_out, b.avg_probs, b.attn, A);
    b.x_mid = alloc_array<float>(A, N * d);
    cpu::add<float>(x, attn_out, b.x_mid, N * d);
    b.ln2 = alloc_array<float>(A, N * d);
    b.ln2_mean = alloc_array<float>(A, N);
    b.ln2_rstd = alloc_array<float>(A, N);
    cpu::layernorm_forward<float>(b.x_mid, P(b.ln2_w), P(b.ln2_b), b.ln2, b.ln2_mean, b.ln2_rstd, N,
                                  d, eps);
    float* branch = alloc_array<float>(A, N * d);
    if (b.moe_index >= 0) {
      const RouterOptions opts{b.router, c.similarity_tau, c.similarity_causal, c.aux_loss_coef,
                               c.z_loss_coef};
      MoeWeights<float> w;
      if (b.gate != SIZE_MAX) w.gate = P(b.gate);
      if (b.emb != SIZE_MAX) w.expert_emb = P(b.emb);
      w.w1 = P(b.w1);
      w.b1 = P(b.b1);
      w.w2 = P(b.w2);
      w.b2 = P(b.b2);
      layers::moe_forward<float>(mdims, opts, w, {b.ln2, b.avg_probs, prev_top1, nullptr, ep_},
                                 branch, b.moe, A);
      prev_top1 = b.moe.top1;
      MoeLayerStats ms;
      ms.layer = b.index;
      ms.router = b.router;
      ms.load.assign(static_cast<std::size_t>(c.n_experts), 0);
      for (std::int64_t i = 0; i < N; ++i) ++ms.load[static_cast<std::size_t>(b.moe.top1[i])];
      ms.switch_loss = b.moe.switch_loss;
      ms.z_loss = b.moe.z_loss;
      ms.dropped = b.moe.dropped;
      stats.aux_loss += c.aux_loss_coef * ms.switch_loss + c.z_loss_coef * ms.z_loss;
      stats.moe.push_back(std::move(ms));
      routing_.push_back({N, c.top_k, c.n_experts, b.moe.choice, b.moe.gates,
                          b.router == RouterKind::AC ? b.moe.probs : b.moe.select, b.moe.scale});
    } else {
      b.fc_pre = alloc_array<float>(A, N * F);
      b.fc_act = alloc_array<float>(A, N * F);
      cpu::linear_forward<float>(b.ln2, P(b.fc_w), P(b.fc_b), b.fc_pre, N, d, F);
      cpu::gelu_forward<float>(b.fc_pre, b.fc_act, N * F);
      cpu::linear_forward<float>(b.fc_act, P(b.fcp_w), P(b.fcp_b), branch, N, F, d);
    }
    float* x_out = alloc_array<float>(A, N * d);
    cpu::add<float>(b.x_mid, branch, x_out, N * d);
    x = x_out;
  }

  // --- Head and loss -------------------------------------------------------------------------
  float* lnf = alloc_array<float>(A, N * d);
  float* lnf_mean = alloc_array<float>(A, N);
  float* lnf_rstd = alloc_array<float>(A, N);
  cpu::layernorm_forward<float>(x, P(lnf_w), P(lnf_b), lnf, lnf_mean, lnf_rstd, N, d, eps);
  float* logits = alloc_array<float>(A, N * V);
  cpu::linear_forward<float>(lnf, P(wte), nullptr, logits, N, d, V);
  if (logits_out != nullptr) std::copy(logits, logits + N * V, logits_out);
  float* losses = alloc_array<float>(A, N);
  float* lse = alloc_array<float>(A, N);
  cpu::cross_entropy_forward<float>(logits, targets, losses, lse, N, V);
  double ce = 0;
  std::int64_t count = 0;
  for (std::int64_t i = 0; i < N; ++i) {
    if (targets[i] < 0) continue;
    ce += losses[i];
    ++count;
  }
  stats.tokens = count;
  stats.ce_loss = count > 0 ? ce / static_cast<double>(count) : 0.0;
  stats.loss = stats.ce_loss + stats.aux_loss;
  if (!backward) return stats;

  // --- Backward --------------------------------------------------------------------------------
  const float gs = static_cast<float>(grad_scale);
  float* dloss = alloc_array<float>(A, N);
  for (std::int64_t i = 0; i < N; ++i)
    dloss[i] = targets[i] >= 0 && count > 0 ? gs / static_cast<float>(count) : 0.0f;
  float* dlogits = alloc_array<float>(A, N * V);
  cpu::cross_entropy_backward<float>(logits, targets, lse, dloss, dlogits, N, V);
  float* dlnf = alloc_array<float>(A, N * d);
  cpu::linear_backward<float>(dlogits, lnf, P(wte), dlnf, G(wte), nullptr, N, d, V);
  float* dx = alloc_array<float>(A, N * d);
  cpu::layernorm_backward<float>(dlnf, x, P(lnf_w), lnf_mean, lnf_rstd, dx, G(lnf_w), G(lnf_b), N,
                                 d);
  float* du = alloc_array<float>(A, N * d);
  float* dln = alloc_array<float>(A, N * d);
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
    Block& b = **it;
    // Branch (MoE or dense FFN): dx flows into the branch output unchanged.
    float* d_avg = nullptr;
    if (b.moe_index >= 0) {
      const RouterOptions opts{b.router, c.similarity_tau, c.similarity_causal,
                               c.aux_loss_coef * grad_scale, c.z_loss_coef * grad_scale};
      MoeWeights<float> w;
      MoeGrads<float> g;
      if (b.gate != SIZE_MAX) {
        w.gate = P(b.gate);
        g.gate = G(b.gate);
      }
      if (b.emb != SIZE_MAX) {
        w.expert_emb = P(b.emb);
        g.expert_emb = G(b.emb);
      }
      w.w1 = P(b.w1);
      w.b1 = P(b.b1);
      w.w2 = P(b.w2);
      w.b2 = P(b.b2);
      g.w1 = G(b.w1);
      g.b1 = G(b.b1);
      g.w2 = G(b.w2);
      g.b2 = G(b.b2);
      if (b.avg_probs != nullptr) d_avg = alloc_zeroed<float>(A, batch * seq * seq);
      layers::moe_backward<float>(mdims, opts, w, g, {b.ln2, b.avg_probs, nullptr, nullptr, ep_},
                                  b.moe, dx, du, d_avg, A);
    } else {
      float* dact = alloc_array<float>(A, N * F);
      cpu::linear_backward<float>(dx, b.fc_act, P(b.fcp_w), dact, G(b.fcp_w), G(b.fcp_b), N, F, d);
      cpu::gelu_backward<float>(b.fc_pre, dact, dact, N * F);
      cpu::linear_backward<float>(dact, b.ln2, P(b.fc_w), du, G(b.fc_w), G(b.fc_b), N, d, F);
    }
    cpu::layernorm_backward<float>(du, b.x_mid, P(b.ln2_w), b.ln2_mean, b.ln2_rstd, dln, G(b.ln2_w),
                                   G(b.ln2_b), N, d);
    cpu::add<float>(dx, dln, dx, N * d);  // dx is now d(x_mid)
    layers::attention_backward<float>(adims, {P(b.qkv_w), P(b.qkv_b), P(b.proj_w), P(b.proj_b)},
                                      {G(b.qkv_w), G(b.qkv_b), G(b.proj_w), G(b.proj_b)}, b.ln1,
                                      b.attn, dx, d_avg, du, A);
    cpu::layernorm_backward<float>(du, b.x_in, P(b.ln1_w), b.ln1_mean, b.ln1_rstd, dln, G(b.ln1_w),
                                   G(b.ln1_b), N, d);
    cpu::add<float>(dx, dln, dx, N * d);  // d(x_in)
  }
  cpu::gather_rows_backward<float>(dx, inputs, G(wte), N, V, d);
  cpu::gather_rows_backward<float>(dx, pos.data(), G(wpe), N, c.seq_len, d);
  return stats;
}

}  // namespace routemoe
