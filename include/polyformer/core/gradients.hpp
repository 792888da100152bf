#pragma once
/// \file Gradients, kept apart from the weights: every module that trains has a `Gradients` struct of buffers that
/// mirror its trainable tensors (one per worker, like a Workspace), made by make_gradients() and listed by name
/// with gradients(list, prefix, g) under the names its parameters() uses. A buffer left empty is frozen: backward
/// computes nothing for it. Backward passes add into the buffers (as torch's .grad accumulates), so zero them
/// between steps with GradientList::zero().
///
/// What a training forward saves for its backward lives in the module's `Saved` struct (one per call in flight),
/// never in the weights; SavedForward marks whether it holds a forward that backward may use.

#include <algorithm>
#include <concepts>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// One named gradient buffer: its shape as the parameter of that name has it, and ways to read it, clear it and
/// freeze or unfreeze it (a frozen tensor has no buffer and gets no gradient).
struct Gradient {
  std::string name;
  std::vector<Index> shape;
  std::function<void(float*)> read;        ///< copies numel() floats out (zeros while frozen)
  std::function<bool()> trainable;         ///< whether it has a buffer
  std::function<void(bool)> set_trainable;  ///< true: a zeroed buffer; false: none (frozen)
  std::function<void()> zero;              ///< zeroes the buffer (nothing while frozen)
  std::function<void(const float*)> write;  ///< copies numel() floats in (nothing while frozen): a reduction's result

  Index numel() const noexcept {
    Index n = 1;
    for (Index e : shape) n *= e;
    return n;
  }
};

/// A model's gradients by name, in the order its parameters are listed. Entries refer to the Gradients structs
/// they came from, which must outlive the list.
class GradientList {
 public:
  /// Adds g; throws config_error for a name already listed.
  void add(Gradient g) {
    if (!index_.emplace(g.name, items_.size()).second)
      throw config_error(detail::cat("GradientList::add: '", g.name, "' is listed twice"));
    items_.push_back(std::move(g));
  }
  /// A matrix buffer of (rows, cols), named as the parameter it belongs to.
  void add_matrix(std::string name, Matrix& g, Index rows, Index cols) {
    add({std::move(name), {rows, cols}, [&g, rows, cols](float* out) { copy_out(g.data(), g.size(), rows * cols, out); },
         [&g] { return g.size() != 0; },
         [&g, rows, cols](bool on) {
           if (on) g.setZero(rows, cols);
           else g.resize(0, 0);
         },
         [&g] { g.setZero(); }, [&g](const float* in) { std::copy_n(in, g.size(), g.data()); }});
  }
  /// A vector buffer of (n).
  void add_vector(std::string name, Vector& g, Index n) {
    add({std::move(name), {n}, [&g, n](float* out) { copy_out(g.data(), g.size(), n, out); },
         [&g] { return g.size() != 0; },
         [&g, n](bool on) {
           if (on) g.setZero(n);
           else g.resize(0);
         },
         [&g] { g.setZero(); }, [&g](const float* in) { std::copy_n(in, g.size(), g.data()); }});
  }

