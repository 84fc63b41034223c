#include "render/surface.h"

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "common/log_fmt.h"
#include "render/composite.h"
#include "render/noise.h"
#include "render/rng.h"

namespace spc::render {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kDegree = M_PI / 180.0;

void check_size(cv::Size size) {
  if (size.width <= 0 || size.height <= 0) {
    throw std::invalid_argument(
        fmt::format("size must be positive, got {}x{}", size.width, size.height));
  }
}

void check_output_type(int type) {
  if (type != CV_8UC1 && type != CV_8UC3 && type != CV_32FC1 && type != CV_32FC3) {
    throw std::invalid_argument(
        fmt::format("type must be CV_8UC1, CV_8UC3, CV_32FC1 or CV_32FC3, got {}",
                    cv::typeToString(type)));
  }
}

// grey: CV_32FC1 in output units; returns `type`, rounding and saturating for 8-bit.
cv::Mat to_output(const cv::Mat& grey, int type) {
  cv::Mat single;
  grey.convertTo(single, CV_MAT_DEPTH(type));
  if (CV_MAT_CN(type) == 1) {
    return single;
  }
  cv::Mat colour;
  cv::merge(std::vector<cv::Mat>{single, single, single}, colour);
  return colour;
}

// Number of fBm octaves whose finest lattice is still at least one pixel for a base lattice
// of `base_px`.
int octaves_for(double base_px, int wanted) {
  int octaves = 1;
  while (octaves < wanted && base_px / (1 << octaves) >= 1.0) {
    ++octaves;
  }
  return octaves;
}

cv::Mat brushed_height(const SurfaceParams& p, cv::Size size, uint64_t seed, cv::Mat& streaks) {
  // Lattice of the coarsest octave: 8x the finest streak, stretched along the lay.
  const double angle = p.direction_deg * kDegree;
  const double c = std::cos(angle);
  const double s = std::sin(angle);
  const double across = 8.0 * p.streak_width_px;
  const double along = 8.0 * p.streak_length_px;
  const cv::Matx23d frame(c / along, s / along, 0.0, -s / across, c / across, 0.0);
  const int octaves = octaves_for(across, 4);

  const cv::Mat ridges = render_fbm(size, Fbm2D(derive_seed(seed, Stream::kHeight), octaves),
                                    frame);
  streaks = render_fbm(size, Fbm2D(derive_seed(seed, Stream::kAlbedo, 1), octaves), frame);
  return ridges * p.roughness;
}

cv::Mat milled_height(const SurfaceParams& p, cv::Size size, uint64_t seed) {
  // Face milling leaves arcs of the tool radius, one per feed step along the lay direction.
  const double angle = p.direction_deg * kDegree;
  const double c = std::cos(angle);
  const double s = std::sin(angle);
  Rng rng(derive_seed(seed, Stream::kShape));
  const double arc_center = rng.uniform(-0.5, 0.5) * std::max(size.width, size.height);
  const double phase = rng.uniform(0.0, p.mill_pitch_px);
  const uint64_t mark_seed = derive_seed(seed, Stream::kHeight, 1);
  const Fbm2D fine(derive_seed(seed, Stream::kHeight, 2), 2);
  const double radius = p.tool_radius_px;
  const double cx = 0.5 * size.width;
  const double cy = 0.5 * size.height;

  cv::Mat height(size, CV_32FC1);
  cv::parallel_for_(cv::Range(0, size.height), [&](const cv::Range& rows) {
    for (int y = rows.start; y < rows.end; ++y) {
      auto* out = height.ptr<float>(y);
      for (int x = 0; x < size.width; ++x) {
        const double dx = x + 0.5 - cx;
        const double dy = y + 0.5 - cy;
        const double u = dx * c + dy * s;
        const double v = -dx * s + dy * c - arc_center;
        const double sag = radius - std::sqrt(std::max(0.0, radius * radius - v * v));
        const double position = (u + sag + phase) / p.mill_pitch_px;
        const double mark = std::floor(position);
        const double f = position - mark;
        // Each mark gets its own depth, as a real cutter's runout gives.
        const double depth =
            0.6 + 0.4 * static_cast<double>(mix64(mark_seed ^ static_cast<uint64_t>(
                                                                 static_cast<int64_t>(mark))) >>
                                            11) *
                      0x1.0p-53;
        const double scallop = (2.0 * f - 1.0) * (2.0 * f - 1.0);
        out[x] = static_cast<float>(
            p.roughness * (depth * scallop + 0.25 * fine((x + 0.5) / 3.0, (y + 0.5) / 3.0)));
      }
    }
  });
  return height;
}

cv::Mat sandblasted_height(const SurfaceParams& p, cv::Size size, uint64_t seed) {
  const double fine = 2.0 * p.grain_px;
  const cv::Matx23d fine_frame(1.0 / fine, 0.0, 0.0, 0.0, 1.0 / fine, 0.0);
  const cv::Matx23d coarse_frame(0.125 / fine, 0.0, 0.0, 0.0, 0.125 / fine, 0.0);
  const cv::Mat grains =
      render_fbm(size, Fbm2D(derive_seed(seed, Stream::kHeight), octaves_for(fine, 2)),
                 fine_frame);
  const cv::Mat dunes =
      render_fbm(size, Fbm2D(derive_seed(seed, Stream::kHeight, 1), 3), coarse_frame);
  return p.roughness * (0.75 * grains + 0.25 * dunes);
}

// Lambertian shading of a height field (px), normalised so that a flat surface gives 1.
cv::Mat shade(const cv::Mat& height, double azimuth_deg, double elevation_deg) {
  const double azimuth = azimuth_deg * kDegree;
  const double elevation = elevation_deg * kDegree;
  // Image y points down, so "up" (+90 degrees) is -y.
  const double lx = std::cos(elevation) * std::cos(azimuth);
  const double ly = -std::cos(elevation) * std::sin(azimuth);
  const double lz = std::sin(elevation);

  cv::Mat dx;
  cv::Mat dy;
  cv::Sobel(height, dx, CV_32F, 1, 0, 3, 1.0 / 8.0, 0.0, cv::BORDER_REFLECT101);
  cv::Sobel(height, dy, CV_32F, 0, 1, 3, 1.0 / 8.0, 0.0, cv::BORDER_REFLECT101);
  cv::Mat lambert(height.size(), CV_32FC1);
  cv::parallel_for_(cv::Range(0, height.rows), [&](const cv::Range& rows) {
    for (int y = rows.start; y < rows.end; ++y) {
      const auto* gx = dx.ptr<float>(y);
      const auto* gy = dy.ptr<float>(y);
      auto* out = lambert.ptr<float>(y);
      for (int x = 0; x < height.cols; ++x) {
        // Normal (-h_x, -h_y, 1) / |.|.
        const double norm = std::sqrt(1.0 + gx[x] * gx[x] + gy[x] * gy[x]);
        const double dot = (-gx[x] * lx - gy[x] * ly + lz) / norm;
        out[x] = static_cast<float>(std::max(0.0, dot) / lz);
      }
    }
  });
  return lambert;
}

cv::Mat illumination(cv::Size size, const SurfaceParams& p) {
  const double azimuth = p.light_azimuth_deg * kDegree;
  const double c = std::cos(azimuth);
  const double s = -std::sin(azimuth);
  const double cx = 0.5 * size.width;
  const double cy = 0.5 * size.height;
  const double half_diagonal = std::hypot(cx, cy);
  cv::Mat light(size, CV_32FC1);
  for (int y = 0; y < size.height; ++y) {
    auto* out = light.ptr<float>(y);
    for (int x = 0; x < size.width; ++x) {
      const double dx = (x + 0.5 - cx) / half_diagonal;
      const double dy = (y + 0.5 - cy) / half_diagonal;
      const double ramp = 0.5 * (dx * c + dy * s);  // in [-0.5, 0.5]
      out[x] = static_cast<float>((1.0 + p.light_gradient * ramp) *
                                  (1.0 - p.vignette * (dx * dx + dy * dy)));
    }
  }
  return light;
}

void add_sensor_noise(cv::Mat& grey, double std_dev, uint64_t seed) {
  if (std_dev <= 0.0) {
    return;
  }
  // One stream per row keeps the result independent of how rows are split across threads.
  cv::parallel_for_(cv::Range(0, grey.rows), [&](const cv::Range& rows) {
    for (int y = rows.start; y < rows.end; ++y) {
      Rng rng(derive_seed(seed, Stream::kSensor, static_cast<uint64_t>(y)));
      auto* out = grey.ptr<float>(y);
      for (int x = 0; x < grey.cols; ++x) {
        out[x] += static_cast<float>(std_dev * rng.normal());
      }
    }
  });
}

}  // namespace

