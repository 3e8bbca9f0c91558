"""The HTML map report (``--report``): written by the commands, opened in headless Chromium with the network blocked.

Each page is loaded from ``file://`` in Debian's ``chromium`` driven by Playwright; every request that is not
``file:`` or ``data:`` is aborted and counted. Checked: no console errors, no external request, the legend
names every class with its share, as many vector features drawn as the output file holds, overlays drawn where
the scene is, and a screenshot that is not blank. ``LEMEVIT_REPORT_SCREENSHOTS=DIR`` keeps the screenshots
(``docs/report.png`` in the README comes from the demo-report test).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.transform import from_origin

from lemevit_geo.pipelines.apps.demo import demo_report
from lemevit_geo.pipelines.report.overview import OverviewGrid
from lemevit_geo.pipelines.report.page import MapReport
from lemevit_geo.pipelines.report.runs import command_report
from tests.conftest import GSD, ORIGIN, cli, cli_error, cli_main, textured_scene, write_raster

CHROMIUM = os.environ.get("LEMEVIT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
SHOTS = os.environ.get("LEMEVIT_REPORT_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright (nothing is installed at run time), or a skip saying how to get it."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright missing: pip install -e '.[dev]' (browser tests skipped)"
    )
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium missing: apt-get install -y chromium (browser tests skipped)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, "--no-first-run"])
        yield chromium
        chromium.close()


def open_report(browser: Any, path: Path, shot: str | None = None) -> dict[str, Any]:
    """Load ``path`` offline; return console errors, blocked requests, legend entries, drawn paths and the
    screenshot (an array)."""
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    external: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r: Any) -> None:
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(path.resolve().as_uri())
    page.wait_for_function("window.lemevitReport && window.lemevitReport.ready", timeout=20_000)
    page.wait_for_timeout(200)
    legend = page.eval_on_selector_all(
        ".entry", "es => es.map(e => [e.dataset.class, e.querySelector('.share').textContent])"
    )
    paths = drawn_paths(page)
    import io

    screenshot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    if SHOTS and shot:  # 256 colours: a small file for the docs
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        screenshot.quantize(256, method=Image.Quantize.FASTOCTREE).save(Path(SHOTS) / shot, optimize=True)
    pixels = np.asarray(screenshot)
    result = {"errors": errors, "external": external, "legend": legend, "paths": paths, "pixels": pixels}
    result["page"] = page
    return result


def check_clean(view: dict[str, Any]) -> None:
    """No console error, no external request, a map that is not blank."""
    assert view["errors"] == [] and view["external"] == []
    map_area = view["pixels"][:, 360:].astype(float)  # right of the side panel
    assert map_area.std() > 10, "the map area is blank"


def drawn_paths(page: Any) -> dict[str, int]:
    """SVG paths drawn (not clipped away) in each vector layer's pane."""
    return page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('.leaflet-pane[class*=vec]')].map(p => "
        "[p.className, [...p.querySelectorAll('path')].filter(e => (e.getAttribute('d') || 'M0 0') !== 'M0 0')"
        ".length]))"
    )


def panel(page: Any) -> dict[str, str]:
    """The run-summary panel's rows."""
    return dict(page.eval_on_selector_all("#summary tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))"))


def drawn(view: dict[str, Any]) -> int:
    return sum(view["paths"].values())


def test_vendored_leaflet_is_unchanged() -> None:
    """The Leaflet files inlined into reports are npm's ``leaflet@1.9.4`` to the byte (the hashes in its README).

    So they stay third-party code: nothing of ours is patched into them (and `duplicates` pairs inside
    ``leaflet.css`` are Leaflet's own).
    """
    import hashlib
    from importlib import resources

    folder = resources.files("lemevit_geo").joinpath("assets", "leaflet")
    lines = folder.joinpath("README.md").read_text().splitlines()
    table = [line.split("|")[1:3] for line in lines if line.startswith("|")]
    recorded = {name.strip(): digest.strip() for name, digest in table if len(digest.strip()) == 64}
    assert {"leaflet.js", "leaflet.css"} <= set(recorded)
    shipped = {name: hashlib.sha256(folder.joinpath(name).read_bytes()).hexdigest() for name in recorded}
    assert shipped == recorded


