"""Tiny, seeded, fake copies of torchgeo benchmark datasets for offline tests.

Every ``make_<name>(root)`` writes a minimal dataset under ``root / <name>`` in exactly the on-disk layout that the
matching torchgeo 0.8 dataset class reads with ``download=False, checksum=False`` and returns that directory, which is
the ``root`` to hand to the torchgeo dataset or datamodule. Nothing is ever downloaded.

The layouts follow torchgeo's own fake test data (``tests/data/<name>/data.py`` in the torchgeo repository): the
*extracted* archive contents are written (torchgeo only looks for the zip archives when the extracted directories are
missing, so no archives are needed), with the real file names, directory names, file formats and pixel types.

Pixel content is not pure noise: label maps are blocky random class maps and every image is a per-class base colour
plus noise, so a model can actually fit these tiny datasets. All randomness comes from ``numpy.random.default_rng``
with fixed seeds, so every call writes byte-identical files.

Sizes are chosen so that the datamodules work with ``patch_size=64`` and ``batch_size=2`` (``drop_last=True`` is used
for training loaders, so every train split holds at least two samples; datamodules that carve the validation set out
of the train split with ``val_split_pct=0.2`` get five train items, i.e. four train and one validation sample).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin

SEED = 0

UCMERCED_CLASSES: tuple[str, ...] = (
    "agricultural",
    "airplane",
    "baseballdiamond",
    "beach",
    "buildings",
    "chaparral",
    "denseresidential",
    "forest",
    "freeway",
    "golfcourse",
    "harbor",
    "intersection",
    "mediumresidential",
    "mobilehomepark",
    "overpass",
    "parkinglot",
    "river",
    "runway",
    "sparseresidential",
    "storagetanks",
    "tenniscourt",
)

RESISC45_CLASSES: tuple[str, ...] = (
    "airplane",
    "airport",
    "baseball_diamond",
    "basketball_court",
    "beach",
    "bridge",
    "chaparral",
    "church",
    "circular_farmland",
    "cloud",
    "commercial_area",
    "dense_residential",
    "desert",
    "forest",
    "freeway",
    "golf_course",
    "ground_track_field",
    "harbor",
    "industrial_area",
    "intersection",
    "island",
    "lake",
    "meadow",
    "medium_residential",
    "mobile_home_park",
    "mountain",
    "overpass",
    "palace",
    "parking_lot",
    "railway",
    "railway_station",
    "rectangular_farmland",
    "river",
    "roundabout",
    "runway",
    "sea_ice",
    "ship",
    "snowberg",
    "sparse_residential",
    "stadium",
    "storage_tank",
    "tennis_court",
    "terrace",
    "thermal_power_station",
    "wetland",
)

# Million-AID scene hierarchy (level-1 / [level-2 /] level-3); all names are real Million-AID categories.
MILLIONAID_SCENES: tuple[tuple[str, ...], ...] = (
    ("agriculture_land", "arable_land", "dry_field"),
    ("agriculture_land", "arable_land", "paddy_field"),
    ("agriculture_land", "grassland", "meadow"),
    ("transportation_land", "airport_area", "runway"),
    ("water_area", "beach"),
    ("water_area", "lake"),
)

OSCD_IMAGES_DIR = "Onera Satellite Change Detection dataset - Images"
OSCD_LABELS_DIRS: dict[str, str] = {
    "train": "Onera Satellite Change Detection dataset - Train Labels",
    "test": "Onera Satellite Change Detection dataset - Test Labels",
}
OSCD_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)
OSCD_REGIONS: dict[str, tuple[str, ...]] = {
    "train": ("abudhabi", "aguasclaras", "beihai", "bercy", "bordeaux"),
    "test": ("brasilia", "dubai"),
}

# Number of tiles per split for the ISPRS datasets (the datamodules split "train" 80/20 into train/val).
_ISPRS_TILES: dict[str, int] = {"train": 5, "test": 2}


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def _rng(name: str) -> np.random.Generator:
    """Return a generator seeded from ``SEED`` and a dataset name (stable across runs and platforms)."""
    return np.random.default_rng([SEED, *name.encode()])


def _label_map(rng: np.random.Generator, height: int, width: int, num_classes: int, block: int = 16) -> np.ndarray:
    """Return a blocky (H, W) uint8 map of class indices in ``[0, num_classes)``."""
    rows, cols = -(-height // block), -(-width // block)
    coarse = rng.integers(0, num_classes, size=(rows, cols), dtype=np.uint8)
    return np.kron(coarse, np.ones((block, block), dtype=np.uint8))[:height, :width]


def _palette(rng: np.random.Generator, num_classes: int, bands: int, low: int = 30, high: int = 225) -> np.ndarray:
    """Return a (num_classes, bands) table of per-class base intensities."""
    return rng.integers(low, high, size=(num_classes, bands)).astype(np.int32)


def _render(rng: np.random.Generator, labels: np.ndarray, palette: np.ndarray, noise: int = 20) -> np.ndarray:
    """Render a (H, W, bands) uint8 image: per-class base colour from ``palette`` plus uniform noise."""
    base = palette[labels]
    jitter = rng.integers(-noise, noise + 1, size=base.shape, dtype=np.int32)
    return np.clip(base + jitter, 0, 255).astype(np.uint8)


def _class_image(rng: np.random.Generator, colour: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return a (H, W, 3) uint8 scene-classification image dominated by ``colour`` with some texture."""
    labels = _label_map(rng, height, width, 2, block=8)
    palette = np.stack([colour, np.clip(colour + 40, 0, 255)])
    return _render(rng, labels, palette, noise=25)


