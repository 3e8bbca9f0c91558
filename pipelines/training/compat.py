"""What moved between torchgeo generations, in one place.

pip resolves torchgeo 0.8 on Python 3.11 (0.9 and later need Python 3.12) and 0.10 on Python 3.12+. The
Lightning tasks are ``torchgeo.trainers.{SemanticSegmentation,ChangeDetection,Classification}Task`` and
``BaseTask`` up to 0.9 and ``torchgeo.tasks.{SemanticSegmentation,ChangeDetection,Classification}`` and
``BaseTask`` from 0.10 (the self-supervised ``SimCLRTask``/``MoCoTask`` likewise became ``SimCLR``/``MoCo``); the
geospatial samplers are ``RandomGeoSampler``/``GridGeoSampler`` up to 0.9 and
``RandomPatchSampler``/``GriddedPatchSampler`` from 0.10 (keyword-only, with a NumPy ``generator``). 0.10 keeps
the old names as aliases that raise a DeprecationWarning on every subclass and instance,
so this module imports whichever names are current.
"""

from __future__ import annotations

from typing import Any

import shapely
import torch

try:  # torchgeo >= 0.10
    from torchgeo.tasks import BaseTask
    from torchgeo.tasks import ChangeDetection as ChangeDetectionTask
    from torchgeo.tasks import Classification as ClassificationTask
    from torchgeo.tasks import MoCo as MoCoTask
    from torchgeo.tasks import SemanticSegmentation as SemanticSegmentationTask
    from torchgeo.tasks import SimCLR as SimCLRTask
except ImportError:  # torchgeo 0.8, 0.9
    from torchgeo.trainers import (
        BaseTask,
        ChangeDetectionTask,
        ClassificationTask,
        MoCoTask,
        SemanticSegmentationTask,
        SimCLRTask,
    )

__all__ = [
    "BaseTask",
    "ChangeDetectionTask",
    "ClassificationTask",
    "MoCoTask",
    "SemanticSegmentationTask",
    "SimCLRTask",
    "grid_sampler",
    "random_sampler",
]


def random_sampler(dataset: Any, size: int, length: int, roi: shapely.Polygon) -> Any:
    """``length`` random tiles of ``size`` x ``size`` pixels inside ``roi``.

    The positions follow torch's random state (``L.seed_everything``) in both generations: torchgeo >= 0.10 draws
    them from its own NumPy generator, which is seeded here from torch.
    """
    from geopandas import GeoSeries

    try:
        from torchgeo.samplers import RandomPatchSampler
    except ImportError:  # torchgeo 0.8, 0.9
        from torchgeo.samplers import RandomGeoSampler

        return RandomGeoSampler(dataset, size, length, roi=roi)
    seed = int(torch.randint(0, 2**62, ()).item())
    sampler = RandomPatchSampler(dataset, size=size, length=length, roi=roi, generator=seed)
    # 0.10 keeps tile centres half a tile diagonal (0.71 tiles) inside the region: no tile reaches its outer 0.21
    # tiles and a region narrower than 1.41 tiles gives none. For square tiles, eroding by half a side (mitred
    # corners) plus half a pixel (the start is snapped to the pixel grid) is exact, as in 0.8.
    half = max(sampler.size) / 2 + max(abs(r) for r in sampler.res) / 2
    sampler.series = GeoSeries([shapely.buffer(sampler.geometry, -half, join_style="mitre")])
    return sampler


def grid_sampler(dataset: Any, size: tuple[float, float], stride: tuple[float, float], roi: shapely.Polygon) -> Any:
    """A grid of tiles over ``roi`` (``size`` and ``stride`` as (height, width) in CRS units).

    torchgeo 0.8/0.9 start the grid at the region's corner; 0.10 centres it on the region and snaps its start to
    the dataset's pixel grid, so a region whose edges lie on that grid and a stride that divides it exactly give the
    same tiles in both.
    """
    from torchgeo.samplers import Units

    try:
        from torchgeo.samplers import GriddedPatchSampler
    except ImportError:  # torchgeo 0.8, 0.9
        from torchgeo.samplers import GridGeoSampler

        return GridGeoSampler(dataset, size, stride, roi=roi, units=Units.CRS)
    # 0.10 counts ceil((extent - size) / stride) + 1 tiles: a hair more stride keeps float error from adding one
    stride = (stride[0] * (1 + 1e-12), stride[1] * (1 + 1e-12))
    return GriddedPatchSampler(dataset, size=size, stride=stride, roi=roi, units=Units.CRS)
