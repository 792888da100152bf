// Tests for polyformer/io/safetensors.hpp: round trip, the shared PyTorch reference files, exact F16/BF16
// conversion, and one test per kind of malformed file.
#include "polyformer/io/safetensors.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <unistd.h>  // getpid, for unique temp names

#ifndef POLYFORMER_SHARED_DIR
#define POLYFORMER_SHARED_DIR "/work/shared"  // CMake defines it; this is for building by hand
#endif

namespace {

using polyformer::format_error;
using polyformer::missing_error;
using polyformer::shape_error;
using polyformer::io::DType;
using polyformer::io::FloatTensor;
using polyformer::io::SafetensorsFile;
using Catch::Contains;

namespace fs = std::filesystem;

const std::string kTorchDir = std::string(POLYFORMER_SHARED_DIR) + "/reference/torch";
const std::string kEncoderFile = kTorchDir + "/encoder_layer_postnorm_relu_seed0.safetensors";

/// A safetensors image: 8-byte little-endian length (the real one unless `length` is given), header, data.
std::vector<unsigned char> make_file(const std::string& header, const std::vector<unsigned char>& data = {},
                                     std::optional<std::uint64_t> length = std::nullopt) {
  std::vector<unsigned char> out(8);
  out.reserve(8 + header.size() + data.size());  // also spares g++ 12 a false -Warray-bounds on the growth path
  const std::uint64_t n = length ? *length : header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<unsigned char>(n >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

/// Little-endian bytes of 16-bit words.
std::vector<unsigned char> le16(const std::vector<std::uint16_t>& words) {
  std::vector<unsigned char> out;
  for (std::uint16_t w : words) {
    out.push_back(static_cast<unsigned char>(w & 0xFF));
    out.push_back(static_cast<unsigned char>(w >> 8));
  }
  return out;
}

/// Little-endian bytes of floats.
std::vector<unsigned char> le32(const std::vector<float>& values) {
  std::vector<unsigned char> out;
  for (float f : values) {
    const auto u = std::bit_cast<std::uint32_t>(f);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<unsigned char>(u >> (8 * i)));
  }
  return out;
}

SafetensorsFile load(const std::vector<unsigned char>& bytes,
                     polyformer::io::NonFinite non_finite = polyformer::io::NonFinite::refuse) {
  return SafetensorsFile::from_bytes(bytes, "mem.st", non_finite);
}

/// Independent oracle for binary16: (-1)^s · 2^(e-15) · 1.m, or m·2^-24 when e == 0.
float half_oracle(std::uint16_t h) {
  const float sign = (h & 0x8000) ? -1.0f : 1.0f;
  const int e = (h >> 10) & 0x1F;
  const int m = h & 0x3FF;
  if (e == 0x1F) return m ? std::numeric_limits<float>::quiet_NaN() : sign * std::numeric_limits<float>::infinity();
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -24);
  return sign * std::ldexp(static_cast<float>(1024 + m), e - 25);
}

/// Independent oracle for bfloat16: (-1)^s · 2^(e-127) · 1.m, or m·2^-133 when e == 0.
float bf16_oracle(std::uint16_t b) {
  const float sign = (b & 0x8000) ? -1.0f : 1.0f;
  const int e = (b >> 7) & 0xFF;
  const int m = b & 0x7F;
  if (e == 0xFF) return m ? std::numeric_limits<float>::quiet_NaN() : sign * std::numeric_limits<float>::infinity();
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -133);
  return sign * std::ldexp(static_cast<float>(128 + m), e - 134);
}

std::uint32_t bits(float f) { return std::bit_cast<std::uint32_t>(f); }

/// A fresh path in the temp folder.
std::string temp_path(const std::string& stem) {
  static int counter = 0;
  return (fs::temp_directory_path() / ("polyformer_test_" + std::to_string(::getpid()) + "_" + stem + "_" +
                                       std::to_string(counter++) + ".safetensors"))
      .string();
}

