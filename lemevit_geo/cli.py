"""The ``lemevit-geo`` command line: parse, call a pipeline, print.

Heavy libraries (torch, rasterio, ...) are imported inside the commands so ``--help`` stays fast.
Every error the user can fix is a :class:`~lemevit_geo.errors.LemevitError`; :func:`main` turns it into
one line on stderr and exit code 1 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lemevit_geo import options as o
from lemevit_geo.choices import Precision, Stitch
from lemevit_geo.errors import LemevitError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Large remote-sensing scenes to maps with the LeMeViT vision transformer.",
)
console = Console(stderr=True)
_state = {"debug": False}
bundle_app = typer.Typer(no_args_is_help=True, help="Make and inspect model bundles.")
app.add_typer(bundle_app, name="bundle")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """Large remote-sensing scenes to maps with the LeMeViT vision transformer."""
    _state["debug"] = debug


def print_json(summary: dict[str, Any]) -> None:
    """Print a machine-readable summary on stdout."""
    typer.echo(json.dumps(summary, indent=2, default=str))


@contextlib.contextmanager
def tile_progress(hidden: bool) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """Rich progress bar over tiles (tiles done, tiles/s, ETA); yields (on_start(total), advance(n))."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class Rate(TextColumn):
        def __init__(self) -> None:
            super().__init__("")

        def render(self, task: Any) -> Any:
            from rich.text import Text

            return Text(f"{task.speed or 0:.1f} tiles/s")

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
        console=console, disable=hidden,
    )  # fmt: skip
    task = bar.add_task("tiles", total=None, start=False)

    def on_start(total: int) -> None:  # shown once inputs are checked, so errors stay one line
        bar.update(task, total=total)
        bar.start_task(task)
        bar.start()

    try:
        yield on_start, (lambda n: bar.advance(task, n))
    finally:
        bar.stop()


def report(summary: dict[str, Any], as_json: bool, quiet: bool) -> None:
    """Print a run's summary: JSON on stdout, or a short table on stderr."""
    if as_json:
        print_json(summary)
        return
    if quiet:
        return
    table = Table(show_header=False, box=None)
    for key, value in summary.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)


