// generate: text from a llama2.c checkpoint (legacy, version 1 or 2) and its tokenizer, as llama2.c's run.c
// prints it: the prompt, the continuation and a final newline on stdout; statistics on stderr. Or from a Hugging
// Face directory (GPT-2, Llama, T5: config.json, safetensors weights, a tokenizer) as transformers' generate runs it.
//
//   generate --model M.bin --tokenizer T.bin [--prompt TEXT] [--steps N] [--temperature T] [--topp P]
//            [--topk K] [--seed S] [--threads N] [--attention A]
//            [--linear fp32|bf16|int8] [--int8] [--lora DIR[:SCALE]]... [--merge-lora] [--prompts FILE [--batch N]]
//   generate --model DIR [--tokenizer FILE_OR_DIR] [--prompt TEXT] [--max-new-tokens N] [sampling, threads,
//            attention, linear and (Llama) LoRA options as above] [--beams K [--length-penalty P] [--early-stopping]]
//
// --steps counts positions, prompt included (0: the model's seq_len), as run.c's -n. --temperature 0 is
// greedy. Defaults as run.c: steps 256, temperature 1, topp 0.9, seed from the clock. Exit code 2 on bad input.
// A directory's text is its prompt (encoded with the special tokens its tokenizer adds: Llama's <s>) and up to
// --max-new-tokens (256) more tokens, ending early at the model's eos_token_id (generation_config.json, else
// config.json), printed as the tokenizer decodes them and a final newline. Its tokenizer is the directory's
// (tokenizer.json, vocab.json + merges.txt, tokenizer.model) unless --tokenizer names another. --beams K searches
// with K beams as transformers' generate(num_beams=K) does (no sampling; --length-penalty, 1 by default, divides a
// hypothesis's log-probability by its length to that power; --early-stopping ends the search as soon as K
// hypotheses are finished) and prints the best text once found.
// A T5 directory's prompt (with the </s> its tokenizer adds) runs through the encoder once; the decoder starts from
// decoder_start_token_id with the cross-attention keys and values projected once, and only its text is printed
// (as transformers' decode of generate's output); --lora does not apply, and --attention takes the policies that
// add T5's relative position bias to their scores (full, sliding:W, blockwise:B) for the decoder's and encoder's
// self-attention (the cross-attention stays full).
// --attention swaps every layer's attention policy for A, the spelling of any policy of polyformer's registry
// that decodes incrementally (--help lists them; full by default; sliding:W keeps only a window of W keys per
// layer, linear and performer:M a recurrent state) — the model was trained with full attention, so the others
// change the text: they show the policies decoding, not a better model.
// --linear chooses every linear layer's policy by its name in the linear registry (fp32 by default; bf16 rounds the
// weights to bf16 once and multiplies in bf16 with fp32 sums); --int8, the
// same as --linear int8, quantizes every linear layer once on load (per output channel; activations per row at
// run time).
// --lora applies a Hugging Face PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors),
// scaled by SCALE (1 by default); repeat it to apply several at once. --merge-lora folds them into the weights
// before decoding (not with --int8).
// --prompts FILE reads one prompt per line and generates for each, up to N sequences (--batch, 8 by default)
// advanced together by every forward and refilled as they end; stdout is, in the file's order, exactly what
// one run per line with --prompt would print.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <variant>
#include <vector>

#include "polyformer/polyformer.hpp"
#include "polyformer/attention/dynamic_attention.hpp"
#include "polyformer/generate/seq2seq_generation.hpp"
#include "polyformer/generate/text_generation.hpp"
#include "polyformer/linear/registry.hpp"
#include "polyformer/models/hf_gpt2.hpp"
#include "polyformer/models/hf_llama.hpp"
#include "polyformer/models/hf_t5.hpp"
#include "polyformer/models/llama_lora.hpp"
#include "polyformer/models/llama_team_decoder.hpp"

#include "../bench/resident_memory.hpp"
#include "cli.hpp"

namespace pf = polyformer;

