"""Dense stitching: per-tile logits back onto the scene grid, one tile row at a time, on the model's device.

``crop`` writes each output pixel from the central part of the one tile that owns it. ``blend``
averages the overlapping logits with a smooth window in a rolling buffer of one tile row's height;
rows are flushed to the writer as soon as no later tile touches them. Masked (nodata) pixels get no
weight and come out as nodata.

Everything after the model runs as torch operations on the device the logits are on (softmax, blend
weights, the rolling accumulation buffer, argmax, confidence and probability quantisation); only the
finished uint8 (or uint16) rows of a tile row cross to the host, asynchronously on CUDA (the writer thread
waits for them). Which columns hold data is tracked on the host from the tiles' valid masks, so the device
is never asked (no synchronisation per tile). On the CPU the results equal the earlier numpy stitcher bit
for bit (``tests/numpy_stitch.py`` keeps it as the oracle): the exponential is numpy's there.

Memory follows the valid data, not the scene: finished rows are kept in column chunks that exist only
where some tile had a valid pixel, the blend carry likewise, and work on empty columns is skipped. A
200k x 200k px mosaic that is mostly nodata runs in the memory of its data. Neither mode ever holds a
scene-sized array.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lemevit_geo.choices import Stitch
from lemevit_geo.pipelines.inference.engine import TileData
from lemevit_geo.pipelines.inference.tiling import Tile, TileGrid, blend_window, finished_rows, ownership

PROB_SCALE = 254  # probabilities are written as uint8 0..254; 255 is nodata
FINISH_COLUMNS = 2048
#: Columns per output chunk: a multiple of the output's 256 px blocks, so chunks never share a block.
CHUNK = 2048


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax of numpy logits (host side: scene labels of ``classify``)."""
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _exp(x: torch.Tensor) -> torch.Tensor:
    """``exp`` of a float32 tensor; numpy's on the CPU, whose results differ from torch's vectorised ones in
    the last bit, so CPU outputs stay those of earlier versions."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.exp(x.numpy()))
    return torch.exp(x)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes of float32 logits ``(K, h, w)``, summed class by class (numpy's order)."""
    e = _exp(logits - logits.amax(dim=0, keepdim=True))
    total = e[0].clone()
    for i in range(1, e.shape[0]):
        total += e[i]
    return e / total


