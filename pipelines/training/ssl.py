"""Self-supervised objectives of ``pretrain``: masked image modelling on LeMeViT, and torchgeo's contrastive trainers.

- :class:`SimMIM` (Xie et al., `SimMIM: A Simple Framework for Masked Image Modeling`, CVPR 2022,
  https://arxiv.org/abs/2111.09886), written from the paper for LeMeViT: random 16 x 16 px patches of each
  tile are hidden (their pixels zeroed and their stride-4 stem tokens replaced by a learnt mask token), the
  backbone encodes the tile, a linear layer on the stride-32 features predicts every pixel's normalised band
  values (pixel shuffle), and the loss is the L1 error on the hidden pixels. It needs no augmentation that
  assumes RGB, so it suits any band count.
- :class:`SimCLR` and :class:`MoCo`: torchgeo's ``SimCLRTask`` (v1) and ``MoCoTask`` (v3) on the
  timm-registered LeMeViT, with views made for normalised multispectral tiles (:func:`contrastive_views`)
  and the same AdamW + warm-up/cosine optimiser as training.

Each module exposes ``backbone``, a classification-form LeMeViT (``num_classes=0``) whose state dict is the
official layout that ``train --backbone-weights`` loads.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import timm
import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from lemevit_geo.models import LeMeViT
from lemevit_geo.pipelines.training.compat import MoCoTask, SimCLRTask
from lemevit_geo.pipelines.training.tasks import adamw_cosine

#: Side of the square patches SimMIM hides, in pixels (a multiple of the stem's stride, 4).
MASK_PATCH = 16
#: Output stride of the features SimMIM reconstructs from.
STRIDE = 32


def patch_mask(batch: int, height: int, width: int, ratio: float, device: torch.device) -> torch.Tensor:
    """A ``(batch, 1, height / MASK_PATCH, width / MASK_PATCH)`` mask with exactly ``round(ratio * patches)`` ones
    per tile, at random places."""
    rows, cols = height // MASK_PATCH, width // MASK_PATCH
    hidden = max(1, round(ratio * rows * cols))
    order = torch.rand(batch, rows * cols, device=device).argsort(dim=1)
    mask = torch.zeros(batch, rows * cols, device=device).scatter_(1, order[:, :hidden], 1.0)
    return mask.view(batch, 1, rows, cols)


class SimMIM(L.LightningModule):
    """Masked image modelling of LeMeViT on unlabelled tiles (batches hold normalised ``image``).

    Args:
        arch: LeMeViT size.
        in_channels: Input bands.
        mask_ratio: Share of each tile's patches hidden.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        warmup: Share of the steps that warm the learning rate up.
    """

    def __init__(
        self, arch: str, in_channels: int, mask_ratio: float, lr: float, weight_decay: float, warmup: float
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone: LeMeViT = timm.create_model(f"lemevit_{arch}", in_chans=in_channels, num_classes=0)
        self.mask_token = nn.Parameter(torch.zeros(1, self.backbone.embed_dims[0], 1, 1))
        trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(self.backbone.num_features, STRIDE**2 * in_channels, 1), nn.PixelShuffle(STRIDE)
        )
        self._hidden: torch.Tensor | None = None  # the stem-token mask of the step being run
        self.backbone.downsample_layers[0].register_forward_hook(self._hide_tokens)

    def _hide_tokens(self, module: nn.Module, inputs: Any, tokens: torch.Tensor) -> torch.Tensor:
        if self._hidden is None:
            return tokens
        hidden = self._hidden.to(tokens.dtype)
        return tokens * (1 - hidden) + self.mask_token.to(tokens.dtype) * hidden

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        mask = patch_mask(x.shape[0], *x.shape[-2:], self.hparams["mask_ratio"], x.device)
        pixels = mask.repeat_interleave(MASK_PATCH, -2).repeat_interleave(MASK_PATCH, -1)
        self._hidden = mask.repeat_interleave(MASK_PATCH // 4, -2).repeat_interleave(MASK_PATCH // 4, -1)
        try:
            features, _ = self.backbone.forward_features(x * (1 - pixels))
        finally:
            self._hidden = None
        error = (self.decoder(features).float() - x).abs() * pixels
        loss = error.sum() / (pixels.sum() * x.shape[1]).clamp(min=1)
        self.log("train_loss", loss, batch_size=x.shape[0], on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adamw_cosine(self, hp["lr"], hp["weight_decay"], hp["warmup"])


class BandJitter(torch.nn.Module):
    """Per-band brightness and contrast of normalised images ``(B, C, H, W)``: ``x * (1 + a) + b`` with ``a`` and
    ``b`` drawn uniformly from ``[-amount, amount]`` for each band of each image."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.amount = amount

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        uniform = 2 * torch.rand(2, *image.shape[:2], 1, 1, device=image.device, dtype=image.dtype) - 1
        gain, bias = (self.amount * uniform).unbind()
        return image * (1 + gain) + bias


def contrastive_views(size: int) -> nn.Module:
    """Random views of normalised multispectral tiles: crops of 20-100 % of the tile resized back, flips,
    90-degree rotations, blur, and per-band brightness/contrast (:class:`BandJitter`) in place of RGB colour
    jitter and grayscale."""
    import kornia.augmentation as K

    blur = max(3, size // 10 // 2 * 2 + 1)
    geometric = K.AugmentationSequential(
        K.RandomResizedCrop(size=(size, size), scale=(0.2, 1.0)),
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
        K.RandomRotation90(times=(0, 3), p=1.0),
        K.RandomGaussianBlur(kernel_size=(blur, blur), sigma=(0.1, 2.0), p=0.5),
        data_keys=["input"],
    )
    return nn.Sequential(geometric, BandJitter(0.4))


class _Contrastive:
    """A torchgeo contrastive trainer on LeMeViT (by its timm name) with our views (:func:`contrastive_views`)
    and our AdamW with warm-up and cosine decay in place of its optimiser (``warmup``: a share of the steps).

    Attributes:
        method: The trainer's own arguments (version, projection).
        views: Names of the trainer's arguments that take the views.
    """

    warmup: float
    method: ClassVar[dict[str, Any]] = {}
    views: ClassVar[tuple[str, ...]] = ()

    def __init__(self, arch: str, in_channels: int, size: int, lr: float, weight_decay: float, warmup: float) -> None:
        self.warmup = warmup
        shared = dict(model=f"lemevit_{arch}", in_channels=in_channels, lr=lr, weight_decay=weight_decay, size=size)
        views = {name: contrastive_views(size) for name in self.views}
        super().__init__(**shared, **self.method, **views)  # type: ignore[call-arg]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams  # type: ignore[attr-defined]
        return adamw_cosine(self, hp["lr"], hp["weight_decay"], self.warmup)  # type: ignore[arg-type]


class SimCLR(_Contrastive, SimCLRTask):
    """torchgeo's SimCLR (v1: two-layer projection, no memory bank) on LeMeViT, with our views and optimiser."""

    method = {"version": 1, "layers": 2, "memory_bank_size": 0}
    views = ("augmentations",)


class MoCo(_Contrastive, MoCoTask):
    """torchgeo's MoCo v3 (momentum encoder, prediction head) on LeMeViT, with our views and optimiser and a
    projection sized for small runs (512 hidden, 128 out)."""

    method = {"version": 3, "layers": 3, "hidden_dim": 512, "output_dim": 128}
    views = ("augmentation1", "augmentation2")


#: The module of each ``pretrain`` method.
METHODS: dict[str, type[L.LightningModule]] = {"simmim": SimMIM, "simclr": SimCLR, "moco": MoCo}
