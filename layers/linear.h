#pragma once
// Linear layer on tensors: shape/device validation, then the CPU kernel or its CUDA twin.

#include "framework/exec.h"
#include "framework/tensor.h"

namespace routemoe::layers {

// y[n, out] = x[n, in] @ w[out, in]^T + b[out]; b may be undefined (no bias).
void linear_forward(const Exec& exec, const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y);

// dx[n, in] = dy[n, out] @ w (overwritten; skipped when dx is null);
// dw[out, in] += dy^T @ x; db[out] += column sums of dy (skipped when db is null).
void linear_backward(const Exec& exec, const Tensor& dy, const Tensor& x, const Tensor& w,
                     Tensor* dx, Tensor& dw, Tensor* db);

}  // namespace routemoe::layers
