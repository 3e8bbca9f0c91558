"""Remote and catalogue inputs (issue 21): URLs, S3, STAC Items and searches, ``--bbox``; all offline, through
a local HTTP server of our own (``tests/remote_server.py``) and moto's S3 server."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pystac.extensions.eo import Band, EOExtension
from rasterio.transform import from_origin

from lemevit_geo.inputs import InputSpec, dataset, stem, with_options
from tests.conftest import CRS, GSD, ORIGIN, cli, cli_error, cli_main, textured_scene
from tests.remote_server import FileServer

ENGINE = ("--batch-size", "2", "--threads", "1", "--device", "cpu")
FAST = ("--tile-size", "128", "--overlap", "16", *ENGINE)


def write_cog(path: Path, data: np.ndarray, transform: rasterio.Affine | None = None, crs: str = CRS) -> Path:
    """A Cloud Optimized GeoTIFF (256 px blocks, deflate) of ``data``."""
    bands, height, width = data.shape
    transform = transform if transform is not None else from_origin(*ORIGIN, GSD, GSD)
    profile = dict(driver="COG", width=width, height=height, count=bands, dtype=data.dtype.name, crs=crs)
    with rasterio.open(path, "w", transform=transform, blocksize=256, compress="deflate", **profile) as dst:
        dst.write(data)
    return path


def run(*args: object, fast: tuple[str, ...] = FAST) -> dict:
    """Run the CLI in-process expecting success (with ``fast`` options); return the ``--json`` summary."""
    r = cli_main(*args, *fast, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def same_raster(a: Path, b: Path) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert x.profile == y.profile
        assert np.array_equal(x.read(), y.read())
        assert x.tags(1) == y.tags(1)


def leftovers(folder: Path) -> list[str]:
    """The files in ``folder`` (less the category sidecars of class rasters)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".aux.xml"))


@pytest.fixture
def served(tmp_path: Path):
    """A COG in ``tmp_path/srv`` behind a local HTTP server."""
    root = tmp_path / "srv"
    root.mkdir()
    write_cog(root / "scene.tif", textured_scene(300, 400, seed=3))
    server = FileServer(root)
    yield server
    server.stop()


@pytest.fixture
def local_mask(tmp_path: Path, served: FileServer, seg_bundle: Path) -> Path:
    """The class raster of the served COG read as a local file."""
    out = tmp_path / "local.tif"
    run("segment", served.root / "scene.tif", "-o", out, "-m", seg_bundle)
    return out


def make_item(
    path: Path, assets: dict[str, tuple[str, list[str]]], item_id: str = "scene", when: str = "2024-06-01"
) -> pystac.Item:
    """A STAC Item (saved at ``path``) whose assets are ``key: (href, eo common names)``."""
    geometry = {"type": "Polygon", "coordinates": [[[7, 50], [8, 50], [8, 51], [7, 51], [7, 50]]]}
    stamp = dt.datetime.fromisoformat(when).replace(tzinfo=dt.timezone.utc)
    item = pystac.Item(item_id, geometry, [7, 50, 8, 51], stamp, {"eo:cloud_cover": 5.0})
    for key, (href, names) in assets.items():
        asset = pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"])
        item.add_asset(key, asset)
        EOExtension.ext(asset, add_if_missing=True).bands = [Band.create(name=n, common_name=n) for n in names]
    item.set_self_href(str(path))
    item.save_object(include_self_link=False, dest_href=str(path))
    return item


def test_input_strings_round_trip() -> None:
    text = with_options("https://h/a.tif?sig=x", bbox=[1, 2, 3, 4], bbox_crs="EPSG:32632", assets=["B04", "B03"])
    spec = InputSpec.parse(text)
    assert spec.source == "https://h/a.tif?sig=x" and spec.bbox == (1, 2, 3, 4) and spec.assets == ("B04", "B03")
    assert InputSpec.parse("odd#name.tif").source == "odd#name.tif"
    assert [stem(t) for t in (text, "s3://b/k/x.tiff", "https://api/collections/c/items/S2A_1")] == ["a", "x", "S2A_1"]
    assert dataset("s3://bucket/key.tif") == "/vsis3/bucket/key.tif"
    assert dataset("https://h/a.tif") == "/vsicurl/https://h/a.tif"


