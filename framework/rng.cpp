#include "framework/rng.h"

#include "framework/error.h"
#include "framework/tensor.h"

#if ROUTEMOE_HAVE_CUDA
#include "framework/cuda/kernels.h"
#endif

namespace routemoe {

std::uint64_t Philox::next_below(std::uint64_t n) {
  RM_CHECK(n > 0, "next_below(0)");
  const PhiloxBlock b = philox_block(seed_, stream_, counter_++);
  const std::uint64_t x = (static_cast<std::uint64_t>(b.v[0]) << 32) | b.v[1];
  return static_cast<std::uint64_t>((static_cast<unsigned __int128>(x) * n) >> 64);
}

void fill_uniform(Tensor& t, std::uint64_t seed, std::uint64_t stream, float lo, float hi,
                  std::uint64_t index_offset) {
  if (t.device() == Device::CUDA) {
#if ROUTEMOE_HAVE_CUDA
    cuda::fill_uniform(t.data<float>(), t.numel(), seed, stream, lo, hi, index_offset);
    return;
#endif
  }
  float* p = t.data<float>();
  const std::int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) {
    p[i] = mul_then_add(
        hi - lo, philox_uniform(seed, stream, index_offset + static_cast<std::uint64_t>(i)), lo);
  }
}

void fill_normal(Tensor& t, std::uint64_t seed, std::uint64_t stream, float mean, float std,
                 std::uint64_t index_offset) {
  if (t.device() == Device::CUDA) {
#if ROUTEMOE_HAVE_CUDA
    cuda::fill_normal(t.data<float>(), t.numel(), seed, stream, mean, std, index_offset);
    return;
#endif
  }
  float* p = t.data<float>();
  const std::int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) {
    p[i] = mul_then_add(
        std, philox_normal(seed, stream, index_offset + static_cast<std::uint64_t>(i)), mean);
  }
}

}  // namespace routemoe
