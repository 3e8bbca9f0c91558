"""The fast path of issue 14, on the CPU: the device stitcher equals the earlier numpy one bit for bit, batches
are staged and padded as on a GPU, ``auto`` settings resolve, and a compiled model equals the eager one."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lemevit_geo.choices import Compile, Stitch
from lemevit_geo.device import cpu_batch_size, resolve_compile, resolve_threads
from lemevit_geo.errors import InputError, LemevitWarning
from lemevit_geo.pipelines.inference import stitch
from lemevit_geo.pipelines.inference.engine import CompiledModel, Runtime, TileData, Uploader, run_tiles
from lemevit_geo.pipelines.inference.tiling import TileGrid
from lemevit_geo.settings import Engine
from tests import numpy_stitch


class Collect:
    """A writer that keeps the bands it is handed (after waiting for them, as the writer thread does)."""

    def __init__(self) -> None:
        self.bands: list = []

    def put(self, band: object) -> None:
        if hasattr(band, "wait"):
            band.wait()
        self.bands.append(band)

    def close(self) -> None:
        pass


def synthetic_tiles(grid: TileGrid, k: int, seed: int, empty: float) -> list[tuple[TileData, np.ndarray]]:
    """Tiles with random logits (large enough to saturate the softmax sometimes) and random nodata holes;
    a share ``empty`` of them hold no valid pixel."""
    rng = np.random.default_rng(seed)
    tiles = []
    for tile in grid.tiles():
        if rng.random() < empty:
            tiles.append((TileData(tile, None, None), np.zeros(0)))
            continue
        valid = np.ones((grid.tile, grid.tile), dtype=bool)
        h, w = tile.clipped(grid.height, grid.width)
        valid[h:, :] = valid[:, w:] = False
        y, x = rng.integers(0, grid.tile, 2)
        valid[y : y + grid.tile // 3, x : x + grid.tile // 4] = False
        logits = (rng.standard_normal((k, grid.tile, grid.tile)) * rng.choice([0.5, 4.0, 30.0])).astype(np.float32)
        tiles.append((TileData(tile, np.zeros((1, 1, 1), np.float32), valid), logits))
    return tiles


def stitched(module: object, grid: TileGrid, k: int, mode: Stitch, tiles: list, nodata: int, **kw: object) -> list:
    writer = Collect()
    sink = module.DenseStitcher(grid, k, mode, writer, nodata, True, **kw)
    for item, logits in tiles:
        if item.valid is None:
            sink.skip(item)
        else:
            sink.add(item, torch.from_numpy(logits) if module is stitch else logits)
    sink.close()
    return [writer.bands, sink.counts.tolist(), sink.layout]


@pytest.mark.parametrize("mode", [Stitch.crop, Stitch.blend])
@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "k", "empty"),
    [(300, 2700, 128, 40, 6, 0.5), (333, 517, 96, 32, 4, 0.1), (97, 61, 64, 16, 3, 0.0)],
)
def test_device_stitcher_equals_the_numpy_stitcher_bit_for_bit(
    mode: Stitch, height: int, width: int, tile: int, overlap: int, k: int, empty: float
) -> None:
    grid = TileGrid(height, width, tile, overlap)
    tiles = synthetic_tiles(grid, k, seed=height + width, empty=empty)
    new_bands, new_counts, new_layout = stitched(stitch, grid, k, mode, tiles, 255)
    old_bands, old_counts, old_layout = stitched(numpy_stitch, grid, k, mode, tiles, 255)
    assert new_counts == old_counts and new_layout == old_layout
    for new, old in zip(new_bands, old_bands, strict=True):
        assert (new.row, new.height, sorted(new.pieces)) == (old.row, old.height, sorted(old.pieces))
        for i, piece in new.pieces.items():
            ref = old.pieces[i]
            assert piece.x == ref.x and piece.classes.dtype == ref.classes.dtype
            np.testing.assert_array_equal(piece.classes, ref.classes)
            np.testing.assert_array_equal(piece.confidence, ref.confidence)
            np.testing.assert_array_equal(piece.probs, ref.probs)


def test_device_stitcher_strips_and_wide_class_ids_equal_the_numpy_stitcher() -> None:
    """A strip with halo rows, and uint16 class rasters (nodata 65535)."""
    grid = TileGrid(400, 300, 64, 24)
    tiles = [t for t in synthetic_tiles(grid, 3, seed=7, empty=0.2) if 2 <= t[0].tile.row < 6]
    for nodata in (255, 65535):
        new = stitched(stitch, grid, 3, Stitch.blend, tiles, nodata, rows=(2, 6), keep=4)
        old = stitched(numpy_stitch, grid, 3, Stitch.blend, tiles, nodata, rows=(2, 6), keep=4)
        assert new[1:] == old[1:]
        for a, b in zip(new[0], old[0], strict=True):
            for i in a.pieces:
                assert a.pieces[i].classes.dtype == b.pieces[i].classes.dtype
                np.testing.assert_array_equal(a.pieces[i].classes, b.pieces[i].classes)
                np.testing.assert_array_equal(a.pieces[i].probs, b.pieces[i].probs)


def test_uploader_stacks_and_pads_batches_on_the_cpu() -> None:
    upload = Uploader(torch.device("cpu"))
    data = [np.full((2, 32, 32), i, np.float32) for i in range(3)]
    valid = [np.eye(32, dtype=bool)] * 3
    x, v = upload(data, valid, 4)
    assert x.shape == (4, 2, 32, 32) and float(x[3].abs().sum()) == 0.0 and float(x[2, 0, 0, 0]) == 2.0
    assert v is not None and v.shape == (3, 32, 32) and bool(v[1, 5, 5]) and not bool(v[1, 5, 6])


def test_compiled_batches_are_padded_to_few_shapes() -> None:
    runtime = Runtime(torch.device("cpu"), torch.float32, 64, 1, compile=True)
    assert {runtime.padded(n) for n in range(1, 65)} == {1, 4, 16, 64}
    assert [runtime.padded(n) for n in (1, 2, 5, 17, 64)] == [1, 4, 16, 64, 64]
    assert Runtime(torch.device("cpu"), torch.float32, 64, 1).padded(5) == 5


def test_auto_settings_resolve() -> None:
    cpu = torch.device("cpu")
    assert Engine(batch_size="auto", threads="3").threads == 3 and Engine(batch_size="8").batch_size == 8
    with pytest.raises(InputError, match="batch_size"):
        Engine(batch_size="many")
    with pytest.raises(InputError, match="threads"):
        Engine(threads=0)
    assert resolve_threads("auto", cpu) == 2 and resolve_threads(5, cpu) == 5
    assert 2 <= resolve_threads("auto", torch.device("cuda")) <= 8
    assert (cpu_batch_size(512), cpu_batch_size(224), cpu_batch_size(2048)) == (4, 20, 1)
    assert not resolve_compile(Compile.auto, cpu) and resolve_compile(Compile.auto, torch.device("cuda"))
    assert resolve_compile("on", cpu) and not resolve_compile("off", torch.device("cuda"))
    runtime = Runtime.create(Engine(device="cpu", batch_size="auto"))
    assert runtime.batch_size == 0 and not runtime.compile
    assert runtime.fit(torch.nn.Identity(), (3, 256, 256)) == 16 and runtime.summary()["batch_size"] == 16
    assert runtime.fit(torch.nn.Identity(), (3, 256, 256), row=5) == 5  # batches never span a row of 5 tiles


class Pixels(torch.nn.Module):
    """A small per-pixel net (two 1x1 convolutions), cheap to compile."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def run_grid(model: torch.nn.Module, runtime: Runtime, grid: TileGrid) -> tuple[list, object]:
    rng = np.random.default_rng(1)
    items = [
        TileData(t, rng.standard_normal((3, grid.tile, grid.tile)).astype(np.float32), np.ones((grid.tile,) * 2, bool))
        for t in grid.tiles()
    ]
    writer = Collect()
    sink = stitch.DenseStitcher(grid, 4, Stitch.blend, writer, 255, True)
    stats = run_tiles(iter(items), model, sink, runtime)
    return writer.bands, stats


