"""Training: torchgeo datasets and the user's own rasters, Lightning, and a bundle at the end.

``train(dataset="potsdam", root=...)`` trains on a torchgeo dataset through its datamodule;
``train(dataset="custom", images=..., labels=...)`` (segmentation) or ``before/after/labels`` (change)
trains on the user's GeoTIFFs through torchgeo's geospatial datasets and samplers, with a spatial
train/validation split. The result is a bundle that ``segment`` / ``change`` / ``classify`` use as is,
the best checkpoint, and a CSV of per-epoch metrics.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import inspect
import io
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import rasterio
import shapely
import torch
from torch.utils.data import DataLoader

from lemevit_geo.bundle import CHANGE_CLASSES, DEFAULT_TILE, BundleConfig, save_bundle
from lemevit_geo.choices import Arch, Precision, Task
from lemevit_geo.device import cpu_supports_bf16
from lemevit_geo.errors import InputError, LemevitError
from lemevit_geo.models.factory import head_options
from lemevit_geo.outputs import check_output
from lemevit_geo.pipelines.tasks import TASK_MODULES


@dataclass(frozen=True)
class DatasetInfo:
    """A torchgeo dataset the ``train`` command knows."""

    task: Task
    datamodule: str  # class name in torchgeo.datamodules ("" when we build the datamodule)
    dataset: str  # class name in torchgeo.datasets
    expects: str  # what must be in --root
    url: str
    gsd: float | None = None
    ignore_index: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


DATASETS: dict[str, DatasetInfo] = {
    "potsdam": DatasetInfo(Task.segment, "Potsdam2DDataModule", "Potsdam2D",
                           "4_Ortho_RGBIR/ and 5_Labels_for_participants/ (or 4_Ortho_RGBIR.zip, 5_Labels_for_participants.zip)",  # noqa: E501
                           "https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx", 0.05),
    "vaihingen": DatasetInfo(Task.segment, "Vaihingen2DDataModule", "Vaihingen2D",
                             "top/ and gts_for_participants/ (or ISPRS_semantic_labeling_Vaihingen.zip and "
                             "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip)",
                             "https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-vaihingen.aspx",
                             0.09),
    "loveda": DatasetInfo(Task.segment, "LoveDADataModule", "LoveDA",
                          "Train/, Val/ and Test/ with Rural/ and Urban/ images_png/ and masks_png/",
                          "https://zenodo.org/record/5706578", 0.3, ignore_index=0),
    "levircd": DatasetInfo(Task.change, "LEVIRCDDataModule", "LEVIRCD",
                           "train/, val/ and test/ with A/, B/ and label/ PNGs (or train.zip, val.zip, test.zip)",
                           "https://justchenhao.github.io/LEVIR/", 0.5),
    "oscd": DatasetInfo(Task.change, "OSCDDataModule", "OSCD",
                        "Onera Satellite Change Detection dataset - Images/, - Train Labels/, - Test Labels/",
                        "https://rcdaudt.github.io/oscd/", 10.0),
    "ucmerced": DatasetInfo(Task.classify, "UCMercedDataModule", "UCMerced",
                            "UCMerced_LandUse/Images/<class>/*.tif and uc_merced-{train,val,test}.txt",
                            "http://weegee.vision.ucmerced.edu/datasets/landuse.html", 0.3),
    "resisc45": DatasetInfo(Task.classify, "RESISC45DataModule", "RESISC45",
                            "NWPU-RESISC45/<class>/*.jpg and resisc45-{train,val,test}.txt",
                            "https://gcheng-nwpu.github.io/#Datasets"),
    "millionaid": DatasetInfo(Task.classify, "", "MillionAID", "train/ and test/ with the class folder tree",
                              "https://captain-whu.github.io/DiRS/", kwargs={"task": "multi-class"}),
}  # fmt: skip
DETECTION_DATASETS = {"dota"}


@dataclass
class TrainData:
    """A datamodule and what the bundle needs to know about its data."""

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


# -- torchgeo datasets -----------------------------------------------------------------------------


class FrameMask:
    """Run a kornia augmentation on change batches whose mask has one frame and image two.

    kornia's video augmentations want as many mask frames as image frames; the mask is repeated over
    the dates for the augmentation and the first frame is kept.
    """

    def __init__(self, aug: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.aug = aug

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        image, mask = batch["image"], batch.get("mask")
        if mask is None or image.ndim < 4 or mask.ndim != image.ndim - 1:
            return self.aug(batch)
        frames = image.shape[-4]
        batch = {**batch, "mask": mask.expand(*mask.shape[:-3], frames, *mask.shape[-2:])}
        out = self.aug(batch)
        out["mask"] = out["mask"][..., :1, :, :]
        return out


def _wrap_dataset_transforms(dm: Any) -> None:
    """Apply :class:`FrameMask` to transforms that a change datamodule put inside its datasets (OSCD)."""
    for attr in ("dataset", "train_dataset", "val_dataset", "test_dataset"):
        ds = getattr(dm, attr, None)
        inner = getattr(ds, "dataset", ds)
        transforms = getattr(inner, "transforms", None)
        if transforms is not None and not isinstance(transforms, FrameMask):
            inner.transforms = FrameMask(transforms)


def _values(t: Any, n: int) -> list[float]:
    v = torch.as_tensor(t, dtype=torch.float64).flatten().tolist()
    return v * n if len(v) == 1 else v


def torchgeo_data(name: str, root: Path, batch_size: int, tile_size: int, num_workers: int) -> TrainData:
    """The torchgeo datamodule of ``name`` on ``root``, set up, with classes, bands and statistics."""
    import torchgeo.datamodules as tdm
    import torchgeo.datasets as tds
    from torchgeo.datasets.errors import DatasetNotFoundError

    info = DATASETS[name]
    if not root.is_dir():
        raise InputError(
            f"{name}: dataset root {root} does not exist; torchgeo expects {info.expects} (from {info.url})"
        )
    kwargs: dict[str, Any] = dict(batch_size=batch_size, num_workers=num_workers, root=str(root), **info.kwargs)
    if name == "millionaid":
        dm: Any = MillionAIDDataModule(tile_size=tile_size, **kwargs)
    else:
        cls = getattr(tdm, info.datamodule)
        if "patch_size" in inspect.signature(cls.__init__).parameters:  # datamodules that crop patches
            kwargs["patch_size"] = tile_size
        dm = cls(**kwargs)
    try:
        dm.setup("fit")
    except DatasetNotFoundError as exc:
        raise InputError(
            f"{name}: dataset not found or incomplete in {root}: torchgeo expects {info.expects} "
            f"(get it from {info.url}); torchgeo says: {str(exc).splitlines()[0]}"
        ) from exc
    if info.task == Task.change:
        for attr in ("aug", "train_aug", "val_aug", "test_aug"):
            if getattr(dm, attr, None) is not None:
                setattr(dm, attr, FrameMask(getattr(dm, attr)))
        _wrap_dataset_transforms(dm)
        setup = dm.setup

        def setup_and_wrap(stage: str) -> None:  # Lightning sets the datamodule up again
            setup(stage)
            _wrap_dataset_transforms(dm)

        dm.setup = setup_and_wrap
    dataset = getattr(dm, "train_dataset", None) or getattr(dm, "dataset", None)
    inner = getattr(dataset, "dataset", dataset)
    if info.task == Task.change:
        classes = list(CHANGE_CLASSES)
    else:
        classes = list(getattr(inner, "classes", None) or getattr(tds, info.dataset).classes)
    sample = inner[0]
    image = sample["image"]
    bands = image.shape[-3]
    return TrainData(dm, info.task, [str(c) for c in classes], bands, _values(dm.mean, bands), _values(dm.std, bands),
                     info.gsd, info.ignore_index)  # fmt: skip


class MillionAIDDataModule(L.LightningDataModule):
    """MillionAID scene classification (torchgeo has the dataset but no datamodule): images resized to
    ``tile_size``; its ``test`` split serves for validation."""

    def __init__(self, root: str, batch_size: int, num_workers: int, tile_size: int, task: str = "multi-class") -> None:
        super().__init__()
        self.root, self.batch_size, self.num_workers, self.tile_size, self.task = (
            root, batch_size, num_workers, tile_size, task)  # fmt: skip
        self.mean, self.std = torch.tensor(0.0), torch.tensor(255.0)

    def _transform(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"].float()[None]
        image = torch.nn.functional.interpolate(image, size=(self.tile_size, self.tile_size), mode="bilinear")
        return {"image": image[0], "label": sample["label"].reshape(()).long()}

    def setup(self, stage: str) -> None:
        from torchgeo.datasets import MillionAID

        self.train_dataset = MillionAID(self.root, task=self.task, split="train", transforms=self._transform)
        self.val_dataset = MillionAID(self.root, task=self.task, split="test", transforms=self._transform)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, self.batch_size, num_workers=self.num_workers)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        batch["image"] = (batch["image"] - self.mean) / self.std
        return batch


# -- the user's own rasters ------------------------------------------------------------------------


def expand_paths(spec: str | Path | Sequence[str | Path], what: str) -> list[str]:
    """Files named by a path, a glob, or a list of them."""
    specs = [spec] if isinstance(spec, str | Path) else list(spec)
    files: list[str] = []
    for s in specs:
        matches = sorted(glob.glob(str(s))) if any(ch in str(s) for ch in "*?[") else [str(s)]
        files.extend(m for m in matches if Path(m).is_file())
    if not files:
        raise InputError(f"no {what} files match {spec}")
    return files


def _raster_dataset(files: list[str], is_image: bool) -> Any:
    from torchgeo.datasets import RasterDataset

    cls = type("Images" if is_image else "Labels", (RasterDataset,), {"is_image": is_image, "filename_glob": "*"})
    return cls(paths=files)


@dataclass
class LabelInfo:
    """What label rasters hold: class names, colours (from their colour table), nodata, pixel counts."""

    classes: list[str]
    colors: list[tuple[int, int, int]]
    nodata: float | None
    counts: np.ndarray


def _label_info(files: list[str], given: Sequence[str] | None) -> LabelInfo:
    """Read label rasters block by block: class names from --classes, our CLASS_n tags, or the values found."""
    counts = np.zeros(65536, dtype=np.int64)
    nodata = None
    tags: dict[int, str] = {}
    cmap: dict[int, tuple[int, ...]] = {}
    for f in files:
        with rasterio.open(f) as src:
            if src.dtypes[0] not in ("uint8", "uint16", "int16", "int32", "uint32"):
                raise InputError(f"{f}: label rasters hold integer class values, not {src.dtypes[0]}")
            nodata = src.nodata if src.nodata is not None else nodata
            tags.update({int(k[6:]): v for k, v in src.tags(1).items() if k.startswith("CLASS_") and k[6:].isdigit()})
            try:
                cmap.update(src.colormap(1))
            except ValueError:  # no colour table
                pass
            for _, win in src.block_windows(1):
                arr = src.read(1, window=win).ravel()
                arr = arr[arr != src.nodata] if src.nodata is not None else arr
                counts += np.bincount(arr.astype(np.int64), minlength=65536)[:65536]
    top = int(np.nonzero(counts)[0].max()) if counts.any() else 0
    if given:
        if top >= len(given):
            raise InputError(f"labels hold class value {top} but --classes names only {len(given)} classes")
        names = list(given)
    else:
        names = [tags.get(i, f"class_{i}") for i in range(max(top + 1, 2))]
    colors = [tuple(cmap[i][:3]) for i in range(len(names))] if all(i in cmap for i in range(len(names))) else []
    return LabelInfo(names, colors, nodata, counts[: len(names)])  # type: ignore[arg-type]


def _vector_labels(
    path: str, column: str, res: float, out_dir: Path, given: Sequence[str] | None
) -> tuple[Any, list[str]]:
    """A torchgeo VectorDataset whose burnt values are class ids + 1 (0 = unlabelled)."""
    import geopandas as gpd
    from torchgeo.datasets import VectorDataset

    gdf = gpd.read_file(path)
    if column not in gdf.columns:
        raise InputError(f"{path} has no column {column!r} (columns: {', '.join(map(str, gdf.columns))})")
    names = [str(v) for v in sorted(gdf[column].dropna().unique(), key=str)] if not given else list(given)
    lookup = {n: i + 1 for i, n in enumerate(names)}
    gdf["_class"] = gdf[column].astype(str).map(lookup)
    if gdf["_class"].isna().any():
        raise InputError(f"{path}: column {column!r} has values not in --classes")
    tmp = out_dir / "labels_burn.gpkg"
    gdf[["_class", "geometry"]].to_file(tmp, driver="GPKG")
    return VectorDataset(paths=[str(tmp)], res=res, label_name="_class"), names


class GeoDataModule(L.LightningDataModule):
    """Random tiles from a training region and a tile grid over a disjoint validation region.

    ``dataset`` is a torchgeo GeoDataset (images intersected with labels). Labels are shifted by
    ``label_offset`` (vector labels burn class + 1) and pixels equal to ``ignore`` after shifting are
    ignored. Images are normalised with ``mean``/``std``; change images are reshaped to (B, 2, C, H, W).
    """

    def __init__(
        self,
        dataset: Any,
        train_roi: shapely.Polygon,
        val_roi: shapely.Polygon,
        tile_size: int,
        batch_size: int,
        num_workers: int,
        length: int,
        dates: int = 1,
        label_offset: int = 0,
        scene_labels: bool = False,
    ) -> None:
        super().__init__()
        self.dataset, self.train_roi, self.val_roi = dataset, train_roi, val_roi
        self.tile_size, self.batch_size, self.num_workers, self.length = tile_size, batch_size, num_workers, length
        self.dates, self.label_offset, self.scene_labels = dates, label_offset, scene_labels
        self.mean = torch.zeros(1)
        self.std = torch.ones(1)

    def _loader(self, sampler: Any) -> DataLoader:
        from torchgeo.datasets import stack_samples

        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=stack_samples)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        from torchgeo.samplers import RandomGeoSampler

        return self._loader(RandomGeoSampler(self.dataset, self.tile_size, self.length, roi=self.train_roi))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_sampler())

    def val_sampler(self) -> Any:
        """A tile grid that covers the validation region and stays inside it (neighbours overlap as needed)."""
        from torchgeo.samplers import GridGeoSampler, Units

        res = self.dataset.res
        size = (self.tile_size * res[1], self.tile_size * res[0])
        probe = GridGeoSampler(self.dataset, size, size, roi=self.val_roi, units=Units.CRS)
        minx, miny, maxx, maxy = probe.index.total_bounds
        if maxx - minx < size[1] or maxy - miny < size[0]:
            raise InputError(
                "the validation region is smaller than one tile: raise --val-fraction or lower --tile-size"
            )  # noqa: E501

        def fit(extent: float, s: float) -> float:
            steps = math.ceil((extent - s) / s - 1e-9)
            return (extent - s) / steps if steps > 0 else s

        stride = (fit(maxy - miny, size[0]), fit(maxx - minx, size[1]))
        return GridGeoSampler(self.dataset, size, stride, roi=self.val_roi, units=Units.CRS)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        image = batch["image"].float()
        c = image.shape[1] // self.dates
        mean = self.mean.to(image.device).repeat(self.dates)[None, :, None, None]
        std = self.std.to(image.device).repeat(self.dates)[None, :, None, None]
        image = (image - mean) / std
        if self.dates > 1:
            image = image.reshape(image.shape[0], self.dates, c, *image.shape[-2:])
        mask = batch["mask"].long()
        if mask.ndim == 4:
            mask = mask[:, 0]
        if self.label_offset:
            mask = mask - self.label_offset
            mask[mask < 0] = IGNORE
        if self.scene_labels:  # scene classification: each tile's most frequent labelled class
            counts = torch.stack(
                [((mask == k) & (mask != IGNORE)).flatten(1).sum(1) for k in range(int(mask.max()) + 1)]
            )
            return {"image": image, "label": counts.argmax(0)}
        return {"image": image, "mask": mask[:, None] if self.dates > 1 else mask}


IGNORE = 255


def spatial_split(bounds: tuple[float, float, float, float], val_fraction: float) -> dict[str, Any]:
    """Split a rectangle by area into disjoint training and validation strips along its longer side."""
    if not 0 < val_fraction < 1:
        raise InputError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    minx, miny, maxx, maxy = bounds
    if maxx - minx >= maxy - miny:
        cut = maxx - (maxx - minx) * val_fraction
        train, val = shapely.box(minx, miny, cut, maxy), shapely.box(cut, miny, maxx, maxy)
    else:
        cut = miny + (maxy - miny) * val_fraction
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


def _band_stats(dm: GeoDataModule, samples: int = 32) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of raw values over random training tiles."""
    from torchgeo.samplers import RandomGeoSampler

    sampler = RandomGeoSampler(dm.dataset, dm.tile_size, samples, roi=dm.train_roi)
    total = sq = None
    n = 0
    for query in sampler:
        image = dm.dataset[query]["image"].double()
        c = image.shape[0] // dm.dates
        image = image.reshape(dm.dates, c, -1).transpose(0, 1).reshape(c, -1)
        total = image.sum(1) if total is None else total + image.sum(1)
        sq = (image**2).sum(1) if sq is None else sq + (image**2).sum(1)
        n += image.shape[1]
    if not n:
        raise InputError("the training region is smaller than one tile: lower --tile-size or --val-fraction")
    mean = total / n
    std = (sq / n - mean**2).clamp(min=1e-6).sqrt()
    return mean.tolist(), std.tolist()


