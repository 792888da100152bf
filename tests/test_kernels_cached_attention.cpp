#include "polyformer/kernels/cached_attention.hpp"

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels_testing.hpp"

namespace k = polyformer::kernels;
namespace kt = polyformer::kernels::testing;

namespace {

// Float64 oracle of softmax(scale·q·K)·V over transposed keys and values, written from the definition.
std::vector<double> attend_ref(std::size_t rows, std::size_t dh, std::size_t n, double scale,
                               const std::vector<float>& q, const std::vector<float>& kt_,
                               const std::vector<float>& vt) {
  std::vector<double> out(rows * dh, 0.0);
  for (std::size_t r = 0; r < rows; ++r) {
    std::vector<double> s(n);
    for (std::size_t j = 0; j < n; ++j) {
      double dot = 0.0;
      for (std::size_t d = 0; d < dh; ++d) dot += double(q[r * dh + d]) * kt_[d * n + j];
      s[j] = scale * dot;
    }
    const double m = *std::max_element(s.begin(), s.end());
    double sum = 0.0;
    for (double& x : s) sum += x = std::exp(x - m);
    for (std::size_t d = 0; d < dh; ++d) {
      double acc = 0.0;
      for (std::size_t j = 0; j < n; ++j) acc += s[j] * vt[d * n + j];
      out[r * dh + d] = acc / sum;
    }
  }
  return out;
}

}  // namespace

TEST_CASE("kernels/attend_transposed: matches float64 and the scalar twin for every tail, head size and row count",
          "[kernels][attention]") {
  std::vector<std::size_t> lengths;
  for (std::size_t n : kt::lengths())
    if (n > 0) lengths.push_back(n);
  for (k::Isa isa : kt::runnable_isas("attend_transposed"))
    for (std::size_t rows : {1u, 2u, 3u, 5u})
      for (std::size_t dh : {1u, 3u, 8u, 20u, 64u})
        for (std::size_t n : lengths) {
          if (n > 300 && dh > 8) continue;  // long rows once per small head: enough for the tails
          CAPTURE(k::isa_name(isa), rows, dh, n);
          const auto seed = static_cast<std::uint32_t>(rows * 100000 + dh * 1000 + n);
          const auto vq = kt::random_vec(rows * dh, -2.0f, 2.0f, seed);
          const auto vk = kt::random_vec(dh * n, -2.0f, 2.0f, seed + 1);
          const auto vv = kt::random_vec(dh * n, -3.0f, 3.0f, seed + 2);
          // Keys and values end at a guard page with rows exactly n apart: any read past position n − 1 crashes.
          const kt::Guarded q(rows * dh, vq), keys(dh * n, vk), values(dh * n, vv);
          const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
          const auto ref = attend_ref(rows, dh, n, scale, vq, vk, vv);
          kt::Guarded scores(rows * n), out(rows * dh), scores_s(rows * n), out_s(rows * dh);
          k::attend_transposed(rows, dh, n, scale, q.data(), dh, keys.data(), values.data(), n, scores.data(), n,
                               out.data(), dh, isa);
          k::attend_transposed_scalar(rows, dh, n, scale, q.data(), dh, keys.data(), values.data(), n,
                                      scores_s.data(), n, out_s.data(), dh);
          // Each score carries about dh roundings of terms up to 4·scale (|q|, |k| ≤ 2), which move a weight by as
          // much relatively; the sums over n add √n·u; the output is a weighted mean of values up to 3 in size.
          const double score_err = (static_cast<double>(dh) + 4.0) * kt::u * 4.0 * scale * static_cast<double>(dh);
          const double tol = 8.0 * 3.0 * (score_err + (std::sqrt(static_cast<double>(n)) + 4.0) * kt::u);
          for (std::size_t i = 0; i < rows * dh; ++i) {
            CHECK(std::fabs(out[i] - ref[i]) <= tol);
            CHECK(std::fabs(out_s[i] - ref[i]) <= tol);
          }
        }
}
