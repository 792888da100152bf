// 10,000 random calls, valid and invalid, with random shapes and options, against the library's objects: a linear
// layer with LoRA adapters, the norms, a causal LM's sequence, a sampler, llama2.c's tokenizer and the attention
// spelling parser. Every invalid call must throw the error its documentation names, and leave the object as it was:
// each object has a twin that only ever receives the valid calls, and every valid call must give, bit for bit, what
// the twin gives.

#include <catch2/catch.hpp>

#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "polyformer/attention/dynamic_attention.hpp"
#include "polyformer/generate/sampler.hpp"
#include "polyformer/io/tokenizer.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/linear/lora.hpp"
#include "polyformer/models/llama.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

enum class Expect { ok, shape_error, config_error };

/// Runs `call`; counts a mismatch (and reports it) unless it threw exactly what `expect` says.
template <typename F>
bool outcome_is(Expect expect, F&& call, const std::string& what, int& mismatches) {
  Expect got = Expect::ok;
  std::string message;
  try {
    call();
  } catch (const pf::shape_error& e) {
    got = Expect::shape_error;
    message = e.what();
  } catch (const pf::config_error& e) {
    got = Expect::config_error;
    message = e.what();
  } catch (const std::exception& e) {
    ++mismatches;
    UNSCOPED_INFO(what << ": threw an undocumented " << e.what());
    return false;
  }
  if (got != expect) {
    ++mismatches;
    UNSCOPED_INFO(what << ": expected outcome " << int(expect) << ", got " << int(got) << " " << message);
    return false;
  }
  return true;
}

bool same_bits(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * std::size_t(a.size())) == 0;
}

}  // namespace

