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
from lemevit_geo.pipelines.training.train import balanced_weights
from lemevit_geo.settings import Hardware, Recipe, TrainSpec
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
    out, moved = TileAugmentation()(image, mask)
    assert out.shape == image.shape and moved.shape == mask.shape
    assert torch.allclose(out[:, 0], out[:, 1])  # both dates got the same transform
    assert torch.allclose(out[:, 0, 0] - 0.25, moved.float(), atol=1e-2)
    assert torch.allclose(out[:, 1, 1] - 0.25, 2 * moved.float(), atol=1e-2)
    # the transforms differ between tiles, and each is one of the eight symmetries of the square
    assert not torch.equal(moved, mask)
    for got, was in zip(moved, mask, strict=True):
        options = [torch.rot90(f, k, (-2, -1)) for f in (was, was.flip(-1)) for k in range(4)]
        assert any(torch.equal(got, o) for o in options)


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


def test_unmeasured_recipe_options_are_gone() -> None:
    """``--scale-jitter``, ``--band-jitter`` and ``--early-stop`` showed no measured benefit and were removed:
    the CLI refuses them as usage errors (exit 2) and the recipe has no such fields."""
    from tests.conftest import cli_main

    for flag in ("--scale-jitter", "--band-jitter", "--early-stop"):
        r = cli_main("train", "--dataset", "custom", flag, "1", "-o", "m.safetensors")
        assert r.returncode == 2 and "No such option" in r.stderr, (flag, r.stderr)
    assert not {"scale_jitter", "band_jitter", "early_stop"} & set(Recipe.__dataclass_fields__)


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

    r = cli_main("train", "--dataset", "potsdam", "--root", tmp_path, "--no-augment", "-o", tmp_path / "m.safetensors")
    assert r.returncode == 1 and "--augment" in r.stderr and "own data" in r.stderr
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


def test_detection_follows_augment_and_refuses_pixel_options(tmp_path: Path) -> None:
    """Own detection crops flip and turn with their boxes (``flip_rotate``) unless --no-augment; class balance
    and the dense tasks' schedule options do not apply to boxes and are refused."""
    from lemevit_geo.pipelines.training.train import load_data

    scene = make_scene(tmp_path / "scene", size=320, seed=5)
    common = dict(dataset="custom", images=str(scene.before), labels=str(scene.objects), task="detect")
    common.update(tile_size=64, val_fraction=0.25, hardware=Hardware(accelerator="cpu"))
    for augment in (True, False):
        data, _ = load_data(TrainSpec(**common, recipe=Recipe(augment=augment)), tmp_path)
        assert data.datamodule.train_dataset.augment is augment and not data.datamodule.val_dataset.augment
    for bad in (dict(class_balance=0.5), dict(warmup=0.2)):
        with pytest.raises(InputError, match=next(iter(bad))):
            load_data(TrainSpec(**common, recipe=Recipe(**bad)), tmp_path)
