// attention_zoo: polyformer's attention policies side by side. With no arguments every policy runs on the same
// seeded synthetic q, k, v with the structure of real attention (n 4096, d 64, 12 heads, 1 thread; described
// below) and a table shows, per policy, its time, its peak memory and its error relative to the output's scale,
// rel_error = ‖out − out_full‖_F / ‖out_full‖_F, where out_full is FullAttention (exact) on the same inputs and
// mask: 0.01 is a close approximation, 1 is as far off as the output is large. With --inputs it runs one policy
// on your tensors.
//
// The table's input: local-plus-global attention, seed 20240607. Per head h (of H) with ℓ_h = 8·4^(h/(H−1))
// (8 to 32 positions; 8 when H = 1), the head's d columns hold
//   - column 0, the global channel: √(γ·√d) in every query and in the keys of the global tokens (positions
//     0, n/4, n/2, 3n/4), 0 in the other keys;
//   - F = ⌊(d − 1)/2⌋ sinusoidal pairs (a·cos ω_f·i, a·sin ω_f·i), the same in q_i and k_i except that a global
//     token's key has none, with ω_f geometric from 1/ℓ_h down to 1/(4·ℓ_h) and a² = β·√d/F;
//   - the last column when d is even: noise only;
// so the logit q_i·k_j/√d is β·mean_f cos ω_f·(i − j) for an ordinary key — β = 12 at j = i, falling with
// |i − j| over ≈ ℓ_h positions, at most ≈ 3.4 beyond 4·ℓ_h (d = 64) — and γ = 11 for a global token's key,
// wherever it is. Every entry of q and k then gets N(0, 0.2²) noise (logits ± ≈ 0.5). Values: in every column
// a stationary AR(1) sequence over the positions, correlation e^(−|i−j|/32), mean 0, variance 1, so exact
// attention's output keeps about the values' scale and an approximation that spreads its weight over the whole
// sequence (whose values average to ≈ 0) shows an error near 1. The table's header gives exact attention's
// weight shares on 64 sampled queries a head (within ±4·ℓ_h, on the global tokens, elsewhere) and its output's
// RMS. Locality needs d ≳ 32: with few frequencies the positional logit recurs far away, as the shares then
// show. The row sliding:128+global is sliding:128 given the input's global tokens (--global 0,1024,2048,3072
// at n 4096); it is added when the table has every policy and --global is not given.
//
//   attention_zoo [--policy P] [--n N] [--d D] [--heads H] [--causal] [--json] [--threads T]
//   attention_zoo --policy P --inputs F.safetensors --out O.safetensors [--causal] [--dilation D]
//                 [--global i,j,...] [--prev-block] [--threads T]
//
// P is the spelling of a policy of polyformer's registry (attention/registry.hpp; --help lists the forms: full,
// sliding:W, lsh:HASHES:CHUNK, …). Without --policy the table has every registered policy at its example
// spelling (full, sliding:128, lsh:4:64, …).
// --json prints one JSON object per line instead of the table: {"policy", "n", "ms", "peak_mb", "rel_error"}.
// --n, --d, --heads and --causal shape the synthetic input; --dilation and --global (see below) also apply to the
// table's policies that read them.
// Time is the median of 5 runs after one warm-up. Peak memory is the resident memory the policy's runs
// (warm-up included) added above the RSS just before them, in MB (2^20 bytes), read from VmHWM after
// resetting it through /proc/self/clear_refs (where that file is not writable the table says so and shows
// the resident memory still held after the runs instead); a policy's own parameters, such as Linformer's
// projections, are made before and not counted. Linformer uses random projections of length n (untrained, so
// its error can exceed 1).
//
// --inputs reads q (heads, n_q, d), k and v (heads, n_k, d); linformer:K also needs e and f (K, n_k), the
// projections shared by the heads (K' = E·K, V' = F·V), and performer:M needs features (M, d), the matrix W
// of φ(x) = exp(W·x′ − |x′|²/2)/√M with x′ = x·d^(−1/4). Softmax policies scale scores by 1/√d; linear
// uses φ = elu + 1 and no scale; lsh reads no keys (its keys are the unit-length queries, Reformer's shared
// QK) and needs n_q = n_k. It writes out (heads, n_q, d) as F32. --dilation and --global shape sliding:W
// (query i sees keys i + D·t, |t| ≤ W; global positions see and are seen by every position), --prev-block
// lets blockwise:B see the previous block too. Exit code 2 on bad input, with a message on stderr.

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/attention/full.hpp"
#include "polyformer/attention/kernelized.hpp"
#include "polyformer/attention/linformer.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/attention/registry.hpp"
#include "polyformer/attention/sliding_window.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/safetensors.hpp"

