// The Llama model (models/llama.hpp) against a float64 oracle written here as plain loops (no policies, no
// kernels): real stories260K weights and random grouped-query weights, prefilled whole, in chunks that cross
// the attention tiles, and token by token; greedy generation against llama2.c run.c's golden text; errors.

#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "polyformer/generate/generator.hpp"
#include "polyformer/generate/sampler.hpp"
#include "polyformer/io/llama2c.hpp"
#include "polyformer/io/tokenizer.hpp"
#include "polyformer/models/llama.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

using Rows = std::vector<std::vector<double>>;

std::vector<double> matvec(const Matrix& w, const std::vector<double>& x) {  // w (out, in) · x (in)
  std::vector<double> y(static_cast<std::size_t>(w.rows()), 0.0);
  for (Index i = 0; i < w.rows(); ++i)
    for (Index j = 0; j < w.cols(); ++j) y[std::size_t(i)] += double(w(i, j)) * x[std::size_t(j)];
  return y;
}

std::vector<double> rms_norm(const std::vector<double>& x, const pf::Vector& gain, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double r = 1.0 / std::sqrt(ss / double(x.size()) + eps);
  std::vector<double> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * double(gain(Index(i)));
  return y;
}

// Rotates pairs (2i, 2i+1) of every head by pos / 10000^(2i / head_dim), in double.
void rope(std::vector<double>& x, Index heads, Index hd, Index pos) {
  for (Index h = 0; h < heads; ++h)
    for (Index i = 0; i < hd / 2; ++i) {
      const double angle = double(pos) / std::pow(10000.0, double(2 * i) / double(hd));
      double& a = x[std::size_t(h * hd + 2 * i)];
      double& b = x[std::size_t(h * hd + 2 * i + 1)];
      const double a0 = a, b0 = b;
      a = a0 * std::cos(angle) - b0 * std::sin(angle);
      b = a0 * std::sin(angle) + b0 * std::cos(angle);
    }
}

