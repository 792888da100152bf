// Tests for polyformer/io/llama2c.hpp: the shared stories260K checkpoint checked against floats decoded
// here straight from its bytes, version-1 and version-2 files produced by a writer in this file (with its
// own Q8_0 quantizer), the legacy unshared classifier, and one test per kind of malformed file.
#include "polyformer/io/llama2c.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "support.hpp"

namespace pf = polyformer;

namespace {

using Catch::Contains;
using pf::config_error;
using pf::format_error;
using pf::Index;
using pf::Matrix;
using pf::Vector;
using pf::io::LlamaWeights;
using pf::io::parse_llama2c;

using Bytes = std::vector<unsigned char>;

constexpr std::uint32_t kMagic = 0x616b3432u;  // "ak42"
constexpr std::size_t kStoriesBytes = 1056540;

// Float offsets (counted after the 28-byte legacy header) of each tensor in stories260K.bin, worked out by
// hand from the layout in shared/models/README.md with V=512, D=64, L=5, KV=32, H=172, S=512, head=8.
constexpr std::size_t kEmb = 0;                        // V*D = 32768 floats
constexpr std::size_t kAttNorm = kEmb + 512 * 64;      // 32768, L*D = 320
constexpr std::size_t kWq = kAttNorm + 5 * 64;         // 33088, L*D*D = 20480
constexpr std::size_t kWk = kWq + 5 * 64 * 64;         // 53568, L*KV*D = 10240
constexpr std::size_t kWv = kWk + 5 * 32 * 64;         // 63808
constexpr std::size_t kWo = kWv + 5 * 32 * 64;         // 74048, L*D*D
constexpr std::size_t kFfnNorm = kWo + 5 * 64 * 64;    // 94528, L*D
constexpr std::size_t kW1 = kFfnNorm + 5 * 64;         // 94848, L*H*D = 55040
constexpr std::size_t kW2 = kW1 + 5 * 172 * 64;        // 149888
constexpr std::size_t kW3 = kW2 + 5 * 64 * 172;        // 204928
constexpr std::size_t kFinal = kW3 + 5 * 172 * 64;     // 259968, D
constexpr std::size_t kRope = kFinal + 64;             // 260032, S*head = 4096
constexpr std::size_t kEnd = kRope + 512 * 8;          // 264128
static_assert(28 + 4 * kEnd == kStoriesBytes, "offsets disagree with the README's size check");

// Little-endian decoding and encoding, written here so the expectations do not lean on the reader.
std::int32_t i32_at(const Bytes& b, std::size_t at) { return std::bit_cast<std::int32_t>(pft::u32_at(b, at)); }
float f32_at(const Bytes& b, std::size_t at) { return std::bit_cast<float>(pft::u32_at(b, at)); }

void put_u32(Bytes& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}
void put_i32(Bytes& out, std::int32_t v) { put_u32(out, std::bit_cast<std::uint32_t>(v)); }
void put_f32s(Bytes& out, const std::vector<float>& values) {
  for (float f : values) put_u32(out, std::bit_cast<std::uint32_t>(f));
}
void set_i32(Bytes& b, std::size_t at, std::int32_t v) {
  const auto u = std::bit_cast<std::uint32_t>(v);
  for (int i = 0; i < 4; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<unsigned char>(u >> (8 * i));
}

/// The seven header integers in file order.
struct Dims {
  std::int32_t dim, hidden, layers, heads, kv_heads, vocab, seq_len;
};

/// Every parameter of a model as flat floats: layers stacked one after another, matrices row-major.
struct RawModel {
  Dims d{};
  std::vector<float> embedding, attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3, final_norm, rope, classifier;

  std::size_t D() const { return std::size_t(d.dim); }
  std::size_t H() const { return std::size_t(d.hidden); }
  std::size_t L() const { return std::size_t(d.layers); }
  std::size_t V() const { return std::size_t(std::abs(d.vocab)); }
  std::size_t head() const { return std::size_t(d.dim / d.heads); }
  std::size_t KV() const { return std::size_t(d.kv_heads) * head(); }
};

/// Decodes a legacy file with a positive vocab_size by walking the README layout.
RawModel raw_from_legacy(const Bytes& b) {
  REQUIRE(b.size() >= 28);
  RawModel m;
  m.d = {i32_at(b, 0), i32_at(b, 4), i32_at(b, 8), i32_at(b, 12), i32_at(b, 16), i32_at(b, 20), i32_at(b, 24)};
  REQUIRE(m.d.vocab > 0);
  std::size_t at = 28;
  const auto take = [&](std::vector<float>& dst, std::size_t n) {
    REQUIRE(at + 4 * n <= b.size());
    dst.resize(n);
    for (std::size_t i = 0; i < n; ++i) dst[i] = f32_at(b, at + 4 * i);
    at += 4 * n;
  };
  const std::size_t V = m.V(), D = m.D(), L = m.L(), H = m.H(), KV = m.KV();
  take(m.embedding, V * D);
  take(m.attn_norm, L * D);
  take(m.wq, L * D * D);
  take(m.wk, L * KV * D);
  take(m.wv, L * KV * D);
  take(m.wo, L * D * D);
  take(m.ffn_norm, L * D);
  take(m.w1, L * H * D);
  take(m.w2, L * D * H);
  take(m.w3, L * H * D);
  take(m.final_norm, D);
  take(m.rope, std::size_t(m.d.seq_len) * m.head());
  REQUIRE(at == b.size());
  return m;
}

std::vector<float> random_floats(std::size_t n, std::mt19937& rng, float sd = 0.5f) {
  std::normal_distribution<float> dist(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

/// A small random model (with a classifier of its own) for the shapes stories260K does not have.
RawModel random_model(unsigned seed) {
  std::mt19937 rng(seed);
  RawModel m;
  m.d = {16, 24, 2, 4, 2, 10, 8};
  const std::size_t V = m.V(), D = m.D(), L = m.L(), H = m.H(), KV = m.KV();
  m.embedding = random_floats(V * D, rng);
  m.attn_norm = random_floats(L * D, rng);
  m.wq = random_floats(L * D * D, rng);
  m.wk = random_floats(L * KV * D, rng);
  m.wv = random_floats(L * KV * D, rng);
  m.wo = random_floats(L * D * D, rng);
  m.ffn_norm = random_floats(L * D, rng);
  m.w1 = random_floats(L * H * D, rng);
  m.w2 = random_floats(L * D * H, rng);
  m.w3 = random_floats(L * H * D, rng);
  m.final_norm = random_floats(D, rng);
  m.classifier = random_floats(V * D, rng);
  std::fill(m.wv.begin(), m.wv.begin() + 32, 0.0f);  // an all-zero group: its scale is 0
  m.wo[5] = 1e6f;                                     // one outlier dominating its group
  return m;
}

/// The 256-byte versioned header; the group size is only written for version 2.
Bytes versioned_header(std::int32_t version, const Dims& d, unsigned char shared_flag, std::int32_t group_size = 0) {
  Bytes out;
  put_u32(out, kMagic);
  put_i32(out, version);
  for (std::int32_t v : {d.dim, d.hidden, d.layers, d.heads, d.kv_heads, d.vocab, d.seq_len}) put_i32(out, v);
  out.push_back(shared_flag);
  if (version == 2) put_i32(out, group_size);
  out.resize(256, 0);
  return out;
}

/// The matrices of a versioned file in stored order; each stacked vector holds its per-layer tensors.
std::vector<const std::vector<float>*> versioned_matrices(const RawModel& m, bool shared) {
  std::vector<const std::vector<float>*> out = {&m.embedding, &m.wq, &m.wk, &m.wv, &m.wo, &m.w1, &m.w2, &m.w3};
  if (!shared) out.push_back(&m.classifier);
  return out;
}

Bytes write_v1(const RawModel& m, bool shared) {
  Bytes out = versioned_header(1, m.d, shared ? 1 : 0);
  put_f32s(out, m.attn_norm);
  put_f32s(out, m.ffn_norm);
  put_f32s(out, m.final_norm);
  for (const auto* t : versioned_matrices(m, shared)) put_f32s(out, *t);
  return out;
}

/// Symmetric int8 quantization over groups of `group` consecutive values.
struct Quantized {
  std::vector<std::int8_t> q;
  std::vector<float> scale;
  std::vector<float> dequantized;  // q * scale, computed in float as a reader would
};

Quantized quantize(const std::vector<float>& w, std::size_t group) {
  REQUIRE(w.size() % group == 0);
  Quantized out;
  out.q.resize(w.size());
  out.dequantized.resize(w.size());
  std::size_t out_of_range = 0;
  for (std::size_t g = 0; g < w.size(); g += group) {
    float wmax = 0.0f;
    for (std::size_t i = g; i < g + group; ++i) wmax = std::max(wmax, std::fabs(w[i]));
    const float scale = wmax / 127.0f;
    out.scale.push_back(scale);
    for (std::size_t i = g; i < g + group; ++i) {
      const long q = scale > 0.0f ? std::lround(w[i] / scale) : 0L;
      if (q < -127 || q > 127) ++out_of_range;
      out.q[i] = static_cast<std::int8_t>(q);
      out.dequantized[i] = static_cast<float>(out.q[i]) * scale;
    }
  }
  REQUIRE(out_of_range == 0);
  return out;
}

/// True when every per-layer tensor splits into whole groups, so quantizing the stacked vectors group by
/// group is the same as quantizing each tensor on its own.
bool groups_align(const RawModel& m, std::size_t group) {
  const std::size_t D = m.D(), H = m.H(), KV = m.KV();
  for (std::size_t n : {m.V() * D, D * D, KV * D, H * D})
    if (n % group != 0) return false;
  return true;
}

/// A version-2 file and, per stored matrix, what the reader must produce for it.
struct V2File {
  Bytes bytes;
  std::vector<Quantized> quantized;  // same order as versioned_matrices()
};

V2File write_v2(const RawModel& m, bool shared, std::int32_t group) {
  REQUIRE(groups_align(m, std::size_t(group)));
  V2File f;
  f.bytes = versioned_header(2, m.d, shared ? 1 : 0, group);
  put_f32s(f.bytes, m.attn_norm);
  put_f32s(f.bytes, m.ffn_norm);
  put_f32s(f.bytes, m.final_norm);
  const auto matrices = versioned_matrices(m, shared);
  for (const auto* t : matrices) f.quantized.push_back(quantize(*t, std::size_t(group)));
  // As llama2.c's export.py writes them (and runq.c reads them): each tensor's int8 values, then its scales.
  // The per-layer kinds are stacked here; groups never straddle two layers (groups_align).
  for (std::size_t k = 0; k < matrices.size(); ++k) {
    const Quantized& q = f.quantized[k];
    const bool per_layer = matrices[k] != &m.embedding && matrices[k] != &m.classifier;
    const std::size_t tensors = per_layer ? m.L() : 1, each = q.q.size() / tensors, g = std::size_t(group);
    for (std::size_t t = 0; t < tensors; ++t) {
      for (std::size_t i = t * each; i < (t + 1) * each; ++i) f.bytes.push_back(static_cast<unsigned char>(q.q[i]));
      put_f32s(f.bytes, std::vector<float>(q.scale.begin() + std::ptrdiff_t(t * each / g),
                                           q.scale.begin() + std::ptrdiff_t((t + 1) * each / g)));
    }
  }
  return f;
}

// Per-layer tensors laid end to end, matching the stacked reference vectors.
template <typename M>
std::vector<float> flatten(const std::vector<M>& ms) {
  std::vector<float> out;
  for (const auto& m : ms) out.insert(out.end(), m.data(), m.data() + m.size());
  return out;
}
template <typename M>
std::vector<float> flatten(const M& m) {
  return std::vector<float>(m.data(), m.data() + m.size());
}

/// How many values differ (exact comparison); the maximum size_t when the lengths differ.
std::size_t mismatches(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return std::numeric_limits<std::size_t>::max();
  std::size_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) bad += got[i] != want[i] ? 1 : 0;
  return bad;
}

/// Shapes of everything the reader returns, from the header integers alone.
void check_shapes(const LlamaWeights& w, const RawModel& m, bool shared) {
  const Index V = Index(m.V()), D = Index(m.D()), H = Index(m.H()), KV = Index(m.KV());
  const std::size_t L = m.L();
  CHECK(w.token_embedding.rows() == V);
  CHECK(w.token_embedding.cols() == D);
  REQUIRE(w.attn_norm.size() == L);
  REQUIRE(w.ffn_norm.size() == L);
  for (auto* layers : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w1, &w.w2, &w.w3}) REQUIRE(layers->size() == L);
  for (std::size_t l = 0; l < L; ++l) {
    INFO("layer " << l);
    CHECK(w.attn_norm[l].size() == D);
    CHECK(w.ffn_norm[l].size() == D);
    CHECK((w.wq[l].rows() == D && w.wq[l].cols() == D));
    CHECK((w.wk[l].rows() == KV && w.wk[l].cols() == D));
    CHECK((w.wv[l].rows() == KV && w.wv[l].cols() == D));
    CHECK((w.wo[l].rows() == D && w.wo[l].cols() == D));
    CHECK((w.w1[l].rows() == H && w.w1[l].cols() == D));
    CHECK((w.w2[l].rows() == D && w.w2[l].cols() == H));
    CHECK((w.w3[l].rows() == H && w.w3[l].cols() == D));
  }
  CHECK(w.final_norm.size() == D);
  if (shared) {
    CHECK(w.classifier.size() == 0);
  } else {
    CHECK((w.classifier.rows() == V && w.classifier.cols() == D));
  }
}

/// Every value of `w` equals the reference (norms always; matrices given in versioned order).
void check_norms(const LlamaWeights& w, const RawModel& m) {
  CHECK(mismatches(flatten(w.attn_norm), m.attn_norm) == 0);
  CHECK(mismatches(flatten(w.ffn_norm), m.ffn_norm) == 0);
  CHECK(mismatches(flatten(w.final_norm), m.final_norm) == 0);
}

std::vector<std::vector<float>> loaded_matrices(const LlamaWeights& w, bool shared) {
  std::vector<std::vector<float>> out = {flatten(w.token_embedding), flatten(w.wq), flatten(w.wk), flatten(w.wv),
                                         flatten(w.wo),              flatten(w.w1), flatten(w.w2), flatten(w.w3)};
  if (!shared) out.push_back(flatten(w.classifier));
  return out;
}

void check_config(const pf::io::LlamaConfig& c, const Dims& d, bool shared) {
  CHECK(c.dim == d.dim);
  CHECK(c.hidden_dim == d.hidden);
  CHECK(c.n_layers == d.layers);
  CHECK(c.n_heads == d.heads);
  CHECK(c.n_kv_heads == d.kv_heads);
  CHECK(c.vocab_size == std::abs(d.vocab));
  CHECK(c.seq_len == d.seq_len);
  CHECK(c.shared_classifier == shared);
}

/// A legacy header alone; enough to reach the config checks, which come before the size check.
Bytes legacy_header(const Dims& d) {
  Bytes out;
  for (std::int32_t v : {d.dim, d.hidden, d.layers, d.heads, d.kv_heads, d.vocab, d.seq_len}) put_i32(out, v);
  return out;
}

const Dims kStoriesDims{64, 172, 5, 8, 4, 512, 512};

LlamaWeights parse(const Bytes& b) { return parse_llama2c(b, "mem.bin"); }

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// The shared stories260K checkpoint (legacy format)

TEST_CASE("io/llama2c: stories260K.bin loads with the README config", "[io][llama2c]") {
  const std::string path = pft::shared_path("models/stories260K.bin");
  const LlamaWeights w = pf::io::read_llama2c(path);
  CHECK(w.version == 0);
  CHECK(w.group_size == 0);
  const auto& c = w.config;
  CHECK(c.dim == 64);
  CHECK(c.hidden_dim == 172);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.vocab_size == 512);
  CHECK(c.seq_len == 512);
  CHECK(c.shared_classifier);
  CHECK(c.head_dim() == 8);
  CHECK(c.kv_dim() == 32);
  CHECK(c.norm_eps == 1e-5f);
  CHECK(c.rope_theta == 10000.0f);
  CHECK_NOTHROW(c.validate("stories260K"));

  const Bytes bytes = pft::read_bytes(path);
  REQUIRE(bytes.size() == kStoriesBytes);
  check_shapes(w, raw_from_legacy(bytes), true);
}

TEST_CASE("io/llama2c: stories260K values match floats read at hand-computed offsets", "[io][llama2c]") {
  const std::string path = pft::shared_path("models/stories260K.bin");
  const Bytes bytes = pft::read_bytes(path);
  REQUIRE(bytes.size() == kStoriesBytes);
  const auto at = [&](std::size_t i) { return f32_at(bytes, 28 + 4 * i); };
  const LlamaWeights w = pf::io::read_llama2c(path);
  REQUIRE(w.token_embedding.rows() == 512);
  REQUIRE(w.w3.size() == 5);

  struct Spot {
    const char* what;
    float got, want;
  };
  const Spot spots[] = {
      {"token_embedding first", w.token_embedding(0, 0), at(kEmb)},
      {"token_embedding last", w.token_embedding(511, 63), at(kAttNorm - 1)},
      {"token_embedding(3, 17)", w.token_embedding(3, 17), at(kEmb + 3 * 64 + 17)},
      {"attn_norm[2](5)", w.attn_norm[2](5), at(kAttNorm + 2 * 64 + 5)},
      {"wq[0](0, 0)", w.wq[0](0, 0), at(kWq)},
      {"wq[4](63, 63)", w.wq[4](63, 63), at(kWk - 1)},
      {"wk[1](3, 7)", w.wk[1](3, 7), at(kWk + 1 * 32 * 64 + 3 * 64 + 7)},
      {"wv[4] last", w.wv[4](31, 63), at(kWo - 1)},
      {"wo[3](10, 20)", w.wo[3](10, 20), at(kWo + 3 * 64 * 64 + 10 * 64 + 20)},
      {"ffn_norm[4](0)", w.ffn_norm[4](0), at(kFfnNorm + 4 * 64)},
      {"w1[2](100, 5)", w.w1[2](100, 5), at(kW1 + 2 * 172 * 64 + 100 * 64 + 5)},
      {"w2[3](10, 100)", w.w2[3](10, 100), at(kW2 + 3 * 64 * 172 + 10 * 172 + 100)},
      {"w3[0](0, 0)", w.w3[0](0, 0), at(kW3)},
      {"w3[4] last", w.w3[4](171, 63), at(kFinal - 1)},
      {"final_norm first", w.final_norm(0), at(kFinal)},
      {"final_norm last", w.final_norm(63), at(kRope - 1)},
  };
  for (const Spot& s : spots) {
    INFO(s.what);
    CHECK(s.want != 0.0f);  // a real weight, so the comparison means something
    CHECK(std::isfinite(s.want));
    CHECK(std::bit_cast<std::uint32_t>(s.got) == std::bit_cast<std::uint32_t>(s.want));
  }

  // Every value, against the independent walk of the README layout.
  const RawModel m = raw_from_legacy(bytes);
  check_norms(w, m);
  const auto got = loaded_matrices(w, true);
  const auto want = versioned_matrices(m, true);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("matrix " << i << " in versioned order");
    CHECK(mismatches(got[i], *want[i]) == 0);
  }
}

