// Named policy choices: a policy set that overrides one member makes the same block as spelling every policy.

#include <catch2/catch.hpp>

#include <type_traits>

#include "polyformer/blocks/block_policies.hpp"
#include "polyformer/layers/moe.hpp"
#include "polyformer/models/llama.hpp"
#include "support.hpp"

namespace pf = polyformer;

namespace {

struct Sparse : pf::BlockPolicies {
  template <typename Lin, typename Act>
  using ffn = pf::MixtureOfExperts<Lin, Act>;
};

struct LlamaLike : pf::BlockPolicies {
  using cross_attention = pf::NoCrossAttention;
  using norm = pf::RMSNorm;
  using activation = pf::SwiGLU;
  static constexpr pf::NormPlacement placement = pf::NormPlacement::pre;
  using rotary = pf::RoPE<pf::RotaryStyle::interleaved>;
};

}  // namespace

TEST_CASE("blocks/policies: a policy set names only what differs from the defaults", "[blocks][policies]") {
  STATIC_REQUIRE(std::is_same_v<pf::EncoderLayerOf<pf::BlockPolicies>, pf::EncoderLayer<>>);
  STATIC_REQUIRE(std::is_same_v<pf::DecoderLayerOf<pf::BlockPolicies>, pf::DecoderLayer<>>);
  STATIC_REQUIRE(std::is_same_v<pf::EncoderLayerOf<Sparse>,
                                pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, pf::ReLU,
                                                 pf::NormPlacement::post, pf::NoRotary,
                                                 pf::MixtureOfExperts<pf::Dense, pf::ReLU>>>);
  STATIC_REQUIRE(std::is_same_v<pf::DecoderLayerOf<LlamaLike>, pf::Llama<>::Layer>);
  STATIC_REQUIRE(!pf::DecoderLayerOf<LlamaLike>::has_cross_attention);
}
