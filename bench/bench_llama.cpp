// Llama decoding and prefill (models/llama.hpp) on two models:
// - stories260K (shared/models, llama2.c format): greedy generation of 256 positions from BOS, as the peers
//   run it (llama2.c's run.c -t 0 -n 256, llama.cpp); counters tok/s (all 256 positions over the whole
//   loop, sampling included) and decode_tok/s (positions after the prefill);
// - a synthetic Llama of ≈ 110M parameters (dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000, random
//   weights): decoding reads every weight once per token, so BM_llama110m_decode reports the weight bytes
//   it streams per second (weight_GB/s) against a STREAM triad (a[i] = b[i] + s·c[i], 12 bytes per
//   element, arrays 8× the L3) run in the same benchmark on the same threads (triad_GB/s, pct_of_triad);
//   BM_llama110m_prefill runs a prompt of n tokens as one batch: GFLOP/s, against the packed GEMM of the
//   FFN's shape (512×768→2048) measured in the same benchmark (pct_of_gemm). BM_llama110m_decode_int8 decodes
//   the same model with every linear layer Int8 (quantized once: a quarter of the weight bytes per token), and
//   BM_llama110m_decode_bf16 with every linear layer BF16 (half the bytes; the embedding row stays fp32).
//   BM_llama110m_decode_batch decodes B sequences per batched forward; BM_llama110m_decode_users runs one or two
//   user threads on the shared model, one worker each.
// - GPT-2 small (124M: dim 768, 12 layers, 12 heads, inner 3072, vocab 50257, 1024 positions, tied lm_head; random
//   weights; models/gpt2.hpp): BM_gpt2_small_decode as BM_llama110m_decode — weight bytes streamed per second
//   against the STREAM triad of the same run (the target: >= 90 %).
// - training, llama2.c's train.py shape (stories15M: dim 288, 6 layers, 6 heads, hidden 768, vocab 32000, tied
//   classifier, seq 256, batch 8, random weights and tokens): BM_llama_train times full optimizer steps of
//   CausalLMTrainer (forward, cross-entropy, backward, clip 1.0, AdamW β 0.9/0.95, weight decay 0.1), every
//   tensor trainable; BM_llama_train_lora the same steps with a rank-8 LoRA adapter on wq and wv and only its
//   factors trainable. Counter tok/s = batch·seq per step / wall time (also items_per_second). Peer:
//   bench/peers/torch_train_llama2c.py (llama2.c's model.py on PyTorch).
//
//   bench_llama --benchmark_filter='threads:1/'

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "main.hpp"
#include "counters.hpp"
#include "memory.hpp"
#include "polyformer/polyformer.hpp"
#include "polyformer/models/gpt2.hpp"
#include "polyformer/models/llama_lora.hpp"
#include "polyformer/train/data.hpp"
#include "polyformer/train/trainer.hpp"

namespace pf = polyformer;

#ifndef POLYFORMER_SHARED_DIR
#define POLYFORMER_SHARED_DIR "../shared"
#endif

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ---- stories260K ----