TEST_CASE("io/llama2c: parse_llama2c on the bytes matches read_llama2c on the path", "[io][llama2c]") {
  const std::string path = pft::shared_path("models/stories260K.bin");
  const LlamaWeights a = pf::io::read_llama2c(path);
  const LlamaWeights b = parse_llama2c(pft::read_bytes(path), "copy");
  CHECK(mismatches(flatten(a.token_embedding), flatten(b.token_embedding)) == 0);
  CHECK(mismatches(flatten(a.w2), flatten(b.w2)) == 0);
  CHECK(mismatches(flatten(a.final_norm), flatten(b.final_norm)) == 0);
}

TEST_CASE("io/llama2c: a legacy file with negative vocab_size loads the classifier after the RoPE tables",
          "[io][llama2c]") {
  Bytes bytes = pft::read_bytes(pft::shared_path("models/stories260K.bin"));
  REQUIRE(bytes.size() == kStoriesBytes);
  const RawModel m = raw_from_legacy(bytes);
  set_i32(bytes, 20, -512);  // vocab_size field: negative means "classifier stored"
  std::mt19937 rng(7);
  const std::vector<float> cls = random_floats(512 * 64, rng);

  SECTION("with the classifier appended") {
    put_f32s(bytes, cls);
    const LlamaWeights w = parse(bytes);
    CHECK(w.version == 0);
    check_config(w.config, kStoriesDims, false);
    check_shapes(w, m, false);
    CHECK(mismatches(flatten(w.classifier), cls) == 0);
    CHECK(mismatches(flatten(w.token_embedding), m.embedding) == 0);
    CHECK(mismatches(flatten(w.final_norm), m.final_norm) == 0);
    CHECK(mismatches(flatten(w.w3), m.w3) == 0);
  }
  SECTION("without it the size is wrong") {
    CHECK_THROWS_AS(parse(bytes), format_error);
    CHECK_THROWS_WITH(parse(bytes), Contains("file has 1056540 bytes, expected 1187612"));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Version 1 (fp32) and version 2 (Q8_0) files written here

TEST_CASE("io/llama2c: a version-1 file reproduces every weight exactly", "[io][llama2c]") {
  RawModel m = raw_from_legacy(pft::read_bytes(pft::shared_path("models/stories260K.bin")));
  const bool shared = GENERATE(true, false);
  INFO("shared classifier " << shared);
  if (!shared) {
    std::mt19937 rng(11);
    m.classifier = random_floats(m.V() * m.D(), rng);
  }
  const Bytes bytes = write_v1(m, shared);
  const std::size_t floats = m.attn_norm.size() + m.ffn_norm.size() + m.final_norm.size() + m.embedding.size() +
                             m.wq.size() + m.wk.size() + m.wv.size() + m.wo.size() + m.w1.size() + m.w2.size() +
                             m.w3.size() + (shared ? 0 : m.classifier.size());
  REQUIRE(bytes.size() == 256 + 4 * floats);

  const LlamaWeights w = parse(bytes);
  CHECK(w.version == 1);
  check_config(w.config, m.d, shared);
  check_shapes(w, m, shared);
  check_norms(w, m);
  const auto got = loaded_matrices(w, shared);
  const auto want = versioned_matrices(m, shared);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("matrix " << i << " in versioned order");
    CHECK(mismatches(got[i], *want[i]) == 0);
  }
}

TEST_CASE("io/llama2c: a version-1 file of a small random model with its own classifier", "[io][llama2c]") {
  const RawModel m = random_model(3);
  const LlamaWeights w = parse(write_v1(m, false));
  check_config(w.config, m.d, false);
  check_shapes(w, m, false);
  check_norms(w, m);
  CHECK(mismatches(flatten(w.classifier), m.classifier) == 0);
  CHECK(mismatches(flatten(w.wo), m.wo) == 0);
  CHECK(w.wv[0](0, 0) == 0.0f);
  CHECK(w.wo[0](0, 5) == 1e6f);
}

TEST_CASE("io/llama2c: a version-2 file dequantizes to q * scale of our own quantizer", "[io][llama2c]") {
  struct Case {
    const char* name;
    RawModel model;
    bool shared;
    std::int32_t group;
  };
  const RawModel stories = raw_from_legacy(pft::read_bytes(pft::shared_path("models/stories260K.bin")));
  RawModel stories_cls = stories;
  std::mt19937 rng(5);
  stories_cls.classifier = random_floats(stories.V() * stories.D(), rng);
  const Case cases[] = {
      {"stories260K, group 64", stories, true, 64},
      {"stories260K, group 32, own classifier", stories_cls, false, 32},
      {"random model, group 32, own classifier", random_model(9), false, 32},
      {"random model, group 16, shared", random_model(10), true, 16},
  };
  for (const Case& k : cases) {
    INFO(k.name);
    const RawModel& m = k.model;
    const V2File f = write_v2(m, k.shared, k.group);
    const LlamaWeights w = parse(f.bytes);
    CHECK(w.version == 2);
    CHECK(w.group_size == k.group);
    check_config(w.config, m.d, k.shared);
    check_shapes(w, m, k.shared);
    check_norms(w, m);  // the norms stay fp32

    const auto got = loaded_matrices(w, k.shared);
    const auto originals = versioned_matrices(m, k.shared);
    REQUIRE(got.size() == f.quantized.size());
    for (std::size_t t = 0; t < got.size(); ++t) {
      INFO("matrix " << t << " in versioned order");
      const Quantized& q = f.quantized[t];
      CHECK(mismatches(got[t], q.dequantized) == 0);
      // Rounding to the nearest step never moves a value by more than half a step.
      std::size_t far = 0;
      REQUIRE(got[t].size() == originals[t]->size());
      for (std::size_t i = 0; i < got[t].size(); ++i) {
        const float scale = q.scale[i / std::size_t(k.group)];
        if (std::fabs(got[t][i] - (*originals[t])[i]) > 0.5f * scale * (1.0f + 1e-5f)) ++far;
      }
      CHECK(far == 0);
    }
  }
}

namespace {

/// Tensor t's values as this file's writer made them: the slice of the stacked reference vector of its kind, or
/// for a version-2 matrix the writer's own dequantized values.
std::vector<float> expected_values(const RawModel& m, const pf::io::Llama2cTensor& t, const V2File* v2, bool shared) {
  using P = pf::io::Llama2cPart;
  const std::vector<float>* stacked = nullptr;
  switch (t.part) {
    case P::embedding: stacked = &m.embedding; break;
    case P::attn_norm: stacked = &m.attn_norm; break;
    case P::wq: stacked = &m.wq; break;
    case P::wk: stacked = &m.wk; break;
    case P::wv: stacked = &m.wv; break;
    case P::wo: stacked = &m.wo; break;
    case P::ffn_norm: stacked = &m.ffn_norm; break;
    case P::w1: stacked = &m.w1; break;
    case P::w2: stacked = &m.w2; break;
    case P::w3: stacked = &m.w3; break;
    case P::final_norm: stacked = &m.final_norm; break;
    case P::classifier: stacked = &m.classifier; break;
  }
  if (v2 != nullptr && !t.is_vector()) {
    const auto order = versioned_matrices(m, shared);
    const auto k = std::size_t(std::find(order.begin(), order.end(), stacked) - order.begin());
    REQUIRE(k < order.size());
    stacked = &v2->quantized[k].dequantized;
  }
  const std::size_t n = std::size_t(t.rows * t.cols), at = std::size_t(t.layer) * n;
  REQUIRE(at + n <= stacked->size());
  return std::vector<float>(stacked->begin() + std::ptrdiff_t(at), stacked->begin() + std::ptrdiff_t(at + n));
}

}  // namespace

TEST_CASE("io/llama2c: every tensor of the layout, read in place or converted, holds the writer's values",
          "[io][llama2c]") {
  const RawModel stories = raw_from_legacy(pft::read_bytes(pft::shared_path("models/stories260K.bin")));
  RawModel own_cls = random_model(4);
  const V2File v2 = write_v2(own_cls, false, 32);
  struct Case {
    const char* name;
    Bytes bytes;
    const RawModel* model;
    const V2File* v2;
    bool shared;
  };
  const Case cases[] = {{"legacy stories260K", pft::read_bytes(pft::shared_path("models/stories260K.bin")), &stories,
                         nullptr, true},
                        {"version 1, own classifier", write_v1(own_cls, false), &own_cls, nullptr, false},
                        {"version 2, own classifier", v2.bytes, &own_cls, &v2, false}};
  for (const Case& c : cases) {
    INFO(c.name);
    const pf::io::Llama2cLayout layout = pf::io::llama2c_layout(c.bytes, "mem.bin");
    const std::size_t matrices = 1 + 7 * c.model->L() + (c.shared ? 0 : 1), norms = 2 * c.model->L() + 1;
    REQUIRE(layout.tensors.size() == matrices + norms);
    std::set<std::string> names;
    for (const auto& t : layout.tensors) {
      const std::string name = pf::io::llama2c_name(t);
      INFO(name);
      names.insert(name);
      const std::vector<float> want = expected_values(*c.model, t, c.v2, c.shared);
      std::vector<float> got(want.size());
      pf::io::read_llama2c_tensor(c.bytes, layout, t, got.data());
      CHECK(mismatches(got, want) == 0);
      const float* in_place = pf::io::llama2c_tensor_in_place(c.bytes, layout, t);
      const bool quantized = c.v2 != nullptr && !t.is_vector();
      CHECK((in_place == nullptr) == quantized);  // the buffers are aligned for float
      if (in_place != nullptr) CHECK(mismatches(std::vector<float>(in_place, in_place + want.size()), want) == 0);
    }
    CHECK(names.size() == layout.tensors.size());  // no name twice
    CHECK(names.count("tok_embeddings.weight") == 1);
    CHECK(names.count("layers.0.feed_forward.w2.weight") == 1);
    CHECK(names.count("output.weight") == (c.shared ? 0u : 1u));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Malformed files

TEST_CASE("io/llama2c: rejects a file shorter than the 28-byte legacy header", "[io][llama2c]") {
  REQUIRE_THROWS_AS(parse(Bytes{}), format_error);
  REQUIRE_THROWS_WITH(parse(Bytes{}), Contains("llama2c: mem.bin: ") && Contains("0 bytes, expected at least 28"));
  const Bytes short_header(27, 1);
  REQUIRE_THROWS_AS(parse(short_header), format_error);
  REQUIRE_THROWS_WITH(parse(short_header), Contains("file has 27 bytes, expected at least 28"));
}

TEST_CASE("io/llama2c: rejects a truncated or overlong stories260K", "[io][llama2c]") {
  const Bytes bytes = pft::read_bytes(pft::shared_path("models/stories260K.bin"));
  REQUIRE(bytes.size() == kStoriesBytes);
  const auto cut = [&](std::size_t n) { return Bytes(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n)); };
  SECTION("last float missing") {
    const Bytes b = cut(kStoriesBytes - 4);
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("file has 1056536 bytes, expected 1056540") && Contains("version-0"));
  }
  SECTION("cut in half") {
    const Bytes b = cut(kStoriesBytes / 2);
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("file has 528270 bytes, expected 1056540"));
  }
  SECTION("header only") {
    const Bytes b = cut(28);
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("28 bytes, expected 1056540"));
  }
  SECTION("one extra byte") {
    Bytes b = bytes;
    b.push_back(0);
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("file has 1056541 bytes, expected 1056540"));
  }
  SECTION("the intact copy loads") { CHECK(parse(cut(kStoriesBytes)).config.dim == 64); }
}

