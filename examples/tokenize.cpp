// tokenize: a Hugging Face tokenizer on the command line. Reads text lines on stdin and prints each line's ids as
// one JSON array; with --decode, reads JSON arrays of ids and prints each one's text on a line.
//   echo "Hello world" | tokenize --tokenizer gpt2-dir            → [15496,995]
//   echo "[15496,995]" | tokenize --tokenizer gpt2-dir --decode   → Hello world
//   echo '["Who?", "Ann."]' | tokenize --tokenizer bert-dir --pairs  → {"ids":[2,…,3,…,3],"type_ids":[0,…,0,1,…,1]}
// Bad options, files and input exit with code 2 and one line on stderr.

#include <cstdio>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "polyformer/tokenizers/tokenizer.hpp"

namespace {

namespace pt = polyformer::tokenizers;
using cli::usage_error;

const char* const usage =
    "usage: tokenize --tokenizer FILE_OR_DIR [--no-special] [--type-ids | --pairs] [--decode [--skip-special]]\n"
    "  FILE_OR_DIR  a tokenizer.json, a vocab.txt (BERT), a vocab.json (GPT-2, merges.txt beside it), or a\n"
    "               directory holding one of them (searched in that order)\n"
    "  encoding: one line of text in, one JSON array of ids out; --no-special leaves out the special tokens the\n"
    "            tokenizer's post-processor adds\n"
    "  --type-ids: prints {\"ids\": […], \"type_ids\": […]} instead (the type id of each id)\n"
    "  --pairs: each line is a JSON array of two texts, encoded as a pair (BERT: [CLS] A [SEP] B [SEP]); prints ids\n"
    "           and type ids as --type-ids does\n"
    "  --decode: one JSON array of ids in, one line of text out; --skip-special drops special tokens\n";

struct Options {
  std::string tokenizer;
  bool special = true, decode = false, skip_special = false, type_ids = false, pairs = false;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tokenizer") {
      if (i + 1 >= argc) throw usage_error("--tokenizer needs a value");
      o.tokenizer = argv[++i];
    } else if (a == "--no-special") {
      o.special = false;
    } else if (a == "--type-ids") {
      o.type_ids = true;
    } else if (a == "--pairs") {
      o.pairs = true;
    } else if (a == "--decode") {
      o.decode = true;
    } else if (a == "--skip-special") {
      o.skip_special = true;
    } else if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    } else {
      throw usage_error("unknown option '" + a + "'");
    }
  }
  if (o.tokenizer.empty()) throw usage_error("--tokenizer is required");
  if (o.skip_special && !o.decode) throw usage_error("--skip-special needs --decode");
  if (!o.special && o.decode) throw usage_error("--no-special is for encoding, not --decode");
  if ((o.type_ids || o.pairs) && o.decode) throw usage_error("--type-ids and --pairs are for encoding, not --decode");
  if (o.type_ids && o.pairs) throw usage_error("--pairs prints type ids already: give one of --type-ids and --pairs");
  return o;
}

/// Line `number` of the input as ids: a JSON array of integers.
std::vector<int> parse_ids(const std::string& line, std::size_t number) {
  const auto where = [&] { return "line " + std::to_string(number) + ": "; };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception&) {
    throw std::runtime_error(where() + "not valid JSON, expected an array of ids such as [15496,995]");
  }
  if (!j.is_array()) throw std::runtime_error(where() + "expected an array of ids, found " + std::string(j.type_name()));
  std::vector<int> ids;
  for (const auto& v : j) {
    if (!v.is_number_integer() || v.get<long long>() < 0 || v.get<long long>() > 0x7fffffff)
      throw std::runtime_error(where() + "the id " + v.dump() + " is not an integer 0..2147483647");
    ids.push_back(v.get<int>());
  }
  return ids;
}

/// A line of the input as a pair of texts: a JSON array of two strings.
std::pair<std::string, std::string> parse_pair(const std::string& line) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception&) {
    throw std::runtime_error("not valid JSON, expected an array of two texts such as [\"Who?\", \"Ann.\"]");
  }
  if (!j.is_array() || j.size() != 2 || !j[0].is_string() || !j[1].is_string())
    throw std::runtime_error("expected an array of two texts, found " + (j.dump().size() > 60 ? j.dump().substr(0, 57) + "..." : j.dump()));
  return {j[0].get<std::string>(), j[1].get<std::string>()};
}

}  // namespace

int main(int argc, char** argv) {
  return cli::guarded_main("tokenize", [&] {
    const Options o = parse(argc, argv);
    const pt::Tokenizer tokenizer = pt::Tokenizer::open(o.tokenizer);
    std::string line;
    for (std::size_t number = 1; std::getline(std::cin, line); ++number) {
      const std::vector<int> ids = o.decode ? parse_ids(line, number) : std::vector<int>();
      try {
        if (o.decode) {
          std::cout << tokenizer.decode(ids, o.skip_special) << '\n';
        } else if (o.pairs || o.type_ids) {
          pt::Encoding e;
          if (o.pairs) {
            const auto [a, b] = parse_pair(line);
            e = tokenizer.encode_pair(a, b, o.special);
          } else {
            e = tokenizer.encode_with_type_ids(line, o.special);
          }
          std::cout << nlohmann::json{{"ids", e.ids}, {"type_ids", e.type_ids}}.dump() << '\n';
        } else {
          std::cout << nlohmann::json(tokenizer.encode(line, o.special)).dump() << '\n';
        }
      } catch (const std::exception& e) {
        throw std::runtime_error("line " + std::to_string(number) + ": " + e.what());
      }
    }
    std::cout.flush();
    if (!std::cout) throw std::runtime_error("cannot write the output");
    return 0;
  });
}
