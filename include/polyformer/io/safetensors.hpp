#pragma once
/// \file safetensors reading (memory-mapped, validated up front) and writing (F32).
///
/// Format (https://github.com/huggingface/safetensors, README "Format"): an 8-byte little-endian u64
/// header length N, then N bytes of UTF-8 JSON (padded with spaces), then the raw data. The JSON maps
/// each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}, offsets counted from the first
/// byte after the header; the optional "__metadata__" entry maps strings to strings. Data is
/// little-endian and C-contiguous (row-major).
///
/// SafetensorsFile checks the whole header when it is built, so an object that exists is valid and every
/// later read stays inside the file. If another process truncates a file while it is memory-mapped,
/// reading the lost pages raises SIGBUS; write_safetensors() replaces files by rename, so it never does.

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/file.hpp"


namespace polyformer::io {

/// Element types this reader understands: floating point ones, converted to float on read, and integer ones
/// (token ids, masks), read exactly by SafetensorsFile::integers and refused where floats are read.
enum class DType { F32, F16, BF16, I32, I64 };

/// What reading an F16 or BF16 tensor does with NaN and ±Inf among its values, which in a checkpoint mean a broken
/// export or an overflowed conversion: refuse (format_error naming the file, the tensor and the first such element)
/// or pass them on as floats.
enum class NonFinite { refuse, accept };

/// The safetensors spelling of a dtype: "F32", "F16", "BF16", "I32", "I64".
inline std::string_view dtype_name(DType t) noexcept {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

/// Bytes per element of a dtype.
inline std::size_t dtype_size(DType t) noexcept {
  return t == DType::I64 ? 8 : t == DType::F32 || t == DType::I32 ? 4 : 2;
}

/// Whether a dtype holds integers.
inline bool is_integer(DType t) noexcept { return t == DType::I32 || t == DType::I64; }

/// One header entry, validated: [begin, end) holds exactly numel() elements of dtype.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;  ///< every extent >= 0; empty for a scalar
  std::uint64_t begin = 0, end = 0;  ///< byte offsets relative to the start of the data section
  /// Product of the extents (1 for a scalar).
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (std::int64_t e : shape) n *= e;
    return n;
  }
};

/// A tensor converted to float: row-major data of shape `shape`.
struct FloatTensor {
  std::vector<std::int64_t> shape;
  std::vector<float> data;  ///< (numel())
  /// Product of the extents (1 for a scalar).
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (std::int64_t e : shape) n *= e;
    return n;
  }
};

namespace detail {

using polyformer::detail::cat;
using polyformer::detail::shape_str;

/// IEEE 754 binary16 → binary32, exact for every input (subnormals, ±0, ±inf, NaN payloads).
constexpr float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t mant = h & 0x3FFu;
  std::uint32_t bits = 0;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf, or NaN keeping its payload
  } else if (exp != 0) {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // ±0
  } else {
    // Subnormal: mant·2^-24. Shift the leading 1 up to the implicit-bit position (bit 10); each shift
    // lowers the exponent by one. The result is a normal float32.
    std::uint32_t e = 127 - 15 + 1;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3FFu) << 13);
  }
  return std::bit_cast<float>(bits);
}

/// bfloat16 → binary32: bfloat16 is the top half of a float32, so this is exact for every input.
constexpr float bfloat16_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// Little-endian loads from possibly unaligned bytes (memcpy, never a cast of the pointer).
inline std::uint16_t load_le16(const unsigned char* p) noexcept {
  std::uint16_t v;
  std::memcpy(&v, p, sizeof v);
  if constexpr (std::endian::native == std::endian::big) v = static_cast<std::uint16_t>((v >> 8) | (v << 8));
  return v;
}
inline std::uint32_t load_le32(const unsigned char* p) noexcept {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) | (std::uint32_t(p[3]) << 24);
}
inline std::uint64_t load_le64(const unsigned char* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline void store_le64(unsigned char* p, std::uint64_t v) noexcept {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

/// a·b into `out`; false on uint64 overflow.
constexpr bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (b != 0 && a > std::numeric_limits<std::uint64_t>::max() / b) return false;
  out = a * b;
  return true;
}

/// "(2, 5, 64)"; "()" for a scalar.
inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

/// "safetensors: <label>: " — the start of every message about one file.
inline std::string prefix(std::string_view label) { return cat("safetensors: ", label, ": "); }

/// Name of a JSON value's type for messages ("string", "array", ...).
inline std::string json_type(const nlohmann::json& j) { return j.type_name(); }

}  // namespace detail

