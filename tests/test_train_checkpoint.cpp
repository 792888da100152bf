// The training loop and its checkpoints (train/trainer.hpp, train/checkpoint.hpp): a run saved at step k and
// resumed gives bit-identical weights and optimizer state to one that never stopped (AdamW and SGD with
// momentum, shuffled data); gradient accumulation equals one larger batch; a checkpoint of another model or
// optimizer is refused with the model left as it was.

#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "polyformer/models/llama.hpp"
#include "polyformer/train/checkpoint.hpp"
#include "polyformer/train/trainer.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

using Model = pf::Llama<>;

pf::io::LlamaConfig small_config(Index dim = 32) {
  pf::io::LlamaConfig c;
  c.dim = dim, c.hidden_dim = 48, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 40, c.seq_len = 16;
  c.shared_classifier = false;
  return c;
}

Model random_model(const pf::io::LlamaConfig& c, unsigned seed) {
  Model model = pf::make_llama<pf::Dense>(c);
  pft::randomize_parameters(model, seed, 0.2f);
  return model;
}

std::vector<int> random_tokens(std::size_t n, int vocab, unsigned seed) {
  pf::SplitMix64 rng{seed};
  std::vector<int> t(n);
  for (int& x : t) x = static_cast<int>(rng.below(static_cast<std::uint64_t>(vocab)));
  return t;
}

/// Every parameter's values, in list order.
std::vector<std::vector<float>> values_of(Model& model) {
  std::vector<std::vector<float>> out;
  const pf::ParameterList params = pf::parameters_of(model);
  for (const pf::Parameter& p : params.items()) {
    out.emplace_back(static_cast<std::size_t>(p.numel()));
    p.read(out.back().data());
  }
  return out;
}

bool bitwise_equal(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)) != 0)
      return false;
  return true;
}

pf::TrainerOptions options(Index batch, Index accumulation) {
  pf::TrainerOptions o;
  o.batch = batch;
  o.accumulation = accumulation;
  o.clip = 0.5;
  o.schedule = {3e-3, 1e-4, 2, 6, pf::LearningRateDecay::cosine};
  return o;
}

void check_resume(const pf::TrainingOptimizer& optimizer, int threads) {
  const auto c = small_config();
  const std::vector<int> tokens = random_tokens(16 * 11 + 1, 40, 3);
  const pf::Context ctx{threads};
  const std::string dir = pft::process_temp_path("train_ckpt", "resume");
  std::filesystem::remove_all(dir);

  Model straight = random_model(c, 10);
  pf::TokenWindows data_a(tokens, 16, 99);
  pf::CausalLMTrainer<Model> a(straight, optimizer, options(2, 2));
  for (int s = 0; s < 6; ++s) a.train_step(data_a, ctx);

  Model first = random_model(c, 10);
  pf::TokenWindows data_b(tokens, 16, 99);
  {
    pf::CausalLMTrainer<Model> b(first, optimizer, options(2, 2));
    for (int s = 0; s < 3; ++s) b.train_step(data_b, ctx);
    b.save(dir, 99, {{"run.note", "test"}});
  }
  Model resumed = random_model(c, 77);  // other weights: the checkpoint must overwrite every one
  pf::TokenWindows data_c(tokens, 16, 99);
  pf::CausalLMTrainer<Model> r(resumed, optimizer, options(2, 2));
  const pf::TrainingProgress p = r.resume(dir);
  CHECK(p.step == 3);
  CHECK(p.position == 12);
  CHECK(p.seed == 99);
  CHECK(p.settings.at("run.note") == "test");
  for (int s = 0; s < 3; ++s) r.train_step(data_c, ctx);
  CHECK(r.step() == 6);
  CHECK(bitwise_equal(values_of(straight), values_of(resumed)));
  CHECK_FALSE(bitwise_equal(values_of(straight), values_of(first)));  // the test can tell runs apart

  // The optimizer states match too.
  if (const auto* adam = std::get_if<pf::AdamW>(&a.optimizer())) {
    const auto& other = std::get<pf::AdamW>(r.optimizer());
    REQUIRE(adam->states().size() == other.states().size());
    for (const auto& [name, s] : adam->states()) {
      const pf::AdamW::State* o = other.state(name);
      REQUIRE(o != nullptr);
      CHECK(o->step == s.step);
      CHECK(o->m == s.m);
      CHECK(o->v == s.v);
    }
  }
  std::filesystem::remove_all(dir);
}

}  // namespace

