#pragma once
// The float64 oracle of a whole Llama's next-token cross-entropy and every gradient (tests of the model's backward
// and of the train program's --grads-out).

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "backward_testing.hpp"
#include "polyformer/core/parameters.hpp"
#include "polyformer/io/llama2c.hpp"

namespace bwt {

namespace oracle = backward_oracle;

using Weights = std::map<std::string, MatD>;

/// Every parameter of a model as float64 matrices by name (vectors as one column).
template <typename Model>
Weights weights_of(Model& model) {
  Weights w;
  const pf::ParameterList params = pf::parameters_of(model);
  for (const pf::Parameter& p : params.items()) {
    pf::Matrix m(p.shape[0], p.shape.size() > 1 ? p.shape[1] : 1);
    p.read(m.data());
    w[p.name] = f64(m);
  }
  return w;
}

/// The mean next-token cross-entropy of a Llama and every gradient, by the chain rule over the oracle's pieces:
/// embedding → per layer x + attention(rope(q), rope(k), v) of rms_norm(x), then + SwiGLU FFN of rms_norm(h) →
/// rms_norm → classifier (the embedding when tied) → cross-entropy.
struct LlamaOracle {
  double loss = 0.0;
  Weights grad;
};
inline LlamaOracle llama_oracle(const Weights& w, const pf::io::LlamaConfig& c, const std::vector<int>& tokens, Index batch,
                         const std::vector<Index>& targets) {
  const Index rows = static_cast<Index>(tokens.size()), seq = rows / batch, d = c.dim, hd = c.head_dim();
  const Index H = c.n_heads, G = c.n_kv_heads, L = c.n_layers;
  const double eps = c.norm_eps, scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const auto W = [&](const std::string& name) -> const MatD& { return w.at(name); };
  const auto V = [&](const std::string& name) -> VecD { return w.at(name).col(0); };
  const auto layer_name = [](Index l, const std::string& rest) { return "layers." + std::to_string(l) + "." + rest; };
  const bool tied = w.count("output.weight") == 0;
  oracle::AttnMask causal;
  causal.causal = true;

  struct LayerState {
    MatD x, n1, q, k, v, qr, kr, context, h, n2;
  };
  std::vector<LayerState> st(static_cast<std::size_t>(L));
  MatD x(rows, d);
  for (Index r = 0; r < rows; ++r) x.row(r) = W("tok_embeddings.weight").row(tokens[std::size_t(r)]);
  for (Index l = 0; l < L; ++l) {
    LayerState& s = st[std::size_t(l)];
    s.x = x;
    s.n1 = oracle::rms_norm(x, V(layer_name(l, "attention_norm.weight")), eps);
    s.q = oracle::linear(s.n1, W(layer_name(l, "attention.wq.weight")), VecD());
    s.k = oracle::linear(s.n1, W(layer_name(l, "attention.wk.weight")), VecD());
    s.v = oracle::linear(s.n1, W(layer_name(l, "attention.wv.weight")), VecD());
    s.qr = s.q, s.kr = s.k;
    s.context = MatD(rows, H * hd);
    for (Index b = 0; b < batch; ++b) {
      s.qr.middleRows(b * seq, seq) = oracle::rope(s.q.middleRows(b * seq, seq), H, hd, 0, true, c.rope_theta);
      s.kr.middleRows(b * seq, seq) = oracle::rope(s.k.middleRows(b * seq, seq), G, hd, 0, true, c.rope_theta);
      s.context.middleRows(b * seq, seq) = oracle::attention(s.qr.middleRows(b * seq, seq), s.kr.middleRows(b * seq, seq),
                                                             s.v.middleRows(b * seq, seq), H, G, scale, causal);
    }
    s.h = x + oracle::linear(s.context, W(layer_name(l, "attention.wo.weight")), VecD());
    s.n2 = oracle::rms_norm(s.h, V(layer_name(l, "ffn_norm.weight")), eps);
    oracle::FFNWeights f{W(layer_name(l, "feed_forward.w3.weight")), VecD(), W(layer_name(l, "feed_forward.w2.weight")),
                         VecD(), W(layer_name(l, "feed_forward.w1.weight")), VecD(), oracle::Act::silu, true};
    x = s.h + oracle::ffn(s.n2, f);
  }
  const MatD nf = oracle::rms_norm(x, V("norm.weight"), eps);
  const MatD& classifier = tied ? W("tok_embeddings.weight") : W("output.weight");
  const MatD logits = oracle::linear(nf, classifier, VecD());
  LlamaOracle o;
  o.loss = oracle::cross_entropy(logits, targets);
  const MatD dlogits = oracle::cross_entropy_backward(logits, targets);
  const auto out = oracle::linear_backward(nf, classifier, VecD(), dlogits);
  MatD d_embedding = MatD::Zero(c.vocab_size, d);
  if (tied) d_embedding += out.dw;
  else o.grad["output.weight"] = out.dw;
  const auto fn = oracle::rms_norm_backward(x, V("norm.weight"), eps, out.dx);
  o.grad["norm.weight"] = fn.dgamma;
  MatD dx = fn.dx;
  for (Index l = L - 1; l >= 0; --l) {
    const LayerState& s = st[std::size_t(l)];
    oracle::FFNWeights f{W(layer_name(l, "feed_forward.w3.weight")), VecD(), W(layer_name(l, "feed_forward.w2.weight")),
                         VecD(), W(layer_name(l, "feed_forward.w1.weight")), VecD(), oracle::Act::silu, true};
    const auto fg = oracle::ffn_backward(s.n2, f, dx);
    o.grad[layer_name(l, "feed_forward.w1.weight")] = fg.dw_gate;
    o.grad[layer_name(l, "feed_forward.w3.weight")] = fg.dw_up;
    o.grad[layer_name(l, "feed_forward.w2.weight")] = fg.dw_down;
    const auto n2g = oracle::rms_norm_backward(s.h, V(layer_name(l, "ffn_norm.weight")), eps, fg.dx);
    o.grad[layer_name(l, "ffn_norm.weight")] = n2g.dgamma;
    const MatD dh = dx + n2g.dx;
    const auto og = oracle::linear_backward(s.context, W(layer_name(l, "attention.wo.weight")), VecD(), dh);
    o.grad[layer_name(l, "attention.wo.weight")] = og.dw;
    MatD dq(rows, H * hd), dk(rows, G * hd), dv(rows, G * hd);
    for (Index b = 0; b < batch; ++b) {
      const auto ag = oracle::attention_backward(s.qr.middleRows(b * seq, seq), s.kr.middleRows(b * seq, seq),
                                                 s.v.middleRows(b * seq, seq), H, G, scale, causal,
                                                 og.dx.middleRows(b * seq, seq));
      dq.middleRows(b * seq, seq) = oracle::rope_backward(ag.dq, H, hd, 0, true, c.rope_theta);
      dk.middleRows(b * seq, seq) = oracle::rope_backward(ag.dk, G, hd, 0, true, c.rope_theta);
      dv.middleRows(b * seq, seq) = ag.dv;
    }
    const auto qg = oracle::linear_backward(s.n1, W(layer_name(l, "attention.wq.weight")), VecD(), dq);
    const auto kg = oracle::linear_backward(s.n1, W(layer_name(l, "attention.wk.weight")), VecD(), dk);
    const auto vg = oracle::linear_backward(s.n1, W(layer_name(l, "attention.wv.weight")), VecD(), dv);
    o.grad[layer_name(l, "attention.wq.weight")] = qg.dw;
    o.grad[layer_name(l, "attention.wk.weight")] = kg.dw;
    o.grad[layer_name(l, "attention.wv.weight")] = vg.dw;
    const auto n1g = oracle::rms_norm_backward(s.x, V(layer_name(l, "attention_norm.weight")), eps,
                                               MatD(qg.dx + kg.dx + vg.dx));
    o.grad[layer_name(l, "attention_norm.weight")] = n1g.dgamma;
    dx = dh + n1g.dx;
  }
  for (Index r = 0; r < rows; ++r) d_embedding.row(tokens[std::size_t(r)]) += dx.row(r);
  o.grad["tok_embeddings.weight"] = d_embedding;
  return o;
}

}  // namespace bwt
