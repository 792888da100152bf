// hf_forward: the forward pass of a Hugging Face directory as transformers calls it, for checking polyformer against
// other implementations. Reads the inputs from one safetensors file, writes the outputs to another.
//
//   hf_forward --model DIR --inputs I.safetensors --out O.safetensors [--threads T]
//
// Inputs by name, shaped (batch, n), ids as F32, I32 or I64: input_ids; attention_mask (1 = token, 0 = padding;
// all ones when absent); token_type_ids (BERT; zeros when absent); T5's decoder_input_ids and
// decoder_attention_mask, shaped (batch, m). Outputs, F32:
//   BERT (BertModel, BertForMaskedLM, BertForPreTraining): last_hidden_state (batch, n, d), pooler_output
//     (batch, d) with a pooler, logits (batch, n, vocab) with a masked-LM head.
//   GPT-2, Llama: last_hidden_state (batch, n, d) after the final norm, logits (batch, n, vocab). A causal model's
//     padding must follow its tokens (right padding: ones, then zeros); padded positions are written as zeros.
//   T5 (T5ForConditionalGeneration): encoder_last_hidden_state (batch, n, d), last_hidden_state (batch, m, d: the
//     decoder's, after its final norm), logits (batch, m, vocab). The decoder takes right padding only, its padded
//     positions written as zeros; the encoder's padding may be anywhere.
// Bad input exits with code 2 and one line on stderr.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/io/safetensors.hpp"
#include "polyformer/models/hf_bert.hpp"
#include "polyformer/models/hf_gpt2.hpp"
#include "polyformer/models/hf_llama.hpp"
#include "polyformer/models/hf_t5.hpp"

#include "cli.hpp"

namespace pf = polyformer;
using pf::Index;

namespace {

using cli::usage_error;

constexpr const char* usage =
    "usage: hf_forward --model DIR --inputs I.safetensors --out O.safetensors [--threads T]\n"
    "  DIR: a Hugging Face BERT, RoBERTa, GPT-2, Llama or T5 directory (config.json and safetensors weights)\n"
    "  I: input_ids (batch, n) and optionally attention_mask, token_type_ids; for T5 decoder_input_ids (batch, m)\n"
    "     and optionally decoder_attention_mask; ids as F32, I32 or I64\n";

struct Options {
  std::string model, inputs, out;
  long long threads = 1;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&] { return cli::value_after(argc, argv, i); };
    if (a == "--model") o.model = value();
    else if (a == "--inputs") o.inputs = value();
    else if (a == "--out") o.out = value();
    else if (a == "--threads") o.threads = cli::parse_number<long long>(a, value());
    else if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    } else {
      throw usage_error("unknown option '" + a + "'");
    }
  }
  if (o.model.empty() || o.inputs.empty() || o.out.empty()) throw usage_error("--model, --inputs and --out are required");
  if (o.threads < 1 || o.threads > 1024) throw usage_error("--threads is " + std::to_string(o.threads) + ", expected 1..1024");
  return o;
}

/// The model's inputs: (batch, n) ids and masks, and an encoder-decoder's (batch, m) decoder ids and mask, checked
/// against each other.
struct Inputs {
  Index batch = 0, n = 0, m = 0;
  std::vector<int> ids, mask, types;   // (batch·n); mask and types filled in when absent
  std::vector<int> decoder_ids, decoder_mask;  // (batch·m); empty without decoder_input_ids
};

