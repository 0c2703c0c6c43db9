#include "framework/arena.h"

#include <fmt/format.h>

#include <algorithm>

#include "framework/error.h"

namespace routemoe {

namespace {
std::size_t align_up(std::size_t n) {
  return (n + Arena::kAlignment - 1) / Arena::kAlignment * Arena::kAlignment;
}
}  // namespace

Arena::Arena(std::string name, Device device, std::size_t initial_bytes)
    : name_(std::move(name)), device_(device) {
  if (initial_bytes > 0)
    blocks_.push_back({Storage::allocate(align_up(initial_bytes), device_), 0});
}

Arena::~Arena() = default;

void* Arena::alloc_bytes(std::size_t bytes) {
  const std::size_t need = align_up(bytes);
  ++allocations_;
  if (need == 0) return nullptr;
  Block* target = nullptr;
  if (!blocks_.empty() && blocks_.back().storage->bytes() - blocks_.back().used >= need) {
    target = &blocks_.back();
  } else {
    // Grow geometrically so that a first step with unknown peak needs few blocks.
    const std::size_t last = blocks_.empty() ? 0 : blocks_.back().storage->bytes();
    blocks_.push_back({Storage::allocate(std::max(need, last), device_), 0});
    target = &blocks_.back();
  }
  void* p = static_cast<char*>(target->storage->data()) + target->used;
  target->used += need;
  used_ += need;
  peak_ = std::max(peak_, used_);
  return p;
}

Tensor Arena::alloc(Shape shape, DType dtype) {
  const std::size_t bytes = static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype);
  void* p = alloc_bytes(bytes);
  return Tensor::view_of(Storage::borrow(p, bytes, device_), 0, std::move(shape), dtype);
}

Tensor Arena::zeros(Shape shape, DType dtype) {
  Tensor t = alloc(std::move(shape), dtype);
  t.zero_();
  return t;
}

void Arena::reset() {
  if (blocks_.size() > 1) {
    blocks_.clear();
    blocks_.push_back({Storage::allocate(peak_, device_), 0});
  }
  for (Block& b : blocks_) b.used = 0;
  used_ = 0;
  allocations_ = 0;
}

Arena::Mark Arena::mark() const {
  return {blocks_.size(), blocks_.empty() ? 0 : blocks_.back().used, used_};
}

void Arena::rewind(const Mark& m) {
  RM_CHECK(m.blocks <= blocks_.size() && m.used <= used_ &&
               (m.blocks == 0 || m.block_used <= blocks_[m.blocks - 1].used),
           "Arena::rewind: a mark taken after this point or before a reset");
  // Blocks added since the mark stay (empty) and take the next allocations; reset() merges.
  for (std::size_t i = m.blocks; i < blocks_.size(); ++i) blocks_[i].used = 0;
  if (m.blocks > 0) blocks_[m.blocks - 1].used = m.block_used;
  used_ = m.used;
}

ArenaStats Arena::stats() const {
  ArenaStats s;
  s.name = name_;
  s.device = device_;
  for (const Block& b : blocks_) s.capacity += b.storage->bytes();
  s.used = used_;
  s.peak = peak_;
  s.allocations = allocations_;
  s.blocks = blocks_.size();
  return s;
}

std::string format_bytes(std::size_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024.0 * 1024.0)
    return fmt::format("{:.2f} GiB", b / (1024.0 * 1024.0 * 1024.0));
  if (b >= 1024.0 * 1024.0) return fmt::format("{:.2f} MiB", b / (1024.0 * 1024.0));
  if (b >= 1024.0) return fmt::format("{:.2f} KiB", b / 1024.0);
  return fmt::format("{} B", bytes);
}

std::string format_arena_report(const std::vector<ArenaStats>& stats) {
  std::string out = fmt::format("{:<14} {:<6} {:>12} {:>12} {:>12} {:>7}\n", "arena", "device",
                                "capacity", "used", "peak", "blocks");
  std::size_t total = 0;
  for (const ArenaStats& s : stats) {
    out +=
        fmt::format("{:<14} {:<6} {:>12} {:>12} {:>12} {:>7}\n", s.name, device_name(s.device),
                    format_bytes(s.capacity), format_bytes(s.used), format_bytes(s.peak), s.blocks);
    total += s.capacity;
  }
  out += fmt::format("{:<14} {:<6} {:>12}\n", "total", "", format_bytes(total));
  return out;
}

}  // namespace routemoe
