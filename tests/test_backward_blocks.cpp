// Backward of the blocks against the float64 oracle (backward_oracle.hpp): EncoderLayer post- and pre-norm, ReLU
// and GELU, batches with causal and key-padding masks, 1 and 2 threads; gradient names against parameter names,
// freezing, and the saved-forward errors.

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "backward_testing.hpp"
#include "polyformer/blocks/decoder_layer.hpp"
#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/blocks/layer_stack.hpp"

using namespace bwt;
namespace oracle = backward_oracle;
using pf::Matrix;
using pf::Vector;

namespace {

/// An encoder layer's weights drawn once, as a polyformer layer and as the oracle's.
template <typename Layer>
struct EncoderCase {
  Index d = 32, heads = 4, hidden = 48;
  oracle::EncoderWeights weights;
  Layer layer;

  EncoderCase(oracle::Act act, bool pre_norm) {
    const Matrix wq = pft::random_matrix(d, d, 1, 0.3f), wk = pft::random_matrix(d, d, 2, 0.3f);
    const Matrix wv = pft::random_matrix(d, d, 3, 0.3f), wo = pft::random_matrix(d, d, 4, 0.3f);
    const Vector bq = random_vector(d, 5, 0.1f), bk = random_vector(d, 6, 0.1f), bv = random_vector(d, 7, 0.1f);
    const Vector bo = random_vector(d, 8, 0.1f);
    const Matrix w1 = pft::random_matrix(hidden, d, 9, 0.3f), w2 = pft::random_matrix(d, hidden, 10, 0.3f);
    const Vector b1 = random_vector(hidden, 11, 0.1f), b2 = random_vector(d, 12, 0.1f);
    const Vector g1 = Vector::Ones(d) + random_vector(d, 13, 0.1f), g2 = Vector::Ones(d) + random_vector(d, 14, 0.1f);
    const Vector be1 = random_vector(d, 15, 0.1f), be2 = random_vector(d, 16, 0.1f);
    layer = Layer(typename Layer::Attention(pf::Dense(wq, bq), pf::Dense(wk, bk), pf::Dense(wv, bv), pf::Dense(wo, bo),
                                            pf::HeadConfig{heads}, pf::FullAttention(pf::FullAttention::Tiles{8, 16})),
                  typename Layer::FFN(pf::Dense(w1, b1), pf::Dense(w2, b2)), pf::LayerNorm(g1, be1),
                  pf::LayerNorm(g2, be2));
    weights.attn = {f64(wq), f64(wk), f64(wv), f64(wo), f64(bq), f64(bk), f64(bv), f64(bo), heads, heads, 0};
    weights.ffn = {f64(w1), f64(b1), f64(w2), f64(b2), MatD(), VecD(), act, false};
    weights.norm1_gamma = f64(g1), weights.norm1_beta = f64(be1);
    weights.norm2_gamma = f64(g2), weights.norm2_beta = f64(be2);
    weights.pre_norm = pre_norm;
  }
};

template <typename Act, pf::NormPlacement P>
void check_encoder_layer(oracle::Act act, int threads) {
  using Layer = pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, Act, P>;
  const bool pre = P == pf::NormPlacement::pre;
  INFO((pre ? "pre-norm" : "post-norm") << ", threads " << threads);
  EncoderCase<Layer> c(act, pre);
  const Index batch = 2, n = 19, d = c.d;
  const Matrix x = pft::random_matrix(batch * n, d, 21), dy = pft::random_matrix(batch * n, d, 22);
  Matrix padding = Matrix::Zero(batch, n);
  padding.block(1, n - 5, 1, 5).setOnes();
  pf::MaskSpec mask = pf::MaskSpec::causal_mask();
  mask.key_padding = pf::cview(padding);
  typename Layer::Saved saved;
  auto g = c.layer.make_gradients();
  Matrix y(batch * n, d), dx(batch * n, d);
  const pf::Context ctx{threads};
  c.layer.forward_train(pf::cview(x), batch, mask, pf::view(y), saved, ctx);
  padding.setZero();  // the saved forward keeps its own copy of the masks
  c.layer.backward(pf::cview(dy), pf::view(dx), g, saved, ctx);
  padding.block(1, n - 5, 1, 5).setOnes();
  oracle::AttnMask omask;
  omask.causal = true;
  BWT_CHECK_GRAD(y, oracle::encoder_layer(f64(x), batch, c.weights, omask, f64(padding)));
  const auto want = oracle::encoder_layer_backward(f64(x), batch, c.weights, omask, f64(padding), f64(dy));
  BWT_CHECK_GRAD(dx, want.dx);
  BWT_CHECK_GRAD(g.self_attn.q.weight, want.attn.dwq);
  BWT_CHECK_GRAD(g.self_attn.k.weight, want.attn.dwk);
  BWT_CHECK_GRAD(g.self_attn.v.weight, want.attn.dwv);
  BWT_CHECK_GRAD(g.self_attn.o.weight, want.attn.dwo);
  BWT_CHECK_GRAD(g.self_attn.q.bias, want.attn.dbq);
  BWT_CHECK_GRAD(g.self_attn.k.bias, want.attn.dbk, want.attn.dbq.norm());
  BWT_CHECK_GRAD(g.self_attn.v.bias, want.attn.dbv);
  BWT_CHECK_GRAD(g.self_attn.o.bias, want.attn.dbo);
  BWT_CHECK_GRAD(g.ffn.up.weight, want.ffn.dw_up);
  BWT_CHECK_GRAD(g.ffn.up.bias, want.ffn.db_up);
  BWT_CHECK_GRAD(g.ffn.down.weight, want.ffn.dw_down);
  BWT_CHECK_GRAD(g.ffn.down.bias, want.ffn.db_down);
  BWT_CHECK_GRAD(g.norm1.weight, want.norm1.dgamma);
  BWT_CHECK_GRAD(g.norm1.bias, want.norm1.dbeta);
  BWT_CHECK_GRAD(g.norm2.weight, want.norm2.dgamma);
  BWT_CHECK_GRAD(g.norm2.bias, want.norm2.dbeta);
}

}  // namespace

