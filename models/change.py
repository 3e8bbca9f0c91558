"""Bitemporal change detection: a Siamese LeMeViT with a BIT-style head.

Following BIT (Chen et al., "Remote Sensing Image Change Detection with Transformers", TGRS 2021), the
head condenses each date's features into a few *semantic tokens* (a spatial-attention tokenizer), lets
the tokens of both dates interact in a transformer encoder, projects each date's tokens back onto its
pixels with a transformer decoder, and classifies the absolute difference of the refined features.
The backbone is shared between the dates; channel counts come from its ``feature_info``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


class FeatureFusion(nn.Module):
    """Project the multi-scale features to ``dim`` channels and sum them at the finest stride."""

    def __init__(self, in_channels: Sequence[int], dim: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1, bias=False), nn.BatchNorm2d(dim)) for c in in_channels
        )
        self.out = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU())

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        x = sum(
            F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if i else p(f)
            for i, (p, f) in enumerate(zip(self.proj, features, strict=True))
        )
        return self.out(x)


class SemanticTokenizer(nn.Module):
    """Spatial attention pooling: ``tokens`` attention maps over the pixels, each giving one token."""

    def __init__(self, dim: int, tokens: int) -> None:
        super().__init__()
        self.attn = nn.Conv2d(dim, tokens, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = rearrange(self.attn(x), "b l h w -> b l (h w)").softmax(dim=-1)
        return weights @ rearrange(x, "b c h w -> b (h w) c")  # (B, L, C)


@dataclasses.dataclass(frozen=True)
class BITOptions:
    """The head options of :class:`ChangeModel`, as a bundle stores them (the one home of their defaults).

    Attributes:
        dim: Width of the fused features and of the tokens.
        tokens: Semantic tokens per date.
        heads: Attention heads of the token transformer.
        enc_depth: Layers of the transformer encoder over both dates' tokens.
        dec_depth: Layers of the transformer decoder from the tokens back to the pixels.
        dropout: Dropout inside the transformer layers.
    """

    dim: int = 64
    tokens: int = 4
    heads: int = 4
    enc_depth: int = 1
    dec_depth: int = 1
    dropout: float = 0.0


class BITDecoder(nn.Module):
    """BIT-style decoder on two dates' multi-scale features; returns their refined difference at the finest stride."""

    def __init__(self, in_channels: Sequence[int], options: BITOptions = BITOptions()) -> None:
        super().__init__()
        dim, tokens = options.dim, options.tokens
        self.out_channels = dim
        self.fuse = FeatureFusion(in_channels, dim)
        self.tokenizer = SemanticTokenizer(dim, tokens)
        self.token_pos = nn.Parameter(torch.randn(1, 2 * tokens, dim) * 0.02)
        layer = dict(
            d_model=dim,
            nhead=options.heads,
            dim_feedforward=2 * dim,
            dropout=options.dropout,
            batch_first=True,
            norm_first=True,
        )
        encoder_layer = nn.TransformerEncoderLayer(**layer)
        self.encoder = nn.TransformerEncoder(encoder_layer, options.enc_depth, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), options.dec_depth)

    def forward(self, feats1: Sequence[torch.Tensor], feats2: Sequence[torch.Tensor]) -> torch.Tensor:
        x1, x2 = self.fuse(feats1), self.fuse(feats2)
        h, w = x1.shape[-2:]
        tokens = torch.cat([self.tokenizer(x1), self.tokenizer(x2)], dim=1) + self.token_pos
        t1, t2 = self.encoder(tokens).chunk(2, dim=1)
        y1 = self.decoder(rearrange(x1, "b c h w -> b (h w) c"), t1)
        y2 = self.decoder(rearrange(x2, "b c h w -> b (h w) c"), t2)
        return rearrange((y1 - y2).abs(), "b (h w) c -> b c h w", h=h, w=w)


def change_head(dim: int, num_classes: int) -> nn.Sequential:
    """The classifier of the refined difference features."""
    return nn.Sequential(
        nn.Conv2d(dim, dim, 3, padding=1, bias=False),
        nn.BatchNorm2d(dim),
        nn.ReLU(),
        nn.Conv2d(dim, num_classes, 3, padding=1),
    )


class ChangeModel(nn.Module):
    """Siamese LeMeViT + BIT head, laid out like smp's models (``encoder``, ``decoder``, ``segmentation_head``).

    Input: both dates stacked on the channel axis ``(B, 2 * bands, H, W)`` (before first); output: change
    logits ``(B, num_classes, H, W)`` at the input's size.
    """

    def __init__(
        self, arch: str = "tiny", in_chans: int = 3, num_classes: int = 2, drop_path_rate: float = 0.1, **head: Any
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.encoder = timm.create_model(
            f"lemevit_{arch}", features_only=True, in_chans=in_chans, drop_path_rate=drop_path_rate
        )
        self.decoder = BITDecoder(self.encoder.feature_info.channels(), BITOptions(**head))
        self.segmentation_head = change_head(self.decoder.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 2 * self.in_chans:
            raise ValueError(f"expected both dates stacked: {2 * self.in_chans} channels, got {x.shape[1]}")
        feats = self.encoder(rearrange(x, "b (t c) h w -> (t b) c h w", t=2))  # one backbone pass for both dates
        before, after = zip(*(f.chunk(2) for f in feats), strict=True)
        logits = self.segmentation_head(self.decoder(before, after))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
