// train: trains or fine-tunes a Llama-architecture model (llama2.c's) on the CPU, next-token cross-entropy, as
// llama2.c's train.py does: AdamW (β 0.9/0.95, weight decay 0.1 on matrices and embeddings), gradient clipping at
// 1.0, linear warm-up then cosine decay, gradient accumulation; fully, or only LoRA factors, or with named
// tensors frozen; with any attention policy that decodes incrementally.
//
//   train [--model M.bin | --config dim=D,layers=L,heads=H,kv_heads=K,hidden=F,vocab=V,seq_len=S]
//         [--tokenizer T.bin] --data FILE [--val FILE] [--seq-len N] [--batch B] [--steps S] [--lr LR]
//         [--min-lr LR] [--warmup W] [--schedule constant|linear|cosine] [--optimizer adamw|sgd] [--beta1 B1]
//         [--beta2 B2] [--eps E] [--weight-decay WD] [--momentum M] [--clip C] [--accum K]
//         [--lora r:alpha[:targets]] [--bitfit] [--freeze NAME,...] [--attention POLICY] [--seed S] [--threads T]
//         [--save OUT.bin] [--save-adapter DIR] [--checkpoint DIR] [--resume DIR] [--log FILE.csv]
//         [--grads-out G.safetensors] [--eval-every K] [--val-share F] [--sample N]
//
// Data: a .txt file is encoded as generate encodes a prompt (the whole text, BOS first); a .bin file holds
// llama2.c's pretokenized uint16 ids. Window k is tokens [k·N, k·N + N]; step s reads the next accum × batch
// windows in file order (wrapping around), or in a permutation per pass with --shuffle SEED. Without --val, the
// last --val-share of the data (5 % by default; 0: none) is held out for validation.
// Without --model and --data it trains a small model from scratch on the fortune cookies of Debian's `fortunes`
// package (/usr/share/games/fortunes, `apt-get install fortunes`) with a byte-level vocabulary, then prints
// samples. --steps 0 --grads-out G writes step 0's loss and the gradient of every trainable tensor under its
// model.py name. Exit code 2, with one line, on bad input; an existing checkpoint or export is replaced only by a
// complete new file.

#include <algorithm>
#include <array>
#include <bit>
#include <cstdlib>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "polyformer/polyformer.hpp"
#include "polyformer/attention/dynamic_attention.hpp"
#include "polyformer/models/llama_export.hpp"
#include "polyformer/models/llama_lora.hpp"
#include "polyformer/train/checkpoint.hpp"
#include "polyformer/train/data.hpp"
#include "polyformer/train/fine_tuning.hpp"
#include "polyformer/train/trainer.hpp"

#ifdef POLYFORMER_WITH_MPI
#include "polyformer/train/data_parallel.hpp"
#endif

#include "../bench/resident_memory.hpp"
#include "cli.hpp"

namespace pf = polyformer;

namespace {

using cli::parse_number;
using cli::usage_error;

const std::string usage =
    "usage: train [--model M.bin | --config dim=D,layers=L,heads=H,kv_heads=K,hidden=F,vocab=V,seq_len=S]\n"
    "             [--tokenizer T.bin] [--data FILE.txt|FILE.bin] [--val FILE] [--val-share F] [--seq-len N]\n"
    "             [--batch B] [--steps S] [--lr LR] [--min-lr LR] [--warmup W] [--schedule constant|linear|cosine]\n"
    "             [--optimizer adamw|sgd] [--beta1 B1] [--beta2 B2] [--eps E] [--weight-decay WD] [--momentum M]\n"
    "             [--clip C] [--accum K] [--lora r:alpha[:targets]] [--bitfit] [--freeze NAME,...]\n"
    "             [--attention " + pf::attention_usage<pf::AttentionPolicies, /*incremental_only=*/true>() + "]\n"
    "             [--shuffle SEED] [--seed S] [--threads T] [--save OUT.bin] [--save-adapter DIR]\n"
    "             [--checkpoint DIR] [--resume DIR] [--log FILE.csv] [--grads-out G.safetensors]\n"
    "             [--eval-every K] [--sample N]\n";

using Model = pf::Llama<pf::DynamicIncrementalAttention, pf::LoRA<pf::Dense>>;

/// This process's place in a data-parallel run (mpirun -np R train …); one rank without MPI.
struct Cluster {
  int rank = 0, ranks = 1;
  bool leader() const noexcept { return rank == 0; }
};
Cluster cluster;

struct LoraOption {
  pf::Index rank = 0;
  float alpha = 0.0f;
  std::vector<std::string> targets{"wq", "wv"};
};

struct Options {
  std::string model, config, tokenizer, data, val, save, save_adapter, checkpoint, resume, log, grads_out;
  std::string attention = "full", schedule = "cosine", optimizer = "adamw";
  std::optional<pf::Index> seq_len, warmup;
  pf::Index batch = 8, steps = 100, accum = 1, threads = 0, eval_every = 0, sample = 0;
  double lr = 5e-4, min_lr = 0.0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, momentum = 0.0,
         clip = 1.0, val_share = 0.05;
  std::optional<LoraOption> lora;
  bool bitfit = false;
  std::vector<std::string> freeze;
  std::optional<std::uint64_t> shuffle;
  std::uint64_t seed = 1337;
  bool embedded = false;  // the default run: no --model, no --data
  std::set<std::string> given;  // the flags on the command line
};

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(text);
  while (std::getline(in, part, sep)) parts.push_back(part);
  if (!text.empty() && text.back() == sep) parts.emplace_back();
  return parts;
}