#include "../bench/resident_memory.hpp"
#include "cli.hpp"

namespace pf = polyformer;

namespace {

using cli::usage_error;

/// The usage text; the policies' spelling forms come from the registry.
std::string usage() {
  return "usage: attention_zoo [--policy P] [--n N] [--d D] [--heads H] [--causal] [--json] [--threads T]\n"
         "       attention_zoo --policy P --inputs F.safetensors --out O.safetensors [--causal] [--dilation D]\n"
         "                     [--global i,j,...] [--prev-block] [--threads T]\n"
         "P: " + pf::attention_usage() + "\n";
}

/// The policies of the table when no --policy is given: every registered policy at its example spelling.
std::vector<std::string> table_policies() {
  std::vector<std::string> spellings;
  pf::for_each_attention_policy([&]<typename P>(std::type_identity<P>) {
    spellings.emplace_back(P::example_spelling);
  });
  return spellings;
}

/// The command-line flags that set policy options, and the names the policies read them under.
struct PolicyFlag {
  const char* flag;
  const char* option;
};
constexpr PolicyFlag policy_flags[] = {{"--dilation", "dilation"}, {"--global", "global_positions"},
                                       {"--prev-block", "previous_block"}};

constexpr int warmup_runs = 1, timed_runs = 5;
constexpr std::uint64_t input_seed = 20240607;
/// Largest n·heads·d of the synthetic inputs: 2^28 floats, 1 GiB per matrix.
constexpr double max_elements = 268435456.0;

struct Options {
  std::string policy;  // empty: every policy of the table
  long long n = 4096, d = 64, heads = 12, threads = 1;
  bool causal = false, json = false;
  std::string inputs, out;  // file mode
  long long dilation = 1;
  std::vector<pf::Index> global_positions;
  bool previous_block = false;
  std::vector<std::string> given;  // every option given, for the checks that depend on the mode

  bool was_given(const std::string& flag) const { return std::find(given.begin(), given.end(), flag) != given.end(); }
};

using cli::parse_number;

/// "0,5,17" → {0, 5, 17}; every entry an integer >= 0.
std::vector<pf::Index> parse_positions(const std::string& flag, const std::string& value) {
  std::vector<pf::Index> positions;
  for (std::size_t start = 0;;) {
    const std::size_t comma = value.find(',', start);
    const std::string item = value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const long long p = parse_number<long long>(flag, item);
    if (p < 0) throw usage_error(flag + " has position " + item + ", expected positions >= 0");
    positions.push_back(static_cast<pf::Index>(p));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return positions;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(usage().c_str(), stdout);
      std::exit(0);
    }
    if (a == "--policy") o.policy = value();
    else if (a == "--n") o.n = parse_number<long long>(a, value());
    else if (a == "--d") o.d = parse_number<long long>(a, value());
    else if (a == "--heads") o.heads = parse_number<long long>(a, value());
    else if (a == "--threads") o.threads = parse_number<long long>(a, value());
    else if (a == "--causal") o.causal = true;
    else if (a == "--json") o.json = true;
    else if (a == "--inputs") o.inputs = value();
    else if (a == "--out") o.out = value();
    else if (a == "--dilation") o.dilation = parse_number<long long>(a, value());
    else if (a == "--global") o.global_positions = parse_positions(a, value());
    else if (a == "--prev-block") o.previous_block = true;
    else throw usage_error("unknown option '" + a + "'");
    o.given.push_back(a);
  }
  for (const auto& [flag, v] : {std::pair{"--n", o.n}, {"--d", o.d}, {"--heads", o.heads}, {"--dilation", o.dilation}})
    if (v < 1) throw usage_error(std::string(flag) + " is " + std::to_string(v) + ", expected >= 1");
  if (o.threads < 1 || o.threads > 1024)
    throw usage_error("--threads is " + std::to_string(o.threads) + ", expected 1..1024");
  if (o.inputs.empty() != o.out.empty())
    throw usage_error(o.inputs.empty() ? "--out needs --inputs (the tensors to run on)"
                                       : "--out is required with --inputs (where to write the output)");
  if (!o.inputs.empty()) {
    if (o.policy.empty()) throw usage_error("--policy is required with --inputs");
    for (const char* flag : {"--n", "--d", "--heads", "--json"})
      if (o.was_given(flag))
        throw usage_error(std::string(flag) + " applies to the synthetic inputs, not to --inputs");
  }
  if (static_cast<double>(o.n) * static_cast<double>(o.heads) * static_cast<double>(o.d) > max_elements)
    throw usage_error("--n · --heads · --d is " + std::to_string(o.n) + "·" + std::to_string(o.heads) + "·" +
                      std::to_string(o.d) + ", expected at most 2^28 (1 GiB per matrix)");
  return o;
}