SurfaceFamily parse_surface_family(const std::string& name) {
  if (name == "brushed") {
    return SurfaceFamily::kBrushed;
  }
  if (name == "milled") {
    return SurfaceFamily::kMilled;
  }
  if (name == "sandblasted") {
    return SurfaceFamily::kSandblasted;
  }
  throw std::invalid_argument(fmt::format(
      "surface family must be 'brushed', 'milled' or 'sandblasted', got '{}'", name));
}

std::string surface_family_name(SurfaceFamily family) {
  switch (family) {
    case SurfaceFamily::kBrushed:
      return "brushed";
    case SurfaceFamily::kMilled:
      return "milled";
    case SurfaceFamily::kSandblasted:
      return "sandblasted";
  }
  return "unknown";
}

void SurfaceParams::validate() const {
  check_range("surface.mean", mean, 0.0, 1.0);
  check_range("surface.albedo_contrast", albedo_contrast, 0.0, 1.0);
  check_range("surface.albedo_scale_px", albedo_scale_px, 0.0, kInf, true);
  check_range("surface.roughness", roughness, 0.0, 20.0);
  check_range("surface.direction_deg", direction_deg, -kInf, kInf);
  check_range("surface.streak_width_px", streak_width_px, 1.0, kInf);
  check_range("surface.streak_length_px", streak_length_px, streak_width_px, kInf);
  check_range("surface.streak_contrast", streak_contrast, 0.0, 1.0);
  check_range("surface.mill_pitch_px", mill_pitch_px, 2.0, kInf);
  check_range("surface.tool_radius_px", tool_radius_px, 0.0, kInf, true);
  check_range("surface.grain_px", grain_px, 1.0, kInf);
  check_range("surface.light_azimuth_deg", light_azimuth_deg, -kInf, kInf);
  check_range("surface.light_elevation_deg", light_elevation_deg, 0.0, 90.0, true);
  check_range("surface.light_gradient", light_gradient, 0.0, 1.0);
  check_range("surface.vignette", vignette, 0.0, 1.0);
  check_range("surface.noise_std", noise_std, 0.0, 0.5);
}

