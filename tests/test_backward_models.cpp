// Backward of the models against the float64 oracle (backward_oracle.hpp): the mean next-token cross-entropy of a
// Llama — stories260K (tied classifier, grouped-query heads) and a random model with an untied classifier —
// every gradient; cross-entropy itself; Llama's bad input.

#include <catch2/catch.hpp>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "backward_testing.hpp"
#include "llama_oracle.hpp"
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
  pft::randomize_parameters(model, 1, 0.15f);
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
