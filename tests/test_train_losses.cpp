// Training losses and corruptions (train/losses.hpp, and label smoothing in layers/cross_entropy.hpp): cross-entropy
// with label smoothing and knowledge distillation against values from torch 1.13 and against a naive float64 oracle
// written here (checked itself by central finite differences); pooling and its backward against a float64 oracle;
// BERT masking by its statistics over many draws; T5 span corruption by its counts, its structure, the rebuilt
// sequence and the distribution of span lengths; bad input.

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "polyformer/train/losses.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

pf::MatrixView no_grad() { return pf::MatrixView(nullptr, 0, 0, Eigen::OuterStride<>(1)); }

/// Entries drawn from N(0, scale²) with a fixed seed (only tolerances depend on them).
Matrix random_matrix(Index rows, Index cols, unsigned seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = dist(gen);
  return m;
}

MatD f64(const Matrix& m) { return m.cast<double>(); }

double max_abs_diff(const Matrix& a, const MatD& b) { return (a.cast<double>() - b).cwiseAbs().maxCoeff(); }

// ---- the float64 oracle: the textbook formulas, one entry at a time ----

/// log softmax(row / temperature) of row i.
std::vector<double> log_softmax(const MatD& x, Index i, double temperature = 1.0) {
  double m = -INFINITY;
  for (Index j = 0; j < x.cols(); ++j) m = std::max(m, x(i, j) / temperature);
  double z = 0.0;
  for (Index j = 0; j < x.cols(); ++j) z += std::exp(x(i, j) / temperature - m);
  std::vector<double> out(static_cast<std::size_t>(x.cols()));
  for (Index j = 0; j < x.cols(); ++j) out[std::size_t(j)] = x(i, j) / temperature - m - std::log(z);
  return out;
}

Index counted_rows(const std::vector<int>& targets, int ignore) {
  return static_cast<Index>(std::count_if(targets.begin(), targets.end(), [&](int t) { return t != ignore; }));
}

/// Label-smoothed cross-entropy: the mean over counted rows of −Σ_j y_j log p_j, y = (1 − ε)·onehot + ε/V.
double oracle_ce(const MatD& x, const std::vector<int>& targets, int ignore, double eps) {
  const Index m = counted_rows(targets, ignore);
  const double v = static_cast<double>(x.cols());
  double total = 0.0;
  for (Index i = 0; i < x.rows(); ++i) {
    if (targets[std::size_t(i)] == ignore) continue;
    const std::vector<double> lp = log_softmax(x, i);
    for (Index j = 0; j < x.cols(); ++j) {
      const double y = (j == targets[std::size_t(i)] ? 1.0 - eps : 0.0) + eps / v;
      total -= y * lp[std::size_t(j)];
    }
  }
  return m > 0 ? total / static_cast<double>(m) : 0.0;
}

/// d oracle_ce / dx = (p − y) / m on counted rows.
MatD oracle_ce_grad(const MatD& x, const std::vector<int>& targets, int ignore, double eps) {
  const Index m = counted_rows(targets, ignore);
  const double v = static_cast<double>(x.cols());
  MatD g = MatD::Zero(x.rows(), x.cols());
  for (Index i = 0; i < x.rows(); ++i) {
    if (targets[std::size_t(i)] == ignore) continue;
    const std::vector<double> lp = log_softmax(x, i);
    for (Index j = 0; j < x.cols(); ++j) {
      const double y = (j == targets[std::size_t(i)] ? 1.0 - eps : 0.0) + eps / v;
      g(i, j) = (std::exp(lp[std::size_t(j)]) - y) / static_cast<double>(m);
    }
  }
  return g;
}

struct KdSettings {
  double temperature, alpha;
  int ignore;
  double eps;
};

/// alpha·T²·(1/m)·Σ_rows Σ_j q_j (log q_j − log p_j) + (1 − alpha)·oracle_ce.
double oracle_kd(const MatD& s, const MatD& t, const std::vector<int>& targets, const KdSettings& k) {
  const Index m = counted_rows(targets, k.ignore);
  if (m == 0) return 0.0;
  double kl = 0.0;
  for (Index i = 0; i < s.rows(); ++i) {
    if (targets[std::size_t(i)] == k.ignore) continue;
    const std::vector<double> lp = log_softmax(s, i, k.temperature), lq = log_softmax(t, i, k.temperature);
    for (std::size_t j = 0; j < lp.size(); ++j) kl += std::exp(lq[j]) * (lq[j] - lp[j]);
  }
  return k.alpha * k.temperature * k.temperature * kl / static_cast<double>(m) +
         (1.0 - k.alpha) * oracle_ce(s, targets, k.ignore, k.eps);
}

