"""LeMeViT: Efficient Vision Transformer with Learnable Meta Tokens for Remote Sensing.

Paper: `LeMeViT: Efficient Vision Transformer with Learnable Meta Tokens for Remote Sensing Image
Interpretation` - https://arxiv.org/abs/2405.09789 (IJCAI 2024)

Original code: https://github.com/ViTAE-Transformer/LeMeViT

This implementation keeps the upstream state-dict layout (so official checkpoints load with
``strict=True``) and the upstream numerics (verified against reference outputs of the upstream
code), with one attention path (``F.scaled_dot_product_attention``, or flash-attn for CUDA half
precision tensors), working ``attn_drop``/``drop_path``, any number of input bands, and the timm
feature API (``feature_info``, ``forward_intermediates``, ``features_only=True``).

The network has five stages. Stage 0 ("C", cross attention) only lets the learnable meta tokens
attend to the stride-4 image tokens. Stages 1-2 ("D", dual cross attention) exchange information
between image tokens and meta tokens in both directions. Stages 3-4 ("S") are standard
self-attention. Stages 1-4 give the four dense features at strides 4, 8, 16 and 32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import adapt_input_conv

__all__ = ["LeMeViT", "attention_backend", "checkpoint_filter_fn", "LEMEVIT_CONFIGS"]

try:  # optional GPU kernel
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the environment
    _flash_attn_func = None

#: Architecture of each size, as published upstream.
LEMEVIT_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(depths=(1, 2, 2, 8, 2), embed_dims=(64, 64, 128, 192, 320)),
    "small": dict(depths=(1, 2, 2, 6, 2), embed_dims=(96, 96, 192, 320, 384)),
    "base": dict(depths=(2, 4, 4, 18, 4), embed_dims=(96, 96, 192, 384, 512)),
}
ATTN_TYPES = ("C", "D", "D", "S", "S")
#: Last dual cross-attention stage: dense features never read the meta tokens after it.
LAST_DUAL = max(i for i, t in enumerate(ATTN_TYPES) if t == "D")


def attention_backend(device: torch.device | str, dtype: torch.dtype) -> str:
    """Name the attention kernel family used for tensors on ``device`` with ``dtype``."""
    device = torch.device(device)
    if _flash_attn_func is not None and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return "flash-attn"
    return "sdpa"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, dropout_p: float) -> torch.Tensor:
    """Multi-head attention on ``(B, heads, N, head_dim)`` tensors, returning ``(B, N, heads * head_dim)``.

    The single attention code path of the model: flash-attn for CUDA half-precision tensors when it
    is installed, otherwise PyTorch's fused ``scaled_dot_product_attention``.
    """
    if _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = (rearrange(t, "b h n d -> b n h d") for t in (q, k, v))
        out = _flash_attn_func(q, k, v, dropout_p=dropout_p, softmax_scale=scale)
        return rearrange(out, "b n h d -> b n (h d)")
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    return rearrange(out, "b h n d -> b n (h d)")


def _heads(t: torch.Tensor, parts: int, num_heads: int) -> tuple[torch.Tensor, ...]:
    """Split a packed ``(B, N, parts * C)`` projection into ``parts`` tensors of ``(B, heads, N, C / heads)``."""
    return rearrange(t, "b n (p h d) -> p b h n d", p=parts, h=num_heads).unbind(0)


class StandardAttention(nn.Module):
    """Multi-head self-attention (stages "S")."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _heads(self.qkv(x), 3, self.num_heads)
        x = attend(q, k, v, None, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x))


