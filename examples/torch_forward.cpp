// torch_forward: runs a PyTorch nn.TransformerEncoderLayer / nn.TransformerDecoderLayer / nn.Transformer
// state dict (safetensors) on inputs from another safetensors file and writes the outputs.
//
//   torch_forward --weights W.safetensors --inputs I.safetensors --out O.safetensors
//                 [--module encoder_layer|decoder_layer|transformer] [--nhead N] [--norm-first]
//                 [--activation relu|gelu] [--layer-norm-eps E] [--threads T] [--grad-output G.safetensors]
//
// Options missing on the command line come from the weights file's __metadata__. Inputs are found by
// name (src, tgt, memory, src_mask, tgt_mask, memory_mask, *_key_padding_mask), with or without an
// "input." prefix, shaped (batch, seq, d) or (seq, d). Exit code 2 on bad input.
//
// With --grad-output, G holds "y", the gradient of a loss with respect to the output y (loss = Σ y ⊙ G.y, the
// output's shape); --out then also gets "grad.<input>" for every float input (src, tgt, memory) and "grad.<name>" for every
// parameter, under its state-dict name. Any other tensor in G, or a misshaped "y", is an error.

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "polyformer/polyformer.hpp"

#include "cli.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

using cli::usage_error;

constexpr const char* usage =
    "usage: torch_forward --weights W.safetensors --inputs I.safetensors --out O.safetensors\n"
    "                     [--module encoder_layer|decoder_layer|transformer] [--nhead N] [--norm-first]\n"
    "                     [--activation relu|gelu] [--layer-norm-eps E] [--threads T]\n"
    "                     [--grad-output G.safetensors]\n";

struct Options {
  std::string weights, inputs, out, module, activation, grad_output;
  std::optional<Index> nhead;
  std::optional<bool> norm_first;
  std::optional<float> eps;
  Index enc_layers = 0, dec_layers = 0;
  int threads = 1;
};

long parse_int(const std::string& flag, const std::string& value) { return cli::parse_number<long>(flag, value); }

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--weights") o.weights = value();
    else if (a == "--inputs") o.inputs = value();
    else if (a == "--out") o.out = value();
    else if (a == "--module") o.module = value();
    else if (a == "--grad-output") o.grad_output = value();
    else if (a == "--activation") o.activation = value();
    else if (a == "--nhead") o.nhead = parse_int(a, value());
    else if (a == "--norm-first") o.norm_first = true;
    else if (a == "--threads") o.threads = static_cast<int>(parse_int(a, value()));
    else if (a == "--layer-norm-eps") {
      const std::string v = value();
      try {
        o.eps = std::stof(v);
      } catch (const std::exception&) {
        throw usage_error("--layer-norm-eps expects a number, got '" + v + "'");
      }
    } else if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    } else throw usage_error("unknown option '" + a + "'");
  }
  if (o.weights.empty() || o.inputs.empty() || o.out.empty())
    throw usage_error("--weights, --inputs and --out are required");
  return o;
}

