#pragma once
// The GPT-style MoE decoder of docs/model.md: parameters, forward, backward, losses, and the
// routing decisions of the last forward pass. Runs in fp32 through the device seam
// (framework/ops.h) on the Exec it is given.

#include <cstdint>
#include <memory>
#include <vector>

#include "framework/arena.h"
#include "framework/exec.h"
#include "framework/model_config.h"
#include "framework/params.h"
#include "framework/timer.h"
#include "layers/routers/router.h"

namespace routemoe {

namespace comm {
class Communicator;
}

struct MoeLayerStats {
  std::int64_t layer = 0;  // block index
  RouterKind router = RouterKind::TopK;
  std::vector<std::int64_t> load;  // tokens whose first choice is each expert
  double switch_loss = 0.0;
  double z_loss = 0.0;
  std::int64_t dropped = 0;  // slots dropped by the capacity limit
};

struct StepStats {
  double loss = 0.0;        // ce_loss + aux_loss
  double ce_loss = 0.0;     // mean cross-entropy over non-ignored targets
  double aux_loss = 0.0;    // aux_coef * sum switch + z_coef * sum z
  std::int64_t tokens = 0;  // non-ignored targets
  std::vector<MoeLayerStats> moe;
};

// Routing decision of one MoE layer for the tokens of the last forward (views into the
// model's activation arena, valid until the next forward).
struct RoutingView {
  std::int64_t tokens = 0;
  std::int64_t top_k = 0;
  std::int64_t experts = 0;
  const std::int32_t* choice = nullptr;  // [N, k]
  const float* gates = nullptr;          // [N, k]
  const float* probs = nullptr;          // [N, E] routing probabilities r
  const float* ac_scale = nullptr;       // [N, d] AC feature weights (ac router), else null
};

class Model {
 public:
  // `ep`: the expert-parallel group (null: all experts on this process). The model holds
  // experts [rank*E/P, (rank+1)*E/P) of every MoE layer; forward/backward are collective over ep.
  explicit Model(const ModelConfig& config, comm::Communicator* ep = nullptr,
                 Exec exec = Exec::cpu());
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  ~Model();

  const ModelConfig& config() const { return config_; }
  const Exec& exec() const { return exec_; }
  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }

  // Forward and backward of one micro-batch: inputs/targets [batch, seq] (seq <= config seq_len,
  // targets -1 = ignored). Gradients of grad_scale * loss are accumulated (+=) into the
  // parameter gradients (grad_scale = 1 / micro-batches for gradient accumulation).
  StepStats forward_backward(const std::int32_t* inputs, const std::int32_t* targets,
                             std::int64_t batch, std::int64_t seq, double grad_scale = 1.0);
  // Forward only. When logits is non-null it receives [batch, seq, vocab]. `dropless` ignores
  // the capacity factor (evaluation of routing: every slot kept). `routing_stats` non-null
  // (evaluation routing of the probe set): router statistics over several tokens (the AC
  // weights) are taken over the tokens of all ranks of that group, so that the routing does not
  // depend on how the sequences are split over ranks (collective over it; every rank passes the
  // same batch and seq). Null: over this call's tokens, as in training.
  StepStats forward(const std::int32_t* inputs, const std::int32_t* targets, std::int64_t batch,
                    std::int64_t seq, float* logits = nullptr, bool dropless = false,
                    comm::Communicator* routing_stats = nullptr);

  // Profile: the phases (framework/timer.h, namespace phase) of every later forward/backward
  // are added to `timers`, which must outlive its use; null (the default) turns it off.
  void set_timers(TimerSet* timers);

  // Routing of each MoE layer in the last forward (in MoE-layer order).
  std::vector<RoutingView> last_routing() const;
  // Each MoE layer's router diagnostics of the last forward (in MoE-layer order; empty for
  // routers without any), valid until the next forward.
  std::vector<std::vector<layers::RouterDiagnostic>> routing_diagnostics() const;
  std::vector<ArenaStats> memory_report() const;
  // GEMM floating-point operations of one training step (forward + backward = 3 x forward) on
  // `batch` sequences of `seq` tokens; elementwise work is not counted.
  double step_flops(std::int64_t batch, std::int64_t seq) const;

 private:
  struct Block;
  struct Embeddings;
  struct Pass;
  struct Declarer;
  std::unique_ptr<Block> declare_block(const Declarer& decl, std::int64_t layer,
                                       std::int64_t& moe_index);
  void embed_forward(Pass& pass);
  void block_forward(Block& b, Pass& pass);
  void head_forward(Pass& pass, StepStats& stats);
  void head_backward(Pass& pass);
  void block_backward(Block& b, Pass& pass);
  void embed_backward(Pass& pass);
  StepStats run(const std::int32_t* inputs, const std::int32_t* targets, std::int64_t batch,
                std::int64_t seq, bool backward, double grad_scale, float* logits_out,
                bool dropless, comm::Communicator* routing_stats = nullptr);

  ModelConfig config_;
  comm::Communicator* ep_ = nullptr;
  Exec exec_;
  ParamStore params_;
  std::unique_ptr<Embeddings> embed_;
  std::vector<std::unique_ptr<Block>> blocks_;
  Arena activations_;
  std::vector<RoutingView> routing_;
  TimerSet* timers_ = nullptr;
};

}  // namespace routemoe
