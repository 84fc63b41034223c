#include "render/impurities.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "common/log_fmt.h"
#include "render/noise.h"
#include "render/rng.h"

namespace spc::render {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

void check_count(const std::string& name, int count) {
  if (count < 0) {
    throw std::invalid_argument(fmt::format("{} must be >= 0, got {}", name, count));
  }
}

// Local frame of an elliptical instance: u along the major axis, v along the minor axis and
// divided by the aspect ratio, so that the ellipse becomes a circle of the major radius.
struct Frame {
  double cx;
  double cy;
  double cos_a;
  double sin_a;
  double aspect;

  void local(double px, double py, double& u, double& v) const {
    const double dx = px - cx;
    const double dy = py - cy;
    u = dx * cos_a + dy * sin_a;
    v = (-dx * sin_a + dy * cos_a) / aspect;
  }
};

Frame make_frame(cv::Point2d center, double angle, double aspect) {
  return {center.x, center.y, std::cos(angle), std::sin(angle), aspect};
}

// Runs body(y, x, px, py) for every pixel of `box`, rows in parallel. Bodies only write to
// their own pixel, so the result does not depend on the thread count.
template <typename Body>
void for_each_pixel(const cv::Rect& box, const Body& body) {
  if (box.empty()) {
    return;
  }
  cv::parallel_for_(cv::Range(box.y, box.y + box.height), [&](const cv::Range& rows) {
    for (int y = rows.start; y < rows.end; ++y) {
      for (int x = box.x; x < box.x + box.width; ++x) {
        body(y, x, x + 0.5, y + 0.5);
      }
    }
  });
}

// Threshold on fBm noise below which about a fraction `density` of the area lies: a linear
// stand-in for the noise's inverse CDF, good enough for a parameter documented as approximate.
double break_threshold(double density) { return -0.45 * (1.0 - 2.0 * density); }

}  // namespace

void WaterStainParams::validate() const {
  check_count("stain.count", count);
  check_range("stain.radius_px", radius_px, 0.0, kInf, true);
  check_range("stain.radius_jitter", radius_jitter, 0.0, 1.0, false, true);
  check_range("stain.elongation", elongation, 0.0, 0.9);
  check_range("stain.outline_amplitude", outline_amplitude, 0.0, 1.0, false, true);
  check_range("stain.outline_period", outline_period, 1, 64);
  check_range("stain.outline_octaves", outline_octaves, 1, 8);
  check_range("stain.strength", strength, -1.0, 1.0);
  check_range("stain.falloff", falloff, 0.0, 20.0);
  check_range("stain.strength_variation", strength_variation, 0.0, 1.0);
  check_range("stain.variation_scale", variation_scale, 0.0, kInf, true);
  check_range("stain.rim_strength", rim_strength, -1.0, 1.0);
  check_range("stain.rim_width", rim_width, 0.0, 0.5, true);
  check_range("stain.edge_softness", edge_softness, 0.0, 1.0);
}

void FingerprintParams::validate() const {
  check_count("fingerprint.count", count);
  check_range("fingerprint.size_px", size_px, 0.0, kInf, true);
  check_range("fingerprint.size_jitter", size_jitter, 0.0, 1.0, false, true);
  check_range("fingerprint.aspect", aspect, 0.0, 1.0, true);
  check_range("fingerprint.ridge_period_px", ridge_period_px, 2.0, kInf);
  check_range("fingerprint.ridge_sharpness", ridge_sharpness, 0.5, 8.0);
  check_range("fingerprint.warp_px", warp_px, 0.0, kInf);
  check_range("fingerprint.arch_probability", arch_probability, 0.0, 1.0);
  check_range("fingerprint.strength", strength, -1.0, 1.0);
  check_range("fingerprint.pressure_variation", pressure_variation, 0.0, 1.0);
  check_range("fingerprint.break_density", break_density, 0.0, 1.0, false, true);
  check_range("fingerprint.edge_softness", edge_softness, 0.0, 1.0);
}

void DustParams::validate() const {
  check_count("dust.count", count);
  check_range("dust.radius_min_px", radius_min_px, 0.0, kInf, true);
  if (radius_max_px < radius_min_px || !std::isfinite(radius_max_px)) {
    throw std::invalid_argument(
        fmt::format("dust.radius_max_px must be >= dust.radius_min_px = {}, got {}",
                    radius_min_px, radius_max_px));
  }
  check_range("dust.strength", strength, -1.0, 1.0);
  check_range("dust.bright_fraction", bright_fraction, 0.0, 1.0);
  check_range("dust.fibre_fraction", fibre_fraction, 0.0, 1.0);
  check_range("dust.fibre_length_px", fibre_length_px, 0.0, kInf, true);
  check_range("dust.fibre_width_px", fibre_width_px, 0.0, kInf, true);
  check_range("dust.irregularity", irregularity, 0.0, 1.0, false, true);
}

