// The kernel test table (cases.h): for every kernel, its sizes (odd, zero and large ones), input
// generator, naive double reference with the tolerance of each output written next to it, the
// CPU call and the CUDA call.
//
// Two tolerances per output element (see support.h and cases.h):
//   ck, mag  the CPU kernel against the reference: |cpu - ref| <= bound<T>(ck) * mag, i.e.
//            c K u S with u the unit roundoff of the type under test;
//   gpu      the CUDA kernel against the CPU kernel in fp32 (absolute). The CPU kernels mostly
//            accumulate in double, the CUDA kernels in fp32 (cuBLAS, block reductions), so a
//            reduction of L terms gets c (L + c') u sum|terms| with small constants covering the
//            few extra roundings around it and both implementations' errors; transcendental
//            functions (expf, tanhf, logf: at most 2 ulps in CUDA and in glibc) add the
//            propagation of their argument's rounding. kTiny absorbs fp32 subnormals.
// Where the reference formula needs the CPU's output (|y|, |dx| terms of the CUDA bounds) it uses
// the exact value instead, which differs from it by far less than the bound.

#include "tests/kernels/cases.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <iterator>
#include <limits>
#include <numbers>

#include "framework/cpu/kernels.h"

#if ROUTEMOE_KERNEL_CASES_CUDA
#include "framework/cuda/context.h"
#include "framework/cuda/kernels.h"
// The CUDA call of a pass; the tokens vanish in a build without CUDA.
#define ON_CUDA(...) __VA_ARGS__
#else
#define ON_CUDA(...)
#endif

namespace routemoe::kerneltest {

namespace {
// Empty Expect for calls whose outputs do not exist (cases.h: Case::noop has no reference).
void no_reference(const Data&, Expect&) {}
}  // namespace

void set_noop(Case& c) {
  c.noop = true;
  c.forward.reference = no_reference;
  if (c.backward) c.backward->reference = no_reference;
}

std::string flag(bool on, const char* word) {
  return on ? std::string(" ") + word : std::string();
}

namespace {

#if ROUTEMOE_KERNEL_CASES_CUDA
namespace gpu = routemoe::cuda;
using Ctx = gpu::Context;
using FB = Bind<float>;
#endif

using Table = std::vector<Case>;

// ================================================================================================
// GEMM and strided batched GEMM
// ================================================================================================

struct GemmSpec {
  bool ta = false, tb = false;
  i64 m = 1, n = 1, k = 1;
  bool batched = false;  // gemm_strided_batched (else gemm)
  i64 batch = 1;
  i64 pad_a = 0, pad_b = 0, pad_c = 0;  // leading dimension above the minimum
  i64 gap_a = 0, gap_b = 0, gap_c = 0;  // strides above the matrix size (batched)
  bool broadcast_b = false;             // stride_b = 0
  double alpha = 1.0, beta = 0.0;       // exactly representable in float
};

bool power_of_two_or_zero(double x) {
  int e = 0;
  return x == 0.0 || std::abs(std::frexp(x, &e)) == 0.5;
}

// Padding columns and gaps between matrices are NaN in a and b (a kernel that reads them
// produces NaN and fails) and kSentinel in c (must stay untouched). When beta == 0 the matrix
// part of c is NaN: it must be overwritten, NaN not propagated.
void add_gemm(Table& t, const GemmSpec& s) {
  const i64 a_rows = s.ta ? s.k : s.m, a_cols = s.ta ? s.m : s.k;
  const i64 b_rows = s.tb ? s.n : s.k, b_cols = s.tb ? s.k : s.n;
  const i64 lda = a_cols + s.pad_a, ldb = b_cols + s.pad_b, ldc = s.n + s.pad_c;
  const i64 batch = s.batched ? s.batch : 1;
  const i64 stride_a = a_rows * lda + s.gap_a;
  const i64 stride_b = s.broadcast_b ? 0 : b_rows * ldb + s.gap_b;
  const i64 stride_c = s.m * ldc + s.gap_c;
  const i64 nb = s.broadcast_b ? std::min<i64>(batch, 1) : batch;
  const i64 size_a = batch * stride_a;
  const i64 size_b = nb * std::max(stride_b, b_rows * ldb);
  const i64 size_c = batch * stride_c;
  Case c;
  c.kernel = s.batched ? "gemm_strided_batched" : "gemm";
  c.name =
      fmt::format("m={} n={} k={}{}{} ld+{},{},{} alpha={} beta={}", s.m, s.n, s.k,
                  flag(s.ta, "ta"), flag(s.tb, "tb"), s.pad_a, s.pad_b, s.pad_c, s.alpha, s.beta);
  if (s.batched)
    c.name += fmt::format(" batch={} gaps={},{},{}{}", s.batch, s.gap_a, s.gap_b, s.gap_c,
                          flag(s.broadcast_b, "broadcast_b"));
  c.generate = [=](Gen& g, Data& d) {
    auto& a = d.value("a", size_a);
    auto& b = d.value("b", size_b);
    auto& cc = d.value("c", size_c, kSentinel);
    for (i64 q = 0; q < batch; ++q)
      for (i64 r = 0; r < a_rows; ++r)
        for (i64 j = 0; j < a_cols; ++j) a[q * stride_a + r * lda + j] = g.uniform1(-1, 1);
    for (i64 q = 0; q < nb; ++q)
      for (i64 r = 0; r < b_rows; ++r)
        for (i64 j = 0; j < b_cols; ++j) b[q * stride_b + r * ldb + j] = g.uniform1(-1, 1);
    for (i64 q = 0; q < batch; ++q)
      for (i64 i = 0; i < s.m; ++i)
        for (i64 j = 0; j < s.n; ++j)
          cc[q * stride_c + i * ldc + j] = s.beta == 0.0 ? kNaN : g.uniform1(-1, 1);
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    using T = ElemOf<decltype(b)>;
    if (s.batched) {
      cpu::gemm_strided_batched<T>(s.ta, s.tb, s.m, s.n, s.k, static_cast<T>(s.alpha), b["a"], lda,
                                   stride_a, b["b"], ldb, stride_b, static_cast<T>(s.beta), b["c"],
                                   ldc, stride_c, batch);
    } else {
      cpu::gemm<T>(s.ta, s.tb, s.m, s.n, s.k, static_cast<T>(s.alpha), b["a"], lda, b["b"], ldb,
                   static_cast<T>(s.beta), b["c"], ldc);
    }
  });
  ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
    if (s.batched) {
      gpu::gemm_strided_batched(ctx, s.ta, s.tb, s.m, s.n, s.k, static_cast<float>(s.alpha), b["a"],
                                lda, stride_a, b["b"], ldb, stride_b, static_cast<float>(s.beta),
                                b["c"], ldc, stride_c, batch);
    } else {
      gpu::gemm(ctx, s.ta, s.tb, s.m, s.n, s.k, static_cast<float>(s.alpha), b["a"], lda, b["b"],
                ldb, static_cast<float>(s.beta), b["c"], ldc);
    }
  });
  // c = alpha op(a) op(b) + beta c: a length-k dot product costs k roundings, alpha/beta/add 3
  // more: ck = 2 (k + 3), S = |alpha| sum_p |a_ip b_pj| + |beta c_ij|. k == 0: c = beta c, a
  // scaling by zero or a power of two (every beta here) is exact, ck = 0.
  // CUDA (cuBLAS, fp32): 2 (k + 2) u S. Outside the [m, n] blocks c is unchanged (tol 0).
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& A = in["a"];
    const auto& B = in["b"];
    const auto& C = in["c"];
    auto& out = e.out("c", size_c);
    for (i64 i = 0; i < size_c; ++i) out[i].value = C[i];
    const bool exact_scale = power_of_two_or_zero(s.beta);
    for (i64 q = 0; q < batch; ++q)
      for (i64 i = 0; i < s.m; ++i)
        for (i64 j = 0; j < s.n; ++j) {
          double sum = 0.0, mag = 0.0;
          for (i64 p = 0; p < s.k; ++p) {
            const double av = s.ta ? A[q * stride_a + p * lda + i] : A[q * stride_a + i * lda + p];
            const double bv = s.tb ? B[q * stride_b + j * ldb + p] : B[q * stride_b + p * ldb + j];
            sum += av * bv;
            mag += std::abs(av * bv);
          }
          const i64 at = q * stride_c + i * ldc + j;
          const double c0 = s.beta == 0.0 ? 0.0 : s.beta * C[at];
          const double S = std::abs(s.alpha) * mag + std::abs(c0);
          out[at] = {s.alpha * sum + c0, s.k == 0 && exact_scale ? 0.0 : 2.0 * (s.k + 3.0), S,
                     2.0 * (s.k + 2.0) * kU32 * S + kTiny};
        }
  };
  if (s.m == 0 || s.n == 0 || batch == 0) set_noop(c);
  t.push_back(std::move(c));
}

