#pragma once
/// \file An attention policy chosen at run time among the policies of a list: one type for the model, so a
/// program that reads the policy from its command line instantiates the model once, not once per policy
/// (with_attention's way). Each call dispatches once to the policy held (std::visit); the policies' own
/// kernels do the work.

#include <concepts>
#include <cstddef>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

#include "polyformer/attention/registry.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"

namespace polyformer {

/// One of the policies of List that decode incrementally (Held: those of them modelling IncrementalAttention; the
/// model's decoding needs that of the one it holds, whichever it is). Its State and Workspace are those of the
/// policy it holds.
template <typename List, typename Held = EligiblePolicies<List, true>>
class DynamicAttention;

template <typename List, typename... Ps>
class DynamicAttention<List, PolicyList<Ps...>>
    : public PerCallWorkspace<DynamicAttention<List, PolicyList<Ps...>>> {
  static_assert(sizeof...(Ps) > 0 && (IncrementalAttention<Ps> && ...),
                "DynamicAttention: every policy of the list must model IncrementalAttention");

 public:
  using PerCallWorkspace<DynamicAttention>::forward;
  using PerCallWorkspace<DynamicAttention>::forward_cached;
  static constexpr bool supports_causal = (Ps::supports_causal && ...);
  static constexpr bool supports_additive_bias = (AdditiveBiasAttention<Ps> && ...);
  static constexpr const char* name = "dynamic";

  /// Each policy's scratch; only the held policy's grows.
  struct Workspace {
    std::tuple<typename Ps::Workspace...> of;
  };

  /// The held policy's decoding state.
  struct State {
    std::variant<typename Ps::State...> of;
    Index size() const noexcept { return std::visit([](const auto& s) -> Index { return s.size(); }, of); }
    void clear() noexcept {
      std::visit([](auto& s) { s.clear(); }, of);
    }
  };

  DynamicAttention() = default;  ///< the first policy of the list, default-made
  /// Holds `policy`, one of Ps.
  template <typename P>
    requires(std::same_as<std::remove_cvref_t<P>, Ps> || ...)
  DynamicAttention(P&& policy) : policy_(std::forward<P>(policy)) {}  // NOLINT: a policy is a DynamicAttention
  /// The policy `spelling` names among List's incremental ones (parse_attention<List, true>: its errors and options).
  static DynamicAttention parse(std::string_view spelling, const AttentionOptions& options = {}) {
    return std::visit([](auto&& p) { return DynamicAttention(std::move(p)); },
                      parse_attention<List, true>(spelling, options));
  }

  /// The held policy's name, e.g. "sliding".
  const char* held_name() const noexcept {
    return std::visit([](const auto& p) -> const char* { return std::remove_cvref_t<decltype(p)>::name; }, policy_);
  }
  /// The policy held when it is a P, else nullptr.
  template <typename P>
  const P* held_if() const noexcept {
    const P* found = nullptr;
    dispatch([&](auto i) {
      if constexpr (std::same_as<std::variant_alternative_t<decltype(i)::value, std::variant<Ps...>>, P>)
        found = std::get_if<decltype(i)::value>(&policy_);
    });
    return found;
  }
  /// `state` as the state of a P, when the policy held is a P (and made `state`), else nullptr.
  template <typename P>
  typename P::State* state_if(State& state) const noexcept {
    typename P::State* found = nullptr;
    dispatch([&](auto i) {
      if constexpr (std::same_as<std::variant_alternative_t<decltype(i)::value, std::variant<Ps...>>, P>)
        found = std::get_if<decltype(i)::value>(&state.of);
    });
    return found;
  }

  /// The held policy's spelling, e.g. "sliding:64".
  std::string spelling() const {
    return std::visit([](const auto& p) { return p.spelling(); }, policy_);
  }

  void forward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
               const AttentionMask& mask, MatrixView out, Workspace& ws, const Context& ctx) const {
    dispatch([&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
      std::get<I>(policy_).forward(s, q, k, v, mask, out, std::get<I>(ws.of), ctx);
    });
  }

  State make_state(Index capacity, Index n_kv_heads, Index head_dim) const {
    State state;
    dispatch([&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
      state.of.template emplace<I>(std::get<I>(policy_).make_state(capacity, n_kv_heads, head_dim));
    });
    return state;
  }

  /// Throws config_error when `state` was made by another policy than the one held.
  void forward_cached(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k_new, ConstMatrixView v_new,
                      State& state, MatrixView out, Workspace& ws, const Context& ctx) const {
    dispatch([&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
      auto* held = std::get_if<I>(&state.of);
      if (held == nullptr)
        throw config_error(detail::cat("DynamicAttention::forward_cached: the state was made by another policy than '",
                                       held_name(), "'"));
      std::get<I>(policy_).forward_cached(s, q, k_new, v_new, *held, out, std::get<I>(ws.of), ctx);
    });
  }

  /// What the held policy's training forward keeps (when every policy of the list trains).
  struct Saved : SavedForward {
    std::variant<std::monostate, typename Ps::Saved...> of;
  };

  /// The held policy's forward_train (TrainableAttention).
  void forward_train(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                     const AttentionMask& mask, MatrixView out, Saved& saved, Workspace& ws, const Context& ctx) const
    requires(TrainableAttention<Ps> && ...)
  {
    dispatch([&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
      auto* held = std::get_if<I + 1>(&saved.of);
      if (held == nullptr) held = &saved.of.template emplace<I + 1>();
      std::get<I>(policy_).forward_train(s, q, k, v, mask, out, *held, std::get<I>(ws.of), ctx);
    });
    saved.record();
  }

  /// The held policy's backward of the forward in `saved`.
  void backward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, Saved& saved, MatrixView dq,
                MatrixView dk, MatrixView dv, Workspace& ws, const Context& ctx) const
    requires(TrainableAttention<Ps> && ...)
  {
    const char* func = "DynamicAttention::backward";
    saved.require_held(func);
    dispatch([&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
      auto* held = std::get_if<I + 1>(&saved.of);
      if (held == nullptr)
        throw config_error(detail::cat(func, ": the saved forward was made by another policy than '", held_name(), "'"));
      held->keep = saved.keep;
      std::get<I>(policy_).backward(s, q, k, v, mask, out, dout, *held, dq, dk, dv, std::get<I>(ws.of), ctx);
    });
    saved.take(func);
  }

 private:
  /// f(std::integral_constant<std::size_t, I>{}) for the index I of the policy held (alternatives are told apart
  /// by index: two policies may share a state type).
  template <typename F>
  void dispatch(F&& f) const {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((policy_.index() == I ? (f(std::integral_constant<std::size_t, I>{}), true) : false) || ...);
    }(std::index_sequence_for<Ps...>{});
  }

  std::variant<Ps...> policy_;
};

/// The incremental policies of the registry, chosen at run time (generate's --attention).
using DynamicIncrementalAttention = DynamicAttention<AttentionPolicies>;
/// Those of them that take an additive bias, chosen at run time (generate's --attention for T5).
using DynamicAdditiveBiasAttention = DynamicAttention<AdditiveBiasPolicies<AttentionPolicies>>;
static_assert(AdditiveBiasAttention<DynamicAdditiveBiasAttention>);

static_assert(IncrementalAttention<DynamicIncrementalAttention> && TrainableAttention<DynamicIncrementalAttention>);

}  // namespace polyformer
