// Properties of the sequential coreset that hold whatever the stream: the nearest-member
// bookkeeping equals a brute-force recomputation, d_m never decreases once full, memory budgets
// are enforced up front, and a saved state resumes to the same result. The member-by-member
// equality with a one-at-a-time reference is in tests/python/test_sequential_coreset.py.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/sequential_coreset.h"

namespace spc {
namespace {

// Every member's nearest other member in the space the rule compares in (projected or not), by
// brute force with ties to the lower slot.
void expect_exact_bookkeeping(const SequentialCoreset& coreset) {
  const at::Tensor m = coreset.keys(coreset.coreset()).to(at::kDouble);
  const at::Tensor nn_distance = coreset.nearest_distances().to(at::kDouble);
  const at::Tensor nn_index = coreset.nearest_indices();
  const int64_t n = m.size(0);
  const auto state = coreset.state();
  const at::Tensor second_distance2 = state.at("second_distance2");
  const at::Tensor second_slot = state.at("second_slot");
  double closest = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    // (squared distance, slot) of every other member, sorted: the two nearest come first.
    std::vector<std::pair<double, int64_t>> others;
    for (int64_t j = 0; j < n; ++j) {
      if (j != i) {
        others.emplace_back((m[i] - m[j]).square().sum().item<double>(), j);
      }
    }
    std::sort(others.begin(), others.end());
    const double best = others.empty() ? std::numeric_limits<double>::infinity() : others[0].first;
    const int64_t best_slot = others.empty() ? -1 : others[0].second;
    EXPECT_EQ(nn_index[i].item<int64_t>(), best_slot) << "member " << i;
    if (others.size() >= 2) {
      EXPECT_EQ(second_slot[i].item<int64_t>(), others[1].second) << "member " << i;
      EXPECT_NEAR(second_distance2[i].item<double>(), others[1].first, 1e-9 * (1 + others[1].first))
          << "member " << i;
    } else {
      EXPECT_EQ(second_slot[i].item<int64_t>(), -1) << "member " << i;
    }
    if (best_slot >= 0) {
      EXPECT_NEAR(nn_distance[i].item<double>(), std::sqrt(best), 1e-5) << "member " << i;
    }
    closest = std::min(closest, std::sqrt(best));
  }
  if (n >= 2) {
    EXPECT_NEAR(coreset.min_distance(), closest, 1e-5);
  } else {
    EXPECT_TRUE(std::isinf(coreset.min_distance()));
  }
}

SequentialCoresetOptions options_with(int64_t capacity, DistanceMode mode = DistanceMode::kMatmul) {
  SequentialCoresetOptions options;
  options.capacity = capacity;
  options.distance = mode;
  return options;
}

TEST(SequentialCoreset, BookkeepingIsExactAfterEveryChunk) {
  for (const DistanceMode mode : {DistanceMode::kMatmul, DistanceMode::kExact}) {
    at::manual_seed(0);
    SequentialCoresetOptions options = options_with(12, mode);
    options.chunk_size = 5;
    SequentialCoreset coreset(3, at::kFloat, options);
    double previous = 0.0;
    for (int chunk = 0; chunk < 20; ++chunk) {
      coreset.update(at::randn({9, 3}));
      expect_exact_bookkeeping(coreset);
      if (coreset.size() == coreset.capacity()) {
        EXPECT_GE(coreset.min_distance(), previous) << "d_m decreased at chunk " << chunk;
        previous = coreset.min_distance();
      }
    }
    EXPECT_EQ(coreset.seen(), 180);
    EXPECT_EQ(coreset.added() + coreset.duplicates() + coreset.replaced() + coreset.rejected(),
              180);
  }
}

TEST(SequentialCoreset, FillsWithoutDuplicates) {
  const at::Tensor x = at::tensor({1.0f, 1.0f, 2.0f, 1.0f, 3.0f}).view({5, 1});
  SequentialCoreset coreset(1, at::kFloat, options_with(10));
  coreset.update(x);
  EXPECT_EQ(coreset.size(), 3);
  EXPECT_EQ(coreset.duplicates(), 2);
  EXPECT_TRUE(at::equal(coreset.coreset().view({3}), at::tensor({1.0f, 2.0f, 3.0f})));
}

TEST(SequentialCoreset, ReplacesAnEndpointOfTheClosestPair) {
  // Members 0, 1, 10 (capacity 3): the closest pair is (0, 1) at distance 1. Member 0's
  // second-nearest is 10 and member 1's is 9, so member 1 (slot 1) leaves for 20.
  SequentialCoreset coreset(1, at::kFloat, options_with(3));
  coreset.update(at::tensor({0.0f, 1.0f, 10.0f, 20.0f}).view({4, 1}));
  EXPECT_TRUE(at::equal(coreset.coreset().view({3}), at::tensor({0.0f, 20.0f, 10.0f})));
  EXPECT_EQ(coreset.replaced(), 1);
  expect_exact_bookkeeping(coreset);
  // 15 is 5 from both 10 and 20, but d_m = 10 now: rejected.
  coreset.update(at::tensor({15.0f}).view({1, 1}));
  EXPECT_EQ(coreset.rejected(), 1);
}

TEST(SequentialCoreset, CapacityOneKeepsTheFirstFeature) {
  SequentialCoreset coreset(2, at::kFloat, options_with(1));
  coreset.update(at::tensor({3.0f, 4.0f, 100.0f, 100.0f}).view({2, 2}));
  EXPECT_TRUE(at::equal(coreset.coreset(), at::tensor({3.0f, 4.0f}).view({1, 2})));
  EXPECT_TRUE(std::isinf(coreset.min_distance()));
}

TEST(SequentialCoreset, EmptyUpdateChangesNothing) {
  SequentialCoreset coreset(4, at::kFloat, options_with(3));
  coreset.update(at::zeros({0, 4}));
  EXPECT_EQ(coreset.size(), 0);
  EXPECT_EQ(coreset.seen(), 0);
}

TEST(SequentialCoreset, RefusesBudgetsThatCannotFitBeforeAllocating) {
  SequentialCoresetOptions options = options_with(1000000);
  options.memory_budget_bytes = 1 << 20;
  try {
    SequentialCoreset coreset(128, at::kFloat, options);
    FAIL() << "expected the budget to be refused";
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    // The members alone take capacity * dim * 4 bytes.
    EXPECT_NE(message.find("needs"), std::string::npos) << message;
    EXPECT_NE(message.find("memory_budget_bytes = 1048576"), std::string::npos) << message;
  }
  options.capacity = 100;
  options.memory_budget_bytes = 4 << 20;
  const int64_t bytes = sequential_coreset_bytes(128, at::kFloat, options);
  EXPECT_LE(bytes, options.memory_budget_bytes);
  EXPECT_GE(bytes, 100 * 128 * 4);
  SequentialCoreset fits(128, at::kFloat, options);
  EXPECT_GT(fits.chunk_size(), 1);
}

TEST(SequentialCoreset, StateRoundTripResumesIdentically) {
  for (const int64_t projection : {int64_t{0}, int64_t{4}}) {
    at::manual_seed(1);
    const at::Tensor stream = at::randn({300, 6});
    SequentialCoresetOptions options = options_with(20);
    options.projection_dim = projection;
    options.seed = 3;
    SequentialCoreset whole(6, at::kFloat, options);
    whole.update(stream);

    SequentialCoreset first(6, at::kFloat, options);
    first.update(stream.narrow(0, 0, 130));
    SequentialCoreset resumed = SequentialCoreset::from_state(first.state());
    resumed.update(stream.narrow(0, 130, 170));
    EXPECT_TRUE(at::equal(whole.coreset(), resumed.coreset())) << "projection " << projection;
    EXPECT_EQ(whole.replaced(), resumed.replaced());
    expect_exact_bookkeeping(resumed);
  }
}

TEST(SequentialCoreset, ShrinkingKeepsExactBookkeeping) {
  at::manual_seed(2);
  SequentialCoreset coreset(2, at::kFloat, options_with(30));
  coreset.update(at::randint(0, 6, {200, 2}).to(at::kFloat));  // many ties
  coreset.set_capacity(11);
  EXPECT_EQ(coreset.size(), 11);
  expect_exact_bookkeeping(coreset);
  coreset.set_capacity(40);
  coreset.update(at::randn({50, 2}) * 10);
  expect_exact_bookkeeping(coreset);
}

TEST(SequentialCoreset, FromMembersKeepsEveryMember) {
  at::manual_seed(3);
  const at::Tensor members = at::randn({9, 4});
  SequentialCoreset coreset = SequentialCoreset::from_members(members, options_with(12));
  EXPECT_TRUE(at::equal(coreset.coreset(), members));
  expect_exact_bookkeeping(coreset);
}

TEST(SequentialCoreset, MeldStreamsTheMostNovelFirst) {
  SequentialCoreset base(1, at::kFloat, options_with(2));
  base.update(at::tensor({0.0f, 1.0f}).view({2, 1}));
  // Of 0.5, 50 and 10, streamed most novel first: 50 replaces an endpoint of (0, 1), then 10
  // (d_p = 10 > d_m = 50? no: d_m is now 49 or 50, so 10 is rejected).
  SequentialCoreset melded =
      meld_coresets(base, at::tensor({0.5f, 50.0f, 10.0f}).view({3, 1}), 0);
  EXPECT_EQ(melded.size(), 2);
  EXPECT_EQ(melded.replaced(), 1);
  EXPECT_EQ(melded.rejected(), 2);
  const at::Tensor sorted = std::get<0>(melded.coreset().view({2}).sort());
  EXPECT_TRUE(at::equal(sorted, at::tensor({0.0f, 50.0f})) ||
              at::equal(sorted, at::tensor({1.0f, 50.0f})));
}

TEST(SequentialCoreset, RejectsBadInput) {
  EXPECT_THROW(SequentialCoreset(0, at::kFloat, options_with(3)), c10::Error);
  EXPECT_THROW(SequentialCoreset(3, at::kInt, options_with(3)), c10::Error);
  EXPECT_THROW(SequentialCoreset(3, at::kFloat, options_with(0)), c10::Error);
  SequentialCoreset coreset(3, at::kFloat, options_with(3));
  EXPECT_THROW(coreset.update(at::randn({2, 4})), c10::Error);
  at::Tensor nan = at::randn({2, 3});
  nan[0][0] = std::nan("");
  EXPECT_THROW(coreset.update(nan), c10::Error);
}

}  // namespace
}  // namespace spc
