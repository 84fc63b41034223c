// Properties of the procedural and calibrated surfaces.
#include <gtest/gtest.h>

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "render/surface.h"

namespace spc::render {
namespace {

bool same_bytes(const cv::Mat& a, const cv::Mat& b) {
  return a.size() == b.size() && a.type() == b.type() && a.isContinuous() &&
         b.isContinuous() && std::memcmp(a.data, b.data, a.total() * a.elemSize()) == 0;
}

const std::vector<SurfaceFamily> kFamilies{SurfaceFamily::kBrushed, SurfaceFamily::kMilled,
                                           SurfaceFamily::kSandblasted};

TEST(RenderSurface, FamiliesAreDeterministicAndSeeded) {
  for (SurfaceFamily family : kFamilies) {
    const SurfaceParams p;
    const cv::Mat a = render_surface(family, p, cv::Size(90, 70), CV_8UC1, 1);
    const cv::Mat b = render_surface(family, p, cv::Size(90, 70), CV_8UC1, 1);
    const cv::Mat c = render_surface(family, p, cv::Size(90, 70), CV_8UC1, 2);
    EXPECT_TRUE(same_bytes(a, b)) << surface_family_name(family);
    EXPECT_FALSE(same_bytes(a, c)) << surface_family_name(family);
  }
}

TEST(RenderSurface, TypesSizesAndMeanLevel) {
  for (SurfaceFamily family : kFamilies) {
    SurfaceParams p;
    p.mean = 0.5;
    p.light_gradient = 0.0;
    p.vignette = 0.0;
    const cv::Mat grey = render_surface(family, p, cv::Size(128, 96), CV_32FC1, 3);
    ASSERT_EQ(grey.type(), CV_32FC1);
    ASSERT_EQ(grey.size(), cv::Size(128, 96));
    double lo = 0.0, hi = 0.0;
    cv::minMaxLoc(grey, &lo, &hi);
    EXPECT_GE(lo, 0.0);
    EXPECT_LE(hi, 1.0);
    // Lambertian shading of a gentle relief and a zero-mean albedo keep the mean near `mean`.
    EXPECT_NEAR(cv::mean(grey)[0], 0.5, 0.08) << surface_family_name(family);
    cv::Scalar mean, std_dev;
    cv::meanStdDev(grey, mean, std_dev);
    EXPECT_GT(std_dev[0], 0.005) << "a surface has texture";

    // 8-bit is the float image scaled to 255 and rounded; colour replicates grey.
    const cv::Mat bytes = render_surface(family, p, cv::Size(128, 96), CV_8UC1, 3);
    cv::Mat expected;
    grey.convertTo(expected, CV_8U, 255.0);
    EXPECT_LE(cv::norm(bytes, expected, cv::NORM_INF), 1.0);
    const cv::Mat colour = render_surface(family, p, cv::Size(128, 96), CV_8UC3, 3);
    std::vector<cv::Mat> planes;
    cv::split(colour, planes);
    for (const auto& plane : planes) {
      EXPECT_TRUE(same_bytes(plane, bytes));
    }
  }
}

TEST(RenderSurface, BrushedStreaksRunAlongTheLay) {
  // Vertical lay: neighbours along y are more alike than neighbours along x.
  SurfaceParams p;
  p.direction_deg = 90.0;
  p.noise_std = 0.0;
  const cv::Mat grey = render_surface(SurfaceFamily::kBrushed, p, cv::Size(200, 200), CV_32FC1, 4);
  double along = 0.0, across = 0.0;
  for (int y = 0; y + 1 < grey.rows; ++y) {
    for (int x = 0; x + 1 < grey.cols; ++x) {
      along += std::abs(grey.at<float>(y + 1, x) - grey.at<float>(y, x));
      across += std::abs(grey.at<float>(y, x + 1) - grey.at<float>(y, x));
    }
  }
  EXPECT_GT(across, 2.0 * along);
}

TEST(RenderSurface, BadParametersAreErrors) {
  SurfaceParams p;
  p.light_elevation_deg = 0.0;
  EXPECT_THROW(render_surface(SurfaceFamily::kBrushed, p, cv::Size(8, 8), CV_8UC1, 0),
               std::invalid_argument);
  EXPECT_THROW(render_surface(SurfaceFamily::kBrushed, SurfaceParams(), cv::Size(0, 8), CV_8UC1,
                              0),
               std::invalid_argument);
  EXPECT_THROW(render_surface(SurfaceFamily::kBrushed, SurfaceParams(), cv::Size(8, 8),
                              CV_16UC1, 0),
               std::invalid_argument);
  EXPECT_THROW(parse_surface_family("polished"), std::invalid_argument);
}

// Mean amplitude in rings of integer radius around the centre of a centred spectrum.
std::vector<double> radial_mean(const cv::Mat& centred) {
  const int n = centred.rows;
  std::vector<double> sum(static_cast<size_t>(n / 2), 0.0);
  std::vector<int> count(static_cast<size_t>(n / 2), 0);
  for (int y = 0; y < n; ++y) {
    for (int x = 0; x < n; ++x) {
      const auto r = static_cast<size_t>(std::hypot(y - n / 2, x - n / 2));
      if (r < sum.size()) {
        sum[r] += centred.at<float>(y, x);
        ++count[r];
      }
    }
  }
  for (size_t r = 0; r < sum.size(); ++r) {
    sum[r] /= std::max(1, count[r]);
  }
  return sum;
}

// Gaussian noise shaped to an amplitude spectrum |f|^-beta by our own (test-side) filter.
cv::Mat power_law_image(int n, double beta, uint64_t seed) {
  cv::Mat noise(n, n, CV_32FC1);
  cv::RNG rng(seed);
  rng.fill(noise, cv::RNG::NORMAL, 0.0, 1.0);
  cv::Mat spectrum;
  cv::dft(noise, spectrum, cv::DFT_COMPLEX_OUTPUT);
  for (int y = 0; y < n; ++y) {
    for (int x = 0; x < n; ++x) {
      const int ky = y <= n / 2 ? y : y - n;
      const int kx = x <= n / 2 ? x : x - n;
      const double f = std::hypot(ky, kx);
      const double gain = f > 0 ? std::pow(f, -beta) : 0.0;
      spectrum.at<cv::Vec2f>(y, x) *= static_cast<float>(gain);
    }
  }
  cv::Mat image;
  cv::dft(spectrum, image, cv::DFT_INVERSE | cv::DFT_REAL_OUTPUT | cv::DFT_SCALE);
  cv::normalize(image, image, 40.0, 200.0, cv::NORM_MINMAX);
  return image;
}

TEST(RenderCalibratedSurface, FitRecoversTheSlopeOfAPowerLawSpectrum) {
  for (double beta : {0.0, 1.0, 2.0}) {
    std::vector<cv::Mat> images;
    for (uint64_t i = 0; i < 6; ++i) {
      images.push_back(power_law_image(128, beta, 100 + i));
    }
    SurfaceFitParams fit;
    fit.work_size = 128;
    const SurfaceModel model = fit_surface_model(images, fit, 0);
    // The Hann window leaks power from low to high frequencies, flattening steep spectra a
    // little; 0.3 is well inside the gaps between the three cases.
    EXPECT_NEAR(model.slope, beta, 0.3) << "beta " << beta;
  }
}

TEST(RenderCalibratedSurface, RenderingMatchesTheFittedSpectrumAndHistogram) {
  std::vector<cv::Mat> images;
  for (uint64_t i = 0; i < 6; ++i) {
    images.push_back(power_law_image(64, 1.5, 200 + i));
  }
  SurfaceFitParams fit;
  fit.work_size = 64;
  const SurfaceModel model = fit_surface_model(images, fit, 0);

  // Histogram: the rendering's sorted values follow the chosen row of quantiles.
  const cv::Mat rendered = render_surface(model, cv::Size(64, 64), CV_32FC1, 9, 2);
  std::vector<float> values(rendered.begin<float>(), rendered.end<float>());
  std::sort(values.begin(), values.end());
  const auto* q = model.quantiles.ptr<float>(2);
  const int steps = model.quantiles.cols - 1;
  for (int i = 1; i < steps; ++i) {
    const float empirical = values[static_cast<size_t>(i * (values.size() - 1) / steps)];
    EXPECT_NEAR(empirical, q[i], 0.02 * (q[steps] - q[0])) << "quantile " << i;
  }
  // And against the real image's own sorted values (independent of the stored quantiles).
  std::vector<float> real(images[2].begin<float>(), images[2].end<float>());
  std::sort(real.begin(), real.end());
  EXPECT_NEAR(values[values.size() / 2], real[real.size() / 2], 1.0);

  // Spectrum: refitting renderings gives back the radial profile of the model.
  std::vector<cv::Mat> synthetic;
  for (uint64_t seed = 0; seed < 6; ++seed) {
    synthetic.push_back(render_surface(model, cv::Size(64, 64), CV_32FC1, seed));
  }
  const SurfaceModel refit = fit_surface_model(synthetic, fit, 0);
  const std::vector<double> original = radial_mean(model.amplitude);
  const std::vector<double> again = radial_mean(refit.amplitude);
  for (size_t r = 2; r < original.size(); r += 3) {
    EXPECT_NEAR(std::log(again[r] / original[r]), 0.0, 0.35) << "ring " << r;
  }
}

TEST(RenderCalibratedSurface, SameSeedSameBytesAnySize) {
  std::vector<cv::Mat> images{power_law_image(48, 1.0, 1), power_law_image(48, 1.0, 2)};
  for (SpectrumScale scale : {SpectrumScale::kImage, SpectrumScale::kPixel}) {
    SurfaceFitParams fit;
    fit.work_size = 32;
    fit.scale = scale;
    const SurfaceModel model = fit_surface_model(images, fit, 0);
    EXPECT_EQ(model.mean_image.empty(), scale == SpectrumScale::kPixel);
    for (const cv::Size size : {cv::Size(17, 9), cv::Size(64, 64), cv::Size(100, 40)}) {
      const cv::Mat a = render_surface(model, size, CV_8UC1, 5);
      const cv::Mat b = render_surface(model, size, CV_8UC1, 5);
      const cv::Mat c = render_surface(model, size, CV_8UC1, 6);
      EXPECT_EQ(a.size(), size);
      EXPECT_TRUE(same_bytes(a, b));
      EXPECT_FALSE(same_bytes(a, c));
    }
  }
}

TEST(RenderCalibratedSurface, BadInputsAreErrors) {
  SurfaceFitParams fit;
  fit.work_size = 32;
  EXPECT_THROW(fit_surface_model({}, fit, 0), std::invalid_argument);
  EXPECT_THROW(fit_surface_model({cv::Mat(40, 40, CV_8UC3)}, fit, 0), std::invalid_argument);
  fit.work_size = 8;
  EXPECT_THROW(fit_surface_model({cv::Mat(40, 40, CV_8UC1)}, fit, 0), std::invalid_argument);

  fit.work_size = 32;
  SurfaceModel model = fit_surface_model({power_law_image(40, 1.0, 3)}, fit, 0);
  EXPECT_THROW(render_surface(model, cv::Size(8, 8), CV_8UC1, 0, 1), std::invalid_argument);
  model.quantiles.at<float>(0, 5) = -1e6f;  // not monotone any more
  EXPECT_THROW(render_surface(model, cv::Size(8, 8), CV_8UC1, 0), std::invalid_argument);
  EXPECT_THROW(parse_spectrum_scale("cycles"), std::invalid_argument);
}

}  // namespace
}  // namespace spc::render