TEST_CASE("io/llama2c: rejects head counts that do not fit", "[io][llama2c]") {
  Dims d = kStoriesDims;
  SECTION("n_heads does not divide dim") {
    d.heads = 7;
    REQUIRE_THROWS_AS(parse(legacy_header(d)), config_error);
    REQUIRE_THROWS_WITH(parse(legacy_header(d)),
                        Contains("llama2c: mem.bin") && Contains("dim 64 is not divisible by n_heads 7"));
  }
  SECTION("n_kv_heads does not divide n_heads") {
    d.kv_heads = 3;
    REQUIRE_THROWS_AS(parse(legacy_header(d)), config_error);
    REQUIRE_THROWS_WITH(parse(legacy_header(d)), Contains("n_heads 8 is not a multiple of n_kv_heads 3"));
  }
  SECTION("more kv heads than heads") {
    d.kv_heads = 16;
    REQUIRE_THROWS_AS(parse(legacy_header(d)), config_error);
    REQUIRE_THROWS_WITH(parse(legacy_header(d)), Contains("n_kv_heads 16"));
  }
  SECTION("odd head size") {
    d.dim = 24;  // 24 / 8 = 3
    REQUIRE_THROWS_AS(parse(legacy_header(d)), config_error);
    REQUIRE_THROWS_WITH(parse(legacy_header(d)), Contains("head size 3 is odd"));
  }
  SECTION("the same checks apply to a versioned header") {
    d.heads = 6;
    const Bytes b = versioned_header(1, d, 1);
    REQUIRE_THROWS_AS(parse(b), config_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("dim 64 is not divisible by n_heads 6"));
  }
}