/// A header with one F32 tensor "w" of shape [2] whose entry is `entry` (JSON text), plus 8 data bytes.
std::vector<unsigned char> one_entry(const std::string& entry) {
  return make_file(R"({"w":)" + entry + "}", std::vector<unsigned char>(8, 0));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Round trip

TEST_CASE("io/safetensors: write then read round-trips shapes, values, order and metadata") {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<std::pair<std::string, FloatTensor>> tensors = {
      {"layer.weight", {{2, 3}, {1.0f, -2.5f, 3.25f, 0.0f, -0.0f, 1e-40f}}},
      {"layer.bias", {{3}, {inf, -inf, std::numeric_limits<float>::quiet_NaN()}}},
      {"scalar", {{}, {42.0f}}},
      {"empty", {{0, 5}, {}}},
      {"cube", {{2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8}}},
  };
  const std::map<std::string, std::string> meta = {{"nhead", "4"}, {"note", "h\xC3\xA9llo \"quoted\""}, {"", "x"}};
  const std::string path = temp_path("roundtrip");
  polyformer::io::write_safetensors(path, tensors, meta);

  const auto bytes = polyformer::io::detail::read_file(path, "safetensors");
  CHECK(bytes == polyformer::io::serialize_safetensors(tensors, meta));
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[static_cast<std::size_t>(i)];
  CHECK(n % 8 == 0);
  CHECK(bytes.size() == 8 + n + 4 * (6 + 3 + 1 + 0 + 8));
  CHECK(bytes[8 + n - 1] != 0);  // padding is spaces (or no padding), never NUL

  for (const auto& file : {SafetensorsFile::open(path), SafetensorsFile::from_bytes(bytes, "copy")}) {
    CHECK(file.names() == std::vector<std::string>{"layer.weight", "layer.bias", "scalar", "empty", "cube"});
    CHECK(file.size() == 5);
    CHECK(file.metadata() == meta);
    CHECK(file.metadata_value("nhead") == std::optional<std::string>("4"));
    CHECK_FALSE(file.metadata_value("absent").has_value());
    for (const auto& [name, t] : tensors) {
      INFO(name);
      REQUIRE(file.contains(name));
      const auto& info = file.info(name);
      CHECK(info.dtype == DType::F32);
      CHECK(info.shape == t.shape);
      CHECK(info.numel() == t.numel());
      const FloatTensor got = file.tensor(name);
      CHECK(got.shape == t.shape);
      REQUIRE(got.data.size() == t.data.size());
      for (std::size_t i = 0; i < t.data.size(); ++i) CHECK(bits(got.data[i]) == bits(t.data[i]));
    }
    CHECK_FALSE(file.contains("nope"));
    const auto m = file.matrix("layer.weight", 2, 3);
    CHECK(m(1, 2) == 1e-40f);
    CHECK(m(0, 1) == -2.5f);
    CHECK(file.matrix("empty").rows() == 0);
    CHECK(file.matrix("layer.bias").rows() == 1);
    CHECK(std::isnan(file.vector("layer.bias")(2)));
  }
  CHECK(SafetensorsFile::open(path).is_memory_mapped() == bool(POLYFORMER_IO_POSIX));
  fs::remove(path);
}

TEST_CASE("io/safetensors: an empty tensor list writes a valid file") {
  const auto bytes = polyformer::io::serialize_safetensors({});
  const auto file = load(bytes);
  CHECK(file.names().empty());
  CHECK(file.metadata().empty());
  CHECK(bytes.size() % 8 == 0);
}

TEST_CASE("io/safetensors: rewriting a file leaves an open mapping of the old one intact") {
  const std::string path = temp_path("rewrite");
  polyformer::io::write_safetensors(path, {{"a", {{2}, {1.0f, 2.0f}}}});
  const auto old_file = SafetensorsFile::open(path);
  polyformer::io::write_safetensors(path, {{"b", {{1}, {3.0f}}}});
  CHECK(old_file.vector("a")(1) == 2.0f);  // the old inode stays mapped
  CHECK(SafetensorsFile::open(path).vector("b")(0) == 3.0f);
  fs::remove(path);
}

TEST_CASE("io/safetensors: the writer rejects bad input") {
  using polyformer::io::serialize_safetensors;
  SECTION("data size does not match the shape") {
    CHECK_THROWS_AS(serialize_safetensors({{"w", {{2, 3}, {1, 2, 3}}}}), format_error);
    CHECK_THROWS_WITH(serialize_safetensors({{"w", {{2, 3}, {1, 2, 3}}}}),
                      Contains("'w'") && Contains("(2, 3)") && Contains("6 elements") && Contains("3 data values"));
  }
  SECTION("duplicate names") {
    CHECK_THROWS_AS(serialize_safetensors({{"w", {{1}, {1}}}, {"w", {{1}, {2}}}}), format_error);
    CHECK_THROWS_WITH(serialize_safetensors({{"w", {{1}, {1}}}, {"w", {{1}, {2}}}}),
                      Contains("duplicate tensor name 'w'"));
  }
  SECTION("negative extent") {
    CHECK_THROWS_WITH(serialize_safetensors({{"w", {{-1}, {}}}}), Contains("negative") && Contains("'w'"));
  }
  SECTION("a tensor named __metadata__") {
    CHECK_THROWS_AS(serialize_safetensors({{"__metadata__", {{1}, {1}}}}), format_error);
  }
  SECTION("invalid UTF-8 in a name") {
    CHECK_THROWS_AS(serialize_safetensors({{"\xFF", {{1}, {1}}}}), format_error);
  }
  SECTION("I/O failure names the path") {
    const std::string path = "/nonexistent-polyformer-dir/x.safetensors";
    CHECK_THROWS_AS(polyformer::io::write_safetensors(path, {{"w", {{1}, {1}}}}), format_error);
    CHECK_THROWS_WITH(polyformer::io::write_safetensors(path, {{"w", {{1}, {1}}}}),
                      Contains("safetensors: " + path + ": cannot create"));
  }
}

// ---------------------------------------------------------------------------------------------------------
// The shared PyTorch reference files

TEST_CASE("io/safetensors: reads every reference file in the shared dir") {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(kTorchDir))
    if (e.path().extension() == ".safetensors") files.push_back(e.path());
  REQUIRE(files.size() >= 10);
  for (const auto& p : files) {
    INFO(p.string());
    const auto file = SafetensorsFile::open(p.string());
    CHECK(file.path() == p.string());
    CHECK(file.is_memory_mapped() == bool(POLYFORMER_IO_POSIX));  // false when built with POLYFORMER_NO_MMAP
    CHECK(file.metadata_value("nhead") == std::optional<std::string>("4"));
    CHECK(file.metadata_value("d_model") == std::optional<std::string>("64"));
    const std::string module = file.metadata_value("module").value_or("");
    const std::size_t expected_count = module == "torch.nn.TransformerEncoderLayer"   ? 26
                                       : module == "torch.nn.TransformerDecoderLayer" ? 32
                                       : module == "torch.nn.Transformer"             ? 97
                                                                                      : 0;
    CHECK(file.names().size() == expected_count);

    // Back to back in header order, covering the whole data section; reading through the in-memory
    // fallback gives the same floats as the map.
    const auto bytes = polyformer::io::detail::read_file(p.string(), "safetensors");
    const auto copy = SafetensorsFile::from_bytes(bytes, "copy");
    CHECK_FALSE(copy.is_memory_mapped());
    std::uint64_t offset = 0;
    for (const auto& name : file.names()) {
      INFO(name);
      const auto& info = file.info(name);
      CHECK(info.dtype == DType::F32);
      CHECK(info.begin == offset);
      offset = info.end;
      const FloatTensor t = file.tensor(name);
      CHECK(static_cast<std::int64_t>(t.data.size()) == info.numel());
      CHECK(std::memcmp(t.data.data(), copy.tensor(name).data.data(), t.data.size() * sizeof(float)) == 0);
    }
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[static_cast<std::size_t>(i)];
    CHECK(8 + n + offset == bytes.size());
  }
}

