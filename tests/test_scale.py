"""Scale-out: parts and a merge give the bytes of a single-process run, on every executor, and resume.

The scene is ~700 px high with nodata bands across the part boundaries; the model is a tiny LeMeViT (its
outputs depend on context, so a missing halo shows), fp32, one torch thread in every process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from lemevit_geo.bundle import read_config
from lemevit_geo.choices import Stitch
from lemevit_geo.pipelines.inference import tiling
from lemevit_geo.pipelines.inference.dense import dense_predict
from lemevit_geo.pipelines.inference.engine import Runtime
from lemevit_geo.pipelines.inference.segment import plan_segment
from lemevit_geo.pipelines.inference.tiling import TileGrid, finished_rows, strips
from lemevit_geo.pipelines.scaleout.jobs import plan_job
from lemevit_geo.pipelines.scaleout.merge import merge_job
from lemevit_geo.pipelines.scaleout.parts import dense_part
from lemevit_geo.raster import inspect_source
from lemevit_geo.settings import Engine, Tiling
from tests.conftest import CRS, GSD, ORIGIN, cli, cli_main, textured_scene, write_raster

HEIGHT, WIDTH = 700, 240  # tile 128, overlap 16: tile rows at 0, 112, ..., 560 and 572 (the last fits the edge)
FIXED = ["--device", "cpu", "--precision", "fp32", "--overlap", "16"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread here, as in the Ray and Dask workers (LeMeViT on CPU is not thread-count invariant)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scale")


@pytest.fixture(scope="module")
def bundle(data_dir: Path) -> Path:
    path = data_dir / "seg.safetensors"
    args = ["--task", "segment", "--classes", "a,b,c", "--bands", "3", "--tile-size", "128", "--seed", "1"]
    cli("bundle", "init", *args, "-o", path)
    return path


def structured(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth blobs plus noise (uint8, 3 bands): the random tiny model sees regions and predicts several classes."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, height // 32 + 3, width // 32 + 3)).astype(np.float32))
    blobs = torch.nn.functional.interpolate(coarse, scale_factor=32, mode="bicubic")[0, :, :height, :width].numpy()
    return np.clip(blobs * 200 + 20 + rng.normal(0, 8, blobs.shape), 1, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scene(data_dir: Path) -> Path:
    data = structured(HEIGHT, WIDTH, 0)
    data[:, 325:350] = 0  # across the boundary of 2 parts (blend: row 336, crop: 344)
    data[:, 440:465] = 0  # across a boundary of 3 parts (blend: row 448, crop: 456)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    data[:, np.abs(xx - yy / 3 - 10) < 8] = 0  # a slanted band through every strip
    return write_raster(data_dir / "scene.tif", data, nodata=0)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_json(*args: object) -> dict:
    return json.loads(cli(*args, "--json").output)


@pytest.fixture(scope="module")
def reference(data_dir: Path, scene: Path, bundle: Path) -> dict[str, tuple[Path, Path, dict]]:
    """Single-process outputs per seam mode (made when first asked for)."""

    class Lazy(dict):
        def __missing__(self, stitch: str) -> tuple[Path, Path, dict]:
            out, probs = data_dir / f"single_{stitch}.tif", data_dir / f"single_{stitch}_p.tif"
            args = ["--probabilities", probs, *FIXED, "--stitch", stitch]
            self[stitch] = (out, probs, run_json("segment", scene, "-o", out, "-m", bundle, *args))
            return self[stitch]

    return Lazy()


def assert_same_outputs(got: tuple[Path, Path], want: tuple[Path, Path]) -> None:
    """Equal classes, probabilities, grid, metadata and file bytes (class raster, probabilities, category names)."""
    for a, b in zip(got, want, strict=True):
        with rasterio.open(a) as x, rasterio.open(b) as y:
            assert (x.crs, x.transform, x.shape, x.count, x.nodata) == (y.crs, y.transform, y.shape, y.count, y.nodata)
            assert (x.tags(1), x.descriptions, x.scales) == (y.tags(1), y.descriptions, y.scales)
            if x.count == 1:
                assert x.colormap(1) == y.colormap(1)
            np.testing.assert_array_equal(x.read(), y.read())
        assert sha(a) == sha(b)
    assert Path(f"{got[0]}.aux.xml").read_text() == Path(f"{want[0]}.aux.xml").read_text()


# -- the halo rule --------------------------------------------------------------------------------------


def test_strips_cover_the_scene_and_halos_reach_every_contributing_row() -> None:
    grid = TileGrid(HEIGHT, WIDTH, 128, 16)
    ys = grid.ys
    assert ys[-2:] == [560, 572]  # the last row fits the edge: rows 448.. and 560.. both reach past 572
    for stitch in Stitch:
        rows = finished_rows(grid, stitch)
        for n in range(1, len(ys) + 2):
            parts = strips(grid, n, stitch)
            assert len(parts) == min(n, len(ys))
            assert [p.y0 for p in parts[1:]] == [p.y1 for p in parts[:-1]] and (parts[0].y0, parts[-1].y1) == (
                0,
                HEIGHT,
            )
            for p in parts:
                assert (p.y0, p.y1) == (rows[p.first][0], rows[p.stop - 1][1])
                touching = [q for q in range(len(ys)) if ys[q] < p.y0 < ys[q] + grid.tile]
                assert p.halo == (p.first if stitch == Stitch.crop else min([p.first, *touching]))
    assert strips(grid, 7, Stitch.blend)[-1].halo == 4  # two rows back at the fitted edge


class TileContext(torch.nn.Module):
    """Logits from the tile's mean (context) and the pixel: cheap, and wrong wherever a tile row is missing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])
        return torch.cat([m, x[:, :1], -x[:, 1:2] * m], dim=1)


