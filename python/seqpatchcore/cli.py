"""The `seqpatchcore` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger("seqpatchcore.cli")

EPILOG = """examples:
  seqpatchcore run configs/magnetic_tile.yaml
  seqpatchcore run configs/magnetic_tile.yaml --set coreset.method=greedy --set name=greedy
  seqpatchcore config --describe run
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

    config = commands.add_parser("config", help="describe a config schema or check a file")
    action = config.add_mutually_exclusive_group(required=True)
    action.add_argument("--describe", metavar="SCHEMA", choices=["run"],
                        help="print every key of a schema as a Markdown table")
    action.add_argument("--check", type=Path, metavar="FILE",
                        help="validate a run config and print it with defaults filled in")
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


def _config(args: argparse.Namespace) -> int:
    from seqpatchcore import _C

    if args.describe:
        print(_C.describe_config(args.describe), end="")
        return 0
    config, _ = _C.load_config(str(args.check), "run", list(args.overrides))
    print(_C.dump_config(config), end="")
    return 0


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
    handlers = {"run": _run, "config": _config, "predict": _predict, "info": _info}
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
