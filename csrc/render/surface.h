// Synthetic surfaces: procedural families with lighting, and surfaces calibrated to a set of
// real normal images by their amplitude spectrum and grey-level histogram.
#pragma once

#include <opencv2/core.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace spc::render {

enum class SurfaceFamily { kBrushed, kMilled, kSandblasted };

// "brushed", "milled" or "sandblasted"; anything else throws std::invalid_argument.
SurfaceFamily parse_surface_family(const std::string& name);
std::string surface_family_name(SurfaceFamily family);

// Every procedural family is a height field h (px) lit by a directional light, times a
// low-frequency albedo, times an illumination gradient and vignette, plus sensor noise:
//   I = mean * albedo * lambert(h) * illumination + noise_std * N(0, 1), clipped to [0, 1]
// of full scale (255 for 8-bit, 1.0 for float output). Fields that belong to one family are
// ignored by the others.
struct SurfaceParams {
  // Mean grey level, fraction of full scale; [0, 1].
  double mean = 0.35;
  // Amplitude of the low-frequency albedo variation, relative; [0, 1].
  double albedo_contrast = 0.08;
  // Wavelength of the albedo variation, px; > 0.
  double albedo_scale_px = 120.0;
  // Height amplitude of the relief, px; [0, 20]. Larger gives stronger shading.
  double roughness = 0.6;
  // Lay direction: brushing direction or milling feed, degrees from the +x axis towards +y
  // (down); any value.
  double direction_deg = 90.0;
  // brushed: width and length of the finest streaks, px; both >= 1 (streak_length_px >=
  // streak_width_px). Coarser streaks, up to 8 times these, are mixed in.
  double streak_width_px = 1.5;
  double streak_length_px = 60.0;
  // Reflectance contrast of the streaks themselves (brushed only), relative; [0, 1].
  double streak_contrast = 0.12;
  // milled: distance between tool marks along the feed, px; >= 2.
  double mill_pitch_px = 14.0;
  // milled: radius of the tool-mark arcs, px; > 0 (large: nearly straight marks).
  double tool_radius_px = 300.0;
  // sandblasted: size of the finest grains, px; >= 1.
  double grain_px = 1.5;
  // Direction towards the light in the image plane, degrees, 0 = +x, 90 = up (-y).
  double light_azimuth_deg = 135.0;
  // Elevation of the light above the surface, degrees; (0, 90].
  double light_elevation_deg = 45.0;
  // Relative change of the illumination across the image along the azimuth; [0, 1].
  double light_gradient = 0.2;
  // Relative darkening in the corners; [0, 1].
  double vignette = 0.15;
  // Standard deviation of Gaussian sensor noise, fraction of full scale; [0, 0.5].
  double noise_std = 0.01;

  void validate() const;
};

// type: CV_8UC1, CV_8UC3, CV_32FC1 or CV_32FC3 (grey replicated into the three channels).
cv::Mat render_surface(SurfaceFamily family, const SurfaceParams& params, cv::Size size,
                       int type, uint64_t seed);

// How the frequencies of the fitted spectrum map to the frequencies of a rendered image.
//   kImage: every image is resized to the working grid; frequencies are in cycles per image,
//     so a rendering of any size looks like a real image resized to that size.
//   kPixel: square crops at the native resolution; frequencies are in cycles per pixel, so a
//     larger rendering shows a larger field of the same texture.
enum class SpectrumScale { kImage, kPixel };

// "image" or "pixel"; anything else throws std::invalid_argument.
SpectrumScale parse_spectrum_scale(const std::string& name);
std::string spectrum_scale_name(SpectrumScale scale);

struct SurfaceFitParams {
  // Side of the square working grid, px; [16, 4096].
  int work_size = 256;
  SpectrumScale scale = SpectrumScale::kImage;
  // kPixel only: random crops per image; [1, 64].
  int crops_per_image = 4;
  // Number of quantile steps stored per working image; [2, 65536].
  int quantile_count = 256;

  void validate() const;
};

// Statistics of a set of real normal images; see Note [calibrated surfaces] in surface.cpp.
struct SurfaceModel {
  int work_size = 0;
  SpectrumScale scale = SpectrumScale::kImage;
  // kImage only: the mean of the working images, CV_32FC1 [work_size, work_size], which
  // keeps the layout that all images share (illumination, borders); empty for kPixel.
  cv::Mat mean_image;
  // RMS amplitude spectrum of the windowed residuals (working image minus mean_image, minus
  // its own mean), CV_32FC1 [work_size, work_size], DC at (work_size / 2, work_size / 2).
  cv::Mat amplitude;
  // Standard deviation of the residuals over all pixels of all working images; >= 0.
  double residual_std = 0.0;
  // Exponent beta of amplitude ~ f^-beta over the top octave of the working band; it extends
  // the spectrum beyond the band for kImage renderings larger than work_size; [0, 4].
  double slope = 0.0;
  // Grey levels of each working image at probabilities i / (cols - 1), CV_32FC1
  // [working images, quantile_count + 1], in the units of the fitted images (0-255 for 8-bit).
  cv::Mat quantiles;

  // Throws std::invalid_argument when the arrays do not fit together (e.g. after loading).
  void validate() const;
};

// images: CV_8UC1 or CV_32FC1, any sizes; seed picks the crops (kPixel only).
SurfaceModel fit_surface_model(const std::vector<cv::Mat>& images,
                               const SurfaceFitParams& params, uint64_t seed);

// Random phase with the model's amplitude spectrum, inverse DFT, scaled to residual_std, plus
// the mean image resized to `size`, then histogram matching to the quantiles of one working
// image: quantile_row, or one drawn from the seed when -1.
// type: CV_8UC1, CV_8UC3, CV_32FC1 or CV_32FC3; values in the units of the fitted images.
cv::Mat render_surface(const SurfaceModel& model, cv::Size size, int type, uint64_t seed,
                       int quantile_row = -1);

}  // namespace spc::render
