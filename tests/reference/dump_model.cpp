// Writes a reference dump (tests/reference/README.md) of the C++ model: initial parameters,
// one batch, its logits, losses, every parameter gradient and the routing; then a short AdamW
// trajectory. check_parity.py recomputes all of it with the independent PyTorch model.
//
//   dump_model --out DUMP.h5 --router topk [--routers topk,ac] [--moe-every 1] [--capacity 0]
//              [--tau 1] [--causal true] [--graph-mix probs|logits] [--graph-self-weight 0]
//              [--ac-fixed-norm 0] [--aux-coef-<router> -1] [--steps 10] [--seed 7]

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "framework/error.h"
#include "framework/h5.h"
#include "framework/optim.h"
#include "framework/rng.h"
#include "layers/model.h"

using namespace routemoe;

namespace {

std::string config_json(const ModelConfig& m, const OptimConfig& o, std::int64_t steps) {
  std::string routers;
  for (const std::string& r : m.expanded_routers())
    routers += fmt::format("{}\"{}\"", routers.empty() ? "" : ", ", r);
  return fmt::format(
      "{{\"vocab_size\": {}, \"seq_len\": {}, \"d_model\": {}, \"n_heads\": {}, \"n_layers\": {}, "
      "\"d_ff\": {}, \"n_experts\": {}, \"top_k\": {}, \"moe_every\": {}, \"routers\": [{}], "
      "\"capacity_factor\": {}, \"similarity_tau\": {}, \"similarity_causal\": {}, "
      "\"aux_loss_coef\": {}, \"z_loss_coef\": {}, \"ln_eps\": {}, \"lr\": {}, \"lr_min\": {}, "
      "\"warmup\": {}, \"steps\": {}, \"beta1\": {}, \"beta2\": {}, \"eps\": {}, "
      "\"weight_decay\": {}, \"grad_clip\": {}, \"aux_loss_coef_topk\": {}, "
      "\"aux_loss_coef_similarity\": {}, \"aux_loss_coef_attention\": {}, "
      "\"aux_loss_coef_ac\": {}, \"ac_fixed_norm\": {}, \"graph_mix\": \"{}\", "
      "\"graph_self_weight\": {}}}",
      m.vocab_size, m.seq_len, m.d_model, m.n_heads, m.n_layers, m.d_ff, m.n_experts, m.top_k,
      m.moe_every, routers, m.capacity_factor, m.similarity_tau,
      m.similarity_causal ? "true" : "false", m.aux_loss_coef, m.z_loss_coef, m.ln_eps, o.lr,
      o.lr_min, o.warmup, steps, o.beta1, o.beta2, o.eps, o.weight_decay, o.grad_clip,
      m.aux_loss_coef_topk, m.aux_loss_coef_similarity, m.aux_loss_coef_attention,
      m.aux_loss_coef_ac, m.ac_fixed_norm, m.graph_mix, m.graph_self_weight);
}

// Token batch drawn from Philox; a few targets are ignored (-1) to exercise that path.
void make_batch(std::uint64_t seed, std::uint64_t stream, std::int64_t n, std::int64_t vocab,
                std::vector<std::int32_t>& inputs, std::vector<std::int32_t>& targets) {
  Philox rng(seed, stream);
  inputs.resize(static_cast<std::size_t>(n));
  targets.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    inputs[static_cast<std::size_t>(i)] =
        static_cast<std::int32_t>(rng.next_below(static_cast<std::uint64_t>(vocab)));
    targets[static_cast<std::size_t>(i)] =
        i % 7 == 3 ? -1
                   : static_cast<std::int32_t>(rng.next_below(static_cast<std::uint64_t>(vocab)));
  }
}