cv::Mat render_surface(SurfaceFamily family, const SurfaceParams& params, cv::Size size,
                       int type, uint64_t seed) {
  check_size(size);
  check_output_type(type);
  params.validate();

  cv::Mat streaks;
  cv::Mat height;
  switch (family) {
    case SurfaceFamily::kBrushed:
      height = brushed_height(params, size, seed, streaks);
      break;
    case SurfaceFamily::kMilled:
      height = milled_height(params, size, seed);
      break;
    case SurfaceFamily::kSandblasted:
      height = sandblasted_height(params, size, seed);
      break;
  }

  const double scale = 1.0 / params.albedo_scale_px;
  cv::Mat albedo =
      render_fbm(size, Fbm2D(derive_seed(seed, Stream::kAlbedo), 3),
                 cv::Matx23d(scale, 0.0, 0.0, 0.0, scale, 0.0)) *
          params.albedo_contrast +
      1.0;
  if (!streaks.empty()) {
    albedo += streaks * params.streak_contrast;
  }

  cv::Mat grey = shade(height, params.light_azimuth_deg, params.light_elevation_deg);
  grey = grey.mul(albedo).mul(illumination(size, params)) * params.mean;
  add_sensor_noise(grey, params.noise_std, seed);
  cv::min(cv::max(grey, 0.0), 1.0, grey);
  if (CV_MAT_DEPTH(type) == CV_8U) {
    grey *= 255.0;
  }

  logf(LogLevel::kDebug, "surface {}: {}x{}, seed {}", surface_family_name(family), size.width,
       size.height, seed);
  return to_output(grey, type);
}

