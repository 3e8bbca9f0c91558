"""Lightning datamodules torchgeo does not have: the user's own rasters, MillionAID, and oriented-box
detection crops (own rasters with polygons, and DOTA read through torchgeo's dataset). Which one a run uses,
and with what, is decided in :mod:`lemevit_geo.pipelines.training.train_data`.

Also :class:`TileAugmentation` (kornia) for own data, and :class:`FrameMask`, which lets torchgeo's change
datamodules run their kornia augmentations on two-date images with a one-frame mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import lightning as L
import numpy as np
import shapely
import torch
from torch.utils.data import DataLoader, Dataset

from lemevit_geo.errors import InputError
from lemevit_geo.pipelines.geometry import box_polygons, rectangle_boxes
from lemevit_geo.pipelines.training.compat import grid_sampler, random_sampler

#: Label value ignored by losses and metrics of own data.
IGNORE = 255


class TileAugmentation(torch.nn.Module):
    """Random flips and 90-degree rotations (kornia) of normalised training batches, drawn once per tile and
    applied alike to the image, every date of a change pair and the mask (nearest neighbour).

    Zoom and per-band brightness/contrast were options once (``--scale-jitter``, ``--band-jitter``) and were
    removed: on the real scenes of ``benchmarks/realdata.py`` they lowered the test mIoU (``benchmarks/README.md``).
    """

    def __init__(self) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.geometric = K.AugmentationSequential(
            K.RandomHorizontalFlip(),
            K.RandomVerticalFlip(),
            K.RandomRotation90(times=(0, 3), p=1.0),
            data_keys=["input", "mask"],
        )

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment images ``(B, C, H, W)`` or ``(B, dates, C, H, W)`` and class-id masks ``(B, H, W)`` (none:
        images only, and the mask returned is zeros)."""
        shape = image.shape
        flat = image.reshape(shape[0], -1, *shape[-2:])
        if mask is None:
            mask = torch.zeros(shape[0], *shape[-2:], dtype=torch.long, device=image.device)
        flat, moved = self.geometric(flat, mask.to(flat.dtype)[:, None])
        return flat.reshape(shape), moved[:, 0].round().long()


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


def wrap_change_augmentations(dm: Any) -> None:
    """Apply :class:`FrameMask` to a change datamodule's augmentations, also after Lightning sets it up again."""

    def wrap_datasets() -> None:  # OSCD puts its transforms inside the datasets
        for attr in ("dataset", "train_dataset", "val_dataset", "test_dataset"):
            ds = getattr(dm, attr, None)
            inner = getattr(ds, "dataset", ds)
            transforms = getattr(inner, "transforms", None)
            if transforms is not None and not isinstance(transforms, FrameMask):
                inner.transforms = FrameMask(transforms)

    for attr in ("aug", "train_aug", "val_aug", "test_aug"):
        if getattr(dm, attr, None) is not None:
            setattr(dm, attr, FrameMask(getattr(dm, attr)))
    wrap_datasets()
    setup = dm.setup

    def setup_and_wrap(stage: str) -> None:
        setup(stage)
        wrap_datasets()

    dm.setup = setup_and_wrap


class MillionAIDDataModule(L.LightningDataModule):
    """MillionAID scene classification (torchgeo has the dataset but no datamodule): images resized to
    ``tile_size``; its ``test`` split serves for validation."""

    def __init__(self, root: str, batch_size: int, num_workers: int, tile_size: int, task: str = "multi-class") -> None:
        super().__init__()
        self.root, self.batch_size, self.num_workers = root, batch_size, num_workers
        self.tile_size, self.task = tile_size, task
        self.mean, self.std = torch.tensor(0.0), torch.tensor(255.0)

    def _transform(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"].float()[None]
        image = torch.nn.functional.interpolate(image, size=(self.tile_size, self.tile_size), mode="bilinear")
        return {"image": image[0], "label": sample["label"].reshape(()).long()}

    def setup(self, stage: str) -> None:
        from torchgeo.datasets import MillionAID

        kwargs: dict[str, Any] = dict(task=self.task, transforms=self._transform, checksum=False)
        self.train_dataset = MillionAID(self.root, split="train", **kwargs)
        self.val_dataset = MillionAID(self.root, split="test", **kwargs)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, self.batch_size, num_workers=self.num_workers)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        batch["image"] = (batch["image"] - self.mean) / self.std
        return batch


