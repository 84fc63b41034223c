"""PatchCore with a sequential coreset, as a scikit-learn style estimator.

    model = SequentialPatchCore(capacity=6676, random_state=0).fit(train_paths)
    maps, scores = model.anomaly_maps(test_paths)
    model.save("model.spc")

The memory bank ("coreset" in the paper and in this code) is built while the training images
stream through the backbone, so memory is bounded by the coreset, not by the data: see
csrc/core/sequential_coreset.h for the rule. `method="greedy"` is standard PatchCore
(all patch features collected, then greedy k-center), kept as the baseline.
"""

from __future__ import annotations

import io
import logging
import math
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from seqpatchcore import _C
from seqpatchcore.backbones import load_backbone
from seqpatchcore.data import load_image
from seqpatchcore.features import DEFAULT_LAYERS, PatchFeatureExtractor
from seqpatchcore.files import atomic_write

logger = logging.getLogger(__name__)

FORMAT = "seqpatchcore-model"
FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "seqpatchcore-checkpoint"
METHODS = ("sequential", "greedy", "random", "all")

ImageLike = str | os.PathLike | np.ndarray | torch.Tensor


class ModelFileError(ValueError):
    """A model or checkpoint file that cannot be read: missing, truncated or foreign."""


class FeatureSpaceMismatch(ValueError):
    """Two coresets that live in different feature spaces cannot be melded."""


@dataclass
class ImageResult:
    """Scores of one image: anomaly_map [H, W] float32 at the image's own size, image score."""

    anomaly_map: np.ndarray
    score: float


