"""What ``train`` trains on: the torchgeo datasets it knows, and the user's own rasters and label files.

The datamodules themselves (and the datasets, crops and augmentations they read with) live in
:mod:`lemevit_geo.pipelines.training.datamodules`; this module chooses and configures them.

:func:`torchgeo_data` sets up a torchgeo datamodule on a dataset folder; :func:`custom_data` builds an
:class:`~lemevit_geo.pipelines.training.datamodules.OwnDataModule` from the user's images and label rasters (or
a vector file) with a spatial train/validation split and band statistics from the training region;
:func:`detection_data` does the same for oriented detection from the user's images and polygons.
All return a :class:`TrainData`: the datamodule plus what the bundle must record about the data.
"""

from __future__ import annotations

import contextlib
import glob
import inspect
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import pydantic
import rasterio
import shapely
import torch

from lemevit_geo.bundle import CHANGE_CLASSES
from lemevit_geo.choices import Task
from lemevit_geo.errors import InputError, LemevitError
from lemevit_geo.pipelines.geometry import largest_extent, overlap_for, pixel_boxes, to_pixels
from lemevit_geo.pipelines.training.compat import random_sampler
from lemevit_geo.pipelines.training.datamodules import (
    IGNORE,
    DOTADataModule,
    MillionAIDDataModule,
    OwnDataModule,
    RasterSource,
    TileAugmentation,
    wrap_change_augmentations,
)


@dataclass(frozen=True)
class DatasetInfo:
    """A torchgeo dataset the ``train`` command knows (a row of the package's ``datasets.json``).

    Attributes:
        task: What a model trained on it predicts.
        dataset: Class name in ``torchgeo.datasets``.
        expects: What must be in the dataset folder.
        url: Where to get it.
        gsd: Ground sample distance in metres, if known.
        ignore_index: Label value that losses and metrics ignore.
        kwargs: Extra arguments of the datamodule.
    """

    __pydantic_config__ = pydantic.ConfigDict(extra="forbid")

    task: Task
    dataset: str
    expects: str
    url: str
    gsd: float | None = None
    ignore_index: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def datamodule(self) -> str:
        """Class name of its datamodule: in ``torchgeo.datamodules``, or ours in :data:`OWN_DATAMODULES`."""
        return f"{self.dataset}DataModule"


#: The datamodules we build ourselves (torchgeo has none for these datasets), by class name.
OWN_DATAMODULES: dict[str, type[L.LightningDataModule]] = {
    "MillionAIDDataModule": MillionAIDDataModule,
    "DOTADataModule": DOTADataModule,
}


def _known_datasets() -> dict[str, DatasetInfo]:
    """The rows of the package's ``datasets.json``, validated field by field."""
    file = resources.files(__package__).joinpath("datasets.json")
    try:
        return pydantic.TypeAdapter(dict[str, DatasetInfo]).validate_json(file.read_bytes(), strict=True)
    except OSError as exc:
        raise LemevitError(f"{file} cannot be read ({exc}); reinstall lemevit-geo") from exc
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise LemevitError(f"{file}: {where}: {error['msg']}; reinstall lemevit-geo") from exc


#: The torchgeo datasets ``train`` knows, by the name ``--dataset`` takes.
DATASETS: dict[str, DatasetInfo] = _known_datasets()


