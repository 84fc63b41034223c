// nearest_neighbors against a brute-force search written here with plain loops.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "core/distance.h"

namespace spc {
namespace {

struct BruteForce {
  std::vector<std::vector<double>> distances;
  std::vector<std::vector<int64_t>> indices;
};

// Sorts every bank row by (squared distance in long double, index): the definition of the
// result, with its own arithmetic.
BruteForce brute_force(const at::Tensor& queries, const at::Tensor& bank, int64_t k) {
  const at::Tensor q = queries.to(at::kDouble).contiguous();
  const at::Tensor b = bank.to(at::kDouble).contiguous();
  BruteForce result;
  for (int64_t i = 0; i < q.size(0); ++i) {
    std::vector<std::pair<long double, int64_t>> all;
    for (int64_t j = 0; j < b.size(0); ++j) {
      long double s = 0.0L;
      for (int64_t c = 0; c < q.size(1); ++c) {
        const long double t = static_cast<long double>(q[i][c].item<double>()) -
                              static_cast<long double>(b[j][c].item<double>());
        s += t * t;
      }
      all.emplace_back(s, j);
    }
    std::sort(all.begin(), all.end());
    std::vector<double> d(k, std::numeric_limits<double>::infinity());
    std::vector<int64_t> idx(k, -1);
    for (int64_t c = 0; c < std::min<int64_t>(k, all.size()); ++c) {
      d[c] = std::sqrt(static_cast<double>(all[c].first));
      idx[c] = all[c].second;
    }
    result.distances.push_back(d);
    result.indices.push_back(idx);
  }
  return result;
}

void expect_matches(const at::Tensor& queries, const at::Tensor& bank, int64_t k) {
  const BruteForce expected = brute_force(queries, bank, k);
  for (const DistanceMode mode : {DistanceMode::kMatmul, DistanceMode::kExact}) {
    for (const int64_t chunk : {int64_t{0}, int64_t{1}, int64_t{7}}) {
      const auto [distances, indices] = nearest_neighbors(queries, bank, k, mode, chunk);
      ASSERT_EQ(distances.sizes(), (at::IntArrayRef{queries.size(0), k}));
      ASSERT_EQ(indices.sizes(), (at::IntArrayRef{queries.size(0), k}));
      ASSERT_EQ(distances.scalar_type(), queries.scalar_type());
      const at::Tensor d = distances.to(at::kDouble);
      for (int64_t i = 0; i < queries.size(0); ++i) {
        for (int64_t c = 0; c < k; ++c) {
          EXPECT_EQ(indices[i][c].item<int64_t>(), expected.indices[i][c])
              << "query " << i << " column " << c << " mode " << static_cast<int>(mode);
          const double want = expected.distances[i][c];
          const double got = d[i][c].item<double>();
          if (std::isinf(want)) {
            EXPECT_TRUE(std::isinf(got));
          } else {
            EXPECT_NEAR(got, want, 1e-6 * (1.0 + want)) << "query " << i << " column " << c;
          }
        }
      }
    }
  }
}

TEST(NearestNeighbors, MatchesBruteForceOnRandomData) {
  at::manual_seed(0);
  for (const int64_t dim : {1, 3, 8, 33}) {
    for (const int64_t k : {1, 2, 5}) {
      expect_matches(at::randn({40, dim}), at::randn({25, dim}), k);
    }
  }
}

TEST(NearestNeighbors, Float64) {
  at::manual_seed(1);
  expect_matches(at::randn({30, 6}, at::kDouble), at::randn({20, 6}, at::kDouble), 3);
}

TEST(NearestNeighbors, TiesGoToTheLowerIndex) {
  // Integer points on a line: query 0 is at distance 1 from bank rows 0 and 1 alike, and the
  // duplicated rows 2 and 3 tie exactly.
  const at::Tensor bank = at::tensor({-1.0f, 1.0f, 5.0f, 5.0f, 9.0f}).view({5, 1});
  const at::Tensor queries = at::tensor({0.0f, 5.0f, 7.0f}).view({3, 1});
  const auto [distances, indices] = nearest_neighbors(queries, bank, 3);
  EXPECT_EQ(indices[0][0].item<int64_t>(), 0);
  EXPECT_EQ(indices[0][1].item<int64_t>(), 1);
  EXPECT_EQ(indices[1][0].item<int64_t>(), 2);
  EXPECT_EQ(indices[1][1].item<int64_t>(), 3);
  EXPECT_EQ(indices[2][0].item<int64_t>(), 2);  // 2, 3 and 4 are all at distance 2
  EXPECT_EQ(indices[2][1].item<int64_t>(), 3);
  EXPECT_EQ(indices[2][2].item<int64_t>(), 4);
  EXPECT_FLOAT_EQ(distances[2][2].item<float>(), 2.0f);
  expect_matches(queries, bank, 4);
}

TEST(NearestNeighbors, IntegerGridWithManyTies) {
  at::manual_seed(2);
  const at::Tensor bank = at::randint(0, 3, {60, 4}).to(at::kFloat);
  const at::Tensor queries = at::randint(0, 3, {50, 4}).to(at::kFloat);
  expect_matches(queries, bank, 6);
}

TEST(NearestNeighbors, DuplicateQueriesAndBankRows) {
  at::manual_seed(3);
  const at::Tensor base = at::randn({5, 3});
  const at::Tensor bank = at::cat({base, base, base.narrow(0, 0, 2)});
  const at::Tensor queries = at::cat({base, base});
  expect_matches(queries, bank, 3);
  const auto [distances, indices] = nearest_neighbors(queries, bank, 1);
  EXPECT_EQ(distances.abs().max().item<float>(), 0.0f);
}

TEST(NearestNeighbors, KOfOneAndKAtLeastBankSize) {
  at::manual_seed(4);
  const at::Tensor bank = at::randn({4, 5});
  const at::Tensor queries = at::randn({6, 5});
  expect_matches(queries, bank, 1);
  expect_matches(queries, bank, 4);
  expect_matches(queries, bank, 9);  // columns 4..8 are +inf and -1
  const auto [distances, indices] = nearest_neighbors(queries, bank, 9);
  EXPECT_EQ(indices.narrow(1, 4, 5).eq(-1).all().item<bool>(), true);
}

TEST(NearestNeighbors, EmptyQueriesAndEmptyBank) {
  const auto [d0, i0] = nearest_neighbors(at::zeros({0, 3}), at::randn({4, 3}), 2);
  EXPECT_EQ(d0.sizes(), (at::IntArrayRef{0, 2}));
  EXPECT_EQ(i0.sizes(), (at::IntArrayRef{0, 2}));
  const auto [d1, i1] = nearest_neighbors(at::randn({3, 3}), at::zeros({0, 3}), 2);
  EXPECT_TRUE(at::isinf(d1).all().item<bool>());
  EXPECT_TRUE(i1.eq(-1).all().item<bool>());
}

TEST(NearestNeighbors, LargeConstantOffsetKeepsTheRightNeighbour) {
  // With +1e3 on every coordinate, ||x||^2 is about 1e6 * dim and float32 products lose the
  // differences of order 1e-2 that separate the neighbours; the exact refinement keeps them.
  at::manual_seed(5);
  const at::Tensor bank = at::randn({200, 16}) * 0.05 + 1e3;
  const at::Tensor queries = at::randn({100, 16}) * 0.05 + 1e3;
  expect_matches(queries, bank, 2);
}

TEST(NearestNeighbors, NonContiguousInput) {
  at::manual_seed(6);
  const at::Tensor bank = at::randn({6, 30}).t();      // [30, 6], strided
  const at::Tensor queries = at::randn({40, 12}).narrow(1, 3, 6);  // row stride 12
  ASSERT_FALSE(bank.is_contiguous());
  ASSERT_FALSE(queries.is_contiguous());
  expect_matches(queries, bank, 3);
}

TEST(NearestNeighbors, RejectsBadInput) {
  const at::Tensor good = at::randn({3, 4});
  EXPECT_THROW(nearest_neighbors(good, at::randn({3, 5}), 1), c10::Error);
  EXPECT_THROW(nearest_neighbors(good, good.to(at::kDouble), 1), c10::Error);
  EXPECT_THROW(nearest_neighbors(good, good, 0), c10::Error);
  EXPECT_THROW(nearest_neighbors(at::randn({3}), good, 1), c10::Error);
  EXPECT_THROW(nearest_neighbors(good.to(at::kInt), good.to(at::kInt), 1), c10::Error);
  at::Tensor nan = good.clone();
  nan[1][2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(nearest_neighbors(nan, good, 1), c10::Error);
  try {
    nearest_neighbors(good, at::randn({3, 5}), 1);
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("same dim, got 4 and 5"),
              std::string::npos);
  }
}

// The same definition as brute_force, through raw pointers, for inputs large enough to span
// several blocks of the CPU search (Note [Blocked CPU search]).
BruteForce brute_force_large(const at::Tensor& queries, const at::Tensor& bank, int64_t k) {
  const at::Tensor q = queries.to(at::kDouble).contiguous();
  const at::Tensor b = bank.to(at::kDouble).contiguous();
  const double* qs = q.data_ptr<double>();
  const double* bs = b.data_ptr<double>();
  const int64_t dim = q.size(1);
  BruteForce result;
  std::vector<std::pair<long double, int64_t>> all(b.size(0));
  for (int64_t i = 0; i < q.size(0); ++i) {
    for (int64_t j = 0; j < b.size(0); ++j) {
      long double s = 0.0L;
      for (int64_t c = 0; c < dim; ++c) {
        const long double t = static_cast<long double>(qs[i * dim + c]) - bs[j * dim + c];
        s += t * t;
      }
      all[j] = {s, j};
    }
    const int64_t kept = std::min<int64_t>(k, b.size(0));
    std::partial_sort(all.begin(), all.begin() + kept, all.end());
    std::vector<double> d(k, std::numeric_limits<double>::infinity());
    std::vector<int64_t> idx(k, -1);
    for (int64_t c = 0; c < kept; ++c) {
      d[c] = std::sqrt(static_cast<double>(all[c].first));
      idx[c] = all[c].second;
    }
    result.distances.push_back(d);
    result.indices.push_back(idx);
  }
  return result;
}

void expect_matches_large(const at::Tensor& queries,
                          const at::Tensor& bank,
                          int64_t k,
                          int64_t chunk_rows) {
  const BruteForce expected = brute_force_large(queries, bank, k);
  const auto [distances, indices] =
      nearest_neighbors(queries, bank, k, DistanceMode::kMatmul, chunk_rows);
  const at::Tensor d = distances.to(at::kDouble).contiguous();
  const at::Tensor idx = indices.contiguous();
  int64_t wrong = 0;
  for (int64_t i = 0; i < queries.size(0); ++i) {
    for (int64_t c = 0; c < k; ++c) {
      const double want = expected.distances[i][c];
      const double got = d.data_ptr<double>()[i * k + c];
      const bool same_index = idx.data_ptr<int64_t>()[i * k + c] == expected.indices[i][c];
      const bool same_distance = std::isinf(want) ? std::isinf(got)
                                                  : std::abs(got - want) <= 1e-6 * (1.0 + want);
      wrong += (same_index && same_distance) ? 0 : 1;
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << queries.size(0) * k << " entries, k = " << k
                      << ", chunk_rows = " << chunk_rows;
}

TEST(NearestNeighbors, SpansSeveralBlocksOfQueriesAndBank) {
  // 1300 bank rows are three column blocks of the CPU search; 2100 queries with chunk_rows
  // 0 and 333 make several query blocks, the last one partial.
  at::manual_seed(8);
  const at::Tensor bank = at::randn({1300, 7});
  const at::Tensor queries = at::randn({2100, 7});
  for (const int64_t k : {1, 3, 17}) {
    for (const int64_t chunk : {int64_t{0}, int64_t{333}}) {
      expect_matches_large(queries, bank, k, chunk);
    }
  }
}

TEST(NearestNeighbors, TiesAcrossBankBlocksGoToTheLowerIndex) {
  // Bank rows 5 and 1205 are the same point, in different column blocks, and every query is
  // nearest to it; the blocks are scanned in order, but the tie must not depend on that.
  at::manual_seed(9);
  at::Tensor bank = at::randn({1300, 4}) * 10.0 + 50.0;
  const at::Tensor point = at::zeros({4});
  bank[5] = point;
  bank[1205] = point;
  bank[700] = point + 0.5;
  const at::Tensor queries = at::randn({40, 4}) * 0.01;
  expect_matches_large(queries, bank, 1, 0);
  expect_matches_large(queries, bank, 3, 0);
  const auto [distances, indices] = nearest_neighbors(queries, bank, 2);
  EXPECT_TRUE(indices.select(1, 0).eq(5).all().item<bool>());
  EXPECT_TRUE(indices.select(1, 1).eq(1205).all().item<bool>());
}

TEST(NearestNeighbors, NearTiesBelowFloat32ResolutionAcrossBlocks) {
  // 100 points spread at scale 100, each repeated 11 times with 1e-3 jitter, in every column
  // block. Squared norms near 1e5 round by about 1e-2 in float32 while the jittered copies
  // differ by about 1e-5: the products cannot rank the copies, only the exact refinement can.
  at::manual_seed(10);
  const at::Tensor base = at::randn({100, 4}) * 100.0;
  const at::Tensor bank = base.repeat({11, 1}) + at::randn({1100, 4}) * 1e-3;
  const at::Tensor queries = base.repeat({3, 1}) + at::randn({300, 4}) * 1e-3;
  for (const int64_t k : {1, 4, 13}) {
    expect_matches_large(queries, bank, k, 0);
  }
}

TEST(NearestNeighbors, Float64SpansSeveralBlocks) {
  at::manual_seed(11);
  expect_matches_large(at::randn({700, 9}, at::kDouble), at::randn({1500, 9}, at::kDouble), 2, 0);
}

TEST(RandomProjection, IsDeterministicAndChunkIndependent) {
  at::manual_seed(7);
  const at::Tensor x = at::randn({50, 20});
  const at::Tensor p = random_projection_matrix(20, 8, 42);
  EXPECT_TRUE(at::equal(p, random_projection_matrix(20, 8, 42)));
  EXPECT_FALSE(at::equal(p, random_projection_matrix(20, 8, 43)));
  const at::Tensor whole = project(x, p);
  const at::Tensor parts = at::cat({project(x.narrow(0, 0, 17), p), project(x.narrow(0, 17, 33), p)});
  EXPECT_TRUE(at::equal(whole, parts));
  EXPECT_TRUE(at::allclose(whole.to(at::kDouble), at::mm(x.to(at::kDouble), p), 1e-5, 1e-5));
}

}  // namespace
}  // namespace spc
