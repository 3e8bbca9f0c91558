"""Command-line options: one home for each option's flag, help, parsing and default.

Options are Typer ``Annotated`` aliases. Values are parsed here (``parser=``), so the pipelines receive
typed values, never strings to split. Groups of options that several commands share come from the
dataclasses of :mod:`lemevit_geo.settings` through :func:`grouped`, which adds their fields to a
command's signature (with the dataclass defaults) and hands the command one dataclass per group, the
way rasterio's ``rio`` commands share option decorators.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from lemevit_geo.choices import Arch, Compile, Precision, PretrainMethod, Schedule, Stitch, Task


class BandIndexes(tuple):
    """1-based band numbers, in model order (``--bands 4,3,2``)."""


class Names(list):
    """Comma-separated names (``--classes water,forest``)."""


class Floats(list):
    """Comma-separated numbers (``--mean 120,110,100``)."""


class PartIndex(tuple):
    """One part of several, 0-based (``--part 3/8``)."""


def parse_part(spec: str) -> PartIndex:
    """Parse ``3/8`` into ``(3, 8)``."""
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise typer.BadParameter(f"a part index and count such as 0/8, got {spec!r}") from None
    if not 0 <= i < n:
        raise typer.BadParameter(f"the part index runs from 0 to the count less one, got {spec!r}")
    return PartIndex((i, n))


def parse_bands(spec: str) -> BandIndexes:
    """Parse ``4,3,2`` into 1-based band indexes."""
    try:
        bands = BandIndexes(int(b) for b in spec.split(","))
    except ValueError:
        raise typer.BadParameter(f"comma-separated band numbers such as 4,3,2, got {spec!r}") from None
    if any(b < 1 for b in bands):
        raise typer.BadParameter(f"band numbers start at 1, got {spec!r}")
    return bands


def parse_names(spec: str) -> Names:
    """Parse ``a, b ,c`` into ``["a", "b", "c"]`` (empty names dropped)."""
    return Names(n.strip() for n in spec.split(",") if n.strip())


def parse_floats(spec: str) -> Floats:
    """Parse ``1.5,2,3`` into numbers."""
    try:
        return Floats(float(v) for v in spec.split(","))
    except ValueError:
        raise typer.BadParameter(f"comma-separated numbers, got {spec!r}") from None


def parse_devices(spec: str) -> str | int | list[int]:
    """Lightning devices: ``auto``, a count (``2``) or a list of indexes (``0,1``)."""
    spec = spec.strip()
    if spec.isdigit():
        return int(spec)
    if "," in spec:
        try:
            return [int(d) for d in spec.split(",")]
        except ValueError:
            raise typer.BadParameter(f"auto, a count or a list such as 0,1, got {spec!r}") from None
    return spec


# -- single options --------------------------------------------------------------------------------

Image = Annotated[
    Path, typer.Argument(help="Input raster (GeoTIFF, COG, VRT: anything GDAL reads).", show_default=False)
]
Images = Annotated[
    list[str] | None,
    typer.Argument(
        help="Input rasters (GeoTIFF, COG, VRT: anything GDAL reads; https://, s3://, gs://, az:// URLs; STAC "
        "Item .json files or URLs) or quoted glob patterns ('tiles/*.tif'); with --stac, item ids or datetime "
        "ranges to search (none: all the search finds); with several, -o names an output directory.",
        metavar="IMAGE...",
        show_default=False,
    ),
]
BundleArg = Annotated[Path, typer.Argument(help="Model bundle (.safetensors).", show_default=False)]
Output = Annotated[Path, typer.Option("--output", "-o", help="Output file.", show_default=False)]
Model = Annotated[Path, typer.Option("--model", "-m", help="Model bundle (.safetensors).", show_default=False)]
ArchOpt = Annotated[Arch, typer.Option("--arch", help="LeMeViT size.")]
TaskOpt = Annotated[Task, typer.Option("--task", help="What the model predicts.")]
Bands = Annotated[
    BandIndexes | None,
    typer.Option(
        "--bands",
        parser=parse_bands,
        metavar="B1,B2,...",
        help="Input bands to use, 1-based and in model order, e.g. 4,3,2.",
    ),
]
Classes = Annotated[
    Names | None,
    typer.Option("--classes", parser=parse_names, metavar="NAME,...", help="Class names, comma-separated."),
]
TileSize = Annotated[int | None, typer.Option("--tile-size", help="Tile side in pixels (default: the bundle's).")]
Overlap = Annotated[
    int | None, typer.Option("--overlap", help="Overlap of neighbouring tiles in pixels (default: tile/8).")
]
DetectOverlap = Annotated[
    int | None,
    typer.Option(
        "--overlap",
        help="Overlap of neighbouring tiles in pixels (default: the bundle's, at least its largest object).",
    ),
]
StitchOpt = Annotated[Stitch, typer.Option("--stitch", help="Seams: centre crops, or smooth blending of logits.")]
BatchSize = Annotated[
    str,
    typer.Option(
        "--batch-size", "-b", help="Tiles per model call, or auto (the largest that fits the GPU; 4 x 512 px on CPU)."
    ),
]
TrainBatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Tiles per training step.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", help="Compute precision (auto: bf16/fp16 where fast).")]
Threads = Annotated[
    str, typer.Option("--threads", help="Background reader threads, or auto (2 on CPU; with a GPU the cores less 2).")
]
CompileOpt = Annotated[
    Compile, typer.Option("--compile", help="torch.compile the model (auto: on CUDA, eager on the CPU).")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
Cog = Annotated[bool, typer.Option("--cog", help="Write a Cloud Optimized GeoTIFF.")]
AllowPixelGrid = Annotated[
    bool, typer.Option("--allow-pixel-grid", help="Accept rasters without CRS/geotransform (pixel coordinates).")
]
Probabilities = Annotated[
    Path | None, typer.Option("--probabilities", help="Also write per-class probabilities (uint8, 0..254).")
]
Vector = Annotated[Path | None, typer.Option("--vector", help="Also write polygons (.gpkg, .parquet, .geojson).")]
MinArea = Annotated[float, typer.Option("--min-area", help="Drop polygons smaller than this (CRS units squared).")]
Simplify = Annotated[
    float, typer.Option("--simplify", help="Simplify polygons by this tolerance (CRS units), keeping shared edges.")
]
ScoreThreshold = Annotated[
    float | None,
    typer.Option(
        "--score-threshold",
        help="Minimum box score for every class (default: the bundle's per class, chosen on validation; 0: all boxes).",
    ),
]
AllScores = Annotated[
    bool,
    typer.Option("--all-scores", help="Keep every box the detector reports (as --score-threshold 0; for mAP)."),
]
IouThreshold = Annotated[
    float | None,
    typer.Option("--iou-threshold", help="Rotated IoU above which overlapping boxes merge (default: the bundle's)."),
]
MaxDetections = Annotated[
    int | None, typer.Option("--max-detections", help="Boxes kept per tile (default: the bundle's).")
]
KeepClasses = Annotated[
    Names | None,
    typer.Option("--classes", parser=parse_names, metavar="NAME,...", help="Keep only these classes (default: all)."),
]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Epochs = Annotated[int, typer.Option("--epochs", help="Training epochs.")]
StepsPerEpoch = Annotated[int, typer.Option("--steps-per-epoch", help="Batches per epoch on own data.")]
LearningRate = Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")]
ScheduleOpt = Annotated[
    Schedule, typer.Option("--schedule", help="Learning rate: warm-up + cosine decay, or drop on plateau.")
]
Warmup = Annotated[float, typer.Option("--warmup", help="Share of the steps that warm the learning rate up.")]
DropPath = Annotated[float, typer.Option("--drop-path", help="Stochastic depth of the backbone.")]
DecoderChannels = Annotated[int, typer.Option("--decoder-channels", help="Segmentation decoder (UPerNet) width.")]
PixelChannels = Annotated[
    int,
    typer.Option("--pixel-channels", help="Full-resolution branch from each pixel's bands to the head (0: none)."),
]
ClassBalance = Annotated[
    float,
    typer.Option(
        "--class-balance", help="Class weights (median freq / freq) ** this, from the training labels (0: none)."
    ),
]
Augment = Annotated[
    bool, typer.Option("--augment/--no-augment", help="Random flips and 90-degree rotations of training tiles.")
]
MaskRatio = Annotated[float, typer.Option("--mask-ratio", help="Share of 16 px patches hidden (simmim).")]
Devices = Annotated[
    str,  # parsed into a count or a list of indexes where given so
    typer.Option("--devices", parser=parse_devices, help="Lightning devices: auto, a count, or a list such as 0,1."),
]
Accelerator = Annotated[str, typer.Option("--accelerator", help="Lightning accelerator: auto, cpu or gpu.")]
NumNodes = Annotated[int, typer.Option("--num-nodes", help="Machines (DDP via torchrun or SLURM).")]
Strategy = Annotated[str, typer.Option("--strategy", help="Lightning strategy: auto, ddp, ...")]
NumWorkers = Annotated[int, typer.Option("--num-workers", help="Data loader processes.")]
Executor = Annotated[
    str,
    typer.Option(
        "--executor", help="Where parts run: inline, ray, ray://HOST:PORT, dask:local[:N] or dask://HOST:PORT."
    ),
]
Parts = Annotated[
    int | None,
    typer.Option("--parts", help="Strips of tile rows per scene (default: 1 per scene, or N with --part I/N)."),
]
Part = Annotated[
    PartIndex | None,
    typer.Option(
        "--part",
        parser=parse_part,
        metavar="I/N",
        help="Run only part I of N (0-based) and merge nothing: array jobs; then `lemevit-geo merge`.",
    ),
]
BBox = Annotated[
    Floats | None,
    typer.Option(
        "--bbox",
        parser=parse_floats,
        metavar="MINX,MINY,MAXX,MAXY",
        help="Process and write only this area of each scene, on its grid (in --bbox-crs).",
    ),
]
BBoxCrs = Annotated[str, typer.Option("--bbox-crs", help="CRS of --bbox (EPSG:4326: longitude, latitude).")]
Assets = Annotated[
    Names | None,
    typer.Option(
        "--assets",
        parser=parse_names,
        metavar="A,B,...",
        help="STAC Item assets to stack, in band order (default: by eo:bands common names, red,green,blue...).",
    ),
]
Resolution = Annotated[
    float | None, typer.Option("--resolution", help="Pixel size of a stacked STAC Item (default: the finest).")
]
Stac = Annotated[str | None, typer.Option("--stac", help="STAC API or static catalogue to search for the images.")]
Collection = Annotated[
    Names | None, typer.Option("--collection", parser=parse_names, metavar="C,...", help="Collections to search.")
]
DatetimeOpt = Annotated[
    str | None, typer.Option("--datetime", help="Datetime or range to search (2024-06-01/2024-06-30).")
]
Query = Annotated[
    Names | None,
    typer.Option("--query", parser=parse_names, metavar="P<V,...", help="Search filters, e.g. eo:cloud_cover<10."),
]
Sign = Annotated[
    str | None,
    typer.Option("--sign", metavar="planetary-computer", help="Sign hrefs first (Planetary Computer SAS tokens)."),
]
Restart = Annotated[bool, typer.Option("--restart", help="Run every part again, ignoring finished parts.")]
KeepParts = Annotated[bool, typer.Option("--keep-parts", help="Keep the part files after the merge.")]
ConnectTimeout = Annotated[
    float,
    typer.Option("--connect-timeout", help="Seconds to wait for the Ray or Dask cluster at the --executor address."),
]
Report = Annotated[
    Path | None,
    typer.Option(
        "--report",
        help="Also write a self-contained HTML map report (image, results, legend, run summary; opens offline).",
        show_default=False,
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no summary table.")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout (and no progress).")]

# -- inference commands (segment, change, classify, detect, merge) ---------------------------------

Before = Annotated[
    str, typer.Argument(help="Earlier image (with --stac: an item id or datetime range).", show_default=False)
]
After = Annotated[str, typer.Argument(help="Later image (warped onto the earlier one's grid if needed).")]
GridRaster = Annotated[
    Path | None, typer.Option("--raster", help="Also write a coarse class raster, one pixel per tile.")
]
TopK = Annotated[int, typer.Option("--top-k", help="Classes listed per tile.")]
Objects = Annotated[
    Path, typer.Option("--output", "-o", help="Polygons to write (.gpkg, .parquet, .geojson).", show_default=False)
]
MergeTarget = Annotated[
    Path,
    typer.Argument(
        help="An output whose parts to join (its OUTPUT.parts directory), or a directory of such outputs.",
        show_default=False,
    ),
]

# -- evaluate --------------------------------------------------------------------------------------

PredictionArg = Annotated[
    Path,
    typer.Argument(
        help="Output to score: a class raster, a change raster, or detections (.gpkg, .parquet, .geojson).",
        show_default=False,
    ),
]
Reference = Annotated[
    Path, typer.Argument(help="Reference: a label raster, a change mask, or labelled polygons.", show_default=False)
]
EvalTask = Annotated[Task | None, typer.Option("--task", help="What the prediction is (default: told by the file).")]
Iou = Annotated[float, typer.Option("--iou", help="Detections: IoU above which a detection hits a reference object.")]
ReferenceLabelColumn = Annotated[
    str | None,
    typer.Option("--label-column", help="Class column of the reference polygons (default: class_name or class)."),
]
Bounds = Annotated[
    Floats | None,
    typer.Option(
        "--bounds",
        parser=parse_floats,
        metavar="MINX,MINY,MAXX,MAXY",
        help="Score only this area (in the prediction's CRS).",
    ),
]
ReportImage = Annotated[
    Path | None,
    typer.Option("--image", help="With --report: the image the prediction was made from, drawn under it."),
]

# -- train and pretrain ----------------------------------------------------------------------------

Dataset = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="potsdam, vaihingen, loveda, levircd, oscd, ucmerced, resisc45, millionaid, dota or custom "
        "(the default with --images, --labels, --before or --after).",
        show_default=False,
    ),
]
BundleOut = Annotated[Path, typer.Option("--out", "-o", help="Bundle to write (.safetensors).")]
Root = Annotated[Path | None, typer.Option("--root", help="Folder of a torchgeo dataset.")]
OwnImages = Annotated[list[str] | None, typer.Option("--images", help="Own images: paths or globs.")]
Labels = Annotated[
    list[str] | None, typer.Option("--labels", help="Label rasters, or a vector file (with --label-column).")
]
BeforeImages = Annotated[list[str] | None, typer.Option("--before", help="Own earlier images (change).")]
AfterImages = Annotated[list[str] | None, typer.Option("--after", help="Own later images (change).")]
LabelColumn = Annotated[
    str | None,
    typer.Option("--label-column", help="Class column of vector labels (detection default: class_name or class)."),
]
PointSize = Annotated[
    float | None,
    typer.Option("--point-size", help="Detection: point labels become square boxes of this side (map units)."),
]
OwnTask = Annotated[
    Task | None,
    typer.Option(
        "--task",
        help="Own data only: classify trains scene labels (tile majority); detect an oriented detector from polygons.",
    ),
]
BackboneWeights = Annotated[
    Path | None,
    typer.Option("--backbone-weights", help="Backbone to start from: `pretrain` output or official .pth checkpoint."),
]
FreezeBackbone = Annotated[
    bool, typer.Option("--freeze-backbone", help="Train only the decoder and head (or the classifier).")
]
ValFraction = Annotated[float, typer.Option("--val-fraction", help="Share of own data's area kept for validation.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of this --out.")]
FastDevRun = Annotated[bool, typer.Option("--fast-dev-run", help="One batch of training and validation.")]
Baseline = Annotated[
    bool,
    typer.Option(
        "--baseline", help="Also score a per-pixel gradient-boosting classifier on the same split (scikit-learn)."
    ),
]
PretrainImages = Annotated[list[str], typer.Option("--images", help="Unlabelled images: paths or globs.")]
BackboneOut = Annotated[Path, typer.Option("--out", "-o", help="Backbone to write (.safetensors).")]
Method = Annotated[
    PretrainMethod, typer.Option("--method", help="Masked image modelling, or torchgeo's SimCLR / MoCo v3.")
]
PretrainTile = Annotated[
    int | None, typer.Option("--tile-size", help="Tile side in pixels (default 128, capped to the images).")
]
SkipUnreadable = Annotated[
    bool, typer.Option("--skip-unreadable", help="Leave out images that cannot be read (listed in a warning).")
]

# -- demo and bundle init --------------------------------------------------------------------------

DemoOut = Annotated[Path, typer.Option("--out", help="Folder for the scene, models and results.")]
DemoSize = Annotated[int, typer.Option("--size", help="Side of the generated scene in pixels.")]
DemoEpochs = Annotated[int, typer.Option("--epochs", help="Training epochs per model (time for quality).")]
DemoSteps = Annotated[int, typer.Option("--steps-per-epoch", help="Batches per epoch.")]
DemoOverwrite = Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Replace earlier demo results.")]
BandCount = Annotated[int, typer.Option("--bands", help="Number of input bands.")]
Mean = Annotated[
    Floats | None,
    typer.Option("--mean", parser=parse_floats, metavar="M,...", help="Per-band means (default: 127.5 each)."),
]
Std = Annotated[
    Floats | None,
    typer.Option(
        "--std", parser=parse_floats, metavar="S,...", help="Per-band standard deviations (default: 63.75 each)."
    ),
]
Gsd = Annotated[float | None, typer.Option("--gsd", help="Ground sample distance in metres.")]
OfficialWeights = Annotated[
    Path | None, typer.Option("--backbone-weights", help="Official LeMeViT checkpoint (.pth) for the backbone.")
]

#: The option of each dataclass field that :func:`grouped` can add (``Class.field`` where a class's differs).
FIELD_OPTIONS: dict[str, Any] = {
    "model": Model,
    "bands": Bands,
    "overwrite": Overwrite,
    "allow_pixel_grid": AllowPixelGrid,
    "report": Report,
    "device": Device,
    "precision": PrecisionOpt,
    "batch_size": BatchSize,
    "Recipe.batch_size": TrainBatchSize,
    "PretrainRecipe.batch_size": TrainBatchSize,
    "threads": Threads,
    "compile": CompileOpt,
    "tile_size": TileSize,
    "overlap": Overlap,
    "stitch": StitchOpt,
    "probabilities": Probabilities,
    "vector": Vector,
    "min_area": MinArea,
    "simplify": Simplify,
    "cog": Cog,
    "score_threshold": ScoreThreshold,
    "iou_threshold": IouThreshold,
    "max_detections": MaxDetections,
    "classes": KeepClasses,
    "all_scores": AllScores,
    "executor": Executor,
    "parts": Parts,
    "part": Part,
    "restart": Restart,
    "bbox": BBox,
    "bbox_crs": BBoxCrs,
    "assets": Assets,
    "resolution": Resolution,
    "stac": Stac,
    "collection": Collection,
    "datetime": DatetimeOpt,
    "query": Query,
    "sign": Sign,
    "keep_parts": KeepParts,
    "connect_timeout": ConnectTimeout,
    "quiet": Quiet,
    "json": Json,
    "epochs": Epochs,
    "steps_per_epoch": StepsPerEpoch,
    "lr": LearningRate,
    "weight_decay": WeightDecay,
    "schedule": ScheduleOpt,
    "warmup": Warmup,
    "drop_path": DropPath,
    "decoder_channels": DecoderChannels,
    "pixel_channels": PixelChannels,
    "class_balance": ClassBalance,
    "augment": Augment,
    "mask_ratio": MaskRatio,
    "seed": Seed,
    "accelerator": Accelerator,
    "devices": Devices,
    "num_nodes": NumNodes,
    "strategy": Strategy,
    "num_workers": NumWorkers,
}


@dataclasses.dataclass(frozen=True)
class Display:
    """What a command prints: progress and a summary table on stderr, or JSON on stdout.

    Attributes:
        quiet: Neither progress nor the summary table.
        json: The summary as JSON on stdout, and no progress.
    """

    quiet: bool = False
    json: bool = False

    @property
    def progress(self) -> bool:
        return not (self.quiet or self.json)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What every inference command (``segment``, ``change``, ``classify``, ``detect``) is given besides its
    inputs, output and settings: the model, how the inputs map onto it, and what it may write.

    Attributes:
        model: The model bundle (.safetensors).
        bands: Input bands to use, 1-based and in model order (``None``: all but a real alpha band).
        overwrite: Replace existing outputs.
        allow_pixel_grid: Accept rasters without CRS/geotransform (pixel coordinates).
        report: Also write an HTML map report of the run here.
    """

    model: Path
    bands: BandIndexes | None = None
    overwrite: bool = False
    allow_pixel_grid: bool = False
    report: Path | None = None

    def keywords(self) -> dict[str, Any]:
        """The keywords every inference pipeline takes: all but the report, which the command writes."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "report"}


F = TypeVar("F", bound=Callable[..., Any])


def grouped(**groups: Any) -> Callable[[F], F]:
    """Add the fields of option-group dataclasses to a command and pass each group as one value.

    ``@grouped(engine=Engine(), tiling=Tiling())`` adds ``--device``, ``--batch-size``, ... and
    ``--tile-size``, ... (defaults from the given instances, help under one panel per group) and calls
    the command with ``engine=Engine(...)`` and ``tiling=Tiling(...)`` built from the parsed values: as the
    parameters of those names, or in its ``**groups`` where it only hands them on. A group given as its class
    (``prediction=Prediction``) takes the class defaults, and its fields without one are required options.
    """

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        hints = get_type_hints(fn, include_extras=True)
        params = [
            p.replace(annotation=hints[p.name])
            for p in sig.parameters.values()
            if p.name not in groups and p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        fields: dict[str, list[str]] = {}
        for group, default in groups.items():
            fields[group] = []
            for f in dataclasses.fields(default):
                option = FIELD_OPTIONS.get(f"{_group_class(default).__name__}.{f.name}", FIELD_OPTIONS[f.name])
                base, info = option.__origin__, copy.copy(option.__metadata__[0])
                info.rich_help_panel = group.replace("_", " ").capitalize()
                ann = Annotated[base, info]
                kind, value = inspect.Parameter.KEYWORD_ONLY, getattr(default, f.name, inspect.Parameter.empty)
                params.append(inspect.Parameter(f.name, kind, default=value, annotation=ann))
                fields[group].append(f.name)

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            for group, default in groups.items():
                kwargs[group] = _group_class(default)(**{name: kwargs.pop(name) for name in fields[group]})
            return fn(**kwargs)

        del command.__wrapped__  # Typer must read the new signature, not the wrapped one
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate


def _group_class(group: Any) -> type:
    """The dataclass of a :func:`grouped` group, given as an instance or as the class itself."""
    return group if isinstance(group, type) else type(group)
