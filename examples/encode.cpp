// encode: sentence embeddings, or the likeliest fillers of [MASK], from a Hugging Face BERT directory (config.json,
// safetensors weights, tokenizer.json or vocab.txt). The texts are the --text arguments, else the lines of stdin;
// they are encoded as BertTokenizer does ([CLS] … [SEP]) and run through the model in padded batches.
//   encode --model bert-dir --text "A sentence." --pool mean --normalize
//       → {"text":"A sentence.","embedding":[0.0123,…]}
//   encode --model bert-dir --text "Who wrote it?" --pair "Ann wrote it." --pool cls   (a sentence pair)
//   encode --model bert-dir --text "Paris is the [MASK] of France." --fill-mask --top-k 3
//       → {"text":"…","masks":[{"position":5,"fillers":[{"id":3007,"token":"capital","score":0.97},…]}]}
// One JSON object per text and line on stdout. Bad options, files and input exit with code 2 and one line on stderr.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "polyformer/models/hf_bert.hpp"
#include "polyformer/tokenizers/tokenizer.hpp"

namespace {

namespace pf = polyformer;
using cli::usage_error;

const char* const usage =
    "usage: encode --model BERT_DIR [--tokenizer FILE_OR_DIR] [--text TEXT [--pair TEXT]]... [--pool cls|mean|pooler]\n"
    "              [--normalize] [--fill-mask [--top-k K]] [--batch N] [--threads T]\n"
    "  texts: each --text, else each line of stdin; [CLS] and [SEP] are added as the tokenizer says\n"
    "  --pair: a second text for the --text before it, joined as the tokenizer joins pairs ([CLS] A [SEP] B [SEP]),\n"
    "    its tokens of type 1 (BERT's token_type_ids)\n"
    "  embeddings (default): --pool mean (over the text's tokens, the default), cls (the [CLS] token's final\n"
    "    state) or pooler (BERT's tanh pooler, when the model has one); --normalize scales each to length 1\n"
    "  --fill-mask: for each [MASK], the K (5) likeliest tokens of the masked-LM head with their probabilities\n";

struct Options {
  std::string model, tokenizer, pool = "mean";
  std::vector<std::string> texts;
  std::vector<std::string> pairs;  // the second text of each --text, empty when it has none
  bool normalize = false, fill_mask = false;
  long long top_k = 5, batch = 16, threads = 1;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&] { return cli::value_after(argc, argv, i); };
    if (a == "--model") o.model = value();
    else if (a == "--tokenizer") o.tokenizer = value();
    else if (a == "--text") o.texts.push_back(value()), o.pairs.emplace_back();
    else if (a == "--pair") {
      if (o.texts.empty() || !o.pairs.back().empty()) throw usage_error("--pair must follow a --text of its own");
      o.pairs.back() = value();
      if (o.pairs.back().empty()) throw usage_error("--pair is empty, expected a second text");
    }
    else if (a == "--pool") o.pool = value();
    else if (a == "--normalize") o.normalize = true;
    else if (a == "--fill-mask") o.fill_mask = true;
    else if (a == "--top-k") o.top_k = cli::parse_number<long long>(a, value());
    else if (a == "--batch") o.batch = cli::parse_number<long long>(a, value());
    else if (a == "--threads") o.threads = cli::parse_number<long long>(a, value());
    else if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    } else {
      throw usage_error("unknown option '" + a + "'");
    }
  }
  if (o.model.empty()) throw usage_error("--model is required");
  if (o.pool != "mean" && o.pool != "cls" && o.pool != "pooler")
    throw usage_error("--pool is '" + o.pool + "', expected cls, mean or pooler");
  if (o.top_k < 1 || o.top_k > 1000) throw usage_error("--top-k is " + std::to_string(o.top_k) + ", expected 1..1000");
  if (o.batch < 1 || o.batch > 4096) throw usage_error("--batch is " + std::to_string(o.batch) + ", expected 1..4096");
  if (o.threads < 1 || o.threads > 1024) throw usage_error("--threads is " + std::to_string(o.threads) + ", expected 1..1024");
  return o;
}