// Logits (vocab) of every position of `tokens`, the Llama 2 forward written out in float64.
Rows oracle_logits(const pf::io::LlamaWeights& w, const std::vector<int>& tokens) {
  const auto& c = w.config;
  const Index hd = c.head_dim(), group = c.n_heads / c.n_kv_heads, L = c.n_layers;
  std::vector<Rows> keys(static_cast<std::size_t>(L)), values(static_cast<std::size_t>(L));
  Rows out;
  for (std::size_t pos = 0; pos < tokens.size(); ++pos) {
    std::vector<double> x(static_cast<std::size_t>(c.dim));
    for (Index j = 0; j < c.dim; ++j) x[std::size_t(j)] = w.token_embedding(tokens[pos], j);
    for (std::size_t l = 0; l < std::size_t(L); ++l) {
      const auto h = rms_norm(x, w.attn_norm[l], 1e-5);
      auto q = matvec(w.wq[l], h), k = matvec(w.wk[l], h);
      const auto v = matvec(w.wv[l], h);
      rope(q, c.n_heads, hd, Index(pos));
      rope(k, c.n_kv_heads, hd, Index(pos));
      keys[l].push_back(k);
      values[l].push_back(v);
      std::vector<double> att(static_cast<std::size_t>(c.n_heads * hd), 0.0);
      for (Index head = 0; head < c.n_heads; ++head) {
        const Index g = head / group;
        std::vector<double> s(pos + 1);
        double best = -1e300;
        for (std::size_t t = 0; t <= pos; ++t) {
          double dot = 0;
          for (Index i = 0; i < hd; ++i) dot += q[std::size_t(head * hd + i)] * keys[l][t][std::size_t(g * hd + i)];
          s[t] = dot / std::sqrt(double(hd));
          best = std::max(best, s[t]);
        }
        double total = 0;
        for (double& e : s) total += (e = std::exp(e - best));
        for (std::size_t t = 0; t <= pos; ++t)
          for (Index i = 0; i < hd; ++i)
            att[std::size_t(head * hd + i)] += s[t] / total * values[l][t][std::size_t(g * hd + i)];
      }
      const auto o = matvec(w.wo[l], att);
      for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
      const auto h2 = rms_norm(x, w.ffn_norm[l], 1e-5);
      auto gate = matvec(w.w1[l], h2);
      const auto up = matvec(w.w3[l], h2);
      for (std::size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
      const auto down = matvec(w.w2[l], gate);
      for (std::size_t i = 0; i < x.size(); ++i) x[i] += down[i];
    }
    const auto normed = rms_norm(x, w.final_norm, 1e-5);
    out.push_back(matvec(c.shared_classifier ? w.token_embedding : w.classifier, normed));
  }
  return out;
}

// Largest |got − want| over a row, relative to the row's largest |want|.
double row_error(const float* got, const std::vector<double>& want) {
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::abs(double(got[i]) - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return worst / scale;
}

pf::io::LlamaWeights random_weights(const pf::io::LlamaConfig& c, unsigned seed) {
  pf::io::LlamaWeights w;
  w.config = c;
  unsigned s = seed;
  const auto m = [&](Index r, Index cols) { return pft::random_matrix(r, cols, s++, 0.3f); };
  const auto gain = [&](Index n) { return pf::Vector(pf::Vector::Ones(n) + pft::random_matrix(n, 1, s++, 0.1f)); };
  w.token_embedding = m(c.vocab_size, c.dim);
  for (Index l = 0; l < c.n_layers; ++l) {
    w.attn_norm.push_back(gain(c.dim));
    w.ffn_norm.push_back(gain(c.dim));
    w.wq.push_back(m(c.dim, c.dim));
    w.wk.push_back(m(c.kv_dim(), c.dim));
    w.wv.push_back(m(c.kv_dim(), c.dim));
    w.wo.push_back(m(c.dim, c.dim));
    w.w1.push_back(m(c.hidden_dim, c.dim));
    w.w2.push_back(m(c.dim, c.hidden_dim));
    w.w3.push_back(m(c.hidden_dim, c.dim));
  }
  w.final_norm = gain(c.dim);
  if (!c.shared_classifier) w.classifier = m(c.vocab_size, c.dim);
  return w;
}

pf::io::LlamaConfig small_config() {
  pf::io::LlamaConfig c;
  c.dim = 48;
  c.hidden_dim = 100;
  c.n_layers = 2;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.vocab_size = 40;
  c.seq_len = 300;
  c.shared_classifier = false;
  return c;
}


}  // namespace

TEST_CASE("models/llama: stories260K logits match a float64 oracle", "[models][llama]") {
  const auto weights = pf::io::read_llama2c(pft::shared_path("models/stories260K.bin"));
  auto model = pf::make_llama(weights);
  auto seq = model.new_sequence();
  // "Once upon a time" as run.c encodes it, then a few more tokens.
  const std::vector<int> tokens{1, 403, 407, 261, 378, 270, 300, 265, 500, 3};
  const Rows want = oracle_logits(weights, tokens);
  for (int threads : {1, 2}) {
    INFO("threads " << threads);
    seq.reset();
    seq.forward(tokens, pf::Context{threads}, /*all_logits=*/true);
    REQUIRE(seq.logits().rows() == Index(tokens.size()));
    for (std::size_t p = 0; p < tokens.size(); ++p) {
      INFO("position " << p);
      CHECK(row_error(seq.logits().data() + p * 512, want[p]) < 1e-4);
    }
  }
}

TEST_CASE("models/llama: grouped-query model in chunks across attention tiles matches the oracle",
          "[models][llama]") {
  const auto weights = random_weights(small_config(), 11);
  auto model = pf::make_llama(weights);
  auto seq = model.new_sequence();
  std::vector<int> tokens(290);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>((i * 17 + 3) % 40);
  const Rows want = oracle_logits(weights, tokens);
  // Chunks of 1..4 take the decoding path, longer ones the tiled path over the cache (tiles of 128 × 256).
  for (const std::vector<int>& chunks : {std::vector<int>{290}, {1, 5, 130, 3, 151}, {4, 257, 2, 27}}) {
    seq.reset();
    std::size_t at = 0;
    for (int n : chunks) {
      seq.forward(std::span<const int>(tokens.data() + at, std::size_t(n)), pf::Context{2}, true);
      for (int r = 0; r < n; ++r) {
        INFO("chunk of " << n << ", position " << at + std::size_t(r));
        CHECK(row_error(seq.logits().data() + r * 40, want[at + std::size_t(r)]) < 1e-4);
      }
      at += std::size_t(n);
    }
    CHECK(seq.position() == 290);
  }
}

TEST_CASE("models/llama: prefill then decode equals token-by-token decoding", "[models][llama]") {
  auto model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  auto seq = model.new_sequence();
  const std::vector<int> prompt{1, 317, 269, 274, 287, 263, 377, 267, 265, 282, 295, 433};
  const pf::Context ctx{1};
  // The last position's logits after one batched prefill, and after feeding one token at a time.
  const std::vector<float> prefill_logits = [&] {
    const auto l = seq.forward(prompt, ctx);
    return std::vector<float>(l.begin(), l.end());
  }();
  std::vector<float> decode_logits;
  seq.reset();
  for (int t : prompt) {
    const auto l = seq.forward(std::span<const int>(&t, 1), ctx);
    decode_logits.assign(l.begin(), l.end());
  }
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < prefill_logits.size(); ++i) {
    worst = std::max(worst, double(std::abs(prefill_logits[i] - decode_logits[i])));
    scale = std::max(scale, double(std::abs(decode_logits[i])));
  }
  CHECK(worst / scale < 1e-5);
  // Continuing both ways gives the same greedy tokens.
  std::vector<int> a, b;
  for (auto* out : {&a, &b}) {
    seq.reset();
    int next = 0;
    if (out == &a) {
      next = pf::Sampler::argmax(seq.forward(prompt, ctx));
    } else {
      for (int t : prompt) next = pf::Sampler::argmax(seq.forward(std::span<const int>(&t, 1), ctx));
    }
    for (int i = 0; i < 40; ++i) {
      out->push_back(next);
      next = pf::Sampler::argmax(seq.forward(std::span<const int>(&next, 1), ctx));
    }
  }
  CHECK(a == b);
}

