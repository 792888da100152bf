// LlamaTeamDecoder: a decoding step run by a team of threads gives Llama::forward's logits bit for bit (random
// models with grouped-query heads, tied and untied classifiers, teams of 1 to 3 with uneven shares, stories260K),
// runs through Llama::forward from inside a parallel region, refuses what it cannot decode, and leaves a state
// untouched when it refuses a call. SpinBarrier and run_team on their own.

#include <catch2/catch.hpp>

#include <atomic>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "polyformer/attention/dynamic_attention.hpp"
#include "polyformer/attention/registry.hpp"
#include "polyformer/generate/sampler.hpp"
#include "polyformer/linear/int8.hpp"
#include "polyformer/models/llama.hpp"
#include "polyformer/models/llama_team_decoder.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;

namespace {

pf::io::LlamaConfig small_config(bool tied) {
  pf::io::LlamaConfig c;
  c.dim = 64;
  c.hidden_dim = 172;
  c.n_layers = 3;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.vocab_size = 96;
  c.seq_len = 40;
  c.shared_classifier = tied;
  return c;
}

pf::Llama<> random_model(const pf::io::LlamaConfig& c, unsigned seed) {
  pf::Llama<> model = pf::make_llama(c);
  pft::randomize_parameters(model, seed, 0.3f);
  return model;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Decodes `steps` greedy tokens after `prompt` with Llama::forward and with a team, comparing every step's logits
/// bit for bit (the prompt through Llama::forward in both).
template <typename Attn, typename Lin>
void require_same_logits(const pf::Llama<Attn, Lin>& model, int team, const std::vector<int>& prompt, int steps,
                         const pf::Context& ctx) {
  auto plain = model.new_sequence();
  pf::LlamaTeamSequence<Attn, Lin> teamed(model, team);
  std::span<const float> a = plain.forward(prompt, ctx);
  std::vector<float> b_copy;
  {
    const std::span<const float> b = teamed.forward(prompt, ctx);
    REQUIRE(same_bits(a, b));
  }
  for (int s = 0; s < steps; ++s) {
    INFO("step " << s);
    const int next = pf::Sampler::argmax(a);
    a = plain.forward(std::span<const int>(&next, 1), ctx);
    const std::span<const float> b = teamed.forward(std::span<const int>(&next, 1), ctx);
    REQUIRE(teamed.position() == plain.position());
    REQUIRE(same_bits(a, b));
  }
}

}  // namespace

TEST_CASE("models/llama_team_decoder: a team's logits equal Llama::forward's bit for bit", "[models][llama][team]") {
  using Model = pf::Llama<>;
  for (bool tied : {true, false}) {
    INFO("tied classifier " << tied);
    const Model model = random_model(small_config(tied), tied ? 11u : 29u);
    for (int team : {1, 2, 3}) {
      INFO("team " << team);
      for (int threads : {1, 2}) require_same_logits(model, team, {1, 17, 5, 60}, 30, pf::Context{threads});
    }
  }
}

TEST_CASE("models/llama_team_decoder: uneven shares where a member has no kv head", "[models][llama][team]") {
  using Model = pf::Llama<>;
  pf::io::LlamaConfig c = small_config(true);
  c.dim = 48;  // head_dim 6: shares that are not whole vectors
  c.hidden_dim = 100;
  c.n_kv_heads = 2;  // a team of 3: one member attends nothing and still computes its features
  const Model model = random_model(c, 7u);
  REQUIRE(pf::LlamaTeamDecoder<pf::FullAttention, pf::Dense>::unsupported(model, 3).empty());
  require_same_logits(model, 3, {3}, 35, pf::Context{1});
}

TEST_CASE("models/llama_team_decoder: generate's model (LoRA over Dense and attention chosen at run time)",
          "[models][llama][team]") {
  using Attn = pf::DynamicAttention<pf::AttentionPolicies>;
  using Lin = pf::LoRA<pf::Dense>;
  using Model = pf::Llama<Attn, Lin>;
  const pf::io::LlamaConfig c = small_config(true);
  Model model = pf::make_llama<Lin>(c, Attn(pf::FullAttention{}));
  pft::randomize_parameters(model, 41u, 0.3f);
  require_same_logits(model, 2, {2, 9}, 20, pf::Context{2});

  SECTION("an inactive adapter changes nothing and an active one is refused") {
    for (auto& layer : model.layers()) layer.self_attn().q_proj().add_adapter("a", 2, 4.0f, 5);
    require_same_logits(model, 2, {2, 9}, 5, pf::Context{1});
    model.layers()[1].self_attn().q_proj().set_active("a");
    const std::string why = pf::LlamaTeamDecoder<Attn, Lin>::unsupported(model, 2);
    REQUIRE(why.find("layer 1") != std::string::npos);
    REQUIRE_THROWS_WITH((pf::LlamaTeamDecoder<Attn, Lin>(model, 2)), Catch::Contains("LlamaTeamDecoder: layer 1"));
    REQUIRE_FALSE(pf::LlamaTeamDecoder<Attn, Lin>::worthwhile(model, 2));
  }
  SECTION("attention other than full is refused") {
    Model sliding = pf::make_llama<Lin>(c, Attn::parse("sliding:8"));
    REQUIRE(pf::LlamaTeamDecoder<Attn, Lin>::unsupported(sliding, 2).find("not full attention") != std::string::npos);
  }
}

TEST_CASE("models/llama_team_decoder: refuses int8 weights and teams below one and is worth it for small layers only", "[models][llama][team]") {
  using Model = pf::Llama<pf::FullAttention, pf::Int8>;
  const Model model = pf::make_llama<pf::Int8>(small_config(true));
  REQUIRE(pf::LlamaTeamDecoder<pf::FullAttention, pf::Int8>::unsupported(model, 2).find("fp32 Dense") !=
          std::string::npos);
  const pf::Llama<> dense = random_model(small_config(true), 3u);
  REQUIRE_FALSE(pf::LlamaTeamDecoder<pf::FullAttention, pf::Dense>::unsupported(dense, 0).empty());
  REQUIRE_FALSE(pf::LlamaTeamDecoder<pf::FullAttention, pf::Dense>::worthwhile(dense, 1));
  REQUIRE(pf::LlamaTeamDecoder<pf::FullAttention, pf::Dense>::worthwhile(dense, 2));  // 2·64·172 flops a product
  pf::io::LlamaConfig wide = small_config(true);  // products of 2·512·1024 flops: Llama::forward splits them itself
  wide.dim = 512;
  wide.hidden_dim = 1024;
  wide.n_layers = 1;
  const pf::Llama<> wide_model = pf::make_llama(wide);
  REQUIRE(pf::LlamaTeamDecoder<pf::FullAttention, pf::Dense>::unsupported(wide_model, 2).empty());
  REQUIRE_FALSE(pf::LlamaTeamDecoder<pf::FullAttention, pf::Dense>::worthwhile(wide_model, 2));
}

TEST_CASE("models/llama_team_decoder: a refused call changes nothing and a call inside a region still decodes",
          "[models][llama][team]") {
  using Model = pf::Llama<>;
  const Model model = random_model(small_config(false), 5u);
  pf::LlamaTeamDecoder<pf::FullAttention, pf::Dense> team(model, 2);
  auto state = model.make_state();
  REQUIRE_THROWS_WITH(team.forward(state, 96), Catch::Contains("LlamaTeamDecoder::forward: token is 96, expected 0..95"));
  REQUIRE(state.position() == 0);
  auto other = model.make_state();
  other.caches.pop_back();
  REQUIRE_THROWS_WITH(team.forward(other, 1), Catch::Contains("layers, expected 3"));

  // From inside a parallel region a team cannot be promised: the step runs through Llama::forward.
  auto reference = model.new_sequence();
  std::vector<float> expected;
  for (int token : {4, 8, 15}) {
    const auto l = reference.forward(std::span<const int>(&token, 1), pf::Context{1});
    expected.assign(l.begin(), l.end());
    std::vector<float> got;
    pf::parallel_for(2, 2, [&](Index i, int) {
      if (i != 0) return;
      const auto t = team.forward(state, token);
      got.assign(t.begin(), t.end());
    });
    REQUIRE(same_bits(expected, got));
  }
  REQUIRE(state.position() == 3);
  for (int p = 3; p < 40; ++p) REQUIRE_NOTHROW(team.forward(state, 1));
  REQUIRE_THROWS_WITH(team.forward(state, 1), Catch::Contains("position 40 passes the model's seq_len 40"));
  REQUIRE(state.position() == 40);
}

TEST_CASE("models/llama_team_decoder: stories260K decoded by a team of 2 as by Llama::forward", "[models][llama][team]") {
  using Model = pf::Llama<>;
  const Model model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  require_same_logits(model, 2, {1, 403, 407, 261, 378}, 60, pf::Context{1});
}

TEST_CASE("core/parallel: a SpinBarrier lets no member past a phase before all have written it", "[core][parallel]") {
  constexpr int team = 3, phases = 500;
  pf::SpinBarrier barrier(team);
  std::vector<std::atomic<int>> slots(team);
  std::atomic<int> errors{0};
  const bool ran = pf::run_team(team, [&](int m) {
    for (int p = 1; p <= phases; ++p) {
      slots[std::size_t(m)].store(p, std::memory_order_relaxed);
      barrier.arrive_and_wait();
      for (int o = 0; o < team; ++o)  // every member wrote phase p; none may have written p + 1 yet
        if (slots[std::size_t(o)].load(std::memory_order_relaxed) != p) errors.fetch_add(1);
      barrier.arrive_and_wait();
    }
  });
  REQUIRE(ran);
  REQUIRE(errors.load() == 0);
  REQUIRE_THROWS_WITH(pf::SpinBarrier(0), Catch::Contains("SpinBarrier: size is 0, expected >= 1"));
}

TEST_CASE("core/parallel: run_team refuses inside a region and runs a team of one on the caller", "[core][parallel]") {
  int calls = 0;
  REQUIRE(pf::run_team(1, [&](int m) { calls += m == 0 ? 1 : 100; }));
  REQUIRE(calls == 1);
  std::atomic<int> refused{0}, nested_calls{0};
  pf::parallel_for(2, 2, [&](Index, int) {
    if (!pf::run_team(2, [&](int) { nested_calls.fetch_add(1); })) refused.fetch_add(1);
  });
  REQUIRE(nested_calls.load() == 0);
  REQUIRE(refused.load() == 2);  // both bodies of the region were refused
}
