// AdamW, SGD (momentum, dampening, Nesterov) and clipping by the global norm against PyTorch 1.13's torch.optim and
// torch.nn.utils.clip_grad_norm_ (tests/torch_optim_reference.py, written at configure time): six steps of given
// gradients with a changing learning rate, weight decay on the matrix only; parameters and optimizer state compared.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <type_traits>
#include <vector>

#include "polyformer/io/safetensors.hpp"
#include "polyformer/train/optimizer.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;
using pf::Vector;

#ifdef POLYFORMER_OPTIM_REFERENCE_DIR

namespace {

/// The reference file, or a clear failure when configure could not write it.
pf::io::SafetensorsFile reference() {
  const std::string path = std::string(POLYFORMER_OPTIM_REFERENCE_DIR) + "/optim.safetensors";
  INFO("the optimizer references come from tests/torch_optim_reference.py at configure time (python3-torch): " << path);
  REQUIRE(std::filesystem::exists(path));
  return pf::io::SafetensorsFile::open(path);
}

/// ‖got − want‖ / ‖want‖ for float vectors.
double relative(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    diff += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    norm += double(want[i]) * want[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-300));
}

/// A two-tensor "model": w (5, 7) decayed, b (7) not, listed as parameters and as gradients.
struct Toy {
  Matrix w, gw;
  Vector b, gb;
  pf::ParameterList params;
  pf::GradientList grads;

  explicit Toy(const pf::io::SafetensorsFile& file) {
    const auto w0 = file.tensor("w"), b0 = file.tensor("b");
    w = Eigen::Map<const Matrix>(w0.data.data(), 5, 7);
    b = Eigen::Map<const Vector>(b0.data.data(), 7);
    gw = Matrix::Zero(5, 7);
    gb = Vector::Zero(7);
    params.add_matrix("w", w);
    params.add_vector("b", b);
    grads.add_matrix("w", gw, 5, 7);
    grads.add_vector("b", gb, 7);
  }
  void load_gradients(const pf::io::SafetensorsFile& file, int step) {
    const auto g_w = file.tensor("grad." + std::to_string(step) + ".w"), g_b = file.tensor("grad." + std::to_string(step) + ".b");
    gw = Eigen::Map<const Matrix>(g_w.data.data(), 5, 7);
    gb = Eigen::Map<const Vector>(g_b.data.data(), 7);
  }
  std::vector<float> values(const std::string& name) const {
    const Matrix& m = name == "w" ? w : Matrix(b.transpose());
    return std::vector<float>(m.data(), m.data() + m.size());
  }
};

// The script's learning rates: 1e-3·(k + 1) for three steps, then 3e-3·0.5^k.
const double lrs[6] = {1e-3, 2e-3, 3e-3, 3e-3, 1.5e-3, 0.75e-3};

template <typename Optimizer>
void check_case(const std::string& name, Optimizer& opt, bool clip) {
  INFO(name);
  const auto file = reference();
  Toy toy(file);
  for (int k = 0; k < 6; ++k) {
    toy.load_gradients(file, k);
    const float scale = clip ? pf::clip_coefficient(toy.grads, 1.5) : 1.0f;
    opt.step(toy.params, toy.grads, lrs[k], scale);
  }
  for (const std::string p : {"w", "b"}) {
    INFO(p);
    CHECK(relative(toy.values(p), file.tensor(name + "." + p).data) <= 1e-6);
    if constexpr (std::is_same_v<Optimizer, pf::AdamW>) {
      const auto* s = opt.state(p);
      REQUIRE(s != nullptr);
      CHECK(s->step == 6);
      CHECK(relative(s->m, file.tensor(name + ".m." + p).data) <= 1e-6);
      CHECK(relative(s->v, file.tensor(name + ".v." + p).data) <= 1e-6);
    } else if (opt.options().momentum != 0.0) {
      const auto* buffer = opt.momentum_buffer(p);
      REQUIRE(buffer != nullptr);
      CHECK(relative(*buffer, file.tensor(name + ".buf." + p).data) <= 1e-6);
    }
  }
}

}  // namespace

TEST_CASE("AdamW equals torch.optim.AdamW, with and without clipping", "[train][optimizer]") {
  pf::AdamW adamw(pf::AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  check_case("adamw", adamw, false);
  pf::AdamW clipped(pf::AdamWOptions{0.9, 0.999, 1e-8, 0.1});
  check_case("adamw_clip", clipped, true);
}

TEST_CASE("SGD equals torch.optim.SGD: plain, momentum with dampening and clipping, Nesterov", "[train][optimizer]") {
  pf::SGD plain(pf::SGDOptions{0.0, 0.0, 0.1, false});
  check_case("sgd", plain, false);
  pf::SGD momentum(pf::SGDOptions{0.9, 0.1, 0.1, false});
  check_case("sgd_momentum_clip", momentum, true);
  pf::SGD nesterov(pf::SGDOptions{0.8, 0.0, 0.1, true});
  check_case("sgd_nesterov", nesterov, false);
}

#endif

TEST_CASE("Optimizers: frozen tensors are skipped, names must match, bad settings throw", "[train][optimizer][errors]") {
  Matrix w = Matrix::Constant(2, 3, 1.0f), gw = Matrix::Constant(2, 3, 0.5f);
  Vector b = Vector::Constant(3, 1.0f), gb = Vector::Constant(3, 0.5f);
  pf::ParameterList params;
  params.add_matrix("w", w);
  params.add_vector("b", b);
  pf::GradientList grads;
  grads.add_matrix("w", gw, 2, 3);
  grads.add_vector("b", gb, 3);
  grads.freeze("b");
  pf::SGD sgd;
  sgd.step(params, grads, 0.1);
  CHECK(w.isApprox(Matrix::Constant(2, 3, 0.95f)));
  CHECK(b == Vector::Constant(3, 1.0f));  // frozen: untouched
  // The global norm counts trainable gradients only: √6·0.5.
  CHECK(pf::gradient_norm(grads) == Approx(std::sqrt(6.0) * 0.5));
  CHECK(pf::clip_coefficient(grads, 100.0) == 1.0f);
  CHECK(pf::clip_coefficient(grads, 0.5) == Approx(0.5 / (std::sqrt(6.0) * 0.5 + 1e-6)));
  CHECK_THROWS_AS(pf::clip_coefficient(grads, 0.0), pf::config_error);
  pf::GradientList other;
  Matrix gx = Matrix::Zero(2, 3);
  other.add_matrix("x", gx, 2, 3);
  CHECK_THROWS_WITH(sgd.step(params, other, 0.1), Catch::Contains("no parameter is named 'x'"));
  pf::GradientList misshaped;
  Matrix gm = Matrix::Zero(3, 2);
  misshaped.add_matrix("w", gm, 3, 2);
  CHECK_THROWS_AS(sgd.step(params, misshaped, 0.1), pf::shape_error);
  CHECK_THROWS_AS(pf::AdamW(pf::AdamWOptions{1.0, 0.999, 1e-8, 0.0}), pf::config_error);
  CHECK_THROWS_AS(pf::SGD(pf::SGDOptions{0.0, 0.0, 0.0, true}), pf::config_error);
  CHECK_THROWS_AS(sgd.step(params, grads, -1.0), pf::config_error);
}
