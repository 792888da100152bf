#pragma once
/// \file Run-time settings passed to every forward.

#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"

namespace polyformer {

/// What a forward may use: the thread count honoured by matrix products and attention.
struct Context {
  int threads = 1;  ///< threads for GEMMs and attention (1 without OpenMP whatever is asked)

  /// Throws config_error unless the settings are usable.
  void validate(const char* func) const {
    if (threads < 1) throw config_error(detail::cat(func, ": threads is ", threads, ", expected >= 1"));
  }
};

}  // namespace polyformer
