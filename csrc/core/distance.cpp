#include "core/distance.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "common/rng.h"

namespace spc {
namespace {

// Note [Blocked CPU search]
// The fast search never holds a [q, n] matrix, nor even a [chunk, n] one. Each thread claims
// blocks of up to kBlockRows queries and walks the bank in blocks of kBlockColumns rows: one
// single-threaded matrix product per block, whose products (2 MiB in float32) are still in the
// core's cache when the thread scans them. Blocks this large also spread the packing the matrix
// product does over many products. The scan folds the products into a running minimum (or a
// heap of the keep smallest) and keeps the few bank rows within the error slack of it; only
// those get exact distances at the end. The whole search is one parallel region, so threads
// never wait for each other between blocks (which costs dearly on a busy machine), and a
// thread slowed by other work just claims fewer blocks.
constexpr int64_t kBlockRows = 1024;
constexpr int64_t kBlockColumns = 512;

// Note [BLAS inside our threads]
// Each thread multiplies its own blocks, so the BLAS call inside must use that one thread.
// OpenBLAS and oneDNN see the enclosing OpenMP region and do so; MKL, torch's BLAS on x86, does
// not, because torch turns MKL's dynamic adjustment off: every thread would start a team of its
// own and oversubscribe the cores (two threads ran slower than one). MKL's per-thread setting
// (its C entry point; the lower-case name is the Fortran one, which takes a pointer) is a weak
// reference, resolved from torch's library where it exports it and null elsewhere.
#if defined(__linux__) && defined(__x86_64__)
extern "C" int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));
#define SPC_MKL_LOCAL_THREADS MKL_Set_Num_Threads_Local
#else
#define SPC_MKL_LOCAL_THREADS static_cast<int (*)(int)>(nullptr)
#endif

class SingleThreadedBlas {
 public:
  SingleThreadedBlas()
      : previous_(SPC_MKL_LOCAL_THREADS != nullptr ? SPC_MKL_LOCAL_THREADS(1) : 0) {}
  ~SingleThreadedBlas() {
    if (SPC_MKL_LOCAL_THREADS != nullptr) {
      SPC_MKL_LOCAL_THREADS(previous_);  // 0 restores the global setting
    }
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_;
};

template <typename scalar_t>
bool all_finite(const scalar_t* data, int64_t count) {
  return at::parallel_reduce(
      0,
      count,
      int64_t{1} << 16,
      true,
      [&](int64_t begin, int64_t end, bool ok) {
        for (int64_t i = begin; i < end && ok; ++i) {
          ok = std::isfinite(static_cast<double>(data[i]));
        }
        return ok;
      },
      [](bool a, bool b) { return a && b; });
}

// Selects the `keep` smallest (distance, index) pairs from `candidates`, ordered by distance and
// then index, which is the tie rule of the whole library.
void keep_smallest(std::vector<std::pair<double, int64_t>>& candidates, int64_t keep) {
  const auto count = static_cast<int64_t>(candidates.size());
  keep = std::min(keep, count);
  std::partial_sort(candidates.begin(), candidates.begin() + keep, candidates.end());
  candidates.resize(keep);
}

template <typename scalar_t>
void write_row(const std::vector<std::pair<double, int64_t>>& nearest,
               scalar_t* distances,
               int64_t* indices) {
  for (size_t j = 0; j < nearest.size(); ++j) {
    distances[j] = static_cast<scalar_t>(std::sqrt(nearest[j].first));
    indices[j] = nearest[j].second;
  }
}

template <typename scalar_t>
void search_exact(const at::Tensor& queries,
                  const at::Tensor& bank,
                  int64_t k,
                  at::Tensor& distances,
                  at::Tensor& indices) {
  const int64_t num_queries = queries.size(0);
  const int64_t num_bank = bank.size(0);
  const int64_t dim = queries.size(1);
  const scalar_t* q = queries.data_ptr<scalar_t>();
  const scalar_t* b = bank.data_ptr<scalar_t>();
  scalar_t* out_distances = distances.data_ptr<scalar_t>();
  int64_t* out_indices = indices.data_ptr<int64_t>();

  at::parallel_for(0, num_queries, 1, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<double, int64_t>> candidates(num_bank);
    for (int64_t i = begin; i < end; ++i) {
      candidates.resize(num_bank);
      for (int64_t j = 0; j < num_bank; ++j) {
        candidates[j] = {squared_distance(q + i * dim, b + j * dim, dim), j};
      }
      keep_smallest(candidates, k);
      write_row(candidates, out_distances + i * k, out_indices + i * k);
    }
  });
}

