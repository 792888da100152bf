#pragma once
/// \file Exception types thrown by polyformer and the message helpers that build them.

#include <cassert>
#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace polyformer {

/// A tensor or argument has the wrong shape: "Func: arg has shape (a, b), expected (c, d)".
struct shape_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// A configuration value is out of range or inconsistent (head counts, eps, thread counts, ...).
struct config_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// A file is malformed: truncated, bad header, bad offsets, unknown dtype, ...
struct format_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A named item (tensor, option) is missing.
struct missing_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {

/// Concatenates anything streamable into one string.
template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

/// "(2, 5, 64)" for a list of extents.
template <typename... Ints>
std::string shape_str(Ints... extents) {
  std::ostringstream out;
  out << '(';
  std::size_t i = 0;
  ((out << (i++ ? ", " : "") << extents), ...);
  out << ')';
  return out.str();
}

}  // namespace detail

}  // namespace polyformer

/// Internal invariant check; compiled out under NDEBUG like eigen_assert.
#define POLYFORMER_ASSERT(cond) assert(cond)
