#pragma once
/// \file The training loop of a causal language model (next-token cross-entropy), as llama2.c's train.py and
/// nanoGPT run it: per optimizer step, `accumulation` micro-batches of `batch` windows each go forward and
/// backward (each micro-batch's loss divided by `accumulation`, so the gradients are those of the mean loss), the
/// gradients are optionally reduced across processes (data parallelism), clipped by their global norm, and the
/// optimizer steps at the schedule's learning rate. Any model with Llama's training interface fits: forward_train
/// (tokens, batch, logits, saved, ctx), backward(dlogits, g, saved, ctx), make_gradients, gradients, parameters.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <span>
#include <variant>
#include <vector>

#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/parameters.hpp"
#include "polyformer/layers/cross_entropy.hpp"
#include "polyformer/train/checkpoint.hpp"
#include "polyformer/train/data.hpp"
#include "polyformer/train/optimizer.hpp"
#include "polyformer/train/schedule.hpp"

namespace polyformer {

/// How a CausalLMTrainer steps.
struct TrainerOptions {
  Index batch = 8;          ///< windows per micro-batch
  Index accumulation = 1;   ///< micro-batches per optimizer step
  double clip = 1.0;        ///< maximum global gradient norm; 0: no clipping
  LearningRateSchedule schedule{};
  /// Data parallelism: this process is `rank` of `ranks`, and reads its share of each micro-batch (batch / ranks
  /// windows; batch a multiple of ranks). The gradient reduction (set_gradient_reduction) averages the shares.
  Index rank = 0, ranks = 1;

  void validate() const {
    const char* func = "TrainerOptions";
    if (batch < 1 || accumulation < 1)
      throw config_error(detail::cat(func, ": batch ", batch, ", accumulation ", accumulation, ", expected both >= 1"));
    if (ranks < 1 || rank < 0 || rank >= ranks || batch % ranks != 0)
      throw config_error(detail::cat(func, ": rank ", rank, " of ", ranks, " with batch ", batch,
                                     ", expected 0 <= rank < ranks and batch a multiple of ranks"));
    if (!(clip >= 0.0) || !std::isfinite(clip))
      throw config_error(detail::cat(func, ": clip is ", clip, ", expected >= 0 (0: off)"));
    schedule.validate();
  }
};

/// What one optimizer step did.
struct StepReport {
  double loss = 0.0;           ///< the mean loss over the step's micro-batches (before the update)
  double gradient_norm = 0.0;  ///< the global norm before clipping (0 when clipping is off)
  double lr = 0.0;             ///< the learning rate applied
};

/// Trains `model` in place. The model must outlive the trainer and keep its structure (adapters added, parameters
/// frozen) from the trainer's construction on: the gradient buffers are made then. Freeze or unfreeze through
/// gradients() before the first step.
template <typename Model>
class CausalLMTrainer {
 public:
  CausalLMTrainer(Model& model, TrainingOptimizer optimizer, TrainerOptions options)
      : model_(model), optimizer_(std::move(optimizer)), options_(options) {
    options_.validate();
    params_ = parameters_of(model_);
    grads_ = model_.make_gradients();
    list_ = gradients_of(model_, grads_);
  }
  CausalLMTrainer(const CausalLMTrainer&) = delete;
  CausalLMTrainer& operator=(const CausalLMTrainer&) = delete;

  /// The gradient buffers by name: freeze, unfreeze, read.
  const GradientList& gradients() const noexcept { return list_; }
  ParameterList& parameters() noexcept { return params_; }
  TrainingOptimizer& optimizer() noexcept { return optimizer_; }
  const TrainerOptions& options() const noexcept { return options_; }
  /// Steps taken, and windows of data consumed (where the next step reads).
  std::int64_t step() const noexcept { return step_; }
  std::int64_t position() const noexcept { return position_; }
  /// Sets where the run stands (a resume does this with the checkpoint's values).
  void set_progress(std::int64_t step, std::int64_t position) {
    if (step < 0 || position < 0)
      throw config_error(detail::cat("CausalLMTrainer::set_progress: step ", step, ", position ", position,
                                     ", expected both >= 0"));
    step_ = step;
    position_ = position;
  }

