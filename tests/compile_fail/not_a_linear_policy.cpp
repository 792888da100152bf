// Must not compile: an FFN over a type that is not a linear policy. The error names LinearPolicy.
#include <polyformer/layers/ffn.hpp>

struct NotLinear {
  int in_features() const { return 1; }  // no out_features, has_bias, forward
};

int main() {
  polyformer::FeedForward<NotLinear, polyformer::ReLU> ffn;
  (void)ffn;
}
