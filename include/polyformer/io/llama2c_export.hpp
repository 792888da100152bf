#pragma once
/// \file Writes llama2.c's legacy checkpoint (version 0; the layout of io/llama2c.hpp and of export.py's
/// legacy_export), which llama2.c's run.c and polyformer's generate both read: 7 int32 sizes (vocab_size negative
/// when the classifier is not the embedding), fp32 embedding, attention norms, wq, wk, wv, wo, FFN norms, w1, w2,
/// w3, final norm, the RoPE cos and sin tables (seq_len × head_size/2 each, which run.c skips) and an untied
/// classifier.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/io/file.hpp"
#include "polyformer/io/llama2c.hpp"

namespace polyformer::io {

/// The bytes of a legacy llama2.c checkpoint of `w` (all tensors float; config validated). Throws shape_error
/// naming the tensor when one does not have the size the config implies.
inline std::vector<unsigned char> serialize_llama2c(const LlamaWeights& w) {
  const char* func = "serialize_llama2c";
  const LlamaConfig& c = w.config;
  c.validate(func);
  const Index L = c.n_layers, d = c.dim, kv = c.kv_dim(), h = c.hidden_dim, hs = c.head_dim();
  constexpr Index int32_max = 2147483647;
  if (c.vocab_size > int32_max || c.seq_len > int32_max)
    throw config_error(polyformer::detail::cat(func, ": vocab_size ", c.vocab_size, ", seq_len ", c.seq_len,
                                               ", expected each below 2^31"));
  std::vector<unsigned char> out;
  const auto put_i32 = [&](Index v) {
    const auto u = static_cast<std::uint32_t>(static_cast<std::int32_t>(v));
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<unsigned char>(u >> (8 * i)));
  };
  const auto put_floats = [&](const float* p, Index n) {
    const std::size_t at = out.size();
    out.resize(at + static_cast<std::size_t>(n) * 4);
    for (Index i = 0; i < n; ++i) {
      std::uint32_t u;
      std::memcpy(&u, p + i, 4);
      for (int b = 0; b < 4; ++b) out[at + static_cast<std::size_t>(4 * i + b)] = static_cast<unsigned char>(u >> (8 * b));
    }
  };
  const auto matrix = [&](const char* name, const Matrix& m, Index rows, Index cols) {
    if (m.rows() != rows || m.cols() != cols)
      throw shape_error(polyformer::detail::cat(func, ": ", name, " has shape ", polyformer::detail::shape_str(m.rows(), m.cols()),
                                                ", expected ", polyformer::detail::shape_str(rows, cols)));
    put_floats(m.data(), m.size());
  };
  const auto vector = [&](const char* name, const Vector& v, Index n) {
    if (v.size() != n)
      throw shape_error(polyformer::detail::cat(func, ": ", name, " has ", v.size(), " values, expected ", n));
    put_floats(v.data(), n);
  };
  const auto layers = [&](const char* name, std::size_t count) {
    if (count != static_cast<std::size_t>(L))
      throw shape_error(polyformer::detail::cat(func, ": ", count, " layers of ", name, ", expected ", L));
  };
  for (const auto* part : {&w.attn_norm, &w.ffn_norm}) layers("norms", part->size());
  for (const auto* part : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w1, &w.w2, &w.w3}) layers("matrices", part->size());

  for (Index v : {d, h, L, c.n_heads, c.n_kv_heads}) put_i32(v);
  put_i32(c.shared_classifier ? c.vocab_size : -c.vocab_size);
  put_i32(c.seq_len);
  const auto each = [&](const auto& list, auto&& put) {
    for (Index l = 0; l < L; ++l) put(list[static_cast<std::size_t>(l)]);
  };
  matrix("tok_embeddings", w.token_embedding, c.vocab_size, d);
  each(w.attn_norm, [&](const Vector& v) { vector("attention_norm", v, d); });
  each(w.wq, [&](const Matrix& m) { matrix("wq", m, c.n_heads * hs, d); });
  each(w.wk, [&](const Matrix& m) { matrix("wk", m, kv, d); });
  each(w.wv, [&](const Matrix& m) { matrix("wv", m, kv, d); });
  each(w.wo, [&](const Matrix& m) { matrix("wo", m, d, c.n_heads * hs); });
  each(w.ffn_norm, [&](const Vector& v) { vector("ffn_norm", v, d); });
  each(w.w1, [&](const Matrix& m) { matrix("w1", m, h, d); });
  each(w.w2, [&](const Matrix& m) { matrix("w2", m, d, h); });
  each(w.w3, [&](const Matrix& m) { matrix("w3", m, h, d); });
  vector("norm", w.final_norm, d);
  // RoPE tables: position t, pair i rotates by t·θ^(−2i/head_size).
  std::vector<float> cos_table(static_cast<std::size_t>(c.seq_len * hs / 2)), sin_table(cos_table.size());
  for (Index t = 0; t < c.seq_len; ++t)
    for (Index i = 0; i < hs / 2; ++i) {
      const double freq = 1.0 / std::pow(static_cast<double>(c.rope_theta), static_cast<double>(2 * i) / static_cast<double>(hs));
      const double angle = static_cast<double>(t) * freq;
      cos_table[static_cast<std::size_t>(t * (hs / 2) + i)] = static_cast<float>(std::cos(angle));
      sin_table[static_cast<std::size_t>(t * (hs / 2) + i)] = static_cast<float>(std::sin(angle));
    }
  put_floats(cos_table.data(), static_cast<Index>(cos_table.size()));
  put_floats(sin_table.data(), static_cast<Index>(sin_table.size()));
  if (!c.shared_classifier) matrix("output", w.classifier, c.vocab_size, d);
  return out;
}

/// Writes serialize_llama2c(w) to `path` through a temporary file renamed into place (an existing file is
/// replaced only by a complete one).
inline void write_llama2c(const std::string& path, const LlamaWeights& w) {
  detail::write_file_replace(path, serialize_llama2c(w), "llama2c");
}

}  // namespace polyformer::io
