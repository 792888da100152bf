#pragma once
/// \file llama2.c checkpoints (Karpathy's llama2.c, `export.py`) read into named float buffers.
///
/// Three layouts, all little-endian, every matrix row-major (out, in) like nn.Linear:
/// - legacy (version 0): 7 int32 `dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`, then
///   fp32 embedding, attention norms, wq, wk, wv, wo, FFN norms, w1, w2, w3, final norm, the RoPE tables
///   (seq_len · head_size floats, skipped) and, only when vocab_size < 0, the classifier (|vocab_size|, dim);
/// - version 1: a 256-byte header (u32 magic "ak42" = 0x616b3432, int32 version, the 7 int32, u8
///   shared_classifier), then fp32 norms (attention, FFN, final), embedding, wq, wk, wv, wo, w1, w2, w3 and,
///   unless shared, the classifier;
/// - version 2: the same header plus an int32 group size after the flag; fp32 norms, then every matrix of
///   version 1 as int8 (row-major), then the fp32 scales of all of them (one per group of `group_size`
///   consecutive values): Q8_0 quantization, dequantized here to float on load.
/// The file's size must be exactly what its header implies; nothing is read before that is checked.

#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/file.hpp"

namespace polyformer::io {

/// Hyper-parameters of a Llama-2-architecture model, as a llama2.c header states them.
struct LlamaConfig {
  Index dim = 0;         ///< d_model
  Index hidden_dim = 0;  ///< FFN width
  Index n_layers = 0;
  Index n_heads = 0;
  Index n_kv_heads = 0;
  Index vocab_size = 0;  ///< always positive here (the legacy sign flag is decoded into shared_classifier)
  Index seq_len = 0;     ///< maximum positions
  bool shared_classifier = true;  ///< the classifier is the token embedding (tied weights)
  float norm_eps = 1e-5f;         ///< RMSNorm epsilon (llama2.c: 1e-5)
  float rope_theta = 10000.0f;    ///< RoPE base (llama2.c: 10000)

  Index head_dim() const noexcept { return n_heads > 0 ? dim / n_heads : 0; }
  Index kv_dim() const noexcept { return n_kv_heads * head_dim(); }

