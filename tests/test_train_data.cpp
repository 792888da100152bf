// Training data (train/data.hpp): llama2.c token shards and text files read into ids, the windows they are cut
// into, batches by stream position in file order and shuffled per epoch, and the portable generator.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "polyformer/train/data.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;

namespace {

std::string temp_path(const std::string& name) { return pft::process_temp_path("train_data", name); }

/// Writes ids as little-endian uint16, as llama2.c's pretokenizer does.
std::string write_shard(const std::string& name, const std::vector<int>& ids) {
  return pft::write_token_shard(temp_path(name), ids);
}

}  // namespace

TEST_CASE("train data: SplitMix64 gives the reference generator's numbers", "[train][data]") {
  // Vigna's splitmix64.c seeded with 0 (its first outputs are widely published test values).
  pf::SplitMix64 rng{0};
  CHECK(rng.next() == 0xE220A8397B1DCDAFull);
  CHECK(rng.next() == 0x6E789E6AA1B965F4ull);
  CHECK(rng.next() == 0x06C45D188009454Full);
  pf::SplitMix64 a{42}, b{42};
  for (int i = 0; i < 100; ++i) {
    const std::uint64_t x = a.below(7);
    CHECK(x < 7);
    CHECK(x == b.below(7));
    const double u = a.uniform();
    CHECK((u >= 0.0 && u < 1.0));
    CHECK(u == b.uniform());
  }
}

TEST_CASE("train data: a uint16 shard reads back, bad shards are refused by name", "[train][data]") {
  const std::vector<int> ids = {1, 300, 65535 % 512, 0, 511, 7};
  const std::string path = write_shard("good.bin", ids);
  CHECK(pf::read_token_shard(path, 512) == ids);
  CHECK_THROWS_WITH(pf::read_token_shard(path, 300),
                    Catch::Contains("token 1 is 300, expected 0..299 (the model's vocabulary)"));
  const std::string odd = temp_path("odd.bin");
  std::ofstream(odd, std::ios::binary) << "abc";
  CHECK_THROWS_WITH(pf::read_token_shard(odd, 512), Catch::Contains("has 3 bytes, expected a positive even number"));
  const std::string empty = temp_path("empty.bin");
  std::ofstream(empty, std::ios::binary).close();
  CHECK_THROWS_WITH(pf::read_token_shard(empty, 512), Catch::Contains("has 0 bytes"));
  CHECK_THROWS_WITH(pf::read_token_shard(temp_path("missing.bin"), 512), Catch::Contains("cannot open"));
}

TEST_CASE("train data: a text file is encoded as one prompt, BOS first", "[train][data][llama]") {
  const auto tok = pf::io::Tokenizer::read(pft::shared_path("models/tok512.bin"), 512);
  const std::string text = "Once upon a time, there was a little cat.\nIt liked milk.";
  const std::string path = temp_path("story.txt");
  std::ofstream(path, std::ios::binary) << text;
  const std::vector<int> ids = pf::read_text_tokens(path, tok);
  CHECK(ids == tok.encode(text, true));
  CHECK(ids.front() == pf::io::Tokenizer::bos_id);
}

TEST_CASE("train data: windows in file order, wrapping around", "[train][data]") {
  std::vector<int> tokens(23);
  for (int i = 0; i < 23; ++i) tokens[std::size_t(i)] = 100 + i;
  pf::TokenWindows w(tokens, 5);
  REQUIRE(w.count() == 4);  // windows need 6 tokens each, consecutive ones sharing one: (23 − 1) / 5
  std::vector<int> in, target;
  w.batch(0, 2, in, target);
  CHECK(in == std::vector<int>{100, 101, 102, 103, 104, 105, 106, 107, 108, 109});
  CHECK(target == std::vector<int>{101, 102, 103, 104, 105, 106, 107, 108, 109, 110});
  w.batch(3, 2, in, target);  // window 3, then window 0 again
  CHECK(in == std::vector<int>{115, 116, 117, 118, 119, 100, 101, 102, 103, 104});
  CHECK(target == std::vector<int>{116, 117, 118, 119, 120, 101, 102, 103, 104, 105});
  CHECK_THROWS_WITH(pf::TokenWindows(std::vector<int>(5, 1), 5),
                    Catch::Contains("has 5 tokens, expected at least seq_len + 1 = 6"));
  CHECK_THROWS_WITH(w.batch(-1, 1, in, target), Catch::Contains("expected first >= 0 and batch >= 1"));
}

TEST_CASE("train data: shuffled windows: each epoch a permutation, a batch a function of its position",
          "[train][data]") {
  std::vector<int> tokens(1001);
  for (int i = 0; i < 1001; ++i) tokens[std::size_t(i)] = i;
  pf::TokenWindows w(tokens, 10, 7);
  REQUIRE(w.count() == 100);
  std::vector<Index> epoch0, epoch1;
  for (Index p = 0; p < 100; ++p) epoch0.push_back(w.window_at(p));
  for (Index p = 100; p < 200; ++p) epoch1.push_back(w.window_at(p));
  for (const auto* e : {&epoch0, &epoch1}) {
    std::vector<Index> sorted = *e;
    std::sort(sorted.begin(), sorted.end());
    for (Index i = 0; i < 100; ++i) CHECK(sorted[std::size_t(i)] == i);  // every window once
  }
  CHECK(epoch0 != epoch1);  // a new permutation each pass
  std::vector<Index> file_order(100);
  for (Index i = 0; i < 100; ++i) file_order[std::size_t(i)] = i;
  CHECK(epoch0 != file_order);

  // A fresh reader that starts at position 150 (a resumed run) sees what the first one saw there.
  pf::TokenWindows resumed(tokens, 10, 7);
  std::vector<int> a_in, a_t, b_in, b_t;
  resumed.batch(150, 4, b_in, b_t);
  w.batch(150, 4, a_in, a_t);
  CHECK(a_in == b_in);
  CHECK(a_t == b_t);
  for (std::size_t i = 0; i < a_in.size(); ++i) CHECK(a_t[i] == a_in[i] + 1);

  pf::TokenWindows other(tokens, 10, 8);
  std::vector<Index> other0;
  for (Index p = 0; p < 100; ++p) other0.push_back(other.window_at(p));
  CHECK(other0 != epoch0);  // another seed, another order
}