TEST_CASE("io/safetensors: encoder layer reference file matches its README") {
  const auto file = SafetensorsFile::open(kEncoderFile);
  const auto names = file.names();
  REQUIRE(names.size() == 26);
  CHECK(names.front() == "self_attn.in_proj_weight");
  CHECK(names[1] == "self_attn.in_proj_bias");
  CHECK(names.back() == "intermediate.norm2");
  CHECK(fs::file_size(kEncoderFile) == 170132);
  CHECK(file.metadata_value("module") == std::optional<std::string>("torch.nn.TransformerEncoderLayer"));
  CHECK(file.metadata_value("activation") == std::optional<std::string>("relu"));
  CHECK(file.metadata_value("norm_first") == std::optional<std::string>("False"));

  const auto& info = file.info("self_attn.in_proj_weight");
  CHECK(info.shape == std::vector<std::int64_t>{192, 64});
  CHECK(info.begin == 0);
  CHECK(info.end == 49152);
  CHECK(file.info("input.src").shape == std::vector<std::int64_t>{2, 5, 64});
  CHECK(file.info("intermediate.linear1").shape == std::vector<std::int64_t>{2, 5, 128});

  // Values read with Python's struct module from the same file.
  const polyformer::Matrix w = file.matrix("self_attn.in_proj_weight", 192, 64);
  CHECK(w(0, 0) == -0.1404562145471573f);
  CHECK(w(0, 1) == 0.05291745066642761f);
  CHECK(w(0, 3) == -0.03229782357811928f);
  CHECK(file.matrix("self_attn.in_proj_weight") == w);
  const polyformer::Vector b = file.vector("self_attn.in_proj_bias");
  REQUIRE(b.size() == 192);
  CHECK(b(0) == -0.08864877372980118f);
  CHECK(b(191) == -0.008506417274475098f);
  CHECK(file.matrix("self_attn.in_proj_bias", 1, 192).row(0) == b.transpose());
  CHECK(file.vector("norm1.weight")(0) == 1.0540757179260254f);
  const FloatTensor last = file.tensor("intermediate.norm2");
  CHECK(last.data.front() == -1.15777587890625f);
  CHECK(last.data.back() == -0.9005401134490967f);

  // The causal mask: 0 on and below the diagonal, -inf above it.
  const polyformer::Matrix mask = file.matrix("input.src_mask_causal", 5, 5);
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 5; ++j) CHECK(mask(i, j) == (j > i ? -std::numeric_limits<float>::infinity() : 0.0f));
}

