#include "core/sequential_coreset.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

// Note [Sequential coreset on a GPU]
// With features on a CUDA device, the chunk's [B, K] fast distance matrix, one matrix product,
// is computed there against a device copy of the centred keys, and copied to the CPU, where
// the walk takes every decision exactly as it does for CPU features (Note [Exact decisions
// from fast distances]): the members are the same on both devices. The error bound uses the
// CUDA unit roundoff (TF32 when torch allows it). The device copy is refreshed before each
// chunk from the slots written since, so it costs K * D' + K values on the device and
// B * (D' + K) values of transfer per chunk. The exact mode computes on the CPU either way.
namespace spc {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// second_slot_ of a member whose second nearest left and has not been searched for since
// (Note [Second nearest on demand]).
constexpr int64_t kUnknownSlot = -2;
// Note [Chunk size]
// A chunk's distances, [rows, K], are written by the product, folded, and then read row by
// row by the walk; while they stay in the last-level cache the walk's reads are cheap. With
// 667,648 real features and K = 6676 (float32, 2 cores, 32 MiB L3) the build took 17.1 s with
// chunks of 512 rows, 18.5 s with 1024, 15.7-16.3 s with 128 and 256, and 17-17.6 s with 64,
// where the products get too small to run at full speed. The default keeps a chunk's
// distances near 4 MiB: 157 rows at that K, 256 at K = 4096, never under 64 or over 4096.
constexpr int64_t kChunkDistanceBytes = int64_t{4} << 20;
constexpr int64_t kMinDefaultChunk = 64;
constexpr int64_t kMaxDefaultChunk = 4096;
constexpr int64_t kStateVersion = 2;

// One clone of a hot loop for x86-64-v3 (AVX2, FMA) besides the baseline one, chosen when the
// library loads: the wheel targets the baseline, but nearly every machine it runs on has more.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define SPC_CLONE_FOR_AVX2 __attribute__((target_clones("arch=x86-64-v3", "default")))
#define SPC_INLINE_INTO_CLONES __attribute__((always_inline)) inline
#else
#define SPC_CLONE_FOR_AVX2
#define SPC_INLINE_INTO_CLONES inline
#endif

// out[r] = rows[r] . v for `count` rows of `dim`, on the calling thread. The builder's
// matrix-vector products are small (one member against the coreset or the rest of a chunk);
// handing them to a threaded BLAS costs more in waking its workers than the product itself.
// Four rows at a time keep four independent chains of multiply-adds in flight, each in one
// 32-byte vector of partial sums (a vector type, so that they stay in registers); partial sums
// keep the rounding within the bound of any dot product of `dim`.
template <typename scalar_t>
SPC_INLINE_INTO_CLONES void dot_rows_impl(const scalar_t* rows,
                                          int64_t count,
                                          int64_t dim,
                                          const scalar_t* v,
                                          scalar_t* out) {
  constexpr int kLanes = 32 / sizeof(scalar_t);
  typedef scalar_t lanes_t __attribute__((vector_size(32)));
  // Through references, not by value: a 32-byte vector in a baseline build has no stable ABI.
  auto load = [](lanes_t& x, const scalar_t* p) { std::memcpy(&x, p, sizeof(x)); };
  auto total = [](const lanes_t& x,
                  const scalar_t* row,
                  const scalar_t* v,
                  int64_t begin,
                  int64_t end) {
    scalar_t sum = 0;
    for (int lane = 0; lane < kLanes; ++lane) {
      sum += x[lane];
    }
    for (int64_t c = begin; c < end; ++c) {
      sum += row[c] * v[c];
    }
    return sum;
  };

  const int64_t full = dim - dim % kLanes;
  int64_t r = 0;
  for (; r + 4 <= count; r += 4) {
    const scalar_t* row = rows + r * dim;
    lanes_t a0 = {};
    lanes_t a1 = {};
    lanes_t a2 = {};
    lanes_t a3 = {};
    lanes_t w;
    lanes_t x;
    for (int64_t c = 0; c < full; c += kLanes) {
      load(w, v + c);
      load(x, row + c);
      a0 += x * w;
      load(x, row + dim + c);
      a1 += x * w;
      load(x, row + 2 * dim + c);
      a2 += x * w;
      load(x, row + 3 * dim + c);
      a3 += x * w;
    }
    out[r] = total(a0, row, v, full, dim);
    out[r + 1] = total(a1, row + dim, v, full, dim);
    out[r + 2] = total(a2, row + 2 * dim, v, full, dim);
    out[r + 3] = total(a3, row + 3 * dim, v, full, dim);
  }
  for (; r < count; ++r) {
    const scalar_t* row = rows + r * dim;
    lanes_t a = {};
    lanes_t w;
    lanes_t x;
    for (int64_t c = 0; c < full; c += kLanes) {
      load(w, v + c);
      load(x, row + c);
      a += x * w;
    }
    out[r] = total(a, row, v, full, dim);
  }
}

SPC_CLONE_FOR_AVX2 void dot_rows(const float* rows,
                                 int64_t count,
                                 int64_t dim,
                                 const float* v,
                                 float* out) {
  dot_rows_impl(rows, count, dim, v, out);
}

SPC_CLONE_FOR_AVX2 void dot_rows(const double* rows,
                                 int64_t count,
                                 int64_t dim,
                                 const double* v,
                                 double* out) {
  dot_rows_impl(rows, count, dim, v, out);
}

// out[v * count + j] = column j of `columns` . vectors[v], for v < N <= 4 and j < count, with
// the keys stored by column: columns[c * stride + j] is coordinate c of key j. Laid out so,
// sixteen keys' products accumulate in two vectors without any horizontal sum, and the keys
// are read once for up to four members (Note [Stale members in groups]).
template <int N, typename scalar_t>
SPC_INLINE_INTO_CLONES void dot_columns_impl(const scalar_t* columns,
                                             int64_t stride,
                                             int64_t count,
                                             int64_t dim,
                                             const scalar_t* const* vectors,
                                             scalar_t* out) {
  constexpr int kLanes = 32 / sizeof(scalar_t);
  typedef scalar_t lanes_t __attribute__((vector_size(32)));
  auto load = [](lanes_t& x, const scalar_t* p) { std::memcpy(&x, p, sizeof(x)); };
  auto store = [](scalar_t* p, const lanes_t& x) { std::memcpy(p, &x, sizeof(x)); };

  int64_t j = 0;
  for (; j + 2 * kLanes <= count; j += 2 * kLanes) {
    lanes_t low[N] = {};
    lanes_t high[N] = {};
    lanes_t x0;
    lanes_t x1;
    for (int64_t c = 0; c < dim; ++c) {
      load(x0, columns + c * stride + j);
      load(x1, columns + c * stride + j + kLanes);
      for (int v = 0; v < N; ++v) {
        const scalar_t w = vectors[v][c];
        low[v] += x0 * w;
        high[v] += x1 * w;
      }
    }
    for (int v = 0; v < N; ++v) {
      store(out + v * count + j, low[v]);
      store(out + v * count + j + kLanes, high[v]);
    }
  }
  for (; j < count; ++j) {
    for (int v = 0; v < N; ++v) {
      scalar_t sum = 0;
      for (int64_t c = 0; c < dim; ++c) {
        sum += columns[c * stride + j] * vectors[v][c];
      }
      out[v * count + j] = sum;
    }
  }
}

template <typename scalar_t>
SPC_INLINE_INTO_CLONES void dot_columns_n(const scalar_t* columns,
                                          int64_t stride,
                                          int64_t count,
                                          int64_t dim,
                                          const scalar_t* const* vectors,
                                          int n,
                                          scalar_t* out) {
  switch (n) {
    case 1:
      dot_columns_impl<1>(columns, stride, count, dim, vectors, out);
      return;
    case 2:
      dot_columns_impl<2>(columns, stride, count, dim, vectors, out);
      return;
    case 3:
      dot_columns_impl<3>(columns, stride, count, dim, vectors, out);
      return;
    default:
      dot_columns_impl<4>(columns, stride, count, dim, vectors, out);
  }
}

SPC_CLONE_FOR_AVX2 void dot_columns(const float* columns,
                                    int64_t stride,
                                    int64_t count,
                                    int64_t dim,
                                    const float* const* vectors,
                                    int n,
                                    float* out) {
  dot_columns_n(columns, stride, count, dim, vectors, n, out);
}

SPC_CLONE_FOR_AVX2 void dot_columns(const double* columns,
                                    int64_t stride,
                                    int64_t count,
                                    int64_t dim,
                                    const double* const* vectors,
                                    int n,
                                    double* out) {
  dot_columns_n(columns, stride, count, dim, vectors, n, out);
}

// Turns a chunk row's dot products with the centred keys into fast squared distances, in
// place: (||m_j||^2 - 2 x.m_j) + ||x||^2, the order in which the matrix product with a bias
// rounded them before, and returns their minimum. One pass over the row instead of three (the
// bias copy, the norm addition, a separate minimum), which cost as much as the product.
template <typename scalar_t>
SPC_INLINE_INTO_CLONES scalar_t fold_row_impl(scalar_t* __restrict row,
                                              const scalar_t* __restrict member_norms,
                                              scalar_t norm,
                                              int64_t count) {
  scalar_t smallest = std::numeric_limits<scalar_t>::infinity();
#pragma omp simd reduction(min : smallest)
  for (int64_t j = 0; j < count; ++j) {
    const scalar_t value = (member_norms[j] - 2 * row[j]) + norm;
    row[j] = value;
    smallest = std::min(smallest, value);
  }
  return smallest;
}

SPC_CLONE_FOR_AVX2 float fold_row(float* row, const float* member_norms, float norm,
                                  int64_t count) {
  return fold_row_impl(row, member_norms, norm, count);
}

SPC_CLONE_FOR_AVX2 double fold_row(double* row, const double* member_norms, double norm,
                                   int64_t count) {
  return fold_row_impl(row, member_norms, norm, count);
}

int64_t element_bytes(at::ScalarType dtype) { return static_cast<int64_t>(c10::elementSize(dtype)); }

int64_t key_dim_of(int64_t dim, const SequentialCoresetOptions& options) {
  return options.projection_dim > 0 ? options.projection_dim : dim;
}

// Bytes that do not depend on the chunk: members, keys, bookkeeping.
int64_t fixed_bytes(int64_t dim, at::ScalarType dtype, const SequentialCoresetOptions& options) {
  const int64_t k = options.capacity;
  const int64_t key_dim = key_dim_of(dim, options);
  const int64_t elt = element_bytes(dtype);
  int64_t bytes = k * dim * elt;                      // members
  bytes += 2 * k * key_dim * elt + k * elt;           // centred keys (by row and by column), norms
  bytes += 2 * k * (sizeof(double) + sizeof(int64_t));  // two nearest members each
  if (options.projection_dim > 0) {
    bytes += k * key_dim * elt;                       // projected keys
    bytes += dim * key_dim * sizeof(double);          // projection matrix
  }
  return bytes;
}

// Bytes per feature of a chunk: its row of the distance matrix and its copies.
int64_t row_bytes(int64_t dim, at::ScalarType dtype, const SequentialCoresetOptions& options) {
  const int64_t elt = element_bytes(dtype);
  const int64_t distance_elt =
      options.distance == DistanceMode::kExact ? int64_t{sizeof(double)} : elt;
  return options.capacity * distance_elt + (dim + 2 * key_dim_of(dim, options) + 1) * elt;
}

void check_options(int64_t dim, at::ScalarType dtype, const SequentialCoresetOptions& options) {
  TORCH_CHECK(dim > 0, "dim should be > 0, got ", dim);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "dtype should be float32 or float64, got ",
              dtype);
  TORCH_CHECK(options.capacity >= 1, "capacity should be >= 1, got ", options.capacity);
  TORCH_CHECK(options.projection_dim >= 0,
              "projection_dim should be >= 0 (0 = no projection), got ",
              options.projection_dim);
  TORCH_CHECK(options.chunk_size >= 0,
              "chunk_size should be >= 0 (0 = automatic), got ",
              options.chunk_size);
  TORCH_CHECK(options.memory_budget_bytes >= 0,
              "memory_budget_bytes should be >= 0 (0 = no limit), got ",
              options.memory_budget_bytes);
}

