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
///   version 1 as int8 (row-major), each followed by its fp32 scales (one per group of `group_size` consecutive
///   values), as export.py writes and runq.c reads them: Q8_0 quantization, dequantized here to float on load.
/// The file's size must be exactly what its header implies; nothing is read before that is checked.

#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <tuple>
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
  /// n_heads into a head size that is even (with `rotary`: RoPE rotates pairs), n_heads a multiple of
  /// n_kv_heads, and sizes small enough that no byte count overflows.
  void validate(const std::string& who, bool rotary = true) const {
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
    if (rotary && head_dim() % 2 != 0) fail(detail::cat("head size ", head_dim(), " is odd, expected even (RoPE rotates pairs)"));
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

/// What a tensor of a llama2.c checkpoint is (llama2c_name gives its model.py name).
enum class Llama2cPart { embedding, attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3, final_norm, classifier };

/// One tensor of a checkpoint: which, of which layer, its shape, and where its values lie in the file.
struct Llama2cTensor {
  Llama2cPart part = Llama2cPart::embedding;
  Index layer = 0;                  ///< for the per-layer parts
  Index rows = 0, cols = 0;         ///< (rows, cols); a norm is (1, dim)
  std::size_t offset = 0;           ///< bytes: its fp32 values, or its int8 values in version 2
  std::size_t scales_offset = 0;    ///< version 2: its fp32 group scales
  bool is_vector() const noexcept {
    return part == Llama2cPart::attn_norm || part == Llama2cPart::ffn_norm || part == Llama2cPart::final_norm;
  }
};

/// A checkpoint's header and where each of its tensors lies, every size checked against the file's.
struct Llama2cLayout {
  LlamaConfig config;
  int version = 0;         ///< 0 legacy, 1 fp32, 2 Q8_0
  Index group_size = 0;    ///< version 2 only
  std::vector<Llama2cTensor> tensors;  // in file order
};

/// llama2.c model.py's name of a tensor: "tok_embeddings.weight", "layers.<i>.attention.wq.weight", …,
/// "layers.<i>.feed_forward.w2.weight", "layers.<i>.attention_norm.weight", "norm.weight", "output.weight".
inline std::string llama2c_name(const Llama2cTensor& t) {
  const std::string layer = detail::cat("layers.", t.layer, ".");
  switch (t.part) {
    case Llama2cPart::embedding: return "tok_embeddings.weight";
    case Llama2cPart::attn_norm: return layer + "attention_norm.weight";
    case Llama2cPart::wq: return layer + "attention.wq.weight";
    case Llama2cPart::wk: return layer + "attention.wk.weight";
    case Llama2cPart::wv: return layer + "attention.wv.weight";
    case Llama2cPart::wo: return layer + "attention.wo.weight";
    case Llama2cPart::ffn_norm: return layer + "ffn_norm.weight";
    case Llama2cPart::w1: return layer + "feed_forward.w1.weight";
    case Llama2cPart::w2: return layer + "feed_forward.w2.weight";
    case Llama2cPart::w3: return layer + "feed_forward.w3.weight";
    case Llama2cPart::final_norm: return "norm.weight";
    case Llama2cPart::classifier: return "output.weight";
  }
  return {};
}

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

/// Lays out consecutive tensors from an offset in a byte range whose total size was checked against the header
/// first; every step still checks its own bounds, so a miscounted layout throws instead of pointing past the end.
class Llama2cCursor {
 public:
  Llama2cCursor(std::size_t size, std::size_t offset, const std::string& label)
      : size_(size), offset_(offset), label_(label) {}

  /// The offset of the next n bytes, which it passes.
  std::size_t take(std::size_t n, const char* what) {
    if (n > size_ || offset_ > size_ - n)
      throw format_error(cat("llama2c: ", label_, ": ", what, " needs ", n, " bytes at offset ", offset_,
                             " but the file has ", size_));
    const std::size_t at = offset_;
    offset_ += n;
    return at;
  }
  /// A tensor of (rows, cols) values of `bytes_each` bytes here.
  Llama2cTensor tensor(Llama2cPart part, Index layer, Index rows, Index cols, std::size_t bytes_each, const char* what) {
    Llama2cTensor t{part, layer, rows, cols, 0, 0};
    t.offset = take(static_cast<std::size_t>(rows * cols) * bytes_each, what);
    return t;
  }

 private:
  std::size_t size_, offset_;
  const std::string& label_;
};

inline std::string llama2c_size_error(const std::string& label, std::size_t found, std::uint64_t expected,
                                      const LlamaConfig& c, int version) {
  return cat("llama2c: ", label, ": file has ", found, " bytes, expected ", expected, " for a version-", version,
             " checkpoint of config (dim ", c.dim, ", hidden_dim ", c.hidden_dim, ", n_layers ", c.n_layers,
             ", n_heads ", c.n_heads, ", n_kv_heads ", c.n_kv_heads, ", vocab_size ", c.vocab_size, ", seq_len ",
             c.seq_len, ", shared_classifier ", c.shared_classifier, ")");
}

}  // namespace detail