// The state of one query during the blocked search: the running keep-th smallest fast value
// and every bank row that may still be among the keep nearest exactly. Values are fast squared
// distances less the query's squared norm, which is the same for the whole row and so changes
// no comparison.
template <typename scalar_t>
struct RowSearch {
  scalar_t kth = std::numeric_limits<scalar_t>::infinity();
  std::vector<scalar_t> heap;  // max-heap of the keep smallest values so far (keep > 1 only)
  std::vector<std::pair<scalar_t, int64_t>> candidates;

  void reset() {
    kth = std::numeric_limits<scalar_t>::infinity();
    heap.clear();
    candidates.clear();
  }
};

// The scan below is the only per-element work besides the matrix product; it vectorises, and on
// x86-64 Linux the loader picks the widest instruction set the CPU has (the library itself is
// compiled for the baseline).
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define SPC_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SPC_VECTOR_CLONES
#endif

// Turns dot products into values (||m_j||^2 - 2 x.m_j, in place) and returns their minimum.
// products, norms: [count]
template <typename scalar_t>
inline scalar_t fold_values_impl(scalar_t* __restrict products,
                                 const scalar_t* __restrict norms,
                                 int64_t count) {
  scalar_t smallest = std::numeric_limits<scalar_t>::infinity();
#pragma omp simd reduction(min : smallest)
  for (int64_t j = 0; j < count; ++j) {
    const scalar_t value = norms[j] - 2 * products[j];
    products[j] = value;
    smallest = std::min(smallest, value);
  }
  return smallest;
}

SPC_VECTOR_CLONES float fold_values(float* products, const float* norms, int64_t count) {
  return fold_values_impl(products, norms, count);
}

SPC_VECTOR_CLONES double fold_values(double* products, const double* norms, int64_t count) {
  return fold_values_impl(products, norms, count);
}

// How many of values[0, count) are at or below `cutoff`. products: [count]
template <typename scalar_t>
inline int64_t count_at_most_impl(const scalar_t* __restrict values,
                                  int64_t count,
                                  scalar_t cutoff) {
  int64_t hits = 0;
#pragma omp simd reduction(+ : hits)
  for (int64_t j = 0; j < count; ++j) {
    hits += values[j] <= cutoff ? 1 : 0;
  }
  return hits;
}

SPC_VECTOR_CLONES int64_t count_at_most(const float* values, int64_t count, float cutoff) {
  return count_at_most_impl(values, count, cutoff);
}

SPC_VECTOR_CLONES int64_t count_at_most(const double* values, int64_t count, double cutoff) {
  return count_at_most_impl(values, count, cutoff);
}

// The smallest scalar_t at or above `bound`: comparing values against it keeps every value at
// or below the bound (and perhaps one more, which the exact distances then sort out).
template <typename scalar_t>
scalar_t round_up(double bound) {
  const auto rounded = static_cast<scalar_t>(bound);
  return static_cast<double>(rounded) >= bound
             ? rounded
             : std::nextafter(rounded, std::numeric_limits<scalar_t>::infinity());
}