void gemm_cases(Table& t) {
  // Reference shapes (odd, 1, and inner dimensions from 1 to 65), every transpose, three
  // alpha/beta pairs, minimal and padded leading dimensions.
  const i64 ref_shapes[][3] = {{1, 1, 1},    {3, 7, 5},  {7, 1, 33}, {33, 65, 7},
                               {65, 33, 17}, {1, 65, 3}, {17, 3, 1}, {5, 5, 65},
                               {29, 12, 38}, {4, 31, 9}, {40, 1, 22}};
  const double coeffs[][2] = {{1.0, 0.0}, {0.5, 1.0}, {-1.5, 0.25}};
  for (const auto& sh : ref_shapes)
    for (int tr = 0; tr < 4; ++tr)
      for (const auto& ab : coeffs)
        for (i64 pad : {0, 5}) {
          GemmSpec s;
          s.ta = tr & 1;
          s.tb = tr & 2;
          s.m = sh[0], s.n = sh[1], s.k = sh[2];
          s.pad_a = s.pad_b = s.pad_c = pad;
          s.alpha = ab[0], s.beta = ab[1];
          add_gemm(t, s);
        }
  // The shapes of the CUDA twin: a large K (257), more columns than a warp, k == 0.
  const i64 gpu_shapes[][3] = {{37, 19, 53},  {1, 1, 1}, {64, 33, 7},
                               {3, 130, 257}, {5, 7, 0}, {3, 4, 0}};
  for (const auto& sh : gpu_shapes)
    for (int tr = 0; tr < 4; ++tr)
      for (double beta : {0.0, 0.5})
        for (int variant = 0; variant < 2; ++variant) {
          GemmSpec s;
          s.ta = tr & 1;
          s.tb = tr & 2;
          s.m = sh[0], s.n = sh[1], s.k = sh[2];
          s.pad_a = s.pad_b = s.pad_c = variant == 0 ? 0 : 3;
          s.alpha = variant == 0 ? 1.25 : -0.75;
          s.beta = beta;
          add_gemm(t, s);
        }
  // Empty: m == 0 or n == 0 with the minimal leading dimensions (0 where a dimension is 0).
  for (int tr = 0; tr < 4; ++tr)
    for (const auto& sh : {std::array<i64, 3>{0, 5, 3}, std::array<i64, 3>{4, 0, 3}}) {
      GemmSpec s;
      s.ta = tr & 1;
      s.tb = tr & 2;
      s.m = sh[0], s.n = sh[1], s.k = sh[2];
      add_gemm(t, s);
    }

  // Strided batched: padded leading dimensions, gaps between the matrices, b broadcast.
  const i64 batched_shapes[][4] = {
      {1, 1, 1, 1}, {3, 7, 5, 3}, {33, 7, 65, 2}, {7, 33, 3, 5}, {65, 1, 7, 3}};
  for (const auto& sh : batched_shapes)
    for (int tr = 0; tr < 4; ++tr)
      for (int variant = 0; variant < 3; ++variant) {
        GemmSpec s;
        s.batched = true;
        s.ta = tr & 1;
        s.tb = tr & 2;
        s.m = sh[0], s.n = sh[1], s.k = sh[2], s.batch = sh[3];
        s.pad_a = 2, s.pad_b = 1, s.pad_c = 3;
        s.gap_a = 7, s.gap_b = 5, s.gap_c = 4;
        s.alpha = variant == 1 ? -0.5 : 1.0;
        s.beta = variant == 1 ? 0.75 : 0.0;
        s.broadcast_b = variant == 2;
        add_gemm(t, s);
      }
  struct BatchedGpu {
    i64 m, n, k, batch, pad;
    double alpha, beta;
  };
  for (const BatchedGpu& x :
       {BatchedGpu{13, 17, 29, 3, 2, 1.0, 0.0}, BatchedGpu{13, 17, 29, 5, 0, 0.5, 2.0},
        BatchedGpu{4, 9, 0, 2, 1, 1.0, 0.25},  // k == 0: c = beta c
        BatchedGpu{4, 9, 0, 2, 1, 1.0, 0.0}})  // k == 0, beta 0: zeros
    for (int tr = 0; tr < 4; ++tr) {
      GemmSpec s;
      s.batched = true;
      s.ta = tr & 1;
      s.tb = tr & 2;
      s.m = x.m, s.n = x.n, s.k = x.k, s.batch = x.batch;
      s.pad_a = s.pad_b = s.pad_c = x.pad;
      s.gap_a = s.gap_b = s.gap_c = 7;
      s.alpha = x.alpha, s.beta = x.beta;
      add_gemm(t, s);
    }
  // Empty: batch == 0, and m == 0 with batches.
  for (int tr = 0; tr < 4; ++tr)
    for (const auto& sh : {std::array<i64, 4>{3, 4, 5, 0}, std::array<i64, 4>{0, 4, 5, 3}}) {
      GemmSpec s;
      s.batched = true;
      s.ta = tr & 1;
      s.tb = tr & 2;
      s.m = sh[0], s.n = sh[1], s.k = sh[2], s.batch = sh[3];
      s.gap_c = 4;
      add_gemm(t, s);
    }
}

// ================================================================================================
// Linear
// ================================================================================================

struct LinearSpec {
  i64 n, in, out;
  bool bias = true;  // forward b and backward db
  bool dx = true;    // backward dx (else null: skipped)
  bool fd = false;
};

void add_linear(Table& t, const LinearSpec& s) {
  Case c;
  c.kernel = "linear";
  c.name = fmt::format("n={} in={} out={}{}{}", s.n, s.in, s.out, flag(!s.bias, "bias=null"),
                       flag(!s.dx, "dx=null"));
  c.generate = [=](Gen& g, Data& d) {
    d.value("x", s.n * s.in) = g.uniform(s.n * s.in, -1, 1);
    d.value("w", s.out * s.in) = g.uniform(s.out * s.in, -1, 1);
    if (s.bias) d.value("b", s.out) = g.uniform(s.out, -1, 1);
    d.value("y", s.n * s.out);  // overwritten
    d.value("dy", s.n * s.out) = g.uniform(s.n * s.out, -1, 1);
    if (s.dx) d.value("dx", s.n * s.in);                           // overwritten
    d.value("dw", s.out * s.in) = g.uniform(s.out * s.in, -1, 1);  // +=
    if (s.bias) d.value("db", s.out) = g.uniform(s.out, -1, 1);    // +=
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::linear_forward(b["x"], b["w"], b.opt("b"), b["y"], s.n, s.in, s.out);
  });
  ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::linear_forward(ctx, b["x"], b["w"], b.opt("b"), b["y"], s.n, s.in, s.out);
  });
  // y = x w^T + b: a length-`in` dot product plus the bias: ck = 2 (in + 2),
  // S = sum |x w| + |b|. CUDA (GEMM, then the bias): 2 (in + 3) u S.
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& x = in["x"];
    const auto& w = in["w"];
    auto& y = e.out("y", s.n * s.out);
    for (i64 i = 0; i < s.n; ++i)
      for (i64 o = 0; o < s.out; ++o) {
        double acc = s.bias ? in["b"][o] : 0.0;
        double mag = std::abs(acc);
        for (i64 p = 0; p < s.in; ++p) {
          acc += x[i * s.in + p] * w[o * s.in + p];
          mag += std::abs(x[i * s.in + p] * w[o * s.in + p]);
        }
        y[i * s.out + o] = {acc, 2.0 * (s.in + 2.0), mag, 2.0 * (s.in + 3.0) * kU32 * mag + kTiny};
      }
  };
  Pass bwd;
  bwd.cpu = cpu_call([=](const auto& b) {
    cpu::linear_backward(b["dy"], b["x"], b["w"], b.opt("dx"), b["dw"], b.opt("db"), s.n, s.in,
                         s.out);
  });
  ON_CUDA(bwd.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::linear_backward(ctx, b["dy"], b["x"], b["w"], b.opt("dx"), b["dw"], b.opt("db"), s.n, s.in,
                         s.out);
  });
  // dx = dy w: length-`out` dot products, ck = 2 (out + 1), S = sum |dy w|; CUDA 2 (out + 2) u S.
  // dw += dy^T x: length-n dot products plus the accumulation, ck = 2 (n + 2),
  //   S = |dw0| + sum |dy x|; CUDA 2 (n + 3) u S.
  // db += column sums of dy: ck = 2 (n + 1), S = |db0| + sum |dy|; CUDA (fixed-order column
  //   reduction) 2 (n + 20) u S.
  bwd.reference = [=](const Data& in, Expect& e) {
    const auto& x = in["x"];
    const auto& w = in["w"];
    const auto& dy = in["dy"];
    if (s.dx) {
      auto& dx = e.out("dx", s.n * s.in);
      for (i64 i = 0; i < s.n; ++i)
        for (i64 p = 0; p < s.in; ++p) {
          double acc = 0.0, mag = 0.0;
          for (i64 o = 0; o < s.out; ++o) {
            acc += dy[i * s.out + o] * w[o * s.in + p];
            mag += std::abs(dy[i * s.out + o] * w[o * s.in + p]);
          }
          dx[i * s.in + p] = {acc, 2.0 * (s.out + 1.0), mag,
                              2.0 * (s.out + 2.0) * kU32 * mag + kTiny};
        }
    }
    const auto& dw0 = in["dw"];
    auto& dw = e.out("dw", s.out * s.in);
    for (i64 o = 0; o < s.out; ++o)
      for (i64 p = 0; p < s.in; ++p) {
        double acc = dw0[o * s.in + p], mag = std::abs(acc);
        for (i64 i = 0; i < s.n; ++i) {
          acc += dy[i * s.out + o] * x[i * s.in + p];
          mag += std::abs(dy[i * s.out + o] * x[i * s.in + p]);
        }
        dw[o * s.in + p] = {acc, 2.0 * (s.n + 2.0), mag, 2.0 * (s.n + 3.0) * kU32 * mag + kTiny};
      }
    if (s.bias) {
      const auto& db0 = in["db"];
      auto& db = e.out("db", s.out);
      for (i64 o = 0; o < s.out; ++o) {
        double acc = db0[o], mag = std::abs(acc);
        for (i64 i = 0; i < s.n; ++i) {
          acc += dy[i * s.out + o];
          mag += std::abs(dy[i * s.out + o]);
        }
        db[o] = {acc, 2.0 * (s.n + 1.0), mag, 2.0 * (s.n + 20.0) * kU32 * mag + kTiny};
      }
    }
  };
  c.backward = std::move(bwd);
  c.fd = s.fd;
  c.loss = {{"y", "dy"}};
  c.grads = {{"w", "dw"}};
  if (s.dx) c.grads.emplace_back("x", "dx");
  if (s.bias) c.grads.emplace_back("b", "db");
  if (s.n == 0) set_noop(c);
  t.push_back(std::move(c));
}

void linear_cases(Table& t) {
  // Reference shapes: with and without bias; dx and db null (dw still accumulated).
  const i64 ref_shapes[][3] = {{1, 1, 1}, {3, 7, 5}, {33, 17, 65}, {7, 65, 3}, {65, 33, 33}};
  for (const auto& s : ref_shapes) {
    add_linear(t, {s[0], s[1], s[2]});
    add_linear(t, {s[0], s[1], s[2], false});
    add_linear(t, {s[0], s[1], s[2], false, false});
  }
  // Gradient checks.
  for (const auto& s : {std::array<i64, 3>{1, 1, 1}, std::array<i64, 3>{3, 5, 7},
                        std::array<i64, 3>{7, 3, 1}, std::array<i64, 3>{2, 9, 4}})
    add_linear(t, {s[0], s[1], s[2], true, true, true});
  // Shapes of the CUDA twin.
  for (const auto& s : {std::array<i64, 3>{45, 37, 23}, std::array<i64, 3>{130, 64, 3}}) {
    add_linear(t, {s[0], s[1], s[2]});
    add_linear(t, {s[0], s[1], s[2], false});
  }
  add_linear(t, {0, 7, 5});  // empty batch
}

// ================================================================================================
// Softmax
// ================================================================================================

struct SoftmaxSpec {
  i64 rows, cols;
  double range = 5.0;    // logits in [-range, range]
  bool shift = true;     // row 2 shifted by +1000 (needs the max subtraction)
  bool neg_inf = false;  // 25% -inf entries, row 0 entirely -inf, row 1 one finite entry
  bool inplace = false;  // forward y == x, backward dx == dy (the forms the model uses)
  bool nan_row = false;  // one NaN in row 3: the whole row is NaN (forward only)
  bool fd = false, fd_float = false;
};

