"""The `seqpatchcore` command."""

from __future__ import annotations

import argparse
import glob
import logging
import re
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("seqpatchcore.cli")

EPILOG = """examples:
  seqpatchcore run configs/magnetic_tile.yaml
  seqpatchcore run configs/magnetic_tile.yaml --set coreset.method=greedy --set name=greedy
  seqpatchcore config --describe run
  seqpatchcore render configs/render_synthetic.yaml --output runs/render/synthetic
  seqpatchcore render configs/render_stained_test.yaml --set real.limit=20
  seqpatchcore predict runs/magnetic_tile/model.spc image1.png image2.png --output scores
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqpatchcore",
        description="Anomaly detection on industrial surfaces with a sequential, "
                    "bounded-memory PatchCore.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-v) or details (-vv)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run", help="fit on train, choose thresholds on val, evaluate test, write a run folder",
        description="The main job. Writes <output.dir>/ with config.yaml (resolved), "
                    "metrics.json, defects.md/.csv, heatmaps/*.png, score_histogram.png, "
                    "environment.json and model.spc.")
    run.add_argument("config", type=Path,
                     help="a run config (YAML), e.g. configs/magnetic_tile.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set coreset.capacity=2000 (repeatable)")
    run.add_argument("--output", type=Path, help="the run folder (overrides output.dir)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")

    render = commands.add_parser(
        "render", help="write a synthetic dataset, or real images with impurities, from a config",
        description="Renders the dataset a render config describes (kind: synthetic: "
                    "surfaces, defects and impurities; kind: real_stains: one impurity kind "
                    "added to real images, the rest of the real dataset copied beside them) in "
                    "the MVTec layout that `seqpatchcore run` reads (data.root: the folder): "
                    "<split>/<label>/*.png, ground_truth/<defect>/<name>_mask.png, "
                    "impurities/<split>/<name>_mask.png and manifest.json with every seed and "
                    "parameter, so any image can be rendered again exactly. Every file is "
                    "written under a temporary name and renamed into place, the manifest last: "
                    "an interrupted run leaves no half-written image, and running it again "
                    "completes it. Every key: seqpatchcore config --describe render; "
                    "parameters: docs/render.md.")
    render.add_argument("config", type=Path, metavar="CONFIG",
                        help="a render config (YAML), e.g. configs/render_synthetic.yaml")
    render.add_argument("--output", type=Path,
                        help="the dataset folder (overrides the config's output)")
    render.add_argument("--overwrite", action="store_true",
                        help="render every image again and accept a folder written from "
                             "another config")
    render.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config key, e.g. --set seed=3 (repeatable)")
    render.add_argument("--no-progress", action="store_true", help="hide progress bars")

    config = commands.add_parser("config", help="describe a config schema or check a file")
    action = config.add_mutually_exclusive_group(required=True)
    action.add_argument("--describe", metavar="SCHEMA", choices=["run", "render", "study"],
                        help="print every key of a schema as a Markdown table")
    action.add_argument("--check", type=Path, metavar="FILE",
                        help="validate a config and print it with defaults filled in")
    config.add_argument("--schema", choices=["auto", "run", "render", "study"], default="auto",
                        help="the schema --check validates against; auto: study if the file "
                             "has a top-level 'base', render if it has 'kind', else run")
    config.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a key before checking")

    predict = commands.add_parser(
        "predict", help="score images with a saved model",
        description="Writes scores.csv (image, score, anomalous) and, with --heatmaps, one "
                    "anomaly-map overlay per image.")
    predict.add_argument("model", type=Path, help="a model.spc written by `run` or save()")
    predict.add_argument("images", type=Path, nargs="+", help="image files or folders")
    predict.add_argument("--output", type=Path, required=True, help="folder for the results")
    predict.add_argument("--heatmaps", action="store_true", help="also write overlays")

    sweep = commands.add_parser(
        "sweep", help="run every cell of a study (restartable), then write its table and plots",
        description="Each cell is `seqpatchcore run` in its own process; finished cells are "
                    "kept and skipped, so a stopped sweep continues where it was. Writes "
                    "<study>/results.csv, results.md and plots/*.png.")
    sweep.add_argument("study", type=Path, help="a study config, e.g. configs/study_melding.yaml")
    sweep.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a study key (repeatable)")
    sweep.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    sweep.add_argument("--no-progress", action="store_true", help="hide progress bars")

    report = commands.add_parser("report", help="rebuild a study's table and plots from its "
                                                "run folders")
    report.add_argument("folder", type=Path, help="a study folder written by sweep")

    commands.add_parser("info", help="versions, devices and where the weights are found")
    return parser


def _configure_logging(verbosity: int) -> None:
    from seqpatchcore import _C

    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    _C.set_log_level(level)


def _run(args: argparse.Namespace) -> int:
    from seqpatchcore import runner

    overrides = list(args.overrides)
    if args.output is not None:
        overrides.append(f"output.dir={args.output.absolute()}")
    if args.overwrite:
        overrides.append("output.overwrite=true")
    config, locations = runner.load_run_config(args.config, overrides)
    plan = runner.plan_run(config, locations, args.config)
    print(f"run '{config['name']}': train {len(plan.splits['train'])}, val "
          f"{len(plan.splits['val'])}, test {len(plan.splits['test'])} images -> "
          f"{plan.output_dir}", file=sys.stderr)
    results = runner.execute(plan, progress=not args.no_progress)
    test = results["test"]
    print(f"test: image AUROC {_fmt(test.get('image_auroc'))}, pixel AUROC "
          f"{_fmt(test.get('pixel_auroc'))}, AUPRO {_fmt(test.get('aupro'))}, image F1 at the "
          f"val threshold {_fmt((test.get('image_at_threshold') or {}).get('f1'))}, defect "
          f"recall {_fmt((test.get('defect_recall') or {}).get('recall'))}")
    print(f"fit {results['seconds']['fit']:.1f} s, total {results['seconds']['total']:.1f} s, "
          f"peak memory {results['peak_rss_mb']:.0f} MiB; wrote {plan.output_dir}")
    return 0


# --- render ----------------------------------------------------------------------------------

# Top-level keys that only one kind of render config uses.
_SYNTHETIC_KEYS = ("size", "channels", "surface", "splits", "defects", "impurities")
_REAL_KEYS = ("real",)

# A key path in an error message: `spec.impurities[0].params`, `params.count`.
_KEY_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*")
_WORD = re.compile(r"[A-Za-z_]\w*")


def _given(locations: dict[str, str], key: str) -> str | None:
    """Where `key` was set (file:line:column or an override), or None for a default."""
    where = locations.get(key)
    return None if where in (None, "default") else where


def _config_error(where: str | None, key: str, problem: str, config: Path) -> ValueError:
    return ValueError(f"{where or config}: {key}: {problem}")


def _config_key(path: str, locations: dict[str, str], root: str, prefix: str) -> str | None:
    """The config key of a key path named in an error message, or None if it names none.

    Messages of `render.normalize_spec` name paths under `root` "spec"
    (``spec.surface.params`` is the config's ``surface.params``); those of
    `render.stain_real_images` under "params" (the config's ``real.params``).
    """
    if path != root and not path.startswith((root + ".", root + "[")):
        return None
    key = prefix + (path.removeprefix("spec.") if root == "spec" else path)
    return key if key.split(".")[0].split("[")[0] in locations else None


def _locate(message: str, locations: dict[str, str], root: str, prefix: str) -> str | None:
    """The location of the most specific config key that an error message names.

    The longest part of the named path that the config sets is taken, then refined by a later
    word of the message that names a key below it (an unknown parameter, a struct field such
    as ``stain.radius_px``).
    """
    for match in _KEY_PATH.finditer(message):
        key = _config_key(match.group(), locations, root, prefix)
        while key and _given(locations, key) is None:
            key = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", key) if re.search(r"[.\[]", key) else ""
        if not key:
            continue
        for word in _WORD.findall(message[match.end():]):
            if _given(locations, f"{key}.{word}") is not None:
                return _given(locations, f"{key}.{word}")
        return _given(locations, key)
    return None


def _config_keys(message: str, locations: dict[str, str], root: str, prefix: str) -> str:
    """The message with the key paths that `_locate` reads written as config keys."""
    def rename(match: re.Match) -> str:
        return _config_key(match.group(), locations, root, prefix) or match.group()

    return _KEY_PATH.sub(rename, message.replace("pass overwrite=True", "pass --overwrite"))


def _check_kind_keys(config: dict[str, Any], locations: dict[str, str], path: Path) -> None:
    synthetic = config["kind"] == "synthetic"
    unused = _REAL_KEYS if synthetic else _SYNTHETIC_KEYS
    other = "real_stains" if synthetic else "synthetic"
    for key in sorted(locations):
        if key.split(".")[0].split("[")[0] in unused and _given(locations, key):
            raise _config_error(_given(locations, key), key,
                                f"only used with kind: {other}, this config has kind: "
                                f"{config['kind']}; remove it", path)


def _fit_image_paths(fit: dict[str, Any], locations: dict[str, str], path: Path) -> list[str]:
    """The real images a calibrated surface is fitted on: files, folders, globs or a split."""
    from seqpatchcore import data

    if (fit["images"] is None) == (fit["data"] is None):
        raise _config_error(_given(locations, "surface.fit"), "surface.fit",
                            "give exactly one of images (files, folders, globs) or data (a "
                            "dataset and its split)", path)
    if fit["data"] is not None:
        root = Path(fit["data"])
        if not root.is_dir():
            raise _config_error(_given(locations, "surface.fit.data"), "surface.fit.data",
                                f"no such folder {root}", path)
        samples = data.load_dataset(root, splits=[fit["split"]])[fit["split"]]
        images = [str(s.image) for s in samples if not s.is_anomalous]
        if not images:
            raise _config_error(_given(locations, "surface.fit.split"), "surface.fit.split",
                                f"no good images in split {fit['split']!r} of {root}", path)
        return images

    images = []
    for index, pattern in enumerate(fit["images"]):
        key = f"surface.fit.images[{index}]"
        if glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern) if Path(p).is_file())
        elif Path(pattern).is_dir():
            found = sorted(str(p) for p in Path(pattern).iterdir()
                           if p.suffix.lower() in data.IMAGE_SUFFIXES)
        elif Path(pattern).is_file():
            found = [pattern]
        else:
            raise _config_error(_given(locations, key), key, f"no such file or folder {pattern}",
                                path)
        if not found:
            raise _config_error(_given(locations, key), key, f"no image matches {pattern}", path)
        images += found
    return images


def _synthetic_spec(config: dict[str, Any], locations: dict[str, str],
                    path: Path) -> dict[str, Any]:
    """The `render.render_dataset` spec of a synthetic render config (docs/render.md)."""
    surface = config["surface"]
    spec_surface: dict[str, Any] = {"family": surface["family"]}
    if surface["params"]:
        spec_surface["params"] = surface["params"]
    if surface["model"] is not None:
        spec_surface["model"] = surface["model"]
    fit = surface["fit"]
    if fit["images"] is not None or fit["data"] is not None:
        # The limit is applied here, so that the manifest names exactly the fitted images.
        images = _fit_image_paths(fit, locations, path)
        spec_surface["fit"] = {
            "images": images[: fit["limit"]] if fit["limit"] else images,
            "limit": None,
            **{k: fit[k] for k in ("work_size", "scale", "crops_per_image", "quantile_count",
                                   "seed")},
        }
    if surface["family"] == "calibrated":
        spec_surface["quantile_row"] = surface["quantile_row"]

    # Unset optional keys of a layer (splits, labels) take normalize_spec's defaults.
    layers = [{k: v for k, v in layer.items() if v is not None} for layer in config["impurities"]]
    return {"seed": config["seed"], "size": config["size"], "channels": config["channels"],
            "surface": spec_surface, "splits": config["splits"], "defects": config["defects"],
            "impurities": layers}


def _real_samples(config: dict[str, Any], locations: dict[str, str], path: Path):
    """(images that get impurities, samples copied unchanged) of a real_stains config."""
    from seqpatchcore import data

    real = config["real"]
    if real["data"] is None:
        raise _config_error(_given(locations, "real") or _given(locations, "kind"), "real.data",
                            "is required for kind: real_stains (the real dataset's folder)",
                            path)
    root = Path(real["data"])
    if not root.is_dir():
        raise _config_error(_given(locations, "real.data"), "real.data",
                            f"no such folder {root}", path)
    unknown = [s for s in real["copy"] if s not in data.SPLITS]
    if unknown:
        raise _config_error(_given(locations, "real.copy"), "real.copy",
                            f"expected splits among {', '.join(data.SPLITS)}, got {unknown}",
                            path)

    splits = [s for s in data.SPLITS if s == real["split"] or s in real["copy"]]
    dataset = data.load_dataset(root, splits=splits)
    chosen = [s for s in dataset[real["split"]] if s.label == real["label"]]
    if real["limit"]:
        chosen = chosen[: real["limit"]]
    if not chosen:
        raise _config_error(_given(locations, "real.label") or _given(locations, "real"),
                            "real.label", f"no {real['label']!r} images in split "
                            f"{real['split']!r} of {root}", path)
    stained = {s.image for s in chosen}
    keep = [s for split in splits if split in real["copy"] for s in dataset[split]
            if s.image not in stained]
    return [s.image for s in chosen], keep


def _render(args: argparse.Namespace) -> int:
    from seqpatchcore import _C, render

    config, locations = _C.load_config(str(args.config), "render", list(args.overrides))
    output = args.output.absolute() if args.output is not None else config["output"]
    if output is None:
        raise ValueError(f"{args.config}: no output folder: give --output DIR or output: in "
                         "the config")
    _check_kind_keys(config, locations, args.config)

    progress = not args.no_progress
    if config["kind"] == "synthetic":
        spec = _synthetic_spec(config, locations, args.config)
        root, prefix = "spec", ""
    else:
        real = config["real"]
        images, keep = _real_samples(config, locations, args.config)
        root, prefix = "params", "real."
    try:
        if config["kind"] == "synthetic":
            render.normalize_spec(spec)  # every key checked before anything is written
            manifest = render.render_dataset(spec, output, overwrite=args.overwrite,
                                             progress=progress)
        else:
            manifest = render.stain_real_images(
                images, output, seed=config["seed"], params=real["params"],
                kind=real["impurity"], split=real["split"], label=real["label"],
                overwrite=args.overwrite, progress=progress, keep=keep)
    except (ValueError, TypeError) as error:
        where = _locate(str(error), locations, root, prefix)
        message = _config_keys(str(error), locations, root, prefix)
        if where is None and isinstance(error, ValueError):
            raise ValueError(message) from error
        raise ValueError(f"{where or args.config}: {message}") from error

    items = manifest["items"]
    dirty = sum(1 for item in items if item["impurities"])
    print(f"render '{config['kind']}': {len(items)} images ({dirty} with impurities, "
          f"{sum(1 for item in items if item['mask'])} with defects) -> {output}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from seqpatchcore import _C

    if args.describe:
        print(_C.describe_config(args.describe), end="")
        return 0
    schema = args.schema if args.schema != "auto" else _schema_of(args.check)
    config, _ = _C.load_config(str(args.check), schema, list(args.overrides))
    print(_C.dump_config(config), end="")
    return 0


def _schema_of(path: Path) -> str:
    """The schema a config file is written for, from its top-level keys (block-style YAML):
    a study names its `base` run config, a render config its `kind`."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return "run"  # load_config names the unreadable file
    keys = {line.split(":", 1)[0] for line in lines
            if line[:1].isalpha() and ":" in line}
    if "base" in keys:
        return "study"
    return "render" if "kind" in keys else "run"


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    from seqpatchcore.files import write_text
    from seqpatchcore.model import SequentialPatchCore
    from seqpatchcore.report import heatmap_overlay

    model = SequentialPatchCore.load(args.model)
    paths: list[Path] = []
    for item in args.images:
        if item.is_dir():
            paths.extend(sorted(p for p in item.iterdir()
                                if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif",
                                                        ".tiff"}))
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"images: no such file or folder {item}")
    if not paths:
        raise ValueError(f"images: no image files found in {[str(p) for p in args.images]}")

    rows = ["image,score,anomalous"]
    thresholds = {"image": {"value": model.threshold_ if model.threshold_ is not None
                            else float("inf")},
                  "pixel": {"value": model.pixel_threshold_ if model.pixel_threshold_ is not None
                            else float("inf")}}
    for path, result in zip(paths, model.score(str(p) for p in paths), strict=True):
        flagged = "" if model.threshold_ is None else int(result.score >= model.threshold_)
        rows.append(f"{path},{result.score:.6g},{flagged}")
        if args.heatmaps:
            heatmap_overlay(args.output / "heatmaps" / f"{path.stem}.png", path,
                            result.anomaly_map, np.zeros(result.anomaly_map.shape, bool),
                            result.score, thresholds)
    write_text(args.output / "scores.csv", "\n".join(rows) + "\n")
    print(f"scored {len(paths)} images; wrote {args.output / 'scores.csv'}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from seqpatchcore import study

    folder = study.sweep(args.study, args.overrides, progress=not args.no_progress,
                         fail_fast=args.fail_fast)
    print(f"wrote {folder / 'results.md'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from seqpatchcore import study

    folder = study.report(args.folder)
    print((folder / "results.md").read_text(), end="")
    return 0


def _info(args: argparse.Namespace) -> int:
    import torch

    from seqpatchcore import __version__
    from seqpatchcore.backbones import available_backbones, load_backbone

    print(f"seqpatchcore {__version__}, torch {torch.__version__}, "
          f"CUDA available: {torch.cuda.is_available()}")
    print(f"backbones: {', '.join(available_backbones())}")
    try:
        print(f"default backbone: {load_backbone().identity}")
    except FileNotFoundError as error:
        print(f"default backbone weights not found: {error}")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    handlers = {"run": _run, "render": _render, "config": _config, "predict": _predict,
                "sweep": _sweep, "report": _report, "info": _info}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as error:
        # Bad input: the message names what was wrong; a traceback would only hide it.
        if args.verbose >= 2:
            raise
        print(f"seqpatchcore {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
