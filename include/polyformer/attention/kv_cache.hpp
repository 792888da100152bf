#pragma once
/// \file The key/value cache of one self-attention layer for incremental decoding: keys and values of every
/// position seen so far, in buffers allocated once for `capacity` positions, so decoding a token allocates
/// nothing.

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// Keys (after rotary positions) and values of positions [0, size()), rows of kv_heads·head_dim floats.
class KVCache {
 public:
  KVCache() = default;
  /// Room for `capacity` positions of `kv_dim` = kv_heads·head_dim features.
  KVCache(Index capacity, Index kv_dim) : keys_(capacity, kv_dim), values_(capacity, kv_dim) {
    if (capacity < 1 || kv_dim < 1)
      throw config_error(detail::cat("KVCache: capacity ", capacity, ", kv_dim ", kv_dim, ", expected both >= 1"));
    keys_.setZero();
    values_.setZero();
  }

  Index capacity() const noexcept { return keys_.rows(); }
  Index kv_dim() const noexcept { return keys_.cols(); }
  /// Positions held.
  Index size() const noexcept { return size_; }
  /// Forgets every position (the buffers stay).
  void clear() noexcept { size_ = 0; }

  /// Throws config_error unless `n` more positions fit.
  void check_room(Index n, const char* func) const {
    if (n < 0 || size_ + n > capacity())
      throw config_error(detail::cat(func, ": the KV cache holds ", size_, " of ", capacity(),
                                     " positions, cannot append ", n));
  }

  /// Rows [size(), size() + n): where the next n positions' keys and values are written.
  MatrixView next_keys(Index n) { return block(view(keys_), size_, 0, n, kv_dim()); }
  MatrixView next_values(Index n) { return block(view(values_), size_, 0, n, kv_dim()); }
  /// Marks n written positions as held.
  void commit(Index n) noexcept { size_ += n; }

  /// Keys and values of positions [0, n) (n defaults to size()).
  ConstMatrixView keys(Index n = -1) const { return block(view(keys_), 0, 0, n < 0 ? size_ : n, kv_dim()); }
  ConstMatrixView values(Index n = -1) const { return block(view(values_), 0, 0, n < 0 ? size_ : n, kv_dim()); }

 private:
  Matrix keys_, values_;  // (capacity, kv_dim)
  Index size_ = 0;
};

}  // namespace polyformer
