// The attention registry (attention/registry.hpp, attention/spelling.hpp): every built-in spelling reads back,
// options outside the spelling reach the policy that reads them, bad spellings say what was expected, and the
// IncrementalAttention concept decides which policies decode incrementally. Then two policies defined here, in
// this test only, join the registry by appending them to the list: they are parsed, listed in the usage text,
// run inside an EncoderLayer, and filtered for incremental decoding by the concept.

#include <catch2/catch.hpp>

#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "polyformer/polyformer.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

/// A test policy: softmax attention with its scores divided by a temperature T, or multiplied by T when the
/// option "sharpen" is set; exact and incremental through FullAttention and its KV cache. Spelled "tempered:T".
class Tempered {
 public:
  using Workspace = pf::FullAttention::Workspace;
  using State = pf::FullAttention::State;
  static constexpr bool supports_causal = true;
  static constexpr const char* name = "tempered";

  static constexpr std::string_view spelling_form = "tempered:T";
  static constexpr std::string_view example_spelling = "tempered:2";
  /// Options: "sharpen" (a flag, false by default).
  static Tempered from_spelling(const pf::AttentionSpelling& spelling, const pf::AttentionOptions& options) {
    return Tempered(spelling.positive(0), options.flag("sharpen", false));
  }
  std::string spelling() const { return "tempered:" + std::to_string(temperature_); }

  Tempered() = default;
  Tempered(Index temperature, bool sharpen) : temperature_(temperature), sharpen_(sharpen) {}
  Index temperature() const noexcept { return temperature_; }
  bool sharpen() const noexcept { return sharpen_; }

  void forward(const pf::AttentionShape& s, pf::ConstMatrixView q, pf::ConstMatrixView k, pf::ConstMatrixView v,
               const pf::AttentionMask& mask, pf::MatrixView out, Workspace& ws, const pf::Context& ctx) const {
    full_.forward(tempered(s), q, k, v, mask, out, ws, ctx);
  }
  State make_state(Index capacity, Index n_kv_heads, Index head_dim) const {
    return full_.make_state(capacity, n_kv_heads, head_dim);
  }
  void forward_cached(const pf::AttentionShape& s, pf::ConstMatrixView q, pf::ConstMatrixView k_new,
                      pf::ConstMatrixView v_new, State& state, pf::MatrixView out, Workspace& ws,
                      const pf::Context& ctx) const {
    full_.forward_cached(tempered(s), q, k_new, v_new, state, out, ws, ctx);
  }

 private:
  pf::AttentionShape tempered(pf::AttentionShape s) const {
    const float t = static_cast<float>(temperature_);
    s.scale = sharpen_ ? s.scale * t : s.scale / t;
    return s;
  }

  Index temperature_ = 1;
  bool sharpen_ = false;
  pf::FullAttention full_;
};

/// A test policy that cannot decode incrementally (no State): every query's output is the first key's value.
/// Spelled "first".
class FirstValue {
 public:
  struct Workspace {};
  static constexpr bool supports_causal = true;  // key 0 is visible to every query
  static constexpr const char* name = "first";

  static constexpr std::string_view spelling_form = "first";
  static constexpr std::string_view example_spelling = "first";
  /// Reads no options.
  static FirstValue from_spelling(const pf::AttentionSpelling&, const pf::AttentionOptions&) { return {}; }
  std::string spelling() const { return name; }

  /// out (n_q, heads·d): row i, head h is v's row 0 of h's kv head.
  void forward(const pf::AttentionShape& s, pf::ConstMatrixView, pf::ConstMatrixView, pf::ConstMatrixView v,
               const pf::AttentionMask&, pf::MatrixView out, Workspace&, const pf::Context&) const {
    for (Index i = 0; i < out.rows(); ++i)
      for (Index h = 0; h < s.n_heads; ++h)
        out.block(i, h * s.head_dim, 1, s.head_dim) = v.block(0, s.kv_head(h) * s.head_dim, 1, s.head_dim);
  }
};

static_assert(pf::SpelledAttention<Tempered> && pf::IncrementalAttention<Tempered>);
static_assert(pf::SpelledAttention<FirstValue> && !pf::IncrementalAttention<FirstValue>);

/// The built-in policies and the two of this test.
using TestPolicies = pf::AttentionPolicies::append<Tempered, FirstValue>;

constexpr Index d = 16, heads = 4, hidden = 32;

pf::Dense dense(Index in, Index out, unsigned seed) {
  return pf::Dense(pft::random_matrix(out, in, seed, 0.3f), pft::random_matrix(out, 1, seed + 50, 0.1f).col(0));
}

