"""Hostile and careless use: every bad input, signal and fault ends in one clear line, nothing left behind."""

from __future__ import annotations

import functools
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from rasterio.transform import from_origin

from lemevit_geo.bundle import BundleConfig
from lemevit_geo.pipelines.inference.segment import segment
from lemevit_geo.settings import DenseOutputs, Engine, Tiling
from tests.conftest import CRS, GSD, ORIGIN, cli, cli_main, textured_scene, write_raster

CLASSES = ["water", "forest", "urban"]


def one_line_error(r: subprocess.CompletedProcess, message: str, code: int = 1) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


class Probe(torch.nn.Module):
    """A per-pixel stand-in model that calls ``hook`` on its first call."""

    def __init__(self, hook: object = None) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.hook = hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()  # type: ignore[operator]
        return self.conv(x)


CONFIG = BundleConfig(task="segment", arch="tiny", classes=CLASSES, bands=3, mean=[128.0] * 3, std=[60.0] * 3)


def run_probe(tmp: Path, image: Path, model: Probe, **kw: object) -> dict:
    return segment(
        image=image,
        output=kw.pop("output", tmp / "mask.tif"),
        model=(model.eval(), CONFIG),
        engine=Engine(device="cpu", precision="fp32"),
        tiling=Tiling(tile_size=64, overlap=16),
        **kw,  # type: ignore[arg-type]
    )


# -- signals and exit codes -------------------------------------------------------------------------


