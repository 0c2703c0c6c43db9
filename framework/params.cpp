#include "framework/params.h"

#include <fmt/format.h>

#include <cmath>
#include <vector>

#include "framework/error.h"
#include "framework/rng.h"

namespace routemoe {

namespace {
constexpr std::size_t kAlignElems = 64;  // 256 bytes
std::size_t align_elems(std::size_t n) {
  return (n + kAlignElems - 1) / kAlignElems * kAlignElems;
}
}  // namespace

Param& ParamStore::declare(std::string name, Shape global_shape, InitSpec init, bool decay,
                           bool expert, std::int64_t expert_begin, std::int64_t expert_count) {
  RM_CHECK(!allocated_, fmt::format("parameter {} declared after allocation", name));
  RM_CHECK(find(name) == nullptr, fmt::format("parameter {} declared twice", name));
  Param p;
  p.name = std::move(name);
  p.global_shape = global_shape;
  p.local_shape = global_shape;
  p.expert = expert;
  if (expert) {
    RM_CHECK(!global_shape.empty(), "expert parameter without an expert dimension");
    if (expert_count < 0) expert_count = global_shape[0] - expert_begin;
    RM_CHECK(
        expert_begin >= 0 && expert_begin + expert_count <= global_shape[0],
        fmt::format("experts [{}, {}) of {}", expert_begin, expert_begin + expert_count, p.name));
    p.expert_begin = expert_begin;
    p.local_shape[0] = expert_count;
  }
  p.decay = decay;
  p.init = init;
  p.stream = params_.size();
  params_.push_back(std::move(p));
  return params_.back();
}

void ParamStore::allocate(const Exec& exec) {
  RM_CHECK(!allocated_, "ParamStore::allocate called twice");
  RM_CHECK(exec.device == Device::CPU, "parameters on a CUDA device are not supported yet");
  exec_ = exec;
  std::size_t total = 0;
  for (Param& p : params_) {
    p.offset = total;
    total += align_elems(static_cast<std::size_t>(shape_numel(p.local_shape)));
  }
  values_ = Tensor::zeros({static_cast<std::int64_t>(total)});
  grads_ = Tensor::zeros({static_cast<std::int64_t>(total)});
  for (Param& p : params_) {
    const std::int64_t n = shape_numel(p.local_shape);
    const auto off = static_cast<std::int64_t>(p.offset);
    p.value = values_.slice_rows(off, off + n).reshape(p.local_shape);
    p.grad = grads_.slice_rows(off, off + n).reshape(p.local_shape);
  }
  allocated_ = true;
}

void ParamStore::initialize(std::uint64_t seed) {
  RM_CHECK(allocated_, "ParamStore::initialize before allocate");
  for (Param& p : params_) {
    const std::int64_t row = p.local_shape.empty() || p.local_shape[0] == 0
                                 ? 0
                                 : shape_numel(p.local_shape) / p.local_shape[0];
    const auto index_offset = static_cast<std::uint64_t>(p.expert ? p.expert_begin * row : 0);
    switch (p.init.kind) {
      case InitKind::Zeros:
        p.value.zero_();
        break;
      case InitKind::Ones: {
        float* v = p.value.data<float>();
        for (std::int64_t i = 0; i < p.value.numel(); ++i) v[i] = 1.0f;
        break;
      }
      case InitKind::Normal:
        fill_normal(p.value, seed, p.stream, 0.0f, p.init.scale, index_offset);
        break;
      case InitKind::Orthogonal: {
        RM_CHECK(!p.expert && p.value.ndim() == 2, fmt::format("orthogonal init of {}", p.name));
        fill_normal(p.value, seed, p.stream, 0.0f, 1.0f);
        orthogonalize(p.value.data<float>(), p.value.dim(0), p.value.dim(1), p.init.scale);
        break;
      }
    }
  }
}

void ParamStore::zero_grads() {
  grads_.zero_();
}

const Param* ParamStore::find(const std::string& name) const {
  for (const Param& p : params_) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

const Param& ParamStore::at(const std::string& name) const {
  const Param* p = find(name);
  RM_CHECK(p != nullptr, fmt::format("no parameter named {}", name));
  return *p;
}

Param& ParamStore::at(const std::string& name) {
  return const_cast<Param&>(static_cast<const ParamStore*>(this)->at(name));
}

std::int64_t ParamStore::numel() const {
  std::int64_t n = 0;
  for (const Param& p : params_) n += shape_numel(p.local_shape);
  return n;
}

void orthogonalize(float* m, std::int64_t rows, std::int64_t cols, float gain) {
  // Vectors to orthonormalise: rows when rows <= cols, else columns.
  const bool by_rows = rows <= cols;
  const std::int64_t count = by_rows ? rows : cols, len = by_rows ? cols : rows;
  auto at = [&](std::int64_t v, std::int64_t i) -> float& {
    return by_rows ? m[v * cols + i] : m[i * cols + v];
  };
  std::vector<double> q(static_cast<std::size_t>(count * len));
  for (std::int64_t v = 0; v < count; ++v) {
    double* qv = &q[static_cast<std::size_t>(v * len)];
    for (std::int64_t i = 0; i < len; ++i) qv[i] = at(v, i);
    for (int pass = 0; pass < 2; ++pass) {  // re-orthogonalise once for accuracy
      for (std::int64_t u = 0; u < v; ++u) {
        const double* qu = &q[static_cast<std::size_t>(u * len)];
        double dot = 0;
        for (std::int64_t i = 0; i < len; ++i) dot += qu[i] * qv[i];
        for (std::int64_t i = 0; i < len; ++i) qv[i] -= dot * qu[i];
      }
    }
    double norm = 0;
    for (std::int64_t i = 0; i < len; ++i) norm += qv[i] * qv[i];
    norm = std::sqrt(norm);
    RM_CHECK(norm > 1e-12, "orthogonal init: degenerate random matrix");
    for (std::int64_t i = 0; i < len; ++i) qv[i] /= norm;
  }
  for (std::int64_t v = 0; v < count; ++v) {
    for (std::int64_t i = 0; i < len; ++i)
      at(v, i) = static_cast<float>(gain * q[static_cast<std::size_t>(v * len + i)]);
  }
}

}  // namespace routemoe