// Folds one block of a query's products with bank rows [first, first + count) into its search.
// products: [count] dot products of the centred query with the centred bank rows, overwritten
// with the values; norms: [count] squared norms of those bank rows.
template <typename scalar_t>
void scan_block(scalar_t* products,
                const scalar_t* norms,
                int64_t first,
                int64_t count,
                int64_t keep,
                double slack,
                RowSearch<scalar_t>& search) {
  const scalar_t block_min = fold_values(products, norms, count);
  if (keep == 1) {
    search.kth = std::min(search.kth, block_min);
  }

  // The keep-th smallest only falls, so a value above the cutoff now can never be needed. With
  // keep > 1 the cutoff still uses the keep-th smallest before this block, which keeps a
  // superset: everything that enters the heap below is collected first.
  scalar_t cutoff = round_up<scalar_t>(static_cast<double>(search.kth) + slack);
  if (block_min > cutoff) {
    return;
  }
  auto& candidates = search.candidates;
  const size_t known = candidates.size();
  constexpr int64_t kSpan = 64;
  for (int64_t begin = 0; begin < count; begin += kSpan) {
    const int64_t end = std::min(count, begin + kSpan);
    if (count_at_most(products + begin, end - begin, cutoff) == 0) {
      continue;
    }
    for (int64_t j = begin; j < end; ++j) {
      if (products[j] <= cutoff) {
        candidates.emplace_back(products[j], first + j);
      }
    }
  }

  if (keep > 1) {
    auto& heap = search.heap;
    for (size_t c = known; c < candidates.size(); ++c) {
      const scalar_t value = candidates[c].first;
      if (static_cast<int64_t>(heap.size()) < keep) {
        heap.push_back(value);
        std::push_heap(heap.begin(), heap.end());
      } else if (value < heap.front()) {
        std::pop_heap(heap.begin(), heap.end());
        heap.back() = value;
        std::push_heap(heap.begin(), heap.end());
      }
    }
    if (static_cast<int64_t>(heap.size()) == keep) {
      search.kth = heap.front();
    }
    cutoff = round_up<scalar_t>(static_cast<double>(search.kth) + slack);
  }
  if (static_cast<int64_t>(candidates.size()) > 4 * keep + 64) {
    candidates.erase(
        std::remove_if(candidates.begin(),
                       candidates.end(),
                       [&](const std::pair<scalar_t, int64_t>& c) { return c.first > cutoff; }),
        candidates.end());
  }
}

// See Note [Exact decisions from fast distances] and Note [Blocked CPU search].
template <typename scalar_t>
void search_matmul(const at::Tensor& queries,
                   const at::Tensor& bank,
                   int64_t k,
                   int64_t block_rows,
                   at::Tensor& distances,
                   at::Tensor& indices) {
  const int64_t num_queries = queries.size(0);
  const int64_t num_bank = bank.size(0);
  const int64_t dim = queries.size(1);
  const int64_t keep = std::min(k, num_bank);
  const int64_t block_columns = std::min(num_bank, kBlockColumns);
  const double unit_roundoff = matmul_unit_roundoff(queries.scalar_type(), false);

  // bank_centred: [n, d]; bank_norms: [n]
  const at::Tensor centre = bank.mean(0, /*keepdim=*/true);
  const at::Tensor bank_centred = bank - centre;
  const at::Tensor bank_norms = bank_centred.square().sum(1);
  const double max_bank_norm = bank_norms.max().item<double>();

  const scalar_t* q = queries.data_ptr<scalar_t>();
  const scalar_t* b = bank.data_ptr<scalar_t>();
  const scalar_t* norms = bank_norms.data_ptr<scalar_t>();
  scalar_t* out_distances = distances.data_ptr<scalar_t>();
  int64_t* out_indices = indices.data_ptr<int64_t>();
  const int64_t num_blocks = (num_queries + block_rows - 1) / block_rows;

  // Threads claim query blocks one at a time (Note [Blocked CPU search]).
  std::atomic<int64_t> next_block{0};
  const int64_t tasks = std::min<int64_t>(num_blocks, at::get_num_threads());
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    const SingleThreadedBlas single_threaded_blas;
    // products: [block_rows * block_columns], reused for every block of this task
    at::Tensor products = at::empty({block_rows * block_columns}, queries.options());
    std::vector<RowSearch<scalar_t>> searches(block_rows);
    std::vector<std::pair<double, int64_t>> nearest;

    for (int64_t block = next_block++; block < num_blocks; block = next_block++) {
      const int64_t start = block * block_rows;
      const int64_t rows = std::min(block_rows, num_queries - start);

      // query_centred: [rows, d]; query_norms: [rows]
      const at::Tensor query_centred = queries.narrow(0, start, rows) - centre;
      const at::Tensor query_norms = query_centred.square().sum(1);
      const scalar_t* query_norm = query_norms.data_ptr<scalar_t>();
      std::vector<double> slack(rows);
      for (int64_t r = 0; r < rows; ++r) {
        searches[r].reset();
        slack[r] = 2.0 * matmul_error_bound(unit_roundoff,
                                            dim,
                                            static_cast<double>(query_norm[r]),
                                            max_bank_norm);
      }

      for (int64_t first = 0; first < num_bank; first += block_columns) {
        const int64_t count = std::min(block_columns, num_bank - first);
        // block: [rows, count] dot products of centred queries and bank rows
        at::Tensor block_products = products.narrow(0, 0, rows * count).view({rows, count});
        at::mm_out(block_products, query_centred, bank_centred.narrow(0, first, count).t());
        scalar_t* data = block_products.data_ptr<scalar_t>();
        for (int64_t r = 0; r < rows; ++r) {
          scan_block(data + r * count, norms + first, first, count, keep, slack[r], searches[r]);
        }
      }

      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = start + r;
        const double cutoff = static_cast<double>(searches[r].kth) + slack[r];
        nearest.clear();
        for (const auto& [value, j] : searches[r].candidates) {
          if (static_cast<double>(value) <= cutoff) {
            nearest.emplace_back(squared_distance(q + i * dim, b + j * dim, dim), j);
          }
        }
        keep_smallest(nearest, keep);
        write_row(nearest, out_distances + i * k, out_indices + i * k);
      }
    }
  });
}

}  // namespace