@pytest.mark.slow  # a real torch.compile (inductor builds C++); the fallback and the padding are checked by default
def test_compiled_model_equals_eager(tmp_path: Path) -> None:
    """``torch.compile`` on padded fixed-size batches (5 tiles a row, batch 4: a full and a padded batch)."""
    grid = TileGrid(96, 160, 32, 0)
    eager_rt = Runtime(torch.device("cpu"), torch.float32, 4, 1)
    compiled_rt = Runtime(torch.device("cpu"), torch.float32, 4, 1, compile=True)
    eager, _ = run_grid(eager_rt.prepare(Pixels()), eager_rt, grid)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LemevitWarning)  # compiling must not fall back here
        model = compiled_rt.prepare(Pixels())
        compiled, stats = run_grid(model, compiled_rt, grid)
    assert isinstance(model, CompiledModel) and model.compiled is not None and stats.batches == 6
    for a, b in zip(eager, compiled, strict=True):
        for i in a.pieces:
            diff = a.pieces[i].probs.astype(int) - b.pieces[i].probs.astype(int)
            assert np.abs(diff).max() <= 1 and (a.pieces[i].classes != b.pieces[i].classes).mean() < 0.01


def test_failed_compile_falls_back_to_eager_with_one_warning() -> None:
    def broken(gm: torch.fx.GraphModule, inputs: list) -> object:
        raise RuntimeError("no compiler here\nmore lines")

    model = CompiledModel(Pixels(), backend=broken)
    x = torch.zeros(2, 3, 8, 8)
    with pytest.warns(LemevitWarning, match="torch.compile failed, running eager") as caught:
        out = model(x)
        model(x)
    assert len(caught) == 1 and model.compiled is None
    torch.testing.assert_close(out, model.eager(x))


