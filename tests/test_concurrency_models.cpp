// One model, many threads: user threads that share one const model (and the thread pool) each decode their
// own sequences and get exactly what serial runs get. Also built with -fsanitize=thread in CI.

#include <catch2/catch.hpp>

#include <atomic>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "polyformer/core/parallel.hpp"
#include "polyformer/generate/generator.hpp"
#include "polyformer/generate/sampler.hpp"
#include "polyformer/io/tokenizer.hpp"
#include "polyformer/layers/ffn.hpp"
#include "polyformer/linear/lora.hpp"
#include "polyformer/models/llama.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;

namespace {

std::string greedy_text(const pf::Llama<>& model, const pf::io::Tokenizer& tokenizer, const std::string& prompt,
                        int threads) {
  pf::SamplerOptions greedy;
  greedy.temperature = 0.0f;
  pf::Sampler sampler(512, greedy);
  std::string text;
  pf::generate(model, tokenizer, prompt, 96, sampler, [&](std::string_view piece) { text.append(piece); },
               pf::Context{threads});
  return text;
}

}  // namespace

TEST_CASE("concurrency: threads sharing one model decode byte-identical text to serial runs", "[concurrency]") {
  const pf::Llama<> model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  const auto tokenizer = pf::io::Tokenizer::read(pft::shared_path("models/tok512.bin"), 512);
  const std::vector<std::string> prompts{"Once upon a time", "Lily and Tom went to the park", "", "The little dog",
                                         "One day, a girl"};
  for (int workers : {1, 2}) {  // threads each user thread's forwards may use
    std::vector<std::string> serial;
    for (const auto& p : prompts) serial.push_back(greedy_text(model, tokenizer, p, workers));
    for (int n_threads : {1, 2, 8}) {
      INFO(n_threads << " user threads, " << workers << " workers each");
      std::vector<std::vector<std::string>> got(static_cast<std::size_t>(n_threads));
      std::vector<std::thread> threads;
      for (int t = 0; t < n_threads; ++t)
        threads.emplace_back([&, t] {
          // Each thread decodes every prompt, starting at a different one, so different prompts overlap in time.
          for (std::size_t i = 0; i < prompts.size(); ++i) {
            const std::size_t p = (i + std::size_t(t)) % prompts.size();
            got[std::size_t(t)].push_back(greedy_text(model, tokenizer, prompts[p], workers));
          }
        });
      for (auto& th : threads) th.join();
      for (int t = 0; t < n_threads; ++t)
        for (std::size_t i = 0; i < prompts.size(); ++i)
          CHECK(got[std::size_t(t)][i] == serial[(i + std::size_t(t)) % prompts.size()]);
    }
  }
}

TEST_CASE("concurrency: one LoRA layer serves threads at once", "[concurrency][lora]") {
  pf::LoRA<pf::Dense> layer(pft::random_matrix(48, 32, 3));  // (out, in)
  layer.add_adapter("a", pft::random_matrix(4, 32, 4), pft::random_matrix(48, 4, 5), 0.5f);
  layer.set_active("a");
  const pf::LoRA<pf::Dense>& shared = layer;
  std::vector<pf::Matrix> inputs, want;
  for (unsigned i = 0; i < 8; ++i) {
    inputs.push_back(pft::random_matrix(Index(1 + 7 * i), 32, 10 + i));
    want.emplace_back(inputs.back().rows(), 48);
    shared.forward(pf::cview(inputs.back()), pf::view(want.back()), pf::Context{1});
  }
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round) {
        const std::size_t i = std::size_t(round + t) % inputs.size();
        pf::Matrix y(inputs[i].rows(), 48);
        shared.forward(pf::cview(inputs[i]), pf::view(y), pf::Context{1 + t % 2});
        if (!(y.array() == want[i].array()).all()) ++mismatches;
      }
    });
  for (auto& th : threads) th.join();
  CHECK(mismatches == 0);
}

TEST_CASE("concurrency: parallel regions from several user threads run on workers of their own", "[concurrency][pool]") {
  constexpr int users = 4, regions = 300;
  std::vector<long long> sums(users, 0);
  std::vector<std::thread> threads;
  for (int u = 0; u < users; ++u)
    threads.emplace_back([&, u] {
      std::vector<long long> part(3, 0);
      for (int r = 0; r < regions; ++r) {
        std::fill(part.begin(), part.end(), 0);
        pf::parallel_chunks(1000, 3, [&](Index b, Index e, int id) {
          for (Index i = b; i < e; ++i) part[std::size_t(id)] += i + r;
        });
        sums[std::size_t(u)] += part[0] + part[1] + part[2];
      }
    });
  for (auto& th : threads) th.join();
  long long want = 0;
  for (int r = 0; r < regions; ++r) want += 999LL * 1000 / 2 + 1000LL * r;
  for (int u = 0; u < users; ++u) CHECK(sums[std::size_t(u)] == want);
}