@dataclass
class TrainData:
    """A datamodule and what the bundle needs to know about its data.

    Attributes:
        datamodule: The Lightning datamodule.
        task: What the data trains.
        classes: Class names, in label order.
        bands: Input bands per image.
        mean: Per-band mean of the raw values.
        std: Per-band standard deviation of the raw values.
        gsd: Ground sample distance in metres, if known.
        ignore_index: Label value ignored by losses and metrics.
        split: Report of the spatial train/validation split (own data).
        colors: Class colours (from the labels' colour table), if any.
        class_weights: Loss weights per class, if the data calls for them.
        class_counts: Labelled pixels per class in random training tiles (own data).
        tile_size: Tile side the datamodule cuts (own data: the given one, or the default capped to fit).
        head: Head options the data calls for (e.g. DOTA's angle-free classes).
        overlap: Default tile overlap of the bundle (detection: from the largest object), if any.
    """

    datamodule: L.LightningDataModule
    task: Task
    classes: list[str]
    bands: int
    mean: list[float]
    std: list[float]
    gsd: float | None = None
    ignore_index: int | None = None
    split: dict[str, Any] | None = None
    colors: list[tuple[int, int, int]] = field(default_factory=list)
    class_weights: list[float] | None = None
    class_counts: list[int] | None = None
    tile_size: int | None = None
    head: dict[str, Any] = field(default_factory=dict)
    overlap: int | None = None


# -- torchgeo datasets -----------------------------------------------------------------------------


def _values(t: Any, n: int) -> list[float]:
    v = torch.as_tensor(t, dtype=torch.float64).flatten().tolist()
    return v * n if len(v) == 1 else v


def _datamodule(name: str, root: Path, batch_size: int, tile_size: int, num_workers: int) -> Any:
    """The torchgeo datamodule of ``name`` (or ours, from :data:`OWN_DATAMODULES`), not yet set up."""
    import torchgeo.datamodules as tdm

    info = DATASETS[name]
    kwargs: dict[str, Any] = dict(batch_size=batch_size, num_workers=num_workers, root=str(root), **info.kwargs)
    if info.datamodule in OWN_DATAMODULES:
        return OWN_DATAMODULES[info.datamodule](tile_size=tile_size, **kwargs)
    cls = getattr(tdm, info.datamodule)
    if "patch_size" in inspect.signature(cls.__init__).parameters:  # datamodules that crop patches
        kwargs["patch_size"] = tile_size
    return cls(checksum=False, **kwargs)  # torchgeo >= 0.10 hashes archives by default (0.8 did not)


def torchgeo_data(name: str, root: Path, batch_size: int, tile_size: int, num_workers: int) -> TrainData:
    """The torchgeo datamodule of ``name`` on ``root``, set up, with classes, bands and statistics."""
    import torchgeo.datasets as tds
    from torchgeo.datasets.errors import DatasetNotFoundError

    info = DATASETS[name]
    if not root.is_dir():
        raise InputError(
            f"{name}: dataset root {root} does not exist; torchgeo expects {info.expects} (from {info.url})"
        )
    dm = _datamodule(name, root, batch_size, tile_size, num_workers)
    try:
        dm.setup("fit")
    except DatasetNotFoundError as exc:
        raise InputError(
            f"{name}: dataset not found or incomplete in {root}: torchgeo expects {info.expects} "
            f"(get it from {info.url}); torchgeo says: {str(exc).splitlines()[0]}"
        ) from exc
    if info.task == Task.change:
        wrap_change_augmentations(dm)
    if info.task == Task.detect:
        return TrainData(
            datamodule=dm,
            task=Task.detect,
            classes=dm.classes,
            bands=3,
            mean=_values(dm.mean, 3),
            std=_values(dm.std, 3),
            head=dm.head,
            overlap=overlap_for(dm.extent, tile_size),
        )
    dataset = getattr(dm, "train_dataset", None) or getattr(dm, "dataset", None)
    inner = getattr(dataset, "dataset", dataset)
    if info.task == Task.change:
        classes = list(CHANGE_CLASSES)
    else:
        classes = list(getattr(inner, "classes", None) or getattr(tds, info.dataset).classes)
    bands = inner[0]["image"].shape[-3]
    return TrainData(
        datamodule=dm,
        task=info.task,
        classes=[str(c) for c in classes],
        bands=bands,
        mean=_values(dm.mean, bands),
        std=_values(dm.std, bands),
        gsd=info.gsd,
        ignore_index=info.ignore_index,
    )


# -- the user's own rasters ------------------------------------------------------------------------

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".parquet", ".fgb")