@pytest.mark.slow  # six Python processes that each import torch
def test_gpu_benchmark_script_dry_run_on_the_cpu(tmp_path: Path) -> None:
    """``benchmarks/gpu.sh --device cpu --dry-run``: every section at toy sizes, results joined."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(repo / "benchmarks" / "gpu.sh"), "--device", "cpu", "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["env"]["device"] == "cpu"
    (row,) = results["classify"]
    assert row["arch"] == "tiny" and row["mode"] == "eager" and row["img_per_s"] > 0 and "error" not in row
    seg = results["segment"]
    assert seg["tiles"] == 16 and seg["segment_tiles_per_s"] > 0 and seg["gpu_busy_share"] is None
    assert "## segment end to end" in (out / "results.md").read_text()


def test_segment_with_auto_batch_and_threads_from_the_command_line(tmp_path: Path, seg_bundle: Path) -> None:
    import json

    import rasterio

    from tests.conftest import cli, textured_scene, write_raster

    src = write_raster(tmp_path / "scene.tif", textured_scene(200, 260, seed=5))
    runs = {}
    for name, extra in {"auto": ["--batch-size", "auto", "--threads", "auto"], "fixed": ["--batch-size", "3"]}.items():
        out = tmp_path / f"{name}.tif"
        summary = json.loads(
            cli("segment", src, "-o", out, "-m", seg_bundle, "--compile", "off", "--json", *extra).output
        )
        with rasterio.open(out) as ds:
            runs[name] = (summary, ds.read(1))
    auto = runs["auto"][0]
    assert auto["threads"] == 2 and auto["compile"] is False
    row = len(TileGrid(auto["height"], auto["width"], auto["tile_size"], auto["overlap"]).xs)
    assert auto["batch_size"] == min(cpu_batch_size(auto["tile_size"]), row)  # at most a tile row
    # other batches: the same classes but where a batch-dependent last bit tips a near tie
    assert (runs["auto"][1] != runs["fixed"][1]).mean() < 1e-3


def test_gdal_cache_holds_a_tile_row_and_decoding_threads_share_the_cores(tmp_path: Path, monkeypatch) -> None:
    import rasterio

    from lemevit_geo.raster import (
        MAX_RUN_CACHE_BYTES,
        RUN_CACHE_BYTES,
        decode_threads,
        gdal_env,
        inspect_source,
        open_source,
        tile_row_bytes,
    )
    from tests.conftest import textured_scene, write_raster

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    info = inspect_source(write_raster(tmp_path / "s.tif", textured_scene(64, 96)), None, 3)
    assert tile_row_bytes([info], 512) == 96 * (512 + 256) * 3
    wide = [info.__class__(**{**info.__dict__, "width": 100_000, "dtype": "uint16"})]
    assert tile_row_bytes(wide, 1024) == 100_000 * 1280 * 3 * 2
    for sources, tile, expected in [([], 0, RUN_CACHE_BYTES), ([info], 512, RUN_CACHE_BYTES)]:
        with gdal_env(sources, tile):
            assert int(rasterio.env.getenv()["GDAL_CACHEMAX"]) == expected
    with gdal_env(wide * 3, 1024):
        assert int(rasterio.env.getenv()["GDAL_CACHEMAX"]) == MAX_RUN_CACHE_BYTES
    assert decode_threads(1) >= decode_threads(2) >= decode_threads(1000) == 1
    with open_source(info.path, 2) as ds:
        assert ds.read().shape == (3, 64, 96)
