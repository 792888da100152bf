#pragma once
// What the example programs share on their command lines: the usage error (exit code 2 with the usage text)
// and strict number parsing (the whole argument must be the number).

#include <charconv>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace cli {

/// A bad command line: the program prints the message and its usage, and exits with code 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The number `value` given to `flag`; throws usage_error unless all of it parses as a T.
template <typename T>
T parse_number(const std::string& flag, const std::string& value) {
  T v{};
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size())
    throw usage_error(flag + " expects " + (std::is_floating_point_v<T> ? "a number" : "an integer") + ", got '" +
                      value + "'");
  return v;
}

}  // namespace cli
