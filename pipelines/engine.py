"""The inference engine every command shares.

Windows are read ahead in background threads (one dataset handle per thread; GDAL releases the GIL),
yielded in grid order so batches are formed in a fixed order whatever order reads finish in, run on
the device in batches, and handed in order to a *sink* that turns model outputs into files: a dense
stitcher (class rasters), a per-tile collector (scene labels), or, later, a box merger (detections).
Memory is bounded by the tiles in flight, not by the scene size.
"""

from __future__ import annotations

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
from lemevit_geo.pipelines.tiling import Tile, TileGrid
from lemevit_geo.raster import SourceInfo, normalise
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
    """One raster the engine reads: how to open it (per thread), which bands, and their normalisation.

    ``opener`` returns an open dataset (a ``DatasetReader`` or a ``WarpedVRT`` onto another grid).
    """

    info: SourceInfo
    mean: np.ndarray
    std: np.ndarray
    opener: Opener | None = None
    offset: tuple[int, int] = (0, 0)  # (row, col) of the output grid's origin in this source's pixels

    def open(self) -> DatasetReader:
        return self.opener() if self.opener else rasterio.open(self.info.path)


@dataclass
class TileData:
    """A read tile: normalised bands ``(C, T, T)`` (padded to the tile size) and the valid-pixel mask.

    ``data`` is None for a tile with no valid pixel: it is not run through the model.
    """

    tile: Tile
    data: np.ndarray | None
    valid: np.ndarray


class TileReader:
    """Read tiles of one or more co-registered sources in background threads, in grid order.

    With several sources (the dates of a change pair) their bands are concatenated and a pixel is
    valid only where it is valid in every source.
    """

    def __init__(self, sources: Sequence[SourceSpec], grid: TileGrid, threads: int = 2, prefetch: int = 16) -> None:
        self.sources = list(sources)
        self.grid = grid
        self.threads = max(1, threads)
        self.prefetch = max(prefetch, self.threads)
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def _handles(self) -> list[Any]:
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = [s.open() for s in self.sources]
            self._local.handles = handles
            with self._lock:
                self._opened.extend(handles)
        return handles

    def read(self, tile: Tile) -> TileData:
        """Read one tile from every source (called in a worker thread)."""
        h, w = tile.clipped(self.grid.height, self.grid.width)
        size = tile.size
        valid = np.zeros((size, size), dtype=bool)
        valid[:h, :w] = True
        parts = []
        for spec, src in zip(self.sources, self._handles(), strict=True):
            oy, ox = spec.offset
            arr = src.read(indexes=list(spec.info.bands), window=Window(tile.x + ox, tile.y + oy, w, h), masked=True)
            # GDAL's dataset-mask rule: a pixel is nodata only where every band is nodata
            valid[:h, :w] &= ~np.ma.getmaskarray(arr).all(axis=0)
            parts.append((spec, np.ma.getdata(arr)))
        if not valid.any():
            return TileData(tile, None, valid)
        bands = sum(len(spec.info.bands) for spec, _ in parts)
        data = np.zeros((bands, size, size), dtype=np.float32)
        b = 0
        for spec, arr in parts:
            n = arr.shape[0]
            data[b : b + n, :h, :w] = normalise(arr, spec.mean, spec.std)
            b += n
        data[:, ~valid] = 0.0
        return TileData(tile, data, valid)

    def __iter__(self) -> Iterator[TileData]:
        tiles = self.grid.tiles()
        pending: deque[Future[TileData]] = deque()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="lemevit-read") as pool:
            try:
                it = iter(tiles)
                for tile in it:
                    pending.append(pool.submit(self.read, tile))
                    if len(pending) >= self.prefetch:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for f in pending:
                    f.cancel()
        for handle in self._opened:
            handle.close()


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
    """Feed tiles from ``reader`` through ``model`` in batches of ``runtime.batch_size`` valid tiles into ``sink``."""
    stats = RunStats()
    pending: list[TileData] = []
    batch_size = runtime.batch_size

    def flush() -> None:
        run = [p for p in pending if p.data is not None]
        outputs = run_model(model, np.stack([p.data for p in run]), runtime.device, runtime.dtype) if run else []
        it = iter(outputs)
        for p in pending:
            if p.data is None:
                sink.skip(p)
                stats.tiles_skipped += 1
            else:
                sink.add(p, next(it))
                stats.tiles_run += 1
        stats.batches += bool(run)
        if progress:
            progress.advance(len(pending))
        pending.clear()

    try:
        for item in reader:
            stats.tiles += 1
            pending.append(item)
            if sum(p.data is not None for p in pending) >= batch_size:
                flush()
        if pending:
            flush()
    finally:
        sink.close()  # also on errors: background writers must stop before their files are removed
    return stats