// Two of the four placement × activation pairs (the other two meet torch.autograd in test_examples_torch_forward.cpp;
// every activation's backward is in test_backward_layers.cpp).
TEST_CASE("backward: EncoderLayer against the oracle, post- and pre-norm, ReLU and GELU", "[backward][blocks]") {
  for (const int threads : {1, 2}) {
    check_encoder_layer<pf::ReLU, pf::NormPlacement::post>(oracle::Act::relu, threads);
    check_encoder_layer<pf::GELU, pf::NormPlacement::pre>(oracle::Act::gelu_erf, threads);
  }
}

TEST_CASE("backward: EncoderLayer gradients by name, freezing, saved-forward errors", "[backward][blocks][errors]") {
  using Layer = pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, pf::GELU, pf::NormPlacement::pre>;
  EncoderCase<Layer> c(oracle::Act::gelu_erf, true);
  auto g = c.layer.make_gradients();
  const pf::GradientList grads = pf::gradients_of(c.layer, g);
  const pf::BlockNames separate_names = pf::llama2c_block_names();  // q, k, v apart
  pf::GradientList separate;
  c.layer.gradients(separate, "", g, separate_names);
  pf::GradientList fused;  // torch's names, the default
  c.layer.gradients(fused, "", g);
  for (const pf::GradientList* list : {&separate, &fused}) {
    pf::ParameterList params;
    c.layer.parameters(params, "", list == &separate ? separate_names : pf::BlockNames{});
    REQUIRE(list->size() == params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
      CHECK(list->items()[i].name == params.items()[i].name);
      CHECK(list->items()[i].shape == params.items()[i].shape);
    }
  }
  CHECK(separate.find("attention.wk.weight") != nullptr);
  CHECK(fused.find("self_attn.in_proj_weight") != nullptr);
  CHECK(fused.find("self_attn.in_proj_weight")->shape == std::vector<Index>{3 * c.d, c.d});

  // Freeze the attention: its buffers go, the others still fill.
  CHECK(fused.freeze("self_attn.") == 4);
  CHECK(g.self_attn.q.weight.size() == 0);
  CHECK(g.self_attn.o.bias.size() == 0);
  const Index batch = 1, n = 9;
  const Matrix x = pft::random_matrix(n, c.d, 1), dy = pft::random_matrix(n, c.d, 2);
  typename Layer::Saved saved;
  Matrix y(n, c.d), dx(n, c.d);
  c.layer.forward_train(pf::cview(x), batch, {}, pf::view(y), saved, {});
  c.layer.backward(pf::cview(dy), pf::view(dx), g, saved, {});
  CHECK(g.self_attn.q.weight.size() == 0);
  CHECK(g.ffn.up.weight.norm() > 0.0f);
  const auto want = oracle::encoder_layer_backward(f64(x), batch, c.weights, {}, MatD(), f64(dy));
  BWT_CHECK_GRAD(dx, want.dx);  // the input's gradient still flows through the frozen attention
  BWT_CHECK_GRAD(g.norm1.weight, want.norm1.dgamma);

  CHECK_THROWS_WITH(c.layer.backward(pf::cview(dy), pf::view(dx), g, saved, {}),
                    Catch::Contains("EncoderLayer::backward: no saved forward"));
  typename Layer::Saved never;
  CHECK_THROWS_WITH(c.layer.backward(pf::cview(dy), pf::view(dx), g, never, {}),
                    Catch::Contains("EncoderLayer::backward: no saved forward"));
  Matrix bad(n + 1, c.d);
  c.layer.forward_train(pf::cview(x), batch, {}, pf::view(y), saved, {});
  CHECK_THROWS_WITH(c.layer.backward(pf::cview(bad), pf::view(dx), g, saved, {}),
                    Catch::Contains("EncoderLayer::backward: dy has shape (10, 32), expected (9, 32)"));
  // Kept: two backward passes over one forward add up.
  saved.keep = true;
  grads.zero();
  fused.unfreeze("");
  c.layer.forward_train(pf::cview(x), batch, {}, pf::view(y), saved, {});
  c.layer.backward(pf::cview(dy), pf::view(dx), g, saved, {});
  c.layer.backward(pf::cview(dy), pf::view(dx), g, saved, {});
  BWT_CHECK_GRAD(g.self_attn.o.weight, MatD(2.0 * want.attn.dwo));
  BWT_CHECK_GRAD(g.ffn.down.weight, MatD(2.0 * want.ffn.dw_down));
}

