// The renderer's random streams; the generator itself is spc::Rng (common/rng.h, see
// Note [portable randomness] there).
#pragma once

#include <cstdint>

#include "common/rng.h"

namespace spc::render {

using spc::mix64;
using spc::Rng;

// Names of the independent random streams that one call draws from. A component seeded with
// derive_seed(seed, Stream::kX, i) does not change when another component draws more numbers.
enum class Stream : uint64_t {
  kPlacement = 1,
  kShape = 2,
  kOutline = 3,
  kVariation = 4,
  kRidges = 5,
  kPressure = 6,
  kParticles = 7,
  kHeight = 8,
  kAlbedo = 9,
  kSensor = 10,
  kPhase = 11,
  kPath = 12,
  kCrops = 13,
  kHistogram = 14,
};

inline uint64_t derive_seed(uint64_t seed, Stream stream, uint64_t index = 0) {
  return mix64(mix64(seed ^ mix64(static_cast<uint64_t>(stream))) + index);
}

}  // namespace spc::render
