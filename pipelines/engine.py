"""The inference engine every command shares.

Windows are read ahead in background threads (one dataset handle per thread; GDAL releases the GIL),
yielded in grid order so batches are formed in a fixed order whatever order reads finish in, run on
the device in batches, and handed in order to a *sink* that turns model outputs into files: a dense
stitcher (class rasters), a per-tile collector (scene labels), or, later, a box merger (detections).
Memory is bounded by the tiles in flight, not by the scene size.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import rasterio
import torch
from rasterio.io import DatasetReader
from rasterio.windows import Window

from lemevit_geo.device import autocast, precision_name, resolve_device, resolve_precision
from lemevit_geo.errors import InputError
from lemevit_geo.pipelines.tiling import Tile, TileGrid
from lemevit_geo.raster import READ_ERRORS, MaskPlan, SourceInfo, normalise, read_error
from lemevit_geo.settings import Engine

Opener = Callable[[], Any]


class Progress(Protocol):
    """Where a run reports its progress (the CLI's progress bar)."""

    def start(self, total: int) -> None:
        """The run has checked its inputs and will process ``total`` tiles."""

    def advance(self, n: int) -> None:
        """``n`` more tiles are done."""


@dataclass
class Runtime:
    """The device side of a run: device, compute dtype, batch size and reader threads."""

    device: torch.device
    dtype: torch.dtype
    batch_size: int
    threads: int

    @classmethod
    def create(cls, engine: Engine) -> Runtime:
        """Resolve an :class:`~lemevit_geo.settings.Engine` (``auto`` device and precision) on this machine."""
        device = resolve_device(engine.device)
        return cls(device, resolve_precision(engine.precision, device), engine.batch_size, engine.threads)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device, channels-last, in eval mode."""
        return model.to(self.device, memory_format=torch.channels_last).eval()

    def summary(self) -> dict[str, Any]:
        return {"device": str(self.device), "precision": precision_name(self.dtype), "batch_size": self.batch_size}


@dataclass
class SourceSpec:
    """One raster the engine reads: how to open it (per thread), which bands, their normalisation and mask.

    ``opener`` returns an open dataset (a ``DatasetReader`` or a ``WarpedVRT`` onto another grid);
    ``mask`` replaces the source's own mask plan when the opener changes it (a warp that adds an alpha band).
    """

    info: SourceInfo
    mean: np.ndarray
    std: np.ndarray
    opener: Opener | None = None
    offset: tuple[int, int] = (0, 0)  # (row, col) of the output grid's origin in this source's pixels
    mask: MaskPlan | None = None

    def open(self) -> DatasetReader:
        return self.opener() if self.opener else rasterio.open(self.info.path)

    @property
    def mask_plan(self) -> MaskPlan:
        return self.mask or self.info.mask


@dataclass
class TileData:
    """A read tile: normalised bands ``(C, T, T)`` (padded to the tile size) and the valid-pixel mask.

    ``data`` and ``valid`` are None for a tile with no valid pixel: it is not run through the model.
    """

    tile: Tile
    data: np.ndarray | None
    valid: np.ndarray | None


class TileReader:
    """Read tiles of one or more co-registered sources in background threads, in grid order.

    With several sources (the dates of a change pair) their bands are concatenated and a pixel is
    valid only where it is valid in every source. Read errors (a corrupt block, a missing VRT source)
    become one :class:`~lemevit_geo.errors.InputError` naming the file and the window. ``rows`` limits
    the reads to tile rows ``[rows[0], rows[1])`` (a strip of a scale-out part).
    """

    def __init__(
        self,
        sources: Sequence[SourceSpec],
        grid: TileGrid,
        threads: int = 2,
        prefetch: int = 16,
        rows: tuple[int, int] | None = None,
    ) -> None:
        self.sources = list(sources)
        self.grid = grid
        self.rows = rows
        self.threads = max(1, threads)
        self.prefetch = max(prefetch, self.threads)
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def _handles(self) -> list[Any]:
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = []
            for spec in self.sources:
                handle = spec.open()
                with self._lock:
                    self._opened.append(handle)
                handles.append(handle)
            self._local.handles = handles
        return handles

    def _read_source(self, spec: SourceSpec, src: Any, window: Window) -> tuple[np.ndarray, np.ndarray]:
        try:
            arr = src.read(indexes=list(spec.info.bands), window=window)
            return arr, spec.mask_plan.valid(src, arr, window)
        except READ_ERRORS as exc:
            where = f"window at column {window.col_off}, row {window.row_off} ({window.width} x {window.height} px)"
            raise InputError(f"{spec.info.path}: reading the {where} failed: {read_error(exc)}") from exc

    def read(self, tile: Tile) -> TileData:
        """Read one tile from every source (called in a worker thread)."""
        h, w = tile.clipped(self.grid.height, self.grid.width)
        size = tile.size
        valid = np.zeros((size, size), dtype=bool)
        valid[:h, :w] = True
        parts = []
        for spec, src in zip(self.sources, self._handles(), strict=True):
            oy, ox = spec.offset
            arr, ok = self._read_source(spec, src, Window(tile.x + ox, tile.y + oy, w, h))
            valid[:h, :w] &= ok
            parts.append((spec, arr))
        if not valid.any():
            return TileData(tile, None, None)
        bands = sum(len(spec.info.bands) for spec, _ in parts)
        data = np.zeros((bands, size, size), dtype=np.float32)
        b = 0
        for spec, arr in parts:
            n = arr.shape[0]
            data[b : b + n, :h, :w] = normalise(arr, spec.mean, spec.std)
            b += n
        data[:, ~valid] = 0.0  # also clears non-finite values
        return TileData(tile, data, valid)

    def __iter__(self) -> Iterator[TileData]:
        tiles = self.grid.tiles(self.rows)
        pending: deque[Future[TileData]] = deque()
        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="lemevit-read") as pool:
                try:
                    for tile in tiles:
                        pending.append(pool.submit(self.read, tile))
                        if len(pending) >= self.prefetch:
                            yield pending.popleft().result()
                    while pending:
                        yield pending.popleft().result()
                finally:
                    for f in pending:
                        f.cancel()
        finally:
            for handle in self._opened:
                handle.close()
            self._opened.clear()


class Sink(Protocol):
    """Where model outputs go, tile by tile in grid order."""

    def add(self, item: TileData, output: np.ndarray) -> None:
        """Take the model output of a tile that was run."""

    def skip(self, item: TileData) -> None:
        """Take a tile with no valid pixel (never run)."""

    def close(self) -> None:
        """Flush everything; called once after the last tile."""


@dataclass
class RunStats:
    """Counts of one engine run."""

    tiles: int = 0
    tiles_run: int = 0
    tiles_skipped: int = 0
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def run_model(model: torch.nn.Module, batch: np.ndarray, device: torch.device, dtype: torch.dtype) -> np.ndarray:
    """Run ``model`` on a float32 numpy batch and return float32 numpy outputs."""
    x = torch.from_numpy(batch)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, dtype):
        out = model(x)
    return out.float().cpu().numpy()


def run_tiles(
    reader: Iterator[TileData],
    model: torch.nn.Module,
    sink: Sink,
    runtime: Runtime,
    progress: Progress | None = None,
) -> RunStats:
    """Feed tiles from ``reader`` through ``model`` in batches of up to ``runtime.batch_size`` valid tiles into
    ``sink``, in grid order.

    A batch never spans two tile rows, so any split of the grid into strips of rows computes exactly what
    the whole run computes (models are not batch-invariant at the last bit). Tiles with no valid pixel
    pass straight to the sink unless valid tiles before them wait for a batch, so long runs of empty
    tiles hold no memory.
    """
    stats = RunStats()
    pending: list[TileData] = []

    def flush() -> None:
        run = [p for p in pending if p.data is not None]
        outputs = run_model(model, np.stack([p.data for p in run]), runtime.device, runtime.dtype) if run else []
        it = iter(outputs)
        for p in pending:
            if p.data is None:
                sink.skip(p)
            else:
                sink.add(p, next(it))
        stats.tiles_run += len(run)
        stats.tiles_skipped += len(pending) - len(run)
        stats.batches += bool(run)
        if progress:
            progress.advance(len(pending))
        pending.clear()

    try:
        waiting = 0  # valid tiles in pending
        for item in reader:
            stats.tiles += 1
            if pending and item.tile.row != pending[0].tile.row:
                flush()
                waiting = 0
            pending.append(item)
            waiting += item.data is not None
            if waiting >= runtime.batch_size or not waiting:
                flush()
                waiting = 0
        flush()
    finally:
        sink.close()  # also on errors: background writers must stop before their files are removed
    return stats


class BackgroundSink:
    """Run another sink in a background thread, in grid order, so the device does not wait for it (box
    merging and vector writing). Tiles are handed over without their image data; an error in the thread
    is raised in the main thread at the next tile or at :meth:`close`.

    Args:
        sink: The sink to run.
        depth: Tiles that may wait for the thread.
    """

    def __init__(self, sink: Sink, depth: int = 8) -> None:
        self.sink = sink
        self.queue: queue.Queue[tuple[str, TileData, np.ndarray | None] | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lemevit-sink", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain: the main thread will raise
            kind, item, output = job
            try:
                self.sink.add(item, output) if kind == "add" else self.sink.skip(item)
            except BaseException as exc:  # handed to the main thread
                self.error = exc

    def _put(self, job: tuple[str, TileData, np.ndarray | None]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(job)

    def add(self, item: TileData, output: np.ndarray) -> None:
        self._put(("add", TileData(item.tile, None, item.valid), output))

    def skip(self, item: TileData) -> None:
        self._put(("skip", item, None))

    def close(self) -> None:
        """Let the thread finish its tiles, then close the sink (it writes nothing more after an error)."""
        self.queue.put(None)
        self.thread.join()
        self.sink.close()
        if self.error is not None:
            raise self.error
