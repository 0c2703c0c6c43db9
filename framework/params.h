#pragma once
// Named parameters of a model, with their gradients, in two contiguous buffers (values and
// gradients, same layout) so that optimiser updates, gradient all-reduces and checkpoints can
// work on whole buffers. Parameters are declared first, then allocated once.
//
// Expert parameters have the expert as their first dimension; a rank of an expert-parallel
// group holds experts [expert_begin, expert_begin + local experts) of the global tensor.

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "framework/exec.h"
#include "framework/tensor.h"

namespace routemoe {

enum class InitKind { Normal, Ones, Zeros, Orthogonal };

struct InitSpec {
  InitKind kind = InitKind::Zeros;
  float scale = 0.0f;  // std for Normal, gain for Orthogonal
};

struct Param {
  std::string name;
  Shape global_shape;             // full shape (expert dimension = all experts)
  Shape local_shape;              // shape held here
  bool expert = false;            // dim 0 is the expert dimension, sharded across EP ranks
  std::int64_t expert_begin = 0;  // first global expert held here (expert params)
  bool decay = true;              // AdamW weight decay applies
  InitSpec init;
  std::uint64_t stream = 0;  // Philox stream (declaration order)
  std::size_t offset = 0;    // in elements, into the flat buffers
  Tensor value;              // view into the value buffer
  Tensor grad;               // view into the gradient buffer
};

class ParamStore {
 public:
  ParamStore() = default;
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;

  // Declares a parameter; the reference stays valid for the store's lifetime (its tensors are
  // set by allocate()). Expert params pass the local expert range.
  Param& declare(std::string name, Shape global_shape, InitSpec init, bool decay,
                 bool expert = false, std::int64_t expert_begin = 0,
                 std::int64_t expert_count = -1);
  // Allocates the value and gradient buffers where `exec` runs and sets every Param's tensors.
  // Parameters live in host memory in this version (initialisation, checkpoints and the
  // collectives read them there): a CUDA Exec is refused.
  void allocate(const Exec& exec = Exec::cpu());
  // Fills every parameter from the Philox streams under `seed` (docs/model.md).
  void initialize(std::uint64_t seed);
  void zero_grads();

  // In declaration order.
  std::deque<Param>& params() { return params_; }
  const std::deque<Param>& params() const { return params_; }
  Param& at(const std::string& name);
  const Param& at(const std::string& name) const;
  const Param* find(const std::string& name) const;

  // The whole value / gradient buffers as 1-D tensors (padding between params stays zero).
  Tensor values_flat() const { return values_; }
  Tensor grads_flat() const { return grads_; }
  std::int64_t numel() const;  // parameters held here, without padding
  // Where the buffers live and the optimiser's work runs.
  const Exec& exec() const { return exec_; }

 private:
  std::deque<Param> params_;  // a deque: declaring never moves earlier parameters
  Tensor values_;
  Tensor grads_;
  Exec exec_;
  bool allocated_ = false;
};

// Rows of `m` [rows, cols] replaced by an orthogonal set scaled by `gain` (rows <= cols:
// orthonormal rows; else orthonormal columns), Gram-Schmidt in double.
void orthogonalize(float* m, std::int64_t rows, std::int64_t cols, float gain);

}  // namespace routemoe
