// Every attention policy inside EncoderLayer, DecoderLayer (the causal ones) and EncoderDecoder: a batch of
// two padded sequences gives what each sequence gives alone. Every policy of the registry's list runs at its
// example spelling; windows, blocks and chunks shorter than the sequence are checked as well.

#include <catch2/catch.hpp>

#include <type_traits>
#include <vector>

#include "polyformer/polyformer.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

constexpr Index d = 16, heads = 4, hidden = 32;

pf::Dense dense(Index in, Index out, unsigned seed) {
  return pf::Dense(pft::random_matrix(out, in, seed, 0.3f), pft::random_matrix(out, 1, seed + 50, 0.1f).col(0));
}

template <typename Attn>
typename pf::MultiHeadAttention<Attn, pf::Dense> attention(const Attn& policy, unsigned seed) {
  return {dense(d, d, seed), dense(d, d, seed + 1), dense(d, d, seed + 2), dense(d, d, seed + 3), pf::HeadConfig{heads},
          policy};
}

template <typename Attn>
pf::EncoderLayer<Attn> encoder_layer(const Attn& policy, unsigned seed) {
  using L = pf::EncoderLayer<Attn>;
  return L(attention(policy, seed), typename L::FFN(dense(d, hidden, seed + 4), dense(hidden, d, seed + 5)),
           pf::LayerNorm(d), pf::LayerNorm(d));
}

template <typename Attn>
pf::DecoderLayer<Attn> decoder_layer(const Attn& policy, unsigned seed) {
  using L = pf::DecoderLayer<Attn>;
  return L(attention(policy, seed), attention(pf::FullAttention{}, seed + 10),
           typename L::FFN(dense(d, hidden, seed + 4), dense(hidden, d, seed + 5)), pf::LayerNorm(d), pf::LayerNorm(d),
           pf::LayerNorm(d));
}

// Batch of two sequences of n (the second with its last 3 keys padded) against each sequence alone.
template <typename Attn>
void check_encoder(const Attn& policy, bool causal) {
  const Index n = 40;
  auto layer = encoder_layer(policy, 1);
  const Matrix x = pft::random_matrix(2 * n, d, 2);
  const std::vector<Index> lengths{n, n - 3};
  pf::MaskSpec mask;
  mask.causal = causal;
  mask.key_lengths = lengths;
  const Matrix both = layer.forward(x, 2, mask, pf::Context{2});
  REQUIRE(both.allFinite());
  for (Index b = 0; b < 2; ++b) {
    pf::MaskSpec one;
    one.causal = causal;
    one.key_lengths = std::span<const Index>(lengths.data() + b, 1);
    const Matrix alone = layer.forward(Matrix(x.middleRows(b * n, n)), 1, one, pf::Context{1});
    INFO(Attn::name << " causal " << causal << " sequence " << b);
    CHECK((both.middleRows(b * n, n) - alone).cwiseAbs().maxCoeff() < 1e-5f);
  }
}