// Note [calibrated surfaces]
// The model keeps statistics of the real images at a working resolution: for kImage the mean
// image (what every image shares: the illumination profile, dark tile borders), the RMS
// amplitude spectrum of the residuals around it (the square root of the mean power spectrum,
// with a Hann window against the cross of the image borders, rescaled by the window's RMS),
// the residuals' standard deviation, and grey-level quantiles per working image. A rendering
// draws a white Gaussian field, keeps the phases of its DFT and replaces their magnitudes by
// the fitted amplitude (a random-phase texture), transforms back, scales the result to the
// residual standard deviation, adds the resized mean image, and maps the values through the
// quantiles of one real working image, chosen by the seed, so that the synthetic set spreads
// over the real images' brightness and contrast. Random phase cannot place structure (it
// turns the shared layout into blobs), hence the mean image. Histogram matching changes the
// spectrum slightly; we do not iterate the two steps. Frequencies beyond the fitted band
// (kImage renderings larger than the working grid) follow the power law fitted to the top
// octave.

SpectrumScale parse_spectrum_scale(const std::string& name) {
  if (name == "image") {
    return SpectrumScale::kImage;
  }
  if (name == "pixel") {
    return SpectrumScale::kPixel;
  }
  throw std::invalid_argument(
      fmt::format("surface model scale must be 'image' or 'pixel', got '{}'", name));
}

std::string spectrum_scale_name(SpectrumScale scale) {
  return scale == SpectrumScale::kImage ? "image" : "pixel";
}

void SurfaceFitParams::validate() const {
  check_range("fit.work_size", work_size, 16, 4096);
  check_range("fit.crops_per_image", crops_per_image, 1, 64);
  check_range("fit.quantile_count", quantile_count, 2, 65536);
}

void SurfaceModel::validate() const {
  check_range("model.work_size", work_size, 16, 4096);
  if (amplitude.type() != CV_32FC1 || amplitude.rows != work_size ||
      amplitude.cols != work_size) {
    throw std::invalid_argument(fmt::format(
        "model.amplitude must be CV_32FC1 of {}x{}, got {} of {}x{}", work_size, work_size,
        cv::typeToString(amplitude.type()), amplitude.cols, amplitude.rows));
  }
  if (quantiles.type() != CV_32FC1 || quantiles.rows < 1 || quantiles.cols < 3) {
    throw std::invalid_argument(fmt::format(
        "model.quantiles must be CV_32FC1 with >= 1 row and >= 3 columns, got {} of {}x{}",
        cv::typeToString(quantiles.type()), quantiles.cols, quantiles.rows));
  }
  for (int r = 0; r < quantiles.rows; ++r) {
    const auto* q = quantiles.ptr<float>(r);
    for (int c = 1; c < quantiles.cols; ++c) {
      if (!(q[c] >= q[c - 1])) {
        throw std::invalid_argument(fmt::format(
            "model.quantiles row {} must be non-decreasing, got {} after {} at column {}", r,
            q[c], q[c - 1], c));
      }
    }
  }
  check_range("model.slope", slope, 0.0, 4.0);
  check_range("model.residual_std", residual_std, 0.0, std::numeric_limits<double>::max());
  if (!mean_image.empty() && (mean_image.type() != CV_32FC1 || mean_image.rows != work_size ||
                              mean_image.cols != work_size)) {
    throw std::invalid_argument(fmt::format(
        "model.mean_image must be empty or CV_32FC1 of {}x{}, got {} of {}x{}", work_size,
        work_size, cv::typeToString(mean_image.type()), mean_image.cols, mean_image.rows));
  }
}