@pytest.mark.parametrize("stitch", [Stitch.blend, Stitch.crop])
def test_every_split_equals_one_run(tmp_path: Path, scene: Path, bundle: Path, stitch: Stitch) -> None:
    """Strips of 1 to 8 parts (one part per tile row included), merged, against one run: identical files."""
    config, model, runtime = read_config(bundle), TileContext(), Runtime(torch.device("cpu"), torch.float32, 3, 2)
    single = tmp_path / "single.tif"
    dense_predict(
        sources=segment_source(scene, config),
        grid_info=inspect_source(scene, None, 3),
        model=model,
        classes=config.classes,
        colors=config.colors,
        output=single,
        runtime=runtime,
        tile_size=128,
        overlap=16,
        stitch=stitch,
    )
    for n in range(1, 9):
        out = tmp_path / f"merged{n}.tif"
        plan = plan_segment(
            image=scene, output=out, model=bundle, engine=Engine(batch_size=3), tiling=Tiling(None, 16, stitch)
        )
        job = plan_job(plan, n)
        job.parts_dir.mkdir()
        sidecars = [dense_part(job, i, model, config, runtime, None) for i in range(job.count)]
        merge_job(job, sidecars)
        assert sha(out) == sha(single), n


def segment_source(scene: Path, config: object) -> list:
    from lemevit_geo.pipelines.inference.plan import source_for

    return [source_for(inspect_source(scene, None, 3), config)]  # type: ignore[arg-type]


# -- the acceptance identity ------------------------------------------------------------------------------


@pytest.mark.parametrize("stitch", ["blend", "crop"])
def test_parts_give_the_bytes_of_one_process(
    tmp_path: Path, scene: Path, bundle: Path, reference: dict, stitch: str
) -> None:
    ref_out, ref_probs, ref_summary = reference[stitch]
    classes = ref_summary["class_pixels"]
    assert sorted(classes.values())[-2] > 5000  # the model really predicts several classes here
    opts = [*FIXED, "--stitch", stitch]
    # two parts, run inline and merged by the same command
    out, probs = tmp_path / "two.tif", tmp_path / "two_p.tif"
    summary = run_json("segment", scene, "-o", out, "-m", bundle, "--probabilities", probs, "--parts", 2, *opts)
    assert summary["class_pixels"] == classes and summary["tiles"] == ref_summary["tiles"]
    assert [p["halo_rows"] for p in summary["parts"]] == ([0, 1] if stitch == "blend" else [0, 0])
    assert_same_outputs((out, probs), (ref_out, ref_probs))
    # three parts as an array job would run them, then `merge`
    out, probs = tmp_path / "three.tif", tmp_path / "three_p.tif"
    for i in range(3):
        part = run_json("segment", scene, "-o", out, "-m", bundle, "--probabilities", probs, "--part", f"{i}/3", *opts)
        assert part["state"] == "parts" and part["parts_run"] == [i]
    assert not out.exists()
    merged = run_json("merge", out)
    assert merged["class_pixels"] == classes and [p["status"] for p in merged["parts"]] == ["reused"] * 3
    assert_same_outputs((out, probs), (ref_out, ref_probs))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "three.tif",
        "three.tif.aux.xml",
        "three_p.tif",
        "two.tif",
        "two.tif.aux.xml",
        "two_p.tif",
    ]