def sampled_loader(dm: Any, sampler: Any) -> DataLoader:
    """A loader of the samples a torchgeo ``sampler`` picks from a datamodule's geospatial ``dataset``, in
    batches of its ``batch_size`` (:class:`OwnDataModule`, :class:`ImageDataModule`)."""
    from torchgeo.datasets import stack_samples

    return DataLoader(
        dm.dataset, batch_size=dm.batch_size, sampler=sampler, num_workers=dm.num_workers, collate_fn=stack_samples
    )


class OwnDataModule(L.LightningDataModule):
    """The user's rasters: random tiles from a training region, a tile grid over a disjoint validation region.

    Args:
        dataset: A torchgeo GeoDataset (images intersected with labels).
        train_roi: Region training tiles are drawn from.
        val_roi: Region the validation grid covers (disjoint from ``train_roi``).
        tile_size: Tile side in pixels.
        batch_size: Tiles per batch.
        num_workers: Data loader processes.
        length: Training tiles per epoch.
        dates: Images per sample (2 for change: bands of both dates are stacked).
        label_offset: Subtracted from the labels (vector labels burn class + 1); values below 0 are ignored.
        label_nodata: Label value of unlabelled pixels (ignored, as ``IGNORE``).
        scene_labels: Scene classification: each tile is labelled with its most frequent class (``IGNORE``
            for a tile without any labelled pixel).
        augmentation: Applied to training batches after normalisation (none if ``None``).
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
        label_nodata: int | None = None,
        scene_labels: bool = False,
        augmentation: TileAugmentation | None = None,
    ) -> None:
        super().__init__()
        self.augmentation = augmentation
        self.dataset, self.train_roi, self.val_roi = dataset, train_roi, val_roi
        self.tile_size, self.batch_size, self.num_workers, self.length = tile_size, batch_size, num_workers, length
        self.dates, self.label_offset, self.scene_labels = dates, label_offset, scene_labels
        self.label_nodata = label_nodata
        self.mean = torch.zeros(1)
        self.std = torch.ones(1)

    def train_dataloader(self) -> DataLoader:
        return sampled_loader(self, random_sampler(self.dataset, self.tile_size, self.length, self.train_roi))

    def val_dataloader(self) -> DataLoader:
        return sampled_loader(self, self.val_sampler())

    def val_sampler(self) -> Any:
        """A tile grid that covers the validation region and stays inside it (neighbours overlap as needed)."""
        res = self.dataset.res
        size = (self.tile_size * res[1], self.tile_size * res[0])
        region = shapely.intersection(shapely.union_all(self.dataset.index.geometry.values), self.val_roi)
        minx, miny, maxx, maxy = region.bounds
        if maxx - minx < size[1] or maxy - miny < size[0]:
            raise InputError(
                "the validation region is smaller than one tile: raise `val_fraction` or lower `tile_size`"
            )

        def fit(extent: float, s: float) -> float:
            steps = math.ceil((extent - s) / s - 1e-9)
            return (extent - s) / steps if steps > 0 else s

        stride = (fit(maxy - miny, size[0]), fit(maxx - minx, size[1]))
        return grid_sampler(self.dataset, size, stride, self.val_roi)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        image = batch["image"].float()
        c = image.shape[1] // self.dates
        mean = self.mean.to(image.device).repeat(self.dates)[None, :, None, None]
        std = self.std.to(image.device).repeat(self.dates)[None, :, None, None]
        image = (image - mean) / std
        if self.dates > 1:
            image = image.reshape(image.shape[0], self.dates, c, *image.shape[-2:])
        mask = self.labels(batch["mask"])
        if self.augmentation is not None and self.trainer is not None and self.trainer.training:
            image, mask = self.augmentation(image, mask)
        if self.scene_labels:
            return {"image": image, "label": scene_label(mask)}
        return {"image": image, "mask": mask[:, None] if self.dates > 1 else mask}

    def labels(self, mask: torch.Tensor) -> torch.Tensor:
        """Read label values as class ids, with ``IGNORE`` for unlabelled pixels."""
        mask = mask.long()
        if mask.ndim == 4:
            mask = mask[:, 0]
        if self.label_nodata is not None:
            mask = torch.where(mask == self.label_nodata, IGNORE, mask)
        if self.label_offset:
            mask = mask - self.label_offset
            mask[mask < 0] = IGNORE
        return mask


class ImageDataModule(L.LightningDataModule):
    """Unlabelled images for self-supervised pretraining: random tiles anywhere in the images, normalised by
    per-band statistics, flipped and rotated; batches hold ``image`` only.

    Args:
        dataset: A torchgeo RasterDataset of the images.
        tile_size: Tile side in pixels.
        batch_size: Tiles per batch.
        num_workers: Data loader processes.
        length: Tiles per epoch.
    """

    #: Images per sample (the statistics code shares this with :class:`OwnDataModule`).
    dates = 1

    def __init__(self, dataset: Any, tile_size: int, batch_size: int, num_workers: int, length: int) -> None:
        super().__init__()
        self.dataset, self.tile_size, self.batch_size = dataset, tile_size, batch_size
        self.num_workers, self.length = num_workers, length
        self.train_roi = shapely.union_all(dataset.index.geometry.values)
        self.mean = torch.zeros(1)
        self.std = torch.ones(1)
        self.augmentation = TileAugmentation()

    def train_dataloader(self) -> DataLoader:
        return sampled_loader(self, random_sampler(self.dataset, self.tile_size, self.length, self.train_roi))

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        image = batch["image"].float()
        image = (image - self.mean.to(image.device)[None, :, None, None]) / self.std.to(image.device)[
            None, :, None, None
        ]
        image, _ = self.augmentation(image)
        return {"image": image}


def scene_label(mask: torch.Tensor) -> torch.Tensor:
    """Each tile's most frequent labelled class, ``IGNORE`` for a tile without any labelled pixel."""
    flat = mask.flatten(1).clamp(0, IGNORE)
    counts = torch.zeros(mask.shape[0], IGNORE + 1, dtype=torch.long, device=mask.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    counts[:, IGNORE] = 0
    label = counts.argmax(1)
    return torch.where(counts.sum(1) > 0, label, IGNORE)


# -- oriented object detection -------------------------------------------------------------------------

#: A box is a training target when at least this share of it lies in the crop (as DOTA's image splitting
#: keeps objects); a box reaching into the crop less is ignored: no loss either way for a partly seen object.
KEEP_INSIDE = 0.7


def crop_targets(
    boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray, x0: int, y0: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The targets of the crop ``size`` px wide at ``(x0, y0)``: boxes ``(N, 5)`` moved into its frame, their
    labels and ignore flags (difficult, or less than :data:`KEEP_INSIDE` of the box in the crop)."""
    corners = box_polygons(boxes) - np.array([x0, y0], dtype=np.float64)
    lo, hi = corners.min(1), corners.max(1)
    near = (hi[:, 0] > 0) & (hi[:, 1] > 0) & (lo[:, 0] < size) & (lo[:, 1] < size)
    corners, moved = corners[near], boxes[near].astype(np.float64)
    moved[:, :2] -= (x0, y0)
    polys = shapely.polygons(corners)
    area = np.maximum(shapely.area(polys), 1e-12)
    inside = shapely.area(shapely.intersection(polys, shapely.box(0, 0, size, size))) / area
    keep = inside > 0
    ignore = difficult[near][keep].astype(bool) | (inside[keep] < KEEP_INSIDE)
    return moved[keep], labels[near][keep].astype(np.int64), ignore


def flip_rotate(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random one of the eight flips and quarter turns of a square crop ``(C, S, S)`` and its boxes."""
    size = image.shape[-1]
    corners = box_polygons(boxes)
    turns = int(rng.integers(4))
    for _ in range(turns):  # np.rot90 over (rows, cols): the point (x, y) goes to (y, size - x)
        corners = np.stack([corners[..., 1], size - corners[..., 0]], axis=-1)
    image = np.rot90(image, turns, axes=(1, 2))
    if rng.random() < 0.5:
        image = image[:, :, ::-1]
        corners[..., 0] = size - corners[..., 0]
    return np.ascontiguousarray(image), rectangle_boxes(corners)


class CropSource(Protocol):
    """An image with oriented objects that detection crops are cut from.

    ``region`` is the pixel rectangle ``(x0, y0, x1, y1)`` crops may cover (the image, or its share of a
    spatial split); :meth:`read` returns raw values ``(C, size, size)`` as float32, NaN where there is no
    data (outside the image or nodata); :meth:`objects` the boxes ``(N, 5)`` in image pixels, labels and
    difficult flags.
    """

    height: int
    width: int
    region: tuple[int, int, int, int]

    def read(self, x0: int, y0: int, size: int) -> np.ndarray: ...

    def objects(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def _spread(start: int, stop: int, size: int) -> list[int]:
    """Offsets of crops of ``size`` that cover ``[start, stop)`` evenly, overlapping as needed."""
    if stop - start <= size:
        return [start]
    steps = math.ceil((stop - start - size) / size - 1e-9)
    return [int(round(v)) for v in np.linspace(start, stop - size, steps + 1)]


class DetectionCrops(Dataset):
    """Square crops with their oriented-box targets, normalised: random ones for training, a fixed grid for
    validation.

    Args:
        sources: The images (see :class:`CropSource`).
        size: Crop side in pixels.
        mean, std: Per-band normalisation of the raw values.
        length: Training crops per epoch (random positions); ``None`` with ``grid`` for validation.
        grid: Validation: crops cover each source's region in a grid.
        augment: Random flips and quarter turns (training).
        one_per_source: Training crop ``i`` comes from source ``i % len(sources)`` (an epoch visits each
            image once), instead of from a random source weighed by its region's area.
    """

    def __init__(
        self,
        sources: Sequence[CropSource],
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        length: int | None = None,
        grid: bool = False,
        augment: bool = False,
        one_per_source: bool = False,
    ) -> None:
        self.sources, self.size, self.augment, self.one_per_source = list(sources), size, augment, one_per_source
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
        self.crops: list[tuple[int, int, int]] = []
        if grid:
            for k, s in enumerate(self.sources):
                x0, y0, x1, y1 = s.region
                self.crops += [(k, x, y) for y in _spread(y0, y1, size) for x in _spread(x0, x1, size)]
        self.length = len(self.crops) if grid else (length or len(self.sources))
        areas = np.array([(s.region[2] - s.region[0]) * (s.region[3] - s.region[1]) for s in self.sources], float)
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def _random_crop(self, index: int, rng: np.random.Generator) -> tuple[int, int, int]:
        k = index % len(self.sources) if self.one_per_source else int(rng.choice(len(self.sources), p=self.weights))
        x0, y0, x1, y1 = self.sources[k].region
        x = int(rng.integers(x0, max(x0, x1 - self.size) + 1))
        y = int(rng.integers(y0, max(y0, y1 - self.size) + 1))
        return k, x, y

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))  # seeded by Lightning per worker
        k, x, y = self.crops[index] if self.crops else self._random_crop(index, rng)
        source = self.sources[k]
        image = source.read(x, y, self.size)
        boxes, labels, ignore = crop_targets(*source.objects(), x, y, self.size)
        if self.augment:
            image, boxes = flip_rotate(image, boxes, rng)
        image = np.nan_to_num((image - self.mean) / self.std, nan=0.0)
        return {
            "image": torch.from_numpy(image.astype(np.float32)),
            "boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 5),
            "labels": torch.from_numpy(labels),
            "ignore": torch.from_numpy(ignore),
        }


def collate_detection(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Stack the images; keep boxes, labels and ignore flags as one tensor per image."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        **{key: [s[key] for s in samples] for key in ("boxes", "labels", "ignore")},
    }


class DetectionDataModule(L.LightningDataModule):
    """Training and validation :class:`DetectionCrops` with our collate (torchgeo's detection collate
    handles axis-aligned boxes only, and replaces labels it does not find under ``label`` with ones)."""

    def __init__(
        self, batch_size: int, num_workers: int, train: Dataset | None = None, val: Dataset | None = None
    ) -> None:
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_dataset, self.val_dataset = train, val

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, self.batch_size, shuffle=shuffle, num_workers=self.num_workers, collate_fn=collate_detection
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)


