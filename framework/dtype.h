#pragma once
// Element types and devices of tensors, and the bf16 <-> fp32 conversions shared by CPU and
// CUDA code (round to nearest even, NaN kept quiet).

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#if defined(__CUDACC__)
#define RM_HD __host__ __device__
#else
#define RM_HD
#endif

namespace routemoe {

enum class DType : std::uint8_t { F32, BF16 };
enum class Device : std::uint8_t { CPU, CUDA };

constexpr std::size_t dtype_size(DType t) {
  return t == DType::F32 ? 4 : 2;
}
constexpr std::string_view dtype_name(DType t) {
  return t == DType::F32 ? "f32" : "bf16";
}
constexpr std::string_view device_name(Device d) {
  return d == Device::CPU ? "cpu" : "cuda";
}

// bf16 stored as the upper 16 bits of an IEEE fp32 value.
struct bf16 {
  std::uint16_t bits;
};

RM_HD inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

RM_HD inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

RM_HD inline bf16 float_to_bf16(float f) {
  std::uint32_t u = float_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
    return bf16{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};  // quiet NaN
  }
  const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return bf16{static_cast<std::uint16_t>((u + rounding) >> 16)};
}

RM_HD inline float bf16_to_float(bf16 h) {
  return bits_float(static_cast<std::uint32_t>(h.bits) << 16);
}

}  // namespace routemoe