/// Reads a llama2.c checkpoint's header from its bytes and lays out its tensors; `label` names it in messages
/// (usually the path). Throws format_error for a truncated file, a bad header or a size that does not match the
/// header, config_error for an unusable config. Nothing past the header is read.
inline Llama2cLayout llama2c_layout(std::span<const unsigned char> bytes, const std::string& label) {
  using detail::cat;
  using P = Llama2cPart;
  constexpr std::size_t legacy_header = 7 * 4;
  if (bytes.size() < legacy_header)
    throw format_error(cat("llama2c: ", label, ": file has ", bytes.size(), " bytes, expected at least ",
                           legacy_header, " for the header"));
  Llama2cLayout out;
  const bool versioned = static_cast<std::uint32_t>(detail::read_i32(bytes.data())) == detail::llama2c_magic;
  std::size_t header_at = 0;
  if (versioned) {
    if (bytes.size() < detail::llama2c_header_bytes)
      throw format_error(cat("llama2c: ", label, ": file has ", bytes.size(), " bytes, expected at least ",
                             detail::llama2c_header_bytes, " for the versioned header"));
    out.version = detail::read_i32(bytes.data() + 4);
    if (out.version != 1 && out.version != 2)
      throw format_error(cat("llama2c: ", label, ": version is ", out.version, " at offset 4, expected 1 or 2"));
    header_at = 8;
  }
  const auto field = [&](int i) { return static_cast<Index>(detail::read_i32(bytes.data() + header_at + 4 * i)); };
  LlamaConfig& c = out.config;
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
  if (out.version == 2) out.group_size = static_cast<Index>(detail::read_i32(bytes.data() + header_at + 29));
  c.validate(cat("llama2c: ", label, ": header"));

  const Index L = c.n_layers, d = c.dim, q = c.n_heads * c.head_dim(), kv = c.kv_dim(), h = c.hidden_dim;
  // The matrices in the order the versioned formats store them (embedding, wq … w3, classifier).
  std::vector<Llama2cTensor> matrices;
  matrices.push_back({P::embedding, 0, c.vocab_size, d});
  for (auto [part, rows, cols] : {std::tuple<P, Index, Index>{P::wq, q, d}, {P::wk, kv, d}, {P::wv, kv, d},
                                  {P::wo, d, q}, {P::w1, h, d}, {P::w2, d, h}, {P::w3, h, d}})
    for (Index l = 0; l < L; ++l) matrices.push_back({part, l, rows, cols});
  if (!c.shared_classifier) matrices.push_back({P::classifier, 0, c.vocab_size, d});
  const std::uint64_t norm_floats = (2 * std::uint64_t(L) + 1) * std::uint64_t(d);
  std::uint64_t matrix_floats = 0;
  for (const auto& m : matrices) matrix_floats += std::uint64_t(m.rows) * std::uint64_t(m.cols);

  if (out.version == 0) {
    const std::uint64_t rope = std::uint64_t(c.seq_len) * std::uint64_t(c.head_dim());  // cos and sin halves
    const std::uint64_t expected = legacy_header + 4 * (norm_floats + matrix_floats + rope);
    if (bytes.size() != expected) throw format_error(detail::llama2c_size_error(label, bytes.size(), expected, c, 0));
    detail::Llama2cCursor in(bytes.size(), legacy_header, label);
    auto& t = out.tensors;
    t.push_back(in.tensor(P::embedding, 0, c.vocab_size, d, 4, "token_embedding"));
    for (Index l = 0; l < L; ++l) t.push_back(in.tensor(P::attn_norm, l, 1, d, 4, "rms_att_weight"));
    for (Index l = 0; l < L; ++l) t.push_back(in.tensor(P::wq, l, q, d, 4, "wq"));
    for (Index l = 0; l < L; ++l) t.push_back(in.tensor(P::wk, l, kv, d, 4, "wk"));
    for (Index l = 0; l < L; ++l) t.push_back(in.tensor(P::wv, l, kv, d, 4, "wv"));
    for (Index l = 0; l < L; ++l) t.push_back(in.tensor(P::wo, l, d, q, 4, "wo"));
    for (Index l = 0; l < L; ++l) t.push_back(in.tensor(P::ffn_norm, l, 1, d, 4, "rms_ffn_weight"));
    for (Index l = 0; l < L; ++l) t.push_back(in.tensor(P::w1, l, h, d, 4, "w1"));
    for (Index l = 0; l < L; ++l) t.push_back(in.tensor(P::w2, l, d, h, 4, "w2"));
    for (Index l = 0; l < L; ++l) t.push_back(in.tensor(P::w3, l, h, d, 4, "w3"));
    t.push_back(in.tensor(P::final_norm, 0, 1, d, 4, "rms_final_weight"));
    in.take(static_cast<std::size_t>(rope) * 4, "freq_cis tables");
    if (!c.shared_classifier) t.push_back(in.tensor(P::classifier, 0, c.vocab_size, d, 4, "wcls"));
    return out;
  }

  std::uint64_t expected = detail::llama2c_header_bytes + 4 * norm_floats;
  if (out.version == 1) {
    expected += 4 * matrix_floats;
  } else {
    if (out.group_size < 1)
      throw format_error(cat("llama2c: ", label, ": group size is ", out.group_size, " at offset ", header_at + 29,
                             ", expected >= 1"));
    for (const auto& m : matrices) {
      const std::uint64_t n = std::uint64_t(m.rows) * std::uint64_t(m.cols);
      if (n % std::uint64_t(out.group_size) != 0)
        throw format_error(cat("llama2c: ", label, ": ", llama2c_name(m), " has ", n,
                               " values, not a multiple of the group size ", out.group_size));
      expected += n + 4 * (n / std::uint64_t(out.group_size));
    }
  }
  if (bytes.size() != expected)
    throw format_error(detail::llama2c_size_error(label, bytes.size(), expected, c, out.version));

  detail::Llama2cCursor in(bytes.size(), detail::llama2c_header_bytes, label);
  auto& t = out.tensors;
  for (Index l = 0; l < L; ++l) t.push_back(in.tensor(P::attn_norm, l, 1, d, 4, "attention_norm"));
  for (Index l = 0; l < L; ++l) t.push_back(in.tensor(P::ffn_norm, l, 1, d, 4, "ffn_norm"));
  t.push_back(in.tensor(P::final_norm, 0, 1, d, 4, "norm"));
  for (const auto& m : matrices) {
    if (out.version == 1) {
      t.push_back(in.tensor(m.part, m.layer, m.rows, m.cols, 4, "matrix"));
    } else {  // its int8 values, then its scales
      t.push_back(in.tensor(m.part, m.layer, m.rows, m.cols, 1, "matrix"));
      t.back().scales_offset = in.take(static_cast<std::size_t>(m.rows * m.cols / out.group_size) * 4, "scales");
    }
  }
  return out;
}

