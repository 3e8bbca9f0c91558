"""Lightning modules of the three trainable tasks, built on torchgeo's trainers.

They reuse torchgeo's losses, class weights, ignore index, optimiser and schedule, and replace only
the model (our task models around one LeMeViT backbone) and add the metrics we report: overall
accuracy and mean IoU for segmentation, F1 of the change class for change, accuracy for scenes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchgeo.trainers import ChangeDetectionTask, ClassificationTask, SemanticSegmentationTask
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lemevit_geo.models.factory import backbone_of, build_task_model
from lemevit_geo.weights import load_backbone_weights


class ChangeF1(Metric):
    """F1 score of the *change* class (index 1) from per-pixel change logits."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        pred = preds.argmax(dim=1) if preds.ndim == target.ndim + 1 else preds
        keep = (
            target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        )
        p, t = (pred == 1) & keep, (target == 1) & keep
        self.tp += (p & t).sum()
        self.fp += (p & ~t).sum()
        self.fn += (~p & t).sum()

    def compute(self) -> torch.Tensor:
        denom = 2 * self.tp + self.fp + self.fn
        return (2 * self.tp).float() / denom.clamp(min=1)


def _metrics(num_classes: int, ignore_index: int | None, change: bool = False) -> MetricCollection:
    metrics: dict[str, Metric] = {
        "OA": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
        "mIoU": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
    }
    if change:
        metrics["F1"] = ChangeF1(ignore_index)
    return MetricCollection(metrics)


class _LeMeViTModel:
    """Mixin: our task model instead of torchgeo's, optionally with official backbone weights."""

    task_name: str

    def configure_models(self) -> None:
        self.model = self._build(self.hparams)  # type: ignore[attr-defined]

    def _build(self, hparams: Any) -> torch.nn.Module:
        model = build_task_model(
            self.task_name,
            hparams["arch"],
            in_chans=hparams["in_channels"],
            num_classes=hparams["num_classes"],
            **(hparams.get("head") or {}),
        )
        if hparams.get("backbone_weights"):
            load_backbone_weights(backbone_of(model), Path(hparams["backbone_weights"]))
        return model

    def _set_metrics(self, m: MetricCollection) -> None:
        """Train / val / test copies of ``m``, prefixed as torchgeo's steps log them."""
        self.train_metrics = m.clone(prefix="train_")
        self.val_metrics = m.clone(prefix="val_")
        self.test_metrics = m.clone(prefix="test_")


class SegmentationModule(_LeMeViTModel, SemanticSegmentationTask):
    """LeMeViT + UPerNet semantic segmentation (cross-entropy, optional class weights / ignore index)."""

    task_name = "segment"
    monitor_metric = ("val_mIoU", "max")

    def __init__(
        self,
        arch: str = "tiny",
        in_channels: int = 3,
        num_classes: int = 2,
        backbone_weights: str | None = None,
        head: dict[str, Any] | None = None,
        class_weights: list[float] | None = None,
        ignore_index: int | None = None,
        lr: float = 1e-3,
        patience: int = 10,
    ) -> None:
        super().__init__(model="upernet", backbone=f"tu-lemevit_{arch}", in_channels=in_channels,
                         num_classes=num_classes, loss="ce", class_weights=class_weights, ignore_index=ignore_index,
                         lr=lr, patience=patience)  # fmt: skip

    def configure_metrics(self) -> None:
        self._set_metrics(_metrics(self.hparams["num_classes"], self.hparams["ignore_index"]))


class ChangeModule(_LeMeViTModel, ChangeDetectionTask):
    """Siamese LeMeViT + BIT-style head; batches hold ``image`` (B, 2, C, H, W) and ``mask``."""

    task_name = "change"
    monitor_metric = ("val_F1", "max")

    def __init__(
        self,
        arch: str = "tiny",
        in_channels: int = 3,
        num_classes: int = 2,
        backbone_weights: str | None = None,
        head: dict[str, Any] | None = None,
        class_weights: list[float] | None = None,
        ignore_index: int | None = None,
        lr: float = 1e-3,
        patience: int = 10,
    ) -> None:
        super().__init__(model="unet", backbone=f"tu-lemevit_{arch}", in_channels=in_channels, task="multiclass",
                         num_classes=num_classes, loss="ce", class_weights=class_weights, ignore_index=ignore_index,
                         lr=lr, patience=patience)  # fmt: skip

    def configure_metrics(self) -> None:
        self._set_metrics(_metrics(self.hparams["num_classes"], self.hparams["ignore_index"], change=True))


class ClassificationModule(_LeMeViTModel, ClassificationTask):
    """LeMeViT scene classification with its pooled image-and-meta-token head."""

    task_name = "classify"
    monitor_metric = ("val_OA", "max")

    def __init__(
        self,
        arch: str = "tiny",
        in_channels: int = 3,
        num_classes: int = 2,
        backbone_weights: str | None = None,
        head: dict[str, Any] | None = None,
        class_weights: list[float] | None = None,
        lr: float = 1e-3,
        patience: int = 10,
    ) -> None:
        super().__init__(model=f"lemevit_{arch}", in_channels=in_channels, num_classes=num_classes, loss="ce",
                         class_weights=class_weights, lr=lr, patience=patience)  # fmt: skip

    def configure_metrics(self) -> None:
        self._set_metrics(MetricCollection({"OA": MulticlassAccuracy(self.hparams["num_classes"], average="micro")}))


TASK_MODULES = {"segment": SegmentationModule, "change": ChangeModule, "classify": ClassificationModule}