int64_t resolve_chunk(int64_t dim, at::ScalarType dtype, const SequentialCoresetOptions& options) {
  if (options.chunk_size > 0) {
    return options.chunk_size;
  }
  // See Note [Chunk size].
  const int64_t distance_elt =
      options.distance == DistanceMode::kExact ? int64_t{sizeof(double)} : element_bytes(dtype);
  const int64_t preferred = std::clamp<int64_t>(
      kChunkDistanceBytes / (options.capacity * distance_elt), kMinDefaultChunk, kMaxDefaultChunk);
  if (options.memory_budget_bytes == 0) {
    return preferred;
  }
  // A budget can only make the chunk smaller: larger ones are no faster.
  const int64_t spare = options.memory_budget_bytes - fixed_bytes(dim, dtype, options);
  return std::clamp<int64_t>(spare / row_bytes(dim, dtype, options), 1, preferred);
}

}  // namespace

int64_t sequential_coreset_bytes(int64_t dim,
                                 at::ScalarType dtype,
                                 const SequentialCoresetOptions& options) {
  check_options(dim, dtype, options);
  const int64_t chunk = resolve_chunk(dim, dtype, options);
  const int64_t bytes = fixed_bytes(dim, dtype, options) + chunk * row_bytes(dim, dtype, options);
  TORCH_CHECK(options.memory_budget_bytes == 0 || bytes <= options.memory_budget_bytes,
              "a sequential coreset of capacity ",
              options.capacity,
              " for ",
              dim,
              "-dim ",
              dtype,
              " features with chunks of ",
              chunk,
              " needs ",
              bytes,
              " bytes, more than memory_budget_bytes = ",
              options.memory_budget_bytes,
              "; lower the capacity or the chunk size, or raise the budget");
  return bytes;
}

