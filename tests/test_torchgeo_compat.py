"""What our code relies on in the installed torchgeo generation (0.8 on Python 3.11, 0.10 on Python 3.12+)."""

from __future__ import annotations

from pathlib import Path

import pytest
import shapely
import torch

from lemevit_geo.pipelines.apps.synthetic import make_scene
from lemevit_geo.pipelines.training.compat import grid_sampler, random_sampler
from lemevit_geo.pipelines.training.train_data import Loading, custom_data, raster_dataset
from tests.fake_datasets import DOTA_OBJECTS, make_dota_versions


def test_dota_samples_in_both_generations(tmp_path: Path) -> None:
    """torchgeo's DOTA: ``image`` float32 (3, H, W) in 0..255, ``bbox`` (N, 8) corners or ``bbox_xyxy`` (N, 4),
    ``labels`` (not ``label``) int64 class indices; the difficult flag is not kept."""
    from torchgeo.datasets import DOTA

    root = make_dota_versions(tmp_path)
    oriented = DOTA(root, split="train", version="2.0", bbox_orientation="oriented", checksum=False)
    horizontal = DOTA(root, split="val", version="1.0", bbox_orientation="horizontal", checksum=False)
    assert len(oriented) == len(horizontal) == len(DOTA_OBJECTS)
    for i, objects in enumerate(DOTA_OBJECTS.values()):
        s, h = oriented[i], horizontal[i]
        assert set(s) == {"image", "bbox", "labels"} and set(h) == {"image", "bbox_xyxy", "labels"}
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32  # grayscale PNGs too
        assert s["bbox"].shape == (len(objects), 8) and h["bbox_xyxy"].shape == (len(objects), 4)
        assert s["labels"].dtype == torch.int64
        assert s["labels"].tolist() == h["labels"].tolist() == [DOTA.classes.index(c) for c, _, _ in objects]
        assert s["bbox"].tolist() == [list(xy) for _, _, xy in objects]
        corners = s["bbox"].reshape(-1, 4, 2)
        xyxy = torch.cat([corners.amin(1), corners.amax(1)], dim=1)
        assert torch.equal(h["bbox_xyxy"], xyxy)


def test_samplers_stay_inside_their_region(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=256, seed=5)
    ds = raster_dataset([str(scene.before)], True)
    xs, ys, _ = ds.bounds
    res = ds.res[0]
    cut = xs.start + 160 * res  # on the pixel grid
    train, val = shapely.box(xs.start, ys.start, cut, ys.stop), shapely.box(cut, ys.start, xs.stop, ys.stop)
    torch.manual_seed(0)
    first = [(q[0].start, q[1].start) for q in random_sampler(ds, 32, 20, train)]
    torch.manual_seed(0)
    assert [(q[0].start, q[1].start) for q in random_sampler(ds, 32, 20, train)] == first  # follows torch's seed
    narrow = shapely.box(xs.start, ys.start, xs.start + 80 * res, ys.stop)  # wider than a tile, not 1.41 tiles
    assert len({q[0].start for q in random_sampler(ds, 64, 50, narrow)}) > 1
    size = 64 * res
    grid = list(grid_sampler(ds, (size, size), (size, size / 2), val))  # 256 x 96 pixels: 4 rows, 2 columns
    assert len(grid) == 8
    for sampler, roi in [
        (random_sampler(ds, 32, 20, train), train),
        (random_sampler(ds, 64, 50, narrow), narrow),
        (grid, val),
    ]:
        for q in sampler:
            box = shapely.box(q[0].start, q[1].start, q[0].stop, q[1].stop)
            assert roi.buffer(1e-6).contains(box)
            assert box.area == pytest.approx((q[0].stop - q[0].start) ** 2)


def test_validation_tiles_stay_in_the_validation_strip(tmp_path: Path) -> None:
    """A split between pixels would let torchgeo 0.10's pixel-snapped validation grid reach into the training strip."""
    scene = make_scene(tmp_path / "scene", size=256, seed=6)
    data = custom_data(
        images=str(scene.before),
        labels=str(scene.labels),
        label_column=None,
        classes=None,
        tile_size=64,
        loading=Loading(batch_size=2, num_workers=0, val_fraction=0.33, length=4),
        work_dir=tmp_path,
    )
    dm = data.datamodule
    tiles = list(dm.val_sampler())
    assert tiles
    for q in tiles:
        box = shapely.box(q[0].start, q[1].start, q[0].stop, q[1].stop)
        assert dm.val_roi.buffer(1e-6).contains(box) and box.intersection(dm.train_roi).area == 0
