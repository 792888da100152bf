#include "polyformer/kernels/activation.hpp"
#include "polyformer/kernels/activation_backward.hpp"

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <vector>

#include "kernels_testing.hpp"

namespace k = polyformer::kernels;
namespace kt = polyformer::kernels::testing;

namespace {

using Kernel = void (*)(const float*, float*, std::size_t);
using DispatchedKernel = void (*)(const float*, float*, std::size_t, k::Isa);

/// Runs `simd` and `scalar` out of place and `simd` in place over inputs uniform in [lo, hi) at
/// every tail length; checks both against `ref` (double) within `tol(x, ref)`.
template <class Simd, class Ref, class Tol>
void check_unary(Simd simd, Kernel scalar, float lo, float hi, Ref ref, Tol tol) {
  for (std::size_t n : kt::lengths()) {
    CAPTURE(n);
    const auto in = kt::random_vec(n, lo, hi, static_cast<std::uint32_t>(1300 + n));
    const kt::Guarded x(n, in);
    kt::Guarded y(n), ys(n), inplace(n, in);
    simd(x.data(), y.data(), n);
    scalar(x.data(), ys.data(), n);
    simd(inplace.data(), inplace.data(), n);
    for (std::size_t i = 0; i < n; ++i) {
      CAPTURE(in[i]);
      const double r = ref(static_cast<double>(in[i]));
      const double t = tol(static_cast<double>(in[i]), r);
      CHECK(std::fabs(y[i] - r) <= t);
      CHECK(std::fabs(ys[i] - r) <= t);
      CHECK(std::fabs(y[i] - ys[i]) <= 2.0 * t);
      CHECK(inplace[i] == y[i]);
    }
  }
}

/// check_unary for a kernel chosen at run time, once per kernel family this CPU runs.
template <class Ref, class Tol>
void check_unary_each_isa(DispatchedKernel simd, Kernel scalar, const char* name, float lo, float hi, Ref ref, Tol tol) {
  for (k::Isa isa : kt::runnable_isas(name)) {
    CAPTURE(k::isa_name(isa));
    check_unary([&](const float* x, float* y, std::size_t n) { simd(x, y, n, isa); }, scalar, lo, hi, ref, tol);
  }
}

}  // namespace

TEST_CASE("kernels/relu: exact at every tail length", "[kernels][activation]") {
  check_unary_each_isa(
      k::relu, k::relu_scalar, "relu", -4.0f, 4.0f, [](double x) { return x < 0 ? 0.0 : x; },
      [](double, double) { return 0.0; });
  for (k::Isa isa : kt::runnable_isas("relu")) {
    CAPTURE(k::isa_name(isa));
    float in[3] = {std::numeric_limits<float>::quiet_NaN(), -0.0f, -1.0f}, out[3];
    k::relu(in, out, 3, isa);
    CHECK(std::isnan(out[0]));
    CHECK(out[2] == 0.0f);
  }
}

TEST_CASE("kernels/gelu_erf: within 1e-6 of double at every tail length", "[kernels][activation]") {
  // Absolute bound 1e-6 over [-8, 8] (≈ 1 ulp at |y| = 8). The relative bound is the scalar twin's: it computes
  // erfc(z) = e^(-z²)·R(z) from a rounded z = x/√2, so e^(-z²) errs by ≈ z²·2u = x²·u relative; with a few more
  // roundings, (x² + 16)·2u. The vector kernels keep x²/2 exact (next test), well inside it.
  check_unary_each_isa(
      k::gelu_erf, k::gelu_erf_scalar, "gelu_erf", -8.0f, 8.0f,
      [](double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); },
      [](double x, double r) { return std::min(1e-6, (x * x + 16.0) * 2.0 * kt::u * std::fabs(r) + 1e-30); });
}

TEST_CASE("kernels/gelu_erf: within 1e-6 relative of double down the negative tail, and its backward",
          "[kernels][activation]") {
  // Down to x = -13, where y ≈ -1.3e-37 is still a normal float: a kernel that rounded x²/2 before e^(-x²/2) would
  // err by up to x²/2·2^-24 ≈ 5e-6 here. The backward Φ(x) + x·φ(x) crosses 0 near x = -0.75, where its two terms
  // (≈ ±0.2) cancel: its bound is 2e-6 relative to max(|dx|, 0.1).
  constexpr std::size_t n = 20001;
  std::vector<float> x(n), dy(n, 1.0f), y(n), dx(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = -13.0f + 21.0f * static_cast<float>(i) / float(n - 1);  // [-13, 8]
  for (k::Isa isa : kt::runnable_isas("gelu_erf tail")) {
    CAPTURE(k::isa_name(isa));
    k::gelu_erf(x.data(), y.data(), n, isa);
    k::gelu_erf_backward(x.data(), dy.data(), dx.data(), n, isa);
    double worst = 0.0, worst_grad = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      const double v = x[i], phi = 0.5 * std::erfc(-v / std::sqrt(2.0));
      const double r = v * phi, g = phi + v * std::exp(-0.5 * v * v) / std::sqrt(2.0 * std::numbers::pi);
      if (r != 0.0) worst = std::max(worst, std::fabs(y[i] - r) / std::fabs(r));
      worst_grad = std::max(worst_grad, std::fabs(dx[i] - g) / std::max(std::fabs(g), 0.1));
    }
    CHECK(worst < 1e-6);
    CHECK(worst_grad < 2e-6);
  }
}