SequentialCoreset::SequentialCoreset(int64_t dim,
                                     at::ScalarType dtype,
                                     const SequentialCoresetOptions& options)
    : options_(options), dim_(dim), key_dim_(key_dim_of(dim, options)), dtype_(dtype) {
  // Refuses before any allocation when the budget cannot be met.
  sequential_coreset_bytes(dim, dtype, options);
  chunk_size_ = resolve_chunk(dim, dtype, options);
  // Searches between members (eviction, melding, shrinking) may run before any update.
  unit_roundoff_ = matmul_unit_roundoff(dtype, false);
  if (options.projection_dim > 0) {
    projection_ = random_projection_matrix(dim, options.projection_dim, options.seed);
  }
  allocate(options.capacity);
}

void SequentialCoreset::allocate(int64_t capacity) {
  const auto opts = at::TensorOptions().dtype(dtype_);
  auto grow = [&](const at::Tensor& old, at::IntArrayRef shape) {
    at::Tensor fresh = at::zeros(shape, opts);
    if (old.defined() && size_ > 0) {
      fresh.narrow(0, 0, size_).copy_(old.narrow(0, 0, size_));
    }
    return fresh;
  };
  members_ = grow(members_, {capacity, dim_});
  keys_ = projection_.defined() ? grow(keys_, {capacity, key_dim_}) : members_;
  keys_centred_ = grow(keys_centred_, {capacity, key_dim_});
  at::Tensor by_column = at::zeros({key_dim_, capacity}, opts);
  if (keys_by_column_.defined() && size_ > 0) {
    by_column.narrow(1, 0, size_).copy_(keys_by_column_.narrow(1, 0, size_));
  }
  keys_by_column_ = by_column;
  key_norms_ = grow(key_norms_, {capacity});
  nn_distance2_.resize(capacity, kInf);
  nn_slot_.resize(capacity, -1);
  second_distance2_.resize(capacity, kInf);
  second_slot_.resize(capacity, -1);
  options_.capacity = capacity;
}

void SequentialCoreset::set_centre(const at::Tensor& keys) {
  centre_ = keys.to(at::kDouble).mean(0).to(dtype_);
}

double SequentialCoreset::error_bound(double norm) const {
  if (options_.distance == DistanceMode::kExact) {
    return 0.0;
  }
  return matmul_error_bound(unit_roundoff_, key_dim_, norm, max_key_norm_);
}

at::Tensor SequentialCoreset::keys(const at::Tensor& features) const {
  check_features(features, "features");
  TORCH_CHECK(features.size(1) == dim_,
              "features should have dim ",
              dim_,
              " (the coreset's), got ",
              features.size(1));
  const at::Tensor converted = features.to(at::kCPU, dtype_).contiguous();
  return projection_.defined() ? project(converted, projection_) : converted;
}

void SequentialCoreset::update(const at::Tensor& features) {
  check_features(features, "features");
  TORCH_CHECK(features.size(1) == dim_,
              "features should have dim ",
              dim_,
              " (the coreset's), got ",
              features.size(1));
  TORCH_CHECK(features.device().is_cpu() || features.device().is_cuda(),
              "features should be on the CPU or a CUDA device, got ",
              features.device());
  const at::Device device = features.device();
  // CPU products round no worse than CUDA ones, so the CUDA bound covers both.
  unit_roundoff_ = matmul_unit_roundoff(dtype_, device.is_cuda());

  const int64_t rows = features.size(0);
  for (int64_t start = 0; start < rows; start += chunk_size_) {
    const at::Tensor chunk = features.narrow(0, start, std::min(chunk_size_, rows - start))
                                 .to(at::kCPU, dtype_)
                                 .contiguous();
    TORCH_CHECK(at::isfinite(chunk).all().item<bool>(),
                "features should be finite, got NaN or infinity in rows [",
                start,
                ", ",
                start + chunk.size(0),
                ")");
    AT_DISPATCH_FLOATING_TYPES(dtype_, "sequential_coreset_update", [&] {
      update_chunk<scalar_t>(chunk, device);
    });
  }
}

void SequentialCoreset::sync_device_keys(const at::Device& device) {
  const bool current = device_keys_centred_.defined() &&
                       device_keys_centred_.device() == device &&
                       device_keys_centred_.size(0) == keys_centred_.size(0);
  if (!current) {
    device_keys_centred_ = keys_centred_.to(device);
    device_key_norms_ = key_norms_.to(device);
  } else if (!stale_device_slots_.empty()) {
    std::sort(stale_device_slots_.begin(), stale_device_slots_.end());
    stale_device_slots_.erase(std::unique(stale_device_slots_.begin(), stale_device_slots_.end()),
                              stale_device_slots_.end());
    const at::Tensor slots = at::tensor(stale_device_slots_, at::kLong);
    const at::Tensor device_slots = slots.to(device);
    // Out of place: a copied builder may share these tensors.
    device_keys_centred_ = device_keys_centred_.index_copy(
        0, device_slots, keys_centred_.index_select(0, slots).to(device));
    device_key_norms_ =
        device_key_norms_.index_copy(0, device_slots, key_norms_.index_select(0, slots).to(device));
  }
  stale_device_slots_.clear();
}

// Note [One distance buffer]
// Each chunk needs its distances to every slot, [rows, K]: 27 MiB for one 256^2 image against
// K = 6676. Allocated afresh per update, blocks of that size defeat glibc's heap: freeing one
// raises its mmap threshold above them, later ones come from the heap between the backbone's
// tensors, and the heap grows with every image (a fit's peak rose from 395 to 460-534 MiB over
// 652 images, differently in every run). One buffer, grown to the largest chunk seen and
// reused, keeps the builder's memory what the budget says. It is not shared with copies of the
// builder, which allocate their own on first use.
at::Tensor SequentialCoreset::distance_buffer(int64_t rows, at::ScalarType dtype) {
  const int64_t cap = options_.capacity;
  const bool usable = distances_.defined() && distances_.use_count() == 1 &&
                      distances_.scalar_type() == dtype && distances_.size(0) >= rows &&
                      distances_.size(1) == cap;
  if (!usable) {
    distances_ = at::Tensor();  // free the old buffer before allocating its successor
    distances_ = at::empty({rows, cap}, at::TensorOptions().dtype(dtype));
  }
  return distances_.narrow(0, 0, rows);
}

