// Driver (c) of the kernel table (cases.h): every CUDA kernel of framework/cuda/kernels.h
// against its CPU twin in framework/cpu/kernels.h, fp32, on the table's inputs (odd shapes,
// empty batches, long rows, more rows than grid blocks, the in-place forms the model uses), with
// the CUDA-vs-CPU tolerance the table writes next to each output. As in driver (a), every array
// the call must not write is compared bitwise and nothing may be written past an array's end.
// The backward of both backends starts from the same arrays: the CPU forward's.
// The table's kernels without a CUDA twin (Case::cuda_twin false: the MoE kernels, for now) are
// listed as GpuNoTwin tests that report SKIPPED ("no CUDA twin"), never passed.
// Then the checks outside the table: the Philox fills bit for bit, null pointers on empty
// batches, the context.
//
// The binary has its own main(): it exits with 77 (ctest SKIP_RETURN_CODE, reported as
// "skipped", never "passed") when the build has no CUDA backend or no GPU is visible.

#include <gtest/gtest.h>

#include <cstdio>

#if ROUTEMOE_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "framework/cpu/kernels.h"
#include "framework/cuda/context.h"
#include "framework/cuda/kernels.h"
#include "framework/device.h"
#include "framework/dtype.h"
#include "framework/rng.h"
#include "framework/tensor.h"
#include "tests/kernels/cases.h"

static_assert(ROUTEMOE_KERNEL_CASES_CUDA, "link the table built with its CUDA calls");

namespace routemoe::kerneltest {
namespace {

namespace gpu = routemoe::cuda;
using routemoe::Device;

// Device copies of a case's arrays (Value and Index arrays with their guards, exactly as the
// host arrays hold them); Wide arrays stay in host memory. Uploads wait for the device:
// device_copy runs on the legacy default stream, which does not order against the context's
// non-blocking stream; downloads first wait for the context's stream.
class DeviceArrays {
 public:
  explicit DeviceArrays(const HostArrays<float>& host) : layout_(host.layout()) {
    for (const auto& [name, a] : layout_.arrays()) {
      if (!a.storage.empty()) continue;
      if (a.kind == Kind::Value) {
        ptrs_[name] = alloc(host.raw_values(name).size() * sizeof(float));
      } else if (a.kind == Kind::Index) {
        ptrs_[name] = alloc(host.raw_ids(name).size() * sizeof(i32));
      } else if (a.kind == Kind::Wide) {
        wides_[name].assign(host.wide(name).size(), kSentinel);
      } else {
        // int64/uint8 arrays belong to kernels without a CUDA twin (never run here).
        throw std::logic_error("no device copy of the integer array '" + name + "'");
      }
    }
    upload(host);
  }
  DeviceArrays(const DeviceArrays&) = delete;
  DeviceArrays& operator=(const DeviceArrays&) = delete;
  ~DeviceArrays() {
    for (auto& [name, p] : ptrs_) routemoe::device_free(Device::CUDA, p);
  }

  // Every array (guards included) set to the host's.
  void upload(const HostArrays<float>& host) {
    for (auto& [name, p] : ptrs_) {
      if (layout_.arrays().at(name).kind == Kind::Value) {
        const auto& v = host.raw_values(name);
        routemoe::device_copy(p, Device::CUDA, v.data(), Device::CPU, v.size() * sizeof(float));
      } else {
        const auto& v = host.raw_ids(name);
        routemoe::device_copy(p, Device::CUDA, v.data(), Device::CPU, v.size() * sizeof(i32));
      }
    }
    for (auto& [name, w] : wides_) {
      const auto v = host.wide(name);
      std::copy(v.begin(), v.end(), w.begin());
    }
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }

  Bind<float> bind() {
    Bind<float> b;
    for (const auto& [name, a] : layout_.arrays()) {
      const std::string& s = layout_.storage_of(name);
      b.set(name, a.kind == Kind::Wide ? static_cast<void*>(wides_.at(s).data()) : ptrs_.at(s));
    }
    return b;
  }

