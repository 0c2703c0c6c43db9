// Router and MoE arithmetic on cases small enough to work out by hand: the AC feature weights
// (absent experts, clipping, mean absolute deviation), the Switch loss and the z-loss with their
// gradients through the MoE layer, the attention layer's head average, and the two gate rules.
// Every expected number below is derived in the comments from the equations of docs/model.md,
// step by step; none comes from running the code under test. The closed forms are evaluated in
// double in the test (e.g. 1 / (1.5 + 1e-4)), with the decimal value in the comment.
//
// Tolerance: everything runs in double on O(1) values through a handful of operations (sums of
// at most 12 terms, exp/log), so results are within ~1e-15 relative of the closed forms; the
// checks allow kTol = 1e-12 (absolute, or relative for the few larger values), while each
// mutant the tests are meant to catch (MAD -> standard deviation, no clip, no column
// normalisation, absent experts in the means, z-loss without the square, head sum without 1/H,
// the wrong gate rule) moves some checked value by at least 1e-4 (relative).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "framework/arena.h"
#include "framework/cpu/moe_kernels.h"
#include "framework/exec.h"
#include "layers/attention.h"
#include "layers/moe.h"
#include "layers/routers/router.h"

namespace routemoe::layers {
namespace {

constexpr double kTol = 1e-12;

// |got - want| <= kTol * max(1, |want|).
void expect_close(double got, double want, const std::string& what) {
  EXPECT_NEAR(got, want, kTol * std::max(1.0, std::abs(want))) << what;
}

// ------------------------------------------------------------------------------------------------
// AC feature weights (docs/model.md, "ac"): for each present expert e (n_e > 0)
//   mu_e = mean of its tokens, MAD_e = mean |u - mu_e| (per feature), w_e = 1 / (MAD_e + 1e-4);
//   m = mean of all entries w_{e,f} of present experts; w_{e,f} <- min(w_{e,f}, 10 m);
//   w_{e,f} <- w_{e,f} / mean over present e' of w_{e',f};  M_i = w_{c_i}.

std::vector<double> feature_weights(const std::vector<double>& u,
                                    const std::vector<std::int32_t>& prev, std::int64_t d,
                                    std::int64_t experts) {
  const std::int64_t n = static_cast<std::int64_t>(prev.size());
  std::vector<double> m(u.size());
  Arena arena("test", Device::CPU);
  ac_feature_weights<double>(Exec::cpu(), RouterDims{1, n, d, experts}, u.data(), prev.data(),
                             m.data(), arena);
  return m;
}

// 6 tokens, d = 2, E = 3; the previous layer sent tokens 0..3 to expert 0, tokens 4, 5 to expert
// 1 and none to expert 2 (absent).
//   token  u          c
//   0      (0, 1)     0
//   1      (0, 3)     0
//   2      (0, 1)     0
//   3      (4, 3)     0
//   4      (1, 0)     1
//   5      (3, 4)     1
// Expert 0, feature 0: values 0, 0, 0, 4; mu = 1; |u - mu| = 1, 1, 1, 3; MAD = 6/4 = 1.5.
//   (The standard deviation would be sqrt((1 + 1 + 1 + 9) / 4) = sqrt(3) = 1.732: a mutant using
//   it gives w = 0.57732 instead of 0.66662 here.)
// Expert 0, feature 1: values 1, 3, 1, 3; mu = 2; |u - mu| = 1 each; MAD = 1.
// Expert 1, feature 0: values 1, 3; mu = 2; MAD = 1.
// Expert 1, feature 1: values 0, 4; mu = 2; MAD = 2.
// Inverse dispersions, with a = 1/1.5001 = 0.6666222, b = 1/1.0001 = 0.9999000, c = 1/2.0001 =
// 0.4999750:
//   w_0 = (a, b), w_1 = (b, c). Expert 2 is absent: it enters neither mean.
// Clip: m = (a + 2b + c) / 4 = 0.79160; 10 m = 7.916 exceeds every entry: no clipping.
// Column means over the two present experts: f0: (a + b)/2, f1: (b + c)/2, so
//   w_0 = (2a / (a + b), 2b / (b + c)) = (0.8000160, 1.3333111)
//   w_1 = (2b / (a + b), 2c / (b + c)) = (1.1999840, 0.6666889)
// (A mutant that counts the absent expert in the column means, as a row of zeros, gives
// 3a / (a + b) = 1.2 for w_{0,0}.)
TEST(AcFeatureWeights, AbsentExpertAndMeanAbsoluteDeviation) {
  const std::vector<double> u = {0, 1, 0, 3, 0, 1, 4, 3, 1, 0, 3, 4};
  const std::vector<std::int32_t> prev = {0, 0, 0, 0, 1, 1};
  const auto m = feature_weights(u, prev, 2, 3);
  const double a = 1.0 / (1.5 + 1e-4), b = 1.0 / (1.0 + 1e-4), c = 1.0 / (2.0 + 1e-4);
  const double w0[2] = {2 * a / (a + b), 2 * b / (b + c)};
  const double w1[2] = {2 * b / (a + b), 2 * c / (b + c)};
  EXPECT_NEAR(w0[0], 0.8000160, 1e-7);  // the decimals of the comment
  EXPECT_NEAR(w0[1], 1.3333111, 1e-7);
  for (int i = 0; i < 6; ++i)
    for (int f = 0; f < 2; ++f)
      expect_close(m[i * 2 + f], i < 4 ? w0[f] : w1[f],
                   "M[" + std::to_string(i) + "][" + std::to_string(f) + "]");
}

// The same statistics through the kernels: the weight row of the absent expert is 0, and the
// counts and deviation sums are those of the comment above (count 4, 2, 0; sum |u - mu| = 6 and 4
// for expert 0, 2 and 4 for expert 1).
TEST(AcFeatureWeights, KernelsLeaveTheAbsentExpertOut) {
  const std::vector<double> u = {0, 1, 0, 3, 0, 1, 4, 3, 1, 0, 3, 4};
  const std::vector<std::int32_t> prev = {0, 0, 0, 0, 1, 1};
  std::vector<double> sum(6, 0.0), count(3, 0.0), absdev(6, 0.0), w(6, -1.0);
  cpu::ac_expert_sums<double>(u.data(), prev.data(), sum.data(), count.data(), 6, 2, 3);
  cpu::ac_expert_absdev<double>(u.data(), prev.data(), sum.data(), count.data(), absdev.data(), 6,
                                2, 3);
  cpu::ac_expert_weights<double>(absdev.data(), count.data(), w.data(), 2, 3, kAcEpsilon,
                                 kAcClipFactor);
  EXPECT_EQ(count, (std::vector<double>{4, 2, 0}));
  EXPECT_EQ(sum, (std::vector<double>{4, 8, 4, 4, 0, 0}));
  EXPECT_EQ(absdev, (std::vector<double>{6, 4, 2, 4, 0, 0}));
  const double a = 1.0 / (1.5 + 1e-4), b = 1.0 / (1.0 + 1e-4), c = 1.0 / (2.0 + 1e-4);
  expect_close(w[0], 2 * a / (a + b), "w[0][0]");
  expect_close(w[1], 2 * b / (b + c), "w[0][1]");
  expect_close(w[2], 2 * b / (a + b), "w[1][0]");
  expect_close(w[3], 2 * c / (b + c), "w[1][1]");
  EXPECT_EQ(w[4], 0.0) << "absent expert";
  EXPECT_EQ(w[5], 0.0) << "absent expert";
}

// Clipping needs more than 10 entries (an entry above 10x the mean of N entries exceeds a tenth
// of their sum, so N > 10): d = 4, E = 3, two tokens per expert.
//   token  u               c
//   0      (5, 0, 0, 0)    0
//   1      (5, 2, 2, 2)    0
//   2      (0, 0, 0, 0)    1
//   3      (2, 2, 2, 2)    1
//   4      (0, 0, 0, 0)    2
//   5      (2, 2, 4, 2)    2
// With two tokens MAD = |x1 - x2| / 2 per feature:
//   expert 0: (0, 1, 1, 1); expert 1: (1, 1, 1, 1); expert 2: (1, 1, 2, 1).
// Inverses (b = 1/1.0001 = 0.99990001, c = 1/2.0001 = 0.49997500; MAD 0 gives 1/1e-4 = 10000):
//   w_0 = (10000, b, b, b), w_1 = (b, b, b, b), w_2 = (b, b, c, b).
// m = (10000 + 10 b + c) / 12 = 834.20825; the clip 10 m = 8342.0825 < 10000, so
// w_{0,0} = 10 m and every other entry is below the clip.
// Column means: f0: (10 m + 2b) / 3; f1, f3: b; f2: (2b + c) / 3. So
//   w_0 = (30 m / (10 m + 2b), 1, 3b / (2b + c), 1) = (2.99928, 1, 1.2000, 1)
//   w_1 = (3b / (10 m + 2b), 1, 3b / (2b + c), 1)   = (3.5950e-4, 1, 1.2000, 1)
//   w_2 = (3b / (10 m + 2b), 1, 3c / (2b + c), 1)   = (3.5950e-4, 1, 0.6000, 1)
// Without the clip w_{1,0} would be 3b / (10000 + 2b) = 2.9991e-4 (17 % less).
TEST(AcFeatureWeights, ClipAtTenTimesTheMeanWeight) {
  const std::vector<double> u = {5, 0, 0, 0, 5, 2, 2, 2, 0, 0, 0, 0,
                                 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 4, 2};
  const std::vector<std::int32_t> prev = {0, 0, 1, 1, 2, 2};
  const auto m = feature_weights(u, prev, 4, 3);
  const double b = 1.0 / (1.0 + 1e-4), c = 1.0 / (2.0 + 1e-4);
  const double mean = (1e4 + 10 * b + c) / 12;
  EXPECT_NEAR(10 * mean, 8342.0825, 1e-4);  // the decimals of the comment
  const double col0 = (10 * mean + 2 * b) / 3, col2 = (2 * b + c) / 3;
  const double want[3][4] = {
      {10 * mean / col0, 1, b / col2, 1}, {b / col0, 1, b / col2, 1}, {b / col0, 1, c / col2, 1}};
  EXPECT_NEAR(want[1][0], 3.5950e-4, 1e-8);
  for (int i = 0; i < 6; ++i)
    for (int f = 0; f < 4; ++f)
      expect_close(m[i * 4 + f], want[prev[i]][f],
                   "M[" + std::to_string(i) + "][" + std::to_string(f) + "]");
}

// ------------------------------------------------------------------------------------------------
// Switch loss and z-loss through the MoE layer (topk router, k = 1, E = 2, N = 4, d = 2).
// The gate is the identity, so the logits are the inputs: z_i = u_i.
//   token  z = u          p = softmax(z)   first choice   lse = log(sum exp z)
//   0      (ln 3, 0)      (3/4, 1/4)       0              ln 4 = 2 ln 2
//   1      (ln 3, 0)      (3/4, 1/4)       0              2 ln 2
//   2      (0, ln 3)      (1/4, 3/4)       1              2 ln 2
//   3      (ln 7, 0)      (7/8, 1/8)       0              ln 8 = 3 ln 2
// f = (3/4, 1/4); P_0 = (3/4 + 3/4 + 1/4 + 7/8) / 4 = 21/32, P_1 = 11/32.
// Switch = E sum_e f_e P_e = 2 (3/4 * 21/32 + 1/4 * 11/32) = 2 * 74/128 = 37/32 = 1.15625.
// z-loss = mean lse^2 = (3 (2 ln 2)^2 + (3 ln 2)^2) / 4 = (21/4) (ln 2)^2 = 2.5223783.
//   (Without the square: (3 * 2 ln 2 + 3 ln 2) / 4 = (9/4) ln 2 = 1.5595812.)
//
// Gradients of alpha * Switch + beta * z-loss (the expert output's gradient dy = 0, so nothing
// flows through the gates): f is constant, so dSwitch/dp_ie = E f_e / N = (3/8, 1/8), and
// dz/dlse_i = 2 lse_i / N = lse_i / 2. Through p = softmax(z), lse = logsumexp(z):
//   dz_i = p_i (g - <g, p_i>) + (dlse_i) p_i with g = alpha (3/8, 1/8):
//   p = (3/4, 1/4): <g, p> = alpha (9/32 + 1/32) = 5 alpha/16;
//                   switch part (3/4 (6/16 - 5/16), 1/4 (2/16 - 5/16)) alpha = (3/64, -3/64) alpha
//   p = (1/4, 3/4): <g, p> = alpha (3/32 + 3/32) = 3 alpha/16;
//                   switch part (1/4 (6/16 - 3/16), 3/4 (2/16 - 3/16)) alpha = (3/64, -3/64) alpha
//   p = (7/8, 1/8): <g, p> = alpha (21/64 + 1/64) = 11 alpha/32;
//                   switch part (7/8 (12/32 - 11/32), 1/8 (4/32 - 11/32)) alpha
//                   = (7/256, -7/256) alpha
//   z part: beta (lse_i / 2) p_i = beta ln 2 (3/4, 1/4) (tokens 0, 1), beta ln 2 (1/4, 3/4)
//           (token 2), beta (3/2) ln 2 (7/8, 1/8) = beta ln 2 (21/16, 3/16) (token 3).
// With W = I: du_i = dz_i W = dz_i (the experts add nothing: dy = 0), and dW = dz^T u:
//   dW[0][0] = sum_i dz_i0 u_i0 = 2 ln 3 dz_00 + ln 7 dz_30, dW[0][1] = ln 3 dz_20,
//   dW[1][0] = 2 ln 3 dz_01 + ln 7 dz_31,                   dW[1][1] = ln 3 dz_21.

struct AuxRun {
  double switch_loss = 0.0, z_loss = 0.0;
  std::vector<double> frac, du, dgate;
};

AuxRun run_aux(double alpha, double beta) {
  const MoeDims dims{1, 4, 2, 1, 2, 1, 0.0};
  const double l3 = std::log(3.0), l7 = std::log(7.0);
  const std::vector<double> u = {l3, 0, l3, 0, 0, l3, l7, 0};
  const std::vector<double> gate = {1, 0, 0, 1};
  std::vector<double> w1(2 * 1 * 2, 0.5), b1(2, 0.1), w2(2 * 2 * 1, 0.5), b2(4, 0.1);
  MoeLayer<double> layer(RouterOptions{RouterKind::TopK, 1.0, true}, nullptr);
  Arena arena("test", Device::CPU);
  const MoeWeights<double> w{{gate.data()}, w1.data(), b1.data(), w2.data(), b2.data()};
  const RouterInputs<double> in{u.data()};
  std::vector<double> y(8);
  layer.forward(Exec::cpu(), dims, w, in, y.data(), arena);
  AuxRun r;
  r.switch_loss = layer.aux().switch_loss;
  r.z_loss = layer.aux().z_loss;
  r.frac.assign(layer.aux().top1_frac, layer.aux().top1_frac + 2);
  std::vector<double> dw1(4, 0.0), db1(2, 0.0), dw2(4, 0.0), db2(4, 0.0), dy(8, 0.0);
  r.du.assign(8, 0.0);
  r.dgate.assign(4, 0.0);
  const MoeGrads<double> g{{r.dgate.data()}, dw1.data(), db1.data(), dw2.data(), db2.data()};
  layer.backward(Exec::cpu(), w, g, in, MoeLossCoefs{alpha, beta}, dy.data(), r.du.data(), nullptr,
                 arena);
  return r;
}

TEST(AuxLosses, SwitchAndZLossValues) {
  const AuxRun r = run_aux(1.0, 1.0);
  const double l2 = std::log(2.0);
  EXPECT_EQ(r.frac, (std::vector<double>{0.75, 0.25}));
  expect_close(r.switch_loss, 37.0 / 32.0, "switch loss");
  expect_close(r.z_loss, 21.0 / 4.0 * l2 * l2, "z-loss");
  EXPECT_NEAR(r.z_loss, 2.5223783, 1e-7);  // the decimals of the comment
}

TEST(AuxLosses, SwitchLossGradientThroughTheLayer) {
  const AuxRun r = run_aux(1.0, 0.0);
  const double l3 = std::log(3.0), l7 = std::log(7.0);
  // dz (alpha = 1, beta = 0), rows = tokens.
  const double dz[4][2] = {
      {3.0 / 64, -3.0 / 64}, {3.0 / 64, -3.0 / 64}, {3.0 / 64, -3.0 / 64}, {7.0 / 256, -7.0 / 256}};
  for (int i = 0; i < 4; ++i)
    for (int e = 0; e < 2; ++e)
      expect_close(r.du[i * 2 + e], dz[i][e],
                   "du[" + std::to_string(i) + "][" + std::to_string(e) + "]");
  expect_close(r.dgate[0], 2 * l3 * dz[0][0] + l7 * dz[3][0], "dW[0][0]");
  expect_close(r.dgate[1], l3 * dz[2][0], "dW[0][1]");
  expect_close(r.dgate[2], 2 * l3 * dz[0][1] + l7 * dz[3][1], "dW[1][0]");
  expect_close(r.dgate[3], l3 * dz[2][1], "dW[1][1]");
}

TEST(AuxLosses, ZLossGradientThroughTheLayer) {
  const AuxRun r = run_aux(0.0, 1.0);
  const double l2 = std::log(2.0), l3 = std::log(3.0), l7 = std::log(7.0);
  // dz (alpha = 0, beta = 1) = (lse_i / 2) p_i.
  const double dz[4][2] = {{0.75 * l2, 0.25 * l2},
                           {0.75 * l2, 0.25 * l2},
                           {0.25 * l2, 0.75 * l2},
                           {21.0 / 16 * l2, 3.0 / 16 * l2}};
  for (int i = 0; i < 4; ++i)
    for (int e = 0; e < 2; ++e)
      expect_close(r.du[i * 2 + e], dz[i][e],
                   "du[" + std::to_string(i) + "][" + std::to_string(e) + "]");
  expect_close(r.dgate[0], 2 * l3 * dz[0][0] + l7 * dz[3][0], "dW[0][0]");
  expect_close(r.dgate[1], l3 * dz[2][0], "dW[0][1]");
  expect_close(r.dgate[2], 2 * l3 * dz[0][1] + l7 * dz[3][1], "dW[1][0]");
  expect_close(r.dgate[3], l3 * dz[2][1], "dW[1][1]");
}

// ------------------------------------------------------------------------------------------------
// The attention layer's head average. d = 2, H = 2 (dh = 1, scale 1/sqrt(dh) = 1), T = 3, B = 2.
// qkv weight rows: q = (0, 1) from the bias only (head 0's query 0, head 1's query 1); head 0's
// key 0; head 1's key = h[1] (weight row 3 = (0, 1)); values 0. So the scores are
//   head 0: q k = 0 for every j: each row is uniform over its causal prefix, P[i][j] = 1/(i+1);
//   head 1: q k_j = h_j[1] = ln w_j: P[i][j] = w_j / sum_{j' <= i} w_j'.
// Sequence 0: h[1] = (ln 1, ln 2, ln 3), w = (1, 2, 3):
//   head 0 rows: [1], [1/2, 1/2], [1/3, 1/3, 1/3]
//   head 1 rows: [1], [1/3, 2/3], [1/6, 2/6, 3/6]
//   average:     [1], [5/12, 7/12], [1/4, 1/3, 5/12]
// Sequence 1: h[1] = (ln 1, ln 3, ln 1), w = (1, 3, 1):
//   head 1 rows: [1], [1/4, 3/4], [1/5, 3/5, 1/5]
//   average:     [1], [3/8, 5/8], [4/15, 7/15, 4/15]
// Entries above the diagonal are 0. (A sum without 1/H doubles every entry; one head alone gives
// head 0's or head 1's rows.)
TEST(AttentionHeadMean, IsTheMeanOfTheHeads) {
  const AttentionDims dims{2, 3, 2, 2};
  const double l2 = std::log(2.0), l3 = std::log(3.0);
  const std::vector<double> h = {0, 0, 0, l2, 0, l3,  // sequence 0
                                 0, 0, 0, l3, 0, 0};  // sequence 1
  std::vector<double> qkv_w(6 * 2, 0.0), qkv_b(6, 0.0), proj_w(4, 0.0), proj_b(2, 0.0);
  qkv_b[1] = 1.0;        // head 1's query
  qkv_w[3 * 2 + 1] = 1;  // head 1's key = h[1]
  Arena arena("test", Device::CPU);
  AttentionCache<double> cache;
  std::vector<double> out(6 * 2), avg(2 * 9, -1.0);
  attention_forward<double>(Exec::cpu(), dims,
                            {qkv_w.data(), qkv_b.data(), proj_w.data(), proj_b.data()}, h.data(),
                            out.data(), avg.data(), cache, arena);
  const double want[2][3][3] = {{{1, 0, 0}, {5.0 / 12, 7.0 / 12, 0}, {1.0 / 4, 1.0 / 3, 5.0 / 12}},
                                {{1, 0, 0}, {3.0 / 8, 5.0 / 8, 0}, {4.0 / 15, 7.0 / 15, 4.0 / 15}}};
  for (int b = 0; b < 2; ++b)
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        expect_close(
            avg[(b * 3 + i) * 3 + j], want[b][i][j],
            "avg[" + std::to_string(b) + "][" + std::to_string(i) + "][" + std::to_string(j) + "]");
}

// ------------------------------------------------------------------------------------------------
// Gate rules (docs/model.md): topk, similarity and attention renormalise the chosen
// probabilities; ac takes a softmax over the chosen scores.

TEST(GateRules, EachRouterUsesItsRule) {
  const ops::GateRule renorm = ops::GateRule::Renormalize;
  EXPECT_EQ(make_router<double>({RouterKind::TopK})->gate_rule(), renorm);
  EXPECT_EQ(make_router<double>({RouterKind::Similarity})->gate_rule(), renorm);
  EXPECT_EQ(make_router<double>({RouterKind::Attention})->gate_rule(), renorm);
  EXPECT_EQ(make_router<double>({RouterKind::AC})->gate_rule(), ops::GateRule::SoftmaxOfChosen);
}

// Probabilities s = (0.1, 0.5, 0.15, 0.25), k = 2: the chosen experts are 1 and 3,
//   g = (0.5, 0.25) / 0.75 = (2/3, 1/3).
// (A softmax over the chosen values would give (e^0.25, 1) / (e^0.25 + 1) = (0.562, 0.438).)
// Backward with dg = (1, 0): <dg, g> = 2/3; ds_c = (dg_c - 2/3) / 0.75:
//   ds_1 = (1/3) / 0.75 = 4/9, ds_3 = (-2/3) / 0.75 = -8/9, 0 elsewhere
// (the derivatives of g_1 = s_1 / (s_1 + s_3): s_3 / 0.75^2 = 4/9 and -s_1 / 0.75^2 = -8/9).
TEST(GateRules, RenormalizeDividesTheChosenProbabilitiesByTheirSum) {
  const std::vector<double> s = {0.1, 0.5, 0.15, 0.25};
  std::vector<std::int32_t> choice(2), top1(1);
  cpu::topk_rows<double>(s.data(), choice.data(), 1, 4, 2);
  EXPECT_EQ(choice, (std::vector<std::int32_t>{1, 3}));
  std::vector<double> g(2), ds(4, -1.0);
  cpu::topk_gates_forward<double>(s.data(), choice.data(), g.data(), top1.data(), 1, 4, 2,
                                  cpu::GateRule::Renormalize);
  expect_close(g[0], 2.0 / 3, "g[0]");
  expect_close(g[1], 1.0 / 3, "g[1]");
  EXPECT_EQ(top1[0], 1);
  const std::vector<double> dg = {1, 0};
  cpu::topk_gates_backward<double>(s.data(), choice.data(), g.data(), dg.data(), ds.data(), 1, 4, 2,
                                   cpu::GateRule::Renormalize);
  expect_close(ds[0], 0.0, "ds[0]");
  expect_close(ds[1], 4.0 / 9, "ds[1]");
  expect_close(ds[2], 0.0, "ds[2]");
  expect_close(ds[3], -8.0 / 9, "ds[3]");
}

// Scores s = (-1, ln 3, -2, 0), k = 2: the chosen experts are 1 (ln 3 = 1.0986) and 3 (0),
//   g = (e^{ln 3}, e^0) / (3 + 1) = (3/4, 1/4).
// (Renormalising the scores would give (1, 0); a softmax over all four scores, then taking the
// chosen, (3, 1) / (3 + 1 + e^-1 + e^-2) = (0.666, 0.222).)
// Backward with dg = (1, 0): <dg, g> = 3/4; ds_c = g_c (dg_c - 3/4):
//   ds_1 = 3/4 * 1/4 = 3/16, ds_3 = 1/4 * (-3/4) = -3/16, 0 elsewhere.
TEST(GateRules, SoftmaxOfChosenIsASoftmaxOverTheChosenScores) {
  const std::vector<double> s = {-1.0, std::log(3.0), -2.0, 0.0};
  std::vector<std::int32_t> choice(2), top1(1);
  cpu::topk_rows<double>(s.data(), choice.data(), 1, 4, 2);
  EXPECT_EQ(choice, (std::vector<std::int32_t>{1, 3}));
  std::vector<double> g(2), ds(4, -1.0);
  cpu::topk_gates_forward<double>(s.data(), choice.data(), g.data(), top1.data(), 1, 4, 2,
                                  cpu::GateRule::SoftmaxOfChosen);
  expect_close(g[0], 0.75, "g[0]");
  expect_close(g[1], 0.25, "g[1]");
  const std::vector<double> dg = {1, 0};
  cpu::topk_gates_backward<double>(s.data(), choice.data(), g.data(), dg.data(), ds.data(), 1, 4, 2,
                                   cpu::GateRule::SoftmaxOfChosen);
  expect_close(ds[0], 0.0, "ds[0]");
  expect_close(ds[1], 3.0 / 16, "ds[1]");
  expect_close(ds[2], 0.0, "ds[2]");
  expect_close(ds[3], -3.0 / 16, "ds[3]");
}

}  // namespace
}  // namespace routemoe::layers
