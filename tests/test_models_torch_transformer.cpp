// PyTorch parity: every reference file in shared/reference/torch (and the extra shapes generated at
// configure time) reproduced by polyformer blocks loaded from the same state dict.

#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "polyformer/models/torch_transformer.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::NormPlacement;
using pf::Matrix;

namespace {

constexpr double tolerance = 1e-5;  // the README's guide: float32 results lie within ~1e-6 of float64

struct Meta {
  std::string module, activation;
  bool norm_first = false;
  pf::Index nhead = 0, enc_layers = 0, dec_layers = 0;
  float eps = 1e-5f;
};

Meta read_meta(const pf::io::SafetensorsFile& f) {
  Meta m;
  m.module = f.metadata().at("module");
  if (m.module.rfind("torch.nn.", 0) == 0) m.module = m.module.substr(9);
  m.activation = f.metadata().at("activation");
  m.norm_first = f.metadata().at("norm_first") == "True";
  m.nhead = std::stol(f.metadata().at("nhead"));
  m.eps = std::stof(f.metadata().at("layer_norm_eps"));
  if (auto v = f.metadata_value("num_encoder_layers")) m.enc_layers = std::stol(*v);
  if (auto v = f.metadata_value("num_decoder_layers")) m.dec_layers = std::stol(*v);
  return m;
}

pf::Index batch_of(const pf::io::SafetensorsFile& f, const std::string& name) {
  return static_cast<pf::Index>(f.info(name).shape.at(0));
}

// Checks y against both torch's float32 output and the float64 one.
void check_output(const pf::io::SafetensorsFile& f, const std::string& name, const Matrix& y) {
  INFO(f.path() << ": " << name);
  const double d64 = pft::max_abs_diff(y, pft::as_rows(f.tensor("output_f64." + name)));
  const double d32 = pft::max_abs_diff(y, pft::as_rows(f.tensor("output." + name)));
  INFO("max |y - output_f64| = " << d64 << ", max |y - output| = " << d32);
  CHECK(d64 < tolerance);
  CHECK(d32 < tolerance);
}

template <typename Act, NormPlacement P>
void run_encoder_layer(const pf::io::SafetensorsFile& f, const Meta& m, const pf::Context& ctx) {
  auto layer = pf::torch::load_encoder_layer<pf::torch::EncoderLayer<Act, P>>(f, "", {m.nhead, m.eps});
  const Matrix src = pft::as_rows(f.tensor("input.src"));
  const pf::Index batch = batch_of(f, "input.src");
  check_output(f, "y", layer.forward(src, batch, {}, ctx));

  const Matrix causal = f.matrix("input.src_mask_causal");
  pf::MaskSpec additive;
  additive.additive = pf::cview(causal);
  check_output(f, "y_causal", layer.forward(src, batch, additive, ctx));

  const Matrix padding = f.matrix("input.src_key_padding_mask");
  pf::MaskSpec padded;
  padded.key_padding = pf::cview(padding);
  check_output(f, "y_padmask", layer.forward(src, batch, padded, ctx));

  // The same causal mask expressed as a flag, and the padding as per-sequence lengths, agree too.
  check_output(f, "y_causal", layer.forward(src, batch, pf::MaskSpec::causal_mask(), ctx));
  std::vector<pf::Index> lengths;
  for (pf::Index b = 0; b < padding.rows(); ++b) lengths.push_back((padding.row(b).array() == 0.0f).count());
  pf::MaskSpec by_length;
  by_length.key_lengths = lengths;
  check_output(f, "y_padmask", layer.forward(src, batch, by_length, ctx));
}

template <typename Act, NormPlacement P>
void run_decoder_layer(const pf::io::SafetensorsFile& f, const Meta& m, const pf::Context& ctx) {
  auto layer = pf::torch::load_decoder_layer<pf::torch::DecoderLayer<Act, P>>(f, "", {m.nhead, m.eps});
  const Matrix tgt = pft::as_rows(f.tensor("input.tgt")), memory = pft::as_rows(f.tensor("input.memory"));
  const pf::Index batch = batch_of(f, "input.tgt");
  const Matrix tgt_mask = f.matrix("input.tgt_mask");
  pf::DecoderMasks masks;
  masks.self = pf::MaskSpec{};
  masks.self.additive = pf::cview(tgt_mask);
  check_output(f, "y", layer.forward(tgt, memory, batch, masks, ctx));
  check_output(f, "y", layer.forward(tgt, memory, batch, pf::DecoderMasks{}, ctx));  // causal flag
  check_output(f, "y_nomask", layer.forward(tgt, memory, batch, pf::DecoderMasks{pf::MaskSpec{}, {}}, ctx));
}

template <typename Act, NormPlacement P>
void run_transformer(const pf::io::SafetensorsFile& f, const Meta& m, const pf::Context& ctx) {
  auto model = pf::torch::load_transformer<pf::torch::Transformer<Act, P>>(f, m.enc_layers, m.dec_layers,
                                                                           {m.nhead, m.eps});
  const Matrix src = pft::as_rows(f.tensor("input.src")), tgt = pft::as_rows(f.tensor("input.tgt"));
  const pf::Index batch = batch_of(f, "input.src");
  const Matrix tgt_mask = f.matrix("input.tgt_mask");
  pf::EncoderDecoderMasks masks;
  masks.tgt = pf::MaskSpec{};
  masks.tgt.additive = pf::cview(tgt_mask);
  Matrix memory;
  check_output(f, "y", model.forward(src, tgt, batch, masks, ctx, &memory));
  check_output(f, "memory", memory);
  check_output(f, "y", model.forward(src, tgt, batch, pf::EncoderDecoderMasks{}, ctx));
}

template <typename Act, NormPlacement P>
void run_module(const pf::io::SafetensorsFile& f, const Meta& m, const pf::Context& ctx) {
  if (m.module == "TransformerEncoderLayer") run_encoder_layer<Act, P>(f, m, ctx);
  else if (m.module == "TransformerDecoderLayer") run_decoder_layer<Act, P>(f, m, ctx);
  else if (m.module == "Transformer") run_transformer<Act, P>(f, m, ctx);
  else FAIL("unknown module " << m.module << " in " << f.path());
}

void run_file(const std::string& path, int threads) {
  const auto f = pf::io::SafetensorsFile::open(path);
  const Meta m = read_meta(f);
  const pf::Context ctx{threads};
  const bool gelu = m.activation == "gelu";
  REQUIRE((gelu || m.activation == "relu"));
  if (gelu && m.norm_first) run_module<pf::GELU, NormPlacement::pre>(f, m, ctx);
  else if (gelu) run_module<pf::GELU, NormPlacement::post>(f, m, ctx);
  else if (m.norm_first) run_module<pf::ReLU, NormPlacement::pre>(f, m, ctx);
  else run_module<pf::ReLU, NormPlacement::post>(f, m, ctx);
}

std::vector<std::string> safetensors_in(const std::string& dir) {
  std::vector<std::string> files;
  if (std::filesystem::is_directory(dir))
    for (const auto& e : std::filesystem::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

TEST_CASE("models/torch_transformer: every shared PyTorch reference file is reproduced", "[torch][parity]") {
  const std::string dir = pft::shared_path("reference/torch");
  const auto files = safetensors_in(dir);
  REQUIRE(files.size() == 10);
  for (const auto& path : files)
    for (int threads : {1, 2}) {
      INFO(path << " threads " << threads);
      run_file(path, threads);
    }
}

TEST_CASE("models/torch_transformer: odd head sizes and untiled lengths match PyTorch", "[torch][parity]") {
  const auto files = safetensors_in(POLYFORMER_EXTRA_REFERENCE_DIR);
  INFO("extra references are generated at configure time into " POLYFORMER_EXTRA_REFERENCE_DIR
       " by shared/reference/torch/torch_reference.py (needs /usr/bin/python3 with python3-torch)");
  REQUIRE(files.size() == 20);
  for (const auto& path : files) {
    INFO(path);
    run_file(path, 2);
  }
}

namespace {

/// nn.Transformer decoded one target position at a time (and in uneven chunks) over the encoder's memory
/// equals the full forward with a causal target mask, sequence by sequence.
template <typename Act, NormPlacement P>
void decode_transformer(const pf::io::SafetensorsFile& f, const Meta& m, const pf::Context& ctx) {
  const auto model = pf::torch::load_transformer<pf::torch::Transformer<Act, P>>(f, m.enc_layers, m.dec_layers,
                                                                                 {m.nhead, m.eps});
  const Matrix src = pft::as_rows(f.tensor("input.src")), tgt = pft::as_rows(f.tensor("input.tgt"));
  const pf::Index batch = batch_of(f, "input.src"), src_len = src.rows() / batch, tgt_len = tgt.rows() / batch;
  Matrix memory;
  const Matrix full = model.forward(src, tgt, batch, pf::EncoderDecoderMasks{}, ctx, &memory);  // causal tgt
  using Decoder = std::remove_cvref_t<decltype(model.decoder())>;
  typename Decoder::Workspace ws;
  for (pf::Index b = 0; b < batch; ++b)
    for (const std::vector<pf::Index>& chunks : {std::vector<pf::Index>(std::size_t(tgt_len), 1),
                                                 std::vector<pf::Index>{2, tgt_len - 3, 1}}) {
      INFO(f.path() << ": sequence " << b << ", " << chunks.size() << " chunks");
      const Matrix mem_b = memory.middleRows(b * src_len, src_len);
      auto state = model.decoder().make_state(tgt_len, pf::cview(mem_b), ctx);
      pf::Index at = 0;
      for (pf::Index n : chunks) {
        const Matrix x = tgt.middleRows(b * tgt_len + at, n);
        Matrix y(n, x.cols());
        model.decoder().forward_cached(pf::cview(x), state, pf::view(y), ws, ctx);
        const Matrix want = full.middleRows(b * tgt_len + at, n);
        INFO("positions " << at << ".." << at + n - 1);
        CHECK(pft::max_abs_diff(y, want) < tolerance);
        at += n;
      }
      CHECK(state.size() == tgt_len);
    }
}

}  // namespace

TEST_CASE("models/torch_transformer: nn.Transformer decodes token by token as full recomputation",
          "[torch][decode]") {
  int transformers = 0;
  for (const auto& path : safetensors_in(pft::shared_path("reference/torch"))) {
    const auto f = pf::io::SafetensorsFile::open(path);
    const Meta m = read_meta(f);
    if (m.module != "Transformer") continue;
    ++transformers;
    for (int threads : {1, 2}) {
      const pf::Context ctx{threads};
      if (m.activation == "gelu" && m.norm_first) decode_transformer<pf::GELU, NormPlacement::pre>(f, m, ctx);
      else if (m.activation == "gelu") decode_transformer<pf::GELU, NormPlacement::post>(f, m, ctx);
      else if (m.norm_first) decode_transformer<pf::ReLU, NormPlacement::pre>(f, m, ctx);
      else decode_transformer<pf::ReLU, NormPlacement::post>(f, m, ctx);
    }
  }
  CHECK(transformers == 2);
}
