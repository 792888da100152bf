#pragma once
/// \file The key/value cache of one self-attention layer for incremental decoding: keys and values of every
/// position seen so far, in buffers allocated once for `capacity` positions, so decoding a token allocates
/// nothing. Laid out for attention over many keys at once: keys transposed per head (a score row is a
/// sum of head_dim vectorized row updates, and a prefill tile is a plain product), values both per head
/// row-major (for prefill tiles) and transposed (so one query's weighted sum is head_dim dot products).

#include <algorithm>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// Keys (after rotary positions) and values of positions [0, size()) of one sequence.
class KVCache {
 public:
  KVCache() = default;
  /// Room for `capacity` positions of `n_kv_heads` heads of `head_dim` features.
  KVCache(Index capacity, Index n_kv_heads, Index head_dim)
      : n_kv_heads_(n_kv_heads), head_dim_(head_dim), capacity_(capacity) {
    if (capacity < 1 || n_kv_heads < 1 || head_dim < 1)
      throw config_error(detail::cat("KVCache: capacity ", capacity, ", kv heads ", n_kv_heads, ", head_dim ",
                                     head_dim, ", expected all >= 1"));
    // Transposed rows start at multiples of 16 floats, kept off multiples of 4 KiB apart (L1 set aliasing).
    Index stride = (capacity + 15) / 16 * 16;
    if (stride % 1024 == 0) stride += 16;
    // Left unwritten: append() writes every column before it is read, so a large cache's pages are first
    // touched as positions arrive, not all at construction.
    keys_t_.resize(n_kv_heads * head_dim, stride);
    values_t_.resize(n_kv_heads * head_dim, stride);
    values_.resize(n_kv_heads * capacity, head_dim);
  }

  Index capacity() const noexcept { return capacity_; }
  Index n_kv_heads() const noexcept { return n_kv_heads_; }
  Index head_dim() const noexcept { return head_dim_; }
  Index kv_dim() const noexcept { return n_kv_heads_ * head_dim_; }
  /// Positions held.
  Index size() const noexcept { return size_; }
  /// Forgets every position (the buffers stay).
  void clear() noexcept { size_ = 0; }

  /// Throws config_error unless `n` more positions fit.
  void check_room(Index n, const char* func) const {
    if (n < 0 || size_ + n > capacity_)
      throw config_error(detail::cat(func, ": the KV cache holds ", size_, " of ", capacity_,
                                     " positions, cannot append ", n));
  }

  /// Appends positions size().. from k and v (n, kv_heads·head_dim). Throws when they do not fit.
  void append(ConstMatrixView k, ConstMatrixView v) {
    check_shape(k, k.rows(), kv_dim(), "KVCache::append", "keys");
    check_shape(v, k.rows(), kv_dim(), "KVCache::append", "values");
    const Index n = k.rows();
    check_room(n, "KVCache::append");
    for (Index i = 0; i < n; ++i)  // position by position: one strided column of each transposed layout
      write_position(size_ + i, 0, n_kv_heads_, k.data() + i * k.outerStride(), v.data() + i * v.outerStride());
    size_ += n;
  }

  /// Writes kv heads [g0, g1) of position size() from k and v ((g1 − g0)·head_dim floats each, the heads side by
  /// side) without counting the position: for a team whose members each write their own heads. commit() counts it
  /// once every head is written. Throws when no position is left.
  void write_heads(Index g0, Index g1, const float* k, const float* v) {
    if (g0 < 0 || g1 < g0 || g1 > n_kv_heads_)
      throw config_error(detail::cat("KVCache::write_heads: heads ", g0, "..", g1, ", expected within 0..", n_kv_heads_));
    check_room(1, "KVCache::write_heads");
    write_position(size_, g0, g1, k, v);
  }
  /// Counts n positions written by write_heads. Throws when they do not fit.
  void commit(Index n) {
    check_room(n, "KVCache::commit");
    size_ += n;
  }

  /// Keys of kv head g, transposed: (head_dim, size()), rows further apart than size().
  ConstMatrixView keys_t(Index g) const { return block(view(keys_t_), g * head_dim_, 0, head_dim_, size_); }
  /// Values of kv head g: (size(), head_dim), rows head_dim apart.
  ConstMatrixView values(Index g) const { return block(view(values_), g * capacity_, 0, size_, head_dim_); }
  /// Values of kv head g, transposed: (head_dim, size()) as keys_t.
  ConstMatrixView values_t(Index g) const { return block(view(values_t_), g * head_dim_, 0, head_dim_, size_); }
  /// keys_t and values_t over the first n positions, n ≤ capacity() (a position written by write_heads included
  /// before it is committed).
  ConstMatrixView keys_t(Index g, Index n) const { return block(view(keys_t_), g * head_dim_, 0, head_dim_, n); }
  ConstMatrixView values_t(Index g, Index n) const { return block(view(values_t_), g * head_dim_, 0, head_dim_, n); }

 private:
  /// Heads [g0, g1) of position p from k and v ((g1 − g0)·head_dim floats each) into all three layouts.
  void write_position(Index p, Index g0, Index g1, const float* k, const float* v) noexcept {
    for (Index g = g0; g < g1; ++g) {
      const float* kg = k + (g - g0) * head_dim_;
      const float* vg = v + (g - g0) * head_dim_;
      std::copy(vg, vg + head_dim_, values_.data() + (g * capacity_ + p) * head_dim_);
      for (Index f = 0; f < head_dim_; ++f) {
        keys_t_(g * head_dim_ + f, p) = kg[f];
        values_t_(g * head_dim_ + f, p) = vg[f];
      }
    }
  }

  Index n_kv_heads_ = 0, head_dim_ = 0, capacity_ = 0, size_ = 0;
  Matrix keys_t_;    // (kv_heads·head_dim, stride): row g·head_dim + i is feature i of kv head g, by position
  Matrix values_t_;  // (kv_heads·head_dim, stride), the same for values
  Matrix values_;    // (kv_heads·capacity, head_dim): kv head g's values at rows g·capacity + position
};

}  // namespace polyformer
