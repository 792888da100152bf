// The attention_zoo CLI end to end: --json prints one well-formed line per policy; the table's synthetic
// local-plus-global input has the structure its header claims (exact attention's weight near the query and on
// the global tokens, which a window covering the locality and given the global tokens reproduces closely, and
// which an approximation spreading its weight over the sequence misses); in file mode each policy's output
// matches a dense float64 oracle written here (sliding window with dilation and global positions, causal
// blockwise with the previous block, linear, Linformer with given projections, Performer with given features);
// bad input exits with code 2 and a message.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "polyformer/io/safetensors.hpp"
#include "support.hpp"

#ifdef POLYFORMER_ATTENTION_ZOO
namespace {

using polyformer::io::FloatTensor;
using Tensors = std::vector<std::pair<std::string, FloatTensor>>;

std::string temp_path(const std::string& name) { return pft::process_temp_path("attention_zoo", name); }

/// Runs attention_zoo with `args`; returns the exit code.
int run(const std::string& args, std::string* out = nullptr, std::string* err = nullptr) {
  return pft::run_program(POLYFORMER_ATTENTION_ZOO, "attention_zoo", args, out, err);
}

/// The lines of a text, without their '\n'.
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

/// Checks one --json line: exactly the keys policy, n, ms, peak_mb, rel_error, with sane values; returns it.
nlohmann::json check_json_line(const std::string& line, const std::string& policy, std::int64_t n) {
  INFO(line);
  nlohmann::json j;
  REQUIRE_NOTHROW(j = nlohmann::json::parse(line));
  REQUIRE(j.is_object());
  CHECK(j.size() == 5);
  for (const char* key : {"policy", "n", "ms", "peak_mb", "rel_error"}) REQUIRE(j.contains(key));
  CHECK(j["policy"] == policy);
  REQUIRE(j["n"].is_number_integer());
  CHECK(j["n"].get<std::int64_t>() == n);
  for (const char* key : {"ms", "peak_mb", "rel_error"}) {
    INFO(key);
    REQUIRE(j[key].is_number());
    const double value = j[key].get<double>();
    CHECK(std::isfinite(value));
    CHECK(value >= 0.0);
  }
  return j;
}

/// A tensor of `shape` with entries N(0, scale²), seeded.
FloatTensor random_tensor(std::vector<std::int64_t> shape, unsigned seed, float scale = 1.0f) {
  FloatTensor t;
  t.shape = std::move(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  t.data.resize(static_cast<std::size_t>(t.numel()));
  for (float& x : t.data) x = normal(rng);
  return t;
}

/// Element (h, i, c) of a (heads, n, d) tensor, or (i, c) of a 2-D one with h = 0.
double at(const FloatTensor& t, std::int64_t h, std::int64_t i, std::int64_t c) {
  const std::int64_t rows = t.shape[t.shape.size() - 2], cols = t.shape.back();
  return t.data[static_cast<std::size_t>((h * rows + i) * cols + c)];
}

/// A (heads, n, d) tensor in double, for projected keys and values.
struct Heads {
  std::int64_t heads = 0, n = 0, d = 0;
  std::vector<double> x;
  double& operator()(std::int64_t h, std::int64_t i, std::int64_t c) {
    return x[static_cast<std::size_t>((h * n + i) * d + c)];
  }
  double operator()(std::int64_t h, std::int64_t i, std::int64_t c) const {
    return x[static_cast<std::size_t>((h * n + i) * d + c)];
  }
};

Heads to_double(const FloatTensor& t) {
  Heads r{t.shape[0], t.shape[1], t.shape[2], {}};
  r.x.assign(t.data.begin(), t.data.end());
  return r;
}

/// The oracle: out[h][i] = Σ_j w(h, i, j)·values[h][j] / Σ_j w(h, i, j), zeros when Σ_j w = 0.
Heads weighted_average(const Heads& values, std::int64_t n_q,
                       const std::function<double(std::int64_t, std::int64_t, std::int64_t)>& weight) {
  Heads out{values.heads, n_q, values.d, std::vector<double>(static_cast<std::size_t>(values.heads * n_q * values.d))};
  for (std::int64_t h = 0; h < values.heads; ++h)
    for (std::int64_t i = 0; i < n_q; ++i) {
      double total = 0.0;
      for (std::int64_t j = 0; j < values.n; ++j) {
        const double w = weight(h, i, j);
        total += w;
        for (std::int64_t c = 0; c < values.d; ++c) out(h, i, c) += w * values(h, j, c);
      }
      if (total > 0.0)
        for (std::int64_t c = 0; c < values.d; ++c) out(h, i, c) /= total;
    }
  return out;
}

/// q_i·k_j of head h.
double dot(const FloatTensor& q, const FloatTensor& k, std::int64_t h, std::int64_t i, std::int64_t j) {
  double s = 0.0;
  for (std::int64_t c = 0; c < q.shape[2]; ++c) s += at(q, h, i, c) * at(k, h, j, c);
  return s;
}

/// Softmax attention restricted to the pairs visible(i, j), scale 1/√d.
Heads masked_softmax(const FloatTensor& q, const FloatTensor& k, const FloatTensor& v,
                     const std::function<bool(std::int64_t, std::int64_t)>& visible) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.shape[2]));
  return weighted_average(to_double(v), q.shape[1], [&](std::int64_t h, std::int64_t i, std::int64_t j) {
    return visible(i, j) ? std::exp(scale * dot(q, k, h, i, j)) : 0.0;
  });
}