void write_params(h5::File& f, const std::string& group, const ParamStore& ps, bool grads) {
  for (const Param& p : ps.params()) {
    const Tensor& t = grads ? p.grad : p.value;
    f.write_f32(group + "/" + p.name, t.data<float>(), p.local_shape);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"write a C++ reference dump for tests/reference/check_parity.py"};
  std::string out, router = "topk", routers;
  ModelConfig mc;
  mc.vocab_size = 32;
  mc.seq_len = 8;
  mc.d_model = 16;
  mc.n_heads = 2;
  mc.n_layers = 3;
  mc.d_ff = 24;
  mc.n_experts = 4;
  mc.top_k = 2;
  mc.aux_loss_coef = 0.01;
  mc.z_loss_coef = 0.001;
  OptimConfig oc;
  oc.lr = 3e-3;
  oc.lr_min = 3e-4;
  oc.warmup = 3;
  oc.weight_decay = 0.1;
  oc.grad_clip = 1.0;
  std::int64_t steps = 10, batch = 3;
  std::uint64_t seed = 7;
  app.add_option("--out", out, "output HDF5 file")->required();
  app.add_option("--router", router, "router for every MoE layer");
  app.add_option("--routers", routers, "comma-separated router per MoE layer (overrides --router)");
  app.add_option("--moe-every", mc.moe_every, "MoE placement");
  app.add_option("--layers", mc.n_layers, "blocks");
  app.add_option("--top-k", mc.top_k, "experts per token");
  app.add_option("--capacity", mc.capacity_factor, "capacity factor (<= 0: dropless)");
  app.add_option("--causal", mc.similarity_causal, "similarity graph causal");
  app.add_option("--tau", mc.similarity_tau, "similarity temperature tau (> 0)");
  app.add_option("--graph-mix", mc.graph_mix, "graph routers mix probs or logits");
  app.add_option("--graph-self-weight", mc.graph_self_weight, "graph routers' self-weight alpha");
  app.add_option("--ac-fixed-norm", mc.ac_fixed_norm, "ac expert embedding norm (0: free)");
  app.add_option("--aux-coef-topk", mc.aux_loss_coef_topk, "Switch coefficient of topk layers");
  app.add_option("--aux-coef-similarity", mc.aux_loss_coef_similarity,
                 "Switch coefficient of similarity layers");
  app.add_option("--aux-coef-attention", mc.aux_loss_coef_attention,
                 "Switch coefficient of attention layers");
  app.add_option("--aux-coef-ac", mc.aux_loss_coef_ac, "Switch coefficient of ac layers");
  app.add_option("--steps", steps, "AdamW steps in the trajectory");
  app.add_option("--batch", batch, "sequences per batch");
  app.add_option("--seed", seed, "initialisation and data seed");
  CLI11_PARSE(app, argc, argv);
  try {
    mc.seed = seed;
    if (!routers.empty()) {
      mc.routers.clear();
      std::size_t start = 0;
      while (start <= routers.size()) {
        const std::size_t comma = routers.find(',', start);
        mc.routers.push_back(
            routers.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else {
      mc.routers = {router};
    }
    Model model(mc);
    const std::int64_t T = mc.seq_len, N = batch * T;
    h5::File f = h5::File::create(out);
    f.set_attr("/", "config", config_json(mc, oc, steps));
    write_params(f, "/params", model.params(), false);

    std::vector<std::int32_t> inputs, targets;
    make_batch(seed, 1000, N, mc.vocab_size, inputs, targets);
    f.write_i32("/batch/inputs", inputs.data(), {batch, T});
    f.write_i32("/batch/targets", targets.data(), {batch, T});
    std::vector<float> logits(static_cast<std::size_t>(N * mc.vocab_size));
    model.forward(inputs.data(), targets.data(), batch, T, logits.data());
    model.params().zero_grads();
    const StepStats s = model.forward_backward(inputs.data(), targets.data(), batch, T);
    f.write_f32("/out/logits", logits.data(), {batch, T, mc.vocab_size});
    f.write_scalar("/out/loss", s.loss);
    f.write_scalar("/out/ce_loss", s.ce_loss);
    f.write_scalar("/out/aux_loss", s.aux_loss);
    write_params(f, "/grads", model.params(), true);
    const std::vector<RoutingView> routing = model.last_routing();
    for (std::size_t m = 0; m < routing.size(); ++m) {
      const RoutingView& r = routing[m];
      f.write_i32(fmt::format("/routing/layer{}/experts", m), r.choice, {r.tokens, r.top_k});
      f.write_f32(fmt::format("/routing/layer{}/gates", m), r.gates, {r.tokens, r.top_k});
    }

    if (steps > 0) {
      AdamW opt(model.params(), oc);
      std::vector<std::int32_t> all_in, all_tg;
      std::vector<double> losses;
      for (std::int64_t step = 0; step < steps; ++step) {
        make_batch(seed, 2000 + static_cast<std::uint64_t>(step), N, mc.vocab_size, inputs,
                   targets);
        all_in.insert(all_in.end(), inputs.begin(), inputs.end());
        all_tg.insert(all_tg.end(), targets.begin(), targets.end());
        model.params().zero_grads();
        const StepStats st = model.forward_backward(inputs.data(), targets.data(), batch, T);
        losses.push_back(st.loss);
        const double norm = std::sqrt(local_grad_sq_norm(model.params()));
        clip_grads(model.params(), oc.grad_clip, norm);
        opt.step(lr_at(oc, step, steps));
      }
      f.write_i32("/train/inputs", all_in.data(), {steps, batch, T});
      f.write_i32("/train/targets", all_tg.data(), {steps, batch, T});
      std::vector<float> lf(losses.begin(), losses.end());
      f.write_f32("/train/losses", lf.data(), {steps});
      write_params(f, "/train/final", model.params(), false);
    }
    f.close();
    std::printf("dump_model: wrote %s (loss %.6f, %zu MoE layers)\n", out.c_str(), s.loss,
                routing.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dump_model: %s\n", e.what());
    return 1;
  }
  return 0;
}