/// A validated safetensors file: memory-mapped (or in memory), header parsed, tensors read on demand.
class SafetensorsFile {
 public:
  /// Maps `path` read-only (reads it into memory if mapping is impossible) and validates it.
  /// Throws format_error naming the path on I/O failure or any malformation. `non_finite`: what reading an F16 or
  /// BF16 tensor holding NaN or Inf does (F32 values are passed on as stored).
  static SafetensorsFile open(const std::string& path, NonFinite non_finite = NonFinite::refuse) {
    return SafetensorsFile(detail::map_file(path, "safetensors"), path, non_finite);
  }

  /// Validates bytes already in memory; `label` stands in for the path in messages and path().
  static SafetensorsFile from_bytes(std::vector<unsigned char> bytes, std::string label,
                                    NonFinite non_finite = NonFinite::refuse) {
    return SafetensorsFile(detail::ByteBuffer(std::move(bytes)), std::move(label), non_finite);
  }

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  ~SafetensorsFile() = default;

  /// The path given to open(), or the label given to from_bytes().
  const std::string& path() const noexcept { return path_; }
  /// True when the bytes are a memory map of the file (false for from_bytes() or the read fallback).
  bool is_memory_mapped() const noexcept { return bytes_.mapped(); }
  /// The "__metadata__" entries (empty if the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// One metadata value, if present.
  std::optional<std::string> metadata_value(const std::string& key) const {
    auto it = metadata_.find(key);
    if (it == metadata_.end()) return std::nullopt;
    return it->second;
  }
  /// Whether a tensor of this name exists.
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  /// Tensor names in file offset order.
  std::vector<std::string> names() const { return order_; }
  /// Number of tensors.
  std::size_t size() const noexcept { return tensors_.size(); }

  /// Header entry of a tensor; throws missing_error "safetensors: <path>: no tensor named 'x'".
  const TensorInfo& info(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw missing_error(detail::cat(detail::prefix(path_), "no tensor named '", name, "'"));
    return it->second;
  }

  /// Throws format_error naming the tensor and the first such element when an F16/BF16 tensor holds NaN or Inf and
  /// the file was opened with NonFinite::refuse (the default). Every float read checks this; a caller of raw_bytes()
  /// that keeps the values as stored calls it itself.
  void check_finite(const std::string& name) const { check_finite(info(name)); }

  /// The stored bytes of a tensor (little-endian, dtype as in info()); valid while this object lives.
  std::span<const unsigned char> raw_bytes(const std::string& name) const {
    const TensorInfo& t = info(name);
    return {data_start() + t.begin, static_cast<std::size_t>(t.end - t.begin)};
  }

  /// An integer tensor's values (I32, I64, or F32/F16/BF16 holding whole numbers: ids written as floats), in
  /// row-major order; format_error naming the tensor for a fraction or a value outside int64.
  std::vector<std::int64_t> integers(const std::string& name) const {
    const TensorInfo& t = info(name);
    const auto n = static_cast<std::size_t>(t.numel());
    std::vector<std::int64_t> out(n);
    const unsigned char* src = data_start() + t.begin;
    if (t.dtype == DType::I64) {
      for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::int64_t>(detail::load_le64(src + 8 * i));
    } else if (t.dtype == DType::I32) {
      for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::int32_t>(detail::load_le32(src + 4 * i));
    } else {
      std::vector<float> values(n);
      read_into(t, values.data());
      for (std::size_t i = 0; i < n; ++i) {
        if (!(values[i] == std::floor(values[i]) && std::abs(values[i]) < 9.2e18f))
          throw format_error(detail::cat(detail::prefix(path_), "tensor '", name, "' element ", i, " is ", values[i],
                                         ", expected a whole number"));
        out[i] = static_cast<std::int64_t>(values[i]);
      }
    }
    return out;
  }

