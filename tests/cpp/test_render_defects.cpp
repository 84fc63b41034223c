// Properties of the defect renderers.
#include <gtest/gtest.h>

#include <opencv2/imgproc.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "render/defects.h"

namespace spc::render {
namespace {

using Renderer = std::function<RenderResult(const cv::Mat&, uint64_t)>;

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
  return a.size() == b.size() && a.type() == b.type() &&
         std::memcmp(a.data, b.data, a.total() * a.elemSize()) == 0;
}

cv::Mat changed_pixels(const cv::Mat& before, const cv::Mat& after) {
  cv::Mat diff;
  cv::compare(before.reshape(1), after.reshape(1), diff, cv::CMP_NE);
  cv::Mat any;
  cv::reduce(diff.reshape(before.channels(), before.rows).reshape(1, before.total()), any, 1,
             cv::REDUCE_MAX);
  return any.reshape(1, before.rows);
}

std::vector<std::pair<std::string, Renderer>> renderers() {
  return {
      {"scratch", [](const cv::Mat& i, uint64_t s) { return render_scratch(i, {}, s); }},
      {"dent", [](const cv::Mat& i, uint64_t s) { return render_dent(i, {}, s); }},
      {"blowhole", [](const cv::Mat& i, uint64_t s) { return render_blowhole(i, {}, s); }},
      {"crack",
       [](const cv::Mat& i, uint64_t s) {
         CrackParams p;
         p.branch_probability = 0.2;
         return render_crack(i, p, s);
       }},
  };
}

TEST(RenderDefects, DeterministicSeededAndUntouchedOutsideTheMask) {
  for (const auto& [name, render] : renderers()) {
    for (int type : {CV_8UC1, CV_8UC3, CV_32FC1, CV_32FC3}) {
      const cv::Mat image = noisy_image(cv::Size(150, 120), type, 1);
      const RenderResult a = render(image, 3);
      const RenderResult b = render(image, 3);
      const RenderResult c = render(image, 4);
      EXPECT_TRUE(same_bytes(a.image, b.image)) << name;
      EXPECT_TRUE(same_bytes(a.mask, b.mask)) << name;
      EXPECT_FALSE(same_bytes(a.image, c.image)) << name;

      const cv::Mat changed = changed_pixels(image, a.image);
      EXPECT_EQ(cv::countNonZero(changed & ~a.mask), 0) << name << " " << cv::typeToString(type);
      const int masked = cv::countNonZero(a.mask);
      EXPECT_GT(masked, 10) << name;
      EXPECT_GT(cv::countNonZero(changed), 0.5 * masked) << name << " " << cv::typeToString(type);
    }
  }
}

TEST(RenderDefects, GivenCentreIsInTheMask) {
  const cv::Mat image(100, 100, CV_32FC1, cv::Scalar(0.5));
  ScratchParams scratch;
  scratch.center_x_px = 30;
  scratch.center_y_px = 60;
  scratch.curvature = 0.0;  // a straight scratch passes through its centre
  EXPECT_EQ(render_scratch(image, scratch, 1).mask.at<uint8_t>(60, 30), 255);
  BlowholeParams hole;
  hole.center_x_px = 70;
  hole.center_y_px = 20;
  const RenderResult pit = render_blowhole(image, hole, 1);
  EXPECT_EQ(pit.mask.at<uint8_t>(20, 70), 255);
  EXPECT_EQ(pit.centers.at(0), cv::Point2d(70, 20));
}

TEST(RenderDefects, BlowholeIsDarkInsideWithABrightRim) {
  const cv::Mat image(80, 80, CV_32FC1, cv::Scalar(0.5));
  BlowholeParams p;
  p.center_x_px = 40;
  p.center_y_px = 40;
  p.radius_px = 10;
  p.irregularity = 0.0;
  p.rim_width_px = 3;
  const RenderResult result = render_blowhole(image, p, 0);
  // Centre: I (1 - strength) at rho = 0 by the profile strength (0.75 + 0.25 (1 - rho^2)).
  EXPECT_NEAR(result.image.at<float>(40, 40), 0.5 * (1 - p.strength), 1e-3);
  // Middle of the rim, 11.5 px out: sin(pi / 2) = 1, so I (1 - rim_strength).
  const double rim = result.image.at<float>(40, static_cast<int>(40 + 11.5 - 0.5));
  EXPECT_NEAR(rim, 0.5 * (1 - p.rim_strength), 0.02);
  EXPECT_EQ(result.mask.at<uint8_t>(40, 40 + 14), 0);  // beyond the rim
}

TEST(RenderDefects, DentIsShadedAwayFromTheLight) {
  const cv::Mat image(101, 101, CV_32FC1, cv::Scalar(0.5));
  DentParams p;
  p.center_x_px = 50.5;
  p.center_y_px = 50.5;
  p.radius_px = 30;
  p.aspect = 1.0;
  p.light_azimuth_deg = 0.0;  // light from +x
  const RenderResult result = render_dent(image, p, 0);
  // The wall on the light's side faces away from it (darker), the far wall faces it.
  const float near_wall = result.image.at<float>(50, 50 + 17);
  const float far_wall = result.image.at<float>(50, 50 - 17);
  EXPECT_LT(near_wall, 0.5f);
  EXPECT_GT(far_wall, 0.5f);
  // Steepest point rho = 1 / sqrt(3) on the light axis: change = strength exactly.
  const double x = 50.5 + 30.0 / std::sqrt(3.0);
  const float steepest = result.image.at<float>(50, static_cast<int>(x));
  EXPECT_NEAR(steepest, 0.5 * (1 - p.strength), 0.01);
  // Across the light, the walls are not shaded.
  EXPECT_NEAR(result.image.at<float>(50 + 17, 50), 0.5f, 0.5 * p.strength * 0.05);
}

TEST(RenderDefects, ScratchAndCrackAreThinLines) {
  const cv::Mat image(200, 200, CV_8UC1, cv::Scalar(128));
  ScratchParams scratch;
  scratch.length_px = 80;
  scratch.width_px = 1.5;
  const RenderResult line = render_scratch(image, scratch, 2);
  const int area = cv::countNonZero(line.mask);
  // At most length x (width + 2 px of antialiasing), at least half the length.
  EXPECT_LT(area, 80 * 1.2 * (1.5 + 2));
  EXPECT_GT(area, 40);
  cv::Mat labels;
  EXPECT_EQ(cv::connectedComponents(line.mask, labels, 8), 2);  // background + one scratch

  CrackParams crack;
  crack.branch_probability = 0.0;
  const RenderResult straight = render_crack(image, crack, 5);
  EXPECT_EQ(cv::connectedComponents(straight.mask, labels, 8), 2);
  crack.branch_probability = 0.3;
  const RenderResult branched = render_crack(image, crack, 5);
  EXPECT_GT(cv::countNonZero(branched.mask), cv::countNonZero(straight.mask));
}

TEST(RenderDefects, BadInputsGiveClearErrors) {
  const cv::Mat image(50, 50, CV_8UC1, cv::Scalar(100));
  ScratchParams scratch;
  scratch.width_px = -1;
  try {
    render_scratch(image, scratch, 0);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "scratch.width_px must be > 0, got -1");
  }
  BlowholeParams hole;
  hole.center_x_px = 60;
  hole.center_y_px = 10;
  EXPECT_THROW(render_blowhole(image, hole, 0), std::invalid_argument);
  DentParams dent;
  dent.aspect = 0;
  EXPECT_THROW(render_dent(image, dent, 0), std::invalid_argument);
  CrackParams crack;
  crack.step_px = 0.1;
  EXPECT_THROW(render_crack(image, crack, 0), std::invalid_argument);
  EXPECT_THROW(render_crack(cv::Mat(4, 4, CV_64FC1), CrackParams(), 0), std::invalid_argument);
}

}  // namespace
}  // namespace spc::render