namespace {

// Periodic Hann window, never exactly 0, outer product of the 1-D windows.
cv::Mat hann_window(int n) {
  cv::Mat window(n, n, CV_32FC1);
  std::vector<double> w(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const double s = std::sin(M_PI * (i + 0.5) / n);
    w[static_cast<size_t>(i)] = s * s;
  }
  for (int y = 0; y < n; ++y) {
    for (int x = 0; x < n; ++x) {
      window.at<float>(y, x) = static_cast<float>(w[static_cast<size_t>(y)] *
                                                  w[static_cast<size_t>(x)]);
    }
  }
  return window;
}

// Quantiles at probabilities i / q, i = 0..q, by linear interpolation of the sorted values.
void quantiles_of(const cv::Mat& image, int q, float* out) {
  std::vector<float> values(image.begin<float>(), image.end<float>());
  std::sort(values.begin(), values.end());
  const double last = static_cast<double>(values.size() - 1);
  for (int i = 0; i <= q; ++i) {
    const double position = last * i / q;
    const auto lo = static_cast<size_t>(std::floor(position));
    const size_t hi = std::min(lo + 1, values.size() - 1);
    const double t = position - static_cast<double>(lo);
    out[i] = static_cast<float>(values[lo] + t * (values[hi] - values[lo]));
  }
}

// Moves the DC term to the centre (an fftshift for even and odd sizes).
cv::Mat centre_spectrum(const cv::Mat& spectrum) {
  const int n = spectrum.rows;
  cv::Mat out(spectrum.size(), spectrum.type());
  for (int y = 0; y < n; ++y) {
    for (int x = 0; x < n; ++x) {
      out.at<float>((y + n / 2) % n, (x + n / 2) % n) = spectrum.at<float>(y, x);
    }
  }
  return out;
}

// Least-squares slope of log(mean ring amplitude) against log(radius) over [n/8, n/2), sign
// flipped so that a falling spectrum gives beta > 0; clamped to [0, 4].
double fit_slope(const cv::Mat& centred) {
  const int n = centred.rows;
  const int lo = std::max(2, n / 8);
  const int hi = n / 2;
  std::vector<double> sum(static_cast<size_t>(hi), 0.0);
  std::vector<int> count(static_cast<size_t>(hi), 0);
  for (int y = 0; y < n; ++y) {
    for (int x = 0; x < n; ++x) {
      const auto ring = static_cast<int>(std::hypot(y - n / 2, x - n / 2));
      if (ring >= lo && ring < hi) {
        sum[static_cast<size_t>(ring)] += centred.at<float>(y, x);
        ++count[static_cast<size_t>(ring)];
      }
    }
  }
  double sx = 0.0, sy = 0.0, sxx = 0.0, sxy = 0.0, m = 0.0;
  for (int ring = lo; ring < hi; ++ring) {
    const double mean = sum[static_cast<size_t>(ring)] / count[static_cast<size_t>(ring)];
    if (mean <= 0.0) {
      continue;
    }
    const double lx = std::log(static_cast<double>(ring));
    const double ly = std::log(mean);
    sx += lx;
    sy += ly;
    sxx += lx * lx;
    sxy += lx * ly;
    m += 1.0;
  }
  if (m < 2.0) {
    return 0.0;
  }
  const double beta = -(m * sxy - sx * sy) / (m * sxx - sx * sx);
  return std::clamp(beta, 0.0, 4.0);
}

// Bilinear lookup in the centred amplitude at signed frequency (qy, qx) in grid units,
// periodic at the band edge, with the power-law extension beyond it.
double amplitude_at(const SurfaceModel& model, double qy, double qx) {
  const int n = model.work_size;
  const double half = 0.5 * n;
  const double reach = std::max(std::abs(qy), std::abs(qx)) / half;
  double gain = 1.0;
  if (reach > 1.0) {
    qy /= reach;
    qx /= reach;
    gain = std::pow(reach, -model.slope);
  }

  const double fy = qy + n / 2;
  const double fx = qx + n / 2;
  const double y0 = std::floor(fy);
  const double x0 = std::floor(fx);
  const double ty = fy - y0;
  const double tx = fx - x0;
  auto at = [&](double y, double x) {
    const int iy = ((static_cast<int>(y) % n) + n) % n;
    const int ix = ((static_cast<int>(x) % n) + n) % n;
    return static_cast<double>(model.amplitude.at<float>(iy, ix));
  };
  const double top = at(y0, x0) + tx * (at(y0, x0 + 1) - at(y0, x0));
  const double bottom = at(y0 + 1, x0) + tx * (at(y0 + 1, x0 + 1) - at(y0 + 1, x0));
  return gain * (top + ty * (bottom - top));
}

}  // namespace

