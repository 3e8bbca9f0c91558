"""End-to-end pipeline figures on generated scenes.

1. Throughput: the pure model on the scene's tiles (already in memory) against the whole ``segment``
   pipeline (read, normalise, batch, run, stitch, write) on the same scene, tiles and settings; their
   ratio shows how much of reading, stitching and writing is hidden behind the model. The same for
   the ``change`` pipeline and the change model on the same tile pairs.
   And the ``detect`` pipeline (read, run the detector with its score threshold and rotated NMS, merge
   boxes across tiles, write polygons) against the detector alone on the same tiles.
2. Memory: peak RSS of ``segment``-style runs on a 4k x 4k and a 16k x 16k scene, each in its own
   process, with a cheap stand-in model (a 1x1 convolution), for both seam modes; and of ``detect`` runs
   on scenes of the same sizes crowded with objects (one per 40 x 40 px), with an exact stand-in detector
   (bright blobs to boxes, ``tests/standins.py``), so the box merging and writing are what is measured.

    python benchmarks/pipeline.py                  # everything
    python benchmarks/pipeline.py --skip-memory    # throughput only
    python benchmarks/pipeline.py --only-detect    # the detect figures only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from lemevit_geo.bundle import BundleConfig, build_model, load_bundle, save_bundle
from lemevit_geo.choices import Stitch
from lemevit_geo.device import precision_name, resolve_device, resolve_precision
from lemevit_geo.models.factory import head_options
from lemevit_geo.pipelines.inference.change import change
from lemevit_geo.pipelines.inference.dense import dense_predict
from lemevit_geo.pipelines.inference.detect import detect
from lemevit_geo.pipelines.inference.engine import Runtime, SourceSpec, TileReader, forward
from lemevit_geo.pipelines.inference.segment import segment
from lemevit_geo.pipelines.inference.tiling import TileGrid
from lemevit_geo.raster import inspect_source
from lemevit_geo.settings import Engine, Tiling

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the stand-in detector lives with the tests
from tests.standins import CLASSES as OBJECT_CLASSES  # noqa: E402
from tests.standins import BlobDetector, blob_config  # noqa: E402

CLASSES = ["water", "vegetation", "built-up", "bare", "road", "other"]


def run_model(model: torch.nn.Module, batch: np.ndarray, device: torch.device, dtype: torch.dtype) -> np.ndarray:
    """Run ``model`` on a float32 numpy batch and return float32 numpy outputs (the model-only timing: no
    reader, stitcher or writer; the tool itself runs batches through ``engine.run_tiles``)."""
    x = torch.from_numpy(batch)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return forward(model, x, device, dtype).cpu().numpy()


def _write_strips(path: Path, size: int, strip: Callable[[int, int], np.ndarray]) -> Path:
    """A 3-band uint8 GeoTIFF of ``size`` x ``size`` px written in strips of 512 rows (bounded memory);
    ``strip(row, height)`` makes each strip's pixels."""
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        crs="EPSG:32633",
        transform=from_origin(400000, 5500000, 1, 1),
        BIGTIFF="IF_SAFER",
    )
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 512):
            h = min(512, size - row)
            dst.write(strip(row, h), window=Window(0, row, size, h))
    return path


def make_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A 3-band uint8 GeoTIFF of ``size`` x ``size`` px: smooth waves plus noise."""
    rng = np.random.default_rng(seed)
    xx = np.arange(size, dtype=np.float32)

    def strip(row: int, h: int) -> np.ndarray:
        yy = np.arange(row, row + h, dtype=np.float32)[:, None]
        base = 127 + 60 * np.sin(xx / 97.0) * np.cos(yy / 83.0)
        noise = rng.integers(-20, 20, size=(3, h, size))
        return np.clip(base[None] + noise, 1, 255).astype(np.uint8)

    return _write_strips(path, size, strip)


def _bundle_model(args: argparse.Namespace, bundle: Path, config: BundleConfig) -> tuple[torch.nn.Module, Any, Any]:
    """Save a randomly initialised bundle and load it back, prepared for the device, as the commands do."""
    torch.manual_seed(0)
    save_bundle(bundle, build_model(config), config)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    model, _ = load_bundle(bundle)
    return Runtime.create(_engine(args)).prepare(model), device, dtype


def _engine(args: argparse.Namespace) -> Engine:
    return Engine(device=args.device, precision=args.precision, batch_size=args.batch_size, threads=args.threads)


def _model_seconds(model: torch.nn.Module, tiles: list[np.ndarray], batch: int, device: Any, dtype: Any) -> float:
    """Seconds the model alone takes on the tiles (already in memory), in the pipeline's batches."""
    batches = [np.stack(tiles[i : i + batch]) for i in range(0, len(tiles), batch)]
    run_model(model, batches[0], device, dtype)  # warm-up
    start = time.perf_counter()
    for b in batches:
        run_model(model, b, device, dtype)
    return time.perf_counter() - start


