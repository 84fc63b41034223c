"""The CUDA nearest-neighbour operator and the sequential builder on CUDA, against the CPU.

CPU and CUDA run on the same inputs. The exact mode must agree exactly (same indices, same
distances up to the last bit or so); the fast mode computes float32 distances without the CPU's
exact refinement, so its distances must lie within the float32 error bound of the exact ones and
its indices may differ from the CPU's only where another member lies within that bound (a
near tie). The builder decides on the CPU from distances made on the GPU, so its members must
be exactly the CPU's.

Tests marked `gpu` skip when torch sees no CUDA device; on a machine with one they fail, not
skip, when the extension was built without its CUDA kernels. The remaining tests check what a
build without CUDA tells its users.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import reference_coreset

from seqpatchcore import _C, SequentialPatchCore
from seqpatchcore import model as model_module

HAS_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device: torch.cuda.is_available() is False")


@pytest.fixture
def cuda():
    """The CUDA device; fails when the extension cannot use it."""
    if not _C.cuda_compiled():
        pytest.fail("torch sees a CUDA device, but seqpatchcore._C was built without CUDA; "
                    "rebuild with SEQPATCHCORE_CUDA=ON (see scripts/gpu_check.sh)", pytrace=False)
    return torch.device("cuda")


def float_roundoff(dtype: torch.dtype) -> float:
    return 2.0**-24 if dtype == torch.float32 else 2.0**-53


def fast_error_bound(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Per query, the bound of csrc/core/distance.h on |fast - exact| squared distance. [q]"""
    q = queries.double().cpu()
    b = bank.double().cpu()
    centre = b.mean(0)
    query_norms = ((q - centre) ** 2).sum(1)
    bank_norm = ((b - centre) ** 2).sum(1).max()
    # A little above the library's (2 d + 16) u: the GPU also rounds the centre and norms.
    return (2 * q.shape[1] + 32) * float_roundoff(queries.dtype) * (query_norms + bank_norm)


def exact_squared(queries: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """||q_i - bank[indices[i, c]]||^2 in float64, +inf where the index is -1. [q, k]"""
    q = queries.double().cpu()
    b = bank.double().cpu()
    idx = indices.cpu()
    gathered = b[idx.clamp(min=0)]  # [q, k, d]
    squared = ((gathered - q[:, None, :]) ** 2).sum(2)
    return torch.where(idx >= 0, squared, torch.full_like(squared, math.inf))


def assert_exact_parity(queries, bank, k, chunk_rows=0):
    cpu_d, cpu_i = _C.nearest_neighbors(queries.cpu(), bank.cpu(), k, "exact")
    gpu_d, gpu_i = _C.nearest_neighbors(queries, bank, k, "exact", chunk_rows)
    assert gpu_d.device == queries.device and gpu_i.device == queries.device
    assert gpu_d.dtype == queries.dtype and gpu_i.dtype == torch.int64
    assert torch.equal(gpu_i.cpu(), cpu_i)
    torch.testing.assert_close(gpu_d.cpu(), cpu_d, rtol=1e-12 if queries.dtype == torch.float64
                               else 1e-6, atol=0.0)


def assert_fast_parity(queries, bank, k, chunk_rows=0):
    cpu_d, cpu_i = _C.nearest_neighbors(queries.cpu(), bank.cpu(), k)
    gpu_d, gpu_i = _C.nearest_neighbors(queries, bank, k, "matmul", chunk_rows)
    gpu_d, gpu_i = gpu_d.cpu(), gpu_i.cpu()
    bound = fast_error_bound(queries, bank)[:, None]  # [q, 1]

    # The k-th smallest of values each within `bound` of the exact ones is within `bound` of
    # the exact k-th smallest.
    present = cpu_i >= 0
    assert torch.equal(gpu_i >= 0, present)
    gap = (gpu_d.double() ** 2 - cpu_d.double() ** 2).abs()
    assert bool((gap[present] <= bound.expand_as(gap)[present]).all()), (
        f"fast distances off by up to {gap[present].max():.3g}"
    )

    # Each row lists distinct members, and a member that differs from the CPU's is as near
    # as the CPU's, within the bound.
    for row in gpu_i:
        members = row[row >= 0]
        assert len(set(members.tolist())) == len(members)
    differ = gpu_i != cpu_i
    if differ.any():
        exact_gpu = exact_squared(queries, bank, gpu_i)
        exact_cpu = cpu_d.double() ** 2
        slack = 2 * bound.expand_as(exact_gpu)
        assert bool((exact_gpu[differ] <= exact_cpu[differ] + slack[differ]).all())
        assert differ.float().mean() < 0.05, "near ties should be rare on random data"


SHAPES = [
    # q, n, d, k: single rows, partial tiles, k > n, several bank splits, k at the limit
    (1, 1, 1, 1),
    (37, 53, 3, 1),
    (5, 3, 4, 8),
    (300, 1000, 64, 1),
    (300, 1000, 64, 5),
    (129, 257, 130, 32),
    (2, 5000, 16, 3),
    (1000, 50, 7, 9),
]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("q,n,d,k", SHAPES)
def test_exact_mode_equals_the_cpu(cuda, q, n, d, k, dtype):
    generator = torch.Generator().manual_seed(q * 7919 + n)
    queries = torch.randn(q, d, generator=generator, dtype=dtype)
    bank = torch.randn(n, d, generator=generator, dtype=dtype)
    assert_exact_parity(queries.to(cuda), bank.to(cuda), k)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("q,n,d,k", SHAPES)
def test_fast_mode_is_within_the_error_bound_of_the_cpu(cuda, q, n, d, k, dtype):
    generator = torch.Generator().manual_seed(q * 104729 + n)
    queries = torch.randn(q, d, generator=generator, dtype=dtype)
    bank = torch.randn(n, d, generator=generator, dtype=dtype) + 3.0
    assert_fast_parity(queries.to(cuda), bank.to(cuda), k)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["matmul", "exact"])