  /// Called with the gradients and the step's loss after every backward of a step and before clipping: a
  /// data-parallel run averages both across processes there (train/data_parallel.hpp).
  void set_gradient_reduction(std::function<void(const GradientList&, double& loss)> reduce) {
    reduce_ = std::move(reduce);
  }

  /// The loss of the windows at data positions first … first + batch − 1 with every gradient added into the
  /// buffers, the loss's gradient scaled by `scale`.
  double accumulate(TokenWindows& data, Index first, Index batch, float scale, const Context& ctx) {
    data.batch(first, batch, inputs_, targets_);
    const Index rows = static_cast<Index>(inputs_.size());
    ensure_shape(logits_, rows, model_.config().vocab_size);
    model_.forward_train(inputs_, batch, view(logits_), saved_, ctx);
    const double loss = cross_entropy(cview(logits_), targets_, view(logits_), CrossEntropyOptions{}, ctx);
    if (scale != 1.0f) logits_ *= scale;
    model_.backward(cview(logits_), grads_, saved_, ctx);
    return loss;
  }

  /// One optimizer step on the next options().accumulation × options().batch windows of `data` (of them, with
  /// several ranks, this rank's share).
  StepReport train_step(TokenWindows& data, const Context& ctx) {
    StepReport report;
    list_.zero();
    const float scale = 1.0f / static_cast<float>(options_.accumulation);
    const Index share = options_.batch / options_.ranks;
    for (Index k = 0; k < options_.accumulation; ++k) {
      report.loss += accumulate(data, position_ + options_.rank * share, share, scale, ctx);
      position_ += options_.batch;
    }
    report.loss /= static_cast<double>(options_.accumulation);
    if (reduce_) reduce_(list_, report.loss);
    float coefficient = 1.0f;
    if (options_.clip > 0.0) coefficient = clip_coefficient(list_, options_.clip, &report.gradient_norm);
    report.lr = options_.schedule.at(step_);
    std::visit([&](auto& opt) { opt.step(params_, list_, report.lr, coefficient); }, optimizer_);
    ++step_;
    return report;
  }

  /// The mean next-token loss over `windows` windows of `data` from position 0, batch at a time (no gradients).
  double evaluate(TokenWindows& data, Index windows, const Context& ctx) {
    windows = std::min(windows, data.count());
    double sum = 0.0;
    Index done = 0;
    while (done < windows) {
      const Index b = std::min(options_.batch, windows - done);
      data.batch(done, b, inputs_, targets_);
      ensure_shape(logits_, static_cast<Index>(inputs_.size()), model_.config().vocab_size);
      model_.forward_train(inputs_, b, view(logits_), eval_saved_, ctx);
      sum += cross_entropy(cview(logits_), targets_, MatrixView(nullptr, 0, 0, Eigen::OuterStride<>(1)),
                           CrossEntropyOptions{}, ctx) *
             static_cast<double>(b);
      done += b;
    }
    return windows > 0 ? sum / static_cast<double>(windows) : 0.0;
  }

  /// Saves the run (parameters, optimizer, step, position, seed, settings) into dir.
  void save(const std::string& dir, std::uint64_t seed, const std::map<std::string, std::string>& settings) const {
    save_training_state(dir, params_, optimizer_, TrainingProgress{step_, position_, seed, settings});
  }
  /// Restores a run saved by save(); returns its progress (seed, settings) for the caller to compare.
  TrainingProgress resume(const std::string& dir) {
    TrainingProgress p = load_training_state(dir, params_, optimizer_);
    set_progress(p.step, p.position);
    return p;
  }

 private:
  Model& model_;
  TrainingOptimizer optimizer_;
  TrainerOptions options_;
  ParameterList params_;
  typename Model::Gradients grads_;
  GradientList list_;
  typename Model::Saved saved_, eval_saved_;
  Matrix logits_;  // (batch·seq, vocab), then its gradient in place
  std::vector<int> inputs_, targets_;
  std::int64_t step_ = 0, position_ = 0;
  std::function<void(const GradientList&, double&)> reduce_;
};

}  // namespace polyformer
