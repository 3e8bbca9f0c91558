"""Lightning datamodules torchgeo does not have: the user's own rasters, and MillionAID.

Also :class:`FrameMask`, which lets torchgeo's change datamodules run their kornia augmentations on
two-date images with a one-frame mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import shapely
import torch
from torch.utils.data import DataLoader

from lemevit_geo.errors import InputError
from lemevit_geo.pipelines.compat import grid_sampler, random_sampler

#: Label value ignored by losses and metrics of own data.
IGNORE = 255


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
    ) -> None:
        super().__init__()
        self.dataset, self.train_roi, self.val_roi = dataset, train_roi, val_roi
        self.tile_size, self.batch_size, self.num_workers, self.length = tile_size, batch_size, num_workers, length
        self.dates, self.label_offset, self.scene_labels = dates, label_offset, scene_labels
        self.label_nodata = label_nodata
        self.mean = torch.zeros(1)
        self.std = torch.ones(1)

    def _loader(self, sampler: Any) -> DataLoader:
        from torchgeo.datasets import stack_samples

        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=stack_samples,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(random_sampler(self.dataset, self.tile_size, self.length, self.train_roi))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_sampler())

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


def scene_label(mask: torch.Tensor) -> torch.Tensor:
    """Each tile's most frequent labelled class, ``IGNORE`` for a tile without any labelled pixel."""
    flat = mask.flatten(1).clamp(0, IGNORE)
    counts = torch.zeros(mask.shape[0], IGNORE + 1, dtype=torch.long, device=mask.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    counts[:, IGNORE] = 0
    label = counts.argmax(1)
    return torch.where(counts.sum(1) > 0, label, IGNORE)
