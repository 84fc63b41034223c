// Properties of the impurity renderers: determinism, untouched pixels, masks, the stain's
// profile and outline, and errors.
#include <gtest/gtest.h>

#include <opencv2/imgproc.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "render/impurities.h"

namespace spc::render {
namespace {

using Renderer = std::function<RenderResult(const cv::Mat&, uint64_t)>;

// A noisy image of the given type, so that any change to a pixel is visible.
cv::Mat noisy_image(cv::Size size, int type, uint64_t seed) {
  cv::Mat image(size, type);
  cv::RNG rng(seed);
  if (CV_MAT_DEPTH(type) == CV_8U) {
    rng.fill(image, cv::RNG::UNIFORM, 40, 220);
  } else {
    rng.fill(image, cv::RNG::UNIFORM, 0.15, 0.85);
  }
  return image;
}

bool same_bytes(const cv::Mat& a, const cv::Mat& b) {
  if (a.size() != b.size() || a.type() != b.type()) {
    return false;
  }
  for (int y = 0; y < a.rows; ++y) {
    if (std::memcmp(a.ptr(y), b.ptr(y), a.cols * a.elemSize()) != 0) {
      return false;
    }
  }
  return true;
}

// Pixels where any channel differs, as a CV_8UC1 mask of 0/255.
cv::Mat changed_pixels(const cv::Mat& before, const cv::Mat& after) {
  cv::Mat diff;
  cv::compare(before, after, diff, cv::CMP_NE);
  if (diff.channels() > 1) {
    std::vector<cv::Mat> planes;
    cv::split(diff, planes);
    cv::Mat any = planes[0];
    for (size_t c = 1; c < planes.size(); ++c) {
      any |= planes[c];
    }
    return any;
  }
  return diff;
}

std::vector<std::pair<std::string, Renderer>> renderers() {
  return {
      {"water_stains",
       [](const cv::Mat& image, uint64_t seed) {
         WaterStainParams p;
         p.count = 3;
         p.radius_px = 20;
         return render_water_stains(image, p, seed);
       }},
      {"fingerprints",
       [](const cv::Mat& image, uint64_t seed) {
         FingerprintParams p;
         p.count = 2;
         p.size_px = 25;
         return render_fingerprints(image, p, seed);
       }},
      {"dust",
       [](const cv::Mat& image, uint64_t seed) {
         DustParams p;
         p.count = 40;
         p.fibre_fraction = 0.3;
         return render_dust(image, p, seed);
       }},
  };
}

const std::vector<int> kTypes{CV_8UC1, CV_8UC3, CV_32FC1, CV_32FC3};

TEST(RenderImpurities, SameSeedSameBytesDifferentSeedDifferentImage) {
  for (const auto& [name, render] : renderers()) {
    for (int type : kTypes) {
      const cv::Mat image = noisy_image(cv::Size(120, 90), type, 1);
      const RenderResult a = render(image, 5);
      const RenderResult b = render(image, 5);
      const RenderResult c = render(image, 6);
      EXPECT_TRUE(same_bytes(a.image, b.image)) << name << " " << cv::typeToString(type);
      EXPECT_TRUE(same_bytes(a.mask, b.mask)) << name;
      EXPECT_FALSE(same_bytes(a.image, c.image)) << name << " " << cv::typeToString(type);
      EXPECT_FALSE(same_bytes(a.mask, c.mask)) << name;
    }
  }
}

TEST(RenderImpurities, OutsideTheMaskNothingChangesAndTheMaskCoversTheChange) {
  for (const auto& [name, render] : renderers()) {
    for (int type : kTypes) {
      for (uint64_t seed : {0, 1, 2}) {
        const cv::Mat image = noisy_image(cv::Size(131, 97), type, seed + 10);
        const RenderResult result = render(image, seed);
        ASSERT_EQ(result.image.type(), image.type());
        ASSERT_EQ(result.image.size(), image.size());
        ASSERT_EQ(result.mask.type(), CV_8UC1);
        ASSERT_EQ(result.mask.size(), image.size());

        // Every changed pixel is in the mask: the input is untouched outside it.
        const cv::Mat changed = changed_pixels(image, result.image);
        const cv::Mat outside = changed & ~result.mask;
        EXPECT_EQ(cv::countNonZero(outside), 0) << name << " " << cv::typeToString(type);

        // The mask is 0 or 255 and not much larger than the change: most masked pixels moved.
        cv::Mat binary = (result.mask == 0) | (result.mask == 255);
        EXPECT_EQ(cv::countNonZero(binary), image.total());
        const int masked = cv::countNonZero(result.mask);
        ASSERT_GT(masked, 0) << name;
        // (A fingerprint's mask is its whole patch, valleys between ridges included.)
        EXPECT_GT(cv::countNonZero(changed), 0.25 * masked)
            << name << " " << cv::typeToString(type);
      }
    }
  }
}

TEST(RenderImpurities, ColourChannelsGetTheSameFactor) {
  const cv::Mat grey = noisy_image(cv::Size(80, 80), CV_32FC1, 3);
  cv::Mat colour;
  cv::merge(std::vector<cv::Mat>{grey, grey, grey}, colour);
  for (const auto& [name, render] : renderers()) {
    const RenderResult g = render(grey, 4);
    const RenderResult c = render(colour, 4);
    std::vector<cv::Mat> planes;
    cv::split(c.image, planes);
    for (const auto& plane : planes) {
      EXPECT_TRUE(same_bytes(plane, g.image)) << name;
    }
    EXPECT_TRUE(same_bytes(c.mask, g.mask)) << name;
  }
}

TEST(RenderImpurities, AnySizeIncludingTinyAndEmptyCounts) {
  for (const cv::Size size : {cv::Size(1, 1), cv::Size(3, 500), cv::Size(777, 5)}) {
    const cv::Mat image = noisy_image(size, CV_8UC1, 0);
    WaterStainParams stain;
    stain.count = 0;
    const RenderResult none = render_water_stains(image, stain, 0);
    EXPECT_TRUE(same_bytes(none.image, image));
    EXPECT_EQ(cv::countNonZero(none.mask), 0);
    stain.count = 1;
    stain.radius_px = 0.5;
    const RenderResult one = render_water_stains(image, stain, 0);
    EXPECT_EQ(cv::countNonZero(changed_pixels(image, one.image) & ~one.mask), 0);
    DustParams dust;
    dust.count = 1;
    const RenderResult speck = render_dust(image, dust, 0);
    EXPECT_EQ(cv::countNonZero(changed_pixels(image, speck.image) & ~speck.mask), 0);
  }
}

// A single circular stain without noise, rim or soft edge has a closed form:
// I' = I (1 - s exp(-k d / R)) for d < R. This checks the profile against it pixel by pixel.
TEST(RenderWaterStain, ProfileMatchesTheClosedForm) {
  const cv::Mat image(101, 121, CV_32FC1, cv::Scalar(0.8));
  WaterStainParams p;
  p.count = 1;
  p.radius_px = 30;
  p.radius_jitter = 0.0;
  p.elongation = 0.0;
  p.outline_amplitude = 0.0;
  p.strength = 0.4;
  p.falloff = 2.0;
  p.strength_variation = 0.0;
  p.rim_strength = 0.0;
  p.edge_softness = 0.0;
  const RenderResult result = render_water_stains(image, p, 17);
  const cv::Point2d c = result.centers.at(0);

  int inside = 0;
  for (int y = 0; y < image.rows; ++y) {
    for (int x = 0; x < image.cols; ++x) {
      const double d = std::hypot(x + 0.5 - c.x, y + 0.5 - c.y);
      const float out = result.image.at<float>(y, x);
      if (d < p.radius_px - 1e-6) {
        const double expected = 0.8 * (1.0 - 0.4 * std::exp(-2.0 * d / p.radius_px));
        EXPECT_NEAR(out, expected, 1e-5) << "at " << x << ", " << y;
        EXPECT_EQ(result.mask.at<uint8_t>(y, x), 255);
        ++inside;
      } else if (d > p.radius_px + 1e-6) {
        EXPECT_EQ(out, 0.8f);
        EXPECT_EQ(result.mask.at<uint8_t>(y, x), 0);
      }
    }
  }
  EXPECT_GT(inside, 1000);
}

// Mean relative change 1 - I'/I in rings of normalised distance from the centre.
std::vector<double> ring_profile(const RenderResult& result, const cv::Mat& image,
                                 double radius, int rings) {
  std::vector<double> sum(static_cast<size_t>(rings), 0.0);
  std::vector<int> count(static_cast<size_t>(rings), 0);
  const cv::Point2d c = result.centers.at(0);
  for (int y = 0; y < image.rows; ++y) {
    for (int x = 0; x < image.cols; ++x) {
      const double rho = std::hypot(x + 0.5 - c.x, y + 0.5 - c.y) / radius;
      const auto ring = static_cast<int>(rho * rings);
      if (ring < rings) {
        sum[ring] += 1.0 - result.image.at<float>(y, x) / image.at<float>(y, x);
        ++count[ring];
      }
    }
  }
  for (int i = 0; i < rings; ++i) {
    sum[i] /= std::max(1, count[i]);
  }
  return sum;
}

TEST(RenderWaterStain, BrightnessMovesInTheConfiguredDirectionAndFallsOffFromTheCentre) {
  const cv::Mat image(161, 161, CV_32FC1, cv::Scalar(0.5));
  for (double strength : {0.3, -0.3}) {
    WaterStainParams p;
    p.count = 1;
    p.radius_px = 60;
    p.radius_jitter = 0.0;
    p.strength = strength;
    p.rim_strength = 0.0;
    p.falloff = 2.0;
    p.strength_variation = 0.0;  // its noise would blur the ring means near the centre
    const RenderResult result = render_water_stains(image, p, 3);

    // Direction: every masked pixel moves the configured way (rim off).
    for (int y = 0; y < image.rows; ++y) {
      for (int x = 0; x < image.cols; ++x) {
        if (result.mask.at<uint8_t>(y, x)) {
          const float out = result.image.at<float>(y, x);
          if (strength > 0) {
            EXPECT_LE(out, 0.5f);
          } else {
            EXPECT_GE(out, 0.5f);
          }
        }
      }
    }

    // Fall-off: the mean change shrinks ring by ring inside the outline's inner radius
    // R (1 - A) = 45 px, i.e. rho < 0.75 of R = 60.
    const std::vector<double> profile = ring_profile(result, image, 45.0, 6);
    for (size_t i = 1; i < profile.size(); ++i) {
      EXPECT_LT(std::abs(profile[i]), std::abs(profile[i - 1])) << "ring " << i;
    }
    EXPECT_GT(std::abs(profile[0]), 0.15);
  }
}

// With a circular outline rho = d / R is known, so the strength's variation can be read off:
// q = (1 - I'/I) / (s exp(-k rho)) - 1 = strength_variation * N(x, y).
TEST(RenderWaterStain, StrengthVariesSmoothlyWithinItsBound) {
  const cv::Mat image(161, 161, CV_32FC1, cv::Scalar(0.5));
  WaterStainParams p;
  p.count = 1;
  p.radius_px = 70;
  p.radius_jitter = 0.0;
  p.elongation = 0.0;
  p.outline_amplitude = 0.0;
  p.rim_strength = 0.0;
  p.edge_softness = 0.0;
  p.strength = 0.3;
  p.falloff = 1.0;
  p.strength_variation = 0.5;
  p.variation_scale = 0.5;
  const RenderResult result = render_water_stains(image, p, 8);
  const cv::Point2d c = result.centers.at(0);

  cv::Mat q(image.size(), CV_64FC1, cv::Scalar(0.0));
  cv::Mat valid(image.size(), CV_8UC1, cv::Scalar(0));
  for (int y = 0; y < image.rows; ++y) {
    for (int x = 0; x < image.cols; ++x) {
      const double rho = std::hypot(x + 0.5 - c.x, y + 0.5 - c.y) / p.radius_px;
      if (rho < 0.98) {
        const double change = 1.0 - result.image.at<float>(y, x) / 0.5;
        q.at<double>(y, x) = change / (p.strength * std::exp(-p.falloff * rho)) - 1.0;
        valid.at<uint8_t>(y, x) = 255;
      }
    }
  }
  double lo = 0.0, hi = 0.0, step = 0.0;
  int steps = 0;
  for (int y = 0; y < image.rows; ++y) {
    for (int x = 0; x + 1 < image.cols; ++x) {
      if (valid.at<uint8_t>(y, x) && valid.at<uint8_t>(y, x + 1)) {
        lo = std::min(lo, q.at<double>(y, x));
        hi = std::max(hi, q.at<double>(y, x));
        step += std::abs(q.at<double>(y, x + 1) - q.at<double>(y, x));
        ++steps;
      }
    }
  }
  ASSERT_GT(steps, 1000);
  EXPECT_GE(lo, -0.5 - 1e-4);
  EXPECT_LE(hi, 0.5 + 1e-4);
  EXPECT_GT(hi - lo, 0.2);            // it varies ...
  EXPECT_LT(step / steps, 0.02);      // ... slowly from pixel to pixel
}

TEST(RenderWaterStain, RimIsDarkerThanTheInsideNextToIt) {
  const cv::Mat image(161, 161, CV_32FC1, cv::Scalar(0.5));
  WaterStainParams p;
  p.count = 1;
  p.radius_px = 60;
  p.radius_jitter = 0.0;
  p.outline_amplitude = 0.0;
  p.elongation = 0.0;
  p.strength = 0.1;
  p.strength_variation = 0.0;
  p.rim_strength = 0.3;
  p.rim_width = 0.1;
  p.edge_softness = 0.05;
  const RenderResult result = render_water_stains(image, p, 3);
  // Rings of width 0.05 R: the rim peaks at rho = 0.9, above the inside at rho = 0.7.
  const std::vector<double> profile = ring_profile(result, image, 60.0, 20);
  EXPECT_GT(profile[18], profile[14] + 0.1);
}

// Distances from the centre to the outline (the mask's outer contour).
std::vector<double> outline_distances(const RenderResult& result, int& contours, int& holes) {
  std::vector<std::vector<cv::Point>> found;
  std::vector<cv::Vec4i> hierarchy;
  cv::findContours(result.mask.clone(), found, hierarchy, cv::RETR_CCOMP,
                   cv::CHAIN_APPROX_NONE);
  contours = 0;
  holes = 0;
  for (const auto& h : hierarchy) {
    (h[3] < 0 ? contours : holes) += 1;
  }
  std::vector<double> distances;
  const cv::Point2d c = result.centers.at(0);
  for (const auto& p : found.at(0)) {
    distances.push_back(std::hypot(p.x + 0.5 - c.x, p.y + 0.5 - c.y));
  }
  return distances;
}

double relative_spread(const std::vector<double>& values) {
  double lo = 1e300, hi = 0.0, sum = 0.0;
  for (double v : values) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    sum += v;
  }
  return (hi - lo) / (sum / values.size());
}

TEST(RenderWaterStain, OutlineIsClosedAndIrregular) {
  // One stain on a large canvas: its centre is uniform over the image, and most draws keep
  // it clear of the border, which would cut its contour open.
  const cv::Mat canvas(1000, 1000, CV_8UC1, cv::Scalar(128));
  int checked = 0;
  for (uint64_t seed = 0; seed < 10; ++seed) {
    WaterStainParams p;
    p.count = 1;
    p.radius_px = 50;
    p.elongation = 0.0;
    p.outline_amplitude = 0.3;
    const RenderResult result = render_water_stains(canvas, p, seed);
    const cv::Point2d c = result.centers.at(0);
    if (c.x < 70 || c.y < 70 || c.x > 930 || c.y > 930) {
      continue;
    }
    ++checked;
    int contours = 0;
    int holes = 0;
    const std::vector<double> distances = outline_distances(result, contours, holes);
    EXPECT_EQ(contours, 1) << "seed " << seed;  // one closed outline
    EXPECT_EQ(holes, 0) << "seed " << seed;     // nothing missing inside
    EXPECT_GT(relative_spread(distances), 0.2) << "seed " << seed;
  }
  EXPECT_GE(checked, 5);

  // Control: without outline noise and elongation the outline is a circle up to pixels.
  WaterStainParams circle;
  circle.count = 1;
  circle.radius_px = 50;
  circle.elongation = 0.0;
  circle.outline_amplitude = 0.0;
  const cv::Mat big(1000, 1000, CV_8UC1, cv::Scalar(128));
  const RenderResult round = render_water_stains(big, circle, 1);
  int contours = 0;
  int holes = 0;
  EXPECT_LT(relative_spread(outline_distances(round, contours, holes)), 0.05);
}

TEST(RenderWaterStain, CentresFallOnePerJitteredCell) {
  const cv::Mat image(300, 400, CV_8UC1, cv::Scalar(128));
  WaterStainParams p;
  p.count = 6;
  p.radius_px = 20;
  for (uint64_t seed = 0; seed < 10; ++seed) {
    const RenderResult result = render_water_stains(image, p, seed);
    ASSERT_EQ(result.centers.size(), 6u);
    // 6 stains in a 4:3 image: a 3x2 grid (columns = round(sqrt(6 * 4 / 3)) = 3).
    std::vector<int> seen(6, 0);
    for (const auto& c : result.centers) {
      const int cell = static_cast<int>(c.y / 150.0) * 3 + static_cast<int>(c.x / (400.0 / 3));
      EXPECT_EQ(++seen[static_cast<size_t>(cell)], 1);
    }
  }
}

void expect_error(const std::function<void()>& call, const std::string& message) {
  try {
    call();
    ADD_FAILURE() << "expected std::invalid_argument containing: " << message;
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find(message), std::string::npos)
        << "got: " << error.what();
  }
}