LoraOption parse_lora(const std::string& text) {
  const auto parts = split(text, ':');
  if (parts.size() < 2 || parts.size() > 3) throw usage_error("--lora expects r:alpha[:targets], got '" + text + "'");
  LoraOption o;
  o.rank = parse_number<long long>("--lora r", parts[0]);
  o.alpha = parse_number<float>("--lora alpha", parts[1]);
  if (o.rank < 1 || !(o.alpha > 0.0f)) throw usage_error("--lora '" + text + "': expected r >= 1 and alpha > 0");
  if (parts.size() == 3) {
    o.targets = split(parts[2], ',');
    for (const auto& t : o.targets)
      if (t.empty()) throw usage_error("--lora '" + text + "': an empty target, expected names such as wq,wv");
  }
  return o;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    o.given.insert(a);
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw usage_error(a + " needs a value");
      return argv[++i];
    };
    const auto count = [&] { return static_cast<pf::Index>(parse_number<long long>(a, value())); };
    const auto real = [&] { return parse_number<double>(a, value()); };
    if (a == "--model") o.model = value();
    else if (a == "--config") o.config = value();
    else if (a == "--tokenizer") o.tokenizer = value();
    else if (a == "--data") o.data = value();
    else if (a == "--val") o.val = value();
    else if (a == "--val-share") o.val_share = real();
    else if (a == "--seq-len") o.seq_len = count();
    else if (a == "--batch") o.batch = count();
    else if (a == "--steps") o.steps = count();
    else if (a == "--lr") o.lr = real();
    else if (a == "--min-lr") o.min_lr = real();
    else if (a == "--warmup") o.warmup = count();
    else if (a == "--schedule") o.schedule = value();
    else if (a == "--optimizer") o.optimizer = value();
    else if (a == "--beta1") o.beta1 = real();
    else if (a == "--beta2") o.beta2 = real();
    else if (a == "--eps") o.eps = real();
    else if (a == "--weight-decay") o.weight_decay = real();
    else if (a == "--momentum") o.momentum = real();
    else if (a == "--clip") o.clip = real();
    else if (a == "--accum") o.accum = count();
    else if (a == "--lora") o.lora = parse_lora(value());
    else if (a == "--bitfit") o.bitfit = true;
    else if (a == "--freeze") o.freeze = split(value(), ',');
    else if (a == "--attention") o.attention = value();
    else if (a == "--shuffle") o.shuffle = parse_number<unsigned long long>(a, value());
    else if (a == "--seed") o.seed = parse_number<unsigned long long>(a, value());
    else if (a == "--threads") o.threads = count();
    else if (a == "--save") o.save = value();
    else if (a == "--save-adapter") o.save_adapter = value();
    else if (a == "--checkpoint") o.checkpoint = value();
    else if (a == "--resume") o.resume = value();
    else if (a == "--log") o.log = value();
    else if (a == "--grads-out") o.grads_out = value();
    else if (a == "--eval-every") o.eval_every = count();
    else if (a == "--sample") o.sample = count();
    else if (a == "--help" || a == "-h") {
      std::fputs(usage.c_str(), stdout);
      std::exit(0);
    } else {
      throw usage_error("unknown option '" + a + "'");
    }
  }
  if (!o.model.empty() && !o.config.empty()) throw usage_error("--model and --config exclude each other");
  o.embedded = o.model.empty() && o.data.empty();
  if (o.data.empty() && !o.embedded) throw usage_error("--data is required with --model");
  if (o.batch < 1 || o.accum < 1) throw usage_error("--batch and --accum must be >= 1");
  if (o.steps < 0) throw usage_error("--steps is " + std::to_string(o.steps) + ", expected >= 0");
  if (o.threads < 0 || o.threads > 1024) throw usage_error("--threads is " + std::to_string(o.threads) + ", expected 1..1024");
  if (!(o.val_share >= 0.0 && o.val_share < 1.0)) throw usage_error("--val-share expects a share in [0, 1)");
  if (o.schedule != "constant" && o.schedule != "linear" && o.schedule != "cosine")
    throw usage_error("--schedule is '" + o.schedule + "', expected constant, linear or cosine");
  if (o.optimizer != "adamw" && o.optimizer != "sgd")
    throw usage_error("--optimizer is '" + o.optimizer + "', expected adamw or sgd");
  if (!o.grads_out.empty() && o.steps != 0) throw usage_error("--grads-out needs --steps 0");
  if (o.lora && !o.freeze.empty()) throw usage_error("--lora trains the adapters alone; --freeze is for full training");
  if (o.embedded) {  // the default run's settings (about 1M tokens, under 2 minutes on 2 cores), unless given
    if (o.config.empty()) o.config = "dim=128,layers=4,heads=4,kv_heads=4,hidden=384,vocab=259,seq_len=128";
    if (!o.given.count("--steps")) o.steps = 1000;
    if (!o.given.count("--lr")) o.lr = 2e-3;
    if (!o.given.count("--min-lr")) o.min_lr = 1e-4;
    if (!o.given.count("--warmup")) o.warmup = 50;
    if (!o.given.count("--shuffle")) o.shuffle = o.seed;
  }
  return o;
}