  /// Throws config_error naming `who` unless every value is usable: all positive, dim divisible by
  /// n_heads into an even head size, n_heads a multiple of n_kv_heads, and sizes small enough that no
  /// byte count overflows.
  void validate(const std::string& who) const {
    const auto fail = [&](const std::string& what) {
      throw config_error(detail::cat(who, ": ", what, " (config: dim ", dim, ", hidden_dim ", hidden_dim, ", n_layers ",
                                     n_layers, ", n_heads ", n_heads, ", n_kv_heads ", n_kv_heads, ", vocab_size ",
                                     vocab_size, ", seq_len ", seq_len, ")"));
    };
    constexpr Index limit = Index{1} << 24;  // keeps every product below 2^63 bytes
    for (auto [name, v] : {std::pair<const char*, Index>{"dim", dim}, {"hidden_dim", hidden_dim},
                           {"n_layers", n_layers}, {"n_heads", n_heads}, {"n_kv_heads", n_kv_heads},
                           {"vocab_size", vocab_size}, {"seq_len", seq_len}})
      if (v < 1 || v > limit) fail(detail::cat(name, " is ", v, ", expected 1..", limit));
    if (n_layers > 4096) fail(detail::cat("n_layers is ", n_layers, ", expected at most 4096"));
    if (dim % n_heads != 0) fail(detail::cat("dim ", dim, " is not divisible by n_heads ", n_heads));
    if (head_dim() % 2 != 0) fail(detail::cat("head size ", head_dim(), " is odd, expected even (RoPE rotates pairs)"));
    if (n_kv_heads > n_heads || n_heads % n_kv_heads != 0)
      fail(detail::cat("n_heads ", n_heads, " is not a multiple of n_kv_heads ", n_kv_heads));
  }
};

/// Every parameter of a Llama model as float matrices in the nn.Linear layout.
struct LlamaWeights {
  LlamaConfig config;
  int version = 0;                  ///< 0 legacy, 1 fp32, 2 Q8_0 (dequantized)
  Index group_size = 0;             ///< version 2 only
  Matrix token_embedding;           ///< (vocab_size, dim)
  std::vector<Vector> attn_norm;    ///< n_layers × (dim)
  std::vector<Matrix> wq;           ///< n_layers × (n_heads·head_dim, dim)
  std::vector<Matrix> wk, wv;       ///< n_layers × (kv_dim, dim)
  std::vector<Matrix> wo;           ///< n_layers × (dim, n_heads·head_dim)
  std::vector<Vector> ffn_norm;     ///< n_layers × (dim)
  std::vector<Matrix> w1, w3;       ///< n_layers × (hidden_dim, dim): gate, up
  std::vector<Matrix> w2;           ///< n_layers × (dim, hidden_dim): down
  Vector final_norm;                ///< (dim)
  Matrix classifier;                ///< (vocab_size, dim); empty when config.shared_classifier
};

namespace detail {

using polyformer::detail::cat;

inline constexpr std::uint32_t llama2c_magic = 0x616b3432u;  // "ak42"
inline constexpr std::size_t llama2c_header_bytes = 256;

inline std::int32_t read_i32(const unsigned char* p) noexcept {
  const std::uint32_t u = std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
                          (std::uint32_t(p[3]) << 24);
  std::int32_t v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

inline float read_f32(const unsigned char* p) noexcept {
  const std::uint32_t u = static_cast<std::uint32_t>(read_i32(p));
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// Reads consecutive tensors from a byte range whose total size was checked against the header first;
/// every take() still checks its own bounds, so a miscounted layout throws instead of reading past the end.
class Llama2cCursor {
 public:
  Llama2cCursor(std::span<const unsigned char> bytes, std::size_t offset, const std::string& label)
      : bytes_(bytes), offset_(offset), label_(label) {}

  std::size_t offset() const noexcept { return offset_; }

  /// The next `count` fp32 values as (rows, cols).
  Matrix matrix(Index rows, Index cols, const char* what) {
    Matrix m(rows, cols);
    const unsigned char* p = take(static_cast<std::size_t>(rows * cols) * 4, what);
    float* dst = m.data();
    for (Index i = 0; i < rows * cols; ++i) dst[i] = read_f32(p + 4 * i);
    return m;
  }
  Vector vector(Index n, const char* what) {
    Matrix m = matrix(1, n, what);
    return Vector(m.row(0).transpose());
  }
  /// Skips `n` bytes.
  void skip(std::size_t n, const char* what) { take(n, what); }
  /// The next `n` bytes.
  const unsigned char* take(std::size_t n, const char* what) {
    if (n > bytes_.size() || offset_ > bytes_.size() - n)
      throw format_error(cat("llama2c: ", label_, ": ", what, " needs ", n, " bytes at offset ", offset_,
                             " but the file has ", bytes_.size()));
    const unsigned char* p = bytes_.data() + offset_;
    offset_ += n;
    return p;
  }

 private:
  std::span<const unsigned char> bytes_;
  std::size_t offset_;
  const std::string& label_;
};

/// Floats of every matrix in the order the versioned formats store them (embedding, wq…w3, classifier).
inline std::vector<std::pair<const char*, std::pair<Index, Index>>> llama2c_matrix_shapes(const LlamaConfig& c) {
  const Index L = c.n_layers, d = c.dim, q = c.n_heads * c.head_dim(), kv = c.kv_dim(), h = c.hidden_dim;
  std::vector<std::pair<const char*, std::pair<Index, Index>>> out;
  out.push_back({"token_embedding", {c.vocab_size, d}});
  for (auto [name, r, cols] : {std::tuple<const char*, Index, Index>{"wq", q, d}, {"wk", kv, d}, {"wv", kv, d},
                               {"wo", d, q}, {"w1", h, d}, {"w2", d, h}, {"w3", h, d}})
    for (Index l = 0; l < L; ++l) out.push_back({name, {r, cols}});
  if (!c.shared_classifier) out.push_back({"classifier", {c.vocab_size, d}});
  return out;
}

/// Distributes the matrices read in versioned order into `w`.
inline void llama2c_assign(LlamaWeights& w, std::vector<Matrix>&& mats) {
  const std::size_t L = static_cast<std::size_t>(w.config.n_layers);
  std::size_t i = 0;
  w.token_embedding = std::move(mats[i++]);
  for (std::vector<Matrix>* dst : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w1, &w.w2, &w.w3})
    for (std::size_t l = 0; l < L; ++l) dst->push_back(std::move(mats[i++]));
  if (!w.config.shared_classifier) w.classifier = std::move(mats[i++]);
}

inline std::string llama2c_size_error(const std::string& label, std::size_t found, std::uint64_t expected,
                                      const LlamaConfig& c, int version) {
  return cat("llama2c: ", label, ": file has ", found, " bytes, expected ", expected, " for a version-", version,
             " checkpoint of config (dim ", c.dim, ", hidden_dim ", c.hidden_dim, ", n_layers ", c.n_layers,
             ", n_heads ", c.n_heads, ", n_kv_heads ", c.n_kv_heads, ", vocab_size ", c.vocab_size, ", seq_len ",
             c.seq_len, ", shared_classifier ", c.shared_classifier, ")");
}

}  // namespace detail

/// Parses a llama2.c checkpoint held in memory; `label` names it in messages (usually the path).
/// Throws format_error for a truncated file, a bad header or a size that does not match the header,
/// config_error for an unusable config.
inline LlamaWeights parse_llama2c(std::span<const unsigned char> bytes, const std::string& label) {
  using detail::cat;
  constexpr std::size_t legacy_header = 7 * 4;
  if (bytes.size() < legacy_header)
    throw format_error(cat("llama2c: ", label, ": file has ", bytes.size(), " bytes, expected at least ",
                           legacy_header, " for the header"));
  LlamaWeights w;
  const bool versioned = static_cast<std::uint32_t>(detail::read_i32(bytes.data())) == detail::llama2c_magic;
  std::size_t header_at = 0;
  if (versioned) {
    if (bytes.size() < detail::llama2c_header_bytes)
      throw format_error(cat("llama2c: ", label, ": file has ", bytes.size(), " bytes, expected at least ",
                             detail::llama2c_header_bytes, " for the versioned header"));
    w.version = detail::read_i32(bytes.data() + 4);
    if (w.version != 1 && w.version != 2)
      throw format_error(cat("llama2c: ", label, ": version is ", w.version, " at offset 4, expected 1 or 2"));
    header_at = 8;
  }
  const auto field = [&](int i) { return static_cast<Index>(detail::read_i32(bytes.data() + header_at + 4 * i)); };
  LlamaConfig& c = w.config;
  c.dim = field(0);
  c.hidden_dim = field(1);
  c.n_layers = field(2);
  c.n_heads = field(3);
  c.n_kv_heads = field(4);
  c.vocab_size = field(5);
  c.seq_len = field(6);
  if (versioned) {
    const unsigned char flag = bytes[header_at + 28];
    if (flag > 1)
      throw format_error(cat("llama2c: ", label, ": shared_classifier flag is ", int(flag), " at offset ",
                             header_at + 28, ", expected 0 or 1"));
    c.shared_classifier = flag == 1;
  } else {
    c.shared_classifier = c.vocab_size > 0;
    if (c.vocab_size < 0) c.vocab_size = -c.vocab_size;
  }
  if (w.version == 2) w.group_size = static_cast<Index>(detail::read_i32(bytes.data() + header_at + 29));
  c.validate(cat("llama2c: ", label, ": header"));

  const std::uint64_t L = std::uint64_t(c.n_layers), d = std::uint64_t(c.dim);
  const std::uint64_t norm_floats = (2 * L + 1) * d;
  std::uint64_t matrix_floats = 0;
  const auto shapes = detail::llama2c_matrix_shapes(c);
  for (const auto& s : shapes) matrix_floats += std::uint64_t(s.second.first) * std::uint64_t(s.second.second);

  if (w.version == 0) {
    const std::uint64_t rope = std::uint64_t(c.seq_len) * std::uint64_t(c.head_dim());  // cos and sin halves
    const std::uint64_t expected = legacy_header + 4 * (norm_floats + matrix_floats + rope);
    if (bytes.size() != expected) throw format_error(detail::llama2c_size_error(label, bytes.size(), expected, c, 0));
    detail::Llama2cCursor in(bytes, legacy_header, label);
    const Index q = c.n_heads * c.head_dim(), kv = c.kv_dim(), h = c.hidden_dim;
    w.token_embedding = in.matrix(c.vocab_size, c.dim, "token_embedding");
    for (Index l = 0; l < c.n_layers; ++l) w.attn_norm.push_back(in.vector(c.dim, "rms_att_weight"));
    for (Index l = 0; l < c.n_layers; ++l) w.wq.push_back(in.matrix(q, c.dim, "wq"));
    for (Index l = 0; l < c.n_layers; ++l) w.wk.push_back(in.matrix(kv, c.dim, "wk"));
    for (Index l = 0; l < c.n_layers; ++l) w.wv.push_back(in.matrix(kv, c.dim, "wv"));
    for (Index l = 0; l < c.n_layers; ++l) w.wo.push_back(in.matrix(c.dim, q, "wo"));
    for (Index l = 0; l < c.n_layers; ++l) w.ffn_norm.push_back(in.vector(c.dim, "rms_ffn_weight"));
    for (Index l = 0; l < c.n_layers; ++l) w.w1.push_back(in.matrix(h, c.dim, "w1"));
    for (Index l = 0; l < c.n_layers; ++l) w.w2.push_back(in.matrix(c.dim, h, "w2"));
    for (Index l = 0; l < c.n_layers; ++l) w.w3.push_back(in.matrix(h, c.dim, "w3"));
    w.final_norm = in.vector(c.dim, "rms_final_weight");
    in.skip(static_cast<std::size_t>(rope) * 4, "freq_cis tables");
    if (!c.shared_classifier) w.classifier = in.matrix(c.vocab_size, c.dim, "wcls");
    return w;
  }

  std::uint64_t expected = detail::llama2c_header_bytes + 4 * norm_floats;
  if (w.version == 1) {
    expected += 4 * matrix_floats;
  } else {
    if (w.group_size < 1)
      throw format_error(cat("llama2c: ", label, ": group size is ", w.group_size, " at offset ", header_at + 29,
                             ", expected >= 1"));
    for (const auto& s : shapes) {
      const std::uint64_t n = std::uint64_t(s.second.first) * std::uint64_t(s.second.second);
      if (n % std::uint64_t(w.group_size) != 0)
        throw format_error(cat("llama2c: ", label, ": ", s.first, " has ", n, " values, not a multiple of the group size ",
                               w.group_size));
      expected += n + 4 * (n / std::uint64_t(w.group_size));
    }
  }
  if (bytes.size() != expected) throw format_error(detail::llama2c_size_error(label, bytes.size(), expected, c, w.version));

  detail::Llama2cCursor in(bytes, detail::llama2c_header_bytes, label);
  for (Index l = 0; l < c.n_layers; ++l) w.attn_norm.push_back(in.vector(c.dim, "attention_norm"));
  for (Index l = 0; l < c.n_layers; ++l) w.ffn_norm.push_back(in.vector(c.dim, "ffn_norm"));
  w.final_norm = in.vector(c.dim, "norm");
  std::vector<Matrix> mats;
  mats.reserve(shapes.size());
  if (w.version == 1) {
    for (const auto& s : shapes) mats.push_back(in.matrix(s.second.first, s.second.second, s.first));
  } else {
    // All int8 values first, then all scales: dequantize value i of a tensor as q[i] · scale[i / group_size].
    std::vector<const unsigned char*> quants;
    for (const auto& s : shapes) quants.push_back(in.take(static_cast<std::size_t>(s.second.first * s.second.second), s.first));
    for (std::size_t t = 0; t < shapes.size(); ++t) {
      const Index rows = shapes[t].second.first, cols = shapes[t].second.second, n = rows * cols;
      const unsigned char* scales = in.take(static_cast<std::size_t>(n / w.group_size) * 4, "scales");
      Matrix m(rows, cols);
      for (Index i = 0; i < n; ++i) {
        const auto q = static_cast<std::int8_t>(quants[t][i]);
        m.data()[i] = static_cast<float>(q) * detail::read_f32(scales + 4 * (i / w.group_size));
      }
      mats.push_back(std::move(m));
    }
  }
  detail::llama2c_assign(w, std::move(mats));
  return w;
}

/// Reads and parses a llama2.c checkpoint file (mapped read-only where it can be, so its pages are the page
/// cache's, not copies).
inline LlamaWeights read_llama2c(const std::string& path) {
  const detail::ByteBuffer bytes = detail::map_file(path, "llama2c");
  return parse_llama2c(std::span<const unsigned char>(bytes.data(), bytes.size()), path);
}

}  // namespace polyformer::io