/// Reads `out` from the file attention_zoo wrote and compares it with the oracle: max |out − oracle| at most
/// 1e-5 of max |oracle|.
void check_output(const std::string& path, const Heads& oracle) {
  const auto file = polyformer::io::SafetensorsFile::open(path);
  REQUIRE(file.contains("out"));
  CHECK(file.info("out").dtype == polyformer::io::DType::F32);
  const FloatTensor out = file.tensor("out");
  REQUIRE(out.shape == std::vector<std::int64_t>{oracle.heads, oracle.n, oracle.d});
  double max_diff = 0.0, max_ref = 0.0;
  for (std::size_t e = 0; e < oracle.x.size(); ++e) {
    max_diff = std::max(max_diff, std::abs(double(out.data[e]) - oracle.x[e]));
    max_ref = std::max(max_ref, std::abs(oracle.x[e]));
  }
  INFO("max |out − oracle| " << max_diff << ", max |oracle| " << max_ref);
  REQUIRE(max_ref > 0.0);
  CHECK(max_diff <= 1e-5 * max_ref);
}

constexpr std::int64_t heads = 2, n = 37, d = 8;

/// q, k, v (heads 2, n 37, d 8) and extra tensors written to this process's temp file `name`; returns its path.
std::string write_inputs(const std::string& name, const Tensors& tensors) {
  const std::string path = temp_path(name);
  polyformer::io::write_safetensors(path, tensors);
  return path;
}

}  // namespace

TEST_CASE("examples/attention_zoo: --json prints one line with the five keys for every policy",
          "[examples][attention]") {
  for (const std::string policy :
       {"full", "sliding:3", "blockwise:16", "lsh:2:8", "linformer:8", "performer:16", "linear"}) {
    INFO(policy);
    std::string out, err;
    REQUIRE(run("--policy " + policy + " --n 50 --d 8 --heads 2 --json", &out, &err) == 0);
    INFO(err);
    REQUIRE(!out.empty());
    CHECK(out.back() == '\n');
    const auto lines = lines_of(out);
    REQUIRE(lines.size() == 1);
    const nlohmann::json j = check_json_line(lines[0], policy, 50);
    const double rel_error = j["rel_error"].get<double>();
    if (policy == "full") CHECK(rel_error < 1e-6);
    else CHECK(rel_error > 1e-3);  // each approximation weighs other keys than exact attention on 50 positions
  }
}

TEST_CASE("examples/attention_zoo: windows that cover the sequence have no error", "[examples][attention]") {
  for (const std::string args : {"--policy sliding:60", "--policy blockwise:64", "--policy sliding:60 --causal",
                                 "--policy blockwise:64 --causal", "--policy sliding:50 --threads 2"}) {
    INFO(args);
    std::string out;
    REQUIRE(run(args + " --n 50 --d 8 --heads 3 --json", &out) == 0);
    const auto lines = lines_of(out);
    REQUIRE(lines.size() == 1);
    const std::string policy = args.substr(9, args.find(' ', 9) - 9);
    CHECK(check_json_line(lines[0], policy, 50)["rel_error"].get<double>() < 1e-5);
  }
}

