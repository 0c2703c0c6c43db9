// Driver (a) of the kernel table (cases.h): every CPU kernel, instantiated in float and in
// double, against its naive double reference, with the rounding bounds written in the table;
// every other array unchanged, nothing written past the end of an array; for the kernels that
// promise it, bitwise the same result with 1 and 2 threads. Then the contract checks that do not
// fit a table row: index range errors, bad sizes, optional arguments that must give bitwise the
// same result, accumulation order, a multi-step AdamW trajectory.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "framework/cpu/kernels.h"
#include "framework/cpu/moe_kernels.h"
#include "framework/error.h"
#include "framework/ops.h"
#include "tests/kernels/cases.h"

namespace routemoe::kerneltest {
namespace {

// Runs one pass on `h` and checks it; returns what the reference expected (empty for a no-op).
template <typename T>
Expect run_pass(const Case& c, const Pass& pass, HostArrays<T>& h, const std::string& what) {
  const HostArrays<T> before = h;
  Expect expect;
  if (!c.noop) pass.reference(h.snapshot(), expect);
  pass.cpu.get<T>()(h.bind());
  expect_outputs(h, expect, what);
  expect_untouched(h, before, expect, what);
  if (c.threads) {
    ThreadGuard guard;
    HostArrays<T> one = before, two = before;
    cpu::set_num_threads(1);
    pass.cpu.get<T>()(one.bind());
    cpu::set_num_threads(2);
    pass.cpu.get<T>()(two.bind());
    expect_same_arrays(one, two, what + ", 1 vs 2 threads");
  }
  return expect;
}

template <typename T>
void run_case(const Case& c) {
  SCOPED_TRACE(c.kernel + " " + c.name + " (" + type_name<T>() + ")");
  Gen gen(c.kernel + "/" + c.name);
  Data data;
  c.generate(gen, data);
  HostArrays<T> h(data);
  const Expect fwd = run_pass(c, c.forward, h, "forward");
  if (!c.backward) return;
  // The backward reads what the forward saved: the reference's values rounded to T, so that it
  // is checked independently of the forward kernel.
  for (const auto& [name, out] : fwd.outputs()) {
    if (out.rule == Rule::Wide) continue;
    std::vector<double> v(out.want.size());
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = out.want[i].value;
    h.assign(name, v);
  }
  run_pass(c, *c.backward, h, "backward");
}

class KernelReference : public ::testing::TestWithParam<std::string> {
 protected:
  template <typename T>
  void run_all() {
    int n = 0;
    for (const Case& c : cases()) {
      if (c.kernel != GetParam() || c.gpu_scale) continue;
      run_case<T>(c);
      ++n;
    }
    EXPECT_GT(n, 0);
  }
};

TEST_P(KernelReference, Float) {
  run_all<float>();
}
TEST_P(KernelReference, Double) {
  run_all<double>();
}

INSTANTIATE_TEST_SUITE_P(Table, KernelReference,
                         ::testing::ValuesIn(kernels([](const Case&) { return true; })),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// The same cases of every kernel built on GEMMs with cpu::GemmOrder::RowStable (route_probe's
// order, set by ops::RowStableGemm): the same reference and rounding bounds (a sequential sum
// over k is one of the orders the bounds allow), the same thread checks.
TEST(KernelReferenceRowStable, GemmKernels) {
  const ops::RowStableGemm order;
  const std::set<std::string> gemm_kernels = {"gemm",           "gemm_strided_batched",
                                              "linear",         "causal_attention",
                                              "grouped_linear", "grouped_ffn"};
  int n = 0;
  for (const Case& c : cases()) {
    if (gemm_kernels.count(c.kernel) == 0 || c.gpu_scale) continue;
    run_case<float>(c);
    run_case<double>(c);
    ++n;
  }
  EXPECT_GE(n, 6);
}

// RowStable's promise: a row of the product has the same bits whatever the other rows are, how
// many there are, the transposes and the thread count (OpenBLAS does not promise this: the
// first 64 rows of a 256-row product differed in the last bits when computed alone).
TEST(KernelReferenceRowStable, RowsDoNotDependOnTheOtherRows) {
  ThreadGuard guard;
  const ops::RowStableGemm order;
  const std::int64_t m = 67, n = 45, k = 130;
  std::vector<float> a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(k * n));
  std::vector<float> at(a.size()), bt(b.size());
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = std::sin(0.37f * static_cast<float>(i));
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = std::cos(0.11f * static_cast<float>(i));
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < k; ++j) at[j * m + i] = a[i * k + j];
  for (std::int64_t i = 0; i < k; ++i)
    for (std::int64_t j = 0; j < n; ++j) bt[j * k + i] = b[i * n + j];
  cpu::set_num_threads(2);
  std::vector<float> full(static_cast<std::size_t>(m * n));
  cpu::gemm<float>(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, full.data(), n);
  for (int threads : {1, 2}) {
    cpu::set_num_threads(threads);
    for (std::int64_t rows : {1, 3, 4, 5, 17, 64}) {
      for (int form = 0; form < 4; ++form) {
        const bool ta = (form & 1) != 0, tb = (form & 2) != 0;
        std::vector<float> part(static_cast<std::size_t>(rows * n));
        // rows [m - rows, m) on their own: op(A) restricted to those rows
        std::vector<float> sub(static_cast<std::size_t>(rows * k));
        for (std::int64_t i = 0; i < rows; ++i)
          for (std::int64_t j = 0; j < k; ++j)
            sub[ta ? j * rows + i : i * k + j] = a[(m - rows + i) * k + j];
        cpu::gemm<float>(ta, tb, rows, n, k, 1.0f, sub.data(), ta ? rows : k,
                         tb ? bt.data() : b.data(), tb ? k : n, 0.0f, part.data(), n);
        const std::vector<float> want(full.end() - rows * n, full.end());
        EXPECT_TRUE(same_bits(part, want)) << rows << " rows, trans_a " << ta << ", trans_b " << tb
                                           << ", " << threads << " thread(s)";
      }
    }
  }
}

TEST(KernelReferenceRowStable, GuardRestoresTheOrder) {
  ASSERT_EQ(cpu::gemm_order(), cpu::GemmOrder::Blas);
  {
    const ops::RowStableGemm order;
    EXPECT_EQ(cpu::gemm_order(), cpu::GemmOrder::RowStable);
  }
  EXPECT_EQ(cpu::gemm_order(), cpu::GemmOrder::Blas);
}

TEST(KernelTable, NamesAreUniqueAndEveryKernelIsCovered) {
  std::set<std::string> seen;
  for (const Case& c : cases())
    EXPECT_TRUE(seen.insert(c.kernel + "/" + c.name).second) << "duplicate case " << c.name;
  // framework/cpu/kernels.h, each with its CUDA twin ...
  const std::set<std::string> with_twin = {"gemm",          "gemm_strided_batched",
                                           "linear",        "softmax",
                                           "layernorm",     "gelu",
                                           "gather_rows",   "scatter_add_rows",
                                           "cross_entropy", "adamw",
                                           "fill",          "axpy",
                                           "scale",         "add",
                                           "sum_rows",      "sum_squares"};
  // ... and framework/cpu/moe_kernels.h and the fused kernels, without one (yet).
  const std::set<std::string> moe = {
      "mask_future", "head_mean", "mul", "row_logsumexp", "softmax_lse_backward", "row_normalize",
      "broadcast_row", "topk_rows", "topk_gates", "top1_fraction", "switch_loss", "mean_square",
      "capacity_keep", "expert_offsets", "slot_plan", "ac_expert_sums", "ac_expert_absdev",
      "ac_expert_weights", "mixing_row_stats", "grouped_linear",
      // the fused kernels (framework/cpu/fused.cpp, cases_fused.cpp)
      "causal_attention", "grouped_ffn", "cross_entropy_fused"};
  std::set<std::string> expected = with_twin;
  expected.insert(moe.begin(), moe.end());
  const auto listed = kernels([](const Case&) { return true; });
  EXPECT_EQ(std::set<std::string>(listed.begin(), listed.end()), expected);
  // The GPU driver runs exactly the kernels with a twin; all cases of a kernel agree.
  const auto twin = kernels([](const Case& c) { return c.cuda_twin; });
  const auto no_twin = kernels([](const Case& c) { return !c.cuda_twin; });
  EXPECT_EQ(std::set<std::string>(twin.begin(), twin.end()), with_twin);
  EXPECT_EQ(std::set<std::string>(no_twin.begin(), no_twin.end()), moe);
  // Every kernel with a backward is gradient-checked.
  const auto checked = kernels([](const Case& c) { return c.fd && c.backward.has_value(); });
  const auto with_backward = kernels([](const Case& c) { return c.backward.has_value(); });
  EXPECT_EQ(std::set<std::string>(checked.begin(), checked.end()),
            (std::set<std::string>{"linear", "softmax", "layernorm", "gelu", "gather_rows",
                                   "scatter_add_rows", "cross_entropy", "head_mean",
                                   "softmax_lse_backward", "row_normalize", "topk_gates",
                                   "grouped_linear", "causal_attention", "grouped_ffn"}));
  EXPECT_EQ(std::set<std::string>(checked.begin(), checked.end()),
            std::set<std::string>(with_backward.begin(), with_backward.end()));
}

// ================================================================================================
// Contract checks outside the table
// ================================================================================================

template <typename T>
class KernelContract : public ::testing::Test {};
using KernelTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(KernelContract, KernelTypes);

// Out-of-range token ids of an embedding lookup (a gather of table rows) throw Error(Data)
// naming the kernel, in the forward and in the backward.
TYPED_TEST(KernelContract, EmbeddingOutOfRangeIdsThrowData) {
  using T = TypeParam;
  const i64 n = 7, vocab = 13, d = 3;
  std::vector<T> table(vocab * d, T(1)), out(n * d), dout(n * d, T(1)), dtable(vocab * d);
  for (i32 bad : {static_cast<i32>(vocab), static_cast<i32>(vocab + 100), -1,
                  std::numeric_limits<i32>::min()}) {
    std::vector<i32> ids(n, 2);
    ids[5] = bad;
    const std::string what = "id " + std::to_string(bad);
    expect_data_error(
        [&] { cpu::gather_rows_forward<T>(table.data(), ids.data(), out.data(), n, vocab, d); },
        "gather_rows_forward", "embedding lookup " + what);
    expect_data_error(
        [&] { cpu::gather_rows_backward<T>(dout.data(), ids.data(), dtable.data(), n, vocab, d); },
        "gather_rows_backward", "embedding gradient " + what);
  }
}

TYPED_TEST(KernelContract, CrossEntropyOutOfRangeTargetsThrowData) {
  using T = TypeParam;
  const i64 n = 6, v = 11;
  std::vector<T> logits(n * v, T(0.5)), losses(n), lse(n, T(3)), dloss(n, T(1)), dl(n * v);
  for (i32 bad :
       {static_cast<i32>(v), static_cast<i32>(v + 7), -2, std::numeric_limits<i32>::min()}) {
    std::vector<i32> targets = {0, 1, -1, 4, bad, 10};
    const std::string what = "target " + std::to_string(bad);
    expect_data_error(
        [&] {
          cpu::cross_entropy_forward<T>(logits.data(), targets.data(), losses.data(), lse.data(), n,
                                        v);
        },
        "cross_entropy_forward", "cross_entropy_forward " + what);
    expect_data_error(
        [&] {
          cpu::cross_entropy_backward<T>(logits.data(), targets.data(), lse.data(), dloss.data(),
                                         dl.data(), n, v);
        },
        "cross_entropy_backward", "cross_entropy_backward " + what);
  }
}

TYPED_TEST(KernelContract, RowIndicesOutOfRangeThrowData) {
  using T = TypeParam;
  const i64 m = 6, n = 9, d = 2;
  std::vector<T> src(std::max(m, n) * d, T(1)), dst(std::max(m, n) * d), w(m, T(1)), dw(m);
  for (i32 bad :
       {static_cast<i32>(n), static_cast<i32>(n + 50), -1, std::numeric_limits<i32>::min()}) {
    std::vector<i32> idx = {0, 8, 3, bad, 1, 2};
    const std::string what = "index " + std::to_string(bad);
    expect_data_error(
        [&] { cpu::gather_rows_forward<T>(src.data(), idx.data(), dst.data(), m, n, d); },
        "gather_rows_forward", "gather_rows_forward " + what);
    expect_data_error(
        [&] { cpu::gather_rows_backward<T>(src.data(), idx.data(), dst.data(), m, n, d); },
        "gather_rows_backward", "gather_rows_backward " + what);
    expect_data_error(
        [&] {
          cpu::scatter_add_rows_forward<T>(src.data(), idx.data(), w.data(), dst.data(), m, n, d);
        },
        "scatter_add_rows_forward", "scatter_add_rows_forward " + what);
    expect_data_error(
        [&] {
          cpu::scatter_add_rows_forward<T>(src.data(), idx.data(), nullptr, dst.data(), m, n, d);
        },
        "scatter_add_rows_forward", "scatter_add_rows_forward (no weights) " + what);
    expect_data_error(
        [&] {
          cpu::scatter_add_rows_backward<T>(src.data(), idx.data(), src.data(), w.data(),
                                            dst.data(), dw.data(), m, n, d);
        },
        "scatter_add_rows_backward", "scatter_add_rows_backward " + what);
  }
}

// Bad sizes throw routemoe::Error(Shape) (kernels.h: "Bad sizes (negative, above INT_MAX for
// BLAS, too small a leading dimension) throw routemoe::Error(Shape).")
TYPED_TEST(KernelContract, GemmBadSizesThrowShape) {
  using T = TypeParam;
  std::vector<T> a(256, T(1)), b(256, T(1)), c(256, T(0));
  const ErrorKind S = ErrorKind::Shape;
  // GEMM: m = 3, n = 4, k = 5.
  expect_error_kind(
      [&] {
        cpu::gemm<T>(false, false, 3, 4, 5, T(1), a.data(), 4, b.data(), 4, T(0), c.data(), 4);
      },
      S, "gemm lda < k");
  expect_error_kind(
      [&] {
        cpu::gemm<T>(true, false, 3, 4, 5, T(1), a.data(), 2, b.data(), 4, T(0), c.data(), 4);
      },
      S, "gemm trans_a lda < m");
  expect_error_kind(
      [&] {
        cpu::gemm<T>(false, false, 3, 4, 5, T(1), a.data(), 5, b.data(), 3, T(0), c.data(), 4);
      },
      S, "gemm ldb < n");
  expect_error_kind(
      [&] {
        cpu::gemm<T>(false, true, 3, 4, 5, T(1), a.data(), 5, b.data(), 4, T(0), c.data(), 4);
      },
      S, "gemm trans_b ldb < k");
  expect_error_kind(
      [&] {
        cpu::gemm<T>(false, false, 3, 4, 5, T(1), a.data(), 5, b.data(), 4, T(0), c.data(), 3);
      },
      S, "gemm ldc < n");
  expect_error_kind(
      [&] {
        cpu::gemm<T>(false, false, -1, 4, 5, T(1), a.data(), 5, b.data(), 4, T(0), c.data(), 4);
      },
      S, "gemm m < 0");
  expect_error_kind(
      [&] {
        cpu::gemm<T>(false, false, 3, 4, std::int64_t{1} << 32, T(1), a.data(),
                     std::int64_t{1} << 32, b.data(), 4, T(0), c.data(), 4);
      },
      S, "gemm k > INT_MAX");
  expect_error_kind(
      [&] {
        cpu::gemm_strided_batched<T>(false, false, 3, 4, 5, T(1), a.data(), 5, 15, b.data(), 4, 20,
                                     T(0), c.data(), 4, 12, -1);
      },
      S, "gemm_strided_batched batch < 0");
}

// The same contract for the non-BLAS kernels: a negative size is a Shape error, not a no-op.
TYPED_TEST(KernelContract, NegativeSizesThrowShape) {
  using T = TypeParam;
  std::vector<T> a(256, T(1)), b(256, T(1)), c(256, T(0)), d(256, T(0));
  std::vector<i32> ids(64, 0);
  const ErrorKind S = ErrorKind::Shape;
  expect_error_kind(
      [&] { cpu::linear_forward<T>(a.data(), b.data(), nullptr, c.data(), -1, 3, 3); }, S,
      "linear_forward n < 0");
  expect_error_kind([&] { cpu::softmax_forward<T>(a.data(), c.data(), -1, 3); }, S,
                    "softmax_forward rows < 0");
  expect_error_kind(
      [&] {
        cpu::layernorm_forward<T>(a.data(), nullptr, nullptr, c.data(), nullptr, nullptr, 2, -3,
                                  T(1e-5));
      },
      S, "layernorm_forward cols < 0");
  expect_error_kind([&] { cpu::gelu_forward<T>(a.data(), c.data(), -1); }, S, "gelu_forward n < 0");
  expect_error_kind([&] { cpu::gather_rows_forward<T>(a.data(), ids.data(), c.data(), 2, 4, -1); },
                    S, "gather_rows_forward d < 0 (embedding lookup)");
  expect_error_kind(
      [&] { cpu::cross_entropy_forward<T>(a.data(), ids.data(), c.data(), d.data(), -2, 4); }, S,
      "cross_entropy_forward n < 0");
  expect_error_kind([&] { cpu::gather_rows_forward<T>(a.data(), ids.data(), c.data(), -1, 4, 2); },
                    S, "gather_rows_forward m < 0");
  expect_error_kind(
      [&] { cpu::scatter_add_rows_forward<T>(a.data(), ids.data(), nullptr, c.data(), 2, 4, -1); },
      S, "scatter_add_rows_forward d < 0");
  expect_error_kind([&] { cpu::fill<T>(c.data(), T(0), -1); }, S, "fill n < 0");
  expect_error_kind([&] { cpu::sum_rows<T>(a.data(), c.data(), 2, -1); }, S, "sum_rows cols < 0");
}

// Optional arguments that must not change the other results: bitwise the same as the full call.
TYPED_TEST(KernelContract, LinearBackwardNullDwLeavesDxAndDb) {
  using T = TypeParam;
  Gen g("linear_backward dw=null");
  const i64 n = 7, in = 5, out = 3;
  auto vec = [&](i64 k) {
    const auto v = g.uniform(k, -1, 1);
    return std::vector<T>(v.begin(), v.end());
  };
  const auto x = vec(n * in), w = vec(out * in), dy = vec(n * out), db0 = vec(out);
  std::vector<T> dx_full(n * in), dw_full(out * in, T(0));
  auto db_full = db0;
  cpu::linear_backward<T>(dy.data(), x.data(), w.data(), dx_full.data(), dw_full.data(),
                          db_full.data(), n, in, out);
  std::vector<T> dx(n * in, std::numeric_limits<T>::quiet_NaN());
  auto db = db0;
  cpu::linear_backward<T>(dy.data(), x.data(), w.data(), dx.data(), nullptr, db.data(), n, in, out);
  EXPECT_TRUE(same_bits(dx, dx_full)) << "dx with dw null";
  EXPECT_TRUE(same_bits(db, db_full)) << "db with dw null";
}

TYPED_TEST(KernelContract, CrossEntropyNullLseLeavesLosses) {
  using T = TypeParam;
  Gen g("cross_entropy_forward lse=null");
  const i64 n = 9, v = 33;
  const auto lv = g.uniform(n * v, -8, 8);
  const std::vector<T> logits(lv.begin(), lv.end());
  auto targets = g.ids(n, v);
  targets[4] = -1;
  std::vector<T> l1(n), lse(n), l2(n, std::numeric_limits<T>::quiet_NaN());
  cpu::cross_entropy_forward<T>(logits.data(), targets.data(), l1.data(), lse.data(), n, v);
  cpu::cross_entropy_forward<T>(logits.data(), targets.data(), l2.data(), nullptr, n, v);
  EXPECT_TRUE(same_bits(l1, l2)) << "losses with lse null";
}

// layernorm_backward with gamma null is the backward with gamma = ones, bitwise.
TYPED_TEST(KernelContract, LayerNormBackwardNullGammaIsOnes) {
  using T = TypeParam;
  Gen g("layernorm_backward gamma=null");
  for (auto [rows, cols] : {std::pair<i64, i64>{3, 7}, {33, 65}, {1, 1}}) {
    SCOPED_TRACE(::testing::Message() << "rows=" << rows << " cols=" << cols);
    auto vec = [&](i64 k, double lo, double hi) {
      const auto v = g.uniform(k, lo, hi);
      return std::vector<T>(v.begin(), v.end());
    };
    const auto x = vec(rows * cols, -2, 2), dy = vec(rows * cols, -1, 1);
    const std::vector<T> ones(cols, T(1));
    std::vector<T> y(x.size()), mean(rows), rstd(rows);
    cpu::layernorm_forward<T>(x.data(), nullptr, nullptr, y.data(), mean.data(), rstd.data(), rows,
                              cols, T(1e-5));
    std::vector<T> dx1(x.size()), dg1(cols, T(0)), db1(cols, T(0));
    std::vector<T> dx2(x.size()), dg2(cols, T(0)), db2(cols, T(0));
    cpu::layernorm_backward<T>(dy.data(), x.data(), ones.data(), mean.data(), rstd.data(),
                               dx1.data(), dg1.data(), db1.data(), rows, cols);
    cpu::layernorm_backward<T>(dy.data(), x.data(), nullptr, mean.data(), rstd.data(), dx2.data(),
                               dg2.data(), db2.data(), rows, cols);
    EXPECT_TRUE(same_bits(dx1, dx2)) << "backward dx, gamma null vs ones";
    EXPECT_TRUE(same_bits(dg1, dg2)) << "backward dgamma, gamma null vs ones";
    EXPECT_TRUE(same_bits(db1, db2)) << "backward dbeta, gamma null vs ones";
  }
}

// The embedding gradient (gather_rows_backward) and the combine (scatter_add_rows_forward)
// accumulate repeated rows in increasing index order: bitwise the sequential sum in T, whatever
// the thread count (columns wide enough to run in parallel).
TYPED_TEST(KernelContract, ScatterAccumulatesInIncreasingIndexOrder) {
  using T = TypeParam;
  ThreadGuard guard;
  Gen g("accumulation order");
  const i64 m = 3000, n = 7, d = 96;
  const auto sv = g.uniform(m * d, -1, 1), dv = g.uniform(n * d, -1, 1);
  const std::vector<T> src(sv.begin(), sv.end()), dst0(dv.begin(), dv.end());
  const auto idx = g.ids(m, n);
  std::vector<T> expect = dst0;
  for (i64 i = 0; i < m; ++i)
    for (i64 j = 0; j < d; ++j) expect[idx[i] * d + j] += src[i * d + j];
  for (int threads : {1, 2}) {
    cpu::set_num_threads(threads);
    auto a = dst0, b = dst0;
    cpu::gather_rows_backward<T>(src.data(), idx.data(), a.data(), m, n, d);
    cpu::scatter_add_rows_forward<T>(src.data(), idx.data(), nullptr, b.data(), m, n, d);
    EXPECT_TRUE(same_bits(a, expect)) << "gather_rows_backward, threads " << threads;
    EXPECT_TRUE(same_bits(b, expect)) << "scatter_add_rows_forward, threads " << threads;
  }
}

// Six AdamW steps in double against an independent double trajectory: ~1e-12 relative. (The table
// checks each step on its own, from the state of the steps before it.)
TEST(KernelContract, AdamWTrajectoryDouble) {
  Gen g("adamw trajectory");
  const cpu::AdamWHyper variants[] = {{1e-2, 0.9, 0.95, 1e-8, 0.1, 1},
                                      {3e-3, 0.8, 0.999, 1e-6, 0.0, 1}};
  for (const auto& base : variants)
    for (i64 n : {1, 7, 65}) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " lr=" << base.lr);
      auto p = g.uniform(n, -1, 1);
      std::vector<double> m(n, 0.0), v(n, 0.0), pe = p, me = m, ve = v;
      for (std::int64_t step = 1; step <= 6; ++step) {
        cpu::AdamWHyper h = base;
        h.step = step;
        const auto grad = g.uniform(n, -2, 2);
        const double c1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
        const double c2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
        for (i64 i = 0; i < n; ++i) {
          me[i] = h.beta1 * me[i] + (1 - h.beta1) * grad[i];
          ve[i] = h.beta2 * ve[i] + (1 - h.beta2) * grad[i] * grad[i];
          pe[i] -= h.lr * ((me[i] / c1) / (std::sqrt(ve[i] / c2) + h.eps) + h.weight_decay * pe[i]);
        }
        cpu::adamw_update<double>(p.data(), grad.data(), m.data(), v.data(), n, h);
      }
      std::vector<double> tol(n);
      for (i64 i = 0; i < n; ++i) tol[i] = 1e-12 * (1.0 + std::abs(pe[i]));
      EXPECT_TRUE(within(p, pe, tol)) << "end-to-end param";
    }
}

