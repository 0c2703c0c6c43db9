// Cases of the fused CPU kernels (framework/cpu/fused.cpp): the causal attention core, the grouped
// expert FFN and the cross-entropy forward + backward in one pass. They have no CUDA twin
// (Case::cuda_twin = false). Tolerances follow cases.cpp (|cpu - ref| <= bound<T>(ck) * mag); where
// an output is a chain of several products and nonlinearities, the reference propagates an error
// budget in units of u through the chain (mag, with ck = 2 for slack) instead of one closed form.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "framework/cpu/kernels.h"
#include "framework/cpu/moe_kernels.h"
#include "tests/kernels/cases.h"

namespace routemoe::kerneltest {
namespace {

using Table = std::vector<Case>;

std::size_t at(i64 i) {
  return static_cast<std::size_t>(i);
}

// ================================================================================================
// Causal attention core
// ================================================================================================

struct AttnSpec {
  i64 b, t, h, dh;
  bool avg = false;  // a gradient arriving at the head average (d_avg)
  double range = 1.0;
  bool fd = false;
};

// Exact forward of one (b, h) pair: scores, probabilities and their error budgets (units of u).
struct AttnFwd {
  std::vector<double> s, p, ep;  // [T, T]
};

AttnFwd attn_pair_forward(const std::vector<double>& qkv, const AttnSpec& s, i64 b, i64 h) {
  const i64 T = s.t, d = s.h * s.dh, ld = 3 * d;
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.dh));
  AttnFwd f;
  f.s.assign(at(T * T), 0.0);
  f.p.assign(at(T * T), 0.0);
  f.ep.assign(at(T * T), 0.0);
  for (i64 i = 0; i < T; ++i) {
    // Scores: a length-dh dot product scaled by the rounded 1/sqrt(dh): (dh + 3) u scale S.
    double err_s = 0.0, mx = -kInf;
    for (i64 j = 0; j <= i; ++j) {
      double acc = 0.0, mag = 0.0;
      for (i64 c = 0; c < s.dh; ++c) {
        const double qk =
            qkv[at((b * T + i) * ld + h * s.dh + c)] * qkv[at((b * T + j) * ld + d + h * s.dh + c)];
        acc += qk;
        mag += std::abs(qk);
      }
      f.s[at(i * T + j)] = scale * acc;
      err_s = std::max(err_s, (s.dh + 3.0) * scale * mag);
      mx = std::max(mx, scale * acc);
    }
    // Softmax over j <= i (as the softmax case, ck 2 (len + 32) relative), and the score errors
    // passed on: |dp_j| <= p_j (|ds_j| + max |ds|) <= 2 p_j max |ds|.
    double sum = 0.0;
    for (i64 j = 0; j <= i; ++j) sum += std::exp(f.s[at(i * T + j)] - mx);
    for (i64 j = 0; j <= i; ++j) {
      const double p = std::exp(f.s[at(i * T + j)] - mx) / sum;
      f.p[at(i * T + j)] = p;
      f.ep[at(i * T + j)] = p * (2.0 * (i + 1.0 + 32.0) + 2.0 * err_s);
    }
  }
  return f;
}

void attn_forward_reference(const AttnSpec& s, const Data& in, Expect& e) {
  const i64 T = s.t, H = s.h, dh = s.dh, d = H * dh, ld = 3 * d;
  const auto& qkv = in["qkv"];
  auto& probs = e.out("probs", s.b * H * T * T);
  auto& ctx = e.out("ctx", s.b * T * d);
  for (i64 b = 0; b < s.b; ++b)
    for (i64 h = 0; h < H; ++h) {
      const AttnFwd f = attn_pair_forward(qkv, s, b, h);
      const i64 base = (b * H + h) * T * T;
      for (i64 k = 0; k < T * T; ++k) probs[at(base + k)] = {f.p[at(k)], 2.0, f.ep[at(k)], 0.0};
      // ctx = P V: the probabilities' errors times |v|, plus a length-(i + 1) dot product.
      for (i64 i = 0; i < T; ++i)
        for (i64 c = 0; c < dh; ++c) {
          double acc = 0.0, mag = 0.0, err = 0.0;
          for (i64 j = 0; j <= i; ++j) {
            const double v = qkv[at((b * T + j) * ld + 2 * d + h * dh + c)];
            acc += f.p[at(i * T + j)] * v;
            mag += std::abs(f.p[at(i * T + j)] * v);
            err += f.ep[at(i * T + j)] * std::abs(v);
          }
          ctx[at((b * T + i) * d + h * dh + c)] = {acc, 2.0, err + (i + 3.0) * mag, 0.0};
        }
    }
}

