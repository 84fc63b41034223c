// greedy_coreset against a brute-force farthest-point-first written here.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include "core/distance.h"
#include "core/greedy_coreset.h"

namespace spc {
namespace {

// Full pairwise distances, then farthest point first with ties to the lowest row and no row
// chosen twice.
std::vector<int64_t> brute_force_greedy(const at::Tensor& points, int64_t size, int64_t start) {
  const at::Tensor p = points.to(at::kDouble).contiguous();
  const int64_t n = p.size(0);
  std::vector<std::vector<long double>> pairwise(n, std::vector<long double>(n));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      long double s = 0.0L;
      for (int64_t c = 0; c < p.size(1); ++c) {
        const long double t = p[i][c].item<double>() - p[j][c].item<double>();
        s += t * t;
      }
      pairwise[i][j] = s;
    }
  }
  std::vector<bool> chosen(n, false);
  std::vector<long double> nearest(n, std::numeric_limits<long double>::infinity());
  std::vector<int64_t> order;
  int64_t next = start;
  while (static_cast<int64_t>(order.size()) < std::min(size, n)) {
    order.push_back(next);
    chosen[next] = true;
    int64_t best = -1;
    for (int64_t i = 0; i < n; ++i) {
      nearest[i] = std::min(nearest[i], pairwise[i][next]);
      if (!chosen[i] && (best < 0 || nearest[i] > nearest[best])) {
        best = i;
      }
    }
    next = best;
  }
  return order;
}

std::vector<int64_t> to_vector(const at::Tensor& t) {
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}

TEST(GreedyCoreset, MatchesBruteForceWithoutProjection) {
  for (const int64_t seed : {0, 1, 2, 3, 4}) {
    at::manual_seed(seed);
    for (const int64_t dim : {1, 4, 17}) {
      const at::Tensor x = at::randn({60, dim});
      GreedyCoresetOptions options;
      options.size = 12;
      options.projection_dim = 0;
      options.start = seed * 7 % 60;
      EXPECT_EQ(to_vector(greedy_coreset(x, options)), brute_force_greedy(x, 12, options.start))
          << "seed " << seed << " dim " << dim;
    }
  }
}

TEST(GreedyCoreset, MatchesBruteForceInTheProjectedSpace) {
  at::manual_seed(10);
  const at::Tensor x = at::randn({80, 40}, at::kDouble);
  GreedyCoresetOptions options;
  options.size = 15;
  options.projection_dim = 8;
  options.seed = 99;
  options.start = 3;
  const at::Tensor projected = at::mm(x, random_projection_matrix(40, 8, 99));
  EXPECT_EQ(to_vector(greedy_coreset(x, options)), brute_force_greedy(projected, 15, 3));
}

TEST(GreedyCoreset, TiesAndDuplicatesOnAnIntegerGrid) {
  at::manual_seed(11);
  const at::Tensor x = at::randint(0, 3, {50, 2}).to(at::kFloat);
  GreedyCoresetOptions options;
  options.size = 50;  // beyond the 9 distinct points: duplicates come last, lowest row first
  options.projection_dim = 0;
  options.start = 0;
  const std::vector<int64_t> got = to_vector(greedy_coreset(x, options));
  EXPECT_EQ(got, brute_force_greedy(x, 50, 0));
  std::vector<int64_t> sorted = got;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::unique(sorted.begin(), sorted.end()), sorted.end()) << "a row chosen twice";
}

TEST(GreedyCoreset, SizeAtLeastRowsReturnsEveryRowOnce) {
  at::manual_seed(12);
  const at::Tensor x = at::randn({7, 3});
  GreedyCoresetOptions options;
  options.size = 20;
  options.projection_dim = 0;
  options.start = 2;
  const at::Tensor got = greedy_coreset(x, options);
  EXPECT_EQ(got.numel(), 7);
  EXPECT_EQ(to_vector(got), brute_force_greedy(x, 20, 2));
}

TEST(GreedyCoreset, SeededStartIsReproducible) {
  at::manual_seed(13);
  const at::Tensor x = at::randn({100, 5});
  GreedyCoresetOptions options;
  options.size = 10;
  options.seed = 5;
  EXPECT_TRUE(at::equal(greedy_coreset(x, options), greedy_coreset(x, options)));
}

TEST(GreedyCoreset, RejectsBadInput) {
  GreedyCoresetOptions options;
  options.size = 0;
  EXPECT_THROW(greedy_coreset(at::randn({5, 2}), options), c10::Error);
  options.size = 2;
  EXPECT_THROW(greedy_coreset(at::zeros({0, 2}), options), c10::Error);
  options.start = 5;
  EXPECT_THROW(greedy_coreset(at::randn({5, 2}), options), c10::Error);
}

}  // namespace
}  // namespace spc