/// The JSON of one text's result: its embedding, or each [MASK]'s likeliest fillers.
template <typename Model>
nlohmann::json result_of(const Options& o, const pf::tokenizers::Tokenizer& tokenizer, const Model& model,
                         const typename Model::Output& out, const std::vector<int>& ids, pf::Index row0, pf::Index b,
                         const std::string& text, const std::string& pair, int mask_id) {
  const pf::Index n = static_cast<pf::Index>(ids.size()), d = model.config().dim;
  nlohmann::json j = {{"text", text}};
  if (!pair.empty()) j["pair"] = pair;
  if (o.fill_mask) {
    nlohmann::json masks = nlohmann::json::array();
    const pf::Index vocab = out.logits.cols();
    for (pf::Index t = 0; t < n; ++t) {
      if (ids[std::size_t(t)] != mask_id) continue;
      const float* logits = out.logits.data() + (row0 + t) * vocab;
      const float top = *std::max_element(logits, logits + vocab);
      double sum = 0;
      for (pf::Index v = 0; v < vocab; ++v) sum += std::exp(double(logits[v]) - top);
      std::vector<int> order(static_cast<std::size_t>(vocab));
      std::iota(order.begin(), order.end(), 0);
      const auto k = static_cast<std::ptrdiff_t>(std::min<long long>(o.top_k, vocab));
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int x, int y) { return logits[x] > logits[y] || (logits[x] == logits[y] && x < y); });
      nlohmann::json fillers = nlohmann::json::array();
      for (std::ptrdiff_t r = 0; r < k; ++r) {
        const int id = order[std::size_t(r)];
        const std::vector<int> one{id};
        fillers.push_back({{"id", id}, {"token", tokenizer.decode(one)},
                           {"score", std::exp(double(logits[id]) - top) / sum}});
      }
      masks.push_back({{"position", t}, {"fillers", fillers}});
    }
    j["masks"] = masks;
    return j;
  }
  std::vector<double> e(static_cast<std::size_t>(d), 0.0);
  if (o.pool == "pooler") {
    for (pf::Index c = 0; c < d; ++c) e[std::size_t(c)] = out.pooler_output(b, c);
  } else if (o.pool == "cls") {
    for (pf::Index c = 0; c < d; ++c) e[std::size_t(c)] = out.last_hidden_state(row0, c);
  } else {  // mean over the text's own tokens ([CLS] and [SEP] included, padding not), as sentence-transformers
    for (pf::Index t = 0; t < n; ++t)
      for (pf::Index c = 0; c < d; ++c) e[std::size_t(c)] += out.last_hidden_state(row0 + t, c);
    for (double& x : e) x /= double(n);
  }
  if (o.normalize) {
    const double norm = std::sqrt(std::inner_product(e.begin(), e.end(), e.begin(), 0.0));
    if (norm > 0)
      for (double& x : e) x /= norm;
  }
  j["embedding"] = e;
  return j;
}

void run(const Options& o) {
  const auto model = pf::load_hf_bert(o.model);
  const auto tokenizer = pf::tokenizers::Tokenizer::open(o.tokenizer.empty() ? o.model : o.tokenizer);
  const pf::BertConfig& c = model.config();
  if (static_cast<pf::Index>(tokenizer.vocab_size()) > c.vocab_size)
    throw std::runtime_error("the tokenizer has " + std::to_string(tokenizer.vocab_size()) + " tokens, the model " +
                             std::to_string(c.vocab_size));
  if (o.fill_mask && !model.has_mlm_head())
    throw std::runtime_error(o.model + " has no masked-LM head (cls.predictions): --fill-mask needs BertForMaskedLM");
  if (o.pool == "pooler" && !o.fill_mask && !model.has_pooler())
    throw std::runtime_error(o.model + " has no pooler (pooler.dense): use --pool cls or mean");
  // BERT's mask token, or RoBERTa's.
  const int mask_id = tokenizer.token_to_id("[MASK]") >= 0 ? tokenizer.token_to_id("[MASK]") : tokenizer.token_to_id("<mask>");
  if (o.fill_mask && mask_id < 0) throw std::runtime_error("the tokenizer has no [MASK] (or <mask>) token");

  std::vector<std::string> texts = o.texts, pairs = o.pairs;
  if (texts.empty())
    for (std::string line; std::getline(std::cin, line);) texts.push_back(line), pairs.emplace_back();
  const pf::Context ctx{static_cast<int>(o.threads)};
  for (std::size_t first = 0; first < texts.size(); first += std::size_t(o.batch)) {
    const std::size_t count = std::min(texts.size() - first, std::size_t(o.batch));
    std::vector<std::vector<int>> encoded(count), types(count);
    std::size_t longest = 1;
    for (std::size_t i = 0; i < count; ++i) {
      pf::tokenizers::Encoding e = pairs[first + i].empty() ? tokenizer.encode_with_type_ids(texts[first + i])
                                                            : tokenizer.encode_pair(texts[first + i], pairs[first + i]);
      encoded[i] = std::move(e.ids);
      types[i] = std::move(e.type_ids);  // Bert::forward refuses a type past the model's type_vocab_size
      if (static_cast<pf::Index>(encoded[i].size()) > c.max_sequence())
        throw std::runtime_error("text " + std::to_string(first + i + 1) + " is " + std::to_string(encoded[i].size()) +
                                 " tokens, more than the model's " + std::to_string(c.max_sequence()) +
                                 " positions");
      if (o.fill_mask && std::find(encoded[i].begin(), encoded[i].end(), mask_id) == encoded[i].end())
        throw std::runtime_error("text " + std::to_string(first + i + 1) + " has no [MASK]");
      longest = std::max(longest, encoded[i].size());
    }
    std::vector<int> ids(count * longest, 0), mask(count * longest, 0), type_ids(count * longest, 0);
    for (std::size_t i = 0; i < count; ++i)
      for (std::size_t t = 0; t < encoded[i].size(); ++t) {
        ids[i * longest + t] = encoded[i][t];
        mask[i * longest + t] = 1;
        type_ids[i * longest + t] = types[i][t];
      }
    pf::BertInputs inputs;
    inputs.input_ids = ids;
    inputs.batch = static_cast<pf::Index>(count);
    inputs.attention_mask = mask;
    inputs.token_type_ids = type_ids;
    const auto out = model.forward(inputs, ctx);
    for (std::size_t i = 0; i < count; ++i) {
      const nlohmann::json j = result_of(o, tokenizer, model, out, encoded[i], pf::Index(i * longest), pf::Index(i),
                                         texts[first + i], pairs[first + i], mask_id);
      std::fputs((j.dump() + "\n").c_str(), stdout);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  return cli::guarded_main("encode", [&] {
    run(parse(argc, argv));
    return 0;
  });
}
