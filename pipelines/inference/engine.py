"""The inference engine every command shares.

Windows are read ahead in background threads (one dataset handle per thread; GDAL releases the GIL),
yielded in grid order so batches are formed in a fixed order whatever order reads finish in, run on
the device in batches, and handed in order to a *sink* that turns model outputs into files: a dense
stitcher (class rasters), a per-tile collector (scene labels), or, later, a box merger (detections).
Memory is bounded by the tiles in flight, not by the scene size.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from rasterio.io import DatasetReader
from rasterio.windows import Window

from lemevit_geo.device import (
    autocast,
    cpu_batch_size,
    precision_name,
    resolve_compile,
    resolve_device,
    resolve_precision,
    resolve_threads,
)
from lemevit_geo.errors import InputError, LemevitWarning
from lemevit_geo.pipelines.inference.tiling import Tile, TileGrid
from lemevit_geo.raster import READ_ERRORS, MaskPlan, SourceInfo, decode_threads, normalise, open_source, read_error
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
    """The device side of a run: device, compute dtype, batch size, reader threads and compilation.

    ``batch_size`` 0 stands for ``auto``: :meth:`fit` resolves it from the model and the tile shape.
    """

    device: torch.device
    dtype: torch.dtype
    batch_size: int
    threads: int
    compile: bool = False

    @classmethod
    def create(cls, engine: Engine) -> Runtime:
        """Resolve an :class:`~lemevit_geo.settings.Engine` (``auto`` device, precision, threads, compile) on this
        machine; an ``auto`` batch size is resolved by :meth:`fit` once the tile shape is known."""
        device = resolve_device(engine.device)
        batch = 0 if engine.batch_size == "auto" else int(engine.batch_size)
        return cls(
            device,
            resolve_precision(engine.precision, device),
            batch,
            resolve_threads(engine.threads, device),
            resolve_compile(engine.compile, device),
        )

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device, channels-last, in eval mode; wrapped for ``torch.compile`` if compiling."""
        model = model.to(self.device, memory_format=torch.channels_last).eval()
        return CompiledModel(model) if self.compile else model

    def fit(self, model: torch.nn.Module, shape: tuple[int, ...], row: int | None = None) -> int:
        """Resolve an ``auto`` batch size for input tiles of ``shape`` ``(C, T, T)``: the largest batch whose forward
        pass fits the GPU's free memory (probed), or :func:`~lemevit_geo.device.cpu_batch_size`.

        With ``row`` (tiles per tile row) the batch is at most a row: batches never span tile rows, so this forms
        the same batches, and a compiled model then runs whole rows in one shape instead of padding them.
        """
        if not self.batch_size:
            if self.device.type == "cuda":
                self.batch_size = probe_batch_size(model, shape, self.device, self.dtype, limit=row or MAX_AUTO_BATCH)
            else:
                self.batch_size = cpu_batch_size(shape[-1])
        if row:
            self.batch_size = min(self.batch_size, row)
        return self.batch_size

    def padded(self, n: int) -> int:
        """The batch a compiled model runs for ``n`` tiles: the batch size, or a quarter, a sixteenth, ... of it
        (at most five fixed shapes, so a partial batch is padded, not compiled again)."""
        if not self.compile:
            return n
        size = max(self.batch_size, n)
        while size // 4 >= n and size > 1:
            size //= 4
        return size

    def summary(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "precision": precision_name(self.dtype),
            "batch_size": self.batch_size,
            "threads": self.threads,
            "compile": self.compile,
        }


#: Most tiles an ``auto`` batch probe tries on a GPU.
MAX_AUTO_BATCH = 512
#: Share of the GPU's free memory an ``auto`` batch may use at its peak (the rest: stitching, the allocator).
AUTO_BATCH_MEMORY = 0.6


