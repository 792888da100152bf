// The README's code for the redesign, as written there (a README snippet that stops compiling fails here).

#include <catch2/catch.hpp>

#include <filesystem>
#include <span>
#include <vector>

#include "polyformer/polyformer.hpp"
#include "support.hpp"

namespace pf = polyformer;

namespace {

struct Sparse : pf::BlockPolicies {
  template <typename Lin, typename Act> using ffn = pf::MixtureOfExperts<Lin, Act>;
};

}  // namespace

TEST_CASE("readme: one model with many sequences, named parameters, policy sets", "[readme]") {
  using Layer = pf::EncoderLayerOf<Sparse>;   // a sparse block, every other policy the default
  STATIC_REQUIRE(std::is_same_v<Layer::FFN, pf::MixtureOfExperts<pf::Dense, pf::ReLU>>);

  const std::vector<int> prompt_tokens{1, 403, 407, 261, 378}, prompt_a{1, 317}, prompt_b{1, 403, 407};
  auto model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));  // used through const calls only
  auto sequence = model.new_sequence();                              // one per conversation
  auto logits = sequence.forward(prompt_tokens, pf::Context{1});   // prefill, then one token at a time
  CHECK(logits.size() == 512);
  // Many sequences per forward: each weight is read once for all of them; prompts of any lengths.
  pf::Llama<>::State a = model.make_state(), b = model.make_state();
  pf::Llama<>::Workspace ws;
  pf::Llama<>::State* states[] = {&a, &b};
  std::span<const int> tokens[] = {prompt_a, prompt_b};
  const pf::Matrix& last_logits = model.forward(states, tokens, ws, pf::Context{2});   // (2, vocab)
  CHECK(last_logits.rows() == 2);

  const std::string path = pft::process_temp_path("readme", "model.safetensors");
  auto params = pf::parameters_of(model);                            // "layers.0.attention.wq.weight", …
  pf::save_safetensors(path, params);
  auto copy = pf::make_llama(model.config());                        // zero weights of the same sizes
  pf::load_state_dict(pf::parameters_of(copy), pf::io::SafetensorsFile::open(path));
  auto again = copy.new_sequence();
  const auto l2 = again.forward(prompt_tokens, pf::Context{1});
  CHECK(std::vector<float>(l2.begin(), l2.end()) == std::vector<float>(logits.begin(), logits.end()));
  std::filesystem::remove(path);
}
