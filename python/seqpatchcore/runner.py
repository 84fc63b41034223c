"""The main job: fit on `train`, choose thresholds on `val`, evaluate `test`, write a run folder.

    seqpatchcore run configs/magnetic_tile.yaml

Every check that can fail on bad input (config keys and values, data files, mask sizes,
weights, the output folder) runs before any feature is computed. The run folder is written
under a temporary name and renamed when complete, so an interrupted run leaves no half folder.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqpatchcore import _C, __version__, metrics
from seqpatchcore.data import (
    DatasetError,
    Sample,
    load_dataset,
    load_image,
    load_mask,
    validate_samples,
)
from seqpatchcore.files import write_json, write_text
from seqpatchcore.model import SequentialPatchCore

logger = logging.getLogger(__name__)


class RunError(ValueError):
    """Bad input found before the run started; the message says what and where."""


@dataclass
class RunPlan:
    """A validated run: config, where each key came from, and the samples of each split."""

    config: dict[str, Any]
    locations: dict[str, str]
    splits: dict[str, list[Sample]]
    output_dir: Path
    config_file: Path | None = None
    # Training images streamed before the real ones (melding: pre-train, then fine-tune).
    pretrain: list[Sample] = field(default_factory=list)
    # Good test images carrying impurities (stains, dust), scored as a second test condition.
    impure: list[Sample] = field(default_factory=list)


@dataclass
class SplitScores:
    """Scores of one split, aligned with its samples."""

    samples: list[Sample]
    scores: np.ndarray
    maps: list[np.ndarray] = field(repr=False)
    masks: list[np.ndarray] = field(repr=False)

    @property
    def labels(self) -> np.ndarray:
        return np.array([sample.is_anomalous for sample in self.samples])

    @property
    def defect_types(self) -> list[str]:
        return [sample.label for sample in self.samples]


def load_run_config(file: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[dict, dict]:
    """Read and validate a run config (see `seqpatchcore config --describe run`)."""
    return _C.load_config(str(file), "run", list(overrides))


def plan_run(config: dict[str, Any], locations: dict[str, str],
             config_file: Path | None = None) -> RunPlan:
    """Check everything the run needs before any work starts."""
    data = config["data"]
    root = Path(data["root"])
    if not root.is_dir():
        raise RunError(f"{locations.get('data.root', 'data.root')}: data.root: no such folder "
                       f"{root}")

    layout = {"auto": "auto", "split_csv": "split_csv", "mvtec": "mvtec"}[data["format"]]
    try:
        splits = load_dataset(root, layout=layout, val_fraction=data["val_fraction"],
                              seed=config["seed"])
    except DatasetError as error:
        raise RunError(f"{locations.get('data.root', 'data.root')}: {error}") from error

    names = {"train": data["train_split"], "val": data["val_split"], "test": data["test_split"]}
    selected = {}
    for role, name in names.items():
        source = splits
        if role == "train" and data.get("train_root"):
            source = _read_root(data["train_root"], "data.train_root", data, config, locations)
        samples = source.get(name, [])
        if not samples:
            raise RunError(f"{locations.get(f'data.{role}_split', role)}: split '{name}' has no "
                           f"images in {root if source is splits else data['train_root']} "
                           f"(found splits: {sorted(source)})")
        selected[role] = samples
    if data["limit_train"] > 0:
        selected["train"] = _subset(selected["train"], data["limit_train"],
                                    data.get("train_subset", "first"), config["seed"])
    if data["limit_eval"] > 0:
        for role in ("val", "test"):
            selected[role] = _stratified_subset(selected[role], data["limit_eval"], config["seed"])

    pretrain: list[Sample] = []
    if data.get("pretrain_root"):
        pretrain = _read_root(data["pretrain_root"], "data.pretrain_root", data, config,
                              locations).get(data["train_split"], [])
        if not pretrain:
            raise RunError(f"{locations.get('data.pretrain_root')}: data.pretrain_root: no "
                           f"'{data['train_split']}' images in {data['pretrain_root']}")
    impure: list[Sample] = []
    if data.get("impure_root"):
        impure = [sample for sample in _read_root(data["impure_root"], "data.impure_root", data,
                                                  config, locations).get(data["test_split"], [])
                  if not sample.is_anomalous and sample.impurity_mask is not None]
        if not impure:
            raise RunError(f"{locations.get('data.impure_root')}: data.impure_root: no good "
                           f"'{data['test_split']}' images with impurity masks in "
                           f"{data['impure_root']}")

    names.update(pretrain=names["train"], impure=names["test"])
    for role, samples in [*selected.items(), ("pretrain", pretrain), ("impure", impure)]:
        try:
            if samples:
                validate_samples(samples, names[role], root)
        except DatasetError as error:
            raise RunError(str(error)) from error

    output = config["output"]
    output_dir = Path(output["dir"]) if output["dir"] else Path("runs") / config["name"]
    if output_dir.exists() and not output["overwrite"]:
        raise RunError(f"{locations.get('output.dir', 'output.dir')}: output folder "
                       f"{output_dir} exists; choose another output.dir or set "
                       f"output.overwrite: true")

    # The weights are read now so that a missing file stops the run before any work.
    from seqpatchcore.backbones import load_backbone

    try:
        load_backbone(config["backbone"]["name"], config["backbone"]["weights"])
    except FileNotFoundError as error:
        raise RunError(f"{locations.get('backbone.weights', 'default')}: backbone.weights: "
                       f"{error}") from error
    return RunPlan(config, locations, selected, output_dir, config_file, pretrain, impure)


def model_from_config(config: dict[str, Any], progress: bool = True) -> SequentialPatchCore:
    """The estimator a run config describes."""
    features, coreset, scoring = config["features"], config["coreset"], config["scoring"]
    return SequentialPatchCore(
        backbone=config["backbone"]["name"],
        weights=config["backbone"]["weights"],
        layers=tuple(features["layers"]),
        input_size=None if features["input_size"] is None else tuple(features["input_size"]),
        pool_size=features["pool_size"],
        method=coreset["method"],
        capacity=coreset["capacity"],
        fraction=coreset["fraction"],
        projection_dim=coreset["projection_dim"],
        distance=coreset["distance"],
        passes=coreset["passes"],
        shuffle=coreset["shuffle"],
        chunk_size=coreset["chunk_size"],
        memory_budget_mb=coreset["memory_budget_mb"],
        k=scoring["k"],
        sigma=scoring["sigma"],
        batch_size=features["batch_size"],
        device=config["device"],
        checkpoint_every=coreset["checkpoint_every"],
        random_state=config["seed"],
        progress=progress,
    )


def score_split(model: SequentialPatchCore, samples: Sequence[Sample], workers: int,
                description: str, progress: bool = True) -> SplitScores:
    """Anomaly maps, image scores and ground-truth masks of a split."""
    from tqdm.auto import tqdm

    maps, scores, masks = [], [], []
    images = prefetch_images([sample.image for sample in samples], workers)
    results = model.score(images)
    for sample, result in tqdm(zip(samples, results, strict=True), total=len(samples),
                               desc=description, unit="img", disable=not progress, leave=False):
        maps.append(result.anomaly_map)
        scores.append(result.score)
        masks.append(load_mask(sample.mask, result.anomaly_map.shape, sample.image))
    return SplitScores(list(samples), np.asarray(scores), maps, masks)


def execute(plan: RunPlan, progress: bool = True) -> dict[str, Any]:
    """Run a planned job and write its folder; returns the metrics written to metrics.json."""
    from seqpatchcore import report

    config = plan.config
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{plan.output_dir.name}.partial-",
                                    dir=_ensure_parent(plan.output_dir)))
    try:
        model = model_from_config(config, progress)
        logger.info("fitting %s on %d training images", config["coreset"]["method"],
                    len(plan.splits["train"]))
        fit_started = time.perf_counter()
        workers = config["data"]["workers"]
        train_paths = [sample.image for sample in plan.splits["train"]]
        checkpoint = staging / "checkpoint.pt" if config["coreset"]["checkpoint_every"] else None
        if plan.pretrain:
            # meld(M, stream): the coreset of the pre-training images continues over the real
            # ones by the same rule.
            model.fit(_ReiterablePrefetch([s.image for s in plan.pretrain], workers))
            model.meld(_ReiterablePrefetch(train_paths, workers))
        else:
            model.fit(_ReiterablePrefetch(train_paths, workers), checkpoint=checkpoint)
        fit_seconds = time.perf_counter() - fit_started
        fit_peak = peak_rss_mb()

        val = score_split(model, plan.splits["val"], workers, "scoring val", progress)
        thresholds = choose_thresholds(val, config["evaluation"]["good_quantile"])
        model.set_threshold(thresholds["image"]["value"], thresholds["pixel"]["value"])
        test = score_split(model, plan.splits["test"], workers, "scoring test", progress)

        evaluation = config["evaluation"]
        results = {
            "split": {role: len(samples) for role, samples in plan.splits.items()},
            "thresholds": thresholds,
            "val": evaluate_split(val, thresholds, evaluation),
            "test": evaluate_split(test, thresholds, evaluation),
            "coreset": {
                "method": config["coreset"]["method"],
                "size": int(len(model.coreset_)),
                "dim": int(model.n_features_in_),
                "counters": None if model.builder_ is None else dict(model.builder_.counters),
                "fingerprint": model.fingerprint_,
            },
            "seconds": {"fit": fit_seconds, "total": time.perf_counter() - started},
            "peak_rss_mb_fit": fit_peak,
            "peak_rss_mb": peak_rss_mb(),
        }
        if plan.pretrain:
            results["split"]["pretrain"] = len(plan.pretrain)
        if plan.impure:
            results.update(evaluate_impure(model, plan, test, thresholds, evaluation, progress))

        write_text(staging / "config.yaml", _C.dump_config(config))
        write_text(staging / "scores.csv", scores_csv({"val": val, "test": test}))
        write_json(staging / "metrics.json", results)
        write_json(staging / "environment.json", environment(config))
        report.write_run_report(staging, results, test, config)
        if config["output"]["save_model"]:
            model.save(staging / "model.spc")
        _publish(staging, plan.output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return results


def evaluate_impure(model: SequentialPatchCore, plan: RunPlan, test: SplitScores,
                    thresholds: dict[str, Any], evaluation: dict[str, Any],
                    progress: bool) -> dict[str, Any]:
    """The second test condition: the test defects with good images that carry impurities in
    place of the clean good ones, and how often the impurities raise alarms."""
    impure = score_split(model, plan.impure, plan.config["data"]["workers"], "scoring impure",
                         progress)
    impurity_masks = [load_mask(sample.impurity_mask, impure_map.shape, sample.image)
                      for sample, impure_map in zip(impure.samples, impure.maps, strict=True)]
    defects = [i for i, sample in enumerate(test.samples) if sample.is_anomalous]
    mixed = SplitScores(
        [test.samples[i] for i in defects] + impure.samples,
        np.concatenate([test.scores[defects], impure.scores]),
        [test.maps[i] for i in defects] + impure.maps,
        [test.masks[i] for i in defects] + impure.masks,
    )
    alarms = metrics.impurity_false_alarms(
        impurity_masks, impure.maps, impure.scores, impure.labels,
        thresholds["pixel"]["value"], thresholds["image"]["value"],
    )
    return {"split_impure": len(impure.samples),
            "test_impure": evaluate_split(mixed, thresholds, evaluation),
            "impurity": alarms}


def choose_thresholds(val: SplitScores, good_quantile: float) -> dict[str, Any]:
    """F1-optimal image and pixel thresholds on the validation split (or a good quantile)."""
    image = metrics.choose_threshold(val.labels, val.scores, quantile=good_quantile)
    has_defect_pixels = any(mask.any() for mask in val.masks)
    if has_defect_pixels:
        pixel = metrics.f1_max(val.masks, val.maps)
        pixel_choice = {"value": float(pixel.threshold), "rule": "f1_max"}
    else:
        good = np.concatenate([m.ravel() for m in val.maps])
        pixel_choice = {"value": float(np.quantile(good, good_quantile)),
                        "rule": f"good_quantile_{good_quantile}"}
    return {"image": {"value": float(image.value), "rule": str(image.rule.value)},
            "pixel": pixel_choice}


def evaluate_split(split: SplitScores, thresholds: dict[str, Any],
                   evaluation: dict[str, Any]) -> dict[str, Any]:
    return metrics.evaluate(
        split.labels,
        split.scores,
        split.masks,
        split.maps,
        defect_types=split.defect_types,
        image_threshold=thresholds["image"]["value"],
        pixel_threshold=thresholds["pixel"]["value"],
        fpr_limit=evaluation["aupro_fpr_limit"],
        min_fraction=evaluation["min_defect_fraction"],
    )


def scores_csv(splits: dict[str, SplitScores]) -> str:
    """One row per scored image: split, label, image path, image score."""
    rows = ["split,label,image,score"]
    for name, split in splits.items():
        for sample, score in zip(split.samples, split.scores, strict=True):
            rows.append(f"{name},{sample.label},{sample.image},{score:.9g}")
    return "\n".join(rows) + "\n"


def prefetch_images(paths: Iterable[str | os.PathLike], workers: int) -> Iterator[np.ndarray]:
    """Decoded images in order, decoding up to 2 * workers ahead on threads (PIL releases the
    GIL while decoding). workers = 0 decodes in the caller's thread."""
    if workers <= 0:
        yield from (load_image(path) for path in paths)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for path in paths:
            pending.append(pool.submit(load_image, path))
            if len(pending) > 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


