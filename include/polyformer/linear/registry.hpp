#pragma once
/// \file The linear policies a program picks by name at run time (generate --linear): one list, LinearPolicies,
/// whose policies each declare their `name` beside their definition. Usage texts and the choice iterate it;
/// adding a policy is its header plus one entry here.

#include <string>
#include <string_view>
#include <type_traits>

#include "polyformer/core/error.hpp"
#include "polyformer/core/policy_list.hpp"
#include "polyformer/linear/bf16.hpp"
#include "polyformer/linear/dense.hpp"
#include "polyformer/linear/int8.hpp"

namespace polyformer {

/// Every linear policy a program may choose by name, in the order usage texts list them.
using LinearPolicies = PolicyList<Dense, BF16, Int8>;

/// The names of List's policies joined by `separator`, e.g. "fp32|bf16|int8".
template <typename List = LinearPolicies>
std::string linear_usage(std::string_view separator = "|") {
  std::string usage;
  [&]<typename... Ls>(PolicyList<Ls...>) {
    ((usage += (usage.empty() ? "" : std::string(separator)) + Ls::name), ...);
  }(List{});
  return usage;
}

/// Calls f(std::type_identity<L>{}) for every policy L of List, in order.
template <typename List = LinearPolicies, typename F>
void for_each_linear_policy(F&& f) {
  [&]<typename... Ls>(PolicyList<Ls...>) { (f(std::type_identity<Ls>{}), ...); }(List{});
}

/// Calls f(std::type_identity<L>{}) for the policy L of List named `name` (f is instantiated for every policy of
/// the list). Throws config_error for an unknown name.
template <typename List = LinearPolicies, typename F>
void with_linear(std::string_view name, F&& f) {
  bool found = false;
  [&]<typename... Ls>(PolicyList<Ls...>) {
    ((!found && name == Ls::name ? (f(std::type_identity<Ls>{}), found = true) : false), ...);
  }(List{});
  if (!found)
    throw config_error(detail::cat("with_linear: unknown linear policy '", name, "', expected ", linear_usage<List>(", ")));
}

}  // namespace polyformer