LATE_SIGNAL = """
import os, signal, sys, time
from lemevit_geo.cli.app import run_guarded
run_guarded(lambda: sys.stdout.write("done\\n"))
os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # as if Ctrl-C came while the interpreter exits
time.sleep(0.2)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_after_the_command_ended_changes_nothing(sig: str) -> None:
    """The command has finished (its outputs published): a signal in the last moments is ignored, not a crash
    with no line (the merge signal soak met it as exit -2), nor an "interrupted" after the fact."""
    r = subprocess.run([sys.executable, "-c", LATE_SIGNAL, sig], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "done\n", "")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_exit_130_or_143_and_leave_nothing(tmp_path: Path, seg_bundle: Path, sig: int, code: int) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(1024, 1024))
    out = tmp_path / "mask.tif"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lemevit_geo",
            "segment",
            scene,
            "-o",
            out,
            "-m",
            seg_bundle,
            "--vector",
            tmp_path / "mask.gpkg",
            "--probabilities",
            tmp_path / "p.tif",
            "-q",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the run has started writing once its hidden partial files exist
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "a.tif", "-o", "b.tif", "-m", "m.safetensors", "--zz"], "No such option"),
        (["segment", "a.tif", "-o", "b.tif"], "Missing option"),
        (["segment", "a.tif", "-o", "b.tif", "-m", "m.st", "--stitch", "zigzag"], "zigzag"),
        (["segment", "a.tif", "-o", "b.tif", "-m", "m.st", "--bands", "1,x"], "band numbers"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str], message: str) -> None:
    r = cli_main(*args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) < 12  # click's usage message, not a traceback


# -- inputs that silently gave wrong results ----------------------------------------------------------


def test_non_finite_pixels_are_nodata(tmp_path: Path, seg_bundle: Path) -> None:
    data = textured_scene(96, 96).astype(np.float32)
    data[0, 10, 10] = np.nan
    data[1, 50, 60] = np.inf
    data[:, 70, 5] = -np.inf
    scene = write_raster(tmp_path / "scene.tif", data)  # float32, no nodata value declared
    out, probs = tmp_path / "mask.tif", tmp_path / "p.tif"
    summary = json.loads(cli("segment", scene, "-o", out, "-m", seg_bundle, "--probabilities", probs, "--json").output)
    assert summary["mask"] == ["none + non-finite values"]
    with rasterio.open(out) as ds, rasterio.open(probs) as ps:
        classes, p = ds.read(1), ps.read().astype(int)
    bad = ~np.isfinite(data).all(axis=0)
    assert (classes[bad] == 255).all() and (classes[~bad] != 255).all()
    assert (np.abs(p[:, ~bad].sum(axis=0) - 254) <= 3).all()  # real probabilities, not zeros


def _rgbn(path: Path, nir_zero: np.ndarray) -> Path:
    data = textured_scene(64, 64, bands=4)
    data[3][nir_zero] = 0
    data[3][~nir_zero] = np.clip(data[3][~nir_zero], 1, 200)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=4,
        dtype="uint8",
        crs=CRS,
        transform=from_origin(*ORIGIN, GSD, GSD),
    ) as dst:
        dst.write(data)  # GDAL flags band 4 of a default 4-band uint8 GeoTIFF as alpha
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == rasterio.enums.ColorInterp.alpha
    return path


def test_alpha_flagged_nir_is_data_not_a_mask(tmp_path: Path, seg_bundle: Path) -> None:
    nir_zero = np.zeros((64, 64), dtype=bool)
    nir_zero[:20] = True
    scene = _rgbn(tmp_path / "rgbn.tif", nir_zero)
    r = cli_main("segment", scene, "-o", tmp_path / "m.tif", "-m", seg_bundle, "--bands", "1,2,3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mask"] == ["none"]
    assert "band 4 is flagged as alpha but holds values other than 0 and 255" in r.stderr
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert (ds.read(1) != 255).all()  # NIR = 0 is data, not transparency


def test_real_alpha_is_the_mask_and_never_model_input(tmp_path: Path, seg_bundle: Path) -> None:
    data = textured_scene(64, 64, bands=4)
    data[3] = 255
    data[3, :, :16] = 0  # transparent strip
    scene = write_raster(tmp_path / "rgba.tif", data)
    summary = json.loads(cli("segment", scene, "-o", tmp_path / "m.tif", "-m", seg_bundle, "--json").output)
    assert summary["mask"] == ["alpha band 4"]  # bands 1-3 chosen by default: the alpha is not data
    with rasterio.open(tmp_path / "m.tif") as ds:
        arr = ds.read(1)
    assert (arr[:, :16] == 255).all() and (arr[:, 16:] != 255).all()
    r = cli_main("segment", scene, "-o", tmp_path / "x.tif", "-m", seg_bundle, "--bands", "1,2,4")
    one_line_error(r, "band 4 is the alpha (transparency) band; choose data bands with --bands")


def test_change_with_rgba_after_date_in_another_crs(tmp_path: Path) -> None:
    cli("bundle", "init", "--task", "change", "--bands", 3, "--tile-size", 64, "-o", tmp_path / "c.safetensors")
    before = write_raster(tmp_path / "before.tif", textured_scene(128, 128))
    rgba = textured_scene(128, 128, bands=4)
    rgba[3] = 255
    with rasterio.open(before) as src:
        bounds = src.bounds
    after_tf = rasterio.transform.from_bounds(*rasterio.warp.transform_bounds(CRS, "EPSG:3857", *bounds), 128, 128)
    after = write_raster(tmp_path / "after.tif", rgba, crs="EPSG:3857", transform=after_tf)
    r = cli_main("change", before, after, "-o", tmp_path / "c.tif", "-m", tmp_path / "c.safetensors", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["alignment"]["resampled"] and summary["mask"] == ["none", "alpha band 4"]


def test_change_refuses_dates_of_different_types(tmp_path: Path) -> None:
    cli("bundle", "init", "--task", "change", "--bands", 3, "--tile-size", 64, "-o", tmp_path / "c.safetensors")
    before = write_raster(tmp_path / "b.tif", textured_scene(64, 64))
    after = write_raster(tmp_path / "a.tif", textured_scene(64, 64).astype(np.uint16) * 200)
    r = cli_main("change", before, after, "-o", tmp_path / "c.tif", "-m", tmp_path / "c.safetensors")
    one_line_error(r, "the dates differ in data type (")
    assert not (tmp_path / "c.tif").exists()


def test_classify_on_a_rotated_grid_writes_rotated_tiles(tmp_path: Path, cls_bundle: Path) -> None:
    rotated = Affine.translation(*ORIGIN) @ Affine.rotation(30) @ Affine.scale(GSD, -GSD)
    scene = write_raster(tmp_path / "rot.tif", textured_scene(128, 128), transform=rotated)
    cli("classify", scene, "-o", tmp_path / "tiles.gpkg", "-m", cls_bundle, "-q")
    gdf = gpd.read_file(tmp_path / "tiles.gpkg")
    assert len(gdf) == 4
    assert gdf.area.to_numpy() == pytest.approx(np.full(4, (64 * GSD) ** 2))  # not axis-aligned boxes
    assert gdf.union_all().area == pytest.approx(4 * (64 * GSD) ** 2)  # tiles do not overlap
    first = gdf[(gdf["row"] == 0) & (gdf["col"] == 0)].geometry.iloc[0]
    corners = [rotated @ c for c in [(0, 0), (64, 0), (64, 64), (0, 64)]]
    assert first.normalize().equals_exact(shapely.Polygon(corners).normalize(), 1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "mask.png"], "raster outputs are GeoTIFFs; name them .tif or .tiff"),
        (["-o", "mask.tif", "--probabilities", "p.jpg"], "raster outputs are GeoTIFFs"),
        (["-o", "mask.tif", "--tile-size", "0"], "--tile-size 0 is not a positive multiple of 32"),
        (["-o", "mask.tif", "--overlap", "-3"], "--overlap must be at least 0"),
        (["-o", "mask.tif", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["-o", "mask.tif", "--min-area", "nan"], "--min-area must be at least 0"),
        (["-o", "scene.tif", "--overwrite"], "is one of the inputs"),
        (["-o", "mask.tif", "--vector", "scene.tif", "--overwrite"], "is one of the inputs"),
    ],
)
def test_bad_outputs_and_values(tmp_path: Path, seg_bundle: Path, extra: list[str], message: str) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(64, 64))
    before = scene.read_bytes()
    os.chdir(tmp_path)
    r = cli_main("segment", "scene.tif", "-m", seg_bundle, *extra)
    one_line_error(r, message)
    assert scene.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_model_bundle_is_an_input_too(tmp_path: Path, seg_bundle: Path) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(64, 64))
    r = cli_main("segment", scene, "-m", seg_bundle, "-o", tmp_path / "m.tif", "--vector", seg_bundle, "--overwrite")
    one_line_error(r, "is one of the inputs")


def test_a_file_that_appears_meanwhile_is_not_clobbered(tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(128, 128))
    out = tmp_path / "mask.tif"
    from lemevit_geo.errors import OutputError

    def other_run_publishes() -> None:
        out.write_bytes(b"the other run's map")

    with pytest.raises(OutputError, match="exists"):
        run_probe(tmp_path, scene, Probe(other_run_publishes), output=out)
    assert out.read_bytes() == b"the other run's map"
    assert leftovers(tmp_path) == []


def test_huge_tile_size_on_a_small_scene_is_capped(tmp_path: Path, seg_bundle: Path) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(300, 260))
    r = cli_main("segment", scene, "-o", tmp_path / "m.tif", "-m", seg_bundle, "--tile-size", "65536", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["tile_size"] == 320 and summary["tiles"] == 1


def test_confidence_raster_only_for_polygons(tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(128, 128))
    seen: list[list[str]] = []

    def look() -> None:
        seen.append(leftovers(tmp_path))

    run_probe(tmp_path, scene, Probe(look))
    assert not any(".conf" in name for name in seen[0]) and any("mask" in name for name in seen[0])
    run_probe(
        tmp_path, scene, Probe(look), output=tmp_path / "m2.tif", outputs=DenseOutputs(vector=tmp_path / "v.gpkg")
    )
    assert any(".conf" in name for name in seen[1])


# -- faults that ended in tracebacks ------------------------------------------------------------------


def open_files() -> set[str]:
    """The files this process holds open."""
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed meanwhile
            pass
    return paths


def _corrupt_middle_block(path: Path) -> None:
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_2", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_2", "TIFF", bidx=1))
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * size)


def test_corrupt_block_mid_scene(tmp_path: Path, seg_bundle: Path) -> None:
    scene = tmp_path / "scene.tif"
    with rasterio.open(
        scene,
        "w",
        driver="GTiff",
        width=768,
        height=768,
        count=3,
        dtype="uint8",
        crs=CRS,
        transform=from_origin(*ORIGIN, GSD, GSD),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    ) as dst:
        dst.write(textured_scene(768, 768))
    _corrupt_middle_block(scene)
    r = cli_main("segment", scene, "-o", tmp_path / "m.tif", "-m", seg_bundle)
    one_line_error(r, "scene.tif: reading the window at column")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]
    assert str(scene) not in open_files()  # the reader threads' handles were closed on the way out


def test_mosaic_with_a_missing_source(tmp_path: Path, seg_bundle: Path) -> None:
    left = write_raster(tmp_path / "left.tif", textured_scene(128, 128))
    right_tf = from_origin(ORIGIN[0] + 128 * GSD, ORIGIN[1], GSD, GSD)
    right = write_raster(tmp_path / "right.tif", textured_scene(128, 128), transform=right_tf)
    sources = "".join(
        f"<ComplexSource><SourceFilename relativeToVRT='1'>{name}</SourceFilename><SourceBand>{b}</SourceBand>"
        f"<SrcRect xOff='0' yOff='0' xSize='128' ySize='128'/><DstRect xOff='{x}' yOff='0' xSize='128' ySize='128'/>"
        "</ComplexSource>"
        for name, x in (("left.tif", 0), ("right.tif", 128))
        for b in [1]
    )
    bands = "".join(
        f"<VRTRasterBand dataType='Byte' band='{b}'>"
        + sources.replace("<SourceBand>1<", f"<SourceBand>{b}<")
        + "</VRTRasterBand>"
        for b in (1, 2, 3)
    )
    with rasterio.open(left) as src:
        srs, gt = src.crs.to_wkt(), ", ".join(map(str, src.transform.to_gdal()))
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        f"<VRTDataset rasterXSize='256' rasterYSize='128'><SRS>{srs}</SRS><GeoTransform>{gt}"
        f"</GeoTransform>{bands}</VRTDataset>"
    )
    right.unlink()
    r = cli_main("segment", vrt, "-o", tmp_path / "m.tif", "-m", seg_bundle)
    one_line_error(r, "mosaic.vrt")
    assert "right.tif" in r.stderr and "previous exception" not in r.stderr.lower()
    assert leftovers(tmp_path) == [] and not (tmp_path / "m.tif").exists()


def _limited(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


WRITE_SCRIPT = """
import sys, torch
from pathlib import Path
from lemevit_geo.bundle import BundleConfig
from lemevit_geo.pipelines.inference.segment import segment
from lemevit_geo.settings import DenseOutputs, Engine, Tiling
torch.manual_seed(0)
config = BundleConfig(task="segment", arch="tiny", classes=["a", "b", "c"], bands=3, mean=[128.0] * 3, std=[60.0] * 3)
segment(image=sys.argv[1], output=sys.argv[2], model=(torch.nn.Conv2d(3, 3, 1).eval(), config),
        engine=Engine(device="cpu", precision="fp32"), tiling=Tiling(tile_size=128, overlap=0, stitch="crop"),
        outputs=DenseOutputs(cog=sys.argv[3] == "cog"))