TEST_CASE("models/llama: greedy generation reproduces llama2.c run.c byte for byte", "[models][llama][golden]") {
  auto model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  const auto tokenizer = pf::io::Tokenizer::read(pft::shared_path("models/tok512.bin"), 512);
  for (const auto& [file, prompt] : {std::pair<std::string, std::string>{"once_upon_a_time", "Once upon a time"},
                                     {"lily_and_tom", "Lily and Tom went to the park"},
                                     {"empty", ""}})
    for (int threads : {1, 2}) {
      INFO(file << ", threads " << threads);
      const std::string want = pft::read_text(pft::shared_path("models/golden/" + file + ".txt"));
      REQUIRE(!want.empty());
      pf::SamplerOptions greedy;
      greedy.temperature = 0.0f;
      pf::Sampler sampler(512, greedy);
      std::string got;
      const auto stats = pf::generate(model, tokenizer, prompt, 256, sampler,
                                      [&](std::string_view piece) { got.append(piece); }, pf::Context{threads});
      CHECK(got == want);
      CHECK(stats.prompt_tokens == Index(tokenizer.encode(prompt).size()));
      CHECK(stats.prefill_tokens + stats.decoded_tokens <= 256);
    }
}

TEST_CASE("models/llama: steps shorter than the prompt print only prompt pieces, as run.c", "[models][llama]") {
  auto model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  const auto tokenizer = pf::io::Tokenizer::read(pft::shared_path("models/tok512.bin"), 512);
  pf::SamplerOptions greedy;
  greedy.temperature = 0.0f;
  pf::Sampler sampler(512, greedy);
  std::string got;
  // "Lily and Tom went to the park" is 12 tokens; 3 positions print pieces 1..3 of the prompt.
  const auto ids = tokenizer.encode("Lily and Tom went to the park");
  std::string want;
  for (std::size_t i = 1; i <= 3; ++i) want += pf::io::Tokenizer::printable(tokenizer.decode(ids[i - 1], ids[i]));
  want += "\n";
  const auto stats = pf::generate(model, tokenizer, "Lily and Tom went to the park", 3, sampler,
                                  [&](std::string_view piece) { got.append(piece); });
  CHECK(got == want);
  CHECK(stats.prefill_tokens == 0);
}

