#pragma once
/// \file Umbrella header: every public polyformer header.

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"

#include "polyformer/kernels/activation.hpp"
#include "polyformer/kernels/dot.hpp"
#include "polyformer/kernels/exp.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/norm.hpp"
#include "polyformer/kernels/packed_gemm.hpp"
#include "polyformer/kernels/reduce.hpp"
#include "polyformer/kernels/simd.hpp"
#include "polyformer/kernels/small_gemm.hpp"
#include "polyformer/kernels/softmax.hpp"

#include "polyformer/layers/activation.hpp"
#include "polyformer/layers/ffn.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/layers/position.hpp"
#include "polyformer/layers/rotary.hpp"
#include "polyformer/linear/dense.hpp"

#include "polyformer/attention/full.hpp"
#include "polyformer/attention/kv_cache.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/attention/multi_head.hpp"

#include "polyformer/blocks/decoder.hpp"
#include "polyformer/blocks/decoder_layer.hpp"
#include "polyformer/blocks/encoder.hpp"
#include "polyformer/blocks/encoder_decoder.hpp"
#include "polyformer/blocks/encoder_layer.hpp"

#include "polyformer/io/llama2c.hpp"
#include "polyformer/io/safetensors.hpp"
#include "polyformer/io/tokenizer.hpp"
#include "polyformer/models/llama.hpp"
#include "polyformer/models/torch_transformer.hpp"

#include "polyformer/generate/generator.hpp"
#include "polyformer/generate/sampler.hpp"