TEST_CASE("io/safetensors: shape checks on read name the file, tensor and shapes") {
  const auto file = SafetensorsFile::open(kEncoderFile);
  const std::string pre = "safetensors: " + kEncoderFile + ": ";
  CHECK_THROWS_AS(file.matrix("self_attn.in_proj_weight", 64, 192), shape_error);
  CHECK_THROWS_WITH(file.matrix("self_attn.in_proj_weight", 64, 192),
                    pre + "tensor 'self_attn.in_proj_weight' has shape (192, 64), expected (64, 192)");
  CHECK_THROWS_WITH(file.matrix("self_attn.in_proj_bias", 2, 96),
                    pre + "tensor 'self_attn.in_proj_bias' has shape (192), expected (2, 96)");
  CHECK_THROWS_AS(file.matrix("self_attn.in_proj_bias", 1, 191), shape_error);
  CHECK_THROWS_AS(file.matrix("input.src"), shape_error);
  CHECK_THROWS_WITH(file.matrix("input.src"), Contains("'input.src'") && Contains("(2, 5, 64)"));
  CHECK_THROWS_AS(file.vector("self_attn.in_proj_weight"), shape_error);
  CHECK_THROWS_WITH(file.vector("self_attn.in_proj_weight"), Contains("(192, 64)") && Contains("1-D"));
}

TEST_CASE("io/safetensors: a missing tensor names the file and the tensor") {
  const auto file = SafetensorsFile::open(kEncoderFile);
  CHECK_THROWS_AS(file.info("nope"), missing_error);
  CHECK_THROWS_WITH(file.info("nope"), "safetensors: " + kEncoderFile + ": no tensor named 'nope'");
  CHECK_THROWS_AS(file.tensor("nope"), missing_error);
  CHECK_THROWS_AS(file.matrix("nope"), missing_error);
  CHECK_THROWS_AS(file.matrix("nope", 1, 1), missing_error);
  CHECK_THROWS_AS(file.vector("nope"), missing_error);
  CHECK_THROWS_AS(file.raw_bytes("nope"), missing_error);
}

TEST_CASE("io/safetensors: a truncated reference file is rejected") {
  const auto bytes = polyformer::io::detail::read_file(kEncoderFile, "safetensors");
  REQUIRE(bytes.size() == 170132);
  const auto cut = [&](std::size_t n) {
    return SafetensorsFile::from_bytes(std::vector<unsigned char>(bytes.begin(), bytes.begin() + static_cast<long>(n)),
                                       "cut.st");
  };
  SECTION("last byte missing") {
    CHECK_THROWS_AS(cut(bytes.size() - 1), format_error);
    CHECK_THROWS_WITH(cut(bytes.size() - 1), Contains("safetensors: cut.st: ") && Contains("'intermediate.norm2'") &&
                                                 Contains("167308") && Contains("167307 bytes"));
  }
  SECTION("header only") { CHECK_THROWS_AS(cut(8 + 2816), format_error); }
  SECTION("inside the header") {
    CHECK_THROWS_AS(cut(100), format_error);
    CHECK_THROWS_WITH(cut(100), Contains("header length 2816"));
  }
  SECTION("inside the length field") {
    CHECK_THROWS_AS(cut(4), format_error);
    CHECK_THROWS_WITH(cut(4), Contains("4 bytes") && Contains("8-byte"));
  }
  SECTION("the untruncated copy loads") { CHECK(cut(bytes.size()).size() == 26); }
}

TEST_CASE("io/safetensors: opening a missing file names the path") {
  const std::string path = "/nonexistent-polyformer-dir/x.safetensors";
  CHECK_THROWS_AS(SafetensorsFile::open(path), format_error);
  CHECK_THROWS_WITH(SafetensorsFile::open(path), Contains("safetensors: " + path + ": cannot open"));
  CHECK_THROWS_AS(SafetensorsFile::open(kTorchDir), format_error);  // a directory
}