/// greedy generation of 256 positions from stories260K; Team: decoding steps by a LlamaTeamDecoder of `threads`
/// (what the generate program runs for it on 2 threads or more), else Llama::forward over `threads`.
template <bool Team>
void BM_stories260k_generate(benchmark::State& state) {
  const std::string dir = std::string(POLYFORMER_SHARED_DIR) + "/models/";
  std::unique_ptr<pf::Llama<>> model;
  std::unique_ptr<pf::io::Tokenizer> tokenizer;
  try {
    model = std::make_unique<pf::Llama<>>(pf::load_llama2c(dir + "stories260K.bin"));
    tokenizer = std::make_unique<pf::io::Tokenizer>(pf::io::Tokenizer::read(dir + "tok512.bin", 512));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  const pf::Context ctx{static_cast<int>(state.range(0))};
  constexpr pf::Index steps = 256;
  pf::SamplerOptions greedy;
  greedy.temperature = 0.0f;
  std::size_t bytes = 0;
  const auto sink = [&](std::string_view piece) { bytes += piece.size(); };
  pf::Sampler sampler(512, greedy);
  const auto run = [&] {
    if constexpr (Team) {
      pf::LlamaTeamSequence<pf::FullAttention, pf::Dense> sequence(*model, ctx.threads);
      return pf::generate(sequence, *tokenizer, "", steps, sampler, sink, ctx);
    } else {
      return pf::generate(*model, *tokenizer, "", steps, sampler, sink, ctx);
    }
  };
  run();  // warm-up
  double decode_seconds = 0, decoded = 0, positions = 0;
  const bench::LoopClock clock;
  for (auto _ : state) {
    const auto stats = run();
    decode_seconds += stats.decode_seconds;
    decoded += static_cast<double>(stats.decoded_tokens);
    positions += static_cast<double>(stats.prefill_tokens + stats.decoded_tokens);
  }
  clock.report(state, 0.0);
  state.counters.erase("GFLOP/s");
  const double ms = state.counters["ms"];
  state.counters["tok/s"] = benchmark::Counter(positions / static_cast<double>(state.iterations()) / (ms * 1e-3));
  state.counters["decode_tok/s"] = benchmark::Counter(decode_seconds > 0 ? decoded / decode_seconds : 0);
  benchmark::DoNotOptimize(bytes);
}

// ---- synthetic ≈ 110M Llama ----

/// A Llama's sizes, multi-head (as many kv heads as heads), classifier tied.
pf::io::LlamaConfig llama_shape(pf::Index dim, pf::Index hidden, pf::Index layers, pf::Index heads, pf::Index vocab,
                                pf::Index seq_len) {
  pf::io::LlamaConfig c;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = c.n_kv_heads = heads;
  c.vocab_size = vocab;
  c.seq_len = seq_len;
  c.shared_classifier = true;
  return c;
}

pf::io::LlamaConfig config_110m() { return llama_shape(768, 2048, 12, 12, 32000, 1024); }

/// The weights, made once per process: random N(0, 0.02²)-like values, norms of one.
const pf::io::LlamaWeights& weights_110m() {
  static const pf::io::LlamaWeights weights = [] {
    std::srand(7);
    pf::io::LlamaWeights w;
    w.config = config_110m();
    const auto& c = w.config;
    const auto random = [](pf::Index rows, pf::Index cols) { return pf::Matrix(pf::Matrix::Random(rows, cols) * 0.035f); };
    w.token_embedding = random(c.vocab_size, c.dim);
    for (pf::Index l = 0; l < c.n_layers; ++l) {
      w.attn_norm.push_back(pf::Vector::Ones(c.dim));
      w.ffn_norm.push_back(pf::Vector::Ones(c.dim));
      w.wq.push_back(random(c.dim, c.dim));
      w.wk.push_back(random(c.kv_dim(), c.dim));
      w.wv.push_back(random(c.kv_dim(), c.dim));
      w.wo.push_back(random(c.dim, c.dim));
      w.w1.push_back(random(c.hidden_dim, c.dim));
      w.w2.push_back(random(c.dim, c.hidden_dim));
      w.w3.push_back(random(c.hidden_dim, c.dim));
    }
    w.final_norm = pf::Vector::Ones(c.dim);
    return w;
  }();
  return weights;
}

/// The model over linear policy Lin (Dense: fp32 packed; Int8: quantized once; BF16: rounded once), built once per
/// process (≈ 2 s).
template <typename Lin = pf::Dense>
pf::Llama<pf::FullAttention, Lin>& model_110m() {
  static pf::Llama<pf::FullAttention, Lin> model = pf::make_llama<Lin>(weights_110m());
  return model;
}

/// Bytes one product streams from a layer's stored weight.
double stored_bytes(const pf::Dense& d) { return static_cast<double>(d.packed_weight().size()) * 4.0; }
double stored_bytes(const pf::BF16& b) { return static_cast<double>(b.packed_weight().bytes()); }
double stored_bytes(const pf::Int8& q) {
  const auto& w = q.quantized_weight();
  return static_cast<double>(w.size()) + 8.0 * static_cast<double>(w.cols());  // int8 panels, scales, column sums
}

/// Bytes of weights one decoded token reads: every stored matrix (the classifier included), one embedding row.
template <typename Lin>
double weight_bytes_per_token(const pf::Llama<pf::FullAttention, Lin>& model) {
  const auto& c = model.config();
  const auto* classifier = model.classifier();  // none when tied: the logits read the embedding (vocab, dim)
  double bytes = (classifier ? stored_bytes(*classifier) : 4.0 * static_cast<double>(c.vocab_size * c.dim)) +
                 static_cast<double>(c.dim) * 4.0;
  for (const auto& layer : model.layers()) {
    const auto& a = layer.self_attn();
    const auto& f = layer.ffn();
    bytes += stored_bytes(a.q_proj()) + stored_bytes(a.k_proj()) + stored_bytes(a.v_proj()) + stored_bytes(a.o_proj()) +
             stored_bytes(f.gate()) + stored_bytes(f.up()) + stored_bytes(f.down());
    bytes += 2.0 * static_cast<double>(model.config().dim) * 4.0;  // the two norms' gains
  }
  return bytes;
}

/// Best-of-5 STREAM triad bandwidth (GB/s) on `threads` threads, arrays of 64 MiB each.
double triad_gbps(int threads) {
  const std::size_t n = std::size_t{16} << 20;
  static std::vector<float> a(n, 0.0f), b(n, 1.0f), c(n, 2.0f);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    pf::parallel_chunks(static_cast<pf::Index>(n), threads, [&](pf::Index i0, pf::Index i1, int) {
      for (pf::Index i = i0; i < i1; ++i) a[std::size_t(i)] = b[std::size_t(i)] + 3.0f * c[std::size_t(i)];
    });
    const double s = seconds_since(t0);
    benchmark::DoNotOptimize(a.data());
    best = std::max(best, 12.0 * static_cast<double>(n) / s * 1e-9);
  }
  return best;
}