class _ReiterablePrefetch(Sequence):
    """A sequence of image paths that decodes ahead when iterated in order; indexing (used
    for shuffled passes) decodes on demand."""

    def __init__(self, paths: Sequence[str | os.PathLike], workers: int):
        self.paths = list(paths)
        self.workers = workers

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        return self.paths[index]

    def __iter__(self) -> Iterator[np.ndarray]:
        return prefetch_images(self.paths, self.workers)


def _read_root(root: str, key: str, data: dict[str, Any], config: dict[str, Any],
               locations: dict[str, str]) -> dict[str, list[Sample]]:
    if not Path(root).is_dir():
        raise RunError(f"{locations.get(key, key)}: {key}: no such folder {root}")
    try:
        return load_dataset(root, layout="auto", val_fraction=data["val_fraction"],
                            seed=config["seed"])
    except DatasetError as error:
        raise RunError(f"{locations.get(key, key)}: {error}") from error


def _subset(samples: list[Sample], count: int, how: str, seed: int) -> list[Sample]:
    """The first `count` samples, or a seeded random `count` of them in their order."""
    if count >= len(samples) or how == "first":
        return samples[:count]
    chosen = np.random.default_rng(seed).choice(len(samples), size=count, replace=False)
    return [samples[i] for i in sorted(chosen)]


def _stratified_subset(samples: list[Sample], count: int, seed: int) -> list[Sample]:
    """`count` samples keeping each label's share, seeded, in the original order."""
    if count >= len(samples):
        return samples
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        by_label.setdefault(sample.label, []).append(index)
    chosen: list[int] = []
    for label in sorted(by_label):
        indices = by_label[label]
        share = max(1, round(count * len(indices) / len(samples)))
        chosen.extend(rng.choice(indices, size=min(share, len(indices)), replace=False))
    return [samples[i] for i in sorted(chosen)]


def _ensure_parent(path: Path) -> Path:
    parent = path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _publish(staging: Path, target: Path) -> None:
    """Replace `target` by the complete `staging` folder."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def environment(config: dict[str, Any]) -> dict[str, Any]:
    """Versions, device and seed, so a result can be traced to what produced it."""
    return {
        "seqpatchcore": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "device": config["device"],
        "seed": config["seed"],
        "pid": os.getpid(),
    }