// Backward of one (b, h) pair from the probabilities as stored (driver a gives the reference's,
// rounded). dP = dctx V^T + d_avg / H, dS = P (dP - <dP, P>), dQ = scale dS K, dK = scale dS^T Q,
// dV = P^T dctx, each with its error budget.
void attn_pair_backward(const AttnSpec& s, const Data& in, i64 b, i64 h, std::vector<Want>& dqkv) {
  const i64 T = s.t, H = s.h, dh = s.dh, d = H * dh, ld = 3 * d;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  const auto& qkv = in["qkv"];
  const auto& probs = in["probs"];
  const auto& dctx = in["dctx"];
  auto q = [&](i64 i, i64 c) { return qkv[at((b * T + i) * ld + h * dh + c)]; };
  auto k = [&](i64 i, i64 c) { return qkv[at((b * T + i) * ld + d + h * dh + c)]; };
  auto v = [&](i64 i, i64 c) { return qkv[at((b * T + i) * ld + 2 * d + h * dh + c)]; };
  auto p = [&](i64 i, i64 j) { return probs[at(((b * H + h) * T + i) * T + j)]; };
  auto g = [&](i64 i, i64 c) { return dctx[at((b * T + i) * d + h * dh + c)]; };
  std::vector<double> ds(at(T * T), 0.0), eds(at(T * T), 0.0);
  for (i64 i = 0; i < T; ++i) {
    std::vector<double> dp(at(i + 1)), edp(at(i + 1));
    double dot = 0.0, edot = 0.0, dmag = 0.0;
    for (i64 j = 0; j <= i; ++j) {
      double acc = 0.0, mag = 0.0;
      for (i64 c = 0; c < dh; ++c) {
        acc += g(i, c) * v(j, c);
        mag += std::abs(g(i, c) * v(j, c));
      }
      double err = (dh + 2.0) * mag;
      if (s.avg) {
        const double a = in["d_avg"][at((b * T + i) * T + j)] / static_cast<double>(H);
        acc += a;
        err += 4.0 * std::abs(a) + 2.0 * std::abs(acc);
      }
      dp[at(j)] = acc;
      edp[at(j)] = err;
      dot += acc * p(i, j);
      dmag += std::abs(acc * p(i, j));
      edot += err * p(i, j);
    }
    edot += (i + 3.0) * dmag + std::abs(dot);
    for (i64 j = 0; j <= i; ++j) {
      ds[at(i * T + j)] = p(i, j) * (dp[at(j)] - dot);
      eds[at(i * T + j)] = p(i, j) * (edp[at(j)] + edot + 2.0 * std::abs(dp[at(j)] - dot));
    }
  }
  for (i64 i = 0; i < T; ++i)
    for (i64 c = 0; c < dh; ++c) {
      double aq = 0.0, mq = 0.0, eq = 0.0, ak = 0.0, mk = 0.0, ek = 0.0, av = 0.0, mv = 0.0;
      for (i64 j = 0; j <= i; ++j) {  // dQ_i: keys j <= i
        aq += ds[at(i * T + j)] * k(j, c);
        mq += std::abs(ds[at(i * T + j)] * k(j, c));
        eq += eds[at(i * T + j)] * std::abs(k(j, c));
      }
      for (i64 r = i; r < T; ++r) {  // dK_i, dV_i: queries r >= i
        ak += ds[at(r * T + i)] * q(r, c);
        mk += std::abs(ds[at(r * T + i)] * q(r, c));
        ek += eds[at(r * T + i)] * std::abs(q(r, c));
        av += p(r, i) * g(r, c);
        mv += std::abs(p(r, i) * g(r, c));
      }
      const i64 row = (b * T + i) * ld + h * dh + c;
      dqkv[at(row)] = {scale * aq, 2.0, scale * (eq + (i + 4.0) * mq), 0.0};
      dqkv[at(row + d)] = {scale * ak, 2.0, scale * (ek + (T - i + 4.0) * mk), 0.0};
      dqkv[at(row + 2 * d)] = {av, 2.0, (T - i + 3.0) * mv, 0.0};
    }
}

