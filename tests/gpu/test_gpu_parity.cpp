// GPU parity: every CUDA kernel of framework/cuda/kernels.h against its CPU reference in
// framework/cpu/kernels.h, on seeded random inputs including odd shapes and empty batches, and
// the philox fills bit for bit.
//
// The binary has its own main(): it exits with 77 (ctest SKIP_RETURN_CODE, reported as
// "skipped", never "passed") when the build has no CUDA backend or no GPU is visible.
//
// Tolerances. u = 2^-24 is the unit roundoff of fp32. The CPU kernels mostly accumulate in
// double; the CUDA kernels accumulate in fp32 (cuBLAS, block reductions). The classic bound for
// a sum or dot product of L terms computed in floating point is |error| <= L u sum|terms|
// (Higham, gamma_L), so a reduction over L terms gets c (L + c') u sum|terms| with small
// constants c, c' covering the few extra roundings around it (and both implementations' errors).
// Elementwise results get a few ulps of the operands' magnitudes, plus, for transcendental
// functions (expf, tanhf, logf: at most 2 ulps in CUDA and in glibc), the propagation of the
// argument's rounding error. Each test spells out its bound next to the code.

#include <gtest/gtest.h>

#include <cstdio>

#if ROUTEMOE_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "framework/cpu/kernels.h"
#include "framework/cuda/context.h"
#include "framework/cuda/kernels.h"
#include "framework/device.h"
#include "framework/dtype.h"
#include "framework/error.h"
#include "framework/rng.h"
#include "framework/tensor.h"

namespace {

using routemoe::Device;
namespace cpu = routemoe::cpu;
namespace gpu = routemoe::cuda;

constexpr double kU = 0x1p-24;   // fp32 unit roundoff
constexpr double kTiny = 1e-37;  // absorbs results that underflow to fp32 subnormals
constexpr float kInf = std::numeric_limits<float>::infinity();

std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

// Device memory holding a copy of a host vector. Uploads wait for the device: device_copy runs on
// the legacy default stream, which does not order against the context's non-blocking stream.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(const std::vector<T>& host) : n_(host.size()) {
    ptr_ = static_cast<T*>(routemoe::device_alloc(Device::CUDA, bytes()));
    routemoe::device_copy(ptr_, Device::CUDA, host.data(), Device::CPU, bytes());
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  explicit DeviceBuffer(std::size_t n, T value = T{}) : DeviceBuffer(std::vector<T>(n, value)) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { routemoe::device_free(Device::CUDA, ptr_); }

  T* get() const { return ptr_; }
  // Waits for the context's stream, then copies back.
  std::vector<T> download(const gpu::Context& ctx) const {
    ctx.synchronize();
    std::vector<T> host(n_);
    routemoe::device_copy(host.data(), Device::CPU, ptr_, Device::CUDA, bytes());
    return host;
  }

 private:
  std::size_t bytes() const { return n_ * sizeof(T); }
  std::size_t n_;
  T* ptr_ = nullptr;
};

std::vector<float> random_vec(std::mt19937& g, std::size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(g);
  return v;
}

std::vector<std::int32_t> random_ids(std::mt19937& g, std::size_t n, std::int32_t bound) {
  std::uniform_int_distribution<std::int32_t> dist(0, bound - 1);
  std::vector<std::int32_t> v(n);
  for (auto& x : v) x = dist(g);
  return v;
}

// |got - ref| <= tol elementwise (NaN matches NaN, equal infinities match).
void expect_close(const std::vector<float>& got, const std::vector<float>& ref,
                  const std::vector<double>& tol, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  ASSERT_EQ(tol.size(), ref.size()) << what;
  int reported = 0;
  std::size_t failures = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const float a = got[i], b = ref[i];
    if (std::isnan(a) && std::isnan(b)) continue;
    if (std::isinf(b) && a == b) continue;
    const double err = std::fabs(static_cast<double>(a) - static_cast<double>(b));
    if (!(err <= tol[i])) {
      ++failures;
      if (reported++ < 5) {
        ADD_FAILURE() << what << "[" << i << "]: gpu " << a << " cpu " << b << " |diff| " << err
                      << " > tol " << tol[i];
      }
    }
  }
  EXPECT_EQ(failures, 0u) << what << ": " << failures << " of " << ref.size()
                          << " out of tolerance";
}

void expect_equal(const std::vector<float>& got, const std::vector<float>& ref,
                  const std::string& what) {
  expect_close(got, ref, std::vector<double>(ref.size(), 0.0), what);
}

class GpuParity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ctx_ = std::make_unique<gpu::Context>(0); }
  static void TearDownTestSuite() { ctx_.reset(); }
  static const gpu::Context& ctx() { return *ctx_; }

 private:
  static std::unique_ptr<gpu::Context> ctx_;
};
std::unique_ptr<gpu::Context> GpuParity::ctx_;

// ---------------------------------------------------------------------------------------------
// GEMM

struct GemmCase {
  bool ta, tb;
  std::int64_t m, n, k;
  std::int64_t pad;  // extra elements per row of a, b and c (leading dimensions > minimum)
  float alpha, beta;
};