namespace {

using cli::usage_error;

/// The usage text; the --attention spellings are those of the registry's policies that decode incrementally.
const std::string usage =
    "usage: generate --model M.bin --tokenizer T.bin [--prompt TEXT] [--steps N] [--temperature T]\n"
    "       generate --model HF_DIR [--tokenizer FILE_OR_DIR] [--prompt TEXT] [--max-new-tokens N] [--temperature T]\n"
    "                [--beams K [--length-penalty P] [--early-stopping]]\n"
    "                [--topp P] [--topk K] [--seed S] [--threads N]\n"
    "                [--attention " + pf::attention_usage<pf::AttentionPolicies, /*incremental_only=*/true>() + "]\n"
    "                [--linear " + pf::linear_usage() + "] [--int8] [--lora DIR[:SCALE]]... [--merge-lora]\n"
    "                [--prompts FILE [--batch N]]\n";

/// One --lora argument: a PEFT adapter directory and the strength its α/r is multiplied by.
struct LoraOption {
  std::string directory;
  float strength = 1.0f;
};

struct Options {
  std::string model, tokenizer, prompt, attention = "full", prompts;
  long long steps = 256, batch = 8, max_new_tokens = 256, beams = 1;
  double length_penalty = 1.0;
  bool early_stopping = false, beam_options_given = false;
  bool steps_given = false, max_new_tokens_given = false;
  float temperature = 1.0f, top_p = 0.9f;
  long long top_k = 0, threads = 1;
  unsigned long long seed = 0;
  bool seed_given = false;
  std::string linear = "fp32";
  bool merge_lora = false;
  std::vector<LoraOption> loras;
};

using cli::parse_number;

/// DIR or DIR:SCALE (the last ':' starts a scale only when what follows is a number, so a directory may
/// contain ':').
LoraOption parse_lora(const std::string& text) {
  LoraOption l{text, 1.0f};
  const std::size_t colon = text.rfind(':');
  if (colon != std::string::npos && colon > 0) {
    const std::string tail = text.substr(colon + 1);
    float scale = 0.0f;
    const auto [end, ec] = std::from_chars(tail.data(), tail.data() + tail.size(), scale);
    if (ec == std::errc{} && end == tail.data() + tail.size() && !tail.empty()) {
      if (!std::isfinite(scale)) throw usage_error("--lora " + text + ": the scale is not finite");
      l = {text.substr(0, colon), scale};
    }
  }
  if (l.directory.empty()) throw usage_error("--lora needs a directory");
  return l;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--model") o.model = value();
    else if (a == "--tokenizer") o.tokenizer = value();
    else if (a == "--prompt") o.prompt = value();
    else if (a == "--steps") {
      o.steps = parse_number<long long>(a, value());
      o.steps_given = true;
    } else if (a == "--beams") {
      o.beams = parse_number<long long>(a, value());
    } else if (a == "--length-penalty") {
      o.length_penalty = parse_number<double>(a, value());
      o.beam_options_given = true;
    } else if (a == "--early-stopping") {
      o.early_stopping = o.beam_options_given = true;
    } else if (a == "--max-new-tokens") {
      o.max_new_tokens = parse_number<long long>(a, value());
      o.max_new_tokens_given = true;
    }
    else if (a == "--temperature") o.temperature = parse_number<float>(a, value());
    else if (a == "--topp") o.top_p = parse_number<float>(a, value());
    else if (a == "--topk") o.top_k = parse_number<long long>(a, value());
    else if (a == "--seed") {
      o.seed = parse_number<unsigned long long>(a, value());
      o.seed_given = true;
    } else if (a == "--threads") o.threads = parse_number<long long>(a, value());
    else if (a == "--attention") o.attention = value();
    else if (a == "--int8") o.linear = "int8";
    else if (a == "--linear") o.linear = value();
    else if (a == "--lora") o.loras.push_back(parse_lora(value()));
    else if (a == "--merge-lora") o.merge_lora = true;
    else if (a == "--prompts") o.prompts = value();
    else if (a == "--batch") o.batch = parse_number<long long>(a, value());
    else if (a == "--help" || a == "-h") {
      std::fputs(usage.c_str(), stdout);
      std::exit(0);
    } else {
      throw usage_error("unknown option '" + a + "'");
    }
  }
  if (o.model.empty()) throw usage_error("--model is required");
  const bool hf = std::filesystem::is_directory(o.model);
  if (!hf && o.tokenizer.empty()) throw usage_error("--tokenizer is required with a llama2.c --model file");
  if (hf && o.steps_given) throw usage_error("--steps counts a llama2.c model's positions: with a directory, give --max-new-tokens");
  if (!hf && o.max_new_tokens_given) throw usage_error("--max-new-tokens is for a Hugging Face directory: with a .bin model, give --steps");
  if (hf && !o.prompts.empty()) throw usage_error("--prompts runs llama2.c models only (not a Hugging Face directory)");
  if (o.max_new_tokens < 0) throw usage_error("--max-new-tokens is " + std::to_string(o.max_new_tokens) + ", expected >= 0");
  if (o.beams < 1 || o.beams > 256) throw usage_error("--beams is " + std::to_string(o.beams) + ", expected 1..256");
  if (o.beams > 1 && !hf) throw usage_error("--beams is for a Hugging Face directory (not a llama2.c model)");
  if (o.beam_options_given && o.beams == 1) throw usage_error("--length-penalty and --early-stopping need --beams K > 1");
  if (!std::isfinite(o.length_penalty)) throw usage_error("--length-penalty is not finite");
  if (o.steps < 0) throw usage_error("--steps is " + std::to_string(o.steps) + ", expected >= 0");
  if (o.threads < 1 || o.threads > 1024) throw usage_error("--threads is " + std::to_string(o.threads) + ", expected 1..1024");
  if (o.top_k < 0 || o.top_k > (1 << 30)) throw usage_error("--topk is " + std::to_string(o.top_k) + ", expected >= 0");
  if (o.seed_given && o.seed == 0) throw usage_error("--seed is 0, expected nonzero");
  if (o.merge_lora && o.loras.empty()) throw usage_error("--merge-lora needs at least one --lora");
  if (o.batch < 1 || o.batch > 4096) throw usage_error("--batch is " + std::to_string(o.batch) + ", expected 1..4096");
  if (!o.prompts.empty() && !o.prompt.empty()) throw usage_error("--prompt and --prompts exclude each other");
  bool known = false;
  pf::for_each_linear_policy([&]<typename L>(std::type_identity<L>) { known = known || o.linear == L::name; });
  if (!known) throw usage_error("--linear is '" + o.linear + "', expected " + pf::linear_usage(", "));
  if (o.merge_lora && o.linear != pf::Dense::name)
    throw usage_error("--merge-lora cannot merge into --" + (o.linear == "int8" ? o.linear : "linear " + o.linear) +
                      " weights, only fp32 ones (drop one of them)");
  return o;
}

