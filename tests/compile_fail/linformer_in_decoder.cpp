// Linformer projects keys along the sequence, so it cannot be causal: a decoder over it must not compile.
#include "polyformer/polyformer.hpp"

int main() {
  polyformer::DecoderLayer<polyformer::Linformer> layer;
  (void)layer;
}