def custom_data(
    *,
    images: Any = None,
    before: Any = None,
    after: Any = None,
    labels: Any,
    label_column: str | None,
    classes: Sequence[str] | None,
    tile_size: int,
    batch_size: int,
    num_workers: int,
    val_fraction: float,
    length: int,
    work_dir: Path,
    scene_labels: bool = False,
) -> TrainData:
    """Training data from the user's rasters: images (or before/after) intersected with labels.

    With ``scene_labels`` the task is scene classification: each tile is labelled with its most
    frequent class.
    """
    change = before is not None or after is not None
    if change and (before is None or after is None or images is not None):
        raise InputError("change training takes --before, --after and --labels (and no --images)")
    if not change and images is None:
        raise InputError("--dataset custom needs --images and --labels (segmentation) or --before/--after/--labels")
    if labels is None:
        raise InputError("--dataset custom needs --labels (label rasters, or a vector file with --label-column)")
    image_files = expand_paths(before if change else images, "image")
    imgs = _raster_dataset(image_files, True)
    if change:
        imgs = imgs & _raster_dataset(expand_paths(after, "after-image"), True)
    label_files = expand_paths(labels, "label")
    offset = 0
    ignore = None
    colors: list[tuple[int, int, int]] = []
    class_weights: list[float] | None = None
    if Path(label_files[0]).suffix.lower() in (".gpkg", ".geojson", ".json", ".shp", ".parquet", ".fgb"):
        if not label_column:
            raise InputError("vector labels need --label-column naming the class column")
        lab, names = _vector_labels(label_files[0], label_column, imgs.res[0], work_dir, classes)
        offset, ignore = 1, IGNORE
    else:
        info = _label_info(label_files, classes if not change else (classes or CHANGE_CLASSES))
        names, colors = info.classes, info.colors
        lab = _raster_dataset(label_files, False)
        if info.nodata is not None:
            ignore = int(info.nodata)
        if change and info.counts[1:].sum():  # rare change pixels: weigh them up (capped)
            weight = float(np.clip(np.sqrt(info.counts[0] / max(info.counts[1:].sum(), 1)), 1.0, 20.0))
            class_weights = [1.0] + [weight] * (len(names) - 1)
    notes = io.StringIO()
    try:
        with contextlib.redirect_stdout(notes):  # torchgeo prints its reprojections; they go in the report
            dataset = imgs & lab
    except Exception as exc:  # torchgeo raises RuntimeError/ValueError for disjoint datasets
        raise InputError(f"the images and the labels do not overlap: {exc}") from exc
    xs, ys, _ = dataset.bounds
    split = spatial_split((xs.start, ys.start, xs.stop, ys.stop), val_fraction)
    dm = GeoDataModule(dataset, split["train"], split["val"], tile_size, batch_size, num_workers, length,
                       dates=2 if change else 1, label_offset=offset, scene_labels=scene_labels)  # fmt: skip
    mean, std = _band_stats(dm)
    dm.mean, dm.std = torch.tensor(mean), torch.tensor(std)
    bands = len(mean)
    with rasterio.open(image_files[0]) as src:
        gsd = abs(src.transform.a) if src.crs is not None and src.crs.is_projected else None
    aligned = [line.split(" from ")[0] for line in notes.getvalue().splitlines() if line.startswith("Converting")]
    report = {**split["report"], "crs": dataset.crs.to_string(), "labels_aligned": aligned}
    task = Task.change if change else Task.classify if scene_labels else Task.segment
    return TrainData(dm, task, names, bands, mean, std, gsd, ignore, report, colors, class_weights)


