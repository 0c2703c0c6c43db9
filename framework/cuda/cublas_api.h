#pragma once
// cuBLAS, loaded when the first CUDA context is created instead of at program start. Linking
// libcublas/libcublasLt costs every process about half a second of dynamic relocation, also the
// ones that never touch a GPU (every CLI command, every test process of a CPU run). Internal
// header of the CUDA backend (built only with ROUTEMOE_HAVE_CUDA).

#include <cublas_v2.h>

namespace routemoe::cuda::blas {

// The cuBLAS entry points the backend uses, with their exact signatures.
struct Api {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  decltype(&cublasSgemmStridedBatched) sgemm_strided_batched = nullptr;
};

// The loaded library (dlopen of libcublas.so.<major of the headers this was built with>, once
// per process, thread-safe). Throws Error(Cublas) naming the library and the loader's message
// when it or a symbol is missing.
const Api& api();

}  // namespace routemoe::cuda::blas
