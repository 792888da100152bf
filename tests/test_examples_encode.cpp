// The encode program end to end, against tests/hf_bert_reference.py: its pretraining_f16_gamma case (a BERT with a
// pooler and a masked-LM head) carries a vocab.txt and the float64 outputs of two texts as BertTokenizer encodes them
// (the text_* tensors). Embeddings pooled by [CLS], by mean (normalized) and by the pooler, and the fillers of each
// [MASK], must match those outputs, as must a text pair's ([CLS] A [SEP] B [SEP], type ids 0 then 1); bad input
// exits with code 2.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/io/safetensors.hpp"
#include "support.hpp"

#ifdef POLYFORMER_ENCODE
namespace {

const std::string reference_dir = POLYFORMER_HF_BERT_REFERENCE_DIR;
const std::string model_dir = reference_dir + "/pretraining_f16_gamma";
const std::vector<std::string> texts = {"w10 w11 [MASK] w12", "w20 [MASK] w21 w22 [MASK] w23 w24 w99 w100"};

int run(const std::string& args, std::string* out = nullptr, std::string* err = nullptr) {
  return pft::run_program(POLYFORMER_ENCODE, "encode", args, out, err);
}

/// The reference's text outputs: (texts, n) masks and (texts, n, width) tensors.
struct Reference {
  polyformer::io::FloatTensor mask, hidden, pooled, logits;
  long n() const { return long(mask.shape.at(1)); }
  double hidden_at(long text, long t, long c) const { return hidden.data[std::size_t((text * n() + t) * hidden.shape[2] + c)]; }
  double logit(long text, long t, long v) const { return logits.data[std::size_t((text * n() + t) * logits.shape[2] + v)]; }
};

Reference reference() {
  const auto f = polyformer::io::SafetensorsFile::open(reference_dir + "/pretraining_f16_gamma.reference.safetensors");
  return {f.tensor("text_attention_mask"), f.tensor("text_last_hidden_state"), f.tensor("text_pooler_output"),
          f.tensor("text_logits")};
}

/// The program's JSON lines.
std::vector<nlohmann::json> results(const std::string& out) {
  std::vector<nlohmann::json> r;
  for (std::size_t at = 0; at < out.size();) {
    const std::size_t end = out.find('\n', at);
    r.push_back(nlohmann::json::parse(out.substr(at, end - at)));
    at = end + 1;
  }
  return r;
}

std::string text_args() {
  std::string a;
  for (const std::string& t : texts) a += " --text '" + t + "'";
  return a;
}

/// max |got − want| / max |want|.
double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    diff = std::max(diff, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return diff / scale;
}

}  // namespace

TEST_CASE("examples/encode: embeddings equal the reference's pooled states", "[examples][hf][bert]") {
  const Reference ref = reference();
  const long d = long(ref.hidden.shape.at(2));
  for (const std::string setting : {"cls", "mean", "mean --normalize", "pooler"}) {
    INFO("--pool " << setting);
    const std::string pool = setting.substr(0, setting.find(' '));
    const bool normalize = setting.ends_with("--normalize");
    std::string out, err;
    REQUIRE(run("--model " + model_dir + " --pool " + setting + text_args(), &out, &err) == 0);
    const std::vector<nlohmann::json> r = results(out);
    REQUIRE(r.size() == texts.size());
    for (long i = 0; i < long(texts.size()); ++i) {
      CHECK(r[std::size_t(i)]["text"] == texts[std::size_t(i)]);
      std::vector<double> want(std::size_t(d), 0.0);
      if (pool == "cls") {
        for (long c = 0; c < d; ++c) want[std::size_t(c)] = ref.hidden_at(i, 0, c);
      } else if (pool == "pooler") {
        for (long c = 0; c < d; ++c) want[std::size_t(c)] = ref.pooled.data[std::size_t(i * d + c)];
      } else {  // mean over the text's tokens (then length 1)
        double count = 0;
        for (long t = 0; t < ref.n(); ++t) {
          if (ref.mask.data[std::size_t(i * ref.n() + t)] == 0) continue;
          ++count;
          for (long c = 0; c < d; ++c) want[std::size_t(c)] += ref.hidden_at(i, t, c);
        }
        const double norm = std::sqrt(std::inner_product(want.begin(), want.end(), want.begin(), 0.0));
        for (double& x : want) x /= normalize ? norm : count;
        CHECK(count == (i == 0 ? 6 : 11));
      }
      CHECK(relative_error(r[std::size_t(i)]["embedding"].get<std::vector<double>>(), want) < 1e-4);
    }
  }
  // The texts on stdin, one per line, give the same lines as --text.
  std::string with_args, with_stdin;
  REQUIRE(run("--model " + model_dir + text_args(), &with_args) == 0);
  const std::string input = pft::process_temp_path("encode", "texts.txt");
  std::ofstream(input) << texts[0] << "\n" << texts[1] << "\n";
  REQUIRE(run("--model " + model_dir + " --batch 1 < " + input, &with_stdin) == 0);
  CHECK(results(with_stdin) == results(with_args));
}