/// Tensor t's rows·cols values into dst: fp32 decoded, or in version 2 each int8 value q[i] times the scale of its
/// group, scale[i / group_size]. `bytes` are those `layout` was made from.
inline void read_llama2c_tensor(std::span<const unsigned char> bytes, const Llama2cLayout& layout,
                                const Llama2cTensor& t, float* dst) noexcept {
  const Index n = t.rows * t.cols;
  const unsigned char* p = bytes.data() + t.offset;
  if (layout.version == 2 && !t.is_vector()) {
    const unsigned char* scales = bytes.data() + t.scales_offset;
    for (Index i = 0; i < n; ++i)
      dst[i] = static_cast<float>(static_cast<std::int8_t>(p[i])) * detail::read_f32(scales + 4 * (i / layout.group_size));
    return;
  }
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(dst, p, static_cast<std::size_t>(n) * 4);
  } else {
    for (Index i = 0; i < n; ++i) dst[i] = detail::read_f32(p + 4 * i);
  }
}

/// Tensor t's floats where they lie in `bytes`, when the file stores them as this machine's floats (fp32 on a
/// little-endian host, at an address aligned for float); nullptr otherwise (version-2 matrices, for one), when
/// read_llama2c_tensor converts them instead.
inline const float* llama2c_tensor_in_place(std::span<const unsigned char> bytes, const Llama2cLayout& layout,
                                            const Llama2cTensor& t) noexcept {
  if (std::endian::native != std::endian::little || (layout.version == 2 && !t.is_vector())) return nullptr;
  const unsigned char* p = bytes.data() + t.offset;
  if (reinterpret_cast<std::uintptr_t>(p) % alignof(float) != 0) return nullptr;
  return reinterpret_cast<const float*>(p);
}