  // A host copy of everything, laid out like `like`.
  HostArrays<float> download(const gpu::Context& ctx, const HostArrays<float>& like) const {
    ctx.synchronize();
    HostArrays<float> out = like;
    for (const auto& [name, p] : ptrs_) {
      if (layout_.arrays().at(name).kind == Kind::Value) {
        auto& v = out.raw_values(name);
        routemoe::device_copy(v.data(), Device::CPU, p, Device::CUDA, v.size() * sizeof(float));
      } else {
        auto& v = out.raw_ids(name);
        routemoe::device_copy(v.data(), Device::CPU, p, Device::CUDA, v.size() * sizeof(i32));
      }
    }
    for (const auto& [name, w] : wides_) {
      const auto v = out.wide(name);
      std::copy(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(v.size()), v.begin());
    }
    return out;
  }

 private:
  static void* alloc(std::size_t bytes) { return routemoe::device_alloc(Device::CUDA, bytes); }

  Data layout_;
  std::map<std::string, void*> ptrs_;
  std::map<std::string, std::vector<double>> wides_;
};

// The outputs `expect` lists: CUDA against CPU with the table's `gpu` tolerance (equal values,
// NaN with NaN and equal infinities pass).
void expect_parity(const HostArrays<float>& gpu_out, const HostArrays<float>& cpu_out,
                   const Expect& expect, const std::string& what) {
  for (const auto& [name, o] : expect.outputs()) {
    const std::size_t n = o.want.size();
    std::vector<double> g(n), c(n), tol(n);
    if (o.rule == Rule::Wide) {
      const auto gv = gpu_out.wide(name), cv = cpu_out.wide(name);
      std::copy(gv.begin(), gv.end(), g.begin());
      std::copy(cv.begin(), cv.end(), c.begin());
    } else {
      const auto gv = gpu_out.values(name), cv = cpu_out.values(name);
      for (std::size_t i = 0; i < n; ++i) {
        g[i] = gv[i];
        c[i] = cv[i];
      }
    }
    for (std::size_t i = 0; i < n; ++i) tol[i] = o.want[i].gpu;
    EXPECT_TRUE(within(g, c, tol)) << what << ": output " << name << " (CUDA vs CPU)";
  }
}

class GpuParity : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() { ctx_ = std::make_unique<gpu::Context>(0); }
  static void TearDownTestSuite() { ctx_.reset(); }
  static const gpu::Context& ctx() { return *ctx_; }

  // One pass on both backends from the same arrays; returns the CPU's arrays after it.
  static void run_pass(const Case& c, const Pass& pass, HostArrays<float>& host, DeviceArrays& dev,
                       const std::string& what) {
    ASSERT_TRUE(static_cast<bool>(pass.cuda)) << what << ": no CUDA call";
    const HostArrays<float> before = host;
    Expect expect;
    if (!c.noop) pass.reference(host.snapshot(), expect);
    pass.cpu.get<float>()(host.bind());
    pass.cuda(ctx(), dev.bind());
    const HostArrays<float> got = dev.download(ctx(), host);
    expect_parity(got, host, expect, what);
    expect_untouched(got, before, expect, what + " (CUDA)");
  }

  static void run_case(const Case& c) {
    SCOPED_TRACE(c.kernel + " " + c.name);
    Gen gen(c.kernel + "/" + c.name);
    Data data;
    c.generate(gen, data);
    HostArrays<float> host(data);
    DeviceArrays dev(host);
    run_pass(c, c.forward, host, dev, "forward");
    if (!c.backward) return;
    dev.upload(host);  // the backward starts from the CPU forward's arrays on both sides
    run_pass(c, *c.backward, host, dev, "backward");
  }