void add_attention(Table& t, const AttnSpec& s) {
  const i64 B = s.b, T = s.t, H = s.h, dh = s.dh, d = H * dh;
  Case c;
  c.kernel = "causal_attention";
  c.name = fmt::format("b={} t={} h={} dh={}{}", B, T, H, dh, s.avg ? " d_avg" : "");
  c.cuda_twin = false;
  c.generate = [=](Gen& g, Data& data) {
    data.value("qkv", B * T * 3 * d) = g.uniform(B * T * 3 * d, -s.range, s.range);
    data.value("probs", B * H * T * T);  // overwritten (upper triangles with 0)
    data.value("ctx", B * T * d);
    data.value("dctx", B * T * d) = g.uniform(B * T * d, -1, 1);
    if (s.avg) data.value("d_avg", B * T * T) = g.uniform(B * T * T, -1, 1);
    data.value("dqkv", B * T * 3 * d);  // overwritten
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::causal_attention_forward(b["qkv"], b["probs"], b["ctx"], B, T, H, dh);
  });
  c.forward.reference = [=](const Data& in, Expect& e) { attn_forward_reference(s, in, e); };
  Pass bwd;
  bwd.cpu = cpu_call([=](const auto& b) {
    cpu::causal_attention_backward(b["qkv"], b["probs"], b["dctx"], b.opt("d_avg"), b["dqkv"], B, T,
                                   H, dh);
  });
  bwd.reference = [=](const Data& in, Expect& e) {
    auto& dqkv = e.out("dqkv", B * T * 3 * d);
    for (i64 b = 0; b < B; ++b)
      for (i64 h = 0; h < H; ++h) attn_pair_backward(s, in, b, h, dqkv);
  };
  c.backward = std::move(bwd);
  c.threads = true;
  c.fd = s.fd;
  // With one head the head average is the probabilities themselves, so d_avg is their upstream
  // gradient in the finite-difference loss.
  c.loss = {{"ctx", "dctx"}};
  if (s.avg && H == 1) c.loss.emplace_back("probs", "d_avg");
  c.grads = {{"qkv", "dqkv"}};
  if (B * T * H == 0) set_noop(c);
  t.push_back(std::move(c));
}

void attention_cases(Table& t) {
  // Blocks of 64 queries: 65 and 130 cross block ends; t = 1 and 3 are a partial first block.
  const i64 shapes[][4] = {
      {1, 1, 1, 1}, {2, 3, 2, 4}, {1, 65, 2, 3}, {2, 70, 3, 8}, {1, 130, 1, 5}};
  for (const auto& sh : shapes)
    for (bool avg : {false, true}) add_attention(t, {sh[0], sh[1], sh[2], sh[3], avg});
  // Gradient checks: several heads without d_avg; one head with it (see add_attention).
  add_attention(t, {2, 5, 2, 3, false, 1.0, true});
  add_attention(t, {1, 6, 1, 4, true, 1.0, true});
  add_attention(t, {1, 66, 1, 2, true, 1.0, true});
  add_attention(t, {0, 5, 2, 3});  // empty batch
}

// ================================================================================================
// Grouped expert FFN
// ================================================================================================

struct FfnSpec {
  std::vector<i64> rows;  // rows per group (zeros: empty groups)
  i64 d, f;
  bool bias = true;  // b1, b2 and db1, db2
  bool dx = true;    // backward dx (else null)
  bool fd = false;
};

