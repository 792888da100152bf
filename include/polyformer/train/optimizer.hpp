#pragma once
/// \file Optimizers over the named-parameter tree: AdamW (Loshchilov & Hutter 2019, decoupled weight decay, bias
/// correction) and SGD with momentum (Nesterov optional), each with the arithmetic of PyTorch 1.13's
/// single-tensor torch.optim.AdamW and torch.optim.SGD in float; and clipping by the global gradient norm, as
/// torch.nn.utils.clip_grad_norm_.
///
/// A step walks a GradientList (what gets gradients, frozen tensors skipped) and updates the ParameterList entry of
/// the same name (read, update, write: a packed weight is repacked). Weight decay applies where the optimizer's
/// `decays(parameter)` says; by default to tensors of two or more dimensions (matrices and embeddings), as
/// llama2.c's train.py and nanoGPT group them. The optimizer's state (step counts, moments) is kept by name.

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/parameters.hpp"

namespace polyformer {

/// Whether a parameter is weight-decayed: two or more dimensions (linear weights, embeddings), not gains or biases.
inline bool decay_matrices(const Parameter& p) { return p.shape.size() >= 2; }

/// The global L2 norm of every trainable gradient of `grads` (frozen ones count nothing), in double.
inline double gradient_norm(const GradientList& grads) {
  double sum = 0.0;
  std::vector<float> buffer;
  for (const Gradient& g : grads.items()) {
    if (!g.trainable()) continue;
    buffer.resize(static_cast<std::size_t>(g.numel()));
    g.read(buffer.data());
    for (float x : buffer) sum += static_cast<double>(x) * static_cast<double>(x);
  }
  return std::sqrt(sum);
}

/// torch.nn.utils.clip_grad_norm_'s coefficient: min(1, max_norm / (norm + 1e-6)) for the gradients' global norm
/// (returned in `norm`). A step given it as grad_scale sees the gradients clipped. max_norm must be > 0.
inline float clip_coefficient(const GradientList& grads, double max_norm, double* norm = nullptr) {
  if (!(max_norm > 0.0))
    throw config_error(detail::cat("clip_coefficient: max_norm is ", max_norm, ", expected > 0"));
  const double total = gradient_norm(grads);
  if (norm != nullptr) *norm = total;
  const float coefficient = static_cast<float>(max_norm / (total + 1e-6));
  return coefficient < 1.0f ? coefficient : 1.0f;
}

namespace detail {
/// The buffers a step reads a tensor and its gradient into: an optimizer's own, kept between steps so that a step
/// allocates nothing (a fresh multi-megabyte buffer per step costs its page faults every time).
struct StepBuffers {
  std::vector<float> values, gradient;
};

/// Calls update(parameter, values, gradient) for every trainable gradient of `grads`, with the parameter of the same
/// name read into `values` and its gradient (times grad_scale) into `gradient`, then writes `values` back.
template <typename Update>
void for_each_trainable(const char* func, ParameterList& params, const GradientList& grads, float grad_scale,
                        StepBuffers& buffers, Update&& update) {
  std::vector<float>& values = buffers.values;
  std::vector<float>& gradient = buffers.gradient;
  for (const Gradient& g : grads.items()) {
    if (!g.trainable()) continue;
    const Parameter* p = params.find(g.name);
    if (p == nullptr) throw config_error(cat(func, ": no parameter is named '", g.name, "' (the gradient's name)"));
    if (p->shape != g.shape)
      throw shape_error(cat(func, ": parameter '", g.name, "' has ", p->shape.size(), " dimensions of ", p->numel(),
                            " values, its gradient ", g.shape.size(), " of ", g.numel(), ", expected the same shape"));
    const std::size_t n = static_cast<std::size_t>(g.numel());
    values.resize(n);
    gradient.resize(n);
    p->read(values.data());
    g.read(gradient.data());
    if (grad_scale != 1.0f)
      for (float& x : gradient) x *= grad_scale;
    update(*p, values, gradient);
    p->write(values.data());
  }
}
}  // namespace detail

/// AdamW's hyper-parameters (torch.optim.AdamW's defaults but weight decay, which the training loop sets).
struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

/// AdamW: per tensor, step t += 1; p ← p·(1 − lr·λ) where decayed; m ← β1·m + (1 − β1)·g; v ← β2·v + (1 − β2)·g²;
/// p ← p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε). Moments start at zero when a tensor first gets a gradient.
class AdamW {
 public:
  struct State {
    std::int64_t step = 0;
    std::vector<float> m, v;  // (numel) each
  };

