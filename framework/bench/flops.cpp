#include "framework/bench/flops.h"

namespace routemoe::bench {

// Forward FLOPs of one step (2 per multiply-add), counting the matrix products only
// (N = B·T tokens, H heads, dh = d/H, E experts, k = top_k, V = vocab):
//   every block, attention: QKV 2·N·d·3d + scores 2·B·H·T·T·dh (= 2·B·T²·d) + P·V 2·B·T²·d
//     + output projection 2·N·d·d. The full T×T products are counted (no causal halving).
//   MoE block, experts: (FC1 + FC2) over the N·k routed slots (dropless) = 2 · 2·(N·k)·d·d_ff.
//   MoE block, router: gate logits 2·N·d·E (topk, similarity, attention, and ac on the first
//     MoE layer, which routes with topk); similarity adds S = U·Uᵀ per sequence 2·B·T²·d and
//     p̃ = S·p 2·B·T²·E; attention adds p̃ = Ā·p 2·B·T²·E; ac scores (u⊙M)·êᵀ 2·N·d·E.
//   dense block: 2 · 2·N·d·d_ff.   LM head (tied): 2·N·d·V.
// A training step = forward + backward, backward = 2 × forward (gradients with respect to
// both operands of every product), so step FLOPs = 3 × forward FLOPs. Element-wise work
// (LayerNorm, GELU, softmax, AdamW) is not counted.
double model_step_flops(const ModelConfig& c, std::int64_t batch) {
  const double B = static_cast<double>(batch), T = static_cast<double>(c.seq_len);
  const double N = B * T, d = static_cast<double>(c.d_model), F = static_cast<double>(c.d_ff);
  const double E = static_cast<double>(c.n_experts), k = static_cast<double>(c.top_k);
  const double V = static_cast<double>(c.vocab_size);
  double fwd = 2.0 * N * d * V;  // LM head
  std::int64_t moe_layer = 0;
  for (std::int64_t l = 0; l < c.n_layers; ++l) {
    fwd += 2.0 * N * d * 3.0 * d + 2.0 * 2.0 * B * T * T * d + 2.0 * N * d * d;
    if (!c.is_moe_block(l)) {
      fwd += 2.0 * 2.0 * N * d * F;
      continue;
    }
    fwd += 2.0 * 2.0 * (N * k) * d * F;
    switch (c.effective_router(moe_layer++)) {
      case RouterKind::TopK:
        fwd += 2.0 * N * d * E;
        break;
      case RouterKind::Similarity:
        fwd += 2.0 * N * d * E + 2.0 * B * T * T * d + 2.0 * B * T * T * E;
        break;
      case RouterKind::Attention:
        fwd += 2.0 * N * d * E + 2.0 * B * T * T * E;
        break;
      case RouterKind::AC:
        fwd += 2.0 * N * d * E;
        break;
    }
  }
  return 3.0 * fwd;
}

}  // namespace routemoe::bench
