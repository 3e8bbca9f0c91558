"""Figures of the fast path (issue 14) on the machine at hand.

1. ``stitch``: the stitcher alone, tiles/s, with no model: the numpy stitcher as it was before issue 14
   (``tests/numpy_stitch.py``) against the device stitcher (``pipelines/inference/stitch.py``) on the same random
   logits, over an 8192 x 8192 scene of 512 px tiles (64 px overlap), 6 classes, blend and crop, class and
   confidence rows (``--probabilities`` adds the probability bands). On a GPU ``--device cuda`` times the
   device stitcher there (logits already on the device, as the model leaves them).
2. ``segment``: LeMeViT-tiny (UperNet head) at 512 px: the model alone on the scene's tiles (in memory, in
   the pipeline's batches) against ``segment`` end to end on the same scene, eager and compiled, fp32 and
   bf16. Compiled runs are timed after a warm-up run that compiles.

    python benchmarks/fastpath.py stitch
    python benchmarks/fastpath.py segment --size 2048
    python benchmarks/fastpath.py segment --device cuda --size 16384 --batch-size auto --json out.json

Every table names the load average of the machine at the start and the end of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the numpy oracle lives with the tests

from benchmarks.pipeline import CLASSES, make_scene  # noqa: E402
from lemevit_geo.bundle import BundleConfig, build_model  # noqa: E402
from lemevit_geo.choices import Compile, Stitch  # noqa: E402
from lemevit_geo.device import precision_name  # noqa: E402
from lemevit_geo.pipelines.inference import stitch as device_stitch  # noqa: E402
from lemevit_geo.pipelines.inference.engine import Runtime, SourceSpec, TileData, TileReader, forward  # noqa: E402
from lemevit_geo.pipelines.inference.segment import segment  # noqa: E402
from lemevit_geo.pipelines.inference.tiling import TileGrid  # noqa: E402
from lemevit_geo.raster import inspect_source  # noqa: E402
from lemevit_geo.settings import Engine, Tiling  # noqa: E402
from tests import numpy_stitch  # noqa: E402


def load() -> str:
    """The 1-minute load average and the cores, for the tables."""
    return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


class Drop:
    """A writer that waits for each band (as the writer thread does) and drops it."""

    def put(self, band: Any) -> None:
        if hasattr(band, "wait"):
            band.wait()

    def close(self) -> None:
        pass


def stitch_rate(kind: str, mode: Stitch, args: argparse.Namespace, device: torch.device) -> float:
    """Tiles/s of one stitcher over the whole grid (every tile valid, the same random logits in each)."""
    grid = TileGrid(args.scene, args.scene, args.tile, args.overlap)
    rng = np.random.default_rng(0)
    logits_np = (rng.standard_normal((args.classes, args.tile, args.tile)) * 3).astype(np.float32)
    valid = np.ones((args.tile, args.tile), dtype=bool)
    if kind == "numpy":
        sink: Any = numpy_stitch.DenseStitcher(grid, args.classes, mode, Drop(), 255, args.probabilities)
        logits: Any = logits_np
        valid_device = None
    else:
        sink = device_stitch.DenseStitcher(grid, args.classes, mode, Drop(), 255, args.probabilities, device=device)
        logits = torch.from_numpy(logits_np).to(device)
        valid_device = torch.from_numpy(valid).to(device)
    tiles = grid.tiles()
    start = time.perf_counter()
    for tile in tiles:
        sink.add(TileData(tile, None, valid, valid_device), logits)
    sink.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(tiles) / (time.perf_counter() - start)


def bench_stitch(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    rows, before = [], load()
    kinds = ["numpy", "device"] if device.type == "cpu" else ["device"]
    for mode in (Stitch.blend, Stitch.crop):
        rates: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.rounds):  # interleaved: the shared machine's load hits both alike
            for kind in kinds:
                rates[kind].append(stitch_rate(kind, mode, args, device))
        for kind in kinds:
            best = round(max(rates[kind]), 1)
            rows.append({"stitch": mode.value, "stitcher": kind, "device": str(device), "tiles_per_s": best})
    for r in rows:
        r["load"] = f"{before} -> {load()}"
    return rows


def pipeline_batches(grid: TileGrid, tiles: list[np.ndarray], batch: int) -> list[list[np.ndarray]]:
    """The tiles in the batches ``run_tiles`` forms: up to ``batch`` valid tiles, never across a tile row."""
    per_row = len(grid.xs)
    out = []
    for r in range(len(grid.ys)):
        row = tiles[r * per_row : (r + 1) * per_row]
        out += [row[i : i + batch] for i in range(0, len(row), batch)]
    return out


def model_seconds(model: torch.nn.Module, runtime: Runtime, batches: list[list[np.ndarray]]) -> float:
    """Seconds the model alone takes on the batches (host arrays copied in, outputs left on the device)."""

    def run(b: list[np.ndarray]) -> None:
        x = torch.from_numpy(np.stack(b))
        size = runtime.padded(len(b))
        if size > len(b):
            x = torch.cat([x, x.new_zeros((size - len(b), *x.shape[1:]))])
        forward(model, x.to(runtime.device), runtime.device, runtime.dtype)

    for b in {len(b): b for b in batches}.values():  # warm-up (and compile) every batch shape
        run(b)
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for b in batches:
        run(b)
    sync()
    return time.perf_counter() - start


def bench_segment(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        scene = make_scene(tmp / "scene.tif", args.size)
        config = BundleConfig(
            task="segment",
            arch=args.arch,
            classes=CLASSES,
            bands=3,
            mean=[127.0] * 3,
            std=[50.0] * 3,
            tile_size=args.tile,
            head={"decoder_channels": 256},
        )
        torch.manual_seed(0)
        net = build_model(config)
        info = inspect_source(scene, None, 3)
        grid = TileGrid(info.height, info.width, args.tile, args.overlap)
        spec = SourceSpec(info, np.array(config.mean, np.float32), np.array(config.std, np.float32))
        tiles = [t.data for t in TileReader([spec], grid)]
        for precision in args.precisions:
            for compiled in args.compile:
                engine = Engine(
                    device=args.device,
                    precision=precision,
                    batch_size=args.batch_size,
                    threads=args.threads,
                    compile=Compile.on if compiled == "on" else Compile.off,
                )
                before = load()
                runtime = Runtime.create(engine)
                model = runtime.prepare(net)
                runtime.fit(model, (3, args.tile, args.tile))
                t0 = time.perf_counter()
                model_s = model_seconds(model, runtime, pipeline_batches(grid, tiles, runtime.batch_size))
                warm = time.perf_counter() - t0 - model_s
                tiling = Tiling(tile_size=args.tile, overlap=args.overlap, stitch=Stitch.blend)
                seconds = []
                for _ in range(args.repeat):
                    summary = segment(
                        image=scene,
                        output=tmp / "mask.tif",
                        model=(net, config),
                        tiling=tiling,
                        engine=engine,
                        overwrite=True,
                    )
                    seconds.append(summary["seconds"])
                e2e_s = min(seconds)
                rows.append(
                    {
                        "arch": args.arch,
                        "scene": f"{args.size}x{args.size}",
                        "tiles": len(tiles),
                        "device": str(runtime.device),
                        "precision": precision_name(runtime.dtype),
                        "compile": compiled,
                        "batch_size": runtime.batch_size,
                        "warm_up_s": round(warm, 1),
                        "model_tiles_per_s": round(len(tiles) / model_s, 2),
                        "segment_tiles_per_s": round(len(tiles) / e2e_s, 2),
                        "ratio": round(model_s / e2e_s, 3),
                        "segment_runs_s": [round(s, 2) for s in seconds],
                        "load": f"{before} -> {load()}",
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["stitch", "segment"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="2", help="torch threads (stitch) / reader threads (segment)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--scene", type=int, default=8192, help="stitch: side of the scene")
    parser.add_argument("--classes", type=int, default=6, help="stitch: classes")
    parser.add_argument("--probabilities", action="store_true", help="stitch: also quantise probabilities")
    parser.add_argument("--rounds", type=int, default=2, help="stitch: interleaved rounds (best kept)")
    parser.add_argument("--size", type=int, default=2048, help="segment: side of the generated scene")
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--batch-size", default="4")
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    parser.add_argument("--compile", nargs="*", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--repeat", type=int, default=2, help="segment: end-to-end runs (best kept)")
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    if args.what == "stitch":
        torch.set_num_threads(int(args.threads))
    elif args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    machine = platform.processor() or platform.machine()
    print(f"# {machine}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = bench_stitch(args) if args.what == "stitch" else bench_segment(args)
    print(table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
