"""Scale-out figures: wall time of 1 vs more workers, merge time and halo overhead.

1. One scene: ``segment`` split into the same strips (``--parts``) on 1, 2, ... workers (a local Dask
   cluster, or a local Ray), against the single-process run. Wall time is the whole command: planning,
   starting the cluster (workers import torch), parts, merge, clean-up.
2. Several scenes: ``--scenes`` scenes, one part each, on 1, 2, ... workers.
3. Merge: the merge's own time (part files -> outputs), from the run summaries.
4. Halo overhead: the same strips run inline with and without their halo rows (the test hook that the
   negative control uses): the extra seconds and the share of extra tiles.

Every worker runs one torch thread (Dask and Ray set one per reserved CPU); the single-process baseline is
shown with one thread (the same work per core) and with the machine's default.

    python benchmarks/scale.py                                   # CPU, local Dask, 1 and 2 workers
    python benchmarks/scale.py --executor ray --workers 1,2
    python benchmarks/scale.py --device cuda --executor ray --workers 1,2,4,8 --size 8192 --tile 512
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lemevit_geo.bundle_init import init_bundle
from lemevit_geo.pipelines.inference import tiling
from lemevit_geo.pipelines.inference.segment import segment
from lemevit_geo.pipelines.scaleout.driver import scale_segment
from lemevit_geo.settings import Engine, ScaleOut, Tiling

try:
    from benchmarks.pipeline import make_scene
except ImportError:  # run as a script from the repository root
    from pipeline import make_scene  # type: ignore[no-redef]


def timed(fn: Callable[[], dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    summary = fn()
    return time.perf_counter() - start, summary


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def executor_for(args: argparse.Namespace, workers: int, tmp: Path) -> Iterator[str]:
    """The ``--executor`` value for ``workers`` workers (a local Ray is started for it and stopped after)."""
    if args.executor == "dask":
        yield f"dask:local:{workers}"
        return
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local benchmark cluster: no token in the home
    gpus = {"num_gpus": workers} if args.device.startswith("cuda") else {"num_cpus": workers}
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(**gpus, _temp_dir=temp, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield "ray"
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, images: list[Path], name: str, scale_out: ScaleOut) -> tuple[float, dict]:
    output = tmp / name if len(images) > 1 else tmp / f"{name}.tif"
    engine = Engine(device=args.device, precision=args.precision, batch_size=args.batch_size)
    tiles = Tiling(tile_size=args.tile, overlap=args.tile // 8)
    return timed(
        lambda: scale_segment(
            images=images,
            output=output,
            model=tmp / "model.safetensors",
            engine=engine,
            tiling=tiles,
            scale_out=scale_out,
        )
    )


def merge_seconds(summary: dict[str, Any]) -> float:
    scenes = summary.get("scenes") or [summary]
    return sum(s.get("merge_seconds", 0.0) for s in scenes)


def import_parts() -> int:
    """What every part does first in a fresh worker: import the engine (torch, rasterio, the model code)."""
    import lemevit_geo.pipelines.scaleout.parts  # noqa: F401

    return os.getpid()


def fixed_cost(args: argparse.Namespace, tmp: Path, workers: int) -> float:
    """Seconds to start the executor, import the engine in every worker, and shut it down: no parts."""
    from lemevit_geo.pipelines.scaleout.executors import open_executor

    start = time.perf_counter()
    with executor_for(args, workers, tmp) as spec:
        executor = open_executor(spec, args.device)
        try:
            pids = {f.result() for f in [executor.submit(import_parts) for _ in range(4 * workers)]}
        finally:
            executor.shutdown()
    assert len(pids) >= 1
    return time.perf_counter() - start


def workers_table(args: argparse.Namespace, tmp: Path, images: list[Path], parts: int | None, title: str) -> None:
    """Wall time of the same parts on each number of workers, and the executor's fixed cost in it."""
    print(f"\n### {title}\n")
    print("| workers | wall s | speed-up vs 1 worker | executor start + stop s | merge s | part s (sum) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    first = None
    for w in args.workers:
        with executor_for(args, w, tmp) as executor:
            wall, summary = run(args, tmp, images, f"{title[:5]}_{w}".replace(" ", ""), ScaleOut(executor, parts))
        assert not summary["failed"], summary["failed"]
        scenes = summary.get("scenes") or [summary]
        first = first or wall
        part_s = sum(s["part_seconds"] for s in scenes)
        fixed = fixed_cost(args, tmp, w)
        print(f"| {w} | {wall:.1f} | {first / wall:.2f} | {fixed:.1f} | {merge_seconds(summary):.2f} | {part_s:.1f} |")


def baseline(args: argparse.Namespace, tmp: Path, scene: Path) -> None:
    """The single-process run, as users run it today."""
    print("\n### One scene, single process (no parts)\n")
    print("| torch threads | wall s |")
    print("| ---: | ---: |")
    engine = Engine(device=args.device, precision=args.precision, batch_size=args.batch_size)
    for threads in dict.fromkeys([1, torch.get_num_threads()]):
        with torch_threads(threads):
            out = tmp / f"single_{threads}.tif"
            wall, _ = timed(
                lambda out=out: segment(
                    image=scene,
                    output=out,
                    model=tmp / "model.safetensors",
                    engine=engine,
                    tiling=Tiling(tile_size=args.tile, overlap=args.tile // 8),
                )
            )
        print(f"| {threads} | {wall:.1f} |")


def halo_overhead(args: argparse.Namespace, tmp: Path, scene: Path, warm: Path) -> None:
    """The same strips inline with and without their halo rows (one torch thread), after an untimed run that
    loads the model into this process."""
    print(f"\n### Halo overhead ({args.parts} parts, inline, one torch thread)\n")
    print("| halo | wall s | part s (sum) | tiles run | halo tiles run |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with torch_threads(1):
        run(args, tmp, [warm], "warm", ScaleOut(parts=1))
        for halo in (True, False):
            tiling.HALO = halo
            try:
                wall, s = run(args, tmp, [scene], f"halo_{halo}", ScaleOut(parts=args.parts))
            finally:
                tiling.HALO = True
            print(
                f"| {'with' if halo else 'without'} | {wall:.1f} | {s['part_seconds']:.1f} | "
                f"{s['tiles_run'] + s['halo_tiles_run']} | {s['halo_tiles_run']} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="side of the one big scene")
    parser.add_argument("--scenes", type=int, default=4, help="number of small scenes")
    parser.add_argument("--scene-size", type=int, default=512, help="side of each small scene")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--parts", type=int, default=4, help="strips of the big scene")
    parser.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    parser.add_argument("--executor", choices=["dask", "ray"], default="dask")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lemevit-scale-"))
    try:
        init_bundle(
            task="segment",
            arch="tiny",
            classes=list("abcdef"),
            bands=3,
            tile_size=args.tile,
            output=tmp / "model.safetensors",
        )
        scene = make_scene(tmp / "scene.tif", args.size)
        small = [make_scene(tmp / f"small{i}.tif", args.scene_size, seed=i + 1) for i in range(args.scenes)]
        print(
            f"device {args.device}, {args.precision}, tile {args.tile}, executor {args.executor}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        baseline(args, tmp, scene)
        workers_table(args, tmp, [scene], args.parts, f"One scene, {args.size} px, {args.parts} parts")
        workers_table(args, tmp, small, None, f"{args.scenes} scenes of {args.scene_size} px, one part each")
        halo_overhead(args, tmp, scene, small[0])
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":  # Dask spawns its workers: they import this module again
    main()
