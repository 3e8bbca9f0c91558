"""The commands as users run them: segment, classify, bundle, info, and the errors of bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from safetensors.torch import save_file

from tests.conftest import GSD, ORIGIN, cli, cli_main, textured_scene, write_raster


def test_help_and_info() -> None:
    assert "segment" in cli("--help").output
    report = json.loads(cli("info", "--json").output)
    assert {"lemevit_tiny", "lemevit_small", "lemevit_base"} <= set(report["models"])
    assert report["devices"][0]["device"] == "cpu" and report["gdal"]


def test_segment_real_model_outputs(tmp_path: Path, seg_bundle: Path) -> None:
    data = textured_scene(300, 260)
    data[:, :40, :] = 0
    src = write_raster(tmp_path / "scene.tif", data, nodata=0)
    out, probs, vec = tmp_path / "mask.tif", tmp_path / "probs.tif", tmp_path / "mask.gpkg"
    result = cli(
        "segment",
        src,
        "-o",
        out,
        "-m",
        seg_bundle,
        "--probabilities",
        probs,
        "--vector",
        vec,
        "--overlap",
        "32",
        "--json",
    )
    summary = json.loads(result.output)
    assert summary["tiles"] == 9 and summary["outputs"]["vector"] == str(vec)
    with rasterio.open(out) as ds, rasterio.open(src) as s:
        assert (ds.crs, ds.transform, ds.width, ds.height) == (s.crs, s.transform, s.width, s.height)
        arr = ds.read(1)
        assert ds.colormap(1)[0][:3] == (31, 119, 180)
        assert [ds.tags(1)[f"CLASS_{i}"] for i in range(3)] == ["water", "forest", "urban"]
    assert (arr[:40] == 255).all() and set(np.unique(arr[40:])) <= {0, 1, 2}
    assert sum(summary["class_pixels"].values()) == 260 * 260
    assert "<Category>urban</Category>" in Path(f"{out}.aux.xml").read_text()
    with rasterio.open(probs) as ds:
        assert ds.count == 3 and ds.descriptions[0] == "p(water)"
    gdf = gpd.read_file(vec)
    assert gdf.crs.to_epsg() == 32632
    x0, y1 = ORIGIN
    minx, miny, maxx, maxy = gdf.total_bounds
    assert minx >= x0 and maxx <= x0 + 260 * GSD and maxy <= y1 - 40 * GSD and miny >= y1 - 300 * GSD
    assert gdf["area"].sum() == pytest.approx(260 * 260 * GSD * GSD)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mask.gpkg",
        "mask.tif",
        "mask.tif.aux.xml",
        "probs.tif",
        "scene.tif",
    ]


def test_segment_is_deterministic_across_runs_and_threads(tmp_path: Path, seg_bundle: Path) -> None:
    src = write_raster(tmp_path / "scene.tif", textured_scene(400, 400, seed=3))
    arrays = []
    for i, threads in enumerate([1, 4, 4]):
        out = tmp_path / f"m{i}.tif"
        cli("segment", src, "-o", out, "-m", seg_bundle, "--threads", threads, "--batch-size", 3, "-q")
        with rasterio.open(out) as ds:
            arrays.append(ds.read(1))
    np.testing.assert_array_equal(arrays[0], arrays[1])
    np.testing.assert_array_equal(arrays[1], arrays[2])


def test_segment_cog_and_crop(tmp_path: Path, seg_bundle: Path) -> None:
    src = write_raster(tmp_path / "scene.tif", textured_scene(200, 330))
    out = tmp_path / "mask.tif"
    cli("segment", src, "-o", out, "-m", seg_bundle, "--cog", "--stitch", "crop", "-q")
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert (ds.width, ds.height) == (330, 200) and ds.colormap(1)[1][:3] == (255, 127, 14)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif", "mask.tif.aux.xml", "scene.tif"]


def test_classify_tiles_and_grid_raster(tmp_path: Path, cls_bundle: Path) -> None:
    src = write_raster(tmp_path / "scene.tif", textured_scene(150, 200))
    out, grid = tmp_path / "scenes.gpkg", tmp_path / "grid.tif"
    summary = json.loads(cli("classify", src, "-o", out, "-m", cls_bundle, "--raster", grid, "--json").output)
    assert summary["tiles"] == 12  # 3 rows x 4 columns of 64 px tiles, edge tiles padded
    gdf = gpd.read_file(out)
    assert len(gdf) == 12 and gdf.crs.to_epsg() == 32632
    assert set(gdf["class_name"]) <= {"field", "forest", "town", "lake"}
    assert ((gdf["probability"] > 0) & (gdf["probability"] <= 1)).all()
    assert gdf["top_k"].str.count(",").eq(2).all()
    x0, y1 = ORIGIN
    assert tuple(gdf.total_bounds) == pytest.approx((x0, y1 - 150 * GSD, x0 + 200 * GSD, y1))
    first = gdf[(gdf["row"] == 0) & (gdf["col"] == 0)].iloc[0]
    assert first.geometry.bounds == pytest.approx((x0, y1 - 64 * GSD, x0 + 64 * GSD, y1))
    with rasterio.open(grid) as ds:
        assert (ds.width, ds.height) == (4, 3)
        assert ds.transform.a == 64 * GSD and (ds.transform.c, ds.transform.f) == (x0, y1)
        arr = ds.read(1)
    ids = {(r, c): k for r, c, k in zip(gdf["row"], gdf["col"], gdf["class_id"], strict=True)}
    assert all(arr[r, c] == k for (r, c), k in ids.items())


def test_bundle_errors(tmp_path: Path, seg_bundle: Path, cls_bundle: Path) -> None:
    src = write_raster(tmp_path / "scene.tif", textured_scene(64, 64))
    not_bundle = tmp_path / "x.safetensors"
    save_file({"w": __import__("torch").zeros(2)}, str(not_bundle))
    for model, message in [
        (cls_bundle, "is a classify model; this command needs a segment model"),
        (not_bundle, "not a lemevit-geo model bundle"),
        (src, "not a lemevit-geo model bundle"),
        (tmp_path / "missing.safetensors", "does not exist"),
    ]:
        r = cli_main("segment", src, "-o", tmp_path / "o.tif", "-m", model)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o.tif").exists()


def test_bad_inputs_give_one_line_and_no_output(tmp_path: Path, seg_bundle: Path) -> None:
    good = write_raster(tmp_path / "good.tif", textured_scene(64, 64))
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    nocrs = write_raster(tmp_path / "nocrs.tif", textured_scene(64, 64), crs=None)
    four = write_raster(tmp_path / "four.tif", textured_scene(64, 64, bands=4))
    truncated = tmp_path / "truncated.tif"
    write_raster(tmp_path / "big.tif", textured_scene(600, 600))
    truncated.write_bytes((tmp_path / "big.tif").read_bytes()[:300_000])
    existing = tmp_path / "exists.tif"
    existing.write_bytes(b"keep")
    out = tmp_path / "out.tif"
    cases = [
        ([tmp_path / "missing.tif", "-o", out], "does not exist"),
        ([text, "-o", out], "cannot be read as a raster"),
        ([nocrs, "-o", out], "--allow-pixel-grid"),
        ([four, "-o", out], "4 input bands (1,2,3,4) but the model takes 3"),
        ([good, "-o", tmp_path / "nodir" / "o.tif"], "does not exist"),
        ([good, "-o", existing], "--overwrite"),
        ([truncated, "-o", out], "cannot be read"),
        ([good, "-o", out, "--bands", "1,2,7"], "has 3 bands"),
        ([good, "-o", out, "--tile-size", "100"], "multiple of 32"),
    ]
    for args, message in cases:
        r = cli_main("segment", *args, "-m", seg_bundle)
        assert r.returncode == 1, (args, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists()
    assert existing.read_bytes() == b"keep"
    r = cli_main("segment", nocrs, "-o", out, "-m", seg_bundle, "--allow-pixel-grid", "-q")
    assert r.returncode == 0 and out.exists()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert left == []


def test_unwritable_directory(tmp_path: Path, seg_bundle: Path) -> None:
    import os

    good = write_raster(tmp_path / "good.tif", textured_scene(64, 64))
    targets = [Path("/proc/1/o.tif")]  # no one, root included, can create files there
    if os.geteuid() != 0:  # root writes to read-only permission bits anyway
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        targets.append(ro / "o.tif")
    for target in targets:
        r = cli_main("segment", good, "-o", target, "-m", seg_bundle)
        assert r.returncode == 1 and "not writable" in r.stderr, r.stderr


@pytest.mark.parametrize("suffix", [".parquet", ".geojson"])
def test_vector_formats_by_extension(tmp_path: Path, seg_bundle: Path, suffix: str) -> None:
    src = write_raster(tmp_path / "scene.tif", textured_scene(128, 128))
    vec = tmp_path / f"poly{suffix}"
    cli("segment", src, "-o", tmp_path / "m.tif", "-m", seg_bundle, "--vector", vec, "-q")
    gdf = gpd.read_parquet(vec) if suffix == ".parquet" else gpd.read_file(vec)
    assert gdf.crs.to_epsg() == 32632 and len(gdf) > 0
    assert gdf["area"].sum() == pytest.approx(128 * 128 * GSD * GSD)
    r = cli_main("segment", src, "-o", tmp_path / "m2.tif", "-m", seg_bundle, "--vector", tmp_path / "p.shp")
    assert r.returncode == 1 and ".gpkg, .parquet or .geojson" in r.stderr and not (tmp_path / "m2.tif").exists()


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, lemevit_geo.cli; assert 'torch' not in sys.modules and 'rasterio' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_unknown_bundle_format_version(tmp_path: Path, seg_bundle: Path) -> None:
    import torch
    from safetensors import safe_open

    with safe_open(str(seg_bundle), framework="pt") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "99"
    future = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(1)}, str(future), metadata=meta)
    src = write_raster(tmp_path / "scene.tif", textured_scene(64, 64))
    r = cli_main("segment", src, "-o", tmp_path / "o.tif", "-m", future)
    assert r.returncode == 1 and "format version 99" in r.stderr and "reads version 1" in r.stderr


def test_bundle_init_with_official_backbone_weights(tmp_path: Path) -> None:
    import timm
    import torch

    from lemevit_geo.bundle import load_bundle
    from lemevit_geo.models.factory import backbone_of

    torch.manual_seed(1)
    official = timm.create_model("lemevit_tiny").state_dict()
    torch.save({"model": official}, tmp_path / "lemevit_tiny.pth")
    for task in ("segment", "classify"):
        out = tmp_path / f"{task}.safetensors"
        cli(
            "bundle",
            "init",
            "--task",
            task,
            "--classes",
            "a,b",
            "--bands",
            4,
            "--backbone-weights",
            tmp_path / "lemevit_tiny.pth",
            "-o",
            out,
        )
        model, config = load_bundle(out)
        assert config.bands == 4
        loaded = backbone_of(model).state_dict()
        for key in ("stages.3.0.attn.qkv.weight", "meta_tokens", "stages.1.0.attn.qkv2.bias"):
            torch.testing.assert_close(loaded[key], official[key])
        assert loaded["downsample_layers.0.0.weight"].shape[1] == 4