// The MoE kernels (moe_kernels.h): every index argument is range-checked and throws Error(Data)
// naming the kernel, before anything is written out of bounds.
TYPED_TEST(KernelContract, MoeIndicesOutOfRangeThrowData) {
  using T = TypeParam;
  const i64 n = 4, e = 5, k = 2, d = 3;
  std::vector<T> s(n * e, T(0.2)), gates(n * k, T(0.5)), dgates(n * k, T(1)), ds(n * e);
  std::vector<T> u(n * d, T(1)), w(e * d), frac(e), slot_gate(n * k);
  std::vector<i32> top1(n), slot_token(n * k), slot_pos(n * k);
  std::vector<std::uint8_t> kept(n * k, 1);
  std::vector<i64> counts(e), offset = {0, 2, 4, 6, 8, 8};
  std::vector<double> sum(e * d, 1.0), count(e, 2.0), absdev(e * d, 0.0);
  for (i32 bad :
       {static_cast<i32>(e), static_cast<i32>(e + 9), -1, std::numeric_limits<i32>::min()}) {
    std::vector<i32> choice = {0, 1, 2, 3, 4, bad, 1, 0};
    std::vector<i32> assign = {0, 2, bad, 1};
    const std::string what = "index " + std::to_string(bad);
    expect_data_error(
        [&] {
          cpu::topk_gates_forward<T>(s.data(), choice.data(), gates.data(), top1.data(), n, e, k,
                                     cpu::GateRule::Renormalize);
        },
        "topk_gates_forward", "topk_gates_forward " + what);
    expect_data_error(
        [&] {
          cpu::topk_gates_backward<T>(s.data(), choice.data(), gates.data(), dgates.data(),
                                      ds.data(), n, e, k, cpu::GateRule::SoftmaxOfChosen);
        },
        "topk_gates_backward", "topk_gates_backward " + what);
    expect_data_error([&] { cpu::top1_fraction<T>(assign.data(), frac.data(), n, e); },
                      "top1_fraction", "top1_fraction " + what);
    expect_data_error(
        [&] { cpu::capacity_keep(choice.data(), kept.data(), counts.data(), n, e, k, 3); },
        "capacity_keep", "capacity_keep " + what);
    expect_data_error(
        [&] {
          cpu::slot_plan<T>(choice.data(), kept.data(), gates.data(), offset.data(),
                            slot_token.data(), slot_pos.data(), slot_gate.data(), n, e, k);
        },
        "slot_plan", "slot_plan " + what);
    expect_data_error(
        [&] { cpu::ac_expert_sums<T>(u.data(), assign.data(), sum.data(), count.data(), n, d, e); },
        "ac_expert_sums", "ac_expert_sums " + what);
    expect_data_error(
        [&] {
          cpu::ac_expert_absdev<T>(u.data(), assign.data(), sum.data(), count.data(), absdev.data(),
                                   n, d, e);
        },
        "ac_expert_absdev", "ac_expert_absdev " + what);
  }
}