SurfaceModel fit_surface_model(const std::vector<cv::Mat>& images,
                               const SurfaceFitParams& params, uint64_t seed) {
  params.validate();
  if (images.empty()) {
    throw std::invalid_argument("images must hold at least one image, got none");
  }
  for (size_t i = 0; i < images.size(); ++i) {
    const int type = images[i].type();
    if (images[i].empty() || (type != CV_8UC1 && type != CV_32FC1)) {
      throw std::invalid_argument(
          fmt::format("images[{}] must be a non-empty CV_8UC1 or CV_32FC1 image, got {} of "
                      "{}x{}",
                      i, cv::typeToString(type), images[i].cols, images[i].rows));
    }
  }

  // Working images: resized whole images (kImage) or native-resolution crops (kPixel).
  const int n = params.work_size;
  std::vector<cv::Mat> working;
  for (size_t i = 0; i < images.size(); ++i) {
    cv::Mat grey;
    images[i].convertTo(grey, CV_32F);
    if (params.scale == SpectrumScale::kImage) {
      cv::Mat resized;
      cv::resize(grey, resized, cv::Size(n, n), 0, 0, cv::INTER_AREA);
      working.push_back(resized);
      continue;
    }
    const int short_side = std::min(grey.rows, grey.cols);
    if (short_side < n) {
      const double factor = static_cast<double>(n) / short_side;
      cv::resize(grey, grey,
                 cv::Size(std::max(n, static_cast<int>(std::ceil(grey.cols * factor))),
                          std::max(n, static_cast<int>(std::ceil(grey.rows * factor)))),
                 0, 0, cv::INTER_LINEAR);
      logf(LogLevel::kDebug, "images[{}] upscaled by {:.2f} to fit a {} px crop", i, factor, n);
    }
    Rng rng(derive_seed(seed, Stream::kCrops, i));
    for (int k = 0; k < params.crops_per_image; ++k) {
      const auto x = static_cast<int>(rng.below(static_cast<uint64_t>(grey.cols - n + 1)));
      const auto y = static_cast<int>(rng.below(static_cast<uint64_t>(grey.rows - n + 1)));
      working.push_back(grey(cv::Rect(x, y, n, n)).clone());
    }
  }

  SurfaceModel model;
  model.work_size = n;
  model.scale = params.scale;
  model.quantiles.create(static_cast<int>(working.size()), params.quantile_count + 1, CV_32FC1);
  if (params.scale == SpectrumScale::kImage) {
    cv::Mat sum(n, n, CV_64FC1, cv::Scalar(0.0));
    for (const auto& image : working) {
      cv::accumulate(image, sum);
    }
    sum.convertTo(model.mean_image, CV_32F, 1.0 / static_cast<double>(working.size()));
  }

  const cv::Mat window = hann_window(n);
  const double window_rms = std::sqrt(cv::mean(window.mul(window))[0]);
  cv::Mat power(n, n, CV_64FC1, cv::Scalar(0.0));
  double variance = 0.0;
  for (size_t i = 0; i < working.size(); ++i) {
    quantiles_of(working[i], params.quantile_count,
                 model.quantiles.ptr<float>(static_cast<int>(i)));

    cv::Mat residual = model.mean_image.empty() ? working[i] : working[i] - model.mean_image;
    cv::Scalar mean;
    cv::Scalar std_dev;
    cv::meanStdDev(residual, mean, std_dev);
    variance += std_dev[0] * std_dev[0];
    cv::Mat centred = (residual - mean[0]).mul(window);
    cv::Mat spectrum;
    cv::dft(centred, spectrum, cv::DFT_COMPLEX_OUTPUT);
    for (int y = 0; y < n; ++y) {
      const auto* f = spectrum.ptr<cv::Vec2f>(y);
      auto* p = power.ptr<double>(y);
      for (int x = 0; x < n; ++x) {
        p[x] += static_cast<double>(f[x][0]) * f[x][0] + static_cast<double>(f[x][1]) * f[x][1];
      }
    }
  }

  cv::Mat amplitude;
  cv::sqrt(power / static_cast<double>(working.size()), amplitude);
  amplitude.convertTo(amplitude, CV_32F, 1.0 / window_rms);
  model.amplitude = centre_spectrum(amplitude);
  // The DC term of mean-free images is ~0; give it its neighbours' level so that
  // interpolation near zero frequency (kPixel renderings larger than the grid) does not dip.
  const int c = n / 2;
  model.amplitude.at<float>(c, c) =
      0.25f * (model.amplitude.at<float>(c - 1, c) + model.amplitude.at<float>(c + 1, c) +
               model.amplitude.at<float>(c, c - 1) + model.amplitude.at<float>(c, c + 1));
  model.slope = fit_slope(model.amplitude);
  model.residual_std = std::sqrt(variance / static_cast<double>(working.size()));

  logf(LogLevel::kInfo, "surface model: {} working images of {} px, scale {}, slope {:.2f}",
       working.size(), n, spectrum_scale_name(params.scale), model.slope);
  return model;
}

