#pragma once
/// \file How an attention policy is spelled on a command line, e.g. "sliding:128" or "lsh:4:64": the name, then
/// colon-separated arguments. Each policy declares its spelling next to its own definition (the members that
/// SpelledAttention asks for); this header holds what they share — the parsed spelling (AttentionSpelling), the
/// options a program may add outside the spelling (AttentionOptions) — and includes no policy. The run-time
/// registry over a list of policies is attention/registry.hpp.

#include <charconv>
#include <concepts>
#include <cstddef>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// A spelling split at its colons and checked against a policy's form: "lsh:4:64" against "lsh:HASHES:CHUNK" has
/// the name "lsh" and the arguments "4" (HASHES) and "64" (CHUNK). Holds views into both strings, which must
/// outlive it.
class AttentionSpelling {
 public:
  /// Throws config_error unless `text` has the name of `form` and as many arguments.
  AttentionSpelling(std::string_view text, std::string_view form) : text_(text) {
    std::vector<std::string_view> form_parts = split(form);
    parts_ = split(text);
    if (parts_.front() != form_parts.front())
      throw config_error(detail::cat("AttentionSpelling: '", text, "' is not a spelling of ", form));
    if (parts_.size() != form_parts.size())
      throw config_error(detail::cat("AttentionSpelling: '", text, "' has ", parts_.size() - 1, " argument",
                                     parts_.size() == 2 ? "" : "s", ", expected ", form));
    argument_names_.assign(form_parts.begin() + 1, form_parts.end());
  }

  /// The whole spelling, e.g. "lsh:4:64".
  std::string_view text() const noexcept { return text_; }
  /// The policy's name, e.g. "lsh".
  std::string_view name() const noexcept { return parts_.front(); }
  /// The number of arguments after the name.
  std::size_t arguments() const noexcept { return parts_.size() - 1; }
  /// Argument i (0-based, after the name) as written, e.g. "64" for i = 1 of "lsh:4:64".
  std::string_view argument(std::size_t i) const { return parts_.at(i + 1); }

  /// Argument i as an integer >= 1; throws config_error naming the spelling and the argument as the form names
  /// it: "AttentionSpelling: 'sliding:0': W is '0', expected an integer >= 1".
  Index positive(std::size_t i) const {
    const std::string_view a = argument(i);
    Index v = 0;
    const auto [end, ec] = std::from_chars(a.data(), a.data() + a.size(), v);
    if (a.empty() || ec != std::errc() || end != a.data() + a.size() || v < 1)
      throw config_error(detail::cat("AttentionSpelling: '", text_, "': ", argument_names_.at(i), " is '", a,
                                     "', expected an integer >= 1"));
    return v;
  }

  /// The name of a spelling or form: "lsh" of "lsh:4:64".
  static constexpr std::string_view name_of(std::string_view spelling) noexcept {
    return spelling.substr(0, spelling.find(':'));
  }

 private:
  static std::vector<std::string_view> split(std::string_view s) {
    std::vector<std::string_view> parts;
    for (std::size_t start = 0;;) {
      const std::size_t colon = s.find(':', start);
      parts.push_back(s.substr(start, colon == std::string_view::npos ? std::string_view::npos : colon - start));
      if (colon == std::string_view::npos) return parts;
      start = colon + 1;
    }
  }

  std::string_view text_;
  std::vector<std::string_view> parts_;           // name, then the arguments
  std::vector<std::string_view> argument_names_;  // the form's names of the arguments, e.g. HASHES, CHUNK
};

/// Named options outside the spelling, such as a sliding window's "dilation" or the "seed" of random features: a
/// program sets what it has, and each policy's from_spelling reads the ones it understands (its doc comment lists
/// them) with a default for the others. Values are flags, integers or lists of integers; a getter of the wrong
/// kind throws config_error. The options remember which of them a policy read, so a program can tell the user
/// that an option does not apply to the policy chosen (was_read); reading them is therefore not thread-safe.
class AttentionOptions {
 public:
  using Value = std::variant<bool, Index, std::vector<Index>>;