template <typename Attn>
pf::EncoderLayer<Attn> encoder_layer(const Attn& policy, unsigned seed) {
  using L = pf::EncoderLayer<Attn>;
  typename L::Attention attention(dense(d, d, seed), dense(d, d, seed + 1), dense(d, d, seed + 2),
                                  dense(d, d, seed + 3), pf::HeadConfig{heads}, policy);
  return L(std::move(attention), typename L::FFN(dense(d, hidden, seed + 4), dense(hidden, d, seed + 5)),
           pf::LayerNorm(d), pf::LayerNorm(d));
}

/// The name of a policy's type, whatever the policy.
const auto type_name = [](const auto& policy) { return std::string(std::decay_t<decltype(policy)>::name); };

}  // namespace

TEST_CASE("Every built-in spelling reads back", "[attention][registry]") {
  pf::AttentionOptions options;
  options.set("n_max", 300);  // Linformer's projections
  pf::for_each_attention_policy([&]<typename P>(std::type_identity<P>) {
    INFO(P::example_spelling);
    CHECK(pf::parse_attention_as<P>(P::example_spelling, options).spelling() == P::example_spelling);
    CHECK(pf::with_attention(P::example_spelling, options, [](const auto& policy) {
      return std::is_same_v<std::decay_t<decltype(policy)>, P>;
    }));
  });
  for (const std::string s : {"full", "sliding:1", "sliding:7", "blockwise:3", "lsh:1:1", "lsh:2:16", "linformer:32",
                              "performer:17", "linear"}) {
    INFO(s);
    CHECK(pf::with_attention(s, options, [](const auto& policy) { return policy.spelling(); }) == s);
  }
  CHECK(pf::parse_attention_as<pf::SlidingWindow>("sliding:7").window() == 7);
  CHECK(pf::parse_attention_as<pf::Blockwise>("blockwise:3").block_size() == 3);
  const auto lsh = pf::parse_attention_as<pf::LSHAttention>("lsh:2:16").options();
  CHECK((lsh.n_hashes == 2 && lsh.chunk == 16));
  const auto linformer = pf::parse_attention_as<pf::Linformer>("linformer:32", options);
  CHECK((linformer.k() == 32 && linformer.n_max() == 300));
  CHECK(pf::parse_attention_as<pf::Performer>("performer:17").feature_map().features(8) == 17);
  CHECK(std::holds_alternative<pf::LinearAttention>(pf::parse_attention("linear")));
}

TEST_CASE("Options outside the spelling reach the policies that read them", "[attention][registry]") {
  pf::AttentionOptions options;
  options.set("dilation", 2).set("global_positions", std::vector<Index>{5, 0}).set("previous_block", true);
  options.set("seed", 9).set("n_max", 50);
  const auto sliding = pf::parse_attention_as<pf::SlidingWindow>("sliding:4", options);
  CHECK(sliding.dilation(0) == 2);
  CHECK(sliding.global_positions() == std::vector<Index>{0, 5});
  CHECK(options.was_read("dilation"));
  CHECK_FALSE(options.was_read("previous_block"));
  CHECK(pf::parse_attention_as<pf::Blockwise>("blockwise:8", options).previous_block());
  CHECK(options.was_read("previous_block"));
  CHECK(pf::parse_attention_as<pf::LSHAttention>("lsh:2:8", options).options().seed == 9);
  CHECK(pf::parse_attention_as<pf::Performer>("performer:8", options).feature_map().seed() == 9);
  CHECK(pf::parse_attention_as<pf::Linformer>("linformer:4", options).n_max() == 50);
  // Unset options take the policy's defaults.
  CHECK_FALSE(pf::parse_attention_as<pf::Blockwise>("blockwise:8").previous_block());
  CHECK(pf::parse_attention_as<pf::SlidingWindow>("sliding:8").dilation(0) == 1);

  // Which options a policy read: full reads none, so a program can say --dilation does not apply to it.
  pf::AttentionOptions dilation;
  dilation.set("dilation", 3);
  pf::parse_attention("full", dilation);
  CHECK_FALSE(dilation.was_read("dilation"));
  pf::parse_attention("sliding:2", dilation);
  CHECK(dilation.was_read("dilation"));
  dilation.set("dilation", 4);  // set again: not read since
  CHECK_FALSE(dilation.was_read("dilation"));

  // A value of the wrong kind, and one the policy refuses.
  pf::AttentionOptions wrong;
  wrong.set("dilation", true);
  CHECK_THROWS_WITH(pf::parse_attention("sliding:4", wrong),
                    Catch::Contains("AttentionOptions: option 'dilation' is a flag, expected an integer"));
  wrong.set("dilation", 0);
  CHECK_THROWS_WITH(pf::parse_attention("sliding:4", wrong), Catch::Contains("dilation 0, expected >= 1"));
  wrong.set("global_positions", 3);
  CHECK_THROWS_WITH(pf::parse_attention("sliding:4", wrong),
                    Catch::Contains("option 'global_positions' is an integer, expected a list of integers"));
}

