// The train program end to end: --grads-out on stories260K against the float64 oracle (with accumulation, and through a
// sliding window and a block as wide as the sequence); a resumed run's checkpoint bit-identical to an uninterrupted
// one; exports that run.c's golden text and in-process loading confirm; LoRA fine-tuning that lowers a small text's
// loss by 30 % within 200 steps, its PEFT adapter read back by generate --lora; bad input exiting with code 2 and
// leaving an existing checkpoint alone; the embedded default run.

#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "llama_oracle.hpp"
#include "polyformer/io/peft.hpp"
#include "polyformer/io/safetensors.hpp"
#include "polyformer/models/llama.hpp"
#include "polyformer/models/llama_lora.hpp"
#include "polyformer/train/data.hpp"
#include "support.hpp"

#ifdef POLYFORMER_TRAIN
namespace {

using namespace bwt;
using pf::Matrix;

std::string temp_path(const std::string& name) { return pft::process_temp_path("train", name); }

int run(const std::string& args, std::string* out = nullptr, std::string* err = nullptr) {
  return pft::run_program(POLYFORMER_TRAIN, "train", args, out, err);
}

std::string write_shard(const std::string& name, const std::vector<int>& ids) {
  return pft::write_token_shard(temp_path(name), ids);
}

std::vector<int> random_ids(std::size_t n, int vocab, std::uint64_t seed) {
  pf::SplitMix64 rng{seed};
  std::vector<int> ids(n);
  for (int& x : ids) x = static_cast<int>(rng.below(static_cast<std::uint64_t>(vocab)));
  return ids;
}

/// The number after `label` in the program's stderr (NaN when absent).
double number_after(const std::string& text, const std::string& label) {
  const auto at = text.rfind(label);
  if (at == std::string::npos) return NAN;
  return std::stod(text.substr(at + label.size()));
}

/// Whether two safetensors files hold the same tensors with the same bytes.
bool same_tensors(const std::string& a, const std::string& b) {
  const auto fa = pf::io::SafetensorsFile::open(a), fb = pf::io::SafetensorsFile::open(b);
  if (fa.names() != fb.names()) return false;
  for (const auto& name : fa.names()) {
    const auto ra = fa.raw_bytes(name), rb = fb.raw_bytes(name);
    if (ra.size() != rb.size() || std::memcmp(ra.data(), rb.data(), ra.size()) != 0) return false;
  }
  return true;
}

const std::string stories = pft::shared_path("models/stories260K.bin");
const std::string tok512 = pft::shared_path("models/tok512.bin");

}  // namespace

TEST_CASE("examples/train: --grads-out on stories260K equals the float64 oracle", "[examples][train][llama]") {
  const Index seq = 16;
  const std::vector<int> ids = random_ids(5 * seq + 1, 512, 11);
  const std::string shard = write_shard("grads.bin", ids);
  // Step 0 reads windows 0 and 1: tokens 0…31 as inputs, tokens 1…32 as their targets.
  const std::vector<int> tokens(ids.begin(), ids.begin() + 2 * seq);
  const std::vector<Index> targets(ids.begin() + 1, ids.begin() + 2 * seq + 1);
  auto model = pf::load_llama2c(stories);
  const LlamaOracle want = llama_oracle(weights_of(model), model.config(), tokens, 2, targets);

  for (const std::string variant : {"--batch 2", "--batch 1 --accum 2", "--batch 2 --attention sliding:32",
                                    "--batch 2 --attention blockwise:16"}) {
    INFO(variant);
    const std::string out = temp_path("grads.safetensors");
    std::string err;
    REQUIRE(run("--model " + stories + " --data " + shard + " --seq-len 16 --steps 0 --threads 2 --grads-out " + out +
                    " " + variant,
                nullptr, &err) == 0);
    const auto file = pf::io::SafetensorsFile::open(out);
    CHECK(file.tensor("loss").data.at(0) == Approx(want.loss).epsilon(1e-5));
    CHECK(file.size() == want.grad.size() + 1);
    CHECK_FALSE(file.contains("output.weight"));  // tied: the embedding's gradient holds both uses
    for (const auto& [name, w] : want.grad) {
      INFO(name);
      REQUIRE(file.contains(name));
      const Matrix got = file.matrix(name);
      BWT_CHECK_GRAD(Matrix(got.reshaped<Eigen::RowMajor>(w.rows(), w.cols())), w);
    }
  }
}