Inputs read_inputs(const std::string& path) {
  const auto file = pf::io::SafetensorsFile::open(path);
  const auto where = [&](const std::string& name) { return path + ": " + name; };
  for (const std::string& name : file.names())
    if (name != "input_ids" && name != "attention_mask" && name != "token_type_ids" && name != "decoder_input_ids" &&
        name != "decoder_attention_mask")
      throw std::runtime_error(where(name) + " is not an input hf_forward reads (input_ids, attention_mask, "
                               "token_type_ids, decoder_input_ids, decoder_attention_mask)");
  Inputs in;
  // (batch, length) of `ids_name`: its shape, which `batch` (if known) must match.
  const auto shape_of = [&](const std::string& ids_name) {
    const auto& shape = file.info(ids_name).shape;
    if (shape.size() != 2 || shape[0] < 1 || shape[1] < 1 || (in.batch > 0 && shape[0] != in.batch))
      throw std::runtime_error(where(ids_name) + " has shape " + pf::io::detail::shape_string(shape) + ", expected (" +
                               (in.batch > 0 ? std::to_string(in.batch) : std::string("batch")) + ", n)");
    return shape;
  };
  const auto read = [&](const std::string& name, const std::string& ids_name, const std::vector<std::int64_t>& shape,
                        int fill, std::int64_t max) {
    std::vector<int> v(static_cast<std::size_t>(shape[0] * shape[1]), fill);
    if (!file.contains(name)) return v;
    if (file.info(name).shape != shape)
      throw std::runtime_error(where(name) + " has shape " + pf::io::detail::shape_string(file.info(name).shape) +
                               ", expected " + pf::io::detail::shape_string(shape) + " (as " + ids_name + ")");
    const std::vector<std::int64_t> values = file.integers(name);
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (values[i] < 0 || values[i] > max)
        throw std::runtime_error(where(name) + " element " + std::to_string(i) + " is " + std::to_string(values[i]) +
                                 ", expected 0.." + std::to_string(max));
      v[i] = static_cast<int>(values[i]);
    }
    return v;
  };
  if (!file.contains("input_ids")) throw std::runtime_error(path + ": no input_ids");
  const auto shape = shape_of("input_ids");
  in.batch = shape[0];
  in.n = shape[1];
  in.ids = read("input_ids", "input_ids", shape, 0, INT32_MAX);
  in.mask = read("attention_mask", "input_ids", shape, 1, 1);
  in.types = read("token_type_ids", "input_ids", shape, 0, INT32_MAX);
  if (file.contains("decoder_input_ids")) {
    const auto decoder_shape = shape_of("decoder_input_ids");
    in.m = decoder_shape[1];
    in.decoder_ids = read("decoder_input_ids", "decoder_input_ids", decoder_shape, 0, INT32_MAX);
    in.decoder_mask = read("decoder_attention_mask", "decoder_input_ids", decoder_shape, 1, 1);
  } else if (file.contains("decoder_attention_mask")) {
    throw std::runtime_error(where("decoder_attention_mask") + " without decoder_input_ids");
  }
  return in;
}

/// The number of tokens before row `b`'s padding; runtime_error naming `what` for a token after padding.
Index right_padded_length(const std::vector<int>& mask, Index b, Index n, const std::string& what) {
  const int* row = mask.data() + b * n;
  const Index length = std::find(row, row + n, 0) - row;
  if (std::find(row + length, row + n, 1) != row + n)
    throw std::runtime_error(what + " row " + std::to_string(b) +
                             " has a token after padding: a causal model takes right padding only");
  return length;
}

pf::io::FloatTensor tensor(std::vector<std::int64_t> shape, const float* data) {
  pf::io::FloatTensor t;
  t.shape = std::move(shape);
  t.data.assign(data, data + t.numel());
  return t;
}

void run_bert(const Options& o, const Inputs& in, std::vector<std::pair<std::string, pf::io::FloatTensor>>& out) {
  const auto model = pf::load_hf_bert(o.model);
  pf::BertInputs b;
  b.input_ids = in.ids;
  b.batch = in.batch;
  b.attention_mask = in.mask;
  b.token_type_ids = in.types;
  const auto r = model.forward(b, pf::Context{static_cast<int>(o.threads)});
  const Index d = model.config().dim;
  out.emplace_back("last_hidden_state", tensor({in.batch, in.n, d}, r.last_hidden_state.data()));
  if (model.has_pooler()) out.emplace_back("pooler_output", tensor({in.batch, d}, r.pooler_output.data()));
  if (model.has_mlm_head()) out.emplace_back("logits", tensor({in.batch, in.n, r.logits.cols()}, r.logits.data()));
}

/// A causal LM's rows one sequence at a time (each with its own state), its padded positions left zero.
template <typename Model>
void run_causal(const Model& model, const Options& o, const Inputs& in,
                std::vector<std::pair<std::string, pf::io::FloatTensor>>& out) {
  const Index d = model.config().dim, vocab = model.config().vocab_size;
  if (in.n > model.config().seq_len)
    throw std::runtime_error(o.inputs + ": " + std::to_string(in.n) + " positions, more than the model's " +
                             std::to_string(model.config().seq_len));
  std::vector<float> hidden(static_cast<std::size_t>(in.batch * in.n * d), 0.0f);
  std::vector<float> logits(static_cast<std::size_t>(in.batch * in.n * vocab), 0.0f);
  typename Model::Workspace ws;
  for (Index b = 0; b < in.batch; ++b) {
    const Index length = right_padded_length(in.mask, b, in.n, o.inputs + ": attention_mask");
    if (length == 0) continue;
    auto state = model.make_state();
    model.forward(state, std::span<const int>(in.ids.data() + b * in.n, std::size_t(length)), ws,
                  pf::Context{static_cast<int>(o.threads)}, /*all_logits=*/true);
    for (Index t = 0; t < length; ++t) {
      std::copy_n(ws.normed.row(t).data(), d, hidden.data() + (b * in.n + t) * d);
      std::copy_n(ws.logits.row(t).data(), vocab, logits.data() + (b * in.n + t) * vocab);
    }
  }
  out.emplace_back("last_hidden_state", tensor({in.batch, in.n, d}, hidden.data()));
  out.emplace_back("logits", tensor({in.batch, in.n, vocab}, logits.data()));
}

