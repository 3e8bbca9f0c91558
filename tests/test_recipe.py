"""The small-data recipe: augmentation alignment, options that reach the optimiser, scheduler and model, the
default tile that fits, and the baselines in the training summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lemevit_geo.bundle import load_bundle, read_config
from lemevit_geo.errors import InputError
from lemevit_geo.pipelines.apps.synthetic import make_scene
from lemevit_geo.pipelines.training.datamodules import IGNORE, TileAugmentation
from lemevit_geo.pipelines.training.tasks import warmup_cosine
from lemevit_geo.pipelines.training.train import balanced_weights, make_trainer
from lemevit_geo.settings import Hardware, Recipe
from tests.conftest import cli


def _blocks(batch: int, size: int, seed: int) -> torch.Tensor:
    """Class-id masks of 8 x 8 px blocks (smooth, so interpolated images agree with them away from edges)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 5, (batch, size // 8, size // 8), generator=g)
    return coarse.repeat_interleave(8, -2).repeat_interleave(8, -1)


def test_flips_and_rotations_move_both_dates_and_the_mask_alike() -> None:
    torch.manual_seed(0)
    mask = _blocks(16, 64, 1)
    mask[:, :2] = IGNORE
    # two dates, two bands each, all encoding the mask: any misalignment shows as a mismatch
    image = torch.stack([mask.float(), 2 * mask.float()], 1)[:, None].repeat(1, 2, 1, 1, 1) + 0.25
    out, moved = TileAugmentation(flips=True)(image, mask)
    assert out.shape == image.shape and moved.shape == mask.shape
    assert torch.allclose(out[:, 0], out[:, 1])  # both dates got the same transform
    assert torch.allclose(out[:, 0, 0] - 0.25, moved.float(), atol=1e-2)
    assert torch.allclose(out[:, 1, 1] - 0.25, 2 * moved.float(), atol=1e-2)
    # the transforms differ between tiles, and each is one of the eight symmetries of the square
    assert not torch.equal(moved, mask)
    for got, was in zip(moved, mask, strict=True):
        options = [torch.rot90(f, k, (-2, -1)) for f in (was, was.flip(-1)) for k in range(4)]
        assert any(torch.equal(got, o) for o in options)


def test_zoom_keeps_alignment_and_marks_what_comes_from_outside() -> None:
    torch.manual_seed(0)
    mask = _blocks(32, 64, 2)
    image = mask.float()[:, None]
    out, moved = TileAugmentation(flips=False, scale_jitter=0.4)(image, mask)
    assert (moved == IGNORE).any() and not (mask == IGNORE).any()  # zoom-outs bring in unlabelled borders
    inside = moved != IGNORE
    # bilinear image and nearest mask differ only along block edges: where the image is flat they agree exactly
    flat = inside & ((out[:, 0] - out[:, 0].round()).abs() < 1e-3)
    assert flat.float().mean() > 0.5 and torch.equal(out[:, 0].round()[flat], moved.float()[flat])
    # outside (away from the tile's edge, where bilinear blends both): 0, the band mean after normalisation
    near = torch.nn.functional.max_pool2d(inside.float()[:, None], 3, 1, 1)[:, 0] > 0
    assert (~near).any() and torch.all(out[:, 0][~near].abs() < 1e-4)


def test_band_jitter_changes_bands_independently_and_leaves_the_mask() -> None:
    torch.manual_seed(0)
    mask = _blocks(4, 32, 3)
    image = torch.randn(4, 6, 32, 32)
    out, moved = TileAugmentation(flips=False, band_jitter=0.2)(image, mask)
    assert torch.equal(moved, mask)
    gain = out.std(dim=(-2, -1)) / image.std(dim=(-2, -1))
    assert gain.min() >= 0.8 - 1e-4 and gain.max() <= 1.2 + 1e-4 and gain.std() > 0.01


def test_warmup_cosine_schedule() -> None:
    factors = [warmup_cosine(s, warmup=10, total=100) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0) and factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5) and factors[100] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert warmup_cosine(0, warmup=0, total=5) == pytest.approx(1.0)


def test_balanced_weights_favour_rare_classes() -> None:
    weights = balanced_weights([1000, 100, 10, 0], power=0.5)
    assert weights[1] == pytest.approx(1.0) and weights[0] == pytest.approx(math.sqrt(0.1), rel=1e-3)
    assert weights[2] == pytest.approx(math.sqrt(10), rel=1e-3) and weights[3] == 1.0  # unseen: untouched
    assert balanced_weights([5, 5], power=1.0) == [1.0, 1.0]


