#pragma once
// Tensor: a dense, contiguous, row-major array of fp32 or bf16 elements on the CPU or a CUDA
// device. Storage is shared between views (reshape, row slices); `clone` copies. Tensors either
// own their storage (Tensor::empty) or borrow it from an Arena (valid until the arena resets).

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "framework/dtype.h"

namespace routemoe {

using Shape = std::vector<std::int64_t>;

std::int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3]"

// A block of device memory, owned (freed on destruction) or borrowed.
class Storage {
 public:
  static std::shared_ptr<Storage> allocate(std::size_t bytes, Device device);
  static std::shared_ptr<Storage> borrow(void* ptr, std::size_t bytes, Device device);

  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();

  void* data() const noexcept { return ptr_; }
  std::size_t bytes() const noexcept { return bytes_; }
  Device device() const noexcept { return device_; }

 private:
  Storage(void* ptr, std::size_t bytes, Device device, bool owned)
      : ptr_(ptr), bytes_(bytes), device_(device), owned_(owned) {}
  void* ptr_;
  std::size_t bytes_;
  Device device_;
  bool owned_;
};

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::F32;
}
template <>
constexpr DType dtype_of<bf16>() {
  return DType::BF16;
}

class Tensor {
 public:
  Tensor() = default;  // undefined tensor (defined() == false)

  // Uninitialised / zero-filled tensors with their own storage.
  static Tensor empty(Shape shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor zeros(Shape shape, DType dtype = DType::F32, Device device = Device::CPU);
  // A CPU fp32 tensor holding a copy of `values` (numel must match).
  static Tensor from_vector(Shape shape, const std::vector<float>& values);
  // A view of `storage` starting `byte_offset` bytes in (must fit in the storage).
  static Tensor view_of(std::shared_ptr<Storage> storage, std::size_t byte_offset, Shape shape,
                        DType dtype);

  bool defined() const noexcept { return storage_ != nullptr; }
  const Shape& shape() const noexcept { return shape_; }
  int ndim() const noexcept { return static_cast<int>(shape_.size()); }
  // Size of dimension i; negative i counts from the end. Throws Error(Shape) when out of range.
  std::int64_t dim(int i) const;
  std::int64_t numel() const noexcept { return numel_; }
  std::size_t nbytes() const noexcept {
    return static_cast<std::size_t>(numel_) * dtype_size(dtype_);
  }
  DType dtype() const noexcept { return dtype_; }
  Device device() const noexcept { return device_; }

  void* raw() const noexcept;
  // Typed pointer; throws Error(Shape) when T does not match the dtype.
  template <typename T>
  T* data() const {
    check_dtype(dtype_of<T>());
    return static_cast<T*>(raw());
  }

  // Same storage, new shape with the same numel; one dimension may be -1 (inferred).
  Tensor reshape(Shape shape) const;
  // Rows [begin, end) along dimension 0, sharing storage.
  Tensor slice_rows(std::int64_t begin, std::int64_t end) const;
  // Copies to another device or converts to another dtype (always a new tensor).
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor clone() const;
  // Copies `src` (same shape and dtype, any device) into this tensor's memory.
  void copy_from(const Tensor& src);
  void zero_();
  // Element values as fp32 on the host (converting bf16, copying from the device).
  std::vector<float> to_vector() const;

  std::string str() const;  // e.g. "f32[2, 3]@cpu"

 private:
  void check_dtype(DType expected) const;

  std::shared_ptr<Storage> storage_;
  std::size_t offset_ = 0;  // bytes into storage_
  Shape shape_;
  std::int64_t numel_ = 0;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

// Throws Error(Shape) naming `what` unless `t` has exactly `shape` (and is defined).
void expect_shape(const Tensor& t, const Shape& shape, const char* what);

}  // namespace routemoe