/// The options outside the spelling: those the command line gives, and n_max, the length of Linformer's
/// projections.
pf::AttentionOptions make_options(const Options& o, pf::Index n_max) {
  pf::AttentionOptions options;
  if (o.was_given("--dilation")) options.set("dilation", o.dilation);
  if (o.was_given("--global")) options.set("global_positions", o.global_positions);
  if (o.was_given("--prev-block")) options.set("previous_block", o.previous_block);
  options.set("n_max", n_max);
  return options;
}

/// A spelling checked before anything runs.
struct CheckedPolicy {
  std::string spelling;  // as the policy spells itself
  bool supports_causal = false;
};

/// Parses `spelling` with `options`; throws usage_error when it is bad or, with `check_options`, when the policy
/// does not read an option the command line gives.
CheckedPolicy check_policy(const std::string& spelling, const pf::AttentionOptions& options, bool check_options) {
  CheckedPolicy checked;
  try {
    checked = pf::with_attention(spelling, options, [](const auto& policy) {
      return CheckedPolicy{policy.spelling(), std::decay_t<decltype(policy)>::supports_causal};
    });
  } catch (const pf::config_error& e) {
    throw usage_error(std::string("--policy: ") + e.what());
  }
  if (check_options)
    for (const PolicyFlag& f : policy_flags)
      if (options.has(f.option) && !options.was_read(f.option))
        throw usage_error(std::string(f.flag) + " does not apply to '" + spelling + "'");
  return checked;
}

/// Throws usage_error when --causal asks for what the policy cannot do.
void check_causal(const CheckedPolicy& policy, bool causal) {
  if (causal && !policy.supports_causal)
    throw usage_error("--causal: '" + policy.spelling + "' cannot honour a causal mask (it is bidirectional only)");
}

// ---- peak resident memory ----

using bench::ResidentPeak;  // bench/resident_memory.hpp

// ---- the table's synthetic input ----

// The parameters of the local-plus-global input (the header comment describes the construction).
constexpr double locality_logit = 12.0;                  // β: the positional logit at j = i
constexpr double global_logit = 11.0;                    // γ: every query's logit to a global token
constexpr double width_first = 8.0, width_last = 32.0;   // ℓ_h of the first and the last head, geometric between
constexpr double band = 4.0;                             // ω_f from 1/ℓ_h down to 1/(band·ℓ_h); locality ±band·ℓ_h
constexpr double qk_noise = 0.2;                         // σ of the noise on every entry of q and k
constexpr double value_correlation = 32.0;               // values: AR(1), correlation e^(−|i−j|/32)
constexpr pf::Index global_tokens = 4;                   // at 0, n/4, n/2, 3n/4
constexpr pf::Index sampled_queries = 64;                // a head's queries behind the header's weight shares

/// One sequence's attention inputs in polyformer's layout, and what the header says about them.
struct Problem {
  pf::AttentionShape shape;
  pf::Matrix q, k, v;  // (n, heads·d)
  pf::AttentionMask mask;
  std::vector<pf::Index> globals;  // the global tokens' positions
  std::vector<double> widths;      // ℓ_h by head
  pf::Index frequencies = 0;       // F, the sinusoidal pairs of a head
};

