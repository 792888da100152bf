#pragma once
// Helpers shared by the test files: where the shared data lives, random matrices, comparisons.

#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>
#include <cstdlib>
#include <sys/wait.h>
#include <unistd.h>

#include "polyformer/core/parameters.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/safetensors.hpp"

#ifndef POLYFORMER_SHARED_DIR
#define POLYFORMER_SHARED_DIR "../shared"
#endif
#ifndef POLYFORMER_EXTRA_REFERENCE_DIR
#define POLYFORMER_EXTRA_REFERENCE_DIR "reference-extra"
#endif

namespace pft {

using polyformer::Index;
using polyformer::Matrix;

/// Absolute path of a file under shared/; fails the test with a clear message when it is missing.
inline std::string shared_path(const std::string& relative) {
  const std::string path = std::string(POLYFORMER_SHARED_DIR) + "/" + relative;
  if (!std::filesystem::exists(path))
    FAIL("shared data missing: " << path << " — configure with -DPOLYFORMER_SHARED_DIR=/path/to/shared");
  return path;
}

/// The whole file as bytes; fails the test when it cannot be opened.
inline std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f);
  return std::vector<unsigned char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

/// The whole file as text ("" when it cannot be opened).
inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

/// The little-endian u32 at byte `at`, decoded here so tests do not lean on the readers under test.
inline std::uint32_t u32_at(const std::vector<unsigned char>& b, std::size_t at) {
  return std::uint32_t(b[at]) | (std::uint32_t(b[at + 1]) << 8) | (std::uint32_t(b[at + 2]) << 16) |
         (std::uint32_t(b[at + 3]) << 24);
}

/// Entries (rows, cols) drawn from N(0, scale²) with a fixed seed.
inline Matrix random_matrix(Index rows, Index cols, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = dist(rng);
  return m;
}

/// A tensor of any rank viewed as a matrix whose columns are its last dimension.
inline Matrix as_rows(const polyformer::io::FloatTensor& t) {
  const Index cols = t.shape.empty() ? 1 : static_cast<Index>(t.shape.back());
  const Index rows = cols ? static_cast<Index>(t.data.size()) / cols : 0;
  return Eigen::Map<const Matrix>(t.data.data(), rows, cols);
}

/// max |a − b|, infinity when shapes differ.
template <typename A, typename B>
double max_abs_diff(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return std::numeric_limits<double>::infinity();
  if (a.size() == 0) return 0.0;
  return (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff();
}

/// A temporary file of this process for `tag` (ctest runs test cases in parallel processes).
inline std::string process_temp_path(const std::string& tag, const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("polyformer_test_" + tag + "_" + std::to_string(::getpid()) + "_" + name)).string();
}

/// Runs `program args` with stdout and stderr sent to this process's temporary files (read back into
/// out/err when given); returns the exit code (-1 when it did not exit normally).
inline int run_program(const std::string& program, const std::string& tag, const std::string& args,
                       std::string* out = nullptr, std::string* err = nullptr) {
  const std::string out_path = process_temp_path(tag, "stdout.txt"), err_path = process_temp_path(tag, "stderr.txt");
  const std::string cmd = program + " " + args + " >" + out_path + " 2>" + err_path;
  const int status = std::system(cmd.c_str());
  if (out) *out = read_text(out_path);
  if (err) *err = read_text(err_path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// Writes token ids as a llama2.c pretokenized shard (little-endian uint16) at `path`; returns the path.
inline std::string write_token_shard(const std::string& path, const std::vector<int>& ids) {
  std::ofstream out(path, std::ios::binary);
  for (int id : ids) {
    const char b[2] = {static_cast<char>(id & 0xFF), static_cast<char>((id >> 8) & 0xFF)};
    out.write(b, 2);
  }
  return path;
}

/// Fills every parameter of `model` with seeded values: tensors of two dimensions random_matrix(…, scale), vectors
/// (norm gains) 1 + random_matrix(…, 0.1); each tensor its own seed, counting up from `seed`. Returns the next seed.
template <typename Model>
unsigned randomize_parameters(Model& model, unsigned seed, float scale) {
  polyformer::ParameterList params = polyformer::parameters_of(model);
  for (const polyformer::Parameter& p : params.items()) {
    const bool gain = p.shape.size() == 1;
    Matrix m = random_matrix(p.shape[0], gain ? 1 : p.shape[1], seed++, gain ? 0.1f : scale);
    if (gain) m.array() += 1.0f;
    p.write(m.data());
  }
  return seed;
}

}  // namespace pft