void BM_stream_triad(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  double best = 0;
  for (auto _ : state) best = std::max(best, triad_gbps(threads));
  state.counters["triad_GB/s"] = benchmark::Counter(best);
}

template <typename Lin>
void BM_llama110m_decode(benchmark::State& state) {
  const pf::Context ctx{static_cast<int>(state.range(0))};
  auto& model = model_110m<Lin>();
  auto sequence = model.new_sequence();
  constexpr int tokens = 32;  // per iteration: BOS, then 31 greedy tokens
  const auto run = [&] {
    sequence.reset();
    int token = 1;
    for (int i = 0; i < tokens; ++i) token = pf::Sampler::argmax(sequence.forward(std::span<const int>(&token, 1), ctx));
    return token;
  };
  run();  // warm-up
  const double triad = triad_gbps(ctx.threads);
  const bench::PeakMemory memory;
  const bench::LoopClock clock;
  for (auto _ : state) benchmark::DoNotOptimize(run());
  clock.report(state, 0.0);
  state.counters.erase("GFLOP/s");
  const double seconds_per_token = state.counters["ms"] * 1e-3 / tokens;
  const double gbps = weight_bytes_per_token(model) / seconds_per_token * 1e-9;
  state.counters["tok/s"] = benchmark::Counter(1.0 / seconds_per_token);
  state.counters["weight_GB/s"] = benchmark::Counter(gbps);
  state.counters["triad_GB/s"] = benchmark::Counter(triad);
  state.counters["pct_of_triad"] = benchmark::Counter(100.0 * gbps / triad);
  memory.report(state);
}

/// GPT-2 small with random weights (N(0, 0.02)-like, norm gains 1), built once per process.
pf::Gpt2<>& gpt2_small() {
  static pf::Gpt2<> model = [] {
    pf::io::LlamaConfig c = llama_shape(768, 3072, 12, 12, 50257, 1024);
    c.norm_eps = 1e-5f;
    pf::Gpt2<> m = pf::make_gpt2(c);
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    const pf::ParameterList params = pf::parameters_of(m);  // named: the loop below refers into it
    for (const pf::Parameter& p : params.items()) {
      std::vector<float> values(static_cast<std::size_t>(p.numel()));
      const bool gain = p.name.find("ln_") != std::string::npos && p.name.ends_with(".weight");
      for (float& v : values) v = gain ? 1.0f : normal(rng);
      p.write(values.data());
    }
    return m;
  }();
  return model;
}

