// Batched decoding: several sequences of different lengths advanced in one forward equal each decoded alone.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "polyformer/generate/sampler.hpp"
#include "polyformer/io/tokenizer.hpp"
#include "polyformer/models/llama.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;

namespace {

using Model = pf::Llama<>;

/// The logits of a sequence after its prompt and after each of `steps` greedy tokens, decoded alone.
struct Trace {
  std::vector<std::vector<float>> logits;
  std::vector<int> tokens;
};

Trace decode_alone(const Model& model, const std::vector<int>& prompt, int steps, const pf::Context& ctx) {
  Trace t;
  auto seq = model.new_sequence();
  auto l = seq.forward(prompt, ctx);
  for (int s = 0;; ++s) {
    t.logits.emplace_back(l.begin(), l.end());
    const int next = pf::Sampler::argmax(l);
    t.tokens.push_back(next);
    if (s == steps) break;
    l = seq.forward(std::span<const int>(&next, 1), ctx);
  }
  return t;
}

double relative_difference(std::span<const float> a, const std::vector<float>& b) {
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    worst = std::max(worst, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(b[i])));
  }
  return worst / scale;
}

}  // namespace

TEST_CASE("models/llama: a batch of prompts of different lengths decodes as each alone", "[models][llama][batch]") {
  const Model model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  const auto tokenizer = pf::io::Tokenizer::read(pft::shared_path("models/tok512.bin"), 512);
  const std::vector<std::vector<int>> prompts{tokenizer.encode("Once upon a time"), tokenizer.encode(""),
                                              tokenizer.encode("Lily and Tom went to the park to play with a ball"),
                                              tokenizer.encode("The cat")};
  constexpr int steps = 40;
  for (int threads : {1, 2}) {
    INFO("threads " << threads);
    const pf::Context ctx{threads};
    std::vector<Trace> alone;
    for (const auto& p : prompts) alone.push_back(decode_alone(model, p, steps, ctx));

    std::vector<Model::State> states;
    for (std::size_t i = 0; i < prompts.size(); ++i) states.push_back(model.make_state());
    std::vector<Model::State*> ptrs;
    for (auto& s : states) ptrs.push_back(&s);
    Model::Workspace ws;
    std::vector<std::span<const int>> inputs(prompts.begin(), prompts.end());
    std::vector<int> next(prompts.size());
    for (int s = 0; s <= steps; ++s) {
      const pf::Matrix& logits = model.forward(ptrs, inputs, ws, ctx);
      REQUIRE(logits.rows() == Index(prompts.size()));
      for (std::size_t i = 0; i < prompts.size(); ++i) {
        INFO("sequence " << i << ", step " << s);
        const std::span<const float> row(logits.data() + Index(i) * logits.cols(), std::size_t(logits.cols()));
        CHECK(relative_difference(row, alone[i].logits[std::size_t(s)]) <= 1e-5);
        next[i] = pf::Sampler::argmax(row);
        CHECK(next[i] == alone[i].tokens[std::size_t(s)]);
        inputs[i] = std::span<const int>(&next[i], 1);
      }
    }
    for (std::size_t i = 0; i < prompts.size(); ++i)
      CHECK(states[i].position() == Index(prompts[i].size()) + steps);
  }
}

TEST_CASE("models/llama: sequences join and leave a batch at any step", "[models][llama][batch]") {
  const Model model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  const pf::Context ctx{1};
  const std::vector<int> a{1, 403, 407, 261, 378}, b{1, 317, 269};
  const Trace alone_a = decode_alone(model, a, 12, ctx), alone_b = decode_alone(model, b, 12, ctx);
  Model::Workspace ws;
  Model::State sa = model.make_state(), sb = model.make_state();
  // a runs alone for 4 steps; then b's prompt is prefilled in the same call as a's next token.
  model.forward(sa, a, ws, ctx);
  for (int s = 0; s < 4; ++s) model.forward(sa, std::span<const int>(&alone_a.tokens[std::size_t(s)], 1), ws, ctx);
  Model::State* both[] = {&sb, &sa};
  std::span<const int> inputs[] = {b, std::span<const int>(&alone_a.tokens[4], 1)};
  for (int s = 0; s < 8; ++s) {
    const pf::Matrix& logits = model.forward(both, inputs, ws, ctx);
    INFO("step " << s);
    CHECK(relative_difference(std::span<const float>(logits.data(), 512), alone_b.logits[std::size_t(s)]) <= 1e-5);
    CHECK(relative_difference(std::span<const float>(logits.data() + 512, 512), alone_a.logits[std::size_t(s + 5)]) <= 1e-5);
    inputs[0] = std::span<const int>(&alone_b.tokens[std::size_t(s)], 1);
    inputs[1] = std::span<const int>(&alone_a.tokens[std::size_t(s + 5)], 1);
  }
}

TEST_CASE("models/llama: a bad sequence in a batch throws naming it and changes no state",
          "[models][llama][batch][errors]") {
  const Model model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  const pf::Context ctx{1};
  Model::Workspace ws;
  Model::State s0 = model.make_state(), s1 = model.make_state();
  Model::State* states[] = {&s0, &s1};
  const std::vector<int> ok{1, 2}, bad{1, 512};
  std::span<const int> inputs[] = {ok, bad};
  REQUIRE_THROWS_WITH(model.forward(states, inputs, ws, ctx), Catch::Contains("sequence 1: token 1 is 512, expected 0..511"));
  CHECK(s0.position() == 0);
  CHECK(s1.position() == 0);
  Model::State* same[] = {&s0, &s0};
  std::span<const int> two[] = {ok, ok};
  REQUIRE_THROWS_WITH(model.forward(same, two, ws, ctx), Catch::Contains("the same state as sequence 0"));
  Model::State empty;
  Model::State* unmade[] = {&empty};
  std::span<const int> one[] = {ok};
  REQUIRE_THROWS_WITH(model.forward(unmade, one, ws, ctx), Catch::Contains("make it with make_state"));
  CHECK(s0.position() == 0);
}
