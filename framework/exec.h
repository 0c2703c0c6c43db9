#pragma once
// Where an operation runs: the CPU, or a CUDA device through a cuda::Context (stream + cuBLAS
// handle). Tensor-level operations take an Exec, check that their tensors live on its device,
// and call the CPU kernel or its CUDA twin.

#include "framework/dtype.h"

namespace routemoe {

namespace cuda {
class Context;
}

struct Exec {
  Device device = Device::CPU;
  const cuda::Context* cuda = nullptr;  // required when device == Device::CUDA

  static Exec cpu() { return Exec{}; }
};

}  // namespace routemoe