  /// Sets or replaces option `name`; returns *this, so settings chain.
  AttentionOptions& set(std::string name, bool value) { return put(std::move(name), value); }
  template <std::integral T>
    requires(!std::same_as<T, bool>)
  AttentionOptions& set(std::string name, T value) {
    return put(std::move(name), static_cast<Index>(value));
  }
  AttentionOptions& set(std::string name, std::vector<Index> value) { return put(std::move(name), std::move(value)); }
  AttentionOptions& set(std::string name, const char* value) = delete;  // not a flag: options hold no text

  bool has(std::string_view name) const { return values_.find(name) != values_.end(); }
  /// Whether a from_spelling has read the option since it was set.
  bool was_read(std::string_view name) const { return read_.find(name) != read_.end(); }

  /// The flag `name`, or `fallback` when it is not set.
  bool flag(std::string_view name, bool fallback) const { return get<bool>(name, fallback, "a flag"); }
  /// The integer `name`, or `fallback` when it is not set.
  Index integer(std::string_view name, Index fallback) const { return get<Index>(name, fallback, "an integer"); }
  /// The list of integers `name`, or an empty list when it is not set.
  std::vector<Index> integers(std::string_view name) const {
    return get<std::vector<Index>>(name, {}, "a list of integers");
  }

 private:
  AttentionOptions& put(std::string name, Value value) {
    read_.erase(name);
    values_.insert_or_assign(std::move(name), std::move(value));
    return *this;
  }

  template <typename T>
  T get(std::string_view name, T fallback, const char* kind) const {
    const auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    read_.insert(it->first);
    if (!std::holds_alternative<T>(it->second))
      throw config_error(detail::cat("AttentionOptions: option '", name, "' is ", kind_of(it->second), ", expected ",
                                     kind));
    return std::get<T>(it->second);
  }

  static const char* kind_of(const Value& v) {
    if (std::holds_alternative<bool>(v)) return "a flag";
    if (std::holds_alternative<Index>(v)) return "an integer";
    return "a list of integers";
  }

  std::map<std::string, Value, std::less<>> values_;
  mutable std::set<std::string, std::less<>> read_;  // bookkeeping of the reads, not a value
};

/// An attention policy with a spelling, declared next to its definition:
/// - `name`: the spelling's first part, e.g. "lsh";
/// - `spelling_form`: how usage texts spell it, the name then an upper-case word per argument, e.g.
///   "lsh:HASHES:CHUNK";
/// - `example_spelling`: a typical setting at the benchmarks' lengths (the programs' tables, the benchmarks);
/// - `from_spelling(spelling, options)`: the policy a spelling of this form describes, reading the options it
///   understands;
/// - `spelling()`: the spelling of this instance (its spelled settings only: from_spelling reads it back to the
///   same policy when given the same options — seeds, dilation, global positions are options, not spelled).
template <typename P>
concept SpelledAttention = AttentionPolicy<P> &&
    requires(const P& p, const AttentionSpelling& spelling, const AttentionOptions& options) {
  { P::name } -> std::convertible_to<std::string_view>;
  { P::spelling_form } -> std::convertible_to<std::string_view>;
  { P::example_spelling } -> std::convertible_to<std::string_view>;
  { P::from_spelling(spelling, options) } -> std::same_as<P>;
  { p.spelling() } -> std::convertible_to<std::string>;
  requires AttentionSpelling::name_of(P::spelling_form) == std::string_view(P::name);
};

/// The policy P that `spelling` describes, e.g. parse_attention_as<SlidingWindow>("sliding:128"); throws
/// config_error when the spelling is not of P's form or an argument or option is invalid.
template <SpelledAttention P>
P parse_attention_as(std::string_view spelling, const AttentionOptions& options = {}) {
  return P::from_spelling(AttentionSpelling(spelling, P::spelling_form), options);
}

}  // namespace polyformer