  /// A tensor converted to float (F16 and BF16 exactly).
  FloatTensor tensor(const std::string& name) const {
    const TensorInfo& t = info(name);
    FloatTensor out;
    out.shape = t.shape;
    out.data.resize(static_cast<std::size_t>(t.numel()));
    read_into(t, out.data.data());
    return out;
  }

  /// A 2-D tensor as (rows, cols), or a 1-D tensor of n as (1, n); shape_error otherwise.
  Matrix matrix(const std::string& name) const {
    const TensorInfo& t = info(name);
    if (t.shape.size() != 1 && t.shape.size() != 2)
      throw shape_error(detail::cat(detail::prefix(path_), "tensor '", name, "' has shape ",
                                    detail::shape_string(t.shape), ", expected a 1-D or 2-D tensor"));
    const Index rows = t.shape.size() == 2 ? t.shape[0] : 1;
    const Index cols = t.shape.back();
    Matrix m(rows, cols);
    read_into(t, m.data());
    return m;
  }

  /// A tensor that must be exactly (rows, cols), or 1-D of length cols when rows == 1;
  /// throws shape_error "safetensors: <path>: tensor 'x' has shape (a, b), expected (c, d)".
  Matrix matrix(const std::string& name, Index rows, Index cols) const {
    const TensorInfo& t = info(name);
    const bool exact = t.shape.size() == 2 && t.shape[0] == rows && t.shape[1] == cols;
    const bool row = rows == 1 && t.shape.size() == 1 && t.shape[0] == cols;
    if (!exact && !row)
      throw shape_error(detail::cat(detail::prefix(path_), "tensor '", name, "' has shape ",
                                    detail::shape_string(t.shape), ", expected ", detail::shape_str(rows, cols)));
    Matrix m(rows, cols);
    read_into(t, m.data());
    return m;
  }

  /// A 1-D tensor; shape_error otherwise.
  Vector vector(const std::string& name) const {
    const TensorInfo& t = info(name);
    if (t.shape.size() != 1)
      throw shape_error(detail::cat(detail::prefix(path_), "tensor '", name, "' has shape ",
                                    detail::shape_string(t.shape), ", expected a 1-D tensor"));
    Vector v(static_cast<Index>(t.shape[0]));
    read_into(t, v.data());
    return v;
  }

 private:
  SafetensorsFile(detail::ByteBuffer bytes, std::string path, NonFinite non_finite)
      : bytes_(std::move(bytes)), path_(std::move(path)), non_finite_(non_finite) {
    parse();
  }

  const unsigned char* data_start() const noexcept { return bytes_.data() + header_end_; }

  /// Converts numel() elements of a validated floating-point tensor into `out`; format_error for an integer one, and
  /// for an F16/BF16 one holding NaN or Inf unless the file was opened with NonFinite::accept.
  void read_into(const TensorInfo& t, float* out) const {
    if (is_integer(t.dtype))
      fail(detail::cat("tensor '", t.name, "' is ", dtype_name(t.dtype), ", expected a floating-point tensor (F32, F16, BF16)"));
    const auto n = static_cast<std::size_t>(t.numel());
    if (n == 0) return;  // out may be null for an empty Eigen object
    const unsigned char* src = data_start() + t.begin;
    switch (t.dtype) {
      case DType::F32:
        if constexpr (std::endian::native == std::endian::little) {
          std::memcpy(out, src, n * sizeof(float));
        } else {
          for (std::size_t i = 0; i < n; ++i) out[i] = std::bit_cast<float>(detail::load_le32(src + 4 * i));
        }
        break;
      case DType::F16:
        check_finite(t);
        for (std::size_t i = 0; i < n; ++i) out[i] = detail::half_to_float(detail::load_le16(src + 2 * i));
        break;
      case DType::BF16:
        check_finite(t);
        for (std::size_t i = 0; i < n; ++i) out[i] = detail::bfloat16_to_float(detail::load_le16(src + 2 * i));
        break;
      case DType::I32:
      case DType::I64:
        break;  // refused above
    }
  }

