// Properties of the renderer's random numbers and gradient noise.
#include <gtest/gtest.h>

#include <opencv2/core.hpp>

#include <cmath>
#include <vector>

#include "render/composite.h"
#include "render/noise.h"
#include "render/rng.h"

namespace spc::render {
namespace {

TEST(RenderRng, SameSeedSameStreamDifferentSeedDifferentStream) {
  Rng a(42);
  Rng b(42);
  Rng c(43);
  int differences = 0;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.next();
    EXPECT_EQ(x, b.next());
    differences += x != c.next();
  }
  EXPECT_EQ(differences, 100);
}

TEST(RenderRng, UniformAndNormalMoments) {
  Rng rng(7);
  const int n = 200000;
  double sum = 0.0, sum_normal = 0.0, sum_normal2 = 0.0;
  for (int i = 0; i < n; ++i) {
    const double u = rng.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    const double z = rng.normal();
    sum_normal += z;
    sum_normal2 += z * z;
  }
  // Standard errors: 1/sqrt(12 n) ~ 6.5e-4 for the uniform mean, 1/sqrt(n) ~ 2.2e-3 for the
  // normal mean and sqrt(2/n) ~ 3.2e-3 for its variance; allow five of them.
  EXPECT_NEAR(sum / n, 0.5, 5 * 6.5e-4);
  EXPECT_NEAR(sum_normal / n, 0.0, 5 * 2.2e-3);
  EXPECT_NEAR(sum_normal2 / n, 1.0, 5 * 3.2e-3);
}

TEST(RenderRng, BelowIsUniformOverItsRange) {
  Rng rng(3);
  const int bins = 7;
  const int n = 70000;
  std::vector<int> count(bins, 0);
  for (int i = 0; i < n; ++i) {
    const uint64_t k = rng.below(bins);
    ASSERT_LT(k, static_cast<uint64_t>(bins));
    ++count[k];
  }
  // Chi-square with 6 degrees of freedom: P(> 22.5) < 0.001.
  double chi2 = 0.0;
  for (int c : count) {
    chi2 += (c - n / bins) * (c - n / bins) / static_cast<double>(n / bins);
  }
  EXPECT_LT(chi2, 22.5);
}

TEST(RenderNoise, QuinticFadeHasFlatEnds) {
  EXPECT_DOUBLE_EQ(quintic_fade(0.0), 0.0);
  EXPECT_DOUBLE_EQ(quintic_fade(1.0), 1.0);
  EXPECT_DOUBLE_EQ(quintic_fade(0.5), 0.5);
  const double h = 1e-4;
  // f'(t) = 30 t^2 (t - 1)^2 and f''(t) = 60 t (t - 1)(2t - 1) vanish at both ends.
  EXPECT_NEAR((quintic_fade(h) - quintic_fade(0.0)) / h, 0.0, 1e-6);
  EXPECT_NEAR((quintic_fade(1.0) - quintic_fade(1.0 - h)) / h, 0.0, 1e-6);
  EXPECT_NEAR(quintic_fade(0.3) - quintic_fade(0.2),
              // integral of 30 t^2 (t - 1)^2 from 0.2 to 0.3, by hand: 6t^5 - 15t^4 + 10t^3
              (6 * std::pow(0.3, 5) - 15 * std::pow(0.3, 4) + 10 * std::pow(0.3, 3)) -
                  (6 * std::pow(0.2, 5) - 15 * std::pow(0.2, 4) + 10 * std::pow(0.2, 3)),
              1e-12);
}

TEST(RenderNoise, GradientNoiseIsZeroOnTheLatticeAndBounded) {
  const GradientNoise2D noise(11);
  for (int x = -5; x <= 5; ++x) {
    for (int y = -5; y <= 5; ++y) {
      EXPECT_DOUBLE_EQ(noise(x, y), 0.0);
    }
  }
  Rng rng(1);
  double largest = 0.0;
  for (int i = 0; i < 20000; ++i) {
    largest = std::max(largest, std::abs(noise(rng.uniform(-50, 50), rng.uniform(-50, 50))));
  }
  EXPECT_LE(largest, 1.0);
  EXPECT_GT(largest, 0.3);  // not degenerate
}

TEST(RenderNoise, GradientNoiseIsContinuousAndSeeded) {
  const GradientNoise2D a(5);
  const GradientNoise2D b(5);
  const GradientNoise2D c(6);
  Rng rng(2);
  int differences = 0;
  for (int i = 0; i < 1000; ++i) {
    const double x = rng.uniform(-20, 20);
    const double y = rng.uniform(-20, 20);
    EXPECT_EQ(a(x, y), b(x, y));
    differences += a(x, y) != c(x, y);
    // The gradient of the scaled noise is bounded (a few units per lattice cell), so a step
    // of 1e-6 moves it by far less than 1e-4.
    EXPECT_NEAR(a(x, y), a(x + 1e-6, y - 1e-6), 1e-4);
  }
  EXPECT_GT(differences, 990);
}

TEST(RenderNoise, FbmIsBoundedAndHasFinerDetailThanOneOctave) {
  const Fbm2D one(9, 1);
  const Fbm2D four(9, 4);
  Rng rng(4);
  double rough_one = 0.0, rough_four = 0.0, power_one = 0.0, power_four = 0.0;
  for (int i = 0; i < 20000; ++i) {
    const double x = rng.uniform(0, 100);
    const double y = rng.uniform(0, 100);
    ASSERT_LE(std::abs(four(x, y)), 1.0);
    rough_one += std::abs(one(x + 0.05, y) - one(x, y));
    rough_four += std::abs(four(x + 0.05, y) - four(x, y));
    power_one += one(x, y) * one(x, y);
    power_four += four(x, y) * four(x, y);
  }
  // Relative to its own amplitude, a sum of octaves with gain 1/2 changes faster over a short
  // step: each octave adds as much slope as the first, but only a fraction of the amplitude
  // (slope ~ sqrt(4) vs amplitude ~ sqrt(1 + 1/4 + 1/16 + 1/64), a ratio of ~1.75).
  const double relative_one = rough_one / std::sqrt(power_one);
  const double relative_four = rough_four / std::sqrt(power_four);
  EXPECT_GT(relative_four, 1.3 * relative_one);
}

TEST(RenderNoise, PeriodicFbmClosesOnItself) {
  const PeriodicFbm1D outline(13, 5, 3);
  for (double t = 0.0; t < 1.0; t += 0.0137) {
    // Equal up to the rounding of t + 1 - floor(t + 1).
    EXPECT_NEAR(outline(t), outline(t + 1.0), 1e-12);
    EXPECT_LE(std::abs(outline(t)), 1.0);
  }
  // Continuity across the seam t = 1 -> 0.
  EXPECT_NEAR(outline(1.0 - 1e-9), outline(0.0), 1e-6);
  // Not constant: it has to make the outline irregular.
  double lo = 1.0, hi = -1.0;
  for (int i = 0; i < 1000; ++i) {
    lo = std::min(lo, outline(i / 1000.0));
    hi = std::max(hi, outline(i / 1000.0));
  }
  EXPECT_GT(hi - lo, 0.3);
}

TEST(RenderNoise, FieldDoesNotDependOnThreadCount) {
  const Fbm2D fbm(21, 3);
  const cv::Matx23d frame(0.1, 0.0, 0.0, 0.0, 0.1, 0.0);
  const int threads = cv::getNumThreads();
  cv::setNumThreads(1);
  const cv::Mat serial = render_fbm(cv::Size(97, 61), fbm, frame);
  cv::setNumThreads(threads);
  const cv::Mat parallel = render_fbm(cv::Size(97, 61), fbm, frame);
  EXPECT_EQ(cv::norm(serial, parallel, cv::NORM_INF), 0.0);
  // And each pixel is fbm at its centre.
  EXPECT_FLOAT_EQ(serial.at<float>(10, 20), static_cast<float>(fbm(2.05, 1.05)));
}

TEST(RenderJitter, OneCentrePerChosenCell) {
  for (const cv::Size size : {cv::Size(640, 480), cv::Size(100, 700), cv::Size(333, 333)}) {
    for (int count : {1, 2, 5, 12, 30}) {
      for (uint64_t seed = 0; seed < 5; ++seed) {
        const JitteredGrid grid = jittered_centers(size, count, 1.0, seed, "count");
        ASSERT_EQ(static_cast<int>(grid.centers.size()), count);
        ASSERT_GE(grid.cols * grid.rows, count);
        // The cell of each centre, from its coordinates and the grid's cell size.
        std::vector<int> seen(static_cast<size_t>(grid.cols * grid.rows), 0);
        for (size_t i = 0; i < grid.centers.size(); ++i) {
          const cv::Point2d p = grid.centers[i];
          ASSERT_GE(p.x, 0.0);
          ASSERT_LT(p.x, size.width);
          ASSERT_GE(p.y, 0.0);
          ASSERT_LT(p.y, size.height);
          const int col = static_cast<int>(p.x * grid.cols / size.width);
          const int row = static_cast<int>(p.y * grid.rows / size.height);
          const int cell = row * grid.cols + col;
          EXPECT_EQ(cell, grid.cells[i]);
          EXPECT_EQ(++seen[static_cast<size_t>(cell)], 1) << "two centres in cell " << cell;
        }
      }
    }
  }
}

TEST(RenderJitter, CentresAreUniformWithinTheirCells) {
  // Over many seeds the offset of a centre inside its cell is uniform: mean 1/2, variance 1/12.
  const cv::Size size(400, 300);
  double sum = 0.0, sum2 = 0.0;
  int n = 0;
  for (uint64_t seed = 0; seed < 400; ++seed) {
    const JitteredGrid grid = jittered_centers(size, 6, 1.0, seed, "count");
    for (const auto& p : grid.centers) {
      const double fx = p.x / grid.cell_width - std::floor(p.x / grid.cell_width);
      sum += fx;
      sum2 += fx * fx;
      ++n;
    }
  }
  EXPECT_NEAR(sum / n, 0.5, 0.02);
  EXPECT_NEAR(sum2 / n - (sum / n) * (sum / n), 1.0 / 12.0, 0.01);
}

TEST(RenderJitter, CountThatCannotFitIsAnError) {
  try {
    jittered_centers(cv::Size(64, 64), 500, 10.0, 0, "stain.count");
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("stain.count = 500 cannot fit"), std::string::npos)
        << error.what();
  }
  EXPECT_THROW(jittered_centers(cv::Size(64, 64), -1, 1.0, 0, "stain.count"),
               std::invalid_argument);
  EXPECT_TRUE(jittered_centers(cv::Size(64, 64), 0, 1.0, 0, "stain.count").centers.empty());
}

}  // namespace
}  // namespace spc::render
