// MoE layer and attention: gradient checks by central finite differences through the whole
// layer for each router and each documented router option (double instantiation), the options'
// own effects (the AC fixed norm, the graph diagnostics), and routing edge cases.
//
// Tolerance reasoning (double): the objective is L = sum(r .* y) + aux_coef * switch +
// z_coef * z with O(1) terms. Central differences with h = 1e-6 have truncation error
// O(h^2 |L'''|) ~ 1e-12 and round-off ~ eps64 |L| / h ~ 1e-10, so analytic and numeric
// derivatives must agree to |fd - an| <= 1e-6 (1 + |an|): a wrong term (a missing factor, a
// transposed matrix) is off by O(1e-2..1) and fails by orders of magnitude. Top-k selection and
// f_e are piecewise constant; the random inputs keep every selection margin far above h.

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "framework/arena.h"
#include "framework/cpu/moe_kernels.h"
#include "layers/attention.h"
#include "layers/moe.h"

namespace routemoe::layers {
namespace {

using Vec = std::vector<double>;

Vec random_vec(std::mt19937& rng, std::size_t n, double scale) {
  std::normal_distribution<double> dist(0.0, scale);
  Vec v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

// Compares the analytic gradient `an` of f at x against central differences, element by element.
void expect_grad(const std::string& what, Vec& x, const Vec& an, const std::function<double()>& f) {
  ASSERT_EQ(x.size(), an.size()) << what;
  const double h = 1e-6;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double fp = f();
    x[i] = keep - h;
    const double fm = f();
    x[i] = keep;
    const double fd = (fp - fm) / (2 * h);
    ASSERT_NEAR(fd, an[i], 1e-6 * (1 + std::abs(an[i]))) << what << "[" << i << "]";
  }
}

struct MoeCase {
  RouterKind kind;
  bool causal = true;
  double capacity = 0.0;
  std::int64_t top_k = 2;
  const char* name;
  GraphMix mix = GraphMix::Probs;  // graph routers: mix probabilities or logits
  double self_weight = 0.0;        // graph routers: alpha
  double fixed_norm = 0.0;         // ac: expert embeddings held at this norm
};

class MoeGradient : public ::testing::TestWithParam<MoeCase> {};

TEST_P(MoeGradient, MatchesFiniteDifferences) {
  const MoeCase tc = GetParam();
  MoeDims dims{2, 5, 6, 7, 4, tc.top_k, tc.capacity};
  const RouterOptions opts{tc.kind, 0.7, tc.causal, tc.mix, tc.self_weight, tc.fixed_norm};
  const MoeLossCoefs coef{0.3, 0.2};
  const Exec ex = Exec::cpu();
  const std::int64_t N = dims.tokens(), d = dims.d, E = dims.experts, F = dims.d_ff, B = dims.batch,
                     T = dims.seq;
  std::mt19937 rng(1234);
  Vec u = random_vec(rng, N * d, 1.0), gate = random_vec(rng, E * d, 0.8),
      emb = random_vec(rng, E * d, 0.5), w1 = random_vec(rng, E * F * d, 0.4),
      b1 = random_vec(rng, E * F, 0.1), w2 = random_vec(rng, E * d * F, 0.4),
      b2 = random_vec(rng, E * d, 0.1), r = random_vec(rng, N * d, 1.0);
  // Attention probabilities: causal rows summing to one.
  Vec avg(B * T * T, 0.0);
  std::uniform_real_distribution<double> uni(0.1, 1.0);
  for (std::int64_t row = 0; row < B * T; ++row) {
    const std::int64_t i = row % T;
    double s = 0;
    for (std::int64_t j = 0; j <= i; ++j) s += avg[row * T + j] = uni(rng);
    for (std::int64_t j = 0; j <= i; ++j) avg[row * T + j] /= s;
  }
  std::vector<std::int32_t> prev(N);
  for (std::int64_t i = 0; i < N; ++i)
    prev[i] = static_cast<std::int32_t>((i * 7 + 3) % (E - 1));  // expert E-1 empty
  // AC feature weights held fixed, as in the backward (M carries no gradient).
  Vec scale(N * d);
  Arena arena("test", Device::CPU);
  ac_feature_weights<double>(ex, dims.router(), u.data(), prev.data(), scale.data(), arena);

  MoeLayer<double> layer(opts, nullptr);
  if (tc.fixed_norm > 0) {
    // What the model does before every forward: the embeddings are put on the sphere of radius
    // r (the gradient is checked there; the scores use e / |e| and do not change).
    layer.router().constrain(ex, dims.router(), std::vector<double*>{emb.data()}, arena);
    for (std::int64_t e = 0; e < E; ++e) {
      double s = 0;
      for (std::int64_t f = 0; f < d; ++f) s += emb[e * d + f] * emb[e * d + f];
      EXPECT_NEAR(std::sqrt(s), tc.fixed_norm, 1e-12) << "expert " << e;
    }
    EXPECT_FALSE(layer.router().params(d, E)[0].decay) << "a fixed-norm embedding must not decay";
  }
  auto weights = [&] {
    MoeWeights<double> w;
    w.router = {tc.kind == RouterKind::AC ? emb.data() : gate.data()};
    w.w1 = w1.data();
    w.b1 = b1.data();
    w.w2 = w2.data();
    w.b2 = b2.data();
    return w;
  };
  const double* ac = tc.kind == RouterKind::AC ? scale.data() : nullptr;
  auto inputs = [&] { return RouterInputs<double>{u.data(), avg.data(), prev.data(), ac}; };
  auto objective = [&] {
    arena.reset();
    Vec y(N * d);
    layer.forward(ex, dims, weights(), inputs(), y.data(), arena);
    double L = coef.aux * layer.aux().switch_loss + coef.z * layer.aux().z_loss;
    for (std::int64_t i = 0; i < N * d; ++i) L += r[i] * y[i];
    return L;
  };
  // Analytic gradients.
  arena.reset();
  Vec y(N * d);
  layer.forward(ex, dims, weights(), inputs(), y.data(), arena);
  if (tc.capacity > 0) {
    EXPECT_GT(layer.slots().dropped, 0) << "the capacity case must drop slots";
  }
  Vec du(N * d), dgate(E * d, 0.0), demb(E * d, 0.0), dw1(E * F * d, 0.0), db1(E * F, 0.0),
      dw2(E * d * F, 0.0), db2(E * d, 0.0), davg(B * T * T, 0.0);
  MoeGrads<double> g{{tc.kind == RouterKind::AC ? demb.data() : dgate.data()},
                     dw1.data(),
                     db1.data(),
                     dw2.data(),
                     db2.data()};
  layer.backward(ex, weights(), g, inputs(), coef, r.data(), du.data(), davg.data(), arena);

  expect_grad("u", u, du, objective);
  expect_grad("w1", w1, dw1, objective);
  expect_grad("b1", b1, db1, objective);
  expect_grad("w2", w2, dw2, objective);
  expect_grad("b2", b2, db2, objective);
  if (tc.kind == RouterKind::AC) {
    expect_grad("expert_emb", emb, demb, objective);
  } else {
    expect_grad("gate", gate, dgate, objective);
  }
  if (tc.kind == RouterKind::Attention) expect_grad("attn_avg", avg, davg, objective);
}

INSTANTIATE_TEST_SUITE_P(
    Routers, MoeGradient,
    ::testing::Values(
        MoeCase{RouterKind::TopK, true, 0.0, 2, "topk"},
        MoeCase{RouterKind::TopK, true, 0.0, 1, "topk_k1"},
        MoeCase{RouterKind::TopK, true, 0.0, 4, "topk_kE"},
        MoeCase{RouterKind::TopK, true, 0.6, 2, "topk_capacity"},
        MoeCase{RouterKind::Similarity, true, 0.0, 2, "similarity"},
        MoeCase{RouterKind::Similarity, false, 0.0, 2, "similarity_noncausal"},
        MoeCase{RouterKind::Attention, true, 0.0, 2, "attention"},
        MoeCase{RouterKind::AC, true, 0.0, 2, "ac"},
        MoeCase{RouterKind::AC, true, 0.6, 2, "ac_capacity"},
        MoeCase{RouterKind::Similarity, true, 0.0, 2, "similarity_logits", GraphMix::Logits},
        MoeCase{RouterKind::Similarity, true, 0.0, 2, "similarity_self_weight", GraphMix::Probs,
                0.3},
        MoeCase{RouterKind::Similarity, false, 0.0, 2, "similarity_logits_self_weight_noncausal",
                GraphMix::Logits, 0.3},
        MoeCase{RouterKind::Attention, true, 0.0, 2, "attention_logits", GraphMix::Logits},
        MoeCase{RouterKind::Attention, true, 0.0, 2, "attention_self_weight", GraphMix::Probs, 0.3},
        MoeCase{RouterKind::Attention, true, 0.0, 2, "attention_logits_self_weight",
                GraphMix::Logits, 0.6},
        MoeCase{RouterKind::AC, true, 0.0, 2, "ac_fixed_norm", GraphMix::Probs, 0.0, 1.5}),
    [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// Router options: what they change besides the gradients checked above.

// The AC fixed norm rescales each embedding row to norm r in place, direction unchanged.
TEST(AcFixedNorm, ConstrainRescalesEveryEmbeddingToTheNormAndKeepsItsDirection) {
  const RouterDims dims{1, 1, 3, 2};
  Vec emb = {3, 0, 4, 0, 0.5, 0};  // norms 5 and 0.5
  Arena arena("test", Device::CPU);
  auto router =
      make_router<double>(RouterOptions{RouterKind::AC, 1.0, true, GraphMix::Probs, 0.0, 1.5});
  router->constrain(Exec::cpu(), dims, std::vector<double*>{emb.data()}, arena);
  const Vec want = {0.9, 0, 1.2, 0, 1.5, 0};  // 1.5 * (3, 0, 4) / 5 and 1.5 * (0, 1, 0)
  for (std::size_t i = 0; i < emb.size(); ++i) EXPECT_NEAR(emb[i], want[i], 1e-15) << i;
  // Off (0): untouched, and the embeddings decay as before.
  auto free_router = make_router<double>(RouterOptions{RouterKind::AC});
  Vec emb2 = {3, 0, 4, 0, 0.5, 0};
  free_router->constrain(Exec::cpu(), dims, std::vector<double*>{emb2.data()}, arena);
  EXPECT_EQ(emb2, (Vec{3, 0, 4, 0, 0.5, 0}));
  EXPECT_TRUE(free_router->params(3, 2)[0].decay);
}

// Diagnostics of the mixing matrix alpha I + (1 - alpha) A, here with the attention router and a
// hand-made causal A of one sequence of 3 tokens, uniform over each prefix:
//   A = [1 0 0; 1/2 1/2 0; 1/3 1/3 1/3].
// alpha = 0: self-weights 1, 1/2, 1/3; entropies 0, ln 2, ln 3; effective neighbours 1, 2, 3;
//   normalised entropies (rows with >= 2 tokens) ln 2 / ln 2 = 1, ln 3 / ln 3 = 1.
// alpha = 1/2: M = [1 0 0; 3/4 1/4 0; 2/3 1/6 1/6]; self-weights 1, 3/4, 2/3; entropies 0,
//   h1 = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623, h2 = -(2/3 ln 2/3 + 2 (1/6) ln 1/6) = 0.8676.
TEST(GraphDiagnostics, MixingMatrixSelfWeightEntropyAndNeighbours) {
  const MoeDims dims{1, 3, 2, 2, 2, 1, 0.0};
  const Vec u = {1, 0, 0, 1, 1, 1}, gate = {1, 0, 0, 1}, w1(2 * 2 * 2, 0.1), b1(2 * 2, 0.0),
            w2(2 * 2 * 2, 0.1), b2(2 * 2, 0.0);
  const Vec avg = {1, 0, 0, 0.5, 0.5, 0, 1.0 / 3, 1.0 / 3, 1.0 / 3};
  const auto diag = [&](double alpha) {
    Arena arena("test", Device::CPU);
    MoeLayer<double> layer(RouterOptions{RouterKind::Attention, 1.0, true, GraphMix::Probs, alpha},
                           nullptr);
    Vec y(3 * 2);
    layer.forward(Exec::cpu(), dims,
                  MoeWeights<double>{{gate.data()}, w1.data(), b1.data(), w2.data(), b2.data()},
                  RouterInputs<double>{u.data(), avg.data()}, y.data(), arena);
    std::map<std::string, double> mean;
    for (const RouterDiagnostic& r : layer.router().diagnostics(Exec::cpu()))
      mean[r.name] = r.sum / r.count;
    return mean;
  };
  const double l2 = std::log(2.0), l3 = std::log(3.0);
  auto m0 = diag(0.0);
  EXPECT_NEAR(m0["self_weight"], (1 + 0.5 + 1.0 / 3) / 3, 1e-12);
  EXPECT_NEAR(m0["entropy"], (l2 + l3) / 3, 1e-12);
  EXPECT_NEAR(m0["neighbours"], 2.0, 1e-12);
  EXPECT_NEAR(m0["entropy_norm"], 1.0, 1e-12);
  auto m5 = diag(0.5);
  const double h1 = -(0.75 * std::log(0.75) + 0.25 * std::log(0.25));
  const double h2 = -(2.0 / 3 * std::log(2.0 / 3) + 2.0 / 6 * std::log(1.0 / 6));
  EXPECT_NEAR(m5["self_weight"], (1 + 0.75 + 2.0 / 3) / 3, 1e-12);
  EXPECT_NEAR(m5["entropy"], (h1 + h2) / 3, 1e-12);
  EXPECT_NEAR(m5["neighbours"], (1 + std::exp(h1) + std::exp(h2)) / 3, 1e-12);
  EXPECT_NEAR(m5["entropy_norm"], (h1 / l2 + h2 / l3) / 2, 1e-12);
  // topk has no graph: no diagnostics.
  auto topk = make_router<double>(RouterOptions{RouterKind::TopK});
  EXPECT_TRUE(topk->diagnostics(Exec::cpu()).empty());
}

// alpha = 1 makes the graph routers route like topk: p~ = p (probabilities) and
// softmax(z) = p (logits).
TEST(GraphMixing, FullSelfWeightRoutesLikeTopk) {
  const MoeDims dims{2, 4, 3, 2, 4, 2, 0.0};
  std::mt19937 rng(3);
  const Vec u = random_vec(rng, 8 * 3, 1.0), gate = random_vec(rng, 4 * 3, 1.0), w1(4 * 2 * 3, 0.1),
            b1(4 * 2, 0.0), w2(4 * 3 * 2, 0.1), b2(4 * 3, 0.0);
  const MoeWeights<double> w{{gate.data()}, w1.data(), b1.data(), w2.data(), b2.data()};
  Arena arena("test", Device::CPU);
  Vec y(8 * 3);
  MoeLayer<double> topk(RouterOptions{RouterKind::TopK}, nullptr);
  topk.forward(Exec::cpu(), dims, w, RouterInputs<double>{u.data()}, y.data(), arena);
  for (GraphMix mix : {GraphMix::Probs, GraphMix::Logits}) {
    MoeLayer<double> sim(RouterOptions{RouterKind::Similarity, 1.0, true, mix, 1.0}, nullptr);
    sim.forward(Exec::cpu(), dims, w, RouterInputs<double>{u.data()}, y.data(), arena);
    for (std::int64_t i = 0; i < 8 * 4; ++i)
      EXPECT_NEAR(sim.route().probs[i], topk.route().probs[i], 1e-14) << i;
  }
}

TEST(AttentionGradient, MatchesFiniteDifferencesIncludingAveragedProbabilities) {
  AttentionDims dims{2, 5, 8, 2};
  const std::int64_t N = dims.tokens(), d = dims.d, B = dims.batch, T = dims.seq;
  std::mt19937 rng(99);
  Vec h = random_vec(rng, N * d, 1.0), qkv_w = random_vec(rng, 3 * d * d, 0.4),
      qkv_b = random_vec(rng, 3 * d, 0.1), proj_w = random_vec(rng, d * d, 0.4),
      proj_b = random_vec(rng, d, 0.1), r = random_vec(rng, N * d, 1.0),
      ra = random_vec(rng, B * T * T, 1.0);
  Arena arena("test", Device::CPU);
  auto w = [&] {
    return AttentionWeights<double>{qkv_w.data(), qkv_b.data(), proj_w.data(), proj_b.data()};
  };
  auto objective = [&] {
    arena.reset();
    AttentionCache<double> cache;
    Vec out(N * d), avg(B * T * T);
    attention_forward<double>(Exec::cpu(), dims, w(), h.data(), out.data(), avg.data(), cache,
                              arena);
    double L = 0;
    for (std::int64_t i = 0; i < N * d; ++i) L += r[i] * out[i];
    for (std::int64_t i = 0; i < B * T * T; ++i) L += ra[i] * avg[i];
    return L;
  };
  arena.reset();
  AttentionCache<double> cache;
  Vec out(N * d), avg(B * T * T);
  attention_forward<double>(Exec::cpu(), dims, w(), h.data(), out.data(), avg.data(), cache, arena);
  // Causality: averaged probabilities vanish above the diagonal, rows sum to one.
  for (std::int64_t row = 0; row < B * T; ++row) {
    double s = 0;
    for (std::int64_t j = 0; j < T; ++j) {
      if (j > row % T) {
        EXPECT_EQ(avg[row * T + j], 0.0);
      }
      s += avg[row * T + j];
    }
    EXPECT_NEAR(s, 1.0, 1e-12);
  }
  Vec dh(N * d), dqkv_w(3 * d * d, 0.0), dqkv_b(3 * d, 0.0), dproj_w(d * d, 0.0), dproj_b(d, 0.0);
  attention_backward<double>(Exec::cpu(), dims, w(),
                             {dqkv_w.data(), dqkv_b.data(), dproj_w.data(), dproj_b.data()},
                             h.data(), cache, r.data(), ra.data(), dh.data(), arena);
  expect_grad("h", h, dh, objective);
  expect_grad("qkv_w", qkv_w, dqkv_w, objective);
  expect_grad("qkv_b", qkv_b, dqkv_b, objective);
  expect_grad("proj_w", proj_w, dproj_w, objective);
  expect_grad("proj_b", proj_b, dproj_b, objective);
}

// ---------------------------------------------------------------------------------------------
// Routing edge cases (float, the production instantiation).

struct Routed {
  std::vector<std::int32_t> choice;
  std::vector<float> gates;
  std::vector<std::uint8_t> kept;
  std::vector<std::int64_t> offsets;
  std::vector<float> y;
};

Routed route(const MoeDims& dims, RouterKind kind, const std::vector<float>& u,
             const std::vector<float>& gate) {
  const std::int64_t N = dims.tokens(), d = dims.d, E = dims.experts, F = dims.d_ff, K = dims.top_k;
  std::vector<float> w1(E * F * d, 0.01f), b1(E * F, 0.0f), w2(E * d * F, 0.01f), b2(E * d, 0.0f);
  for (std::int64_t e = 0; e < E; ++e)
    b2[e * d] = static_cast<float>(e + 1);  // expert e adds e+1 to feature 0
  Arena arena("test", Device::CPU);
  MoeLayer<float> layer(RouterOptions{kind, 1.0, true}, nullptr);
  Routed out;
  out.y.resize(N * d);
  MoeWeights<float> w{{gate.data()}, w1.data(), b1.data(), w2.data(), b2.data()};
  layer.forward(Exec::cpu(), dims, w, RouterInputs<float>{u.data()}, out.y.data(), arena);
  const Selection<float>& sel = layer.selection();
  out.choice.assign(sel.choice, sel.choice + N * K);
  out.gates.assign(sel.gates, sel.gates + N * K);
  out.kept.assign(layer.slots().kept, layer.slots().kept + N * K);
  out.offsets.assign(layer.slots().expert_offset, layer.slots().expert_offset + E + 1);
  return out;
}

TEST(Routing, TiesGoToTheLowerExpertIndex) {
  MoeDims dims{1, 3, 2, 2, 4, 2, 0.0};
  std::vector<float> u(3 * 2, 1.0f), gate(4 * 2, 0.0f);  // all logits equal: a four-way tie
  const Routed r = route(dims, RouterKind::TopK, u, gate);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.choice[i * 2], 0);
    EXPECT_EQ(r.choice[i * 2 + 1], 1);
    EXPECT_FLOAT_EQ(r.gates[i * 2], 0.5f);
  }
  std::vector<float> x = {3, 1, 3, 2, 3};
  std::vector<std::int32_t> idx(3);
  cpu::topk_rows<float>(x.data(), idx.data(), 1, 5, 3);
  EXPECT_EQ(idx, (std::vector<std::int32_t>{0, 2, 4}));
}

TEST(Routing, AllTokensToOneExpertLeavesOthersEmpty) {
  MoeDims dims{2, 4, 2, 3, 4, 1, 0.0};
  std::vector<float> u(8 * 2, 1.0f), gate(4 * 2, 0.0f);
  gate[2 * 2] = 5.0f;  // expert 2 dominates every token
  const Routed r = route(dims, RouterKind::TopK, u, gate);
  EXPECT_EQ(r.offsets, (std::vector<std::int64_t>{0, 0, 0, 8, 8}));
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(r.choice[i], 2);
    EXPECT_FLOAT_EQ(r.gates[i], 1.0f);     // k = 1: the gate is 1
    EXPECT_NEAR(r.y[i * 2], 3.0f, 1e-3f);  // expert 2's bias (3) on feature 0
  }
}

TEST(Routing, CapacityOverflowDropsLaterSlotsFirstChoicesFirst) {
  // 8 tokens, k = 2, E = 4, C = 0.5: capacity ceil(0.5 * 16 / 4) = 2 slots per expert.
  MoeDims dims{1, 8, 2, 3, 4, 2, 0.5};
  std::vector<float> u(8 * 2, 1.0f), gate(4 * 2, 0.0f);
  gate[0] = 3.0f;  // expert 0 first for everyone
  gate[2] = 2.0f;  // expert 1 second
  const Routed r = route(dims, RouterKind::TopK, u, gate);
  int kept = 0;
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(r.choice[i * 2], 0);
    EXPECT_EQ(r.choice[i * 2 + 1], 1);
    EXPECT_EQ(r.kept[i * 2], i < 2 ? 1 : 0) << "token " << i;  // first choices, token order
    EXPECT_EQ(r.kept[i * 2 + 1], i < 2 ? 1 : 0) << "token " << i;
    kept += r.kept[i * 2] + r.kept[i * 2 + 1];
    if (i >= 2) {
      EXPECT_EQ(r.y[i * 2], 0.0f) << "dropped token contributes nothing";
    }
  }
  EXPECT_EQ(kept, 4);
  EXPECT_EQ(r.offsets.back(), 4);
}

TEST(Routing, TopKEqualsAllExpertsUsesEveryExpert) {
  MoeDims dims{1, 3, 2, 2, 3, 3, 0.0};
  std::mt19937 rng(5);
  std::normal_distribution<float> n01;
  std::vector<float> u(6), gate(6);
  for (float& v : u) v = n01(rng);
  for (float& v : gate) v = n01(rng);
  const Routed r = route(dims, RouterKind::TopK, u, gate);
  for (int i = 0; i < 3; ++i) {
    float s = 0;
    for (int j = 0; j < 3; ++j) s += r.gates[i * 3 + j];
    EXPECT_NEAR(s, 1.0f, 1e-6f);
  }
  EXPECT_EQ(r.offsets, (std::vector<std::int64_t>{0, 3, 6, 9}));
}

}  // namespace
}  // namespace routemoe::layers
