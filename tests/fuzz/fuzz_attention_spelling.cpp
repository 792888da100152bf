// libFuzzer target: the attention policies' spellings ("sliding:128", "lsh:4:64", "full:bf16_products", …) as the
// programs' --attention reads them (attention/registry.hpp), every policy of the registry; a spelling that parses
// must parse again from the spelling the policy gives back, to the same spelling.

#include <cstdlib>

#include "fuzz_common.hpp"
#include "polyformer/attention/registry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace pf = polyformer;
  const auto spelled = [](const auto& any) { return std::visit([](const auto& p) { return p.spelling(); }, any); };
  fuzz::expect_errors([&] {
    const std::string once = spelled(pf::parse_attention(fuzz::text(data, size)));
    if (spelled(pf::parse_attention(once)) != once) std::abort();  // a policy's spelling names that policy
  });
  return 0;
}