TEST_CASE("examples/encode: --pair joins two texts as BertTokenizer does, the second of token type 1",
          "[examples][hf][bert]") {
  const auto f = polyformer::io::SafetensorsFile::open(reference_dir + "/pretraining_f16_gamma.reference.safetensors");
  const polyformer::io::FloatTensor hidden = f.tensor("pair_last_hidden_state"), pooled = f.tensor("pair_pooler_output");
  const std::size_t d = hidden.shape.at(1);
  const std::string args = "--model " + model_dir + " --text 'w10 w11 w12' --pair 'w30 w31 w32 w33' --text 'w10 w11 w12'";
  for (const std::string pool : {"cls", "pooler"}) {
    INFO("--pool " << pool);
    std::string out, err;
    REQUIRE(run(args + " --pool " + pool, &out, &err) == 0);
    const std::vector<nlohmann::json> r = results(out);
    REQUIRE(r.size() == 2);
    CHECK(r[0]["pair"] == "w30 w31 w32 w33");
    CHECK_FALSE(r[1].contains("pair"));
    const std::vector<double> want(pool == "cls" ? hidden.data.begin() : pooled.data.begin(),
                                   (pool == "cls" ? hidden.data.begin() : pooled.data.begin()) + std::ptrdiff_t(d));
    CHECK(relative_error(r[0]["embedding"].get<std::vector<double>>(), want) < 1e-4);
    // The text alone is another input: its embedding differs.
    CHECK(relative_error(r[1]["embedding"].get<std::vector<double>>(), want) > 1e-2);
  }
  std::string err;
  CHECK(run("--model " + model_dir + " --pair 'w30'", nullptr, &err) == 2);
  CHECK(err.find("--pair must follow a --text of its own") != std::string::npos);
  CHECK(run("--model " + model_dir + " --text a --pair b --pair c", nullptr, &err) == 2);
  CHECK(err.find("--pair must follow a --text of its own") != std::string::npos);
}

TEST_CASE("examples/encode: --fill-mask gives the reference's likeliest tokens with their probabilities",
          "[examples][hf][bert]") {
  const Reference ref = reference();
  const long vocab = long(ref.logits.shape.at(2));
  std::string out;
  REQUIRE(run("--model " + model_dir + " --fill-mask --top-k 3" + text_args(), &out) == 0);
  const std::vector<nlohmann::json> r = results(out);
  REQUIRE(r.size() == 2);
  const std::vector<std::vector<long>> mask_positions = {{3}, {2, 5}};  // after [CLS]
  for (long i = 0; i < 2; ++i) {
    const nlohmann::json& masks = r[std::size_t(i)]["masks"];
    REQUIRE(masks.size() == mask_positions[std::size_t(i)].size());
    for (std::size_t m = 0; m < masks.size(); ++m) {
      const long t = mask_positions[std::size_t(i)][m];
      CHECK(masks[m]["position"] == t);
      std::vector<double> p(static_cast<std::size_t>(vocab));
      double top = -1e300, sum = 0;
      for (long v = 0; v < vocab; ++v) top = std::max(top, ref.logit(i, t, v));
      for (long v = 0; v < vocab; ++v) sum += p[std::size_t(v)] = std::exp(ref.logit(i, t, v) - top);
      std::vector<long> order(static_cast<std::size_t>(vocab));
      std::iota(order.begin(), order.end(), 0L);
      std::stable_sort(order.begin(), order.end(), [&](long a, long b) { return p[std::size_t(a)] > p[std::size_t(b)]; });
      REQUIRE(masks[m]["fillers"].size() == 3);
      for (std::size_t k = 0; k < 3; ++k) {
        const nlohmann::json& f = masks[m]["fillers"][k];
        INFO("text " << i << " mask " << m << " filler " << k);
        CHECK(f["id"] == order[k]);
        const char* const specials[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
        CHECK(f["token"] == (order[k] < 5 ? std::string(specials[order[k]]) : "w" + std::to_string(order[k])));
        CHECK(std::abs(f["score"].get<double>() - p[std::size_t(order[k])] / sum) < 1e-4);
      }
    }
  }
}

TEST_CASE("examples/encode: bad input exits with code 2 and says why", "[examples][hf][bert][errors]") {
  const auto fails = [](const std::string& args, const std::string& message) {
    INFO(args);
    std::string out, err;
    CHECK(run(args, &out, &err) == 2);
    CHECK_THAT(err, Catch::Contains(message));
  };
  fails("--text hi", "--model is required");
  fails("--model " + model_dir + " --pool max --text hi", "--pool is 'max', expected cls, mean or pooler");
  fails("--model " + model_dir + " --fill-mask --text 'w10 w11'", "text 1 has no [MASK]");
  fails("--model " + model_dir + " --top-k 0 --text hi", "--top-k is 0, expected 1..1000");
  fails("--model " + reference_dir + "/model_f32 --text hi", "has neither tokenizer.json, vocab.txt");
  fails("--model " + reference_dir + "/model_f32 --tokenizer " + model_dir + " --fill-mask --text '[MASK]'",
        "has no masked-LM head");
  fails("--model " + reference_dir + "/masked_lm_bf16_sharded --tokenizer " + model_dir + " --pool pooler --text hi",
        "has no pooler");
  fails("--model /nonexistent --text hi", "/nonexistent");
  std::string long_text;
  for (int i = 0; i < 100; ++i) long_text += "w10 ";
  fails("--model " + model_dir + " --text '" + long_text + "'", "text 1 is 102 tokens, more than the model's 96 positions");
  // A tokenizer with more tokens than the model's embeddings (101).
  const std::string big = pft::process_temp_path("encode", "big_vocab");
  std::filesystem::create_directories(big);
  {
    std::ofstream v(big + "/vocab.txt");
    v << "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";
    for (int i = 5; i < 150; ++i) v << 'w' << i << '\n';
  }
  fails("--model " + model_dir + " --tokenizer " + big + " --text hi", "the tokenizer has 150 tokens, the model 101");
  std::filesystem::remove_all(big);
}
#endif