@app.command()
def segment(
    image: o.Image,
    output: o.Output,
    model: o.Model,
    bands: o.Bands = None,
    tile_size: o.TileSize = None,
    overlap: o.Overlap = None,
    stitch: o.StitchOpt = Stitch.blend,
    batch_size: o.BatchSize = 4,
    device: o.Device = "auto",
    precision: o.PrecisionOpt = Precision.auto,
    threads: o.Threads = 2,
    probabilities: o.Probabilities = None,
    vector: o.Vector = None,
    min_area: o.MinArea = 0.0,
    simplify: o.Simplify = 0.0,
    cog: o.Cog = False,
    overwrite: o.Overwrite = False,
    allow_pixel_grid: o.AllowPixelGrid = False,
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Semantic segmentation: a class raster on exactly the scene's grid (and polygons)."""
    from lemevit_geo.pipelines.predict import segment as run
    from lemevit_geo.raster import parse_bands

    with tile_progress(quiet or as_json) as (on_start, advance):
        summary = run(
            image=image, output=output, model=model, bands=parse_bands(bands), tile_size=tile_size,
            overlap=overlap, stitch=stitch, batch_size=batch_size, device=device, precision=precision,
            threads=threads, probabilities=probabilities, vector=vector, min_area=min_area, simplify=simplify,
            cog=cog, overwrite=overwrite, allow_pixel_grid=allow_pixel_grid, progress=advance, on_start=on_start,
        )  # fmt: skip
    report(summary, as_json, quiet)


@app.command()
def change(
    before: Annotated[Path, typer.Argument(help="Earlier image.", show_default=False)],
    after: Annotated[Path, typer.Argument(help="Later image (warped onto the earlier one's grid if needed).")],
    output: o.Output,
    model: o.Model,
    bands: o.Bands = None,
    tile_size: o.TileSize = None,
    overlap: o.Overlap = None,
    stitch: o.StitchOpt = Stitch.blend,
    batch_size: o.BatchSize = 4,
    device: o.Device = "auto",
    precision: o.PrecisionOpt = Precision.auto,
    threads: o.Threads = 2,
    probabilities: o.Probabilities = None,
    vector: o.Vector = None,
    min_area: o.MinArea = 0.0,
    simplify: o.Simplify = 0.0,
    cog: o.Cog = False,
    overwrite: o.Overwrite = False,
    allow_pixel_grid: o.AllowPixelGrid = False,
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Bitemporal change detection: a change raster on the earlier image's grid, over the overlap."""
    from lemevit_geo.pipelines.change import change as run
    from lemevit_geo.raster import parse_bands

    with tile_progress(quiet or as_json) as (on_start, advance):
        summary = run(
            before=before, after=after, output=output, model=model, bands=parse_bands(bands), tile_size=tile_size,
            overlap=overlap, stitch=stitch, batch_size=batch_size, device=device, precision=precision,
            threads=threads, probabilities=probabilities, vector=vector, min_area=min_area, simplify=simplify,
            cog=cog, overwrite=overwrite, allow_pixel_grid=allow_pixel_grid, progress=advance, on_start=on_start,
        )  # fmt: skip
    report(summary, as_json, quiet)


@app.command()
def classify(
    image: o.Image,
    output: o.Output,
    model: o.Model,
    bands: o.Bands = None,
    tile_size: o.TileSize = None,
    batch_size: o.BatchSize = 16,
    device: o.Device = "auto",
    precision: o.PrecisionOpt = Precision.auto,
    threads: o.Threads = 2,
    raster: Annotated[
        Path | None, typer.Option("--raster", help="Also write a coarse class raster, one pixel per tile.")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Classes listed per tile.")] = 3,
    overwrite: o.Overwrite = False,
    allow_pixel_grid: o.AllowPixelGrid = False,
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Scene classification per tile: one polygon per tile with its class, probability and top-k."""
    from lemevit_geo.pipelines.predict import classify as run
    from lemevit_geo.raster import parse_bands

    with tile_progress(quiet or as_json) as (on_start, advance):
        summary = run(
            image=image, output=output, model=model, bands=parse_bands(bands), tile_size=tile_size,
            batch_size=batch_size, device=device, precision=precision, threads=threads, raster=raster,
            top_k=top_k, overwrite=overwrite, allow_pixel_grid=allow_pixel_grid, progress=advance,
            on_start=on_start,
        )  # fmt: skip
    report(summary, as_json, quiet)


@app.command()
def train(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset", help="potsdam, vaihingen, loveda, levircd, oscd, ucmerced, resisc45, millionaid or custom."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle to write (.safetensors).")] = Path(
        "model.safetensors"
    ),
    root: Annotated[Path | None, typer.Option("--root", help="Folder of a torchgeo dataset.")] = None,
    images: Annotated[
        list[str] | None, typer.Option("--images", help="Own images: paths or globs (segmentation).")
    ] = None,
    labels: Annotated[
        list[str] | None, typer.Option("--labels", help="Label rasters, or a vector file (with --label-column).")
    ] = None,
    before: Annotated[list[str] | None, typer.Option("--before", help="Own earlier images (change).")] = None,
    after: Annotated[list[str] | None, typer.Option("--after", help="Own later images (change).")] = None,
    label_column: Annotated[str | None, typer.Option("--label-column", help="Class column of vector labels.")] = None,
    classes: Annotated[
        str | None, typer.Option("--classes", help="Class names of own labels, comma-separated.")
    ] = None,
    task: Annotated[
        o.Task | None, typer.Option("--task", help="Own data only: classify trains scene labels (tile majority).")
    ] = None,
    arch: o.ArchOpt = o.Arch.tiny,
    backbone_weights: Annotated[
        Path | None, typer.Option("--backbone-weights", help="Official LeMeViT checkpoint.")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 10,
    batch_size: o.BatchSize = 8,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (AdamW).")] = 1e-3,
    tile_size: o.TileSize = None,
    num_workers: Annotated[int, typer.Option("--num-workers", help="Data loader processes.")] = 0,
    precision: o.PrecisionOpt = Precision.auto,
    devices: Annotated[str, typer.Option("--devices", help="Lightning devices: auto, a count, or a list.")] = "auto",
    num_nodes: Annotated[int, typer.Option("--num-nodes", help="Machines (DDP via torchrun or SLURM).")] = 1,
    strategy: Annotated[str, typer.Option("--strategy", help="Lightning strategy: auto, ddp, ...")] = "auto",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of own data's area kept for validation.")
    ] = 0.2,
    steps_per_epoch: Annotated[int, typer.Option("--steps-per-epoch", help="Batches per epoch on own data.")] = 100,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of this --out.")] = False,
    fast_dev_run: Annotated[bool, typer.Option("--fast-dev-run", help="One batch of training and validation.")] = False,
    overwrite: o.Overwrite = False,
    quiet: o.Quiet = False,
    as_json: o.Json = False,
) -> None:
    """Train a model on a torchgeo dataset or on your own rasters; writes a bundle."""
    from lemevit_geo.pipelines.train import train as run

    summary = run(
        dataset=dataset, out=out, root=root, images=images, labels=labels, before=before, after=after,
        label_column=label_column, classes=[c.strip() for c in classes.split(",")] if classes else None, task=task,
        arch=arch,
        backbone_weights=backbone_weights, epochs=epochs, batch_size=batch_size, lr=lr, tile_size=tile_size,
        num_workers=num_workers, precision=precision, devices=int(devices) if devices.isdigit() else devices,
        num_nodes=num_nodes, strategy=strategy, seed=seed, val_fraction=val_fraction,
        steps_per_epoch=steps_per_epoch, resume=resume, fast_dev_run=fast_dev_run, overwrite=overwrite,
        progress=not (quiet or as_json),
    )  # fmt: skip
    report(summary, as_json, quiet)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the scene, models and results.")] = Path(
        "lemevit-demo"
    ),
    size: Annotated[int, typer.Option("--size", help="Side of the generated scene in pixels.")] = 2048,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs per model (time for quality).")] = 3,
    steps_per_epoch: Annotated[int, typer.Option("--steps-per-epoch", help="Batches per epoch.")] = 40,
    device: o.Device = "auto",
    precision: o.PrecisionOpt = Precision.auto,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the scene and of training.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Replace earlier demo results.")] = True,
    as_json: o.Json = False,
) -> None:
    """Run the whole tool offline on a generated georeferenced scene (a few minutes on a CPU)."""
    from lemevit_geo.pipelines.demo import run_demo

    def log(msg: str) -> None:
        if not as_json:
            console.print(f"[bold cyan]demo[/] {msg}")

    summary = run_demo(out=out, size=size, epochs=epochs, steps_per_epoch=steps_per_epoch, device=device,
                       precision=precision, seed=seed, overwrite=overwrite, log=log)  # fmt: skip
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"lemevit-geo demo: {size} x {size} px scene, {summary['seconds']:.0f} s in all")
    for col in ("task", "held-out metric", "train s", "predict s", "outputs"):
        table.add_column(col)
    for name, t in summary["tasks"].items():
        table.add_row(name, t["metric"], f"{t['train_seconds']:.0f}", f"{t['predict_seconds']:.0f}",
                      "\n".join(t["outputs"]))  # fmt: skip
    Console().print(table)
    Console().print("previews: " + ", ".join(summary["previews"].values()))


@bundle_app.command("init")
def bundle_init(
    task: o.TaskOpt,
    output: o.Output,
    classes: Annotated[
        str | None,
        typer.Option("--classes", help="Comma-separated class names, in output order (change: 'no change,change')."),
    ] = None,
    arch: o.ArchOpt = o.Arch.tiny,
    bands: Annotated[int, typer.Option("--bands", help="Number of input bands.")] = 3,
    mean: Annotated[str | None, typer.Option("--mean", help="Per-band means (default: 0.5*255 each).")] = None,
    std: Annotated[str | None, typer.Option("--std", help="Per-band standard deviations (default: 0.25*255).")] = None,
    tile_size: o.TileSize = None,
    gsd: Annotated[float | None, typer.Option("--gsd", help="Ground sample distance in metres.")] = None,
    backbone_weights: Annotated[
        Path | None, typer.Option("--backbone-weights", help="Official LeMeViT checkpoint (.pth) for the backbone.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random initialisation.")] = 0,
    overwrite: o.Overwrite = False,
) -> None:
    """Make a bundle without training (random or official backbone weights), to try the engine."""
    from lemevit_geo.pipelines.bundles import init_bundle

    path = init_bundle(
        task=task, arch=arch, classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        bands=bands,
        mean=mean, std=std, tile_size=tile_size, gsd=gsd, backbone_weights=backbone_weights, seed=seed,
        output=output, overwrite=overwrite,
    )  # fmt: skip
    console.print(f"wrote {path}")


@bundle_app.command("show")
def bundle_show(model: o.Image) -> None:
    """Print a bundle's metadata as JSON."""
    from lemevit_geo.bundle import read_config

    typer.echo(read_config(model).to_json())


@app.command()
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Versions, devices, attention backends and registered models."""
    import rasterio
    import timm
    import torch
    import torchgeo

    import lemevit_geo
    from lemevit_geo.device import cpu_supports_bf16
    from lemevit_geo.models import attention_backend

    devices = [{"device": "cpu", "name": "CPU", "bf16": cpu_supports_bf16()}]
    for i in range(torch.cuda.device_count()):
        devices.append(
            {"device": f"cuda:{i}", "name": torch.cuda.get_device_name(i), "bf16": torch.cuda.is_bf16_supported()}
        )
    for d in devices:
        half = torch.bfloat16 if d["bf16"] else torch.float16
        d["attention_fp32"] = attention_backend(d["device"], torch.float32)
        d["attention_half"] = attention_backend(d["device"], half)
    report = {
        "lemevit_geo": lemevit_geo.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "torchgeo": torchgeo.__version__,
        "timm": timm.__version__,
        "devices": devices,
        "models": timm.list_models("lemevit_*"),
    }
    if as_json:
        print_json(report)
        return
    out = Console()
    table = Table(title="lemevit-geo", show_header=False)
    for key in ("lemevit_geo", "python", "torch", "cuda", "rasterio", "gdal", "torchgeo", "timm"):
        table.add_row(key, str(report[key]))
    table.add_row("models", ", ".join(report["models"]))
    out.print(table)
    dev = Table(title="devices")
    for col in ("device", "name", "bf16", "attention fp32", "attention half"):
        dev.add_column(col)
    for d in devices:
        dev.add_row(d["device"], d["name"], str(d["bf16"]), d["attention_fp32"], d["attention_half"])
    out.print(dev)


def main() -> None:
    """Console-script entry point: run the app, turning our errors into one line and exit code 1."""
    # inputs without a geotransform are refused, or accepted on purpose with --allow-pixel-grid
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")
    try:
        app(standalone_mode=False)
    except LemevitError as exc:
        if _state["debug"]:
            raise
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("[bold red]aborted[/]")
        sys.exit(1)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