  explicit AdamW(AdamWOptions options = {}, std::function<bool(const Parameter&)> decays = decay_matrices)
      : opt_(options), decays_(std::move(decays)) {
    const char* func = "AdamW";
    if (!(opt_.beta1 >= 0.0 && opt_.beta1 < 1.0) || !(opt_.beta2 >= 0.0 && opt_.beta2 < 1.0))
      throw config_error(detail::cat(func, ": betas (", opt_.beta1, ", ", opt_.beta2, "), expected both in [0, 1)"));
    if (!(opt_.eps >= 0.0) || !(opt_.weight_decay >= 0.0))
      throw config_error(detail::cat(func, ": eps ", opt_.eps, ", weight decay ", opt_.weight_decay,
                                     ", expected both >= 0"));
    if (!decays_) throw config_error(detail::cat(func, ": no weight-decay rule"));
  }

  const AdamWOptions& options() const noexcept { return opt_; }

  /// One step at learning rate lr over every trainable gradient of `grads` (each multiplied by grad_scale first:
  /// clip_coefficient's), updating the parameters of the same names in `params`.
  void step(ParameterList& params, const GradientList& grads, double lr, float grad_scale = 1.0f) {
    if (!(lr >= 0.0)) throw config_error(detail::cat("AdamW::step: lr is ", lr, ", expected >= 0"));
    detail::for_each_trainable("AdamW::step", params, grads, grad_scale, buffers_,
                               [&](const Parameter& p, std::vector<float>& x, const std::vector<float>& g) {
      State& s = state_[p.name];
      if (s.m.size() != x.size()) {
        s = State{};
        s.m.assign(x.size(), 0.0f);
        s.v.assign(x.size(), 0.0f);
      }
      ++s.step;
      const double t = static_cast<double>(s.step);
      const float decay = static_cast<float>(1.0 - lr * (decays_(p) ? opt_.weight_decay : 0.0));
      const float b1 = static_cast<float>(opt_.beta1), b2 = static_cast<float>(opt_.beta2);
      const float a1 = static_cast<float>(1.0 - opt_.beta1), a2 = static_cast<float>(1.0 - opt_.beta2);
      const double correction1 = 1.0 - std::pow(opt_.beta1, t), correction2 = 1.0 - std::pow(opt_.beta2, t);
      const float neg_step = static_cast<float>(-(lr / correction1));
      const float root2 = static_cast<float>(std::sqrt(correction2)), eps = static_cast<float>(opt_.eps);
      for (std::size_t i = 0; i < x.size(); ++i) {
        x[i] *= decay;
        s.m[i] = s.m[i] * b1 + a1 * g[i];
        s.v[i] = s.v[i] * b2 + a2 * g[i] * g[i];
        const float denom = std::sqrt(s.v[i]) / root2 + eps;
        x[i] = x[i] + neg_step * s.m[i] / denom;  // in torch's order of operations
      }
    });
  }

  /// The state of the tensor of this name, or nullptr before its first step.
  const State* state(const std::string& name) const {
    const auto it = state_.find(name);
    return it == state_.end() ? nullptr : &it->second;
  }
  /// Every tensor's state by name (a checkpoint saves it).
  const std::unordered_map<std::string, State>& states() const noexcept { return state_; }
  /// Replaces the state of the tensor of this name (a checkpoint restores it); m and v must have one size.
  void set_state(const std::string& name, State s) {
    if (s.m.size() != s.v.size() || s.step < 0)
      throw config_error(detail::cat("AdamW::set_state: '", name, "' has step ", s.step, ", ", s.m.size(),
                                     " first and ", s.v.size(), " second moments, expected step >= 0 and equal sizes"));
    state_[name] = std::move(s);
  }