def test_without_the_halo_blended_rows_differ(
    tmp_path: Path, scene: Path, bundle: Path, reference: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The negative control: the identity test can fail."""
    monkeypatch.setattr(tiling, "HALO", False)
    out, probs = tmp_path / "nohalo.tif", tmp_path / "nohalo_p.tif"
    summary = run_json("segment", scene, "-o", out, "-m", bundle, "--probabilities", probs, "--parts", 3, *FIXED)
    assert summary["halo_tiles_run"] == 0
    _, ref_probs, _ = reference["blend"]
    with rasterio.open(probs) as a, rasterio.open(ref_probs) as b:
        diff = (a.read() != b.read()).any(axis=0)
    rows = np.unique(np.nonzero(diff)[0])
    assert diff.sum() > 100 and set(rows) <= set(range(224, 240)) | set(range(448, 460))  # just below the seams


# -- executors ------------------------------------------------------------------------------------------


def run_on(executor: str, tmp_path: Path, scene: Path, bundle: Path, reference: dict) -> dict:
    out, probs = tmp_path / "mask.tif", tmp_path / "mask_p.tif"
    args = ["--probabilities", probs, "--parts", 2, "--executor", executor, *FIXED]
    summary = run_json("segment", scene, "-o", out, "-m", bundle, *args)
    ref_out, ref_probs, ref_summary = reference["blend"]
    assert summary["class_pixels"] == ref_summary["class_pixels"]
    assert_same_outputs((out, probs), (ref_out, ref_probs))
    return summary


@pytest.mark.cluster
def test_dask_local_cluster_gives_the_same_bytes(tmp_path: Path, scene: Path, bundle: Path, reference: dict) -> None:
    pytest.importorskip("distributed")
    summary = run_on("dask:local:2", tmp_path, scene, bundle, reference)
    assert len({p["host"] for p in summary["parts"]}) == 1


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local Ray (2 CPUs) for the session, under a temporary directory, without a token in the home."""
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    del os.environ["RAY_AUTH_MODE"]
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.cluster
def test_ray_gives_the_same_bytes(local_ray: None, tmp_path: Path, scene: Path, bundle: Path, reference: dict) -> None:
    summary = run_on("ray", tmp_path, scene, bundle, reference)
    assert {p["device"] for p in summary["parts"]} == {"cpu"}
    # a task that fails with one of our errors comes back wrapped by Ray: its own one line is reported
    from lemevit_geo.pipelines.scaleout.executors import RayExecutor, failure

    future = RayExecutor(None, gpus=False).submit(inspect_source, str(tmp_path / "gone.tif"), None, 3)
    with pytest.raises(Exception) as info:
        future.result(timeout=120)
    assert failure(info.value) == f"{tmp_path / 'gone.tif'} does not exist"


# -- resume --------------------------------------------------------------------------------------------


def test_a_killed_run_resumes_with_the_missing_parts(
    tmp_path: Path, scene: Path, bundle: Path, reference: dict
) -> None:
    out, probs = tmp_path / "mask.tif", tmp_path / "mask_p.tif"
    args = ["segment", scene, "-o", out, "-m", bundle, "--probabilities", probs, "--parts", 3, *FIXED]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lemevit_geo", *map(str, args), "-q"], env=env)
    parts = Path(f"{out}.parts")
    deadline = time.monotonic() + 240
    while not list(parts.glob("part-*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(int(p.name[5:10]) for p in parts.glob("part-*.json"))
    assert 1 <= len(finished) < 3 and not out.exists()
    summary = run_json(*args)
    status = [p["status"] for p in summary["parts"]]
    assert status == ["reused" if i in finished else "run" for i in range(3)]
    ref_out, ref_probs, ref_summary = reference["blend"]
    assert summary["class_pixels"] == ref_summary["class_pixels"]
    assert_same_outputs((out, probs), (ref_out, ref_probs))
    assert not parts.exists()


# -- change and classify through parts ---------------------------------------------------------------------


def test_change_through_parts(tmp_path: Path) -> None:
    model = tmp_path / "c.safetensors"
    cli("bundle", "init", "--task", "change", "--bands", 3, "--tile-size", 64, "-o", model)
    before = write_raster(tmp_path / "before.tif", structured(200, 96, 1))
    after_tf = from_origin(ORIGIN[0] + 8 * GSD, ORIGIN[1], GSD, GSD)  # shifted by whole pixels: cropped overlap
    after = write_raster(tmp_path / "after.tif", structured(200, 96, 2), transform=after_tf)
    opts = ["--device", "cpu", "--precision", "fp32", "--probabilities"]
    one = run_json("change", before, after, "-o", tmp_path / "one.tif", "-m", model, *opts, tmp_path / "one_p.tif")
    two = run_json(
        "change", before, after, "-o", tmp_path / "two.tif", "-m", model, *opts, tmp_path / "two_p.tif", "--parts", 2
    )
    assert two["alignment"] == one["alignment"] and two["class_pixels"] == one["class_pixels"]
    assert len(two["parts"]) == 2
    assert_same_outputs((tmp_path / "two.tif", tmp_path / "two_p.tif"), (tmp_path / "one.tif", tmp_path / "one_p.tif"))


def test_classify_through_parts(tmp_path: Path, cls_bundle: Path) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(256, 192))
    opts = ["-m", cls_bundle, "--device", "cpu", "--precision", "fp32"]
    one = run_json("classify", scene, "-o", tmp_path / "one.gpkg", "--raster", tmp_path / "one.tif", *opts)
    three = run_json(
        "classify", scene, "-o", tmp_path / "three.gpkg", "--raster", tmp_path / "three.tif", *opts, "--parts", 3
    )
    assert three["class_tiles"] == one["class_tiles"] and three["tiles"] == one["tiles"] == 12
    a, b = gpd.read_file(tmp_path / "three.gpkg"), gpd.read_file(tmp_path / "one.gpkg")
    assert a.crs == b.crs and a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert a.geometry.geom_equals_exact(b.geometry, 0).all()
    assert sha(tmp_path / "three.tif") == sha(tmp_path / "one.tif")


def test_detect_through_parts_one_part_per_scene(tmp_path: Path) -> None:
    """Several scenes through parts (inline, then as array tasks and a merge) give each scene the boxes of a
    single-process run; one scene in two strips too (tests/test_detect_defaults.py checks the boxes)."""
    from lemevit_geo.bundle import build_model, save_bundle
    from tests.standins import blob_config, paint, random_objects

    config = blob_config(64, 16)
    config.head = {"fpn_channels": 16, "num_convs": 1}
    torch.manual_seed(0)
    model = tmp_path / "det.safetensors"
    save_bundle(model, build_model(config), config)
    rng = np.random.default_rng(3)
    scenes = [write_raster(tmp_path / f"s{i}.tif", paint(150, 130, random_objects(rng, 150, 130, 8))) for i in range(3)]
    opts = ["-m", model, "--device", "cpu", "--precision", "fp32", "--score-threshold", "0.05"]
    singles = [run_json("detect", s, "-o", tmp_path / f"one_{s.stem}.gpkg", *opts) for s in scenes]
    assert sum(r["objects"] for r in singles) > 0  # an untrained head still scores some boxes above 0.05
    many = run_json("detect", *scenes, "-o", tmp_path / "out", *opts)
    cli("detect", *scenes, "-o", tmp_path / "arr", *opts, "--part", "0/2")
    cli("detect", *scenes, "-o", tmp_path / "arr", *opts, "--part", "1/2")
    merged = run_json("merge", tmp_path / "arr")
    assert many["done"] == merged["done"] == 3
    for s, single, listed in zip(scenes, singles, many["scenes"], strict=True):
        assert listed["class_objects"] == single["class_objects"]
        want = gpd.read_file(tmp_path / f"one_{s.stem}.gpkg")
        for folder in ("out", "arr"):
            got = gpd.read_file(tmp_path / folder / f"{s.stem}.gpkg")
            assert got.crs == want.crs and got.drop(columns="geometry").equals(want.drop(columns="geometry"))
            assert got.geometry.geom_equals_exact(want.geometry, 0).all()
    assert not list(tmp_path.glob("**/*.parts"))
    strips = run_json("detect", scenes[0], "-o", tmp_path / "x.gpkg", *opts, "--parts", 2)  # strips of one scene
    assert len(strips["parts"]) == 2 and strips["class_objects"] == singles[0]["class_objects"]


# -- many scenes ---------------------------------------------------------------------------------------------


def corrupt_block_scene(path: Path) -> Path:
    """A tiled scene whose block in the second block row is garbage (the check on opening does not see it)."""
    profile = dict(
        driver="GTiff",
        width=128,
        height=256,
        count=3,
        dtype="uint8",
        crs=CRS,
        tiled=True,
        blockxsize=64,
        blockysize=64,
        compress="deflate",
        transform=from_origin(*ORIGIN, GSD, GSD),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(textured_scene(256, 128))
    with rasterio.open(path) as src:
        offset, size = (int(src.get_tag_item(f"BLOCK_{k}_1_1", "TIFF", bidx=1)) for k in ("OFFSET", "SIZE"))
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * size)
    return path


def test_many_scenes_one_corrupt_the_others_finish(tmp_path: Path, bundle: Path) -> None:
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    good = [write_raster(tiles / f"t{i}.tif", structured(128, 128, i)) for i in range(3)]
    bad = corrupt_block_scene(tiles / "t3_bad.tif")
    (tiles / "t4_cut.tif").write_bytes(good[0].read_bytes()[:300])  # truncated: refused when planned
    out = tmp_path / "out"
    args = ["segment", good[0], f"{tiles}/t[1-9]*.tif", "-o", out, "-m", bundle, *FIXED, "--json"]
    r = cli_main(*args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "2 of 5 scenes failed" in lines[0] and "t3_bad.tif" in lines[0] and "t4_cut.tif" in lines[0]
    )
    summary = json.loads(r.stdout)
    assert [s["state"] for s in summary["scenes"]] == ["done", "done", "done", "failed", "failed"]
    assert "reading the window at column" in summary["failed"][str(bad)]
    for i in range(3):
        single = tmp_path / f"single{i}.tif"
        cli("segment", good[i], "-o", single, "-m", bundle, *FIXED, "-q")
        assert sha(out / f"t{i}.tif") == sha(single)
    # fix the inputs and run the same command again: only they run, and the parts are cleaned up at the end
    bad.unlink()
    (tiles / "t4_cut.tif").unlink()
    write_raster(tiles / "t3_bad.tif", structured(128, 128, 3))
    summary = json.loads(cli_main(*args).stdout)
    assert [s["state"] for s in summary["scenes"]] == ["done earlier"] * 3 + ["done"] and not summary["failed"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"t{i}{x}" for i in (0, 1, 2, "3_bad") for x in (".tif", ".tif.aux.xml")
    )


@pytest.mark.parametrize(
    ("extra", "message", "code"),
    [
        (["--part", "3/3"], "part index runs from 0", 2),
        (["--executor", "spark"], "--executor must be inline, ray", 1),
        (["--parts", "0"], "--parts must be at least 1", 1),
    ],
)
def test_scale_out_usage_errors(tmp_path: Path, bundle: Path, extra: list[str], message: str, code: int) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(64, 64))
    r = cli_main("segment", scene, "-o", tmp_path / "m.tif", "-m", bundle, *extra)
    assert r.returncode == code and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_merge_without_parts_is_one_line(tmp_path: Path) -> None:
    r = cli_main("merge", tmp_path / "mask.tif")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "has no parts directory" in r.stderr


def test_several_inputs_need_an_output_directory(tmp_path: Path, bundle: Path) -> None:
    a = write_raster(tmp_path / "a.tif", textured_scene(64, 64))
    b = write_raster(tmp_path / "b.tif", textured_scene(64, 64, seed=1))
    r = cli_main("segment", a, b, "-o", tmp_path / "mask.tif", "-m", bundle)
    assert r.returncode == 1 and "with several inputs, outputs name directories" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]
    r = cli_main("segment", tmp_path / "*.tiff", "-o", tmp_path / "out", "-m", bundle)
    assert r.returncode == 1 and "matches no file" in r.stderr, r.stderr
