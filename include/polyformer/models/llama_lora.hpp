#pragma once
/// \file PEFT LoRA adapters on a Llama whose linear layers are LoRA<Inner>: module paths are those of
/// llama2.c's PyTorch `model.py` (how such adapters are trained): `layers.{i}.attention.wq` (wk, wv, wo) and
/// `layers.{i}.feed_forward.w1` (w2, w3), with w1 the SwiGLU gate, w3 its up-projection and w2 the
/// down-projection.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/io/peft.hpp"
#include "polyformer/linear/lora.hpp"
#include "polyformer/models/llama.hpp"

namespace polyformer {

/// The linear layer of `model` at a llama2.c module path ("layers.3.attention.wq"); config_error naming the
/// path and what is expected when there is none.
template <IncrementalAttention Attn, LinearPolicy Lin>
Lin& llama_module(Llama<Attn, Lin>& model, std::string_view path) {
  const auto fail = [&](std::string_view why) -> Lin& {
    throw config_error(detail::cat("llama_module: '", path, "' ", why,
                                   ", expected layers.{0..", model.config().n_layers - 1,
                                   "}.attention.{wq,wk,wv,wo} or layers.{i}.feed_forward.{w1,w2,w3}"));
  };
  constexpr std::string_view head = "layers.";
  if (path.substr(0, head.size()) != head) return fail("is not a layer's module");
  std::string_view rest = path.substr(head.size());
  const std::size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot == 0) return fail("has no layer number and module");
  Index layer = -1;
  const auto [end, ec] = std::from_chars(rest.data(), rest.data() + dot, layer);
  if (ec != std::errc{} || end != rest.data() + dot) return fail("has no layer number");
  if (layer < 0 || layer >= model.config().n_layers) return fail("names a layer the model does not have");
  auto& l = model.layers()[static_cast<std::size_t>(layer)];
  const std::string_view module = rest.substr(dot + 1);
  if (module == "attention.wq") return l.self_attn().q_proj();
  if (module == "attention.wk") return l.self_attn().k_proj();
  if (module == "attention.wv") return l.self_attn().v_proj();
  if (module == "attention.wo") return l.self_attn().o_proj();
  if (module == "feed_forward.w1") return l.ffn().gate();
  if (module == "feed_forward.w3") return l.ffn().up();
  if (module == "feed_forward.w2") return l.ffn().down();
  return fail("is not a linear module of the model");
}

/// Adds a PEFT adapter to every module it adapts, under `name`, with scaling strength·α/r (α/√r for rsLoRA),
/// and activates it. All modules are checked (paths, shapes) before any is changed: on an exception the
/// model is as it was.
template <IncrementalAttention Attn, LinearPolicy Inner>
void add_lora_adapter(Llama<Attn, LoRA<Inner>>& model, const io::PeftLoraAdapter& adapter, const std::string& name,
                      float strength = 1.0f) {
  const char* func = "add_lora_adapter";
  if (!std::isfinite(strength)) throw config_error(detail::cat(func, ": strength is ", strength, ", expected finite"));
  std::vector<LoRA<Inner>*> targets;
  for (const auto& m : adapter.modules) {
    LoRA<Inner>& lin = llama_module(model, m.path);
    if (m.a.cols() != lin.in_features() || m.b.rows() != lin.out_features())
      throw shape_error(detail::cat(func, ": ", adapter.directory, ": module '", m.path, "' has A ",
                                    detail::shape_str(m.a.rows(), m.a.cols()), " and B ",
                                    detail::shape_str(m.b.rows(), m.b.cols()), ", expected A (r, ", lin.in_features(),
                                    ") and B (", lin.out_features(), ", r)"));
    if (lin.find(name)) throw config_error(detail::cat(func, ": module '", m.path, "' has an adapter named '", name, "' already"));
    for (const auto* t : targets)
      if (t == &lin) throw config_error(detail::cat(func, ": ", adapter.directory, ": module '", m.path, "' appears twice"));
    targets.push_back(&lin);
  }
  const float scaling = strength * adapter.scaling();
  for (std::size_t i = 0; i < targets.size(); ++i) {
    targets[i]->add_adapter(name, adapter.modules[i].a, adapter.modules[i].b, scaling);
    targets[i]->set_active(name);
  }
}

/// Every LoRA layer of a Llama (all projections and an untied classifier), for switching adapters model-wide.
template <IncrementalAttention Attn, LinearPolicy Inner, typename F>
void for_each_lora(Llama<Attn, LoRA<Inner>>& model, F&& f) {
  for (auto& l : model.layers()) {
    auto& a = l.self_attn();
    for (LoRA<Inner>* lin : {&a.q_proj(), &a.k_proj(), &a.v_proj(), &a.o_proj(), &l.ffn().gate(), &l.ffn().up(),
                             &l.ffn().down()})
      f(*lin);
  }
  if (auto* classifier = model.classifier()) f(*classifier);  // none when tied to the embedding
}