// Reference softmax of one row, exact for -inf entries; an all -inf row gives zeros, a row with
// a NaN gives NaN.
void softmax_row_ref(const double* x, double* y, i64 cols) {
  double mx = -kInf;
  for (i64 j = 0; j < cols; ++j) {
    if (std::isnan(x[j])) {
      std::fill(y, y + cols, kNaN);
      return;
    }
    mx = std::max(mx, x[j]);
  }
  if (mx == -kInf) {
    std::fill(y, y + cols, 0.0);
    return;
  }
  double sum = 0.0;
  for (i64 j = 0; j < cols; ++j) sum += x[j] == -kInf ? 0.0 : std::exp(x[j] - mx);
  for (i64 j = 0; j < cols; ++j) y[j] = x[j] == -kInf ? 0.0 : std::exp(x[j] - mx) / sum;
}

void add_softmax(Table& t, const SoftmaxSpec& s) {
  const i64 rows = s.rows, cols = s.cols, n = rows * cols;
  Case c;
  c.kernel = "softmax";
  c.name =
      fmt::format("rows={} cols={} range={}{}{}{}{}", rows, cols, s.range, flag(s.shift, "shift"),
                  flag(s.neg_inf, "-inf"), flag(s.nan_row, "nan_row"), flag(s.inplace, "in_place"));
  c.generate = [=](Gen& g, Data& d) {
    auto& x = d.value("x", n) = g.uniform(n, -s.range, s.range);
    if (s.shift && rows > 2)
      for (i64 j = 0; j < cols; ++j) x[2 * cols + j] += 1000.0;
    if (s.neg_inf) {
      for (auto& v : x)
        if (g.coin(0.25)) v = -kInf;
      for (i64 j = 0; j < cols; ++j) x[j] = -kInf;
      if (rows > 1) {
        for (i64 j = 0; j < cols; ++j) x[cols + j] = -kInf;
        x[cols + cols / 2] = 0.5;
      }
    }
    if (s.nan_row && rows > 3) x[3 * cols + cols / 2] = kNaN;
    if (s.inplace) {
      d.alias("y", "x");
    } else {
      d.value("y", n);
    }
    d.value("dy", n) = g.uniform(n, -1, 1);
    if (s.inplace) {
      d.alias("dx", "dy");
    } else {
      d.value("dx", n);
    }
  };
  c.forward.cpu =
      cpu_call([=](const auto& b) { cpu::softmax_forward(b["x"], b["y"], rows, cols); });
  ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::softmax_forward(ctx, b["x"], b["y"], rows, cols);
  });
  // Per element: the max-subtracted argument (|x - max| <= 2 range <= 12 here) costs ~12 u
  // relative through exp, exp itself a few ulp, the sum of `cols` positive terms cols u relative
  // and the division one more: ck = 2 (cols + 32), S = y. -inf entries and all -inf rows are
  // exactly 0 (S = 0). CUDA: x_j - m rounds (relative error u |x_j - m| after exp), expf adds 2
  // ulps, the sum `cols` terms, the division 1 ulp: 2 u (|x_j - m| + cols + 10) y_j.
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& x = in["x"];
    auto& y = e.out("y", n);
    std::vector<double> row(static_cast<std::size_t>(cols));
    for (i64 r = 0; r < rows; ++r) {
      softmax_row_ref(&x[r * cols], row.data(), cols);
      double m = -kInf;
      for (i64 j = 0; j < cols; ++j) m = std::max(m, x[r * cols + j]);
      for (i64 j = 0; j < cols; ++j) {
        const double xj = x[r * cols + j], yj = row[j];
        const double spread = std::isinf(xj) ? 0.0 : std::abs(xj - m);
        y[r * cols + j] = {yj, 2.0 * (cols + 32.0), yj,
                           2.0 * kU32 * (spread + cols + 10.0) * yj + kTiny};
      }
    }
  };
  if (!s.nan_row) {
    Pass bwd;
    bwd.cpu = cpu_call(
        [=](const auto& b) { cpu::softmax_backward(b["y"], b["dy"], b["dx"], rows, cols); });
    ON_CUDA(bwd.cuda = [=](const Ctx& ctx, const FB& b) {
      gpu::softmax_backward(ctx, b["y"], b["dy"], b["dx"], rows, cols);
    });
    // dx_j = y_j (dy_j - s), s = sum_k dy_k y_k: the length-`cols` sum costs cols u of
    // sum_k |dy_k y_k|, the subtraction and product 2 more: ck = 2 (cols + 4),
    // S = |y_j| (|dy_j| + sum_k |dy_k y_k|); zero probabilities give exactly zero.
    // CUDA against CPU, both sides' errors: the CUDA dot is fp32 (cols products and adds, at
    // most 10 more adds in the block's reduction tree: (cols + 11) u sum |dy y|), the CPU's is
    // double rounded once (u |s|); then each side rounds dy - s and the product (2 u |y|
    // (|dy| + |s|) each). Bound: |y| ((cols + 11) u sum|dy y| + 4 u |dy| + 5 u |s|), here with
    // a margin: 2 u |y| ((cols + 11) sum |dy y| + 2 |dy| + 3 |s|). (The tolerance without the
    // CPU's share, 2 u |y| ((cols + 4) sum |dy y| + |dy| + |s|), failed by 1.18x at cols = 2 on
    // an H200.)
    bwd.reference = [=](const Data& in, Expect& e) {
      const auto& y = in["y"];
      const auto& dy = in["dy"];
      auto& dx = e.out("dx", n);
      for (i64 r = 0; r < rows; ++r) {
        double dot = 0.0, sabs = 0.0;
        for (i64 j = 0; j < cols; ++j) {
          dot += dy[r * cols + j] * y[r * cols + j];
          sabs += std::abs(dy[r * cols + j] * y[r * cols + j]);
        }
        for (i64 j = 0; j < cols; ++j) {
          const double yj = y[r * cols + j], dyj = dy[r * cols + j];
          dx[r * cols + j] = {
              yj * (dyj - dot), 2.0 * (cols + 4.0), std::abs(yj) * (std::abs(dyj) + sabs),
              2.0 * kU32 * std::abs(yj) *
                      ((cols + 11.0) * sabs + 2.0 * std::abs(dyj) + 3.0 * std::abs(dot)) +
                  kTiny};
        }
      }
    };
    c.backward = std::move(bwd);
  }
  c.threads = true;
  c.fd = s.fd;
  c.fd_float = s.fd_float;
  c.loss = {{"y", "dy"}};
  c.grads = {{"x", "dx"}};
  if (rows == 0 || cols == 0) set_noop(c);
  t.push_back(std::move(c));
}

void softmax_cases(Table& t) {
  // Reference shapes, plain and with -inf entries and rows, separate and in place.
  const i64 ref_shapes[][2] = {{1, 1}, {3, 7}, {7, 33}, {33, 65}, {5, 1}, {65, 3}};
  for (const auto& sh : ref_shapes)
    for (bool neg_inf : {false, true})
      for (bool inplace : {false, true}) {
        SoftmaxSpec s{sh[0], sh[1]};
        s.neg_inf = neg_inf;
        s.inplace = inplace;
        add_softmax(t, s);
      }
  // Gradient checks: O(1) finite logits.
  for (const auto& sh : {std::array<i64, 2>{1, 1}, std::array<i64, 2>{3, 7},
                         std::array<i64, 2>{5, 1}, std::array<i64, 2>{2, 33}}) {
    SoftmaxSpec s{sh[0], sh[1]};
    s.range = 3.0;
    s.shift = false;
    s.fd = true;
    s.fd_float = sh[0] == 3 && sh[1] == 7;
    add_softmax(t, s);
  }
  // Shapes of the CUDA twin: long rows (several warps, more than a block), and more rows than
  // grid blocks (grid-stride loop); thread-count independence (257 x 65 goes parallel).
  const i64 big_shapes[][2] = {{7, 1},    {33, 5},   {17, 300},
                               {3, 5000}, {257, 65}, {(i64{1} << 20) + 5, 2}};
  for (const auto& sh : big_shapes) {
    SoftmaxSpec s{sh[0], sh[1]};
    s.range = 6.0;
    s.neg_inf = true;
    add_softmax(t, s);
    t.back().gpu_scale = sh[0] * sh[1] > (i64{1} << 20);
  }
  for (const auto& sh : {std::array<i64, 2>{17, 300}, std::array<i64, 2>{3, 5000}}) {
    SoftmaxSpec s{sh[0], sh[1]};
    s.range = 6.0;
    s.neg_inf = true;
    s.inplace = true;
    add_softmax(t, s);
  }
  // A NaN propagates to its row.
  for (const auto& sh : {std::array<i64, 2>{5, 9}, std::array<i64, 2>{6, 300}}) {
    SoftmaxSpec s{sh[0], sh[1]};
    s.nan_row = true;
    add_softmax(t, s);
  }
  add_softmax(t, {0, 7});  // empty batch
  add_softmax(t, {5, 0});  // empty rows
}

// ================================================================================================
// LayerNorm
// ================================================================================================

struct LayerNormSpec {
  i64 rows, cols;
  bool affine = true;    // gamma and beta given (else null: ones and zeros)
  bool stats = true;     // mean and rstd saved (else null; no backward)
  bool inplace = false;  // forward y == x (no backward: x is gone)
  bool fd = false, fd_float = false;
};

constexpr double kLnEps = 1e-5;