TEST_CASE("examples/attention_zoo: without --policy every policy of the table runs", "[examples][attention]") {
  // sliding:128+global: sliding:128 given the input's global tokens.
  const std::vector<std::string> table = {"full",     "sliding:128",   "sliding:128+global", "blockwise:128",
                                          "lsh:4:64", "linformer:256", "performer:256",      "linear"};
  std::string out;
  REQUIRE(run("--n 40 --d 8 --heads 2 --json", &out) == 0);
  const auto lines = lines_of(out);
  REQUIRE(lines.size() == table.size());
  for (std::size_t i = 0; i < table.size(); ++i) check_json_line(lines[i], table[i], 40);

  // The table form: the header (the run, the input, exact attention on it, what rel_error is), then a row per
  // policy.
  REQUIRE(run("--n 40 --d 8 --heads 2", &out) == 0);
  for (const std::string& policy : table) CHECK(out.find("\n" + policy + " ") != std::string::npos);
  for (const char* text : {"local plus global attention", "global token (0,10,20,30)", "exact attention (40 queries",
                           "rel_error = ‖out − exact‖_F / ‖exact‖_F", "sliding:128 --global 0,10,20,30"})
    CHECK(out.find(text) != std::string::npos);
  // Given --global, the sliding window reads those positions and the table has no second sliding row.
  REQUIRE(run("--n 40 --d 8 --heads 2 --global 3 --json", &out) == 0);
  CHECK(lines_of(out).size() == table.size() - 1);
  CHECK(out.find("sliding:128+global") == std::string::npos);
}

TEST_CASE("examples/attention_zoo: the table's input is local plus global, and rel_error shows it",
          "[examples][attention]") {
  // n 1024, d 64 (the locality needs d ≳ 32), 4 heads of widths ℓ_h 8 to 32: locality within ±4·ℓ_h ≤ 128;
  // global tokens at 0, 256, 512, 768.
  const std::string input = " --n 1024 --heads 4";
  const std::string globals = " --global 0,256,512,768";
  const auto rel_error = [&](const std::string& args) {
    std::string out, err;
    INFO(args);
    REQUIRE(run(args + input + " --json", &out, &err) == 0);
    INFO(err);
    const auto lines = lines_of(out);
    REQUIRE(lines.size() == 1);
    const std::string policy = args.substr(9, args.find(' ', 9) - 9);
    return check_json_line(lines[0], policy, 1024)["rel_error"].get<double>();
  };

  // The header's account of exact attention on the input: most weight near the query, some on the global
  // tokens, hardly any elsewhere; an output of about the values' scale (RMS 1).
  std::string out;
  REQUIRE(run("--policy full" + input, &out) == 0);
  INFO(out);
  const std::size_t at = out.find("exact attention (64 queries a head): ");
  REQUIRE(at != std::string::npos);
  double local = -1.0, global = -1.0, elsewhere = -1.0, output_rms = -1.0;
  REQUIRE(std::sscanf(out.c_str() + at,
                      "exact attention (64 queries a head): %lf%% of the weight within ±4·ℓ_h of the query, %lf%% on "
                      "the global tokens,\n  %lf%% elsewhere; its output's RMS %lf",
                      &local, &global, &elsewhere, &output_rms) == 4);
  CHECK(local > 80.0);
  CHECK(global > 2.0);
  CHECK(global < 20.0);
  CHECK(elsewhere < 2.0);
  CHECK(output_rms > 0.5);

  CHECK(rel_error("--policy full") < 1e-6);
  CHECK(rel_error("--policy full --causal") < 1e-6);
  // A window covering the locality and given the global tokens is close to exact attention; without the global
  // tokens it misses their weight, visibly but far from 1.
  const double covered = rel_error("--policy sliding:128" + globals);
  CHECK(covered < 0.01);
  CHECK(rel_error("--policy sliding:128 --causal" + globals) < 0.01);
  const double no_globals = rel_error("--policy sliding:128");
  CHECK(no_globals > 0.02);
  CHECK(no_globals < 0.3);
  // A window narrower than the wide heads' locality misses part of it.
  CHECK(rel_error("--policy sliding:16" + globals) > 10.0 * covered);
  // Linear attention (elu + 1) spreads its weight over the sequence, whose values average to about 0.
  CHECK(rel_error("--policy linear") > 0.5);
}