/// --config's sizes: every key of dim, layers, heads, kv_heads, hidden, vocab, seq_len.
pf::io::LlamaConfig parse_config(const std::string& text) {
  pf::io::LlamaConfig c;
  c.shared_classifier = true;
  std::map<std::string, pf::Index*> keys{{"dim", &c.dim},       {"layers", &c.n_layers}, {"heads", &c.n_heads},
                                         {"kv_heads", &c.n_kv_heads}, {"hidden", &c.hidden_dim},
                                         {"vocab", &c.vocab_size}, {"seq_len", &c.seq_len}};
  std::map<std::string, bool> seen;
  for (const auto& item : split(text, ',')) {
    const auto eq = item.find('=');
    const std::string key = item.substr(0, eq);
    const auto it = keys.find(key);
    if (eq == std::string::npos || it == keys.end())
      throw usage_error("--config: '" + item + "', expected key=value with key one of dim, layers, heads, kv_heads, "
                        "hidden, vocab, seq_len");
    *it->second = parse_number<long long>("--config " + key, item.substr(eq + 1));
    seen[key] = true;
  }
  if (!seen["kv_heads"]) c.n_kv_heads = c.n_heads;
  for (const auto& [key, ptr] : keys)
    if (!seen[key] && key != "kv_heads") throw usage_error("--config lacks " + key);
  try {
    c.validate("--config");
  } catch (const pf::config_error& e) {
    throw usage_error(e.what());
  }
  return c;
}

/// A byte-level vocabulary in llama2.c's tokenizer format: <unk>, <s>, </s>, then <0x00> … <0xFF>, so every text
/// encodes (as bytes) and decodes exactly.
pf::io::Tokenizer byte_tokenizer() {
  std::vector<unsigned char> bytes;
  const auto put = [&](const void* p, std::size_t n) {
    const auto* c = static_cast<const unsigned char*>(p);
    bytes.insert(bytes.end(), c, c + n);
  };
  const auto piece = [&](const std::string& s) {
    const float score = 0.0f;
    const std::int32_t len = static_cast<std::int32_t>(s.size());
    put(&score, 4);
    put(&len, 4);
    put(s.data(), s.size());
  };
  const std::int32_t max_len = 6;
  put(&max_len, 4);
  piece("<unk>");
  piece("\n<s>\n");
  piece("\n</s>\n");
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    piece(name);
  }
  return pf::io::Tokenizer::parse(bytes, 259, "byte vocabulary");
}

