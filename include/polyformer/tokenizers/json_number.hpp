#pragma once
/// \file JSON numbers as the tokenizers library reads them. Its parser, serde_json without the `float_roundtrip`
/// feature, does not round a decimal to the nearest double: it gathers the digits into a u64, converts that to a
/// double (rounding once when it has more than 53 bits) and multiplies or divides by one power of ten (rounding
/// again). A Unigram score such as -9.833489418029785 can so land one ulp from the correctly rounded value, and
/// Viterbi's choice between two segmentations whose scores tie exactly follows that ulp. These functions give the
/// same doubles, and the raw texts of a tokenizer.json's Unigram scores to give them from.

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace polyformer::tokenizers::detail {

/// 10^k, correctly rounded, for k = 0..308.
inline const double* powers_of_ten() {
  static const std::vector<double> table = [] {
    std::vector<double> t(309);
    for (int k = 0; k <= 308; ++k) t[std::size_t(k)] = std::strtod(("1e" + std::to_string(k)).c_str(), nullptr);
    return t;
  }();
  return table.data();
}

/// The double serde_json (default features) reads from the JSON number `text`, or none for text that is not a JSON
/// number or is out of its range.
inline std::optional<double> serde_json_f64(std::string_view text) {
  std::size_t at = 0;
  const auto peek = [&]() -> char { return at < text.size() ? text[at] : '\0'; };
  const auto digit = [&] { return peek() >= '0' && peek() <= '9'; };
  const bool positive = peek() != '-';
  if (!positive) ++at;
  if (!digit()) return std::nullopt;
  constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
  const auto overflows = [&](std::uint64_t s, std::uint64_t d) { return s >= max / 10 && (s > max / 10 || d > max % 10); };
  std::uint64_t significand = 0;
  std::int64_t exponent = 0;  // the value is significand · 10^exponent
  if (peek() == '0') {
    ++at;
    if (digit()) return std::nullopt;  // a leading zero
  } else {
    bool dropping = false;  // from the first digit past the u64 on: dropped, each scaling by ten
    while (digit()) {
      const std::uint64_t d = std::uint64_t(peek() - '0');
      dropping = dropping || overflows(significand, d);
      if (dropping) ++exponent;
      else significand = significand * 10 + d;
      ++at;
    }
  }
  if (peek() == '.') {
    ++at;
    if (!digit()) return std::nullopt;
    bool dropping = false;  // checked afresh: from the first digit past the u64 on, the fraction is ignored
    while (digit()) {
      const std::uint64_t d = std::uint64_t(peek() - '0');
      dropping = dropping || overflows(significand, d);
      if (!dropping) {
        significand = significand * 10 + d;
        --exponent;
      }
      ++at;
    }
  }
  if (peek() == 'e' || peek() == 'E') {
    ++at;
    const bool positive_exponent = peek() != '-';
    if (peek() == '+' || peek() == '-') ++at;
    if (!digit()) return std::nullopt;
    std::int64_t e = 0;
    while (digit()) {
      if (e < 100000) e = e * 10 + (peek() - '0');
      ++at;
    }
    exponent += positive_exponent ? e : -e;
  }
  if (at != text.size()) return std::nullopt;
  const double* pow10 = powers_of_ten();
  double f = static_cast<double>(significand);
  for (;;) {
    const std::int64_t magnitude = exponent < 0 ? -exponent : exponent;
    if (magnitude <= 308) {
      if (exponent >= 0) {
        f *= pow10[magnitude];
        if (f == std::numeric_limits<double>::infinity()) return std::nullopt;
      } else {
        f /= pow10[magnitude];
      }
      break;
    }
    if (f == 0.0) break;
    if (exponent >= 0) return std::nullopt;
    f /= 1e308;
    exponent += 308;
  }
  return positive ? f : -f;
}

/// The raw texts of the scores in a tokenizer.json's model.vocab (its entries [piece, score]), in order; an entry
/// whose score is not a floating-point number (an integer, or missing) gets "". Empty for text that is not JSON.
inline std::vector<std::string> unigram_score_texts(std::string_view json_text) {
  // Follows the path of every value: the SAX events of model → vocab → [i] → [1].
  struct Handler : nlohmann::json_sax<nlohmann::json> {
    struct Level {
      bool array = false;
      std::size_t index = 0;  // the next element's index (arrays)
      std::string key;        // the current key (objects)
    };
    std::vector<Level> path;
    std::vector<std::string> scores;

    /// Whether the value about to be read is model.vocab[i][1].
    bool at_score() const {
      return path.size() == 4 && !path[0].array && path[0].key == "model" && !path[1].array && path[1].key == "vocab" &&
             path[2].array && path[3].array && path[3].index == 1;
    }
    void value() {  // a value (scalar or container) ended: the enclosing array moves to its next element
      if (!path.empty() && path.back().array) ++path.back().index;
    }
    bool begin_container(bool array) {
      if (path.size() == 3 && path[2].array && array && at_vocab()) scores.emplace_back();
      path.push_back({array, 0, {}});
      return true;
    }
    bool at_vocab() const { return path.size() >= 2 && path[0].key == "model" && path[1].key == "vocab"; }
    bool end_container() {
      path.pop_back();
      value();
      return true;
    }
    bool null() override { return value(), true; }
    bool boolean(bool) override { return value(), true; }
    bool number_integer(number_integer_t) override { return value(), true; }
    bool number_unsigned(number_unsigned_t) override { return value(), true; }
    bool number_float(number_float_t, const string_t& s) override {
      if (at_score()) scores.back() = s;
      return value(), true;
    }
    bool string(string_t&) override { return value(), true; }
    bool binary(binary_t&) override { return value(), true; }
    bool start_object(std::size_t) override { return begin_container(false); }
    bool key(string_t& k) override {
      path.back().key = k;
      return true;
    }
    bool end_object() override { return end_container(); }
    bool start_array(std::size_t) override { return begin_container(true); }
    bool end_array() override { return end_container(); }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
  } handler;
  if (!nlohmann::json::sax_parse(json_text, &handler)) return {};
  return handler.scores;
}

}  // namespace polyformer::tokenizers::detail