void add_layernorm(Table& t, const LayerNormSpec& s) {
  const i64 rows = s.rows, cols = s.cols, n = rows * cols;
  Case c;
  c.kernel = "layernorm";
  c.name = fmt::format("rows={} cols={}{}{}{}", rows, cols, flag(!s.affine, "gamma,beta=null"),
                       flag(!s.stats, "mean,rstd=null"), flag(s.inplace, "in_place"));
  // Rows of x in [-2, 2] plus a per-row offset in [-1, 1].
  c.generate = [=](Gen& g, Data& d) {
    auto& x = d.value("x", n) = g.uniform(n, -2, 2);
    for (i64 i = 0; i < rows; ++i) {
      const double o = g.uniform1(-1, 1);
      for (i64 j = 0; j < cols; ++j) x[i * cols + j] += o;
    }
    if (s.affine) {
      d.value("gamma", cols) = g.uniform(cols, 0.5, 1.5);
      d.value("beta", cols) = g.uniform(cols, -0.5, 0.5);
    }
    if (s.inplace) {
      d.alias("y", "x");
    } else {
      d.value("y", n);
    }
    if (s.stats) {
      d.value("mean", rows);
      d.value("rstd", rows);
    }
    d.value("dy", n) = g.uniform(n, -1, 1);
    d.value("dx", n);
    d.value("dgamma", cols) = g.uniform(cols, -1, 1);  // +=
    d.value("dbeta", cols) = g.uniform(cols, -1, 1);   // +=
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    using T = ElemOf<decltype(b)>;
    cpu::layernorm_forward<T>(b["x"], b.opt("gamma"), b.opt("beta"), b["y"], b.opt("mean"),
                              b.opt("rstd"), rows, cols, static_cast<T>(kLnEps));
  });
  ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::layernorm_forward(ctx, b["x"], b.opt("gamma"), b.opt("beta"), b["y"], b.opt("mean"),
                           b.opt("rstd"), rows, cols, static_cast<float>(kLnEps));
  });
  // Reference (two passes in double) and bounds:
  // - mean: a length-cols sum, ck = 2 (cols + 2), S = mean|x| =: A.
  // - rstd: the variance of `cols` terms, by two passes or by E[x^2] - mean^2 (which cancels
  //   when mean^2 ~ var), costs (cols + few) u relative to (E[x^2] + mean^2 + eps) / (var + eps),
  //   the sqrt and division a few u more: ck = 2 (cols + 8),
  //   S_r = rstd (E x^2 + mean^2 + eps) / (var + eps).
  // - y = (x - mean) rstd gamma + beta: the error of (x - mean) is u |x - mean| + err(mean); times
  //   rstd and its relative error, times gamma, plus beta: ck = 2 (cols + 8),
  //   S_y = |gamma| (rstd (|x - mean| + A) + |xhat| S_r / rstd) + |beta|.
  // eps is passed as T: for float that changes var + eps by at most u eps relative, far inside
  // the rstd bound. cols == 0: mean 0 and rstd 1/sqrt(eps) (sums over nothing are 0).
  // CUDA (fp32 block sums): mean 2 (cols + 2) u A; rstd 2 (cols + 8) u rstd (8 u when cols == 0:
  // only the sqrt and the division); y 2 u ((cols + 2) A rstd |gamma| + (cols + 8) |xhat gamma| +
  // |y| + |beta|).
  c.forward.reference = [=](const Data& in, Expect& e) {
    const double* x = in["x"].data();
    const double* gamma = s.affine ? in["gamma"].data() : nullptr;
    const double* beta = s.affine ? in["beta"].data() : nullptr;
    auto& y = e.out("y", n);
    std::vector<Want>* mean_out = s.stats ? &e.out("mean", rows) : nullptr;
    std::vector<Want>* rstd_out = s.stats ? &e.out("rstd", rows) : nullptr;
    const double fc = static_cast<double>(cols);
    for (i64 i = 0; i < rows; ++i) {
      const double* xr = x + i * cols;
      double mean = 0.0, a = 0.0, ex2 = 0.0;
      for (i64 j = 0; j < cols; ++j) {
        mean += xr[j];
        a += std::abs(xr[j]);
        ex2 += xr[j] * xr[j];
      }
      if (cols > 0) {
        mean /= fc;
        a /= fc;
        ex2 /= fc;
      }
      double var = 0.0;
      for (i64 j = 0; j < cols; ++j) var += (xr[j] - mean) * (xr[j] - mean);
      if (cols > 0) var /= fc;
      const double rstd = 1.0 / std::sqrt(var + kLnEps);
      const double s_r = rstd * (ex2 + mean * mean + kLnEps) / (var + kLnEps);
      if (mean_out != nullptr) {
        (*mean_out)[i] = {mean, 2.0 * (fc + 2.0), a,
                          cols == 0 ? 0.0 : 2.0 * (fc + 2.0) * kU32 * a + kTiny};
        (*rstd_out)[i] = {rstd, 2.0 * (fc + 8.0), s_r,
                          (cols == 0 ? 8.0 : 2.0 * (fc + 8.0)) * kU32 * rstd};
      }
      for (i64 j = 0; j < cols; ++j) {
        const double gm = gamma != nullptr ? gamma[j] : 1.0;
        const double bt = beta != nullptr ? beta[j] : 0.0;
        const double xhat = (xr[j] - mean) * rstd;
        const double v = xhat * gm + bt;
        const double s_y =
            std::abs(gm) * (rstd * (std::abs(xr[j] - mean) + a) + std::abs(xhat) * s_r / rstd) +
            std::abs(bt);
        y[i * cols + j] = {v, 2.0 * (fc + 8.0), s_y,
                           2.0 * kU32 *
                                   ((fc + 2.0) * a * rstd * std::abs(gm) +
                                    (fc + 8.0) * std::abs(xhat * gm) + std::abs(v) + std::abs(bt)) +
                               kTiny};
      }
    }
  };
  if (s.stats && !s.inplace) {
    Pass bwd;
    bwd.cpu = cpu_call([=](const auto& b) {
      cpu::layernorm_backward(b["dy"], b["x"], b.opt("gamma"), b["mean"], b["rstd"], b["dx"],
                              b["dgamma"], b["dbeta"], rows, cols);
    });
    ON_CUDA(bwd.cuda = [=](const Ctx& ctx, const FB& b) {
      gpu::layernorm_backward(ctx, b["dy"], b["x"], b.opt("gamma"), b["mean"], b["rstd"], b["dx"],
                              b["dgamma"], b["dbeta"], rows, cols);
    });
    // Textbook backward from the saved statistics: xhat = (x - mean) rstd, g = dy gamma,
    // dx = rstd (g - mean(g) - xhat mean(g xhat)); dgamma += sum_rows dy xhat;
    // dbeta += sum_rows dy. Bounds: xhat carries u (|x| + |mean|) rstd =: e_j (in units of u);
    // the two row means are length-cols sums; so
    //   dx: ck = 2 (cols + 8), S = rstd (|g_j| + mean|g| + (|xhat_j| + e_j) mean(|g| (|xhat| +
    //   e))); dgamma: ck = 2 (rows + 8), S = |dgamma0| + sum_rows |dy| (|xhat| + e); dbeta: ck = 2
    //   (rows + 2), S = |dbeta0| + sum_rows |dy|.
    // CUDA, with G = mean|g|, GX = mean|g xhat|: dx 4 u rstd (|g| + (cols + 8) (G + |xhat| GX)) +
    // 4 u |dx|; dgamma 4 (rows + 20) u (sum_rows |dy xhat| + |dgamma0|); dbeta
    // 2 (rows + 20) u (sum_rows |dy| + |dbeta0|).
    bwd.reference = [=](const Data& in, Expect& e) {
      const auto& x = in["x"];
      const auto& dy = in["dy"];
      const auto& mean = in["mean"];
      const auto& rstd = in["rstd"];
      const auto& dg0 = in["dgamma"];
      const auto& db0 = in["dbeta"];
      const double* gamma = s.affine ? in["gamma"].data() : nullptr;
      auto& dx = e.out("dx", n);
      std::vector<double> rdg(dg0), rdb(db0), mdg(static_cast<std::size_t>(cols)),
          mdb(static_cast<std::size_t>(cols)), gdg(static_cast<std::size_t>(cols), 0.0);
      for (i64 j = 0; j < cols; ++j) {
        mdg[j] = std::abs(rdg[j]);
        mdb[j] = std::abs(rdb[j]);
      }
      const double fc = static_cast<double>(cols);
      std::vector<double> xhat(static_cast<std::size_t>(cols)), ej(xhat.size()), gd(xhat.size());
      for (i64 i = 0; i < rows; ++i) {
        const double mu = mean[i], rs = rstd[i];
        double a = 0.0, bsum = 0.0, a_abs = 0.0, b_abs = 0.0, gx_abs = 0.0;
        for (i64 j = 0; j < cols; ++j) {
          const double gm = gamma != nullptr ? gamma[j] : 1.0;
          const double xv = x[i * cols + j], dv = dy[i * cols + j];
          xhat[j] = (xv - mu) * rs;
          ej[j] = (std::abs(xv) + std::abs(mu)) * rs;
          gd[j] = dv * gm;
          a += gd[j];
          bsum += gd[j] * xhat[j];
          a_abs += std::abs(gd[j]);
          b_abs += std::abs(gd[j]) * (std::abs(xhat[j]) + ej[j]);
          gx_abs += std::abs(gd[j] * xhat[j]);
          rdg[j] += dv * xhat[j];
          rdb[j] += dv;
          mdg[j] += std::abs(dv) * (std::abs(xhat[j]) + ej[j]);
          mdb[j] += std::abs(dv);
          gdg[j] += std::abs(dv * xhat[j]);
        }
        a /= fc;
        bsum /= fc;
        a_abs /= fc;
        b_abs /= fc;
        gx_abs /= fc;
        for (i64 j = 0; j < cols; ++j) {
          const double v = rs * (gd[j] - a - xhat[j] * bsum);
          dx[i * cols + j] = {
              v, 2.0 * (fc + 8.0),
              rs * (std::abs(gd[j]) + a_abs + (std::abs(xhat[j]) + ej[j]) * b_abs),
              4.0 * kU32 * rs *
                      (std::abs(gd[j]) + (fc + 8.0) * (a_abs + std::abs(xhat[j]) * gx_abs)) +
                  4.0 * kU32 * std::abs(v) + kTiny};
        }
      }
      const double fr = static_cast<double>(rows);
      auto& dgamma = e.out("dgamma", cols);
      auto& dbeta = e.out("dbeta", cols);
      for (i64 j = 0; j < cols; ++j) {
        dgamma[j] = {rdg[j], 2.0 * (fr + 8.0), mdg[j],
                     4.0 * (fr + 20.0) * kU32 * (gdg[j] + std::abs(dg0[j])) + kTiny};
        dbeta[j] = {rdb[j], 2.0 * (fr + 2.0), mdb[j], 2.0 * (fr + 20.0) * kU32 * mdb[j] + kTiny};
      }
    };
    c.backward = std::move(bwd);
  }
  c.threads = true;
  c.fd = s.fd;
  c.fd_float = s.fd_float;
  c.loss = {{"y", "dy"}};
  c.grads = {{"x", "dx"}};
  if (s.affine) {
    c.grads.emplace_back("gamma", "dgamma");
    c.grads.emplace_back("beta", "dbeta");
  }
  if (rows == 0) set_noop(c);
  t.push_back(std::move(c));
}