TEST_CASE("examples/train: a resumed run's checkpoint is bit-identical to an uninterrupted run's",
          "[examples][train]") {
  const std::string shard = write_shard("resume.bin", random_ids(2000, 64, 3));
  const std::string common = "--config dim=32,layers=2,heads=4,kv_heads=2,hidden=64,vocab=64,seq_len=32 --data " +
                             shard + " --seq-len 32 --batch 3 --accum 2 --shuffle 5 --warmup 2 --lr 3e-3 --threads 2";
  const std::string a = temp_path("ckpt_a"), b = temp_path("ckpt_b");
  std::filesystem::remove_all(a);
  std::filesystem::remove_all(b);
  std::string err;
  REQUIRE(run(common + " --steps 6 --checkpoint " + a, nullptr, &err) == 0);
  REQUIRE(run(common + " --steps 3 --checkpoint " + b, nullptr, &err) == 0);
  CHECK_FALSE(same_tensors(a + "/training_state.safetensors", b + "/training_state.safetensors"));
  REQUIRE(run(common + " --steps 6 --resume " + b + " --checkpoint " + b, nullptr, &err) == 0);
  CHECK(same_tensors(a + "/training_state.safetensors", b + "/training_state.safetensors"));
  const auto fb = pf::io::SafetensorsFile::open(b + "/training_state.safetensors");
  CHECK(fb.metadata_value("step") == "6");
  CHECK(fb.metadata_value("position") == "36");

  // Resuming into another model or another batch is refused, with code 2.
  CHECK(run("--config dim=48,layers=2,heads=4,kv_heads=2,hidden=64,vocab=64,seq_len=32 --data " + shard +
                " --seq-len 32 --steps 7 --resume " + b,
            nullptr, &err) == 2);
  CHECK_THAT(err, Catch::Contains("a checkpoint of another model?"));
  CHECK(run(common + " --batch 4 --steps 7 --resume " + b, nullptr, &err) == 2);
  CHECK_THAT(err, Catch::Contains("the checkpoint's run.batch is '3', this run's '4'"));
  std::filesystem::remove_all(a);
  std::filesystem::remove_all(b);
}

TEST_CASE("examples/train: --save exports a checkpoint run.c's golden text and the trained weights confirm",
          "[examples][train][llama][golden]") {
  const std::string shard = write_shard("export.bin", random_ids(400, 512, 4));
  const std::string same = temp_path("same.bin");
  std::string out, err;
  REQUIRE(run("--model " + stories + " --data " + shard + " --seq-len 32 --steps 0 --save " + same, nullptr, &err) == 0);
#ifdef POLYFORMER_GENERATE
  REQUIRE(pft::run_program(POLYFORMER_GENERATE, "train_generate",
                           "--model " + same + " --tokenizer " + tok512 + " --temperature 0 --steps 256 --prompt 'Once upon a time'",
                           &out, &err) == 0);
  CHECK(out == pft::read_text(pft::shared_path("models/golden/once_upon_a_time.txt")));
#endif
  // After a few steps the export holds exactly the checkpoint's weights.
  const std::string trained = temp_path("trained.bin"), dir = temp_path("export_ckpt");
  std::filesystem::remove_all(dir);
  REQUIRE(run("--model " + stories + " --data " + shard + " --seq-len 32 --batch 2 --steps 3 --lr 1e-3 --save " + trained +
                  " --checkpoint " + dir,
              nullptr, &err) == 0);
  auto model = pf::load_llama2c(trained);
  const auto state = pf::io::SafetensorsFile::open(dir + "/training_state.safetensors");
  const pf::ParameterList params = pf::parameters_of(model);
  Index changed = 0;
  auto original = pf::load_llama2c(stories);
  const pf::ParameterList before = pf::parameters_of(original);
  for (const pf::Parameter& p : params.items()) {
    INFO(p.name);
    std::vector<float> got(static_cast<std::size_t>(p.numel())), start(got.size());
    p.read(got.data());
    before.find(p.name)->read(start.data());
    const auto saved = state.tensor("model." + p.name).data;
    CHECK(std::memcmp(got.data(), saved.data(), got.size() * sizeof(float)) == 0);
    changed += got != start;
  }
  CHECK(changed == static_cast<Index>(params.size()));  // every tensor trained
  std::filesystem::remove_all(dir);
}

