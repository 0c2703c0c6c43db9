#pragma once
// CPU kernels of the MoE layer and its routers: routing scores, top-k and gates, auxiliary-loss
// statistics, capacity and the slot plan, AC feature weights, grouped expert GEMMs, and the small
// attention helpers (causal mask, head average). The conventions of framework/cpu/kernels.h hold
// here too (row-major; float and double; zero sizes are no-ops; "+=" accumulates; index
// arguments are range-checked and throw Error(Data); results do not depend on the thread count;
// sums of float data are accumulated in double). docs/model.md gives the equations.

#include <cstdint>

namespace routemoe::cpu {

// ----------------------------------------------------------------------------------------------
// Attention helpers.
// Causal mask of square score matrices: x viewed as [rows, t] where row r is query i = r % t;
// x[r, j] = -inf for j > i.
template <typename T>
void mask_future(T* x, std::int64_t rows, std::int64_t t);
// Head average: avg[b, m] = (1/heads) * sum_h p[b, h, m] for p[batch, heads, m] (overwritten).
template <typename T>
void head_mean(const T* p, T* avg, std::int64_t batch, std::int64_t heads, std::int64_t m);
// Backward of head_mean: dp[b, h, m] += (1/heads) * davg[b, m].
template <typename T>
void head_mean_backward(const T* davg, T* dp, std::int64_t batch, std::int64_t heads,
                        std::int64_t m);

// Causal self-attention core of B sequences of T tokens and H heads of width dh (d = H dh), with
// scale = 1 / sqrt(dh) (rounded to T): for every sequence b and head h, with Q, K, V the [T, dh]
// column blocks h dh.. of the q, k, v thirds of qkv[B T, 3d],
//   probs[b, h] = softmax over j <= i of scale Q K^T (entries j > i are 0; softmax rounding as
//                 softmax_forward's),   ctx[b T + i, h dh + c] = (probs[b, h] V)[i, c].
// probs[B, H, T, T] and ctx[B T, d] are overwritten. Only the causal half is computed: row
// blocks of 64 queries against the keys up to the block's end. (b, h) pairs run in parallel,
// one thread each (single-threaded GEMMs), so the result does not depend on the thread count.
template <typename T>
void causal_attention_forward(const T* qkv, T* probs, T* ctx, std::int64_t batch, std::int64_t t,
                              std::int64_t heads, std::int64_t dh);
// Backward of causal_attention_forward: dqkv[B T, 3d] overwritten from dctx[B T, d] and the
// saved probs; d_avg[B, T, T] (may be null) is a gradient arriving at the head average of the
// probabilities (head_mean), added to every head's with weight 1/H (rounded to T) before the
// softmax backward. Causal half only; parallel over (b, h) as the forward.
template <typename T>
void causal_attention_backward(const T* qkv, const T* probs, const T* dctx, const T* d_avg, T* dqkv,
                               std::int64_t batch, std::int64_t t, std::int64_t heads,
                               std::int64_t dh);

// ----------------------------------------------------------------------------------------------
// Elementwise product y[n] = a[n] * b[n] (y may alias a or b).
template <typename T>
void mul(const T* a, const T* b, T* y, std::int64_t n);
// Row-wise log-sum-exp: out[i] = log sum_j exp(x[i, j]) of x[n, e] (max-subtracted, double).
template <typename T>
void row_logsumexp(const T* x, T* out, std::int64_t n, std::int64_t e);
// Gradient through p = softmax(z) and lse = logsumexp(z), row-wise over [n, e]:
// dz = p * (dp - sum_j dp_j p_j) + dlse_i * p (overwritten; dz may alias dp).
template <typename T>
void softmax_lse_backward(const T* p, const T* dp, const T* dlse, T* dz, std::int64_t n,
                          std::int64_t e);
// Unit rows: unit[r, :] = x[r, :] / norm[r], norm[r] = |x[r, :]| (double accumulation) of
// x[rows, cols]. A zero row throws Error(Data).
template <typename T>
void row_normalize(const T* x, T* unit, T* norm, std::int64_t rows, std::int64_t cols);
// dx[r, :] += (dunit[r, :] - unit[r, :] * <unit[r, :], dunit[r, :]>) / norm[r].
template <typename T>
void row_normalize_backward(const T* unit, const T* norm, const T* dunit, T* dx, std::int64_t rows,
                            std::int64_t cols);
// x[n, e] = alpha * v[e] for every row (alpha * v computed in double, then rounded).
template <typename T>
void broadcast_row(const T* v, double alpha, T* x, std::int64_t n, std::int64_t e);

// ----------------------------------------------------------------------------------------------
// Top-k and gates.
// idx[n, k] = the k largest entries of each row of x[n, e], best first; ties go to the lower
// index and a NaN never wins over a number. Requires 1 <= k <= e.
template <typename T>
void topk_rows(const T* x, std::int32_t* idx, std::int64_t n, std::int64_t e, std::int64_t k);

// How the gate weights of the k chosen experts derive from the selection scores s[n, e]:
//   Renormalize:     g_j = s[c_j] / sum_m s[c_m]            (softmax routers: s are probabilities)
//   SoftmaxOfChosen: g_j = exp(s[c_j]) / sum_m exp(s[c_m])  (ac: s are scores)
enum class GateRule { Renormalize, SoftmaxOfChosen };

// gates[n, k] from s[n, e] at choice[n, k]; top1[n] = choice[i, 0].
template <typename T>
void topk_gates_forward(const T* s, const std::int32_t* choice, T* gates, std::int32_t* top1,
                        std::int64_t n, std::int64_t e, std::int64_t k, GateRule rule);
// ds[n, e] = gradient of the gates with respect to s (overwritten; zero off the chosen experts).
template <typename T>
void topk_gates_backward(const T* s, const std::int32_t* choice, const T* gates, const T* dgates,
                         T* ds, std::int64_t n, std::int64_t e, std::int64_t k, GateRule rule);

// ----------------------------------------------------------------------------------------------
// Auxiliary-loss statistics.
// frac[e] = (tokens i with top1[i] == e) / n  (overwritten; all zero when n == 0).
template <typename T>
void top1_fraction(const std::int32_t* top1, T* frac, std::int64_t n, std::int64_t e);
// Switch loss E * sum_e frac[e] * P_e with P_e = mean_i probs[i, e] of probs[n, e] (0 when n == 0).
template <typename T>
double switch_loss(const T* frac, const T* probs, std::int64_t n, std::int64_t e);
// mean_i x[i]^2 over n (0 when n == 0): the router z-loss of the log-sum-exps.
template <typename T>
double mean_square(const T* x, std::int64_t n);

// ----------------------------------------------------------------------------------------------
// Capacity and the slot plan. A slot is (token i, choice j); slot position i * k + j.
// kept[n, k] = 1 when the slot fits its expert's capacity `cap` (cap < 0: unlimited). Slots are
// admitted k-major: all first choices in token order, then all second choices, ...
// counts[e] = kept slots of expert e (overwritten). Returns the number of dropped slots.
std::int64_t capacity_keep(const std::int32_t* choice, std::uint8_t* kept, std::int64_t* counts,
                           std::int64_t n, std::int64_t e, std::int64_t k, std::int64_t cap);
// offset[e + 1] = exclusive prefix sum of counts[e] (offset[0] = 0).
void expert_offsets(const std::int64_t* counts, std::int64_t* offset, std::int64_t e);
// Kept slots grouped by expert (offset from expert_offsets), tokens in order within an expert:
// slot_token[S], slot_pos[S] = i * k + j, slot_gate[S] = gates[i, j].
template <typename T>
void slot_plan(const std::int32_t* choice, const std::uint8_t* kept, const T* gates,
               const std::int64_t* offset, std::int32_t* slot_token, std::int32_t* slot_pos,
               T* slot_gate, std::int64_t n, std::int64_t e, std::int64_t k);

// ----------------------------------------------------------------------------------------------
// Adaptive Clustering router (docs/model.md, "ac"). With c = assign[n] the previous MoE layer's
// top-1 expert of each token, in three passes (the sums may be added over ranks in between):
// sum[e, d] += u[i, :] and count[e] += 1 over tokens with c_i = e.
template <typename T>
void ac_expert_sums(const T* u, const std::int32_t* assign, double* sum, double* count,
                    std::int64_t n, std::int64_t d, std::int64_t e);
// absdev[e, f] += |u[i, f] - sum[e, f] / count[e]| over tokens with c_i = e.
template <typename T>
void ac_expert_absdev(const T* u, const std::int32_t* assign, const double* sum,
                      const double* count, double* absdev, std::int64_t n, std::int64_t d,
                      std::int64_t e);
// w[e, d] (overwritten): for experts with count > 0, 1 / (absdev / count + eps), every entry
// clipped to at most clip_factor x the mean of all entries, then each feature column divided by
// its mean over those experts. Rows of experts without tokens are 0 (they are never used).
template <typename T>
void ac_expert_weights(const double* absdev, const double* count, T* w, std::int64_t d,
                       std::int64_t e, double eps, double clip_factor);

// ----------------------------------------------------------------------------------------------
// Graph routers (docs/model.md, "Graph diagnostics").
// Statistics of the mixing matrices M_b = alpha I + (1 - alpha) a_b of a[batch, t, t] (rows are
// distributions: non-negative, summing to one; row r is query i = r % t). Row i may use n_i
// tokens: i + 1 when `causal` (entries j > i are not read), else t. Per row: the self-weight M_ii,
// the entropy H_i = -sum_j M_ij log M_ij (0 log 0 = 0), exp(H_i), and for rows with n_i >= 2
// H_i / log(n_i) (1: uniform over the tokens it may use). out[5] (host memory, overwritten):
// the sums over all rows of the first three, the sum of the fourth and the number of rows it
// covers. Requires 0 <= alpha <= 1.
template <typename T>
void mixing_row_stats(const T* a, double alpha, std::int64_t batch, std::int64_t t, bool causal,
                      double* out);

// ----------------------------------------------------------------------------------------------
// Grouped linear layer (the expert FFN GEMMs over all local experts): for g < groups, rows
// [offset[g], offset[g + 1]) of x[R, in] give rows of y[R, out] = x @ w[g]^T + b[g], with
// w[groups, out, in] and b[groups, out]. Groups run one after another.
template <typename T>
void grouped_linear_forward(const T* x, const T* w, const T* b, T* y, const std::int64_t* offset,
                            std::int64_t groups, std::int64_t in, std::int64_t out);
// dx[R, in] overwritten; dw[groups, out, in] += ; db[groups, out] += .
template <typename T>
void grouped_linear_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* db,
                             const std::int64_t* offset, std::int64_t groups, std::int64_t in,
                             std::int64_t out);

