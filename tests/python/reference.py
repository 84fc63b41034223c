"""Brute-force references the tests compare the library against. Written for clarity, not
speed: every quantity is recomputed from scratch with numpy in float64."""

from __future__ import annotations

import numpy as np


def reference_coreset(keys: np.ndarray, capacity: int) -> list[int]:
    """Stream rows of keys [n, d] through the rule; returns the stream row held by each slot."""
    keys = keys.astype(np.float64)
    slots: list[int] = []
    for row, x in enumerate(keys):
        if not slots:
            slots.append(row)
            continue
        members = keys[slots]
        d_p = ((members - x) ** 2).sum(axis=1).min()
        if len(slots) < capacity:
            if d_p > 0:
                slots.append(row)
            continue
        if capacity == 1:
            continue

        pairwise = ((members[:, None, :] - members[None, :, :]) ** 2).sum(axis=2)
        np.fill_diagonal(pairwise, np.inf)
        nearest = pairwise.min(axis=1)
        a = int(np.argmin(nearest))  # first minimum: the lowest slot
        d_m = nearest[a]
        if d_p <= d_m:
            continue
        b = int(np.argmin(pairwise[a]))
        second_a = np.sort(pairwise[a])[1]
        second_b = np.sort(pairwise[b])[1]
        if second_a != second_b:
            evicted = a if second_a < second_b else b
        else:
            evicted = min(a, b)
        slots[evicted] = row
    return slots


def is_farthest_point_sequence(points: np.ndarray, order: np.ndarray) -> bool:
    """Whether each member after the first is a row farthest from the members before it."""
    points = points.astype(np.float64)
    nearest = ((points - points[order[0]]) ** 2).sum(axis=1)
    for member in order[1:]:
        if nearest[member] < nearest.max():
            return False
        nearest = np.minimum(nearest, ((points - points[member]) ** 2).sum(axis=1))
    return True
