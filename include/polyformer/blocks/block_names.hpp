#pragma once
/// \file How a block's tensors are named in a checkpoint: the names of its sublayers, norms and projections.
/// The defaults are PyTorch's nn.TransformerEncoderLayer / nn.TransformerDecoderLayer state-dict names;
/// llama2c_block_names() gives those of llama2.c's model.py.

#include <string>

#include "polyformer/attention/multi_head.hpp"
#include "polyformer/layers/ffn.hpp"

namespace polyformer {

struct BlockNames {
  std::string self_attn = "self_attn.";
  std::string cross_attn = "multihead_attn.";
  std::string ffn;  ///< prefix of the FFN's projections ("" in torch: linear1, linear2 sit on the layer)
  std::string norm1 = "norm1.", norm2 = "norm2.", norm3 = "norm3.";
  AttentionNames attention{.fused_in_proj = true};
  FFNNames ffn_names{};
};

/// PyTorch's names (the default).
inline BlockNames torch_block_names() { return BlockNames{}; }

/// llama2.c model.py's names of a decoder-only block: attention.wq … wo, feed_forward.w1 (gate) / w3 (up) /
/// w2 (down), attention_norm, ffn_norm.
inline BlockNames llama2c_block_names() {
  BlockNames n;
  n.self_attn = "attention.";
  n.attention = AttentionNames{.q = "wq.", .k = "wk.", .v = "wv.", .o = "wo."};
  n.ffn = "feed_forward.";
  n.ffn_names = FFNNames{.gate = "w1.", .up = "w3.", .down = "w2."};
  n.norm1 = "attention_norm.";
  n.norm2 = "ffn_norm.";
  return n;
}

}  // namespace polyformer