TEST_CASE("examples/train: LoRA lowers a small text's loss by 30 % in 200 steps, its adapter works in generate",
          "[examples][train][llama][lora]") {
  const std::string text =
      "Tim had a red kite. Every morning he ran to the hill behind his house and let the kite fly high. "
      "One day the wind was very strong and the kite pulled hard. Tim held the string with both hands. "
      "The kite went up over the trees and the birds came to see it. Tim laughed and said, \"Look, my kite "
      "can talk to the birds!\" His sister Mia came to the hill too. She brought apples and they sat in the "
      "grass. When the sun went down, Tim pulled the kite back and they walked home together, happy and tired.";
  const std::string data = temp_path("kite.txt");
  std::ofstream(data, std::ios::binary) << text;
  const std::string common = "--model " + stories + " --tokenizer " + tok512 + " --data " + data + " --val " + data +
                             " --seq-len 32 --batch 4 --threads 2";
  std::string err;
  REQUIRE(run(common + " --steps 0", nullptr, &err) == 0);
  const double before = number_after(err, "validation loss ");
  const std::string adapter = temp_path("adapter"), merged = temp_path("merged.bin");
  std::filesystem::remove_all(adapter);
  REQUIRE(run(common + " --steps 200 --lora 8:16 --lr 5e-3 --warmup 10 --save-adapter " + adapter + " --save " + merged,
              nullptr, &err) == 0);
  CHECK_THAT(err, Catch::Contains("(LoRA)"));
  const double after = number_after(err, "validation loss ");
  INFO("validation loss " << before << " -> " << after);
  CHECK(after <= 0.7 * before);

  const pf::io::PeftLoraAdapter a = pf::io::read_peft_lora(adapter);
  CHECK(a.rank == 8);
  CHECK(a.alpha == 16.0f);
  CHECK(a.modules.size() == 2 * 5);  // wq and wv of stories260K's 5 layers
  // The merged export computes what the base model plus the adapter computes.
  auto base = pf::load_llama2c<pf::LoRA<pf::Dense>>(stories);
  pf::add_lora_adapter(base, a, "trained");
  auto exported = pf::load_llama2c(merged);
  const std::vector<int> tokens = pf::io::Tokenizer::read(tok512, 512).encode("Tim had a red kite.", true);
  auto s1 = base.make_state();
  auto s2 = exported.make_state();
  typename decltype(base)::Workspace w1;
  typename decltype(exported)::Workspace w2;
  base.forward(s1, tokens, w1, {}, true);
  exported.forward(s2, tokens, w2, {}, true);
  CHECK(pft::max_abs_diff(w1.logits, w2.logits) < 1e-3);
#ifdef POLYFORMER_GENERATE
  std::string out;
  REQUIRE(pft::run_program(POLYFORMER_GENERATE, "train_generate",
                           "--model " + stories + " --tokenizer " + tok512 + " --lora " + adapter +
                               " --temperature 0 --steps 40 --prompt 'Tim had'",
                           &out, &err) == 0);
  CHECK_THAT(out, Catch::StartsWith("Tim had"));
#endif
  std::filesystem::remove_all(adapter);
}

TEST_CASE("examples/train: bad input exits with code 2 and one line, a failed run leaves the checkpoint alone",
          "[examples][train]") {
  const std::string good = write_shard("good.bin", random_ids(300, 512, 1));
  const std::string odd = temp_path("odd.bin");
  std::ofstream(odd, std::ios::binary) << "abc";
  const std::string big = write_shard("big.bin", {1, 2, 600, 3});
  const std::string text = temp_path("t.txt");
  std::ofstream(text) << "hello there";
  const std::string base = "--model " + stories + " --seq-len 32 ";
  const std::pair<std::string, std::string> cases[] = {
      {base + "--data " + temp_path("missing.bin"), "cannot open"},
      {base + "--data " + odd, "has 3 bytes, expected a positive even number"},
      {base + "--data " + big, "token 2 is 600, expected 0..511"},
      {base + "--data " + good + " --seq-len 9999", "--seq-len is 9999, expected 1..512"},
      {base + "--data " + good + " --lora 4:8:wz", "unknown LoRA target 'wz'"},
      {base + "--data " + text, "--tokenizer is required"},
      {"--config dim=32,layers=1,heads=4,hidden=64,vocab=600,seq_len=32 --tokenizer " + tok512 + " --data " + text,
       "tokenizer"},
      {base + "--data " + good + " --bitfit", "BitFit needs a model with biases"},
      {base + "--data " + good + " --freeze layers.9", "no tensor name starts with 'layers.9'"},
      {base + "--data " + good + " --attention lsh:2:8", "--attention"},
      {base + "--data " + good + " --steps 3 --grads-out x.safetensors", "--grads-out needs --steps 0"},
      {"--model " + temp_path("nope.bin") + " --data " + good, "cannot open"},
  };
  for (const auto& [args, message] : cases) {
    INFO(args);
    std::string err;
    CHECK(run(args + " --steps 1", nullptr, &err) == 2);
    CHECK_THAT(err, Catch::StartsWith("train: ") && Catch::Contains(message));
  }
  const std::string dir = temp_path("keep");
  std::filesystem::remove_all(dir);
  std::string err;
  REQUIRE(run(base + "--data " + good + " --seq-len 32 --steps 1 --checkpoint " + dir, nullptr, &err) == 0);
  const std::string before = pft::read_text(dir + "/training_state.safetensors");
  CHECK(run(base + "--data " + big + " --seq-len 32 --steps 1 --checkpoint " + dir, nullptr, &err) == 2);
  CHECK(pft::read_text(dir + "/training_state.safetensors") == before);
  std::filesystem::remove_all(dir);
}

