// The sequential coreset of Sequential PatchCore: a memory bank of fixed capacity K built in one
// streaming pass, whose memory is O(K * D + B * K) whatever the amount of data.
//
// Rule, for each incoming feature x in stream order (d_p: distance from x to its nearest
// member; d_m: the smallest distance between two members, attained by the closest pair (a, b)):
//   1. while the coreset holds fewer than K members, add x, unless d_p = 0 (a duplicate);
//   2. else, if d_p > d_m, evict the endpoint of the closest pair whose own second-nearest
//      distance is smaller (ties: the lower slot) and put x into its slot;
//   3. else reject x.
// Ties everywhere go to the lower slot: a is the lowest slot with nn_dist = d_m, and
// nn_index[i] is the lowest slot at the smallest distance. With K = 1 there is no pair, d_m is
// +inf and the first feature stays. d_m never decreases once the coreset is full.
//
// Batched execution gives exactly the members, in the same slots, that the one-at-a-time rule
// gives: see Note [Exact decisions from fast distances] in distance.h and the walk in
// sequential_coreset.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/distance.h"

namespace spc {

struct SequentialCoresetOptions {
  // K, the number of members kept. >= 1.
  int64_t capacity = 0;
  DistanceMode distance = DistanceMode::kMatmul;
  // Compare distances in a seeded random projection to this many dimensions (members keep their
  // full features); 0 compares full features.
  int64_t projection_dim = 0;
  // Seeds the projection.
  uint64_t seed = 0;
  // Features per internal chunk, each costing one [chunk, K] matrix product; 0 picks a chunk
  // whose distances take about 4 MiB (64 to 4096 features), smaller when memory_budget_bytes
  // demands (Note [Chunk size]). Does not change the result.
  int64_t chunk_size = 0;
  // Refuse configurations whose working memory exceeds this many bytes; 0 means no limit.
  int64_t memory_budget_bytes = 0;
};

// Bytes the builder allocates for these options: members, comparison keys, bookkeeping and one
// chunk's distance matrix. Throws when memory_budget_bytes is set and cannot be met, naming the
// bytes needed.
int64_t sequential_coreset_bytes(int64_t dim,
                                 at::ScalarType dtype,
                                 const SequentialCoresetOptions& options);

class SequentialCoreset {
 public:
  // dim: feature dimension D; dtype: float32 or float64 (incoming features are converted).
  SequentialCoreset(int64_t dim, at::ScalarType dtype, const SequentialCoresetOptions& options);

  // A builder whose members are `members` (kept as they are, duplicates included) with
  // bookkeeping computed from them, ready to continue the rule. members: [n, D], n <= capacity.
  static SequentialCoreset from_members(const at::Tensor& members,
                                        const SequentialCoresetOptions& options);

  // Streams features through the rule in row order. features: [b, D], any b >= 0, any strides,
  // on the CPU or a CUDA device (see Note [Sequential coreset on a GPU]).
  void update(const at::Tensor& features);

  // Changes K. Growing keeps every member; shrinking evicts by the rule's eviction choice until
  // the members fit, then moves the members of slots >= K into the freed slots in slot order.
  void set_capacity(int64_t capacity);

  // members: [size, D] (a copy)
  at::Tensor coreset() const;
  // Euclidean distance from each member to its nearest other member (+inf with one member),
  // and that member's slot (-1 with one member). [size] each.
  at::Tensor nearest_distances() const;
  at::Tensor nearest_indices() const;
  // d_m, Euclidean; +inf with fewer than two members.
  double min_distance() const;
  // Features as the rule compares them: projected when projection_dim > 0. [b, D] -> [b, D'].
  at::Tensor keys(const at::Tensor& features) const;

  int64_t size() const { return size_; }
  int64_t capacity() const { return options_.capacity; }
  int64_t dim() const { return dim_; }
  at::ScalarType dtype() const { return dtype_; }
  const SequentialCoresetOptions& options() const { return options_; }
  int64_t chunk_size() const { return chunk_size_; }

  // Counters over the builder's life: features seen, added while filling, rejected as exact
  // duplicates while filling, replacing a member, and rejected when full.
  int64_t seen() const { return seen_; }
  int64_t added() const { return added_; }
  int64_t duplicates() const { return duplicates_; }
  int64_t replaced() const { return replaced_; }
  int64_t rejected() const { return rejected_; }

  // Everything needed to resume at a chunk boundary, as named tensors, and back. A resumed
  // builder continues exactly as the saved one would have.
  std::map<std::string, at::Tensor> state() const;
  static SequentialCoreset from_state(const std::map<std::string, at::Tensor>& state);

