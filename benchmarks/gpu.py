"""Every GPU measurement of issue 14, one section per call (``benchmarks/gpu.sh`` runs them all with timeouts).

Sections (each writes ``OUT/<section>.json``; ``report`` joins them into ``OUT/results.json`` and
``OUT/results.md``):

- ``env``: torch, CUDA, the device, flash-attn, nvidia-ml-py; and which project packages import.
- ``classify``: LeMeViT-tiny/small/base classification at 224 px, batch 256, fp16 and bf16, with and without
  flash-attn (where it is installed), eager and compiled, in images/s against the paper (fp16: 5316 / 3608 /
  1483 img/s). Needs only torch, timm and einops: the models load from the source tree if the project is
  not installed.
- ``segment``: ``segment`` end to end (LeMeViT-tiny + UperNet, randomly initialised, 512 px tiles, blend) on a
  generated 16k x 16k scene, against the model alone on the same tiles in the same batches (from host
  memory, and with the batch already on the device), with the share of the run's wall time the GPU was
  busy (nvidia-ml-py, sampled every 50 ms). Needs the project installed (rasterio, geopandas, ...).

``--device cpu --dry-run`` runs every section at toy sizes on the CPU (tests/test_fastpath.py does).

    python benchmarks/gpu.py classify --out results/ [--archs tiny small base] [--compile eager compiled]
    python benchmarks/gpu.py segment --out results/ [--size 16384]
    python benchmarks/gpu.py report --out results/
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: LeMeViT classification throughput in the paper (img/s, 224 px, batch 256, fp16).
PAPER = {"tiny": 5316, "small": 3608, "base": 1483}


def _models() -> Any:
    """``lemevit_geo.models``, from the installed project or, where it is not installed, from the source tree
    (``models/`` is installed as ``lemevit_geo.models``)."""
    try:
        return importlib.import_module("lemevit_geo.models.lemevit")
    except ImportError:
        import lemevit_geo

        lemevit_geo.__path__.append(str(REPO))  # lemevit_geo.models -> <repo>/models
        return importlib.import_module("lemevit_geo.models.lemevit")


def _write(out: Path, name: str, data: Any, show: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    if show:
        print(json.dumps({name: data}, indent=2), flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: torch.dtype) -> Any:
    import contextlib

    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def section_env(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": args.device,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average": round(os.getloadavg()[0], 2),
    }
    if torch.device(args.device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    packages = ["flash_attn", "pynvml", "timm", "einops", "rasterio", "geopandas", "shapely", "torchgeo"]
    for name in [*packages, "segmentation_models_pytorch", "lemevit_geo.pipelines.inference.segment"]:
        try:
            module = importlib.import_module(name)
            info[name] = getattr(module, "__version__", "yes")
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            info[name] = f"missing ({type(exc).__name__})"
    return info


def images_per_second(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype, seconds: float) -> float:
    """Images/s of ``model`` on ``x`` for about ``seconds`` after two warm-up calls."""
    with torch.inference_mode(), _autocast(x.device, dtype):
        model(x)
        model(x)
        _sync(x.device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += x.shape[0]
        _sync(x.device)
    return n / (time.perf_counter() - start)


def section_classify(args: argparse.Namespace) -> list[dict[str, Any]]:
    lemevit = _models()
    flash = lemevit._flash_attn_func
    device = torch.device(args.device)
    rows = []
    for arch in args.archs:
        torch.manual_seed(0)
        eager = getattr(lemevit, f"lemevit_{arch}")().to(device, memory_format=torch.channels_last).eval()
        x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(
            memory_format=torch.channels_last
        )
        for mode in args.compile:
            model = torch.compile(eager, dynamic=False) if mode == "compiled" else eager
            for precision in args.precisions:
                dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
                for attention in ("flash-attn", "sdpa"):
                    if attention == "flash-attn" and flash is None:
                        continue
                    lemevit._flash_attn_func = flash if attention == "flash-attn" else None
                    if mode == "compiled":
                        torch._dynamo.reset()  # the attention choice is baked into the graph
                        model = torch.compile(eager, dynamic=False)
                    start = time.perf_counter()
                    try:
                        ips = images_per_second(model, x, dtype, args.seconds)
                        error = None
                    except Exception as exc:  # noqa: BLE001 - one failing setting must not stop the others
                        first = (str(exc).splitlines() or [""])[0][:160]
                        ips, error = 0.0, f"{type(exc).__name__}: {first}"
                    row = {
                        "arch": arch,
                        "precision": precision,
                        "attention": attention,
                        "mode": mode,
                        "batch": args.batch,
                        "size": args.size,
                        "img_per_s": round(ips, 1),
                        "paper_img_per_s": PAPER[arch],
                        "vs_paper": round(ips / PAPER[arch], 3),
                        "seconds_incl_warm_up": round(time.perf_counter() - start, 1),
                    }
                    if error:
                        row["error"] = error
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    _write(args.out, "classify", rows, show=False)  # what is done survives a timeout
        lemevit._flash_attn_func = flash
        del eager
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


class BusySampler:
    """The GPU's utilisation (share of time a kernel ran) sampled every ``period`` s in a thread, via
    nvidia-ml-py (``torch.cuda.utilization`` as a fallback)."""

    def __init__(self, device: torch.device, period: float = 0.05) -> None:
        self.samples: list[float] = []
        self.period, self.device = period, device
        self.source = "none"
        self._read: Any = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
                self._read, self.source = lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu, "nvidia-ml-py"
            except Exception:  # noqa: BLE001
                self._read, self.source = lambda: torch.cuda.utilization(device), "torch.cuda.utilization"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(float(self._read()))

    def __enter__(self) -> BusySampler:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._read is not None:
            self._thread.join()

    @property
    def busy(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def section_segment(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from benchmarks.fastpath import model_seconds, pipeline_batches
    from benchmarks.pipeline import CLASSES, make_scene
    from lemevit_geo.bundle import BundleConfig, build_model
    from lemevit_geo.choices import Stitch
    from lemevit_geo.device import precision_name
    from lemevit_geo.pipelines.inference.engine import Runtime, SourceSpec, TileReader, forward
    from lemevit_geo.pipelines.inference.segment import segment
    from lemevit_geo.pipelines.inference.tiling import TileGrid
    from lemevit_geo.raster import inspect_source
    from lemevit_geo.settings import Engine, Tiling

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        scene = make_scene(tmp / "scene.tif", args.size)
        scene_s = time.perf_counter() - t0
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
        torch.manual_seed(0)
        net = build_model(config)
        engine = Engine(device=args.device, precision=args.precision, batch_size=args.batch_size, compile=args.compile)
        tiling = Tiling(tile_size=args.tile, overlap=args.overlap, stitch=Stitch.blend)
        runtime = Runtime.create(engine)
        model = runtime.prepare(net)
        runtime.fit(model, (3, args.tile, args.tile))
        info = inspect_source(scene, None, 3)
        grid = TileGrid(info.height, info.width, args.tile, args.overlap)
        spec = SourceSpec(info, np.array(config.mean, np.float32), np.array(config.std, np.float32))
        t0 = time.perf_counter()
        tiles = [t.data for t in TileReader([spec], grid, threads=runtime.threads)]
        read_s = time.perf_counter() - t0
        batches = pipeline_batches(grid, tiles, runtime.batch_size)
        host_s = model_seconds(model, runtime, batches)  # compiles (warm-up) first
        x = torch.zeros((runtime.batch_size, 3, args.tile, args.tile), device=device)
        x[: len(batches[0])] = torch.from_numpy(np.stack(batches[0])).to(device)
        _sync(device)
        start = time.perf_counter()
        for b in batches:
            forward(model, x[: runtime.padded(len(b))], device, runtime.dtype)
        _sync(device)
        device_s = time.perf_counter() - start
        del tiles, batches, x
        segment(image=scene, output=tmp / "warm.tif", model=(net, config), tiling=tiling, engine=engine)  # warm
        with BusySampler(device) as sampler:
            summary = segment(image=scene, output=tmp / "mask.tif", model=(net, config), tiling=tiling, engine=engine)
        n = summary["tiles_run"]
        return {
            "scene": f"{args.size}x{args.size}",
            "scene_write_s": round(scene_s, 1),
            "tiles": n,
            "tile": args.tile,
            "overlap": args.overlap,
            "device": str(device),
            "precision": precision_name(runtime.dtype),
            "compile": runtime.compile,
            "batch_size": runtime.batch_size,
            "reader_threads": runtime.threads,
            "read_all_tiles_s": round(read_s, 1),
            "model_from_host_tiles_per_s": round(n / host_s, 1),
            "model_on_device_tiles_per_s": round(n / device_s, 1),
            "segment_s": summary["seconds"],
            "segment_tiles_per_s": round(n / summary["seconds"], 1),
            "segment_megapixels_per_s": summary["megapixels_per_s"],
            "ratio_to_model_from_host": round(host_s / summary["seconds"], 3),
            "ratio_to_model_on_device": round(device_s / summary["seconds"], 3),
            "gpu_busy_share": sampler.busy,
            "busy_source": sampler.source,
            "load_average": round(os.getloadavg()[0], 2),
        }


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def section_report(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in ("env", "classify", "segment"):
        path = args.out / f"{name}.json"
        results[name] = json.loads(path.read_text()) if path.exists() else "not run (timed out or failed: see log)"
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    md = ["# GPU fast path (issue 14)", ""]
    env = results["env"]
    if isinstance(env, dict):
        md += [f"- {k}: {v}" for k, v in env.items()] + [""]
    md += ["## Classification, 224 px", ""]
    md += [_table(results["classify"]) if isinstance(results["classify"], list) else str(results["classify"]), ""]
    md += ["## segment end to end vs the model alone", ""]
    seg = results["segment"]
    md += [_table([seg]) if isinstance(seg, dict) else str(seg), ""]
    (args.out / "results.md").write_text("\n".join(md))
    print("\n".join(md))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=["env", "classify", "segment", "report"])
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes (with --device cpu: a test of the script)")
    parser.add_argument("--archs", nargs="*", default=["tiny", "small", "base"])
    parser.add_argument("--precisions", nargs="*", default=None, help="default: fp16 bf16 (fp32 bf16 on the CPU)")
    parser.add_argument("--compile", nargs="*", default=None, help="classify: eager compiled; segment: auto|on|off")
    parser.add_argument("--batch", type=int, default=256, help="classify batch")
    parser.add_argument("--seconds", type=float, default=3.0, help="classify: timed seconds per setting")
    parser.add_argument("--size", type=int, default=None, help="classify: 224; segment: scene side, 16384")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", default="auto", help="segment batch size")
    parser.add_argument("--precision", default="auto", help="segment precision")
    parser.add_argument("--tmp", default=None, help="segment: where the scene is written")
    args = parser.parse_args()
    cpu = torch.device(args.device).type == "cpu"
    if args.section == "classify":
        args.size = args.size or 224
        args.precisions = args.precisions or (["fp32", "bf16"] if cpu else ["fp16", "bf16"])
        args.compile = args.compile or ["eager", "compiled"]
        if args.dry_run:
            args.archs, args.batch, args.size, args.seconds, args.compile = ["tiny"], 2, 64, 0.2, ["eager"]
            args.precisions = args.precisions[:1]
    elif args.section == "segment":
        args.size = args.size or 16384
        args.compile = (args.compile or ["auto"])[0]
        if args.dry_run:
            args.size, args.tile, args.overlap, args.compile = 384, 128, 16, "off"
    run = {"env": section_env, "classify": section_classify, "segment": section_segment, "report": section_report}
    result = run[args.section](args)
    if args.section != "report":
        _write(args.out, args.section, result)


if __name__ == "__main__":
    main()
