#pragma once
// What the tests of Hugging Face model directories share: the error measure, copies of a reference case to make
// wrong one change at a time, and a reference's beam search settings.

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "polyformer/generate/beam_search.hpp"
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

/// The beam search options of a reference's "beam_<i>_settings" (tests/beam_search_reference.py): beams, new
/// tokens, length penalty, early stopping (1 yes, 0 heuristic, -1 never) and the end token.
inline polyformer::BeamSearchOptions beam_options(const std::vector<float>& s) {
  using Stop = polyformer::BeamSearchOptions::EarlyStopping;
  polyformer::BeamSearchOptions o;
  o.num_beams = int(s.at(0));
  o.max_new_tokens = polyformer::Index(s.at(1));
  o.length_penalty = s.at(2);
  o.early_stopping = s.at(3) > 0 ? Stop::yes : s.at(3) < 0 ? Stop::never : Stop::heuristic;
  o.eos_token_ids = {int(s.at(4))};
  return o;
}

}  // namespace pft