def test_url_same_bytes_as_local(tmp_path: Path, served: FileServer, local_mask: Path, seg_bundle: Path) -> None:
    out = tmp_path / "remote.tif"
    summary = run("segment", f"{served.url}/scene.tif", "-o", out, "-m", seg_bundle)
    same_raster(out, local_mask)
    assert summary["width"] == 400 and served.sent["scene.tif"] > 0


def test_item_same_bytes_as_local(tmp_path: Path, served: FileServer, local_mask: Path, seg_bundle: Path) -> None:
    """A STAC Item whose asset href is signed (a SAS-like query string, sent with every request)."""
    signed = f"{served.url}/scene.tif?st=2024-06-01&se=2030-01-01&sig=a%2Bb%3D"
    make_item(served.root / "item.json", {"visual": (signed, ["red", "green", "blue"])})
    out = tmp_path / "item.tif"
    run("segment", f"{served.url}/item.json", "-o", out, "-m", seg_bundle)
    same_raster(out, local_mask)
    assert served.queries == {"st=2024-06-01&se=2030-01-01&sig=a%2Bb%3D"}


def test_item_assets_stacked_at_finest(tmp_path: Path) -> None:
    """Single-band assets at 0.5 and 1 m stack onto the 0.5 m grid, in the order of their common names."""
    fine, coarse = textured_scene(64, 64, bands=2, seed=1), textured_scene(32, 32, bands=1, seed=2)
    write_cog(tmp_path / "b04.tif", fine[:1])
    write_cog(tmp_path / "b03.tif", fine[1:])
    write_cog(tmp_path / "b02.tif", coarse, from_origin(*ORIGIN, 2 * GSD, 2 * GSD))
    names = {"B02": ("b02.tif", ["blue"]), "B03": ("b03.tif", ["green"]), "B04": ("b04.tif", ["red"])}
    make_item(tmp_path / "item.json", names)
    with rasterio.open(dataset(tmp_path / "item.json", 3)) as src:
        assert src.shape == (64, 64) and src.res == (GSD, GSD)
        data = src.read()
    assert np.array_equal(data[:2], fine) and np.array_equal(data[2], coarse[0].repeat(2, 0).repeat(2, 1))
    with rasterio.open(dataset(with_options(str(tmp_path / "item.json"), assets=["B02"]), 3)) as src:
        assert src.count == 1 and src.res == (2 * GSD, 2 * GSD)


def test_bbox_reads_a_small_share_of_a_large_cog(tmp_path: Path, seg_bundle: Path) -> None:
    """--bbox on a 12 MB remote COG: the server sends < 10 % of the file, and the output is the crop's run,
    on the scene's grid shifted to the window."""
    root = tmp_path / "srv"
    root.mkdir()
    data = textured_scene(2048, 2048, seed=5)
    big = write_cog(root / "big.tif", data)
    transform = from_origin(*ORIGIN, GSD, GSD)
    col, row, size = 700, 900, 200
    x0, y1 = transform * (col, row)
    x1, y0 = transform * (col + size, row + size)
    crop = tmp_path / "crop.tif"
    write_cog(crop, data[:, row : row + size, col : col + size], transform * transform.translation(col, row))
    server = FileServer(root)
    try:
        out = tmp_path / "bbox.tif"
        bbox = f"{x0 + 0.1},{y0 + 0.2},{x1 - 0.1},{y1 - 0.2}"  # inside edge pixels: they are taken whole
        run("segment", f"{server.url}/big.tif", "--bbox", bbox, "--bbox-crs", CRS, "-o", out, "-m", seg_bundle)
        share = server.sent["big.tif"] / big.stat().st_size
    finally:
        server.stop()
    assert share < 0.10, share
    run("segment", crop, "-o", tmp_path / "crop_mask.tif", "-m", seg_bundle)
    same_raster(out, tmp_path / "crop_mask.tif")
    with rasterio.open(out) as dst:
        assert dst.transform == transform * transform.translation(col, row) and dst.shape == (size, size)