RenderResult render_water_stains(const cv::Mat& image, const WaterStainParams& params,
                                 uint64_t seed) {
  check_image(image, "image");
  params.validate();
  const cv::Size size = image.size();
  JitteredGrid grid =
      jittered_centers(size, params.count, params.radius_px, seed, "stain.count");

  Canvas canvas(size);
  for (size_t i = 0; i < grid.centers.size(); ++i) {
    Rng rng(derive_seed(seed, Stream::kShape, i));
    const double radius = params.radius_px * (1.0 + params.radius_jitter * rng.uniform(-1, 1));
    const double aspect = 1.0 - params.elongation * rng.uniform();
    const Frame frame = make_frame(grid.centers[i], rng.uniform(0.0, M_PI), aspect);
    const PeriodicFbm1D outline(derive_seed(seed, Stream::kOutline, i), params.outline_period,
                                params.outline_octaves);
    const Fbm2D variation(derive_seed(seed, Stream::kVariation, i), 3);
    const double wavelength = params.variation_scale * radius;
    const double outer = radius * (1.0 + params.outline_amplitude);
    const double rim_center = 1.0 - params.rim_width;
    const double rim_sigma = 0.5 * params.rim_width;

    for_each_pixel(disc_box(frame.cx, frame.cy, outer, size), [&](int y, int x, double px,
                                                                    double py) {
      double u;
      double v;
      frame.local(px, py, u, v);
      const double d = std::hypot(u, v);
      if (d >= outer) {
        return;
      }
      const double theta = std::atan2(v, u);
      const double r = radius * (1.0 + params.outline_amplitude * outline(theta / (2 * M_PI)));
      const double rho = d / r;
      if (rho >= 1.0) {
        return;
      }

      const double edge = 1.0 - smoothstep(1.0 - params.edge_softness, 1.0, rho);
      const double s = params.strength *
                       (1.0 + params.strength_variation * variation(px / wavelength,
                                                                     py / wavelength));
      const double z = (rho - rim_center) / rim_sigma;
      const double ring = std::exp(-0.5 * z * z);
      const double change =
          edge * (s * std::exp(-params.falloff * rho) + params.rim_strength * ring);
      canvas.factor.at<float>(y, x) *= static_cast<float>(std::max(0.0, 1.0 - change));
      canvas.mask.at<uint8_t>(y, x) = 255;
    });
  }

  logf(LogLevel::kDebug, "water stains: {} on a {}x{} image, seed {}", grid.centers.size(),
       size.width, size.height, seed);
  return {composite(image, canvas), canvas.mask, std::move(grid.centers)};
}

RenderResult render_fingerprints(const cv::Mat& image, const FingerprintParams& params,
                                 uint64_t seed) {
  check_image(image, "image");
  params.validate();
  const cv::Size size = image.size();
  JitteredGrid grid =
      jittered_centers(size, params.count, params.size_px, seed, "fingerprint.count");
  const double threshold = break_threshold(params.break_density);

  Canvas canvas(size);
  for (size_t i = 0; i < grid.centers.size(); ++i) {
    Rng rng(derive_seed(seed, Stream::kShape, i));
    const double a = params.size_px * (1.0 + params.size_jitter * rng.uniform(-1, 1));
    const double b = a * params.aspect;
    const Frame frame = make_frame(grid.centers[i], rng.uniform(0.0, 2 * M_PI), params.aspect);
    const bool arch = rng.bernoulli(params.arch_probability);
    const double core_u = rng.uniform(-0.2, 0.2) * a;
    const double core_v = rng.uniform(-0.3, 0.1) * a;  // frame units: v is already / aspect
    const double bow = rng.uniform(0.4, 1.0);

    const Fbm2D warp_u(derive_seed(seed, Stream::kRidges, 3 * i), 3);
    const Fbm2D warp_v(derive_seed(seed, Stream::kRidges, 3 * i + 1), 3);
    const Fbm2D breaks(derive_seed(seed, Stream::kRidges, 3 * i + 2), 3);
    const Fbm2D pressure(derive_seed(seed, Stream::kPressure, i), 2);
    const double warp_scale = 0.35 * a;
    const double break_scale = 1.5 * params.ridge_period_px;
    const double pressure_scale = 0.7 * a;
    const double frequency = 2.0 * M_PI / params.ridge_period_px;

    for_each_pixel(disc_box(frame.cx, frame.cy, a, size), [&](int y, int x, double px,
                                                                double py) {
      double u;
      double v;
      frame.local(px, py, u, v);
      const double rho = std::hypot(u, v) / a;
      if (rho >= 1.0) {
        return;
      }

      // Ridges live in true pixel units (v * aspect) so that their period is isotropic.
      const double pu = u;
      const double pv = v * params.aspect;
      const double wu = pu + params.warp_px * warp_u(pu / warp_scale, pv / warp_scale);
      const double wv = pv + params.warp_px * warp_v(pu / warp_scale, pv / warp_scale);
      const double cu = wu - core_u;
      const double cv = wv - core_v * params.aspect;
      const double distance = arch ? cv + bow * cu * cu / b : std::hypot(cu, 1.15 * cv);
      const double ridge =
          std::pow(0.5 + 0.5 * std::cos(frequency * distance), params.ridge_sharpness);
      const double keep =
          smoothstep(threshold - 0.06, threshold + 0.06, breaks(pu / break_scale,
                                                                 pv / break_scale));

      const double edge = 1.0 - smoothstep(1.0 - params.edge_softness, 1.0, rho);
      const double press = 1.0 - params.pressure_variation *
                                     (0.5 + 0.5 * pressure(pu / pressure_scale,
                                                           pv / pressure_scale));
      const double change = params.strength * ridge * keep * edge * press;
      canvas.factor.at<float>(y, x) *= static_cast<float>(std::max(0.0, 1.0 - change));
      canvas.mask.at<uint8_t>(y, x) = 255;
    });
  }

  logf(LogLevel::kDebug, "fingerprints: {} on a {}x{} image, seed {}", grid.centers.size(),
       size.width, size.height, seed);
  return {composite(image, canvas), canvas.mask, std::move(grid.centers)};
}