/// The sampling options of the command line (the seed from the clock unless given).
pf::SamplerOptions sampler_options(const Options& o) {
  pf::SamplerOptions sampling;
  sampling.temperature = o.temperature;
  sampling.top_p = o.top_p;
  sampling.top_k = static_cast<int>(o.top_k);
  sampling.seed = o.seed_given ? o.seed
                               : static_cast<unsigned long long>(
                                     std::chrono::system_clock::now().time_since_epoch().count()) | 1u;
  return sampling;
}

/// stderr: the resident memory once the model is loaded, beside its parameters' bytes as fp32. (Loading's large
/// temporaries were separate mappings, returned when freed; no malloc_trim, whose returned pages decoding would
/// fault back in: ≈ 1,800 faults, 4 ms, on stories260K.)
template <typename Model>
void report_loaded(Model& model) {
  const double parameters = static_cast<double>(pf::parameters_of(model).numel());
  std::fprintf(stderr, "loaded: %.1f MB resident, %.0f parameters (%.1f MB as fp32)\n",
               bench::proc_status_mib("VmRSS") * 1.048576, parameters, parameters * 4e-6);
}

/// Writes a piece of the text to stdout as soon as it is made.
void print_piece(std::string_view piece) {
  std::fwrite(piece.data(), 1, piece.size(), stdout);
  std::fflush(stdout);
}

/// stderr: the tokens and speed of a generation's two phases (prefill and decode; T5's encoder and decoder).
void report_speed(const pf::GenerationStats& stats, const char* first, const char* second) {
  std::fprintf(stderr, "%s: %lld tokens, %.1f tok/s; %s: %lld tokens, %.1f tok/s\n", first,
               static_cast<long long>(stats.prefill_tokens), stats.prefill_tokens_per_second(), second,
               static_cast<long long>(stats.decoded_tokens), stats.decode_tokens_per_second());
}