TEST_CASE("API stress: 10,000 random calls, invalid ones throwing their documented error and changing nothing",
          "[stress][errors]") {
  std::mt19937 rng(20261204);
  const auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const auto coin = [&] { return uniform(0, 1) == 1; };
  const pf::Context ctx{1};

  // A linear layer with adapters, and its twin.
  constexpr Index in = 24, out = 16;
  pf::LoRA<pf::Dense> lora(pft::random_matrix(out, in, 1)), lora_twin(pft::random_matrix(out, in, 1));
  int adapters = 0;
  // The norms (stateless between calls; the twin is the first result).
  const pf::LayerNorm layer_norm(in, 1e-5f);
  const pf::RMSNorm rms_norm(in, 1e-6f);
  // A causal LM: one sequence gets every call, its twin only the valid ones.
  const pf::io::LlamaConfig c{
      .dim = 32, .hidden_dim = 64, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 64, .seq_len = 40};
  auto model = pf::make_llama(c);
  pft::randomize_parameters(model, 3, 0.2f);
  auto sequence = model.new_sequence(), sequence_twin = model.new_sequence();
  pf::SamplerOptions sampling;
  sampling.temperature = 0.7f;
  sampling.seed = 99;
  pf::Sampler sampler(64, sampling), sampler_twin(64, sampling);
  const auto tokenizer = pf::io::Tokenizer::read(pft::shared_path("models/tok512.bin"), 512);
  const std::vector<std::string> spelling_parts{"full", "sliding", "blockwise", "lsh", "linformer", "performer",
                                                "linear", ":", "0", "1", "16", "-3", "x", "4:8", "", "99999999999"};

  std::map<std::string, std::pair<int, int>> counts;  // operation → (valid, invalid) calls
  int mismatches = 0;
  constexpr int calls = 10000;
  for (int call = 0; call < calls; ++call) {
    const bool valid = coin();
    const int op = uniform(0, 7);
    std::string name;
    if (op == 0) {  // linear forward: x (rows, in) → y (rows, out); a wrong x or y is a shape_error
      name = "LoRA<Dense>::forward";
      const Index rows = uniform(1, 9);
      const Index x_cols = valid || coin() ? in : in + uniform(-5, 5), y_rows = valid || coin() ? rows : rows + 1;
      const Index y_cols = valid ? out : (x_cols != in || y_rows != rows) && coin() ? out : out + uniform(1, 3);
      const Matrix x = pft::random_matrix(rows, x_cols, unsigned(call));
      Matrix y(y_rows, y_cols), y_twin(rows, out);
      const bool ok = x_cols == in && y_rows == rows && y_cols == out;
      if (outcome_is(ok ? Expect::ok : Expect::shape_error, [&] { lora.forward(pf::cview(x), pf::view(y), ctx); }, name,
                     mismatches) && ok) {
        lora_twin.forward(pf::cview(x), pf::view(y_twin), ctx);
        if (!same_bits(y, y_twin)) ++mismatches;
      }
      counts[name].first += ok;
      counts[name].second += !ok;
    } else if (op == 1) {  // adding an adapter: A (rank, in), B (out, rank), a fresh name, a finite scaling
      name = "LoRA::add_adapter";
      const Index rank = uniform(1, 4);
      const int flaw = valid ? 0 : uniform(1, 4);  // 1: A's shape, 2: B's shape, 3: a taken name, 4: scaling
      if (adapters >= 6 && flaw == 0) {
        // Enough adapters: switch one off instead (valid on both).
        const std::string victim = "a" + std::to_string(uniform(0, adapters - 1));
        lora.set_active(victim, false);
        lora_twin.set_active(victim, false);
        counts["LoRA::set_active"].first++;
        continue;
      }
      const Matrix a = pft::random_matrix(rank, flaw == 1 ? in + 1 : in, unsigned(call), 0.1f);
      const Matrix b = pft::random_matrix(flaw == 2 ? out - 1 : out, rank, unsigned(call) + 1, 0.1f);
      const std::string id = flaw == 3 && adapters > 0 ? "a0" : "a" + std::to_string(adapters);
      const float scaling = flaw == 4 ? std::numeric_limits<float>::infinity() : 0.5f;
      const bool ok = flaw == 0 || (flaw == 3 && adapters == 0);
      const Expect expect = ok ? Expect::ok : flaw == 1 || flaw == 2 ? Expect::shape_error : Expect::config_error;
      if (outcome_is(expect, [&] { lora.add_adapter(id, a, b, scaling); }, name, mismatches) && ok) {
        lora_twin.add_adapter(id, a, b, scaling);
        ++adapters;
      }
      counts[name].first += ok;
      counts[name].second += !ok;
    } else if (op == 2) {  // switching an adapter by name: an unknown name is a config_error
      name = "LoRA::set_active";
      const bool ok = valid && adapters > 0;
      const std::string id = ok ? "a" + std::to_string(uniform(0, adapters - 1)) : "nope" + std::to_string(call);
      const bool active = coin();
      if (outcome_is(ok ? Expect::ok : Expect::config_error, [&] { lora.set_active(id, active); }, name, mismatches) &&
          ok)
        lora_twin.set_active(id, active);
      counts[name].first += ok;
      counts[name].second += !ok;
    } else if (op == 3) {  // the norms: x (rows, in) → y (rows, in)
      name = "LayerNorm/RMSNorm::forward";
      const Index rows = uniform(1, 6), cols = valid ? in : in + (coin() ? 1 : -1) * uniform(1, 4);
      const Matrix x = pft::random_matrix(rows, cols, unsigned(call));
      Matrix y(rows, in), y2(rows, in);
      const bool ok = cols == in;
      const Expect expect = ok ? Expect::ok : Expect::shape_error;
      if (outcome_is(expect, [&] { layer_norm.forward(pf::cview(x), pf::view(y)); }, name, mismatches) && ok) {
        layer_norm.forward(pf::cview(x), pf::view(y2));
        if (!same_bits(y, y2)) ++mismatches;
      }
      outcome_is(expect, [&] { rms_norm.forward(pf::cview(x), pf::view(y)); }, name, mismatches);
      counts[name].first += ok;
      counts[name].second += !ok;
    } else if (op == 4) {  // the sequence: 1..5 tokens in 0..63; a bad id, no tokens or too many positions refused
      name = "CausalLM::Sequence::forward";
      const int n = valid || coin() ? uniform(1, 5) : 0;
      std::vector<int> tokens;
      for (int i = 0; i < n; ++i) tokens.push_back(uniform(0, 63));
      if (!valid && n > 0) tokens[std::size_t(uniform(0, n - 1))] = coin() ? -1 - uniform(0, 5) : 64 + uniform(0, 99);
      const bool fits = sequence.position() + n <= c.seq_len;
      const bool ok = valid && fits;
      const Index before = sequence.position();
      if (outcome_is(ok ? Expect::ok : Expect::config_error, [&] { sequence.forward(tokens, ctx); }, name,
                     mismatches) &&
          ok) {
        sequence_twin.forward(tokens, ctx);
        if (!same_bits(sequence.logits(), sequence_twin.logits())) ++mismatches;
      } else if (sequence.position() != before) {
        ++mismatches;
        UNSCOPED_INFO(name << ": a refused call moved the position from " << before << " to " << sequence.position());
      }
      if (!fits) {  // full: both start again
        sequence.reset();
        sequence_twin.reset();
      }
      counts[name].first += ok;
      counts[name].second += !ok;
    } else if (op == 5) {  // sampling: logits of the vocabulary's size; another size is a shape_error
      name = "Sampler::sample";
      const std::size_t n = valid ? 64 : std::size_t(coin() ? uniform(0, 63) : uniform(65, 200));
      std::vector<float> logits(n);
      for (std::size_t i = 0; i < n; ++i) logits[i] = float(uniform(-300, 300)) / 100.0f;
      int token = -1;
      if (outcome_is(valid ? Expect::ok : Expect::shape_error, [&] { token = sampler.sample(logits); }, name,
                     mismatches) &&
          valid && token != sampler_twin.sample(logits))
        ++mismatches;
      counts[name].first += valid;
      counts[name].second += !valid;
    } else if (op == 6) {  // decoding a token id: outside 0..511 is a config_error
      name = "io::Tokenizer::decode";
      const int id = valid ? uniform(0, 511) : coin() ? uniform(512, 100000) : -uniform(1, 100000);
      std::string piece;
      if (outcome_is(valid ? Expect::ok : Expect::config_error,
                     [&] { piece = std::string(tokenizer.decode(uniform(0, 511), id)); }, name, mismatches) &&
          valid && piece.empty() && !tokenizer.piece(id).empty())
        ++mismatches;
      counts[name].first += valid;
      counts[name].second += !valid;
    } else {  // spellings of attention policies, glued from parts: either a policy or a config_error
      name = "DynamicIncrementalAttention::parse";
      std::string spelling;
      for (int k = uniform(1, 4); k > 0; --k) spelling += spelling_parts[std::size_t(uniform(0, int(spelling_parts.size()) - 1))];
      bool parsed = false;
      try {
        const auto policy = pf::DynamicIncrementalAttention::parse(spelling);
        parsed = true;
        // A spelling that parses spells itself back the same way when parsed again.
        if (pf::DynamicIncrementalAttention::parse(policy.spelling()).spelling() != policy.spelling()) ++mismatches;
      } catch (const pf::config_error&) {
      } catch (const std::exception& e) {
        ++mismatches;
        UNSCOPED_INFO(name << " '" << spelling << "': threw an undocumented " << e.what());
      }
      counts[name].first += parsed;
      counts[name].second += !parsed;
    }
  }
  int valid_calls = 0, invalid_calls = 0;
  for (const auto& [op, n] : counts) {
    INFO(op << ": " << n.first << " valid, " << n.second << " invalid");
    CHECK(n.first > 0);  // every operation was tried both ways
    CHECK(n.second > 0);
    valid_calls += n.first;
    invalid_calls += n.second;
  }
  INFO(valid_calls << " valid and " << invalid_calls << " invalid calls");
  CHECK(valid_calls + invalid_calls == calls);
  CHECK(mismatches == 0);
}
