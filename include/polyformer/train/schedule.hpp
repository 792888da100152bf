#pragma once
/// \file Learning-rate schedules: linear warm-up from 0, then constant, or a linear or cosine decay to a minimum
/// reached at `decay_steps` and kept afterwards (llama2.c's train.py and nanoGPT's get_lr for the cosine).

#include <algorithm>
#include <cmath>
#include <numbers>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// The shape of the decay after warm-up.
enum class LearningRateDecay { constant, linear, cosine };

/// lr(step) for step 0, 1, …: lr·step/warmup_steps while step < warmup_steps; then, with ratio r =
/// (step − warmup_steps)/(decay_steps − warmup_steps) capped at 1, lr (constant), min_lr + (1 − r)·(lr − min_lr)
/// (linear) or min_lr + ½(1 + cos πr)·(lr − min_lr) (cosine).
struct LearningRateSchedule {
  double lr = 1e-3;
  double min_lr = 0.0;
  Index warmup_steps = 0;
  Index decay_steps = 0;  ///< the step the decay reaches min_lr (ignored by constant)
  LearningRateDecay decay = LearningRateDecay::constant;

  /// Throws config_error unless the settings are consistent.
  void validate() const {
    const char* func = "LearningRateSchedule";
    if (!(lr >= 0.0) || !(min_lr >= 0.0) || min_lr > lr)
      throw config_error(detail::cat(func, ": lr ", lr, ", min_lr ", min_lr, ", expected 0 <= min_lr <= lr"));
    if (warmup_steps < 0) throw config_error(detail::cat(func, ": warmup_steps is ", warmup_steps, ", expected >= 0"));
    if (decay != LearningRateDecay::constant && decay_steps <= warmup_steps)
      throw config_error(detail::cat(func, ": decay_steps is ", decay_steps, ", expected more than warmup_steps ",
                                     warmup_steps));
  }

  double at(Index step) const {
    if (step < warmup_steps) return lr * static_cast<double>(step) / static_cast<double>(warmup_steps);
    if (decay == LearningRateDecay::constant) return lr;
    const double r = std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps - warmup_steps));
    const double share = decay == LearningRateDecay::linear ? 1.0 - r : 0.5 * (1.0 + std::cos(std::numbers::pi * r));
    return min_lr + share * (lr - min_lr);
  }
};

}  // namespace polyformer