void BM_gpt2_small_decode(benchmark::State& state) {
  const pf::Context ctx{static_cast<int>(state.range(0))};
  auto& model = gpt2_small();
  auto sequence = model.new_sequence();
  constexpr int tokens = 32;
  const auto run = [&] {
    sequence.reset();
    int token = 50256;
    for (int i = 0; i < tokens; ++i) token = pf::Sampler::argmax(sequence.forward(std::span<const int>(&token, 1), ctx));
    return token;
  };
  run();  // warm-up
  const double triad = triad_gbps(ctx.threads);
  const bench::LoopClock clock;
  for (auto _ : state) benchmark::DoNotOptimize(run());
  clock.report(state, 0.0);
  state.counters.erase("GFLOP/s");
  // Every parameter is read once per token but the position table, of which one row is.
  const auto& c = model.config();
  const double bytes = 4.0 * (static_cast<double>(pf::parameters_of(model).numel()) -
                              static_cast<double>((c.seq_len - 1) * c.dim));
  const double seconds_per_token = state.counters["ms"] * 1e-3 / tokens;
  const double gbps = bytes / seconds_per_token * 1e-9;
  state.counters["tok/s"] = benchmark::Counter(1.0 / seconds_per_token);
  state.counters["weight_GB/s"] = benchmark::Counter(gbps);
  state.counters["triad_GB/s"] = benchmark::Counter(triad);
  state.counters["pct_of_triad"] = benchmark::Counter(100.0 * gbps / triad);
}

/// GFLOP/s of the packed GEMM (512×768 · 768→2048, the FFN's gate) on `threads` threads, best of 5.
double gemm_gflops(int threads) {
  const pf::Matrix a = pf::Matrix::Random(512, 768), w = pf::Matrix::Random(2048, 768);
  const auto packed = pf::kernels::PackedMatrix::pack_transposed(w.data(), 2048, 768, 768);
  pf::Matrix c(512, 2048);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    pf::kernels::gemm(pf::cview(a), packed, pf::view(c), nullptr, false, threads);
    best = std::max(best, 2.0 * 512 * 768 * 2048 / seconds_since(t0) * 1e-9);
  }
  return best;
}

void BM_llama110m_prefill(benchmark::State& state) {
  const pf::Index n = state.range(0);
  const pf::Context ctx{static_cast<int>(state.range(1))};
  pf::Llama<>& model = model_110m();
  const auto& c = model.config();
  std::vector<int> prompt(static_cast<std::size_t>(n));
  for (pf::Index i = 0; i < n; ++i) prompt[std::size_t(i)] = static_cast<int>((i * 7919) % c.vocab_size);
  auto sequence = model.new_sequence();
  const auto run = [&] {
    sequence.reset();
    return pf::Sampler::argmax(sequence.forward(prompt, ctx));
  };
  const double gemm = gemm_gflops(ctx.threads);
  run();  // warm-up: sizes the workspaces (the first run also pays their page faults)
  run();
  const bench::LoopClock clock;
  for (auto _ : state) benchmark::DoNotOptimize(run());
  // Per layer: 2n·(4d² (q, k, v, o with kv = d) + 3·d·hidden) for the projections, 2n²d for causal QKᵀ and PV;
  // the classifier runs for the last position only.
  const double d = static_cast<double>(c.dim), h = static_cast<double>(c.hidden_dim), nn = static_cast<double>(n);
  const double flops = static_cast<double>(c.n_layers) * (2 * nn * (4 * d * d + 3 * d * h) + 2 * nn * nn * d) +
                       2 * d * static_cast<double>(c.vocab_size);
  clock.report(state, flops);
  state.counters["tok/s"] = benchmark::Counter(nn / (state.counters["ms"] * 1e-3));
  state.counters["gemm_GFLOP/s"] = benchmark::Counter(gemm);
  state.counters["pct_of_gemm"] = benchmark::Counter(100.0 * state.counters["GFLOP/s"] / gemm);
}