/// The default run's corpus: every fortune file of Debian's fortunes package, in name order.
std::string fortunes_text() {
  const std::filesystem::path dir = "/usr/share/games/fortunes";
  std::error_code ec;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.is_regular_file() && !e.is_symlink() && e.path().extension() != ".dat") files.push_back(e.path());
  if (ec || files.empty())
    throw std::runtime_error("no --data given and no fortune files in " + dir.string() +
                             " (apt-get install fortunes, or pass --data FILE)");
  std::sort(files.begin(), files.end());
  std::string text;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    text.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return text;
}

/// llama2.c model.py's initialization: every matrix N(0, 0.02), wo and w3 N(0, 0.02/√(2·layers)), norm gains 1.
void initialize(Model& model, std::uint64_t seed) {
  pf::SplitMix64 rng{seed};
  const double scaled = 0.02 / std::sqrt(2.0 * static_cast<double>(model.config().n_layers));
  const pf::ParameterList params = pf::parameters_of(model);
  for (const pf::Parameter& p : params.items()) {
    std::vector<float> v(static_cast<std::size_t>(p.numel()));
    if (p.shape.size() == 1) {
      std::fill(v.begin(), v.end(), 1.0f);
    } else {
      const bool narrow = p.name.ends_with("wo.weight") || p.name.ends_with("w3.weight");
      const double sd = narrow ? scaled : 0.02;
      for (std::size_t i = 0; i < v.size(); i += 2) {  // Box–Muller, two normals per pair of uniforms
        const double u1 = 1.0 - rng.uniform(), u2 = rng.uniform();
        const double r = std::sqrt(-2.0 * std::log(u1)), t = 2.0 * 3.14159265358979323846 * u2;
        v[i] = static_cast<float>(sd * r * std::cos(t));
        if (i + 1 < v.size()) v[i + 1] = static_cast<float>(sd * r * std::sin(t));
      }
    }
    p.write(v.data());
  }
}

std::string format_duration(double seconds) {
  const long s = static_cast<long>(seconds + 0.5);
  char text[32];
  std::snprintf(text, sizeof text, "%ld:%02ld", s / 60, s % 60);
  return text;
}

/// The loss curve beside the CSV: FILE.svg with the training loss and, where measured, the validation loss.
void write_loss_svg(const std::string& path, const std::vector<std::array<double, 3>>& points) {
  if (points.empty()) return;
  double max_step = 1, lo = 1e300, hi = -1e300;
  for (const auto& [step, loss, val] : points) {
    max_step = std::max(max_step, step);
    for (double y : {loss, val})
      if (std::isfinite(y)) lo = std::min(lo, y), hi = std::max(hi, y);
  }
  if (!(hi > lo)) hi = lo + 1;
  const double w = 640, h = 400, m = 50;
  const auto x = [&](double s) { return m + (w - 2 * m) * s / max_step; };
  const auto y = [&](double v) { return h - m - (h - 2 * m) * (v - lo) / (hi - lo); };
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << w << "\" height=\"" << h << "\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << m << "\" y=\"20\" font-family=\"sans-serif\" font-size=\"14\">loss (blue: training, orange: "
      << "validation) by step</text>\n"
      << "<line x1=\"" << m << "\" y1=\"" << h - m << "\" x2=\"" << w - m << "\" y2=\"" << h - m << "\" stroke=\"black\"/>\n"
      << "<line x1=\"" << m << "\" y1=\"" << m << "\" x2=\"" << m << "\" y2=\"" << h - m << "\" stroke=\"black\"/>\n";
  for (int k = 0; k <= 4; ++k) {
    const double v = lo + (hi - lo) * k / 4;
    svg << "<text x=\"4\" y=\"" << y(v) + 4 << "\" font-family=\"sans-serif\" font-size=\"11\">" << std::fixed
        << std::setprecision(2) << v << "</text>\n";
  }
  svg << "<text x=\"" << w - m << "\" y=\"" << h - m + 18 << "\" font-family=\"sans-serif\" font-size=\"11\" "
      << "text-anchor=\"end\">" << static_cast<long>(max_step) << "</text>\n";
  for (int series = 1; series <= 2; ++series) {
    svg << "<polyline fill=\"none\" stroke=\"" << (series == 1 ? "#1f77b4" : "#ff7f0e") << "\" points=\"";
    for (const auto& pt : points)
      if (std::isfinite(pt[static_cast<std::size_t>(series)]))
        svg << x(pt[0]) << "," << y(pt[static_cast<std::size_t>(series)]) << " ";
    svg << "\"/>\n";
  }
  svg << "</svg>\n";
  const std::string text = svg.str();
  pf::io::detail::write_file_replace(path, std::vector<unsigned char>(text.begin(), text.end()), "svg");
}