def test_recipe_refuses_bad_values() -> None:
    for bad in [dict(warmup=1.0), dict(drop_path=-0.1), dict(class_balance=float("nan")), dict(decoder_channels=0)]:
        with pytest.raises(InputError, match=next(iter(bad))):
            Recipe(**bad)


def test_early_stopping_is_wired_to_the_monitored_metric(tmp_path: Path) -> None:
    import lightning as L

    trainer, *_ = make_trainer(tmp_path, ("val_mIoU", "max"), 5, Hardware(accelerator="cpu"), early_stop=3)
    stops = [c for c in trainer.callbacks if isinstance(c, L.pytorch.callbacks.EarlyStopping)]
    assert len(stops) == 1 and stops[0].monitor == "val_mIoU" and stops[0].patience == 3 and stops[0].mode == "max"
    trainer, *_ = make_trainer(tmp_path, ("val_mIoU", "max"), 5, Hardware(accelerator="cpu"))
    assert not any(isinstance(c, L.pytorch.callbacks.EarlyStopping) for c in trainer.callbacks)


def _train_args(scene: object, out: Path, *extra: object) -> list[object]:
    return [
        "train",
        "--dataset",
        "custom",
        "--images",
        scene.before,  # type: ignore[attr-defined]
        "--labels",
        scene.labels,  # type: ignore[attr-defined]
        "--out",
        out,
        "--batch-size",
        2,
        "--val-fraction",
        0.25,
        "--json",
        *extra,
    ]


def test_recipe_options_reach_the_optimiser_scheduler_and_model(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=256, seed=6)
    out = tmp_path / "m.safetensors"
    options = ["--epochs", 2, "--steps-per-epoch", 3, "--lr", 0.002, "--weight-decay", 0.07, "--warmup", 0.34]
    options += ["--drop-path", 0.25, "--decoder-channels", 48, "--pixel-channels", 8, "--class-balance", 0.5]
    summary = json.loads(cli(*_train_args(scene, out, *options)).output)
    # the default tile is capped to fit the 64 px validation strip
    assert summary["tile_size"] == 64 and read_config(out).tile_size == 64
    ckpt = torch.load(tmp_path / "m.train" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.07, 0.0]  # norms, biases and meta tokens do not decay
    assert all(g["initial_lr"] == 0.002 for g in groups)
    (sched,) = ckpt["lr_schedulers"]
    assert sched["last_epoch"] == 6 and all(lr == pytest.approx(0.0, abs=1e-9) for lr in sched["_last_lr"])
    assert ckpt["hyper_parameters"]["drop_path"] == 0.25 and ckpt["hyper_parameters"]["warmup"] == 0.34
    weights = summary["class_weights"]
    assert len(weights) == 5 and max(weights) > 1 > min(weights)  # class balance from the training labels
    model, config = load_bundle(out)
    assert config.head == {"decoder_channels": 48, "pixel_channels": 8} == summary["head"]
    assert type(model).__name__ == "PixelUPerNet" and model.pixel_branch[0][0].out_channels == 8
    assert model.decoder.fusion_block[0].out_channels == 48
    from lemevit_geo.pipelines.training.tasks import SegmentationModule

    module = SegmentationModule(in_channels=4, num_classes=5, drop_path=0.25, head=config.head)
    drops = [m.drop_prob for m in module.model.modules() if type(m).__name__ == "DropPath"]
    assert max(drops) == pytest.approx(0.25)


