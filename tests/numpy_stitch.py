"""The numpy stitcher as it was before issue 14 (commit 2cd9c67): the oracle of the bit-identity tests and the
baseline of ``benchmarks/fastpath.py``. Not used by the tool.

Only the merging is its own (numpy ``OutputRows``, ``CropMerge``, ``BlendMerge``, ``DenseStitcher``); the
containers it hands on (``Piece``, ``Band``), the constants and the host softmax are the library's, so the
oracle and the tool cannot drift apart in what they produce."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lemevit_geo.choices import Stitch
from lemevit_geo.pipelines.inference.engine import TileData
from lemevit_geo.pipelines.inference.stitch import (
    CHUNK,
    FINISH_COLUMNS,
    PROB_SCALE,
    Band,
    BandWriter,
    Piece,
    softmax,
)
from lemevit_geo.pipelines.inference.tiling import Tile, TileGrid, blend_window, finished_rows, ownership


class OutputRows:
    """Finished output rows ``[row, row + height)``, filled block by block, kept in column chunks that are
    allocated only where something valid is set."""

    def __init__(self, row: int, height: int, width: int, num_classes: int, nodata: int, with_probs: bool) -> None:
        self.row, self.height, self.width = row, height, width
        self.k, self.nodata, self.with_probs = num_classes, nodata, with_probs
        self.dtype = np.uint8 if nodata <= 255 else np.uint16
        self.chunks: dict[int, Piece] = {}

    def _chunk(self, i: int) -> Piece:
        piece = self.chunks.get(i)
        if piece is None:
            w = min(CHUNK, self.width - i * CHUNK)
            probs = np.full((self.k, self.height, w), 255, dtype=np.uint8) if self.with_probs else None
            piece = Piece(
                i * CHUNK,
                np.full((self.height, w), self.nodata, dtype=self.dtype),
                np.full((self.height, w), 255, dtype=np.uint8),
                probs,
            )
            self.chunks[i] = piece
        return piece

    def set(self, rows: slice, cols: slice, logits: np.ndarray, valid: np.ndarray) -> None:
        """Classes, confidences and probabilities of a block from its logits ``(K, h, w)``; nodata where invalid."""
        if not valid.any():
            return
        probs = softmax(logits)
        cls = logits.argmax(axis=0)
        conf = np.take_along_axis(probs, cls[None], axis=0)[0]
        classes = np.where(valid, cls, self.nodata)
        confidence = np.where(valid, np.rint(conf * PROB_SCALE), 255)
        quantised = np.where(valid[None], np.rint(probs * PROB_SCALE), 255) if self.with_probs else None
        for i in range(cols.start // CHUNK, (cols.stop - 1) // CHUNK + 1):
            piece = self._chunk(i)
            a, b = max(cols.start, piece.x), min(cols.stop, piece.x + CHUNK)
            src, dst = slice(a - cols.start, b - cols.start), slice(a - piece.x, b - piece.x)
            piece.classes[rows, dst] = classes[:, src]
            piece.confidence[rows, dst] = confidence[:, src]
            if piece.probs is not None and quantised is not None:
                piece.probs[:, rows, dst] = quantised[:, :, src]

    def class_counts(self) -> np.ndarray:
        """Pixels per class in these rows."""
        counts = np.zeros(self.k, dtype=np.int64)
        for piece in self.chunks.values():
            c = piece.classes[piece.classes != self.nodata]
            counts += np.bincount(c.ravel(), minlength=self.k)[: self.k]
        return counts

    def band(self) -> Band:
        return Band(self.row, self.height, dict(self.chunks))


class CropMerge:
    """Seams by centre crops: every output pixel comes from the central part of the one tile that owns it."""

    def __init__(self, grid: TileGrid) -> None:
        self.own_y = finished_rows(grid, Stitch.crop)
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
    tiles wide that slides left to right, and in a carry of overlap height kept in column chunks where it
    holds weight. ``right`` bounds the window's columns that hold anything, so empty stretches cost nothing.
    """

    def __init__(self, grid: TileGrid, num_classes: int) -> None:
        self.grid, self.k = grid, num_classes
        self.weights = blend_window(grid.tile, grid.overlap)
        self.height = 0  # rows the current tile row covers
        self.finished = 0  # of which the first ``finished`` finish in it
        self.wx = 0  # scene column of the window's first column
        self.right = 0  # scene column past the last window column that may hold weight
        self.win = np.zeros((num_classes + 1, grid.tile, 2 * grid.tile), dtype=np.float32)
        self.carry: dict[int, np.ndarray] = {}  # built for the next tile row, by chunk
        self.prev_carry: dict[int, np.ndarray] = {}  # left by the previous tile row
        self.finishes = finished_rows(grid, Stitch.blend)

    def rows(self, r: int) -> tuple[int, int]:
        """Scene rows that tile row ``r`` finishes."""
        return self.finishes[r]

    def start(self, r: int) -> None:
        """Begin tile row ``r`` with what the previous tile row carried (nothing for the first row run)."""
        y0, y1 = self.rows(r)
        self.height = min(self.grid.tile, self.grid.height - y0)
        self.finished = y1 - y0
        self.prev_carry, self.carry = self.carry, {}
        self.win[:] = 0.0
        self.wx = self.right = 0
        self._fill(0, self.win.shape[2])

    def _chunks(self, a: int, b: int) -> Iterator[tuple[int, int, int]]:
        """Chunk index and scene columns [lo, hi) of each chunk overlapping scene columns [a, b)."""
        for i in range(a // CHUNK, (b - 1) // CHUNK + 1):
            yield i, max(a, i * CHUNK), min(b, (i + 1) * CHUNK)

    def _fill(self, a: int, b: int) -> None:
        """Load window columns [a, b) (window coordinates) with what the previous tile row carried."""
        lo, hi = self.wx + a, min(self.wx + b, self.grid.width)
        if not self.prev_carry or hi <= lo:
            return
        for i, c0, c1 in self._chunks(lo, hi):
            chunk = self.prev_carry.get(i)
            if chunk is not None:
                keep = min(chunk.shape[1], self.height)
                self.win[:, :keep, c0 - self.wx : c1 - self.wx] = chunk[:, :keep, c0 - i * CHUNK : c1 - i * CHUNK]
                self.right = max(self.right, c1)

    def _keep(self, x0: int, data: np.ndarray) -> None:
        """Carry window rows below the finished ones, scene columns [x0, x0 + width), into the next tile row."""
        for i, c0, c1 in self._chunks(x0, x0 + data.shape[2]):
            part = data[:, :, c0 - x0 : c1 - x0]
            if not part[self.k].any():
                continue
            chunk = self.carry.get(i)
            if chunk is None:
                w = min(CHUNK, self.grid.width - i * CHUNK)
                chunk = self.carry[i] = np.zeros((self.k + 1, data.shape[1], w), dtype=np.float32)
            chunk[:, :, c0 - i * CHUNK : c1 - i * CHUNK] = part

    def _next_carried(self, x: int) -> int:
        """The first scene column at or after ``x`` in a chunk the previous tile row carried (or the width)."""
        starts = [max(x, i * CHUNK) for i in self.prev_carry if (i + 1) * CHUNK > x]
        return min(starts, default=self.grid.width)

    def _flush_columns(self, x_end: int, out: OutputRows) -> None:
        """Finish scene columns [wx, x_end): no later tile of this row touches them."""
        width = self.win.shape[2]
        while self.wx < x_end:
            if self.right <= self.wx:  # an empty window: jump over columns nothing reaches
                target = min(x_end, self._next_carried(self.wx))
                if target > self.wx:
                    self.wx = self.right = target
                    self._fill(0, width)
                    continue
            self._slide(min(x_end, self.wx + width), out)

    def _slide(self, x_end: int, out: OutputRows) -> None:
        """Finish scene columns [wx, x_end), at most a window's width, and slide the window past them."""
        n, width, h = x_end - self.wx, self.win.shape[2], self.height
        if self.right > self.wx:  # the window holds something: finish it, carry it
            m = min(n, self.right - self.wx)
            for a in range(0, m, FINISH_COLUMNS):  # chunks bound the temporaries
                b = min(a + FINISH_COLUMNS, m)
                wsum = self.win[self.k, : self.finished, a:b]
                valid = wsum > 0
                logits = self.win[: self.k, : self.finished, a:b] / np.where(valid, wsum, 1.0)
                out.set(slice(0, self.finished), slice(self.wx + a, self.wx + b), logits, valid)
            if h > self.finished:
                self._keep(self.wx, self.win[:, self.finished : h, :m])
            if self.right > x_end:
                self.win[:, :, : width - n] = self.win[:, :, n:].copy()
                self.win[:, :, width - n :] = 0.0
            else:
                self.win[:, :, : self.right - self.wx] = 0.0
        self.wx = x_end
        self.right = max(self.right, x_end)
        self._fill(width - n, width)

    def add(self, tile: Tile, logits: np.ndarray, valid: np.ndarray, out: OutputRows) -> None:
        h, w = tile.clipped(self.grid.height, self.grid.width)
        self._flush_columns(tile.x, out)
        wgt = self.weights[:h, :w] * valid[:h, :w]
        self.win[: self.k, :h, :w] += logits[:, :h, :w] * wgt
        self.win[self.k, :h, :w] += wgt
        self.right = max(self.right, tile.x + w)

    def finish(self, out: OutputRows) -> None:
        self._flush_columns(self.grid.width, out)


class DenseStitcher:
    """Sink for per-pixel logits ``(K, T, T)``: merges tile rows and hands finished bands to a writer.

    ``rows`` limits it to tile rows ``[rows[0], rows[1])`` (a strip of a scale-out part); bands of the tile
    rows before ``keep`` (the strip's halo, run only to rebuild the blend carry) are not written or counted.
    ``layout`` lists every band handed on: its first scene row, height and the column chunks it holds, so a
    merge can hand on the same bands in the same order.
    """

    def __init__(
        self,
        grid: TileGrid,
        num_classes: int,
        mode: Stitch,
        writer: BandWriter,
        nodata: int,
        with_probs: bool,
        rows: tuple[int, int] | None = None,
        keep: int | None = None,
    ) -> None:
        self.grid, self.k, self.writer = grid, num_classes, writer
        self.nodata, self.with_probs = nodata, with_probs
        self.merge = CropMerge(grid) if Stitch(mode) == Stitch.crop else BlendMerge(grid, num_classes)
        self.last_col = len(grid.xs) - 1
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.row, self.stop = rows or (0, len(grid.ys))
        self.keep = self.row if keep is None else keep
        self.layout: list[tuple[int, int, list[int]]] = []
        self.halo_tiles_run = 0
        self.out = self._start(self.row)

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
        if self.row >= self.keep:
            band = self.out.band()
            self.counts += self.out.class_counts()
            self.layout.append((band.row, band.height, sorted(band.pieces)))
            self.writer.put(band)
        if self.row + 1 < self.stop:
            self.row += 1
            self.out = self._start(self.row)

    # -- sink protocol -----------------------------------------------------------------------
    def add(self, item: TileData, output: np.ndarray) -> None:
        self._check(item)
        assert item.valid is not None
        self.merge.add(item.tile, output, item.valid, self.out)
        self.halo_tiles_run += item.tile.row < self.keep
        self._after(item.tile.col)

    def skip(self, item: TileData) -> None:
        self._check(item)
        self._after(item.tile.col)

    def close(self) -> None:
        self.writer.close()