/// The run's settings that a resume must share (model, what trains, how batches are cut).
std::map<std::string, std::string> run_settings(const Options& o, const pf::io::LlamaConfig& c, pf::Index seq_len) {
  std::ostringstream config;
  config << "dim=" << c.dim << ",layers=" << c.n_layers << ",heads=" << c.n_heads << ",kv_heads=" << c.n_kv_heads
         << ",hidden=" << c.hidden_dim << ",vocab=" << c.vocab_size << ",seq_len=" << c.seq_len
         << ",shared=" << c.shared_classifier;
  std::string lora = "none", freeze;
  if (o.lora) {
    lora = std::to_string(o.lora->rank) + ":" + std::to_string(o.lora->alpha) + ":";
    for (const auto& t : o.lora->targets) lora += t + ",";
  }
  for (const auto& f : o.freeze) freeze += f + ",";
  return {{"run.config", config.str()}, {"run.lora", lora},           {"run.freeze", freeze},
          {"run.attention", o.attention}, {"run.optimizer", o.optimizer}, {"run.seq_len", std::to_string(seq_len)},
          {"run.batch", std::to_string(o.batch)}, {"run.accum", std::to_string(o.accum)},
          {"run.shuffle", o.shuffle ? std::to_string(*o.shuffle) : "none"}};
}

int run(const Options& o) {
  const pf::Context ctx{static_cast<int>(o.threads > 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency()))};
  const auto attention = [&] {
    try {
      return pf::DynamicIncrementalAttention::parse(o.attention);
    } catch (const pf::config_error& e) {
      throw usage_error(std::string("--attention: ") + e.what());
    }
  }();

  // The model: a llama2.c checkpoint, or fresh sizes initialized as model.py does.
  std::optional<Model> loaded;
  if (!o.model.empty()) {
    loaded.emplace(pf::load_llama2c<pf::LoRA<pf::Dense>>(o.model, attention));
  } else {
    loaded.emplace(pf::make_llama<pf::LoRA<pf::Dense>>(parse_config(o.config), attention));
    initialize(*loaded, o.seed);
  }
  Model& model = *loaded;
  const pf::io::LlamaConfig& config = model.config();
  const pf::Index seq_len = o.seq_len.value_or(config.seq_len);
  if (seq_len < 1 || seq_len > config.seq_len)
    throw usage_error("--seq-len is " + std::to_string(seq_len) + ", expected 1.." + std::to_string(config.seq_len) +
                      " (the model's seq_len)");

  // The tokenizer: given, or the byte vocabulary of the default run.
  std::optional<pf::io::Tokenizer> tokenizer;
  if (!o.tokenizer.empty()) tokenizer = pf::io::Tokenizer::read(o.tokenizer, static_cast<int>(config.vocab_size));
  else if (o.embedded || (o.model.empty() && config.vocab_size == 259)) tokenizer = byte_tokenizer();
  if (tokenizer && tokenizer->vocab_size() != config.vocab_size)
    throw usage_error("the tokenizer has " + std::to_string(tokenizer->vocab_size()) + " tokens, the model " +
                      std::to_string(config.vocab_size));

  // The data.
  const auto read_tokens = [&](const std::string& path) -> std::vector<int> {
    const std::string ext = std::filesystem::path(path).extension().string();
    if (ext == ".bin") return pf::read_token_shard(path, config.vocab_size);
    if (ext != ".txt") throw usage_error("--data/--val '" + path + "': expected a .txt text or a .bin token shard");
    if (!tokenizer) throw usage_error("'" + path + "' is text: --tokenizer is required to encode it");
    return pf::read_text_tokens(path, *tokenizer);
  };
  std::vector<int> train_tokens, val_tokens;
  if (o.embedded) train_tokens = tokenizer->encode(fortunes_text(), /*bos=*/true);
  else train_tokens = read_tokens(o.data);
  if (!o.val.empty()) {
    val_tokens = read_tokens(o.val);
  } else if (o.val_share > 0.0) {  // hold out the tail, if it leaves both parts a window
    const auto held = static_cast<std::size_t>(static_cast<double>(train_tokens.size()) * o.val_share);
    if (held >= static_cast<std::size_t>(seq_len + 1) && train_tokens.size() - held >= static_cast<std::size_t>(seq_len + 1)) {
      val_tokens.assign(train_tokens.end() - static_cast<std::ptrdiff_t>(held), train_tokens.end());
      train_tokens.resize(train_tokens.size() - held);
    }
  }
  pf::TokenWindows train(std::move(train_tokens), seq_len, o.shuffle, o.embedded ? "fortunes" : o.data);
  std::optional<pf::TokenWindows> val;
  if (!val_tokens.empty()) val.emplace(std::move(val_tokens), seq_len, std::nullopt, o.val.empty() ? "held-out" : o.val);

  // What trains.
  if (o.lora) {
    try {
      pf::add_lora_training(model, "default", o.lora->rank, o.lora->alpha, o.lora->targets,
                            static_cast<unsigned>(o.seed));
    } catch (const pf::config_error& e) {
      throw usage_error(std::string("--lora: ") + e.what());
    }
  }
  pf::TrainerOptions topt;
  topt.batch = o.batch;
  topt.accumulation = o.accum;
  topt.rank = cluster.rank;
  topt.ranks = cluster.ranks;
  if (o.batch % cluster.ranks != 0)
    throw usage_error("--batch " + std::to_string(o.batch) + " does not split over " + std::to_string(cluster.ranks) +
                      " ranks, expected a multiple");
  topt.clip = o.clip;
  topt.schedule.lr = o.lr;
  topt.schedule.min_lr = o.min_lr;
  topt.schedule.warmup_steps = o.warmup.value_or(std::min<pf::Index>(1000, o.steps / 10));
  topt.schedule.decay_steps = std::max<pf::Index>(o.steps, topt.schedule.warmup_steps + 1);
  topt.schedule.decay = o.schedule == "constant" ? pf::LearningRateDecay::constant
                        : o.schedule == "linear" ? pf::LearningRateDecay::linear
                                                 : pf::LearningRateDecay::cosine;
  pf::TrainingOptimizer optimizer = [&]() -> pf::TrainingOptimizer {
    if (o.optimizer == "adamw") return pf::AdamW(pf::AdamWOptions{o.beta1, o.beta2, o.eps, o.weight_decay});
    return pf::SGD(pf::SGDOptions{o.momentum, 0.0, o.weight_decay, false});
  }();
  pf::CausalLMTrainer<Model> trainer(model, std::move(optimizer), topt);