/// B sequences decoded together, one batched forward per step (each weight read once for all B): tok/s counts
/// every sequence's tokens. Compare B = 8 with B = 1 on the same threads.
void BM_llama110m_decode_batch(benchmark::State& state) {
  const pf::Index batch = state.range(0);
  const pf::Context ctx{static_cast<int>(state.range(1))};
  const pf::Llama<>& model = model_110m();
  using Model = pf::Llama<>;
  constexpr int steps = 32;  // per iteration: BOS, then 31 greedy tokens per sequence
  std::vector<Model::State> states;
  for (pf::Index b = 0; b < batch; ++b) states.push_back(model.make_state());
  std::vector<Model::State*> ptrs;
  for (auto& st : states) ptrs.push_back(&st);
  Model::Workspace ws;
  std::vector<int> next(static_cast<std::size_t>(batch));
  std::vector<std::span<const int>> inputs(static_cast<std::size_t>(batch));
  const auto run = [&] {
    for (pf::Index b = 0; b < batch; ++b) {
      states[std::size_t(b)].clear();
      next[std::size_t(b)] = 1 + static_cast<int>(b);  // a different first token per sequence
    }
    for (int s = 0; s < steps; ++s) {
      for (pf::Index b = 0; b < batch; ++b) inputs[std::size_t(b)] = std::span<const int>(&next[std::size_t(b)], 1);
      const pf::Matrix& logits = model.forward(ptrs, inputs, ws, ctx);
      for (pf::Index b = 0; b < batch; ++b)
        next[std::size_t(b)] = pf::Sampler::argmax(std::span<const float>(logits.data() + b * logits.cols(),
                                                                          std::size_t(logits.cols())));
    }
    return next[0];
  };
  run();  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) benchmark::DoNotOptimize(run());
  clock.report(state, 0.0);
  state.counters.erase("GFLOP/s");
  state.counters["tok/s"] = benchmark::Counter(double(batch) * steps / (state.counters["ms"] * 1e-3));
}

/// `users` user threads share the one model, each decoding its own sequence with one worker (Context{1}):
/// tok/s over all of them. Two users should run side by side (≥ 1.8× one).
void BM_llama110m_decode_users(benchmark::State& state) {
  const int users = static_cast<int>(state.range(0));
  const pf::Llama<>& model = model_110m();
  constexpr int steps = 32;
  std::vector<pf::Llama<>::Sequence> sequences;
  for (int u = 0; u < users; ++u) sequences.push_back(model.new_sequence());
  const auto decode = [&](int u) {
    auto& seq = sequences[std::size_t(u)];
    seq.reset();
    int token = 1 + u;
    for (int i = 0; i < steps; ++i) token = pf::Sampler::argmax(seq.forward(std::span<const int>(&token, 1), pf::Context{1}));
    return token;
  };
  const auto run = [&] {
    std::vector<std::thread> threads;
    for (int u = 1; u < users; ++u) threads.emplace_back([&, u] { benchmark::DoNotOptimize(decode(u)); });
    benchmark::DoNotOptimize(decode(0));
    for (auto& t : threads) t.join();
  };
  run();  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) run();
  clock.report(state, 0.0);
  state.counters.erase("GFLOP/s");
  state.counters["tok/s"] = benchmark::Counter(double(users) * steps / (state.counters["ms"] * 1e-3));
}

// ---- training, llama2.c's train.py shape ----

/// stories15M's shape (llama2.c's train.py defaults): hidden_dim is model.py's rule for dim 288, multiple_of 32:
/// 4·288 = 1152, int(2·1152/3) = 768, rounded up to a multiple of 32 = 768.
pf::io::LlamaConfig config_15m() { return llama_shape(288, 768, 6, 6, 32000, 256); }

constexpr pf::Index train_batch = 8;

using TrainModel = pf::Llama<pf::FullAttention, pf::LoRA<pf::Dense>>;

/// model.py's initialization: matrices (and the embedding) N(0, 0.02), w3 and wo N(0, 0.02/√(2·n_layers)), norm
/// gains one (as make_llama leaves them).
void initialize_15m(TrainModel& model) {
  std::mt19937 rng(1337);
  const float residual = 0.02f / std::sqrt(2.0f * static_cast<float>(model.config().n_layers));
  std::vector<float> values;
  const pf::ParameterList params = pf::parameters_of(model);  // kept: items() refers into it
  for (const pf::Parameter& p : params.items()) {
    if (p.shape.size() < 2) continue;
    const bool scaled = p.name.ends_with("w3.weight") || p.name.ends_with("wo.weight");
    std::normal_distribution<float> normal(0.0f, scaled ? residual : 0.02f);
    values.resize(static_cast<std::size_t>(p.numel()));
    for (float& v : values) v = normal(rng);
    p.write(values.data());
  }
}

