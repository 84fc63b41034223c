// Procedural impurities on any image: water stains, fingerprints and dust.
//
// Every renderer takes a CV_8UC1, CV_8UC3, CV_32FC1 or CV_32FC3 image of any size and a seed,
// and returns a new image of the same type and size plus a CV_8UC1 mask (255 = impurity).
// Pixels where the mask is 0 are bit-identical to the input.
//
// Note [reflectance sign]: an impurity changes the reflectance multiplicatively,
// I' = I * (1 - strength * weight), with weight in [0, 1]. A positive strength darkens, a
// negative one brightens, in every renderer (stains, rims, fingerprints, dust, defects). 8-bit
// results are rounded and saturated; float results are not clamped. Colour images get the
// same factor in every channel.
#pragma once

#include <opencv2/core.hpp>

#include <cstdint>

#include "render/composite.h"

namespace spc::render {

// A water stain (DESIGN.md, "Impurities and synthetic data"): an irregular closed outline
// r(theta) = R (1 + A n(theta)) with n periodic fBm; inside it, at normalised radius
// rho = d / r(theta), I' = I (1 - E) with
//   E = edge(rho) * (s(x, y) * exp(-falloff * rho) + rim_strength * ring(rho)),
//   s(x, y) = strength * (1 + strength_variation * N(x, y)), N low-frequency fBm,
//   ring(rho) = exp(-((rho - (1 - rim_width)) / (rim_width / 2))^2 / 2),
//   edge(rho) = 1 for rho <= 1 - edge_softness, smoothly to 0 at rho = 1.
// The mask is the region inside the outline (rho < 1).
struct WaterStainParams {
  // Stains per image, >= 0. Centres are jittered on a grid; the grid's cells must be at
  // least radius_px on a side, otherwise the count does not fit.
  int count = 3;
  // Mean outline radius R, px, > 0.
  double radius_px = 40.0;
  // Relative spread of R between stains: R_i = R (1 + radius_jitter u), u ~ U[-1, 1]; [0, 1).
  double radius_jitter = 0.3;
  // Largest 1 - minor/major of a stain's elliptical base shape (each stain draws its own in
  // [0, elongation] and a random orientation); [0, 0.9].
  double elongation = 0.3;
  // A: relative amplitude of the outline noise; [0, 1), so that r(theta) > 0.
  double outline_amplitude = 0.25;
  // Lobes of the outline noise's base octave around the stain; [1, 64].
  int outline_period = 5;
  // fBm octaves of the outline noise (each doubles the lobes, halves the amplitude); [1, 8].
  int outline_octaves = 3;
  // s: relative reflectance change at the centre; > 0 darkens, < 0 brightens; [-1, 1].
  double strength = 0.25;
  // k of w(rho) = exp(-k rho), how fast the change falls from centre to edge; [0, 20].
  double falloff = 1.5;
  // Relative low-frequency variation of s over the stain; [0, 1] keeps the sign of s.
  double strength_variation = 0.4;
  // Wavelength of that variation, in units of the stain's radius; > 0.
  double variation_scale = 0.6;
  // Reflectance change on the rim, same sign convention as strength; [-1, 1], 0 = no rim.
  double rim_strength = 0.15;
  // Width of the rim, in units of the normalised radius; (0, 0.5].
  double rim_width = 0.1;
  // Width of the soft edge, in units of the normalised radius; [0, 1], 0 = hard edge.
  double edge_softness = 0.1;

  // Throws std::invalid_argument naming the first field that is out of range.
  void validate() const;
};

// A fingerprint: curved ridges (concentric whorl or arch), warped by noise, broken here and
// there, inside an elliptical patch whose pressure varies smoothly and falls to 0 at the edge:
// I' = I (1 - strength * ridge * pressure). The mask is the elliptical patch.
struct FingerprintParams {
  // Prints per image, >= 0; centres are jittered on a grid of cells of at least size_px.
  int count = 1;
  // Semi-major axis of the patch, px, > 0.
  double size_px = 45.0;
  // Relative spread of the size between prints; [0, 1).
  double size_jitter = 0.2;
  // Minor over major axis of the patch; (0, 1].
  double aspect = 0.65;
  // Distance between neighbouring ridges, px; >= 2 (finer would alias).
  double ridge_period_px = 5.0;
  // Exponent of the ridge profile ((1 + cos phase) / 2)^sharpness: higher, thinner ridges;
  // [0.5, 8].
  double ridge_sharpness = 2.0;
  // Amplitude of the noise that displaces the ridges, px; >= 0.
  double warp_px = 4.0;
  // Probability that a print is an arch rather than a whorl; [0, 1].
  double arch_probability = 0.3;
  // Reflectance change on a ridge at full pressure; [-1, 1], see Note [reflectance sign].
  double strength = 0.2;
  // How much the pressure varies over the patch: 0 uniform, 1 from 0 to full; [0, 1].
  double pressure_variation = 0.6;
  // Approximate fraction of ridge length interrupted by breaks; [0, 1).
  double break_density = 0.25;
  // Width of the soft border of the patch, in units of the normalised radius; [0, 1].
  double edge_softness = 0.3;

  void validate() const;
};

// Dust: small irregular specks and a few thin curved fibres, placed uniformly at random.
// The mask covers every pixel a particle touches (coverage > 0).
struct DustParams {
  // Particles per image; [0, number of pixels].
  int count = 60;
  // Smallest and largest speck radius, px; radii are log-uniform in between, so small specks
  // are more common. 0 < radius_min_px <= radius_max_px.
  double radius_min_px = 0.6;
  double radius_max_px = 2.5;
  // Reflectance change of a particle (each draws 60-100 % of it); [-1, 1].
  double strength = 0.5;
  // Fraction of particles whose change has the opposite sign (bright dust on a dark part when
  // strength > 0); [0, 1].
  double bright_fraction = 0.3;
  // Fraction of particles that are fibres instead of specks; [0, 1].
  double fibre_fraction = 0.1;
  // Mean fibre length, px (each draws 50-150 % of it); > 0.
  double fibre_length_px = 14.0;
  // Fibre width, px; > 0.
  double fibre_width_px = 0.8;
  // Relative amplitude of a speck's outline noise; [0, 1).
  double irregularity = 0.3;

  void validate() const;
};

RenderResult render_water_stains(const cv::Mat& image, const WaterStainParams& params,
                                 uint64_t seed);

RenderResult render_fingerprints(const cv::Mat& image, const FingerprintParams& params,
                                 uint64_t seed);

RenderResult render_dust(const cv::Mat& image, const DustParams& params, uint64_t seed);

}  // namespace spc::render
