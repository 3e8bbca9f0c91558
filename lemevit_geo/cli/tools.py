"""The other commands: ``demo``, ``bundle init``, ``bundle show`` and ``info``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lemevit_geo import options as o
from lemevit_geo.cli.app import app, bundle_app, console, quiet_lightning
from lemevit_geo.cli.display import print_json, report
from lemevit_geo.options import Display, grouped
from lemevit_geo.settings import Engine


@app.command()
@grouped(display=Display())
def demo(
    out: o.DemoOut = Path("lemevit-demo"),
    size: o.DemoSize = 2048,
    epochs: o.DemoEpochs = 3,
    steps_per_epoch: o.DemoSteps = 40,
    device: o.Device = "auto",
    precision: o.PrecisionOpt = o.Precision.auto,
    seed: o.Seed = 0,
    overwrite: o.DemoOverwrite = True,
    *,
    display: Display,
) -> None:
    """Run the whole tool offline on a generated georeferenced scene (a few minutes on a CPU)."""
    from lemevit_geo.pipelines.apps.demo import run_demo

    quiet_lightning()

    def log(msg: str) -> None:
        if display.progress:
            console.print(f"[bold cyan]demo[/] {msg}")

    summary = run_demo(
        out=out,
        size=size,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        engine=Engine(device=device, precision=precision),
        seed=seed,
        overwrite=overwrite,
        log=log,
    )
    if display.json:
        print_json(summary)
    elif not display.quiet:
        _demo_table(summary, size)


def _demo_table(summary: dict[str, Any], size: int) -> None:
    table = Table(title=f"lemevit-geo demo: {size} x {size} px scene, {summary['seconds']:.0f} s in all")
    for col in ("task", "held-out metric", "train s", "predict s", "outputs"):
        table.add_column(col)
    for name, t in summary["tasks"].items():
        outputs = "\n".join(t["outputs"])
        table.add_row(name, t["metric"], f"{t['train_seconds']:.0f}", f"{t['predict_seconds']:.0f}", outputs)
    out = Console()
    out.print(table)
    out.print("previews: " + ", ".join(summary["previews"].values()))
    out.print(f"map report (open in a browser): {summary['report']}")


@bundle_app.command("init")
@grouped(display=Display())
def bundle_init(
    task: o.TaskOpt,
    output: o.Output,
    classes: o.Classes = None,
    arch: o.ArchOpt = o.Arch.tiny,
    bands: o.BandCount = 3,
    mean: o.Mean = None,
    std: o.Std = None,
    tile_size: o.TileSize = None,
    gsd: o.Gsd = None,
    backbone_weights: o.OfficialWeights = None,
    seed: o.Seed = 0,
    overwrite: o.Overwrite = False,
    *,
    display: Display,
) -> None:
    """Make a bundle without training (random or official backbone weights), to try the engine.

    Classes are given in output order (change: 'no change,change', the default).
    """
    fields = {name: value for name, value in locals().items() if name != "display"}  # init_bundle()'s, one each
    from lemevit_geo.bundle import read_config
    from lemevit_geo.bundle_init import init_bundle

    path = init_bundle(**fields)
    report({"bundle": str(path), **read_config(path).describe()}, display)


@bundle_app.command("show")
def bundle_show(model: o.BundleArg) -> None:
    """Print a bundle's metadata as JSON."""
    from lemevit_geo.bundle import read_config

    print_json(read_config(model).describe())


def _devices() -> list[dict[str, Any]]:
    """The CPU and every CUDA device: bf16 support, the precision, attention backend and compilation an
    ``auto`` run uses there, and the attention backend per precision."""
    import torch

    from lemevit_geo.device import cpu_supports_bf16, precision_name, resolve_compile, resolve_precision
    from lemevit_geo.models import attention_backend

    devices = [{"device": "cpu", "name": "CPU", "bf16": cpu_supports_bf16()}]
    for i in range(torch.cuda.device_count()):
        name, bf16 = torch.cuda.get_device_name(i), torch.cuda.is_bf16_supported()
        devices.append({"device": f"cuda:{i}", "name": name, "bf16": bf16})
    for d in devices:
        device = torch.device(d["device"])
        half = torch.bfloat16 if d["bf16"] else torch.float16
        dtype = resolve_precision("auto", device)
        d["precision"] = precision_name(dtype)
        d["attention"] = attention_backend(device, dtype)
        d["compile"] = resolve_compile("auto", device)
        d["attention_fp32"] = attention_backend(d["device"], torch.float32)
        d["attention_half"] = attention_backend(d["device"], half)
    return devices


@app.command()
@grouped(display=Display())
def info(*, display: Display) -> None:
    """Versions, devices, attention backends and registered models."""
    import rasterio
    import timm
    import torch
    import torchgeo

    import lemevit_geo

    summary = {
        "lemevit_geo": lemevit_geo.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "torchgeo": torchgeo.__version__,
        "timm": timm.__version__,
        "devices": _devices(),
        "models": timm.list_models("lemevit_*"),
    }
    if display.json or display.quiet:
        report(summary, display)
        return
    out = Console()
    table = Table(title="lemevit-geo", show_header=False)
    for key in ("lemevit_geo", "python", "torch", "cuda", "rasterio", "gdal", "torchgeo", "timm"):
        table.add_row(key, str(summary[key]))
    table.add_row("models", ", ".join(summary["models"]))
    out.print(table)
    dev = Table(title="devices")
    for col in ("device", "name", "bf16", "precision", "attention", "compile"):
        dev.add_column(col)
    for d in summary["devices"]:
        dev.add_row(
            d["device"],
            d["name"],
            str(d["bf16"]),
            d["precision"],
            d["attention"],
            "on" if d["compile"] else "off",
        )
    out.print(dev)