void layernorm_cases(Table& t) {
  const i64 ref_shapes[][2] = {{1, 1}, {3, 1}, {3, 7}, {7, 33}, {33, 65}, {65, 3}, {2, 130}};
  for (const auto& sh : ref_shapes) add_layernorm(t, {sh[0], sh[1]});
  // Null gamma/beta/statistics and the in-place forward.
  for (const auto& sh :
       {std::array<i64, 2>{3, 7}, std::array<i64, 2>{33, 65}, std::array<i64, 2>{1, 1}}) {
    add_layernorm(t, {sh[0], sh[1], false, false});
    add_layernorm(t, {sh[0], sh[1], false, true});
    add_layernorm(t, {sh[0], sh[1], true, true, true});
  }
  // Gradient checks.
  for (const auto& sh :
       {std::array<i64, 2>{1, 1}, std::array<i64, 2>{3, 7}, std::array<i64, 2>{5, 2},
        std::array<i64, 2>{2, 33}, std::array<i64, 2>{1, 3}}) {
    LayerNormSpec s{sh[0], sh[1]};
    s.fd = true;
    s.fd_float = sh[0] == 3 && sh[1] == 7;
    add_layernorm(t, s);
  }
  // Shapes of the CUDA twin (long rows), thread-count independence, empty rows and batch.
  const i64 big_shapes[][2] = {{19, 1}, {23, 77}, {5, 1030}, {2, 6000}, {257, 65}};
  for (const auto& sh : big_shapes) add_layernorm(t, {sh[0], sh[1]});
  add_layernorm(t, {3, 0});  // statistics of empty rows: mean 0, rstd 1/sqrt(eps)
  add_layernorm(t, {0, 7});  // empty batch
}

// ================================================================================================
// GELU (tanh form)
// ================================================================================================

struct GeluSpec {
  i64 n;
  bool inplace = false;  // backward dx == dy (the form the model uses)
  bool fd = false;
};

double gelu_ref(double x) {
  const double k = std::sqrt(2.0 / std::numbers::pi);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}
double gelu_grad_ref(double x) {
  const double k = std::sqrt(2.0 / std::numbers::pi);
  const double t = std::tanh(k * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
}

void add_gelu(Table& t, const GeluSpec& s) {
  const i64 n = s.n;
  Case c;
  c.kernel = "gelu";
  c.name = fmt::format("n={}{}", n, flag(s.inplace, "in_place"));
  // x in [-6, 6], starting with the bend, both tails, signed zero and a tiny value.
  c.generate = [=](Gen& g, Data& d) {
    auto& x = d.value("x", n) = g.uniform(n, -6, 6);
    const double special[] = {0.0,   1e-3, -1e-3, 3.0,  -3.0,  10.0, -10.0,
                              -20.0, 20.0, -0.0,  12.0, -12.0, 1e-20};
    for (std::size_t i = 0; i < std::size(special) && i < x.size(); ++i) x[i] = special[i];
    d.value("y", n);
    d.value("dy", n) = g.uniform(n, -1, 1);
    if (s.inplace) {
      d.alias("dx", "dy");
    } else {
      d.value("dx", n);
    }
  };
  c.forward.cpu = cpu_call([=](const auto& b) { cpu::gelu_forward(b["x"], b["y"], n); });
  ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::gelu_forward(ctx, b["x"], b["y"], n);
  });
  // Forward: z = k (x + c x^3) has a few u relative error, which moves tanh by at most
  // few u |z| sech^2(z) <= few u (|z| sech^2 z <= 0.45), tanh itself a few ulp, then
  // 0.5 x (1 + t) and the final rounding: ck = 16, S = |x| + |y|.
  // Backward: 0.5 (1 + t) is within ~4 u; (1 - t^2) within ~6 u absolute and is multiplied by
  // 0.5 k x (1 + 3c x^2): ck = 16, S = |dy| (1 + |x| (1 + 0.135 x^2)).
  // CUDA (tanhf form): z carries dz = 8 u (|k x| + |k c x^3|) (five roundings); tanh passes on
  // (1 - t^2) dz and adds 2 ulps per implementation (8 u |t|): dt = (1 - t^2) dz + 8 u |t| + 2 u.
  //   y: 0.5 |x| dt + 4 u |y|;
  //   dx (du = k (1 + 3 c x^2)): |dy| (dt (0.5 + 2 |x du|) + 8 u (0.5 |1 + t| + |x du|) + 2 u) +
  //   4 u |dx|.
  constexpr double kk = 0.7978845608028654, kc = 0.044715;
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& x = in["x"];
    auto& y = e.out("y", n);
    for (i64 i = 0; i < n; ++i) {
      const double v = x[i], r = gelu_ref(v);
      const double tt = std::tanh(kk * (v + kc * v * v * v));
      const double dz = 8.0 * kU32 * (std::abs(kk * v) + std::abs(kk * kc * v * v * v));
      const double dt = (1.0 - tt * tt) * dz + 8.0 * kU32 * std::abs(tt) + 2.0 * kU32;
      y[i] = {r, 16.0, std::abs(v) + std::abs(r),
              0.5 * std::abs(v) * dt + 4.0 * kU32 * std::abs(r) + kTiny};
    }
  };
  Pass bwd;
  bwd.cpu = cpu_call([=](const auto& b) { cpu::gelu_backward(b["x"], b["dy"], b["dx"], n); });
  ON_CUDA(bwd.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::gelu_backward(ctx, b["x"], b["dy"], b["dx"], n);
  });
  bwd.reference = [=](const Data& in, Expect& e) {
    const auto& x = in["x"];
    const auto& dy = in["dy"];
    auto& dx = e.out("dx", n);
    for (i64 i = 0; i < n; ++i) {
      const double v = x[i], gv = dy[i];
      const double r = gv * gelu_grad_ref(v);
      const double tt = std::tanh(kk * (v + kc * v * v * v));
      const double dz = 8.0 * kU32 * (std::abs(kk * v) + std::abs(kk * kc * v * v * v));
      const double dt = (1.0 - tt * tt) * dz + 8.0 * kU32 * std::abs(tt) + 2.0 * kU32;
      const double du = kk * (1.0 + 3.0 * kc * v * v);
      dx[i] = {
          r, 16.0, std::abs(gv) * (1.0 + std::abs(v) * (1.0 + 0.135 * v * v)),
          std::abs(gv) * (dt * (0.5 + 2.0 * std::abs(v * du)) +
                          8.0 * kU32 * (0.5 * std::abs(1.0 + tt) + std::abs(v * du)) + 2.0 * kU32) +
              4.0 * kU32 * std::abs(r) + kTiny};
    }
  };
  c.backward = std::move(bwd);
  c.threads = true;
  c.fd = s.fd;
  c.loss = {{"y", "dy"}};
  c.grads = {{"x", "dx"}};
  if (n == 0) set_noop(c);
  t.push_back(std::move(c));
}

void gelu_cases(Table& t) {
  for (i64 n : {1, 3, 7, 33, 65, 1000})
    for (bool inplace : {false, true})
      add_gelu(t, {n, inplace, !inplace && (n == 1 || n == 7 || n == 65)});
  add_gelu(t, {10007});
  add_gelu(t, {10007, true});
  add_gelu(t, {100003});  // goes parallel
  add_gelu(t, {0});       // empty batch
}

// ================================================================================================
// Row gather (also the embedding lookup) and weighted scatter-add
// ================================================================================================

// A row of `n` hit `count` times.
std::vector<double> hit_counts(const std::vector<i32>& idx, i64 n) {
  std::vector<double> count(static_cast<std::size_t>(n), 0.0);
  for (i32 r : idx) count[static_cast<std::size_t>(r)] += 1.0;
  return count;
}

// Indices for m rows of an n-row array: the last row is reachable (idx[0] = n - 1) and one row is
// repeated (idx[rep] = idx[1]).
std::vector<i32> row_indices(Gen& g, i64 m, i64 n, i64 rep) {
  std::vector<i32> idx = n > 0 ? g.ids(m, n) : std::vector<i32>(static_cast<std::size_t>(m), 0);
  if (m > 0) idx[0] = static_cast<i32>(n - 1);
  if (m > rep) idx[rep] = idx[1];
  return idx;
}

struct GatherSpec {
  i64 m, n, d;
  bool fd = false;
};

void add_gather(Table& t, const GatherSpec& s) {
  const i64 m = s.m, n = s.n, d = s.d;
  Case c;
  c.kernel = "gather_rows";
  c.name = fmt::format("m={} n={} d={}", m, n, d);
  c.generate = [=](Gen& g, Data& dd) {
    dd.value("src", n * d) = g.uniform(n * d, -1, 1);
    dd.index("idx", m) = row_indices(g, m, n, 2);
    dd.value("dst", m * d);
    dd.value("ddst", m * d) = g.uniform(m * d, -1, 1);
    dd.value("dsrc", n * d) = g.uniform(n * d, -1, 1);  // +=
  };
  c.forward.cpu = cpu_call(
      [=](const auto& b) { cpu::gather_rows_forward(b["src"], b.ids("idx"), b["dst"], m, n, d); });
  ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::gather_rows_forward(ctx, b["src"], b.ids("idx"), b["dst"], m, n, d);
  });
  // A copy: bitwise, on both backends.
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& src = in["src"];
    const auto& idx = in.ids("idx");
    auto& dst = e.out("dst", m * d, Rule::Exact);
    for (i64 i = 0; i < m; ++i)
      for (i64 j = 0; j < d; ++j) dst[i * d + j].value = src[idx[i] * d + j];
  };
  Pass bwd;
  bwd.cpu = cpu_call([=](const auto& b) {
    cpu::gather_rows_backward(b["ddst"], b.ids("idx"), b["dsrc"], m, n, d);
  });
  ON_CUDA(bwd.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::gather_rows_backward(ctx, b["ddst"], b.ids("idx"), b["dsrc"], m, n, d);
  });
  // dsrc += scatter of ddst: a row hit c times is a sum of c + 1 terms: ck = 2 (c + 1),
  // S = |dsrc0| + sum |ddst|; a row never hit is unchanged (tol 0). CUDA (atomicAdd in any
  // order): 2 (c + 2) u S.
  bwd.reference = [=](const Data& in, Expect& e) {
    const auto& ddst = in["ddst"];
    const auto& dsrc0 = in["dsrc"];
    const auto& idx = in.ids("idx");
    std::vector<double> ref(dsrc0), mag(ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i) mag[i] = std::abs(ref[i]);
    for (i64 i = 0; i < m; ++i)
      for (i64 j = 0; j < d; ++j) {
        ref[idx[i] * d + j] += ddst[i * d + j];
        mag[idx[i] * d + j] += std::abs(ddst[i * d + j]);
      }
    const auto count = hit_counts(idx, n);
    auto& dsrc = e.out("dsrc", n * d);
    for (i64 r = 0; r < n; ++r)
      for (i64 j = 0; j < d; ++j) {
        const double cnt = count[r], S = mag[r * d + j];
        dsrc[r * d + j] = {ref[r * d + j], cnt == 0.0 ? 0.0 : 2.0 * (cnt + 1.0), S,
                           cnt == 0.0 ? 0.0 : 2.0 * (cnt + 2.0) * kU32 * S + kTiny};
      }
  };
  c.backward = std::move(bwd);
  c.threads = true;
  c.fd = s.fd;
  c.loss = {{"dst", "ddst"}};
  c.grads = {{"src", "dsrc"}};
  if (m == 0) set_noop(c);
  t.push_back(std::move(c));
}

