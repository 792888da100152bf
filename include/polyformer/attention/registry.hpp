#pragma once
/// \file A run-time registry over the compile-time attention policies, for programs that pick the policy on
/// the command line: a spelling such as "sliding:128" is parsed into an AttentionSpec, and with_attention()
/// calls a generic callable with the policy object, so the rest of the program is instantiated once per
/// policy. Spellings: full, sliding:W, blockwise:B, lsh:HASHES:CHUNK, linformer:K, performer:M, linear.

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "polyformer/attention/blockwise.hpp"
#include "polyformer/attention/full.hpp"
#include "polyformer/attention/kernelized.hpp"
#include "polyformer/attention/linformer.hpp"
#include "polyformer/attention/lsh.hpp"
#include "polyformer/attention/sliding_window.hpp"
#include "polyformer/core/error.hpp"

namespace polyformer {

/// The attention families with a spelling.
enum class AttentionKind { full, sliding, blockwise, lsh, linformer, performer, linear };

/// A parsed policy spelling and the options a program may add to it.
struct AttentionSpec {
  AttentionKind kind = AttentionKind::full;
  Index window = 0;          ///< sliding: keys each side
  Index block = 0;           ///< blockwise: block length
  Index hashes = 0;          ///< lsh: rounds
  Index chunk = 0;           ///< lsh: chunk length
  Index k = 0;               ///< linformer: projected length
  Index features = 0;        ///< performer: random features
  // Options outside the spelling.
  Index dilation = 1;                 ///< sliding
  std::vector<Index> global_positions;  ///< sliding
  bool previous_block = false;        ///< blockwise
  std::uint64_t seed = 1;             ///< lsh rotations, performer features, random linformer projections
  Index n_max = 0;                    ///< linformer: length of the random projections

  /// The spelling, e.g. "lsh:4:64".
  std::string spelling() const {
    switch (kind) {
      case AttentionKind::full: return "full";
      case AttentionKind::sliding: return detail::cat("sliding:", window);
      case AttentionKind::blockwise: return detail::cat("blockwise:", block);
      case AttentionKind::lsh: return detail::cat("lsh:", hashes, ":", chunk);
      case AttentionKind::linformer: return detail::cat("linformer:", k);
      case AttentionKind::performer: return detail::cat("performer:", features);
      case AttentionKind::linear: return "linear";
    }
    return "?";
  }
};

namespace detail {
inline Index parse_spec_number(std::string_view text, std::string_view spelling, const char* what) {
  Index v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || v < 1)
    throw config_error(cat("parse_attention: '", spelling, "': ", what, " is '", text, "', expected an integer >= 1"));
  return v;
}
}  // namespace detail

/// Parses a policy spelling; throws config_error naming the spelling and what was expected.
inline AttentionSpec parse_attention(std::string_view spelling) {
  std::vector<std::string_view> parts;
  for (std::size_t start = 0;;) {
    const std::size_t colon = spelling.find(':', start);
    parts.push_back(spelling.substr(start, colon == std::string_view::npos ? std::string_view::npos : colon - start));
    if (colon == std::string_view::npos) break;
    start = colon + 1;
  }
  const auto arity = [&](std::size_t n, const char* form) {
    if (parts.size() != n)
      throw config_error(detail::cat("parse_attention: '", spelling, "', expected ", form));
  };
  AttentionSpec spec;
  const std::string_view name = parts[0];
  if (name == "full") {
    arity(1, "full");
  } else if (name == "sliding") {
    arity(2, "sliding:W");
    spec.kind = AttentionKind::sliding;
    spec.window = detail::parse_spec_number(parts[1], spelling, "W");
  } else if (name == "blockwise") {
    arity(2, "blockwise:B");
    spec.kind = AttentionKind::blockwise;
    spec.block = detail::parse_spec_number(parts[1], spelling, "B");
  } else if (name == "lsh") {
    arity(3, "lsh:HASHES:CHUNK");
    spec.kind = AttentionKind::lsh;
    spec.hashes = detail::parse_spec_number(parts[1], spelling, "HASHES");
    spec.chunk = detail::parse_spec_number(parts[2], spelling, "CHUNK");
  } else if (name == "linformer") {
    arity(2, "linformer:K");
    spec.kind = AttentionKind::linformer;
    spec.k = detail::parse_spec_number(parts[1], spelling, "K");
  } else if (name == "performer") {
    arity(2, "performer:M");
    spec.kind = AttentionKind::performer;
    spec.features = detail::parse_spec_number(parts[1], spelling, "M");
  } else if (name == "linear") {
    arity(1, "linear");
    spec.kind = AttentionKind::linear;
  } else {
    throw config_error(detail::cat("parse_attention: unknown policy '", spelling,
                                   "', expected full, sliding:W, blockwise:B, lsh:HASHES:CHUNK, linformer:K, "
                                   "performer:M or linear"));
  }
  return spec;
}

/// Calls f(policy) with the policy object the spec describes (f is instantiated for every policy type, or
/// only for those modelling IncrementalAttention when `incremental_only`; other kinds then throw).
template <bool incremental_only = false, typename F>
decltype(auto) with_attention(const AttentionSpec& spec, F&& f) {
  switch (spec.kind) {
    case AttentionKind::full: return f(FullAttention{});
    case AttentionKind::sliding: {
      SlidingWindowOptions o;
      o.window = spec.window;
      o.dilation = {spec.dilation};
      o.global_positions = spec.global_positions;
      return f(SlidingWindow(std::move(o)));
    }
    case AttentionKind::linear: return f(LinearAttention{});
    case AttentionKind::performer: return f(Performer(PositiveRandomFeatures(spec.features, spec.seed)));
    default: break;
  }
  if constexpr (!incremental_only) {
    switch (spec.kind) {
      case AttentionKind::blockwise: return f(Blockwise(spec.block, spec.previous_block));
      case AttentionKind::lsh: return f(LSHAttention(LSHOptions{spec.hashes, spec.chunk, 0, spec.seed}));
      case AttentionKind::linformer: {
        if (spec.n_max < 1)
          throw config_error(detail::cat("with_attention: ", spec.spelling(), " needs n_max >= 1 for its projections"));
        return f(Linformer::random(spec.k, spec.n_max, 1, spec.seed));
      }
      default: break;
    }
  }
  throw config_error(detail::cat("with_attention: '", spec.spelling(),
                                 "' cannot decode incrementally, expected full, sliding:W, linear or performer:M"));
}

}  // namespace polyformer
