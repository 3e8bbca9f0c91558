"""The files a dense run writes: open, write finished bands, finish (COG, category names, polygons); and the
part file of one strip of a scale-out run.

Everything is written under hidden temporary names beside the targets and published only when the run
finishes; on any error (or interruption) nothing is left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.io import DatasetReader, DatasetWriter

from lemevit_geo.errors import OutputError
from lemevit_geo.outputs import atomic_path, temporary_sibling
from lemevit_geo.pipelines.inference.stitch import PROB_SCALE, Piece
from lemevit_geo.pipelines.inference.tiling import Strip
from lemevit_geo.raster import (
    SourceInfo,
    class_dtype,
    output_profile,
    write_category_names,
    write_class_metadata,
)
from lemevit_geo.settings import DenseOutputs
from lemevit_geo.vector import polygonize, write_vector


class RowFiles(Protocol):
    """Where finished rows go: the outputs of a run, or a part file."""

    nodata: int

    @property
    def with_probabilities(self) -> bool:
        """Whether probabilities are kept."""

    def write(self, row: int, piece: Piece) -> None:
        """Write finished rows of one column chunk (``row`` counts from the file's first row)."""


def check_complete(path: Path, name: Path) -> None:
    """Refuse a GeoTIFF whose blocks reach past its end: GDAL's COG copy does not report every failed write
    (a full disk, a file size limit), and leaves a truncated file. ``name`` is the output's own name."""
    size = path.stat().st_size
    with rasterio.open(path) as ds:
        block_w, block_h = ds.block_shapes[0]
        blocks = [(x, y) for y in range(-(-ds.height // block_h)) for x in range(-(-ds.width // block_w))]
        for x, y in blocks:
            offset = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1)
            length = ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1)
            if offset and length and int(offset) + int(length) > size:
                raise OutputError(f"writing {name} failed: the file ends before its last blocks (disk full?)")


class DenseRasterWriter:
    """Class raster (with colours and class names), optional probabilities and polygons on ``grid``'s grid.

    Use as a context manager: ``write`` finished bands (from the writer thread), then ``finish`` once.
    The per-pixel confidence that polygons carry is written to a temporary raster only when polygons
    are asked for.

    Args:
        grid: The output grid (size, CRS, transform).
        classes: Class names, in output order.
        colors: One RGB colour per class.
        output: The class raster to write.
        outputs: Probabilities, polygons and COG options.
        overwrite: Replace existing outputs.
        vector_skip_classes: Classes that get no polygons (``no change``).
    """

    def __init__(
        self,
        grid: SourceInfo,
        classes: Sequence[str],
        colors: Sequence[tuple[int, int, int]],
        output: Path,
        outputs: DenseOutputs,
        overwrite: bool,
        vector_skip_classes: Sequence[int] = (),
    ) -> None:
        self.grid, self.classes, self.colors = grid, list(classes), list(colors)
        self.output, self.options, self.overwrite = output, outputs, overwrite
        self.vector_skip_classes = tuple(vector_skip_classes)
        self.dtype, self.nodata = class_dtype(len(self.classes))
        self._stack = contextlib.ExitStack()
        self._datasets: list[DatasetWriter] = []

    @property
    def with_probabilities(self) -> bool:
        return self.options.probabilities is not None

    def __enter__(self) -> DenseRasterWriter:
        stack, opts = self._stack.__enter__(), self.options
        self.final = stack.enter_context(atomic_path(self.output, self.overwrite))
        # a COG is copied from a plain tiled GeoTIFF at the end
        self.tiff = self._temporary(self.output) if opts.cog else self.final
        self.classes_ds = self._open(self.tiff, 1, self.dtype, self.nodata)
        write_class_metadata(self.classes_ds, self.classes, self.colors)
        self.conf_ds = None
        if opts.vector is not None:
            self.conf_path = self._temporary(self.output.with_suffix(".conf.tif"))
            self.conf_ds = self._open(self.conf_path, 1, "uint8", 255)
        self.prob_ds = None
        if opts.probabilities is not None:
            prob_tmp = stack.enter_context(atomic_path(opts.probabilities, self.overwrite))
            self.prob_ds = self._open(prob_tmp, len(self.classes), "uint8", 255)
            self.prob_ds.scales = (1.0 / PROB_SCALE,) * len(self.classes)
            for i, name in enumerate(self.classes):
                self.prob_ds.set_band_description(i + 1, f"p({name})")
        return self

    def _temporary(self, beside: Path) -> Path:
        """A temporary file removed when the writer exits, whatever happens."""
        path = temporary_sibling(beside)
        self._stack.callback(lambda: path.unlink(missing_ok=True))
        return path

    def _open(self, path: Path, count: int, dtype: str, nodata: int) -> DatasetWriter:
        ds = self._stack.enter_context(rasterio.open(path, "w", **output_profile(self.grid, count, dtype, nodata)))
        self._datasets.append(ds)
        return ds

    def write(self, row: int, piece: Piece) -> None:
        """Write finished rows of one column chunk to every open raster."""
        win = ((row, row + piece.height), (piece.x, piece.x + piece.classes.shape[1]))
        self.classes_ds.write(piece.classes, 1, window=win)
        if self.conf_ds is not None:
            self.conf_ds.write(piece.confidence, 1, window=win)
        if self.prob_ds is not None and piece.probs is not None:
            self.prob_ds.write(piece.probs, window=win)

    def finish(self) -> dict[str, Any]:
        """Close the rasters, make the COG, category names and polygons; return what was written."""
        for ds in self._datasets:
            ds.close()
        opts = self.options
        if opts.cog:
            rasterio.shutil.copy(self.tiff, self.final, driver="COG", compress="DEFLATE", predictor=2, blocksize=512)
            check_complete(self.final, self.output)
        write_category_names(self.final, self.classes)
        written: dict[str, Any] = {"raster": str(self.output)}
        if opts.probabilities is not None:
            written["probabilities"] = str(opts.probabilities)
        if opts.vector is not None:
            gdf = polygonize(
                self.final,
                self.conf_path,
                self.classes,
                min_area=opts.min_area,
                simplify=opts.simplify,
                skip_classes=self.vector_skip_classes,
            )
            write_vector(gdf, opts.vector, self.overwrite)
            written.update(vector=str(opts.vector), polygons=len(gdf))
        return written

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return self._stack.__exit__(kind, exc, tb)


class PartRasterWriter:
    """The part file of one strip: a GeoTIFF on the scene's grid restricted to the strip's rows, with the
    classes (band 1), the confidence (band 2) and, if asked for, one probability band per class.

    Every band has the class raster's data type (values up to 255, or class ids beyond). The file is written
    under a temporary name and published at the end, replacing a stale part of the same name.
    """

    def __init__(self, grid: SourceInfo, strip: Strip, num_classes: int, with_probabilities: bool, path: Path) -> None:
        transform = grid.transform @ Affine.translation(0, strip.y0)
        self.grid = dataclasses.replace(grid, height=strip.y1 - strip.y0, transform=transform)
        self.k, self.path, self.probabilities = num_classes, path, with_probabilities
        self.dtype, self.nodata = class_dtype(num_classes)
        self._stack = contextlib.ExitStack()

    @property
    def with_probabilities(self) -> bool:
        return self.probabilities

    def __enter__(self) -> PartRasterWriter:
        stack = self._stack.__enter__()
        tmp = stack.enter_context(atomic_path(self.path, overwrite=True))
        count = 2 + (self.k if self.probabilities else 0)
        profile = output_profile(self.grid, count, self.dtype, self.nodata)
        self.ds = stack.enter_context(rasterio.open(tmp, "w", **profile))
        return self

    def write(self, row: int, piece: Piece) -> None:
        """Write finished rows of one column chunk (``row`` counts from the strip's first row)."""
        win = ((row, row + piece.height), (piece.x, piece.x + piece.classes.shape[1]))
        self.ds.write(piece.classes, 1, window=win)
        self.ds.write(piece.confidence.astype(self.dtype), 2, window=win)
        if self.probabilities and piece.probs is not None:
            self.ds.write(piece.probs.astype(self.dtype), list(range(3, 3 + self.k)), window=win)

    def finish(self) -> None:
        """Close the part file (it is published when the writer exits without error)."""
        self.ds.close()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return self._stack.__exit__(kind, exc, tb)


def read_piece(
    part: DatasetReader, row: int, height: int, x: int, width: int, num_classes: int, with_probabilities: bool
) -> Piece:
    """Rows ``[row, row + height)`` of part file ``part`` (rows counted from its first row), columns
    ``[x, x + width)``, as the :class:`~lemevit_geo.pipelines.inference.stitch.Piece` the stitcher had handed on."""
    win = ((row, row + height), (x, x + width))
    probs = None
    if with_probabilities:
        probs = part.read(list(range(3, 3 + num_classes)), window=win).astype(np.uint8)
    return Piece(x, part.read(1, window=win), part.read(2, window=win).astype(np.uint8), probs)