#ifdef POLYFORMER_WITH_MPI
  if (cluster.ranks > 1) trainer.set_gradient_reduction(pf::MpiGradientAverage());
#endif
  const pf::GradientList& grads = trainer.gradients();
  if (o.lora) {
    pf::train_only_lora(grads);
  } else if (o.bitfit) {
    try {
      pf::train_only_biases(grads);
    } catch (const pf::config_error& e) {
      throw usage_error(std::string("--bitfit: ") + e.what() + " (a Llama's linear layers have no biases)");
    }
  } else {
    grads.unfreeze("");
    for (const auto& f : o.freeze) {
      try {
        grads.freeze(f);
      } catch (const pf::config_error& e) {
        throw usage_error(std::string("--freeze: ") + e.what());
      }
    }
  }

  const auto settings = run_settings(o, config, seq_len);
  if (!o.resume.empty()) {
    const pf::TrainingProgress p = trainer.resume(o.resume);
    for (const auto& [k, v] : settings) {
      const auto it = p.settings.find(k);
      if (it == p.settings.end() || it->second != v)
        throw std::runtime_error("--resume " + o.resume + ": the checkpoint's " + k + " is '" +
                                 (it == p.settings.end() ? std::string("missing") : it->second) + "', this run's '" + v +
                                 "' (a checkpoint of another run)");
    }
  }

  if (!o.grads_out.empty()) {  // step 0's loss and gradients, no update
    if (cluster.ranks > 1) throw usage_error("--grads-out runs in one process, not under mpirun");
    double loss = 0.0;
    const float scale = 1.0f / static_cast<float>(o.accum);
    grads.zero();
    for (pf::Index k = 0; k < o.accum; ++k) loss += trainer.accumulate(train, k * o.batch, o.batch, scale, ctx);
    loss /= static_cast<double>(o.accum);
    std::vector<std::pair<std::string, pf::io::FloatTensor>> tensors;
    tensors.emplace_back("loss", pf::io::FloatTensor{{1}, {static_cast<float>(loss)}});
    for (const pf::Gradient& g : grads.items()) {
      if (!g.trainable()) continue;
      pf::io::FloatTensor t;
      t.shape.assign(g.shape.begin(), g.shape.end());
      t.data.resize(static_cast<std::size_t>(g.numel()));
      g.read(t.data.data());
      tensors.emplace_back(g.name, std::move(t));
    }
    pf::io::write_safetensors(o.grads_out, tensors, {{"loss", std::to_string(loss)}});
    std::fprintf(stderr, "train: step 0 loss %.6f, %zu gradients written to %s\n", loss, tensors.size() - 1,
                 o.grads_out.c_str());
    return 0;
  }

  const bool leader = cluster.leader();
  if (leader)
    std::fprintf(stderr,
               "train: %s model, dim %lld, %lld layers, %lld heads, vocab %lld; %lld of %lld values train%s; "
               "%lld windows of %lld tokens (%s)%s; attention %s; %lld threads\n",
               o.model.empty() ? "new" : o.model.c_str(), static_cast<long long>(config.dim),
               static_cast<long long>(config.n_layers), static_cast<long long>(config.n_heads),
               static_cast<long long>(config.vocab_size), static_cast<long long>(grads.trainable_numel()),
               static_cast<long long>(trainer.parameters().numel()), o.lora ? " (LoRA)" : "",
               static_cast<long long>(train.count()), static_cast<long long>(seq_len), train.label().c_str(),
               val ? (", validation " + std::to_string(val->count()) + " windows").c_str() : "",
               attention.spelling().c_str(), static_cast<long long>(ctx.threads));

  std::optional<std::ofstream> csv;
  std::vector<std::array<double, 3>> curve;
  if (!o.log.empty() && leader) {
    csv.emplace(o.log);
    if (!*csv) throw std::runtime_error("--log: cannot write '" + o.log + "'");
    *csv << "step,loss,val_loss,lr,tokens_per_s\n";
  }
  const bool tty = ::isatty(2) != 0;
  const pf::Index eval_every = o.eval_every > 0 ? o.eval_every : std::max<pf::Index>(1, o.steps / 5);
  const pf::Index eval_windows = std::min<pf::Index>(val ? val->count() : 0, 8 * o.batch);
  const pf::Index log_every = std::max<pf::Index>(1, o.steps / 20);
  const double tokens_per_step = static_cast<double>(o.batch * o.accum * seq_len);
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  auto last = start;
  const std::int64_t first_step = trainer.step();
  double val_loss = NAN;
  while (trainer.step() < o.steps) {
    const pf::StepReport r = trainer.train_step(train, ctx);
    const auto now = clock::now();
    const double step_seconds = std::chrono::duration<double>(now - last).count();
    last = now;
    const std::int64_t s = trainer.step();
    const double elapsed = std::chrono::duration<double>(now - start).count();
    const double tps = tokens_per_step * static_cast<double>(s - first_step) / std::max(elapsed, 1e-9);
    double this_val = NAN;
    if (val && eval_windows > 0 && (s % eval_every == 0 || s == o.steps)) {
      this_val = trainer.evaluate(*val, eval_windows, ctx);
      val_loss = this_val;
    }
    if (csv) {
      *csv << s << "," << r.loss << ",";
      if (std::isfinite(this_val)) *csv << this_val;
      *csv << "," << r.lr << "," << tokens_per_step / std::max(step_seconds, 1e-9) << "\n";
      curve.push_back({static_cast<double>(s), r.loss, this_val});
    }
    const double eta = elapsed / static_cast<double>(s - first_step) * static_cast<double>(o.steps - s);
    if (!leader) {
    } else if (tty) {
      const int width = 24, filled = static_cast<int>(width * static_cast<double>(s) / static_cast<double>(o.steps));
      std::fprintf(stderr, "\r[%s%s] step %lld/%lld loss %.4f%s lr %.2e %.0f tok/s ETA %s   ",
                   std::string(static_cast<std::size_t>(filled), '#').c_str(),
                   std::string(static_cast<std::size_t>(width - filled), ' ').c_str(), static_cast<long long>(s),
                   static_cast<long long>(o.steps), r.loss,
                   std::isfinite(val_loss) ? (" val " + std::to_string(val_loss).substr(0, 6)).c_str() : "", r.lr, tps,
                   format_duration(eta).c_str());
      if (s == o.steps) std::fputc('\n', stderr);
    } else if (s % log_every == 0 || s == o.steps || std::isfinite(this_val)) {
      std::fprintf(stderr, "step %lld/%lld loss %.4f", static_cast<long long>(s), static_cast<long long>(o.steps), r.loss);
      if (std::isfinite(this_val)) std::fprintf(stderr, " val_loss %.4f (perplexity %.2f)", this_val, std::exp(this_val));
      std::fprintf(stderr, " lr %.3e %.0f tok/s ETA %s\n", r.lr, tps, format_duration(eta).c_str());
    }
    if (!o.checkpoint.empty() && std::isfinite(this_val) && leader) trainer.save(o.checkpoint, o.seed, settings);
  }
  if (csv) {
    csv->close();
    std::filesystem::path svg = o.log;
    svg.replace_extension(".svg");
    write_loss_svg(svg.string(), curve);
  }
