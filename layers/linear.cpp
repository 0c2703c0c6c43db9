#include "layers/linear.h"

#include <fmt/format.h>

#include "framework/cpu/kernels.h"
#include "framework/error.h"

#if ROUTEMOE_HAVE_CUDA
#include "framework/cuda/kernels.h"
#endif

namespace routemoe::layers {

namespace {
void expect_on(const Exec& exec, const Tensor& t, const char* what) {
  RM_CHECK_KIND(
      Shape, t.device() == exec.device && t.dtype() == DType::F32,
      fmt::format("{} is {}, expected f32 on {}", what, t.str(), device_name(exec.device)));
}
#if !ROUTEMOE_HAVE_CUDA
[[noreturn]] void no_cuda() {
  RM_FAIL(Check, "CUDA execution requested in a build without CUDA");
}
#endif
}  // namespace

void linear_forward(const Exec& exec, const Tensor& x, const Tensor& w, const Tensor& b,
                    Tensor& y) {
  RM_CHECK_KIND(Shape, x.ndim() == 2 && w.ndim() == 2,
                fmt::format("linear: x {} w {}", x.str(), w.str()));
  const std::int64_t n = x.dim(0), in = x.dim(1), out = w.dim(0);
  expect_shape(w, {out, in}, "linear weight");
  expect_shape(y, {n, out}, "linear output");
  if (b.defined()) expect_shape(b, {out}, "linear bias");
  for (const Tensor* t : {&x, &w, static_cast<const Tensor*>(&y)})
    expect_on(exec, *t, "linear operand");
  const float* bias = b.defined() ? b.data<float>() : nullptr;
  if (exec.device == Device::CPU) {
    cpu::linear_forward(x.data<float>(), w.data<float>(), bias, y.data<float>(), n, in, out);
    return;
  }
#if ROUTEMOE_HAVE_CUDA
  cuda::linear_forward(*exec.cuda, x.data<float>(), w.data<float>(), bias, y.data<float>(), n, in,
                       out);
#else
  no_cuda();
#endif
}

void linear_backward(const Exec& exec, const Tensor& dy, const Tensor& x, const Tensor& w,
                     Tensor* dx, Tensor& dw, Tensor* db) {
  RM_CHECK_KIND(Shape, x.ndim() == 2 && w.ndim() == 2,
                fmt::format("linear: x {} w {}", x.str(), w.str()));
  const std::int64_t n = x.dim(0), in = x.dim(1), out = w.dim(0);
  expect_shape(dy, {n, out}, "linear output gradient");
  expect_shape(dw, {out, in}, "linear weight gradient");
  if (dx != nullptr) expect_shape(*dx, {n, in}, "linear input gradient");
  if (db != nullptr) expect_shape(*db, {out}, "linear bias gradient");
  for (const Tensor* t : {&dy, &x, &w, static_cast<const Tensor*>(&dw)}) {
    expect_on(exec, *t, "linear operand");
  }
  if (dx != nullptr) expect_on(exec, *dx, "linear input gradient");
  if (db != nullptr) expect_on(exec, *db, "linear bias gradient");
  float* dxp = dx != nullptr ? dx->data<float>() : nullptr;
  float* dbp = db != nullptr ? db->data<float>() : nullptr;
  if (exec.device == Device::CPU) {
    cpu::linear_backward(dy.data<float>(), x.data<float>(), w.data<float>(), dxp, dw.data<float>(),
                         dbp, n, in, out);
    return;
  }
#if ROUTEMOE_HAVE_CUDA
  cuda::linear_backward(*exec.cuda, dy.data<float>(), x.data<float>(), w.data<float>(), dxp,
                        dw.data<float>(), dbp, n, in, out);
#else
  no_cuda();
#endif
}

}  // namespace routemoe::layers