 private:
  static std::unique_ptr<gpu::Context> ctx_;
};
std::unique_ptr<gpu::Context> GpuParity::ctx_;

TEST_P(GpuParity, Table) {
  int n = 0;
  for (const Case& c : cases()) {
    if (c.kernel != GetParam()) continue;
    run_case(c);
    ++n;
  }
  EXPECT_GT(n, 0);
}

INSTANTIATE_TEST_SUITE_P(Kernels, GpuParity,
                         ::testing::ValuesIn(kernels([](const Case& c) { return c.cuda_twin; })),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// The kernels of the table without a CUDA twin (cases.h: Case::cuda_twin): listed, reported as
// skipped (never passed). A case so marked must not have a CUDA call: whoever adds the twin
// flips the flag and the kernel moves to GpuParity.
class GpuNoTwin : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuNoTwin, Skipped) {
  for (const Case& c : cases()) {
    if (c.kernel != GetParam()) continue;
    EXPECT_FALSE(static_cast<bool>(c.forward.cuda))
        << c.name << ": a CUDA call on a case marked cuda_twin = false";
    if (c.backward) {
      EXPECT_FALSE(static_cast<bool>(c.backward->cuda))
          << c.name << ": a CUDA call on a case marked cuda_twin = false";
    }
  }
  GTEST_SKIP() << GetParam() << ": no CUDA twin";
}

INSTANTIATE_TEST_SUITE_P(Kernels, GpuNoTwin,
                         ::testing::ValuesIn(kernels([](const Case& c) { return !c.cuda_twin; })),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GpuNoTwin);

// ------------------------------------------------------------------------------------------------
// Outside the table

class GpuContract : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ctx_ = std::make_unique<gpu::Context>(0); }
  static void TearDownTestSuite() { ctx_.reset(); }
  static const gpu::Context& ctx() { return *ctx_; }

 private:
  static std::unique_ptr<gpu::Context> ctx_;
};
std::unique_ptr<gpu::Context> GpuContract::ctx_;

std::vector<std::uint32_t> bits_of(const std::vector<float>& v) {
  std::vector<std::uint32_t> b(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) b[i] = routemoe::float_bits(v[i]);
  return b;
}

TEST_F(GpuContract, PhiloxFillsBitIdentical) {
  using routemoe::Tensor;
  const std::int64_t n = 10007;
  struct Seed {
    std::uint64_t seed, stream, offset;
  };
  for (const Seed& cs : {Seed{1234, 7, 0}, Seed{0x9e3779b97f4a7c15ull, 3, 123456789012ull},
                         Seed{42, 0xffffffff00000001ull, (1ull << 32) - 5000}}) {
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

    // The raw CUDA entry point, on memory from device_alloc.
    float* d = static_cast<float*>(routemoe::device_alloc(Device::CUDA, n * sizeof(float)));
    gpu::fill_normal(d, n, cs.seed, cs.stream, 0.0f, 1.0f, cs.offset);
    std::vector<float> got(static_cast<std::size_t>(n)), ref(got.size());
    ctx().synchronize();
    routemoe::device_copy(got.data(), Device::CPU, d, Device::CUDA, n * sizeof(float));
    routemoe::device_free(Device::CUDA, d);
    for (std::int64_t i = 0; i < n; ++i)
      ref[static_cast<std::size_t>(i)] =
          0.0f + 1.0f * routemoe::philox_normal(cs.seed, cs.stream,
                                                cs.offset + static_cast<std::uint64_t>(i));
    EXPECT_EQ(bits_of(got), bits_of(ref)) << "cuda::fill_normal";
  }
}

// Empty batches: every kernel is a no-op with null pointers, nothing is launched.
TEST_F(GpuContract, EmptyBatchesTakeNullPointers) {
  const gpu::Context& c = ctx();
  EXPECT_NO_THROW({
    gpu::gemm(c, false, false, 0, 5, 3, 1.0f, nullptr, 3, nullptr, 5, 0.0f, nullptr, 5);
    gpu::gemm(c, false, true, 4, 0, 3, 1.0f, nullptr, 3, nullptr, 3, 0.0f, nullptr, 1);
    gpu::gemm_strided_batched(c, true, false, 4, 5, 3, 1.0f, nullptr, 4, 12, nullptr, 5, 15, 0.0f,
                              nullptr, 5, 20, 0);
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
    gpu::cross_entropy_forward(c, nullptr, nullptr, nullptr, nullptr, 0, 10);
    gpu::cross_entropy_backward(c, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 10);
    gpu::adamw_update(c, nullptr, nullptr, nullptr, nullptr, 0, gpu::AdamWHyper{});
    gpu::gather_rows_forward(c, nullptr, nullptr, nullptr, 0, 10, 4);  // embedding lookup
    gpu::gather_rows_backward(c, nullptr, nullptr, nullptr, 0, 10, 4);
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

TEST_F(GpuContract, ContextBasics) {
  EXPECT_GE(gpu::device_count(), 1);
  EXPECT_EQ(ctx().device(), 0);
  EXPECT_NE(ctx().stream(), nullptr);
  EXPECT_NE(ctx().cublas(), nullptr);
  EXPECT_NO_THROW(ctx().synchronize());
}

}  // namespace
}  // namespace routemoe::kerneltest

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
