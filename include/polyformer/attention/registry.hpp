#pragma once
/// \file The run-time registry over the compile-time attention policies, for programs that pick the policy on
/// the command line. It is one list of policy types, AttentionPolicies; each policy declares its spelling next to
/// its own definition (SpelledAttention, attention/spelling.hpp). A spelling such as "sliding:128" is parsed into
/// the policy object (parse_attention), and with_attention() calls a generic callable with it, so the rest of
/// the program is instantiated once per policy of the list. Usage texts (attention_usage), tables and
/// benchmarks (for_each_attention_policy) iterate the same list, and whether a policy decodes incrementally
/// comes from the IncrementalAttention concept.
///
/// Adding a policy is its header (the policy and its spelling members) plus one entry in AttentionPolicies; a
/// program or test with policies of its own extends the list instead: AttentionPolicies::append<MyPolicy>.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "polyformer/attention/blockwise.hpp"
#include "polyformer/attention/full.hpp"
#include "polyformer/attention/kernelized.hpp"
#include "polyformer/attention/linformer.hpp"
#include "polyformer/attention/lsh.hpp"
#include "polyformer/attention/sliding_window.hpp"
#include "polyformer/attention/spelling.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/policy_list.hpp"

namespace polyformer {

/// Every attention policy with a spelling; a program's usage text lists them in this order.
using AttentionPolicies =
    PolicyList<FullAttention, SlidingWindow, Blockwise, LSHAttention, Linformer, Performer, LinearAttention>;

namespace detail {

/// The policies of several lists in one list.
template <typename... Lists>
struct concat_policies;
template <typename... A>
struct concat_policies<PolicyList<A...>> {
  using type = PolicyList<A...>;
};
template <typename... A, typename... B, typename... Rest>
struct concat_policies<PolicyList<A...>, PolicyList<B...>, Rest...>
    : concat_policies<PolicyList<A..., B...>, Rest...> {};

/// List, or (incremental_only) the list of its policies modelling IncrementalAttention.
template <typename List, bool incremental_only>
struct eligible_policies {
  using type = List;
};
template <typename... Ps>
struct eligible_policies<PolicyList<Ps...>, true>
    : concat_policies<PolicyList<>, std::conditional_t<IncrementalAttention<Ps>, PolicyList<Ps>, PolicyList<>>...> {};

template <typename List>
struct additive_bias_policies;
template <typename... Ps>
struct additive_bias_policies<PolicyList<Ps...>>
    : concat_policies<PolicyList<>, std::conditional_t<AdditiveBiasAttention<Ps>, PolicyList<Ps>, PolicyList<>>...> {};

template <typename List>
inline constexpr bool all_spelled = false;
template <typename... Ps>
inline constexpr bool all_spelled<PolicyList<Ps...>> = (SpelledAttention<Ps> && ...);

}  // namespace detail

/// The policies of List, or with `incremental_only` those of them modelling IncrementalAttention.
template <typename List = AttentionPolicies, bool incremental_only = false>
using EligiblePolicies = typename detail::eligible_policies<List, incremental_only>::type;

/// The policies of List that add an additive bias to their scores (AdditiveBiasAttention): those T5's relative
/// position bias can run on.
template <typename List = AttentionPolicies>
using AdditiveBiasPolicies = typename detail::additive_bias_policies<List>::type;

/// A parsed policy: one of the (eligible) policies of List.
template <typename List = AttentionPolicies, bool incremental_only = false>
using AnyAttention = typename EligiblePolicies<List, incremental_only>::template apply<std::variant>;

/// Calls f(std::type_identity<P>{}) for every policy P of List, in order.
template <typename List = AttentionPolicies, typename F>
void for_each_attention_policy(F&& f) {
  static_assert(detail::all_spelled<List>,
                "every policy of the list needs the spelling members of SpelledAttention (attention/spelling.hpp)");
  [&]<typename... Ps>(PolicyList<Ps...>) { (f(std::type_identity<Ps>{}), ...); }(List{});
}

/// The spelling forms of List's (eligible) policies joined by `separator`, e.g. "full|sliding:W|blockwise:B|…".
template <typename List = AttentionPolicies, bool incremental_only = false>
std::string attention_usage(std::string_view separator = "|") {
  std::string usage;
  for_each_attention_policy<EligiblePolicies<List, incremental_only>>([&]<typename P>(std::type_identity<P>) {
    if (!usage.empty()) usage += separator;
    usage += P::spelling_form;
  });
  return usage;
}

namespace detail {
/// "a, b or c": the spelling forms for an error message.
template <typename List, bool incremental_only>
std::string spelling_choices() {
  std::string choices;
  std::size_t i = 0;
  constexpr std::size_t n = EligiblePolicies<List, incremental_only>::size;
  for_each_attention_policy<EligiblePolicies<List, incremental_only>>([&]<typename P>(std::type_identity<P>) {
    choices += i == 0 ? "" : i + 1 == n ? " or " : ", ";
    choices += P::spelling_form;
    ++i;
  });
  return choices;
}
}  // namespace detail

/// The policy `spelling` describes, among List's policies (those modelling IncrementalAttention when
/// `incremental_only`), made by its from_spelling with `options`. Throws config_error for an unknown name, a
/// policy that cannot decode incrementally when that is asked for, or what the policy's from_spelling refuses.
template <typename List = AttentionPolicies, bool incremental_only = false>
AnyAttention<List, incremental_only> parse_attention(std::string_view spelling, const AttentionOptions& options = {}) {
  using Eligible = EligiblePolicies<List, incremental_only>;
  const std::string_view name = AttentionSpelling::name_of(spelling);
  std::optional<AnyAttention<List, incremental_only>> parsed;
  for_each_attention_policy<Eligible>([&]<typename P>(std::type_identity<P>) {
    if (!parsed && name == std::string_view(P::name))
      parsed.emplace(std::in_place_type<P>, parse_attention_as<P>(spelling, options));
  });
  if (parsed) return std::move(*parsed);
  bool known = false;
  for_each_attention_policy<List>([&]<typename P>(std::type_identity<P>) { known = known || name == P::name; });
  if (known)
    throw config_error(detail::cat("parse_attention: '", spelling, "' cannot decode incrementally, expected ",
                                   detail::spelling_choices<List, incremental_only>()));
  throw config_error(detail::cat("parse_attention: unknown policy '", spelling, "', expected ",
                                 detail::spelling_choices<List, incremental_only>()));
}

/// Calls f(policy) with the policy `spelling` describes (see parse_attention) and returns what f returns: f is
/// instantiated for every policy of List, or only for those modelling IncrementalAttention when
/// `incremental_only`, and must return the same type for each.
template <typename List = AttentionPolicies, bool incremental_only = false, typename F>
decltype(auto) with_attention(std::string_view spelling, const AttentionOptions& options, F&& f) {
  return std::visit(std::forward<F>(f), parse_attention<List, incremental_only>(spelling, options));
}

}  // namespace polyformer