/// d oracle_kd / ds = alpha·T·(p_T − q_T)/m + (1 − alpha)·d oracle_ce / ds.
MatD oracle_kd_grad(const MatD& s, const MatD& t, const std::vector<int>& targets, const KdSettings& k) {
  const Index m = counted_rows(targets, k.ignore);
  MatD g = (1.0 - k.alpha) * oracle_ce_grad(s, targets, k.ignore, k.eps);
  for (Index i = 0; i < s.rows(); ++i) {
    if (targets[std::size_t(i)] == k.ignore) continue;
    const std::vector<double> lp = log_softmax(s, i, k.temperature), lq = log_softmax(t, i, k.temperature);
    for (Index j = 0; j < s.cols(); ++j)
      g(i, j) += k.alpha * k.temperature * (std::exp(lp[std::size_t(j)]) - std::exp(lq[std::size_t(j)])) /
                 static_cast<double>(m);
  }
  return g;
}

/// Central differences of f at x, step h.
template <typename F>
MatD finite_differences(const MatD& x, F f, double h = 1e-5) {
  MatD g(x.rows(), x.cols());
  MatD y = x;
  for (Index i = 0; i < x.size(); ++i) {
    const double keep = y.data()[i];
    y.data()[i] = keep + h;
    const double up = f(y);
    y.data()[i] = keep - h;
    const double down = f(y);
    y.data()[i] = keep;
    g.data()[i] = (up - down) / (2.0 * h);
  }
  return g;
}

