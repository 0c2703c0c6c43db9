#include "framework/cuda/cublas_api.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <string>

#include "framework/error.h"

namespace routemoe::cuda::blas {

namespace {

template <typename Fn>
void resolve(void* lib, const std::string& soname, const char* symbol, Fn& out) {
  void* p = dlsym(lib, symbol);
  if (p == nullptr) {
    raise_error(ErrorKind::Cublas, fmt::format("dlsym({})", symbol),
                fmt::format("{} has no {}: a cuBLAS older than the headers this routemoe was built "
                            "with",
                            soname, symbol),
                __FILE__, __LINE__);
  }
  out = reinterpret_cast<Fn>(p);
}

Api load() {
  const std::string soname = fmt::format("libcublas.so.{}", CUBLAS_VER_MAJOR);
  void* lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    raise_error(ErrorKind::Cublas, fmt::format("dlopen({})", soname),
                fmt::format("cannot load cuBLAS ({}); install the CUDA Toolkit's cuBLAS {} or put "
                            "it on LD_LIBRARY_PATH",
                            why != nullptr ? why : "unknown error", CUBLAS_VER_MAJOR),
                __FILE__, __LINE__);
  }
  // The handle stays open for the life of the process (cuBLAS keeps global state).
  Api a;
  resolve(lib, soname, "cublasCreate_v2", a.create);
  resolve(lib, soname, "cublasDestroy_v2", a.destroy);
  resolve(lib, soname, "cublasSetStream_v2", a.set_stream);
  resolve(lib, soname, "cublasSetMathMode", a.set_math_mode);
  resolve(lib, soname, "cublasSgemm_v2", a.sgemm);
  resolve(lib, soname, "cublasSgemmStridedBatched", a.sgemm_strided_batched);
  return a;
}

}  // namespace

const Api& api() {
  static const Api loaded = load();  // once per process (thread-safe initialisation)
  return loaded;
}

}  // namespace routemoe::cuda::blas