DistanceMode parse_distance_mode(const std::string& name) {
  if (name == "matmul") {
    return DistanceMode::kMatmul;
  }
  if (name == "exact") {
    return DistanceMode::kExact;
  }
  TORCH_CHECK(false, "distance mode should be 'matmul' or 'exact', got '", name, "'");
}

double matmul_unit_roundoff(at::ScalarType dtype, bool cuda) {
  if (dtype == at::kDouble) {
    return std::ldexp(1.0, -53);
  }
  // Reduced-precision products are opt-in torch settings; honour them rather than assume fp32.
  const auto precision = at::globalContext().float32MatmulPrecision();
  if (precision == at::Float32MatmulPrecision::MEDIUM) {
    return std::ldexp(1.0, -8);  // bfloat16 inputs
  }
  if (precision == at::Float32MatmulPrecision::HIGH || (cuda && at::globalContext().allowTF32CuBLAS())) {
    return std::ldexp(1.0, -11);  // TF32 inputs
  }
  return std::ldexp(1.0, -24);
}

void check_features(const at::Tensor& features, const char* name) {
  TORCH_CHECK(features.defined(), name, " should be a tensor, got an undefined tensor");
  TORCH_CHECK(features.dim() == 2,
              name,
              " should be a 2-D tensor [rows, dim], got ",
              features.dim(),
              "-D with shape ",
              features.sizes());
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble,
              name,
              " should be float32 or float64, got ",
              features.scalar_type());
  TORCH_CHECK(features.size(1) > 0, name, " should have at least one column, got shape ",
              features.sizes());
}

at::Tensor random_projection_matrix(int64_t in_dim, int64_t out_dim, uint64_t seed) {
  TORCH_CHECK(in_dim > 0, "projection input dim should be > 0, got ", in_dim);
  TORCH_CHECK(out_dim > 0, "projection_dim should be > 0, got ", out_dim);

  // projection: [in_dim, out_dim] float64
  at::Tensor projection = at::empty({in_dim, out_dim}, at::kDouble);
  double* p = projection.data_ptr<double>();
  Rng rng(seed);
  const double scale = 1.0 / std::sqrt(static_cast<double>(out_dim));
  for (int64_t i = 0; i < in_dim * out_dim; ++i) {
    p[i] = rng.normal() * scale;
  }
  return projection;
}

