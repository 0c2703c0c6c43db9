#include "layers/moe.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "comm/communicator.h"
#include "framework/cpu/kernels.h"
#include "framework/error.h"
#include "layers/dispatch.h"

namespace routemoe::layers {

namespace {

template <typename T>
void zero(T* p, std::int64_t n) {
  std::fill(p, p + n, T(0));
}

// Row-wise logsumexp of x[n, e] (double accumulation).
template <typename T>
void row_logsumexp(const T* x, T* out, std::int64_t n, std::int64_t e) {
  for (std::int64_t i = 0; i < n; ++i) {
    const T* r = x + i * e;
    double mx = -std::numeric_limits<double>::infinity();
    for (std::int64_t j = 0; j < e; ++j) mx = std::max(mx, static_cast<double>(r[j]));
    double s = 0;
    for (std::int64_t j = 0; j < e; ++j) s += std::exp(static_cast<double>(r[j]) - mx);
    out[i] = static_cast<T>(mx + std::log(s));
  }
}

// Per-sequence graph: sel_b[T, E] = A_b[T, T] @ p_b[T, E].
template <typename T>
void graph_mix(const T* a, const T* p, T* out, std::int64_t batch, std::int64_t seq,
               std::int64_t e) {
  cpu::gemm_strided_batched<T>(false, false, seq, e, seq, T(1), a, seq, seq * seq, p, e, seq * e,
                               T(0), out, e, seq * e, batch);
}

// Similarity graph S_b = softmax(mask(u_b u_b^T / (tau sqrt d))) for every sequence.
template <typename T>
void similarity_graph(const MoeDims& dims, const RouterOptions& opts, const T* u, T* s) {
  const std::int64_t B = dims.batch, Tn = dims.seq, d = dims.d;
  const T c = static_cast<T>(1.0 / (opts.tau * std::sqrt(static_cast<double>(d))));
  cpu::gemm_strided_batched<T>(false, true, Tn, Tn, d, c, u, d, Tn * d, u, d, Tn * d, T(0), s, Tn,
                               Tn * Tn, B);
  if (opts.causal) {
    const T ninf = -std::numeric_limits<T>::infinity();
    for (std::int64_t b = 0; b < B; ++b) {
      for (std::int64_t i = 0; i < Tn; ++i) {
        T* row = s + (b * Tn + i) * Tn;
        for (std::int64_t j = i + 1; j < Tn; ++j) row[j] = ninf;
      }
    }
  }
  cpu::softmax_forward<T>(s, s, B * Tn, Tn);
}

}  // namespace

// AC feature weights (docs/model.md): M_i = w_{c_i}, with w from the previous layer's top-1
// assignment c. Constant for the backward.
template <typename T>
void ac_feature_weights(const MoeDims& dims, const T* u, const std::int32_t* prev, T* m) {
  const std::int64_t N = dims.tokens(), d = dims.d, E = dims.experts;
  std::vector<double> mu(static_cast<std::size_t>(E * d), 0.0),
      mad(static_cast<std::size_t>(E * d), 0.0);
  std::vector<std::int64_t> count(static_cast<std::size_t>(E), 0);
  for (std::int64_t i = 0; i < N; ++i) {
    const std::int32_t c = prev[i];
    RM_CHECK(c >= 0 && c < E,
             fmt::format("ac router: previous assignment {} of token {} outside [0, {})", c, i, E));
    ++count[static_cast<std::size_t>(c)];
    for (std::int64_t f = 0; f < d; ++f) mu[static_cast<std::size_t>(c * d + f)] += u[i * d + f];
  }
  for (std::int64_t e = 0; e < E; ++e) {
    if (count[static_cast<std::size_t>(e)] == 0) continue;
    for (std::int64_t f = 0; f < d; ++f)
      mu[static_cast<std::size_t>(e * d + f)] /=
          static_cast<double>(count[static_cast<std::size_t>(e)]);
  }
  for (std::int64_t i = 0; i < N; ++i) {
    const std::int64_t c = prev[i];
    for (std::int64_t f = 0; f < d; ++f) {
      mad[static_cast<std::size_t>(c * d + f)] +=
          std::abs(static_cast<double>(u[i * d + f]) - mu[static_cast<std::size_t>(c * d + f)]);
    }
  }
  // w_e = 1 / (MAD_e + 1e-4) for present experts; mean over all their entries.
  double total = 0;
  std::int64_t present = 0;
  for (std::int64_t e = 0; e < E; ++e) {
    const auto n = count[static_cast<std::size_t>(e)];
    if (n == 0) continue;
    ++present;
    for (std::int64_t f = 0; f < d; ++f) {
      double& w = mad[static_cast<std::size_t>(e * d + f)];
      w = 1.0 / (w / static_cast<double>(n) + 1e-4);
      total += w;
    }
  }
  if (present == 0) return;  // no tokens
  const double clip = 10.0 * total / static_cast<double>(present * d);
  std::vector<double> colmean(static_cast<std::size_t>(d), 0.0);
  for (std::int64_t e = 0; e < E; ++e) {
    if (count[static_cast<std::size_t>(e)] == 0) continue;
    for (std::int64_t f = 0; f < d; ++f) {
      double& w = mad[static_cast<std::size_t>(e * d + f)];
      w = std::min(w, clip);
      colmean[static_cast<std::size_t>(f)] += w / static_cast<double>(present);
    }
  }
  for (std::int64_t i = 0; i < N; ++i) {
    const std::int64_t c = prev[i];
    for (std::int64_t f = 0; f < d; ++f) {
      m[i * d + f] = static_cast<T>(mad[static_cast<std::size_t>(c * d + f)] /
                                    colmean[static_cast<std::size_t>(f)]);
    }
  }
}

template <typename T>
void topk_rows(const T* x, std::int32_t* idx, std::int64_t n, std::int64_t e, std::int64_t k) {
  for (std::int64_t i = 0; i < n; ++i) {
    const T* r = x + i * e;
    std::int32_t* out = idx + i * k;
    for (std::int64_t j = 0; j < k; ++j) {
      std::int32_t best = -1;
      for (std::int64_t c = 0; c < e; ++c) {
        bool taken = false;
        for (std::int64_t t = 0; t < j; ++t) taken = taken || out[t] == c;
        // Strict '>' keeps the lower index on ties; NaN never wins over a number.
        if (!taken && (best < 0 || r[c] > r[best])) best = static_cast<std::int32_t>(c);
      }
      out[j] = best;
    }
  }
}

namespace {

// The local experts over their contiguous row blocks: one GEMM pair per expert.
template <typename T>
void experts_forward(const MoeDims& dims, const MoeWeights<T>& w, MoeCache<T>& c) {
  const std::int64_t d = dims.d, F = dims.d_ff;
  for (std::int64_t e = 0; e < c.plan.local_experts; ++e) {
    const std::int64_t s0 = c.plan.local_offset[e], rows = c.plan.local_offset[e + 1] - s0;
    if (rows == 0) continue;
    cpu::linear_forward<T>(c.ex_in + s0 * d, w.w1 + e * F * d, w.b1 + e * F, c.h_pre + s0 * F, rows,
                           d, F);
    cpu::gelu_forward<T>(c.h_pre + s0 * F, c.h_act + s0 * F, rows * F);
    cpu::linear_forward<T>(c.h_act + s0 * F, w.w2 + e * d * F, w.b2 + e * d, c.ex_out + s0 * d,
                           rows, F, d);
  }
}

}  // namespace

template <typename T>
void moe_forward(const MoeDims& dims, const RouterOptions& opts, const MoeWeights<T>& w,
                 const MoeInputs<T>& in, T* y, MoeCache<T>& cache, Arena& arena) {
  const T* u = in.u;
  const T* attn_avg = in.attn_avg;
  const std::int32_t* prev_top1 = in.prev_top1;
  const T* ac_scale = in.ac_scale;
  const std::int64_t N = dims.tokens(), d = dims.d, E = dims.experts, K = dims.top_k, F = dims.d_ff;
  RM_CHECK(K >= 1 && K <= E, fmt::format("top_k {} with {} experts", K, E));
  MoeCache<T>& c = cache;
  c = MoeCache<T>{};
  c.probs = alloc_array<T>(arena, N * E);
  c.select = alloc_array<T>(arena, N * E);
  c.lse = alloc_array<T>(arena, N);

  // --- Router: selection vector, routing probabilities, z-loss logits ------------------------
  if (opts.kind == RouterKind::AC) {
    RM_CHECK((prev_top1 != nullptr || ac_scale != nullptr) && w.expert_emb != nullptr,
             "ac router needs the previous layer's assignment and expert embeddings");
    c.scale = alloc_array<T>(arena, N * d);
    c.scaled = alloc_array<T>(arena, N * d);
    c.emb_unit = alloc_array<T>(arena, E * d);
    c.emb_norm = alloc_array<T>(arena, E);
    if (ac_scale != nullptr) {
      std::copy(ac_scale, ac_scale + N * d, c.scale);
    } else {
      ac_feature_weights<T>(dims, u, prev_top1, c.scale);
    }
    for (std::int64_t i = 0; i < N * d; ++i) c.scaled[i] = u[i] * c.scale[i];
    for (std::int64_t e = 0; e < E; ++e) {
      double s = 0;
      for (std::int64_t f = 0; f < d; ++f)
        s += static_cast<double>(w.expert_emb[e * d + f]) * w.expert_emb[e * d + f];
      const double norm = std::sqrt(s);
      RM_CHECK(norm > 0, fmt::format("ac router: expert embedding {} is zero", e));
      c.emb_norm[e] = static_cast<T>(norm);
      for (std::int64_t f = 0; f < d; ++f)
        c.emb_unit[e * d + f] = static_cast<T>(w.expert_emb[e * d + f] / norm);
    }
    cpu::linear_forward<T>(c.scaled, c.emb_unit, nullptr, c.select, N, d, E);  // s = (u*M) E^T
    row_logsumexp<T>(c.select, c.lse, N, E);
    cpu::softmax_forward<T>(c.select, c.probs, N, E);  // r = softmax(s)
  } else {
    RM_CHECK(w.gate != nullptr, "router without a gate weight");
    T* logits = alloc_array<T>(arena, N * E);
    cpu::linear_forward<T>(u, w.gate, nullptr, logits, N, d, E);
    row_logsumexp<T>(logits, c.lse, N, E);
    cpu::softmax_forward<T>(logits, c.probs, N, E);
    if (opts.kind == RouterKind::TopK) {
      std::copy(c.probs, c.probs + N * E, c.select);
    } else if (opts.kind == RouterKind::Similarity) {
      c.graph = alloc_array<T>(arena, dims.batch * dims.seq * dims.seq);
      similarity_graph<T>(dims, opts, u, c.graph);
      graph_mix<T>(c.graph, c.probs, c.select, dims.batch, dims.seq, E);
    } else {
      RM_CHECK(attn_avg != nullptr, "attention router without attention probabilities");
      graph_mix<T>(attn_avg, c.probs, c.select, dims.batch, dims.seq, E);
    }
  }
  // Routing probabilities r: p~ / p for the topk family, softmax(s) for ac.
  const T* r = opts.kind == RouterKind::AC ? c.probs : c.select;

  // --- Top-k and gates -----------------------------------------------------------------------
  c.choice = alloc_array<std::int32_t>(arena, N * K);
  c.gates = alloc_array<T>(arena, N * K);
  c.top1 = alloc_array<std::int32_t>(arena, N);
  topk_rows<T>(c.select, c.choice, N, E, K);
  for (std::int64_t i = 0; i < N; ++i) {
    const T* s = c.select + i * E;
    const std::int32_t* ch = c.choice + i * K;
    T* g = c.gates + i * K;
    if (opts.kind == RouterKind::AC) {  // softmax over the chosen scores (ch[0] is the max)
      double z = 0;
      for (std::int64_t j = 0; j < K; ++j) z += std::exp(static_cast<double>(s[ch[j]]) - s[ch[0]]);
      for (std::int64_t j = 0; j < K; ++j)
        g[j] = static_cast<T>(std::exp(static_cast<double>(s[ch[j]]) - s[ch[0]]) / z);
    } else {  // renormalised probabilities
      double z = 0;
      for (std::int64_t j = 0; j < K; ++j) z += s[ch[j]];
      for (std::int64_t j = 0; j < K; ++j) g[j] = static_cast<T>(s[ch[j]] / z);
    }
    c.top1[i] = ch[0];
  }

  // --- Auxiliary losses --------------------------------------------------------------------
  c.top1_frac = alloc_zeroed<T>(arena, E);
  for (std::int64_t i = 0; i < N; ++i)
    c.top1_frac[c.top1[i]] += static_cast<T>(1.0 / static_cast<double>(N));
  {
    double sw = 0;
    for (std::int64_t e = 0; e < E; ++e) {
      double pe = 0;
      for (std::int64_t i = 0; i < N; ++i) pe += r[i * E + e];
      sw += static_cast<double>(c.top1_frac[e]) * pe / static_cast<double>(N);
    }
    c.switch_loss = N > 0 ? static_cast<double>(E) * sw : 0.0;
    double z = 0;
    for (std::int64_t i = 0; i < N; ++i) z += static_cast<double>(c.lse[i]) * c.lse[i];
    c.z_loss = N > 0 ? z / static_cast<double>(N) : 0.0;
  }

  // --- Capacity: k-major priority, first choices of all tokens first ------------------------
  c.kept = alloc_array<std::uint8_t>(arena, N * K);
  std::vector<std::int64_t> count(static_cast<std::size_t>(E), 0);
  const std::int64_t cap =
      dims.capacity_factor > 0
          ? static_cast<std::int64_t>(std::ceil(dims.capacity_factor * static_cast<double>(N * K) /
                                                static_cast<double>(E)))
          : std::numeric_limits<std::int64_t>::max();
  for (std::int64_t j = 0; j < K; ++j) {
    for (std::int64_t i = 0; i < N; ++i) {
      auto& n = count[static_cast<std::size_t>(c.choice[i * K + j])];
      const bool keep = n < cap;
      c.kept[i * K + j] = keep ? 1 : 0;
      if (keep)
        ++n;
      else
        ++c.dropped;
    }
  }

  // --- Dispatch plan: slots grouped by expert, tokens in order within an expert ---------------
  c.expert_offset = alloc_array<std::int64_t>(arena, E + 1);
  c.expert_offset[0] = 0;
  for (std::int64_t e = 0; e < E; ++e)
    c.expert_offset[e + 1] = c.expert_offset[e] + count[static_cast<std::size_t>(e)];
  c.slots = c.expert_offset[E];
  const std::int64_t S = c.slots;
  c.slot_token = alloc_array<std::int32_t>(arena, S);
  c.slot_pos = alloc_array<std::int32_t>(arena, S);
  c.slot_gate = alloc_array<T>(arena, S);
  {
    std::vector<std::int64_t> next(c.expert_offset, c.expert_offset + E);
    for (std::int64_t i = 0; i < N; ++i) {
      for (std::int64_t j = 0; j < K; ++j) {
        if (!c.kept[i * K + j]) continue;
        const std::int64_t s = next[static_cast<std::size_t>(c.choice[i * K + j])]++;
        c.slot_token[s] = static_cast<std::int32_t>(i);
        c.slot_pos[s] = static_cast<std::int32_t>(i * K + j);
        c.slot_gate[s] = c.gates[i * K + j];
      }
    }
  }

  // --- Experts: exchange to the owning ranks, one GEMM pair per expert, exchange back ------
  c.x_in = alloc_array<T>(arena, S * d);
  cpu::gather_rows_forward<T>(u, c.slot_token, c.x_in, S, N, d);
  c.plan = plan_dispatch(c.expert_offset, E, d, in.ep, arena);
  if (c.plan.exchanges()) {
    c.ex_in = alloc_array<T>(arena, c.plan.owner_rows * d);
    dispatch_rows<T>(c.plan, *in.ep, c.x_in, c.ex_in);
  } else {
    c.ex_in = c.x_in;
  }
  const std::int64_t R = c.plan.owner_rows;
  c.h_pre = alloc_array<T>(arena, R * F);
  c.h_act = alloc_array<T>(arena, R * F);
  c.ex_out = alloc_array<T>(arena, R * d);
  experts_forward<T>(dims, w, c);
  if (c.plan.exchanges()) {
    c.y_out = alloc_array<T>(arena, S * d);
    combine_rows<T>(c.plan, *in.ep, c.ex_out, c.y_out);
  } else {
    c.y_out = c.ex_out;
  }
  // --- Combine -----------------------------------------------------------------------------
  zero(y, N * d);
  cpu::scatter_add_rows_forward<T>(c.y_out, c.slot_token, c.slot_gate, y, S, N, d);
}

template <typename T>
void moe_backward(const MoeDims& dims, const RouterOptions& opts, const MoeWeights<T>& w,
                  const MoeGrads<T>& g, const MoeInputs<T>& in, const MoeCache<T>& c, const T* dy,
                  T* du, T* d_attn_avg, Arena& arena) {
  const T* u = in.u;
  const T* attn_avg = in.attn_avg;
  const std::int64_t N = dims.tokens(), d = dims.d, E = dims.experts, K = dims.top_k, F = dims.d_ff;
  const std::int64_t S = c.slots;
  // --- Combine: d y_out[s] = gate_s * dy[token_s], d gate_s = <dy[token_s], y_out[s]> -------
  T* dy_out = alloc_array<T>(arena, S * d);
  T* dslot_gate = alloc_array<T>(arena, S);
  cpu::scatter_add_rows_backward<T>(dy, c.slot_token, c.y_out, c.slot_gate, dy_out, dslot_gate, S,
                                    N, d);
  // --- Experts (on the owners) ------------------------------------------------------------
  const bool ep = c.plan.exchanges();
  const std::int64_t R = c.plan.owner_rows;
  T* dex_out = dy_out;
  if (ep) {
    dex_out = alloc_array<T>(arena, R * d);
    dispatch_rows<T>(c.plan, *in.ep, dy_out, dex_out);
  }
  T* dh = alloc_array<T>(arena, R * F);
  T* dex_in = alloc_array<T>(arena, R * d);
  for (std::int64_t e = 0; e < c.plan.local_experts; ++e) {
    const std::int64_t s0 = c.plan.local_offset[e], rows = c.plan.local_offset[e + 1] - s0;
    if (rows == 0) continue;
    cpu::linear_backward<T>(dex_out + s0 * d, c.h_act + s0 * F, w.w2 + e * d * F, dh + s0 * F,
                            g.w2 + e * d * F, g.b2 + e * d, rows, F, d);
    cpu::gelu_backward<T>(c.h_pre + s0 * F, dh + s0 * F, dh + s0 * F, rows * F);
    cpu::linear_backward<T>(dh + s0 * F, c.ex_in + s0 * d, w.w1 + e * F * d, dex_in + s0 * d,
                            g.w1 + e * F * d, g.b1 + e * F, rows, d, F);
  }
  T* dx_in = dex_in;
  if (ep) {
    dx_in = alloc_array<T>(arena, S * d);
    combine_rows<T>(c.plan, *in.ep, dex_in, dx_in);
  }
  zero(du, N * d);
  cpu::gather_rows_backward<T>(dx_in, c.slot_token, du, S, N, d);

  // --- Gates -> selection vector -------------------------------------------------------------
  T* dgate = alloc_zeroed<T>(arena, N * K);  // dropped slots keep a zero gradient
  for (std::int64_t s = 0; s < S; ++s) dgate[c.slot_pos[s]] = dslot_gate[s];
  T* dsel = alloc_zeroed<T>(arena, N * E);
  const double aux_scale = opts.aux_coef * static_cast<double>(E) / static_cast<double>(N);
  const double z_scale = opts.z_coef * 2.0 / static_cast<double>(N);
  if (opts.kind == RouterKind::AC) {
    // g = softmax over chosen scores: ds_chosen = g * (dg - sum g dg).
    for (std::int64_t i = 0; i < N; ++i) {
      const T* gi = c.gates + i * K;
      const T* dgi = dgate + i * K;
      double dot = 0;
      for (std::int64_t j = 0; j < K; ++j) dot += static_cast<double>(gi[j]) * dgi[j];
      for (std::int64_t j = 0; j < K; ++j)
        dsel[i * E + c.choice[i * K + j]] += static_cast<T>(gi[j] * (dgi[j] - dot));
    }
    // Switch loss through r = softmax(s), z-loss through lse(s).
    T* dr = alloc_array<T>(arena, N * E);
    for (std::int64_t i = 0; i < N; ++i) {
      for (std::int64_t e = 0; e < E; ++e)
        dr[i * E + e] = static_cast<T>(aux_scale * c.top1_frac[e]);
    }
    T* ds_r = alloc_array<T>(arena, N * E);
    cpu::softmax_backward<T>(c.probs, dr, ds_r, N, E);
    for (std::int64_t i = 0; i < N; ++i) {
      for (std::int64_t e = 0; e < E; ++e) {
        dsel[i * E + e] +=
            ds_r[i * E + e] + static_cast<T>(z_scale * c.lse[i] * c.probs[i * E + e]);
      }
    }
    // s = (u * M) @ emb_unit^T.
    T* dscaled = alloc_array<T>(arena, N * d);
    cpu::gemm<T>(false, false, N, d, E, T(1), dsel, E, c.emb_unit, d, T(0), dscaled, d);
    for (std::int64_t i = 0; i < N * d; ++i) du[i] += dscaled[i] * c.scale[i];
    T* demb_unit = alloc_array<T>(arena, E * d);
    cpu::gemm<T>(true, false, E, d, N, T(1), dsel, E, c.scaled, d, T(0), demb_unit, d);
    for (std::int64_t e = 0; e < E; ++e) {
      const T* q = c.emb_unit + e * d;
      const T* dq = demb_unit + e * d;
      double dot = 0;
      for (std::int64_t f = 0; f < d; ++f) dot += static_cast<double>(q[f]) * dq[f];
      for (std::int64_t f = 0; f < d; ++f)
        g.expert_emb[e * d + f] += static_cast<T>((dq[f] - q[f] * dot) / c.emb_norm[e]);
    }
    return;
  }

  // Topk family: g_j = sel_{c_j} / sum_chosen sel -> dsel_{c_m} = (dg_m - sum_j dg_j g_j) / sum.
  for (std::int64_t i = 0; i < N; ++i) {
    const T* si = c.select + i * E;
    const std::int32_t* ch = c.choice + i * K;
    double sum = 0, dot = 0;
    for (std::int64_t j = 0; j < K; ++j) {
      sum += si[ch[j]];
      dot += static_cast<double>(dgate[i * K + j]) * c.gates[i * K + j];
    }
    for (std::int64_t j = 0; j < K; ++j)
      dsel[i * E + ch[j]] += static_cast<T>((dgate[i * K + j] - dot) / sum);
    // Switch loss: P_e = mean_i r_ie with r = sel.
    for (std::int64_t e = 0; e < E; ++e)
      dsel[i * E + e] += static_cast<T>(aux_scale * c.top1_frac[e]);
  }
  // sel -> p (and the graph).
  T* dp = dsel;
  if (opts.kind != RouterKind::TopK) {
    const std::int64_t B = dims.batch, Tn = dims.seq;
    const T* graph = opts.kind == RouterKind::Similarity ? c.graph : attn_avg;
    dp = alloc_array<T>(arena, N * E);
    // dp_b = A_b^T dsel_b; dA_b = dsel_b p_b^T.
    cpu::gemm_strided_batched<T>(true, false, Tn, E, Tn, T(1), graph, Tn, Tn * Tn, dsel, E, Tn * E,
                                 T(0), dp, E, Tn * E, B);
    T* dgraph = alloc_array<T>(arena, B * Tn * Tn);
    cpu::gemm_strided_batched<T>(false, true, Tn, Tn, E, T(1), dsel, E, Tn * E, c.probs, E, Tn * E,
                                 T(0), dgraph, Tn, Tn * Tn, B);
    if (opts.kind == RouterKind::Attention) {
      RM_CHECK(d_attn_avg != nullptr, "attention router backward without d_attn_avg");
      cpu::axpy<T>(T(1), dgraph, d_attn_avg, B * Tn * Tn);
    } else {
      // S = softmax(L), L = c u u^T (masked): dL = softmax_backward; du += c (dL + dL^T) u.
      cpu::softmax_backward<T>(c.graph, dgraph, dgraph, B * Tn, Tn);
      const T cs = static_cast<T>(1.0 / (opts.tau * std::sqrt(static_cast<double>(d))));
      cpu::gemm_strided_batched<T>(false, false, Tn, d, Tn, cs, dgraph, Tn, Tn * Tn, u, d, Tn * d,
                                   T(1), du, d, Tn * d, B);
      cpu::gemm_strided_batched<T>(true, false, Tn, d, Tn, cs, dgraph, Tn, Tn * Tn, u, d, Tn * d,
                                   T(1), du, d, Tn * d, B);
    }
  }
  // p = softmax(z), z = u W_g^T; z-loss adds z_scale * lse * p to dz.
  T* dz = alloc_array<T>(arena, N * E);
  cpu::softmax_backward<T>(c.probs, dp, dz, N, E);
  for (std::int64_t i = 0; i < N; ++i) {
    for (std::int64_t e = 0; e < E; ++e)
      dz[i * E + e] += static_cast<T>(z_scale * c.lse[i] * c.probs[i * E + e]);
  }
  cpu::gemm<T>(true, false, E, d, N, T(1), dz, E, u, d, T(1), g.gate, d);    // dW_g += dz^T u
  cpu::gemm<T>(false, false, N, d, E, T(1), dz, E, w.gate, d, T(1), du, d);  // du += dz W_g
}

#define RM_INSTANTIATE(T)                                                                        \
  template void topk_rows<T>(const T*, std::int32_t*, std::int64_t, std::int64_t, std::int64_t); \
  template void moe_forward<T>(const MoeDims&, const RouterOptions&, const MoeWeights<T>&,       \
                               const MoeInputs<T>&, T*, MoeCache<T>&, Arena&);                   \
  template void ac_feature_weights<T>(const MoeDims&, const T*, const std::int32_t*, T*);        \
  template void moe_backward<T>(const MoeDims&, const RouterOptions&, const MoeWeights<T>&,      \
                                const MoeGrads<T>&, const MoeInputs<T>&, const MoeCache<T>&,     \
                                const T*, T*, T*, Arena&);
RM_INSTANTIATE(float)
RM_INSTANTIATE(double)
#undef RM_INSTANTIATE

}  // namespace routemoe::layers