def test_segment_report_from_the_command(tmp_path: Path, seg_bundle: Path, browser: Any) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(150, 200))
    report = tmp_path / "map.html"
    r = cli_main("segment", scene, "-o", tmp_path / "mask.tif", "-m", seg_bundle, "--report", report, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["outputs"]["report"] == str(report) and report.is_file()
    text = report.read_text()
    assert "Leaflet 1.9.4" in text and "sourceMappingURL" not in text and "unpkg" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.html", "mask.tif", "mask.tif.aux.xml", "scene.tif"]
    view = open_report(browser, report, "segment.png")
    check_clean(view)
    names = [name for name, _ in view["legend"]]
    assert names == ["water", "forest", "urban"]
    shares = [float(share.split()[0]) for _, share in view["legend"]]
    counts = summary["class_pixels"]
    assert shares == pytest.approx([100 * counts[n] / sum(counts.values()) for n in names], abs=0.051)
    page = view["page"]
    rows = panel(page)
    assert rows["command"].startswith("lemevit-geo segment") and "--report" in rows["command"]
    assert rows["device"] == f"cpu, {summary['precision']}" and rows["nodata share"] == "0.0 %"
    # the opacity slider changes the class layer's opacity
    page.fill("input[data-opacity=classes]", "10")
    assert page.eval_on_selector(".leaflet-overlay-pane img.classes", "e => e.style.opacity") == "0.1"


def test_report_refusals_write_nothing(tmp_path: Path, seg_bundle: Path) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(64, 64))
    (tmp_path / "old.html").write_text("keep")
    cases = [
        (["--report", tmp_path / "map.txt"], "must be named .html"),
        (["--report", tmp_path / "old.html"], "--overwrite"),
        (["--report", tmp_path / "none" / "map.html"], "does not exist"),
    ]
    for extra, message in cases:
        assert message in cli_error("segment", scene, "-o", tmp_path / "mask.tif", "-m", seg_bundle, *extra)
    other = write_raster(tmp_path / "other.tif", textured_scene(64, 64))
    two = cli_error(
        "segment", scene, other, "-o", f"{tmp_path}/out/", "-m", seg_bundle, "--report", tmp_path / "r.html"
    )
    assert "--report draws one scene; 2 inputs were given" in two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.html", "other.tif", "scene.tif"]
    assert (tmp_path / "old.html").read_text() == "keep"


def pair(tmp: Path) -> tuple[Path, Path]:
    """Two dates: the later one with a bright square, on a grid shifted by 8 px."""
    before = textured_scene(160, 160, seed=1) // 2 + 60
    after = np.roll(before, -8, axis=2)
    after[:, 40:90, 50:100] = 250
    shifted = from_origin(ORIGIN[0] + 8 * GSD, ORIGIN[1], GSD, GSD)
    return write_raster(tmp / "before.tif", before), write_raster(tmp / "after.tif", after, transform=shifted)


@pytest.fixture(scope="module")
def change_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundles") / "change.safetensors"
    cli("bundle", "init", "--task", "change", "--arch", "tiny", "--bands", "3", "--tile-size", "64", "-o", path)
    return path


def test_change_report_toggles_the_dates(tmp_path: Path, change_bundle: Path, browser: Any) -> None:
    before, after = pair(tmp_path)
    report = tmp_path / "change.html"
    out = tmp_path / "change.tif"
    r = cli_main("change", before, after, "-o", out, "-m", change_bundle, "--report", report, "--json")
    assert r.returncode == 0, r.stderr
    view = open_report(browser, report, "change.png")
    check_clean(view)
    assert [name for name, _ in view["legend"]] == ["no change", "change"]
    page = view["page"]
    bases = page.eval_on_selector_all("input[name=base]", "es => es.map(e => e.dataset.base)")
    assert bases == ["before: before.tif", "after: after.tif"]
    images = ".leaflet-overlay-pane img.base"
    first = page.eval_on_selector_all(images, "es => es.map(e => e.src)")
    page.check("input[data-base='after: after.tif']")
    second = page.eval_on_selector_all(images, "es => es.map(e => e.src)")
    assert len(first) == len(second) == 1 and first != second
    data = json.loads(page.eval_on_selector("#report-data", "e => e.textContent"))
    with rasterio.open(out) as ds:
        assert data["bounds"] == pytest.approx(list(ds.bounds))  # the map is the output's footprint