TEST_CASE("io/safetensors: SafetensorsFile is movable, not copyable") {
  STATIC_REQUIRE_FALSE(std::is_copy_constructible_v<SafetensorsFile>);
  STATIC_REQUIRE_FALSE(std::is_copy_assignable_v<SafetensorsFile>);
  STATIC_REQUIRE(std::is_nothrow_move_constructible_v<SafetensorsFile>);
  STATIC_REQUIRE(std::is_nothrow_move_assignable_v<SafetensorsFile>);
  auto a = SafetensorsFile::open(kEncoderFile);
  auto b = std::move(a);
  CHECK(b.vector("norm1.weight")(0) == 1.0540757179260254f);
  auto c = load(make_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", le32({7.0f})));
  c = std::move(b);  // unmaps c's buffer, takes b's map
  CHECK(c.names().size() == 26);
  CHECK(c.vector("norm1.weight")(0) == 1.0540757179260254f);
  auto d = load(make_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", le32({7.0f})));
  auto e = std::move(d);  // an owned buffer keeps its address across moves
  CHECK(e.vector("x")(0) == 7.0f);
}

// ---------------------------------------------------------------------------------------------------------
// F16 and BF16

TEST_CASE("io/safetensors: F16 converts exactly, including subnormals, inf and NaN") {
  const std::vector<std::uint16_t> words = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0xFC00, 0x7E00,
                                            0x8000, 0x03FF, 0x0400, 0x3555, 0x8001};
  const auto file = load(make_file(R"({"h":{"dtype":"F16","shape":[3,4],"data_offsets":[0,24]}})", le16(words)),
                         polyformer::io::NonFinite::accept);
  CHECK(file.info("h").dtype == DType::F16);
  const polyformer::Matrix m = file.matrix("h", 3, 4);
  CHECK(m(0, 0) == 1.0f);
  CHECK(m(0, 1) == -2.0f);
  CHECK(m(0, 2) == 65504.0f);
  CHECK(m(0, 3) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(m(1, 0) == std::numeric_limits<float>::infinity());
  CHECK(m(1, 1) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(m(1, 2)));
  CHECK(bits(m(1, 3)) == 0x80000000u);                  // -0
  CHECK(m(2, 0) == std::ldexp(1023.0f, -24));          // largest subnormal
  CHECK(m(2, 1) == std::ldexp(1.0f, -14));             // smallest normal
  CHECK(m(2, 2) == 0.333251953125f);                   // nearest half to 1/3
  CHECK(m(2, 3) == -std::ldexp(1.0f, -24));
}

TEST_CASE("io/safetensors: half_to_float matches an independent oracle on all 65536 inputs") {
  for (std::uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto w = static_cast<std::uint16_t>(h);
    const float got = polyformer::io::detail::half_to_float(w);
    const float want = half_oracle(w);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(got));
      REQUIRE((bits(got) >> 31) == (h >> 15));                   // sign kept
      REQUIRE((bits(got) & 0x7FFFFFu) == ((h & 0x3FFu) << 13));  // payload kept
    } else {
      REQUIRE(bits(got) == bits(want));
    }
  }
  STATIC_REQUIRE(polyformer::io::detail::half_to_float(0x3C00) == 1.0f);  // usable at compile time
}

TEST_CASE("io/safetensors: BF16 converts exactly") {
  const std::vector<std::uint16_t> words = {0x3F80, 0xC000, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x4049, 0x8000};
  const auto file = load(make_file(R"({"b":{"dtype":"BF16","shape":[8],"data_offsets":[0,16]}})", le16(words)),
                         polyformer::io::NonFinite::accept);
  CHECK(file.info("b").dtype == DType::BF16);
  const polyformer::Vector v = file.vector("b");
  CHECK(v(0) == 1.0f);
  CHECK(v(1) == -2.0f);
  CHECK(v(2) == std::numeric_limits<float>::infinity());
  CHECK(v(3) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(v(4)));
  CHECK(v(5) == std::ldexp(1.0f, -133));  // smallest bf16 subnormal
  CHECK(v(6) == 3.140625f);
  CHECK(bits(v(7)) == 0x80000000u);
  for (std::uint32_t b = 0; b <= 0xFFFF; ++b) {
    const auto w = static_cast<std::uint16_t>(b);
    const float got = polyformer::io::detail::bfloat16_to_float(w);
    const float want = bf16_oracle(w);
    if (std::isnan(want)) {
      REQUIRE(bits(got) == (b << 16));
    } else {
      REQUIRE(bits(got) == bits(want));
    }
  }
}

TEST_CASE("io/safetensors: F16/BF16 tensors holding NaN or Inf are refused by name unless accepted") {
  // Each: dtype, the words, what the message must name. The largest finite values pass.
  const std::vector<std::tuple<std::string, std::vector<std::uint16_t>, std::string>> cases{
      {"F16", {0x3C00, 0x7BFF, 0x7C00, 0x7E00}, "tensor 'w' (F16) holds +Inf at element 2"},
      {"F16", {0xFBFF, 0xFC00, 0x0000, 0x0000}, "tensor 'w' (F16) holds -Inf at element 1"},
      {"F16", {0x0000, 0x0000, 0x0000, 0xFE01}, "tensor 'w' (F16) holds NaN at element 3"},
      {"BF16", {0x7F7F, 0x7FC0, 0x3F80, 0x3F80}, "tensor 'w' (BF16) holds NaN at element 1"},
      {"BF16", {0xFF80, 0x0000, 0x0000, 0x0000}, "tensor 'w' (BF16) holds -Inf at element 0"},
      {"BF16", {0xFF7F, 0x0001, 0x8000, 0x7F81}, "tensor 'w' (BF16) holds NaN at element 3"}};
  for (const auto& [dtype, words, message] : cases) {
    INFO(message);
    const auto bytes = make_file(R"({"w":{"dtype":")" + dtype + R"(","shape":[2,2],"data_offsets":[0,8]}})", le16(words));
    const auto refusing = load(bytes);
    CHECK_THROWS_AS(refusing.tensor("w"), format_error);
    CHECK_THROWS_WITH(refusing.tensor("w"), Catch::Contains("safetensors: mem.st: " + message));
    CHECK_THROWS_WITH(refusing.matrix("w"), Contains(message));
    CHECK_THROWS_WITH(refusing.matrix("w", 2, 2), Contains(message));
    const auto accepting = load(bytes, polyformer::io::NonFinite::accept);
    const FloatTensor t = accepting.tensor("w");
    CHECK(std::count_if(t.data.begin(), t.data.end(), [](float v) { return !std::isfinite(v); }) >= 1);
  }
  // Finite extremes of both formats are not refused.
  const auto finite = load(make_file(R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
                                     R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]}})",
                                     le16({0x7BFF, 0xFBFF, 0x7F7F, 0xFF7F})));
  CHECK(finite.vector("a")(0) == 65504.0f);
  CHECK(finite.vector("b")(1) == -std::ldexp(255.0f, 120));  // the largest finite bf16, negated
}