@dataclass(frozen=True)
class Loading:
    """How own data is split and served to training.

    Attributes:
        batch_size: Tiles per batch.
        num_workers: Data-loading worker processes.
        val_fraction: Share of the labelled region held out for validation (a spatial split).
        length: Training tiles drawn per epoch.
    """

    batch_size: int
    num_workers: int
    val_fraction: float
    length: int


def expand_paths(spec: str | Path | Sequence[str | Path], what: str) -> list[str]:
    """Files named by a path, a glob, or a list of them; a path named outright must be a file."""
    specs = [spec] if isinstance(spec, str | Path) else list(spec)
    files: list[str] = []
    for s in specs:
        if not any(ch in str(s) for ch in "*?[") and not Path(s).is_file():
            raise InputError(f"{what} {s} {'is not a file' if Path(s).exists() else 'does not exist'}")
        matches = sorted(glob.glob(str(s))) if any(ch in str(s) for ch in "*?[") else [str(s)]
        files.extend(m for m in matches if Path(m).is_file())
    if not files:
        raise InputError(f"no {what} files match {spec}")
    return files


def raster_dataset(files: list[str], is_image: bool) -> Any:
    """A torchgeo RasterDataset over exactly ``files`` (images, or labels when not ``is_image``)."""
    from torchgeo.datasets import RasterDataset

    cls = type("Images" if is_image else "Labels", (RasterDataset,), {"is_image": is_image, "filename_glob": "*"})
    return cls(paths=files)


@dataclass
class Labels:
    """Labels of own data, as torchgeo reads them.

    Attributes:
        dataset: A torchgeo RasterDataset or VectorDataset.
        classes: Class names, in label order.
        offset: Subtracted from the read values to give class ids (vector labels burn class + 1).
        ignore: Class id that losses and metrics ignore, if any.
        nodata: Label value of unlabelled pixels, read as ``ignore``.
        colors: Class colours from the labels' colour table, if complete.
        counts: Labelled pixels per class (label rasters only).
    """

    dataset: Any
    classes: list[str]
    offset: int = 0
    ignore: int | None = None
    nodata: int | None = None
    colors: list[tuple[int, int, int]] = field(default_factory=list)
    counts: np.ndarray | None = None


def _label_values(files: list[str]) -> tuple[dict[int, int], float | None, dict[int, str], dict[int, tuple]]:
    """Pixels per label value (nodata excluded), the nodata value, CLASS_n tags and colour tables of label rasters."""
    counts: Counter[int] = Counter()
    nodata = None
    tags: dict[int, str] = {}
    cmap: dict[int, tuple[int, ...]] = {}
    for f in files:
        with rasterio.open(f) as src:
            if src.dtypes[0] not in ("uint8", "uint16", "int8", "int16", "int32", "uint32"):
                raise InputError(f"{f}: label rasters hold integer class values, not {src.dtypes[0]}")
            nodata = src.nodata if src.nodata is not None else nodata
            tags.update({int(k[6:]): v for k, v in src.tags(1).items() if k.startswith("CLASS_") and k[6:].isdigit()})
            with contextlib.suppress(ValueError):  # no colour table
                cmap.update(src.colormap(1))
            for _, win in src.block_windows(1):
                arr = src.read(1, window=win).ravel()
                values, n = np.unique(arr[arr != src.nodata] if src.nodata is not None else arr, return_counts=True)
                counts.update(dict(zip(values.tolist(), n.tolist(), strict=True)))
    return dict(counts), nodata, tags, cmap


