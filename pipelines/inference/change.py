"""Bitemporal change detection: align the two dates, then run the shared dense engine on tile pairs."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import rasterio
import shapely
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape

from lemevit_geo.bundle import BundleConfig
from lemevit_geo.choices import Task
from lemevit_geo.errors import InputError, LemevitWarning
from lemevit_geo.inputs import check_exists, dataset
from lemevit_geo.pipelines.inference.dense import DenseOptions, plan_dense, run_dense
from lemevit_geo.pipelines.inference.engine import Progress
from lemevit_geo.pipelines.inference.plan import Plan, Sources, source_for
from lemevit_geo.raster import (
    READ_ERRORS,
    MaskPlan,
    SourceInfo,
    data_bands_vrt,
    false_alpha,
    inspect_source,
    plan_mask,
)


class WarpedSource:
    """A source warped onto another grid (bilinear, windowed reads); closes what it opened.

    The warp keeps the source's nodata value or alpha band; a source with neither (or with a band flagged alpha
    that holds data, which is warped as data) gets an added alpha band (the last band), so pixels the source
    does not cover are nodata.
    """

    def __init__(self, info: SourceInfo, crs: Any, transform: Affine, width: int, height: int) -> None:
        self._src = rasterio.open(info.path)
        if false_alpha(self._src, info.mask):  # a band flagged alpha that the mask plan reads as data
            data = rasterio.open(data_bands_vrt(self._src))
            self._src.close()
            self._src = data
        extra: dict[str, Any] = {}
        if self._src.nodata is not None:
            extra["nodata"] = self._src.nodata
        elif ColorInterp.alpha not in self._src.colorinterp:
            extra["add_alpha"] = True
        self._vrt = WarpedVRT(
            self._src,
            crs=crs,
            transform=transform,
            width=width,
            height=height,
            resampling=Resampling.bilinear,
            **extra,
        )

    def read(self, *args: Any, **kwargs: Any) -> Any:
        return self._vrt.read(*args, **kwargs)

    def read_masks(self, *args: Any, **kwargs: Any) -> Any:
        return self._vrt.read_masks(*args, **kwargs)

    @staticmethod
    def mask_plan(info: SourceInfo, count: int) -> MaskPlan:
        """The mask of the warped source: its own nodata or alpha, else the added alpha band ``count + 1``."""
        if info.mask.nodata is not None or info.mask.alpha is not None:
            return info.mask
        return MaskPlan(f"{info.mask.source}; outside the warped image", alpha=count + 1, finite=info.mask.finite)

    def close(self) -> None:
        self._vrt.close()
        self._src.close()


def _footprint(info: SourceInfo) -> shapely.Polygon:
    t = info.transform
    corners = [t @ (0, 0), t @ (info.width, 0), t @ (info.width, info.height), t @ (0, info.height)]
    return shapely.Polygon(corners)


@dataclass
class Alignment:
    """How the ``after`` image is brought onto the ``before`` grid, cropped to the overlap."""

    grid: SourceInfo  # output grid: the before grid cropped to the footprints' intersection
    before_offset: tuple[int, int]
    after_offset: tuple[int, int] | None  # exact pixel offset when no resampling is needed
    report: dict[str, Any]


def align(before: SourceInfo, after: SourceInfo) -> Alignment:
    """Intersect the footprints on the ``before`` grid and decide how to read ``after`` there."""
    fp_before = _footprint(before)
    fp_after = _footprint(after)
    same_crs = before.crs == after.crs
    if not same_crs:
        if before.crs is None or after.crs is None:
            raise InputError("one date has a CRS and the other has none: the pair cannot be aligned")
        dense = shapely.segmentize(fp_after, fp_after.length / 256)  # edges bend under reprojection
        fp_after = shape(transform_geom(after.crs, before.crs, mapping(dense)))
    inter = fp_before.intersection(fp_after)
    if inter.is_empty or inter.area <= 0:
        raise InputError(f"{before.label} and {after.label} do not overlap: there is nothing to compare")
    inv = ~before.transform
    cols, rows = zip(*(inv @ xy for xy in shapely.get_coordinates(inter.envelope)), strict=True)
    eps = 1e-6
    c0, r0 = max(0, math.floor(min(cols) + eps)), max(0, math.floor(min(rows) + eps))
    c1, r1 = min(before.width, math.ceil(max(cols) - eps)), min(before.height, math.ceil(max(rows) - eps))
    if c1 <= c0 or r1 <= r0:
        raise InputError(f"{before.label} and {after.label} overlap by less than one pixel")
    transform = before.transform @ Affine.translation(c0, r0)
    grid = SourceInfo(before.path, c1 - c0, r1 - r0, before.crs, transform, before.bands, before.dtype)

    res_before = (abs(before.transform.a), abs(before.transform.e))
    res_after = (abs(after.transform.a), abs(after.transform.e))
    after_offset = None
    shift = None
    if same_crs and res_before == res_after and before.transform.b == after.transform.b == 0:
        # same grid up to a translation: an exact pixel offset when it is whole pixels
        dx, dy = ~after.transform @ (before.transform.c, before.transform.f)
        if abs(dx - round(dx)) < 1e-6 and abs(dy - round(dy)) < 1e-6:
            shift = (-round(dx), -round(dy))
            after_offset = (r0 + round(dy), c0 + round(dx))
    report = {
        "same_crs": same_crs,
        "before_crs": before.crs.to_string() if before.crs else None,
        "after_crs": after.crs.to_string() if after.crs else None,
        "before_resolution": res_before,
        "after_resolution": res_after,
        "after_shift_pixels": shift,
        "resampled": after_offset is None,
        "overlap_share_before": round(inter.area / fp_before.area, 4),
        "overlap_share_after": round(inter.area / fp_after.area, 4),
        "output_window": {"col_off": c0, "row_off": r0, "width": c1 - c0, "height": r1 - r0},
    }
    return Alignment(grid, (r0, c0), after_offset, report)


def _check_band_counts(before: str | Path, after: str | Path) -> None:
    """Refuse dates that differ in their data bands (when no bands are chosen; alpha bands do not count)."""
    try:
        with rasterio.open(dataset(before)) as b, rasterio.open(dataset(after)) as a, warnings.catch_warnings():
            warnings.simplefilter("ignore", LemevitWarning)  # inspect_source warns once per date
            counts = len(plan_mask(b, None)[1]), len(plan_mask(a, None)[1])
    except (*READ_ERRORS, InputError):
        return  # inspect_source says what is wrong with the file
    if counts[0] != counts[1]:
        raise InputError(f"the dates differ in bands: {before} has {counts[0]}, {after} has {counts[1]}")


def change_sources(
    inputs: Sequence[str | Path], config: BundleConfig, bands: Sequence[int] | None, allow_pixel_grid: bool
) -> Sources:
    """The two dates ``inputs`` (before, after) as sources on the output grid (the ``before`` grid cropped to the
    overlap), with their alignment and masks as the report."""
    before, after = inputs
    for path in (before, after):
        check_exists(path)
    if bands is None:
        _check_band_counts(before, after)
    info_b = inspect_source(before, bands, config.bands, allow_pixel_grid)
    info_a = inspect_source(after, bands, config.bands, allow_pixel_grid)
    if info_b.dtype != info_a.dtype:
        raise InputError(
            f"the dates differ in data type ({before}: {info_b.dtype}, {after}: {info_a.dtype}), so one "
            "normalisation cannot fit both: convert them to the same type and scale"
        )
    alignment = align(info_b, info_a)
    grid = alignment.grid
    src_b = source_for(info_b, config)
    src_b.offset = alignment.before_offset
    src_a = source_for(info_a, config)
    if alignment.after_offset is not None:
        src_a.offset = alignment.after_offset
    else:
        src_a.opener = lambda: WarpedSource(info_a, grid.crs, grid.transform, grid.width, grid.height)
        with rasterio.open(info_a.path) as src:
            src_a.mask = WarpedSource.mask_plan(info_a, src.count)
    masks = [s.mask_plan.describe() for s in (src_b, src_a)]
    return Sources([src_b, src_a], grid, {"alignment": alignment.report, "mask": masks})


def plan_change(*, before: str | Path, after: str | Path, **options: Unpack[DenseOptions]) -> Plan:
    """Plan ``change`` of ``before`` and ``after`` with the change bundle ``options['model']`` (a path, or a
    loaded ``(model, config)`` pair): the dates aligned on the ``before`` grid cropped to their overlap, the tile
    grid laid out, the outputs checked (``options``: :class:`~.dense.DenseOptions`). No polygons are made of
    class 0 (no change)."""
    return plan_dense(Task.change, [before, after], change_sources, vector_skip=(0,), **options)


def change(*, progress: Progress | None = None, **options: Any) -> dict[str, Any]:
    """Change map of ``before`` and ``after`` on the ``before`` grid, cropped to their overlap, in this process;
    ``options`` are those of :func:`plan_change` (and of ``segment``).

    The bundle's model maps both dates stacked on the channel axis to per-pixel change logits.
    """
    return run_dense(plan_change(**options), progress)