def _write_geotiff(path: Path, array: np.ndarray, crs: str | None = None, gsd: float = 1.0) -> None:
    """Write a (bands, H, W) array as an LZW-compressed GeoTIFF (georeferenced when ``crs`` is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = array.shape
    profile: dict[str, object] = {
        "driver": "GTiff",
        "dtype": array.dtype.name,
        "count": count,
        "height": height,
        "width": width,
        "compress": "lzw",
    }
    if crs is not None:
        profile.update(crs=crs, transform=from_origin(366_976.5, 5_808_562.6, gsd, gsd))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def _write_pil(path: Path, array: np.ndarray) -> None:
    """Write an (H, W) or (H, W, 3) array with PIL; the format follows the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=90)
    else:
        image.save(path)


def _colour_mask(labels: np.ndarray, colormap: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Encode a (H, W) class map as a (3, H, W) uint8 RGB label image using ``colormap``."""
    table = np.asarray(colormap, dtype=np.uint8)
    return np.moveaxis(table[labels], -1, 0)


def _write_split_list(path: Path, names: Sequence[str]) -> None:
    """Write one file name per line (the ``<dataset>-<split>.txt`` split lists)."""
    path.write_text("".join(f"{name}\n" for name in names))


# ----------------------------------------------------------------------------------------------------------------------
# segmentation datasets
# ----------------------------------------------------------------------------------------------------------------------


def make_potsdam(root: Path, *, size: int = 128) -> Path:
    """Write a fake ISPRS Potsdam dataset (``torchgeo.datasets.Potsdam2D``).

    Layout (extracted ``4_Ortho_RGBIR.zip`` and ``5_Labels_all.zip``)::

        potsdam/4_Ortho_RGBIR/top_potsdam_<id>_RGBIR.tif   4-band (R, G, B, IR) uint8 GeoTIFF
        potsdam/top_potsdam_<id>_label.tif                 3-band uint8 RGB-colour-coded labels (6 classes)

    Five tiles of the official train list and two of the test list are written, ``size`` x ``size`` pixels each.

    Args:
        root: Directory to create the dataset in.
        size: Tile height and width in pixels.

    Returns:
        The dataset root (``root / "potsdam"``).
    """
    from torchgeo.datasets import Potsdam2D

    out = Path(root) / "potsdam"
    rng = _rng("potsdam")
    num_classes = len(Potsdam2D.classes)
    palette = _palette(rng, num_classes, 4)
    for split, count in _ISPRS_TILES.items():
        for name in Potsdam2D.splits[split][:count]:
            labels = _label_map(rng, size, size, num_classes)
            image = np.moveaxis(_render(rng, labels, palette), -1, 0)
            _write_geotiff(out / Potsdam2D.image_root / f"{name}_RGBIR.tif", image, crs="EPSG:32633", gsd=0.05)
            _write_geotiff(out / f"{name}_label.tif", _colour_mask(labels, Potsdam2D.colormap))
    return out


def make_vaihingen(root: Path, *, size: int = 128) -> Path:
    """Write a fake ISPRS Vaihingen dataset (``torchgeo.datasets.Vaihingen2D``).

    Layout (extracted ``ISPRS_semantic_labeling_Vaihingen.zip`` and ``..._ground_truth_COMPLETE.zip``)::

        vaihingen/top/top_mosaic_09cm_area<N>.tif   3-band (IR, R, G) uint8 TIFF
        vaihingen/top_mosaic_09cm_area<N>.tif       3-band uint8 RGB-colour-coded labels (6 classes)

    Five tiles of the official train list and two of the test list are written, ``size`` x ``size`` pixels each.

    Args:
        root: Directory to create the dataset in.
        size: Tile height and width in pixels.

    Returns:
        The dataset root (``root / "vaihingen"``).
    """
    from torchgeo.datasets import Vaihingen2D

    out = Path(root) / "vaihingen"
    rng = _rng("vaihingen")
    num_classes = len(Vaihingen2D.classes)
    palette = _palette(rng, num_classes, 3)
    for split, count in _ISPRS_TILES.items():
        for name in Vaihingen2D.splits[split][:count]:
            labels = _label_map(rng, size, size, num_classes)
            image = np.moveaxis(_render(rng, labels, palette), -1, 0)
            _write_geotiff(out / Vaihingen2D.image_root / name, image)
            _write_geotiff(out / name, _colour_mask(labels, Vaihingen2D.colormap))
    return out


def make_loveda(root: Path, *, size: int = 128) -> Path:
    """Write a fake LoveDA dataset (``torchgeo.datasets.LoveDA``).

    Layout (extracted ``Train.zip``, ``Val.zip``, ``Test.zip``)::

        loveda/{Train,Val,Test}/{Urban,Rural}/images_png/<n>.png   RGB uint8
        loveda/{Train,Val}/{Urban,Rural}/masks_png/<n>.png         L uint8, 0 = no-data, 1..7 = classes

    Two images per scene and split (four per split); the test split has no masks, like the real one.

    Args:
        root: Directory to create the dataset in.
        size: Image height and width in pixels.

    Returns:
        The dataset root (``root / "loveda"``).
    """
    out = Path(root) / "loveda"
    rng = _rng("loveda")
    num_values = 8  # 0 = no-data, 1..7 = background, building, road, water, barren, forest, agriculture
    palette = _palette(rng, num_values, 3)
    index = 0
    for split in ("Train", "Val", "Test"):
        for scene in ("Urban", "Rural"):
            for _ in range(2):
                labels = _label_map(rng, size, size, num_values - 1) + 1
                labels[: size // 16, : size // 16] = 0  # a small no-data corner
                _write_pil(out / split / scene / "images_png" / f"{index}.png", _render(rng, labels, palette))
                if split != "Test":
                    _write_pil(out / split / scene / "masks_png" / f"{index}.png", labels)
                index += 1
    return out


# ----------------------------------------------------------------------------------------------------------------------
# change-detection datasets
# ----------------------------------------------------------------------------------------------------------------------


def make_levircd(root: Path, *, size: int = 128) -> Path:
    """Write a fake LEVIR-CD dataset (``torchgeo.datasets.LEVIRCD``).

    Layout (extracted ``train.zip``, ``val.zip``, ``test.zip``)::

        levircd/A/<split>_<n>.png       RGB uint8, first date
        levircd/B/<split>_<n>.png       RGB uint8, second date (new "buildings" where the label is set)
        levircd/label/<split>_<n>.png   L uint8, 0 = no change, 255 = change

    Four pairs for train, two each for val and test. Note that ``LEVIRCDDataModule`` defaults to ``patch_size=256``;
    pass ``patch_size=64`` (or ``size=256`` here) since the validation centre crop does not pad.

    Args:
        root: Directory to create the dataset in.
        size: Image height and width in pixels.

    Returns:
        The dataset root (``root / "levircd"``).
    """
    out = Path(root) / "levircd"
    rng = _rng("levircd")
    palette = _palette(rng, 4, 3)
    building = np.array([[200, 90, 60]], dtype=np.int32)
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        for n in range(1, count + 1):
            scene = _label_map(rng, size, size, len(palette))
            change = _label_map(rng, size, size, 4, block=8) == 0  # about a quarter of the area changes
            before = _render(rng, scene, palette)
            after = _render(rng, scene, palette)
            after[change] = _render(rng, np.zeros(int(change.sum()), dtype=np.int64), building)
            _write_pil(out / "A" / f"{split}_{n}.png", before)
            _write_pil(out / "B" / f"{split}_{n}.png", after)
            _write_pil(out / "label" / f"{split}_{n}.png", change.astype(np.uint8) * 255)
    return out


def make_oscd(root: Path, *, size: int = 80) -> Path:
    """Write a fake OSCD (Onera Satellite Change Detection) dataset (``torchgeo.datasets.OSCD``).

    Layout (extracted ``Onera Satellite Change Detection dataset - {Images,Train Labels,Test Labels}.zip``)::

        oscd/Onera Satellite Change Detection dataset - Images/<region>/imgs_{1,2}_rect/B01.tif ... B12.tif, B8A.tif
        oscd/Onera Satellite Change Detection dataset - Images/<region>/dates.txt
        oscd/Onera Satellite Change Detection dataset - Images/{train,test}.txt
        oscd/Onera Satellite Change Detection dataset - {Train,Test} Labels/<region>/cm/cm.png

    Every band is a single-band uint16 TIFF (Sentinel-2 L1C digital numbers); ``cm.png`` is L uint8 with
    0 = no change and 255 = change. Five train regions and two test regions; like the real data, region sizes
    differ slightly (``size`` to ``size + 8`` pixels per side), which the datamodule's random crop absorbs.

    Args:
        root: Directory to create the dataset in.
        size: Smallest region height/width in pixels (must be at least the datamodule's ``patch_size``).

    Returns:
        The dataset root (``root / "oscd"``).
    """
    out = Path(root) / "oscd"
    rng = _rng("oscd")
    images = out / OSCD_IMAGES_DIR
    palette = rng.integers(400, 4000, size=(4, len(OSCD_BANDS))).astype(np.int32)
    urban = rng.integers(1500, 3500, size=(1, len(OSCD_BANDS))).astype(np.int32)
    for split, regions in OSCD_REGIONS.items():
        (images / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (images / f"{split}.txt").write_text(",".join(regions) + "\n")
        for i, region in enumerate(regions):
            height, width = size + 4 * (i % 3), size + 4 * ((i + 1) % 3)
            scene = _label_map(rng, height, width, len(palette))
            change = _label_map(rng, height, width, 4, block=8) == 0
            for date in (1, 2):
                stack = palette[scene] + rng.integers(-150, 151, size=(height, width, len(OSCD_BANDS)))
                if date == 2:
                    stack[change] = urban + rng.integers(-150, 151, size=(int(change.sum()), len(OSCD_BANDS)))
                stack = np.clip(stack, 0, 10_000).astype(np.uint16)
                band_dir = images / region / f"imgs_{date}_rect"
                for b, band in enumerate(OSCD_BANDS):
                    _write_pil(band_dir / f"{band}.tif", np.ascontiguousarray(stack[..., b]))
            (images / region / "dates.txt").write_text("date_1: 20161130\ndate_2: 20170829\n")
            _write_pil(out / OSCD_LABELS_DIRS[split] / region / "cm" / "cm.png", change.astype(np.uint8) * 255)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# scene-classification datasets
# ----------------------------------------------------------------------------------------------------------------------


def make_ucmerced(root: Path, *, size: int = 64) -> Path:
    """Write a fake UC Merced Land Use dataset (``torchgeo.datasets.UCMerced``).

    Layout (extracted ``UCMerced_LandUse.zip`` plus the split lists)::

        ucmerced/UCMerced_LandUse/Images/<class>/<class><NN>.tif   3-band uint8 TIFF
        ucmerced/uc_merced-{train,val,test}.txt                    one file name per line

    All 21 real classes, one image per class and split (``<class>00`` train, ``01`` val, ``02`` test), since
    torchvision's ``ImageFolder`` rejects a class folder without any file of the split. torchgeo resizes every image
    to 256 x 256 on load, so ``size`` only changes the disk footprint (the real images are 256 x 256).

    Args:
        root: Directory to create the dataset in.
        size: Image height and width in pixels as written to disk.

    Returns:
        The dataset root (``root / "ucmerced"``).
    """
    out = Path(root) / "ucmerced"
    rng = _rng("ucmerced")
    colours = _palette(rng, len(UCMERCED_CLASSES), 3)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for colour, cls in zip(colours, UCMERCED_CLASSES, strict=True):
        for n, split in enumerate(splits):
            name = f"{cls}{n:02d}.tif"
            image = _class_image(rng, colour, size, size)
            _write_geotiff(out / "UCMerced_LandUse" / "Images" / cls / name, np.moveaxis(image, -1, 0))
            splits[split].append(name)
    for split, names in splits.items():
        _write_split_list(out / f"uc_merced-{split}.txt", names)
    return out


def make_resisc45(root: Path, *, size: int = 64) -> Path:
    """Write a fake NWPU-RESISC45 dataset (``torchgeo.datasets.RESISC45``).

    Layout (extracted ``NWPU-RESISC45.zip`` plus the split lists)::

        resisc45/NWPU-RESISC45/<class>/<class>_<NNN>.jpg   RGB JPEG
        resisc45/resisc45-{train,val,test}.txt             one file name per line

    All 45 real classes, one image per class and split (``_001`` train, ``_002`` val, ``_003`` test), since
    torchvision's ``ImageFolder`` rejects a class folder without any file of the split. The real images are
    256 x 256; torchgeo does not resize them, so batches are ``size`` x ``size``.

    Args:
        root: Directory to create the dataset in.
        size: Image height and width in pixels.

    Returns:
        The dataset root (``root / "resisc45"``).
    """
    out = Path(root) / "resisc45"
    rng = _rng("resisc45")
    colours = _palette(rng, len(RESISC45_CLASSES), 3)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for colour, cls in zip(colours, RESISC45_CLASSES, strict=True):
        for n, split in enumerate(splits, start=1):
            name = f"{cls}_{n:03d}.jpg"
            _write_pil(out / "NWPU-RESISC45" / cls / name, _class_image(rng, colour, size, size))
            splits[split].append(name)
    for split, names in splits.items():
        _write_split_list(out / f"resisc45-{split}.txt", names)
    return out


def make_millionaid(root: Path, *, size: int = 64) -> Path:
    """Write a fake Million-AID dataset (``torchgeo.datasets.MillionAID``).

    Layout (extracted ``train.zip`` and ``test.zip``)::

        millionaid/{train,test}/<level-1>/<level-2>/<level-3>/P<NNNNNNN>.jpg   RGB JPEG
        millionaid/{train,test}/<level-1>/<level-3>/P<NNNNNNN>.jpg             (scenes without a level-2 category)

    Six scenes (see ``MILLIONAID_SCENES``) with two images each per split, so the multi-class task has six classes
    and the multi-label task uses the level-1/level-2/level-3 names (12 labels). Images are ``size`` x ``size`` (the
    real images vary in size; there is no torchgeo datamodule, and torchgeo returns uint8 image tensors here).

    Args:
        root: Directory to create the dataset in.
        size: Image height and width in pixels.

    Returns:
        The dataset root (``root / "millionaid"``).
    """
    out = Path(root) / "millionaid"
    rng = _rng("millionaid")
    colours = _palette(rng, len(MILLIONAID_SCENES), 3)
    number = 100_000
    for split in ("train", "test"):
        for colour, scene in zip(colours, MILLIONAID_SCENES, strict=True):
            for _ in range(2):
                number += 137
                _write_pil(out.joinpath(split, *scene, f"P{number:07d}.jpg"), _class_image(rng, colour, size, size))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# object-detection datasets
# ----------------------------------------------------------------------------------------------------------------------

# (class, difficult, x1 y1 x2 y2 x3 y3 x4 y4) per object, in pixels, clockwise from the top-left corner like DOTA.
DOTA_OBJECTS: dict[str, list[tuple[str, int, tuple[float, ...]]]] = {
    "P0000": [("plane", 0, (10, 12, 30, 8, 34, 26, 14, 30)), ("small-vehicle", 1, (40, 40, 48, 40, 48, 44, 40, 44))],
    "P0001": [("storage-tank", 0, (5.5, 5.5, 20.5, 5.5, 20.5, 20.5, 5.5, 20.5))],
    "P0002": [],  # an image without objects
}


def make_dota_versions(root: Path, *, size: int = 64, versions: Sequence[str] = ("1.0", "1.5", "2.0")) -> Path:
    """Write a fake DOTA dataset (``torchgeo.datasets.DOTA``, torchgeo 0.7 to 0.10 read the same layout).

    Layout (extracted ``dotav<v>_images_<split>.tar.gz`` and ``dotav<v>_annotations_<split>.tar.gz``)::

        dota/samples.csv                                         image_path,annotation_path,split,version
        dota/{train,val}/images/P<NNNN>.png                       RGB (P0001: grayscale) uint8 PNG
        dota/{train,val}/annotations/version<v>/P<NNNN>.txt       "x1 y1 ... x4 y4 class difficult" per line

    Annotation files start with DOTA's two header lines (``imagesource:...``, ``gsd:...``) except P0001's, which
    has none; P0002 has no objects. Images are shared by all versions, annotations are per version.

    Args:
        root: Directory to create the dataset in.
        size: Image height and width in pixels.
        versions: DOTA versions to write annotations for.

    Returns:
        The dataset root (``root / "dota"``).
    """
    out = Path(root) / "dota"
    rng = _rng("dota")
    rows = ["image_path,annotation_path,split,version"]
    for split in ("train", "val"):
        for name, objects in DOTA_OBJECTS.items():
            image = _render(rng, _label_map(rng, size, size, 3, block=8), _palette(rng, 3, 3))
            if name == "P0001":
                image = image[..., 0]  # a grayscale image (DOTA has some; torchgeo converts them to RGB)
            _write_pil(out / split / "images" / f"{name}.png", image)
            for version in versions:
                ann = out / split / "annotations" / f"version{version}" / f"{name}.txt"
                ann.parent.mkdir(parents=True, exist_ok=True)
                header = "" if name == "P0001" else "imagesource:GoogleEarth\ngsd:0.146343590398\n"
                lines = "".join(f"{' '.join(f'{c:g}' for c in xy)} {cls} {diff}\n" for cls, diff, xy in objects)
                ann.write_text(header + lines)
                rows.append(
                    f"{split}/images/{name}.png,{split}/annotations/version{version}/{name}.txt,{split},{version}"
                )
    (out / "samples.csv").write_text("\n".join(rows) + "\n")
    return out


DOTA_CLASSES: tuple[str, ...] = (
    "plane",
    "ship",
    "storage-tank",
    "baseball-diamond",
    "tennis-court",
    "basketball-court",
    "ground-track-field",
    "harbor",
    "bridge",
    "large-vehicle",
    "small-vehicle",
    "helicopter",
    "roundabout",
    "soccer-ball-field",
    "swimming-pool",
)


def _dota_objects(rng: np.random.Generator, height: int, width: int, count: int) -> list[tuple[np.ndarray, str, int]]:
    """Non-overlapping rotated rectangles: (4 x 2 corners clockwise on screen, class name, difficult flag)."""
    objects: list[tuple[np.ndarray, str, int]] = []
    centres: list[tuple[float, float, float]] = []
    for _ in range(20 * count):
        if len(objects) == count:
            break
        w, h = rng.uniform(8, 30), rng.uniform(5, 12)
        a = rng.uniform(-np.pi / 2, np.pi / 2)
        r = float(np.hypot(w, h)) / 2
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        if any(np.hypot(cx - x, cy - y) < r + q + 2 for x, y, q in centres):
            continue
        u = np.array([np.cos(a), np.sin(a)]) * w / 2
        v = np.array([-np.sin(a), np.cos(a)]) * h / 2
        corners = np.array([[cx, cy]]) + np.stack([-u - v, u - v, u + v, -u + v])
        name = DOTA_CLASSES[int(rng.integers(0, 4))]  # a few classes, so a tiny model can tell them apart
        objects.append((corners, name, int(rng.random() < 0.15)))
        centres.append((cx, cy, r))
    return objects


def make_dota(root: Path, *, size: int = 160) -> Path:
    """Write a fake DOTA v1.0 dataset (``torchgeo.datasets.DOTA``, oriented boxes).

    Layout (extracted ``dotav1.0_images_{train,val}.tar.gz`` and ``dotav1.0_annotations_{train,val}.tar.gz``,
    plus the ``samples.csv`` index torchgeo reads)::

        dota/samples.csv                                     ,image_path,annotation_path,split,version
        dota/{train,val}/images/P<NNNN>.png                  RGB uint8, full-size scenes of varying size
        dota/{train,val}/annotations/version1.0/P<NNNN>.txt  "x1 y1 x2 y2 x3 y3 x4 y4 class difficult" per object

    Three train and two val images of ``size`` to ``size + 64`` px per side; most annotation files start with
    DOTA's two header lines (``imagesource:`` and ``gsd:``), one does not, one val image has no objects. Objects
    are rotated rectangles painted in one colour per class on a textured background; about 15 % are difficult.

    Args:
        root: Directory to create the dataset in.
        size: Smallest image side in pixels.

    Returns:
        The dataset root (``root / "dota"``).
    """
    out = Path(root) / "dota"
    rng = _rng("dota")
    colours = _palette(rng, len(DOTA_CLASSES), 3)
    rows = [",image_path,annotation_path,split,version"]
    number = 0
    for split, count in (("train", 3), ("val", 2)):
        for k in range(count):
            height, width = size + 32 * (k % 3), size + 64 - 32 * (k % 2)
            background = _render(
                rng, _label_map(rng, height, width, 2, block=16), np.array([[90, 100, 80], [120, 110, 95]])
            )
            objects = [] if (split == "val" and k == 1) else _dota_objects(rng, height, width, 12)
            yy, xx = np.mgrid[:height, :width] + 0.5
            image = background.copy()
            for corners, name, _ in objects:
                inside = np.ones((height, width), dtype=bool)
                for i in range(4):  # the polygon's interior: on the inner side of every edge
                    (x1, y1), (x2, y2) = corners[i], corners[(i + 1) % 4]
                    inside &= (x2 - x1) * (yy - y1) - (y2 - y1) * (xx - x1) >= 0
                image[inside] = colours[DOTA_CLASSES.index(name)]
            stem = f"P{number:04d}"
            number += 1
            _write_pil(out / split / "images" / f"{stem}.png", image)
            header = "" if (split == "train" and k == 2) else "imagesource:GoogleEarth\ngsd:0.146343590398\n"
            lines = [" ".join(f"{v:.1f}" for v in c.ravel()) + f" {name} {d}" for c, name, d in objects]
            annotation = out / split / "annotations" / "version1.0" / f"{stem}.txt"
            annotation.parent.mkdir(parents=True, exist_ok=True)
            annotation.write_text(header + "".join(line + "\n" for line in lines))
            index = len(rows) - 1
            rows.append(f"{index},{split}/images/{stem}.png,{split}/annotations/version1.0/{stem}.txt,{split},1.0")
    (out / "samples.csv").write_text("\n".join(rows) + "\n")
    return out


FAKE_DATASETS: dict[str, Callable[[Path], Path]] = {
    "potsdam": make_potsdam,
    "vaihingen": make_vaihingen,
    "loveda": make_loveda,
    "levircd": make_levircd,
    "oscd": make_oscd,
    "ucmerced": make_ucmerced,
    "resisc45": make_resisc45,
    "millionaid": make_millionaid,
    "dota": make_dota,
}
"""Dataset name -> function that writes the fake dataset under a directory and returns the dataset root."""