// Fills what the command line left open from the weights file's metadata.
void complete(Options& o, const pf::io::SafetensorsFile& w) {
  const auto meta = [&](const char* key) { return w.metadata_value(key); };
  if (o.module.empty()) {
    auto m = meta("module");
    if (!m) throw usage_error("--module not given and the weights file has no 'module' metadata");
    if (m->rfind("torch.nn.", 0) == 0) m = m->substr(9);
    if (*m == "TransformerEncoderLayer" || *m == "encoder_layer") o.module = "encoder_layer";
    else if (*m == "TransformerDecoderLayer" || *m == "decoder_layer") o.module = "decoder_layer";
    else if (*m == "Transformer" || *m == "transformer") o.module = "transformer";
    else throw usage_error("metadata module '" + *m + "' is not one of TransformerEncoderLayer, "
                           "TransformerDecoderLayer, Transformer");
  }
  if (o.module != "encoder_layer" && o.module != "decoder_layer" && o.module != "transformer")
    throw usage_error("--module is '" + o.module + "', expected encoder_layer, decoder_layer or transformer");
  if (!o.nhead) {
    const auto v = meta("nhead");
    if (!v) throw usage_error("--nhead not given and the weights file has no 'nhead' metadata");
    o.nhead = parse_int("metadata nhead", *v);
  }
  if (*o.nhead < 1) throw usage_error("--nhead must be >= 1");
  if (!o.norm_first) {
    const auto v = meta("norm_first");
    o.norm_first = v && (*v == "True" || *v == "true" || *v == "1");
  }
  if (o.activation.empty()) o.activation = meta("activation").value_or("relu");
  if (o.activation != "relu" && o.activation != "gelu")
    throw usage_error("--activation is '" + o.activation + "', expected relu or gelu");
  if (!o.eps) o.eps = meta("layer_norm_eps") ? std::stof(*meta("layer_norm_eps")) : 1e-5f;
  if (o.module == "transformer") {
    const auto e = meta("num_encoder_layers"), d = meta("num_decoder_layers");
    if (!e || !d) throw usage_error("the weights file has no num_encoder_layers / num_decoder_layers metadata");
    o.enc_layers = parse_int("metadata num_encoder_layers", *e);
    o.dec_layers = parse_int("metadata num_decoder_layers", *d);
  }
}

// An input tensor by name, with or without the "input." prefix.
std::optional<pf::io::FloatTensor> find_input(const pf::io::SafetensorsFile& in, const std::string& name) {
  for (const std::string& n : {name, "input." + name})
    if (in.contains(n)) return in.tensor(n);
  return std::nullopt;
}

// A (batch, seq, d) or (seq, d) sequence tensor as rows, with its batch size.
struct Sequence {
  Matrix rows;
  Index batch = 1, length = 0;
  std::vector<std::int64_t> shape;
};

Sequence sequence(const pf::io::SafetensorsFile& in, const std::string& name, Index d) {
  auto t = find_input(in, name);
  if (!t) throw usage_error("inputs file has no tensor '" + name + "'");
  Sequence s;
  s.shape = t->shape;
  if (t->shape.size() == 3) s.batch = t->shape[0], s.length = t->shape[1];
  else if (t->shape.size() == 2) s.batch = 1, s.length = t->shape[0];
  else throw usage_error("input '" + name + "' has " + std::to_string(t->shape.size()) +
                         " dimensions, expected (batch, seq, d) or (seq, d)");
  if (t->shape.back() != d)
    throw usage_error("input '" + name + "' has last dimension " + std::to_string(t->shape.back()) +
                      ", expected d_model " + std::to_string(d));
  s.rows = Eigen::Map<const Matrix>(t->data.data(), s.batch * s.length, d);
  return s;
}

// Masks owned here; MaskSpec views into them.
struct MaskStore {
  std::vector<Matrix> kept;
  pf::MaskSpec spec(const pf::io::SafetensorsFile& in, const std::string& mask_name, const std::string& pad_name,
                    Index batch, Index n_q, Index n_k) {
    pf::MaskSpec m;
    kept.reserve(8);
    if (auto t = find_input(in, mask_name)) {
      if (t->shape.size() != 2 || t->shape[0] != n_q || t->shape[1] != n_k)
        throw usage_error("input '" + mask_name + "' must have shape (" + std::to_string(n_q) + ", " +
                          std::to_string(n_k) + ")");
      kept.push_back(Eigen::Map<const Matrix>(t->data.data(), n_q, n_k));
      m.additive = pf::cview(kept.back());
    }
    if (auto t = find_input(in, pad_name)) {
      if (t->shape.size() != 2 || t->shape[0] != batch || t->shape[1] != n_k)
        throw usage_error("input '" + pad_name + "' must have shape (" + std::to_string(batch) + ", " +
                          std::to_string(n_k) + ")");
      kept.push_back(Eigen::Map<const Matrix>(t->data.data(), batch, n_k));
      m.key_padding = pf::cview(kept.back());
    }
    return m;
  }
};