  const std::vector<Gradient>& items() const noexcept { return items_; }
  std::size_t size() const noexcept { return items_.size(); }
  /// The gradient of this name, or nullptr.
  const Gradient* find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &items_[it->second];
  }
  /// The gradient of this name; throws config_error naming `func` when there is none.
  const Gradient& at(const std::string& name, const char* func = "GradientList::at") const {
    const Gradient* g = find(name);
    if (g == nullptr) throw config_error(detail::cat(func, ": no trainable tensor is named '", name, "'"));
    return *g;
  }

  /// Zeroes every buffer (between optimizer steps).
  void zero() const {
    for (const auto& g : items_) g.zero();
  }
  /// Freezes (or, with trainable = true, unfreezes) every tensor whose name starts with `prefix` ("" is all);
  /// returns how many matched, and throws config_error when none does (a misspelt name is not silently ignored).
  std::size_t set_trainable(std::string_view prefix, bool trainable) const {
    std::size_t matched = 0;
    for (const auto& g : items_)
      if (std::string_view(g.name).starts_with(prefix)) {
        g.set_trainable(trainable);
        ++matched;
      }
    if (matched == 0)
      throw config_error(detail::cat("GradientList::set_trainable: no tensor name starts with '", prefix, "'"));
    return matched;
  }
  std::size_t freeze(std::string_view prefix) const { return set_trainable(prefix, false); }
  std::size_t unfreeze(std::string_view prefix) const { return set_trainable(prefix, true); }
  /// The number of values that get gradients.
  Index trainable_numel() const {
    Index n = 0;
    for (const auto& g : items_)
      if (g.trainable()) n += g.numel();
    return n;
  }

 private:
  static void copy_out(const float* g, Index size, Index numel, float* out) {
    if (size == numel) std::copy_n(g, numel, out);
    else std::fill_n(out, numel, 0.0f);
  }

  std::vector<Gradient> items_;
  std::unordered_map<std::string, std::size_t> index_;
};

/// A module whose gradients can be listed: m.gradients(list, prefix, g) for its Gradients g.
template <typename M>
concept HasGradients = requires(const M& m, GradientList& list, const std::string& prefix,
                                typename M::Gradients& g) {
  { m.make_gradients() } -> std::same_as<typename M::Gradients>;
  m.gradients(list, prefix, g);
};

/// All of a model's gradient buffers g, named from the root.
template <HasGradients M>
GradientList gradients_of(const M& model, typename M::Gradients& g) {
  GradientList list;
  model.gradients(list, "", g);
  return list;
}

/// Whether a Saved struct holds a forward that backward may use. A backward checks its arguments before it adds
/// anything; if one of its parts still throws (a misshaped gradient buffer deep inside), the buffers may hold part
/// of its sums: zero them before the next step. A training forward calls record(); backward calls
/// take(func), which throws unless a forward is held and then releases it, so a second backward over the same
/// forward is an error, unless the caller set `keep` (to run backward again, say for a second loss).
struct SavedForward {
  bool keep = false;  ///< set by the caller: backward leaves the forward in place

  void record() noexcept { held_ = true; }
  bool held() const noexcept { return held_; }
  /// Throws config_error naming `func` unless a forward is held.
  void require_held(const char* func) const {
    if (!held_)
      throw config_error(detail::cat(func, ": no saved forward (run a training forward first; a backward uses "
                                           "it once unless saved.keep is set)"));
  }
  /// require_held(func), then releases the forward unless `keep`.
  void take(const char* func) {
    require_held(func);
    if (!keep) held_ = false;
  }

 private:
  bool held_ = false;
};

namespace detail {
/// Whether a gradient buffer is live (not frozen).
inline bool live(const Matrix& g) noexcept { return g.size() != 0; }
inline bool live(const Vector& g) noexcept { return g.size() != 0; }

/// Throws shape_error naming `func` unless gradient buffer g of `name` is empty (frozen) or (rows, cols).
inline void check_gradient(const char* func, const char* name, const Matrix& g, Index rows, Index cols) {
  if (live(g) && (g.rows() != rows || g.cols() != cols))
    throw shape_error(cat(func, ": the gradient of ", name, " has shape ", shape_str(g.rows(), g.cols()), ", expected ",
                          shape_str(rows, cols), " or empty (frozen)"));
}
/// The same for a vector of (n).
inline void check_gradient(const char* func, const char* name, const Vector& g, Index n) {
  if (live(g) && g.size() != n)
    throw shape_error(cat(func, ": the gradient of ", name, " has shape ", shape_str(g.size()), ", expected ",
                          shape_str(n), " or empty (frozen)"));
}
}  // namespace detail

}  // namespace polyformer