def test_overlay_lands_on_its_pixels(tmp_path: Path, browser: Any) -> None:
    """A class raster drawn over the image covers exactly the square it marks, on the screen too."""
    image = np.full((3, 200, 300), 20, dtype=np.uint8)
    image[:, 50:100, 150:250] = 230
    scene = write_raster(tmp_path / "scene.tif", image)
    classes = (image[:1] > 100).astype(np.uint8)
    mask = write_raster(tmp_path / "mask.tif", classes, nodata=255)
    with rasterio.open(mask, "r+") as ds:
        ds.write_colormap(1, {0: (0, 0, 255, 255), 1: (255, 0, 0, 255)})
        ds.update_tags(1, CLASS_0="ground", CLASS_1="roof")
    report = MapReport("alignment", OverviewGrid.of(mask))
    report.add_base("image", scene)
    report.add_classes("classes", mask, transparent=(0,), opacity=1.0)
    view = open_report(browser, report.write(tmp_path / "a.html"))
    check_clean(view)
    page = view["page"]
    box = page.eval_on_selector(".leaflet-overlay-pane img.classes", "e => e.getBoundingClientRect().toJSON()")
    pixels = view["pixels"]
    sx, sy = box["width"] / 300, box["height"] / 200
    assert sx == pytest.approx(sy, rel=0.02)  # square pixels stay square

    def at(col: float, row: float) -> np.ndarray:
        return pixels[int(box["y"] + row * sy), int(box["x"] + col * sx)].astype(int)

    assert (at(200, 75) == (255, 0, 0)).all()  # inside the square: the roof colour
    for col, row in ((140, 75), (260, 75), (200, 40), (200, 110)):
        assert (at(col, row) == 0).all()  # just outside: the image (dark, stretched to black) under no colour
    assert dict(view["legend"]) == {"ground": "91.7 %", "roof": "8.3 %"}  # 50 x 100 of 200 x 300 px


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """A scene of painted objects and the ``detect`` output of the stand-in detector on it."""
    from lemevit_geo.pipelines.inference.detect import detect
    from lemevit_geo.settings import Engine
    from tests.standins import BlobDetector, blob_config, paint, random_objects

    tmp = tmp_path_factory.mktemp("objects")
    scene = write_raster(tmp / "scene.tif", paint(200, 260, random_objects(np.random.default_rng(3), 200, 260, 30)))
    out = tmp / "objects.gpkg"
    summary = detect(image=scene, output=out, model=(BlobDetector(), blob_config(64, 24)), engine=Engine(device="cpu"))
    return scene, out, summary


def test_detect_report_draws_every_object_with_popups(tmp_path: Path, objects: tuple, browser: Any) -> None:
    scene, out, summary = objects
    found = gpd.read_file(out)
    assert len(found) > 20
    report = command_report(task="detect", path=tmp_path / "d.html", summary=summary, inputs=[scene])
    view = open_report(browser, report, "detect.png")
    check_clean(view)
    assert drawn(view) == len(found)
    legend = dict(view["legend"])
    counts = found["class_name"].value_counts()
    assert set(legend) == {"car", "truck", "container"}
    for name, share in legend.items():
        assert share.endswith(f"({counts.get(name, 0)})")
    page = view["page"]
    rows = panel(page)
    assert rows["nodata share"] == "0.0 % (on the overview)" and rows["objects"].startswith(f"{len(found)} (")
    page.click(".leaflet-pane[class*=vec] path", force=True)
    popup = page.inner_text(".leaflet-popup-content")
    for field in ("class", "score", "angle", "length", "width", "area"):
        assert field in popup


def test_vectors_are_capped_and_the_cap_stated(tmp_path: Path, objects: tuple, browser: Any) -> None:
    scene, out, _ = objects
    total = len(gpd.read_file(out))
    report = MapReport("cap", OverviewGrid.of(scene))
    report.add_base("image", scene)
    assert report.add_vectors("objects", out, cap=5) == 5
    view = open_report(browser, report.write(tmp_path / "c.html"))
    check_clean(view)
    assert drawn(view) == 5
    note = f"5 of {total} features drawn: the 5 best-scored (the cap); the file holds all"
    assert view["page"].inner_text(".legend-note") == note
    assert [int(share.split("(")[1][:-1]) for _, share in view["legend"]] and sum(
        int(share.split("(")[1][:-1]) for _, share in view["legend"]
    ) == 5  # the legend counts what is drawn


