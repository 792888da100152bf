// DynamicAttention: a policy chosen at run time computes exactly what the policy itself computes, in a layer and
// in a whole model, and refuses a state made by another policy.

#include <catch2/catch.hpp>

#include <span>
#include <vector>

#include "polyformer/attention/dynamic_attention.hpp"
#include "polyformer/models/llama.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

TEST_CASE("attention/dynamic: every incremental policy decodes a Llama exactly as its own type does",
          "[attention][dynamic]") {
  const auto weights = pf::io::read_llama2c(pft::shared_path("models/stories260K.bin"));
  const std::vector<int> prompt{1, 403, 407, 261, 378, 270, 300};
  pf::for_each_attention_policy<pf::EligiblePolicies<pf::AttentionPolicies, true>>([&]<typename P>(std::type_identity<P>) {
    INFO(P::example_spelling);
    const P policy = pf::parse_attention_as<P>(P::example_spelling);
    const auto dynamic = pf::DynamicIncrementalAttention::parse(P::example_spelling);
    CHECK(std::string(dynamic.held_name()) == P::name);
    CHECK(dynamic.spelling() == policy.spelling());
    const auto fixed_model = pf::make_llama(weights, policy);
    const auto dynamic_model = pf::make_llama(weights, dynamic);
    auto a = fixed_model.new_sequence();
    auto b = dynamic_model.new_sequence();
    a.forward(prompt, pf::Context{1}, true);
    b.forward(prompt, pf::Context{1}, true);
    CHECK((a.logits().array() == b.logits().array()).all());
    for (int t : {5, 9, 11}) {
      const auto la = a.forward(std::span<const int>(&t, 1), pf::Context{2});
      const auto lb = b.forward(std::span<const int>(&t, 1), pf::Context{2});
      CHECK(std::vector<float>(la.begin(), la.end()) == std::vector<float>(lb.begin(), lb.end()));
    }
  });
}

TEST_CASE("attention/dynamic: a state made by another policy is refused", "[attention][dynamic][errors]") {
  const auto full = pf::DynamicIncrementalAttention::parse("full");
  const auto sliding = pf::DynamicIncrementalAttention::parse("sliding:8");
  auto state = sliding.make_state(16, 2, 8);
  pf::AttentionShape shape{4, 2, 8, 0.35f};
  const Matrix q = pft::random_matrix(1, 32, 1), k = pft::random_matrix(1, 16, 2), v = pft::random_matrix(1, 16, 3);
  Matrix out(1, 32);
  CHECK_THROWS_WITH(full.forward_cached(shape, pf::cview(q), pf::cview(k), pf::cview(v), state, pf::view(out), pf::Context{}),
                    Catch::Contains("another policy than 'full'"));
  sliding.forward_cached(shape, pf::cview(q), pf::cview(k), pf::cview(v), state, pf::view(out), pf::Context{});
  CHECK(state.size() == 1);
  CHECK_THROWS_WITH(pf::DynamicIncrementalAttention::parse("linformer:8"), Catch::Contains("cannot decode incrementally"));
}
