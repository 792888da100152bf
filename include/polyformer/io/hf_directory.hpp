#pragma once
/// \file A Hugging Face model directory as `transformers` saves it: `config.json` and the weights in
/// `model.safetensors`, or split over shards named by `model.safetensors.index.json` (its "weight_map": tensor
/// name → shard file). A pickled `pytorch_model.bin` is refused with a hint: polyformer does not unpickle.

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/file.hpp"
#include "polyformer/io/safetensors.hpp"

namespace polyformer::io {

/// A model directory: its config and its tensors (read on demand from the memory-mapped safetensors files).
class HfDirectory {
 public:
  /// Opens `directory`: parses config.json, opens model.safetensors or every shard of
  /// model.safetensors.index.json, and checks that each indexed tensor is in its shard. Throws format_error
  /// naming the file for a missing or malformed file, a shard the index names that is absent, a tensor missing
  /// from the shard the index puts it in, and a directory with only pytorch_model.bin. `non_finite`: what reading
  /// an F16/BF16 tensor holding NaN or Inf does (SafetensorsFile::open).
  static HfDirectory open(const std::string& directory, NonFinite non_finite = NonFinite::refuse) {
    namespace fs = std::filesystem;
    using polyformer::detail::cat;
    HfDirectory dir;
    dir.path_ = directory;
    if (!fs::is_directory(directory))
      throw format_error(cat("HfDirectory::open: ", directory, " is not a directory"));
    const std::string config_path = directory + "/config.json";
    dir.config_ = parse_json_file(config_path);
    if (!dir.config_.is_object())
      throw format_error(cat(detail::file_prefix("config.json", config_path), "expected a JSON object, found ",
                             dir.config_.type_name()));

    const std::string single = directory + "/model.safetensors", index = directory + "/model.safetensors.index.json";
    if (fs::exists(single)) {
      dir.shards_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(single, non_finite)));
      for (const std::string& name : dir.shards_.back()->names()) dir.where_[name] = 0;
    } else if (fs::exists(index)) {
      dir.open_shards(index, non_finite);
    } else if (fs::exists(directory + "/pytorch_model.bin") || fs::exists(directory + "/pytorch_model.bin.index.json")) {
      throw format_error(cat("HfDirectory::open: ", directory, " holds pytorch_model.bin (a Python pickle, which "
                             "polyformer does not read), expected model.safetensors: convert it, e.g. in Python "
                             "`AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`"));
    } else {
      throw format_error(cat("HfDirectory::open: ", directory, " has neither model.safetensors nor "
                             "model.safetensors.index.json"));
    }
    return dir;
  }

  const std::string& path() const noexcept { return path_; }
  /// config.json as parsed.
  const nlohmann::json& config() const noexcept { return config_; }

  /// Every tensor name, in the order of the shards and, within one, of its header.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& shard : shards_)
      for (const std::string& name : shard->names())
        if (where_.count(name) != 0) out.push_back(name);
    return out;
  }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  std::size_t size() const noexcept { return where_.size(); }

  /// The file holding `name` (format_error naming the directory when no file does).
  const SafetensorsFile& file_of(const std::string& name) const {
    const auto it = where_.find(name);
    if (it == where_.end())
      throw format_error(polyformer::detail::cat("HfDirectory: ", path_, " has no tensor '", name, "'"));
    return *shards_[it->second];
  }
  /// A tensor's header entry (dtype, shape).
  const TensorInfo& info(const std::string& name) const { return file_of(name).info(name); }
  /// A tensor converted to float (F16 and BF16 exactly).
  FloatTensor tensor(const std::string& name) const { return file_of(name).tensor(name); }
  /// The stored values themselves when they are F32 in this machine's byte order at a float-aligned address (no
  /// copy; valid while this object lives), else nullptr: then tensor() converts.
  const float* f32_in_place(const std::string& name) const {
    const SafetensorsFile& file = file_of(name);
    if (file.info(name).dtype != DType::F32 || std::endian::native != std::endian::little) return nullptr;
    const unsigned char* p = file.raw_bytes(name).data();
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(float) != 0) return nullptr;
    return reinterpret_cast<const float*>(p);
  }

  /// How many values all its tensors hold together (each bounded by its file's real size, so by the disk).
  double stored_values() const {
    double n = 0;
    for (const auto& [name, shard] : where_) {
      double values = 1;
      for (const std::int64_t s : shards_[shard]->info(name).shape) values *= double(s);
      n += values;
    }
    return n;
  }
  /// Throws format_error naming `func`, config.json and both counts when config.json's sizes imply more parameter
  /// values (`implied`) than the files hold. A loader calls it before allocating its model, so that a config.json
  /// claiming terabytes of weights is refused, not allocated.
  void require_stored_values(const char* func, double implied) const {
    const double stored = stored_values();
    if (implied <= stored) return;
    const auto count = [](double v) {
      char text[64];
      std::snprintf(text, sizeof text, "%.0f", v);
      return std::string(text);
    };
    throw format_error(polyformer::detail::cat(func, ": ", path_, "/config.json implies ", count(implied),
                                               " parameter values, the safetensors files hold ", count(stored)));
  }

  // ---- config.json fields, each refused by name when it has the wrong type ----

  /// An integer field; `fallback` when absent or null, format_error when absent without one.
  Index config_int(const std::string& key, std::optional<Index> fallback = std::nullopt) const {
    const nlohmann::json* v = field(key);
    if (v == nullptr) return require(key, fallback);
    if (!v->is_number_integer()) wrong(key, *v, "an integer");
    return v->get<Index>();
  }
  /// A number field.
  double config_number(const std::string& key, std::optional<double> fallback = std::nullopt) const {
    const nlohmann::json* v = field(key);
    if (v == nullptr) return require(key, fallback);
    if (!v->is_number() || !std::isfinite(v->get<double>())) wrong(key, *v, "a number");
    return v->get<double>();
  }
  /// A boolean field.
  bool config_bool(const std::string& key, std::optional<bool> fallback = std::nullopt) const {
    const nlohmann::json* v = field(key);
    if (v == nullptr) return require(key, fallback);
    if (!v->is_boolean()) wrong(key, *v, "true or false");
    return v->get<bool>();
  }
  /// A string field.
  std::string config_string(const std::string& key, std::optional<std::string> fallback = std::nullopt) const {
    const nlohmann::json* v = field(key);
    if (v == nullptr) return require(key, fallback);
    if (!v->is_string()) wrong(key, *v, "a string");
    return v->get<std::string>();
  }
  /// Token ids named by `key` (eos_token_id, bos_token_id: one id or a list), from generation_config.json when
  /// the directory has one and names them, else from config.json; empty when neither does.
  std::vector<int> token_ids(const std::string& key) const {
    nlohmann::json generation;
    const std::string generation_path = path_ + "/generation_config.json";
    if (std::filesystem::exists(generation_path)) generation = parse_json_file(generation_path);
    const bool from_generation = generation.is_object() && generation.contains(key) && !generation[key].is_null();
    const nlohmann::json* v = from_generation ? &generation[key] : field(key);
    if (v == nullptr) return {};
    const auto bad = [&] {
      const std::string file = from_generation ? "generation_config.json" : "config.json";
      throw format_error(polyformer::detail::cat(detail::file_prefix(file, path_ + "/" + file), key, " is ", v->dump(),
                                                 ", expected a token id >= 0 or a list of them"));
    };
    std::vector<int> ids;
    for (const nlohmann::json& id : v->is_array() ? *v : nlohmann::json::array({*v})) {
      if (!id.is_number_integer() || id.get<long long>() < 0 || id.get<long long>() > INT32_MAX) bad();
      ids.push_back(id.get<int>());
    }
    return ids;
  }

  /// The field, or nullptr when absent or null.
  const nlohmann::json* field(const std::string& key) const {
    const auto it = config_.find(key);
    return it == config_.end() || it->is_null() ? nullptr : &*it;
  }
  /// Throws format_error naming config.json, `key`, what was found and what is expected.
  [[noreturn]] void wrong(const std::string& key, const nlohmann::json& found, const std::string& expected) const {
    throw format_error(polyformer::detail::cat(detail::file_prefix("config.json", path_ + "/config.json"), key, " is ",
                                               found.dump(), ", expected ", expected));
  }

 private:
  HfDirectory() = default;

  template <typename T>
  T require(const std::string& key, const std::optional<T>& fallback) const {
    if (!fallback)
      throw format_error(polyformer::detail::cat(detail::file_prefix("config.json", path_ + "/config.json"), key,
                                                 " is missing"));
    return *fallback;
  }

  static nlohmann::json parse_json_file(const std::string& path) {
    const std::vector<unsigned char> bytes = detail::read_file(path, "Hugging Face directory");
    try {
      return nlohmann::json::parse(bytes.begin(), bytes.end());
    } catch (const nlohmann::json::exception& e) {
      throw format_error(polyformer::detail::cat(detail::file_prefix("Hugging Face directory", path), "not valid JSON (",
                                                 e.what(), ")"));
    }
  }

  void open_shards(const std::string& index_path, NonFinite non_finite) {
    using polyformer::detail::cat;
    const std::string pre = detail::file_prefix("safetensors index", index_path);
    const nlohmann::json index = parse_json_file(index_path);
    const auto map_it = index.is_object() ? index.find("weight_map") : index.end();
    if (map_it == index.end() || !map_it->is_object() || map_it->empty())
      throw format_error(cat(pre, "expected an object with a non-empty \"weight_map\" of tensor name → shard file"));
    std::map<std::string, std::size_t> shard_of_file;
    for (auto it = map_it->begin(); it != map_it->end(); ++it) {
      if (!it.value().is_string())
        throw format_error(cat(pre, "weight_map['", it.key(), "'] is ", it.value().dump(), ", expected a file name"));
      const std::string file = it.value().get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
        throw format_error(cat(pre, "weight_map['", it.key(), "'] is '", file, "', expected a file name in the directory"));
      auto [pos, fresh] = shard_of_file.emplace(file, shards_.size());
      if (fresh) {
        const std::string shard_path = path_ + "/" + file;
        if (!std::filesystem::exists(shard_path))
          throw format_error(cat(pre, "names shard '", file, "', which is not in ", path_));
        shards_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(shard_path, non_finite)));
      }
      if (!shards_[pos->second]->contains(it.key()))
        throw format_error(cat(pre, "puts '", it.key(), "' in ", file, ", which does not hold it"));
      where_[it.key()] = pos->second;
    }
  }

  std::string path_;
  nlohmann::json config_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, std::size_t> where_;  // tensor name → shard
};

}  // namespace polyformer::io