 private:
  AdamWOptions opt_;
  std::function<bool(const Parameter&)> decays_;
  std::unordered_map<std::string, State> state_;
  detail::StepBuffers buffers_;  // scratch of step(), kept for the next
};

/// SGD's hyper-parameters (torch.optim.SGD's).
struct SGDOptions {
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

/// SGD: d = g + λ·p where decayed; with momentum, b ← d on a tensor's first step, else b ← μ·b + (1 − dampening)·d,
/// and d = d + μ·b (Nesterov) or d = b; p ← p − lr·d.
class SGD {
 public:
  explicit SGD(SGDOptions options = {}, std::function<bool(const Parameter&)> decays = decay_matrices)
      : opt_(options), decays_(std::move(decays)) {
    const char* func = "SGD";
    if (!(opt_.momentum >= 0.0) || !(opt_.weight_decay >= 0.0))
      throw config_error(detail::cat(func, ": momentum ", opt_.momentum, ", weight decay ", opt_.weight_decay,
                                     ", expected both >= 0"));
    if (opt_.nesterov && (opt_.momentum <= 0.0 || opt_.dampening != 0.0))
      throw config_error(detail::cat(func, ": Nesterov momentum with momentum ", opt_.momentum, " and dampening ",
                                     opt_.dampening, ", expected momentum > 0 and dampening 0"));
    if (!decays_) throw config_error(detail::cat(func, ": no weight-decay rule"));
  }

  const SGDOptions& options() const noexcept { return opt_; }

  /// One step at learning rate lr, as AdamW::step.
  void step(ParameterList& params, const GradientList& grads, double lr, float grad_scale = 1.0f) {
    if (!(lr >= 0.0)) throw config_error(detail::cat("SGD::step: lr is ", lr, ", expected >= 0"));
    detail::for_each_trainable("SGD::step", params, grads, grad_scale, buffers_,
                               [&](const Parameter& p, std::vector<float>& x, const std::vector<float>& g) {
      const float wd = static_cast<float>(decays_(p) ? opt_.weight_decay : 0.0);
      const float mu = static_cast<float>(opt_.momentum), keep = static_cast<float>(1.0 - opt_.dampening);
      const float rate = static_cast<float>(lr);
      std::vector<float>* buffer = nullptr;
      bool first = false;
      if (opt_.momentum != 0.0) {
        buffer = &momentum_[p.name];
        first = buffer->size() != x.size();
        if (first) buffer->assign(x.size(), 0.0f);
      }
      for (std::size_t i = 0; i < x.size(); ++i) {
        float d = wd != 0.0f ? g[i] + wd * x[i] : g[i];
        if (buffer != nullptr) {
          float& b = (*buffer)[i];
          b = first ? d : b * mu + keep * d;
          d = opt_.nesterov ? d + mu * b : b;
        }
        x[i] = x[i] - rate * d;
      }
    });
  }

  /// The momentum buffer of the tensor of this name, or nullptr before its first step (or without momentum).
  const std::vector<float>* momentum_buffer(const std::string& name) const {
    const auto it = momentum_.find(name);
    return it == momentum_.end() ? nullptr : &it->second;
  }
  /// Every tensor's momentum buffer by name (a checkpoint saves them).
  const std::unordered_map<std::string, std::vector<float>>& momentum_buffers() const noexcept { return momentum_; }
  /// Replaces the momentum buffer of the tensor of this name (a checkpoint restores it).
  void set_momentum_buffer(const std::string& name, std::vector<float> buffer) { momentum_[name] = std::move(buffer); }

 private:
  SGDOptions opt_;
  std::function<bool(const Parameter&)> decays_;
  std::unordered_map<std::string, std::vector<float>> momentum_;
  detail::StepBuffers buffers_;  // scratch of step(), kept for the next
};

}  // namespace polyformer