// `strictly_causal`: outputs never depend on later inputs. LSH masks later keys too, but later positions'
// hashes move the chunk boundaries of the sorted order, so earlier outputs can change (as in Reformer).
template <typename Attn>
void check_decoder_and_stack(const Attn& policy, bool strictly_causal = true) {
  const Index n = 24, m = 30;
  auto layer = decoder_layer(policy, 3);
  const Matrix x = pft::random_matrix(2 * n, d, 4), memory = pft::random_matrix(2 * m, d, 5);
  const Matrix both = layer.forward(x, memory, 2);
  for (Index b = 0; b < 2; ++b) {
    const Matrix alone = layer.forward(Matrix(x.middleRows(b * n, n)), Matrix(memory.middleRows(b * m, m)), 1);
    INFO(Attn::name << " decoder sequence " << b);
    CHECK((both.middleRows(b * n, n) - alone).cwiseAbs().maxCoeff() < 1e-5f);
  }
  // Causality: the first n/2 outputs do not depend on later inputs.
  Matrix changed = x.topRows(n);
  changed.bottomRows(n / 2).setRandom();
  const Matrix a = layer.forward(Matrix(x.topRows(n)), Matrix(memory.topRows(m)), 1);
  const Matrix c = layer.forward(changed, Matrix(memory.topRows(m)), 1);
  const float change = (a.topRows(n / 2) - c.topRows(n / 2)).cwiseAbs().maxCoeff();
  INFO(Attn::name << " causality: the first outputs changed by " << change);
  // Up to rounding: Performer's stabilizer shifts a chunk's key exponents by their max, later keys' included.
  if (strictly_causal) CHECK(change < 1e-5f);
  using Stack = pf::EncoderDecoder<pf::Encoder<pf::EncoderLayer<Attn>>, pf::Decoder<pf::DecoderLayer<Attn>>>;
  std::vector<pf::EncoderLayer<Attn>> enc;
  enc.push_back(encoder_layer(policy, 7));
  std::vector<pf::DecoderLayer<Attn>> dec;
  dec.push_back(decoder_layer(policy, 8));
  Stack model(pf::Encoder<pf::EncoderLayer<Attn>>(std::move(enc)), pf::Decoder<pf::DecoderLayer<Attn>>(std::move(dec)));
  const Matrix y = model.forward(Matrix(memory.topRows(m)), Matrix(x.topRows(n)), 1);
  CHECK(y.rows() == n);
  CHECK(y.allFinite());
}

}  // namespace

TEST_CASE("Every registered attention policy works inside the blocks", "[attention][blocks][registry]") {
  pf::AttentionOptions options;
  options.set("n_max", 64);  // Linformer's projections
  pf::for_each_attention_policy([&]<typename P>(std::type_identity<P>) {
    const P policy = pf::parse_attention_as<P>(P::example_spelling, options);
    check_encoder(policy, false);
    if constexpr (P::supports_causal) {
      check_encoder(policy, true);
      check_decoder_and_stack(policy);
    }
  });
}

TEST_CASE("Windows, blocks and chunks shorter than the sequence inside the blocks", "[attention][blocks]") {
  for (bool causal : {false, true}) {
    check_encoder(pf::SlidingWindow(5, 2, {1}), causal);
    check_encoder(pf::Blockwise(8, true), causal);
    check_encoder(pf::LSHAttention(pf::LSHOptions{2, 8, 0, 4}), causal);
    check_encoder(pf::Performer(pf::PositiveRandomFeatures(32, 2)), causal);
  }
  check_encoder(pf::Linformer::random(8, 40), false);
  check_decoder_and_stack(pf::SlidingWindow(5));
  check_decoder_and_stack(pf::Blockwise(8));
  check_decoder_and_stack(pf::LSHAttention(pf::LSHOptions{2, 8, 0, 4}), /*strictly_causal=*/false);
  check_decoder_and_stack(pf::Performer(pf::PositiveRandomFeatures(32, 2)));
  // Linformer in an encoder-decoder: its encoder side, full attention in the decoder.
  using Stack = pf::EncoderDecoder<pf::Encoder<pf::EncoderLayer<pf::Linformer>>, pf::Decoder<pf::DecoderLayer<>>>;
  std::vector<pf::EncoderLayer<pf::Linformer>> enc;
  enc.push_back(encoder_layer(pf::Linformer::random(8, 64), 9));
  std::vector<pf::DecoderLayer<>> dec;
  dec.push_back(decoder_layer(pf::FullAttention{}, 10));
  Stack model(pf::Encoder<pf::EncoderLayer<pf::Linformer>>(std::move(enc)), pf::Decoder<pf::DecoderLayer<>>(std::move(dec)));
  CHECK(model.forward(pft::random_matrix(50, d, 1), pft::random_matrix(20, d, 2), 1).allFinite());
  // A causal mask handed to Linformer at run time is refused too.
  auto layer = encoder_layer(pf::Linformer::random(8, 40), 1);
  CHECK_THROWS_WITH(layer.forward(pft::random_matrix(10, d, 1), 1, pf::MaskSpec::causal_mask()),
                    Catch::Contains("bidirectional only"));
}