// Runs one GEMM (batch matrices, strides with a gap of 7 elements) on both backends.
// Bound per element: 2 (k + 2) u (|alpha| sum_p |a_ip b_pj| + |beta c_ij|).
void check_gemm(const gpu::Context& ctx, const GemmCase& cs, std::int64_t batch,
                std::uint32_t seed) {
  std::mt19937 g(seed);
  const std::int64_t a_rows = cs.ta ? cs.k : cs.m, a_cols = cs.ta ? cs.m : cs.k;
  const std::int64_t b_rows = cs.tb ? cs.n : cs.k, b_cols = cs.tb ? cs.k : cs.n;
  const std::int64_t lda = a_cols + cs.pad, ldb = b_cols + cs.pad, ldc = cs.n + cs.pad;
  const std::int64_t sa = a_rows * lda + 7, sb = b_rows * ldb + 7, sc = cs.m * ldc + 7;
  auto a = random_vec(g, sz(std::max<std::int64_t>(sa * batch, 1)), -1.0f, 1.0f);
  auto b = random_vec(g, sz(std::max<std::int64_t>(sb * batch, 1)), -1.0f, 1.0f);
  auto c = random_vec(g, sz(std::max<std::int64_t>(sc * batch, 1)), -1.0f, 1.0f);
  if (cs.beta == 0.0f) {
    // beta == 0 overwrites c: NaNs in c must not propagate (padding keeps its NaNs).
    std::fill(c.begin(), c.end(), std::numeric_limits<float>::quiet_NaN());
  }
  DeviceBuffer<float> da(a), db(b), dc(c);
  std::vector<float> ref = c;
  if (batch == 1) {
    cpu::gemm<float>(cs.ta, cs.tb, cs.m, cs.n, cs.k, cs.alpha, a.data(), lda, b.data(), ldb,
                     cs.beta, ref.data(), ldc);
    gpu::gemm(ctx, cs.ta, cs.tb, cs.m, cs.n, cs.k, cs.alpha, da.get(), lda, db.get(), ldb, cs.beta,
              dc.get(), ldc);
  } else {
    cpu::gemm_strided_batched<float>(cs.ta, cs.tb, cs.m, cs.n, cs.k, cs.alpha, a.data(), lda, sa,
                                     b.data(), ldb, sb, cs.beta, ref.data(), ldc, sc, batch);
    gpu::gemm_strided_batched(ctx, cs.ta, cs.tb, cs.m, cs.n, cs.k, cs.alpha, da.get(), lda, sa,
                              db.get(), ldb, sb, cs.beta, dc.get(), ldc, sc, batch);
  }
  const auto got = dc.download(ctx);
  // Elements outside the [m, n] blocks (padding, gaps) must be untouched: tolerance 0.
  std::vector<double> tol(c.size(), 0.0);
  for (std::int64_t bi = 0; bi < batch; ++bi) {
    for (std::int64_t i = 0; i < cs.m; ++i) {
      for (std::int64_t j = 0; j < cs.n; ++j) {
        double mag = 0.0;
        for (std::int64_t p = 0; p < cs.k; ++p) {
          const float av = cs.ta ? a[sz(bi * sa + p * lda + i)] : a[sz(bi * sa + i * lda + p)];
          const float bv = cs.tb ? b[sz(bi * sb + j * ldb + p)] : b[sz(bi * sb + p * ldb + j)];
          mag += std::fabs(static_cast<double>(av) * bv);
        }
        mag *= std::fabs(cs.alpha);
        const std::size_t at = sz(bi * sc + i * ldc + j);
        if (cs.beta != 0.0f) mag += std::fabs(static_cast<double>(cs.beta) * c[at]);
        tol[at] = 2.0 * static_cast<double>(cs.k + 2) * kU * mag + kTiny;
      }
    }
  }
  expect_close(got, ref, tol,
               "gemm ta=" + std::to_string(cs.ta) + " tb=" + std::to_string(cs.tb) +
                   " m=" + std::to_string(cs.m) + " n=" + std::to_string(cs.n) +
                   " k=" + std::to_string(cs.k) + " beta=" + std::to_string(cs.beta) +
                   " batch=" + std::to_string(batch));
}

TEST_F(GpuParity, Gemm) {
  std::uint32_t seed = 1;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (auto [m, n, k] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{37, 19, 53},
                             {1, 1, 1},
                             {64, 33, 7},
                             {3, 130, 257},
                             {5, 7, 0}}) {
        for (float beta : {0.0f, 0.5f}) {
          check_gemm(ctx(), {ta, tb, m, n, k, 0, 1.25f, beta}, 1, seed++);
          check_gemm(ctx(), {ta, tb, m, n, k, 3, -0.75f, beta}, 1, seed++);
        }
      }
    }
  }
}

TEST_F(GpuParity, GemmStridedBatched) {
  std::uint32_t seed = 100;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      check_gemm(ctx(), {ta, tb, 13, 17, 29, 2, 1.0f, 0.0f}, 3, seed++);
      check_gemm(ctx(), {ta, tb, 13, 17, 29, 0, 0.5f, 2.0f}, 5, seed++);
      check_gemm(ctx(), {ta, tb, 4, 9, 0, 1, 1.0f, 0.25f}, 2, seed++);  // k == 0: c = beta c
      check_gemm(ctx(), {ta, tb, 4, 9, 0, 1, 1.0f, 0.0f}, 2, seed++);   // k == 0, beta 0: zeros
    }
  }
}

TEST_F(GpuParity, GemmEmpty) {
  // m == 0, n == 0 or batch == 0: nothing is touched (null pointers are fine).
  gpu::gemm(ctx(), false, false, 0, 5, 3, 1.0f, nullptr, 3, nullptr, 5, 0.0f, nullptr, 5);
  gpu::gemm(ctx(), false, true, 4, 0, 3, 1.0f, nullptr, 3, nullptr, 3, 0.0f, nullptr, 1);
  gpu::gemm_strided_batched(ctx(), true, false, 4, 5, 3, 1.0f, nullptr, 4, 12, nullptr, 5, 15, 0.0f,
                            nullptr, 5, 20, 0);
  ctx().synchronize();
}

// ---------------------------------------------------------------------------------------------
// Linear

TEST_F(GpuParity, Linear) {
  std::mt19937 g(7);
  for (auto [n, in, out] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{45, 37, 23},
                            {1, 1, 1},
                            {130, 64, 3}}) {
    for (bool with_bias : {true, false}) {
      const auto x = random_vec(g, sz(n * in), -1.0f, 1.0f);
      const auto w = random_vec(g, sz(out * in), -1.0f, 1.0f);
      const auto b = random_vec(g, sz(out), -1.0f, 1.0f);
      const auto dy = random_vec(g, sz(n * out), -1.0f, 1.0f);
      const auto dw0 = random_vec(g, sz(out * in), -1.0f, 1.0f);  // accumulated into
      const auto db0 = random_vec(g, sz(out), -1.0f, 1.0f);
      DeviceBuffer<float> gx(x), gw(w), gb(b), gdy(dy);
      DeviceBuffer<float> gy(sz(n * out)), gdx(sz(n * in)), gdw(dw0), gdb(db0);
      const float* bias_cpu = with_bias ? b.data() : nullptr;
      const float* bias_gpu = with_bias ? gb.get() : nullptr;

      std::vector<float> y(sz(n * out)), dx(sz(n * in)), dw = dw0, db = db0;
      cpu::linear_forward<float>(x.data(), w.data(), bias_cpu, y.data(), n, in, out);
      gpu::linear_forward(ctx(), gx.get(), gw.get(), bias_gpu, gy.get(), n, in, out);
      cpu::linear_backward<float>(dy.data(), x.data(), w.data(), dx.data(), dw.data(),
                                  with_bias ? db.data() : nullptr, n, in, out);
      gpu::linear_backward(ctx(), gdy.get(), gx.get(), gw.get(), gdx.get(), gdw.get(),
                           with_bias ? gdb.get() : nullptr, n, in, out);

      // y: dot of length `in` plus the bias: 2 (in + 3) u (sum|x w| + |b|).
      std::vector<double> ty(y.size()), tdx(dx.size()), tdw(dw.size()), tdb(db.size());
      for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t o = 0; o < out; ++o) {
          double mag = with_bias ? std::fabs(b[sz(o)]) : 0.0;
          for (std::int64_t p = 0; p < in; ++p)
            mag += std::fabs(static_cast<double>(x[sz(i * in + p)]) * w[sz(o * in + p)]);
          ty[sz(i * out + o)] = 2.0 * static_cast<double>(in + 3) * kU * mag + kTiny;
        }
      }
      // dx: dot of length `out`; dw: dot of length n plus the old value; db: sum of n plus old.
      for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t p = 0; p < in; ++p) {
          double mag = 0.0;
          for (std::int64_t o = 0; o < out; ++o)
            mag += std::fabs(static_cast<double>(dy[sz(i * out + o)]) * w[sz(o * in + p)]);
          tdx[sz(i * in + p)] = 2.0 * static_cast<double>(out + 2) * kU * mag + kTiny;
        }
      }
      for (std::int64_t o = 0; o < out; ++o) {
        double mb = std::fabs(db0[sz(o)]);
        for (std::int64_t i = 0; i < n; ++i) mb += std::fabs(dy[sz(i * out + o)]);
        tdb[sz(o)] = 2.0 * static_cast<double>(n + 20) * kU * mb + kTiny;
        for (std::int64_t p = 0; p < in; ++p) {
          double mag = std::fabs(dw0[sz(o * in + p)]);
          for (std::int64_t i = 0; i < n; ++i)
            mag += std::fabs(static_cast<double>(dy[sz(i * out + o)]) * x[sz(i * in + p)]);
          tdw[sz(o * in + p)] = 2.0 * static_cast<double>(n + 3) * kU * mag + kTiny;
        }
      }
      const std::string tag = " n=" + std::to_string(n) + " in=" + std::to_string(in) +
                              " out=" + std::to_string(out) + " bias=" + std::to_string(with_bias);
      expect_close(gy.download(ctx()), y, ty, "linear y" + tag);
      expect_close(gdx.download(ctx()), dx, tdx, "linear dx" + tag);
      expect_close(gdw.download(ctx()), dw, tdw, "linear dw" + tag);
      expect_close(gdb.download(ctx()), db, tdb, "linear db" + tag);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Softmax

