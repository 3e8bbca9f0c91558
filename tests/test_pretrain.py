"""``pretrain``: a self-supervised backbone from unlabelled scenes that ``train --backbone-weights`` starts from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lemevit_geo.errors import BundleError
from lemevit_geo.pipelines.apps.synthetic import GeneratedScene, make_scene
from lemevit_geo.weights import read_backbone
from tests.conftest import cli, cli_main

FAST = ["--epochs", 1, "--steps-per-epoch", 2, "--batch-size", 2, "--tile-size", 64]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[GeneratedScene]:
    """Two generated places, four unlabelled 4-band images (each scene's two dates)."""
    root = tmp_path_factory.mktemp("scenes")
    return [make_scene(root / f"place{i}", size=192, seed=i) for i in range(2)]


@pytest.fixture(scope="module")
def backbone(scenes: list[GeneratedScene], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pretrain") / "backbone.safetensors"
    images = str(Path(scenes[0].before).parent.parent / "place*" / "scene_*.tif")
    summary = json.loads(cli("pretrain", "--images", images, "-o", out, *FAST, "--json").output)
    return out, summary


def test_pretrain_writes_a_backbone_from_every_image(backbone: tuple[Path, dict]) -> None:
    out, summary = backbone
    assert summary["images"] == 4 and summary["method"] == "simmim" and summary["bands"] == 4
    assert summary["global_steps"] == 2 and summary["loss_first_epoch"] > 0
    state, config = read_backbone(out)
    assert config["arch"] == "tiny" and config["bands"] == 4 and config["tile_size"] == 64
    assert len(config["mean"]) == 4 and all(s > 0 for s in config["std"])
    assert "downsample_layers.0.0.weight" in state  # the official layout that --backbone-weights reads
    assert not any(k.startswith(("decoder", "mask_token")) for k in state)  # the backbone only


def test_pretrain_resumes_and_refuses_to_overwrite(backbone: tuple[Path, dict], scenes: list[GeneratedScene]) -> None:
    out, _ = backbone
    r = cli_main("pretrain", "--images", scenes[0].before, "-o", out, *FAST)
    assert r.returncode == 1 and "--overwrite" in r.stderr
    more = ["--epochs", 2, "--steps-per-epoch", 2, "--batch-size", 2, "--tile-size", 64]
    summary = json.loads(cli("pretrain", "--images", scenes[0].before, "-o", out, *more, "--resume", "--json").output)
    assert summary["epochs"] == 2 and summary["global_steps"] == 4


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_contrastive_methods_run(method: str, scenes: list[GeneratedScene], tmp_path: Path) -> None:
    out = tmp_path / f"{method}.safetensors"
    summary = json.loads(
        cli("pretrain", "--images", scenes[1].before, "-o", out, "--method", method, *FAST, "--json").output
    )
    assert summary["method"] == method and read_backbone(out)[1]["method"] == method


def _backbone_tensor(bundle: Path, pretrained: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One backbone weight as the bundle stores it, and the same weight in the pretrained file."""
    stored = load_file(str(bundle))
    key = next(k for k in pretrained if k.endswith("weight") and pretrained[k].ndim == 4)
    match = [k for k in stored if k.endswith(key) and stored[k].shape == pretrained[key].shape]
    assert match, f"{key} not in the bundle"
    return stored[match[0]], pretrained[key]


def test_backbone_starts_segmentation_and_change(
    backbone: tuple[Path, dict], scenes: list[GeneratedScene], tmp_path: Path
) -> None:
    out, _ = backbone
    pretrained, _ = read_backbone(out)
    scene = scenes[0]
    common = ["--epochs", 1, "--steps-per-epoch", 1, "--batch-size", 2, "--tile-size", 64, "--val-fraction", 0.4]
    common += ["--backbone-weights", out, "--freeze-backbone", "-q"]
    seg = tmp_path / "seg.safetensors"
    cli("train", "--dataset", "custom", "--images", scene.before, "--labels", scene.labels, "-o", seg, *common)
    got, want = _backbone_tensor(seg, pretrained)
    assert torch.equal(got, want)  # frozen: exactly the pretrained weights
    change = tmp_path / "change.safetensors"
    own = ["--before", scene.before, "--after", scene.after, "--labels", scene.change]
    cli("train", "--dataset", "custom", *own, "-o", change, *common)
    got, want = _backbone_tensor(change, pretrained)
    assert torch.equal(got, want)


def test_backbone_loads_into_a_task_model_and_junk_is_refused(backbone: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = backbone
    from lemevit_geo.models.factory import backbone_of, build_task_model
    from lemevit_geo.weights import load_backbone_weights

    model = build_task_model("segment", "tiny", in_chans=4, num_classes=3)
    load_backbone_weights(backbone_of(model), out)  # same bands: loads
    (tmp_path / "not.safetensors").write_bytes(b"junk")
    with pytest.raises(BundleError, match="not a safetensors"):
        read_backbone(tmp_path / "not.safetensors")


def test_band_jitter_changes_bands_independently() -> None:
    """The contrastive views' per-band brightness and contrast: each band of each image on its own, within the
    amount."""
    import torch

    from lemevit_geo.pipelines.training.ssl import BandJitter

    torch.manual_seed(0)
    image = torch.randn(4, 6, 32, 32)
    out = BandJitter(0.2)(image)
    gain = out.std(dim=(-2, -1)) / image.std(dim=(-2, -1))
    assert gain.min() >= 0.8 - 1e-4 and gain.max() <= 1.2 + 1e-4 and gain.std() > 0.01
