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

  // A small model decoded by a team of threads: the same text as one thread's.
  const auto tokenizer = pf::io::Tokenizer::read(pft::shared_path("models/tok512.bin"), 512);
  std::string one, two;
  pf::Sampler greedy(512, {.temperature = 0.0f}), greedy_too(512, {.temperature = 0.0f});
  pf::generate(model, tokenizer, "Once upon a time", 64, greedy, [&](std::string_view p) { one += p; }, pf::Context{1});
  const auto print = [&](std::string_view p) { two += p; };
  auto& sampler = greedy_too;
  pf::LlamaTeamSequence<pf::FullAttention, pf::Dense> team_sequence(model, /*team=*/2);   // fp32, full attention
  pf::generate(team_sequence, tokenizer, "Once upon a time", 64, sampler, print, pf::Context{2});
  CHECK(two == one);
}

TEST_CASE("readme: gradients", "[readme][backward]") {
  using Layer = pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, pf::GELU, pf::NormPlacement::pre>;
  const pf::Index d = 16, hidden = 32, batch = 1;
  auto linear = [](pf::Index in, pf::Index out) { return pf::Dense(pf::Matrix::Random(out, in) * 0.3f); };
  Layer layer(Layer::Attention(linear(d, d), linear(d, d), linear(d, d), linear(d, d), pf::HeadConfig{4}),
              Layer::FFN(linear(d, hidden), linear(hidden, d)), pf::LayerNorm(d), pf::LayerNorm(d));
  const pf::Matrix x = pf::Matrix::Random(7, d), dy = pf::Matrix::Random(7, d);
  pf::Matrix y(7, d), dx(7, d);
  const pf::MaskSpec mask = pf::MaskSpec::causal_mask();
  const pf::Context ctx{2};

  Layer::Saved saved;                                  // one per call in flight
  auto grads = layer.make_gradients();                 // zeroed buffers, shaped like the weights
  auto list = pf::gradients_of(layer, grads);          // "self_attn.in_proj_weight", "linear1.bias", …
  list.freeze("self_attn.");                           // by name prefix: those get no gradient
  layer.forward_train(pf::cview(x), batch, mask, pf::view(y), saved, ctx);
  layer.backward(pf::cview(dy), pf::view(dx), grads, saved, ctx);   // adds into grads; dx written
  CHECK(grads.self_attn.q.weight.size() == 0);
  CHECK(grads.ffn.up.weight.norm() > 0.0f);
  CHECK(dx.allFinite());
  const pf::Matrix up_before = layer.ffn().up().weight(), q_before = layer.self_attn().q_proj().weight();

  pf::AdamW adamw(pf::AdamWOptions{0.9, 0.95, 1e-8, /*weight_decay=*/0.1});
  auto params = pf::parameters_of(layer);
  const float clip = pf::clip_coefficient(list, /*max_norm=*/1.0);   // the trainable gradients' global norm
  adamw.step(params, list, /*lr=*/3e-4, clip);                        // then list.zero() before the next batch
  CHECK(clip > 0.0f);
  CHECK(clip <= 1.0f);
  CHECK(layer.ffn().up().weight() != up_before);
  CHECK(layer.self_attn().q_proj().weight() == q_before);  // frozen

  const auto model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  const std::vector<int> tokens{1, 403, 407, 261, 378}, targets{403, 407, 261, 378, 324};
  pf::Matrix logits(5, 512), dlogits(5, 512);
  decltype(model)::Saved llama_saved;
  auto llama_grads = model.make_gradients();
  // A Llama: logits of every position, the mean next-token cross-entropy, its gradient.
  model.forward_train(tokens, batch, pf::view(logits), llama_saved, ctx);
  double loss = pf::cross_entropy(pf::cview(logits), targets, pf::view(dlogits));
  model.backward(pf::cview(dlogits), llama_grads, llama_saved, ctx);
  CHECK(loss > 0.0);
  CHECK(loss < 10.0);
  CHECK(llama_grads.embedding.norm() > 0.0f);
}

#ifdef POLYFORMER_HF_STORIES_DIR
TEST_CASE("readme: text generation and beam search with a Hugging Face model and tokenizer", "[readme][hf]") {
  const std::string dir = std::string(POLYFORMER_HF_STORIES_DIR) + "/stories260K";  // a Llama directory
  const auto gpt2 = pf::load_hf_llama(dir);
  const auto tokenizer = pf::tokenizers::Tokenizer::open(dir);
  std::string text;
  // As the README writes it, but for the output stream.
  pf::TextGenerationOptions options;
  options.max_new_tokens = 64;
  options.eos_token_ids = {50256};                                      // config.json's eos_token_id
  auto sequence = gpt2.new_sequence();
  pf::Sampler sampler(static_cast<int>(gpt2.config().vocab_size), {.temperature = 0.0f});  // greedy
  pf::generate_text(sequence, tokenizer, "Hello", options, sampler, [&](std::string_view piece) { text += piece; });
  pf::BeamSearchOptions beams;
  beams.num_beams = 4;
  beams.eos_token_ids = {50256};
  pf::BeamSearchResult best = pf::beam_search_causal(gpt2, tokenizer.encode("Hello"), beams);  // best.tokens: new ids
  CHECK(text.starts_with("Hello"));
  CHECK(best.tokens.size() == 20);
}
#endif

#ifdef POLYFORMER_HF_T5_REFERENCE_DIR
TEST_CASE("readme: T5 encodes once and decodes over its state", "[readme][hf][t5]") {
  const std::vector<int> input_ids{5, 6, 7, 8};
  // As the README writes it, on the reference script's small T5.
  auto t5 = pf::load_hf_t5(std::string(POLYFORMER_HF_T5_REFERENCE_DIR) + "/relu_f32");
  pf::Matrix memory = t5.encode(input_ids, /*mask=*/{}, pf::Context{2});        // (n, d_model)
  auto state = t5.start(memory, /*mask=*/{}, /*capacity=*/64, pf::Context{2});
  int token = t5.config().decoder_start_token_id;
  auto logits = t5.decode(state, std::span<const int>(&token, 1), pf::Context{2});  // (vocab), then one token at a time
  CHECK(memory.rows() == 4);
  CHECK(logits.size() == std::size_t(t5.config().vocab_size));
}
#endif