at::Tensor project(const at::Tensor& features, const at::Tensor& projection) {
  check_features(features, "features");
  TORCH_CHECK(projection.dim() == 2 && projection.scalar_type() == at::kDouble,
              "projection should be a 2-D float64 tensor, got ",
              projection.dim(),
              "-D ",
              projection.scalar_type());
  TORCH_CHECK(features.size(1) == projection.size(0),
              "features have dim ",
              features.size(1),
              " but the projection expects ",
              projection.size(0));

  const at::Tensor x = features.contiguous();
  const at::Tensor p = projection.contiguous();
  const int64_t rows = x.size(0);
  const int64_t in_dim = x.size(1);
  const int64_t out_dim = p.size(1);
  at::Tensor out = at::empty({rows, out_dim}, x.options());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "project", [&] {
    const scalar_t* xs = x.data_ptr<scalar_t>();
    const double* ps = p.data_ptr<double>();
    scalar_t* os = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      std::vector<double> acc(out_dim);
      for (int64_t r = begin; r < end; ++r) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t i = 0; i < in_dim; ++i) {
          const double v = static_cast<double>(xs[r * in_dim + i]);
          const double* prow = ps + i * out_dim;
          for (int64_t j = 0; j < out_dim; ++j) {
            acc[j] += v * prow[j];
          }
        }
        for (int64_t j = 0; j < out_dim; ++j) {
          os[r * out_dim + j] = static_cast<scalar_t>(acc[j]);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> nearest_neighbors_cpu(const at::Tensor& queries,
                                                         const at::Tensor& bank,
                                                         int64_t k,
                                                         bool exact,
                                                         int64_t chunk_rows) {
  check_features(queries, "queries");
  check_features(bank, "bank");
  TORCH_CHECK(queries.size(1) == bank.size(1),
              "queries and bank should have the same dim, got ",
              queries.size(1),
              " and ",
              bank.size(1));
  TORCH_CHECK(queries.scalar_type() == bank.scalar_type(),
              "queries and bank should have the same dtype, got ",
              queries.scalar_type(),
              " and ",
              bank.scalar_type());
  TORCH_CHECK(k >= 1, "k should be >= 1, got ", k);
  TORCH_CHECK(chunk_rows >= 0, "chunk_rows should be >= 0 (0 = automatic), got ", chunk_rows);

  const at::Tensor q = queries.contiguous();
  const at::Tensor b = bank.contiguous();
  const int64_t num_queries = q.size(0);
  const int64_t num_bank = b.size(0);

  // distances: [q, k] (+inf where the bank has fewer than k rows); indices: [q, k] (-1 there)
  at::Tensor distances =
      at::full({num_queries, k}, std::numeric_limits<double>::infinity(), q.options());
  at::Tensor indices = at::full({num_queries, k}, -1, q.options().dtype(at::kLong));
  if (num_queries == 0 || num_bank == 0) {
    return {distances, indices};
  }

  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "nearest_neighbors_cpu", [&] {
    TORCH_CHECK(all_finite(q.data_ptr<scalar_t>(), q.numel()),
                "queries should be finite, got NaN or infinity");
    TORCH_CHECK(all_finite(b.data_ptr<scalar_t>(), b.numel()),
                "bank should be finite, got NaN or infinity");
    if (exact) {
      search_exact<scalar_t>(q, b, k, distances, indices);
    } else {
      // Small query sets still spread over every thread.
      const int64_t per_thread = (num_queries + at::get_num_threads() - 1) / at::get_num_threads();
      const int64_t rows =
          chunk_rows > 0 ? chunk_rows : std::clamp<int64_t>(per_thread, 1, kBlockRows);
      search_matmul<scalar_t>(q, b, k, rows, distances, indices);
    }
  });
  return {distances, indices};
}

std::tuple<at::Tensor, at::Tensor> nearest_neighbors(const at::Tensor& queries,
                                                     const at::Tensor& bank,
                                                     int64_t k,
                                                     DistanceMode mode,
                                                     int64_t chunk_rows) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("seqpatchcore::nearest_neighbors", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, int64_t, bool, int64_t)>();
  return op.call(queries, bank, k, mode == DistanceMode::kExact, chunk_rows);
}

TORCH_LIBRARY(seqpatchcore, m) {
  m.def(
      "nearest_neighbors(Tensor queries, Tensor bank, int k, bool exact, int chunk_rows) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(seqpatchcore, CPU, m) {
  m.impl("nearest_neighbors", &nearest_neighbors_cpu);
}

}  // namespace spc
