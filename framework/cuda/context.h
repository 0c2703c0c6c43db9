#pragma once
// A CUDA execution context: device, stream and cuBLAS handle. Plain C++ header (no CUDA
// headers) so that host code can hold one; only built when ROUTEMOE_HAVE_CUDA.

namespace routemoe::cuda {

class Context {
 public:
  // Selects `device`, creates a non-blocking stream and a cuBLAS handle bound to it.
  explicit Context(int device = 0);
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  // Releases the handle and stream; never throws (errors go to stderr).
  ~Context();

  int device() const noexcept { return device_; }
  void* stream() const noexcept { return stream_; }  // cudaStream_t
  void* cublas() const noexcept { return cublas_; }  // cublasHandle_t
  // Waits for all work queued on the stream; throws Error(Cuda) on an asynchronous failure.
  void synchronize() const;

 private:
  int device_;
  void* stream_ = nullptr;
  void* cublas_ = nullptr;
};

// Number of visible CUDA devices: 0 when there is no device or no driver at all (a machine
// without a GPU). Any other failure (a driver older than the runtime, a broken installation)
// throws Error(Cuda): GPU tests must fail on such a machine, not report themselves skipped.
int device_count();

}  // namespace routemoe::cuda