def raster_labels(files: list[str], given: Sequence[str] | None) -> Labels:
    """Label rasters, read block by block: class names from ``given``, our CLASS_n tags, or the values found.

    Class values run from 0 to 254; the rasters' nodata value (any value) marks unlabelled pixels.
    """
    counts, nodata, tags, cmap = _label_values(files)
    bad = [v for v in counts if not 0 <= v < IGNORE]
    if bad:
        raise InputError(
            f"labels hold the value {sorted(bad)[0]}: class values run from 0 to {IGNORE - 1}; mark unlabelled "
            "pixels with the label rasters' nodata value"
        )
    if not counts:
        raise InputError(f"the label rasters {', '.join(files)} hold no labelled pixel")
    top = max(counts)
    if given:
        if top >= len(given):
            raise InputError(f"labels hold class value {top} but `classes` names only {len(given)} classes")
        names = list(given)
    else:
        names = [tags.get(i, f"class_{i}") for i in range(max(top + 1, 2))]
    colors = [tuple(cmap[i][:3]) for i in range(len(names))] if all(i in cmap for i in range(len(names))) else []
    return Labels(
        dataset=raster_dataset(files, is_image=False),
        classes=names,
        ignore=None if nodata is None else IGNORE,
        nodata=None if nodata is None else int(nodata),
        colors=colors,  # type: ignore[arg-type]
        counts=np.array([counts.get(i, 0) for i in range(len(names))], dtype=np.int64),
    )


def vector_labels(path: str, column: str | None, res: float, work_dir: Path, given: Sequence[str] | None) -> Labels:
    """Polygons with a class column, burnt by torchgeo's VectorDataset as class id + 1 (0: unlabelled)."""
    import geopandas as gpd
    from torchgeo.datasets import VectorDataset

    if not column:
        raise InputError("vector labels need `label_column` naming the class column")
    gdf = gpd.read_file(path)
    if column not in gdf.columns:
        raise InputError(f"{path} has no column {column!r} (columns: {', '.join(map(str, gdf.columns))})")
    names = [str(v) for v in sorted(gdf[column].dropna().unique(), key=str)] if not given else list(given)
    lookup = {n: i + 1 for i, n in enumerate(names)}
    gdf["_class"] = gdf[column].astype(str).map(lookup)
    if gdf["_class"].isna().any():
        raise InputError(f"{path}: column {column!r} has values not in `classes`")
    burn = work_dir / "labels_burn.gpkg"
    gdf[["_class", "geometry"]].to_file(burn, driver="GPKG")
    dataset = VectorDataset(paths=[str(burn)], res=res, label_name="_class")
    return Labels(dataset=dataset, classes=names, offset=1, ignore=IGNORE)