TEST_CASE("io/llama2c: rejects zero and negative sizes, naming the field", "[io][llama2c]") {
  struct Bad {
    const char* fragment;
    Dims dims;
    bool versioned;
  };
  const Dims s = kStoriesDims;
  const Bad cases[] = {
      {"dim is 0", {0, s.hidden, s.layers, s.heads, s.kv_heads, s.vocab, s.seq_len}, false},
      {"dim is -64", {-64, s.hidden, s.layers, s.heads, s.kv_heads, s.vocab, s.seq_len}, false},
      {"hidden_dim is 0", {s.dim, 0, s.layers, s.heads, s.kv_heads, s.vocab, s.seq_len}, false},
      {"hidden_dim is -1", {s.dim, -1, s.layers, s.heads, s.kv_heads, s.vocab, s.seq_len}, true},
      {"n_layers is 0", {s.dim, s.hidden, 0, s.heads, s.kv_heads, s.vocab, s.seq_len}, false},
      {"n_heads is 0", {s.dim, s.hidden, s.layers, 0, s.kv_heads, s.vocab, s.seq_len}, false},
      {"n_kv_heads is -4", {s.dim, s.hidden, s.layers, s.heads, -4, s.vocab, s.seq_len}, false},
      {"vocab_size is 0", {s.dim, s.hidden, s.layers, s.heads, s.kv_heads, 0, s.seq_len}, false},
      {"vocab_size is -512", {s.dim, s.hidden, s.layers, s.heads, s.kv_heads, -512, s.seq_len}, true},
      {"seq_len is 0", {s.dim, s.hidden, s.layers, s.heads, s.kv_heads, s.vocab, 0}, false},
      {"seq_len is -3", {s.dim, s.hidden, s.layers, s.heads, s.kv_heads, s.vocab, -3}, true},
  };
  for (const Bad& b : cases) {
    INFO(b.fragment << (b.versioned ? " (version 1)" : " (legacy)"));
    const Bytes bytes = b.versioned ? versioned_header(1, b.dims, 1) : legacy_header(b.dims);
    REQUIRE_THROWS_AS(parse(bytes), config_error);
    REQUIRE_THROWS_WITH(parse(bytes), Contains(b.fragment) && Contains("expected 1.."));
  }
}

