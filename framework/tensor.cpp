#include "framework/tensor.h"

#include <fmt/format.h>

#include "framework/device.h"
#include "framework/error.h"

namespace routemoe {

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t s : shape) {
    RM_CHECK_KIND(Shape, s >= 0,
                  fmt::format("negative dimension in shape {}", fmt::join(shape, ", ")));
    n *= s;
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::shared_ptr<Storage> Storage::allocate(std::size_t bytes, Device device) {
  void* p = device_alloc(device, bytes);
  return std::shared_ptr<Storage>(new Storage(p, bytes, device, true));
}

std::shared_ptr<Storage> Storage::borrow(void* ptr, std::size_t bytes, Device device) {
  return std::shared_ptr<Storage>(new Storage(ptr, bytes, device, false));
}

Storage::~Storage() {
  if (owned_) device_free(device_, ptr_);
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  const std::int64_t n = shape_numel(shape);
  auto storage = Storage::allocate(static_cast<std::size_t>(n) * dtype_size(dtype), device);
  return view_of(std::move(storage), 0, std::move(shape), dtype);
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::from_vector(Shape shape, const std::vector<float>& values) {
  Tensor t = empty(std::move(shape));
  RM_CHECK_KIND(Shape, static_cast<std::int64_t>(values.size()) == t.numel(),
                fmt::format("{} values for shape {}", values.size(), shape_str(t.shape())));
  device_copy(t.raw(), Device::CPU, values.data(), Device::CPU, t.nbytes());
  return t;
}

Tensor Tensor::view_of(std::shared_ptr<Storage> storage, std::size_t byte_offset, Shape shape,
                       DType dtype) {
  RM_CHECK(storage != nullptr, "view of a null storage");
  Tensor t;
  t.numel_ = shape_numel(shape);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = storage->device();
  t.offset_ = byte_offset;
  RM_CHECK_KIND(Shape, byte_offset + t.nbytes() <= storage->bytes(),
                fmt::format("view of {} bytes at offset {} exceeds storage of {} bytes", t.nbytes(),
                            byte_offset, storage->bytes()));
  t.storage_ = std::move(storage);
  return t;
}

std::int64_t Tensor::dim(int i) const {
  const int n = ndim();
  const int j = i < 0 ? i + n : i;
  RM_CHECK_KIND(Shape, j >= 0 && j < n, fmt::format("dimension {} of a {}-d tensor", i, n));
  return shape_[static_cast<std::size_t>(j)];
}

void* Tensor::raw() const noexcept {
  if (storage_ == nullptr || storage_->data() == nullptr) return nullptr;
  return static_cast<char*>(storage_->data()) + offset_;
}

void Tensor::check_dtype(DType expected) const {
  RM_CHECK_KIND(Shape, dtype_ == expected,
                fmt::format("tensor {} accessed as {}", str(), dtype_name(expected)));
}

Tensor Tensor::reshape(Shape shape) const {
  std::int64_t known = 1;
  int infer = -1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      RM_CHECK_KIND(Shape, infer < 0, "reshape with more than one -1");
      infer = static_cast<int>(i);
    } else {
      RM_CHECK_KIND(Shape, shape[i] >= 0, fmt::format("reshape to {}", shape_str(shape)));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    RM_CHECK_KIND(Shape, known > 0 && numel_ % known == 0,
                  fmt::format("cannot reshape {} to {}", str(), shape_str(shape)));
    shape[static_cast<std::size_t>(infer)] = numel_ / known;
  }
  RM_CHECK_KIND(Shape, shape_numel(shape) == numel_,
                fmt::format("cannot reshape {} to {}", str(), shape_str(shape)));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice_rows(std::int64_t begin, std::int64_t end) const {
  RM_CHECK_KIND(Shape, ndim() >= 1, "slice_rows of a 0-d tensor");
  RM_CHECK_KIND(Shape, 0 <= begin && begin <= end && end <= shape_[0],
                fmt::format("rows [{}, {}) of {}", begin, end, str()));
  const std::int64_t row = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  Tensor t = *this;
  t.shape_[0] = end - begin;
  t.numel_ = row * (end - begin);
  t.offset_ = offset_ + static_cast<std::size_t>(begin * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  RM_CHECK_KIND(Shape, device_ == Device::CPU,
                "dtype conversion of a device tensor: copy to CPU first");
  Tensor t = empty(shape_, dtype, Device::CPU);
  if (dtype == dtype_) {
    t.copy_from(*this);
    return t;
  }
  const auto n = static_cast<std::size_t>(numel_);
  if (dtype_ == DType::F32) {
    const float* src = data<float>();
    bf16* dst = t.data<bf16>();
    for (std::size_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
  } else {
    const bf16* src = data<bf16>();
    float* dst = t.data<float>();
    for (std::size_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
  }
  return t;
}

Tensor Tensor::clone() const {
  return to(device_);
}

void Tensor::copy_from(const Tensor& src) {
  RM_CHECK_KIND(Shape, src.shape_ == shape_ && src.dtype_ == dtype_,
                fmt::format("copy from {} into {}", src.str(), str()));
  device_copy(raw(), device_, src.raw(), src.device_, nbytes());
}

void Tensor::zero_() {
  device_zero(raw(), device_, nbytes());
}

std::vector<float> Tensor::to_vector() const {
  Tensor host = device_ == Device::CPU ? *this : to(Device::CPU);
  if (host.dtype_ == DType::BF16) host = host.to(DType::F32);
  const float* p = host.data<float>();
  return std::vector<float>(p, p + numel_);
}

std::string Tensor::str() const {
  return fmt::format("{}{}@{}", dtype_name(dtype_), shape_str(shape_), device_name(device_));
}

void expect_shape(const Tensor& t, const Shape& shape, const char* what) {
  RM_CHECK_KIND(Shape, t.defined() && t.shape() == shape,
                fmt::format("{} must have shape {}, got {}", what, shape_str(shape),
                            t.defined() ? t.str() : std::string("an undefined tensor")));
}

}  // namespace routemoe
