"""Nearest-neighbour search (k = 1) of seqpatchcore against the tools a researcher would use.

CPU: `_C.nearest_neighbors` against faiss-cpu `IndexFlatL2` and `torch.cdist` + `min` on the
same bank and queries. GPU (when torch sees one and the extension has its CUDA kernels): the
CUDA kernel against `torch.cdist` + `min`. Each row also gives the rate of a plain `torch.mm`
of the same shape, [q, d] @ [d, n], the machine's matrix-product rate that a distance search
cannot beat, and each method's GFLOP/s = 2 q n d / seconds against it.

    pip install faiss-cpu
    python scripts/bench_knn.py --results results/knn            # CPU grid, then GPU if any
    python scripts/bench_knn.py --results results/knn --quick    # a smoke run of seconds
    python scripts/bench_knn.py --results out --device cuda --grid 10000:100000:256

OMP_WAIT_POLICY defaults to PASSIVE (see below). Times are medians of --repeats rounds after a
warm-up round; a round runs every method once,
so that other work on a shared machine slows them alike. cdist + min and the reference matrix
products run over query chunks whose [chunk, n] output stays under 256 MiB, as a researcher
would have to; the matrix-product time is measured on one chunk and scaled to all q rows.
Writes knn_<device>.csv and knn_<device>.md (atomically) into --results.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

# torch and faiss-cpu each bring their own OpenMP runtime; with the default active wait, the
# threads of one spin on the cores while the other computes, and whichever runs second in a
# round pays for it. Passive waiting (the caller may set another policy) removes that artefact.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from seqpatchcore import _C  # noqa: E402

logger = logging.getLogger("bench_knn")

CHUNK_BYTES = 256 << 20

# bank n, queries q, dim d. The sizes (q up to 10^6) are trimmed per d so that each
# measurement on the 2-core reference machine takes seconds, not minutes.
CPU_GRID = [
    (10_000, 100_000, 64),
    (50_000, 100_000, 64),
    (10_000, 100_000, 256),
    (50_000, 30_000, 256),
    (10_000, 10_000, 1536),
    (50_000, 5_000, 1536),
]
GPU_GRID = [
    (10_000, 100_000, 64),
    (50_000, 500_000, 64),
    (10_000, 100_000, 256),
    (50_000, 500_000, 256),
    (10_000, 100_000, 1536),
    (50_000, 500_000, 1536),
]
QUICK_GRID = [(2_000, 5_000, 64), (2_000, 2_000, 256)]


@dataclass
class Row:
    device: str
    n: int
    q: int
    d: int
    ours_s: float
    faiss_s: float | None
    cdist_s: float
    mm_s: float
    agree_faiss: float | None
    agree_cdist: float

    def rate(self, seconds: float | None) -> float | None:
        return None if seconds is None else 2.0 * self.q * self.n * self.d / seconds / 1e9


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int,
                        sync: Callable[[], None]) -> dict[str, float]:
    """Median wall time of each run over `repeats` rounds, after one warm-up round. Each round
    calls every run once, so a change of load on a shared machine hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(repeats + 1):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            if round_index > 0:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def chunk_rows(n: int) -> int:
    return max(1, CHUNK_BYTES // (4 * n))


def cdist_min(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Index of the nearest bank row per query, with torch.cdist over query chunks. [q]"""
    rows = chunk_rows(len(bank))
    nearest = [torch.cdist(queries[s : s + rows], bank).argmin(1)
               for s in range(0, len(queries), rows)]
    return torch.cat(nearest)


def measure(device: torch.device, n: int, q: int, d: int, repeats: int, seed: int) -> Row:
    generator = torch.Generator().manual_seed(seed)
    bank = torch.randn(n, d, generator=generator)
    queries = torch.randn(q, d, generator=generator)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    runs: dict[str, Callable[[], object]] = {}

    if device.type == "cpu":
        import faiss

        index = faiss.IndexFlatL2(d)
        index.add(bank.numpy())
        array = queries.numpy()
        runs["faiss"] = lambda: index.search(array, 1)

    bank = bank.to(device)
    queries = queries.to(device)
    runs["ours"] = lambda: _C.nearest_neighbors(queries, bank, 1)
    runs["cdist"] = lambda: cdist_min(queries, bank)
    # The reference product: one [chunk, d] @ [d, n] block, scaled to all q rows below.
    rows = min(q, chunk_rows(n))
    chunk, transposed = queries[:rows], bank.t()
    out = torch.empty(rows, n, device=device)
    runs["mm"] = lambda: torch.mm(chunk, transposed, out=out)
    seconds = interleaved_medians(runs, repeats, sync)

    ours = _C.nearest_neighbors(queries, bank, 1)[1][:, 0].cpu()
    agree_cdist = float((cdist_min(queries, bank).cpu() == ours).double().mean())
    agree_faiss = None
    if "faiss" in runs:
        _, faiss_indices = index.search(array, 1)
        agree_faiss = float((torch.from_numpy(faiss_indices[:, 0]) == ours).double().mean())
    return Row(device.type, n, q, d, seconds["ours"], seconds.get("faiss"), seconds["cdist"],
               seconds["mm"] * q / rows, agree_faiss, agree_cdist)


def peak_gflops(device: torch.device, repeats: int) -> float:
    """The machine's float32 matrix-product rate: a square torch.mm large enough to run at
    full speed (2048 on a CPU, 8192 on a GPU)."""
    side = 8192 if device.type == "cuda" else 2048
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=generator).to(device)
    b = torch.randn(side, side, generator=generator).to(device)
    out = torch.empty(side, side, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds = interleaved_medians({"mm": lambda: torch.mm(a, b, out=out)}, repeats, sync)["mm"]
    return 2.0 * side**3 / seconds / 1e9


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return (f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}, TF32 matmul "
                f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    faiss_version = "absent"
    try:
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        pass
    return (f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"faiss-cpu {faiss_version}")


def number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[Row], device: torch.device, repeats: int, peak: float) -> str:
    lines = [
        f"# Nearest-neighbour search (k = 1) on {device.type.upper()}",
        "",
        f"Machine: {describe_machine(device)}; load average {os.getloadavg()[0]:.1f} at the "
        f"end. Medians of {repeats} interleaved rounds, float32, Gaussian data. GFLOP/s = "
        "2 q n d / seconds. `mm` is torch.mm of the same shape ([q, d] @ [d, n], writing its "
        "output); `peak` is the machine's rate on a large square torch.mm, "
        f"{peak:.0f} GFLOP/s. Speed-ups are the other tool's time over ours (> 1: ours is "
        "faster).",
        "",
    ]
    faiss_columns = device.type == "cpu"
    header = ["n", "q", "d", "ours s", "ours GFLOP/s", "mm GFLOP/s", "ours / mm", "ours / peak"]
    if faiss_columns:
        header += ["FAISS s", "vs FAISS"]
    header += ["cdist+min s", "vs cdist", "same index"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{row.n:,}", f"{row.q:,}", str(row.d), number(row.ours_s, 3),
                 number(row.rate(row.ours_s), 0), number(row.rate(row.mm_s), 0),
                 f"{row.rate(row.ours_s) / row.rate(row.mm_s):.0%}",
                 f"{row.rate(row.ours_s) / peak:.0%}"]
        if faiss_columns:
            cells += [number(row.faiss_s, 3), number(row.faiss_s / row.ours_s)]
        agree = row.agree_cdist if row.agree_faiss is None else min(row.agree_faiss,
                                                                     row.agree_cdist)
        cells += [number(row.cdist_s, 3), number(row.cdist_s / row.ours_s), f"{agree:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(temporary, path)


def write_results(results: Path, rows: list[Row], device: torch.device, repeats: int,
                  peak: float) -> None:
    buffer = io.StringIO()
    fields = list(asdict(rows[0])) + ["ours_gflops", "faiss_gflops", "cdist_gflops", "mm_gflops",
                                      "peak_gflops"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({**asdict(row), "ours_gflops": row.rate(row.ours_s),
                         "faiss_gflops": row.rate(row.faiss_s),
                         "cdist_gflops": row.rate(row.cdist_s), "mm_gflops": row.rate(row.mm_s),
                         "peak_gflops": peak})
    write_atomically(results / f"knn_{device.type}.csv", buffer.getvalue())
    write_atomically(results / f"knn_{device.type}.md", markdown(rows, device, repeats, peak))


def parse_grid(text: str) -> list[tuple[int, int, int]]:
    grid = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(
                f"--grid: expected n:q:d triples of positive integers, got {item!r}")
        grid.append(tuple(int(p) for p in parts))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="folder for the tables")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--grid", type=parse_grid, help="n:q:d,... instead of the built-in grid")
    parser.add_argument("--quick", action="store_true", help="a tiny grid, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.repeats < 1:
        parser.error(f"--repeats: expected >= 1, got {args.repeats}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("all", "cpu"):
        try:
            import faiss
        except ImportError:
            parser.error("the CPU benchmark compares against FAISS: pip install faiss-cpu")
        faiss.omp_set_num_threads(torch.get_num_threads())
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available() and _C.cuda_compiled():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            parser.error("--device cuda: torch sees no CUDA device or seqpatchcore._C was "
                         f"built without CUDA (cuda_compiled() = {_C.cuda_compiled()})")
        else:
            logger.info("no usable CUDA device: the GPU benchmark is skipped")

    for device in devices:
        grid = args.grid or (QUICK_GRID if args.quick else
                             (GPU_GRID if device.type == "cuda" else CPU_GRID))
        peak = peak_gflops(device, args.repeats)
        logger.info("%s: square matrix product %.0f GFLOP/s", device.type, peak)
        rows = []
        for n, q, d in grid:
            row = measure(device, n, q, d, args.repeats, args.seed)
            logger.info("%s n=%d q=%d d=%d: ours %.3f s (%.0f GFLOP/s, mm %.0f), faiss %s s, "
                        "cdist %.3f s", device.type, n, q, d, row.ours_s, row.rate(row.ours_s),
                        row.rate(row.mm_s), number(row.faiss_s, 3), row.cdist_s)
            rows.append(row)
        write_results(args.results, rows, device, args.repeats, peak)
        logger.info("wrote %s", args.results / f"knn_{device.type}.md")


if __name__ == "__main__":
    main()