TEST_CASE("examples/train: --log writes the CSV and the loss curve, the embedded default run samples",
          "[examples][train]") {
  const std::string shard = write_shard("log.bin", random_ids(3000, 64, 8));
  const std::string csv = temp_path("log.csv");
  std::string out, err;
  REQUIRE(run("--config dim=32,layers=1,heads=4,hidden=64,vocab=64,seq_len=32 --data " + shard +
                  " --steps 12 --eval-every 4 --attention sliding:8 --log " + csv,
              &out, &err) == 0);
  const std::string log = pft::read_text(csv);
  CHECK_THAT(log, Catch::StartsWith("step,loss,val_loss,lr,tokens_per_s\n"));
  CHECK(std::count(log.begin(), log.end(), '\n') == 13);
  std::filesystem::path svg = csv;
  svg.replace_extension(".svg");
  CHECK_THAT(pft::read_text(svg.string()), Catch::Contains("<polyline"));
  CHECK_THAT(err, Catch::Contains("val_loss"));  // the held-out 5 % is evaluated

  if (!std::filesystem::exists("/usr/share/games/fortunes")) {
    WARN("skipped the embedded default run: /usr/share/games/fortunes is absent (apt-get install fortunes)");
    return;
  }
  REQUIRE(run("--steps 20 --threads 2", &out, &err) == 0);
  CHECK_THAT(err, Catch::Contains("fortunes"));
  CHECK_THAT(out, Catch::Contains("--- sample 3"));
}
#endif

#if defined(POLYFORMER_TRAIN) && defined(POLYFORMER_MPIEXEC)
TEST_CASE("examples/train: two MPI ranks train as one process with the same global batch",
          "[examples][train][mpi]") {
  const std::string shard = write_shard("mpi.bin", random_ids(4000, 64, 12));
  const std::string common = "--config dim=32,layers=2,heads=4,kv_heads=2,hidden=64,vocab=64,seq_len=32 --data " +
                             shard + " --seq-len 32 --batch 4 --accum 2 --steps 10 --threads 1 --warmup 2 --lr 3e-3";
  const std::string one = temp_path("mpi_one"), two = temp_path("mpi_two");
  std::filesystem::remove_all(one);
  std::filesystem::remove_all(two);
  std::string out, err;
  REQUIRE(run(common + " --checkpoint " + one, nullptr, &err) == 0);
  // Loopback only, and root allowed (CI runs as root).
  const std::string mpirun = std::string("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ") +
                             POLYFORMER_MPIEXEC + " -np 2 --oversubscribe --mca btl self,tcp --mca btl_tcp_if_include lo "
                             "--mca oob_tcp_if_include lo " + POLYFORMER_TRAIN;
  REQUIRE(pft::run_program(mpirun, "train_mpi", common + " --checkpoint " + two, &out, &err) == 0);
  CHECK_THAT(err, Catch::Contains("2 ranks hold identical weights"));
  const auto a = pf::io::SafetensorsFile::open(one + "/training_state.safetensors");
  const auto b = pf::io::SafetensorsFile::open(two + "/training_state.safetensors");
  CHECK(b.metadata_value("step") == "10");
  Index compared = 0;
  for (const auto& name : a.names()) {
    if (name.rfind("model.", 0) != 0) continue;
    INFO(name);
    const auto x = a.tensor(name).data, y = b.tensor(name).data;
    REQUIRE(x.size() == y.size());
    double diff = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      diff += (double(x[i]) - double(y[i])) * (double(x[i]) - double(y[i]));
      norm += double(x[i]) * double(x[i]);
    }
    CHECK(std::sqrt(diff / norm) <= 1e-5);
    ++compared;
  }
  CHECK(compared == 2 * 9 + 2);  // every layer's 9 tensors, the embedding and the final norm
  std::filesystem::remove_all(one);
  std::filesystem::remove_all(two);
}
#endif
