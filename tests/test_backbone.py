"""The LeMeViT backbone: upstream equality, timm integration, bands, gradients, sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models._manipulate import adapt_input_conv

import lemevit_geo.models  # noqa: F401  (registers the models with timm)
from lemevit_geo.errors import BundleError
from lemevit_geo.models.lemevit import checkpoint_filter_fn
from lemevit_geo.weights import load_backbone_weights
from tests.reference_fill import fill_state_dict

DATA = Path(__file__).parent / "data"
SIZES = ["tiny", "small", "base"]
PARAMS = {"tiny": 8_635_816, "small": 16_400_456, "base": 53_098_152}


def reference(size: str) -> dict:
    return torch.load(DATA / f"lemevit_{size}_reference.pt", weights_only=True)


def filled(size: str, **kwargs) -> torch.nn.Module:
    model = timm.create_model(f"lemevit_{size}", **kwargs)
    model.load_state_dict(fill_state_dict(model.state_dict()))
    return model.eval()


@pytest.mark.parametrize("size", SIZES)
def test_state_dict_and_parameter_count_equal_upstream(size: str) -> None:
    ref = reference(size)
    model = timm.create_model(f"lemevit_{size}")
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, tuple(shape)) for k, shape, _ in ref["keys"]]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"] == PARAMS[size]


@pytest.mark.parametrize("size", SIZES)
def test_logits_and_dense_features_match_upstream(size: str) -> None:
    ref = reference(size)
    model = filled(size)
    with torch.no_grad():
        logits = model(ref["input_cls"].float())
        features = model.forward_intermediates(ref["input_dense"].float(), intermediates_only=True)
    torch.testing.assert_close(logits, ref["logits"], atol=1e-4, rtol=1e-4)
    assert len(features) == 4
    for ours, theirs in zip(features, ref["features"], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_features_only_model_matches_upstream_features() -> None:
    ref = reference("tiny")
    full = filled("tiny")
    features = timm.create_model("lemevit_tiny", features_only=True).eval()
    features.model.load_state_dict(checkpoint_filter_fn(full.state_dict(), features.model))
    assert features.feature_info.channels() == [64, 128, 192, 320]
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        out = features(ref["input_dense"].float())
    for ours, theirs in zip(out, ref["features"], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "state_dict_ema", "backbone.", "module."])
def test_official_checkpoint_wrappings_load_strictly(tmp_path: Path, wrap: str) -> None:
    source = filled("tiny")
    sd = source.state_dict()
    if wrap in ("model", "state_dict", "state_dict_ema"):
        ckpt = {wrap: sd, "epoch": 3}
    elif wrap.endswith("."):
        ckpt = {"state_dict": {wrap + k: v for k, v in sd.items()}}
    else:
        ckpt = sd
    path = tmp_path / "official.pth"
    torch.save(ckpt, path)
    model = timm.create_model("lemevit_tiny")
    load_backbone_weights(model, path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sd[k], atol=0, rtol=0)


def test_checkpoint_of_other_size_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "small.pth"
    torch.save({"model": timm.create_model("lemevit_small").state_dict()}, path)
    with pytest.raises(BundleError, match="does not fit"):
        load_backbone_weights(timm.create_model("lemevit_tiny"), path)


@pytest.mark.parametrize("bands", [1, 4, 13])
def test_three_band_weights_adapt_to_other_band_counts(tmp_path: Path, bands: int) -> None:
    rgb = filled("tiny").state_dict()
    path = tmp_path / "rgb.pth"
    torch.save({"model": rgb}, path)
    model = timm.create_model("lemevit_tiny", in_chans=bands)
    load_backbone_weights(model, path)
    conv = model.state_dict()["downsample_layers.0.0.weight"]
    assert conv.shape == (32, bands, 3, 3)
    expected = adapt_input_conv(bands, rgb["downsample_layers.0.0.weight"])
    torch.testing.assert_close(conv, expected)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, bands, 64, 64)).shape == (1, 1000)


def test_every_parameter_gets_a_gradient() -> None:
    model = timm.create_model("lemevit_tiny", num_classes=5).train()
    model(torch.randn(2, 3, 64, 96)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    dense = timm.create_model("lemevit_tiny", features_only=True).train()
    sum(f.mean() for f in dense(torch.randn(2, 3, 64, 96))).backward()
    assert [n for n, p in dense.named_parameters() if p.grad is None] == []


def test_upernet_from_segmentation_models_pytorch_trains() -> None:
    import segmentation_models_pytorch as smp

    model = smp.UPerNet(encoder_name="tu-lemevit_tiny", encoder_weights=None, in_channels=3, classes=6)
    x = torch.randn(2, 3, 256, 256)
    out = model(x)
    assert out.shape == (2, 6, 256, 256)
    torch.nn.functional.cross_entropy(out, torch.randint(0, 6, (2, 256, 256))).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("option", ["attn_drop_rate", "drop_path_rate"])
def test_dropout_options_act_in_training_only(option: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model("lemevit_tiny", num_classes=10, **{option: 0.5})
    x = torch.randn(2, 3, 64, 64)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


def test_odd_and_non_square_inputs_work() -> None:
    model = timm.create_model("lemevit_tiny", features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 100, 130))
    assert [tuple(f.shape[-2:]) for f in feats] == [(25, 33), (13, 17), (7, 9), (4, 5)]


def test_too_small_input_names_working_sizes() -> None:
    model = timm.create_model("lemevit_tiny").eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 8, 8))
