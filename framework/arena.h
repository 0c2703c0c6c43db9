#pragma once
// Arena: bump allocation for tensors with one lifetime (all parameters, all gradients, or the
// activations of one step). Allocation is a pointer bump; reset() releases everything at once.
// An arena that outgrows its blocks allocates another block and, at the next reset(), merges
// them into one block of the peak size so that steady-state steps allocate nothing.
// Tensors handed out borrow the arena's memory and are invalid after reset() or destruction.

#include <cstddef>
#include <string>
#include <vector>

#include "framework/tensor.h"

namespace routemoe {

struct ArenaStats {
  std::string name;
  Device device = Device::CPU;
  std::size_t capacity = 0;     // bytes reserved in all blocks
  std::size_t used = 0;         // bytes handed out since the last reset
  std::size_t peak = 0;         // largest `used` ever seen
  std::size_t allocations = 0;  // allocations since the last reset
  std::size_t blocks = 0;       // blocks currently held
};

class Arena {
 public:
  static constexpr std::size_t kAlignment = 256;

  // `initial_bytes` is reserved up front (0: the first allocation reserves what it needs).
  Arena(std::string name, Device device, std::size_t initial_bytes = 0);
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

  // An uninitialised tensor of `shape` carved from the arena.
  Tensor alloc(Shape shape, DType dtype = DType::F32);
  // As alloc, zero-filled.
  Tensor zeros(Shape shape, DType dtype = DType::F32);
  // Raw aligned bytes (0 allowed).
  void* alloc_bytes(std::size_t bytes);
  // Releases every allocation; merges blocks into one of the peak size when there were several.
  void reset();

  // Stack-like release within a step: rewind(mark()) releases everything allocated after the
  // mark (later allocations reuse that memory; pointers into it become invalid), so that scratch
  // of one stage does not add to the peak of the next. A mark is valid until the next reset().
  struct Mark {
    std::size_t blocks = 0;      // blocks held at the mark
    std::size_t block_used = 0;  // bytes used in the last of them
    std::size_t used = 0;        // used_ at the mark
  };
  Mark mark() const;
  void rewind(const Mark& m);

  ArenaStats stats() const;
  Device device() const noexcept { return device_; }

 private:
  struct Block {
    std::shared_ptr<Storage> storage;
    std::size_t used = 0;
  };
  std::string name_;
  Device device_;
  std::vector<Block> blocks_;
  std::size_t used_ = 0;
  std::size_t peak_ = 0;
  std::size_t allocations_ = 0;
};

// `n` uninitialised elements of T from `arena` (scratch for templated kernels and layers).
template <typename T>
T* alloc_array(Arena& arena, std::int64_t n) {
  return static_cast<T*>(arena.alloc_bytes(static_cast<std::size_t>(n) * sizeof(T)));
}
template <typename T>
T* alloc_zeroed(Arena& arena, std::int64_t n) {
  T* p = alloc_array<T>(arena, n);
  for (std::int64_t i = 0; i < n; ++i) p[i] = T(0);
  return p;
}

// A human-readable table of arena sizes (name, device, capacity, used, peak) in MiB.
std::string format_arena_report(const std::vector<ArenaStats>& stats);
// "1.50 MiB"-style formatting of a byte count.
std::string format_bytes(std::size_t bytes);

}  // namespace routemoe