// The chunk's fast squared distances to every slot, [b, K] on the CPU, computed on `device`,
// and the smallest of each row in `minima` (Note [Cheap rejections]).
// centred: [b, D'] keys less the centre; norms: [b] their squared norms (both on the CPU).
template <typename scalar_t>
at::Tensor SequentialCoreset::fast_distances(const at::Tensor& centred,
                                             const at::Tensor& norms,
                                             const at::Device& device,
                                             RowMinima& minima) {
  const int64_t rows = centred.size(0);
  const int64_t cap = options_.capacity;
  at::Tensor distances = distance_buffer(rows, dtype_);
  minima.value.assign(rows, kInf);
  if (device.is_cpu()) {
    at::mm_out(distances, centred, keys_centred_.t());
    scalar_t* d = distances.data_ptr<scalar_t>();
    const scalar_t* member_norms = key_norms_.data_ptr<scalar_t>();
    const scalar_t* norm = norms.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* row = d + r * cap;
        minima.value[r] = static_cast<double>(fold_row(row, member_norms, norm[r], cap));
      }
    });
    return distances;
  }

  sync_device_keys(device);
  const at::Tensor on_device = at::addmm(device_key_norms_.unsqueeze(0),
                                         centred.to(device),
                                         device_keys_centred_.t(),
                                         1,
                                         -2)
                                   .add_(norms.to(device).unsqueeze(1));
  const at::Tensor smallest = at::amin(on_device, 1);
  distances.copy_(on_device);
  store_minima(smallest.to(at::kCPU), minima);
  return distances;
}

// minima from the [b] smallest values of a chunk's distances.
void SequentialCoreset::store_minima(const at::Tensor& values, RowMinima& minima) {
  const at::Tensor v = values.to(at::kDouble).contiguous();
  const double* value = v.data_ptr<double>();
  minima.value.assign(value, value + v.numel());
}

template <typename scalar_t>
void SequentialCoreset::update_chunk(const at::Tensor& features, const at::Device& device) {
  // features: [b, D]; keys: [b, D']
  const at::Tensor keys = projection_.defined() ? project(features, projection_) : features;
  if (!centre_.defined()) {
    set_centre(keys);
  }

  // distances: [b, K], squared, against every slot; columns of empty slots are filled in as
  // members arrive (see walk).
  if (options_.distance == DistanceMode::kExact) {
    const int64_t rows = keys.size(0);
    at::Tensor distances = distance_buffer(rows, at::kDouble);
    double* d = distances.data_ptr<double>();
    const scalar_t* k = keys.data_ptr<scalar_t>();
    const scalar_t* m = keys_.data_ptr<scalar_t>();
    const int64_t cap = options_.capacity;
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t j = 0; j < size_; ++j) {
          d[i * cap + j] = squared_distance(k + i * key_dim_, m + j * key_dim_, key_dim_);
        }
      }
    });
    RowMinima minima;
    if (size_ == cap) {
      store_minima(at::amin(distances, 1), minima);
    }
    walk<scalar_t, double>(features, keys, at::Tensor(), at::Tensor(), distances, minima);
  } else {
    const at::Tensor centred = keys - centre_;
    const at::Tensor norms = centred.square().sum(1);
    RowMinima minima;
    at::Tensor distances = fast_distances<scalar_t>(centred, norms, device, minima);
    walk<scalar_t, scalar_t>(features, keys, centred, norms, distances, minima);
  }
}

// The one-at-a-time rule over a chunk, with the chunk's distances computed up front. Row i of
// `distances` is exact (or within the error bound) for every current member, because each slot
// written during the chunk has its column recomputed for the rows after i.
//
// Note [Cheap rejections]
// Once the coreset is full nearly every feature is rejected, so a rejection must cost O(1): the
// smallest fast distance of every row is taken with one vectorised min over the chunk and kept
// up to date as columns change: a row whose changed column held a value equal to its minimum
// (the minimum's slot is not kept: finding it cost a pass over the chunk) is rescanned when
// its turn comes. Column refreshes are one matrix-vector product in the fast mode.
template <typename scalar_t, typename dist_t>
void SequentialCoreset::walk(const at::Tensor& features,
                             const at::Tensor& keys,
                             const at::Tensor& centred,
                             const at::Tensor& norms,
                             at::Tensor& distances,
                             const RowMinima& minima) {
  const int64_t rows = features.size(0);
  const int64_t cap = options_.capacity;
  const bool exact_mode = options_.distance == DistanceMode::kExact;
  const scalar_t* x = features.data_ptr<scalar_t>();
  const scalar_t* k = keys.data_ptr<scalar_t>();
  const scalar_t* centre = centre_.data_ptr<scalar_t>();
  dist_t* d = distances.data_ptr<dist_t>();

  // row_min[r]: the smallest fast distance of row r over the members; valid unless dirty[r].
  // See Note [Cheap rejections].
  std::vector<double> row_min(rows, kInf);
  std::vector<uint8_t> dirty(rows, 1);
  if (size_ == cap) {
    row_min = minima.value;
    std::fill(dirty.begin(), dirty.end(), 0);
  }
  auto smallest = [&](int64_t r) {
    if (dirty[r]) {
      const dist_t* row = d + r * cap;
      row_min[r] = kInf;
      for (int64_t j = 0; j < size_; ++j) {
        row_min[r] = std::min(row_min[r], static_cast<double>(row[j]));
      }
      dirty[r] = 0;
    }
    return row_min[r];
  };

  // After `slot` is written at row i, the rows after i need its column: one matrix-vector
  // product of their centred keys in the fast mode, exact differences in the exact mode.
  auto refresh_column = [&](int64_t slot, int64_t i) {
    const int64_t count = rows - i - 1;
    if (count <= 0) {
      return;
    }
    std::vector<scalar_t> dots;
    if (!exact_mode) {
      dots.resize(count);
      dot_rows(centred.data_ptr<scalar_t>() + (i + 1) * key_dim_,
               count,
               key_dim_,
               keys_centred_.data_ptr<scalar_t>() + slot * key_dim_,
               dots.data());
    }
    const scalar_t* dot = exact_mode ? nullptr : dots.data();
    const scalar_t* norm = exact_mode ? nullptr : norms.data_ptr<scalar_t>();
    const double member_norm = static_cast<double>(key_norms_.data_ptr<scalar_t>()[slot]);
    const scalar_t* member = keys_.data_ptr<scalar_t>() + slot * key_dim_;
    for (int64_t r = i + 1; r < rows; ++r) {
      const double value =
          exact_mode ? squared_distance(k + r * key_dim_, member, key_dim_)
                     : static_cast<double>(norm[r]) + member_norm -
                           2.0 * static_cast<double>(dot[r - i - 1]);
      const double previous = static_cast<double>(d[r * cap + slot]);
      d[r * cap + slot] = static_cast<dist_t>(value);
      if (dirty[r]) {
        continue;
      }
      const double stored = static_cast<double>(d[r * cap + slot]);
      if (stored <= row_min[r]) {
        row_min[r] = stored;
      } else if (previous == row_min[r]) {
        dirty[r] = 1;  // the minimum may have sat in this column, and it went up
      }
    }
  };

  for (int64_t i = 0; i < rows; ++i) {
    ++seen_;
    const scalar_t* key = k + i * key_dim_;
    const dist_t* row = d + i * cap;
    double norm = 0.0;
    for (int64_t c = 0; c < key_dim_; ++c) {
      const double value = static_cast<double>(key[c]) - static_cast<double>(centre[c]);
      norm += value * value;
    }
    const double bound = error_bound(norm);

    int64_t slot = -1;
    if (size_ < cap) {
      const auto [first, second] = nearest_two<scalar_t, dist_t>(key, row, bound, -1);
      if (first.distance2 == 0.0) {
        ++duplicates_;
        continue;
      }
      slot = size_;
      write_slot<scalar_t>(slot, x + i * dim_, key);
      size_ += 1;
      nn_distance2_[slot] = first.distance2;
      nn_slot_[slot] = first.slot;
      second_distance2_[slot] = second.distance2;
      second_slot_[slot] = second.slot;
      offer<scalar_t, dist_t>(slot, row, bound, nullptr);
      ++added_;
    } else {
      // Reject at once when even the most favourable rounding cannot make d_p exceed d_m.
      if (smallest(i) + bound <= min_distance2_ ||
          nearest_two<scalar_t, dist_t>(key, row, bound, -1).first.distance2 <= min_distance2_) {
        ++rejected_;
        continue;
      }

      slot = eviction_slot<scalar_t>();
      write_slot<scalar_t>(slot, x + i * dim_, key);
      const auto [first, second] = nearest_two<scalar_t, dist_t>(key, row, bound, slot);
      nn_distance2_[slot] = first.distance2;
      nn_slot_[slot] = first.slot;
      second_distance2_[slot] = second.distance2;
      second_slot_[slot] = second.slot;
      std::vector<int64_t> stale;
      offer<scalar_t, dist_t>(slot, row, bound, &stale);
      refresh_nearest<scalar_t>(stale);
      ++replaced_;
    }

    refresh_closest_pair();
    refresh_column(slot, i);
  }
}