def probe_batch_size(
    model: torch.nn.Module,
    shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    limit: int = MAX_AUTO_BATCH,
) -> int:
    """The largest batch of zero tiles of ``shape`` whose forward pass on CUDA peaks below
    :data:`AUTO_BATCH_MEMORY` of the free memory (1 if even that does not fit). Tried: the powers of two below
    ``limit`` (at most :data:`MAX_AUTO_BATCH`), then ``limit`` itself (a whole tile row)."""
    limit = max(1, min(limit, MAX_AUTO_BATCH))
    sizes = [2**i for i in range(limit.bit_length()) if 2**i < limit] + [limit]
    free, _ = torch.cuda.mem_get_info(device)
    budget, best = AUTO_BATCH_MEMORY * free, 1
    model = model.eager if isinstance(model, CompiledModel) else model
    for batch in sizes:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        try:
            x = torch.zeros((batch, *shape), device=device).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast(device, dtype):
                model(x)
            torch.cuda.synchronize(device)
        except torch.OutOfMemoryError:
            break
        if torch.cuda.max_memory_allocated(device) - base > budget:
            break
        best = batch
    torch.cuda.empty_cache()
    return best


class CompiledModel(torch.nn.Module):
    """A model run through ``torch.compile`` on fixed batch shapes (see :meth:`Runtime.padded`), falling back to
    the eager model, with one warning line, if compiling fails."""

    def __init__(self, model: torch.nn.Module, backend: str | Callable[..., Any] = "inductor") -> None:
        super().__init__()
        self.eager = model
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = torch.compile(
            model, dynamic=False, backend=backend
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # a compiler that is missing or fails: run eager
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                warnings.warn(f"torch.compile failed, running eager: {first}", LemevitWarning, stacklevel=2)
                self.compiled = None
        return self.eager(x)


def eager_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, under a :class:`CompiledModel` wrapper if there is one (its attributes are the model's)."""
    return model.eager if isinstance(model, CompiledModel) else model


class Uploader:
    """Copies batches of tiles (and their valid masks) to the device.

    On CUDA the host side is a ring of pinned buffers reused from batch to batch, the copies run on a side
    stream that the compute stream waits for (no host synchronisation), and a buffer is refilled only after
    its copy of ``depth`` batches ago has finished, so that many batches may be in flight. Elsewhere the batch
    is used as it is.
    """

    def __init__(self, device: torch.device, depth: int = 3) -> None:
        self.device, self.depth = device, depth
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.buffers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth
        self.events: list[Any] = [None] * depth
        self.count = 0

    def __call__(
        self, data: list[np.ndarray], valid: list[np.ndarray] | None, size: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``data`` stacked as ``(size, C, T, T)`` on the device (zero tiles past ``len(data)``), and ``valid``
        stacked as ``(len(data), T, T)`` if given."""
        n = len(data)
        if not self.cuda:
            x = torch.from_numpy(np.stack(data))
            if size > n:
                x = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
            return x.to(self.device), None if valid is None else torch.from_numpy(np.stack(valid)).to(self.device)
        slot = self.count % self.depth
        self.count += 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # this buffer's previous copy is done (batches ago)
        buf = self.buffers[slot]
        shape = (size, *data[0].shape)
        if buf is None or buf[0].shape[0] < size or buf[0].shape[1:] != shape[1:]:
            capacity = max(size, buf[0].shape[0] if buf is not None else 0)
            buf = (
                torch.empty((capacity, *shape[1:]), dtype=torch.float32, pin_memory=True),
                torch.empty((capacity, *shape[2:]), dtype=torch.bool, pin_memory=True),
            )
            self.buffers[slot] = buf
        host_x, host_v = buf[0][:size], buf[1][:n]
        np.stack(data, out=host_x[:n].numpy())
        if size > n:
            host_x[n:].zero_()
        if valid is not None:
            np.stack(valid, out=host_v.numpy())
        assert self.stream is not None
        main = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            x = host_x.to(self.device, non_blocking=True)
            v = host_v.to(self.device, non_blocking=True) if valid is not None else None
            event = torch.cuda.Event()
            event.record(self.stream)
        self.events[slot] = event
        main.wait_stream(self.stream)
        x.record_stream(main)
        if v is not None:
            v.record_stream(main)
        return x, v


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

    def open(self, threads: int = 1) -> DatasetReader:
        """Open the source; a plain GeoTIFF decompresses each read in ``threads`` threads."""
        return self.opener() if self.opener else open_source(self.info.path, threads)

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
    #: The valid mask on the model's device, set by :func:`run_tiles` for sinks that take device tensors.
    valid_device: torch.Tensor | None = None


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
        self.decode = decode_threads(self.threads)
        self.prefetch = max(prefetch, self.threads)
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def _handles(self) -> list[Any]:
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = []
            for spec in self.sources:
                handle = spec.open(self.decode)
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
            raise InputError(f"{spec.info.label}: reading the {where} failed: {read_error(exc)}") from exc

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


def forward(model: torch.nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Run ``model`` on a batch already on ``device``; float32 outputs, on the device."""
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, dtype):
        out = model(x)
    return out.float()


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

    A sink with ``device_outputs`` True gets each tile's output as a tensor on the model's device and its
    valid mask there too (``TileData.valid_device``): nothing waits for the device per batch, and on CUDA
    the next batches are read, staged and copied while the device works. Other sinks get numpy arrays. An
    ``auto`` batch size is resolved from the first tile run; a compiled model runs padded batches.
    """
    batches = _Batches(model, sink, runtime, progress)
    try:
        for item in reader:
            batches.take(item)
        batches.flush()
    finally:
        sink.close()  # also on errors: background writers must stop before their files are removed
    return batches.stats


class _Batches:
    """The tiles of :func:`run_tiles` waiting for a batch (of one tile row), and the run of each batch."""

    def __init__(self, model: torch.nn.Module, sink: Sink, runtime: Runtime, progress: Progress | None) -> None:
        self.model, self.sink, self.runtime, self.progress = model, sink, runtime, progress
        self.stats = RunStats()
        self.pending: list[TileData] = []
        self.waiting = 0  # valid tiles in pending
        self.on_device = bool(getattr(sink, "device_outputs", False))
        self.upload = Uploader(runtime.device)

    def take(self, item: TileData) -> None:
        """Queue a tile; run the batch when it is full, when a new tile row starts, or pass on empty tiles."""
        self.stats.tiles += 1
        if item.data is not None and not self.runtime.batch_size:
            self.runtime.fit(self.model, item.data.shape)
        if self.pending and item.tile.row != self.pending[0].tile.row:
            self.flush()
        self.pending.append(item)
        self.waiting += item.data is not None
        if self.waiting >= self.runtime.batch_size or not self.waiting:
            self.flush()

    def _run(self, run: list[TileData]) -> tuple[Any, Any]:
        """Outputs of the valid tiles ``run`` (device tensors or numpy arrays) and their device masks (or Nones)."""
        if not run:
            return [], []
        n = len(run)
        valid = [p.valid for p in run] if self.on_device else None
        x, v = self.upload([p.data for p in run], valid, self.runtime.padded(n))
        out = forward(self.model, x, self.runtime.device, self.runtime.dtype)[:n]
        return (out if self.on_device else out.cpu().numpy()), ([None] * n if v is None else v)

    def flush(self) -> None:
        """Run the valid pending tiles as one batch and hand every pending tile to the sink, in grid order."""
        run = [p for p in self.pending if p.data is not None]
        outputs, valids = self._run(run)
        it, vs = iter(outputs), iter(valids)
        for p in self.pending:
            if p.data is None:
                self.sink.skip(p)
            else:
                valid = next(vs)
                self.sink.add(p if valid is None else dataclasses.replace(p, valid_device=valid), next(it))
        self.stats.tiles_run += len(run)
        self.stats.tiles_skipped += len(self.pending) - len(run)
        self.stats.batches += bool(run)
        if self.progress:
            self.progress.advance(len(self.pending))
        self.pending.clear()
        self.waiting = 0


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