def throughput(args: argparse.Namespace, tmp: Path) -> dict:
    scene = make_scene(tmp / "scene.tif", args.size)
    bundle = tmp / "tiny.safetensors"
    config = BundleConfig(
        task="segment",
        arch="tiny",
        classes=CLASSES,
        bands=3,
        mean=[127.0] * 3,
        std=[50.0] * 3,
        tile_size=args.tile,
        head={"decoder_channels": 256},
    )
    model, device, dtype = _bundle_model(args, bundle, config)

    # pure model: the same tiles, read and normalised beforehand, in the same batches
    info = inspect_source(scene, None, 3)
    grid = TileGrid(info.height, info.width, args.tile, args.overlap)
    spec = SourceSpec(info, np.array(config.mean, np.float32), np.array(config.std, np.float32))
    tiles = [t.data for t in TileReader([spec], grid)]
    model_s = _model_seconds(model, tiles, args.batch_size, device, dtype)

    out = tmp / "mask.tif"
    summary = segment(
        image=scene,
        output=out,
        model=bundle,
        tiling=Tiling(tile_size=args.tile, overlap=args.overlap, stitch=Stitch.blend),
        engine=_engine(args),
        overwrite=True,
    )
    e2e_s = summary["seconds"]
    return {
        "scene": f"{args.size}x{args.size}",
        "tiles": len(tiles),
        "tile": args.tile,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "device": str(device),
        "precision": precision_name(dtype),
        "model_tiles_per_s": round(len(tiles) / model_s, 3),
        "segment_tiles_per_s": round(len(tiles) / e2e_s, 3),
        "segment_megapixels_per_s": summary["megapixels_per_s"],
        "ratio": round(model_s / e2e_s, 3),
    }


def detect_throughput(args: argparse.Namespace, tmp: Path) -> dict:
    """The detect pipeline against the detector alone (with its post-processing) on the same tiles."""
    scene = make_scene(tmp / "detect_scene.tif", args.size, seed=2)
    config = BundleConfig(
        task="detect",
        arch="tiny",
        classes=OBJECT_CLASSES,
        bands=3,
        mean=[127.0] * 3,
        std=[50.0] * 3,
        tile_size=args.tile,
        overlap=args.overlap,
        head=head_options("detect"),
    )
    bundle = tmp / "detect.safetensors"
    model, device, dtype = _bundle_model(args, bundle, config)
    info = inspect_source(scene, None, 3)
    grid = TileGrid(info.height, info.width, args.tile, args.overlap)
    spec = SourceSpec(info, np.array(config.mean, np.float32), np.array(config.std, np.float32))
    tiles = [t.data for t in TileReader([spec], grid)]
    model_s = e2e_s = float("inf")
    for _ in range(args.repeat):  # interleaved, best of each: a shared machine's load comes and goes
        model_s = min(model_s, _model_seconds(model, tiles, args.batch_size, device, dtype))
        summary = detect(image=scene, output=tmp / "objects.gpkg", model=bundle, engine=_engine(args), overwrite=True)
        e2e_s = min(e2e_s, summary["seconds"])
    return {
        "scene": f"{args.size}x{args.size}",
        "tiles": len(tiles),
        "tile": args.tile,
        "overlap": args.overlap,
        "device": str(device),
        "precision": precision_name(dtype),
        "boxes_found": summary["boxes_found"],
        "objects_written": summary["objects"],
        "repeats": args.repeat,
        "model_tiles_per_s": round(len(tiles) / model_s, 3),
        "detect_tiles_per_s": round(len(tiles) / e2e_s, 3),
        "ratio": round(model_s / e2e_s, 3),
    }


