#include "layers/model.h"

#include <fmt/format.h>

#include <cmath>

#include "comm/communicator.h"
#include "framework/error.h"
#include "framework/ops.h"
#include "layers/attention.h"
#include "layers/moe.h"

namespace routemoe {

using layers::AttentionCache;
using layers::AttentionDims;
using layers::MoeLayer;

namespace {

float* value(const Param* p) {
  return p->value.data<float>();
}
float* grad(const Param* p) {
  return p->grad.data<float>();
}

struct LayerNormParams {
  Param* w = nullptr;
  Param* b = nullptr;
};

// Saved activations of one LayerNorm: output and per-row statistics.
struct LayerNormOut {
  float* y = nullptr;
  float* mean = nullptr;
  float* rstd = nullptr;
};

}  // namespace

struct Model::Embeddings {
  Param* wte = nullptr;  // [V, d], tied to the LM head
  Param* wpe = nullptr;  // [seq_len, d]
  LayerNormParams ln_f;
};

struct Model::Block {
  std::int64_t index = 0;
  LayerNormParams ln1, ln2;
  Param *qkv_w = nullptr, *qkv_b = nullptr, *proj_w = nullptr, *proj_b = nullptr;
  // Dense FFN blocks.
  Param *fc_w = nullptr, *fc_b = nullptr, *fcp_w = nullptr, *fcp_b = nullptr;
  // MoE blocks.
  std::unique_ptr<MoeLayer<float>> moe;
  std::vector<Param*> router;  // in Router::params order
  Param *w1 = nullptr, *b1 = nullptr, *w2 = nullptr, *b2 = nullptr;
  // Saved activations of the current micro-batch (arena memory).
  float* x_in = nullptr;  // [N, d] residual stream entering the block
  LayerNormOut ln1_out;
  AttentionCache<float> attn;
  float* avg_probs = nullptr;                   // [B, T, T] (attention router)
  float* x_mid = nullptr;                       // [N, d] after the attention residual
  LayerNormOut ln2_out;                         // u
  const std::int32_t* prev_top1 = nullptr;      // the previous MoE layer's first choices (ac)
  comm::Communicator* routing_stats = nullptr;  // evaluation routing over all ranks, else null
  float* fc_pre = nullptr;                      // dense [N, d_ff]
  float* fc_act = nullptr;