/// Parses a llama2.c checkpoint held in memory into float matrices; `label` names it in messages (usually the
/// path). Throws as llama2c_layout does.
inline LlamaWeights parse_llama2c(std::span<const unsigned char> bytes, const std::string& label) {
  const Llama2cLayout layout = llama2c_layout(bytes, label);
  LlamaWeights w;
  w.config = layout.config;
  w.version = layout.version;
  w.group_size = layout.group_size;
  const std::size_t L = static_cast<std::size_t>(layout.config.n_layers);
  for (auto* list : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w1, &w.w2, &w.w3}) list->resize(L);
  w.attn_norm.resize(L);
  w.ffn_norm.resize(L);
  for (const Llama2cTensor& t : layout.tensors) {
    const auto l = static_cast<std::size_t>(t.layer);
    if (t.is_vector()) {
      Vector& v = t.part == Llama2cPart::attn_norm ? w.attn_norm[l] : t.part == Llama2cPart::ffn_norm ? w.ffn_norm[l] : w.final_norm;
      v.resize(t.cols);
      read_llama2c_tensor(bytes, layout, t, v.data());
      continue;
    }
    Matrix* m = nullptr;
    switch (t.part) {
      case Llama2cPart::embedding: m = &w.token_embedding; break;
      case Llama2cPart::wq: m = &w.wq[l]; break;
      case Llama2cPart::wk: m = &w.wk[l]; break;
      case Llama2cPart::wv: m = &w.wv[l]; break;
      case Llama2cPart::wo: m = &w.wo[l]; break;
      case Llama2cPart::w1: m = &w.w1[l]; break;
      case Llama2cPart::w2: m = &w.w2[l]; break;
      case Llama2cPart::w3: m = &w.w3[l]; break;
      default: m = &w.classifier; break;
    }
    m->resize(t.rows, t.cols);
    read_llama2c_tensor(bytes, layout, t, m->data());
  }
  return w;
}

/// Reads and parses a llama2.c checkpoint file (mapped read-only where it can be, so its pages are the page
/// cache's, not copies).
inline LlamaWeights read_llama2c(const std::string& path) {
  const detail::ByteBuffer bytes = detail::map_file(path, "llama2c");
  return parse_llama2c(std::span<const unsigned char>(bytes.data(), bytes.size()), path);
}

}  // namespace polyformer::io
