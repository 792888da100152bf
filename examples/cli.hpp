#pragma once
// What the example programs share on their command lines: the usage error (exit code 2 and one line naming the
// problem), strict number parsing (the whole argument must be the number), flag values and the guarded main.

#include <charconv>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace cli {

/// A bad command line: the program prints the message on one line, with a pointer to --help, and exits with code 2.
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

/// The value after flag argv[i] (i moves onto it); usage_error when the command line ends first.
inline std::string value_after(int argc, char** argv, int& i) {
  if (i + 1 >= argc) throw usage_error(std::string(argv[i]) + " needs a value");
  return argv[++i];
}

/// A program's main around `body` (returning its exit code): a usage error or any other exception prints one line
/// on stderr — the program's name and the message (a usage error adds where the usage is) — and exits with code 2.
template <typename Body>
int guarded_main(const char* program, Body&& body) {
  try {
    return body();
  } catch (const usage_error& e) {
    std::fprintf(stderr, "%s: %s (%s --help prints the usage)\n", program, e.what(), program);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 2;
  }
}

}  // namespace cli
