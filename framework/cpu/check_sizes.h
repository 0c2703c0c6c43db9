#pragma once
// Size validation shared by the CPU kernels (internal header).

#include <fmt/format.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "framework/error.h"

namespace routemoe::cpu::detail {

// Throws Error(Shape) naming the kernel and the argument when a size is negative.
inline void check_sizes(const char* kernel,
                        std::initializer_list<std::pair<const char*, std::int64_t>> sizes) {
  for (const auto& [name, value] : sizes) {
    RM_CHECK_KIND(Shape, value >= 0, fmt::format("{}: {} = {} is negative", kernel, name, value));
  }
}

}  // namespace routemoe::cpu::detail