class RasterSource:
    """A GeoTIFF (or any raster GDAL reads) as a :class:`CropSource`, read window by window; the dataset is
    opened lazily in each loader process."""

    def __init__(
        self,
        path: str,
        height: int,
        width: int,
        region: tuple[int, int, int, int],
        boxes: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        self.path, self.height, self.width, self.region = path, height, width, region
        self._objects = (boxes, labels, np.zeros(len(labels), dtype=bool))
        self._src: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_src": None}  # open handles do not cross process boundaries

    def read(self, x0: int, y0: int, size: int) -> np.ndarray:
        import rasterio
        from rasterio.windows import Window

        if self._src is None:
            self._src = rasterio.open(self.path)
        arr = self._src.read(window=Window(x0, y0, size, size), boundless=True, masked=True)
        return np.ma.filled(arr.astype(np.float32), np.nan)

    def objects(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._objects


def read_dota_annotation(path: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Corners ``(N, 8)``, class names and difficult flags of a DOTA annotation file, line by line as
    torchgeo reads it (two ``imagesource``/``gsd`` header lines are skipped)."""
    with open(path) as fh:
        lines = fh.readlines()
    if lines and lines[0].startswith("imagesource"):
        lines = lines[2:]
    corners, names, difficult = [], [], []
    for line in lines:
        parts = line.split()
        if len(parts) < 9:
            continue
        corners.append([float(v) for v in parts[:8]])
        names.append(parts[8])
        difficult.append(len(parts) > 9 and parts[9] == "1")
    return np.asarray(corners, dtype=np.float64).reshape(-1, 8), names, np.asarray(difficult, dtype=bool)


class LastSample:
    """The most recently loaded full image, shared by the sources of one dataset (crops of one image come
    one after another; DOTA scenes are large, so only one is held). Empty again after pickling."""

    def __init__(self) -> None:
        self.key: Any = None
        self.value: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.key, self.value = None, None


class DOTASource:
    """One image of torchgeo's DOTA dataset as a :class:`CropSource`: image and boxes come from the dataset
    (quadrilaterals turned into their smallest rotated rectangles); the difficult flags, which torchgeo drops,
    from the annotation file."""

    def __init__(
        self, dataset: Any, index: int, height: int, width: int, difficult: np.ndarray, cache: LastSample
    ) -> None:
        self.dataset, self.index, self.height, self.width = dataset, index, height, width
        self.region = (0, 0, width, height)
        self.difficult, self.cache = difficult, cache

    def _load(self) -> dict[str, Any]:
        if self.cache.key != self.index:
            from lemevit_geo.models.rotated import polygon_to_box

            self.cache.key, self.cache.value = None, None  # free the previous image first
            sample = self.dataset[self.index]
            corners = sample["bbox"].reshape(-1, 4, 2).double()
            labels = sample["labels"].numpy().astype(np.int64)
            if len(labels) != len(self.difficult):
                raise InputError(
                    f"DOTA image {self.index}: torchgeo read {len(labels)} objects, the file has {len(self.difficult)}"
                )
            boxes = polygon_to_box(corners).numpy().astype(np.float64)
            self.cache.value = {"image": sample["image"].numpy(), "boxes": boxes, "labels": labels}
            self.cache.key = self.index
        return self.cache.value

    def read(self, x0: int, y0: int, size: int) -> np.ndarray:
        image = self._load()["image"]
        out = np.full((image.shape[0], size, size), np.nan, dtype=np.float32)
        h, w = min(size, self.height - y0), min(size, self.width - x0)
        out[:, :h, :w] = image[:, y0 : y0 + h, x0 : x0 + w]
        return out

    def objects(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample = self._load()
        return sample["boxes"], sample["labels"], self.difficult


#: DOTA's classes per version (torchgeo's order), and those without a defined angle (mmrotate's
#: ``rect_classes``: storage-tank and roundabout).
DOTA_VERSIONS = {"1.0": 15, "1.5": 16, "2.0": 18}
DOTA_ANGLE_FREE = ("storage-tank", "roundabout")
#: ImageNet statistics of 8-bit RGB, the normalisation DOTA detectors use.
DOTA_MEAN, DOTA_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


class DOTADataModule(DetectionDataModule):
    """DOTA through torchgeo's dataset: a random crop of ``tile_size`` from each training image per epoch
    (flips and quarter turns), a grid of crops over each validation image, difficult objects ignored."""

    def __init__(self, root: str, batch_size: int, num_workers: int, tile_size: int, version: str = "1.0") -> None:
        super().__init__(batch_size, num_workers)
        self.root, self.tile_size, self.version = root, tile_size, version
        self.mean, self.std = torch.tensor(DOTA_MEAN), torch.tensor(DOTA_STD)

    def _sources(self, split: str) -> list[DOTASource]:
        from PIL import Image
        from torchgeo.datasets import DOTA

        dataset = DOTA(self.root, split=split, version=self.version, bbox_orientation="oriented", checksum=False)
        cache = LastSample()
        sources = []
        for i in range(len(dataset)):
            row = dataset.sample_df.iloc[i]
            corners, names, difficult = read_dota_annotation(f"{self.root}/{row['annotation_path']}")
            with Image.open(f"{self.root}/{row['image_path']}") as im:
                width, height = im.size
            sources.append(DOTASource(dataset, i, height, width, difficult, cache))
            self.extent = max([self.extent, *(np.ptp(corners.reshape(-1, 4, 2), axis=1).max(1).tolist())])
        return sources

    def setup(self, stage: str) -> None:
        from torchgeo.datasets import DOTA

        self.classes = [str(c) for c in DOTA.classes[: DOTA_VERSIONS[self.version]]]
        self.extent = 0.0  # the largest object's extent along x or y, in pixels
        mean, std = DOTA_MEAN, DOTA_STD
        size = self.tile_size
        self.train_dataset = DetectionCrops(self._sources("train"), size, mean, std, augment=True, one_per_source=True)
        self.val_dataset = DetectionCrops(self._sources("val"), size, mean, std, grid=True)
        self.head = {"angle_free_classes": [self.classes.index(c) for c in DOTA_ANGLE_FREE]}