TEST_F(GpuParity, Softmax) {
  std::mt19937 g(11);
  for (auto [rows, cols] : {std::pair<std::int64_t, std::int64_t>{7, 1},
                            {33, 5},
                            {17, 300},
                            {3, 5000},
                            {(std::int64_t{1} << 20) + 5, 2}}) {  // more rows than grid blocks
    auto x = random_vec(g, sz(rows * cols), -6.0f, 6.0f);
    if (rows > 2 && cols > 2) {
      for (std::int64_t c = 0; c < cols; ++c) x[sz(0 * cols + c)] = -kInf;  // all -inf: zeros
      x[sz(1 * cols + 0)] = -kInf;                                          // one -inf
      x[sz(1 * cols + 2)] = -kInf;
    }
    const auto dy = random_vec(g, x.size(), -1.0f, 1.0f);
    DeviceBuffer<float> dx_(x), ddy(dy), dyv(x.size()), ddx(x.size());
    std::vector<float> y(x.size()), dx(x.size());
    cpu::softmax_forward<float>(x.data(), y.data(), rows, cols);
    gpu::softmax_forward(ctx(), dx_.get(), dyv.get(), rows, cols);
    // Backward from the CPU forward (identical inputs on both sides).
    DeviceBuffer<float> dyref(y);
    cpu::softmax_backward<float>(y.data(), dy.data(), dx.data(), rows, cols);
    gpu::softmax_backward(ctx(), dyref.get(), ddy.get(), ddx.get(), rows, cols);

    // y_j = exp(x_j - m) / s: x_j - m rounds (relative error u |x_j - m| after exp), expf adds
    // 2 ulps, s a sum of `cols` terms, the division 1 ulp:
    //   tol = 2 u (|x_j - m| + cols + 10) y_j.
    // dx = y (dy - dot): dot of `cols` terms: tol = 2 u |y| ((cols + 4) sum|dy y| + |dy| + |dot|).
    std::vector<double> ty(y.size()), tdx(y.size());
    for (std::int64_t r = 0; r < rows; ++r) {
      float m = -kInf;
      double dot = 0.0, sabs = 0.0;
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::size_t i = sz(r * cols + c);
        m = std::max(m, x[i]);
        dot += static_cast<double>(dy[i]) * y[i];
        sabs += std::fabs(static_cast<double>(dy[i]) * y[i]);
      }
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::size_t i = sz(r * cols + c);
        const double spread = std::isinf(x[i]) ? 0.0 : std::fabs(static_cast<double>(x[i]) - m);
        ty[i] = 2.0 * kU * (spread + static_cast<double>(cols) + 10.0) * y[i] + kTiny;
        tdx[i] = 2.0 * kU * y[i] *
                     (static_cast<double>(cols + 4) * sabs + std::fabs(dy[i]) + std::fabs(dot)) +
                 kTiny;
      }
    }
    const std::string tag = " rows=" + std::to_string(rows) + " cols=" + std::to_string(cols);
    expect_close(dyv.download(ctx()), y, ty, "softmax y" + tag);
    expect_close(ddx.download(ctx()), dx, tdx, "softmax dx" + tag);
  }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

