#pragma once
/// \file PEFT LoRA adapters on a Llama whose linear layers are LoRA<Inner>: module paths are those of
/// llama2.c's PyTorch `model.py` (how such adapters are trained): `layers.{i}.attention.wq` (wk, wv, wo) and
/// `layers.{i}.feed_forward.w1` (w2, w3), with w1 the SwiGLU gate, w3 its up-projection and w2 the
/// down-projection.

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

}  // namespace polyformer