cv::Mat render_surface(const SurfaceModel& model, cv::Size size, int type, uint64_t seed,
                       int quantile_row) {
  check_size(size);
  check_output_type(type);
  model.validate();
  if (quantile_row < -1 || quantile_row >= model.quantiles.rows) {
    throw std::invalid_argument(fmt::format(
        "quantile_row must be -1 (random) or in [0, {}), got {}", model.quantiles.rows,
        quantile_row));
  }

  // White noise supplies a random phase with exact conjugate symmetry.
  cv::Mat noise(size, CV_32FC1);
  cv::parallel_for_(cv::Range(0, size.height), [&](const cv::Range& rows) {
    for (int y = rows.start; y < rows.end; ++y) {
      Rng rng(derive_seed(seed, Stream::kPhase, static_cast<uint64_t>(y)));
      auto* out = noise.ptr<float>(y);
      for (int x = 0; x < size.width; ++x) {
        out[x] = static_cast<float>(rng.normal());
      }
    }
  });
  cv::Mat spectrum;
  cv::dft(noise, spectrum, cv::DFT_COMPLEX_OUTPUT);

  // Frequencies in grid units of the model: cycles per image (kImage) or per pixel (kPixel).
  const double sy = model.scale == SpectrumScale::kImage ? 1.0
                                                         : double(model.work_size) / size.height;
  const double sx = model.scale == SpectrumScale::kImage ? 1.0
                                                         : double(model.work_size) / size.width;
  cv::parallel_for_(cv::Range(0, size.height), [&](const cv::Range& rows) {
    for (int y = rows.start; y < rows.end; ++y) {
      auto* f = spectrum.ptr<cv::Vec2f>(y);
      const int ky = y <= size.height / 2 ? y : y - size.height;
      for (int x = 0; x < size.width; ++x) {
        const int kx = x <= size.width / 2 ? x : x - size.width;
        if (ky == 0 && kx == 0) {
          f[x] = cv::Vec2f(0.0f, 0.0f);
          continue;
        }
        // Look up (ky, kx) and (-ky, -kx) at the same canonical point, so that the spectrum
        // stays exactly conjugate-symmetric and the inverse is real.
        const bool flip = ky < 0 || (ky == 0 && kx < 0);
        const double a = amplitude_at(model, (flip ? -ky : ky) * sy, (flip ? -kx : kx) * sx);
        const double magnitude = std::hypot(f[x][0], f[x][1]);
        const double gain = magnitude > 0.0 ? a / magnitude : 0.0;
        f[x] = cv::Vec2f(static_cast<float>(f[x][0] * gain), static_cast<float>(f[x][1] * gain));
      }
    }
  });
  cv::Mat field;
  cv::dft(spectrum, field, cv::DFT_INVERSE | cv::DFT_REAL_OUTPUT);
  cv::Scalar mean;
  cv::Scalar std_dev;
  cv::meanStdDev(field, mean, std_dev);
  field = (field - mean[0]) * (std_dev[0] > 0.0 ? model.residual_std / std_dev[0] : 0.0);
  if (!model.mean_image.empty()) {
    cv::Mat layout;
    cv::resize(model.mean_image, layout, size, 0, 0, cv::INTER_LINEAR);
    field += layout;
  }

  // Histogram matching through a fine histogram of the field: each pixel's mid-rank
  // probability is mapped through the chosen row of quantiles.
  if (quantile_row < 0) {
    Rng rng(derive_seed(seed, Stream::kHistogram));
    quantile_row = static_cast<int>(rng.below(static_cast<uint64_t>(model.quantiles.rows)));
  }
  double lo = 0.0;
  double hi = 0.0;
  cv::minMaxLoc(field, &lo, &hi);
  constexpr int kBins = 1 << 16;
  const double bin_scale = hi > lo ? (kBins - 1) / (hi - lo) : 0.0;
  std::vector<double> below(kBins + 1, 0.0);
  for (int y = 0; y < size.height; ++y) {
    const auto* v = field.ptr<float>(y);
    for (int x = 0; x < size.width; ++x) {
      below[static_cast<size_t>((v[x] - lo) * bin_scale) + 1] += 1.0;
    }
  }
  for (int b = 1; b <= kBins; ++b) {
    below[b] += below[b - 1];
  }
  const double total = static_cast<double>(size.area());
  const auto* q = model.quantiles.ptr<float>(quantile_row);
  const int steps = model.quantiles.cols - 1;
  cv::Mat grey(size, CV_32FC1);
  cv::parallel_for_(cv::Range(0, size.height), [&](const cv::Range& rows) {
    for (int y = rows.start; y < rows.end; ++y) {
      const auto* v = field.ptr<float>(y);
      auto* out = grey.ptr<float>(y);
      for (int x = 0; x < size.width; ++x) {
        const auto b = static_cast<size_t>((v[x] - lo) * bin_scale);
        const double p = (below[b] + 0.5 * (below[b + 1] - below[b])) / total;
        const double position = p * steps;
        const int i = std::min(static_cast<int>(position), steps - 1);
        const double t = position - i;
        out[x] = static_cast<float>(q[i] + t * (q[i + 1] - q[i]));
      }
    }
  });

  return to_output(grey, type);
}

}  // namespace spc::render
