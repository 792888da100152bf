#pragma once
/// \file Rotary position policies applied to query and key rows inside attention: NoRotary and RoPE
/// (Su et al. 2021, RoFormer).

#include <cmath>
#include <vector>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// No rotation (absolute or no positions).
struct NoRotary {
  static constexpr bool enabled = false;
  void apply(float*, Index, Index, Index, Index, Index) const noexcept {}
  void unapply(float*, Index, Index, Index, Index, Index) const noexcept {}
};

/// Which coordinates form a rotated pair within a head.
enum class RotaryStyle {
  interleaved,  ///< (2i, 2i+1): Meta's Llama and llama2.c
  half_split,   ///< (i, i + d/2): GPT-NeoX and Hugging Face's rotate_half
};

/// Rotates pair i of each head by angle pos·θ^(−2i/d). Frequencies are computed in float as llama2.c's
/// run.c does, so a Llama checkpoint reproduces its reference output.
template <RotaryStyle Style = RotaryStyle::interleaved>
class RoPE {
 public:
  static constexpr bool enabled = true;
  static constexpr RotaryStyle style = Style;

  explicit RoPE(float theta = 10000.0f) : theta_(theta) {
    if (!(theta > 1.0f)) throw config_error(detail::cat("RoPE: theta is ", theta, ", expected > 1"));
  }

  float theta() const noexcept { return theta_; }

  /// The cos and sin of (position, pair) for positions [0, max_positions) of heads of head_dim, computed
  /// once so that apply() does no trigonometry and no allocation for those positions.
  void reserve(Index max_positions, Index head_dim) {
    const Index half = head_dim / 2;
    std::vector<float> cos_t(static_cast<std::size_t>(max_positions * half)), sin_t(cos_t.size());
    std::vector<float> freq(static_cast<std::size_t>(half));
    frequencies(head_dim, freq.data());
    for (Index p = 0; p < max_positions; ++p)
      angles(p, half, freq.data(), cos_t.data() + p * half, sin_t.data() + p * half);
    cos_ = std::move(cos_t);
    sin_ = std::move(sin_t);
    table_positions_ = max_positions;
    table_head_dim_ = head_dim;
  }

  /// Rotates n_rows rows (row r at position first_position + r), each holding n_heads heads of head_dim.
  void apply(float* rows, Index n_rows, Index row_stride, Index n_heads, Index head_dim, Index first_position) const {
    rotate<false>(rows, n_rows, row_stride, n_heads, head_dim, first_position);
  }
  /// The inverse rotation (by the negative angles), which is also apply's backward: a rotation's transpose.
  void unapply(float* rows, Index n_rows, Index row_stride, Index n_heads, Index head_dim, Index first_position) const {
    rotate<true>(rows, n_rows, row_stride, n_heads, head_dim, first_position);
  }

 private:
  template <bool Inverse>
  void rotate(float* rows, Index n_rows, Index row_stride, Index n_heads, Index head_dim, Index first_position) const {
    const Index half = head_dim / 2;
    const bool tabled = head_dim == table_head_dim_ && first_position >= 0 && first_position + n_rows <= table_positions_;
    std::vector<float> cos_row, sin_row, freq;
    if (!tabled) {
      cos_row.resize(static_cast<std::size_t>(half));
      sin_row.resize(static_cast<std::size_t>(half));
      freq.resize(static_cast<std::size_t>(half));
      frequencies(head_dim, freq.data());
    }
    for (Index r = 0; r < n_rows; ++r) {
      const float* c_t = nullptr;
      const float* s_t = nullptr;
      if (tabled) {
        c_t = cos_.data() + (first_position + r) * half;
        s_t = sin_.data() + (first_position + r) * half;
      } else {
        angles(first_position + r, half, freq.data(), cos_row.data(), sin_row.data());
        c_t = cos_row.data();
        s_t = sin_row.data();
      }
      float* row = rows + r * row_stride;
      for (Index h = 0; h < n_heads; ++h) {
        float* x = row + h * head_dim;
        for (Index i = 0; i < half; ++i) {
          const Index a = Style == RotaryStyle::interleaved ? 2 * i : i;
          const Index b = Style == RotaryStyle::interleaved ? 2 * i + 1 : i + half;
          const float x0 = x[a], x1 = x[b], c = c_t[i], s = Inverse ? -s_t[i] : s_t[i];
          x[a] = x0 * c - x1 * s;
          x[b] = x0 * s + x1 * c;
        }
      }
    }
  }

  /// θ^(−2i/d) for the head_dim/2 pairs, in float as run.c computes them.
  void frequencies(Index head_dim, float* freq) const {
    for (Index i = 0; i < head_dim / 2; ++i)
      freq[i] = 1.0f / std::pow(theta_, static_cast<float>(2 * i) / static_cast<float>(head_dim));
  }
  /// cos and sin of pos·freq[i] for the `half` pairs of one position, in float as run.c computes them.
  static void angles(Index position, Index half, const float* freq, float* cos_out, float* sin_out) {
    const float pos = static_cast<float>(position);
    for (Index i = 0; i < half; ++i) {
      const float angle = pos * freq[i];
      cos_out[i] = std::cos(angle);
      sin_out[i] = std::sin(angle);
    }
  }

  std::vector<float> cos_, sin_;  // (table_positions_, table_head_dim_ / 2) each
  Index table_positions_ = 0, table_head_dim_ = 0;
  float theta_ = 10000.0f;
};

static_assert(RotaryPolicy<NoRotary>);
static_assert(RotaryPolicy<RoPE<RotaryStyle::interleaved>> && RotaryPolicy<RoPE<RotaryStyle::half_split>>);

}  // namespace polyformer