TEST(RenderImpurities, BadInputsGiveClearErrors) {
  const cv::Mat image(64, 64, CV_8UC1, cv::Scalar(100));
  WaterStainParams stain;
  stain.radius_px = 0;
  expect_error([&] { render_water_stains(image, stain, 0); },
               "stain.radius_px must be > 0, got 0");
  stain = WaterStainParams();
  stain.outline_amplitude = -0.1;
  expect_error([&] { render_water_stains(image, stain, 0); }, "stain.outline_amplitude");
  stain = WaterStainParams();
  stain.count = 50;
  expect_error([&] { render_water_stains(image, stain, 0); }, "stain.count = 50 cannot fit");
  stain = WaterStainParams();
  stain.count = -1;
  expect_error([&] { render_water_stains(image, stain, 0); }, "stain.count must be >= 0");
  stain = WaterStainParams();
  stain.strength = std::nan("");
  expect_error([&] { render_water_stains(image, stain, 0); }, "stain.strength");

  FingerprintParams print;
  print.ridge_period_px = 1.0;
  expect_error([&] { render_fingerprints(image, print, 0); }, "fingerprint.ridge_period_px");
  DustParams dust;
  dust.radius_max_px = 0.1;
  expect_error([&] { render_dust(image, dust, 0); }, "dust.radius_max_px");
  dust = DustParams();
  dust.count = 64 * 64 + 1;
  expect_error([&] { render_dust(image, dust, 0); }, "cannot fit");

  expect_error([&] { render_water_stains(cv::Mat(), WaterStainParams(), 0); },
               "image must not be empty");
  expect_error([&] { render_water_stains(cv::Mat(8, 8, CV_16UC1), WaterStainParams(), 0); },
               "got CV_16UC1");
}

}  // namespace
}  // namespace spc::render
