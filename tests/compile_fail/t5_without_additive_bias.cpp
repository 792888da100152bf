// T5 adds its relative position bias to every head's scores: an attention policy that never forms the scores
// (Performer's random features) cannot carry it, so a T5 over it must not compile.
#include "polyformer/polyformer.hpp"

int main() {
  polyformer::T5<polyformer::ReLU, polyformer::Dense, polyformer::Performer> model;
  (void)model;
}