// top-k needs 1 <= k <= e (a Shape error); a zero row has no direction (a Data error); negative
// sizes are Shape errors.
TYPED_TEST(KernelContract, MoeBadSizesThrow) {
  using T = TypeParam;
  const ErrorKind S = ErrorKind::Shape;
  std::vector<T> x(64, T(1)), y(64);
  std::vector<i32> idx(64);
  std::vector<std::uint8_t> kept(64);
  std::vector<i64> counts(64), offset(65, 0);
  expect_error_kind([&] { cpu::topk_rows<T>(x.data(), idx.data(), 3, 4, 0); }, S,
                    "topk_rows k = 0");
  expect_error_kind([&] { cpu::topk_rows<T>(x.data(), idx.data(), 3, 4, 5); }, S,
                    "topk_rows k > e");
  std::vector<T> rows = {1, 2, 0, 0, 3, 4};  // row 1 is zero
  std::vector<T> unit(6), norm(3);
  expect_data_error([&] { cpu::row_normalize<T>(rows.data(), unit.data(), norm.data(), 3, 2); },
                    "row_normalize", "row_normalize zero row");
  expect_error_kind([&] { cpu::mask_future<T>(x.data(), 4, -2); }, S, "mask_future t < 0");
  expect_error_kind([&] { cpu::head_mean<T>(x.data(), y.data(), 2, -1, 3); }, S,
                    "head_mean heads < 0");
  expect_error_kind([&] { cpu::mul<T>(x.data(), x.data(), y.data(), -1); }, S, "mul n < 0");
  expect_error_kind([&] { cpu::row_logsumexp<T>(x.data(), y.data(), -1, 3); }, S,
                    "row_logsumexp n < 0");
  expect_error_kind([&] { cpu::topk_rows<T>(x.data(), idx.data(), -1, 4, 2); }, S,
                    "topk_rows n < 0");
  expect_error_kind(
      [&] { cpu::capacity_keep(idx.data(), kept.data(), counts.data(), 2, -1, 1, 3); }, S,
      "capacity_keep e < 0");
  expect_error_kind([&] { cpu::expert_offsets(counts.data(), offset.data(), -1); }, S,
                    "expert_offsets e < 0");
  expect_error_kind(
      [&] {
        cpu::grouped_linear_forward<T>(x.data(), x.data(), nullptr, y.data(), offset.data(), 2, -3,
                                       2);
      },
      S, "grouped_linear_forward in < 0");
}

TEST(KernelContract, SetNumThreadsRoundTrip) {
  ThreadGuard guard;
  cpu::set_num_threads(3);
  EXPECT_EQ(cpu::num_threads(), 3);
  cpu::set_num_threads(1);
  EXPECT_EQ(cpu::num_threads(), 1);
  expect_error_kind([] { cpu::set_num_threads(0); }, ErrorKind::Config, "set_num_threads(0)");
}

}  // namespace
}  // namespace routemoe::kerneltest