/// T5: the encoder's output over each sequence's padding, the decoder's (right-padded, padded positions zero).
template <typename Act>
void run_t5(const Options& o, const Inputs& in, std::vector<std::pair<std::string, pf::io::FloatTensor>>& out) {
  const auto model = pf::load_hf_t5<Act>(o.model);
  if (in.decoder_ids.empty())
    throw std::runtime_error(o.inputs + ": no decoder_input_ids (T5 needs the decoder's ids as well as the encoder's)");
  const Index d = model.config().d_model, vocab = model.config().vocab_size;
  const pf::Context ctx{static_cast<int>(o.threads)};
  std::vector<float> memory(static_cast<std::size_t>(in.batch * in.n * d));
  std::vector<float> hidden(static_cast<std::size_t>(in.batch * in.m * d), 0.0f);
  std::vector<float> logits(static_cast<std::size_t>(in.batch * in.m * vocab), 0.0f);
  for (Index b = 0; b < in.batch; ++b) {
    const std::span<const int> mask(in.mask.data() + b * in.n, std::size_t(in.n));
    const pf::Matrix encoded = model.encode(std::span<const int>(in.ids.data() + b * in.n, std::size_t(in.n)), mask, ctx);
    std::copy_n(encoded.data(), in.n * d, memory.data() + b * in.n * d);
    const Index length = right_padded_length(in.decoder_mask, b, in.m, o.inputs + ": decoder_attention_mask");
    if (length == 0) continue;
    pf::Matrix rows;
    const pf::Matrix l = model.forward(
        encoded, mask, std::span<const int>(in.decoder_ids.data() + b * in.m, std::size_t(length)), ctx, &rows);
    std::copy_n(rows.data(), length * d, hidden.data() + b * in.m * d);
    std::copy_n(l.data(), length * vocab, logits.data() + b * in.m * vocab);
  }
  out.emplace_back("encoder_last_hidden_state", tensor({in.batch, in.n, d}, memory.data()));
  out.emplace_back("last_hidden_state", tensor({in.batch, in.m, d}, hidden.data()));
  out.emplace_back("logits", tensor({in.batch, in.m, vocab}, logits.data()));
}

void run(const Options& o) {
  const pf::io::HfDirectory dir = pf::io::HfDirectory::open(o.model);
  const std::string type = dir.config_string("model_type");
  const Inputs in = read_inputs(o.inputs);
  if (type != "t5" && !in.decoder_ids.empty())
    throw std::runtime_error(o.inputs + ": decoder_input_ids given to a " + type + " model (only T5 has a decoder)");
  std::vector<std::pair<std::string, pf::io::FloatTensor>> out;
  if (type == "bert" || type == "roberta") {
    run_bert(o, in, out);
  } else if (type == "gpt2") {
    run_causal(pf::load_hf_gpt2(o.model), o, in, out);
  } else if (type == "llama") {
    run_causal(pf::load_hf_llama(o.model), o, in, out);
  } else if (type == "t5") {
    bool gated = false;
    pf::hf_t5_config(dir, gated);
    if (gated) run_t5<pf::GeGLUTanh>(o, in, out);
    else run_t5<pf::ReLU>(o, in, out);
  } else {
    throw std::runtime_error(o.model + "/config.json: model_type is \"" + type +
                             "\", expected \"bert\", \"roberta\", \"gpt2\", \"llama\" or \"t5\" (the models hf_forward runs)");
  }

  pf::io::write_safetensors(o.out, out);
}

}  // namespace

int main(int argc, char** argv) {
  return cli::guarded_main("hf_forward", [&] {
    run(parse(argc, argv));
    return 0;
  });
}