  [[noreturn]] void fail(const std::string& what) const { throw format_error(detail::prefix(path_) + what); }

  void check_finite(const TensorInfo& t) const {
    if (non_finite_ == NonFinite::accept || (t.dtype != DType::F16 && t.dtype != DType::BF16)) return;
    const std::uint16_t exponent = t.dtype == DType::F16 ? 0x7C00 : 0x7F80;  // all exponent bits set: Inf or NaN
    const unsigned char* src = data_start() + t.begin;
    for (std::size_t i = 0, n = static_cast<std::size_t>(t.numel()); i < n; ++i) {
      const std::uint16_t bits = detail::load_le16(src + 2 * i);
      if ((bits & exponent) != exponent) continue;
      const bool nan = (bits & (t.dtype == DType::F16 ? 0x03FF : 0x007F)) != 0;
      const char* what = nan ? "NaN" : (bits & 0x8000) != 0 ? "-Inf" : "+Inf";
      fail(detail::cat("tensor '", t.name, "' (", dtype_name(t.dtype), ") holds ", what, " at element ", i,
                       ", expected finite values (NonFinite::accept reads it as it is)"));
    }
  }

  /// Validates the whole file; fills tensors_, order_, metadata_ and header_end_.
  void parse() {
    using nlohmann::json;
    const std::size_t size = bytes_.size();
    if (size < 8)
      fail(detail::cat("file is ", size, " bytes, shorter than the 8-byte header length field"));
    const std::uint64_t n = detail::load_le64(bytes_.data());
    if (n > size - 8)  // written this way so 8 + n cannot overflow
      fail(detail::cat("header length ", n, " runs past the end of the file: needs 8 + ", n, " bytes, file is ", size,
                       " bytes"));
    header_end_ = 8 + static_cast<std::size_t>(n);
    const std::uint64_t data_size = size - header_end_;

    // Parse, recording duplicate keys (nlohmann keeps only one of them silently).
    std::vector<std::set<std::string>> open_objects;
    std::string duplicate;
    json::parser_callback_t watch = [&](int, json::parse_event_t event, json& parsed) {
      if (event == json::parse_event_t::object_start) {
        open_objects.emplace_back();
      } else if (event == json::parse_event_t::object_end) {
        if (!open_objects.empty()) open_objects.pop_back();
      } else if (event == json::parse_event_t::key && !open_objects.empty() && duplicate.empty()) {
        if (!open_objects.back().insert(parsed.get<std::string>()).second) duplicate = parsed.get<std::string>();
      }
      return true;
    };
    // nlohmann's lexer takes a NUL byte for the end of input and would ignore the rest of the header.
    // JSON never contains a raw NUL (control characters in strings must be escaped), so reject it.
    if (const void* nul = std::memchr(bytes_.data() + 8, 0, static_cast<std::size_t>(n)))
      fail(detail::cat("header (", n, " bytes) is not valid JSON: NUL byte at header offset ",
                       static_cast<const unsigned char*>(nul) - (bytes_.data() + 8)));
    json header;
    try {
      const auto* first = reinterpret_cast<const char*>(bytes_.data() + 8);
      header = json::parse(first, first + n, watch);
    } catch (const json::exception& e) {
      fail(detail::cat("header (", n, " bytes) is not valid JSON: ", e.what()));
    }
    if (!header.is_object()) fail(detail::cat("header is not a JSON object (found ", detail::json_type(header), ")"));
    if (!duplicate.empty()) fail(detail::cat("header has duplicate key '", duplicate, "'"));

    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const json& entry = it.value();
      if (name == "__metadata__") {
        parse_metadata(entry);
        continue;
      }
      tensors_.emplace(name, parse_entry(name, entry, data_size));
    }