 private:
  struct Neighbour {
    double distance2;
    int64_t slot;
  };

  void allocate(int64_t capacity);
  void set_centre(const at::Tensor& keys);
  double error_bound(double norm) const;
  template <typename scalar_t>
  void update_chunk(const at::Tensor& features, const at::Device& device);
  at::Tensor distance_buffer(int64_t rows, at::ScalarType dtype);
  // The smallest fast distance of every row of a chunk.
  struct RowMinima {
    std::vector<double> value;
  };
  template <typename scalar_t>
  at::Tensor fast_distances(const at::Tensor& centred,
                            const at::Tensor& norms,
                            const at::Device& device,
                            RowMinima& minima);
  static void store_minima(const at::Tensor& values, RowMinima& minima);
  void sync_device_keys(const at::Device& device);
  template <typename scalar_t, typename dist_t>
  void walk(const at::Tensor& features,
            const at::Tensor& keys,
            const at::Tensor& centred,
            const at::Tensor& norms,
            at::Tensor& distances,
            const RowMinima& minima);
  template <typename scalar_t>
  void write_slot(int64_t slot, const scalar_t* feature, const scalar_t* key);
  template <typename scalar_t, typename dist_t>
  void offer(int64_t slot, const dist_t* distances, double bound, std::vector<int64_t>* stale);
  void keep_nearest_two(int64_t member, double distance2, int64_t slot);
  template <typename scalar_t>
  std::vector<double> distances_to_member(int64_t slot) const;
  template <typename scalar_t, typename dist_t>
  std::pair<Neighbour, Neighbour> nearest_two(const scalar_t* key,
                                              const dist_t* distances,
                                              double bound,
                                              int64_t skip) const;
  template <typename scalar_t>
  void refresh_nearest(const std::vector<int64_t>& slots);
  template <typename scalar_t>
  std::pair<Neighbour, Neighbour> nearest_two_of(int64_t slot, const double* row) const;
  template <typename scalar_t>
  void find_seconds(std::vector<int64_t> slots);
  template <typename scalar_t>
  int64_t eviction_slot();
  template <typename scalar_t>
  void evict_one();
  void refresh_closest_pair();

  SequentialCoresetOptions options_;
  int64_t dim_;
  int64_t key_dim_;
  at::ScalarType dtype_;
  int64_t chunk_size_;

  at::Tensor projection_;     // [D, D'] float64, or undefined without projection
  at::Tensor centre_;         // [D'], the reference point of the fast distances
  at::Tensor members_;        // [K, D]
  at::Tensor keys_;           // [K, D'], aliases members_ without projection
  at::Tensor keys_centred_;   // [K, D'], keys_ - centre_
  at::Tensor keys_by_column_;  // [D', K], keys_centred_ transposed (Note [Stale members in groups])
  at::Tensor key_norms_;      // [K], squared norms of keys_centred_
  // Copies of keys_centred_ and key_norms_ on the device of the last features, and the slots
  // written since they were last brought up to date; undefined while features come on the CPU.
  at::Tensor device_keys_centred_;
  at::Tensor device_key_norms_;
  std::vector<int64_t> stale_device_slots_;
  // The chunk's distances to every slot, [rows, K], kept between updates: see
  // Note [One distance buffer].
  at::Tensor distances_;
  // Each member's two nearest other members, ordered by (squared distance, slot): the first is
  // its nearest (the rule's bookkeeping), the second gives the eviction choice without a search.
  std::vector<double> nn_distance2_;
  std::vector<int64_t> nn_slot_;
  std::vector<double> second_distance2_;
  std::vector<int64_t> second_slot_;
  int64_t size_ = 0;
  int64_t closest_ = -1;  // slot a of the closest pair; -1 with fewer than two members
  double min_distance2_ = std::numeric_limits<double>::infinity();
  double max_key_norm_ = 0.0;
  double unit_roundoff_ = 0.0;

  int64_t seen_ = 0;
  int64_t added_ = 0;
  int64_t duplicates_ = 0;
  int64_t replaced_ = 0;
  int64_t rejected_ = 0;
};

// meld(M, stream) is `update` on a builder restored from M. meld(M1, M2): streams the members of
// `other` into `base`, most novel first (by distance to base's members in base's comparison
// space; ties by row), and returns the result with the given capacity (0 keeps base's).
// other: [n, D].
SequentialCoreset meld_coresets(const SequentialCoreset& base,
                                const at::Tensor& other,
                                int64_t capacity);

}  // namespace spc