template <typename scalar_t>
void SequentialCoreset::write_slot(int64_t slot, const scalar_t* feature, const scalar_t* key) {
  std::memcpy(members_.data_ptr<scalar_t>() + slot * dim_, feature, dim_ * sizeof(scalar_t));
  if (projection_.defined()) {
    std::memcpy(keys_.data_ptr<scalar_t>() + slot * key_dim_, key, key_dim_ * sizeof(scalar_t));
  }

  // The centred copy feeds the fast distances only, so its rounding never changes a decision.
  const scalar_t* centre = centre_.data_ptr<scalar_t>();
  scalar_t* centred = keys_centred_.data_ptr<scalar_t>() + slot * key_dim_;
  double norm = 0.0;
  for (int64_t c = 0; c < key_dim_; ++c) {
    centred[c] = key[c] - centre[c];
    norm += static_cast<double>(centred[c]) * static_cast<double>(centred[c]);
  }
  key_norms_.data_ptr<scalar_t>()[slot] = static_cast<scalar_t>(norm);
  scalar_t* by_column = keys_by_column_.data_ptr<scalar_t>();
  const int64_t stride = keys_by_column_.size(1);
  for (int64_t c = 0; c < key_dim_; ++c) {
    by_column[c * stride + slot] = centred[c];
  }

  // A bound that only grows stays valid when the largest member leaves.
  max_key_norm_ = std::max(max_key_norm_, norm);

  if (device_keys_centred_.defined()) {
    stale_device_slots_.push_back(slot);
  }
}

// Note [Second nearest on demand]
// Every member keeps its nearest other member exactly (the rule needs d_m and the closest
// pair) and its second nearest for the eviction choice, which reads it only for the two ends
// of the closest pair. When a replacement evicts a member, a member that had it as its
// nearest takes its second as the new nearest, exactly, and one that had it as its second
// only loses the second; in both cases the second becomes unknown (kUnknownSlot) instead of
// costing a search of the whole coreset. An unknown second is searched for when the eviction
// choice needs it, before an evict_one, and (in a copy) when the state is saved; a member
// whose nearest leaves while its second is unknown is searched at once. Offers keep working
// meanwhile: a newcomer nearer than the nearest makes the old nearest the second, exactly.
// The decisions are those of a builder that searches eagerly, and the searches per
// replacement fell from 3.4 to 1.75 (667,648 real features, K = 6676), and the build from
// 16.3 s to about 13 s.

// Offers the member just written to `slot` as one of the two nearest to every other member,
// given `row`, its fast (or exact) squared distances to them. Members that counted the slot's
// previous occupant among their two nearest are collected into `stale` instead: they need a
// full search. Without `stale`, members that already count the slot are left alone.
template <typename scalar_t, typename dist_t>
void SequentialCoreset::offer(int64_t slot,
                              const dist_t* row,
                              double bound,
                              std::vector<int64_t>* stale) {
  const scalar_t* m = keys_.data_ptr<scalar_t>();
  const scalar_t* key = m + slot * key_dim_;
  for (int64_t j = 0; j < size_; ++j) {
    if (j == slot) {
      continue;
    }
    if (nn_slot_[j] == slot || second_slot_[j] == slot) {
      if (stale == nullptr) {
        continue;
      }
      // The slot's previous occupant has left (Note [Second nearest on demand]).
      if (nn_slot_[j] == slot && second_slot_[j] < 0) {
        stale->push_back(j);  // nothing to promote: search
        continue;
      }
      if (nn_slot_[j] == slot) {
        nn_distance2_[j] = second_distance2_[j];
        nn_slot_[j] = second_slot_[j];
      }
      second_distance2_[j] = kInf;
      second_slot_[j] = kUnknownSlot;
    }
    // Only a member closer than the second (or, with the second unknown, than the nearest)
    // changes the two nearest.
    const double reach =
        second_slot_[j] == kUnknownSlot ? nn_distance2_[j] : second_distance2_[j];
    if (static_cast<double>(row[j]) - bound > reach) {
      continue;
    }
    keep_nearest_two(j, squared_distance(key, m + j * key_dim_, key_dim_), slot);
  }
}

// Inserts (distance2, slot) into a member's two nearest, ordered by distance then slot.
void SequentialCoreset::keep_nearest_two(int64_t member, double distance2, int64_t slot) {
  auto before = [](double d1, int64_t s1, double d2, int64_t s2) {
    return d1 != d2 ? d1 < d2 : (s2 < 0 || s1 < s2);
  };
  if (before(distance2, slot, nn_distance2_[member], nn_slot_[member])) {
    second_distance2_[member] = nn_distance2_[member];
    second_slot_[member] = nn_slot_[member];
    nn_distance2_[member] = distance2;
    nn_slot_[member] = slot;
  } else if (second_slot_[member] == kUnknownSlot) {
    // Closer than an unknown second or not: only a search can tell.
  } else if (before(distance2, slot, second_distance2_[member], second_slot_[member])) {
    second_distance2_[member] = distance2;
    second_slot_[member] = slot;
  }
}