def test_bbox_in_lonlat_on_a_local_file(tmp_path: Path, seg_bundle: Path) -> None:
    """The default --bbox-crs is longitude/latitude; the window is whole pixels of the scene's grid."""
    scene = write_cog(tmp_path / "scene.tif", textured_scene(256, 256))
    from rasterio.warp import transform_bounds

    with rasterio.open(scene) as src:
        left, bottom, right, top = src.bounds
    lonlat = transform_bounds(CRS, "EPSG:4326", left + 10, bottom + 20, left + 40, bottom + 60)
    out = tmp_path / "area.tif"
    run("segment", scene, "--bbox", ",".join(map(str, lonlat)), "-o", out, "-m", seg_bundle)
    with rasterio.open(out) as dst:
        assert dst.res == (GSD, GSD)
        col, row = ~dst.transform * (left, top)
        assert col == round(col) and row == round(row)  # on the scene's pixel lattice
        b = dst.bounds
        assert b.left <= left + 10 and b.right >= left + 40 and b.bottom <= bottom + 20 and b.top >= bottom + 60


def test_s3_same_bytes_as_local(
    tmp_path: Path, served: FileServer, local_mask: Path, seg_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        env = dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        s3.create_bucket(Bucket="scenes")
        s3.upload_file(str(served.root / "scene.tif"), "scenes", "a/scene.tif")
        monkeypatch.setenv("AWS_S3_ENDPOINT", f"127.0.0.1:{port}")
        monkeypatch.setenv("AWS_HTTPS", "NO")
        monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
        out = tmp_path / "s3.tif"
        run("segment", "s3://scenes/a/scene.tif", "-o", out, "-m", seg_bundle)
        same_raster(out, local_mask)
        assert "does not exist" in cli_error(
            "segment", "s3://scenes/a/none.tif", "-o", tmp_path / "n.tif", "-m", seg_bundle
        )
    finally:
        server.stop()


def write_catalogue(root: Path, scenes: dict[str, str]) -> Path:
    """A static STAC catalogue with one collection ``tiles``: an Item (one 3-band COG) per ``id: date``."""
    catalog = pystac.Catalog("cat", "test catalogue")
    extent = pystac.Extent(pystac.SpatialExtent([[7, 50, 8, 51]]), pystac.TemporalExtent([[None, None]]))
    collection = pystac.Collection("tiles", "tiles", extent)
    catalog.add_child(collection)
    for i, (item_id, when) in enumerate(scenes.items()):
        cog = write_cog(root / f"{item_id}.tif", textured_scene(96, 128, seed=10 + i))
        item = make_item(root / f"{item_id}.json", {"visual": (str(cog), ["red", "green", "blue"])}, item_id, when)
        collection.add_item(item)
    catalog.normalize_hrefs(str(root / "stac"))
    catalog.make_all_asset_hrefs_absolute()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "stac" / "catalog.json"


def test_static_catalogue_one_part_per_item(tmp_path: Path, seg_bundle: Path) -> None:
    days = {"t1": "2024-06-01", "t2": "2024-06-10", "t3": "2024-07-01"}
    catalogue = write_catalogue(tmp_path, days)
    out = tmp_path / "out"
    summary = run("segment", "--stac", catalogue, "--collection", "tiles", "-o", f"{out}/", "-m", seg_bundle)
    assert [s["input"].split("/")[-2] for s in summary["scenes"]] == ["t1", "t2", "t3"]
    assert all(s["state"] == "done" and len(s["parts"]) == 1 for s in summary["scenes"])
    assert leftovers(out) == ["t1.tif", "t2.tif", "t3.tif"]
    same_raster(out / "t2.tif", run_local(tmp_path, "t2", seg_bundle))
    june = run(
        "segment",
        "--stac",
        catalogue,
        "--datetime",
        "2024-06-01/2024-06-30",
        "-o",
        tmp_path / "june/",
        "-m",
        seg_bundle,
    )
    assert len(june["scenes"]) == 2
    change_bundle = tmp_path / "change.safetensors"
    cli("bundle", "init", "--task", "change", "--bands", "3", "--tile-size", "64", "-o", change_bundle)
    dates = run("change", "2024-06-01", "t3", "--stac", catalogue, "-o", tmp_path / "c.tif", "-m", change_bundle)
    assert dates["width"] == 128 and dates["height"] == 96
    line = cli_error(
        "change", "2024-06-01/2024-06-30", "t3", "--stac", catalogue, "-o", tmp_path / "c2.tif", "-m", change_bundle
    )
    assert "found 2 items (t1, t2)" in line


def run_local(tmp_path: Path, item_id: str, bundle: Path) -> Path:
    out = tmp_path / f"{item_id}_local.tif"
    run("segment", tmp_path / f"{item_id}.tif", "-o", out, "-m", bundle)
    return out


def test_server_gone_mid_run_then_resume(tmp_path: Path, seg_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server stops answering during part 2 of 3: one line, exit 1, no output; once it is back, a rerun
    runs only the parts that did not finish and gives the bytes of an uninterrupted run."""
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    root = tmp_path / "srv"
    root.mkdir()
    write_cog(root / "scene.tif", textured_scene(512, 256, seed=7))
    reference = tmp_path / "ref.tif"
    run("segment", root / "scene.tif", "-o", reference, "-m", seg_bundle, "--parts", "3")
    single = FileServer(root)  # one process, no parts: nothing at all is left
    single.fail_after = (root / "scene.tif").stat().st_size // 2
    try:
        (tmp_path / "one").mkdir()
        line = cli_error(
            "segment", f"{single.url}/scene.tif", "-o", tmp_path / "one" / "m.tif", "-m", seg_bundle, *FAST
        )
    finally:
        single.stop()
    assert line.startswith("error: ") and "scene.tif" in line and leftovers(tmp_path / "one") == []
    server = FileServer(root)
    try:
        server.fail_after = (root / "scene.tif").stat().st_size // 2
        out = tmp_path / "out" / "mask.tif"
        out.parent.mkdir()
        args = ("segment", f"{server.url}/scene.tif", "-o", out, "-m", seg_bundle, "--parts", "3", *FAST, "-q")
        line = cli_error(*args)
        assert "scene.tif" in line and "part" in line
        assert leftovers(out.parent) == ["mask.tif.parts"]  # no output, no temporary files: the finished parts
        finished = sorted(p.name for p in (out.parent / "mask.tif.parts").glob("part-*.json"))
        assert 1 <= len(finished) < 3, finished
        server.fail_after = None
        summary = run(*args[: -len(FAST) - 1])
    finally:
        server.stop()
    assert [p["status"] for p in summary["parts"]].count("reused") == len(finished)
    same_raster(out, reference)
    assert leftovers(out.parent) == ["mask.tif"]


def test_bad_remote_inputs(tmp_path: Path, served: FileServer, seg_bundle: Path) -> None:
    out = tmp_path / "x.tif"
    base = ("-o", out, "-m", seg_bundle)
    assert "missing.tif" in cli_error("segment", f"{served.url}/missing.tif", *base)
    (served.root / "private.tif").write_bytes((served.root / "scene.tif").read_bytes())
    served.forbidden.add("private.tif")
    line = cli_error("segment", f"{served.url}/private.tif", *base)
    assert "private.tif" in line and "403" in line, line
    make_item(served.root / "grey.json", {"pan": (f"{served.url}/scene.tif", ["pan"])})
    line = cli_error("segment", f"{served.url}/grey.json", *base)
    assert "common names are red,green,blue" in line and "--assets" in line
    write_cog(served.root / "utm31.tif", textured_scene(32, 32, 1), crs="EPSG:32631")
    write_cog(served.root / "utm32.tif", textured_scene(32, 32, 1))
    both = {"a": (f"{served.url}/utm31.tif", ["red"]), "b": (f"{served.url}/utm32.tif", ["green"])}
    make_item(served.root / "mixed.json", both)
    assert "different CRSs" in cli_error("segment", f"{served.url}/mixed.json", "--assets", "a,b", *base)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    line = cli_error("segment", "--stac", f"http://127.0.0.1:{closed}/stac", *base)
    assert f"127.0.0.1:{closed}" in line and "cannot be opened" in line
    assert "does not overlap" in cli_error("segment", f"{served.url}/scene.tif", "--bbox", "0,0,1,1", *base)
    assert not out.exists()


@pytest.mark.parametrize("mask", ["nodata", "alpha", "internal"])
def test_bbox_keeps_what_nodata_means(tmp_path: Path, mask: str) -> None:
    """A window keeps the scene's nodata value, alpha band or internal mask, pixel for pixel."""
    data = textured_scene(64, 80, bands=4 if mask == "alpha" else 3)
    valid = np.zeros((64, 80), dtype=bool)
    valid[10:50, 20:70] = True
    profile = dict(driver="GTiff", width=80, height=64, count=data.shape[0], dtype="uint8", crs=CRS)
    profile["transform"] = from_origin(*ORIGIN, GSD, GSD)
    if mask == "nodata":
        data[:, ~valid] = 0
        profile["nodata"] = 0
    elif mask == "alpha":
        data[3] = np.where(valid, 255, 0)
        profile["photometric"] = "RGB"
        profile["alpha"] = "YES"
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(data)
        if mask == "internal":
            dst.write_mask(valid)
    window = rasterio.windows.Window(15, 5, 40, 30)
    with rasterio.open(scene) as src:
        left, bottom, right, top = src.window_bounds(window)
        expected, expected_mask = src.read(window=window), src.read_masks(1, window=window)
    area = with_options(str(scene), bbox=[left, bottom, right, top], bbox_crs=CRS)
    with rasterio.open(dataset(area)) as vrt:
        assert np.array_equal(vrt.read(), expected) and np.array_equal(vrt.read_masks(1), expected_mask)
        assert vrt.nodatavals == ((0.0,) * 3 if mask == "nodata" else (None,) * vrt.count)
        assert (vrt.colorinterp[-1].name == "alpha") == (mask == "alpha")


def test_classify_url_and_no_images(tmp_path: Path, served: FileServer, cls_bundle: Path) -> None:
    import geopandas as gpd

    tables = []
    for name, source in (("local", served.root / "scene.tif"), ("url", f"{served.url}/scene.tif")):
        run("classify", source, "-o", tmp_path / f"{name}.gpkg", "-m", cls_bundle, "--tile-size", "64", fast=ENGINE)
        tables.append(gpd.read_file(tmp_path / f"{name}.gpkg"))
    assert len(tables[0]) == 35 and tables[0].equals(tables[1])  # 7 x 5 tiles of 64 px
    r = cli_main("classify", "-o", tmp_path / "none.gpkg", "-m", cls_bundle)
    assert r.returncode == 2 and "--stac" in r.stderr


def test_sign_planetary_computer(
    tmp_path: Path, served: FileServer, local_mask: Path, seg_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--sign planetary-computer: the Azure Blob href gets a SAS token from the token endpoint (our server) and
    is read with it (our server again, as GDAL's HTTP proxy standing in for Azure)."""
    pytest.importorskip("planetary_computer")
    from planetary_computer.settings import Settings

    token = {"msft:expiry": "2099-01-01T00:00:00Z", "token": "st=2024&se=2099&sig=abc"}
    (served.root / "token" / "acct").mkdir(parents=True)
    (served.root / "token" / "acct" / "cont").write_text(json.dumps(token))
    (served.root / "cont").mkdir()
    (served.root / "cont" / "scene.tif").write_bytes((served.root / "scene.tif").read_bytes())
    monkeypatch.setenv("PC_SDK_SAS_URL", f"{served.url}/token")
    monkeypatch.setenv("GDAL_HTTP_PROXY", served.url.split("://")[1])
    Settings.get.cache_clear()
    blob = "http://acct.blob.core.windows.net/cont/scene.tif"
    make_item(served.root / "pc.json", {"visual": (blob, ["red", "green", "blue"])})
    out = tmp_path / "pc.tif"
    try:
        run("segment", f"{served.url}/pc.json", "--sign", "planetary-computer", "-o", out, "-m", seg_bundle)
    finally:
        Settings.get.cache_clear()  # the settings were read from this test's environment
    same_raster(out, local_mask)
    assert served.queries == {"st=2024&se=2099&sig=abc"}
    line = cli_error("segment", blob, "--sign", "someone", "-o", tmp_path / "x.tif", "-m", seg_bundle)
    assert "--sign" in line and "planetary-computer" in line


def test_stac_api_search(tmp_path: Path, served: FileServer, seg_bundle: Path) -> None:
    """A minimal STAC API (landing page with item-search, POST /search, items at .../items/ID): the search
    carries the options, and each item found is one scene named by its id."""
    api, items = f"{served.url}/api.json", {}
    for item_id in ("s2a", "s2b"):
        item = make_item(
            served.root / f"{item_id}.json", {"visual": (f"{served.url}/scene.tif", ["red", "green", "blue"])}, item_id
        )
        href = f"{served.url}/collections/tiles/items/{item_id}"
        item.set_self_href(href)
        items[item_id] = item.to_dict()
        (served.root / "collections" / "tiles" / "items").mkdir(parents=True, exist_ok=True)
        (served.root / "collections" / "tiles" / "items" / item_id).write_text(json.dumps(items[item_id]))
    conforms = [f"https://api.stacspec.org/v1.0.0/{c}" for c in ("core", "item-search", "item-search#query")]
    links = [{"rel": "search", "href": f"{served.url}/search", "type": "application/geo+json", "method": "POST"}]
    links += [{"rel": r, "href": api, "type": "application/json"} for r in ("self", "root")]
    landing = {"type": "Catalog", "id": "api", "description": "test", "stac_version": "1.0.0"}
    (served.root / "api.json").write_text(json.dumps({**landing, "conformsTo": conforms, "links": links}))
    served.search = lambda body: [items[i] for i in body.get("ids") or items]
    out = tmp_path / "out"
    from rasterio.warp import transform_bounds

    left, bottom = ORIGIN[0] + 20, ORIGIN[1] - 100  # a 60 x 40 m area inside the 200 x 150 m scene
    lonlat = [round(v, 6) for v in transform_bounds(CRS, "EPSG:4326", left, bottom, left + 60, bottom + 40)]
    bbox = ",".join(map(str, lonlat))
    args = ("segment", "--stac", api, "--collection", "tiles", "--bbox", bbox, "--query", "eo:cloud_cover<10")
    summary = run(*args, "--datetime", "2024-06-01/2024-06-30", "-o", f"{out}/", "-m", seg_bundle, fast=ENGINE)
    assert [s["state"] for s in summary["scenes"]] == ["done", "done"] and leftovers(out) == ["s2a.tif", "s2b.tif"]
    body = served.posts[0]
    assert body["collections"] == ["tiles"] and body["bbox"] == lonlat
    with rasterio.open(out / "s2a.tif") as dst:
        assert 120 <= dst.width <= 132 and 80 <= dst.height <= 92 and dst.res == (GSD, GSD)  # the envelope in UTM
    assert body["query"] == {"eo:cloud_cover": {"lt": 10.0}} and body["datetime"].startswith("2024-06-01")
    far = ("segment", "--stac", api, "s2a", "--bbox", "7.5,50.1,7.6,50.2", "-o", tmp_path / "x.tif", "-m", seg_bundle)
    line = cli_error(*far)
    assert "does not overlap" in line and "items/s2a" in line and served.posts[-1]["ids"] == ["s2a"]


@pytest.mark.parametrize(("stitch", "margin"), [("crop", 16), pytest.param("blend", 32, marks=pytest.mark.slow)])
def test_bbox_equals_the_full_run_where_tiles_align(tmp_path: Path, seg_bundle: Path, stitch: str, margin: int) -> None:
    """A window that starts on the full run's tile grid (tile 128, overlap 32: every 96 px) and ends on it runs
    the same tiles: away from its edges (half the overlap in crop mode, the overlap in blend mode) its classes
    are the full run's."""
    scene = write_cog(tmp_path / "scene.tif", textured_scene(512, 512, seed=9))
    opts = ("--tile-size", "128", "--overlap", "32", "--stitch", stitch, "--batch-size", "1", "--threads", "1")
    run("segment", scene, "-o", tmp_path / "full.tif", "-m", seg_bundle, *opts, fast=("--device", "cpu"))
    transform = from_origin(*ORIGIN, GSD, GSD)
    (x0, y1), (x1, y0) = transform * (96, 96), transform * (416, 416)
    area = ("--bbox", f"{x0},{y0},{x1},{y1}", "--bbox-crs", CRS)
    run("segment", scene, *area, "-o", tmp_path / "area.tif", "-m", seg_bundle, *opts, fast=("--device", "cpu"))
    with rasterio.open(tmp_path / "full.tif") as full, rasterio.open(tmp_path / "area.tif") as part:
        assert part.shape == (320, 320)
        inner = slice(margin, 320 - margin)
        cut = full.read(1, window=rasterio.windows.Window(96, 96, 320, 320))
        assert np.array_equal(part.read(1)[inner, inner], cut[inner, inner])
        assert len(np.unique(cut[inner, inner])) > 1  # classes that vary: the comparison can fail
