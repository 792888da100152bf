#pragma once
/// \file The named-parameter tree: every model, block and policy lists its tensors by name (a prefix per
/// level, "layers.3.self_attn.out_proj.weight"), each with its shape and a way to copy its values out and
/// in. The loader and the exporter (io/state_dict.hpp) walk this one list.

#include <algorithm>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// One named tensor. Values go in and out as row-major floats in `shape`, whatever the storage: a linear
/// weight kept packed or quantized is unpacked on read and packed again on write. A parameter stored in bf16
/// also takes bf16 values as they are (write_bf16), so a BF16 checkpoint is never widened to float on the way.
struct Parameter {
  std::string name;
  std::vector<Index> shape;                 ///< as PyTorch lists it: (out, in) for a linear weight, (d) for a gain
  std::function<void(float*)> read;         ///< copies numel() floats out
  std::function<void(const float*)> write;  ///< copies numel() floats in
  /// Optional: copies numel() little-endian bf16 values in (2 bytes each, any alignment).
  std::function<void(const std::byte*)> write_bf16 = {};

  Index numel() const noexcept {
    Index n = 1;
    for (Index e : shape) n *= e;
    return n;
  }
};

/// A model's parameters by name, in the order the model lists them. Built on demand (model.parameters()); the
/// entries refer to the model, which must outlive the list and keep its structure meanwhile.
class ParameterList {
 public:
  /// Adds p; throws config_error for a name already listed.
  void add(Parameter p) {
    if (!index_.emplace(p.name, items_.size()).second)
      throw config_error(detail::cat("ParameterList::add: '", p.name, "' is listed twice"));
    items_.push_back(std::move(p));
  }
  /// A matrix stored as it is named: (rows, cols).
  void add_matrix(std::string name, Matrix& m) {
    add({std::move(name), {m.rows(), m.cols()}, [&m](float* out) { std::copy_n(m.data(), m.size(), out); },
         [&m](const float* in) { std::copy_n(in, m.size(), m.data()); }});
  }
  /// A vector stored as it is named: (n).
  void add_vector(std::string name, Vector& v) {
    add({std::move(name), {v.size()}, [&v](float* out) { std::copy_n(v.data(), v.size(), out); },
         [&v](const float* in) { std::copy_n(in, v.size(), v.data()); }});
  }

  const std::vector<Parameter>& items() const noexcept { return items_; }
  std::size_t size() const noexcept { return items_.size(); }
  /// The parameter of this name, or nullptr.
  const Parameter* find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &items_[it->second];
  }
  /// Every value, as the total number of floats.
  Index numel() const noexcept {
    Index n = 0;
    for (const auto& p : items_) n += p.numel();
    return n;
  }

 private:
  std::vector<Parameter> items_;
  std::unordered_map<std::string, std::size_t> index_;
};

/// A module with named parameters: m.parameters(list, prefix) appends its tensors, names prefixed.
template <typename M>
concept HasParameters = requires(M& m, ParameterList& list, const std::string& prefix) { m.parameters(list, prefix); };

/// All of a model's parameters, named from the root.
template <HasParameters M>
ParameterList parameters_of(M& model) {
  ParameterList list;
  model.parameters(list, "");
  return list;
}

}  // namespace polyformer