// Fast (or, in exact mode, exact) squared distances from a member to every member.
template <typename scalar_t>
std::vector<double> SequentialCoreset::distances_to_member(int64_t slot) const {
  std::vector<double> row(size_);
  if (options_.distance == DistanceMode::kExact) {
    const scalar_t* m = keys_.data_ptr<scalar_t>();
    for (int64_t j = 0; j < size_; ++j) {
      row[j] = squared_distance(m + slot * key_dim_, m + j * key_dim_, key_dim_);
    }
    return row;
  }

  std::vector<scalar_t> dot(size_);
  const scalar_t* centred = keys_centred_.data_ptr<scalar_t>();
  dot_rows(centred, size_, key_dim_, centred + slot * key_dim_, dot.data());
  const scalar_t* norms = key_norms_.data_ptr<scalar_t>();
  for (int64_t j = 0; j < size_; ++j) {
    row[j] = static_cast<double>(norms[slot]) + static_cast<double>(norms[j]) -
             2.0 * static_cast<double>(dot[j]);
  }
  return row;
}

// The two members nearest to `key`, exact, ordered by (distance, slot), leaving out `skip`.
// `distances` holds its fast squared distances to every member; only members within twice the
// bound of the second smallest can be among the two nearest exactly, so only those are exact.
template <typename scalar_t, typename dist_t>
std::pair<SequentialCoreset::Neighbour, SequentialCoreset::Neighbour>
SequentialCoreset::nearest_two(const scalar_t* key,
                               const dist_t* distances,
                               double bound,
                               int64_t skip) const {
  double first = kInf;
  double second = kInf;
  for (int64_t j = 0; j < size_; ++j) {
    const double value = static_cast<double>(distances[j]);
    if (j == skip || value >= second) {
      continue;
    }
    second = value < first ? first : value;
    first = std::min(first, value);
  }

  std::pair<Neighbour, Neighbour> best{{kInf, -1}, {kInf, -1}};
  const scalar_t* m = keys_.data_ptr<scalar_t>();
  for (int64_t j = 0; j < size_; ++j) {
    if (j == skip || static_cast<double>(distances[j]) > second + 2.0 * bound) {
      continue;
    }
    const double exact = squared_distance(key, m + j * key_dim_, key_dim_);
    if (exact < best.first.distance2) {
      best.second = best.first;
      best.first = {exact, j};
    } else if (exact < best.second.distance2) {
      best.second = {exact, j};
    }
  }
  return best;
}

// Note [Stale members in groups]
// Members whose two nearest must be searched for again over the whole coreset (after a
// replacement, 3.4 on average with real features at K = 6676 before Note [Second nearest on
// demand], 1.75 since) were searched one at a time with a dot product per key, a quarter of
// a build's time. The searches take four members at a time against a copy of the centred
// keys stored by column (keys_by_column_, K * D' values more), which reads the keys once per
// four members and needs no horizontal sums. The products are fast distances like any other, within the
// error bound, so the exact search that follows decides as before.
// The two members nearest to member `slot`, given its fast (or exact) squared distances `row`
// to every member.
template <typename scalar_t>
std::pair<SequentialCoreset::Neighbour, SequentialCoreset::Neighbour>
SequentialCoreset::nearest_two_of(int64_t slot, const double* row) const {
  const double bound = error_bound(static_cast<double>(key_norms_.data_ptr<scalar_t>()[slot]));
  return nearest_two<scalar_t, double>(keys_.data_ptr<scalar_t>() + slot * key_dim_, row, bound,
                                       slot);
}

template <typename scalar_t>
void SequentialCoreset::refresh_nearest(const std::vector<int64_t>& slots) {
  const scalar_t* norms = key_norms_.data_ptr<scalar_t>();
  auto store = [&](int64_t slot, const double* row) {
    const auto [first, second] = nearest_two_of<scalar_t>(slot, row);
    nn_distance2_[slot] = first.distance2;
    nn_slot_[slot] = first.slot;
    second_distance2_[slot] = second.distance2;
    second_slot_[slot] = second.slot;
  };

  if (options_.distance == DistanceMode::kExact) {
    for (const int64_t slot : slots) {
      store(slot, distances_to_member<scalar_t>(slot).data());
    }
    return;
  }

  const scalar_t* centred = keys_centred_.data_ptr<scalar_t>();
  const scalar_t* columns = keys_by_column_.data_ptr<scalar_t>();
  std::vector<scalar_t> dots(4 * size_);
  std::vector<double> row(size_);
  for (size_t start = 0; start < slots.size(); start += 4) {
    const size_t group = std::min<size_t>(4, slots.size() - start);
    const scalar_t* vectors[4];
    for (size_t v = 0; v < group; ++v) {
      vectors[v] = centred + slots[start + v] * key_dim_;
    }
    dot_columns(columns, keys_by_column_.size(1), size_, key_dim_, vectors,
                static_cast<int>(group), dots.data());
    for (size_t v = 0; v < group; ++v) {
      const int64_t slot = slots[start + v];
      const scalar_t* dot = dots.data() + v * size_;
      for (int64_t j = 0; j < size_; ++j) {
        row[j] = static_cast<double>(norms[slot]) + static_cast<double>(norms[j]) -
                 2.0 * static_cast<double>(dot[j]);
      }
      store(slot, row.data());
    }
  }
}

// Searches for the second nearest of those `slots` whose second is unknown.
template <typename scalar_t>
void SequentialCoreset::find_seconds(std::vector<int64_t> slots) {
  slots.erase(std::remove_if(slots.begin(), slots.end(),
                             [&](int64_t j) { return second_slot_[j] != kUnknownSlot; }),
              slots.end());
  refresh_nearest<scalar_t>(slots);
}

// Of the closest pair (a, b), the endpoint whose second-nearest member is closer: removing it
// loses the least coverage. Ties go to the lower slot.
template <typename scalar_t>
int64_t SequentialCoreset::eviction_slot() {
  const int64_t a = closest_;
  const int64_t b = nn_slot_[a];
  find_seconds<scalar_t>({a, b});
  const double second_a = second_distance2_[a];
  const double second_b = second_distance2_[b];
  if (second_a != second_b) {
    return second_a < second_b ? a : b;
  }
  return std::min(a, b);
}

void SequentialCoreset::refresh_closest_pair() {
  closest_ = -1;
  min_distance2_ = kInf;
  if (size_ < 2) {
    return;
  }
  for (int64_t j = 0; j < size_; ++j) {
    if (nn_distance2_[j] < min_distance2_) {
      min_distance2_ = nn_distance2_[j];
      closest_ = j;
    }
  }
}

