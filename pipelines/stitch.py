"""Dense stitching: per-tile logits back onto the scene grid, one tile row at a time.

``crop`` writes each output pixel from the central part of the one tile that owns it. ``blend``
averages the overlapping logits with a smooth window in a rolling buffer of one tile row's height;
rows are flushed to the writer as soon as no later tile touches them. Masked (nodata) pixels get no
weight and come out as nodata. Neither mode ever holds a scene-sized array.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lemevit_geo.choices import Stitch
from lemevit_geo.pipelines.engine import TileData
from lemevit_geo.pipelines.tiling import Tile, TileGrid, blend_window, ownership

PROB_SCALE = 254  # probabilities are written as uint8 0..254; 255 is nodata
FINISH_COLUMNS = 2048


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax of float32 logits."""
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@dataclass
class Band:
    """Finished output rows ``[row, row + classes.shape[0])`` of the full scene width."""

    row: int
    classes: np.ndarray  # (h, W) class ids, nodata where invalid
    probs: np.ndarray | None  # (K, h, W) uint8 probabilities, 255 where invalid
    confidence: np.ndarray  # (h, W) uint8 probability of the chosen class, 255 where invalid

    @property
    def height(self) -> int:
        return self.classes.shape[0]

    def split(self, n: int) -> tuple[Band, Band]:
        """The first ``n`` rows and the rest."""
        probs = (None, None) if self.probs is None else (self.probs[:, :n], self.probs[:, n:])
        return (
            Band(self.row, self.classes[:n], probs[0], self.confidence[:n]),
            Band(self.row + n, self.classes[n:], probs[1], self.confidence[n:]),
        )

    @staticmethod
    def concat(bands: list[Band]) -> Band:
        """Consecutive bands as one."""
        if len(bands) == 1:
            return bands[0]
        probs = None if bands[0].probs is None else np.concatenate([b.probs for b in bands], axis=1)
        classes = np.concatenate([b.classes for b in bands])
        return Band(bands[0].row, classes, probs, np.concatenate([b.confidence for b in bands]))


class BlockRows:
    """Regroups finished bands into writes that start and end on block-row boundaries.

    A compressed GeoTIFF block written twice is stored twice; writing whole block rows once keeps the
    file compact and lets GDAL evict finished blocks from its cache.
    """

    def __init__(self, write: Callable[[Band], None], block: int) -> None:
        self._write, self.block = write, block
        self.pending: list[Band] = []

    def __call__(self, band: Band) -> None:
        self.pending.append(band)
        start = self.pending[0].row
        end = band.row + band.height
        cut = end - end % self.block
        if cut > start:
            done, rest = Band.concat(self.pending).split(cut - start)
            self._write(done)
            self.pending = [rest] if rest.height else []

    def flush(self) -> None:
        if self.pending:
            self._write(Band.concat(self.pending))
            self.pending = []