def test_exact_ties_go_to_the_lower_index(cuda, mode):
    # Small integers in a bank symmetric about 0: its mean is exactly 0 and every product is
    # exact in float32, so the fast mode sees the exact ties too and must break them by index.
    generator = torch.Generator().manual_seed(3)
    points = torch.randint(-2, 3, (150, 4), generator=generator).float()
    bank = torch.cat([points, -points, points[:40]])
    queries = torch.randint(-2, 3, (200, 4), generator=generator).float()
    for k in (1, 4, 17):
        cpu_d, cpu_i = _C.nearest_neighbors(queries, bank, k, mode)
        gpu_d, gpu_i = _C.nearest_neighbors(queries.to(cuda), bank.to(cuda), k, mode)
        assert torch.equal(gpu_i.cpu(), cpu_i)
        assert torch.equal(gpu_d.cpu(), cpu_d)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("chunk_rows", [0, 1, 7, 100])
def test_chunked_launches_give_the_same_result(cuda, chunk_rows):
    generator = torch.Generator().manual_seed(5)
    queries = torch.randn(250, 12, generator=generator).to(cuda)
    bank = torch.randn(700, 12, generator=generator).to(cuda)
    assert_exact_parity(queries, bank, 3, chunk_rows)
    assert_fast_parity(queries, bank, 3, chunk_rows)


@gpu
@pytest.mark.gpu
def test_empty_queries_and_empty_bank(cuda):
    d, i = _C.nearest_neighbors(torch.zeros(0, 3, device=cuda), torch.randn(4, 3, device=cuda), 2)
    assert d.shape == (0, 2) and i.shape == (0, 2) and d.is_cuda
    d, i = _C.nearest_neighbors(torch.randn(3, 3, device=cuda), torch.zeros(0, 3, device=cuda), 2)
    assert bool(torch.isinf(d).all()) and bool((i == -1).all())


@gpu
@pytest.mark.gpu
def test_non_contiguous_inputs(cuda):
    generator = torch.Generator().manual_seed(6)
    bank = torch.randn(6, 300, generator=generator).to(cuda).t()  # [300, 6], strided
    queries = torch.randn(40, 12, generator=generator).to(cuda)[:, 3:9]
    assert not bank.is_contiguous() and not queries.is_contiguous()
    assert_exact_parity(queries, bank, 3)
    assert_fast_parity(queries, bank, 3)


@gpu
@pytest.mark.gpu
def test_runs_on_the_current_stream(cuda):
    generator = torch.Generator().manual_seed(7)
    queries = torch.randn(500, 32, generator=generator).to(cuda)
    bank = torch.randn(2000, 32, generator=generator).to(cuda)
    expected = _C.nearest_neighbors(queries, bank, 2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = _C.nearest_neighbors(queries, bank, 2)
    stream.synchronize()
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])


@gpu
@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_another_device_than_the_current_one(cuda):
    generator = torch.Generator().manual_seed(8)
    queries = torch.randn(100, 8, generator=generator)
    bank = torch.randn(300, 8, generator=generator)
    with torch.cuda.device(0):
        assert_exact_parity(queries.to("cuda:1"), bank.to("cuda:1"), 2)


@gpu
@pytest.mark.gpu
def test_bad_input_is_named(cuda):
    good = torch.randn(3, 4, device=cuda)
    with pytest.raises(ValueError, match="should be <= 32"):
        _C.nearest_neighbors(good, good, 33)
    with pytest.raises(ValueError, match="same CUDA device"):
        _C.nearest_neighbors(good, good.cpu(), 1)
    with pytest.raises(ValueError, match="same dim, got 4 and 5"):
        _C.nearest_neighbors(good, torch.randn(3, 5, device=cuda), 1)
    nan = good.clone()
    nan[1, 2] = math.nan
    with pytest.raises(ValueError, match="queries should be finite"):
        _C.nearest_neighbors(nan, good, 1)


# -- the sequential builder on CUDA ----------------------------------------------------------