void gather_cases(Table& t) {
  // Token permutations (m rows of n) and embedding lookups (m tokens of a vocabulary of n): small
  // vocabularies repeat ids many times; rows never looked up get no gradient.
  const i64 ref_shapes[][3] = {{1, 1, 1}, {3, 7, 5},  {33, 7, 3},  {65, 33, 7}, {7, 65, 33},
                               {9, 2, 1}, {33, 5, 7}, {65, 3, 33}, {7, 65, 1}};
  for (const auto& s : ref_shapes) add_gather(t, {s[0], s[1], s[2]});
  for (const auto& s :
       {std::array<i64, 3>{1, 1, 1}, std::array<i64, 3>{7, 3, 5}, std::array<i64, 3>{3, 7, 2},
        std::array<i64, 3>{5, 9, 3}, std::array<i64, 3>{2, 1, 4}})
    add_gather(t, {s[0], s[1], s[2], true});
  // Shapes of the CUDA twin (d == 0: nothing to copy, indices still checked), parallel columns.
  const i64 big_shapes[][3] = {{300, 41, 19}, {64, 200, 300}, {50, 3, 0},
                               {200, 51, 17}, {3000, 7, 64},  {1000, 37, 200}};
  for (const auto& s : big_shapes) add_gather(t, {s[0], s[1], s[2]});
  add_gather(t, {0, 5, 3});  // empty batch: no index is read
}

struct ScatterSpec {
  i64 m, n, d;
  bool weighted = true;  // w given (else null: all ones)
  bool dw = true;        // backward dw given (else null: skipped)
  bool fd = false;
};

void add_scatter(Table& t, const ScatterSpec& s) {
  const i64 m = s.m, n = s.n, d = s.d;
  const bool want_dw = s.weighted && s.dw;
  Case c;
  c.kernel = "scatter_add_rows";
  c.name = fmt::format("m={} n={} d={}{}{}", m, n, d, flag(!s.weighted, "w=null"),
                       flag(s.weighted && !s.dw, "dw=null"));
  c.generate = [=](Gen& g, Data& dd) {
    dd.value("src", m * d) = g.uniform(m * d, -1, 1);
    dd.index("idx", m) = row_indices(g, m, n, 3);
    if (s.weighted) dd.value("w", m) = g.uniform(m, 0, 1);
    dd.value("dst", n * d) = g.uniform(n * d, -1, 1);  // +=
    dd.value("ddst", n * d) = g.uniform(n * d, -1, 1);
    dd.value("dsrc", m * d);  // overwritten
    // Overwritten when w is given, else it must not be written.
    if (s.dw) dd.value("dw", m, s.weighted ? kNaN : kSentinel);
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::scatter_add_rows_forward(b["src"], b.ids("idx"), b.opt("w"), b["dst"], m, n, d);
  });
  ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::scatter_add_rows_forward(ctx, b["src"], b.ids("idx"), b.opt("w"), b["dst"], m, n, d);
  });
  // dst[idx[i]] += w[i] src[i] in increasing i. A row hit c times is a sum of c + 1 terms, each
  // product one rounding: ck = 2 (c + 2), S = |dst0| + sum |w src|; rows never hit unchanged.
  // CUDA (atomicAdd in any order): 2 (c + 2) u S.
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& src = in["src"];
    const auto& dst0 = in["dst"];
    const auto& idx = in.ids("idx");
    const double* w = s.weighted ? in["w"].data() : nullptr;
    auto wi = [&](i64 i) { return w != nullptr ? w[i] : 1.0; };
    std::vector<double> ref(dst0), mag(ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i) mag[i] = std::abs(ref[i]);
    for (i64 i = 0; i < m; ++i)
      for (i64 j = 0; j < d; ++j) {
        ref[idx[i] * d + j] += wi(i) * src[i * d + j];
        mag[idx[i] * d + j] += std::abs(wi(i) * src[i * d + j]);
      }
    const auto count = hit_counts(idx, n);
    auto& dst = e.out("dst", n * d);
    for (i64 r = 0; r < n; ++r)
      for (i64 j = 0; j < d; ++j) {
        const double cnt = count[r], S = mag[r * d + j];
        dst[r * d + j] = {ref[r * d + j], cnt == 0.0 ? 0.0 : 2.0 * (cnt + 2.0), S,
                          cnt == 0.0 ? 0.0 : 2.0 * (cnt + 2.0) * kU32 * S + kTiny};
      }
  };
  Pass bwd;
  bwd.cpu = cpu_call([=](const auto& b) {
    cpu::scatter_add_rows_backward(b["ddst"], b.ids("idx"), b["src"], b.opt("w"), b["dsrc"],
                                   b.opt("dw"), m, n, d);
  });
  ON_CUDA(bwd.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::scatter_add_rows_backward(ctx, b["ddst"], b.ids("idx"), b["src"], b.opt("w"), b["dsrc"],
                                   b.opt("dw"), m, n, d);
  });
  // dsrc[i] = w[i] ddst[idx[i]]: one product, ck = 1, S = |dsrc| (exact when w is null); the
  // same single fp32 product on both backends (CUDA: equal).
  // dw[i] = dot(ddst[idx[i]], src[i]): length d, ck = 2 (d + 1), S = sum |ddst src|;
  // CUDA (fp32 block sum) 2 (d + 2) u S. With w null dw must not be written.
  bwd.reference = [=](const Data& in, Expect& e) {
    const auto& ddst = in["ddst"];
    const auto& src = in["src"];
    const auto& idx = in.ids("idx");
    auto& dsrc = e.out("dsrc", m * d);
    std::vector<Want>* dw = want_dw ? &e.out("dw", m) : nullptr;
    const double* w = s.weighted ? in["w"].data() : nullptr;
    for (i64 i = 0; i < m; ++i) {
      const double wv = w != nullptr ? w[i] : 1.0;
      double dot = 0.0, mag = 0.0;
      for (i64 j = 0; j < d; ++j) {
        const double g = ddst[idx[i] * d + j];
        const double v = wv * g;
        dsrc[i * d + j] = {v, s.weighted ? 1.0 : 0.0, std::abs(v), 0.0};
        dot += g * src[i * d + j];
        mag += std::abs(g * src[i * d + j]);
      }
      if (dw != nullptr)
        (*dw)[i] = {dot, 2.0 * (d + 1.0), mag, 2.0 * (d + 2.0) * kU32 * mag + kTiny};
    }
  };
  c.backward = std::move(bwd);
  c.threads = true;
  c.fd = s.fd;
  c.loss = {{"dst", "ddst"}};
  c.grads = {{"src", "dsrc"}};
  if (want_dw) c.grads.emplace_back("w", "dw");
  if (m == 0) set_noop(c);
  t.push_back(std::move(c));
}

void scatter_cases(Table& t) {
  const i64 ref_shapes[][3] = {{1, 1, 1},   {3, 7, 5},   {33, 7, 3},
                               {65, 33, 7}, {7, 65, 33}, {9, 2, 1}};
  for (const auto& sh : ref_shapes) {
    add_scatter(t, {sh[0], sh[1], sh[2]});
    add_scatter(t, {sh[0], sh[1], sh[2], false});
    add_scatter(t, {sh[0], sh[1], sh[2], true, false});
  }
  for (const auto& sh : {std::array<i64, 3>{1, 1, 1}, std::array<i64, 3>{7, 3, 5},
                         std::array<i64, 3>{3, 7, 2}, std::array<i64, 3>{2, 1, 4}})
    for (bool weighted : {true, false}) add_scatter(t, {sh[0], sh[1], sh[2], weighted, true, true});
  // Shapes of the CUDA twin; thread-count independence (~8 hits per row; parallel columns).
  const i64 big_shapes[][3] = {
      {300, 41, 19}, {64, 200, 300}, {50, 3, 0}, {301, 37, 33}, {2000, 37, 130}};
  for (const auto& sh : big_shapes)
    for (bool weighted : {true, false}) add_scatter(t, {sh[0], sh[1], sh[2], weighted});
  add_scatter(t, {0, 5, 3});         // empty batch
  add_scatter(t, {0, 5, 3, false});  // empty batch, no weights
}

// ================================================================================================
// Cross-entropy
// ================================================================================================

struct CrossEntropySpec {
  i64 n, v;
  double range = 8.0;    // logits in [-range, range]
  bool shift = true;     // row 2 shifted by +1000 (needs the max shift)
  bool nan_row = false;  // a NaN logit in row 3: lse and loss NaN (forward only)
  bool fd = false;
};

