// Backward of the models against the float64 oracle (backward_oracle.hpp): the mean next-token cross-entropy of a
// Llama — stories260K (tied classifier, grouped-query heads) and a random model with an untied classifier —
// every gradient; cross-entropy itself; Llama's bad input.

#include <catch2/catch.hpp>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "backward_testing.hpp"
#include "polyformer/layers/cross_entropy.hpp"
#include "polyformer/models/llama.hpp"

using namespace bwt;
namespace oracle = backward_oracle;
using pf::Matrix;

TEST_CASE("backward: cross_entropy against the oracle, ignored targets", "[backward]") {
  const Matrix logits = pft::random_matrix(7, 11, 1, 3.0f);
  const std::vector<int> targets = {3, 0, -100, 10, 5, -100, 1};
  Matrix d(7, 11);
  const double loss = pf::cross_entropy(pf::cview(logits), targets, pf::view(d));
  const std::vector<Index> t64(targets.begin(), targets.end());
  std::vector<Index> oracle_targets;
  for (Index t : t64) oracle_targets.push_back(t < 0 ? -1 : t);
  CHECK(loss == Approx(oracle::cross_entropy(f64(logits), oracle_targets)).epsilon(1e-6));
  BWT_CHECK_GRAD(d, oracle::cross_entropy_backward(f64(logits), oracle_targets));
  Matrix in_place = logits;
  pf::cross_entropy(pf::cview(in_place), targets, pf::view(in_place));
  CHECK(in_place == d);
  const std::vector<int> none(7, -100);
  CHECK(pf::cross_entropy(pf::cview(logits), none, pf::view(d)) == 0.0);
  CHECK(d.norm() == 0.0f);
  const std::vector<int> bad = {3, 0, 2, 11, 5, 1, 1};
  CHECK_THROWS_WITH(pf::cross_entropy(pf::cview(logits), bad, pf::view(d)),
                    Catch::Contains("cross_entropy: target 3 is 11, expected 0..10"));
}

