#pragma once
// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11). A value is a pure
// function of (seed, stream, index): initialisation is identical on CPU and GPU, in any order
// and for any number of ranks. Parameter tensors use their parameter id as the stream and the
// element's index in the *global* tensor as the index, so a rank that holds experts
// [e0, e1) of a tensor draws exactly the values a single process would for those experts.

#include <cmath>
#include <cstdint>

#include "framework/dtype.h"  // RM_HD

namespace routemoe {

struct PhiloxBlock {
  std::uint32_t v[4];
};

// One Philox4x32-10 block for counter (c0..c3) under key (k0, k1).
RM_HD inline PhiloxBlock philox4x32_10(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2,
                                       std::uint32_t c3, std::uint32_t k0, std::uint32_t k1) {
  constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(kMul0) * c0;
    const std::uint64_t p1 = static_cast<std::uint64_t>(kMul1) * c2;
    const auto hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const auto hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    const std::uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return PhiloxBlock{{c0, c1, c2, c3}};
}

// The block for element `index` of `stream` under `seed`.
RM_HD inline PhiloxBlock philox_block(std::uint64_t seed, std::uint64_t stream,
                                      std::uint64_t index) {
  return philox4x32_10(static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32),
                       static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32),
                       static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
}

// Uniform in [0, 1) with 24 random bits (exactly representable in fp32).
RM_HD inline float u32_to_unit(std::uint32_t x) {
  return static_cast<float>(x >> 8) * (1.0f / 16777216.0f);
}

RM_HD inline float philox_uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  return u32_to_unit(philox_block(seed, stream, index).v[0]);
}

// Standard normal by Box-Muller on the first two words of the element's block. Computed in
// double so that CPU and GPU agree to the last fp32 bit after rounding (libm vs CUDA math
// differ by at most an ulp in double, far below fp32 resolution).
RM_HD inline float philox_normal(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  const PhiloxBlock b = philox_block(seed, stream, index);
  // u1 in (0, 1]: avoids log(0).
  const double u1 = (static_cast<double>(b.v[0] >> 8) + 1.0) * (1.0 / 16777216.0);
  const double u2 = static_cast<double>(b.v[1] >> 8) * (1.0 / 16777216.0);
  const double r = sqrt(-2.0 * log(u1));
  return static_cast<float>(r * cos(6.283185307179586 * u2));
}

// c + a * b with two roundings (the product rounded to fp32, then the sum), on the host and on
// the device alike. Compilers may otherwise contract it into one fused multiply-add (nvcc does
// by default, and so does g++ on aarch64 or with -march=native), and CPU and GPU parameter
// initialisation would then differ in the last bit.
RM_HD inline float mul_then_add(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(c, __fmul_rn(a, b));
#else
  volatile float product = a * b;  // a volatile store rounds and cannot be fused
  return c + product;
#endif
}

// Sequential draws from one stream (data sampling, dropout masks): a small value type, not a
// global; copy it to fork, store its counter to checkpoint it.
class Philox {
 public:
  Philox(std::uint64_t seed, std::uint64_t stream) : seed_(seed), stream_(stream) {}
  std::uint32_t next_u32() { return philox_block(seed_, stream_, counter_++).v[0]; }
  float next_uniform() { return u32_to_unit(next_u32()); }
  // Uniform integer in [0, n) (n > 0), by 64-bit multiply-shift on two words.
  std::uint64_t next_below(std::uint64_t n);
  std::uint64_t counter() const { return counter_; }
  void set_counter(std::uint64_t c) { counter_ = c; }
  std::uint64_t seed() const { return seed_; }
  std::uint64_t stream() const { return stream_; }

 private:
  std::uint64_t seed_;
  std::uint64_t stream_;
  std::uint64_t counter_ = 0;
};

class Tensor;

// Fills an fp32 tensor (CPU or CUDA) with element i = f(seed, stream, index_offset + i):
// uniform in [lo, hi) or normal(mean, std).
void fill_uniform(Tensor& t, std::uint64_t seed, std::uint64_t stream, float lo, float hi,
                  std::uint64_t index_offset = 0);
void fill_normal(Tensor& t, std::uint64_t seed, std::uint64_t stream, float mean, float std,
                 std::uint64_t index_offset = 0);

}  // namespace routemoe
