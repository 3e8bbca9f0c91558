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
from lemevit_geo.pipelines.tiling import TileGrid, blend_window, ownership

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
        end = band.row + band.classes.shape[0]
        cut = end - end % self.block
        if cut > start:
            merged = self._merge()
            n = cut - start
            self._write(Band(start, merged.classes[:n], None if merged.probs is None else merged.probs[:, :n],
                             merged.confidence[:n]))  # fmt: skip
            rest = Band(cut, merged.classes[n:], None if merged.probs is None else merged.probs[:, n:],
                        merged.confidence[n:])  # fmt: skip
            self.pending = [rest] if rest.classes.shape[0] else []

    def _merge(self) -> Band:
        if len(self.pending) == 1:
            return self.pending[0]
        p = self.pending
        probs = None if p[0].probs is None else np.concatenate([b.probs for b in p], axis=1)
        return Band(p[0].row, np.concatenate([b.classes for b in p]), probs, np.concatenate([b.confidence for b in p]))

    def flush(self) -> None:
        if self.pending:
            self._write(self._merge())
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


class DenseStitcher:
    """Sink for per-pixel logits ``(K, T, T)``: stitches tile rows and hands finished bands to a writer."""

    def __init__(
        self,
        grid: TileGrid,
        num_classes: int,
        mode: Stitch,
        writer: BandWriter,
        nodata: int,
        with_probs: bool,
    ) -> None:
        self.grid, self.k, self.mode, self.writer = grid, num_classes, Stitch(mode), writer
        self.nodata, self.with_probs = nodata, with_probs
        self.ys, self.xs = grid.ys, grid.xs
        self.own_y = ownership(self.ys, grid.tile, grid.height)
        self.own_x = ownership(self.xs, grid.tile, grid.width)
        self.weights = blend_window(grid.tile, grid.overlap)
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.row = -1
        self.carry: np.ndarray | None = None
        self._start_row(0)

    # -- tile rows ---------------------------------------------------------------------------
    def _rows(self, r: int) -> tuple[int, int]:
        """Scene rows that tile row ``r`` finishes."""
        if self.mode == Stitch.crop:
            return self.own_y[r]
        y0 = self.ys[r]
        y1 = self.ys[r + 1] if r + 1 < len(self.ys) else self.grid.height
        return y0, y1

    def _start_row(self, r: int) -> None:
        self.row = r
        y0, y1 = self._rows(r)
        self._reset(y1 - y0)
        if self.mode == Stitch.crop:
            return
        # blend: rows [y0, y1) finish in this tile row; the rows below, down to the tile's bottom edge,
        # carry over to the next tile row. Accumulators (K logit sums + 1 weight sum) live in a window
        # two tiles wide that slides left to right, and in a full-width carry of overlap height only.
        self.h = min(self.grid.tile, self.grid.height - y0)
        self.fin = y1 - y0
        self.prev_carry = self.carry if r > 0 else None
        self.carry = np.zeros((self.k + 1, self.h - self.fin, self.grid.width), dtype=np.float32)
        self.wx = 0
        self.win = np.zeros((self.k + 1, self.h, 2 * self.grid.tile), dtype=np.float32)
        self._fill(0, self.win.shape[2])

    def _fill(self, a: int, b: int) -> None:
        """Load window columns [a, b) (window coordinates) with what the previous tile row carried."""
        lo, hi = self.wx + a, min(self.wx + b, self.grid.width)
        if self.prev_carry is not None and hi > lo:
            keep = min(self.prev_carry.shape[1], self.h)
            self.win[:, :keep, a : a + hi - lo] = self.prev_carry[:, :keep, lo:hi]

    def _flush_columns(self, x_end: int) -> None:
        """Finish scene columns [wx, x_end): no later tile of this row touches them."""
        n = x_end - self.wx
        if n <= 0:
            return
        cols = slice(self.wx, x_end)
        for a in range(0, n, FINISH_COLUMNS):  # chunks bound the temporaries
            b = min(a + FINISH_COLUMNS, n)
            wsum = self.win[self.k, : self.fin, a:b]
            valid = wsum > 0
            logits = self.win[: self.k, : self.fin, a:b] / np.where(valid, wsum, 1.0)
            self._set(slice(0, self.fin), slice(self.wx + a, self.wx + b), logits, valid)
        self.carry[:, :, cols] = self.win[:, self.fin :, :n]
        width = self.win.shape[2]
        self.win[:, :, : width - n] = self.win[:, :, n:].copy()
        self.win[:, :, width - n :] = 0.0
        self.wx = x_end
        self._fill(width - n, width)

    @property
    def _dtype(self) -> type:
        return np.uint8 if self.nodata <= 255 else np.uint16

    def _finish_row(self) -> None:
        r = self.row
        y0, _ = self._rows(r)
        if self.mode == Stitch.blend:
            while self.wx < self.grid.width:
                self._flush_columns(min(self.grid.width, self.wx + self.grid.tile))
        self._count()
        self.writer.put(Band(y0, self.classes, self.probs, self.conf))
        if r + 1 < len(self.ys):
            self._start_row(r + 1)

    def _reset(self, h: int) -> None:
        """Fresh output rows (nodata) for ``h`` rows of the full width."""
        self.classes = np.full((h, self.grid.width), self.nodata, dtype=self._dtype)
        self.conf = np.full((h, self.grid.width), 255, dtype=np.uint8)
        self.probs = np.full((self.k, h, self.grid.width), 255, dtype=np.uint8) if self.with_probs else None

    def _set(self, rows: slice, cols: slice, logits: np.ndarray, valid: np.ndarray) -> None:
        """Write classes, confidences and probabilities for a block of the current band."""
        probs = softmax(logits)
        cls = logits.argmax(axis=0)
        conf = np.take_along_axis(probs, cls[None], axis=0)[0]
        self.classes[rows, cols] = np.where(valid, cls, self.nodata)
        self.conf[rows, cols] = np.where(valid, np.rint(conf * PROB_SCALE), 255)
        if self.probs is not None:
            self.probs[:, rows, cols] = np.where(valid[None], np.rint(probs * PROB_SCALE), 255)

    def _count(self) -> None:
        c = self.classes[self.classes != self.nodata]
        self.counts += np.bincount(c.ravel(), minlength=self.k)[: self.k]

    # -- sink protocol -----------------------------------------------------------------------
    def add(self, item: TileData, output: np.ndarray) -> None:
        tile = item.tile
        if tile.row != self.row:
            raise RuntimeError("tiles must arrive in grid order")
        if self.mode == Stitch.crop:
            (y0, y1), (x0, x1) = self.own_y[tile.row], self.own_x[tile.col]
            ty, tx = slice(y0 - tile.y, y1 - tile.y), slice(x0 - tile.x, x1 - tile.x)
            self._set(slice(0, y1 - y0), slice(x0, x1), output[:, ty, tx], item.valid[ty, tx])
        else:
            h, w = tile.clipped(self.grid.height, self.grid.width)
            self._flush_columns(tile.x)
            wgt = self.weights[:h, :w] * item.valid[:h, :w]
            self.win[: self.k, :h, :w] += output[:, :h, :w] * wgt
            self.win[self.k, :h, :w] += wgt
        self._after(tile.col)

    def skip(self, item: TileData) -> None:
        if item.tile.row != self.row:
            raise RuntimeError("tiles must arrive in grid order")
        self._after(item.tile.col)

    def _after(self, col: int) -> None:
        if col == len(self.xs) - 1:
            self._finish_row()

    def close(self) -> None:
        self.writer.close()