def spatial_split(
    bounds: tuple[float, float, float, float], val_fraction: float, res: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Split a rectangle by area into disjoint training and validation strips along its longer side.

    With ``res`` the cut lies on the pixel grid that starts at the rectangle's corner (torchgeo >= 0.10 snaps
    the validation grid to it; a cut between pixels would let validation tiles reach into the training strip).
    """
    if not 0 < val_fraction < 1:
        raise InputError(f"`val_fraction` must be between 0 and 1, got {val_fraction}")
    minx, miny, maxx, maxy = bounds
    if maxx - minx >= maxy - miny:
        cut = maxx - (maxx - minx) * val_fraction
        cut = minx + round((cut - minx) / res[0]) * res[0] if res else cut
        train, val = shapely.box(minx, miny, cut, maxy), shapely.box(cut, miny, maxx, maxy)
    else:
        cut = miny + (maxy - miny) * val_fraction
        cut = miny + round((cut - miny) / res[1]) * res[1] if res else cut
        train, val = shapely.box(minx, cut, maxx, maxy), shapely.box(minx, miny, maxx, cut)
    return {
        "train": train,
        "val": val,
        "report": {
            "train_bounds": list(train.bounds),
            "val_bounds": list(val.bounds),
            "train_area": train.area,
            "val_area": val.area,
            "val_fraction": round(val.area / (train.area + val.area), 4),
            "shared_area": train.intersection(val).area,
        },
    }


def training_stats(dm: Any, classes: int, samples: int = 32) -> tuple[list[float], list[float], list[int]]:
    """Per-band mean and standard deviation of raw values, and labelled pixels per class (where samples have
    masks), over random training tiles of a datamodule (:class:`OwnDataModule`, :class:`ImageDataModule`)."""
    sampler = random_sampler(dm.dataset, dm.tile_size, samples, dm.train_roi)
    total = sq = None
    n = 0
    counts = torch.zeros(classes, dtype=torch.long)
    for query in sampler:
        sample = dm.dataset[query]
        image = sample["image"].double()
        c = image.shape[0] // dm.dates
        image = image.reshape(dm.dates, c, -1).transpose(0, 1).reshape(c, -1)
        total = image.sum(1) if total is None else total + image.sum(1)
        sq = (image**2).sum(1) if sq is None else sq + (image**2).sum(1)
        n += image.shape[1]
        if "mask" in sample:
            labels = dm.labels(sample["mask"][None]).flatten()
            counts += torch.bincount(labels[labels < classes], minlength=classes)
    if not n:
        raise InputError("the training region is smaller than one tile: lower `tile_size` or `val_fraction`")
    mean = total / n
    std = (sq / n - mean**2).clamp(min=1e-6).sqrt()
    return mean.tolist(), std.tolist(), counts.tolist()


def fit_tile(default: int, split: dict[str, Any], res: tuple[float, float]) -> int:
    """``default`` capped to the largest multiple of 32 pixels that fits both the training and the validation strip."""
    sides = []
    for part in ("train", "val"):
        minx, miny, maxx, maxy = split[part].bounds
        sides += [(maxx - minx) / res[0], (maxy - miny) / res[1]]
    fits = int(min(sides) + 1e-6) // 32 * 32
    if fits < 32:
        raise InputError(
            f"the validation strip is {min(sides):.0f} px wide, less than the smallest tile (32 px): raise "
            "`val_fraction` or use a larger scene"
        )
    return min(default, fits)


def _own_images(images: Any, before: Any, after: Any) -> tuple[Any, list[str], bool]:
    """The torchgeo dataset of the images (both dates intersected for change), their files, and whether change."""
    change = before is not None or after is not None
    if change and (before is None or after is None or images is not None):
        raise InputError("change training takes `before`, `after` and `labels` (and no `images`)")
    if not change and images is None:
        raise InputError("own data needs `images` and `labels` (segmentation) or `before`/`after`/`labels` (change)")
    files = expand_paths(before if change else images, "image")
    dataset = raster_dataset(files, is_image=True)
    if change:
        dataset = dataset & raster_dataset(expand_paths(after, "after-image"), is_image=True)
    return dataset, files, change


def _change_weights(labels: Labels) -> list[float] | None:
    """Weigh up rare change pixels (capped), from the label counts."""
    counts = labels.counts
    if counts is None or not counts[1:].sum():
        return None
    weight = float(np.clip(np.sqrt(counts[0] / max(counts[1:].sum(), 1)), 1.0, 20.0))
    return [1.0] + [weight] * (len(labels.classes) - 1)


def _intersect(images: Any, labels: Any) -> tuple[Any, list[str]]:
    """Images intersected with labels (torchgeo aligns CRS and resolution), and what was reprojected."""
    notes = io.StringIO()
    try:
        with contextlib.redirect_stdout(notes):  # torchgeo prints its reprojections; they go in the report
            dataset = images & labels
    except Exception as exc:  # torchgeo raises RuntimeError/ValueError for disjoint datasets
        raise InputError(f"the images and the labels do not overlap: {exc}") from exc
    aligned = [line.split(" from ")[0] for line in notes.getvalue().splitlines() if line.startswith("Converting")]
    return dataset, aligned


def _own_labels(
    labels: Any, label_column: str | None, classes: Sequence[str] | None, change: bool, res: float, work_dir: Path
) -> Labels:
    """The label rasters, or the vector file rasterised at the images' resolution ``res`` (change: the default
    change classes unless ``classes`` are given)."""
    label_files = expand_paths(labels, "label")
    if Path(label_files[0]).suffix.lower() in VECTOR_SUFFIXES:
        return vector_labels(label_files[0], label_column, res, work_dir, classes)
    return raster_labels(label_files, classes if not change else (classes or CHANGE_CLASSES))


class _OwnInputs(NamedTuple):
    """The user's images intersected with their labels."""

    dataset: Any  # torchgeo's IntersectionDataset
    labels: Labels
    aligned: list[str]  # what torchgeo reprojected
    image_files: list[str]
    change: bool  # two dates (before/after)