TEST_CASE("io/safetensors: mixed dtypes at unaligned offsets") {
  // F16 [1] at [0, 2), F32 [2] at [2, 10) (not 4-aligned), BF16 [1] at [10, 12).
  std::vector<unsigned char> data = le16({0x3C00});
  const auto f = le32({1.5f, -3.0f});
  data.insert(data.end(), f.begin(), f.end());
  const auto g = le16({0x4049});
  data.insert(data.end(), g.begin(), g.end());
  const auto file = load(make_file(R"({"c":{"dtype":"BF16","shape":[1],"data_offsets":[10,12]},)"
                                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[2,10]},)"
                                   R"("a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})",
                                   data));
  CHECK(file.names() == std::vector<std::string>{"a", "b", "c"});  // offset order, not header order
  CHECK(file.vector("a")(0) == 1.0f);
  CHECK(file.vector("b")(1) == -3.0f);
  CHECK(file.vector("c")(0) == 3.140625f);
  CHECK(file.raw_bytes("b").size() == 8);
  CHECK(polyformer::io::dtype_name(file.info("c").dtype) == "BF16");
  CHECK(polyformer::io::dtype_name(DType::F16) == "F16");
  CHECK(polyformer::io::dtype_name(DType::F32) == "F32");
}

// ---------------------------------------------------------------------------------------------------------
// Malformed files, built in memory

TEST_CASE("io/safetensors: rejects a file shorter than 8 bytes") {
  CHECK_THROWS_AS(load({}), format_error);
  CHECK_THROWS_AS(load({1, 2, 3}), format_error);
  CHECK_THROWS_WITH(load({1, 2, 3}),
                    Contains("safetensors: mem.st: ") && Contains("3 bytes") && Contains("8-byte header length"));
}

TEST_CASE("io/safetensors: rejects a header length past the end of the file") {
  const auto bytes = make_file("{}", {}, 1000);
  CHECK_THROWS_AS(load(bytes), format_error);
  CHECK_THROWS_WITH(load(bytes), Contains("header length 1000") && Contains("file is 10 bytes"));
  const auto huge = make_file("{}", {}, std::numeric_limits<std::uint64_t>::max());  // 8 + N would overflow
  CHECK_THROWS_WITH(load(huge), Contains("header length 18446744073709551615") && Contains("past the end"));
  const auto off_by_one = make_file("{}", {}, 3);
  CHECK_THROWS_WITH(load(off_by_one), Contains("header length 3"));
}

TEST_CASE("io/safetensors: rejects a header that is not valid JSON") {
  CHECK_THROWS_AS(load(make_file(R"({"w": )")), format_error);
  CHECK_THROWS_WITH(load(make_file(R"({"w": )")), Contains("safetensors: mem.st: ") && Contains("not valid JSON"));
  CHECK_THROWS_WITH(load(make_file(std::string("{}\0\0", 4))), Contains("not valid JSON") && Contains("NUL"));
  CHECK_THROWS_WITH(load(make_file(std::string("{}\0{\"a\":1}", 10))), Contains("NUL byte at header offset 2"));
  CHECK_THROWS_WITH(load(make_file("{\"\xFF\":{}}")), Contains("not valid JSON"));           // not UTF-8
  CHECK_THROWS_WITH(load(make_file("")), Contains("not valid JSON"));
}

TEST_CASE("io/safetensors: rejects a header that is not a JSON object") {
  CHECK_THROWS_AS(load(make_file("[1, 2]")), format_error);
  CHECK_THROWS_WITH(load(make_file("[1, 2]")), Contains("not a JSON object") && Contains("array"));
  CHECK_THROWS_WITH(load(make_file("\"x\"    ")), Contains("not a JSON object") && Contains("string"));
}