class CrossAttention(nn.Module):
    """Meta tokens attend to image tokens (stage "C"); the image tokens are left unchanged."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        (q,) = _heads(self.q(c), 1, self.num_heads)
        k, v = _heads(self.kv(x), 2, self.num_heads)
        c = attend(q, k, v, None, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(c))


class DualCrossAttention(nn.Module):
    """Dual cross-attention (stages "D"): image tokens attend to meta tokens and vice versa.

    As upstream, image-token queries are scaled by ``log_N(M) * dim**-0.5`` and meta-token queries
    by ``dim**-0.5``, where ``dim`` is the full channel width (not the head width).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = dim**-0.5
        self.attn_drop = attn_drop
        self.qkv1 = nn.Linear(dim, 3 * dim)
        self.qkv2 = nn.Linear(dim, 3 * dim)
        self.proj_x = nn.Linear(dim, dim)
        self.proj_c = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, update_meta: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the updates of the image tokens and (unless ``update_meta`` is False) of the meta tokens."""
        n, m = x.shape[1], c.shape[1]
        drop = self.attn_drop if self.training else 0.0
        q1, k1, v1 = _heads(self.qkv1(x), 3, self.num_heads)
        q2, k2, v2 = _heads(self.qkv2(c), 3, self.num_heads)
        x = self.proj_drop(self.proj_x(attend(q1, k2, v2, math.log(m, n) * self.scale, drop)))
        if not update_meta:
            return x, None
        c = attend(q2, k1, v1, self.scale, drop)
        return x, self.proj_drop(self.proj_c(c))


class LeMeBlock(nn.Module):
    """Conditional position embedding, pre-norm attention and MLP, on image and meta tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_type: str,
        mlp_ratio: float = 4.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if attn_type not in ("C", "D", "S"):
            raise ValueError(f"unknown attention type {attn_type!r}; expected C, D or S")
        self.attn_type = attn_type
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_cls = {"C": CrossAttention, "D": DualCrossAttention, "S": StandardAttention}[attn_type]
        self.attn = attn_cls(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(mlp_ratio * dim)
        # Index 1 is upstream's (disabled) depth-wise conv slot: kept so checkpoint keys stay mlp.0 / mlp.3.
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Identity(), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor, update_meta: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the block on image tokens ``x`` (B, C, H, W) and meta tokens ``c`` (B, M, C).

        ``update_meta=False`` skips the meta-token update (cross-attention stages always make it). Dense
        features do not need it after the last dual cross-attention block: the image tokens are the
        same either way (the dense backbones upstream skip it in self-attention stages too).
        """
        h, w = x.shape[-2:]
        # NHWC token order: free views when x is channels-last (the model keeps it so)
        t = rearrange(x + self.pos_embed(x), "b c h w -> b (h w) c")
        if self.attn_type == "C":
            c = c + self.drop_path(self.attn(self.norm1(t), self.norm1(c)))
            c = c + self.drop_path(self.mlp(self.norm2(c)))
            return x, c
        if self.attn_type == "D":
            dx, dc = self.attn(self.norm1(t), self.norm1(c), update_meta)
            t = t + self.drop_path(dx)
        else:
            t = t + self.drop_path(self.attn(self.norm1(t)))
            dc = self.attn(self.norm1(c)) if update_meta else None
        t = t + self.drop_path(self.mlp(self.norm2(t)))
        if dc is not None:
            c = c + self.drop_path(dc)
            c = c + self.drop_path(self.mlp(self.norm2(c)))
        return rearrange(t, "b (h w) c -> b c h w", h=h, w=w), c


def _meta_projection(dim_in: int, dim_out: int) -> nn.Sequential:
    """MLP that carries the meta tokens from one stage's width to the next."""
    return nn.Sequential(
        nn.Linear(dim_in, dim_in * 4),
        nn.LayerNorm(dim_in * 4),
        nn.GELU(),
        nn.Linear(dim_in * 4, dim_out),
        nn.LayerNorm(dim_out),
    )


def _conv_bn(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(dim_in, dim_out, 3, stride=2, padding=1), nn.BatchNorm2d(dim_out))


def _stem(in_chans: int, dim: int) -> nn.Sequential:
    """Two stride-2 convolutions: the image to stride-4 tokens of width ``dim``."""
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1),
        nn.BatchNorm2d(dim // 2),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1),
        nn.BatchNorm2d(dim),
    )


def _stages(
    depths: Sequence[int],
    embed_dims: Sequence[int],
    head_dim: int,
    mlp_ratio: float,
    drop_rate: float,
    attn_drop_rate: float,
    drop_path_rate: float,
) -> nn.ModuleList:
    """The blocks of every stage (attention type from :data:`ATTN_TYPES`), with stochastic depth increasing
    linearly over all blocks."""
    dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # also under a meta device
    stages, cur = nn.ModuleList(), 0
    for depth, dim, attn_type in zip(depths, embed_dims, ATTN_TYPES, strict=True):
        blocks = [
            LeMeBlock(
                dim,
                dim // head_dim,
                attn_type,
                mlp_ratio=mlp_ratio,
                attn_drop=attn_drop_rate,
                proj_drop=drop_rate,
                drop_path=dpr[cur + j],
            )
            for j in range(depth)
        ]
        stages.append(nn.ModuleList(blocks))
        cur += depth
    return stages