def _own_inputs(
    images: Any,
    before: Any,
    after: Any,
    labels: Any,
    label_column: str | None,
    classes: Sequence[str] | None,
    work_dir: Path,
) -> _OwnInputs:
    """Open the images (or both dates) and the labels and intersect them."""
    if labels is None:
        raise InputError("own data needs `labels` (label rasters, or a vector file with `label_column`)")
    imgs, image_files, change = _own_images(images, before, after)
    lab = _own_labels(labels, label_column, classes, change, imgs.res[0], work_dir)
    dataset, aligned = _intersect(imgs, lab.dataset)
    return _OwnInputs(dataset, lab, aligned, image_files, change)


def _ground_sample_distance(path: str) -> float | None:
    """The pixel width of an image in a projected CRS (None in a geographic CRS or without one)."""
    with rasterio.open(path) as src:
        return abs(src.transform.a) if src.crs is not None and src.crs.is_projected else None


def custom_data(
    *,
    images: Any = None,
    before: Any = None,
    after: Any = None,
    labels: Any,
    label_column: str | None,
    classes: Sequence[str] | None,
    tile_size: int | None,
    loading: Loading,
    work_dir: Path,
    scene_labels: bool = False,
    default_tile: int = 512,
    augmentation: TileAugmentation | None = None,
) -> TrainData:
    """Training data from the user's rasters: images (or before/after) intersected with labels.

    Without ``tile_size`` the tiles are ``default_tile`` capped to fit the training and validation strips. With
    ``scene_labels`` the task is scene classification: each tile is labelled with its most frequent class.
    ``augmentation`` applies to training batches.
    """
    dataset, lab, aligned, files, change = _own_inputs(images, before, after, labels, label_column, classes, work_dir)
    xs, ys, _ = dataset.bounds
    split = spatial_split((xs.start, ys.start, xs.stop, ys.stop), loading.val_fraction, dataset.res)
    tile = tile_size or fit_tile(default_tile, split, dataset.res)
    dm = OwnDataModule(
        dataset,
        split["train"],
        split["val"],
        tile_size=tile,
        batch_size=loading.batch_size,
        num_workers=loading.num_workers,
        length=loading.length,
        dates=2 if change else 1,
        label_offset=lab.offset,
        label_nodata=lab.nodata,
        scene_labels=scene_labels,
        augmentation=augmentation,
    )
    mean, std, counts = training_stats(dm, len(lab.classes))
    dm.mean, dm.std = torch.tensor(mean), torch.tensor(std)
    return TrainData(
        datamodule=dm,
        task=Task.change if change else Task.classify if scene_labels else Task.segment,
        classes=lab.classes,
        bands=len(mean),
        mean=mean,
        std=std,
        gsd=_ground_sample_distance(files[0]),
        ignore_index=IGNORE if scene_labels else lab.ignore,
        split={**split["report"], "crs": dataset.crs.to_string(), "labels_aligned": aligned},
        colors=lab.colors,
        class_weights=_change_weights(lab) if change else None,
        class_counts=counts,
        tile_size=tile,
    )


# -- the user's own rasters with polygons: oriented detection ----------------------------------------------


