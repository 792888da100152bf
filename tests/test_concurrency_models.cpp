// One model, many threads: user threads that share one const model (and the thread pool) each decode their
// own sequences and get exactly what serial runs get. Also built with -fsanitize=thread in CI.

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
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
#include "polyformer/models/llama_team_decoder.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;

#ifndef POLYFORMER_CONCURRENCY_REPEATS
#define POLYFORMER_CONCURRENCY_REPEATS 100  // the ThreadSanitizer tree sets fewer: each repeat is ~15× slower there
#endif

namespace {

/// The text `prompt` continues into over `steps` tokens: greedy when `seed` is 0, else sampled (temperature 0.8,
/// top-p 0.9) from that seed. `workers`: threads each forward may use.
std::string text_of(const pf::Llama<>& model, const pf::io::Tokenizer& tokenizer, const std::string& prompt,
                    std::uint64_t seed, int workers, pf::Index steps = 32) {
  pf::SamplerOptions options;
  options.temperature = seed == 0 ? 0.0f : 0.8f;
  options.seed = seed == 0 ? 1 : seed;
  pf::Sampler sampler(512, options);
  std::string text;
  pf::generate(model, tokenizer, prompt, steps, sampler, [&](std::string_view piece) { text.append(piece); },
               pf::Context{workers});
  return text;
}

}  // namespace

TEST_CASE("concurrency: 1, 2, 8 and 32 user threads sharing one model decode byte-identical text to serial runs",
          "[concurrency]") {
  const pf::Llama<> model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  const auto tokenizer = pf::io::Tokenizer::read(pft::shared_path("models/tok512.bin"), 512);
  const std::vector<std::string> prompts{"Once upon a time", "Lily and Tom went to the park", "", "The little dog",
                                         "One day, a girl", "The sun was", "Ben had a red ball", "Mom said"};
  // Job j: prompt j % 8, greedy for even j, sampled from seed 100 + j for odd j; its text from a serial run.
  constexpr std::size_t jobs = 16;
  const auto prompt_of = [&](std::size_t j) { return prompts[j % prompts.size()]; };
  const auto seed_of = [](std::size_t j) { return j % 2 == 0 ? std::uint64_t(0) : std::uint64_t(100 + j); };
  std::vector<std::string> serial;
  for (std::size_t j = 0; j < jobs; ++j) serial.push_back(text_of(model, tokenizer, prompt_of(j), seed_of(j), 1));
  int mismatches = 0, runs = 0;
  for (int repeat = 0; repeat < POLYFORMER_CONCURRENCY_REPEATS; ++repeat) {
    for (const int n_threads : {1, 2, 8, 32}) {
      // Thread t runs jobs t, t + n, ... (every job at least once), shifted by the repeat so that different jobs
      // overlap each time; odd threads' forwards use 2 workers, even threads' 1.
      std::vector<std::vector<std::pair<std::size_t, std::string>>> got(static_cast<std::size_t>(n_threads));
      std::vector<std::thread> threads;
      for (int t = 0; t < n_threads; ++t)
        threads.emplace_back([&, t] {
          for (std::size_t k = std::size_t(t); k < std::max<std::size_t>(jobs, std::size_t(n_threads)); k += std::size_t(n_threads)) {
            const std::size_t j = (k + std::size_t(repeat)) % jobs;
            got[std::size_t(t)].emplace_back(j, text_of(model, tokenizer, prompt_of(j), seed_of(j), 1 + t % 2));
          }
        });
      for (auto& th : threads) th.join();
      for (int t = 0; t < n_threads; ++t)
        for (const auto& [j, text] : got[std::size_t(t)]) {
          ++runs;
          if (text != serial[j]) {
            ++mismatches;
            UNSCOPED_INFO("repeat " << repeat << ", " << n_threads << " user threads, thread " << t << ", job " << j
                                    << ": got '" << text << "', serial '" << serial[j] << "'");
          }
        }
    }
  }
  INFO(runs << " concurrent generations in " << POLYFORMER_CONCURRENCY_REPEATS << " repeats");
  CHECK(mismatches == 0);
  CHECK(runs == POLYFORMER_CONCURRENCY_REPEATS * (16 + 16 + 16 + 32));
}

TEST_CASE("concurrency: 1, 2 and 4 worker threads give the same greedy text, and bit-identical logits run to run",
          "[concurrency][determinism]") {
  // Wide enough that every product is split between the workers (dim 256, FFN 768, vocabulary 1000).
  const pf::io::LlamaConfig c{
      .dim = 256, .hidden_dim = 768, .n_layers = 3, .n_heads = 8, .n_kv_heads = 4, .vocab_size = 1000, .seq_len = 96};
  auto model = pf::make_llama(c);
  pft::randomize_parameters(model, 7, 0.08f);
  std::vector<int> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back((i * 37 + 11) % 1000);

  // Every position's logits of the prompt, then 40 greedy tokens, with `workers` threads.
  const auto run = [&](int workers, std::vector<int>* greedy) {
    const pf::Context ctx{workers};
    auto sequence = model.new_sequence();
    sequence.forward(prompt, ctx, /*all_logits=*/true);
    pf::Matrix logits = sequence.logits();  // (40, vocab)
    if (greedy != nullptr) {
      const pf::Matrix& l = logits;
      int token = 0;
      l.row(l.rows() - 1).maxCoeff(&token);
      for (int step = 0; step < 40; ++step) {
        greedy->push_back(token);
        const auto next = sequence.forward(std::span<const int>(&token, 1), ctx);
        token = int(std::max_element(next.begin(), next.end()) - next.begin());
      }
    }
    return logits;
  };
  std::vector<std::vector<int>> texts;
  for (const int workers : {1, 2, 4}) {
    INFO(workers << " workers");
    std::vector<int> greedy;
    const pf::Matrix first = run(workers, &greedy);
    texts.push_back(greedy);
    for (int again = 0; again < 10; ++again) {
      const pf::Matrix logits = run(workers, nullptr);
      CHECK(std::memcmp(logits.data(), first.data(), sizeof(float) * std::size_t(first.size())) == 0);
    }
  }
  CHECK(texts[1] == texts[0]);
  CHECK(texts[2] == texts[0]);
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

TEST_CASE("concurrency: teams of threads decode as one thread does while user threads share the model",
          "[concurrency][team]") {
  const pf::Llama<> model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  const auto tokenizer = pf::io::Tokenizer::read(pft::shared_path("models/tok512.bin"), 512);
  const std::string want = text_of(model, tokenizer, "Once upon a time", 0, 1, 48);
  constexpr int users = 2;  // each with a team of 2: more threads than this machine's cores, barriers and all
  std::vector<std::string> got(users);
  std::vector<std::thread> threads;
  for (int u = 0; u < users; ++u)
    threads.emplace_back([&, u] {
      for (int r = 0; r < std::max(1, POLYFORMER_CONCURRENCY_REPEATS / 20); ++r) {
        pf::LlamaTeamSequence<pf::FullAttention, pf::Dense> sequence(model, 2);
        pf::SamplerOptions greedy;
        greedy.temperature = 0.0f;
        pf::Sampler sampler(512, greedy);
        std::string text;
        pf::generate(sequence, tokenizer, "Once upon a time", 48, sampler,
                     [&](std::string_view piece) { text.append(piece); }, pf::Context{2});
        got[std::size_t(u)] = text;
      }
    });
  for (auto& th : threads) th.join();
  for (int u = 0; u < users; ++u) CHECK(got[std::size_t(u)] == want);
}