class BandWriter:
    """Writes finished bands in a background thread (the device never waits on the disk)."""

    def __init__(self, write: Callable[[Band], None], depth: int = 2, block: int = 256) -> None:
        self._rows = BlockRows(write, block)
        self._write = self._rows
        self._queue: queue.Queue[Band | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="lemevit-write", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (band := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(band)
                except BaseException as exc:  # re-raised in the main thread
                    self._error = exc

    def put(self, band: Band) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(band)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is None:
            self._rows.flush()
        if self._error is not None:
            raise self._error


class OutputRows:
    """Finished output rows ``[row, row + height)`` of the full scene width, filled block by block."""

    def __init__(self, row: int, height: int, width: int, num_classes: int, nodata: int, with_probs: bool) -> None:
        dtype = np.uint8 if nodata <= 255 else np.uint16
        self.row, self.nodata = row, nodata
        self.classes = np.full((height, width), nodata, dtype=dtype)
        self.confidence = np.full((height, width), 255, dtype=np.uint8)
        self.probs = np.full((num_classes, height, width), 255, dtype=np.uint8) if with_probs else None

    def set(self, rows: slice, cols: slice, logits: np.ndarray, valid: np.ndarray) -> None:
        """Classes, confidences and probabilities of a block from its logits ``(K, h, w)``; nodata where invalid."""
        probs = softmax(logits)
        cls = logits.argmax(axis=0)
        conf = np.take_along_axis(probs, cls[None], axis=0)[0]
        self.classes[rows, cols] = np.where(valid, cls, self.nodata)
        self.confidence[rows, cols] = np.where(valid, np.rint(conf * PROB_SCALE), 255)
        if self.probs is not None:
            self.probs[:, rows, cols] = np.where(valid[None], np.rint(probs * PROB_SCALE), 255)

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Pixels per class in these rows."""
        c = self.classes[self.classes != self.nodata]
        return np.bincount(c.ravel(), minlength=num_classes)[:num_classes]

    def band(self) -> Band:
        return Band(self.row, self.classes, self.probs, self.confidence)


class CropMerge:
    """Seams by centre crops: every output pixel comes from the central part of the one tile that owns it."""

    def __init__(self, grid: TileGrid) -> None:
        self.own_y = ownership(grid.ys, grid.tile, grid.height)
        self.own_x = ownership(grid.xs, grid.tile, grid.width)

    def rows(self, r: int) -> tuple[int, int]:
        """Scene rows that tile row ``r`` finishes."""
        return self.own_y[r]

    def start(self, r: int) -> None:
        """Nothing carries over between tile rows."""

    def add(self, tile: Tile, logits: np.ndarray, valid: np.ndarray, out: OutputRows) -> None:
        (y0, y1), (x0, x1) = self.own_y[tile.row], self.own_x[tile.col]
        ty, tx = slice(y0 - tile.y, y1 - tile.y), slice(x0 - tile.x, x1 - tile.x)
        out.set(slice(0, y1 - y0), slice(x0, x1), logits[:, ty, tx], valid[ty, tx])

    def finish(self, out: OutputRows) -> None:
        """Every owned pixel was set as its tile arrived."""


class BlendMerge:
    """Seams by blending: overlapping logits averaged with a smooth window.

    Rows ``[ys[r], ys[r + 1])`` finish in tile row ``r``; the rows below, down to the tiles' bottom edge,
    carry over to the next tile row. Accumulators (K logit sums and one weight sum) live in a window two
    tiles wide that slides left to right, and in a full-width carry of overlap height only.
    """

    def __init__(self, grid: TileGrid, num_classes: int) -> None:
        self.grid, self.k = grid, num_classes
        self.weights = blend_window(grid.tile, grid.overlap)
        self.height = 0  # rows the current tile row covers
        self.finished = 0  # of which the first ``finished`` finish in it
        self.wx = 0  # scene column of the window's first column
        self.win = np.zeros((0, 0, 0), dtype=np.float32)
        self.carry: np.ndarray | None = None  # built for the next tile row
        self.prev_carry: np.ndarray | None = None  # left by the previous tile row

    def rows(self, r: int) -> tuple[int, int]:
        ys = self.grid.ys
        return ys[r], ys[r + 1] if r + 1 < len(ys) else self.grid.height

    def start(self, r: int) -> None:
        y0, y1 = self.rows(r)
        self.height = min(self.grid.tile, self.grid.height - y0)
        self.finished = y1 - y0
        self.prev_carry = self.carry if r > 0 else None
        self.carry = np.zeros((self.k + 1, self.height - self.finished, self.grid.width), dtype=np.float32)
        self.wx = 0
        self.win = np.zeros((self.k + 1, self.height, 2 * self.grid.tile), dtype=np.float32)
        self._fill(0, self.win.shape[2])

    def _fill(self, a: int, b: int) -> None:
        """Load window columns [a, b) (window coordinates) with what the previous tile row carried."""
        lo, hi = self.wx + a, min(self.wx + b, self.grid.width)
        if self.prev_carry is not None and hi > lo:
            keep = min(self.prev_carry.shape[1], self.height)
            self.win[:, :keep, a : a + hi - lo] = self.prev_carry[:, :keep, lo:hi]

    def _flush_columns(self, x_end: int, out: OutputRows) -> None:
        """Finish scene columns [wx, x_end): no later tile of this row touches them."""
        n = x_end - self.wx
        if n <= 0:
            return
        for a in range(0, n, FINISH_COLUMNS):  # chunks bound the temporaries
            b = min(a + FINISH_COLUMNS, n)
            wsum = self.win[self.k, : self.finished, a:b]
            valid = wsum > 0
            logits = self.win[: self.k, : self.finished, a:b] / np.where(valid, wsum, 1.0)
            out.set(slice(0, self.finished), slice(self.wx + a, self.wx + b), logits, valid)
        assert self.carry is not None
        self.carry[:, :, self.wx : x_end] = self.win[:, self.finished :, :n]
        width = self.win.shape[2]
        self.win[:, :, : width - n] = self.win[:, :, n:].copy()
        self.win[:, :, width - n :] = 0.0
        self.wx = x_end
        self._fill(width - n, width)

    def add(self, tile: Tile, logits: np.ndarray, valid: np.ndarray, out: OutputRows) -> None:
        h, w = tile.clipped(self.grid.height, self.grid.width)
        self._flush_columns(tile.x, out)
        wgt = self.weights[:h, :w] * valid[:h, :w]
        self.win[: self.k, :h, :w] += logits[:, :h, :w] * wgt
        self.win[self.k, :h, :w] += wgt

    def finish(self, out: OutputRows) -> None:
        while self.wx < self.grid.width:
            self._flush_columns(min(self.grid.width, self.wx + self.grid.tile), out)


class DenseStitcher:
    """Sink for per-pixel logits ``(K, T, T)``: merges tile rows and hands finished bands to a writer."""

    def __init__(
        self,
        grid: TileGrid,
        num_classes: int,
        mode: Stitch,
        writer: BandWriter,
        nodata: int,
        with_probs: bool,
    ) -> None:
        self.grid, self.k, self.writer = grid, num_classes, writer
        self.nodata, self.with_probs = nodata, with_probs
        self.merge = CropMerge(grid) if Stitch(mode) == Stitch.crop else BlendMerge(grid, num_classes)
        self.last_col = len(grid.xs) - 1
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.row = 0
        self.out = self._start(0)

    def _start(self, r: int) -> OutputRows:
        y0, y1 = self.merge.rows(r)
        self.merge.start(r)
        return OutputRows(y0, y1 - y0, self.grid.width, self.k, self.nodata, self.with_probs)

    def _check(self, item: TileData) -> None:
        if item.tile.row != self.row:
            raise RuntimeError("tiles must arrive in grid order")

    def _after(self, col: int) -> None:
        if col != self.last_col:
            return
        self.merge.finish(self.out)
        self.counts += self.out.class_counts(self.k)
        self.writer.put(self.out.band())
        if self.row + 1 < len(self.grid.ys):
            self.row += 1
            self.out = self._start(self.row)

    # -- sink protocol -----------------------------------------------------------------------
    def add(self, item: TileData, output: np.ndarray) -> None:
        self._check(item)
        self.merge.add(item.tile, output, item.valid, self.out)
        self._after(item.tile.col)

    def skip(self, item: TileData) -> None:
        self._check(item)
        self._after(item.tile.col)

    def close(self) -> None:
        self.writer.close()