#ifdef POLYFORMER_WITH_MPI
  if (cluster.ranks > 1) {  // every rank must hold the same weights: compare a digest of their bits
    std::uint64_t digest = 1469598103934665603ull, low = 0, high = 0;
    for (const pf::Parameter& p : trainer.parameters().items()) {
      std::vector<float> v(static_cast<std::size_t>(p.numel()));
      p.read(v.data());
      for (float x : v) digest = (digest ^ std::bit_cast<std::uint32_t>(x)) * 1099511628211ull;  // FNV-1a over words
    }
    MPI_Allreduce(&digest, &low, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&digest, &high, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    if (low != high) throw std::runtime_error("the ranks' weights differ after training (a reduction bug)");
    if (leader) std::fprintf(stderr, "train: %d ranks hold identical weights\n", cluster.ranks);
  }
#endif
  if (!leader) return 0;
  if (!o.checkpoint.empty()) trainer.save(o.checkpoint, o.seed, settings);
  if (!o.save.empty()) pf::save_llama2c(o.save, model);
  if (!o.save_adapter.empty()) {
    if (!o.lora) throw usage_error("--save-adapter needs --lora");
    pf::io::write_peft_lora(o.save_adapter, pf::peft_adapter_of(model, "default"));
  }
  if (val) {
    const double v = trainer.evaluate(*val, val->count(), ctx);
    std::fprintf(stderr, "train: validation loss %.4f, perplexity %.2f over %lld windows\n", v, std::exp(v),
                 static_cast<long long>(val->count()));
  }
  std::fprintf(stderr, "train: peak resident memory %.1f MiB\n", bench::proc_status_mib("VmHWM"));

  const pf::Index samples = o.sample > 0 ? o.sample : (o.embedded ? 3 : 0);
  if (samples > 0 && tokenizer) {
    pf::Sampler sampler(static_cast<int>(config.vocab_size), pf::SamplerOptions{0.8f, 0.9f, 0, o.seed | 1});
    auto sequence = model.new_sequence();
    for (pf::Index i = 0; i < samples; ++i) {
      std::printf("--- sample %lld\n", static_cast<long long>(i + 1));
      pf::generate(sequence, *tokenizer, "", std::min<pf::Index>(config.seq_len, 256), sampler,
                   [](std::string_view piece) { std::fwrite(piece.data(), 1, piece.size(), stdout); }, ctx);
    }
  }
  return 0;
}

}  // namespace