def _detection_images(files: list[str]) -> list[dict[str, Any]]:
    """Grid, size and band count of each image; all must share one CRS and band count."""
    infos = []
    for f in files:
        with rasterio.open(f) as src:
            if src.crs is None:
                raise InputError(f"{f} has no CRS: detection training places the label polygons by it")
            infos.append(
                {
                    "path": f,
                    "crs": src.crs,
                    "transform": src.transform,
                    "width": src.width,
                    "height": src.height,
                    "count": src.count,
                }
            )
    for info in infos[1:]:
        if info["crs"] != infos[0]["crs"] or info["count"] != infos[0]["count"]:
            raise InputError(
                f"detection training images must share one CRS and band count: "
                f"{infos[0]['path']} and {info['path']} differ"
            )
    return infos


def _pixel_region(info: dict[str, Any], roi: shapely.Polygon, tile: int) -> tuple[int, int, int, int] | None:
    """The whole-pixel rectangle of an image inside ``roi`` (map coordinates), if at least a tile wide."""
    part = to_pixels(np.array([roi]), info["transform"])[0]
    x0, y0, x1, y1 = part.bounds
    x0, y0 = max(0, math.ceil(x0 - 1e-6)), max(0, math.ceil(y0 - 1e-6))
    x1, y1 = min(info["width"], math.floor(x1 + 1e-6)), min(info["height"], math.floor(y1 + 1e-6))
    return (x0, y0, x1, y1) if x1 - x0 >= tile and y1 - y0 >= tile else None


def _split_sources(
    infos: list[dict[str, Any]], objects: list[tuple[np.ndarray, np.ndarray]], split: dict[str, Any], tile: int
) -> dict[str, list[RasterSource]]:
    """Training and validation sources: each image's share of each region (when at least a tile wide)."""
    out: dict[str, list[RasterSource]] = {"train": [], "val": []}
    for part in ("train", "val"):
        for info, (boxes, labels) in zip(infos, objects, strict=True):
            region = _pixel_region(info, split[part], tile)
            if region is not None:
                out[part].append(RasterSource(info["path"], info["height"], info["width"], region, boxes, labels))
        if not out[part]:
            raise InputError(
                f"the {'training' if part == 'train' else 'validation'} region is smaller than one tile: "
                f"lower `tile_size` or change `val_fraction`"
            )
    return out