class SequentialPatchCore:
    """PatchCore anomaly detector whose coreset is built sequentially in bounded memory.

    Parameters are stored as given; nothing is computed before `fit` (scikit-learn contract).

    Args:
        backbone: a name of `seqpatchcore.backbones.available_backbones()`.
        weights: backbone weights file or folder; None: $SEQPATCHCORE_WEIGHTS, then defaults.
        layers: backbone blocks whose outputs are combined into patch features.
        input_size: (height, width) every image is resized to; None keeps native sizes.
        pool_size: side of the local average pooling of each feature map.
        method: "sequential" (bounded memory), "greedy" (standard PatchCore, memory grows with
            the data), "random" (a seeded uniform sample of patches, bounded memory) or "all".
        capacity: coreset size K; 0 means `fraction` of all training patches.
        fraction: K as a share of the training patches when capacity is 0.
        projection_dim: compare distances in a seeded random projection to this many
            dimensions; 0 never; -1 the method's default (greedy 128, sequential 0).
        distance: "matmul" or "exact" (see csrc/core/distance.h; decisions are exact in both).
        passes: sequential: stream the training images this many times (new seeded order per
            pass after the first); features are recomputed, never cached.
        shuffle: sequential: shuffle the first pass too.
        chunk_size: features per matrix product in the builder; 0 from the memory budget.
        memory_budget_mb: refuse coresets whose working memory exceeds this; 0 no limit.
        k: nearest members per patch; k > 1 applies PatchCore's reweighting to image scores.
        sigma: Gaussian blur of anomaly maps in pixels.
        batch_size: images per backbone call.
        device: "cpu", "cuda" or "auto" for the backbone.
        checkpoint_every: sequential fit with a checkpoint path: save every N images.
        random_state: seeds every random choice (projection, orders, random sampling).
        progress: show progress bars.

    Attributes (after fit):
        coreset_: [K, D] float32 memory bank on the CPU.
        fingerprint_: the feature space the coreset lives in.
        threshold_: image-score threshold, or None until `set_threshold`.
        pixel_threshold_: anomaly-map threshold, or None.
        n_images_seen_: training images streamed (all passes).
        n_features_in_: D.
        builder_: the C++ SequentialCoreset (method sequential), for partial_fit and meld.
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v3_small_tflite",
        weights: str | os.PathLike | None = None,
        layers: Sequence[str] = DEFAULT_LAYERS,
        input_size: tuple[int, int] | None = (256, 256),
        pool_size: int = 3,
        method: str = "sequential",
        capacity: int = 0,
        fraction: float = 0.01,
        projection_dim: int = -1,
        distance: str = "matmul",
        passes: int = 1,
        shuffle: bool = False,
        chunk_size: int = 0,
        memory_budget_mb: float = 0.0,
        k: int = 1,
        sigma: float = 4.0,
        batch_size: int = 16,
        device: str = "cpu",
        checkpoint_every: int = 0,
        random_state: int = 0,
        progress: bool = False,
    ):
        self.backbone = backbone
        self.weights = weights
        self.layers = layers
        self.input_size = input_size
        self.pool_size = pool_size
        self.method = method
        self.capacity = capacity
        self.fraction = fraction
        self.projection_dim = projection_dim
        self.distance = distance
        self.passes = passes
        self.shuffle = shuffle
        self.chunk_size = chunk_size
        self.memory_budget_mb = memory_budget_mb
        self.k = k
        self.sigma = sigma
        self.batch_size = batch_size
        self.device = device
        self.checkpoint_every = checkpoint_every
        self.random_state = random_state
        self.progress = progress

    # -- scikit-learn plumbing ---------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        names = SequentialPatchCore.__init__.__code__.co_varnames[
            1 : SequentialPatchCore.__init__.__code__.co_argcount
        ]
        params = {name: getattr(self, name) for name in names}
        params["layers"] = list(params["layers"])
        params["input_size"] = None if params["input_size"] is None else list(params["input_size"])
        params["weights"] = None if params["weights"] is None else str(params["weights"])
        return params

    def set_params(self, **params: Any) -> SequentialPatchCore:
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"unknown parameter {name!r}; expected one of {sorted(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = SequentialPatchCore().get_params()
        changed = {k: v for k, v in self.get_params().items() if v != defaults[k]}
        return f"SequentialPatchCore({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # -- fitting ------------------------------------------------------------------------------

    def fit(
        self,
        images: Sequence[ImageLike] | Callable[[], Iterable[ImageLike]],
        y: Any = None,
        checkpoint: str | os.PathLike | None = None,
    ) -> SequentialPatchCore:
        """Build the coreset from normal images.

        Args:
            images: file paths, arrays (H x W or H x W x C, uint8 or float in [0, 1]) or
                tensors, in stream order. A sequence is read once per pass; for data that
                does not fit in memory pass paths, or a callable returning a fresh iterable
                (then `capacity` must be set).
            y: ignored (scikit-learn compatibility).
            checkpoint: sequential method: a file where the build's state is saved every
                `checkpoint_every` images; when it exists, the build resumes from it and ends
                with the same coreset as an uninterrupted build. Removed when the fit ends.

        Returns:
            self.
        """
        self._check_params()
        self._reset()
        extractor = self._extractor()
        self.n_features_in_ = extractor.dim
        self.fingerprint_ = self._fingerprint(extractor)
        capacity = self._resolve_capacity(images, extractor)

        if self.method == "sequential":
            self._fit_sequential(images, extractor, capacity, checkpoint)
        elif self.method == "random":
            self._fit_random(images, extractor, capacity)
        else:
            self._fit_collected(images, extractor, capacity)
        return self

    def partial_fit(self, images: Iterable[ImageLike], y: Any = None) -> SequentialPatchCore:
        """Stream more normal images into a fitted or loaded sequential coreset.

        On an unfitted model this is `fit` with a single pass; `capacity` must then be set.
        fit(A + B) and fit(A) then partial_fit(B) give the same coreset when len(A) is a
        multiple of batch_size: the backbone's float results depend in their last bits on which
        images share a batch, and the coreset rule is exact, so it sees those bits.
        """
        if not hasattr(self, "coreset_"):
            if self.capacity <= 0:
                raise ValueError("capacity: partial_fit on an unfitted model needs capacity > 0, "
                                 f"got {self.capacity}")
            self._check_params()
            self._reset()
            extractor = self._extractor()
            self.n_features_in_ = extractor.dim
            self.fingerprint_ = self._fingerprint(extractor)
            self.builder_ = self._new_builder(extractor.dim, self.capacity)
        else:
            self._ensure_builder(self.capacity or self.builder_capacity())
            extractor = self._extractor()
        for features in self._stream_features(images, extractor, "partial_fit"):
            self.builder_.update(features)
            self.n_images_seen_ += 1
        self.coreset_ = self.builder_.coreset()
        return self

    def meld(
        self,
        other: SequentialPatchCore | Iterable[ImageLike],
        capacity: int | None = None,
    ) -> SequentialPatchCore:
        """Meld another coreset or more images into this one (pre-train, then fine-tune).

        `meld(images)` continues the sequential rule from this coreset over the images.
        `meld(other_model)` streams the other coreset's members into this one, most novel
        first. Both coresets must come from the same feature space (backbone, weights, layers,
        input scale and projection).

        Args:
            other: a fitted SequentialPatchCore, or images as for `fit`.
            capacity: K of the result; None keeps this model's.

        Returns:
            self, with the melded coreset.

        Raises:
            FeatureSpaceMismatch: the fingerprints differ; the message names both.
        """
        self._check_fitted()
        target = capacity if capacity is not None else self.builder_capacity()
        if isinstance(other, SequentialPatchCore):
            other._check_fitted()
            if other.fingerprint_ != self.fingerprint_:
                raise FeatureSpaceMismatch(
                    "cannot meld coresets from different feature spaces:\n"
                    f"  this model:  {self.fingerprint_}\n"
                    f"  other model: {other.fingerprint_}"
                )
            self._ensure_builder(self.builder_capacity())
            self.builder_ = _C.meld_coresets(self.builder_, other.coreset_, target)
            self.n_images_seen_ += other.n_images_seen_
            self.coreset_ = self.builder_.coreset()
            return self

        self._ensure_builder(target)
        if target != self.builder_.capacity:
            self.builder_.set_capacity(target)
        return self.partial_fit(other)

    def builder_capacity(self) -> int:
        """K of the fitted coreset (its capacity, not its current size)."""
        self._check_fitted()
        builder = getattr(self, "builder_", None)
        return builder.capacity if builder is not None else max(1, len(self.coreset_))

    # -- scoring ------------------------------------------------------------------------------

    def score(self, images: Iterable[ImageLike]) -> Iterator[ImageResult]:
        """Anomaly map and image score per image, lazily, in input order.

        Each map is [H, W] at the image's own size (higher = more anomalous); the image score
        is the map's maximum (times PatchCore's reweighting when k > 1).
        """
        self._check_fitted()
        extractor = self._extractor()
        bank = self.coreset_.to(self._search_device())
        batch: list[tuple[torch.Tensor, tuple[int, int]]] = []
        for item in images:
            image = _as_array(item)
            batch.append((image, image.shape[:2]))
            if len(batch) == self.batch_size:
                yield from self._score_batch(batch, extractor, bank)
                batch = []
        if batch:
            yield from self._score_batch(batch, extractor, bank)

    def anomaly_maps(self, images: Iterable[ImageLike]) -> tuple[list[np.ndarray], np.ndarray]:
        """All anomaly maps ([H_i, W_i] float32 each) and image scores [n]."""
        maps, scores = [], []
        for result in self.score(images):
            maps.append(result.anomaly_map)
            scores.append(result.score)
        return maps, np.asarray(scores, dtype=np.float64)

    def score_samples(self, images: Iterable[ImageLike]) -> np.ndarray:
        """Image anomaly scores [n], higher = more anomalous.

        Note the sign: scikit-learn's outlier detectors return higher = more normal; anomaly
        detection on surfaces, like anomalib, reports the anomaly score itself.
        """
        return np.asarray([result.score for result in self.score(images)], dtype=np.float64)

    def set_threshold(self, image: float | None, pixel: float | None = None) -> None:
        """Set the decision thresholds (usually chosen on a validation split)."""
        self.threshold_ = None if image is None else float(image)
        self.pixel_threshold_ = None if pixel is None else float(pixel)

    def predict(self, images: Iterable[ImageLike]) -> np.ndarray:
        """1 for anomalous images (score >= threshold_), 0 for normal ones."""
        self._check_fitted()
        if self.threshold_ is None:
            raise ValueError("threshold_ is not set: call set_threshold() (or fit a threshold "
                             "on a validation split) before predict()")
        return (self.score_samples(images) >= self.threshold_).astype(np.int64)

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model to one file, atomically; returns its path."""
        self._check_fitted()
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "params": self.get_params(),
            "fingerprint": self.fingerprint_,
            "backbone_identity": self.fingerprint_.split("|", 1)[0],
            "coreset": self.coreset_.contiguous(),
            "builder_state": None if self.builder_ is None else dict(self.builder_.state()),
            "threshold": self.threshold_,
            "pixel_threshold": self.pixel_threshold_,
            "n_images_seen": self.n_images_seen_,
            "n_features_in": self.n_features_in_,
        }
        return atomic_torch_save(payload, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SequentialPatchCore:
        """Read a model written by `save`."""
        payload = read_payload(Path(path), FORMAT)
        if payload["version"] != FORMAT_VERSION:
            raise ModelFileError(f"{path}: model format version {payload['version']} is not "
                                 f"supported (this seqpatchcore reads version {FORMAT_VERSION})")
        model = cls(**payload["params"])
        model._reset()
        model.coreset_ = payload["coreset"]
        model.fingerprint_ = payload["fingerprint"]
        model.threshold_ = payload["threshold"]
        model.pixel_threshold_ = payload["pixel_threshold"]
        model.n_images_seen_ = payload["n_images_seen"]
        model.n_features_in_ = payload["n_features_in"]
        if payload["builder_state"] is not None:
            model.builder_ = _C.SequentialCoreset.from_state(payload["builder_state"])
        return model

    # -- internals ----------------------------------------------------------------------------

    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        checks = [
            ("capacity", self.capacity, isinstance(self.capacity, int) and self.capacity >= 0,
             "an integer >= 0"),
            ("fraction", self.fraction, 0.0 < float(self.fraction) <= 1.0, "a number in (0, 1]"),
            ("passes", self.passes, isinstance(self.passes, int) and self.passes >= 1,
             "an integer >= 1"),
            ("k", self.k, isinstance(self.k, int) and self.k >= 1, "an integer >= 1"),
            ("sigma", self.sigma, float(self.sigma) >= 0.0, "a number >= 0"),
            ("projection_dim", self.projection_dim,
             isinstance(self.projection_dim, int) and self.projection_dim >= -1,
             "an integer >= -1"),
            ("checkpoint_every", self.checkpoint_every,
             isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
             "an integer >= 0"),
            ("memory_budget_mb", self.memory_budget_mb, float(self.memory_budget_mb) >= 0.0,
             "a number >= 0"),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {value!r}")
        if self.distance not in ("matmul", "exact"):
            raise ValueError(f"distance: expected 'matmul' or 'exact', got {self.distance!r}")
        if self.checkpoint_every % self.batch_size != 0:
            # A resumed build must batch its images as the killed one did: the backbone's
            # float results differ in the last bits between batch compositions.
            raise ValueError(f"checkpoint_every: expected a multiple of batch_size "
                             f"({self.batch_size}), got {self.checkpoint_every}")
        if self.passes > 1 and self.method != "sequential":
            raise ValueError(f"passes: only the sequential method streams several passes, got "
                             f"passes={self.passes} with method={self.method!r}")

    def _reset(self) -> None:
        self.builder_ = None
        self.threshold_ = None
        self.pixel_threshold_ = None
        self.n_images_seen_ = 0

    def _check_fitted(self) -> None:
        if not hasattr(self, "coreset_"):
            raise ValueError("this SequentialPatchCore is not fitted yet: call fit() or load()")

    def _torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device "
                             f"(torch {torch.__version__}); use 'cpu' or 'auto'")
        if self.device == "cuda" and not _C.cuda_compiled():
            raise ValueError(
                "device: 'cuda' was asked for, but seqpatchcore was built without CUDA; "
                "rebuild it with a CUDA build of torch and nvcc on PATH "
                "(SEQPATCHCORE_CUDA=ON pip install --no-build-isolation .), or use 'auto' to run "
                "only the backbone on the GPU"
            )
        return torch.device(self.device)

    def _search_device(self) -> torch.device:
        """Where scoring searches the coreset: the model's CUDA device when the extension has
        kernels for it (and k fits them), else the CPU."""
        device = self._torch_device()
        if device.type != "cuda":
            return torch.device("cpu")
        if not _C.cuda_compiled():
            logger.info("seqpatchcore was built without CUDA: the coreset search runs on the CPU")
            return torch.device("cpu")
        if self.k > _C.cuda_max_k:
            logger.info("k=%d is above the CUDA kernels' %d: the coreset search runs on the CPU",
                        self.k, _C.cuda_max_k)
            return torch.device("cpu")
        return device

    def _extractor(self) -> PatchFeatureExtractor:
        cached = getattr(self, "_cached_extractor", None)
        key = (self.backbone, str(self.weights), tuple(self.layers),
               None if self.input_size is None else tuple(self.input_size), self.pool_size,
               self.batch_size, self.device)
        if cached is not None and cached[0] == key:
            return cached[1]
        backbone = load_backbone(self.backbone, self.weights)
        extractor = PatchFeatureExtractor(
            backbone,
            layers=tuple(self.layers),
            input_size=None if self.input_size is None else tuple(self.input_size),
            pool_size=self.pool_size,
            batch_size=self.batch_size,
            device=self._torch_device(),
        )
        self._cached_extractor = (key, extractor)
        return extractor

    def _projection_dim(self, dim: int) -> int:
        if self.projection_dim >= 0:
            return self.projection_dim
        return 128 if self.method == "greedy" else 0

    def _fingerprint(self, extractor: PatchFeatureExtractor) -> str:
        projection = self._projection_dim(extractor.dim)
        seed = self.random_state if projection > 0 else 0
        return f"{extractor.fingerprint()}|projection={projection}:seed={seed}"

    def _resolve_capacity(self, images: Any, extractor: PatchFeatureExtractor) -> int:
        if self.capacity > 0:
            return self.capacity
        if self.method == "all":
            return 0
        if not isinstance(images, Sequence):
            raise ValueError("capacity: with images given as a stream, set capacity > 0 "
                             "(fraction needs the number of training patches up front)")
        if len(images) == 0:
            raise ValueError("images: the training set is empty")
        if extractor.input_size is not None:
            grid = extractor.grid_shape()
            patches = len(images) * grid[0] * grid[1]
        else:
            # Indexing, not iterating: a sequence may decode images when iterated.
            patches = sum(_patch_count(images[i], extractor) for i in range(len(images)))
        return max(1, int(self.fraction * patches))

    def _new_builder(self, dim: int, capacity: int) -> Any:
        return _C.SequentialCoreset(
            dim,
            capacity,
            distance=self.distance,
            projection_dim=self._projection_dim(dim),
            seed=self.random_state,
            chunk_size=self.chunk_size,
            memory_budget_bytes=int(self.memory_budget_mb * 2**20),
        )

    def _ensure_builder(self, capacity: int) -> None:
        """A builder to continue from: the sequential one, or one made from the coreset."""
        if self.builder_ is None:
            self.builder_ = _C.SequentialCoreset.from_members(
                self.coreset_,
                max(capacity, len(self.coreset_)),
                distance=self.distance,
                projection_dim=self._projection_dim(self.n_features_in_),
                seed=self.random_state,
                chunk_size=self.chunk_size,
                memory_budget_bytes=int(self.memory_budget_mb * 2**20),
            )

    def _pass_order(self, count: int, pass_index: int) -> np.ndarray:
        if pass_index == 0 and not self.shuffle:
            return np.arange(count)
        rng = np.random.default_rng([self.random_state, pass_index])
        return rng.permutation(count)

    def _fit_sequential(self, images: Any, extractor: PatchFeatureExtractor, capacity: int,
                        checkpoint: str | os.PathLike | None) -> None:
        if self.passes > 1 and not isinstance(images, Sequence) and not callable(images):
            raise ValueError("images: several passes need a sequence or a callable returning "
                             "a fresh iterable, got a one-shot iterator")
        self.builder_ = self._new_builder(extractor.dim, capacity)
        start_pass, start_position = 0, 0
        checkpoint = None if checkpoint is None else Path(checkpoint)
        if checkpoint is not None and checkpoint.exists():
            start_pass, start_position = self._resume(checkpoint, images)

        for pass_index in range(start_pass, self.passes):
            source = images() if callable(images) else images
            if isinstance(source, Sequence):
                order = self._pass_order(len(source), pass_index)
                total = len(order) - start_position
                # In stream order the sequence's own iterator may decode ahead.
                in_order = start_position == 0 and np.array_equal(order, np.arange(len(order)))
                stream = iter(source) if in_order else (source[i] for i in order[start_position:])
            else:
                total = None
                stream = _skip(source, start_position) if start_position else source
            position = start_position
            # The builder takes features where the backbone made them: on a GPU its matrix
            # products run there (Note [Sequential coreset on a GPU]).
            for features in self._stream_features(stream, extractor,
                                                  f"coreset pass {pass_index + 1}", total,
                                                  keep_device=True):
                self.builder_.update(features)
                self.n_images_seen_ += 1
                position += 1
                if checkpoint is not None and self.checkpoint_every > 0 \
                        and position % self.checkpoint_every == 0:
                    self._save_checkpoint(checkpoint, pass_index, position, images)
            start_position = 0

        self.coreset_ = self.builder_.coreset()
        if checkpoint is not None and checkpoint.exists():
            checkpoint.unlink()
        logger.info("sequential coreset: %d members from %d images, counters %s",
                    len(self.coreset_), self.n_images_seen_, self.builder_.counters)

    def _checkpoint_identity(self, images: Any) -> dict[str, Any]:
        params = self.get_params()
        params.pop("progress")
        params.pop("checkpoint_every")
        identity = {"params": params, "fingerprint": self.fingerprint_}
        if isinstance(images, Sequence):
            identity["images"] = len(images)
        return identity

    def _save_checkpoint(self, path: Path, pass_index: int, position: int, images: Any) -> None:
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "version": FORMAT_VERSION,
                "identity": self._checkpoint_identity(images),
                "pass": pass_index,
                "position": position,
                "n_images_seen": self.n_images_seen_,
                "builder_state": dict(self.builder_.state()),
            },
            path,
        )

    def _resume(self, path: Path, images: Any) -> tuple[int, int]:
        payload = read_payload(path, CHECKPOINT_FORMAT)
        expected = self._checkpoint_identity(images)
        if payload["identity"] != expected:
            raise ModelFileError(
                f"{path}: this checkpoint belongs to another build; remove it or fit with the "
                f"same parameters and images.\n  checkpoint: {payload['identity']}\n"
                f"  this fit:   {expected}"
            )
        self.builder_ = _C.SequentialCoreset.from_state(payload["builder_state"])
        self.n_images_seen_ = payload["n_images_seen"]
        logger.info("resuming the sequential coreset from %s at pass %d, image %d", path,
                    payload["pass"] + 1, payload["position"])
        return payload["pass"], payload["position"]

    def _fit_random(self, images: Any, extractor: PatchFeatureExtractor, capacity: int) -> None:
        # Each patch gets a seeded uniform key; the `capacity` smallest keys are a uniform
        # sample without replacement, kept in O(capacity) memory while streaming.
        generator = torch.Generator().manual_seed(self.random_state)
        kept = torch.empty(0, extractor.dim)
        keys = torch.empty(0)
        for features in self._stream_features(images, extractor, "random sample"):
            candidate_keys = torch.rand(len(features), generator=generator)
            kept = torch.cat([kept, features])
            keys = torch.cat([keys, candidate_keys])
            if len(keys) > capacity:
                order = torch.topk(keys, capacity, largest=False).indices.sort().values
                kept, keys = kept[order], keys[order]
            self.n_images_seen_ += 1
        self.coreset_ = kept.contiguous()

    def _fit_collected(self, images: Any, extractor: PatchFeatureExtractor,
                       capacity: int) -> None:
        # Standard PatchCore: every patch feature of every image in memory at once.
        collected = []
        for features in self._stream_features(images, extractor, "collecting features"):
            collected.append(features)
            self.n_images_seen_ += 1
        if not collected:
            raise ValueError("images: the training set is empty")
        features = torch.cat(collected)
        del collected
        if self.method == "all" or capacity >= len(features):
            self.coreset_ = features
            return
        indices = _C.greedy_coreset(
            features,
            capacity,
            projection_dim=self._projection_dim(extractor.dim),
            seed=self.random_state,
        )
        self.coreset_ = features[indices].contiguous()

    def _stream_features(self, images: Iterable[ImageLike], extractor: PatchFeatureExtractor,
                         description: str, total: int | None = None,
                         keep_device: bool = False) -> Iterator[torch.Tensor]:
        """Patch features [h * w, D] (float32) per image, batching the backbone calls; on the
        CPU, or with keep_device on the backbone's device."""
        if total is None and isinstance(images, Sequence):
            total = len(images)
        count = 0
        batch: list[np.ndarray] = []
        with tqdm(total=total, desc=description, unit="img", disable=not self.progress,
                  leave=False) as bar:
            for item in images:
                batch.append(_as_array(item))
                if len(batch) == self.batch_size:
                    for features in extractor.extract_each(batch):
                        count += 1
                        bar.update(1)
                        flat = features.reshape(-1, extractor.dim).float()
                        yield flat if keep_device else flat.cpu()
                    batch = []
            if batch:
                for features in extractor.extract_each(batch):
                    count += 1
                    bar.update(1)
                    flat = features.reshape(-1, extractor.dim).float()
                    yield flat if keep_device else flat.cpu()
        if count == 0:
            raise ValueError(f"images: no images to stream for {description}")

    def _score_batch(self, batch: list[tuple[np.ndarray, tuple[int, int]]],
                     extractor: PatchFeatureExtractor,
                     bank: torch.Tensor) -> Iterator[ImageResult]:
        features = extractor.extract_each([image for image, _ in batch])
        for feature, (_, (height, width)) in zip(features, batch, strict=True):
            grid_h, grid_w, dim = feature.shape
            # queries: [h * w, D] on the bank's device; patch_scores: [1, h, w] on the CPU
            queries = feature.reshape(-1, dim).float().to(bank.device)
            distances, indices = _C.nearest_neighbors(queries, bank, self.k)
            patch_scores = distances[:, 0].reshape(1, grid_h, grid_w).cpu()

            # With a fixed input size the grid spans the whole (resized) image; at native size
            # it spans the image padded to whole patches, so upsample to that and crop.
            if self.input_size is not None:
                maps, _ = _C.score_images(patch_scores, height, width, float(self.sigma))
            else:
                stride = extractor.stride
                maps, _ = _C.score_images(patch_scores, grid_h * stride, grid_w * stride,
                                          float(self.sigma))
                maps = maps[:, :height, :width]
            anomaly_map = maps[0].numpy().astype(np.float32, copy=False)
            score = float(anomaly_map.max())
            if self.k > 1:
                score *= self._reweight(queries, distances, indices, bank)
            yield ImageResult(anomaly_map=anomaly_map, score=score)

    def _reweight(self, queries: torch.Tensor, distances: torch.Tensor, indices: torch.Tensor,
                  bank: torch.Tensor) -> float:
        # PatchCore eq. 7: the most anomalous patch's score is damped when its nearest member
        # m* sits in a dense part of the coreset, where m*'s own neighbours are close too.
        patch = int(torch.argmax(distances[:, 0]))
        nearest = int(indices[patch, 0])
        _, neighbourhood = _C.nearest_neighbors(bank[nearest : nearest + 1], bank, self.k)
        members = neighbourhood[0][neighbourhood[0] >= 0]
        to_members = torch.linalg.vector_norm(bank[members] - queries[patch], dim=1).double()
        weights = torch.softmax(to_members, dim=0)
        return float(1.0 - weights[0])