double gelu_ref(double x) {
  const double k = std::sqrt(2.0 / std::numbers::pi);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}
double gelu_grad_ref(double x) {
  const double k = std::sqrt(2.0 / std::numbers::pi);
  const double th = std::tanh(k * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * k * (1.0 + 3.0 * 0.044715 * x * x);
}
// GELU's own rounding (the gelu case): 16 u (|x| + |gelu|); of its slope: 16 u (1 + |x| (1 +
// 0.135 x^2)).
double gelu_err(double x) {
  return 16.0 * (std::abs(x) + std::abs(gelu_ref(x)));
}
double gelu_grad_err(double x) {
  return 16.0 * (1.0 + std::abs(x) * (1.0 + 0.135 * x * x));
}

struct FfnLayout {
  std::vector<i64> offset;  // [G + 1]
  i64 groups = 0, rows = 0;
  i64 group_of(i64 r) const {
    return static_cast<i64>(std::upper_bound(offset.begin(), offset.end(), r) - offset.begin()) - 1;
  }
};

FfnLayout ffn_layout(const FfnSpec& s) {
  FfnLayout l;
  l.groups = static_cast<i64>(s.rows.size());
  l.offset.assign(1, 0);
  for (i64 r : s.rows) l.offset.push_back(l.offset.back() + r);
  l.rows = l.offset.back();
  return l;
}

// h = x w1^T + b1 with its error budget (units of u).
void ffn_hidden(const FfnSpec& s, const FfnLayout& l, const Data& in, std::vector<double>& h,
                std::vector<double>& eh) {
  const i64 d = s.d, f = s.f;
  h.assign(at(l.rows * f), 0.0);
  eh.assign(at(l.rows * f), 0.0);
  for (i64 r = 0; r < l.rows; ++r) {
    const i64 g = l.group_of(r);
    for (i64 o = 0; o < f; ++o) {
      double acc = s.bias ? in["b1"][at(g * f + o)] : 0.0, mag = std::abs(acc);
      for (i64 p = 0; p < d; ++p) {
        const double xw = in["x"][at(r * d + p)] * in["w1"][at((g * f + o) * d + p)];
        acc += xw;
        mag += std::abs(xw);
      }
      h[at(r * f + o)] = acc;
      eh[at(r * f + o)] = 2.0 * (d + 2.0) * mag;
    }
  }
}

void ffn_forward_reference(const FfnSpec& s, const FfnLayout& l, const Data& in, Expect& e) {
  const i64 d = s.d, f = s.f;
  std::vector<double> h, eh;
  ffn_hidden(s, l, in, h, eh);
  auto& hp = e.out("h_pre", l.rows * f);
  for (i64 k = 0; k < l.rows * f; ++k) hp[at(k)] = {h[at(k)], 2.0, eh[at(k)], 0.0};
  auto& y = e.out("y", l.rows * d);
  for (i64 r = 0; r < l.rows; ++r) {
    const i64 g = l.group_of(r);
    for (i64 o = 0; o < d; ++o) {
      double acc = s.bias ? in["b2"][at(g * d + o)] : 0.0, mag = std::abs(acc), err = 0.0;
      for (i64 p = 0; p < f; ++p) {
        const double hv = h[at(r * f + p)], a = gelu_ref(hv);
        const double w = in["w2"][at((g * d + o) * f + p)];
        acc += a * w;
        mag += std::abs(a * w);
        err += (std::abs(gelu_grad_ref(hv)) * eh[at(r * f + p)] + gelu_err(hv)) * std::abs(w);
      }
      y[at(r * d + o)] = {acc, 2.0, err + 2.0 * (f + 2.0) * mag, 0.0};
    }
  }
}

// The backward from h_pre as stored: a = gelu(h), dh = (dy w2) gelu'(h), and the four parameter
// gradients and dx, each with its error budget.
void ffn_backward_reference(const FfnSpec& s, const FfnLayout& l, const Data& in, Expect& e) {
  const i64 d = s.d, f = s.f, R = l.rows, G = l.groups;
  const auto& hp = in["h_pre"];
  const auto& dy = in["dy"];
  std::vector<double> dh(at(R * f)), edh(at(R * f));
  for (i64 r = 0; r < R; ++r) {
    const i64 g = l.group_of(r);
    for (i64 p = 0; p < f; ++p) {
      double acc = 0.0, mag = 0.0;
      for (i64 o = 0; o < d; ++o) {
        acc += dy[at(r * d + o)] * in["w2"][at((g * d + o) * f + p)];
        mag += std::abs(dy[at(r * d + o)] * in["w2"][at((g * d + o) * f + p)]);
      }
      const double hv = hp[at(r * f + p)], sl = gelu_grad_ref(hv);
      dh[at(r * f + p)] = acc * sl;
      edh[at(r * f + p)] = 2.0 * (d + 1.0) * mag * std::abs(sl) +
                           std::abs(acc) * gelu_grad_err(hv) + 2.0 * std::abs(acc * sl);
    }
  }
  auto grad_of = [&](const char* name, i64 rows_per, i64 cols, auto&& term) {
    // name[g, o, p] += sum over the group's rows of term(r, o, p) -> (value, mag, err).
    const auto& w0 = in[name];
    auto& out = e.out(name, G * rows_per * cols);
    for (i64 g = 0; g < G; ++g)
      for (i64 o = 0; o < rows_per; ++o)
        for (i64 p = 0; p < cols; ++p) {
          const i64 k = (g * rows_per + o) * cols + p;
          double acc = w0[at(k)], mag = std::abs(acc), err = 0.0;
          for (i64 r = l.offset[at(g)]; r < l.offset[at(g + 1)]; ++r) {
            const auto [v, m, er] = term(r, o, p);
            acc += v;
            mag += m;
            err += er;
          }
          const double n = static_cast<double>(l.offset[at(g + 1)] - l.offset[at(g)]);
          out[at(k)] = {acc, 2.0, err + 2.0 * (n + 2.0) * mag, 0.0};
        }
  };
  struct Term {
    double v, m, e;
  };
  grad_of("dw2", d, f, [&](i64 r, i64 o, i64 p) {
    const double hv = hp[at(r * f + p)], a = gelu_ref(hv), gy = dy[at(r * d + o)];
    return Term{gy * a, std::abs(gy * a), std::abs(gy) * gelu_err(hv)};
  });
  grad_of("dw1", f, d, [&](i64 r, i64 o, i64 p) {
    const double x = in["x"][at(r * d + p)];
    return Term{dh[at(r * f + o)] * x, std::abs(dh[at(r * f + o)] * x),
                edh[at(r * f + o)] * std::abs(x)};
  });
  if (s.bias) {
    grad_of("db2", 1, d, [&](i64 r, i64, i64 p) {
      return Term{dy[at(r * d + p)], std::abs(dy[at(r * d + p)]), 0.0};
    });
    grad_of("db1", 1, f, [&](i64 r, i64, i64 p) {
      return Term{dh[at(r * f + p)], std::abs(dh[at(r * f + p)]), edh[at(r * f + p)]};
    });
  }
  if (!s.dx) return;
  auto& dx = e.out("dx", R * d);
  for (i64 r = 0; r < R; ++r) {
    const i64 g = l.group_of(r);
    for (i64 p = 0; p < d; ++p) {
      double acc = 0.0, mag = 0.0, err = 0.0;
      for (i64 o = 0; o < f; ++o) {
        const double w = in["w1"][at((g * f + o) * d + p)];
        acc += dh[at(r * f + o)] * w;
        mag += std::abs(dh[at(r * f + o)] * w);
        err += edh[at(r * f + o)] * std::abs(w);
      }
      dx[at(r * d + p)] = {acc, 2.0, err + 2.0 * (f + 1.0) * mag, 0.0};
    }
  }
}

void add_ffn(Table& t, const FfnSpec& s) {
  const FfnLayout l = ffn_layout(s);
  const i64 d = s.d, f = s.f, G = l.groups, R = l.rows;
  std::string rows;
  for (i64 r : s.rows) rows += (rows.empty() ? "" : ",") + std::to_string(r);
  Case c;
  c.kernel = "grouped_ffn";
  c.name = fmt::format("rows={} d={} f={}{}{}", rows, d, f, s.bias ? "" : " bias=null",
                       s.dx ? "" : " dx=null");
  c.cuda_twin = false;
  c.generate = [=](Gen& g, Data& data) {
    data.value("x", R * d) = g.uniform(R * d, -1, 1);
    data.value("w1", G * f * d) = g.uniform(G * f * d, -1, 1);
    data.value("w2", G * d * f) = g.uniform(G * d * f, -1, 1);
    if (s.bias) {
      data.value("b1", G * f) = g.uniform(G * f, -1, 1);
      data.value("b2", G * d) = g.uniform(G * d, -1, 1);
      data.value("db1", G * f) = g.uniform(G * f, -1, 1);  // +=
      data.value("db2", G * d) = g.uniform(G * d, -1, 1);  // +=
    }
    data.value("h_pre", R * f);  // overwritten
    data.value("y", R * d);      // overwritten
    data.value("dy", R * d) = g.uniform(R * d, -1, 1);
    if (s.dx) data.value("dx", R * d);                           // overwritten
    data.value("dw1", G * f * d) = g.uniform(G * f * d, -1, 1);  // +=
    data.value("dw2", G * d * f) = g.uniform(G * d * f, -1, 1);  // +=
  };
  const std::vector<i64> off = l.offset;
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::grouped_ffn_forward(b["x"], b["w1"], b.opt("b1"), b["w2"], b.opt("b2"), b["h_pre"], b["y"],
                             off.data(), G, d, f);
  });
  c.forward.reference = [=](const Data& in, Expect& e) { ffn_forward_reference(s, l, in, e); };
  Pass bwd;
  bwd.cpu = cpu_call([=](const auto& b) {
    cpu::grouped_ffn_backward(b["dy"], b["x"], b["h_pre"], b["w1"], b["w2"], b.opt("dx"), b["dw1"],
                              b.opt("db1"), b["dw2"], b.opt("db2"), off.data(), G, d, f);
  });
  bwd.reference = [=](const Data& in, Expect& e) { ffn_backward_reference(s, l, in, e); };
  c.backward = std::move(bwd);
  c.threads = true;
  c.fd = s.fd;
  c.loss = {{"y", "dy"}};
  c.grads = {{"w1", "dw1"}, {"w2", "dw2"}};
  if (s.dx) c.grads.emplace_back("x", "dx");
  if (s.bias) {
    c.grads.emplace_back("b1", "db1");
    c.grads.emplace_back("b2", "db2");
  }
  if (R == 0) set_noop(c);
  t.push_back(std::move(c));
}