/// Under mpirun (Open MPI sets OMPI_COMM_WORLD_SIZE, MPICH and others PMI_SIZE) the ranks join one run; a plain
/// start does not touch MPI at all.
void join_cluster(int& argc, char**& argv) {
#ifdef POLYFORMER_WITH_MPI
  if (std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr && std::getenv("PMI_SIZE") == nullptr) return;
  MPI_Init(&argc, &argv);
  cluster.rank = pf::mpi_rank();
  cluster.ranks = pf::mpi_ranks();
#else
  (void)argc;
  (void)argv;
#endif
}

/// Ends the run with `code`: with several ranks, a failure on one stops them all (MPI_Abort), as the others would
/// wait for it forever.
int leave_cluster(int code) {
#ifdef POLYFORMER_WITH_MPI
  int started = 0;
  MPI_Initialized(&started);
  if (started) {
    if (code != 0 && cluster.ranks > 1) MPI_Abort(MPI_COMM_WORLD, code);
    MPI_Finalize();
  }
#endif
  return code;
}

int main(int argc, char** argv) {
  pf::kernels::use_single_threaded_backends();  // polyformer threads its own products
  return leave_cluster(cli::guarded_main("train", [&] {
    join_cluster(argc, argv);
    return run(parse(argc, argv));
  }));
}