TEST_CASE("train checkpoint: a resumed AdamW run is bit-identical to an uninterrupted one", "[train][checkpoint]") {
  for (const int threads : {1, 2}) {
    INFO("threads " << threads);
    check_resume(pf::AdamW(pf::AdamWOptions{0.9, 0.95, 1e-8, 0.1}), threads);
  }
}

TEST_CASE("train checkpoint: a resumed SGD-with-momentum run is bit-identical too", "[train][checkpoint]") {
  check_resume(pf::SGD(pf::SGDOptions{0.9, 0.0, 0.01, false}), 1);
}

TEST_CASE("train checkpoint: accumulating two batches of 2 is one batch of 4", "[train][checkpoint]") {
  const auto c = small_config();
  const std::vector<int> tokens = random_tokens(16 * 8 + 1, 40, 5);
  const pf::Context ctx{1};
  std::vector<std::vector<float>> grads[2];
  double losses[2];
  for (int k = 0; k < 2; ++k) {
    Model model = random_model(c, 20);
    pf::TokenWindows data(tokens, 16);
    auto o = options(k == 0 ? 4 : 2, k == 0 ? 1 : 2);
    o.clip = 0.0;
    pf::CausalLMTrainer<Model> t(model, pf::SGD{}, o);
    t.gradients().zero();
    losses[k] = 0.0;
    for (Index m = 0; m < o.accumulation; ++m)
      losses[k] += t.accumulate(data, m * o.batch, o.batch, 1.0f / static_cast<float>(o.accumulation), ctx) /
                   static_cast<double>(o.accumulation);
    for (const pf::Gradient& g : t.gradients().items()) {
      grads[k].emplace_back(static_cast<std::size_t>(g.numel()));
      g.read(grads[k].back().data());
    }
  }
  CHECK(losses[0] == Approx(losses[1]).epsilon(1e-6));
  REQUIRE(grads[0].size() == grads[1].size());
  for (std::size_t i = 0; i < grads[0].size(); ++i)
    for (std::size_t j = 0; j < grads[0][i].size(); ++j)
      REQUIRE(grads[0][i][j] == Approx(grads[1][i][j]).margin(1e-6).epsilon(1e-4));
}

TEST_CASE("train checkpoint: another model's or optimizer's checkpoint is refused, nothing changed",
          "[train][checkpoint]") {
  const std::string dir = pft::process_temp_path("train_ckpt", "refuse");
  std::filesystem::remove_all(dir);
  const pf::Context ctx{1};
  const std::vector<int> tokens = random_tokens(16 * 4 + 1, 40, 9);
  pf::TokenWindows data(tokens, 16);
  {
    Model model = random_model(small_config(32), 1);
    pf::CausalLMTrainer<Model> t(model, pf::AdamW{}, options(2, 1));
    t.train_step(data, ctx);
    t.save(dir, 1, {});
  }
  Model wider = random_model(small_config(48), 2);
  const auto before = values_of(wider);
  pf::CausalLMTrainer<Model> t(wider, pf::AdamW{}, options(2, 1));
  CHECK_THROWS_WITH(t.resume(dir), Catch::Contains("a checkpoint of another model?"));
  CHECK(bitwise_equal(values_of(wider), before));
  CHECK(t.step() == 0);

  Model same = random_model(small_config(32), 3);
  const auto same_before = values_of(same);
  pf::CausalLMTrainer<Model> s(same, pf::SGD{}, options(2, 1));
  CHECK_THROWS_WITH(s.resume(dir), Catch::Contains("holds the state of optimizer 'adamw', expected 'sgd'"));
  CHECK(bitwise_equal(values_of(same), same_before));
  CHECK_THROWS_WITH(s.resume(dir + "-missing"), Catch::Contains("cannot open"));

  // Saving again replaces the file whole and leaves no temporary beside it.
  {
    Model model = random_model(small_config(32), 1);
    pf::CausalLMTrainer<Model> t2(model, pf::AdamW{}, options(2, 1));
    t2.save(dir, 1, {});
  }
  Index files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    CHECK(e.path().filename() == "training_state.safetensors");
    ++files;
  }
  CHECK(files == 1);
  std::filesystem::remove_all(dir);
}
