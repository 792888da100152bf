#pragma once
/// \file Choosing a block's policies by name: a policy set is a struct whose members name each choice, with
/// defaults for every one, so a block that differs in one policy says only that one.
///
///   struct Sparse : pf::BlockPolicies {
///     template <typename Lin, typename Act> using ffn = pf::MixtureOfExperts<Lin, Act>;
///   };
///   using Layer = pf::EncoderLayerOf<Sparse>;  // full attention, Dense, LayerNorm, ReLU, post-norm, MoE FFN

#include "polyformer/attention/full.hpp"
#include "polyformer/blocks/decoder_layer.hpp"
#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/layers/activation.hpp"
#include "polyformer/layers/ffn.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/layers/rotary.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

/// The defaults of every block policy (those of torch.nn.TransformerEncoderLayer / DecoderLayer). Derive
/// from it and redeclare the members that differ.
struct BlockPolicies {
  using attention = FullAttention;        ///< self-attention policy
  using cross_attention = FullAttention;  ///< a decoder layer's attention over memory (NoCrossAttention: none)
  using linear = Dense;                   ///< every projection
  using norm = LayerNorm;
  using activation = ReLU;
  static constexpr NormPlacement placement = NormPlacement::post;
  using rotary = NoRotary;
  /// The FFN over the chosen linear policy and activation.
  template <typename Lin, typename Act>
  using ffn = FeedForward<Lin, Act>;
};

/// The encoder layer of policy set P.
template <typename P>
using EncoderLayerOf = EncoderLayer<typename P::attention, typename P::linear, typename P::norm, typename P::activation,
                                    P::placement, typename P::rotary,
                                    typename P::template ffn<typename P::linear, typename P::activation>>;

/// The decoder layer of policy set P.
template <typename P>
using DecoderLayerOf = DecoderLayer<typename P::attention, typename P::linear, typename P::norm, typename P::activation,
                                    P::placement, typename P::rotary, typename P::cross_attention,
                                    typename P::template ffn<typename P::linear, typename P::activation>>;

}  // namespace polyformer