TEST_CASE("models/llama: bad tokens and positions past seq_len throw and change nothing", "[models][llama][errors]") {
  auto model = pf::make_llama(random_weights(small_config(), 5));
  auto seq = model.new_sequence();
  const pf::Context ctx{1};
  const std::vector<int> ok{1, 2, 3};
  seq.forward(ok, ctx);
  const std::vector<float> before(seq.logits().data(), seq.logits().data() + 40);
  REQUIRE_THROWS_AS(seq.forward(std::vector<int>{1, 40}, ctx), pf::config_error);
  REQUIRE_THROWS_WITH(seq.forward(std::vector<int>{-1}, ctx), Catch::Contains("token 0 is -1, expected 0..39"));
  REQUIRE_THROWS_WITH(seq.forward(std::vector<int>{}, ctx), Catch::Contains("no tokens"));
  REQUIRE_THROWS_WITH(seq.forward(std::vector<int>(298, 1), ctx), Catch::Contains("pass the model's seq_len 300"));
  CHECK(seq.position() == 3);
  REQUIRE_THROWS_AS(seq.forward(ok, pf::Context{0}), pf::config_error);
  // The model still continues the sequence it had.
  seq.reset();
  seq.forward(ok, ctx);
  CHECK(std::vector<float>(seq.logits().data(), seq.logits().data() + 40) == before);
}

TEST_CASE("generate/sampler: greedy, seeded reproducibility, top-k, top-p and the distribution", "[generate][sampler]") {
  CHECK(pf::Sampler::argmax(std::vector<float>{1, 3, 3, 2}) == 1);  // first of the ties
  // p = (0.5, 0.3, 0.15, 0.05) as logits.
  const std::vector<float> logits{std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  const auto frequencies = [&](pf::SamplerOptions o, int draws) {
    pf::Sampler s(4, o);
    std::vector<double> f(4, 0.0);
    for (int i = 0; i < draws; ++i) f[std::size_t(s.sample(logits))] += 1.0 / draws;
    return f;
  };
  pf::SamplerOptions plain;
  plain.top_p = 0.0f;  // off
  const auto all = frequencies(plain, 40000);
  for (std::size_t i = 0; i < 4; ++i) CHECK(std::abs(all[i] - std::exp(double(logits[i]))) < 0.01);
  pf::SamplerOptions nucleus;
  nucleus.top_p = 0.7f;  // 0.5 < 0.7 < 0.5 + 0.3: tokens 0 and 1, renormalized to 0.625 / 0.375
  const auto top = frequencies(nucleus, 40000);
  CHECK(std::abs(top[0] - 0.625) < 0.01);
  CHECK(std::abs(top[1] - 0.375) < 0.01);
  CHECK(top[2] == 0.0);
  CHECK(top[3] == 0.0);
  pf::SamplerOptions top2;
  top2.top_p = 0.0f;
  top2.top_k = 2;
  const auto k2 = frequencies(top2, 40000);
  CHECK(std::abs(k2[0] - 0.625) < 0.01);
  CHECK(k2[2] + k2[3] == 0.0);
  pf::SamplerOptions top1 = plain;
  top1.top_k = 1;
  CHECK(frequencies(top1, 100)[0] == Approx(1.0));
  pf::SamplerOptions greedy;
  greedy.temperature = 0.0f;
  CHECK(frequencies(greedy, 100)[0] == Approx(1.0));
  // The same seed draws the same tokens; another seed, others.
  const auto draws = [&](std::uint64_t seed) {
    pf::SamplerOptions o = plain;
    o.seed = seed;
    pf::Sampler s(4, o);
    std::vector<int> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(logits));
    return out;
  };
  CHECK(draws(42) == draws(42));
  CHECK(draws(42) != draws(43));
}

TEST_CASE("generate/sampler: invalid options throw", "[generate][sampler][errors]") {
  const auto make = [](float temperature, float top_p, int top_k, std::uint64_t seed) {
    return pf::Sampler(10, pf::SamplerOptions{temperature, top_p, top_k, seed});
  };
  REQUIRE_THROWS_WITH(make(-1.0f, 0.9f, 0, 1), Catch::Contains("temperature is -1"));
  REQUIRE_THROWS_WITH(make(1.0f, 1.5f, 0, 1), Catch::Contains("top_p is 1.5"));
  REQUIRE_THROWS_WITH(make(1.0f, 0.9f, -2, 1), Catch::Contains("top_k is -2"));
  REQUIRE_THROWS_WITH(make(1.0f, 0.9f, 0, 0), Catch::Contains("seed is 0"));
  pf::Sampler s(10, pf::SamplerOptions{});
  REQUIRE_THROWS_AS(s.sample(std::vector<float>(9, 0.0f)), pf::shape_error);
}
