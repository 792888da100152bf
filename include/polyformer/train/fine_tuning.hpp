#pragma once
/// \file What trains in a fine-tuning run, chosen by name over a model's gradients: only the biases (BitFit, Ben
/// Zaken et al. 2022), only the LoRA factors (Hu et al. 2021), only the bottleneck adapters (Houlsby et al. 2019), or
/// any names a predicate picks. Everything else is frozen: its buffer goes, backward computes nothing for it and
/// the optimizer leaves it alone. Call before the first step.

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"

namespace polyformer {

/// Makes exactly the tensors whose names `pick` accepts trainable; returns how many. Throws config_error naming
/// `what` when none is picked (a model without such tensors), leaving the list as it was.
inline std::size_t train_only(const GradientList& grads, const std::function<bool(std::string_view)>& pick,
                              const char* what = "train_only") {
  std::size_t picked = 0;
  for (const Gradient& g : grads.items()) picked += pick(g.name) ? 1 : 0;
  if (picked == 0)
    throw config_error(detail::cat(what, ": none of the model's ", grads.size(), " tensors qualifies"));
  for (const Gradient& g : grads.items()) g.set_trainable(pick(g.name));
  return picked;
}

/// BitFit: only biases ("….bias", PyTorch's fused "in_proj_bias") train.
inline std::size_t train_only_biases(const GradientList& grads) {
  return train_only(grads, [](std::string_view n) { return n.ends_with("bias"); },
                    "train_only_biases (BitFit needs a model with biases)");
}

/// LoRA: only the adapters' factors ("….lora_A.<adapter>.weight", "….lora_B.<adapter>.weight") train.
inline std::size_t train_only_lora(const GradientList& grads) {
  return train_only(grads, [](std::string_view n) { return n.find(".lora_") != std::string_view::npos || n.starts_with("lora_"); },
                    "train_only_lora (add LoRA adapters first)");
}

/// Bottleneck adapters: only the adapters' tensors ("….adapter.down.weight" and the like) train.
inline std::size_t train_only_adapters(const GradientList& grads) {
  return train_only(grads, [](std::string_view n) { return n.find("adapter.") != std::string_view::npos; },
                    "train_only_adapters (add bottleneck adapters first)");
}

}  // namespace polyformer