def _feature_info(embed_dims: Sequence[int]) -> list[dict[str, Any]]:
    """timm's ``feature_info`` of the four dense stages: every stage after the first (cross-attention) one,
    whose successor keeps its resolution."""
    info, reduction = [], 4
    for i in range(1, len(ATTN_TYPES)):
        reduction = reduction if ATTN_TYPES[i - 1] == "C" else reduction * 2
        info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f"stages.{i}"))
    return info


class LeMeViT(nn.Module):
    """LeMeViT backbone and classifier.

    Args:
        in_chans: Number of input bands.
        num_classes: Classifier outputs (0 for no head).
        depths: Blocks per stage (five stages).
        embed_dims: Channels per stage.
        head_dim: Channels per attention head.
        mlp_ratio: MLP hidden width relative to the stage width.
        num_meta_tokens: Number of learnable meta tokens.
        drop_rate: Dropout after attention projections and before the classifier.
        attn_drop_rate: Dropout on attention weights (training only).
        drop_path_rate: Stochastic depth, increasing linearly over the blocks.
        global_pool: ``"avg"`` (pooled image and meta tokens) or ``""`` (no pooling, for dense use).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (1, 2, 2, 8, 2),
        embed_dims: Sequence[int] = (64, 64, 128, 192, 320),
        head_dim: int = 32,
        mlp_ratio: float = 4.0,
        num_meta_tokens: int = 16,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if len(depths) != len(ATTN_TYPES) or len(embed_dims) != len(ATTN_TYPES):
            raise ValueError(f"depths and embed_dims need {len(ATTN_TYPES)} entries")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False

        self.meta_tokens = nn.Parameter(torch.randn(num_meta_tokens, embed_dims[0]))
        d0 = embed_dims[0]
        self.downsample_layers = nn.ModuleList([_stem(in_chans, d0)])
        self.meta_token_downsample = nn.ModuleList([_meta_projection(d0, d0)])
        for i in range(len(ATTN_TYPES) - 1):
            # the cross-attention stage does not change resolution: no downsampling after it
            keep = ATTN_TYPES[i] == "C"
            self.downsample_layers.append(nn.Identity() if keep else _conv_bn(embed_dims[i], embed_dims[i + 1]))
            self.meta_token_downsample.append(_meta_projection(embed_dims[i], embed_dims[i + 1]))

        self.stages = _stages(depths, embed_dims, head_dim, mlp_ratio, drop_rate, attn_drop_rate, drop_path_rate)
        self.feature_info: list[dict[str, Any]] = _feature_info(embed_dims)

        self.norm = nn.BatchNorm2d(embed_dims[-1])
        self.norm_c = nn.LayerNorm(embed_dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"meta_tokens"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _meta(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input size and return the meta tokens for its batch."""
        h, w = x.shape[-2:]
        if math.ceil(h / 8) * math.ceil(w / 8) < 2:
            # the dual cross-attention scale log_N(M) needs N >= 2 image tokens at stride 8
            raise ValueError(
                f"input of {h}x{w} px is too small for LeMeViT: use at least 16 px on one side "
                "(sides that are multiples of 32, e.g. 32, 64, 224, 512, avoid padding inside the model)"
            )
        return self.meta_tokens.expand(x.shape[0], -1, -1)

    def _stage(self, i: int, x: torch.Tensor, c: torch.Tensor, dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Run stage ``i``; ``dense`` skips the meta-token updates that no image token depends on."""
        x = self.downsample_layers[i](x)
        c = self.meta_token_downsample[i](c)
        for j, block in enumerate(self.stages[i]):
            update_meta = not dense or i < LAST_DUAL or (i == LAST_DUAL and j < len(self.stages[i]) - 1)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, c = torch.utils.checkpoint.checkpoint(block, x, c, update_meta, use_reentrant=False)
            else:
                x, c = block(x, c, update_meta)
        return x, c

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the normalised stride-32 image tokens (B, C, H, W) and meta tokens (B, M, C)."""
        c = self._meta(x)
        x = x.contiguous(memory_format=torch.channels_last)
        for i in range(len(self.stages)):
            x, c = self._stage(i, x, c, dense=False)
        return self.norm(x), self.norm_c(c)

    def forward_head(self, features: tuple[torch.Tensor, torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        x, c = features
        if self.global_pool:
            x = x.mean(dim=(2, 3)) + c.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the dense features of stages 1-4 (strides 4, 8, 16, 32), timm style.

        Args:
            x: Input images (B, in_chans, H, W).
            indices: Take the last n features if int, all if None, the listed ones if a sequence.
            norm: Accepted for timm compatibility; the dense features have no norm.
            stop_early: Stop after the last requested feature.
            output_fmt: Only ``"NCHW"``.
            intermediates_only: Return only the features.
        """
        if output_fmt != "NCHW":
            raise ValueError("LeMeViT returns NCHW features only")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        last = max_index + 1 if stop_early else len(self.stages) - 1
        c = self._meta(x)
        x = x.contiguous(memory_format=torch.channels_last)
        intermediates = []
        for i in range(last + 1):
            x, c = self._stage(i, x, c, dense=True)
            if i - 1 in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages, norms and head not needed for the requested features."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        keep = max_index + 2  # feature i is the output of stage i + 1
        self.stages = self.stages[:keep]
        self.downsample_layers = self.downsample_layers[:keep]
        self.meta_token_downsample = self.meta_token_downsample[:keep]
        # dense features never read the meta tokens after the last dual cross-attention block
        if LAST_DUAL < len(self.stages):
            self.stages[LAST_DUAL][-1].attn.proj_c = nn.Identity()
        for i in range(LAST_DUAL + 1, len(self.meta_token_downsample)):
            self.meta_token_downsample[i] = nn.Identity()
        if prune_norm:
            self.norm = nn.Identity()
            self.norm_c = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


def _unwrap_checkpoint(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Accept the wrappings the upstream code accepts: model / state_dict / state_dict_ema, prefixes."""
    for key in ("state_dict", "state_dict_ema", "model"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    out = {}
    for k, v in state_dict.items():
        k = k.removeprefix("module.").removeprefix("backbone.").removeprefix("module.")
        out[k] = v
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: LeMeViT) -> dict[str, torch.Tensor]:
    """Turn an upstream checkpoint into this model's state dict.

    Unwraps the upstream wrappings, adapts the first convolution to ``model.in_chans`` the way timm
    does (repeating / summing the RGB kernels), and drops what the model does not have (a pruned
    head or norm, a classifier of another size).
    """
    sd = _unwrap_checkpoint(state_dict)
    conv = "downsample_layers.0.0.weight"
    if conv in sd and sd[conv].shape[1] != model.in_chans:
        sd[conv] = adapt_input_conv(model.in_chans, sd[conv])
    own = model.state_dict()
    for key in ("head.weight", "head.bias"):
        if key in sd and key in own and own[key].shape != sd[key].shape:
            sd[key] = own[key]  # a classifier of another size: keep the model's own (new) head
    return {k: v for k, v in sd.items() if k in own or not _pruned(model, k)}


def _pruned(model: LeMeViT, key: str) -> bool:
    """True if ``key`` belongs to a part that ``prune_intermediate_layers`` or ``num_classes=0`` removed."""
    parts = key.split(".")
    if parts[0] in ("head", "norm", "norm_c"):
        return True
    module: nn.Module = model
    for name in parts[:-1]:
        if isinstance(module, nn.Identity) or not hasattr(module, name):
            return True
        module = (
            getattr(module, name) if not name.isdigit() else (module[int(name)] if int(name) < len(module) else None)
        )
        if module is None:
            return True
    return isinstance(module, nn.Identity)


def _create_lemevit(variant: str, pretrained: bool = False, **kwargs: Any) -> LeMeViT:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    size = variant.removeprefix("lemevit_")
    cfg = {**LEMEVIT_CONFIGS[size], **kwargs}
    return build_model_with_cfg(
        LeMeViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **cfg,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "downsample_layers.0.0",
        "classifier": "head",
        "fixed_input_size": False,
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "lemevit_tiny.in1k": _cfg(),
        "lemevit_small.in1k": _cfg(),
        "lemevit_base.in1k": _cfg(),
    }
)


@register_model
def lemevit_tiny(pretrained: bool = False, **kwargs: Any) -> LeMeViT:
    """LeMeViT-Tiny: 8.6M parameters with a 1000-class head."""
    return _create_lemevit("lemevit_tiny", pretrained=pretrained, **kwargs)


@register_model
def lemevit_small(pretrained: bool = False, **kwargs: Any) -> LeMeViT:
    """LeMeViT-Small: 16.4M parameters with a 1000-class head."""
    return _create_lemevit("lemevit_small", pretrained=pretrained, **kwargs)


@register_model
def lemevit_base(pretrained: bool = False, **kwargs: Any) -> LeMeViT:
    """LeMeViT-Base: 53.1M parameters with a 1000-class head."""
    return _create_lemevit("lemevit_base", pretrained=pretrained, **kwargs)