/// The lines of a prompts file (a final newline ends the last line; "\r\n" endings are accepted).
std::vector<std::string> read_prompts(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("--prompts " + path + ": cannot open it");
  std::string text;
  char buffer[1 << 14];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, f)) > 0;) text.append(buffer, n);
  std::fclose(f);
  std::vector<std::string> lines;
  for (std::size_t start = 0; start < text.size();) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    start = end + 1;
  }
  if (lines.empty()) throw std::runtime_error("--prompts " + path + ": no lines, expected one prompt per line");
  return lines;
}

/// --prompts: every line's text, printed in the file's order once generated.
template <typename Model>
void run_batch(const Model& model, const pf::io::Tokenizer& tokenizer, const std::vector<std::string>& prompts,
               const Options& o, const pf::SamplerOptions& sampling, const pf::Context& ctx) {
  std::vector<std::string> texts(prompts.size());
  const auto start = std::chrono::steady_clock::now();
  const auto stats = pf::generate_batch(
      model, tokenizer, prompts, static_cast<pf::Index>(o.steps), sampling, static_cast<pf::Index>(o.batch),
      [&](std::size_t i, std::string_view piece) { texts[i].append(piece); }, ctx);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const std::string& t : texts) std::fwrite(t.data(), 1, t.size(), stdout);
  std::fflush(stdout);
  long long decoded = 0, prefilled = 0;
  for (const auto& s : stats) {
    decoded += s.decoded_tokens;
    prefilled += s.prefill_tokens;
  }
  std::fprintf(stderr, "%zu prompts, batch %lld: %lld prefill and %lld decoded tokens in %.3f s, %.1f tok/s\n",
               prompts.size(), o.batch, prefilled, decoded, seconds, double(prefilled + decoded) / seconds);
}

template <typename Linear, typename Attention>
void run(const Options& o, const Attention& attention) {
  auto model = pf::load_llama2c<pf::LoRA<Linear>>(o.model, attention);
  for (std::size_t i = 0; i < o.loras.size(); ++i)
    pf::add_lora_adapter(model, pf::io::read_peft_lora(o.loras[i].directory), "lora" + std::to_string(i),
                         o.loras[i].strength);
  if constexpr (pf::MergeableLinear<Linear>) {
    if (o.merge_lora) pf::merge_lora_adapters(model);
  }
  const auto tokenizer = pf::io::Tokenizer::read(o.tokenizer, static_cast<int>(model.config().vocab_size));
  const std::vector<std::string> prompts = o.prompts.empty() ? std::vector<std::string>() : read_prompts(o.prompts);
  report_loaded(model);  // once nothing of the command line can be refused any more
  const pf::SamplerOptions sampling = sampler_options(o);
  const pf::Context ctx{static_cast<int>(o.threads)};
  if (!prompts.empty()) {
    run_batch(model, tokenizer, prompts, o, sampling, ctx);
    return;
  }
  pf::Sampler sampler(static_cast<int>(model.config().vocab_size), sampling);
  using Team = pf::LlamaTeamDecoder<Attention, pf::LoRA<Linear>>;
  if (Team::worthwhile(model, ctx.threads)) {  // a small model: its threads decode each token as one team
    pf::LlamaTeamSequence<Attention, pf::LoRA<Linear>> sequence(model, ctx.threads);
    const auto stats =
        pf::generate(sequence, tokenizer, o.prompt, static_cast<pf::Index>(o.steps), sampler, print_piece, ctx);
    report_speed(stats, "prefill", "decode (a team of threads)");
    return;
  }
  const auto stats =
      pf::generate(model, tokenizer, o.prompt, static_cast<pf::Index>(o.steps), sampler, print_piece, ctx);
  report_speed(stats, "prefill", "decode");
}

/// Prints the text of `ids` (the decoder's new tokens, or the prompt's and the new ones) from a beam search's best
/// hypothesis, its end token left out, and the search's figures on stderr.
void print_beam_result(const pf::tokenizers::Tokenizer& tokenizer, std::vector<int> ids, pf::BeamSearchResult best,
                       const pf::BeamSearchOptions& beam, double seconds) {
  const std::size_t found = best.tokens.size();
  if (!best.tokens.empty() &&
      std::find(beam.eos_token_ids.begin(), beam.eos_token_ids.end(), best.tokens.back()) != beam.eos_token_ids.end())
    best.tokens.pop_back();  // the end token ends the text, as in greedy decoding; it is not printed
  ids.insert(ids.end(), best.tokens.begin(), best.tokens.end());
  const std::string text = tokenizer.decode(ids, /*skip_special_tokens=*/true) + "\n";
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fprintf(stderr, "beam search: %d beams, %zu new tokens, score %.4f, %.3f s\n", beam.num_beams, found,
               best.score, seconds);
}