// Removes one member by the eviction choice and moves the last member into its slot, keeping
// the nearest-member bookkeeping exact (ties to the lower slot included).
template <typename scalar_t>
void SequentialCoreset::evict_one() {
  // The renaming below needs every member's second (a tie may reorder).
  std::vector<int64_t> all(size_);
  std::iota(all.begin(), all.end(), int64_t{0});
  find_seconds<scalar_t>(all);
  const int64_t slot = eviction_slot<scalar_t>();
  const int64_t last = size_ - 1;

  // Members that counted the evicted one among their two nearest need a full search; the last
  // member moves into the freed slot, so references to it are renamed.
  std::vector<int64_t> stale;
  for (int64_t j = 0; j < size_; ++j) {
    if (j != slot && (nn_slot_[j] == slot || second_slot_[j] == slot)) {
      stale.push_back(j == last ? slot : j);
    }
  }
  for (int64_t j = 0; j < size_; ++j) {
    nn_slot_[j] = nn_slot_[j] == last ? slot : nn_slot_[j];
    second_slot_[j] = second_slot_[j] == last ? slot : second_slot_[j];
    // The renamed slot is lower, which can reorder a tie.
    if (second_distance2_[j] == nn_distance2_[j] && second_slot_[j] >= 0 &&
        second_slot_[j] < nn_slot_[j]) {
      std::swap(nn_slot_[j], second_slot_[j]);
    }
  }
  if (slot != last) {
    const scalar_t* feature = members_.data_ptr<scalar_t>() + last * dim_;
    const scalar_t* key = keys_.data_ptr<scalar_t>() + last * key_dim_;
    std::vector<scalar_t> feature_copy(feature, feature + dim_);
    std::vector<scalar_t> key_copy(key, key + key_dim_);
    write_slot<scalar_t>(slot, feature_copy.data(), key_copy.data());
    nn_distance2_[slot] = nn_distance2_[last];
    nn_slot_[slot] = nn_slot_[last];
    second_distance2_[slot] = second_distance2_[last];
    second_slot_[slot] = second_slot_[last];
  }
  size_ -= 1;
  nn_distance2_[size_] = kInf;
  nn_slot_[size_] = -1;
  second_distance2_[size_] = kInf;
  second_slot_[size_] = -1;

  // The moved member now sits at a lower slot, which can win ties it used to lose.
  if (slot < size_) {
    const std::vector<double> row = distances_to_member<scalar_t>(slot);
    offer<scalar_t, double>(slot, row.data(),
                            error_bound(static_cast<double>(key_norms_.data_ptr<scalar_t>()[slot])),
                            nullptr);
  }
  stale.erase(std::remove_if(stale.begin(), stale.end(), [&](int64_t j) { return j >= size_; }),
              stale.end());
  refresh_nearest<scalar_t>(stale);
  refresh_closest_pair();
}

void SequentialCoreset::set_capacity(int64_t capacity) {
  TORCH_CHECK(capacity >= 1, "capacity should be >= 1, got ", capacity);
  SequentialCoresetOptions resized = options_;
  resized.capacity = capacity;
  sequential_coreset_bytes(dim_, dtype_, resized);

  AT_DISPATCH_FLOATING_TYPES(dtype_, "sequential_coreset_set_capacity", [&] {
    while (size_ > capacity) {
      evict_one<scalar_t>();
    }
  });
  allocate(capacity);
  chunk_size_ = resolve_chunk(dim_, dtype_, options_);
}

SequentialCoreset SequentialCoreset::from_members(const at::Tensor& members,
                                                  const SequentialCoresetOptions& options) {
  check_features(members, "members");
  TORCH_CHECK(members.size(0) <= options.capacity,
              "members should have at most capacity = ",
              options.capacity,
              " rows, got ",
              members.size(0));
  SequentialCoreset coreset(members.size(1), members.scalar_type(), options);
  const at::Tensor features = members.to(at::kCPU).contiguous();
  const at::Tensor keys = coreset.keys(features);
  if (features.size(0) == 0) {
    return coreset;
  }
  coreset.set_centre(keys);

  AT_DISPATCH_FLOATING_TYPES(coreset.dtype_, "sequential_coreset_from_members", [&] {
    const scalar_t* f = features.data_ptr<scalar_t>();
    const scalar_t* k = keys.data_ptr<scalar_t>();
    for (int64_t j = 0; j < features.size(0); ++j) {
      coreset.write_slot<scalar_t>(j, f + j * coreset.dim_, k + j * coreset.key_dim_);
    }
    coreset.size_ = features.size(0);
    std::vector<int64_t> all(coreset.size_);
    std::iota(all.begin(), all.end(), int64_t{0});
    coreset.refresh_nearest<scalar_t>(all);
  });
  coreset.refresh_closest_pair();
  return coreset;
}

at::Tensor SequentialCoreset::coreset() const { return members_.narrow(0, 0, size_).clone(); }