struct Row {
  std::string policy;
  pf::Index n = 0;
  double ms = 0.0, peak_mb = 0.0, rel_error = 0.0;
  bool peak_reset = true;
};

pf::AttentionShape shape_for(pf::Index heads, pf::Index head_dim) {
  pf::AttentionShape s;
  s.n_heads = s.n_kv_heads = heads;
  s.head_dim = head_dim;
  s.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  return s;
}

/// The global tokens' positions of an input of n positions: 0, n/4, n/2, 3n/4 (fewer when n < 4).
std::vector<pf::Index> input_globals(pf::Index n) {
  std::vector<pf::Index> globals;
  for (pf::Index g = 0; g < global_tokens; ++g) globals.push_back(g * n / global_tokens);
  globals.erase(std::unique(globals.begin(), globals.end()), globals.end());
  return globals;
}

/// The local-plus-global q, k, v of the header comment, seeded.
Problem structured_problem(const Options& o) {
  Problem p;
  p.shape = shape_for(o.heads, o.d);
  p.mask.causal = o.causal;
  const pf::Index n = o.n, d = o.d, heads = o.heads, pairs = (d - 1) / 2;
  p.frequencies = pairs;
  p.globals = input_globals(n);
  std::vector<char> is_global(static_cast<std::size_t>(n), 0);
  for (pf::Index g : p.globals) is_global[static_cast<std::size_t>(g)] = 1;

  const double root_d = std::sqrt(static_cast<double>(d));
  const double global_amplitude = std::sqrt(global_logit * root_d);  // its square over √d is γ
  const double amplitude = pairs > 0 ? std::sqrt(locality_logit * root_d / static_cast<double>(pairs)) : 0.0;
  const double rho = std::exp(-1.0 / value_correlation), innovation = std::sqrt(1.0 - rho * rho);
  std::mt19937_64 rng(input_seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (pf::Matrix* m : {&p.q, &p.k, &p.v}) m->setZero(n, heads * d);
  for (pf::Index h = 0; h < heads; ++h) {
    const double width =
        heads == 1 ? width_first
                   : width_first * std::pow(width_last / width_first, static_cast<double>(h) / double(heads - 1));
    p.widths.push_back(width);
    std::vector<double> omega(static_cast<std::size_t>(pairs));
    for (pf::Index f = 0; f < pairs; ++f)
      omega[std::size_t(f)] = std::pow(band, -(pairs == 1 ? 0.0 : double(f) / double(pairs - 1))) / width;
    const pf::Index c0 = h * d;
    for (pf::Index i = 0; i < n; ++i) {
      p.q(i, c0) = static_cast<float>(global_amplitude);
      p.k(i, c0) = is_global[std::size_t(i)] ? static_cast<float>(global_amplitude) : 0.0f;
      for (pf::Index f = 0; f < pairs; ++f) {  // a global token's key has no position
        const double angle = omega[std::size_t(f)] * static_cast<double>(i);
        const auto cosine = static_cast<float>(amplitude * std::cos(angle)),
                   sine = static_cast<float>(amplitude * std::sin(angle));
        p.q(i, c0 + 1 + 2 * f) = cosine;
        p.q(i, c0 + 2 + 2 * f) = sine;
        if (!is_global[std::size_t(i)]) {
          p.k(i, c0 + 1 + 2 * f) = cosine;
          p.k(i, c0 + 2 + 2 * f) = sine;
        }
      }
      for (pf::Index c = c0; c < c0 + d; ++c) {
        p.q(i, c) += static_cast<float>(qk_noise * normal(rng));
        p.k(i, c) += static_cast<float>(qk_noise * normal(rng));
      }
    }
    for (pf::Index c = c0; c < c0 + d; ++c) {
      double x = normal(rng);  // stationary from the first position on
      for (pf::Index i = 0; i < n; ++i) {
        if (i > 0) x = rho * x + innovation * normal(rng);
        p.v(i, c) = static_cast<float>(x);
      }
    }
  }
  return p;
}

/// Exact attention's average weight shares over sampled queries: within ±band·ℓ_h of the query, on the global
/// tokens (wherever they are), elsewhere.
struct Shares {
  double local = 0.0, global = 0.0, elsewhere = 0.0;
};

Shares exact_shares(const Problem& p) {
  const pf::Index n = p.q.rows(), d = p.shape.head_dim, samples = std::min(sampled_queries, n);
  std::vector<char> is_global(static_cast<std::size_t>(n), 0);
  for (pf::Index g : p.globals) is_global[static_cast<std::size_t>(g)] = 1;
  Shares total;
  std::vector<double> logits(static_cast<std::size_t>(n));
  for (pf::Index h = 0; h < p.shape.n_heads; ++h)
    for (pf::Index s = 0; s < samples; ++s) {
      const pf::Index i = (2 * s + 1) * n / (2 * samples), visible = p.mask.causal ? i + 1 : n;
      double top = -HUGE_VAL;
      for (pf::Index j = 0; j < visible; ++j) {
        double dot = 0.0;
        for (pf::Index c = h * d; c < (h + 1) * d; ++c) dot += double(p.q(i, c)) * double(p.k(j, c));
        logits[std::size_t(j)] = dot * double(p.shape.scale);
        top = std::max(top, logits[std::size_t(j)]);
      }
      Shares one;
      double sum = 0.0;
      for (pf::Index j = 0; j < visible; ++j) {
        const double w = std::exp(logits[std::size_t(j)] - top);
        sum += w;
        if (is_global[std::size_t(j)]) one.global += w;
        else if (double(std::abs(i - j)) <= band * p.widths[std::size_t(h)]) one.local += w;
        else one.elsewhere += w;
      }
      total.local += one.local / sum;
      total.global += one.global / sum;
      total.elsewhere += one.elsewhere / sum;
    }
  const double count = static_cast<double>(p.shape.n_heads * samples);
  return {total.local / count, total.global / count, total.elsewhere / count};
}

/// Root mean square of a matrix's entries.
double rms(const pf::Matrix& m) {
  return m.size() > 0 ? std::sqrt(m.cast<double>().squaredNorm() / static_cast<double>(m.size())) : 0.0;
}

/// A number with up to 3 significant digits: "8", "11.3".
std::string number_text(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g", x);
  return text;
}

/// "0,1024,2048,3072"
std::string positions_text(const std::vector<pf::Index>& positions) {
  std::string s;
  for (pf::Index p : positions) {
    if (!s.empty()) s += ',';
    s += std::to_string(p);
  }
  return s;
}

/// ‖out − reference‖_F / ‖reference‖_F, in double (‖out − reference‖_F when the reference is zero).
double relative_error(const pf::Matrix& out, const pf::Matrix& reference) {
  const double diff = (out.cast<double>() - reference.cast<double>()).squaredNorm();
  const double norm = reference.cast<double>().squaredNorm();
  return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

/// Times `policy` on the problem and measures its memory and its error against `reference`.
template <typename Policy>
Row measure(Policy& policy, const std::string& label, const Problem& p, const pf::Matrix& reference, pf::Matrix& out,
            const pf::Context& ctx) {
  const auto forward = [&] {
    policy.forward(p.shape, pf::cview(p.q), pf::cview(p.k), pf::cview(p.v), p.mask, pf::view(out), ctx);
  };
  const ResidentPeak peak;  // after the inputs and the output exist: only what the policy allocates counts
  for (int r = 0; r < warmup_runs; ++r) forward();
  std::vector<double> ms;
  for (int r = 0; r < timed_runs; ++r) {
    const auto start = std::chrono::steady_clock::now();
    forward();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  Row row;
  row.peak_mb = peak.extra_mib();
  row.peak_reset = peak.reset();
  std::sort(ms.begin(), ms.end());
  row.ms = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
  row.policy = label;
  row.n = p.q.rows();
  row.rel_error = relative_error(out, reference);
  return row;
}

/// The table's header: the run, the input's construction and exact attention on it, what rel_error measures.
void print_table_header(const Options& o, const Problem& p, double exact_rms, const std::string& global_row) {
  std::printf("attention_zoo: n %lld, d %lld, heads %lld, %s, %lld thread%s; "
              "time: median of %d runs after %d warm-up\n",
              o.n, o.d, o.heads, o.causal ? "causal" : "bidirectional", o.threads, o.threads == 1 ? "" : "s",
              timed_runs, warmup_runs);
  const std::string widths = p.widths.size() == 1
                                 ? "ℓ_0 = " + number_text(p.widths.front())
                                 : "ℓ_h = " + number_text(p.widths.front()) + " (head 0) to " +
                                       number_text(p.widths.back()) + " (head " + std::to_string(o.heads - 1) + ")";
  std::printf("input (seed %llu): local plus global attention. Per head h, q_i·k_j/√d ≈ %g·mean_f cos ω_f·(i − j) "
              "over\n  %lld sinusoidal frequencies ω_f from 1/ℓ_h to 1/(%g·ℓ_h), %s; = %g instead\n  when j is a "
              "global token (%s); q, k entries + N(0, %g²); v: AR(1) in every column,\n  correlation "
              "e^(−|i−j|/%g), mean 0, RMS %.2f\n",
              static_cast<unsigned long long>(input_seed), locality_logit, static_cast<long long>(p.frequencies),
              band, widths.c_str(), global_logit, positions_text(p.globals).c_str(), qk_noise, value_correlation,
              rms(p.v));
  const Shares shares = exact_shares(p);
  std::printf("exact attention (%lld queries a head): %.1f%% of the weight within ±%g·ℓ_h of the query, %.1f%% on "
              "the global tokens,\n  %.1f%% elsewhere; its output's RMS %.2f\n",
              static_cast<long long>(std::min<pf::Index>(sampled_queries, o.n)), 100.0 * shares.local, band,
              100.0 * shares.global, 100.0 * shares.elsewhere, exact_rms);
  std::printf("rel_error = ‖out − exact‖_F / ‖exact‖_F, the error relative to the output's scale (0.01: close; "
              "1: as far off as\n  the output is large)%s%s\n",
              global_row.empty() ? "" : "; ", global_row.c_str());
  std::printf("%-18s %12s %12s %12s\n", "policy", "time_ms", "peak_MB", "rel_error");
}

void print_row(const Row& row, bool json) {
  if (json) {
    nlohmann::ordered_json j;
    j["policy"] = row.policy;
    j["n"] = row.n;
    j["ms"] = row.ms;
    j["peak_mb"] = row.peak_mb;
    j["rel_error"] = row.rel_error;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%-18s %12.2f %12.2f %12.3e\n", row.policy.c_str(), row.ms, row.peak_mb, row.rel_error);
  }
  std::fflush(stdout);
}

/// A row of the table: a policy's spelling, the options it is made with, and its label in the table.
struct TableEntry {
  std::string label, spelling;
  pf::AttentionOptions options;
};

void run_table(const Options& o) {
  const std::vector<std::string> spellings = o.policy.empty() ? table_policies() : std::vector<std::string>{o.policy};
  const bool one = !o.policy.empty();
  const pf::AttentionOptions options = make_options(o, static_cast<pf::Index>(o.n));
  const std::vector<pf::Index> globals = input_globals(static_cast<pf::Index>(o.n));
  // Every spelling is checked before anything runs; with --causal the bidirectional-only policies are refused
  // (--policy) or left out of the table. The full table has the sliding window twice: as spelled, and given the
  // input's global tokens (unless --global gives others).
  std::vector<TableEntry> entries;
  std::string global_row;  // the header's explanation of that second row
  for (const std::string& s : spellings) {
    const CheckedPolicy checked = check_policy(s, options, one);
    if (one) check_causal(checked, o.causal);
    if (o.causal && !checked.supports_causal) {
      std::fprintf(stderr, "attention_zoo: %s left out: it cannot honour a causal mask (bidirectional only)\n",
                   s.c_str());
      continue;
    }
    entries.push_back({checked.spelling, checked.spelling, options});
    if (!one && !o.was_given("--global") && checked.spelling == pf::SlidingWindow::example_spelling) {
      TableEntry with_globals{checked.spelling + "+global", checked.spelling, options};
      with_globals.options.set("global_positions", globals);
      global_row = with_globals.label + " is " + checked.spelling + " --global " + positions_text(globals);
      entries.push_back(std::move(with_globals));
    }
  }
  const pf::Context ctx{static_cast<int>(o.threads)};
  const Problem problem = structured_problem(o);
  pf::Matrix reference(o.n, o.heads * o.d), out(o.n, o.heads * o.d);  // (n, heads·d)
  pf::FullAttention().forward(problem.shape, pf::cview(problem.q), pf::cview(problem.k), pf::cview(problem.v),
                              problem.mask, pf::view(reference), ctx);
  out.setZero();  // resident before any policy is measured
  if (!o.json) print_table_header(o, problem, rms(reference), global_row);
  bool peak_reset = true, any_lsh = false;
  for (const TableEntry& entry : entries) {
    // A fresh policy for every row: its workspaces count.
    const Row row = pf::with_attention(entry.spelling, entry.options, [&](auto policy) {
      any_lsh = any_lsh || std::is_same_v<decltype(policy), pf::LSHAttention>;
      return measure(policy, entry.label, problem, reference, out, ctx);
    });
    print_row(row, o.json);
    peak_reset = peak_reset && row.peak_reset;
  }
  const auto note = [&](const char* text) {  // after the table, or on stderr beside the JSON
    std::fprintf(o.json ? stderr : stdout, "%s%s\n", o.json ? "attention_zoo: " : "", text);
  };
  if (!peak_reset)
    note("note: /proc/self/clear_refs is not writable, so peak_MB is the resident memory still held after the "
         "runs (a lower bound of the peak), not the peak");
  if (any_lsh && !o.json)
    note("note: lsh reads no keys (its keys are the unit-length queries, Reformer's shared QK), so its error is "
         "against attention over different keys");
}

// ---- one policy on the user's tensors ----

/// A (heads, n, d) tensor of the input file.
struct HeadTensor {
  std::string name;
  pf::Index heads = 0, n = 0, d = 0;
  std::vector<float> data;  // (heads, n, d) row-major
};

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

HeadTensor read_heads(const pf::io::SafetensorsFile& file, const std::string& name, const char* expected) {
  if (!file.contains(name))
    throw pf::missing_error(file.path() + ": no tensor '" + name + "', expected one of shape " + expected);
  pf::io::FloatTensor t = file.tensor(name);
  if (t.shape.size() != 3 || t.shape[0] < 1 || t.shape[1] < 1 || t.shape[2] < 1)
    throw pf::shape_error(file.path() + ": tensor '" + name + "' has shape " + shape_text(t.shape) + ", expected " +
                          expected + " with every extent >= 1");
  return HeadTensor{name, static_cast<pf::Index>(t.shape[0]), static_cast<pf::Index>(t.shape[1]),
                    static_cast<pf::Index>(t.shape[2]), std::move(t.data)};
}

/// A 2-D tensor that must be exactly (rows, cols).
pf::Matrix read_matrix(const pf::io::SafetensorsFile& file, const std::string& name, pf::Index rows, pf::Index cols,
                       const std::string& why) {
  const std::string expected = "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
  if (!file.contains(name))
    throw pf::missing_error(file.path() + ": no tensor '" + name + "', expected " + expected + " for " + why);
  const pf::io::TensorInfo& info = file.info(name);
  if (info.shape != std::vector<std::int64_t>{rows, cols})
    throw pf::shape_error(file.path() + ": tensor '" + name + "' has shape " + shape_text(info.shape) + ", expected " +
                          expected + " for " + why);
  return file.matrix(name, rows, cols);
}

/// (heads, n, d) → (n, heads·d): row i holds every head's vector of position i, head h in columns h·d..h·d+d−1.
pf::Matrix to_rows(const HeadTensor& t) {
  pf::Matrix m(t.n, t.heads * t.d);
  for (pf::Index h = 0; h < t.heads; ++h)
    for (pf::Index i = 0; i < t.n; ++i)
      for (pf::Index c = 0; c < t.d; ++c) m(i, h * t.d + c) = t.data[std::size_t((h * t.n + i) * t.d + c)];
  return m;
}

/// (n, heads·d) → (heads, n, d).
pf::io::FloatTensor to_heads(const pf::Matrix& m, pf::Index heads, pf::Index d) {
  pf::io::FloatTensor t;
  const pf::Index n = m.rows();
  t.shape = {heads, n, d};
  t.data.resize(std::size_t(heads * n * d));
  for (pf::Index h = 0; h < heads; ++h)
    for (pf::Index i = 0; i < n; ++i)
      for (pf::Index c = 0; c < d; ++c) t.data[std::size_t((h * n + i) * d + c)] = m(i, h * d + c);
  return t;
}

void run_file(const Options& o) {
  // Checked before the file is read, with n_max 1 for Linformer (the projections come from the file).
  const CheckedPolicy checked = check_policy(o.policy, make_options(o, 1), /*check_options=*/true);
  const std::string& spelling = checked.spelling;
  check_causal(checked, o.causal);
  const pf::io::SafetensorsFile file = pf::io::SafetensorsFile::open(o.inputs);
  const HeadTensor q = read_heads(file, "q", "(heads, n_q, d)");
  const HeadTensor k = read_heads(file, "k", "(heads, n_k, d)");
  const HeadTensor v = read_heads(file, "v", "(heads, n_k, d)");
  const auto dims = [](const HeadTensor& t) {
    return "(" + std::to_string(t.heads) + ", " + std::to_string(t.n) + ", " + std::to_string(t.d) + ")";
  };
  for (const HeadTensor* t : {&k, &v})
    if (t->heads != q.heads || t->d != q.d)
      throw pf::shape_error(file.path() + ": tensor '" + t->name + "' has shape " + dims(*t) + ", expected (" +
                            std::to_string(q.heads) + ", n_k, " + std::to_string(q.d) + "): heads and d as in 'q' " +
                            dims(q));
  if (v.n != k.n)
    throw pf::shape_error(file.path() + ": tensor 'v' has shape " + dims(v) + ", expected (" + std::to_string(k.heads) +
                          ", " + std::to_string(k.n) + ", " + std::to_string(k.d) + "): as many positions as 'k' " +
                          dims(k));

  const pf::AttentionShape shape = shape_for(q.heads, q.d);
  pf::AttentionMask mask;
  mask.causal = o.causal;
  const pf::Matrix qm = to_rows(q), km = to_rows(k), vm = to_rows(v);  // (n_q, heads·d), (n_k, heads·d) twice
  pf::Matrix out(q.n, q.heads * q.d);                                  // (n_q, heads·d)
  const pf::Context ctx{static_cast<int>(o.threads)};
  const double ms = pf::with_attention(spelling, make_options(o, k.n), [&](auto policy) {
    using Policy = decltype(policy);
    // The policies with learned parameters read them from the file.
    if constexpr (std::is_same_v<Policy, pf::Linformer>) {
      const std::string why = spelling + " (the projection shared by the heads)";
      pf::Matrix e = read_matrix(file, "e", policy.k(), k.n, why);
      pf::Matrix f = read_matrix(file, "f", policy.k(), k.n, why);
      policy = pf::Linformer(policy.k(), std::move(e), std::move(f));
    } else if constexpr (std::is_same_v<Policy, pf::Performer>) {
      const pf::Index m = policy.feature_map().features(q.d);
      policy.feature_map().set_projection(read_matrix(file, "features", m, q.d, spelling + " (the random features W)"));
    }
    const auto start = std::chrono::steady_clock::now();
    policy.forward(shape, pf::cview(qm), pf::cview(km), pf::cview(vm), mask, pf::view(out), ctx);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  });
  pf::io::write_safetensors(o.out, {{"out", to_heads(out, q.heads, q.d)}});
  std::printf("attention_zoo: %s%s on q %s, k %s: out %s in %s, %.3f ms\n", spelling.c_str(),
              o.causal ? " (causal)" : "", dims(q).c_str(), dims(k).c_str(), dims(q).c_str(), o.out.c_str(), ms);
}

}  // namespace

int main(int argc, char** argv) {
  pf::kernels::use_single_threaded_backends();  // polyformer threads its own products
  return cli::guarded_main("attention_zoo", [&] {
    const Options o = parse(argc, argv);
    if (o.inputs.empty()) run_table(o);
    else run_file(o);
    return 0;
  });
}