/// Full optimizer steps of CausalLMTrainer on random tokens: every tensor trainable, or (lora) a rank-8 adapter
/// (α 16) on wq and wv alone. One untimed step first (it sizes the workspaces and the optimizer's moments).
template <bool lora>
void BM_llama_train(benchmark::State& state) {
  const pf::Context ctx{static_cast<int>(state.range(0))};
  const pf::io::LlamaConfig config = config_15m();
  TrainModel model = pf::make_llama<pf::LoRA<pf::Dense>>(config);
  initialize_15m(model);
  if constexpr (lora) pf::add_lora_training(model, "default", 8, 16.0f, {"wq", "wv"});

  std::vector<int> tokens(static_cast<std::size_t>(64 * config.seq_len + 1));  // 64 windows, read round-robin
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> id(0, static_cast<int>(config.vocab_size) - 1);
  for (int& t : tokens) t = id(rng);
  pf::TokenWindows data(std::move(tokens), config.seq_len);

  pf::TrainerOptions options;
  options.batch = train_batch;
  options.accumulation = 1;
  options.clip = 1.0;
  options.schedule.lr = 5e-4;  // train.py's learning rate, constant (the schedule costs nothing)
  pf::AdamWOptions adam;
  adam.beta1 = 0.9;
  adam.beta2 = 0.95;
  adam.weight_decay = 0.1;
  pf::CausalLMTrainer<TrainModel> trainer(model, pf::AdamW(adam), options);
  const pf::GradientList& grads = trainer.gradients();
  if constexpr (lora) {
    grads.freeze("");
    for (const pf::Gradient& g : grads.items())
      if (g.name.find(".lora_") != std::string::npos) g.set_trainable(true);
  } else {
    grads.unfreeze("");
  }

  const bench::PeakMemory memory;
  double loss = trainer.train_step(data, ctx).loss;  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) loss = trainer.train_step(data, ctx).loss;
  clock.report(state, 0.0);
  state.counters.erase("GFLOP/s");
  const double tokens_per_step = static_cast<double>(train_batch * config.seq_len);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * train_batch * config.seq_len);
  state.counters["tok/s"] = benchmark::Counter(tokens_per_step / (state.counters["ms"] * 1e-3));
  state.counters["loss"] = benchmark::Counter(loss);
  state.counters["trainable"] = benchmark::Counter(static_cast<double>(grads.trainable_numel()));
  memory.report(state);
}

}  // namespace

BENCHMARK(BM_stories260k_generate<false>)->Name("BM_stories260k_generate")->ArgName("threads")->Arg(1)->Arg(2)
    ->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_stories260k_generate<true>)->Name("BM_stories260k_generate_team")->ArgName("threads")->Arg(2)
    ->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_stream_triad)->ArgName("threads")->Arg(1)->Arg(2)->Iterations(1)->UseRealTime();
BENCHMARK(BM_gpt2_small_decode)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_llama110m_decode<pf::Dense>)->Name("BM_llama110m_decode")->ArgName("threads")->Arg(1)->Arg(2)
    ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_llama110m_decode<pf::Int8>)->Name("BM_llama110m_decode_int8")->ArgName("threads")->Arg(1)->Arg(2)
    ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_llama110m_decode<pf::BF16>)->Name("BM_llama110m_decode_bf16")->ArgName("threads")->Arg(1)->Arg(2)
    ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_llama110m_prefill)->ArgNames({"n", "threads"})->Args({16, 1})->Args({512, 1})->Args({16, 2})
    ->Args({512, 2})->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_llama110m_decode_batch)->ArgNames({"batch", "threads"})->Args({1, 1})->Args({8, 1})->Args({1, 2})
    ->Args({8, 2})->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_llama110m_decode_users)->ArgName("users")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);
// A step takes seconds: three timed steps after the untimed one.
BENCHMARK(BM_llama_train<false>)->Name("BM_llama_train")->ArgName("threads")->Arg(1)->Arg(2)->Iterations(3)
    ->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_llama_train<true>)->Name("BM_llama_train_lora")->ArgName("threads")->Arg(1)->Arg(2)->Iterations(3)
    ->UseRealTime()->Unit(benchmark::kMillisecond);

POLYFORMER_BENCHMARK_MAIN()
