"""Shared fixtures: the project's read-only shared folder (data and weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_ENV = "SEQPATCHCORE_SHARED"
MOBILENET_V3_SMALL = Path(
    "weights/mobilenet_v3_small_1.0_224_uint8/mobilenet_v3_small_1.0_224.uint8.tflite"
)


def _shared_location() -> tuple[Path, str]:
    if os.environ.get(SHARED_ENV):
        return Path(os.environ[SHARED_ENV]), f"environment variable {SHARED_ENV}"
    # <repo>/tests/python/conftest.py -> <repo>/../shared
    return Path(__file__).resolve().parents[2].parent / "shared", "default ../shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder (`../shared` beside the repo, or $SEQPATCHCORE_SHARED).

    A missing folder fails the test that needs it, saying where it looked: these tests are
    the acceptance tests of the data-dependent code and must not pass by skipping.
    """
    path, origin = _shared_location()
    if not path.is_dir():
        pytest.fail(
            f"shared folder not found at {path} (from {origin}); check out the "
            f"project's shared folder there or set {SHARED_ENV}",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def mobilenet_v3_path(shared_dir: Path) -> Path:
    """The 8-bit MobileNetV3-Small TFLite checkpoint in the shared folder."""
    path = shared_dir / MOBILENET_V3_SMALL
    if not path.is_file():
        pytest.fail(f"MobileNetV3-Small checkpoint not found at {path}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def mobilenet_v3(mobilenet_v3_path: Path):
    """The rebuilt MobileNetV3-Small, loaded once per session (float mode)."""
    from seqpatchcore.backbones import load_backbone

    return load_backbone("mobilenet_v3_small_tflite", weights=mobilenet_v3_path)