TEST_F(GpuParity, LayerNorm) {
  std::mt19937 g(13);
  const float eps = 1e-5f;
  for (auto [rows, cols] :
       {std::pair<std::int64_t, std::int64_t>{19, 1}, {23, 77}, {5, 1030}, {2, 6000}}) {
    auto x = random_vec(g, sz(rows * cols), -2.0f, 2.0f);
    for (auto& v : x) v += 0.5f;
    const auto gamma = random_vec(g, sz(cols), 0.5f, 1.5f);
    const auto beta = random_vec(g, sz(cols), -0.5f, 0.5f);
    const auto dy = random_vec(g, x.size(), -1.0f, 1.0f);
    const auto dgamma0 = random_vec(g, sz(cols), -1.0f, 1.0f);
    const auto dbeta0 = random_vec(g, sz(cols), -1.0f, 1.0f);
    std::vector<float> y(x.size()), mean(sz(rows)), rstd(sz(rows)), dx(x.size());
    std::vector<float> dgamma = dgamma0, dbeta = dbeta0;
    cpu::layernorm_forward<float>(x.data(), gamma.data(), beta.data(), y.data(), mean.data(),
                                  rstd.data(), rows, cols, eps);
    cpu::layernorm_backward<float>(dy.data(), x.data(), gamma.data(), mean.data(), rstd.data(),
                                   dx.data(), dgamma.data(), dbeta.data(), rows, cols);

    DeviceBuffer<float> dxin(x), dgam(gamma), dbet(beta), ddy(dy), dyv(x.size()), dmean(sz(rows)),
        drstd(sz(rows));
    gpu::layernorm_forward(ctx(), dxin.get(), dgam.get(), dbet.get(), dyv.get(), dmean.get(),
                           drstd.get(), rows, cols, eps);
    // Backward from the CPU's saved statistics (identical inputs on both sides).
    DeviceBuffer<float> cmean(mean), crstd(rstd), ddx(x.size()), ddg(dgamma0), ddb(dbeta0);
    gpu::layernorm_backward(ctx(), ddy.get(), dxin.get(), dgam.get(), cmean.get(), crstd.get(),
                            ddx.get(), ddg.get(), ddb.get(), rows, cols);

    // With A = mean|x| over the row, fp32 sums of `cols` terms:
    //   mean: 2 (cols + 2) u A;  rstd: 2 (cols + 8) u rstd (variance sum + sqrt + division);
    //   y: 2 u ((cols + 2) A rstd |gamma| + (cols + 8) |xhat gamma| + |y| + |beta|).
    // Backward, G = mean|g|, GX = mean|g xhat|, g = dy gamma:
    //   dx: 4 u rstd (|g| + (cols + 8) (G + |xhat| GX)) + 4 u |dx|;
    //   dgamma: 4 (rows + 20) u (sum_r |dy xhat| + |dgamma0|); dbeta: 2 (rows + 20) u (...).
    std::vector<double> ty(y.size()), tmean(mean.size()), trstd(rstd.size()), tdx(dx.size());
    std::vector<double> tdg(sz(cols)), tdb(sz(cols));
    std::vector<double> sum_dyx(sz(cols), 0.0), sum_dy(sz(cols), 0.0);
    for (std::int64_t r = 0; r < rows; ++r) {
      double a = 0.0, gs = 0.0, gxs = 0.0;
      for (std::int64_t c = 0; c < cols; ++c) a += std::fabs(x[sz(r * cols + c)]);
      a /= static_cast<double>(cols);
      const double rs = rstd[sz(r)], mu = mean[sz(r)];
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::size_t i = sz(r * cols + c);
        const double xhat = (x[i] - mu) * rs, gv = static_cast<double>(dy[i]) * gamma[sz(c)];
        gs += std::fabs(gv);
        gxs += std::fabs(gv * xhat);
        sum_dyx[sz(c)] += std::fabs(dy[i] * xhat);
        sum_dy[sz(c)] += std::fabs(dy[i]);
      }
      gs /= static_cast<double>(cols);
      gxs /= static_cast<double>(cols);
      const double fc = static_cast<double>(cols);
      tmean[sz(r)] = 2.0 * (fc + 2.0) * kU * a + kTiny;
      trstd[sz(r)] = 2.0 * (fc + 8.0) * kU * rs;
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::size_t i = sz(r * cols + c);
        const double xhat = (x[i] - mu) * rs, gv = static_cast<double>(dy[i]) * gamma[sz(c)];
        ty[i] =
            2.0 * kU *
                ((fc + 2.0) * a * rs * gamma[sz(c)] + (fc + 8.0) * std::fabs(xhat * gamma[sz(c)]) +
                 std::fabs(y[i]) + std::fabs(beta[sz(c)])) +
            kTiny;
        tdx[i] = 4.0 * kU * rs * (std::fabs(gv) + (fc + 8.0) * (gs + std::fabs(xhat) * gxs)) +
                 4.0 * kU * std::fabs(dx[i]) + kTiny;
      }
    }
    for (std::int64_t c = 0; c < cols; ++c) {
      const double fr = static_cast<double>(rows);
      tdg[sz(c)] = 4.0 * (fr + 20.0) * kU * (sum_dyx[sz(c)] + std::fabs(dgamma0[sz(c)])) + kTiny;
      tdb[sz(c)] = 2.0 * (fr + 20.0) * kU * (sum_dy[sz(c)] + std::fabs(dbeta0[sz(c)])) + kTiny;
    }
    const std::string tag = " rows=" + std::to_string(rows) + " cols=" + std::to_string(cols);
    expect_close(dyv.download(ctx()), y, ty, "layernorm y" + tag);
    expect_close(dmean.download(ctx()), mean, tmean, "layernorm mean" + tag);
    expect_close(drstd.download(ctx()), rstd, trstd, "layernorm rstd" + tag);
    expect_close(ddx.download(ctx()), dx, tdx, "layernorm dx" + tag);
    expect_close(ddg.download(ctx()), dgamma, tdg, "layernorm dgamma" + tag);
    expect_close(ddb.download(ctx()), dbeta, tdb, "layernorm dbeta" + tag);
  }
}

// ---------------------------------------------------------------------------------------------
// GELU

TEST_F(GpuParity, Gelu) {
  std::mt19937 g(17);
  for (std::int64_t n : {std::int64_t{1}, std::int64_t{10007}}) {
    auto x = random_vec(g, sz(n), -6.0f, 6.0f);
    if (n > 10) {
      x[0] = 0.0f;
      x[1] = -0.0f;
      x[2] = 12.0f;
      x[3] = -12.0f;
      x[4] = 1e-20f;
    }
    const auto dy = random_vec(g, sz(n), -1.0f, 1.0f);
    std::vector<float> y(sz(n)), dx(sz(n));
    cpu::gelu_forward<float>(x.data(), y.data(), n);
    cpu::gelu_backward<float>(x.data(), dy.data(), dx.data(), n);
    DeviceBuffer<float> dxin(x), ddy(dy), dyv(sz(n)), ddx(sz(n));
    gpu::gelu_forward(ctx(), dxin.get(), dyv.get(), n);
    gpu::gelu_backward(ctx(), dxin.get(), ddy.get(), ddx.get(), n);

    // z = c (v + a v^3) carries dz = 8 u (|c v| + |c a v^3|) (five roundings); tanh passes on
    // (1 - t^2) dz and adds 2 ulps per implementation (8 u |t|), so dt = (1 - t^2) dz + 8 u|t| +
    // 2u.
    //   y = 0.5 v (1 + t):            tol = 0.5 |v| dt + 4 u |y|
    //   grad = 0.5 (1 + t) + 0.5 v (1 - t^2) du, du = c (1 + 3 a v^2):
    //                                 tol = |dy| (dt (0.5 + 2 |v du|) + 8 u (0.5|1+t| + |v du|) +
    //                                 2u)
    //                                       + 4 u |dx|
    constexpr double c = 0.7978845608028654, a = 0.044715;
    std::vector<double> ty(sz(n)), tdx(sz(n));
    for (std::size_t i = 0; i < sz(n); ++i) {
      const double v = x[i];
      const double t = std::tanh(c * (v + a * v * v * v));
      const double dz = 8.0 * kU * (std::fabs(c * v) + std::fabs(c * a * v * v * v));
      const double dt = (1.0 - t * t) * dz + 8.0 * kU * std::fabs(t) + 2.0 * kU;
      const double du = c * (1.0 + 3.0 * a * v * v);
      ty[i] = 0.5 * std::fabs(v) * dt + 4.0 * kU * std::fabs(y[i]) + kTiny;
      tdx[i] = std::fabs(dy[i]) *
                   (dt * (0.5 + 2.0 * std::fabs(v * du)) +
                    8.0 * kU * (0.5 * std::fabs(1.0 + t) + std::fabs(v * du)) + 2.0 * kU) +
               4.0 * kU * std::fabs(dx[i]) + kTiny;
    }
    expect_close(dyv.download(ctx()), y, ty, "gelu y n=" + std::to_string(n));
    expect_close(ddx.download(ctx()), dx, tdx, "gelu dx n=" + std::to_string(n));
  }
}