TEST_CASE("examples/attention_zoo: file mode matches dense float64 oracles", "[examples][attention]") {
  const FloatTensor q = random_tensor({heads, n, d}, 11), k = random_tensor({heads, n, d}, 12),
                    v = random_tensor({heads, n, d}, 13);
  const std::string inputs = write_inputs("qkv.safetensors", {{"q", q}, {"k", k}, {"v", v}});
  const std::string out_path = temp_path("out.safetensors");
  const auto run_file = [&](const std::string& file, const std::string& args) {
    std::filesystem::remove(out_path);
    std::string err;
    INFO(args);
    REQUIRE(run(args + " --inputs " + file + " --out " + out_path, nullptr, &err) == 0);
    INFO(err);
    REQUIRE(std::filesystem::exists(out_path));
  };

  SECTION("full") {
    run_file(inputs, "--policy full");
    check_output(out_path, masked_softmax(q, k, v, [](std::int64_t, std::int64_t) { return true; }));
    run_file(inputs, "--policy full --causal");
    check_output(out_path, masked_softmax(q, k, v, [](std::int64_t i, std::int64_t j) { return j <= i; }));
  }
  SECTION("sliding:2, dilation 2, global positions 0 and 5") {
    run_file(inputs, "--policy sliding:2 --dilation 2 --global 0,5");
    const auto global = [](std::int64_t p) { return p == 0 || p == 5; };
    check_output(out_path, masked_softmax(q, k, v, [&](std::int64_t i, std::int64_t j) {
                   const std::int64_t gap = i - j;  // j = i + 2t, |t| ≤ 2
                   return (gap % 2 == 0 && std::abs(gap) <= 4) || global(i) || global(j);
                 }));
  }
  SECTION("blockwise:8 with the previous block, causal") {
    run_file(inputs, "--policy blockwise:8 --prev-block --causal");
    check_output(out_path, masked_softmax(q, k, v, [](std::int64_t i, std::int64_t j) {
                   return j <= i && (j / 8 == i / 8 || j / 8 == i / 8 - 1);
                 }));
  }
  SECTION("linear: elu + 1, no scale") {
    run_file(inputs, "--policy linear");
    const auto phi = [](double x) { return x > 0.0 ? x + 1.0 : std::exp(x); };
    check_output(out_path, weighted_average(to_double(v), n, [&](std::int64_t h, std::int64_t i, std::int64_t j) {
                   double s = 0.0;
                   for (std::int64_t c = 0; c < d; ++c) s += phi(at(q, h, i, c)) * phi(at(k, h, j, c));
                   return s;
                 }));
  }
  SECTION("linformer:4 with given projections") {
    constexpr std::int64_t K = 4;
    const FloatTensor e = random_tensor({K, n}, 14, 0.5f), f = random_tensor({K, n}, 15, 0.5f);
    run_file(write_inputs("linformer.safetensors", {{"q", q}, {"k", k}, {"v", v}, {"e", e}, {"f", f}}),
             "--policy linformer:" + std::to_string(K));
    // K' = E·K and V' = F·V per head, (K, d); softmax over the K projected keys, scale 1/√d.
    Heads kp{heads, K, d, std::vector<double>(std::size_t(heads * K * d))}, vp = kp;
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t r = 0; r < K; ++r)
        for (std::int64_t c = 0; c < d; ++c)
          for (std::int64_t j = 0; j < n; ++j) {
            kp(h, r, c) += at(e, 0, r, j) * at(k, h, j, c);
            vp(h, r, c) += at(f, 0, r, j) * at(v, h, j, c);
          }
    const double scale = 1.0 / std::sqrt(double(d));
    check_output(out_path, weighted_average(vp, n, [&](std::int64_t h, std::int64_t i, std::int64_t r) {
                   double s = 0.0;
                   for (std::int64_t c = 0; c < d; ++c) s += at(q, h, i, c) * kp(h, r, c);
                   return std::exp(scale * s);
                 }));
  }
  SECTION("performer:16 with given features") {
    constexpr std::int64_t M = 16;
    const FloatTensor w = random_tensor({M, d}, 16);
    run_file(write_inputs("performer.safetensors", {{"q", q}, {"k", k}, {"v", v}, {"features", w}}),
             "--policy performer:" + std::to_string(M));
    // φ(x) = exp(W·x′ − |x′|²/2)/√M with x′ = x·d^(−1/4); out_i = Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j).
    const auto phi = [&](const FloatTensor& x, std::int64_t h, std::int64_t i) {
      const double root = std::pow(double(d), -0.25);
      double sq = 0.0;
      for (std::int64_t c = 0; c < d; ++c) sq += root * at(x, h, i, c) * root * at(x, h, i, c);
      std::vector<double> features(static_cast<std::size_t>(M));
      for (std::int64_t m = 0; m < M; ++m) {
        double s = 0.0;
        for (std::int64_t c = 0; c < d; ++c) s += at(w, 0, m, c) * root * at(x, h, i, c);
        features[std::size_t(m)] = std::exp(s - sq / 2.0) / std::sqrt(double(M));
      }
      return features;
    };
    check_output(out_path, weighted_average(to_double(v), n, [&](std::int64_t h, std::int64_t i, std::int64_t j) {
                   const std::vector<double> a = phi(q, h, i), b = phi(k, h, j);
                   double s = 0.0;
                   for (std::size_t m = 0; m < a.size(); ++m) s += a[m] * b[m];
                   return s;
                 }));
  }
}

