"""One planner per command: the single-process run and scale-out plan alike (same checks, same messages, same
grid), and a plan becomes its scale-out job as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
from rasterio.transform import from_origin

from lemevit_geo.bundle import load_bundle
from lemevit_geo.choices import Stitch
from lemevit_geo.errors import InputError
from lemevit_geo.pipelines.inference.classify import plan_classify
from lemevit_geo.pipelines.inference.segment import plan_segment, segment
from lemevit_geo.pipelines.scaleout.jobs import GridSpec, plan_job
from lemevit_geo.settings import Engine, Tiling
from tests.conftest import GSD, ORIGIN, cli, cli_error, textured_scene, write_raster

CPU = ["--device", "cpu", "--precision", "fp32"]


@pytest.fixture
def scenes(tmp_path: Path) -> tuple[Path, Path]:
    """Two co-registered dates of a small scene (the later one shifted by whole pixels)."""
    before = write_raster(tmp_path / "before.tif", textured_scene(96, 64))
    after = write_raster(
        tmp_path / "after.tif",
        textured_scene(96, 64, seed=1),
        transform=from_origin(ORIGIN[0] + 4 * GSD, ORIGIN[1], GSD, GSD),
    )
    return before, after


@pytest.fixture(scope="module")
def chg_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundles") / "chg.safetensors"
    cli("bundle", "init", "--task", "change", "--bands", "3", "--tile-size", "64", "-o", path)
    return path


def _cases(tmp: Path, before: Path, after: Path, seg: Path, cls: Path, chg: Path) -> dict[str, list[object]]:
    """Command lines that planning refuses (each checked before any tile runs)."""
    return {
        "output is the input": ["segment", before, "-o", before, "-m", seg],
        "one name for two outputs": [
            "segment",
            before,
            "-o",
            tmp / "m.tif",
            "-m",
            seg,
            "--probabilities",
            tmp / "m.tif",
        ],
        "raster output named .gpkg": ["segment", before, "-o", tmp / "m.gpkg", "-m", seg],
        "output exists": ["segment", before, "-o", tmp / "exists.tif", "-m", seg],
        "change output is a date": ["change", before, after, "-o", after, "-m", chg],
        "change with a segment bundle": ["change", before, after, "-o", tmp / "c.tif", "-m", seg],
        "classify polygons named .tif": ["classify", before, "-o", tmp / "t.tif", "-m", cls],
        "classify tile size": ["classify", before, "-o", tmp / "t.gpkg", "-m", cls, "--tile-size", 48],
        "detect with a classify bundle": ["detect", before, "-o", tmp / "o.gpkg", "-m", cls],
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("output is the input", "is one of the inputs"),
        ("one name for two outputs", "is named for two outputs"),
        ("raster output named .gpkg", "raster outputs are GeoTIFFs"),
        ("output exists", "exists; pass --overwrite"),
        ("change output is a date", "is one of the inputs"),
        ("change with a segment bundle", "is a segment model; this command needs a change model"),
        ("classify polygons named .tif", "vector outputs are .gpkg"),
        ("classify tile size", "is not a positive multiple of 32"),
        ("detect with a classify bundle", "is a classify model; this command needs a detect model"),
    ],
)
def test_one_process_and_parts_refuse_alike(
    tmp_path: Path,
    scenes: tuple[Path, Path],
    seg_bundle: Path,
    cls_bundle: Path,
    chg_bundle: Path,
    case: str,
    message: str,
) -> None:
    """The same refusal, word for word, whether the command runs in this process or as parts: both plan with the
    command's one planner. Nothing is left behind."""
    before, after = scenes
    (tmp_path / "exists.tif").write_bytes(b"keep me")
    args = _cases(tmp_path, before, after, seg_bundle, cls_bundle, chg_bundle)[case]
    single = cli_error(*args, *CPU)
    scaled = cli_error(*args, *CPU, "--parts", 1)
    assert message in single and scaled == single
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.tif", "before.tif", "exists.tif"]
    assert (tmp_path / "exists.tif").read_bytes() == b"keep me"


def test_a_plan_becomes_its_job(tmp_path: Path, scenes: tuple[Path, Path], cls_bundle: Path) -> None:
    """The job carries the plan's grid, tiles, seams and report; the strips cover the plan's tile rows."""
    before, _ = scenes
    plan = plan_classify(image=before, output=tmp_path / "t.gpkg", model=cls_bundle, top_k=2, defer_existing=True)
    job = plan_job(plan, 2)
    assert (job.tile, job.overlap, job.stitch, job.top_k) == (64, 0, Stitch.crop, 2)
    assert job.grid == GridSpec.of(plan.info) and job.report == plan.report and job.inputs == (str(before),)
    assert [(s.first, s.stop) for s in job.strips] == [(0, 1), (1, 2)]  # 96 rows: two rows of 64 px tiles
    assert job.parts_hash and job.job_hash


def test_a_loaded_model_runs_in_process_only(tmp_path: Path, scenes: tuple[Path, Path], seg_bundle: Path) -> None:
    """A ``(model, config)`` pair plans and runs here; scale-out, whose workers load the bundle, refuses it."""
    before, _ = scenes
    loaded = load_bundle(seg_bundle)
    summary = segment(
        image=before, output=tmp_path / "m.tif", model=loaded, tiling=Tiling(128, 16), engine=Engine("cpu")
    )
    with rasterio.open(tmp_path / "m.tif") as out, rasterio.open(before) as src:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
    assert summary["tiles"] == 1 and sum(summary["class_pixels"].values()) == 96 * 64
    with pytest.raises(InputError, match="pass a bundle path"):
        plan_job(plan_segment(image=before, output=tmp_path / "n.tif", model=loaded), 1)
    assert not (tmp_path / "n.tif").exists()