namespace {

using Weights = std::map<std::string, MatD>;

/// Every parameter of a model as float64 matrices by name (vectors as one column).
template <typename Model>
Weights weights_of(Model& model) {
  Weights w;
  const pf::ParameterList params = pf::parameters_of(model);
  for (const pf::Parameter& p : params.items()) {
    Matrix m(p.shape[0], p.shape.size() > 1 ? p.shape[1] : 1);
    p.read(m.data());
    w[p.name] = f64(m);
  }
  return w;
}

/// The mean next-token cross-entropy of a Llama and every gradient, by the chain rule over the oracle's pieces:
/// embedding → per layer x + attention(rope(q), rope(k), v) of rms_norm(x), then + SwiGLU FFN of rms_norm(h) →
/// rms_norm → classifier (the embedding when tied) → cross-entropy.
struct LlamaOracle {
  double loss = 0.0;
  Weights grad;
};
LlamaOracle llama_oracle(const Weights& w, const pf::io::LlamaConfig& c, const std::vector<int>& tokens, Index batch,
                         const std::vector<Index>& targets) {
  const Index rows = static_cast<Index>(tokens.size()), seq = rows / batch, d = c.dim, hd = c.head_dim();
  const Index H = c.n_heads, G = c.n_kv_heads, L = c.n_layers;
  const double eps = c.norm_eps, scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const auto W = [&](const std::string& name) -> const MatD& { return w.at(name); };
  const auto V = [&](const std::string& name) -> VecD { return w.at(name).col(0); };
  const auto layer_name = [](Index l, const std::string& rest) { return "layers." + std::to_string(l) + "." + rest; };
  const bool tied = w.count("output.weight") == 0;
  oracle::AttnMask causal;
  causal.causal = true;

  struct LayerState {
    MatD x, n1, q, k, v, qr, kr, context, h, n2;
  };
  std::vector<LayerState> st(static_cast<std::size_t>(L));
  MatD x(rows, d);
  for (Index r = 0; r < rows; ++r) x.row(r) = W("tok_embeddings.weight").row(tokens[std::size_t(r)]);
  for (Index l = 0; l < L; ++l) {
    LayerState& s = st[std::size_t(l)];
    s.x = x;
    s.n1 = oracle::rms_norm(x, V(layer_name(l, "attention_norm.weight")), eps);
    s.q = oracle::linear(s.n1, W(layer_name(l, "attention.wq.weight")), VecD());
    s.k = oracle::linear(s.n1, W(layer_name(l, "attention.wk.weight")), VecD());
    s.v = oracle::linear(s.n1, W(layer_name(l, "attention.wv.weight")), VecD());
    s.qr = s.q, s.kr = s.k;
    s.context = MatD(rows, H * hd);
    for (Index b = 0; b < batch; ++b) {
      s.qr.middleRows(b * seq, seq) = oracle::rope(s.q.middleRows(b * seq, seq), H, hd, 0, true, c.rope_theta);
      s.kr.middleRows(b * seq, seq) = oracle::rope(s.k.middleRows(b * seq, seq), G, hd, 0, true, c.rope_theta);
      s.context.middleRows(b * seq, seq) = oracle::attention(s.qr.middleRows(b * seq, seq), s.kr.middleRows(b * seq, seq),
                                                             s.v.middleRows(b * seq, seq), H, G, scale, causal);
    }
    s.h = x + oracle::linear(s.context, W(layer_name(l, "attention.wo.weight")), VecD());
    s.n2 = oracle::rms_norm(s.h, V(layer_name(l, "ffn_norm.weight")), eps);
    oracle::FFNWeights f{W(layer_name(l, "feed_forward.w3.weight")), VecD(), W(layer_name(l, "feed_forward.w2.weight")),
                         VecD(), W(layer_name(l, "feed_forward.w1.weight")), VecD(), oracle::Act::silu, true};
    x = s.h + oracle::ffn(s.n2, f);
  }
  const MatD nf = oracle::rms_norm(x, V("norm.weight"), eps);
  const MatD& classifier = tied ? W("tok_embeddings.weight") : W("output.weight");
  const MatD logits = oracle::linear(nf, classifier, VecD());
  LlamaOracle o;
  o.loss = oracle::cross_entropy(logits, targets);
  const MatD dlogits = oracle::cross_entropy_backward(logits, targets);
  const auto out = oracle::linear_backward(nf, classifier, VecD(), dlogits);
  MatD d_embedding = MatD::Zero(c.vocab_size, d);
  if (tied) d_embedding += out.dw;
  else o.grad["output.weight"] = out.dw;
  const auto fn = oracle::rms_norm_backward(x, V("norm.weight"), eps, out.dx);
  o.grad["norm.weight"] = fn.dgamma;
  MatD dx = fn.dx;
  for (Index l = L - 1; l >= 0; --l) {
    const LayerState& s = st[std::size_t(l)];
    oracle::FFNWeights f{W(layer_name(l, "feed_forward.w3.weight")), VecD(), W(layer_name(l, "feed_forward.w2.weight")),
                         VecD(), W(layer_name(l, "feed_forward.w1.weight")), VecD(), oracle::Act::silu, true};
    const auto fg = oracle::ffn_backward(s.n2, f, dx);
    o.grad[layer_name(l, "feed_forward.w1.weight")] = fg.dw_gate;
    o.grad[layer_name(l, "feed_forward.w3.weight")] = fg.dw_up;
    o.grad[layer_name(l, "feed_forward.w2.weight")] = fg.dw_down;
    const auto n2g = oracle::rms_norm_backward(s.h, V(layer_name(l, "ffn_norm.weight")), eps, fg.dx);
    o.grad[layer_name(l, "ffn_norm.weight")] = n2g.dgamma;
    const MatD dh = dx + n2g.dx;
    const auto og = oracle::linear_backward(s.context, W(layer_name(l, "attention.wo.weight")), VecD(), dh);
    o.grad[layer_name(l, "attention.wo.weight")] = og.dw;
    MatD dq(rows, H * hd), dk(rows, G * hd), dv(rows, G * hd);
    for (Index b = 0; b < batch; ++b) {
      const auto ag = oracle::attention_backward(s.qr.middleRows(b * seq, seq), s.kr.middleRows(b * seq, seq),
                                                 s.v.middleRows(b * seq, seq), H, G, scale, causal,
                                                 og.dx.middleRows(b * seq, seq));
      dq.middleRows(b * seq, seq) = oracle::rope_backward(ag.dq, H, hd, 0, true, c.rope_theta);
      dk.middleRows(b * seq, seq) = oracle::rope_backward(ag.dk, G, hd, 0, true, c.rope_theta);
      dv.middleRows(b * seq, seq) = ag.dv;
    }
    const auto qg = oracle::linear_backward(s.n1, W(layer_name(l, "attention.wq.weight")), VecD(), dq);
    const auto kg = oracle::linear_backward(s.n1, W(layer_name(l, "attention.wk.weight")), VecD(), dk);
    const auto vg = oracle::linear_backward(s.n1, W(layer_name(l, "attention.wv.weight")), VecD(), dv);
    o.grad[layer_name(l, "attention.wq.weight")] = qg.dw;
    o.grad[layer_name(l, "attention.wk.weight")] = kg.dw;
    o.grad[layer_name(l, "attention.wv.weight")] = vg.dw;
    const auto n1g = oracle::rms_norm_backward(s.x, V(layer_name(l, "attention_norm.weight")), eps,
                                               MatD(qg.dx + kg.dx + vg.dx));
    o.grad[layer_name(l, "attention_norm.weight")] = n1g.dgamma;
    dx = dh + n1g.dx;
  }
  for (Index r = 0; r < rows; ++r) d_embedding.row(tokens[std::size_t(r)]) += dx.row(r);
  o.grad["tok_embeddings.weight"] = d_embedding;
  return o;
}

/// batch sequences of seq + 1 random tokens: the inputs (batch·seq) and their next tokens as targets.
void next_token_batch(Index vocab, Index batch, Index seq, unsigned seed, std::vector<int>& tokens,
                      std::vector<int>& targets) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> pick(0, static_cast<int>(vocab) - 1);
  tokens.clear();
  targets.clear();
  for (Index b = 0; b < batch; ++b) {
    std::vector<int> s(static_cast<std::size_t>(seq + 1));
    for (int& t : s) t = pick(rng);
    tokens.insert(tokens.end(), s.begin(), s.end() - 1);
    targets.insert(targets.end(), s.begin() + 1, s.end());
  }
}

