#include <pybind11/stl.h>
#include <torch/extension.h>

#include "bindings/bindings.h"
#include "core/anomaly_map.h"
#include "core/distance.h"
#include "core/greedy_coreset.h"
#include "core/sequential_coreset.h"
#include "cuda/cuda.h"

namespace py = pybind11;

namespace spc::bindings {
namespace {

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") {
    return at::kFloat;
  }
  if (name == "float64") {
    return at::kDouble;
  }
  throw py::value_error("dtype should be 'float32' or 'float64', got '" + name + "'");
}

SequentialCoresetOptions make_options(int64_t capacity,
                                      const std::string& distance,
                                      int64_t projection_dim,
                                      uint64_t seed,
                                      int64_t chunk_size,
                                      int64_t memory_budget_bytes) {
  SequentialCoresetOptions options;
  options.capacity = capacity;
  options.distance = parse_distance_mode(distance);
  options.projection_dim = projection_dim;
  options.seed = seed;
  options.chunk_size = chunk_size;
  options.memory_budget_bytes = memory_budget_bytes;
  return options;
}

const char* mode_name(DistanceMode mode) {
  return mode == DistanceMode::kExact ? "exact" : "matmul";
}

}  // namespace

void bind_core(py::module_& m) {
  // Errors from TORCH_CHECK name the argument, what was expected and what came; show them as
  // ValueError without the C++ backtrace.
  py::register_exception_translator([](std::exception_ptr error) {
    try {
      if (error) {
        std::rethrow_exception(error);
      }
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    }
  });

  m.def(
      "nearest_neighbors",
      [](const at::Tensor& queries,
         const at::Tensor& bank,
         int64_t k,
         const std::string& mode,
         int64_t chunk_rows) {
        return nearest_neighbors(queries, bank, k, parse_distance_mode(mode), chunk_rows);
      },
      py::arg("queries"),
      py::arg("bank"),
      py::arg("k") = 1,
      py::arg("mode") = "matmul",
      py::arg("chunk_rows") = 0,
      py::call_guard<py::gil_scoped_release>(),
      R"doc(The k nearest bank rows of every query row, by Euclidean distance.

Args:
    queries: [q, d] float32 or float64.
    bank: [n, d], same dtype.
    k: neighbours per query; columns beyond n hold +inf and -1.
    mode: 'matmul' (matrix products, see below) or 'exact' (sums of squared differences in
        double).
    chunk_rows: queries per block; 0 chooses. On the CPU memory is O(threads * chunk_rows *
        512); on CUDA, O(chunk_rows * k) for the per-block lists.

Returns:
    (distances [q, k] ascending, indices [q, k] int64); equal distances ordered by index.

On the CPU both modes return the exact k nearest (the products only filter candidates). CUDA
tensors (k <= 32) run a fused kernel on the current stream: 'exact' matches the CPU, 'matmul'
computes float32 distances with the norm trick, without the exact refinement, so near ties
can resolve differently (within the bound of csrc/core/distance.h).)doc");

  m.def("cuda_compiled",
        &cuda::compiled,
        "Whether the CUDA kernels were compiled in; without them CUDA tensors raise an error "
        "that says how to rebuild.");
  m.attr("cuda_max_k") = cuda::kMaxK;

  m.def(
      "greedy_coreset",
      [](const at::Tensor& features, int64_t size, int64_t projection_dim, uint64_t seed,
         int64_t start) {
        GreedyCoresetOptions options;
        options.size = size;
        options.projection_dim = projection_dim;
        options.seed = seed;
        options.start = start;
        return greedy_coreset(features, options);
      },
      py::arg("features"),
      py::arg("size"),
      py::arg("projection_dim") = 128,
      py::arg("seed") = 0,
      py::arg("start") = -1,
      py::call_guard<py::gil_scoped_release>(),
      R"doc(Approximate greedy k-center coreset (farthest point first).

Args:
    features: [n, d] float32 or float64.
    size: members to select (at most n are returned).
    projection_dim: compare in a seeded random projection when smaller than d; 0 = never.
    seed: seeds the projection and the first member.
    start: first member's row, or -1 for a seeded random row.

Returns:
    indices [min(size, n)] int64 in selection order.)doc");

  m.def("random_projection_matrix",
        &random_projection_matrix,
        py::arg("in_dim"),
        py::arg("out_dim"),
        py::arg("seed"),
        "The [in_dim, out_dim] float64 projection used for a seed (entries N(0, 1/out_dim)).");
  m.def("project",
        &project,
        py::arg("features"),
        py::arg("projection"),
        py::call_guard<py::gil_scoped_release>(),
        "features [n, d] @ projection [d, p] accumulated in double in a fixed order.");

  m.def(
      "sequential_coreset_bytes",
      [](int64_t dim, int64_t capacity, const std::string& dtype, const std::string& distance,
         int64_t projection_dim, int64_t chunk_size, int64_t memory_budget_bytes) {
        return sequential_coreset_bytes(
            dim,
            parse_dtype(dtype),
            make_options(capacity, distance, projection_dim, 0, chunk_size, memory_budget_bytes));
      },
      py::arg("dim"),
      py::arg("capacity"),
      py::arg("dtype") = "float32",
      py::arg("distance") = "matmul",
      py::arg("projection_dim") = 0,
      py::arg("chunk_size") = 0,
      py::arg("memory_budget_bytes") = 0,
      "Bytes a SequentialCoreset with these settings allocates; raises when over the budget.");

  py::class_<SequentialCoreset>(m, "SequentialCoreset", R"doc(
Sequential coreset builder of capacity K; see csrc/core/sequential_coreset.h for the rule.
Memory is O(K * D + chunk_size * K) whatever the number of features streamed.)doc")
      .def(py::init([](int64_t dim, int64_t capacity, const std::string& dtype,
                       const std::string& distance, int64_t projection_dim, uint64_t seed,
                       int64_t chunk_size, int64_t memory_budget_bytes) {
             return SequentialCoreset(dim,
                                      parse_dtype(dtype),
                                      make_options(capacity, distance, projection_dim, seed,
                                                   chunk_size, memory_budget_bytes));
           }),
           py::arg("dim"),
           py::arg("capacity"),
           py::arg("dtype") = "float32",
           py::arg("distance") = "matmul",
           py::arg("projection_dim") = 0,
           py::arg("seed") = 0,
           py::arg("chunk_size") = 0,
           py::arg("memory_budget_bytes") = 0)
      .def_static(
          "from_members",
          [](const at::Tensor& members, int64_t capacity, const std::string& distance,
             int64_t projection_dim, uint64_t seed, int64_t chunk_size,
             int64_t memory_budget_bytes) {
            return SequentialCoreset::from_members(
                members,
                make_options(capacity, distance, projection_dim, seed, chunk_size,
                             memory_budget_bytes));
          },
          py::arg("members"),
          py::arg("capacity"),
          py::arg("distance") = "matmul",
          py::arg("projection_dim") = 0,
          py::arg("seed") = 0,
          py::arg("chunk_size") = 0,
          py::arg("memory_budget_bytes") = 0,
          "A builder holding exactly these members [n, D], ready to continue the rule.")
      .def_static("from_state",
                  &SequentialCoreset::from_state,
                  py::arg("state"),
                  "Restores a builder from state().")
      .def("update",
           &SequentialCoreset::update,
           py::arg("features"),
           py::call_guard<py::gil_scoped_release>(),
           "Streams features [b, D] through the rule in row order.")
      .def("set_capacity",
           &SequentialCoreset::set_capacity,
           py::arg("capacity"),
           py::call_guard<py::gil_scoped_release>(),
           "Changes K; shrinking evicts by the rule's eviction choice.")
      .def("coreset", &SequentialCoreset::coreset, "Members [size, D] (a copy).")
      .def("nearest_distances", &SequentialCoreset::nearest_distances)
      .def("nearest_indices", &SequentialCoreset::nearest_indices)
      .def("keys", &SequentialCoreset::keys, py::arg("features"))
      .def("state", &SequentialCoreset::state, "Named tensors from which from_state resumes.")
      .def_property_readonly("min_distance", &SequentialCoreset::min_distance)
      .def_property_readonly("size", &SequentialCoreset::size)
      .def_property_readonly("capacity", &SequentialCoreset::capacity)
      .def_property_readonly("dim", &SequentialCoreset::dim)
      .def_property_readonly("chunk_size", &SequentialCoreset::chunk_size)
      .def_property_readonly("dtype",
                             [](const SequentialCoreset& c) {
                               return c.dtype() == at::kDouble ? "float64" : "float32";
                             })
      .def_property_readonly("distance",
                             [](const SequentialCoreset& c) {
                               return mode_name(c.options().distance);
                             })
      .def_property_readonly("projection_dim",
                             [](const SequentialCoreset& c) { return c.options().projection_dim; })
      .def_property_readonly("seed", [](const SequentialCoreset& c) { return c.options().seed; })
      .def_property_readonly("counters", [](const SequentialCoreset& c) {
        py::dict counters;
        counters["seen"] = c.seen();
        counters["added"] = c.added();
        counters["duplicates"] = c.duplicates();
        counters["replaced"] = c.replaced();
        counters["rejected"] = c.rejected();
        return counters;
      });

  m.def("meld_coresets",
        &meld_coresets,
        py::arg("base"),
        py::arg("other"),
        py::arg("capacity") = 0,
        py::call_guard<py::gil_scoped_release>(),
        "Streams other [n, D] into a copy of base, most novel first; capacity 0 keeps base's.");

  m.def("anomaly_map",
        &anomaly_map,
        py::arg("patch_scores"),
        py::arg("height"),
        py::arg("width"),
        py::arg("sigma") = 4.0,
        py::call_guard<py::gil_scoped_release>(),
        "[b, h, w] patch scores -> [b, height, width] maps: bilinear upsampling, Gaussian blur.");
  m.def("score_images",
        &score_images,
        py::arg("patch_scores"),
        py::arg("height"),
        py::arg("width"),
        py::arg("sigma") = 4.0,
        py::call_guard<py::gil_scoped_release>(),
        "(anomaly maps [b, height, width], image scores [b] = max of each map).");
  m.def("gaussian_kernel",
        [](double sigma) { return gaussian_kernel(sigma, at::kFloat); },
        py::arg("sigma"));
}

}  // namespace spc::bindings
