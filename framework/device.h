#pragma once
// Raw device memory: allocation, copies and zeroing on the CPU or a CUDA device. Everything
// above this (Storage, Arena, Tensor) goes through these functions, so a build without CUDA
// fails here with a clear error instead of somewhere deep in a kernel.

#include <cstddef>

#include "framework/dtype.h"

namespace routemoe {

// True when this build has the CUDA backend and at least one device is visible.
bool cuda_available() noexcept;

// 256-byte aligned allocation of `bytes` (0 allowed: returns nullptr). Throws Error(Cuda) or
// std::bad_alloc on failure, Error(Check) for Device::CUDA in a build without CUDA.
void* device_alloc(Device device, std::size_t bytes);
// Frees memory from device_alloc; never throws (errors are reported on stderr).
void device_free(Device device, void* ptr) noexcept;
// Copies `bytes` between any two devices (synchronous).
void device_copy(void* dst, Device dst_device, const void* src, Device src_device,
                 std::size_t bytes);
// Sets `bytes` bytes to zero.
void device_zero(void* ptr, Device device, std::size_t bytes);

}  // namespace routemoe
