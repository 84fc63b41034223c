"""The batched C++ sequential coreset against a one-at-a-time reference written here.

The reference (tests/python/reference.py) recomputes everything by brute force for every
feature, so it shares no bookkeeping with the C++ builder. The builder must give exactly the same
members in the same slots.
"""

import pytest
import torch
from reference import reference_coreset

from seqpatchcore import _C


def build(features: torch.Tensor, capacity: int, chunks: list[int] | None = None, **options):
    builder = _C.SequentialCoreset(features.shape[1], capacity, **options)
    if chunks is None:
        builder.update(features)
    else:
        start = 0
        for size in chunks:
            builder.update(features[start : start + size])
            start += size
        builder.update(features[start:])
    return builder


def assert_same_as_reference(features, capacity, keys=None, chunks=None, **options):
    builder = build(features, capacity, chunks, **options)
    expected_rows = reference_coreset((features if keys is None else keys).numpy(), capacity)
    expected = features[expected_rows].to(builder.coreset().dtype)
    assert torch.equal(builder.coreset(), expected), (
        f"members differ from the reference: slots hold rows {expected_rows}"
    )
    return builder


# dim 37: whole vectors of partial sums and a remainder in the builder's dot products.
SHAPES = [
    (200, 4, 10),
    (300, 16, 25),
    (150, 1, 8),
    (120, 3, 1),
    (40, 5, 60),
    (500, 8, 30),
    (300, 37, 23),
]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n,dim,capacity", SHAPES)
@pytest.mark.parametrize("distance", ["matmul", "exact"])
def test_random_streams(seed, n, dim, capacity, distance):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=generator)
    assert_same_as_reference(features, capacity, distance=distance, chunk_size=64)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("distance", ["matmul", "exact"])
def test_integer_grid_with_ties_and_duplicates(seed, distance):
    # Values in {0, 1, 2, 3}: exact ties everywhere and many duplicates.
    generator = torch.Generator().manual_seed(seed)
    features = torch.randint(0, 4, (300, 3), generator=generator).float()
    assert_same_as_reference(features, 12, distance=distance, chunk_size=50)


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 1000])
def test_chunk_size_does_not_change_the_result(chunk_size):
    generator = torch.Generator().manual_seed(11)
    features = torch.randn(250, 6, generator=generator)
    assert_same_as_reference(features, 20, chunk_size=chunk_size)


def test_empty_and_uneven_updates():
    generator = torch.Generator().manual_seed(12)
    features = torch.randn(200, 5, generator=generator)
    assert_same_as_reference(features, 15, chunks=[0, 3, 0, 1, 50, 0, 17], chunk_size=8)


@pytest.mark.parametrize("dim", [7, 13])
def test_float64(dim):
    generator = torch.Generator().manual_seed(13)
    features = torch.randn(300, dim, generator=generator, dtype=torch.float64)
    builder = assert_same_as_reference(features, 20, dtype="float64")
    assert builder.coreset().dtype == torch.float64


def test_non_contiguous_input():
    generator = torch.Generator().manual_seed(14)
    wide = torch.randn(6, 400, generator=generator)
    features = wide.t()[::2]  # [200, 6], strides (2, 400)
    assert not features.is_contiguous()
    assert_same_as_reference(features, 18, chunk_size=32)


def test_capacity_at_least_the_number_of_features():
    generator = torch.Generator().manual_seed(15)
    features = torch.randn(30, 4, generator=generator)
    features[10] = features[3]  # one duplicate is not added
    builder = assert_same_as_reference(features, 100)
    assert builder.size == 29


def test_large_constant_offset():
    # +1e3 on every coordinate: the fast products lose the small differences, decisions don't.
    generator = torch.Generator().manual_seed(16)
    features = torch.randn(300, 8, generator=generator) * 0.1 + 1e3
    assert_same_as_reference(features, 20, chunk_size=40)


@pytest.mark.parametrize("seed", range(4))
def test_random_projection(seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(300, 24, generator=generator)
    projection = _C.random_projection_matrix(24, 6, seed)
    keys = (features.double() @ projection).float()  # numpy-independent of the C++ loop order
    assert_same_as_reference(features, 20, keys=keys, projection_dim=6, seed=seed)


def test_min_distance_never_decreases_once_full():
    generator = torch.Generator().manual_seed(17)
    builder = _C.SequentialCoreset(4, 25, chunk_size=16)
    previous = 0.0
    for _ in range(60):
        builder.update(torch.randn(16, 4, generator=generator))
        if builder.size == builder.capacity:
            assert builder.min_distance >= previous
            previous = builder.min_distance
    assert builder.counters["replaced"] > 0


def test_counters_add_up():
    generator = torch.Generator().manual_seed(18)
    builder = build(torch.randn(400, 3, generator=generator), 20)
    counters = builder.counters
    assert counters["seen"] == 400
    assert sum(v for k, v in counters.items() if k != "seen") == 400