void ffn_cases(Table& t) {
  // Groups with uneven and empty row blocks; one group (the all-threads path) and more groups
  // than threads (the one-thread-per-group path); bias and dx optional.
  const std::vector<std::vector<i64>> layouts = {{1}, {5}, {3, 0, 4}, {0, 7, 1, 0, 9}, {40, 3}};
  for (const auto& rows : layouts) {
    add_ffn(t, {rows, 5, 7});
    add_ffn(t, {rows, 5, 7, false});
    add_ffn(t, {rows, 5, 7, true, false});
  }
  add_ffn(t, {{65, 17, 33}, 9, 33});
  add_ffn(t, {{2, 3}, 3, 4, true, true, true});  // gradient checks
  add_ffn(t, {{4}, 2, 3, true, true, true});
  add_ffn(t, {{0, 0}, 3, 4});  // no rows
}

// ================================================================================================
// Cross-entropy forward + backward in one pass
// ================================================================================================

struct CeSpec {
  i64 n, v;
  double range = 8.0;
  bool shift = true;  // row 2 shifted by +1000
};

void add_ce_fused(Table& t, const CeSpec& s) {
  const i64 n = s.n, v = s.v;
  Case c;
  c.kernel = "cross_entropy_fused";
  c.name = fmt::format("n={} v={} range={}{}", n, v, s.range, s.shift ? " shift" : "");
  c.cuda_twin = false;
  c.generate = [=](Gen& g, Data& d) {
    auto& logits = d.value("logits", n * v) = g.uniform(n * v, -s.range, s.range);
    if (s.shift && n > 2)
      for (i64 j = 0; j < v; ++j) logits[at(2 * v + j)] += 1000.0;
    auto& targets = d.index("targets", n, -1);
    if (v > 0) {
      targets = g.ids(n, v);
      for (auto& tg : targets)
        if (g.coin(0.2)) tg = -1;
      if (n > 1) targets[1] = -1;
      if (n > 0) targets[0] = static_cast<i32>(v - 1);
    }
    d.value("losses", n);
    d.value("lse", n);
    d.value("dloss", n) = g.uniform(n, -1, 1);
    d.alias("dlogits", "logits");  // overwritten in place
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::cross_entropy_fused(b["logits"], b.ids("targets"), b["dloss"], b["losses"], b["lse"], n,
                             v);
  });
  // lse and losses as the cross_entropy case (ck 4, S = v + range + 8 + |lse| (+ |x_t| +
  // |loss|)); dlogits as its backward, whose bound already covers a kernel that recomputes the
  // softmax (here from the lse it just rounded: u |lse| more in the argument, inside S).
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& x = in["logits"];
    const auto& targets = in.ids("targets");
    const auto& dloss = in["dloss"];
    auto& lse = e.out("lse", n);
    auto& losses = e.out("losses", n);
    auto& dl = e.out("dlogits", n * v);
    for (i64 i = 0; i < n; ++i) {
      double mx = -kInf, mn = kInf;
      for (i64 j = 0; j < v; ++j) {
        mx = std::max(mx, x[at(i * v + j)]);
        mn = std::min(mn, x[at(i * v + j)]);
      }
      double l = -kInf, range = 0.0;
      if (v > 0) {
        double sum = 0.0;
        for (i64 j = 0; j < v; ++j) sum += std::exp(x[at(i * v + j)] - mx);
        l = mx + std::log(sum);
        range = mx - mn;
      }
      const double s_lse = v + range + 8.0 + std::abs(l);
      lse[at(i)] = {l, 4.0, v > 0 ? s_lse : 0.0, 0.0};
      const i32 tg = targets[at(i)];
      if (tg < 0) {
        losses[at(i)] = {0.0, 0.0, 0.0, 0.0};
      } else {
        const double xt = x[at(i * v + tg)], loss = l - xt;
        losses[at(i)] = {loss, 4.0, s_lse + std::abs(xt) + std::abs(loss), 0.0};
      }
      for (i64 j = 0; j < v; ++j) {
        const i64 k = i * v + j;
        if (tg < 0) {
          dl[at(k)] = {0.0, 0.0, 0.0, 0.0};
          continue;
        }
        const double p = std::exp(x[at(k)] - l), hot = j == tg ? 1.0 : 0.0;
        dl[at(k)] = {dloss[at(i)] * (p - hot), 4.0,
                     std::abs(dloss[at(i)]) *
                         (p * (std::abs(x[at(k)]) + 2.0 * std::abs(l) + v + range + 8.0) + hot),
                     0.0};
      }
    }
  };
  c.threads = true;
  if (n == 0) set_noop(c);
  t.push_back(std::move(c));
}

void ce_fused_cases(Table& t) {
  const i64 shapes[][2] = {{1, 1}, {3, 7}, {33, 65}, {7, 1}, {65, 33}, {5, 1000}, {129, 300}};
  for (const auto& sh : shapes) add_ce_fused(t, {sh[0], sh[1]});
  add_ce_fused(t, {9, 3001, 6.0});
  add_ce_fused(t, {3, 0});  // empty vocabulary: all targets ignored
  add_ce_fused(t, {0, 9});  // empty batch
}

}  // namespace

void fused_cases(std::vector<Case>& t) {
  attention_cases(t);
  ffn_cases(t);
  ce_fused_cases(t);
}

}  // namespace routemoe::kerneltest