def first_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Index (int64) of the first largest value along dim 0 of ``(K, h, w)`` (numpy's ``argmax``), class by
    class in plain arithmetic: torch's ``argmax`` over a leading dimension, ``where`` and ``masked_fill`` are
    several times slower on the CPU."""
    best = logits[0].clone()
    small = torch.uint8 if logits.shape[0] <= 256 else torch.int32  # narrow while filling: less memory traffic
    index = torch.zeros(best.shape, dtype=small, device=logits.device)
    for i in range(1, logits.shape[0]):
        better = (logits[i] > best).to(small)
        index += better * (i - index)  # i where better, else unchanged (index < i: no wrap-around)
        torch.maximum(best, logits[i], out=best)
    return index.long()


def fill_invalid(values: torch.Tensor, invalid: torch.Tensor, fill: float) -> torch.Tensor:
    """``values`` with ``fill`` where ``invalid`` (broadcast), in place, exactly, in arithmetic (integer-valued
    floats or integers: ``values + invalid * (fill - values)``)."""
    values += invalid.to(values.dtype) * (fill - values)
    return values


@dataclass
class Piece:
    """Finished output rows of one column chunk, starting at scene column ``x``."""

    x: int
    classes: np.ndarray  # (h, w) class ids, nodata where invalid
    confidence: np.ndarray  # (h, w) uint8 probability of the chosen class, 255 where invalid
    probs: np.ndarray | None  # (K, h, w) uint8 probabilities, 255 where invalid

    @property
    def height(self) -> int:
        return self.classes.shape[0]

    def rows(self, a: int, b: int) -> Piece:
        return Piece(
            self.x, self.classes[a:b], self.confidence[a:b], None if self.probs is None else self.probs[:, a:b]
        )

    @staticmethod
    def stack(pieces: list[Piece]) -> Piece:
        """Consecutive row ranges of one chunk as one piece."""
        if len(pieces) == 1:
            return pieces[0]
        probs = None if pieces[0].probs is None else np.concatenate([p.probs for p in pieces], axis=1)  # type: ignore[misc]
        return Piece(
            pieces[0].x,
            np.concatenate([p.classes for p in pieces]),
            np.concatenate([p.confidence for p in pieces]),
            probs,
        )


@dataclass
class Band:
    """Finished output rows ``[row, row + height)``: pieces by chunk index; absent chunks are nodata.

    ``ready`` (CUDA) is the event after the copies of the pieces to the host: wait on it before reading them.
    """

    row: int
    height: int
    pieces: dict[int, Piece] = field(default_factory=dict)
    ready: Any = None

    def wait(self) -> None:
        """Block until the pieces are on the host (a no-op unless they were copied asynchronously)."""
        if self.ready is not None:
            self.ready.synchronize()


@dataclass
class DevicePiece:
    """The tensors of one column chunk of :class:`OutputRows` on the device."""

    x: int
    classes: torch.Tensor
    confidence: torch.Tensor
    probs: torch.Tensor | None


def _to_host(t: torch.Tensor, pinned: bool) -> np.ndarray:
    """A device tensor as a host array: a view on the CPU, an asynchronous copy into pinned memory on CUDA."""
    if t.device.type == "cpu":
        return t.numpy()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=pinned)
    host.copy_(t, non_blocking=pinned)
    return host.numpy()


class OutputRows:
    """Finished output rows ``[row, row + height)``, filled block by block on ``device``, kept in column chunks
    that are allocated only where something valid is set."""

    def __init__(
        self,
        row: int,
        height: int,
        width: int,
        num_classes: int,
        nodata: int,
        with_probs: bool,
        device: torch.device | str = "cpu",
    ) -> None:
        self.row, self.height, self.width = row, height, width
        self.k, self.nodata, self.with_probs = num_classes, nodata, with_probs
        self.device = torch.device(device)
        self.dtype = torch.uint8 if nodata <= 255 else torch.uint16
        self.chunks: dict[int, DevicePiece] = {}

    def _chunk(self, i: int) -> DevicePiece:
        piece = self.chunks.get(i)
        if piece is None:
            w, dev = min(CHUNK, self.width - i * CHUNK), self.device
            probs = None
            if self.with_probs:
                probs = torch.full((self.k, self.height, w), 255, dtype=torch.uint8, device=dev)
            piece = DevicePiece(
                i * CHUNK,
                torch.full((self.height, w), self.nodata, dtype=self.dtype, device=dev),
                torch.full((self.height, w), 255, dtype=torch.uint8, device=dev),
                probs,
            )
            self.chunks[i] = piece
        return piece

    def set(self, rows: slice, cols: slice, logits: torch.Tensor, valid: torch.Tensor, occupied: bool) -> None:
        """Classes, confidences and probabilities of a block from its float32 logits ``(K, h, w)``; nodata where
        ``valid`` is False. ``occupied`` (known on the host) says whether any pixel is valid: nothing is done or
        allocated for a block without one."""
        if not occupied:
            return
        probs = class_probabilities(logits)
        cls = first_argmax(logits)
        conf = probs.gather(0, cls[None])[0]
        invalid = ~valid
        classes = fill_invalid(cls, invalid, self.nodata)
        confidence = fill_invalid(torch.round(conf * PROB_SCALE), invalid, 255.0)
        quantised = fill_invalid(torch.round(probs * PROB_SCALE), invalid, 255.0) if self.with_probs else None
        for i in range(cols.start // CHUNK, (cols.stop - 1) // CHUNK + 1):
            piece = self._chunk(i)
            a, b = max(cols.start, piece.x), min(cols.stop, piece.x + CHUNK)
            src, dst = slice(a - cols.start, b - cols.start), slice(a - piece.x, b - piece.x)
            piece.classes[rows, dst] = classes[:, src]
            piece.confidence[rows, dst] = confidence[:, src]
            if piece.probs is not None and quantised is not None:
                piece.probs[:, rows, dst] = quantised[:, :, src]

    def class_counts(self) -> torch.Tensor:
        """Pixels per class in these rows, on the device (int64, no synchronisation)."""
        counts = torch.zeros(self.k + 1, dtype=torch.int64, device=self.device)
        for piece in self.chunks.values():
            index = piece.classes.reshape(-1).to(torch.int64).clamp_(max=self.k)  # nodata counts in bin k
            counts.scatter_add_(0, index, torch.ones_like(index))
        return counts[: self.k]

    def band(self) -> Band:
        """The rows as host arrays; on CUDA copied asynchronously, with the event to wait on in ``ready``."""
        cuda = self.device.type == "cuda"
        pieces = {
            i: Piece(
                p.x,
                _to_host(p.classes, cuda),
                _to_host(p.confidence, cuda),
                None if p.probs is None else _to_host(p.probs, cuda),
            )
            for i, p in self.chunks.items()
        }
        ready = None
        if cuda and pieces:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        return Band(self.row, self.height, pieces, ready)


class BlockRows:
    """Regroups finished bands into writes that start and end on block-row boundaries, chunk by chunk.

    A compressed GeoTIFF block written twice is stored twice; writing whole block rows once keeps the file
    compact and lets GDAL evict finished blocks from its cache. A chunk's rows that stop short of a block
    row wait for the next band; if that band has nothing there, they are completed with nodata.
    """

    def __init__(self, write: Callable[[int, Piece], None], block: int, nodata: int, num_classes: int) -> None:
        self._write, self.block, self.nodata, self.k = write, block, nodata, num_classes
        self.rest: dict[int, tuple[int, Piece]] = {}  # chunk -> (first row, rows short of a block row)

    def _blank(self, like: Piece, height: int) -> Piece:
        w = like.classes.shape[1]
        probs = None if like.probs is None else np.full((self.k, height, w), 255, dtype=np.uint8)
        return Piece(
            like.x, np.full((height, w), self.nodata, like.classes.dtype), np.full((height, w), 255, np.uint8), probs
        )

    def __call__(self, band: Band) -> None:
        for i in sorted(set(band.pieces) | set(self.rest)):
            row, pieces = band.row, [band.pieces[i]] if i in band.pieces else []
            if i in self.rest:
                row, rest = self.rest.pop(i)
                if not pieces:  # nothing more here: complete the block row with nodata and write it
                    pad = min(band.row + band.height, -(-(row + rest.height) // self.block) * self.block)
                    pad -= row + rest.height
                    self._write(row, Piece.stack([rest, self._blank(rest, pad)]) if pad > 0 else rest)
                    continue
                pieces.insert(0, rest)
            piece = Piece.stack(pieces)
            end = row + piece.height
            cut = end - end % self.block
            if cut > row:
                self._write(row, piece.rows(0, cut - row))
            if end > max(cut, row):
                self.rest[i] = (max(cut, row), piece.rows(max(cut, row) - row, piece.height))

    def flush(self) -> None:
        for row, piece in self.rest.values():
            self._write(row, piece)
        self.rest.clear()


class BandWriter:
    """Writes finished bands in a background thread (the device never waits on the disk).

    ``origin`` is the scene row of the written file's first row (a part file holds a strip of the scene):
    bands are written at their rows less ``origin``, in whole block rows of that file.
    """

    def __init__(
        self,
        write: Callable[[int, Piece], None],
        nodata: int,
        num_classes: int,
        depth: int = 2,
        block: int = 256,
        origin: int = 0,
    ) -> None:
        self._rows = BlockRows(write, block, nodata, num_classes)
        self.origin = origin
        self._queue: queue.Queue[Band | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="lemevit-write", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (band := self._queue.get()) is not None:
            if self._error is None:
                try:
                    band.wait()  # pieces copied from the device asynchronously
                    self._rows(band)
                except BaseException as exc:  # re-raised in the main thread
                    self._error = exc

    def put(self, band: Band) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(Band(band.row - self.origin, band.height, band.pieces, band.ready) if self.origin else band)

    def close(self) -> None:
        """Write what is queued and the last block rows; re-raise the writer's error. Interrupted on the way
        (a signal), the writer is stopped and joined before the interruption goes on."""
        try:
            self._queue.put(None)
            self._thread.join()
        except BaseException:
            self.abort()
            raise
        if self._error is None:
            self._rows.flush()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop the writer without writing what is queued, and wait until it has left GDAL, so the files can
        be closed and removed (closing a dataset that the thread still writes ends the process)."""
        if self._error is None:
            self._error = _Aborted()
        pending: BaseException | None = None
        while self._thread.is_alive():
            try:
                with contextlib.suppress(queue.Full):
                    self._queue.put(None, timeout=0.1)
                self._thread.join(timeout=0.1)
            except BaseException as exc:  # a signal while waiting: wait on, then let it go on
                pending = pending or exc
        if pending is not None:
            raise pending


class _Aborted(Exception):
    """The writer was stopped (:meth:`BandWriter.abort`): queued bands are dropped."""


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

    def add(
        self, tile: Tile, logits: torch.Tensor, valid: torch.Tensor, host_valid: np.ndarray, out: OutputRows
    ) -> None:
        """Set the pixels ``tile`` owns from its logits ``(K, T, T)`` and valid mask (on the device and host)."""
        (y0, y1), (x0, x1) = self.own_y[tile.row], self.own_x[tile.col]
        ty, tx = slice(y0 - tile.y, y1 - tile.y), slice(x0 - tile.x, x1 - tile.x)
        out.set(slice(0, y1 - y0), slice(x0, x1), logits[:, ty, tx], valid[ty, tx], bool(host_valid[ty, tx].any()))

    def finish(self, out: OutputRows) -> None:
        """Every owned pixel was set as its tile arrived."""


class BlendMerge:
    """Seams by blending: overlapping logits averaged with a smooth window.

    Rows ``[ys[r], ys[r + 1])`` finish in tile row ``r``; the rows below, down to the tiles' bottom edge,
    carry over to the next tile row. Accumulators (K logit sums and one weight sum) live on the device in a
    window two tiles wide that slides left to right, and in a carry of overlap height kept in column chunks
    where it holds weight. ``right`` bounds the window's columns that hold anything, so empty stretches cost
    nothing. Where the weights are non-zero is mirrored on the host (``cover``: the union of the tiles' valid
    masks), so these decisions never wait for the device.
    """

    def __init__(self, grid: TileGrid, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.grid, self.k = grid, num_classes
        self.device = torch.device(device)
        self.weights = torch.from_numpy(blend_window(grid.tile, grid.overlap)).to(self.device)
        self.height = 0  # rows the current tile row covers
        self.finished = 0  # of which the first ``finished`` finish in it
        self.wx = 0  # scene column of the window's first column
        self.right = 0  # scene column past the last window column that may hold weight
        self.win = torch.zeros((num_classes + 1, grid.tile, 2 * grid.tile), dtype=torch.float32, device=self.device)
        self.cover = np.zeros((grid.tile, 2 * grid.tile), dtype=bool)  # where ``win`` holds weight
        self.carry: dict[int, tuple[torch.Tensor, np.ndarray]] = {}  # built for the next tile row, by chunk
        self.prev_carry: dict[int, tuple[torch.Tensor, np.ndarray]] = {}  # left by the previous tile row
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
        self.win.zero_()
        self.cover[:] = False
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
            carried = self.prev_carry.get(i)
            if carried is not None:
                chunk, cover = carried
                keep = min(chunk.shape[1], self.height)
                dst, src = slice(c0 - self.wx, c1 - self.wx), slice(c0 - i * CHUNK, c1 - i * CHUNK)
                self.win[:, :keep, dst] = chunk[:, :keep, src]
                self.cover[:keep, dst] = cover[:keep, src]
                self.right = max(self.right, c1)

    def _keep(self, x0: int, data: torch.Tensor, cover: np.ndarray) -> None:
        """Carry window rows below the finished ones, scene columns [x0, x0 + width), into the next tile row."""
        for i, c0, c1 in self._chunks(x0, x0 + data.shape[2]):
            part = cover[:, c0 - x0 : c1 - x0]
            if not part.any():
                continue
            carried = self.carry.get(i)
            if carried is None:
                w = min(CHUNK, self.grid.width - i * CHUNK)
                chunk = torch.zeros((self.k + 1, data.shape[1], w), dtype=torch.float32, device=self.device)
                carried = self.carry[i] = (chunk, np.zeros((data.shape[1], w), dtype=bool))
            dst = slice(c0 - i * CHUNK, c1 - i * CHUNK)
            carried[0][:, :, dst] = data[:, :, c0 - x0 : c1 - x0]
            carried[1][:, dst] = part

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
                logits = self.win[: self.k, : self.finished, a:b] / torch.where(valid, wsum, 1.0)
                occupied = bool(self.cover[: self.finished, a:b].any())
                out.set(slice(0, self.finished), slice(self.wx + a, self.wx + b), logits, valid, occupied)
            if h > self.finished:
                self._keep(self.wx, self.win[:, self.finished : h, :m], self.cover[self.finished : h, :m])
            if self.right > x_end:
                self.win[:, :, : width - n] = self.win[:, :, n:].clone()
                self.win[:, :, width - n :] = 0.0
                self.cover[:, : width - n] = self.cover[:, n:].copy()
                self.cover[:, width - n :] = False
            else:
                self.win[:, :, : self.right - self.wx] = 0.0
                self.cover[:, : self.right - self.wx] = False
        self.wx = x_end
        self.right = max(self.right, x_end)
        self._fill(width - n, width)

    def add(
        self, tile: Tile, logits: torch.Tensor, valid: torch.Tensor, host_valid: np.ndarray, out: OutputRows
    ) -> None:
        """Accumulate a tile's logits ``(K, T, T)``, weighted by the window where ``valid`` (device and host)."""
        h, w = tile.clipped(self.grid.height, self.grid.width)
        self._flush_columns(tile.x, out)
        wgt = self.weights[:h, :w] * valid[:h, :w]
        self.win[: self.k, :h, :w] += logits[:, :h, :w] * wgt
        self.win[self.k, :h, :w] += wgt
        self.cover[:h, :w] |= host_valid[:h, :w]
        self.right = max(self.right, tile.x + w)

    def finish(self, out: OutputRows) -> None:
        self._flush_columns(self.grid.width, out)


class DenseStitcher:
    """Sink for per-pixel logits ``(K, T, T)`` on ``device``: merges tile rows and hands finished bands to a writer.

    ``rows`` limits it to tile rows ``[rows[0], rows[1])`` (a strip of a scale-out part); bands of the tile
    rows before ``keep`` (the strip's halo, run only to rebuild the blend carry) are not written or counted.
    ``layout`` lists every band handed on: its first scene row, height and the column chunks it holds, so a
    merge can hand on the same bands in the same order.
    """

    #: :func:`~lemevit_geo.pipelines.inference.engine.run_tiles` hands this sink tensors on the model's device.
    device_outputs = True

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
        device: torch.device | str = "cpu",
    ) -> None:
        self.grid, self.k, self.writer = grid, num_classes, writer
        self.nodata, self.with_probs = nodata, with_probs
        self.device = torch.device(device)
        crop = Stitch(mode) == Stitch.crop
        self.merge = CropMerge(grid) if crop else BlendMerge(grid, num_classes, self.device)
        self.last_col = len(grid.xs) - 1
        self._counts = torch.zeros(num_classes, dtype=torch.int64, device=self.device)
        self.row, self.stop = rows or (0, len(grid.ys))
        self.keep = self.row if keep is None else keep
        self.layout: list[tuple[int, int, list[int]]] = []
        self.halo_tiles_run = 0
        self.out = self._start(self.row)

    @property
    def counts(self) -> np.ndarray:
        """Pixels per class of the bands handed on (read from the device: call it after the run)."""
        return self._counts.cpu().numpy()

    def _start(self, r: int) -> OutputRows:
        y0, y1 = self.merge.rows(r)
        self.merge.start(r)
        return OutputRows(y0, y1 - y0, self.grid.width, self.k, self.nodata, self.with_probs, self.device)

    def _check(self, item: TileData) -> None:
        if item.tile.row != self.row:
            raise RuntimeError("tiles must arrive in grid order")

    def _after(self, col: int) -> None:
        if col != self.last_col:
            return
        self.merge.finish(self.out)
        if self.row >= self.keep:
            band = self.out.band()
            self._counts += self.out.class_counts()
            self.layout.append((band.row, band.height, sorted(band.pieces)))
            self.writer.put(band)
        if self.row + 1 < self.stop:
            self.row += 1
            self.out = self._start(self.row)

    # -- sink protocol -----------------------------------------------------------------------
    def add(self, item: TileData, output: torch.Tensor | np.ndarray) -> None:
        """Take a tile's logits: a tensor on the device (with ``item.valid_device`` from ``run_tiles``), or an
        array on the host."""
        self._check(item)
        assert item.valid is not None
        logits = torch.as_tensor(output).to(self.device, torch.float32)
        valid = item.valid_device if item.valid_device is not None else torch.from_numpy(item.valid).to(self.device)
        self.merge.add(item.tile, logits, valid, item.valid, self.out)
        self.halo_tiles_run += item.tile.row < self.keep
        self._after(item.tile.col)

    def skip(self, item: TileData) -> None:
        self._check(item)
        self._after(item.tile.col)

    def close(self) -> None:
        self.writer.close()
