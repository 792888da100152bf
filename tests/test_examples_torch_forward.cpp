// The torch_forward CLI end to end: run on a shared reference file, compare with PyTorch's float64
// output; bad input exits with code 2.

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <sys/wait.h>

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
