#pragma once
// What the tests of Hugging Face model directories share: the error measure, and copies of a reference case to make
// wrong one change at a time.

#include <filesystem>
#include <fstream>
#include <string>

#include <catch2/catch.hpp>

#include "support.hpp"

namespace pft {

/// max |got − want| / max |want|.
inline double relative_error(const Matrix& got, const Matrix& want) {
  return max_abs_diff(got, want) / want.cwiseAbs().maxCoeff();
}

/// A copy of directory `from` to change one thing in, under this process's temporary name `tag`/`name`.
inline std::string copy_case(const std::string& from, const std::string& tag, const std::string& name) {
  const std::string to = process_temp_path(tag, name);
  std::filesystem::remove_all(to);
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive);
  return to;
}

/// dir/config.json with `from` replaced by `to` (which must occur).
inline void edit_config(const std::string& dir, const std::string& from, const std::string& to) {
  std::string text = read_text(dir + "/config.json");
  const auto at = text.find(from);
  REQUIRE(at != std::string::npos);
  text.replace(at, from.size(), to);
  std::ofstream(dir + "/config.json") << text;
}

}  // namespace pft