def build(features: torch.Tensor, capacity: int, chunk: int, **options):
    builder = _C.SequentialCoreset(features.shape[1], capacity, **options)
    for start in range(0, len(features), chunk):
        builder.update(features[start : start + chunk])
    return builder


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n,dim,capacity", [(200, 4, 10), (300, 16, 25), (500, 8, 30)])
@pytest.mark.parametrize("distance", ["matmul", "exact"])
def test_builder_on_cuda_equals_the_reference(cuda, seed, n, dim, capacity, distance):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=generator)
    builder = build(features.to(cuda), capacity, 70, distance=distance, chunk_size=64)
    expected = features[reference_coreset(features.numpy(), capacity)]
    assert torch.equal(builder.coreset(), expected)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("options", [
    {},
    {"projection_dim": 5, "seed": 3},
    {"dtype": "float64"},
    {"chunk_size": 1},
])
def test_builder_on_cuda_equals_the_builder_on_cpu(cuda, options):
    generator = torch.Generator().manual_seed(9)
    # Integer grid (ties, duplicates) under an offset, then Gaussian features.
    features = torch.cat([
        torch.randint(0, 4, (200, 12), generator=generator).float() + 100.0,
        torch.randn(400, 12, generator=generator),
    ])
    on_cpu = build(features, 40, 90, **options)
    on_gpu = build(features.to(cuda), 40, 90, **options)
    assert torch.equal(on_gpu.coreset(), on_cpu.coreset())
    assert torch.equal(on_gpu.nearest_indices(), on_cpu.nearest_indices())
    assert torch.equal(on_gpu.nearest_distances(), on_cpu.nearest_distances())
    assert on_gpu.counters == on_cpu.counters


@gpu
@pytest.mark.gpu
def test_builder_alternating_devices_and_resuming(cuda):
    generator = torch.Generator().manual_seed(10)
    features = torch.randn(600, 6, generator=generator)
    alternating = _C.SequentialCoreset(6, 30, chunk_size=32)
    for index, start in enumerate(range(0, 600, 50)):
        part = features[start : start + 50]
        alternating.update(part.to(cuda) if index % 2 == 0 else part)
        if index == 5:
            alternating = _C.SequentialCoreset.from_state(alternating.state())
    expected = features[reference_coreset(features.numpy(), 30)]
    assert torch.equal(alternating.coreset(), expected)


@gpu
@pytest.mark.gpu
def test_model_scores_on_the_gpu_match_the_cpu(cuda, mobilenet_v3_path, monkeypatch):
    # TF32 convolutions would move the features themselves by about 1e-3.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    generator = np.random.default_rng(11)
    images = [generator.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(6)]
    model = SequentialPatchCore(weights=mobilenet_v3_path, input_size=(96, 96), capacity=60,
                                batch_size=3, k=3).fit(images[:4])
    cpu_maps, cpu_scores = model.anomaly_maps(images[4:])
    assert model._search_device().type == "cpu"

    model.set_params(device="cuda")
    assert model._search_device().type == "cuda"
    gpu_maps, gpu_scores = model.anomaly_maps(images[4:])
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-3)
    for gpu_map, cpu_map in zip(gpu_maps, cpu_maps, strict=True):
        np.testing.assert_allclose(gpu_map, cpu_map, rtol=1e-3, atol=1e-3)

    # The sequential builder takes the GPU's features as they come.
    on_gpu = SequentialPatchCore(weights=mobilenet_v3_path, input_size=(96, 96), capacity=60,
                                 batch_size=3, device="cuda").fit(images[:4])
    assert on_gpu.coreset_.shape == model.coreset_.shape and not on_gpu.coreset_.is_cuda


# -- builds without CUDA ---------------------------------------------------------------------


@pytest.mark.skipif(_C.cuda_compiled(), reason="the CUDA kernels are compiled in")
def test_a_build_without_cuda_says_how_to_rebuild():
    # Call the operator's CUDA kernel directly: in such a build it is the stand-in.
    operator = torch.ops.seqpatchcore.nearest_neighbors.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    x = torch.randn(3, 4)
    with pytest.raises(Exception, match="built without CUDA.*rebuild"):
        operator.redispatch(keys, x, x, 1, False, 0)


def test_device_cuda_without_the_kernels_is_refused_before_work(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(model_module._C, "cuda_compiled", lambda: False)
    with pytest.raises(ValueError, match="built without CUDA"):
        SequentialPatchCore(device="cuda")._torch_device()


@pytest.mark.parametrize("compiled,k,expected", [
    (False, 1, "cpu"),   # auto: backbone on the GPU, search on the CPU
    (True, 1, "cuda"),
    (True, 33, "cpu"),   # above the kernels' k
])
def test_search_device(monkeypatch, compiled, k, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(model_module._C, "cuda_compiled", lambda: compiled)
    assert SequentialPatchCore(device="auto", k=k)._search_device().type == expected
    assert SequentialPatchCore(device="cpu", k=k)._search_device().type == "cpu"