TEST_CASE("Bad spellings say what was expected", "[attention][registry][errors]") {
  const auto fails = [](const std::string& spelling, const std::string& message) {
    INFO(spelling);
    CHECK_THROWS_AS(pf::parse_attention(spelling), pf::config_error);
    CHECK_THROWS_WITH(pf::parse_attention(spelling), Catch::Contains(message));
  };
  // Unknown names: the message lists every form.
  fails("dense", "parse_attention: unknown policy 'dense', expected full, sliding:W, blockwise:B, lsh:HASHES:CHUNK, "
                 "linformer:K, performer:M or linear");
  fails("", "unknown policy ''");
  fails("Full", "unknown policy 'Full'");
  // Wrong arity.
  fails("sliding", "AttentionSpelling: 'sliding' has 0 arguments, expected sliding:W");
  fails("lsh:4", "'lsh:4' has 1 argument, expected lsh:HASHES:CHUNK");
  fails("blockwise:8:2", "'blockwise:8:2' has 2 arguments, expected blockwise:B");
  fails("full:1", "expected full");
  fails("linear:", "expected linear");
  // Not numbers.
  fails("performer:x", "AttentionSpelling: 'performer:x': M is 'x', expected an integer >= 1");
  fails("lsh:4:six", "CHUNK is 'six'");
  fails("blockwise:", "B is '', expected an integer >= 1");
  fails("sliding:1.5", "W is '1.5'");
  fails("sliding: 8", "W is ' 8'");
  fails("linformer:99999999999999999999", "K is '99999999999999999999'");
  // Zero and negative.
  fails("sliding:0", "W is '0', expected an integer >= 1");
  fails("lsh:0:64", "HASHES is '0'");
  fails("blockwise:-2", "B is '-2'");
  // Linformer's random projections need their length.
  fails("linformer:8", "Linformer::from_spelling: 'linformer:8' needs n_max >= 1");
  // A spelling of another policy.
  CHECK_THROWS_WITH(pf::parse_attention_as<pf::SlidingWindow>("blockwise:8"),
                    Catch::Contains("'blockwise:8' is not a spelling of sliding:W"));
}

TEST_CASE("IncrementalAttention decides which policies decode incrementally", "[attention][registry]") {
  std::string incremental = "|";  // appended, not "|" + string: g++ 12 warns falsely (-Wrestrict) on the latter
  incremental.append(pf::attention_usage<pf::AttentionPolicies, true>()).append("|");
  pf::AttentionOptions options;
  options.set("n_max", 300);
  pf::for_each_attention_policy([&]<typename P>(std::type_identity<P>) {
    INFO(P::name);
    std::string entry = "|";
    entry.append(P::spelling_form).append("|");
    const bool listed = incremental.find(entry) != std::string::npos;
    CHECK(listed == pf::IncrementalAttention<P>);
    if constexpr (pf::IncrementalAttention<P>) {
      CHECK(pf::with_attention<pf::AttentionPolicies, true>(P::example_spelling, options, type_name) == P::name);
    } else {
      CHECK_THROWS_WITH((pf::with_attention<pf::AttentionPolicies, true>(P::example_spelling, options, type_name)),
                        Catch::Contains("decode incrementally, expected full, sliding:W, blockwise:B, performer:M or linear"));
    }
  });
  CHECK(pf::attention_usage() == "full|sliding:W|blockwise:B|lsh:HASHES:CHUNK|linformer:K|performer:M|linear");
  CHECK(pf::attention_usage<pf::AttentionPolicies, true>() == "full|sliding:W|blockwise:B|performer:M|linear");
  CHECK(pf::attention_usage<pf::AttentionPolicies, true>(", ") == "full, sliding:W, blockwise:B, performer:M, linear");
}