/// Makes exactly the named adapters active in every layer that has them (others: none active). An empty list
/// gives the base model.
template <IncrementalAttention Attn, LinearPolicy Inner>
void activate_lora_adapters(Llama<Attn, LoRA<Inner>>& model, const std::vector<std::string>& names) {
  for_each_lora(model, [&](LoRA<Inner>& lin) {
    std::vector<std::string> present;
    for (const auto& n : names)
      if (lin.find(n)) present.push_back(n);
    lin.activate_only(present);
  });
}

/// Folds the active adapters into every layer's weight (merge) or takes them out again (unmerge).
template <IncrementalAttention Attn, MergeableLinear Inner>
void merge_lora_adapters(Llama<Attn, LoRA<Inner>>& model, bool merge = true) {
  for_each_lora(model, [&](LoRA<Inner>& lin) { merge ? lin.merge() : lin.unmerge(); });
}

/// The llama2.c module path of target `leaf` (wq, wk, wv, wo, w1, w2 or w3) in layer `layer`; config_error
/// naming the target otherwise.
inline std::string llama_module_path(Index layer, std::string_view leaf) {
  for (const char* m : {"wq", "wk", "wv", "wo"})
    if (leaf == m) return detail::cat("layers.", layer, ".attention.", leaf);
  for (const char* m : {"w1", "w2", "w3"})
    if (leaf == m) return detail::cat("layers.", layer, ".feed_forward.", leaf);
  throw config_error(detail::cat("llama_module_path: unknown LoRA target '", leaf,
                                 "', expected one of wq, wk, wv, wo, w1, w2, w3"));
}

/// Adds a fresh adapter `name` of rank r and scaling α/r (PEFT's initialization: A Kaiming-uniform, B zero, so the
/// model is unchanged until it trains) to the modules `targets` (leaf names, e.g. {"wq", "wv"}) of every layer,
/// and activates it. Each module's A is drawn from its own seed (seed + its index). Targets are checked before any
/// module changes.
template <IncrementalAttention Attn, LinearPolicy Inner>
void add_lora_training(Llama<Attn, LoRA<Inner>>& model, const std::string& name, Index rank, float alpha,
                       const std::vector<std::string>& targets, unsigned seed = 0) {
  const char* func = "add_lora_training";
  if (targets.empty()) throw config_error(detail::cat(func, ": no targets, expected module names such as wq,wv"));
  if (rank < 1 || !(alpha > 0.0f) || !std::isfinite(alpha))
    throw config_error(detail::cat(func, ": rank ", rank, ", alpha ", alpha, ", expected rank >= 1 and alpha > 0"));
  std::vector<std::string> paths;
  for (Index l = 0; l < model.config().n_layers; ++l)
    for (const auto& t : targets) paths.push_back(llama_module_path(l, t));
  for (std::size_t i = 0; i < paths.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (paths[i] == paths[j]) throw config_error(detail::cat(func, ": target '", paths[i], "' is listed twice"));
  for (const auto& p : paths)
    if (llama_module(model, p).find(name))
      throw config_error(detail::cat(func, ": module '", p, "' has an adapter named '", name, "' already"));
  for (std::size_t i = 0; i < paths.size(); ++i) {
    LoRA<Inner>& lin = llama_module(model, paths[i]);
    lin.add_adapter(name, rank, alpha, seed + static_cast<unsigned>(i));
    lin.set_active(name);
  }
}

/// Every module's adapter `name` as a PEFT adapter (module paths of model.py; rank and α from the adapters, which
/// must all share one rank and one scaling, as a PEFT config states them once). config_error when no module has
/// it or they disagree.
template <IncrementalAttention Attn, LinearPolicy Inner>
io::PeftLoraAdapter peft_adapter_of(Llama<Attn, LoRA<Inner>>& model, const std::string& name) {
  const char* func = "peft_adapter_of";
  io::PeftLoraAdapter out;
  float scaling = 0.0f;
  for (Index l = 0; l < model.config().n_layers; ++l)
    for (const char* leaf : {"wq", "wk", "wv", "wo", "w1", "w2", "w3"}) {
      const std::string path = llama_module_path(l, leaf);
      const LoRAAdapter* a = llama_module(model, path).find(name);
      if (a == nullptr) continue;
      if (out.modules.empty()) {
        out.rank = a->rank();
        scaling = a->scaling;
      } else if (a->rank() != out.rank || a->scaling != scaling) {
        throw config_error(detail::cat(func, ": module '", path, "' has rank ", a->rank(), " and scaling ", a->scaling,
                                       ", expected rank ", out.rank, " and scaling ", scaling, " as the first module"));
      }
      out.modules.push_back({path, a->a, a->b});
      const std::string target = leaf;
      if (std::find(out.target_modules.begin(), out.target_modules.end(), target) == out.target_modules.end())
        out.target_modules.push_back(target);
    }
  if (out.modules.empty()) throw config_error(detail::cat(func, ": no module has an adapter named '", name, "'"));
  out.alpha = scaling * static_cast<float>(out.rank);
  return out;
}

}  // namespace polyformer