RenderResult render_dust(const cv::Mat& image, const DustParams& params, uint64_t seed) {
  check_image(image, "image");
  params.validate();
  const cv::Size size = image.size();
  if (static_cast<double>(params.count) > size.area()) {
    throw std::invalid_argument(fmt::format(
        "dust.count = {} cannot fit in a {}x{} image: at most one particle per pixel ({})",
        params.count, size.width, size.height, size.area()));
  }

  Canvas canvas(size);
  cv::Mat coverage(size, CV_32FC1, cv::Scalar(0.0));
  std::vector<cv::Point2d> centers;
  const double log_ratio = std::log(params.radius_max_px / params.radius_min_px);
  for (int i = 0; i < params.count; ++i) {
    Rng rng(derive_seed(seed, Stream::kParticles, static_cast<uint64_t>(i)));
    const cv::Point2d center(rng.uniform(0.0, size.width), rng.uniform(0.0, size.height));
    const double sign = rng.bernoulli(params.bright_fraction) ? -1.0 : 1.0;
    const double strength = sign * params.strength * rng.uniform(0.6, 1.0);
    centers.push_back(center);

    cv::Rect box;
    if (rng.bernoulli(params.fibre_fraction)) {
      // A fibre: a quadratic Bezier curve with a random bend.
      const double length = params.fibre_length_px * rng.uniform(0.5, 1.5);
      const double angle = rng.uniform(0.0, M_PI);
      const double bend = rng.uniform(-0.3, 0.3) * length;
      const cv::Point2d axis(std::cos(angle), std::sin(angle));
      const cv::Point2d normal(-axis.y, axis.x);
      const cv::Point2d p0 = center - 0.5 * length * axis;
      const cv::Point2d p2 = center + 0.5 * length * axis;
      const cv::Point2d p1 = center + bend * normal;
      const int segments = std::max(4, static_cast<int>(length / 2.0));
      std::vector<StrokePoint> points;
      for (int k = 0; k <= segments; ++k) {
        const double t = static_cast<double>(k) / segments;
        const cv::Point2d p = (1 - t) * (1 - t) * p0 + 2 * (1 - t) * t * p1 + t * t * p2;
        points.push_back({p.x, p.y, params.fibre_width_px, 1.0});
      }
      stroke_polyline(points, coverage);
      box = disc_box(center.x, center.y, 0.5 * length + std::abs(bend) + params.fibre_width_px,
                     size);
    } else {
      // A speck: an irregular disc with a one-pixel antialiased border.
      const double radius = params.radius_min_px * std::exp(log_ratio * rng.uniform());
      const PeriodicFbm1D outline(derive_seed(seed, Stream::kOutline, static_cast<uint64_t>(i)),
                                  3, 2);
      const double outer = radius * (1.0 + params.irregularity);
      box = disc_box(center.x, center.y, outer + 1.0, size);
      for (int y = box.y; y < box.y + box.height; ++y) {
        for (int x = box.x; x < box.x + box.width; ++x) {
          const double dx = x + 0.5 - center.x;
          const double dy = y + 0.5 - center.y;
          const double r =
              radius * (1.0 + params.irregularity * outline(std::atan2(dy, dx) / (2 * M_PI)));
          const double alpha = std::clamp(r - std::hypot(dx, dy) + 0.5, 0.0, 1.0);
          coverage.at<float>(y, x) = static_cast<float>(alpha);
        }
      }
    }

    apply_coverage(coverage, strength, box, canvas);
    coverage(box).setTo(0.0);
  }

  logf(LogLevel::kDebug, "dust: {} particles on a {}x{} image, seed {}", params.count,
       size.width, size.height, seed);
  return {composite(image, canvas), canvas.mask, std::move(centers)};
}

}  // namespace spc::render