TEST_CASE("kernels/gelu_tanh: matches the tanh formula in double at every tail length", "[kernels][activation]") {
  // y = x / (1 + E), E = e^(-2u): u has ≈ 3 roundings, so E's argument errs by ≈ 3·|2u|·u, E by that
  // plus 2 ulp, and y by E's relative error times E/(1+E) ≤ 1, plus 2 roundings.
  check_unary_each_isa(
      k::gelu_tanh, k::gelu_tanh_scalar, "gelu_tanh", -8.0f, 8.0f,
      [](double x) {
        // 0.5·(1 + tanh(u)) written as 1/(1 + e^(-2u)) (an identity): in double 1 + tanh(u) itself
        // cancels to 0 for u < -19, i.e. x < -7.3.
        const double u = std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x);
        return u >= 0.0 ? 0.5 * x * (1.0 + std::tanh(u)) : x / (1.0 + std::exp(-2.0 * u));
      },
      [](double x, double r) {
        const double two_u = std::fabs(2.0 * std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x));
        return (3.0 * two_u + 8.0) * 2.0 * kt::u * std::fabs(r) + 1e-30;
      });
}

TEST_CASE("kernels/silu: matches double at every tail length", "[kernels][activation]") {
  // y = x / (1 + e^(-x)): e^(-x) errs by ≤ 2 ulp + |x|·u (the negation is exact), y adds 2 roundings.
  check_unary_each_isa(
      k::silu, k::silu_scalar, "silu", -20.0f, 20.0f, [](double x) { return x / (1.0 + std::exp(-x)); },
      [](double x, double r) { return (std::fabs(x) + 8.0) * 2.0 * kt::u * std::fabs(r) + 1e-30; });
}

TEST_CASE("kernels/elu_plus_one: matches double at every tail length", "[kernels][activation]") {
  // x + 1 rounds once; e^x errs by ≤ 2 ulp.
  check_unary_each_isa(
      k::elu_plus_one, k::elu_plus_one_scalar, "elu_plus_one", -30.0f, 30.0f, [](double x) { return x > 0 ? x + 1.0 : std::exp(x); },
      [](double, double r) { return 4.0 * kt::u * std::fabs(r) + 1e-30; });
}

TEST_CASE("kernels/swiglu: matches double at every tail length, in place on gate or up", "[kernels][activation]") {
  for (k::Isa isa : kt::runnable_isas("swiglu"))
  for (std::size_t n : kt::lengths()) {
    CAPTURE(k::isa_name(isa), n);
    const auto vg = kt::random_vec(n, -10.0f, 10.0f, static_cast<std::uint32_t>(1400 + n));
    const auto vu = kt::random_vec(n, -3.0f, 3.0f, static_cast<std::uint32_t>(1500 + n));
    const kt::Guarded gate(n, vg), up(n, vu);
    kt::Guarded y(n), ys(n), on_gate(n, vg), on_up(n, vu);
    k::swiglu(gate.data(), up.data(), y.data(), n, isa);
    k::swiglu_scalar(gate.data(), up.data(), ys.data(), n);
    k::swiglu(on_gate.data(), up.data(), on_gate.data(), n, isa);
    k::swiglu(gate.data(), on_up.data(), on_up.data(), n, isa);
    for (std::size_t i = 0; i < n; ++i) {
      const double x = vg[i];
      const double r = x / (1.0 + std::exp(-x)) * vu[i];
      // silu's bound (see the silu test) plus one more rounding for the product.
      const double tol = (std::fabs(x) + 10.0) * 2.0 * kt::u * std::fabs(r) + 1e-30;
      CHECK(std::fabs(y[i] - r) <= tol);
      CHECK(std::fabs(ys[i] - r) <= tol);
      CHECK(std::fabs(y[i] - ys[i]) <= 2.0 * tol);
      CHECK(on_gate[i] == y[i]);
      CHECK(on_up[i] == y[i]);
    }
  }
}

TEST_CASE("kernels/activations: saturation far from 0", "[kernels][activation]") {
  const std::vector<float> in = {-100.0f, -30.0f, 30.0f, 100.0f, 1e6f};
  const std::size_t n = in.size();
  for (k::Isa isa : kt::runnable_isas("activations"))
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<float> a(n), b(n), c(n);
    k::gelu_erf(in.data(), a.data(), n, isa);
    k::gelu_tanh(in.data(), b.data(), n, isa);
    k::silu(in.data(), c.data(), n, isa);
    CAPTURE(k::isa_name(isa), in[i]);
    const float expect = in[i] > 0 ? in[i] : 0.0f;
    CHECK(a[i] == expect);
    CHECK(b[i] == expect);
    if (in[i] > 0 || in[i] < -90.0f) CHECK(c[i] == expect);  // silu(-30) ≈ -2.8e-12, not 0
  }
}