TEST_CASE("io/llama2c: rejects a bad versioned header", "[io][llama2c]") {
  const RawModel m = random_model(1);
  SECTION("version 3") {
    const Bytes b = versioned_header(3, m.d, 1);
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("version is 3") && Contains("expected 1 or 2"));
  }
  SECTION("version 0 behind the magic") {
    const Bytes b = versioned_header(0, m.d, 1);
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("version is 0"));
  }
  SECTION("shorter than the 256-byte header") {
    Bytes b = write_v1(m, true);
    b.resize(100);
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("file has 100 bytes, expected at least 256"));
  }
  SECTION("shared_classifier flag 7") {
    Bytes b = write_v1(m, true);
    b[36] = 7;  // magic, version, 7 int32: the flag is byte 36
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("shared_classifier flag is 7"));
  }
  SECTION("version 1 missing its last byte") {
    Bytes b = write_v1(m, true);
    const std::size_t n = b.size();
    b.pop_back();
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains(std::to_string(n - 1) + " bytes, expected " + std::to_string(n)) &&
                                      Contains("version-1"));
  }
  SECTION("version 1 claiming a classifier it does not have") {
    Bytes b = write_v1(m, true);
    b[36] = 0;
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("bytes, expected " + std::to_string(b.size() + 4 * m.V() * m.D())));
  }
}

