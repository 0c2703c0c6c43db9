#include "framework/optim.h"

#include <fmt/format.h>

#include <cmath>
#include <numbers>

#include "framework/error.h"
#include "framework/ops.h"
#include "framework/params.h"

namespace routemoe {

void OptimConfig::validate() const {
  auto finite = [](const char* key, double v) {
    RM_CHECK_KIND(Config, std::isfinite(v),
                  fmt::format("optim.{} must be a finite number, got {}", key, v));
  };
  finite("lr", lr);
  finite("lr_min", lr_min);
  finite("beta1", beta1);
  finite("beta2", beta2);
  finite("eps", eps);
  finite("weight_decay", weight_decay);
  finite("grad_clip", grad_clip);
  RM_CHECK_KIND(Config, lr > 0, fmt::format("optim.lr must be positive, got {}", lr));
  RM_CHECK_KIND(Config, lr_min >= 0 && lr_min <= lr,
                fmt::format("optim.lr_min must lie in [0, optim.lr = {}], got {}", lr, lr_min));
  RM_CHECK_KIND(Config, warmup >= 0, fmt::format("optim.warmup must be >= 0, got {}", warmup));
  RM_CHECK_KIND(Config, beta1 >= 0 && beta1 < 1,
                fmt::format("optim.beta1 must lie in [0, 1), got {}", beta1));
  RM_CHECK_KIND(Config, beta2 >= 0 && beta2 < 1,
                fmt::format("optim.beta2 must lie in [0, 1), got {}", beta2));
  RM_CHECK_KIND(Config, eps > 0, fmt::format("optim.eps must be positive, got {}", eps));
  RM_CHECK_KIND(Config, weight_decay >= 0,
                fmt::format("optim.weight_decay must be >= 0, got {}", weight_decay));
}

double lr_at(const OptimConfig& cfg, std::int64_t step, std::int64_t total_steps) {
  if (step < cfg.warmup)
    return cfg.lr * static_cast<double>(step + 1) / static_cast<double>(cfg.warmup);
  const double q = static_cast<double>(step - cfg.warmup) /
                   static_cast<double>(std::max<std::int64_t>(1, total_steps - cfg.warmup));
  return cfg.lr_min +
         0.5 * (cfg.lr - cfg.lr_min) * (1.0 + std::cos(std::numbers::pi * std::min(q, 1.0)));
}

double local_grad_sq_norm(const ParamStore& params) {
  const Tensor g = params.grads_flat();  // padding is zero and adds nothing
  return ops::sum_squares<float>(params.exec(), g.data<float>(), g.numel());
}

double clip_grads(ParamStore& params, double clip, double norm) {
  if (clip <= 0) return 1.0;
  const double factor = std::min(1.0, clip / (norm + 1e-6));
  if (factor < 1.0) {
    Tensor g = params.grads_flat();
    ops::scale<float>(params.exec(), g.data<float>(), static_cast<float>(factor), g.numel());
  }
  return factor;
}

AdamW::AdamW(ParamStore& params, const OptimConfig& cfg)
    : params_(params),
      cfg_(cfg),
      m_(Tensor::zeros(params.values_flat().shape(), DType::F32, params.exec().device)),
      v_(Tensor::zeros(params.values_flat().shape(), DType::F32, params.exec().device)) {
  cfg_.validate();
}

void AdamW::step(double lr) {
  ++t_;
  for (Param& p : params_.params()) {
    ops::AdamWHyper h;
    h.lr = lr;
    h.beta1 = cfg_.beta1;
    h.beta2 = cfg_.beta2;
    h.eps = cfg_.eps;
    h.weight_decay = p.decay ? cfg_.weight_decay : 0.0;
    h.step = t_;
    const auto off = static_cast<std::int64_t>(p.offset);
    ops::adamw_update<float>(params_.exec(), p.value.data<float>(), p.grad.data<float>(),
                             m_.data<float>() + off, v_.data<float>() + off, p.value.numel(), h);
  }
}

}  // namespace routemoe
