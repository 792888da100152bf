#pragma once
/// \file Attention shapes and masks: what a block asks of attention (MaskSpec, for a whole batch) and
/// what a policy sees (AttentionMask, for one sequence).

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// Head layout of one attention call. Query head h reads key/value head h / (n_heads / n_kv_heads)
/// (grouped-query attention, Ainslie et al. 2023); n_kv_heads == n_heads is multi-head attention.
struct AttentionShape {
  Index n_heads = 1;
  Index n_kv_heads = 1;
  Index head_dim = 1;
  float scale = 1.0f;  ///< score multiplier, usually 1/√head_dim

  /// The key/value head that query head h reads.
  Index kv_head(Index h) const noexcept { return h / (n_heads / n_kv_heads); }

  /// Throws config_error unless the head counts are consistent.
  void validate(const char* func) const {
    if (n_heads < 1 || n_kv_heads < 1 || head_dim < 1)
      throw config_error(detail::cat(func, ": heads (", n_heads, ", kv ", n_kv_heads, ", dim ", head_dim,
                                     "), expected all >= 1"));
    if (n_heads % n_kv_heads != 0)
      throw config_error(detail::cat(func, ": n_heads ", n_heads, " is not a multiple of n_kv_heads ", n_kv_heads));
  }
};

/// The mask of one sequence as an attention policy sees it. A key j is visible to query i when
/// j < n_valid_keys, key_padding[j] == 0 (if given), j <= i + causal_offset (if causal), and the
/// additive mask, added to the scaled score, is not −inf. A query that sees no key outputs zeros.
struct AttentionMask {
  bool causal = false;
  Index causal_offset = 0;             ///< query i sits at key position i + causal_offset (cache decoding)
  const float* additive = nullptr;     ///< (n_q, n_k) added to the scaled scores, or null
  Index additive_stride = 0;           ///< row stride of `additive`
  const float* key_padding = nullptr;  ///< (n_k), nonzero = padded key, or null
  Index n_valid_keys = std::numeric_limits<Index>::max();  ///< keys at or past this are padded

  /// Last key (exclusive) that query i may see, from causality and n_valid_keys alone.
  Index key_end(Index i, Index n_k) const noexcept {
    Index end = n_valid_keys < n_k ? n_valid_keys : n_k;
    if (causal && i + causal_offset + 1 < end) end = i + causal_offset + 1;
    return end < 0 ? 0 : end;
  }
};

/// A block's masks for a batch of sequences laid out as (batch·seq, d) rows. All fields optional.
struct MaskSpec {
  bool causal = false;                          ///< query i sees keys j <= i
  std::optional<ConstMatrixRef> additive;       ///< (n_q, n_k), the same for every sequence (torch attn_mask)
  std::optional<ConstMatrixRef> key_padding;    ///< (batch, n_k), nonzero = padded key (torch key_padding_mask)
  std::span<const Index> key_lengths;           ///< (batch): keys at or past length[b] are padded

  /// The causal mask of a decoder's self-attention.
  static MaskSpec causal_mask() {
    MaskSpec m;
    m.causal = true;
    return m;
  }

  /// Throws shape_error unless the masks fit `batch` sequences of n_q queries and n_k keys.
  void validate(const char* func, Index batch, Index n_q, Index n_k) const {
    if (additive) check_shape(additive->view(), n_q, n_k, func, "attention mask");
    if (key_padding) check_shape(key_padding->view(), batch, n_k, func, "key padding mask");
    if (!key_lengths.empty()) {
      if (static_cast<Index>(key_lengths.size()) != batch)
        throw shape_error(detail::cat(func, ": key lengths has shape ", detail::shape_str(key_lengths.size()),
                                      ", expected ", detail::shape_str(batch)));
      for (std::size_t b = 0; b < key_lengths.size(); ++b)
        if (key_lengths[b] < 0 || key_lengths[b] > n_k)
          throw shape_error(detail::cat(func, ": key length of sequence ", b, " is ", key_lengths[b],
                                        ", expected 0..", n_k));
    }
  }

  /// The mask of sequence b.
  AttentionMask for_sequence(Index b) const noexcept {
    AttentionMask m;
    m.causal = causal;
    if (additive) {
      m.additive = additive->data;
      m.additive_stride = additive->stride;
    }
    if (key_padding) m.key_padding = key_padding->data + b * key_padding->stride;
    if (!key_lengths.empty()) m.n_valid_keys = key_lengths[static_cast<std::size_t>(b)];
    return m;
  }
};

namespace detail {
/// The shape checks of an attention policy's backward: q, out, dout, dq (n_q, heads·d); k, v, dk, dv (n_k, kv_heads·d).
inline void check_attention_grads(const char* func, const AttentionShape& s, ConstMatrixView q, ConstMatrixView k,
                                  ConstMatrixView v, ConstMatrixView out, ConstMatrixView dout, const MatrixView& dq,
                                  const MatrixView& dk, const MatrixView& dv) {
  const Index n_q = q.rows(), n_k = k.rows(), qd = s.n_heads * s.head_dim, kd = s.n_kv_heads * s.head_dim;
  check_cols(q, qd, func, "q");
  check_shape(k, n_k, kd, func, "k");
  check_shape(v, n_k, kd, func, "v");
  check_shape(out, n_q, qd, func, "out");
  check_shape(dout, n_q, qd, func, "dout");
  check_shape(dq, n_q, qd, func, "dq");
  check_shape(dk, n_k, kd, func, "dk");
  check_shape(dv, n_k, kd, func, "dv");
}
}  // namespace detail

/// A copy of a MaskSpec's masks, kept by a training forward for its backward (the caller's may change meanwhile).
class MaskCopy {
 public:
  /// Copies m's masks, reusing this copy's storage.
  void assign(const MaskSpec& m) {
    causal_ = m.causal;
    has_additive_ = m.additive.has_value();
    has_padding_ = m.key_padding.has_value();
    if (has_additive_) additive_ = m.additive->view();
    if (has_padding_) key_padding_ = m.key_padding->view();
    key_lengths_.assign(m.key_lengths.begin(), m.key_lengths.end());
  }
  /// The copied masks as a MaskSpec (valid while this copy lives and is not reassigned).
  MaskSpec spec() const {
    MaskSpec m;
    m.causal = causal_;
    if (has_additive_) m.additive = ConstMatrixRef(additive_);
    if (has_padding_) m.key_padding = ConstMatrixRef(key_padding_);
    m.key_lengths = key_lengths_;
    return m;
  }

 private:
  bool causal_ = false, has_additive_ = false, has_padding_ = false;
  Matrix additive_, key_padding_;
  std::vector<Index> key_lengths_;
};

}  // namespace polyformer
