#pragma once
/// \file A compile-time list of policy types: the registries (attention/registry.hpp, linear/registry.hpp) are
/// one such list each, which programs, benchmarks, tests and usage texts iterate.

#include <cstddef>

namespace polyformer {

/// A compile-time list of policy types.
template <typename... Ps>
struct PolicyList {
  /// This list with more policies at its end.
  template <typename... Qs>
  using append = PolicyList<Ps..., Qs...>;
  /// T<Ps...>, e.g. std::variant of the policies.
  template <template <typename...> class T>
  using apply = T<Ps...>;
  static constexpr std::size_t size = sizeof...(Ps);
};

}  // namespace polyformer