/// The beam search options of the command line.
pf::BeamSearchOptions beam_options(const Options& o, pf::Index max_new_tokens, std::vector<int> eos_token_ids) {
  pf::BeamSearchOptions beam;
  beam.num_beams = static_cast<int>(o.beams);
  beam.max_new_tokens = max_new_tokens;
  beam.length_penalty = o.length_penalty;
  beam.early_stopping =
      o.early_stopping ? pf::BeamSearchOptions::EarlyStopping::yes : pf::BeamSearchOptions::EarlyStopping::heuristic;
  beam.eos_token_ids = std::move(eos_token_ids);
  return beam;
}

/// Beam search checks what greedy and sampled generation check: every token of the tokenizer has a logit.
void require_tokens_fit(const pf::tokenizers::Tokenizer& tokenizer, pf::Index model_vocab) {
  if (static_cast<pf::Index>(tokenizer.vocab_size()) > model_vocab)
    throw std::runtime_error("beam_search: the tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                             " tokens, the model's logits " + std::to_string(model_vocab));
}

/// A T5 directory's text: the prompt through the encoder once, then the decoder's tokens (greedy, sampled or by
/// beam search), only those printed.
template <typename Linear, typename Act>
void run_t5(const Options& o, const pf::tokenizers::Tokenizer& tokenizer, const pf::TextGenerationOptions& generation,
            const pf::SamplerOptions& sampling, const pf::Context& ctx) {
  const auto attention = [&] {
    try {
      return pf::DynamicAdditiveBiasAttention::parse(o.attention);
    } catch (const pf::config_error&) {
      throw usage_error("--attention " + o.attention + ": T5 adds its relative position bias to the scores, which " +
                        pf::attention_usage<pf::AdditiveBiasPolicies<>, true>(", ") + " do");
    }
  }();
  auto model = pf::load_hf_t5<Act, Linear, pf::DynamicAdditiveBiasAttention>(o.model, attention);
  report_loaded(model);
  if (o.beams > 1) {
    require_tokens_fit(tokenizer, model.config().vocab_size);
    const std::vector<int> ids = tokenizer.encode(o.prompt);
    if (ids.empty()) throw std::runtime_error("the prompt encodes to no token: give a prompt");
    const pf::BeamSearchOptions beam = beam_options(o, generation.max_new_tokens, generation.eos_token_ids);
    const auto start = std::chrono::steady_clock::now();
    const pf::Matrix memory = model.encode(ids, {}, ctx);
    const pf::BeamSearchResult best = pf::beam_search_seq2seq(model, memory, {}, beam, ctx);
    print_beam_result(tokenizer, {}, best, beam,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return;
  }
  pf::Sampler sampler(static_cast<int>(model.config().vocab_size), sampling);
  const auto stats = pf::generate_text_seq2seq(model, tokenizer, o.prompt, generation, sampler, print_piece, ctx);
  std::fputc('\n', stdout);
  report_speed(stats, "encoder", "decoder");
}

/// The text of a Hugging Face directory's model (GPT-2, Llama or T5) and tokenizer.
template <typename Linear, typename Attention>
void run_hf(const Options& o, const Attention& attention) {
  const pf::io::HfDirectory dir = pf::io::HfDirectory::open(o.model);
  const std::string type = dir.config_string("model_type");
  const auto tokenizer = pf::tokenizers::Tokenizer::open(o.tokenizer.empty() ? o.model : o.tokenizer);
  pf::TextGenerationOptions generation;
  generation.max_new_tokens = static_cast<pf::Index>(o.max_new_tokens);
  generation.eos_token_ids = dir.token_ids("eos_token_id");
  if (const std::vector<int> bos = dir.token_ids("bos_token_id"); !bos.empty()) generation.bos_token_id = bos.front();
  // A sequence's state holds keys and values for every position it may reach: only as many as this run needs.
  const pf::Index positions = static_cast<pf::Index>(std::max<std::size_t>(tokenizer.encode(o.prompt).size(), 1)) +
                              generation.max_new_tokens;
  const pf::SamplerOptions sampling = sampler_options(o);
  const pf::Context ctx{static_cast<int>(o.threads)};
  const auto generate = [&](auto& model) {
    report_loaded(model);
    if (o.beams > 1) {
      require_tokens_fit(tokenizer, model.config().vocab_size);
      std::vector<int> ids = tokenizer.encode(o.prompt);
      if (ids.empty() && generation.bos_token_id >= 0) ids.push_back(generation.bos_token_id);
      if (ids.empty()) throw std::runtime_error("the prompt encodes to no token and the model names no bos_token_id");
      const pf::BeamSearchOptions beam = beam_options(
          o, std::min<pf::Index>(generation.max_new_tokens, model.config().seq_len - static_cast<pf::Index>(ids.size()) + 1),
          generation.eos_token_ids);
      const auto start = std::chrono::steady_clock::now();
      const pf::BeamSearchResult best = pf::beam_search_causal(model, ids, beam, ctx);
      print_beam_result(tokenizer, std::move(ids), best, beam,
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      return;
    }
    auto sequence = model.new_sequence();
    pf::Sampler sampler(static_cast<int>(model.config().vocab_size), sampling);
    const auto stats = pf::generate_text(sequence, tokenizer, o.prompt, generation, sampler, print_piece, ctx);
    std::fputc('\n', stdout);
    report_speed(stats, "prefill", "decode");
  };
  const auto capped = [&](pf::Index config_positions) { return std::min(positions, config_positions); };
  if (type == "gpt2") {
    if (!o.loras.empty()) throw usage_error("--lora applies to Llama models only (" + o.model + " is GPT-2)");
    auto model = pf::load_hf_gpt2<pf::LoRA<Linear>>(o.model, attention, capped(pf::hf_gpt2_config(dir).seq_len));
    generate(model);
  } else if (type == "llama") {
    auto model = pf::load_hf_llama<pf::LoRA<Linear>>(o.model, attention, capped(pf::hf_llama_config(dir).seq_len));
    for (std::size_t i = 0; i < o.loras.size(); ++i)
      pf::add_lora_adapter(model, pf::io::read_peft_lora(o.loras[i].directory), "lora" + std::to_string(i),
                           o.loras[i].strength);
    if constexpr (pf::MergeableLinear<Linear>) {
      if (o.merge_lora) pf::merge_lora_adapters(model);
    }
    generate(model);
  } else if (type == "t5") {
    if (!o.loras.empty()) throw usage_error("--lora applies to Llama models only (" + o.model + " is T5)");
    bool gated = false;
    pf::hf_t5_config(dir, gated);
    if (gated) run_t5<Linear, pf::GeGLUTanh>(o, tokenizer, generation, sampling, ctx);
    else run_t5<Linear, pf::ReLU>(o, tokenizer, generation, sampling, ctx);
  } else {
    throw std::runtime_error(o.model + "/config.json: model_type is \"" + type +
                             "\", expected \"gpt2\", \"llama\" or \"t5\" (the models generate runs)");
  }
}

}  // namespace

int main(int argc, char** argv) {
  pf::kernels::use_single_threaded_backends();  // polyformer threads its own products
  return cli::guarded_main("generate", [&] {
    const Options o = parse(argc, argv);
    try {  // refused before anything is loaded
      sampler_options(o).validate("generate");
    } catch (const pf::config_error& e) {
      throw usage_error(e.what());
    }
    // One model type for every policy that decodes incrementally, chosen at run time: run() is instantiated
    // once per linear policy, not once per (linear, attention) pair.
    const auto attention = [&] {
      try {
        return pf::DynamicIncrementalAttention::parse(o.attention);
      } catch (const pf::config_error& e) {
        throw usage_error(std::string("--attention: ") + e.what());
      }
    }();
    const bool hf = std::filesystem::is_directory(o.model);
    pf::with_linear(o.linear, [&]<typename Linear>(std::type_identity<Linear>) {
      if (hf) run_hf<Linear>(o, attention);
      else run<Linear>(o, attention);
    });
    return 0;
  });
}