/// Pooling of hidden (batch·seq, d) by the definition; lengths empty = full sequences.
MatD oracle_pool(const MatD& h, Index batch, pf::Pooling p, const std::vector<Index>& lengths) {
  const Index seq = h.rows() / batch;
  MatD out = MatD::Zero(batch, h.cols());
  for (Index b = 0; b < batch; ++b) {
    const Index len = lengths.empty() ? seq : lengths[std::size_t(b)];
    for (Index c = 0; c < h.cols(); ++c) {
      if (p == pf::Pooling::first) out(b, c) = h(b * seq, c);
      if (p == pf::Pooling::last) out(b, c) = h(b * seq + len - 1, c);
      if (p == pf::Pooling::mean) {
        for (Index r = 0; r < len; ++r) out(b, c) += h(b * seq + r, c);
        out(b, c) /= static_cast<double>(len);
      }
    }
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Cross-entropy with label smoothing

namespace {

/// The logits of the torch checks: multiples of 1/4, so float32 holds them exactly.
const Matrix& torch_logits() {
  static const Matrix m = [] {
    Matrix x(4, 5);
    x << 0.5f, -1.25f, 2.0f, 0.0f, 0.75f,  //
        1.5f, 0.25f, -0.5f, 3.0f, -2.0f,   //
        -0.75f, 0.5f, 1.0f, -1.5f, 0.25f,  //
        2.5f, -0.25f, 0.0f, 1.25f, -1.0f;
    return x;
  }();
  return m;
}

}  // namespace

TEST_CASE("cross_entropy: label smoothing matches torch 1.13", "[train][losses]") {
  // Made with /usr/bin/python3 (torch 1.13), L = the logits above as float64 with requires_grad:
  //   loss = F.cross_entropy(L, torch.tensor([2, -100, 0, 4]), label_smoothing=0.1); loss.backward(); L.grad
  //   loss = F.cross_entropy(L, torch.tensor([2, 3, 0, 4]), ignore_index=3, label_smoothing=0.3); loss.backward()
  const Matrix& logits = torch_logits();
  Matrix expected_grad(4, 5), d(4, 5);
  {
    expected_grad << 0.03750673514286808, 0.0010095195613972132, -0.10869521457722313, 0.020125855874621672,
        0.05005310399833621, 0, 0, 0, 0, 0, -0.28185694608643524, 0.07992776683714009, 0.13610341777528734,
        0.005052615518285044, 0.06077314595572273, 0.22122005370749168, 0.007901643964264307, 0.012039414461650933,
        0.05862397186126652, -0.2997850839946735;
    const std::vector<int> targets = {2, -100, 0, 4};
    const double loss = pf::cross_entropy(pf::cview(logits), targets, pf::view(d), pf::CrossEntropyOptions{-100, 0.1});
    CHECK(loss == Approx(2.314740643909868).epsilon(1e-7));
    CHECK((d - expected_grad).cwiseAbs().maxCoeff() < 1e-7f);
    CHECK(pf::cross_entropy(pf::cview(logits), targets, no_grad(), {.label_smoothing = 0.1}) == loss);
    Matrix in_place = logits;  // dlogits may alias logits
    CHECK(pf::cross_entropy(pf::cview(in_place), targets, pf::view(in_place), {.label_smoothing = 0.1}) == loss);
    CHECK(in_place == d);
  }
  {
    expected_grad << 0.024173401809534742, -0.01232381377193612, -0.05536188124388979, 0.00679252254128834,
        0.03671977066500288, 0, 0, 0, 0, 0, -0.2285236127531019, 0.0665944335038068, 0.12277008444195406,
        -0.008280717815048286, 0.04743981262238942, 0.20788672037415842, -0.005431689369069021, -0.0012939188716823947,
        0.045290638527933205, -0.24645175066134015;
    const std::vector<int> targets = {2, 3, 0, 4};
    const double loss =
        pf::cross_entropy(pf::cview(logits), targets, pf::view(d), {.ignore_index = 3, .label_smoothing = 0.3});
    CHECK(loss == Approx(2.278073977243201).epsilon(1e-7));
    CHECK((d - expected_grad).cwiseAbs().maxCoeff() < 1e-7f);
  }
}

TEST_CASE("cross_entropy: label smoothing against the float64 oracle and finite differences", "[train][losses]") {
  const Matrix logits = random_matrix(9, 13, 7, 2.5f);
  const std::vector<int> targets = {3, -100, 12, 0, 7, -100, 5, 5, 11};
  Matrix d(9, 13);
  for (const double eps : {0.0, 0.05, 0.2, 0.5, 1.0}) {
    INFO("label_smoothing " << eps);
    const double loss = pf::cross_entropy(pf::cview(logits), targets, pf::view(d), {.label_smoothing = eps});
    const MatD x = f64(logits);
    // float precision: the exponentials are float (vector kernels), the sums and log Z double
    CHECK(loss == Approx(oracle_ce(x, targets, -100, eps)).epsilon(1e-6));
    const MatD g = oracle_ce_grad(x, targets, -100, eps);
    const MatD fd = finite_differences(x, [&](const MatD& y) { return oracle_ce(y, targets, -100, eps); });
    CHECK((g - fd).cwiseAbs().maxCoeff() < 1e-8);
    CHECK(max_abs_diff(d, g) < 2e-7);
    CHECK(d.row(1).norm() == 0.0f);
    CHECK(d.row(5).norm() == 0.0f);
  }
  // ε = 0 through the options is the plain overload, bit for bit.
  Matrix plain(9, 13);
  CHECK(pf::cross_entropy(pf::cview(logits), targets, pf::view(plain)) ==
        pf::cross_entropy(pf::cview(logits), targets, pf::view(d), pf::CrossEntropyOptions{}));
  CHECK(plain == d);
  // No counted row: loss 0, gradient 0, whatever ε.
  const std::vector<int> none(9, -100);
  CHECK(pf::cross_entropy(pf::cview(logits), none, pf::view(d), {.label_smoothing = 0.1}) == 0.0);
  CHECK(d.norm() == 0.0f);
}

TEST_CASE("cross_entropy: rows in parallel give the one-thread result bit for bit, aliased or not", "[train][losses]") {
  const Index n = 37, vocab = 1003;  // a vocabulary past every vector width, rows that split unevenly
  const Matrix logits = random_matrix(n, vocab, 5, 4.0f);
  std::vector<int> targets(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) targets[std::size_t(i)] = i % 5 == 3 ? -100 : static_cast<int>((i * 131) % vocab);
  for (const double eps : {0.0, 0.2}) {
    Matrix d1(n, vocab), d2(n, vocab);
    const double l1 = pf::cross_entropy(pf::cview(logits), targets, pf::view(d1), {-100, eps}, pf::Context{1});
    const double l2 = pf::cross_entropy(pf::cview(logits), targets, pf::view(d2), {-100, eps}, pf::Context{2});
    CHECK(l1 == l2);
    CHECK(d1 == d2);
    Matrix in_place = logits;
    CHECK(pf::cross_entropy(pf::cview(in_place), targets, pf::view(in_place), {-100, eps}, pf::Context{2}) == l1);
    CHECK(in_place == d1);
    const double no_grad = pf::cross_entropy(pf::cview(logits), targets,
                                             pf::MatrixView(nullptr, 0, 0, Eigen::OuterStride<>(1)), {-100, eps},
                                             pf::Context{2});
    CHECK(no_grad == l1);
  }
}

TEST_CASE("cross_entropy: bad label smoothing or targets", "[train][losses]") {
  const Matrix logits = random_matrix(3, 4, 1);
  Matrix d(3, 4);
  const std::vector<int> targets = {0, 1, 2};
  CHECK_THROWS_WITH(pf::cross_entropy(pf::cview(logits), targets, pf::view(d), {.label_smoothing = 1.5}),
                    Catch::Contains("cross_entropy: label_smoothing is 1.5, expected 0..1"));
  CHECK_THROWS_AS(pf::cross_entropy(pf::cview(logits), targets, pf::view(d), {.label_smoothing = -0.1}),
                  pf::config_error);
  const std::vector<int> bad = {0, 4, 2};
  CHECK_THROWS_WITH(pf::cross_entropy(pf::cview(logits), bad, pf::view(d), {.label_smoothing = 0.1}),
                    Catch::Contains("cross_entropy: target 1 is 4, expected 0..3"));
}

// ---------------------------------------------------------------------------------------------------------------
// Distillation

TEST_CASE("distillation_loss: matches torch 1.13 (KLDivLoss batchmean over counted rows)", "[train][losses]") {
  // Made with /usr/bin/python3 (torch 1.13), S and T below as float64, S.requires_grad_():
  //   keep = tg != -100 with tg = torch.tensor([1, -100, 3]); Tt, a = 2.0, 0.7
  //   kl = torch.nn.KLDivLoss(reduction='batchmean')(F.log_softmax(S[keep] / Tt, -1), F.softmax(T[keep] / Tt, -1))
  //   loss = a * Tt * Tt * kl + (1 - a) * F.cross_entropy(S, tg, label_smoothing=0.1); loss.backward(); S.grad
  Matrix s(3, 4), t(3, 4), expected_grad(3, 4), d(3, 4);
  s << 0.5f, -1.0f, 2.0f, 0.25f, 1.0f, 0.0f, -0.5f, 0.75f, -1.5f, 0.5f, 1.25f, 0.0f;
  t << 1.0f, -0.5f, 1.5f, 0.0f, 0.0f, 2.0f, 0.5f, -1.0f, -1.0f, 1.0f, 2.0f, -0.25f;
  expected_grad << -0.03223275651189654, -0.15797044122598214, 0.16404517345500053, 0.02615802428287827, 0, 0, 0, 0,
      0.0005080244811531945, 0.03239599992117198, 0.03639517668375072, -0.06929920108607585;
  const std::vector<int> targets = {1, -100, 3};
  const pf::DistillationOptions opt{.temperature = 2.0, .alpha = 0.7, .ignore_index = -100, .label_smoothing = 0.1};
  const double loss = pf::distillation_loss(pf::cview(s), pf::cview(t), targets, opt, pf::view(d));
  CHECK(loss == Approx(0.8190916766623916).epsilon(1e-7));
  CHECK((d - expected_grad).cwiseAbs().maxCoeff() < 1e-7f);
  Matrix in_place = s;  // dstudent may alias the student logits
  CHECK(pf::distillation_loss(pf::cview(in_place), pf::cview(t), targets, opt, pf::view(in_place)) == loss);
  CHECK(in_place == d);
  CHECK(pf::distillation_loss(pf::cview(s), pf::cview(t), targets, opt, no_grad()) == loss);
}

TEST_CASE("distillation_loss: against the float64 oracle and finite differences", "[train][losses]") {
  const Matrix s = random_matrix(7, 11, 3, 2.0f), t = random_matrix(7, 11, 4, 3.0f);
  const std::vector<int> targets = {4, 0, -1, 10, 2, -1, 6};
  Matrix d(7, 11);
  for (const KdSettings k :
       {KdSettings{1.0, 0.5, -1, 0.0}, KdSettings{2.0, 0.7, -1, 0.1}, KdSettings{4.0, 1.0, -1, 0.0},
        KdSettings{0.5, 0.0, -1, 0.2}, KdSettings{3.0, 0.25, -1, 0.0}}) {
    INFO("T " << k.temperature << ", alpha " << k.alpha << ", eps " << k.eps);
    const pf::DistillationOptions opt{k.temperature, k.alpha, k.ignore, k.eps};
    const double loss = pf::distillation_loss(pf::cview(s), pf::cview(t), targets, opt, pf::view(d));
    const MatD x = f64(s), y = f64(t);
    CHECK(loss == Approx(oracle_kd(x, y, targets, k)).epsilon(1e-9));
    const MatD g = oracle_kd_grad(x, y, targets, k);
    const MatD fd = finite_differences(x, [&](const MatD& z) { return oracle_kd(z, y, targets, k); });
    CHECK((g - fd).cwiseAbs().maxCoeff() < 1e-8);
    CHECK(max_abs_diff(d, g) < 2e-7);
    CHECK(d.row(2).norm() == 0.0f);
    CHECK(d.row(5).norm() == 0.0f);
  }
  // alpha = 0 is the hard cross-entropy (to float precision: cross_entropy takes its exponentials in float, the
  // distillation in double); a student equal to its teacher with alpha = 1 has loss 0 and gradient 0.
  Matrix dce(7, 11);
  const double ce =
      pf::cross_entropy(pf::cview(s), targets, pf::view(dce), {.ignore_index = -1, .label_smoothing = 0.1});
  CHECK(pf::distillation_loss(pf::cview(s), pf::cview(t), targets, {3.0, 0.0, -1, 0.1}, pf::view(d)) ==
        Approx(ce).epsilon(1e-7));
  CHECK((d - dce).cwiseAbs().maxCoeff() < 1e-7f);
  CHECK(pf::distillation_loss(pf::cview(s), pf::cview(s), targets, {3.0, 1.0, -1, 0.0}, pf::view(d)) ==
        Approx(0.0).margin(1e-12));
  CHECK(d.cwiseAbs().maxCoeff() < 1e-7f);
}

TEST_CASE("distillation_loss: bad input", "[train][losses]") {
  const Matrix s = random_matrix(3, 4, 1), t = random_matrix(3, 5, 2);
  Matrix d(3, 4);
  const std::vector<int> targets = {0, 1, 2};
  CHECK_THROWS_WITH(pf::distillation_loss(pf::cview(s), pf::cview(t), targets, {}, pf::view(d)),
                    Catch::Contains("distillation_loss: teacher_logits has shape (3, 5), expected (3, 4)"));
  const Matrix t4 = random_matrix(3, 4, 2);
  CHECK_THROWS_WITH(pf::distillation_loss(pf::cview(s), pf::cview(t4), targets, {.temperature = 0.0}, pf::view(d)),
                    Catch::Contains("distillation_loss: temperature is 0"));
  CHECK_THROWS_WITH(pf::distillation_loss(pf::cview(s), pf::cview(t4), targets, {.alpha = 1.5}, pf::view(d)),
                    Catch::Contains("distillation_loss: alpha is 1.5, expected 0..1"));
  const std::vector<int> short_targets = {0, 1};
  CHECK_THROWS_WITH(pf::distillation_loss(pf::cview(s), pf::cview(t4), short_targets, {}, pf::view(d)),
                    Catch::Contains("distillation_loss: 2 targets for 3 rows"));
  Matrix wrong(2, 4);
  CHECK_THROWS_WITH(pf::distillation_loss(pf::cview(s), pf::cview(t4), targets, {}, pf::view(wrong)),
                    Catch::Contains("distillation_loss: dstudent has shape (2, 4), expected (3, 4)"));
}

// ---------------------------------------------------------------------------------------------------------------
// BERT masking

TEST_CASE("mask_tokens: BERT's 15 % with 80/10/10, never a special token", "[train][losses]") {
  const int vocab = 1000, mask_id = 103;
  const std::vector<int> special = {0, 101, 102};
  std::vector<int> tokens(200000);
  std::mt19937_64 source(5);
  for (std::size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = i % 50 == 0 ? 101 : i % 97 == 0 ? 0 : int(source() % 1000);
  const pf::MaskedLMOptions opt{.mask_token_id = mask_id, .vocab_size = vocab, .special_tokens = special};
  std::mt19937_64 rng(42);
  const pf::MaskedLMBatch batch = pf::mask_tokens(tokens, opt, rng);
  REQUIRE(batch.inputs.size() == tokens.size());
  REQUIRE(batch.targets.size() == tokens.size());
  std::size_t eligible = 0, chosen = 0, masked = 0, replaced = 0, unchanged = 0;
  double replaced_sum = 0.0;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const bool is_special = std::find(special.begin(), special.end(), tokens[i]) != special.end();
    if (is_special) {
      CHECK(batch.targets[i] == -100);
      CHECK(batch.inputs[i] == tokens[i]);
      continue;
    }
    ++eligible;
    if (batch.targets[i] == -100) {
      REQUIRE(batch.inputs[i] == tokens[i]);  // not chosen: untouched
      continue;
    }
    REQUIRE(batch.targets[i] == tokens[i]);  // chosen: the original is the target
    ++chosen;
    if (batch.inputs[i] == mask_id) {
      ++masked;
    } else if (batch.inputs[i] == tokens[i]) {
      ++unchanged;
    } else {
      ++replaced;
      REQUIRE((batch.inputs[i] >= 0 && batch.inputs[i] < vocab));
      replaced_sum += batch.inputs[i];
    }
  }
  const double c = double(chosen);
  CHECK(c / double(eligible) == Approx(0.15).margin(0.005));
  CHECK(double(masked) / c == Approx(0.8).margin(0.01));
  CHECK(double(replaced) / c == Approx(0.1).margin(0.01));
  CHECK(double(unchanged) / c == Approx(0.1).margin(0.01));
  CHECK(replaced_sum / double(replaced) == Approx(499.5).margin(15.0));  // uniform over 0..999: σ of the mean ≈ 5

  // Deterministic per seed, through either overload; another seed differs.
  const std::vector<int> some(tokens.begin(), tokens.begin() + 400);
  const pf::MaskedLMBatch a = pf::mask_tokens(some, opt, std::uint64_t(9));
  std::mt19937_64 rng9(9);
  const pf::MaskedLMBatch b = pf::mask_tokens(some, opt, rng9);
  CHECK(a.inputs == b.inputs);
  CHECK(a.targets == b.targets);
  const pf::MaskedLMBatch other = pf::mask_tokens(some, opt, std::uint64_t(10));
  CHECK(other.targets != a.targets);

  // probability 0 chooses nothing, 1 every non-special token; a custom ignore_index marks the rest.
  pf::MaskedLMOptions all = opt;
  all.probability = 1.0;
  all.ignore_index = -1;
  const pf::MaskedLMBatch everything = pf::mask_tokens(some, all, std::uint64_t(1));
  for (std::size_t i = 0; i < some.size(); ++i) {
    const bool is_special = std::find(special.begin(), special.end(), some[i]) != special.end();
    CHECK(everything.targets[i] == (is_special ? -1 : some[i]));
  }
  pf::MaskedLMOptions none = opt;
  none.probability = 0.0;
  const pf::MaskedLMBatch nothing = pf::mask_tokens(some, none, std::uint64_t(1));
  CHECK(nothing.inputs == some);
  CHECK(std::all_of(nothing.targets.begin(), nothing.targets.end(), [](int t) { return t == -100; }));
}

TEST_CASE("mask_tokens: bad options or tokens", "[train][losses]") {
  const std::vector<int> tokens = {5, 6, 7};
  std::mt19937_64 rng(1);
  CHECK_THROWS_WITH(pf::mask_tokens(tokens, {.mask_token_id = 3, .vocab_size = 0}, rng),
                    Catch::Contains("mask_tokens: vocab_size is 0, expected > 0"));
  CHECK_THROWS_WITH(pf::mask_tokens(tokens, {.mask_token_id = 10, .vocab_size = 10}, rng),
                    Catch::Contains("mask_tokens: mask_token_id is 10, expected 0..9"));
  CHECK_THROWS_WITH(pf::mask_tokens(tokens, {.mask_token_id = 3, .vocab_size = 10, .probability = 1.2}, rng),
                    Catch::Contains("mask_tokens: probability is 1.2, expected 0..1"));
  CHECK_THROWS_WITH(pf::mask_tokens(tokens, {.mask_token_id = 3, .vocab_size = 7}, rng),
                    Catch::Contains("mask_tokens: token 2 is 7, expected 0..6 or one of special_tokens"));
  CHECK_NOTHROW(pf::mask_tokens(tokens, {.mask_token_id = 3, .vocab_size = 7, .special_tokens = {7}}, rng));
}

// ---------------------------------------------------------------------------------------------------------------
// T5 span corruption

namespace {

struct Parsed {
  std::vector<int> input_sentinels, target_sentinels;
  std::vector<Index> noise_lengths, kept_lengths;
  std::vector<int> rebuilt;
};

/// Reads a corruption back, knowing sentinels are the ids >= 30000: the sentinels in order, the span lengths, and the
/// original rebuilt by putting each target span in place of its sentinel.
Parsed parse(const pf::SpanCorruption& c, int eos) {
  auto is_sentinel = [](int id) { return id >= 30000; };
  std::vector<int> in = c.inputs, out = c.targets;
  if (eos >= 0) {
    REQUIRE(in.back() == eos);
    REQUIRE(out.back() == eos);
    in.pop_back();
    out.pop_back();
  }
  Parsed p;
  std::map<int, std::vector<int>> spans;
  REQUIRE(!out.empty());
  REQUIRE(is_sentinel(out.front()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (is_sentinel(out[i])) {
      p.target_sentinels.push_back(out[i]);
      p.noise_lengths.push_back(0);
    } else {
      spans[p.target_sentinels.back()].push_back(out[i]);
      ++p.noise_lengths.back();
    }
  }
  Index run = 0;
  for (const int id : in) {
    if (is_sentinel(id)) {
      p.input_sentinels.push_back(id);
      p.kept_lengths.push_back(run);
      run = 0;
      p.rebuilt.insert(p.rebuilt.end(), spans[id].begin(), spans[id].end());
    } else {
      ++run;
      p.rebuilt.push_back(id);
    }
  }
  CHECK(run == 0);  // the inputs end on a sentinel: the last span is noise
  return p;
}

}  // namespace

TEST_CASE("corrupt_spans: T5's counts, sentinels in order, the original rebuilt", "[train][losses]") {
  struct Case {
    Index length;
    double density, mean;
    Index noise, spans;  // worked out by hand, rounding half to even as Python's round
  };
  const Case cases[] = {
      {10, 0.15, 3.0, 2, 1},     // 1.5 → 2; 0.67 → 1
      {30, 0.15, 3.0, 4, 1},     // 4.5 → 4; 1.33 → 1
      {50, 0.15, 3.0, 8, 3},     // 7.5 → 8; 2.67 → 3
      {70, 0.15, 3.0, 10, 3},    // 10.5 → 10; 3.33 → 3
      {100, 0.15, 3.0, 15, 5},   //
      {512, 0.15, 3.0, 77, 26},  // 76.8 → 77; 25.67 → 26
      {60, 0.15, 2.0, 9, 4},     // 9; 4.5 → 4
      {2, 0.15, 3.0, 1, 1},      // 0.3 → 0, clamped to 1
      {5, 0.99, 3.0, 4, 1},      // 4.95 → 5, clamped to n − 1 = 4; 1.33 → 1
      {4, 0.75, 1.0, 3, 1},      // 3 noise spans wanted but only 1 kept token: 1 span
      {18, 0.25, 1.5, 4, 3},     // 4.5 → 4; 2.67 → 3
  };
  std::mt19937_64 rng(11);
  for (const Case& k : cases) {
    for (const int eos : {-1, 1}) {
      INFO("length " << k.length << ", density " << k.density << ", mean " << k.mean << ", eos " << eos);
      std::vector<int> tokens(static_cast<std::size_t>(k.length));
      for (auto& id : tokens) id = 2 + int(rng() % 1000);
      const pf::SpanCorruptionOptions opt{.noise_density = k.density, .mean_span_length = k.mean, .eos_id = eos};
      const pf::SpanCorruption c = pf::corrupt_spans(tokens, opt, rng);
      const std::size_t extra = eos >= 0 ? 1 : 0;
      CHECK(c.inputs.size() == std::size_t(k.length - k.noise + k.spans) + extra);
      CHECK(c.targets.size() == std::size_t(k.noise + k.spans) + extra);
      const Parsed p = parse(c, eos);
      std::vector<int> expected_sentinels;
      for (Index s = 0; s < k.spans; ++s) expected_sentinels.push_back(32099 - int(s));
      CHECK(p.input_sentinels == expected_sentinels);  // each once, in order
      CHECK(p.target_sentinels == expected_sentinels);
      CHECK(p.rebuilt == tokens);
      CHECK(std::all_of(p.noise_lengths.begin(), p.noise_lengths.end(), [](Index l) { return l > 0; }));
      CHECK(std::all_of(p.kept_lengths.begin(), p.kept_lengths.end(), [](Index l) { return l > 0; }));
    }
  }
}

TEST_CASE("corrupt_spans: span lengths are uniform compositions with mean noise/spans", "[train][losses]") {
  // For noise 15 split into 5 positive spans, all C(14, 4) = 1001 splits equally likely, a span has length l with
  // probability C(14 − l, 3) / 1001 (the other four share 15 − l): 286, 220, 165, 120, ... / 1001.
  std::vector<int> tokens(100);
  for (int i = 0; i < 100; ++i) tokens[std::size_t(i)] = i;
  std::mt19937_64 rng(3);
  std::map<Index, double> histogram;
  const int draws = 20000;
  for (int r = 0; r < draws; ++r) {
    const Parsed p = parse(pf::corrupt_spans(tokens, {}, rng), -1);
    REQUIRE(p.noise_lengths.size() == 5);
    for (const Index l : p.noise_lengths) histogram[l] += 1.0 / (5.0 * draws);
  }
  auto choose3 = [](double n) { return n * (n - 1) * (n - 2) / 6.0; };
  for (Index l = 1; l <= 6; ++l) {
    INFO("span length " << l);
    CHECK(histogram[l] == Approx(choose3(double(14 - l)) / 1001.0).margin(0.006));
  }
  // Over varied lengths the mean noise span is about mean_span_length.
  double noise = 0.0, spans = 0.0;
  for (int r = 0; r < 2000; ++r) {
    std::vector<int> t(static_cast<std::size_t>(20 + rng() % 500), 7);
    const Parsed p = parse(pf::corrupt_spans(t, {}, rng), -1);
    spans += double(p.noise_lengths.size());
    for (const Index l : p.noise_lengths) noise += double(l);
  }
  CHECK(noise / spans == Approx(3.0).margin(0.05));
}

TEST_CASE("corrupt_spans: determinism, custom sentinels, bad input", "[train][losses]") {
  std::vector<int> tokens(64);
  for (int i = 0; i < 64; ++i) tokens[std::size_t(i)] = 5 + i;
  const pf::SpanCorruption a = pf::corrupt_spans(tokens, {}, std::uint64_t(8));
  std::mt19937_64 rng8(8);
  const pf::SpanCorruption b = pf::corrupt_spans(tokens, {}, rng8);
  CHECK(a.inputs == b.inputs);
  CHECK(a.targets == b.targets);
  CHECK(pf::corrupt_spans(tokens, {}, std::uint64_t(9)).inputs != a.inputs);
  // Sentinels counting up from 1000 (a vocabulary with sentinels appended); density 0.5: 32 noise tokens.
  const pf::SpanCorruption up =
      pf::corrupt_spans(tokens, {.noise_density = 0.5, .first_sentinel = 1000, .sentinel_step = 1}, std::uint64_t(2));
  std::vector<int> sentinels;
  for (const int id : up.inputs)
    if (id >= 1000) sentinels.push_back(id);
  CHECK(sentinels == std::vector<int>{1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010});
  CHECK(up.targets.size() == 32 + 11);  // 32/3 = 10.67 → 11 spans, no eos

  const std::vector<int> one = {4};
  CHECK_THROWS_WITH(pf::corrupt_spans(one, {}, std::uint64_t(1)),
                    Catch::Contains("corrupt_spans: tokens has 1 entries, expected at least 2"));
  CHECK_THROWS_WITH(pf::corrupt_spans(tokens, {.noise_density = 1.0}, std::uint64_t(1)),
                    Catch::Contains("corrupt_spans: noise_density is 1"));
  CHECK_THROWS_WITH(pf::corrupt_spans(tokens, {.sentinel_step = 0}, std::uint64_t(1)),
                    Catch::Contains("corrupt_spans: sentinel_step is 0"));
  CHECK_THROWS_WITH(pf::corrupt_spans(tokens, {.noise_density = 0.5, .first_sentinel = 3}, std::uint64_t(1)),
                    Catch::Contains("corrupt_spans: sentinels run from 3 to -7 for 11 spans"));
}

// ---------------------------------------------------------------------------------------------------------------
// Pooling and classification

TEST_CASE("pool and pool_backward: first, last, mean against the float64 oracle", "[train][losses]") {
  const Index batch = 3, seq = 5, d = 4;
  const Matrix hidden = random_matrix(batch * seq, d, 21);
  const Matrix w = random_matrix(batch, d, 22);  // the loss is L = Σ w ⊙ pool(hidden), so dL/dpooled = w
  for (const bool padded : {false, true}) {
    const std::vector<Index> lengths = padded ? std::vector<Index>{5, 2, 1} : std::vector<Index>{};
    for (const pf::Pooling p : {pf::Pooling::first, pf::Pooling::last, pf::Pooling::mean}) {
      INFO("pooling " << int(p) << ", padded " << padded);
      Matrix out(batch, d), dhidden = Matrix::Constant(batch * seq, d, 9.0f);  // overwritten, not accumulated
      pf::pool(pf::cview(hidden), batch, p, pf::view(out), lengths);
      CHECK(max_abs_diff(out, oracle_pool(f64(hidden), batch, p, lengths)) < 1e-6);
      pf::pool_backward(pf::cview(w), batch, seq, p, pf::view(dhidden), lengths);
      const MatD fd = finite_differences(
          f64(hidden), [&](const MatD& h) { return oracle_pool(h, batch, p, lengths).cwiseProduct(f64(w)).sum(); });
      CHECK(max_abs_diff(dhidden, fd) < 1e-6);
    }
  }
}

TEST_CASE("pool, pool_backward, classification_loss: shapes and reuse of cross_entropy", "[train][losses]") {
  const Matrix hidden = random_matrix(6, 4, 1);
  Matrix out(2, 4), dhidden(6, 4);
  CHECK_THROWS_WITH(pf::pool(pf::cview(hidden), 4, pf::Pooling::mean, pf::view(out)),
                    Catch::Contains("pool: hidden has 6 rows, expected batch (4) · seq"));
  Matrix out3(3, 4);
  CHECK_THROWS_WITH(pf::pool(pf::cview(hidden), 2, pf::Pooling::first, pf::view(out3)),
                    Catch::Contains("pool: out has shape (3, 4), expected (2, 4)"));
  const std::vector<Index> too_long = {3, 4};
  CHECK_THROWS_WITH(pf::pool(pf::cview(hidden), 2, pf::Pooling::last, pf::view(out), too_long),
                    Catch::Contains("pool: lengths[1] is 4, expected 1..3"));
  CHECK_THROWS_WITH(pf::pool_backward(pf::cview(out), 2, 2, pf::Pooling::mean, pf::view(dhidden)),
                    Catch::Contains("pool_backward: dhidden has shape (6, 4), expected (4, 4)"));

  const Matrix logits = random_matrix(5, 3, 2);
  const std::vector<int> labels = {0, 2, 1, -100, 2};
  Matrix d1(5, 3), d2(5, 3);
  CHECK(pf::classification_loss(pf::cview(logits), labels, pf::view(d1), {.label_smoothing = 0.1}) ==
        pf::cross_entropy(pf::cview(logits), labels, pf::view(d2), {.label_smoothing = 0.1}));
  CHECK(d1 == d2);
}