template <typename Model>
void check_llama(Model& model, Index batch, Index seq, int threads) {
  INFO("threads " << threads);
  const pf::io::LlamaConfig& c = model.config();
  std::vector<int> tokens, targets;
  next_token_batch(c.vocab_size, batch, seq, 7, tokens, targets);
  typename Model::Saved saved;
  auto g = model.make_gradients();
  Matrix logits(batch * seq, c.vocab_size), dlogits(batch * seq, c.vocab_size);
  const pf::Context ctx{threads};
  model.forward_train(tokens, batch, pf::view(logits), saved, ctx);
  const double loss = pf::cross_entropy(pf::cview(logits), targets, pf::view(dlogits));
  model.backward(pf::cview(dlogits), g, saved, ctx);
  const LlamaOracle want = llama_oracle(weights_of(model), c, tokens, batch, std::vector<Index>(targets.begin(), targets.end()));
  CHECK(loss == Approx(want.loss).epsilon(1e-5));
  const pf::GradientList list = pf::gradients_of(model, g);
  REQUIRE(list.size() == want.grad.size());
  for (const pf::Gradient& e : list.items()) {
    INFO(e.name);
    REQUIRE(want.grad.count(e.name) == 1);
    const MatD& w = want.grad.at(e.name);
    Matrix got(w.rows(), w.cols());
    REQUIRE(e.numel() == got.size());
    e.read(got.data());
    BWT_CHECK_GRAD(got, w);
  }
}

}  // namespace

TEST_CASE("backward: stories260K next-token cross-entropy, every gradient against the oracle", "[backward][llama]") {
  auto model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  REQUIRE(model.classifier() == nullptr);  // tied to the embedding
  REQUIRE(model.config().n_kv_heads < model.config().n_heads);
  for (const int threads : {1, 2}) check_llama(model, 2, 13, threads);
}

TEST_CASE("backward: a random Llama with an untied classifier and grouped-query heads", "[backward][llama]") {
  pf::io::LlamaConfig c;
  c.dim = 48, c.hidden_dim = 80, c.n_layers = 2, c.n_heads = 6, c.n_kv_heads = 2, c.vocab_size = 70, c.seq_len = 64;
  c.shared_classifier = false;
  auto model = pf::make_llama<pf::Dense>(c);
  unsigned seed = 1;
  pf::ParameterList params = pf::parameters_of(model);
  for (const pf::Parameter& p : params.items()) {
    const bool gain = p.shape.size() == 1;
    Matrix m = pft::random_matrix(p.shape[0], gain ? 1 : p.shape[1], seed++, gain ? 0.1f : 0.15f);
    if (gain) m.array() += 1.0f;
    p.write(m.data());
  }
  REQUIRE(model.classifier() != nullptr);
  for (const int threads : {1, 2}) check_llama(model, 3, 37, threads);  // 37 positions: past the 16-row GEMM path

  // Bad input: tokens outside the vocabulary, a ragged batch, a backward without its forward.
  typename decltype(model)::Saved saved;
  auto g = model.make_gradients();
  Matrix logits(4, c.vocab_size);
  const std::vector<int> bad = {1, 2, 70, 3}, ragged = {1, 2, 3};
  CHECK_THROWS_WITH(model.forward_train(bad, 1, pf::view(logits), saved, {}),
                    Catch::Contains("Llama::forward_train: token 2 is 70, expected 0..69"));
  CHECK_THROWS_WITH(model.forward_train(ragged, 2, pf::view(logits), saved, {}),
                    Catch::Contains("3 tokens for batch 2"));
  CHECK_THROWS_WITH(model.backward(pf::cview(logits), g, saved, {}), Catch::Contains("Llama::backward: no saved forward"));
}
