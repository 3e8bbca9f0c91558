"""Option groups shared by the command line and the pipelines, each default defined once.

The CLI builds its options from these dataclasses (:mod:`lemevit_geo.options`), and the pipelines take
them as keyword arguments, so a default lives here and nowhere else. The module is light (no torch, no
rasterio) so ``--help`` stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lemevit_geo.choices import Arch, Compile, Precision, Schedule, Stitch, Task
from lemevit_geo.errors import InputError


@dataclass(frozen=True)
class Engine:
    """Where and how tiles run through the model.

    Attributes:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: Compute precision (``auto``: bf16/fp16 where the device runs it fast).
        batch_size: Tiles per model call (at most a tile row: batches never span rows); ``auto``: the largest
            batch that fits the GPU's memory at the tile size (probed), or about four 512 px tiles on the CPU.
        threads: Background reader threads; ``auto``: 2 on the CPU, with a GPU the cores less two (2 to 8).
        compile: ``torch.compile`` the model (``auto``: on CUDA, where it pays; eager on the CPU).
    """

    device: str = "auto"
    precision: Precision = Precision.auto
    batch_size: int | str = 4
    threads: int | str = "auto"
    compile: Compile = Compile.auto

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "compile", Compile(self.compile))
        for name in ("batch_size", "threads"):
            value = getattr(self, name)
            if value == "auto":
                continue
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise InputError(f"`{name}` must be a number or auto, got {value!r}") from None
            if number < 1:
                raise InputError(f"`{name}` must be at least 1, got {number}")
            object.__setattr__(self, name, number)


#: Scene classification runs many small tiles: larger batches.
CLASSIFY_ENGINE = Engine(batch_size=16)


@dataclass(frozen=True)
class Tiling:
    """How a scene is cut into overlapping tiles and put back together.

    Attributes:
        tile_size: Tile side in pixels (``None``: the bundle's tile size).
        overlap: Overlap of neighbouring tiles in pixels (``None``: an eighth of the tile).
        stitch: Seams by centre crops or by smooth blending of logits.
    """

    tile_size: int | None = None
    overlap: int | None = None
    stitch: Stitch = Stitch.blend

    def __post_init__(self) -> None:
        object.__setattr__(self, "stitch", Stitch(self.stitch))
        check_tile_size(self.tile_size)
        if self.overlap is not None and self.overlap < 0:
            raise InputError(f"`overlap` must be at least 0, got {self.overlap}")

    def resolve(self, bundle_tile: int, bundle_overlap: int | None = None) -> tuple[int, int]:
        """Tile size and overlap, with the bundle's tile size and overlap (else an eighth of the tile) as
        the defaults."""
        tile = bundle_tile if self.tile_size is None else self.tile_size
        default = tile // 8 if bundle_overlap is None else bundle_overlap
        overlap = default if self.overlap is None else self.overlap
        if overlap >= tile:
            raise InputError(f"`overlap` {overlap} must be less than the tile size {tile}")
        return tile, overlap


def check_tile_size(tile_size: int | None) -> None:
    """Refuse a tile size that is not a positive multiple of 32 (``None`` means the bundle's)."""
    if tile_size is None:
        return
    if tile_size <= 0 or tile_size % 32:
        near = 32 * max(1, round(tile_size / 32))
        raise InputError(f"`tile_size` {tile_size} is not a positive multiple of 32 (try {near})")


@dataclass(frozen=True)
class DenseOutputs:
    """Optional outputs of a dense run (``segment``, ``change``) besides the class raster.

    Attributes:
        probabilities: Per-class probabilities (uint8, 0..254) to write, if any.
        vector: Polygons of the class regions to write (.gpkg, .parquet, .geojson), if any.
        min_area: Drop polygons smaller than this (CRS units squared).
        simplify: Simplify polygons by this tolerance (CRS units), keeping shared edges.
        cog: Write the class raster as a Cloud Optimized GeoTIFF.
    """

    probabilities: Path | None = None
    vector: Path | None = None
    min_area: float = 0.0
    simplify: float = 0.0
    cog: bool = False

    def __post_init__(self) -> None:
        for name in ("min_area", "simplify"):
            value = getattr(self, name)
            if not value >= 0:  # also refuses NaN
                raise InputError(f"`{name}` must be at least 0, got {value}")
        for name in ("probabilities", "vector"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))


@dataclass(frozen=True)
class Detection:
    """How ``detect`` filters boxes; ``None`` takes the bundle's setting.

    Attributes:
        score_threshold: Minimum score of a box, for every class (default: the bundle's per-class threshold
            chosen on validation data; 0 keeps every box).
        iou_threshold: Rotated IoU above which the lower-scored of two boxes of a class is dropped (within a
            tile and across tile seams).
        max_detections: Boxes kept per tile (the best-scored).
        classes: Keep only boxes of these classes (names from the bundle).
        all_scores: Keep every box the detector reports, whatever its score (as ``score_threshold`` 0: for
            computing mAP).
    """

    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    classes: tuple[str, ...] | None = None
    all_scores: bool = False

    def __post_init__(self) -> None:
        if self.all_scores and self.score_threshold:
            raise InputError("`all_scores` keeps every box: give it or a `score_threshold`, not both")
        if self.score_threshold is not None and not 0 <= self.score_threshold < 1:
            raise InputError(f"`score_threshold` must be at least 0 and below 1, got {self.score_threshold}")
        if self.iou_threshold is not None and not 0 <= self.iou_threshold <= 1:
            raise InputError(f"`iou_threshold` must lie between 0 and 1, got {self.iou_threshold}")
        if self.max_detections is not None and self.max_detections < 1:
            raise InputError(f"`max_detections` must be at least 1, got {self.max_detections}")
        if self.classes is not None:
            if not self.classes:
                raise InputError("`classes` names no class")
            object.__setattr__(self, "classes", tuple(self.classes))


def check_recipe(recipe: Any, counts: Sequence[str], at_least_zero: Sequence[str], shares: Sequence[str]) -> None:
    """Refuse a recipe (:class:`Recipe`, :class:`PretrainRecipe`) whose ``counts`` are below 1, whose ``lr`` is
    not positive, whose ``at_least_zero`` fields are negative, or whose ``shares`` are outside [0, 1) (NaN
    fails every test)."""
    for name in counts:
        if getattr(recipe, name) < 1:
            raise InputError(f"`{name}` must be at least 1, got {getattr(recipe, name)}")
    if not recipe.lr > 0:
        raise InputError(f"`lr` must be positive, got {recipe.lr}")
    for name in at_least_zero:
        if not getattr(recipe, name) >= 0:  # also refuses NaN
            raise InputError(f"`{name}` must be at least 0, got {getattr(recipe, name)}")
    for name in shares:
        if not 0 <= getattr(recipe, name) < 1:
            raise InputError(f"`{name}` must be at least 0 and below 1, got {getattr(recipe, name)}")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained.

    The defaults were chosen on two real small scenes and the generated demo scene (``benchmarks/README.md``,
    "Small real scenes (issue 13)"): flips and quarter turns, AdamW with weight decay 0.05 and a warm-up +
    cosine schedule; the pixel branch and class balance stay options (the pixel branch cost the demo's
    texture classes 0.05 mIoU; class balance found buildings but cost overall accuracy).

    Attributes:
        epochs: Training epochs.
        steps_per_epoch: Batches per epoch on own data (torchgeo datasets: one pass over the data).
        batch_size: Tiles per training step.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay (not on norms, biases and meta tokens).
        schedule: ``cosine``: linear warm-up, then cosine decay to zero per step; ``plateau``: torchgeo's
            drop by 10x after ``patience`` epochs without improvement.
        warmup: Share of all steps spent warming the learning rate up (``cosine``).
        drop_path: Stochastic depth of the backbone (highest in the last block).
        decoder_channels: Width of the segmentation decoder (UPerNet).
        pixel_channels: Width of the full-resolution branch that carries each pixel's bands to the segmentation
            head next to the decoder (0: none, the plain UPerNet).
        class_balance: Loss weight per class ``(median frequency / frequency) ** class_balance`` from the
            training region's labels (0: plain cross-entropy; own data only).
        augment: Random flips and 90-degree rotations of training tiles (own data: the same for the image,
            both dates of a change pair and the mask; detection crops turn with their boxes). torchgeo datasets
            keep their datamodules' augmentations, so ``False`` is refused there.
        seed: Random seed of sampling, augmentation and initialisation.
    """

    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    schedule: Schedule = Schedule.cosine
    warmup: float = 0.05
    drop_path: float = 0.1
    decoder_channels: int = 256
    pixel_channels: int = 0
    class_balance: float = 0.0
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", Schedule(self.schedule))
        check_recipe(
            self,
            counts=("epochs", "steps_per_epoch", "batch_size", "decoder_channels"),
            at_least_zero=("weight_decay", "class_balance", "pixel_channels"),
            shares=("warmup", "drop_path"),
        )


@dataclass(frozen=True)
class PretrainRecipe:
    """How a backbone is pretrained without labels (``pretrain``).

    Attributes:
        epochs: Pretraining epochs.
        steps_per_epoch: Batches per epoch.
        batch_size: Tiles per step.
        lr: Peak learning rate (AdamW, linear warm-up then cosine decay).
        weight_decay: AdamW weight decay (not on norms, biases and meta tokens).
        warmup: Share of all steps spent warming the learning rate up.
        mask_ratio: Share of each tile's 16 x 16 px patches hidden from the backbone (``simmim``).
        seed: Random seed of sampling, masking, augmentation and initialisation.
    """

    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    mask_ratio: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        check_recipe(
            self,
            counts=("epochs", "steps_per_epoch", "batch_size"),
            at_least_zero=("weight_decay",),
            shares=("warmup", "mask_ratio"),
        )


@dataclass(frozen=True)
class Hardware:
    """Where training runs (passed to Lightning).

    Attributes:
        precision: Training precision (``auto``: bf16 mixed where the hardware runs it fast).
        accelerator: ``auto``, ``cpu`` or ``gpu``.
        devices: ``auto``, a number of devices, or a list of device indexes.
        num_nodes: Machines (multi-node DDP, started by torchrun or SLURM).
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        num_workers: Data loader processes.
    """

    precision: Precision = Precision.auto
    accelerator: str = "auto"
    devices: str | int | list[int] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision(self.precision))
        if self.num_nodes < 1 or self.num_workers < 0:
            raise InputError("`num_nodes` must be at least 1 and `num_workers` at least 0")


@dataclass(frozen=True)
class TrainSpec:
    """Everything ``train`` is asked to do, as one value from the command line to the training steps.

    Attributes:
        dataset: A torchgeo dataset name (``potsdam``, ...), or ``custom`` for own rasters (the default).
        out: The bundle to write.
        root: The folder holding a torchgeo dataset.
        images, labels, before, after: Own data: paths or globs (``labels``: rasters, or one vector file).
        label_column: Class column of vector labels.
        classes: Class names of own labels.
        task: Own data: ``classify`` trains scene labels, ``detect`` an oriented detector from polygons.
        arch: Backbone size.
        backbone_weights: Backbone to start from (``pretrain`` output or an official checkpoint).
        freeze_backbone: Train only the decoder and head.
        tile_size: Training tile side (``None``: the task's default).
        val_fraction: Share of own data's area kept for validation.
        recipe: How the model is trained.
        hardware: Where training runs.
        head: Head options that override the task's defaults.
        resume: Continue from the last checkpoint of ``out``.
        fast_dev_run: One batch of training and validation.
        overwrite: Replace an existing ``out``.
        baseline: Also score a per-pixel classifier on the same split.
        point_size: Own detection labels: points become squares of this side (map units).
    """

    dataset: str | None = None
    out: Path = Path("model.safetensors")
    root: Path | None = None
    images: str | Path | Sequence[str | Path] | None = None
    labels: str | Path | Sequence[str | Path] | None = None
    before: str | Path | Sequence[str | Path] | None = None
    after: str | Path | Sequence[str | Path] | None = None
    label_column: str | None = None
    classes: Sequence[str] | None = None
    task: Task | None = None
    arch: Arch = Arch.tiny
    backbone_weights: Path | None = None
    freeze_backbone: bool = False
    tile_size: int | None = None
    val_fraction: float = 0.2
    recipe: Recipe = Recipe()
    hardware: Hardware = Hardware()
    head: dict[str, Any] | None = None
    resume: bool = False
    fast_dev_run: bool = False
    overwrite: bool = False
    baseline: bool = False
    point_size: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", self._dataset_name())
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "arch", Arch(self.arch))
        if self.task is not None:
            object.__setattr__(self, "task", Task(self.task))
        check_tile_size(self.tile_size)

    def _dataset_name(self) -> str:
        """``dataset``, else ``custom`` (own data). Own data given with a torchgeo dataset would be ignored, so
        it is refused."""
        name = (self.dataset or "custom").lower()
        given = [f"`{flag}`" for flag in ("images", "labels", "before", "after") if getattr(self, flag)]
        if name != "custom" and given:
            raise InputError(
                f"{', '.join(given)} give own data, which `dataset` {name} does not read: leave out `dataset` to "
                f"train on own data, or leave out {', '.join(given)} to train on {name}"
            )
        return name

    @property
    def own(self) -> dict[str, Any]:
        """The own-data arguments (images, dates, labels, label column, class names)."""
        names = ("images", "before", "after", "labels", "label_column", "classes")
        return {name: getattr(self, name) for name in names}

    @property
    def inputs(self) -> list[str | Path]:
        """Every own input file given, which ``out`` must not be."""
        given = [self.images, self.labels, self.before, self.after]
        return [p for g in given if g is not None for p in ([g] if isinstance(g, str | Path) else g)]


#: ``--executor`` values: ``inline``, ``ray``, ``ray://HOST:PORT``, ``dask:local``, ``dask:local:N``, ``dask://HOST:PORT``.
EXECUTOR = re.compile(r"^(inline|ray|ray://\S+|dask:local(:[1-9][0-9]*)?|dask://\S+)$")


@dataclass(frozen=True)
class ScaleOut:
    """How a job is split into parts and where the parts run (see ``pipelines/scaleout/driver.py``).

    Attributes:
        executor: Where parts run: ``inline`` (this process, one after the other), ``ray`` (the Ray cluster
            this machine belongs to, or a new local one), ``ray://HOST:PORT`` (Ray Client), ``dask:local`` or
            ``dask:local:N`` (a local Dask cluster of N single-threaded worker processes), ``dask://HOST:PORT``
            (a running Dask scheduler).
        parts: Strips of tile rows each scene is split into (``None``: one part per scene, or N with ``part``
            ``i/N`` and a single scene).
        part: Run only part ``i`` of ``N`` (0-based) of all the parts of all the scenes, and merge nothing
            (array jobs; ``lemevit-geo merge`` joins the parts).
        restart: Run every part again, ignoring finished ones.
        keep_parts: Keep the part files after a successful merge.
        connect_timeout: Seconds to wait for the Ray or Dask cluster at an executor's address.
    """

    executor: str = "inline"
    parts: int | None = None
    part: tuple[int, int] | None = None
    restart: bool = False
    keep_parts: bool = False
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not EXECUTOR.match(self.executor):
            raise InputError(
                f"`executor` must be inline, ray, ray://HOST:PORT, dask:local[:N] or dask://HOST:PORT, "
                f"got {self.executor!r}"
            )
        if self.parts is not None and self.parts < 1:
            raise InputError(f"`parts` must be at least 1, got {self.parts}")
        if not self.connect_timeout > 0:
            raise InputError(f"`connect_timeout` must be above 0 seconds, got {self.connect_timeout}")
        if self.part is not None:
            i, n = self.part
            if not 0 <= i < n:
                raise InputError(f"`part` {i}/{n}: the part index runs from 0 to {n - 1}")
            object.__setattr__(self, "part", (int(i), int(n)))

    @property
    def used(self) -> bool:
        """Whether any scale-out option differs from the single-process default."""
        return self != ScaleOut()


@dataclass(frozen=True)
class Sources:
    """Where the inputs come from and which area of them is read (see :mod:`lemevit_geo.inputs`).

    Attributes:
        bbox: Process only this area ``(minx, miny, maxx, maxy)`` of each scene, on the scene's own grid: the
            pixels the area touches.
        bbox_crs: The CRS of ``bbox`` (and of a STAC search's area): ``EPSG:4326`` is longitude/latitude.
        assets: The STAC Item assets to stack, in band order (default: by their common names).
        resolution: The pixel size of a stacked STAC Item, in its CRS's units (default: the finest asset's).
        stac: A STAC API (or static catalogue) to search: the images are then item ids or datetime ranges,
            or none to take every item ``collection``, ``bbox``, ``datetime`` and ``query`` find.
        collection: The collections to search, comma-separated.
        datetime: A datetime or range to search (``2024-06-01/2024-06-30``).
        query: Property filters of the search (``eo:cloud_cover<10``), comma-separated.
        sign: Sign hrefs before reading them: ``planetary-computer`` (SAS tokens for Azure Blob Storage).
    """

    bbox: tuple[float, ...] | None = None
    bbox_crs: str = "EPSG:4326"
    assets: tuple[str, ...] | None = None
    resolution: float | None = None
    stac: str | None = None
    collection: tuple[str, ...] | None = None
    datetime: str | None = None
    query: tuple[str, ...] | None = None
    sign: str | None = None

    def resolve(self, images: list[str] | None, count: int | None = None) -> list[str]:
        """The inputs of a command: ``images`` (or what the search finds), each with the area and assets
        options. ``count``: the number of inputs the command takes (two for ``change``), if fixed."""
        from lemevit_geo.inputs import with_options

        if self.stac:
            from lemevit_geo.stac import search_inputs

            images = search_inputs(self, images or [], count)
        elif not images:
            raise InputError("give the images to read, or a STAC catalogue to search with `stac`")
        options = dict(bbox_crs=self.bbox_crs, assets=self.assets, resolution=self.resolution, sign=self.sign)
        return [with_options(str(i), bbox=self.bbox, **options) for i in images]