TEST_CASE("examples/attention_zoo: bad input exits with code 2 and says why", "[examples][attention][errors]") {
  const FloatTensor q = random_tensor({heads, n, d}, 21), k = random_tensor({heads, n, d}, 22),
                    v = random_tensor({heads, n, d}, 23);
  const std::string inputs = write_inputs("errors.safetensors", {{"q", q}, {"k", k}, {"v", v}});
  const std::string out_path = temp_path("errors_out.safetensors");
  const std::string files = " --inputs " + inputs + " --out " + out_path;
  std::string out, err;

  CHECK(run("--policy nope --n 10", &out, &err) == 2);
  CHECK(err.find("unknown policy 'nope'") != std::string::npos);
  CHECK(run("--policy linformer:8 --causal --n 20 --d 8 --heads 2 --json", &out, &err) == 2);
  CHECK(err.find("causal") != std::string::npos);
  CHECK(out.empty());
  CHECK(run("--policy linformer:4 --causal" + files, &out, &err) == 2);
  CHECK(err.find("causal") != std::string::npos);

  // linformer:4 without e: the message names the tensor and the expected shape.
  const FloatTensor f = random_tensor({4, n}, 24);
  CHECK(run("--policy linformer:4 --inputs " +
                write_inputs("no_e.safetensors", {{"q", q}, {"k", k}, {"v", v}, {"f", f}}) + " --out " + out_path,
            &out, &err) == 2);
  CHECK(err.find("'e'") != std::string::npos);
  CHECK(err.find("(4, 37)") != std::string::npos);
  // performer features of the wrong width.
  CHECK(run("--policy performer:16 --inputs " +
                write_inputs("bad_w.safetensors", {{"q", q}, {"k", k}, {"v", v}, {"features", random_tensor({16, 5}, 25)}}) +
                " --out " + out_path,
            &out, &err) == 2);
  CHECK(err.find("'features' has shape (16, 5), expected (16, 8)") != std::string::npos);

  // q has 2 heads, k and v 3.
  const FloatTensor k3 = random_tensor({3, n, d}, 26), v3 = random_tensor({3, n, d}, 27);
  CHECK(run("--policy full --inputs " + write_inputs("heads.safetensors", {{"q", q}, {"k", k3}, {"v", v3}}) +
                " --out " + out_path,
            &out, &err) == 2);
  CHECK(err.find("'k' has shape (3, 37, 8)") != std::string::npos);
  // v with fewer positions than k.
  CHECK(run("--policy full --inputs " +
                write_inputs("short_v.safetensors", {{"q", q}, {"k", k}, {"v", random_tensor({heads, 30, d}, 28)}}) +
                " --out " + out_path,
            &out, &err) == 2);
  CHECK(err.find("'v' has shape (2, 30, 8)") != std::string::npos);

  CHECK(run("--policy full --inputs " + inputs, &out, &err) == 2);
  CHECK(err.find("--out") != std::string::npos);
  CHECK(run("--policy full --inputs /nonexistent.safetensors --out " + out_path, &out, &err) == 2);
  CHECK(err.find("cannot open") != std::string::npos);
  CHECK(run("--policy full --frobnicate", &out, &err) == 2);
  CHECK(err.find("unknown option '--frobnicate'") != std::string::npos);
  CHECK(run("--policy full --n", &out, &err) == 2);
  CHECK(err.find("--n needs a value") != std::string::npos);
  CHECK(run("--policy full --n abc", &out, &err) == 2);
  CHECK(err.find("--n expects an integer") != std::string::npos);
  CHECK(run("--policy sliding:0 --n 10", &out, &err) == 2);
  CHECK(err.find("sliding:0") != std::string::npos);
  CHECK(run("--policy full --dilation 2" + files, &out, &err) == 2);
  CHECK(err.find("--dilation") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(out_path));

  CHECK(run("--help", &out, &err) == 0);
  CHECK(out.find("usage: attention_zoo") != std::string::npos);
}
#endif
