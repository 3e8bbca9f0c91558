"""UPerNet with a full-resolution pixel branch for the segmentation head.

UPerNet (Xiao et al., `Unified Perceptual Parsing for Scene Understanding`, ECCV 2018,
https://arxiv.org/abs/1807.10221; segmentation_models_pytorch's implementation) decodes the four dense
LeMeViT features to stride 4 and upsamples its logits by 4. The backbone's stem reaches stride 4 after two
strided convolutions, so each pixel's own band values reach the head only mixed into 4 x 4 tokens. On
medium-resolution imagery (10-30 m pixels) that value is much of the signal, and on small training sets the
network learns it late: a per-pixel classifier on the raw bands gets it for free.

:class:`PixelUPerNet` keeps smp's UPerNet (same encoder and decoder modules and state-dict keys) and adds a
small full-resolution branch, in the spirit of DeepLabv3+'s low-level skip (Chen et al., ECCV 2018,
https://arxiv.org/abs/1802.02611): a per-pixel layer and a 3 x 3 convolution on the input bands, concatenated
with the decoder output (projected to the same width and upsampled bilinearly), then a per-pixel MLP that
gives the class logits. The head thus combines the transformer's context with each pixel's own spectrum at
full resolution.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PixelUPerNet"]


def _conv_bn_gelu(dim_in: int, dim_out: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(dim_out),
        nn.GELU(),
    )


class PixelUPerNet(smp.UPerNet):
    """smp's UPerNet whose head also reads every pixel's bands at full resolution.

    Args:
        pixel_channels: Width of the pixel branch and of the fused head.
        in_channels: Input bands.
        classes: Output classes.
        decoder_channels: UPerNet decoder width.
        **kwargs: smp.UPerNet's other arguments (``encoder_name``, ``encoder_weights``, timm encoder options).
    """

    def __init__(
        self, *, pixel_channels: int, in_channels: int, classes: int, decoder_channels: int = 256, **kwargs: Any
    ) -> None:
        super().__init__(in_channels=in_channels, classes=classes, decoder_channels=decoder_channels, **kwargs)
        width = pixel_channels
        self.pixel_branch = nn.Sequential(
            _conv_bn_gelu(in_channels, width, 1),  # each pixel's spectrum
            _conv_bn_gelu(width, width, 3),  # and its 3 x 3 neighbourhood
        )
        self.context = _conv_bn_gelu(decoder_channels, width, 1)
        self.segmentation_head = nn.Sequential(_conv_bn_gelu(2 * width, width, 1), nn.Conv2d(width, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, classes, H, W)`` of images ``(B, bands, H, W)``."""
        if not (torch.jit.is_scripting() or torch.jit.is_tracing()):
            self.check_input_shape(x)
        context = self.context(self.decoder(self.encoder(x)))
        context = F.interpolate(context, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.segmentation_head(torch.cat([context, self.pixel_branch(x)], dim=1))