pf::io::FloatTensor to_tensor(const Matrix& rows, const std::vector<std::int64_t>& shape) {
  return {shape, std::vector<float>(rows.data(), rows.data() + rows.size())};
}

// The output's gradient from the --grad-output file: "y" of the output's shape, and nothing else.
Matrix grad_output(const std::string& path, const Sequence& output) {
  const auto g = pf::io::SafetensorsFile::open(path);
  for (const std::string& name : g.names())
    if (name != "y") throw usage_error("--grad-output file has a tensor '" + name + "', expected only 'y'");
  if (!g.contains("y")) throw usage_error("--grad-output file has no tensor 'y'");
  const auto t = g.tensor("y");
  if (t.shape != output.shape) {
    std::string want, got;
    for (auto e : output.shape) want += (want.empty() ? "" : ", ") + std::to_string(e);
    for (auto e : t.shape) got += (got.empty() ? "" : ", ") + std::to_string(e);
    throw usage_error("--grad-output tensor 'y' has shape (" + got + "), expected the output's (" + want + ")");
  }
  return Eigen::Map<const Matrix>(t.data.data(), output.rows.rows(), output.rows.cols());
}

// Every gradient of `list` as "grad.<name>" in its parameter's shape.
void add_gradients(const pf::GradientList& list, std::vector<std::pair<std::string, pf::io::FloatTensor>>& out) {
  for (const pf::Gradient& g : list.items()) {
    pf::io::FloatTensor t{std::vector<std::int64_t>(g.shape.begin(), g.shape.end()),
                          std::vector<float>(static_cast<std::size_t>(g.numel()))};
    g.read(t.data.data());
    out.emplace_back("grad." + g.name, std::move(t));
  }
}