// ---------------------------------------------------------------------------------------------
// Embedding, gather, scatter

// Bound for a scattered accumulation (atomicAdd on the GPU, in any order): an element that
// receives `count` terms on top of its old value gets 2 (count + 2) u (|old| + sum|terms|).
std::vector<double> scatter_tolerance(const std::vector<float>& old, const std::vector<float>& src,
                                      const std::vector<std::int32_t>& idx, const float* w,
                                      std::int64_t d) {
  std::vector<double> mag(old.size()), count(old.size(), 0.0);
  for (std::size_t i = 0; i < old.size(); ++i) mag[i] = std::fabs(old[i]);
  for (std::size_t i = 0; i < idx.size(); ++i) {
    for (std::int64_t j = 0; j < d; ++j) {
      const std::size_t at = sz(idx[i] * d + j);
      const double term = (w != nullptr ? static_cast<double>(w[i]) : 1.0) * src[sz(i * d + j)];
      mag[at] += std::fabs(term);
      count[at] += 1.0;
    }
  }
  std::vector<double> tol(old.size());
  for (std::size_t i = 0; i < old.size(); ++i)
    tol[i] = 2.0 * (count[i] + 2.0) * kU * mag[i] + kTiny;
  return tol;
}

TEST_F(GpuParity, Embedding) {
  std::mt19937 g(19);
  for (auto [n, vocab, d] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{200, 51, 17},
                             {1, 1, 1},
                             {3000, 7, 64}}) {
    const auto ids = random_ids(g, sz(n), static_cast<std::int32_t>(vocab));
    const auto table = random_vec(g, sz(vocab * d), -1.0f, 1.0f);
    const auto dout = random_vec(g, sz(n * d), -1.0f, 1.0f);
    const auto dtable0 = random_vec(g, sz(vocab * d), -1.0f, 1.0f);
    std::vector<float> out(sz(n * d)), dtable = dtable0;
    cpu::gather_rows_forward<float>(table.data(), ids.data(), out.data(), n, vocab, d);
    cpu::gather_rows_backward<float>(dout.data(), ids.data(), dtable.data(), n, vocab, d);
    DeviceBuffer<std::int32_t> dids(ids);
    DeviceBuffer<float> dtab(table), dout_(dout), dres(sz(n * d)), ddt(dtable0);
    gpu::gather_rows_forward(ctx(), dtab.get(), dids.get(), dres.get(), n, vocab, d);
    gpu::gather_rows_backward(ctx(), dout_.get(), dids.get(), ddt.get(), n, vocab, d);
    const std::string tag = " n=" + std::to_string(n) + " vocab=" + std::to_string(vocab);
    expect_equal(dres.download(ctx()), out, "embedding out" + tag);  // a copy: exact
    expect_close(ddt.download(ctx()), dtable, scatter_tolerance(dtable0, dout, ids, nullptr, d),
                 "embedding dtable" + tag);
  }
}