namespace {

/// A decoder layer with cross-attention, its weights drawn once, as a polyformer layer and as oracle pieces.
template <typename Layer>
struct DecoderCase {
  Index d = 24, heads = 3, hidden = 40;
  oracle::MHAWeights self_w, cross_w;
  oracle::FFNWeights ffn_w;
  VecD gamma[3], beta[3];
  Layer layer;

  static oracle::MHAWeights draw_mha(Index d, Index heads, unsigned seed, Matrix (&w)[4], Vector (&b)[4]) {
    for (int i = 0; i < 4; ++i) {
      w[i] = pft::random_matrix(d, d, seed + unsigned(i), 0.3f);
      b[i] = random_vector(d, seed + 10 + unsigned(i), 0.1f);
    }
    return {f64(w[0]), f64(w[1]), f64(w[2]), f64(w[3]), f64(b[0]), f64(b[1]), f64(b[2]), f64(b[3]), heads, heads, 0};
  }

  explicit DecoderCase(oracle::Act act) {
    Matrix sw[4], cw[4];
    Vector sb[4], cb[4];
    self_w = draw_mha(d, heads, 100, sw, sb);
    cross_w = draw_mha(d, heads, 200, cw, cb);
    const Matrix w1 = pft::random_matrix(hidden, d, 31, 0.3f), w2 = pft::random_matrix(d, hidden, 32, 0.3f);
    const Vector b1 = random_vector(hidden, 33, 0.1f), b2 = random_vector(d, 34, 0.1f);
    ffn_w = {f64(w1), f64(b1), f64(w2), f64(b2), MatD(), VecD(), act, false};
    pf::LayerNorm norms[3];
    for (int i = 0; i < 3; ++i) {
      const Vector g = Vector::Ones(d) + random_vector(d, 40 + unsigned(i), 0.1f), b = random_vector(d, 50 + unsigned(i), 0.1f);
      norms[i] = pf::LayerNorm(g, b);
      gamma[i] = f64(g), beta[i] = f64(b);
    }
    const auto mha = [&](Matrix (&w)[4], Vector (&b)[4]) {
      return typename Layer::SelfAttention(pf::Dense(w[0], b[0]), pf::Dense(w[1], b[1]), pf::Dense(w[2], b[2]),
                                           pf::Dense(w[3], b[3]), pf::HeadConfig{heads},
                                           pf::FullAttention(pf::FullAttention::Tiles{8, 16}));
    };
    layer = Layer(mha(sw, sb), mha(cw, cb), typename Layer::FFN(pf::Dense(w1, b1), pf::Dense(w2, b2)), norms[0],
                  norms[1], norms[2]);
  }
};

struct DecoderOracle {
  MatD y, dx, dmemory;
  oracle::MHAGrad self, cross;
  oracle::FFNGrad ffn;
  oracle::NormGrad norm[3];
};

/// The decoder layer's forward and backward composed from the oracle's pieces (torch.nn.TransformerDecoderLayer).
template <typename Case>
DecoderOracle decoder_oracle(const Case& c, bool pre, const MatD& x, const MatD& m, Index batch,
                             const MatD& tgt_padding, const MatD& mem_padding, const MatD& dy) {
  const double eps = 1e-5;
  oracle::AttnMask causal;
  causal.causal = true;
  const auto ln = [&](int i, const MatD& z) { return oracle::layer_norm(z, c.gamma[i], c.beta[i], eps); };
  const auto ln_back = [&](int i, const MatD& z, const MatD& dz) {
    return oracle::layer_norm_backward(z, c.gamma[i], c.beta[i], eps, dz);
  };
  const auto sa = [&](const MatD& z) { return oracle::mha(z, z, batch, c.self_w, causal, tgt_padding); };
  const auto ca = [&](const MatD& z) { return oracle::mha(z, m, batch, c.cross_w, {}, mem_padding); };
  DecoderOracle o;
  if (!pre) {
    const MatD s1 = x + sa(x), h1 = ln(0, s1), s2 = h1 + ca(h1), h2 = ln(1, s2), s3 = h2 + oracle::ffn(h2, c.ffn_w);
    o.y = ln(2, s3);
    o.norm[2] = ln_back(2, s3, dy);
    o.ffn = oracle::ffn_backward(h2, c.ffn_w, o.norm[2].dx);
    o.norm[1] = ln_back(1, s2, MatD(o.norm[2].dx + o.ffn.dx));
    o.cross = oracle::mha_backward(h1, m, batch, c.cross_w, {}, mem_padding, o.norm[1].dx);
    o.norm[0] = ln_back(0, s1, MatD(o.norm[1].dx + o.cross.dx));
    o.self = oracle::mha_backward(x, x, batch, c.self_w, causal, tgt_padding, o.norm[0].dx);
    o.dx = o.norm[0].dx + o.self.dx + o.self.dkv;
  } else {
    const MatD n1 = ln(0, x), h1 = x + sa(n1), n2 = ln(1, h1), h2 = h1 + ca(n2), n3 = ln(2, h2);
    o.y = h2 + oracle::ffn(n3, c.ffn_w);
    o.ffn = oracle::ffn_backward(n3, c.ffn_w, dy);
    o.norm[2] = ln_back(2, h2, o.ffn.dx);
    const MatD dh2 = dy + o.norm[2].dx;
    o.cross = oracle::mha_backward(n2, m, batch, c.cross_w, {}, mem_padding, dh2);
    o.norm[1] = ln_back(1, h1, o.cross.dx);
    const MatD dh1 = dh2 + o.norm[1].dx;
    o.self = oracle::mha_backward(n1, n1, batch, c.self_w, causal, tgt_padding, dh1);
    o.norm[0] = ln_back(0, x, MatD(o.self.dx + o.self.dkv));
    o.dx = dh1 + o.norm[0].dx;
  }
  o.dmemory = o.cross.dkv;
  return o;
}

template <typename Act, pf::NormPlacement P>
void check_decoder_layer(oracle::Act act, int threads) {
  using Layer = pf::DecoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, Act, P>;
  const bool pre = P == pf::NormPlacement::pre;
  INFO((pre ? "pre-norm" : "post-norm") << ", threads " << threads);
  const DecoderCase<Layer> c(act);
  const Index batch = 2, n = 11, mem = 17, d = c.d;
  const Matrix x = pft::random_matrix(batch * n, d, 61), memory = pft::random_matrix(batch * mem, d, 62);
  const Matrix dy = pft::random_matrix(batch * n, d, 63);
  Matrix tgt_padding = Matrix::Zero(batch, n), mem_padding = Matrix::Zero(batch, mem);
  tgt_padding.block(0, n - 3, 1, 3).setOnes();
  mem_padding.block(1, mem - 6, 1, 6).setOnes();
  pf::DecoderMasks masks;
  masks.self.key_padding = pf::cview(tgt_padding);
  masks.cross.key_padding = pf::cview(mem_padding);
  typename Layer::Saved saved;
  auto g = c.layer.make_gradients();
  Matrix y(batch * n, d), dx(batch * n, d), dmemory(batch * mem, d);
  const pf::Context ctx{threads};
  c.layer.forward_train(pf::cview(x), pf::cview(memory), batch, masks, pf::view(y), saved, ctx);
  c.layer.backward(pf::cview(dy), pf::view(dx), pf::view(dmemory), g, saved, ctx);
  const DecoderOracle want = decoder_oracle(c, pre, f64(x), f64(memory), batch, f64(tgt_padding), f64(mem_padding), f64(dy));
  BWT_CHECK_GRAD(y, want.y);
  BWT_CHECK_GRAD(dx, want.dx);
  BWT_CHECK_GRAD(dmemory, want.dmemory);
  BWT_CHECK_GRAD(g.self_attn.q.weight, want.self.dwq);
  BWT_CHECK_GRAD(g.self_attn.v.weight, want.self.dwv);
  BWT_CHECK_GRAD(g.self_attn.o.bias, want.self.dbo);
  BWT_CHECK_GRAD(g.cross_attn.k.weight, want.cross.dwk);
  BWT_CHECK_GRAD(g.cross_attn.v.bias, want.cross.dbv);
  BWT_CHECK_GRAD(g.cross_attn.o.weight, want.cross.dwo);
  BWT_CHECK_GRAD(g.ffn.up.weight, want.ffn.dw_up);
  BWT_CHECK_GRAD(g.ffn.down.bias, want.ffn.db_down);
  BWT_CHECK_GRAD(g.norm1.weight, want.norm[0].dgamma);
  BWT_CHECK_GRAD(g.norm2.bias, want.norm[1].dbeta);
  BWT_CHECK_GRAD(g.norm3.weight, want.norm[2].dgamma);
}

}  // namespace