"""


def test_write_errors_file_size_limit_and_failing_cog_copy(tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(1100, 1100))  # a COG with overviews
    script = tmp_path.parent / f"{tmp_path.name}_write.py"
    script.write_text(
        "from lemevit_geo.cli.app import run_guarded\nrun_guarded(lambda: exec(" + repr(WRITE_SCRIPT) + "))\n"
    )

    def run(out: Path, mode: str, limit: int | None = None) -> subprocess.CompletedProcess:
        limited = functools.partial(_limited, limit) if limit else None
        cmd = [sys.executable, script, scene, out, mode]
        return subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limited)

    assert run(tmp_path / "plain.tif", "plain").returncode == 0
    assert run(tmp_path / "cog.tif", "cog").returncode == 0
    plain, cog = (tmp_path / "plain.tif").stat().st_size, (tmp_path / "cog.tif").stat().st_size
    assert cog > plain + 10_000
    for limit, mode in [(plain // 3, "plain"), ((plain + cog) // 2, "cog")]:  # a full disk; a failing COG copy
        out = tmp_path / "out.tif"
        one_line_error(run(out, mode, limit), f"writing {out} failed")
        assert not out.exists() and leftovers(tmp_path) == []


def test_output_under_a_path_that_cannot_hold_files(tmp_path: Path, seg_bundle: Path) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(64, 64))
    r = cli_main("segment", scene, "-o", "/proc/1/mask.tif", "-m", seg_bundle)  # refused even to root
    one_line_error(r, "output directory /proc/1 is not writable")


# -- crafted bundles ---------------------------------------------------------------------------------


def _crafted(tmp: Path, seg_bundle: Path, **changes: object) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(seg_bundle), framework="pt") as f:
        meta = dict(f.metadata())
    config = {**json.loads(meta["config"]), **changes}
    path = tmp / "crafted.safetensors"
    save_file(load_file(str(seg_bundle)), str(path), metadata={**meta, "config": json.dumps(config)})
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"head": {"decoder_channels": 1_000_000}}, "weights do not match its config"),
        ({"head": {"decoder_channels": 256, "surprise": 1}}, "do not describe a model"),
        ({"bands": 0}, "number of bands must be between 1"),
        ({"std": [float("nan")] * 3}, "must be finite numbers"),
        ({"tile_size": -32}, "is not a multiple of 32 between 32"),
        ({"classes": ["only"]}, "needs 2 to"),
    ],
)
def test_crafted_bundles_are_refused_before_allocating(
    tmp_path: Path, seg_bundle: Path, changes: dict, message: str
) -> None:
    crafted = _crafted(tmp_path, seg_bundle, **changes)
    scene = write_raster(tmp_path / "scene.tif", textured_scene(64, 64))
    start = time.perf_counter()
    r = cli_main("segment", scene, "-o", tmp_path / "m.tif", "-m", crafted)
    one_line_error(r, message)
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bands", "0"], "number of bands must be between 1"),
        (["--tile-size", "-64"], "--tile-size -64 is not a positive multiple of 32"),
        (["--mean", "nan,1,1"], "--mean must be finite numbers"),
        (["--std", "1,2"], "--std needs 3 values"),
    ],
)
def test_bundle_init_checks_every_field(tmp_path: Path, args: list[str], message: str) -> None:
    r = cli_main("bundle", "init", "--task", "segment", "--classes", "a,b", "-o", tmp_path / "b.safetensors", *args)
    one_line_error(r, message)
    assert list(tmp_path.iterdir()) == []


def test_bundle_show_describes_its_argument() -> None:
    r = cli_main("bundle", "show", "--help")
    assert r.returncode == 0 and "Model bundle" in r.stdout and "Input raster" not in r.stdout


# -- the terminal holds our messages only -------------------------------------------------------------


def test_pixel_grid_runs_print_no_library_warnings(tmp_path: Path, seg_bundle: Path) -> None:
    nocrs = write_raster(tmp_path / "nocrs.tif", textured_scene(64, 64), crs=None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lemevit_geo",
            "segment",
            nocrs,
            "-o",
            tmp_path / "m.tif",
            "-m",
            seg_bundle,
            "--allow-pixel-grid",
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
