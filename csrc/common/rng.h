// Deterministic random numbers shared by the core (seeded projections, the greedy start) and
// the renderer.
//
// Note [portable randomness]: the std::*_distribution classes are implemented differently by
// each standard library, so the same seed would give different numbers with libstdc++ and
// libc++. Every draw here is our own integer arithmetic (SplitMix64 for hashing and seeding,
// xoshiro256** for streams); only the floating-point functions used afterwards (log, cos, exp)
// may differ by an ulp between C libraries. Same seed, same build: same bytes.
#pragma once

#include <cmath>
#include <cstdint>

namespace spc {

// SplitMix64's output function: a bijective, well-mixing map of 64-bit integers.
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// xoshiro256** seeded through SplitMix64, as its authors recommend.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    uint64_t x = seed;
    for (auto& word : state_) {
      word = mix64(x);
      x += 0x9E3779B97F4A7C15ull;
    }
  }

  uint64_t next() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  // Uniform integer in [0, n), unbiased (rejection of the short last block); n > 0.
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x = next();
    while (x >= limit) {
      x = next();
    }
    return x % n;
  }

  // Standard normal by Box-Muller; the second value is dropped so that one call consumes a
  // fixed number of words whatever happened before.
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]: log stays finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }

  bool bernoulli(double p) { return uniform() < p; }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

  uint64_t state_[4];
};

}  // namespace spc