TEST_F(GpuParity, GatherScatterRows) {
  std::mt19937 g(23);
  for (auto [m, n, d] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{300, 41, 19},
                         {1, 1, 1},
                         {64, 200, 300},
                         {50, 3, 0}}) {
    const auto idx = random_ids(g, sz(m), static_cast<std::int32_t>(n));
    const auto src = random_vec(g, sz(n * d), -1.0f, 1.0f);   // gather source [n, d]
    const auto ddst = random_vec(g, sz(m * d), -1.0f, 1.0f);  // gather output grad [m, d]
    const auto dsrc0 = random_vec(g, sz(n * d), -1.0f, 1.0f);
    DeviceBuffer<std::int32_t> didx(idx);

    // gather forward (exact copy) and backward (scattered accumulation)
    std::vector<float> dst(sz(m * d)), dsrc = dsrc0;
    cpu::gather_rows_forward<float>(src.data(), idx.data(), dst.data(), m, n, d);
    cpu::gather_rows_backward<float>(ddst.data(), idx.data(), dsrc.data(), m, n, d);
    DeviceBuffer<float> dsrc_in(src), dddst(ddst), ddst_out(sz(m * d)), ddsrc(dsrc0);
    gpu::gather_rows_forward(ctx(), dsrc_in.get(), didx.get(), ddst_out.get(), m, n, d);
    gpu::gather_rows_backward(ctx(), dddst.get(), didx.get(), ddsrc.get(), m, n, d);
    const std::string tag =
        " m=" + std::to_string(m) + " n=" + std::to_string(n) + " d=" + std::to_string(d);
    expect_equal(ddst_out.download(ctx()), dst, "gather_rows dst" + tag);
    expect_close(ddsrc.download(ctx()), dsrc, scatter_tolerance(dsrc0, ddst, idx, nullptr, d),
                 "gather_rows dsrc" + tag);

    // scatter_add forward: src2[m, d] into dst2[n, d], with and without weights
    const auto src2 = random_vec(g, sz(m * d), -1.0f, 1.0f);
    const auto w = random_vec(g, sz(m), -2.0f, 2.0f);
    const auto dst0 = random_vec(g, sz(n * d), -1.0f, 1.0f);
    const auto gout = random_vec(g, sz(n * d), -1.0f, 1.0f);  // grad of dst2
    DeviceBuffer<float> dsrc2(src2), dw_in(w), dgout(gout);
    for (bool weighted : {true, false}) {
      const float* wc = weighted ? w.data() : nullptr;
      const float* wg = weighted ? dw_in.get() : nullptr;
      std::vector<float> dst2 = dst0;
      cpu::scatter_add_rows_forward<float>(src2.data(), idx.data(), wc, dst2.data(), m, n, d);
      DeviceBuffer<float> ddst2(dst0);
      gpu::scatter_add_rows_forward(ctx(), dsrc2.get(), didx.get(), wg, ddst2.get(), m, n, d);
      const std::string wt = tag + " weighted=" + std::to_string(weighted);
      expect_close(ddst2.download(ctx()), dst2, scatter_tolerance(dst0, src2, idx, wc, d),
                   "scatter_add_rows dst" + wt);

      // backward: dsrc = w ddst[idx] (one multiply on both sides: exact); dw = dot of d terms:
      // 2 (d + 2) u sum_j |ddst src|.
      std::vector<float> bsrc(sz(m * d)), bw(sz(m), 0.0f);
      cpu::scatter_add_rows_backward<float>(gout.data(), idx.data(), src2.data(), wc, bsrc.data(),
                                            weighted ? bw.data() : nullptr, m, n, d);
      DeviceBuffer<float> dbsrc(sz(m * d)), dbw(sz(m), 0.0f);
      gpu::scatter_add_rows_backward(ctx(), dgout.get(), didx.get(), dsrc2.get(), wg, dbsrc.get(),
                                     weighted ? dbw.get() : nullptr, m, n, d);
      expect_equal(dbsrc.download(ctx()), bsrc, "scatter_add_rows dsrc" + wt);
      std::vector<double> tw(sz(m));
      for (std::int64_t i = 0; i < m; ++i) {
        double mag = 0.0;
        for (std::int64_t j = 0; j < d; ++j)
          mag += std::fabs(static_cast<double>(gout[sz(idx[sz(i)] * d + j)]) * src2[sz(i * d + j)]);
        tw[sz(i)] = 2.0 * static_cast<double>(d + 2) * kU * mag + kTiny;
      }
      expect_close(dbw.download(ctx()), bw, tw, "scatter_add_rows dw" + wt);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

TEST_F(GpuParity, CrossEntropy) {
  std::mt19937 g(29);
  for (auto [n, v] :
       {std::pair<std::int64_t, std::int64_t>{37, 1}, {37, 50}, {9, 3001}, {2, 70000}}) {
    const auto logits = random_vec(g, sz(n * v), -6.0f, 6.0f);
    auto targets = random_ids(g, sz(n), static_cast<std::int32_t>(v));
    std::bernoulli_distribution ignore(0.2);
    for (auto& t : targets)
      if (ignore(g)) t = -1;
    targets[0] = -1;
    const auto dloss = random_vec(g, sz(n), -2.0f, 2.0f);
    std::vector<float> losses(sz(n)), lse(sz(n)), dlogits(sz(n * v));
    cpu::cross_entropy_forward<float>(logits.data(), targets.data(), losses.data(), lse.data(), n,
                                      v);
    cpu::cross_entropy_backward<float>(logits.data(), targets.data(), lse.data(), dloss.data(),
                                       dlogits.data(), n, v);
    DeviceBuffer<float> dlog(logits), ddl(dloss), dlosses(sz(n)), dlse(sz(n)), dgrad(sz(n * v));
    DeviceBuffer<std::int32_t> dt(targets);
    gpu::cross_entropy_forward(ctx(), dlog.get(), dt.get(), dlosses.get(), dlse.get(), n, v);
    DeviceBuffer<float> clse(lse);  // backward from the CPU's lse: identical inputs
    gpu::cross_entropy_backward(ctx(), dlog.get(), dt.get(), clse.get(), ddl.get(), dgrad.get(), n,
                                v);

    // lse = m + log(sum_j exp(x_j - m)): the sum of v terms (each with 2 ulps of expf and the
    // rounding of x_j - m, |x_j - m| <= 12) and logf's 2 ulps:
    //   tol = 2 u (v + 20 + 2 |lse| + 2 |m|); loss = lse - x_t adds 2 u (|loss| + |x_t|).
    // dlogits = dloss (p - [j == t]), p = exp(x - lse): tol = 2 |dloss| (u p (|x - lse| + 6) +
    //   u |p - [j == t]|) + 2 u |dlogits|.
    std::vector<double> tl(sz(n)), tlse(sz(n)), tg(sz(n * v));
    for (std::int64_t r = 0; r < n; ++r) {
      float m = -kInf;
      for (std::int64_t c = 0; c < v; ++c) m = std::max(m, logits[sz(r * v + c)]);
      const double l = lse[sz(r)];
      tlse[sz(r)] =
          2.0 * kU * (static_cast<double>(v) + 20.0 + 2.0 * std::fabs(l) + 2.0 * std::fabs(m));
      const std::int32_t t = targets[sz(r)];
      tl[sz(r)] =
          t < 0 ? 0.0
                : tlse[sz(r)] +
                      2.0 * kU * (std::fabs(losses[sz(r)]) + std::fabs(logits[sz(r * v + t)]));
      for (std::int64_t c = 0; c < v; ++c) {
        const std::size_t i = sz(r * v + c);
        if (t < 0) {
          tg[i] = 0.0;
          continue;
        }
        const double p = std::exp(static_cast<double>(logits[i]) - l);
        const double hot = c == t ? 1.0 : 0.0;
        tg[i] = 2.0 * std::fabs(dloss[sz(r)]) *
                    (kU * p * (std::fabs(logits[i] - l) + 6.0) + kU * std::fabs(p - hot)) +
                2.0 * kU * std::fabs(dlogits[i]) + kTiny;
      }
    }
    const std::string tag = " n=" + std::to_string(n) + " v=" + std::to_string(v);
    expect_close(dlse.download(ctx()), lse, tlse, "cross_entropy lse" + tag);
    expect_close(dlosses.download(ctx()), losses, tl, "cross_entropy losses" + tag);
    expect_close(dgrad.download(ctx()), dlogits, tg, "cross_entropy dlogits" + tag);
  }
}

// ---------------------------------------------------------------------------------------------
// AdamW

TEST_F(GpuParity, AdamW) {
  std::mt19937 g(31);
  for (std::int64_t step : {std::int64_t{1}, std::int64_t{7}, std::int64_t{1000}}) {
    const std::int64_t n = 10007;
    routemoe::cpu::AdamWHyper h;
    h.lr = 3e-3;
    h.weight_decay = 0.1;
    h.step = step;
    const auto p0 = random_vec(g, sz(n), -1.0f, 1.0f);
    const auto grad = random_vec(g, sz(n), -1.0f, 1.0f);
    const auto m0 = random_vec(g, sz(n), -0.1f, 0.1f);
    const auto v0 = random_vec(g, sz(n), 1e-4f, 1e-2f);
    std::vector<float> p = p0, m = m0, v = v0;
    cpu::adamw_update<float>(p.data(), grad.data(), m.data(), v.data(), n, h);
    DeviceBuffer<float> dp(p0), dg(grad), dm(m0), dv(v0);
    gpu::adamw_update(ctx(), dp.get(), dg.get(), dm.get(), dv.get(), n, h);

    // fp32 on the GPU (beta1/beta2 themselves rounded to fp32), double on the CPU:
    //   m: 4 u (|b1 m0| + |(1 - b1) g|);  v: 4 u (|b2 v0| + |(1 - b2) g^2|);
    //   p: 2 u |p| + 2 lr (12 u |r| + 2 u wd |p0|), r = mhat / (sqrt(vhat) + eps)
    //   (about ten roundings in r, one in the subtraction).
    const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
    std::vector<double> tp(sz(n)), tm(sz(n)), tv(sz(n));
    for (std::size_t i = 0; i < sz(n); ++i) {
      const double gi = grad[i];
      tm[i] = 4.0 * kU * (std::fabs(h.beta1 * m0[i]) + std::fabs((1.0 - h.beta1) * gi)) + kTiny;
      tv[i] =
          4.0 * kU * (std::fabs(h.beta2 * v0[i]) + std::fabs((1.0 - h.beta2) * gi * gi)) + kTiny;
      const double r = (m[i] / bc1) / (std::sqrt(v[i] / bc2) + h.eps);
      tp[i] =
          2.0 * kU * std::fabs(p[i]) +
          2.0 * h.lr * (12.0 * kU * std::fabs(r) + 2.0 * kU * h.weight_decay * std::fabs(p0[i])) +
          kTiny;
    }
    const std::string tag = " step=" + std::to_string(step);
    expect_close(dm.download(ctx()), m, tm, "adamw m" + tag);
    expect_close(dv.download(ctx()), v, tv, "adamw v" + tag);
    expect_close(dp.download(ctx()), p, tp, "adamw param" + tag);
  }
}

// ---------------------------------------------------------------------------------------------
// Elementwise helpers

TEST_F(GpuParity, Elementwise) {
  std::mt19937 g(37);
  for (std::int64_t n : {std::int64_t{1}, std::int64_t{257}, std::int64_t{100003}}) {
    const auto x = random_vec(g, sz(n), -3.0f, 3.0f);
    const auto y0 = random_vec(g, sz(n), -3.0f, 3.0f);
    const std::string tag = " n=" + std::to_string(n);

    {  // fill: exact
      std::vector<float> ref(sz(n));
      cpu::fill<float>(ref.data(), 1.75f, n);
      DeviceBuffer<float> d(sz(n), -1.0f);
      gpu::fill(ctx(), d.get(), 1.75f, n);
      expect_equal(d.download(ctx()), ref, "fill" + tag);
    }
    {  // axpy: the GPU may fuse alpha x + y (one rounding instead of two):
       // 2 u (|y0| + |alpha x|)
      std::vector<float> ref = y0;
      cpu::axpy<float>(-0.3f, x.data(), ref.data(), n);
      DeviceBuffer<float> dx(x), dy(y0);
      gpu::axpy(ctx(), -0.3f, dx.get(), dy.get(), n);
      std::vector<double> tol(sz(n));
      for (std::size_t i = 0; i < sz(n); ++i)
        tol[i] = 2.0 * kU * (std::fabs(y0[i]) + std::fabs(0.3 * x[i])) + kTiny;
      expect_close(dy.download(ctx()), ref, tol, "axpy" + tag);
    }
    {  // scale: one multiply, exact
      std::vector<float> ref = x;
      cpu::scale<float>(ref.data(), 1.3f, n);
      DeviceBuffer<float> d(x);
      gpu::scale(ctx(), d.get(), 1.3f, n);
      expect_equal(d.download(ctx()), ref, "scale" + tag);
    }
    {  // add: one addition, exact; also in place (y aliases a)
      std::vector<float> ref(sz(n));
      cpu::add<float>(x.data(), y0.data(), ref.data(), n);
      DeviceBuffer<float> da(x), db(y0), dy(sz(n));
      gpu::add(ctx(), da.get(), db.get(), dy.get(), n);
      expect_equal(dy.download(ctx()), ref, "add" + tag);
      gpu::add(ctx(), da.get(), db.get(), da.get(), n);
      expect_equal(da.download(ctx()), ref, "add in place" + tag);
    }
    {  // sum_squares: double accumulation on both sides: 4 (n + 1100) 2^-53 sum.
      const double ref = cpu::sum_squares<float>(x.data(), n);
      DeviceBuffer<float> d(x);
      const double got = gpu::sum_squares(ctx(), d.get(), n);
      EXPECT_NEAR(got, ref, 4.0 * (static_cast<double>(n) + 1100.0) * 0x1p-53 * ref) << tag;
    }
  }
}

TEST_F(GpuParity, SumRows) {
  std::mt19937 g(41);
  for (auto [rows, cols] :
       {std::pair<std::int64_t, std::int64_t>{1000, 37}, {3, 100}, {1, 1}, {4099, 2050}}) {
    const auto x = random_vec(g, sz(rows * cols), -1.0f, 1.0f);
    const auto out0 = random_vec(g, sz(cols), -1.0f, 1.0f);
    std::vector<float> ref = out0;
    cpu::sum_rows<float>(x.data(), ref.data(), rows, cols);
    DeviceBuffer<float> dx(x), dout(out0);
    gpu::sum_rows(ctx(), dx.get(), dout.get(), rows, cols);
    // out += column sum of `rows` terms, fp32 on the GPU: 2 (rows + 20) u (|out0| + sum|x|).
    std::vector<double> tol(sz(cols));
    for (std::int64_t c = 0; c < cols; ++c) {
      double mag = std::fabs(out0[sz(c)]);
      for (std::int64_t r = 0; r < rows; ++r) mag += std::fabs(x[sz(r * cols + c)]);
      tol[sz(c)] = 2.0 * (static_cast<double>(rows) + 20.0) * kU * mag + kTiny;
    }
    expect_close(dout.download(ctx()), ref, tol,
                 "sum_rows rows=" + std::to_string(rows) + " cols=" + std::to_string(cols));
  }
}

// ---------------------------------------------------------------------------------------------
// Philox fills: bit-identical to the CPU

std::vector<std::uint32_t> bits_of(const std::vector<float>& v) {
  std::vector<std::uint32_t> b(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) b[i] = routemoe::float_bits(v[i]);
  return b;
}

TEST_F(GpuParity, PhiloxFillsBitIdentical) {
  using routemoe::Tensor;
  const std::int64_t n = 10007;
  struct Case {
    std::uint64_t seed, stream, offset;
  };
  for (const Case& cs : {Case{1234, 7, 0}, Case{0x9e3779b97f4a7c15ull, 3, 123456789012ull},
                         Case{42, 0xffffffff00000001ull, (1ull << 32) - 5000}}) {
    Tensor cu = Tensor::empty({n});
    Tensor gu = Tensor::empty({n}, routemoe::DType::F32, Device::CUDA);
    routemoe::fill_uniform(cu, cs.seed, cs.stream, -0.25f, 0.75f, cs.offset);
    routemoe::fill_uniform(gu, cs.seed, cs.stream, -0.25f, 0.75f, cs.offset);
    EXPECT_EQ(bits_of(gu.to_vector()), bits_of(cu.to_vector()))
        << "fill_uniform offset " << cs.offset;

    Tensor cn = Tensor::empty({n});
    Tensor gn = Tensor::empty({n}, routemoe::DType::F32, Device::CUDA);
    routemoe::fill_normal(cn, cs.seed, cs.stream, 0.1f, 0.02f, cs.offset);
    routemoe::fill_normal(gn, cs.seed, cs.stream, 0.1f, 0.02f, cs.offset);
    EXPECT_EQ(bits_of(gn.to_vector()), bits_of(cn.to_vector()))
        << "fill_normal offset " << cs.offset;

    // The raw CUDA entry points, on memory from device_alloc.
    DeviceBuffer<float> d(sz(n));
    gpu::fill_normal(d.get(), n, cs.seed, cs.stream, 0.0f, 1.0f, cs.offset);
    std::vector<float> ref(sz(n));
    for (std::int64_t i = 0; i < n; ++i)
      ref[sz(i)] = 0.0f + 1.0f * routemoe::philox_normal(cs.seed, cs.stream,
                                                         cs.offset + static_cast<std::uint64_t>(i));
    EXPECT_EQ(bits_of(d.download(ctx())), bits_of(ref)) << "cuda::fill_normal";
  }
}

// ---------------------------------------------------------------------------------------------
// Empty batches: every kernel is a no-op (null pointers allowed), nothing is launched.

TEST_F(GpuParity, ZeroSizes) {
  const gpu::Context& c = ctx();
  EXPECT_NO_THROW({
    gpu::linear_forward(c, nullptr, nullptr, nullptr, nullptr, 0, 4, 3);
    gpu::linear_backward(c, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0, 0);
    gpu::softmax_forward(c, nullptr, nullptr, 0, 5);
    gpu::softmax_backward(c, nullptr, nullptr, nullptr, 0, 5);
    gpu::softmax_forward(c, nullptr, nullptr, 5, 0);
    gpu::layernorm_forward(c, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 8, 1e-5f);
    gpu::layernorm_backward(c, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                            nullptr, 0, 8);
    gpu::gelu_forward(c, nullptr, nullptr, 0);
    gpu::gelu_backward(c, nullptr, nullptr, nullptr, 0);
    gpu::gather_rows_forward(c, nullptr, nullptr, nullptr, 0, 10, 4);
    gpu::gather_rows_backward(c, nullptr, nullptr, nullptr, 0, 10, 4);
    gpu::cross_entropy_forward(c, nullptr, nullptr, nullptr, nullptr, 0, 10);
    gpu::cross_entropy_backward(c, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 10);
    gpu::adamw_update(c, nullptr, nullptr, nullptr, nullptr, 0, gpu::AdamWHyper{});
    gpu::gather_rows_forward(c, nullptr, nullptr, nullptr, 0, 5, 3);
    gpu::gather_rows_backward(c, nullptr, nullptr, nullptr, 0, 5, 3);
    gpu::scatter_add_rows_forward(c, nullptr, nullptr, nullptr, nullptr, 0, 5, 3);
    gpu::scatter_add_rows_backward(c, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 5,
                                   3);
    gpu::fill(c, nullptr, 1.0f, 0);
    gpu::axpy(c, 1.0f, nullptr, nullptr, 0);
    gpu::scale(c, nullptr, 2.0f, 0);
    gpu::add(c, nullptr, nullptr, nullptr, 0);
    gpu::sum_rows(c, nullptr, nullptr, 0, 7);
    gpu::sum_rows(c, nullptr, nullptr, 7, 0);
    gpu::fill_uniform(nullptr, 0, 1, 2, 0.0f, 1.0f, 0);
    gpu::fill_normal(nullptr, 0, 1, 2, 0.0f, 1.0f, 0);
    c.synchronize();
  });
  EXPECT_EQ(gpu::sum_squares(c, nullptr, 0), 0.0);
}

// LayerNorm over zero columns still writes the statistics (mean 0, rstd 1/sqrt(eps)), and
// cross-entropy over an empty vocabulary gives lse = -inf and loss 0, like the CPU.
TEST_F(GpuParity, EmptyRowsStatistics) {
  const std::int64_t rows = 3;
  std::vector<float> mean(sz(rows), 7.0f), rstd(sz(rows), 7.0f);
  cpu::layernorm_forward<float>(nullptr, nullptr, nullptr, nullptr, mean.data(), rstd.data(), rows,
                                0, 1e-5f);
  DeviceBuffer<float> dmean(sz(rows), 7.0f), drstd(sz(rows), 7.0f);
  gpu::layernorm_forward(ctx(), nullptr, nullptr, nullptr, nullptr, dmean.get(), drstd.get(), rows,
                         0, 1e-5f);
  expect_equal(dmean.download(ctx()), mean, "layernorm mean cols=0");
  std::vector<double> trs(sz(rows));
  for (std::size_t i = 0; i < sz(rows); ++i) trs[i] = 8.0 * kU * rstd[i];
  expect_close(drstd.download(ctx()), rstd, trs, "layernorm rstd cols=0");

  const std::vector<std::int32_t> targets(sz(rows), -1);
  std::vector<float> losses(sz(rows), 7.0f), lse(sz(rows), 7.0f);
  cpu::cross_entropy_forward<float>(nullptr, targets.data(), losses.data(), lse.data(), rows, 0);
  DeviceBuffer<std::int32_t> dt(targets);
  DeviceBuffer<float> dl(sz(rows), 7.0f), dlse(sz(rows), 7.0f);
  gpu::cross_entropy_forward(ctx(), nullptr, dt.get(), dl.get(), dlse.get(), rows, 0);
  expect_equal(dl.download(ctx()), losses, "cross_entropy losses v=0");
  expect_equal(dlse.download(ctx()), lse, "cross_entropy lse v=0");
}

TEST_F(GpuParity, ContextBasics) {
  EXPECT_GE(gpu::device_count(), 1);
  EXPECT_EQ(ctx().device(), 0);
  EXPECT_NE(ctx().stream(), nullptr);
  EXPECT_NE(ctx().cublas(), nullptr);
  EXPECT_NO_THROW(ctx().synchronize());
}

}  // namespace

#endif  // ROUTEMOE_HAVE_CUDA

int main(int argc, char** argv) {
#if !ROUTEMOE_HAVE_CUDA
  (void)argc;
  (void)argv;
  std::printf("gpu_parity: built without CUDA; skipped\n");
  return 77;
#else
  if (routemoe::cuda::device_count() == 0) {
    std::printf("gpu_parity: no GPU visible; skipped\n");
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
#endif
}