def test_detect_and_classify_commands_write_reports(
    tmp_path: Path, objects: tuple, cls_bundle: Path, browser: Any
) -> None:
    from lemevit_geo.bundle import build_model, save_bundle
    from tests.standins import blob_config

    scene = objects[0]
    config = blob_config(64, 16)
    config.head = {"fpn_channels": 32, "num_convs": 1}
    bundle = tmp_path / "det.safetensors"
    save_bundle(bundle, build_model(config), config)
    for command, model in (("detect", bundle), ("classify", cls_bundle)):
        out, report = tmp_path / f"{command}.gpkg", tmp_path / f"{command}.html"
        r = cli_main(command, scene, "-o", out, "-m", model, "--report", report, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["outputs"]["report"] == str(report)
        view = open_report(browser, report, f"{command}.png")
        check_clean(view)
        assert drawn(view) == len(gpd.read_file(out))


def tile_classes(labels: Path, out: Path, tile: int = 64) -> Path:
    """The majority class of each tile of ``labels`` as polygons (a stand-in for ``classify``'s output)."""
    from lemevit_geo.pipelines.apps.synthetic import CLASSES

    rows = []
    with rasterio.open(labels) as src:
        lab, t, crs = src.read(1), src.transform, src.crs
    for r in range(0, lab.shape[0], tile):
        for c in range(0, lab.shape[1], tile):
            k = int(np.bincount(lab[r : r + tile, c : c + tile].ravel()).argmax())
            x0, y0 = t * (c, r)
            x1, y1 = t * (c + tile, r + tile)
            rows.append({"class_id": k, "class_name": CLASSES[k], "geometry": shapely.box(x0, y1, x1, y0)})
    gpd.GeoDataFrame(rows, crs=crs).to_file(out)
    return out


def test_demo_report_on_the_demo_scene(tmp_path: Path, browser: Any) -> None:
    """The demo's page, with the scene's reference layers standing in for the trained models' outputs."""
    from lemevit_geo.pipelines.apps.synthetic import CLASSES, make_scene

    scene = make_scene(tmp_path / "data", 384, seed=0)
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(scene.labels, results / "landcover.tif")
    shutil.copy(scene.change, results / "change.tif")
    shutil.copy(scene.objects, results / "objects.gpkg")
    tile_classes(scene.labels, results / "scenes.gpkg")
    task = {"metric": "mIoU 1.000", "train_seconds": 1.0, "predict_seconds": 1.0, "held_out": {"mIoU": 1.0}}
    path = demo_report(
        path=results / "report.html", before=scene.before, after=scene.after, results=results, tasks={"segment": task}
    )
    view = open_report(browser, path, "report.png")
    check_clean(view)
    names = [name for name, _ in view["legend"]]
    assert names[: len(CLASSES)] == CLASSES and "change" in names and "car" in names
    assert drawn(view) == len(gpd.read_file(results / "objects.gpkg"))  # the tile classes start hidden
    page = view["page"]
    page.check("input[data-overlay='tile classes']")
    assert sum(drawn_paths(page).values()) == drawn(view) + 36  # 6 x 6 tiles of 64 px


def test_report_size_does_not_grow_with_the_scene(tmp_path: Path) -> None:
    """Overviews, not full resolution: a scene 4 times wider gives a page of about the same size (overviews of
    256 px here, 2048 px by default)."""
    sizes = []
    for side in (512, 2048):
        yy, xx = np.mgrid[:side, :side] * (512 / side)
        band = (128 + 100 * np.sin(xx / 40) * np.cos(yy / 55)).astype(np.uint8)
        scene = write_raster(
            tmp_path / f"s{side}.tif", band[None], transform=from_origin(*ORIGIN, 1024 / side, 1024 / side)
        )
        grid = OverviewGrid.of(scene, max_side=256)
        assert (grid.width, grid.height) == (256, 256) and grid.bounds == pytest.approx(
            (ORIGIN[0], ORIGIN[1] - 1024, ORIGIN[0] + 1024, ORIGIN[1])
        )
        report = MapReport("size", grid)
        report.add_base("image", scene)
        sizes.append(report.write(tmp_path / f"s{side}.html").stat().st_size)
    assert sizes[1] == pytest.approx(sizes[0], rel=0.1)


def test_evaluate_report_shows_the_scores(tmp_path: Path, objects: tuple, browser: Any) -> None:
    scene, found, _ = objects
    report = tmp_path / "eval.html"
    r = cli_main("evaluate", found, found, "--report", report, "--json")  # no image: the detections' extent
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["report"] == str(report)
    view = open_report(browser, report)
    check_clean(view)
    assert drawn(view) == len(gpd.read_file(found))  # the reference starts hidden
    rows = panel(view["page"])
    assert rows["mAP"] == "1.0000" and rows["task"] == "detect"
    # a class raster against a reference on another grid, over the image
    labels = (textured_scene(120, 160, bands=1) // 86).astype(np.uint8)
    pred = write_raster(tmp_path / "pred.tif", labels)
    shifted = from_origin(ORIGIN[0] - 10 * GSD, ORIGIN[1], GSD, GSD)
    ref = write_raster(tmp_path / "ref.tif", np.pad(labels, ((0, 0), (0, 0), (10, 0))), transform=shifted)
    image = write_raster(tmp_path / "image.tif", textured_scene(120, 160))
    r = cli_main("evaluate", pred, ref, "--report", report, "--image", image, "--overwrite", "--json")
    assert r.returncode == 0, r.stderr
    view = open_report(browser, report, "evaluate.png")
    check_clean(view)
    page = view["page"]
    rows = panel(page)
    assert rows["OA"] == "1.0000" and rows["mIoU"] == "1.0000"
    assert [n for n, _ in view["legend"]] == ["class 0", "class 1", "class 2"] * 2
    assert page.eval_on_selector_all("input[data-overlay]", "es => es.map(e => e.checked)") == [True, False]
    assert "exists; pass --overwrite" in cli_error("evaluate", pred, ref, "--report", report)


@pytest.mark.skipif(not os.environ.get("LEMEVIT_DEMO_OUT"), reason="set LEMEVIT_DEMO_OUT to a finished demo's --out")
def test_a_finished_demo_report(browser: Any) -> None:
    """The report of a real demo run (``lemevit-geo demo --out DIR``; then ``LEMEVIT_DEMO_OUT=DIR``): the page
    the README shows (``LEMEVIT_REPORT_SCREENSHOTS=docs`` writes ``docs/report-demo.png``)."""
    results = Path(os.environ["LEMEVIT_DEMO_OUT"]) / "results"
    view = open_report(browser, results / "report.html", "report-demo.png")
    check_clean(view)
    found = gpd.read_file(results / "objects.gpkg")
    assert drawn(view) == min(10_000, len(found))  # objects.gpkg holds the default (calibrated) boxes only
    assert {"water", "vegetation", "built-up", "bare soil", "road", "change", "car"} <= {n for n, _ in view["legend"]}


def test_overviews_follow_nodata_and_other_crs(tmp_path: Path) -> None:
    """Nodata is see-through in the quick-look; a layer in another CRS is warped onto the scene's grid."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from lemevit_geo.pipelines.report.overview import image_data_uri, quicklook, read_overview

    image = textured_scene(90, 120)
    image[:, :, :40] = 0
    scene = write_raster(tmp_path / "scene.tif", image, nodata=0)
    grid = OverviewGrid.of(scene)
    rgba = quicklook(scene, grid)
    assert (rgba[:, :40, 3] == 0).all() and (rgba[:, 40:, 3] == 255).all()
    assert image_data_uri(rgba).startswith("data:image/png;base64,")  # transparency kept
    assert image_data_uri(quicklook(write_raster(tmp_path / "full.tif", textured_scene(90, 120)), grid)).startswith(
        "data:image/jpeg;base64,"
    )
    classes = np.zeros((1, 90, 120), dtype=np.uint8)
    classes[0, 30:60, 50:100] = 1
    src = write_raster(tmp_path / "classes.tif", classes)
    with rasterio.open(src) as ds:
        transform, width, height = calculate_default_transform(ds.crs, "EPSG:3857", ds.width, ds.height, *ds.bounds)
        warped = np.full((1, height, width), 255, dtype=np.uint8)
        reproject(classes, warped, src_transform=ds.transform, src_crs=ds.crs, dst_transform=transform,
                  dst_crs="EPSG:3857", resampling=Resampling.nearest, dst_nodata=255)  # fmt: skip
    other = write_raster(tmp_path / "web.tif", warped, crs="EPSG:3857", transform=transform, nodata=255)
    data, valid = read_overview(other, grid, [1])
    agree = (data[0] == classes[0]) & valid
    assert valid.mean() > 0.95 and agree.sum() / valid.sum() > 0.97


def test_merge_report_of_array_job_parts(tmp_path: Path, seg_bundle: Path, browser: Any) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(150, 130))
    mask = tmp_path / "mask.tif"
    for part in ("0/2", "1/2"):
        r = cli_main("segment", scene, "-o", mask, "-m", seg_bundle, "--part", part, "--tile-size", "64", "-q")
        assert r.returncode == 0, r.stderr
    assert "--report needs the merged outputs" in cli_error(
        "segment", scene, "-o", mask, "-m", seg_bundle, "--part", "0/2", "--report", tmp_path / "r.html"
    )
    report = tmp_path / "merged.html"
    r = cli_main("merge", mask, "--report", report, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["outputs"]["report"] == str(report)
    view = open_report(browser, report)
    check_clean(view)
    counts = summary["class_pixels"]
    assert [n for n, _ in view["legend"]] == list(counts) == ["water", "forest", "urban"]
    assert panel(view["page"])["command"].startswith("lemevit-geo merge")