TEST_CASE("A policy defined in a test joins the registry by appending it to the list", "[attention][registry]") {
  // The usage texts list the appended policies after the built-in ones; only Tempered decodes incrementally.
  CHECK(pf::attention_usage<TestPolicies>() == pf::attention_usage() + "|tempered:T|first");
  CHECK(pf::attention_usage<TestPolicies, true>() ==
        pf::attention_usage<pf::AttentionPolicies, true>() + "|tempered:T");

  // Parsed by its own from_spelling, with the options it reads.
  const auto parsed = pf::parse_attention<TestPolicies>("tempered:3");
  REQUIRE(std::holds_alternative<Tempered>(parsed));
  CHECK(std::get<Tempered>(parsed).temperature() == 3);
  CHECK(std::get<Tempered>(parsed).spelling() == "tempered:3");
  CHECK_FALSE(std::get<Tempered>(parsed).sharpen());
  pf::AttentionOptions sharpen;
  sharpen.set("sharpen", true);
  CHECK(std::get<Tempered>(pf::parse_attention<TestPolicies>("tempered:3", sharpen)).sharpen());
  CHECK(pf::with_attention<TestPolicies>("first", {}, type_name) == "first");
  CHECK(pf::with_attention<TestPolicies>("lsh:4:64", {}, type_name) == "lsh");  // the built-ins still there

  // Its errors come from the same helpers; the built-in list does not know it.
  CHECK_THROWS_WITH(pf::parse_attention<TestPolicies>("tempered"), Catch::Contains("expected tempered:T"));
  CHECK_THROWS_WITH(pf::parse_attention<TestPolicies>("tempered:0"), Catch::Contains("T is '0'"));
  CHECK_THROWS_WITH(pf::parse_attention<TestPolicies>("bogus"),
                    Catch::Contains("performer:M, linear, tempered:T or first"));
  CHECK_THROWS_WITH(pf::parse_attention("tempered:3"), Catch::Contains("unknown policy 'tempered:3'"));

  // Incremental decoding follows the concept: Tempered has a State and forward_cached, FirstValue has not.
  CHECK(pf::with_attention<TestPolicies, true>("tempered:2", {}, type_name) == "tempered");
  CHECK_THROWS_WITH((pf::with_attention<TestPolicies, true>("first", {}, type_name)),
                    Catch::Contains("'first' cannot decode incrementally, expected full, sliding:W, blockwise:B, "
                                    "performer:M, linear or tempered:T"));
}

TEST_CASE("An EncoderLayer over a policy of the test, chosen by its spelling", "[attention][registry][blocks]") {
  const Index n = 12;
  const Matrix x = pft::random_matrix(2 * n, d, 3);
  pf::AttentionOptions options;
  options.set("n_max", n);
  // The callable is instantiated for every policy of the list (an EncoderLayer of each); the spelled one runs.
  const auto layer_output = [&](std::string_view spelling) {
    return pf::with_attention<TestPolicies>(spelling, options, [&](const auto& policy) {
      return encoder_layer(policy, 1).forward(x, 2, pf::MaskSpec{}, pf::Context{1});
    });
  };
  const Matrix full = layer_output("full");
  REQUIRE(full.allFinite());
  CHECK(pft::max_abs_diff(layer_output("tempered:1"), full) < 1e-5);  // temperature 1: softmax attention
  const Matrix hot = layer_output("tempered:4");
  CHECK(hot.allFinite());
  CHECK(pft::max_abs_diff(hot, full) > 1e-3);
  CHECK(layer_output("first").allFinite());
  for (const char* spelling : {"sliding:3", "lsh:2:4", "linformer:4", "performer:8", "linear"})
    CHECK(layer_output(spelling).allFinite());

  // Tempered decodes incrementally: two steps over its cache give the causal forward's rows.
  const Tempered policy(3, false);
  pf::AttentionShape shape{heads, heads, d / heads, 1.0f};
  const Matrix q = pft::random_matrix(n, d, 4), k = pft::random_matrix(n, d, 5), v = pft::random_matrix(n, d, 6);
  Matrix causal(n, d), cached(n, d);
  Tempered::Workspace ws;
  pf::AttentionMask mask;
  mask.causal = true;
  policy.forward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(causal), ws, pf::Context{1});
  auto state = policy.make_state(n, heads, d / heads);
  for (const auto& [first, rows] : {std::pair<Index, Index>{0, 5}, {5, n - 5}}) {
    const auto rows_of = [&](const Matrix& m) { return pf::block(pf::cview(m), first, 0, rows, d); };
    policy.forward_cached(shape, rows_of(q), rows_of(k), rows_of(v), state,
                          pf::block(pf::view(cached), first, 0, rows, d), ws, pf::Context{1});
  }
  CHECK(state.size() == n);
  CHECK(pft::max_abs_diff(cached, causal) < 1e-5);
}