  layers::AttentionWeights<float> attn_weights() const {
    return {value(qkv_w), value(qkv_b), value(proj_w), value(proj_b)};
  }
  layers::AttentionGrads<float> attn_grads() const {
    return {grad(qkv_w), grad(qkv_b), grad(proj_w), grad(proj_b)};
  }
  layers::MoeWeights<float> moe_weights() const {
    layers::MoeWeights<float> w{{}, value(w1), value(b1), value(w2), value(b2)};
    for (const Param* p : router) w.router.push_back(value(p));
    return w;
  }
  layers::MoeGrads<float> moe_grads() const {
    layers::MoeGrads<float> g{{}, grad(w1), grad(b1), grad(w2), grad(b2)};
    for (const Param* p : router) g.router.push_back(grad(p));
    return g;
  }
  layers::RouterInputs<float> router_inputs() const {
    return {ln2_out.y, avg_probs, prev_top1, nullptr, routing_stats};
  }
  std::vector<float*> router_values() const {
    std::vector<float*> v;
    for (const Param* p : router) v.push_back(value(p));
    return v;
  }
};

// One forward (and backward) pass over a micro-batch.
struct Model::Pass {
  std::int64_t batch = 0, seq = 0, tokens = 0;
  bool backward = false;
  bool dropless = false;
  comm::Communicator* routing_stats = nullptr;
  double grad_scale = 1.0;
  std::int32_t* inputs = nullptr;     // [N] on the device
  std::int32_t* targets = nullptr;    // [N]
  std::int32_t* positions = nullptr;  // [N]
  std::vector<std::int32_t> host_targets;
  float* x = nullptr;  // [N, d] residual stream at the current point
  const std::int32_t* prev_top1 = nullptr;
  LayerNormOut lnf;
  bool want_logits = false;  // the caller takes the logits (forward with logits_out)
  bool fused_ce = false;     // the forward left dlogits in `logits` (cross_entropy_fused)
  float* logits = nullptr;   // [N, V]
  float* lse = nullptr;      // [N]
  std::int64_t counted = 0;  // non-ignored targets
  float* dx = nullptr;       // [N, d] gradient of the residual stream
  float* du = nullptr;       // [N, d] gradient of a branch input
  float* dln = nullptr;      // [N, d] LayerNorm input gradient
  std::vector<RoutingView> routing;
  std::vector<MoeLayerStats> moe;
};

namespace {

bool is_no_decay(const std::string& name) {
  return name.ends_with("bias") || name.find("ln1.") != std::string::npos ||
         name.find("ln2.") != std::string::npos || name.starts_with("ln_f.");
}

// Bytes a pass over `elems` floats reads or writes (the profile's GB/s).
double fbytes(std::int64_t elems) {
  return static_cast<double>(elems) * sizeof(float);
}

LayerNormOut layernorm_forward(const Exec& ex, Arena& a, const LayerNormParams& ln, const float* x,
                               std::int64_t n, std::int64_t d, float eps, TimerSet* timers) {
  Phase ph(timers, phase::kLayerNorm, 0.0, fbytes(2 * n * d));
  LayerNormOut o{ops::alloc<float>(ex, a, n * d), ops::alloc<float>(ex, a, n),
                 ops::alloc<float>(ex, a, n)};
  ops::layernorm_forward<float>(ex, x, value(ln.w), value(ln.b), o.y, o.mean, o.rstd, n, d, eps);
  return o;
}

// dx += LayerNorm backward of dy (scratch: dln [n, d]).
void layernorm_backward_add(const Exec& ex, const LayerNormParams& ln, const LayerNormOut& o,
                            const float* x, const float* dy, float* dln, float* dx, std::int64_t n,
                            std::int64_t d, TimerSet* timers) {
  Phase ph(timers, phase::kLayerNorm, 0.0, fbytes(6 * n * d));
  ops::layernorm_backward<float>(ex, dy, x, value(ln.w), o.mean, o.rstd, dln, grad(ln.w),
                                 grad(ln.b), n, d);
  ops::add<float>(ex, dx, dln, dx, n * d);
}

// d loss / d losses[i] on the device: grad_scale / counted for counted targets, else 0.
float* loss_gradients(const Exec& ex, Arena& a, const std::vector<std::int32_t>& targets,
                      std::int64_t counted, double grad_scale) {
  const float gs = static_cast<float>(grad_scale);
  std::vector<float> host(targets.size());
  for (std::size_t i = 0; i < targets.size(); ++i) {
    host[i] = targets[i] >= 0 && counted > 0 ? gs / static_cast<float>(counted) : 0.0f;
  }
  const auto n = static_cast<std::int64_t>(host.size());
  float* dloss = ops::alloc<float>(ex, a, n);
  ops::to_device<float>(ex, host.data(), dloss, n);
  return dloss;
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// Parameters

// Declares parameters in the store with the model's initialisation (docs/model.md).
struct Model::Declarer {
  Declarer(ParamStore& s, std::int64_t first, std::int64_t local, std::int64_t layers)
      : store(s),
        first_expert(first),
        local_experts(local),
        proj{InitKind::Normal,
             static_cast<float>(0.02 / std::sqrt(2.0 * static_cast<double>(layers)))} {}

  ParamStore& store;
  std::int64_t first_expert = 0;  // of this rank's expert shard
  std::int64_t local_experts = 0;
  InitSpec proj;  // residual projections: 0.02 / sqrt(2 L)
  InitSpec normal02{InitKind::Normal, 0.02f};
  InitSpec ones{InitKind::Ones, 0};
  InitSpec zeros{InitKind::Zeros, 0};

  Param* dense(const std::string& name, Shape shape, InitSpec init) const {
    return &store.declare(name, std::move(shape), init, !is_no_decay(name));
  }
  Param* expert(const std::string& name, const layers::ParamSpec& s) const {
    return &store.declare(name, s.shape, s.init, s.decay, true, first_expert, local_experts);
  }
};

Model::Model(const ModelConfig& config, comm::Communicator* ep, Exec exec)
    : config_(config),
      ep_(ep),
      exec_(exec),
      embed_(std::make_unique<Embeddings>()),
      activations_("activations", exec.device) {
  config_.validate();
  const ModelConfig& c = config_;
  const int ep_size = ep != nullptr ? ep->size() : 1;
  RM_CHECK_KIND(Config, c.n_experts % ep_size == 0,
                fmt::format("model.n_experts {} is not divisible by the expert-parallel size {}",
                            c.n_experts, ep_size));
  const Declarer decl(params_, (ep != nullptr ? ep->rank() : 0) * (c.n_experts / ep_size),
                      c.n_experts / ep_size, c.n_layers);
  embed_->wte = decl.dense("wte", {c.vocab_size, c.d_model}, decl.normal02);
  embed_->wpe = decl.dense("wpe", {c.seq_len, c.d_model}, InitSpec{InitKind::Normal, 0.01f});
  std::int64_t moe_index = 0;
  for (std::int64_t l = 0; l < c.n_layers; ++l)
    blocks_.push_back(declare_block(decl, l, moe_index));
  embed_->ln_f = {decl.dense("ln_f.weight", {c.d_model}, decl.ones),
                  decl.dense("ln_f.bias", {c.d_model}, decl.zeros)};
  params_.allocate(exec_);
  params_.initialize(c.seed);
}

std::unique_ptr<Model::Block> Model::declare_block(const Declarer& decl, std::int64_t layer,
                                                   std::int64_t& moe_index) {
  const ModelConfig& c = config_;
  const std::int64_t d = c.d_model, F = c.d_ff, E = c.n_experts;
  auto b = std::make_unique<Block>();
  b->index = layer;
  const std::string p = fmt::format("blocks.{}.", layer);
  b->ln1 = {decl.dense(p + "ln1.weight", {d}, decl.ones),
            decl.dense(p + "ln1.bias", {d}, decl.zeros)};
  b->qkv_w = decl.dense(p + "attn.qkv.weight", {3 * d, d}, decl.normal02);
  b->qkv_b = decl.dense(p + "attn.qkv.bias", {3 * d}, decl.zeros);
  b->proj_w = decl.dense(p + "attn.proj.weight", {d, d}, decl.proj);
  b->proj_b = decl.dense(p + "attn.proj.bias", {d}, decl.zeros);
  b->ln2 = {decl.dense(p + "ln2.weight", {d}, decl.ones),
            decl.dense(p + "ln2.bias", {d}, decl.zeros)};
  if (!c.is_moe_block(layer)) {
    b->fc_w = decl.dense(p + "mlp.fc.weight", {F, d}, decl.normal02);
    b->fc_b = decl.dense(p + "mlp.fc.bias", {F}, decl.zeros);
    b->fcp_w = decl.dense(p + "mlp.proj.weight", {d, F}, decl.proj);
    b->fcp_b = decl.dense(p + "mlp.proj.bias", {d}, decl.zeros);
    return b;
  }
  const layers::RouterOptions ro{
      c.effective_router(moe_index++), c.similarity_tau,    c.similarity_causal,
      parse_graph_mix(c.graph_mix),    c.graph_self_weight, c.ac_fixed_norm};
  b->moe = std::make_unique<MoeLayer<float>>(ro, ep_);
  for (const layers::ParamSpec& s : b->moe->router().params(d, E)) {
    b->router.push_back(&params_.declare(p + "moe." + s.name, s.shape, s.init, s.decay));
  }
  const auto ex = MoeLayer<float>::expert_params(d, F, E, decl.normal02, decl.proj);
  b->w1 = decl.expert(p + "moe." + ex[0].name, ex[0]);
  b->b1 = decl.expert(p + "moe." + ex[1].name, ex[1]);
  b->w2 = decl.expert(p + "moe." + ex[2].name, ex[2]);
  b->b2 = decl.expert(p + "moe." + ex[3].name, ex[3]);
  return b;
}

Model::~Model() = default;

// ----------------------------------------------------------------------------------------------
// Entry points

StepStats Model::forward_backward(const std::int32_t* inputs, const std::int32_t* targets,
                                  std::int64_t batch, std::int64_t seq, double grad_scale) {
  return run(inputs, targets, batch, seq, true, grad_scale, nullptr, false);
}

StepStats Model::forward(const std::int32_t* inputs, const std::int32_t* targets,
                         std::int64_t batch, std::int64_t seq, float* logits, bool dropless,
                         comm::Communicator* routing_stats) {
  return run(inputs, targets, batch, seq, false, 0.0, logits, dropless, routing_stats);
}

void Model::set_timers(TimerSet* timers) {
  timers_ = timers;
  for (auto& b : blocks_) {
    if (b->moe != nullptr) b->moe->set_timers(timers);
  }
}

std::vector<RoutingView> Model::last_routing() const {
  return routing_;
}

std::vector<std::vector<layers::RouterDiagnostic>> Model::routing_diagnostics() const {
  std::vector<std::vector<layers::RouterDiagnostic>> out;
  for (const auto& b : blocks_) {
    if (b->moe != nullptr) out.push_back(b->moe->router().diagnostics(exec_));
  }
  return out;
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

double Model::step_flops(std::int64_t batch, std::int64_t seq) const {
  const ModelConfig& c = config_;
  const double B = static_cast<double>(batch), T = static_cast<double>(seq), N = B * T;
  const double d = static_cast<double>(c.d_model), F = static_cast<double>(c.d_ff);
  const double k = static_cast<double>(c.top_k);
  double fwd = 2.0 * N * d * static_cast<double>(c.vocab_size);  // tied LM head
  for (const auto& b : blocks_) {
    fwd += 2.0 * N * d * 3.0 * d + 2.0 * 2.0 * B * T * T * d + 2.0 * N * d * d;  // attention
    if (b->moe == nullptr) {
      fwd += 2.0 * 2.0 * N * d * F;
      continue;
    }
    fwd += 2.0 * 2.0 * (N * k) * d * F;  // experts
    fwd += b->moe->router().flops({batch, seq, c.d_model, c.n_experts});
  }
  return 3.0 * fwd;  // backward = 2 x forward (gradients of both operands of every product)
}

StepStats Model::run(const std::int32_t* inputs, const std::int32_t* targets, std::int64_t batch,
                     std::int64_t seq, bool backward, double grad_scale, float* logits_out,
                     bool dropless, comm::Communicator* routing_stats) {
  RM_CHECK_KIND(Shape, batch >= 1 && seq >= 1 && seq <= config_.seq_len,
                fmt::format("batch {} x seq {} (seq_len {})", batch, seq, config_.seq_len));
  activations_.reset();
  Pass pass;
  pass.batch = batch;
  pass.seq = seq;
  pass.tokens = batch * seq;
  pass.backward = backward;
  pass.dropless = dropless;
  pass.routing_stats = routing_stats;
  pass.grad_scale = grad_scale;
  pass.want_logits = logits_out != nullptr;
  pass.host_targets.assign(targets, targets + pass.tokens);
  pass.inputs = ops::alloc<std::int32_t>(exec_, activations_, pass.tokens);
  pass.targets = ops::alloc<std::int32_t>(exec_, activations_, pass.tokens);
  ops::to_device<std::int32_t>(exec_, inputs, pass.inputs, pass.tokens);
  ops::to_device<std::int32_t>(exec_, targets, pass.targets, pass.tokens);

  StepStats stats;
  embed_forward(pass);
  for (auto& b : blocks_) block_forward(*b, pass);
  head_forward(pass, stats);
  if (logits_out != nullptr) {
    ops::to_host<float>(exec_, pass.logits, logits_out, pass.tokens * config_.vocab_size);
  }
  for (std::size_t m = 0; m < pass.moe.size(); ++m) {
    const MoeLayerStats& ms = pass.moe[m];
    stats.aux_loss += config_.aux_coef_of(static_cast<std::int64_t>(m)) * ms.switch_loss +
                      config_.z_loss_coef * ms.z_loss;
  }
  stats.loss = stats.ce_loss + stats.aux_loss;
  stats.moe = std::move(pass.moe);
  routing_ = std::move(pass.routing);
  if (!backward) return stats;

  head_backward(pass);
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) block_backward(**it, pass);
  embed_backward(pass);
  return stats;
}

// ----------------------------------------------------------------------------------------------
// Forward

// x = wte[ids] + wpe[pos].
void Model::embed_forward(Pass& p) {
  const Exec& ex = exec_;
  const std::int64_t N = p.tokens, d = config_.d_model;
  std::vector<std::int32_t> pos(static_cast<std::size_t>(N));
  for (std::int64_t i = 0; i < N; ++i)
    pos[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i % p.seq);
  p.positions = ops::alloc<std::int32_t>(ex, activations_, N);
  ops::to_device<std::int32_t>(ex, pos.data(), p.positions, N);
  p.x = ops::alloc<float>(ex, activations_, N * d);
  float* tmp = ops::alloc<float>(ex, activations_, N * d);
  Phase ph(timers_, phase::kElementwise, 0.0, fbytes(5 * N * d));
  ops::gather_rows_forward<float>(ex, value(embed_->wte), p.inputs, p.x, N, config_.vocab_size, d);
  ops::gather_rows_forward<float>(ex, value(embed_->wpe), p.positions, tmp, N, config_.seq_len, d);
  ops::add<float>(ex, p.x, tmp, p.x, N * d);
}

// x += Attn(LN1(x)); x += FFN_or_MoE(LN2(x)).
void Model::block_forward(Block& b, Pass& p) {
  const Exec& ex = exec_;
  Arena& A = activations_;
  const ModelConfig& c = config_;
  const std::int64_t N = p.tokens, d = c.d_model, F = c.d_ff;
  const float eps = static_cast<float>(c.ln_eps);
  b.x_in = p.x;
  b.ln1_out = layernorm_forward(ex, A, b.ln1, p.x, N, d, eps, timers_);
  const bool want_avg = b.moe != nullptr && b.moe->router().needs_attention();
  b.avg_probs = want_avg ? ops::alloc<float>(ex, A, p.batch * p.seq * p.seq) : nullptr;
  float* attn_out = ops::alloc<float>(ex, A, N * d);
  layers::attention_forward<float>(ex, AttentionDims{p.batch, p.seq, d, c.n_heads},
                                   b.attn_weights(), b.ln1_out.y, attn_out, b.avg_probs, b.attn, A,
                                   timers_);
  b.x_mid = ops::alloc<float>(ex, A, N * d);
  {
    Phase ph(timers_, phase::kElementwise, 0.0, fbytes(3 * N * d));
    ops::add<float>(ex, p.x, attn_out, b.x_mid, N * d);
  }
  b.ln2_out = layernorm_forward(ex, A, b.ln2, b.x_mid, N, d, eps, timers_);
  float* branch = ops::alloc<float>(ex, A, N * d);
  if (b.moe != nullptr) {
    b.prev_top1 = p.prev_top1;
    b.routing_stats = p.routing_stats;
    const layers::MoeDims dims{
        p.batch, p.seq, d, F, c.n_experts, c.top_k, p.dropless ? 0.0 : c.capacity_factor};
    const std::vector<float*> rw = b.router_values();
    b.moe->router().constrain(ex, dims.router(), rw, A);
    b.moe->forward(ex, dims, b.moe_weights(), b.router_inputs(), branch, A);
    const auto& sel = b.moe->selection();
    p.prev_top1 = sel.top1;
    MoeLayerStats ms{b.index,
                     b.moe->router().kind(),
                     std::vector<std::int64_t>(c.n_experts, 0),
                     b.moe->aux().switch_loss,
                     b.moe->aux().z_loss,
                     b.moe->slots().dropped};
    std::vector<std::int32_t> top1(static_cast<std::size_t>(N));
    ops::to_host<std::int32_t>(ex, sel.top1, top1.data(), N);
    for (std::int32_t e : top1) ++ms.load[static_cast<std::size_t>(e)];
    p.moe.push_back(std::move(ms));
    p.routing.push_back({N, c.top_k, c.n_experts, sel.choice, sel.gates, b.moe->route().probs,
                         b.moe->router().feature_weights()});
  } else {
    b.fc_pre = ops::alloc<float>(ex, A, N * F);
    b.fc_act = ops::alloc<float>(ex, A, N * F);
    Phase ph(timers_, phase::kExperts, 4.0 * static_cast<double>(N * d * F));
    ops::linear_forward<float>(ex, b.ln2_out.y, value(b.fc_w), value(b.fc_b), b.fc_pre, N, d, F);
    ops::gelu_forward<float>(ex, b.fc_pre, b.fc_act, N * F);
    ops::linear_forward<float>(ex, b.fc_act, value(b.fcp_w), value(b.fcp_b), branch, N, F, d);
  }
  p.x = ops::alloc<float>(ex, A, N * d);
  Phase ph(timers_, phase::kElementwise, 0.0, fbytes(3 * N * d));
  ops::add<float>(ex, b.x_mid, branch, p.x, N * d);
}

// LN_f, logits against the tied wte, cross-entropy (targets of -1 are ignored).
void Model::head_forward(Pass& p, StepStats& stats) {
  const Exec& ex = exec_;
  const std::int64_t N = p.tokens, d = config_.d_model, V = config_.vocab_size;
  p.lnf = layernorm_forward(ex, activations_, embed_->ln_f, p.x, N, d,
                            static_cast<float>(config_.ln_eps), timers_);
  p.logits = ops::alloc<float>(ex, activations_, N * V);
  {
    Phase ph(timers_, phase::kLmHead, 2.0 * static_cast<double>(N * d * V));
    ops::linear_forward<float>(ex, p.lnf.y, value(embed_->wte), nullptr, p.logits, N, d, V);
  }
  for (const std::int32_t t : p.host_targets) p.counted += t >= 0 ? 1 : 0;
  float* losses = ops::alloc<float>(ex, activations_, N);
  p.lse = ops::alloc<float>(ex, activations_, N);
  {
    Phase ph(timers_, phase::kCrossEntropy, 0.0, fbytes(2 * N * V));
    // A training step that does not return the logits takes their gradient in the same pass
    // (into the logits' memory); otherwise the backward computes it from the saved lse.
    p.fused_ce = p.backward && !p.want_logits;
    if (p.fused_ce) {
      float* dloss = loss_gradients(ex, activations_, p.host_targets, p.counted, p.grad_scale);
      ops::cross_entropy_fused<float>(ex, p.logits, p.targets, dloss, losses, p.lse, N, V);
    } else {
      ops::cross_entropy_forward<float>(ex, p.logits, p.targets, losses, p.lse, N, V);
    }
  }
  std::vector<float> host(static_cast<std::size_t>(N));
  ops::to_host<float>(ex, losses, host.data(), N);
  double ce = 0;
  for (std::int64_t i = 0; i < N; ++i) {
    if (p.host_targets[static_cast<std::size_t>(i)] >= 0) ce += host[static_cast<std::size_t>(i)];
  }
  stats.tokens = p.counted;
  stats.ce_loss = p.counted > 0 ? ce / static_cast<double>(p.counted) : 0.0;
}

// ----------------------------------------------------------------------------------------------
// Backward

void Model::head_backward(Pass& p) {
  const Exec& ex = exec_;
  Arena& A = activations_;
  const std::int64_t N = p.tokens, d = config_.d_model, V = config_.vocab_size;
  float* dlogits = p.logits;  // fused: the forward left the gradient there
  if (!p.fused_ce) {
    float* dloss = loss_gradients(ex, A, p.host_targets, p.counted, p.grad_scale);
    dlogits = ops::alloc<float>(ex, A, N * V);
    Phase ph(timers_, phase::kCrossEntropy, 0.0, fbytes(2 * N * V));
    ops::cross_entropy_backward<float>(ex, p.logits, p.targets, p.lse, dloss, dlogits, N, V);
  }
  float* dlnf = ops::alloc<float>(ex, A, N * d);
  {
    Phase ph(timers_, phase::kLmHead, 4.0 * static_cast<double>(N * d * V));
    ops::linear_backward<float>(ex, dlogits, p.lnf.y, value(embed_->wte), dlnf, grad(embed_->wte),
                                nullptr, N, d, V);
  }
  p.dx = ops::zeros<float>(ex, A, N * d);
  p.du = ops::alloc<float>(ex, A, N * d);
  p.dln = ops::alloc<float>(ex, A, N * d);
  layernorm_backward_add(ex, embed_->ln_f, p.lnf, p.x, dlnf, p.dln, p.dx, N, d, timers_);
}

// dx (gradient of the block output) -> gradient of the block input, in place.
void Model::block_backward(Block& b, Pass& p) {
  const Exec& ex = exec_;
  Arena& A = activations_;
  const ModelConfig& c = config_;
  const std::int64_t N = p.tokens, d = c.d_model, F = c.d_ff;
  float* d_avg =
      b.avg_probs != nullptr ? ops::zeros<float>(ex, A, p.batch * p.seq * p.seq) : nullptr;
  if (b.moe != nullptr) {                                     // the branch gets dx unchanged
    const double aux = c.aux_coef_of(b.index / c.moe_every);  // block l is MoE layer l / moe_every
    const layers::MoeLossCoefs coef{aux * p.grad_scale, c.z_loss_coef * p.grad_scale};
    b.moe->backward(ex, b.moe_weights(), b.moe_grads(), b.router_inputs(), coef, p.dx, p.du, d_avg,
                    A);
  } else {
    float* dact = ops::alloc<float>(ex, A, N * F);
    Phase ph(timers_, phase::kExperts, 8.0 * static_cast<double>(N * d * F));
    ops::linear_backward<float>(ex, p.dx, b.fc_act, value(b.fcp_w), dact, grad(b.fcp_w),
                                grad(b.fcp_b), N, F, d);
    ops::gelu_backward<float>(ex, b.fc_pre, dact, dact, N * F);
    ops::linear_backward<float>(ex, dact, b.ln2_out.y, value(b.fc_w), p.du, grad(b.fc_w),
                                grad(b.fc_b), N, d, F);
  }
  layernorm_backward_add(ex, b.ln2, b.ln2_out, b.x_mid, p.du, p.dln, p.dx, N, d,
                         timers_);  // d(x_mid)
  layers::attention_backward<float>(ex, AttentionDims{p.batch, p.seq, d, c.n_heads},
                                    b.attn_weights(), b.attn_grads(), b.ln1_out.y, b.attn, p.dx,
                                    d_avg, p.du, A, timers_);
  layernorm_backward_add(ex, b.ln1, b.ln1_out, b.x_in, p.du, p.dln, p.dx, N, d,
                         timers_);  // d(x_in)
}

void Model::embed_backward(Pass& p) {
  const Exec& ex = exec_;
  const std::int64_t N = p.tokens, d = config_.d_model;
  Phase ph(timers_, phase::kElementwise, 0.0, fbytes(4 * N * d));
  ops::gather_rows_backward<float>(ex, p.dx, p.inputs, grad(embed_->wte), N, config_.vocab_size, d);
  ops::gather_rows_backward<float>(ex, p.dx, p.positions, grad(embed_->wpe), N, config_.seq_len, d);
}

}  // namespace routemoe
