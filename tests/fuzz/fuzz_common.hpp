#pragma once
// What the libFuzzer targets share (tests/fuzz/README.md): the errors a reader documents for bad input, which end a
// run normally; anything else — a crash, a sanitizer report, another exception — escapes and libFuzzer reports it.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <unistd.h>

#include "polyformer/core/error.hpp"

namespace fuzz {

/// Runs `f`, accepting the library's documented errors for bad input (format_error, config_error, shape_error,
/// missing_error).
template <typename F>
void expect_errors(F&& f) {
  try {
    f();
  } catch (const polyformer::format_error&) {
  } catch (const polyformer::config_error&) {
  } catch (const polyformer::shape_error&) {
  } catch (const polyformer::missing_error&) {
  }
}

inline std::string_view text(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

inline std::span<const unsigned char> bytes(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const unsigned char*>(data), size};
}

/// The input split at the first occurrence of `separator`: (before, after); all of it before when absent.
inline std::pair<std::string_view, std::string_view> split(std::string_view input, std::string_view separator) {
  const std::size_t at = input.find(separator);
  if (at == std::string_view::npos) return {input, {}};
  return {input.substr(0, at), input.substr(at + separator.size())};
}

/// A folder of this process's own (under /dev/shm when it exists) for readers that take paths.
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path root = std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
    auto d = root / ("polyformer_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline void write_file(const std::filesystem::path& path, std::string_view content) {
  std::ofstream(path, std::ios::binary).write(content.data(), static_cast<std::streamsize>(content.size()));
}

}  // namespace fuzz