TEST_CASE("io/safetensors: rejects an entry that is not an object") {
  CHECK_THROWS_AS(load(one_entry("5")), format_error);
  CHECK_THROWS_WITH(load(one_entry("5")), Contains("tensor 'w'") && Contains("not a JSON object"));
  CHECK_THROWS_WITH(load(one_entry("[0, 8]")), Contains("tensor 'w'") && Contains("array"));
}

TEST_CASE("io/safetensors: rejects an entry with a missing field") {
  SECTION("dtype") {
    CHECK_THROWS_AS(load(one_entry(R"({"shape":[2],"data_offsets":[0,8]})")), format_error);
    CHECK_THROWS_WITH(load(one_entry(R"({"shape":[2],"data_offsets":[0,8]})")),
                      Contains("tensor 'w'") && Contains("missing 'dtype'"));
  }
  SECTION("shape") {
    CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","data_offsets":[0,8]})")),
                      Contains("tensor 'w'") && Contains("missing 'shape'"));
  }
  SECTION("data_offsets") {
    CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[2]})")),
                      Contains("tensor 'w'") && Contains("missing 'data_offsets'"));
  }
}

TEST_CASE("io/safetensors: rejects an entry with a wrongly typed field") {
  SECTION("dtype is a number") {
    CHECK_THROWS_AS(load(one_entry(R"({"dtype":32,"shape":[2],"data_offsets":[0,8]})")), format_error);
    CHECK_THROWS_WITH(load(one_entry(R"({"dtype":32,"shape":[2],"data_offsets":[0,8]})")),
                      Contains("tensor 'w'") && Contains("'dtype' is not a string") && Contains("number"));
  }
  SECTION("shape is not an array") {
    CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})")),
                      Contains("tensor 'w'") && Contains("'shape' is not an array"));
  }
  SECTION("shape entry is a float") {
    CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})")),
                      Contains("tensor 'w'") && Contains("shape entry 0 is not an integer"));
  }
  SECTION("shape entry is a string") {
    CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})")),
                      Contains("shape entry 0 is not an integer"));
  }
  SECTION("data_offsets has three entries") {
    CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,8]})")),
                      Contains("tensor 'w'") && Contains("'data_offsets' is not two non-negative integers") &&
                          Contains("[0,8,8]"));
  }
  SECTION("data_offsets is an object") {
    CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[2],"data_offsets":{"a":0}})")),
                      Contains("'data_offsets' is not two non-negative integers"));
  }
  SECTION("data_offsets is negative") {
    CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})")),
                      Contains("'data_offsets' is not two non-negative integers"));
  }
  SECTION("data_offsets entry is a float") {
    CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8.0]})")),
                      Contains("'data_offsets' is not two non-negative integers"));
  }
}

TEST_CASE("io/safetensors: rejects an unknown dtype, naming it and the tensor") {
  CHECK_THROWS_AS(load(one_entry(R"({"dtype":"F64","shape":[1],"data_offsets":[0,8]})")), format_error);
  CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F64","shape":[1],"data_offsets":[0,8]})")),
                    Contains("tensor 'w'") && Contains("unsupported dtype 'F64'") && Contains("F32, F16, BF16"));
  CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"f32","shape":[2],"data_offsets":[0,8]})")),
                    Contains("dtype 'f32'"));  // case matters
}

TEST_CASE("io/safetensors: I32 and I64 tensors read as integers, refused where floats are read") {
  std::vector<unsigned char> data;
  const auto put = [&](std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) data.push_back(static_cast<unsigned char>(v >> (8 * i)));
  };
  put(7, 4);
  put(static_cast<std::uint32_t>(-3), 4);                 // I32: 7, -3
  put(static_cast<std::uint64_t>(1) << 40, 8);            // I64: 2^40, -1
  put(static_cast<std::uint64_t>(-1), 8);
  const auto f32 = le32({5.0f, 2.5f});
  data.insert(data.end(), f32.begin(), f32.end());
  const auto file = load(make_file(R"({"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},)"
                                   R"("b":{"dtype":"I64","shape":[2],"data_offsets":[8,24]},)"
                                   R"("c":{"dtype":"F32","shape":[2],"data_offsets":[24,32]}})",
                                   data));
  CHECK(file.integers("a") == std::vector<std::int64_t>{7, -3});
  CHECK(file.integers("b") == std::vector<std::int64_t>{std::int64_t{1} << 40, -1});
  CHECK_THROWS_WITH(file.integers("c"), Contains("tensor 'c' element 1 is 2.5, expected a whole number"));
  CHECK_THROWS_WITH(file.tensor("a"), Contains("tensor 'a' is I32, expected a floating-point tensor"));
  CHECK_THROWS_WITH(file.matrix("b"), Contains("tensor 'b' is I64, expected a floating-point tensor"));
  CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"I64","shape":[2],"data_offsets":[0,8]})")),
                    Contains("tensor 'w'"));  // 2 × 8 bytes do not fit 8
}