# -- training --------------------------------------------------------------------------------------


class EpochCSV(L.Callback):
    """Writes one row of metrics per epoch (after validation) to a CSV file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch}
        row.update({k: round(float(v), 6) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1})
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if trainer.is_global_zero:
            keys = sorted({k for r in self.rows for k in r}, key=lambda k: (k != "epoch", k))
            with open(self.path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.rows)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))


def lightning_precision(precision: Precision | str) -> str:
    """Lightning's precision string for ours (auto: bf16-mixed where the hardware runs bf16 fast)."""
    precision = Precision(precision)
    if precision == Precision.auto:
        if torch.cuda.is_available():
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "bf16-mixed" if cpu_supports_bf16() else "32-true"
    return {Precision.fp32: "32-true", Precision.bf16: "bf16-mixed", Precision.fp16: "16-mixed"}[precision]


def train(
    *,
    dataset: str,
    out: str | Path,
    root: str | Path | None = None,
    images: Any = None,
    labels: Any = None,
    before: Any = None,
    after: Any = None,
    label_column: str | None = None,
    classes: Sequence[str] | None = None,
    task: Task | str | None = None,
    arch: Arch | str = Arch.tiny,
    backbone_weights: str | Path | None = None,
    epochs: int = 10,
    batch_size: int = 8,
    lr: float = 1e-3,
    tile_size: int | None = None,
    num_workers: int = 0,
    precision: Precision | str = Precision.auto,
    devices: str = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.2,
    steps_per_epoch: int = 100,
    resume: bool = False,
    fast_dev_run: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model and write its bundle to ``out``; returns a summary."""
    start = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation noise
    if not progress:
        for logger in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(logger).setLevel(logging.WARNING)
    out = Path(out)
    name = dataset.lower()
    if name in DETECTION_DATASETS:
        raise LemevitError(f"{dataset}: object detection (DOTA) training comes with the detection release")
    if name != "custom" and name not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; choose one of custom, {', '.join(DATASETS)}")
    if not resume:
        check_output(out, overwrite)
    run_dir = out.with_name(out.stem + ".train")
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, workers=True, verbose=False)

    if name == "custom":
        wanted = Task(task) if task else Task.change if before is not None else Task.segment
        if wanted == Task.detect:
            raise LemevitError("object detection training comes with the detection release")
        tile = tile_size or DEFAULT_TILE[wanted]
        data = custom_data(images=images, before=before, after=after, labels=labels, label_column=label_column,
                           classes=classes, tile_size=tile, batch_size=batch_size, num_workers=num_workers,
                           val_fraction=val_fraction, length=steps_per_epoch * batch_size, work_dir=run_dir,
                           scene_labels=wanted == Task.classify)  # fmt: skip
        if data.task != wanted:
            raise InputError(f"--task {wanted.value} does not fit the data given (it makes a {data.task.value} model)")
    else:
        if root is None:
            raise InputError(f"--dataset {name} needs --root, the folder holding it ({DATASETS[name].expects})")
        tile = tile_size or DEFAULT_TILE[DATASETS[name].task]
        data = torchgeo_data(name, Path(root), batch_size, tile, num_workers)
    if tile % 32:
        raise InputError(f"--tile-size {tile} is not a multiple of 32")

    module_cls = TASK_MODULES[data.task.value]
    head = head_options(data.task.value)
    kwargs: dict[str, Any] = dict(arch=Arch(arch).value, in_channels=data.bands, num_classes=len(data.classes),
                                  backbone_weights=str(backbone_weights) if backbone_weights else None, head=head,
                                  lr=lr)  # fmt: skip
    if data.task != Task.classify:
        kwargs["ignore_index"] = data.ignore_index
    if data.class_weights:
        kwargs["class_weights"] = data.class_weights
    module = module_cls(**kwargs)

    monitor, mode = module_cls.monitor_metric
    ckpt_dir = run_dir / "checkpoints"
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode,
                                                     save_last=True, enable_version_counter=False)  # fmt: skip
    metrics_csv = run_dir / "metrics.csv"
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=lightning_precision(precision),  # type: ignore[arg-type]
        callbacks=[checkpoint, EpochCSV(metrics_csv)],
        logger=False,
        fast_dev_run=fast_dev_run,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
    )
    ckpt_path = None
    if resume:
        last = ckpt_dir / "last.ckpt"
        if not last.is_file():
            raise InputError(f"--resume: no checkpoint to continue from at {last}")
        ckpt_path = str(last)
    trainer.fit(module, datamodule=data.datamodule, ckpt_path=ckpt_path)

    best_path = checkpoint.best_model_path
    if best_path and Path(best_path).is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    config = BundleConfig(task=data.task, arch=Arch(arch), classes=data.classes, bands=data.bands, mean=data.mean,
                          std=data.std, colors=data.colors, tile_size=tile, gsd=data.gsd, head=head)  # fmt: skip
    if trainer.is_global_zero:
        save_bundle(out, module.model.cpu(), config)
    best = checkpoint.best_model_score
    return {
        "dataset": name,
        "task": data.task.value,
        "arch": Arch(arch).value,
        "classes": data.classes,
        "bands": data.bands,
        "normalisation": {"mean": [round(m, 4) for m in data.mean], "std": [round(s, 4) for s in data.std]},
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "monitor": monitor,
        "best": None if best is None else round(float(best), 4),
        "bundle": str(out),
        "best_checkpoint": best_path or None,
        "metrics_csv": str(metrics_csv) if metrics_csv.exists() else None,
        "split": data.split,
        "class_weights": data.class_weights,
        "seconds": round(time.perf_counter() - start, 1),
    }
