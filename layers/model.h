#pragma once
// The GPT-style MoE decoder of docs/model.md on one process (fp32, CPU): parameters, forward,
// backward, losses, and the routing decisions of the last forward pass.

#include <cstdint>
#include <memory>
#include <vector>

#include "framework/arena.h"
#include "framework/model_config.h"
#include "framework/params.h"
#include "layers/attention.h"
#include "layers/moe.h"

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
  explicit Model(const ModelConfig& config, comm::Communicator* ep = nullptr);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  ~Model();

  const ModelConfig& config() const { return config_; }
  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }

  // Forward and backward of one micro-batch: inputs/targets [batch, seq] (seq <= config seq_len,
  // targets -1 = ignored). Gradients of grad_scale * loss are accumulated (+=) into the
  // parameter gradients (grad_scale = 1 / micro-batches for gradient accumulation).
  StepStats forward_backward(const std::int32_t* inputs, const std::int32_t* targets,
                             std::int64_t batch, std::int64_t seq, double grad_scale = 1.0);
  // Forward only. When logits is non-null it receives [batch, seq, vocab]. `dropless` ignores
  // the capacity factor (evaluation of routing: every slot kept).
  StepStats forward(const std::int32_t* inputs, const std::int32_t* targets, std::int64_t batch,
                    std::int64_t seq, float* logits = nullptr, bool dropless = false);

  // Routing of each MoE layer in the last forward (in MoE-layer order).
  std::vector<RoutingView> last_routing() const;
  std::vector<ArenaStats> memory_report() const;

 private:
  struct Block;
  StepStats run(const std::int32_t* inputs, const std::int32_t* targets, std::int64_t batch,
                std::int64_t seq, bool backward, double grad_scale, float* logits_out,
                bool dropless);

  ModelConfig config_;
  comm::Communicator* ep_ = nullptr;
  ParamStore params_;
  std::vector<std::unique_ptr<Block>> blocks_;
  Arena activations_;
  std::vector<RoutingView> routing_;
};

}  // namespace routemoe
