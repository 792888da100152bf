#pragma once
/// \file Named tensors in and out of any model through its parameter tree (core/parameters.hpp): one loader
/// that fills a model from a state dict — a safetensors file or tensors in memory — and reports every missing,
/// unexpected and misshaped name together, as torch's load_state_dict(strict=True) does; one exporter that
/// writes any model to safetensors.

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/core/parameters.hpp"
#include "polyformer/io/safetensors.hpp"

namespace polyformer {

/// Named tensors in memory, as a state dict.
using StateDict = std::map<std::string, io::FloatTensor>;

/// What a load found wrong. Empty when the tensors and the parameters match name for name and shape for shape.
struct LoadReport {
  std::vector<std::string> missing;     ///< parameters with no tensor
  std::vector<std::string> unexpected;  ///< tensors that name no parameter
  std::vector<std::string> misshaped;   ///< "name: expected (a, b), found (c, d)"

  bool ok() const noexcept { return missing.empty() && unexpected.empty() && misshaped.empty(); }
  /// One line listing everything, e.g. "2 missing (a, b); 1 unexpected (c)".
  std::string summary() const {
    std::string s;
    const auto part = [&](const std::vector<std::string>& names, const char* what) {
      if (names.empty()) return;
      if (!s.empty()) s += "; ";
      s += detail::cat(names.size(), " ", what, " (");
      for (std::size_t i = 0; i < names.size(); ++i) s += (i ? ", " : "") + names[i];
      s += ")";
    };
    part(missing, "missing");
    part(unexpected, "unexpected");
    part(misshaped, "misshaped");
    return s;
  }
};

namespace detail {

inline std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

/// The checks and the writes of a load over a source with names(), shape(name), and read(parameter), which writes
/// the parameter from the source's tensor of its name.
template <typename Names, typename ShapeOf, typename Read>
LoadReport load_parameters(const char* func, const ParameterList& params, const Names& names, ShapeOf&& shape_of,
                           Read&& read, bool strict) {
  LoadReport report;
  std::vector<const Parameter*> present;
  const std::set<std::string> given(names.begin(), names.end());
  for (const Parameter& p : params.items()) {
    if (!given.contains(p.name)) {
      report.missing.push_back(p.name);
      continue;
    }
    const std::vector<std::int64_t> shape = shape_of(p.name);
    const std::vector<std::int64_t> want(p.shape.begin(), p.shape.end());
    if (shape != want) {
      report.misshaped.push_back(cat(p.name, ": expected ", shape_text(want), ", found ", shape_text(shape)));
      continue;
    }
    present.push_back(&p);
  }
  for (const std::string& n : names)
    if (params.find(n) == nullptr) report.unexpected.push_back(n);
  if (!report.missing.empty() || !report.misshaped.empty() || (strict && !report.unexpected.empty())) {
    const std::string what = cat(func, ": the tensors do not fit the model: ", report.summary());
    if (!report.misshaped.empty()) throw shape_error(what);
    if (!report.missing.empty()) throw missing_error(what);
    throw config_error(what);
  }
  for (const Parameter* p : present) read(*p);
  return report;
}

}  // namespace detail

/// Fills every parameter from the tensors of `file` by name. Throws, listing every missing, misshaped and (with
/// strict) unexpected name at once — shape_error when any is misshaped, else missing_error when any is missing,
/// else config_error — and writes nothing then. Without strict, unexpected tensors are ignored and listed in
/// the returned report.
inline LoadReport load_state_dict(const ParameterList& params, const io::SafetensorsFile& file, bool strict = true) {
  const std::string func = "load_state_dict: " + file.path();
  for (const Parameter& p : params.items())  // NaN/Inf refused before anything is written
    if (file.contains(p.name)) file.check_finite(p.name);
  return detail::load_parameters(
      func.c_str(), params, file.names(),
      [&](const std::string& n) { return file.info(n).shape; },
      [&](const Parameter& p) {
        if (p.write_bf16 && file.info(p.name).dtype == io::DType::BF16)  // bf16 into bf16 storage: as it is
          p.write_bf16(reinterpret_cast<const std::byte*>(file.raw_bytes(p.name).data()));
        else
          p.write(file.tensor(p.name).data.data());
      },
      strict);
}

/// The same from tensors in memory.
inline LoadReport load_state_dict(const ParameterList& params, const StateDict& tensors, bool strict = true) {
  std::vector<std::string> names;
  for (const auto& [name, t] : tensors) names.push_back(name);
  return detail::load_parameters(
      "load_state_dict", params, names, [&](const std::string& n) { return tensors.at(n).shape; },
      [&](const Parameter& p) { p.write(tensors.at(p.name).data.data()); }, strict);
}

/// A tensor that lives elsewhere (a checkpoint's matrices being mapped onto a model): row-major floats of
/// `shape` at `data`, borrowed for the load.
struct TensorRef {
  std::vector<std::int64_t> shape;
  const float* data = nullptr;
};
/// Named borrowed tensors: what a checkpoint reader maps its own layout to, by the model's names.
using TensorRefs = std::map<std::string, TensorRef>;

/// The same from borrowed tensors (no copy of their data on the way in).
inline LoadReport load_state_dict(const ParameterList& params, const TensorRefs& tensors, bool strict = true) {
  std::vector<std::string> names;
  for (const auto& [name, t] : tensors) names.push_back(name);
  return detail::load_parameters(
      "load_state_dict", params, names, [&](const std::string& n) { return tensors.at(n).shape; },
      [&](const Parameter& p) { p.write(tensors.at(p.name).data); }, strict);
}

/// Every parameter's values by name, in the model's order.
inline std::vector<std::pair<std::string, io::FloatTensor>> state_dict(const ParameterList& params) {
  std::vector<std::pair<std::string, io::FloatTensor>> out;
  out.reserve(params.size());
  for (const Parameter& p : params.items()) {
    io::FloatTensor t;
    t.shape.assign(p.shape.begin(), p.shape.end());
    t.data.resize(static_cast<std::size_t>(p.numel()));
    p.read(t.data.data());
    out.emplace_back(p.name, std::move(t));
  }
  return out;
}

/// Writes every parameter to a safetensors file (F32, the model's order) with `metadata`.
inline void save_safetensors(const std::string& path, const ParameterList& params,
                             const std::map<std::string, std::string>& metadata = {}) {
  io::write_safetensors(path, state_dict(params), metadata);
}

}  // namespace polyformer