void add_cross_entropy(Table& t, const CrossEntropySpec& s) {
  const i64 n = s.n, v = s.v;
  Case c;
  c.kernel = "cross_entropy";
  c.name = fmt::format("n={} v={} range={}{}{}", n, v, s.range, flag(s.shift, "shift"),
                       flag(s.nan_row, "nan_row"));
  // Targets: 20% ignored (-1), row 1 ignored, row 0 the last class; all ignored when v == 0.
  c.generate = [=](Gen& g, Data& d) {
    auto& logits = d.value("logits", n * v) = g.uniform(n * v, -s.range, s.range);
    if (s.shift && n > 2)
      for (i64 j = 0; j < v; ++j) logits[2 * v + j] += 1000.0;
    auto& targets = d.index("targets", n, -1);
    if (v > 0) {
      targets = g.ids(n, v);
      for (auto& tg : targets)
        if (g.coin(0.2)) tg = -1;
      if (n > 1) targets[1] = -1;
      if (n > 0) targets[0] = static_cast<i32>(v - 1);
    }
    if (s.nan_row && n > 3 && v > 0) {
      logits[3 * v + v / 2] = kNaN;
      targets[3] = 0;
    }
    d.value("losses", n);
    d.value("lse", n);
    d.value("dloss", n) = g.uniform(n, -1, 1);
    d.value("dlogits", n * v);  // overwritten, ignored rows included
  };
  c.forward.cpu = cpu_call([=](const auto& b) {
    cpu::cross_entropy_forward(b["logits"], b.ids("targets"), b["losses"], b["lse"], n, v);
  });
  ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::cross_entropy_forward(ctx, b["logits"], b.ids("targets"), b["losses"], b["lse"], n, v);
  });
  // lse = max + log sum exp(x - max): exp of arguments in [-range, 0] costs u (range + 2)
  // relative per term, the sum of v terms v u relative, log turns relative into absolute error,
  // adding max one rounding of |lse|: ck = 4, S = v + range + 8 + |lse| (range = max - min of
  // the row). The loss subtracts x_t: ck = 4, S = S_lse + |x_t| + |loss|; ignored rows exactly
  // 0. v == 0: lse = -inf.
  // CUDA: the sum of v terms (each with 2 ulps of expf and the rounding of x_j - m) and logf's 2
  // ulps: 2 u (v + 20 + 2 |lse| + 2 |m|); the loss adds 2 u (|loss| + |x_t|).
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& x = in["logits"];
    const auto& targets = in.ids("targets");
    auto& lse = e.out("lse", n);
    auto& losses = e.out("losses", n);
    for (i64 i = 0; i < n; ++i) {
      double mx = -kInf, mn = kInf;
      bool nan = false;
      for (i64 j = 0; j < v; ++j) {
        nan = nan || std::isnan(x[i * v + j]);
        mx = std::max(mx, x[i * v + j]);
        mn = std::min(mn, x[i * v + j]);
      }
      double l = -kInf, range = 0.0;
      if (nan) {
        l = kNaN;
      } else if (v > 0) {
        double sum = 0.0;
        for (i64 j = 0; j < v; ++j) sum += std::exp(x[i * v + j] - mx);
        l = mx + std::log(sum);
        range = mx - mn;
      }
      const double s_lse = v + range + 8.0 + std::abs(l);
      const double g_lse = 2.0 * kU32 * (v + 20.0 + 2.0 * std::abs(l) + 2.0 * std::abs(mx));
      lse[i] = {l, 4.0, v > 0 ? s_lse : 0.0, v > 0 ? g_lse : 0.0};
      const i32 tg = targets[i];
      if (tg < 0) {
        losses[i] = {0.0, 0.0, 0.0, 0.0};  // ignored: exactly 0
      } else {
        const double xt = x[i * v + tg], loss = l - xt;
        losses[i] = {loss, 4.0, s_lse + std::abs(xt) + std::abs(loss),
                     g_lse + 2.0 * kU32 * (std::abs(loss) + std::abs(xt))};
      }
    }
  };
  if (!s.nan_row) {
    Pass bwd;
    bwd.cpu = cpu_call([=](const auto& b) {
      cpu::cross_entropy_backward(b["logits"], b.ids("targets"), b["lse"], b["dloss"], b["dlogits"],
                                  n, v);
    });
    ON_CUDA(bwd.cuda = [=](const Ctx& ctx, const FB& b) {
      gpu::cross_entropy_backward(ctx, b["logits"], b.ids("targets"), b["lse"], b["dloss"],
                                  b["dlogits"], n, v);
    });
    // From the saved lse (independent of the forward kernel in driver a). p_j = exp(x_j - lse):
    // the argument carries u (|x_j| + |lse|), exp a few ulp; a kernel that recomputes the softmax
    // instead pays the v u + range u of the forward. Subtracting the one-hot and multiplying by
    // dloss add a rounding each: ck = 4, S = |dloss| (p (|x_j| + |lse| + v + range + 8) +
    // [j == t]); ignored rows exactly 0.
    // CUDA: 2 |dloss| (u p (|x_j - lse| + 6) + u |p - [j == t]|) + 2 u |dlogits|.
    bwd.reference = [=](const Data& in, Expect& e) {
      const auto& x = in["logits"];
      const auto& targets = in.ids("targets");
      const auto& lse = in["lse"];
      const auto& dloss = in["dloss"];
      auto& dl = e.out("dlogits", n * v);
      for (i64 i = 0; i < n; ++i) {
        double mx = -kInf, mn = kInf;
        for (i64 j = 0; j < v; ++j) {
          mx = std::max(mx, x[i * v + j]);
          mn = std::min(mn, x[i * v + j]);
        }
        const double range = mx - mn;
        const i32 tg = targets[i];
        for (i64 j = 0; j < v; ++j) {
          const i64 k = i * v + j;
          if (tg < 0) {
            dl[k] = {0.0, 0.0, 0.0, 0.0};
            continue;
          }
          const double p = std::exp(x[k] - lse[i]);
          const double hot = j == tg ? 1.0 : 0.0;
          const double val = dloss[i] * (p - hot);
          dl[k] = {val, 4.0,
                   std::abs(dloss[i]) *
                       (p * (std::abs(x[k]) + std::abs(lse[i]) + v + range + 8.0) + hot),
                   2.0 * std::abs(dloss[i]) *
                           (kU32 * p * (std::abs(x[k] - lse[i]) + 6.0) + kU32 * std::abs(p - hot)) +
                       2.0 * kU32 * std::abs(val) + kTiny};
        }
      }
    };
    c.backward = std::move(bwd);
  }
  c.threads = true;
  c.fd = s.fd;
  c.loss = {{"losses", "dloss"}};
  c.grads = {{"logits", "dlogits"}};
  if (n == 0) set_noop(c);
  t.push_back(std::move(c));
}

void cross_entropy_cases(Table& t) {
  const i64 ref_shapes[][2] = {{1, 1}, {3, 7}, {33, 65}, {7, 1}, {65, 33}, {5, 1000}};
  for (const auto& sh : ref_shapes) add_cross_entropy(t, {sh[0], sh[1]});
  for (const auto& sh : {std::array<i64, 2>{1, 1}, std::array<i64, 2>{3, 7},
                         std::array<i64, 2>{5, 33}, std::array<i64, 2>{4, 2}}) {
    CrossEntropySpec s{sh[0], sh[1]};
    s.range = 3.0;
    s.shift = false;
    s.fd = true;
    add_cross_entropy(t, s);
  }
  // Shapes of the CUDA twin (a large vocabulary), thread-count independence.
  const i64 big_shapes[][2] = {{37, 1}, {37, 50}, {9, 3001}, {2, 70000}, {129, 65}};
  for (const auto& sh : big_shapes) {
    CrossEntropySpec s{sh[0], sh[1]};
    s.range = 6.0;
    add_cross_entropy(t, s);
  }
  for (const auto& sh : {std::array<i64, 2>{5, 9}, std::array<i64, 2>{6, 300}}) {
    CrossEntropySpec s{sh[0], sh[1]};
    s.nan_row = true;
    add_cross_entropy(t, s);
  }
  add_cross_entropy(t, {3, 0});  // empty vocabulary (all targets ignored): lse -inf, loss 0
  add_cross_entropy(t, {0, 9});  // empty batch
}

// ================================================================================================
// AdamW
// ================================================================================================

struct AdamWSpec {
  i64 n;
  cpu::AdamWHyper h;
  // true: the state before the step is the double trajectory of h.step - 1 earlier steps from
  // m = v = 0 with gradients in [-2, 2]; false: random p, m in [-0.1, 0.1], v in [1e-4, 1e-2].
  bool trajectory = true;
};

void add_adamw(Table& t, const AdamWSpec& s) {
  const i64 n = s.n;
  const cpu::AdamWHyper h = s.h;
  Case c;
  c.kernel = "adamw";
  c.name = fmt::format("n={} lr={} beta1={} beta2={} eps={} wd={} step={}{}", n, h.lr, h.beta1,
                       h.beta2, h.eps, h.weight_decay, h.step, s.trajectory ? "" : " random_state");
  c.generate = [=](Gen& g, Data& d) {
    auto& p = d.value("param", n) = g.uniform(n, -1, 1);
    auto& m = d.value("m", n, 0.0);
    auto& v = d.value("v", n, 0.0);
    if (s.trajectory) {
      for (std::int64_t step = 1; step < h.step; ++step) {
        const auto grad = g.uniform(n, -2, 2);
        const double c1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
        const double c2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
        for (i64 i = 0; i < n; ++i) {
          m[i] = h.beta1 * m[i] + (1 - h.beta1) * grad[i];
          v[i] = h.beta2 * v[i] + (1 - h.beta2) * grad[i] * grad[i];
          p[i] -= h.lr * ((m[i] / c1) / (std::sqrt(v[i] / c2) + h.eps) + h.weight_decay * p[i]);
        }
      }
      d.value("grad", n) = g.uniform(n, -2, 2);
    } else {
      d.value("grad", n) = g.uniform(n, -1, 1);
      m = g.uniform(n, -0.1, 0.1);
      v = g.uniform(n, 1e-4, 1e-2);
    }
  };
  c.forward.cpu = cpu_call(
      [=](const auto& b) { cpu::adamw_update(b["param"], b["grad"], b["m"], b["v"], n, h); });
  ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::adamw_update(ctx, b["param"], b["grad"], b["m"], b["v"], n, h);
  });
  // The hyperparameters are double; a kernel may round beta to T before forming 1 - beta, which
  // costs u / (1 - beta) relative (cancellation), and the same in the bias corrections
  // 1 - beta^t. With those, the moments and the step direction mhat / (sqrt(vhat) + eps) carry at
  // most C u relative error with C = 8 + 2/(1-beta1) + 2/(1-beta2) (m's error is relative to
  // b1|m| + (1-b1)|g|, which does not cancel), and the parameter update adds a rounding of |p| and
  // |p'|: ck = C and
  //   m: S = b1 |m| + (1 - b1) |g|;  v: S = b2 v + (1 - b2) g^2;
  //   p: S = |p| + |p'| + lr (mabs_hat / (sqrt(vhat) + eps) + wd |p|).
  // CUDA (fp32 throughout, beta1/beta2 rounded to fp32):
  //   m: 4 u (|b1 m0| + |(1 - b1) g|);  v: 4 u (|b2 v0| + |(1 - b2) g^2|);
  //   p: 2 u |p'| + 2 lr (12 u |r| + 2 u wd |p|), r = mhat / (sqrt(vhat) + eps) (about ten
  //   roundings in r, one in the subtraction).
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& p = in["param"];
    const auto& grad = in["grad"];
    const auto& m = in["m"];
    const auto& v = in["v"];
    const double b1 = h.beta1, b2 = h.beta2;
    const double cfac = 8.0 + 2.0 / (1.0 - b1) + 2.0 / (1.0 - b2);
    const double c1 = 1.0 - std::pow(b1, static_cast<double>(h.step));
    const double c2 = 1.0 - std::pow(b2, static_cast<double>(h.step));
    auto& pm = e.out("m", n);
    auto& pv = e.out("v", n);
    auto& pp = e.out("param", n);
    for (i64 i = 0; i < n; ++i) {
      const double gi = grad[i], pi = p[i], mi = m[i], vi = v[i];
      const double rm = b1 * mi + (1 - b1) * gi;
      const double rv = b2 * vi + (1 - b2) * gi * gi;
      const double mhat = rm / c1, vhat = rv / c2;
      const double rp = pi - h.lr * (mhat / (std::sqrt(vhat) + h.eps) + h.weight_decay * pi);
      const double mabs = b1 * std::abs(mi) + (1 - b1) * std::abs(gi);
      const double r = mhat / (std::sqrt(vhat) + h.eps);
      pm[i] = {rm, cfac, mabs, 4.0 * kU32 * (std::abs(b1 * mi) + std::abs((1 - b1) * gi)) + kTiny};
      pv[i] = {rv, cfac, rv,
               4.0 * kU32 * (std::abs(b2 * vi) + std::abs((1 - b2) * gi * gi)) + kTiny};
      pp[i] = {rp, cfac,
               std::abs(pi) + std::abs(rp) +
                   h.lr * ((mabs / c1) / (std::sqrt(vhat) + h.eps) + h.weight_decay * std::abs(pi)),
               2.0 * kU32 * std::abs(rp) +
                   2.0 * h.lr *
                       (12.0 * kU32 * std::abs(r) + 2.0 * kU32 * h.weight_decay * std::abs(pi)) +
                   kTiny};
    }
  };
  c.threads = true;
  if (n == 0) set_noop(c);
  t.push_back(std::move(c));
}