def make_object_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A 3-band uint8 scene crowded with rotated rectangles (one per 40 x 40 px), written in strips."""
    from tests.standins import paint

    rng = np.random.default_rng(seed)

    def strip(row: int, h: int) -> np.ndarray:
        objects = []
        for cy in range(20, h - 20, 40):
            for cx in range(20, size - 20, 40):
                w, b, a = rng.uniform(8, 24), rng.uniform(4, 10), rng.uniform(-1.5, 1.5)
                jitter = rng.uniform(-6, 6, 2)
                objects.append((cx + jitter[0], cy + jitter[1], w, b, a, int(rng.integers(3))))
        return paint(h, size, objects)

    return _write_strips(path, size, strip)


def detect_memory_child(scene: str, tile: int, overlap: int, out: str) -> None:
    """One detect memory run (in its own process) with the blob stand-in detector; then print peak RSS."""
    start = time.perf_counter()
    summary = detect(
        image=scene,
        output=out,
        model=(BlobDetector(max_detections=1024), blob_config(tile, overlap)),
        engine=Engine(device="cpu", precision="fp32", batch_size=8, threads=2),
        overwrite=True,
    )
    result = {"peak_rss_mb": round(peak_rss_mb(), 1), "tiles": summary["tiles"], "objects": summary["objects"]}
    print(json.dumps({**result, "seconds": round(time.perf_counter() - start, 1)}))


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def change_throughput(args: argparse.Namespace, tmp: Path) -> dict:
    """The change pipeline against the pure change model on the same tile pairs (same grid: no warping)."""
    before = make_scene(tmp / "before.tif", args.size, seed=0)
    after = make_scene(tmp / "after.tif", args.size, seed=1)
    tile = args.change_tile
    config = BundleConfig(
        task="change",
        arch="tiny",
        classes=["no change", "change"],
        bands=3,
        mean=[127.0] * 3,
        std=[50.0] * 3,
        tile_size=tile,
        head={"dim": 64, "tokens": 4},
    )
    bundle = tmp / "change.safetensors"
    model, device, dtype = _bundle_model(args, bundle, config)
    info_b, info_a = inspect_source(before, None, 3), inspect_source(after, None, 3)
    grid = TileGrid(info_b.height, info_b.width, tile, tile // 8)
    mean, std = np.array(config.mean, np.float32), np.array(config.std, np.float32)
    pairs = [t.data for t in TileReader([SourceSpec(info_b, mean, std), SourceSpec(info_a, mean, std)], grid)]
    model_s = _model_seconds(model, pairs, args.batch_size, device, dtype)
    summary = change(
        before=before,
        after=after,
        output=tmp / "change.tif",
        model=bundle,
        tiling=Tiling(tile_size=tile, overlap=tile // 8),
        engine=_engine(args),
        overwrite=True,
    )
    return {
        "scene": f"{args.size}x{args.size} pair",
        "tile_pairs": len(pairs),
        "tile": tile,
        "device": str(device),
        "precision": precision_name(dtype),
        "model_pairs_per_s": round(len(pairs) / model_s, 3),
        "change_pairs_per_s": round(len(pairs) / summary["seconds"], 3),
        "ratio": round(model_s / summary["seconds"], 3),
    }


def memory_child(scene: str, stitch: str, tile: int, overlap: int, out: str) -> None:
    """One memory run (in its own process): stand-in 1x1 conv model, 6 classes, then print peak RSS."""
    info = inspect_source(scene, None, 3)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, len(CLASSES), 1).eval()
    spec = SourceSpec(info, np.full(3, 127, np.float32), np.full(3, 50, np.float32))
    start = time.perf_counter()
    summary = dense_predict(
        sources=[spec],
        grid_info=info,
        model=model,
        classes=CLASSES,
        colors=[(i * 40, 255 - i * 40, 128) for i in range(len(CLASSES))],
        output=Path(out),
        runtime=Runtime(torch.device("cpu"), torch.float32, 8, 2),
        tile_size=tile,
        overlap=overlap,
        stitch=Stitch(stitch),
        overwrite=True,
    )
    rss_mb = peak_rss_mb()
    print(
        json.dumps(
            {
                "peak_rss_mb": round(rss_mb, 1),
                "tiles": summary["tiles"],
                "tiles_run": summary["tiles_run"],
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


def make_sparse_vrt(tmp: Path, size: int, data: int = 4096) -> Path:
    """A ``size`` x ``size`` px mosaic VRT (nodata 0) whose only source is a ``data`` px scene in its middle."""
    scene = make_scene(tmp / "island.tif", data, seed=3)
    off = (size - data) // 2
    with rasterio.open(scene) as src:
        srs = src.crs.to_wkt()
    transform = from_origin(400000 - off, 5500000 + off, 1, 1).to_gdal()
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">{scene.name}</SourceFilename><SourceBand>{b}</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="{data}" ySize="{data}"/>'
        f'<DstRect xOff="{off}" yOff="{off}" xSize="{data}" ySize="{data}"/></SimpleSource></VRTRasterBand>'
        for b in (1, 2, 3)
    )
    vrt = tmp / f"sparse{size}.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{srs}</SRS>'
        f"<GeoTransform>{', '.join(map(str, transform))}</GeoTransform>{bands}</VRTDataset>"
    )
    return vrt


def _memory_run(scene: Path, stitch: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", str(scene), stitch, str(args.tile), str(args.overlap), str(out)]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    out.unlink(missing_ok=True)
    return res


def memory(args: argparse.Namespace, tmp: Path) -> list[dict]:
    rows = []
    if args.sparse_size:
        vrt = make_sparse_vrt(tmp, args.sparse_size)
        for stitch in ("crop", "blend"):
            res = _memory_run(vrt, stitch, args, tmp / f"sparse{stitch}.tif")
            rows.append(
                {"scene": f"{args.sparse_size}x{args.sparse_size} VRT, 4096x4096 of data", "stitch": stitch, **res}
            )
            print(rows[-1], flush=True)
    for size in args.memory_sizes:
        scene = make_scene(tmp / f"scene{size}.tif", size)
        for stitch in ("crop", "blend"):
            res = _memory_run(scene, stitch, args, tmp / f"out{size}{stitch}.tif")
            rows.append({"scene": f"{size}x{size}", "stitch": stitch, **res})
            print(rows[-1], flush=True)
        scene.unlink()
    return rows


def detect_memory(args: argparse.Namespace, tmp: Path) -> list[dict]:
    rows = []
    for size in args.memory_sizes:
        scene = make_object_scene(tmp / f"objects{size}.tif", size)
        cmd = [
            sys.executable,
            __file__,
            "--detect-memory-child",
            str(scene),
            str(args.tile),
            str(args.overlap),
            str(tmp / f"objects{size}.gpkg"),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append({"scene": f"{size}x{size}", **json.loads(out)})
        print(rows[-1], flush=True)
        scene.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="side of the throughput scene")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--change-tile", type=int, default=256, help="tile of the change benchmark")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[4096, 16384])
    parser.add_argument("--sparse-size", type=int, default=200_000, help="side of the mostly-nodata VRT (0: skip)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--memory", action="store_true", help="memory only (same as --skip-throughput)")
    parser.add_argument("--only-detect", action="store_true", help="only the detect figures")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of the detect throughput (best)")
    parser.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--detect-memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        scene, stitch, tile, overlap, out = args.memory_child
        memory_child(scene, stitch, int(tile), int(overlap), out)
        return
    if args.detect_memory_child:
        scene, tile, overlap, out = args.detect_memory_child
        detect_memory_child(scene, int(tile), int(overlap), out)
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not (args.skip_throughput or args.memory):
            if not args.only_detect:
                print(json.dumps({"throughput": throughput(args, tmp)}, indent=2), flush=True)
                print(json.dumps({"change_throughput": change_throughput(args, tmp)}, indent=2), flush=True)
            print(json.dumps({"detect_throughput": detect_throughput(args, tmp)}, indent=2), flush=True)
        if not args.skip_memory:
            if not args.only_detect:
                rows = memory(args, tmp)
                print("\n| scene | stitch | tiles | peak RSS (MB) | seconds |\n| --- | --- | ---: | ---: | ---: |")
                for r in rows:
                    print(f"| {r['scene']} | {r['stitch']} | {r['tiles']} | {r['peak_rss_mb']} | {r['seconds']} |")
            rows = detect_memory(args, tmp)
            print("\n| scene | tiles | objects | peak RSS (MB) | seconds |\n| --- | ---: | ---: | ---: | ---: |")
            for r in rows:
                print(f"| {r['scene']} | {r['tiles']} | {r['objects']} | {r['peak_rss_mb']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