TEST_CASE("io/safetensors: rejects negative shape entries") {
  CHECK_THROWS_AS(load(one_entry(R"({"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]})")), format_error);
  CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]})")),
                    Contains("tensor 'w'") && Contains("shape entry 1 is -1, expected >= 0"));
}

TEST_CASE("io/safetensors: rejects begin > end") {
  CHECK_THROWS_AS(load(one_entry(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})")), format_error);
  CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})")),
                    Contains("tensor 'w'") && Contains("[8, 4]") && Contains("begin > end"));
}

TEST_CASE("io/safetensors: rejects data_offsets past the data section") {
  CHECK_THROWS_AS(load(one_entry(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})")), format_error);
  CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})")),
                    Contains("tensor 'w'") && Contains("[0, 16]") && Contains("data section of 8 bytes"));
  // Offsets near 2^64 must not wrap around.
  CHECK_THROWS_WITH(
      load(one_entry(R"({"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,18446744073709551615]})")),
      Contains("past the data section"));
}

TEST_CASE("io/safetensors: rejects overlapping tensors") {
  const auto bytes = make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               std::vector<unsigned char>(12, 0));
  CHECK_THROWS_AS(load(bytes), format_error);
  CHECK_THROWS_WITH(load(bytes), Contains("'a'") && Contains("[0, 8]") && Contains("'b'") && Contains("[4, 12]") &&
                                     Contains("overlap"));
  // A tensor nested inside a longer one, listed after a third tensor further on.
  const auto nested = make_file(R"({"long":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                R"("inner":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
                                R"("after":{"dtype":"F32","shape":[1],"data_offsets":[16,20]}})",
                                std::vector<unsigned char>(20, 0));
  CHECK_THROWS_WITH(load(nested), Contains("'long'") && Contains("'inner'") && Contains("overlap"));
  // Same range twice.
  const auto same = make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                              R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                              std::vector<unsigned char>(4, 0));
  CHECK_THROWS_WITH(load(same), Contains("overlap"));
}

TEST_CASE("io/safetensors: accepts gaps and empty tensors that take no bytes") {
  const auto bytes = make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                               R"("e":{"dtype":"F16","shape":[0,3],"data_offsets":[2,2]},)"
                               R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                               le32({1.0f, 0.0f, 2.0f, 0.0f}));
  const auto file = load(bytes);
  CHECK(file.names() == std::vector<std::string>{"a", "e", "b"});
  CHECK(file.vector("b")(0) == 2.0f);
  CHECK(file.tensor("e").data.empty());
  CHECK(file.matrix("e").rows() == 0);
}

TEST_CASE("io/safetensors: rejects a byte count that does not match the shape") {
  const auto bytes = one_entry(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})");
  CHECK_THROWS_AS(load(bytes), format_error);
  CHECK_THROWS_WITH(load(bytes), Contains("tensor 'w'") && Contains("shape (3)") && Contains("F32") &&
                                     Contains("needs 12 bytes (expected)") && Contains("hold 8 bytes (found)"));
  // F16 counts two bytes per element.
  CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F16","shape":[2],"data_offsets":[0,8]})")),
                    Contains("needs 4 bytes") && Contains("F16"));
}

TEST_CASE("io/safetensors: rejects a shape whose element count overflows") {
  // 2^32 · 2^32 = 2^64 elements wraps to 0 in uint64: it must not be accepted for an empty range.
  CHECK_THROWS_AS(load(one_entry(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]})")),
                  format_error);
  CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]})")),
                    Contains("tensor 'w'") && Contains("overflow"));
  // numel fits but numel · 4 does not.
  CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]})")),
                    Contains("overflow"));
  // Beyond int64.
  CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,0]})")),
                    Contains("overflow"));
}

TEST_CASE("io/safetensors: rejects __metadata__ that is not an object of strings") {
  CHECK_THROWS_AS(load(make_file(R"({"__metadata__":5})")), format_error);
  CHECK_THROWS_WITH(load(make_file(R"({"__metadata__":5})")), Contains("__metadata__ is not a JSON object"));
  CHECK_THROWS_WITH(load(make_file(R"({"__metadata__":{"k":"v","n":4}})")),
                    Contains("__metadata__ value for key 'n' is not a string") && Contains("number"));
  CHECK_THROWS_WITH(load(make_file(R"({"__metadata__":{"k":{"a":"b"}}})")),
                    Contains("key 'k'") && Contains("object"));
  CHECK(load(make_file(R"({"__metadata__":{}})")).metadata().empty());
}

TEST_CASE("io/safetensors: rejects duplicate keys in the header") {
  const auto bytes = make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                               R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                               std::vector<unsigned char>(8, 0));
  CHECK_THROWS_AS(load(bytes), format_error);
  CHECK_THROWS_WITH(load(bytes), Contains("duplicate key 'a'"));
  CHECK_THROWS_WITH(load(one_entry(R"({"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]})")),
                    Contains("duplicate key 'dtype'"));
}