    // Offset order; zero-byte tensors take no bytes, so they overlap nothing.
    std::vector<const TensorInfo*> sorted;
    sorted.reserve(tensors_.size());
    for (const auto& kv : tensors_) sorted.push_back(&kv.second);
    std::sort(sorted.begin(), sorted.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
    });
    const TensorInfo* last = nullptr;  // the non-empty tensor reaching furthest so far
    for (const TensorInfo* t : sorted) {
      if (t->begin == t->end) continue;
      if (last && t->begin < last->end)
        fail(detail::cat("tensors '", last->name, "' (data_offsets [", last->begin, ", ", last->end, "]) and '", t->name,
                         "' (data_offsets [", t->begin, ", ", t->end, "]) overlap"));
      if (!last || t->end > last->end) last = t;
    }
    order_.reserve(sorted.size());
    for (const TensorInfo* t : sorted) order_.push_back(t->name);
  }

  void parse_metadata(const nlohmann::json& entry) {
    if (!entry.is_object())
      fail(detail::cat("__metadata__ is not a JSON object of strings (found ", detail::json_type(entry), ")"));
    for (auto it = entry.begin(); it != entry.end(); ++it) {
      if (!it.value().is_string())
        fail(detail::cat("__metadata__ value for key '", it.key(), "' is not a string (found ",
                         detail::json_type(it.value()), ")"));
      metadata_.emplace(it.key(), it.value().get<std::string>());
    }
  }

  /// A JSON integer below zero (the parser stores non-negative integers as unsigned, "-0" as signed 0).
  static bool is_negative(const nlohmann::json& e) { return !e.is_number_unsigned() && e.get<std::int64_t>() < 0; }

  TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry, std::uint64_t data_size) const {
    const std::string who = detail::cat("tensor '", name, "': ");
    if (!entry.is_object()) fail(detail::cat(who, "entry is not a JSON object (found ", detail::json_type(entry), ")"));
    const auto field = [&](const char* key) -> const nlohmann::json& {
      auto f = entry.find(key);
      if (f == entry.end()) fail(detail::cat(who, "missing '", key, "'"));
      return *f;
    };
    TensorInfo t;
    t.name = name;

    const nlohmann::json& dtype = field("dtype");
    if (!dtype.is_string()) fail(detail::cat(who, "'dtype' is not a string (found ", detail::json_type(dtype), ")"));
    const auto& dt = dtype.get_ref<const std::string&>();
    if (dt == "F32") {
      t.dtype = DType::F32;
    } else if (dt == "F16") {
      t.dtype = DType::F16;
    } else if (dt == "BF16") {
      t.dtype = DType::BF16;
    } else if (dt == "I32") {
      t.dtype = DType::I32;
    } else if (dt == "I64") {
      t.dtype = DType::I64;
    } else {
      fail(detail::cat(who, "unsupported dtype '", dt, "' (supported: F32, F16, BF16, I32, I64)"));
    }

    const nlohmann::json& shape = field("shape");
    if (!shape.is_array()) fail(detail::cat(who, "'shape' is not an array (found ", detail::json_type(shape), ")"));
    std::uint64_t numel = 1;
    for (std::size_t i = 0; i < shape.size(); ++i) {
      const nlohmann::json& e = shape[i];
      if (!e.is_number_integer())
        fail(detail::cat(who, "shape entry ", i, " is not an integer (found ", e.dump(), ")"));
      if (is_negative(e)) fail(detail::cat(who, "shape entry ", i, " is ", e.dump(), ", expected >= 0"));
      const auto v = e.get<std::uint64_t>();
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) ||
          !detail::checked_mul(numel, v, numel))
        fail(detail::cat(who, "shape ", shape.dump(), " has too many elements (overflow)"));
      t.shape.push_back(static_cast<std::int64_t>(v));
    }

    const nlohmann::json& offsets = field("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_integer() ||
        !offsets[1].is_number_integer() || is_negative(offsets[0]) || is_negative(offsets[1]))
      fail(detail::cat(who, "'data_offsets' is not two non-negative integers (found ", offsets.dump(), ")"));
    t.begin = offsets[0].get<std::uint64_t>();
    t.end = offsets[1].get<std::uint64_t>();
    if (t.begin > t.end) fail(detail::cat(who, "data_offsets [", t.begin, ", ", t.end, "] have begin > end"));
    if (t.end > data_size)
      fail(detail::cat(who, "data_offsets [", t.begin, ", ", t.end, "] end past the data section of ", data_size,
                       " bytes"));

    std::uint64_t expected = 0;
    if (!detail::checked_mul(numel, dtype_size(t.dtype), expected))
      fail(detail::cat(who, "shape ", detail::shape_string(t.shape), " has too many elements (overflow)"));
    if (t.end - t.begin != expected)
      fail(detail::cat(who, "shape ", detail::shape_string(t.shape), " of ", dt, " needs ", expected,
                       " bytes (expected), but data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin,
                       " bytes (found)"));
    return t;
  }

  detail::ByteBuffer bytes_;
  std::string path_;
  std::size_t header_end_ = 0;  // 8 + header length: where the data section starts
  NonFinite non_finite_ = NonFinite::refuse;
  std::map<std::string, TensorInfo> tensors_;
  std::vector<std::string> order_;  // names by (begin, end, name)
  std::map<std::string, std::string> metadata_;
};

