#pragma once
/// \file The decoding state of causal sliding-window attention: the keys and values of the last `history`
/// positions only, so its memory does not grow with the sequence. It is a linear buffer of history + chunk
/// rows rather than a modulo ring: new rows are appended after the held ones and, when the buffer is full,
/// the last `history` rows move to its front (once per `chunk` positions), so the positions a chunk of
/// queries needs are always one contiguous run of rows.

#include <algorithm>
#include <cstring>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// Keys and values of the most recent positions of one sequence, (rows, kv_heads·head_dim) each.
class WindowKVCache {
 public:
  WindowKVCache() = default;
  /// Keeps `history` positions (the window's reach back) and takes new positions `chunk` at a time.
  WindowKVCache(Index history, Index chunk, Index n_kv_heads, Index head_dim)
      : history_(history), chunk_(chunk), n_kv_heads_(n_kv_heads), head_dim_(head_dim) {
    if (history < 0 || chunk < 1 || n_kv_heads < 1 || head_dim < 1)
      throw config_error(detail::cat("WindowKVCache: history ", history, ", chunk ", chunk, ", kv heads ", n_kv_heads,
                                     ", head_dim ", head_dim, ", expected history >= 0 and the rest >= 1"));
    keys_ = Matrix::Zero(history + chunk, n_kv_heads * head_dim);
    values_ = Matrix::Zero(history + chunk, n_kv_heads * head_dim);
  }

  Index history() const noexcept { return history_; }
  /// The most new positions one append() takes.
  Index chunk() const noexcept { return chunk_; }
  Index n_kv_heads() const noexcept { return n_kv_heads_; }
  Index head_dim() const noexcept { return head_dim_; }
  /// Rows of the buffers (history + chunk): the state's size, whatever the sequence length.
  Index rows() const noexcept { return keys_.rows(); }
  /// Positions seen since the last clear() (the next position's index).
  Index size() const noexcept { return size_; }
  /// Rows held from earlier positions, at most history().
  Index held() const noexcept { return std::min(end_ - begin_, history_); }
  /// Forgets every position (the buffers stay).
  void clear() noexcept { size_ = begin_ = end_ = 0; }

  /// Appends n ≤ chunk() positions from k and v (n, kv_heads·head_dim). Afterwards recent_keys(held + n)
  /// and recent_values(held + n) cover the previously held positions followed by the new ones.
  void append(ConstMatrixView k, ConstMatrixView v) {
    const Index n = k.rows(), width = n_kv_heads_ * head_dim_;
    check_shape(k, n, width, "WindowKVCache::append", "keys");
    check_shape(v, n, width, "WindowKVCache::append", "values");
    if (n > chunk_)
      throw config_error(detail::cat("WindowKVCache::append: ", n, " positions, expected at most the chunk ", chunk_));
    const Index keep = held();
    if (end_ + n > keys_.rows()) {  // move the rows still needed to the front
      for (Matrix* m : {&keys_, &values_})
        std::memmove(m->data(), m->data() + (end_ - keep) * width, std::size_t(keep * width) * sizeof(float));
      end_ = keep;
    }
    begin_ = end_ - keep;
    block(view(keys_), end_, 0, n, width) = k;
    block(view(values_), end_, 0, n, width) = v;
    end_ += n;
    size_ += n;
  }

  /// The last `rows` positions' keys (rows, kv_heads·head_dim), oldest first.
  ConstMatrixView recent_keys(Index rows) const { return block(view(keys_), end_ - rows, 0, rows, keys_.cols()); }
  /// The last `rows` positions' values.
  ConstMatrixView recent_values(Index rows) const { return block(view(values_), end_ - rows, 0, rows, values_.cols()); }

 private:
  Index history_ = 0, chunk_ = 1, n_kv_heads_ = 0, head_dim_ = 0;
  Index size_ = 0, begin_ = 0, end_ = 0;  // rows [begin_, end_) hold the latest positions
  Matrix keys_, values_;                  // (history + chunk, kv_heads·head_dim)
};

}  // namespace polyformer