def _crop_stats(sources: list[RasterSource], tile: int, samples: int = 32) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of raw values over random training crops (nodata left out)."""
    rng = np.random.default_rng(0)
    total = sq = n = 0.0
    for _ in range(samples):
        s = sources[int(rng.integers(len(sources)))]
        x0, y0, x1, y1 = s.region
        arr = s.read(int(rng.integers(x0, x1 - tile + 1)), int(rng.integers(y0, y1 - tile + 1)), tile).astype(
            np.float64
        )
        total, sq, n = total + np.nansum(arr, (1, 2)), sq + np.nansum(arr**2, (1, 2)), n + np.isfinite(arr).sum((1, 2))
    mean = total / np.maximum(n, 1)
    std = np.sqrt(np.maximum(sq / np.maximum(n, 1) - mean**2, 1e-6))
    return mean.tolist(), std.tolist()


def _objects(polys: Any, infos: list[dict[str, Any]], names: list[str]) -> tuple[list, list, np.ndarray]:
    """Per image: the boxes and labels of the polygons that meet it, and its footprint; which polygons met one."""
    objects, footprints, found = [], [], np.zeros(len(polys), dtype=bool)
    for info in infos:
        t, w, h = info["transform"], info["width"], info["height"]
        footprint = shapely.Polygon([t * c for c in ((0, 0), (w, 0), (w, h), (0, h))])
        inside = polys.intersects(footprint).to_numpy()
        labels = np.array([names.index(c) for c in polys["class"][inside]], dtype=np.int64)
        objects.append((pixel_boxes(polys.geometry.values[inside], t), labels))
        footprints.append(footprint)
        found |= inside
    return objects, footprints, found


#: Objects shorter than this (px, longer side) are small: the detector gets the stride-4 level (P2) for them.
SMALL_OBJECT = 16.0
#: ... when at least this share of the objects is small.
SMALL_SHARE = 0.25


def small_object_head(boxes: Sequence[np.ndarray]) -> dict[str, Any]:
    """Head options the objects call for: the stride-4 level when many are small (measured on the demo's
    detector: ``benchmarks/README.md``, "Detections usable with the defaults")."""
    sides = np.concatenate([b[:, 2:4].max(1) for b in boxes if len(b)] or [np.zeros(0)])
    return {"use_p2": True} if len(sides) and (sides < SMALL_OBJECT).mean() >= SMALL_SHARE else {}


def _object_classes(polys: Any, classes: Sequence[str] | None, label_file: Path) -> list[str]:
    """The class names of object labels ``polys``: ``classes`` (every label's class among them), else the
    labels' classes, sorted."""
    names = list(classes) if classes else sorted(set(polys["class"]))
    unknown = sorted(set(polys["class"]) - set(names))
    if unknown:
        raise InputError(f"{label_file} has classes not in `classes`: {', '.join(unknown)}")
    return names


def detection_data(
    *,
    images: Any,
    labels: Any,
    label_column: str | None,
    classes: Sequence[str] | None,
    tile_size: int | None,
    loading: Loading,
    augment: bool = True,
    default_tile: int = 1024,
    point_size: float | None = None,
) -> TrainData:
    """Oriented-detection training data from the user's images and labelled polygons (any CRS: reprojected).

    Each polygon becomes its smallest rotated rectangle in the pixels of the image it lies in; each point a square
    of side ``point_size`` (map units of the images' CRS); lines and empty geometries are counted and skipped
    with one warning. Training crops are drawn at random from the training region (flipped and turned by quarter
    turns, boxes with them, with ``augment``), validation crops cover the validation region (the same spatial
    split as for segmentation); a box that lies less than 70 % in a crop is ignored there. Without ``tile_size``
    the crops are ``default_tile`` capped to fit the training and the validation strip (as for segmentation), so
    any scene a few tiles large trains with the defaults.
    """
    from lemevit_geo.pipelines.training.datamodules import DetectionCrops, DetectionDataModule
    from lemevit_geo.vector import read_polygons

    infos = _detection_images(expand_paths(images, "image"))
    label_file = expand_paths(labels, "label")[0]
    polys = read_polygons(label_file, label_column, crs=infos[0]["crs"], point_size=point_size, skip_other=True)
    names = _object_classes(polys, classes, label_file)
    objects, footprints, found = _objects(polys, infos, names)
    if not found.any():
        raise InputError(f"{label_file}: none of its {len(polys)} polygons lie in the images ({infos[0]['crs']})")
    split = spatial_split(shapely.union_all(footprints).bounds, loading.val_fraction)
    res = (abs(infos[0]["transform"].a), abs(infos[0]["transform"].e))
    tile_size = tile_size or fit_tile(default_tile, split, res)
    sources = _split_sources(infos, objects, split, tile_size)
    mean, std = _crop_stats(sources["train"], tile_size)
    train = DetectionCrops(sources["train"], tile_size, mean, std, length=loading.length, augment=augment)
    val = DetectionCrops(sources["val"], tile_size, mean, std, grid=True)
    report = {"crs": infos[0]["crs"].to_string(), "objects": int(found.sum()), "val_crops": len(val)}
    report["repaired_polygons"] = polys.attrs.get("repaired", 0)
    return TrainData(
        datamodule=DetectionDataModule(loading.batch_size, loading.num_workers, train, val),
        task=Task.detect,
        classes=names,
        bands=infos[0]["count"],
        mean=mean,
        std=std,
        gsd=abs(infos[0]["transform"].a) if infos[0]["crs"].is_projected else None,
        split={**split["report"], **report},
        overlap=overlap_for(largest_extent([b for b, _ in objects]), tile_size),
        tile_size=tile_size,
        head=small_object_head([b for b, _ in objects]),
    )
