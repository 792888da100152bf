// encoder_demo: composes a BERT-base-shaped encoder (d_model 768, 12 heads, FFN 3072, post-norm, ReLU) from
// policies, fills it with random weights, and runs it on random tokens. No files needed.
//
//   encoder_demo [--n TOKENS] [--layers L] [--threads T] [--causal]

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli.hpp"
#include "polyformer/polyformer.hpp"

namespace pf = polyformer;

namespace {

constexpr const char* usage = "usage: encoder_demo [--n TOKENS] [--layers L] [--threads T] [--causal]\n";

int run(int argc, char** argv) {
  pf::Index n = 128, layers = 2;
  int threads = 1;
  bool causal = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
    if (a == "--n") n = cli::parse_number<pf::Index>(a, cli::value_after(argc, argv, i));
    else if (a == "--layers") layers = cli::parse_number<pf::Index>(a, cli::value_after(argc, argv, i));
    else if (a == "--threads") threads = cli::parse_number<int>(a, cli::value_after(argc, argv, i));
    else if (a == "--causal") causal = true;
    else throw cli::usage_error("unknown option '" + a + "'");
  }
  // Bounds that keep the activations and weights within reach of a workstation: (n, 3072) floats, 9.4 MB a layer.
  if (n < 1 || n > 65536) throw cli::usage_error("--n is " + std::to_string(n) + ", expected 1..65536");
  if (layers < 1 || layers > 96) throw cli::usage_error("--layers is " + std::to_string(layers) + ", expected 1..96");
  if (threads < 1 || threads > 1024)
    throw cli::usage_error("--threads is " + std::to_string(threads) + ", expected 1..1024");

  // The policies: exact tiled attention, dense projections, LayerNorm after each residual, ReLU FFN.
  using Layer = pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, pf::ReLU, pf::NormPlacement::post>;
  const pf::Index d = 768, hidden = 3072, heads = 12;
  unsigned seed = 1;
  auto linear = [&](pf::Index in, pf::Index out) {
    std::srand(seed++);
    return pf::Dense(pf::Matrix::Random(out, in) / std::sqrt(static_cast<float>(in)), pf::Vector::Zero(out));
  };
  std::vector<Layer> stack;
  for (pf::Index l = 0; l < layers; ++l)
    stack.emplace_back(Layer::Attention(linear(d, d), linear(d, d), linear(d, d), linear(d, d), pf::HeadConfig{heads}),
                       Layer::FFN(linear(d, hidden), linear(hidden, d)), pf::LayerNorm(d), pf::LayerNorm(d));
  pf::Encoder<Layer> encoder(std::move(stack));

  const pf::Matrix x = pf::Matrix::Random(n, d);
  const pf::MaskSpec mask = causal ? pf::MaskSpec::causal_mask() : pf::MaskSpec{};
  const pf::Context ctx{threads};
  pf::Matrix y = encoder.forward(x, 1, mask, ctx);  // warm-up: sizes every workspace once
  const auto t0 = std::chrono::steady_clock::now();
  y = encoder.forward(x, 1, mask, ctx);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  const double nd = static_cast<double>(n), dd = static_cast<double>(d);
  const double flops = static_cast<double>(layers) * (2 * nd * dd * dd * 4 + 2 * nd * dd * hidden * 2 + 4 * nd * nd * dd);
  std::printf("polyformer encoder_demo: %ld layers x (d_model %ld, %ld heads, FFN %ld), %ld tokens, %d thread(s)\n",
              static_cast<long>(layers), static_cast<long>(d), static_cast<long>(heads), static_cast<long>(hidden),
              static_cast<long>(n), threads);
  std::printf("forward: %.2f ms, %.1f GFLOP/s (gemm backend: %s)\n", ms, flops / ms * 1e-6, pf::kernels::gemm_backend());
  std::printf("y[0][0..3] = %.5f %.5f %.5f %.5f, all finite: %s\n", y(0, 0), y(0, 1), y(0, 2), y(0, 3),
              y.allFinite() ? "yes" : "no");
  return y.allFinite() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  pf::kernels::use_single_threaded_backends();  // polyformer threads its own products
  return cli::guarded_main("encoder_demo", [&] { return run(argc, argv); });
}