namespace detail {

/// Builds a safetensors image (F32, back to back in the given order); messages are prefixed by `label`.
inline std::vector<unsigned char> serialize_safetensors(
    const std::vector<std::pair<std::string, FloatTensor>>& tensors,
    const std::map<std::string, std::string>& metadata, std::string_view label) {
  using ordered = nlohmann::ordered_json;
  const std::string pre = prefix(label);
  ordered header = ordered::object();
  if (!metadata.empty()) {
    ordered meta = ordered::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::set<std::string_view> seen;
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") throw format_error(cat(pre, "a tensor may not be named '__metadata__'"));
    if (!seen.insert(name).second) throw format_error(cat(pre, "duplicate tensor name '", name, "'"));
    std::uint64_t numel = 1;
    for (std::int64_t e : t.shape) {
      if (e < 0) throw format_error(cat(pre, "tensor '", name, "' has negative extent in shape ", shape_string(t.shape)));
      if (!checked_mul(numel, static_cast<std::uint64_t>(e), numel))
        throw format_error(cat(pre, "tensor '", name, "' shape ", shape_string(t.shape), " overflows"));
    }
    if (numel != t.data.size())
      throw format_error(cat(pre, "tensor '", name, "' has shape ", shape_string(t.shape), " (", numel,
                             " elements) but ", t.data.size(), " data values"));
    const std::uint64_t bytes = numel * sizeof(float);  // no overflow: the data exists in memory
    header[name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json;
  try {
    json = header.dump();
  } catch (const nlohmann::json::exception& e) {  // names or metadata that are not valid UTF-8
    throw format_error(cat(pre, "cannot encode header: ", e.what()));
  }
  json.append((8 - json.size() % 8) % 8, ' ');

  std::vector<unsigned char> out(8 + json.size() + static_cast<std::size_t>(offset));
  store_le64(out.data(), json.size());
  std::memcpy(out.data() + 8, json.data(), json.size());
  unsigned char* dst = out.data() + 8 + json.size();
  for (const auto& [name, t] : tensors) {
    if (t.data.empty()) continue;
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(dst, t.data.data(), t.data.size() * sizeof(float));
      dst += t.data.size() * sizeof(float);
    } else {
      for (float f : t.data) {
        const auto u = std::bit_cast<std::uint32_t>(f);
        for (int i = 0; i < 4; ++i) *dst++ = static_cast<unsigned char>(u >> (8 * i));
      }
    }
  }
  return out;
}

}  // namespace detail

/// A safetensors image of F32 tensors stored back to back in the given order, header padded with spaces
/// to a multiple of 8. Throws format_error on duplicate names, a data size that does not match the shape,
/// or names/metadata that are not valid UTF-8.
inline std::vector<unsigned char> serialize_safetensors(const std::vector<std::pair<std::string, FloatTensor>>& tensors,
                                                        const std::map<std::string, std::string>& metadata = {}) {
  return detail::serialize_safetensors(tensors, metadata, "serialize_safetensors");
}

/// Writes serialize_safetensors(tensors, metadata) to `path` (via a temporary file and rename).
/// Throws format_error on I/O failure and on the errors of serialize_safetensors().
inline void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, FloatTensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  detail::write_file_replace(path, detail::serialize_safetensors(tensors, metadata, path), "safetensors");
}

}  // namespace polyformer::io