TEST_CASE("io/llama2c: rejects a bad version-2 group size or size", "[io][llama2c]") {
  const RawModel m = random_model(2);
  SECTION("group size 0") {
    const Bytes b = versioned_header(2, m.d, 1, 0);
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("group size is 0") && Contains("expected >= 1"));
  }
  SECTION("negative group size") {
    const Bytes b = versioned_header(2, m.d, 1, -32);
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("group size is -32"));
  }
  SECTION("a group size that does not divide a tensor") {
    Bytes b = write_v2(m, true, 32).bytes;
    set_i32(b, 37, 7);  // group size sits right after the flag byte
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("not a multiple of the group size 7"));
  }
  SECTION("one byte missing") {
    Bytes b = write_v2(m, true, 32).bytes;
    const std::size_t n = b.size();
    b.pop_back();
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains(std::to_string(n - 1) + " bytes, expected " + std::to_string(n)) &&
                                      Contains("version-2"));
  }
  SECTION("scales missing") {
    const V2File f = write_v2(m, false, 16);
    std::size_t scale_bytes = 0;
    for (const auto& q : f.quantized) scale_bytes += 4 * q.scale.size();
    const Bytes b(f.bytes.begin(), f.bytes.end() - static_cast<std::ptrdiff_t>(scale_bytes));
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains("bytes, expected " + std::to_string(f.bytes.size())));
  }
  SECTION("an extra byte") {
    Bytes b = write_v2(m, true, 32).bytes;
    b.push_back(0);
    REQUIRE_THROWS_AS(parse(b), format_error);
    REQUIRE_THROWS_WITH(parse(b), Contains(std::to_string(b.size()) + " bytes, expected"));
  }
}

TEST_CASE("io/llama2c: reading a missing file names the path", "[io][llama2c]") {
  const std::string path = "/nonexistent-polyformer-dir/model.bin";
  REQUIRE_THROWS_AS(pf::io::read_llama2c(path), format_error);
  REQUIRE_THROWS_WITH(pf::io::read_llama2c(path), Contains("llama2c: " + path + ": cannot open"));
}