def _as_array(item: ImageLike) -> np.ndarray:
    if isinstance(item, str | os.PathLike):
        return load_image(item)
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray):
        raise TypeError(f"images: expected file paths, numpy arrays or tensors, got "
                        f"{type(item).__name__}")
    if item.ndim not in (2, 3) or min(item.shape[:2]) < 1:
        raise ValueError(f"images: expected an H x W or H x W x C image, got shape {item.shape}")
    return item


def _image_size(item: ImageLike) -> tuple[int, int]:
    if isinstance(item, str | os.PathLike):
        from PIL import Image

        with Image.open(item) as image:
            width, height = image.size
        return height, width
    return tuple(np.shape(item)[:2])


def _patch_count(item: ImageLike, extractor: PatchFeatureExtractor) -> int:
    grid = extractor.grid_shape(None if extractor.input_size is not None else _image_size(item))
    return grid[0] * grid[1]


def _skip(stream: Iterable[ImageLike], count: int) -> Iterator[ImageLike]:
    iterator = iter(stream)
    for _ in range(count):
        next(iterator, None)
    return iterator


def atomic_torch_save(payload: dict[str, Any], path: Path) -> Path:
    """torch.save through an atomic write: readers never see half a file."""
    return atomic_write(path, lambda stream: torch.save(payload, stream))


def read_payload(path: Path, expected_format: str) -> dict[str, Any]:
    """Load a file written by atomic_torch_save and check what it claims to be."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            io.UnsupportedOperation) as error:
        raise ModelFileError(
            f"{path}: not a readable {expected_format} file (truncated, corrupt or another "
            f"format): {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from error
    except Exception as error:  # unpickling foreign objects raises a variety of errors
        raise ModelFileError(f"{path}: not a {expected_format} file: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelFileError(f"{path}: expected a {expected_format} file, found {found!r}")
    return payload


def patches_per_image(input_size: tuple[int, int], stride: int) -> int:
    """Patches of one image resized to input_size, for a feature grid of this stride."""
    return math.ceil(input_size[0] / stride) * math.ceil(input_size[1] / stride)