at::Tensor SequentialCoreset::nearest_distances() const {
  at::Tensor out = at::empty({size_}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (int64_t j = 0; j < size_; ++j) {
    o[j] = std::sqrt(nn_distance2_[j]);
  }
  return out.to(dtype_);
}

at::Tensor SequentialCoreset::nearest_indices() const {
  at::Tensor out = at::empty({size_}, at::kLong);
  std::copy(nn_slot_.begin(), nn_slot_.begin() + size_, out.data_ptr<int64_t>());
  return out;
}

double SequentialCoreset::min_distance() const { return std::sqrt(min_distance2_); }

std::map<std::string, at::Tensor> SequentialCoreset::state() const {
  std::map<std::string, at::Tensor> state;
  state["version"] = at::tensor({kStateVersion}, at::kLong);
  state["options"] = at::tensor({options_.capacity,
                                 static_cast<int64_t>(options_.distance),
                                 options_.projection_dim,
                                 static_cast<int64_t>(options_.seed),
                                 options_.chunk_size,
                                 options_.memory_budget_bytes,
                                 dim_,
                                 static_cast<int64_t>(dtype_ == at::kDouble)},
                                at::kLong);
  state["counters"] = at::tensor({seen_, added_, duplicates_, replaced_, rejected_}, at::kLong);
  state["members"] = coreset();
  state["nn_distance2"] =
      at::tensor(std::vector<double>(nn_distance2_.begin(), nn_distance2_.begin() + size_),
                 at::kDouble);
  state["nn_slot"] = nearest_indices();
  // Seconds not searched for yet are searched for here, into the copy: the state holds every
  // member's two nearest, as a build that never deferred a search would.
  std::vector<double> second_distance2(second_distance2_.begin(),
                                       second_distance2_.begin() + size_);
  std::vector<int64_t> second_slot(second_slot_.begin(), second_slot_.begin() + size_);
  AT_DISPATCH_FLOATING_TYPES(dtype_, "sequential_coreset_state", [&] {
    for (int64_t j = 0; j < size_; ++j) {
      if (second_slot[j] == kUnknownSlot) {
        const auto second = nearest_two_of<scalar_t>(j, distances_to_member<scalar_t>(j).data())
                                .second;
        second_distance2[j] = second.distance2;
        second_slot[j] = second.slot;
      }
    }
  });
  state["second_distance2"] = at::tensor(second_distance2, at::kDouble);
  state["second_slot"] = at::tensor(second_slot, at::kLong);
  state["centre"] = centre_.defined() ? centre_.clone() : at::empty({0}, dtype_);
  return state;
}

SequentialCoreset SequentialCoreset::from_state(const std::map<std::string, at::Tensor>& state) {
  auto get = [&](const char* name, int64_t numel) {
    const auto it = state.find(name);
    TORCH_CHECK(it != state.end(), "coreset state has no '", name, "' entry");
    TORCH_CHECK(numel < 0 || it->second.numel() == numel,
                "coreset state entry '",
                name,
                "' should have ",
                numel,
                " values, got ",
                it->second.numel());
    return it->second.to(at::kCPU).contiguous();
  };
  const int64_t version = get("version", 1).item<int64_t>();
  TORCH_CHECK(version == 1 || version == kStateVersion,
              "coreset state version should be 1 or ",
              kStateVersion,
              ", got ",
              version);

  const at::Tensor options_tensor = get("options", 8).to(at::kLong);
  const int64_t* o = options_tensor.data_ptr<int64_t>();
  SequentialCoresetOptions options;
  options.capacity = o[0];
  TORCH_CHECK(o[1] == 0 || o[1] == 1, "coreset state has an unknown distance mode ", o[1]);
  options.distance = static_cast<DistanceMode>(o[1]);
  options.projection_dim = o[2];
  options.seed = static_cast<uint64_t>(o[3]);
  options.chunk_size = o[4];
  options.memory_budget_bytes = o[5];
  const int64_t dim = o[6];
  const at::ScalarType dtype = o[7] != 0 ? at::kDouble : at::kFloat;

  SequentialCoreset coreset(dim, dtype, options);
  const at::Tensor members = get("members", -1).to(dtype);
  const int64_t size = members.size(0);
  TORCH_CHECK(members.dim() == 2 && members.size(1) == dim && size <= options.capacity,
              "coreset state members should be [n <= ",
              options.capacity,
              ", ",
              dim,
              "], got ",
              members.sizes());
  const at::Tensor nn_distance2 = get("nn_distance2", size).to(at::kDouble);
  const at::Tensor nn_slot = get("nn_slot", size).to(at::kLong);
  const at::Tensor counters = get("counters", 5).to(at::kLong);
  const at::Tensor centre = get("centre", -1);

  if (centre.numel() > 0) {
    TORCH_CHECK(centre.numel() == coreset.key_dim_,
                "coreset state centre should have ",
                coreset.key_dim_,
                " values, got ",
                centre.numel());
    coreset.centre_ = centre.to(dtype).reshape({coreset.key_dim_});
  }
  if (size > 0) {
    TORCH_CHECK(coreset.centre_.defined(), "coreset state has members but no centre");
    const at::Tensor keys = coreset.keys(members);
    AT_DISPATCH_FLOATING_TYPES(dtype, "sequential_coreset_from_state", [&] {
      for (int64_t j = 0; j < size; ++j) {
        coreset.write_slot<scalar_t>(j,
                                     members.data_ptr<scalar_t>() + j * dim,
                                     keys.data_ptr<scalar_t>() + j * coreset.key_dim_);
      }
    });
  }
  coreset.size_ = size;
  const double* nd = nn_distance2.data_ptr<double>();
  const int64_t* ns = nn_slot.data_ptr<int64_t>();
  for (int64_t j = 0; j < size; ++j) {
    TORCH_CHECK(ns[j] >= -1 && ns[j] < size && ns[j] != j,
                "coreset state nn_slot[", j, "] = ", ns[j], " is not another member");
    coreset.nn_distance2_[j] = nd[j];
    coreset.nn_slot_[j] = ns[j];
  }
  if (version == 1) {
    // Version 1 kept only the nearest member; the second comes from a search.
    AT_DISPATCH_FLOATING_TYPES(dtype, "sequential_coreset_from_state_v1", [&] {
      std::vector<int64_t> all(size);
      std::iota(all.begin(), all.end(), int64_t{0});
      coreset.refresh_nearest<scalar_t>(all);
    });
  } else {
    const at::Tensor second_distance2 = get("second_distance2", size).to(at::kDouble);
    const at::Tensor second_slot = get("second_slot", size).to(at::kLong);
    const double* sd = second_distance2.data_ptr<double>();
    const int64_t* ss = second_slot.data_ptr<int64_t>();
    for (int64_t j = 0; j < size; ++j) {
      TORCH_CHECK(ss[j] >= -1 && ss[j] < size && ss[j] != j && (ss[j] != ns[j] || ss[j] < 0),
                  "coreset state second_slot[", j, "] = ", ss[j], " is not another member");
      coreset.second_distance2_[j] = sd[j];
      coreset.second_slot_[j] = ss[j];
    }
  }
  const int64_t* c = counters.data_ptr<int64_t>();
  coreset.seen_ = c[0];
  coreset.added_ = c[1];
  coreset.duplicates_ = c[2];
  coreset.replaced_ = c[3];
  coreset.rejected_ = c[4];
  coreset.refresh_closest_pair();
  return coreset;
}

SequentialCoreset meld_coresets(const SequentialCoreset& base,
                                const at::Tensor& other,
                                int64_t capacity) {
  check_features(other, "other");
  TORCH_CHECK(other.size(1) == base.dim(),
              "cannot meld coresets of different dims: ",
              base.dim(),
              " and ",
              other.size(1));
  TORCH_CHECK(capacity >= 0, "capacity should be >= 0 (0 = keep), got ", capacity);

  SequentialCoreset melded = SequentialCoreset::from_state(base.state());
  if (capacity > 0) {
    melded.set_capacity(capacity);
  }
  if (other.size(0) == 0) {
    return melded;
  }

  // Most novel first: by distance to the base's members, ties by row (a stable sort).
  const at::Tensor incoming = other.to(at::kCPU, base.dtype()).contiguous();
  at::Tensor order = at::arange(incoming.size(0), at::kLong);
  if (base.size() > 0) {
    const auto [distances, indices] = nearest_neighbors(
        base.keys(incoming), base.keys(base.coreset()), 1, base.options().distance);
    order = std::get<1>(at::sort(distances.squeeze(1), /*stable=*/true, /*dim=*/0,
                                 /*descending=*/true));
  }
  melded.update(incoming.index_select(0, order));
  return melded;
}

}  // namespace spc