void adamw_cases(Table& t) {
  // Six consecutive steps from m = v = 0, for two sets of hyperparameters.
  const cpu::AdamWHyper variants[] = {{1e-2, 0.9, 0.95, 1e-8, 0.1, 1},
                                      {3e-3, 0.8, 0.999, 1e-6, 0.0, 1}};
  for (const auto& base : variants)
    for (i64 n : {1, 7, 65})
      for (std::int64_t step = 1; step <= 6; ++step) {
        AdamWSpec s{n, base};
        s.h.step = step;
        add_adamw(t, s);
      }
  // The CUDA twin's case: a random state, early and late steps.
  for (std::int64_t step : {1, 7, 1000}) {
    cpu::AdamWHyper h;
    h.lr = 3e-3;
    h.weight_decay = 0.1;
    h.step = step;
    add_adamw(t, {10007, h, false});
  }
  cpu::AdamWHyper h;
  h.weight_decay = 0.1;
  add_adamw(t, {0, h});  // empty
}

// ================================================================================================
// Elementwise helpers (fill, axpy, scale, add, sum_rows, sum_squares)
// ================================================================================================

constexpr double kFillValue = 2.5;
constexpr double kAlpha = -0.75;  // exactly representable in float

enum class AddAlias { None, A, B };

void add_elementwise(Table& t, i64 n) {
  {
    Case c;
    c.kernel = "fill";
    c.name = fmt::format("n={}", n);
    c.generate = [=](Gen&, Data& d) { d.value("x", n); };
    c.forward.cpu = cpu_call([=](const auto& b) {
      using T = ElemOf<decltype(b)>;
      cpu::fill<T>(b["x"], static_cast<T>(kFillValue), n);
    });
    ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
      gpu::fill(ctx, b["x"], static_cast<float>(kFillValue), n);
    });
    // Exact.
    c.forward.reference = [=](const Data&, Expect& e) {
      for (auto& w : e.out("x", n)) w.value = kFillValue;
    };
    c.threads = true;
    if (n == 0) set_noop(c);
    t.push_back(std::move(c));
  }
  {
    Case c;
    c.kernel = "axpy";
    c.name = fmt::format("n={} alpha={}", n, kAlpha);
    c.generate = [=](Gen& g, Data& d) {
      d.value("x", n) = g.uniform(n, -1, 1);
      d.value("y", n) = g.uniform(n, -1, 1);
    };
    c.forward.cpu = cpu_call([=](const auto& b) {
      using T = ElemOf<decltype(b)>;
      cpu::axpy<T>(static_cast<T>(kAlpha), b["x"], b["y"], n);
    });
    ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
      gpu::axpy(ctx, static_cast<float>(kAlpha), b["x"], b["y"], n);
    });
    // y += alpha x: a product and a sum (or one fma): ck = 2, S = |y| + |alpha x|; the GPU may
    // fuse them (one rounding instead of two): 2 u S.
    c.forward.reference = [=](const Data& in, Expect& e) {
      const auto& x = in["x"];
      const auto& y0 = in["y"];
      auto& y = e.out("y", n);
      for (i64 i = 0; i < n; ++i) {
        const double S = std::abs(y0[i]) + std::abs(kAlpha * x[i]);
        y[i] = {y0[i] + kAlpha * x[i], 2.0, S, 2.0 * kU32 * S + kTiny};
      }
    };
    c.threads = true;
    if (n == 0) set_noop(c);
    t.push_back(std::move(c));
  }
  {
    Case c;
    c.kernel = "scale";
    c.name = fmt::format("n={} alpha={}", n, kAlpha);
    c.generate = [=](Gen& g, Data& d) { d.value("x", n) = g.uniform(n, -1, 1); };
    c.forward.cpu = cpu_call([=](const auto& b) {
      using T = ElemOf<decltype(b)>;
      cpu::scale<T>(b["x"], static_cast<T>(kAlpha), n);
    });
    ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
      gpu::scale(ctx, b["x"], static_cast<float>(kAlpha), n);
    });
    // One rounding: ck = 1, S = |alpha x|; the same fp32 product on both backends.
    c.forward.reference = [=](const Data& in, Expect& e) {
      const auto& x0 = in["x"];
      auto& x = e.out("x", n);
      for (i64 i = 0; i < n; ++i) {
        const double v = kAlpha * x0[i];
        x[i] = {v, 1.0, std::abs(v), 0.0};
      }
    };
    c.threads = true;
    if (n == 0) set_noop(c);
    t.push_back(std::move(c));
  }
  for (AddAlias alias : {AddAlias::None, AddAlias::A, AddAlias::B}) {
    Case c;
    c.kernel = "add";
    c.name = fmt::format("n={}{}", n,
                         alias == AddAlias::A   ? " y=a"
                         : alias == AddAlias::B ? " y=b"
                                                : "");
    c.generate = [=](Gen& g, Data& d) {
      d.value("a", n) = g.uniform(n, -1, 1);
      d.value("b", n) = g.uniform(n, -1, 1);
      if (alias == AddAlias::A) {
        d.alias("y", "a");
      } else if (alias == AddAlias::B) {
        d.alias("y", "b");
      } else {
        d.value("y", n);
      }
    };
    c.forward.cpu = cpu_call([=](const auto& b) { cpu::add(b["a"], b["b"], b["y"], n); });
    ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
      gpu::add(ctx, b["a"], b["b"], b["y"], n);
    });
    // One rounding: ck = 1, S = |a + b|; the same fp32 sum on both backends.
    c.forward.reference = [=](const Data& in, Expect& e) {
      const auto& a = in["a"];
      const auto& b = in["b"];
      auto& y = e.out("y", n);
      for (i64 i = 0; i < n; ++i) {
        const double v = a[i] + b[i];
        y[i] = {v, 1.0, std::abs(v), 0.0};
      }
    };
    c.threads = true;
    if (n == 0) set_noop(c);
    t.push_back(std::move(c));
  }
  {
    Case c;
    c.kernel = "sum_squares";
    c.name = fmt::format("n={}", n);
    c.generate = [=](Gen& g, Data& d) {
      d.value("x", n) = g.uniform(n, -1, 1);
      d.wide("result", 1);
    };
    c.forward.cpu =
        cpu_call([=](const auto& b) { *b.wide("result") = cpu::sum_squares(b["x"], n); });
    ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
      *b.wide("result") = gpu::sum_squares(ctx, b["x"], n);
    });
    // Accumulated in double for either type: a square of a float is exact in double, so the only
    // error is the double summation, n 2^-53 sum x^2 (< 1e-12 relative here): ck = 0 (the floor
    // of bound_wide, 1e-12), S = sum x^2. CUDA (double partial sums): 4 (n + 1100) 2^-53 S.
    c.forward.reference = [=](const Data& in, Expect& e) {
      double sum = 0.0;
      for (double x : in["x"]) sum += x * x;
      e.out("result", 1, Rule::Wide)[0] = {sum, 0.0, sum, 4.0 * (n + 1100.0) * kU64 * sum};
    };
    c.threads = true;
    t.push_back(std::move(c));
  }
}

void add_sum_rows(Table& t, i64 rows, i64 cols) {
  Case c;
  c.kernel = "sum_rows";
  c.name = fmt::format("rows={} cols={}", rows, cols);
  c.generate = [=](Gen& g, Data& d) {
    d.value("x", rows * cols) = g.uniform(rows * cols, -1, 1);
    d.value("out", cols) = g.uniform(cols, -1, 1);  // +=
  };
  c.forward.cpu = cpu_call([=](const auto& b) { cpu::sum_rows(b["x"], b["out"], rows, cols); });
  ON_CUDA(c.forward.cuda = [=](const Ctx& ctx, const FB& b) {
    gpu::sum_rows(ctx, b["x"], b["out"], rows, cols);
  });
  // out += column sums, a sum of rows + 1 terms: ck = 2 (rows + 1), S = |out0| + sum |x|. CUDA
  // (fp32, fixed-order tiles): 2 (rows + 20) u S.
  c.forward.reference = [=](const Data& in, Expect& e) {
    const auto& x = in["x"];
    auto& out = e.out("out", cols);
    for (i64 j = 0; j < cols; ++j) {
      double acc = in["out"][j], mag = std::abs(acc);
      for (i64 i = 0; i < rows; ++i) {
        acc += x[i * cols + j];
        mag += std::abs(x[i * cols + j]);
      }
      out[j] = {acc, 2.0 * (rows + 1.0), mag, 2.0 * (rows + 20.0) * kU32 * mag + kTiny};
    }
  };
  c.threads = true;
  if (rows == 0 || cols == 0) set_noop(c);
  t.push_back(std::move(c));
}

void elementwise_cases(Table& t) {
  for (i64 n : {1, 3, 7, 33, 65, 1001, 257, 100003, 0}) add_elementwise(t, n);
  const i64 shapes[][2] = {{1, 1},     {3, 7},   {33, 65},     {65, 3},   {7, 1}, {1, 33},
                           {1000, 37}, {3, 100}, {4099, 2050}, {257, 65}, {0, 7}, {7, 0}};
  for (const auto& sh : shapes) {
    add_sum_rows(t, sh[0], sh[1]);
    t.back().gpu_scale = sh[0] * sh[1] > (i64{1} << 20);
  }
}

Table build() {
  Table t;
  gemm_cases(t);
  linear_cases(t);
  softmax_cases(t);
  layernorm_cases(t);
  gelu_cases(t);
  gather_cases(t);
  scatter_cases(t);
  cross_entropy_cases(t);
  adamw_cases(t);
  elementwise_cases(t);
  moe_cases(t);
  fused_cases(t);
  // A shape listed twice (a reference shape that is also a gradient-check shape) is one case
  // with the flags of both: names spell out every option that changes the case.
  Table unique;
  for (Case& c : t) {
    auto same = std::find_if(unique.begin(), unique.end(), [&](const Case& u) {
      return u.kernel == c.kernel && u.name == c.name;
    });
    if (same == unique.end()) {
      unique.push_back(std::move(c));
    } else {
      same->fd = same->fd || c.fd;
      same->fd_float = same->fd_float || c.fd_float;
    }
  }
  return unique;
}

}  // namespace

const std::vector<Case>& cases() {
  static const std::vector<Case> table = build();
  return table;
}

}  // namespace routemoe::kerneltest