// The expert FFN over all local experts in one call (fc -> GELU -> proj, grouped as
// grouped_linear): for g < groups, rows [offset[g], offset[g + 1]) of x[R, d] give
//   h_pre = x w1[g]^T + b1[g]            ([R, f], saved for the backward)
//   y     = gelu(h_pre) w2[g]^T + b2[g]  ([R, d])
// with w1[groups, f, d], b1[groups, f], w2[groups, d, f], b2[groups, d] (biases may be null).
// h_pre and y are overwritten; gelu(h_pre) is not kept (the backward recomputes it). The values
// are those of grouped_linear_forward, gelu_forward, grouped_linear_forward in sequence. With at
// least as many non-empty groups as threads, groups run in parallel, one thread each with its
// GEMMs single-threaded and its GELU cache-warm; otherwise one after another with all threads.
// The result does not depend on the thread count.
template <typename T>
void grouped_ffn_forward(const T* x, const T* w1, const T* b1, const T* w2, const T* b2, T* h_pre,
                         T* y, const std::int64_t* offset, std::int64_t groups, std::int64_t d,
                         std::int64_t f);
// Backward of grouped_ffn_forward from dy[R, d], x and h_pre (GELU recomputed from h_pre):
// dx[R, d] overwritten (skipped when null); dw1, db1, dw2, db2 += (biases skipped when null). The
// values are those of grouped_linear_backward (proj), gelu_backward, grouped_linear_backward (fc).
template <typename T>
void grouped_ffn_backward(const T* dy, const T* x, const T* h_pre, const T* w1, const T* w2, T* dx,
                          T* dw1, T* db1, T* dw2, T* db2, const std::int64_t* offset,
                          std::int64_t groups, std::int64_t d, std::int64_t f);

}  // namespace routemoe::cpu