TEST_CASE("backward: DecoderLayer with cross-attention against the oracle", "[backward][blocks]") {
  for (const int threads : {1, 2}) {
    check_decoder_layer<pf::ReLU, pf::NormPlacement::post>(oracle::Act::relu, threads);
    check_decoder_layer<pf::GELU, pf::NormPlacement::pre>(oracle::Act::gelu_erf, threads);
  }
}

TEST_CASE("backward: Encoder stack with learned positions, checkpointed or not", "[backward][blocks]") {
  using Layer = pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, pf::GELU, pf::NormPlacement::pre>;
  using Stack = pf::Encoder<Layer, pf::LearnedPosition>;
  std::vector<Layer> layers;
  for (int i = 0; i < 3; ++i) layers.push_back(EncoderCase<Layer>(oracle::Act::gelu_erf, true).layer);
  const Index batch = 2, n = 10, d = 32;
  const Stack stack(std::move(layers), pf::LayerNorm(d), pf::LearnedPosition(pft::random_matrix(16, d, 71, 0.1f)));
  const Matrix x = pft::random_matrix(batch * n, d, 72), dy = pft::random_matrix(batch * n, d, 73);
  const pf::MaskSpec mask = pf::MaskSpec::causal_mask();
  Stack::Gradients grads[2] = {stack.make_gradients(), stack.make_gradients()};
  Matrix dx[2] = {Matrix(batch * n, d), Matrix(batch * n, d)};
  for (const int checkpoint : {0, 1}) {
    Stack::Saved saved;
    saved.checkpoint = checkpoint == 1;
    Matrix y(batch * n, d);
    stack.forward_train(pf::cview(x), batch, mask, pf::view(y), saved, pf::Context{2});
    CHECK(pft::max_abs_diff(y, stack.forward(x, batch, mask)) < 1e-5);
    stack.backward(pf::cview(dy), pf::view(dx[checkpoint]), grads[checkpoint], saved, pf::Context{2});
    CHECK(saved.layers.size() == (checkpoint ? 1u : 3u));  // checkpointed: one layer's intermediates at a time
  }
  // Recomputing a layer's forward gives the same intermediates, hence the same gradients.
  CHECK(dx[1] == dx[0]);
  {  // The backward follows how the forward ran, whatever the flag says by then.
    Stack::Saved saved;
    saved.checkpoint = true;
    Matrix y(batch * n, d), dx2(batch * n, d);
    auto g2 = stack.make_gradients();
    stack.forward_train(pf::cview(x), batch, mask, pf::view(y), saved, pf::Context{1});
    saved.checkpoint = false;
    stack.backward(pf::cview(dy), pf::view(dx2), g2, saved, pf::Context{1});
    CHECK(dx2 == dx[0]);
  }
  const pf::GradientList list0 = pf::gradients_of(stack, grads[0]), list1 = pf::gradients_of(stack, grads[1]);
  REQUIRE(list0.size() == 3 * 12 + 2 + 1);  // 3 layers, the final norm, the position table
  CHECK(list0.find("layers.2.linear2.bias") != nullptr);
  CHECK(list0.find("norm.weight") != nullptr);
  CHECK(list0.find("position.weight") != nullptr);
  for (std::size_t i = 0; i < list0.size(); ++i) {
    const pf::Gradient& a = list0.items()[i];
    std::vector<float> va(static_cast<std::size_t>(a.numel())), vb(va.size());
    a.read(va.data());
    list1.items()[i].read(vb.data());
    INFO(a.name);
    CHECK(va == vb);
  }
  // The table's rows get the input's gradient, summed over the batch; rows past the sequence get nothing.
  const Matrix& table_grad = grads[0].position.weight;
  for (Index s = 0; s < n; ++s) CHECK((table_grad.row(s) - dx[0].row(s) - dx[0].row(n + s)).norm() < 1e-6f);
  CHECK(table_grad.bottomRows(16 - n).norm() == 0.0f);
}
