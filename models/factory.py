"""Task models around one LeMeViT backbone, built from a small config."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch.nn as nn

from lemevit_geo.models.lemevit import LeMeViT


def build_task_model(
    task: str, arch: str, in_chans: int, num_classes: int, drop_path_rate: float = 0.1, **head: Any
) -> nn.Module:
    """Build the model of a task (``head`` holds the head options a bundle stores).

    - ``segment``: UPerNet (segmentation_models_pytorch) on the four dense LeMeViT features, with a
      full-resolution pixel branch into the head when ``pixel_channels`` > 0
      (:class:`~lemevit_geo.models.segmentation.PixelUPerNet`); maps ``(B, bands, H, W)`` to class logits
      ``(B, classes, H, W)``.
    - ``change``: Siamese LeMeViT with the BIT-style head; maps both dates stacked on the channel
      axis ``(B, 2 * bands, H, W)`` to change logits ``(B, classes, H, W)``.
    - ``classify``: LeMeViT with its pooled image-and-meta-token head; maps ``(B, bands, H, W)`` to
      ``(B, classes)``.
    - ``detect``: LeMeViT + FPN + rotated FCOS head (:class:`~lemevit_geo.models.detection.OrientedFCOS`);
      in eval mode maps ``(B, bands, H, W)`` to ``(B, max_detections, 7)`` rows
      ``[cx, cy, w, h, angle, score, class]`` (input pixels, radians; padding rows have class -1).
    """
    name = f"lemevit_{arch}"
    if task == "segment":
        pixel_channels = head.pop("pixel_channels", 0)
        kwargs: dict[str, Any] = dict(
            encoder_name=f"tu-{name}",
            encoder_weights=None,
            in_channels=in_chans,
            classes=num_classes,
            drop_path_rate=drop_path_rate,
            **head,  # decoder_channels, ...; an unknown option fails here rather than being ignored
        )
        if pixel_channels:
            from lemevit_geo.models.segmentation import PixelUPerNet

            return PixelUPerNet(pixel_channels=pixel_channels, **kwargs)
        return smp.UPerNet(**kwargs)
    if task == "change":
        from lemevit_geo.models.change import ChangeModel

        return ChangeModel(arch, in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate, **head)
    if task == "detect":
        from lemevit_geo.models.detection import OrientedFCOS

        return OrientedFCOS(arch, in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate, **head)
    if task == "classify":
        return timm.create_model(
            name, in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate, **head
        )
    raise ValueError(f"no model for task {task!r} yet")


def backbone_of(model: nn.Module) -> LeMeViT:
    """The LeMeViT backbone inside a task model."""
    for module in model.modules():
        if isinstance(module, LeMeViT):
            return module
    raise ValueError("model has no LeMeViT backbone")


def head_options(task: str, **given: Any) -> dict[str, Any]:
    """Head options stored in a bundle for ``task``: the defaults, updated with ``given`` (for ``detect``: see
    :class:`~lemevit_geo.models.detection.FCOSOptions`, ``change``: :class:`~lemevit_geo.models.change.BITOptions`;
    ``segment`` also takes ``pixel_channels``)."""
    if task == "detect":
        from lemevit_geo.models.detection import DEFAULT_OPTIONS

        defaults = copy.deepcopy(DEFAULT_OPTIONS)
    elif task == "change":
        from lemevit_geo.models.change import BITOptions

        defaults = dataclasses.asdict(BITOptions())
    else:
        defaults = {"decoder_channels": 256} if task == "segment" else {}
    return {**defaults, **given}
