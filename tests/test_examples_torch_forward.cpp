// The torch_forward CLI end to end: run on a shared reference file, compare with PyTorch's float64
// output; bad input exits with code 2.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <sys/wait.h>
#include <vector>

#include "polyformer/io/safetensors.hpp"
#include "support.hpp"

#ifdef POLYFORMER_TORCH_FORWARD
namespace {

int run(const std::string& args) {
  const std::string cmd = std::string(POLYFORMER_TORCH_FORWARD) + " " + args + " 2>/dev/null";
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("polyformer_test_" + name)).string();
}

}  // namespace

TEST_CASE("examples/torch_forward: reproduces PyTorch from metadata alone", "[examples][torch]") {
  // The reference files hold their inputs under "input.*"; the encoder file's inputs include a key-padding
  // mask (so the expected output is y_padmask), the others a causal tgt_mask (y).
  for (const auto& [file, expected] : {std::pair<std::string, std::string>{"transformer_prenorm_gelu_seed0", "y"},
                                       {"encoder_layer_postnorm_relu_seed0", "y_padmask"},
                                       {"decoder_layer_prenorm_relu_seed0", "y"}}) {
    INFO(file);
    const std::string ref = pft::shared_path("reference/torch/" + file + ".safetensors");
    const std::string out = temp_path(file + ".safetensors");
    REQUIRE(run("--weights " + ref + " --inputs " + ref + " --out " + out + " --threads 2") == 0);
    const auto got = polyformer::io::SafetensorsFile::open(out);
    const auto want = polyformer::io::SafetensorsFile::open(ref);
    CHECK(pft::max_abs_diff(pft::as_rows(got.tensor("y")), pft::as_rows(want.tensor("output_f64." + expected))) < 1e-5);
    if (file.rfind("transformer", 0) == 0)
      CHECK(pft::max_abs_diff(pft::as_rows(got.tensor("memory")), pft::as_rows(want.tensor("output_f64.memory"))) <
            1e-5);
    CHECK(got.info("y").shape == want.info("output.y").shape);
    std::filesystem::remove(out);
  }
}

#ifdef POLYFORMER_GRAD_REFERENCE_DIR
TEST_CASE("examples/torch_forward: --grad-output gradients equal torch.autograd in float64", "[examples][torch][backward]") {
  // Written at configure time by tests/torch_grad_reference.py: the module, its inputs with causal masks and key
  // padding, and every gradient torch.autograd computes in float64 ("expected.grad.<name>").
  const std::pair<std::string, std::size_t> cases[] = {
      {"encoder_layer_postnorm_relu", 14}, {"encoder_layer_postnorm_gelu", 14}, {"encoder_layer_prenorm_relu", 14},
      {"encoder_layer_prenorm_gelu", 14},  {"decoder_layer_postnorm_relu", 21}, {"decoder_layer_prenorm_gelu", 21},
      {"transformer_postnorm_relu", 67},   {"transformer_prenorm_gelu", 67}};
  for (const auto& [kind, expected_count] : cases) {
    INFO(kind);
    const std::string base = std::string(POLYFORMER_GRAD_REFERENCE_DIR) + "/grad_" + kind;
    const std::string ref = base + ".safetensors", grad = base + ".grad_output.safetensors";
    REQUIRE(std::filesystem::exists(ref));
    const std::string out = temp_path("grad_" + kind + ".safetensors");
    for (const int threads : {1, 2}) {
      REQUIRE(run("--weights " + ref + " --inputs " + ref + " --grad-output " + grad + " --out " + out +
                  " --threads " + std::to_string(threads)) == 0);
      const auto got = polyformer::io::SafetensorsFile::open(out);
      const auto want = polyformer::io::SafetensorsFile::open(ref);
      std::size_t compared = 0;
      for (const std::string& name : want.names()) {
        if (name.rfind("expected.", 0) != 0) continue;
        const std::string produced = name.substr(9);
        INFO(produced << ", threads " << threads);
        REQUIRE(got.contains(produced));
        const polyformer::Matrix g = pft::as_rows(got.tensor(produced)), w = pft::as_rows(want.tensor(name));
        REQUIRE(g.rows() == w.rows());
        REQUIRE(g.cols() == w.cols());
        const double err = (g - w).cast<double>().norm() / std::max(w.cast<double>().norm(), 1e-30);
        INFO("relative error " << err);
        CHECK(err <= 1e-4);
        ++compared;
      }
      CHECK(compared == expected_count);  // y, every float input and every parameter
      CHECK(got.size() == expected_count + (kind.rfind("transformer", 0) == 0 ? 1 : 0));  // and nn.Transformer's memory
    }
    std::filesystem::remove(out);
  }
}

TEST_CASE("examples/torch_forward: a bad --grad-output file exits with code 2", "[examples][errors][backward]") {
  const std::string base = std::string(POLYFORMER_GRAD_REFERENCE_DIR) + "/grad_encoder_layer_postnorm_relu";
  const std::string ref = base + ".safetensors", out = temp_path("bad_grad.safetensors");
  const std::string args = "--weights " + ref + " --inputs " + ref + " --out " + out + " --grad-output ";
  // The reference file itself holds many tensors besides "y": unknown names are an error.
  CHECK(run(args + ref) == 2);
  CHECK(run(args + "/nonexistent.safetensors") == 2);
  const std::string misshaped = temp_path("misshaped_grad.safetensors");
  polyformer::io::write_safetensors(misshaped, {{"y", polyformer::io::FloatTensor{{2, 7, 23}, std::vector<float>(2 * 7 * 23)}}});
  CHECK(run(args + misshaped) == 2);
  std::filesystem::remove(misshaped);
}
#endif

TEST_CASE("examples/torch_forward: bad input exits with code 2", "[examples][errors]") {
  const std::string ref = pft::shared_path("reference/torch/encoder_layer_postnorm_relu_seed0.safetensors");
  const std::string out = temp_path("bad.safetensors");
  CHECK(run("") == 2);
  CHECK(run("--weights /nonexistent.safetensors --inputs " + ref + " --out " + out) == 2);
  CHECK(run("--weights " + ref + " --inputs " + ref + " --out " + out + " --nhead 5") == 2);
  CHECK(run("--weights " + ref + " --inputs " + ref + " --out " + out + " --activation swish") == 2);
  CHECK(run("--weights " + ref + " --inputs " + ref + " --out " + out + " --module decoder_layer") == 2);
  CHECK(run("--weights " + ref + " --inputs " + ref + " --out " + out + " --bogus") == 2);
}
#endif
