#pragma once
/// \file The tensors of a Hugging Face directory gathered under a model's own parameter names, for
/// load_state_dict: each checked against the shape config.json implies, F32 read in place from the mapped
/// files, other dtypes converted (or rearranged: q/k rows, transposed Conv1D weights) into copies held here.
/// What every HF loader does, written once.

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/io/hf_directory.hpp"
#include "polyformer/io/state_dict.hpp"

namespace polyformer::io {

/// Borrowed tensors of one directory under the model's names (valid while both objects live).
class HfTensorMap {
 public:
  /// Rewrites a tensor's floats (`in`, as stored) into the model's layout (`out`, sized as the model's shape).
  using Rearrange = std::function<void(const std::vector<float>& in, std::vector<float>& out)>;

  /// `func` names the loader in messages (e.g. "load_hf_bert").
  HfTensorMap(const HfDirectory& dir, std::string func) : dir_(&dir), func_(std::move(func)) {}

  bool has(const std::string& hf) const { return dir_->contains(hf); }

  /// The directory's tensor `hf` as the model's `ours`, of `shape` both as stored and in the model.
  void take(const std::string& hf, const std::string& ours, std::vector<std::int64_t> shape) {
    check(hf, shape);
    const float* data = dir_->f32_in_place(hf);
    if (data == nullptr) {
      held_.push_back(dir_->tensor(hf).data);
      data = held_.back().data();  // stays put when `held_` grows: a moved vector keeps its buffer
    }
    refs_[ours] = TensorRef{std::move(shape), data};
    used_.insert(hf);
  }

  /// The same for a tensor stored as `stored` and rearranged by `rearrange` into the model's `shape`.
  void take(const std::string& hf, const std::string& ours, const std::vector<std::int64_t>& stored,
            std::vector<std::int64_t> shape, const Rearrange& rearrange) {
    check(hf, stored);
    std::vector<float> out(static_cast<std::size_t>(numel(shape)));
    rearrange(dir_->tensor(hf).data, out);
    held_.push_back(std::move(out));
    refs_[ours] = TensorRef{std::move(shape), held_.back().data()};
    used_.insert(hf);
  }

  /// The model's tensor `ours` reads what `existing` (already taken) reads: a tied weight.
  void alias(const std::string& ours, const std::string& existing) { refs_[ours] = refs_.at(existing); }

  /// Marks `hf` as accounted for without loading it (a buffer or a tied copy the model does not keep).
  void ignore(const std::string& hf) { used_.insert(hf); }

  /// Throws format_error naming the file and the tensor for the first tensor of the directory neither taken nor
  /// ignored: `model` names what the directory was read as (e.g. "BertModel with this config.json").
  void refuse_others(const std::string& model) const {
    for (const std::string& name : dir_->names())
      if (used_.count(name) == 0)
        throw format_error(polyformer::detail::cat(func_, ": ", dir_->file_of(name).path(), " holds '", name,
                                                   "', which ", model, " does not have"));
  }

  const TensorRefs& refs() const noexcept { return refs_; }

  /// (rows, cols) stored → (cols, rows): a Conv1D weight [in, out] as a linear layer's (out, in).
  static Rearrange transpose(std::int64_t rows, std::int64_t cols) {
    return [rows, cols](const std::vector<float>& in, std::vector<float>& out) {
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c)
          out[static_cast<std::size_t>(c * rows + r)] = in[static_cast<std::size_t>(r * cols + c)];
    };
  }

 private:
  static std::int64_t numel(const std::vector<std::int64_t>& shape) {
    std::int64_t n = 1;
    for (std::int64_t s : shape) n *= s;
    return n;
  }
  void check(const std::string& hf, const std::vector<std::int64_t>& shape) const {
    using polyformer::detail::cat;
    if (!dir_->contains(hf)) throw format_error(cat(func_, ": ", dir_->path(), " has no tensor '", hf, "'"));
    const std::vector<std::int64_t>& stored = dir_->info(hf).shape;
    if (stored != shape)
      throw format_error(cat(func_, ": ", dir_->file_of(hf).path(), ": '", hf, "' has shape ",
                             detail::shape_string(stored), ", expected ", detail::shape_string(shape),
                             " from config.json"));
  }

  const HfDirectory* dir_;
  std::string func_;
  std::vector<std::vector<float>> held_;
  TensorRefs refs_;
  std::set<std::string> used_;
};

}  // namespace polyformer::io
