"""Oriented object detection: an anchor-free rotated FCOS head on an FPN over LeMeViT's dense features.

FCOS: Tian, Shen, Chen, He, "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019 (centre
sampling, regression ranges per level and the centerness branch as in its improved version). Rotated
boxes as in the rotated FCOS baselines: each location predicts its distances to the four sides of the box
measured in the box's own frame, and the box angle. Box loss: a Gaussian loss (ProbIoU's Hellinger
distance by default, or KLD; see :mod:`lemevit_geo.models.rotated`), which has no angle boundary problem.
Classification: sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

Conventions
-----------
Boxes are rows ``(cx, cy, w, h, angle)`` in pixel coordinates of the model's input: x to the right, y
**down**, the input's top-left corner at (0, 0) and pixel centres at half-integers (so ``col, row =
cx, cy`` feeds a rasterio transform directly). ``angle`` is in radians: the direction of the ``w`` side
from the image x axis towards the y axis, i.e. clockwise on screen. Targets may name a box any way
(``(w, h, a)``, ``(h, w, a + pi/2)``, ``a + pi`` are the same box: the loss does not see the difference);
predictions are named with ``w >= h`` and ``angle`` in ``[-pi/2, pi/2)``.

Angle-free classes (``angle_free_classes``, e.g. DOTA's storage-tank and roundabout, indices 9 and 11,
mmrotate's ``rect_classes``): squares and circles have no defined angle. Their target boxes are taken with
angle 0 (axis-aligned, ``w`` along x and ``h`` along y as given), the predicted angle of a location
assigned to one is replaced by 0 in the box loss (the angle branch learns nothing from them), and their
detections are decoded and reported with angle 0, ``w`` the x extent and ``h`` the y extent (not
reordered to ``w >= h``).

Outputs
-------
- train mode: ``model(images)`` returns the raw per-level outputs, a dict of lists (one entry per level,
  finest first): ``cls`` ``(B, K, H, W)`` class logits, ``centerness`` ``(B, 1, H, W)`` logits,
  ``distances`` ``(B, 4, H, W)`` the positive side distances (l, t, r, b) in input pixels, ``angle``
  ``(B, 1, H, W)`` radians. ``model.loss(outputs, targets)`` returns the named losses and their total.
- eval mode: ``model(images)`` returns ``(B, max_detections, 7)`` rows ``[cx, cy, w, h, angle, score,
  class]`` in descending score order, padded with rows of zeros, score 0 and class -1. The score is the
  geometric mean of the class probability and the centerness probability.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from lemevit_geo.models.rotated import (
    decode_distances,
    encode_distances,
    gaussian_box_loss,
    nms_rotated,
    regularize_boxes,
)

__all__ = ["DEFAULT_OPTIONS", "FCOSOptions", "OrientedFCOS", "RotatedFCOSHead", "Targets", "assign_targets"]


#: Head options and their defaults (what a bundle stores for ``detect``).
@dataclasses.dataclass(frozen=True)
class FCOSOptions:
    """The head options of :class:`OrientedFCOS`, as a bundle stores them (the one home of their defaults).

    Attributes:
        fpn_channels: Channels of the FPN levels and of the head.
        num_convs: Conv + GroupNorm + ReLU layers in each of the head's two towers.
        use_p2: Add the stride-4 level (small objects): the levels are then P2-P7, otherwise P3-P7.
        regress_ranges: Edges between the levels' ranges of max(l, t, r, b); ``None``: 8 x the stride of each level.
        center_sampling_radius: Positives lie within this many strides of the box centre (0: off).
        angle_free_classes: Class indices without a defined angle (squares, circles).
        focal_alpha: Alpha of the classification focal loss.
        focal_gamma: Gamma of the classification focal loss.
        box_loss: ``"probiou"`` (Hellinger distance of the Gaussians) or ``"kld"``.
        box_loss_weight: Weight of the box loss in the total.
        score_threshold: Inference: minimum score of a box.
        iou_threshold: Inference: rotated NMS threshold, per class.
        pre_nms_top_k: Inference: candidates per image entering NMS.
        max_detections: Inference: rows per image in the output.
    """

    fpn_channels: int = 256
    num_convs: int = 4
    use_p2: bool = False
    regress_ranges: Sequence[float] | None = None
    center_sampling_radius: float = 1.5
    angle_free_classes: Sequence[int] = ()
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "probiou"
    box_loss_weight: float = 1.0
    score_threshold: float = 0.05
    iou_threshold: float = 0.1
    pre_nms_top_k: int = 1000
    max_detections: int = 1000


#: The defaults of :class:`FCOSOptions` as a bundle's ``head`` field holds them (JSON types).
DEFAULT_OPTIONS: dict[str, Any] = {
    k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(FCOSOptions()).items()
}
_MAX_LOG_DISTANCE = 12.0  # exp(12) strides: far beyond any image


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 32, with at least 8 channels each (so a 1 x 1 level still has 8 values)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= min(8, channels))


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(channels), channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class RotatedFCOSHead(nn.Module):
    """FCOS head shared across pyramid levels: a classification tower (class logits) and a regression
    tower (side distances, angle, centerness)."""

    def __init__(
        self, channels: int, num_classes: int, num_levels: int, num_convs: int = 4, prior_prob: float = 0.01
    ) -> None:
        super().__init__()
        self.cls_tower = _tower(channels, num_convs)
        self.reg_tower = _tower(channels, num_convs)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.distances = nn.Conv2d(channels, 4, 3, padding=1)
        self.angle = nn.Conv2d(channels, 1, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[torch.Tensor], strides: Sequence[int]) -> dict[str, list[torch.Tensor]]:
        out: dict[str, list[torch.Tensor]] = {"cls": [], "centerness": [], "distances": [], "angle": []}
        for x, stride, scale in zip(features, strides, self.scales, strict=True):
            c, r = self.cls_tower(x), self.reg_tower(x)
            out["cls"].append(self.cls_logits(c))
            out["centerness"].append(self.centerness(r))
            log_d = scale(self.distances(r).float()).clamp(max=_MAX_LOG_DISTANCE)
            out["distances"].append(torch.exp(log_d) * stride)
            out["angle"].append(self.angle(r).float())
        return out


class Targets(NamedTuple):
    """Per-location training targets of one image (``L`` locations over all levels)."""

    labels: torch.Tensor  # (L,) long: class of the assigned box (0 where none)
    boxes: torch.Tensor  # (L, 5) the assigned box (zeros where none)
    centerness: torch.Tensor  # (L,) centerness target in [0, 1]
    positive: torch.Tensor  # (L,) bool: assigned to a box that is not ignored
    ignored: torch.Tensor  # (L,) bool: assigned to an ignored box (no loss at all)


def _no_targets(points: torch.Tensor) -> Targets:
    """Targets of an image without boxes: every location negative."""
    num = points.shape[0]
    false = torch.zeros(num, dtype=torch.bool, device=points.device)
    return Targets(
        torch.zeros(num, dtype=torch.long, device=points.device),
        points.new_zeros(num, 5),
        points.new_zeros(num),
        false,
        false.clone(),
    )


def assign_targets(
    points: torch.Tensor,
    strides: torch.Tensor,
    ranges: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    ignore: torch.Tensor | None = None,
    center_sampling_radius: float = 1.5,
    angle_free: torch.Tensor | None = None,
) -> Targets:
    """FCOS assignment of rotated ``boxes`` ``(N, 5)`` to ``points`` ``(L, 2)``.

    A location is a candidate of a box when (1) it lies inside the box, widened for this test only to
    half-sides of at least ``stride / sqrt(2)`` (so every box, even one smaller than a stride and rotated,
    covers a location of every level and gets positives on the finest), (2) it lies within
    ``center_sampling_radius * stride`` of the box centre along both box axes, and (3) the largest of its
    side distances ``max(l, t, r, b)`` lies in its level's range ``ranges`` ``(L, 2)`` (lower bound
    exclusive). A location with several candidate boxes takes the smallest (by area). The centerness
    target is ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` in the box frame (of the widened box).
    Boxes whose label is in ``angle_free`` are taken with angle 0.
    """
    num = points.shape[0]
    n = boxes.shape[0]
    if ignore is None:
        ignore = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    if n == 0:
        return _no_targets(points)
    boxes = boxes.float().clone()
    if angle_free is not None and angle_free.numel():
        boxes[:, 4] = torch.where(torch.isin(labels, angle_free), torch.zeros_like(boxes[:, 4]), boxes[:, 4])
    d = encode_distances(points[:, None, :], boxes[None])  # (L, N, 4): l, t, r, b
    ox, oy = (d[..., 0] - d[..., 2]) / 2, (d[..., 1] - d[..., 3]) / 2  # location in the box frame
    smallest = strides[:, None] / math.sqrt(2)
    ew = torch.maximum(boxes[None, :, 2] / 2, smallest)
    eh = torch.maximum(boxes[None, :, 3] / 2, smallest)
    candidate = (ox.abs() < ew) & (oy.abs() < eh)
    if center_sampling_radius > 0:
        reach = center_sampling_radius * strides[:, None]
        candidate &= (ox.abs() < reach) & (oy.abs() < reach)
    farthest = d.amax(-1)
    candidate &= (farthest > ranges[:, None, 0]) & (farthest <= ranges[:, None, 1])
    area = (boxes[:, 2] * boxes[:, 3])[None].expand(num, n)
    area = torch.where(candidate, area, torch.full_like(area, math.inf))
    best_area, best = area.min(dim=1)
    assigned = torch.isfinite(best_area)
    rows = torch.arange(num, device=points.device)
    ox, oy, ew, eh = ox[rows, best], oy[rows, best], ew[rows, best], eh[rows, best]
    lr = torch.stack([ew + ox, ew - ox], -1).clamp(min=0)
    tb = torch.stack([eh + oy, eh - oy], -1).clamp(min=0)
    ratio = (lr.amin(-1) / lr.amax(-1).clamp(min=1e-6)) * (tb.amin(-1) / tb.amax(-1).clamp(min=1e-6))
    centerness = torch.where(assigned, ratio.sqrt(), torch.zeros_like(ratio))
    ignored = assigned & ignore[best]
    positive = assigned & ~ignored
    box_t = torch.where(assigned[:, None], boxes[best], torch.zeros_like(boxes[best]))
    return Targets(torch.where(assigned, labels[best], 0), box_t, centerness, positive, ignored)


class OrientedFCOS(nn.Module):
    """LeMeViT + FPN (P3-P7, or P2-P7) + rotated FCOS head.

    Args:
        arch: LeMeViT size (``tiny``, ``small``, ``base``).
        in_chans: Input bands.
        num_classes: Object classes (no background class).
        drop_path_rate: Stochastic depth of the backbone.
        head: The head options, see :class:`FCOSOptions` (an unknown one raises ``TypeError``). The four
            inference options are plain attributes, settable after construction.
    """

    def __init__(
        self, arch: str = "tiny", in_chans: int = 3, num_classes: int = 15, drop_path_rate: float = 0.1, **head: Any
    ) -> None:
        super().__init__()
        self.options = options = FCOSOptions(**head)  # an unknown option fails here rather than being ignored
        if options.box_loss not in ("probiou", "kld"):
            raise ValueError(f"unknown box_loss {options.box_loss!r}; expected 'probiou' or 'kld'")
        bad = [c for c in options.angle_free_classes if not 0 <= int(c) < num_classes]
        if bad:
            raise ValueError(f"angle_free_classes {bad} are not class indices in [0, {num_classes})")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.encoder = timm.create_model(
            f"lemevit_{arch}",
            features_only=True,
            out_indices=(0, 1, 2, 3) if options.use_p2 else (1, 2, 3),
            in_chans=in_chans,
            drop_path_rate=drop_path_rate,
        )
        channels = self.encoder.feature_info.channels()
        reductions = [int(r) for r in self.encoder.feature_info.reduction()]
        self.strides = (*reductions, reductions[-1] * 2, reductions[-1] * 4)
        width = options.fpn_channels
        self.fpn = FeaturePyramidNetwork(channels, width, extra_blocks=LastLevelP6P7(width, width))
        self.head = RotatedFCOSHead(width, num_classes, len(self.strides), num_convs=options.num_convs)
        ranges = options.regress_ranges
        edges = [8.0 * s for s in self.strides[:-1]] if ranges is None else [float(e) for e in ranges]
        if len(edges) != len(self.strides) - 1 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError(
                f"regress_ranges needs {len(self.strides) - 1} increasing edges for the levels with strides "
                f"{self.strides}, got {list(edges)}"
            )
        self.regress_ranges = edges
        self.angle_free_classes = [int(c) for c in options.angle_free_classes]
        self.register_buffer("_angle_free", torch.tensor(self.angle_free_classes, dtype=torch.long), persistent=False)
        # the inference options are plain attributes: `detect` sets them per run
        self.score_threshold, self.iou_threshold = options.score_threshold, options.iou_threshold
        self.pre_nms_top_k, self.max_detections = options.pre_nms_top_k, options.max_detections

    def forward_raw(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Raw per-level outputs (see the module docstring), in any mode."""
        if images.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} bands, got {images.shape[1]}")
        feats = self.encoder(images)
        pyramid = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return self.head(list(pyramid.values()), self.strides)

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]] | torch.Tensor:
        """Raw outputs in train mode; ``(B, max_detections, 7)`` detections in eval mode."""
        outputs = self.forward_raw(images)
        return outputs if self.training else self.postprocess(outputs)

    def locations(self, outputs: dict[str, list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Points ``(L, 2)`` (cell centres ``((j + 0.5) s, (i + 0.5) s)``), strides ``(L,)`` and regression
        ranges ``(L, 2)`` of all levels' locations, finest level first, row-major within a level."""
        pts, strides, ranges = [], [], []
        bounds = [-math.inf, *self.regress_ranges, math.inf]
        for level, (x, s) in enumerate(zip(outputs["cls"], self.strides, strict=True)):
            h, w = x.shape[-2:]
            ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) * s
            xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) * s
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            pts.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1))
            strides.append(torch.full((h * w,), float(s), device=x.device))
            ranges.append(torch.tensor([bounds[level], bounds[level + 1]], device=x.device).expand(h * w, 2))
        return torch.cat(pts), torch.cat(strides), torch.cat(ranges)

    @staticmethod
    def _flatten(outputs: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Per-level ``(B, C, H, W)`` lists to ``(B, L, C)`` tensors (float32)."""
        return {k: torch.cat([o.float().flatten(2) for o in v], dim=2).transpose(1, 2) for k, v in outputs.items()}

    def targets(self, outputs: dict[str, list[torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]]) -> Targets:
        """Assigned targets of a batch, stacked ``(B, L, ...)``."""
        points, strides, ranges = self.locations(outputs)
        per_image, radius = [], self.options.center_sampling_radius
        with torch.no_grad():
            for t in targets:
                boxes = t["boxes"].to(points.device, torch.float32).reshape(-1, 5)
                labels = t["labels"].to(points.device, torch.long).reshape(-1)
                ignore = t.get("ignore")
                ignore = ignore.to(points.device, torch.bool).reshape(-1) if ignore is not None else None
                per_image.append(
                    assign_targets(points, strides, ranges, boxes, labels, ignore, radius, self._angle_free)
                )
        return Targets(*(torch.stack(parts) for parts in zip(*per_image, strict=True)))

    def loss(
        self, outputs: dict[str, list[torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Losses of raw ``outputs`` against ``targets`` (one dict per image: ``boxes`` ``(N, 5)`` as
        ``(cx, cy, w, h, angle)`` in input pixels and radians, ``labels`` ``(N,)``, optional ``ignore``
        ``(N,)`` bool for difficult objects).

        Returns ``loss_cls`` (focal, summed over the locations not assigned to ignored boxes, divided by
        the number of positives), ``loss_centerness`` (BCE, mean over positives), ``loss_box`` (Gaussian
        box loss, mean over positives weighted by their centerness targets) and ``loss`` (``loss_cls +
        loss_centerness + box_loss_weight * loss_box``).
        """
        if len(targets) != outputs["cls"][0].shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {outputs['cls'][0].shape[0]} images")
        flat = self._flatten(outputs)
        t = self.targets(outputs, targets)
        points, _, _ = self.locations(outputs)
        cls = flat["cls"]
        pos = t.positive
        num_pos = pos.sum().clamp(min=1).float()
        onehot = torch.zeros_like(cls)
        onehot[pos] = F.one_hot(t.labels[pos], self.num_classes).to(cls.dtype)
        valid = ~t.ignored
        loss_cls = sigmoid_focal_loss(
            cls[valid], onehot[valid], alpha=self.options.focal_alpha, gamma=self.options.focal_gamma, reduction="sum"
        )
        loss_cls = loss_cls / num_pos
        ctr_logits = flat["centerness"][..., 0]
        if pos.any():
            angle = flat["angle"][..., 0][pos]
            if self._angle_free.numel():
                angle = torch.where(torch.isin(t.labels[pos], self._angle_free), torch.zeros_like(angle), angle)
            pts = points.expand(pos.shape[0], -1, -1)[pos]
            pred = decode_distances(pts, flat["distances"][pos], angle)
            ctr_t = t.centerness[pos]
            loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits[pos], ctr_t, reduction="sum") / num_pos
            per_box = gaussian_box_loss(pred, t.boxes[pos], self.options.box_loss)
            loss_box = (per_box * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
        else:  # keep every output in the graph
            loss_ctr = ctr_logits.sum() * 0.0
            loss_box = (flat["distances"].sum() + flat["angle"].sum()) * 0.0
        total = loss_cls + loss_ctr + self.options.box_loss_weight * loss_box
        return {"loss_cls": loss_cls, "loss_centerness": loss_ctr, "loss_box": loss_box, "loss": total}

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """Detections ``(B, max_detections, 7)`` from raw outputs: score threshold, top-k, rotated NMS per
        class, the best ``max_detections`` (see the module docstring for the rows)."""
        flat = self._flatten(outputs)
        points, _, _ = self.locations(outputs)
        scores = (flat["cls"].sigmoid() * flat["centerness"].sigmoid()).sqrt()  # (B, L, K)
        batch, _, k = scores.shape
        m = int(self.max_detections)
        out = scores.new_zeros(batch, m, 7)
        out[..., 6] = -1
        for b in range(batch):
            s = scores[b].flatten()
            cand = (s > self.score_threshold).nonzero().squeeze(1)
            if cand.numel() > self.pre_nms_top_k:
                cand = cand[s[cand].topk(int(self.pre_nms_top_k)).indices]
            if cand.numel() == 0:
                continue
            loc, cls, sc = cand // k, cand % k, s[cand]
            angle = flat["angle"][b, loc, 0]
            free = torch.isin(cls, self._angle_free)
            angle = torch.where(free, torch.zeros_like(angle), angle)
            boxes = decode_distances(points[loc], flat["distances"][b, loc], angle)
            keep = nms_rotated(boxes, sc, self.iou_threshold, cls)[:m]
            boxes = torch.where(free[keep, None], boxes[keep], regularize_boxes(boxes[keep]))
            n = keep.numel()
            out[b, :n, :5] = boxes
            out[b, :n, 5] = sc[keep]
            out[b, :n, 6] = cls[keep].float()
        return out
