// Every reader of outside input under an address-space limit (setrlimit RLIMIT_AS, 1 GiB above what the program
// maps at start), on files whose headers claim terabytes: each must be refused with format_error naming the file;
// an allocation sized by the claim would instead throw std::bad_alloc here (or be killed without the limit).
// Prints one line per case; exits 1 if any case was not refused with format_error. Not built under AddressSanitizer,
// whose shadow memory needs terabytes of address space.
//   polyformer_memory_limit SCRATCH_DIR

#include <sys/resource.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "polyformer/io/llama2c.hpp"
#include "polyformer/io/peft.hpp"
#include "polyformer/io/safetensors.hpp"
#include "polyformer/io/tokenizer.hpp"
#include "polyformer/models/hf_bert.hpp"
#include "polyformer/models/hf_gpt2.hpp"
#include "polyformer/models/hf_llama.hpp"
#include "polyformer/models/hf_t5.hpp"
#include "polyformer/tokenizers/precompiled.hpp"
#include "polyformer/tokenizers/tokenizer.hpp"

namespace {

namespace fs = std::filesystem;
namespace pf = polyformer;
using Bytes = std::string;

constexpr std::uint64_t TiB = 1ull << 40;

void put_u32(Bytes& b, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(char((v >> (8 * i)) & 0xFF));
}
void put_u64(Bytes& b, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(char((v >> (8 * i)) & 0xFF));
}
void write(const fs::path& path, const Bytes& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

/// A safetensors file: the header's JSON, then `data` bytes (the header length as written unless `length`).
Bytes safetensors(const std::string& header, std::size_t data = 16, std::uint64_t length = 0) {
  Bytes b;
  put_u64(b, length != 0 ? length : header.size());
  return b + header + Bytes(data, '\0');
}

/// llama2.c's seven sizes: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len.
Bytes llama2c_sizes(int dim, int hidden, int layers, int heads, int kv_heads, int vocab, int seq_len) {
  Bytes b;
  for (int v : {dim, hidden, layers, heads, kv_heads, vocab, seq_len}) put_u32(b, std::uint32_t(v));
  return b;
}
/// A version 1 or 2 header (256 bytes) with those sizes, then a few bytes of weights.
Bytes llama2c_versioned(int version, const Bytes& sizes) {
  Bytes b;
  put_u32(b, 0x616b3432);
  put_u32(b, std::uint32_t(version));
  b += sizes;
  b.push_back(1);  // shared classifier
  if (version == 2) put_u32(b, 64);  // group size
  b.resize(256, '\0');
  return b + Bytes(64, '\0');
}

/// An HF directory: config.json and a model.safetensors of one small tensor (or `weights`).
void hf_directory(const fs::path& dir, const std::string& config, const Bytes& weights = {}) {
  write(dir / "config.json", config);
  write(dir / "model.safetensors",
        weights.empty() ? safetensors(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})") : weights);
}

struct Case {
  std::string reader, claim;
  std::function<void()> read;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: polyformer_memory_limit SCRATCH_DIR\n");
    return 2;
  }
  const fs::path root = fs::path(argv[1]);
  fs::remove_all(root);

  // ---- the files ----
  const fs::path st = root / "safetensors";
  write(st / "header_length.safetensors", safetensors("{}", 16, 4 * TiB));
  write(st / "shape.safetensors",
        safetensors(R"({"w":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]}})"));
  write(st / "overflow.safetensors",
        safetensors(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}})"));
  write(st / "offsets.safetensors",
        safetensors(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[4398046511104,4398046511120]}})"));

  // 65536 × 65536 matrices in 1024 layers: about 10^14 bytes of weights.
  const Bytes huge = llama2c_sizes(65536, 65536, 1024, 64, 64, 65536, 4096);
  const fs::path l2 = root / "llama2c";
  write(l2 / "legacy.bin", huge + Bytes(64, '\0'));
  write(l2 / "v1.bin", llama2c_versioned(1, huge));
  write(l2 / "v2.bin", llama2c_versioned(2, huge));
  write(l2 / "negative_vocab.bin", llama2c_sizes(65536, 65536, 1024, 64, 64, -65536, 4096));

  const fs::path tok = root / "tokenizer";
  Bytes long_token;
  put_u32(long_token, 1u << 30);  // max_token_length 1 GiB
  put_u32(long_token, 0);         // score
  put_u32(long_token, 0x7FFFFFFF);  // length 2 GiB
  write(tok / "long_token.bin", long_token + "abc");
  Bytes three;
  put_u32(three, 8);
  for (const char* piece : {"<unk>", "<s>", "</s>"}) {
    put_u32(three, 0);
    put_u32(three, std::uint32_t(std::strlen(piece)));
    three += piece;
  }
  write(tok / "three_tokens.bin", three);

  const fs::path peft = root / "peft";
  write(peft / "rank" / "adapter_config.json",
        R"({"peft_type":"LORA","r":1099511627776,"lora_alpha":8,"target_modules":["wq"]})");
  write(peft / "rank" / "adapter_model.safetensors",
        safetensors(R"({"base_model.model.layers.0.attention.wq.lora_A.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})"));
  write(peft / "factor" / "adapter_config.json", R"({"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["wq"]})");
  write(peft / "factor" / "adapter_model.safetensors",
        safetensors(R"({"base_model.model.layers.0.attention.wq.lora_A.weight":{"dtype":"F32","shape":[4,1099511627776],"data_offsets":[0,16]}})"));

  const fs::path hf = root / "hf";
  hf_directory(hf / "bert", R"({"model_type":"bert","vocab_size":1099511627776,"hidden_size":1024,"num_attention_heads":16})");
  hf_directory(hf / "gpt2", R"({"model_type":"gpt2","n_embd":65536,"n_layer":16777216,"n_head":64})");
  hf_directory(hf / "llama", R"({"model_type":"llama","hidden_size":65536,"intermediate_size":1048576,)"
                             R"("num_hidden_layers":4096,"num_attention_heads":64,"vocab_size":1048576,)"
                             R"("max_position_embeddings":16777216})");
  hf_directory(hf / "t5", R"({"model_type":"t5","d_model":65536,"d_ff":1048576,"num_layers":4096,"vocab_size":1048576})");
  hf_directory(hf / "t5_buckets", R"({"model_type":"t5","relative_attention_num_buckets":1099511627776,)"
                                  R"("relative_attention_max_distance":2199023255552})");
  write(hf / "index" / "config.json", R"({"model_type":"llama"})");
  write(hf / "index" / "model.safetensors.index.json",
        R"({"weight_map":{"model.embed_tokens.weight":"model-00001.safetensors"}})");
  write(hf / "index" / "model-00001.safetensors", safetensors("{}", 0, 8 * TiB));

  const fs::path json = root / "tokenizer_json";
  write(json / "sparse.json", R"({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", )"
                              R"("vocab": {"a": 0, "b": 2000000000}, "merges": []}})");

  // A SentencePiece charsmap whose trie claims 4 GiB.
  Bytes charsmap;
  put_u32(charsmap, 0xFFFFFFFCu);
  charsmap += Bytes(16, '\0');

  const std::vector<Case> cases = {
      {"safetensors", "header length 4 TiB", [&] { (void)pf::io::SafetensorsFile::open((st / "header_length.safetensors").string()); }},
      {"safetensors", "a 2^20 × 2^20 tensor over 4 TiB of data", [&] { (void)pf::io::SafetensorsFile::open((st / "shape.safetensors").string()); }},
      {"safetensors", "a shape whose size overflows 64 bits", [&] { (void)pf::io::SafetensorsFile::open((st / "overflow.safetensors").string()); }},
      {"safetensors", "data offsets 4 TiB in", [&] { (void)pf::io::SafetensorsFile::open((st / "offsets.safetensors").string()); }},
      {"llama2c", "legacy header: 10^14 bytes of weights", [&] { (void)pf::io::read_llama2c((l2 / "legacy.bin").string()); }},
      {"llama2c", "version 1 header: the same", [&] { (void)pf::io::read_llama2c((l2 / "v1.bin").string()); }},
      {"llama2c", "version 2 (Q8_0) header: the same", [&] { (void)pf::io::read_llama2c((l2 / "v2.bin").string()); }},
      {"llama2c", "legacy, unshared classifier of 2^16 × 2^16", [&] { (void)pf::io::read_llama2c((l2 / "negative_vocab.bin").string()); }},
      {"tokenizer.bin", "max_token_length 1 GiB, a token of 2 GiB", [&] { (void)pf::io::Tokenizer::read((tok / "long_token.bin").string(), 3); }},
      {"tokenizer.bin", "3 tokens read as a vocabulary of 2^30", [&] { (void)pf::io::Tokenizer::read((tok / "three_tokens.bin").string(), 1 << 30); }},
      {"PEFT adapter", "r = 2^40", [&] { (void)pf::io::read_peft_lora((peft / "rank").string()); }},
      {"PEFT adapter", "a lora_A of 4 × 2^40", [&] { (void)pf::io::read_peft_lora((peft / "factor").string()); }},
      {"HF BERT", "vocab_size 2^40", [&] { (void)pf::load_hf_bert((hf / "bert").string()); }},
      {"HF GPT-2", "2^24 layers of 2^16", [&] { (void)pf::load_hf_gpt2((hf / "gpt2").string()); }},
      {"HF Llama", "4096 layers of 2^16 × 2^20", [&] { (void)pf::load_hf_llama((hf / "llama").string()); }},
      {"HF T5", "4096 layers of 2^16 × 2^20", [&] { (void)pf::load_hf_t5((hf / "t5").string()); }},
      {"HF T5", "2^40 relative-position buckets", [&] { (void)pf::load_hf_t5((hf / "t5_buckets").string()); }},
      {"HF directory", "a shard whose header claims 8 TiB", [&] { (void)pf::io::HfDirectory::open((hf / "index").string()); }},
      {"tokenizer.json", "a token with id 2·10⁹ among two", [&] { (void)pf::tokenizers::Tokenizer::open((json / "sparse.json").string()); }},
      {"precompiled charsmap", "a trie of 4 GiB", [&] { (void)pf::tokenizers::Precompiled(charsmap, "charsmap"); }},
  };

  // ---- the limit: 1 GiB above what is mapped now ----
  std::size_t mapped_pages = 0;
  if (std::FILE* statm = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(statm, "%zu", &mapped_pages) != 1) mapped_pages = 0;
    std::fclose(statm);
  }
  const std::uint64_t limit = std::uint64_t(mapped_pages) * 4096 + (1ull << 30);
  const rlimit r{limit, limit};
  if (setrlimit(RLIMIT_AS, &r) != 0) {
    std::fprintf(stderr, "polyformer_memory_limit: setrlimit(RLIMIT_AS, %llu) failed: %s\n",
                 static_cast<unsigned long long>(limit), std::strerror(errno));
    return 1;
  }
  std::printf("address space limited to %.2f GiB (%.2f GiB mapped at start + 1 GiB)\n", double(limit) / (1 << 30),
              double(mapped_pages) * 4096 / (1 << 30));

  int failures = 0;
  for (const Case& c : cases) {
    std::string outcome;
    bool refused = false;
    try {
      c.read();
      outcome = "ACCEPTED";
    } catch (const pf::format_error& e) {
      refused = true;
      outcome = std::string("format_error: ") + e.what();
    } catch (const std::bad_alloc&) {
      outcome = "std::bad_alloc (an allocation sized by the claim)";
    } catch (const std::exception& e) {
      outcome = std::string("another exception: ") + e.what();
    }
    if (!refused) ++failures;
    std::printf("%s %-20s | %-44s | %.160s\n", refused ? "ok  " : "FAIL", c.reader.c_str(), c.claim.c_str(),
                outcome.c_str());
  }
  fs::remove_all(root);
  std::printf("%zu cases, %d not refused with format_error\n", cases.size(), failures);
  return failures == 0 ? 0 : 1;
}