def test_plain_upernet_without_pixel_branch_and_plateau_schedule(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=256, seed=7)
    out = tmp_path / "m.safetensors"
    options = ["--epochs", 1, "--steps-per-epoch", 2, "--pixel-channels", 0, "--schedule", "plateau", "--no-augment"]
    cli(*_train_args(scene, out, *options, "--tile-size", 64))
    model, config = load_bundle(out)
    assert type(model).__name__ == "UPerNet" and config.head == {"decoder_channels": 256, "pixel_channels": 0}
    ckpt = torch.load(tmp_path / "m.train" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "ReduceLROnPlateau" in str(ckpt["lr_schedulers"][0].keys()) or "patience" in ckpt["lr_schedulers"][0]


def test_summary_reports_majority_and_pixel_baselines(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    scene = make_scene(tmp_path / "scene", size=256, seed=8)
    out = tmp_path / "m.safetensors"
    options = ["--epochs", 1, "--steps-per-epoch", 2, "--tile-size", 64, "--baseline"]
    summary = json.loads(cli(*_train_args(scene, out, *options)).output)
    majority, pixel = summary["baselines"]["majority"], summary["baselines"]["pixel_classifier"]
    assert majority["class"] in read_config(out).classes and 0 < majority["OA"] <= 1 and 0 <= majority["mIoU"] <= 1
    assert majority["mIoU"] <= majority["OA"] / 2 + 1e-6  # one class right, at least one other wrong
    assert 0 < pixel["OA"] <= 1 and 0 < pixel["mIoU"] <= 1 and pixel["train_pixels"] > 1000
    assert pixel["OA"] > majority["OA"]  # the generated classes are separable per pixel
    assert set(summary["validation"]) >= {"OA", "mIoU"} and summary["validation"]["mIoU"] == summary["best"]


def test_baseline_and_augmentation_options_are_refused_where_they_do_not_apply(tmp_path: Path) -> None:
    from tests.conftest import cli_main

    r = cli_main(
        "train", "--dataset", "potsdam", "--root", tmp_path, "--band-jitter", 0.1, "-o", tmp_path / "m.safetensors"
    )
    assert r.returncode == 1 and "--band-jitter" in r.stderr and "own data" in r.stderr
    r = cli_main(
        "train", "--dataset", "potsdam", "--root", tmp_path, "--class-balance", 1, "-o", tmp_path / "m.safetensors"
    )
    assert r.returncode == 1 and "--class-balance" in r.stderr


def test_pixel_branch_sees_single_pixels() -> None:
    """A change to one input pixel changes that pixel's logits through the full-resolution branch."""
    from lemevit_geo.models.factory import build_task_model

    torch.manual_seed(0)
    model = build_task_model("segment", "tiny", in_chans=3, num_classes=4, pixel_channels=8).eval()
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[0, :, 30, 30] += 5.0
    with torch.no_grad():
        diff = (model(y) - model(x)).abs().sum(1)[0]
    assert diff[30, 30] > 10 * np.median(diff.numpy())


def test_train_prints_the_model_next_to_its_baselines() -> None:
    from lemevit_geo.cli.app import console
    from lemevit_geo.cli.display import report_baselines
    from lemevit_geo.options import Display

    summary = {
        "validation": {"OA": 0.81, "mIoU": 0.52, "loss": 0.6},
        "baselines": {
            "majority": {"class": "forest", "OA": 0.4, "mIoU": 0.08},
            "pixel_classifier": {"OA": 0.7, "mIoU": 0.41, "train_pixels": 9000},
        },
    }
    with console.capture() as captured:
        report_baselines(summary, Display())
    lines = captured.get().splitlines()
    assert any("model" in line and "0.8100" in line and "0.5200" in line for line in lines)
    assert any("majority class (forest)" in line and "0.4000" in line for line in lines)
    assert any("gradient boosting" in line and "0.4100" in line for line in lines)
    with console.capture() as captured:
        report_baselines(summary, Display(json=True))
    assert captured.get() == ""


def test_detection_follows_augment_and_refuses_jitter(tmp_path: Path) -> None:
    """Own detection crops flip and turn with their boxes (``flip_rotate``) unless --no-augment; the pixel-only
    jitters, class balance and the dense tasks' schedule options do not apply to boxes and are refused."""
    from lemevit_geo.pipelines.training.train import load_data

    scene = make_scene(tmp_path / "scene", size=320, seed=5)
    own = dict(images=str(scene.before), labels=str(scene.objects), label_column=None, classes=None)
    common = dict(name="custom", root=None, own=own, task="detect", tile_size=64, val_fraction=0.25)
    common.update(hardware=Hardware(accelerator="cpu"), work_dir=tmp_path)
    for augment in (True, False):
        data, _ = load_data(**common, recipe=Recipe(augment=augment))
        assert data.datamodule.train_dataset.augment is augment and not data.datamodule.val_dataset.augment
    for bad in (dict(band_jitter=0.1), dict(scale_jitter=0.1), dict(class_balance=0.5), dict(warmup=0.2)):
        with pytest.raises(InputError, match=next(iter(bad))):
            load_data(**common, recipe=Recipe(**bad))