template <typename Act, pf::NormPlacement P>
void run(const Options& o, const pf::io::SafetensorsFile& w, const pf::io::SafetensorsFile& in) {
  const pf::torch::LayerOptions lo{*o.nhead, *o.eps};
  const pf::Context ctx{o.threads};
  std::vector<std::pair<std::string, pf::io::FloatTensor>> out;
  MaskStore masks;
  if (o.module == "encoder_layer") {
    auto layer = pf::torch::load_encoder_layer<pf::torch::EncoderLayer<Act, P>>(w, "", lo);
    const Sequence src = sequence(in, "src", layer.d_model());
    const auto m = masks.spec(in, "src_mask", "src_key_padding_mask", src.batch, src.length, src.length);
    if (o.grad_output.empty()) {
      out.emplace_back("y", to_tensor(layer.forward(src.rows, src.batch, m, ctx), src.shape));
    } else {
      const Matrix dy = grad_output(o.grad_output, src);
      using Layer = decltype(layer);
      typename Layer::Saved saved;
      auto grads = layer.make_gradients();
      Matrix y(src.rows.rows(), src.rows.cols()), dsrc(y.rows(), y.cols());
      layer.forward_train(pf::cview(src.rows), src.batch, m, pf::view(y), saved, ctx);
      layer.backward(pf::cview(dy), pf::view(dsrc), grads, saved, ctx);
      out.emplace_back("y", to_tensor(y, src.shape));
      out.emplace_back("grad.src", to_tensor(dsrc, src.shape));
      add_gradients(pf::gradients_of(layer, grads), out);
    }
  } else if (o.module == "decoder_layer") {
    auto layer = pf::torch::load_decoder_layer<pf::torch::DecoderLayer<Act, P>>(w, "", lo);
    const Sequence tgt = sequence(in, "tgt", layer.d_model()), mem = sequence(in, "memory", layer.d_model());
    if (mem.batch != tgt.batch) throw usage_error("memory and tgt have different batch sizes");
    pf::DecoderMasks dm{masks.spec(in, "tgt_mask", "tgt_key_padding_mask", tgt.batch, tgt.length, tgt.length),
                        masks.spec(in, "memory_mask", "memory_key_padding_mask", tgt.batch, tgt.length, mem.length)};
    if (o.grad_output.empty()) {
      out.emplace_back("y", to_tensor(layer.forward(tgt.rows, mem.rows, tgt.batch, dm, ctx), tgt.shape));
    } else {
      const Matrix dy = grad_output(o.grad_output, tgt);
      using Layer = decltype(layer);
      typename Layer::Saved saved;
      auto grads = layer.make_gradients();
      Matrix y(tgt.rows.rows(), tgt.rows.cols()), dtgt(y.rows(), y.cols()), dmem(mem.rows.rows(), mem.rows.cols());
      layer.forward_train(pf::cview(tgt.rows), pf::cview(mem.rows), tgt.batch, dm, pf::view(y), saved, ctx);
      layer.backward(pf::cview(dy), pf::view(dtgt), pf::view(dmem), grads, saved, ctx);
      out.emplace_back("y", to_tensor(y, tgt.shape));
      out.emplace_back("grad.tgt", to_tensor(dtgt, tgt.shape));
      out.emplace_back("grad.memory", to_tensor(dmem, mem.shape));
      add_gradients(pf::gradients_of(layer, grads), out);
    }
  } else {
    auto model = pf::torch::load_transformer<pf::torch::Transformer<Act, P>>(w, o.enc_layers, o.dec_layers, lo);
    const Index d = model.encoder().d_model();
    const Sequence src = sequence(in, "src", d), tgt = sequence(in, "tgt", d);
    if (src.batch != tgt.batch) throw usage_error("src and tgt have different batch sizes");
    pf::EncoderDecoderMasks em{
        masks.spec(in, "src_mask", "src_key_padding_mask", src.batch, src.length, src.length),
        masks.spec(in, "tgt_mask", "tgt_key_padding_mask", tgt.batch, tgt.length, tgt.length),
        masks.spec(in, "memory_mask", "memory_key_padding_mask", tgt.batch, tgt.length, src.length)};
    Matrix memory;
    if (o.grad_output.empty()) {
      out.emplace_back("y", to_tensor(model.forward(src.rows, tgt.rows, src.batch, em, ctx, &memory), tgt.shape));
      out.emplace_back("memory", to_tensor(memory, src.shape));
    } else {
      const Matrix dy = grad_output(o.grad_output, tgt);
      using Model = decltype(model);
      typename Model::Saved saved;
      auto grads = model.make_gradients();
      Matrix y(tgt.rows.rows(), d), dsrc(src.rows.rows(), d), dtgt(tgt.rows.rows(), d);
      memory.resize(src.rows.rows(), d);
      model.forward_train(pf::cview(src.rows), pf::cview(tgt.rows), src.batch, em, pf::view(y), pf::view(memory), saved,
                          ctx);
      model.backward(pf::cview(dy), pf::view(dsrc), pf::view(dtgt), grads, saved, ctx);
      out.emplace_back("y", to_tensor(y, tgt.shape));
      out.emplace_back("memory", to_tensor(memory, src.shape));
      out.emplace_back("grad.src", to_tensor(dsrc, src.shape));
      out.emplace_back("grad.tgt", to_tensor(dtgt, tgt.shape));
      add_gradients(pf::gradients_of(model, grads), out);
    }
  }
  pf::io::write_safetensors(o.out, out, {{"producer", "polyformer torch_forward"}, {"module", o.module}});
}

}  // namespace

int main(int argc, char** argv) {
  pf::kernels::use_single_threaded_backends();  // polyformer threads its own products
  return cli::guarded_main("torch_forward", [&] {
    Options o = parse(argc, argv);
    const auto weights = pf::io::SafetensorsFile::open(o.weights);
    const auto inputs = pf::io::SafetensorsFile::open(o.inputs);
    complete(o, weights);
    const bool gelu = o.activation == "gelu";
    if (gelu && *o.norm_first) run<pf::GELU, pf::NormPlacement::pre>(o, weights, inputs);
    else if (gelu) run<pf::GELU, pf::NormPlacement::post>(o, weights, inputs);
    else if (*o.norm_first) run<pf::ReLU, pf::NormPlacement::pre>(o, weights, inputs);
    else run<pf::ReLU, pf::NormPlacement::post>(o, weights, inputs);
    return 0;
  });
}
